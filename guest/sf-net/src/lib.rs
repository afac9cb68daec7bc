//! The guest's network stack: smoltcp (TCP, UDP, ARP, ICMP echo) over any
//! [`Nic`], behind blocking calls with optional timeouts.
//!
//! Guests run in ring 3 with no interrupts, so nothing happens on the wire
//! unless the program polls. Every blocking call here polls the stack until
//! its condition holds; when there is nothing to do it asks the [`Host`]
//! to sleep until a frame may have arrived or smoltcp's next timer is due,
//! so an idle VM sleeps instead of spinning.
//!
//! VM fork: a clone continues with its parent's memory, stack and sockets,
//! but the VMM gives its NIC a new MAC and IPv4 address before its first
//! instruction. At every poll the stack compares the [`Identity`] the host
//! reports with the one it was built with; on a change it rebuilds the
//! interface (new addresses, empty ARP cache, fresh random seed for
//! sequence numbers and ports) and resets every socket that was open: its
//! next call returns [`NetError::Reset`]. Nothing is sent for them, since
//! the parent still owns those connections.
//!
//! This crate knows nothing of virtio or hypercalls; the guest runtime
//! (`sf_guest::net`) supplies the NIC and the host, and unit tests run it
//! on the host over in-memory wires.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod device;
mod family;
pub mod offload;
mod stack;
mod tcp;
#[cfg(test)]
mod tests;
mod udp;

pub use family::Relatives;
pub use sf_abi::net::FamilyNet;
pub use smoltcp::wire::Ipv4Address as Ipv4Addr;
pub use stack::{Net, SockId};

/// IP packet size the stack sends: a family network spans hosts over
/// VXLAN, whose 50 bytes of encapsulation leave 1450 of the usual 1500.
pub const MTU: usize = 1450;
/// Largest Ethernet frame the stack sends or accepts: MTU plus the header.
pub const MAX_FRAME: usize = MTU + 14;
/// IP packet size of a TCP segment on a NIC with segmentation offloads
/// ([`Nic::offloads`]): the host kernel cuts it to [`MTU`] on the wire
/// (or hands it whole to a peer VM's NIC that takes offloads too). Not
/// 65535: the kernel segments in software any packet of 64 KiB or more
/// with its link-layer headers (`gso_max_size`), VXLAN's 50 bytes
/// included; with 65535 a peer VM's TAP got 1410-byte segments only.
pub const OFFLOAD_MTU: usize = 64000;
/// Largest Ethernet frame on a NIC with offloads.
pub const OFFLOAD_FRAME: usize = OFFLOAD_MTU + 14;

/// What went wrong, in terms a program can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// This VM has no network interface (or it could not be started).
    NoNetwork,
    /// A port, address, length or member number that cannot be used.
    InvalidArgument,
    /// Another socket of this VM already listens on (or is bound to) the port.
    AddrInUse,
    /// The peer answered the connection attempt with a reset.
    ConnectionRefused,
    /// The connection was reset, or closed before all data was exchanged.
    ConnectionReset,
    /// The timeout passed before the call could finish.
    TimedOut,
    /// The socket was open when this VM was cloned: it belongs to the
    /// parent. Close it and open a new one.
    Reset,
    /// No such socket (closed already, or a stale number), or the wrong
    /// kind of socket for the call.
    BadSocket,
    /// The peer closed its side before `read_exact` had all its bytes.
    UnexpectedEof,
}

/// A NIC address and the IPv4 address the VMM gave this VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The clone family's network, from which any member's address follows.
    pub family: Option<FamilyNet>,
}

/// A network card that moves whole Ethernet frames, polled.
pub trait Nic {
    /// Copies the next received frame into `buf` (at least [`MAX_FRAME`]
    /// bytes, [`OFFLOAD_FRAME`] with offloads) and returns its length, or
    /// `None` when nothing is waiting.
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// Whether a frame can be queued for sending now.
    fn can_transmit(&mut self) -> bool;
    /// Queues one frame; false if the NIC had no room (it is dropped, and
    /// TCP resends it).
    fn transmit(&mut self, frame: &[u8]) -> bool;
    /// Whether the NIC offloads TCP: it takes TCP frames of up to
    /// [`OFFLOAD_FRAME`] bytes whose checksum field is zero, and fills in
    /// the checksum and cuts them into [`MTU`]-sized segments as needed;
    /// it may deliver frames of up to [`OFFLOAD_FRAME`] bytes, and checks
    /// received TCP checksums itself (the stack then checks none). Other
    /// protocols still fit [`MTU`] and are checked by the stack.
    fn offloads(&self) -> bool {
        false
    }
}

/// What the stack needs from the machine it runs on.
pub trait Host {
    /// A monotonic clock in microseconds.
    fn now_us(&mut self) -> u64;
    /// Sleeps until a frame may have arrived, at most `timeout_us`; also
    /// makes the NIC send what is queued. 0: only that, no sleep.
    fn wait(&mut self, timeout_us: u64);
    /// Makes the NIC send what is queued no later than this VM's next
    /// exit to its host of any kind (a wait, a hypercall): a sender that
    /// reads next then pays one exit for both (a VM-to-VM round trip
    /// took two exits less). By default: now, as `wait(0)`.
    fn flush_soon(&mut self) {
        self.wait(0);
    }
    /// This VM's identity now; cheap, called at every poll.
    fn identity(&mut self) -> Identity;
    /// A random number, for TCP sequence numbers and ephemeral ports.
    fn random(&mut self) -> u64;
}

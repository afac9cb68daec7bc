//! The stack itself: the smoltcp interface, the socket table programs see
//! as small integers, the poll loop that sleeps when idle, and the
//! re-addressing after a VM fork.

use crate::device::NicDevice;
use crate::{Host, Identity, Ipv4Addr, NetError, Nic};
use alloc::boxed::Box;
use alloc::vec::Vec;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

/// A socket as programs hold it: an index into this stack's table (C
/// programs get the same number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockId(pub u32);

pub(crate) enum Slot {
    Free,
    /// Listening sockets on `port`, each waiting for one connection: the
    /// backlog. `accept` hands out an established one and listens anew.
    Listener {
        port: u16,
        pending: Vec<SocketHandle>,
    },
    Stream(SocketHandle),
    Udp(SocketHandle),
    /// Was open when this VM was cloned; only `close` is left to do.
    Reset,
}

/// Longest single sleep: the identity is re-checked at least this often
/// even when smoltcp has no timer due.
const MAX_SLEEP_US: u64 = 100_000;
/// Passes of the stack that may run back to back, while sockets change,
/// before the host is asked to move frames.
const MAX_BUSY_PASSES: u32 = 4;

pub struct Net {
    pub(crate) iface: Interface,
    pub(crate) dev: NicDevice,
    pub(crate) sockets: SocketSet<'static>,
    pub(crate) host: Box<dyn Host>,
    pub(crate) id: Identity,
    pub(crate) slots: Vec<Slot>,
    /// Closed streams still sending their last bytes and FIN.
    pub(crate) closing: Vec<SocketHandle>,
    pub(crate) next_port: u16,
    /// Bytes of receive and of send buffer per TCP socket.
    pub tcp_buffer: usize,
    /// Listening sockets per listener (connections that can be
    /// established before `accept` is called).
    pub backlog: usize,
    /// Times the stack re-addressed itself after a clone.
    pub readdressed: u32,
}

fn interface(dev: &mut NicDevice, id: &Identity, seed: u64, now: Instant) -> Interface {
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(id.mac)));
    config.random_seed = seed;
    let mut iface = Interface::new(config, dev, now);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(id.ip.into(), id.prefix_len));
    });
    if let Some(f) = id.family {
        // The host's address on the family bridge, when the operator
        // allows host access; harmless when nothing answers there.
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::from_bits(f.host_ip()));
    }
    iface
}

fn ephemeral(seed: u64) -> u16 {
    49152 + (seed % 16384) as u16
}

impl Net {
    /// A stack on `nic` with the identity `host` reports now.
    pub fn new(nic: Box<dyn Nic>, mut host: Box<dyn Host>) -> Result<Net, NetError> {
        let id = host.identity();
        if id.ip.is_unspecified() || id.prefix_len == 0 || id.prefix_len > 32 {
            return Err(NetError::NoNetwork);
        }
        // With 64 KiB segments, a 64 KiB window would allow one segment in
        // flight. VM to VM on one bridge (netpi stream, 256 MiB, 4 runs,
        // load average ~9): 256 KiB gave 2.6-4.6 Gbit/s, 512 KiB 4.2-5.7,
        // 1 MiB 3.5-8.4; 512 KiB keeps a listener's backlog of 8 at 8 MiB.
        let tcp_buffer = if nic.offloads() { 512 << 10 } else { 64 << 10 };
        let mut dev = NicDevice::new(nic);
        let now = Instant::from_micros(host.now_us() as i64);
        let seed = host.random();
        let iface = interface(&mut dev, &id, seed, now);
        Ok(Net {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            host,
            id,
            slots: Vec::new(),
            closing: Vec::new(),
            next_port: ephemeral(seed >> 16),
            tcp_buffer,
            backlog: 8,
            readdressed: 0,
        })
    }

    /// This VM's address.
    pub fn my_addr(&self) -> Ipv4Addr {
        self.id.ip
    }

    pub fn identity(&self) -> Identity {
        self.id
    }

    /// Whether the NIC offloads TCP checksums and segmentation (see
    /// [`Nic::offloads`]).
    pub fn offloads(&self) -> bool {
        self.dev.nic.offloads()
    }

    /// The address of family member `member` (0 is the parent), when this
    /// VM belongs to a family network.
    pub fn addr_of(&self, member: u32) -> Option<Ipv4Addr> {
        Some(Ipv4Addr::from_bits(self.id.family?.ip_of(member)?))
    }

    fn now(&mut self) -> Instant {
        Instant::from_micros(self.host.now_us() as i64)
    }

    /// Runs the stack once: re-addresses after a clone, moves frames in
    /// both directions, fires timers. True if any socket may have changed.
    pub fn poll(&mut self) -> bool {
        self.refresh();
        let now = self.now();
        let changed = self.iface.poll(now, &mut self.dev, &mut self.sockets)
            == smoltcp::iface::PollResult::SocketStateChanged;
        self.reap_closing();
        changed
    }

    /// Puts queued frames on the wire now rather than at the next blocking
    /// call: the NIC may hold back its notification to batch frames, and a
    /// program may compute (or end) right after sending.
    pub fn flush(&mut self) {
        self.poll();
        self.host.wait(0);
    }

    /// Re-addresses the stack if this VM became a clone since the last
    /// look. Every call that creates a socket does this first, so a socket
    /// made right after a clone belongs to the clone.
    pub fn refresh(&mut self) {
        let id = self.host.identity();
        if id != self.id {
            self.readdress(id);
        }
    }

    /// The clone's new identity: a fresh interface, and every open socket
    /// reset (its connections are the parent's).
    fn readdress(&mut self, id: Identity) {
        self.id = id;
        self.readdressed += 1;
        for slot in self.slots.iter_mut() {
            if !matches!(slot, Slot::Free) {
                *slot = Slot::Reset;
            }
        }
        self.closing.clear();
        self.sockets = SocketSet::new(Vec::new());
        let now = self.now();
        let seed = self.host.random();
        self.iface = interface(&mut self.dev, &id, seed, now);
        self.next_port = ephemeral(seed >> 16);
    }

    fn reap_closing(&mut self) {
        use smoltcp::socket::tcp::{Socket, State};
        let sockets = &mut self.sockets;
        self.closing.retain(|&h| {
            let done = matches!(
                sockets.get::<Socket>(h).state(),
                State::Closed | State::TimeWait
            );
            if done {
                sockets.remove(h);
            }
            !done
        });
    }

    /// Polls until `ready` gives an answer or `timeout_us` (if any) passes;
    /// sleeps in the host between polls when nothing moved.
    pub(crate) fn block_on<T>(
        &mut self,
        timeout_us: Option<u64>,
        mut ready: impl FnMut(&mut Net) -> Option<Result<T, NetError>>,
    ) -> Result<T, NetError> {
        let start = self.host.now_us();
        let deadline = timeout_us.map(|t| start.saturating_add(t));
        let mut busy = 0;
        loop {
            let changed = self.poll();
            if let Some(r) = ready(self) {
                return r;
            }
            let now = self.host.now_us();
            if deadline.is_some_and(|d| now >= d) {
                return Err(NetError::TimedOut);
            }
            // A few passes without the host while the stack makes progress;
            // then the host always gets its turn, even for no sleep at all:
            // a virtual NIC moves frames only when the guest exits to it.
            if changed && busy < MAX_BUSY_PASSES {
                busy += 1;
                continue;
            }
            busy = 0;
            let t = self.now();
            let mut sleep = match self.iface.poll_delay(t, &self.sockets) {
                Some(d) => d.total_micros(),
                None => MAX_SLEEP_US,
            };
            sleep = sleep.min(MAX_SLEEP_US);
            if let Some(d) = deadline {
                sleep = sleep.min(d - now);
            }
            self.host.wait(sleep);
        }
    }

    /// Keeps the stack running (answering peers, sending, retransmitting)
    /// for `us` microseconds, sleeping in the host when there is nothing
    /// to do.
    pub fn idle(&mut self, us: u64) {
        let _ = self.block_on::<()>(Some(us), |_| None);
    }

    pub(crate) fn slot(&self, s: SockId) -> Result<&Slot, NetError> {
        match self.slots.get(s.0 as usize) {
            None | Some(Slot::Free) => Err(NetError::BadSocket),
            Some(Slot::Reset) => Err(NetError::Reset),
            Some(slot) => Ok(slot),
        }
    }

    pub(crate) fn add_slot(&mut self, slot: Slot) -> SockId {
        if let Some(i) = self.slots.iter().position(|s| matches!(s, Slot::Free)) {
            self.slots[i] = slot;
            return SockId(i as u32);
        }
        self.slots.push(slot);
        SockId(self.slots.len() as u32 - 1)
    }

    /// A local port for an outgoing connection or an unbound UDP socket.
    pub(crate) fn ephemeral_port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p == u16::MAX { 49152 } else { p + 1 };
        p
    }

    /// Whether a TCP listener (`tcp`) or a UDP socket holds `port`: the two
    /// protocols have separate ports.
    pub(crate) fn port_taken(&self, port: u16, tcp: bool) -> bool {
        use smoltcp::socket::udp;
        self.slots.iter().any(|s| match s {
            Slot::Listener { port: p, .. } => tcp && *p == port,
            Slot::Udp(h) => !tcp && self.sockets.get::<udp::Socket>(*h).endpoint().port == port,
            _ => false,
        })
    }

    /// Closes any socket: streams gracefully (see [`Net::tcp_close`]),
    /// the rest at once. Unknown numbers are [`NetError::BadSocket`].
    pub fn close(&mut self, s: SockId) -> Result<(), NetError> {
        match self.slots.get(s.0 as usize) {
            None | Some(Slot::Free) => Err(NetError::BadSocket),
            Some(Slot::Stream(_)) => self.tcp_close(s),
            Some(_) => {
                let slot = core::mem::replace(&mut self.slots[s.0 as usize], Slot::Free);
                match slot {
                    Slot::Listener { pending, .. } => {
                        for h in pending {
                            self.sockets.remove(h);
                        }
                    }
                    Slot::Udp(h) => {
                        self.sockets.remove(h);
                    }
                    _ => {}
                }
                Ok(())
            }
        }
    }
}

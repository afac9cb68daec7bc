//! Networking for guests: TCP and UDP sockets over the VM's virtio-net NIC,
//! blocking, with optional timeouts.
//!
//! ```ignore
//! use sf_guest::net::{self, TcpListener, TcpStream};
//! let l = TcpListener::bind(7000)?;             // parent
//! let mut s = l.accept()?;
//! let mut s = TcpStream::connect(net::addr_of(0).unwrap(), 7000)?;   // a clone
//! s.write_all(b"hello")?;
//! ```
//!
//! The stack is smoltcp (`sf_net`), started at the first call when the VM
//! has a NIC (`BootInfo::mmio_base` and `net_ip` set; else every call says
//! [`Error::NoNetwork`]). There are no interrupts: each blocking call polls
//! the NIC and, when there is nothing to do, sleeps in the host
//! (hypercall 24, `NetWait`) until a frame arrives or a timer is due. A
//! program that computes for long stretches while peers talk to it may call
//! [`poll`] now and then; otherwise TCP simply retransmits. Data a TCP send
//! queued leaves at the VM's next exit (a blocking call, a hypercall,
//! [`poll`]... ), so a request and the wait for its answer cost one exit;
//! a program that sends and then computes for long calls [`poll`] first.
//!
//! Addresses: a clone family shares one subnet; member `m` (the family's
//! first VM is 0) has [`addr_of`]`(m)`. The VMM numbers members as clones
//! are made and tells each VM its relatives: [`parent_addr`],
//! [`sibling_addr`] (clones of the same clone call), [`child_addr`] (clones
//! of this VM's latest call). In a flat family, clone `j` is member `j`. After a clone the VMM has given the NIC a new MAC
//! and address; the stack notices at its next poll, re-addresses itself,
//! and every socket that was open at the clone call answers
//! [`Error::Reset`] in the clone (in the parent it goes on as before).

mod capi;
mod host;
mod socket;
mod virtio;

pub(crate) use host::flush_pending;

use crate::rt;
use alloc::boxed::Box;
use core::cell::UnsafeCell;
pub use sf_net::{Ipv4Addr, Net, NetError as Error, SockId};
pub use socket::{TcpListener, TcpStream, UdpSocket};

enum State {
    Unopened,
    /// Why there is no network.
    Down(&'static str),
    Up(Box<Net>),
}

struct Global(UnsafeCell<State>);

// SAFETY: the guest runs one thread on one vCPU with no interrupts, and
// `with` never runs program code while it holds the state.
unsafe impl Sync for Global {}

static NET: Global = Global(UnsafeCell::new(State::Unopened));

fn open() -> State {
    let b = rt::boot();
    if b.mmio_base == 0 || host::net_ip_word() == 0 {
        return State::Down("this VM has no network interface");
    }
    let nic = match virtio::VirtioNic::open(b.mmio_base) {
        Ok(nic) => nic,
        Err(e) => return State::Down(e.why()),
    };
    match Net::new(Box::new(nic), Box::new(host::GuestHost::new())) {
        Ok(net) => State::Up(Box::new(net)),
        Err(_) => State::Down("the boot information gives no usable address"),
    }
}

/// Why there is no network (`None` when there is one).
pub fn why_down() -> Option<&'static str> {
    match with(|_| Ok(())) {
        Ok(()) => None,
        // SAFETY: as in `with`; `open` has run, nothing holds the state.
        Err(_) => match unsafe { &*NET.0.get() } {
            State::Down(why) => Some(why),
            _ => None,
        },
    }
}

/// Runs `f` on the stack, starting it first if need be.
pub fn with<T>(f: impl FnOnce(&mut Net) -> Result<T, Error>) -> Result<T, Error> {
    // SAFETY: see `Global`: nothing else holds this reference while `f`
    // runs, and `f` (this crate's code or a program's tuning closure)
    // cannot call `with` again through the stack.
    let state = unsafe { &mut *NET.0.get() };
    if let State::Unopened = state {
        *state = open();
    }
    match state {
        State::Up(net) => f(net),
        State::Down(_) | State::Unopened => Err(Error::NoNetwork),
    }
}

/// Whether this VM has a working network interface.
pub fn available() -> bool {
    with(|_| Ok(())).is_ok()
}

/// This VM's IPv4 address (it changes at a clone).
pub fn my_addr() -> Option<Ipv4Addr> {
    with(|n| {
        n.poll();
        Ok(n.my_addr())
    })
    .ok()
}

/// Whether the NIC offloads TCP checksums and segmentation to the host
/// (the VMM offered it and the driver took it).
pub fn offloads() -> bool {
    with(|n| Ok(n.offloads())).unwrap_or(false)
}

/// The address of family member `member` (0 = the family's first VM).
pub fn addr_of(member: u32) -> Option<Ipv4Addr> {
    with(|n| n.addr_of(member).ok_or(Error::InvalidArgument)).ok()
}

/// The address of this VM's parent (`None` in the family's first VM).
pub fn parent_addr() -> Option<Ipv4Addr> {
    addr_of(sf_net::Relatives::from_word(host::family_word()).parent?)
}

/// The address of clone `j` (1-based) of the clone call that made this VM:
/// its sibling, or itself for its own clone ID.
pub fn sibling_addr(j: u32) -> Option<Ipv4Addr> {
    let base = sf_net::Relatives::from_word(host::family_word()).siblings_base?;
    addr_of(base.checked_add(j.checked_sub(1)?)?)
}

/// The address of clone `k` (1-based) of this VM's latest clone call.
pub fn child_addr(k: u32) -> Option<Ipv4Addr> {
    let base = sf_net::Relatives::from_word(host::family_word()).children_base?;
    addr_of(base.checked_add(k.checked_sub(1)?)?)
}

/// Moves pending frames and timers without blocking, and has the NIC send
/// what is queued.
pub fn poll() {
    let _ = with(|n| {
        n.poll();
        Ok(())
    });
    flush_pending();
}

/// Sleeps for `d` while keeping the stack running (without a NIC: just
/// returns).
pub fn sleep(d: core::time::Duration) {
    let us = micros(Some(d)).unwrap_or(0);
    let _ = with(|n| {
        n.idle(us);
        Ok(())
    });
}

fn micros(d: Option<core::time::Duration>) -> Option<u64> {
    d.map(|d| d.as_micros().min(u64::MAX as u128) as u64)
}

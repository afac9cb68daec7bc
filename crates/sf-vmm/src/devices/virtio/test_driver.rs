//! A minimal virtio-mmio driver over test guest RAM, as a polling guest
//! driver would do it, to drive the transport and the NIC in unit tests.

use super::dma::DmaWindow;
use super::mmio::{reg, Action, MmioTransport};
use super::net::Net;
use super::{status, Mem};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use vm_memory::{Bytes, GuestAddress};

pub const RAM: u64 = 4 << 20;
pub const WINDOW: DmaWindow = DmaWindow {
    start: 1 << 20,
    end: RAM,
};
pub const SIZE: u16 = 256;
pub const BUF: u64 = 2048;
pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;

pub fn ram() -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

/// A datagram socket pair: one end for the NIC, one for the test.
pub fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: both fds are fresh and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

pub fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70000];
    // SAFETY: reads into the buffer, at most its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

pub fn send(fd: &OwnedFd, bytes: &[u8]) {
    assert!(try_send(fd, bytes), "socket pair full");
}

/// `false` when the socket's queue is full.
pub fn try_send(fd: &OwnedFd, bytes: &[u8]) -> bool {
    // SAFETY: writes the slice.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    n == bytes.len() as isize
}

pub struct Driver {
    pub t: MmioTransport<Net>,
    pub mem: Mem,
    pub avail_idx: [u16; 2],
    pub used_seen: [u16; 2],
    pub notifies: u64,
    pub event_idx: bool,
}

/// Where queue `q`'s rings and buffers are.
pub fn desc(q: usize) -> u64 {
    WINDOW.start + q as u64 * 0x4000
}
pub fn avail(q: usize) -> u64 {
    desc(q) + 0x1000
}
pub fn used(q: usize) -> u64 {
    desc(q) + 0x2000
}
pub fn buf(q: usize, i: u16) -> u64 {
    (2 << 20) + q as u64 * (SIZE as u64 * BUF) + u64::from(i) * BUF
}

impl Driver {
    pub fn new(net: Net) -> Driver {
        let mem = ram();
        Driver {
            t: MmioTransport::new(net, WINDOW),
            mem,
            avail_idx: [0; 2],
            used_seen: [0; 2],
            notifies: 0,
            event_idx: false,
        }
    }

    pub fn r(&mut self, off: u64) -> u32 {
        let mut d = [0u8; 4];
        self.t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    /// A register write, and what the VMM does after it.
    pub fn w(&mut self, off: u64, v: u32) -> Action {
        let a = self.t.write(off, &v.to_le_bytes());
        match a {
            Action::None => {}
            Action::Work => self.t.run(&self.mem),
            Action::Wait(d) => self.t.wait(&self.mem, d),
        }
        a
    }

    /// An exit to the device (any register write).
    pub fn run(&mut self) {
        self.t.run(&self.mem);
    }

    pub fn wait(&mut self, d: std::time::Duration) {
        self.t.wait(&self.mem, d);
    }

    /// Negotiates `features` and stops before the queues are set up.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.w(reg::STATUS, 0);
        self.w(reg::STATUS, status::ACKNOWLEDGE);
        self.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w(reg::DRIVER_FEATURES_SEL, 0);
        self.w(reg::DRIVER_FEATURES, features as u32);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.w(reg::STATUS, s);
        self.event_idx = features & super::features::RING_EVENT_IDX != 0;
        self.r(reg::STATUS) & status::FEATURES_OK != 0
    }

    pub fn setup_queue(&mut self, q: usize, d: u64, a: u64, u: u64) {
        self.w(reg::QUEUE_SEL, q as u32);
        self.w(reg::QUEUE_NUM, SIZE.into());
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, d),
            (reg::QUEUE_DRIVER_LOW, a),
            (reg::QUEUE_DEVICE_LOW, u),
        ] {
            self.w(low, addr as u32);
            self.w(low + 4, (addr >> 32) as u32);
        }
        self.w(reg::QUEUE_READY, 1);
    }

    pub fn driver_ok(&mut self) {
        let s = self.r(reg::STATUS);
        self.w(reg::STATUS, s | status::DRIVER_OK);
    }

    /// The whole bring-up with `features`.
    pub fn start(net: Net, features: u64) -> Driver {
        let mut d = Driver::new(net);
        assert!(d.negotiate(features));
        for q in 0..2 {
            d.setup_queue(q, desc(q), avail(q), used(q));
        }
        d.driver_ok();
        assert_eq!(d.r(reg::STATUS) & status::NEEDS_RESET, 0);
        d
    }

    pub fn write_desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(desc(q) + u64::from(i) * 16);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    /// Makes chain `head` available; notifies as a virtio driver would
    /// (always without EVENT_IDX, else when `avail_event` says so).
    pub fn publish(&mut self, q: usize, head: u16, notify: bool) {
        let old = self.avail_idx[q];
        let slot = avail(q) + 4 + 2 * u64::from(old % SIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        let new = old.wrapping_add(1);
        self.avail_idx[q] = new;
        self.mem
            .store(new, GuestAddress(avail(q) + 2), Ordering::Release)
            .unwrap();
        if !notify {
            return;
        }
        let kick = if self.event_idx {
            let event: u16 = self
                .mem
                .read_obj(GuestAddress(used(q) + 4 + 8 * u64::from(SIZE)))
                .unwrap();
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            true
        };
        if kick {
            self.notifies += 1;
            self.w(reg::QUEUE_NOTIFY, q as u32);
        }
    }

    /// Queues one frame (header + `frame`) on TX in descriptor `i`.
    pub fn tx(&mut self, i: u16, frame: &[u8], notify: bool) {
        let at = buf(1, i);
        let mut bytes = vec![0u8; 12];
        bytes.extend_from_slice(frame);
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        self.write_desc(1, i, at, bytes.len() as u32, 0, 0);
        self.publish(1, i, notify);
    }

    /// Posts receive buffer `i` (one 2 KiB descriptor).
    pub fn post_rx(&mut self, i: u16) {
        self.write_desc(0, i, buf(0, i), BUF as u32, WRITE, 0);
        self.publish(0, i, true);
    }

    /// New used entries of queue `q`: (descriptor id, length).
    pub fn take_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(used(q) + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen[q] != idx {
            let e = used(q) + 4 + 8 * u64::from(self.used_seen[q] % SIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
            out.push((id, len));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        out
    }

    /// An explicit notify (an exit to the device).
    pub fn kick(&mut self, q: usize) {
        self.w(reg::QUEUE_NOTIFY, q as u32);
    }

    pub fn needs_reset(&mut self) -> bool {
        self.r(reg::STATUS) & status::NEEDS_RESET != 0
    }
}

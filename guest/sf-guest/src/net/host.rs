//! What the network stack needs from this VM: the TSC clock, the host's
//! wait (the NIC's WAIT register), and the identity the VMM wrote in the
//! boot information, which it rewrites for every clone.

use crate::{rand, rt, time};
use core::sync::atomic::{AtomicBool, Ordering};
use sf_abi::net::FamilyNet;
use sf_net::{Host, Identity, Ipv4Addr};

/// The NIC's WAIT register (a u32 of microseconds, in slot 0): the VMM
/// sends the frames queued for transmission, waits for the TAP for at most
/// that long (less if a frame arrives, bounded by the run's deadline),
/// fills receive buffers and resumes the guest. 0: no wait.
const WAIT_REGISTER: u64 = 0xF0;

/// Frames are queued that the NIC has not been told to send: the next
/// hypercall tells it first ([`flush_pending`]), or the next wait does.
static FLUSH_PENDING: AtomicBool = AtomicBool::new(false);

/// Before any exit to the host: lets the NIC send what the stack queued
/// (one MMIO write, itself an exit, only when something is queued). A
/// program that sends and then computes without a network call or a
/// hypercall keeps its data queued until it makes one, as it keeps its
/// peers' data unread (see the module).
pub(crate) fn flush_pending() {
    if FLUSH_PENDING.swap(false, Ordering::Relaxed) {
        write_wait(rt::boot().mmio_base, 0);
    }
}

/// Writes the NIC's WAIT register: `us` microseconds at most.
fn write_wait(base: u64, us: u32) {
    if base != sf_abi::layout::MMIO_BASE {
        return;
    }
    // SAFETY: the NIC's slot is mapped for ring 3 whenever the stack runs
    // (it was opened there); writing this register only makes the host do
    // the NIC's work and sleep.
    unsafe { ((base + WAIT_REGISTER) as *mut u32).write_volatile(us) };
}

pub(crate) struct GuestHost {
    /// The identity last computed, and the `net_ip` word it came from.
    id: Identity,
    ip_word: u64,
    /// The NIC's slot (`BootInfo::mmio_base`).
    base: u64,
}

/// The boot block's `net_ip` word, read afresh: the VMM rewrites it when
/// this VM becomes a clone.
pub(crate) fn net_ip_word() -> u64 {
    let b: *const sf_abi::boot_info::BootInfo = rt::boot();
    // SAFETY: the boot block is mapped for the whole run; a volatile read
    // of one aligned word sees what the VMM wrote since the last one.
    unsafe { core::ptr::addr_of!((*b).net_ip).read_volatile() }
}

/// This VM's identity from the boot block: the MAC follows from the family
/// and the member number, as the VMM programs the NIC (or, outside a
/// family, from the NIC's configuration space).
pub(crate) fn identity(ip_word: u64) -> Identity {
    let b = rt::boot();
    let ip = Ipv4Addr::from_bits(ip_word as u32);
    let family = family_net();
    let mac = family
        .and_then(|f| f.mac_of(f.member_of(ip.to_bits())?))
        .unwrap_or_else(|| config_mac(b.mmio_base));
    Identity {
        mac,
        ip,
        prefix_len: b.net_prefix_len.min(32) as u8,
        family,
    }
}

/// The boot block's `family_net` word, read afresh: the VMM rewrites it in
/// a clone, and in a parent at each clone call (its children's numbers).
pub(crate) fn family_word() -> u64 {
    let b: *const sf_abi::boot_info::BootInfo = rt::boot();
    // SAFETY: as in `net_ip_word`.
    unsafe { core::ptr::addr_of!((*b).family_net).read_volatile() }
}

/// The family's network number: the word's low 8 bits.
pub(crate) fn family_net() -> Option<FamilyNet> {
    FamilyNet::new(family_word() as u8)
}

/// The MAC in slot 0's virtio-net configuration space (offset 0x100).
fn config_mac(base: u64) -> [u8; 6] {
    let mut mac = [0u8; 6];
    if base == sf_abi::layout::MMIO_BASE {
        for (i, m) in mac.iter_mut().enumerate() {
            // SAFETY: slot 0 is mapped when `mmio_base` is set; a byte read
            // of the configuration space has no side effect.
            *m = unsafe { ((base + 0x100 + i as u64) as *const u8).read_volatile() };
        }
    }
    mac
}

impl GuestHost {
    pub(crate) fn new() -> GuestHost {
        let ip_word = net_ip_word();
        GuestHost {
            id: identity(ip_word),
            ip_word,
            base: rt::boot().mmio_base,
        }
    }
}

impl Host for GuestHost {
    fn now_us(&mut self) -> u64 {
        time::now_ns() / 1000
    }

    fn wait(&mut self, timeout_us: u64) {
        FLUSH_PENDING.store(false, Ordering::Relaxed);
        write_wait(self.base, timeout_us.min(u32::MAX as u64) as u32);
    }

    fn flush_soon(&mut self) {
        FLUSH_PENDING.store(true, Ordering::Relaxed);
    }

    fn identity(&mut self) -> Identity {
        let w = net_ip_word();
        if w != self.ip_word {
            self.ip_word = w;
            self.id = identity(w);
        }
        self.id
    }

    fn random(&mut self) -> u64 {
        rand::next_u64()
    }
}

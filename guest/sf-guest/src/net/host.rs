//! What the network stack needs from this VM: the TSC clock, the host's
//! wait (hypercall 24 `NetWait`), and the identity the VMM wrote in the
//! boot information, which it rewrites for every clone.

use crate::{hypercall, rand, rt, time};
use sf_abi::net::FamilyNet;
use sf_net::{Host, Identity, Ipv4Addr};

/// `NetWait(timeout_us)`: the VMM polls the NIC's backend for at most
/// `timeout_us` (less if a frame arrives), fills receive buffers and
/// returns. Hypercall numbers 24 and 30..=39 are the network's.
pub(crate) const NET_WAIT: u32 = 24;

pub(crate) struct GuestHost {
    /// The identity last computed, and the `net_ip` word it came from.
    id: Identity,
    ip_word: u64,
    /// False once the VMM answered that it has no `NetWait`: then the
    /// stack polls the rings without sleeping.
    can_wait: bool,
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
    let family = FamilyNet::from_word(b.family_net);
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
            can_wait: rt::has_hypercalls(),
        }
    }
}

impl Host for GuestHost {
    fn now_us(&mut self) -> u64 {
        time::now_ns() / 1000
    }

    fn wait(&mut self, timeout_us: u64) {
        if !self.can_wait {
            core::hint::spin_loop();
            return;
        }
        // SAFETY: no memory is passed.
        let r = unsafe { hypercall::raw(NET_WAIT, timeout_us, 0, 0, 0) };
        if let Err(sf_abi::hypercall::Error::NoSys) = hypercall::result(r) {
            self.can_wait = false;
        }
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

//! A monotonic clock from the TSC, calibrated by the frequency the host
//! hands over in the boot information block.

use crate::rt;

/// Raw time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is allowed in ring 3 (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Nanoseconds since the guest's first ring-3 instruction.
pub fn now_ns() -> u64 {
    let b = rt::boot();
    let ticks = rdtsc().wrapping_sub(b.first_tsc);
    (ticks as u128 * 1_000_000 / b.tsc_khz.max(1) as u128) as u64
}

/// Whether the host measured the TSC frequency (else it is a guess).
pub fn calibrated() -> bool {
    rt::boot().flags & sf_abi::boot_info::FLAG_TSC_CALIBRATED != 0
}

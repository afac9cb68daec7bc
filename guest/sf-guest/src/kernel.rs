//! Where the guest kernel's ring-0 pieces are, for test guests that check
//! ring 3 cannot reach them (they are supervisor-only pages).

use crate::rt;

extern "C" {
    static _sf_isr_0: u8;
}

/// Address of the exception stub for `vector` (16 bytes per stub).
pub fn isr_stub(vector: u64) -> u64 {
    // SAFETY: only the address of the linker-placed stub is taken.
    let base = unsafe { &_sf_isr_0 as *const u8 as u64 };
    base + vector * 16
}

/// `(heap_start, heap_end, stack_top)` as the boot block gives them.
pub fn regions() -> (u64, u64, u64) {
    let b = rt::boot();
    (b.heap_start, b.heap_end, b.stack_top)
}

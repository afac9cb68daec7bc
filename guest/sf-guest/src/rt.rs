//! The ring-3 start-up path and process-like exit.

use crate::{console, heap, hypercall};
use core::sync::atomic::{AtomicPtr, Ordering};
use sf_abi::boot_info::{self, BootInfo};
use sf_abi::hypercall::Call;

static BOOT: AtomicPtr<BootInfo> = AtomicPtr::new(core::ptr::null_mut());

extern "Rust" {
    fn __sf_app_main() -> i32;
}

/// The boot information block; valid from the first ring-3 instruction on.
pub(crate) fn boot() -> &'static BootInfo {
    // SAFETY: set once in `sf_rt_start` to the VMM-written block, which
    // lives for the whole run and is only written by the entry stub before.
    unsafe { &*BOOT.load(Ordering::Relaxed) }
}

pub(crate) fn has_hypercalls() -> bool {
    boot().flags & boot_info::FLAG_HYPERCALLS != 0
}

#[no_mangle]
extern "C" fn sf_rt_start(info: *mut BootInfo) -> ! {
    BOOT.store(info, Ordering::Relaxed);
    let b = boot();
    if b.magic != boot_info::MAGIC {
        // Nothing sane to run on; a ud2 reaches the VMM as an exception.
        // SAFETY: raises #UD on purpose.
        unsafe { core::arch::asm!("ud2", options(noreturn)) }
    }
    heap::init(b.heap_start, b.heap_end);
    crate::rand::seed(b.seed);
    // SAFETY: `main!` in the application defines this symbol.
    let code = unsafe { __sf_app_main() };
    exit(code)
}

/// Ends the VM with `status` (the host process exits with `status & 0xff`).
pub fn exit(status: i32) -> ! {
    console::flush();
    if has_hypercalls() {
        // SAFETY: exit reads no memory.
        unsafe { hypercall::raw(Call::Exit as u32, status as u32 as u64, 0, 0, 0) };
    } else {
        hypercall::debug_exit(status as u8);
    }
    loop {
        core::hint::spin_loop();
    }
}

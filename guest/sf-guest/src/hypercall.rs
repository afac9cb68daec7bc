//! Raw hypercalls (see `sf_abi::hypercall` for the convention) and the
//! fallbacks used when no SnowFlock VMM is present.

use core::arch::asm;
use sf_abi::hypercall::{Call, Error, DEBUG_EXIT_PORT, PORT, SERIAL_PORT};

/// Issues hypercall `call` with up to four arguments; returns the raw `rax`.
///
/// # Safety
/// The host reads or writes guest memory named by the arguments; the caller
/// must pass pointers it owns for the duration of the call.
#[inline(always)]
pub unsafe fn raw(call: u32, a0: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    // Frames a TCP send left queued leave first: this call may block, or
    // end or clone the VM.
    crate::net::flush_pending();
    let ret: u64;
    asm!(
        "out dx, eax",
        in("dx") PORT,
        inlateout("rax") call as u64 => ret,
        in("rdi") a0,
        in("rsi") a1,
        in("r8") a2,
        in("r9") a3,
        options(nostack),
    );
    ret
}

/// `Ok(value)` or the host's error code.
pub fn result(ret: u64) -> Result<u64, Error> {
    match Error::from_ret(ret) {
        Some(e) => Err(e),
        None => Ok(ret),
    }
}

/// Writes to the console; returns the bytes the host accepted.
pub fn console_write(bytes: &[u8]) -> Result<u64, Error> {
    // SAFETY: the host only reads `bytes`.
    result(unsafe {
        raw(
            Call::ConsoleWrite as u32,
            bytes.as_ptr() as u64,
            bytes.len() as u64,
            0,
            0,
        )
    })
}

pub(crate) fn serial_write(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: the serial port is open in the TSS I/O bitmap; an `out`
        // to it has no effect on guest memory.
        unsafe { asm!("out dx, al", in("dx") SERIAL_PORT, in("al") b, options(nomem, nostack)) };
    }
}

pub(crate) fn debug_exit(status: u8) {
    // SAFETY: as for `serial_write`; QEMU's isa-debug-exit ends the VM.
    unsafe {
        asm!("out dx, al", in("dx") DEBUG_EXIT_PORT, in("al") status, options(nomem, nostack))
    };
}

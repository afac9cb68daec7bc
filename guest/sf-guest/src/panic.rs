//! The panic handler: formats the message into a fixed buffer (the heap may
//! be what broke) and reports it to the host, which ends the run.

use crate::{console, hypercall, rt};
use core::fmt::Write;
use core::panic::PanicInfo;
use sf_abi::hypercall::Call;

const MSG_MAX: usize = 1024;

struct Fixed {
    len: usize,
    buf: [u8; MSG_MAX],
}

impl Write for Fixed {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(MSG_MAX - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    console::flush();
    let mut m = Fixed {
        len: 0,
        buf: [0; MSG_MAX],
    };
    let _ = write!(m, "{}", info.message());
    if let Some(loc) = info.location() {
        let _ = write!(m, " at {}:{}", loc.file(), loc.line());
    }
    if rt::has_hypercalls() {
        // SAFETY: the host reads the message buffer only.
        unsafe {
            hypercall::raw(
                Call::Panic as u32,
                m.buf.as_ptr() as u64,
                m.len as u64,
                0,
                0,
            )
        };
    } else {
        hypercall::serial_write(b"guest panicked: ");
        hypercall::serial_write(&m.buf[..m.len]);
        hypercall::serial_write(b"\n");
        hypercall::debug_exit(101);
    }
    loop {
        core::hint::spin_loop();
    }
}

/// The precompiled `core` was built for unwinding and references this
/// symbol; with `panic=abort` nothing ever unwinds, so it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// Likewise referenced by the precompiled `alloc`'s landing pads, which
/// never run under `panic=abort`.
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

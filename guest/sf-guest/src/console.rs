//! Console output: `print!`/`println!` into a line buffer that goes to the
//! host one hypercall per line (or per full buffer), never one per byte.

use crate::{hypercall, rt};
use core::cell::UnsafeCell;
use core::fmt::{self, Write};

const BUF: usize = 4096;

struct LineBuffer {
    len: usize,
    bytes: [u8; BUF],
}

/// The guest runs one thread, so the buffer needs no lock; the cell only
/// keeps `static` happy.
struct Shared(UnsafeCell<LineBuffer>);
// SAFETY: single-threaded guest; no reference outlives one `with` call.
unsafe impl Sync for Shared {}

static OUT: Shared = Shared(UnsafeCell::new(LineBuffer {
    len: 0,
    bytes: [0; BUF],
}));

fn with<R>(f: impl FnOnce(&mut LineBuffer) -> R) -> R {
    // SAFETY: see `Shared`; `f` never re-enters `with` (flushing writes
    // through `emit`, which does not touch the buffer).
    f(unsafe { &mut *OUT.0.get() })
}

fn emit(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if rt::has_hypercalls() {
        // An error here means the host refused the buffer; there is nowhere
        // better to report it.
        let _ = hypercall::console_write(bytes);
    } else {
        hypercall::serial_write(bytes);
    }
}

/// Sends whatever is buffered.
pub fn flush() {
    with(|b| {
        emit(&b.bytes[..b.len]);
        b.len = 0;
    });
}

/// Writes raw bytes to the console, buffered until a newline.
pub fn write_bytes(mut bytes: &[u8]) {
    with(|b| {
        while !bytes.is_empty() {
            let n = bytes.len().min(BUF - b.len);
            b.bytes[b.len..b.len + n].copy_from_slice(&bytes[..n]);
            b.len += n;
            bytes = &bytes[n..];
            if b.len == BUF || b.bytes[b.len - n..b.len].contains(&b'\n') {
                emit(&b.bytes[..b.len]);
                b.len = 0;
            }
        }
    });
}

/// A `core::fmt::Write` handle on the console.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _ = Console.write_fmt(args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::_print(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

//! The SnowFlock guest: a tiny ring-0 kernel that boots (through PVH, or
//! entered directly in ring 3 by the SnowFlock VMM) and the ring-3 runtime
//! applications link against: console, exit, clock, heap, arguments,
//! randomness, a panic handler that reports its message to the host, and
//! the SnowFlock clone API ([`clone`], and [`capi`] for C), and TCP/UDP
//! networking over the VM's NIC ([`net`]).
//!
//! An application is a `#![no_std]`, `#![no_main]` binary that names its
//! entry point with [`main!`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! sf_guest::main!(main);
//! fn main() -> i32 {
//!     sf_guest::println!("hello");
//!     0
//! }
//! ```
#![no_std]

extern crate alloc;

mod boot;
pub mod capi;
pub mod clone;
pub mod console;
pub mod env;
mod heap;
pub mod hypercall;
pub mod kernel;
mod libc_mem;
pub mod mem;
pub mod net;
mod panic;
pub mod rand;
mod rt;
pub mod time;

pub use console::{_print, Console};
pub use rt::exit;
/// The ABI shared with the host (layout, hypercall numbers), for guests
/// that test the boundary between ring 3 and the rest.
pub use sf_abi;
/// The host's error codes.
pub use sf_abi::hypercall::Error as hypercall_error;

/// Declares the application's entry point: a `fn() -> i32` whose result is
/// the VM's exit status.
#[macro_export]
macro_rules! main {
    ($f:path) => {
        #[no_mangle]
        fn __sf_app_main() -> i32 {
            $f()
        }
    };
}

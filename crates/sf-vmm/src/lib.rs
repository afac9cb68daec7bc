//! The SnowFlock host VMM: one KVM VM per process, booting a SnowFlock guest
//! (or any PVH ELF) and serving its hypercalls.
//!
//! [`Vm::new`] builds the VM from a [`VmConfig`] and a [`GuestImage`];
//! [`Vm::run`] runs it to an [`Outcome`], streaming the guest's console to a
//! writer, and returns a [`RunReport`] with timings. [`remote`] holds the
//! memory half of clones on other hosts: a page server and a
//! userfaultfd-driven fetcher.

mod boot;
pub mod clone;
mod console;
pub mod descriptor;
pub mod devices;
mod error;
mod guest_buffer;
pub mod hints;
mod hypercall;
pub mod image;
pub mod inputs;
pub mod memory;
pub mod net;
mod outcome;
pub mod output;
pub mod remote;
pub mod sandbox;
pub mod sanitize;
pub mod stats_file;
pub mod thread_priority;
mod vcpu;
mod vm;
mod watchdog;
mod will_read;

pub use clone::{default_max_clones, CloneSummary, CloneTimeline, MAX_CLONES_LIMIT};
pub use console::FdConsole;
pub use error::Error;
pub use image::{BootMode, GuestImage, ImageError, MAX_IMAGE_SIZE};
pub use outcome::{Outcome, RegisterDump};
pub use sf_abi::clone::CloneStatus;
pub use vm::{RunReport, Timings, Vm, VmConfig};

//! The contract between the SnowFlock host VMM and its guests.
//!
//! Everything both sides must agree on lives here and nowhere else: the guest
//! physical memory layout, the hypercall numbers and error codes, the boot
//! information block the VMM hands to the guest, the ELF note that marks a
//! SnowFlock guest, and the builder for the boot-time CPU tables (page
//! tables, GDT, IDT, TSS), which runs on the host for the fast boot path and
//! inside the guest's ring 0 for the standard PVH path.
#![no_std]
#![forbid(unsafe_code)]

pub mod boot_info;
pub mod clone;
pub mod hints;
pub mod hypercall;
pub mod io;
pub mod layout;
pub mod net;
pub mod note;
pub mod pagewalk;
pub mod rand;
pub mod tables;

/// Version of this ABI; bumped on any incompatible change. The VMM refuses a
/// guest whose note carries another version.
pub const ABI_VERSION: u32 = 3;

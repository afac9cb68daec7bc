//! The ELF note that marks a SnowFlock guest and tells the VMM where its
//! ring-3 entry and exception stubs are, so the VMM can build the CPU tables
//! itself and start the guest directly in ring 3 (no emulated ring-0 boot).
//!
//! Note name "SnowFlock", type [`NOTE_TYPE`], descriptor: seven
//! little-endian u64 words, see [`GuestNote`].

pub const NOTE_NAME: &[u8] = b"SnowFlock";
pub const NOTE_TYPE: u32 = 0x5346_0001;
/// PVH entry note (Xen's `XEN_ELFNOTE_PHYS32_ENTRY`), name "Xen".
pub const PVH_NOTE_TYPE: u32 = 18;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestNote {
    pub abi_version: u64,
    /// Ring-3 entry; called with `rdi` = the boot information block.
    pub user_entry: u64,
    /// Address of the exception stub for vector 0; vector `v` is at
    /// `isr_base + v * isr_stride`.
    pub isr_base: u64,
    pub isr_stride: u64,
    /// Linker's end of the image (heap starts after it).
    pub image_end: u64,
    /// The ring-0 text: page-aligned, inside the first 2 MiB, holding the
    /// exception stubs. Mapped supervisor-only, so ring 3 can neither read
    /// nor rewrite the code that runs with CPL 0.
    pub ring0_start: u64,
    pub ring0_end: u64,
}

impl GuestNote {
    pub const SIZE: usize = 7 * 8;

    pub fn parse(desc: &[u8]) -> Option<GuestNote> {
        if desc.len() < Self::SIZE {
            return None;
        }
        let w = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&desc[i * 8..i * 8 + 8]);
            u64::from_le_bytes(x)
        };
        Some(GuestNote {
            abi_version: w(0),
            user_entry: w(1),
            isr_base: w(2),
            isr_stride: w(3),
            image_end: w(4),
            ring0_start: w(5),
            ring0_end: w(6),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_descriptor_is_refused() {
        assert_eq!(GuestNote::parse(&[0u8; 55]), None);
        let mut d = [0u8; 56];
        d[8] = 0x10;
        assert_eq!(GuestNote::parse(&d).unwrap().user_entry, 0x10);
    }
}

//! Walks the guest's own 4-level page tables the way the CPU does for a
//! ring-3 access, so the host can refuse a hypercall buffer that ring 3
//! could not touch itself (a join record written into the IDT would hand
//! ring 3 its own ring 0).
//!
//! The tables are guest memory, so hostile: every table read goes through
//! the caller's bounds-checked reader, and an entry that points outside RAM,
//! sets a reserved large-page bit or a large page at the top level makes the
//! walk fail. A failed walk is an answer (`None`), never a panic; the walk
//! has at most four steps per page, so a table that points at itself cannot
//! make it loop.

extern crate alloc;
use crate::layout::PAGE;
use crate::tables::{LARGE, PRESENT, USER, WRITABLE};
use alloc::vec::Vec;

/// Reads one little-endian word of guest RAM; `None` outside RAM.
pub trait PhysRead {
    fn read_u64(&self, gpa: u64) -> Option<u64>;
}

/// What the host will do with a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The host only reads it: present + user at every level.
    Read,
    /// The host writes it: also writable at every level.
    Write,
}

/// Physical-address bits of a table entry (bits 12..51).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bit 12 of a large-page entry is PAT, not address.
const LARGE_PAT: u64 = 1 << 12;

/// Translates the ring-3 virtual address `va` for `access` through the
/// tables at `cr3`: the guest-physical address and how many bytes from `va`
/// on stay in the same page. `None` when ring 3 could not make this access.
pub fn translate_user(
    mem: &impl PhysRead,
    cr3: u64,
    va: u64,
    access: Access,
) -> Option<(u64, u64)> {
    // Bits 63..48 must copy bit 47.
    if ((va as i64) << 16 >> 16) as u64 != va {
        return None;
    }
    let mut table = cr3 & ADDR_MASK;
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        let entry = mem.read_u64(table.checked_add(((va >> shift) & 511) * 8)?)?;
        if entry & PRESENT == 0 || entry & USER == 0 {
            return None;
        }
        if access == Access::Write && entry & WRITABLE == 0 {
            return None;
        }
        if level > 1 && entry & LARGE != 0 {
            let size = 1u64 << shift;
            // 1 GiB (level 3) and 2 MiB (level 2) pages; PS is reserved in
            // a PML4 entry, and so are the address bits below the page size.
            if level == 4 || entry & ADDR_MASK & (size - 1) & !LARGE_PAT != 0 {
                return None;
            }
            let offset = va & (size - 1);
            return Some(((entry & ADDR_MASK & !(size - 1)) + offset, size - offset));
        }
        table = entry & ADDR_MASK;
    }
    let offset = va & (PAGE - 1);
    Some((table + offset, PAGE - offset))
}

/// The guest-physical pieces of the ring-3 buffer `[va, va + len)`, in
/// order, adjacent pieces merged; `None` if any byte of it is not accessible
/// to ring 3 for `access`. An empty buffer names no memory and is always
/// fine. The caller bounds `len` (the walk costs one step per page).
pub fn user_buffer(
    mem: &impl PhysRead,
    cr3: u64,
    va: u64,
    len: u64,
    access: Access,
) -> Option<Vec<(u64, u64)>> {
    let mut pieces: Vec<(u64, u64)> = Vec::new();
    if len == 0 {
        return Some(pieces);
    }
    va.checked_add(len - 1)?;
    let mut done = 0;
    while done < len {
        let (gpa, in_page) = translate_user(mem, cr3, va + done, access)?;
        let n = in_page.min(len - done);
        match pieces.last_mut() {
            Some((start, l)) if *start + *l == gpa => *l += n,
            _ => pieces.push((gpa, n)),
        }
        done += n;
    }
    Some(pieces)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::layout::*;
    use crate::tables::{build, GuestWords, Ring0};
    use std::collections::BTreeMap;
    use std::vec;

    /// Sparse guest RAM of `size` bytes; unwritten words read as 0.
    struct Ram {
        size: u64,
        words: BTreeMap<u64, u64>,
    }

    impl GuestWords for Ram {
        fn write_u64(&mut self, gpa: u64, value: u64) {
            self.words.insert(gpa, value);
        }
    }

    impl PhysRead for Ram {
        fn read_u64(&self, gpa: u64) -> Option<u64> {
            if gpa.checked_add(8)? > self.size || !gpa.is_multiple_of(8) {
                return None;
            }
            Some(self.words.get(&gpa).copied().unwrap_or(0))
        }
    }

    const RING0: Ring0 = Ring0 {
        isr_base: 0x10_0000,
        isr_stride: 16,
        text_start: 0x10_0000,
        text_end: 0x10_1000,
    };

    fn built(mem: u64) -> Ram {
        let mut r = Ram {
            size: mem,
            words: BTreeMap::new(),
        };
        build(&mut r, mem, &RING0).unwrap();
        r
    }

    fn can(r: &Ram, va: u64, len: u64, access: Access) -> bool {
        user_buffer(r, PML4, va, len, access).is_some()
    }

    #[test]
    fn ring3_reaches_its_own_ram_and_nothing_of_ring_0() {
        let mem = 64 << 20;
        let r = built(mem);
        let guard = stack_guard(mem);
        for (va, len) in [
            (0x10_1000, 16),
            (mem - 16, 16),
            (guard - 16, 16),
            (guard + PAGE, 8),
        ] {
            assert!(can(&r, va, len, Access::Write), "{va:#x}");
        }
        assert_eq!(
            user_buffer(&r, PML4, (4 << 20) - 8, 16, Access::Write),
            Some(vec![((4 << 20) - 8, 16)]),
            "identity map, merged across the 2 MiB boundary"
        );
        for a in [
            0,
            GDT,
            IDT,
            TSS,
            PML4,
            PDPT,
            PT_LOW,
            PT_GUARD,
            PD_BASE,
            KERNEL_STACK_TOP - 8,
            0x10_0000,
            guard,
            mem,
        ] {
            assert!(!can(&r, a, 8, Access::Read), "{a:#x} readable from ring 3");
        }
        assert!(!can(&r, guard - 8, 16, Access::Read), "runs into the guard");
        assert!(!can(&r, mem - 8, 16, Access::Read), "runs past RAM");
        assert!(can(&r, CMDLINE, 16, Access::Read));
        assert!(
            !can(&r, CMDLINE, 16, Access::Write),
            "the arguments are read-only"
        );
        assert!(can(&r, BOOT_INFO, 16, Access::Write));
        assert!(can(&r, 0, 0, Access::Write), "empty names no memory");
        assert!(!can(&r, u64::MAX - 4, 8, Access::Read));
        assert!(
            !can(&r, 0x0000_8000_0000_0000, 8, Access::Read),
            "non-canonical"
        );
    }

    #[test]
    fn large_pages_and_malformed_entries() {
        let mut r = Ram {
            size: 1 << 20,
            words: BTreeMap::new(),
        };
        let rw = PRESENT | WRITABLE | USER;
        r.write_u64(0x1000, 0x2000 | rw);
        // A 1 GiB page at PDPT index 1 (maps physical 0).
        r.write_u64(0x2008, LARGE | rw);
        assert_eq!(
            translate_user(&r, 0x1000, (1 << 30) + 0x1234, Access::Write),
            Some((0x1234, (1 << 30) - 0x1234))
        );
        // Reserved address bits in a 1 GiB entry.
        r.write_u64(0x2010, LARGE | rw | 0x20_0000);
        assert_eq!(translate_user(&r, 0x1000, 2 << 30, Access::Read), None);
        // PS in the PML4 entry is reserved.
        r.write_u64(0x1008, LARGE | rw);
        assert_eq!(translate_user(&r, 0x1000, 1 << 39, Access::Read), None);
        // A table outside RAM.
        r.write_u64(0x2018, (64 << 30) | rw);
        assert_eq!(translate_user(&r, 0x1000, 3 << 30, Access::Read), None);
        // Read-only at one level is read-only.
        r.write_u64(0x2020, 0x1000 | PRESENT | USER);
        assert_eq!(translate_user(&r, 0x1000, 4 << 30, Access::Write), None);
        // A table that points at itself ends after four steps.
        r.write_u64(0x1010, 0x1000 | rw);
        let _ = translate_user(&r, 0x1000, 2 << 39, Access::Read);
    }

    mod hostile_tables {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary table words, CR3, address and length: the walk
            /// answers, never panics, and what it grants covers exactly the
            /// buffer (the host bounds-checks each piece against RAM).
            #[test]
            fn arbitrary_tables_never_panic_and_grants_cover_the_buffer(
                words in proptest::collection::vec((0u64..64, any::<u64>()), 0..64),
                cr3 in any::<u64>(),
                va in any::<u64>(),
                len in 0u64..0x4000,
                write in any::<bool>(),
            ) {
                let mut r = Ram { size: 1 << 20, words: BTreeMap::new() };
                for (slot, w) in words {
                    // Entries clustered on a few table pages so walks find them.
                    r.write_u64((slot % 4) * 0x1000 + (slot / 4) * 8, w);
                }
                let access = if write { Access::Write } else { Access::Read };
                if let Some(pieces) = user_buffer(&r, cr3, va, len, access) {
                    prop_assert_eq!(pieces.iter().map(|p| p.1).sum::<u64>(), len);
                    for (gpa, n) in pieces {
                        prop_assert!(gpa.checked_add(n).is_some());
                    }
                }
            }

            /// Any one bit flipped anywhere in the built tables: the walk
            /// still answers, and never grants the page tables themselves
            /// unless the flip was in the entry that maps them.
            #[test]
            fn a_corrupted_entry_is_answered(
                slot in 0u64..(0x20000 / 8),
                bit in 0u32..64,
                va in 0u64..(16 << 20),
            ) {
                let mut r = built(16 << 20);
                let a = slot * 8;
                let old = r.read_u64(a).unwrap();
                r.write_u64(a, old ^ (1 << bit));
                let _ = user_buffer(&r, PML4, va, 4096, Access::Write);
                let maps_pml4 = a == PT_LOW + (PML4 / PAGE) * 8;
                if !maps_pml4 {
                    prop_assert!(user_buffer(&r, PML4, PML4, 8, Access::Write).is_none());
                }
            }
        }
    }
}

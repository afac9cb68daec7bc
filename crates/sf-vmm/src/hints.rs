//! Free-page hints: the set of guest pages a clone may receive as zero
//! pages instead of the parent's bytes. Built from the guest's own hint
//! bitmap (see `sf_abi::hints`) at each clone call, or from a peer's
//! `CloneRequest::free_pages`; both are untrusted, so every constructor
//! clamps to guest RAM, merges and caps the size. A hint can only cost the
//! guest its own contents: a hinted page reads as zeros, never as anything
//! but the parent's bytes or zeros.

use crate::guest_buffer::{read, Caller};
use crate::memory::GuestRam;
use sf_abi::hints::{HintsHeader, HINT_PAGE};

/// Most ranges a `FreePages` keeps (and a `CloneRequest` may carry); more are
/// dropped smallest first, which is always safe (a dropped hint is fetched).
pub const MAX_FREE_RANGES: usize = 16384;

/// Sorted, disjoint, merged `(first_page, count)` ranges inside guest RAM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FreePages(Vec<(u64, u64)>);

impl FreePages {
    /// No hints.
    pub fn none() -> FreePages {
        FreePages(Vec::new())
    }

    /// Whether `page` is hinted free (binary search).
    pub fn contains(&self, page: u64) -> bool {
        let i = self.0.partition_point(|&(first, _)| first <= page);
        i > 0 && {
            let (first, count) = self.0[i - 1];
            page - first < count
        }
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Total hinted pages.
    pub fn pages(&self) -> u64 {
        self.0.iter().map(|&(_, c)| c).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The wire form of `CloneRequest::free_pages`.
    pub fn to_wire(&self) -> Vec<[u64; 2]> {
        self.0.iter().map(|&(f, c)| [f, c]).collect()
    }

    /// Clamps untrusted `(first_page, count)` pairs to `mem_pages`, drops
    /// empty ones, sorts and merges overlaps, then keeps the largest
    /// [`MAX_FREE_RANGES`]. Never panics, whatever the input.
    pub fn from_ranges(ranges: Vec<[u64; 2]>, mem_pages: u64) -> FreePages {
        let mut v: Vec<(u64, u64)> = ranges
            .into_iter()
            .filter_map(|[first, count]| {
                if first >= mem_pages {
                    return None;
                }
                let end = first.saturating_add(count).min(mem_pages);
                (end > first).then_some((first, end))
            })
            .collect();
        v.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (first, end) in v {
            match merged.last_mut() {
                Some((_, e)) if first <= *e => *e = (*e).max(end),
                _ => merged.push((first, end)),
            }
        }
        Self::capped(merged.into_iter().map(|(f, e)| (f, e - f)).collect())
    }

    /// Keeps the largest [`MAX_FREE_RANGES`] of sorted, disjoint ranges.
    fn capped(mut v: Vec<(u64, u64)>) -> FreePages {
        if v.len() > MAX_FREE_RANGES {
            // Largest first (ties: lower page first), keep the head, re-sort.
            v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            v.truncate(MAX_FREE_RANGES);
            v.sort_unstable();
        }
        FreePages(v)
    }

    /// Drops every hint below page `floor`: the first MiB (page tables,
    /// IDT, GDT, TSS and its I/O bitmap, the kernel stack) and the image
    /// (ring-0 code) must reach a clone as they are, or ring 3 could zero
    /// ring 0's structures in its clones.
    pub fn above(mut self, floor: u64) -> FreePages {
        self.0.retain_mut(|(first, count)| {
            let end = *first + *count;
            *first = (*first).max(floor);
            *count = end.saturating_sub(*first);
            *count > 0
        });
        self
    }

    /// Turns a little-endian bitmap (bit i = page i) into ranges, reading at
    /// most `bits` bits (already clamped by the caller to guest RAM).
    pub fn from_bitmap(bitmap: &[u8], bits: u64) -> FreePages {
        let bits = bits.min(bitmap.len() as u64 * 8);
        let mut v = Vec::new();
        let mut run: Option<u64> = None;
        let mut page = 0u64;
        while page < bits {
            let byte = bitmap[(page / 8) as usize];
            // Whole bytes of zeros or ones move eight pages at once.
            if page.is_multiple_of(8) && page + 8 <= bits && (byte == 0 || byte == 0xff) {
                match (byte, run) {
                    (0, Some(start)) => {
                        v.push((start, page - start));
                        run = None;
                    }
                    (0xff, None) => run = Some(page),
                    _ => {}
                }
                page += 8;
                continue;
            }
            let set = byte >> (page % 8) & 1 == 1;
            match (set, run) {
                (false, Some(start)) => {
                    v.push((start, page - start));
                    run = None;
                }
                (true, None) => run = Some(page),
                _ => {}
            }
            page += 1;
        }
        if let Some(start) = run {
            v.push((start, bits - start));
        }
        Self::capped(v)
    }
}

/// Why the guest's hints were not used (the clone then simply gets none).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HintsError {
    #[error("the hint header at {0:#x} is outside guest RAM or misaligned")]
    Header(u64),
    #[error("the hint header has the wrong magic or version")]
    Version,
    #[error("the hint bitmap at {0:#x} is outside guest RAM or misaligned")]
    Bitmap(u64),
}

/// Reads the guest's hint structure at `header_gpa` through bounds-checked
/// reads. `bitmap_bits` is clamped to the pages of guest RAM, so the read is
/// at most RAM/32768 bytes (32 KiB for a 1 GiB guest). Called at each clone
/// call: the guest may have changed the structure at any time. Both reads
/// go through [`crate::guest_buffer`] as `caller` (the clone call's): ring 3
/// may name only pages it can read itself, or it could point the bitmap at
/// ring 0's memory and learn its bits from which of its own pages a clone
/// gets as zeros. Pages below `floor` (ring 0's memory and the image) are
/// never hinted.
pub fn read_guest_hints(
    ram: &GuestRam,
    caller: Caller,
    header_gpa: u64,
    floor: u64,
) -> Result<FreePages, HintsError> {
    let mem_pages = ram.size() / HINT_PAGE;
    if !header_gpa.is_multiple_of(8) {
        return Err(HintsError::Header(header_gpa));
    }
    let size = HintsHeader::SIZE as u64;
    let raw =
        read(ram, caller, header_gpa, size, size).map_err(|_| HintsError::Header(header_gpa))?;
    let header = HintsHeader::from_bytes(raw.as_slice().try_into().expect("header size"));
    if !header.is_valid() {
        return Err(HintsError::Version);
    }
    if !header.bitmap_gpa.is_multiple_of(8) {
        return Err(HintsError::Bitmap(header.bitmap_gpa));
    }
    let bits = header.bitmap_bits.min(mem_pages);
    let bytes = bits.div_ceil(8);
    let bitmap = read(ram, caller, header.bitmap_gpa, bytes, mem_pages.div_ceil(8))
        .map_err(|_| HintsError::Bitmap(header.bitmap_gpa))?;
    Ok(FreePages::from_bitmap(&bitmap, bits).above(floor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_overlapping_and_adjacent_ranges() {
        let f = FreePages::from_ranges(vec![[10, 5], [0, 2], [12, 10], [2, 1], [30, 0]], 100);
        assert_eq!(f.ranges(), &[(0, 3), (10, 12)]);
        assert_eq!(f.pages(), 15);
        assert!(f.contains(0) && f.contains(2) && !f.contains(3));
        assert!(f.contains(21) && !f.contains(22) && !f.contains(9));
    }

    #[test]
    fn clamps_wild_and_wrapping_ranges() {
        let f = FreePages::from_ranges(
            vec![
                [u64::MAX, u64::MAX],
                [90, u64::MAX],
                [200, 1],
                [u64::MAX - 1, 5],
            ],
            100,
        );
        assert_eq!(f.ranges(), &[(90, 10)]);
    }

    #[test]
    fn keeps_the_largest_ranges_when_there_are_too_many() {
        let mut v: Vec<[u64; 2]> = (0..MAX_FREE_RANGES as u64 + 10)
            .map(|i| [i * 3, 1])
            .collect();
        v.push([10_000_000, 50]);
        let f = FreePages::from_ranges(v, u64::MAX);
        assert_eq!(f.ranges().len(), MAX_FREE_RANGES);
        assert!(f.contains(10_000_049));
    }

    #[test]
    fn bitmap_runs_become_ranges() {
        // Pages 1..=2, 8..=23 and 62..64 set; 64 bits read.
        let mut b = [0u8; 8];
        b[0] = 0b0000_0110;
        b[1] = 0xff;
        b[2] = 0xff;
        b[7] = 0b1100_0000;
        let f = FreePages::from_bitmap(&b, 64);
        assert_eq!(f.ranges(), &[(1, 2), (8, 16), (62, 2)]);
        // Bits beyond `bits` are ignored.
        assert_eq!(FreePages::from_bitmap(&b, 20).ranges(), &[(1, 2), (8, 12)]);
        assert!(FreePages::from_bitmap(&b, 10_000).pages() == 20);
    }

    fn header(ram: &GuestRam, at: u64, magic: u64, bitmap_gpa: u64, bits: u64) {
        let mut b = Vec::new();
        b.extend_from_slice(&magic.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&bitmap_gpa.to_le_bytes());
        b.extend_from_slice(&bits.to_le_bytes());
        ram.write(at, &b);
    }

    #[test]
    fn a_good_structure_is_read_and_clipped_to_the_floor() {
        let ram = GuestRam::new(4 << 20).unwrap();
        let magic = sf_abi::hints::HINTS_MAGIC;
        header(&ram, 0x20_0000, magic, 0x20_1000, 1024);
        // Pages 0..=511 hinted (the first 2 MiB: ring 0 and the image).
        ram.write(0x20_1000, &[0xff; 64]);
        // And pages 600..=607.
        ram.write(0x20_1000 + 75, &[0xff]);
        let f = read_guest_hints(&ram, Caller::Kernel, 0x20_0000, 256).unwrap();
        assert_eq!(f.ranges(), &[(256, 256), (600, 8)]);
    }

    #[test]
    fn hostile_structures_cost_only_the_hints() {
        let ram = GuestRam::new(4 << 20).unwrap();
        let mem = ram.size();
        let magic = sf_abi::hints::HINTS_MAGIC;
        // Header outside RAM, straddling its end, wrapping, misaligned.
        for at in [mem, mem - 8, u64::MAX - 7, u64::MAX, 0x1001] {
            assert!(matches!(
                read_guest_hints(&ram, Caller::Kernel, at, 0),
                Err(HintsError::Header(_))
            ));
        }
        header(&ram, 0x1000, magic ^ 1, 0x2000, 8);
        assert_eq!(
            read_guest_hints(&ram, Caller::Kernel, 0x1000, 0),
            Err(HintsError::Version)
        );
        // Bitmap outside RAM, wrapping, straddling the end, misaligned.
        for gpa in [mem, u64::MAX - 7, mem - 8, 0x2004] {
            header(&ram, 0x1000, magic, gpa, u64::MAX);
            assert!(matches!(
                read_guest_hints(&ram, Caller::Kernel, 0x1000, 0),
                Err(HintsError::Bitmap(_))
            ));
        }
        // Bits beyond RAM are clamped to RAM's pages: everything hinted
        // still ends at the last page of RAM, and never below the floor.
        ram.write(0x10_0000, &vec![0xff; 1024]);
        header(&ram, 0x1000, magic, 0x10_0000, u64::MAX);
        let f = read_guest_hints(&ram, Caller::Kernel, 0x1000, 256).unwrap();
        assert_eq!(f.ranges(), &[(256, mem / 4096 - 256)]);
        // The header inside its own bitmap, the bitmap over the header.
        header(&ram, 0x10_0000, magic, 0x10_0000, 4096);
        let f = read_guest_hints(&ram, Caller::Kernel, 0x10_0000, 0).unwrap();
        assert!(f.pages() <= mem / 4096);
    }

    #[test]
    fn ring3_cannot_point_its_hints_at_ring_0s_memory() {
        use sf_abi::layout::{self, PML4};
        use sf_abi::tables::{self, Ring0};
        let mem = 16 << 20;
        let ram = GuestRam::new(mem).unwrap();
        let ring0 = Ring0 {
            isr_base: 0x10_0000,
            isr_stride: 16,
            text_start: 0x10_0000,
            text_end: 0x10_1000,
        };
        tables::build(&mut &ram, mem, &ring0).unwrap();
        let user = Caller::User { cr3: Some(PML4) };
        let magic = sf_abi::hints::HINTS_MAGIC;
        // A header in user memory is read; the same bytes copied onto a
        // kernel page (as ring 0 could) are not, for ring 3.
        header(&ram, 0x40_0000, magic, 0x40_1000, 4096);
        assert!(read_guest_hints(&ram, user, 0x40_0000, 0).is_ok());
        header(&ram, layout::KERNEL_STACK_TOP - 64, magic, 0x40_1000, 4096);
        assert!(matches!(
            read_guest_hints(&ram, user, layout::KERNEL_STACK_TOP - 64, 0),
            Err(HintsError::Header(_))
        ));
        // A bitmap over the page tables or the IDT would tell ring 3 their
        // bits through which of its pages a clone gets as zeros.
        for kernel in [PML4, layout::IDT, layout::PD_BASE] {
            header(&ram, 0x40_0000, magic, kernel, 4096);
            assert!(
                matches!(
                    read_guest_hints(&ram, user, 0x40_0000, 0),
                    Err(HintsError::Bitmap(_))
                ),
                "{kernel:#x}"
            );
            assert!(read_guest_hints(&ram, Caller::Kernel, 0x40_0000, 0).is_ok());
        }
    }

    fn naive(ranges: &[[u64; 2]], mem_pages: u64, page: u64) -> bool {
        page < mem_pages && ranges.iter().any(|&[f, c]| page >= f && page - f < c)
    }

    proptest! {
        #[test]
        fn from_ranges_is_sorted_disjoint_clamped_and_exact(
            ranges in prop::collection::vec(
                (prop_oneof![0u64..300, any::<u64>()], prop_oneof![0u64..50, any::<u64>()]),
                0..64,
            ),
            mem_pages in prop_oneof![0u64..400, any::<u64>()],
            probes in prop::collection::vec(0u64..400, 32),
        ) {
            let input: Vec<[u64; 2]> = ranges.iter().map(|&(f, c)| [f, c]).collect();
            let f = FreePages::from_ranges(input.clone(), mem_pages);
            let mut prev_end: Option<u64> = None;
            for &(first, count) in f.ranges() {
                prop_assert!(count > 0);
                let end = first.checked_add(count).expect("no wrap");
                prop_assert!(end <= mem_pages);
                if let Some(p) = prev_end {
                    // Disjoint and merged: a gap of at least one page.
                    prop_assert!(first > p);
                }
                prev_end = Some(end);
            }
            // Under the cap nothing is dropped: membership is exact.
            for page in probes.into_iter().chain(f.ranges().iter().map(|r| r.0)) {
                prop_assert_eq!(f.contains(page), naive(&input, mem_pages, page));
            }
        }

        #[test]
        fn from_bitmap_matches_the_bits(bytes in prop::collection::vec(any::<u8>(), 0..64), bits in 0u64..600) {
            let f = FreePages::from_bitmap(&bytes, bits);
            for page in 0..600u64 {
                let want = page < bits
                    && (page / 8) < bytes.len() as u64
                    && bytes[(page / 8) as usize] >> (page % 8) & 1 == 1;
                prop_assert_eq!(f.contains(page), want);
            }
        }
    }
}

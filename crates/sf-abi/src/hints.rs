//! The guest's free-page hints: a header and a bitmap in the guest's own
//! RAM, registered once with `RegisterHints`. A set bit says "nothing the
//! guest will read before writing it", so a clone may get a zero page for
//! that page instead of the parent's bytes. The host treats every field as
//! hostile: it re-reads and bounds-checks the structure at each clone call.

/// `HintsHeader::magic`: "SFHINTS1" read as a little-endian `u64`.
pub const HINTS_MAGIC: u64 = u64::from_le_bytes(*b"SFHINTS1");
/// `HintsHeader::version` this ABI describes.
pub const HINTS_VERSION: u32 = 1;
/// Guest page size the bitmap counts in.
pub const HINT_PAGE: u64 = 4096;

/// Lives anywhere in guest RAM, 8-byte aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HintsHeader {
    pub magic: u64,
    pub version: u32,
    pub _reserved: u32,
    /// Guest-physical address of the bitmap, 8-byte aligned.
    pub bitmap_gpa: u64,
    /// Pages covered: bit i <=> guest page i (GPA i*4096). Little-endian
    /// `u64` words; bit i of word w is page 64*w+i.
    pub bitmap_bits: u64,
}

impl HintsHeader {
    /// Bytes of the header in guest memory.
    pub const SIZE: usize = 32;

    /// Decodes the header from its little-endian bytes.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> HintsHeader {
        let w = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let v = w(8);
        HintsHeader {
            magic: w(0),
            version: v as u32,
            _reserved: (v >> 32) as u32,
            bitmap_gpa: w(16),
            bitmap_bits: w(24),
        }
    }

    /// Whether magic and version are the ones this ABI describes.
    pub fn is_valid(&self) -> bool {
        self.magic == HINTS_MAGIC && self.version == HINTS_VERSION
    }
}

/// Pages wholly inside the bytes `[start, end)`, as `[first, end)` page
/// numbers (empty when `first >= end`): the only pages a hint may cover.
pub fn whole_pages(start: u64, end: u64) -> (u64, u64) {
    (start.div_ceil(HINT_PAGE), end / HINT_PAGE)
}

/// Pages the bytes `[start, end)` touch, as `[first, end)` page numbers.
pub fn touched_pages(start: u64, end: u64) -> (u64, u64) {
    if end <= start {
        return (0, 0);
    }
    (start / HINT_PAGE, end.div_ceil(HINT_PAGE))
}

/// Sets bits `[first, end)` of a little-endian bitmap (clamped to it),
/// whole words at a time.
pub fn set_bits(words: &mut [u64], first: u64, end: u64) {
    apply_bits(words, first, end, true)
}

/// Clears bits `[first, end)` of a little-endian bitmap (clamped to it).
pub fn clear_bits(words: &mut [u64], first: u64, end: u64) {
    apply_bits(words, first, end, false)
}

fn apply_bits(words: &mut [u64], first: u64, end: u64, set: bool) {
    let end = end.min(words.len() as u64 * 64);
    let mut bit = first;
    while bit < end {
        let w = (bit / 64) as usize;
        let lo = bit % 64;
        let hi = (end - w as u64 * 64).min(64);
        let mask = if hi - lo == 64 {
            u64::MAX
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        };
        if set {
            words[w] |= mask;
        } else {
            words[w] &= !mask;
        }
        bit = (w as u64 + 1) * 64;
    }
}

/// Whether bit `page` is set (false beyond the bitmap).
pub fn bit(words: &[u64], page: u64) -> bool {
    words
        .get((page / 64) as usize)
        .is_some_and(|w| w >> (page % 64) & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_ranges_round_the_right_way() {
        assert_eq!(whole_pages(1, 8192), (1, 2));
        assert_eq!(whole_pages(4096, 8191), (1, 1));
        assert_eq!(whole_pages(0, 4096 * 3), (0, 3));
        assert_eq!(touched_pages(4095, 4097), (0, 2));
        assert_eq!(touched_pages(5, 5), (0, 0));
    }

    #[test]
    fn bit_ranges_match_a_bit_by_bit_model() {
        let cases = [
            (0, 0),
            (0, 1),
            (3, 64),
            (63, 65),
            (0, 192),
            (70, 150),
            (100, 1000),
        ];
        for &(f, e) in &cases {
            for set in [true, false] {
                let mut words = if set { [0u64; 3] } else { [u64::MAX; 3] };
                apply_bits(&mut words, f, e, set);
                for b in 0..192u64 {
                    let inside = b >= f && b < e;
                    assert_eq!(bit(&words, b), inside == set, "{f}..{e} bit {b}");
                }
            }
        }
        assert!(!bit(&[u64::MAX], 64));
    }

    #[test]
    fn header_decodes_little_endian_fields() {
        let mut b = [0u8; HintsHeader::SIZE];
        b[..8].copy_from_slice(b"SFHINTS1");
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
        b[24..32].copy_from_slice(&77u64.to_le_bytes());
        let h = HintsHeader::from_bytes(&b);
        assert!(h.is_valid());
        assert_eq!((h.bitmap_gpa, h.bitmap_bits), (0x1000, 77));
        assert_eq!(core::mem::size_of::<HintsHeader>(), HintsHeader::SIZE);
    }
}

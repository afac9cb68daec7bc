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

#[cfg(test)]
mod tests {
    use super::*;

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

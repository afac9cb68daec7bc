//! Inputs and outputs: the input table the VMM writes into guest RAM (the
//! files given with `--input`), the guest physical layout of the inputs,
//! and the naming rule shared by inputs and outputs.
//!
//! Layout: the inputs region starts at the first 2 MiB boundary at or above
//! the end of the image and holds the input table (one [`INPUT_ENTRY_SIZE`]
//! entry per input) followed by each file, page aligned. The region ends
//! at a 2 MiB boundary, is mapped user read-only with large pages, and the
//! heap starts right after it.
//!
//! Outputs travel by hypercall ([`crate::hypercall::Call::OutputWrite`],
//! [`crate::hypercall::Call::OutputAppend`]) in chunks of at most
//! [`OUTPUT_CHUNK_MAX`] bytes, so the host never holds more than one chunk
//! of a guest's output in memory however large the file grows.

use crate::layout::{stack_guard, UserRegions, LARGE_PAGE, PAGE};

/// Longest input or output name, in bytes.
pub const NAME_MAX: usize = 64;
/// Most inputs one VM may have.
pub const INPUTS_MAX: usize = 64;
/// Bytes of one input table entry: `gpa`, `len`, `name_len`, a reserved
/// word (0), then the name padded with zeros to [`NAME_MAX`] bytes.
pub const INPUT_ENTRY_SIZE: usize = 4 * 8 + NAME_MAX;
/// Largest buffer one output hypercall carries; larger outputs are written
/// in several calls (the guest runtime does this for the caller).
pub const OUTPUT_CHUNK_MAX: u64 = 1 << 20;

/// Whether `name` may name an input or an output: 1..=[`NAME_MAX`] bytes
/// of ASCII letters, digits, `.`, `_` and `-`, not starting with `.`. So
/// no path separator, no NUL, no `.` or `..`, no hidden file, nothing a
/// terminal would interpret.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name[0] != b'.'
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// One decoded input table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputEntry {
    /// Guest physical address of the file's first byte.
    pub gpa: u64,
    /// The file's length in bytes.
    pub len: u64,
    pub name: [u8; NAME_MAX],
    pub name_len: usize,
}

impl InputEntry {
    /// The name's bytes.
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len.min(NAME_MAX)]
    }

    pub fn to_bytes(&self) -> [u8; INPUT_ENTRY_SIZE] {
        let mut b = [0u8; INPUT_ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.gpa.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..24].copy_from_slice(&(self.name_len as u64).to_le_bytes());
        b[32..32 + NAME_MAX].copy_from_slice(&self.name);
        b
    }

    /// Decodes an entry; `None` when its name length is out of range.
    pub fn from_bytes(b: &[u8; INPUT_ENTRY_SIZE]) -> Option<InputEntry> {
        let w = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(x)
        };
        let name_len = w(2);
        if name_len == 0 || name_len > NAME_MAX as u64 {
            return None;
        }
        let mut name = [0u8; NAME_MAX];
        name.copy_from_slice(&b[32..32 + NAME_MAX]);
        Some(InputEntry {
            gpa: w(0),
            len: w(1),
            name,
            name_len: name_len as usize,
        })
    }
}

/// Where the inputs go: the region `[start, end)`, 2 MiB aligned (0..0
/// when there are no inputs), with the table at `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputsPlan {
    pub start: u64,
    pub end: u64,
}

/// Bytes the inputs region needs for files of these lengths: the table,
/// each file page aligned, rounded up to 2 MiB. `None` on overflow.
pub fn inputs_region_size(lens: impl Iterator<Item = u64>) -> Option<u64> {
    let mut n = 0u64;
    let mut size = 0u64;
    for len in lens {
        n += 1;
        size = size.checked_add(len.checked_add(PAGE - 1)? & !(PAGE - 1))?;
    }
    if n == 0 {
        return Some(0);
    }
    let table = (n * INPUT_ENTRY_SIZE as u64).next_multiple_of(PAGE);
    let total = size.checked_add(table)?;
    Some(total.checked_add(LARGE_PAGE - 1)? & !(LARGE_PAGE - 1))
}

/// First address of the inputs region for an image ending at `image_end`.
pub fn inputs_start(image_end: u64) -> Option<u64> {
    Some(image_end.checked_add(LARGE_PAGE - 1)? & !(LARGE_PAGE - 1))
}

/// Heap, guard and stack when `region_size` bytes of inputs follow the
/// image (see [`inputs_region_size`]). With no inputs this is exactly
/// [`crate::layout::user_regions`]. `None` when the image and the inputs
/// leave no room for a minimal heap and stack, or when the inputs would
/// reach the 2 MiB block that holds the stack guard page.
pub fn user_regions_with_inputs(
    mem_size: u64,
    image_end: u64,
    region_size: u64,
) -> Option<(InputsPlan, UserRegions)> {
    if region_size == 0 {
        let r = crate::layout::user_regions(mem_size, image_end)?;
        let plan = InputsPlan { start: 0, end: 0 };
        return Some((plan, r));
    }
    let start = inputs_start(image_end)?;
    let end = start.checked_add(region_size)?;
    let guard_block = stack_guard(mem_size) & !(LARGE_PAGE - 1);
    if end > guard_block {
        return None;
    }
    let r = crate::layout::user_regions(mem_size, end)?;
    let plan = InputsPlan { start, end };
    Some((plan, r))
}

/// Bytes of RAM left for inputs with this image: the most
/// [`inputs_region_size`] may return for [`user_regions_with_inputs`] to
/// succeed.
pub fn inputs_room(mem_size: u64, image_end: u64) -> u64 {
    let Some(start) = inputs_start(image_end) else {
        return 0;
    };
    let guard_block = stack_guard(mem_size) & !(LARGE_PAGE - 1);
    // The heap needs at least 256 KiB below the guard page.
    let heap_floor = stack_guard(mem_size).saturating_sub(256 << 10) & !(LARGE_PAGE - 1);
    guard_block.min(heap_floor).saturating_sub(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "out.txt", "tile-03_x.png", "A9", &"x".repeat(NAME_MAX)] {
            assert!(valid_name(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a\0b",
            "a b",
            "é",
            "a\\b",
            &"x".repeat(NAME_MAX + 1),
        ] {
            assert!(!valid_name(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn entries_round_trip() {
        let mut name = [0u8; NAME_MAX];
        name[..3].copy_from_slice(b"db1");
        let e = InputEntry {
            gpa: 0x40_0000,
            len: 12345,
            name,
            name_len: 3,
        };
        assert_eq!(InputEntry::from_bytes(&e.to_bytes()), Some(e));
        assert_eq!(e.name(), b"db1");
        let mut bad = e.to_bytes();
        bad[16] = 65;
        assert_eq!(InputEntry::from_bytes(&bad), None);
    }

    #[test]
    fn region_holds_table_and_page_aligned_files() {
        assert_eq!(inputs_region_size([].into_iter()), Some(0));
        assert_eq!(inputs_region_size([1].into_iter()), Some(LARGE_PAGE));
        assert_eq!(
            inputs_region_size([LARGE_PAGE - PAGE].into_iter()),
            Some(LARGE_PAGE)
        );
        assert_eq!(
            inputs_region_size([LARGE_PAGE - PAGE + 1].into_iter()),
            Some(2 * LARGE_PAGE)
        );
        assert_eq!(inputs_region_size([u64::MAX].into_iter()), None);
    }

    #[test]
    fn regions_put_the_heap_after_the_inputs() {
        let mem = 64 << 20;
        let (plan, r) = user_regions_with_inputs(mem, 0x12_3456, 4 << 20).unwrap();
        assert_eq!((plan.start, plan.end), (2 << 20, 6 << 20));
        assert_eq!(r.heap_start, 6 << 20);
        let room = inputs_room(mem, 0x12_3456);
        assert!(user_regions_with_inputs(mem, 0x12_3456, room).is_some());
        assert!(user_regions_with_inputs(mem, 0x12_3456, room + LARGE_PAGE).is_none());
        let (plan, r0) = user_regions_with_inputs(mem, 0x12_3456, 0).unwrap();
        assert_eq!(plan.end, 0);
        assert_eq!(Some(r0), crate::layout::user_regions(mem, 0x12_3456));
    }
}

//! The guest's "will read" notice for an input range
//! ([`sf_abi::hypercall::Call::InputWillRead`]): the range is found in the
//! input table the guest sees, checked against the input's length and
//! guest RAM, and a clone on another host streams its pages from the
//! memory holder ahead of the guest's faults. On one host the pages are
//! shared with the parent already, and there is nothing to do.
//!
//! The table lives in guest RAM, so it is read as untrusted: the worst a
//! guest that rewrote it can get is a prefetch of its own RAM, which it
//! could fault in itself.

use crate::memory::GuestRam;
use crate::vm::Vm;
use sf_abi::boot_info::BootInfo;
use sf_abi::hypercall::Error as HcError;
use sf_abi::io::{InputEntry, INPUTS_MAX, INPUT_ENTRY_SIZE};
use sf_abi::layout::{BOOT_INFO, PAGE};

const INPUTS_TABLE_OFFSET: u64 = BootInfo::INPUTS_TABLE_OFFSET as u64;

/// The guest pages `[first, first + count)` holding bytes
/// `offset..offset + len` of input `name`. Errors: `NoEntry` for no such
/// input, `Invalid` for an empty range or one past the input's end (or an
/// entry that does not lie in RAM).
pub fn input_pages(
    ram: &GuestRam,
    name: &[u8],
    offset: u64,
    len: u64,
) -> Result<(u64, u64), HcError> {
    let table = ram.read_u64(BOOT_INFO + INPUTS_TABLE_OFFSET).unwrap_or(0);
    let table_len = ram
        .read_u64(BOOT_INFO + INPUTS_TABLE_OFFSET + 8)
        .unwrap_or(0);
    let n = (table_len / INPUT_ENTRY_SIZE as u64).min(INPUTS_MAX as u64);
    let entry = (0..n)
        .filter_map(|i| {
            let bytes = ram
                .read_checked(
                    table + i * INPUT_ENTRY_SIZE as u64,
                    INPUT_ENTRY_SIZE as u64,
                    INPUT_ENTRY_SIZE as u64,
                )
                .ok()?;
            InputEntry::from_bytes(bytes.as_slice().try_into().ok()?)
        })
        .find(|e| e.name() == name)
        .ok_or(HcError::NoEntry)?;
    let end = offset.checked_add(len).ok_or(HcError::Invalid)?;
    if len == 0 || end > entry.len {
        return Err(HcError::Invalid);
    }
    let start_gpa = entry.gpa.checked_add(offset).ok_or(HcError::Invalid)?;
    let end_gpa = entry.gpa.checked_add(end).ok_or(HcError::Invalid)?;
    if end_gpa > ram.size() {
        return Err(HcError::Invalid);
    }
    let first = start_gpa / PAGE;
    Ok((first, end_gpa.div_ceil(PAGE) - first))
}

impl Vm {
    /// Serves [`sf_abi::hypercall::Call::InputWillRead`]: returns the
    /// pages the range covers.
    pub(crate) fn will_read(&self, name: &[u8], offset: u64, len: u64) -> Result<u64, HcError> {
        let (first, count) = input_pages(&self.ram, name, offset, len)?;
        if let Some(m) = &self.remote_memory {
            m.prefetch_range(first, count);
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram_with_input(name: &[u8], gpa: u64, len: u64) -> GuestRam {
        let ram = GuestRam::new(8 << 20).unwrap();
        let table = 0x10_0000;
        let mut n = [0u8; sf_abi::io::NAME_MAX];
        n[..name.len()].copy_from_slice(name);
        let e = InputEntry {
            gpa,
            len,
            name: n,
            name_len: name.len(),
        };
        ram.write(table, &e.to_bytes());
        ram.write(BOOT_INFO + INPUTS_TABLE_OFFSET, &table.to_le_bytes());
        ram.write(
            BOOT_INFO + INPUTS_TABLE_OFFSET + 8,
            &(INPUT_ENTRY_SIZE as u64).to_le_bytes(),
        );
        ram
    }

    #[test]
    fn the_table_offset_matches_the_boot_block() {
        let b = BootInfo {
            inputs_table: 0x1234,
            inputs_table_len: 96,
            ..BootInfo::default()
        };
        let words = b.words();
        assert_eq!(words[INPUTS_TABLE_OFFSET as usize / 8], 0x1234);
        assert_eq!(words[INPUTS_TABLE_OFFSET as usize / 8 + 1], 96);
    }

    #[test]
    fn ranges_map_to_pages_and_bad_ones_are_refused() {
        let ram = ram_with_input(b"db", 0x20_0000, 10_000);
        assert_eq!(input_pages(&ram, b"db", 0, 10_000), Ok((0x200, 3)));
        assert_eq!(input_pages(&ram, b"db", 4095, 2), Ok((0x200, 2)));
        assert_eq!(input_pages(&ram, b"db", 0, 10_001), Err(HcError::Invalid));
        assert_eq!(input_pages(&ram, b"db", 5, 0), Err(HcError::Invalid));
        assert_eq!(input_pages(&ram, b"db", u64::MAX, 2), Err(HcError::Invalid));
        assert_eq!(input_pages(&ram, b"dc", 0, 1), Err(HcError::NoEntry));
        // An entry rewritten to point past RAM gets nothing.
        let ram = ram_with_input(b"db", 8 << 20, 10_000);
        assert_eq!(input_pages(&ram, b"db", 0, 1), Err(HcError::Invalid));
        // No inputs at all.
        let ram = GuestRam::new(4 << 20).unwrap();
        assert_eq!(input_pages(&ram, b"db", 0, 1), Err(HcError::NoEntry));
    }
}

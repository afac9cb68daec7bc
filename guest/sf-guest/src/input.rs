//! The files the host gave this VM with `--input NAME=PATH`: read-only
//! bytes in guest RAM, found through the input table the VMM wrote (see
//! `sf_abi::io`). Clones see the same inputs, shared copy-on-write, and a
//! clone on another host fetches their pages only when it reads them.

use crate::hypercall::{raw, result};
use crate::rt;
use sf_abi::hypercall::{Call, Error};
use sf_abi::io::{InputEntry, INPUTS_MAX, INPUT_ENTRY_SIZE};

/// The input table's entries, each checked to lie inside guest RAM; an
/// entry that does not (never written so by a SnowFlock VMM) is skipped.
fn entries() -> impl Iterator<Item = InputEntry> {
    let b = rt::boot();
    let (table, len, mem) = (b.inputs_table, b.inputs_table_len, b.mem_size);
    let n = if table == 0 || table.checked_add(len).is_none_or(|end| end > mem) {
        0
    } else {
        (len as usize / INPUT_ENTRY_SIZE).min(INPUTS_MAX)
    };
    (0..n).filter_map(move |i| {
        // SAFETY: the entry lies inside guest RAM (checked above), which is
        // identity mapped; the table is mapped read-only and never changes.
        let raw =
            unsafe { &*((table as usize + i * INPUT_ENTRY_SIZE) as *const [u8; INPUT_ENTRY_SIZE]) };
        InputEntry::from_bytes(raw)
            .filter(|e| e.gpa.checked_add(e.len).is_some_and(|end| end <= mem))
    })
}

fn bytes_of(e: &InputEntry) -> &'static [u8] {
    // SAFETY: `entries` checked that `[gpa, gpa + len)` lies inside guest
    // RAM; the VMM maps it read-only and nothing writes it while we run.
    unsafe { core::slice::from_raw_parts(e.gpa as usize as *const u8, e.len as usize) }
}

/// The bytes of input `name`, or `None` when the host gave none by that
/// name.
pub fn get(name: &str) -> Option<&'static [u8]> {
    entries()
        .find(|e| e.name() == name.as_bytes())
        .map(|e| bytes_of(&e))
}

/// The names of all inputs, in the order they were given.
pub fn names() -> impl Iterator<Item = &'static str> {
    let b = rt::boot();
    let table = b.inputs_table as usize;
    entries().enumerate().filter_map(move |(i, e)| {
        // SAFETY: the name lies inside entry `i` of the table, checked and
        // read-only as in `entries`; a `&'static` view of it stays valid.
        let name = unsafe {
            core::slice::from_raw_parts(
                (table + i * INPUT_ENTRY_SIZE + 32) as *const u8,
                e.name_len,
            )
        };
        core::str::from_utf8(name).ok()
    })
}

/// How many inputs the VM has.
pub fn count() -> usize {
    entries().count()
}

/// Tells the host this VM will soon read `range` of input `name` (byte
/// offsets), so that a clone on another host streams those pages ahead of
/// its faults instead of fetching them one window per fault; on the
/// parent's host it costs one hypercall and nothing else. Returns the
/// pages announced. Errors: [`Error::NoEntry`] for no such input,
/// [`Error::Invalid`] for an empty range or one past the input's end.
pub fn will_read(name: &str, range: core::ops::Range<usize>) -> Result<u64, Error> {
    let len = range.end.checked_sub(range.start).ok_or(Error::Invalid)?;
    // SAFETY: the host only reads `name`'s bytes.
    result(unsafe {
        raw(
            Call::InputWillRead as u32,
            name.as_ptr() as u64,
            name.len() as u64,
            range.start as u64,
            len as u64,
        )
    })
}

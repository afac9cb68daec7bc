//! The clone API's data: clone statuses, the result size limits, and the
//! join record the host writes into guest memory at [`crate::hypercall::Call::JoinFetch`].
//!
//! A join record is a sequence of entries, one per clone in ID order. Each
//! entry is a 24-byte header of little-endian u32 words — `id`, `status`
//! ([`CloneStatus`]), `code` (exit status, or exception vector), `result_len`,
//! `detail_len`, `reserved` — then `result_len` result bytes, then
//! `detail_len` bytes of UTF-8 description (why it failed), then zero
//! padding to a multiple of 8.

extern crate alloc;
use alloc::vec::Vec;

/// Result bytes every clone may hand its parent, whatever else its parent
/// holds ([`crate::hypercall::Call::ResultCap`] says how much more a ticket's
/// clones may hand back).
pub const RESULT_FLOOR: usize = 64 << 10;
/// Result bytes one VM may hold for all its clones together, beyond
/// [`RESULT_FLOOR`] each: the host keeps results in its own memory from the
/// clone's exit until the parent fetches the join record, so a family
/// asking for more gets smaller caps, never more host memory. A ticket's
/// clones share what its earlier tickets left, in equal parts.
pub const RESULTS_HELD_MAX: usize = 256 << 20;
/// Most description bytes per clone in a join record.
pub const DETAIL_MAX: usize = 1024;
const HEADER: usize = 24;

/// How a clone ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CloneStatus {
    /// It called exit; `code` is its status.
    Exited = 0,
    /// Its guest panicked; the detail is the message.
    Panicked = 1,
    /// A CPU exception or other fatal guest error; `code` is the vector.
    Crashed = 2,
    /// Killed by the parent's `kill`.
    Killed = 3,
    /// It ran past the run's timeout.
    TimedOut = 4,
    /// Its host process died without reporting (detail says how).
    Lost = 5,
}

impl CloneStatus {
    pub fn from_u32(v: u32) -> Option<CloneStatus> {
        Some(match v {
            0 => CloneStatus::Exited,
            1 => CloneStatus::Panicked,
            2 => CloneStatus::Crashed,
            3 => CloneStatus::Killed,
            4 => CloneStatus::TimedOut,
            5 => CloneStatus::Lost,
            _ => return None,
        })
    }
}

/// One clone's entry, borrowed from a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub id: u32,
    pub status: CloneStatus,
    pub code: i32,
    pub result: &'a [u8],
    pub detail: &'a [u8],
}

fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// Bytes `entry` takes in a record.
pub fn entry_size(result_len: usize, detail_len: usize) -> usize {
    pad8(HEADER + result_len + detail_len)
}

/// Appends one entry; result and detail are cut to their limits (the
/// host bounds results by the ticket's cap before they get here).
pub fn encode_entry(out: &mut Vec<u8>, e: &Entry) {
    let result = &e.result[..e.result.len().min(RESULTS_HELD_MAX)];
    let detail = &e.detail[..e.detail.len().min(DETAIL_MAX)];
    let start = out.len();
    for w in [
        e.id,
        e.status as u32,
        e.code as u32,
        result.len() as u32,
        detail.len() as u32,
        0,
    ] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(result);
    out.extend_from_slice(detail);
    out.resize(start + entry_size(result.len(), detail.len()), 0);
}

/// Walks a record; stops (returning `None` from the iterator) at the first
/// malformed entry.
pub fn decode(record: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    let mut rest = record;
    core::iter::from_fn(move || {
        if rest.len() < HEADER {
            return None;
        }
        let w = |i: usize| {
            u32::from_le_bytes([
                rest[i * 4],
                rest[i * 4 + 1],
                rest[i * 4 + 2],
                rest[i * 4 + 3],
            ])
        };
        let (rlen, dlen) = (w(3) as usize, w(4) as usize);
        if rlen > RESULTS_HELD_MAX || dlen > DETAIL_MAX || rest.len() < entry_size(rlen, dlen) {
            return None;
        }
        let e = Entry {
            id: w(0),
            status: CloneStatus::from_u32(w(1))?,
            code: w(2) as i32,
            result: &rest[HEADER..HEADER + rlen],
            detail: &rest[HEADER + rlen..HEADER + rlen + dlen],
        };
        rest = &rest[entry_size(rlen, dlen)..];
        Some(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_in_order() {
        let mut rec = Vec::new();
        let a = Entry {
            id: 1,
            status: CloneStatus::Exited,
            code: 0,
            result: b"abc",
            detail: b"",
        };
        let b = Entry {
            id: 2,
            status: CloneStatus::Crashed,
            code: 0,
            result: b"",
            detail: b"divide error",
        };
        encode_entry(&mut rec, &a);
        encode_entry(&mut rec, &b);
        assert_eq!(rec.len() % 8, 0);
        let got: Vec<Entry> = decode(&rec).collect();
        assert_eq!(got, [a, b]);
    }

    #[test]
    fn oversized_parts_are_cut_and_truncated_records_stop() {
        let big = alloc::vec![7u8; RESULTS_HELD_MAX + 10];
        let mut rec = Vec::new();
        encode_entry(
            &mut rec,
            &Entry {
                id: 3,
                status: CloneStatus::Exited,
                code: 1,
                result: &big,
                detail: b"",
            },
        );
        assert_eq!(decode(&rec).next().unwrap().result.len(), RESULTS_HELD_MAX);
        assert_eq!(decode(&rec[..rec.len() - 8]).count(), 0);
        let mut bad = rec.clone();
        bad[4] = 99;
        assert_eq!(decode(&bad).count(), 0, "unknown status");
    }
}

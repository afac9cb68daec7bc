//! FASTA databases: walking the records of a byte range (no copy of the
//! database), and a synthetic generator with planted matches for tests and
//! benchmarks.
//!
//! A share of a database is a byte range: it owns every record whose `>`
//! starts inside the range, so any split covers each record exactly once.

use crate::rng::Rng;
use alloc::vec::Vec;

/// One record: where its `>` is, its name (header up to the first blank)
/// and its body (residues with line breaks, as in the file).
pub struct Record<'a> {
    pub offset: usize,
    pub name: &'a [u8],
    pub body: &'a [u8],
}

/// First record start at or after `from`: a `>` at the file's start or
/// right after a line break.
fn next_start(db: &[u8], from: usize) -> usize {
    let after_break = |i: usize| {
        db[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(db.len(), |p| i + p + 1)
    };
    let mut i = from.min(db.len());
    if i > 0 && db[i - 1] != b'\n' {
        i = after_break(i);
    }
    while i < db.len() && db[i] != b'>' {
        i = after_break(i);
    }
    i
}

/// The records whose `>` lies in `db[range]`.
pub fn records(db: &[u8], range: core::ops::Range<usize>) -> impl Iterator<Item = Record<'_>> {
    let end = range.end.min(db.len());
    let mut at = next_start(db, range.start.min(db.len()));
    core::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let header_end = db[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(db.len(), |p| at + p);
        let header = &db[at + 1..header_end];
        let name_len = header
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(header.len());
        let body_start = (header_end + 1).min(db.len());
        let next = next_start(db, body_start);
        let rec = Record {
            offset: at,
            name: &header[..name_len],
            body: &db[body_start..next],
        };
        at = next;
        Some(rec)
    })
}

/// The residues of `body` (line breaks and blanks dropped, upper case) into
/// `out`, which is cleared first.
pub fn residues(body: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend(
        body.iter()
            .filter(|b| !b.is_ascii_whitespace())
            .map(|b| b.to_ascii_uppercase()),
    );
}

const BASES: [u8; 4] = *b"ACGT";

/// `n` random DNA queries of `len` bases from `seed`.
pub fn queries(seed: u64, n: usize, len: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed ^ 0x5155_4552_5953);
    (0..n)
        .map(|_| (0..len).map(|_| BASES[rng.below(4) as usize]).collect())
        .collect()
}

/// How a synthetic database is made.
pub struct GenSpec<'q> {
    pub seed: u64,
    /// Stop after the record that reaches this many bytes.
    pub bytes: u64,
    /// Planted into every `plant_every`-th record (mutated copies).
    pub queries: &'q [Vec<u8>],
    pub plant_every: u64,
}

/// Writes a synthetic FASTA database to `sink` in chunks: records of 1000
/// to 8000 random bases, 80 per line; every `plant_every`-th record carries
/// a copy of one query with about 1 in 12 bases changed and, sometimes, a
/// base dropped (so the gapped alignment matters).
pub fn generate(spec: &GenSpec, mut sink: impl FnMut(&[u8])) {
    let mut rng = Rng::new(spec.seed);
    let mut written = 0u64;
    let mut seq = Vec::new();
    let mut buf = Vec::with_capacity(16 << 10);
    let mut index = 0u64;
    while written < spec.bytes {
        let len = 1000 + rng.below(7001) as usize;
        seq.clear();
        while seq.len() < len {
            let mut w = rng.next_u64();
            for _ in 0..32 {
                seq.push(BASES[(w & 3) as usize]);
                w >>= 2;
            }
        }
        seq.truncate(len);
        if !spec.queries.is_empty() && index.is_multiple_of(spec.plant_every.max(1)) {
            let q = &spec.queries[(index / spec.plant_every.max(1)) as usize % spec.queries.len()];
            let at = rng.below((len - q.len().min(len)) as u64 + 1) as usize;
            let mut planted = q.clone();
            for b in planted.iter_mut() {
                if rng.below(12) == 0 {
                    *b = BASES[rng.below(4) as usize];
                }
            }
            if rng.below(3) == 0 && planted.len() > 2 {
                planted.remove(1 + rng.below(planted.len() as u64 - 2) as usize);
            }
            let n = planted.len().min(len - at);
            seq[at..at + n].copy_from_slice(&planted[..n]);
        }
        buf.clear();
        buf.extend_from_slice(b">seq");
        push_decimal(&mut buf, index);
        buf.extend_from_slice(b" synthetic\n");
        for line in seq.chunks(80) {
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        written += buf.len() as u64;
        sink(&buf);
        index += 1;
    }
}

fn push_decimal(buf: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend(digits[..n].iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn db(bytes: u64) -> Vec<u8> {
        let q = queries(1, 4, 50);
        let mut out = Vec::new();
        generate(
            &GenSpec {
                seed: 3,
                bytes,
                queries: &q,
                plant_every: 2,
            },
            |c| out.extend_from_slice(c),
        );
        out
    }

    #[test]
    fn any_split_covers_each_record_once() {
        let d = db(200_000);
        let all: Vec<usize> = records(&d, 0..d.len()).map(|r| r.offset).collect();
        assert!(all.len() > 20);
        for k in [1u64, 2, 3, 7, 64] {
            let mut got = vec![];
            for i in 1..=k {
                got.extend(records(&d, crate::share_range(d.len(), i, k)).map(|r| r.offset));
            }
            assert_eq!(got, all, "k={k}");
        }
        let r = records(&d, 0..d.len()).nth(3).unwrap();
        assert_eq!(r.name, b"seq3");
        let mut res = vec![];
        residues(r.body, &mut res);
        assert!(res.len() >= 1000 && res.iter().all(|b| b"ACGT".contains(b)));
    }

    #[test]
    fn generator_is_deterministic_and_sized() {
        let (a, b) = (db(50_000), db(50_000));
        assert_eq!(a, b);
        assert!(a.len() >= 50_000 && a.len() < 60_000);
        // Sequential: a larger database starts with the smaller one.
        assert!(db(100_000).starts_with(&a));
    }

    #[test]
    fn odd_files_do_not_panic() {
        for d in [
            &b""[..],
            b">",
            b">\n",
            b"ACGT\n>x\nAC",
            b"\n\n>a b\r\nAC\r\n>",
            b">>>\n>",
        ] {
            for k in 1..4 {
                for i in 1..=k {
                    for r in records(d, crate::share_range(d.len(), i, k)) {
                        let _ = (r.name, r.body);
                    }
                }
            }
        }
        let d = b"junk\n>a x\nAC\nGT\n>b\nTT";
        let names: Vec<&[u8]> = records(d, 0..d.len()).map(|r| r.name).collect();
        assert_eq!(names, vec![&b"a"[..], b"b"]);
    }
}

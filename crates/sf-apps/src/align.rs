//! Sequence search, BLAST style: exact 12-base seeds of the queries are
//! looked up in each database record, two seeds on nearby diagonals make a
//! candidate, and the candidate region is aligned with Smith–Waterman with
//! affine gaps (Gotoh). Each share of the database returns its best hits per
//! query; merging shares gives exactly the single-VM answer because every
//! record belongs to one share and the order of hits is total.

use crate::codec::{Reader, Writer};
use crate::fasta::{records, residues};
use alloc::vec;
use alloc::vec::Vec;

/// Seed length in bases (4^12 codes: a 2 MiB presence bitmap).
pub const K: usize = 12;
const MATCH: i32 = 2;
const MISMATCH: i32 = -3;
const GAP_OPEN: i32 = -5;
const GAP_EXTEND: i32 = -2;

fn base_code(b: u8) -> Option<u32> {
    match b {
        b'A' => Some(0),
        b'C' => Some(1),
        b'G' => Some(2),
        b'T' => Some(3),
        _ => None,
    }
}

/// Bits of the small prefilter: 32 KiB, which stays in the L1/L2 cache
/// where the 2 MiB exact bitmap does not (a lookup per database base made
/// the scan cost 43 ns per byte with the exact bitmap alone).
const FILTER_BITS: u32 = 18;

fn filter_slot(code: u32) -> usize {
    (code.wrapping_mul(0x9e37_79b1) >> (32 - FILTER_BITS)) as usize
}

/// Every `K`-mer of the queries: a hashed prefilter, an exact presence
/// bitmap and the sorted list of (code, query, position).
pub struct Index {
    filter: Vec<u64>,
    present: Vec<u64>,
    seeds: Vec<(u32, u32, u32)>,
    qlens: Vec<usize>,
}

impl Index {
    pub fn new(queries: &[Vec<u8>]) -> Index {
        let mut filter = vec![0u64; (1usize << FILTER_BITS) / 64];
        let mut present = vec![0u64; (1usize << (2 * K)) / 64];
        let mut seeds = Vec::new();
        for (qi, q) in queries.iter().enumerate() {
            for_each_kmer(q, |pos, code| {
                let slot = filter_slot(code);
                filter[slot / 64] |= 1 << (slot % 64);
                present[code as usize / 64] |= 1 << (code % 64);
                seeds.push((code, qi as u32, pos as u32));
            });
        }
        seeds.sort_unstable();
        Index {
            filter,
            present,
            seeds,
            qlens: queries.iter().map(Vec::len).collect(),
        }
    }

    #[inline]
    fn lookup(&self, code: u32) -> &[(u32, u32, u32)] {
        let slot = filter_slot(code);
        if self.filter[slot / 64] & (1 << (slot % 64)) == 0 {
            return &[];
        }
        if self.present[code as usize / 64] & (1 << (code % 64)) == 0 {
            return &[];
        }
        let lo = self.seeds.partition_point(|s| s.0 < code);
        let hi = self.seeds.partition_point(|s| s.0 <= code);
        &self.seeds[lo..hi]
    }
}

/// Calls `f(start, code)` for every `K`-mer of ACGT bases in `seq`.
fn for_each_kmer(seq: &[u8], mut f: impl FnMut(usize, u32)) {
    let mask = (1u32 << (2 * K)) - 1;
    let (mut code, mut valid) = (0u32, 0usize);
    for (i, &b) in seq.iter().enumerate() {
        match base_code(b) {
            Some(c) => {
                code = ((code << 2) | c) & mask;
                valid += 1;
            }
            None => valid = 0,
        }
        if valid >= K {
            f(i + 1 - K, code);
        }
    }
}

/// Best local alignment score of `q` in `t` (affine gaps) and the end
/// position in `t` (exclusive) of the first cell reaching it.
pub fn smith_waterman(q: &[u8], t: &[u8]) -> (i32, usize) {
    let n = t.len();
    let mut h_prev = vec![0i32; n + 1];
    let mut h_cur = vec![0i32; n + 1];
    let mut f = vec![i32::MIN / 2; n + 1]; // gap in t (vertical)
    let (mut best, mut best_end) = (0, 0);
    for &qb in q {
        let mut e = i32::MIN / 2; // gap in q (horizontal)
        h_cur[0] = 0;
        for j in 1..=n {
            e = (e + GAP_EXTEND).max(h_cur[j - 1] + GAP_OPEN);
            f[j] = (f[j] + GAP_EXTEND).max(h_prev[j] + GAP_OPEN);
            let s = if t[j - 1] == qb { MATCH } else { MISMATCH };
            let h = (h_prev[j - 1] + s).max(e).max(f[j]).max(0);
            h_cur[j] = h;
            if h > best {
                best = h;
                best_end = j;
            }
        }
        core::mem::swap(&mut h_prev, &mut h_cur);
    }
    (best, best_end)
}

/// One hit: a query aligned in the record starting at byte `record` of the
/// database, ending at residue `end` of that record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub query: u32,
    pub score: i32,
    pub record: u64,
    pub end: u32,
}

impl Hit {
    /// Best first; ties broken by database position, so the order is total.
    fn rank_key(&self) -> (i32, u64, u32) {
        (-self.score, self.record, self.end)
    }
}

/// Search parameters.
pub struct Params {
    /// Hits kept per query.
    pub top: usize,
    /// Smallest score reported.
    pub min_score: i32,
}

/// Searches the records of `db[range]`: the best `top` hits per query,
/// sorted by query then rank (at most one per query and record).
pub fn search(
    db: &[u8],
    range: core::ops::Range<usize>,
    queries: &[Vec<u8>],
    index: &Index,
    p: &Params,
) -> Vec<Hit> {
    let mut best: Vec<Vec<Hit>> = vec![Vec::new(); queries.len()];
    let mut seq = Vec::new();
    let mut seeds: Vec<(u32, i64)> = Vec::new();
    for rec in records(db, range) {
        residues(rec.body, &mut seq);
        seeds.clear();
        for_each_kmer(&seq, |pos, code| {
            for &(_, q, qpos) in index.lookup(code) {
                seeds.push((q, pos as i64 - qpos as i64));
            }
        });
        if seeds.len() < 2 {
            continue;
        }
        seeds.sort_unstable();
        let mut i = 0;
        while i < seeds.len() {
            let q = seeds[i].0;
            let qlen = index.qlens[q as usize] as i64;
            // A cluster: diagonals of query `q` no further than qlen apart.
            let mut j = i + 1;
            while j < seeds.len() && seeds[j].0 == q && seeds[j].1 - seeds[j - 1].1 <= qlen {
                j += 1;
            }
            if j - i >= 2 {
                let pad = qlen / 4 + 8;
                let lo = (seeds[i].1 - pad).max(0) as usize;
                let hi = ((seeds[j - 1].1 + qlen + pad).max(0) as usize).min(seq.len());
                if lo < hi {
                    let (score, end) = smith_waterman(&queries[q as usize], &seq[lo..hi]);
                    if score >= p.min_score {
                        let hit = Hit {
                            query: q,
                            score,
                            record: rec.offset as u64,
                            end: (lo + end) as u32,
                        };
                        offer(&mut best[q as usize], hit, p.top);
                    }
                }
            }
            i = j;
        }
    }
    best.into_iter().flatten().collect()
}

/// Keeps `list` the best `top` hits, sorted, one per record.
fn offer(list: &mut Vec<Hit>, hit: Hit, top: usize) {
    if let Some(old) = list.iter_mut().find(|h| h.record == hit.record) {
        if hit.rank_key() < old.rank_key() {
            *old = hit;
        }
    } else {
        list.push(hit);
    }
    list.sort_unstable_by_key(Hit::rank_key);
    list.truncate(top);
}

/// Merges the hits of every share into the best `top` per query.
pub fn merge(hits: impl IntoIterator<Item = Hit>, queries: usize, top: usize) -> Vec<Hit> {
    let mut best: Vec<Vec<Hit>> = vec![Vec::new(); queries];
    for h in hits {
        if let Some(list) = best.get_mut(h.query as usize) {
            offer(list, h, top);
        }
    }
    best.into_iter().flatten().collect()
}

pub fn encode(hits: &[Hit]) -> Vec<u8> {
    let mut w = Writer::default();
    for h in hits {
        w.u32(h.query).i32(h.score).u64(h.record).u32(h.end);
    }
    w.0
}

/// The hits in `bytes`, or None if they are malformed.
pub fn decode(bytes: &[u8]) -> Option<Vec<Hit>> {
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(Hit {
            query: r.u32()?,
            score: r.i32()?,
            record: r.u64()?,
            end: r.u32()?,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fasta::{generate, queries, GenSpec};

    #[test]
    fn smith_waterman_scores() {
        assert_eq!(smith_waterman(b"ACGT", b"TTACGTTT"), (8, 6));
        assert_eq!(smith_waterman(b"AAAA", b"CCCC").0, 0);
        // One gap of length 1 in a 20-base match: 19 * 2 - 5.
        let q = b"ACGTACGTACTTGCAGGCAT";
        let t = b"GGACGTACGTACTGCAGGCATGG";
        assert_eq!(smith_waterman(q, t).0, 19 * 2 - 5);
    }

    #[test]
    fn split_search_equals_whole_and_finds_planted_queries() {
        let qs = queries(5, 8, 80);
        let mut db = Vec::new();
        generate(
            &GenSpec {
                seed: 9,
                bytes: 400_000,
                queries: &qs,
                plant_every: 3,
            },
            |c| db.extend_from_slice(c),
        );
        let index = Index::new(&qs);
        let p = Params {
            top: 3,
            min_score: 60,
        };
        let whole = search(&db, 0..db.len(), &qs, &index, &p);
        for q in 0..qs.len() as u32 {
            let n = whole.iter().filter(|h| h.query == q).count();
            assert_eq!(n, 3, "query {q} should have 3 planted hits: {whole:?}");
        }
        assert!(whole.iter().all(|h| h.score >= 60 && h.score <= 160));
        for k in [2u64, 3, 5] {
            let mut parts = Vec::new();
            for i in 1..=k {
                let share = search(&db, crate::share_range(db.len(), i, k), &qs, &index, &p);
                parts.extend(decode(&encode(&share)).unwrap());
            }
            assert_eq!(merge(parts, qs.len(), 3), whole, "k={k}");
        }
        assert!(decode(&[1, 2, 3]).is_none());
    }
}

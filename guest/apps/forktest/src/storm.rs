//! Scenarios for clones of clones on other hosts.
//!
//! - `forkstorm n=2 mib=32 rounds=6`: the parent fills `mib` MiB; each of
//!   its `n` clones (on other hosts) reads one slice of it per round, which
//!   faults pages in from the origin (and pushes them to its siblings),
//!   prints a line, and forks one local clone that checksums the next slice
//!   and exits; all while its siblings fault, print and fork too. Each clone
//!   returns how many rounds checked out; the parent wants all of them.
//! - `hintnest mib=16 zeroed=4`: the parent makes one clone (on another
//!   host); that clone fills `mib` MiB, frees it and makes a local clone,
//!   which counts the freed pages that read as zeros (hinted pages are
//!   dropped: all of them; with `--no-hints`: none) and checks that
//!   `alloc_zeroed` memory of `zeroed` MiB reads zero. Prints
//!   `hintnest: zero_pages=Z of T, zeroed_ok=1`.

use super::{bytes, done_in_clone, fork, ticket, words, Check};
use alloc::vec::Vec;
use sf_guest::clone::{self, CloneStatus};
use sf_guest::println;

fn arg_u64(name: &str, default: u64) -> u64 {
    super::arg_u64(name, default)
}

const WORDS_PER_PAGE: usize = 512;

fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555
}

/// Sum of the first word of every page of slice `k` of `rounds + 1`.
fn slice_sum(buf: &[u64], k: usize, rounds: usize) -> u64 {
    let pages = buf.len() / WORDS_PER_PAGE;
    let per = pages / (rounds + 1);
    (k * per..(k + 1) * per)
        .map(|p| buf[p * WORDS_PER_PAGE])
        .fold(0, u64::wrapping_add)
}

fn expected_sum(buf_len: usize, k: usize, rounds: usize) -> u64 {
    let pages = buf_len / WORDS_PER_PAGE;
    let per = pages / (rounds + 1);
    (k * per..(k + 1) * per)
        .map(|p| pattern(p * WORDS_PER_PAGE))
        .fold(0, u64::wrapping_add)
}

pub fn forkstorm(c: &mut Check) {
    let n = arg_u64("n", 2);
    let rounds = arg_u64("rounds", 6) as usize;
    let words = (arg_u64("mib", 32) << 20) as usize / 8;
    let mut buf: Vec<u64> = Vec::with_capacity(words);
    buf.extend((0..words).map(pattern));
    let t = ticket(n);
    let id = fork(&t);
    if id != 0 {
        let mut good = 0u64;
        for round in 0..rounds {
            let ok = slice_sum(&buf, round, rounds) == expected_sum(buf.len(), round, rounds);
            println!("forkstorm: clone {id} round {round} read its slice: {ok}");
            let t2 = ticket(1);
            if fork(&t2) != 0 {
                let next = round + 1;
                let ok = slice_sum(&buf, next, rounds) == expected_sum(buf.len(), next, rounds);
                done_in_clone(0, &bytes(&[ok as u64]));
            }
            let rs = clone::join(&t2).unwrap_or_default();
            let child_ok = rs.len() == 1
                && rs[0].status == CloneStatus::Exited
                && words_of(&rs[0].result) == [1];
            good += (ok && child_ok) as u64;
        }
        done_in_clone(0, &bytes(&[id as u64, good]));
    }
    let rs = clone::join(&t).unwrap_or_default();
    for r in &rs {
        let w = words_of(&r.result);
        println!("clone {} -> {:?} {:?}", r.id, r.status, w);
        check!(
            c,
            r.status == CloneStatus::Exited && w == [r.id as u64, rounds as u64],
            "clone {} and its local clones read every slice right in every round",
            r.id
        );
    }
    check!(c, rs.len() == n as usize, "every clone joined");
}

fn words_of(b: &[u8]) -> Vec<u64> {
    words(b)
}

pub fn hintnest(c: &mut Check) {
    let t = ticket(1);
    if fork(&t) != 0 {
        // On the clone host: garbage, freed (its whole pages are hinted).
        let len = (arg_u64("mib", 16) << 20) as usize;
        let mut garbage: Vec<u8> = Vec::with_capacity(len);
        garbage.resize(len, 0xA5);
        let base = core::hint::black_box(garbage.as_ptr()) as usize;
        drop(garbage);
        let t2 = ticket(1);
        if fork(&t2) != 0 {
            // Skip the first and last pages: the heap keeps its free-list
            // node there. The block is freed, but still guest RAM: read it
            // as raw memory.
            let first = base.next_multiple_of(4096) + 4096;
            let pages = (len - 3 * 4096) / 4096;
            let zero = (0..pages)
                .filter(|p| {
                    let page = first + p * 4096;
                    (0..4096).step_by(512).all(|off| {
                        // SAFETY: an address inside guest RAM (the freed
                        // block), read without a reference.
                        unsafe { core::ptr::read_volatile((page + off) as *const u64) == 0 }
                    })
                })
                .count();
            let z: Vec<u8> = alloc::vec![0; (arg_u64("zeroed", 4) << 20) as usize];
            let zeroed_ok = z.iter().all(|&b| b == 0);
            done_in_clone(0, &bytes(&[zero as u64, pages as u64, zeroed_ok as u64]));
        }
        let rs = clone::join(&t2).unwrap_or_default();
        let w = rs.first().map(|r| words(&r.result)).unwrap_or_default();
        done_in_clone(0, &bytes(&w));
    }
    let rs = clone::join(&t).unwrap_or_default();
    let w = rs.first().map(|r| words(&r.result)).unwrap_or_default();
    check!(c, w.len() == 3, "the nested clone reported: {w:?}");
    if w.len() == 3 {
        println!(
            "hintnest: zero_pages={} of {}, zeroed_ok={}",
            w[0], w[1], w[2]
        );
        check!(
            c,
            w[2] == 1,
            "alloc_zeroed memory reads zero in the nested clone"
        );
    }
}

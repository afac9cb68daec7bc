//! The compute cores of the application guests `align`, `render`, `price`
//! and `pi`/`netpi`, shared by the guests (ring 3, no_std) and the host (the FASTA
//! generator, reference answers, tests). Everything is deterministic for a
//! given seed: the same share of work gives the same bytes on any VM, which
//! is how a run on N clones is checked against one VM.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod align;
pub mod codec;
pub mod fasta;
pub mod pi;
pub mod png;
pub mod price;
pub mod render;
pub mod rng;

/// FNV-1a over `bytes`: the short digest every app prints as its answer.
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Byte range of share `i` (1-based) of `k` over `len` items.
pub fn share_range(len: usize, i: u64, k: u64) -> core::ops::Range<usize> {
    let (i, k, len) = (i as u128, k.max(1) as u128, len as u128);
    ((len * (i - 1) / k) as usize)..((len * i / k) as usize)
}

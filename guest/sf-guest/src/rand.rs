//! A fast non-cryptographic random-number source (xoshiro256**) seeded from
//! host entropy in the boot information block.

use core::cell::Cell;

struct State(Cell<[u64; 4]>);
// SAFETY: the guest runs one thread.
unsafe impl Sync for State {}

static STATE: State = State(Cell::new([0x9e37_79b9_7f4a_7c15, 1, 2, 3]));

pub(crate) fn seed(s: [u64; 4]) {
    if s != [0; 4] {
        STATE.0.set(s);
    }
}

/// A small generator an application can own, e.g. one per work slice.
#[derive(Clone, Debug)]
pub struct Xoshiro256([u64; 4]);

impl Xoshiro256 {
    /// Expands a 64-bit seed with splitmix64 (never all zeros).
    pub fn from_seed(mut x: u64) -> Self {
        let mut s = [0u64; 4];
        for w in &mut s {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *w = z ^ (z >> 31);
        }
        Xoshiro256(s)
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The next value of the VM's own random stream.
pub fn next_u64() -> u64 {
    let mut g = Xoshiro256(STATE.0.get());
    let v = g.next_u64();
    STATE.0.set(g.0);
    v
}

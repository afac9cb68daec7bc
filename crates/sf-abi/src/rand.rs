//! xoshiro256** seeded by splitmix64: the one deterministic random stream
//! that guests (`sf_guest::rand`) and the host's checks of their answers
//! (`sf-apps`) share, so that a job seeded the same way draws the same
//! numbers on both sides. Fast, not cryptographic.

/// A small generator a program can own, e.g. one per work slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xoshiro256([u64; 4]);

impl Xoshiro256 {
    /// Expands a 64-bit seed with splitmix64 (never all zeros).
    #[inline]
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

    /// A generator resumed from [`Xoshiro256::state`].
    #[inline]
    pub const fn from_state(s: [u64; 4]) -> Self {
        Xoshiro256(s)
    }

    #[inline]
    pub const fn state(&self) -> [u64; 4] {
        self.0
    }

    // Called in the inner loops of the Monte-Carlo guests: `#[inline]` lets
    // them compile it in their own crate (no LTO across crates here).
    #[inline]
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
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_the_reference_one_and_resumes_from_its_state() {
        // xoshiro256** seeded with splitmix64(0), as the reference
        // implementations (Blackman and Vigna) give it.
        let mut g = Xoshiro256::from_seed(0);
        let first = [g.next_u64(), g.next_u64()];
        assert_eq!(first, [0x99ec_5f36_cb75_f2b4, 0xbf6e_1f78_4956_452a]);
        let mut again = Xoshiro256::from_state(Xoshiro256::from_seed(0).state());
        assert_eq!([again.next_u64(), again.next_u64()], first);
        assert_ne!(Xoshiro256::from_seed(1).next_u64(), first[0]);
        let f = Xoshiro256::from_seed(9).next_f64();
        assert!((0.0..1.0).contains(&f));
    }
}

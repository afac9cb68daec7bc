//! The apps' deterministic random stream: `sf_abi::rand::Xoshiro256`, the
//! same on host and guest, plus bounded and normal draws for the apps.

use sf_abi::rand::Xoshiro256;

#[derive(Clone, Debug)]
pub struct Rng(Xoshiro256);

impl Rng {
    #[inline]
    pub fn new(seed: u64) -> Self {
        Rng(Xoshiro256::from_seed(seed))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        self.0.next_f64()
    }

    /// Uniform in [0, n) (n > 0; the tiny modulo bias does not matter here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A pair of independent standard normal draws (Box–Muller).
    pub fn normal_pair(&mut self) -> (f64, f64) {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let (s, c) = libm::sincos(2.0 * core::f64::consts::PI * u2);
        (r * c, r * s)
    }
}

/// The seed of share `i` of a job seeded `seed` (the same formula as `pi`).
pub fn share_seed(seed: u64, i: u64) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_unit_variance() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let (mut s, mut s2) = (0.0, 0.0);
        for _ in 0..n / 2 {
            let (a, b) = r.normal_pair();
            s += a + b;
            s2 += a * a + b * b;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
        assert_eq!(Rng::new(1).next_u64(), Rng::new(1).next_u64());
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}

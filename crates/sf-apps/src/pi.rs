//! Monte-Carlo pi, as the `pi` and `netpi` guests sample it: how a job of
//! `samples` draws is cut into slices, and the hits of one slice. One copy,
//! so that both guests (and a clone of either) agree on every slice.

use crate::rng::{share_seed, Rng};

/// Points of `samples` uniform draws that fall inside the unit quarter circle.
pub fn hits(samples: u64, seed: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let mut inside = 0;
    for _ in 0..samples {
        let (x, y) = (rng.next_f64(), rng.next_f64());
        inside += (x * x + y * y < 1.0) as u64;
    }
    inside
}

/// Slice `i` (1-based) of `k`: its sample count and seed. Slice 1 takes the
/// remainder, so the slices always add up to `samples`.
pub fn slice(samples: u64, seed: u64, i: u64, k: u64) -> (u64, u64) {
    let n = samples / k + if i == 1 { samples % k } else { 0 };
    (n, share_seed(seed, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_add_up_and_sample_pi() {
        let (samples, k) = (1_000_003, 7);
        let (mut n, mut inside) = (0, 0);
        for i in 1..=k {
            let (m, s) = slice(samples, 5, i, k);
            n += m;
            inside += hits(m, s);
        }
        assert_eq!(n, samples);
        let pi = 4.0 * inside as f64 / samples as f64;
        assert!((pi - core::f64::consts::PI).abs() < 0.01, "{pi}");
        assert_eq!(hits(1000, 3), hits(1000, 3));
    }
}

//! Compute-heavy example: estimates pi by Monte-Carlo sampling and reports
//! how long the sampling took on the guest's own clock.
//!
//! Arguments: `samples=N` (default 200000000), `seed=S` (default 1).
#![no_std]
#![no_main]

use sf_guest::rand::Xoshiro256;
use sf_guest::{env, println, time};

sf_guest::main!(main);

fn parse(name: &str, default: u64) -> Option<u64> {
    match env::arg(name) {
        None => Some(default),
        Some(v) => v.parse().ok(),
    }
}

/// Points of `samples` uniform draws that fall inside the unit quarter circle.
fn hits(samples: u64, seed: u64) -> u64 {
    let mut rng = Xoshiro256::from_seed(seed);
    let mut inside = 0;
    for _ in 0..samples {
        let (x, y) = (rng.next_f64(), rng.next_f64());
        inside += (x * x + y * y < 1.0) as u64;
    }
    inside
}

fn main() -> i32 {
    let (Some(samples), Some(seed)) = (parse("samples", 200_000_000), parse("seed", 1)) else {
        println!("pi: samples= and seed= take unsigned integers");
        return 2;
    };
    if samples == 0 {
        println!("pi: samples must be positive");
        return 2;
    }
    let t0 = time::now_ns();
    let inside = hits(samples, seed);
    let ms = (time::now_ns() - t0) as f64 / 1e6;
    let pi = 4.0 * inside as f64 / samples as f64;
    println!("pi ~= {pi:.6} from {samples} samples ({inside} inside), error {:.2e}", (pi - core::f64::consts::PI).abs());
    println!("computed in {ms:.1} ms ({:.1} Msamples/s)", samples as f64 / ms / 1e3);
    0
}

//! Compute-heavy example: estimates pi by Monte-Carlo sampling and reports
//! how long the sampling took on the guest's own clock.
//!
//! Arguments: `samples=N` (default 200000000), `seed=S` (default 1),
//! `clones=C` (fork the VM into C clones that each sample one slice; the
//! parent joins and adds up), `split=K` (no clones: sample the same K slices
//! one after another in this VM, which gives the same answer as K clones).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use sf_apps::pi::{hits, slice};
use sf_guest::clone::{self, CloneStatus};
use sf_guest::{env, println, time};

sf_guest::main!(main);

fn parse(name: &str, default: u64) -> Option<u64> {
    match env::arg(name) {
        None => Some(default),
        Some(v) => v.parse().ok(),
    }
}

fn report(samples: u64, inside: u64, slices: u64, ms: f64) {
    let pi = 4.0 * inside as f64 / samples as f64;
    println!(
        "pi ~= {pi:.6} from {samples} samples ({inside} inside), error {:.2e}",
        (pi - core::f64::consts::PI).abs()
    );
    println!(
        "computed in {ms:.1} ms ({:.1} Msamples/s)",
        samples as f64 / ms / 1e3
    );
    println!("pi: inside={inside} samples={samples} slices={slices}");
}

fn with_clones(samples: u64, seed: u64, wanted: u64) -> i32 {
    let t = match clone::request_ticket(wanted) {
        Ok(t) => t,
        Err(e) => {
            println!("pi: no clones available ({e:?})");
            return 3;
        }
    };
    let k = t.granted() as u64;
    println!("pi: granted={k} of {wanted} clones");
    let t0 = time::now_ns();
    let id = match clone::clone(&t) {
        Ok(id) => id as u64,
        Err(e) => {
            println!("pi: clone failed ({e:?})");
            return 3;
        }
    };
    if id != 0 {
        let (n, s) = slice(samples, seed, id, k);
        let c0 = time::now_ns();
        let inside = hits(n, s);
        let ms = (time::now_ns() - c0) / 1_000_000;
        println!("slice {id}/{k}: {n} samples, {inside} inside, {ms} ms");
        let mut out = Vec::new();
        out.extend_from_slice(&inside.to_le_bytes());
        out.extend_from_slice(&ms.to_le_bytes());
        clone::exit(0, &out);
        return 4;
    }
    let results = match clone::join(&t) {
        Ok(r) => r,
        Err(e) => {
            println!("pi: join failed ({e:?})");
            return 3;
        }
    };
    let mut inside = 0;
    for r in &results {
        if r.status != CloneStatus::Exited || r.result.len() != 16 {
            println!("pi: clone {} failed: {:?} {}", r.id, r.status, r.detail);
            return 1;
        }
        inside += u64::from_le_bytes(r.result[..8].try_into().unwrap());
    }
    report(samples, inside, k, (time::now_ns() - t0) as f64 / 1e6);
    0
}

fn main() -> i32 {
    let (Some(samples), Some(seed), Some(clones), Some(split)) = (
        parse("samples", 200_000_000),
        parse("seed", 1),
        parse("clones", 0),
        parse("split", 1),
    ) else {
        println!("pi: samples=, seed=, clones= and split= take unsigned integers");
        return 2;
    };
    if samples == 0 || split == 0 {
        println!("pi: samples and split must be positive");
        return 2;
    }
    if clones > 0 {
        return with_clones(samples, seed, clones);
    }
    let t0 = time::now_ns();
    let inside: u64 = (1..=split)
        .map(|i| {
            let (n, s) = slice(samples, seed, i, split);
            hits(n, s)
        })
        .sum();
    report(samples, inside, split, (time::now_ns() - t0) as f64 / 1e6);
    0
}

//! Test guest for the C API (`guest/include/snowflock.h`): the clone logic
//! is C (src/fork_sum.c); this only calls it and reports.
#![no_std]
#![no_main]

use sf_guest::{env, println};

sf_guest::main!(main);

extern "C" {
    fn c_fork_sum(n: u32) -> i64;
}

fn main() -> i32 {
    let n: u32 = env::arg("n").and_then(|v| v.parse().ok()).unwrap_or(4);
    // SAFETY: a plain C function with no pointer arguments.
    let sum = unsafe { c_fork_sum(n) };
    let want = (n as i64) * (n as i64 + 1) / 2;
    println!("capi: {n} clones, statuses sum to {sum} (want {want})");
    if sum == want {
        0
    } else {
        1
    }
}

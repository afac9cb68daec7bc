//! Test guest for the C API (`guest/include/snowflock.h`): the clone logic
//! is C (src/fork_sum.c); this only calls it and reports. A C parent sums
//! its clones' statuses, then reads four clones' statuses and results: a
//! clean exit(-1), a crash, a refused sf_exit(NULL, 8), a result string.
//! `capi -- net` runs the network calls instead (src/net_echo.c).
#![no_std]
#![no_main]

use sf_guest::{env, println};

sf_guest::main!(main);

extern "C" {
    fn c_fork_sum(n: u32) -> i64;
    fn c_results(null_exit: *mut i64) -> i64;
    fn c_net() -> i64;
}

/// `capi -- net`: the network calls from C (src/net_echo.c).
fn net() -> i32 {
    // SAFETY: a plain C function with no arguments.
    let bad = unsafe { c_net() };
    if bad == 1 << 30 {
        println!("capi: net: no network; every call said ENETDOWN: ok");
        return 0;
    }
    if bad == 0 {
        println!("capi: net: TCP and UDP between parent and clone: ok");
        return 0;
    }
    println!("capi: net: FAIL (checks {bad:#x})");
    1
}

fn main() -> i32 {
    if env::args().any(|a| a == "net") {
        return net();
    }
    let n: u32 = env::arg("n").and_then(|v| v.parse().ok()).unwrap_or(4);
    // SAFETY: a plain C function with no pointer arguments.
    let sum = unsafe { c_fork_sum(n) };
    let want = (n as i64) * (n as i64 + 1) / 2;
    println!("capi: {n} clones, statuses sum to {sum} (want {want})");
    let mut null_exit = 0i64;
    // SAFETY: `null_exit` is a valid place for one i64.
    let mask = unsafe { c_results(&mut null_exit) };
    let word = |ok: bool| if ok { "ok" } else { "FAIL" };
    println!(
        "capi: results: {} ({mask})",
        word(mask >= 0 && mask & 1 == 0)
    );
    println!(
        "capi: exit(-1) and a crash told apart: {}",
        word(mask >= 0 && mask & 2 == 0)
    );
    println!("capi: sf_exit(NULL, 8) -> {null_exit}");
    (sum != want || mask != 0 || null_exit != -14) as i32
}

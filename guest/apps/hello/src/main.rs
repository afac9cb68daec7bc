//! The smallest SnowFlock guest: greets, echoes its arguments, exits 0.
#![no_std]
#![no_main]

use sf_guest::{env, println};

sf_guest::main!(main);

fn main() -> i32 {
    println!("Hello from a SnowFlock guest!");
    let mut any = false;
    for (i, a) in env::args().enumerate() {
        println!("  arg {i}: {a}");
        any = true;
    }
    if !any {
        println!("  (no arguments; pass some after `--`)");
    }
    println!(
        "  {} MiB of RAM, up {} us",
        env::mem_size() >> 20,
        sf_guest::time::now_ns() / 1000
    );
    0
}

//! Networked clones.
//!
//! - `netpi -- samples=N seed=S clones=C [port=7000] [timeout_ms=60000]`:
//!   the `pi` demo whose clones send their counts to the parent over TCP
//!   (when the VM has a NIC; else through `join`). Prints
//!   `netpi: inside=I samples=N slices=K via=tcp`.
//! - `netpi -- allpairs clones=C [port=7000] [bytes=4096] [timeout_ms=60000]`:
//!   every clone sends every other clone a checksummed message over TCP
//!   and checks what it gets; the parent checks all of them. Prints
//!   `allpairs: ok pairs=P clones=C` and exits 0, or `allpairs: FAIL ...`
//!   and exits 1.
//! - `netpi -- echo [port=7000] [conns=1] [dgrams=0] [timeout_ms=60000]`:
//!   echoes `conns` TCP connections, then `dgrams` UDP datagrams (for
//!   tests and measurements from the host).
//! - `netpi -- stream [port=7000] [mib=16] [rounds=200]`: one clone and its
//!   parent measure the TCP round trip and throughput between two VMs.
//!   Prints `stream: rtt_median_us=R mbit_s=M bytes=B offloads=on|off`.
#![no_std]
#![no_main]

extern crate alloc;

mod allpairs;
mod echo;
mod pi;
mod stream;
mod wire;

use sf_guest::{env, println};

sf_guest::main!(main);

fn parse(name: &str, default: u64) -> Option<u64> {
    match env::arg(name) {
        None => Some(default),
        Some(v) => v.parse().ok(),
    }
}

fn main() -> i32 {
    let (Some(samples), Some(seed), Some(clones), Some(port), Some(bytes), Some(timeout_ms)) = (
        parse("samples", 20_000_000),
        parse("seed", 1),
        parse("clones", 4),
        parse("port", 7000),
        parse("bytes", 4096),
        parse("timeout_ms", 60_000),
    ) else {
        println!(
            "netpi: samples=, seed=, clones=, port=, bytes= and timeout_ms= take unsigned integers"
        );
        return 2;
    };
    let port = match u16::try_from(port) {
        Ok(p) if p > 0 && p < u16::MAX => p,
        _ => {
            println!("netpi: port must be 1..=65534");
            return 2;
        }
    };
    if clones == 0 || samples == 0 || bytes as usize > wire::MAX_PAYLOAD {
        println!(
            "netpi: clones and samples must be positive, bytes at most {}",
            wire::MAX_PAYLOAD
        );
        return 2;
    }
    if env::args().any(|a| a == "echo") {
        let (Some(conns), Some(dgrams)) = (parse("conns", 1), parse("dgrams", 0)) else {
            println!("netpi: conns= and dgrams= take unsigned integers");
            return 2;
        };
        return echo::run(port, conns, dgrams, timeout_ms);
    }
    if env::args().any(|a| a == "stream") {
        let (Some(mib), Some(rounds)) = (parse("mib", 16), parse("rounds", 200)) else {
            println!("netpi: mib= and rounds= take unsigned integers");
            return 2;
        };
        return stream::run(port, mib, rounds, timeout_ms);
    }
    if env::args().any(|a| a == "allpairs") {
        allpairs::run(clones, port, bytes as usize, timeout_ms)
    } else {
        pi::run(samples, seed, clones, port, timeout_ms)
    }
}

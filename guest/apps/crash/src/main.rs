//! Test guest that fails on purpose, one way per argument:
//! `divzero`, `ud`, `null`, `outside` (touch past the end of RAM), `gp`
//! (privileged instruction), `int3`, `panic`, `exit=N`, `spin` (never ends),
//! `kernel` (write to a supervisor-only page), `flood=MIB` (writes MIB
//! MiB to the console as fast as it can, then exits 0: the host's console
//! cap must hold).
#![no_std]
#![no_main]

use core::arch::asm;
use sf_guest::{env, println};

sf_guest::main!(main);

fn main() -> i32 {
    let kind = env::args().next().unwrap_or("");
    println!("crash: {kind}");
    // SAFETY (all blocks below): each one faults on purpose; the fault ends
    // the VM before anything observes the broken state.
    match kind {
        "divzero" => unsafe {
            asm!("xor edx, edx", "xor ecx, ecx", "mov eax, 1", "div ecx", out("eax") _, out("edx") _, out("ecx") _);
        },
        "ud" => unsafe { asm!("ud2") },
        "null" => unsafe {
            core::ptr::write_volatile(core::ptr::null_mut::<u64>(), 1);
        },
        "outside" => unsafe {
            let p = (env::mem_size() + 0x1000) as *mut u64;
            core::ptr::write_volatile(p, 1);
        },
        "kernel" => unsafe {
            core::ptr::write_volatile(sf_abi_idt() as *mut u64, 0);
        },
        "gp" => unsafe { asm!("hlt") },
        "int3" => unsafe { asm!("int3") },
        "panic" => panic!("the crash guest panics on request"),
        "spin" => loop {
            core::hint::spin_loop();
        },
        k if k.starts_with("exit=") => return k[5..].parse().unwrap_or(2),
        k if k.starts_with("flood=") => return flood(k[6..].parse().unwrap_or(1)),
        _ => {
            println!("crash: unknown kind {kind:?}");
            return 2;
        }
    }
    println!("crash: {kind} did not fault");
    1
}

/// Writes `mib` MiB of console output in the largest writes the ABI
/// allows (64 KiB), so a flood costs few exits.
fn flood(mib: u64) -> i32 {
    static LINE: [u8; 64 << 10] = {
        let mut b = [b'x'; 64 << 10];
        let mut i = 63;
        while i < b.len() {
            b[i] = b'\n';
            i += 64;
        }
        b
    };
    for _ in 0..mib * 16 {
        if sf_guest::hypercall::console_write(&LINE).is_err() {
            return 3;
        }
    }
    0
}

/// The IDT's address: supervisor-only, so a ring-3 store page-faults.
fn sf_abi_idt() -> u64 {
    0x3000
}

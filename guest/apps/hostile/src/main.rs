//! Test guest that attacks the hypercall interface with wild pointers,
//! lengths and call numbers, and checks that each gets an error code back
//! (and that the VM keeps running). Exits 0 only if every call was refused
//! as expected.
#![no_std]
#![no_main]

use sf_guest::hypercall::{raw, result};
use sf_guest::{env, println};

sf_guest::main!(main);

const CONSOLE_WRITE: u32 = 1;
const PANIC: u32 = 3;
const EXCEPTION: u32 = 4;
const FAULT: i64 = -14;
const TOO_BIG: i64 = -7;
const NOSYS: i64 = -38;

fn main() -> i32 {
    let mem = env::mem_size();
    let buf = [b'x'; 16];
    let valid = buf.as_ptr() as u64;
    let cases: &[(&str, u32, u64, u64, i64)] = &[
        ("console past RAM", CONSOLE_WRITE, mem, 16, FAULT),
        (
            "console straddling RAM end",
            CONSOLE_WRITE,
            mem - 8,
            16,
            FAULT,
        ),
        (
            "console pointer wraps",
            CONSOLE_WRITE,
            u64::MAX - 7,
            16,
            FAULT,
        ),
        (
            "console huge length",
            CONSOLE_WRITE,
            valid,
            u64::MAX,
            TOO_BIG,
        ),
        (
            "console just over limit",
            CONSOLE_WRITE,
            valid,
            (64 << 10) + 1,
            TOO_BIG,
        ),
        (
            "console kernel address",
            CONSOLE_WRITE,
            0xffff_8000_0000_0000,
            4,
            FAULT,
        ),
        ("panic wild message", PANIC, u64::MAX - 100, 200, FAULT),
        ("panic message past RAM", PANIC, mem + 4096, 10, FAULT),
        ("exception wild frame", EXCEPTION, u64::MAX - 8, 0, FAULT),
        ("exception frame past RAM", EXCEPTION, mem - 8, 0, FAULT),
        ("call 0", 0, valid, 16, NOSYS),
        ("call 99", 99, valid, 16, NOSYS),
        ("call u32::MAX", u32::MAX, valid, 16, NOSYS),
    ];
    let mut bad = 0;
    for &(name, call, a0, a1, want) in cases {
        // SAFETY: the arguments are wild on purpose; the host validates them
        // and writes nothing.
        let got = unsafe { raw(call, a0, a1, u64::MAX, u64::MAX) } as i64;
        let ok = got == want;
        bad += !ok as i32;
        println!(
            "{} {name}: got {got}, want {want}",
            if ok { "ok  " } else { "FAIL" }
        );
    }
    // A zero-length write from anywhere is harmless and succeeds.
    // SAFETY: nothing is read.
    let zero = result(unsafe { raw(CONSOLE_WRITE, mem + 12345, 0, 0, 0) });
    println!(
        "{} zero-length write: {zero:?}",
        if zero == Ok(0) { "ok  " } else { "FAIL" }
    );
    bad += (zero != Ok(0)) as i32;
    println!(
        "hostile: {} of {} refused as expected",
        cases.len() as i32 + 1 - bad,
        cases.len() + 1
    );
    if bad == 0 {
        0
    } else {
        1
    }
}

//! Inputs and outputs under attack and at their limits.
//!
//! `io [n=N] [big=MIB]`: prints each input's name, length and FNV-1a hash
//! (the test hashes the files itself), sends output names the host must
//! refuse (separators, `..`, NUL, too long, wild pointers) straight to the
//! hypercall, writes `parent.txt` (and `big.bin`, MIB MiB streamed in
//! chunks), then clones N times: each clone hashes the inputs again, writes
//! `clone.txt` (and, with `cbig=MIB`, its own `big.bin`) and returns its
//! hash, which the parent checks; with `nest=1` each clone also clones
//! once, and that clone writes `nested.txt` (and, with `nbig=MIB`, its own
//! `big.bin`). Exits 0 if every answer was
//! the ABI's.
//! `io-cap`: writes 1 MiB chunks until the host refuses, then checks the
//! refusal is `TooBig` and that the VM runs on. `io-try NAME`: writes one
//! file and prints the answer (exit 0 ok, 3 refused). `io-write-input
//! NAME`: writes into an input, which must crash the VM (read-only page).

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use sf_guest::hypercall::raw;
use sf_guest::output::{self, OutputError};
use sf_guest::sf_abi::hypercall::{Call, Error};
use sf_guest::sf_abi::io::{NAME_MAX, OUTPUT_CHUNK_MAX};
use sf_guest::sf_abi::layout;

const FAULT: i64 = -(Error::Fault as i64);
const INVALID: i64 = -(Error::Invalid as i64);
const NOENT: i64 = -(Error::NoEntry as i64);
use sf_guest::{clone, env, input, println};

/// FNV-1a, 64 bits: a hash both sides compute in a few lines.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// One line per input; returns a hash over all of them.
fn summary(who: &str) -> u64 {
    let mut all = 0u64;
    for name in input::names() {
        let bytes = input::get(name).unwrap_or(&[]);
        let h = fnv(bytes);
        println!("{who} input {name} {} {h:016x}", bytes.len());
        all = all.rotate_left(7) ^ h;
    }
    all
}

fn raw_output(name_ptr: u64, name_len: u64, buf: &[u8]) -> i64 {
    // SAFETY: the arguments are wild on purpose; the host validates them.
    (unsafe {
        sf_guest::hypercall::raw(
            Call::OutputWrite as u32,
            name_ptr,
            name_len,
            buf.as_ptr() as u64,
            buf.len() as u64,
        )
    }) as i64
}

fn refused_names() -> i32 {
    let invalid = -(Error::Invalid as i64);
    let mut bad = 0;
    let long = [b'x'; 65];
    let cases: [(&str, &[u8], i64); 9] = [
        ("slash", b"a/b", invalid),
        ("dotdot", b"..", invalid),
        ("dot", b".", invalid),
        ("escape", b"../../escaped", invalid),
        ("nul", b"a\0b", invalid),
        ("too long", &long, invalid),
        ("empty", b"", invalid),
        ("absolute", b"/tmp/escaped", invalid),
        ("hidden", b".hidden", invalid),
    ];
    for (what, name, want) in cases {
        let got = raw_output(name.as_ptr() as u64, name.len() as u64, b"x");
        let ok = got == want;
        bad += !ok as i32;
        println!(
            "{} io name {what}: got {got}, want {want}",
            if ok { "ok  " } else { "FAIL" }
        );
    }
    let fault = -(Error::Fault as i64);
    for (what, ptr) in [("wild name", u64::MAX - 2), ("kernel name", 0x3000)] {
        let got = raw_output(ptr, 3, b"x");
        let ok = got == fault;
        bad += !ok as i32;
        println!(
            "{} io {what}: got {got}, want {fault}",
            if ok { "ok  " } else { "FAIL" }
        );
    }
    bad
}

/// `big.bin`: byte `i` is `i % 251`, streamed one chunk at a time.
pub fn write_big(mib: u64) -> Result<(), OutputError> {
    let chunk = OUTPUT_CHUNK_MAX as usize;
    let mut buf = vec![0u8; chunk];
    let total = mib << 20;
    let mut off = 0u64;
    output::write("big.bin", &[])?;
    while off < total {
        let n = ((total - off) as usize).min(chunk);
        // One period (251 bytes) at this offset's phase, then doubled: a
        // multiple of the period copied after itself stays in phase.
        let phase = (off % 251) as usize;
        for (i, b) in buf[..251].iter_mut().enumerate() {
            *b = ((phase + i) % 251) as u8;
        }
        let mut have = 251;
        while have < n {
            let more = have.min(chunk - have);
            buf.copy_within(..more, have);
            have += more;
        }
        output::append("big.bin", &buf[..n])?;
        off += n as u64;
    }
    Ok(())
}

pub fn io() -> i32 {
    let n: u64 = env::arg("n").and_then(|v| v.parse().ok()).unwrap_or(0);
    let big: u64 = env::arg("big").and_then(|v| v.parse().ok()).unwrap_or(0);
    let clone_big: u64 = env::arg("cbig").and_then(|v| v.parse().ok()).unwrap_or(0);
    let nest = env::arg("nest") == Some("1");
    let nested_big: u64 = env::arg("nbig").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mine = summary("parent");
    let mut bad = refused_names();
    let text = format!("parent {mine:016x}\n");
    if let Err(e) = output::write("parent.txt", text.as_bytes()) {
        println!("FAIL io parent.txt: {e:?}");
        bad += 1;
    }
    if big > 0 {
        let t0 = sf_guest::time::now_ns();
        if let Err(e) = write_big(big) {
            println!("FAIL io big.bin: {e:?}");
            bad += 1;
        }
        let ms = (sf_guest::time::now_ns() - t0) / 1_000_000;
        println!("parent: {big} MiB of output in {ms} ms");
    }
    if n > 0 {
        let t = match clone::request_ticket(n) {
            Ok(t) => t,
            Err(e) => {
                println!("FAIL io ticket: {e:?}");
                return 1;
            }
        };
        match clone::clone(&t) {
            Ok(0) => {}
            Ok(id) => {
                let h = summary(&format!("clone {id}"));
                let text = format!("clone {id} {h:016x}\n");
                let t0 = sf_guest::time::now_ns();
                let r =
                    output::write("clone.txt", text.as_bytes()).and_then(|()| write_big(clone_big));
                let status = match r {
                    Ok(()) => 0,
                    Err(e) => {
                        println!("clone {id}: outputs: {e:?}");
                        1
                    }
                };
                if clone_big > 0 {
                    let ms = (sf_guest::time::now_ns() - t0) / 1_000_000;
                    println!("clone {id}: {clone_big} MiB of output in {ms} ms");
                }
                let status = if nest && status == 0 {
                    nested(id, h, nested_big)
                } else {
                    status
                };
                clone::exit(status, &h.to_le_bytes());
                return 1;
            }
            Err(e) => {
                println!("FAIL io clone: {e:?}");
                return 1;
            }
        }
        for r in clone::join(&t).unwrap_or_default() {
            let same = r.result.as_slice() == mine.to_le_bytes();
            let ok = r.status == clone::CloneStatus::Exited && r.code == 0 && same;
            bad += !ok as i32;
            println!(
                "{} io clone {}: {:?} {} {}",
                if ok { "ok  " } else { "FAIL" },
                r.id,
                r.status,
                r.code,
                if same {
                    "same inputs"
                } else {
                    "different inputs"
                }
            );
        }
    }
    println!("io: {bad} failed");
    (bad != 0) as i32
}

/// In clone `id`: one clone of its own, which writes `nested.txt` (so it
/// lands in `<id>.1`; and `big.bin` of `big` MiB) and returns its inputs'
/// hash; 0 if all went well.
fn nested(id: u32, h: u64, big: u64) -> i32 {
    let Ok(t) = clone::request_ticket(1) else {
        return 1;
    };
    match clone::clone(&t) {
        Ok(0) => {}
        Ok(_) => {
            let h = summary(&format!("clone {id}.1"));
            let text = format!("nested {id}.1 {h:016x}\n");
            let r = output::write("nested.txt", text.as_bytes()).and_then(|()| {
                if big > 0 {
                    write_big(big)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = &r {
                println!("clone {id}.1: outputs: {e:?}");
            }
            let status = r.is_err() as i32;
            clone::exit(status, &h.to_le_bytes());
            return 1;
        }
        Err(_) => return 1,
    }
    let rs = clone::join(&t).unwrap_or_default();
    let ok = rs.len() == 1 && rs[0].code == 0 && rs[0].result.as_slice() == h.to_le_bytes();
    (!ok) as i32
}

pub fn cap() -> i32 {
    let buf: Vec<u8> = vec![0x5a; OUTPUT_CHUNK_MAX as usize];
    let mut sent = 0u64;
    let first = output::write("fill", &[]);
    let err = loop {
        match output::append("fill", &buf) {
            Ok(()) => sent += buf.len() as u64,
            Err(e) => break e,
        }
        if sent > 64 << 30 {
            println!("io-cap: never refused");
            return 1;
        }
    };
    let after = output::write("after", b"x");
    println!("io-cap: refused after {sent} bytes with {err:?}; then {after:?}");
    let ok = first.is_ok() && err == OutputError::TooBig;
    // The VM runs on: its console still works, and so does exiting.
    println!("io-cap: still running");
    (!ok) as i32
}

pub fn try_write(name: &str) -> i32 {
    let r = output::write(name, b"x");
    println!("io-try {name}: {r:?}");
    if r.is_ok() {
        0
    } else {
        3
    }
}

pub fn write_input(name: &str) -> i32 {
    let Some(bytes) = input::get(name) else {
        println!("io-write-input: no input {name}");
        return 2;
    };
    println!(
        "io-write-input: writing into {name} at {:p}",
        bytes.as_ptr()
    );
    // SAFETY: none: a write to a read-only page on purpose; it must fault.
    unsafe { core::ptr::write_volatile(bytes.as_ptr() as *mut u8, 1) };
    println!("io-write-input: the write went through");
    0
}

fn will_read_raw(name_ptr: u64, name_len: u64, offset: u64, len: u64) -> i64 {
    // SAFETY: the host only reads `name_len` bytes at `name_ptr` (or
    // refuses a pointer this program could not read itself).
    unsafe { raw(Call::InputWillRead as u32, name_ptr, name_len, offset, len) as i64 }
}

/// `InputWillRead` with names the host must refuse (run without inputs).
pub(crate) fn will_read_names(c: &mut super::Checks) {
    let db = b"db";
    let long = [b'a'; NAME_MAX + 1];
    let cases: &[(&str, u64, u64, i64)] = &[
        ("will-read wild name", u64::MAX - 7, 4, FAULT),
        ("will-read name on the IDT", layout::IDT, 4, FAULT),
        ("will-read name past RAM", env::mem_size(), 2, FAULT),
        (
            "will-read name too long",
            long.as_ptr() as u64,
            long.len() as u64,
            INVALID,
        ),
        ("will-read no such input", db.as_ptr() as u64, 2, NOENT),
        ("will-read empty name", db.as_ptr() as u64, 0, NOENT),
    ];
    for &(name, ptr, len, want) in cases {
        c.expect(name, will_read_raw(ptr, len, 0, 1), want);
    }
}

/// `will-read`: ranges of the input `db` past its end, empty or wrapping
/// are refused; its whole range is announced page by page; its bytes are
/// the same afterwards. Exits 0 if every answer was the ABI's.
pub fn will_read_ranges() -> i32 {
    let Some(db) = input::get("db") else {
        println!("hostile will-read: no input db");
        return 2;
    };
    let before = fnv(db);
    let mut c = super::Checks { total: 0, bad: 0 };
    let n = db.len() as u64;
    let at = db.as_ptr() as u64;
    let pages = (at + n).div_ceil(4096) - at / 4096;
    let name = b"db".as_ptr() as u64;
    let cases: &[(&str, u64, u64, i64)] = &[
        ("the whole input", 0, n, pages as i64),
        ("its last byte", n - 1, 1, 1),
        ("one byte past the end", n, 1, INVALID),
        ("ending one past the end", 1, n, INVALID),
        ("empty", 0, 0, INVALID),
        ("offset wraps", u64::MAX, 2, INVALID),
        ("length wraps", 1, u64::MAX, INVALID),
        ("huge length", 0, 1 << 40, INVALID),
    ];
    for &(what, offset, len, want) in cases {
        c.expect(what, will_read_raw(name, 2, offset, len), want);
    }
    let api = sf_guest::input::will_read("db", 0..db.len());
    c.expect(
        "through the runtime",
        api.map_or(-1, |p| p as i64),
        pages as i64,
    );
    let api = sf_guest::input::will_read("nope", 0..1);
    c.expect(
        "runtime, no such input",
        api.err().map_or(0, |e| -(e as i64)),
        NOENT,
    );
    c.expect("input unchanged", (fnv(db) == before) as i64, 1);
    println!(
        "hostile will-read: {} of {} answered as expected",
        c.total - c.bad,
        c.total
    );
    (c.bad != 0) as i32
}

//! Test guest for VM fork. The first argument picks a scenario; each checks
//! its own expectations and exits 0 only if all held, printing
//! `forktest <scenario>: ok` (or the failures).
//!
//! - `reuse mib=64 n=1`: the parent fills `mib` MiB with garbage and frees
//!   it; it, then each clone, allocates `mib` MiB, fills and checksums it
//!   and reports the fill time (what free-page hints save a local clone).
//! - `basic n=4`: fork semantics: 0 in the parent, distinct IDs, memory as
//!   at the call, later writes private to each VM, results returned.
//! - `crash`: one clone divides by zero, one panics, one exits: `join`
//!   reports each.
//! - `kill`: clones spin; `kill` ends them; `join` says killed.
//! - `nested`: clones clone; IDs and joins nest.
//! - `entropy n=8`: every VM's random stream differs after the clone.
//! - `errors`: hostile ticket sizes, forged tickets, double join, oversized
//!   result: each gets its error code.
//! - `touch`: touch all of the heap, clone n=N clones that exit at once,
//!   join (for the clone benchmark).
//! - `fill`: touch all of the heap, print `filled`, then spin (no
//!   hypercalls: the QEMU side of the clone benchmark snapshots this).
//! - `slow n=3 ms=2000`: clones busy-wait, then exit with their ID; the
//!   parent prints what `join` says of each (for failure tests).
//! - `scan n=2 mib=64 ms=3000 stagger=0`: the parent fills a buffer; each
//!   clone reads it back slowly (one page per step, spread over `ms`; clone
//!   `k` starts `(k-1) * stagger` ms late) and returns a checksum the parent
//!   verifies, and the time its read pass took (memory served on demand,
//!   pushed to siblings, and what happens when the server goes away).
//! - `avoid n=1 ws=64 alloc=256`: the free-page hints benchmark. The parent
//!   fills a working set of `ws` MiB, allocates `alloc` MiB, writes garbage
//!   into it and frees it, then does the clones' work itself once (the warm
//!   reference, printed as `avoid parent_work_ns=N`). Each clone reads the
//!   working set, allocates `alloc` MiB, fills it, reads it back and returns
//!   `[id, checksum, work_ns]`; the parent checks every checksum.
//! - `bomb n=4 depth=6 hold=300`: a clone bomb: every VM asks for `n` more
//!   clones, down to `depth` levels, holds `hold` ms, then joins; prints
//!   how many VMs ran and how many asks got `Again`.
//! - `chain depth=10 ms=1000`: each VM busy-waits `ms`, then makes one clone
//!   that does the same and waits for it in `join` (a timeout chain).
//! - `many n=3000 kind=panic|exit`: `n` clone+join calls of one clone each;
//!   prints the time per call of the first and last 500 calls.
//! - `orphans n=2 depth=2`: clones (which clone too) spin; the root exits
//!   without joining them.
//! - `killtree rounds=20`: each round makes a clone that makes two clones of
//!   its own, all spinning, then kills and joins it; then holds `hold` ms.
//! - `flood`: prints lines forever.
//! - `forkstorm`, `hintnest`: clones of clones on other hosts (see `storm`).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use sf_guest::clone::{self, CloneStatus, Ticket};
use sf_guest::hypercall::{raw, result};
use sf_guest::{env, println, rand};

sf_guest::main!(main);

/// A value in the image's data section, to check static memory too.
static STATIC_MARK: AtomicU64 = AtomicU64::new(0);

struct Check {
    failures: u32,
}

impl Check {
    fn that(&mut self, ok: bool, what: core::fmt::Arguments) {
        if !ok {
            self.failures += 1;
            println!("FAIL: {what}");
        }
    }
}

macro_rules! check {
    ($c:expr, $ok:expr, $($fmt:tt)*) => { $c.that($ok, format_args!($($fmt)*)) };
}

mod storm;

fn arg_u64(name: &str, default: u64) -> u64 {
    env::arg(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn bytes(ws: &[u64]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn ticket(n: u64) -> Ticket {
    match clone::request_ticket(n) {
        Ok(t) => t,
        Err(e) => {
            println!("forktest: request_ticket({n}) failed: {e:?}");
            sf_guest::exit(3)
        }
    }
}

fn fork(t: &Ticket) -> u32 {
    match clone::clone(t) {
        Ok(id) => id,
        Err(e) => {
            println!("forktest: clone failed: {e:?}");
            sf_guest::exit(3)
        }
    }
}

fn done_in_clone(status: i32, result: &[u8]) -> ! {
    let e = clone::exit(status, result);
    println!("forktest: clone exit refused: {e:?}");
    sf_guest::exit(4)
}

fn basic(c: &mut Check) {
    let n = arg_u64("n", 4);
    let mut heap = vec![1234u64; 1024];
    STATIC_MARK.store(77, Ordering::Relaxed);
    let t = ticket(n);
    let id = fork(&t);
    if id != 0 {
        let seen = (heap[0], heap[1023], STATIC_MARK.load(Ordering::Relaxed));
        heap[0] = id as u64 * 100;
        STATIC_MARK.store(id as u64, Ordering::Relaxed);
        let mine = (heap[0], STATIC_MARK.load(Ordering::Relaxed));
        println!("clone {id} of {} running", t.granted());
        done_in_clone(
            id as i32,
            &bytes(&[id as u64, seen.0, seen.1, seen.2, mine.0, mine.1]),
        );
    }
    heap[0] = 999;
    STATIC_MARK.store(555, Ordering::Relaxed);
    let results = clone::join(&t).unwrap_or_default();
    check!(
        c,
        results.len() == t.granted() as usize,
        "{} results for {} clones",
        results.len(),
        t.granted()
    );
    for (i, r) in results.iter().enumerate() {
        let w = words(&r.result);
        println!(
            "clone {} -> status {:?} code {} result {:?}",
            r.id, r.status, r.code, w
        );
        check!(c, r.id == i as u32 + 1, "ids in order");
        check!(
            c,
            r.status == CloneStatus::Exited && r.code == r.id as i32,
            "clone {} exit status",
            r.id
        );
        check!(
            c,
            w.len() == 6 && w[0] == r.id as u64,
            "clone {} result carries its id",
            r.id
        );
        if w.len() == 6 {
            check!(
                c,
                w[1] == 1234 && w[2] == 1234 && w[3] == 77,
                "clone {} saw memory as at the call: {:?}",
                r.id,
                &w[1..4]
            );
            check!(
                c,
                w[4] == r.id as u64 * 100 && w[5] == r.id as u64,
                "clone {} sees its own writes",
                r.id
            );
        }
    }
    check!(
        c,
        heap[0] == 999 && heap[1] == 1234,
        "parent heap private: {}",
        heap[0]
    );
    check!(
        c,
        STATIC_MARK.load(Ordering::Relaxed) == 555,
        "parent static private"
    );
}

fn crash(c: &mut Check) {
    let t = ticket(3);
    check!(c, t.granted() == 3, "granted {}", t.granted());
    match fork(&t) {
        0 => {}
        1 => done_in_clone(0, b"fine"),
        2 => {
            let zero = core::hint::black_box(0u32);
            println!("clone 2 divides by {zero}");
            // SAFETY: faults on purpose.
            unsafe {
                core::arch::asm!("div {0:e}", in(reg) zero, inout("eax") 1u32 => _, inout("edx") 0u32 => _)
            };
            done_in_clone(0, b"survived a divide by zero?");
        }
        _ => panic!("clone 3 panics on purpose"),
    }
    let rs = clone::join(&t).unwrap_or_default();
    for r in &rs {
        println!(
            "clone {} -> {:?} code {} detail {:?}",
            r.id, r.status, r.code, r.detail
        );
    }
    check!(c, rs.len() == 3, "three results");
    if rs.len() == 3 {
        check!(
            c,
            rs[0].status == CloneStatus::Exited && rs[0].result == b"fine",
            "clone 1 result arrives"
        );
        check!(
            c,
            rs[1].status == CloneStatus::Crashed && rs[1].code == 0,
            "clone 2 crashed with #DE"
        );
        check!(
            c,
            rs[1].detail.contains("divide error") && rs[1].detail.contains("rip 0x"),
            "clone 2 detail names the fault and rip"
        );
        check!(
            c,
            rs[2].status == CloneStatus::Panicked
                && rs[2].detail.contains("clone 3 panics on purpose"),
            "clone 3 panic message"
        );
    }
}

fn kill(c: &mut Check) {
    let t = ticket(2);
    if fork(&t) != 0 {
        loop {
            core::hint::spin_loop();
        }
    }
    // Give the clones time to start spinning.
    let until = sf_guest::time::now_ns() + 200_000_000;
    while sf_guest::time::now_ns() < until {}
    let killed = clone::kill(&t);
    check!(c, killed == Ok(2), "kill reports 2 killed: {killed:?}");
    let rs = clone::join(&t).unwrap_or_default();
    check!(
        c,
        rs.len() == 2 && rs.iter().all(|r| r.status == CloneStatus::Killed),
        "join reports both killed: {rs:?}"
    );
}

fn nested(c: &mut Check) {
    let t = ticket(2);
    let id = fork(&t);
    if id != 0 {
        let t2 = ticket(2);
        let sub = fork(&t2);
        if sub != 0 {
            done_in_clone(0, &bytes(&[id as u64 * 10 + sub as u64]));
        }
        let rs = clone::join(&t2).unwrap_or_default();
        let got: Vec<u64> = rs.iter().flat_map(|r| words(&r.result)).collect();
        done_in_clone(0, &bytes(&[id as u64, got.len() as u64, got.iter().sum()]));
    }
    let rs = clone::join(&t).unwrap_or_default();
    for r in &rs {
        let w = words(&r.result);
        println!("clone {} -> {:?} {:?}", r.id, r.status, w);
        let id = r.id as u64;
        check!(
            c,
            w == [id, 2, id * 20 + 3],
            "clone {} joined its own two clones: {:?}",
            r.id,
            w
        );
    }
    check!(c, rs.len() == 2, "two results");
}

fn entropy(c: &mut Check) {
    let n = arg_u64("n", 8);
    let before = rand::next_u64();
    let t = ticket(n);
    let id = fork(&t);
    let mine = [rand::next_u64(), rand::next_u64()];
    if id != 0 {
        done_in_clone(0, &bytes(&mine));
    }
    let rs = clone::join(&t).unwrap_or_default();
    let mut all: Vec<u64> = rs.iter().flat_map(|r| words(&r.result)).collect();
    all.extend_from_slice(&mine);
    all.push(before);
    let total = all.len();
    all.sort_unstable();
    all.dedup();
    println!(
        "{} random values from {} VMs, {} distinct",
        total,
        rs.len() + 1,
        all.len()
    );
    check!(
        c,
        rs.len() == t.granted() as usize && total == 2 * rs.len() + 3,
        "every clone reported"
    );
    check!(c, all.len() == total, "all random values distinct");
}

fn errors(c: &mut Check) {
    let max = arg_u64("max", 0);
    let big = clone::request_ticket(1_000_000_000);
    println!(
        "request_ticket(1e9) -> {:?}",
        big.as_ref().map(|t| t.granted())
    );
    check!(
        c,
        matches!(&big, Ok(t) if t.granted() >= 1 && (max == 0 || t.granted() as u64 == max)),
        "a billion is cut to the limit"
    );
    check!(
        c,
        clone::request_ticket(1).err() == Some(sf_guest::hypercall_error::Again),
        "no clones left while all are reserved"
    );
    let big = big.unwrap_or(Ticket::forged(0, 0));
    check!(
        c,
        clone::join(&big).map(|r| r.len()) == Ok(0),
        "joining an unused ticket releases it"
    );
    check!(
        c,
        clone::request_ticket(0).err() == Some(sf_guest::hypercall_error::Invalid),
        "zero clones is invalid"
    );
    let all = clone::request_ticket(u64::MAX);
    check!(
        c,
        all.as_ref().map(|t| t.granted() >= 1).unwrap_or(false),
        "u64::MAX asks are granted the limit"
    );
    let forged = Ticket::forged(4242, 3);
    check!(
        c,
        clone::clone(&forged).err() == Some(sf_guest::hypercall_error::NoEntry),
        "clone with a forged ticket"
    );
    check!(
        c,
        clone::join(&forged).err() == Some(sf_guest::hypercall_error::NoEntry),
        "join with a forged ticket"
    );
    check!(
        c,
        clone::kill(&forged).err() == Some(sf_guest::hypercall_error::NoEntry),
        "kill with a forged ticket"
    );
    // SAFETY: wild pointers on purpose; the host checks them.
    let fetch = result(unsafe { raw(20, u64::MAX, 0, 0, 0) });
    check!(c, fetch.is_err(), "fetch of a wild ticket fails: {fetch:?}");
    // Release everything reserved above, then use one ticket properly.
    if let Ok(all) = all {
        let _ = clone::join(&all);
    }
    let t = ticket(1);
    let cap = clone::result_cap(&t);
    check!(
        c,
        matches!(cap, Ok(n) if n > clone::RESULT_FLOOR && n <= clone::RESULT_FLOOR + clone::RESULTS_HELD_MAX),
        "a one-clone ticket's result cap is above the floor and bounded: {cap:?}"
    );
    check!(
        c,
        clone::result_cap(&forged).err() == Some(sf_guest::hypercall_error::NoEntry),
        "result cap of a forged ticket"
    );
    if fork(&t) != 0 {
        let cap = cap.unwrap_or(clone::RESULT_FLOOR) as u64;
        let probe = [7u8; 16];
        // One byte over the cap, and 1 GiB: refused before any is read.
        // SAFETY: the host checks the length against the cap first.
        let over = result(unsafe { raw(18, 0, probe.as_ptr() as u64, cap + 1, 0) });
        // SAFETY: as above.
        let gib = result(unsafe { raw(18, 0, probe.as_ptr() as u64, 1 << 30, 0) });
        // SAFETY: a result pointer outside RAM.
        let wild = result(unsafe { raw(18, 0, u64::MAX - 4, 16, 0) });
        let too_big = Err(sf_guest::hypercall_error::TooBig);
        let ok = over == too_big && gib == too_big && wild == Err(sf_guest::hypercall_error::Fault);
        done_in_clone(if ok { 0 } else { 1 }, b"refusals seen");
    }
    check!(
        c,
        clone::clone(&t).err() == Some(sf_guest::hypercall_error::Busy),
        "cloning twice with one ticket"
    );
    let rs = clone::join(&t);
    check!(
        c,
        matches!(&rs, Ok(v) if v.len() == 1 && v[0].status == CloneStatus::Exited && v[0].code == 0),
        "clone saw TooBig and Fault: {rs:?}"
    );
    check!(
        c,
        clone::join(&t).err() == Some(sf_guest::hypercall_error::NoEntry),
        "joining twice"
    );
    // A join record larger than the buffer offered is refused, not truncated.
    let t = ticket(1);
    if fork(&t) != 0 {
        done_in_clone(0, &[1u8; 100]);
    }
    // SAFETY: buffer of 8 bytes, host must refuse to write 100+.
    let need = result(unsafe { raw(19, t.id() as u64, 0, 0, 0) });
    let small = [0u8; 8];
    let fetched = result(unsafe { raw(20, t.id() as u64, small.as_ptr() as u64, 8, 0) });
    check!(
        c,
        matches!(need, Ok(n) if n > 100) && fetched == Err(sf_guest::hypercall_error::TooBig),
        "small join buffer refused"
    );
    check!(
        c,
        clone::join(&t).map(|r| r.len()) == Ok(1),
        "join still works after the refusal"
    );
}

/// Fills the heap: every page of it becomes resident (before a clone), and
/// different from its neighbours (a page of one repeated byte is cheap to
/// save for some snapshot formats, which would flatter them).
fn fill_heap() -> Vec<u8> {
    let mut v: Vec<u8> = Vec::with_capacity(env::heap_size().saturating_sub(1 << 20) as usize);
    v.resize(v.capacity(), 1);
    for (i, page) in v.chunks_mut(4096).enumerate() {
        page[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    // Nothing reads these bytes: without this the compiler may drop the
    // stores, and the memory would never become resident.
    core::hint::black_box(&mut v);
    v
}

fn fill() -> ! {
    let v = fill_heap();
    println!("forktest fill: {} MiB filled", v.len() >> 20);
    sf_guest::console::flush();
    loop {
        core::hint::spin_loop();
    }
}

fn touch() {
    let n = arg_u64("n", 1);
    let v = fill_heap();
    let t = ticket(n);
    if fork(&t) != 0 {
        done_in_clone(0, &[]);
    }
    let rs = clone::join(&t).unwrap_or_default();
    let ok = rs.len() == t.granted() as usize && rs.iter().all(|r| r.status == CloneStatus::Exited);
    println!(
        "forktest touch: {} MiB touched, {} clones joined, {}",
        v.len() >> 20,
        rs.len(),
        if ok { "ok" } else { "FAILED" }
    );
    sf_guest::exit(if ok { 0 } else { 1 })
}

fn busy_wait_ms(ms: u64) {
    let until = sf_guest::time::now_ns() + ms * 1_000_000;
    while sf_guest::time::now_ns() < until {
        core::hint::spin_loop();
    }
}

fn print_results(rs: &[clone::CloneResult]) {
    for r in rs {
        println!(
            "clone {} -> {:?} code {} result {:?} detail {:?}",
            r.id,
            r.status,
            r.code,
            words(&r.result),
            r.detail
        );
    }
}

fn slow(c: &mut Check) {
    let (n, ms) = (arg_u64("n", 3), arg_u64("ms", 2000));
    let t = ticket(n);
    let id = fork(&t);
    if id != 0 {
        busy_wait_ms(ms);
        done_in_clone(0, &bytes(&[id as u64]));
    }
    let rs = clone::join(&t).unwrap_or_default();
    print_results(&rs);
    check!(
        c,
        rs.len() == t.granted() as usize,
        "every clone accounted for"
    );
}

/// `families=F` clones F families one after another from the same parent
/// (the later ones get the first's recorded working set); `mutate=1` has
/// the parent change every page it scans between families, so a clone
/// that got a page from an older family's memory reads a wrong sum.
/// `part=1`: each clone reads only its own slice of the buffer (clone `i`
/// of `n` the `i`-th), as a job split across clones does.
fn scan(c: &mut Check) {
    let (n, mib, ms) = (arg_u64("n", 2), arg_u64("mib", 64), arg_u64("ms", 3000));
    let part = arg_u64("part", 0) != 0;
    let stagger = arg_u64("stagger", 0);
    let (families, mutate) = (arg_u64("families", 1), arg_u64("mutate", 0) != 0);
    let words_per_page = 512;
    let pages = (mib << 20) / 4096;
    let mut buf: Vec<u64> = Vec::with_capacity((pages * words_per_page) as usize);
    for i in 0..pages * words_per_page {
        buf.push(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    for family in 0..families {
        if family > 0 && mutate {
            for p in 0..pages {
                let w = &mut buf[(p * words_per_page) as usize];
                *w = w.wrapping_add(family);
            }
        }
        scan_family(c, &buf, (n, pages, ms, stagger), part);
    }
}

/// The pages clone `id` of `n` reads: all of them, or its slice.
fn scan_range(id: u64, n: u64, pages: u64, part: bool) -> core::ops::Range<u64> {
    if part {
        (id - 1) * pages / n..id * pages / n
    } else {
        0..pages
    }
}

fn scan_family(
    c: &mut Check,
    buf: &[u64],
    (n, pages, ms, stagger): (u64, u64, u64, u64),
    part: bool,
) {
    let words_per_page = 512;
    let sum_of = |range: core::ops::Range<u64>| {
        range
            .map(|p| buf[(p * words_per_page) as usize])
            .fold(0, u64::wrapping_add)
    };
    let t = ticket(n);
    let id = fork(&t);
    if id != 0 {
        busy_wait_ms((id as u64 - 1) * stagger);
        let range = scan_range(id as u64, t.granted() as u64, pages, part);
        let step_ns = ms * 1_000_000 / (range.end - range.start).max(1);
        let mut sum = 0u64;
        // The whole read pass, for `bench remote`'s work time.
        let start = sf_guest::time::now_ns();
        for p in range {
            let until = sf_guest::time::now_ns() + step_ns;
            sum = sum.wrapping_add(buf[(p * words_per_page) as usize]);
            while sf_guest::time::now_ns() < until {}
        }
        let took = sf_guest::time::now_ns() - start;
        done_in_clone(0, &bytes(&[id as u64, sum, took]));
    }
    let rs = clone::join(&t).unwrap_or_default();
    print_results(&rs);
    for r in &rs {
        if r.status == CloneStatus::Exited {
            let expect = sum_of(scan_range(r.id as u64, t.granted() as u64, pages, part));
            check!(
                c,
                words(&r.result).get(..2) == Some(&[r.id as u64, expect][..]),
                "clone {} read back the parent's memory",
                r.id
            );
        }
    }
    check!(
        c,
        rs.len() == t.granted() as usize,
        "every clone accounted for"
    );
}

/// The clones' work in `avoid`: read the working set, allocate and fill
/// `alloc_words` words, read them back. Returns (checksum, took ns); the
/// checksum does not depend on who ran it.
fn avoid_work(ws: &[u64], alloc_words: usize) -> (u64, u64) {
    let start = sf_guest::time::now_ns();
    let mut sum = ws.iter().fold(0u64, |a, &w| a.wrapping_add(w));
    let mut fresh: Vec<u64> = Vec::with_capacity(alloc_words);
    for i in 0..alloc_words as u64 {
        fresh.push(i ^ 0x5a5a_5a5a_5a5a_5a5a);
    }
    let fresh = core::hint::black_box(fresh);
    let back = fresh.iter().fold(0u64, |a, &w| a.wrapping_add(w));
    let want = (0..alloc_words as u64).fold(0u64, |a, i| a.wrapping_add(i ^ 0x5a5a_5a5a_5a5a_5a5a));
    if back != want {
        sum = !sum; // the parent's check fails
    }
    drop(fresh);
    (sum.wrapping_add(back), sf_guest::time::now_ns() - start)
}

fn avoid(c: &mut Check) {
    let n = arg_u64("n", 1);
    let ws_words = (arg_u64("ws", 64) << 20) as usize / 8;
    let alloc_words = (arg_u64("alloc", 256) << 20) as usize / 8;
    let mut ws: Vec<u64> = Vec::with_capacity(ws_words);
    for i in 0..ws_words as u64 {
        ws.push(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    }
    // Garbage the guest frees before the clone: its old bytes are nothing
    // a clone needs.
    let mut garbage: Vec<u8> = Vec::with_capacity(alloc_words * 8);
    garbage.resize(alloc_words * 8, 0xA5);
    drop(core::hint::black_box(garbage));
    let (expect, parent_ns) = avoid_work(&ws, alloc_words);
    println!("avoid parent_work_ns={parent_ns}");
    let t = ticket(n);
    let id = fork(&t);
    if id != 0 {
        let (sum, ns) = avoid_work(&ws, alloc_words);
        done_in_clone(0, &bytes(&[id as u64, sum, ns]));
    }
    let rs = clone::join(&t).unwrap_or_default();
    print_results(&rs);
    for r in &rs {
        let w = words(&r.result);
        check!(
            c,
            r.status == CloneStatus::Exited
                && w.len() == 3
                && w[0] == r.id as u64
                && w[1] == expect,
            "clone {} read the working set and its own fresh memory back",
            r.id
        );
    }
    check!(
        c,
        rs.len() == t.granted() as usize,
        "every clone accounted for"
    );
}

/// Counts of one bomb subtree: VMs in it, asks refused with `Again`,
/// deepest level reached.
fn bomb_level(n: u64, depth: u64, hold: u64, level: u64) -> [u64; 3] {
    let mut total = [1, 0, level];
    if level >= depth {
        busy_wait_ms(hold);
        return total;
    }
    let mut tickets = Vec::new();
    // Keep asking until refused: a bomb takes all it can get.
    loop {
        match clone::request_ticket(n) {
            Err(sf_guest::hypercall_error::Again) => {
                total[1] += 1;
                break;
            }
            Err(e) => {
                println!("bomb: request_ticket failed: {e:?}");
                break;
            }
            Ok(t) => {
                let id = match clone::clone(&t) {
                    Ok(id) => id,
                    Err(e) => {
                        println!("bomb: clone failed: {e:?}");
                        break;
                    }
                };
                if id != 0 {
                    let sub = bomb_level(n, depth, hold, level + 1);
                    done_in_clone(0, &bytes(&sub));
                }
                tickets.push(t);
            }
        }
    }
    busy_wait_ms(hold);
    for t in &tickets {
        for r in clone::join(t).unwrap_or_default() {
            let w = words(&r.result);
            if w.len() == 3 {
                total[0] += w[0];
                total[1] += w[1];
                total[2] = total[2].max(w[2]);
            }
        }
    }
    total
}

fn bomb() {
    let (n, depth, hold) = (arg_u64("n", 4), arg_u64("depth", 6), arg_u64("hold", 300));
    let [vms, again, deepest] = bomb_level(n, depth, hold, 0);
    println!("bomb: {vms} VMs ran, {again} asks got Again, deepest level {deepest}");
}

fn chain() {
    let (depth, ms) = (arg_u64("depth", 10), arg_u64("ms", 1000));
    let mut level = 0;
    loop {
        println!("chain: level {level} working");
        busy_wait_ms(ms);
        if level >= depth {
            break;
        }
        let t = ticket(1);
        if fork(&t) == 0 {
            let rs = clone::join(&t).unwrap_or_default();
            print_results(&rs);
            break;
        }
        level += 1;
    }
    if level > 0 {
        done_in_clone(0, &bytes(&[level]));
    }
    println!("chain: done");
}

fn many() {
    let n = arg_u64("n", 3000).max(1000);
    let panic = env::arg("kind") != Some("exit");
    let window = 500;
    let (mut first, mut last, mut recent) = (0u64, 0u64, 0u64);
    for call in 1..=n {
        let start = sf_guest::time::now_ns();
        let t = ticket(1);
        if fork(&t) != 0 {
            if panic {
                panic!("clone of call {call} panics on purpose");
            }
            done_in_clone(0, &[]);
        }
        let rs = clone::join(&t).unwrap_or_default();
        if rs.len() != 1 {
            println!("many: call {call} joined {} clones", rs.len());
            sf_guest::exit(1);
        }
        let took = sf_guest::time::now_ns() - start;
        if call <= window {
            first += took;
        }
        if call > n - window {
            last += took;
        }
        recent += took;
        if call % window == 0 {
            println!("many: call {call} ({} us/call)", recent / window / 1000);
            recent = 0;
        }
    }
    println!(
        "many: {n} calls; first {window}: {} us/call, last {window}: {} us/call",
        first / window / 1000,
        last / window / 1000
    );
    sf_guest::console::flush();
    busy_wait_ms(arg_u64("hold", 300));
}

fn orphans() {
    let (n, depth) = (arg_u64("n", 2), arg_u64("depth", 2));
    let mut level = 0;
    while level < depth {
        let t = ticket(n);
        if fork(&t) == 0 {
            break;
        }
        level += 1;
    }
    if level == 0 {
        // Give every clone time to start, then leave without joining.
        busy_wait_ms(arg_u64("ms", 500));
        println!("orphans: root exits");
        sf_guest::exit(0);
    }
    loop {
        core::hint::spin_loop();
    }
}

fn killtree() {
    let rounds = arg_u64("rounds", 20);
    for _ in 0..rounds {
        let t = ticket(1);
        if fork(&t) != 0 {
            let t2 = ticket(2);
            fork(&t2);
            loop {
                core::hint::spin_loop();
            }
        }
        busy_wait_ms(100);
        let _ = clone::kill(&t);
        let _ = clone::join(&t);
    }
    println!("killtree: {rounds} rounds done");
    sf_guest::console::flush();
    busy_wait_ms(arg_u64("hold", 1000));
}

fn flood() -> ! {
    let mut i = 0u64;
    loop {
        println!("flood line {i} ................................................................");
        i += 1;
    }
}

fn main() -> i32 {
    let scenario = env::args().next().unwrap_or("");
    let mut c = Check { failures: 0 };
    match scenario {
        "basic" => basic(&mut c),
        "crash" => crash(&mut c),
        "kill" => kill(&mut c),
        "nested" => nested(&mut c),
        "entropy" => entropy(&mut c),
        "errors" => errors(&mut c),
        "touch" => touch(),
        "fill" => fill(),
        "slow" => slow(&mut c),
        "scan" => scan(&mut c),
        "avoid" => avoid(&mut c),
        "bomb" => bomb(),
        "chain" => chain(),
        "many" => many(),
        "orphans" => orphans(),
        "flood" => flood(),
        "killtree" => killtree(),
        "reuse" => reuse(&mut c),
        "forkstorm" => storm::forkstorm(&mut c),
        "hintnest" => storm::hintnest(&mut c),
        _ => {
            println!("forktest: unknown scenario {scenario:?}; see the source for the list");
            return 2;
        }
    }
    if c.failures == 0 {
        println!("forktest {scenario}: ok");
        0
    } else {
        println!("forktest {scenario}: {} failures", c.failures);
        1
    }
}

/// Allocates `len` bytes, fills every byte, reads them back: (ns, sum).
fn fill_and_sum(len: usize, seed: u8) -> (u64, u64) {
    let start = sf_guest::time::now_ns();
    let mut v: Vec<u8> = Vec::with_capacity(len);
    v.extend((0..len).map(|i| (i as u8) ^ seed));
    let sum = v.iter().map(|&b| b as u64).sum::<u64>();
    (sf_guest::time::now_ns() - start, sum)
}

fn reuse(c: &mut Check) {
    let len = (arg_u64("mib", 64) << 20) as usize;
    let n = arg_u64("n", 1);
    let garbage: Vec<u8> = (0..len).map(|i| (i as u8) | 0x81).collect();
    drop(garbage);
    let (parent_ns, want) = fill_and_sum(len, 0x5a);
    println!("reuse: parent fill {} us", parent_ns / 1000);
    let t = ticket(n);
    let id = fork(&t);
    if id != 0 {
        let (ns, sum) = fill_and_sum(len, 0x5a);
        done_in_clone((sum != want) as i32, &ns.to_le_bytes());
    }
    for r in clone::join(&t).unwrap_or_default() {
        let ns = u64::from_le_bytes(
            r.result
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 8]),
        );
        println!("reuse: clone {} fill {} us", r.id, ns / 1000);
        check!(
            c,
            r.status == CloneStatus::Exited && r.code == 0,
            "clone {} checksum: {:?}",
            r.id,
            r
        );
    }
}

//! Test guest that attacks the boundary between its ring 3 and everything
//! else: wild pointers, lengths and call numbers to every hypercall, the
//! kernel's own pages (IDT, GDT, TSS, page tables, kernel stack, exception
//! stubs) and read-only pages as hypercall buffers, a forged exception
//! report, ticket misuse and a flood of calls; and, next to each attack, the
//! legitimate boundary case that must still work (a buffer ending exactly
//! at the end of RAM, next to the stack guard page, on a read-only page).
//! Without arguments it runs every check and exits 0 only if each got the
//! answer the ABI promises (the VM must keep running throughout).
//!
//! Modes that end the VM on purpose, one per argument:
//! `stub-write` (ring 3 rewrites the #GP exception stub, then raises #GP),
//! `idt-write` (ring 3 writes the IDT), `overflow` (the stack runs 3 MiB
//! past its end into the guard page), `panic-escapes` (a panic message full
//! of terminal escape sequences); and `console-escapes`, which prints such
//! sequences on its console and exits 0.
//!
//! `hints` checks the runtime's free-page bitmap (allocated pages are never
//! hinted, freed ones are, `alloc_zeroed` reads zero), then corrupts the hint
//! structure in each way a hostile guest could (wild header GPA, wild or
//! misaligned bitmap, every page hinted, lengths that wrap) and clones
//! across each: a clone must see its parent's bytes or zeros, nothing else,
//! and the host must keep running. Exits 0 if all held.
//!
//! `io`, `io-cap`, `io-try`, `io-write-input`: inputs and outputs (see
//! `io.rs`); `will-read`: input range notices against the input `db`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::arch::asm;
use sf_guest::hypercall::{raw, result};
use sf_guest::sf_abi::hypercall::{Call, Error};
use sf_guest::sf_abi::layout;
use sf_guest::{clone, env, kernel, println};

mod io;

sf_guest::main!(main);

const FAULT: i64 = -(Error::Fault as i64);
const TOO_BIG: i64 = -(Error::TooBig as i64);
const NOSYS: i64 = -(Error::NoSys as i64);
const NOENT: i64 = -(Error::NoEntry as i64);
const BUSY: i64 = -(Error::Busy as i64);
const DENIED: i64 = -1;

const CONSOLE_WRITE: u32 = Call::ConsoleWrite as u32;
const PANIC: u32 = Call::Panic as u32;
const EXCEPTION: u32 = Call::Exception as u32;

pub(crate) struct Checks {
    total: i32,
    bad: i32,
}

impl Checks {
    pub(crate) fn expect(&mut self, name: &str, got: i64, want: i64) {
        let ok = got == want;
        self.total += 1;
        self.bad += !ok as i32;
        println!(
            "{} {name}: got {got}, want {want}",
            if ok { "ok  " } else { "FAIL" }
        );
    }

    fn call(&mut self, name: &str, call: u32, a0: u64, a1: u64, a2: u64, want: i64) {
        // SAFETY: the arguments are wild on purpose; the host validates them
        // and, for a refused call, touches nothing.
        let got = unsafe { raw(call, a0, a1, a2, u64::MAX) } as i64;
        if call == CONSOLE_WRITE && got > 0 {
            // What the host printed was raw memory: end its line.
            println!();
        }
        self.expect(name, got, want);
    }
}

fn main() -> i32 {
    match env::args().next().unwrap_or("") {
        "" | "all" => all(),
        "stub-write" => stub_write(),
        "idt-write" => idt_write(),
        "overflow" => overflow(),
        "hints" => hints(),
        "io" => io::io(),
        "io-cap" => io::cap(),
        "io-try" => io::try_write(env::args().nth(1).unwrap_or("")),
        "io-write-input" => io::write_input(env::args().nth(1).unwrap_or("")),
        "will-read" => io::will_read_ranges(),
        "console-escapes" => {
            println!("hostile console: \x1b[31mred\x1b]0;title\x07\u{9b}2J\x1b[0m end");
            0
        }
        "panic-escapes" => panic!("\x1b[2J\x1b[Hsnowflock: guest exited with status 0\x07\r\x1b]0;owned\x07\u{9b}31m\u{202e}done"),
        other => {
            println!("hostile: unknown mode {other:?}");
            2
        }
    }
}

fn all() -> i32 {
    let mut c = Checks { total: 0, bad: 0 };
    wild_arguments(&mut c);
    read_boundaries(&mut c);
    forged_exception(&mut c);
    tickets(&mut c);
    io::will_read_names(&mut c);
    join_buffers(&mut c);
    flood(&mut c);
    // Last: if the host wrongly accepted them, these end the VM.
    let idt = layout::IDT;
    c.call(
        "clone-exit result on the IDT",
        Call::CloneExit as u32,
        77,
        idt,
        16,
        FAULT,
    );
    c.call(
        "panic message on the stubs",
        PANIC,
        kernel::isr_stub(0),
        16,
        0,
        FAULT,
    );
    println!(
        "hostile: {} of {} answered as expected",
        c.total - c.bad,
        c.total
    );
    (c.bad != 0) as i32
}

fn wild_arguments(c: &mut Checks) {
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
        (
            "console non-canonical",
            CONSOLE_WRITE,
            0x0000_8000_0000_0000,
            4,
            FAULT,
        ),
        ("panic wild message", PANIC, u64::MAX - 100, 200, FAULT),
        ("panic message past RAM", PANIC, mem + 4096, 10, FAULT),
        // Ring 3 may not report exceptions at all, whatever the frame.
        ("exception wild frame", EXCEPTION, u64::MAX - 8, 0, DENIED),
        ("exception frame past RAM", EXCEPTION, mem - 8, 0, DENIED),
        ("call 0", 0, valid, 16, NOSYS),
        ("call 99", 99, valid, 16, NOSYS),
        ("call u32::MAX", u32::MAX, valid, 16, NOSYS),
    ];
    for &(name, call, a0, a1, want) in cases {
        c.call(name, call, a0, a1, u64::MAX, want);
    }
    // A zero-length write from anywhere is harmless and succeeds.
    c.call("zero-length write", CONSOLE_WRITE, mem + 12345, 0, 0, 0);
}

/// Buffers the host only reads: present + user is enough, so read-only
/// pages work; supervisor and absent pages do not.
fn read_boundaries(c: &mut Checks) {
    let mem = env::mem_size();
    let (_, heap_end, _) = kernel::regions();
    // The last 16 bytes of RAM (the top of the stack) are the guest's own.
    c.call(
        "console ends exactly at RAM end",
        CONSOLE_WRITE,
        mem - 16,
        16,
        0,
        16,
    );
    c.call(
        "console from the read-only arguments page",
        CONSOLE_WRITE,
        layout::CMDLINE,
        1,
        0,
        1,
    );
    c.call(
        "console from the boot block",
        CONSOLE_WRITE,
        layout::BOOT_INFO,
        8,
        0,
        8,
    );
    c.call(
        "console across a 2 MiB boundary",
        CONSOLE_WRITE,
        (4 << 20) - 8,
        16,
        0,
        16,
    );
    c.call(
        "console ends exactly at the heap end",
        CONSOLE_WRITE,
        heap_end - 16,
        16,
        0,
        16,
    );
    c.call(
        "console from the stack guard page",
        CONSOLE_WRITE,
        heap_end,
        16,
        0,
        FAULT,
    );
    c.call(
        "console across into the guard page",
        CONSOLE_WRITE,
        heap_end - 8,
        16,
        0,
        FAULT,
    );
    c.call(
        "console from the IDT",
        CONSOLE_WRITE,
        layout::IDT,
        16,
        0,
        FAULT,
    );
    c.call(
        "console from the exception stubs",
        CONSOLE_WRITE,
        kernel::isr_stub(13),
        16,
        0,
        FAULT,
    );
    c.call(
        "console from the page tables",
        CONSOLE_WRITE,
        layout::PML4,
        8,
        0,
        FAULT,
    );
    c.call(
        "console from the null page",
        CONSOLE_WRITE,
        16,
        16,
        0,
        FAULT,
    );
}

/// Only ring 0 may report an exception: a frame built in ring 3 that claims
/// a double fault in ring 0 must be refused, and the VM goes on.
fn forged_exception(c: &mut Checks) {
    let frame: [u64; 10] = [
        0,
        0,
        0,
        8,
        0,
        0x10_0000,
        0x08,
        2,
        layout::KERNEL_STACK_TOP - 64,
        0x10,
    ];
    c.call(
        "forged double-fault report from ring 3",
        EXCEPTION,
        frame.as_ptr() as u64,
        0,
        0,
        DENIED,
    );
    c.call(
        "exception report with the real kernel stack",
        EXCEPTION,
        layout::KERNEL_STACK_TOP - 80,
        0,
        0,
        DENIED,
    );
}

fn ticket_call(call: Call, ticket: u64, a1: u64, a2: u64) -> i64 {
    // SAFETY: the host writes at most `a2` bytes at `a1` (a buffer we own
    // or one it must refuse).
    unsafe { raw(call as u32, ticket, a1, a2, 0) as i64 }
}

fn tickets(c: &mut Checks) {
    c.expect(
        "kill an unknown ticket",
        ticket_call(Call::Kill, 0xdead, 0, 0),
        NOENT,
    );
    c.expect(
        "clone with a foreign ticket",
        ticket_call(Call::Clone, 0xbeef, 0, 0),
        NOENT,
    );
    c.expect(
        "join an unknown ticket",
        ticket_call(Call::JoinWait, 0xbeef, 0, 0),
        NOENT,
    );
    c.expect(
        "clone with ticket 2^32+1",
        ticket_call(Call::Clone, (1 << 32) + 1, 0, 0),
        NOENT,
    );
    c.expect(
        "result cap of an unknown ticket",
        ticket_call(Call::ResultCap, 0xbeef, 0, 0),
        NOENT,
    );
    let t = match clone::request_ticket(1) {
        Ok(t) => t,
        Err(e) => {
            c.expect("request a ticket", -(e as i64), 0);
            return;
        }
    };
    let id = t.id() as u64;
    let cap = ticket_call(Call::ResultCap, id, 0, 0);
    let (floor, most) = (
        clone::RESULT_FLOOR as i64,
        (clone::RESULT_FLOOR + clone::RESULTS_HELD_MAX) as i64,
    );
    c.expect(
        "result cap of a granted ticket within its bounds",
        (floor..=most).contains(&cap) as i64,
        1,
    );
    c.expect(
        "join-fetch before join",
        ticket_call(Call::JoinFetch, id, 0, 0),
        BUSY,
    );
    c.expect(
        "join a never-cloned ticket",
        ticket_call(Call::JoinWait, id, 0, 0),
        0,
    );
    c.expect(
        "clone with a joined ticket",
        ticket_call(Call::Clone, id, 0, 0),
        BUSY,
    );
    c.expect(
        "fetch the empty record",
        ticket_call(Call::JoinFetch, id, 0, 0),
        0,
    );
    c.expect(
        "join a spent ticket",
        ticket_call(Call::JoinWait, id, 0, 0),
        NOENT,
    );
    c.expect(
        "result cap of a spent ticket",
        ticket_call(Call::ResultCap, id, 0, 0),
        NOENT,
    );
    c.expect(
        "clone with a spent ticket",
        ticket_call(Call::Clone, id, 0, 0),
        NOENT,
    );
}

/// A join record is clone-controlled bytes the host writes into the guest:
/// the buffer must be user-writable in the guest's own page tables.
fn join_buffers(c: &mut Checks) {
    let t = match clone::request_ticket(1) {
        Ok(t) => t,
        Err(e) => {
            c.expect("request a ticket", -(e as i64), 0);
            return;
        }
    };
    match clone::clone(&t) {
        Ok(0) => {}
        Ok(_) => {
            clone::exit(0, &[0x41; 64]);
            sf_guest::exit(3);
        }
        Err(e) => {
            c.expect("clone", -(e as i64), 0);
            return;
        }
    }
    let id = t.id() as u64;
    let len = ticket_call(Call::JoinWait, id, 0, 0);
    if len <= 0 {
        c.expect("join", len, 1);
        return;
    }
    let n = len as u64;
    let (_, heap_end, _) = kernel::regions();
    let refused: &[(&str, u64)] = &[
        ("IDT", layout::IDT),
        ("GDT", layout::GDT),
        ("TSS", layout::TSS),
        ("PML4", layout::PML4),
        ("page directory pointers", layout::PDPT),
        ("low page table", layout::PT_LOW),
        ("page directory", layout::PD_BASE),
        ("kernel stack", layout::KERNEL_STACK_TOP - 256),
        ("exception stubs", kernel::isr_stub(13)),
        ("read-only arguments page", layout::CMDLINE),
        ("stack guard page", heap_end),
        ("last bytes before the guard", heap_end - n / 2),
        ("null page", 8),
        ("past RAM", env::mem_size() - n / 2),
    ];
    for &(what, addr) in refused {
        let name = alloc::format!("join record into the {what}");
        c.expect(&name, ticket_call(Call::JoinFetch, id, addr, n), FAULT);
    }
    // The legitimate boundary: the record ends exactly at the end of RAM
    // (the top of our own stack: saved and put back around the call).
    let top = env::mem_size() - n;
    let mut saved = Vec::with_capacity(n as usize);
    for i in 0..n {
        // SAFETY: user RAM at the top of the stack, read and restored below.
        saved.push(unsafe { core::ptr::read_volatile((top + i) as *const u8) });
    }
    let got = ticket_call(Call::JoinFetch, id, top, n);
    let mut record = Vec::with_capacity(n as usize);
    for (i, b) in saved.iter().enumerate() {
        let p = (top + i as u64) as *mut u8;
        // SAFETY: as above; puts back what was there.
        unsafe {
            record.push(core::ptr::read_volatile(p));
            core::ptr::write_volatile(p, *b);
        }
    }
    c.expect("join record ending exactly at RAM end", got, len);
    let ok = sf_guest::sf_abi::clone::decode(&record)
        .next()
        .is_some_and(|e| e.id == 1 && e.result == [0x41; 64]);
    c.expect("the record arrived intact", ok as i64, 1);
}

/// Many cheap calls in a row: each is answered, none is lost.
fn flood(c: &mut Checks) {
    let b = [b'.'; 1];
    let mut wrong = 0;
    for i in 0..20_000u64 {
        let (call, a0, a1) = match i % 4 {
            0 => (99, 0, 0),
            1 => (CONSOLE_WRITE, b.as_ptr() as u64, 0),
            2 => (CONSOLE_WRITE, layout::IDT, 8),
            _ => (Call::Kill as u32, 0xdead, 0),
        };
        let want = [NOSYS, 0, FAULT, NOENT][(i % 4) as usize];
        // SAFETY: as in `Checks::call`.
        let got = unsafe { raw(call, a0, a1, 0, 0) } as i64;
        wrong += (got != want) as i64;
    }
    c.expect("20000 hypercalls, wrong answers", wrong, 0);
    // SAFETY: the host reads the one byte of `b`.
    let last = result(unsafe { raw(CONSOLE_WRITE, b.as_ptr() as u64, 1, 0, 0) });
    println!();
    c.expect("the console still works", last.map_or(-1, |v| v as i64), 1);
}

/// Ring 3 writes code into the #GP stub that reports the CS it runs with,
/// then raises #GP. The stub page must be out of ring 3's reach: the write
/// itself page-faults. Were it not, the guest would exit with 64 + CS.
fn stub_write() -> i32 {
    let stub = kernel::isr_stub(13);
    println!("hostile stub-write: #GP stub at {stub:#x}");
    sf_guest::console::flush();
    #[rustfmt::skip]
    let code: [u8; 20] = [
        0x8c, 0xc8,                   // mov eax, cs
        0x83, 0xc0, 0x40,             // add eax, 64
        0x89, 0xc7,                   // mov edi, eax
        0xb8, 0x02, 0x00, 0x00, 0x00, // mov eax, Exit
        0x66, 0xba, 0x10, 0x05,       // mov dx, 0x510
        0xef,                         // out dx, eax
        0xf4, 0xeb, 0xfd,             // hlt; jmp .-1
    ];
    for (i, b) in code.iter().enumerate() {
        // SAFETY: the attack: a ring-3 store into the kernel's stub page.
        unsafe { core::ptr::write_volatile((stub + i as u64) as *mut u8, *b) };
    }
    println!("hostile stub-write: the stub was rewritten from ring 3");
    // SAFETY: `hlt` in ring 3 raises #GP, which runs the (rewritten) stub.
    unsafe { asm!("hlt") };
    println!("hostile stub-write: #GP returned");
    1
}

fn idt_write() -> i32 {
    println!("hostile idt-write: IDT at {:#x}", layout::IDT);
    sf_guest::console::flush();
    // SAFETY: the attack: a ring-3 store into the IDT.
    unsafe { core::ptr::write_volatile(layout::IDT as *mut u64, 0) };
    println!("hostile idt-write: the IDT was written from ring 3");
    1
}

/// Fills the top of the heap with a pattern, then recurses until the stack
/// has grown 3 MiB: past its end this must hit the guard page (a page
/// fault), never run on into the heap.
fn overflow() -> i32 {
    let (heap_start, heap_end, stack_top) = kernel::regions();
    println!(
        "hostile overflow: heap {heap_start:#x}..{heap_end:#x}, stack top {stack_top:#x}, guard page at {heap_end:#x}"
    );
    sf_guest::console::flush();
    let fill = (heap_end - heap_start - (256 << 10)) as usize;
    let heap: Vec<u8> = alloc::vec![0xa5; fill];
    let depth = recurse(48);
    let corrupted = heap.iter().filter(|&&b| b != 0xa5).count();
    println!(
        "hostile overflow: recursed {depth} frames of 64 KiB; {corrupted} heap bytes corrupted"
    );
    1
}

#[inline(never)]
fn recurse(n: u32) -> u32 {
    let mut frame = [0u8; 64 << 10];
    frame[0] = n as u8;
    let frame = core::hint::black_box(frame);
    if n == 0 {
        return frame[0] as u32;
    }
    1 + recurse(n - 1) + core::hint::black_box(frame[1]) as u32
}

/// Bytes of the buffer a clone checks in `hints` mode.
const HINTED_BUF: usize = 1 << 20;

fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(7) | 1
}

/// The bitmap as the allocator keeps it, then clones across corrupt hint
/// structures.
fn hints() -> i32 {
    let mut bad = 0;
    let mut check = |name: &str, ok: bool| {
        bad += !ok as i32;
        println!("{} hints {name}", if ok { "ok  " } else { "FAIL" });
    };
    let page = 4096usize;
    // SAFETY: the header is the runtime's, alive for the whole run.
    let good = unsafe { *sf_guest::mem::hints_header() };
    check("header registered", good.is_valid() && good.bitmap_bits > 0);
    let v: Vec<u8> = alloc::vec![0xa5; 64 * page];
    let unhinted = |v: &[u8]| (1..63).all(|i| !sf_guest::mem::page_hinted(v[i * page..].as_ptr()));
    check("allocated pages are not hinted", unhinted(&v));
    let addr = v.as_ptr() as usize;
    drop(v);
    check(
        "whole freed pages are hinted",
        (1..63).all(|i| sf_guest::mem::page_hinted((addr + i * page) as *const u8)),
    );
    let z: Vec<u8> = alloc::vec![0; 64 * page];
    check("alloc_zeroed reads zero", z.iter().all(|&b| b == 0));
    check("reallocated pages are not hinted", unhinted(&z));
    drop(z);

    // will_overwrite: whole pages only, for one clone call.
    let w: Vec<u8> = alloc::vec![0x11; 16 * page + 100];
    let (lo, hi) = (w.as_ptr() as usize, w.as_ptr() as usize + w.len());
    let (first, end) = (lo.div_ceil(page), hi / page);
    let hinted = |p: usize| sf_guest::mem::page_hinted((p * page) as *const u8);
    check(
        "will_overwrite recorded",
        sf_guest::mem::will_overwrite(w.as_ptr(), w.len()),
    );
    check(
        "will_overwrite hints the whole pages only",
        (first..end).all(hinted) && (lo % page == 0 || !hinted(lo / page)) && !hinted(end),
    );
    let filler = [0u8; 1];
    let kept = (0..40)
        .filter(|_| sf_guest::mem::will_overwrite(filler.as_ptr(), 1))
        .count();
    check("will_overwrite keeps at most 32 pending", kept == 31);

    let buf: Vec<u8> = (0..HINTED_BUF).map(pattern).collect();
    let ones: Vec<u64> = alloc::vec![u64::MAX; (good.bitmap_bits as usize).div_ceil(64)];
    let hdr = sf_guest::mem::hints_header();
    let cases: [(&str, u64, u64, u64); 8] = [
        ("intact", 0, good.bitmap_gpa, good.bitmap_bits),
        ("header at a wild GPA", u64::MAX - 7, 0, 0),
        ("header outside RAM", 1 << 40, 0, 0),
        ("misaligned header", hdr as u64 + 1, 0, 0),
        ("bitmap outside RAM", 0, 1 << 40, u64::MAX),
        (
            "bitmap wrapping the address space",
            0,
            u64::MAX - 7,
            u64::MAX,
        ),
        (
            "misaligned bitmap",
            0,
            good.bitmap_gpa + 4,
            good.bitmap_bits,
        ),
        ("every page hinted", 0, ones.as_ptr() as u64, u64::MAX),
    ];
    for (name, header_gpa, bitmap_gpa, bits) in cases {
        if header_gpa != 0 {
            // SAFETY: the host only records the address.
            unsafe { raw(Call::RegisterHints as u32, header_gpa, 0, 0, 0) };
        } else {
            // SAFETY: the runtime's header; restored below, and the
            // allocator never reads it.
            unsafe {
                (*hdr).bitmap_gpa = bitmap_gpa;
                (*hdr).bitmap_bits = bits;
            }
        }
        let statuses = clone_and_check(&buf);
        // SAFETY: as above.
        unsafe { *hdr = good };
        let ok = match statuses {
            Some(ref s) => s.iter().all(|&(status, code)| {
                // A clone that lost its own heap or stack to its hints may
                // panic or crash; one that saw foreign bytes says so with
                // code 1.
                (status == clone::CloneStatus::Exited && code == 0)
                    || (name == "every page hinted"
                        && matches!(
                            status,
                            clone::CloneStatus::Crashed | clone::CloneStatus::Panicked
                        ))
            }),
            None => false,
        };
        println!("hints case {name}: {statuses:?}");
        check(name, ok);
        if name == "intact" {
            check(
                "explicit hints end with the clone call",
                !(first..end).any(hinted),
            );
        }
    }
    drop(ones);
    println!("hostile hints: {bad} failed");
    (bad != 0) as i32
}

/// Two clones each check that every page of `buf` holds the parent's bytes
/// or zeros, and that `alloc_zeroed` memory reads zero; returns their
/// (status, code).
fn clone_and_check(buf: &[u8]) -> Option<Vec<(clone::CloneStatus, i32)>> {
    let t = clone::request_ticket(2).ok()?;
    match clone::clone(&t) {
        Ok(0) => {}
        Ok(_) => {
            let ok = buf.chunks(4096).enumerate().all(|(p, c)| {
                c.iter().all(|&b| b == 0)
                    || c.iter()
                        .enumerate()
                        .all(|(i, &b)| b == pattern(p * 4096 + i))
            });
            // Fresh heap the runtime does not zero (it is hinted, so a
            // clone gets zero pages) and freed heap it must zero.
            let z: Vec<u8> = alloc::vec![0; 4 << 20];
            let ok = ok && z.iter().all(|&b| b == 0);
            clone::exit(!ok as i32, &[]);
            sf_guest::exit(3);
        }
        Err(e) => {
            println!("clone: {e:?}");
            return None;
        }
    }
    let r = clone::join(&t).ok()?;
    Some(r.into_iter().map(|c| (c.status, c.code)).collect())
}

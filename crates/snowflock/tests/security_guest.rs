//! A hostile guest against its own kernel and the VMM: ring 3 must not
//! reach ring 0 (stubs, tables, kernel stack), hypercall buffers obey the
//! guest's own page permissions, only ring 0 reports exceptions, the stack
//! ends at a guard page, guest text reaches the host's terminal sanitized,
//! and the C API can do what the Rust API does. Both boot paths (the VMM
//! builds the tables, or the guest's own ring 0 does through PVH).

mod common;

use common::*;

fn hostile(boot: &str, mem: &str, mode: &str) -> Run {
    let r = snowflock([
        "run",
        "hostile",
        "--boot",
        boot,
        "--mem",
        mem,
        "--timeout",
        "20s",
        "--",
        mode,
    ]);
    r.assert_no_host_panic();
    r
}

/// The page-fault report of a ring-3 write to `addr`, which must be mapped
/// but protected (present, supervisor-only or read-only).
fn assert_protected_write(r: &Run, addr: u64) {
    r.assert_code(102);
    r.assert_stderr_has("snowflock: guest crashed: page fault (#PF) (vector 14) at rip 0x");
    r.assert_stderr_has(" in ring 3, ");
    r.assert_stderr_has(&format!(": write to {addr:#x}, a protected page"));
}

/// The stub address the guest printed on the line starting with `prefix`.
fn printed_addr(r: &Run, prefix: &str) -> u64 {
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line\n{}", r.describe()));
    let hex = line.rsplit("0x").next().unwrap();
    let hex: String = hex.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    u64::from_str_radix(&hex, 16).unwrap()
}

fn stub_write_faults(boot: &str) {
    let r = hostile(boot, "64M", "stub-write");
    let stub = printed_addr(&r, "hostile stub-write: #GP stub at ");
    assert!(
        !r.stdout.contains("the stub was rewritten"),
        "ring 3 rewrote a ring-0 exception stub\n{}",
        r.describe()
    );
    assert_protected_write(&r, stub);
}

#[test]
fn ring3_cannot_rewrite_an_exception_stub_direct_boot() {
    stub_write_faults("direct");
}

#[test]
fn ring3_cannot_rewrite_an_exception_stub_pvh_boot() {
    stub_write_faults("pvh");
}

#[test]
fn ring3_cannot_write_the_idt() {
    for boot in ["direct", "pvh"] {
        let r = hostile(boot, "64M", "idt-write");
        assert!(!r.stdout.contains("was written"), "{}", r.describe());
        assert_protected_write(&r, 0x3000);
    }
}

fn overflow_hits_the_guard(boot: &str) {
    let r = hostile(boot, "16M", "overflow");
    let guard = printed_addr(&r, "hostile overflow: heap ");
    assert!(
        !r.stdout.contains("heap bytes corrupted"),
        "the stack ran into the heap\n{}",
        r.describe()
    );
    r.assert_code(102);
    r.assert_stderr_has("page fault (#PF) (vector 14)");
    r.assert_stderr_has(" in ring 3, ");
    r.assert_stderr_has(", an unmapped page");
    let i = r.stderr.find(": write to 0x").expect("a write fault");
    let hex: String = r.stderr[i + 13..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    let cr2 = u64::from_str_radix(&hex, 16).unwrap();
    assert!(
        (guard..guard + 4096).contains(&cr2),
        "fault at {cr2:#x}, not in the guard page at {guard:#x}\n{}",
        r.describe()
    );
}

#[test]
fn stack_overflow_hits_the_guard_page_direct_boot() {
    overflow_hits_the_guard("direct");
}

#[test]
fn stack_overflow_hits_the_guard_page_pvh_boot() {
    overflow_hits_the_guard("pvh");
}

/// Kernel pages, read-only pages and the guard page as hypercall buffers
/// get `Fault`; the boundaries next to them work; a forged exception report
/// is refused; ticket misuse and a flood get the documented answers.
fn every_hostile_check_passes(boot: &str) {
    let r = hostile(boot, "64M", "all");
    let failed: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", r.describe());
    for needle in [
        "ok   forged double-fault report from ring 3: got -1",
        "ok   join record into the IDT: got -14",
        "ok   join record into the PML4: got -14",
        "ok   join record into the kernel stack: got -14",
        "ok   join record into the exception stubs: got -14",
        "ok   join record into the read-only arguments page: got -14",
        "ok   join record ending exactly at RAM end",
        "ok   the record arrived intact",
        "ok   console from the read-only arguments page",
        "ok   20000 hypercalls, wrong answers: got 0",
        "ok   clone-exit result on the IDT: got -14",
        "ok   result cap of a granted ticket within its bounds: got 1",
        "ok   result cap of a spent ticket: got -2",
        "ok   will-read name on the IDT: got -14",
        "ok   will-read name too long: got -22",
        "ok   will-read no such input: got -2",
    ] {
        r.assert_stdout_has(needle);
    }
    let checks = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("ok  ") || l.starts_with("FAIL"))
        .count();
    r.assert_stdout_has(&format!(
        "hostile: {checks} of {checks} answered as expected\n"
    ));
    assert_eq!(r.stderr, "", "{}", r.describe());
    r.assert_code(0);
}

/// `InputWillRead` ranges past the input, empty or wrapping get `Invalid`;
/// the whole input is announced page by page and stays as it was.
#[test]
fn will_read_ranges_outside_an_input_are_refused() {
    let dir = tempdir();
    let db = dir.path().join("db");
    std::fs::write(&db, vec![b'a'; 10_000]).unwrap();
    let input = format!("db={}", db.display());
    let r = snowflock([
        "run",
        "--mem",
        "64M",
        "--timeout",
        "20s",
        "--input",
        &input,
        "hostile",
        "--",
        "will-read",
    ]);
    r.assert_no_host_panic();
    let failed: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", r.describe());
    r.assert_stdout_has("ok   one byte past the end: got -22")
        .assert_stdout_has("ok   length wraps: got -22")
        .assert_stdout_has("hostile will-read: 11 of 11 answered as expected")
        .assert_code(0);
}

#[test]
fn hypercall_buffers_obey_the_guests_page_permissions_direct_boot() {
    every_hostile_check_passes("direct");
}

#[test]
fn hypercall_buffers_obey_the_guests_page_permissions_pvh_boot() {
    every_hostile_check_passes("pvh");
}

#[test]
fn escape_sequences_in_a_panic_message_never_reach_stderr_raw() {
    let r = hostile("direct", "64M", "panic-escapes");
    r.assert_code(101);
    r.assert_stderr_has("snowflock: guest panicked: ");
    r.assert_stderr_has("snowflock: guest exited with status 0");
    for bad in ['\x1b', '\x07', '\r', '\u{9b}', '\u{202e}'] {
        assert!(
            !r.stderr.contains(bad),
            "stderr carries {bad:?} from the guest\n{}",
            r.describe()
        );
    }
    // What was removed stays visible, escaped.
    r.assert_stderr_has("\\x1b[2J");
}

#[test]
fn a_c_parent_reads_each_clones_status_and_result() {
    // guest/apps/capi/src/fork_sum.c, compiled against snowflock.h.
    let r = snowflock(["run", "capi", "--", "n=5"]);
    r.assert_no_host_panic()
        .assert_stdout_has("capi: 5 clones, statuses sum to 15 (want 15)")
        .assert_stdout_has("capi: results: ok")
        .assert_stdout_has("capi: exit(-1) and a crash told apart: ok")
        .assert_stdout_has("capi: sf_exit(NULL, 8) -> -14")
        .assert_code(0);
}

/// Runs `snowflock ARGS` with stdout on a pseudo-terminal in raw mode (so
/// the terminal driver adds nothing); returns the exit status and what
/// reached the terminal.
fn run_on_a_terminal(args: &[&str]) -> (Option<i32>, Vec<u8>) {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors; the other arguments may be NULL.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: a termios is plain data; tcgetattr fills it for our own slave.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `slave` is open and `t` is a valid termios.
    unsafe {
        assert_eq!(libc::tcgetattr(slave, &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(slave, libc::TCSANOW, &t), 0);
    }
    // SAFETY: both descriptors were just opened and are owned only here.
    let (mut master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let mut child = std::process::Command::new(snowflock_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(slave)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("snowflock starts");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the child has closed the terminal.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    });
    let status = child.wait().expect("snowflock ends");
    (status.code(), reader.join().unwrap())
}

#[test]
fn the_console_on_a_terminal_is_escaped_and_a_pipe_gets_it_raw() {
    let args = ["run", "hostile", "--mem", "64M", "--", "console-escapes"];
    let (code, tty) = run_on_a_terminal(&args);
    let text = String::from_utf8_lossy(&tty);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("hostile console: \\x1b[31mred\\x1b]0;title\\x07\\x9b2J\\x1b[0m end\n"),
        "{text:?}"
    );
    assert!(!tty.contains(&0x1b) && !tty.contains(&0x07), "{text:?}");
    // Into a pipe the console is the guest's data, byte for byte.
    let r = snowflock(args);
    r.assert_code(0)
        .assert_stdout_has("hostile console: \x1b[31mred\x1b]0;title\x07\u{9b}2J\x1b[0m end\n");
}

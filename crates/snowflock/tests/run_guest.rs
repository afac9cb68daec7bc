//! `snowflock run` booting the shipped guests on real KVM: console output,
//! arguments, RAM size, both boot paths, exit codes, and the crash reports
//! of every way the crash guest can fail.

mod common;

use common::*;

// --- hello -----------------------------------------------------------------

#[test]
fn hello_greets_and_exits_0() {
    let r = snowflock(["run", "hello"]);
    r.assert_code(0).assert_no_host_panic();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.describe());
    assert_eq!(lines[0], "Hello from a SnowFlock guest!");
    assert_eq!(lines[1], "  (no arguments; pass some after `--`)");
    assert!(
        lines[2].starts_with("  256 MiB of RAM, up ") && lines[2].ends_with(" us"),
        "{}",
        r.describe()
    );
    assert_eq!(r.stderr, "", "a clean run prints nothing on stderr");
}

#[test]
fn hello_receives_the_arguments_after_double_dash() {
    let r = snowflock(["run", "hello", "--", "one", "two=2", "--three"]);
    r.assert_code(0);
    let args: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("  arg "))
        .collect();
    assert_eq!(
        args,
        ["  arg 0: one", "  arg 1: two=2", "  arg 2: --three"],
        "{}",
        r.describe()
    );
    assert!(!r.stdout.contains("no arguments"), "{}", r.describe());
}

#[test]
fn hello_sees_the_ram_size_given_with_mem() {
    let r = snowflock(["run", "hello", "--mem", "64M"]);
    r.assert_code(0).assert_stdout_has("  64 MiB of RAM, up ");
    let r = snowflock(["run", "hello", "--mem", "1G"]);
    r.assert_code(0).assert_stdout_has("  1024 MiB of RAM, up ");
}

fn hello_with_boot(mode: &str) {
    let r = snowflock([
        "run",
        "hello",
        "--boot",
        mode,
        "--mem",
        "64M",
        "--timings",
        "--",
        "x",
        "y",
    ]);
    r.assert_code(0).assert_no_host_panic();
    assert!(
        r.stdout.starts_with(
            "Hello from a SnowFlock guest!\n  arg 0: x\n  arg 1: y\n  64 MiB of RAM, up "
        ),
        "{}",
        r.describe()
    );
    // --timings reports which path was taken.
    r.assert_stderr_has(&format!("snowflock: boot {mode} | VM create "));
}

#[test]
fn hello_boots_directly_in_ring_3() {
    hello_with_boot("direct");
}

#[test]
fn hello_boots_through_the_pvh_entry() {
    hello_with_boot("pvh");
}

#[test]
fn auto_boot_picks_direct_for_a_snowflock_guest() {
    let r = snowflock(["run", "hello", "--timings"]);
    r.assert_code(0)
        .assert_stderr_has("snowflock: boot direct | ");
}

#[test]
fn a_guest_elf_file_runs_like_a_shipped_name() {
    let dir = tempdir();
    let elf = write_file(dir.path(), "hello.elf", shipped("hello"));
    let r = snowflock([
        "run".as_ref(),
        elf.as_os_str(),
        "--".as_ref(),
        "from-file".as_ref(),
    ]);
    r.assert_code(0)
        .assert_stdout_has("Hello from a SnowFlock guest!\n  arg 0: from-file\n");
}

// --- pi --------------------------------------------------------------------

#[test]
fn pi_estimates_pi_with_few_samples() {
    let r = snowflock(["run", "pi", "--", "samples=2000000"]);
    r.assert_code(0).assert_no_host_panic();
    r.assert_stdout_has("pi ~= 3.1")
        .assert_stdout_has(" from 2000000 samples (")
        .assert_stdout_has("computed in ");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.describe());
    assert!(
        lines[1].starts_with("computed in ") && lines[1].ends_with(" Msamples/s)"),
        "{}",
        r.describe()
    );
    assert!(
        lines[2].starts_with("pi: inside=") && lines[2].ends_with(" samples=2000000 slices=1"),
        "{}",
        r.describe()
    );
}

#[test]
fn pi_split_in_one_vm_matches_pi_forked_into_clones() {
    let forked = snowflock(["run", "pi", "--", "samples=3000000", "clones=3"]);
    let single = snowflock(["run", "pi", "--", "samples=3000000", "split=3"]);
    forked
        .assert_code(0)
        .assert_no_host_panic()
        .assert_stdout_has("pi: granted=3 of 3 clones");
    single.assert_code(0).assert_no_host_panic();
    let answer = |r: &Run| {
        r.stdout
            .lines()
            .find(|l| l.starts_with("pi: inside="))
            .map(str::to_owned)
    };
    assert!(answer(&forked).is_some(), "{}", forked.describe());
    assert_eq!(
        answer(&forked),
        answer(&single),
        "\n{}\n{}",
        forked.describe(),
        single.describe()
    );
}

#[test]
fn pi_rejects_a_bad_argument_with_its_own_status() {
    let r = snowflock(["run", "pi", "--", "samples=lots"]);
    r.assert_code(2)
        .assert_stdout_has("pi: samples=, seed=, clones= and split= take unsigned integers");
}

// --- crash -----------------------------------------------------------------

/// Runs `crash -- kind`; checks the guest got as far as printing its kind.
fn crash(kind: &str, extra: &[&str]) -> Run {
    let mut args = vec!["run", "crash", "--timeout", "5s"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", kind]);
    let r = snowflock(args);
    r.assert_no_host_panic();
    assert!(
        r.stdout.starts_with(&format!("crash: {kind}\n")),
        "the guest did not start\n{}",
        r.describe()
    );
    assert!(!r.stdout.contains("did not fault"), "{}", r.describe());
    r
}

/// A CPU exception in ring 3: exit 102 and one report naming it, its vector
/// and where it happened; returns the reported rip.
fn exception(kind: &str, extra: &[&str], name: &str, vector: u32) -> (Run, u64) {
    let r = crash(kind, extra);
    r.assert_code(102);
    r.assert_stderr_has(&format!(
        "snowflock: guest crashed: {name} (vector {vector}) at rip 0x"
    ));
    r.assert_stderr_has(" in ring 3, rsp 0x");
    assert_eq!(
        r.stderr.lines().count(),
        1,
        "one line of report\n{}",
        r.describe()
    );
    let rip = r.stderr_rip();
    assert!(
        bytes_at(shipped("crash"), rip, 1).is_some(),
        "rip {rip:#x} is not inside the crash guest\n{}",
        r.describe()
    );
    (r, rip)
}

#[test]
fn crash_divzero_is_a_divide_error() {
    let (r, rip) = exception("divzero", &[], "divide error (#DE)", 0);
    assert_eq!(
        bytes_at(shipped("crash"), rip, 2),
        Some(&[0xf7, 0xf1][..]),
        "rip is not the `div ecx`\n{}",
        r.describe()
    );
    assert!(
        !r.stderr.contains("error code"),
        "#DE has no error code\n{}",
        r.describe()
    );
}

#[test]
fn crash_ud_is_an_invalid_opcode() {
    let (r, rip) = exception("ud", &[], "invalid opcode (#UD)", 6);
    assert_eq!(
        bytes_at(shipped("crash"), rip, 2),
        Some(&[0x0f, 0x0b][..]),
        "rip is not the `ud2`\n{}",
        r.describe()
    );
}

#[test]
fn crash_null_is_a_page_fault_writing_address_0() {
    let (r, _) = exception("null", &[], "page fault (#PF)", 14);
    r.assert_stderr_has(", error code 0x6: write to 0x0, an unmapped page");
}

#[test]
fn crash_outside_is_a_page_fault_past_the_end_of_ram() {
    let (r, _) = exception("outside", &["--mem", "64M"], "page fault (#PF)", 14);
    r.assert_stderr_has(": write to 0x4001000, an unmapped page");
}

#[test]
fn crash_kernel_is_a_protection_fault_on_a_kernel_page() {
    let (r, _) = exception("kernel", &[], "page fault (#PF)", 14);
    r.assert_stderr_has(", error code 0x7: write to 0x3000, a protected page");
}

#[test]
fn crash_gp_is_a_general_protection_fault() {
    let (r, rip) = exception("gp", &[], "general protection fault (#GP)", 13);
    r.assert_stderr_has(", error code 0x0");
    assert_eq!(
        bytes_at(shipped("crash"), rip, 1),
        Some(&[0xf4][..]),
        "rip is not the `hlt`\n{}",
        r.describe()
    );
}

#[test]
fn crash_int3_is_a_breakpoint() {
    let (r, rip) = exception("int3", &[], "breakpoint (#BP)", 3);
    // #BP is a trap: rip is just past the `int3`.
    assert_eq!(
        bytes_at(shipped("crash"), rip - 1, 1),
        Some(&[0xcc][..]),
        "rip is not after the `int3`\n{}",
        r.describe()
    );
}

#[test]
fn crash_panic_reports_the_message_and_exits_101() {
    let r = crash("panic", &[]);
    r.assert_code(101);
    r.assert_stderr_has("snowflock: guest panicked: the crash guest panics on request");
    r.assert_stderr_has("apps/crash/src/main.rs:");
}

#[test]
fn crash_spin_times_out_with_124() {
    let r = snowflock(["run", "crash", "--timeout", "1s", "--", "spin"]);
    r.assert_code(124)
        .assert_no_host_panic()
        .assert_stdout_has("crash: spin\n");
    r.assert_stderr_has("snowflock: guest timed out after 1.0 s at rip 0x");
    let rip = r.stderr_rip();
    assert!(
        bytes_at(shipped("crash"), rip, 1).is_some(),
        "rip {rip:#x} is not inside the crash guest\n{}",
        r.describe()
    );
    assert!(
        r.elapsed.as_secs_f64() >= 0.9 && r.elapsed.as_secs_f64() < 5.0,
        "took {:?}\n{}",
        r.elapsed,
        r.describe()
    );
}

#[test]
fn crash_exit_n_is_the_exit_status() {
    for (n, want) in [("0", 0), ("7", 7), ("255", 255), ("300", 300 & 0xff)] {
        let r = crash(&format!("exit={n}"), &[]);
        r.assert_code(want);
        assert_eq!(
            r.stderr,
            "",
            "a clean exit prints nothing on stderr\n{}",
            r.describe()
        );
    }
}

#[test]
fn crash_unknown_kind_exits_2() {
    let r = snowflock(["run", "crash", "--", "nonsense"]);
    r.assert_code(2)
        .assert_stdout_has("crash: unknown kind \"nonsense\"");
}

// --- hostile ---------------------------------------------------------------

#[test]
fn hostile_guest_gets_every_wild_hypercall_refused() {
    let r = snowflock(["run", "hostile", "--mem", "64M"]);
    r.assert_no_host_panic();
    let checks: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("ok  ") || l.starts_with("FAIL"))
        .collect();
    assert!(checks.len() >= 50, "{}", r.describe());
    let failed: Vec<&&str> = checks.iter().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        failed.is_empty(),
        "hypercalls not answered as the ABI says: {failed:#?}\n{}",
        r.describe()
    );
    r.assert_stdout_has(&format!(
        "hostile: {n} of {n} answered as expected\n",
        n = checks.len()
    ));
    r.assert_code(0);
}

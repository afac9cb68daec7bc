//! End-to-end tests of VM fork on one host: the `forktest` guest runs each
//! scenario on real KVM and checks its own expectations from inside (fork
//! semantics, memory, results, crashes, kill, nesting, entropy, refusals);
//! these tests check its verdict and what the host printed.

mod common;
use common::*;

fn forktest(args: &[&str]) -> Run {
    let mut a = vec!["run", "forktest", "--timeout", "60s"];
    a.extend_from_slice(args);
    snowflock(a)
}

fn scenario(s: &str) -> Run {
    let r = forktest(&["--", s]);
    r.assert_no_host_panic()
        .assert_stdout_has(&format!("forktest {s}: ok"))
        .assert_code(0);
    r
}

#[test]
fn fork_gives_ids_memory_at_the_call_and_private_writes() {
    let r = scenario("basic");
    for id in 1..=4 {
        r.assert_stdout_has(&format!("[clone {id}] clone {id} of 4 running"));
        r.assert_stdout_has(&format!(
            "clone {id} -> status Exited code {id} result [{id}, 1234, 1234, 77, {}, {id}]",
            id * 100
        ));
    }
    assert!(!r.stdout.contains("FAIL"), "{}", r.describe());
}

#[test]
fn a_crashing_clone_is_reported_and_the_others_results_still_arrive() {
    let r = scenario("crash");
    r.assert_stdout_has("clone 1 -> Exited code 0");
    r.assert_stdout_has(
        "clone 2 -> Crashed code 0 detail \"guest crashed: divide error (#DE) (vector 0) at rip 0x",
    );
    r.assert_stdout_has("clone 3 -> Panicked code 101 detail \"clone 3 panics on purpose");
}

#[test]
fn kill_ends_running_clones_and_join_says_so() {
    let r = scenario("kill");
    assert!(
        r.elapsed.as_secs() < 30,
        "kill took too long\n{}",
        r.describe()
    );
}

#[test]
fn clones_can_clone_and_joins_nest() {
    let r = scenario("nested");
    r.assert_stdout_has("clone 1 -> Exited [1, 2, 23]")
        .assert_stdout_has("clone 2 -> Exited [2, 2, 43]");
}

#[test]
fn every_vm_gets_a_fresh_random_stream() {
    scenario("entropy").assert_stdout_has("19 random values from 9 VMs, 19 distinct");
}

#[test]
fn hostile_tickets_and_misuse_get_error_codes() {
    let r = forktest(&["--max-clones", "5", "--", "errors", "max=5"]);
    r.assert_no_host_panic()
        .assert_stdout_has("request_ticket(1e9) -> Ok(5)")
        .assert_stdout_has("forktest errors: ok")
        .assert_code(0);
}

#[test]
fn max_clones_limits_what_a_guest_is_granted() {
    let r = forktest(&["--max-clones", "2", "--", "basic", "n=4"]);
    // Asked for 4, granted 2: the guest checks it got exactly `granted` results.
    r.assert_no_host_panic()
        .assert_stdout_has("clone 2 of 2 running")
        .assert_stdout_has("forktest basic: ok")
        .assert_code(0);
    assert!(!r.stdout.contains("clone 3"), "{}", r.describe());
}

#[test]
fn the_demo_forks_checks_the_answer_and_prints_the_timeline() {
    let r = snowflock(["demo", "--clones", "4", "--samples", "4000000"]);
    r.assert_no_host_panic().assert_code(0);
    for needle in [
        "pi: granted=4 of 4 clones",
        "[clone 4] slice 4/4",
        "-> same answer",
        "clone request: ticket 1 granted 4 clones (descriptor ",
        "parent resumed (+",
        "last clone's first instruction (+",
        "join complete: all clones reported",
        "clone  4: first instruction",
        "memory: parent VMM resident",
    ] {
        r.assert_stdout_has(needle);
    }
}

#[test]
fn bench_clone_writes_json_rows_and_a_plot() {
    let dir = tempdir();
    let json = dir.path().join("clone.json");
    let r = snowflock([
        "bench".as_ref(),
        "clone".as_ref(),
        "--runs".as_ref(),
        "1".as_ref(),
        "--mem-mib".as_ref(),
        "64".as_ref(),
        "--clones".as_ref(),
        "1,3".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    r.assert_no_host_panic()
        .assert_code(0)
        .assert_stdout_has("clone benchmark: medians");
    let text = std::fs::read_to_string(&json).expect("JSON written");
    for key in [
        "\"mem_mib\": 64",
        "\"clones\": 3",
        "\"clone_first_instr_ms_median\"",
        "\"fork_floor_ms_median\"",
        "\"descriptor_bytes\"",
    ] {
        assert!(text.contains(key), "JSON lacks {key}: {text}");
    }
    // The QEMU peer restored the same guest from a state of about its RAM.
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let row = &v["rows"][0];
    assert!(
        row["qemu_restore_ms_median"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{row}"
    );
    assert!(
        row["qemu_state_mib"].as_f64().is_some_and(|x| x > 32.0),
        "the touched guest RAM was saved: {row}"
    );
    let png = std::fs::read(dir.path().join("clone.png")).expect("plot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn the_c_header_api_forks_joins_and_refuses_misuse() {
    // guest/apps/capi/src/fork_sum.c, compiled against snowflock.h.
    let r = snowflock(["run", "capi", "--", "n=5"]);
    r.assert_no_host_panic()
        .assert_code(0)
        .assert_stdout_has("capi: 5 clones, statuses sum to 15 (want 15)");
}

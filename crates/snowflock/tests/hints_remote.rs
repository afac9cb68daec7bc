//! End-to-end tests of the free-page hints on clone hosts: remote clones
//! that read the parent's working set and allocate, fill and check fresh
//! memory get the right answer, and `bench avoid` writes the rows and keys
//! the README documents.

mod common;
use common::hintnest::hinted_zero_pages;
use common::hosts::Hosts;
use common::workloads::AVOID_ALLOC;
use common::*;
use sf_api::Metrics;
use std::process::Command;
use std::time::Duration;

#[test]
fn remote_clones_that_allocate_and_fill_check_their_memory() {
    let h = Hosts::start(3);
    let r = h.run(1, AVOID_ALLOC);
    h.assert_forktest_ok(&r, "avoid");
    for i in [2, 3] {
        let m: Metrics = h.client(i).get("/v1/metrics").unwrap();
        assert_eq!(m.clones.len(), 1, "host {i}: {m:?}");
        let mem = &m.clones[0].memory;
        // 16 MiB of working set is 4096 pages, whatever the hints say.
        assert!(
            mem.pages_fetched + mem.multicast_pages >= 4096,
            "host {i}: {mem:?}"
        );
    }
}

#[test]
fn bench_avoid_writes_the_documented_keys() {
    let dir = tempdir();
    let json = dir.path().join("avoid.json");
    let mut cmd = Command::new(snowflock_bin());
    cmd.args([
        "bench",
        "avoid",
        "--runs",
        "1",
        "--mem-mib",
        "64",
        "--clones",
        "1",
        "--hosts",
        "2",
        "--json",
    ])
    .arg(&json);
    let r = run_cmd(cmd, Duration::from_secs(180));
    r.assert_no_host_panic()
        .assert_code(0)
        .assert_stdout_has("free-page hints benchmark");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).unwrap();
    let rows = v["rows"].as_array().expect("rows");
    let hints: Vec<bool> = rows.iter().filter_map(|r| r["hints"].as_bool()).collect();
    assert_eq!(hints, [true, false], "{v}");
    for row in rows {
        for key in [
            "mem_mib",
            "clones",
            "working_set_mib",
            "alloc_mib",
            "bytes_fetched_per_clone",
            "pages_fetched_per_clone",
            "clone_work_ms_median",
            "parent_work_ms_median",
        ] {
            assert!(row[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {row}");
        }
        assert!(
            row["pages_zero_local_per_clone"].as_f64().is_some(),
            "{row}"
        );
        assert_eq!(row["working_set_mib"], 4, "{row}");
        assert_eq!(row["alloc_mib"], 16, "{row}");
    }
    // Without hints a clone fetches what it touches: at least W + A.
    let off = &rows[1];
    assert!(
        off["bytes_fetched_per_clone"].as_f64().unwrap() >= 20.0 * 1024.0 * 1024.0,
        "{off}"
    );
}

/// A remote clone's own clones honour the guest's hints (the hint floor and
/// bitmap travel in the descriptor) and `--no-hints` reaches them: the
/// freed pages a nested local clone sees are all zero pages with hints and
/// all the garbage without; `alloc_zeroed` memory reads zero either way.
/// Before the hint settings were in the descriptor, the nested clone saw
/// the garbage with hints on too.
#[test]
fn a_remote_clones_own_clones_honour_hints_and_no_hints() {
    let h = Hosts::start(2);
    for no_hints in [false, true] {
        let (zero, total) = hinted_zero_pages(&h, no_hints);
        if no_hints {
            assert_eq!(zero, 0, "--no-hints: the garbage stays: {zero} of {total}");
        } else {
            assert_eq!(zero, total, "hinted pages are dropped: {zero} of {total}");
        }
    }
}

/// The same work (read a working set, allocate, fill and checksum fresh
/// memory) on remote clones gives the same checksums with hints on and off;
/// with hints the clones fetch fewer pages.
#[test]
fn remote_clones_get_the_same_answer_with_hints_on_and_off() {
    let mut fetched = Vec::new();
    for no_hints in [false, true] {
        let h = Hosts::start(2);
        let mut args = vec!["--mem", "256M", "--placement", "remote"];
        if no_hints {
            args.push("--no-hints");
        }
        args.extend_from_slice(&["forktest", "--", "avoid", "n=1", "ws=8", "alloc=64"]);
        let r = h.run(1, &args);
        h.assert_printed(&r, "forktest avoid: ok", &format!("no_hints={no_hints}"));
        let m: Metrics = h.client(2).get("/v1/metrics").unwrap();
        fetched.push(m.clones[0].memory.pages_fetched);
    }
    // 64 MiB of freed garbage is 16384 pages the hinted clone never fetches.
    assert!(
        fetched[0] + 8000 < fetched[1],
        "pages fetched with hints {} and without {}",
        fetched[0],
        fetched[1]
    );
}

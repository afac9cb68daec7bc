//! End-to-end tests of the free-page hints on clone hosts: remote clones
//! that read the parent's working set and allocate, fill and check fresh
//! memory get the right answer, and `bench avoid` writes the rows and keys
//! the README documents.

mod common;
use common::hosts::Hosts;
use common::*;
use sf_api::Metrics;
use std::process::Command;
use std::time::Duration;

#[test]
fn remote_clones_that_allocate_and_fill_check_their_memory() {
    let h = Hosts::start(3);
    let r = h.run(
        1,
        &[
            "--mem",
            "256M",
            "--placement",
            "remote",
            "forktest",
            "--",
            "avoid",
            "n=2",
            "ws=16",
            "alloc=64",
        ],
    );
    assert!(
        r.code == Some(0) && r.stdout.contains("forktest avoid: ok"),
        "{}\n{}",
        r.describe(),
        h.describe()
    );
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

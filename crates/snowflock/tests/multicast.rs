//! End-to-end tests of the clone group's multicast: one receiver per clone
//! host for all the group's clones there, lockstep detection in the memory
//! holder, the unicast fallback for lost pushes, and the end-game for a
//! clone host that keeps losing them. Three namespace
//! hosts; clones of a VM on host 1 go to hosts 2 and 3 and scan the same
//! buffer in step.

mod common;
use common::hosts::Hosts;
use common::*;
use sf_api::{FetchStats, Metrics};

const DROP_PUSHES: &str = "SNOWFLOCK_TEST_DROP_PUSHES";

fn assert_ok(h: &Hosts, r: &Run, scenario: &str) {
    assert!(
        r.code == Some(0) && r.stdout.contains(&format!("forktest {scenario}: ok")),
        "{}\n{}",
        r.describe(),
        h.describe()
    );
}

/// Every clone's counters on host `i`.
fn clone_stats(h: &Hosts, i: usize) -> Vec<FetchStats> {
    let m: Metrics = h.client(i).get("/v1/metrics").unwrap();
    m.clones.into_iter().map(|c| c.memory).collect()
}

/// Four clones (two per clone host) read one word of every page of 16 MiB
/// the parent filled, all at once.
const SCAN: &[&str] = &[
    "--placement",
    "remote",
    "forktest",
    "--",
    "scan",
    "n=4",
    "mib=16",
    "ms=0",
];

/// Whether process `pid` still runs (a zombie has ended).
fn running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .is_some_and(|i| !s[i + 1..].trim_start().starts_with('Z'))
    })
}

#[test]
fn the_clones_of_a_group_on_one_host_share_one_receiver() {
    let h = Hosts::start(3);
    let r = h.run(1, SCAN);
    assert_ok(&h, &r, "scan");
    let mut receivers = Vec::new();
    for i in [2, 3] {
        let stats = clone_stats(&h, i);
        eprintln!("host {i}: {stats:#?}");
        assert_eq!(stats.len(), 2, "{stats:?}");
        let pid = stats[0].multicast_receiver_pid;
        let sent = stats.iter().map(|s| s.multicast_seen).max().unwrap();
        let host = stats
            .iter()
            .map(|s| s.multicast_host_datagrams)
            .max()
            .unwrap();
        for s in &stats {
            assert!(
                pid != 0 && s.multicast_receiver_pid == pid,
                "one receiver per host: {stats:?}"
            );
            assert_eq!(
                s.multicast_datagrams_received, 0,
                "no clone receives itself: {s:?}"
            );
            assert!(
                s.multicast_pages > 0,
                "both clones installed pushed pages: {s:?}"
            );
        }
        // Each of the group's datagrams reached this host's receiver once
        // for both clones: had every clone received for itself, the host
        // would have read twice what the holder sent.
        assert!(
            host > 0 && host <= sent,
            "host {i} read {host} datagrams of the {sent} the holder sent: {stats:?}"
        );
        receivers.push(pid);
    }
    assert_ne!(receivers[0], receivers[1], "one receiver per host");
    // The group ended on both hosts: so did their receivers.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while receivers.iter().any(|&p| running(p)) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !receivers.iter().any(|&p| running(p)),
        "a receiver outlived its group: {receivers:?}"
    );
}

#[test]
fn clones_whose_pushes_are_all_dropped_still_read_the_parents_memory() {
    let h = Hosts::start_with_env(3, &[], |i| {
        if i == 1 {
            Vec::new()
        } else {
            vec![(DROP_PUSHES, "1")]
        }
    });
    let r = h.run(1, SCAN);
    // The guest checks every clone's sum against the parent's.
    assert_ok(&h, &r, "scan");
    let stats: Vec<_> = [2, 3].iter().flat_map(|&i| clone_stats(&h, i)).collect();
    eprintln!("clones whose pushes were dropped: {stats:#?}");
    assert_eq!(stats.len(), 4, "{stats:?}");
    for s in &stats {
        assert_eq!(s.multicast_pages, 0, "every push was dropped: {s:?}");
        assert_ne!(
            s.multicast_receiver_pid, 0,
            "the host's receiver dropped them: {s:?}"
        );
        // 16 MiB is 4096 pages, all with data: each came by unicast.
        assert!(s.pages_fetched >= 4096, "{s:?}");
    }
    assert!(
        stats
            .iter()
            .any(|s| s.pushed_answers > 0 && s.push_timeouts > 0),
        "the holder sent pages once by multicast, and the clones fell back to unicast: {stats:?}"
    );
}

#[test]
fn a_clone_host_that_loses_every_push_is_served_by_unicast_and_the_others_get_pushes() {
    // Host 3 loses every page pushed to it (as a receiver that stalls);
    // host 2 is healthy.
    let h = Hosts::start_with_env(3, &[], |i| {
        if i == 3 {
            vec![(DROP_PUSHES, "1")]
        } else {
            Vec::new()
        }
    });
    let r = h.run(1, SCAN);
    assert_ok(&h, &r, "scan");
    let (healthy, lossy) = (clone_stats(&h, 2), clone_stats(&h, 3));
    eprintln!("healthy host: {healthy:#?}\nlossy host: {lossy:#?}");
    assert_eq!(
        (healthy.len(), lossy.len()),
        (2, 2),
        "{healthy:?} {lossy:?}"
    );
    for s in &lossy {
        assert_eq!(s.multicast_pages, 0, "{s:?}");
        // After a few lost pushes the holder answers this host by unicast
        // only: it is told "pushed" a bounded number of times (8 fallbacks
        // make a lossy receiver), not once per fault.
        assert!(
            s.pushed_answers <= 16 && s.requests > s.pushed_answers * 4,
            "the lossy host is served by unicast: {s:?}"
        );
    }
    let healthy_pushed: u64 = healthy.iter().map(|s| s.multicast_pages).sum();
    let healthy_fetched: u64 = healthy.iter().map(|s| s.pages_fetched).sum();
    let lossy_fetched: u64 = lossy.iter().map(|s| s.pages_fetched).sum();
    assert!(
        healthy_pushed > 0 && healthy_fetched < lossy_fetched,
        "the healthy host still gets pages by multicast and fetches fewer itself: \
         healthy {healthy:?}, lossy {lossy:?}"
    );
}

//! End-to-end tests of the clone group's multicast: lockstep detection in
//! the memory holder (pages clones share go once by multicast, pages only
//! one reads go to it alone), the unicast fallback for lost pushes, and
//! the end-game for a clone host that keeps losing them. Three namespace
//! hosts; clones of a VM on host 1 go to hosts 2 and 3 and scan the same
//! buffer in step, or their own parts of it.

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

/// Pages the clones of hosts 2 and 3 got over TCP and, at most, the
/// distinct pages the holder pushed (every clone sees each datagram once):
/// what the origin sent for them, in pages.
fn origin_pages(stats: &[FetchStats]) -> (u64, u64) {
    let tcp = stats.iter().map(|s| s.pages_fetched).sum();
    let pushed = stats.iter().map(|s| s.multicast_seen).max().unwrap_or(0);
    (tcp, pushed)
}

#[test]
fn clones_reading_their_own_halves_get_them_by_unicast_not_pushed_to_each_other() {
    let h = Hosts::start(3);
    // Two clones, one per clone host, each reading its own 32 MiB half of
    // a 64 MiB buffer (8,192 pages each).
    let r = h.run(
        1,
        &[
            "--placement",
            "remote",
            "forktest",
            "--",
            "scan",
            "n=2",
            "mib=64",
            "ms=0",
            "part=1",
        ],
    );
    assert_ok(&h, &r, "scan");
    let stats: Vec<_> = [2, 3].iter().flat_map(|&i| clone_stats(&h, i)).collect();
    eprintln!("clones reading their own halves: {stats:#?}");
    assert_eq!(stats.len(), 2, "{stats:?}");
    let half = 8192;
    for s in &stats {
        // Pushing every page served (as before) gave each clone the other
        // one's half too: 8,192 pages it never reads. Now only the pages
        // both need (program, stack) and a few chunks of its sibling's
        // half, entered while it was followed, reach it.
        assert!(
            s.multicast_pages < half / 4,
            "a clone got its sibling's pages pushed: {s:?}"
        );
        assert!(
            s.pages_fetched + s.multicast_pages >= half,
            "and its own half over TCP: {s:?}"
        );
    }
    let (tcp, pushed) = origin_pages(&stats);
    assert!(
        (tcp + pushed) * 4 <= 2 * half * 5,
        "the origin sent about one copy of the two halves ({} pages): {tcp} over TCP, \
         {pushed} pushed",
        2 * half
    );
}

#[test]
fn clones_reading_the_same_pages_cost_the_origin_at_most_half_again_one_clones_pages() {
    // One clone alone, on a cluster of its own: the reference.
    let alone: u64 = {
        let h = Hosts::start(2);
        let one = h.run(
            1,
            &[
                "--placement",
                "remote",
                "forktest",
                "--",
                "scan",
                "n=1",
                "mib=16",
                "ms=0",
            ],
        );
        assert_ok(&h, &one, "scan");
        clone_stats(&h, 2).iter().map(|s| s.pages_fetched).sum()
    };
    let h = Hosts::start(3);
    let r = h.run(1, SCAN);
    assert_ok(&h, &r, "scan");
    let stats: Vec<_> = [2, 3].iter().flat_map(|&i| clone_stats(&h, i)).collect();
    eprintln!("one clone alone fetched {alone} pages; four clones: {stats:#?}");
    assert_eq!(stats.len(), 4, "{stats:?}");
    let (tcp, pushed) = origin_pages(&stats);
    assert!(alone >= 4096, "{alone}");
    assert!(
        pushed * 2 > alone,
        "the four clones got most pages by multicast: {tcp} over TCP, {pushed} pushed"
    );
    assert!(
        (tcp + pushed) * 2 <= alone * 3,
        "four clones cost the origin {tcp} pages over TCP + {pushed} pushed, \
         over 1.5x one clone's {alone}"
    );
}

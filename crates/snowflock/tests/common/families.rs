//! Two families of one remote clone each, cloned one after the other from
//! the same parent, on host 2 of three namespace hosts: the second
//! family's memory holder can push what the first family's clone asked
//! for (the recorded working set) ahead of its own clone's faults.

use super::hosts::Hosts;
use sf_api::FetchStats;

/// The scan's size, 16 MiB: 4096 pages, each with data.
pub const PAGES: u64 = 4096;

/// Runs the `forktest scan` of two families on `h` (`extra`: more options
/// of `snowflock run`; `mutate`: the parent changes every page between
/// the families) and returns the memory counters of both clones.
pub fn scan_two_families(h: &Hosts, extra: &[&'static str], mutate: bool) -> Vec<FetchStats> {
    let mut args = vec!["--placement", "remote"];
    args.extend_from_slice(extra);
    args.extend([
        "forktest",
        "--",
        "scan",
        "n=1",
        "mib=16",
        // A clone that computes between touches (300 ms for the pass):
        // the holder's push gets ahead of it.
        "ms=300",
        "families=2",
        // With mutate=1, a page of the wrong family, or at the wrong place,
        // makes the guest's sum wrong.
        if mutate { "mutate=1" } else { "mutate=0" },
    ]);
    let r = h.run(1, &args);
    h.assert_printed(
        &r,
        "forktest scan: ok",
        "every clone of both families read the parent's memory as it was at its fork:",
    );
    // The memory holders' own account: recording, pushing, and how well
    // the parent's touched pages would have predicted the clones' asks.
    for line in h.describe().lines().filter(|l| l.contains("working")) {
        eprintln!("{line}");
    }
    h.clone_stats(2)
}

/// The clone that got pages ahead of its faults, and the other one.
pub fn by_pushes(mut stats: Vec<FetchStats>) -> (FetchStats, FetchStats) {
    assert_eq!(stats.len(), 2, "one clone per family on host 2: {stats:?}");
    stats.sort_by_key(|s| s.multicast_pages);
    let pushed = stats.pop().unwrap();
    (pushed, stats.pop().unwrap())
}

//! Guest workloads that several end-to-end test files run on remote
//! clones, as `snowflock run` arguments.

use super::hosts::Hosts;
use sf_api::FetchStats;

/// Four remote clones (two per clone host of three) read one word of each
/// page of the same 16 MiB, at once.
pub const SCAN: &[&str] = &[
    "--placement",
    "remote",
    "forktest",
    "--",
    "scan",
    "n=4",
    "mib=16",
    "ms=0",
];

/// Two remote clones of a 256 MiB VM read a 16 MiB working set, then
/// allocate, fill and check 64 MiB (pages the guest hinted free).
pub const AVOID_ALLOC: &[&str] = &[
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
];

/// Runs [`SCAN`] from host 1 of `h`'s three, checks that every clone read
/// its parent's memory (the guest compares each clone's sum with the
/// parent's), and returns the four clones' memory counters.
pub fn scan_four_clones(h: &Hosts) -> Vec<FetchStats> {
    let r = h.run(1, SCAN);
    h.assert_forktest_ok(&r, "scan");
    let stats: Vec<_> = [2, 3].iter().flat_map(|&i| h.clone_stats(i)).collect();
    assert_eq!(stats.len(), 4, "{stats:?}");
    stats
}

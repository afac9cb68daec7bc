//! Fork safety of remote clones: a clone on another host that clones again
//! forks while its helper threads (fault handler with multicast pushes,
//! heartbeat, origin link) are busy. The helpers park before each fork;
//! these runs fork many times under page traffic from every side and must
//! neither hang nor corrupt memory.

mod common;
use common::hosts::Hosts;
use std::time::{Duration, Instant};

/// Three clones on two other hosts each fork a local clone in six rounds
/// while they and their siblings fault pages in from the origin (and push
/// them to each other), print, and heartbeat; repeated four times. A hang
/// shows as the family timeout (exit 124).
#[test]
fn nested_remote_clones_fork_under_page_traffic_without_hanging() {
    let h = Hosts::start(3);
    for run in 0..4 {
        let started = Instant::now();
        let r = h.run(
            1,
            &[
                "--timeout",
                "60s",
                "--mem",
                "256M",
                "--placement",
                "remote",
                "forktest",
                "--",
                "forkstorm",
                "n=3",
                "mib=48",
                "rounds=6",
            ],
        );
        h.assert_printed(
            &r,
            "forktest forkstorm: ok",
            &format!("run {run} after {:?}", started.elapsed()),
        );
        r.assert_no_host_panic();
        // 3 clones x 6 rounds, each one line.
        assert_eq!(
            r.stdout.matches("read its slice: true").count(),
            18,
            "{}",
            r.stdout
        );
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}

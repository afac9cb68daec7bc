//! Family networks across hosts with VMs: clones placed on other namespace
//! hosts join their family's segment there (the clone request carries the
//! family, its VNI and the clones' member numbers), get a TAP from the
//! family's broker on that host, and leave no device behind on any host.
//! Needs root and /dev/kvm.

mod common;

use common::hosts::Hosts;
use std::process::Command;
use std::time::{Duration, Instant};

fn family_devices(h: &Hosts, host: usize) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", &h.cluster.netns(host), "-br", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("sfb") || n.starts_with("sfx") || n.starts_with("sft"))
        .map(str::to_string)
        .collect()
}

#[test]
fn remote_clones_join_the_family_network_and_leave_nothing() {
    let h = Hosts::start(3);
    for mode in ["basic", "nested"] {
        let r = h.run(
            1,
            &["--net", "--placement", "remote", "forktest", "--", mode],
        );
        assert_eq!(r.code, Some(0), "{}\n{}", r.describe(), h.describe());
        r.assert_stdout_has(&format!("forktest {mode}: ok"));
    }
    let start = Instant::now();
    for host in 1..=3 {
        while !family_devices(&h, host).is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "host {host} keeps {:?}\n{}",
                family_devices(&h, host),
                h.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let log = h.daemon_log(2) + &h.daemon_log(3);
    assert!(!log.contains("cannot join the family"), "{log}");
}

/// The family network end to end: 8 clones spread over 3 namespace hosts,
/// every clone opens a TCP connection to every other clone and exchanges a
/// checksummed message, and the parent checks all 56 reports (the `netpi`
/// guest); then no device is left on any host.
#[test]
fn eight_clones_on_three_hosts_all_talk_to_each_other() {
    let h = Hosts::start(3);
    let r = h.run(
        1,
        &[
            "--net",
            "--timeout",
            "120s",
            "netpi",
            "--",
            "allpairs",
            "clones=8",
        ],
    );
    assert_eq!(r.code, Some(0), "{}\n{}", r.describe(), h.describe());
    r.assert_stdout_has("allpairs: ok pairs=56 clones=8");
    let start = Instant::now();
    for host in 1..=3 {
        while !family_devices(&h, host).is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "host {host} keeps {:?}",
                family_devices(&h, host)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

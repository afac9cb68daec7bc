//! Family networks across hosts with VMs: clones placed on other namespace
//! hosts join their family's segment there (the clone request carries the
//! family, its VNI and the clones' member numbers), get a TAP from the
//! family's broker on that host, and leave no device behind on any host,
//! also when a host dies. Needs root and /dev/kvm.

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

/// Waits until host `host` has no family device, at most `bound`.
fn wait_until_bare(h: &Hosts, host: usize, bound: Duration, why: &str) {
    let start = Instant::now();
    while !family_devices(h, host).is_empty() {
        assert!(
            start.elapsed() < bound,
            "{why}: host {host} keeps {:?} after {bound:?}\n{}",
            family_devices(h, host),
            h.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every host in `hosts` holds a clone's TAP of the family.
fn wait_for_clone_taps(h: &Hosts, hosts: &[usize]) {
    let start = Instant::now();
    let has_tap = |host| family_devices(h, host).iter().any(|d| d.starts_with("sft"));
    while !hosts.iter().all(|&host| has_tap(host)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no clone started on every host of {hosts:?}\n{}",
            h.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The slow clones of these tests (4, each busy for `ms`) placed on the
/// other hosts, in the background.
fn start_slow_family(h: &Hosts, ms: u32) -> std::process::Child {
    h.start_run(
        1,
        &[
            "--net",
            "--placement",
            "remote",
            "--timeout",
            "120s",
            "forktest",
            "--",
            "slow",
            "n=4",
            &format!("ms={ms}"),
        ],
    )
}

/// A clone host dies while its clones run (its daemon and every process
/// on it SIGKILLed): the origin's join ends, and the family's devices go on
/// the origin and on the surviving clone host. The dead host's namespace
/// keeps the bridge and VXLAN device its broker made (a crashed machine
/// would lose them with its power; a namespace does not); its daemon's
/// start-up sweep removes them when the host comes back.
#[test]
fn a_dead_clone_host_leaves_no_device_behind() {
    let mut h = Hosts::start(3);
    let run = start_slow_family(&h, 8000);
    wait_for_clone_taps(&h, &[2, 3]);
    h.kill_host(2);
    let left = family_devices(&h, 2);
    assert!(
        left.iter().any(|d| d.starts_with("sfb")),
        "the dead host's bridge should outlive its broker: {left:?}"
    );
    let out = run.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(124), "the origin's run timed out");
    // The clones on host 3 finish their 8 s; the family ends with them.
    for host in [1, 3] {
        wait_until_bare(&h, host, Duration::from_secs(15), "after the family ended");
    }
    h.restart_daemon(2);
    wait_until_bare(&h, 2, Duration::from_secs(10), "after the daemon restarted");
    assert!(
        h.daemon_log(2)
            .contains("removed dead families' network devices"),
        "{}",
        h.daemon_log(2)
    );
}

/// The origin host dies while clones run on the two others: their
/// heartbeat (3 s) notices, the clones end long before their 60 s of work
/// would, and their bridges, VXLAN devices and TAPs are gone within the
/// bound. The origin's daemon sweeps its own leftovers when it comes back.
#[test]
fn a_dead_origin_ends_its_remote_clones_and_their_devices() {
    let mut h = Hosts::start(3);
    let mut run = start_slow_family(&h, 60_000);
    wait_for_clone_taps(&h, &[2, 3]);
    let killed = Instant::now();
    h.kill_host(1);
    let _ = run.kill();
    let _ = run.wait();
    for host in [2, 3] {
        wait_until_bare(&h, host, Duration::from_secs(20), "after the origin died");
    }
    let took = killed.elapsed();
    for host in [2, 3] {
        let vms: Vec<sf_api::VmInfo> = h.client(host).get("/v1/vms").unwrap();
        assert!(
            vms.iter().all(|v| v.state == "exited"),
            "host {host} still runs {vms:?}"
        );
    }
    h.restart_daemon(1);
    wait_until_bare(
        &h,
        1,
        Duration::from_secs(10),
        "after the origin's daemon restarted",
    );
    eprintln!(
        "clone hosts bare {:.1} s after the origin died",
        took.as_secs_f64()
    );
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

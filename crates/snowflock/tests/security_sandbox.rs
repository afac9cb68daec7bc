//! End-to-end tests of the VMM sandbox: while guests run, every VMM process
//! role (runner, local clone, memory holder, clone host) is under its
//! seccomp filter (`Seccomp: 2` in /proc/PID/status) and no longer root
//! where the role allows it; a forbidden system call kills the VMM with a
//! line naming it, which `snowflock run` prints and the daemon logs; local
//! and remote clones still work sandboxed.

mod common;
use common::hosts::Hosts;
use common::*;
use sf_api::VmInfo;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fields of /proc/PID/status the sandbox sets.
#[derive(Debug)]
struct Status {
    uid: String,
    seccomp: String,
    filters: u32,
    no_new_privs: String,
    cap_eff: String,
}

fn status(pid: u32) -> Option<Status> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    Some(Status {
        uid: field("Uid:"),
        seccomp: field("Seccomp:"),
        filters: field("Seccomp_filters:").parse().unwrap_or(0),
        no_new_privs: field("NoNewPrivs:"),
        cap_eff: field("CapEff:"),
    })
}

/// Waits until `pid` shows a filter (set-up takes a few ms), then returns
/// its status.
fn sandboxed_status(pid: u32) -> Status {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(pid).unwrap_or_else(|| panic!("process {pid} is gone"));
        if s.seccomp == "2" || Instant::now() > until {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

const NOBODY: &str = "65534\t65534\t65534\t65534";

fn assert_unprivileged(who: &str, s: &Status) {
    assert_eq!(s.seccomp, "2", "{who} runs without a seccomp filter: {s:?}");
    assert_eq!(s.uid, NOBODY, "{who} still runs as root: {s:?}");
    assert_eq!(
        s.cap_eff, "0000000000000000",
        "{who} has capabilities: {s:?}"
    );
    assert_eq!(s.no_new_privs, "1", "{who}: {s:?}");
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(snowflock_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start snowflock")
}

fn finish(child: Child) -> (Option<i32>, String, String) {
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_running_vm_is_under_its_filter_and_no_longer_root() {
    let mut vm = spawn(&["run", "crash", "--timeout", "20s", "--", "spin"]);
    let s = sandboxed_status(vm.id());
    let _ = vm.kill();
    let _ = vm.wait();
    assert_unprivileged("the runner", &s);
    assert_eq!(s.filters, 1, "{s:?}");
}

#[test]
fn local_clones_run_sandboxed_and_still_work() {
    let vm = spawn(&[
        "run",
        "forktest",
        "--timeout",
        "60s",
        "--",
        "slow",
        "n=3",
        "ms=3000",
    ]);
    let runner = vm.id();
    // The clones are the runner's children (the first forks the others as
    // its siblings) while they busy-wait.
    let until = Instant::now() + Duration::from_secs(20);
    let clones = loop {
        let c = children(runner);
        if c.len() >= 3 || Instant::now() > until {
            break c;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let statuses: Vec<(u32, Option<Status>)> = clones.iter().map(|&p| (p, status(p))).collect();
    let (code, stdout, stderr) = finish(vm);
    assert_eq!(
        clones.len(),
        3,
        "clones seen: {clones:?}\n{stdout}\n{stderr}"
    );
    for (pid, s) in statuses {
        let s = s.unwrap_or_else(|| panic!("clone {pid} ended before it was inspected"));
        assert_unprivileged(&format!("local clone {pid}"), &s);
    }
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("forktest slow: ok"), "{stdout}\n{stderr}");
}

#[test]
fn a_forbidden_call_kills_the_vmm_and_snowflock_run_says_which() {
    let r = snowflock(["run", "hello", "--sandbox-selftest"]);
    assert_eq!(
        r.code,
        None,
        "the VMM survived an execve:\n{}",
        r.describe()
    );
    r.assert_stderr_has(
        "snowflock: seccomp: syscall 59 (execve) is not allowed for the runner role",
    );
    // The guest ran to its end: the check comes after set-up.
    let mut c = Command::new(snowflock_bin());
    c.args(["run", "hello", "--sandbox-selftest"]);
    let status = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGSYS),
        "the VMM did not die of SIGSYS: {status:?}"
    );
}

#[test]
fn no_sandbox_is_an_explicit_opt_out() {
    let mut vm = spawn(&[
        "run",
        "crash",
        "--no-sandbox",
        "--timeout",
        "20s",
        "--",
        "spin",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let s = status(vm.id()).expect("running");
    let _ = vm.kill();
    let _ = vm.wait();
    assert_eq!(s.seccomp, "0", "{s:?}");
    assert!(s.uid.starts_with("0\t"), "{s:?}");
}

/// The VMs a daemon runs right now.
fn running(h: &Hosts, i: usize) -> Vec<VmInfo> {
    h.client(i)
        .get::<Vec<VmInfo>>("/v1/vms")
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v.state == "running")
        .collect()
}

#[test]
fn remote_clone_hosts_and_the_memory_holder_run_sandboxed() {
    let h = Hosts::start(2);
    let vm = Command::new(snowflock_bin())
        .arg("run")
        .arg("--daemon")
        .arg(h.socket(1))
        .args([
            "--placement",
            "remote",
            "forktest",
            "--",
            "slow",
            "n=2",
            "ms=3000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Host 2 runs both clones, each in a clone-host VMM.
    let until = Instant::now() + Duration::from_secs(20);
    let clones = loop {
        let c = running(&h, 2);
        if c.len() == 2 || Instant::now() > until {
            break c;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let clone_status: Vec<_> = clones.iter().map(|v| sandboxed_status(v.pid)).collect();
    let runner = running(&h, 1).first().map(|v| v.pid);
    let (runner_status, holder_status) = match runner {
        Some(pid) => (status(pid), children(pid).first().and_then(|&c| status(c))),
        None => (None, None),
    };
    let (code, stdout, stderr) = finish(vm);
    let context = format!(
        "{stdout}\n{stderr}\n--- h1 ---\n{}\n--- h2 ---\n{}",
        h.daemon_log(1),
        h.daemon_log(2)
    );
    assert_eq!(clones.len(), 2, "{context}");
    for (v, s) in clones.iter().zip(&clone_status) {
        assert_unprivileged(&format!("clone host {}", v.pid), s);
    }
    // Under a daemon the runner keeps its user ID (placement asks the
    // daemon over its root-owned socket) but no capability.
    let r = runner_status.expect("the runner was inspected");
    assert_eq!(r.seccomp, "2", "{r:?}");
    assert_eq!(r.cap_eff, "0000000000000000", "{r:?}");
    // The holder stacks its own filter on the runner's.
    let m = holder_status.expect("the memory holder was inspected");
    assert_eq!((m.seccomp.as_str(), m.filters), ("2", 2), "{m:?}");
    assert_eq!(m.cap_eff, "0000000000000000", "{m:?}");
    assert_eq!(code, Some(0), "{context}");
    assert!(stdout.contains("forktest slow: ok"), "{context}");
}

#[test]
fn the_daemon_logs_a_vmm_the_sandbox_killed() {
    let h = Hosts::start(1);
    let vm: VmInfo = h
        .client(1)
        .post(
            "/v1/vms",
            &sf_api::CreateVm {
                guest: "crash".into(),
                args: vec!["spin".into()],
                mem: None,
                timeout_ms: Some(20_000),
                max_clones: None,
                placement: sf_api::Placement::Spread,
                prefetch_window: None,
                no_hints: false,
                net: None,
            },
        )
        .expect("VM created");
    let s = sandboxed_status(vm.pid);
    assert_eq!(s.seccomp, "2", "{s:?}");
    // A SIGSYS is how a seccomp kill ends a VMM.
    // SAFETY: kill(2) of the VMM this test started.
    unsafe { libc::kill(vm.pid as i32, libc::SIGSYS) };
    let until = Instant::now() + Duration::from_secs(10);
    while !h.daemon_log(1).contains("killed by its seccomp sandbox") {
        assert!(Instant::now() < until, "no log line:\n{}", h.daemon_log(1));
        std::thread::sleep(Duration::from_millis(20));
    }
}

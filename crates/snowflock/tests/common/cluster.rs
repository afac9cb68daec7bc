//! A throw-away multi-host cluster for cross-host tests: `hosts` network
//! namespaces joined by a bridge, made and removed by `scripts/cluster.sh`
//! (the same script users run by hand). Needs root.
//!
//! Each `Cluster` gets its own name (`sft<pid>-<n>`, `n` from a process-wide
//! counter) and its own subnet 10.213.S.0/24, so tests can run in parallel,
//! in one process and across processes: the script creates a cluster under a
//! lock and fails with status 3 when the name or the subnet is taken, and we
//! then try the next name and subnet.

use std::ffi::OsStr;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// Exit status of `cluster.sh up` when the name or the subnet is in use.
const TAKEN: i32 = 3;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A cluster of hosts (network namespaces); removed when dropped.
pub struct Cluster {
    name: String,
    subnet: u8,
    hosts: usize,
}

impl Cluster {
    /// Creates `hosts` namespaces joined by a bridge, with a name and subnet
    /// no other live cluster uses. Panics with the script's stderr on failure.
    pub fn new(hosts: usize) -> Cluster {
        Self::create(hosts, None)
    }

    /// Like [`Cluster::new`], with every host's eth0 shaped by a token bucket
    /// of `rate` (a tc rate such as "1gbit" or "10mbit").
    pub fn with_rate(hosts: usize, rate: &str) -> Cluster {
        Self::create(hosts, Some(rate))
    }

    fn create(hosts: usize, rate: Option<&str>) -> Cluster {
        assert!(hosts >= 1, "a cluster needs at least one host");
        static SWEEP: Once = Once::new();
        SWEEP.call_once(remove_stale);
        let pid = std::process::id();
        // Processes start at different subnets; each attempt moves to the next.
        let base = pid.wrapping_mul(2_654_435_761) >> 24;
        let mut last_err = String::new();
        for _ in 0..256 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("sft{pid}-{n}");
            let subnet = (base.wrapping_add(n) % 256) as u8;
            let mut cmd = script();
            cmd.args(["up", &hosts.to_string(), "--name", &name])
                .args(["--subnet", &subnet.to_string()]);
            if let Some(rate) = rate {
                cmd.args(["--rate", rate]);
            }
            let out = output(cmd);
            match out.status.code() {
                Some(0) => {
                    return Cluster {
                        name,
                        subnet,
                        hosts,
                    }
                }
                // Taken by another cluster: the script created nothing.
                Some(TAKEN) => last_err = String::from_utf8_lossy(&out.stderr).into_owned(),
                // The script removed whatever it had created.
                _ => panic!(
                    "scripts/cluster.sh up {hosts} --name {name} failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&out.stdout)
                ),
            }
        }
        panic!("no free cluster name or subnet; last error:\n{last_err}");
    }

    /// The cluster's name: its namespaces are `NAME-h1..NAME-hK` and `NAME-net`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The third byte of the cluster's addresses, 10.213.S.0/24.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// The number of hosts.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// The address of host `host` (1-based) on the cluster's network.
    pub fn addr(&self, host: usize) -> Ipv4Addr {
        self.check(host);
        Ipv4Addr::new(10, 213, self.subnet, host as u8)
    }

    /// The network namespace of host `host` (1-based).
    pub fn netns(&self, host: usize) -> String {
        self.check(host);
        format!("{}-h{host}", self.name)
    }

    /// A command that runs `program` inside host `host` (1-based), via
    /// `ip netns exec`; add arguments and spawn it as usual.
    pub fn command(&self, host: usize, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"])
            .arg(self.netns(host))
            .arg(program);
        cmd
    }

    /// Moves the calling thread (only it) into host `host`'s network
    /// namespace until the guard drops, so a test can talk to the hosts'
    /// addresses from there (e.g. play an attacker on that host).
    pub fn enter(&self, host: usize) -> NetnsGuard {
        use std::os::fd::AsRawFd;
        let home = std::fs::File::open("/proc/thread-self/ns/net").expect("own netns");
        let ns = std::fs::File::open(std::path::Path::new("/var/run/netns").join(self.netns(host)))
            .expect("host netns");
        // SAFETY: setns on namespace files we opened; it changes only this
        // thread's network namespace.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {}: {}",
            self.netns(host),
            std::io::Error::last_os_error()
        );
        NetnsGuard { home }
    }

    fn check(&self, host: usize) {
        assert!(
            (1..=self.hosts).contains(&host),
            "host {host} is not in cluster {} (hosts 1..={})",
            self.name,
            self.hosts
        );
    }
}

/// Returns the thread to its own network namespace on drop.
pub struct NetnsGuard {
    home: std::fs::File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: back to the namespace this thread came from.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Never panic here: we may be unwinding from a failed test already.
        let mut cmd = script();
        cmd.args(["down", "--name", &self.name]);
        let problem = match cmd.stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => return,
            Ok(out) => format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
            Err(e) => e.to_string(),
        };
        let _ = writeln!(
            std::io::stderr(),
            "warning: removing cluster {} failed: {problem}",
            self.name
        );
    }
}

/// Removes the clusters left behind by test processes that were killed before
/// they could drop them: those named `sft<pid>-<n>` whose process is gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let list = String::from_utf8_lossy(&out.stdout);
    let mut stale: Vec<&str> = list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|ns| ns.strip_suffix("-net"))
        .filter(|name| {
            let Some(pid) = name.strip_prefix("sft").and_then(|r| r.split('-').next()) else {
                return false;
            };
            pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists()
        })
        .collect();
    stale.sort_unstable();
    stale.dedup();
    for name in stale {
        let mut cmd = script();
        cmd.args(["down", "--name", name]);
        let _ = cmd.stdin(Stdio::null()).output();
    }
}

/// `scripts/cluster.sh`, shared with users.
pub fn script_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster.sh")
}

fn script() -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(script_path());
    cmd
}

fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script_path().display()))
}

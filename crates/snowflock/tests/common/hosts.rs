//! K namespace hosts with a `snowflockd` each, peers of one another, whose
//! credentials come from `snowflock cluster init` (one certificate per
//! host, IP SAN = the host's address), as an operator would make them.

use super::cluster::Cluster;
use super::*;
use sf_api::{Client, Endpoint, FetchStats, Metrics, VmDetail, VmInfo};
use sf_tls::{Credentials, TlsPaths, Transport};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PORT: u16 = 7070;

pub fn snowflockd_bin() -> PathBuf {
    let p = Path::new(snowflock_bin()).with_file_name("snowflockd");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace (cargo test --workspace)",
        p.display()
    );
    p
}

/// `snowflock cluster init --dir DIR --host hI=IP ...` for `hosts`.
pub fn cluster_init(dir: &Path, cluster: &Cluster, hosts: impl IntoIterator<Item = usize>) {
    let mut cmd = Command::new(snowflock_bin());
    cmd.args(["cluster", "init", "--dir"]).arg(dir);
    for i in hosts {
        cmd.arg("--host").arg(format!("h{i}={}", cluster.addr(i)));
    }
    let out = cmd.output().expect("run snowflock cluster init");
    assert!(
        out.status.success(),
        "snowflock cluster init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// K hosts with a daemon each, peers of one another.
pub struct Hosts {
    pub cluster: Cluster,
    pub daemons: Vec<Child>,
    pub dir: tempfile::TempDir,
    /// The daemons' extra options, for a restart.
    extra: Vec<String>,
}

/// Host `i`'s daemon of `k` hosts (`cluster.hosts()`), peers of the others.
fn daemon_command(cluster: &Cluster, dir: &Path, i: usize, extra: &[&str]) -> Command {
    let mut cmd = cluster.command(i, snowflockd_bin());
    cmd.arg("--socket").arg(dir.join(format!("h{i}.sock")));
    cmd.arg("--listen")
        .arg(format!("{}:{PORT}", cluster.addr(i)));
    cmd.arg("--state-dir").arg(dir.join(format!("h{i}")));
    cmd.arg("--snowflock").arg(snowflock_bin());
    for j in (1..=cluster.hosts()).filter(|&j| j != i) {
        cmd.arg("--peer").arg(format!("{}:{PORT}", cluster.addr(j)));
    }
    if !extra.contains(&"--insecure-no-tls") {
        let p = sf_tls::generate::host_paths(&dir.join("tls"), &format!("h{i}"));
        cmd.arg("--tls-ca").arg(p.ca);
        cmd.arg("--tls-cert").arg(p.cert);
        cmd.arg("--tls-key").arg(p.key);
    }
    cmd.args(extra);
    cmd
}

impl Hosts {
    /// Every host gets a certificate; daemons run with mutual TLS.
    pub fn start(k: usize) -> Hosts {
        Self::start_with(k, &[])
    }

    /// Like [`Hosts::start`], with `extra` options for every daemon.
    pub fn start_with(k: usize, extra: &[&str]) -> Hosts {
        Self::start_with_env(k, extra, |_| Vec::new())
    }

    /// Like [`Hosts::start_with`], with environment variables for host
    /// `i`'s daemon (and so its VMMs) from `env(i)`.
    pub fn start_with_env(
        k: usize,
        extra: &[&str],
        env: impl Fn(usize) -> Vec<(&'static str, &'static str)>,
    ) -> Hosts {
        let cluster = Cluster::new(k);
        let dir = tempdir();
        cluster_init(&dir.path().join("tls"), &cluster, 1..=k);
        let mut daemons = Vec::new();
        for i in 1..=k {
            let mut cmd = daemon_command(&cluster, dir.path(), i, extra);
            cmd.envs(env(i));
            let log = std::fs::File::create(dir.path().join(format!("h{i}.daemon.log"))).unwrap();
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
            daemons.push(cmd.spawn().expect("start snowflockd"));
        }
        let hosts = Hosts {
            cluster,
            daemons,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 1..=k {
            hosts.wait_until_up(i);
        }
        hosts
    }

    fn wait_until_up(&self, i: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while self.client(i).get::<sf_api::Health>("/v1/health").is_err() {
            assert!(
                Instant::now() < until,
                "daemon {i} did not come up:\n{}",
                self.daemon_log(i)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Host `i` dies: its daemon and every process in its namespace are
    /// SIGKILLed, until none is left. Unlike a crashed machine, the
    /// namespace keeps its links (what the dead brokers made).
    pub fn kill_host(&mut self, i: usize) {
        let _ = self.daemons[i - 1].kill();
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("ip")
                .args(["netns", "pids", &self.cluster.netns(i)])
                .output()
                .expect("run ip netns pids");
            let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
            assert!(Instant::now() < until, "host {i} keeps processes {pids:?}");
            for pid in pids {
                // SAFETY: kill(2) on a process of the test's own host namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.daemons[i - 1].wait();
    }

    /// Starts host `i`'s daemon again (after [`Hosts::kill_host`]), with
    /// the same options (not the start's environment); its log goes on
    /// in the same file.
    pub fn restart_daemon(&mut self, i: usize) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let mut cmd = daemon_command(&self.cluster, self.dir.path(), i, &extra);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join(format!("h{i}.daemon.log")))
            .unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.daemons[i - 1] = cmd.spawn().expect("restart snowflockd");
        self.wait_until_up(i);
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("h{i}.sock"))
    }

    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("h{i}"))
    }

    /// Host `i`'s credentials (from `cluster init`).
    pub fn tls_paths(&self, i: usize) -> TlsPaths {
        sf_tls::generate::host_paths(&self.dir.path().join("tls"), &format!("h{i}"))
    }

    /// Mutual TLS with host `i`'s certificate.
    pub fn transport(&self, i: usize) -> Transport {
        Transport::Tls(Arc::new(Credentials::load(&self.tls_paths(i)).unwrap()))
    }

    /// Host `i`'s admin API (its Unix socket).
    pub fn client(&self, i: usize) -> Client {
        Client::new(Endpoint::Unix(self.socket(i)))
    }

    /// The memory counters of every clone on host `i`.
    pub fn clone_stats(&self, i: usize) -> Vec<FetchStats> {
        let m: Metrics = self.client(i).get("/v1/metrics").unwrap();
        m.clones.into_iter().map(|c| c.memory).collect()
    }

    /// Host `i`'s peer API on TCP, over `t`; use it inside a host
    /// (`cluster.enter`).
    pub fn peer_client(&self, i: usize, t: Transport) -> Client {
        Client::new(Endpoint::Tcp(format!("{}:{PORT}", self.cluster.addr(i))))
            .with_transport(t)
            .with_timeout(Duration::from_secs(5))
    }

    pub fn daemon_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("h{i}.daemon.log")))
            .unwrap_or_default()
    }

    /// `snowflock run --daemon` on host `i`'s daemon.
    pub fn run(&self, i: usize, args: &[&str]) -> Run {
        let mut cmd = Command::new(snowflock_bin());
        cmd.arg("run")
            .arg("--daemon")
            .arg(self.socket(i))
            .args(args);
        run_cmd(cmd, Duration::from_secs(90))
    }

    /// `snowflock run --daemon` on host `i`'s daemon, started in the
    /// background with its output piped (for tests that act mid-run).
    pub fn start_run(&self, i: usize, args: &[&str]) -> std::process::Child {
        let mut cmd = Command::new(snowflock_bin());
        cmd.arg("run")
            .arg("--daemon")
            .arg(self.socket(i))
            .args(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().expect("start snowflock run --daemon")
    }

    /// Asserts that run `r` exited 0 and printed `marker`; on failure says
    /// `context`, the run and everything the daemons know.
    pub fn assert_printed(&self, r: &Run, marker: &str, context: &str) {
        assert!(
            r.code == Some(0) && r.stdout.contains(marker),
            "{context}\n{}\n{}",
            r.describe(),
            self.describe()
        );
    }

    /// [`Hosts::assert_printed`] for a forktest scenario's `ok` line.
    pub fn assert_forktest_ok(&self, r: &Run, scenario: &str) {
        self.assert_printed(r, &format!("forktest {scenario}: ok"), "");
    }

    /// Everything the daemons know, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for i in 1..=self.cluster.hosts() {
            s += &format!("--- daemon {i} ---\n{}\n", self.daemon_log(i));
            if let Ok(vms) = self.client(i).get::<Vec<VmInfo>>("/v1/vms") {
                for v in vms {
                    if let Ok(d) = self.client(i).get::<VmDetail>(&format!("/v1/vms/{}", v.id)) {
                        s += &format!(
                            "  {} {:?} exit {:?}\n  log: {}\n",
                            v.id,
                            v.kind,
                            v.exit_code,
                            d.log.trim()
                        );
                    }
                }
            }
        }
        s
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

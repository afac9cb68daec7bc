//! The benchmarks' test hosts: K network namespace hosts
//! (scripts/cluster.sh), a daemon in each (mutual TLS under a CA made for
//! the run, or plain TCP), and the origin's VMs run in this process inside
//! host 1's namespace.

use anyhow::{bail, Context};
use sf_api::{Client, Endpoint, Placement};
use sf_tls::{Credentials, Transport};
use sf_vmm::clone::remote::RemoteLink;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which of remote memory's mechanisms a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanisms {
    /// Multicast with lockstep detection (the default).
    All,
    /// Multicast without lockstep detection (`run --no-lockstep`).
    NoLockstep,
    /// No multicast (`run --no-multicast`).
    NoMulticast,
    /// Multicast with lockstep detection, no recorded working set pushed
    /// ahead of faults (`run --no-working-set`).
    NoWorkingSet,
}

/// The cluster and its daemons, torn down on drop.
pub(super) struct Testbed {
    script: PathBuf,
    name: String,
    subnet: u8,
    pub(super) hosts: usize,
    daemons: Vec<Child>,
    dir: tempfile::TempDir,
    /// How this process (host 1's VMs) talks to the others.
    pub(super) transport: Transport,
    /// This thread's own network namespace, to return to before teardown
    /// (which ends every process inside the hosts).
    home: Option<std::fs::File>,
}

pub(super) fn find_script() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let candidates = exe
        .ancestors()
        .map(|a| a.join("scripts/cluster.sh"))
        .chain(std::iter::once(PathBuf::from("scripts/cluster.sh")));
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
    }
    bail!("scripts/cluster.sh not found: run the benchmark from a checkout (cargo run --release -- bench remote)")
}

impl Testbed {
    /// How a VM on host 1 (this process) reaches the other hosts' daemons.
    pub(super) fn link_from_host_1(&self, placement: Placement, window: Option<u32>) -> RemoteLink {
        self.link_with(placement, window, Mechanisms::All)
    }

    /// [`Testbed::link_from_host_1`] with some of the memory mechanisms off.
    pub(super) fn link_with(
        &self,
        placement: Placement,
        window: Option<u32>,
        mech: Mechanisms,
    ) -> RemoteLink {
        RemoteLink {
            peers: (2..=self.hosts)
                .map(|j| format!("{}:7070", self.addr(j)))
                .collect(),
            transport: self.transport.clone(),
            advertise: IpAddr::V4(self.addr(1)),
            placement,
            prefetch_window: window,
            no_multicast: mech == Mechanisms::NoMulticast,
            no_lockstep: mech == Mechanisms::NoLockstep,
            no_working_set: mech == Mechanisms::NoWorkingSet,
        }
    }

    pub(super) fn up(hosts: usize, rate: Option<&str>) -> anyhow::Result<Testbed> {
        if hosts < 2 {
            bail!("--hosts must be at least 2 (the origin and one clone host)");
        }
        let script = find_script()?;
        // A name and subnet of our own; the script refuses taken ones (exit
        // status 3), so try the next.
        let mut attempt = 0u32;
        let (name, subnet) = loop {
            let name = format!("sfb{}x{attempt}", std::process::id() % 10000);
            let subnet = ((std::process::id() + attempt) % 200) as u8 + 20;
            let mut up = Command::new(&script);
            up.args([
                "up",
                &hosts.to_string(),
                "--name",
                &name,
                "--subnet",
                &subnet.to_string(),
            ]);
            if let Some(r) = rate {
                up.args(["--rate", r]);
            }
            let out = up.output().context(
                "cannot run scripts/cluster.sh (the benchmark needs root for network namespaces)",
            )?;
            match out.status.code() {
                Some(0) => break (name, subnet),
                Some(3) if attempt < 20 => attempt += 1,
                _ => bail!(
                    "creating the test hosts failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }
        };
        let bed = Testbed {
            script,
            name,
            subnet,
            hosts,
            daemons: Vec::new(),
            dir: tempfile::tempdir()?,
            transport: Transport::Plain,
            home: None,
        };
        let specs: Vec<sf_tls::generate::HostSpec> = (1..=hosts)
            .map(|i| sf_tls::generate::HostSpec {
                name: format!("h{i}"),
                ip: IpAddr::V4(bed.addr(i)),
            })
            .collect();
        sf_tls::generate::init(&bed.tls_dir(), &specs)?;
        Ok(bed)
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// (Re)starts every host's daemon, with mutual TLS or plain TCP.
    pub(super) fn start_daemons(&mut self, tls: bool) -> anyhow::Result<()> {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
        self.daemons.clear();
        let bed = &mut *self;
        let hosts = bed.hosts;
        let daemon = std::env::current_exe()?.with_file_name("snowflockd");
        if !daemon.is_file() {
            bail!(
                "{} is missing; build the workspace (cargo build --release)",
                daemon.display()
            );
        }
        for i in 1..=hosts {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &bed.netns(i)]).arg(&daemon);
            c.arg("--socket")
                .arg(bed.socket(i))
                .arg("--listen")
                .arg(format!("{}:7070", bed.addr(i)));
            c.arg("--state-dir")
                .arg(bed.dir.path().join(format!("h{i}")))
                .arg("--snowflock")
                .arg(std::env::current_exe()?);
            for j in (1..=hosts).filter(|&j| j != i) {
                c.arg("--peer").arg(format!("{}:7070", bed.addr(j)));
            }
            if tls {
                let p = sf_tls::generate::host_paths(&bed.tls_dir(), &format!("h{i}"));
                c.arg("--tls-ca").arg(p.ca).arg("--tls-cert").arg(p.cert);
                c.arg("--tls-key").arg(p.key);
            } else {
                c.arg("--insecure-no-tls");
            }
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            bed.daemons
                .push(c.spawn().context("cannot start snowflockd")?);
        }
        for i in 1..=hosts {
            let until = Instant::now() + Duration::from_secs(10);
            while Client::new(Endpoint::Unix(bed.socket(i)))
                .get::<sf_api::Health>("/v1/health")
                .is_err()
            {
                if Instant::now() > until {
                    bail!("the daemon of host {i} did not come up");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bed.transport = if tls {
            let p = sf_tls::generate::host_paths(&bed.tls_dir(), "h1");
            Transport::Tls(std::sync::Arc::new(Credentials::load(&p)?))
        } else {
            Transport::Plain
        };
        Ok(())
    }

    /// Bytes host 1 (the origin) has sent out of its interface, from the
    /// kernel's counters.
    pub(super) fn origin_tx_bytes(&self) -> anyhow::Result<u64> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns(1)])
            .args(["cat", "/sys/class/net/eth0/statistics/tx_bytes"])
            .output()
            .context("cannot read host 1's interface counters")?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| {
                format!(
                    "host 1's tx_bytes is not a number: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })
    }

    pub(super) fn netns(&self, i: usize) -> String {
        format!("{}-h{i}", self.name)
    }

    pub(super) fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, i as u8)
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("h{i}.sock"))
    }

    /// Moves this thread (the one that runs the VMs) into host 1.
    pub(super) fn enter_host1(&mut self) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        self.home = Some(
            std::fs::File::open("/proc/thread-self/ns/net")
                .context("cannot open this thread's network namespace")?,
        );
        let f = std::fs::File::open(Path::new("/var/run/netns").join(self.netns(1)))
            .context("cannot open host 1's namespace")?;
        // SAFETY: setns on a namespace file we opened; it affects only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "cannot enter host 1's network namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            use std::os::fd::AsRawFd;
            // SAFETY: setns back to the namespace this thread came from.
            unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) };
        }
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = Command::new(&self.script)
            .args(["down", "--name", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

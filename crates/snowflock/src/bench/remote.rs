//! `snowflock bench remote`: clones on other hosts. It makes K network
//! namespace hosts (scripts/cluster.sh) with a daemon each, runs the origin
//! VM in this process inside host 1's namespace, and sends its clones to the
//! other hosts, where they fetch memory on demand. For comparison, the same
//! clones forked locally, and the pages each clone really touches (the same
//! run with prefetching off, where every fetched page was a faulting touch).
//!
//! Every configuration runs twice in one invocation: with mutual TLS under
//! a cluster CA made for the run (daemons, clone requests, page service,
//! reports) and with plain TCP (`--insecure-no-tls`), so the cost of
//! authentication and encryption is measured on the same hosts. Each row
//! says which in `transport`.

use super::stats::median;
use anyhow::{bail, Context};
use serde::Serialize;
use sf_api::{Client, Endpoint, Placement};
use sf_tls::{Credentials, Transport};
use sf_vmm::clone::remote::RemoteLink;
use sf_vmm::{CloneStatus, GuestImage, RunReport, Vm, VmConfig};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct RemoteBenchArgs {
    /// Repetitions of each configuration (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Guest RAM sizes in MiB, comma separated. Each clone reads one word
    /// of every page of a buffer of 1/16 of the RAM, filled by the parent.
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    mem_mib: Vec<u64>,
    /// Clone counts, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clones: Vec<u32>,
    /// Hosts, the origin included (clones go to the other ones).
    #[arg(long, default_value_t = 4)]
    hosts: usize,
    /// Shape every host's link with a token bucket, e.g. 1gbit.
    #[arg(long)]
    rate: Option<String>,
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct Row {
    /// "mtls" (mutual TLS, the default) or "plain" (`--insecure-no-tls`).
    pub transport: String,
    pub mem_mib: u64,
    pub clones: u32,
    pub hosts: usize,
    pub runs: usize,
    /// Request to a remote clone's first vCPU entry (median over clones and runs).
    pub remote_first_instr_ms_median: f64,
    /// Request to the last remote clone's first vCPU entry.
    pub remote_last_first_instr_ms_median: f64,
    pub local_first_instr_ms_median: f64,
    pub local_last_first_instr_ms_median: f64,
    pub fault_latency_p50_us_median: f64,
    pub fault_latency_p99_us_median: f64,
    pub faults_per_clone: f64,
    pub pages_fetched_per_clone: f64,
    /// Pages that reached a clone by the group's multicast before it
    /// touched them (not counted in the fetched pages and bytes).
    pub multicast_pages_per_clone: f64,
    pub bytes_fetched_per_clone: f64,
    pub pages_touched_per_clone: f64,
    /// bytes fetched / bytes of the pages touched.
    pub fetched_vs_touched: f64,
    pub descriptor_bytes: usize,
    /// Request to join complete, remote and local.
    pub remote_join_ms_median: f64,
    pub local_join_ms_median: f64,
}

#[derive(Serialize)]
struct Results {
    hosts: usize,
    rate: Option<String>,
    rows: Vec<Row>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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
        RemoteLink {
            peers: (2..=self.hosts)
                .map(|j| format!("{}:7070", self.addr(j)))
                .collect(),
            transport: self.transport.clone(),
            advertise: IpAddr::V4(self.addr(1)),
            placement,
            prefetch_window: window,
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

    fn netns(&self, i: usize) -> String {
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

fn run_once(
    bed: &Testbed,
    image: &GuestImage,
    mem_mib: u64,
    n: u32,
    placement: Placement,
    window: Option<u32>,
) -> anyhow::Result<RunReport> {
    let cfg = VmConfig {
        mem_size: mem_mib << 20,
        cmdline: format!("scan n={n} mib={} ms=0", (mem_mib / 16).max(1)),
        max_clones: n.max(sf_vmm::default_max_clones()),
        timeout: Some(Duration::from_secs(300)),
        remote: Some(bed.link_from_host_1(placement, window)),
        ..Default::default()
    };
    let mut out = Vec::new();
    let report = Vm::new(&cfg, image)?.run(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    if report.outcome.exit_code() != 0 || !text.contains("forktest scan: ok") {
        bail!(
            "the scan guest failed ({mem_mib} MiB x {n}, {placement:?}): {} / {text}",
            report.outcome
        );
    }
    let t = report.clones.first().context("no clone call")?;
    if t.clones.iter().any(|c| c.status != CloneStatus::Exited) {
        bail!("a clone failed: {:?}", t.clones);
    }
    Ok(report)
}

fn firsts(r: &RunReport) -> Vec<f64> {
    r.clones[0]
        .clones
        .iter()
        .filter_map(|c| c.first_entry.map(ms))
        .collect()
}

pub fn main(a: RemoteBenchArgs) -> anyhow::Result<u8> {
    if a.runs == 0 || a.mem_mib.is_empty() || a.clones.is_empty() || a.clones.contains(&0) {
        bail!("--runs, --mem-mib and --clones need positive values");
    }
    let image = crate::run::shipped("forktest")?;
    eprintln!(
        "bench remote: {} hosts (origin + {} clone hosts){}",
        a.hosts,
        a.hosts - 1,
        a.rate
            .as_ref()
            .map_or(String::new(), |r| format!(", links shaped to {r}"))
    );
    let mut bed = Testbed::up(a.hosts, a.rate.as_deref())?;
    bed.enter_host1()?;
    let mut rows = Vec::new();
    for tls in [true, false] {
        bed.start_daemons(tls)?;
        rows.extend(measure(&bed, &a, &image)?);
    }
    print_table(&rows);
    if let Some(path) = &a.json {
        let res = Results {
            hosts: a.hosts,
            rate: a.rate.clone(),
            rows,
        };
        std::fs::write(path, serde_json::to_string_pretty(&res)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(0)
}

/// Every configuration over the daemons as they run now.
fn measure(bed: &Testbed, a: &RemoteBenchArgs, image: &GuestImage) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &mem in &a.mem_mib {
        // What a clone touches does not depend on how many there are: one
        // run with prefetching off counts it (each fetch is then one fault).
        let base = run_once(bed, image, mem, 1, Placement::Remote, Some(1))?;
        let touched = base.clones[0].clones[0]
            .memory
            .as_ref()
            .map_or(0, |m| m.pages_fetched) as f64;
        for &n in &a.clones {
            let t0 = Instant::now();
            let (mut rf, mut rl, mut lf, mut ll, mut p50, mut p99, mut rj, mut lj) =
                Default::default();
            let (mut faults, mut pages, mut bytes, mut mcast) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut desc = 0;
            for _ in 0..a.runs {
                let r = run_once(bed, image, mem, n, Placement::Remote, None)?;
                let f = firsts(&r);
                push(&mut rf, median(&f));
                push(&mut rl, f.iter().copied().fold(0.0, f64::max));
                push(&mut rj, r.clones[0].request_to_joined.map_or(f64::NAN, ms));
                desc = r.clones[0].descriptor_bytes;
                for c in &r.clones[0].clones {
                    let m = c.memory.clone().unwrap_or_default();
                    push(&mut p50, m.fault_latency_p50_us as f64);
                    push(&mut p99, m.fault_latency_p99_us as f64);
                    faults.push(m.faults as f64);
                    pages.push(m.pages_fetched as f64);
                    bytes.push(m.bytes_received as f64);
                    mcast.push(m.multicast_pages as f64);
                }
                let l = run_once(bed, image, mem, n, Placement::Local, None)?;
                let f = firsts(&l);
                push(&mut lf, median(&f));
                push(&mut ll, f.iter().copied().fold(0.0, f64::max));
                push(&mut lj, l.clones[0].request_to_joined.map_or(f64::NAN, ms));
            }
            let bytes_med = median(&bytes);
            rows.push(Row {
                transport: bed.transport.name().into(),
                mem_mib: mem,
                clones: n,
                hosts: a.hosts,
                runs: a.runs,
                remote_first_instr_ms_median: median(&rf),
                remote_last_first_instr_ms_median: median(&rl),
                local_first_instr_ms_median: median(&lf),
                local_last_first_instr_ms_median: median(&ll),
                fault_latency_p50_us_median: median(&p50),
                fault_latency_p99_us_median: median(&p99),
                faults_per_clone: median(&faults),
                pages_fetched_per_clone: median(&pages),
                multicast_pages_per_clone: median(&mcast),
                bytes_fetched_per_clone: bytes_med,
                pages_touched_per_clone: touched,
                fetched_vs_touched: bytes_med / (touched * 4096.0),
                descriptor_bytes: desc,
                remote_join_ms_median: median(&rj),
                local_join_ms_median: median(&lj),
            });
            eprintln!(
                "  {:>5} {mem:>5} MiB x {n:>2} clones: done in {:.1} s",
                bed.transport.name(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(rows)
}

fn push(v: &mut Vec<f64>, x: f64) {
    v.push(x);
}

fn print_table(rows: &[Row]) {
    println!();
    println!("remote clone benchmark: medians; latencies from the clone request");
    println!(
        "{:>5} {:>7} {:>6} {:>10} {:>10} {:>10} {:>10} {:>7} {:>7} {:>9} {:>9} {:>8} {:>10} {:>8} {:>7}",
        "auth",
        "mem MiB",
        "clones",
        "remote ms",
        "last ms",
        "local ms",
        "last ms",
        "p50 us",
        "p99 us",
        "pg touch",
        "pg fetch",
        "pg mcast",
        "MB fetch",
        "fetch/t",
        "desc B"
    );
    for r in rows {
        println!(
            "{:>5} {:>7} {:>6} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>7.0} {:>7.0} {:>9.0} {:>9.0} {:>8.0} {:>10.2} {:>8.3} {:>7}",
            r.transport,
            r.mem_mib,
            r.clones,
            r.remote_first_instr_ms_median,
            r.remote_last_first_instr_ms_median,
            r.local_first_instr_ms_median,
            r.local_last_first_instr_ms_median,
            r.fault_latency_p50_us_median,
            r.fault_latency_p99_us_median,
            r.pages_touched_per_clone,
            r.pages_fetched_per_clone,
            r.multicast_pages_per_clone,
            r.bytes_fetched_per_clone / 1e6,
            r.fetched_vs_touched,
            r.descriptor_bytes
        );
    }
    println!("fetch/t = bytes received per clone over TCP / bytes of the pages it touched (goal <= 1.1); pg mcast = pages pushed to it by the group's multicast first");
}

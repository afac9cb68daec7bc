//! `snowflock bench net`: TCP throughput and round-trip time on a family
//! network, on one host (through the family bridge) and across two
//! namespace hosts (bridge, VXLAN, the hosts' link, VXLAN, bridge).
//!
//! The reference is two plain host processes' sockets over exactly that
//! path: endpoints (veth into small namespaces) that are ports of the same
//! family bridges a VM's TAP would be. The VM half needs a guest NIC; until
//! the VMM has one its columns are empty (JSON `null`), never invented.

use super::stats::median;
use anyhow::{bail, Context};
use sf_abi::net::FamilyNet;
use sf_vmm::net::endpoint::Endpoint;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct NetBenchArgs {
    /// Write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Throughput runs per path (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Round trips per RTT measurement.
    #[arg(long, default_value_t = 2000)]
    round_trips: usize,
}

#[derive(serde::Serialize)]
struct Row {
    path: &'static str,
    vm_mbit_s: Option<f64>,
    reference_mbit_s: f64,
    vm_rtt_us: Option<f64>,
    reference_rtt_us: f64,
    vm_vs_reference_throughput: Option<f64>,
    runs: usize,
}

const FAMILY: u8 = 1;
const PORT: u16 = 7300;

pub fn main(a: NetBenchArgs) -> anyhow::Result<u8> {
    if a.runs == 0 || a.round_trips == 0 || !(a.seconds > 0.0 && a.seconds <= 60.0) {
        bail!("--runs and --round-trips must be at least 1, --seconds within (0, 60]");
    }
    let hosts = Hosts::up()?;
    let family = FamilyNet::new(FAMILY).expect("nonzero");
    let vni = sf_vmm::net::vni(sf_vmm::net::host_id(hosts.addr(1)), family);
    eprintln!("family {FAMILY} (VNI {vni:#x}) on 2 namespace hosts; starting its brokers...");
    let _holders = [hosts.hold(1, vni)?, hosts.hold(2, vni)?];
    let tag = std::process::id() % 100_000;
    let at = |host: usize, m: u32| {
        Endpoint::member(
            Some(&hosts.netns(host)),
            &format!("sfn{tag}-{m}"),
            vni,
            family,
            m,
        )
        .with_context(|| format!("cannot attach endpoint {m} on host {host}"))
    };
    let (e1, e2, e3) = (at(1, 1)?, at(1, 2)?, at(2, 3)?);
    let mut rows = vec![];
    for (path, to) in [("same-host", &e2), ("cross-host", &e3)] {
        eprintln!(
            "  {path}: {} runs of {} s, {} round trips...",
            a.runs, a.seconds, a.round_trips
        );
        let mut mbit = vec![];
        for _ in 0..a.runs {
            mbit.push(throughput(&e1, to, Duration::from_secs_f64(a.seconds))?);
        }
        let rtt = rtt_us(&e1, to, a.round_trips)?;
        rows.push(Row {
            path,
            vm_mbit_s: None,
            reference_mbit_s: median(&mbit),
            vm_rtt_us: None,
            reference_rtt_us: rtt,
            vm_vs_reference_throughput: None,
            runs: a.runs,
        });
    }
    println!(
        "{:<11} {:>12} {:>17} {:>10} {:>16}",
        "path", "VM Mbit/s", "reference Mbit/s", "VM RTT us", "reference RTT us"
    );
    let show = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
    for r in &rows {
        println!(
            "{:<11} {:>12} {:>17.1} {:>10} {:>16.1}",
            r.path,
            show(r.vm_mbit_s),
            r.reference_mbit_s,
            show(r.vm_rtt_us),
            r.reference_rtt_us
        );
    }
    println!(
        "(VM columns need the guest NIC; reference: host sockets on the same bridge/VXLAN path)"
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(0)
}

/// Mbit/s of one TCP stream from `from` to `to` for `time`.
fn throughput(from: &Endpoint, to: &Endpoint, time: Duration) -> anyhow::Result<f64> {
    let listener = to.within(|| TcpListener::bind(("0.0.0.0", PORT)))??;
    let target = SocketAddr::from((to.ip, PORT));
    let sender =
        from.within(move || TcpStream::connect_timeout(&target, Duration::from_secs(3)))??;
    let (mut rx, _) = listener.accept()?;
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        let start = Instant::now();
        loop {
            match rx.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        (total, start.elapsed())
    });
    let buf = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut tx = sender;
    while start.elapsed() < time {
        tx.write_all(&buf)?;
    }
    drop(tx);
    let (bytes, took) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    Ok(bytes as f64 * 8.0 / took.as_secs_f64() / 1e6)
}

/// Median µs of a 1-byte request and 1-byte answer over TCP (NODELAY).
fn rtt_us(from: &Endpoint, to: &Endpoint, n: usize) -> anyhow::Result<f64> {
    let listener = to.within(|| TcpListener::bind(("0.0.0.0", PORT + 1)))??;
    let target = SocketAddr::from((to.ip, PORT + 1));
    let mut c =
        from.within(move || TcpStream::connect_timeout(&target, Duration::from_secs(3)))??;
    let (mut s, _) = listener.accept()?;
    c.set_nodelay(true)?;
    s.set_nodelay(true)?;
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
    });
    let mut times = Vec::with_capacity(n);
    let mut b = [7u8; 1];
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&b)?;
        c.read_exact(&mut b)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(c);
    let _ = echo.join();
    Ok(median(&times))
}

/// Two namespace hosts (scripts/cluster.sh), removed when dropped.
struct Hosts {
    script: PathBuf,
    name: String,
    subnet: u8,
}

impl Hosts {
    fn up() -> anyhow::Result<Hosts> {
        let script = super::remote::find_script()?;
        for attempt in 0..20u32 {
            let name = format!("sfn{}x{attempt}", std::process::id() % 10000);
            let subnet = ((std::process::id() + attempt) % 200) as u8 + 20;
            let out = Command::new(&script)
                .args(["up", "2", "--name", &name, "--subnet", &subnet.to_string()])
                .output()
                .context("cannot run scripts/cluster.sh (the benchmark needs root)")?;
            match out.status.code() {
                Some(0) => {
                    return Ok(Hosts {
                        script,
                        name,
                        subnet,
                    })
                }
                Some(3) => continue,
                _ => bail!(
                    "creating the test hosts failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }
        }
        bail!("no free cluster name/subnet after 20 attempts")
    }

    fn netns(&self, host: usize) -> String {
        format!("{}-h{host}", self.name)
    }

    fn addr(&self, host: usize) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, 213, self.subnet, host as u8)
    }

    /// Keeps the family alive on `host` (its broker, bridge and VXLAN).
    fn hold(&self, host: usize, vni: u32) -> anyhow::Result<Holder> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns(host)])
            .arg(std::env::current_exe()?)
            .args([
                "net-hold",
                "--family",
                &FAMILY.to_string(),
                "--vni",
                &vni.to_string(),
            ])
            .args(["--taps", "1", "--underlay", "eth0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().expect("piped");
        for line in BufReader::new(out).lines() {
            if line? == "holding" {
                return Ok(Holder(child));
            }
        }
        bail!(
            "the family's broker did not start on host {host}: {:?}",
            child.wait()?
        )
    }
}

struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .args(["down", "--name", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

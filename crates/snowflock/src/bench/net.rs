//! `snowflock bench net`: TCP throughput and round-trip time on a family
//! network, on one host (through the family bridge) and across two
//! namespace hosts (bridge, VXLAN, the hosts' link, VXLAN, bridge).
//!
//! The reference is two plain host processes' sockets over exactly that
//! path: endpoints (veth into small namespaces) that are ports of the same
//! family bridges a VM's TAP would be. The VM half: a `netpi echo` VM on
//! host 1 is member 0 of the family; a host endpoint (on host 1, then on
//! host 2) measures RTT (1-byte ping-pong) and echo throughput (it writes
//! and reads back for `--seconds`) against it, and against a host echo
//! server on an endpoint of host 1 as the reference, over the same path.
//! One side of the VM rows is a host endpoint: the guest stack is measured
//! once per round trip, not twice. `reference_stream_mbit_s` is a one-way
//! host stream on the same path, for scale.

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
    reference_stream_mbit_s: f64,
    runs: usize,
}

const PORT: u16 = 7300;
const VM_PORT: u16 = 7400;

pub fn main(a: NetBenchArgs) -> anyhow::Result<u8> {
    if a.runs == 0 || a.round_trips == 0 || !(a.seconds > 0.0 && a.seconds <= 60.0) {
        bail!("--runs and --round-trips must be at least 1, --seconds within (0, 60]");
    }
    let hosts = Hosts::up()?;
    eprintln!("a netpi echo VM with --net on host 1...");
    let vm = hosts.echo_vm(2)?;
    let vni = vm.vni;
    let family = FamilyNet::new(vni as u8).context("the VM's family")?;
    let _holder = hosts.hold(2, vni, family)?;
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
    let vm_ip = std::net::Ipv4Addr::from(family.ip_of(0).expect("member 0"));
    let time = Duration::from_secs_f64(a.seconds);
    let mut rows = vec![];
    for (path, from) in [("same-host", &e1), ("cross-host", &e3)] {
        eprintln!(
            "  {path}: {} runs of {} s, {} round trips...",
            a.runs, a.seconds, a.round_trips
        );
        let mut stream = vec![];
        let mut echo = vec![];
        for _ in 0..a.runs {
            stream.push(throughput(from, &e2, time)?);
            echo.push(host_echo(from, &e2, time, a.round_trips)?);
        }
        let (vm_rtt, vm_mbit) = echo_client(
            from,
            SocketAddr::from((vm_ip, VM_PORT)),
            time,
            a.round_trips,
        )?;
        let reference = median(&echo.iter().map(|e| e.1).collect::<Vec<_>>());
        rows.push(Row {
            path,
            vm_mbit_s: Some(vm_mbit),
            reference_mbit_s: reference,
            vm_rtt_us: Some(vm_rtt),
            reference_rtt_us: median(&echo.iter().map(|e| e.0).collect::<Vec<_>>()),
            vm_vs_reference_throughput: Some(vm_mbit / reference),
            reference_stream_mbit_s: median(&stream),
            runs: a.runs,
        });
    }
    drop(vm);
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
        "(echo throughput and 1-byte RTT from a host endpoint to a netpi echo VM; reference: a host echo server on the same path)"
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

/// RTT (median µs) and echo throughput (Mbit/s each way) against a host
/// echo server on `to`.
fn host_echo(
    from: &Endpoint,
    to: &Endpoint,
    time: Duration,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let listener = to.within(|| TcpListener::bind(("0.0.0.0", PORT + 2)))??;
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let r = echo_client(from, SocketAddr::from((to.ip, PORT + 2)), time, n);
    let _ = server.join();
    r
}

/// Against an echo server at `target`: the median µs of `n` 1-byte round
/// trips, then Mbit/s echoed while writing for `time` (a reader thread
/// takes the echo back).
fn echo_client(
    from: &Endpoint,
    target: SocketAddr,
    time: Duration,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut c = from
        .within(move || TcpStream::connect_timeout(&target, Duration::from_secs(5)))?
        .with_context(|| format!("cannot connect to the echo server at {target}"))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut times = Vec::with_capacity(n);
    let mut b = [7u8; 1];
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&b)?;
        c.read_exact(&mut b)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut rx = c.try_clone()?;
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        while let Ok(k) = rx.read(&mut buf) {
            if k == 0 {
                break;
            }
            total += k as u64;
        }
        total
    });
    let buf = vec![0x5au8; 16 << 10];
    let start = Instant::now();
    while start.elapsed() < time {
        c.write_all(&buf)?;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    let echoed = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    let took = start.elapsed();
    Ok((
        median(&times),
        echoed as f64 * 8.0 / took.as_secs_f64() / 1e6,
    ))
}

/// Two namespace hosts (scripts/cluster.sh), removed when dropped.
struct Hosts {
    script: PathBuf,
    name: String,
    subnet: u8,
}

impl Hosts {
    fn up() -> anyhow::Result<Hosts> {
        let script = super::testbed::find_script()?;
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

    /// A `netpi echo` VM on host 1 with a family network reaching host 2
    /// (echoing `conns` connections); its VNI read off its bridge.
    fn echo_vm(&self, conns: u32) -> anyhow::Result<EchoVm> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns(1)])
            .arg(std::env::current_exe()?)
            .args(["run", "--net", "--mem", "64M", "--timeout", "120s"])
            .args(["--advertise", &self.addr(1).to_string()])
            .args(["--peer", &format!("{}:7070", self.addr(2))])
            // It never clones: the peer only sets up its VXLAN underlay.
            .arg("--insecure-no-tls")
            .args([
                "netpi",
                "--",
                "echo",
                &format!("port={VM_PORT}"),
                &format!("conns={conns}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut vm = EchoVm { child, vni: 0 };
        let out = vm.child.stdout.take().expect("piped");
        let mut lines = BufReader::new(out).lines();
        while let Some(line) = lines.next() {
            if line?.starts_with("echo: listening") {
                // Keep reading its console: a VM whose console breaks ends.
                std::thread::spawn(move || lines.for_each(drop));
                let links = sf_vmm::net::links::ip(&["-n", &self.netns(1), "-br", "link"])?;
                vm.vni = links
                    .lines()
                    .filter_map(|l| l.split_whitespace().next()?.strip_prefix("sfb"))
                    .find_map(|hex| u32::from_str_radix(hex, 16).ok())
                    .context("the VM's family bridge is missing")?;
                return Ok(vm);
            }
        }
        bail!("the echo VM did not start: {:?}", vm.child.wait()?)
    }

    /// Keeps the family alive on `host` (its broker, bridge and VXLAN).
    fn hold(&self, host: usize, vni: u32, family: FamilyNet) -> anyhow::Result<Holder> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns(host)])
            .arg(std::env::current_exe()?)
            .args([
                "net-hold",
                "--family",
                &family.number().to_string(),
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

struct EchoVm {
    child: Child,
    vni: u32,
}

impl Drop for EchoVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

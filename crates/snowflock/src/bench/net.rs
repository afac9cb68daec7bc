//! `snowflock bench net`: TCP throughput and round-trip time between two
//! VMs of one family, on one host (through the family bridge) and on two
//! namespace hosts (bridge, VXLAN, the hosts' link, VXLAN, bridge).
//!
//! The VM rows: `netpi stream` on host 1 clones itself once, locally
//! (`--placement local`) or onto host 2 (`--placement remote`, through host
//! 2's daemon); the clone times 64-byte round trips to its parent, then
//! streams `--mib` MiB to it, and the parent times the stream and checks
//! its checksum. A fresh pair of VMs per run.
//!
//! The reference: two plain host processes over the same path, a bridge
//! and a VXLAN device made by the family broker, exactly as for a VM
//! family, held open on both hosts (`net-hold`), with the processes in
//! endpoints (veth into small namespaces) that are ports of those bridges
//! where a VM's TAP would be: a one-way stream for `--seconds`, and
//! 64-byte round trips against an echo server. Reference and VM runs
//! alternate.

use super::stats::median;
use super::testbed::Testbed;
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
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Runs per path and side (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds of each reference stream.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// MiB each VM stream moves (at 3 Gbit/s, 256 MiB take ~0.7 s).
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Round trips per RTT measurement.
    #[arg(long, default_value_t = 2000)]
    round_trips: usize,
}

#[derive(serde::Serialize)]
struct Row {
    path: &'static str,
    vm_mbit_s: f64,
    reference_mbit_s: f64,
    vm_rtt_us: f64,
    reference_rtt_us: f64,
    vm_vs_reference_throughput: f64,
    /// Every VM run's Mbit/s, for the spread.
    vm_runs_mbit_s: Vec<f64>,
    /// VM exits of the sending and of the receiving VM over a whole run
    /// (its round trips, about one exit each per round trip, and its
    /// stream), medians; the sender's only when it ran on this host.
    vm_sender_exits: Option<f64>,
    vm_receiver_exits: f64,
    runs: usize,
}

const PORT: u16 = 7300;
/// The reference's family: far above the numbers VM families take first
/// (the lowest free), and a VNI no origin host makes (theirs carry the
/// host id above the low byte).
const REFERENCE_FAMILY: u8 = 250;
/// Bytes of each round trip, VM and reference alike.
const PING: usize = 64;

pub fn main(a: NetBenchArgs) -> anyhow::Result<u8> {
    if a.runs == 0
        || a.round_trips == 0
        || a.mib == 0
        || a.mib > 4096
        || !(a.seconds > 0.0 && a.seconds <= 60.0)
    {
        bail!("--runs and --round-trips must be at least 1, --mib within 1..=4096, --seconds within (0, 60]");
    }
    let mut bed = Testbed::up(2, None)?;
    bed.start_daemons(false)?;
    let time = Duration::from_secs_f64(a.seconds);
    eprintln!("reference: host processes on a held family's bridges...");
    let family = FamilyNet::new(REFERENCE_FAMILY).expect("nonzero");
    let vni = u32::from(REFERENCE_FAMILY);
    let _holders = (hold(&bed, 1, vni, family)?, hold(&bed, 2, vni, family)?);
    let tag = std::process::id() % 100_000;
    let at = |host: usize, m: u32| {
        Endpoint::member(
            Some(&bed.netns(host)),
            &format!("sfn{tag}-{m}"),
            vni,
            family,
            m,
        )
        .with_context(|| format!("cannot attach endpoint {m} on host {host}"))
    };
    let (e1, e2, e3) = (at(1, 1)?, at(1, 2)?, at(2, 3)?);
    let mut rows = vec![];
    for (path, placement, from) in [("same-host", "local", &e1), ("cross-host", "remote", &e3)] {
        eprintln!(
            "  {path}: {} runs, each a {} s reference stream, {} reference round trips and netpi stream mib={} (--placement {placement})...",
            a.runs, a.seconds, a.round_trips, a.mib
        );
        // Reference and VMs take turns, so both see the machine's load
        // as it was at that moment.
        let (mut ref_mbit, mut ref_rtt, mut mbit, mut rtt) = (vec![], vec![], vec![], vec![]);
        let (mut sender_exits, mut receiver_exits) = (vec![], vec![]);
        for _ in 0..a.runs {
            ref_mbit.push(throughput(from, &e2, time)?);
            ref_rtt.push(host_rtt(from, &e2, a.round_trips)?);
            let v = vm_stream(&bed, placement, a.mib, a.round_trips)?;
            rtt.push(v.rtt_us);
            mbit.push(v.mbit_s);
            sender_exits.extend(v.sender_exits.map(|e| e as f64));
            receiver_exits.push(v.receiver_exits as f64);
        }
        let (vm_mbit, reference) = (median(&mbit), median(&ref_mbit));
        rows.push(Row {
            path,
            vm_mbit_s: vm_mbit,
            reference_mbit_s: reference,
            vm_rtt_us: median(&rtt),
            reference_rtt_us: median(&ref_rtt),
            vm_vs_reference_throughput: vm_mbit / reference,
            vm_runs_mbit_s: mbit,
            vm_sender_exits: (!sender_exits.is_empty()).then(|| median(&sender_exits)),
            vm_receiver_exits: median(&receiver_exits),
            runs: a.runs,
        });
    }
    println!(
        "{:<11} {:>10} {:>17} {:>7} {:>10} {:>16} {:>13} {:>13}",
        "path",
        "VM Mbit/s",
        "reference Mbit/s",
        "ratio",
        "VM RTT us",
        "reference RTT us",
        "sender exits",
        "recv. exits"
    );
    for r in &rows {
        println!(
            "{:<11} {:>10.1} {:>17.1} {:>6.1}% {:>10.1} {:>16.1} {:>13} {:>13.0}",
            r.path,
            r.vm_mbit_s,
            r.reference_mbit_s,
            100.0 * r.vm_vs_reference_throughput,
            r.vm_rtt_us,
            r.reference_rtt_us,
            r.vm_sender_exits
                .map_or("n/a".into(), |e| format!("{e:.0}")),
            r.vm_receiver_exits
        );
    }
    println!(
        "(VM to VM of one family: one TCP stream and {PING}-byte round trips; reference: host processes on the same kind of bridge and VXLAN; medians of {})",
        a.runs
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(0)
}

/// What one `netpi stream` pair measured.
struct VmStream {
    /// Median round trip and stream throughput, as the parent VM printed
    /// them.
    rtt_us: f64,
    mbit_s: f64,
    /// VM exits of the VM that sent the stream (the clone; `None` when it
    /// ran on another host, whose log is not here) and of the one that
    /// received it (the parent), from each VMM's end-of-run counters.
    sender_exits: Option<u64>,
    receiver_exits: u64,
}

/// The log target of the VMM's end-of-run exit counters.
const EXITS_LOG: &str = "sf_vmm::exits=debug";

/// One `netpi stream` pair on host 1 (the clone where `placement` puts
/// it).
fn vm_stream(bed: &Testbed, placement: &str, mib: u64, rounds: usize) -> anyhow::Result<VmStream> {
    let out = Command::new("ip")
        .args(["netns", "exec", &bed.netns(1)])
        .arg(std::env::current_exe()?)
        .args(["run", "--net", "--mem", "64M", "--timeout", "120s"])
        .args(["--advertise", &bed.addr(1).to_string()])
        .args(["--peer", &format!("{}:7070", bed.addr(2))])
        .args(["--insecure-no-tls", "--placement", placement])
        .args(["netpi", "--", "stream"])
        .arg(format!("mib={mib}"))
        .arg(format!("rounds={rounds}"))
        .env("SNOWFLOCK_LOG", EXITS_LOG)
        .stdin(Stdio::null())
        .output()
        .context("cannot run the stream VMs")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("stream: rtt_median_us="))
        .with_context(|| {
            format!(
                "the stream VMs failed ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let field = |name: &str| -> anyhow::Result<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in {line:?}"))
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut vms = exit_counts(&stderr);
    // The receiver (the parent) sent the least: acknowledgements.
    vms.sort_by_key(|c| c.tx_bytes);
    let (receiver, sender) = match vms[..] {
        [r] => (r, None),
        [r, s] => (r, Some(s)),
        _ => bail!(
            "expected the exit counters of 1 or 2 VMs in the VMMs' log, found {}:\n{stderr}",
            vms.len()
        ),
    };
    Ok(VmStream {
        rtt_us: field("rtt_median_us=")?,
        mbit_s: field("mbit_s=")?,
        sender_exits: sender.map(|s| s.exits),
        receiver_exits: receiver.exits,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ExitCount {
    exits: u64,
    tx_bytes: u64,
}

/// Each VMM's end-of-run counters from its log (`pid P: N exits (...);
/// net0: NetStats { tx_bytes: B, ... }`): remote clones log on another
/// host and are not seen here.
fn exit_counts(log: &str) -> Vec<ExitCount> {
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    log.lines()
        .filter(|l| l.contains("sf_vmm::exits"))
        .filter_map(|l| {
            let head = &l[..l.find(" exits (")?];
            let exits = head.rsplit(' ').next()?.parse().ok()?;
            let tx_bytes = number_after(l, "tx_bytes: ")?;
            Some(ExitCount { exits, tx_bytes })
        })
        .collect()
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

/// Median µs of `n` round trips of [`PING`] bytes from `from` to an echo
/// server on `to`.
fn host_rtt(from: &Endpoint, to: &Endpoint, n: usize) -> anyhow::Result<f64> {
    let listener = to.within(|| TcpListener::bind(("0.0.0.0", PORT + 2)))??;
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; PING];
            while s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {}
        }
    });
    let target = SocketAddr::from((to.ip, PORT + 2));
    let r = (|| {
        let mut c = from
            .within(move || TcpStream::connect_timeout(&target, Duration::from_secs(5)))?
            .with_context(|| format!("cannot connect to the echo server at {target}"))?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut times = Vec::with_capacity(n);
        let mut b = [7u8; PING];
        for _ in 0..n {
            let t = Instant::now();
            c.write_all(&b)?;
            c.read_exact(&mut b)?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(median(&times))
    })();
    let _ = server.join();
    r
}

/// Keeps family `family` (VXLAN `vni`) alive on `host`: its broker,
/// bridge and VXLAN device, until dropped.
fn hold(bed: &Testbed, host: usize, vni: u32, family: FamilyNet) -> anyhow::Result<Holder> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &bed.netns(host)])
        .arg(std::env::current_exe()?)
        .args([
            "net-hold",
            "--family",
            &family.number().to_string(),
            "--vni",
            &vni.to_string(),
        ])
        .args(["--taps", "0", "--underlay", "eth0"])
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

struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_counters_are_read_from_the_log() {
        let log = "\x1b[2m2026-11-27T18:38:35Z\x1b[0m \x1b[34mDEBUG\x1b[0m \x1b[2msf_vmm::exits\x1b[0m\x1b[2m:\x1b[0m pid 27327: 1660 exits (ExitKinds { pio: 5, mmio_reads: 9, mmio_writes: 1646, other: 0 }), 5 hypercalls; net0: NetStats { tx_packets: 5521, tx_bytes: 268733710, tx_dropped: 0 }
stream: rtt_median_us=279.8 mbit_s=8525.0
other line with 12 exits ( but no target
DEBUG sf_vmm::exits: pid 2: 7 exits (ExitKinds { pio: 7 }), 0 hypercalls; \n";
        assert_eq!(
            exit_counts(log),
            vec![ExitCount {
                exits: 1660,
                tx_bytes: 268_733_710
            }],
            "a VMM without a NIC has no tx_bytes and is left out"
        );
    }
}

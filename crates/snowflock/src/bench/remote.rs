//! `snowflock bench remote`: clones on other hosts. It makes K network
//! namespace hosts (scripts/cluster.sh) with a daemon each, runs the origin
//! VM in this process inside host 1's namespace, and sends its clones to the
//! other hosts, where they fetch memory on demand. For comparison, the same
//! clones forked locally, and the pages each clone really touches (the same
//! run with prefetching off, where every fetched page was a faulting touch).
//!
//! Each row also runs with some of the group's memory mechanisms off
//! (`--mechanisms`: all, no-lockstep, no-multicast), and measures each
//! clone's whole read pass, what the origin sent (its interface counters,
//! checked against what the clones received), and how many of the pages a
//! clone touched were there before it touched them.
//!
//! Every configuration runs twice in one invocation: with mutual TLS under
//! a cluster CA made for the run (daemons, clone requests, page service,
//! reports) and with plain TCP (`--insecure-no-tls`), so the cost of
//! authentication and encryption is measured on the same hosts. Each row
//! says which in `transport`.

use super::cpu::{cores_busy_pct, machine_cores, CpuSampler};
use super::group::{GroupRun, PerClone};
use super::stats::median;
pub(super) use super::testbed::{Mechanisms, Testbed};
use anyhow::{bail, Context};
use serde::Serialize;
use sf_api::Placement;
use sf_vmm::{CloneStatus, GuestImage, RunReport, Vm, VmConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    Both,
    Mtls,
    Plain,
}

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
    /// Which memory mechanisms to compare, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "all,no-lockstep,no-multicast,no-working-set"
    )]
    mechanisms: Vec<Mechanisms>,
    /// Mutual TLS, plain TCP, or both (each a set of rows).
    #[arg(long, value_enum, default_value = "both")]
    transport: TransportArg,
    /// Write the rows as JSON to this file: one object per row, the
    /// table's columns in full (work_ms_median, work_ms_last,
    /// origin_tx_bytes, multicast_bytes, pages_arrived_before_touch_pct,
    /// multicast_lost_datagrams, fault_latency_p99_us_median, ...).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct Row {
    /// "mtls" (mutual TLS, the default) or "plain" (`--insecure-no-tls`).
    pub transport: String,
    /// Memory mechanisms on: "all", "no-lockstep", "no-multicast" or
    /// "no-working-set".
    pub mechanisms: Mechanisms,
    pub mem_mib: u64,
    pub clones: u32,
    pub hosts: usize,
    pub runs: usize,
    /// Request to a remote clone's first vCPU entry (median over clones and runs).
    pub remote_first_instr_ms_median: f64,
    /// Request to the last remote clone's first vCPU entry.
    pub remote_last_first_instr_ms_median: f64,
    /// A clone's whole read pass, from its first instruction (median over
    /// clones and runs), and the slowest clone's (median over runs).
    pub work_ms_median: f64,
    pub work_ms_last: f64,
    /// Everything the origin host sent during the remote run (its
    /// interface's tx_bytes); the same from the clones' side (bytes they
    /// received over TCP plus the group's datagrams they saw), a lower
    /// bound; and from the memory holder's (bytes it wrote plus datagrams
    /// it sent, some of which a full queue may drop), an upper bound.
    pub origin_tx_bytes: f64,
    pub origin_tx_bytes_from_clones: f64,
    pub origin_tx_bytes_from_holder: f64,
    /// The group's multicast datagrams on the wire (Ethernet frames).
    pub multicast_bytes: f64,
    /// Of the pages a clone touched, the share that was there before it
    /// touched them (clones 2..N; clone 1 alone in a 1-clone row).
    pub pages_arrived_before_touch_pct: f64,
    /// The same for the first clone of a second family cloned from the same
    /// parent (the first family's holder recorded the working set the
    /// second one's pushes; one extra run per row).
    pub next_family_first_clone_arrived_before_touch_pct: f64,
    /// Pages that clone got before touching them (pushed by multicast).
    pub next_family_first_clone_multicast_pages: f64,
    /// Datagrams of the group lost on their way to the clone hosts (sum
    /// over the receiving processes of a run: a host's page receiver once).
    pub multicast_lost_datagrams: f64,
    /// The memory holder's lockstep detection (its own counters, median
    /// over runs): 2 MiB chunks that turned shared (a second clone asked
    /// within 3 s), chunks a followed clone entered as shared before a
    /// sibling asked, pages answered by unicast alone because only one
    /// clone asked in their chunk, and the datagrams it pushed.
    pub lockstep_shared_chunks: f64,
    pub lockstep_predicted_chunks: f64,
    pub unicast_private_pages: f64,
    pub holder_multicast_datagrams: f64,
    /// Requests re-asked by unicast after a pushed answer (the holder's
    /// count): a connection with 8 or more, over a quarter of its pushed
    /// answers, is served by TCP alone from then on.
    pub holder_unicast_fallbacks: f64,
    /// Connections the holder turned to unicast alone for good (lossy
    /// receivers): each costs the origin that clone's pages over TCP.
    pub holder_lossy_receivers: f64,
    /// Pushed pages that were already there when they came (same sum).
    pub multicast_stale_drops: f64,
    /// Processes that received the group's datagrams in a run: one per
    /// clone host with the host's page receiver (one per clone before).
    pub multicast_receivers: f64,
    /// Datagrams all of them read in a run, per clone host used and per
    /// clone: with one receiver per host the first is what the holder
    /// sent, and the second falls as clones are added.
    pub multicast_datagrams_received_per_host: f64,
    pub multicast_datagrams_received_per_clone: f64,
    /// Pushed pages that came too late and were fetched by unicast, per clone.
    pub push_timeouts_per_clone: f64,
    pub local_first_instr_ms_median: f64,
    pub local_last_first_instr_ms_median: f64,
    pub fault_latency_p50_us_median: f64,
    pub fault_latency_p99_us_median: f64,
    pub faults_per_clone: f64,
    pub pages_fetched_per_clone: f64,
    /// Pages that reached a clone by the group's multicast (not counted in
    /// the fetched pages and bytes).
    pub multicast_pages_per_clone: f64,
    /// Whole 2 MiB blocks a clone installed as one huge page each, and
    /// those it installed page by page after their move failed.
    pub huge_blocks_per_clone: f64,
    pub huge_fallbacks_per_clone: f64,
    pub bytes_fetched_per_clone: f64,
    pub pages_touched_per_clone: f64,
    /// bytes fetched / bytes of the pages touched.
    pub fetched_vs_touched: f64,
    pub descriptor_bytes: usize,
    /// Request to join complete, remote and local.
    pub remote_join_ms_median: f64,
    pub local_join_ms_median: f64,
    /// What bounds the remote join: the machine's busy CPU time from the
    /// clone request to the join (every namespace host shares these
    /// cores), that time over the cores (the shortest join it allows),
    /// and the share of the cores' time it filled.
    pub cpu_busy_ms: f64,
    pub cpu_bound_join_ms: f64,
    pub cores_busy_pct: f64,
    /// The machine's context switches over the same join, per clone.
    pub context_switches_per_clone: f64,
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

/// One run of the scan guest; the report and the parent's console.
fn run_once(
    bed: &Testbed,
    image: &GuestImage,
    (mem_mib, n): (u64, u32),
    placement: Placement,
    window: Option<u32>,
    mech: Mechanisms,
    families: u32,
) -> anyhow::Result<(RunReport, String)> {
    let cfg = VmConfig {
        mem_size: mem_mib << 20,
        cmdline: format!(
            "scan n={n} mib={} ms=0 families={families}",
            (mem_mib / 16).max(1)
        ),
        max_clones: n.max(sf_vmm::default_max_clones()),
        timeout: Some(Duration::from_secs(300)),
        remote: Some(bed.link_with(placement, window, mech)),
        ..Default::default()
    };
    let mut out = Vec::new();
    let report = Vm::new(&cfg, image)?.run(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    if report.outcome.exit_code() != 0 || !text.contains("forktest scan: ok") {
        bail!(
            "the scan guest failed ({mem_mib} MiB x {n}, {placement:?}): {} / {text}",
            report.outcome
        );
    }
    if report.clones.len() < families as usize {
        bail!("{families} clone calls asked, {} made", report.clones.len());
    }
    for t in &report.clones {
        if t.clones.iter().any(|c| c.status != CloneStatus::Exited) {
            bail!("a clone failed: {:?}", t.clones);
        }
    }
    Ok((report, text))
}

fn firsts(r: &RunReport) -> Vec<f64> {
    r.clones[0]
        .clones
        .iter()
        .filter_map(|c| c.first_entry.map(ms))
        .collect()
}

pub fn main(a: RemoteBenchArgs) -> anyhow::Result<u8> {
    if a.runs == 0
        || a.mem_mib.is_empty()
        || a.clones.is_empty()
        || a.clones.contains(&0)
        || a.mechanisms.is_empty()
    {
        bail!("--runs, --mem-mib, --clones and --mechanisms need positive values");
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
    let transports: &[bool] = match a.transport {
        TransportArg::Both => &[true, false],
        TransportArg::Mtls => &[true],
        TransportArg::Plain => &[false],
    };
    for &tls in transports {
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
        // run with prefetching and multicast off counts it (each fetch is
        // then one faulting touch).
        let (base, _) = run_once(
            bed,
            image,
            (mem, 1),
            Placement::Remote,
            Some(1),
            Mechanisms::NoMulticast,
            1,
        )?;
        let touched = base.clones[0].clones[0]
            .memory
            .as_ref()
            .map_or(0, |m| m.pages_fetched) as f64;
        for &n in &a.clones {
            for &mech in &a.mechanisms {
                rows.push(measure_row(bed, a, image, (mem, n), mech, touched)?);
            }
        }
    }
    Ok(rows)
}

fn measure_row(
    bed: &Testbed,
    a: &RemoteBenchArgs,
    image: &GuestImage,
    (mem, n): (u64, u32),
    mech: Mechanisms,
    touched: f64,
) -> anyhow::Result<Row> {
    let t0 = Instant::now();
    let [mut rf, mut rl, mut lf, mut ll, mut rj, mut lj]: [Vec<f64>; 6] = Default::default();
    let cpu = CpuSampler::start(Duration::from_millis(10));
    let (mut busy, mut switches) = (Vec::new(), Vec::new());
    let mut groups = Vec::new();
    let mut clones: Vec<PerClone> = Vec::new();
    let mut desc = 0;
    for _ in 0..a.runs {
        let tx0 = bed.origin_tx_bytes()?;
        let began = Instant::now();
        let (r, text) = run_once(bed, image, (mem, n), Placement::Remote, None, mech, 1)?;
        let tx = bed.origin_tx_bytes()? - tx0;
        let call = &r.clones[0];
        if let Some(joined) = call.request_to_joined {
            let from = began + call.requested_at;
            if let Some(w) = cpu.window(from, from + joined) {
                busy.push(w.busy_ms);
                switches.push(w.switches);
            }
        }
        let f = firsts(&r);
        rf.push(median(&f));
        rl.push(f.iter().copied().fold(0.0, f64::max));
        rj.push(r.clones[0].request_to_joined.map_or(f64::NAN, ms));
        desc = r.clones[0].descriptor_bytes;
        let mut g = GroupRun::new(&r.clones[0].clones, &text, tx, touched)?;
        g.holder = r.clones[0].holder.unwrap_or_default();
        clones.extend(g.clones.iter().cloned());
        groups.push(g);
        // Forked on this host, for reference (once per row, with every
        // mechanism: they do not apply to local clones).
        if mech == a.mechanisms[0] {
            let (l, _) = run_once(bed, image, (mem, n), Placement::Local, None, mech, 1)?;
            let f = firsts(&l);
            lf.push(median(&f));
            ll.push(f.iter().copied().fold(0.0, f64::max));
            lj.push(l.clones[0].request_to_joined.map_or(f64::NAN, ms));
        }
    }
    // A second family from the same parent: what the first one's recorded
    // working set buys its first clone.
    let (r2, _) = run_once(bed, image, (mem, n), Placement::Remote, None, mech, 2)?;
    let next = r2.clones[1]
        .clones
        .iter()
        .find(|c| c.id == 1)
        .and_then(|c| c.memory.clone())
        .unwrap_or_default();
    let next_pct = 100.0 * (1.0 - next.misses as f64 / touched).clamp(0.0, 1.0);
    let per = |f: fn(&PerClone) -> f64| median(&clones.iter().map(f).collect::<Vec<_>>());
    let per_group = |f: fn(&GroupRun) -> f64| median(&groups.iter().map(f).collect::<Vec<_>>());
    let bytes_med = per(|c| c.m.bytes_received as f64);
    let row = Row {
        transport: bed.transport.name().into(),
        mechanisms: mech,
        mem_mib: mem,
        clones: n,
        hosts: a.hosts,
        runs: a.runs,
        remote_first_instr_ms_median: median(&rf),
        remote_last_first_instr_ms_median: median(&rl),
        work_ms_median: per(|c| c.work_ms),
        work_ms_last: per_group(|g| g.work_ms_last),
        origin_tx_bytes: per_group(|g| g.origin_tx_bytes),
        origin_tx_bytes_from_clones: per_group(|g| g.from_clones_bytes),
        origin_tx_bytes_from_holder: per_group(GroupRun::holder_sent_bytes),
        multicast_bytes: per_group(|g| g.multicast_bytes),
        pages_arrived_before_touch_pct: per_group(|g| g.arrived_before_touch_pct),
        next_family_first_clone_arrived_before_touch_pct: next_pct,
        next_family_first_clone_multicast_pages: next.multicast_pages as f64,
        multicast_lost_datagrams: per_group(|g| g.lost_datagrams),
        lockstep_shared_chunks: per_group(|g| g.holder.lockstep_shared_chunks as f64),
        lockstep_predicted_chunks: per_group(|g| g.holder.lockstep_predicted_chunks as f64),
        unicast_private_pages: per_group(|g| g.holder.unicast_private_pages as f64),
        holder_multicast_datagrams: per_group(|g| g.holder.multicast_datagrams as f64),
        holder_unicast_fallbacks: per_group(|g| g.holder.unicast_fallbacks as f64),
        holder_lossy_receivers: per_group(|g| g.holder.lossy_receivers as f64),
        multicast_stale_drops: per_group(|g| g.stale_drops),
        multicast_receivers: per_group(|g| g.receivers),
        multicast_datagrams_received_per_host: per_group(|g| g.datagrams_received)
            / (a.hosts.saturating_sub(1).min(n as usize).max(1)) as f64,
        multicast_datagrams_received_per_clone: per_group(|g| g.datagrams_received)
            / f64::from(n.max(1)),
        push_timeouts_per_clone: per(|c| c.m.push_timeouts as f64),
        local_first_instr_ms_median: median(&lf),
        local_last_first_instr_ms_median: median(&ll),
        fault_latency_p50_us_median: per(|c| c.m.fault_latency_p50_us as f64),
        fault_latency_p99_us_median: per(|c| c.m.fault_latency_p99_us as f64),
        faults_per_clone: per(|c| c.m.faults as f64),
        pages_fetched_per_clone: per(|c| c.m.pages_fetched as f64),
        multicast_pages_per_clone: per(|c| c.m.multicast_pages as f64),
        huge_blocks_per_clone: per(|c| c.m.huge_blocks as f64),
        huge_fallbacks_per_clone: per(|c| c.m.huge_fallbacks as f64),
        bytes_fetched_per_clone: bytes_med,
        pages_touched_per_clone: touched,
        fetched_vs_touched: bytes_med / (touched * 4096.0),
        descriptor_bytes: desc,
        remote_join_ms_median: median(&rj),
        local_join_ms_median: median(&lj),
        cpu_busy_ms: median(&busy),
        cpu_bound_join_ms: median(&busy) / machine_cores(),
        cores_busy_pct: cores_busy_pct(median(&busy), median(&rj)),
        context_switches_per_clone: median(&switches) / f64::from(n.max(1)),
    };
    eprintln!(
        "  {:>5} {mem:>5} MiB x {n:>2} clones, {:?}: done in {:.1} s",
        bed.transport.name(),
        mech,
        t0.elapsed().as_secs_f64()
    );
    Ok(row)
}

fn print_table(rows: &[Row]) {
    println!();
    println!("remote clone benchmark: medians; latencies from the clone request");
    println!(
        "{:>5} {:>12} {:>5} {:>3} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6} {:>6} {:>7} {:>7} {:>4} {:>8} {:>7} {:>7} {:>8} {:>8} {:>7} {:>8} {:>6} {:>8} {:>6} {:>6} {:>8} {:>8} {:>5} {:>7}",
        "auth",
        "mechanisms",
        "MiB",
        "N",
        "first ms",
        "last ms",
        "work ms",
        "wk last",
        "origin MB",
        "mcast MB",
        "early%",
        "next%",
        "lost",
        "stale",
        "rcvs",
        "rcv/host",
        "p50 us",
        "p99 us",
        "pg fetch",
        "pg mcast",
        "fetch/t",
        "local ms",
        "shr ch",
        "priv pg",
        "huge",
        "h fail",
        "join ms",
        "cpu flr",
        "cpu%",
        "csw/cl",
    );
    for r in rows {
        println!(
            "{:>5} {:>12} {:>5} {:>3} {:>8.2} {:>8.2} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>6.1} {:>6.1} {:>7.0} {:>7.0} {:>4.0} {:>8.0} {:>7.0} {:>7.0} {:>8.0} {:>8.0} {:>7.3} {:>8.2} {:>6.0} {:>8.0} {:>6.0} {:>6.0} {:>8.1} {:>8.1} {:>5.0} {:>7.0}",
            r.transport,
            format!("{:?}", r.mechanisms),
            r.mem_mib,
            r.clones,
            r.remote_first_instr_ms_median,
            r.remote_last_first_instr_ms_median,
            r.work_ms_median,
            r.work_ms_last,
            r.origin_tx_bytes / 1e6,
            r.multicast_bytes / 1e6,
            r.pages_arrived_before_touch_pct,
            r.next_family_first_clone_arrived_before_touch_pct,
            r.multicast_lost_datagrams,
            r.multicast_stale_drops,
            r.multicast_receivers,
            r.multicast_datagrams_received_per_host,
            r.fault_latency_p50_us_median,
            r.fault_latency_p99_us_median,
            r.pages_fetched_per_clone,
            r.multicast_pages_per_clone,
            r.fetched_vs_touched,
            r.local_first_instr_ms_median,
            r.lockstep_shared_chunks,
            r.unicast_private_pages,
            r.huge_blocks_per_clone,
            r.huge_fallbacks_per_clone,
            r.remote_join_ms_median,
            r.cpu_bound_join_ms,
            r.cores_busy_pct,
            r.context_switches_per_clone,
        );
    }
    println!("origin MB = what the origin host's interface sent during the run; early% = pages there before the clone touched them (clones 2..N); next% = the same for clone 1 of a second family from the same parent (the working set recorded by the first); lost = multicast datagrams lost per run; stale = pushed pages already there when they came; rcvs = processes that received the group's datagrams (one per clone host: its page receiver); rcv/host = datagrams they read per clone host; fetch/t = bytes received per clone over TCP / bytes of the pages it touched; shr ch = 2 MiB chunks the holder found shared (two clones asked within 3 s); priv pg = pages it served by unicast alone (one clone asking in their chunk); huge / h fail = whole 2 MiB blocks a clone installed as one huge page / installed page by page after the move failed; join ms = clone request to join; cpu flr = the machine's busy CPU time over that join divided by its cores (the shortest join that CPU allows: every host here shares the cores); cpu% = the share of the cores' time it filled; csw/cl = the machine's context switches over the join, per clone");
}

//! `snowflock bench avoid`: what the guest's free-page hints save remote
//! clones. On namespace hosts like `bench remote`, the `forktest avoid`
//! parent fills a working set W (default 1/16 of RAM), writes garbage into a
//! region (default 1/4 of RAM) and frees it, and does the clones' work once
//! itself (the warm reference). Each remote clone reads W, allocates A MiB
//! (default 1/4 of RAM), fills it and checks it. Rows: hints on and off
//! (`--no-hints`) x clone counts; mutual TLS throughout.

use super::group::clone_work_ns;
use super::stats::median;
use super::testbed::Testbed;
use anyhow::{bail, Context};
use serde::Serialize;
use sf_api::Placement;
use sf_vmm::{CloneStatus, GuestImage, Vm, VmConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct AvoidBenchArgs {
    /// Repetitions of each configuration (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Guest RAM sizes in MiB, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1024")]
    mem_mib: Vec<u64>,
    /// Clone counts, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    clones: Vec<u32>,
    /// Working set in MiB (default: 1/16 of RAM).
    #[arg(long)]
    ws_mib: Option<u64>,
    /// What each clone allocates and fills, in MiB (default: 1/4 of RAM).
    #[arg(long)]
    alloc_mib: Option<u64>,
    /// Hosts, the origin included (clones go to the other ones).
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// Write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct Row {
    pub mem_mib: u64,
    pub clones: u32,
    pub hints: bool,
    pub runs: usize,
    pub working_set_mib: u64,
    pub alloc_mib: u64,
    pub bytes_fetched_per_clone: f64,
    pub pages_fetched_per_clone: f64,
    pub pages_zero_local_per_clone: f64,
    pub multicast_pages_per_clone: f64,
    /// The clone's own timing of its work (read W, allocate, fill, check).
    pub clone_work_ms_median: f64,
    /// The same work on the warm parent before the clone call.
    pub parent_work_ms_median: f64,
    /// Targets: W * 1.1 + A / 100.
    pub bytes_target: f64,
}

#[derive(Serialize)]
struct Results {
    hosts: usize,
    transport: String,
    rows: Vec<Row>,
}

/// One run's numbers: per clone (bytes, pages, zero-local, multicast,
/// work ms) and the parent's work ms.
type Sample = (Vec<[f64; 5]>, f64);

fn run_once(
    bed: &Testbed,
    image: &GuestImage,
    mem_mib: u64,
    n: u32,
    (ws, alloc): (u64, u64),
    hints: bool,
) -> anyhow::Result<Sample> {
    let cfg = VmConfig {
        mem_size: mem_mib << 20,
        cmdline: format!("avoid n={n} ws={ws} alloc={alloc}"),
        max_clones: n.max(sf_vmm::default_max_clones()),
        timeout: Some(Duration::from_secs(600)),
        no_hints: !hints,
        remote: Some(bed.link_from_host_1(Placement::Remote, None)),
        ..Default::default()
    };
    let mut out = Vec::new();
    let report = Vm::new(&cfg, image)?.run(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    if report.outcome.exit_code() != 0 || !text.contains("forktest avoid: ok") {
        bail!(
            "the avoid guest failed ({mem_mib} MiB x {n}, hints {hints}): {} / {text}",
            report.outcome
        );
    }
    let parent_ns: f64 = text
        .lines()
        .find_map(|l| l.split("avoid parent_work_ns=").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .context("the guest did not print its parent_work_ns")?;
    let t = report.clones.first().context("no clone call")?;
    let mut per_clone = Vec::new();
    for c in &t.clones {
        if c.status != CloneStatus::Exited {
            bail!("a clone failed: {:?}", t.clones);
        }
        let m = c.memory.clone().unwrap_or_default();
        let work_ns = clone_work_ns(&text, c.id)
            .with_context(|| format!("the parent printed no work time for clone {}", c.id))?;
        per_clone.push([
            m.bytes_received as f64,
            m.pages_fetched as f64,
            // Never requested: zero-filled by the handler or the kernel.
            (m.zero_local_pages + m.released_hinted_pages) as f64,
            m.multicast_pages as f64,
            work_ns as f64 / 1e6,
        ]);
    }
    Ok((per_clone, parent_ns / 1e6))
}

pub fn main(a: AvoidBenchArgs) -> anyhow::Result<u8> {
    if a.runs == 0 || a.mem_mib.is_empty() || a.clones.is_empty() || a.clones.contains(&0) {
        bail!("--runs, --mem-mib and --clones need positive values");
    }
    let image = crate::run::shipped("forktest")?;
    eprintln!(
        "bench avoid: {} hosts (origin + {} clone hosts)",
        a.hosts,
        a.hosts - 1
    );
    let mut bed = Testbed::up(a.hosts, None)?;
    bed.enter_host1()?;
    bed.start_daemons(true)?;
    let mut rows = Vec::new();
    for &mem in &a.mem_mib {
        let ws = a.ws_mib.unwrap_or((mem / 16).max(1));
        let alloc = a.alloc_mib.unwrap_or((mem / 4).max(1));
        for &n in &a.clones {
            for hints in [true, false] {
                let mut cols: [Vec<f64>; 5] = Default::default();
                let mut parent = Vec::new();
                for _ in 0..a.runs {
                    let (per_clone, p) = run_once(&bed, &image, mem, n, (ws, alloc), hints)?;
                    parent.push(p);
                    for c in per_clone {
                        for (col, v) in cols.iter_mut().zip(c) {
                            col.push(v);
                        }
                    }
                }
                rows.push(Row {
                    mem_mib: mem,
                    clones: n,
                    hints,
                    runs: a.runs,
                    working_set_mib: ws,
                    alloc_mib: alloc,
                    bytes_fetched_per_clone: median(&cols[0]),
                    pages_fetched_per_clone: median(&cols[1]),
                    pages_zero_local_per_clone: median(&cols[2]),
                    multicast_pages_per_clone: median(&cols[3]),
                    clone_work_ms_median: median(&cols[4]),
                    parent_work_ms_median: median(&parent),
                    bytes_target: (ws << 20) as f64 * 1.1 + (alloc << 20) as f64 / 100.0,
                });
                eprintln!("  {mem:>5} MiB x {n:>2} clones, hints {hints}: done");
            }
        }
    }
    print_table(&rows);
    if let Some(path) = &a.json {
        let res = Results {
            hosts: a.hosts,
            transport: bed.transport.name().into(),
            rows,
        };
        std::fs::write(path, serde_json::to_string_pretty(&res)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(0)
}

fn print_table(rows: &[Row]) {
    println!();
    println!("free-page hints benchmark: medians per clone");
    println!(
        "{:>7} {:>6} {:>5} {:>6} {:>7} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "mem MiB",
        "clones",
        "hints",
        "W MiB",
        "A MiB",
        "MB fetch",
        "MB target",
        "pg fetch",
        "pg zero",
        "pg mcast",
        "clone ms",
        "parent ms"
    );
    for r in rows {
        println!(
            "{:>7} {:>6} {:>5} {:>6} {:>7} {:>10.2} {:>10.2} {:>9.0} {:>9.0} {:>10.0} {:>10.1} {:>10.1}",
            r.mem_mib,
            r.clones,
            r.hints,
            r.working_set_mib,
            r.alloc_mib,
            r.bytes_fetched_per_clone / 1e6,
            r.bytes_target / 1e6,
            r.pages_fetched_per_clone,
            r.pages_zero_local_per_clone,
            r.multicast_pages_per_clone,
            r.clone_work_ms_median,
            r.parent_work_ms_median
        );
    }
    println!(
        "targets (hints on): MB fetch <= MB target (1.1 W + 1% of A); clone ms <= 1.5 x parent ms"
    );
}

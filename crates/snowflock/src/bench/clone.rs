//! `snowflock bench clone`: how fast a VM forks, against the floor of
//! `fork()`ing a plain process that holds the same resident memory.

use super::stats::median;
use anyhow::{bail, Context};
use serde::Serialize;
use sf_vmm::clone::process::{self, Forked};
use sf_vmm::{GuestImage, Vm, VmConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct CloneBenchArgs {
    /// Repetitions of each configuration (medians are reported).
    #[arg(long, default_value_t = 9)]
    runs: usize,
    /// Guest RAM sizes in MiB, comma separated; all of it is touched before
    /// the clone.
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    mem_mib: Vec<u64>,
    /// Clone counts, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32")]
    clones: Vec<u32>,
    /// Write the rows as JSON here, and the plot next to it (same name, .png).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Skip the QEMU snapshot/restore comparison.
    #[arg(long)]
    no_qemu: bool,
    /// Also measure each row with a family network (`run --net`: a NIC in
    /// the parent, a TAP from the family's broker for every clone), run by
    /// run alternately with the same row without one.
    #[arg(long)]
    net: bool,
}

#[derive(Serialize, Clone, Debug)]
pub struct Row {
    pub mem_mib: u64,
    pub clones: u32,
    /// With a family network: every VM has a NIC, every clone its own TAP.
    pub net: bool,
    pub runs: usize,
    /// Clone request to the parent's vCPU running again.
    pub parent_resumed_ms_median: f64,
    /// Clone request to the first clone's first vCPU entry.
    pub first_clone_first_instr_ms_median: f64,
    /// Clone request to the last clone's first vCPU entry.
    pub clone_first_instr_ms_median: f64,
    pub descriptor_bytes: usize,
    /// Private (unshared) resident memory of one clone's process at its end.
    pub extra_rss_per_clone_mib_median: f64,
    /// fork() of a plain process with the same resident memory, until the
    /// child runs.
    pub fork_floor_ms_median: f64,
    /// N such forks one after another, until the last child runs.
    pub fork_floor_n_ms_median: f64,
    /// clone_first_instr / (clones * fork_floor).
    pub ratio_vs_floor: f64,
    /// QEMU restoring the same guest (all memory touched) from a saved
    /// state, process start to running; one restore.
    pub qemu_restore_ms_median: Option<f64>,
    pub qemu_state_mib: Option<f64>,
}

#[derive(Serialize)]
struct Results {
    transparent_hugepages: String,
    host_cpus: usize,
    rows: Vec<Row>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mono_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Anonymous memory on transparent huge pages, all touched, like guest RAM.
struct Resident {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Resident {
    fn new(len: usize) -> anyhow::Result<Resident> {
        // SAFETY: a fresh private anonymous mapping; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "cannot map {len} bytes: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: the mapping just made; advice and writes stay inside it.
        unsafe {
            libc::madvise(ptr, len, libc::MADV_HUGEPAGE);
            std::ptr::write_bytes(ptr as *mut u8, 1, len);
        }
        Ok(Resident { ptr, len })
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Forks `n` children one after another; each writes its start time to a
/// pipe and exits. Returns the time until the last child ran.
fn fork_children(n: u32) -> anyhow::Result<f64> {
    let (r, w) = process::pipe()?;
    let t0 = mono_ns();
    let mut pids = Vec::new();
    for _ in 0..n {
        // Fork safety: the benchmark has only this thread (no helper to park).
        match process::fork()? {
            Forked::Child => {
                let _ = process::write_all(&w, &mono_ns().to_le_bytes());
                process::exit_now(0);
            }
            Forked::Parent(pid) => pids.push(pid),
        }
    }
    drop(w);
    let bytes = process::read_all(&r, n as usize * 8)?;
    for p in pids {
        process::wait(p)?;
    }
    let last = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .max()
        .unwrap_or(t0);
    if bytes.len() != n as usize * 8 {
        bail!("only {} of {n} forked children reported", bytes.len() / 8);
    }
    Ok((last.saturating_sub(t0)) as f64 / 1e6)
}

fn fork_floor(mem_mib: u64, n: u32, runs: usize) -> anyhow::Result<(f64, f64)> {
    let _mem = Resident::new((mem_mib << 20) as usize)?;
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        one.push(fork_children(1)?);
        many.push(fork_children(n)?);
    }
    Ok((median(&one), median(&many)))
}

/// One row's measurements, gathered run by run.
#[derive(Default)]
struct Samples {
    resumed: Vec<f64>,
    first: Vec<f64>,
    last: Vec<f64>,
    private: Vec<f64>,
    descriptor_bytes: usize,
}

impl Samples {
    /// Boots the touch guest, which clones `n` times and joins; records
    /// the clone call's timeline.
    fn run_once(
        &mut self,
        image: &GuestImage,
        mem_mib: u64,
        n: u32,
        net: bool,
    ) -> anyhow::Result<()> {
        let cfg = VmConfig {
            mem_size: mem_mib << 20,
            cmdline: format!("touch n={n}"),
            max_clones: n.max(sf_vmm::default_max_clones()),
            timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut vm = Vm::new(&cfg, image)?;
        let mut vni = None;
        if net {
            // A new family per run, as `run --net` makes one: its set-up
            // (broker, bridge, TAP pool) is before the clone request.
            let fam = crate::net::start_family(None, None, false, cfg.max_clones)?;
            vni = Some(fam.spec.vni);
            crate::net::give_family(&mut vm, fam)?;
        }
        let report = vm.run(&mut out)?;
        // The VM holds the family's broker connection and the root's TAP.
        drop(vm);
        if let Some(vni) = vni {
            wait_until_removed(vni)?;
        }
        let text = String::from_utf8_lossy(&out);
        if report.outcome.exit_code() != 0 || !text.contains("joined, ok") {
            bail!(
                "the touch guest failed at {mem_mib} MiB x {n} (net: {net}): {} / {text}",
                report.outcome
            );
        }
        let t = report
            .clones
            .first()
            .context("the guest made no clone call")?;
        if t.granted != n {
            bail!("asked for {n} clones, granted {}", t.granted);
        }
        let firsts: Vec<f64> = t
            .clones
            .iter()
            .filter_map(|c| c.first_entry.map(ms))
            .collect();
        self.resumed.push(ms(t.request_to_resumed));
        self.first
            .push(firsts.iter().copied().fold(f64::INFINITY, f64::min));
        self.last.push(firsts.iter().copied().fold(0.0, f64::max));
        self.private.extend(
            t.clones
                .iter()
                .map(|c| c.private_bytes as f64 / (1 << 20) as f64),
        );
        self.descriptor_bytes = t.descriptor_bytes;
        Ok(())
    }

    fn row(&self, mem_mib: u64, n: u32, net: bool, floor: (f64, f64)) -> Row {
        let last_median = median(&self.last);
        Row {
            mem_mib,
            clones: n,
            net,
            runs: self.last.len(),
            parent_resumed_ms_median: median(&self.resumed),
            first_clone_first_instr_ms_median: median(&self.first),
            clone_first_instr_ms_median: last_median,
            descriptor_bytes: self.descriptor_bytes,
            extra_rss_per_clone_mib_median: median(&self.private),
            fork_floor_ms_median: floor.0,
            fork_floor_n_ms_median: floor.1,
            ratio_vs_floor: last_median / (n as f64 * floor.0),
            qemu_restore_ms_median: None,
            qemu_state_mib: None,
        }
    }
}

/// Waits until the family's broker has removed its devices (it does so
/// once the VMs ended): that work (16 pool TAPs, the bridge, each an
/// unregistration under RTNL) would otherwise fall on the next run, which
/// is a run without a network.
fn wait_until_removed(vni: u32) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while sf_vmm::net::links::family_links()?
        .iter()
        .any(|l| l.vni == vni)
    {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("the family's devices (VNI {vni:#x}) are still there 10 s after its VMs ended");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The rows of `n` clones of `mem_mib`: without a network, and with one
/// when `net`. The two alternate run by run, so that a busy spell on the
/// (shared, noisy) machine falls on both alike.
fn clone_rows(
    image: &GuestImage,
    mem_mib: u64,
    n: u32,
    runs: usize,
    net: bool,
) -> anyhow::Result<Vec<Row>> {
    let (mut plain, mut with_net) = (Samples::default(), Samples::default());
    for _ in 0..runs {
        plain.run_once(image, mem_mib, n, false)?;
        if net {
            with_net.run_once(image, mem_mib, n, true)?;
        }
    }
    let floor = fork_floor(mem_mib, n, runs)?;
    let mut rows = vec![plain.row(mem_mib, n, false, floor)];
    if net {
        rows.push(with_net.row(mem_mib, n, true, floor));
    }
    Ok(rows)
}

pub fn main(a: CloneBenchArgs) -> anyhow::Result<u8> {
    if a.runs == 0 || a.mem_mib.is_empty() || a.clones.is_empty() || a.clones.contains(&0) {
        bail!("--runs, --mem-mib and --clones need positive values");
    }
    let image = crate::run::shipped("forktest")?;
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .unwrap_or_default()
        .trim()
        .to_string();
    eprintln!(
        "bench clone: {} runs per row; transparent hugepages: {thp}",
        a.runs
    );
    let qemu_bin = if a.no_qemu {
        None
    } else {
        Some(super::qemu::ensure_installed()?)
    };
    let scratch = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for &mem in &a.mem_mib {
        let qemu_restore = match &qemu_bin {
            Some(q) => {
                eprintln!(
                    "  {mem:>5} MiB: QEMU saves the same guest, then restores it {} times...",
                    a.runs
                );
                let snap = super::qemu_snapshot::save(q, scratch.path(), mem)?;
                let mut times = Vec::new();
                for i in 0..a.runs {
                    times.push(ms(snap.restore(i)?));
                }
                Some((median(&times), snap.bytes as f64 / (1 << 20) as f64))
            }
            None => None,
        };
        for &n in &a.clones {
            let t = std::time::Instant::now();
            for mut row in clone_rows(&image, mem, n, a.runs, a.net)? {
                row.qemu_restore_ms_median = qemu_restore.map(|q| q.0);
                row.qemu_state_mib = qemu_restore.map(|q| q.1);
                rows.push(row);
            }
            eprintln!(
                "  {mem:>5} MiB x {n:>2} clones{}: done in {:.1} s",
                if a.net {
                    ", with and without --net"
                } else {
                    ""
                },
                t.elapsed().as_secs_f64()
            );
        }
    }
    print_table(&rows);
    if let Some(path) = &a.json {
        let res = Results {
            transparent_hugepages: thp,
            host_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rows,
        };
        std::fs::write(path, serde_json::to_string_pretty(&res)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        let png = path.with_extension("png");
        super::plot::write_png(&chart(&res.rows), &png)
            .with_context(|| format!("cannot write {}", png.display()))?;
        eprintln!("wrote {} and {}", path.display(), png.display());
    }
    Ok(0)
}

fn print_table(rows: &[Row]) {
    println!();
    println!("clone benchmark: medians; times from the clone request, ms");
    println!(
        "{:>7} {:>6} {:>4} {:>9} {:>11} {:>11} {:>10} {:>12} {:>8} {:>9} {:>8} {:>12} {:>8}",
        "mem MiB",
        "clones",
        "net",
        "resumed",
        "1st clone",
        "last clone",
        "fork floor",
        "N x floor",
        "ratio",
        "desc B",
        "MiB/clone",
        "QEMU restore",
        "/no-net"
    );
    for r in rows {
        println!(
            "{:>7} {:>6} {:>4} {:>9.3} {:>11.3} {:>11.3} {:>10.3} {:>12.3} {:>8.2} {:>9} {:>8.2} {:>12} {:>8}",
            r.mem_mib,
            r.clones,
            if r.net { "yes" } else { "no" },
            r.parent_resumed_ms_median,
            r.first_clone_first_instr_ms_median,
            r.clone_first_instr_ms_median,
            r.fork_floor_ms_median,
            r.clones as f64 * r.fork_floor_ms_median,
            r.ratio_vs_floor,
            r.descriptor_bytes,
            r.extra_rss_per_clone_mib_median,
            r.qemu_restore_ms_median
                .map_or("-".into(), |q| format!("{q:.1}")),
            net_ratio(rows, r).map_or("-".into(), |q| format!("{q:.2}"))
        );
    }
    println!("ratio = last clone's first instruction / (clones x fork floor); the goal is <= 1.5 at 1 clone, <= 2 at 32");
    if rows.iter().any(|r| r.net) {
        println!("/no-net = last clone's first instruction with a family network / the same row without, same run; the goal is <= 1.2");
    }
    println!("QEMU restore = one QEMU process restoring the same guest (all memory touched) from its saved state to running");
}

/// A `--net` row's clone latency against the same row without a network.
fn net_ratio(rows: &[Row], r: &Row) -> Option<f64> {
    let plain = rows
        .iter()
        .find(|p| !p.net && p.mem_mib == r.mem_mib && p.clones == r.clones)?;
    r.net
        .then(|| r.clone_first_instr_ms_median / plain.clone_first_instr_ms_median)
}

fn chart(rows: &[Row]) -> super::plot::Chart {
    use super::plot::{Chart, Series};
    let colors = [
        [31, 119, 180],
        [214, 39, 40],
        [44, 160, 44],
        [148, 103, 189],
        [255, 127, 14],
        [23, 190, 207],
    ];
    let mut series = Vec::new();
    let mut mems: Vec<u64> = rows.iter().map(|r| r.mem_mib).collect();
    mems.dedup();
    for (i, m) in mems.iter().enumerate() {
        let pts_of = |net: bool, f: &dyn Fn(&Row) -> f64| {
            rows.iter()
                .filter(|r| r.mem_mib == *m && r.net == net)
                .map(|r| (r.clones as f64, f(r)))
                .collect::<Vec<_>>()
        };
        let pts = |f: &dyn Fn(&Row) -> f64| pts_of(false, f);
        series.push(Series {
            name: format!("clones {m}M"),
            rgb: colors[(2 * i) % colors.len()],
            points: pts(&|r| r.clone_first_instr_ms_median),
        });
        let with_net = pts_of(true, &|r| r.clone_first_instr_ms_median);
        if !with_net.is_empty() {
            series.push(Series {
                name: format!("clones+net {m}M"),
                rgb: colors[(2 * i + 4) % colors.len()],
                points: with_net,
            });
        }
        series.push(Series {
            name: format!("N*fork {m}M"),
            rgb: colors[(2 * i + 1) % colors.len()],
            points: pts(&|r| r.clones as f64 * r.fork_floor_ms_median),
        });
    }
    Chart {
        title: "VM clone latency vs number of clones".into(),
        x_label: "clones".into(),
        y_label: "ms from request".into(),
        log_x: true,
        series,
    }
}

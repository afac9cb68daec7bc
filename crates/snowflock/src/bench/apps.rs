//! `snowflock bench apps`: the application guests (`align`, `render`,
//! `price`) on one VM, on N local clones and on N clones on namespace hosts
//! (as `bench remote`). Per row: the guest's wall time (first share to
//! merged answer), the speedup over one VM doing the same shares, the ideal
//! speedup for the cores this machine has, the warm-up penalty (each
//! clone's time for its share over the same share's time on the warm
//! parent, measured in the same run: the guest's `warm=1` pass), whether
//! the answer equals one VM's, and what remote clones fetched.

use super::apps_run::{run_vm, Fetch, Run};
use super::cpu::cores_busy_pct;
use super::remote::Testbed;
use super::stats::{max, median};
use anyhow::{bail, Context};
use serde::Serialize;
use sf_api::Placement;
use sf_vmm::inputs::InputSpec;
use sf_vmm::VmConfig;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Single,
    Local,
    Remote,
}

#[derive(clap::Args)]
pub struct AppsBenchArgs {
    /// Applications, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "align,render,price")]
    apps: Vec<String>,
    /// Modes, comma separated (remote needs root for network namespaces).
    #[arg(long, value_delimiter = ',', default_value = "single,local,remote")]
    modes: Vec<Mode>,
    /// Clone counts, comma separated. With one clone the clone runs alone,
    /// as the warm parent did: its penalty is the warm-up cost and nothing
    /// else (with more clones than free cores it also holds CPU sharing).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    clones: Vec<u32>,
    /// Repetitions of each configuration (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 1024)]
    mem_mib: u64,
    /// align: size of the FASTA database in MiB.
    #[arg(long, default_value_t = 256)]
    db_mib: u64,
    /// align: queries searched.
    #[arg(long, default_value_t = 32)]
    queries: u32,
    /// render: image width, height and samples per pixel per axis. The
    /// default makes the job seconds long (1280x960 with 3x3 samples: 9x
    /// the work of the README's 640x480x2 image, 3.7 MB of pixels): at
    /// 640x480x2 one VM took 185 ms, and a clone's start and end (7-9 ms
    /// each at load 6-8) and the parent's PNG encoding (7-11 ms) made up a
    /// fifth of a two-clone run.
    #[arg(long, value_delimiter = 'x', default_value = "1280x960x3")]
    image: Vec<u32>,
    /// price: Monte-Carlo paths (64 steps each).
    #[arg(long, default_value_t = 2_000_000)]
    paths: u64,
    /// Cores available to the clones (default: this machine's).
    #[arg(long)]
    cores: Option<u32>,
    /// Hosts for remote mode, the origin included.
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// Shape every host's link with a token bucket, e.g. 1gbit.
    #[arg(long)]
    rate: Option<String>,
    /// Write the rows as JSON to this file, and a plot next to it
    /// (FILE.png).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct Row {
    pub app: String,
    pub mode: Mode,
    /// Clones (0 for one VM).
    pub clones: u32,
    /// Shares of the job (one VM computes them one after another).
    pub shares: usize,
    pub runs: usize,
    pub wall_ms: f64,
    pub speedup: f64,
    pub ideal_speedup: f64,
    pub warmup_penalty_median: Option<f64>,
    pub warmup_penalty_max: Option<f64>,
    pub result_matches: bool,
    /// The whole VM run on the host (boot, warm pass, clones), median.
    pub vm_ms: f64,
    /// CPU time of the VMM and its local clones over `vm_ms` (median): the
    /// cores the run really got. Remote clones run under other hosts'
    /// daemons and are not counted.
    pub cores_used: f64,
    pub clone_share_ms_median: Option<f64>,
    pub parent_share_ms_median: Option<f64>,
    /// Remote clones: per clone, medians over runs.
    pub pages_fetched_per_clone: Option<f64>,
    pub bytes_fetched_per_clone: Option<f64>,
    pub faults_per_clone: Option<f64>,
    pub zero_local_pages_per_clone: Option<f64>,
    pub multicast_pages_per_clone: Option<f64>,
    pub fault_latency_p50_us: Option<f64>,
    /// Where the wall time goes (medians, ms): the parent's clone calls,
    /// its joins, the join's wait beyond the slowest clone's share (clone
    /// start, exit, report; one-round runs only), and render's assembly
    /// and PNG encoding.
    pub clone_call_ms_median: Option<f64>,
    pub join_wait_ms_median: Option<f64>,
    pub join_beyond_share_ms_median: Option<f64>,
    pub assemble_ms_median: Option<f64>,
    pub encode_ms_median: Option<f64>,
    /// Local clones: request to a clone's first vCPU entry, and from the
    /// last report to the join's end (the VMM's clone timeline).
    pub clone_start_ms_median: Option<f64>,
    pub reported_to_joined_ms_median: Option<f64>,
    /// What bounds the clones: the machine's busy CPU time from the clone
    /// request to the join (remote clones, their hosts and the memory
    /// holder included: every namespace host shares these cores), and the
    /// share of the cores' time it filled (medians).
    pub join_cpu_busy_ms_median: Option<f64>,
    pub join_cores_busy_pct: Option<f64>,
}

#[derive(Serialize)]
struct Results {
    cores: u32,
    mem_mib: u64,
    hosts: usize,
    rate: Option<String>,
    /// One-minute load average when the benchmark started (other work on
    /// the machine inflates the clones' times).
    load_average: Option<f64>,
    rows: Vec<Row>,
}

/// The guest arguments of `app` (without the driver's) and its inputs:
/// align's database is written by `gen-fasta` into `dir`.
fn app_args(
    a: &AppsBenchArgs,
    app: &str,
    dir: &std::path::Path,
) -> anyhow::Result<(String, Vec<InputSpec>)> {
    Ok(match app {
        "align" => {
            let path = dir.join("db.fa");
            let spec = crate::gen_fasta::GenFastaArgs {
                out: path.clone(),
                mib: a.db_mib,
                seed: 1,
                queries: a.queries as usize,
                qlen: 100,
                plant_every: 50,
            };
            let t = std::time::Instant::now();
            let bytes = crate::gen_fasta::write(&path, &spec)?;
            eprintln!(
                "bench apps: align database of {:.1} MiB written in {:.2} s",
                bytes as f64 / (1 << 20) as f64,
                t.elapsed().as_secs_f64()
            );
            let input = InputSpec {
                name: "db".into(),
                path,
            };
            (format!("seed=1 queries={}", a.queries), vec![input])
        }
        "render" => match a.image[..] {
            [w, h, ss] => (format!("w={w} h={h} ss={ss}"), vec![]),
            _ => bail!("--image takes WxHxSS, e.g. 640x480x2"),
        },
        "price" => (format!("paths={} steps=64 seed=1", a.paths), vec![]),
        other => bail!("no application {other:?}: align, render or price"),
    })
}

pub fn main(a: AppsBenchArgs) -> anyhow::Result<u8> {
    if a.runs == 0 || a.clones.is_empty() || a.clones.contains(&0) || a.modes.is_empty() {
        bail!("--runs and --clones need positive values, --modes at least one mode");
    }
    let cores = a
        .cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    let mut bed = None;
    if a.modes.contains(&Mode::Remote) {
        eprintln!(
            "bench apps: {} hosts (origin + {} clone hosts)",
            a.hosts,
            a.hosts - 1
        );
        let mut b = Testbed::up(a.hosts, a.rate.as_deref())?;
        b.enter_host1()?;
        b.start_daemons(true)?;
        bed = Some(b);
    }
    let scratch = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for app in &a.apps {
        let (args, inputs) = app_args(&a, app, scratch.path())?;
        let image = crate::run::shipped(app)?;
        for &n in &a.clones {
            let mut single: Option<(f64, String)> = None;
            for &mode in &[Mode::Single, Mode::Local, Mode::Remote] {
                if !a.modes.contains(&mode) {
                    continue;
                }
                let cmdline = match mode {
                    Mode::Single => format!("{args} split={n}"),
                    _ => format!("{args} clones={n} warm=1"),
                };
                let cfg = VmConfig {
                    mem_size: a.mem_mib << 20,
                    cmdline,
                    inputs: inputs.clone(),
                    max_clones: n.max(sf_vmm::default_max_clones()),
                    timeout: Some(Duration::from_secs(1800)),
                    remote: match (mode, &bed) {
                        (Mode::Remote, Some(b)) => {
                            Some(b.link_from_host_1(Placement::Remote, None))
                        }
                        _ => None,
                    },
                    ..Default::default()
                };
                let mut runs = Vec::new();
                for i in 0..a.runs {
                    let r = run_vm(app, &image, &cfg)?;
                    eprintln!(
                        "  {app:<6} {:<6} x{n:<2} run {}/{}: wall {:.1} ms, vm {:.1} ms, answer {}",
                        format!("{mode:?}").to_lowercase(),
                        i + 1,
                        a.runs,
                        r.wall_ms,
                        r.vm_ms,
                        r.answer
                    );
                    runs.push(r);
                }
                let row = summarize(app, mode, n, cores, &runs, &mut single)?;
                rows.push(row);
            }
        }
    }
    print_table(&rows, cores);
    if let Some(path) = &a.json {
        let plot = plot_path(path);
        write_plot(&rows, cores, &plot)?;
        let res = Results {
            cores,
            mem_mib: a.mem_mib,
            hosts: a.hosts,
            rate: a.rate.clone(),
            load_average,
            rows,
        };
        std::fs::write(path, serde_json::to_string_pretty(&res)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {} and {}", path.display(), plot.display());
    }
    Ok(0)
}

/// One row from the runs of one configuration; `single` carries one VM's
/// (wall, answer) from the single row to the clone rows.
fn summarize(
    app: &str,
    mode: Mode,
    n: u32,
    cores: u32,
    runs: &[Run],
    single: &mut Option<(f64, String)>,
) -> anyhow::Result<Row> {
    let walls: Vec<f64> = runs.iter().map(|r| r.wall_ms).collect();
    let wall = median(&walls);
    let answers_agree = runs.iter().all(|r| r.answer == runs[0].answer);
    if mode == Mode::Single {
        *single = Some((wall, runs[0].answer.clone()));
    }
    let (single_wall, single_answer) = single
        .clone()
        .context("clone modes are compared with one VM: keep `single` in --modes")?;
    let penalties: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.shares.iter().map(|(c, p)| c / p))
        .filter(|x| x.is_finite())
        .collect();
    let opt = |v: f64| v.is_finite().then_some(v);
    let clone_ms: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.shares.iter().map(|s| s.0))
        .collect();
    let parent_ms: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.shares.iter().map(|s| s.1))
        .collect();
    let per_clone = |f: fn(&Fetch) -> u64| -> Option<f64> {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.fetch.clones > 0)
            .map(|r| f(&r.fetch) as f64 / r.fetch.clones as f64)
            .collect();
        opt(median(&v))
    };
    let part = |f: fn(&Run) -> f64| opt(median(&runs.iter().map(f).collect::<Vec<_>>()));
    let one_round = runs[0].share_count == n as usize;
    Ok(Row {
        clone_call_ms_median: part(|r| r.parts.clone_call_ms),
        join_wait_ms_median: part(|r| r.parts.join_wait_ms),
        join_beyond_share_ms_median: if one_round {
            part(|r| r.parts.join_wait_ms - max(&r.shares.iter().map(|s| s.0).collect::<Vec<_>>()))
        } else {
            None
        },
        assemble_ms_median: part(|r| r.parts.assemble_ms),
        encode_ms_median: part(|r| r.parts.encode_ms),
        clone_start_ms_median: part(|r| r.parts.clone_start_ms),
        reported_to_joined_ms_median: part(|r| r.parts.reported_to_joined_ms),
        join_cpu_busy_ms_median: part(|r| r.join_busy_ms),
        join_cores_busy_pct: part(|r| cores_busy_pct(r.join_busy_ms, r.join_ms)),
        app: app.into(),
        mode,
        clones: if mode == Mode::Single { 0 } else { n },
        shares: runs[0].share_count,
        runs: runs.len(),
        wall_ms: wall,
        speedup: single_wall / wall,
        ideal_speedup: if mode == Mode::Single {
            1.0
        } else {
            n.min(cores) as f64
        },
        warmup_penalty_median: opt(median(&penalties)),
        warmup_penalty_max: (!penalties.is_empty()).then(|| max(&penalties)),
        result_matches: answers_agree && runs[0].answer == single_answer,
        vm_ms: median(&runs.iter().map(|r| r.vm_ms).collect::<Vec<_>>()),
        cores_used: median(&runs.iter().map(|r| r.cores_used).collect::<Vec<_>>()),
        clone_share_ms_median: opt(median(&clone_ms)),
        parent_share_ms_median: opt(median(&parent_ms)),
        pages_fetched_per_clone: per_clone(|f| f.pages_fetched),
        bytes_fetched_per_clone: per_clone(|f| f.bytes),
        faults_per_clone: per_clone(|f| f.faults),
        zero_local_pages_per_clone: per_clone(|f| f.zero_local_pages),
        multicast_pages_per_clone: per_clone(|f| f.multicast_pages),
        fault_latency_p50_us: per_clone(|f| f.fault_p50_us_sum),
    })
}

fn plot_path(json: &std::path::Path) -> PathBuf {
    let mut s = json.as_os_str().to_owned();
    s.push(".png");
    PathBuf::from(s)
}

fn print_table(rows: &[Row], cores: u32) {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    println!();
    println!("applications on clones ({cores} cores): medians");
    println!(
        "{:<7} {:<7} {:>6} {:>10} {:>8} {:>6} {:>9} {:>8} {:>7} {:>10} {:>6}",
        "app",
        "mode",
        "clones",
        "wall ms",
        "speedup",
        "ideal",
        "penalty",
        "pen max",
        "match",
        "MB fetch",
        "cores"
    );
    for r in rows {
        println!(
            "{:<7} {:<7} {:>6} {:>10.1} {:>8.2} {:>6.1} {:>9} {:>8} {:>7} {:>10} {:>6}",
            r.app,
            format!("{:?}", r.mode).to_lowercase(),
            r.clones,
            r.wall_ms,
            r.speedup,
            r.ideal_speedup,
            f(r.warmup_penalty_median),
            f(r.warmup_penalty_max),
            r.result_matches,
            r.bytes_fetched_per_clone
                .map_or("-".into(), |b| format!("{:.1}", b / 1e6)),
            if r.mode == Mode::Remote {
                "-".into()
            } else {
                format!("{:.2}", r.cores_used)
            },
        );
    }
    println!("targets: match everywhere; penalty <= 1.05 local, <= 1.2 remote; speedup within 10% of ideal");
    println!();
    println!("where the wall time goes (ms, medians): join+ = join wait beyond the slowest share,");
    println!("start = clone request to a local clone's first vCPU entry, end = last report to join's end");
    println!(
        "{:<7} {:<7} {:>6} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "app",
        "mode",
        "clones",
        "wall",
        "share",
        "clone",
        "join",
        "join+",
        "start",
        "end",
        "assemble",
        "encode",
        "cpu%"
    );
    for r in rows {
        println!(
            "{:<7} {:<7} {:>6} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
            r.app,
            format!("{:?}", r.mode).to_lowercase(),
            r.clones,
            r.wall_ms,
            f(r.clone_share_ms_median),
            f(r.clone_call_ms_median),
            f(r.join_wait_ms_median),
            f(r.join_beyond_share_ms_median),
            f(r.clone_start_ms_median),
            f(r.reported_to_joined_ms_median),
            f(r.assemble_ms_median),
            f(r.encode_ms_median),
            r.join_cores_busy_pct
                .map_or("-".into(), |p| format!("{p:.0}")),
        );
    }
    println!("cores: CPU time of the VMM and its local clones over the run's wall time");
    println!("cpu% = the machine's busy share of its cores from the clone request to the join (remote clones and their hosts share them): near 100, the cores bound the clones");
}

fn write_plot(rows: &[Row], cores: u32, path: &std::path::Path) -> anyhow::Result<()> {
    use super::plot::{write_png, Chart, Series};
    const COLORS: [[u8; 3]; 6] = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
    ];
    let mut series: Vec<Series> = Vec::new();
    for r in rows.iter().filter(|r| r.mode != Mode::Single) {
        let name = format!("{} {:?}", r.app, r.mode).to_lowercase();
        let i = match series.iter().position(|s| s.name == name) {
            Some(i) => i,
            None => {
                series.push(Series {
                    name,
                    rgb: COLORS[series.len() % COLORS.len()],
                    points: Vec::new(),
                });
                series.len() - 1
            }
        };
        series[i].points.push((r.clones as f64, r.speedup));
    }
    let most = rows.iter().map(|r| r.clones).max().unwrap_or(1).max(1);
    series.push(Series {
        name: format!("ideal ({cores} cores)"),
        rgb: [120, 120, 120],
        points: (1..=most)
            .map(|n| (n as f64, n.min(cores) as f64))
            .collect(),
    });
    let chart = Chart {
        title: "bench apps: speedup over one VM".into(),
        x_label: "clones".into(),
        y_label: "speedup".into(),
        log_x: false,
        series,
    };
    write_png(&chart, path).with_context(|| format!("cannot write {}", path.display()))
}

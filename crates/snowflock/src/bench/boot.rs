//! `snowflock bench boot`: how fast a guest boots, here and under QEMU.

use super::qemu::{self, time_process};
use super::stats::{max, median, min};
use anyhow::{bail, Context};
use serde::Serialize;
use sf_vmm::{BootMode, Vm, VmConfig};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

#[derive(clap::Args)]
pub struct BootBenchArgs {
    /// Repetitions of each measurement (medians are reported).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Guest RAM for every VM (ours and QEMU's), in MiB.
    #[arg(long, default_value_t = 256)]
    mem_mib: u64,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Skip the QEMU comparison (the table then lacks the reference).
    #[arg(long)]
    no_qemu: bool,
}

const MARKER: &[u8] = b"Hello from a SnowFlock guest!";
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Serialize, Default)]
struct Results {
    runs: usize,
    mem_mib: u64,
    ours_vm_create_ms_median: f64,
    ours_first_instr_ms_median: f64,
    ours_pvh_first_instr_ms_median: f64,
    ours_first_output_ms_median: f64,
    ours_run_ms_median: f64,
    ours_run_ms_min: f64,
    ours_run_ms_max: f64,
    qemu_version: Option<String>,
    qemu_first_output_ms_median: Option<f64>,
    qemu_run_ms_median: Option<f64>,
    qemu_run_ms_min: Option<f64>,
    qemu_run_ms_max: Option<f64>,
    /// qemu_run_ms_median / ours_run_ms_median (above 1: we are faster).
    run_speedup_vs_qemu: Option<f64>,
    first_output_speedup_vs_qemu: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// In-process boots: VM create and first ring-3 instruction.
fn in_process(args: &BootBenchArgs, mode: BootMode) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let image = crate::run::shipped("hello")?;
    let cfg = VmConfig {
        mem_size: args.mem_mib << 20,
        boot: mode,
        timeout: Some(PROCESS_TIMEOUT),
        ..Default::default()
    };
    let (mut create, mut first) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let mut vm = Vm::new(&cfg, &image)?;
        let mut out = Vec::new();
        let r = vm.run(&mut out)?;
        if !r.outcome.is_clean_exit() || !out.starts_with(MARKER) {
            bail!(
                "hello did not run cleanly in-process ({mode}): {}",
                r.outcome
            );
        }
        create.push(ms(r.timings.create_vm));
        first.push(r.timings.first_instruction.map_or(f64::NAN, ms));
    }
    Ok((create, first))
}

/// Whole processes: (first output, total) per run, checked for the marker.
fn processes(
    runs: usize,
    make: impl Fn() -> Command,
    what: &str,
    ok_status: i32,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut first, mut total) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let r = time_process(make(), PROCESS_TIMEOUT)?;
        if r.status != Some(ok_status) || !r.stdout.windows(MARKER.len()).any(|w| w == MARKER) {
            bail!(
                "{what} did not boot hello cleanly (exit status {:?}, output {:?})",
                r.status,
                String::from_utf8_lossy(&r.stdout[..r.stdout.len().min(200)])
            );
        }
        first.push(r.first_output.map_or(f64::NAN, ms));
        total.push(ms(r.total));
    }
    Ok((first, total))
}

pub fn main(args: BootBenchArgs) -> anyhow::Result<u8> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut res = Results {
        runs: args.runs,
        mem_mib: args.mem_mib,
        ..Default::default()
    };
    eprintln!(
        "bench boot: {} runs each, {} MiB guests",
        args.runs, args.mem_mib
    );

    eprintln!("  in-process boots (direct entry)...");
    let (create, first) = in_process(&args, BootMode::Direct)?;
    res.ours_vm_create_ms_median = median(&create);
    res.ours_first_instr_ms_median = median(&first);
    eprintln!("  in-process boots (PVH entry)...");
    res.ours_pvh_first_instr_ms_median = median(&in_process(&args, BootMode::Pvh)?.1);

    eprintln!("  `snowflock run hello` as a process...");
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let mem = format!("{}M", args.mem_mib);
    let (first, total) = processes(
        args.runs,
        || {
            let mut c = Command::new(&exe);
            c.args(["run", "hello", "--mem", &mem]);
            c
        },
        "snowflock run",
        0,
    )?;
    res.ours_first_output_ms_median = median(&first);
    res.ours_run_ms_median = median(&total);
    res.ours_run_ms_min = min(&total);
    res.ours_run_ms_max = max(&total);

    let mut _dir = None;
    if !args.no_qemu {
        let qemu_bin = qemu::ensure_installed()?;
        res.qemu_version = Command::new(&qemu_bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_owned)
            });
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let elf = dir.path().join("hello.elf");
        std::fs::write(&elf, sf_images::find("hello").expect("hello ships").elf)?;
        eprintln!(
            "  QEMU booting the same hello.elf ({})...",
            res.qemu_version.as_deref().unwrap_or("unknown version")
        );
        // isa-debug-exit turns the guest's exit(0) into QEMU status 1.
        let (first, total) = processes(
            args.runs,
            || qemu::command(&qemu_bin, &elf, args.mem_mib),
            "QEMU",
            1,
        )?;
        res.qemu_first_output_ms_median = Some(median(&first));
        res.qemu_run_ms_median = Some(median(&total));
        res.qemu_run_ms_min = Some(min(&total));
        res.qemu_run_ms_max = Some(max(&total));
        res.run_speedup_vs_qemu = Some(median(&total) / res.ours_run_ms_median);
        res.first_output_speedup_vs_qemu = Some(median(&first) / res.ours_first_output_ms_median);
        _dir = Some(dir);
    }

    print_table(&res);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&res)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(0)
}

fn print_table(r: &Results) {
    let q = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    println!();
    println!(
        "boot benchmark: medians of {} runs, {} MiB guest, guest = hello",
        r.runs, r.mem_mib
    );
    println!(
        "{:<46} {:>10} {:>10}",
        "measurement (ms)", "snowflock", "qemu"
    );
    println!(
        "{:<46} {:>10.3} {:>10}",
        "VM create (KVM VM + RAM + vCPU)", r.ours_vm_create_ms_median, "-"
    );
    println!(
        "{:<46} {:>10.3} {:>10}",
        "first ring-3 instruction, direct entry", r.ours_first_instr_ms_median, "-"
    );
    println!(
        "{:<46} {:>10.3} {:>10}",
        "first ring-3 instruction, PVH entry", r.ours_pvh_first_instr_ms_median, "-"
    );
    println!(
        "{:<46} {:>10.2} {:>10}",
        "process start -> first console byte",
        r.ours_first_output_ms_median,
        q(r.qemu_first_output_ms_median)
    );
    println!(
        "{:<46} {:>10.2} {:>10}",
        "process start -> exit (whole run)",
        r.ours_run_ms_median,
        q(r.qemu_run_ms_median)
    );
    if let Some(s) = r.run_speedup_vs_qemu {
        println!(
            "whole run: snowflock is {s:.1}x faster than QEMU ({})",
            r.qemu_version.as_deref().unwrap_or("?")
        );
    }
}

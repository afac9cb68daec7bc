//! `snowflock demo`: a guest forks itself into N clones that each compute a
//! slice of a Monte-Carlo estimate of pi; the parent joins and adds up. The
//! answer is checked against one VM computing the same slices alone, and
//! the timeline shows where the time went.

use anyhow::{bail, Context};
use sf_vmm::clone::process::memory_usage;
use sf_vmm::{CloneStatus, GuestImage, RunReport, Vm, VmConfig};
use std::io::Write;
use std::time::Duration;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// How many clones the guest asks for.
    #[arg(long, default_value_t = 8)]
    clones: u32,
    /// Monte-Carlo samples in total (split across the clones).
    #[arg(long, default_value_t = 400_000_000)]
    samples: u64,
    /// Guest RAM.
    #[arg(long, default_value = "256M", value_parser = crate::units::parse_size)]
    mem: u64,
}

/// Writes to stdout and keeps a copy.
struct Tee(Vec<u8>);

impl Write for Tee {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().write_all(b)?;
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// The values of `pi: inside=X samples=S slices=K` from the parent's output.
fn parse_answer(out: &str) -> Option<(u64, u64, u64)> {
    let line = out.lines().find(|l| l.starts_with("pi: inside="))?;
    let mut v = line
        .split_whitespace()
        .skip(1)
        .map(|kv| kv.split_once('=').and_then(|(_, v)| v.parse().ok()));
    Some((v.next()??, v.next()??, v.next()??))
}

fn computed_ms(out: &str) -> Option<f64> {
    let l = out.lines().find(|l| l.starts_with("computed in "))?;
    l.trim_start_matches("computed in ")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn run(
    image: &GuestImage,
    mem: u64,
    cmdline: String,
    max_clones: u32,
    out: &mut dyn Write,
) -> anyhow::Result<RunReport> {
    let cfg = VmConfig {
        mem_size: mem,
        cmdline,
        max_clones,
        timeout: Some(Duration::from_secs(600)),
        ..Default::default()
    };
    let mut vm = Vm::new(&cfg, image).context("cannot start the VM")?;
    let report = vm.run(out)?;
    if !report.outcome.is_clean_exit() || report.outcome.exit_code() != 0 {
        bail!("the guest did not finish cleanly: {}", report.outcome);
    }
    Ok(report)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn main(a: DemoArgs) -> anyhow::Result<u8> {
    if a.clones == 0 {
        bail!("--clones must be at least 1");
    }
    let image = crate::run::shipped("pi")?;
    println!("== SnowFlock demo: the `pi` guest forks into {} clones; each samples a slice, the parent joins", a.clones);
    println!(
        "== guest command line: samples={} clones={}\n",
        a.samples, a.clones
    );
    let mut tee = Tee(Vec::new());
    let report = run(
        &image,
        a.mem,
        format!("samples={} clones={}", a.samples, a.clones),
        a.clones.max(1),
        &mut tee,
    )?;
    let (rss_parent, _) = memory_usage();
    let out = String::from_utf8_lossy(&tee.0).into_owned();
    let Some((inside, samples, slices)) = parse_answer(&out) else {
        bail!("the guest printed no answer")
    };

    println!("\n== checking against one VM computing the same {slices} slices alone...");
    let mut reference = Vec::new();
    run(
        &image,
        a.mem,
        format!("samples={samples} split={slices}"),
        1,
        &mut reference,
    )?;
    let reference = String::from_utf8_lossy(&reference).into_owned();
    let Some((ref_inside, _, _)) = parse_answer(&reference) else {
        bail!("the reference run printed no answer")
    };
    let same = ref_inside == inside;
    println!(
        "   forked: {inside} inside in {:.0} ms; single VM: {ref_inside} inside in {:.0} ms -> {}",
        computed_ms(&out).unwrap_or(f64::NAN),
        computed_ms(&reference).unwrap_or(f64::NAN),
        if same { "same answer" } else { "MISMATCH" }
    );

    print_timeline(&report, rss_parent);
    if !same {
        bail!("the forked answer ({inside}) differs from the single-VM answer ({ref_inside})");
    }
    Ok(0)
}

fn print_timeline(r: &RunReport, rss_parent: u64) {
    let t = &r.timings;
    println!("\n== timeline (ms since the VMM started building the VM)");
    println!(
        "   {:>9.3}  VM created (KVM VM, guest RAM, vCPU)",
        ms(t.create_vm)
    );
    if let Some(f) = t.first_instruction {
        println!("   {:>9.3}  guest's first ring-3 instruction", ms(f));
    }
    for c in &r.clones {
        let at = ms(c.requested_at);
        println!(
            "   {at:>9.3}  clone request: ticket {} granted {} clones (descriptor {} bytes)",
            c.ticket, c.granted, c.descriptor_bytes
        );
        println!(
            "   {:>9.3}  parent resumed (+{:.3} ms)",
            at + ms(c.request_to_resumed),
            ms(c.request_to_resumed)
        );
        let mut firsts: Vec<f64> = c
            .clones
            .iter()
            .filter_map(|s| s.first_entry.map(ms))
            .collect();
        firsts.sort_by(f64::total_cmp);
        if let (Some(lo), Some(hi)) = (firsts.first(), firsts.last()) {
            println!(
                "   {:>9.3}  first clone's first instruction (+{lo:.3} ms)",
                at + lo
            );
            println!(
                "   {:>9.3}  last clone's first instruction (+{hi:.3} ms)",
                at + hi
            );
        }
        if let Some(j) = c.request_to_joined {
            println!(
                "   {:>9.3}  join complete: all clones reported (+{:.1} ms)",
                at + ms(j),
                ms(j)
            );
        }
        for s in &c.clones {
            let first = s
                .first_entry
                .map_or("-".into(), |d| format!("+{:.3} ms", ms(d)));
            let status = match s.status {
                CloneStatus::Exited => format!("exited {}", s.code),
                other => format!("{other:?}: {}", s.detail),
            };
            println!(
                "              clone {:>2}: first instruction {first:>12}, {status}, private memory {:.1} MiB",
                s.id,
                s.private_bytes as f64 / (1 << 20) as f64
            );
        }
        let private: u64 = c.clones.iter().map(|s| s.private_bytes).sum();
        println!(
            "   memory: parent VMM resident {:.1} MiB; clones private {:.1} MiB in all ({:.2} MiB per clone; the rest is shared copy-on-write)",
            rss_parent as f64 / (1 << 20) as f64,
            private as f64 / (1 << 20) as f64,
            private as f64 / (1 << 20) as f64 / c.clones.len().max(1) as f64
        );
    }
    println!("   {:>9.3}  guest exited", ms(t.total));
}

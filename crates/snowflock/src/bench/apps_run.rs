//! One run of an application guest for `bench apps`: the VM, and what its
//! console and clone timelines say (wall time, answer, each share's time on
//! its clone and on the warm parent, memory fetched by remote clones).

use anyhow::{bail, Context};
use sf_vmm::{CloneStatus, GuestImage, Vm, VmConfig};
use std::time::Instant;

/// What one run measured.
#[derive(Debug, Default)]
pub struct Run {
    /// The guest's own time from its first share to the merged answer.
    pub wall_ms: f64,
    /// The whole VM run as the host saw it (boot, warm pass, clones).
    pub vm_ms: f64,
    /// CPU time of this process and its reaped children (the VMM and its
    /// local clones) over `vm_ms`: the cores the run really got.
    pub cores_used: f64,
    pub answer: String,
    /// Shares of the job (`share S/N` lines).
    pub share_count: usize,
    /// Per share: (time on its clone, time on the warm parent), ms.
    pub shares: Vec<(f64, f64)>,
    /// Summed over the run's remote clones.
    pub fetch: Fetch,
    /// Where the guest's wall time went, ms (NaN when not printed).
    pub parts: Parts,
    /// From each clone request to its join, summed over the run's clone
    /// calls: the time, and the machine's busy CPU time over it (every
    /// namespace host shares this machine's cores). NaN without clones.
    pub join_ms: f64,
    pub join_busy_ms: f64,
}

/// The serial parts of a run the guest times itself: the parent's clone
/// calls and joins (clones only), and render's image assembly and PNG
/// encoding after the shares.
#[derive(Clone, Copy, Debug)]
pub struct Parts {
    pub clone_call_ms: f64,
    pub join_wait_ms: f64,
    pub assemble_ms: f64,
    pub encode_ms: f64,
    /// From the clone request to a local clone's first vCPU entry (median
    /// over the run's local clones), from the VMM's timeline.
    pub clone_start_ms: f64,
    /// From the last local report to the join's end (reading the reports,
    /// waiting for the clone processes to end), summed over clone calls.
    pub reported_to_joined_ms: f64,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            clone_call_ms: f64::NAN,
            join_wait_ms: f64::NAN,
            assemble_ms: f64::NAN,
            encode_ms: f64::NAN,
            clone_start_ms: f64::NAN,
            reported_to_joined_ms: f64::NAN,
        }
    }
}

/// Memory remote clones fetched, summed over clones.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fetch {
    pub clones: u64,
    pub faults: u64,
    pub pages_fetched: u64,
    pub bytes: u64,
    pub zero_local_pages: u64,
    pub multicast_pages: u64,
    pub fault_p50_us_sum: u64,
}

pub fn run_vm(app: &str, image: &GuestImage, cfg: &VmConfig) -> anyhow::Result<Run> {
    let mut out = Vec::new();
    let sampler = super::cpu::CpuSampler::start(std::time::Duration::from_millis(10));
    let cpu0 = cpu_ms();
    let began = Instant::now();
    let report = Vm::new(cfg, image)?.run(&mut out)?;
    let vm_ms = began.elapsed().as_secs_f64() * 1e3;
    let cores_used = (cpu_ms() - cpu0) / vm_ms;
    let text = String::from_utf8_lossy(&out);
    if report.outcome.exit_code() != 0 {
        bail!("{app} failed ({}): {}\n{text}", cfg.cmdline, report.outcome);
    }
    let mut fetch = Fetch::default();
    let mut starts = Vec::new();
    let mut reported_to_joined = 0.0;
    let (mut join_ms, mut join_busy_ms) = (f64::NAN, f64::NAN);
    for t in &report.clones {
        if let (Some(r), Some(j)) = (t.request_to_reported, t.request_to_joined) {
            reported_to_joined += j.saturating_sub(r).as_secs_f64() * 1e3;
        }
        if let Some(joined) = t.request_to_joined {
            let from = began + t.requested_at;
            let busy = sampler
                .window(from, from + joined)
                .map_or(f64::NAN, |w| w.busy_ms);
            join_ms = join_ms.max(0.0) + joined.as_secs_f64() * 1e3;
            join_busy_ms = join_busy_ms.max(0.0) + busy;
        }
        starts.extend(
            t.clones
                .iter()
                .filter(|c| !c.remote)
                .filter_map(|c| Some(c.first_entry?.as_secs_f64() * 1e3)),
        );
        for c in &t.clones {
            if c.status != CloneStatus::Exited {
                bail!("{app}: clone {} ended {:?}: {}", c.id, c.status, c.detail);
            }
            if let Some(m) = c.memory.as_ref().filter(|_| c.remote) {
                fetch.clones += 1;
                fetch.faults += m.faults;
                fetch.pages_fetched += m.pages_fetched;
                fetch.bytes += m.bytes_received;
                fetch.zero_local_pages += m.zero_local_pages;
                fetch.multicast_pages += m.multicast_pages;
                fetch.fault_p50_us_sum += m.fault_latency_p50_us;
            }
        }
    }
    let mut run = parse_console(app, &text)
        .with_context(|| format!("{app} ({}) printed no result:\n{text}", cfg.cmdline))?;
    run.vm_ms = vm_ms;
    run.cores_used = cores_used;
    if !starts.is_empty() {
        run.parts.clone_start_ms = super::stats::median(&starts);
        run.parts.reported_to_joined_ms = reported_to_joined;
    }
    run.fetch = fetch;
    (run.join_ms, run.join_busy_ms) = (join_ms, join_busy_ms);
    Ok(run)
}

/// User and system CPU time of this process and of its children that were
/// waited for, in ms (the root VMM reaps every local clone before it ends).
fn cpu_ms() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage writes one struct rusage into `u`, which we own.
        let u = unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(who, &mut u);
            u
        };
        for tv in [u.ru_utime, u.ru_stime] {
            total += tv.tv_sec as f64 * 1e3 + tv.tv_usec as f64 / 1e3;
        }
    }
    total
}

/// The `APP: ...` lines of the console (see the sf-shares driver).
pub fn parse_console(app: &str, text: &str) -> Option<Run> {
    let head = format!("{app}: ");
    let mut run = Run::default();
    let mut wall = None;
    for line in text.lines().filter_map(|l| l.strip_prefix(&head)) {
        let field = |k: &str| -> Option<f64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse::<f64>().ok())
                .map(|ns| ns / 1e6)
        };
        let p = &mut run.parts;
        for (key, slot) in [
            ("clone_call_ns=", &mut p.clone_call_ms),
            ("join_wait_ns=", &mut p.join_wait_ms),
            ("assemble_ns=", &mut p.assemble_ms),
            ("encode_ns=", &mut p.encode_ms),
        ] {
            if let Some(ms) = field(key) {
                *slot = ms;
            }
        }
        if let Some(v) = line.strip_prefix("wall_ns=") {
            wall = v.trim().parse::<f64>().ok();
        }
        if let Some(v) = line.split("answer=").nth(1) {
            run.answer = v.trim().to_string();
        }
        if let Some(n) = line
            .strip_prefix("share ")
            .and_then(|l| l.split_whitespace().next()?.split('/').nth(1)?.parse().ok())
        {
            run.share_count = n;
        }
        if line.starts_with("share ") && line.contains("clone_ns=") {
            run.shares
                .push((field("clone_ns=")?, field("ref_ns=").unwrap_or(f64::NAN)));
        }
    }
    run.wall_ms = wall? / 1e6;
    (!run.answer.is_empty()).then_some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_read() {
        let text = "price: granted=2 of 2 clones, 2 shares\n\
            price: share 1/2 clone_ns=3000000 ref_ns=1500000 match=yes\n\
            price: share 2/2 clone_ns=2000000 ref_ns=2000000 match=yes\n\
            price: clone_call_ns=2500000 join_wait_ns=3100000\n\
            price: wall_ns=3011518305\nprice: paths=10 answer=c1483b99f8c02a42\n\
            other: wall_ns=1\n";
        let r = parse_console("price", text).unwrap();
        assert_eq!(r.answer, "c1483b99f8c02a42");
        assert!((r.wall_ms - 3011.518305).abs() < 1e-6);
        assert_eq!(r.shares, vec![(3.0, 1.5), (2.0, 2.0)]);
        assert_eq!(r.share_count, 2);
        assert_eq!((r.parts.clone_call_ms, r.parts.join_wait_ms), (2.5, 3.1));
        assert!(r.parts.encode_ms.is_nan());
        let single = parse_console(
            "render",
            "render: share 1/15 ns=5\nrender: wall_ns=9\nrender: answer=ab\n\
             render: assemble_ns=1000000 encode_ns=6000000\n",
        )
        .unwrap();
        assert_eq!(single.share_count, 15);
        assert_eq!(
            (single.parts.assemble_ms, single.parts.encode_ms),
            (1.0, 6.0)
        );
        assert!(parse_console("price", "price: wall_ns=5\n").is_none());
        assert!(parse_console("align", text).is_none());
    }
}

//! The machine's busy CPU time over a stretch of a benchmark run, from
//! `/proc/stat`. The namespace hosts of `bench remote` share this
//! machine's cores, so the busy time between a clone call and its join
//! says whether the cores bound the join: busy time / cores is the
//! shortest the join could have taken with every busy millisecond spread
//! perfectly over them. The context switches over the same window show
//! what the cores spent beyond the guests' own work (each costs MSR
//! reads on this nested hypervisor).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Busy and total CPU time of all cores, in clock ticks (USER_HZ), and
/// context switches since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ticks {
    pub busy: u64,
    pub total: u64,
    pub switches: u64,
}

/// What the machine did over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Busy CPU time of all cores together.
    pub busy_ms: f64,
    pub switches: f64,
}

/// The first line of `/proc/stat` (`cpu  user nice system idle iowait irq
/// softirq steal guest guest_nice`): idle and iowait are not busy; guest
/// time is already inside user and nice, so it is not added again.
pub fn parse_stat(stat: &str) -> Option<Ticks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    let idle = v[3] + v[4];
    let total: u64 = v[..8].iter().sum();
    let switches = stat
        .lines()
        .find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
        .unwrap_or(0);
    Some(Ticks {
        busy: total - idle,
        total,
        switches,
    })
}

/// The cores `/proc/stat` sums over (its `cpuN` lines).
pub fn machine_cores() -> f64 {
    let listed = std::fs::read_to_string("/proc/stat").map_or(0, |s| {
        s.lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count()
    });
    if listed > 0 {
        listed as f64
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
    }
}

/// The share of the machine's cores, in percent, that `busy_ms` of CPU
/// time filled over `wall_ms`.
pub fn cores_busy_pct(busy_ms: f64, wall_ms: f64) -> f64 {
    100.0 * busy_ms / (machine_cores() * wall_ms)
}

fn read_ticks() -> Option<Ticks> {
    parse_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Samples the machine's CPU ticks from a thread of its own until dropped.
pub struct CpuSampler {
    samples: Arc<Mutex<Vec<(Instant, Ticks)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    ms_per_tick: f64,
}

impl CpuSampler {
    /// Samples every `every` (10 ms: one tick at USER_HZ 100, so a window
    /// is found within a tick at either end).
    pub fn start(every: Duration) -> CpuSampler {
        // The first sample before returning: every window the caller
        // opens afterwards has one before it.
        let first = read_ticks().map(|t| (Instant::now(), t));
        let samples = Arc::new(Mutex::new(first.into_iter().collect::<Vec<_>>()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("bench-cpu".into())
            .spawn(move || {
                while !st.load(Relaxed) {
                    if let Some(t) = read_ticks() {
                        s.lock().expect("cpu samples").push((Instant::now(), t));
                    }
                    std::thread::sleep(every);
                }
            })
            .ok();
        // SAFETY: sysconf only reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        CpuSampler {
            samples,
            stop,
            thread,
            ms_per_tick: 1e3 / if hz > 0 { hz as f64 } else { 100.0 },
        }
    }

    /// What the machine did between `from` and `to`: the rates between
    /// the last sample at or before `from` and the first at or after `to`,
    /// over the window's length (so a window shorter than the sampling
    /// step is not charged a whole step). `None` without samples on both
    /// sides.
    pub fn window(&self, from: Instant, to: Instant) -> Option<Window> {
        let mut s = self.samples.lock().expect("cpu samples");
        // A window that just ended is closed by a sample taken here (the
        // sampling thread may not have run since, on busy cores).
        if s.last().is_none_or(|l| l.0 < to) && Instant::now() >= to {
            s.extend(read_ticks().map(|t| (Instant::now(), t)));
        }
        let a = s.iter().rev().find(|(t, _)| *t <= from)?;
        let b = s.iter().find(|(t, _)| *t >= to)?;
        let span = b.0.checked_duration_since(a.0)?.as_secs_f64();
        if span <= 0.0 {
            return None;
        }
        let part = to.saturating_duration_since(from).as_secs_f64() / span;
        Some(Window {
            busy_ms: b.1.busy.saturating_sub(a.1.busy) as f64 * self.ms_per_tick * part,
            switches: b.1.switches.saturating_sub(a.1.switches) as f64 * part,
        })
    }
}

impl Drop for CpuSampler {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_and_iowait_and_counts_guest_once() {
        let stat =
            "cpu  100 5 50 1000 20 3 2 1 40 0\ncpu0 50 2 25 500 10 1 1 0 20 0\nintr 7\nctxt 4242\n";
        // 100 + 5 + 50 + 3 + 2 + 1 busy; idle 1000 + iowait 20.
        assert_eq!(
            parse_stat(stat),
            Some(Ticks {
                busy: 161,
                total: 1181,
                switches: 4242,
            })
        );
        assert_eq!(parse_stat("cpu0 1 2 3\n"), None);
        assert_eq!(parse_stat("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn a_busy_loop_shows_as_busy_time() {
        let s = CpuSampler::start(Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(30));
        let from = Instant::now();
        while from.elapsed() < Duration::from_millis(300) {
            std::hint::black_box(0u64.wrapping_add(1));
        }
        let to = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        // One core spinning for 300 ms: at least 200 ms busy (ticks at
        // either end of the samples around it), never more than all cores
        // over the window (longer than 300 ms if the loop was preempted),
        // plus a tick and a sample at either end.
        let busy = s.window(from, to).expect("samples").busy_ms;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let most = (to - from).as_secs_f64() * 1000.0 + 40.0;
        assert!(busy >= 200.0 && busy <= most * cores, "{busy}");
        // Nothing sampled after a window: no answer rather than a guess.
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(s.window(from, later), None);
    }
}

//! Flow control of the holder's multicast (mcdist's second idea): clone
//! hosts report their losses and backlog over their page connection
//! ([`Report`]), and the holder paces its bulk pushes (the recorded
//! working set) to the slowest *healthy* receiver, additive increase and
//! multiplicative decrease. A receiver that keeps losing is served by
//! unicast already ([`super::lockstep::LossyReceiver`]); its reports do
//! not slow the group down.

use super::protocol::{REPORT_FLAG, REQUEST_LEN, UNICAST_FLAG};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Fastest push, pages per second (1 GiB/s: more than any link here).
pub const MAX_PPS: u64 = 262_144;
/// Slowest push (8 MiB/s): a push never stops altogether.
pub const MIN_PPS: u64 = 2_048;
/// Bytes queued in a receiver's multicast socket beyond which it is
/// falling behind (an eighth of the 64 MiB buffer clone hosts ask for).
pub const BACKLOG_LIMIT: u64 = 8 << 20;
/// Pages sent per pacing step (one sleep per step, not per page).
pub const STEP_PAGES: u32 = 16;
/// Largest loss count a report carries (the bits below the flags).
pub const MAX_REPORTED_LOST: u32 = REPORT_FLAG - 1;

/// A receiver's report: datagrams lost since its last report, and bytes
/// queued in its multicast socket. Sent as a request frame with
/// [`REPORT_FLAG`] set; the holder does not answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    pub lost: u32,
    pub backlog_bytes: u64,
}

impl Report {
    /// Clamps `lost` to what the frame can carry.
    pub fn new(lost: u64, backlog_bytes: u64) -> Report {
        Report {
            lost: lost.min(u64::from(MAX_REPORTED_LOST)) as u32,
            backlog_bytes,
        }
    }

    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..8].copy_from_slice(&self.backlog_bytes.to_le_bytes());
        let pages = (self.lost & MAX_REPORTED_LOST) | REPORT_FLAG;
        b[8..12].copy_from_slice(&pages.to_le_bytes());
        b
    }

    /// A report if the frame is one (report flag set, unicast flag clear).
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Option<Report> {
        let pages = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if pages & REPORT_FLAG == 0 || pages & UNICAST_FLAG != 0 {
            return None;
        }
        Some(Report {
            lost: pages & MAX_REPORTED_LOST,
            backlog_bytes: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
        })
    }
}

/// The holder's push rate, shared by its connections (reports) and its
/// pushing thread (`pace`).
pub struct Pacer {
    pps: AtomicU64,
    next: Mutex<Instant>,
}

impl Default for Pacer {
    fn default() -> Pacer {
        Pacer {
            pps: AtomicU64::new(MAX_PPS),
            next: Mutex::new(Instant::now()),
        }
    }
}

impl Pacer {
    /// Pages per second now.
    pub fn rate(&self) -> u64 {
        self.pps.load(Relaxed)
    }

    /// A report from a receiver; `healthy`: not one served by unicast
    /// only. Losses or a backlog halve the rate, a clean report raises it
    /// by an eighth (plus the floor), within [`MIN_PPS`, `MAX_PPS`].
    pub fn report(&self, r: Report, healthy: bool) {
        if !healthy {
            return;
        }
        let behind = r.lost > 0 || r.backlog_bytes > BACKLOG_LIMIT;
        let _ = self.pps.fetch_update(Relaxed, Relaxed, |pps| {
            let next = if behind {
                pps / 2
            } else {
                pps.saturating_add(pps / 8 + MIN_PPS)
            };
            Some(next.clamp(MIN_PPS, MAX_PPS))
        });
    }

    /// How long `pages` pages take at the current rate.
    fn step(&self, pages: u32) -> Duration {
        Duration::from_nanos(u64::from(pages) * 1_000_000_000 / self.rate().max(1))
    }

    /// Waits for the turn of the next `pages` pages.
    pub fn pace(&self, pages: u32) {
        let at = {
            let mut next = self.next.lock().expect("pacer lock");
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + self.step(pages);
            at
        };
        let wait = at.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::protocol::Request;

    #[test]
    fn reports_round_trip_and_never_pass_for_requests() {
        let r = Report::new(u64::MAX, 12345);
        assert_eq!(r.lost, MAX_REPORTED_LOST);
        assert_eq!(Report::decode(&r.encode()), Some(r));
        let req = Request {
            offset: 4096,
            pages: 8,
        };
        assert_eq!(Report::decode(&req.encode()), None);
        assert_eq!(
            Report::decode(&req.encode_as(crate::remote::protocol::Ask::Unicast)),
            None
        );
        let mut both = r.encode();
        both[11] |= 0x80;
        assert_eq!(Report::decode(&both), None, "both flags: neither");
    }

    #[test]
    fn the_rate_follows_the_slowest_healthy_receiver_within_bounds() {
        let p = Pacer::default();
        assert_eq!(p.rate(), MAX_PPS);
        p.report(Report::new(3, 0), true);
        assert_eq!(p.rate(), MAX_PPS / 2);
        // A receiver served by unicast does not slow the group.
        p.report(Report::new(1000, u64::MAX), false);
        assert_eq!(p.rate(), MAX_PPS / 2);
        p.report(Report::new(0, BACKLOG_LIMIT + 1), true);
        assert_eq!(p.rate(), MAX_PPS / 4);
        for _ in 0..64 {
            p.report(Report::new(1, 0), true);
        }
        assert_eq!(p.rate(), MIN_PPS);
        for _ in 0..256 {
            p.report(Report::new(0, 0), true);
        }
        assert_eq!(p.rate(), MAX_PPS);
    }

    #[test]
    fn pacing_spaces_the_steps_at_the_rate() {
        let p = Pacer::default();
        for _ in 0..64 {
            p.report(Report::new(1, 0), true);
        }
        // 2,048 pages/s: 8 steps of 16 pages are 62.5 ms.
        let t = Instant::now();
        for _ in 0..9 {
            p.pace(STEP_PAGES);
        }
        assert!(
            t.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t.elapsed()
        );
    }
}

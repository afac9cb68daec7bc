//! Lockstep detection in the memory holder (mcdist's first idea): clones of
//! one parent fault the same pages at about the same time, so a page is
//! sent once, to the group's multicast, and every clone host that asks for
//! it while it is on its way is told "pushed" and waits for the datagram
//! instead of getting its own copy over TCP.
//!
//! [`PushLog`] keeps, per page, when it was last pushed. A page pushed less
//! than [`IN_FLIGHT_MS`] ago is on its way and is not pushed again; every
//! request gets a "pushed" answer (a page map, no data) once its pages are
//! pushed or on their way. A clone host whose push
//! never arrived asks again with the unicast flag after its own bound
//! (`PUSH_WAIT` in the fault handler) and gets the page over TCP; one that
//! keeps losing ([`LossyReceiver`]) is served by unicast from then on, so a
//! stalled receiver never holds the others back.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Instant;

/// How long after its push a page counts as on its way. The clone hosts'
/// links are shaped with a token bucket whose queue holds a packet at most
/// 50 ms (`scripts/cluster.sh`, `latency 50ms`); a datagram not delivered by
/// then was dropped, so a request after that deserves a new push. The UDP
/// send buffer (208 KiB) blocks the sender long before the queue fills, so
/// in practice a push reaches the wire within 2 ms at 1 Gbit/s.
pub const IN_FLIGHT_MS: u32 = 60;

/// A receiver that fell back to unicast this many times, for more than a
/// quarter of the pushed answers it got, is served by unicast from then on
/// (mcdist's end-game): its losses come from its own host (a full socket
/// buffer while its CPU is busy), and pushing to it only doubles the wait.
pub const LOSSY_FALLBACKS: u32 = 8;

/// When each page of the served region was last pushed (ms since the log
/// began, plus one; 0 = never).
pub struct PushLog {
    epoch: Instant,
    at: Vec<AtomicU32>,
}

impl PushLog {
    pub fn new(pages: usize) -> PushLog {
        PushLog {
            epoch: Instant::now(),
            at: (0..pages).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The log's clock, in ms (one reading per request).
    pub fn now(&self) -> u32 {
        (self.epoch.elapsed().as_millis() as u32).saturating_add(1)
    }

    fn in_flight_at(stamp: u32, now: u32) -> bool {
        stamp != 0 && now.saturating_sub(stamp) < IN_FLIGHT_MS
    }

    /// Claims `page` for a push at `now`: true if the caller must send it,
    /// false if it is on its way already (another connection claimed it).
    pub fn claim(&self, page: usize, now: u32) -> bool {
        let Some(a) = self.at.get(page) else {
            return false;
        };
        let mut cur = a.load(Relaxed);
        loop {
            if Self::in_flight_at(cur, now) {
                return false;
            }
            match a.compare_exchange_weak(cur, now, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }
}

impl PushLog {
    /// Claims `page` for a push only if it was never pushed: the pages a
    /// unicast-served receiver asks for are usually ones its siblings got
    /// long ago, and pushing them again would cost every host a datagram.
    pub fn claim_new(&self, page: usize, now: u32) -> bool {
        self.at
            .get(page)
            .is_some_and(|a| a.compare_exchange(0, now, Relaxed, Relaxed).is_ok())
    }
}

/// One connection's record of pushed answers and unicast fallbacks.
#[derive(Default)]
pub struct LossyReceiver {
    pushed: u32,
    fallbacks: u32,
}

impl LossyReceiver {
    pub fn pushed(&mut self) {
        self.pushed = self.pushed.saturating_add(1);
    }

    pub fn fell_back(&mut self) {
        self.fallbacks = self.fallbacks.saturating_add(1);
    }

    /// Whether this receiver is served by unicast from now on.
    pub fn unicast_only(&self) -> bool {
        self.fallbacks >= LOSSY_FALLBACKS && self.fallbacks.saturating_mul(4) > self.pushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_claimed_once_while_in_flight_and_again_after() {
        let log = PushLog::new(8);
        assert!(log.claim(3, 10));
        assert!(!log.claim(3, 10), "on its way");
        assert!(!log.claim(3, 10 + IN_FLIGHT_MS - 1));
        assert!(log.claim(3, 10 + IN_FLIGHT_MS), "lost by now: push again");
        assert!(!log.claim(8, 10), "outside the region");
        assert!(log.claim(4, 10));
        assert!(!log.claim_new(3, 1000), "pushed before");
        assert!(log.claim_new(5, 1000));
        assert!(!log.claim_new(5, 1000));
    }

    #[test]
    fn a_receiver_that_keeps_losing_is_served_by_unicast() {
        let mut r = LossyReceiver::default();
        for _ in 0..100 {
            r.pushed();
        }
        for _ in 0..LOSSY_FALLBACKS {
            r.fell_back();
        }
        assert!(!r.unicast_only(), "8 losses in 100 is a healthy receiver");
        for _ in 0..20 {
            r.fell_back();
        }
        assert!(r.unicast_only());
    }
}

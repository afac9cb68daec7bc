//! A fault the memory holder answered "pushed" (lockstep detection, see
//! [`crate::remote::lockstep`]): the zero pages of the batch are installed
//! at once, the data pages are awaited from the group's multicast until
//! this host's receiver has read past the answer's `seq_end` (every
//! datagram the holder had sent when it answered), and only the ones still
//! missing then, lost, are fetched by unicast. The wait is bounded
//! ([`PushWait`]), so a dead or stalled receiver costs a fault a bounded
//! delay and one round trip, never a hang.

use super::pushes::Pushes;
use super::{Handler, PAGE, ZERO_PAGES};
use crate::remote::error::RemoteError;
use crate::remote::protocol::{Ask, PageMap, Request};
use crate::remote::PAGE_SIZE;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How long pages may still be missing once the host's receiver has read
/// past `seq_end`: a sibling connection that claimed a page just before
/// this answer may still be sending it (numbered at or past `seq_end`).
/// Past that the datagram was lost, and one unicast round trip (~0.3 ms on
/// the test network) is cheaper than waiting on.
const PUSH_GRACE: Duration = Duration::from_millis(20);
/// How long the receiver may read nothing of the group while it is still
/// short of `seq_end` (the datagrams before it were lost at the tail of a
/// burst, or the receiver died). At 1 Gbit/s a receiver with work to do
/// reads a datagram every ~35 us.
const RECEIVER_STALL: Duration = Duration::from_millis(50);
/// The longest wait however the receiver progresses: a host so far behind
/// is better served by unicast. Measured before this bound existed, with a
/// fixed 20-100 ms timer: one clone host per run at 16-32 clones fell back
/// on 4,084-8,173 pushed pages (the others on 4-12) while its receiver was
/// still reading the datagrams that carried them.
const PUSH_WAIT_MAX: Duration = Duration::from_millis(1000);

/// When a fault waiting for pushed pages gives up on them.
#[derive(Debug)]
pub(super) struct PushWait {
    seq_end: u64,
    start: Instant,
    /// The receiver's `seen` and when it last moved.
    seen: u64,
    moved: Instant,
    /// When the receiver first reached `seq_end`.
    reached: Option<Instant>,
}

impl PushWait {
    pub(super) fn new(seq_end: u64, seen: u64, now: Instant) -> PushWait {
        PushWait {
            seq_end,
            start: now,
            seen,
            moved: now,
            reached: None,
        }
    }

    /// The time to give up at, given the receiver's `seen` (datagrams of
    /// the group read or lost) at `now`.
    pub(super) fn deadline(&mut self, seen: u64, now: Instant) -> Instant {
        if seen != self.seen {
            self.seen = seen;
            self.moved = now;
        }
        let cap = self.start + PUSH_WAIT_MAX;
        if seen >= self.seq_end {
            let reached = *self.reached.get_or_insert(now);
            return (reached + PUSH_GRACE).min(cap);
        }
        (self.moved + RECEIVER_STALL).min(cap)
    }
}

impl Handler {
    /// Installs the zero pages of `map` (the batch from page `first`),
    /// waits for its data pages to arrive by multicast, and fetches the
    /// missing ones by unicast.
    pub(super) fn await_pushed(
        &mut self,
        first: u64,
        map: PageMap,
        seq_end: u64,
        bytes: usize,
        write_fault: bool,
    ) -> Result<(), RemoteError> {
        let shared = self.shared.clone();
        let c = &shared.counters;
        c.bytes_received.fetch_add(bytes as u64, Relaxed);
        c.pushed_answers.fetch_add(1, Relaxed);
        for (run, pages, has_data) in map.runs() {
            if has_data {
                continue;
            }
            let (page, pages) = (first + u64::from(run), u64::from(pages));
            c.zero_pages.fetch_add(pages, Relaxed);
            c.pages_fetched.fetch_add(pages, Relaxed);
            self.mark_present(page, pages);
            if run == 0 && write_fault {
                // A writer would take one more copy-on-write fault on the
                // shared zero page at once.
                self.install(page, 1, Some(&ZERO_PAGES[..PAGE_SIZE]))?;
                if pages > 1 {
                    self.install(page + 1, pages - 1, None)?;
                }
            } else {
                self.install(page, pages, None)?;
            }
        }
        self.wait_for_pushes(first, &map, seq_end);
        let mut i = 0;
        while i < map.pages() {
            if !self.missing(first, &map, i) {
                i += 1;
                continue;
            }
            let mut n = 1;
            while i + n < map.pages() && self.missing(first, &map, i + n) {
                n += 1;
            }
            let at = first + u64::from(i);
            self.shared
                .counters
                .push_timeouts
                .fetch_add(u64::from(n), Relaxed);
            let req = Request {
                offset: at * PAGE,
                pages: n,
            };
            let batch = self.request(req, Ask::Unicast)?;
            self.install_batch(at, u64::from(n), batch, write_fault && i == 0)?;
            i += n;
        }
        if self.mapped {
            // Pushed pages came into the host's cache, not through an
            // install that wakes: the faulting thread retries now.
            self.wake(first, u64::from(map.pages()));
        }
        Ok(())
    }

    /// Page `i` of the batch from `first` has data and is not here yet.
    fn missing(&self, first: u64, map: &PageMap, i: u32) -> bool {
        map.has_data(i) && !self.present.get(first + u64::from(i))
    }

    /// Installs pushed pages as they come until every data page of `map` is
    /// here or [`PushWait`] gives up on them.
    fn wait_for_pushes(&mut self, first: u64, map: &PageMap, seq_end: u64) {
        let mut wait = PushWait::new(seq_end, self.receiver_seen(), Instant::now());
        loop {
            self.take_multicast();
            if self.degraded || !(0..map.pages()).any(|i| self.missing(first, map, i)) {
                return;
            }
            let Some(fd) = self.multicast.as_ref().map(|m| m.fd()) else {
                return;
            };
            let now = Instant::now();
            let deadline = wait.deadline(self.receiver_seen(), now);
            if now >= deadline {
                return;
            }
            let left = deadline.saturating_duration_since(now);
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
            // SAFETY: one valid pollfd for the duration of the call. An
            // error (EINTR) just means another look.
            unsafe { libc::poll(&mut p, 1, ms) };
        }
    }

    /// The group's datagrams this host has read or lost: the host's
    /// receiver's, or this process's own socket's.
    pub(super) fn receiver_seen(&self) -> u64 {
        match &self.multicast {
            Some(Pushes::Host(h)) => h.view.seen(),
            Some(Pushes::Own(rx)) => rx.seen(),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_as_long_as_the_receiver_is_behind_and_reading() {
        let t0 = Instant::now();
        let mut w = PushWait::new(1000, 10, t0);
        // Reading, still short of seq_end: well past any fixed timer.
        for step in 1..=20u32 {
            let now = t0 + 10 * MS * step;
            assert_eq!(w.deadline(10 + u64::from(step), now), now + RECEIVER_STALL);
        }
        // Past seq_end: a short grace for a sibling's push still going out.
        let at = t0 + 210 * MS;
        assert_eq!(w.deadline(1000, at), at + PUSH_GRACE);
        assert_eq!(w.deadline(1005, at + 5 * MS), at + PUSH_GRACE);
    }

    #[test]
    fn a_stalled_receiver_is_given_up_on() {
        let t0 = Instant::now();
        let mut w = PushWait::new(1000, 10, t0);
        assert_eq!(w.deadline(10, t0 + 30 * MS), t0 + RECEIVER_STALL);
        assert_eq!(w.deadline(10, t0 + 60 * MS), t0 + RECEIVER_STALL);
    }

    #[test]
    fn the_wait_is_bounded_however_the_receiver_progresses() {
        let t0 = Instant::now();
        let mut w = PushWait::new(u64::MAX, 0, t0);
        let late = t0 + PUSH_WAIT_MAX - MS;
        assert_eq!(w.deadline(7, late), t0 + PUSH_WAIT_MAX);
        // Reaching seq_end near the cap does not extend it either.
        let mut w = PushWait::new(5, 0, t0);
        assert_eq!(w.deadline(5, late), t0 + PUSH_WAIT_MAX);
    }

    #[test]
    fn pages_already_read_past_wait_only_the_grace() {
        let t0 = Instant::now();
        let mut w = PushWait::new(40, 40, t0);
        assert_eq!(w.deadline(40, t0), t0 + PUSH_GRACE);
        assert_eq!(w.deadline(41, t0 + 3 * MS), t0 + PUSH_GRACE);
    }
}

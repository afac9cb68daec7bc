//! A fault the memory holder answered "pushed" (lockstep detection, see
//! [`crate::remote::lockstep`]): the zero pages of the batch are installed
//! at once, the data pages are awaited from the group's multicast, and the
//! ones that did not come within [`PUSH_WAIT`] are fetched by unicast. A
//! lost datagram so costs one bounded wait and one round trip, never more.

use super::pushes::Pushes;
use super::{Handler, PAGE, ZERO_PAGES};
use crate::remote::error::RemoteError;
use crate::remote::host_cache::Word;
use crate::remote::protocol::{PageMap, Request};
use crate::remote::PAGE_SIZE;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How long a fault waits for pushed pages after the holder's "pushed"
/// answer. The holder pushes before it answers, and both leave through the
/// same queue, so the pushes it sent itself are here or lost when the
/// answer comes; the wait covers pushes another connection is still
/// sending: a 64-page batch is 265 KB, 2.1 ms at 1 Gbit/s, and the largest
/// (512 pages) 17 ms. Beyond that the datagram was lost (or this host was
/// too busy to read it in time) and one unicast round trip (~0.3 ms on the
/// test network) is cheaper than waiting on.
pub(super) const PUSH_WAIT: Duration = Duration::from_millis(20);
/// The longest wait while the host's receiver keeps reading datagrams (it
/// serves every clone of the group on the host and may be behind: at 32
/// clones on 3 hosts with the machine loaded, 20 ms fallbacks made the
/// holder serve whole clones by unicast).
const PUSH_WAIT_MAX: Duration = Duration::from_millis(100);

impl Handler {
    /// Installs the zero pages of `map` (the batch from page `first`),
    /// waits for its data pages to arrive by multicast, and fetches the
    /// missing ones by unicast.
    pub(super) fn await_pushed(
        &mut self,
        first: u64,
        map: PageMap,
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
        self.wait_for_pushes(first, &map);
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
            let batch = self.request(req, true)?;
            self.install_batch(at, u64::from(n), batch, write_fault && i == 0)?;
            i += n;
        }
        Ok(())
    }

    /// Page `i` of the batch from `first` has data and is not here yet.
    fn missing(&self, first: u64, map: &PageMap, i: u32) -> bool {
        map.has_data(i) && !self.present.get(first + u64::from(i))
    }

    /// Installs pushed pages as they come until every data page of `map` is
    /// here or [`PUSH_WAIT`] has passed; longer (up to [`PUSH_WAIT_MAX`])
    /// while the host's receiver is still reading datagrams: then the
    /// pages are likely queued behind others, not lost.
    fn wait_for_pushes(&mut self, first: u64, map: &PageMap) {
        let start = Instant::now();
        let mut deadline = start + PUSH_WAIT;
        let mut progress = self.receiver_progress();
        loop {
            self.take_multicast();
            if self.degraded || !(0..map.pages()).any(|i| self.missing(first, map, i)) {
                return;
            }
            let Some(fd) = self.multicast.as_ref().map(|m| m.fd()) else {
                return;
            };
            let now = Instant::now();
            if now >= deadline {
                let p = self.receiver_progress();
                if p == progress || now >= start + PUSH_WAIT_MAX {
                    return;
                }
                progress = p;
                deadline = now + PUSH_WAIT;
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

    /// Datagrams the host's receiver has read so far (0 without one: a
    /// clone that receives itself reads them in `take_multicast`).
    fn receiver_progress(&self) -> u64 {
        match &self.multicast {
            Some(Pushes::Host(h)) => h.view.get(Word::Received),
            _ => 0,
        }
    }
}

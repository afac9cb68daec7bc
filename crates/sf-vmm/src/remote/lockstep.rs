//! Lockstep detection in the memory holder (mcdist's first idea): clones of
//! one parent fault the same pages at about the same time, so a page is
//! sent once, to the group's multicast, and every clone host that asks for
//! it while it is on its way is told "pushed" and waits for the datagram
//! instead of getting its own copy over TCP.
//!
//! Only pages the clones *share* are worth a push: a clone that reads its
//! own part of memory (a database split across clones) would otherwise
//! have every host receive every clone's part. [`Sharing`] watches each
//! [`CHUNK_PAGES`] chunk of the region: a chunk is private, and served by
//! unicast alone, until a second connection asks for a page in it within
//! [`SHARE_WINDOW_MS`] of the one before; from then on it is shared for
//! [`SHARE_LEASE_MS`] (renewed each time another connection asks), and
//! its pages are pushed when first asked. Pushing ahead of a scan lends
//! the chunks ahead the lease of the chunk it came from, so clones in step
//! keep getting pushes without each chunk's first batch going by unicast
//! first. Only a lease a chunk earned itself is lent on, never a lent one:
//! the chain goes on while other clones keep asking (each chunk earns its
//! own lease from their "pushed" answers), and a single scan that merely
//! started in a shared chunk (where two clones' parts meet) stops being
//! pushed within the batches pushed ahead of it.
//!
//! A clone that runs ahead of its siblings (they wait for a CPU: 16 clones
//! share 2 cores here) would still get every chunk by unicast first, each
//! pushed again when the others catch up: twice the bytes. So a connection
//! that scanned a chunk (asked there for [`SCAN_PAGES`] pages or more at
//! once: a readahead grown on a scan, not the few common pages every clone
//! touches first) in which another one then asks is *followed*: the next
//! [`FOLLOWED_CHUNKS`] chunks it enters within [`SHARE_WINDOW_MS`] are
//! shared at once. Each detection in one of its chunks renews that credit;
//! a clone reading its own part after a few common pages (program, stack)
//! spends it on at most [`FOLLOWED_CHUNKS`] chunks pushed in vain.
//!
//! [`PushLog`] keeps, per page, when it was last pushed. A page pushed less
//! than [`IN_FLIGHT_MS`] ago is on its way and is not pushed again; every
//! request gets a "pushed" answer (a page map, no data) once its pages are
//! pushed or on their way. A clone host whose push
//! never arrived asks again with the unicast flag after its own bound
//! (`PUSH_WAIT` in the fault handler) and gets the page over TCP; one that
//! keeps losing ([`LossyReceiver`]) is served by unicast for a probation
//! that doubles each time it turns lossy again, so a stalled receiver never
//! holds the others back and a receiver that lost a burst once (a busy
//! moment on its host) is not lost to multicast for the rest of the run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Mutex;
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

/// How long a receiver that turned lossy is served by unicast alone before
/// it gets pushed answers again; each later turn doubles it, up to
/// [`LOSSY_PROBATION_MAX_MS`]. A marking that never lapsed cost the origin
/// 24-29 MB of TCP per marked clone at 32 clones (2 of 6 runs sent 160 and
/// 194 MB where the others sent 72-83 MB; every such run had 3-5 clones
/// marked, the others none): a clone marked early fetched nearly all of
/// its 64 MiB by TCP while its host's receiver had recovered long before.
pub const LOSSY_PROBATION_MS: u32 = 500;

/// The longest probation: a receiver that loses everything is tried again
/// at most every 16 s, at the price of [`LOSSY_FALLBACKS`] pushed answers.
pub const LOSSY_PROBATION_MAX_MS: u32 = 16_000;

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
        self.claim_unless_within(page, now, IN_FLIGHT_MS)
    }

    /// Claims `page` unless it was pushed less than `ms` ago. The
    /// working-set push starts again for each clone that joins, and must
    /// resend only what went out before that clone could hear it: with 16
    /// clones joining within a second, claiming pages pushed 60 ms ago
    /// sent the 16,405-page set 10 times over (160,000 pages in 24 s).
    pub fn claim_unless_within(&self, page: usize, now: u32, ms: u32) -> bool {
        let Some(a) = self.at.get(page) else {
            return false;
        };
        let mut cur = a.load(Relaxed);
        loop {
            if cur != 0 && now.saturating_sub(cur) < ms {
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

    /// Whether every page of `first..first + pages` is on its way (pushed
    /// less than [`IN_FLIGHT_MS`] ago): the asker only has to wait for it.
    pub fn all_in_flight(&self, first: usize, pages: usize, now: u32) -> bool {
        pages > 0
            && (first..first + pages).all(|p| {
                self.at
                    .get(p)
                    .is_some_and(|a| Self::in_flight_at(a.load(Relaxed), now))
            })
    }
}

/// Pages per chunk of the sharing detector: 2 MiB, the largest batch a
/// clone asks for ([`super::MAX_BATCH_PAGES`]). A chunk shared by chance
/// (two clones' parts meet in it) costs at most one chunk pushed in vain.
pub const CHUNK_PAGES: usize = 512;
/// A chunk turns shared when a second connection asks for a page in it
/// within this long of the previous asker. Clones in step ask within tens
/// of ms of each other (the first instructions of 16 clones spread over 40
/// to 120 ms in `bench remote` on a busy machine), but a clone that waited for a CPU, or started
/// a second late, still gains from one push for both; clones working on
/// their own parts meet at most in the chunk where the parts join (one
/// chunk, and the few its owner then enters as followed).
pub const SHARE_WINDOW_MS: u32 = 3000;
/// How long a chunk stays shared after the last time a second connection
/// asked in it (a detection or a renewal).
pub const SHARE_LEASE_MS: u32 = 1000;

/// Chunks a followed connection may enter as shared before a sibling asks
/// there: in step, one chunk in `FOLLOWED_CHUNKS + 1` at most goes to the
/// leader by unicast first (a quarter more bytes at worst); alone, at most
/// this many chunks (6 MiB) are pushed in vain per detection.
pub const FOLLOWED_CHUNKS: u32 = 3;
/// Smallest request that shows a scan: the fault handler's readahead
/// doubles from 1 page on sequential faults, so 16 pages follow at least
/// four faults in a row.
pub const SCAN_PAGES: u32 = 16;
/// Followed connections remembered at most (ids of closed connections are
/// forgotten past this, once their credit ran out).
const MAX_FOLLOWED: usize = 512;

/// One chunk's state, all in ms of the [`PushLog`] clock (0 = never).
#[derive(Default)]
struct Chunk {
    /// The connection that asked last (its id, truncated; 0 = none).
    asker: AtomicU32,
    asked_at: AtomicU32,
    /// Shared until then, from its own askers.
    shared_until: AtomicU32,
    /// Shared until then, lent by a push ahead of a scan.
    lent_until: AtomicU32,
    /// The connection that last asked here for a scan's batch (0 = none).
    scanner: AtomicU32,
}

/// The sharing detector (see the module comment). Relaxed atomics: two
/// connections racing on one chunk can at worst delay a detection to the
/// next request, never corrupt the state.
pub struct Sharing {
    chunks: Vec<Chunk>,
    /// Followed connections: chunks they may still enter as shared, and
    /// until when.
    followed: Mutex<HashMap<u32, (u32, u32)>>,
}

/// What [`Sharing::on_request`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Some chunk of the request is shared: push, answer "pushed".
    pub shared: bool,
    /// Chunks that turned shared with this request (were not before).
    pub newly_shared: u32,
    /// Chunks this (followed) connection entered as shared.
    pub predicted: u32,
}

impl Sharing {
    pub fn new(pages: usize) -> Sharing {
        Sharing {
            chunks: (0..pages.div_ceil(CHUNK_PAGES))
                .map(|_| Chunk::default())
                .collect(),
            followed: Mutex::new(HashMap::new()),
        }
    }

    /// Another connection asked in a chunk `conn` asked in last.
    fn follow(&self, conn: u32, now: u32) {
        let mut f = self.followed.lock().expect("followed lock");
        if f.len() >= MAX_FOLLOWED {
            f.retain(|_, &mut (left, until)| left > 0 && now < until);
        }
        f.insert(conn, (FOLLOWED_CHUNKS, now + SHARE_WINDOW_MS));
    }

    /// Whether `conn` may enter a new chunk as shared (and spends it).
    fn spend_credit(&self, conn: u32, now: u32) -> bool {
        let mut f = self.followed.lock().expect("followed lock");
        match f.get_mut(&conn) {
            Some((left, until)) if *left > 0 && now < *until => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    fn chunks_of(&self, first: usize, pages: usize) -> std::ops::Range<usize> {
        let end = (first + pages.max(1)).div_ceil(CHUNK_PAGES);
        (first / CHUNK_PAGES).min(self.chunks.len())..end.min(self.chunks.len())
    }

    /// Connection `conn` asks for `pages` pages from `first` at `now`.
    pub fn on_request(&self, conn: u64, first: usize, pages: usize, now: u32) -> Verdict {
        self.on_request_as(conn, first, pages, now, true)
    }

    /// [`Sharing::on_request`]; `may_lead`: whether a scan-sized request
    /// marks its chunk as scanned by `conn`, so that another connection
    /// asking there makes `conn` followed. Not for a stream of pages the
    /// guest announced: two clones each streaming its own half of an input
    /// meet where the halves join, within the share window, and the first
    /// clone's next chunks of its own half were then pushed to both hosts
    /// (`bench apps`, align on two remote clones: 7,066-8,194 pages pushed
    /// per clone and a warm-up penalty of 1.34-1.38, against 3,024-3,104
    /// and 1.23-1.25 with the prediction off).
    pub fn on_request_as(
        &self,
        conn: u64,
        first: usize,
        pages: usize,
        now: u32,
        may_lead: bool,
    ) -> Verdict {
        // Never 0, which means "nobody asked yet".
        let conn = (conn as u32).max(1);
        let mut v = Verdict {
            shared: false,
            newly_shared: 0,
            predicted: 0,
        };
        for c in &self.chunks[self.chunks_of(first, pages)] {
            let until = c.shared_until.load(Relaxed).max(c.lent_until.load(Relaxed));
            let was_shared = now < until;
            let before = c.asker.swap(conn, Relaxed);
            let at = c.asked_at.swap(now, Relaxed);
            // The follower's own request may be small: its readahead starts
            // over where pushes filled the pages before.
            let scanned_by_before = c.scanner.load(Relaxed) == before;
            if may_lead && pages >= SCAN_PAGES as usize {
                c.scanner.store(conn, Relaxed);
            }
            let other_recently =
                before != 0 && before != conn && now.saturating_sub(at) < SHARE_WINDOW_MS;
            let mut predicted = false;
            if other_recently {
                c.shared_until.fetch_max(now + SHARE_LEASE_MS, Relaxed);
                if !was_shared {
                    v.newly_shared += 1;
                }
                if scanned_by_before {
                    self.follow(before, now);
                }
            } else if !was_shared && before != conn && self.spend_credit(conn, now) {
                c.lent_until.fetch_max(now + SHARE_LEASE_MS, Relaxed);
                v.predicted += 1;
                predicted = true;
            }
            v.shared |= was_shared || other_recently || predicted;
        }
        v
    }

    /// The holder pushes `pages` pages from `first` ahead of a scan in a
    /// chunk whose own lease ends at `until`: the chunks ahead are shared
    /// as long as that one is (lent, never extended).
    pub fn lend(&self, first: usize, pages: usize, until: u32) {
        for c in &self.chunks[self.chunks_of(first, pages)] {
            c.lent_until.fetch_max(until, Relaxed);
        }
    }

    /// When the lease the chunk holding `page` earned from its own askers
    /// ends (0: never shared by them); what [`Sharing::lend`] lends on.
    pub fn own_lease(&self, page: usize) -> u32 {
        self.chunks
            .get(page / CHUNK_PAGES)
            .map_or(0, |c| c.shared_until.load(Relaxed))
    }

    /// Whether the chunk holding `page` is shared at `now`, by its own
    /// askers or lent.
    pub fn is_shared(&self, page: usize, now: u32) -> bool {
        self.chunks
            .get(page / CHUNK_PAGES)
            .is_some_and(|c| now < c.shared_until.load(Relaxed).max(c.lent_until.load(Relaxed)))
    }
}

/// Lockstep detection's state in the holder: what was pushed when, and
/// which chunks are shared.
pub struct Lockstep {
    pub log: PushLog,
    pub sharing: Sharing,
}

impl Lockstep {
    pub fn new(pages: usize) -> Lockstep {
        Lockstep {
            log: PushLog::new(pages),
            sharing: Sharing::new(pages),
        }
    }
}

/// One connection's record of pushed answers and unicast fallbacks, and
/// its probation (times in ms on the caller's clock).
#[derive(Default)]
pub struct LossyReceiver {
    pushed: u32,
    fallbacks: u32,
    /// While `Some`, served by unicast until this time.
    unicast_until: Option<u32>,
    /// How many times it turned lossy: the next probation's doubling.
    turns: u32,
}

impl LossyReceiver {
    pub fn pushed(&mut self) {
        self.pushed = self.pushed.saturating_add(1);
    }

    /// Counts a fallback at `now`; true if this one turned the receiver
    /// lossy. Fallbacks during a probation are answers to pushes made
    /// before it and count for nothing.
    pub fn fell_back(&mut self, now: u32) -> bool {
        if self.unicast_only(now) {
            return false;
        }
        self.fallbacks = self.fallbacks.saturating_add(1);
        let lossy =
            self.fallbacks >= LOSSY_FALLBACKS && self.fallbacks.saturating_mul(4) > self.pushed;
        if lossy {
            let probation = LOSSY_PROBATION_MS
                .saturating_mul(1 << self.turns.min(16))
                .min(LOSSY_PROBATION_MAX_MS);
            self.unicast_until = Some(now.saturating_add(probation));
            self.turns = self.turns.saturating_add(1);
        }
        lossy
    }

    /// Whether this receiver is served by unicast at `now`. When its
    /// probation has ended it starts again with a clean record, so it must
    /// lose [`LOSSY_FALLBACKS`] pushes anew to turn lossy again.
    pub fn unicast_only(&mut self, now: u32) -> bool {
        match self.unicast_until {
            Some(until) if now < until => true,
            Some(_) => {
                *self = LossyReceiver {
                    turns: self.turns,
                    ..LossyReceiver::default()
                };
                false
            }
            None => false,
        }
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
        assert!(!log.claim_unless_within(5, 1000 + SHARE_WINDOW_MS - 1, SHARE_WINDOW_MS));
        assert!(log.claim_unless_within(5, 1000 + SHARE_WINDOW_MS, SHARE_WINDOW_MS));
        assert!(
            log.claim_unless_within(6, 5, SHARE_WINDOW_MS),
            "never pushed"
        );
    }

    #[test]
    fn pages_are_in_flight_only_all_together_and_only_for_a_while() {
        let log = PushLog::new(8);
        for p in 2..5 {
            assert!(log.claim(p, 100));
        }
        assert!(log.all_in_flight(2, 3, 100 + IN_FLIGHT_MS - 1));
        assert!(!log.all_in_flight(2, 4, 100), "page 5 was never pushed");
        assert!(
            !log.all_in_flight(2, 3, 100 + IN_FLIGHT_MS),
            "arrived or lost"
        );
        assert!(!log.all_in_flight(7, 2, 100), "past the region");
        assert!(!log.all_in_flight(2, 0, 100));
    }

    #[test]
    fn a_chunk_one_connection_asks_for_stays_private() {
        let s = Sharing::new(4 * CHUNK_PAGES);
        for (i, now) in (1..100).step_by(7).enumerate() {
            let v = s.on_request(1, i * 16, 16, now);
            assert!(!v.shared && v.newly_shared == 0, "{v:?} at {now}");
        }
        // Another connection, in another chunk, at the same time.
        assert!(!s.on_request(2, 2 * CHUNK_PAGES, 512, 100).shared);
        assert_eq!(s.own_lease(0), 0);
    }

    #[test]
    fn a_second_connection_within_the_window_shares_the_chunk_for_the_lease() {
        let s = Sharing::new(4 * CHUNK_PAGES);
        assert!(!s.on_request(1, 10, 4, 50).shared);
        let v = s.on_request(2, 200, 4, 50 + SHARE_WINDOW_MS - 1);
        assert_eq!(
            v,
            Verdict {
                shared: true,
                newly_shared: 1,
                predicted: 0
            }
        );
        let until = 50 + SHARE_WINDOW_MS - 1 + SHARE_LEASE_MS;
        assert_eq!(s.own_lease(300), until);
        // The first one is now told "shared" too, and renews the lease.
        let v = s.on_request(1, 20, 4, 60 + SHARE_WINDOW_MS);
        assert_eq!(
            v,
            Verdict {
                shared: true,
                newly_shared: 0,
                predicted: 0
            }
        );
        assert_eq!(s.own_lease(0), 60 + SHARE_WINDOW_MS + SHARE_LEASE_MS);
        // Once the lease has run out, one connection alone is private again.
        let later = s.own_lease(0);
        assert!(!s.on_request(1, 30, 4, later).shared);
        assert!(!s.on_request(1, 40, 4, later + 1).shared);
    }

    #[test]
    fn a_second_connection_after_the_window_takes_the_chunk_over() {
        let s = Sharing::new(CHUNK_PAGES);
        assert!(!s.on_request(1, 0, 64, 10).shared);
        assert!(!s.on_request(2, 64, 64, 10 + SHARE_WINDOW_MS).shared);
        assert!(!s.on_request(2, 128, 64, 20 + SHARE_WINDOW_MS).shared);
        assert_eq!(s.own_lease(0), 0);
    }

    #[test]
    fn a_request_across_two_chunks_is_shared_if_either_is() {
        let s = Sharing::new(3 * CHUNK_PAGES);
        s.on_request(1, CHUNK_PAGES, 1, 5);
        s.on_request(2, CHUNK_PAGES + 1, 1, 6);
        let v = s.on_request(3, CHUNK_PAGES - 8, 16, 7);
        assert!(v.shared, "{v:?}");
        assert_eq!(v.newly_shared, 0, "chunk 1 was shared already");
        assert_eq!(s.own_lease(0), 0, "chunk 0: only connection 3 asked");
        // Connection ids are truncated to 32 bits, and never read as "none".
        let fresh = Sharing::new(CHUNK_PAGES);
        assert!(!fresh.on_request(1 << 32, 0, 1, 8).shared);
        assert!(fresh.on_request(4, 0, 1, 9).shared);
        // Requests past the region (refused before they get here) are no
        // chunk's business.
        assert!(!s.on_request(5, 3 * CHUNK_PAGES, 512, 10).shared);
    }

    #[test]
    fn a_followed_connection_enters_its_next_chunks_as_shared_for_a_while() {
        let s = Sharing::new(16 * CHUNK_PAGES);
        let chunk = |k: usize| k * CHUNK_PAGES;
        s.on_request(1, chunk(0), 64, 0);
        s.on_request(2, chunk(0), 64, 10);
        // Connection 1 runs ahead: its next chunks are shared at once...
        for (k, now) in [(1, 20), (2, 30), (3, 40)] {
            let v = s.on_request(1, chunk(k), 64, now);
            assert!(v.shared && v.predicted == 1, "chunk {k}: {v:?}");
            assert!(s.on_request(1, chunk(k) + 64, 64, now).shared);
        }
        // ...as many as its credit, then it is private again.
        let v = s.on_request(1, chunk(4), 64, 50);
        assert!(!v.shared && v.predicted == 0, "{v:?}");
        assert!(!s.on_request(1, chunk(4) + 64, 64, 51).shared);
        // A sibling catching up in chunk 4 renews the credit.
        assert!(s.on_request(2, chunk(4), 64, 60).shared);
        assert!(s.on_request(1, chunk(5), 64, 70).shared);
        // Not past the window, and never for one nobody followed.
        assert!(!s.on_request(1, chunk(6), 64, 60 + SHARE_WINDOW_MS).shared);
        for k in 8..12 {
            assert!(!s.on_request(3, chunk(k), 64, 100).shared, "chunk {k}");
        }
        // A few common pages asked by both share their chunk, but make
        // nobody followed.
        s.on_request(3, chunk(12), 2, 200);
        assert!(s.on_request(4, chunk(12), 64, 201).shared);
        assert!(!s.on_request(3, chunk(13), 64, 202).shared);
        // A scan followed by a small request (a readahead starting over)
        // does.
        s.on_request(5, chunk(14), 32, 300);
        assert!(s.on_request(6, chunk(14) + 100, 1, 301).shared);
        assert!(s.on_request(5, chunk(15), 32, 302).predicted == 1);
    }

    #[test]
    fn an_announced_stream_shares_its_chunks_but_is_never_followed() {
        let s = Sharing::new(64 * CHUNK_PAGES);
        let chunk = |k: usize| k * CHUNK_PAGES;
        // Connection 1 streams the range it announced, from chunk 32 on;
        // connection 2, reading the part before it, ends in chunk 32.
        for k in 32..=40 {
            assert!(!s.on_request_as(1, chunk(k), 512, k as u32, false).shared);
        }
        assert!(
            s.on_request(2, chunk(32) + 8, 64, 1000).shared,
            "a chunk both read"
        );
        // 1's next chunks are its own: served to it alone.
        for k in 41..45 {
            let v = s.on_request_as(1, chunk(k), 512, 1000 + k as u32, false);
            assert!(!v.shared && v.predicted == 0, "chunk {k}: {v:?}");
        }
        // The same reads as faults' scans make 1 followed.
        let s = Sharing::new(64 * CHUNK_PAGES);
        for k in 32..=40 {
            s.on_request(1, chunk(k), 512, k as u32);
        }
        assert!(s.on_request(2, chunk(40) + 8, 64, 1000).shared);
        assert_eq!(s.on_request(1, chunk(41), 512, 1041).predicted, 1);
    }

    #[test]
    fn pushing_ahead_lends_the_lease_and_never_extends_it() {
        let s = Sharing::new(8 * CHUNK_PAGES);
        s.on_request(1, 0, 16, 100);
        s.on_request(2, 16, 16, 101);
        let until = s.own_lease(0);
        assert_eq!(until, 101 + SHARE_LEASE_MS);
        s.lend(CHUNK_PAGES - 64, 2 * CHUNK_PAGES, until);
        assert!(s.is_shared(CHUNK_PAGES, until - 1));
        assert!(s.is_shared(2 * CHUNK_PAGES, until - 1));
        assert!(!s.is_shared(2 * CHUNK_PAGES, until));
        assert!(!s.is_shared(3 * CHUNK_PAGES, 200));
        assert_eq!(s.own_lease(CHUNK_PAGES), 0, "lent, not earned");
        s.lend(CHUNK_PAGES, 1, until - 500);
        assert!(s.is_shared(CHUNK_PAGES, until - 1), "never shortened");
        // A lone scan in the lent chunks is pushed until the lease ends,
        // and has nothing of its own to lend on.
        assert!(s.on_request(1, 2 * CHUNK_PAGES, 64, until - 1).shared);
        assert_eq!(s.own_lease(2 * CHUNK_PAGES), 0);
        assert!(!s.on_request(1, 2 * CHUNK_PAGES + 64, 64, until).shared);
        // A sibling asking in a lent chunk earns it a lease of its own.
        assert!(s.on_request(2, CHUNK_PAGES, 8, until - 1).shared);
        s.on_request(1, CHUNK_PAGES + 8, 8, until);
        assert_eq!(s.own_lease(CHUNK_PAGES), until + SHARE_LEASE_MS);
    }

    #[test]
    fn a_receiver_that_keeps_losing_is_served_by_unicast() {
        let mut r = LossyReceiver::default();
        for _ in 0..100 {
            r.pushed();
        }
        for _ in 0..LOSSY_FALLBACKS {
            assert!(!r.fell_back(0));
        }
        assert!(!r.unicast_only(0), "8 losses in 100 is a healthy receiver");
        let turned = (0..20).filter(|_| r.fell_back(0)).count();
        assert!(r.unicast_only(0));
        assert_eq!(turned, 1, "it turns lossy once");
    }

    #[test]
    fn a_lossy_receivers_probation_ends_and_doubles_each_time_it_turns_again() {
        let mut r = LossyReceiver::default();
        // Loses every push: turns lossy at its 8th fallback.
        let lose_all = |r: &mut LossyReceiver, now: u32| {
            (0..LOSSY_FALLBACKS).any(|_| {
                r.pushed();
                r.fell_back(now)
            })
        };
        let mut now = 0;
        let mut probations = Vec::new();
        for _ in 0..8 {
            assert!(lose_all(&mut r, now), "turns lossy after 8 lost pushes");
            let start = now;
            while r.unicast_only(now) {
                now += 1;
            }
            probations.push(now - start);
        }
        assert_eq!(
            probations,
            [500, 1000, 2000, 4000, 8000, 16_000, 16_000, 16_000],
            "doubling up to the cap"
        );
        // A receiver back from probation that no longer loses stays on
        // multicast: a clean record, fallbacks counted anew.
        for _ in 0..1000 {
            r.pushed();
        }
        assert!((0..LOSSY_FALLBACKS).all(|_| !r.fell_back(now)));
        assert!(!r.unicast_only(now));
    }
}

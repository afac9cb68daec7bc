//! The fault handler thread of a [`super::RemoteMemory`]: reads fault
//! events, fetches the faulting page and its readahead window in one
//! request, installs the batch, and streams a prefetch between faults.
//!
//! Pages the guest hinted free ([`crate::hints::FreePages`], from the clone
//! request) never reach the server: a fault on one is zero-filled here,
//! readahead and prefetch batches stop short of them, and multicast pushes
//! for them are dropped.
//!
//! It owns the connection and the presence bitmap outright, so neither needs
//! a lock. Its one promise: no faulting thread stays blocked. A failed
//! request is retried once on a new connection; after that the error is
//! recorded, `on_failure` is called, the pending fault gets a zero page and
//! the range is unregistered, which wakes every other waiter and turns
//! later faults into ordinary zero-filled ones.

use super::bitmap::PageBitmap;
use super::client::{Batch, PageClient};
use super::error::RemoteError;
use super::fetcher::FetchConfig;
use super::histogram::Histogram;
use super::huge::{HugeStage, BLOCK_BYTES, BLOCK_PAGES};
use super::protocol::{Ask, Request, MAX_BATCH_PAGES};
use super::readahead::Readahead;
use super::uffd::{Event, Userfaultfd};
use super::{GroupToken, PAGE_SIZE};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{mpsc, Mutex};
use std::time::Instant;
use vmm_sys_util::eventfd::EventFd;

mod pushed;
mod pushes;

pub(super) use pushes::{map_host_cache, pushes_for, Pushes};

const PAGE: u64 = PAGE_SIZE as u64;
/// How much larger a window of hinted pages (zero-filled here) is than a
/// fetch window.
const ZERO_WINDOW_FACTOR: u32 = 8;
/// How often at most a handler wakes to install pushed pages while they
/// keep coming. The host's receiver wakes every clone of the group on the
/// host each time it publishes (after every few datagrams when it keeps
/// up with the link); a fault still wakes the handler at once, and
/// installs from the host's cache what it needs. A handler that saw no
/// datagram arrive since its look before waits for the next push without
/// a timer.
const PUSHES_LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(4);
/// Source of private zero pages (one batch's worth, in .bss: costs no
/// memory until read, and then only the shared zero page).
static ZERO_PAGES: [u8; MAX_BATCH_PAGES as usize * PAGE_SIZE] =
    [0; MAX_BATCH_PAGES as usize * PAGE_SIZE];

#[derive(Default)]
pub struct Counters {
    pub faults: AtomicU64,
    pub pages_fetched: AtomicU64,
    pub zero_pages: AtomicU64,
    pub bytes_received: AtomicU64,
    pub requests: AtomicU64,
    pub reconnects: AtomicU64,
    pub present_pages: AtomicU64,
    /// Pages installed from the group's multicast before anything faulted.
    pub multicast_pages: AtomicU64,
    /// Pages the guest hinted free that this handler installed as zero
    /// pages (on a fault, or in a readahead or prefetch batch).
    pub zero_local_pages: AtomicU64,
    /// Faults on pages that were not there yet (stale and hinted ones
    /// aside): the touches nothing had brought in before.
    pub misses: AtomicU64,
    /// Requests the holder answered "pushed" (lockstep).
    pub pushed_answers: AtomicU64,
    /// Pushed pages that did not arrive within the wait, then fetched by
    /// unicast.
    pub push_timeouts: AtomicU64,
    /// The group's datagrams that never reached this clone host (gaps in
    /// the sequence numbers).
    pub multicast_lost: AtomicU64,
    /// The newest sequence number of the group seen, plus one.
    pub multicast_seen: AtomicU64,
    /// Pushed pages that were already there when they came (the host's
    /// receiver's count when it has one).
    pub multicast_stale_drops: AtomicU64,
    /// Datagrams this process read from its own socket (0 with the host's
    /// receiver).
    pub multicast_datagrams_received: AtomicU64,
    /// Datagrams the host's receiver read, for all the group's clones on
    /// this host.
    pub multicast_host_datagrams: AtomicU64,
    /// The host receiver's process id (0: none, this process receives).
    pub multicast_receiver_pid: AtomicU64,
    /// Pages of whole hinted 2 MiB blocks handed to the kernel at attach:
    /// zero on first touch (by the kernel, unseen here), if ever touched.
    pub released_hinted_pages: AtomicU64,
    /// Whole 2 MiB blocks installed as one huge page each, and blocks
    /// whose move failed and were installed page by page instead.
    pub huge_blocks: AtomicU64,
    pub huge_fallbacks: AtomicU64,
    /// The region maps the host's cache (set once, at attach).
    pub maps_host_cache: AtomicBool,
}

/// What the handler thread and its [`super::RemoteMemory`] share.
pub struct Shared {
    pub counters: Counters,
    pub latency: Mutex<Histogram>,
    pub failed: Mutex<Option<String>>,
    pub stop: AtomicBool,
    /// Wakes the handler's poll for a command or a stop.
    pub wake: EventFd,
}

impl Shared {
    pub fn new(wake: EventFd) -> Shared {
        Shared {
            counters: Counters::default(),
            latency: Mutex::new(Histogram::default()),
            failed: Mutex::new(None),
            stop: AtomicBool::new(false),
            wake,
        }
    }
}

pub enum Command {
    PrefetchAll(mpsc::Sender<Result<(), RemoteError>>),
    /// Take in what was pushed so far, then answer (before the clone's
    /// last counters: over the host's cache, a page the guest touched
    /// straight from the cache is only counted once the handler looked).
    Settle(mpsc::Sender<()>),
    /// The guest will read these pages soon (`InputWillRead`): stream
    /// them between faults, no reply.
    PrefetchRange {
        first: u64,
        count: u64,
    },
}

/// Most announced ranges waiting (a guest announcing more drops its oldest).
pub const RANGES_QUEUED: usize = 64;

/// A prefetch of the whole region in progress.
struct Prefetch {
    /// No absent page lies before this one.
    next: u64,
    waiters: Vec<mpsc::Sender<Result<(), RemoteError>>>,
}

pub struct Handler {
    uffd: Userfaultfd,
    base: u64,
    len: u64,
    server: SocketAddr,
    token: GroupToken,
    /// `None` between a broken connection and the next attempt.
    client: Option<PageClient>,
    present: PageBitmap,
    readahead: Readahead,
    cfg: FetchConfig,
    shared: std::sync::Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    prefetch: Option<Prefetch>,
    /// Announced ranges still to stream, `(next page, end page)`.
    ranges: std::collections::VecDeque<(u64, u64)>,
    /// Set once remote memory failed: faults get zero pages from then on.
    degraded: bool,
    /// Whether the range is still registered.
    registered: bool,
    /// The data pages of the batch being installed.
    data: Vec<u8>,
    /// Pages pushed to the whole clone group.
    multicast: Option<Pushes>,
    /// The region is a private mapping of the host's cache: a cached page
    /// is never installed here, a fault on one only wakes its thread.
    mapped: bool,
    /// The run of consecutive pushed pages being gathered for one install.
    push_run: Vec<u8>,
    /// When this handler last looked at pushed pages and found the group's
    /// datagrams still coming (`None`: none came since the look before, so
    /// the next push wakes it at once; see [`PUSHES_LOOK_EVERY`]).
    pushes_flowing: Option<Instant>,
    /// The group's datagrams this host had read at that look.
    pushes_seen: u64,
    /// Where whole blocks are staged on their way in as huge pages
    /// (`None`: off, no UFFDIO_MOVE here, or the region is not 2 MiB
    /// aligned).
    stage: Option<HugeStage>,
}

/// Where a [`Handler`] fetches from and what it installs into.
pub struct Target {
    pub uffd: Userfaultfd,
    pub base: u64,
    pub len: u64,
    pub server: SocketAddr,
    pub token: GroupToken,
    /// The connection `attach` made and checked.
    pub client: PageClient,
    /// Where pushed pages come from, if anywhere.
    pub pushes: Option<Pushes>,
    /// Whether the region maps the host's cache (see [`map_host_cache`]).
    pub mapped: bool,
}

impl Handler {
    pub fn new(
        t: Target,
        cfg: FetchConfig,
        shared: std::sync::Arc<Shared>,
        commands: mpsc::Receiver<Command>,
    ) -> Handler {
        let mut h = Handler {
            multicast: t.pushes,
            mapped: t.mapped,
            present: PageBitmap::new(t.len / PAGE),
            readahead: Readahead::new(cfg.min_window_pages, cfg.max_window_pages),
            uffd: t.uffd,
            base: t.base,
            len: t.len,
            server: t.server,
            token: t.token,
            client: Some(t.client),
            cfg,
            shared,
            commands,
            prefetch: None,
            ranges: std::collections::VecDeque::new(),
            degraded: false,
            registered: true,
            data: Vec::new(),
            push_run: Vec::new(),
            pushes_flowing: None,
            pushes_seen: 0,
            stage: None,
        };
        // (A move needs anonymous memory on both sides: never over the
        // host's cache.)
        if h.cfg.huge_blocks && !h.mapped && h.uffd.can_move() && super::huge::aligned(h.base) {
            match HugeStage::new() {
                Ok(s) => h.stage = Some(s),
                Err(e) => tracing::warn!("remote memory installs 4 KiB pages only: {e}"),
            }
        }
        // Before the thread starts, so attach returns with it done. Never
        // over the host's cache: an unregistered fault there would put a
        // page of zeros into the cache every clone of the host reads.
        if h.cfg.release_hinted_blocks && !h.mapped {
            h.release_hinted_blocks();
        }
        h.shared.counters.maps_host_cache.store(h.mapped, Relaxed);
        if let Some(Pushes::Host(p)) = &h.multicast {
            let pid = p.view.get(super::host_cache::Word::ReceiverPid);
            h.shared.counters.multicast_receiver_pid.store(pid, Relaxed);
        }
        h
    }

    /// Hands the whole 2 MiB blocks of hinted runs back to the kernel: no
    /// fault there reaches this thread again, and the guest RAM's
    /// MADV_HUGEPAGE lets a first write map a whole huge page of zeros at
    /// once instead of 512 small ones. Measured with the 1 GiB `bench
    /// avoid` guest, one clone, same machine and load, alternating: with
    /// W = 64 MiB and A = 256 MiB the clone's work took 141-148 ms so and
    /// 268-282 ms with every hinted page zero-filled by this thread; with
    /// W = 1 MiB, 54 against 152 ms (the warm parent: 27-40 ms). Without
    /// huge pages it is the
    /// other way round (a 64 MiB write scan on loopback: 18 ms batched here,
    /// 57 ms page by page in the kernel), hence the switch. Counted apart,
    /// as released pages (none of them is ever requested, and the kernel
    /// zero-fills them on touch unseen by this thread), not as zero-local
    /// pages. Runs shorter than a block stay registered and are
    /// zero-filled here on touch.
    fn release_hinted_blocks(&mut self) {
        const BLOCK: u64 = (2 << 20) / PAGE;
        let mut released = 0;
        for &(first, count) in self.cfg.free_pages.clone().ranges() {
            let start = first.next_multiple_of(BLOCK);
            let end = (first + count) / BLOCK * BLOCK;
            if end <= start || end * PAGE > self.len {
                continue;
            }
            match self
                .uffd
                .unregister(self.base + start * PAGE, (end - start) * PAGE)
            {
                Ok(()) => {
                    self.present.set_range(start, end - start);
                    released += end - start;
                }
                Err(e) => {
                    // Still registered: the fault path zero-fills them.
                    tracing::debug!("keeping hinted pages {start}..{end} registered: {e}");
                }
            }
        }
        let c = &self.shared.counters;
        c.released_hinted_pages.fetch_add(released, Relaxed);
        c.present_pages.store(self.present.count(), Relaxed);
    }

    pub fn run(mut self) {
        // Fork safety: a fork of this VMM parks this thread in its poll
        // (see `clone::park`).
        let helper = crate::clone::park::register("remote memory");
        while !self.shared.stop.load(SeqCst) {
            let prefetching = self.prefetch.is_some() || !self.ranges.is_empty();
            if let Err(e) = helper.idle(|| self.wait(prefetching)) {
                self.fail(RemoteError::Uffd {
                    what: "poll",
                    source: e,
                });
                break;
            }
            self.take_commands();
            let mut faults = 0;
            loop {
                match self.uffd.read_event() {
                    Ok(Some(Event::PageFault { address, write })) => {
                        faults += 1;
                        self.on_fault(address, write);
                    }
                    Ok(Some(Event::Other(_))) => {}
                    Ok(None) => break,
                    Err(source) => {
                        self.fail(RemoteError::Uffd {
                            what: "read",
                            source,
                        });
                        break;
                    }
                }
            }
            // After the faults: a waiting vCPU is not held up behind an
            // install of everything pushed since the last look (a fault on
            // a pushed page installs from the host's cache at once).
            self.take_multicast();
            let seen = self.receiver_seen();
            self.pushes_flowing = (seen != self.pushes_seen).then(Instant::now);
            self.pushes_seen = seen;
            // Faults first: a prefetch step only runs when none are waiting.
            if faults == 0 {
                self.prefetch_step();
            }
        }
        if let Some(p) = self.prefetch.take() {
            for w in p.waiters {
                let _ = w.send(Err(RemoteError::Stopped));
            }
        }
        // Dropping `self.uffd` closes it: the kernel ends the registration
        // and wakes anything still waiting.
    }

    /// Installs a run of pushed pages. Pages already there (a fault beat
    /// the push to them) are skipped by the kernel, not errors.
    fn install_pushed(&mut self, first: u64, pages: u64, bytes: &[u8]) {
        if self.install(first, pages, Some(bytes)).is_ok() {
            self.note_pushed(first, pages);
        }
    }

    /// Pages that came by the group's multicast are here.
    fn note_pushed(&mut self, first: u64, pages: u64) {
        self.mark_present(first, pages);
        let c = &self.shared.counters;
        c.multicast_pages.fetch_add(pages, Relaxed);
    }

    /// Wakes the threads waiting for pages `first..first + pages` (their
    /// retry finds what is there now).
    fn wake(&self, first: u64, pages: u64) {
        if let Err(e) = self.uffd.wake(self.base + first * PAGE, pages * PAGE) {
            tracing::debug!("wake at page {first} (+{pages}): {e}");
        }
    }

    fn record_latency(&self, start: Instant) {
        let us = start.elapsed().as_micros() as u64;
        self.shared.latency.lock().expect("latency lock").record(us);
    }

    /// Waits for a fault, a command or pushed pages (these at most every
    /// [`PUSHES_LOOK_EVERY`]); does not block while a prefetch has work
    /// to do.
    fn wait(&self, prefetching: bool) -> std::io::Result<()> {
        let poll = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = vec![
            poll(self.uffd.as_raw_fd()),
            poll(self.shared.wake.as_raw_fd()),
        ];
        let mut timeout = if prefetching { 0 } else { -1 };
        if let Some(m) = &self.multicast {
            // While pages flow, the next look waits out the interval; an
            // idle handler (no datagram came since the look before) blocks
            // until the next push, with no timer.
            let left = self.pushes_flowing.map_or(std::time::Duration::ZERO, |t| {
                PUSHES_LOOK_EVERY.saturating_sub(t.elapsed())
            });
            if left.is_zero() {
                fds.push(poll(m.fd()));
            } else if timeout < 0 {
                timeout = left.as_millis() as i32 + 1;
            }
        }
        // SAFETY: valid pollfds for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if fds[1].revents != 0 {
            let _ = self.shared.wake.read();
        }
        Ok(())
    }

    fn take_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            let reply = match cmd {
                Command::PrefetchAll(reply) => reply,
                Command::Settle(done) => {
                    self.take_multicast();
                    let _ = done.send(());
                    continue;
                }
                Command::PrefetchRange { first, count } => {
                    let pages = self.len / PAGE;
                    let end = first.saturating_add(count).min(pages);
                    if first < end && !self.degraded {
                        if self.ranges.len() == RANGES_QUEUED {
                            self.ranges.pop_front();
                        }
                        self.ranges.push_back((first, end));
                    }
                    continue;
                }
            };
            if let Some(why) = self.failed_reason() {
                let _ = reply.send(Err(RemoteError::Failed(why)));
                continue;
            }
            self.prefetch
                .get_or_insert(Prefetch {
                    next: 0,
                    waiters: Vec::new(),
                })
                .waiters
                .push(reply);
        }
    }

    fn failed_reason(&self) -> Option<String> {
        self.shared.failed.lock().expect("failed lock").clone()
    }

    fn on_fault(&mut self, address: u64, write: bool) {
        let start = Instant::now();
        self.shared.counters.faults.fetch_add(1, Relaxed);
        if address < self.base || address >= self.base + self.len {
            return; // not ours: only this range is registered
        }
        let page = (address - self.base) / PAGE;
        // Over the host's cache, a cached page is never zero-filled: its
        // fault came before it arrived, and waking maps it.
        if self.wake_if_cached(page) {
            self.record_latency(start);
            return;
        }
        if self.degraded || self.present.get(page) {
            // Degraded: zeros. Present: a stale event for a page an earlier
            // batch brought (its thread was woken then), or a page dropped
            // since (MADV_DONTNEED), which reads as zeros: either way a zero
            // fill is right, finds the page if it is there, and wakes.
            self.zero_fill(page);
            return;
        }
        let window = self.readahead.on_fault(page);
        let free = self.cfg.free_pages.free_run(page);
        if free > 0 {
            // Hinted free: zeros made here, no request, for a window of the
            // hinted run. Local zeros cost no round trip, only memory, so
            // the window is eight fetch windows (a random touch costs
            // 32 KiB, a scan soon 2 MiB per fault). Measured on loopback
            // (a_hinted_write_scan_costs_no_round_trip): a write scan of
            // 64 MiB takes 18 ms, 38 faults and 0 bytes hinted, against
            // 66-95 ms, 262 requests and 57 MB fetched.
            let window = (window * ZERO_WINDOW_FACTOR).min(MAX_BATCH_PAGES);
            let count = self.present.absent_run(page, u64::from(window));
            let count = count.min(free);
            match self.zero_local(page, count, write) {
                Ok(()) => self.readahead.fetched(page, count),
                Err(e) => {
                    self.fail(e);
                    self.zero_fill(page);
                    self.unregister();
                }
            }
            return;
        }
        if self.fault_from_host_cache(page, u64::from(MAX_BATCH_PAGES)) {
            // Pushed to this host before the touch, not yet installed here:
            // no request, and not a miss (the network brought it in time).
            self.record_latency(start);
            return;
        }
        let count = self.present.absent_run(page, u64::from(window));
        // A batch never asks for a hinted page, nor for one the host's
        // cache holds but this clone has not installed yet (faults are
        // read before pushed pages are installed: asking for those made
        // the holder push them again, 3,000-4,000 stale datagrams per host
        // at 16-32 clones).
        let count = self.cfg.free_pages.unhinted_run(page, count);
        let count = self.uncached_run(page, count);
        self.shared.counters.misses.fetch_add(1, Relaxed);
        match self.fetch_and_install(page, count, write, Ask::Fault) {
            Ok(()) => {
                self.readahead.fetched(page, count);
                self.record_latency(start);
            }
            Err(e) => {
                self.fail(e);
                self.zero_fill(page);
                self.unregister();
            }
        }
    }

    fn prefetch_step(&mut self) {
        let Some(job) = self.prefetch.as_mut() else {
            self.range_step();
            return;
        };
        let Some(first) = self.present.next_absent(job.next) else {
            for w in self.prefetch.take().expect("job").waiters {
                let _ = w.send(Ok(()));
            }
            return;
        };
        job.next = first;
        let count = self.present.absent_run(first, u64::from(MAX_BATCH_PAGES));
        if let Err(e) = self.install_ahead(first, count, Ask::Fault) {
            self.fail(e);
            self.unregister();
        }
    }

    /// Installs pages of the absent run of `count` from `first` before any
    /// fault asks: a run the guest hinted free as zero pages (the shared
    /// zero page: a nested fork copies nothing for it), otherwise the pages
    /// up to the next hinted one, fetched. Returns how many it installed:
    /// the run stops where hinted and unhinted pages meet. `ask` tells the
    /// holder why the pages are asked for.
    fn install_ahead(&mut self, first: u64, count: u64, ask: Ask) -> Result<u64, RemoteError> {
        let free = self.cfg.free_pages.free_run(first);
        if free > 0 {
            let zeros = count.min(free);
            self.zero_local(first, zeros, false)?;
            Ok(zeros)
        } else {
            let fetched = self.cfg.free_pages.unhinted_run(first, count);
            self.fetch_and_install(first, fetched, false, ask)?;
            Ok(fetched)
        }
    }

    /// One batch of the oldest announced range: its next absent run (at
    /// most a full batch), fetched like a fault's window but ahead of it.
    ///
    /// It streams while the group's multicast runs too: the holder pushes a
    /// 2 MiB chunk only once a second clone asks in it (lockstep detection),
    /// so a clone's own share of an input stays between it and the holder,
    /// and a range two clones announce is pushed once for both. (When the
    /// holder pushed every page asked for once two clones were connected,
    /// streaming one clone's range made every clone host install it: `bench
    /// apps`, align on two remote clones, penalty 1.51 -> 3.66.)
    fn range_step(&mut self) {
        let Some(&(next, end)) = self.ranges.front() else {
            return;
        };
        let first = match self.present.next_absent(next) {
            Some(p) if p < end && !self.degraded => p,
            _ => {
                self.ranges.pop_front();
                return;
            }
        };
        // Batches end at 2 MiB block boundaries, so that after the first
        // one each is a whole block, which can come in as one huge page.
        let to_block_end = BLOCK_PAGES - first % BLOCK_PAGES;
        let count = self.present.absent_run(
            first,
            (end - first)
                .min(u64::from(MAX_BATCH_PAGES))
                .min(to_block_end),
        );
        // Announced: the holder never takes this stream for a scan that
        // other clones follow (see `protocol::ANNOUNCED_FLAG`).
        match self.install_ahead(first, count, Ask::Announced) {
            // Resume after what was installed, not after the whole absent
            // run: a run cut short where hinted and unhinted pages meet
            // goes on from there next time.
            Ok(installed) => {
                if let Some(r) = self.ranges.front_mut() {
                    r.0 = first + installed.max(1);
                }
            }
            Err(e) => {
                self.ranges.clear();
                self.fail(e);
                self.unregister();
            }
        }
    }

    /// One request for `count` absent pages from `first`, installed with one
    /// ioctl per run of data pages or zero pages. `write_fault`: `first`
    /// faulted on a write.
    fn fetch_and_install(
        &mut self,
        first: u64,
        count: u64,
        write_fault: bool,
        ask: Ask,
    ) -> Result<(), RemoteError> {
        let req = Request {
            offset: first * PAGE,
            pages: count as u32,
        };
        let batch = self.request(req, ask)?;
        if let Some(seq_end) = batch.pushed {
            let bytes = batch.bytes_received;
            return self.await_pushed(first, batch.map, seq_end, bytes, write_fault);
        }
        self.install_batch(first, count, batch, write_fault)
    }

    /// Installs a batch that came over TCP: one ioctl per run of data
    /// pages or zero pages.
    fn install_batch(
        &mut self,
        first: u64,
        count: u64,
        batch: Batch,
        write_fault: bool,
    ) -> Result<(), RemoteError> {
        // A whole block of data (a range stream's or a prefetch's batch):
        // one huge page.
        let whole = count == BLOCK_PAGES
            && first.is_multiple_of(BLOCK_PAGES)
            && u64::from(batch.map.data_pages()) == count
            && self.block_wanted_whole(first / BLOCK_PAGES);
        let c = &self.shared.counters;
        c.bytes_received
            .fetch_add(batch.bytes_received as u64, Relaxed);
        c.pages_fetched.fetch_add(count, Relaxed);
        c.zero_pages
            .fetch_add(count - u64::from(batch.map.data_pages()), Relaxed);
        if whole {
            let data = std::mem::take(&mut self.data);
            let done = self.install_block(first / BLOCK_PAGES, &data[..BLOCK_BYTES]);
            self.data = data;
            return done;
        }
        // Marked before the installs: each install wakes its waiters, who
        // may read the statistics at once. (If one fails, the range is
        // given up anyway.)
        self.mark_present(first, count);
        let mut data_at = 0;
        for (run, pages, has_data) in batch.map.runs() {
            let mut page = first + u64::from(run);
            let mut pages = u64::from(pages);
            let private_zeros = !has_data && self.cfg.private_zero_pages;
            if run == 0 && !has_data && write_fault && !private_zeros {
                // The shared zero page would cost the writer one more
                // (copy-on-write) fault at once: give it a private one.
                self.install(page, 1, Some(&ZERO_PAGES[..PAGE_SIZE]))?;
                page += 1;
                pages -= 1;
            }
            if pages == 0 {
                continue;
            }
            let len = (pages * PAGE) as usize;
            if has_data {
                self.install(page, pages, Some(&self.data[data_at..data_at + len]))?;
                data_at += len;
            } else if private_zeros {
                self.install(page, pages, Some(&ZERO_PAGES[..len]))?;
            } else {
                self.install(page, pages, None)?;
            }
        }
        Ok(())
    }

    /// Installs `count` hinted pages from `first` on as zeros made here:
    /// private copies for a write fault (its writer would otherwise take one
    /// more copy-on-write fault at once), else the shared zero page.
    fn zero_local(&mut self, first: u64, count: u64, write_fault: bool) -> Result<(), RemoteError> {
        self.mark_present(first, count);
        self.shared
            .counters
            .zero_local_pages
            .fetch_add(count, Relaxed);
        if write_fault || self.cfg.private_zero_pages {
            let len = (count * PAGE) as usize;
            self.install(first, count, Some(&ZERO_PAGES[..len]))
        } else {
            self.install(first, count, None)
        }
    }

    /// Installs `pages` pages from `page` on: a copy of `src`, or the
    /// shared zero page when `src` is `None`.
    fn install(&self, page: u64, pages: u64, src: Option<&[u8]>) -> Result<(), RemoteError> {
        let dst = self.base + page * PAGE;
        let filled = match src {
            Some(src) => self.uffd.copy(dst, src),
            None => self.uffd.zero(dst, pages * PAGE),
        };
        filled.map(|_| ()).map_err(|source| RemoteError::Install {
            addr: dst,
            pages,
            source,
        })
    }

    fn mark_present(&mut self, first: u64, pages: u64) {
        self.present.set_range(first, pages);
        let count = self.present.count();
        self.shared.counters.present_pages.store(count, Relaxed);
    }

    /// Whether block `block` can come in as one huge page: moves are on,
    /// the block is whole inside the region, none of its pages is here
    /// and none is hinted free (those stay zeros made here).
    fn block_wanted_whole(&self, block: u64) -> bool {
        let first = block * BLOCK_PAGES;
        self.stage.is_some()
            && first + BLOCK_PAGES <= self.present.len()
            && self.present.none_set(first, BLOCK_PAGES)
            && self.cfg.free_pages.unhinted_run(first, BLOCK_PAGES) == BLOCK_PAGES
    }

    /// Installs block `block` (`bytes`: all of it, none of it here yet) as
    /// one huge page, or page by page if the move fails. Marks it present
    /// first, as [`Handler::install_batch`] does (the move wakes waiters
    /// who may read the counters); an error here means the region is
    /// broken, and the caller gives it up.
    fn install_block(&mut self, block: u64, bytes: &[u8]) -> Result<(), RemoteError> {
        let first = block * BLOCK_PAGES;
        let dst = self.base + first * PAGE;
        self.mark_present(first, BLOCK_PAGES);
        let moved = match self.stage.as_mut() {
            Some(stage) => stage.install(&self.uffd, dst, bytes),
            None => Err(std::io::Error::other("no huge page stage")),
        };
        let c = &self.shared.counters;
        match moved {
            Ok(()) => {
                c.huge_blocks.fetch_add(1, Relaxed);
            }
            Err(e) => {
                tracing::debug!("block {block} installed page by page: {e}");
                c.huge_fallbacks.fetch_add(1, Relaxed);
                self.install(first, BLOCK_PAGES, Some(bytes))?;
            }
        }
        Ok(())
    }

    /// Sends `req`; a transport failure gets one new connection and one
    /// retry (when configured) before it counts.
    fn request(&mut self, req: Request, ask: Ask) -> Result<Batch, RemoteError> {
        match self.try_request(req, ask) {
            Err(first) if first.is_transport() && self.cfg.reconnect => {
                tracing::warn!("remote memory: {first}; reconnecting once");
                self.shared.counters.reconnects.fetch_add(1, Relaxed);
                self.try_request(req, ask)
                    .map_err(|retry| RemoteError::Retried {
                        first: Box::new(first),
                        retry: Box::new(retry),
                    })
            }
            other => other,
        }
    }

    fn try_request(&mut self, req: Request, ask: Ask) -> Result<Batch, RemoteError> {
        let client = match self.client.as_mut() {
            Some(c) => c,
            None => {
                let c = PageClient::connect(
                    self.server,
                    &self.token,
                    self.cfg.timeouts(),
                    &self.cfg.transport,
                )?;
                if c.region_len() != self.len {
                    return Err(RemoteError::SizeMismatch {
                        server: self.server,
                        served: c.region_len(),
                        local: self.len,
                    });
                }
                self.client.insert(c)
            }
        };
        if let Some(report) = self.multicast.as_mut().and_then(|m| m.report_due()) {
            if let Err(e) = client.report(report) {
                self.client = None;
                return Err(e);
            }
        }
        let client = self.client.as_mut().expect("connected above");
        self.shared.counters.requests.fetch_add(1, Relaxed);
        let result = client.fetch(req, &mut self.data, ask);
        if result.is_err() {
            // Whatever went wrong, the stream may be out of step.
            self.client = None;
        }
        result
    }

    /// Records the failure and tells the VMM, once.
    fn fail(&mut self, e: RemoteError) {
        if self.degraded {
            return;
        }
        self.degraded = true;
        self.client = None;
        let why = e.to_string();
        tracing::error!("remote memory failed: {why}; missing pages now read as zeros");
        *self.shared.failed.lock().expect("failed lock") = Some(why.clone());
        if let Some(cb) = &self.cfg.on_failure {
            // A panicking callback must not take the promise of "no thread
            // stays blocked" down with this thread.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&e)));
        }
        if let Some(p) = self.prefetch.take() {
            for w in p.waiters {
                let _ = w.send(Err(RemoteError::Failed(why.clone())));
            }
        }
    }

    fn zero_fill(&mut self, page: u64) {
        match self.uffd.zero(self.base + page * PAGE, PAGE) {
            Ok(_) => self.mark_present(page, 1),
            // After unregistering (ENOENT) the kernel has woken the thread
            // already and its retry is an ordinary fault.
            Err(e) => tracing::debug!("zero page at page {page}: {e}"),
        }
    }

    /// Hands the range back to the kernel: every waiter is woken, and later
    /// faults are ordinary zero-filled ones that need no handler.
    fn unregister(&mut self) {
        if !self.registered {
            return;
        }
        if self.mapped {
            // Over the host's cache the range stays registered (an
            // unregistered fault would put zeros into the cache): every
            // waiter is woken, and faults are zero-filled from now on.
            if let Err(e) = self.uffd.wake(self.base, self.len) {
                tracing::warn!("remote memory: waking every waiter failed: {e}");
            }
            return;
        }
        match self.uffd.unregister(self.base, self.len) {
            Ok(()) => self.registered = false,
            Err(e) => tracing::warn!(
                "remote memory: unregistering failed ({e}); zero-filling faults instead"
            ),
        }
    }
}

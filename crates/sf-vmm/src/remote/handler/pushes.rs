//! Where a clone's pushed pages come from, and their install: the host's
//! shared cache filled by the group's one receiver on this host
//! ([`crate::remote::host_receiver`]), or, where that receiver could not be
//! reached (or in-process tests), this process's own socket joined to the
//! group. Either way a run of consecutive pages is installed with one
//! UFFDIO_COPY, and pages already here or hinted free are skipped. From the
//! host's cache, a 2 MiB block none of whose pages is here waits until the
//! cache holds all of it and then comes in as one huge page
//! ([`crate::remote::huge`]); a fault in it meanwhile installs what is
//! there.
//!
//! Where the guest RAM maps the host's cache ([`map_host_cache`]), nothing
//! pushed is installed: arrivals are only marked present (so that no batch
//! asks for them), and a fault that came before its page did is answered
//! with a wake, whose retry maps the cached page.

use super::{Handler, PAGE};
use crate::remote::fetcher::FetchConfig;
use crate::remote::host_cache::{Arrivals, Word};
use crate::remote::host_receiver::HostPushes;
use crate::remote::huge::{blocks_of, BLOCK_PAGES};
use crate::remote::multicast::Receiver;
use crate::remote::pacer::Report;
use crate::remote::{GroupToken, MAX_BATCH_PAGES};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;

pub enum Pushes {
    /// This process's own socket: it receives and opens every datagram.
    Own(Box<Receiver>),
    /// The host's cache: installed from the shared mapping.
    Host(HostPushes),
}

impl Pushes {
    /// Readable when pushed pages may be waiting.
    pub fn fd(&self) -> RawFd {
        match self {
            Pushes::Own(rx) => rx.fd(),
            Pushes::Host(h) => h.fd(),
        }
    }

    pub fn report_due(&mut self) -> Option<Report> {
        match self {
            Pushes::Own(rx) => rx.report_due(),
            Pushes::Host(h) => h.report_due(),
        }
    }
}

/// Where pushed pages come from: the host's receiver of the group (started
/// if none runs), else this process's own socket.
pub(in crate::remote) fn pushes_for(
    cfg: &FetchConfig,
    group: std::net::SocketAddrV4,
    iface: std::net::Ipv4Addr,
    token: GroupToken,
    len: u64,
) -> Option<Pushes> {
    if let Some(exe) = &cfg.page_receiver {
        let spec = crate::remote::host_receiver::ReceiverSpec {
            token,
            mem_size: len,
            group,
            iface,
            drop_all: cfg.drop_pushes,
        };
        match crate::remote::host_receiver::HostPushes::attach(exe, &spec) {
            Ok(h) => return Some(Pushes::Host(h)),
            Err(e) => tracing::warn!(
                "no page receiver for {spec} on this host ({e}); this clone receives the group's pushes itself"
            ),
        }
    }
    match crate::remote::multicast::Receiver::join(group, iface, token) {
        Ok(mut rx) => {
            rx.drop_all = cfg.drop_pushes;
            Some(Pushes::Own(Box::new(rx)))
        }
        Err(e) => {
            tracing::warn!(%group, "not joining the clone group's multicast: {e}");
            None
        }
    }
}

/// Makes `[base, base + len)` a private mapping of the host's cache of
/// pushed pages when `pushes` comes from the host's receiver (see
/// [`crate::remote::host_cache::CacheView::map_private_at`]); true if it
/// did. Before the range is registered with userfaultfd.
pub(in crate::remote) fn map_host_cache(pushes: Option<&Pushes>, base: u64, len: u64) -> bool {
    let Some(Pushes::Host(h)) = pushes else {
        return false;
    };
    // SAFETY: the caller of `FetchConfig::mapping_host_cache`, the only
    // way this runs, promised the range is an untouched mapping that
    // nothing refers to as Rust memory.
    match unsafe { h.view.map_private_at(base, len) } {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "guest RAM does not map the host's page cache ({e}); pushed pages are copied in"
            );
            false
        }
    }
}

impl Handler {
    /// Installs the pushed pages still absent, until none are waiting.
    pub(super) fn take_multicast(&mut self) {
        if self.degraded {
            return;
        }
        match self.multicast.take() {
            Some(Pushes::Own(mut rx)) => {
                self.take_own(&mut rx);
                self.multicast = Some(Pushes::Own(rx));
            }
            Some(Pushes::Host(mut h)) => {
                self.take_host(&mut h);
                self.multicast = Some(Pushes::Host(h));
            }
            None => {}
        }
    }

    /// From this process's own socket: consecutive pages (a batch the
    /// holder pushed comes in order) gathered into one install.
    fn take_own(&mut self, rx: &mut Receiver) {
        let mut run = std::mem::take(&mut self.push_run);
        run.clear();
        let (mut first, mut pages) = (0u64, 0u64);
        let mut stale = 0;
        while let Some((offset, page_bytes)) = rx.next_page() {
            let page = offset / PAGE;
            if offset >= self.len || self.present.get(page) {
                stale += 1;
                continue;
            }
            // A hinted page is never installed from the wire: the clone
            // gets zeros for it locally, on touch.
            if self.cfg.free_pages.contains(page) {
                continue;
            }
            if pages > 0 && (page != first + pages || pages == u64::from(MAX_BATCH_PAGES)) {
                self.install_pushed(first, pages, &run);
                run.clear();
                pages = 0;
            }
            if pages == 0 {
                first = page;
            }
            run.extend_from_slice(page_bytes);
            pages += 1;
        }
        if pages > 0 {
            self.install_pushed(first, pages, &run);
        }
        self.push_run = run;
        let c = &self.shared.counters;
        c.multicast_stale_drops.fetch_add(stale, Relaxed);
        c.multicast_lost.store(rx.lost(), Relaxed);
        c.multicast_seen.store(rx.seen(), Relaxed);
        c.multicast_datagrams_received.store(rx.received, Relaxed);
    }

    /// From the host's cache: the runs published since the last look (or
    /// everything it holds, after falling behind its ring).
    fn take_host(&mut self, h: &mut HostPushes) {
        let runs = match h.arrivals() {
            Arrivals::Runs(runs) => runs,
            Arrivals::Rescan => h.view.held_runs(u64::from(MAX_BATCH_PAGES)),
        };
        for (first, count) in runs {
            self.install_cached(h, first, count, false);
        }
        let c = &self.shared.counters;
        let v = &h.view;
        c.multicast_lost.store(v.get(Word::Lost), Relaxed);
        c.multicast_seen.store(v.get(Word::Seen), Relaxed);
        c.multicast_stale_drops.store(v.get(Word::Stale), Relaxed);
        c.multicast_host_datagrams
            .store(v.get(Word::Received), Relaxed);
        c.multicast_receiver_pid
            .store(v.get(Word::ReceiverPid), Relaxed);
    }

    /// Installs the pages of `first..first + count` that the cache holds
    /// and this clone lacks (hinted ones aside): a block of which this
    /// clone has nothing as one huge page once the cache holds all of it,
    /// and until then nothing of it unless `on_fault`; otherwise one
    /// UFFDIO_COPY per run straight from the shared mapping. The number
    /// installed.
    ///
    /// Without the wait, a clone whose handler takes each pushed run as it
    /// comes never sees a block whole (the e2e test `huge_blocks`: 0 of 8
    /// blocks, against 6 with it); with it, at 32 clones on 2 cores, the
    /// clones faulted 266-868 times each instead of 36-274 (a fault there
    /// took 1-3 ms), since most blocks were still partial when reached.
    pub(super) fn install_cached(
        &mut self,
        h: &HostPushes,
        first: u64,
        count: u64,
        on_fault: bool,
    ) -> u64 {
        let end = (first + count).min(self.len / PAGE);
        let mut installed = 0;
        for (block, from, to) in blocks_of(first, end.saturating_sub(first)) {
            if !self.block_wanted_whole(block) {
                installed += self.install_cached_pages(h, from, to, on_fault);
                continue;
            }
            let block_first = block * BLOCK_PAGES;
            if h.view.present_run(block_first, BLOCK_PAGES) == BLOCK_PAGES {
                match self.install_block(block, h.view.bytes(block_first, BLOCK_PAGES)) {
                    Ok(()) => {
                        self.shared
                            .counters
                            .multicast_pages
                            .fetch_add(BLOCK_PAGES, Relaxed);
                        installed += BLOCK_PAGES;
                    }
                    Err(e) => {
                        self.fail(e);
                        self.unregister();
                        return installed;
                    }
                }
            } else if on_fault {
                installed += self.install_cached_pages(h, from, to, on_fault);
            }
        }
        installed
    }

    /// Over a mapping of the host's cache: if the cache holds `page`, wakes
    /// the threads waiting for it (their retry maps the cached page); true
    /// if it did.
    pub(super) fn wake_if_cached(&mut self, page: u64) -> bool {
        let cached = match &self.multicast {
            Some(Pushes::Host(h)) if self.mapped => h.view.has(page),
            _ => false,
        };
        if cached {
            if !self.present.get(page) {
                self.note_pushed(page, 1);
            }
            self.wake(page, 1);
        }
        cached
    }

    /// [`Handler::install_cached`] page by page: one UFFDIO_COPY per run
    /// of pages the cache holds and this clone lacks in `first..end`.
    ///
    /// Over a mapping of the host's cache, the pages are in place already:
    /// only marked here, so that no batch asks for them, and, for a fault
    /// (whose page reached the cache after the handler's first look, see
    /// [`Handler::wake_if_cached`]), woken: no install does it. (Without
    /// this wake, a clone's vCPU waited for good in 3 of about 16 runs of
    /// the `multicast` tests with the cache mapped; none in 20 with it.)
    fn install_cached_pages(
        &mut self,
        h: &HostPushes,
        first: u64,
        end: u64,
        on_fault: bool,
    ) -> u64 {
        // A hinted page is installed as zeros on touch, never from the
        // cache; over a mapping of the cache it is read from the cache on
        // touch like any other, so it is there.
        let wanted = |s: &Handler, p: u64| {
            !s.present.get(p) && h.view.has(p) && (s.mapped || !s.cfg.free_pages.contains(p))
        };
        let mut installed = 0;
        let mut p = first;
        while p < end {
            if !wanted(self, p) {
                p += 1;
                continue;
            }
            let mut n = 1;
            while p + n < end && wanted(self, p + n) {
                n += 1;
            }
            if !self.mapped {
                self.install_pushed(p, n, h.view.bytes(p, n));
            } else {
                self.note_pushed(p, n);
                if on_fault {
                    self.wake(p, n);
                }
            }
            installed += n;
            p += n;
        }
        installed
    }

    /// How many of the `count` pages from `first` on (at least one, the
    /// faulting page) precede the first one the host's cache holds.
    pub(super) fn uncached_run(&self, first: u64, count: u64) -> u64 {
        match &self.multicast {
            Some(Pushes::Host(h)) => (1..count).find(|&i| h.view.has(first + i)).unwrap_or(count),
            _ => count,
        }
    }

    /// A fault on `page`: if the host's cache holds it (pushed, not yet
    /// installed here), installs it and the cached pages after it (up to
    /// `max`) without asking the holder; true if it did.
    pub(super) fn fault_from_host_cache(&mut self, page: u64, max: u64) -> bool {
        let h = match self.multicast.take() {
            Some(Pushes::Host(h)) => h,
            other => {
                self.multicast = other;
                return false;
            }
        };
        let n = h.view.present_run(page, max);
        let done = n > 0 && self.install_cached(&h, page, n, true) > 0;
        self.multicast = Some(Pushes::Host(h));
        done
    }
}

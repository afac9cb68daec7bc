//! [`RemoteMemory`]: guest RAM whose pages come from a remote page server
//! on first touch. The public face: attach, statistics, prefetch, failure
//! state, and a clean stop. The fault handling itself is in
//! [`super::handler`].

use super::client::{PageClient, Timeouts};
use super::error::RemoteError;
use super::handler::{map_host_cache, pushes_for, Command, Handler, Shared, Target};
use super::uffd::Userfaultfd;
use super::{GroupToken, PAGE_SIZE};
use crate::hints::FreePages;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Called once, from the handler thread, when remote memory fails (the VMM
/// kicks its vCPU out of the guest so the failure is noticed at once).
pub type FailureCallback = Arc<dyn Fn(&RemoteError) + Send + Sync>;

#[derive(Clone)]
pub struct FetchConfig {
    /// Pages fetched for a fault that does not continue a scan (default 1).
    pub min_window_pages: u32,
    /// Largest readahead window (default 64; at most 512).
    pub max_window_pages: u32,
    /// Default 2 s.
    pub connect_timeout: Duration,
    /// Longest wait for one answer (default 5 s).
    pub request_timeout: Duration,
    /// Whether a failed request gets one new connection and one retry
    /// before remote memory is declared failed (default true).
    pub reconnect: bool,
    /// Install zero pages as private copies instead of mapping the shared
    /// zero page (default false). The shared zero page costs no memory
    /// until written, but the first write to it takes one more
    /// copy-on-write fault, which under the project's nested KVM made a
    /// guest that writes what it touches ~40% slower (measured: 12 vs 7 µs
    /// per page in a sequential scan). A write fault's own page always
    /// gets a private copy.
    pub private_zero_pages: bool,
    /// The clone group's multicast address and this host's interface
    /// address: pages the holder pushes there are installed as they come.
    pub multicast: Option<(std::net::SocketAddrV4, std::net::Ipv4Addr)>,
    pub on_failure: Option<FailureCallback>,
    /// Pages the guest hinted free: a fault on one gets a local zero page
    /// and no request; readahead, prefetch and multicast never bring one.
    pub free_pages: Arc<FreePages>,
    /// Unregister the whole 2 MiB blocks of hinted runs at attach, so the
    /// kernel fills them (with huge pages where the region allows them)
    /// instead of the handler thread (default false: only a gain where
    /// transparent huge pages back the region).
    pub release_hinted_blocks: bool,
    /// Install a whole 2 MiB block that arrives at once (from the host's
    /// cache of pushed pages, or one fetched batch) as one huge page
    /// (default false: only a gain where transparent huge pages back the
    /// region; off on clone hosts unless asked for). See [`super::huge`].
    pub huge_blocks: bool,
    /// How to reach the page server: mutual TLS (the server's certificate
    /// must name its address) or plain TCP in insecure mode.
    pub transport: sf_tls::Transport,
    /// Test knob: receive the group's pushes and drop them all (a clone
    /// host whose multicast is lost), so faults fall back to unicast.
    pub drop_pushes: bool,
    /// With multicast: the program whose `page-receiver` command is the
    /// host's one receiver of the group (started by the group's first
    /// clone on the host; later ones share it). `None`: this process joins
    /// the group and receives every datagram itself.
    pub page_receiver: Option<std::path::PathBuf>,
    /// With the host's receiver: the clone's guest RAM becomes a private
    /// mapping of the host's cache of pushed pages, so a pushed page costs
    /// a clone nothing until touched, and then a page-table entry instead
    /// of a copy (default false). Set through the unsafe
    /// [`FetchConfig::mapping_host_cache`]: it replaces the region's
    /// mapping.
    pub(crate) map_host_cache: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            min_window_pages: 1,
            max_window_pages: 64,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            reconnect: true,
            private_zero_pages: false,
            multicast: None,
            on_failure: None,
            free_pages: Arc::default(),
            release_hinted_blocks: false,
            huge_blocks: false,
            transport: sf_tls::Transport::Plain,
            drop_pushes: false,
            page_receiver: None,
            map_host_cache: false,
        }
    }
}

impl std::fmt::Debug for FetchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchConfig")
            .field("min_window_pages", &self.min_window_pages)
            .field("max_window_pages", &self.max_window_pages)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("reconnect", &self.reconnect)
            .field("private_zero_pages", &self.private_zero_pages)
            .field("on_failure", &self.on_failure.is_some())
            .field("free_pages", &self.free_pages.pages())
            .field("release_hinted_blocks", &self.release_hinted_blocks)
            .field("huge_blocks", &self.huge_blocks)
            .field("transport", &self.transport.name())
            .field("drop_pushes", &self.drop_pushes)
            .field("page_receiver", &self.page_receiver)
            .field("map_host_cache", &self.map_host_cache)
            .finish()
    }
}

impl FetchConfig {
    /// [`FetchConfig::map_host_cache`] on.
    ///
    /// # Safety
    /// The region later given to [`RemoteMemory::attach`] with this
    /// configuration must be a mapping of this process that nothing
    /// refers to as Rust memory, untouched: attach maps the host's cache
    /// over it (MAP_FIXED), where otherwise the kernel only fills pages
    /// that are absent.
    pub unsafe fn mapping_host_cache(mut self) -> FetchConfig {
        self.map_host_cache = true;
        self
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.connect_timeout,
            request: self.request_timeout,
        }
    }
}

/// Counters since attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Page faults handled (one per faulting access the kernel reported).
    pub faults: u64,
    /// Pages received from the server, zero pages included.
    pub pages_fetched: u64,
    /// Of those, pages that came as a zero marker (no data on the wire).
    pub zero_pages: u64,
    /// Everything read from the server after the hello: headers, page maps
    /// and data.
    pub bytes_received: u64,
    pub requests: u64,
    pub reconnects: u64,
    /// Pages present in the region (installed, or found there).
    pub present_pages: u64,
    /// Pages that arrived by the group's multicast before a fault.
    pub multicast_pages: u64,
    /// Pages the guest hinted free that the fault handler installed as
    /// zero pages itself (on a fault, or in a readahead or prefetch batch);
    /// never requested.
    pub zero_local_pages: u64,
    /// Faults on pages not there yet (nothing had brought them in).
    pub misses: u64,
    /// Requests the holder answered "pushed" (lockstep detection).
    pub pushed_answers: u64,
    /// Pushed pages that did not arrive in time and came by unicast.
    pub push_timeouts: u64,
    /// The group's datagrams that never arrived (sequence gaps).
    pub multicast_lost: u64,
    /// The group's newest sequence number seen, plus one.
    pub multicast_seen: u64,
    /// Pushed pages already there when they came (counted by the host's
    /// receiver when there is one).
    pub multicast_stale_drops: u64,
    /// Datagrams this clone process read itself (0 with a host receiver).
    pub multicast_datagrams_received: u64,
    /// Datagrams the host's receiver read for all the group's clones here.
    pub multicast_host_datagrams: u64,
    /// The host receiver's process id (0: this process receives itself).
    pub multicast_receiver_pid: u64,
    /// Pages of whole hinted 2 MiB blocks handed back to the kernel at
    /// attach (with huge pages): never requested either, zero-filled by the
    /// kernel on first touch if the guest touches them at all.
    pub released_hinted_pages: u64,
    /// Whole 2 MiB blocks installed as one huge page each, and blocks
    /// installed page by page after their move failed.
    pub huge_blocks: u64,
    pub huge_fallbacks: u64,
    /// The region maps the host's cache of pushed pages
    /// ([`FetchConfig::map_host_cache`]).
    pub maps_host_cache: bool,
    /// From reading a fault event to its page being installed.
    pub fault_latency_p50_us: u64,
    pub fault_latency_p99_us: u64,
}

/// Reads a [`RemoteMemory`]'s counters from another thread (e.g. one that
/// publishes them while the vCPU thread waits on a page).
#[derive(Clone)]
pub struct StatsHandle(Arc<Shared>);

impl StatsHandle {
    pub fn stats(&self) -> FetchStats {
        let c = &self.0.counters;
        let latency = self.0.latency.lock().expect("latency lock");
        FetchStats {
            faults: c.faults.load(Relaxed),
            pages_fetched: c.pages_fetched.load(Relaxed),
            zero_pages: c.zero_pages.load(Relaxed),
            bytes_received: c.bytes_received.load(Relaxed),
            requests: c.requests.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
            present_pages: c.present_pages.load(Relaxed),
            multicast_pages: c.multicast_pages.load(Relaxed),
            zero_local_pages: c.zero_local_pages.load(Relaxed),
            misses: c.misses.load(Relaxed),
            pushed_answers: c.pushed_answers.load(Relaxed),
            push_timeouts: c.push_timeouts.load(Relaxed),
            multicast_lost: c.multicast_lost.load(Relaxed),
            multicast_seen: c.multicast_seen.load(Relaxed),
            multicast_stale_drops: c.multicast_stale_drops.load(Relaxed),
            multicast_datagrams_received: c.multicast_datagrams_received.load(Relaxed),
            multicast_host_datagrams: c.multicast_host_datagrams.load(Relaxed),
            multicast_receiver_pid: c.multicast_receiver_pid.load(Relaxed),
            released_hinted_pages: c.released_hinted_pages.load(Relaxed),
            huge_blocks: c.huge_blocks.load(Relaxed),
            huge_fallbacks: c.huge_fallbacks.load(Relaxed),
            maps_host_cache: c.maps_host_cache.load(Relaxed),
            fault_latency_p50_us: latency.quantile(0.50),
            fault_latency_p99_us: latency.quantile(0.99),
        }
    }
}

/// A region of this process whose missing pages are fetched from a page
/// server on first touch, by one handler thread.
pub struct RemoteMemory {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl RemoteMemory {
    /// Registers `[region_ptr, region_ptr + len)` with userfaultfd and starts
    /// fetching its pages from `server`, which must serve exactly `len`
    /// bytes to `token`.
    ///
    /// The region should be an untouched private anonymous mapping (the
    /// clone's empty guest RAM) that outlives the `RemoteMemory`: pages
    /// already present keep their local contents, and the kernel checks
    /// every address this code passes it, so a bad range is an error, not
    /// undefined behaviour (unless the configuration maps the host's cache
    /// over it, which needs the promise of
    /// [`FetchConfig::mapping_host_cache`]). After a failure, or once
    /// dropped, pages not yet fetched read as zeros.
    pub fn attach(
        region_ptr: *mut u8,
        len: usize,
        server: SocketAddr,
        token: GroupToken,
        cfg: FetchConfig,
    ) -> Result<RemoteMemory, RemoteError> {
        let base = region_ptr as u64;
        let bad = |why| RemoteError::BadRegion {
            addr: base,
            len: len as u64,
            why,
        };
        if len == 0 {
            return Err(bad("empty"));
        }
        if !base.is_multiple_of(PAGE_SIZE as u64) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(bad("not page-aligned"));
        }
        let connect = || PageClient::connect(server, &token, cfg.timeouts(), &cfg.transport);
        let client = match connect() {
            // The holder closes the oldest of more than 16 handshakes in
            // progress (a defence against silent strangers): 32 clones
            // connecting at once on a loaded machine lost 2 to 11 of theirs
            // that way (bench remote, 32 clones, load ~12). Once more, as
            // a request that fails. (A refused or unreachable server is
            // not retried: nothing listens there.)
            Err(first) if first.closed_by_server() && cfg.reconnect => {
                tracing::warn!("remote memory: {first}; connecting once more");
                connect().map_err(|retry| RemoteError::Retried {
                    first: Box::new(first),
                    retry: Box::new(retry),
                })?
            }
            other => other?,
        };
        if client.region_len() != len as u64 {
            return Err(RemoteError::SizeMismatch {
                server,
                served: client.region_len(),
                local: len as u64,
            });
        }
        let pushes = cfg
            .multicast
            .and_then(|(group, iface)| pushes_for(&cfg, group, iface, token, len as u64));
        let mapped = cfg.map_host_cache && map_host_cache(pushes.as_ref(), base, len as u64);
        let uffd = Userfaultfd::new().map_err(|source| RemoteError::Uffd {
            what: "open",
            source,
        })?;
        uffd.register_missing(base, len as u64)
            .map_err(|source| RemoteError::Uffd {
                what: "register",
                source,
            })?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(|source| RemoteError::Uffd {
            what: "eventfd",
            source,
        })?;
        let shared = Arc::new(Shared::new(wake));
        let (commands, rx) = mpsc::channel();
        let target = Target {
            uffd,
            base,
            len: len as u64,
            server,
            token,
            client,
            pushes,
            mapped,
        };
        let handler = Handler::new(target, cfg, shared.clone(), rx);
        let thread = std::thread::Builder::new()
            .name("sf-remote-mem".into())
            .spawn(move || {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.run()));
                if ran.is_err() && mapped {
                    // The userfaultfd closes with this thread: the guest's
                    // next touch of a page the host's cache lacks would add
                    // a page of zeros to the cache every clone of the host
                    // maps. Better this clone ends here.
                    eprintln!("snowflock: the remote memory handler panicked over the host's page cache; aborting this clone");
                    std::process::abort();
                }
            })
            .map_err(|source| RemoteError::Uffd {
                what: "handler thread spawn",
                source,
            })?;
        Ok(RemoteMemory {
            shared,
            commands,
            thread: Some(thread),
        })
    }

    pub fn stats(&self) -> FetchStats {
        self.stats_handle().stats()
    }

    /// Whether the region is a private mapping of the host's cache of
    /// pushed pages ([`FetchConfig::map_host_cache`]).
    pub fn maps_host_cache(&self) -> bool {
        self.shared.counters.maps_host_cache.load(Relaxed)
    }

    /// A handle that reads the counters from any thread.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.shared.clone())
    }

    /// Why remote memory failed, once it has: from then on missing pages
    /// read as zeros.
    pub fn failed(&self) -> Option<String> {
        self.shared.failed.lock().expect("failed lock").clone()
    }

    /// Fetches every page not yet present, in maximal batches, while faults
    /// keep being served first. Used before a remote clone forks: a child
    /// does not inherit the userfaultfd registration, so it must find every
    /// page in place.
    pub fn prefetch_all(&self) -> Result<(), RemoteError> {
        if let Some(why) = self.failed() {
            return Err(RemoteError::Failed(why));
        }
        let (tx, rx) = mpsc::channel();
        self.send(Command::PrefetchAll(tx))?;
        rx.recv().unwrap_or(Err(RemoteError::Stopped))
    }

    /// Lets the handler take in the pages pushed so far, waiting `at_most`
    /// for it (the counters read next include them).
    pub fn settle(&self, at_most: Duration) {
        let (tx, rx) = mpsc::channel();
        if self.send(Command::Settle(tx)).is_ok() {
            let _ = rx.recv_timeout(at_most);
        }
    }

    /// Streams pages `[first, first + count)` (region page numbers) ahead
    /// of the faults that would ask for them, between faults; returns at
    /// once. Clamped to the region; the handler keeps the newest
    /// [`super::handler::RANGES_QUEUED`] ranges.
    pub fn prefetch_range(&self, first: u64, count: u64) {
        let _ = self.send(Command::PrefetchRange { first, count });
    }

    fn send(&self, cmd: Command) -> Result<(), RemoteError> {
        self.commands.send(cmd).map_err(|_| RemoteError::Stopped)?;
        self.shared.wake.write(1).map_err(|_| RemoteError::Stopped)
    }
}

impl Drop for RemoteMemory {
    /// Stops the handler thread (after the request in flight, if any) and
    /// closes the userfaultfd, which ends the registration: threads still
    /// waiting for a page are woken by the kernel and see zeros.
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        let _ = self.shared.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

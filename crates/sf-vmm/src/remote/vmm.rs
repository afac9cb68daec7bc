//! What the VMM needs around the fetcher and the server: serving a frozen
//! copy of guest RAM from the memory holder, kicking the vCPU thread when
//! remote memory fails, and counters another thread can publish.

use super::{FetchStats, GroupToken, PageServer, ServedRegion, StatsHandle};
use crate::clone::process;
use crate::memory::GuestRam;
use std::net::TcpListener;

/// How the memory holder serves, beyond the pages themselves.
pub struct Serving {
    /// Mutual TLS (or plain TCP in insecure mode) before the hello.
    pub transport: sf_tls::Transport,
    /// The group's multicast, and whether lockstep detection decides what
    /// goes there.
    pub multicast: Option<super::multicast::Sender>,
    pub lockstep: bool,
    pub working_set: Option<super::working_set_holder::HolderSet>,
    /// Counters the VMM that forked this holder reads at the join.
    pub stats: Option<std::sync::Arc<super::SharedStats>>,
}

/// In the memory holder: serve `ram` (frozen: this process never runs the
/// guest) on `listener` to holders of `token` who complete the handshake of
/// `how.transport`, until killed.
pub fn serve_frozen(listener: TcpListener, token: GroupToken, ram: &GuestRam, how: Serving) -> ! {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // SAFETY: this process is a fork()ed snapshot that never runs the vCPU
    // and never writes guest RAM; the mapping lives until the process exits.
    let region = unsafe { ServedRegion::new(ram.host_base() as *const u8, ram.size() as usize) };
    eprintln!(
        "snowflock: memory holder pid {} serving the clone group's RAM on {addr}",
        process::getpid()
    );
    match PageServer::from_listener(listener, region, token) {
        Ok(server) => {
            let mut server = server.with_transport(how.transport);
            if let Some(stats) = how.stats {
                server = server.with_shared_stats(stats);
            }
            if let Some(ws) = how.working_set {
                server = server.with_working_set(ws);
            }
            if let Some(m) = how.multicast {
                server = server.with_multicast(m);
                if how.lockstep {
                    server = server.with_lockstep();
                }
            }
            if let Err(e) = server.serve() {
                eprintln!("snowflock: memory holder stopped: {e}");
            }
        }
        Err(e) => eprintln!("snowflock: memory holder could not serve: {e}"),
    }
    process::exit_now(0)
}

/// Interrupts a thread's KVM_RUN (SIGALRM, whose handler the VMM installs).
#[derive(Clone, Copy)]
pub struct ThreadKicker(libc::pthread_t);

/// A kicker for the calling thread (the vCPU thread).
pub fn current_thread_kicker() -> ThreadKicker {
    // SAFETY: pthread_self has no preconditions.
    ThreadKicker(unsafe { libc::pthread_self() })
}

impl ThreadKicker {
    pub fn kick(&self) {
        // SAFETY: the thread is the VMM's vCPU thread, alive for the whole
        // process; SIGALRM has a no-op handler, so this only interrupts it.
        unsafe { libc::pthread_kill(self.0, libc::SIGALRM) };
    }
}

/// Remote-memory counters for the daemon and reports.
#[derive(Clone, Default)]
pub struct StatsSource(Option<StatsHandle>);

impl StatsSource {
    pub fn new(h: StatsHandle) -> StatsSource {
        StatsSource(Some(h))
    }

    pub fn get(&self) -> sf_api::FetchStats {
        self.0
            .as_ref()
            .map(|h| api_stats(&h.stats()))
            .unwrap_or_default()
    }
}

pub fn api_stats(s: &FetchStats) -> sf_api::FetchStats {
    sf_api::FetchStats {
        faults: s.faults,
        pages_fetched: s.pages_fetched,
        zero_pages: s.zero_pages,
        bytes_received: s.bytes_received,
        requests: s.requests,
        fault_latency_p50_us: s.fault_latency_p50_us,
        fault_latency_p99_us: s.fault_latency_p99_us,
        multicast_pages: s.multicast_pages,
        zero_local_pages: s.zero_local_pages,
        misses: s.misses,
        pushed_answers: s.pushed_answers,
        push_timeouts: s.push_timeouts,
        multicast_lost: s.multicast_lost,
        multicast_seen: s.multicast_seen,
        multicast_stale_drops: s.multicast_stale_drops,
        multicast_datagrams_received: s.multicast_datagrams_received,
        multicast_host_datagrams: s.multicast_host_datagrams,
        multicast_receiver_pid: s.multicast_receiver_pid,
        released_hinted_pages: s.released_hinted_pages,
        huge_blocks: s.huge_blocks,
        huge_fallbacks: s.huge_fallbacks,
        maps_host_cache: s.maps_host_cache,
    }
}

//! The page server: serves one memory region to the clone hosts of one
//! clone group, a thread per connection, to whoever completes the mutual
//! TLS handshake (a certificate of the cluster CA) and then shows the
//! group's token. A connection has [`HELLO_TIMEOUT`] for both; until it has
//! passed them it does not count toward the "Busy" limit, so strangers who
//! connect and say nothing cannot lock a real clone out.
//!
//! In production it runs in its own process, a frozen forked copy of the
//! parent VMM, so the region (the parent's guest RAM at the fork) never
//! changes while it is served.

use super::lockstep::{Lockstep, LossyReceiver, SHARE_WINDOW_MS};
use super::pacer::{Pacer, Report, STEP_PAGES};
use super::protocol::{
    self, Ask, Hello, HelloReply, RefuseReason, Request, HELLO_LEN, PAGE_SIZE, PROTOCOL_VERSION,
    REQUEST_LEN,
};
use super::region::ServedRegion;
pub use super::server_stats::{ServerStats, SharedStats};
use super::working_set_holder::HolderSet;
use super::GroupToken;
use sf_tls::Transport;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Smallest request (pages) whose next batches the holder pushes ahead.
const PUSH_AHEAD_MIN: u32 = super::lockstep::SCAN_PAGES;
/// How many batches the holder pushes ahead of a scanning clone.
const PUSH_AHEAD_BATCHES: u32 = 4;

/// How long a new connection may take for the TLS handshake and the hello
/// together: a peer that connects and says nothing holds a thread for at
/// most this long. A clone host on the same network needs a few ms.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections still authenticating, at most. Each holds a thread for up
/// to [`HELLO_TIMEOUT`], and the holder's threads count against its VM's
/// cgroup task limit, so a new connection past this closes the *oldest*
/// pending one: a flood of silent strangers keeps turning over while a
/// cluster member, whose handshake and hello take a few ms, gets through.
pub const MAX_PENDING: usize = 16;
/// How long one response may take to leave: a client that stops reading
/// must not hold a thread for ever either.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are refused as busy.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// State shared by the accept loop, the connection threads and the handles.
struct Shared {
    stop: AtomicBool,
    wake: EventFd,
    /// A second descriptor of the listening socket, so a handle can shut
    /// it down (new connections refused at once) without racing on the fd.
    listener: TcpListener,
    conns: Mutex<HashMap<u64, TcpStream>>,
    /// Connections that have not sent their hello yet, oldest first.
    pending: Mutex<std::collections::BTreeSet<u64>>,
    /// Connections that passed the handshake and the hello (the ones
    /// "Busy" counts).
    authenticated: AtomicUsize,
    /// In a shared mapping, so the VMM that forked the memory holder
    /// reads them after the join.
    counters: Arc<SharedStats>,
    /// Paces bulk pushes to the slowest healthy receiver.
    pacer: Pacer,
}

/// Stops a running [`PageServer`] and reads its counters from any thread.
#[derive(Clone)]
pub struct ServerHandle(Arc<Shared>);

impl ServerHandle {
    /// Stops serving as a crash would look to clients: new connections are
    /// refused, open ones are closed, and `serve` returns once every
    /// connection thread has finished.
    pub fn stop(&self) {
        let s = &self.0;
        s.stop.store(true, SeqCst);
        // SAFETY: shutdown(2) on a socket this struct owns; it does not
        // close the fd. On a listening socket Linux stops listening, so new
        // connections are refused instead of queueing unanswered.
        unsafe { libc::shutdown(s.listener.as_raw_fd(), libc::SHUT_RDWR) };
        for c in s.conns.lock().expect("conns lock").values() {
            let _ = c.shutdown(Shutdown::Both);
        }
        let _ = s.wake.write(1);
    }

    pub fn stats(&self) -> ServerStats {
        ServerStats {
            push_rate_pps: self.0.pacer.rate(),
            ..self.0.counters.stats()
        }
    }
}

pub struct PageServer {
    listener: TcpListener,
    region: ServedRegion,
    token: GroupToken,
    /// Also pushes every served page to the clone group's other hosts.
    multicast: Option<super::multicast::Sender>,
    /// Lockstep detection (with multicast): `None` pushes every page
    /// served after answering over TCP, as before lockstep detection.
    lockstep: Option<Lockstep>,
    /// The parent's recorded working set: recorded here, or pushed (with
    /// multicast) ahead of each clone's faults.
    working_set: Option<HolderSet>,
    max_connections: usize,
    transport: Transport,
    shared: Arc<Shared>,
}

impl PageServer {
    /// Listens on `addr` (port 0: any free port) to serve `region` (whole
    /// pages) to clients that show `token`. Returns the address bound.
    pub fn bind(
        addr: impl ToSocketAddrs,
        region: ServedRegion,
        token: GroupToken,
    ) -> io::Result<(PageServer, SocketAddr)> {
        if !region.len().is_multiple_of(PAGE_SIZE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("served region of {} bytes is not whole pages", region.len()),
            ));
        }
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        Ok((PageServer::from_listener(listener, region, token)?, local))
    }

    /// Serves `region` on a listener made earlier (the VMM opens it before
    /// forking the memory holder, so the address is known in advance).
    pub fn from_listener(
        listener: TcpListener,
        region: ServedRegion,
        token: GroupToken,
    ) -> io::Result<PageServer> {
        if !region.len().is_multiple_of(PAGE_SIZE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("served region of {} bytes is not whole pages", region.len()),
            ));
        }
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
            listener: listener.try_clone()?,
            conns: Mutex::new(HashMap::new()),
            pending: Mutex::new(std::collections::BTreeSet::new()),
            authenticated: AtomicUsize::new(0),
            counters: Arc::new(SharedStats::new()?),
            pacer: Pacer::default(),
        });
        Ok(PageServer {
            listener,
            region,
            token,
            multicast: None,
            lockstep: None,
            working_set: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            transport: Transport::Plain,
            shared,
        })
    }

    /// Requires mutual TLS under the cluster CA before the hello (plain
    /// TCP, the default, only in insecure mode and tests).
    pub fn with_transport(mut self, t: Transport) -> PageServer {
        self.transport = t;
        self
    }

    /// Pushes each page served to anyone to the whole group as well.
    pub fn with_multicast(mut self, sender: super::multicast::Sender) -> PageServer {
        self.multicast = Some(sender);
        self
    }

    /// With multicast, while several clones ask for pages of one chunk:
    /// pushes each page asked for once while it is on its way and answers
    /// "pushed"; pages only one clone asks for go by unicast alone (see
    /// [`super::lockstep`]).
    pub fn with_lockstep(mut self) -> PageServer {
        self.lockstep = Some(Lockstep::new(self.region.len() / PAGE_SIZE));
        self
    }

    /// Records the pages clones ask for into the parent's working set, or
    /// pushes the recorded ones (with multicast) when a clone first asks.
    /// Counts into `stats` (a mapping the VMM made before forking this
    /// memory holder, so it reads the counters after the join).
    pub fn with_shared_stats(mut self, stats: Arc<SharedStats>) -> PageServer {
        // No handle or connection holds `shared` yet: a server is tuned
        // before it serves.
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.counters = stats,
            None => tracing::warn!("page server: counters not shared (a handle was taken first)"),
        }
        self
    }

    pub fn with_working_set(mut self, set: HolderSet) -> PageServer {
        self.working_set = Some(set);
        self
    }

    /// Caps the connections served at once (default 256).
    pub fn with_max_connections(mut self, n: usize) -> PageServer {
        self.max_connections = n.max(1);
        self
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle(self.shared.clone())
    }

    pub fn stats(&self) -> ServerStats {
        self.handle().stats()
    }

    /// Serves until [`ServerHandle::stop`]; returns after every connection
    /// thread has ended, so the region is no longer read once it returns.
    pub fn serve(&self) -> io::Result<()> {
        std::thread::scope(|scope| {
            let mut next_id = 0u64;
            loop {
                self.wait_for_connection()?;
                if self.shared.stop.load(SeqCst) {
                    return Ok(());
                }
                loop {
                    let stream = match self.listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // Out of fds, aborted handshakes...: that client's
                        // problem, not the server's.
                        Err(e) => {
                            tracing::debug!("page server accept: {e}");
                            break;
                        }
                    };
                    next_id += 1;
                    let id = next_id;
                    if !self.track(id, &stream) {
                        return Ok(());
                    }
                    self.admit_pending(id);
                    let spawned = std::thread::Builder::new()
                        .name("sf-page-conn".into())
                        .spawn_scoped(scope, move || {
                            if let Err(e) = self.connection(scope, id, stream) {
                                tracing::debug!("page server connection ended: {e}");
                            }
                            self.forget(id);
                        });
                    // Out of threads (the cgroup's task limit): that client
                    // is dropped, the service goes on.
                    if let Err(e) = spawned {
                        tracing::warn!("page server: no thread for a new connection: {e}");
                        self.forget(id);
                    }
                }
            }
        })
    }

    fn wait_for_connection(&self) -> io::Result<()> {
        let mut fds = [
            libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.shared.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Counts a new connection as pending; past [`MAX_PENDING`] the oldest
    /// pending one is shut down (its thread then ends at once).
    fn admit_pending(&self, id: u64) {
        let oldest = {
            let mut pending = self.shared.pending.lock().expect("pending lock");
            pending.insert(id);
            if pending.len() > MAX_PENDING {
                pending.pop_first()
            } else {
                None
            }
        };
        if let Some(old) = oldest {
            tracing::debug!(
                "page server: {MAX_PENDING} connections still authenticating; closing the oldest"
            );
            if let Some(c) = self.shared.conns.lock().expect("conns lock").get(&old) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    fn forget(&self, id: u64) {
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .remove(&id);
        self.shared.conns.lock().expect("conns lock").remove(&id);
    }

    /// Registers a connection so `stop` can close it; false if stopping.
    fn track(&self, id: u64, stream: &TcpStream) -> bool {
        let mut conns = self.shared.conns.lock().expect("conns lock");
        // Checked under the lock `stop` takes after setting the flag: a
        // connection is either seen by `stop` or sees the flag.
        if self.shared.stop.load(SeqCst) {
            return false;
        }
        if let Ok(c) = stream.try_clone() {
            conns.insert(id, c);
        }
        true
    }

    fn connection<'s>(
        &'s self,
        scope: &'s std::thread::Scope<'s, '_>,
        id: u64,
        stream: TcpStream,
    ) -> io::Result<()> {
        let counters = &self.shared.counters;
        let deadline = std::time::Instant::now() + HELLO_TIMEOUT;
        stream.set_nonblocking(false)?;
        let mut s = self.transport.accept(stream)?;
        s.handshake_until(deadline)?;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        s.tcp().set_read_timeout(Some(left))?;
        s.tcp().set_write_timeout(Some(WRITE_TIMEOUT))?;
        let mut hello = [0u8; HELLO_LEN];
        s.read_exact(&mut hello)?;
        // It said its hello in time: no longer one a newcomer may evict.
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .remove(&id);
        let mut slot = None;
        let refuse = match Hello::decode(&hello) {
            Err(_) => Some(RefuseReason::BadMagic),
            Ok(h) if h.version != PROTOCOL_VERSION => Some(RefuseReason::UnsupportedVersion),
            Ok(h) if !same_token(&h.token, &self.token) => Some(RefuseReason::BadToken),
            Ok(_) => match AuthSlot::take(&self.shared.authenticated, self.max_connections) {
                Some(g) => {
                    slot = Some(g);
                    None
                }
                None => Some(RefuseReason::Busy),
            },
        };
        if let Some(reason) = refuse {
            counters.refused.fetch_add(1, Relaxed);
            let reply = HelloReply::Refuse {
                version: PROTOCOL_VERSION,
                reason,
            };
            s.write_all(&reply.encode())?;
            return Ok(());
        }
        let reply = HelloReply::Accept {
            version: PROTOCOL_VERSION,
            region_len: self.region.len() as u64,
        };
        s.write_all(&reply.encode())?;
        counters.connections.fetch_add(1, Relaxed);
        // A clone host may go quiet for as long as its guest needs no new
        // pages: no read timeout from here on.
        s.tcp().set_read_timeout(None)?;
        let _slot = slot;
        let region = self.region.as_slice();
        let mut buf = [0u8; REQUEST_LEN];
        let mut lossy = LossyReceiver::default();
        // The lossy record's clock: ms since this connection began.
        let began = Instant::now();
        let now_ms = || u32::try_from(began.elapsed().as_millis()).unwrap_or(u32::MAX);
        // Pages this clone asked for outside the pushed working set.
        let mut outside = 0u64;
        let mut first_request = true;
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    if let Some(line) = self
                        .working_set
                        .as_ref()
                        .and_then(|w| w.compare_predictors())
                    {
                        eprintln!("snowflock: memory holder working set: {line}");
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            if let Some(report) = Report::decode(&buf) {
                counters.reports.fetch_add(1, Relaxed);
                self.shared
                    .pacer
                    .report(report, !lossy.unicast_only(now_ms()));
                counters
                    .push_rate_pps
                    .store(self.shared.pacer.rate(), Relaxed);
                continue;
            }
            let (req, ask) = Request::decode_flagged(&buf);
            let unicast = ask == Ask::Unicast;
            counters.requests.fetch_add(1, Relaxed);
            if let Err(reason) = req.check(region.len() as u64) {
                // Refused, and the stream stays in step: requests and
                // refusals are fixed-size frames. The refusal echoes the
                // request as sent.
                counters.refused.fetch_add(1, Relaxed);
                let raw = Request::decode(&buf);
                s.write_all(&protocol::encode_response_header(&raw, Some(reason)))?;
                continue;
            }
            if let Some(ws) = &self.working_set {
                ws.on_request(req.offset / PAGE_SIZE as u64, req.pages, &mut outside);
            }
            if std::mem::take(&mut first_request) {
                self.start_working_set_push(scope);
            }
            if unicast {
                if lossy.fell_back(now_ms()) {
                    counters.lossy_receivers.fetch_add(1, Relaxed);
                }
                counters.unicast_fallbacks.fetch_add(1, Relaxed);
            }
            // Only while siblings are connected: a lone clone keeps its
            // ~0.2 ms faults over TCP.
            let group = self
                .multicast
                .as_ref()
                .filter(|_| self.shared.authenticated.load(Relaxed) > 1);
            match (group, &self.lockstep) {
                (Some(m), Some(ls)) => {
                    let now = ls.log.now();
                    let first = req.offset as usize / PAGE_SIZE;
                    let pages = req.pages as usize;
                    let may_lead = ask != Ask::Announced;
                    let verdict = ls.sharing.on_request_as(id, first, pages, now, may_lead);
                    counters
                        .lockstep_shared_chunks
                        .fetch_add(u64::from(verdict.newly_shared), Relaxed);
                    counters
                        .lockstep_predicted_chunks
                        .fetch_add(u64::from(verdict.predicted), Relaxed);
                    let by_push = !unicast && !lossy.unicast_only(now_ms());
                    // Pages on their way already (a sibling's push, the
                    // working set) are waited for even in a private chunk.
                    if by_push && (verdict.shared || ls.log.all_in_flight(first, pages, now)) {
                        if verdict.shared {
                            self.push_once(m, ls, &req, now);
                        }
                        let map = protocol::page_map(region, req.offset as usize, req.pages);
                        // Every push of these pages this connection made
                        // is numbered below `seq_end`: the clone waits for
                        // its host to read that far, not for a timer.
                        let seq_end = m.datagrams();
                        let sent = protocol::write_pushed(&mut s, req.offset, &map, seq_end)?;
                        lossy.pushed();
                        counters.pushed_answers.fetch_add(1, Relaxed);
                        counters.bytes_sent.fetch_add(sent as u64, Relaxed);
                    } else {
                        self.answer(&mut s, &req)?;
                        if verdict.shared {
                            // A lost push or a lossy receiver: the pages
                            // go to it by unicast, and to the group only
                            // if no sibling had them yet.
                            for page in first..first + pages {
                                if ls.log.claim_new(page, now) {
                                    let at = (page * PAGE_SIZE) as u64;
                                    self.count_push(m.send_page(region, at));
                                }
                            }
                        } else {
                            counters
                                .unicast_private_pages
                                .fetch_add(u64::from(req.pages), Relaxed);
                        }
                    }
                }
                (group, None) => {
                    self.answer(&mut s, &req)?;
                    // Without lockstep detection every page served is
                    // pushed, after the answer (the asking clone comes
                    // first). Pushing in line also paces each clone's next
                    // request to what the group receives (measured before
                    // lockstep detection: 4x fewer bytes over TCP per
                    // clone at 16 clones).
                    if let Some(m) = group {
                        let before = m.datagrams();
                        m.send_pages(region, req.offset, req.pages);
                        counters
                            .multicast_datagrams
                            .fetch_add(m.datagrams() - before, Relaxed);
                    }
                }
                (None, Some(_)) => self.answer(&mut s, &req)?,
            }
        }
    }

    /// Lockstep, in a shared chunk: pushes every page of the request that
    /// is not on its way already, once, and the batches after it for a
    /// scanning clone (lending them the chunk's lease, see
    /// [`super::lockstep::Sharing::lend`]); the whole request is then
    /// answered "pushed".
    fn push_once(&self, m: &super::multicast::Sender, ls: &Lockstep, req: &Request, now: u32) {
        let first = req.offset as usize / PAGE_SIZE;
        let region = self.region.as_slice();
        // A batch of PUSH_AHEAD_MIN pages or more is a clone's readahead
        // grown on a scan: the group gets the next batches as well, before
        // any clone asks. A clone that does not go on wastes them.
        let ahead = if req.pages >= PUSH_AHEAD_MIN {
            (req.pages * PUSH_AHEAD_BATCHES) as usize
        } else {
            0
        };
        let asked_end = first + req.pages as usize;
        let end = (asked_end + ahead).min(region.len() / PAGE_SIZE);
        if end > asked_end {
            let until = ls
                .sharing
                .own_lease(first)
                .max(ls.sharing.own_lease(asked_end - 1));
            ls.sharing.lend(asked_end, end - asked_end, until);
        }
        for page in first..end {
            if ls.log.claim(page, now) {
                self.count_push(m.send_page(region, (page * PAGE_SIZE) as u64));
            }
        }
    }

    /// Pushes the recorded working set to the group, in order, from a
    /// thread of its own, when a clone asks for its first page: by then its
    /// host has joined the group, and its first fault is not held up. With
    /// lockstep detection a page pushed in the last [`SHARE_WINDOW_MS`]
    /// (for a clone that joined about as early) is not sent again; without
    /// it only the first clone triggers a push.
    fn start_working_set_push<'s>(&'s self, scope: &'s std::thread::Scope<'s, '_>) {
        let (Some(ws), Some(m)) = (&self.working_set, &self.multicast) else {
            return;
        };
        if ws.to_push().is_empty() || (self.lockstep.is_none() && ws.started()) {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("sf-ws-push".into())
            .spawn_scoped(scope, move || {
                let region = self.region.as_slice();
                let c = &self.shared.counters;
                let began = std::time::Instant::now();
                for (i, &page) in ws.to_push().iter().enumerate() {
                    if self.shared.stop.load(Relaxed) {
                        return;
                    }
                    if i % STEP_PAGES as usize == 0 {
                        self.shared.pacer.pace(STEP_PAGES);
                    }
                    let page = page as usize;
                    if let Some(ls) = &self.lockstep {
                        let now = ls.log.now();
                        if !ls.log.claim_unless_within(page, now, SHARE_WINDOW_MS) {
                            continue;
                        }
                    }
                    if m.send_page(region, (page * PAGE_SIZE) as u64) {
                        c.multicast_datagrams.fetch_add(1, Relaxed);
                        c.working_set_pushed.fetch_add(1, Relaxed);
                    }
                }
                eprintln!(
                    "snowflock: memory holder pushed {} working-set pages in {:?}",
                    c.working_set_pushed.load(Relaxed),
                    began.elapsed()
                );
            });
        if let Err(e) = spawned {
            tracing::warn!("page server: no thread to push the working set: {e}");
        }
    }

    fn count_push(&self, sent: bool) {
        if sent {
            let c = &self.shared.counters;
            c.multicast_datagrams.fetch_add(1, Relaxed);
        }
    }

    /// The pages of a checked request, over this connection.
    fn answer(&self, s: &mut impl Write, req: &Request) -> io::Result<()> {
        let counters = &self.shared.counters;
        let sent = protocol::write_pages(s, req, self.region.as_slice())?;
        counters
            .pages_sent
            .fetch_add(u64::from(sent.data_pages), Relaxed);
        counters
            .zero_pages
            .fetch_add(u64::from(sent.zero_pages), Relaxed);
        counters.bytes_sent.fetch_add(sent.bytes as u64, Relaxed);
        Ok(())
    }
}

/// One of the `max` places for authenticated connections, given back on drop.
struct AuthSlot<'a>(&'a AtomicUsize);

impl<'a> AuthSlot<'a> {
    fn take(count: &'a AtomicUsize, max: usize) -> Option<AuthSlot<'a>> {
        count
            .fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| AuthSlot(count))
    }
}

impl Drop for AuthSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Compares tokens in time independent of where they differ, so timing
/// does not reveal how much of a guess was right.
fn same_token(a: &GroupToken, b: &GroupToken) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

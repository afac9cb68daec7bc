//! Clones on other hosts, from the origin's side: where clones go (decided
//! here, from the peer list the daemon handed this VMM), the frozen-memory
//! holder that starts them on their hosts (mutual TLS to each peer daemon)
//! and then serves their pages, and the listener that collects their
//! reports and notices when they or their hosts are gone. Every connection
//! goes over the VMM's [`Transport`], loaded once at start-up.

use super::report::CloneReport;
use super::wire::Frame;
use crate::memory::GuestRam;
use crate::remote::working_set::WorkingSet;
use crate::remote::working_set_holder::HolderSet;
use sf_api::{Client, CloneRequest, Endpoint, Placement};
use sf_tls::{Stream, Transport};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a VM needs for clones on other hosts (the daemon passes it to the
/// VMMs it starts).
#[derive(Clone, Debug)]
pub struct RemoteLink {
    /// The peer daemons' TCP APIs, "ip:port".
    pub peers: Vec<String>,
    /// Mutual TLS with the cluster's credentials (or plain TCP in
    /// insecure mode), for every connection to other hosts.
    pub transport: Transport,
    /// The address peers reach this host at (its certificate names it).
    pub advertise: IpAddr,
    pub placement: Placement,
    /// Readahead limit for remote clones (pages; `None`: the default).
    pub prefetch_window: Option<u32>,
    /// No page pushes to the clone group's multicast: every clone fetches
    /// what it touches over its own connection (`--no-multicast`).
    pub no_multicast: bool,
    /// Push every page served after answering over TCP, without lockstep
    /// detection (`--no-lockstep`; to measure what it buys).
    pub no_lockstep: bool,
    /// No recorded working set pushed ahead of faults (`--no-working-set`).
    pub no_working_set: bool,
}

/// A remote clone that never connects within this long is lost.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// A connection to the report listener that has not authenticated (TLS
/// handshake and the group's token) within this long is dropped.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(2);
/// Connections to the report listener still authenticating, at most (plus
/// one per remote clone of the group, which all connect at once when the
/// origin first looks). Past it a new connection closes the oldest
/// pending one, so strangers that connect and say nothing cannot pile up
/// descriptors and handshake state in the origin VMM.
pub const MAX_PENDING_REPORTS: usize = 64;
/// Connections accepted per turn of the report listener's loop; the
/// listen queue keeps the rest for the next turn.
const ACCEPTS_PER_LOOK: usize = 16;
/// A connected remote clone silent for this long is lost (host down).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often remote clones send heartbeats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Where each of `n` clones goes: `None` here, else a peer daemon.
pub fn place(link: &RemoteLink, n: u32) -> Vec<Option<String>> {
    sf_api::place(n, &link.peers, link.placement)
}

/// The listener remote clones report to, and how they must talk to it.
pub struct ReportListener {
    pub listener: TcpListener,
    pub transport: Transport,
}

impl ReportListener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// What the clone call prepares before forking, when some clones go remote.
pub struct RemotePlan {
    pub token: [u8; 16],
    pub memory: TcpListener,
    pub reports: ReportListener,
    pub transport: Transport,
    /// Peer daemon -> clone IDs it runs.
    pub by_peer: BTreeMap<String, Vec<u32>>,
    pub request: CloneRequest,
    /// Where the holder pushes served pages, and out of which interface.
    pub multicast: Option<(std::net::SocketAddrV4, std::net::Ipv4Addr)>,
    /// Whether the holder sends a page once while it is on its way.
    pub lockstep: bool,
    /// The parent's recorded working set (mapped by the parent, so this
    /// holder and every later one share it), unless `--no-working-set`;
    /// the clone call sets it.
    pub working_set: Option<Arc<WorkingSet>>,
    /// The holder's counters, mapped before the fork so the parent reads
    /// them at the join (`None` if the mapping failed: no counters).
    pub holder_stats: Option<Arc<crate::remote::SharedStats>>,
}

impl RemotePlan {
    pub fn new(
        link: &RemoteLink,
        by_peer: BTreeMap<String, Vec<u32>>,
        descriptor: &[u8],
        mem_size: u64,
        timeout: Option<Duration>,
        max_clones: u32,
        parent_path: &str,
    ) -> std::io::Result<RemotePlan> {
        let memory = TcpListener::bind((link.advertise, 0))?;
        let reports = ReportListener {
            listener: TcpListener::bind((link.advertise, 0))?,
            transport: link.transport.clone(),
        };
        let seed = crate::boot::entropy_bytes();
        let token: [u8; 16] = seed[..16].try_into().expect("16 bytes");
        // An administratively scoped group of its own, on the page server's port.
        let multicast = match link.advertise {
            _ if link.no_multicast => None,
            IpAddr::V4(iface) => Some((
                std::net::SocketAddrV4::new(
                    std::net::Ipv4Addr::new(239, 213, seed[16], seed[17].max(1)),
                    memory.local_addr()?.port(),
                ),
                iface,
            )),
            IpAddr::V6(_) => None,
        };
        let request = CloneRequest {
            descriptor_hex: sf_api::to_hex(descriptor),
            mem_size,
            memory_server: memory.local_addr()?.to_string(),
            report_to: reports.local_addr()?.to_string(),
            token_hex: sf_api::to_hex(&token),
            ids: Vec::new(),
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
            max_clones,
            parent_path: parent_path.to_string(),
            prefetch_window: link.prefetch_window,
            multicast: multicast.map(|(g, _)| g.to_string()),
            requested_unix_ns: Some(unix_ns()),
            free_pages: Vec::new(),
            output_cap: None,
            result_cap: None,
            net: None,
        };
        Ok(RemotePlan {
            token,
            memory,
            reports,
            by_peer,
            request,
            multicast,
            lockstep: !link.no_lockstep,
            working_set: None,
            transport: link.transport.clone(),
            holder_stats: crate::remote::SharedStats::new()
                .map_err(|e| tracing::warn!("no memory holder counters: {e}"))
                .ok()
                .map(Arc::new),
        })
    }
}

/// In the memory holder (a frozen copy of the parent at the clone call):
/// start the clones on their hosts, tell the origin which could not start,
/// then serve guest RAM to the clones until the origin kills this process.
pub fn run_holder(plan: RemotePlan, ram: &GuestRam) -> ! {
    // It serves every clone's faults: ahead of the vCPUs (this thread was
    // the parent's vCPU thread; its threads inherit the raise).
    crate::thread_priority::serve_first();
    // Before the narrower filter: what the parent touched since boot, to
    // compare with the recorded working set.
    let resident = plan.working_set.as_ref().and_then(|_| {
        crate::remote::working_set_holder::resident_pages(
            ram.host_base() as *const u8,
            ram.size() as usize,
        )
    });
    // A frozen copy that only serves: no KVM, no processes, no files.
    if let Err(e) = crate::sandbox::narrow(crate::sandbox::Role::MemoryHolder) {
        eprintln!("snowflock: memory holder could not start: {e}");
        super::process::exit_now(1);
    }
    let RemotePlan {
        token,
        memory,
        reports,
        by_peer,
        request,
        multicast,
        lockstep,
        working_set,
        transport,
        holder_stats,
    } = plan;
    let pages = ram.size() / crate::remote::PAGE_SIZE as u64;
    let free = crate::hints::FreePages::from_ranges(request.free_pages.clone(), pages);
    let working_set = working_set.map(|ws| {
        let pid = super::process::getpid() as u32;
        let set = HolderSet::new(ws.clone(), pid, pages, |p| free.contains(p))
            .with_resident(resident.clone());
        let what = if set.recording() {
            "recording its clones' requests".to_string()
        } else {
            format!(
                "pushing {} recorded pages ahead of faults",
                set.to_push().len()
            )
        };
        eprintln!(
            "snowflock: memory holder working set: {what} ({} dropped as stale so far)",
            ws.drops()
        );
        if let Some(line) = set.compare_predictors().filter(|_| !set.recording()) {
            eprintln!("snowflock: memory holder working set: recorded {line}");
        }
        set
    });
    let report_to = reports.local_addr().ok();
    drop(reports);
    // Serve at once: a clone's first fault must not wait for the other
    // hosts' answers. The requests go out from a thread of their own.
    let t = transport.clone();
    std::thread::spawn(move || start_remote_clones(report_to, token, by_peer, request, t));
    let sender = multicast.and_then(|(group, iface)| {
        crate::remote::multicast::Sender::new(group, iface, token)
            .map_err(|e| tracing::warn!(%group, "no multicast push: {e}"))
            .ok()
    });
    let how = crate::remote::Serving {
        transport,
        multicast: sender,
        lockstep,
        working_set,
        stats: holder_stats,
    };
    crate::remote::serve_frozen(memory, token, ram, how)
}

/// Asks each peer daemon to start its clones; tells the origin which could
/// not be started, so `join` reports them at once with the reason.
fn start_remote_clones(
    report_to: Option<std::net::SocketAddr>,
    token: [u8; 16],
    by_peer: BTreeMap<String, Vec<u32>>,
    request: CloneRequest,
    transport: Transport,
) {
    let sends: Vec<_> = by_peer
        .into_iter()
        .map(|(peer, ids)| {
            let req = CloneRequest {
                ids: ids.clone(),
                net: request.net.as_ref().map(|n| n.for_ids(&ids)),
                ..request.clone()
            };
            let t = transport.clone();
            std::thread::spawn(move || {
                let res = Client::new(Endpoint::Tcp(peer.clone()))
                    .with_transport(t)
                    .post::<_, sf_api::CloneAccepted>("/v1/clones", &req);
                (peer, ids, res)
            })
        })
        .collect();
    let mut failed = Vec::new();
    for h in sends {
        let Ok((peer, ids, res)) = h.join() else {
            continue;
        };
        if let Err(e) = res {
            tracing::warn!(%peer, ?ids, "clone host refused: {e}");
            for id in ids {
                failed.push(Frame::Failed {
                    id,
                    reason: format!("host {peer} could not start it: {e}"),
                });
            }
        }
    }
    // Only failures need the origin, which completes a TLS handshake only
    // when it looks (join, kill): wait as long as a clone would.
    if failed.is_empty() {
        return;
    }
    let deadline = super::origin_link::CONNECT_DEADLINE;
    if let Some(mut s) = report_to.and_then(|a| transport.connect(a, deadline).ok()) {
        let _ = Frame::Hello { token, id: 0 }.write_to(&mut s);
        for f in failed {
            let _ = f.write_to(&mut s);
        }
        let _ = std::io::Write::flush(&mut s);
    }
}

struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    id: Option<u32>,
    accepted: Instant,
    last_heard: Instant,
}

/// The remote half of a clone group, from the origin's side.
pub struct RemoteGroup {
    pub listener: TcpListener,
    transport: Transport,
    pub token: [u8; 16],
    pub ids: Vec<u32>,
    started: Instant,
    conns: Vec<Conn>,
    connected: BTreeMap<u32, ()>,
    pub reports: BTreeMap<u32, CloneReport>,
    pub lost: BTreeMap<u32, String>,
    /// Remote clones' console output not yet shown, whole lines only
    /// (bounded), and each clone's unfinished line.
    console: Vec<u8>,
    partial: BTreeMap<u32, Vec<u8>>,
    console_dropped: u64,
    /// Where the remote clones' output files go (the origin's `--output`),
    /// each clone's (and each of its own clones') checked and capped on
    /// its own, as if it were local; keyed by the VM's ID path.
    outputs_dir: Option<crate::output::OutputDir>,
    outputs: BTreeMap<String, crate::output::Outputs>,
    /// Per remote clone, how many of its own clones wrote outputs: at most
    /// [`crate::output::OUTPUTS_MAX`], so a clone host cannot claim
    /// endless IDs (each with a full cap).
    nested_vms: BTreeMap<u32, usize>,
    /// The origin VM's clone path: clone `id` is `path.id` (or `id`).
    path: String,
    /// Each clone's result so far (pieces come before its report), and the
    /// most bytes one may send: the ticket's cap, checked here again.
    results: BTreeMap<u32, Vec<u8>>,
    result_cap: u64,
    /// Per clone, the first output piece this origin refused after the
    /// clone host had accepted it (the clone's guest was told it
    /// succeeded): the parent reads it in the clone's join detail.
    pub output_refused: BTreeMap<u32, String>,
}

/// Most remote console output held between two looks (the rest is counted
/// and reported as dropped).
const CONSOLE_BUFFER: usize = 1 << 20;

/// Most bytes of one connection read before its frames are decoded: one
/// frame of the largest size.
const READ_AHEAD: usize = super::wire::MAX_FRAME + 5;

impl RemoteGroup {
    pub fn new(
        reports: ReportListener,
        token: [u8; 16],
        ids: Vec<u32>,
        started: Instant,
        result_cap: u64,
    ) -> std::io::Result<RemoteGroup> {
        let ReportListener {
            listener,
            transport,
        } = reports;
        listener.set_nonblocking(true)?;
        Ok(RemoteGroup {
            listener,
            transport,
            token,
            ids,
            started,
            conns: Vec::new(),
            connected: BTreeMap::new(),
            reports: BTreeMap::new(),
            lost: BTreeMap::new(),
            console: Vec::new(),
            partial: BTreeMap::new(),
            console_dropped: 0,
            outputs_dir: None,
            outputs: BTreeMap::new(),
            nested_vms: BTreeMap::new(),
            path: String::new(),
            results: BTreeMap::new(),
            result_cap,
            output_refused: BTreeMap::new(),
        })
    }

    /// The remote clones' output files go under `dir` (the origin VM's
    /// clone path is `path`).
    pub(crate) fn set_outputs(&mut self, dir: Option<crate::output::OutputDir>, path: &str) {
        self.outputs_dir = dir;
        self.path = path.to_string();
    }

    /// A piece of a remote clone's output (`sub` empty), or of one of its
    /// own clones' (`sub` its ID path below the remote clone): the path,
    /// names, cap and order are checked again here, so a clone host can
    /// place nothing outside the directories of the clone and its clones.
    /// A refused piece is dropped with a warning, and the first refusal
    /// goes into the clone's join detail (the clone was told its call
    /// succeeded once its own checks passed).
    fn output(&mut self, id: u32, sub: &[u8], append: bool, name: &[u8], data: &[u8]) {
        let mut path = if self.path.is_empty() {
            id.to_string()
        } else {
            format!("{}.{id}", self.path)
        };
        let known = |p: &str| self.outputs.contains_key(p);
        let refused = if sub.is_empty() {
            None
        } else if !crate::output::valid_sub_path(sub) {
            Some("its host relayed an output under an invalid clone path".to_string())
        } else {
            path = format!("{path}.{}", String::from_utf8_lossy(sub));
            let nested = self.nested_vms.entry(id).or_default();
            if known(&path) {
                None
            } else if *nested >= crate::output::OUTPUTS_MAX {
                Some(format!(
                    "its host relayed outputs of more than {} clones",
                    crate::output::OUTPUTS_MAX
                ))
            } else {
                *nested += 1;
                None
            }
        };
        let result = match refused {
            Some(why) => Err(why),
            None => {
                let dir = self.outputs_dir.clone();
                let out = self
                    .outputs
                    .entry(path.clone())
                    .or_insert_with(|| crate::output::Outputs::new(dir));
                out.write(&path, append, name, data)
                    .map_err(|e| format!("{e:?}"))
            }
        };
        if let Err(e) = result {
            tracing::warn!(
                clone = path,
                "a remote clone's output piece was refused: {e}"
            );
            self.output_refused.entry(id).or_insert_with(|| {
                format!(
                    "the origin refused its output {:?} of clone {path} ({e}); the file is incomplete",
                    String::from_utf8_lossy(name)
                )
            });
        }
    }

    fn resolved(&self, id: u32) -> bool {
        self.reports.contains_key(&id) || self.lost.contains_key(&id)
    }

    pub fn done(&self) -> bool {
        self.ids.iter().all(|&id| self.resolved(id))
    }

    /// Accepts, reads and times out connections for up to `wait`.
    pub fn pump(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            // A few at a time, then everyone's bytes: handshakes under way
            // move on between bursts instead of being evicted by them.
            for _ in 0..ACCEPTS_PER_LOOK {
                let Ok((s, _)) = self.listener.accept() else {
                    break;
                };
                // The TLS handshake runs on the non-blocking socket as
                // bytes arrive: a silent client never stalls this loop.
                if s.set_nonblocking(true).is_ok() {
                    if let Ok(stream) = self.transport.accept(s) {
                        self.close_oldest_pending_at_the_cap();
                        self.conns.push(Conn {
                            stream,
                            buf: Vec::new(),
                            id: None,
                            accepted: Instant::now(),
                            last_heard: Instant::now(),
                        });
                    }
                }
            }
            let mut i = 0;
            while i < self.conns.len() {
                // Not authenticated (TLS and the group's token) in time:
                // a stranger holding a socket open, dropped.
                let stale =
                    self.conns[i].id.is_none() && self.conns[i].accepted.elapsed() > HELLO_DEADLINE;
                if !stale && self.read_conn(i) {
                    i += 1;
                } else {
                    let c = self.conns.swap_remove(i);
                    if let Some(id) = c.id {
                        if !self.resolved(id) {
                            self.lost.insert(id, "its host closed the connection without a report (clone process or host died)".into());
                        }
                    }
                }
            }
            self.check_timeouts();
            if self.done() || Instant::now() >= until {
                return;
            }
            self.poll(until);
        }
    }

    /// Makes room for one more connection that has not said its hello:
    /// at the cap, the one pending longest goes.
    fn close_oldest_pending_at_the_cap(&mut self) {
        let pending = self.conns.iter().filter(|c| c.id.is_none()).count();
        if pending < MAX_PENDING_REPORTS + self.ids.len() {
            return;
        }
        let oldest = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.id.is_none())
            .min_by_key(|(_, c)| c.accepted)
            .map(|(i, _)| i);
        if let Some(i) = oldest {
            tracing::debug!(
                "report listener: too many connections without a hello; closing the oldest"
            );
            self.conns.swap_remove(i);
        }
    }

    /// Reads what one connection has; false when it is finished or broken.
    fn read_conn(&mut self, i: usize) -> bool {
        let mut chunk = [0u8; 16 << 10];
        // A clone may write its last frames and close before we look: take
        // what arrived first, then notice the end. Reading stops at about
        // one frame of the largest size, so a clone host sending faster
        // than this loop decodes cannot grow the buffer.
        let mut open = true;
        while self.conns[i].buf.len() < READ_AHEAD {
            match self.conns[i].stream.read(&mut chunk) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => {
                    self.conns[i].buf.extend_from_slice(&chunk[..n]);
                    self.conns[i].last_heard = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    open = false;
                    break;
                }
            }
        }
        // Decoded bytes go in one drain at the end: draining each frame
        // was quadratic (16 MiB of 5-byte heartbeats held one look 607 s).
        let mut at = 0;
        loop {
            let frame = match Frame::decode(&self.conns[i].buf[at..]) {
                Ok(Some((f, used))) => {
                    at += used;
                    f
                }
                Ok(None) => {
                    self.conns[i].buf.drain(..at);
                    return open;
                }
                Err(e) => {
                    tracing::warn!("dropping a report connection: {e}");
                    return false;
                }
            };
            match (frame, self.conns[i].id) {
                (Frame::Hello { token, id }, None) if token == self.token => {
                    // A resolved clone has nothing more to say: its host
                    // reconnecting could otherwise replace its report.
                    if id != 0 && (!self.ids.contains(&id) || self.resolved(id)) {
                        return false;
                    }
                    self.conns[i].id = Some(id);
                    self.connected.insert(id, ());
                }
                (Frame::Hello { .. }, _) => return false,
                (_, None) => return false,
                (Frame::Heartbeat, Some(_)) => {}
                (Frame::Console(bytes), Some(id)) if id != 0 => {
                    // Lines of different clones must not interleave: keep
                    // each clone's unfinished line until its newline.
                    let line = self.partial.entry(id).or_default();
                    line.extend_from_slice(&bytes);
                    let whole: Vec<u8> = match line.iter().rposition(|&b| b == b'\n') {
                        Some(end) => line.drain(..=end).collect(),
                        None if line.len() > CONSOLE_BUFFER => std::mem::take(line),
                        None => Vec::new(),
                    };
                    self.push_console(&whole);
                }
                (Frame::Output { append, name, data }, Some(id)) if id != 0 => {
                    self.output(id, b"", append, &name, &data);
                }
                (
                    Frame::NestedOutput {
                        sub,
                        append,
                        name,
                        data,
                    },
                    Some(id),
                ) if id != 0 && !sub.is_empty() => {
                    self.output(id, &sub, append, &name, &data);
                }
                (Frame::ResultPiece(_) | Frame::Report(_), Some(id)) if self.resolved(id) => {
                    return false; // declared lost while this connection was open
                }
                (Frame::ResultPiece(bytes), Some(id)) if id != 0 => {
                    let so_far = self.results.entry(id).or_default();
                    if (so_far.len() + bytes.len()) as u64 > self.result_cap {
                        self.lost.entry(id).or_insert_with(|| {
                            format!(
                                "its host sent more result bytes than the ticket's cap of {}",
                                self.result_cap
                            )
                        });
                        self.results.remove(&id);
                        return false;
                    }
                    so_far.extend_from_slice(&bytes);
                }
                (Frame::Report(bytes), Some(id)) if id != 0 => {
                    match CloneReport::decode(&bytes, super::report::REPORT_MAX)
                        .filter(|r| r.id == id)
                    {
                        Some(mut r) => {
                            if let Some(pieces) = self.results.remove(&id) {
                                r.result = pieces;
                            }
                            self.reports.insert(id, r);
                        }
                        None => {
                            self.lost
                                .insert(id, "its host sent a malformed report".into());
                        }
                    }
                    return false;
                }
                (Frame::Failed { id, reason }, Some(0)) if self.ids.contains(&id) => {
                    self.lost.entry(id).or_insert(reason);
                }
                _ => return false,
            }
        }
    }

    fn check_timeouts(&mut self) {
        for c in &self.conns {
            if let Some(id) = c.id.filter(|&id| id != 0) {
                if c.last_heard.elapsed() > HEARTBEAT_TIMEOUT && !self.resolved(id) {
                    self.lost.insert(
                        id,
                        format!(
                            "no word from its host for {} s (host down or unreachable)",
                            HEARTBEAT_TIMEOUT.as_secs()
                        ),
                    );
                }
            }
        }
        if self.started.elapsed() > START_TIMEOUT {
            for &id in &self.ids {
                if !self.connected.contains_key(&id) && !self.resolved(id) {
                    self.lost.insert(
                        id,
                        format!(
                            "its host never started it within {} s",
                            START_TIMEOUT.as_secs()
                        ),
                    );
                }
            }
        }
    }

    fn poll(&self, until: Instant) {
        use std::os::fd::AsRawFd;
        let mut fds: Vec<libc::pollfd> = std::iter::once(self.listener.as_raw_fd())
            .chain(self.conns.iter().map(|c| c.stream.tcp().as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = until
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250))
            .as_millis() as i32;
        // SAFETY: `fds` is a valid array of pollfd for the call's duration.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    }

    /// Blocks until every remote clone reported or was declared lost,
    /// showing their console output on `console` as it arrives.
    pub fn collect(&mut self, console: &mut dyn std::io::Write) {
        while !self.done() {
            self.pump(Duration::from_millis(100));
            self.show_console(console);
        }
        // Lines the clones never finished.
        for (_, mut line) in std::mem::take(&mut self.partial) {
            if !line.is_empty() {
                line.push(b'\n');
                self.push_console(&line);
            }
        }
        self.show_console(console);
    }

    fn push_console(&mut self, bytes: &[u8]) {
        let room = CONSOLE_BUFFER.saturating_sub(self.console.len());
        let take = bytes.len().min(room);
        self.console.extend_from_slice(&bytes[..take]);
        self.console_dropped += (bytes.len() - take) as u64;
    }

    pub(crate) fn show_console(&mut self, console: &mut dyn std::io::Write) {
        if !self.console.is_empty() {
            let _ = console.write_all(&self.console);
            let _ = console.flush();
            self.console.clear();
        }
        if self.console_dropped > 0 {
            tracing::warn!(
                bytes = self.console_dropped,
                "remote clone console output dropped (more than the buffer between looks)"
            );
            self.console_dropped = 0;
        }
    }

    /// Tells every running remote clone to stop (those not started yet are
    /// written off); returns how many were running or pending.
    pub fn kill(&mut self) -> u32 {
        self.pump(Duration::ZERO);
        let mut n = 0;
        for c in &mut self.conns {
            if c.id.is_some_and(|id| {
                id != 0 && !self.reports.contains_key(&id) && !self.lost.contains_key(&id)
            }) {
                let _ = c.stream.tcp().set_nonblocking(false);
                let _ = c
                    .stream
                    .tcp()
                    .set_write_timeout(Some(Duration::from_secs(1)));
                let _ = Frame::Kill.write_to(&mut c.stream);
                let _ = c.stream.tcp().set_nonblocking(true);
                n += 1;
            }
        }
        for &id in &self.ids {
            if !self.connected.contains_key(&id) && !self.resolved(id) {
                self.lost.insert(id, "killed before it started".into());
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    /// A remote group of one clone (ID 1, token `[1; 16]`) whose report
    /// listener is plain TCP on loopback, and that listener's address.
    fn group_on_loopback() -> (RemoteGroup, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reports = ReportListener {
            listener,
            transport: Transport::Plain,
        };
        let g = RemoteGroup::new(
            reports,
            [1; 16],
            vec![1],
            Instant::now(),
            sf_abi::clone::RESULT_FLOOR as u64,
        )
        .unwrap();
        (g, addr)
    }

    #[test]
    fn report_connections_that_never_say_hello_are_dropped_after_the_deadline() {
        let (mut g, addr) = group_on_loopback();
        let silent: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(addr).unwrap()).collect();
        g.pump(HELLO_DEADLINE + Duration::from_millis(600));
        assert!(
            g.conns.is_empty(),
            "{} connections still held",
            g.conns.len()
        );
        for mut s in silent {
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let r = s.read(&mut [0u8; 1]);
            assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
            if let Err(e) = r {
                assert_ne!(e.kind(), ErrorKind::WouldBlock, "still open");
            }
        }
    }

    #[test]
    fn a_flood_of_silent_connections_stays_bounded_and_a_clone_still_gets_through() {
        let (mut g, addr) = group_on_loopback();
        // 300 strangers that connect and say nothing, in bursts below the
        // listen backlog: each one would hold a descriptor (and, with TLS,
        // a handshake's state) until the hello deadline.
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.extend((0..100).map(|_| TcpStream::connect(addr).unwrap()));
            g.pump(Duration::from_millis(100));
        }
        assert!(
            g.conns.len() <= MAX_PENDING_REPORTS + 1,
            "{} unauthenticated connections held",
            g.conns.len()
        );
        let mut clone = TcpStream::connect(addr).unwrap();
        Frame::Hello {
            token: [1; 16],
            id: 1,
        }
        .write_to(&mut clone)
        .unwrap();
        g.pump(Duration::from_millis(300));
        assert!(g.connected.contains_key(&1), "the clone's hello was lost");
        drop(silent);
    }
}

#[cfg(test)]
#[path = "remote_output_tests.rs"]
mod output_tests;

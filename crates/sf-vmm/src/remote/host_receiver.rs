//! One multicast receiver per clone host per group: a small process
//! (`snowflock page-receiver`) joins the group, opens each datagram once
//! (AES-GCM, replay window and drop limits of [`super::multicast`]) and
//! writes the page into the host's shared [`super::host_cache`]; every
//! clone VMM of the group on the host maps that cache read-only and
//! installs from it. Before, each clone process received and opened every
//! datagram itself: at 32 clones on 3 hosts (2 cores) every clone of a
//! host opened the same 16,404 datagrams.
//!
//! Protocol (stream socket): the client sends a hello, [`HELLO_LEN`] bytes:
//! magic `SFRX`, the group's token, guest RAM size, group address and port,
//! interface address, drop flag. The receiver checks it against its own
//! (a client of another group, or one that does not know the token, is
//! refused) and answers one status byte and the client's serial (u64),
//! with three descriptors: the cache's pages and control area (read-only)
//! and an eventfd it signals after new pages are published. Nothing more
//! is said; the connection stays open as the client's lease.
//!
//! Lifetime (as the family network's broker, [`crate::net::broker`]): the
//! first clone VMM of the group on the host starts the receiver while it is
//! still root; the receiver listens on an abstract socket of the host's
//! network namespace named after a hash of the token, accepts only root
//! peers, and ends when its last client closes (a killed VMM's socket is
//! closed by the kernel), on SIGTERM/SIGINT/SIGHUP, or when nobody
//! connected within [`FIRST_CONNECT`]. The memfds go with it and with the
//! clients' mappings: nothing is left behind.

use super::host_cache::{Arrivals, CacheView, CacheWriter, Word};
use super::multicast::Receiver;
use super::{GroupToken, PAGE_SIZE};
use crate::net::broker::{block_signals, peer_uid, pollfd};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const PAGE: u64 = PAGE_SIZE as u64;
const MAGIC: &[u8; 4] = b"SFRX";
pub const HELLO_LEN: usize = 4 + 16 + 8 + 4 + 2 + 4 + 1;
/// A receiver nobody connects to within this time ends.
pub const FIRST_CONNECT: Duration = Duration::from_secs(30);
/// Datagrams read per turn of the loop before it looks at its clients
/// again (~36 ms of a 1 Gbit/s push).
const DRAIN_PER_TURN: usize = 1024;
/// Datagrams between two wake-ups of the clients while the receiver
/// drains a backlog: 32 pages take 1.1 ms at 1 Gbit/s, and one wake-up is
/// an eventfd write per clone (11 clones per host at 32 clones on 3 hosts).
const NOTIFY_EVERY: usize = 32;
/// The longest run published as one ring entry (a clone installs it with
/// one UFFDIO_COPY).
const MAX_RUN: u64 = super::MAX_BATCH_PAGES as u64;
/// How long the receiver waits for a connected client's hello.
const HELLO_WAIT: Duration = Duration::from_secs(2);
/// Most connected clients whose hello is still awaited; one more closes
/// the one waiting longest.
const MAX_PENDING: usize = 64;

/// What a receiver serves: one group on one interface, for one RAM size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiverSpec {
    pub token: GroupToken,
    pub mem_size: u64,
    pub group: SocketAddrV4,
    pub iface: Ipv4Addr,
    /// Test knob: receive every datagram and drop it.
    pub drop_all: bool,
}

impl std::fmt::Display for ReceiverSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        write!(f, "group {} on {}", self.group, self.iface)
    }
}

impl ReceiverSpec {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4..20].copy_from_slice(&self.token);
        b[20..28].copy_from_slice(&self.mem_size.to_le_bytes());
        b[28..32].copy_from_slice(&self.group.ip().octets());
        b[32..34].copy_from_slice(&self.group.port().to_le_bytes());
        b[34..38].copy_from_slice(&self.iface.octets());
        b[38] = u8::from(self.drop_all);
        b
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> Option<ReceiverSpec> {
        if &b[0..4] != MAGIC || b[38] > 1 {
            return None;
        }
        let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        Some(ReceiverSpec {
            token: b[4..20].try_into().ok()?,
            mem_size: u64::from_le_bytes(b[20..28].try_into().ok()?),
            group: SocketAddrV4::new(ip(28), u16::from_le_bytes([b[32], b[33]])),
            iface: ip(34),
            drop_all: b[38] == 1,
        })
    }

    /// The receiver's abstract socket: named after a hash of the token
    /// (the name is visible to every process of the namespace).
    fn socket_name(&self) -> String {
        let mut input = b"snowflock page receiver".to_vec();
        input.extend_from_slice(&self.token);
        let d = ring::digest::digest(&ring::digest::SHA256, &input);
        format!("snowflock-rx-{}", sf_api::to_hex(&d.as_ref()[..8]))
    }

    fn addr(&self) -> io::Result<SocketAddr> {
        SocketAddr::from_abstract_name(self.socket_name().as_bytes())
    }
}

/// A clone VMM's connection to its host's receiver, and its view of the
/// shared cache.
pub struct HostPushes {
    pub view: CacheView,
    events: EventFd,
    serial: u64,
    /// Kept open: the receiver's count of live clients.
    _lease: UnixStream,
    /// The host's losses as of this clone's last look (reported or not).
    lost_seen: u64,
    last_report: Option<Instant>,
}

impl HostPushes {
    /// Connects to the group's receiver on this host, starting one (`exe
    /// page-receiver`) if none runs. Call while still root (set-up).
    pub fn attach(exe: &Path, spec: &ReceiverSpec) -> io::Result<HostPushes> {
        match HostPushes::connect(spec) {
            Ok(p) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(e),
            Err(_) => {}
        }
        match start(exe, spec) {
            Ok(()) => {}
            // Another clone of the group started it meanwhile.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        HostPushes::connect(spec)
    }

    fn connect(spec: &ReceiverSpec) -> io::Result<HostPushes> {
        HostPushes::connect_with(spec, spec)
    }

    /// Connects to `at`'s receiver with the hello of `spec` (tests give a
    /// wrong one).
    fn connect_with(at: &ReceiverSpec, spec: &ReceiverSpec) -> io::Result<HostPushes> {
        let mut stream = UnixStream::connect_addr(&at.addr()?)?;
        // The token goes only to a root peer: anyone may bind a name.
        if peer_uid(&stream)? != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the page receiver socket {} is not root's",
                    at.socket_name()
                ),
            ));
        }
        stream.set_read_timeout(Some(HELLO_WAIT * 2))?;
        stream.write_all(&spec.encode())?;
        let mut head = [0u8; 9];
        let mut fds = [-1 as RawFd; 3];
        let mut iov = [libc::iovec {
            iov_base: head.as_mut_ptr().cast(),
            iov_len: head.len(),
        }];
        // SAFETY: the iovec points at `head`, which outlives the call; the
        // received descriptors are new and become owned right below.
        let (len, nfds) = unsafe { stream.recv_with_fds(&mut iov, &mut fds) }
            .map_err(|e| io::Error::other(format!("no answer from the page receiver: {e}")))?;
        // SAFETY: recv_with_fds filled the first `nfds` entries with
        // descriptors that no one else owns.
        let mut owned: Vec<OwnedFd> = fds[..nfds]
            .iter()
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        if len != head.len() || head[0] != 0 || owned.len() != 3 {
            return Err(io::Error::other(format!(
                "the page receiver refused this clone (status {}, {} descriptors); see its log",
                head[0],
                owned.len()
            )));
        }
        let events = owned.pop().expect("three");
        let control = owned.pop().expect("three");
        let pages = owned.pop().expect("three");
        let view = CacheView::map(pages, control, spec.mem_size)?;
        stream.set_read_timeout(None)?;
        Ok(HostPushes {
            view,
            // SAFETY: an eventfd descriptor the receiver sent, now ours.
            events: unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(events)) },
            serial: u64::from_le_bytes(head[1..9].try_into().expect("8 bytes")),
            _lease: stream,
            lost_seen: 0,
            last_report: None,
        })
    }

    /// Readable when the receiver published pages since the last
    /// [`HostPushes::arrivals`].
    pub fn fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }

    /// The runs published since the last look (clears the event).
    pub fn arrivals(&mut self) -> Arrivals {
        let _ = self.events.read();
        self.view.arrivals()
    }

    /// A report of the host's losses and backlog for the holder's pacing,
    /// if one is due and this clone is the host's reporter (one per host,
    /// so the holder counts a host's loss once).
    pub fn report_due(&mut self) -> Option<super::pacer::Report> {
        let lost = self.view.get(Word::Lost);
        if self.view.get(Word::Reporter) != self.serial || self.view.get(Word::Seen) == 0 {
            self.lost_seen = lost;
            return None;
        }
        let new = lost.saturating_sub(self.lost_seen);
        let backlog = self.view.get(Word::Backlog);
        let quiet = self
            .last_report
            .is_none_or(|t| t.elapsed() >= super::multicast::REPORT_EVERY);
        if new == 0 && backlog <= super::pacer::BACKLOG_LIMIT && !quiet {
            return None;
        }
        self.lost_seen = lost;
        self.last_report = Some(Instant::now());
        Some(super::pacer::Report::new(new, backlog))
    }
}

/// Starts the group's receiver (`exe page-receiver`, the spec on its
/// stdin: it holds the token); `AlreadyExists` if one runs already.
fn start(exe: &Path, spec: &ReceiverSpec) -> io::Result<()> {
    let mut cmd = Command::new(exe);
    cmd.arg("page-receiver");
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot start the page receiver {exe:?}: {e}"),
        )
    })?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(&spec.encode())?;
    drop(stdin);
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    BufReader::new(stdout).read_line(&mut line)?;
    // The command forks once and its first process exits at once (see
    // `serve`'s caller): reaping it here leaves no zombie.
    let status = child.wait()?;
    match line.trim() {
        "ready" => Ok(()),
        "taken" => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{spec} already has a page receiver here"),
        )),
        _ => Err(io::Error::other(format!(
            "the page receiver of {spec} did not start ({status}); run with SNOWFLOCK_LOG=debug to see why"
        ))),
    }
}

/// Reads a spec from `input` (the starter's pipe).
pub fn read_spec(input: &mut impl Read) -> io::Result<ReceiverSpec> {
    let mut b = [0u8; HELLO_LEN];
    input.read_exact(&mut b)?;
    ReceiverSpec::decode(&b)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a page receiver spec"))
}

/// Binds the receiver's socket: `None` when another receiver of the group
/// has it (print `taken` and end).
pub fn bind(spec: &ReceiverSpec) -> io::Result<Option<UnixListener>> {
    match UnixListener::bind_addr(&spec.addr()?) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(e),
    }
}

/// The receiver's state after set-up (socket joined, cache made).
pub struct Service {
    spec: ReceiverSpec,
    listener: UnixListener,
    signals: OwnedFd,
    rx: Receiver,
    cache: CacheWriter,
    clients: Vec<Client>,
    /// Root peers connected whose hello has not fully arrived: read as it
    /// comes, never waited for, so a silent one holds up nobody.
    pending: Vec<Pending>,
    next_serial: u64,
    stale: u64,
}

struct Pending {
    stream: UnixStream,
    hello: Vec<u8>,
    since: Instant,
}

struct Client {
    stream: UnixStream,
    serial: u64,
    events: EventFd,
}

impl Service {
    /// Joins the group and makes the cache (needs root: the receive
    /// buffer is forced past the sysctl's limit).
    pub fn new(spec: ReceiverSpec, listener: UnixListener) -> io::Result<Service> {
        let signals = block_signals()?;
        let cache = CacheWriter::create(spec.mem_size)?;
        let mut rx = Receiver::join(spec.group, spec.iface, spec.token)?;
        rx.drop_all = spec.drop_all;
        listener.set_nonblocking(true)?;
        cache.set(Word::ReceiverPid, u64::from(std::process::id()));
        Ok(Service {
            spec,
            listener,
            signals,
            rx,
            cache,
            clients: Vec::new(),
            pending: Vec::new(),
            next_serial: 1,
            stale: 0,
        })
    }

    /// Serves until the last client leaves (or a signal, or nobody came).
    /// `starter`: a pidfd of the VMM that started it, watched until the
    /// first client connects.
    pub fn run(&mut self, starter: Option<OwnedFd>) -> io::Result<()> {
        let started = Instant::now();
        let mut ever = false;
        loop {
            if ever && self.clients.is_empty() && self.pending.is_empty() {
                tracing::debug!("last client gone: the page receiver ends");
                return Ok(());
            }
            if !ever && started.elapsed() > FIRST_CONNECT {
                return Err(io::Error::other("nobody connected to the page receiver"));
            }
            let mut pfds = vec![
                pollfd(self.signals.as_raw_fd()),
                pollfd(self.listener.as_raw_fd()),
                pollfd(self.rx.fd()),
            ];
            pfds.extend(self.clients.iter().map(|c| pollfd(c.stream.as_raw_fd())));
            pfds.extend(self.pending.iter().map(|p| pollfd(p.stream.as_raw_fd())));
            let watch_starter = starter.as_ref().filter(|_| !ever);
            if let Some(s) = watch_starter {
                pfds.push(pollfd(s.as_raw_fd()));
            }
            // SAFETY: `pfds` is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, 1000) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if pfds[0].revents != 0 {
                tracing::debug!("signalled: the page receiver ends");
                return Ok(());
            }
            if watch_starter.is_some() && pfds.last().is_some_and(|p| p.revents != 0) {
                return Err(io::Error::other(
                    "the VMM that started the page receiver ended before it connected",
                ));
            }
            if pfds[2].revents != 0 {
                self.drain();
            }
            let first_pending = 3 + self.clients.len();
            let ready: Vec<bool> = pfds[first_pending..first_pending + self.pending.len()]
                .iter()
                .map(|p| p.revents != 0)
                .collect();
            // Clients say nothing after their hello: readable means gone
            // (or misbehaving, which ends its lease too).
            let gone: Vec<usize> = pfds[3..3 + self.clients.len()]
                .iter()
                .enumerate()
                .filter(|(_, p)| p.revents != 0)
                .map(|(i, _)| i)
                .collect();
            for i in gone.into_iter().rev() {
                self.clients.swap_remove(i);
            }
            ever |= self.read_hellos(&ready);
            if pfds[1].revents != 0 {
                self.accept();
            }
            self.publish_clients();
        }
    }

    /// The oldest client reports the host's losses; the count of clients.
    fn publish_clients(&self) {
        let reporter = self.clients.iter().map(|c| c.serial).min().unwrap_or(0);
        self.cache.set(Word::Reporter, reporter);
        self.cache.set(Word::Clients, self.clients.len() as u64);
    }

    /// Accepts connections: root peers wait for their hello in `pending`.
    fn accept(&mut self) {
        while let Ok((s, _)) = self.listener.accept() {
            let root = peer_uid(&s).and_then(|uid| match uid {
                0 => s.set_nonblocking(true),
                _ => Err(io::Error::other(format!("peer uid {uid} is not root"))),
            });
            if let Err(e) = root {
                tracing::warn!("refused a client of the page receiver: {e}");
                continue;
            }
            if self.pending.len() >= MAX_PENDING {
                tracing::warn!("{MAX_PENDING} clients of the page receiver still owe their hello: closing the oldest");
                self.pending.remove(0);
            }
            self.pending.push(Pending {
                stream: s,
                hello: Vec::with_capacity(HELLO_LEN),
                since: Instant::now(),
            });
        }
    }

    /// Reads the hellos of the pending clients `ready` marks, admits the
    /// complete ones and drops those broken or past [`HELLO_WAIT`]; true if
    /// a client was admitted.
    fn read_hellos(&mut self, ready: &[bool]) -> bool {
        let mut admitted = false;
        let mut i = ready.len();
        while i > 0 {
            i -= 1;
            let p = &mut self.pending[i];
            let mut keep = p.since.elapsed() < HELLO_WAIT;
            if ready[i] && keep {
                let mut buf = [0u8; HELLO_LEN];
                let want = HELLO_LEN - p.hello.len();
                match (&p.stream).read(&mut buf[..want]) {
                    Ok(0) => keep = false,
                    Ok(n) => p.hello.extend_from_slice(&buf[..n]),
                    Err(e) => keep = e.kind() == io::ErrorKind::WouldBlock,
                }
            }
            if !keep || self.pending[i].hello.len() == HELLO_LEN {
                let p = self.pending.remove(i);
                if !keep {
                    continue;
                }
                match self.admit(p) {
                    Ok(c) => {
                        self.clients.push(c);
                        admitted = true;
                    }
                    Err(e) => tracing::warn!("refused a client of the page receiver: {e}"),
                }
            }
        }
        // Past their deadline without being readable.
        self.pending.retain(|p| p.since.elapsed() < HELLO_WAIT);
        admitted
    }

    /// Answers a complete hello: the cache's descriptors, or a refusal.
    fn admit(&mut self, p: Pending) -> io::Result<Client> {
        let s = p.stream;
        let hello: [u8; HELLO_LEN] = p.hello[..].try_into().expect("a whole hello");
        if ReceiverSpec::decode(&hello) != Some(self.spec) {
            let _ = s.send_with_fds(&[&[1u8][..]], &[]);
            return Err(io::Error::other(
                "its hello names another group, token or RAM size",
            ));
        }
        let events = EventFd::new(EFD_NONBLOCK)?;
        let serial = self.next_serial;
        self.next_serial += 1;
        let (pages, control) = self.cache.client_fds();
        let mut reply = vec![0u8];
        reply.extend_from_slice(&serial.to_le_bytes());
        s.send_with_fds(
            &[&reply[..]],
            &[pages.as_raw_fd(), control.as_raw_fd(), events.as_raw_fd()],
        )?;
        Ok(Client {
            stream: s,
            serial,
            events,
        })
    }

    /// Reads the datagrams waiting (up to [`DRAIN_PER_TURN`]), writes the
    /// new pages into the cache, and publishes them as runs, waking the
    /// clients every [`NOTIFY_EVERY`] datagrams: a clone waiting for one
    /// page must not wait for the whole turn.
    fn drain(&mut self) {
        let mut run: Option<(u64, u64)> = None;
        for i in 1..=DRAIN_PER_TURN {
            let Some((offset, bytes)) = self.rx.next_page() else {
                break;
            };
            let page = offset / PAGE;
            let written = self.cache.put(page, bytes).unwrap_or_else(|e| {
                // The page stays absent: a clone that needs it faults and
                // fetches it by unicast.
                tracing::warn!("page receiver: page {page} not written to the cache: {e}");
                false
            });
            if written {
                run = match run {
                    Some((first, n)) if first + n == page && n < MAX_RUN => Some((first, n + 1)),
                    Some(done) => {
                        self.cache.publish(done.0, done.1);
                        Some((page, 1))
                    }
                    None => Some((page, 1)),
                };
            } else {
                // Outside the RAM only if the holder is broken: counted
                // with the stale ones, never written.
                self.stale += 1;
            }
            if i % NOTIFY_EVERY == 0 {
                self.publish(run.take());
            }
        }
        self.publish(run.take());
    }

    /// Publishes the run being gathered, if any, then the counters, and
    /// wakes the clients. `Seen` goes last: a clone waiting for pushed
    /// pages up to the answer's `seq_end` (see `wait_for_pushes`) trusts
    /// that every page numbered below it is in the ring by then.
    fn publish(&mut self, run: Option<(u64, u64)>) {
        if let Some((first, n)) = run {
            self.cache.publish(first, n);
        }
        let c = &self.cache;
        c.set(Word::Received, self.rx.received);
        c.set(Word::Opened, self.rx.taken());
        c.set(Word::Forged, self.rx.dropped);
        c.set(Word::Stale, self.stale);
        c.set(Word::Lost, self.rx.lost());
        c.set(Word::Backlog, self.rx.backlog_bytes());
        c.set_seen(self.rx.seen());
        // Clients wake for new pages only: a clone waiting on `Seen` alone
        // (its pages lost) looks again at its next timeout.
        if run.is_none() {
            return;
        }
        for client in &self.clients {
            let _ = client.events.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ReceiverSpec {
        ReceiverSpec {
            token: [9; 16],
            mem_size: 64 << 20,
            group: SocketAddrV4::new(Ipv4Addr::new(239, 213, 7, 9), 4567),
            iface: Ipv4Addr::LOCALHOST,
            drop_all: false,
        }
    }

    /// A group and a token of its own for each test (the receiver's socket
    /// is named after the token: two tests with one token raced for it).
    /// The port is below the ephemeral range (never handed out by a bind to
    /// port 0) and comes from a counter: a port found free by a probe
    /// socket could still be held by a child that another test of this
    /// binary forked while the probe was open.
    fn fresh_spec() -> ReceiverSpec {
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 21_000 + (std::process::id() % 500) as u16 * 16 + n % 16;
        let mut token = [9; 16];
        token[..4].copy_from_slice(&std::process::id().to_le_bytes());
        token[4..6].copy_from_slice(&n.to_le_bytes());
        ReceiverSpec {
            token,
            group: SocketAddrV4::new(Ipv4Addr::new(239, 213, 79, (port % 250) as u8 + 1), port),
            ..spec()
        }
    }

    /// Waits until `done` holds (5 s at most).
    fn wait_for(mut done: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !done() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn one_receiver_fills_the_cache_of_every_client_of_its_group() {
        let spec = fresh_spec();
        let listener = bind(&spec).unwrap().expect("a fresh group's name is free");
        assert!(bind(&spec).unwrap().is_none(), "one receiver per group");
        let mut service = Service::new(spec, listener).unwrap();
        let served = std::thread::spawn(move || service.run(None));
        let mut a = HostPushes::connect(&spec).unwrap();
        let mut b = HostPushes::connect(&spec).unwrap();
        // A client that does not know the token (or names another RAM
        // size) gets nothing.
        for wrong in [
            ReceiverSpec {
                token: [1; 16],
                ..spec
            },
            ReceiverSpec {
                mem_size: spec.mem_size * 2,
                ..spec
            },
        ] {
            let e = HostPushes::connect_with(&spec, &wrong)
                .err()
                .expect("refused");
            assert!(e.to_string().contains("refused"), "{e}");
        }
        let tx =
            super::super::multicast::Sender::looped(spec.group, spec.iface, spec.token).unwrap();
        let ram: Vec<u8> = (0..8 * PAGE_SIZE)
            .map(|i| (i / PAGE_SIZE) as u8 + 1)
            .collect();
        tx.send_pages(&ram, 2 * PAGE, 3);
        tx.send_page(&ram, 3 * PAGE);
        wait_for(|| a.view.get(Word::Received) >= 4);
        for c in [&mut a, &mut b] {
            // A first look rescans: pages may predate the client.
            assert_eq!(c.arrivals(), Arrivals::Rescan);
            assert_eq!(c.view.held_runs(512), vec![(2, 3)]);
            assert_eq!(c.view.bytes(3, 1)[7], 4);
        }
        let v = &a.view;
        assert_eq!(
            (
                v.get(Word::Received),
                v.get(Word::Opened),
                v.get(Word::Stale)
            ),
            (4, 4, 1),
            "each datagram received once for both clients; page 3 twice is stale"
        );
        assert_eq!(v.get(Word::Clients), 2);
        assert_eq!(v.get(Word::Reporter), a.serial, "the oldest client reports");
        tx.send_page(&ram, 6 * PAGE);
        wait_for(|| b.view.has(6));
        assert_eq!(b.arrivals(), Arrivals::Runs(vec![(6, 1)]));
        drop(a);
        wait_for(|| b.view.get(Word::Clients) == 1);
        assert_eq!(
            b.view.get(Word::Reporter),
            b.serial,
            "the next one takes over"
        );
        drop(b);
        // The last client gone, the receiver ends.
        served.join().unwrap().unwrap();
    }

    /// Local clients that connect and never say their hello (a VMM stopped
    /// during its set-up) hold up neither the receiver nor the clones
    /// behind them, and are dropped after the hello's deadline.
    #[test]
    fn silent_local_clients_do_not_hold_up_the_others() {
        let spec = fresh_spec();
        let listener = bind(&spec).unwrap().expect("a fresh group's name is free");
        let mut service = Service::new(spec, listener).unwrap();
        let served = std::thread::spawn(move || service.run(None));
        let silent: Vec<UnixStream> = (0..20)
            .map(|_| UnixStream::connect_addr(&spec.addr().unwrap()).unwrap())
            .collect();
        let t = Instant::now();
        let a = HostPushes::connect(&spec).expect("attached past the silent clients");
        // Held up by one silent client, it would wait its hello's deadline.
        assert!(t.elapsed() < HELLO_WAIT, "{:?}", t.elapsed());
        wait_for(|| a.view.get(Word::Clients) == 1);
        assert_eq!(
            a.view.get(Word::Clients),
            1,
            "silent clients are no clients"
        );
        std::thread::sleep(HELLO_WAIT + Duration::from_millis(500));
        for mut s in silent {
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let r = s.read(&mut [0u8; 1]);
            assert!(matches!(r, Ok(0)), "a silent client still open: {r:?}");
        }
        drop(a);
        served.join().unwrap().unwrap();
    }

    #[test]
    fn specs_round_trip_and_name_no_token() {
        let s = spec();
        assert_eq!(ReceiverSpec::decode(&s.encode()), Some(s));
        let mut bad = s.encode();
        bad[0] = b'X';
        assert_eq!(ReceiverSpec::decode(&bad), None);
        assert!(!s.socket_name().contains(&sf_api::to_hex(&s.token)));
        assert!(!s.to_string().contains(&sf_api::to_hex(&s.token)));
        let other = ReceiverSpec {
            token: [8; 16],
            ..s
        };
        assert_ne!(s.socket_name(), other.socket_name());
    }
}

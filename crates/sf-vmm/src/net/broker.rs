//! The family's network broker: one small privileged process per family
//! per host. It owns the family's bridge and VXLAN device, keeps a pool of
//! TAPs made ahead of need, and hands TAPs to the family's VMMs over a Unix
//! socket (SCM_RIGHTS), so that a VMM sandboxed as uid 65534 still gets a
//! fresh TAP for every clone without creating one on the clone path.
//!
//! Protocol (stream socket, little-endian): a request is one `u32`, the
//! number of TAPs wanted (1..=[`MAX_TAKE`]); the reply is one `u32` (the
//! number granted, 0 on failure) carrying `2 * n` descriptors: for each
//! TAP, the TAP and a fresh connection to the broker for the process that
//! will own that TAP (a forked clone must not share its parent's stream).
//!
//! Lifetime: the broker listens on the abstract socket
//! `@snowflock-net-<vni>` of its network namespace (so the VMMs of the
//! family on this host, and remote clones arriving later, find it), accepts
//! only root peers, and ends when its last connection closes (every VMM of
//! the family on this host has ended, however: the kernel closes a killed
//! process's sockets), on SIGTERM/SIGINT/SIGHUP, or when nobody connected
//! within [`FIRST_CONNECT`]. Then it deletes the bridge and the VXLAN device;
//! the TAPs vanish with their last descriptor. If the broker itself is
//! SIGKILLed, the sweep ([`super::links::sweep`]) removes what it owned.

use super::{bridge_name, links, tap_name, tun, FamilySpec, FAMILY_MTU};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Most TAPs one request may take (twice as many descriptors per message,
/// within the kernel's 253).
pub const MAX_TAKE: u32 = 64;
/// Spare TAPs the broker keeps ready: enough for a 16-clone call without
/// making one on demand.
pub const POOL: usize = 16;
/// The pool a broker starts with: [`POOL`] after the root VM's TAP and its
/// first lease ([`super::clone_taps::FIRST_LEASE`]) are out, so that no
/// refill runs while the guest starts: TAP creation contends for CPU and
/// RTNL with the guest's first clones (see `bench clone --net`).
pub const START_POOL: usize = POOL + 1 + super::clone_taps::FIRST_LEASE as usize;
/// A broker nobody connects to within this time removes the family.
pub const FIRST_CONNECT: Duration = Duration::from_secs(30);
/// How long a new broker waits for an ending one of the same family to
/// remove its devices (its pool's TAPs, then the bridge and the VXLAN
/// device with `ip link del`; under a second in the tests).
const PREDECESSOR_GONE: Duration = Duration::from_secs(5);

fn socket_name(vni: u32) -> String {
    format!("snowflock-net-{vni:06x}")
}

fn addr(vni: u32) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(socket_name(vni).as_bytes())
}

/// One TAP handed out, with the connection its new owner keeps.
pub struct Lease {
    pub tap: OwnedFd,
    pub conn: BrokerClient,
}

/// A connection to the family's broker.
pub struct BrokerClient {
    stream: UnixStream,
}

impl BrokerClient {
    /// Connects to the broker of family `vni` in this network namespace.
    pub fn connect(vni: u32) -> io::Result<BrokerClient> {
        let stream = UnixStream::connect_addr(&addr(vni)?)?;
        Ok(BrokerClient { stream })
    }

    /// Connects to the family's broker, starting one (`exe net-broker ...`)
    /// if none runs here. Call before the VMM sandboxes itself.
    pub fn ensure(exe: &Path, spec: &FamilySpec) -> io::Result<BrokerClient> {
        if let Ok(c) = BrokerClient::connect(spec.vni) {
            return Ok(c);
        }
        match BrokerClient::start(exe, spec) {
            // Another process started it meanwhile: use that one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => BrokerClient::connect(spec.vni),
            other => other,
        }
    }

    /// Starts the broker of a new family; `AlreadyExists` if the family
    /// (its VNI) is taken on this host.
    pub fn start(exe: &Path, spec: &FamilySpec) -> io::Result<BrokerClient> {
        let mut cmd = Command::new(exe);
        cmd.arg("net-broker")
            .args(["--family", &spec.family.number().to_string()])
            .args(["--vni", &spec.vni.to_string()]);
        if spec.host_access {
            cmd.arg("--host-access");
        }
        if let Some(dev) = &spec.underlay {
            cmd.args(["--underlay", dev]);
        }
        // Its own process group: a Ctrl-C meant for `snowflock run` must
        // not kill the broker before the VMs are gone and it cleaned up.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start the network broker {exe:?}: {e}"),
            )
        })?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() == "taken" {
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("family VNI {:#x} already has a broker here", spec.vni),
            ));
        }
        if line.trim() != "ready" {
            let status = child.wait()?;
            return Err(io::Error::other(format!(
                "the network broker of family {} did not start ({status}); \
                 run with SNOWFLOCK_LOG=debug to see why",
                spec.family.number()
            )));
        }
        // The broker runs on by itself; reap it in the background.
        std::thread::spawn(move || child.wait());
        BrokerClient::connect(spec.vni)
    }

    pub fn from_fd(fd: OwnedFd) -> BrokerClient {
        BrokerClient {
            stream: UnixStream::from(fd),
        }
    }

    pub fn into_fd(self) -> OwnedFd {
        self.stream.into()
    }

    /// Takes `n` TAPs, each attached to the family bridge, up and
    /// non-blocking, from the pool.
    pub fn take(&mut self, n: u32) -> io::Result<Vec<Lease>> {
        self.ask(n)?;
        self.receive(n)
    }

    /// Asks for `n` TAPs without waiting: [`BrokerClient::receive`] reads
    /// the answer later (it waits in the socket meanwhile), so a VMM can
    /// lease its clones' TAPs ahead of a clone call at the cost of one
    /// write.
    pub fn ask(&mut self, n: u32) -> io::Result<()> {
        if n == 0 || n > MAX_TAKE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{n} TAPs asked; one request takes 1..={MAX_TAKE}"),
            ));
        }
        self.stream.write_all(&n.to_le_bytes())
    }

    /// The answer to an [`BrokerClient::ask`] for `n` TAPs.
    pub fn receive(&mut self, n: u32) -> io::Result<Vec<Lease>> {
        let mut head = [0u8; 4];
        let mut fds = vec![-1 as RawFd; 2 * n as usize];
        let mut iov = [libc::iovec {
            iov_base: head.as_mut_ptr().cast(),
            iov_len: head.len(),
        }];
        // SAFETY: the iovec points at `head`, which outlives the call; the
        // received descriptors are new and become owned right below.
        let (len, nfds) = unsafe { self.stream.recv_with_fds(&mut iov, &mut fds) }
            .map_err(|e| io::Error::other(format!("no answer from the network broker: {e}")))?;
        // SAFETY: recv_with_fds filled the first `nfds` entries with
        // descriptors that no one else owns.
        let owned: Vec<OwnedFd> = fds[..nfds]
            .iter()
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        let got = u32::from_le_bytes(head);
        if len != 4 || got != n || owned.len() != 2 * n as usize {
            return Err(io::Error::other(format!(
                "the network broker gave {got} of {n} TAPs ({} descriptors); see its log",
                owned.len()
            )));
        }
        let mut it = owned.into_iter();
        let mut leases = vec![];
        while let (Some(tap), Some(conn)) = (it.next(), it.next()) {
            leases.push(Lease {
                tap,
                conn: BrokerClient::from_fd(conn),
            });
        }
        Ok(leases)
    }
}

/// The broker's main loop (the `net-broker` command). Prints `ready` on
/// stdout once the family's devices exist and it accepts connections, or
/// `taken` when another broker serves the family.
///
/// `starter`: a pidfd of the VMM that started the broker; if it ends before
/// anyone connected, so does the family (it was killed during set-up).
pub fn serve(spec: &FamilySpec, starter: Option<OwnedFd>) -> io::Result<()> {
    let listener = match UnixListener::bind_addr(&addr(spec.vni)?) {
        Ok(l) => l,
        // Another broker of this family won the race: it serves.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let _ = writeln!(io::stdout(), "taken");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let signals = block_signals()?;
    let me = links::owner_tag(std::process::id())
        .ok_or_else(|| io::Error::other("cannot read our own /proc/self/stat"))?;
    links::sweep()?;
    wait_for_predecessor(spec.vni)?;
    // From here the family's devices go when this function ends, however
    // (error, panic, or the end of the family).
    let _devices = FamilyDevices(spec.vni);
    links::create_family(spec, &me)?;
    let mut broker = Broker::new(spec, listener)?;
    // The VMM that started us may be gone already (killed during set-up):
    // then nobody will connect, and the family ends now.
    let mut out = io::stdout();
    if writeln!(out, "ready").and_then(|()| out.flush()).is_err() {
        tracing::debug!("the VMM that started the network broker is gone");
        return Ok(());
    }
    broker.run(signals, starter)
}

/// A broker of this family whose last VMM here just ended gives up the
/// socket name before it has removed its devices (its TAPs close first, one
/// unregistration each). A member arriving in that window (a remote clone
/// placed late) starts a new broker, which must wait for them to go rather
/// than fail on the bridge that still exists: the devices of a live owner
/// with no broker listening can only be on their way out.
fn wait_for_predecessor(vni: u32) -> io::Result<()> {
    let start = Instant::now();
    while links::family_links()?.iter().any(|l| l.vni == vni) {
        if start.elapsed() > PREDECESSOR_GONE {
            return Err(io::Error::other(format!(
                "the devices of family VNI {vni:#x} are still there {PREDECESSOR_GONE:?} \
                 after their broker stopped listening; remove them with `snowflock net-sweep` \
                 once that broker is gone"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Deletes the family's bridge and VXLAN device when dropped.
struct FamilyDevices(u32);

impl Drop for FamilyDevices {
    fn drop(&mut self) {
        links::delete_family(self.0);
    }
}

struct Broker<'a> {
    spec: &'a FamilySpec,
    listener: UnixListener,
    conns: Vec<UnixStream>,
    pool: Vec<OwnedFd>,
    made: u32,
}

impl<'a> Broker<'a> {
    fn new(spec: &'a FamilySpec, listener: UnixListener) -> io::Result<Broker<'a>> {
        listener.set_nonblocking(true)?;
        let mut b = Broker {
            spec,
            listener,
            conns: vec![],
            pool: vec![],
            made: 0,
        };
        while b.pool.len() < START_POOL {
            let tap = b.make_tap()?;
            b.pool.push(tap);
        }
        Ok(b)
    }

    fn make_tap(&mut self) -> io::Result<OwnedFd> {
        let name = tap_name(self.spec.vni, self.made);
        self.made += 1;
        let fd = tun::create_tap(&name)?;
        links::disable_ipv6(&name)?;
        tun::attach_to_bridge(&name, &bridge_name(self.spec.vni), FAMILY_MTU)?;
        Ok(fd)
    }

    fn run(&mut self, signals: OwnedFd, starter: Option<OwnedFd>) -> io::Result<()> {
        let started = Instant::now();
        let mut ever = false;
        loop {
            if ever && self.conns.is_empty() {
                tracing::debug!("last connection closed: the family ended here");
                return Ok(());
            }
            if !ever && started.elapsed() > FIRST_CONNECT {
                return Err(io::Error::other("nobody connected to the network broker"));
            }
            // Refill the pool when idle, one TAP per turn, so a request
            // never waits behind more than one TAP creation.
            let idle_ms = if self.pool.len() < POOL { 0 } else { 1000 };
            let mut pfds = vec![
                pollfd(signals.as_raw_fd()),
                pollfd(self.listener.as_raw_fd()),
            ];
            pfds.extend(self.conns.iter().map(|c| pollfd(c.as_raw_fd())));
            // `accept` below adds connections: only these were polled.
            let polled = 2..pfds.len();
            // Watched only until the first connection: from then on the
            // connections say when the family ends.
            let watch_starter = starter.as_ref().filter(|_| !ever);
            if let Some(s) = watch_starter {
                pfds.push(pollfd(s.as_raw_fd()));
            }
            // SAFETY: `pfds` is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, idle_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                if self.pool.len() < POOL {
                    let tap = self.make_tap()?;
                    self.pool.push(tap);
                }
                continue;
            }
            if watch_starter.is_some() && pfds.last().is_some_and(|p| p.revents != 0) {
                return Err(io::Error::other(
                    "the VMM that started the network broker ended before it connected",
                ));
            }
            if pfds[0].revents != 0 {
                tracing::debug!("signalled: removing the family's devices");
                return Ok(());
            }
            if pfds[1].revents != 0 {
                ever |= self.accept();
            }
            let mut closed = vec![];
            for (i, p) in pfds[polled].iter().enumerate() {
                if p.revents != 0 && !self.serve_one(i) {
                    closed.push(i);
                }
            }
            for i in closed.into_iter().rev() {
                self.conns.swap_remove(i);
            }
        }
    }

    /// Accepts pending connections from root peers; true if any.
    fn accept(&mut self) -> bool {
        let mut any = false;
        while let Ok((s, _)) = self.listener.accept() {
            match peer_uid(&s) {
                Ok(0) => {
                    let _ = s.set_nonblocking(false);
                    self.conns.push(s);
                    any = true;
                }
                other => tracing::warn!(?other, "refused a non-root peer of the network broker"),
            }
        }
        any
    }

    /// Answers one request on connection `i`; false when it is closed or
    /// broke the protocol.
    fn serve_one(&mut self, i: usize) -> bool {
        let mut req = [0u8; 4];
        if self.conns[i].read_exact(&mut req).is_err() {
            return false;
        }
        let n = u32::from_le_bytes(req);
        if n == 0 || n > MAX_TAKE {
            tracing::warn!(n, "bad TAP request: closing the connection");
            return false;
        }
        let mut taps = vec![];
        let mut conns = vec![];
        for _ in 0..n {
            let tap = match self.pool.pop().map(Ok).unwrap_or_else(|| self.make_tap()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("cannot make a TAP: {e}");
                    break;
                }
            };
            let Ok((mine, theirs)) = UnixStream::pair() else {
                break;
            };
            taps.push(tap);
            conns.push((mine, theirs));
        }
        let granted = if taps.len() == n as usize { n } else { 0 };
        let mut fds = vec![];
        if granted == n {
            for (tap, (_, theirs)) in taps.iter().zip(&conns) {
                fds.push(tap.as_raw_fd());
                fds.push(theirs.as_raw_fd());
            }
        }
        let sent = self.conns[i].send_with_fds(&[&granted.to_le_bytes()[..]], &fds);
        if sent.is_ok() && granted == n {
            self.conns.extend(conns.into_iter().map(|(mine, _)| mine));
        }
        // Our copies of the TAPs and of the other ends close here.
        true
    }
}

pub(crate) fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

pub(crate) fn peer_uid(s: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Blocks SIGTERM, SIGINT and SIGHUP and returns a signalfd that reports
/// them, so the loop can clean up instead of dying with the devices left.
pub(crate) fn block_signals() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only write into it, then
    // change this (single-threaded) process's mask and make a signalfd.
    let fd = unsafe {
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

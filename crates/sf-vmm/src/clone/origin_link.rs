//! A remote clone's connection to its origin (heartbeats, console, the
//! final report; kill orders the other way). With mutual TLS, connecting
//! needs the origin's VMM to answer the handshake, and it only looks at
//! its report listener when its guest joins or kills: so the link
//! connects from a thread of its own and the clone starts at once. What
//! the clone sends before then is held (console up to [`MAX_PENDING`]
//! bytes, the rest counted and reported dropped; heartbeats are not
//! needed before the origin listens); the final report waits for the
//! connection. The same thread then watches for kill orders.

use super::wire::Frame;
use sf_tls::{Stream, Transport};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Console bytes held while the link connects.
pub const MAX_PENDING: usize = 1 << 20;
/// How long the origin may take to answer the handshake: it answers when
/// its guest next joins, which may be late in a long run; a dead origin
/// closes the connection and ends the wait at once.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(600);

enum Conn {
    Connecting,
    Up(Stream),
    Down,
}

struct State {
    conn: Conn,
    pending: Vec<u8>,
    dropped: u64,
}

pub struct OriginLink {
    addr: SocketAddr,
    /// The clone-host process that owns the TLS session. Its own clones
    /// (forked processes) inherit this link but must never write to it: a
    /// second writer would reuse the session's record sequence numbers and
    /// the origin would drop the connection as forged. Their console stays
    /// in this host's files; their reports go over their own pipes.
    owner: u32,
    state: Mutex<State>,
    changed: Condvar,
}

impl OriginLink {
    /// Starts connecting to `addr`; `hello` goes first once connected.
    /// If the origin cannot be reached the clone is orphaned: the process
    /// ends with status 1, saying why.
    pub fn connect(transport: Transport, addr: SocketAddr, hello: Frame) -> Arc<OriginLink> {
        let link = Arc::new(OriginLink {
            addr,
            owner: std::process::id(),
            state: Mutex::new(State {
                conn: Conn::Connecting,
                pending: hello.encode(),
                dropped: 0,
            }),
            changed: Condvar::new(),
        });
        let me = link.clone();
        std::thread::spawn(move || {
            // Fork safety: parked while connecting and while waiting for
            // bytes from the origin, never while holding the link's lock
            // (see `clone::park`).
            let helper = super::park::register("origin link");
            match helper.idle(|| transport.connect(addr, CONNECT_DEADLINE)) {
                Ok(s) => me.up(s),
                Err(e) => {
                    eprintln!("snowflock: cannot reach the origin at {addr}: {e}");
                    me.set(Conn::Down);
                    super::process::exit_now(1);
                }
            }
            me.watch_for_kill(&helper);
        });
        link
    }

    fn check_owner(&self) -> std::io::Result<()> {
        if std::process::id() == self.owner {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "a forked clone does not write to its parent's origin link",
            ))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, c: Conn) {
        self.lock().conn = c;
        self.changed.notify_all();
    }

    fn up(&self, mut s: Stream) {
        let mut st = self.lock();
        let pending = std::mem::take(&mut st.pending);
        if st.dropped > 0 {
            tracing::warn!(
                bytes = st.dropped,
                "clone console output dropped while connecting to the origin"
            );
        }
        st.conn = match s.write_all(&pending).and_then(|_| s.flush()) {
            Ok(()) => Conn::Up(s),
            Err(_) => Conn::Down,
        };
        drop(st);
        self.changed.notify_all();
    }

    /// Sends a frame, or holds it while connecting (`keep`: hold it even
    /// past the limit; otherwise drop what does not fit).
    fn send(&self, f: &Frame, keep: bool) -> std::io::Result<()> {
        self.check_owner()?;
        let mut st = self.lock();
        match &mut st.conn {
            Conn::Up(s) => {
                let r = f.write_to(s).and_then(|_| s.flush());
                if r.is_err() {
                    st.conn = Conn::Down;
                }
                r
            }
            Conn::Connecting => {
                let bytes = f.encode();
                if keep || st.pending.len() + bytes.len() <= MAX_PENDING {
                    st.pending.extend_from_slice(&bytes);
                } else {
                    st.dropped += bytes.len() as u64;
                }
                Ok(())
            }
            Conn::Down => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    pub fn console(&self, bytes: &[u8]) {
        let _ = self.send(&Frame::Console(bytes.to_vec()), false);
    }

    /// A heartbeat, once connected (before, the origin does not listen).
    pub fn heartbeat(&self) -> std::io::Result<()> {
        self.check_owner()?;
        let mut st = self.lock();
        match &mut st.conn {
            Conn::Up(s) => Frame::Heartbeat.write_to(s).and_then(|_| s.flush()),
            Conn::Connecting => Ok(()),
            Conn::Down => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    /// One chunk of an output file, in [`super::wire::OUTPUT_PIECE`]
    /// frames: of this clone (`sub` None), or of one of its own clones
    /// (`sub` its ID path below this one), relayed from that clone's pipe.
    /// Never held or dropped: it waits for the connection (the origin
    /// listens once its guest joins), then writes, so a clone that outputs
    /// faster than the origin reads is slowed, not buffered.
    pub fn output(
        &self,
        sub: Option<&[u8]>,
        append: bool,
        name: &[u8],
        data: &[u8],
    ) -> std::io::Result<()> {
        let mut append = append;
        self.pieces(data, |piece| {
            let f = Frame::output_piece(sub, append, name, piece);
            append = true;
            f
        })
    }

    /// The clone's result before its report, in pieces as outputs go
    /// (a result may be far larger than one frame).
    pub fn result(&self, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.pieces(data, |piece| Frame::ResultPiece(piece.to_vec()))
    }

    /// Waits for the connection, then writes `data` as one frame per
    /// [`super::wire::OUTPUT_PIECE`] (at least one frame).
    fn pieces(&self, data: &[u8], mut frame: impl FnMut(&[u8]) -> Frame) -> std::io::Result<()> {
        self.check_owner()?;
        let mut st = self.lock();
        st = self
            .changed
            .wait_timeout_while(st, CONNECT_DEADLINE, |s| matches!(s.conn, Conn::Connecting))
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
        let Conn::Up(s) = &mut st.conn else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        let mut pieces = data.chunks(super::wire::OUTPUT_PIECE);
        let first = pieces.next().unwrap_or(&[]);
        let mut r = Ok(());
        for piece in std::iter::once(first).chain(pieces) {
            r = frame(piece).write_to(s);
            if r.is_err() {
                break;
            }
        }
        let r = r.and_then(|_| s.flush());
        if r.is_err() {
            st.conn = Conn::Down;
        }
        r
    }

    /// The final report: waits for the connection, then sends it.
    pub fn report(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.send(&Frame::Report(bytes.to_vec()), true)?;
        let st = self.lock();
        let st = self
            .changed
            .wait_timeout_while(st, CONNECT_DEADLINE, |s| matches!(s.conn, Conn::Connecting))
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
        match st.conn {
            Conn::Up(_) => Ok(()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("the origin at {} never answered", self.addr),
            )),
        }
    }

    /// Anything from the origin is a kill order (or its death). The
    /// stream is shared with the writers, so wait for bytes without the
    /// lock, then read them under it with a short timeout (a TLS record
    /// may arrive in pieces).
    fn watch_for_kill(&self, helper: &super::park::Helper) -> ! {
        use std::os::fd::AsRawFd;
        let fd = match &self.lock().conn {
            Conn::Up(s) => Some(s.tcp().as_raw_fd()),
            _ => None,
        };
        while let Some(fd) = fd {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: one valid pollfd; the stream (and its fd) stays in
            // this link, which lives as long as the process.
            if helper.idle(|| unsafe { libc::poll(&mut p, 1, -1) }) <= 0 {
                continue;
            }
            let mut st = self.lock();
            let Conn::Up(s) = &mut st.conn else { break };
            let _ = s.tcp().set_read_timeout(Some(Duration::from_millis(50)));
            let mut byte = [0u8; 1];
            match std::io::Read::read(s, &mut byte) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                _ => break,
            }
        }
        eprintln!("snowflock: the origin ended this clone (kill, or the connection closed)");
        super::process::exit_now(137);
    }
}

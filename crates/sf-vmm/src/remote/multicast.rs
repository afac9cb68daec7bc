//! Pushing served pages to every clone host of a group at once (SnowFlock's
//! third idea): the memory holder also sends each data page it serves as a
//! UDP datagram to the group's multicast address, and every clone host
//! installs the pages it lacks, so a page one clone faulted in is usually
//! there before its siblings touch it. No reliability layer: a lost
//! datagram only means a later fault, served over TCP as before.
//!
//! Anyone on the segment can send to the group, so every datagram is
//! sealed with AES-128-GCM under a key derived (HKDF-SHA256) from the
//! group's token, which itself only ever travels inside mutual TLS. A
//! datagram that does not open (forged, another group, altered) is
//! dropped, and so is one whose sequence number was already seen or is
//! older than the replay window. The token is never on the wire.
//!
//! Datagram: magic `SFM2`, sequence number (u64 LE), page offset (u64
//! LE), the sealed 4096 bytes of the page, the 16-byte tag. The header is
//! authenticated as associated data; the nonce is the sequence number (one
//! sender per group key, so it never repeats).

use super::protocol::PAGE_SIZE;
use super::GroupToken;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use ring::hkdf;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8; 4] = b"SFM2";
const HEADER_LEN: usize = 4 + 8 + 8;
const TAG_LEN: usize = 16;
pub const DATAGRAM_LEN: usize = HEADER_LEN + PAGE_SIZE + TAG_LEN;
/// How far behind the newest sequence number a datagram may arrive
/// (reordering on the segment) and still be taken once.
const REPLAY_WINDOW: u64 = 128;
/// Datagrams dropped (forged, foreign, replayed) in one look before it
/// gives up: anyone on the segment may send them, and each costs an AES-GCM
/// open, so a flood must not keep the fault handler from its faults.
const MAX_DROPS_PER_LOOK: u64 = 64;

/// The clone group's page-push key, derived from its token.
pub struct GroupKey(LessSafeKey);

impl GroupKey {
    pub fn new(token: &GroupToken) -> GroupKey {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"snowflock multicast v2");
        let prk = salt.extract(token);
        let okm = prk
            .expand(&[b"page push key"], &AES_128_GCM)
            .expect("an AES-128 key is a valid HKDF output length");
        let mut key = [0u8; 16];
        okm.fill(&mut key)
            .expect("the output length matches the algorithm's key");
        GroupKey(LessSafeKey::new(
            UnboundKey::new(&AES_128_GCM, &key).expect("16 bytes is an AES-128 key"),
        ))
    }
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The sealed datagram of page `offset`, sequence number `seq`.
pub fn encode(key: &GroupKey, seq: u64, offset: u64, page: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(DATAGRAM_LEN);
    d.extend_from_slice(MAGIC);
    d.extend_from_slice(&seq.to_le_bytes());
    d.extend_from_slice(&offset.to_le_bytes());
    d.extend_from_slice(page);
    let (head, body) = d.split_at_mut(HEADER_LEN);
    let tag = key
        .0
        .seal_in_place_separate_tag(nonce(seq), Aad::from(&head[..]), body)
        .expect("a page is far below AES-GCM's length limit");
    d.extend_from_slice(tag.as_ref());
    d
}

/// Opens a datagram in place: `(seq, offset, page)` if it was sealed with
/// `key` and is a whole aligned page; `None` for anything else.
pub fn decode<'a>(d: &'a mut [u8], key: &GroupKey) -> Option<(u64, u64, &'a [u8])> {
    if d.len() != DATAGRAM_LEN || &d[..4] != MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(d[4..12].try_into().ok()?);
    let offset = u64::from_le_bytes(d[12..20].try_into().ok()?);
    if offset % PAGE_SIZE as u64 != 0 {
        return None;
    }
    let (head, body) = d.split_at_mut(HEADER_LEN);
    let page = key
        .0
        .open_in_place(nonce(seq), Aad::from(&head[..]), body)
        .ok()?;
    Some((seq, offset, page))
}

/// Sequence numbers taken so far: each at most once, none older than the
/// window.
#[derive(Default)]
pub struct ReplayWindow {
    top: Option<u64>,
    /// Bit i: `top - i` was seen.
    seen: u128,
}

impl ReplayWindow {
    /// Whether `seq` is new (and records it).
    pub fn accept(&mut self, seq: u64) -> bool {
        let Some(top) = self.top else {
            self.top = Some(seq);
            self.seen = 1;
            return true;
        };
        if seq > top {
            let shift = seq - top;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.top = Some(seq);
            return true;
        }
        let back = top - seq;
        if back >= REPLAY_WINDOW || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

/// The holder's side: sends pages to the group out of one interface.
pub struct Sender {
    sock: Socket,
    group: SockAddr,
    key: GroupKey,
    seq: AtomicU64,
}

impl Sender {
    pub fn new(group: SocketAddrV4, iface: Ipv4Addr, token: GroupToken) -> io::Result<Sender> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_multicast_if_v4(&iface)?;
        sock.set_multicast_ttl_v4(1)?;
        sock.set_multicast_loop_v4(false)?;
        Ok(Sender {
            sock,
            group: group.into(),
            key: GroupKey::new(&token),
            seq: AtomicU64::new(0),
        })
    }

    /// A sender whose datagrams also reach this host (tests on loopback;
    /// the holder's do not loop back).
    #[cfg(test)]
    pub fn looped(group: SocketAddrV4, iface: Ipv4Addr, token: GroupToken) -> io::Result<Sender> {
        let s = Sender::new(group, iface, token)?;
        s.sock.set_multicast_loop_v4(true)?;
        Ok(s)
    }

    /// Sends every page of `[offset, offset + pages * 4 KiB)` of `region`
    /// that is not all zeros (zero pages cost clones nothing to fetch).
    /// Errors are ignored: multicast is only ever a head start.
    pub fn send_pages(&self, region: &[u8], offset: u64, pages: u32) {
        for i in 0..pages as u64 {
            self.send_page(region, offset + i * PAGE_SIZE as u64);
        }
    }

    /// Sends the page at byte `at` of `region` unless it is all zeros or
    /// outside; true if a datagram went out.
    pub fn send_page(&self, region: &[u8], at: u64) -> bool {
        let at = at as usize;
        let Some(page) = region.get(at..at.saturating_add(PAGE_SIZE)) else {
            return false;
        };
        if super::protocol::is_zero_page(page) {
            return false;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.sock
            .send_to(&encode(&self.key, seq, at as u64, page), &self.group)
            .is_ok()
    }

    /// Datagrams sent so far.
    pub fn datagrams(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }
}

/// The receive buffer a clone host asks for (past `net.core.rmem_max`,
/// while it still has the privilege to): a clone whose vCPU and handler
/// wait for one of the 2 CPUs shared by 32 clones misses tens of ms of a
/// 1 Gbit/s push, and a datagram takes ~9 KB of buffer once reassembled
/// from its three fragments. Measured, 1 GiB, 32 clones on 3 hosts: 22,449
/// datagrams lost per run with the 4 MiB the sysctl allows (8 MiB asked).
const RECV_BUFFER: libc::c_int = 64 << 20;

/// Sets SO_RCVBUFFORCE (CAP_NET_ADMIN; a clone host sets up as root). An
/// unprivileged caller keeps what SO_RCVBUF gave it.
fn force_recv_buffer(sock: &Socket, bytes: libc::c_int) {
    // SAFETY: setsockopt reads one c_int from a valid pointer for the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "multicast receive buffer stays at the sysctl's limit: {}",
            io::Error::last_os_error()
        );
    }
}

/// A clone host's side: a non-blocking socket joined to the group.
pub struct Receiver {
    sock: std::net::UdpSocket,
    key: GroupKey,
    replay: ReplayWindow,
    buf: Vec<u8>,
    /// Datagrams read from the socket, whatever they held.
    pub received: u64,
    /// Datagrams dropped: forged, of another group, or replayed.
    pub dropped: u64,
    /// Losses, from the sequence numbers: the ones between the first and
    /// the newest taken that never came (a reordered one that comes late
    /// is taken and no longer counted).
    seq_first: Option<u64>,
    taken: u64,
    /// Test knob: read and discard every datagram (a receiver whose pushes
    /// are all lost).
    pub drop_all: bool,
    /// Losses told to the holder so far, and when.
    reported_lost: u64,
    last_report: Option<std::time::Instant>,
}

/// A receiver with nothing new to say reports this often at most (while
/// it faults), so the holder's pace can climb back.
pub(crate) const REPORT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl Receiver {
    /// Joins `group` on the interface with address `iface`: the host's one
    /// receiver of the group ([`super::host_receiver`]), or a clone that
    /// could not reach it (the port is shared).
    pub fn join(group: SocketAddrV4, iface: Ipv4Addr, token: GroupToken) -> io::Result<Receiver> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_reuse_address(true)?;
        sock.set_recv_buffer_size(8 << 20)?;
        force_recv_buffer(&sock, RECV_BUFFER);
        sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, group.port()).into())?;
        sock.join_multicast_v4(group.ip(), &iface)?;
        sock.set_nonblocking(true)?;
        Ok(Receiver::on(sock.into(), &token))
    }

    /// A receiver of `token`'s group on a socket already set up (joined,
    /// non-blocking).
    fn on(sock: std::net::UdpSocket, token: &GroupToken) -> Receiver {
        Receiver {
            sock,
            key: GroupKey::new(token),
            replay: ReplayWindow::default(),
            buf: vec![0; DATAGRAM_LEN + 1],
            received: 0,
            dropped: 0,
            seq_first: None,
            taken: 0,
            drop_all: false,
            reported_lost: 0,
            last_report: None,
        }
    }

    /// Bytes waiting in the socket (0 if the kernel does not say).
    pub(crate) fn backlog_bytes(&self) -> u64 {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on this socket writes one int to `n`.
        let rc = unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::FIONREAD, &mut n) };
        if rc == 0 {
            n.max(0) as u64
        } else {
            0
        }
    }

    /// A report for the holder's pacing, if one is due: new losses, a
    /// backlog, or [`REPORT_EVERY`] since the last one (once pushes came).
    pub fn report_due(&mut self) -> Option<super::pacer::Report> {
        if self.seen() == 0 {
            return None;
        }
        let lost = self.lost().saturating_sub(self.reported_lost);
        let backlog = self.backlog_bytes();
        let quiet = self.last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY);
        if lost == 0 && backlog <= super::pacer::BACKLOG_LIMIT && !quiet {
            return None;
        }
        self.reported_lost = self.reported_lost.max(self.lost());
        self.last_report = Some(std::time::Instant::now());
        Some(super::pacer::Report::new(lost, backlog))
    }

    /// The newest sequence number taken, plus one: how many datagrams the
    /// holder had sent by then.
    pub fn seen(&self) -> u64 {
        self.replay.top.map_or(0, |t| t + 1)
    }

    /// Datagrams of the group that never arrived, as far as the sequence
    /// numbers tell.
    pub fn lost(&self) -> u64 {
        match (self.seq_first, self.replay.top) {
            (Some(first), Some(top)) => (top - first + 1).saturating_sub(self.taken),
            _ => 0,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Datagrams of the group taken (opened, new sequence number).
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// The next page of this group waiting, if any: `(offset, bytes)`.
    /// `None` also after [`MAX_DROPS_PER_LOOK`] bad datagrams in a row; the
    /// socket then stays readable for the next look.
    pub fn next_page(&mut self) -> Option<(u64, &[u8])> {
        // Forged, foreign and replayed datagrams are skipped. Opening
        // decrypts in place, so the page is read back from the buffer.
        let mut drops = 0;
        let offset = loop {
            if drops == MAX_DROPS_PER_LOOK {
                return None;
            }
            let n = self.sock.recv(&mut self.buf).ok()?;
            self.received += 1;
            if self.drop_all {
                drops += 1;
                continue;
            }
            match decode(&mut self.buf[..n], &self.key) {
                Some((seq, offset, _)) if self.replay.accept(seq) => {
                    self.taken += 1;
                    let first = self.seq_first.get_or_insert(seq);
                    *first = (*first).min(seq);
                    break offset;
                }
                _ => {
                    self.dropped += 1;
                    drops += 1;
                }
            }
        };
        Some((offset, &self.buf[HEADER_LEN..HEADER_LEN + PAGE_SIZE]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_round_trip_and_forgeries_are_refused() {
        let key = GroupKey::new(&[7u8; 16]);
        let page = vec![0xab; PAGE_SIZE];
        let d = encode(&key, 5, 0x3000, &page);
        assert!(
            !d.windows(16).any(|w| w == [7u8; 16]),
            "the token is never on the wire"
        );
        let open =
            |mut d: Vec<u8>, k: &GroupKey| decode(&mut d, k).map(|(s, o, p)| (s, o, p.to_vec()));
        assert_eq!(open(d.clone(), &key), Some((5, 0x3000, page.clone())));
        assert_eq!(
            open(d.clone(), &GroupKey::new(&[8u8; 16])),
            None,
            "another group"
        );
        assert_eq!(open(d[..d.len() - 1].to_vec(), &key), None, "truncated");
        for at in [0, 6, 14, HEADER_LEN + 9, d.len() - 1] {
            let mut bad = d.clone();
            bad[at] ^= 1;
            assert_eq!(open(bad, &key), None, "byte {at} altered");
        }
        // The old format (token in clear, no tag) is not accepted.
        let mut old = b"SFMC".to_vec();
        old.extend_from_slice(&[7u8; 16]);
        old.extend_from_slice(&0u64.to_le_bytes());
        old.extend_from_slice(&page);
        old.resize(DATAGRAM_LEN, 0);
        assert_eq!(open(old, &key), None);
    }

    #[test]
    fn replayed_and_stale_sequence_numbers_are_dropped() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(10));
        assert!(!w.accept(10), "replay");
        assert!(w.accept(8), "reordered, inside the window");
        assert!(!w.accept(8));
        assert!(w.accept(500));
        assert!(!w.accept(10), "older than the window");
        assert!(w.accept(499));
        assert!(!w.accept(499));
    }

    #[test]
    fn a_flood_of_forgeries_never_keeps_the_receiver_from_returning() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        sock.set_nonblocking(true).unwrap();
        // Room for the whole flood (as the receiver asks for in `join`).
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20);
        let mut rx = Receiver::on(sock, &[7u8; 16]);
        // Sealed under another key: a stranger's datagrams.
        let forged = encode(&GroupKey::new(&[8u8; 16]), 1, 0, &[1u8; PAGE_SIZE]);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..1000 {
            tx.send_to(&forged, addr).unwrap();
        }
        // While strangers keep sending, one look must end after a bounded
        // number of drops, so the fault handler gets back to its faults.
        assert!(rx.next_page().is_none());
        assert!(
            rx.dropped <= MAX_DROPS_PER_LOOK,
            "{} datagrams opened in one look",
            rx.dropped
        );
    }
}

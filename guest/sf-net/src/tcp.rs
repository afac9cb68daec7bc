//! TCP: listeners with a backlog, connect, send and receive, graceful close.

use crate::stack::{Net, Slot, SockId};
use crate::{Ipv4Addr, NetError};
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{ConnectError, Socket, SocketBuffer, State};

/// Longest a close waits for the peer to acknowledge the data still
/// queued, so a dead peer cannot hang the program.
const CLOSE_TIMEOUT_US: u64 = 5_000_000;
/// Closed streams kept finishing their FIN exchange; past this the oldest
/// is dropped (a peer that never closes its side would keep it forever).
const MAX_CLOSING: usize = 64;

impl Net {
    fn new_tcp(&mut self) -> SocketHandle {
        let n = self.tcp_buffer;
        let mut s = Socket::new(SocketBuffer::new(vec![0; n]), SocketBuffer::new(vec![0; n]));
        // Request/response traffic: no Nagle delay on small writes.
        // (smoltcp's delayed ACK stays: ACKing every segment at once gave
        // no better stream between two VMs, 65-84 Mbit/s either way, and
        // doubled the 64-byte round trip, 213 to 440 us, in one run each.)
        s.set_nagle_enabled(false);
        self.sockets.add(s)
    }

    fn listening(&mut self, port: u16) -> Result<SocketHandle, NetError> {
        let h = self.new_tcp();
        match self.sockets.get_mut::<Socket>(h).listen(port) {
            Ok(()) => Ok(h),
            Err(_) => {
                self.sockets.remove(h);
                Err(NetError::InvalidArgument)
            }
        }
    }

    fn stream(&self, s: SockId) -> Result<SocketHandle, NetError> {
        match self.slot(s)? {
            Slot::Stream(h) => Ok(*h),
            _ => Err(NetError::BadSocket),
        }
    }

    /// Listens on `port` (1..=65535) on this VM's address.
    pub fn tcp_listen(&mut self, port: u16) -> Result<SockId, NetError> {
        if port == 0 {
            return Err(NetError::InvalidArgument);
        }
        self.refresh();
        if self.port_taken(port, true) {
            return Err(NetError::AddrInUse);
        }
        let mut pending = Vec::new();
        for _ in 0..self.backlog.max(1) {
            pending.push(self.listening(port)?);
        }
        Ok(self.add_slot(Slot::Listener { port, pending }))
    }

    /// Waits for a connection on listener `l`; returns a new stream.
    pub fn tcp_accept(&mut self, l: SockId, timeout_us: Option<u64>) -> Result<SockId, NetError> {
        if !matches!(self.slot(l)?, Slot::Listener { .. }) {
            return Err(NetError::BadSocket);
        }
        let h = self.block_on(timeout_us, |net| {
            let Some(Slot::Listener { pending, .. }) = net.slots.get(l.0 as usize) else {
                return Some(Err(NetError::Reset));
            };
            pending
                .iter()
                .position(|&h| {
                    let s = net.sockets.get::<Socket>(h);
                    s.may_send() || s.can_recv() || s.state() == State::CloseWait
                })
                .map(|i| Ok((i, pending[i])))
        })?;
        let (i, conn) = h;
        let Slot::Listener { port, .. } = self.slots[l.0 as usize] else {
            return Err(NetError::Reset);
        };
        let fresh = self.listening(port)?;
        if let Slot::Listener { pending, .. } = &mut self.slots[l.0 as usize] {
            pending[i] = fresh;
        }
        Ok(self.add_slot(Slot::Stream(conn)))
    }

    /// Connects to `addr:port`; returns the stream once established.
    pub fn tcp_connect(
        &mut self,
        addr: Ipv4Addr,
        port: u16,
        timeout_us: Option<u64>,
    ) -> Result<SockId, NetError> {
        if port == 0 || addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
            return Err(NetError::InvalidArgument);
        }
        self.refresh();
        let h = self.new_tcp();
        let local = self.ephemeral_port();
        let cx = self.iface.context();
        if let Err(e) = self
            .sockets
            .get_mut::<Socket>(h)
            .connect(cx, (addr, port), local)
        {
            self.sockets.remove(h);
            return Err(match e {
                ConnectError::Unaddressable | ConnectError::InvalidState => {
                    NetError::InvalidArgument
                }
            });
        }
        let s = self.add_slot(Slot::Stream(h));
        let r = self.block_on(timeout_us, |net| {
            if matches!(net.slots[s.0 as usize], Slot::Reset) {
                return Some(Err(NetError::Reset));
            }
            let sock = net.sockets.get::<Socket>(h);
            match sock.state() {
                State::SynSent | State::SynReceived => None,
                State::Closed => Some(Err(NetError::ConnectionRefused)),
                _ => Some(Ok(())),
            }
        });
        match r {
            Ok(()) => Ok(s),
            Err(e) => {
                if let Slot::Stream(h) = self.slots[s.0 as usize] {
                    self.sockets.get_mut::<Socket>(h).abort();
                    self.closing.push(h);
                }
                self.slots[s.0 as usize] = Slot::Free;
                Err(e)
            }
        }
    }

    /// Queues some of `buf` for sending (waiting for room if there is
    /// none); returns how many bytes were taken, at least 1 for a non-empty
    /// `buf`.
    pub fn tcp_send(
        &mut self,
        s: SockId,
        buf: &[u8],
        timeout_us: Option<u64>,
    ) -> Result<usize, NetError> {
        self.stream(s)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.block_on(timeout_us, |net| {
            let Ok(h) = net.stream(s) else {
                return Some(Err(NetError::Reset));
            };
            let sock = net.sockets.get_mut::<Socket>(h);
            if !sock.may_send() {
                return Some(Err(NetError::ConnectionReset));
            }
            if sock.can_send() {
                return Some(sock.send_slice(buf).map_err(|_| NetError::ConnectionReset));
            }
            None
        })?;
        self.poll();
        self.host.flush_soon();
        Ok(n)
    }

    /// Sends all of `buf`.
    pub fn tcp_write_all(
        &mut self,
        s: SockId,
        mut buf: &[u8],
        timeout_us: Option<u64>,
    ) -> Result<(), NetError> {
        while !buf.is_empty() {
            let n = self.tcp_send(s, buf, timeout_us)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Receives into `buf`, waiting for at least one byte; 0 means the peer
    /// closed its side and everything it sent has been read.
    pub fn tcp_recv(
        &mut self,
        s: SockId,
        buf: &mut [u8],
        timeout_us: Option<u64>,
    ) -> Result<usize, NetError> {
        self.stream(s)?;
        if buf.is_empty() {
            return Ok(0);
        }
        self.block_on(timeout_us, |net| {
            let Ok(h) = net.stream(s) else {
                return Some(Err(NetError::Reset));
            };
            let sock = net.sockets.get_mut::<Socket>(h);
            if sock.can_recv() {
                return Some(sock.recv_slice(buf).map_err(|_| NetError::ConnectionReset));
            }
            if !sock.may_recv() {
                // FIN received (or the connection is gone): end of stream.
                return Some(Ok(0));
            }
            None
        })
    }

    /// Fills all of `buf`; [`NetError::UnexpectedEof`] if the peer closes
    /// first.
    pub fn tcp_read_exact(
        &mut self,
        s: SockId,
        buf: &mut [u8],
        timeout_us: Option<u64>,
    ) -> Result<(), NetError> {
        let mut done = 0;
        while done < buf.len() {
            match self.tcp_recv(s, &mut buf[done..], timeout_us)? {
                0 => return Err(NetError::UnexpectedEof),
                n => done += n,
            }
        }
        Ok(())
    }

    /// Closes a stream: waits (at most 5 s) until the peer has acknowledged
    /// everything sent, then sends FIN; the socket lingers in the stack
    /// until the FIN exchange ends. A socket reset by a clone is just freed.
    pub fn tcp_close(&mut self, s: SockId) -> Result<(), NetError> {
        let h = match self.slot(s) {
            Err(NetError::Reset) => {
                self.slots[s.0 as usize] = Slot::Free;
                return Ok(());
            }
            Err(e) => return Err(e),
            Ok(Slot::Stream(h)) => *h,
            Ok(_) => return self.close(s),
        };
        let _ = self.block_on(Some(CLOSE_TIMEOUT_US), |net| {
            if net.stream(s).is_err() {
                return Some(Ok(()));
            }
            let sock = net.sockets.get::<Socket>(h);
            (sock.send_queue() == 0 || !sock.may_send()).then_some(Ok(()))
        });
        if let Slot::Stream(h) = self.slots[s.0 as usize] {
            self.sockets.get_mut::<Socket>(h).close();
            if self.closing.len() >= MAX_CLOSING {
                let old = self.closing.remove(0);
                self.sockets.remove(old);
            }
            self.closing.push(h);
        }
        self.slots[s.0 as usize] = Slot::Free;
        self.flush();
        Ok(())
    }

    /// The peer's address and port of a stream.
    pub fn tcp_peer(&self, s: SockId) -> Result<(Ipv4Addr, u16), NetError> {
        let h = self.stream(s)?;
        let ep = self
            .sockets
            .get::<Socket>(h)
            .remote_endpoint()
            .ok_or(NetError::ConnectionReset)?;
        let smoltcp::wire::IpAddress::Ipv4(a) = ep.addr;
        Ok((a, ep.port))
    }
}

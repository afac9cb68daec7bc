//! Socket types over the global stack, in the shape of `std::net`: each
//! has an optional timeout for its blocking calls (none by default) and is
//! closed when dropped.

use super::{micros, with, Error, Ipv4Addr, SockId};
use core::time::Duration;

/// A TCP listening socket with a backlog of 8.
#[derive(Debug)]
pub struct TcpListener {
    id: SockId,
    timeout: Option<Duration>,
}

/// A TCP connection.
#[derive(Debug)]
pub struct TcpStream {
    id: SockId,
    timeout: Option<Duration>,
}

/// A UDP socket.
#[derive(Debug)]
pub struct UdpSocket {
    id: SockId,
    timeout: Option<Duration>,
}

impl TcpListener {
    /// Listens on `port` of this VM's address.
    pub fn bind(port: u16) -> Result<TcpListener, Error> {
        let id = with(|n| n.tcp_listen(port))?;
        Ok(TcpListener { id, timeout: None })
    }

    /// Timeout of `accept` (`None`: wait forever).
    pub fn set_timeout(&mut self, t: Option<Duration>) {
        self.timeout = t;
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> Result<TcpStream, Error> {
        let t = micros(self.timeout);
        let id = with(|n| n.tcp_accept(self.id, t))?;
        Ok(TcpStream { id, timeout: None })
    }

    /// The socket number (what the C API uses).
    pub fn id(&self) -> SockId {
        self.id
    }
}

impl TcpStream {
    /// Connects to `addr:port`, waiting as long as it takes.
    pub fn connect(addr: Ipv4Addr, port: u16) -> Result<TcpStream, Error> {
        let id = with(|n| n.tcp_connect(addr, port, None))?;
        Ok(TcpStream { id, timeout: None })
    }

    /// Connects, giving up after `timeout`.
    pub fn connect_timeout(
        addr: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, Error> {
        let id = with(|n| n.tcp_connect(addr, port, micros(Some(timeout))))?;
        Ok(TcpStream { id, timeout: None })
    }

    /// Timeout of each send and receive call (`None`: wait forever).
    pub fn set_timeout(&mut self, t: Option<Duration>) {
        self.timeout = t;
    }

    /// Sends some of `buf`; returns how much was taken.
    pub fn send(&mut self, buf: &[u8]) -> Result<usize, Error> {
        let t = micros(self.timeout);
        with(|n| n.tcp_send(self.id, buf, t))
    }

    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), Error> {
        let t = micros(self.timeout);
        with(|n| n.tcp_write_all(self.id, buf, t))
    }

    /// Receives at least one byte; 0 at the end of the stream.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let t = micros(self.timeout);
        with(|n| n.tcp_recv(self.id, buf, t))
    }

    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        let t = micros(self.timeout);
        with(|n| n.tcp_read_exact(self.id, buf, t))
    }

    /// The peer's address and port.
    pub fn peer(&self) -> Result<(Ipv4Addr, u16), Error> {
        with(|n| n.tcp_peer(self.id))
    }

    /// Closes gracefully: waits (at most 5 s) until the peer has
    /// everything sent, then sends FIN. Dropping the stream does the same.
    pub fn close(self) -> Result<(), Error> {
        let id = self.id;
        core::mem::forget(self);
        with(|n| n.tcp_close(id))
    }

    pub fn id(&self) -> SockId {
        self.id
    }
}

impl UdpSocket {
    /// Binds `port` (0: a free ephemeral port).
    pub fn bind(port: u16) -> Result<UdpSocket, Error> {
        let id = with(|n| n.udp_bind(port))?;
        Ok(UdpSocket { id, timeout: None })
    }

    pub fn set_timeout(&mut self, t: Option<Duration>) {
        self.timeout = t;
    }

    pub fn local_port(&self) -> Result<u16, Error> {
        with(|n| n.udp_port(self.id))
    }

    /// Sends one datagram (at most 1422 bytes).
    pub fn send_to(&mut self, buf: &[u8], addr: Ipv4Addr, port: u16) -> Result<(), Error> {
        let t = micros(self.timeout);
        with(|n| n.udp_send_to(self.id, buf, addr, port, t))
    }

    /// Receives one datagram: bytes copied, sender address and port.
    pub fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, Ipv4Addr, u16), Error> {
        let t = micros(self.timeout);
        with(|n| n.udp_recv_from(self.id, buf, t))
    }

    pub fn id(&self) -> SockId {
        self.id
    }
}

macro_rules! close_on_drop {
    ($($t:ty),*) => {$(
        impl Drop for $t {
            fn drop(&mut self) {
                let _ = with(|n| n.close(self.id));
            }
        }
    )*};
}
close_on_drop!(TcpListener, TcpStream, UdpSocket);

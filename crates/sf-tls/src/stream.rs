//! Blocking TLS streams for VMM processes (memory holders, clone hosts,
//! runners), which keep no async runtime so they can fork. A [`Transport`]
//! is what a process loaded at start-up: mutual TLS with the cluster's
//! credentials, or plain TCP when the operator chose `--insecure-no-tls`.

use crate::{Credentials, PeerIdentity};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a process talks to the rest of the cluster.
#[derive(Clone, Debug, Default)]
pub enum Transport {
    /// Plain TCP: only with `--insecure-no-tls`, for measurements and
    /// closed networks.
    #[default]
    Plain,
    /// Mutual TLS under the cluster CA.
    Tls(Arc<Credentials>),
}

/// One connection, plain or TLS (either side).
pub enum Stream {
    Plain(TcpStream),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
}

fn tls_io(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// "mtls" or "plain", as benchmarks and logs name it.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Tls(_) => "mtls",
        }
    }

    /// Connects to `addr` and, with TLS, completes the mutual handshake
    /// within `timeout` (the server must hold a certificate of the cluster
    /// CA naming `addr`'s IP). The stream is left without timeouts.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<Stream> {
        let deadline = Instant::now() + timeout;
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        let _ = tcp.set_nodelay(true);
        let Transport::Tls(creds) = self else {
            return Ok(Stream::Plain(tcp));
        };
        let conn = ClientConnection::new(
            creds.client_config(),
            ServerName::IpAddress(addr.ip().into()),
        )
        .map_err(tls_io)?;
        let mut s = Stream::Client(Box::new(StreamOwned::new(conn, tcp)));
        s.handshake_until(deadline)?;
        s.tcp().set_read_timeout(None)?;
        s.tcp().set_write_timeout(None)?;
        Ok(s)
    }

    /// Wraps an accepted connection. With TLS the handshake happens on the
    /// first read or write (so a non-blocking caller is never stuck on a
    /// silent client), or in [`Stream::handshake_until`].
    pub fn accept(&self, tcp: TcpStream) -> io::Result<Stream> {
        let _ = tcp.set_nodelay(true);
        match self {
            Transport::Plain => Ok(Stream::Plain(tcp)),
            Transport::Tls(creds) => {
                let conn = ServerConnection::new(creds.server_config()).map_err(tls_io)?;
                Ok(Stream::Server(Box::new(StreamOwned::new(conn, tcp))))
            }
        }
    }
}

impl Stream {
    /// The TCP socket underneath (timeouts, non-blocking mode, poll).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Client(s) => &s.sock,
            Stream::Server(s) => &s.sock,
        }
    }

    /// Whether the TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Client(s) => s.conn.is_handshaking(),
            Stream::Server(s) => s.conn.is_handshaking(),
        }
    }

    /// Completes the handshake (blocking) by `deadline`; a peer that
    /// stalls gets `TimedOut`, one without a valid certificate an
    /// `InvalidData` error naming why.
    pub fn handshake_until(&mut self, deadline: Instant) -> io::Result<()> {
        while self.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS handshake did not finish in time",
                ));
            }
            self.tcp().set_read_timeout(Some(left))?;
            self.tcp().set_write_timeout(Some(left))?;
            let r = match self {
                Stream::Plain(_) => return Ok(()),
                Stream::Client(s) => s.conn.complete_io(&mut s.sock),
                Stream::Server(s) => s.conn.complete_io(&mut s.sock),
            };
            match r {
                Ok((0, 0)) if self.is_handshaking() => {
                    return Err(io::ErrorKind::UnexpectedEof.into())
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the TLS handshake did not finish in time",
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Who the peer is: its certificate's addresses once the handshake is
    /// done, the source address on plain TCP; `None` during a handshake.
    pub fn peer(&self) -> Option<PeerIdentity> {
        let certs = match self {
            Stream::Plain(s) => return Some(PeerIdentity::SourceAddress(s.peer_addr().ok()?.ip())),
            Stream::Client(s) if !s.conn.is_handshaking() => s.conn.peer_certificates(),
            Stream::Server(s) if !s.conn.is_handshaking() => s.conn.peer_certificates(),
            _ => None,
        };
        Some(PeerIdentity::from_certificate(certs?.first()?))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Client(s) => s.read(buf),
            Stream::Server(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Client(s) => s.write(buf),
            Stream::Server(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Client(s) => s.flush(),
            Stream::Server(s) => s.flush(),
        }
    }
}

//! One connection to a page server: the TLS handshake (when the VMM has
//! cluster credentials), the hello, then request/response with a deadline
//! on every answer, so a silent server costs at most the request timeout,
//! never a hang.

use super::error::RemoteError;
use super::protocol::{
    self, Ask, Hello, HelloReply, PageMap, Request, Response, WireError, HELLO_REPLY_LEN,
    PROTOCOL_VERSION,
};
use super::GroupToken;
use sf_tls::{Stream, Transport};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Connection settings.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

pub struct PageClient {
    server: SocketAddr,
    stream: Stream,
    region_len: u64,
    request_timeout: Duration,
}

/// A page batch as received: which pages carry data, and the data pages
/// packed in order.
pub struct Batch {
    pub map: PageMap,
    pub bytes_received: usize,
    /// Lockstep: the server sent the data pages of `map` (which may cover
    /// only the first pages asked for) to the group's multicast instead,
    /// in datagrams numbered below this (the answer's `seq_end`).
    pub pushed: Option<u64>,
}

/// Reads from a stream, failing with `TimedOut` once `deadline` passes,
/// however the answer trickles in.
struct DeadlineReader<'a> {
    stream: &'a mut Stream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.tcp().set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl PageClient {
    /// Connects and says hello; the server must accept `token`.
    pub fn connect(
        server: SocketAddr,
        token: &GroupToken,
        t: Timeouts,
        transport: &Transport,
    ) -> Result<PageClient, RemoteError> {
        // Requests are small and latency-bound: the transport sets
        // TCP_NODELAY so they are never held back to coalesce.
        let stream =
            transport
                .connect(server, t.connect)
                .map_err(|source| RemoteError::Connect {
                    server,
                    ms: t.connect.as_millis() as u64,
                    source,
                })?;
        let mut client = PageClient {
            server,
            stream,
            region_len: 0,
            request_timeout: t.request,
        };
        client
            .stream
            .tcp()
            .set_write_timeout(Some(t.request))
            .map_err(|e| client.io_error("configuring the socket", e))?;
        client
            .send(&Hello::new(*token).encode())
            .map_err(|e| client.wire_error("saying hello", e))?;
        let mut reply = [0u8; HELLO_REPLY_LEN];
        let got = client.reader().read_exact(&mut reply);
        got.map_err(|e| client.wire_error("waiting for the hello reply", e.into()))?;
        match HelloReply::decode(&reply)
            .map_err(|e| client.wire_error("reading the hello reply", e.into()))?
        {
            HelloReply::Accept {
                version: PROTOCOL_VERSION,
                region_len,
            } => {
                client.region_len = region_len;
                Ok(client)
            }
            HelloReply::Accept { version, .. } => Err(client.wire_error(
                "reading the hello reply",
                protocol::ProtocolError::Version(version).into(),
            )),
            HelloReply::Refuse { reason, .. } => Err(RemoteError::Refused { server, reason }),
        }
    }

    pub fn region_len(&self) -> u64 {
        self.region_len
    }

    fn reader(&mut self) -> DeadlineReader<'_> {
        DeadlineReader {
            stream: &mut self.stream,
            deadline: Instant::now() + self.request_timeout,
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.stream.write_all(bytes).map_err(WireError::Io)
    }

    /// Tells the holder this receiver's losses and backlog (no answer).
    pub fn report(&mut self, r: super::pacer::Report) -> Result<(), RemoteError> {
        self.send(&r.encode())
            .map_err(|e| self.wire_error("reporting multicast losses", e))
    }

    /// Asks for `req` and reads the answer, its data pages into `data`.
    /// [`Ask::Unicast`]: the pages were pushed and never arrived; they
    /// must come over this connection.
    pub fn fetch(
        &mut self,
        req: Request,
        data: &mut Vec<u8>,
        ask: Ask,
    ) -> Result<Batch, RemoteError> {
        let what = || format!("fetching {} pages at offset {:#x}", req.pages, req.offset);
        let unicast = ask == Ask::Unicast;
        let frame = req.encode_as(ask);
        self.send(&frame).map_err(|e| self.wire_error(&what(), e))?;
        let result = protocol::read_response(&mut self.reader(), &req, data);
        match result.map_err(|e| self.wire_error(&what(), e))? {
            (Response::Pages(map), bytes_received) => Ok(Batch {
                map,
                bytes_received,
                pushed: None,
            }),
            (Response::Pushed { map, seq_end }, bytes_received) if !unicast => {
                data.clear();
                Ok(Batch {
                    map,
                    bytes_received,
                    pushed: Some(seq_end),
                })
            }
            (Response::Pushed { .. }, _) => {
                Err(self.wire_error(&what(), protocol::ProtocolError::BadStatus(2).into()))
            }
            (Response::Refused(reason), _) => Err(RemoteError::RequestRefused {
                server: self.server,
                offset: req.offset,
                pages: req.pages,
                reason,
            }),
        }
    }

    fn io_error(&self, what: &str, source: io::Error) -> RemoteError {
        let server = self.server;
        let what = what.to_string();
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => RemoteError::Timeout {
                server,
                ms: self.request_timeout.as_millis() as u64,
                what,
            },
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => RemoteError::Closed { server, what },
            _ => RemoteError::Io {
                server,
                what,
                source,
            },
        }
    }

    fn wire_error(&self, what: &str, e: WireError) -> RemoteError {
        match e {
            WireError::Io(e) => self.io_error(what, e),
            WireError::Protocol(source) => RemoteError::Protocol {
                server: self.server,
                what: what.to_string(),
                source,
            },
        }
    }
}

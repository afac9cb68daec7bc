//! What can go wrong between a clone host and its page server, with the
//! address, server and timings each message needs to be acted on.

use super::protocol::{ProtocolError, RefuseReason};
use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("region at {addr:#x} of {len} bytes: {why}")]
    BadRegion {
        addr: u64,
        len: u64,
        why: &'static str,
    },
    #[error("userfaultfd {what} failed: {source}")]
    Uffd {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to page server {server} within {ms} ms: {source}")]
    Connect {
        server: SocketAddr,
        ms: u64,
        #[source]
        source: io::Error,
    },
    #[error("page server {server} refused this host: {reason}")]
    Refused {
        server: SocketAddr,
        reason: RefuseReason,
    },
    #[error("page server {server} serves {served} bytes but the local region is {local} bytes")]
    SizeMismatch {
        server: SocketAddr,
        served: u64,
        local: u64,
    },
    #[error("page server {server} sent nothing for {ms} ms while {what} (timeout)")]
    Timeout {
        server: SocketAddr,
        ms: u64,
        what: String,
    },
    #[error("page server {server} closed the connection while {what}")]
    Closed { server: SocketAddr, what: String },
    #[error("page server {server}: {what}: {source}")]
    Io {
        server: SocketAddr,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("page server {server} broke the protocol while {what}: {source}")]
    Protocol {
        server: SocketAddr,
        what: String,
        #[source]
        source: ProtocolError,
    },
    #[error("page server {server} refused {pages} pages at offset {offset:#x}: {reason}")]
    RequestRefused {
        server: SocketAddr,
        offset: u64,
        pages: u32,
        reason: RefuseReason,
    },
    #[error("installing {pages} pages at {addr:#x} failed: {source}")]
    Install {
        addr: u64,
        pages: u64,
        #[source]
        source: io::Error,
    },
    #[error("{retry} (after one reconnect; the first attempt: {first})")]
    Retried {
        first: Box<RemoteError>,
        retry: Box<RemoteError>,
    },
    #[error("remote memory failed earlier: {0}")]
    Failed(String),
    #[error("the remote memory handler thread has stopped")]
    Stopped,
}

impl RemoteError {
    /// The server closed the connection before its hello reply (during
    /// the handshake, or while the hello was awaited).
    pub fn closed_by_server(&self) -> bool {
        match self {
            RemoteError::Closed { .. } => true,
            RemoteError::Connect { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    /// Whether a new connection might help (as opposed to a refusal or a
    /// local failure, which would only repeat).
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            RemoteError::Connect { .. }
                | RemoteError::Timeout { .. }
                | RemoteError::Closed { .. }
                | RemoteError::Io { .. }
                | RemoteError::Protocol { .. }
        )
    }
}

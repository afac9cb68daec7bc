//! The peer API's handshake on TCP. With cluster credentials every
//! connection must finish a mutual TLS handshake, presenting a certificate
//! the cluster CA signed, within [`HANDSHAKE_DEADLINE`]; the peer's
//! identity (its certificate's IP addresses) then goes with each of its
//! requests. In insecure mode (`--insecure-no-tls`) connections are plain
//! TCP and the identity is only the source address. The connection cap,
//! header and body deadlines are the ones of every listener (`http`).

use sf_tls::{Credentials, PeerIdentity};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connection that has not finished its TLS handshake by then is closed.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(2);
/// Refused connections are logged one by one at most this often; anyone
/// can make them, so the rest are counted and the count is said with the
/// next one logged (500 refusals in half a second: one line).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// When a refusal was last logged, and how many went unlogged since.
static REFUSALS: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));

/// Logs a refused peer, or counts it when one was logged just now.
fn refused(from: SocketAddr, why: std::fmt::Arguments<'_>) {
    let mut r = REFUSALS.lock().unwrap_or_else(|e| e.into_inner());
    if r.0.is_some_and(|t| t.elapsed() < REFUSAL_LOG_EVERY) {
        r.1 += 1;
        return;
    }
    let unlogged = std::mem::take(&mut r.1);
    r.0 = Some(Instant::now());
    drop(r);
    if unlogged > 0 {
        tracing::warn!(%from, "peer refused: {why} ({unlogged} more refused since the last such line)");
    } else {
        tracing::warn!(%from, "peer refused: {why}");
    }
}

/// A peer's byte stream: TLS, or plain TCP in insecure mode.
pub trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}

/// The per-connection handshake for `http::serve` on the peer listener.
pub fn handshake(
    creds: Option<Arc<Credentials>>,
) -> impl Fn((TcpStream, SocketAddr)) -> PeerHandshake + Clone + Send + 'static {
    let acceptor = creds.map(|c| tokio_rustls::TlsAcceptor::from(c.server_config()));
    move |(tcp, from)| {
        let acceptor = acceptor.clone();
        Box::pin(async move {
            let Some(acceptor) = acceptor else {
                let io: Box<dyn PeerIo> = Box::new(tcp);
                return Ok((io, PeerIdentity::SourceAddress(from.ip())));
            };
            let tls = match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    refused(from, format_args!("TLS handshake failed: {e}"));
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, e));
                }
                Err(_) => {
                    refused(
                        from,
                        format_args!("no TLS handshake within {} s", HANDSHAKE_DEADLINE.as_secs()),
                    );
                    return Err(io::ErrorKind::TimedOut.into());
                }
            };
            let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the peer presented no certificate",
                ));
            };
            let peer = PeerIdentity::from_certificate(cert);
            let io: Box<dyn PeerIo> = Box::new(tls);
            Ok((io, peer))
        })
    }
}

/// What [`handshake`] returns for one connection.
pub type PeerHandshake =
    std::pin::Pin<Box<dyn Future<Output = io::Result<(Box<dyn PeerIo>, PeerIdentity)>> + Send>>;

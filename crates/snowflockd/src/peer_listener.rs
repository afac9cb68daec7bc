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
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connection that has not finished its TLS handshake by then is closed.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(2);

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
                    tracing::warn!(%from, "peer refused: TLS handshake failed: {e}");
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, e));
                }
                Err(_) => {
                    tracing::info!(
                        %from,
                        "peer refused: no TLS handshake within {} s",
                        HANDSHAKE_DEADLINE.as_secs()
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

//! The peer API's TCP listener. With cluster credentials every connection
//! must finish a mutual TLS handshake, presenting a certificate the
//! cluster CA signed, within [`HANDSHAKE_DEADLINE`]; the peer's identity
//! (its certificate's IP addresses) then goes with each of its requests.
//! In insecure mode (`--insecure-no-tls`) connections are plain TCP and
//! the identity is only the source address.

use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sf_tls::{Credentials, PeerIdentity};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A connection that has not finished its TLS handshake by then is closed.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(2);
/// A request's header must have arrived by then.
const HEADER_DEADLINE: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until the listener fails.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    creds: Option<Arc<Credentials>>,
) -> std::io::Result<()> {
    let acceptor = creds.map(|c| tokio_rustls::TlsAcceptor::from(c.server_config()));
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of fds and the like: that connection's problem; do
                // not spin on it.
                tracing::warn!("peer API accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let peer = PeerIdentity::SourceAddress(from.ip());
                    serve_connection(tcp, app.layer(Extension(peer))).await
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::warn!(%from, "peer refused: TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%from, "peer refused: no TLS handshake within {} s", HANDSHAKE_DEADLINE.as_secs());
                            return;
                        }
                    };
                    let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                    else {
                        return;
                    };
                    let peer = PeerIdentity::from_certificate(cert);
                    serve_connection(tls, app.layer(Extension(peer))).await
                }
            }
        });
    }
}

async fn serve_connection<I>(io: I, app: Router)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let r = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_DEADLINE)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
        .await;
    if let Err(e) = r {
        tracing::debug!("peer connection ended: {e}");
    }
}

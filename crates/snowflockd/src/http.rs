//! The HTTP/1.1 server loop of every listener (Unix socket and TCP), with
//! the limits that keep slow or idle clients from holding the daemon:
//!
//! - headers must arrive within `header_timeout`, which is also how long an
//!   idle keep-alive connection stays open (hyper's header timer runs
//!   whenever the connection waits for a request);
//! - a body must arrive within `body_timeout` of its headers and be at most
//!   `max_body` bytes (413 naming the limit);
//! - at most `max_connections` connections per listener. At the cap a new
//!   connection closes the longest-open connection that has no request in
//!   flight (a slowloris or idle one); if every connection has a request in
//!   flight, the new one is refused at once, never queued. So thousands of
//!   idle connections cannot keep a new client from `/v1/health`.
//!
//! The loop is generic over the accepted connection and runs a per-
//! connection `handshake` (under the header timeout) that turns it into a
//! stream plus a peer identity, which every request carries as an
//! extension: plain streams use [`plain`], a TLS listener its handshake.

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

/// Largest request body: every request is a small JSON document (a clone
/// request with a descriptor is a few KiB; a guest command line at most
/// 4 KiB).
pub const MAX_BODY: usize = 1 << 20;
/// Largest request head (request line and headers).
const MAX_HEAD: usize = 64 << 10;

#[derive(Clone, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_body: usize,
}

/// Something that accepts connections.
pub trait Listener: Send + 'static {
    type Conn: Send + 'static;
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;
    async fn accept(&mut self) -> io::Result<Self::Conn> {
        tokio::net::UnixListener::accept(self).await.map(|c| c.0)
    }
}

/// A TCP connection comes with its source address (the peer's identity
/// in insecure mode, and the log's).
impl Listener for tokio::net::TcpListener {
    type Conn = (tokio::net::TcpStream, std::net::SocketAddr);
    async fn accept(&mut self) -> io::Result<Self::Conn> {
        let (s, from) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok((s, from))
    }
}

/// The handshake of a plain listener: the stream itself, no identity.
pub async fn plain<C>(c: C) -> io::Result<(C, ())> {
    Ok((c, ()))
}

/// Open connections of one listener.
struct Slots {
    max: usize,
    inner: Mutex<(u64, BTreeMap<u64, Slot>)>,
}

struct Slot {
    /// Requests in flight on the connection.
    busy: Arc<AtomicUsize>,
    close: tokio::sync::oneshot::Sender<()>,
}

impl Slots {
    /// A slot for a new connection, closing the oldest idle one at the
    /// cap; `None` when every connection has a request in flight.
    fn admit(&self) -> Option<(u64, Arc<AtomicUsize>, tokio::sync::oneshot::Receiver<()>)> {
        let mut g = self.inner.lock().expect("slots lock");
        let (next, conns) = &mut *g;
        if conns.len() >= self.max {
            let idle = conns
                .iter()
                .find(|(_, s)| s.busy.load(Ordering::Acquire) == 0)
                .map(|(&id, _)| id)?;
            if let Some(s) = conns.remove(&idle) {
                let _ = s.close.send(());
            }
        }
        *next += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let (close, rx) = tokio::sync::oneshot::channel();
        conns.insert(
            *next,
            Slot {
                busy: busy.clone(),
                close,
            },
        );
        Some((*next, busy, rx))
    }

    fn release(&self, id: u64) {
        self.inner.lock().expect("slots lock").1.remove(&id);
    }
}

/// Serves `app` on `listener` until accepting fails for good.
pub async fn serve<L, H, Fut, Io, P>(
    mut listener: L,
    app: Router,
    limits: Limits,
    handshake: H,
) -> io::Result<()>
where
    L: Listener,
    H: Fn(L::Conn) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = io::Result<(Io, P)>> + Send,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Clone + Send + Sync + 'static,
{
    let slots = Arc::new(Slots {
        max: limits.max_connections.max(1),
        inner: Mutex::new((0, BTreeMap::new())),
    });
    loop {
        let conn = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or a connection reset before accept:
                // keep serving the others, without spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((id, busy, close)) = slots.admit() else {
            tracing::warn!(
                max = slots.max,
                "connection refused: every connection has a request in flight"
            );
            continue;
        };
        let (slots, app, limits, handshake) = (
            slots.clone(),
            app.clone(),
            limits.clone(),
            handshake.clone(),
        );
        tokio::spawn(async move {
            let work = async move {
                let Ok(Ok((io, peer))) =
                    tokio::time::timeout(limits.header_timeout, handshake(conn)).await
                else {
                    return;
                };
                let header_timeout = limits.header_timeout;
                let service = hyper::service::service_fn(move |req| {
                    handle(req, app.clone(), peer.clone(), busy.clone(), limits.clone())
                });
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .max_buf_size(MAX_HEAD);
                if let Err(e) = b.serve_connection(TokioIo::new(io), service).await {
                    tracing::debug!(error = %e, "connection ended");
                }
            };
            tokio::select! {
                () = work => {}
                _ = close => tracing::debug!("idle connection closed for a new one"),
            }
            slots.release(id);
        });
    }
}

/// Counts a request as in flight while it is handled.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn handle<P: Clone + Send + Sync + 'static>(
    req: Request<Incoming>,
    app: Router,
    peer: P,
    busy: Arc<AtomicUsize>,
    limits: Limits,
) -> Result<Response<Body>, std::convert::Infallible> {
    busy.fetch_add(1, Ordering::AcqRel);
    let _in_flight = InFlight(busy);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return Ok(too_large(limits.max_body));
    }
    let mut req = req.map(|b| {
        Body::new(DeadlineBody {
            inner: http_body_util::Limited::new(b, limits.max_body),
            deadline: Box::pin(tokio::time::sleep(limits.body_timeout)),
            timeout: limits.body_timeout,
        })
    });
    req.extensions_mut().insert(peer);
    let resp = app.oneshot(req).await.expect("infallible");
    Ok(resp)
}

fn too_large(max: usize) -> Response<Body> {
    let body = serde_json::to_vec(&sf_api::ErrorBody {
        error: format!(
            "the request body is over the {} KiB limit of this API",
            max >> 10
        ),
    })
    .expect("serializes");
    Response::builder()
        .status(StatusCode::PAYLOAD_TOO_LARGE)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONNECTION, "close")
        .body(Body::from(body))
        .expect("valid response")
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: http_body_util::Limited<Incoming>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl hyper::body::Body for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(r);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(format!(
                "the request body did not arrive within {:?}",
                this.timeout
            )
            .into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Raises the descriptor limit to its hard maximum and returns the
/// connection cap per listener that leaves room for VMs and files.
pub fn fit_connections(wanted: usize, listeners: usize, max_vms: usize) -> usize {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    // Per VM the daemon holds a few descriptors (child handles, cgroup
    // files while spawning); keep a margin for state files and logs.
    let reserve = 128 + 4 * max_vms as u64;
    let room = (l.rlim_cur.saturating_sub(reserve) / listeners.max(1) as u64) as usize;
    let cap = wanted.min(room.max(16));
    if cap < wanted {
        tracing::warn!(
            wanted,
            cap,
            nofile = l.rlim_cur,
            "connection cap lowered to fit the descriptor limit"
        );
    }
    cap
}

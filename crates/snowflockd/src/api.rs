//! The HTTP/JSON routes (documented in the README), split at the trust
//! boundary: the admin router (create, list, detail with console, kill,
//! metrics) is served only on the Unix socket (mode 0600: the host's
//! root); the peer router (health and clone requests) only on TCP, where
//! every connection has proven a certificate of the cluster CA.

use crate::api_error::ApiError;
use crate::vms::Daemon;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use sf_api::{CloneRequest, CreateVm, ErrorBody, Health};
use sf_tls::PeerIdentity;
use std::net::SocketAddr;
use std::sync::Arc;

type S = State<Arc<Daemon>>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self.1 })).into_response()
    }
}

/// The local administrator's API: Unix socket only.
pub fn admin_router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{id}", get(detail).delete(kill))
        .route("/v1/metrics", get(metrics))
        .fallback(|| async { ApiError(404, "no such endpoint; see the README for the API".into()) })
        .with_state(d)
}

/// What authenticated peers may ask: TCP only. Each connection carries
/// its [`PeerIdentity`] as an extension (see `peer_listener`).
pub fn peer_router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/clones", post(clones))
        .fallback(|| async {
            ApiError(
                404,
                "no such endpoint on the peer API (VMs are managed on the daemon's Unix socket)"
                    .into(),
            )
        })
        .with_state(d)
}

async fn health(State(d): S) -> Json<Health> {
    Json(Health {
        ok: true,
        version: env!("CARGO_PKG_VERSION").into(),
        host: d.cfg.host_name(),
    })
}

async fn list(State(d): S) -> Json<Vec<sf_api::VmInfo>> {
    Json(d.list())
}

async fn create(
    State(d): S,
    Json(req): Json<CreateVm>,
) -> Result<(StatusCode, Json<sf_api::VmInfo>), ApiError> {
    Ok((StatusCode::CREATED, Json(d.create_vm(req).await?)))
}

async fn detail(State(d): S, Path(id): Path<String>) -> Result<Json<sf_api::VmDetail>, ApiError> {
    d.detail(&id)
        .map(Json)
        .ok_or_else(|| ApiError(404, format!("no VM {id:?}")))
}

async fn kill(State(d): S, Path(id): Path<String>) -> Result<Json<sf_api::VmInfo>, ApiError> {
    d.kill(&id).map(Json)
}

async fn metrics(State(d): S) -> Json<sf_api::Metrics> {
    Json(d.metrics())
}

/// A clone request may only point this host at the sender's own
/// addresses: its memory server and report listener must be IPs its
/// certificate names. Otherwise anyone in the cluster could make this
/// daemon fetch memory from, or connect out to, a third party.
pub fn authorize(peer: &PeerIdentity, req: &CloneRequest) -> Result<(), ApiError> {
    for (field, value) in [
        ("memory_server", &req.memory_server),
        ("report_to", &req.report_to),
    ] {
        let addr: SocketAddr = value
            .parse()
            .map_err(|_| ApiError(400, format!("{field} {value:?} is not ip:port")))?;
        if !peer.owns(addr.ip()) {
            return Err(ApiError(
                403,
                format!(
                    "{field} {value} is not an address of the sender ({peer}); a clone request may only name the sending host's own addresses"
                ),
            ));
        }
    }
    if let Some(g) = &req.multicast {
        match g.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_multicast() => {}
            _ => {
                return Err(ApiError(
                    400,
                    format!("multicast {g:?} is not a multicast ip:port"),
                ))
            }
        }
    }
    Ok(())
}

async fn clones(
    State(d): S,
    Extension(peer): Extension<PeerIdentity>,
    Json(req): Json<CloneRequest>,
) -> Result<(StatusCode, Json<sf_api::CloneAccepted>), ApiError> {
    if let Err(e) = authorize(&peer, &req) {
        tracing::warn!(%peer, "clone request refused: {}", e.1);
        return Err(e);
    }
    Ok((StatusCode::ACCEPTED, Json(d.receive_clones(req).await?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(mem: &str, rep: &str) -> CloneRequest {
        CloneRequest {
            descriptor_hex: String::new(),
            mem_size: 0,
            memory_server: mem.into(),
            report_to: rep.into(),
            token_hex: String::new(),
            ids: vec![1],
            timeout_ms: None,
            max_clones: 8,
            parent_path: String::new(),
            prefetch_window: None,
            multicast: Some("239.213.1.1:5000".into()),
            requested_unix_ns: None,
            free_pages: Vec::new(),
            output_cap: None,
            result_cap: None,
            net: None,
        }
    }

    #[test]
    fn only_the_senders_own_addresses_may_be_named() {
        let peer = PeerIdentity::Certificate {
            ips: vec!["10.0.0.2".parse().unwrap()],
        };
        assert!(authorize(&peer, &req("10.0.0.2:1", "10.0.0.2:2")).is_ok());
        let e = authorize(&peer, &req("10.0.0.3:1", "10.0.0.2:2")).unwrap_err();
        assert_eq!(e.0, 403);
        assert!(
            e.1.contains("memory_server 10.0.0.3:1 is not an address of the sender"),
            "{}",
            e.1
        );
        assert_eq!(
            authorize(&peer, &req("10.0.0.2:1", "10.0.0.9:2"))
                .unwrap_err()
                .0,
            403
        );
        assert_eq!(
            authorize(&peer, &req("nope", "10.0.0.2:2")).unwrap_err().0,
            400
        );
        let mut bad = req("10.0.0.2:1", "10.0.0.2:2");
        bad.multicast = Some("10.0.0.5:1".into());
        assert_eq!(authorize(&peer, &bad).unwrap_err().0, 400);
    }
}

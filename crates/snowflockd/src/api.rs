//! The HTTP/JSON routes (documented in the README).

use crate::placement::place;
use crate::vms::{ApiError, Daemon};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sf_api::{CloneRequest, CreateVm, ErrorBody, Health, PlacementRequest, PlacementResponse};
use std::sync::Arc;

type S = State<Arc<Daemon>>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self.1 })).into_response()
    }
}

pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{id}", get(detail).delete(kill))
        .route("/v1/metrics", get(metrics))
        .route("/v1/placement", post(placement))
        .route("/v1/clones", post(clones))
        .fallback(|| async { ApiError(404, "no such endpoint; see the README for the API".into()) })
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

async fn placement(
    State(d): S,
    Json(req): Json<PlacementRequest>,
) -> Result<Json<PlacementResponse>, ApiError> {
    if req.clones > 4096 {
        return Err(ApiError(
            400,
            format!("{} clones is more than any VM may ask for", req.clones),
        ));
    }
    Ok(Json(PlacementResponse {
        hosts: place(req.clones, &d.peers(), req.placement),
    }))
}

async fn clones(
    State(d): S,
    Json(req): Json<CloneRequest>,
) -> Result<(StatusCode, Json<sf_api::CloneAccepted>), ApiError> {
    Ok((StatusCode::ACCEPTED, Json(d.receive_clones(req).await?)))
}

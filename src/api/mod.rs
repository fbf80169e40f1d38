//! The REST API ("cacher"): bundles in and out, and what each Envoy holds.
//!
//! | method | path                      | does                                   |
//! |--------|---------------------------|----------------------------------------|
//! | PUT    | /resources/{node_type}    | validate, store durably, then serve     |
//! | GET    | /resources/{node_type}    | the stored bundle as JSON              |
//! | GET    | /resources                | node types with versions and counts    |
//! | DELETE | /resources/{node_type}    | forget a bundle (Envoys keep theirs)   |
//! | GET    | /resources/{node_type}/history | the versions kept, newest first   |
//! | GET    | /resources/{node_type}/versions/{version} | one kept version       |
//! | POST   | /resources/{node_type}/rollback | a kept version, current again    |
//! | GET    | /writes                   | the last 100 accepted writes           |
//! | GET    | /nodes                    | connected Envoys: sent, ACKed, NACKed  |
//! | GET    | /metrics                  | Prometheus metrics ([`crate::metrics`]) |
//! | GET    | /, /ui/*, /status          | the live status page ([`status_page`])  |
//! | GET    | /healthz                  | liveness                               |
//! | GET    | /readyz                   | serving, store writable, quarantine    |
//!
//! Every answer that is not a success is JSON of one shape ([`ApiError`]).
//! Writes (PUT, DELETE, rollback) pass [`auth`] first.

mod admission;
pub mod auth;
mod bundles;
mod error;
mod status_page;
mod writes;

use axum::{
    extract::{Request, State},
    http::{Method, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;

pub use admission::{Admission, Busy};
pub use auth::WritePolicy;
pub use error::ApiError;
pub use writes::{WriteLog, WriteRecord};

use crate::{store::Store, xds::status::Registry};

/// Longest request URI answered; a node type is at most 128 characters.
pub const MAX_URI_LEN: usize = 8 << 10;

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    store: Store,
    registry: Registry,
    admission: Admission,
    body_limit: usize,
    write_policy: WritePolicy,
    writes: WriteLog,
    /// Endpoint sources' status; `None` where nothing polls (tests of the API alone).
    discovery: Option<crate::discovery::Discovery>,
    /// `--envoy-validate`: Envoy checks each PUT before it is stored.
    preflight: Option<std::sync::Arc<crate::preflight::Preflight>>,
    rollouts: crate::rollout::Rollouts,
}

impl ApiState {
    /// Bodies are limited to `body_limit` bytes each, and to four such
    /// bodies (at least 256 MiB) being received at once.
    pub fn new(store: Store, registry: Registry, body_limit: usize, write_policy: WritePolicy) -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let admission = Admission::new(body_limit.saturating_mul(4).max(256 << 20), workers);
        // No canary can be served without the daemon's cache: `with_rollouts` gives them.
        let rollouts = crate::rollout::Rollouts::new(store.clone(), crate::cache::Cache::default(), None, registry.clone(), tokio_util::sync::CancellationToken::new());
        Self { store, registry, admission, body_limit, write_policy, writes: WriteLog::default(), discovery: None, preflight: None, rollouts }
    }

    /// Runs canary rollouts with `rollouts` (the daemon's cache and registry).
    #[must_use]
    pub fn with_rollouts(mut self, rollouts: crate::rollout::Rollouts) -> Self {
        self.rollouts = rollouts;
        self
    }

    /// Has `preflight` check every PUT before it is stored.
    #[must_use]
    pub fn with_preflight(mut self, preflight: std::sync::Arc<crate::preflight::Preflight>) -> Self {
        self.preflight = Some(preflight);
        self
    }

    /// Shows how the endpoint sources of `discovery` are doing.
    #[must_use]
    pub fn with_discovery(mut self, discovery: crate::discovery::Discovery) -> Self {
        self.discovery = Some(discovery);
        self
    }
}

/// The REST router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/resources", get(bundles::list_bundles))
        .route("/resources/{node_type}", get(bundles::get_bundle).put(bundles::put_bundle).delete(bundles::delete_bundle))
        .route("/resources/{node_type}/history", get(bundles::history))
        .route("/resources/{node_type}/versions/{version}", get(bundles::get_version))
        .route("/resources/{node_type}/rollback", post(bundles::rollback))
        .route("/resources/{node_type}/sources", get(bundles::sources))
        .route("/resources/{node_type}/rollout", get(bundles::get_rollout).delete(bundles::abandon_rollout))
        .route("/resources/{node_type}/rollout/retry", post(bundles::retry_rollout))
        .route("/writes", get(|State(state): State<ApiState>| async move { Json(json!({ "writes": state.writes.recent() })) }))
        .route("/nodes", get(list_nodes))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .merge(status_page::routes())
        .fallback(|uri: Uri| async move { ApiError::NoRoute(uri.path().to_owned()) })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_owned() }
        })
        .layer(middleware::from_fn_with_state(state.clone(), count_writes))
        .layer(middleware::from_fn(refuse_long_uris))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Counts every answer to a write by action and status.
async fn count_writes(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let action = match *request.method() {
        Method::PUT => "put",
        Method::DELETE => "delete",
        Method::POST if request.uri().path().ends_with("/rollback") => "rollback",
        _ => return next.run(request).await,
    };
    let response = next.run(request).await;
    state.registry.metrics().write(action, response.status().as_u16());
    response
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, content_type)], state.registry.metrics().render()).into_response()
}

async fn refuse_long_uris(request: Request, next: Next) -> Response {
    let len = request.uri().to_string().len();
    if len > MAX_URI_LEN {
        return ApiError::UriTooLong(len).into_response();
    }
    next.run(request).await
}

async fn list_nodes(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({ "streams": state.registry.list() }))
}

/// Serving xDS from a loaded store, and what is degraded: failing writes,
/// quarantined records. Always 200 while serving: xDS is unaffected by
/// either, and a load balancer must not take the replica away for them.
async fn readiness(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let write_failure = state.store.write_failure();
    let quarantined = state.store.quarantined();
    let status = if write_failure.is_none() && quarantined.is_empty() { "ready" } else { "degraded" };
    Json(json!({
        "status": status,
        "store": { "writable": write_failure.is_none(), "failure": write_failure },
        "quarantined": quarantined,
    }))
}

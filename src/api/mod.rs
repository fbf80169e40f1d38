//! The REST API ("cacher"): bundles in and out, and what each Envoy holds.
//!
//! | method | path                      | does                                   |
//! |--------|---------------------------|----------------------------------------|
//! | PUT    | /resources/{node_type}    | validate, store durably, then serve     |
//! | GET    | /resources/{node_type}    | the stored bundle as JSON              |
//! | GET    | /resources                | node types with versions and counts    |
//! | DELETE | /resources/{node_type}    | forget a bundle (Envoys keep theirs)   |
//! | GET    | /nodes                    | connected Envoys: sent, ACKed, NACKed  |
//! | GET    | /healthz                  | liveness                               |
//! | GET    | /readyz                   | serving, store writable, quarantine    |
//!
//! Every answer that is not a success is JSON of one shape ([`ApiError`]).

mod admission;
mod error;
mod status_page;

use axum::{
    body::{Body, Bytes},
    extract::{FromRequestParts, Query, Request, State},
    http::{header::CONTENT_LENGTH, header::CONTENT_TYPE, request::Parts, HeaderMap, Method, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use admission::{Admission, Busy};
pub use error::ApiError;

use crate::{
    bundle::{self, Counts, Format},
    node_type::NodeType,
    store::{PutOutcome, Store},
    xds::status::Registry,
};

/// Longest request URI answered; a node type is at most 128 characters.
pub const MAX_URI_LEN: usize = 8 << 10;

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    store: Store,
    registry: Registry,
    admission: Admission,
    body_limit: usize,
}

impl ApiState {
    /// Bodies are limited to `body_limit` bytes each, and to four such
    /// bodies (at least 256 MiB) being received at once.
    pub fn new(store: Store, registry: Registry, body_limit: usize) -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let admission = Admission::new(body_limit.saturating_mul(4).max(256 << 20), workers);
        Self { store, registry, admission, body_limit }
    }
}

/// The REST router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/resources", get(list_bundles))
        .route("/resources/{node_type}", get(get_bundle).put(put_bundle).delete(delete_bundle))
        .route("/nodes", get(list_nodes))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .merge(status_page::routes())
        .fallback(|uri: Uri| async move { ApiError::NoRoute(uri.path().to_owned()) })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_owned() }
        })
        .layer(middleware::from_fn(refuse_long_uris))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn refuse_long_uris(request: Request, next: Next) -> Response {
    let len = request.uri().to_string().len();
    if len > MAX_URI_LEN {
        return ApiError::UriTooLong(len).into_response();
    }
    next.run(request).await
}

/// The `{node_type}` of a path, validated.
struct NodeTypeParam(NodeType);

impl<S: Send + Sync> FromRequestParts<S> for NodeTypeParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
        Ok(Self(NodeType::parse(&raw)?))
    }
}

/// What a PUT answers.
#[derive(Debug, Serialize)]
struct PutSummary {
    node_type: String,
    version: String,
    /// `false` when the identical bundle was already stored (nothing pushed).
    changed: bool,
    #[serde(flatten)]
    counts: Counts,
}

#[derive(Debug, Deserialize)]
struct PutQuery {
    allow_empty: Option<String>,
}

impl PutQuery {
    fn allow_empty(&self) -> Result<bool, ApiError> {
        match self.allow_empty.as_deref() {
            None | Some("false" | "0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(other) => Err(ApiError::Query { name: "allow_empty", reason: format!("{other:?} is not true or false") }),
        }
    }
}

async fn put_bundle(
    State(state): State<ApiState>,
    NodeTypeParam(node_type): NodeTypeParam,
    query: Result<Query<PutQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PutSummary>, ApiError> {
    let query = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let allow_empty = query.allow_empty()?;
    let format = body_format(&headers);
    let body = read_body(&state, &headers, body).await?;

    // Parsing a large bundle takes milliseconds of CPU: keep it off the I/O
    // threads, and only so many at once.
    let worker = state.admission.worker().await?;
    let started = std::time::Instant::now();
    let stored = tokio::task::spawn_blocking(move || bundle::accept(&body, format))
        .await
        .map_err(|e| ApiError::Internal(format!("parser task failed: {e}")))??;
    drop(worker);
    let counts = Counts::of(&stored);
    if counts.listeners == 0 && counts.clusters == 0 && !allow_empty {
        return Err(ApiError::WouldEmpty(node_type));
    }
    let version = stored.version.clone();
    let parsed = started.elapsed();
    let outcome = state.store.put(node_type.clone(), stored).await?;
    let changed = outcome == PutOutcome::Stored;
    let (parse_ms, store_ms) = (parsed.as_millis() as u64, (started.elapsed() - parsed).as_millis() as u64);
    tracing::info!(%node_type, version, changed, parse_ms, store_ms, "bundle put");
    Ok(Json(PutSummary { node_type: node_type.to_string(), version, changed, counts }))
}

/// Reads a request body within the limit and the shared body budget.
async fn read_body(state: &ApiState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.body_limit as u64) {
        return Err(ApiError::BodyTooLarge);
    }
    let reserve = declared.map_or(state.body_limit, |len| len as usize);
    let _budget = state.admission.body(reserve)?;
    axum::body::to_bytes(body, state.body_limit).await.map_err(|error| {
        let source = error.into_inner();
        if source.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            ApiError::BodyTooLarge
        } else {
            ApiError::Body(source.to_string())
        }
    })
}

fn body_format(headers: &HeaderMap) -> Format {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if matches!(media_type.as_str(), "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml") {
        Format::Yaml
    } else {
        // JSON is the default: `curl -d` sends a form content type.
        Format::Json
    }
}

async fn get_bundle(State(state): State<ApiState>, NodeTypeParam(node_type): NodeTypeParam) -> Result<Response, ApiError> {
    let stored = state.store.catalog().get(&node_type).cloned().ok_or_else(|| ApiError::NotFound(node_type.clone()))?;
    // Printing a large bundle is as costly as parsing one: the same bound.
    let _worker = state.admission.worker().await?;
    let json = tokio::task::spawn_blocking(move || bundle::to_json(&stored))
        .await
        .map_err(|e| ApiError::Internal(format!("printer task failed: {e}")))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(CONTENT_TYPE, "application/json")], json).into_response())
}

async fn list_bundles(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let catalog = state.store.catalog();
    let node_types: Vec<serde_json::Value> = catalog
        .iter()
        .map(|(node_type, stored)| {
            let mut entry =
                json!({ "node_type": node_type.as_str(), "version": stored.version, "resource_bytes": stored.resource_bytes() });
            if let (Some(entry), Ok(serde_json::Value::Object(counts))) = (entry.as_object_mut(), serde_json::to_value(Counts::of(stored))) {
                entry.extend(counts);
            }
            entry
        })
        .collect();
    Json(json!({ "node_types": node_types, "quarantined": state.store.quarantined() }))
}

async fn delete_bundle(State(state): State<ApiState>, NodeTypeParam(node_type): NodeTypeParam) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.store.delete(node_type.clone()).await? {
        return Err(ApiError::NotFound(node_type));
    }
    tracing::info!(%node_type, "bundle deleted");
    Ok(Json(json!({ "node_type": node_type.as_str(), "deleted": true })))
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

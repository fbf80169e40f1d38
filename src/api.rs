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

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, Path, State},
    http::{header::CONTENT_TYPE, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use serde_json::json;

use crate::{
    bundle::{self, BundleError, Counts, Format},
    node_type::{InvalidNodeType, NodeType},
    store::{PutOutcome, Store, StoreError},
    xds::status::Registry,
};

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    store: Store,
    registry: Registry,
}

impl ApiState {
    pub fn new(store: Store, registry: Registry) -> Self {
        Self { store, registry }
    }
}

/// The REST router, with the request body limit as a layer.
pub fn router(state: ApiState, body_limit: usize) -> Router {
    Router::new()
        .route("/resources", get(list_bundles))
        .route("/resources/{node_type}", get(get_bundle).put(put_bundle).delete(delete_bundle))
        .route("/nodes", get(list_nodes))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Every way a request fails, each with its status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    NodeType(#[from] InvalidNodeType),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("request body: {0}")]
    Body(#[from] BytesRejection),
    #[error("no bundle for node type {0}")]
    NotFound(NodeType),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, path) = match &self {
            Self::NodeType(_) => (StatusCode::BAD_REQUEST, Some("node_type".to_owned())),
            Self::Bundle(e) => (StatusCode::BAD_REQUEST, e.path.clone()),
            Self::Body(rejection) => (rejection.status(), None),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, None),
            Self::Store(StoreError::Conflict { .. }) => (StatusCode::CONFLICT, Some("version".to_owned())),
            Self::Store(StoreError::Backend(detail)) => {
                tracing::error!(detail, "store failure");
                let body = json!({ "error": "the store is unavailable; nothing was changed" });
                return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            }
        };
        let message = match &self {
            Self::Body(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                "request body is larger than the configured limit (--body-limit)".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = json!({ "error": message });
        if let Some(path) = path {
            body["path"] = path.into();
        }
        (status, Json(body)).into_response()
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

async fn put_bundle(
    State(state): State<ApiState>,
    Path(node_type): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PutSummary>, ApiError> {
    let node_type = NodeType::parse(&node_type)?;
    let body = body?;
    let format = body_format(&headers);
    // Parsing a large bundle takes milliseconds of CPU: keep it off the I/O threads.
    let started = std::time::Instant::now();
    let stored = tokio::task::spawn_blocking(move || bundle::accept(&body, format))
        .await
        .map_err(|e| StoreError::Backend(format!("parser task failed: {e}")))??;
    let bundle = stored.contents();
    let (version, counts) = (bundle.version.clone(), Counts::of(bundle));
    let parsed = started.elapsed();
    let outcome = state.store.put(node_type.clone(), stored).await?;
    let changed = outcome == PutOutcome::Stored;
    let (parse_ms, store_ms) = (parsed.as_millis() as u64, (started.elapsed() - parsed).as_millis() as u64);
    tracing::info!(%node_type, version, changed, parse_ms, store_ms, "bundle put");
    Ok(Json(PutSummary { node_type: node_type.to_string(), version, changed, counts }))
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

async fn get_bundle(State(state): State<ApiState>, Path(node_type): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let node_type = NodeType::parse(&node_type)?;
    let catalog = state.store.catalog();
    let stored = catalog.get(&node_type).ok_or_else(|| ApiError::NotFound(node_type.clone()))?;
    Ok(Json(bundle::to_json(stored.contents())?))
}

async fn list_bundles(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let catalog = state.store.catalog();
    let node_types: Vec<serde_json::Value> = catalog
        .iter()
        .map(|(node_type, stored)| {
            let bundle = stored.contents();
            let mut entry = json!({ "node_type": node_type.as_str(), "version": bundle.version });
            if let (Some(entry), Ok(serde_json::Value::Object(counts))) = (entry.as_object_mut(), serde_json::to_value(Counts::of(bundle))) {
                entry.extend(counts);
            }
            entry
        })
        .collect();
    Json(json!({ "node_types": node_types }))
}

async fn delete_bundle(State(state): State<ApiState>, Path(node_type): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let node_type = NodeType::parse(&node_type)?;
    if !state.store.delete(node_type.clone()).await? {
        return Err(ApiError::NotFound(node_type));
    }
    tracing::info!(%node_type, "bundle deleted");
    Ok(Json(json!({ "node_type": node_type.as_str(), "deleted": true })))
}

async fn list_nodes(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({ "streams": state.registry.list() }))
}

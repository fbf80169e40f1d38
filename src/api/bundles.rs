//! The bundle endpoints: PUT, GET, DELETE and list, and each node type's
//! history: its kept versions, one of them, and a rollback to one.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::{FromRequestParts, Path, Query, State},
    http::{header::CONTENT_LENGTH, header::CONTENT_TYPE, header::IF_MATCH, request::Parts, HeaderMap},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{auth::Writer, ApiError, ApiState};
use crate::{
    bundle::{self, BundleError, Counts, Format},
    node_type::NodeType,
    resource_type::ResourceType,
    schema::StoredBundle,
    store::{IfMatch, StoreError},
};

/// The `{node_type}` of a path, validated.
pub(super) struct NodeTypeParam(pub NodeType);

impl<S: Send + Sync> FromRequestParts<S> for NodeTypeParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // The first path parameter, whatever follows it (`/versions/{version}`).
        axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
            .and_then(|params| {
                let raw = params.iter().find(|(name, _)| *name == "node_type").map(|(_, value)| value.to_owned());
                let raw = raw.ok_or_else(|| ApiError::Internal("route without {node_type}".into()))?;
                Ok(Self(NodeType::parse(&raw)?))
            })
    }
}

/// What a PUT answers.
#[derive(Debug, Serialize)]
pub(super) struct PutSummary {
    node_type: String,
    version: String,
    /// `false` when the identical bundle was already stored (nothing pushed).
    changed: bool,
    #[serde(flatten)]
    counts: Counts,
    /// The version whose content a rollback restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    rolled_back_to: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct PutQuery {
    allow_empty: Option<String>,
    dry_run: Option<String>,
    /// A canary rollout to the node ids matching this glob.
    canary: Option<String>,
    /// How long the canaries have to ACK (`30s`).
    wait: Option<String>,
}

/// A boolean query parameter: absent is false, bare (`?dry_run`) is true.
fn flag(name: &'static str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false" | "0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(other) => Err(ApiError::Query { name, reason: format!("{other:?} is not true or false") }),
    }
}

impl PutQuery {
    fn allow_empty(&self) -> Result<bool, ApiError> {
        flag("allow_empty", self.allow_empty.as_deref())
    }

    fn dry_run(&self) -> Result<bool, ApiError> {
        flag("dry_run", self.dry_run.as_deref())
    }

    /// The canary glob and its wait, when the PUT is a rollout.
    fn canary(&self) -> Result<Option<(String, std::time::Duration)>, ApiError> {
        let wait = self.wait.as_deref().map(parse_wait).transpose()?;
        match (&self.canary, wait) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(ApiError::Query { name: "wait", reason: "wait is for a canary rollout (?canary=<node id glob>)".into() }),
            (Some(glob), _) if glob.is_empty() => Err(ApiError::Query { name: "canary", reason: "a glob of node ids, e.g. sidecar-canary-*".into() }),
            (Some(glob), wait) => Ok(Some((glob.clone(), wait.unwrap_or(DEFAULT_CANARY_WAIT)))),
        }
    }
}

/// How long canaries have to ACK, unless `?wait=` says otherwise.
const DEFAULT_CANARY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn parse_wait(text: &str) -> Result<std::time::Duration, ApiError> {
    crate::config::parse_timeout(text).map_err(|reason| ApiError::Query { name: "wait", reason })
}

/// What `PUT ?dry_run=true` answers: what the PUT would change. Nothing is stored.
#[derive(Debug, Serialize)]
pub(super) struct DryRun {
    node_type: String,
    dry_run: bool,
    /// Whether a PUT would change any resource.
    changed: bool,
    /// Whether a PUT would be refused with 409: the stored version with other content.
    conflict: bool,
    #[serde(flatten)]
    diff: bundle::Diff,
}

pub(super) async fn put_bundle(
    State(state): State<ApiState>,
    Writer(who): Writer,
    NodeTypeParam(node_type): NodeTypeParam,
    query: Result<Query<PutQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let query = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let (allow_empty, dry_run, canary) = (query.allow_empty()?, query.dry_run()?, query.canary()?);
    if !dry_run {
        state.rollouts.check_idle(&node_type)?;
    }
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
    let counts = bundle::counts(&stored);
    if counts[ResourceType::Listener] == 0 && counts[ResourceType::Cluster] == 0 && !allow_empty {
        return Err(ApiError::WouldEmpty(node_type));
    }
    if let Some(preflight) = &state.preflight {
        preflight.check(&stored).await?;
    }
    if dry_run {
        // Printing changed resources costs like parsing them: same bound.
        let _worker = state.admission.worker().await?;
        let current = state.store.catalog().get(&node_type).cloned();
        let diff = tokio::task::spawn_blocking(move || bundle::diff(current.as_deref(), &stored))
            .await
            .map_err(|e| ApiError::Internal(format!("diff task failed: {e}")))?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let answer = DryRun { node_type: node_type.to_string(), dry_run: true, changed: !diff.is_empty(), conflict: diff.reuses_version(), diff };
        return Ok(Json(answer).into_response());
    }
    let version = stored.version.clone();
    if let Some((glob, wait)) = canary {
        let rollout = state.rollouts.start(&node_type, &glob, wait, stored).await?;
        tracing::info!(%node_type, version, who = %who, "canary rollout put");
        let answer = json!({ "node_type": node_type.as_str(), "version": version, "rollout": rollout });
        return Ok((axum::http::StatusCode::ACCEPTED, Json(answer)).into_response());
    }
    let parsed = started.elapsed();
    let written = state.store.put(node_type.clone(), stored, if_match(&headers)).await;
    state.registry.metrics().store_commit(started.elapsed() - parsed);
    let written = written?;
    let (parse_ms, store_ms) = (parsed.as_millis() as u64, (started.elapsed() - parsed).as_millis() as u64);
    tracing::debug!(%node_type, version, parse_ms, store_ms, "bundle put");
    state.writes.record(&who, "put", &node_type, &written);
    Ok(Json(PutSummary { node_type: node_type.to_string(), version, changed: written.changed, counts, rolled_back_to: None }).into_response())
}

/// Reads a request body within the limit and the shared body budget.
pub(super) async fn read_body(state: &ApiState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
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

/// The write's precondition: `If-Match: <version>` (checked by the store,
/// inside its transaction).
fn if_match(headers: &HeaderMap) -> IfMatch {
    headers.get(IF_MATCH).map_or(IfMatch::Any, |value| IfMatch::parse(&String::from_utf8_lossy(value.as_bytes())))
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

pub(super) async fn get_bundle(State(state): State<ApiState>, NodeTypeParam(node_type): NodeTypeParam) -> Result<Response, ApiError> {
    let stored = state.store.catalog().get(&node_type).cloned().ok_or_else(|| ApiError::NotFound(node_type.clone()))?;
    print_bundle(&state, stored).await
}

/// A stored bundle as its canonical JSON.
async fn print_bundle(state: &ApiState, stored: Arc<StoredBundle>) -> Result<Response, ApiError> {
    // Printing a large bundle is as costly as parsing one: the same bound.
    let _worker = state.admission.worker().await?;
    let json = tokio::task::spawn_blocking(move || bundle::to_json(&stored))
        .await
        .map_err(|e| ApiError::Internal(format!("printer task failed: {e}")))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(CONTENT_TYPE, "application/json")], json).into_response())
}

pub(super) async fn list_bundles(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let catalog = state.store.catalog();
    let node_types: Vec<serde_json::Value> = catalog
        .iter()
        .map(|(node_type, stored)| {
            let mut entry =
                json!({ "node_type": node_type.as_str(), "version": stored.version, "resource_bytes": stored.resource_bytes() });
            if let (Some(entry), Ok(serde_json::Value::Object(counts))) = (entry.as_object_mut(), serde_json::to_value(bundle::counts(stored))) {
                entry.extend(counts);
            }
            entry
        })
        .collect();
    Json(json!({ "node_types": node_types, "quarantined": state.store.quarantined() }))
}

pub(super) async fn delete_bundle(
    State(state): State<ApiState>,
    Writer(who): Writer,
    NodeTypeParam(node_type): NodeTypeParam,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.rollouts.check_idle(&node_type)?;
    let started = std::time::Instant::now();
    let written = state.store.delete(node_type.clone(), if_match(&headers)).await;
    state.registry.metrics().store_commit(started.elapsed());
    let written = written?;
    if !written.changed {
        return Err(ApiError::NotFound(node_type));
    }
    state.writes.record(&who, "delete", &node_type, &written);
    Ok(Json(json!({ "node_type": node_type.as_str(), "deleted": true })))
}

/// `GET /resources/{node_type}/history`: the versions kept, newest first.
pub(super) async fn history(State(state): State<ApiState>, NodeTypeParam(node_type): NodeTypeParam) -> Result<Json<serde_json::Value>, ApiError> {
    let versions = state.store.history(node_type.clone()).await?;
    if versions.is_empty() {
        return Err(ApiError::NotFound(node_type));
    }
    let current = state.store.catalog().get(&node_type).map(|b| b.version.clone());
    let versions: Vec<serde_json::Value> = versions
        .into_iter()
        .rev()
        .map(|version| {
            let is_current = current.as_deref() == Some(version.version.as_str());
            let mut entry = serde_json::to_value(version).unwrap_or_default();
            entry["current"] = is_current.into();
            entry
        })
        .collect();
    Ok(Json(json!({ "node_type": node_type.as_str(), "versions": versions })))
}

/// `GET /resources/{node_type}/sources`: each endpoint source of the
/// current bundle, what it found last and how its polls go.
pub(super) async fn sources(State(state): State<ApiState>, NodeTypeParam(node_type): NodeTypeParam) -> Result<Json<serde_json::Value>, ApiError> {
    let statuses = match &state.discovery {
        Some(discovery) => discovery.sources(&node_type),
        None => state.store.catalog().contains_key(&node_type).then(Vec::new),
    };
    let statuses = statuses.ok_or_else(|| ApiError::NotFound(node_type.clone()))?;
    Ok(Json(json!({ "node_type": node_type.as_str(), "sources": statuses })))
}

/// `GET /resources/{node_type}/versions/{version}`: one kept version.
pub(super) async fn get_version(
    State(state): State<ApiState>,
    NodeTypeParam(node_type): NodeTypeParam,
    Path((_, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let stored = state.store.version(node_type.clone(), version.clone()).await?;
    let stored = stored.ok_or(ApiError::Store(StoreError::UnknownVersion { node_type, version }))?;
    print_bundle(&state, Arc::new(stored)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// The kept version whose content becomes current again.
    version: String,
    /// The version to serve it under; by default `<version>-rollback-<n>`.
    new_version: Option<String>,
}

/// `POST /resources/{node_type}/rollback` with `{"version": "..."}`.
pub(super) async fn rollback(
    State(state): State<ApiState>,
    Writer(who): Writer,
    NodeTypeParam(node_type): NodeTypeParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PutSummary>, ApiError> {
    state.rollouts.check_idle(&node_type)?;
    let body = read_body(&state, &headers, body).await?;
    let request: RollbackRequest = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body)).map_err(|error| {
        let path = error.path().to_string();
        BundleError::at(if path == "." { "version".to_owned() } else { path }, format!("a rollback is {{\"version\": \"...\"}}: {}", error.inner()))
    })?;
    let new_version = match request.new_version {
        Some(version) if version.is_empty() => return Err(BundleError::at("new_version", "new_version must not be empty").into()),
        Some(version) => Some(bundle::check_version(version).map_err(|e| BundleError::at("new_version", e.message))?),
        None => None,
    };
    let started = std::time::Instant::now();
    let written = state.store.rollback(node_type.clone(), request.version.clone(), new_version, if_match(&headers)).await;
    state.registry.metrics().store_commit(started.elapsed());
    let written = written?;
    state.writes.record(&who, "rollback", &node_type, &written);
    let current = written.current.as_deref().ok_or_else(|| ApiError::Internal("a rollback stored nothing".into()))?;
    Ok(Json(PutSummary {
        node_type: node_type.to_string(),
        version: current.version.clone(),
        changed: true,
        counts: bundle::counts(current),
        rolled_back_to: Some(request.version),
    }))
}


/// `GET /resources/{node_type}/rollout`: the node type's last canary rollout.
pub(super) async fn get_rollout(State(state): State<ApiState>, NodeTypeParam(node_type): NodeTypeParam) -> Result<Json<crate::rollout::Rollout>, ApiError> {
    state.rollouts.get(&node_type).map(Json).ok_or_else(|| crate::rollout::RolloutError::NotFound { node_type: node_type.to_string() }.into())
}

#[derive(Debug, Deserialize)]
pub(super) struct RetryQuery {
    wait: Option<String>,
}

/// `POST /resources/{node_type}/rollout/retry[?wait=30s]`: a halted rollout again.
pub(super) async fn retry_rollout(
    State(state): State<ApiState>,
    Writer(who): Writer,
    NodeTypeParam(node_type): NodeTypeParam,
    query: Result<Query<RetryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<crate::rollout::Rollout>, ApiError> {
    let query = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let wait = query.wait.as_deref().map(parse_wait).transpose()?;
    let rollout = state.rollouts.retry(&node_type, wait).await?;
    tracing::info!(%node_type, version = rollout.version, who = %who, "canary rollout retried");
    Ok(Json(rollout))
}

/// `DELETE /resources/{node_type}/rollout`: gives the rollout up.
pub(super) async fn abandon_rollout(State(state): State<ApiState>, Writer(who): Writer, NodeTypeParam(node_type): NodeTypeParam) -> Result<Json<crate::rollout::Rollout>, ApiError> {
    let rollout = state.rollouts.abandon(&node_type).await?;
    tracing::info!(%node_type, version = rollout.version, who = %who, "canary rollout abandoned");
    Ok(Json(rollout))
}

//! Every way a REST request fails, each with its status code and the one
//! JSON shape: `{"error": "...", "path": "..."}` (`path` when a field is to
//! blame). Internal detail is logged, not sent.

use axum::{
    http::{
        header::{RETRY_AFTER, WWW_AUTHENTICATE},
        StatusCode,
    },
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use super::{admission::Busy, auth::Refusal};
use crate::{
    bundle::BundleError,
    node_type::{InvalidNodeType, NodeType},
    store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    NodeType(#[from] InvalidNodeType),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("request body is larger than the configured limit (--body-limit)")]
    BodyTooLarge,
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error("invalid query parameter {name:?}: {reason}")]
    Query { name: &'static str, reason: String },
    #[error(
        "this bundle has no listeners and no clusters: it would empty the config of every Envoy of {0}. \
         To stop serving a node type, DELETE it (Envoys keep their config); to send the empty config anyway, PUT with ?allow_empty=true"
    )]
    WouldEmpty(NodeType),
    #[error("no bundle for node type {0}")]
    NotFound(NodeType),
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the request URI is {0} bytes long; at most {max} are allowed", max = super::MAX_URI_LEN)]
    UriTooLong(usize),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Refused(#[from] super::auth::Refusal),
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rollout(#[from] crate::rollout::RolloutError),
    /// `--envoy-validate` could not give a verdict; nothing was stored.
    #[error("{0}")]
    PreflightUnavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl From<crate::preflight::PreflightError> for ApiError {
    fn from(error: crate::preflight::PreflightError) -> Self {
        match error {
            crate::preflight::PreflightError::Refused(refused) => Self::Bundle(refused),
            crate::preflight::PreflightError::Unavailable(why) => Self::PreflightUnavailable(why),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, path) = match &self {
            Self::NodeType(_) => (StatusCode::BAD_REQUEST, Some("node_type")),
            Self::Bundle(e) => (StatusCode::BAD_REQUEST, e.path.as_deref()),
            Self::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, None),
            Self::Body(_) | Self::BadRequest(_) => (StatusCode::BAD_REQUEST, None),
            Self::Query { name, .. } => (StatusCode::BAD_REQUEST, Some(*name)),
            Self::WouldEmpty(_) => (StatusCode::BAD_REQUEST, Some("listeners")),
            Self::NotFound(_) | Self::NoRoute(_) => (StatusCode::NOT_FOUND, None),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, None),
            Self::UriTooLong(_) => (StatusCode::URI_TOO_LONG, None),
            Self::Busy(_) | Self::PreflightUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
            Self::Rollout(crate::rollout::RolloutError::Active { .. }) => (StatusCode::CONFLICT, None),
            Self::Rollout(crate::rollout::RolloutError::NoCanaries { .. }) => (StatusCode::BAD_REQUEST, Some("canary")),
            Self::Rollout(crate::rollout::RolloutError::Refused(_)) => (StatusCode::BAD_REQUEST, None),
            Self::Rollout(crate::rollout::RolloutError::NotFound { .. }) => (StatusCode::NOT_FOUND, None),
            Self::Rollout(crate::rollout::RolloutError::Store(error)) => return ApiError::Store(StoreError::Unavailable(error.to_string())).into_response(),
            Self::Refused(Refusal::NotLoopback { .. }) => (StatusCode::FORBIDDEN, None),
            Self::Refused(Refusal::TokenFileUnreadable(_)) => (StatusCode::SERVICE_UNAVAILABLE, None),
            Self::Refused(_) => {
                let body = json!({ "error": self.to_string() });
                return (StatusCode::UNAUTHORIZED, [(WWW_AUTHENTICATE, "Bearer realm=\"sxds\"")], Json(body)).into_response();
            }
            Self::Store(StoreError::Conflict { .. }) => (StatusCode::CONFLICT, Some("version")),
            Self::Store(StoreError::UnknownVersion { .. }) => (StatusCode::NOT_FOUND, Some("version")),
            Self::Store(StoreError::PreconditionFailed { stored, .. }) => {
                let body = json!({ "error": self.to_string(), "path": "If-Match", "stored_version": stored });
                return (StatusCode::PRECONDITION_FAILED, Json(body)).into_response();
            }
            Self::Store(StoreError::Unavailable(detail) | StoreError::Open(detail)) => {
                tracing::error!(detail, "store failure");
                let body = json!({ "error": "the store cannot write right now; nothing was changed (GET /readyz tells why)" });
                return (StatusCode::SERVICE_UNAVAILABLE, [(RETRY_AFTER, "5")], Json(body)).into_response();
            }
            Self::Internal(detail) => {
                tracing::error!(detail, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
        };
        let mut body = json!({ "error": self.to_string() });
        if let Some(path) = path {
            body["path"] = path.into();
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return (status, [(RETRY_AFTER, "1")], Json(body)).into_response();
        }
        (status, Json(body)).into_response()
    }
}

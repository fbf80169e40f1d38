//! The live status page on the REST port, for people:
//!
//! | method | path            | does                                            |
//! |--------|-----------------|-------------------------------------------------|
//! | GET    | /               | the page (one HTML file, no build step)         |
//! | GET    | /ui/app.js      | its script: polls `/status` and `/writes`       |
//! | GET    | /ui/style.css   | its style                                       |
//! | GET    | /status         | node types, NACKs and one page of streams       |
//!
//! The files are compiled into the binary. They are served under a strict
//! Content-Security-Policy (nothing inline, nothing from elsewhere), and the
//! script writes data into the page as text only: node ids and NACK
//! messages come from Envoys and are not trusted.
//!
//! `GET /status?node_type=&q=&page=&per_page=` stays small with any number
//! of streams: see [`summary`].

mod summary;

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::header::{HeaderName, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde::Deserialize;

use super::{ApiError, ApiState};
use summary::{Bundle, Filter, DEFAULT_PER_PAGE};

const INDEX_HTML: &str = include_str!("status_page/index.html");
const APP_JS: &str = include_str!("status_page/app.js");
const STYLE_CSS: &str = include_str!("status_page/style.css");

/// Only this server's own script, style and JSON; no frames, no forms.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Longest `q` answered: matching is O(node id length × `q` length) per stream.
const MAX_QUERY_LEN: usize = 128;

/// The page's routes, merged into the REST router.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/status", get(status))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, &str); 5] = [
        (CONTENT_TYPE, content_type),
        (CONTENT_SECURITY_POLICY, CSP),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (REFERRER_POLICY, "no-referrer"),
        // Revalidate, so a new binary's page is used at once.
        (CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}

/// Raw strings, so that a bad number is our JSON 400 naming the parameter.
#[derive(Debug, Default, Deserialize)]
struct StatusQuery {
    node_type: Option<String>,
    q: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

impl StatusQuery {
    fn filter(self) -> Result<Filter, ApiError> {
        // A form sends empty fields: those filter nothing.
        let non_empty = |value: Option<String>| value.filter(|v| !v.is_empty());
        let q = non_empty(self.q);
        if let Some(q) = &q {
            if q.len() > MAX_QUERY_LEN {
                return Err(ApiError::Query { name: "q", reason: format!("{} bytes long; at most {MAX_QUERY_LEN} are allowed", q.len()) });
            }
        }
        Ok(Filter {
            node_type: non_empty(self.node_type),
            q,
            page: positive("page", self.page.as_deref())?.unwrap_or(1),
            per_page: positive("per_page", self.per_page.as_deref())?.unwrap_or(DEFAULT_PER_PAGE),
        })
    }
}

fn positive(name: &'static str, value: Option<&str>) -> Result<Option<usize>, ApiError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::Query { name, reason: format!("{raw:?} is not a whole number of at least 1") }),
        },
    }
}

async fn status(State(state): State<ApiState>, query: Result<Query<StatusQuery>, QueryRejection>) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let filter = query.filter()?;
    let catalog = state.store.catalog();
    let streams = state.registry.list();
    let bundles = catalog.iter().map(|(node_type, stored)| Bundle {
        node_type: node_type.as_str(),
        version: &stored.version,
        counts: crate::bundle::counts(stored),
    });
    // The summary borrows the list and the catalog: serialise it here.
    let body = serde_json::to_vec(&summary::summarize(bundles, &streams, &filter))
        .map_err(|e| ApiError::Internal(format!("cannot serialise the status: {e}")))?;
    Ok(([(CONTENT_TYPE, "application/json"), (CACHE_CONTROL, "no-store")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> StatusQuery {
        let text = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let uri: axum::http::Uri = format!("/status?{text}").parse().expect("test URI");
        Query::<StatusQuery>::try_from_uri(&uri).expect("query parses").0
    }

    #[test]
    fn empty_fields_filter_nothing_and_numbers_default() {
        let filter = query(&[("node_type", ""), ("q", ""), ("page", ""), ("per_page", "")]).filter().expect("valid");
        assert_eq!(filter, Filter::default());
        let filter = query(&[("node_type", "sidecar"), ("q", "app%201"), ("page", "3"), ("per_page", "500")]).filter().expect("valid");
        assert_eq!(filter, Filter { node_type: Some("sidecar".into()), q: Some("app 1".into()), page: 3, per_page: 500 });
    }

    #[test]
    fn bad_numbers_and_long_queries_are_refused_naming_the_parameter() {
        for (name, value) in [("page", "0"), ("page", "-1"), ("per_page", "ten"), ("per_page", "1.5")] {
            match query(&[(name, value)]).filter() {
                Err(ApiError::Query { name: refused, .. }) => assert_eq!(refused, name, "{name}={value}"),
                other => panic!("{name}={value}: expected a query error, got {other:?}"),
            }
        }
        let long = "a".repeat(MAX_QUERY_LEN + 1);
        assert!(matches!(query(&[("q", &long)]).filter(), Err(ApiError::Query { name: "q", .. })));
        assert!(query(&[("q", &long[1..])]).filter().is_ok());
    }

    #[test]
    fn every_asset_carries_the_policy_and_the_page_loads_nothing_inline() {
        for (path, body) in [("/", INDEX_HTML), ("/ui/app.js", APP_JS), ("/ui/style.css", STYLE_CSS)] {
            let response = asset("text/plain", body);
            assert_eq!(response.headers()[CONTENT_SECURITY_POLICY], CSP, "{path}");
            assert_eq!(response.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        }
        // The policy forbids inline code; the page must not rely on any.
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("<style") && !INDEX_HTML.contains("style="));
        assert!(INDEX_HTML.contains(r#"<script src="/ui/app.js""#) && INDEX_HTML.contains(r#"href="/ui/style.css""#));
        // Data goes in as text, never as markup.
        assert!(!APP_JS.contains("innerHTML") && !APP_JS.contains("outerHTML") && !APP_JS.contains("insertAdjacentHTML"));
    }
}

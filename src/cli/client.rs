//! The REST client behind the subcommands: one call per endpoint, the bearer
//! token on writes, a private CA for https, and every error answer turned
//! into `<error> (at <path>)`.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};
use sxds::{bundle::Format, node_type::NodeType};

use super::{with_path, Failure, Remote};

/// A connection that cannot be made within this is reported, not waited on.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole request, a large bundle's PUT included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Client {
    pub fn new(remote: &Remote) -> Result<Self, Failure> {
        let base = Url::parse(&remote.server).map_err(|e| Failure::Usage(format!("--server {:?} is not a URL: {e}", remote.server)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Failure::Usage(format!("--server {:?} is not an http:// or https:// URL", remote.server)));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("sxds-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &remote.cacert {
            let pem = std::fs::read(path).map_err(|e| Failure::Usage(format!("cannot read --cacert {}: {e}", path.display())))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Failure::Usage(format!("--cacert {}: not a PEM certificate: {e}", path.display())))?;
            if certificates.is_empty() {
                return Err(Failure::Usage(format!("--cacert {}: no PEM certificate in it", path.display())));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().map_err(|e| Failure::Usage(format!("cannot set up the HTTP client: {}", chain(&e))))?;
        let token = remote.token.clone().filter(|token| !token.is_empty());
        Ok(Self { http, base, token })
    }

    /// `PUT /resources/{t}`: the server's summary.
    pub async fn put(&self, node_type: &str, body: Vec<u8>, format: Format, allow_empty: bool) -> Result<Value, Failure> {
        let query: &[(&str, &str)] = if allow_empty { &[("allow_empty", "true")] } else { &[] };
        self.put_with(node_type, body, format, query).await
    }

    /// `PUT /resources/{t}?dry_run=true`: what the PUT would change; nothing is stored.
    pub async fn dry_run(&self, node_type: &str, body: Vec<u8>, format: Format) -> Result<Value, Failure> {
        self.put_with(node_type, body, format, &[("dry_run", "true"), ("allow_empty", "true")]).await
    }

    /// `PUT /resources/{t}?canary=GLOB[&wait=W]`: the rollout started.
    pub async fn canary(&self, node_type: &str, body: Vec<u8>, format: Format, glob: &str, wait: Option<&str>) -> Result<Value, Failure> {
        let mut query = vec![("canary", glob)];
        query.extend(wait.map(|wait| ("wait", wait)));
        self.put_with(node_type, body, format, &query).await
    }

    /// `GET /resources/{t}/rollout`.
    pub async fn rollout(&self, node_type: &str) -> Result<Value, Failure> {
        let url = self.url(&["resources", checked(node_type)?, "rollout"])?;
        json_of(self.send(self.http.get(url)).await?)
    }

    /// `POST /resources/{t}/rollout/retry`.
    pub async fn retry_rollout(&self, node_type: &str) -> Result<Value, Failure> {
        let url = self.url(&["resources", checked(node_type)?, "rollout", "retry"])?;
        json_of(self.send(self.http.post(url)).await?)
    }

    /// `DELETE /resources/{t}/rollout`.
    pub async fn abandon_rollout(&self, node_type: &str) -> Result<Value, Failure> {
        let url = self.url(&["resources", checked(node_type)?, "rollout"])?;
        json_of(self.send(self.http.delete(url)).await?)
    }

    async fn put_with(&self, node_type: &str, body: Vec<u8>, format: Format, query: &[(&str, &str)]) -> Result<Value, Failure> {
        let mut url = self.url(&["resources", checked(node_type)?])?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let content_type = match format {
            Format::Json => "application/json",
            Format::Yaml => "application/yaml",
        };
        let request = self.http.put(url).header(reqwest::header::CONTENT_TYPE, content_type).body(body);
        json_of(self.send(request).await?)
    }

    /// `GET /resources/{t}`: the bundle JSON as the server prints it, `None` when there is none.
    pub async fn get(&self, node_type: &str) -> Result<Option<Bytes>, Failure> {
        let url = self.url(&["resources", checked(node_type)?])?;
        let (status, body) = self.exchange(self.http.get(url)).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            _ => answer(status, body).map(Some),
        }
    }

    /// `GET /resources/{t}/versions/{v}`: an earlier version's bundle JSON.
    pub async fn get_version(&self, node_type: &str, version: &str) -> Result<Bytes, Failure> {
        let url = self.url(&["resources", checked(node_type)?, "versions", version])?;
        self.send(self.http.get(url)).await
    }

    /// `DELETE /resources/{t}`.
    pub async fn delete(&self, node_type: &str) -> Result<Value, Failure> {
        let url = self.url(&["resources", checked(node_type)?])?;
        json_of(self.send(self.http.delete(url)).await?)
    }

    /// `GET /resources`.
    pub async fn list(&self) -> Result<Value, Failure> {
        let url = self.url(&["resources"])?;
        json_of(self.send(self.http.get(url)).await?)
    }

    /// `GET /nodes`.
    pub async fn nodes(&self) -> Result<Value, Failure> {
        let url = self.url(&["nodes"])?;
        json_of(self.send(self.http.get(url)).await?)
    }

    /// `GET /resources/{t}/history`.
    pub async fn history(&self, node_type: &str) -> Result<Value, Failure> {
        let url = self.url(&["resources", checked(node_type)?, "history"])?;
        json_of(self.send(self.http.get(url)).await?)
    }

    /// `POST /resources/{t}/rollback`.
    pub async fn rollback(&self, node_type: &str, version: &str) -> Result<Value, Failure> {
        let url = self.url(&["resources", checked(node_type)?, "rollback"])?;
        json_of(self.send(self.http.post(url).json(&json!({ "version": version }))).await?)
    }

    /// The base URL with `segments` appended, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<Url, Failure> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Failure::Usage(format!("--server {} cannot take a path", self.base)))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends a request; a success's body, or the server's error as a failure.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Bytes, Failure> {
        let (status, body) = self.exchange(request).await?;
        answer(status, body)
    }

    /// Sends a request with the token, when there is one: the server asks
    /// for it on writes, and a read does not mind it.
    async fn exchange(&self, request: reqwest::RequestBuilder) -> Result<(StatusCode, Bytes), Failure> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let unreachable = |e: reqwest::Error| {
            Failure::Refused(if e.is_timeout() {
                format!("the sxds server at {} did not answer in time", self.base)
            } else if e.is_connect() {
                // The innermost cause says it: refused, no such host, an untrusted certificate.
                format!("cannot reach the sxds server at {}: {}", self.base, root_cause(&e))
            } else {
                format!("the request to the sxds server at {} failed: {}", self.base, chain(&e))
            })
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        Ok((status, body))
    }
}

/// A node type is checked here, so a typo is a usage error and never a
/// different path on the server.
fn checked(node_type: &str) -> Result<&str, Failure> {
    NodeType::parse(node_type).map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(node_type)
}

/// A success's body, or the server's `{"error", "path"}` as a refusal.
fn answer(status: StatusCode, body: Bytes) -> Result<Bytes, Failure> {
    if status.is_success() {
        return Ok(body);
    }
    let error: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut message = match error["error"].as_str() {
        Some(message) => with_path(message, error["path"].as_str()),
        None => {
            let text = String::from_utf8_lossy(&body);
            format!("the server answered {status}: {}", text.lines().next().unwrap_or_default())
        }
    };
    if status == StatusCode::UNAUTHORIZED {
        message.push_str(" (give the server's token with --token or SXDS_TOKEN)");
    }
    Err(Failure::Refused(message))
}

fn json_of(body: Bytes) -> Result<Value, Failure> {
    serde_json::from_slice(&body).map_err(|e| Failure::Refused(format!("the server's answer is not JSON: {e}")))
}

fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// An error with its causes, which say what actually failed (refused, DNS, certificate).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_print_with_their_path_and_401_says_how_to_authenticate() {
        let body = Bytes::from_static(br#"{"error":"unrecognized field name 'x'","path":"clusters[0].x"}"#);
        let Err(Failure::Refused(message)) = answer(StatusCode::BAD_REQUEST, body) else { panic!("refused") };
        assert_eq!(message, "unrecognized field name 'x' (at clusters[0].x)");
        let Err(Failure::Refused(message)) = answer(StatusCode::UNAUTHORIZED, Bytes::from_static(br#"{"error":"no token"}"#)) else {
            panic!("refused")
        };
        assert!(message.starts_with("no token (") && message.contains("--token"), "{message}");
        let Err(Failure::Refused(message)) = answer(StatusCode::BAD_GATEWAY, Bytes::from_static(b"<html>bad gateway</html>")) else {
            panic!("refused")
        };
        assert!(message.contains("502") && message.contains("bad gateway"), "{message}");
    }

    #[test]
    fn paths_are_percent_encoded_segments_of_the_base() {
        let remote = Remote { server: "https://sxds.example:8443/api/".into(), token: None, cacert: None };
        let client = Client::new(&remote).unwrap();
        let url = client.url(&["resources", "sidecar", "versions", "release 1/2"]).unwrap();
        assert_eq!(url.as_str(), "https://sxds.example:8443/api/resources/sidecar/versions/release%201%2F2");
        assert!(matches!(checked("side-car"), Err(Failure::Usage(_))));
        let bad = Remote { server: "ftp://x".into(), token: None, cacert: None };
        assert!(matches!(Client::new(&bad), Err(Failure::Usage(_))));
    }
}

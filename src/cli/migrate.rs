//! `sxds migrate`: a Go sxds bundle (Envoy v2 resources) rewritten as v3,
//! offline. Two passes over the JSON:
//!
//! 1. Structural rules, by where a value sits: filters' untyped `config`
//!    becomes `typed_config` with the v3 `@type`, v2 filter names and
//!    `@type` URLs their v3 ones, and v2 fields that moved (cluster `hosts`,
//!    `tls_context`, HTTP protocol options, listener `use_original_dst`, HCM
//!    `idle_timeout`, route `host_rewrite`) move.
//! 2. A walk along the v3 schema: config sources get `resource_api_version`
//!    and API config sources `transport_api_version` V3, lower-case v2 enum
//!    spellings (`"auto"`) become the proto names, and every field or
//!    `@type` that has no v3 meaning is listed as not converted.
//!
//! The result must then pass `bundle::accept`, the server's own checks.

use prost_reflect::{Kind, MessageDescriptor};
use serde_json::{json, Map, Value};
use sxds::{
    bundle::{self, Format},
    schema,
};

use super::{with_path, Failure};

const TYPE_PREFIX: &str = "type.googleapis.com/";
const TLS: &str = "envoy.extensions.transport_sockets.tls.v3";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Where a filter-like object sits decides which table names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FilterKind {
    Network,
    Http,
    Listener,
    AccessLog,
}

/// v2 names (and the v3 names, which may still carry a v2 `config`), the v3
/// name, and the v3 type of the filter's config.
const FILTERS: &[(FilterKind, &str, &str, &str)] = &[
    (FilterKind::Network, "envoy.http_connection_manager", "envoy.filters.network.http_connection_manager", "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
    (FilterKind::Network, "envoy.tcp_proxy", "envoy.filters.network.tcp_proxy", "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"),
    (FilterKind::Network, "envoy.ratelimit", "envoy.filters.network.ratelimit", "envoy.extensions.filters.network.ratelimit.v3.RateLimit"),
    (FilterKind::Network, "envoy.redis_proxy", "envoy.filters.network.redis_proxy", "envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"),
    (FilterKind::Network, "envoy.mongo_proxy", "envoy.filters.network.mongo_proxy", "envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy"),
    (FilterKind::Network, "envoy.echo", "envoy.filters.network.echo", "envoy.extensions.filters.network.echo.v3.Echo"),
    (FilterKind::Network, "envoy.ext_authz", "envoy.filters.network.ext_authz", "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"),
    (FilterKind::Network, "envoy.client_ssl_auth", "envoy.filters.network.client_ssl_auth", "envoy.extensions.filters.network.client_ssl_auth.v3.ClientSSLAuth"),
    (FilterKind::Http, "envoy.router", "envoy.filters.http.router", "envoy.extensions.filters.http.router.v3.Router"),
    (FilterKind::Http, "envoy.cors", "envoy.filters.http.cors", "envoy.extensions.filters.http.cors.v3.Cors"),
    (FilterKind::Http, "envoy.fault", "envoy.filters.http.fault", "envoy.extensions.filters.http.fault.v3.HTTPFault"),
    (FilterKind::Http, "envoy.lua", "envoy.filters.http.lua", "envoy.extensions.filters.http.lua.v3.Lua"),
    (FilterKind::Http, "envoy.health_check", "envoy.filters.http.health_check", "envoy.extensions.filters.http.health_check.v3.HealthCheck"),
    (FilterKind::Http, "envoy.grpc_web", "envoy.filters.http.grpc_web", "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"),
    (FilterKind::Http, "envoy.grpc_json_transcoder", "envoy.filters.http.grpc_json_transcoder", "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"),
    (FilterKind::Http, "envoy.ext_authz", "envoy.filters.http.ext_authz", "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"),
    (FilterKind::Http, "envoy.rate_limit", "envoy.filters.http.ratelimit", "envoy.extensions.filters.http.ratelimit.v3.RateLimit"),
    (FilterKind::Http, "envoy.buffer", "envoy.filters.http.buffer", "envoy.extensions.filters.http.buffer.v3.Buffer"),
    (FilterKind::Http, "envoy.gzip", "envoy.filters.http.gzip", "envoy.extensions.filters.http.gzip.v3.Gzip"),
    (FilterKind::Listener, "envoy.listener.tls_inspector", "envoy.filters.listener.tls_inspector", "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"),
    (FilterKind::Listener, "envoy.listener.original_dst", "envoy.filters.listener.original_dst", "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"),
    (FilterKind::Listener, "envoy.listener.original_src", "envoy.filters.listener.original_src", "envoy.extensions.filters.listener.original_src.v3.OriginalSrc"),
    (FilterKind::Listener, "envoy.listener.http_inspector", "envoy.filters.listener.http_inspector", "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"),
    (FilterKind::Listener, "envoy.listener.proxy_protocol", "envoy.filters.listener.proxy_protocol", "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"),
    (FilterKind::AccessLog, "envoy.file_access_log", "envoy.access_loggers.file", "envoy.extensions.access_loggers.file.v3.FileAccessLog"),
    (FilterKind::AccessLog, "envoy.http_grpc_access_log", "envoy.access_loggers.http_grpc", "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"),
    (FilterKind::AccessLog, "envoy.tcp_grpc_access_log", "envoy.access_loggers.tcp_grpc", "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"),
];

/// v2 message names that did not move by a pattern of [`v3_type_name`].
const TYPES: &[(&str, &str)] = &[
    ("envoy.api.v2.Listener", "envoy.config.listener.v3.Listener"),
    ("envoy.api.v2.Cluster", "envoy.config.cluster.v3.Cluster"),
    ("envoy.api.v2.RouteConfiguration", "envoy.config.route.v3.RouteConfiguration"),
    ("envoy.api.v2.ClusterLoadAssignment", "envoy.config.endpoint.v3.ClusterLoadAssignment"),
    ("envoy.api.v2.ScopedRouteConfiguration", "envoy.config.route.v3.ScopedRouteConfiguration"),
    ("envoy.config.accesslog.v2.FileAccessLog", "envoy.extensions.access_loggers.file.v3.FileAccessLog"),
    ("envoy.config.accesslog.v2.HttpGrpcAccessLogConfig", "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"),
    ("envoy.config.accesslog.v2.TcpGrpcAccessLogConfig", "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"),
];

/// What the conversion did, and what it could not do.
#[derive(Debug, Default)]
pub struct Report {
    /// `path: what changed`, one per change.
    pub changes: Vec<String>,
    /// `path: why`, one per thing left as it was.
    pub problems: Vec<String>,
}

impl Report {
    fn change(&mut self, path: &str, what: impl std::fmt::Display) {
        self.changes.push(format!("{path}: {what}"));
    }

    fn problem(&mut self, path: &str, why: impl std::fmt::Display) {
        self.problems.push(format!("{path}: {why}"));
    }

    /// A problem unless the first pass already reported one at `path`.
    fn problem_once(&mut self, path: &str, why: impl std::fmt::Display) {
        let prefix = format!("{path}:");
        if !self.problems.iter().any(|problem| problem.starts_with(&prefix)) {
            self.problem(path, why);
        }
    }
}

/// Converts the bundle in `body`, prints each change on stderr, and answers
/// the v3 bundle as pretty JSON once `bundle::accept` takes it.
pub fn run(body: &[u8], format: Format) -> Result<String, Failure> {
    let mut bundle: Value = match format {
        Format::Json => serde_json::from_slice(body).map_err(|e| Failure::Refused(format!("malformed JSON: {e}")))?,
        Format::Yaml => serde_yaml_ng::from_slice(body).map_err(|e| Failure::Refused(format!("malformed YAML: {e}")))?,
    };
    let mut report = convert(&mut bundle);
    // Grouped by resource, in the order each pass made them.
    report.changes.sort_by_key(|change| {
        let resource = change.split(['.', ':']).next().unwrap_or_default();
        let (key, index) = resource.split_once('[').unwrap_or((resource, ""));
        (key.to_owned(), index.trim_end_matches(']').parse::<usize>().unwrap_or(0))
    });
    for change in &report.changes {
        eprintln!("migrate: {change}");
    }
    let mut out = serde_json::to_string_pretty(&bundle).map_err(|e| Failure::Refused(format!("cannot print the bundle: {e}")))?;
    out.push('\n');
    let refused = bundle::accept(out.as_bytes(), Format::Json).err();
    if report.problems.is_empty() && refused.is_none() {
        return Ok(out);
    }
    let mut message = format!("{} thing(s) could not be converted:", report.problems.len() + usize::from(refused.is_some() && report.problems.is_empty()));
    for problem in &report.problems {
        message.push_str(&format!("\n  {problem}"));
    }
    if let Some(error) = refused.filter(|_| report.problems.is_empty()) {
        message.push_str(&format!("\n  the converted bundle is refused: {}", with_path(&error.message, error.path.as_deref())));
    }
    Err(Failure::Refused(message))
}

/// Rewrites a v2 bundle as v3 in place.
pub fn convert(bundle: &mut Value) -> Report {
    let mut report = Report::default();
    let Some(fields) = bundle.as_object_mut() else {
        report.problem("(bundle)", "a bundle is a JSON object");
        return report;
    };
    for (key, rule) in [("listeners", listener as fn(&mut Map<String, Value>, &str, &mut Report)), ("clusters", cluster)] {
        for (i, item) in fields.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten().enumerate() {
            if let Some(object) = item.as_object_mut() {
                rule(object, &format!("{key}[{i}]"), &mut report);
            }
        }
    }
    structural(bundle, "", None, &mut report);
    along_schema(bundle, &schema::bundle_descriptor(), "", &mut report);
    report
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Listener fields of v2 that moved.
fn listener(listener: &mut Map<String, Value>, path: &str, report: &mut Report) {
    if let Some(original_dst) = listener.remove("use_original_dst") {
        if original_dst.as_bool() == Some(true) {
            let filter = json!({"name": "envoy.filters.listener.original_dst",
                                "typed_config": {"@type": type_url("envoy.extensions.filters.listener.original_dst.v3.OriginalDst")}});
            push(listener, "listener_filters", filter);
            report.change(path, "use_original_dst -> listener_filters: envoy.filters.listener.original_dst");
        } else {
            report.change(path, "use_original_dst: false dropped (it is the default)");
        }
    }
    for (i, chain) in listener.get_mut("filter_chains").and_then(Value::as_array_mut).into_iter().flatten().enumerate() {
        if let Some(chain) = chain.as_object_mut() {
            tls_context(chain, &format!("{path}.filter_chains[{i}]"), "DownstreamTlsContext", report);
        }
    }
}

/// Cluster fields of v2 that moved.
fn cluster(cluster: &mut Map<String, Value>, path: &str, report: &mut Report) {
    if let Some(hosts) = cluster.remove("hosts") {
        if cluster.contains_key("load_assignment") {
            report.problem(&join(path, "hosts"), "both hosts and load_assignment are given; merge them by hand");
            cluster.insert("hosts".into(), hosts);
        } else {
            let name = cluster.get("name").cloned().unwrap_or(Value::Null);
            let endpoints: Vec<Value> = hosts.as_array().into_iter().flatten().map(|address| json!({"endpoint": {"address": address}})).collect();
            cluster.insert("load_assignment".into(), json!({"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}));
            report.change(path, "hosts -> load_assignment");
        }
    }
    tls_context(cluster, path, "UpstreamTlsContext", report);
    if cluster.get("lb_policy").and_then(Value::as_str) == Some("ORIGINAL_DST_LB") {
        cluster.insert("lb_policy".into(), "CLUSTER_PROVIDED".into());
        report.change(path, "lb_policy ORIGINAL_DST_LB -> CLUSTER_PROVIDED");
    }
    // The HTTP protocol options moved into one typed extension option.
    let mut explicit = Map::new();
    let mut options = Map::new();
    for (old, new) in [("http2_protocol_options", "http2_protocol_options"), ("http_protocol_options", "http_protocol_options")] {
        if let Some(value) = cluster.remove(old) {
            explicit.insert(new.into(), value);
            report.change(path, format_args!("{old} -> typed_extension_protocol_options {HTTP_PROTOCOL_OPTIONS}"));
        }
    }
    if let Some(common) = cluster.remove("common_http_protocol_options") {
        options.insert("common_http_protocol_options".into(), common);
        report.change(path, format_args!("common_http_protocol_options -> typed_extension_protocol_options {HTTP_PROTOCOL_OPTIONS}"));
    }
    if explicit.is_empty() && options.is_empty() {
        return;
    }
    options.insert("@type".into(), type_url(HTTP_PROTOCOL_OPTIONS).into());
    // Without explicit options v2 spoke HTTP/1.1 upstream; v3 says so.
    let http = if explicit.is_empty() { json!({"http_protocol_options": {}}) } else { Value::Object(explicit) };
    options.insert("explicit_http_config".into(), http);
    let typed = cluster.entry("typed_extension_protocol_options").or_insert_with(|| json!({}));
    match typed.as_object_mut() {
        Some(typed) if !typed.contains_key(HTTP_PROTOCOL_OPTIONS) => {
            typed.insert(HTTP_PROTOCOL_OPTIONS.into(), Value::Object(options));
        }
        _ => report.problem(&join(path, "typed_extension_protocol_options"), "already sets HTTP protocol options; merge the v2 ones by hand"),
    }
}

/// v2 `tls_context` (a cluster's or a filter chain's) becomes a TLS `transport_socket`.
fn tls_context(object: &mut Map<String, Value>, path: &str, message: &str, report: &mut Report) {
    let Some(Value::Object(mut context)) = object.remove("tls_context") else { return };
    if object.contains_key("transport_socket") {
        report.problem(&join(path, "tls_context"), "both tls_context and transport_socket are given; keep one");
        object.insert("tls_context".into(), Value::Object(context));
        return;
    }
    context.insert("@type".into(), type_url(&format!("{TLS}.{message}")).into());
    object.insert("transport_socket".into(), json!({"name": "envoy.transport_sockets.tls", "typed_config": context}));
    report.change(path, format_args!("tls_context -> transport_socket envoy.transport_sockets.tls ({message})"));
}

fn push(object: &mut Map<String, Value>, key: &str, item: Value) {
    match object.entry(key).or_insert_with(|| json!([])) {
        Value::Array(items) => items.push(item),
        other => *other = json!([item]),
    }
}

fn type_url(name: &str) -> String {
    format!("{TYPE_PREFIX}{name}")
}

/// The v3 name of a v2 message, when it follows one of the v2 → v3 moves.
fn v3_type_name(v2: &str) -> Option<String> {
    if let Some((_, v3)) = TYPES.iter().find(|(old, _)| *old == v2) {
        return Some((*v3).to_owned());
    }
    let (package, message) = v2.rsplit_once('.')?;
    let moved = |from: &str, to: &str| package.strip_prefix(from).filter(|rest| rest.is_empty()).map(|_| format!("{to}.{message}"));
    let from_api = [
        ("envoy.api.v2.core", "envoy.config.core.v3"),
        ("envoy.api.v2.route", "envoy.config.route.v3"),
        ("envoy.api.v2.listener", "envoy.config.listener.v3"),
        ("envoy.api.v2.endpoint", "envoy.config.endpoint.v3"),
        ("envoy.api.v2.cluster", "envoy.config.cluster.v3"),
        ("envoy.api.v2.auth", TLS),
        ("envoy.config.filter.accesslog.v2", "envoy.config.accesslog.v3"),
    ];
    if let Some(name) = from_api.iter().find_map(|(from, to)| moved(from, to)) {
        return Some(name);
    }
    // envoy.config.filter.<kind>.<name>.v2[alpha] -> envoy.extensions.filters.<kind>.<name>.v3
    let rest = package.strip_prefix("envoy.config.filter.")?;
    let base = rest.strip_suffix(".v2").or_else(|| rest.strip_suffix(".v2alpha"))?;
    Some(format!("envoy.extensions.filters.{base}.v3.{message}"))
}

/// Rule 1 over the whole tree: filters, `@type` URLs, and fields that moved
/// inside filter configs. `list` is the key of the array `value` is in.
fn structural(value: &mut Value, path: &str, list: Option<&str>, report: &mut Report) {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                structural(item, &format!("{path}[{i}]"), list, report);
            }
        }
        Value::Object(object) => {
            let kind = match list {
                Some("filters") => Some(FilterKind::Network),
                Some("http_filters") => Some(FilterKind::Http),
                Some("listener_filters") => Some(FilterKind::Listener),
                Some("access_log") => Some(FilterKind::AccessLog),
                _ => None,
            };
            if let Some(kind) = kind {
                filter(object, path, kind, report);
            }
            if let Some(Value::String(url)) = object.get_mut("@type") {
                type_url_v3(url, &join(path, "@type"), report);
            }
            moved_fields(object, path, report);
            for (key, child) in object.iter_mut() {
                let list = if child.is_array() { Some(key.as_str()) } else { None };
                structural(child, &join(path, key), list, report);
            }
        }
        _ => {}
    }
}

/// A filter's v2 name and untyped `config`.
fn filter(filter: &mut Map<String, Value>, path: &str, kind: FilterKind, report: &mut Report) {
    let name = filter.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let known = FILTERS.iter().find(|(k, old, new, _)| *k == kind && (*old == name || *new == name));
    if let Some((_, old, new, _)) = known {
        if *old == name {
            filter.insert("name".into(), (*new).into());
            report.change(path, format_args!("filter {old} -> {new}"));
        }
    }
    let Some(config) = filter.remove("config") else { return };
    let Some((_, _, _, message)) = known else {
        report.problem(&join(path, "config"), format_args!("no known v3 type for filter {name:?}; write typed_config with its @type"));
        filter.insert("config".into(), config);
        return;
    };
    if schema::pool().get_message_by_name(message).is_none() {
        report.problem(&join(path, "config"), format_args!("{message} is not in Envoy v3 any more; replace filter {name:?}"));
        filter.insert("config".into(), config);
        return;
    }
    let mut typed = match config {
        Value::Object(fields) => fields,
        Value::Null => Map::new(),
        other => {
            report.problem(&join(path, "config"), "config is not an object");
            filter.insert("config".into(), other);
            return;
        }
    };
    typed.insert("@type".into(), type_url(message).into());
    filter.insert("typed_config".into(), Value::Object(typed));
    report.change(path, format_args!("config -> typed_config ({message})"));
}

/// A v2 `@type` URL becomes its v3 one, when the v3 pool has it.
fn type_url_v3(url: &mut String, path: &str, report: &mut Report) {
    let (prefix, name) = url.rsplit_once('/').map_or(("", url.as_str()), |(prefix, name)| (prefix, name));
    if schema::pool().get_message_by_name(name).is_some() {
        return;
    }
    match v3_type_name(name).filter(|v3| schema::pool().get_message_by_name(v3).is_some()) {
        Some(v3) => {
            let prefix = if prefix.is_empty() { TYPE_PREFIX.trim_end_matches('/') } else { prefix };
            let new = format!("{prefix}/{v3}");
            report.change(path, format_args!("{name} -> {v3}"));
            *url = new;
        }
        None => report.problem(path, format_args!("no v3 type for {name}")),
    }
}

/// Fields that moved inside messages, found by their v3 `@type` or shape.
fn moved_fields(object: &mut Map<String, Value>, path: &str, report: &mut Report) {
    let ty = object.get("@type").and_then(Value::as_str).and_then(|url| url.rsplit('/').next()).unwrap_or_default().to_owned();
    if ty == "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" {
        if let Some(idle) = object.remove("idle_timeout") {
            let common = object.entry("common_http_protocol_options").or_insert_with(|| json!({}));
            if let Some(common) = common.as_object_mut() {
                common.insert("idle_timeout".into(), idle);
                report.change(path, "idle_timeout -> common_http_protocol_options.idle_timeout");
            }
        }
    }
    if ty == "envoy.extensions.access_loggers.file.v3.FileAccessLog" {
        if let Some(Value::String(format)) = object.remove("format") {
            object.insert("log_format".into(), json!({"text_format_source": {"inline_string": format}}));
            report.change(path, "format -> log_format.text_format_source.inline_string");
        }
    }
    // RouteAction: `host_rewrite` was renamed; it sits beside `cluster` or its kin.
    let route_action = ["cluster", "cluster_header", "weighted_clusters"].iter().any(|key| object.contains_key(*key));
    if route_action {
        if let Some(host) = object.remove("host_rewrite") {
            object.insert("host_rewrite_literal".into(), host);
            report.change(path, "host_rewrite -> host_rewrite_literal");
        }
    }
}

/// Rule 2: walks `value` as a `message`: config sources say V3, enum
/// spellings are fixed, and what v3 does not know is reported.
fn along_schema(value: &mut Value, message: &MessageDescriptor, path: &str, report: &mut Report) {
    let name = message.full_name();
    if name == "google.protobuf.Any" {
        return any(value, path, report);
    }
    // Their JSON is not an object of fields.
    if name.starts_with("google.protobuf.") && name != "google.protobuf.Empty" {
        return;
    }
    let Some(object) = value.as_object_mut() else { return };
    let required = match name {
        "envoy.config.core.v3.ConfigSource" => Some("resource_api_version"),
        "envoy.config.core.v3.ApiConfigSource" => Some("transport_api_version"),
        _ => None,
    };
    if let Some(field) = required {
        let camel = if field == "resource_api_version" { "resourceApiVersion" } else { "transportApiVersion" };
        let current = object.get(field).or_else(|| object.get(camel)).and_then(Value::as_str);
        if current != Some("V3") {
            object.remove(camel);
            object.insert(field.into(), "V3".into());
            report.change(path, format_args!("{field}: V3"));
        }
    }
    for (key, child) in object.iter_mut() {
        let child_path = join(path, key);
        let Some(field) = message.get_field_by_name(key).or_else(|| message.get_field_by_json_name(key)) else {
            report.problem_once(&child_path, format_args!("{name} has no field {key:?} in v3"));
            continue;
        };
        let kind = if field.is_map() {
            match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            }
        } else {
            field.kind()
        };
        let mut each = |item: &mut Value, item_path: &str| match &kind {
            Kind::Message(inner) => along_schema(item, inner, item_path, report),
            Kind::Enum(values) => {
                if let Value::String(text) = item {
                    let upper = text.to_ascii_uppercase();
                    if values.get_value_by_name(text).is_none() && values.get_value_by_name(&upper).is_some() {
                        report.change(item_path, format_args!("{text:?} -> {upper:?}"));
                        *text = upper;
                    }
                }
            }
            _ => {}
        };
        match child {
            Value::Array(items) if field.is_list() => {
                for (i, item) in items.iter_mut().enumerate() {
                    each(item, &format!("{child_path}[{i}]"));
                }
            }
            Value::Object(entries) if field.is_map() => {
                for (entry_key, item) in entries.iter_mut() {
                    each(item, &join(&child_path, entry_key));
                }
            }
            item => each(item, &child_path),
        }
    }
}

/// An `Any`: its `@type` decides the message its other fields are walked as.
fn any(value: &mut Value, path: &str, report: &mut Report) {
    let Some(object) = value.as_object_mut() else { return };
    let Some(url) = object.get("@type").and_then(Value::as_str) else { return };
    let name = url.rsplit('/').next().unwrap_or_default();
    let Some(message) = schema::pool().get_message_by_name(name) else {
        report.problem_once(&join(path, "@type"), format_args!("unknown type {name}"));
        return;
    };
    if message.full_name().starts_with("google.protobuf.") {
        return;
    }
    let at_type = object.remove("@type");
    along_schema(value, &message, path, report);
    if let (Some(at_type), Some(object)) = (at_type, value.as_object_mut()) {
        object.insert("@type".into(), at_type);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

    /// A Go sxds sidecar bundle as its README taught: v2 names, untyped
    /// config, lower-case enums, hosts, tls_context, no API versions.
    fn go_bundle() -> Value {
        json!({
            "version": "1.0",
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
                "use_original_dst": true,
                "filter_chains": [{"filters": [{
                    "name": "envoy.http_connection_manager",
                    "config": {
                        "codec_type": "auto",
                        "stat_prefix": "ingress_http",
                        "idle_timeout": "60s",
                        "rds": {"route_config_name": "local_route", "config_source": {"api_config_source": {
                            "api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}}},
                        "access_log": [{"name": "envoy.file_access_log", "config": {"path": "/dev/stdout"}}],
                        "http_filters": [{"name": "envoy.router", "config": {}}]
                    }
                }]}]
            }, {
                "name": "tcp",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10001}},
                "filter_chains": [{
                    "tls_context": {"common_tls_context": {"tls_certificates": [{"certificate_chain": {"filename": "/c.pem"}, "private_key": {"filename": "/k.pem"}}]}},
                    "filters": [{"name": "envoy.tcp_proxy", "config": {"stat_prefix": "tcp", "cluster": "db"}}]
                }]
            }],
            "clusters": [{
                "name": "local_service", "type": "EDS", "connect_timeout": "0.25s", "lb_policy": "round_robin",
                "http2_protocol_options": {},
                "eds_cluster_config": {"eds_config": {"api_config_source": {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}}}
            }, {
                "name": "db", "type": "STRICT_DNS", "connect_timeout": "1s",
                "hosts": [{"socket_address": {"address": "db.internal", "port_value": 5432}}],
                "tls_context": {"sni": "db.internal"}
            }],
            "routes": [{"name": "local_route", "virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "local_service", "host_rewrite": "backend.internal"}}]}]}],
            "endpoints": [{"cluster_name": "local_service", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}]}]}]
        })
    }

    fn converted() -> (Value, Report) {
        let mut bundle = go_bundle();
        let report = convert(&mut bundle);
        (bundle, report)
    }

    #[test]
    fn filters_get_v3_names_and_typed_config() {
        let (bundle, report) = converted();
        let hcm = &bundle["listeners"][0]["filter_chains"][0]["filters"][0];
        assert_eq!(hcm["name"], "envoy.filters.network.http_connection_manager");
        assert_eq!(hcm["typed_config"]["@type"], HCM);
        assert!(hcm.get("config").is_none());
        let typed = &hcm["typed_config"];
        assert_eq!(typed["http_filters"][0], json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
        assert_eq!(typed["access_log"][0]["name"], "envoy.access_loggers.file");
        assert_eq!(typed["access_log"][0]["typed_config"]["path"], "/dev/stdout");
        let tcp = &bundle["listeners"][1]["filter_chains"][0]["filters"][0];
        assert_eq!(tcp["typed_config"]["@type"], "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy");
        assert!(report.changes.iter().any(|c| c == "listeners[0].filter_chains[0].filters[0]: filter envoy.http_connection_manager -> envoy.filters.network.http_connection_manager"), "{:#?}", report.changes);
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
    }

    #[test]
    fn moved_fields_move() {
        let (bundle, _) = converted();
        let typed = &bundle["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(typed["common_http_protocol_options"]["idle_timeout"], "60s");
        assert!(typed.get("idle_timeout").is_none());
        assert_eq!(bundle["listeners"][0]["listener_filters"][0]["name"], "envoy.filters.listener.original_dst");
        assert!(bundle["listeners"][0].get("use_original_dst").is_none());
        let chain = &bundle["listeners"][1]["filter_chains"][0];
        assert_eq!(chain["transport_socket"]["typed_config"]["@type"], format!("{TYPE_PREFIX}{TLS}.DownstreamTlsContext"));
        let db = &bundle["clusters"][1];
        assert_eq!(db["transport_socket"]["typed_config"], json!({"@type": format!("{TYPE_PREFIX}{TLS}.UpstreamTlsContext"), "sni": "db.internal"}));
        assert_eq!(db["load_assignment"]["cluster_name"], "db");
        assert_eq!(db["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"], 5432);
        let options = &bundle["clusters"][0]["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS];
        assert_eq!(options["explicit_http_config"], json!({"http2_protocol_options": {}}));
        assert_eq!(bundle["routes"][0]["virtual_hosts"][0]["routes"][0]["route"]["host_rewrite_literal"], "backend.internal");
    }

    #[test]
    fn config_sources_say_v3_and_enums_take_their_proto_names() {
        let (bundle, report) = converted();
        let rds = &bundle["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["config_source"];
        assert_eq!(rds["resource_api_version"], "V3");
        assert_eq!(rds["api_config_source"]["transport_api_version"], "V3");
        let eds = &bundle["clusters"][0]["eds_cluster_config"]["eds_config"];
        assert_eq!((&eds["resource_api_version"], &eds["api_config_source"]["transport_api_version"]), (&json!("V3"), &json!("V3")));
        assert_eq!(bundle["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["codec_type"], "AUTO");
        assert_eq!(bundle["clusters"][0]["lb_policy"], "ROUND_ROBIN");
        assert!(report.changes.iter().any(|c| c == "clusters[0].lb_policy: \"round_robin\" -> \"ROUND_ROBIN\""), "{:#?}", report.changes);
    }

    #[test]
    fn the_result_passes_the_servers_checks() {
        let out = run(go_bundle().to_string().as_bytes(), Format::Json).expect("converts");
        let stored = bundle::accept(out.as_bytes(), Format::Json).expect("accepted");
        assert_eq!(stored.version, "1.0");
    }

    #[test]
    fn v2_type_urls_map_to_v3() {
        assert_eq!(v3_type_name("envoy.api.v2.Cluster").as_deref(), Some("envoy.config.cluster.v3.Cluster"));
        assert_eq!(v3_type_name("envoy.api.v2.core.Address").as_deref(), Some("envoy.config.core.v3.Address"));
        assert_eq!(v3_type_name("envoy.api.v2.auth.UpstreamTlsContext").as_deref(), Some(format!("{TLS}.UpstreamTlsContext").as_str()));
        assert_eq!(
            v3_type_name("envoy.config.filter.network.http_connection_manager.v2.HttpConnectionManager").as_deref(),
            Some("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")
        );
        assert_eq!(v3_type_name("envoy.config.filter.http.ext_authz.v2alpha.ExtAuthz").as_deref(), Some("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"));
        let mut bundle = json!({"listeners": [{"name": "l", "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
            "typed_config": {"@type": "type.googleapis.com/envoy.config.filter.network.http_connection_manager.v2.HttpConnectionManager", "stat_prefix": "s"}}]}]}]});
        let report = convert(&mut bundle);
        assert_eq!(bundle["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["@type"], HCM);
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
    }

    #[test]
    fn what_cannot_be_converted_is_listed_with_its_path() {
        let mut bundle = json!({"clusters": [{"name": "c", "connect_timeout": "1s", "extension_protocol_options": {"x": {}}}],
            "listeners": [{"name": "l", "filter_chains": [{"filters": [{"name": "acme.custom", "config": {"a": 1}}]}]}]});
        let report = convert(&mut bundle);
        assert!(report.problems.iter().any(|p| p.starts_with("clusters[0].extension_protocol_options: ")), "{:#?}", report.problems);
        assert!(report.problems.iter().any(|p| p.starts_with("listeners[0].filter_chains[0].filters[0].config: no known v3 type for filter \"acme.custom\"")), "{:#?}", report.problems);
        assert_eq!(report.problems.len(), 2, "each once: {:#?}", report.problems);
        let Err(Failure::Refused(message)) = run(bundle.to_string().as_bytes(), Format::Json) else { panic!("refused") };
        assert!(message.contains("could not be converted") && message.contains("acme.custom"), "{message}");
    }
}

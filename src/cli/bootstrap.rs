//! `sxds bootstrap`: writes the Envoy bootstrap of one Envoy: ADS to an
//! `xds_cluster` that lists every sxds replica, over HTTP/2 with keepalive.
//! In an ECS task the node id (`<node type>-<task id>`) and the locality come
//! from the task metadata endpoint v4; elsewhere from `--node-id`, `--zone`
//! and `--region`.

use std::{
    io::Write,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sxds::node_type::NodeType;

use super::{emit, Failure};

/// The metadata endpoint is the ECS agent on the task's own host: it answers
/// in milliseconds or is not there.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// It may still be starting when the first container of a task runs.
const METADATA_ATTEMPTS: u32 = 3;
const METADATA_RETRY_PAUSE: Duration = Duration::from_millis(300);

/// Where the metadata endpoint is given, for errors.
const METADATA_SOURCE: &str = "ECS_CONTAINER_METADATA_URI_V4 or --metadata-uri";

const XDS_CLUSTER: &str = "xds_cluster";

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Node type of this Envoy, e.g. `sidecar`: sxds serves it that node type's bundle.
    #[arg(long)]
    node_type: String,
    /// xDS address of each sxds replica, HOST:PORT (IPv6 as [ADDR]:PORT); a comma list, or the flag repeated.
    #[arg(long = "xds", value_name = "HOST:PORT", required = true, value_delimiter = ',', value_parser = parse_replica)]
    replicas: Vec<Replica>,
    /// Node id (default: `<node type>-<task id>` from the ECS task metadata). Must be of --node-type.
    #[arg(long)]
    node_id: Option<String>,
    /// The node's cluster (node.cluster; default: the node type).
    #[arg(long)]
    cluster: Option<String>,
    /// The node's locality zone (default: the task's availability zone).
    #[arg(long)]
    zone: Option<String>,
    /// The node's locality region (default: the region of the task's ARN).
    #[arg(long)]
    region: Option<String>,
    /// Address of Envoy's admin interface, IP:PORT.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Delta xDS (api_type DELTA_GRPC) instead of state of the world (GRPC).
    #[arg(long)]
    delta: bool,
    /// Where to write the bootstrap (`-`: stdout); a file is replaced atomically.
    #[arg(short, long, default_value = "-")]
    output: PathBuf,
    /// Base URL of the ECS task metadata endpoint v4 (ECS sets the variable in every container).
    #[arg(long, env = "ECS_CONTAINER_METADATA_URI_V4")]
    metadata_uri: Option<String>,
}

/// One sxds replica's xDS address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    host: String,
    port: u16,
}

impl Replica {
    fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }
}

/// `HOST:PORT` or `[IPv6]:PORT`.
fn parse_replica(value: &str) -> Result<Replica, String> {
    let (host, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let (ip, port) = rest.split_once("]:").ok_or("an IPv6 address is written [ADDR]:PORT")?;
            ip.parse::<Ipv6Addr>().map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
            (ip, port)
        }
        None => {
            let (host, port) = value.rsplit_once(':').ok_or("expected HOST:PORT")?;
            if host.contains(':') {
                return Err("an IPv6 address is written [ADDR]:PORT".into());
            }
            (host, port)
        }
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')) {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    let port = port.parse::<u16>().ok().filter(|port| *port != 0).ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
    Ok(Replica { host: host.to_owned(), port })
}

/// The fields of `GET ${ECS_CONTAINER_METADATA_URI_V4}/task` that sxds reads.
#[derive(Debug, Deserialize)]
struct TaskMetadata {
    #[serde(rename = "TaskARN")]
    task_arn: String,
    #[serde(rename = "AvailabilityZone")]
    availability_zone: Option<String>,
}

/// Who this Envoy is: its node id and locality.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    node_id: String,
    region: Option<String>,
    zone: Option<String>,
}

/// Runs `sxds bootstrap`.
pub async fn run(args: BootstrapArgs) -> Result<(), Failure> {
    let node_type = NodeType::parse(&args.node_type).map_err(|e| Failure::Usage(format!("--node-type: {e}")))?;
    let metadata_uri = args.metadata_uri.as_deref().filter(|uri| !uri.is_empty());
    // Flags win; the metadata is read only for what they leave open.
    let task = match (metadata_uri, args.node_id.is_none() || args.zone.is_none() || args.region.is_none()) {
        (Some(uri), true) => Some((uri, task_metadata(uri).await?)),
        _ => None,
    };
    let identity = identity(&node_type, &args, task.as_ref().map(|(uri, task)| (*uri, task)))?;
    let yaml = render(&node_type, &args, &identity)?;
    if args.output.as_os_str() == "-" {
        emit(&yaml)
    } else {
        write_atomically(&args.output, &yaml)
    }
}

/// The node id and locality from the flags, then from the task metadata.
fn identity(node_type: &NodeType, args: &BootstrapArgs, task: Option<(&str, &TaskMetadata)>) -> Result<Identity, Failure> {
    let from_task = task.map(|(uri, task)| task_identity(node_type, uri, task)).transpose()?;
    let node_id = match (&args.node_id, &from_task) {
        (Some(node_id), _) => {
            let of = NodeType::of_node_id(node_id);
            if of != *node_type {
                return Err(Failure::Usage(format!(
                    "--node-id {node_id:?} is of node type {:?}, not --node-type {:?} (a node id's type is the part before its first '-')",
                    of.as_str(),
                    node_type.as_str()
                )));
            }
            node_id.clone()
        }
        (None, Some(task)) => task.node_id.clone(),
        (None, None) => {
            return Err(Failure::Usage(format!(
                "no node id: give --node-id, or run in an ECS task ({METADATA_SOURCE} names its task metadata endpoint)"
            )))
        }
    };
    let (task_region, task_zone) = from_task.map_or((None, None), |task| (task.region, task.zone));
    Ok(Identity { node_id, region: args.region.clone().or(task_region), zone: args.zone.clone().or(task_zone) })
}

/// `<node type>-<task id>`, the ARN's region and the availability zone.
fn task_identity(node_type: &NodeType, uri: &str, task: &TaskMetadata) -> Result<Identity, Failure> {
    let bad = |what: &str| Failure::Refused(format!("the ECS task metadata at {uri}/task: {what}"));
    // arn:aws:ecs:<region>:<account>:task/<cluster>/<task id> (older: task/<task id>)
    let fields: Vec<&str> = task.task_arn.splitn(6, ':').collect();
    let (region, resource) = match fields[..] {
        ["arn", _, "ecs", region, _, resource] if !region.is_empty() && resource.starts_with("task/") => (region, resource),
        _ => return Err(bad(&format!("TaskARN {:?} is not an ECS task ARN", task.task_arn))),
    };
    let task_id = resource.rsplit('/').next().unwrap_or_default();
    if task_id.is_empty() || !task_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad(&format!("TaskARN {:?} has no task id", task.task_arn)));
    }
    let zone = task.availability_zone.clone().filter(|zone| !zone.is_empty());
    Ok(Identity { node_id: format!("{node_type}-{task_id}"), region: Some(region.to_owned()), zone })
}

/// `GET <uri>/task`, a few times if the agent is not answering yet.
async fn task_metadata(uri: &str) -> Result<TaskMetadata, Failure> {
    let url = format!("{}/task", uri.trim_end_matches('/'));
    let url = reqwest::Url::parse(&url)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https"))
        .ok_or_else(|| Failure::Usage(format!("the task metadata URI {uri:?} ({METADATA_SOURCE}) is not an http:// URL")))?;
    // The endpoint is link-local to the task: a proxy set for the task's
    // outbound traffic must not carry this request.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(METADATA_TIMEOUT)
        .build()
        .map_err(|e| Failure::Usage(format!("cannot set up the HTTP client: {e}")))?;
    let refused = |why: String| Failure::Refused(format!("cannot read the ECS task metadata at {url}: {why}"));
    let mut last = String::new();
    for attempt in 1..=METADATA_ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(METADATA_RETRY_PAUSE).await;
        }
        let response = match http.get(url.clone()).send().await {
            Ok(response) => response,
            Err(e) => {
                last = transport_error(&e);
                continue;
            }
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => {
                last = transport_error(&e);
                continue;
            }
        };
        if status.is_server_error() {
            last = format!("answered {status}: {}", String::from_utf8_lossy(&body).trim());
            continue;
        }
        if !status.is_success() {
            return Err(refused(format!("answered {status}: {}", String::from_utf8_lossy(&body).trim())));
        }
        return serde_json::from_slice(&body).map_err(|e| refused(format!("not the task metadata JSON: {e}")));
    }
    Err(refused(format!("{last} ({METADATA_ATTEMPTS} attempts)")))
}

/// What went wrong on the wire, in words: reqwest's own message only says a
/// request failed, the innermost cause says why.
fn transport_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return format!("no answer within {METADATA_TIMEOUT:?}");
    }
    let mut root: &dyn std::error::Error = error;
    while let Some(cause) = root.source() {
        root = cause;
    }
    root.to_string()
}

/// The top of an Envoy v3 `Bootstrap`, in the order a reader looks for things.
#[derive(Serialize)]
struct Bootstrap {
    node: Node,
    dynamic_resources: Value,
    static_resources: StaticResources,
    admin: Value,
}

#[derive(Serialize)]
struct Node {
    id: String,
    cluster: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    locality: Option<Locality>,
}

#[derive(Serialize)]
struct Locality {
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
}

#[derive(Serialize)]
struct StaticResources {
    clusters: [XdsCluster; 1],
}

#[derive(Serialize)]
struct XdsCluster {
    name: &'static str,
    #[serde(rename = "type")]
    discovery: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_lookup_family: Option<&'static str>,
    connect_timeout: &'static str,
    typed_extension_protocol_options: Value,
    upstream_connection_options: Value,
    load_assignment: Value,
}

/// The bootstrap as YAML, with a comment saying where it came from.
fn render(node_type: &NodeType, args: &BootstrapArgs, identity: &Identity) -> Result<String, Failure> {
    let mut replicas: Vec<&Replica> = Vec::new();
    for replica in &args.replicas {
        if !replicas.contains(&replica) {
            replicas.push(replica);
        }
    }
    let all_ip = replicas.iter().all(|replica| replica.is_ip());
    let lb_endpoints: Vec<Value> = replicas
        .iter()
        .map(|r| json!({"endpoint": {"address": {"socket_address": {"address": r.host, "port_value": r.port}}}}))
        .collect();
    let locality = (identity.region.is_some() || identity.zone.is_some())
        .then(|| Locality { region: identity.region.clone(), zone: identity.zone.clone() });
    let bootstrap = Bootstrap {
        node: Node { id: identity.node_id.clone(), cluster: args.cluster.clone().unwrap_or_else(|| node_type.to_string()), locality },
        dynamic_resources: json!({
            "ads_config": {
                "api_type": if args.delta { "DELTA_GRPC" } else { "GRPC" },
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": true,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        }),
        static_resources: StaticResources {
            // Envoy holds one ADS stream to one replica; when that one goes
            // away it reconnects through the cluster to another, which serves
            // the same versions.
            clusters: [XdsCluster {
                name: XDS_CLUSTER,
                // STATIC needs no DNS at all; names need STRICT_DNS, and
                // V4_PREFERRED still resolves a name that has only AAAA records.
                discovery: if all_ip { "STATIC" } else { "STRICT_DNS" },
                dns_lookup_family: (!all_ip).then_some("V4_PREFERRED"),
                connect_timeout: "1s",
                typed_extension_protocol_options: json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        // HTTP/2 pings find a replica that vanished without
                        // closing the connection (a lost host, a dropped
                        // route) within 30 s, so Envoy moves to another.
                        "explicit_http_config": {"http2_protocol_options": {"connection_keepalive": {"interval": "20s", "timeout": "10s"}}},
                    }
                }),
                // An idle ADS stream is quiet for as long as the config does
                // not change: TCP keepalive keeps NAT and conntrack entries on
                // the way from expiring under it.
                upstream_connection_options: json!({"tcp_keepalive": {"keepalive_time": 60, "keepalive_interval": 10, "keepalive_probes": 3}}),
                load_assignment: json!({"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": lb_endpoints}]}),
            }],
        },
        admin: json!({"address": {"socket_address": {"address": args.admin.ip().to_string(), "port_value": args.admin.port()}}}),
    };
    let yaml = serde_yaml_ng::to_string(&bootstrap).map_err(|e| Failure::Refused(format!("cannot write the bootstrap as YAML: {e}")))?;
    let replicas = replicas.iter().map(|r| if r.is_ip() && r.host.contains(':') { format!("[{}]:{}", r.host, r.port) } else { format!("{}:{}", r.host, r.port) });
    let header = format!(
        "# Envoy bootstrap written by `sxds bootstrap` for node {:?}: ADS to {}.\n",
        identity.node_id,
        replicas.collect::<Vec<_>>().join(", ")
    );
    Ok(header + &yaml)
}

/// Writes `text` to a temporary file beside `path`, then renames it into
/// place: a reader (an Envoy restarting, a second run) never sees half a file.
fn write_atomically(path: &Path, text: &str) -> Result<(), Failure> {
    let cannot = |e: std::io::Error| Failure::Usage(format!("cannot write --output {}: {e}", path.display()));
    let name = path.file_name().ok_or_else(|| Failure::Usage(format!("--output {}: not a file name", path.display())))?;
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let temp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let written = std::fs::File::create(&temp).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&temp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(cannot(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(arn: &str, zone: Option<&str>) -> TaskMetadata {
        TaskMetadata { task_arn: arn.into(), availability_zone: zone.map(Into::into) }
    }

    #[test]
    fn replicas_parse_names_ipv4_and_bracketed_ipv6() {
        assert_eq!(parse_replica("sxds-1.internal:8081"), Ok(Replica { host: "sxds-1.internal".into(), port: 8081 }));
        assert_eq!(parse_replica("10.0.0.7:18000"), Ok(Replica { host: "10.0.0.7".into(), port: 18000 }));
        let v6 = parse_replica("[::1]:8081").unwrap();
        assert_eq!((v6.host.as_str(), v6.port, v6.is_ip()), ("::1", 8081, true));
        for bad in ["sxds.internal", "::1:8081", "[::1]8081", "[nope]:1", ":8081", "host:0", "host:99999", "a b:1", "http://x:1"] {
            assert!(parse_replica(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_task_id_and_region_come_from_the_task_arn() {
        let sidecar = NodeType::parse("sidecar").unwrap();
        let arn = "arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c";
        let identity = task_identity(&sidecar, "http://m", &task(arn, Some("us-west-2a"))).unwrap();
        assert_eq!(identity.node_id, "sidecar-158d1c8083dd49d6b527399fd6414f5c");
        assert_eq!((identity.region.as_deref(), identity.zone.as_deref()), (Some("us-west-2"), Some("us-west-2a")));
        // The older ARN format has no cluster name in it.
        let old = task_identity(&sidecar, "http://m", &task("arn:aws:ecs:eu-west-1:1:task/0123abcd", None)).unwrap();
        assert_eq!((old.node_id.as_str(), old.zone), ("sidecar-0123abcd", None));
        for bad in ["arn:aws:ecs:us-west-2:1:service/default/x", "arn:aws:ecs::1:task/x", "task/x", "arn:aws:ecs:r:1:task/default/"] {
            let Err(Failure::Refused(message)) = task_identity(&sidecar, "http://m", &task(bad, None)) else { panic!("{bad:?} accepted") };
            assert!(message.contains("TaskARN"), "{message}");
        }
    }
}

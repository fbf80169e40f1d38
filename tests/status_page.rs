//! The status page at `/`, in a real headless Chromium against the real
//! daemon: it shows node types with versions and counts, highlights a NACK
//! with Envoy's message, prints attacker-chosen strings as text, needs nothing
//! its Content-Security-Policy forbids, follows new versions without a
//! reload, and says when the server is gone. Also `GET /status` over HTTP.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{
    chromium::Chromium,
    sidecar_bundle,
    xds_client::{nack, request, XdsClient, CDS},
    TestDaemon,
};

/// Markup in a NACK and in node ids must come out as text.
const NACK_ERROR: &str = "cluster backend: <b>bad</b> \"config\" & <script>window.pwned = 1</script>";
const MARKUP_ID: &str = "sidecar-<i>app2</i>";
const MARKUP_NODE_TYPE: &str = "<img src=x onerror=window.pwned=2>";
/// How long the page may take to show a change: it polls every 1.5 s.
const SHOWN: Duration = Duration::from_secs(20);

/// A bundle whose cluster differs per `n`, so that CDS is sent for every version.
fn bundle(version: &str, n: u16) -> Value {
    let mut bundle = sidecar_bundle(version, 10_000, 10_001);
    bundle["clusters"][0]["connect_timeout"] = json!(format!("{n}s"));
    bundle
}

async fn put(daemon: &TestDaemon, node_type: &str, bundle: Value) {
    let (status, body) = daemon.put(node_type, bundle.to_string()).await;
    assert_eq!(status, 200, "PUT {node_type}: {body}");
}

async fn get(daemon: &TestDaemon, path: &str) -> reqwest::Response {
    reqwest::Client::builder().no_proxy().build().expect("client").get(daemon.url(path)).send().await.expect("GET")
}

/// The text of each cell of the node type's row, as a JS expression.
fn node_type_row(node_type: &str) -> String {
    format!(
        "(() => {{ const row = [...document.querySelectorAll('#node-types tbody tr')].find(r => r.dataset.nodeType === {name});
                   return row ? [...row.cells].map(c => c.textContent) : null; }})()",
        name = json!(node_type)
    )
}

/// Waits until the node type's row reads `cells` exactly.
async fn wait_for_row(tab: &mut support::chromium::Tab, node_type: &str, cells: &[&str]) {
    let expression = format!("JSON.stringify({}) === {}", node_type_row(node_type), json!(json!(cells).to_string()));
    tab.wait_until(&format!("the {node_type} row to read {cells:?}"), SHOWN, &expression).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_versions_and_a_highlighted_nack_and_follows_a_new_version_live() {
    let Some(chromium) = Chromium::launch().await else { return };
    let daemon = TestDaemon::start().await;

    // app1 ACKs v1 and NACKs v2; app2 ACKs v2. A third Envoy's whole id is markup.
    put(&daemon, "sidecar", bundle("v1", 1)).await;
    let mut app1 = XdsClient::ads(&daemon.xds_url(), request("sidecar-app1", CDS, &[])).await;
    app1.recv_acked(&[]).await;
    put(&daemon, "sidecar", bundle("v2", 2)).await;
    let v2 = app1.recv().await;
    assert_eq!(v2.version_info, "v2");
    app1.send(nack(&v2, "v1", NACK_ERROR)).await;
    let mut app2 = XdsClient::ads(&daemon.xds_url(), request(MARKUP_ID, CDS, &[])).await;
    app2.recv_acked(&[]).await;
    let _odd = XdsClient::ads(&daemon.xds_url(), request(MARKUP_NODE_TYPE, CDS, &[])).await;

    let mut tab = chromium.first_tab().await;
    // Anything the Content-Security-Policy blocks is recorded: the page must need nothing it forbids.
    tab.before_each_document(
        "window.blocked = []; document.addEventListener('securitypolicyviolation', e => window.blocked.push(e.violatedDirective + ' ' + e.blockedURI));",
    )
    .await;
    tab.navigate(&daemon.url("/")).await;
    // Survives only as long as the document: proves later changes came without a reload.
    tab.eval("window.sameDocument = 'yes'").await;

    // node type, version, listeners, clusters, routes, endpoints, streams, ACKed, pending, NACKing
    wait_for_row(&mut tab, "sidecar", &["sidecar", "v2", "1", "1", "1", "1", "2", "1", "0", "1"]).await;
    wait_for_row(&mut tab, MARKUP_NODE_TYPE, &[MARKUP_NODE_TYPE, "no bundle", "–", "–", "–", "–", "1", "0", "1", "0"]).await;

    // The NACK: Envoy's message verbatim, in an element with the highlight class.
    let nack_shown = tab
        .wait_until(
            "the NACK message",
            SHOWN,
            "(() => { const pre = [...document.querySelectorAll('#nack-list pre')];
                      return pre.length && pre.map(p => ({text: p.textContent, classes: [...p.classList], item: p.closest('li').innerText,
                                                          stands_out: getComputedStyle(p).color !== getComputedStyle(document.body).color})); })()",
        )
        .await;
    assert_eq!(nack_shown.as_array().map(Vec::len), Some(1), "one NACK: {nack_shown}");
    assert_eq!(nack_shown[0]["text"], NACK_ERROR);
    assert!(nack_shown[0]["classes"].as_array().is_some_and(|c| c.contains(&json!("nack"))), "highlighted: {nack_shown}");
    assert_eq!(nack_shown[0]["stands_out"], true, "the style sheet colours it: {nack_shown}");
    assert!(nack_shown[0]["item"].as_str().is_some_and(|t| t.contains("sidecar-app1") && t.contains("clusters") && t.contains("NACK of v2")), "{nack_shown}");
    let cell = tab
        .eval("(() => { const row = [...document.querySelectorAll('#streams tbody tr')].find(r => r.cells[0].textContent === 'sidecar-app1'); return row && {state: row.cells[4].className, clusters: row.cells[5].className, title: row.cells[5].title}; })()")
        .await;
    assert_eq!(cell, json!({"state": "nack", "clusters": "nack", "title": NACK_ERROR}), "the stream row marks the NACK");
    assert_eq!(tab.eval("document.getElementById('nacks-count').textContent").await, "1");

    // Nothing from an Envoy became markup, and none of it ran.
    let injected = tab.eval("[document.querySelectorAll('main b, main i, main img, main script').length, window.pwned ?? null]").await;
    assert_eq!(injected, json!([0, null]), "markup from Envoys stayed text");
    let text = tab.eval("document.body.innerText").await;
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains(MARKUP_ID), "the node id is shown as written:\n{text}");

    // Filtering by a part of the node id narrows the list, and clearing it brings all back.
    let streams_shown = "[...document.querySelectorAll('#streams tbody tr')].map(r => r.cells[0].textContent)";
    tab.eval("(() => { const q = document.getElementById('filter-q'); q.value = 'APP1'; q.dispatchEvent(new Event('input')); })()").await;
    tab.wait_until("the filtered list", SHOWN, &format!("JSON.stringify({streams_shown}) === '[\"sidecar-app1\"]'")).await;
    let info = tab.eval("document.getElementById('page-info').textContent").await;
    assert_eq!(info, "1–1 of 1 (3 connected) · page 1 of 1");
    tab.eval("(() => { const q = document.getElementById('filter-q'); q.value = ''; q.dispatchEvent(new Event('input')); })()").await;
    tab.wait_until("all streams again", SHOWN, &format!("{streams_shown}.length === 3")).await;

    // A new version, and a new node type, show up in the same document.
    put(&daemon, "sidecar", bundle("v3", 3)).await;
    let v3 = app2.recv_acked(&[]).await;
    assert_eq!(v3.version_info, "v3");
    put(&daemon, "gateway", bundle("g1", 1)).await;
    // app1 was sent v3 and has not answered: still NACKing (its last word), not pending.
    wait_for_row(&mut tab, "sidecar", &["sidecar", "v3", "1", "1", "1", "1", "2", "1", "0", "1"]).await;
    wait_for_row(&mut tab, "gateway", &["gateway", "g1", "1", "1", "1", "1", "0", "0", "0", "0"]).await;
    assert_eq!(tab.eval("window.sameDocument ?? 'reloaded'").await, "yes", "updated without a reload");
    assert_eq!(tab.eval("document.getElementById('health').className").await, "", "no error shown");

    // Recent writes, newest first, from GET /writes.
    tab.wait_until(
        "the writes table to list the g1 put",
        SHOWN,
        "(() => { const rows = [...document.querySelectorAll('#writes tbody tr')].map(r => r.innerText);
                  return rows.length === 4 && rows[0].includes('gateway') && rows[0].includes('∅ → g1') && rows[1].includes('v2 → v3'); })()",
    )
    .await;

    assert_eq!(tab.eval("window.blocked").await, json!([]), "nothing was blocked by the Content-Security-Policy");
    let png = tab.screenshot().await;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let (width, height) = (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert!(width >= 1000 && height >= 400, "the whole page, {width}×{height}");
    assert!(png.len() > 20_000, "a page with content, not a blank: {} bytes", png.len());

    // The contract of GET /writes, rendered (the next poll redraws it, so read it at once).
    let rendered = tab
        .eval(
            r#"(() => {
                renderWrites({ status: 200, body: { writes: [
                    { at_unix_ms: 1764590000000, who: "token <b>ci</b>", action: "rollback", node_type: "sidecar",
                      old_version: "v2", new_version: "v1", added: 1, changed: 2, removed: 3 },
                    { at_unix_ms: 1764589000000, who: "peer 127.0.0.1:5555", action: "delete", node_type: "gateway",
                      old_version: "g1", new_version: null, added: 0, changed: 0, removed: 4 } ] } });
                return [...document.querySelectorAll('#writes tbody tr')].map(r => [...r.cells].slice(1).map(c => c.textContent));
            })()"#,
        )
        .await;
    assert_eq!(
        rendered,
        json!([["token <b>ci</b>", "rollback", "sidecar", "v2 → v1", "1", "2", "3"], ["peer 127.0.0.1:5555", "delete", "gateway", "g1 → ∅", "0", "0", "4"]])
    );
    assert_eq!(tab.eval("document.querySelectorAll('#writes b').length").await, 0);
    // A server without GET /writes: a note instead of the table.
    let without = tab
        .eval("(() => { renderWrites({ status: 404, body: { error: 'no such endpoint: /writes' } }); const note = document.getElementById('writes-note');
                        return [document.getElementById('writes').hidden, note.hidden, note.textContent]; })()")
        .await;
    assert_eq!(without, json!([true, false, "This sxds keeps no write history (GET /writes answered 404)."]));

    // The server goes away: the page says its data is no longer updated.
    drop((app1, app2, _odd));
    daemon.stop().await.expect("clean stop");
    let health = tab.wait_until("the page to notice", SHOWN, "document.getElementById('health').classList.contains('error') && document.getElementById('health').textContent").await;
    assert!(health.as_str().is_some_and(|h| h.starts_with("not updated:")), "{health}");
}

#[tokio::test]
async fn status_counts_streams_per_node_type_and_pages_them() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", sidecar_bundle("v1", 10_000, 10_001)).await;
    let mut envoys = Vec::new();
    for i in 0..3 {
        let mut envoy = XdsClient::ads(&daemon.xds_url(), request(&format!("sidecar-app{i}"), CDS, &[])).await;
        envoy.recv_acked(&[]).await;
        envoys.push(envoy);
    }
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let status = |query: &'static str| {
        let (http, url) = (http.clone(), daemon.url(&format!("/status{query}")));
        async move {
            let response = http.get(url).send().await.expect("GET /status");
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    support::wait_for("three ACKed streams", Duration::from_secs(10), || async {
        status("").await.1["node_types"][0]["acked"] == 3
    })
    .await;
    let (code, all) = status("").await;
    assert_eq!(code, 200);
    assert_eq!(
        all["node_types"],
        json!([{"node_type": "sidecar", "version": "v1", "resources": {"listeners": 1, "clusters": 1, "routes": 1, "endpoints": 1},
                "streams": 3, "acked": 3, "pending": 0, "nacking": 0}])
    );
    assert_eq!(all["streams_connected"], 3);
    assert_eq!(all["nacking"], json!({"total": 0, "items": []}));

    let (_, second) = status("?per_page=2&page=2").await;
    assert_eq!((&second["streams"]["total"], &second["streams"]["page"], &second["streams"]["per_page"]), (&json!(3), &json!(2), &json!(2)));
    let items = second["streams"]["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!((&items[0]["node_id"], &items[0]["state"]), (&json!("sidecar-app2"), &json!("acked")));
    assert_eq!(items[0]["types"]["clusters"]["acked_version"], "v1");

    let (_, filtered) = status("?q=APP1&node_type=sidecar").await;
    let ids: Vec<&Value> = filtered["streams"]["items"].as_array().expect("items").iter().map(|s| &s["node_id"]).collect();
    assert_eq!(ids, [&json!("sidecar-app1")]);
    assert_eq!(filtered["node_types"][0]["streams"], 3, "counts ignore the filter");

    let (code, refused) = status("?page=0").await;
    assert_eq!((code, &refused["path"]), (400, &json!("page")), "{refused}");

    for (path, content_type) in [("/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")] {
        let response = get(&daemon, path).await;
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert!(header("content-type").starts_with(content_type), "{path}: {}", header("content-type"));
        assert!(header("content-security-policy").contains("script-src 'self'"), "{path}");
    }
}

//! A real headless Chromium for browser tests, driven over the Chrome
//! DevTools Protocol (JSON over a websocket): load a page, evaluate
//! JavaScript in it, take a screenshot.
//!
//! Chromium listens for DevTools on loopback only, on a port it picks
//! itself (port 0; it writes the one it took into the profile directory),
//! so no two tests race for a port. It is killed when the guard drops, a
//! failing test included (its renderers and helpers exit with it). Every
//! wait is bounded.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

/// Where Debian's `chromium` package puts its launcher.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Start-up of a cold browser on a loaded machine.
const START_BOUND: Duration = Duration::from_secs(30);
/// One DevTools call.
const CALL_BOUND: Duration = Duration::from_secs(30);

/// A running headless Chromium, killed on drop.
pub struct Chromium {
    child: Child,
    /// The DevTools HTTP endpoint, `http://127.0.0.1:PORT`.
    endpoint: String,
    profile: TempDir,
}

impl Chromium {
    /// Starts Chromium. Without one installed this prints why and answers
    /// `None`, unless `CI=true`: CI installs it (scripts/test.sh), so there a
    /// missing browser is a failure.
    pub async fn launch() -> Option<Self> {
        if !Path::new(CHROMIUM).exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{CHROMIUM} is missing under CI=true: scripts/test.sh installs it (apt-get install chromium)"
            );
            eprintln!("SKIPPED: {CHROMIUM} is not installed; `apt-get install chromium` (or scripts/test.sh) to run this test");
            return None;
        }
        let profile = tempfile::tempdir().expect("temp profile dir");
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("chromium log");
        let mut command = Command::new(CHROMIUM);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--no-proxy-server",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
        let mut chromium = Self { child, endpoint: String::new(), profile };
        let port = chromium.devtools_port().await;
        chromium.endpoint = format!("http://127.0.0.1:{port}");
        Some(chromium)
    }

    /// Chromium writes the port it took, then the browser target's path, to
    /// `DevToolsActivePort` once it listens.
    async fn devtools_port(&mut self) -> u16 {
        let file = self.profile.path().join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + START_BOUND;
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if let Some(port) = text.lines().next().and_then(|l| l.trim().parse::<u16>().ok()) {
                return port;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited ({status}) before listening; log:\n{}", self.log_tail());
            }
            if tokio::time::Instant::now() > deadline {
                panic!("chromium did not listen for DevTools within {START_BOUND:?}; log:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.profile.path().join("chromium.log")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The page Chromium opened at start, attached.
    pub async fn first_tab(&self) -> Tab {
        let http = reqwest::Client::builder().no_proxy().timeout(CALL_BOUND).build().expect("HTTP client");
        let targets: Value = http
            .get(format!("{}/json/list", self.endpoint))
            .send()
            .await
            .expect("GET /json/list")
            .json()
            .await
            .expect("/json/list is JSON");
        let ws_url = targets
            .as_array()
            .and_then(|all| all.iter().find(|t| t["type"] == "page"))
            .and_then(|page| page["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target in {targets}"))
            .to_owned();
        let (socket, _) = tokio::time::timeout(CALL_BOUND, tokio_tungstenite::connect_async(ws_url.as_str()))
            .await
            .expect("DevTools websocket connects in time")
            .expect("DevTools websocket");
        let mut tab = Tab { socket, next_id: 0 };
        // Scripts for new documents only run with the Page domain enabled.
        tab.call("Page.enable", json!({})).await;
        tab
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SIGKILL; the browser's helper processes watch it and exit too.
        let _ = self.child.kill();
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("chromium (pid {}) did not exit within 5 s of SIGKILL", self.child.id());
    }
}

/// One attached page.
pub struct Tab {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Tab {
    /// Calls a DevTools `method`; answers its `result`. Events that arrive
    /// meanwhile are dropped (nothing here subscribes to any).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params });
        let exchange = async {
            self.socket.send(Message::text(request.to_string())).await.expect("send to DevTools");
            loop {
                let message = self.socket.next().await.expect("DevTools socket open").expect("DevTools message");
                let Ok(text) = message.to_text() else { continue };
                let Ok(answer) = serde_json::from_str::<Value>(text) else { continue };
                if answer["id"] == id {
                    return answer;
                }
            }
        };
        let answer = tokio::time::timeout(CALL_BOUND, exchange)
            .await
            .unwrap_or_else(|_| panic!("DevTools {method} did not answer within {CALL_BOUND:?}"));
        if !answer["error"].is_null() {
            panic!("DevTools {method} failed: {}", answer["error"]);
        }
        answer["result"].clone()
    }

    /// Runs `source` in every document this tab loads from now on, before
    /// the page's own scripts.
    pub async fn before_each_document(&mut self, source: &str) {
        self.call("Page.addScriptToEvaluateOnNewDocument", json!({ "source": source })).await;
    }

    /// Loads `url` and waits for the document to finish loading.
    pub async fn navigate(&mut self, url: &str) {
        let result = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(result["errorText"].is_null(), "navigating to {url}: {result}");
        self.wait_until("the page to load", Duration::from_secs(20), "document.readyState === 'complete' && location.href !== 'about:blank'")
            .await;
    }

    /// Evaluates `expression` in the page; answers its value (as JSON).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let result = self.call("Runtime.evaluate", params).await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("`{expression}` threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy and answers its value; panics
    /// naming `what`, with the page's text, after `limit`.
    pub async fn wait_until(&mut self, what: &str, limit: Duration, expression: &str) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let value = self.eval(expression).await;
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                let text = self.eval("document.body ? document.body.innerText : ''").await;
                panic!("timed out after {limit:?} waiting for {what}; the page reads:\n{}", text.as_str().unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the whole page, not only the window.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let clip = json!({ "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1 });
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png", "clip": clip, "captureBeyondViewport": true })).await;
        let data = shot["data"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD.decode(data).expect("screenshot is base64")
    }
}

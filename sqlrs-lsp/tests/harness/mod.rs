//! Test harness: an isolated sqlrsd (own XDG folders, native runtime, copy
//! store, started on demand by the server through a wrapper script) and an
//! in-process sqlrs-lsp driven with real JSON-RPC messages, recording what
//! the server sends to its client.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlrs_lsp::{Config, Server};
use sqlrs_proto::client;
use sqlrs_proto::paths::Locations;
use sqlrs_proto::pb::{DeleteRequest, ListInstancesRequest, ShutdownRequest, StatusRequest};
use tempfile::TempDir;
use tokio::sync::{Mutex, mpsc};
use tower::{Service, ServiceExt};
use tower_lsp::LspService;
use tower_lsp::jsonrpc::{Request, Response};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long a small chain may take to build on a loaded machine (debug build).
pub const BUILD: Duration = Duration::from_secs(180);

/// A temp folder with the daemon's XDG folders and a workspace `ws/`.
pub struct Env {
    dir: TempDir,
    pub root: PathBuf,
    pub ws: PathBuf,
    pub locations: Locations,
    pub config: Config,
}

/// The sqlrsd built beside this test (`target/<profile>/sqlrsd`).
fn sqlrsd_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let mut dir = exe.parent().expect("test executable folder").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("sqlrsd");
    assert!(
        bin.is_file(),
        "{} does not exist: run `cargo build -p sqlrsd` first (these tests drive the real daemon)",
        bin.display()
    );
    bin
}

impl Env {
    pub fn new(files: &[(&str, &str)]) -> Env {
        assert!(
            Path::new(PG_BIN).join("initdb").is_file()
                && Path::new(PG_BIN).join("postgres").is_file(),
            "these tests need the PostgreSQL 15 server binaries in {PG_BIN}: apt-get install postgresql-15"
        );
        let sqlrsd = sqlrsd_bin();
        let dir = tempfile::Builder::new()
            .prefix("sqlrs-lsp-")
            .tempdir_in("/tmp")
            .expect("create a temp dir under /tmp");
        // The servers run as the `postgres` account when the tests run as root.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().canonicalize().unwrap();
        for sub in ["config/sqlrs", "state", "run", "home", "ws/.sqlrs"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::set_permissions(root.join("ws"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            root.join("config/sqlrs/config.yaml"),
            format!(
                "runtime:\n  kind: native\n  native:\n    bin_dir: {PG_BIN}\nsnapshot:\n  backend: copy\n"
            ),
        )
        .unwrap();
        let vars = [
            ("HOME", root.join("home")),
            ("XDG_CONFIG_HOME", root.join("config")),
            ("XDG_STATE_HOME", root.join("state")),
            ("XDG_RUNTIME_DIR", root.join("run")),
        ];
        // The server starts the daemon itself: this wrapper gives it the
        // sandbox's folders.
        let wrapper = root.join("sqlrsd");
        let mut script = String::from("#!/bin/sh\n");
        for (k, v) in &vars {
            script.push_str(&format!("export {k}='{}'\n", v.display()));
        }
        script.push_str(&format!("exec '{}' \"$@\"\n", sqlrsd.display()));
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let locations = Locations::resolve(
            |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()),
            true,
        )
        .unwrap();
        let env = Env {
            ws: root.join("ws"),
            config: Config {
                locations: locations.clone(),
                daemon_exe: wrapper,
            },
            locations,
            root,
            dir,
        };
        for (rel, text) in files {
            env.write(rel, text);
        }
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.ws.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }

    pub fn uri(&self, rel: &str) -> String {
        format!("file://{}", self.path(rel).display())
    }

    /// Ids of the instances the daemon lists (warm ones not included).
    pub async fn instance_ids(&self) -> Vec<String> {
        let mut conn = client::connect(&self.locations).await.expect("daemon runs");
        conn.client
            .list_instances(ListInstancesRequest {
                include_warm: false,
            })
            .await
            .unwrap()
            .into_inner()
            .instances
            .into_iter()
            .map(|i| i.id)
            .collect()
    }

    /// The running daemon's pid.
    pub async fn daemon_pid(&self) -> u32 {
        client::connect(&self.locations)
            .await
            .expect("daemon runs")
            .health
            .pid
    }

    /// Waits until the warm pool has an instance ready and starts none.
    pub async fn wait_warm(&self, timeout: Duration) {
        let mut conn = client::connect(&self.locations).await.expect("daemon runs");
        let deadline = Instant::now() + timeout;
        loop {
            let status = conn
                .client
                .status(StatusRequest::default())
                .await
                .unwrap()
                .into_inner();
            let pool = status.pool.unwrap_or_default();
            if pool.warm_instances > 0 && pool.starting == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no warm instance within {timeout:?}: {pool:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.locations.log_path()).unwrap_or_default()
    }

    /// Removes the instances, stops the daemon, kills what is left.
    fn stop_everything(&self) {
        let loc = self.locations.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Ok(mut conn) = client::connect(&loc).await else {
                    return;
                };
                if let Ok(list) = conn
                    .client
                    .list_instances(ListInstancesRequest {
                        include_warm: false,
                    })
                    .await
                {
                    for i in list.into_inner().instances {
                        let _ = conn
                            .client
                            .delete_instance(DeleteRequest {
                                id: i.id,
                                force: true,
                                ..DeleteRequest::default()
                            })
                            .await;
                    }
                }
                let _ = conn.client.shutdown(ShutdownRequest {}).await;
                let deadline = Instant::now() + Duration::from_secs(20);
                while client::connect(&loc).await.is_ok() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        })
        .join()
        .unwrap();
        let root = self.root.display().to_string();
        for pid in processes_mentioning(&root) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_everything();
    }
}

/// Processes whose command line or environment names `text`.
fn processes_mentioning(text: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            ["cmdline", "environ"].iter().any(|f| {
                std::fs::read(format!("/proc/{pid}/{f}"))
                    .is_ok_and(|b| String::from_utf8_lossy(&b).contains(text))
            })
        })
        .collect()
}

/// An in-process sqlrs-lsp and everything it sent to its client.
pub struct Lsp {
    service: Arc<Mutex<LspService<Server>>>,
    inbox: mpsc::UnboundedReceiver<Value>,
    /// Every message received so far, in order.
    pub seen: Vec<Value>,
    next_id: i64,
}

impl Lsp {
    /// Starts the server and sends `initialize` (with `options` as
    /// initializationOptions) and `initialized`.
    pub async fn start(env: &Env, options: Value) -> Lsp {
        let (service, socket) = sqlrs_lsp::service(env.config.clone());
        let (mut requests, mut responses) = socket.split();
        let (tx, inbox) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Some(id) = request.id().cloned() {
                    // Every client-side request (progress create, lens
                    // refresh) succeeds with null.
                    let _ = responses.send(Response::from_ok(id, Value::Null)).await;
                }
                if tx.send(serde_json::to_value(&request).unwrap()).is_err() {
                    break;
                }
            }
        });
        let mut lsp = Lsp {
            service: Arc::new(Mutex::new(service)),
            inbox,
            seen: Vec::new(),
            next_id: 1,
        };
        let reply = lsp
            .request(
                "initialize",
                json!({
                    "processId": null,
                    "rootUri": null,
                    "capabilities": {
                        "workspace": {"codeLens": {"refreshSupport": true}, "workspaceFolders": true},
                        "window": {"workDoneProgress": true},
                    },
                    "workspaceFolders": [{"uri": format!("file://{}", env.ws.display()), "name": "ws"}],
                    "initializationOptions": options,
                }),
            )
            .await
            .expect("initialize succeeds");
        assert_eq!(reply["serverInfo"]["name"], "sqlrs-lsp");
        lsp.notify("initialized", json!({})).await;
        lsp
    }

    fn message(&mut self, method: &str, params: Value, id: Option<i64>) -> Request {
        let mut m = json!({"jsonrpc": "2.0", "method": method});
        if !params.is_null() {
            m["params"] = params;
        }
        if let Some(id) = id {
            m["id"] = json!(id);
        }
        serde_json::from_value(m).unwrap()
    }

    /// Sends a request; its result, or the error object.
    pub async fn request(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let fut = self.start_request(method, params).await;
        fut.await
    }

    /// Sends a request and returns the pending reply (so that others can be
    /// sent meanwhile).
    pub async fn start_request(
        &mut self,
        method: &str,
        params: Value,
    ) -> impl Future<Output = Result<Value, Value>> + use<> {
        let id = self.next_id;
        self.next_id += 1;
        let request = self.message(method, params, Some(id));
        let fut = {
            let mut service = self.service.lock().await;
            service.ready().await.unwrap().call(request)
        };
        async move {
            let response = fut.await.unwrap().expect("a request gets a response");
            let (_, body) = response.into_parts();
            body.map_err(|e| serde_json::to_value(e).unwrap())
        }
    }

    pub async fn notify(&mut self, method: &str, params: Value) {
        let request = self.message(method, params, None);
        let mut service = self.service.lock().await;
        let reply = service.ready().await.unwrap().call(request).await.unwrap();
        assert!(reply.is_none());
    }

    pub async fn open(&mut self, env: &Env, rel: &str) {
        let text = std::fs::read_to_string(env.path(rel)).unwrap();
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": env.uri(rel), "languageId": "sql", "version": 1, "text": text}}),
        )
        .await;
    }

    /// Takes what the server sent so far into `seen`.
    fn drain(&mut self) {
        while let Ok(m) = self.inbox.try_recv() {
            self.seen.push(m);
        }
    }

    /// Waits for a message (received from now on) matching `pred`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                Ok(Some(m)) => {
                    self.seen.push(m.clone());
                    if pred(&m) {
                        return m;
                    }
                }
                Ok(None) => panic!("the server's client socket closed while waiting for {what}"),
                Err(_) => panic!(
                    "no {what} within {timeout:?}; the server sent:\n{}",
                    self.seen
                        .iter()
                        .rev()
                        .take(30)
                        .map(|m| m.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    /// The first message seen so far, or received within `timeout`, matching `pred`.
    pub async fn seen_or_wait(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.drain();
        if let Some(m) = self.seen.iter().find(|m| pred(m)) {
            return m.clone();
        }
        self.wait_for(what, timeout, pred).await
    }

    /// The titles of the code lenses of `uri`.
    pub async fn lens_titles(&mut self, uri: &str) -> Vec<String> {
        let lenses = self
            .request(
                "textDocument/codeLens",
                json!({"textDocument": {"uri": uri}}),
            )
            .await
            .expect("codeLens succeeds");
        lenses
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["command"]["title"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Polls the lenses of `uri` until their first title satisfies `pred`.
    pub async fn wait_lens(
        &mut self,
        uri: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let titles = self.lens_titles(uri).await;
            if let Some(t) = titles.first().filter(|t| pred(t)) {
                return t.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the status lens of {uri} did not reach the expected state within {timeout:?}; it shows {titles:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.drain();
        }
    }

    /// The messages seen so far with this method.
    pub fn seen_method(&mut self, method: &str) -> Vec<Value> {
        self.drain();
        self.seen
            .iter()
            .filter(|m| m["method"] == method)
            .cloned()
            .collect()
    }

    /// Sends `shutdown` (which stops following workspaces) and `exit`.
    pub async fn finish(mut self) {
        self.request("shutdown", Value::Null)
            .await
            .expect("shutdown succeeds");
    }
}

/// `value` with the fields named in `keys` replaced by `"<key>"` (anywhere
/// in the tree), for comparisons of whole replies.
pub fn normalise(mut value: Value, keys: &[&str]) -> Value {
    fn walk(v: &mut Value, keys: &[&str]) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if keys.contains(&k.as_str()) && !child.is_null() {
                        *child = Value::String(format!("<{k}>"));
                    } else {
                        walk(child, keys);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, keys)),
            _ => {}
        }
    }
    walk(&mut value, keys);
    value
}

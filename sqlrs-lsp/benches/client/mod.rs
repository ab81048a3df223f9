//! A small LSP client for the benchmarks: runs a language server binary as a
//! child process and speaks JSON-RPC with it over stdio (Content-Length
//! framing), answering the server's own requests with `null` the way an
//! editor acknowledges them.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A message the server sent, with the time it was read.
pub struct Received {
    pub at: Instant,
    pub message: Value,
}

/// The server process and what it sent that was not yet consumed.
pub struct LspProcess {
    child: Child,
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    inbox: Receiver<Received>,
    next_id: i64,
    /// Requests and notifications from the server read while waiting for
    /// something else, oldest first.
    pub pending: Vec<Received>,
}

/// Writes one framed message; nothing once stdin was closed.
fn send(stdin: &Mutex<Option<ChildStdin>>, message: &Value) {
    let body = message.to_string();
    let mut stdin = stdin.lock().unwrap();
    if let Some(stdin) = stdin.as_mut() {
        write!(stdin, "Content-Length: {}\r\n\r\n{body}", body.len())
            .and_then(|()| stdin.flush())
            .expect("the language server reads its stdin");
    }
}

/// A request (with `id`) or notification; `null` params are left out
/// (`shutdown` and `exit` take none).
fn message(method: &str, params: Value, id: Option<i64>) -> Value {
    let mut m = json!({"jsonrpc": "2.0", "method": method});
    if !params.is_null() {
        m["params"] = params;
    }
    if let Some(id) = id {
        m["id"] = json!(id);
    }
    m
}

/// One framed message, or None at the end of the stream.
fn read_message(reader: &mut impl BufRead) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.expect("a Content-Length header")];
    reader.read_exact(&mut body).ok()?;
    Some(serde_json::from_slice(&body).expect("the language server sends JSON"))
}

impl LspProcess {
    /// Starts `command` (its stdin and stdout are taken over; stderr goes to
    /// `log`).
    pub fn spawn(mut command: Command, log: &Path) -> LspProcess {
        let log = std::fs::File::create(log).expect("create the server's log file");
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdin = Arc::new(Mutex::new(child.stdin.take()));
        let stdout = child.stdout.take().unwrap();
        let (tx, inbox) = channel();
        let replies = stdin.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            while let Some(message) = read_message(&mut reader) {
                let at = Instant::now();
                if message.get("method").is_some()
                    && let Some(id) = message.get("id")
                {
                    send(
                        &replies,
                        &json!({"jsonrpc": "2.0", "id": id, "result": null}),
                    );
                }
                if tx.send(Received { at, message }).is_err() {
                    break;
                }
            }
        });
        LspProcess {
            child,
            stdin,
            inbox,
            next_id: 1,
            pending: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        send(&self.stdin, &message(method, params, None));
    }

    /// Sends a request and waits for its reply: the result, or the error.
    pub fn request(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        send(&self.stdin, &message(method, params, Some(id)));
        loop {
            let received = self.inbox.recv().unwrap_or_else(|_| {
                panic!("the language server ended before replying to {method}")
            });
            let m = &received.message;
            if m.get("method").is_none() && m["id"] == json!(id) {
                return match m.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(m["result"].clone()),
                };
            }
            self.pending.push(received);
        }
    }

    /// The next message from the server within `timeout` (into `pending`);
    /// false when none came.
    pub fn receive(&mut self, timeout: Duration) -> bool {
        match self.inbox.recv_timeout(timeout) {
            Ok(received) => {
                self.pending.push(received);
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the language server closed its stdout")
            }
        }
    }

    /// The titles of the code lenses of `uri`.
    pub fn lens_titles(&mut self, uri: &str) -> Vec<String> {
        let lenses = self
            .request(
                "textDocument/codeLens",
                json!({"textDocument": {"uri": uri}}),
            )
            .unwrap_or_else(|e| panic!("textDocument/codeLens failed: {e}"));
        lenses
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["command"]["title"].as_str().map(str::to_owned))
            .collect()
    }

    /// Sends `shutdown` and `exit`, closes the server's stdin (as editors
    /// do) and waits up to `timeout` for the process to end; kills it if it
    /// does not.
    pub fn stop(&mut self, timeout: Duration) {
        if let Err(e) = self.request("shutdown", Value::Null) {
            panic!("shutdown failed: {e}");
        }
        self.notify("exit", Value::Null);
        drop(self.stdin.lock().unwrap().take());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "sqlrs-lsp exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("sqlrs-lsp did not exit within {timeout:?} of shutdown/exit");
    }
}

impl Drop for LspProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

//! The server process ends on the `exit` notification even while the client
//! keeps its stdin open.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn frame(body: &str) -> Vec<u8> {
    format!("Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

#[test]
fn exit_ends_the_process_with_stdin_still_open() {
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sqlrs-lsp"))
        .env("XDG_STATE_HOME", state.path())
        .env("XDG_RUNTIME_DIR", state.path())
        .env("XDG_CONFIG_HOME", state.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sqlrs-lsp starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&frame(r#"{"jsonrpc":"2.0","method":"exit"}"#))
        .unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sqlrs-lsp still runs 10 s after `exit`");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1), "exit without shutdown exits with 1");
    drop(stdin);
}

//! The daemon from the client's side: connecting (starting it when needed)
//! and `sqlrs daemon start|stop|status`.

use std::fs::TryLockError;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlrs_proto::client::{self, ConnectError, Connection};
use sqlrs_proto::paths::Locations;
use sqlrs_proto::pb::{HealthReply, ShutdownRequest};

use crate::cli::Ctx;
use crate::error::exit;
use crate::render;

/// How long `daemon stop` waits for the socket to go quiet.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to this user's daemon; with `spawn`, starts it when none runs.
pub async fn connect(spawn: bool) -> anyhow::Result<Connection> {
    let loc = Locations::from_env()?;
    let conn = if spawn {
        client::connect_or_spawn(&loc, &client::daemon_exe()).await?
    } else {
        client::connect(&loc).await?
    };
    Ok(conn)
}

/// What `daemon start|status` report.
#[derive(Debug, Serialize, PartialEq)]
pub struct DaemonInfo {
    pub running: bool,
    pub pid: u32,
    pub version: String,
    pub protocol: u32,
    pub socket: String,
    pub state_dir: String,
    pub started_at_ms: u64,
    pub uptime_s: u64,
}

impl DaemonInfo {
    pub fn new(health: &HealthReply, now_ms: u64) -> Self {
        DaemonInfo {
            running: true,
            pid: health.pid,
            version: health.version.clone(),
            protocol: health.protocol_version,
            socket: health.socket_path.clone(),
            state_dir: health.state_dir.clone(),
            started_at_ms: health.started_at_ms,
            uptime_s: now_ms.saturating_sub(health.started_at_ms) / 1000,
        }
    }

    fn text(&self) -> String {
        format!(
            "sqlrsd {} running, pid {}, up {}\nsocket {} (protocol {})\nstore  {}",
            self.version,
            self.pid,
            render::duration(self.uptime_s * 1000),
            self.socket,
            self.protocol,
            self.state_dir
        )
    }
}

#[derive(Serialize)]
struct Started {
    #[serde(flatten)]
    info: DaemonInfo,
    /// False when a daemon was already running.
    started: bool,
}

pub async fn start(ctx: Ctx) -> anyhow::Result<u8> {
    let loc = Locations::from_env()?;
    let (conn, started) = match client::connect(&loc).await {
        Ok(conn) => (conn, false),
        Err(ConnectError::NotRunning { .. }) => (
            client::connect_or_spawn(&loc, &client::daemon_exe()).await?,
            true,
        ),
        Err(e) => return Err(e.into()),
    };
    let info = DaemonInfo::new(&conn.health, render::now_ms());
    if ctx.json() {
        render::print_json(&Started { info, started })?;
    } else {
        ctx.progress(if started {
            "started sqlrsd"
        } else {
            "sqlrsd was already running"
        });
        println!("{}", info.text());
    }
    Ok(exit::OK)
}

pub async fn stop(ctx: Ctx) -> anyhow::Result<u8> {
    let loc = Locations::from_env()?;
    let mut conn = match client::connect(&loc).await {
        Ok(conn) => conn,
        Err(ConnectError::NotRunning { .. }) => {
            report_stopped(ctx, None)?;
            return Ok(exit::OK);
        }
        Err(e) => return Err(e.into()),
    };
    let pid = conn.health.pid;
    ctx.progress(format_args!("stopping sqlrsd (pid {pid})…"));
    if let Err(status) = conn.client.shutdown(ShutdownRequest {}).await {
        // The daemon may close the connection before answering.
        if !matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ) {
            return Err(crate::error::CliError::Daemon(status).into());
        }
    }
    let asked = Instant::now();
    // Gone means: the socket is quiet and the store lock is released, so
    // that a `daemon start` right after finds the store free.
    while !matches!(
        client::connect(&loc).await,
        Err(ConnectError::NotRunning { .. })
    ) || !store_free(&loc.daemon_lock_path())
    {
        if asked.elapsed() > STOP_TIMEOUT {
            anyhow::bail!(
                "sqlrsd (pid {pid}) has not stopped {}s after being asked to; see its log {}",
                STOP_TIMEOUT.as_secs(),
                loc.log_path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report_stopped(ctx, Some(pid))?;
    Ok(exit::OK)
}

/// Whether no daemon holds the store lock (a shared lock is refused while one does).
fn store_free(lock_path: &Path) -> bool {
    match std::fs::File::open(lock_path) {
        Ok(file) => !matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock)),
        Err(_) => true,
    }
}

fn report_stopped(ctx: Ctx, pid: Option<u32>) -> anyhow::Result<()> {
    if ctx.json() {
        render::print_json(&serde_json::json!({ "running": false, "stopped_pid": pid }))
    } else {
        match pid {
            Some(pid) => println!("stopped sqlrsd (pid {pid})"),
            None => println!("sqlrsd is not running"),
        }
        Ok(())
    }
}

pub async fn status(ctx: Ctx) -> anyhow::Result<u8> {
    let loc = Locations::from_env()?;
    match client::connect(&loc).await {
        Ok(conn) => {
            let info = DaemonInfo::new(&conn.health, render::now_ms());
            if ctx.json() {
                render::print_json(&info)?;
            } else {
                println!("{}", info.text());
            }
            Ok(exit::OK)
        }
        Err(ConnectError::NotRunning { socket }) => {
            if ctx.json() {
                render::print_json(&serde_json::json!({ "running": false, "socket": socket }))?;
            } else {
                println!("not running");
                ctx.progress(format_args!("(nothing answers on {})", socket.display()));
            }
            Ok(exit::ERROR)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_lock_probe() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("daemon.lock");
        assert!(store_free(&path), "no lock file: free");
        let held = std::fs::File::create(&path).unwrap();
        held.lock().unwrap();
        assert!(!store_free(&path), "held exclusively: busy");
        held.unlock().unwrap();
        assert!(store_free(&path), "released: free");
    }

    #[test]
    fn json_shape() {
        let health = HealthReply {
            protocol_version: 1,
            version: "0.1.0".into(),
            pid: 42,
            socket_path: "/run/sqlrs/sqlrsd.sock".into(),
            started_at_ms: 1_000,
            state_dir: "/var/lib/sqlrs".into(),
        };
        let got = serde_json::to_value(DaemonInfo::new(&health, 186_500)).unwrap();
        let want = serde_json::json!({
            "running": true,
            "pid": 42,
            "version": "0.1.0",
            "protocol": 1,
            "socket": "/run/sqlrs/sqlrsd.sock",
            "state_dir": "/var/lib/sqlrs",
            "started_at_ms": 1000,
            "uptime_s": 185,
        });
        assert_eq!(got, want);
        assert_eq!(
            DaemonInfo::new(&health, 186_500).text(),
            "sqlrsd 0.1.0 running, pid 42, up 3m05s\nsocket /run/sqlrs/sqlrsd.sock (protocol 1)\nstore  /var/lib/sqlrs"
        );
    }
}

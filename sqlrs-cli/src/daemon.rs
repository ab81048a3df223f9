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
    let pid = match client::connect(&loc).await {
        Ok(mut conn) => {
            let pid = conn.health.pid;
            ctx.progress(format_args!("stopping sqlrsd (pid {pid})…"));
            if let Err(status) = conn.client.shutdown(ShutdownRequest {}).await {
                if refuses_this_client(&status) {
                    // It will not take orders from this client: a signal
                    // does what Shutdown would.
                    terminate(pid, &crate::error::CliError::Daemon(status).to_string())?;
                } else if !matches!(
                    // The daemon may close the connection before answering.
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) {
                    return Err(crate::error::CliError::Daemon(status).into());
                }
            }
            pid
        }
        Err(ConnectError::NotRunning { .. }) => {
            report_stopped(ctx, None)?;
            return Ok(exit::OK);
        }
        Err(e @ (ConnectError::Protocol { pid, .. } | ConnectError::Token { pid, .. })) => {
            ctx.progress(format_args!("stopping sqlrsd (pid {pid})…"));
            terminate(pid, &e.to_string())?;
            pid
        }
        Err(e) => return Err(e.into()),
    };
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

/// Whether the daemon refused a call for who the client is (its token or
/// protocol) rather than for what it asked.
fn refuses_this_client(status: &tonic::Status) -> bool {
    matches!(
        sqlrs_proto::status_reason(status),
        Some("bad_token" | "protocol_mismatch")
    ) || status.code() == tonic::Code::Unauthenticated
}

/// Stops the daemon `pid` with SIGTERM (it then shuts down as on Shutdown),
/// after checking that it is an sqlrsd of this user; `why` says why the
/// call could not be used.
fn terminate(pid: u32, why: &str) -> anyhow::Result<()> {
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    let name = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
    let uid = std::fs::read_to_string(proc.join("status"))
        .ok()
        .and_then(|s| effective_uid_in_status(&s));
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if name.trim() != "sqlrsd" || uid != Some(me) {
        anyhow::bail!(
            "the daemon refuses this client ({why}), and pid {pid} is not an sqlrsd of this user to stop with a signal; stop the daemon by hand"
        );
    }
    let pid_t = libc::pid_t::try_from(pid)?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid_t, libc::SIGTERM) } != 0 {
        anyhow::bail!(
            "cannot signal sqlrsd (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The effective uid on the `Uid:` line of /proc/PID/status.
fn effective_uid_in_status(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
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
    fn refusals_and_owners() {
        let with = crate::error::with_reason_header;
        let cases = [
            (with(tonic::Status::unauthenticated("x"), "bad_token"), true),
            (
                with(tonic::Status::failed_precondition("x"), "protocol_mismatch"),
                true,
            ),
            (tonic::Status::unauthenticated("x"), true),
            (with(tonic::Status::not_found("x"), "not_found"), false),
            (tonic::Status::unavailable("x"), false),
        ];
        for (status, want) in cases {
            assert_eq!(refuses_this_client(&status), want, "{status:?}");
        }
        let status = "Name:\tsqlrsd\nUid:\t1000\t1001\t1001\t1001\nGid:\t5\t5\t5\t5\n";
        assert_eq!(effective_uid_in_status(status), Some(1001));
        assert_eq!(effective_uid_in_status("Name:\tx\n"), None);
        // This test process is no sqlrsd: never signalled.
        let err = terminate(std::process::id(), "why")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an sqlrsd of this user"), "{err}");
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

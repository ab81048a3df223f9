//! The client side of the daemon: connect to a running sqlrsd, or start one
//! (detached, one spawn at a time under a lock) and wait until it answers.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::paths::{
    Locations, create_private_dir, describe_user, effective_uid, foreign_owner_for,
};
use crate::pb::sqlrs_client::SqlrsClient;
use crate::pb::{HealthReply, HealthRequest};
use crate::{PROTOCOL_HEADER, PROTOCOL_VERSION, TOKEN_HEADER, transport};

/// How long a client waits for a freshly spawned daemon to answer.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds the protocol version and the token to every call.
#[derive(Clone)]
pub struct Auth {
    token: Option<MetadataValue<Ascii>>,
    protocol: MetadataValue<Ascii>,
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let md = req.metadata_mut();
        md.insert(PROTOCOL_HEADER, self.protocol.clone());
        if let Some(token) = &self.token {
            md.insert(TOKEN_HEADER, token.clone());
        }
        Ok(req)
    }
}

pub type Client = SqlrsClient<InterceptedService<Channel, Auth>>;

/// A checked connection: the client and what the daemon said about itself.
pub struct Connection {
    pub client: Client,
    pub health: HealthReply,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("sqlrsd is not running (nothing answers on {})", socket.display())]
    NotRunning { socket: PathBuf },
    #[error(
        "sqlrsd {version} (pid {pid}) at {} speaks protocol {daemon}, this sqlrs {} speaks protocol {client}: run `sqlrs daemon stop` (it stops the daemon without speaking its protocol) and retry; the next command starts the sqlrsd that comes with this sqlrs (or SQLRSD_BIN)",
        socket.display(),
        env!("CARGO_PKG_VERSION")
    )]
    Protocol {
        socket: PathBuf,
        daemon: u32,
        client: u32,
        /// The daemon's own version and process, from its health reply.
        version: String,
        pid: u32,
    },
    #[error(
        "{} belongs to {owner}, but this sqlrs runs as {me}: sqlrs talks only to a daemon of its own user, and another user's sqlrsd may be listening there; remove it (as its owner or root), or set XDG_RUNTIME_DIR to a folder of your own",
        path.display()
    )]
    ForeignSocket {
        path: PathBuf,
        owner: String,
        me: String,
    },
    #[error("cannot start sqlrsd from {}: {error}; install it beside `sqlrs` or set SQLRSD_BIN", exe.display())]
    Spawn { exe: PathBuf, error: std::io::Error },
    #[error("sqlrsd did not answer within {}s of starting; its log ({}) ends with:\n{log_tail}", SPAWN_TIMEOUT.as_secs(), log.display())]
    Timeout { log: PathBuf, log_tail: String },
    #[error("sqlrsd exited while starting (its configuration: {}); its log ({}) ends with:\n{log_tail}", config.display(), log.display())]
    Exited {
        log: PathBuf,
        log_tail: String,
        config: PathBuf,
    },
    #[error(
        "cannot use the token of sqlrsd (pid {pid}) in {}: {error}; the daemon writes a new token there at every start, so the file was changed or removed since: run `sqlrs daemon stop` (it stops the daemon without the token) and retry",
        path.display()
    )]
    Token {
        path: PathBuf,
        pid: u32,
        error: std::io::Error,
    },
    #[error("cannot prepare {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Fails unless the socket folder and the socket (those that exist) belong
/// to this process's user: a daemon listening in another user's folder
/// would receive this user's token and requests.
fn check_ownership(loc: &Locations) -> Result<(), ConnectError> {
    check_ownership_for(loc, effective_uid())
}

/// [`check_ownership`] for the user `me`.
fn check_ownership_for(loc: &Locations, me: u32) -> Result<(), ConnectError> {
    for path in [loc.runtime_dir.clone(), loc.socket_path()] {
        let owner = foreign_owner_for(&path, me).map_err(|error| ConnectError::Io {
            path: path.clone(),
            error,
        })?;
        if let Some(uid) = owner {
            return Err(ConnectError::ForeignSocket {
                path,
                owner: describe_user(uid),
                me: describe_user(me),
            });
        }
    }
    Ok(())
}

/// Connects to the daemon of `loc` if one is running.
pub async fn connect(loc: &Locations) -> Result<Connection, ConnectError> {
    check_ownership(loc)?;
    let socket = loc.socket_path();
    let health = probe(&socket)
        .await
        .ok_or_else(|| ConnectError::NotRunning {
            socket: socket.clone(),
        })?;
    finish(loc, health).await
}

/// Connects to the daemon of `loc`, starting `daemon_exe` first if none runs.
pub async fn connect_or_spawn(
    loc: &Locations,
    daemon_exe: &Path,
) -> Result<Connection, ConnectError> {
    check_ownership(loc)?;
    let socket = loc.socket_path();
    if let Some(health) = probe(&socket).await {
        return finish(loc, health).await;
    }
    create_private_dir(&loc.state_dir).map_err(|error| ConnectError::Io {
        path: loc.state_dir.clone(),
        error,
    })?;
    let lock_path = loc.spawn_lock_path();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| ConnectError::Io {
            path: lock_path.clone(),
            error,
        })?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .expect("lock task panicked")
        .map_err(|error| ConnectError::Io {
            path: lock_path,
            error,
        })?;
    // Another client may have started it while we waited for the lock.
    if let Some(health) = probe(&socket).await {
        drop(lock);
        return finish(loc, health).await;
    }
    // What this start writes to the log is what explains a failed start.
    let log_start = std::fs::metadata(loc.log_path()).map_or(0, |m| m.len());
    let mut child = spawn_detached(loc, daemon_exe)?;
    let started = Instant::now();
    let health = loop {
        if let Some(health) = probe(&socket).await {
            break health;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Err(ConnectError::Exited {
                log: loc.log_path(),
                log_tail: log_tail(&loc.log_path(), log_start),
                config: loc.config_path(),
            });
        }
        if started.elapsed() > SPAWN_TIMEOUT {
            return Err(ConnectError::Timeout {
                log: loc.log_path(),
                log_tail: log_tail(&loc.log_path(), log_start),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(lock);
    finish(loc, health).await
}

/// Where the daemon binary is: `SQLRSD_BIN`, else beside the running
/// executable, else `sqlrsd` on PATH.
pub fn daemon_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("SQLRSD_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("sqlrsd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("sqlrsd"))
}

async fn probe(socket: &Path) -> Option<HealthReply> {
    let attempt = async {
        let channel = transport::connect(socket).await.ok()?;
        let mut client = SqlrsClient::new(channel);
        client
            .health(HealthRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
}

async fn finish(loc: &Locations, health: HealthReply) -> Result<Connection, ConnectError> {
    let socket = loc.socket_path();
    if health.protocol_version != PROTOCOL_VERSION {
        return Err(ConnectError::Protocol {
            socket,
            daemon: health.protocol_version,
            client: PROTOCOL_VERSION,
            version: health.version,
            pid: health.pid,
        });
    }
    let token_path = loc.token_path();
    let token_error = |error| ConnectError::Token {
        path: token_path.clone(),
        pid: health.pid,
        error,
    };
    let token = std::fs::read_to_string(&token_path).map_err(token_error)?;
    let token = MetadataValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| {
        token_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the token is not printable ASCII",
        ))
    })?;
    let channel = transport::connect(&socket)
        .await
        .map_err(|_| ConnectError::NotRunning {
            socket: socket.clone(),
        })?;
    let auth = Auth {
        token: Some(token),
        protocol: MetadataValue::from(PROTOCOL_VERSION),
    };
    let client = SqlrsClient::with_interceptor(channel, auth)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    Ok(Connection { client, health })
}

fn spawn_detached(loc: &Locations, exe: &Path) -> Result<std::process::Child, ConnectError> {
    use std::os::unix::process::CommandExt;
    let log_path = loc.log_path();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|error| ConnectError::Io {
            path: log_path.clone(),
            error,
        })?;
    let log2 = log.try_clone().map_err(|error| ConnectError::Io {
        path: log_path,
        error,
    })?;
    std::process::Command::new(exe)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: a Ctrl-C in the client's terminal must not reach it.
        .process_group(0)
        // Nor may it keep the client's working directory busy.
        .current_dir("/")
        .spawn()
        .map_err(|error| ConnectError::Spawn {
            exe: exe.to_owned(),
            error,
        })
}

/// The last lines of the log written from byte `from` on (all of its last
/// lines when nothing was written since).
fn log_tail(path: &Path, from: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    if let Some(from) = usize::try_from(from).ok().filter(|&f| f < bytes.len()) {
        bytes.drain(..from);
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locations(root: &Path) -> Locations {
        Locations {
            config_dir: root.join("config/sqlrs"),
            state_dir: root.join("state/sqlrs"),
            runtime_dir: root.join("run/sqlrs"),
        }
    }

    fn health(protocol_version: u32) -> HealthReply {
        HealthReply {
            protocol_version,
            version: "9.9.9".into(),
            pid: 4242,
            socket_path: String::new(),
            started_at_ms: 0,
            state_dir: String::new(),
        }
    }

    /// A daemon that answers Health with another protocol version is refused
    /// before anything else is sent, with both versions and the way out.
    #[tokio::test]
    async fn another_protocol_version_is_refused_with_both_versions() {
        let tmp = tempfile::tempdir().unwrap();
        let loc = locations(tmp.path());
        for other in [PROTOCOL_VERSION + 1, PROTOCOL_VERSION - 1, 0] {
            let err = match finish(&loc, health(other)).await {
                Err(e) => e,
                Ok(_) => panic!("protocol {other} was accepted"),
            };
            assert!(matches!(err, ConnectError::Protocol { .. }), "{err}");
            let text = err.to_string();
            for want in [
                format!("speaks protocol {other}"),
                format!("speaks protocol {PROTOCOL_VERSION}"),
                "sqlrsd 9.9.9 (pid 4242)".into(),
                loc.socket_path().display().to_string(),
                "sqlrs daemon stop".into(),
            ] {
                assert!(text.contains(&want), "{want:?} in {text}");
            }
        }
    }

    /// The same version goes on to the token, whose problems name the file,
    /// the daemon's pid and the fix.
    #[tokio::test]
    async fn token_problems_name_the_file_and_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let loc = locations(tmp.path());
        std::fs::create_dir_all(&loc.state_dir).unwrap();
        let cases: [(Option<&[u8]>, &str); 3] = [
            (None, "No such file"),
            (Some(b"\xff\xfe"), "valid UTF-8"),
            (Some(b"a\x01b"), "not printable ASCII"),
        ];
        for (content, why) in cases {
            let _ = std::fs::remove_file(loc.token_path());
            if let Some(bytes) = content {
                std::fs::write(loc.token_path(), bytes).unwrap();
            }
            let err = match finish(&loc, health(PROTOCOL_VERSION)).await {
                Err(e) => e,
                Ok(_) => panic!("{content:?} was accepted"),
            };
            let text = err.to_string();
            for want in [
                why,
                &loc.token_path().display().to_string(),
                "pid 4242",
                "sqlrs daemon stop",
            ] {
                assert!(text.contains(want), "{want:?} in {text}");
            }
        }
    }

    /// A socket folder or socket of another user is refused before any
    /// connection is made (the end-to-end suite does it with real owners).
    #[test]
    fn a_socket_of_another_user_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let loc = locations(tmp.path());
        let me = effective_uid();
        assert!(check_ownership_for(&loc, me).is_ok(), "nothing there yet");
        std::fs::create_dir_all(&loc.runtime_dir).unwrap();
        std::fs::write(loc.socket_path(), "").unwrap();
        assert!(check_ownership_for(&loc, me).is_ok(), "our own");
        let err = check_ownership_for(&loc, me ^ 1).expect_err("someone else's");
        let text = err.to_string();
        assert!(matches!(err, ConnectError::ForeignSocket { .. }), "{text}");
        assert!(
            text.contains(&loc.runtime_dir.display().to_string())
                && text.contains(&format!("uid {me}"))
                && text.contains("XDG_RUNTIME_DIR"),
            "{text}"
        );
    }

    #[test]
    fn log_tail_shows_what_this_start_wrote() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("sqlrsd.log");
        std::fs::write(&log, "old 1\nold 2\n").unwrap();
        let from = std::fs::metadata(&log).unwrap().len();
        assert_eq!(log_tail(&log, from), "old 1\nold 2", "nothing new: all");
        std::fs::write(&log, "old 1\nold 2\nERROR new\n").unwrap();
        assert_eq!(log_tail(&log, from), "ERROR new");
        assert_eq!(log_tail(&tmp.path().join("none"), 0), "");
    }
}

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

use crate::paths::{Locations, create_private_dir};
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
        "sqlrsd at {} speaks protocol {daemon}, this client speaks {client}: run `sqlrs daemon stop` and retry",
        socket.display()
    )]
    Protocol {
        socket: PathBuf,
        daemon: u32,
        client: u32,
    },
    #[error("cannot start sqlrsd from {}: {source}; install it beside `sqlrs` or set SQLRSD_BIN", exe.display())]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("sqlrsd did not answer within {}s of starting; its log ({}) ends with:\n{log_tail}", SPAWN_TIMEOUT.as_secs(), log.display())]
    Timeout { log: PathBuf, log_tail: String },
    #[error("sqlrsd exited while starting; its log ({}) ends with:\n{log_tail}", log.display())]
    Exited { log: PathBuf, log_tail: String },
    #[error("cannot read the daemon token {}: {source}", path.display())]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Connects to the daemon of `loc` if one is running.
pub async fn connect(loc: &Locations) -> Result<Connection, ConnectError> {
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
    let socket = loc.socket_path();
    if let Some(health) = probe(&socket).await {
        return finish(loc, health).await;
    }
    create_private_dir(&loc.state_dir).map_err(|source| ConnectError::Io {
        path: loc.state_dir.clone(),
        source,
    })?;
    let lock_path = loc.spawn_lock_path();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| ConnectError::Io {
            path: lock_path.clone(),
            source,
        })?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .expect("lock task panicked")
        .map_err(|source| ConnectError::Io {
            path: lock_path,
            source,
        })?;
    // Another client may have started it while we waited for the lock.
    if let Some(health) = probe(&socket).await {
        drop(lock);
        return finish(loc, health).await;
    }
    let mut child = spawn_detached(loc, daemon_exe)?;
    let started = Instant::now();
    let health = loop {
        if let Some(health) = probe(&socket).await {
            break health;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Err(ConnectError::Exited {
                log: loc.log_path(),
                log_tail: log_tail(&loc.log_path()),
            });
        }
        if started.elapsed() > SPAWN_TIMEOUT {
            return Err(ConnectError::Timeout {
                log: loc.log_path(),
                log_tail: log_tail(&loc.log_path()),
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
        });
    }
    let token_path = loc.token_path();
    let token = std::fs::read_to_string(&token_path).map_err(|source| ConnectError::Token {
        path: token_path.clone(),
        source,
    })?;
    let token = MetadataValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| {
        ConnectError::Token {
            path: token_path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "token is not ASCII"),
        }
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
        .map_err(|source| ConnectError::Io {
            path: log_path.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| ConnectError::Io {
        path: log_path,
        source,
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
        .map_err(|source| ConnectError::Spawn {
            exe: exe.to_owned(),
            source,
        })
}

fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

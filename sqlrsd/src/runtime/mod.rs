//! Runtimes (DESIGN §4): how sqlrs creates, starts, stops and talks to
//! PostgreSQL servers. The engine sees only the narrow [`Runtime`] trait; the
//! native implementation drives the host's PostgreSQL binaries.

mod admin;
pub mod docker;
mod launch;
pub mod memory;
mod native;
pub mod wal;

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::ids::EngineIdentity;

pub use native::{NativeConfig, NativeRuntime, stop_stray};

/// What a runtime is, for `sqlrs status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// "native" or "docker".
    pub kind: &'static str,
    /// e.g. "PostgreSQL 15.18 (/usr/lib/postgresql/15/bin)".
    pub detail: String,
    /// The operating-system account the servers run as.
    pub server_user: String,
}

/// A running server, as the daemon records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHandle {
    /// The postmaster's process id.
    pub pid: u32,
    /// TCP port on 127.0.0.1 (also the Unix socket's port number).
    pub port: u16,
    /// Private folder holding the Unix socket and the server log.
    pub socket_dir: PathBuf,
    /// The data directory the server runs on.
    pub data_dir: PathBuf,
}

/// initdb options of every base cluster, native or Docker; all of them shape
/// its contents (and so its id). 1 MB WAL segments keep the WAL a state
/// carries small: a copy store copies all of it for every instance.
pub(crate) const INITDB_ARGS: &[&str] = &[
    "--username=postgres",
    "--encoding=UTF8",
    "--locale=C",
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    "--wal-segsize=1",
];

/// Server settings of every runtime: logs on stderr, the socket private,
/// durability as asked, and no WAL segments kept for reuse beyond two.
pub(crate) fn common_settings(opts: &ServerOptions) -> Vec<String> {
    let durability = if opts.durable { "on" } else { "off" };
    vec![
        "unix_socket_permissions=0700".into(),
        "logging_collector=off".into(),
        "log_destination=stderr".into(),
        format!("fsync={durability}"),
        format!("synchronous_commit={durability}"),
        "min_wal_size=2MB".into(),
    ]
}

/// How a server is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    /// `false` runs with `fsync=off` and `synchronous_commit=off`: states are
    /// synced by the store before they are recorded, so build and instance
    /// servers need not pay for durability.
    pub durable: bool,
    /// The port to try first: an instance started again keeps its DSN when
    /// its old port is free. Another free port is taken when it is not.
    pub port: Option<u16>,
}

/// The last bytes of a stream: psql's output is kept to its end, where an
/// error under `ON_ERROR_STOP` is, without holding all of a script that
/// prints millions of lines.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    buf: Vec<u8>,
    truncated: bool,
}

impl Tail {
    /// Bytes kept of each stream.
    pub(crate) const LIMIT: usize = 64 << 10;

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * Self::LIMIT {
            let cut = self.buf.len() - Self::LIMIT;
            self.buf.drain(..cut);
            self.truncated = true;
        }
    }

    pub(crate) fn into_string(mut self) -> String {
        if self.buf.len() > Self::LIMIT {
            let cut = self.buf.len() - Self::LIMIT;
            self.buf.drain(..cut);
            self.truncated = true;
        }
        let text = String::from_utf8_lossy(&self.buf);
        if self.truncated {
            // From the first whole line kept.
            let from = text.find('\n').map_or(0, |i| i + 1);
            format!("…\n{}", &text[from..])
        } else {
            text.into_owned()
        }
    }
}

/// What psql printed when it succeeded (the end of it: see [`Tail`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsqlOutput {
    pub stdout: String,
    pub stderr: String,
}

/// The operations sqlrs needs from a PostgreSQL runtime.
#[async_trait]
pub trait Runtime: Send + Sync {
    fn info(&self) -> RuntimeInfo;

    /// The PostgreSQL build and the initdb options of its base cluster.
    fn engine(&self) -> EngineIdentity;

    /// Makes `dir` (an existing directory) usable by the server account.
    fn adopt_dir(&self, dir: &Path) -> Result<(), RuntimeError>;

    /// Creates the base cluster in the existing empty directory `data_dir`.
    async fn init_base(&self, data_dir: &Path) -> Result<(), RuntimeError>;

    /// Starts a server on the writable data directory `data_dir`, with its
    /// socket and log in `run_dir`, and waits until it accepts connections.
    async fn start(
        &self,
        data_dir: &Path,
        run_dir: &Path,
        opts: &ServerOptions,
    ) -> Result<ServerHandle, RuntimeError>;

    /// Fast shutdown; returns once the postmaster is gone.
    async fn stop(&self, server: &ServerHandle) -> Result<(), RuntimeError>;

    /// Whether the server's postmaster is alive and still owns its data directory.
    fn is_running(&self, server: &ServerHandle) -> bool;

    async fn checkpoint(&self, server: &ServerHandle) -> Result<(), RuntimeError>;

    /// Sets the password of the superuser `postgres`.
    async fn set_password(&self, server: &ServerHandle, password: &str)
    -> Result<(), RuntimeError>;

    /// Client connections open on the server, not counting the one asking.
    async fn connection_count(&self, server: &ServerHandle) -> Result<u32, RuntimeError>;

    /// Runs psql as superuser `postgres` over the server's Unix socket with
    /// `args` (which already hold `-X -v ON_ERROR_STOP=1`), in `cwd`, reading
    /// `stdin` or nothing. Cancelling `cancel` interrupts psql.
    async fn run_psql(
        &self,
        server: &ServerHandle,
        args: &[String],
        cwd: &Path,
        stdin: Option<&Path>,
        cancel: &CancellationToken,
    ) -> Result<PsqlOutput, RuntimeError>;

    /// The connection string handed to users.
    fn dsn(&self, server: &ServerHandle, password: &str) -> String;
}

/// Everything that can go wrong while running PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "no PostgreSQL server binaries found (looked in: {searched}): install postgresql \
         (Debian: apt-get install postgresql) or set runtime.native.bin_dir"
    )]
    NoBinaries { searched: String },

    #[error(
        "runtime.native.bin_dir {} has no `{binary}`: point it at the folder holding initdb \
         and postgres (e.g. /usr/lib/postgresql/15/bin)",
        dir.display()
    )]
    BinDirIncomplete { dir: PathBuf, binary: &'static str },

    #[error(
        "no psql found in {} or on PATH: install the PostgreSQL client \
         (Debian: apt-get install postgresql-client)",
        bin_dir.display()
    )]
    NoPsql { bin_dir: PathBuf },

    #[error(
        "cannot read the PostgreSQL version from `{} --version` (it printed {output:?}): \
         reinstall PostgreSQL or set runtime.native.bin_dir to a working installation",
        binary.display()
    )]
    Version { binary: PathBuf, output: String },

    #[error(
        "sqlrsd runs as root and PostgreSQL refuses to run as root, but the server account \
         `{user}` does not exist: create it (useradd --system --user-group {user}) or set \
         runtime.native.server_user to an unprivileged account"
    )]
    NoServerUser { user: String },

    #[error(
        "runtime.native.server_user `{user}` is root, and PostgreSQL refuses to run as root: \
         set it to an unprivileged account"
    )]
    ServerUserIsRoot { user: String },

    #[error(
        "{} cannot be entered by the server account `{user}`, so PostgreSQL cannot reach its \
         data: allow it (chmod o+x {}) or keep the sqlrs state store elsewhere (not under /root)",
        dir.display(),
        dir.display()
    )]
    NotTraversable { dir: PathBuf, user: String },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{} is not an empty directory: initdb needs an empty one", dir.display())]
    NotEmpty { dir: PathBuf },

    #[error("initdb failed on {} ({status}):\n{output}", data_dir.display())]
    Initdb {
        data_dir: PathBuf,
        status: String,
        output: String,
    },

    #[error(
        "{} is not a PostgreSQL data directory (no PG_VERSION): the state is damaged; remove it",
        data_dir.display()
    )]
    NotADataDir { data_dir: PathBuf },

    #[error(
        "a server (pid {pid}) is already running on {}: stop it first",
        data_dir.display()
    )]
    AlreadyRunning { data_dir: PathBuf, pid: u32 },

    #[error(
        "cannot put the server socket in {}: {reason}; use a shorter state directory path",
        dir.display()
    )]
    SocketDir { dir: PathBuf, reason: &'static str },

    #[error(
        "PostgreSQL did not start on {}: {reason} (log {}):\n{tail}",
        data_dir.display(),
        log.display()
    )]
    StartFailed {
        data_dir: PathBuf,
        reason: String,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "PostgreSQL (pid {pid}) on {} did not exit even after SIGKILL: check `ps -p {pid}`",
        data_dir.display()
    )]
    StopFailed { data_dir: PathBuf, pid: u32 },

    #[error("{action} on the server at {} failed: {source}", socket_dir.display())]
    Sql {
        action: &'static str,
        socket_dir: PathBuf,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("psql exited with code {exit_code}: {stderr}")]
    Psql { exit_code: i32, stderr: String },

    #[error("psql was cancelled")]
    Cancelled,

    #[error("no PostgreSQL runtime is usable: Docker: {docker}; native: {native}")]
    NoRuntime { docker: String, native: String },

    #[error("this needs the native runtime, which is unavailable: {0}")]
    NativeUnavailable(String),

    #[error(
        "Docker is not reachable at {host}: {reason}: start dockerd there, or point \
         runtime.docker.host in the sqlrs config (else DOCKER_HOST) at a running one; \
         runtime.kind = native avoids Docker"
    )]
    DockerUnreachable { host: String, reason: String },

    #[error(
        "the Docker image {image} is not present and cannot be pulled ({reason}): build it \
         offline with packaging/docker/build-image.sh {image}, or pull it where a registry is \
         reachable"
    )]
    ImageMissing { image: String, reason: String },

    #[error(
        "cannot read the PostgreSQL version of the Docker image {image} (`postgres --version` \
         printed {output:?}): use an image with PostgreSQL server binaries on its PATH"
    )]
    ImageVersion { image: String, output: String },

    #[error("Docker could not {action}: {source}")]
    Docker {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// A fresh random password of 32 URL-safe characters (192 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is unavailable");
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 63)] as char)
        .collect()
}

/// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`, the password
/// percent-encoded where URLs require it.
pub(crate) fn loopback_dsn(port: u16, password: &str) -> String {
    let mut encoded = String::with_capacity(password.len());
    for b in password.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("postgres://postgres:{encoded}@127.0.0.1:{port}/postgres")
}

/// uid and gid of the account `name`, if it exists.
pub(crate) fn lookup_user(name: &str) -> io::Result<Option<(u32, u32)>> {
    let cname = CString::new(name).map_err(io::Error::other)?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `passwd` is plain data; all-zero is a valid value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to live memory of the stated size.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() => return Ok(None),
            0 => return Ok(Some((pwd.pw_uid, pwd.pw_gid))),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_end_of_long_output() {
        let mut short = Tail::default();
        short.push(b"one\ntwo\n");
        assert_eq!(short.into_string(), "one\ntwo\n");
        let mut long = Tail::default();
        for k in 0..100_000 {
            long.push(format!("line {k}\n").as_bytes());
        }
        long.push(b"ERROR:  the end\n");
        let text = long.into_string();
        assert!(text.starts_with("…\nline "), "{}", &text[..20]);
        assert!(text.ends_with("line 99999\nERROR:  the end\n"));
        assert!(text.len() <= Tail::LIMIT + 8, "{}", text.len());
    }

    #[test]
    fn passwords_are_long_url_safe_and_distinct() {
        let a = generate_password();
        let b = generate_password();
        assert!(a.len() >= 24, "{a}");
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn dsn_encodes_the_password() {
        let cases = [
            (
                "abc-_XYZ09",
                "postgres://postgres:abc-_XYZ09@127.0.0.1:5432/postgres",
            ),
            (
                "a b@c/d:e",
                "postgres://postgres:a%20b%40c%2Fd%3Ae@127.0.0.1:5432/postgres",
            ),
            ("%", "postgres://postgres:%25@127.0.0.1:5432/postgres"),
        ];
        for (password, want) in cases {
            assert_eq!(loopback_dsn(5432, password), want, "{password}");
        }
    }
}

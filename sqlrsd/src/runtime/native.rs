//! The native runtime: PostgreSQL servers from the host's binaries, run as an
//! unprivileged account when the daemon is root, detached from the daemon so
//! instances outlive it.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::admin::{self, SUPERUSER};
use super::launch::{self, Launch};
use super::{
    INITDB_ARGS, PsqlOutput, Runtime, RuntimeError, RuntimeInfo, ServerHandle, ServerOptions,
    common_settings, loopback_dsn,
};
use crate::ids::EngineIdentity;

/// initdb writes the host's time zone into postgresql.conf; pinning it keeps
/// the base cluster the same on every machine (and matches the Docker images).
const INITDB_TIMEZONE: &str = "UTC";

const READY_POLL: Duration = Duration::from_millis(5);
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Fast shutdown, then immediate shutdown, then SIGKILL, each with its grace time.
const STOP_SIGNALS: &[(libc::c_int, Duration)] = &[
    (libc::SIGINT, Duration::from_secs(60)),
    (libc::SIGQUIT, Duration::from_secs(5)),
    (libc::SIGKILL, Duration::from_secs(5)),
];
const PSQL_INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
const LOG_TAIL_LINES: usize = 40;

/// `runtime.native` in the daemon's configuration.
#[derive(Debug, Clone, Default)]
pub struct NativeConfig {
    /// Folder holding `initdb` and `postgres`; discovered when absent.
    pub bin_dir: Option<PathBuf>,
    /// Account servers run as when the daemon is root (default `postgres`).
    pub server_user: Option<String>,
}

/// PostgreSQL from the host's binaries.
#[derive(Debug, Clone)]
pub struct NativeRuntime {
    bin_dir: PathBuf,
    postgres: PathBuf,
    initdb: PathBuf,
    psql: PathBuf,
    version: String,
    account: Account,
}

/// The operating-system account that owns data directories and runs servers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
    /// The daemon is root: children switch to `uid`/`gid` and directories are chowned.
    switch: bool,
}

impl NativeRuntime {
    /// Finds the binaries, reads the server version and settles the account
    /// servers run as.
    pub fn detect(cfg: &NativeConfig) -> Result<Self, RuntimeError> {
        let bin_dir = find_bin_dir(cfg)?;
        let postgres = bin_dir.join("postgres");
        let initdb = bin_dir.join("initdb");
        let psql = Some(bin_dir.join("psql"))
            .filter(|p| is_executable(p))
            .or_else(|| which("psql"))
            .ok_or_else(|| RuntimeError::NoPsql {
                bin_dir: bin_dir.clone(),
            })?;
        let version = server_version(&postgres)?;
        let account = server_account(cfg)?;
        tracing::debug!(
            bin_dir = %bin_dir.display(), %version, account = %account.name,
            "native PostgreSQL runtime"
        );
        Ok(Self {
            bin_dir,
            postgres,
            initdb,
            psql,
            version,
            account,
        })
    }

    /// A command for initdb or postgres: clean environment, neutral working
    /// directory, the server account's identity.
    fn server_command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", search_path())
            .env("LANG", "C")
            .current_dir("/")
            .stdin(Stdio::null());
        if self.account.switch {
            cmd.uid(self.account.uid).gid(self.account.gid);
        }
        cmd
    }

    /// Gives `path` itself (not its contents) to the server account.
    fn own(&self, path: &Path) -> Result<(), RuntimeError> {
        if !self.account.switch {
            return Ok(());
        }
        let meta = fs::symlink_metadata(path).map_err(io_err("inspect", path))?;
        if meta.uid() != self.account.uid || meta.gid() != self.account.gid {
            std::os::unix::fs::lchown(path, Some(self.account.uid), Some(self.account.gid))
                .map_err(io_err("change the owner of", path))?;
        }
        Ok(())
    }

    fn own_tree(&self, path: &Path) -> Result<(), RuntimeError> {
        self.own(path)?;
        let meta = fs::symlink_metadata(path).map_err(io_err("inspect", path))?;
        if meta.is_dir() {
            for entry in fs::read_dir(path).map_err(io_err("read", path))? {
                let entry = entry.map_err(io_err("read", path))?;
                self.own_tree(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Every folder from `/` down to `dir` must be enterable by the server account.
    fn check_reachable(&self, dir: &Path) -> Result<(), RuntimeError> {
        if !self.account.switch {
            return Ok(());
        }
        let dir = fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
        for ancestor in dir.ancestors() {
            let meta = fs::metadata(ancestor).map_err(io_err("inspect", ancestor))?;
            if !can_enter(meta.uid(), meta.gid(), meta.mode(), &self.account) {
                return Err(RuntimeError::NotTraversable {
                    dir: ancestor.to_owned(),
                    user: self.account.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Ownership and mode PostgreSQL insists on, and no stale lock file.
    fn prepare_data_dir(&self, data_dir: &Path) -> Result<(), RuntimeError> {
        if !data_dir.join("PG_VERSION").is_file() {
            return Err(RuntimeError::NotADataDir {
                data_dir: data_dir.to_owned(),
            });
        }
        let meta = fs::metadata(data_dir).map_err(io_err("inspect", data_dir))?;
        if self.account.switch && meta.uid() != self.account.uid {
            tracing::debug!(dir = %data_dir.display(), "giving the data directory to the server account");
            self.own_tree(data_dir)?;
        }
        if meta.mode() & 0o027 != 0 {
            fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("restrict the permissions of", data_dir))?;
        }
        self.check_reachable(data_dir)?;
        remove_stale_pid_file(data_dir)
    }

    /// The private socket and log folder: 0700, owned by the server account.
    fn prepare_run_dir(&self, run_dir: &Path) -> Result<(), RuntimeError> {
        fs::create_dir_all(run_dir).map_err(io_err("create", run_dir))?;
        remove_stale_socket_locks(run_dir);
        self.own(run_dir)?;
        fs::set_permissions(run_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("restrict the permissions of", run_dir))?;
        self.check_reachable(run_dir)
    }

    /// One attempt to start the postmaster on `port`.
    async fn launch(
        &self,
        data_dir: &Path,
        run_dir: &Path,
        port: u16,
        opts: &ServerOptions,
    ) -> Result<ServerHandle, Launch> {
        let log_path = run_dir.join("postgres.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err("open", &log_path))?;
        let log_start = log.metadata().map_err(io_err("inspect", &log_path))?.len();
        let log_err = log.try_clone().map_err(io_err("open", &log_path))?;
        let mut cmd = self.server_command(&self.postgres);
        cmd.arg("-D").arg(data_dir);
        for setting in server_settings(port, run_dir, opts)? {
            cmd.arg("-c").arg(setting);
        }
        cmd.stdout(log).stderr(log_err).process_group(0);
        let mut child = cmd.spawn().map_err(io_err("run", &self.postgres))?;
        let Some(pid) = child.id() else {
            return Err(Launch::Failed(RuntimeError::Io {
                action: "track the process of",
                path: self.postgres.clone(),
                source: io::Error::other("the server exited before it could be tracked"),
            }));
        };
        let failed = |reason: String| RuntimeError::StartFailed {
            data_dir: data_dir.to_owned(),
            reason,
            log: log_path.clone(),
            tail: log_tail(&log_path, log_start),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(io_err("wait for", &self.postgres))?
            {
                let err = failed(format!("the server {}", describe_exit(status)));
                let port_taken =
                    matches!(&err, RuntimeError::StartFailed { tail, .. } if port_taken(tail));
                return Err(if port_taken {
                    Launch::PortTaken(err)
                } else {
                    Launch::Failed(err)
                });
            }
            if postmaster_ready(data_dir, pid) {
                reap_in_background(child, pid);
                return Ok(ServerHandle {
                    pid,
                    port,
                    socket_dir: run_dir.to_owned(),
                    data_dir: data_dir.to_owned(),
                });
            }
            if Instant::now() >= deadline {
                signal_group(pid, libc::SIGKILL);
                let _ = child.wait().await;
                return Err(Launch::Failed(failed(format!(
                    "it was not ready after {} s",
                    READY_TIMEOUT.as_secs()
                ))));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

#[async_trait]
impl Runtime for NativeRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            kind: "native",
            detail: format!("PostgreSQL {} ({})", self.version, self.bin_dir.display()),
            server_user: self.account.name.clone(),
        }
    }

    fn engine(&self) -> EngineIdentity {
        let mut initdb_args: Vec<String> = INITDB_ARGS.iter().map(|a| a.to_string()).collect();
        initdb_args.push(format!("TZ={INITDB_TIMEZONE}"));
        EngineIdentity {
            runtime: "native".into(),
            version: self.version.clone(),
            initdb_args,
            image_digest: String::new(),
        }
    }

    fn adopt_dir(&self, dir: &Path) -> Result<(), RuntimeError> {
        let dir = absolute(dir)?;
        self.own_tree(&dir)?;
        self.check_reachable(&dir)
    }

    async fn init_base(&self, data_dir: &Path) -> Result<(), RuntimeError> {
        let data_dir = absolute(data_dir)?;
        let mut entries = fs::read_dir(&data_dir).map_err(io_err("read", &data_dir))?;
        if entries.next().is_some() {
            return Err(RuntimeError::NotEmpty { dir: data_dir });
        }
        self.own(&data_dir)?;
        self.check_reachable(&data_dir)?;
        let mut cmd = self.server_command(&self.initdb);
        cmd.arg("-D")
            .arg(&data_dir)
            .args(INITDB_ARGS)
            // The store syncs every state before recording it.
            .arg("--no-sync")
            .env("TZ", INITDB_TIMEZONE);
        let out = cmd.output().await.map_err(io_err("run", &self.initdb))?;
        if !out.status.success() {
            let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&out.stderr));
            return Err(RuntimeError::Initdb {
                data_dir,
                status: describe_exit(out.status),
                output,
            });
        }
        Ok(())
    }

    async fn start(
        &self,
        data_dir: &Path,
        run_dir: &Path,
        opts: &ServerOptions,
    ) -> Result<ServerHandle, RuntimeError> {
        let started = Instant::now();
        let data_dir = absolute(data_dir)?;
        let run_dir = absolute(run_dir)?;
        self.prepare_data_dir(&data_dir)?;
        self.prepare_run_dir(&run_dir)?;
        let server = launch::on_free_port(opts.port, |port| {
            self.launch(&data_dir, &run_dir, port, opts)
        })
        .await?;
        tracing::debug!(
            pid = server.pid, port = server.port, dir = %data_dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "server ready"
        );
        Ok(server)
    }

    async fn stop(&self, server: &ServerHandle) -> Result<(), RuntimeError> {
        if !self.is_running(server) {
            return Ok(());
        }
        for &(signal, grace) in STOP_SIGNALS {
            if signal == libc::SIGKILL {
                signal_group(server.pid, signal);
            } else {
                send_signal(server.pid, signal);
            }
            if wait_gone(server.pid, grace).await {
                return Ok(());
            }
            tracing::warn!(
                pid = server.pid, dir = %server.data_dir.display(),
                "server still running {} s after signal {signal}", grace.as_secs()
            );
        }
        Err(RuntimeError::StopFailed {
            data_dir: server.data_dir.clone(),
            pid: server.pid,
        })
    }

    fn is_running(&self, server: &ServerHandle) -> bool {
        let pid_file = server.data_dir.join("postmaster.pid");
        let Ok(contents) = fs::read_to_string(pid_file) else {
            return false;
        };
        pid_file_owner(&contents) == Some(server.pid)
            && postmaster_of(server.pid, &server.data_dir) != Ownership::Other
    }

    async fn checkpoint(&self, server: &ServerHandle) -> Result<(), RuntimeError> {
        admin::checkpoint(server).await
    }

    async fn set_password(
        &self,
        server: &ServerHandle,
        password: &str,
    ) -> Result<(), RuntimeError> {
        admin::set_password(server, password).await
    }

    async fn connection_count(&self, server: &ServerHandle) -> Result<u32, RuntimeError> {
        admin::connection_count(server).await
    }

    async fn run_psql(
        &self,
        server: &ServerHandle,
        args: &[String],
        cwd: &Path,
        stdin: Option<&Path>,
        cancel: &CancellationToken,
    ) -> Result<PsqlOutput, RuntimeError> {
        let input = match stdin {
            Some(path) => Stdio::from(File::open(path).map_err(io_err("open", path))?),
            None => Stdio::null(),
        };
        let mut cmd = Command::new(&self.psql);
        cmd.env_clear()
            .env("PATH", search_path())
            .env("LANG", "C.UTF-8")
            .env("LC_MESSAGES", "C")
            .arg("-h")
            .arg(&server.socket_dir)
            .arg("-p")
            .arg(server.port.to_string())
            .arg("-U")
            .arg(SUPERUSER)
            .arg("-d")
            .arg("postgres")
            .arg("--no-password")
            .args(args)
            .current_dir(cwd)
            .stdin(input)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // psql belongs to the request running it: a dropped request
            // must not leave it behind (servers, unlike psql, never do this).
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(io_err("run psql in", cwd))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let waited = async {
            let status = tokio::select! {
                status = child.wait() => Some(status),
                () = cancel.cancelled() => None,
            };
            match status {
                Some(status) => Some(status),
                None => {
                    interrupt_psql(&mut child).await;
                    None
                }
            }
        };
        let (status, out, err) = tokio::join!(waited, read_tail(stdout), read_tail(stderr));
        let Some(status) = status else {
            return Err(RuntimeError::Cancelled);
        };
        let status = status.map_err(io_err("wait for", &self.psql))?;
        let stdout = out.into_string();
        let stderr = err.into_string();
        if status.success() {
            Ok(PsqlOutput { stdout, stderr })
        } else {
            Err(RuntimeError::Psql {
                exit_code: exit_code(status),
                stderr,
            })
        }
    }

    fn dsn(&self, server: &ServerHandle, password: &str) -> String {
        loopback_dsn(server.port, password)
    }
}

/// Whether a failed start's log says another process holds the port: the
/// server runs with `LANG=C`, so the system's message is in English.
fn port_taken(log_tail: &str) -> bool {
    log_tail.contains("Address already in use")
}

/// psql cancels the running query on SIGINT and then exits; if it does not,
/// it is killed.
async fn interrupt_psql(child: &mut Child) {
    let Some(pid) = child.id() else { return };
    signal_group(pid, libc::SIGINT);
    if tokio::time::timeout(PSQL_INTERRUPT_GRACE, child.wait())
        .await
        .is_err()
    {
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
}

async fn read_tail(mut pipe: impl AsyncRead + Unpin) -> super::Tail {
    let mut tail = super::Tail::default();
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => tail.push(&chunk[..n]),
            Err(e) => {
                tracing::debug!("reading psql output: {e}");
                break;
            }
        }
    }
    tail
}

/// Waits for the postmaster in a background task so it never lingers as a
/// zombie while the daemon lives; the server itself outlives the daemon.
fn reap_in_background(mut child: Child, pid: u32) {
    tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => tracing::debug!(pid, "server {}", describe_exit(status)),
            Err(e) => tracing::warn!(pid, "cannot wait for the server: {e}"),
        }
    });
}

fn find_bin_dir(cfg: &NativeConfig) -> Result<PathBuf, RuntimeError> {
    if let Some(dir) = &cfg.bin_dir {
        for binary in ["postgres", "initdb"] {
            if !is_executable(&dir.join(binary)) {
                return Err(RuntimeError::BinDirIncomplete {
                    dir: dir.clone(),
                    binary,
                });
            }
        }
        return Ok(dir.clone());
    }
    let candidates = [
        pg_config_bindir(),
        path_server_dir(),
        newest_debian_bin_dir(),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|dir| has_server(dir))
        .ok_or_else(|| RuntimeError::NoBinaries {
            searched: "pg_config --bindir, postgres on PATH, /usr/lib/postgresql/*/bin".into(),
        })
}

fn has_server(dir: &Path) -> bool {
    is_executable(&dir.join("postgres")) && is_executable(&dir.join("initdb"))
}

fn pg_config_bindir() -> Option<PathBuf> {
    let pg_config = which("pg_config")?;
    let out = std::process::Command::new(pg_config)
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The real folder of `postgres` on PATH (following symlinks such as
/// /usr/local/bin/postgres -> /usr/lib/postgresql/15/bin/postgres).
fn path_server_dir() -> Option<PathBuf> {
    let postgres = fs::canonicalize(which("postgres")?).ok()?;
    postgres.parent().map(Path::to_owned)
}

fn newest_debian_bin_dir() -> Option<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let names = fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect::<Vec<_>>();
    let newest = newest_version(names.iter().map(String::as_str))?;
    Some(root.join(newest).join("bin"))
}

/// The highest numeric version among folder names like "15" or "9.6".
fn newest_version<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names
        .filter_map(|name| {
            let parts = name
                .split('.')
                .map(|p| p.parse::<u32>().ok())
                .collect::<Option<Vec<_>>>()?;
            Some((parts, name))
        })
        .max()
        .map(|(_, name)| name)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

fn search_path() -> OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into())
}

fn server_version(postgres: &Path) -> Result<String, RuntimeError> {
    let out = std::process::Command::new(postgres)
        .arg("--version")
        .env_clear()
        .output()
        .map_err(io_err("run", postgres))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_version(&text)
        .filter(|_| out.status.success())
        .ok_or_else(|| RuntimeError::Version {
            binary: postgres.to_owned(),
            output: text.trim().to_owned(),
        })
}

/// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> "15.18".
fn parse_version(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("(PostgreSQL)")?;
    let version = rest.split_whitespace().next()?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_owned())
}

fn server_account(cfg: &NativeConfig) -> Result<Account, RuntimeError> {
    // SAFETY: geteuid and getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != 0 {
        if let Some(user) = &cfg.server_user {
            tracing::debug!(
                "runtime.native.server_user `{user}` applies only when sqlrsd runs as root"
            );
        }
        return Ok(Account {
            name: user_name(euid).unwrap_or_else(|| euid.to_string()),
            uid: euid,
            gid: egid,
            switch: false,
        });
    }
    let name = cfg.server_user.clone().unwrap_or_else(|| SUPERUSER.into());
    let (uid, gid) = super::lookup_user(&name)
        .map_err(io_err("look up the account in", Path::new("/etc/passwd")))?
        .ok_or_else(|| RuntimeError::NoServerUser { user: name.clone() })?;
    if uid == 0 {
        return Err(RuntimeError::ServerUserIsRoot { user: name });
    }
    Ok(Account {
        name,
        uid,
        gid,
        switch: true,
    })
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `passwd` is plain data; all-zero is a valid value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to live memory of the stated size.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() => return None,
            0 => {
                // SAFETY: on success pw_name points to a NUL-terminated string in `buf`.
                let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
                return Some(name.to_string_lossy().into_owned());
            }
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            _ => return None,
        }
    }
}

/// Whether `account` may search a folder with this owner and mode
/// (supplementary groups do not count: children drop them).
fn can_enter(uid: u32, gid: u32, mode: u32, account: &Account) -> bool {
    let bit = if uid == account.uid {
        0o100
    } else if gid == account.gid {
        0o010
    } else {
        0o001
    };
    mode & bit != 0
}

/// The `-c` settings of a server; nothing is written into the data directory.
fn server_settings(
    port: u16,
    run_dir: &Path,
    opts: &ServerOptions,
) -> Result<Vec<String>, RuntimeError> {
    let socket_error = |reason| RuntimeError::SocketDir {
        dir: run_dir.to_owned(),
        reason,
    };
    let dir = run_dir
        .to_str()
        .ok_or_else(|| socket_error("the path is not valid UTF-8"))?;
    if dir.contains('"') {
        return Err(socket_error("the path contains a double quote"));
    }
    if dir.len() + "/.s.PGSQL.65535".len() > MAX_SOCKET_PATH {
        return Err(socket_error(
            "the socket path would exceed the 107 bytes Unix sockets allow",
        ));
    }
    let mut settings = vec![
        format!("port={port}"),
        "listen_addresses=127.0.0.1".into(),
        format!("unix_socket_directories=\"{dir}\""),
    ];
    settings.extend(common_settings(opts));
    Ok(settings)
}

/// The pid on the first line of a postmaster.pid.
fn pid_file_owner(contents: &str) -> Option<u32> {
    contents.lines().next()?.trim().parse().ok()
}

/// The status line (8th) of a postmaster.pid written by `pid`.
fn pid_file_status(contents: &str, pid: u32) -> Option<&str> {
    if pid_file_owner(contents)? != pid {
        return None;
    }
    contents.lines().nth(7).map(str::trim)
}

fn postmaster_ready(data_dir: &Path, pid: u32) -> bool {
    fs::read_to_string(data_dir.join("postmaster.pid"))
        .is_ok_and(|c| pid_file_status(&c, pid) == Some("ready"))
}

/// Stops a postmaster still serving `data_dir` that nobody tracks (its
/// daemon died between starting it and recording it): immediate shutdown,
/// then SIGKILL of its process group. True when one was found.
pub async fn stop_stray(data_dir: &Path) -> bool {
    let mut found = false;
    if let Ok(contents) = fs::read_to_string(data_dir.join("postmaster.pid"))
        && let Some(pid) = pid_file_owner(&contents)
        && postmaster_of(pid, data_dir) == Ownership::This
    {
        tracing::info!(pid, dir = %data_dir.display(), "stopping a server nobody tracks");
        found = true;
        send_signal(pid, libc::SIGQUIT);
        if !wait_gone(pid, Duration::from_secs(5)).await {
            signal_group(pid, libc::SIGKILL);
            wait_gone(pid, Duration::from_secs(5)).await;
        }
    }
    // Backends of a postmaster that was killed outlive it for a while and
    // keep its shared memory, which stops a new server from starting: every
    // process still working in the directory goes.
    let Ok(dir) = fs::canonicalize(data_dir) else {
        return found;
    };
    let left: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .collect();
    for &pid in &left {
        tracing::info!(pid, dir = %dir.display(), "stopping a process left by a dead server");
        send_signal(pid, libc::SIGKILL);
    }
    for &pid in &left {
        wait_gone(pid, Duration::from_secs(5)).await;
    }
    found || !left.is_empty()
}

/// Socket lock files (`.s.PGSQL.PORT.lock`) of a server that died without
/// removing them: PostgreSQL refuses a port whose lock names a process that
/// answers signals, which a dead server's unreaped zombie still does.
fn remove_stale_socket_locks(run_dir: &Path) {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(socket) = name
            .strip_prefix(".s.PGSQL.")
            .and_then(|rest| rest.strip_suffix(".lock"))
            .map(|port| run_dir.join(format!(".s.PGSQL.{port}")))
        else {
            continue;
        };
        let owner = fs::read_to_string(e.path())
            .ok()
            .and_then(|c| pid_file_owner(&c));
        if owner.is_some_and(process_alive) {
            continue;
        }
        tracing::debug!(file = %e.path().display(), "removing a stale socket lock");
        let _ = fs::remove_file(e.path());
        let _ = fs::remove_file(socket);
    }
}

/// A postmaster.pid copied along with a snapshot names a process that does
/// not serve this directory; only a live postmaster of this very directory
/// keeps its lock file.
fn remove_stale_pid_file(data_dir: &Path) -> Result<(), RuntimeError> {
    let pid_file = data_dir.join("postmaster.pid");
    let contents = match fs::read_to_string(&pid_file) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", &pid_file)(e)),
    };
    if let Some(pid) = pid_file_owner(&contents)
        && postmaster_of(pid, data_dir) != Ownership::Other
    {
        return Err(RuntimeError::AlreadyRunning {
            data_dir: data_dir.to_owned(),
            pid,
        });
    }
    tracing::debug!(file = %pid_file.display(), "removing a stale lock file");
    fs::remove_file(&pid_file).map_err(io_err("remove the stale lock file", &pid_file))
}

#[derive(Debug, PartialEq, Eq)]
enum Ownership {
    /// The process is alive and its working directory is the data directory.
    This,
    /// The process is alive but its working directory cannot be read.
    Unknown,
    /// No such process, or it works elsewhere.
    Other,
}

/// Whether `pid` is a live process serving `data_dir` (a postmaster runs in
/// its data directory).
fn postmaster_of(pid: u32, data_dir: &Path) -> Ownership {
    if !process_alive(pid) {
        return Ownership::Other;
    }
    let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) else {
        return Ownership::Unknown;
    };
    match fs::canonicalize(data_dir) {
        Ok(dir) if dir == cwd => Ownership::This,
        Ok(_) => Ownership::Other,
        Err(_) => Ownership::Unknown,
    }
}

/// Alive and not a zombie.
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) if Path::new("/proc/self/stat").exists() => false,
        Err(_) => match to_pid(pid) {
            Some(p) => {
                // SAFETY: signal 0 only checks that the process exists.
                let exists = unsafe { libc::kill(p, 0) } == 0;
                exists || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
            }
            None => false,
        },
    }
}

async fn wait_gone(pid: u32, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        if !process_alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// A pid that can be signalled without hitting a group or init.
fn to_pid(pid: u32) -> Option<libc::pid_t> {
    libc::pid_t::try_from(pid).ok().filter(|&p| p > 1)
}

fn send_signal(pid: u32, signal: libc::c_int) {
    if let Some(p) = to_pid(pid) {
        // SAFETY: `p` is a single positive pid other than init.
        unsafe { libc::kill(p, signal) };
    }
}

/// Signals the process group led by `pid` (servers and psql lead their own),
/// or just `pid` when it leads none.
fn signal_group(pid: u32, signal: libc::c_int) {
    let Some(p) = to_pid(pid) else { return };
    // SAFETY: getpgid only reads the process table.
    if unsafe { libc::getpgid(p) } == p {
        // SAFETY: `p` is a positive process group id other than init's.
        unsafe { libc::killpg(p, signal) };
    } else {
        send_signal(pid, signal);
    }
}

/// The log written since `from`, last lines only.
fn log_tail(log: &Path, from: u64) -> String {
    let mut text = Vec::new();
    let read = File::open(log).and_then(|mut f| {
        f.seek(SeekFrom::Start(from))?;
        f.read_to_end(&mut text)
    });
    if let Err(e) = read {
        return format!("(cannot read the log: {e})");
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "exited".into(),
    }
}

fn absolute(path: &Path) -> Result<PathBuf, RuntimeError> {
    std::path::absolute(path).map_err(io_err("resolve", path))
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RuntimeError {
    let path = path.to_owned();
    move |source| RuntimeError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        Account {
            name: "postgres".into(),
            uid: 101,
            gid: 104,
            switch: true,
        }
    }

    #[test]
    fn entering_folders() {
        let cases = [
            (0, 0, 0o755, true),
            (0, 0, 0o700, false),
            (0, 0, 0o711, true),
            (0, 104, 0o750, true),
            (0, 104, 0o705, false),
            (101, 0, 0o700, true),
            (101, 0, 0o077, false),
        ];
        for (uid, gid, mode, want) in cases {
            assert_eq!(
                can_enter(uid, gid, mode, &account()),
                want,
                "uid {uid} gid {gid} mode {mode:o}"
            );
        }
    }

    /// What PostgreSQL 15 logs when 127.0.0.1:PORT is taken makes the launch
    /// try another port ([`launch::on_free_port`] retries `PortTaken`);
    /// other start failures do not.
    #[test]
    fn a_taken_port_is_recognised_in_the_server_log() {
        let taken = "\
2026-12-07 04:52:19.208 UTC [18496] LOG:  starting PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64-pc-linux-gnu
2026-12-07 04:52:19.208 UTC [18496] LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use
2026-12-07 04:52:19.208 UTC [18496] HINT:  Is another postmaster already running on port 46607? If not, wait a few seconds and retry.
2026-12-07 04:52:19.208 UTC [18496] WARNING:  could not create listen socket for \"127.0.0.1\"
2026-12-07 04:52:19.208 UTC [18496] FATAL:  could not create any TCP/IP sockets
2026-12-07 04:52:19.210 UTC [18496] LOG:  database system is shut down
";
        let other = "\
2026-12-07 04:52:19.208 UTC [18496] FATAL:  data directory \"/d\" has invalid permissions
2026-12-07 04:52:19.208 UTC [18496] DETAIL:  Permissions should be u=rwx (0700) or u=rwx,g=rx (0750).
";
        assert!(port_taken(taken));
        assert!(!port_taken(other));
        assert!(!port_taken(""));
    }

    #[test]
    fn versions() {
        let cases = [
            (
                "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n",
                Some("15.18"),
            ),
            ("postgres (PostgreSQL) 17.2\n", Some("17.2")),
            ("postgres (PostgreSQL) 18beta1\n", Some("18beta1")),
            ("postgres (PostgreSQL)\n", None),
            ("something else 1.0\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_version(text).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn newest_installed_version() {
        let cases: [(&[&str], Option<&str>); 4] = [
            (&["15"], Some("15")),
            (&["9.6", "13", "17", "15"], Some("17")),
            (&["10", "9.6", "tools"], Some("10")),
            (&["tools"], None),
        ];
        for (names, want) in cases {
            assert_eq!(newest_version(names.iter().copied()), want, "{names:?}");
        }
    }

    #[test]
    fn pid_file_lines() {
        let ready = "4242\n/data\n1700000000\n5432\n/run\n127.0.0.1\n  1234  5678\nready   \n";
        let starting = ready.replace("ready   ", "starting");
        assert_eq!(pid_file_owner(ready), Some(4242));
        assert_eq!(pid_file_status(ready, 4242), Some("ready"));
        assert_eq!(pid_file_status(&starting, 4242), Some("starting"));
        assert_eq!(pid_file_status(ready, 4243), None);
        assert_eq!(pid_file_status("4242\n/data\n", 4242), None);
        assert_eq!(pid_file_owner("garbage\n"), None);
    }

    #[test]
    fn literals_are_quoted() {
        let cases = [
            ("abc", "E'abc'"),
            ("it's", "E'it''s'"),
            ("back\\slash", "E'back\\\\slash'"),
        ];
        for (value, want) in cases {
            assert_eq!(admin::quote_literal(value), want);
        }
    }

    #[test]
    fn settings_reject_unusable_socket_dirs() {
        let opts = ServerOptions {
            durable: false,
            port: None,
        };
        let long = PathBuf::from(format!("/{}", "x".repeat(100)));
        for dir in [long, PathBuf::from("/tmp/with\"quote")] {
            assert!(matches!(
                server_settings(5432, &dir, &opts),
                Err(RuntimeError::SocketDir { .. })
            ));
        }
        let settings = server_settings(5432, Path::new("/run/x"), &opts).unwrap();
        assert!(settings.contains(&"unix_socket_directories=\"/run/x\"".to_string()));
        assert!(settings.contains(&"fsync=off".to_string()));
        let durable = server_settings(
            5432,
            Path::new("/run/x"),
            &ServerOptions {
                durable: true,
                port: None,
            },
        );
        assert!(
            durable
                .unwrap()
                .contains(&"synchronous_commit=on".to_string())
        );
    }
}

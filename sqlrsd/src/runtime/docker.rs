//! The Docker runtime: PostgreSQL servers in containers of one image, driven
//! through the Docker API (bollard), on data directories bind-mounted from the
//! state store so the same snapshotters serve both runtimes.
//!
//! Every server container runs `postgres` as the host's server account, with
//! its data directory at [`DATA_DIR`], its run folder (Unix socket) at
//! [`SOCKET_DIR`], and the shared folders (the store's `exec/`) read-only at
//! their own paths, so psql runs inside the container with host paths as given.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::admin::{self, SUPERUSER, sql_err};
use super::launch::{self, Launch};
use super::{
    PsqlOutput, Runtime, RuntimeError, RuntimeInfo, ServerHandle, ServerOptions, loopback_dsn,
};
use crate::ids::{Digest, EngineIdentity};

/// Where a server's data directory is mounted inside its container.
pub const DATA_DIR: &str = "/var/lib/postgresql/data";
/// Where a server's run folder (its Unix socket) is mounted inside its container.
pub const SOCKET_DIR: &str = "/run/sqlrs";
/// The image label packaging/docker/build-image.sh sets to the server version.
pub const VERSION_LABEL: &str = "org.sqlrs.postgres.version";

/// Labels on every container sqlrs makes.
pub const LABEL_MANAGED: &str = "sqlrs.managed";
pub const LABEL_DATA_DIR: &str = "sqlrs.data_dir";
pub const LABEL_INSTANCE: &str = "sqlrs.instance";
pub const LABEL_IMAGE: &str = "sqlrs.image";

const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
const INITDB_TIMEZONE: &str = "UTC";
/// Host connections reach a container from its bridge gateway, not 127.0.0.1:
/// the base cluster accepts password logins from any address (the port is
/// published on the host's loopback only).
const HBA_LINE: &str = "host all all all scram-sha-256";
const READY_POLL: Duration = Duration::from_millis(5);
const STATE_POLL: Duration = Duration::from_millis(200);
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a container may stay in Podman's transient `stopped` state (see
/// [`podman_stopped`]) before listing containers gives up.
const PODMAN_CLEANUP_WAIT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT_SECS: i32 = 60;
const CANCEL_GRACE: Duration = Duration::from_secs(3);
const LOG_TAIL_LINES: usize = 40;
const SHM_SIZE: i64 = 256 << 20;

/// `runtime.docker` in the daemon's configuration.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    /// Image reference, e.g. `sqlrs/postgres:15` or `postgres:17`.
    pub image: String,
    /// How server containers are networked.
    pub network: Network,
    /// Daemon address (`unix:///…`, `tcp://…`); else `DOCKER_HOST`, else
    /// `unix:///var/run/docker.sock`.
    pub docker_host: Option<String>,
    /// Folders mounted read-only at their own path in every server container:
    /// the store's `exec/` folder, so psql finds its scripts where the host
    /// put them.
    pub shared_dirs: Vec<PathBuf>,
}

/// How server containers are networked (`runtime.docker.network`). Either
/// way a server is reachable on the host's 127.0.0.1 only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network namespace, the server listening on 127.0.0.1:
    /// nothing to publish, so a container starts in about half the time.
    /// sqlrs bind-mounts store folders and the server's socket folder, so
    /// its Docker daemon shares the host's kernel anyway.
    #[default]
    Host,
    /// Docker's default bridge, the server's port published on 127.0.0.1.
    Bridge,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::Bridge => "bridge",
        }
    }
}

/// PostgreSQL in Docker containers.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    host: String,
    image: String,
    /// What containers run: the resolved image id.
    image_id: String,
    /// The engine identity's digest: the repo digest, else the image id.
    digest: String,
    version: String,
    account: Account,
    shared_dirs: Vec<PathBuf>,
    network: Network,
}

/// The account containers run as (numeric, so it holds in any image).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
    /// The daemon is root: directories are chowned to `uid`/`gid`.
    chown: bool,
}

/// Which stream a chunk of command output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// How [`DockerRuntime::exec_stream`] runs a command.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Working directory inside the container (a shared folder path).
    pub cwd: Option<PathBuf>,
    /// Extra `NAME=value` environment entries.
    pub env: Vec<String>,
    /// A host file fed to the command's standard input.
    pub stdin: Option<PathBuf>,
}

/// A container carrying sqlrs's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    pub id: String,
    pub name: String,
    /// The data directory it serves.
    pub data_dir: PathBuf,
    /// The instance id (the data directory's parent folder name).
    pub instance: String,
    pub running: bool,
}

impl DockerRuntime {
    /// Reaches the daemon, resolves the image (pulling it when absent) and
    /// reads its PostgreSQL version.
    pub async fn connect(cfg: &DockerConfig) -> Result<Self, RuntimeError> {
        let host = cfg
            .docker_host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_HOST.into());
        let docker = client(&host).await?;
        let account = server_account()?;
        let mut rt = Self {
            docker,
            host,
            image: cfg.image.clone(),
            image_id: String::new(),
            digest: String::new(),
            version: String::new(),
            account,
            network: cfg.network,
            shared_dirs: cfg
                .shared_dirs
                .iter()
                .map(|d| absolute(d))
                .collect::<Result<_, _>>()?,
        };
        rt.resolve_image().await?;
        tracing::debug!(
            host = %rt.host, image = %rt.image, digest = %rt.digest, version = %rt.version,
            "Docker PostgreSQL runtime"
        );
        Ok(rt)
    }

    /// The daemon address in use.
    pub fn docker_host(&self) -> &str {
        &self.host
    }

    /// The image's digest as recorded in the engine identity.
    pub fn image_digest(&self) -> &str {
        &self.digest
    }

    /// `-h SOCKET_DIR -p PORT -U postgres`: the connection flags of a client
    /// (psql, pgbench) run inside the server's container.
    pub fn connection_args(&self, server: &ServerHandle) -> Vec<String> {
        vec![
            "-h".into(),
            SOCKET_DIR.into(),
            "-p".into(),
            server.port.to_string(),
            "-U".into(),
            SUPERUSER.into(),
        ]
    }

    /// The name of the container serving `data_dir`.
    pub fn container_name(data_dir: &Path) -> String {
        let digest = Digest::of(data_dir.as_os_str().as_encoded_bytes());
        format!("sqlrs-{}", &digest.to_hex()[..16])
    }

    async fn resolve_image(&mut self) -> Result<(), RuntimeError> {
        let inspect = match self.docker.inspect_image(&self.image).await {
            Ok(i) => i,
            Err(e) if not_found(&e) => {
                self.pull().await?;
                self.docker
                    .inspect_image(&self.image)
                    .await
                    .map_err(docker_err(format!("inspect the image {}", self.image)))?
            }
            Err(e) => return Err(docker_err(format!("inspect the image {}", self.image))(e)),
        };
        self.image_id = inspect.id.clone().unwrap_or_default();
        self.digest = inspect
            .repo_digests
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find_map(|d| d.split_once('@').map(|(_, digest)| digest.to_owned()))
            .unwrap_or_else(|| self.image_id.clone());
        let label = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(VERSION_LABEL))
            .cloned();
        self.version = match label {
            Some(v) => v,
            None => self.probe_version().await?,
        };
        Ok(())
    }

    async fn pull(&self) -> Result<(), RuntimeError> {
        tracing::info!(image = %self.image, "pulling the image");
        let opts = CreateImageOptions {
            from_image: Some(self.image.clone()),
            ..Default::default()
        };
        let mut progress = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = progress.next().await {
            if let Err(e) = item {
                return Err(RuntimeError::ImageMissing {
                    image: self.image.clone(),
                    reason: e.to_string(),
                });
            }
        }
        Ok(())
    }

    /// `postgres --version` in a short-lived container.
    async fn probe_version(&self) -> Result<String, RuntimeError> {
        let (_, output) = self
            .run_once("postgres", vec!["--version".into()], Vec::new(), Vec::new())
            .await?;
        parse_version(&output).ok_or_else(|| RuntimeError::ImageVersion {
            image: self.image.clone(),
            output,
        })
    }

    /// Runs `program args` to completion in a fresh container as the server
    /// account; returns its exit code and combined output.
    async fn run_once(
        &self,
        program: &str,
        args: Vec<String>,
        env: Vec<String>,
        binds: Vec<String>,
    ) -> Result<(i64, String), RuntimeError> {
        let name = format!("sqlrs-run-{}", random_suffix());
        let body = ContainerCreateBody {
            image: Some(self.image_id.clone()),
            entrypoint: Some(vec![program.into()]),
            cmd: Some(args),
            env: Some(env),
            user: Some(self.account.spec()),
            labels: Some(HashMap::from([(LABEL_MANAGED.into(), "true".into())])),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                binds: Some(binds),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create(&name, body).await?;
        let result = async {
            self.docker
                .start_container(&name, None)
                .await
                .map_err(docker_err(format!("start the container {name}")))?;
            let mut wait = self.docker.wait_container(&name, None);
            let code = match wait.next().await {
                Some(Ok(r)) => r.status_code,
                Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
                Some(Err(e)) => {
                    return Err(docker_err(format!("wait for the container {name}"))(e));
                }
                None => -1,
            };
            Ok((code, self.logs(&name, None).await))
        }
        .await;
        self.remove(&name).await;
        result
    }

    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, RuntimeError> {
        let opts = CreateContainerOptions {
            name: Some(name.into()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(docker_err(format!("create the container {name}")))?;
        Ok(created.id)
    }

    /// Force-removes a container; a missing one is fine.
    async fn remove(&self, name: &str) {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => tracing::warn!(container = name, "cannot remove the container: {e}"),
        }
    }

    /// The container's output, last `tail` lines (all when `None`).
    async fn logs(&self, name: &str, tail: Option<usize>) -> String {
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            tail: tail.map_or_else(|| "all".into(), |n| n.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.logs(name, Some(opts));
        let mut text = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(out) => text.extend_from_slice(out.into_bytes().as_ref()),
                Err(e) => {
                    text.extend_from_slice(format!("(cannot read the log: {e})").as_bytes());
                    break;
                }
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Gives `path` itself to the server account.
    fn own(&self, path: &Path) -> Result<(), RuntimeError> {
        if !self.account.chown {
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

    /// Ownership and mode PostgreSQL insists on, and no stale lock file.
    async fn prepare_data_dir(&self, data_dir: &Path) -> Result<(), RuntimeError> {
        if !data_dir.join("PG_VERSION").is_file() {
            return Err(RuntimeError::NotADataDir {
                data_dir: data_dir.to_owned(),
            });
        }
        let meta = fs::metadata(data_dir).map_err(io_err("inspect", data_dir))?;
        if self.account.chown && meta.uid() != self.account.uid {
            self.own_tree(data_dir)?;
        }
        if meta.mode() & 0o027 != 0 {
            fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("restrict the permissions of", data_dir))?;
        }
        let name = Self::container_name(data_dir);
        if let Some(pid) = self.running_pid(&name).await? {
            return Err(RuntimeError::AlreadyRunning {
                data_dir: data_dir.to_owned(),
                pid,
            });
        }
        // A stopped container of an earlier server on this directory.
        self.remove(&name).await;
        let pid_file = data_dir.join("postmaster.pid");
        match fs::remove_file(&pid_file) {
            Ok(()) => tracing::debug!(file = %pid_file.display(), "removed a stale lock file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove the stale lock file", &pid_file)(e)),
        }
        Ok(())
    }

    /// The private socket and log folder: 0700, owned by the server account.
    fn prepare_run_dir(&self, run_dir: &Path) -> Result<(), RuntimeError> {
        fs::create_dir_all(run_dir).map_err(io_err("create", run_dir))?;
        self.own(run_dir)?;
        fs::set_permissions(run_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("restrict the permissions of", run_dir))
    }

    /// The host pid of the container `name` when it runs.
    async fn running_pid(&self, name: &str) -> Result<Option<u32>, RuntimeError> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                Ok((state.running == Some(true))
                    .then(|| state.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0)))
            }
            Err(e) if not_found(&e) || podman_stopped(&e) => Ok(None),
            Err(e) => Err(docker_err(format!("inspect the container {name}"))(e)),
        }
    }

    fn server_body(
        &self,
        data_dir: &Path,
        run_dir: &Path,
        port: u16,
        opts: &ServerOptions,
    ) -> ContainerCreateBody {
        let host_network = self.network == Network::Host;
        let listen = if host_network { "127.0.0.1" } else { "*" };
        let mut settings = vec![
            format!("port={port}"),
            format!("listen_addresses={listen}"),
            format!("unix_socket_directories={SOCKET_DIR}"),
        ];
        settings.extend(super::common_settings(opts));
        let mut cmd = vec!["-D".to_string(), DATA_DIR.into()];
        for s in settings {
            cmd.push("-c".into());
            cmd.push(s);
        }
        let mut binds = vec![
            format!("{}:{DATA_DIR}", data_dir.display()),
            format!("{}:{SOCKET_DIR}", run_dir.display()),
        ];
        for dir in &self.shared_dirs {
            binds.push(format!("{0}:{0}:ro", dir.display()));
        }
        let instance = data_dir
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_DATA_DIR.into(), data_dir.display().to_string()),
            (LABEL_INSTANCE.into(), instance),
            (LABEL_IMAGE.into(), self.digest.clone()),
        ]);
        let port_key = format!("{port}/tcp");
        let (exposed_ports, port_bindings, network_mode) = if host_network {
            (None, None, Some("host".to_string()))
        } else {
            (
                Some(vec![port_key.clone()]),
                Some(HashMap::from([(
                    port_key,
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(port.to_string()),
                    }]),
                )])),
                None,
            )
        };
        ContainerCreateBody {
            image: Some(self.image_id.clone()),
            entrypoint: Some(vec!["postgres".into()]),
            cmd: Some(cmd),
            env: Some(vec!["LANG=C".into()]),
            user: Some(self.account.spec()),
            labels: Some(labels),
            exposed_ports,
            stop_signal: Some("SIGINT".into()),
            stop_timeout: Some(STOP_TIMEOUT_SECS.into()),
            host_config: Some(HostConfig {
                binds: Some(binds),
                port_bindings,
                network_mode,
                shm_size: Some(SHM_SIZE),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// One attempt to start a server container on `port`.
    async fn launch(
        &self,
        data_dir: &Path,
        run_dir: &Path,
        port: u16,
        opts: &ServerOptions,
    ) -> Result<ServerHandle, Launch> {
        let name = Self::container_name(data_dir);
        let log = run_dir.join("postgres.log");
        let t0 = Instant::now();
        self.create(&name, self.server_body(data_dir, run_dir, port, opts))
            .await?;
        let created = t0.elapsed();
        let started = self.docker.start_container(&name, None).await;
        tracing::debug!(
            create_ms = created.as_millis() as u64,
            start_ms = (t0.elapsed() - created).as_millis() as u64,
            "container {name} created and started"
        );
        if let Err(e) = started {
            self.remove(&name).await;
            let text = e.to_string();
            let err = docker_err(format!("start the container {name}"))(e);
            return Err(
                if text.contains("already allocated") || text.contains("in use") {
                    Launch::PortTaken(err)
                } else {
                    Launch::Failed(err)
                },
            );
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut next_check = Instant::now();
        loop {
            if postmaster_ready(data_dir) {
                let pid = self.running_pid(&name).await?.unwrap_or(0);
                return Ok(ServerHandle {
                    pid,
                    port,
                    socket_dir: run_dir.to_owned(),
                    data_dir: data_dir.to_owned(),
                });
            }
            let now = Instant::now();
            let timed_out = now >= deadline;
            if timed_out || now >= next_check {
                next_check = now + STATE_POLL;
                let running = self.running_pid(&name).await?.is_some();
                if !running || timed_out {
                    let reason = if running {
                        format!("it was not ready after {} s", READY_TIMEOUT.as_secs())
                    } else {
                        "the container exited".into()
                    };
                    let tail = self.logs(&name, Some(LOG_TAIL_LINES)).await;
                    // On the host network, another process may have taken
                    // the port since it was picked: try another one.
                    let port_taken = !running
                        && self.network == Network::Host
                        && tail.contains("could not bind")
                        && tail.contains("Address already in use");
                    if let Err(e) = fs::write(&log, &tail) {
                        tracing::debug!(log = %log.display(), "cannot keep the server log: {e}");
                    }
                    self.remove(&name).await;
                    let err = RuntimeError::StartFailed {
                        data_dir: data_dir.to_owned(),
                        reason,
                        log,
                        tail,
                    };
                    return Err(if port_taken {
                        Launch::PortTaken(err)
                    } else {
                        Launch::Failed(err)
                    });
                }
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Runs `cmd` inside the server's container as the server account,
    /// handing every chunk of output to `on_output` as it arrives; returns
    /// the command's exit code. Cancelling `cancel` cancels, then terminates,
    /// the command's database sessions (and interrupts it when its process is
    /// visible from here), and returns [`RuntimeError::Cancelled`].
    pub async fn exec_stream(
        &self,
        server: &ServerHandle,
        cmd: Vec<String>,
        opts: &ExecOptions,
        on_output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
        cancel: &CancellationToken,
    ) -> Result<i32, RuntimeError> {
        let name = Self::container_name(&server.data_dir);
        let app_name = format!("sqlrs-exec-{}", random_suffix());
        let mut env = vec![
            "LANG=C.UTF-8".to_string(),
            "LC_MESSAGES=C".into(),
            format!("PGAPPNAME={app_name}"),
        ];
        env.extend(opts.env.iter().cloned());
        let stdin = match &opts.stdin {
            Some(path) => Some(
                tokio::fs::File::open(path)
                    .await
                    .map_err(io_err("open", path))?,
            ),
            None => None,
        };
        let exec = self
            .docker
            .create_exec(
                &name,
                CreateExecOptions {
                    cmd: Some(cmd),
                    env: Some(env),
                    working_dir: opts.cwd.as_ref().map(|p| p.display().to_string()),
                    attach_stdin: Some(stdin.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(docker_err(format!("run a command in the container {name}")))?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    output_capacity: Some(1 << 20),
                    ..Default::default()
                }),
            )
            .await
            .map_err(docker_err(format!("run a command in the container {name}")))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            unreachable!("the exec was started attached");
        };
        let feeder = stdin.map(|mut file| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    input.write_all(&buf[..n]).await?;
                }
                input.shutdown().await
            })
        });
        let mut cancelled = false;
        loop {
            tokio::select! {
                item = output.next() => match item {
                    Some(Ok(bollard::container::LogOutput::StdErr { message })) => {
                        on_output(OutputStream::Stderr, &message);
                    }
                    Some(Ok(out)) => on_output(OutputStream::Stdout, out.into_bytes().as_ref()),
                    Some(Err(e)) => {
                        return Err(docker_err(format!("read the output of a command in {name}"))(e));
                    }
                    None => break,
                },
                () = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    self.interrupt(server, &exec.id, &app_name).await;
                }
            }
        }
        if let Some(feeder) = feeder {
            match feeder.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("feeding standard input: {e}"),
                Err(e) => tracing::debug!("feeding standard input: {e}"),
            }
        }
        if cancelled {
            return Err(RuntimeError::Cancelled);
        }
        self.exec_exit_code(&exec.id).await
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<i32, RuntimeError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = self
                .docker
                .inspect_exec(exec_id)
                .await
                .map_err(docker_err(format!("inspect the command {exec_id}")))?;
            if info.running != Some(true) || Instant::now() >= deadline {
                return Ok(info
                    .exit_code
                    .and_then(|c| i32::try_from(c).ok())
                    .unwrap_or(-1));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Interrupts an exec'd command: SIGINT when its process is visible here,
    /// and its database sessions cancelled, then terminated after a grace time.
    async fn interrupt(&self, server: &ServerHandle, exec_id: &str, app_name: &str) {
        if let Ok(info) = self.docker.inspect_exec(exec_id).await
            && let Some(pid) = info.pid.and_then(|p| libc::pid_t::try_from(p).ok())
            && pid > 1
        {
            // SAFETY: `pid` is a single positive pid other than init.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        for function in ["pg_cancel_backend", "pg_terminate_backend"] {
            if let Err(e) = self.signal_sessions(server, function, app_name).await {
                tracing::debug!("{function} for {app_name}: {e}");
            }
            let deadline = Instant::now() + CANCEL_GRACE;
            while Instant::now() < deadline {
                match self.docker.inspect_exec(exec_id).await {
                    Ok(info) if info.running == Some(true) => {}
                    _ => return,
                }
                tokio::time::sleep(STATE_POLL).await;
            }
        }
    }

    async fn signal_sessions(
        &self,
        server: &ServerHandle,
        function: &str,
        app_name: &str,
    ) -> Result<(), RuntimeError> {
        const ACTION: &str = "interrupting a command";
        let client = admin::connect(server, ACTION).await?;
        client
            .execute(
                &format!(
                    "SELECT {function}(pid) FROM pg_stat_activity WHERE application_name = $1"
                ),
                &[&app_name],
            )
            .await
            .map_err(sql_err(ACTION, server))?;
        Ok(())
    }

    /// Containers labelled as sqlrs's whose data directory lies under `root`
    /// (a state store).
    pub async fn containers(&self, root: &Path) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{LABEL_MANAGED}=true")],
            )])),
            ..Default::default()
        };
        let deadline = Instant::now() + PODMAN_CLEANUP_WAIT;
        let list = loop {
            match self.docker.list_containers(Some(opts.clone())).await {
                Ok(list) => break list,
                Err(e) if podman_stopped(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(STATE_POLL).await;
                }
                Err(e) => return Err(docker_err("list containers".into())(e)),
            }
        };
        let root = absolute(root)?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                let data_dir = PathBuf::from(labels.get(LABEL_DATA_DIR)?);
                data_dir.starts_with(&root).then(|| ManagedContainer {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .unwrap_or_default()
                        .first()
                        .map(|n| n.trim_start_matches('/').to_owned())
                        .unwrap_or_default(),
                    instance: labels.get(LABEL_INSTANCE).cloned().unwrap_or_default(),
                    data_dir,
                    running: c.state.is_some_and(|s| s.to_string() == "running"),
                })
            })
            .collect())
    }

    /// Removes (stopping first) the containers under `root` whose instance is
    /// not in `known`; returns what it removed.
    pub async fn remove_orphans(
        &self,
        root: &Path,
        known: &[String],
    ) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let mut removed = Vec::new();
        for c in self.containers(root).await? {
            if known.contains(&c.instance) {
                continue;
            }
            tracing::info!(container = %c.name, instance = %c.instance, "removing an orphaned container");
            // No instance owns its data: force removal, so a container that
            // ignores a polite stop cannot hold up the daemon's start.
            self.remove(&c.name).await;
            removed.push(c);
        }
        Ok(removed)
    }

    /// Fast shutdown (SIGINT), SIGKILL after the stop timeout.
    async fn stop_container(&self, name: &str) -> Result<(), RuntimeError> {
        let opts = StopContainerOptions {
            t: Some(STOP_TIMEOUT_SECS),
            signal: Some("SIGINT".into()),
        };
        match self.docker.stop_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) || not_modified(&e) => Ok(()),
            Err(e) => {
                tracing::warn!(container = name, "stopping failed, killing: {e}");
                let kill = KillContainerOptions {
                    signal: "SIGKILL".into(),
                };
                match self.docker.kill_container(name, Some(kill)).await {
                    Ok(()) => Ok(()),
                    Err(e) if not_found(&e) => Ok(()),
                    Err(e) => Err(docker_err(format!("stop the container {name}"))(e)),
                }
            }
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            kind: "docker",
            detail: format!(
                "PostgreSQL {} (image {}, {}, Docker at {})",
                self.version, self.image, self.digest, self.host
            ),
            server_user: self.account.name.clone(),
        }
    }

    fn engine(&self) -> EngineIdentity {
        let mut initdb_args: Vec<String> =
            super::INITDB_ARGS.iter().map(|a| a.to_string()).collect();
        initdb_args.push(format!("TZ={INITDB_TIMEZONE}"));
        initdb_args.push(format!("pg_hba: {HBA_LINE}"));
        EngineIdentity {
            runtime: "docker".into(),
            version: self.version.clone(),
            initdb_args,
            image_digest: self.digest.clone(),
        }
    }

    fn adopt_dir(&self, dir: &Path) -> Result<(), RuntimeError> {
        self.own_tree(&absolute(dir)?)
    }

    async fn init_base(&self, data_dir: &Path) -> Result<(), RuntimeError> {
        let data_dir = absolute(data_dir)?;
        let mut entries = fs::read_dir(&data_dir).map_err(io_err("read", &data_dir))?;
        if entries.next().is_some() {
            return Err(RuntimeError::NotEmpty { dir: data_dir });
        }
        self.own(&data_dir)?;
        let mut args = vec!["-D".to_string(), DATA_DIR.into()];
        args.extend(super::INITDB_ARGS.iter().map(|a| a.to_string()));
        // The store syncs every state before recording it.
        args.push("--no-sync".into());
        let (code, output) = self
            .run_once(
                "initdb",
                args,
                vec![format!("TZ={INITDB_TIMEZONE}"), "LANG=C".into()],
                vec![format!("{}:{DATA_DIR}", data_dir.display())],
            )
            .await?;
        if code != 0 {
            return Err(RuntimeError::Initdb {
                data_dir,
                status: format!("exited with code {code} in the image {}", self.image),
                output,
            });
        }
        let hba = data_dir.join("pg_hba.conf");
        let mut text = fs::read_to_string(&hba).map_err(io_err("read", &hba))?;
        text.push_str(&format!(
            "\n# Connections through the published port come from the container's gateway.\n{HBA_LINE}\n"
        ));
        fs::write(&hba, text).map_err(io_err("write", &hba))
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
        self.prepare_data_dir(&data_dir).await?;
        self.prepare_run_dir(&run_dir)?;
        let server = launch::on_free_port(opts.port, |port| {
            self.launch(&data_dir, &run_dir, port, opts)
        })
        .await?;
        tracing::debug!(
            pid = server.pid, port = server.port, dir = %data_dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "server container ready"
        );
        Ok(server)
    }

    async fn stop(&self, server: &ServerHandle) -> Result<(), RuntimeError> {
        let name = Self::container_name(&server.data_dir);
        self.stop_container(&name).await?;
        self.remove(&name).await;
        Ok(())
    }

    fn is_running(&self, server: &ServerHandle) -> bool {
        if !server.data_dir.join("postmaster.pid").is_file() {
            return false;
        }
        let host = self.host.clone();
        let name = Self::container_name(&server.data_dir);
        let data_dir = server.data_dir.display().to_string();
        // The trait asks synchronously; a private runtime on its own thread
        // serves the one request whatever runtime the caller is on.
        let inspect = move || -> Option<bool> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let docker = Docker::connect_with_host(&host).ok()?;
                let c = docker.inspect_container(&name, None).await.ok()?;
                let labelled = c
                    .config
                    .and_then(|cfg| cfg.labels)
                    .and_then(|l| l.get(LABEL_DATA_DIR).cloned())
                    .is_some_and(|d| d == data_dir);
                Some(labelled && c.state.and_then(|s| s.running) == Some(true))
            })
        };
        std::thread::scope(|s| s.spawn(inspect).join().ok().flatten()).unwrap_or(false)
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
        let mut cmd = vec!["psql".to_string()];
        cmd.extend(self.connection_args(server));
        cmd.extend(["-d".into(), "postgres".into(), "--no-password".into()]);
        cmd.extend(args.iter().cloned());
        let opts = ExecOptions {
            cwd: Some(cwd.to_owned()),
            env: Vec::new(),
            stdin: stdin.map(Path::to_owned),
        };
        let (mut out, mut err) = (super::Tail::default(), super::Tail::default());
        let code = self
            .exec_stream(
                server,
                cmd,
                &opts,
                &mut |stream, bytes| match stream {
                    OutputStream::Stdout => out.push(bytes),
                    OutputStream::Stderr => err.push(bytes),
                },
                cancel,
            )
            .await?;
        let stdout = out.into_string();
        let stderr = err.into_string();
        if code == 0 {
            Ok(PsqlOutput { stdout, stderr })
        } else {
            Err(RuntimeError::Psql {
                exit_code: code,
                stderr,
            })
        }
    }

    fn dsn(&self, server: &ServerHandle, password: &str) -> String {
        loopback_dsn(server.port, password)
    }
}

impl Account {
    fn spec(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }
}

/// A client for `host` that answers, on the newest API version both sides speak.
async fn client(host: &str) -> Result<Docker, RuntimeError> {
    let unreachable = |reason: String| RuntimeError::DockerUnreachable {
        host: host.to_owned(),
        reason,
    };
    let docker = Docker::connect_with_host(host).map_err(|e| unreachable(e.to_string()))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    docker
        .ping()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
}

/// The servers' account: the host's `postgres` when the daemon is root (the
/// image built by packaging/docker/build-image.sh carries the same uid), else
/// the daemon's own account.
fn server_account() -> Result<Account, RuntimeError> {
    // SAFETY: geteuid and getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != 0 {
        return Ok(Account {
            name: euid.to_string(),
            uid: euid,
            gid: egid,
            chown: false,
        });
    }
    let (uid, gid) = super::lookup_user(SUPERUSER)
        .map_err(io_err("look up the account in", Path::new("/etc/passwd")))?
        .ok_or_else(|| RuntimeError::NoServerUser {
            user: SUPERUSER.into(),
        })?;
    Ok(Account {
        name: SUPERUSER.into(),
        uid,
        gid,
        chown: true,
    })
}

fn parse_version(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("(PostgreSQL)")?;
    let version = rest.split_whitespace().next()?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_owned())
}

/// The postmaster.pid status line says "ready" (the lock file of an earlier
/// server was removed before the start).
fn postmaster_ready(data_dir: &Path) -> bool {
    fs::read_to_string(data_dir.join("postmaster.pid"))
        .is_ok_and(|c| c.lines().nth(7).map(str::trim) == Some("ready"))
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source is unavailable");
    hex::encode(bytes)
}

fn not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Podman's Docker-compatible API reports a container whose process has
/// exited but which Podman has not cleaned up yet as `stopped`, a state the
/// Docker API does not define, so bollard cannot read the answer. It lasts
/// until Podman's cleanup runs, usually a few milliseconds.
fn podman_stopped(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::JsonDataError { message, .. } if message.contains("unknown variant `stopped`")
    )
}

fn not_modified(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
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

fn docker_err(action: String) -> impl FnOnce(DockerError) -> RuntimeError {
    move |source| RuntimeError::Docker { action, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let cases = [
            (
                "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n",
                Some("15.18"),
            ),
            ("postgres (PostgreSQL) 17.2\n", Some("17.2")),
            ("exec: postgres: not found\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_version(text).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn container_names_follow_data_dirs() {
        let a = DockerRuntime::container_name(Path::new("/s/instances/a/data"));
        let b = DockerRuntime::container_name(Path::new("/s/instances/b/data"));
        assert_ne!(a, b);
        assert_eq!(
            a,
            DockerRuntime::container_name(Path::new("/s/instances/a/data"))
        );
        assert!(a.starts_with("sqlrs-") && a.len() == 22, "{a}");
    }

    #[test]
    fn podmans_stopped_state_is_recognised() {
        // What bollard makes of a reply it cannot read, as in its decoder.
        let reply = |json: &str| {
            let err = serde_json::from_str::<Vec<bollard::models::ContainerSummary>>(json)
                .expect_err(json);
            DockerError::JsonDataError {
                message: err.to_string(),
                column: err.column(),
            }
        };
        let cases = [
            (reply(r#"[{"Id":"a","State":"stopped"}]"#), true),
            (reply(r#"[{"Id":"a","State":"configured"}]"#), false),
            (reply(r#"[{"Id":"a","State":7}]"#), false),
            (
                DockerError::DockerResponseServerError {
                    status_code: 500,
                    message: "unknown variant `stopped`".into(),
                },
                false,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(podman_stopped(&err), want, "{err:?}");
        }
    }

    #[test]
    fn readiness_reads_the_status_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("1\n/d\n1\n5432\n/run\n*\n 1 2\nready   \n", true),
            ("1\n/d\n1\n5432\n/run\n*\n 1 2\nstarting\n", false),
            ("1\n/d\n", false),
        ];
        for (contents, want) in cases {
            fs::write(dir.path().join("postmaster.pid"), contents).unwrap();
            assert_eq!(postmaster_ready(dir.path()), want, "{contents:?}");
        }
    }
}

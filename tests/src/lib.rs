//! Harness for the end-to-end tests: isolated sandboxes (own XDG directories, own
//! sqlrsd, own store on a chosen filesystem, native or Docker runtime) that
//! drive the real `sqlrs` and `sqlrsd` binaries, real PostgreSQL servers (on the
//! host or in containers) and the real `psql`.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one `sqlrs` command may take before the test fails (a debug build
/// loading TPC-H on the copy backend stays far below it).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a psql query may take.
const PSQL_TIMEOUT: Duration = Duration::from_secs(120);
/// A filesystem type as `statfs` reports it.
pub type FsMagic = libc::__fsword_t;
pub const BTRFS_MAGIC: FsMagic = libc::BTRFS_SUPER_MAGIC;
pub const XFS_MAGIC: FsMagic = libc::XFS_SUPER_MAGIC;
/// The inode number of every btrfs subvolume root.
const BTRFS_SUBVOLUME_INO: u64 = 256;
/// How long one `docker` CLI call may take.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// The image Docker sandboxes use unless `SQLRS_TEST_IMAGE` names another
/// (what `packaging/docker/build-image.sh` builds).
pub const DEFAULT_TEST_IMAGE: &str = "sqlrs/postgres:15";
/// The labels sqlrsd puts on its containers (`sqlrsd/src/runtime/docker.rs`).
pub const LABEL_MANAGED: &str = "sqlrs.managed";
pub const LABEL_DATA_DIR: &str = "sqlrs.data_dir";
pub const LABEL_INSTANCE: &str = "sqlrs.instance";

/// Why a sandbox cannot be set up: each says what to install, build or set.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{} does not exist: run `cargo build --workspace` first (the end-to-end tests drive the real `{name}` binary)", path.display())]
    MissingBinary { name: &'static str, path: PathBuf },
    #[error(
        "set {var} to a directory on a mounted {fs} filesystem: `packaging/ci/btrfs-image.sh DIR` (as root) creates and mounts one and prints the variable; `bash packaging/ci/test.sh` does it all"
    )]
    FilesystemNotSet { var: &'static str, fs: &'static str },
    #[error("{var}={} is not on a mounted {fs} filesystem: mount one there with `packaging/ci/btrfs-image.sh DIR`", path.display())]
    WrongFilesystem {
        var: &'static str,
        fs: &'static str,
        path: PathBuf,
    },
    #[error("{} (mode {mode:o}) cannot be entered by other accounts; PostgreSQL servers run as the `postgres` account when the tests run as root: put the test directories outside /root (e.g. /tmp) or `chmod o+x` it", path.display())]
    NotTraversable { path: PathBuf, mode: u32 },
    #[error(
        "psql not found on PATH nor in /usr/lib/postgresql/*/bin: install it (`apt-get install postgresql-client`)"
    )]
    MissingPsql,
    #[error("dataset {} not found: the tests read ../shared/datasets beside the repository; set SQLRS_TEST_DATASETS to its location", path.display())]
    MissingDataset { path: PathBuf },
    #[error(
        "DOCKER_HOST is not set: the Docker runtime tests need a Docker daemon with the PostgreSQL image; `eval \"$(packaging/ci/docker.sh .build/docker)\"` starts a private one and prints DOCKER_HOST, `packaging/docker/build-image.sh` builds {DEFAULT_TEST_IMAGE}; `bash packaging/ci/test.sh` does both"
    )]
    DockerNotSet,
    #[error(
        "Docker does not answer at DOCKER_HOST={host}: {detail}; start it with `packaging/ci/docker.sh DIR` (it prints the DOCKER_HOST to export), then build the image with `packaging/docker/build-image.sh`"
    )]
    DockerUnreachable { host: String, detail: String },
    #[error(
        "image {image} is not in the Docker daemon at {host}: build it with `packaging/docker/build-image.sh {image}` (SQLRS_TEST_IMAGE picks another image; a daemon started by `packaging/ci/docker.sh` keeps it)"
    )]
    ImageMissing { image: String, host: String },
    #[error(
        "Liquibase not found ({detail}): install it with `bash packaging/ci/liquibase.sh .build/liquibase` (npm liquibase@4.28.1 and Java 17) and export SQLRS_LIQUIBASE with the path it prints; `bash packaging/ci/test.sh` does it"
    )]
    MissingLiquibase { detail: String },
    #[error(
        "{what} needs root (it mounts a loop filesystem); run the end-to-end tests as root, as CI does (`bash .ci/run`)"
    )]
    NotRoot { what: &'static str },
    #[error("cannot make the test filesystem at {}: `{command}` failed: {output}", dir.display())]
    LoopFs {
        dir: PathBuf,
        command: String,
        output: String,
    },
    #[error("cannot set up {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Which snapshot backend a sandbox's store uses, and the filesystem it lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Plain copies, store under the system temp dir.
    Copy,
    /// btrfs subvolume snapshots, store under `$SQLRS_TEST_BTRFS`.
    Btrfs,
    /// `FICLONE` reflinks, store under `$SQLRS_TEST_XFS`.
    Reflink,
}

impl Backend {
    /// The config value (`snapshot.backend`) and what `sqlrs status` reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Copy => "copy",
            Backend::Btrfs => "btrfs",
            Backend::Reflink => "reflink",
        }
    }

    /// What the daemon should pick for a store in `dir` when no backend is
    /// configured: the cheapest clone the filesystem offers.
    pub fn detected_for(dir: &Path) -> Backend {
        match filesystem_magic(dir) {
            Some(BTRFS_MAGIC) => Backend::Btrfs,
            Some(XFS_MAGIC) => Backend::Reflink,
            _ => Backend::Copy,
        }
    }

    /// Where this backend's sandboxes are created, checked to be on the right
    /// filesystem.
    pub fn base_dir(self) -> Result<PathBuf, SetupError> {
        match self {
            Backend::Copy => Ok(std::env::temp_dir()),
            Backend::Btrfs => mounted_dir(
                "SQLRS_TEST_BTRFS",
                "btrfs",
                BTRFS_MAGIC,
                std::env::var_os("SQLRS_TEST_BTRFS"),
            ),
            Backend::Reflink => mounted_dir(
                "SQLRS_TEST_XFS",
                "XFS (reflink=1)",
                XFS_MAGIC,
                std::env::var_os("SQLRS_TEST_XFS"),
            ),
        }
    }
}

/// The directory named by `var` (its value passed in), which must be on a
/// filesystem of type `magic`.
pub fn mounted_dir(
    var: &'static str,
    fs: &'static str,
    magic: FsMagic,
    value: Option<OsString>,
) -> Result<PathBuf, SetupError> {
    let path = value
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or(SetupError::FilesystemNotSet { var, fs })?;
    match filesystem_magic(&path) {
        Some(m) if m == magic => Ok(path),
        _ => Err(SetupError::WrongFilesystem { var, fs, path }),
    }
}

/// The `statfs` type of the filesystem holding `path`, if it exists.
pub fn filesystem_magic(path: &Path) -> Option<FsMagic> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is writable memory of the right size.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: statfs returned 0, so it filled `st`.
    (rc == 0).then(|| unsafe { st.assume_init() }.f_type)
}

/// Where a sandbox's PostgreSQL servers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// The host's PostgreSQL binaries.
    Native,
    /// Containers of the test image in the Docker daemon at `$DOCKER_HOST`.
    Docker,
}

impl Runtime {
    /// The config value (`runtime.kind`) and what `sqlrs status` reports.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Native => "native",
            Runtime::Docker => "docker",
        }
    }
}

/// The Docker daemon and image the Docker sandboxes use: `$DOCKER_HOST` and
/// `$SQLRS_TEST_IMAGE` (default [`DEFAULT_TEST_IMAGE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerEnv {
    pub host: String,
    pub image: String,
}

impl DockerEnv {
    /// The environment's daemon and image, checked (once per test process)
    /// to answer and to hold the image.
    pub fn get() -> Result<Self, SetupError> {
        static CHECKED: std::sync::OnceLock<DockerEnv> = std::sync::OnceLock::new();
        if let Some(env) = CHECKED.get() {
            return Ok(env.clone());
        }
        let env = Self::from_values(
            std::env::var_os("DOCKER_HOST"),
            std::env::var_os("SQLRS_TEST_IMAGE"),
        )?;
        env.check()?;
        Ok(CHECKED.get_or_init(|| env).clone())
    }

    /// The daemon and image named by these values of `DOCKER_HOST` and
    /// `SQLRS_TEST_IMAGE`, unchecked.
    pub fn from_values(
        host: Option<OsString>,
        image: Option<OsString>,
    ) -> Result<Self, SetupError> {
        let host = host
            .filter(|h| !h.is_empty())
            .ok_or(SetupError::DockerNotSet)?
            .to_string_lossy()
            .into_owned();
        let image = image
            .filter(|i| !i.is_empty())
            .map(|i| i.to_string_lossy().into_owned())
            .unwrap_or_else(|| DEFAULT_TEST_IMAGE.to_owned());
        Ok(Self { host, image })
    }

    /// Fails unless the daemon answers and holds the image.
    fn check(&self) -> Result<(), SetupError> {
        let version = self.docker(&["version", "--format", "{{.Server.Version}}"]);
        if !version.success() {
            return Err(SetupError::DockerUnreachable {
                host: self.host.clone(),
                detail: version.text().trim().to_owned(),
            });
        }
        if !self
            .docker(&["image", "inspect", "--format", "{{.Id}}", &self.image])
            .success()
        {
            return Err(SetupError::ImageMissing {
                image: self.image.clone(),
                host: self.host.clone(),
            });
        }
        Ok(())
    }

    /// Runs the `docker` CLI against this daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.host)
            .args(args)
            .stdin(Stdio::null());
        run(cmd, DOCKER_TIMEOUT)
    }

    /// Runs the `docker` CLI, failing the test unless it exits 0.
    pub fn docker_ok(&self, args: &[&str]) -> Output {
        let out = self.docker(args);
        assert!(out.success(), "{out}");
        out
    }

    /// Ids of the containers (running or not) carrying `label=value`.
    pub fn containers_labelled(&self, label: &str, value: &str) -> Vec<String> {
        let filter = format!("label={label}={value}");
        self.docker_ok(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter])
            .stdout
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Force-removes every sqlrs container whose data directory lies under
    /// `root` (what a sandbox's daemon left behind).
    fn remove_containers_under(&self, root: &Path) {
        let format = format!("{{{{.ID}}}}\t{{{{.Label \"{LABEL_DATA_DIR}\"}}}}");
        let filter = format!("label={LABEL_MANAGED}=true");
        let listed = self.docker(&["ps", "-a", "--filter", &filter, "--format", &format]);
        let leftovers: Vec<&str> = listed
            .stdout
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(_, dir)| Path::new(dir).starts_with(root))
            .map(|(id, _)| id)
            .collect();
        if leftovers.is_empty() {
            return;
        }
        eprintln!(
            "warning: removing {} container(s) left under {}: {leftovers:?}",
            leftovers.len(),
            root.display()
        );
        let mut args = vec!["rm", "-f"];
        args.extend(leftovers);
        let out = self.docker(&args);
        if !out.success() {
            eprintln!("warning: cannot remove containers:\n{out}");
        }
    }
}

/// The `sqlrs` and `sqlrsd` binaries of this build.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub sqlrs: PathBuf,
    pub sqlrsd: PathBuf,
}

impl Binaries {
    /// Finds them in the target directory this test executable was built in
    /// (`target/<profile>/deps/<test>` → `target/<profile>/sqlrs`).
    pub fn locate() -> Result<Self, SetupError> {
        let exe = std::env::current_exe().map_err(io_err(Path::new("current executable")))?;
        let mut dir = exe.parent().map(Path::to_owned).unwrap_or_default();
        if dir.file_name() == Some(OsStr::new("deps")) {
            dir.pop();
        }
        let find = |name: &'static str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(SetupError::MissingBinary { name, path })
            }
        };
        Ok(Self {
            sqlrs: find("sqlrs")?,
            sqlrsd: find("sqlrsd")?,
        })
    }
}

/// Fails when the servers' unprivileged account could not reach `path`
/// (only matters when the tests run as root).
pub fn check_traversable(path: &Path) -> Result<(), SetupError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    for dir in path.ancestors() {
        let mode = std::fs::metadata(dir).map_err(io_err(dir))?.mode() & 0o7777;
        if mode & 0o001 == 0 {
            return Err(SetupError::NotTraversable {
                path: dir.to_owned(),
                mode,
            });
        }
    }
    Ok(())
}

/// The shared sample data (`../shared/datasets` beside the repository, or
/// `$SQLRS_TEST_DATASETS`).
pub fn datasets_dir() -> Result<PathBuf, SetupError> {
    let path = match std::env::var_os("SQLRS_TEST_DATASETS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets"),
    };
    if path.is_dir() {
        Ok(path)
    } else {
        Err(SetupError::MissingDataset { path })
    }
}

/// The test fixtures folder (`tests/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The real Liquibase launcher: `$SQLRS_LIQUIBASE`, else `liquibase` on PATH.
pub fn liquibase_bin() -> Result<PathBuf, SetupError> {
    if let Some(p) = std::env::var_os("SQLRS_LIQUIBASE").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(SetupError::MissingLiquibase {
                detail: format!("SQLRS_LIQUIBASE={} is not a file", p.display()),
            })
        };
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("liquibase"))
        .find(|p| p.is_file())
        .ok_or_else(|| SetupError::MissingLiquibase {
            detail: "SQLRS_LIQUIBASE is not set and there is none on PATH".into(),
        })
}

/// The real `psql`: on PATH, else the newest `/usr/lib/postgresql/*/bin/psql`.
pub fn psql_bin() -> Result<PathBuf, SetupError> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("psql"))
        .find(|p| p.is_file());
    if let Some(p) = on_path {
        return Ok(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let psql = e.path().join("bin/psql");
            psql.is_file().then_some((major, psql))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .ok_or(SetupError::MissingPsql)
}

/// The two-step project most scenarios use: `schema.sql` records when it ran
/// (so a re-run is visible) and creates `item`; `seed.sql` fills `item`.
pub const SCHEMA_SQL: &str = "create table stamp(at timestamptz not null);\n\
    insert into stamp select clock_timestamp();\n\
    create table item(v int not null);\n";
pub const SEED_SQL: &str = "insert into item values (1), (2);\n";
/// The psql arguments of that project.
pub const CHAIN: [&str; 4] = ["-f", "schema.sql", "-f", "seed.sql"];
/// What reads the time `schema.sql` ran.
pub const STAMP_QUERY: &str = "select at from stamp";

/// What a finished command printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    pub command: String,
    /// `None` when it was killed (by a signal or the harness's timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout and stderr together, for searching messages wherever they went.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The `DSN=postgres://…` the command printed.
    pub fn dsn(&self) -> String {
        dsn_in(&self.stdout).unwrap_or_else(|| panic!("no DSN=postgres://… in stdout of\n{self}"))
    }

    /// stdout as JSON: one document, or one document per line (then an array).
    pub fn json(&self) -> Value {
        parse_json_output(&self.stdout)
            .unwrap_or_else(|| panic!("stdout is not JSON (with --output json) in\n{self}"))
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// The first `DSN=postgres://…` (or `postgresql://`) value in `text`.
pub fn dsn_in(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("DSN=")?.trim();
        (v.starts_with("postgres://") || v.starts_with("postgresql://")).then(|| v.to_owned())
    })
}

/// A JSON document, or JSON lines gathered into an array.
pub fn parse_json_output(stdout: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str(stdout) {
        return Some(v);
    }
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<Vec<Value>, _>>()
        .ok()
        .filter(|v| !v.is_empty())
        .map(Value::Array)
}

/// The first value under `key`, searched depth-first through objects and arrays.
pub fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|c| find_key(c, key))),
        Value::Array(a) => a.iter().find_map(|c| find_key(c, key)),
        _ => None,
    }
}

/// The first string under `key`, depth-first.
pub fn find_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    match v {
        Value::Object(m) => m
            .get(key)
            .and_then(Value::as_str)
            .or_else(|| m.values().find_map(|c| find_str(c, key))),
        Value::Array(a) => a.iter().find_map(|c| find_str(c, key)),
        _ => None,
    }
}

/// A listing: the document itself when it is an array, else the array under
/// `key` (e.g. `{"states": [...]}`).
pub fn json_list(v: &Value, key: &str) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => Vec::new(),
        _ => find_key(v, key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_else(|| panic!("no `{key}` array in {v:#}")),
    }
}

/// A string field of a listed object, or the empty string.
pub fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `dsn` pointing at database `db` instead of its own.
pub fn with_database(dsn: &str, db: &str) -> String {
    let (scheme, rest) = dsn.split_once("://").expect("a postgres:// URL");
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let query = tail
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{scheme}://{authority}/{db}{query}")
}

/// A short prefix of an id, as a user would type it (at least 8 hex digits).
pub fn prefix(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanStep {
    pub state_id: String,
    pub cached: bool,
    pub summary: String,
}

/// What a successful prepare returned.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub instance_id: String,
    pub state_id: String,
    pub dsn: String,
    pub job_id: Option<String>,
    pub json: Value,
}

/// An isolated sqlrs installation: its own config, store, socket and daemon,
/// and a project directory to put SQL files in. Dropping it stops its daemon
/// and every PostgreSQL server (or container) it started, then removes its files.
pub struct Sandbox {
    runtime: Runtime,
    backend: Backend,
    docker: Option<DockerEnv>,
    root: PathBuf,
    project: PathBuf,
    bins: Binaries,
}

/// A sandbox's `config.yaml`: the runtime pinned (native with `docker` None,
/// so native scenarios cover it even where a Docker daemon answers; else
/// Docker with that daemon and image), and the snapshot backend when forced.
pub fn config_yaml(docker: Option<&DockerEnv>, backend: Option<Backend>) -> String {
    let mut yaml = match docker {
        None => String::from("runtime:\n  kind: native\n"),
        Some(d) => format!(
            "runtime:\n  kind: docker\n  docker:\n    host: {}\n    image: {}\n",
            d.host, d.image
        ),
    };
    if let Some(b) = backend {
        yaml.push_str(&format!("snapshot:\n  backend: {}\n", b.name()));
    }
    yaml
}

impl Sandbox {
    /// A native-runtime sandbox whose store is forced to `backend`
    /// (`snapshot.backend` in its config). Panics with the setup error when
    /// something is missing.
    pub fn new(backend: Backend) -> Self {
        Self::on(Runtime::Native, backend)
    }

    /// A Docker-runtime sandbox (`$DOCKER_HOST`, `$SQLRS_TEST_IMAGE`) whose
    /// store is forced to `backend`. Panics, naming `packaging/ci/docker.sh`
    /// and `packaging/docker/build-image.sh`, when the daemon or image is missing.
    pub fn docker(backend: Backend) -> Self {
        Self::on(Runtime::Docker, backend)
    }

    /// A sandbox on `runtime` whose store is forced to `backend`.
    pub fn on(runtime: Runtime, backend: Backend) -> Self {
        Self::create(runtime, backend, true).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A native sandbox on `backend`'s filesystem with no snapshot backend
    /// configured: the daemon picks the snapshotter itself.
    pub fn with_auto_backend(backend: Backend) -> Self {
        Self::create(Runtime::Native, backend, false).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A sandbox whose files (store included) live under `base`, e.g. a
    /// small filesystem a test fills up; `backend` is forced in its config.
    pub fn in_dir(runtime: Runtime, backend: Backend, base: &Path) -> Self {
        Self::create_in(runtime, backend, true, base).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sets a sandbox up, reporting what is missing.
    pub fn create(
        runtime: Runtime,
        backend: Backend,
        force_backend: bool,
    ) -> Result<Self, SetupError> {
        let base = backend.base_dir()?;
        Self::create_in(runtime, backend, force_backend, &base)
    }

    /// [`Sandbox::create`] under `base` instead of the backend's directory.
    pub fn create_in(
        runtime: Runtime,
        backend: Backend,
        force_backend: bool,
        base: &Path,
    ) -> Result<Self, SetupError> {
        let bins = Binaries::locate()?;
        let docker = match runtime {
            Runtime::Native => None,
            Runtime::Docker => Some(DockerEnv::get()?),
        };
        let root = tempfile::Builder::new()
            .prefix(&format!("sqlrs-e2e-{}-", backend.name()))
            .tempdir_in(base)
            .map_err(io_err(base))?
            .keep();
        let sandbox = Self {
            runtime,
            backend,
            docker,
            project: root.join("project"),
            root,
            bins,
        };
        for dir in ["config/sqlrs", "state", "run", "home", "project"] {
            let path = sandbox.root.join(dir);
            std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        for dir in [&sandbox.root, &sandbox.project] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err(dir))?;
        }
        check_traversable(&sandbox.root)?;
        let config = sandbox.config_path();
        let yaml = config_yaml(sandbox.docker.as_ref(), force_backend.then_some(backend));
        std::fs::write(&config, yaml).map_err(io_err(&config))?;
        Ok(sandbox)
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// The Docker daemon and image of a Docker sandbox.
    pub fn docker_env(&self) -> &DockerEnv {
        self.docker
            .as_ref()
            .unwrap_or_else(|| panic!("a {} sandbox has no Docker daemon", self.runtime.name()))
    }

    /// Replaces the sandbox's `config.yaml` (takes effect at the next daemon start).
    pub fn set_config(&self, yaml: &str) {
        let path = self.config_path();
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The project directory every command runs in by default.
    pub fn project(&self) -> &Path {
        &self.project
    }

    /// The pid of the running daemon (`sqlrs daemon status`), if one runs.
    pub fn daemon_pid(&self) -> Option<u64> {
        let out = self.sqlrs(&["--output", "json", "daemon", "status"]);
        parse_json_output(&out.stdout)?.get("pid")?.as_u64()
    }

    /// `$XDG_STATE_HOME/sqlrs`: the daemon's store.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state/sqlrs")
    }

    /// `$XDG_RUNTIME_DIR/sqlrs/sqlrsd.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.root.join("run/sqlrs/sqlrsd.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config/sqlrs/config.yaml")
    }

    /// Writes `contents` to `rel` inside the project (parents created).
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.project.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// Writes the two-step project (`schema.sql`, `seed.sql`; see [`CHAIN`]).
    pub fn write_chain(&self) {
        self.write("schema.sql", SCHEMA_SQL);
        self.write("seed.sql", SEED_SQL);
    }

    /// Copies `../shared/datasets/<name>` (a file or a folder) to `rel` in the project.
    pub fn copy_dataset(&self, name: &str, rel: &str) -> PathBuf {
        let from = datasets_dir().unwrap_or_else(|e| panic!("{e}")).join(name);
        if !from.exists() {
            panic!("{}", SetupError::MissingDataset { path: from });
        }
        let to = self.project.join(rel);
        copy_tree(&from, &to).unwrap_or_else(|e| panic!("{e}"));
        to
    }

    /// The environment every command of this sandbox runs with.
    fn command(&self, program: &Path, dir: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(dir)
            .env("HOME", self.root.join("home"))
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("XDG_STATE_HOME", self.root.join("state"))
            .env("XDG_RUNTIME_DIR", self.root.join("run"))
            .env("SQLRSD_BIN", &self.bins.sqlrsd)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGSERVICE",
            "PGOPTIONS",
            "PSQLRC",
            // Liquibase tests name the launcher in the sandbox's config.
            "SQLRS_LIQUIBASE",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs `sqlrs ARGS` in the project directory.
    pub fn sqlrs(&self, args: &[&str]) -> Output {
        self.sqlrs_in(&self.project, args)
    }

    /// Runs `sqlrs ARGS` in `dir`.
    pub fn sqlrs_in(&self, dir: &Path, args: &[&str]) -> Output {
        let mut cmd = self.command(&self.bins.sqlrs, dir);
        cmd.args(args);
        run(cmd, COMMAND_TIMEOUT)
    }

    /// `sqlrs ARGS` in the project directory with this sandbox's environment,
    /// not started: for tests that change its environment or read its output
    /// as it comes.
    pub fn sqlrs_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(&self.bins.sqlrs, &self.project);
        cmd.args(args);
        cmd
    }

    /// `sqlrsd` itself with this sandbox's environment, not started: for
    /// tests of how the daemon refuses to start.
    pub fn sqlrsd_command(&self) -> Command {
        self.command(&self.bins.sqlrsd, &self.project)
    }

    /// Runs `sqlrs ARGS` and fails the test (with the daemon's log) unless it exits 0.
    pub fn sqlrs_ok(&self, args: &[&str]) -> Output {
        let out = self.sqlrs(args);
        assert!(out.success(), "{}", self.explain(&out));
        out
    }

    /// Runs `sqlrs --output json ARGS`, expecting success.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        self.sqlrs_ok(&all).json()
    }

    /// An output followed by the tail of this sandbox's daemon log.
    pub fn explain(&self, out: &Output) -> String {
        format!("{out}\n--- sqlrsd.log (tail)\n{}", self.daemon_log_tail())
    }

    pub fn daemon_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.state_dir().join("sqlrsd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs `sqlrs --output json ARGS` in `dir`, expecting success.
    pub fn json_in(&self, dir: &Path, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.sqlrs_in(dir, &all);
        assert!(out.success(), "{}", self.explain(&out));
        out.json()
    }

    /// `sqlrs --output json prepare:psql -- ARGS`, expecting success.
    pub fn prepare(&self, psql_args: &[&str]) -> Prepared {
        self.prepare_in(&self.project, psql_args)
    }

    /// `sqlrs --output json prepare:psql -- ARGS` run in `dir`, expecting success.
    pub fn prepare_in(&self, dir: &Path, psql_args: &[&str]) -> Prepared {
        let mut args = vec!["prepare:psql", "--"];
        args.extend_from_slice(psql_args);
        prepared_from(self.json_in(dir, &args))
    }

    /// The step tasks of one job: `(state_id, cached)` in step order.
    pub fn step_tasks(&self, job_id: &str) -> Vec<(String, bool)> {
        let mut tasks: Vec<Value> = self
            .ls("tasks")
            .into_iter()
            .filter(|t| field(t, "job_id") == job_id && field(t, "kind") == "step")
            .collect();
        tasks.sort_by_key(|t| t.get("index").and_then(Value::as_u64));
        tasks
            .iter()
            .map(|t| {
                (
                    field(t, "state_id").to_owned(),
                    t.get("cached").and_then(Value::as_bool).unwrap_or(false),
                )
            })
            .collect()
    }

    /// `sqlrs --output json plan:psql -- ARGS`: the planned steps.
    pub fn plan(&self, psql_args: &[&str]) -> Vec<PlanStep> {
        let mut args = vec!["plan:psql", "--"];
        args.extend_from_slice(psql_args);
        plan_steps(&self.json(&args))
    }

    /// `sqlrs --output json ls --<what>` as a list (`states`, `instances`, `jobs`, `tasks`).
    pub fn ls(&self, what: &str) -> Vec<Value> {
        let flag = format!("--{what}");
        json_list(&self.json(&["ls", &flag]), what)
    }

    /// Ids of the states in the store.
    pub fn state_ids(&self) -> Vec<String> {
        ids(&self.ls("states"))
    }

    /// Ids of the live instances.
    pub fn instance_ids(&self) -> Vec<String> {
        ids(&self.ls("instances"))
    }

    /// Runs the real `psql` against `dsn` in the project directory.
    pub fn psql(&self, dsn: &str, args: &[&str]) -> Output {
        let psql = psql_bin().unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = self.command(&psql, &self.project);
        cmd.args(["-X", "-d", dsn]).args(args);
        run(cmd, PSQL_TIMEOUT)
    }

    /// One query's result (unaligned, tuples only), failing the test on error.
    pub fn query(&self, dsn: &str, sql: &str) -> String {
        let out = self.psql(dsn, &["-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        assert!(out.success(), "query failed:\n{out}");
        out.stdout.trim().to_owned()
    }

    /// Removes the instances (their servers outlive the daemon), stops the
    /// daemon, then kills whatever processes are still left and removes the
    /// containers still labelled with this sandbox's store.
    fn stop_everything(&self) {
        if self.sqlrs(&["daemon", "status"]).success() {
            let listed = self.sqlrs(&["--output", "json", "ls", "--instances"]);
            let instances = parse_json_output(&listed.stdout)
                .map(|v| ids(&json_list(&v, "instances")))
                .unwrap_or_default();
            for id in instances {
                let out = self.sqlrs(&["rm", "--force", &id]);
                if !out.success() {
                    eprintln!("warning: cannot remove instance {id}:\n{out}");
                }
            }
        }
        let out = self.sqlrs(&["daemon", "stop"]);
        if out.code.is_none() {
            eprintln!("warning: `sqlrs daemon stop` did not finish:\n{out}");
        }
        let leftovers = processes_under(&self.root);
        if !leftovers.is_empty() {
            eprintln!(
                "warning: killing {} process(es) left running under {}: {leftovers:?}",
                leftovers.len(),
                self.root.display()
            );
            terminate(&leftovers);
        }
        if let Some(docker) = &self.docker {
            docker.remove_containers_under(&self.root);
        }
    }

    fn remove_files(&self) {
        if self.backend == Backend::Btrfs {
            delete_subvolumes(&self.root);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!("warning: cannot remove {}: {e}", self.root.display());
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_everything();
        if std::env::var_os("SQLRS_TEST_KEEP").is_some() {
            eprintln!("SQLRS_TEST_KEEP: keeping {}", self.root.display());
        } else {
            self.remove_files();
        }
    }
}

/// A psql client connected to `dsn` for `secs` seconds (`select pg_sleep`):
/// an open connection, as an application holds one.
pub fn hold_connection(dsn: &str, secs: u32) -> std::process::Child {
    let psql = psql_bin().unwrap_or_else(|e| panic!("{e}"));
    Command::new(psql)
        .args([dsn, "-X", "-q", "-c", &format!("select pg_sleep({secs})")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql starts")
}

/// Bytes an unprivileged process can still write on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is NUL-terminated and `st` is writable memory of the right size.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    assert_eq!(
        rc,
        0,
        "statvfs {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    st.f_bavail * st.f_frsize
}

/// A small ext4 filesystem on a loop device, mounted for one test under a
/// temp folder of its own (so tests can each have one); unmounted and
/// deleted when dropped. Needs root; made with no blocks reserved for root,
/// so the daemon (root) and the servers (`postgres`) see the same free space.
pub struct LoopFs {
    dir: PathBuf,
    mount: PathBuf,
}

impl LoopFs {
    /// Makes and mounts a filesystem of `mib` MiB.
    pub fn new(mib: u64) -> Result<Self, SetupError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(SetupError::NotRoot {
                what: "a full-disk test",
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("sqlrs-e2e-loop-")
            .tempdir_in(std::env::temp_dir())
            .map_err(io_err(&std::env::temp_dir()))?
            .keep();
        let fs = LoopFs {
            mount: dir.join("mnt"),
            dir,
        };
        let image = fs.dir.join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(io_err(&image))?;
        std::fs::create_dir(&fs.mount).map_err(io_err(&fs.mount))?;
        let mkfs = [
            OsStr::new("-q"),
            OsStr::new("-F"),
            OsStr::new("-m"),
            OsStr::new("0"),
        ];
        fs.tool("mkfs.ext4", &mkfs, &image)?;
        fs.tool(
            "mount",
            &[OsStr::new("-o"), OsStr::new("loop"), image.as_os_str()],
            &fs.mount,
        )?;
        for dir in [&fs.dir, &fs.mount] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err(dir))?;
        }
        Ok(fs)
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    fn tool(&self, program: &str, args: &[&OsStr], last: &Path) -> Result<(), SetupError> {
        let mut cmd = Command::new(program);
        cmd.args(args).arg(last).stdin(Stdio::null());
        let out = run(cmd, Duration::from_secs(120));
        if out.success() {
            Ok(())
        } else {
            Err(SetupError::LoopFs {
                dir: self.dir.clone(),
                command: out.command.clone(),
                output: out.text().trim().to_owned(),
            })
        }
    }
}

impl LoopFs {
    /// A power cut: the filesystem is replaced, at the same mount point, by
    /// a copy of what its device held at this moment. Whatever processes
    /// wrote that still sat in the page cache (not synced, not yet written
    /// back) is lost, as it would be; the device's own contents are kept
    /// whole (a disk that loses nothing it was sent). Kill the processes
    /// using the filesystem first.
    pub fn power_cut(&self) -> Result<(), SetupError> {
        let image = self.dir.join("fs.img");
        let after = self.dir.join("after-power-cut.img");
        std::fs::copy(&image, &after).map_err(io_err(&image))?;
        self.tool("umount", &[OsStr::new("-l")], &self.mount)?;
        self.tool(
            "mount",
            &[OsStr::new("-o"), OsStr::new("loop"), after.as_os_str()],
            &self.mount,
        )
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mounted = || {
            std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
                m.lines()
                    .any(|l| l.split(' ').nth(1) == Some(&*self.mount.to_string_lossy()))
            })
        };
        for attempt in 0..20 {
            if !mounted() {
                break;
            }
            let mut cmd = Command::new("umount");
            if attempt == 19 {
                cmd.arg("-l");
            }
            cmd.arg(&self.mount).stdin(Stdio::null());
            if !run(cmd, Duration::from_secs(60)).success() {
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// Reads a prepare's JSON: the object carrying the DSN describes the instance
/// (`instance_id` or `id`, `state_id`, `dsn`).
pub fn prepared_from(json: Value) -> Prepared {
    let instance = find_object_with(&json, "dsn")
        .unwrap_or_else(|| panic!("no instance with a `dsn` in the prepare output {json:#}"));
    let get = |k: &str| {
        instance
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("instance has no `{k}` in {json:#}"))
            .to_owned()
    };
    let instance_id = match instance.get("instance_id").and_then(Value::as_str) {
        Some(id) => id.to_owned(),
        None => get("id"),
    };
    Prepared {
        instance_id,
        state_id: get("state_id"),
        dsn: get("dsn"),
        job_id: find_str(&json, "job_id").map(str::to_owned),
        json: json.clone(),
    }
}

/// The steps of a plan document (`{"steps": [{"state_id", "cached", ...}]}`).
pub fn plan_steps(json: &Value) -> Vec<PlanStep> {
    json_list(json, "steps")
        .iter()
        .map(|s| PlanStep {
            state_id: field(s, "state_id").to_owned(),
            cached: s.get("cached").and_then(Value::as_bool).unwrap_or(false),
            summary: field(s, "summary").to_owned(),
        })
        .collect()
}

fn find_object_with<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) if m.get(key).is_some_and(Value::is_string) => Some(v),
        Value::Object(m) => m.values().find_map(|c| find_object_with(c, key)),
        Value::Array(a) => a.iter().find_map(|c| find_object_with(c, key)),
        _ => None,
    }
}

/// The `id` of each listed object.
pub fn ids(list: &[Value]) -> Vec<String> {
    list.iter().map(|v| field(v, "id").to_owned()).collect()
}

/// Runs `cmd`, collecting its output; kills it after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Output {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("piped stderr")));
    let started = Instant::now();
    let (code, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status.code(), false),
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for `{command}`: {e}"),
        }
    };
    let mut stderr = stderr.join().unwrap_or_default();
    if timed_out {
        stderr.push_str(&format!(
            "\n[killed by the test harness after {}s]",
            timeout.as_secs()
        ));
    }
    Output {
        command,
        code,
        stdout: stdout.join().unwrap_or_default(),
        stderr,
    }
}

/// Processes whose working directory is under `root` (PostgreSQL servers
/// chdir into their data directory) or whose environment points their state
/// at `root` (the sandbox's daemon).
pub fn processes_under(root: &Path) -> Vec<i32> {
    let own = std::process::id() as i32;
    let marker = format!("XDG_STATE_HOME={}", root.join("state").display());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            let dir = PathBuf::from(format!("/proc/{pid}"));
            let cwd_inside = std::fs::read_link(dir.join("cwd")).is_ok_and(|c| c.starts_with(root));
            let env_inside = std::fs::read(dir.join("environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()));
            cwd_inside || env_inside
        })
        .collect()
}

/// A running PostgreSQL server: its postmaster and the data directory it
/// serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub pid: i32,
    pub data_dir: PathBuf,
    /// The postmaster and its children (checkpointer, walwriter, backends…).
    pub processes: usize,
}

/// The PostgreSQL servers whose data directory is under `root`: `postgres`
/// processes working in a directory there (a server chdirs into its data
/// directory), grouped under their postmaster (the one whose parent is not
/// a `postgres` process of the same directory). Zombies are left out.
pub fn postgres_servers_under(root: &Path) -> Vec<Server> {
    let proc_info = |pid: i32| -> Option<(String, i32, char)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(") ")?;
        let comm = head.split_once(" (")?.1.to_owned();
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        Some((comm, ppid, state))
    };
    let postgres: Vec<(i32, i32, PathBuf)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (comm, ppid, state) = proc_info(pid)?;
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
            (comm == "postgres" && state != 'Z' && cwd.starts_with(root))
                .then_some((pid, ppid, cwd))
        })
        .collect();
    let mut servers: Vec<Server> = postgres
        .iter()
        .filter(|(_, ppid, cwd)| {
            !postgres
                .iter()
                .any(|(pid, _, dir)| pid == ppid && dir == cwd)
        })
        .map(|(pid, _, cwd)| Server {
            pid: *pid,
            data_dir: cwd.clone(),
            processes: postgres.iter().filter(|(_, _, dir)| dir == cwd).count(),
        })
        .collect();
    servers.sort_by(|a, b| a.data_dir.cmp(&b.data_dir));
    servers
}

/// SIGTERM, a grace period, then SIGKILL for whatever is still there.
fn terminate(pids: &[i32]) {
    let alive = |pid: i32| Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
    for &pid in pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Deletes every btrfs subvolume under `root`, deepest first (read-only
/// snapshots cannot be emptied with plain `rm`).
fn delete_subvolumes(root: &Path) {
    let mut found = Vec::new();
    collect_subvolumes(root, &mut found);
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for subvolume in found {
        let out = run(
            {
                let mut c = Command::new("btrfs");
                c.args(["subvolume", "delete"]).arg(&subvolume);
                c
            },
            Duration::from_secs(60),
        );
        if !out.success() {
            eprintln!(
                "warning: cannot delete subvolume {}:\n{out}",
                subvolume.display()
            );
        }
    }
}

fn collect_subvolumes(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() && !meta.file_type().is_symlink() {
            if meta.ino() == BTRFS_SUBVOLUME_INO {
                found.push(entry.path());
            }
            collect_subvolumes(&entry.path(), found);
        }
    }
}

/// Copies a file or a folder recursively.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), SetupError> {
    if from.is_dir() {
        std::fs::create_dir_all(to).map_err(io_err(to))?;
        for entry in std::fs::read_dir(from).map_err(io_err(from))? {
            let entry = entry.map_err(io_err(from))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::copy(from, to).map(|_| ()).map_err(io_err(from))
    }
}

/// Defines, for each named `fn NAME(runtime: Runtime, backend: Backend)`, a
/// module `NAME` with one test per runtime and snapshot backend: `NAME::copy`
/// and `NAME::btrfs` on the native runtime, `NAME::docker_copy` on Docker
/// with the copy store. One body, every combination.
#[macro_export]
macro_rules! on_each_target {
    ($($body:ident),+ $(,)?) => {$(
        mod $body {
            #[test]
            fn copy() {
                super::$body($crate::Runtime::Native, $crate::Backend::Copy)
            }
            #[test]
            fn btrfs() {
                super::$body($crate::Runtime::Native, $crate::Backend::Btrfs)
            }
            #[test]
            fn docker_copy() {
                super::$body($crate::Runtime::Docker, $crate::Backend::Copy)
            }
        }
    )+};
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dsn_lines() {
        let cases = [
            (
                "DSN=postgres://u:p@127.0.0.1:5/db\n",
                Some("postgres://u:p@127.0.0.1:5/db"),
            ),
            (
                "step 1/2\n  DSN=postgresql://h/d  \n",
                Some("postgresql://h/d"),
            ),
            ("DSN=mysql://x\n", None),
            ("no dsn here", None),
            ("XDSN=postgres://h/d", None),
        ];
        for (text, want) in cases {
            assert_eq!(dsn_in(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn database_swap() {
        let cases = [
            (
                "postgres://u:p@127.0.0.1:5432/postgres",
                "postgres://u:p@127.0.0.1:5432/ref",
            ),
            (
                "postgres://u:p@h:1/db?sslmode=disable",
                "postgres://u:p@h:1/ref?sslmode=disable",
            ),
            ("postgresql://h:1", "postgresql://h:1/ref"),
        ];
        for (dsn, want) in cases {
            assert_eq!(with_database(dsn, "ref"), want);
        }
    }

    #[test]
    fn json_output_shapes() {
        let cases = [
            ("{\"a\":1}", Some(json!({"a": 1}))),
            ("{\"a\":1}\n{\"b\":2}\n", Some(json!([{"a": 1}, {"b": 2}]))),
            ("[1,2]", Some(json!([1, 2]))),
            ("DSN=postgres://x", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_json_output(text), want, "{text:?}");
        }
    }

    #[test]
    fn listings_and_nested_keys() {
        let doc = json!({"job_id": "j1", "result": {"instance": {"id": "i1", "state_id": "s1", "dsn": "postgres://h/d"}}});
        let p = prepared_from(doc.clone());
        assert_eq!(
            (
                p.instance_id.as_str(),
                p.state_id.as_str(),
                p.dsn.as_str(),
                p.job_id.as_deref()
            ),
            ("i1", "s1", "postgres://h/d", Some("j1"))
        );
        assert_eq!(find_str(&doc, "id"), Some("i1"));
        let cases = [
            (json!([{"id": "a"}]), vec!["a"]),
            (
                json!({"states": [{"id": "a"}, {"id": "b"}]}),
                vec!["a", "b"],
            ),
            (json!({"reply": {"states": []}}), vec![]),
        ];
        for (v, want) in cases {
            assert_eq!(ids(&json_list(&v, "states")), want, "{v}");
        }
        let plan = json!({"base_id": "b", "steps": [{"state_id": "s1", "cached": true, "summary": "-f a.sql"}, {"state_id": "s2"}]});
        assert_eq!(
            plan_steps(&plan)
                .iter()
                .map(|s| (s.state_id.as_str(), s.cached))
                .collect::<Vec<_>>(),
            [("s1", true), ("s2", false)]
        );
    }

    #[test]
    fn filesystem_variables() {
        let unset = mounted_dir("SQLRS_TEST_BTRFS", "btrfs", BTRFS_MAGIC, None).unwrap_err();
        assert!(
            unset.to_string().contains("set SQLRS_TEST_BTRFS")
                && unset.to_string().contains("packaging/ci/btrfs-image.sh"),
            "{unset}"
        );
        let empty = mounted_dir(
            "SQLRS_TEST_BTRFS",
            "btrfs",
            BTRFS_MAGIC,
            Some(OsString::new()),
        )
        .unwrap_err();
        assert!(
            matches!(empty, SetupError::FilesystemNotSet { .. }),
            "{empty}"
        );
        let temp = std::env::temp_dir();
        let wrong_magic = filesystem_magic(&temp).expect("statfs of the temp dir") ^ 1;
        let wrong =
            mounted_dir("SQLRS_TEST_X", "x", wrong_magic, Some(temp.clone().into())).unwrap_err();
        assert!(
            matches!(wrong, SetupError::WrongFilesystem { .. }),
            "{wrong}"
        );
        let right_magic = filesystem_magic(&temp).expect("statfs of the temp dir");
        assert_eq!(
            mounted_dir("SQLRS_TEST_X", "x", right_magic, Some(temp.clone().into())).unwrap(),
            temp
        );
    }

    /// A btrfs sandbox is really on btrfs, and dropping it removes read-only
    /// snapshots too (as the btrfs snapshotter leaves them).
    #[test]
    fn btrfs_sandbox_lives_on_btrfs() {
        let sandbox = Sandbox::new(Backend::Btrfs);
        let root = sandbox.root().to_owned();
        assert_eq!(filesystem_magic(&root), Some(BTRFS_MAGIC));
        let btrfs = |args: &[&str]| {
            let mut c = Command::new("btrfs");
            c.args(args).current_dir(&root);
            let out = run(c, Duration::from_secs(60));
            assert!(out.success(), "{out}");
        };
        btrfs(&["subvolume", "create", "vol"]);
        std::fs::write(root.join("vol/file"), "x").unwrap();
        btrfs(&["subvolume", "snapshot", "-r", "vol", "vol/frozen"]);
        drop(sandbox);
        assert!(!root.exists(), "{} left behind", root.display());
    }

    #[test]
    fn config_for_each_runtime() {
        let docker = DockerEnv {
            host: "unix:///d.sock".into(),
            image: "img:1".into(),
        };
        let cases = [
            (None, None, "runtime:\n  kind: native\n"),
            (
                None,
                Some(Backend::Btrfs),
                "runtime:\n  kind: native\nsnapshot:\n  backend: btrfs\n",
            ),
            (
                Some(&docker),
                Some(Backend::Copy),
                "runtime:\n  kind: docker\n  docker:\n    host: unix:///d.sock\n    image: img:1\nsnapshot:\n  backend: copy\n",
            ),
        ];
        for (docker, backend, want) in cases {
            assert_eq!(config_yaml(docker, backend), want, "{docker:?} {backend:?}");
        }
    }

    #[test]
    fn docker_variables() {
        let env = |host: Option<&str>, image: Option<&str>| {
            DockerEnv::from_values(host.map(OsString::from), image.map(OsString::from))
        };
        for host in [None, Some("")] {
            let err = env(host, Some("x")).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, SetupError::DockerNotSet)
                    && msg.contains("packaging/ci/docker.sh")
                    && msg.contains("packaging/docker/build-image.sh"),
                "{msg}"
            );
        }
        let cases = [
            (None, DEFAULT_TEST_IMAGE),
            (Some(""), DEFAULT_TEST_IMAGE),
            (Some("pg:17"), "pg:17"),
        ];
        for (image, want) in cases {
            assert_eq!(
                env(Some("unix:///s"), image).unwrap(),
                DockerEnv {
                    host: "unix:///s".into(),
                    image: want.into()
                }
            );
        }
        let unreachable = DockerEnv {
            host: "unix:///nonexistent/docker.sock".into(),
            image: DEFAULT_TEST_IMAGE.into(),
        }
        .check()
        .unwrap_err();
        assert!(
            matches!(unreachable, SetupError::DockerUnreachable { .. })
                && unreachable.to_string().contains("packaging/ci/docker.sh"),
            "{unreachable}"
        );
    }

    #[test]
    fn sandbox_layout() {
        let sandbox = Sandbox::new(Backend::Copy);
        let root = sandbox.root().to_owned();
        assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o777, 0o755);
        assert_eq!(
            std::fs::read_to_string(sandbox.config_path()).unwrap(),
            "runtime:\n  kind: native\nsnapshot:\n  backend: copy\n"
        );
        let file = sandbox.write("sql/a.sql", "select 1;\n");
        assert!(file.starts_with(sandbox.project()));
        let chinook = sandbox.copy_dataset("chinook", "chinook");
        assert!(chinook.join("chinook.sql").is_file());
        drop(sandbox);
        assert!(!root.exists(), "{} left behind", root.display());
    }

    /// A loop filesystem is a mounted ext4 of about the asked size with no
    /// blocks reserved for root, gone (unmounted and deleted) after drop.
    #[test]
    fn loop_filesystem_mounts_and_goes() {
        let fs = LoopFs::new(64).unwrap_or_else(|e| panic!("{e}"));
        let mount = fs.path().to_owned();
        let dir = mount.parent().unwrap().to_owned();
        assert_eq!(filesystem_magic(&mount), Some(libc::EXT4_SUPER_MAGIC));
        let free = free_bytes(&mount);
        assert!(free > 40 << 20 && free < 64 << 20, "{free}");
        std::fs::write(mount.join("x"), vec![1u8; 1 << 20]).unwrap();
        assert!(free_bytes(&mount) < free);
        assert!(check_traversable(&mount).is_ok());
        drop(fs);
        assert!(!dir.exists(), "{} left behind", dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&*mount.to_string_lossy()), "{mounts}");
    }

    #[test]
    fn traversal_check_names_the_closed_directory() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(check_traversable(Path::new("/")).is_ok());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        match check_traversable(&inner) {
            Err(SetupError::NotTraversable { path, mode }) => {
                assert_eq!((path.as_path(), mode), (dir.path(), 0o700))
            }
            other => panic!("expected NotTraversable, got {other:?}"),
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_traversable(&inner).is_ok());
    }
}

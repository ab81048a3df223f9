//! What the benchmarks share: datasets, plain PostgreSQL servers as baselines,
//! isolated sqlrs daemons, timing and medians.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Dataset {
    pub name: &'static str,
    /// Files copied into the project folder: (name, content).
    pub files: Vec<(String, Vec<u8>)>,
    /// psql arguments of the chain; the last `-f` is the step edited in (d).
    pub args: Vec<String>,
    pub runs: usize,
}

/// Where a bench keeps what is not on btrfs (copy stores, projects, plain
/// servers): `SQLRS_BENCH_DIR`, else /var/tmp. A copy store's clones cost
/// what copying files costs there, which differs between folders of one
/// filesystem (see docs/benchmarks.md), so the prepare bench also times a
/// plain `cp -a` of the state in the same place.
pub fn bench_dir() -> PathBuf {
    let dir = std::env::var_os("SQLRS_BENCH_DIR")
        .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn datasets_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = here.join("../../shared/datasets");
    assert!(
        dir.is_dir(),
        "datasets not found at {}: the shared/ folder must sit beside the repository",
        dir.display()
    );
    dir
}

pub fn read_dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The benchmark datasets; `SQLRS_BENCH_DATASETS` (comma-separated names)
/// keeps only some of them.
pub fn datasets(runs: usize) -> Vec<Dataset> {
    let wanted = std::env::var("SQLRS_BENCH_DATASETS").ok();
    let mut all = all_datasets(runs);
    if let Some(wanted) = wanted {
        let names: Vec<&str> = wanted.split(',').map(str::trim).collect();
        all.retain(|d| names.contains(&d.name));
        assert!(
            !all.is_empty(),
            "SQLRS_BENCH_DATASETS={wanted} names no dataset"
        );
    }
    all
}

fn all_datasets(runs: usize) -> Vec<Dataset> {
    let d = datasets_dir();
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        Dataset {
            name: "chinook",
            files: read_dir_files(&d.join("chinook")),
            args: args(&["-f", "chinook.sql"]),
            runs,
        },
        Dataset {
            name: "tpch-sf0.01",
            files: read_dir_files(&d.join("tpch-sf0.01")),
            args: args(&["-f", "schema.sql", "-f", "load.sql"]),
            runs,
        },
        Dataset {
            name: "generated-750MB",
            files: vec![
                (
                    "big_schema.sql".into(),
                    b"create table accounts (aid int primary key, bid int, abalance int, filler char(84));\n"
                        .to_vec(),
                ),
                (
                    "big_fill.sql".into(),
                    b"insert into accounts select g, g / 100000, 0, '' from generate_series(1, 5000000) g;\nvacuum analyze accounts;\n"
                        .to_vec(),
                ),
            ],
            args: args(&["-f", "big_schema.sql", "-f", "big_fill.sql"]),
            runs: runs.min(3),
        },
    ]
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn postgres_ids() -> (u32, u32) {
    let uid = run_ok(Command::new("id").args(["-u", "postgres"]));
    let gid = run_ok(Command::new("id").args(["-g", "postgres"]));
    (uid.trim().parse().unwrap(), gid.trim().parse().unwrap())
}

/// A command that runs as the postgres account when we are root.
pub fn as_pg(program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(Path::new(PG_BIN).join(program));
    if running_as_root() {
        let (uid, gid) = postgres_ids();
        c.uid(uid).gid(gid);
    }
    c
}

pub fn running_as_root() -> bool {
    run_ok(Command::new("id").arg("-u")).trim() == "0"
}

pub fn psql(dsn: &str, args: &[&str], cwd: &Path) -> Duration {
    let t = Instant::now();
    run_ok(
        Command::new(Path::new(PG_BIN).join("psql"))
            .arg(dsn)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(args)
            .current_dir(cwd)
            .stdout(Stdio::null()),
    );
    t.elapsed()
}

/// A plain server, the way developers use one without sqlrs.
pub struct PlainServer {
    pub data: PathBuf,
    pub port: u16,
}

impl PlainServer {
    pub fn start(root: &Path, name: &str) -> Self {
        let data = root.join(name);
        std::fs::create_dir_all(&data).unwrap();
        chown_pg(&data);
        run_ok(as_pg("initdb").args(["-D"]).arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]));
        let port = free_port();
        run_ok(
            as_pg("pg_ctl")
                .args(["-D"])
                .arg(&data)
                .args(["-w", "-l"])
                .arg(data.join("log"))
                .arg("-o")
                .arg(format!(
                    "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off -c synchronous_commit=off"
                ))
                .arg("start"),
        );
        Self { data, port }
    }

    pub fn dsn(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        let _ = as_pg("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

pub fn chown_pg(path: &Path) {
    if running_as_root() {
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(path),
        );
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An isolated sqlrs daemon with its own store on one backend.
pub struct Sqlrs {
    pub bin: PathBuf,
    pub root: PathBuf,
}

impl Sqlrs {
    /// `config` is the daemon's config.yaml.
    pub fn new(root: PathBuf, config: &str) -> Self {
        let bin = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_owned();
        for b in ["sqlrs", "sqlrsd"] {
            assert!(
                bin.join(b).is_file(),
                "{} missing: run `cargo build --release --workspace` first",
                bin.join(b).display()
            );
        }
        std::fs::create_dir_all(root.join("config/sqlrs")).unwrap();
        std::fs::write(root.join("config/sqlrs/config.yaml"), config).unwrap();
        Self { bin, root }
    }

    pub fn cmd(&self, cwd: &Path) -> Command {
        let mut c = Command::new(self.bin.join("sqlrs"));
        c.env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("XDG_STATE_HOME", self.root.join("state"))
            .env("XDG_RUNTIME_DIR", self.root.join("run"))
            .env("SQLRSD_BIN", self.bin.join("sqlrsd"))
            .current_dir(cwd);
        c
    }

    /// Prepare, returning (elapsed until a query answered, instance id, dsn).
    pub fn prepare(&self, cwd: &Path, args: &[String]) -> (Duration, String, String) {
        let (t, v) = self.prepare_json(cwd, args);
        (
            t,
            v["instance_id"].as_str().unwrap().to_string(),
            v["dsn"].as_str().unwrap().to_string(),
        )
    }

    /// Prepare, returning the time until a query answered and the CLI's JSON.
    pub fn prepare_json(&self, cwd: &Path, args: &[String]) -> (Duration, serde_json::Value) {
        let t = Instant::now();
        let out = run_ok(
            self.cmd(cwd)
                .args(["--output", "json", "prepare:psql", "--"])
                .args(args),
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("prepare prints JSON");
        psql(v["dsn"].as_str().unwrap(), &["-c", "select 1"], cwd);
        (t.elapsed(), v)
    }

    /// Removes every state and instance of this store (from the roots down):
    /// read-only btrfs snapshots would otherwise outlive the bench's folder.
    pub fn remove_all_states(&self, cwd: &Path) {
        let out = run_ok(self.cmd(cwd).args(["--output", "json", "ls", "--states"]));
        let states: serde_json::Value = serde_json::from_str(&out).expect("ls --states JSON");
        for s in states.as_array().into_iter().flatten() {
            let root = s["parent_id"].as_str().is_none_or(str::is_empty);
            if root {
                self.rm(cwd, s["id"].as_str().expect("a state id"));
            }
        }
    }

    pub fn rm(&self, cwd: &Path, id: &str) {
        run_ok(self.cmd(cwd).args(["rm", "--recurse", "--force", id]));
    }
}

impl Drop for Sqlrs {
    fn drop(&mut self) {
        let _ = self.cmd(&self.root).args(["daemon", "stop"]).output();
    }
}

pub fn write_project(dir: &Path, ds: &Dataset) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in &ds.files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

pub struct Row {
    pub dataset: &'static str,
    pub what: String,
    pub median: Duration,
}

impl Sqlrs {
    /// Like [`Sqlrs::prepare_json`] for any prepare command (`prepare:lb`,
    /// …), with `env_remove` taken out of the CLI's environment (and so out of
    /// a daemon it starts).
    pub fn prepare_command_json(
        &self,
        cwd: &Path,
        command: &str,
        args: &[String],
        env_remove: &[&str],
    ) -> (Duration, serde_json::Value) {
        let t = Instant::now();
        let mut cmd = self.cmd(cwd);
        for var in env_remove {
            cmd.env_remove(var);
        }
        let out = run_ok(cmd.args(["--output", "json", command, "--"]).args(args));
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("prepare prints JSON");
        psql(v["dsn"].as_str().unwrap(), &["-c", "select 1"], cwd);
        (t.elapsed(), v)
    }
}

/// Copies the files of `from` into `to` (created), recursively, following
/// symbolic links: the copy holds their targets.
pub fn copy_resolved(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        // `metadata` follows symbolic links.
        let meta = std::fs::metadata(&src).unwrap();
        if meta.is_dir() {
            copy_resolved(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

//! Cache-hit prepare against its baselines, in one run: full psql replay into
//! a fresh cluster, `CREATE DATABASE … TEMPLATE` on a running server, sqlrs
//! cache-hit prepare (btrfs and copy), and sqlrs after editing the last step.
//!
//! Run: `cargo build --release --workspace && cargo bench -p sqlrsd --bench prepare`
//! (as root with `SQLRS_TEST_BTRFS` set to a btrfs directory; see
//! `packaging/ci/btrfs-image.sh`). `SQLRS_BENCH_RUNS` sets the repetitions.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

struct Dataset {
    name: &'static str,
    /// Files copied into the project folder: (name, content).
    files: Vec<(String, Vec<u8>)>,
    /// psql arguments of the chain; the last `-f` is the step edited in (d).
    args: Vec<String>,
    runs: usize,
}

fn datasets_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = here.join("../../shared/datasets");
    assert!(
        dir.is_dir(),
        "datasets not found at {}: the shared/ folder must sit beside the repository",
        dir.display()
    );
    dir
}

fn read_dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
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

fn datasets(runs: usize) -> Vec<Dataset> {
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn postgres_ids() -> (u32, u32) {
    let uid = run_ok(Command::new("id").args(["-u", "postgres"]));
    let gid = run_ok(Command::new("id").args(["-g", "postgres"]));
    (uid.trim().parse().unwrap(), gid.trim().parse().unwrap())
}

/// A command that runs as the postgres account when we are root.
fn as_pg(program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(Path::new(PG_BIN).join(program));
    if running_as_root() {
        let (uid, gid) = postgres_ids();
        c.uid(uid).gid(gid);
    }
    c
}

fn running_as_root() -> bool {
    run_ok(Command::new("id").arg("-u")).trim() == "0"
}

fn psql(dsn: &str, args: &[&str], cwd: &Path) -> Duration {
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
struct PlainServer {
    data: PathBuf,
    port: u16,
}

impl PlainServer {
    fn start(root: &Path, name: &str) -> Self {
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

    fn dsn(&self, db: &str) -> String {
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

fn chown_pg(path: &Path) {
    if running_as_root() {
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(path),
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An isolated sqlrs daemon with its own store on one backend.
struct Sqlrs {
    bin: PathBuf,
    root: PathBuf,
}

impl Sqlrs {
    fn new(root: PathBuf, backend: &str) -> Self {
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
        std::fs::write(
            root.join("config/sqlrs/config.yaml"),
            format!("snapshot:\n  backend: {backend}\n"),
        )
        .unwrap();
        Self { bin, root }
    }

    fn cmd(&self, cwd: &Path) -> Command {
        let mut c = Command::new(self.bin.join("sqlrs"));
        c.env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("XDG_STATE_HOME", self.root.join("state"))
            .env("XDG_RUNTIME_DIR", self.root.join("run"))
            .env("SQLRSD_BIN", self.bin.join("sqlrsd"))
            .current_dir(cwd);
        c
    }

    /// Prepare, returning (elapsed until a query answered, instance id, dsn).
    fn prepare(&self, cwd: &Path, args: &[String]) -> (Duration, String, String) {
        let (t, v) = self.prepare_json(cwd, args);
        (
            t,
            v["instance_id"].as_str().unwrap().to_string(),
            v["dsn"].as_str().unwrap().to_string(),
        )
    }

    /// Prepare, returning the time until a query answered and the CLI's JSON.
    fn prepare_json(&self, cwd: &Path, args: &[String]) -> (Duration, serde_json::Value) {
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

    fn rm(&self, cwd: &Path, id: &str) {
        run_ok(self.cmd(cwd).args(["rm", "--recurse", "--force", id]));
    }
}

impl Drop for Sqlrs {
    fn drop(&mut self) {
        let _ = self.cmd(&self.root).args(["daemon", "stop"]).output();
    }
}

fn write_project(dir: &Path, ds: &Dataset) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in &ds.files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

struct Row {
    dataset: &'static str,
    what: String,
    median: Duration,
}

fn bench_sqlrs(sqlrs: &Sqlrs, label: &str, ds: &Dataset, project: &Path, rows: &mut Vec<Row>) {
    let (build, id, _) = sqlrs.prepare(project, &ds.args);
    sqlrs.rm(project, &id);
    eprintln!("  {label}: first build {}s", secs(build));
    let mut hits = Vec::new();
    for _ in 0..ds.runs {
        let (t, id, _) = sqlrs.prepare(project, &ds.args);
        sqlrs.rm(project, &id);
        hits.push(t);
    }
    rows.push(Row {
        dataset: ds.name,
        what: format!("(c) sqlrs cache-hit prepare, {label}"),
        median: median(hits),
    });
    // (d): edit the last step (a new comment line each time) and prepare.
    let last = ds.args.last().unwrap().clone();
    let original = std::fs::read(project.join(&last)).unwrap();
    let mut edits = Vec::new();
    for i in 0..ds.runs {
        let mut edited = original.clone();
        edited.extend_from_slice(format!("\n-- edit {label} {i}\n").as_bytes());
        std::fs::write(project.join(&last), edited).unwrap();
        let (t, v) = sqlrs.prepare_json(project, &ds.args);
        // The edited state is not needed again: free its space.
        sqlrs.rm(project, v["state_id"].as_str().unwrap());
        edits.push(t);
    }
    std::fs::write(project.join(&last), &original).unwrap();
    rows.push(Row {
        dataset: ds.name,
        what: format!("(d) sqlrs after editing the last step, {label}"),
        median: median(edits),
    });
    // The last step alone, replayed by psql on an instance of the state before it.
    let prefix = &ds.args[..ds.args.len() - 2];
    let mut alone = Vec::new();
    for i in 0..ds.runs {
        if prefix.is_empty() {
            // A one-step chain: its step alone runs on an empty cluster.
            let server = PlainServer::start(&sqlrs.root, &format!("{}-alone-{i}", ds.name));
            alone.push(psql(&server.dsn("postgres"), &["-f", &last], project));
            continue;
        }
        let (_, id, dsn) = sqlrs.prepare(project, prefix);
        alone.push(psql(&dsn, &["-f", &last], project));
        sqlrs.rm(project, &id);
    }
    rows.push(Row {
        dataset: ds.name,
        what: format!("last step alone (psql), {label}"),
        median: median(alone),
    });
}

fn main() {
    let runs: usize = std::env::var("SQLRS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let btrfs = std::env::var_os("SQLRS_TEST_BTRFS")
        .map(PathBuf::from)
        .expect(
            "set SQLRS_TEST_BTRFS to a directory on btrfs (packaging/ci/btrfs-image.sh makes one)",
        );
    let tmp = tempfile::Builder::new()
        .prefix("sqlrs-bench")
        .tempdir_in("/var/tmp")
        .unwrap();
    let btrfs_root = tempfile::Builder::new()
        .prefix("sqlrs-bench")
        .tempdir_in(&btrfs)
        .unwrap();
    for d in [tmp.path(), btrfs_root.path()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut rows = Vec::new();
    let btrfs_sqlrs = Sqlrs::new(btrfs_root.path().join("sqlrs"), "btrfs");
    let copy_sqlrs = Sqlrs::new(tmp.path().join("sqlrs"), "copy");
    for ds in datasets(runs) {
        eprintln!("{}:", ds.name);
        let project = tmp.path().join("projects").join(ds.name);
        write_project(&project, &ds);
        // (a) full replay into a freshly started empty cluster.
        let mut replays = Vec::new();
        let file_args: Vec<&str> = ds.args.iter().map(String::as_str).collect();
        for i in 0..ds.runs.min(3) {
            let server = PlainServer::start(tmp.path(), &format!("{}-replay-{i}", ds.name));
            replays.push(psql(&server.dsn("postgres"), &file_args, &project));
        }
        rows.push(Row {
            dataset: ds.name,
            what: "(a) full replay with psql into a fresh cluster".into(),
            median: median(replays),
        });
        // (b) CREATE DATABASE … TEMPLATE on a running server.
        let server = PlainServer::start(tmp.path(), &format!("{}-template", ds.name));
        psql(
            &server.dsn("postgres"),
            &["-c", "create database prepared"],
            &project,
        );
        psql(&server.dsn("prepared"), &file_args, &project);
        let mut clones = Vec::new();
        for i in 0..ds.runs {
            let t = Instant::now();
            psql(
                &server.dsn("postgres"),
                &["-c", &format!("create database clone{i} template prepared")],
                &project,
            );
            psql(
                &server.dsn(&format!("clone{i}")),
                &["-c", "select 1"],
                &project,
            );
            clones.push(t.elapsed());
        }
        drop(server);
        rows.push(Row {
            dataset: ds.name,
            what: "(b) CREATE DATABASE … TEMPLATE on a running server".into(),
            median: median(clones),
        });
        bench_sqlrs(&btrfs_sqlrs, "btrfs", &ds, &project, &mut rows);
        bench_sqlrs(&copy_sqlrs, "copy", &ds, &project, &mut rows);
        let _ = std::fs::remove_dir_all(tmp.path().join(format!("{}-template", ds.name)));
        for i in 0..3 {
            let _ = std::fs::remove_dir_all(tmp.path().join(format!("{}-replay-{i}", ds.name)));
        }
    }
    report(&rows, runs);
}

fn find(rows: &[Row], ds: &str, prefix: &str) -> Duration {
    rows.iter()
        .find(|r| r.dataset == ds && r.what.starts_with(prefix))
        .map(|r| r.median)
        .unwrap_or_else(|| panic!("no row {ds} {prefix}"))
}

fn report(rows: &[Row], runs: usize) {
    println!("| dataset | measurement | median (s) |");
    println!("|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.dataset, r.what, secs(r.median));
    }
    println!("\nRatios (runs per median: {runs}; 3 for the generated state):\n");
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let mut datasets: Vec<&str> = rows.iter().map(|r| r.dataset).collect();
    datasets.dedup();
    for ds in &datasets {
        let a = find(rows, ds, "(a)");
        let b = find(rows, ds, "(b)");
        for backend in ["btrfs", "copy"] {
            let c = find(rows, ds, &format!("(c) sqlrs cache-hit prepare, {backend}"));
            let d = find(
                rows,
                ds,
                &format!("(d) sqlrs after editing the last step, {backend}"),
            );
            let alone = find(rows, ds, &format!("last step alone (psql), {backend}"));
            println!(
                "- {ds} {backend}: (a)/(c) = {:.1}x, (c)/(b) = {:.2}, (d)/(alone + c) = {:.2}",
                ratio(a, c),
                ratio(c, b),
                ratio(d, alone + c)
            );
        }
    }
    if datasets.contains(&"generated-750MB") && datasets.contains(&"chinook") {
        let big = find(
            rows,
            "generated-750MB",
            "(c) sqlrs cache-hit prepare, btrfs",
        );
        let small = find(rows, "chinook", "(c) sqlrs cache-hit prepare, btrfs");
        println!(
            "- btrfs cache hit, 750 MB vs Chinook: {:.2}x",
            ratio(big, small)
        );
    }
}

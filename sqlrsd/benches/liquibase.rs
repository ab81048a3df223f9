//! `prepare:lb` against a full `liquibase update`, in one run, on the
//! procrastinate changelog (one `sqlFile` changeset per migration): (a) the
//! full update into a freshly started empty cluster, (b) sqlrs cache-hit
//! `prepare:lb` on a btrfs store, (c) sqlrs after editing the last
//! changeset's file. Liquibase runs behind a wrapper that logs every
//! invocation, which proves that a cache hit starts no JVM.
//!
//! Run: `cargo build --release --workspace && cargo bench -p sqlrsd --bench liquibase`
//! as root, with `SQLRS_LIQUIBASE` naming the Liquibase launcher (or
//! `liquibase` on `PATH`; `packaging/ci/liquibase.sh` installs it) and
//! `SQLRS_TEST_BTRFS` a directory on btrfs (`packaging/ci/btrfs-image.sh`).
//! `SQLRS_BENCH_RUNS` sets the repetitions.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CHANGELOG: &str = "changelog.xml";

/// The JVM options sqlrs gives Liquibase (`sqlrsd/src/liquibase/cli.rs`),
/// used for the full update (a) too; sqlrs's class-data archive is not.
/// (a′) runs it with the launcher's defaults instead, as most people do.
const JAVA_OPTS: &str = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dfile.encoding=UTF-8 \
     -Dliquibase.analytics.enabled=false";

/// The daemon must use the logging wrapper its config names, and
/// `SQLRS_LIQUIBASE` would win over it: it is taken out of every sqlrs command.
const HIDDEN: &[&str] = &["SQLRS_LIQUIBASE"];

/// The real Liquibase launcher: `SQLRS_LIQUIBASE`, else `liquibase` on `PATH`.
fn liquibase_launcher() -> PathBuf {
    const HOW: &str = "install Liquibase with `bash packaging/ci/liquibase.sh .build/liquibase` \
         (npm liquibase@4.28.1 and Java 17) and export SQLRS_LIQUIBASE with the path it prints";
    if let Some(p) = std::env::var_os("SQLRS_LIQUIBASE").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SQLRS_LIQUIBASE={} is not a file: {HOW}",
            p.display()
        );
        return p;
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("liquibase"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("Liquibase not found (SQLRS_LIQUIBASE unset, none on PATH): {HOW}")
        })
}

/// A launcher that appends its arguments to `log`, then runs `real`.
fn logging_wrapper(dir: &Path, real: &Path) -> (PathBuf, PathBuf) {
    let (wrapper, log) = (dir.join("liquibase"), dir.join("liquibase-runs.log"));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    (wrapper, log)
}

/// Every Liquibase command line the wrapper logged so far.
fn logged(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// How many of `runs` ran the Liquibase command `command`.
fn count(runs: &[String], command: &str) -> usize {
    runs.iter()
        .filter(|l| l.split_whitespace().any(|w| w == command))
        .count()
}

/// The procrastinate changelog with its migrations (a symbolic link in the
/// fixture) copied into `project`; returns the last changeset's file.
fn write_project(project: &Path) -> PathBuf {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/liquibase/procrastinate");
    assert!(
        fixture.join("migrations").is_dir(),
        "{}/migrations is missing: the shared/ folder with datasets/mig-procrastinate must sit beside the repository",
        fixture.display()
    );
    copy_resolved(&fixture, project);
    let changelog = std::fs::read_to_string(project.join(CHANGELOG)).unwrap();
    let last = changelog
        .lines()
        .rev()
        .filter_map(|l| l.split("path=\"").nth(1))
        .find_map(|rest| rest.split('"').next())
        .expect("the changelog has sqlFile changesets");
    project.join(last)
}

/// One answer of `sql` on `dsn`.
fn query(dsn: &str, sql: &str) -> String {
    run_ok(
        Command::new(Path::new(PG_BIN).join("psql"))
            .arg(dsn)
            .args(["-X", "-A", "-t", "-c", sql]),
    )
    .trim()
    .to_owned()
}

/// (a): `liquibase update` of the whole changelog into a freshly started
/// empty cluster, until the database answers a query. Returns the time and
/// how many changesets DATABASECHANGELOG records. `java_opts`: `JAVA_OPTS`
/// for the launcher, none for its defaults.
fn full_update(
    real: &Path,
    project: &Path,
    root: &Path,
    name: &str,
    java_opts: Option<&str>,
) -> (Duration, usize) {
    let server = PlainServer::start(root, name);
    let dsn = server.dsn("postgres");
    let t = Instant::now();
    let mut cmd = Command::new(real);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        .env("LIQUIBASE_SHOW_BANNER", "false");
    if let Some(opts) = java_opts {
        cmd.env("JAVA_OPTS", opts);
    }
    for keep in ["HOME", "JAVA_HOME", "TMPDIR"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    run_ok(
        cmd.arg("--defaults-file=/dev/null")
            .arg(format!("--search-path={}", project.display()))
            .arg("update")
            .arg(format!("--changelog-file={CHANGELOG}"))
            .arg(format!(
                "--url=jdbc:postgresql://127.0.0.1:{}/postgres",
                server.port
            ))
            .args(["--username=postgres", "--password=postgres"])
            .current_dir(project)
            .stdin(Stdio::null()),
    );
    psql(&dsn, &["-c", "select 1"], project);
    let elapsed = t.elapsed();
    let applied = query(&dsn, "select count(*) from databasechangelog")
        .parse()
        .unwrap();
    drop(server);
    let _ = std::fs::remove_dir_all(root.join(name));
    (elapsed, applied)
}

struct Bench {
    sqlrs: Sqlrs,
    project: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl Bench {
    fn prepare(&self) -> (Duration, serde_json::Value) {
        self.sqlrs
            .prepare_command_json(&self.project, "prepare:lb", &self.args, HIDDEN)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut cmd = self.sqlrs.cmd(&self.project);
        for var in HIDDEN {
            cmd.env_remove(var);
        }
        let out = run_ok(cmd.args(["--output", "json"]).args(args));
        serde_json::from_str(out.trim()).expect("sqlrs prints JSON")
    }

    fn rm(&self, id: &str) {
        let mut cmd = self.sqlrs.cmd(&self.project);
        for var in HIDDEN {
            cmd.env_remove(var);
        }
        run_ok(cmd.args(["rm", "--recurse", "--force", id]));
    }

    /// (b): a cache hit; returns its time and the Liquibase runs it started.
    fn hit(&self) -> (Duration, usize) {
        let before = logged(&self.log).len();
        let (t, v) = self.prepare();
        let started = logged(&self.log).len() - before;
        self.rm(v["instance_id"].as_str().unwrap());
        (t, started)
    }

    /// (c): a prepare after a new comment line at the end of `last`; returns
    /// its time and the Liquibase runs it started (the original is restored).
    fn edited(&self, last: &Path, original: &[u8], i: usize) -> (Duration, Vec<String>) {
        let mut edited = original.to_vec();
        edited.extend_from_slice(format!("\n-- edit {i}\n").as_bytes());
        std::fs::write(last, edited).unwrap();
        let before = logged(&self.log).len();
        let (t, v) = self.prepare();
        let runs = logged(&self.log)[before..].to_vec();
        // The edited state is not needed again: free its space.
        self.rm(v["state_id"].as_str().unwrap());
        std::fs::write(last, original).unwrap();
        (t, runs)
    }
}

fn main() {
    let runs: usize = std::env::var("SQLRS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let real = liquibase_launcher();
    let btrfs = std::env::var_os("SQLRS_TEST_BTRFS")
        .map(PathBuf::from)
        .expect(
            "set SQLRS_TEST_BTRFS to a directory on btrfs (packaging/ci/btrfs-image.sh makes one)",
        );
    let tmp = tempfile::Builder::new()
        .prefix("sqlrs-bench-lb")
        .tempdir_in(bench_dir())
        .unwrap();
    let btrfs_root = tempfile::Builder::new()
        .prefix("sqlrs-bench-lb")
        .tempdir_in(&btrfs)
        .unwrap();
    for d in [tmp.path(), btrfs_root.path()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let project = tmp.path().join("project");
    let last = write_project(&project);
    let original = std::fs::read(&last).unwrap();
    let (wrapper, log) = logging_wrapper(tmp.path(), &real);
    let config = format!(
        "runtime:\n  kind: native\nsnapshot:\n  backend: btrfs\nliquibase:\n  exec: {}\n",
        wrapper.display()
    );
    let bench = Bench {
        sqlrs: Sqlrs::new(btrfs_root.path().join("sqlrs"), &config),
        project,
        args: ["update", "--changelog-file", CHANGELOG]
            .map(String::from)
            .to_vec(),
        log,
    };
    let status = bench.json(&["status"]);
    eprintln!(
        "{}; store on btrfs at {}",
        status["liquibase"]
            .as_str()
            .unwrap_or_else(|| panic!("sqlrs status names no Liquibase: {status:#}")),
        btrfs_root.path().display()
    );

    // The first build: every changeset once, one state each.
    let before = logged(&bench.log).len();
    let (build, v) = bench.prepare();
    let first = logged(&bench.log)[before..].to_vec();
    bench.rm(v["instance_id"].as_str().unwrap());
    let plan = bench.json(
        &[
            &["plan:lb", "--"][..],
            &bench.args.iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
    );
    let steps = plan["steps"].as_array().expect("plan:lb lists steps");
    assert!(
        steps.iter().all(|s| s["cached"].as_bool() == Some(true)),
        "every changeset is cached after the first build: {plan:#}"
    );
    let changesets = steps.len();
    let base_id = plan["base_id"]
        .as_str()
        .expect("plan:lb names the base state")
        .to_owned();
    eprintln!(
        "first build: {}s, {changesets} changesets, Liquibase runs: {} update-sql, {} update-count",
        secs(build),
        count(&first, "update-sql"),
        count(&first, "update-count")
    );

    // (a), (b) and (c) in turns, so they share whatever else the machine does.
    let (mut full, mut full_default) = (Vec::new(), Vec::new());
    let (mut hits, mut edits) = (Vec::new(), Vec::new());
    let (mut hit_runs, mut edit_runs) = (0, Vec::new());
    for i in 0..runs {
        for (times, opts, label) in [
            (&mut full, Some(JAVA_OPTS), "sqlrs-opts"),
            (&mut full_default, None, "default-opts"),
        ] {
            let name = format!("full-update-{label}-{i}");
            let (t, applied) = full_update(&real, &bench.project, tmp.path(), &name, opts);
            assert_eq!(
                applied, changesets,
                "liquibase update applied every changeset"
            );
            times.push(t);
        }
        let (t, started) = bench.hit();
        hits.push(t);
        hit_runs += started;
        let (t, started) = bench.edited(&last, &original, i);
        edits.push(t);
        eprintln!(
            "run {}: (a) {}s (a') {}s (b) {}s (c) {}s",
            i + 1,
            secs(full[i]),
            secs(full_default[i]),
            secs(hits[i]),
            secs(t)
        );
        edit_runs.push(started);
    }
    let (a, a_default) = (median(full), median(full_default));
    let (b, c) = (median(hits), median(edits));
    let ratio = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64();
    println!("| measurement | median (s) |");
    println!("|---|---|");
    println!(
        "| (a) full `liquibase update` into a fresh cluster | {} |",
        secs(a)
    );
    println!(
        "| (a') the same with the launcher's default JVM options | {} |",
        secs(a_default)
    );
    println!("| (b) sqlrs cache-hit prepare:lb, btrfs | {} |", secs(b));
    println!(
        "| (c) sqlrs after editing the last changeset, btrfs | {} |",
        secs(c)
    );
    println!(
        "\n{changesets} changesets, {runs} runs per median; first build {}s",
        secs(build)
    );
    println!(
        "- (a)/(b) = {:.1}x, (a')/(b) = {:.1}x, (c)/(b) = {:.1}x, (a)/(c) = {:.2}x",
        ratio(a, b),
        ratio(a_default, b),
        ratio(c, b),
        ratio(a, c)
    );
    println!("- Liquibase runs started by {runs} cache hits: {hit_runs}");
    let all_edits: Vec<String> = edit_runs.concat();
    println!(
        "- Liquibase runs started by {runs} edits: {} update-sql, {} update-count, {} other",
        count(&all_edits, "update-sql"),
        count(&all_edits, "update-count"),
        all_edits.len() - count(&all_edits, "update-sql") - count(&all_edits, "update-count")
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("\n| target | result |\n|---|---|");
    println!(
        "| cache hit under 0.5 s on btrfs | {}: {}s |",
        verdict(b < Duration::from_millis(500)),
        secs(b)
    );
    println!(
        "| cache hit starts no JVM | {}: {hit_runs} Liquibase runs in {runs} hits |",
        verdict(hit_runs == 0)
    );
    println!(
        "| cache hit at least 10x faster than the full update | {}: {:.1}x |",
        verdict(ratio(a, b) >= 10.0),
        ratio(a, b)
    );
    // States are read-only btrfs subvolumes that only sqlrs removes.
    bench.rm(&base_id);
}

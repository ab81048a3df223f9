//! `sqlrs prepare NAME` with a warm instance against `CREATE DATABASE …
//! TEMPLATE` on a running server, in one run, on Chinook and on a generated
//! state of about 750 MB; then the daemon's idle memory with two watched
//! workspaces.
//!
//! Run: `cargo build --release --workspace && cargo bench -p sqlrsd --bench warm`
//! (as root with `SQLRS_TEST_BTRFS` set to a btrfs directory; see
//! `packaging/ci/btrfs-image.sh`). `SQLRS_BENCH_RUNS` sets the repetitions,
//! `SQLRS_BENCH_DATASETS` the datasets (default: chinook,generated-750MB).
//!
//! Both sides are timed until a new connection to the database answered
//! `select 1` (made from this process, so no client start-up is counted on
//! either side). The sqlrs side starts with the CLI process; the template
//! side with the statement, on a connection already open.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const ALIAS: &str = "db";

async fn answers(dsn: &str) {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {dsn}: {e}"));
    let task = tokio::spawn(conn);
    client.simple_query("select 1").await.unwrap();
    drop(client);
    let _ = task.await;
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Waits until the pool has `want` warm instances and starts none.
fn wait_for_pool(sqlrs: &Sqlrs, cwd: &Path, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let v = json(&run_ok(sqlrs.cmd(cwd).args(["--output", "json", "status"])));
        let pool = &v["pool"];
        let warm = pool["warm_instances"].as_u64().unwrap_or(0);
        let starting = pool["starting"].as_u64().unwrap_or(0);
        if warm >= want && starting == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the pool did not get {want} warm instance(s): {pool}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes `dir` a workspace with alias `db` preparing `ds`.
fn workspace(dir: &Path, ds: &Dataset) {
    write_project(dir, ds);
    std::fs::create_dir_all(dir.join(".sqlrs")).unwrap();
    let args: Vec<String> = ds.args.iter().map(|a| format!("{a:?}")).collect();
    std::fs::write(
        dir.join(format!("{ALIAS}.prep.s9s.yaml")),
        format!("kind: psql\nargs: [{}]\n", args.join(", ")),
    )
    .unwrap();
}

fn bench_warm(
    rt: &tokio::runtime::Runtime,
    sqlrs: &Sqlrs,
    ds: &Dataset,
    project: &Path,
) -> (Vec<Duration>, usize) {
    let first = json(&run_ok(
        sqlrs
            .cmd(project)
            .args(["--output", "json", "prepare", ALIAS]),
    ));
    sqlrs.rm(project, first["instance_id"].as_str().unwrap());
    let (mut times, mut from_pool, mut instances) = (Vec::new(), 0, Vec::new());
    for _ in 0..ds.runs {
        wait_for_pool(sqlrs, project, 1);
        let t = Instant::now();
        let v = json(&run_ok(
            sqlrs
                .cmd(project)
                .args(["--output", "json", "prepare", ALIAS]),
        ));
        rt.block_on(answers(v["dsn"].as_str().unwrap()));
        times.push(t.elapsed());
        if v["from_pool"].as_bool() == Some(true) {
            from_pool += 1;
        }
        instances.push(v["instance_id"].as_str().unwrap().to_owned());
    }
    eprintln!(
        "  {}: {:?} ms",
        ds.name,
        times.iter().map(|t| t.as_millis()).collect::<Vec<_>>()
    );
    // Removed after the series: a btrfs subvolume removal goes on in the
    // background and holds up the next durable write to the filesystem.
    for id in instances {
        sqlrs.rm(project, &id);
    }
    (times, from_pool)
}

fn bench_template(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    ds: &Dataset,
    project: &Path,
) -> Vec<Duration> {
    let server = PlainServer::start(root, &format!("{}-template", ds.name));
    psql(
        &server.dsn("postgres"),
        &["-c", "create database prepared"],
        project,
    );
    let files: Vec<&str> = ds.args.iter().map(String::as_str).collect();
    psql(&server.dsn("prepared"), &files, project);
    let times = rt.block_on(async {
        let (admin, conn) = tokio_postgres::connect(&server.dsn("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut times = Vec::new();
        for i in 0..ds.runs {
            let t = Instant::now();
            admin
                .simple_query(&format!("create database clone{i} template prepared"))
                .await
                .unwrap();
            answers(&server.dsn(&format!("clone{i}"))).await;
            times.push(t.elapsed());
        }
        times
    });
    drop(server);
    let _ = std::fs::remove_dir_all(root.join(format!("{}-template", ds.name)));
    times
}

/// The daemon's resident memory once both workspaces are watched, built and
/// idle.
fn idle_rss(sqlrs: &Sqlrs, projects: &[PathBuf]) -> u64 {
    for p in projects {
        run_ok(sqlrs.cmd(p).args(["watch"]));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let v = json(&run_ok(
            sqlrs.cmd(&projects[0]).args(["--output", "json", "status"]),
        ));
        let watched = v["projects"].as_array().cloned().unwrap_or_default();
        let settled = watched.len() >= projects.len()
            && watched.iter().all(|p| {
                p["aliases"]
                    .as_array()
                    .is_some_and(|a| a.iter().all(|a| a["status"] == "cached"))
            });
        if settled && v["pool"]["starting"].as_u64() == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "workspaces did not settle: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let v = json(&run_ok(
        sqlrs
            .cmd(&projects[0])
            .args(["--output", "json", "daemon", "status"]),
    ));
    let pid = v["pid"].as_u64().expect("daemon pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn main() {
    let runs: usize = std::env::var("SQLRS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    if std::env::var_os("SQLRS_BENCH_DATASETS").is_none() {
        // SAFETY: single-threaded here, before any thread starts.
        unsafe { std::env::set_var("SQLRS_BENCH_DATASETS", "chinook,generated-750MB") };
    }
    let btrfs = std::env::var_os("SQLRS_TEST_BTRFS")
        .map(PathBuf::from)
        .expect(
            "set SQLRS_TEST_BTRFS to a directory on btrfs (packaging/ci/btrfs-image.sh makes one)",
        );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("sqlrs-bench")
        .tempdir_in(bench_dir())
        .unwrap();
    let btrfs_root = tempfile::Builder::new()
        .prefix("sqlrs-bench")
        .tempdir_in(&btrfs)
        .unwrap();
    for d in [tmp.path(), btrfs_root.path()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let sqlrs = Sqlrs::new(
        btrfs_root.path().join("sqlrs"),
        "runtime:\n  kind: native\nsnapshot:\n  backend: btrfs\n",
    );
    let mut rows = Vec::new();
    let mut projects = Vec::new();
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let mut summary = Vec::new();
    for ds in datasets(runs) {
        eprintln!("{}:", ds.name);
        let project = tmp.path().join("projects").join(ds.name);
        workspace(&project, &ds);
        let (warm, from_pool) = bench_warm(&rt, &sqlrs, &ds, &project);
        let template = bench_template(&rt, tmp.path(), &ds, &project);
        let (w, t) = (median(warm), median(template));
        rows.push(Row {
            dataset: ds.name,
            what: format!(
                "sqlrs prepare {ALIAS}, warm instance ({from_pool} of {} from the pool)",
                ds.runs
            ),
            median: w,
        });
        rows.push(Row {
            dataset: ds.name,
            what: "CREATE DATABASE … TEMPLATE on a running server".into(),
            median: t,
        });
        summary.push(format!(
            "- {}: template / warm prepare = {:.1}x",
            ds.name,
            ratio(t, w)
        ));
        projects.push(project);
    }
    let rss = idle_rss(&sqlrs, &projects);
    println!("| dataset | measurement | median (ms) |");
    println!("|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} |",
            r.dataset,
            r.what,
            r.median.as_secs_f64() * 1000.0
        );
    }
    println!("\nRuns per median: {runs}.\n");
    for line in summary {
        println!("{line}");
    }
    println!(
        "- sqlrsd RSS, idle, {} watched workspaces: {:.1} MiB",
        projects.len(),
        rss as f64 / f64::from(1 << 20)
    );
    for p in &projects {
        let _ = sqlrs.cmd(p).args(["watch", "--stop"]).output();
    }
    sqlrs.remove_all_states(tmp.path());
}

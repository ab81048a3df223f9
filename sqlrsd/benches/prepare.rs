//! Cache-hit prepare against its baselines, in one run: full psql replay into
//! a fresh cluster, `CREATE DATABASE … TEMPLATE` on a running server, sqlrs
//! cache-hit prepare (btrfs and copy), and sqlrs after editing the last step.
//!
//! Run: `cargo build --release --workspace && cargo bench -p sqlrsd --bench prepare`
//! (as root with `SQLRS_TEST_BTRFS` set to a btrfs directory; see
//! `packaging/ci/btrfs-image.sh`). `SQLRS_BENCH_RUNS` sets the repetitions.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn bench_sqlrs(sqlrs: &Sqlrs, label: &str, ds: &Dataset, project: &Path, rows: &mut Vec<Row>) {
    let (build, first) = sqlrs.prepare_json(project, &ds.args);
    sqlrs.rm(project, first["instance_id"].as_str().unwrap());
    eprintln!("  {label}: first build {}s", secs(build));
    if label == "copy" {
        // What a copy store's clone is made of, timed in the same place: a
        // plain `cp -a` of the state's directory.
        let state = sqlrs
            .root
            .join("state/sqlrs/states")
            .join(first["state_id"].as_str().unwrap());
        let mut copies = Vec::new();
        for i in 0..ds.runs {
            let to = sqlrs.root.join(format!("raw-copy-{i}"));
            settle(sqlrs, label);
            let t = Instant::now();
            run_ok(Command::new("cp").arg("-a").arg(&state).arg(&to));
            copies.push(t.elapsed());
        }
        for i in 0..ds.runs {
            std::fs::remove_dir_all(sqlrs.root.join(format!("raw-copy-{i}"))).unwrap();
        }
        rows.push(Row {
            dataset: ds.name,
            what: "cp -a of the state's directory (copy store's folder)".into(),
            median: median(copies),
        });
    }
    // The hits' instances are removed after the series, then the store
    // settles (see `settle`).
    let mut hits = Vec::new();
    let mut instances = Vec::new();
    settle(sqlrs, label);
    for _ in 0..ds.runs {
        let (t, id, _) = sqlrs.prepare(project, &ds.args);
        instances.push(id);
        hits.push(t);
    }
    for id in instances {
        sqlrs.rm(project, &id);
    }
    rows.push(Row {
        dataset: ds.name,
        what: format!("(c) sqlrs cache-hit prepare, {label}"),
        median: median(hits),
    });
    // (d): edit the last step (a new comment line each time) and prepare,
    // each run followed by its baseline, the last step alone replayed by psql
    // on an instance of the state before it: the pairs share whatever else
    // the machine is doing. What the runs make is removed after the series,
    // like the hits' instances: a removal right before a timed run would
    // charge it for the filesystem's work of freeing thousands of files.
    let last = ds.args.last().unwrap().clone();
    let prefix = &ds.args[..ds.args.len() - 2];
    let original = std::fs::read(project.join(&last)).unwrap();
    let (mut edits, mut alone) = (Vec::new(), Vec::new());
    let mut made = Vec::new();
    for i in 0..ds.runs {
        let mut edited = original.clone();
        edited.extend_from_slice(format!("\n-- edit {label} {i}\n").as_bytes());
        std::fs::write(project.join(&last), edited).unwrap();
        settle(sqlrs, label);
        let (t, v) = sqlrs.prepare_json(project, &ds.args);
        made.push(v["state_id"].as_str().unwrap().to_owned());
        edits.push(t);
        std::fs::write(project.join(&last), &original).unwrap();
        if prefix.is_empty() {
            // A one-step chain: its step alone runs on an empty cluster.
            let server = PlainServer::start(&sqlrs.root, &format!("{}-alone-{i}", ds.name));
            settle(sqlrs, label);
            alone.push(psql(&server.dsn("postgres"), &["-f", &last], project));
            continue;
        }
        let (_, id, dsn) = sqlrs.prepare(project, prefix);
        made.push(id);
        settle(sqlrs, label);
        alone.push(psql(&dsn, &["-f", &last], project));
    }
    // Instances first, then the edited states (with their instances).
    made.reverse();
    for id in made {
        sqlrs.rm(project, &id);
    }
    rows.push(Row {
        dataset: ds.name,
        what: format!("(d) sqlrs after editing the last step, {label}"),
        median: median(edits),
    });
    rows.push(Row {
        dataset: ds.name,
        what: format!("last step alone (psql), {label}"),
        median: median(alone),
    });
}

/// Lets the store's filesystem finish what earlier runs left it, outside
/// the timings: dirty data written back and removals completed (`sync -f`,
/// which on an ext4 mounted with `discard`, as this machine's is, also
/// trims what was removed), and on btrfs the extents of deleted subvolumes
/// freed (`btrfs subvolume sync`). Otherwise a run pays for the removals
/// and writes of the runs before it: a clone created right after a state
/// was removed took 48–85 ms instead of 17 ms, and a snapshot waits for
/// extents being freed.
fn settle(sqlrs: &Sqlrs, label: &str) {
    run_ok(Command::new("sync").arg("-f").arg(&sqlrs.root));
    if label == "btrfs" {
        run_ok(
            Command::new("btrfs")
                .args(["subvolume", "sync"])
                .arg(&sqlrs.root),
        );
    }
}

fn backend_config(backend: &str) -> String {
    // The warm pool is off: these are cold cache hits (`benches/warm.rs`
    // measures hand-outs from the pool).
    format!("runtime:\n  kind: native\nsnapshot:\n  backend: {backend}\npool:\n  per_state: 0\n")
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
        .tempdir_in(bench_dir())
        .unwrap();
    let btrfs_root = tempfile::Builder::new()
        .prefix("sqlrs-bench")
        .tempdir_in(&btrfs)
        .unwrap();
    for d in [tmp.path(), btrfs_root.path()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut rows = Vec::new();
    let btrfs_sqlrs = Sqlrs::new(btrfs_root.path().join("sqlrs"), &backend_config("btrfs"));
    let copy_sqlrs = Sqlrs::new(tmp.path().join("sqlrs"), &backend_config("copy"));
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
    for sqlrs in [&btrfs_sqlrs, &copy_sqlrs] {
        sqlrs.remove_all_states(tmp.path());
    }
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

//! The Docker runtime against its baselines, in one run: sqlrs cache-hit
//! prepare on Docker and on the native runtime (same btrfs store backend), and
//! the common alternative of starting a fresh container of the image and
//! replaying the scripts into it (what Testcontainers-style setups do).
//!
//! Run: `cargo build --release --workspace && cargo bench -p sqlrsd --bench docker`
//! as root with `DOCKER_HOST` (packaging/ci/docker.sh), `SQLRS_TEST_IMAGE`
//! (packaging/docker/build-image.sh; default sqlrs/postgres:15) and
//! `SQLRS_TEST_BTRFS` set. `SQLRS_BENCH_RUNS` sets the repetitions.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Starts a container of `image`, waits until it accepts connections, and
/// replays the chain: the baseline sqlrs replaces.
fn fresh_container_replay(image: &str, ds: &Dataset, project: &Path) -> Duration {
    let t = Instant::now();
    let id = run_ok(Command::new("docker").args([
        "run",
        "-d",
        "-e",
        "POSTGRES_PASSWORD=bench",
        "-p",
        "127.0.0.1::5432",
        image,
    ]))
    .trim()
    .to_string();
    let port_line = run_ok(Command::new("docker").args(["port", &id, "5432/tcp"]));
    let port = port_line
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .expect("docker port prints HOST:PORT")
        .trim()
        .to_string();
    let dsn = format!("postgres://postgres:bench@127.0.0.1:{port}/postgres");
    let ready = Instant::now();
    while !Command::new(std::path::Path::new(PG_BIN).join("psql"))
        .args([dsn.as_str(), "-XAtqc", "select 1"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "container {id} did not accept connections"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let args: Vec<&str> = ds.args.iter().map(String::as_str).collect();
    psql(&dsn, &args, project);
    let elapsed = t.elapsed();
    run_ok(Command::new("docker").args(["rm", "-f", &id]));
    elapsed
}

fn cache_hits(sqlrs: &Sqlrs, ds: &Dataset, project: &Path) -> Duration {
    let (build, id, _) = sqlrs.prepare(project, &ds.args);
    sqlrs.rm(project, &id);
    eprintln!("  first build {:.3}s", build.as_secs_f64());
    let mut hits = Vec::new();
    for _ in 0..ds.runs {
        let (t, id, _) = sqlrs.prepare(project, &ds.args);
        sqlrs.rm(project, &id);
        hits.push(t);
    }
    median(hits)
}

fn main() {
    let runs: usize = std::env::var("SQLRS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let host = std::env::var("DOCKER_HOST")
        .expect("set DOCKER_HOST to a running Docker daemon (packaging/ci/docker.sh starts one)");
    let image =
        std::env::var("SQLRS_TEST_IMAGE").unwrap_or_else(|_| "sqlrs/postgres:15".to_string());
    let btrfs = std::env::var_os("SQLRS_TEST_BTRFS").expect(
        "set SQLRS_TEST_BTRFS to a directory on btrfs (packaging/ci/btrfs-image.sh makes one)",
    );
    let tmp = tempfile::Builder::new()
        .prefix("sqlrs-bench")
        .tempdir_in(bench_dir())
        .unwrap();
    let root = tempfile::Builder::new()
        .prefix("sqlrs-bench")
        .tempdir_in(btrfs)
        .unwrap();
    for d in [tmp.path(), root.path()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let native = Sqlrs::new(
        root.path().join("native"),
        "runtime:\n  kind: native\nsnapshot:\n  backend: btrfs\n",
    );
    let docker = Sqlrs::new(
        root.path().join("docker"),
        &format!(
            "runtime:\n  kind: docker\n  docker:\n    host: {host}\n    image: {image}\nsnapshot:\n  backend: btrfs\n"
        ),
    );
    println!("| dataset | measurement | median (s) |");
    println!("|---|---|---|");
    let mut ratios = Vec::new();
    for ds in datasets(runs)
        .into_iter()
        .filter(|d| d.name != "generated-750MB")
    {
        eprintln!("{}:", ds.name);
        let project = tmp.path().join("projects").join(ds.name);
        write_project(&project, &ds);
        eprintln!(" native");
        let n = cache_hits(&native, &ds, &project);
        eprintln!(" docker");
        let d = cache_hits(&docker, &ds, &project);
        let fresh = median(
            (0..ds.runs.min(5))
                .map(|_| fresh_container_replay(&image, &ds, &project))
                .collect(),
        );
        for (what, t) in [
            ("sqlrs cache-hit prepare, native runtime", n),
            ("sqlrs cache-hit prepare, Docker runtime", d),
            ("fresh container of the image + psql replay", fresh),
        ] {
            println!("| {} | {what} | {} |", ds.name, secs(t));
        }
        ratios.push(format!(
            "- {}: Docker/native cache hit = {:.2}x; fresh container replay / Docker cache hit = {:.1}x",
            ds.name,
            d.as_secs_f64() / n.as_secs_f64(),
            fresh.as_secs_f64() / d.as_secs_f64()
        ));
    }
    println!("\nRatios ({runs} runs per median; image {image}):\n");
    for r in ratios {
        println!("{r}");
    }
    for sqlrs in [&native, &docker] {
        sqlrs.remove_all_states(tmp.path());
    }
}

//! Crash safety through the real binaries: sqlrsd aborted (like `kill -9`)
//! at each crash point of a build (`SQLRS_CRASH_AT`, see
//! sqlrsd/src/failpoint.rs) or killed at random moments, then started
//! again. Afterwards: every indexed state has a complete directory, no
//! directory lacks an index entry, no server runs that no listed instance
//! owns, instances handed out before the crash answer at the same DSN, and
//! the next prepare is correct.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlrs_e2e::{
    Backend, LABEL_DATA_DIR, LABEL_MANAGED, Runtime, Sandbox, find_key, json_list,
    postgres_servers_under, run,
};

const CHAIN: [&str; 4] = [
    "-c",
    "create table x(v int)",
    "-c",
    "insert into x values (1), (2)",
];

fn daemon_pid(sb: &Sandbox) -> Option<u32> {
    sb.daemon_pid().map(|p| p as u32)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with(['Z', 'X'])))
        .is_some_and(|zombie| !zombie)
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(Instant::now() < deadline, "sqlrsd {pid} did not go away");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts sqlrsd with `SQLRS_CRASH_AT=point`.
fn start_armed(sb: &Sandbox, point: &str) -> u32 {
    let mut cmd = sb.sqlrs_command(&["daemon", "start"]);
    cmd.env("SQLRS_CRASH_AT", point);
    let out = run(cmd, Duration::from_secs(60));
    assert!(out.success(), "{}", sb.explain(&out));
    daemon_pid(sb).expect("the armed daemon runs")
}

/// What the store must look like after a restart, once the pool settled.
fn check_store(sb: &Sandbox, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = sb.json(&["status"]);
        let starting = find_key(&status, "starting").and_then(Value::as_u64);
        if starting == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "{when}: the pool never settled");
        std::thread::sleep(Duration::from_millis(100));
    }
    let store = sb.state_dir();
    let indexed: BTreeSet<String> = sb.state_ids().into_iter().collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(store.join("states"))
        .expect("states dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        indexed, on_disk,
        "{when}: index and state directories differ"
    );
    for id in &indexed {
        let dir = store.join("states").join(id);
        for file in ["PG_VERSION", "global/pg_control", "base"] {
            assert!(
                dir.join(file).exists(),
                "{when}: state {id} lacks {file}: incomplete"
            );
        }
    }
    let listed = sb.json(&["ls", "--instances", "--warm"]);
    let owned: BTreeSet<PathBuf> = json_list(&listed, "instances")
        .iter()
        .filter(|i| i["status"] == "running" || i["status"] == "warm")
        .map(|i| {
            let dir = PathBuf::from(i["data_dir"].as_str().unwrap_or_default());
            dir.canonicalize().unwrap_or(dir)
        })
        .collect();
    let running: BTreeSet<PathBuf> = match sb.runtime() {
        Runtime::Native => postgres_servers_under(sb.root())
            .into_iter()
            .map(|s| s.data_dir)
            .collect(),
        // Containers, running or not, labelled with a data directory here.
        Runtime::Docker => {
            let format = format!("{{{{.Label \"{LABEL_DATA_DIR}\"}}}}");
            let filter = format!("label={LABEL_MANAGED}=true");
            let listed = sb
                .docker_env()
                .docker_ok(&["ps", "-a", "--filter", &filter, "--format", &format]);
            listed
                .stdout
                .lines()
                .map(PathBuf::from)
                .filter(|dir| dir.starts_with(sb.root()))
                .map(|dir| dir.canonicalize().unwrap_or(dir))
                .collect()
        }
    };
    assert_eq!(
        running, owned,
        "{when}: servers running vs instances listed:\n{listed:#}"
    );
}

fn crash_at(runtime: Runtime, backend: Backend, point: &str) {
    let sb = Sandbox::on(runtime, backend);
    let kept = sb.prepare(&[
        "-c",
        "create table kept(v int); insert into kept values (7)",
    ]);
    sb.sqlrs_ok(&["daemon", "stop"]);
    let pid = start_armed(&sb, point);
    let mut args = vec!["prepare:psql", "--"];
    if point == "warm_start" {
        // A cache hit: its hand-out starts a warm replacement, which crashes.
        args.extend([
            "-c",
            "create table kept(v int); insert into kept values (7)",
        ]);
    } else {
        args.extend(CHAIN);
    }
    let during = sb.sqlrs(&args);
    wait_gone(pid);
    eprintln!("{point}: the prepare during the crash: {during}");

    sb.sqlrs_ok(&["daemon", "start"]);
    check_store(&sb, &format!("{} after a crash at {point}", backend.name()));
    assert_eq!(
        sb.query(&kept.dsn, "select v from kept"),
        "7",
        "the instance handed out before the crash answers at its DSN"
    );
    if let Some(dsn) = sqlrs_e2e::dsn_in(&during.stdout) {
        assert_eq!(
            sb.query(&dsn, "select 1"),
            "1",
            "an instance handed out just before the crash answers too"
        );
    }
    let again = sb.prepare(&CHAIN);
    assert_eq!(sb.query(&again.dsn, "select sum(v) from x"), "3");
    check_store(&sb, &format!("{} after the next prepare", backend.name()));
}

macro_rules! crash_tests {
    ($($name:ident: $runtime:ident, $backend:ident, $point:literal;)*) => {$(
        #[test]
        fn $name() {
            crash_at(Runtime::$runtime, Backend::$backend, $point);
        }
    )*};
}

crash_tests! {
    crash_after_a_step_copy: Native, Copy, "step";
    crash_during_a_snapshot_copy: Native, Copy, "snapshot";
    crash_before_the_index_record_copy: Native, Copy, "record";
    crash_before_the_hand_out_copy: Native, Copy, "hand_out";
    crash_while_a_warm_instance_starts_copy: Native, Copy, "warm_start";
    crash_after_a_step_btrfs: Native, Btrfs, "step";
    crash_during_a_snapshot_btrfs: Native, Btrfs, "snapshot";
    crash_before_the_index_record_btrfs: Native, Btrfs, "record";
    crash_while_a_warm_instance_starts_btrfs: Native, Btrfs, "warm_start";
    crash_after_a_step_docker: Docker, Copy, "step";
    crash_before_the_index_record_docker: Docker, Copy, "record";
    crash_before_the_hand_out_docker: Docker, Copy, "hand_out";
    crash_while_a_warm_instance_starts_docker: Docker, Copy, "warm_start";
}

/// `kill -9` at moments spread over a three-step build with slow steps.
#[test]
fn kill_9_at_random_moments() {
    let sb = Sandbox::new(Backend::Copy);
    let kept = sb.prepare(&[
        "-c",
        "create table kept(v int); insert into kept values (7)",
    ]);
    let slow = [
        "-c",
        "create table s(v int); select pg_sleep(0.4)",
        "-c",
        "insert into s select generate_series(1, 1000); select pg_sleep(0.4)",
        "-c",
        "insert into s values (0); select pg_sleep(0.4)",
    ];
    for (round, delay_ms) in [150u64, 500, 900, 1300, 1700].into_iter().enumerate() {
        let pid = daemon_pid(&sb).expect("the daemon runs");
        let mut args = vec!["prepare:psql", "--"];
        args.extend(slow);
        let mut cmd = sb.sqlrs_command(&args);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("sqlrs starts");
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        wait_gone(pid);
        let _ = child.wait();
        sb.sqlrs_ok(&["daemon", "start"]);
        let when = format!("after kill -9 at {delay_ms} ms (round {round})");
        check_store(&sb, &when);
        assert_eq!(sb.query(&kept.dsn, "select v from kept"), "7", "{when}");
        // Some rounds leave the chain built; start the next from scratch.
        let plan = sb.plan(&slow);
        if plan.iter().any(|s| s.cached) {
            let first = plan[0].state_id.clone();
            sb.sqlrs_ok(&["rm", "--recurse", "--force", &first]);
        }
    }
    let done = sb.prepare(&slow);
    assert_eq!(sb.query(&done.dsn, "select count(*) from s"), "1001");
    check_store(&sb, "at the end");
}

#[test]
fn a_second_daemon_on_the_same_store_refuses_naming_the_first() {
    let sb = Sandbox::new(Backend::Copy);
    sb.sqlrs_ok(&["daemon", "start"]);
    let first = daemon_pid(&sb).expect("the daemon runs");
    let second = run(sb.sqlrsd_command(), Duration::from_secs(30));
    assert_eq!(second.code, Some(1), "{second}");
    assert!(
        second
            .stderr
            .contains(&format!("another sqlrsd (pid {first}) already serves")),
        "{second}"
    );
    assert_eq!(daemon_pid(&sb), Some(first), "the first keeps serving");
}

/// After a crash an instance whose server died comes back at the same DSN;
/// one whose data is gone is listed as lost, refuses to be used, and can be
/// removed.
#[test]
fn dead_servers_come_back_at_their_dsn_and_lost_data_is_reported() {
    let sb = Sandbox::new(Backend::Copy);
    let alive = sb.prepare(&["-c", "create table a(v int); insert into a values (1)"]);
    let gone = sb.prepare(&["-c", "create table g(v int)"]);
    let pid = daemon_pid(&sb).expect("the daemon runs");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_gone(pid);
    // Both servers die; one instance also loses its data directory.
    let listed = |id: &str| {
        postgres_servers_under(sb.root())
            .into_iter()
            .find(|s| s.data_dir.to_string_lossy().contains(id))
    };
    for id in [&alive.instance_id, &gone.instance_id] {
        let server = listed(id).expect("the instance's server runs");
        // SAFETY: as above.
        unsafe { libc::kill(server.pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while listed(&alive.instance_id).is_some() || listed(&gone.instance_id).is_some() {
        assert!(Instant::now() < deadline, "servers did not die");
        std::thread::sleep(Duration::from_millis(50));
    }
    let data = sb
        .state_dir()
        .join("instances")
        .join(&gone.instance_id)
        .join("data");
    std::fs::remove_dir_all(&data).expect("remove the instance's data");

    sb.sqlrs_ok(&["daemon", "start"]);
    assert_eq!(
        sb.query(&alive.dsn, "select v from a"),
        "1",
        "restarted on its old port: the DSN still works"
    );
    let lost = sb
        .ls("instances")
        .into_iter()
        .find(|i| i["id"] == gone.instance_id.as_str())
        .expect("the lost instance is still listed");
    assert_eq!(lost["status"], "lost", "{lost:#}");
    assert!(
        lost["note"].as_str().is_some_and(|n| n.contains("is gone")),
        "{lost:#}"
    );
    let refused = sb.sqlrs(&[
        "run:psql",
        "--instance",
        &gone.instance_id,
        "--",
        "-c",
        "select 1",
    ]);
    assert!(!refused.success(), "{refused}");
    assert!(
        refused.stderr.contains("is lost") && refused.stderr.contains("sqlrs rm"),
        "{refused}"
    );
    sb.sqlrs_ok(&["rm", &gone.instance_id]);
    assert!(!sb.instance_ids().contains(&gone.instance_id));
    check_store(&sb, "after removing the lost instance");
}

/// A power cut at a crash point (on a loop-mounted ext4 whose unwritten page
/// cache is discarded), then a start on what the disk kept: the states it
/// names are complete and give the right data, instances answer or are
/// reported stopped or lost, and the next prepare is right.
fn power_cut_at(point: &str) {
    let fs = sqlrs_e2e::LoopFs::new(600).unwrap_or_else(|e| panic!("{e}"));
    let sb = Sandbox::in_dir(Runtime::Native, Backend::Copy, fs.path());
    // The default free-space reserve (1 GiB) exceeds this small disk.
    let config = std::fs::read_to_string(sb.config_path()).expect("sandbox config");
    sb.set_config(&format!("{config}cache:\n  reserve_bytes: 16MiB\n"));
    let kept = sb.prepare(&[
        "-c",
        "create table kept(v int); insert into kept values (7)",
    ]);
    // Written after the last sync: a power cut may take it.
    sb.query(&kept.dsn, "insert into kept values (8)");
    sb.sqlrs_ok(&["daemon", "stop"]);
    let pid = start_armed(&sb, point);
    let during = sb.sqlrs(&CHAIN_ARGS);
    wait_gone(pid);
    eprintln!("power cut at {point}: the prepare during it: {during}");
    // The power goes: every process, then whatever the disk had not received.
    let pids = sqlrs_e2e::processes_under(sb.root());
    for &p in &pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    for p in pids {
        wait_gone(p as u32);
    }
    fs.power_cut().unwrap_or_else(|e| panic!("{e}"));

    sb.sqlrs_ok(&["daemon", "start"]);
    let when = format!("after a power cut at {point}");
    check_store(&sb, &when);
    let instances = sb.json(&["ls", "--instances"]);
    let k = json_list(&instances, "instances")
        .into_iter()
        .find(|i| i["id"] == kept.instance_id.as_str())
        .unwrap_or_else(|| panic!("{when}: the kept instance is not listed: {instances:#}"));
    eprintln!("{when}: the kept instance is {}", k["status"]);
    if k["status"] == "running" {
        let rows = sb.query(
            &kept.dsn,
            "select string_agg(v::text, ',' order by v) from kept",
        );
        eprintln!("{when}: its rows: {rows} (8 was written after the last sync)");
        let v = sb.query(&kept.dsn, "select min(v) from kept");
        assert_eq!(v, "7", "{when}: the instance's state data is there");
    } else {
        assert!(
            matches!(k["status"].as_str(), Some("stopped" | "lost"))
                && k["note"].as_str().is_some_and(|n| !n.is_empty()),
            "{when}: an instance that cannot run says why: {k:#}"
        );
    }
    // Every state the index kept gives its data.
    let again = sb.prepare(&[
        "-c",
        "create table kept(v int); insert into kept values (7)",
    ]);
    assert_eq!(sb.query(&again.dsn, "select v from kept"), "7", "{when}");
    let chain = sb.prepare(&CHAIN);
    assert_eq!(sb.query(&chain.dsn, "select sum(v) from x"), "3", "{when}");
    check_store(&sb, &format!("{when}, then a prepare"));
}

const CHAIN_ARGS: [&str; 6] = [
    "prepare:psql",
    "--",
    "-c",
    "create table x(v int)",
    "-c",
    "insert into x values (1), (2)",
];

#[test]
fn power_cut_after_a_step() {
    power_cut_at("step");
}

#[test]
fn power_cut_before_the_index_record() {
    power_cut_at("record");
}

#[test]
fn power_cut_before_the_hand_out() {
    power_cut_at("hand_out");
}

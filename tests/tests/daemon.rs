//! The daemon: `status` and `daemon status` report what they should, the
//! daemon outlives the CLI and stops on request, the snapshotter is detected
//! from the store's filesystem, and isolated daemons run side by side.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlrs_e2e::{Backend, CHAIN, Runtime, Sandbox, find_key, find_str, on_each_target};

on_each_target!(
    status_reports_store_and_snapshotter,
    daemon_outlives_the_cli
);

/// The first value whose key starts with `prefix` (`socket`, `socket_path`, `uptime_ms`, …).
fn find_prefixed<'a>(v: &'a Value, prefix: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m
            .iter()
            .find(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .or_else(|| m.values().find_map(|c| find_prefixed(c, prefix))),
        Value::Array(a) => a.iter().find_map(|c| find_prefixed(c, prefix)),
        _ => None,
    }
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

fn daemon_pid(sb: &Sandbox) -> u64 {
    let status = sb.json(&["daemon", "status"]);
    find_key(&status, "pid")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no pid in {status:#}"))
}

fn status_reports_store_and_snapshotter(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    let status = sb.json(&["status"]);
    assert_eq!(
        find_str(&status, "snapshotter"),
        Some(backend.name()),
        "{status:#}"
    );
    assert!(
        find_str(&status, "snapshotter_reason").is_some_and(|r| !r.is_empty()),
        "status says why the snapshotter was chosen: {status:#}"
    );
    assert_eq!(
        find_str(&status, "runtime"),
        Some(runtime.name()),
        "{status:#}"
    );
    let reason = find_str(&status, "runtime_reason").unwrap_or_default();
    assert!(
        reason.starts_with(runtime.name()) && reason.contains("runtime.kind"),
        "status says the config chose the runtime: {status:#}"
    );
    if runtime == Runtime::Docker {
        let docker = sb.docker_env();
        assert!(
            reason.contains(&docker.image) && reason.contains(&docker.host),
            "the reason names the image and the daemon: {reason}"
        );
    }
    let store = find_str(&status, "store_path").unwrap_or_else(|| panic!("{status:#}"));
    assert!(
        Path::new(store).starts_with(sb.state_dir()),
        "the store follows XDG_STATE_HOME: {store}"
    );
    let text = sb.sqlrs_ok(&["status"]);
    for shown in [backend.name(), runtime.name()] {
        assert!(text.stdout.contains(shown), "{text}");
    }
}

fn daemon_outlives_the_cli(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    let before = sb.sqlrs(&["daemon", "status"]);
    assert!(!before.success(), "no daemon runs yet:\n{before}");

    sb.sqlrs_ok(&["daemon", "start"]);
    let status = sb.json(&["daemon", "status"]);
    let pid = daemon_pid(&sb);
    assert!(alive(pid), "pid {pid} is not running");
    assert_eq!(
        find_prefixed(&status, "socket").and_then(Value::as_str),
        Some(sb.socket_path().to_str().unwrap()),
        "{status:#}"
    );
    assert!(
        find_str(&status, "version").is_some_and(|v| v.contains(env!("CARGO_PKG_VERSION"))),
        "{status:#}"
    );
    assert!(
        find_prefixed(&status, "uptime").is_some_and(|u| u.is_number() || u.is_string()),
        "{status:#}"
    );

    sb.write_chain();
    sb.prepare(&CHAIN);
    assert_eq!(
        daemon_pid(&sb),
        pid,
        "the same daemon serves every CLI call"
    );
    assert!(alive(pid));

    sb.sqlrs_ok(&["daemon", "stop"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "`daemon stop` left pid {pid} running");
    assert!(!sb.sqlrs(&["daemon", "status"]).success());

    sb.sqlrs_ok(&["ls"]);
    assert_ne!(
        daemon_pid(&sb),
        pid,
        "a command starts a new daemon when none runs"
    );
}

/// A copy store and a btrfs store, each with its own daemon, at the same time.
#[test]
fn two_sandboxes_side_by_side() {
    let sandboxes = [Sandbox::new(Backend::Copy), Sandbox::new(Backend::Btrfs)];
    let prepared: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = sandboxes
            .iter()
            .map(|sb| {
                s.spawn(move || {
                    sb.write_chain();
                    sb.prepare(&CHAIN)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let pids: Vec<u64> = sandboxes.iter().map(daemon_pid).collect();
    assert_ne!(pids[0], pids[1]);
    for (sb, p) in sandboxes.iter().zip(&prepared) {
        assert_eq!(
            sb.instance_ids(),
            vec![p.instance_id.clone()],
            "each daemon lists only its own"
        );
        let status = sb.json(&["status"]);
        assert_eq!(find_str(&status, "snapshotter"), Some(sb.backend().name()));
        assert_eq!(sb.query(&p.dsn, "select count(*) from item"), "2");
    }
}

/// With no `snapshot.backend` configured, the store's filesystem decides.
#[test]
fn snapshotter_is_detected_from_the_filesystem() {
    for filesystem in [Backend::Btrfs, Backend::Reflink, Backend::Copy] {
        let sb = Sandbox::with_auto_backend(filesystem);
        let expected = Backend::detected_for(sb.root()).name();
        let status = sb.json(&["status"]);
        assert_eq!(
            find_str(&status, "snapshotter"),
            Some(expected),
            "store on the {filesystem:?} test filesystem: {status:#}"
        );
    }
}

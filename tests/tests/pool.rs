//! The warm pool, prebuilt watched aliases, stable names, time to live and
//! open connections, through the CLI against real PostgreSQL.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sqlrs_e2e::{Backend, SCHEMA_SQL, SEED_SQL, Sandbox, find_key, hold_connection, prepared_from};

const ALIAS: &str = "kind: psql\nargs: [-f, db/schema.sql, -f, db/seed.sql]\n";

fn workspace(sb: &Sandbox) {
    sb.sqlrs_ok(&["init"]);
    sb.write("db/schema.sql", SCHEMA_SQL);
    sb.write("db/seed.sql", SEED_SQL);
    sb.write("db.prep.s9s.yaml", ALIAS);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls `probe` until it gives a value, failing after `secs` seconds with
/// what was last seen.
fn wait_for<T>(what: &str, secs: u64, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match probe() {
            Ok(v) => return v,
            Err(seen) if Instant::now() > deadline => {
                panic!("waited {secs} s for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn pool(sb: &Sandbox) -> Value {
    let status = sb.json(&["status"]);
    find_key(&status, "pool")
        .unwrap_or_else(|| panic!("status has no pool: {status:#}"))
        .clone()
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number `{key}` in {v:#}"))
}

fn wait_for_warm(sb: &Sandbox, want: u64) -> Value {
    wait_for("a warm instance", 60, || {
        let p = pool(sb);
        if num(&p, "warm_instances") >= want && num(&p, "starting") == 0 {
            Ok(p)
        } else {
            Err(p.to_string())
        }
    })
}

fn flag(v: &Value, key: &str) -> bool {
    find_key(v, key).and_then(Value::as_bool).unwrap_or(false)
}

fn instance_ids(sb: &Sandbox) -> Vec<String> {
    sb.ls("instances")
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn connections(sb: &Sandbox, id: &str) -> i64 {
    sb.ls("instances")
        .iter()
        .find(|i| i["id"] == id)
        .and_then(|i| i.get("connections"))
        .and_then(Value::as_i64)
        .unwrap_or(-1)
}

#[test]
fn a_cache_hit_takes_a_pre_started_instance_and_the_pool_refills() {
    let sb = Sandbox::new(Backend::Copy);
    workspace(&sb);
    let built = sb.json(&["prepare", "db"]);
    assert!(
        !flag(&built, "from_pool"),
        "a build hands out its build server"
    );
    let first = prepared_from(built);
    wait_for_warm(&sb, 1);
    assert_eq!(
        instance_ids(&sb),
        std::slice::from_ref(&first.instance_id),
        "warm instances are not listed by default"
    );
    let warm = sb.json(&["ls", "--warm"]);
    assert!(
        warm.to_string().contains("\"warm\""),
        "ls --warm shows the pool's instance: {warm:#}"
    );

    let asked = now_ms();
    let hit = sb.json(&["prepare", "db", "--ttl", "1h"]);
    assert!(flag(&hit, "from_pool"), "served from the pool: {hit:#}");
    let expires = find_key(&hit, "expires_at_ms").and_then(Value::as_u64);
    assert!(
        expires.is_some_and(|e| e > asked + 3_500_000),
        "the time to live applies to a warm instance too: {hit:#}"
    );
    let started = find_key(&hit, "started_at_ms")
        .and_then(Value::as_u64)
        .expect("started_at_ms");
    assert!(
        started > 0 && started < asked,
        "its server was started before it was asked for ({started} vs {asked})"
    );
    let second = prepared_from(hit);
    assert_eq!(second.state_id, first.state_id);
    assert_ne!(second.instance_id, first.instance_id);
    sb.query(&second.dsn, "insert into item values (3)");
    assert_eq!(sb.query(&second.dsn, "select count(*) from item"), "3");
    assert_eq!(
        sb.query(&first.dsn, "select count(*) from item"),
        "2",
        "instances stay isolated"
    );
    let p = wait_for_warm(&sb, 1);
    assert!(num(&p, "hits") >= 1, "{p:#}");
    assert!(
        num(&p, "memory_bytes") > 0,
        "warm servers are measured: {p:#}"
    );

    // A removed state takes its warm instances along, unasked.
    sb.sqlrs_ok(&["rm", "--force", "--recurse", &first.state_id]);
    let p = wait_for("the pool to empty", 30, || {
        let p = pool(&sb);
        if num(&p, "warm_instances") == 0 {
            Ok(p)
        } else {
            Err(p.to_string())
        }
    });
    assert_eq!(num(&p, "starting"), 0);
}

#[test]
fn names_return_the_same_instance_until_the_chain_changes() {
    let sb = Sandbox::new(Backend::Copy);
    workspace(&sb);
    let a = prepared_from(sb.json(&["prepare", "db", "--name", "dev"]));
    sb.query(&a.dsn, "insert into item values (42)");
    let again = prepared_from(sb.json(&["prepare", "db", "--name", "dev"]));
    assert_eq!(
        again.instance_id, a.instance_id,
        "same name, same state: same instance"
    );
    assert_eq!(
        sb.query(&again.dsn, "select count(*) from item where v = 42"),
        "1",
        "with its data"
    );
    let names = sb.json(&["ls", "--names"]);
    assert!(
        names.to_string().contains("\"dev\"") && names.to_string().contains(&a.instance_id),
        "{names:#}"
    );
    let run = sb.sqlrs(&["run:psql", "--instance", "dev", "--", "-c", "select 1"]);
    assert!(run.success(), "the name addresses the instance: {run}");

    // The chain changed: a new instance takes the name, the old one goes.
    sb.write("db/seed.sql", "insert into item values (1), (2), (3);\n");
    let b = prepared_from(sb.json(&["prepare", "db", "--name", "dev"]));
    assert_ne!(b.instance_id, a.instance_id);
    assert_eq!(sb.query(&b.dsn, "select count(*) from item"), "3");
    let ids = instance_ids(&sb);
    assert!(
        !ids.contains(&a.instance_id),
        "replaced and removed: {ids:?}"
    );

    // With --keep the previous instance stays, without the name.
    sb.write("db/seed.sql", "insert into item values (4);\n");
    let c = prepared_from(sb.json(&["prepare", "db", "--name", "dev", "--keep"]));
    let listed = sb.ls("instances");
    let old = listed
        .iter()
        .find(|i| i["id"] == b.instance_id.as_str())
        .unwrap_or_else(|| panic!("--keep keeps {}: {listed:#?}", b.instance_id));
    assert!(
        old.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty(),
        "the kept instance lost the name: {old:#}"
    );
    let named = listed
        .iter()
        .find(|i| i["id"] == c.instance_id.as_str())
        .expect("the new instance is listed");
    assert_eq!(named["name"], "dev");

    let bad = sb.sqlrs(&["prepare", "db", "--name", "no spaces"]);
    assert!(
        !bad.success() && bad.text().contains("is not valid"),
        "{bad}"
    );
}

#[test]
fn an_instance_outlives_its_ttl_only_while_connected() {
    let sb = Sandbox::new(Backend::Copy);
    sb.write_chain();
    let json = sb.json(&[
        "prepare:psql",
        "--ttl",
        "2s",
        "--",
        "-f",
        "schema.sql",
        "-f",
        "seed.sql",
    ]);
    let expires = find_key(&json, "expires_at_ms")
        .and_then(Value::as_u64)
        .expect("expires_at_ms");
    assert!(
        expires > now_ms() && expires <= now_ms() + 2_000,
        "{json:#}"
    );
    let a = prepared_from(json);
    let mut held = hold_connection(&a.dsn, 5);
    wait_for("the open connection", 10, || {
        match connections(&sb, &a.instance_id) {
            n if n >= 1 => Ok(()),
            n => Err(n.to_string()),
        }
    });
    std::thread::sleep(Duration::from_millis(3_000));
    assert!(
        instance_ids(&sb).contains(&a.instance_id),
        "expired but connected: kept"
    );
    held.wait().unwrap();
    wait_for("the expired instance to go", 15, || {
        let ids = instance_ids(&sb);
        if ids.contains(&a.instance_id) {
            Err(format!("{ids:?}"))
        } else {
            Ok(())
        }
    });
}

#[test]
fn rm_is_blocked_by_an_open_connection() {
    let sb = Sandbox::new(Backend::Copy);
    let a = sb.prepare(&["-c", "create table t(x int)"]);
    let mut held = hold_connection(&a.dsn, 60);
    wait_for("the open connection in ls", 10, || {
        match connections(&sb, &a.instance_id) {
            1 => Ok(()),
            n => Err(n.to_string()),
        }
    });
    let blocked = sb.sqlrs(&["rm", &a.instance_id]);
    assert!(
        blocked.text().contains("open connection"),
        "rm names the reason: {blocked}"
    );
    assert!(instance_ids(&sb).contains(&a.instance_id));
    sb.sqlrs_ok(&["rm", "--force", &a.instance_id]);
    assert!(!instance_ids(&sb).contains(&a.instance_id));
    let _ = held.kill();
    let _ = held.wait();
}

fn alias_status(sb: &Sandbox) -> Value {
    let status = sb.json(&["status"]);
    let projects = find_key(&status, "projects")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    projects
        .iter()
        .flat_map(|p| p["aliases"].as_array().cloned().unwrap_or_default())
        .find(|a| a["name"] == "db")
        .unwrap_or(Value::Null)
}

#[test]
fn a_watched_alias_is_prebuilt_and_its_instance_waits_in_the_pool() {
    let sb = Sandbox::new(Backend::Copy);
    workspace(&sb);
    sb.sqlrs_ok(&["watch"]);
    let first = prepared_from(sb.json(&["prepare", "db"]));
    sb.sqlrs_ok(&["rm", &first.instance_id]);

    sb.write("db/seed.sql", "insert into item values (7), (8), (9);\n");
    let head = wait_for("the edited alias to be prebuilt", 60, || {
        let a = alias_status(&sb);
        let head = a["head_state_id"].as_str().unwrap_or_default().to_owned();
        if a["status"] == "cached" && !head.is_empty() && head != first.state_id {
            Ok(head)
        } else {
            Err(a.to_string())
        }
    });
    wait_for_warm(&sb, 1);
    let hit = sb.json(&["prepare", "db"]);
    assert!(flag(&hit, "from_pool"), "{hit:#}");
    let p = prepared_from(hit);
    assert_eq!(p.state_id, head);
    assert_eq!(sb.query(&p.dsn, "select count(*) from item"), "3");
    let job = p.job_id.expect("the prepare's job");
    let tasks = sb.step_tasks(&job);
    assert!(
        tasks.iter().all(|(_, cached)| *cached),
        "nothing was built for the prepare: {tasks:?}"
    );
    let jobs = sb.ls("jobs");
    assert!(
        jobs.iter()
            .any(|j| j["kind"] == "prebuild" && j["status"] == "succeeded"),
        "{jobs:#?}"
    );
}

#[test]
fn a_prepare_joins_the_prebuild_of_its_state() {
    let sb = Sandbox::new(Backend::Copy);
    workspace(&sb);
    sb.sqlrs_ok(&["watch"]);
    let first = prepared_from(sb.json(&["prepare", "db"]));
    sb.sqlrs_ok(&["rm", &first.instance_id]);
    sb.write(
        "db/seed.sql",
        "select pg_sleep(3);\ninsert into item values (5);\n",
    );
    wait_for("the prebuild to run", 20, || {
        let a = alias_status(&sb);
        if a["status"] == "building" {
            Ok(())
        } else {
            Err(a.to_string())
        }
    });
    let p = prepared_from(sb.json(&["prepare", "db"]));
    assert_eq!(sb.query(&p.dsn, "select count(*) from item"), "1");
    let tasks = sb.step_tasks(p.job_id.as_deref().expect("job"));
    assert!(
        tasks.iter().all(|(_, cached)| *cached),
        "the prepare waited for the prebuild instead of building again: {tasks:?}"
    );
    let builds: Vec<Value> = sb
        .ls("tasks")
        .into_iter()
        .filter(|t| t["kind"] == "step" && t["state_id"] == p.state_id.as_str())
        .filter(|t| t["cached"] == false && t["status"] == "succeeded")
        .collect();
    assert_eq!(builds.len(), 1, "the state was built once: {builds:#?}");
}

#[test]
fn stopping_the_daemon_ends_open_workspace_streams() {
    let sb = Sandbox::new(Backend::Copy);
    workspace(&sb);
    let mut follow = sb
        .sqlrs_command(&["watch", "--follow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sqlrs watch --follow starts");
    wait_for("the workspace to be watched", 30, || {
        let a = alias_status(&sb);
        if a.is_null() {
            Err(a.to_string())
        } else {
            Ok(())
        }
    });
    let started = Instant::now();
    sb.sqlrs_ok(&["daemon", "stop"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop waited {:?} for the open stream",
        started.elapsed()
    );
    let ended = wait_for("the follower to end", 10, || match follow.try_wait() {
        Ok(Some(status)) => Ok(status),
        other => Err(format!("{other:?}")),
    });
    assert!(!ended.success(), "the follower reports the stream's end");
}

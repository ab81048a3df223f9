//! The state cache end to end: cache hits build nothing, instances are
//! isolated, an edited later step reuses the earlier states, plans execute
//! nothing, and a failing step keeps the states before it.

use sqlrs_e2e::{
    Backend, CHAIN, Runtime, SEED_SQL, STAMP_QUERY, Sandbox, dsn_in, field, find_key, find_str,
    on_each_target,
};

on_each_target!(
    second_prepare_is_all_cache_hits,
    instances_are_isolated,
    edited_seed_reuses_schema_state,
    plan_executes_nothing,
    variables_and_renames_in_state_ids,
    failing_step_keeps_earlier_states,
);

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn second_prepare_is_all_cache_hits(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    sb.write_chain();
    let mut args = vec!["prepare:psql", "--"];
    args.extend(CHAIN);
    let first = sb.sqlrs_ok(&args);
    let first_dsn = first.dsn();
    assert!(
        !first.stdout.contains("step"),
        "progress belongs on stderr, stdout was:\n{}",
        first.stdout
    );
    let states = sorted(sb.state_ids());
    let plan = sb.plan(&CHAIN);
    assert_eq!(plan.len(), 2, "{plan:?}");
    assert!(plan.iter().all(|s| s.cached), "after a build: {plan:?}");

    let second = sb.prepare(&CHAIN);
    assert_ne!(
        second.dsn, first_dsn,
        "a cache hit must hand out a new instance"
    );
    assert_eq!(second.state_id, plan[1].state_id);
    assert_eq!(sorted(sb.state_ids()), states, "a cache hit built a state");
    let job = second
        .job_id
        .as_deref()
        .expect("prepare --output json names its job");
    let tasks = sb.step_tasks(job);
    assert_eq!(
        tasks,
        plan.iter()
            .map(|s| (s.state_id.clone(), true))
            .collect::<Vec<_>>(),
        "every step of the second prepare is a cache hit"
    );
    assert_eq!(
        sb.query(&first_dsn, STAMP_QUERY),
        sb.query(&second.dsn, STAMP_QUERY),
        "schema.sql ran again"
    );
    let instances = sb.instance_ids();
    assert_eq!(instances.len(), 2, "{instances:?}");
    assert!(instances.contains(&second.instance_id), "{instances:?}");
}

fn instances_are_isolated(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    sb.write_chain();
    let a = sb.prepare(&CHAIN);
    let b = sb.prepare(&CHAIN);
    assert_ne!(a.instance_id, b.instance_id);
    sb.query(
        &a.dsn,
        "insert into item values (100); create table only_in_a(x int)",
    );
    sb.query(&b.dsn, "delete from item where v = 1");
    let c = sb.prepare(&CHAIN);
    let cases = [
        (&a.dsn, "1,2,100", "t"),
        (&b.dsn, "2", "f"),
        (&c.dsn, "1,2", "f"),
    ];
    for (dsn, items, has_table) in cases {
        assert_eq!(
            sb.query(dsn, "select string_agg(v::text, ',' order by v) from item"),
            items,
            "{dsn}"
        );
        assert_eq!(
            sb.query(dsn, "select to_regclass('only_in_a') is not null"),
            has_table,
            "{dsn}"
        );
    }
}

fn edited_seed_reuses_schema_state(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    sb.write_chain();
    let before = sb.plan(&CHAIN);
    let first = sb.prepare(&CHAIN);
    let stamp = sb.query(&first.dsn, STAMP_QUERY);

    sb.write(
        "seed.sql",
        &format!("{SEED_SQL}insert into item values (3);\n"),
    );
    let after = sb.plan(&CHAIN);
    assert_eq!(
        after[0].state_id, before[0].state_id,
        "schema.sql did not change"
    );
    assert_ne!(after[1].state_id, before[1].state_id, "seed.sql changed");
    assert_eq!(
        after.iter().map(|s| s.cached).collect::<Vec<_>>(),
        [true, false]
    );

    let second = sb.prepare(&CHAIN);
    assert_eq!(second.state_id, after[1].state_id);
    assert_eq!(
        sb.query(&second.dsn, STAMP_QUERY),
        stamp,
        "schema.sql re-ran"
    );
    assert_eq!(sb.query(&second.dsn, "select count(*) from item"), "3");
    assert_eq!(sb.query(&first.dsn, "select count(*) from item"), "2");
    let job = second
        .job_id
        .as_deref()
        .expect("prepare --output json names its job");
    assert_eq!(
        sb.step_tasks(job)
            .into_iter()
            .map(|(_, cached)| cached)
            .collect::<Vec<_>>(),
        [true, false]
    );
}

fn plan_executes_nothing(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    sb.write_chain();
    let plan = sb.plan(&CHAIN);
    assert_eq!(plan.len(), 2, "{plan:?}");
    for step in &plan {
        assert!(!step.cached, "{step:?}");
        assert!(
            step.state_id.len() >= 16 && step.state_id.chars().all(|c| c.is_ascii_hexdigit()),
            "state ids are hex digests: {step:?}"
        );
    }
    assert_ne!(plan[0].state_id, plan[1].state_id);
    let mut args = vec!["plan:psql", "--"];
    args.extend(CHAIN);
    let text = sb.sqlrs_ok(&args);
    for step in &plan {
        assert!(
            text.stdout.contains(&step.state_id[..8]),
            "the plan shows each state id:\n{text}"
        );
    }
    assert!(sb.instance_ids().is_empty(), "plan started an instance");
    let states = sb.state_ids();
    assert!(
        plan.iter().all(|s| !states.contains(&s.state_id)),
        "plan built a state: {states:?}"
    );

    let prepared = sb.prepare(&CHAIN);
    let again = sb.plan(&CHAIN);
    assert_eq!(
        again
            .iter()
            .map(|s| (s.state_id.as_str(), s.cached))
            .collect::<Vec<_>>(),
        [
            (plan[0].state_id.as_str(), true),
            (plan[1].state_id.as_str(), true)
        ]
    );
    assert_eq!(prepared.state_id, plan[1].state_id);
}

/// `-v` values are part of a state's identity; file names are not.
fn variables_and_renames_in_state_ids(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    sb.write("v.sql", "create table t as select :'a'::text as a;\n");
    sb.write(
        "copy_of_v.sql",
        "create table t as select :'a'::text as a;\n",
    );
    let id = |args: &[&str]| {
        let plan = sb.plan(args);
        assert_eq!(plan.len(), 1, "{plan:?}");
        plan[0].state_id.clone()
    };
    let a1 = id(&["-v", "a=1", "-f", "v.sql"]);
    let cases: [(&[&str], bool); 4] = [
        (&["-v", "a=1", "-f", "v.sql"], true),
        (&["--set", "a=1", "-f", "v.sql"], true),
        (&["-v", "a=1", "-f", "copy_of_v.sql"], true),
        (&["-v", "a=2", "-f", "v.sql"], false),
    ];
    for (args, same) in cases {
        assert_eq!(id(args) == a1, same, "{args:?}");
    }
    let two = sb.prepare(&["-v", "a=2", "-f", "v.sql"]);
    assert_eq!(sb.query(&two.dsn, "select a from t"), "2");
}

fn failing_step_keeps_earlier_states(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    sb.write_chain();
    let schema_only = sb.prepare(&CHAIN[..2]);
    let stamp = sb.query(&schema_only.dsn, STAMP_QUERY);
    let bad = "insert into item values (1);\n\ninsert into missing_table values (1);\n";
    sb.write("seed.sql", bad);

    let mut args = vec!["prepare:psql", "--"];
    args.extend(CHAIN);
    let failed = sb.sqlrs(&args);
    assert_eq!(failed.code, Some(3), "{}", sb.explain(&failed));
    let text = failed.text();
    assert!(
        text.contains("seed.sql:3") && text.contains("missing_table"),
        "the error names the user's file and line:\n{failed}"
    );
    assert!(
        !text.contains("blobs/") && !text.contains(&sb.state_dir().display().to_string()),
        "the error shows a store path instead of the user's file:\n{failed}"
    );
    assert!(dsn_in(&failed.stdout).is_none(), "{failed}");

    let mut json_args = vec!["--output", "json"];
    json_args.extend(&args);
    let failed_json = sb.sqlrs(&json_args);
    assert_eq!(failed_json.code, Some(3), "{failed_json}");
    let doc = failed_json.json();
    assert!(
        find_str(&doc, "file").is_some_and(|f| f.ends_with("seed.sql")),
        "{doc:#}"
    );
    assert_eq!(
        find_key(&doc, "line").and_then(|l| l.as_u64()),
        Some(3),
        "{doc:#}"
    );

    let plan = sb.plan(&CHAIN);
    assert_eq!(
        plan.iter().map(|s| s.cached).collect::<Vec<_>>(),
        [true, false],
        "the failed step is not cached, the one before it is"
    );
    assert_eq!(
        sb.instance_ids(),
        vec![schema_only.instance_id.clone()],
        "the failed build left an instance"
    );
    let jobs = sb.ls("jobs");
    assert!(
        jobs.iter()
            .filter(|j| field(j, "status") == "failed")
            .count()
            >= 2,
        "failed jobs are listed as failed: {jobs:?}"
    );

    sb.write("seed.sql", SEED_SQL);
    let fixed = sb.prepare(&CHAIN);
    assert_eq!(
        sb.query(&fixed.dsn, STAMP_QUERY),
        stamp,
        "schema.sql re-ran"
    );
    assert_eq!(sb.query(&fixed.dsn, "select count(*) from item"), "2");
    let job = fixed
        .job_id
        .as_deref()
        .expect("prepare --output json names its job");
    let tasks = sb.step_tasks(job);
    assert_eq!(
        tasks.iter().map(|(_, cached)| *cached).collect::<Vec<_>>(),
        [true, false],
        "{tasks:?}"
    );
    assert_eq!(
        tasks[0].0, plan[0].state_id,
        "the state before the failure is reused"
    );
}

/// A copy store takes a stopped build server's directory as the state, less
/// the WAL segments PostgreSQL renamed for later reuse: a step that writes
/// some 30 MB of WAL leaves a state with the segment of its shutdown
/// checkpoint (and perhaps the one before), and instances of it start, hold
/// the data and write new WAL.
fn copy_states_keep_no_recycled_wal(runtime: Runtime) {
    let sb = Sandbox::on(runtime, Backend::Copy);
    let step =
        "create table w as select g, repeat('x', 200) as t from generate_series(1, 100000) g";
    let first = sb.prepare(&["-c", step]);
    let wal = sb
        .state_dir()
        .join("states")
        .join(&first.state_id)
        .join("pg_wal");
    let segments: Vec<String> = std::fs::read_dir(&wal)
        .unwrap_or_else(|e| panic!("{}: {e}", wal.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    assert!(
        (1..=2).contains(&segments.len()),
        "the state keeps recycled WAL segments: {segments:?}"
    );
    for prepared in [first, sb.prepare(&["-c", step])] {
        assert_eq!(sb.query(&prepared.dsn, "select count(*) from w"), "100000");
        sb.query(&prepared.dsn, "insert into w select * from w");
        assert_eq!(sb.query(&prepared.dsn, "select count(*) from w"), "200000");
    }
}

#[test]
fn copy_states_keep_no_recycled_wal_native() {
    copy_states_keep_no_recycled_wal(Runtime::Native);
}

#[test]
fn copy_states_keep_no_recycled_wal_docker() {
    copy_states_keep_no_recycled_wal(Runtime::Docker);
}

//! `sqlrs ls` (states as a tree, instances, jobs, tasks; text and JSON) and
//! `sqlrs rm` (dry runs, blocked removals, `--recurse --force`, jobs).

use serde_json::Value;
use sqlrs_e2e::{Backend, CHAIN, Runtime, Sandbox, field, ids, json_list, on_each_target, prefix};

on_each_target!(listings, removal);

const TASK_STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

fn find<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter()
        .find(|v| field(v, "id") == id)
        .unwrap_or_else(|| panic!("{id} not listed in {list:#?}"))
}

/// Where `id`'s short form starts on the line that shows it (the tree depth).
fn column_of(text: &str, id: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(n, line)| line.find(&id[..8]).map(|col| (n, col)))
        .unwrap_or_else(|| panic!("{} not shown in\n{text}", &id[..8]))
}

fn listings(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    sb.write_chain();
    let prepared = sb.prepare(&CHAIN);
    let plan = sb.plan(&CHAIN);
    let (s1, s2) = (plan[0].state_id.as_str(), plan[1].state_id.as_str());

    let states = sb.ls("states");
    assert_eq!(field(find(&states, s2), "parent_id"), s1);
    let base = field(find(&states, s1), "parent_id");
    assert!(
        !base.is_empty(),
        "step 1's parent is the engine's base state"
    );
    assert_eq!(
        field(find(&states, base), "parent_id"),
        "",
        "the base is a root"
    );

    let tree = sb.sqlrs_ok(&["ls", "--states"]).stdout;
    let rows: Vec<(usize, usize)> = [base, s1, s2]
        .iter()
        .map(|id| column_of(&tree, id))
        .collect();
    for pair in rows.windows(2) {
        let ((parent_line, parent_col), (child_line, child_col)) = (pair[0], pair[1]);
        assert!(
            child_line > parent_line && child_col > parent_col,
            "children are drawn below and indented under their parent:\n{tree}"
        );
    }

    let instances = sb.ls("instances");
    let instance = find(&instances, &prepared.instance_id);
    let image = match runtime {
        Runtime::Native => None,
        Runtime::Docker => Some(sb.docker_env().image.as_str()),
    };
    assert_eq!(
        (
            field(instance, "state_id"),
            field(instance, "dsn"),
            field(instance, "runtime"),
            instance.get("image").and_then(Value::as_str)
        ),
        (s2, prepared.dsn.as_str(), runtime.name(), image),
        "{instance:#}"
    );
    let runtime_column = match image {
        None => runtime.name().to_owned(),
        Some(image) => format!("{}:{image}", runtime.name()),
    };
    for args in [&["ls"][..], &["ls", "--instances"]] {
        let out = sb.sqlrs_ok(args);
        let row = out
            .stdout
            .lines()
            .find(|l| l.contains(&prepared.instance_id[..8]))
            .unwrap_or_else(|| panic!("the instance is not listed:\n{out}"));
        assert!(row.contains(&runtime_column), "{out}");
    }

    let job_id = prepared
        .job_id
        .as_deref()
        .expect("prepare --output json names its job");
    let jobs = sb.ls("jobs");
    assert_eq!(field(find(&jobs, job_id), "status"), "succeeded");
    assert!(sb.sqlrs_ok(&["ls", "--jobs"]).stdout.contains(&job_id[..8]));
    let tasks = sb.ls("tasks");
    assert!(
        tasks
            .iter()
            .all(|t| TASK_STATUSES.contains(&field(t, "status"))),
        "{tasks:#?}"
    );
    assert_eq!(sb.step_tasks(job_id).len(), 2, "{tasks:#?}");
}

fn removal(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    sb.write_chain();
    let prepared = sb.prepare(&CHAIN);
    let plan = sb.plan(&CHAIN);
    let (s1, s2) = (plan[0].state_id.clone(), plan[1].state_id.clone());
    let exists = |id: &str| sb.state_ids().iter().any(|s| s == id);

    // (arguments, succeeds, states still there afterwards): a dry run exits
    // as the removal would.
    let cases: [(&[&str], bool, bool); 4] = [
        (&["rm", prefix(&s1), "--dry-run"], false, true),
        (&["rm", prefix(&s1)], false, true),
        (&["rm", prefix(&s2)], false, true),
        (
            &["rm", prefix(&s1), "--recurse", "--force", "--dry-run"],
            true,
            true,
        ),
    ];
    for (args, ok, kept) in cases {
        let out = sb.sqlrs(args);
        assert_eq!(out.success(), ok, "{}", sb.explain(&out));
        assert!(out.code.is_some(), "{out}");
        assert_eq!((exists(&s1), exists(&s2)), (kept, kept), "after {args:?}");
    }
    assert_eq!(sb.instance_ids(), vec![prepared.instance_id.clone()]);

    let dry = sb.json(&["rm", prefix(&s1), "--recurse", "--force", "--dry-run"]);
    let listed = ids(&json_list(&dry, "items"));
    for id in [&s1, &s2, &prepared.instance_id] {
        assert!(listed.contains(id), "the dry run lists {id}: {dry:#}");
    }

    sb.sqlrs_ok(&["rm", prefix(&s1), "--recurse", "--force"]);
    assert!(!exists(&s1) && !exists(&s2), "{:?}", sb.state_ids());
    assert!(sb.instance_ids().is_empty(), "--force removes the instance");
    assert!(
        sb.plan(&CHAIN).iter().all(|s| !s.cached),
        "removed states are no longer cached"
    );

    let again = sb.prepare(&CHAIN);
    sb.sqlrs_ok(&["rm", prefix(&again.instance_id)]);
    assert!(sb.instance_ids().is_empty());
    assert!(exists(&s2), "removing an instance keeps its state");

    let job = again.job_id.expect("prepare --output json names its job");
    sb.sqlrs_ok(&["rm", prefix(&job)]);
    assert!(
        !ids(&sb.ls("jobs")).contains(&job),
        "the job is gone from ls --jobs"
    );
}

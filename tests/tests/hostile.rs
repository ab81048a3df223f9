//! Hostile and mistaken input, end to end on the native runtime and a copy
//! store: missing, cyclic, binary, huge and badly encoded files, SQL errors
//! at either end of a file, psql options sqlrs refuses, malformed alias
//! files, unknown ids, removals of things in use, a daemon that is not the
//! user's, a wrong token, missing PostgreSQL binaries, a taken port and a
//! full disk during a step and during a snapshot.
//!
//! Each case asserts what the user sees (the exit code, and that the message
//! names the file and line where there is one and says what to do) and that
//! nothing cached or running was harmed: a chain prepared before the bad
//! input keeps its instance (which still answers), its states stay listed,
//! and preparing it again is a full cache hit. Cases share a sandbox per
//! table, so the suite starts two daemons (plus the restarts some cases are
//! about).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlrs_e2e::{
    Backend, CHAIN, LoopFs, Output, Runtime, STAMP_QUERY, Sandbox, config_yaml, field, find_str,
    free_bytes, hold_connection, run,
};

/// One mistaken or hostile command and what its user must see.
struct Case {
    name: &'static str,
    /// Makes what the case needs (files, a token) before it runs.
    setup: fn(&Sandbox),
    /// `sqlrs` arguments; placeholders as in [`Kept::fill`].
    args: &'static [&'static str],
    /// The exit code.
    code: i32,
    /// What stdout and stderr together must contain (placeholders filled).
    fragments: &'static [&'static str],
    /// More checks of a case whose output is right.
    check: fn(&Sandbox, &Output),
    /// Undoes the setup, whatever the output.
    undo: fn(&Sandbox),
}

fn nothing(_: &Sandbox) {}
fn no_check(_: &Sandbox, _: &Output) {}

/// A case that needs no setup and no further check.
fn case(
    name: &'static str,
    args: &'static [&'static str],
    code: i32,
    fragments: &'static [&'static str],
) -> Case {
    Case {
        name,
        setup: nothing,
        args,
        code,
        fragments,
        check: no_check,
        undo: nothing,
    }
}

impl Case {
    fn with(self, setup: fn(&Sandbox)) -> Self {
        Case { setup, ..self }
    }

    fn then(self, check: fn(&Sandbox, &Output)) -> Self {
        Case { check, ..self }
    }

    fn undo(self, undo: fn(&Sandbox)) -> Self {
        Case { undo, ..self }
    }
}

/// The good chain prepared before any bad input, and its instance, kept
/// through every case.
struct Kept {
    instance: String,
    dsn: String,
    /// The head state (after seed.sql) and its parent (after schema.sql).
    state: String,
    parent: String,
    /// Every state listed right after the good prepare.
    states: Vec<String>,
    /// When schema.sql ran: a rebuild would change it.
    stamp: String,
}

impl Kept {
    fn prepare(sb: &Sandbox) -> Self {
        sb.write_chain();
        let prepared = sb.prepare(&CHAIN);
        let plan = sb.plan(&CHAIN);
        Kept {
            stamp: sb.query(&prepared.dsn, STAMP_QUERY),
            instance: prepared.instance_id,
            dsn: prepared.dsn,
            state: plan[1].state_id.clone(),
            parent: plan[0].state_id.clone(),
            states: sb.state_ids(),
        }
    }

    /// `text` with `{instance}`, `{state}`, `{parent}` and `{token}` (the
    /// token file) filled in.
    fn fill(&self, sb: &Sandbox, text: &str) -> String {
        text.replace("{instance}", &self.instance)
            .replace("{state}", &self.state)
            .replace("{parent}", &self.parent)
            .replace(
                "{token}",
                &sb.state_dir().join("token").display().to_string(),
            )
    }

    /// Nothing cached or running was harmed: the instance answers with the
    /// data it had, every state is still listed, and the chain still plans
    /// as cached. `full`: preparing it again is a cache hit at every step.
    fn unharmed(&self, sb: &Sandbox, after: &str, full: bool) {
        assert_eq!(
            sb.query(&self.dsn, STAMP_QUERY),
            self.stamp,
            "after {after}: the kept instance lost its data"
        );
        assert_eq!(
            sb.query(&self.dsn, "select count(*) from item"),
            "2",
            "after {after}"
        );
        let listed: BTreeSet<String> = sb.state_ids().into_iter().collect();
        for id in &self.states {
            assert!(
                listed.contains(id),
                "after {after}: state {id} is gone from ls --states"
            );
        }
        let plan = sb.plan(&CHAIN);
        assert_eq!(
            plan.iter()
                .map(|s| (s.state_id.as_str(), s.cached))
                .collect::<Vec<_>>(),
            [(self.parent.as_str(), true), (self.state.as_str(), true)],
            "after {after}: the good chain no longer plans as cached"
        );
        assert!(
            sb.instance_ids().contains(&self.instance),
            "after {after}: the kept instance is gone"
        );
        if full {
            let again = sb.prepare(&CHAIN);
            let job = again.job_id.as_deref().expect("prepare names its job");
            assert_eq!(
                sb.step_tasks(job),
                [(self.parent.clone(), true), (self.state.clone(), true)],
                "after {after}: the good prepare is not a full cache hit"
            );
            assert_eq!(sb.query(&again.dsn, STAMP_QUERY), self.stamp);
            sb.sqlrs_ok(&["rm", &again.instance_id]);
        }
    }
}

/// Runs every case of a table in `sb`, checking after each that nothing was
/// harmed; reports every case whose output is not what it should be.
fn run_table(sb: &Sandbox, kept: &Kept, table: &str, cases: &[Case]) {
    let mut wrong = Vec::new();
    for case in cases {
        (case.setup)(sb);
        let args: Vec<String> = case.args.iter().map(|a| kept.fill(sb, a)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sb.sqlrs(&args);
        let text = out.text();
        let missing: Vec<String> = case
            .fragments
            .iter()
            .map(|f| kept.fill(sb, f))
            .filter(|f| !text.contains(f.as_str()))
            .collect();
        if out.code != Some(case.code) || !missing.is_empty() {
            wrong.push(format!(
                "[{table}] {}: want exit {} and {missing:?} in\n{}",
                case.name,
                case.code,
                sb.explain(&out)
            ));
        } else {
            (case.check)(sb, &out);
        }
        (case.undo)(sb);
        kept.unharmed(sb, case.name, false);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// The instance a text-mode prepare handed out (by its DSN), removed after
/// `check` has seen it.
fn with_prepared(sb: &Sandbox, out: &Output, check: impl FnOnce(&str)) {
    let dsn = out.dsn();
    check(&dsn);
    let id = sb
        .ls("instances")
        .into_iter()
        .find(|i| field(i, "dsn") == dsn)
        .map(|i| field(&i, "id").to_owned())
        .unwrap_or_else(|| panic!("no instance has {dsn}"));
    sb.sqlrs_ok(&["rm", &id]);
}

fn table_exists(sb: &Sandbox, dsn: &str, table: &str) -> bool {
    sb.query(dsn, &format!("select to_regclass('{table}') is not null")) == "t"
}

fn write_bytes(sb: &Sandbox, rel: &str, bytes: &[u8]) {
    let path = sb.project().join(rel);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// 50 MB of `select 1;` lines.
const HUGE_LINES: usize = 5_000_000;

fn huge_script(sb: &Sandbox) {
    write_bytes(sb, "huge.sql", &b"select 1;\n".repeat(HUGE_LINES));
}

/// The same 50 MB as the data of a `COPY … FROM STDIN` into a temporary
/// table: psql sends it all, quickly, and the state keeps only the count.
fn huge_copy(sb: &Sandbox) {
    let mut bytes = b"create temp table huge(line text);\ncopy huge from stdin;\n".to_vec();
    bytes.extend(b"select 1;\n".repeat(HUGE_LINES));
    bytes.extend(b"\\.\ncreate table huge_count as select count(*) as n from huge;\n");
    write_bytes(sb, "huge_copy.sql", &bytes);
}

/// Files outside the project, included by an absolute and a relative path.
fn outside_includes(sb: &Sandbox) {
    let outside = sb.root().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(
        outside.join("abs.sql"),
        "create table outside_abs(x int);\n",
    )
    .unwrap();
    std::fs::write(
        outside.join("rel.sql"),
        "create table outside_rel(x int);\n",
    )
    .unwrap();
    sb.write(
        "outside.sql",
        &format!(
            "\\i {}\n\\ir ../outside/rel.sql\n",
            outside.join("abs.sql").display()
        ),
    );
}

fn input_cases() -> Vec<Case> {
    vec![
        case(
            "a missing -f file",
            &["prepare:psql", "--", "-f", "nope.sql"],
            3,
            &["-f nope.sql: cannot read", "nope.sql: no such file", "check the path (relative paths start at"],
        ),
        case(
            "a missing -f file, planned",
            &["plan:psql", "--", "-f", "nope.sql"],
            1,
            &["-f nope.sql: cannot read", "check the path", "(plan_error)"],
        ),
        case(
            "a missing \\i include",
            &["prepare:psql", "--", "-f", "inc.sql"],
            3,
            &[
                "inc.sql:2: \\i missing_inc.sql: cannot read",
                "missing_inc.sql: no such file",
                "\\i paths are relative to psql's working directory",
                "use \\ir for a path relative to the including file",
            ],
        )
        .with(|sb| {
            sb.write("inc.sql", "select 1;\n\\i missing_inc.sql\n");
        })
        .then(|_, out| {
            assert_eq!(
                out.stderr.matches("inc.sql:2:").count(),
                1,
                "the location is given once:\n{out}"
            );
        }),
        case(
            "an include cycle",
            &["prepare:psql", "--", "-f", "a.sql"],
            3,
            &["b.sql:2: include cycle", "a.sql → ", "b.sql → ", "remove one of these includes"],
        )
        .with(|sb| {
            sb.write("a.sql", "\\i b.sql\n");
            sb.write("b.sql", "select 1;\n\\i a.sql\n");
        }),
        // psql opens any path it is given; so does sqlrs, and it hashes
        // those files like the others.
        case(
            "includes outside the project, absolute and ../",
            &["prepare:psql", "--", "-f", "outside.sql"],
            0,
            &["DSN=postgres://"],
        )
        .with(outside_includes)
        .then(|sb, out| {
            with_prepared(sb, out, |dsn| {
                assert!(table_exists(sb, dsn, "outside_abs"));
                assert!(table_exists(sb, dsn, "outside_rel"));
            });
            let cached = |sb: &Sandbox| sb.plan(&["-f", "outside.sql"])[0].cached;
            assert!(cached(sb));
            let abs = sb.root().join("outside/abs.sql");
            std::fs::write(&abs, "create table outside_abs(y int);\n").unwrap();
            assert!(!cached(sb), "an edit outside the project changes the state");
        }),
        case(
            "a binary file (bytes 0 to 255)",
            &["prepare:psql", "--", "-f", "bin.sql"],
            3,
            &["bin.sql:1: invalid byte sequence for encoding \"UTF8\""],
        )
        .with(|sb| write_bytes(sb, "bin.sql", &(0..=255u8).collect::<Vec<_>>())),
        case(
            "invalid UTF-8 in a string literal",
            &["prepare:psql", "--", "-f", "bad_utf8.sql"],
            3,
            &["bad_utf8.sql:3: invalid byte sequence for encoding \"UTF8\": 0xff"],
        )
        .with(|sb| {
            write_bytes(
                sb,
                "bad_utf8.sql",
                b"create table u(x text);\ninsert into u values ('ok');\ninsert into u values ('\xff\xfe bad');\n",
            )
        }),
        // psql drops `--` comments before sending anything: Latin-1 there runs.
        case(
            "invalid UTF-8 in a comment",
            &["prepare:psql", "--", "-f", "latin1.sql"],
            0,
            &["DSN=postgres://"],
        )
        .with(|sb| write_bytes(sb, "latin1.sql", b"-- caf\xe9\ncreate table latin1_ok(x int);\n"))
        .then(|sb, out| with_prepared(sb, out, |dsn| assert!(table_exists(sb, dsn, "latin1_ok")))),
        case(
            "50 MB of statements, planned",
            &["plan:psql", "--", "-f", "huge.sql"],
            0,
            &["-f huge.sql"],
        )
        .with(huge_script),
        case(
            "50 MB of COPY data, prepared",
            &["prepare:psql", "--", "-f", "huge_copy.sql"],
            0,
            &["DSN=postgres://"],
        )
        .with(huge_copy)
        .then(|sb, out| {
            with_prepared(sb, out, |dsn| {
                assert_eq!(sb.query(dsn, "select n from huge_count"), HUGE_LINES.to_string());
            })
        }),
        case(
            "a SQL error at the first line",
            &["prepare:psql", "--", "-f", "first.sql"],
            3,
            &["first.sql:1: syntax error at or near \"selec\""],
        )
        .with(|sb| {
            sb.write("first.sql", "selec 1;\nselect 2;\nselect 3;\n");
        }),
        case(
            "a SQL error at the last line (no newline after it)",
            &["prepare:psql", "--", "-f", "last.sql"],
            3,
            &["last.sql:5: syntax error at or near \"selec\""],
        )
        .with(|sb| {
            sb.write("last.sql", "select 1;\nselect 2;\nselect 3;\nselect 4;\nselec 5");
        }),
        case(
            "a SQL error at the last line of an included file",
            &["prepare:psql", "--", "-f", "includes_last.sql"],
            3,
            &["last.sql:5: syntax error at or near \"selec\""],
        )
        .with(|sb| {
            sb.write("includes_last.sql", "select 0;\n\\i last.sql\n");
        }),
    ]
}

fn option_cases() -> Vec<Case> {
    const CONNECTS: &str = "sqlrs connects psql to the instance itself";
    vec![
        case(
            "-h",
            &["prepare:psql", "--", "-h", "localhost", "-f", "schema.sql"],
            3,
            &["-h: sqlrs connects psql to the instance itself; remove -h"],
        ),
        case(
            "-p",
            &["prepare:psql", "--", "-p", "5432", "-f", "schema.sql"],
            3,
            &["-p: sqlrs connects psql to the instance itself; remove -p"],
        ),
        case(
            "-U",
            &["prepare:psql", "--", "-U", "bob", "-f", "schema.sql"],
            3,
            &["-U: sqlrs connects psql to the instance itself; remove -U"],
        ),
        case(
            "-d",
            &["prepare:psql", "--", "-d", "db", "-f", "schema.sql"],
            3,
            &["-d: sqlrs connects psql to the instance itself; remove -d"],
        ),
        case(
            "--host=",
            &["prepare:psql", "--", "--host=localhost", "-f", "schema.sql"],
            3,
            &["--host: sqlrs connects psql to the instance itself; remove --host"],
        ),
        case(
            "--port=, planned",
            &["plan:psql", "--", "--port=5432", "-f", "schema.sql"],
            1,
            &["--port: sqlrs connects psql to the instance itself; remove --port"],
        ),
        case(
            "-W",
            &["prepare:psql", "--", "-W", "-f", "schema.sql"],
            3,
            &["-W: sqlrs connects psql to the instance itself; remove -W"],
        ),
        case(
            "a positional database",
            &["prepare:psql", "--", "-f", "schema.sql", "mydb"],
            3,
            &[
                "psql argument \"mydb\" names a database or connection",
                CONNECTS,
                "give steps with -f FILE or -c SQL",
            ],
        ),
        case(
            "a positional connection URI",
            &[
                "prepare:psql",
                "--",
                "postgres://u@h/db",
                "-f",
                "schema.sql",
            ],
            3,
            &[
                "psql argument \"postgres://u@h/db\" names a database or connection",
                CONNECTS,
            ],
        ),
        case(
            "an unknown long option",
            &["prepare:psql", "--", "--bogus", "-f", "schema.sql"],
            3,
            &["--bogus: unknown psql option; prepare accepts -f, -c, -v/--set, -1, -X"],
        ),
        case(
            "an unknown short option",
            &["plan:psql", "--", "-Z", "-f", "schema.sql"],
            1,
            &["-Z: unknown psql option; prepare accepts -f, -c"],
        ),
        case(
            "ON_ERROR_STOP turned off",
            &[
                "prepare:psql",
                "--",
                "-v",
                "ON_ERROR_STOP=0",
                "-f",
                "schema.sql",
            ],
            3,
            &[
                "sqlrs always runs psql with ON_ERROR_STOP=1",
                "remove this option",
            ],
        ),
        case(
            "output to a file",
            &["prepare:psql", "--", "-o", "out.txt", "-f", "schema.sql"],
            3,
            &[
                "-o: not supported by prepare",
                "use run:psql to see query results",
                "remove it",
            ],
        ),
        case(
            "single-step mode",
            &["prepare:psql", "--", "-s", "-f", "schema.sql"],
            3,
            &[
                "-s: not supported by prepare because it waits for a confirmation",
                "remove it",
            ],
        ),
        case(
            "-f without a file",
            &["prepare:psql", "--", "-f", "schema.sql", "-f"],
            3,
            &["-f needs a value, e.g. -f schema.sql"],
        ),
    ]
}

const ALIAS_HELP: &str = "an alias file holds `kind:`, optional `image:` and `args:`";

fn alias_cases() -> Vec<Case> {
    vec![
        case(
            "alias YAML syntax error",
            &["prepare", "syntax"],
            1,
            &["syntax.prep.s9s.yaml:3:1: did not find expected ',' or ']'", ALIAS_HELP],
        )
        .with(|sb| {
            sb.write("syntax.prep.s9s.yaml", "kind: psql\nargs: [-f, schema.sql\n");
        }),
        case(
            "alias with an unknown key",
            &["prepare", "unknown"],
            1,
            &["unknown.prep.s9s.yaml:3:1: unknown field `extra`, expected one of `kind`, `image`, `args`", ALIAS_HELP],
        )
        .with(|sb| {
            sb.write("unknown.prep.s9s.yaml", "kind: psql\nargs: [-f, schema.sql]\nextra: 1\n");
        }),
        case(
            "alias of a wrong kind",
            &["prepare", "kind"],
            1,
            &["kind.prep.s9s.yaml:1:7: kind `mysql` is not a prepare kind; use one of: psql, lb"],
        )
        .with(|sb| {
            sb.write("kind.prep.s9s.yaml", "kind: mysql\nargs: [-f, schema.sql]\n");
        }),
        case(
            "run alias of a prepare kind",
            &["run", "lb", "--instance", "{instance}"],
            1,
            &["lb.run.s9s.yaml:1:7: kind `lb` is not a run kind; use one of: psql, pgbench"],
        )
        .with(|sb| {
            sb.write("lb.run.s9s.yaml", "kind: lb\nargs: [update]\n");
        }),
        case(
            "alias args not a list",
            &["prepare", "args_string"],
            1,
            &["args_string.prep.s9s.yaml:2:7: args: invalid type: string \"-f schema.sql\", expected a sequence", ALIAS_HELP],
        )
        .with(|sb| {
            sb.write("args_string.prep.s9s.yaml", "kind: psql\nargs: -f schema.sql\n");
        }),
        case(
            "alias with empty args",
            &["prepare", "empty"],
            1,
            &["empty.prep.s9s.yaml:2:7: `args` is empty; list the tool arguments, e.g. `args: [-f, schema.sql]`"],
        )
        .with(|sb| {
            sb.write("empty.prep.s9s.yaml", "kind: psql\nargs: []\n");
        }),
        case(
            "an empty alias file",
            &["prepare", "blank"],
            1,
            &["blank.prep.s9s.yaml:1:1: missing field `kind`", ALIAS_HELP],
        )
        .with(|sb| {
            sb.write("blank.prep.s9s.yaml", "");
        }),
        case(
            "a missing alias file",
            &["prepare", "absent"],
            1,
            &["no alias file absent.prep.s9s.yaml in", "create it in one of these folders"],
        ),
    ]
}

fn id_cases() -> Vec<Case> {
    vec![
        case(
            "rm of an unknown id",
            &["rm", "deadbeefdeadbeef"],
            1,
            &[
                "no instance, state or job id starts with deadbeefdeadbeef",
                "see `sqlrs ls --instances --states --jobs`",
            ],
        ),
        case(
            "rm of a short prefix",
            &["rm", "dead"],
            2,
            &["`dead` is not an id prefix: give at least 8 hex characters"],
        ),
        case(
            "rm of a non-hex id",
            &["rm", "zzzzzzzzzz"],
            2,
            &["`zzzzzzzzzz` is not an id prefix"],
        ),
        case(
            "run:psql on an unknown instance",
            &[
                "run:psql",
                "--instance",
                "deadbeefdeadbeef",
                "--",
                "-c",
                "select 1",
            ],
            1,
            &[
                "instance deadbeefdeadbeef not found",
                "`sqlrs ls` lists the instances",
                "(not_found)",
            ],
        ),
        case(
            "run:psql on a short prefix",
            &["run:psql", "--instance", "dead", "--", "-c", "select 1"],
            1,
            &[
                "id prefix \"dead\" is too short: give at least 8 hex characters",
                "(short_prefix)",
            ],
        ),
        case(
            "watch of an unknown job",
            &["watch", "deadbeefdeadbeef"],
            1,
            &[
                "job deadbeefdeadbeef not found",
                "`sqlrs ls --jobs` lists the jobs",
            ],
        ),
        case(
            "watch of a short prefix",
            &["watch", "dead"],
            1,
            &["id prefix \"dead\" is too short"],
        ),
        case(
            "ls --tasks of an unknown job",
            &["ls", "--tasks", "deadbeefdeadbeef"],
            1,
            &[
                "job deadbeefdeadbeef not found",
                "`sqlrs ls --jobs` lists the jobs",
            ],
        ),
        case(
            "ls --tasks of a short prefix",
            &["ls", "--tasks", "dead"],
            1,
            &["id prefix \"dead\" is too short"],
        ),
    ]
}

/// Removals of what is in use, while a client holds a connection to the
/// kept instance.
fn in_use_cases() -> Vec<Case> {
    vec![
        case(
            "rm of a state an instance uses",
            &["rm", "{state}"],
            1,
            &[
                "blocked state {state}: 1 instance(s) use it or a descendant; use --force to remove them too",
                "used by instance {instance}",
            ],
        ),
        case(
            "rm of a state with children",
            &["rm", "{parent}"],
            1,
            &[
                "blocked state {parent}: it has 1 descendant state(s); use --recurse to remove them too",
            ],
        ),
        case(
            "rm --recurse of a state whose child an instance uses",
            &["rm", "--recurse", "{parent}"],
            1,
            &[
                "blocked state {parent}: 1 instance(s) use it or a descendant",
                "used by instance {instance}",
            ],
        ),
        case(
            "rm of an instance with an open connection",
            &["rm", "{instance}"],
            1,
            &["blocked instance {instance}: 1 open connection(s); close them or use --force"],
        ),
        case(
            "rm --dry-run of an instance with an open connection",
            &["rm", "--dry-run", "{instance}"],
            1,
            &["blocked instance {instance}: 1 open connection(s)"],
        ),
    ]
}

fn token_path(sb: &Sandbox) -> PathBuf {
    sb.state_dir().join("token")
}

fn saved_token(sb: &Sandbox) -> PathBuf {
    sb.root().join("token.good")
}

fn restore_token(sb: &Sandbox) {
    std::fs::copy(saved_token(sb), token_path(sb)).expect("restore the token");
}

fn token_cases() -> Vec<Case> {
    const STOP: &str = "run `sqlrs daemon stop` (it stops the daemon without the token) and retry";
    vec![
        case(
            "a garbage token",
            &["ls"],
            1,
            &[
                "missing or wrong token",
                "the token in {token} is not the one the running sqlrsd wrote",
                STOP,
                "(bad_token)",
            ],
        )
        .with(|sb| std::fs::write(token_path(sb), "garbage\n").unwrap())
        .undo(restore_token),
        case(
            "a token of control characters",
            &["ls"],
            1,
            &[
                "cannot use the token of sqlrsd (pid",
                "in {token}: the token is not printable ASCII",
                STOP,
            ],
        )
        .with(|sb| std::fs::write(token_path(sb), b"\x01\x02").unwrap())
        .undo(restore_token),
        case(
            "a token that is not UTF-8",
            &["ls"],
            1,
            &["in {token}: stream did not contain valid UTF-8", STOP],
        )
        .with(|sb| std::fs::write(token_path(sb), b"\xff\xfe").unwrap())
        .undo(restore_token),
        case(
            "a removed token file",
            &["ls"],
            1,
            &[
                "in {token}: No such file or directory",
                "the daemon writes a new token there at every start",
                STOP,
            ],
        )
        .with(|sb| std::fs::remove_file(token_path(sb)).unwrap())
        .undo(restore_token),
    ]
}

/// `sqlrs ARGS` with the socket looked for under `runtime_dir`.
fn sqlrs_with_runtime_dir(sb: &Sandbox, runtime_dir: &Path, args: &[&str]) -> Output {
    let mut cmd = sb.sqlrs_command(args);
    cmd.env("XDG_RUNTIME_DIR", runtime_dir);
    run(cmd, Duration::from_secs(120))
}

const NOBODY: u32 = 65534;

/// A socket folder of another user, and another user's socket in a folder
/// of ours: the CLI refuses both before sending anything, and starts no daemon.
fn foreign_sockets(sb: &Sandbox, kept: &Kept) {
    use std::os::unix::net::UnixListener;
    let theirs = sb.root().join("their-run");
    let dir = theirs.join("sqlrs");
    std::fs::create_dir_all(&dir).unwrap();
    let _their_daemon = UnixListener::bind(dir.join("sqlrsd.sock")).unwrap();
    std::os::unix::fs::chown(dir.join("sqlrsd.sock"), Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    let ours = sb.root().join("our-run");
    let our_dir = ours.join("sqlrs");
    std::fs::create_dir_all(&our_dir).unwrap();
    std::fs::set_permissions(&our_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let _planted = UnixListener::bind(our_dir.join("sqlrsd.sock")).unwrap();
    std::os::unix::fs::chown(our_dir.join("sqlrsd.sock"), Some(NOBODY), Some(NOBODY)).unwrap();

    let cases = [
        ("another user's socket folder", &theirs, dir.clone()),
        (
            "another user's socket in our folder",
            &ours,
            our_dir.join("sqlrsd.sock"),
        ),
    ];
    for (name, runtime_dir, named) in cases {
        for args in [&["ls"][..], &["prepare:psql", "--", "-f", "schema.sql"]] {
            let out = sqlrs_with_runtime_dir(sb, runtime_dir, args);
            let text = out.text();
            assert_eq!(out.code, Some(1), "{name}: {out}");
            let owner = format!("{} belongs to nobody (uid {NOBODY})", named.display());
            for want in [
                owner.as_str(),
                "but this sqlrs runs as root (uid 0)",
                "another user's sqlrsd may be listening there",
                "set XDG_RUNTIME_DIR to a folder of your own",
            ] {
                assert!(text.contains(want), "{name}: {want:?} in\n{out}");
            }
        }
        kept.unharmed(sb, name, false);
    }
    // A daemon of its own (own store) does not listen in their folder either.
    let mut daemon = sb.sqlrsd_command();
    daemon
        .env("XDG_RUNTIME_DIR", &theirs)
        .env("XDG_STATE_HOME", sb.root().join("their-state"));
    let out = run(daemon, Duration::from_secs(120));
    let text = out.text();
    assert!(!out.success(), "{out}");
    for want in [
        format!(
            "the socket folder {} belongs to nobody (uid {NOBODY}), but sqlrsd runs as root (uid 0)",
            dir.display()
        ),
        "set XDG_RUNTIME_DIR to a folder of your own".into(),
    ] {
        assert!(text.contains(&want), "{want:?} in\n{out}");
    }
}

/// A wrong token fails every call with the fix, the daemon goes on serving
/// the right one, and the fix (`sqlrs daemon stop` without the token) works.
fn wrong_tokens(sb: &Sandbox, kept: &Kept) {
    let pid = sb.daemon_pid().expect("the daemon runs");
    std::fs::copy(token_path(sb), saved_token(sb)).unwrap();
    run_table(sb, kept, "token", &token_cases());
    assert_eq!(
        sb.daemon_pid(),
        Some(pid),
        "the same daemon went on serving the right token"
    );

    std::fs::write(token_path(sb), "garbage\n").unwrap();
    let stopped = sb.sqlrs(&["daemon", "stop"]);
    assert!(
        stopped.success()
            && stopped
                .stdout
                .contains(&format!("stopped sqlrsd (pid {pid})")),
        "daemon stop works without the token:\n{}",
        sb.explain(&stopped)
    );
    sb.sqlrs_ok(&["daemon", "start"]);
    assert_ne!(sb.daemon_pid(), Some(pid), "a new daemon");
    let token = std::fs::read_to_string(token_path(sb)).unwrap();
    assert!(
        token.trim() != "garbage" && !token.trim().is_empty(),
        "the new daemon wrote a new token"
    );
    kept.unharmed(sb, "stopping a daemon with a garbage token", false);
}

/// PostgreSQL binaries missing: the daemon does not start, and the CLI says
/// which path, which setting and where the config is, from this start's log.
fn missing_binaries(sb: &Sandbox, kept: &Kept) {
    let config = std::fs::read_to_string(sb.config_path()).unwrap();
    sb.set_config(&config.replace(
        "runtime:\n  kind: native\n",
        "runtime:\n  kind: native\n  native:\n    bin_dir: /nonexistent\n",
    ));
    sb.sqlrs_ok(&["daemon", "stop"]);
    let mut args = vec!["prepare:psql", "--"];
    args.extend(CHAIN);
    let out = sb.sqlrs(&args);
    let text = out.text();
    assert_eq!(out.code, Some(1), "{}", sb.explain(&out));
    for want in [
        "sqlrsd exited while starting".to_owned(),
        format!("its configuration: {}", sb.config_path().display()),
        "runtime.native.bin_dir /nonexistent has no `postgres`".into(),
        "point it at the folder holding initdb and postgres (e.g. /usr/lib/postgresql/15/bin)"
            .into(),
    ] {
        assert!(text.contains(&want), "{want:?} in\n{out}");
    }
    assert!(
        !text.contains("listening on"),
        "only what this start logged is shown:\n{out}"
    );
    assert!(sb.daemon_pid().is_none(), "no daemon runs");
    sb.set_config(&config);
    kept.unharmed(sb, "a bin_dir that does not exist", true);
}

/// An instance whose server went away is restarted when next used; its old
/// port, now taken by another program, is left alone and another is used.
fn taken_port(sb: &Sandbox, kept: &Kept) {
    let other = sb.prepare(&CHAIN);
    let listed = |id: &str| {
        sb.ls("instances")
            .into_iter()
            .find(|i| field(i, "id") == id)
            .unwrap_or_else(|| panic!("instance {id} is not listed"))
    };
    let before = listed(&other.instance_id);
    let number = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("no {key} in {v:#}"))
    };
    let (pid, port) = (number(&before, "pid"), number(&before, "port"));
    // A fast shutdown behind sqlrs's back.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "server {pid} did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port as u16))
        .unwrap_or_else(|e| panic!("cannot take port {port}: {e}"));

    let out = sb.sqlrs(&[
        "run:psql",
        "--instance",
        &other.instance_id,
        "--",
        "-A",
        "-t",
        "-c",
        "select 'alive after a restart'",
    ]);
    assert!(
        out.success() && out.stdout.contains("alive after a restart"),
        "{}",
        sb.explain(&out)
    );
    let after = listed(&other.instance_id);
    assert_ne!(
        number(&after, "port"),
        port,
        "the taken port was left alone"
    );
    assert!(
        field(&after, "dsn").contains(&format!(":{}/", number(&after, "port"))),
        "the DSN follows the new port: {after:#}"
    );
    assert_eq!(
        squatter.local_addr().unwrap().port(),
        port as u16,
        "the other program keeps its port"
    );
    drop(squatter);
    sb.sqlrs_ok(&["rm", &other.instance_id]);
    kept.unharmed(sb, "a taken port", false);
}

fn wait_for_connection(sb: &Sandbox, instance: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = sb
            .ls("instances")
            .iter()
            .find(|i| field(i, "id") == instance)
            .and_then(|i| i.get("connections"))
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        if n >= 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the held connection is not seen: {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Input, options, alias files, ids, removals in use, foreign sockets,
/// tokens, missing binaries and a taken port, in one sandbox, around one
/// kept instance.
#[test]
fn hostile_input_harms_nothing_cached_or_running() {
    let sb = Sandbox::new(Backend::Copy);
    // No warm instances: fewer servers on a small machine, and nothing
    // started behind the cases' backs.
    sb.set_config(&format!(
        "{}pool:\n  per_state: 0\n",
        config_yaml(None, Some(Backend::Copy))
    ));
    let kept = Kept::prepare(&sb);
    run_table(&sb, &kept, "input", &input_cases());
    run_table(&sb, &kept, "options", &option_cases());
    run_table(&sb, &kept, "aliases", &alias_cases());
    run_table(&sb, &kept, "ids", &id_cases());

    let mut held = hold_connection(&kept.dsn, 300);
    wait_for_connection(&sb, &kept.instance);
    run_table(&sb, &kept, "in use", &in_use_cases());
    let _ = held.kill();
    let _ = held.wait();

    foreign_sockets(&sb, &kept);
    wrong_tokens(&sb, &kept);
    missing_binaries(&sb, &kept);
    taken_port(&sb, &kept);
    kept.unharmed(&sb, "every case", true);
}

/// What a full disk may leave behind: nothing but complete states.
fn leftovers(sb: &Sandbox, kept: &Kept) -> Vec<PathBuf> {
    let store = sb.state_dir();
    let mut found = Vec::new();
    for (dir, keep) in [
        ("states", None),
        ("instances", Some(kept.instance.as_str())),
        ("work", None),
    ] {
        for entry in std::fs::read_dir(store.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stray = match dir {
                "states" => name.ends_with(".tmp"),
                "instances" => Some(name.as_str()) != keep,
                _ => true,
            };
            if stray {
                found.push(entry.path());
            }
        }
    }
    found
}

/// A state directory for each listed state, and nothing else in `states/`.
fn states_match_the_index(sb: &Sandbox) {
    let listed: BTreeSet<String> = sb.state_ids().into_iter().collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(sb.state_dir().join("states"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, on_disk, "the index and states/ agree");
}

fn restart(sb: &Sandbox) {
    sb.sqlrs_ok(&["daemon", "stop"]);
    sb.sqlrs_ok(&["daemon", "start"]);
}

const MIB: u64 = 1 << 20;
/// Rows of about 236 bytes each: some 78 MiB of unlogged table.
const MID_ROWS: u64 = 340_000;

/// A 400 MiB ext4 store: a step that writes more than the free space fails
/// with PostgreSQL's ENOSPC; a step that fits but whose state cannot be
/// cloned back for the build to go on fails naming that state and ENOSPC;
/// neither leaves anything half-made, and everything kept still works once
/// there is room again.
#[test]
fn a_full_disk_fails_the_step_and_keeps_everything_else() {
    let disk = LoopFs::new(400).unwrap_or_else(|e| panic!("{e}"));
    let sb = Sandbox::in_dir(Runtime::Native, Backend::Copy, disk.path());
    // No warm instances (they would take room of their own); a 1 MiB
    // reserve, so the store can be filled to the brim; the default minimum
    // age keeps every state from eviction.
    sb.set_config(
        "runtime:\n  kind: native\nsnapshot:\n  backend: copy\npool:\n  per_state: 0\ncache:\n  reserve_bytes: 1MiB\n",
    );
    let kept = Kept::prepare(&sb);
    let free_before = free_bytes(disk.path());

    // During a step: some 470 MB of rows on a disk with less than 250 MB free.
    sb.write(
        "fill.sql",
        "create table big(g int, t text);\ninsert into big select g, repeat('x', 200) from generate_series(1, 2000000) g;\n",
    );
    let fill = ["-f", "schema.sql", "-f", "seed.sql", "-f", "fill.sql"];
    let mut args = vec!["prepare:psql", "--"];
    args.extend(fill);
    let out = sb.sqlrs(&args);
    assert_eq!(out.code, Some(3), "{}", sb.explain(&out));
    // Where the space runs out decides PostgreSQL's words: a table file it
    // could not extend, or a WAL segment it could not write.
    let text = out.text();
    assert!(
        text.contains("fill.sql:2: could not extend file")
            || text.contains("fill.sql:2: could not write to file"),
        "the failing line and what PostgreSQL could not do in\n{out}"
    );
    assert!(
        text.contains("No space left on device"),
        "the cause in\n{out}"
    );
    let plan = sb.plan(&fill);
    assert_eq!(
        plan.iter().map(|s| s.cached).collect::<Vec<_>>(),
        [true, true, false],
        "nothing recorded for the step that failed"
    );
    assert_eq!(sb.state_ids().len(), kept.states.len(), "no new state");
    assert_eq!(leftovers(&sb, &kept), Vec::<PathBuf>::new());
    states_match_the_index(&sb);
    let free_after = free_bytes(disk.path());
    assert!(
        free_after + 8 * MIB >= free_before,
        "the failed build's room came back: {free_before} before, {free_after} after"
    );
    kept.unharmed(&sb, "a full disk during a step", false);

    // During a snapshot: a ballast leaves 160 MiB. The step (a clone of the
    // seed state, some 27 MiB, plus 78 MiB) fits; its state is then taken
    // into states/ and has to be copied back for the build to go on, and
    // those 105 MiB do not fit in the 55 left.
    let ballast = disk.path().join("ballast");
    let free = free_bytes(disk.path());
    assert!(
        free > 170 * MIB,
        "the test filesystem is too small: {free} bytes free"
    );
    let file = std::fs::File::create(&ballast).unwrap();
    // SAFETY: fallocate on an open file with a valid length.
    let rc = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            0,
            (free - 160 * MIB) as i64,
        )
    };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    drop(file);
    sb.write(
        "mid.sql",
        &format!("create unlogged table mid as select g, repeat('x', 200) as t from generate_series(1, {MID_ROWS}) g;\n"),
    );
    let mid = ["-f", "schema.sql", "-f", "seed.sql", "-f", "mid.sql"];
    let mid_state = sb.plan(&mid)[2].state_id.clone();
    let mut args = vec!["prepare:psql", "--"];
    args.extend(mid);
    let out = sb.sqlrs(&args);
    assert_eq!(out.code, Some(3), "{}", sb.explain(&out));
    let text = out.text();
    for want in [
        format!(
            "could not copy {}",
            sb.state_dir().join("states").join(&mid_state).display()
        ),
        "No space left on device".into(),
        "the filesystem of the state store is full".into(),
        "`sqlrs rm`".into(),
        "cache.reserve_bytes".into(),
    ] {
        assert!(text.contains(&want), "{want:?} in\n{out}");
    }
    let mut json_args = vec!["--output", "json"];
    json_args.extend(&args);
    let doc = sb.sqlrs(&json_args).json();
    assert_eq!(find_str(&doc, "reason"), Some("snapshot_error"), "{doc:#}");
    // The state is taken into states/ whole (a rename) and recorded before
    // the copy back; what is recorded is complete (checked below), and
    // nothing half-made stays.
    let check_store = |when: &str| {
        assert_eq!(leftovers(&sb, &kept), Vec::<PathBuf>::new(), "{when}");
        states_match_the_index(&sb);
        let listed: BTreeSet<String> = sb.state_ids().into_iter().collect();
        let mut expected: BTreeSet<String> = kept.states.iter().cloned().collect();
        expected.insert(mid_state.clone());
        assert!(
            listed.is_subset(&expected),
            "{when}: only the step's own state may be new: {listed:?}"
        );
    };
    check_store("after the failure");
    kept.unharmed(&sb, "a full disk during a snapshot", false);
    restart(&sb);
    check_store("after a daemon restart");

    // Room again: the kept instance and the states work, the recorded
    // state is whole.
    std::fs::remove_file(&ballast).unwrap();
    let again = sb.prepare(&mid);
    assert_eq!(again.state_id, mid_state);
    assert_eq!(
        sb.query(&again.dsn, "select count(*) from mid"),
        MID_ROWS.to_string()
    );
    sb.sqlrs_ok(&["rm", &again.instance_id]);
    kept.unharmed(&sb, "making room again", true);
}

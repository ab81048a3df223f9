//! Table-driven tests of the psql planner over temporary file trees.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::blobs::{self, BlobStore};

/// Writes `files` (path relative to the tree root, content) into a new tree.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    dir
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn plan_in(
    root: &Path,
    cwd: &str,
    args: &[&str],
    stdin: Option<&str>,
    blobs: Option<&BlobStore>,
) -> Result<Vec<Step>, PlanError> {
    let args = strings(args);
    let req = PsqlRequest {
        args: &args,
        cwd: &root.join(cwd),
        stdin: stdin.map(str::as_bytes),
    };
    plan_psql(&req, blobs)
}

/// Inputs as (path relative to the root, role).
fn inputs(root: &Path, step: &Step) -> Vec<(String, InputRole)> {
    step.inputs
        .iter()
        .map(|i| {
            let rel = i.path.strip_prefix(root).unwrap_or(&i.path);
            (rel.display().to_string(), i.role)
        })
        .collect()
}

const MAIN: InputRole = InputRole::Main;
const INC: InputRole = InputRole::Include;
const DATA: InputRole = InputRole::Data;

#[test]
fn closure_resolution_table() {
    let lib = [
        ("p/lib/a.sql", "select 'cwd lib';\n"),
        ("p/sql/lib/a.sql", "select 'sql lib';\n"),
        ("p/sql/lib/b.sql", "\\ir a.sql\n\\i lib/a.sql\n"),
        ("p/my file.sql", "select 'space';\n"),
        ("p/data/t.csv", "1,2\n"),
        ("p/sql/data/t.csv", "3,4\n"),
    ];
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a [&'a str],
        Option<&'a str>,
        &'a [(&'a str, InputRole)],
    );
    let cases: &[Case] = &[
        (
            "\\i is relative to the working directory",
            &[("p/sql/main.sql", "\\i lib/a.sql\n")],
            &["-f", "sql/main.sql"],
            None,
            &[("p/sql/main.sql", MAIN), ("p/lib/a.sql", INC)],
        ),
        (
            "\\ir is relative to the including file",
            &[("p/sql/main.sql", "\\ir lib/a.sql\n")],
            &["-f", "sql/main.sql"],
            None,
            &[("p/sql/main.sql", MAIN), ("p/sql/lib/a.sql", INC)],
        ),
        (
            "nested: \\ir from the nested file, \\i from cwd",
            &[("p/sql/main.sql", "\\include_relative lib/b.sql\n")],
            &["-f", "sql/main.sql"],
            None,
            &[
                ("p/sql/main.sql", MAIN),
                ("p/sql/lib/b.sql", INC),
                ("p/sql/lib/a.sql", INC),
                ("p/lib/a.sql", INC),
            ],
        ),
        (
            "\\include, .. and a trailing semicolon",
            &[("p/sql/main.sql", "\\include sql/../lib/./a.sql;\n")],
            &["-f", "./sql/main.sql"],
            None,
            &[("p/sql/main.sql", MAIN), ("p/lib/a.sql", INC)],
        ),
        (
            "a file included twice is one input",
            &[("p/main.sql", "\\i lib/a.sql\n\\i lib/a.sql\n")],
            &["-f", "main.sql"],
            None,
            &[("p/main.sql", MAIN), ("p/lib/a.sql", INC)],
        ),
        (
            "quoted name with a space",
            &[("p/main.sql", "\\i 'my file.sql'\n")],
            &["-f", "main.sql"],
            None,
            &[("p/main.sql", MAIN), ("p/my file.sql", INC)],
        ),
        (
            "-v interpolation in an include path",
            &[("p/main.sql", "\\i :dir/a.sql\n")],
            &["-v", "dir=sql/lib", "-f", "main.sql"],
            None,
            &[("p/main.sql", MAIN), ("p/sql/lib/a.sql", INC)],
        ),
        (
            "\\set earlier in the closure, seen by an include",
            &[
                ("p/main.sql", "\\ir vars.sql\n\\i :d/a.sql\n"),
                ("p/vars.sql", "\\set d 'sql/lib'\n"),
            ],
            &["-v", "d=lib", "-f", "main.sql"],
            None,
            &[
                ("p/main.sql", MAIN),
                ("p/vars.sql", INC),
                ("p/sql/lib/a.sql", INC),
            ],
        ),
        (
            "\\copy data is relative to the working directory, even from an included file",
            &[("p/sql/main.sql", "\\copy t from 'data/t.csv' csv\n")],
            &["-f", "sql/main.sql"],
            None,
            &[("p/sql/main.sql", MAIN), ("p/data/t.csv", DATA)],
        ),
        (
            "\\copy from stdin, to a file, and \\lo_import",
            &[(
                "p/main.sql",
                "\\copy t from stdin\n\\i no.sql\n\\.\n\\copy t to 'out.csv'\n\\lo_import data/t.csv\n",
            )],
            &["-f", "main.sql"],
            None,
            &[("p/main.sql", MAIN), ("p/data/t.csv", DATA)],
        ),
        (
            "\\cd moves the working directory",
            &[(
                "p/main.sql",
                "\\cd sql\n\\i lib/a.sql\n\\copy t from data/t.csv\n",
            )],
            &["-f", "main.sql"],
            None,
            &[
                ("p/main.sql", MAIN),
                ("p/sql/lib/a.sql", INC),
                ("p/sql/data/t.csv", DATA),
            ],
        ),
        (
            "-c with a meta-command; \\ir is relative to the cwd",
            &[],
            &["-c", "\\ir lib/a.sql", "-c", "select 1; \\i nope.sql"],
            None,
            &[("p/lib/a.sql", INC)],
        ),
        (
            "stdin: \\ir is relative to the cwd",
            &[],
            &["-f", "-"],
            Some("\\ir lib/a.sql\n"),
            &[("p/lib/a.sql", INC)],
        ),
        (
            "directives in comments, strings and bodies are not resolved",
            &[(
                "p/main.sql",
                "-- \\i nope.sql\n/* \\i nope.sql */\nselect '\\i nope.sql';\n\
                 create function f() returns text as $$ \\i nope.sql $$ language sql;\n\
                 COPY t FROM stdin;\n\\i nope.sql\n\\.\n",
            )],
            &["-f", "main.sql"],
            None,
            &[("p/main.sql", MAIN)],
        ),
        (
            "every \\if branch is resolved",
            &[(
                "p/main.sql",
                "\\if :{?x}\n\\i lib/a.sql\n\\else\n\\ir sql/lib/a.sql\n\\endif\n",
            )],
            &["-f", "main.sql"],
            None,
            &[
                ("p/main.sql", MAIN),
                ("p/lib/a.sql", INC),
                ("p/sql/lib/a.sql", INC),
            ],
        ),
    ];
    for (name, files, args, stdin, want) in cases {
        let all: Vec<(&str, &str)> = lib.iter().chain(files.iter()).copied().collect();
        let dir = tree(&all);
        let steps =
            plan_in(dir.path(), "p", args, *stdin, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got: Vec<(String, InputRole)> =
            steps.iter().flat_map(|s| inputs(dir.path(), s)).collect();
        let want: Vec<(String, InputRole)> =
            want.iter().map(|(p, r)| (p.to_string(), *r)).collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn absolute_include_paths_are_inputs() {
    let outside = tree(&[("shared/common.sql", "select 1;\n")]);
    let abs = outside.path().join("shared/common.sql");
    let script = format!("\\i {}\n", abs.display());
    let dir = tree(&[("p/main.sql", &script)]);
    let steps = plan_in(dir.path(), "p", &["-f", "main.sql"], None, None).unwrap();
    assert_eq!(steps[0].inputs[1].path, abs);
    assert_eq!(steps[0].inputs[1].role, INC);
}

/// One planning setup: files, cwd (relative to the tree), args, stdin.
struct Setup<'a> {
    files: &'a [(&'a str, &'a str)],
    cwd: &'a str,
    args: &'a [&'a str],
}

fn fingerprints(s: &Setup) -> Vec<Fingerprint> {
    let dir = tree(s.files);
    plan_in(dir.path(), s.cwd, s.args, None, None)
        .unwrap_or_else(|e| panic!("{:?}: {e}", s.args))
        .iter()
        .map(|s| s.fingerprint)
        .collect()
}

#[test]
fn fingerprint_table() {
    let base_files: &[(&str, &str)] = &[
        ("p/main.sql", "\\ir lib/a.sql\n\\copy t from 'd.csv'\n"),
        ("p/lib/a.sql", "\\ir b.sql\n"),
        ("p/lib/b.sql", "create table t(a int);\n"),
        ("p/d.csv", "1\n"),
    ];
    let base = Setup {
        files: base_files,
        cwd: "p",
        args: &["-f", "main.sql"],
    };
    let cases: &[(&str, Setup, bool)] = &[
        ("the same tree plans the same", Setup { ..base }, true),
        (
            "renaming the main file keeps the id",
            Setup {
                files: &[
                    ("p/renamed.sql", "\\ir lib/a.sql\n\\copy t from 'd.csv'\n"),
                    ("p/lib/a.sql", "\\ir b.sql\n"),
                    ("p/lib/b.sql", "create table t(a int);\n"),
                    ("p/d.csv", "1\n"),
                ],
                cwd: "p",
                args: &["-f", "renamed.sql"],
            },
            true,
        ),
        (
            "moving the whole tree keeps the id",
            Setup {
                files: &[
                    (
                        "elsewhere/deep/main.sql",
                        "\\ir lib/a.sql\n\\copy t from 'd.csv'\n",
                    ),
                    ("elsewhere/deep/lib/a.sql", "\\ir b.sql\n"),
                    ("elsewhere/deep/lib/b.sql", "create table t(a int);\n"),
                    ("elsewhere/deep/d.csv", "1\n"),
                ],
                cwd: "elsewhere/deep",
                args: &["-f", "main.sql"],
            },
            true,
        ),
        (
            "running from another cwd with the same files keeps the id",
            Setup {
                files: &[
                    ("p/main.sql", "\\ir lib/a.sql\n\\copy t from 'd.csv'\n"),
                    ("p/lib/a.sql", "\\ir b.sql\n"),
                    ("p/lib/b.sql", "create table t(a int);\n"),
                    ("d.csv", "1\n"),
                ],
                cwd: "",
                args: &["-f", "p/main.sql"],
            },
            true,
        ),
        (
            "editing a nested include changes the id",
            Setup {
                files: &[
                    ("p/main.sql", "\\ir lib/a.sql\n\\copy t from 'd.csv'\n"),
                    ("p/lib/a.sql", "\\ir b.sql\n"),
                    ("p/lib/b.sql", "create table t(a bigint);\n"),
                    ("p/d.csv", "1\n"),
                ],
                ..base
            },
            false,
        ),
        (
            "editing a data file changes the id",
            Setup {
                files: &[
                    ("p/main.sql", "\\ir lib/a.sql\n\\copy t from 'd.csv'\n"),
                    ("p/lib/a.sql", "\\ir b.sql\n"),
                    ("p/lib/b.sql", "create table t(a int);\n"),
                    ("p/d.csv", "2\n"),
                ],
                ..base
            },
            false,
        ),
        (
            "a whitespace edit of the main file changes the id",
            Setup {
                files: &[
                    ("p/main.sql", "\\ir lib/a.sql\n\n\\copy t from 'd.csv'\n"),
                    ("p/lib/a.sql", "\\ir b.sql\n"),
                    ("p/lib/b.sql", "create table t(a int);\n"),
                    ("p/d.csv", "1\n"),
                ],
                ..base
            },
            false,
        ),
        (
            "a variable changes the id, used or not",
            Setup {
                args: &["-v", "x=1", "-f", "main.sql"],
                ..base
            },
            false,
        ),
        (
            "-1 changes the id",
            Setup {
                args: &["-1", "-f", "main.sql"],
                ..base
            },
            false,
        ),
        (
            "ignored flags keep the id",
            Setup {
                args: &[
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "--echo-all",
                    "-f",
                    "main.sql",
                ],
                ..base
            },
            true,
        ),
    ];
    let want = fingerprints(&base);
    for (name, setup, same) in cases {
        let got = fingerprints(setup);
        assert_eq!(got == want, *same, "{name}");
    }
}

#[test]
fn fingerprint_pairs_table() {
    let f = |files: &'static [(&'static str, &'static str)], args: &'static [&'static str]| Setup {
        files,
        cwd: "",
        args,
    };
    let cases: &[(&str, Setup, Setup, bool)] = &[
        (
            "variables are sorted: their order does not matter",
            f(&[("a.sql", "")], &["-v", "a=1", "-v", "b=2", "-f", "a.sql"]),
            f(&[("a.sql", "")], &["-v", "b=2", "-v", "a=1", "-f", "a.sql"]),
            true,
        ),
        (
            "the last definition of a variable wins",
            f(&[("a.sql", "")], &["-v", "a=0", "-v", "a=1", "-f", "a.sql"]),
            f(&[("a.sql", "")], &["-v", "a=1", "-f", "a.sql"]),
            true,
        ),
        (
            "an included file's content counts, not its name",
            f(
                &[("m.sql", "\\i x.sql\n"), ("x.sql", "select 1;")],
                &["-f", "m.sql"],
            ),
            f(
                &[("m.sql", "\\i x.sql\n"), ("x.sql", "select 2;")],
                &["-f", "m.sql"],
            ),
            false,
        ),
        (
            "the same content through different paths is the same step",
            f(&[("a/m.sql", "select 1;")], &["-f", "a/m.sql"]),
            f(&[("b/c/n.sql", "select 1;")], &["-f", "b/c/n.sql"]),
            true,
        ),
        (
            "-f and -c of the same text are different steps",
            f(&[("m.sql", "select 1;")], &["-f", "m.sql"]),
            f(&[], &["-c", "select 1;"]),
            false,
        ),
        (
            "-c text counts",
            f(&[], &["-c", "select 1;"]),
            f(&[], &["-c", "select 2;"]),
            false,
        ),
        (
            "an interpolated include follows the variable",
            f(
                &[
                    ("m.sql", "\\i :v.sql\n"),
                    ("a.sql", "select 1;"),
                    ("b.sql", "select 2;"),
                ],
                &["-v", "v=a", "-f", "m.sql"],
            ),
            f(
                &[
                    ("m.sql", "\\i :v.sql\n"),
                    ("a.sql", "select 1;"),
                    ("b.sql", "select 1;"),
                ],
                &["-v", "v=a", "-f", "m.sql"],
            ),
            true,
        ),
    ];
    for (name, a, b, same) in cases {
        assert_eq!(fingerprints(a) == fingerprints(b), *same, "{name}");
    }
}

#[test]
fn steps_table() {
    let dir = tree(&[("p/schema.sql", "create table t(a int);\n")]);
    let long =
        "create table with_a_rather_long_name (id bigint primary key, payload text not null)";
    let steps = plan_in(
        dir.path(),
        "p",
        &[
            "-v",
            "b=2",
            "-1",
            "-f",
            "schema.sql",
            "-c",
            long,
            "-v",
            "a=1",
            "-f",
            "-",
        ],
        Some("select 1;\n"),
        None,
    )
    .unwrap();
    let summaries: Vec<&str> = steps.iter().map(|s| s.summary.as_str()).collect();
    assert_eq!(
        summaries,
        [
            "-f schema.sql",
            "-c create table with_a_rather_long_name (id bigint primary key…",
            "-f - (stdin)"
        ]
    );
    assert!(steps[1].summary.chars().count() <= 63);
    let vars = vec![
        ("a".to_owned(), "1".to_owned()),
        ("b".to_owned(), "2".to_owned()),
    ];
    for s in &steps {
        assert_eq!(s.vars, vars, "every step carries all variables");
        assert!(s.single_transaction, "every step carries -1");
        assert_eq!(s.cwd, dir.path().join("p"));
    }
    let schema = dir.path().join("p/schema.sql");
    assert_eq!(
        steps[0].kind,
        StepKind::File {
            path: schema.clone()
        }
    );
    assert_eq!(steps[0].user_file(), Some(schema.as_path()));
    assert_eq!(steps[1].kind, StepKind::Command { sql: long.into() });
    assert_eq!(steps[1].user_file(), None);
    assert_eq!(
        steps[2].kind,
        StepKind::Stdin {
            digest: Digest::of(b"select 1;\n")
        }
    );
    let distinct: std::collections::HashSet<_> = steps.iter().map(|s| s.fingerprint).collect();
    assert_eq!(distinct.len(), 3);
}

#[test]
fn errors_table() {
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a [&'a str],
        Option<&'a str>,
        &'a [&'a str],
        Option<(&'a str, u32)>,
    );
    let cases: &[Case] = &[
        (
            "missing include",
            &[("p/main.sql", "select 1;\n\\i lib/nope.sql\n")],
            &["-f", "main.sql"],
            None,
            &[
                "\\i lib/nope.sql",
                "p/lib/nope.sql: no such file",
                "relative to psql's working directory",
                "use \\ir",
            ],
            Some(("p/main.sql", 2)),
        ),
        (
            "missing \\ir in a nested include",
            &[
                ("p/main.sql", "\\ir sub/a.sql\n"),
                ("p/sub/a.sql", "\n\n\\ir nope.sql\n"),
            ],
            &["-f", "main.sql"],
            None,
            &[
                "\\ir nope.sql",
                "p/sub/nope.sql: no such file",
                "relative to the folder of the including file",
            ],
            Some(("p/sub/a.sql", 3)),
        ),
        (
            "include cycle",
            &[
                ("p/a.sql", "\\i b.sql\n"),
                ("p/b.sql", "select 1;\n\\ir a.sql\n"),
            ],
            &["-f", "a.sql"],
            None,
            &[
                "include cycle",
                "p/a.sql → ",
                "p/b.sql → ",
                "remove one of these includes",
            ],
            Some(("p/b.sql", 2)),
        ),
        (
            "self include",
            &[("p/a.sql", "\\ir ./a.sql\n")],
            &["-f", "a.sql"],
            None,
            &["include cycle"],
            Some(("p/a.sql", 1)),
        ),
        (
            "copy from program",
            &[("p/main.sql", "\\copy t from program 'zcat t.gz' csv\n")],
            &["-f", "main.sql"],
            None,
            &["from program", "write the data to a file"],
            Some(("p/main.sql", 1)),
        ),
        (
            "missing data file",
            &[("p/main.sql", "\n\\copy t from 'nope.csv' csv\n")],
            &["-f", "main.sql"],
            None,
            &[
                "\\copy nope.csv",
                "p/nope.csv: no such file",
                "relative to psql's working directory",
            ],
            Some(("p/main.sql", 2)),
        ),
        (
            "missing \\lo_import file",
            &[("p/main.sql", "\\lo_import blob.bin\n")],
            &["-f", "main.sql"],
            None,
            &["\\lo_import blob.bin", "no such file"],
            Some(("p/main.sql", 1)),
        ),
        (
            "bad \\copy",
            &[("p/main.sql", "\\copy t into 'x'\n")],
            &["-f", "main.sql"],
            None,
            &["\\copy t into 'x'", "parse error at \"into\""],
            Some(("p/main.sql", 1)),
        ),
        (
            "missing main file",
            &[],
            &["-f", "nope.sql"],
            None,
            &[
                "-f nope.sql: cannot read",
                "p/nope.sql: no such file",
                "relative paths start at",
            ],
            None,
        ),
        (
            "main file is a directory",
            &[("p/dir/x", "")],
            &["-f", "dir"],
            None,
            &["it is a directory"],
            None,
        ),
        (
            "include of a directory",
            &[("p/main.sql", "\\i dir\n"), ("p/dir/x", "")],
            &["-f", "main.sql"],
            None,
            &["it is a directory"],
            Some(("p/main.sql", 1)),
        ),
        (
            "stdin not sent",
            &[],
            &["-f", "-"],
            None,
            &["no stdin was sent"],
            None,
        ),
        (
            "stdin twice",
            &[],
            &["-f", "-", "-f", "-"],
            Some("x"),
            &["only once"],
            None,
        ),
        (
            "no steps",
            &[],
            &["-X", "-v", "a=1"],
            None,
            &["nothing to prepare"],
            None,
        ),
        (
            "connection flag",
            &[],
            &["-h", "db", "-f", "x"],
            None,
            &["remove -h"],
            None,
        ),
        (
            "include from stdin inside a script",
            &[("p/main.sql", "\\i -\n")],
            &["-f", "main.sql"],
            None,
            &["\\i -:"],
            Some(("p/main.sql", 1)),
        ),
        (
            "backquoted command",
            &[("p/main.sql", "\\i `pwd`/a.sql\n")],
            &["-f", "main.sql"],
            None,
            &["backquoted shell command"],
            Some(("p/main.sql", 1)),
        ),
        (
            "\\i without a file",
            &[("p/main.sql", "\\i\n")],
            &["-f", "main.sql"],
            None,
            &["\\i needs a file name"],
            Some(("p/main.sql", 1)),
        ),
        (
            "unterminated quote",
            &[("p/main.sql", "\\i 'a.sql\n")],
            &["-f", "main.sql"],
            None,
            &["unterminated quoted string"],
            Some(("p/main.sql", 1)),
        ),
        (
            "unknown variable in a path",
            &[("p/main.sql", "\\i :nope/a.sql\n")],
            &["-f", "main.sql"],
            None,
            &["\\i :nope/a.sql", "pass the value with -v NAME=VALUE"],
            Some(("p/main.sql", 1)),
        ),
        (
            "\\set ON_ERROR_STOP off",
            &[("p/main.sql", "select 1;\n\\set ON_ERROR_STOP off\n")],
            &["-f", "main.sql"],
            None,
            &["\\set ON_ERROR_STOP", "remove this line"],
            Some(("p/main.sql", 2)),
        ),
        (
            "\\unset ON_ERROR_STOP",
            &[("p/main.sql", "\\unset ON_ERROR_STOP\n")],
            &["-f", "main.sql"],
            None,
            &["\\unset ON_ERROR_STOP"],
            Some(("p/main.sql", 1)),
        ),
        (
            "missing include in -c",
            &[],
            &["-c", "\\i nope.sql"],
            None,
            &["<command>:1: \\i nope.sql"],
            Some(("<command>", 1)),
        ),
        (
            "missing include on stdin",
            &[],
            &["-f", "-"],
            Some("select 1;\n\\ir nope.sql\n"),
            &["<stdin>:2: \\ir nope.sql"],
            Some(("<stdin>", 2)),
        ),
        (
            "~user paths",
            &[("p/main.sql", "\\i ~nobody/a.sql\n")],
            &["-f", "main.sql"],
            None,
            &["~user paths are not supported"],
            Some(("p/main.sql", 1)),
        ),
    ];
    for (name, files, args, stdin, fragments, location) in cases {
        let dir = tree(files);
        let err = match plan_in(dir.path(), "p", args, *stdin, None) {
            Ok(steps) => panic!("{name}: planned {} steps", steps.len()),
            Err(e) => e,
        };
        let msg = err.to_string();
        for fragment in *fragments {
            assert!(msg.contains(fragment), "{name}: {msg:?} lacks {fragment:?}");
        }
        let got = err.location().map(|(f, l)| {
            let rel = f.strip_prefix(dir.path()).unwrap_or(f);
            (rel.display().to_string(), l)
        });
        let want = location.map(|(f, l)| (f.to_string(), l));
        assert_eq!(got, want, "{name}");
    }

    let args = strings(&["-f", "x.sql"]);
    let req = PsqlRequest {
        args: &args,
        cwd: Path::new("relative"),
        stdin: None,
    };
    assert!(matches!(
        plan_psql(&req, None),
        Err(PlanError::RelativeCwd(_))
    ));
}

#[test]
fn ingesting_stores_what_is_hashed() {
    let dir = tree(&[
        ("p/main.sql", "\\ir lib/a.sql\n\\copy t from 'd.csv'\n"),
        ("p/lib/a.sql", "select 1;\n"),
        ("p/d.csv", "1\n"),
    ]);
    let store = BlobStore::open(&dir.path().join("store/blobs")).unwrap();
    let args = ["-f", "main.sql", "-f", "-"];
    let stdin = Some("\\i lib/a.sql\n");
    let planned = plan_in(dir.path(), "p", &args, stdin, None).unwrap();
    let ingested = plan_in(dir.path(), "p", &args, stdin, Some(&store)).unwrap();
    assert_eq!(planned, ingested, "ingesting does not change the plan");
    for step in &ingested {
        for input in &step.inputs {
            let stored = fs::read(store.path_of(&input.digest)).unwrap();
            assert_eq!(
                stored,
                fs::read(&input.path).unwrap(),
                "{}",
                input.path.display()
            );
        }
    }
    let StepKind::Stdin { digest } = ingested[1].kind else {
        panic!("step 2 reads stdin");
    };
    assert_eq!(
        fs::read(store.path_of(&digest)).unwrap(),
        b"\\i lib/a.sql\n"
    );
}

#[test]
fn materialize_round_trip() {
    let dir = tree(&[
        (
            "home/u/proj/schema.sql",
            "\\ir sql/tables.sql\n\\copy t from 'seed/t.csv' csv\n",
        ),
        ("home/u/proj/sql/tables.sql", "create table t(a int);\n"),
        ("home/u/proj/seed/t.csv", "1\n"),
    ]);
    let store = BlobStore::open(&dir.path().join("store/blobs")).unwrap();
    let steps = plan_in(
        dir.path(),
        "home/u/proj",
        &["-v", "n=1", "-f", "schema.sql"],
        None,
        Some(&store),
    )
    .unwrap();
    let exec = dir.path().join("store/exec/J");
    let inv = store.materialize(&exec, &steps[0]).unwrap();
    let user_main = dir.path().join("home/u/proj/schema.sql");
    let mirrored_main = blobs::mirror_path(&exec, &user_main);
    assert_eq!(
        inv.args,
        [
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "n=1",
            "-f",
            mirrored_main.to_str().unwrap()
        ]
    );
    assert_eq!(
        inv.cwd,
        blobs::mirror_path(&exec, &dir.path().join("home/u/proj"))
    );
    for rel in ["schema.sql", "sql/tables.sql", "seed/t.csv"] {
        let user = dir.path().join("home/u/proj").join(rel);
        let mirrored = inv.cwd.join(rel);
        assert_eq!(
            fs::read(&mirrored).unwrap(),
            fs::read(&user).unwrap(),
            "{rel}"
        );
    }

    let included = blobs::mirror_path(&exec, &dir.path().join("home/u/proj/sql/tables.sql"));
    let stderr = format!(
        "psql:{}:1: ERROR:  relation \"t\" already exists\n",
        included.display()
    );
    let located = blobs::parse_psql_error(&exec, &stderr).unwrap();
    assert_eq!(
        located.file,
        dir.path()
            .join("home/u/proj/sql/tables.sql")
            .display()
            .to_string()
    );
    assert_eq!(located.line, 1);
    assert_eq!(located.message, "relation \"t\" already exists");
    assert_eq!(
        blobs::user_path(&exec, mirrored_main.to_str().unwrap()),
        user_main.display().to_string()
    );
}

fn dataset(rel: &str) -> PathBuf {
    let path = Path::new("/work/shared/datasets").join(rel);
    assert!(
        path.exists(),
        "{} is missing: the sample datasets (see ../shared/datasets/README) must be present for this test",
        path.display()
    );
    path
}

#[test]
fn tpch_load_reads_eight_data_files() {
    let root = dataset("tpch-sf0.01");
    let args = strings(&["-f", "schema.sql", "-f", "load.sql"]);
    let req = PsqlRequest {
        args: &args,
        cwd: &root,
        stdin: None,
    };
    let steps = plan_psql(&req, None).unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].inputs.len(), 1);
    let data: Vec<String> = steps[1]
        .inputs
        .iter()
        .filter(|i| i.role == InputRole::Data)
        .map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        data,
        [
            "region.csv",
            "nation.csv",
            "part.csv",
            "supplier.csv",
            "partsupp.csv",
            "customer.csv",
            "orders.csv",
            "lineitem.csv"
        ]
    );
    assert_eq!(steps[1].inputs[0].role, InputRole::Main);
    assert_eq!(steps[1].inputs.len(), 9);
}

#[test]
fn chinook_plans_fast_without_spurious_directives() {
    let root = dataset("chinook");
    let args = strings(&["-f", "chinook.sql"]);
    let req = PsqlRequest {
        args: &args,
        cwd: &root,
        stdin: None,
    };
    let started = Instant::now();
    let steps = plan_psql(&req, None).unwrap();
    let took = started.elapsed();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].inputs.len(), 1, "{:?}", steps[0].inputs);
    assert!(
        took < Duration::from_secs(5),
        "planning chinook took {took:?}"
    );
}

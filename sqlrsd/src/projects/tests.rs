//! Pure logic of the workspace watcher: settings, the walk, what events
//! mean, alias and file status, plan errors.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use notify::event::{
    AccessKind, AccessMode, CreateKind, DataChange, EventKind, MetadataKind, ModifyKind,
    RemoveKind, RenameMode,
};

use super::alias::{Alias, Build, Failure, Outcome};
use super::config::ProjectConfig;
use super::project::plan_failure;
use super::walk;
use super::watcher::{Change, classify};
use crate::engine::EngineError;
use crate::model::{JobFailure, PlanStepView, PlanView};
use crate::planner::{DirectiveProblem, PlanError};

#[test]
fn settings_parse_table() {
    let cases: &[(&str, Result<bool, &str>)] = &[
        ("", Ok(true)),
        ("# nothing\n", Ok(true)),
        ("prebuild: false\n", Ok(false)),
        ("prebuild: true\n", Ok(true)),
        (
            "prebuild: nope\n",
            Err("config.yaml:1:11: prebuild: invalid type"),
        ),
        (
            "\nprebuld: false\n",
            Err("config.yaml:2:1: unknown field `prebuld`"),
        ),
    ];
    let path = Path::new("/ws/.sqlrs/config.yaml");
    for (text, want) in cases {
        let got = ProjectConfig::parse(path, text)
            .map(|c| c.prebuild)
            .map_err(|e| e.to_string());
        match (want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g, "{text:?}"),
            (Err(w), Err(g)) => {
                assert!(g.contains(w), "{text:?}: {g}");
                assert!(g.contains("`prebuild: true|false`"), "{g}");
            }
            _ => panic!("{text:?}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn skipped_folders_table() {
    let cases = [
        (".git", true),
        ("node_modules", true),
        ("target", true),
        (".cache", true),
        (".sqlrs", false),
        ("db", false),
        ("targets", false),
    ];
    for (name, skipped) in cases {
        assert_eq!(walk::skipped_folder(name.as_ref()), skipped, "{name}");
    }
}

#[test]
fn walk_finds_prepare_aliases_of_this_workspace_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let files = [
        ".sqlrs/.gitignore",
        "a.prep.s9s.yaml",
        "q.run.s9s.yaml",
        "sub/deeper/b.prep.s9s.yaml",
        "node_modules/x.prep.s9s.yaml",
        "target/x.prep.s9s.yaml",
        ".git/x.prep.s9s.yaml",
        ".hidden/x.prep.s9s.yaml",
        "inner/.sqlrs/.gitignore",
        "inner/x.prep.s9s.yaml",
    ];
    for f in files {
        let path = root.join(f);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "kind: psql\nargs: [-c, select 1]\n").unwrap();
    }
    symlink(root.join("sub"), root.join("linked")).unwrap();
    symlink(root.join("a.prep.s9s.yaml"), root.join("l.prep.s9s.yaml")).unwrap();
    let mut visited = Vec::new();
    let found = walk::walk(root, &mut |d| visited.push(d.to_owned()));
    let rel = |v: &[PathBuf]| -> Vec<String> {
        v.iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect()
    };
    assert_eq!(rel(&found.folders), ["", ".sqlrs", "sub", "sub/deeper"]);
    assert_eq!(
        rel(&found.aliases),
        [
            "a.prep.s9s.yaml",
            "l.prep.s9s.yaml",
            "sub/deeper/b.prep.s9s.yaml"
        ]
    );
    visited.sort();
    assert_eq!(visited, found.folders);
}

#[test]
fn event_meaning_table() {
    let cases = [
        (EventKind::Create(CreateKind::File), Some(Change::Appeared)),
        (
            EventKind::Create(CreateKind::Folder),
            Some(Change::Appeared),
        ),
        (EventKind::Remove(RemoveKind::File), Some(Change::Vanished)),
        (
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            Some(Change::Written),
        ),
        (
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            Some(Change::Written),
        ),
        (
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            Some(Change::Vanished),
        ),
        (
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            Some(Change::Appeared),
        ),
        (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), None),
        (
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            None,
        ),
        (EventKind::Access(AccessKind::Open(AccessMode::Any)), None),
        (EventKind::Access(AccessKind::Close(AccessMode::Read)), None),
    ];
    for (kind, want) in cases {
        assert_eq!(classify(&notify::Event::new(kind)), want, "{kind:?}");
    }
    let overflow = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
    assert_eq!(classify(&overflow), Some(Change::Rescan));
}

fn plan(cached: &[bool]) -> PlanView {
    let inputs: [&[&str]; 3] = [
        &["/w/a.sql"],
        &["/w/b.sql", "/w/inc.sql"],
        &["/w/c.sql", "/w/inc.sql"],
    ];
    PlanView {
        base_id: "base".into(),
        engine: "native".into(),
        steps: cached
            .iter()
            .enumerate()
            .map(|(i, &cached)| PlanStepView {
                index: i as u32 + 1,
                state_id: format!("s{}", i + 1),
                summary: String::new(),
                cached,
                inputs: inputs[i].iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
    }
}

fn failure(step: Option<u32>, file: &str) -> JobFailure {
    JobFailure {
        reason: "sql_error".into(),
        message: "boom".into(),
        file: Some(file.into()),
        line: Some(3),
        step,
    }
}

/// What a view shows, in short: status, step, total, job, and each file
/// as `name:status:step`.
fn summary(a: &Alias) -> (String, u32, u32, String, bool, Vec<String>) {
    let v = a.view();
    assert_eq!(v.name, "app");
    let files = v
        .files
        .iter()
        .map(|f| {
            let name = Path::new(&f.path).file_name().unwrap().to_string_lossy();
            format!("{name}:{}:{}", f.status, f.step)
        })
        .collect();
    (
        v.status,
        v.step,
        v.total,
        v.job_id,
        v.error.is_some(),
        files,
    )
}

#[test]
fn alias_and_file_status_table() {
    let alias = |cached: &[bool]| {
        Alias::new(
            "/w/app.prep.s9s.yaml".into(),
            Outcome::Planned(plan(cached)),
        )
    };
    let build = |step| Build {
        job_id: "job1".into(),
        head: "s3".into(),
        step,
    };
    type Want<'a> = (&'a str, u32, u32, &'a str, bool, &'a [&'a str]);
    let cases: Vec<(&str, Alias, Want)> = vec![
        (
            "all cached",
            alias(&[true, true, true]),
            (
                "cached",
                0,
                3,
                "",
                false,
                &[
                    "a.sql:cached:1",
                    "b.sql:cached:2",
                    "inc.sql:cached:3",
                    "c.sql:cached:3",
                ],
            ),
        ),
        (
            "last step changed",
            alias(&[true, true, false]),
            (
                "stale",
                0,
                3,
                "",
                false,
                &[
                    "a.sql:cached:1",
                    "b.sql:cached:2",
                    "inc.sql:stale:3",
                    "c.sql:stale:3",
                ],
            ),
        ),
        (
            "queued prebuild",
            Alias {
                build: Some(build(0)),
                ..alias(&[true, false, false])
            },
            (
                "building",
                0,
                3,
                "job1",
                false,
                &[
                    "a.sql:cached:1",
                    "b.sql:building:2",
                    "inc.sql:building:3",
                    "c.sql:building:3",
                ],
            ),
        ),
        (
            "prebuild at step 3, step 2 built",
            Alias {
                build: Some(build(3)),
                built: ["s2".to_string()].into(),
                ..alias(&[true, false, false])
            },
            (
                "building",
                3,
                3,
                "job1",
                false,
                &[
                    "a.sql:cached:1",
                    "b.sql:cached:2",
                    "inc.sql:building:3",
                    "c.sql:building:3",
                ],
            ),
        ),
        (
            "step 2 failed",
            Alias {
                failure: Some(Failure {
                    job_id: "job1".into(),
                    head: "s3".into(),
                    failure: failure(Some(2), "/w/inc.sql"),
                }),
                ..alias(&[true, false, false])
            },
            (
                "failed",
                2,
                3,
                "job1",
                true,
                &[
                    "a.sql:cached:1",
                    "b.sql:failed:2",
                    "inc.sql:failed:2",
                    "c.sql:stale:3",
                ],
            ),
        ),
        (
            "an edit of b.sql not planned yet",
            Alias {
                stale_from: Some(1),
                ..alias(&[true, true, true])
            },
            (
                "stale",
                0,
                3,
                "",
                false,
                &[
                    "a.sql:cached:1",
                    "b.sql:stale:2",
                    "inc.sql:stale:3",
                    "c.sql:stale:3",
                ],
            ),
        ),
        (
            "an edit during a prebuild",
            Alias {
                stale_from: Some(2),
                build: Some(build(2)),
                ..alias(&[true, false, false])
            },
            (
                "stale",
                0,
                3,
                "job1",
                false,
                &[
                    "a.sql:cached:1",
                    "b.sql:building:2",
                    "inc.sql:stale:3",
                    "c.sql:stale:3",
                ],
            ),
        ),
        (
            "cannot plan",
            Alias::new(
                "/w/app.prep.s9s.yaml".into(),
                Outcome::Invalid(failure(None, "/w/b.sql")),
            ),
            ("invalid", 0, 0, "", true, &["b.sql:failed:0"]),
        ),
    ];
    for (what, alias, (status, step, total, job, error, files)) in cases {
        let got = summary(&alias);
        let want = (
            status.to_string(),
            step,
            total,
            job.to_string(),
            error,
            files.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn plan_errors_name_the_file_line_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let alias = dir.path().join("app.prep.s9s.yaml");
    std::fs::write(&alias, "kind: psql\nargs: [-f\n").unwrap();
    let yaml_error = sqlrs_proto::alias::load(&alias).unwrap_err().to_string();
    let missing = PathBuf::from("/w/missing.sql");
    // The error, then the reason, file, line and the extra files watched.
    type Case = (
        EngineError,
        &'static str,
        Option<String>,
        Option<u32>,
        Vec<PathBuf>,
    );
    let cases: Vec<Case> = vec![
        (
            EngineError::Plan(PlanError::MainFile {
                arg: "missing.sql".into(),
                path: missing.clone(),
                cwd: "/w".into(),
                reason: "No such file or directory".into(),
            }),
            "plan_error",
            Some("/w/missing.sql".into()),
            None,
            vec![missing.clone()],
        ),
        (
            EngineError::Plan(PlanError::Directive {
                file: "/w/schema.sql".into(),
                line: 7,
                problem: Box::new(DirectiveProblem::Unreadable {
                    directive: "i".into(),
                    arg: "missing.sql".into(),
                    path: missing.clone(),
                    reason: "No such file or directory".into(),
                    hint: String::new(),
                }),
            }),
            "plan_error",
            Some("/w/schema.sql".into()),
            Some(7),
            vec![missing.clone()],
        ),
        (
            EngineError::InvalidRequest(yaml_error),
            "invalid_request",
            Some(alias.display().to_string()),
            Some(3),
            vec![],
        ),
        (
            EngineError::InvalidRequest("working directory x is not absolute".into()),
            "invalid_request",
            None,
            None,
            vec![],
        ),
    ];
    for (e, reason, file, line, watched) in cases {
        let message = e.to_string();
        let (f, also) = plan_failure(&e, &alias);
        assert_eq!(
            (
                f.reason.as_str(),
                f.message.as_str(),
                f.file,
                f.line,
                f.step,
                also
            ),
            (reason, message.as_str(), file, line, None, watched),
            "{message}"
        );
    }
}

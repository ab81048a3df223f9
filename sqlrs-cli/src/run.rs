//! `run:psql`, `run NAME` and the composite `prepare … run …`: running the
//! host's psql (or pgbench) against an instance with the user's terminal.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use anyhow::Context;
use sqlrs_proto::alias::{self, AliasRole};
use sqlrs_proto::pb::{DeleteRequest, InstanceRef};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::Ctx;
use crate::daemon;
use crate::error::{exit, reply};
use crate::job::{self, Outcome};
use crate::prepare::{self, Source};
use crate::render;

/// What to run against an instance.
#[derive(Debug, Clone)]
pub enum Target {
    /// psql arguments given on the command line, run from the current directory.
    Psql(Vec<String>),
    /// The name (or path) of a `NAME.run.s9s.yaml` alias file.
    Alias(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Psql,
    Pgbench,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Psql => "psql",
            Tool::Pgbench => "pgbench",
        }
    }

    /// The variable that overrides the binary found on PATH.
    fn env(self) -> &'static str {
        match self {
            Tool::Psql => "SQLRS_PSQL",
            Tool::Pgbench => "SQLRS_PGBENCH",
        }
    }
}

/// A resolved target: the tool, its arguments and where it runs.
#[derive(Debug, PartialEq, Eq)]
struct Invocation {
    tool: Tool,
    /// The binary: `$SQLRS_PSQL` / `$SQLRS_PGBENCH`, else the tool's name on PATH.
    program: OsString,
    args: Vec<String>,
    /// None: the current directory.
    cwd: Option<PathBuf>,
}

impl Invocation {
    /// Resolves `target` as seen from `cwd` (alias files are searched from there).
    fn resolve(target: &Target, cwd: &Path) -> anyhow::Result<Self> {
        let (tool, args, dir) = match target {
            Target::Psql(args) => (Tool::Psql, args.clone(), None),
            Target::Alias(name) => {
                let path = alias::find(cwd, name, AliasRole::Run)?;
                let alias = alias::load(&path)?;
                let tool = if alias.kind == "pgbench" {
                    Tool::Pgbench
                } else {
                    Tool::Psql
                };
                (tool, alias.args, path.parent().map(PathBuf::from))
            }
        };
        let program = std::env::var_os(tool.env()).unwrap_or_else(|| tool.name().into());
        Ok(Invocation {
            tool,
            program,
            args,
            cwd: dir,
        })
    }

    /// The command line: psql takes the DSN first, pgbench as its final database argument.
    fn argv(&self, dsn: &str) -> Vec<String> {
        let dsn = dsn.to_owned();
        match self.tool {
            Tool::Psql => std::iter::once(dsn)
                .chain(self.args.iter().cloned())
                .collect(),
            Tool::Pgbench => self
                .args
                .iter()
                .cloned()
                .chain(std::iter::once(dsn))
                .collect(),
        }
    }

    /// Runs the tool with the user's stdio and returns its exit code.
    async fn run(&self, dsn: &str) -> anyhow::Result<u8> {
        let mut command = tokio::process::Command::new(&self.program);
        command.args(self.argv(dsn));
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        // Ctrl-C belongs to the tool (psql cancels its query); sqlrs stays to clean up.
        let _interrupts = signal(SignalKind::interrupt())?;
        let program = Path::new(&self.program).display();
        let status = command.status().await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "cannot run {program}: not found; install the PostgreSQL client or set {} to its path",
                    self.tool.env()
                )
            } else {
                anyhow::anyhow!("cannot run {program}: {e}")
            }
        })?;
        Ok(exit_code(status))
    }
}

fn current_dir() -> anyhow::Result<PathBuf> {
    std::env::current_dir().context("cannot read the current directory")
}

/// The tool's exit code; 128 + the signal when a signal ended it (as shells do).
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        (None, None) => exit::ERROR,
    }
}

/// `run:psql --instance X` / `run NAME --instance X`.
pub async fn run(target: &Target, instance: &str) -> anyhow::Result<u8> {
    let invocation = Invocation::resolve(target, &current_dir()?)?;
    let mut conn = daemon::connect(true).await?;
    let instance = reply(
        conn.client
            .get_instance(InstanceRef {
                id: instance.to_owned(),
            })
            .await,
    )?;
    invocation.run(&instance.dsn).await
}

/// `prepare … run …`: prepare, run against the new instance, delete it, and
/// exit with the tool's code.
pub async fn composite(ctx: Ctx, source: &Source, target: &Target) -> anyhow::Result<u8> {
    // A missing or broken run alias fails before the prepare, not after.
    let invocation = Invocation::resolve(target, &current_dir()?)?;
    let mut conn = daemon::connect(true).await?;
    let outcome = prepare::start(&mut conn.client, ctx, source).await?;
    let Outcome::Succeeded { instance, .. } = &outcome else {
        return job::report(ctx, &outcome);
    };
    ctx.progress(format_args!(
        "running {} against instance {}",
        invocation.tool.name(),
        render::short(&instance.id, render::SHORT_ID)
    ));
    let ran = invocation.run(&instance.dsn).await;
    let delete = DeleteRequest {
        id: instance.id.clone(),
        recurse: false,
        force: true,
        dry_run: false,
    };
    let deleted = reply(conn.client.delete_instance(delete).await);
    match (ran, deleted) {
        (Ok(code), Ok(_)) => {
            ctx.progress(format_args!(
                "removed instance {}",
                render::short(&instance.id, render::SHORT_ID)
            ));
            Ok(code)
        }
        (Ok(code), Err(e)) => {
            eprintln!(
                "error: cannot remove instance {}: {e}; remove it with `sqlrs rm {}`",
                instance.id,
                render::short(&instance.id, render::SHORT_ID)
            );
            Ok(if code == exit::OK { exit::ERROR } else { code })
        }
        (Err(e), _) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let dsn = "postgres://sqlrs:pw@127.0.0.1:5433/postgres";
        let args = vec!["-c".to_owned(), "select 1".to_owned()];
        let psql = Invocation {
            tool: Tool::Psql,
            program: "psql".into(),
            args: args.clone(),
            cwd: None,
        };
        assert_eq!(psql.argv(dsn), [dsn, "-c", "select 1"]);
        let bench = Invocation {
            tool: Tool::Pgbench,
            program: "pgbench".into(),
            args,
            cwd: None,
        };
        assert_eq!(bench.argv(dsn), ["-c", "select 1", dsn]);
    }

    #[test]
    fn aliases_run_in_their_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(
            dir.join("q.run.s9s.yaml"),
            "kind: psql\nargs: [-f, q.sql]\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("b.run.s9s.yaml"),
            "kind: pgbench\nargs: [-T, '5']\n",
        )
        .unwrap();
        let cases = [
            (
                Target::Psql(vec!["-f".into(), "x.sql".into()]),
                dir.join("sub"),
                Tool::Psql,
                None,
            ),
            (
                Target::Alias("q".into()),
                dir.to_owned(),
                Tool::Psql,
                Some(dir.to_owned()),
            ),
            (
                Target::Alias("b".into()),
                dir.to_owned(),
                Tool::Pgbench,
                Some(dir.to_owned()),
            ),
        ];
        for (target, cwd, tool, run_in) in cases {
            let got = Invocation::resolve(&target, &cwd).unwrap();
            assert_eq!((got.tool, got.cwd), (tool, run_in), "{target:?}");
        }
        let err = Invocation::resolve(&Target::Alias("q".into()), &dir.join("sub")).unwrap_err();
        assert!(err.to_string().contains("q.run.s9s.yaml"), "{err}");
    }

    #[test]
    fn exit_codes() {
        let cases = [
            (ExitStatus::from_raw(0), 0),
            (ExitStatus::from_raw(3 << 8), 3),
            (ExitStatus::from_raw(2), 130),
            (ExitStatus::from_raw(9), 137),
        ];
        for (status, want) in cases {
            assert_eq!(exit_code(status), want, "{status:?}");
        }
    }

    #[tokio::test]
    async fn runs_the_tool_in_its_folder_and_forwards_its_code() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("marker"), "").unwrap();
        // pgbench order puts the DSN last: `sh -c SCRIPT DSN` (the DSN becomes $0).
        let sh = |script: &str, cwd: Option<PathBuf>| Invocation {
            tool: Tool::Pgbench,
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd,
        };
        let cases = [
            (sh("exit 7", None), 7),
            (
                sh(
                    "[ -f marker ] && [ \"$0\" = dsn ] && exit 5",
                    Some(tmp.path().to_owned()),
                ),
                5,
            ),
            (sh("kill -TERM $$", None), 128 + 15),
        ];
        for (invocation, want) in cases {
            assert_eq!(invocation.run("dsn").await.unwrap(), want, "{invocation:?}");
        }
        let missing = Invocation {
            program: "/nonexistent/psql".into(),
            ..sh("", None)
        };
        let err = missing.run("dsn").await.unwrap_err().to_string();
        assert!(err.contains("set SQLRS_PGBENCH"), "{err}");
    }
}

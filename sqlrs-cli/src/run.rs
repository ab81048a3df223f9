//! `run:psql`, `run:pgbench`, `run NAME` and the composite `prepare … run …`:
//! running psql (or pgbench) against an instance: the host's binary with the
//! user's terminal for native instances, inside the instance's container
//! (sqlrsd's Exec, output streamed back) for Docker ones.

use std::ffi::OsString;
use std::future::Future;
use std::io::{IsTerminal, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use anyhow::Context;
use sqlrs_proto::alias::{self, AliasRole};
use sqlrs_proto::client::Client;
use sqlrs_proto::pb::exec_output::Output;
use sqlrs_proto::pb::{DeleteRequest, ExecOutput, ExecRequest, Instance, InstanceRef};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::{Stream, StreamExt};

use crate::argv::{StdinUse, psql_stdin};
use crate::cli::Ctx;
use crate::daemon;
use crate::error::{CliError, exit, reply};
use crate::job::{self, Outcome};
use crate::prepare::{self, Spec};
use crate::render;

/// The runtime name sqlrsd gives instances whose server runs in a container.
const DOCKER_RUNTIME: &str = "docker";

/// What to run against an instance.
#[derive(Debug, Clone)]
pub enum Target {
    /// psql arguments given on the command line, run from the current directory.
    Psql(Vec<String>),
    /// pgbench arguments given on the command line, run from the current directory.
    Pgbench(Vec<String>),
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

    /// The variable that overrides the host binary found on PATH.
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
    /// The host binary: `$SQLRS_PSQL` / `$SQLRS_PGBENCH`, else the tool's name on PATH.
    program: OsString,
    args: Vec<String>,
    /// Absolute: the current directory, or the alias file's folder.
    cwd: PathBuf,
}

impl Invocation {
    /// Resolves `target` as seen from `cwd` (alias files are searched from there).
    fn resolve(target: &Target, cwd: &Path) -> anyhow::Result<Self> {
        let (tool, args, dir) = match target {
            Target::Psql(args) => (Tool::Psql, args.clone(), cwd.to_owned()),
            Target::Pgbench(args) => (Tool::Pgbench, args.clone(), cwd.to_owned()),
            Target::Alias(name) => {
                let path = alias::find(cwd, name, AliasRole::Run)?;
                let alias = alias::load(&path)?;
                let tool = if alias.kind == "pgbench" {
                    Tool::Pgbench
                } else {
                    Tool::Psql
                };
                let dir = path.parent().map_or_else(|| cwd.to_owned(), PathBuf::from);
                (tool, alias.args, dir)
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

    /// Runs the tool against `instance` the way its runtime allows; returns its exit code.
    async fn run_on(&self, client: &mut Client, instance: &Instance) -> anyhow::Result<u8> {
        if instance.runtime == DOCKER_RUNTIME {
            let stdin = self.exec_stdin(std::io::stdin().is_terminal(), &instance.id)?;
            self.exec(client, &instance.id, stdin).await
        } else {
            self.run(&instance.dsn).await
        }
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

    /// Runs the host tool with the user's stdio and returns its exit code.
    async fn run(&self, dsn: &str) -> anyhow::Result<u8> {
        let mut command = tokio::process::Command::new(&self.program);
        command.args(self.argv(dsn)).current_dir(&self.cwd);
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

    /// Whether a run inside a container gets this process's stdin: psql gets
    /// it as a script (see [`psql_stdin`]), pgbench never. An interactive
    /// psql is refused: the container has no terminal.
    fn exec_stdin(&self, stdin_is_terminal: bool, instance_id: &str) -> Result<bool, CliError> {
        match self.tool {
            Tool::Pgbench => Ok(false),
            Tool::Psql => match psql_stdin(&self.args, stdin_is_terminal) {
                StdinUse::Ignored => Ok(false),
                StdinUse::Script => Ok(true),
                StdinUse::Interactive => Err(CliError::Usage(format!(
                    "instance {} runs in Docker, where psql has no terminal: give it -c SQL or -f FILE, \
                     pipe a script into sqlrs (`… < script.sql`), or connect a host psql to the \
                     instance's DSN (`sqlrs ls` shows it)",
                    render::short(instance_id, render::SHORT_ID)
                ))),
            },
        }
    }

    /// Runs the tool inside a Docker instance's container through sqlrsd,
    /// with all of stdin when `with_stdin`; output is written as it comes,
    /// Ctrl-C stops the run (exit 130).
    async fn exec(
        &self,
        client: &mut Client,
        instance_id: &str,
        with_stdin: bool,
    ) -> anyhow::Result<u8> {
        let mut stdin = Vec::new();
        if with_stdin {
            std::io::stdin()
                .read_to_end(&mut stdin)
                .with_context(|| format!("cannot read {}'s script from stdin", self.tool.name()))?;
        }
        let request = ExecRequest {
            instance_id: instance_id.to_owned(),
            tool: self.tool.name().to_owned(),
            args: self.args.clone(),
            cwd: self.cwd.to_string_lossy().into_owned(),
            stdin,
        };
        // Listening before the call: a Ctrl-C from now on ends the run, not sqlrs.
        let mut interrupts = signal(SignalKind::interrupt())?;
        let stream = reply(client.exec(request).await)?;
        let interrupted = async {
            interrupts.recv().await;
        };
        forward(
            self.tool,
            stream,
            interrupted,
            &mut tokio::io::stdout(),
            &mut tokio::io::stderr(),
        )
        .await
    }
}

/// Writes an Exec run's output as it arrives and returns the tool's exit
/// code; when `interrupted` completes first, drops the stream (sqlrsd then
/// stops the run) and returns 130.
async fn forward(
    tool: Tool,
    stream: impl Stream<Item = Result<ExecOutput, tonic::Status>>,
    interrupted: impl Future<Output = ()>,
    stdout: &mut (impl AsyncWrite + Unpin),
    stderr: &mut (impl AsyncWrite + Unpin),
) -> anyhow::Result<u8> {
    let name = tool.name();
    tokio::pin!(stream, interrupted);
    loop {
        let message = tokio::select! {
            // A Ctrl-C wins over output that is already waiting.
            biased;
            () = &mut interrupted => return Ok(exit::CANCELLED),
            message = stream.next() => message,
        };
        let output = match message {
            Some(Ok(ExecOutput { output })) => output,
            Some(Err(status)) => return Err(CliError::Daemon(status).into()),
            None => anyhow::bail!(
                "sqlrsd ended the {name} run without its exit code; `sqlrs status` shows whether the daemon is still up"
            ),
        };
        let (out, chunk) = match output {
            Some(Output::Stdout(chunk)) => (&mut *stdout as &mut (dyn AsyncWrite + Unpin), chunk),
            Some(Output::Stderr(chunk)) => (&mut *stderr as &mut (dyn AsyncWrite + Unpin), chunk),
            Some(Output::ExitCode(code)) => return Ok(u8::try_from(code).unwrap_or(exit::ERROR)),
            None => continue,
        };
        out.write_all(&chunk)
            .await
            .with_context(|| format!("cannot write {name}'s output"))?;
        out.flush()
            .await
            .with_context(|| format!("cannot write {name}'s output"))?;
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

/// Where the tool runs, for progress lines.
fn runs_where(instance: &Instance) -> String {
    let id = render::short(&instance.id, render::SHORT_ID);
    if instance.runtime == DOCKER_RUNTIME {
        format!("in the container of instance {id}")
    } else {
        format!("against instance {id}")
    }
}

/// `run:psql --instance X` / `run:pgbench --instance X` / `run NAME --instance X`.
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
    invocation.run_on(&mut conn.client, &instance).await
}

/// `prepare … run …`: prepare, run against the new instance, delete it, and
/// exit with the tool's code.
pub async fn composite(ctx: Ctx, spec: &Spec, target: &Target) -> anyhow::Result<u8> {
    // A missing or broken run alias fails before the prepare, not after.
    let invocation = Invocation::resolve(target, &current_dir()?)?;
    let mut conn = daemon::connect(true).await?;
    let outcome = prepare::start(&mut conn.client, ctx, spec).await?;
    let Outcome::Succeeded { instance, .. } = &outcome else {
        return job::report(ctx, &outcome);
    };
    ctx.progress(format_args!(
        "running {} {}",
        invocation.tool.name(),
        runs_where(instance)
    ));
    let ran = invocation.run_on(&mut conn.client, instance).await;
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
            cwd: "/".into(),
        };
        assert_eq!(psql.argv(dsn), [dsn, "-c", "select 1"]);
        let bench = Invocation {
            tool: Tool::Pgbench,
            program: "pgbench".into(),
            args,
            cwd: "/".into(),
        };
        assert_eq!(bench.argv(dsn), ["-c", "select 1", dsn]);
    }

    #[test]
    fn aliases_run_in_their_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir(dir.join("sub")).unwrap();
        // A workspace: aliases are found from its subfolders.
        std::fs::create_dir(dir.join(".sqlrs")).unwrap();
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
                dir.join("sub"),
            ),
            (
                Target::Pgbench(vec!["-T".into(), "5".into()]),
                dir.join("sub"),
                Tool::Pgbench,
                dir.join("sub"),
            ),
            (
                Target::Alias("q".into()),
                dir.join("sub"),
                Tool::Psql,
                dir.to_owned(),
            ),
            (
                Target::Alias("b".into()),
                dir.to_owned(),
                Tool::Pgbench,
                dir.to_owned(),
            ),
        ];
        for (target, cwd, tool, run_in) in cases {
            let got = Invocation::resolve(&target, &cwd).unwrap();
            assert_eq!((got.tool, got.cwd), (tool, run_in), "{target:?}");
        }
        let err = Invocation::resolve(&Target::Alias("nope".into()), &dir.join("sub")).unwrap_err();
        assert!(err.to_string().contains("nope.run.s9s.yaml"), "{err}");
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
        let sh = |script: &str, cwd: PathBuf| Invocation {
            tool: Tool::Pgbench,
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd,
        };
        let cases = [
            (sh("exit 7", "/".into()), 7),
            (
                sh(
                    "[ -f marker ] && [ \"$0\" = dsn ] && exit 5",
                    tmp.path().to_owned(),
                ),
                5,
            ),
            (sh("kill -TERM $$", "/".into()), 128 + 15),
        ];
        for (invocation, want) in cases {
            assert_eq!(invocation.run("dsn").await.unwrap(), want, "{invocation:?}");
        }
        let missing = Invocation {
            program: "/nonexistent/psql".into(),
            ..sh("", "/".into())
        };
        let err = missing.run("dsn").await.unwrap_err().to_string();
        assert!(err.contains("set SQLRS_PGBENCH"), "{err}");
    }

    fn invocation(tool: Tool, args: &str) -> Invocation {
        Invocation {
            tool,
            program: tool.name().into(),
            args: args.split_whitespace().map(String::from).collect(),
            cwd: "/".into(),
        }
    }

    #[test]
    fn stdin_sent_into_containers() {
        // (tool, args, stdin is a terminal, sent?; None: refused)
        let cases = [
            (Tool::Psql, "-f q.sql", false, Some(false)),
            (Tool::Psql, "-c select", true, Some(false)),
            (Tool::Psql, "-f -", false, Some(true)),
            (Tool::Psql, "-f -", true, Some(true)),
            (Tool::Psql, "-f a.sql -f -", false, Some(true)),
            (Tool::Psql, "-X -v x=1", false, Some(true)),
            (Tool::Psql, "-X -v x=1", true, None),
            (Tool::Psql, "", true, None),
            (Tool::Pgbench, "-c 4 -T 10", false, Some(false)),
            (Tool::Pgbench, "", true, Some(false)),
        ];
        for (tool, args, terminal, want) in cases {
            let got = invocation(tool, args).exec_stdin(terminal, "0123456789abcdef");
            match (got, want) {
                (Ok(sent), Some(want)) => assert_eq!(sent, want, "{tool:?} {args:?} {terminal}"),
                (Err(e), None) => {
                    assert_eq!(e.exit_code(), exit::USAGE);
                    let text = e.to_string();
                    assert!(
                        text.contains("instance 0123456789ab runs in Docker")
                            && text.contains("-c SQL or -f FILE"),
                        "{text}"
                    );
                }
                (got, want) => panic!("{tool:?} {args:?} {terminal}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// One message of an Exec stream.
    type Message = Result<ExecOutput, tonic::Status>;

    fn out(output: Output) -> Message {
        Ok(ExecOutput {
            output: Some(output),
        })
    }

    /// An Exec stream and what forwarding it must produce.
    struct ForwardCase {
        messages: Vec<Message>,
        interrupted: bool,
        stdout: &'static str,
        stderr: &'static str,
        /// The exit code, or text the error contains.
        ends: Result<u8, &'static str>,
    }

    fn case(messages: Vec<Message>, ends: Result<u8, &'static str>) -> ForwardCase {
        ForwardCase {
            messages,
            interrupted: false,
            stdout: "",
            stderr: "",
            ends,
        }
    }

    #[tokio::test]
    async fn exec_output_is_forwarded() {
        let cases = [
            ForwardCase {
                stdout: "a\nb\n",
                stderr: "NOTICE\n",
                ..case(
                    vec![
                        out(Output::Stdout(b"a\n".to_vec())),
                        out(Output::Stderr(b"NOTICE\n".to_vec())),
                        Ok(ExecOutput { output: None }),
                        out(Output::Stdout(b"b\n".to_vec())),
                        out(Output::ExitCode(3)),
                        out(Output::Stdout(b"after the end".to_vec())),
                    ],
                    Ok(3),
                )
            },
            case(vec![out(Output::ExitCode(0))], Ok(0)),
            case(vec![out(Output::ExitCode(300))], Ok(exit::ERROR)),
            case(vec![out(Output::ExitCode(-1))], Ok(exit::ERROR)),
            ForwardCase {
                stdout: "partial",
                ..case(
                    vec![out(Output::Stdout(b"partial".to_vec()))],
                    Err("sqlrsd ended the psql run without its exit code"),
                )
            },
            case(
                vec![Err(tonic::Status::not_found(
                    "no instance matches abcdef12",
                ))],
                Err("no instance matches abcdef12"),
            ),
            ForwardCase {
                interrupted: true,
                ..case(vec![out(Output::ExitCode(0))], Ok(exit::CANCELLED))
            },
        ];
        for c in cases {
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            let interrupted = c.interrupted;
            let interrupt = async move {
                if !interrupted {
                    std::future::pending::<()>().await;
                }
            };
            let name = format!("{:?} interrupted={interrupted}", c.messages);
            let stream = tokio_stream::iter(c.messages);
            let got = forward(Tool::Psql, stream, interrupt, &mut stdout, &mut stderr)
                .await
                .map_err(|e| e.to_string());
            match (&got, c.ends) {
                (Ok(code), Ok(want)) => assert_eq!(*code, want, "{name}"),
                (Err(text), Err(want)) => assert!(text.contains(want), "{name}: {text}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
            assert_eq!(
                (
                    String::from_utf8(stdout).unwrap(),
                    String::from_utf8(stderr).unwrap()
                ),
                (c.stdout.to_owned(), c.stderr.to_owned()),
                "{name}"
            );
        }
    }
}

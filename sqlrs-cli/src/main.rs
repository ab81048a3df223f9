//! The sqlrs command line: parses, dispatches to one module per command
//! family, and turns errors into messages and exit codes.

mod argv;
mod cli;
mod daemon;
mod error;
mod init;
mod job;
mod ls;
mod pin;
mod prepare;
mod project;
mod render;
mod rm;
mod run;
mod status;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, Ctx, DaemonAction, EngineArgs, InstanceArgs, Output, WatchArgs};
use crate::error::{CliError, exit};
use crate::prepare::{Source, Spec};
use crate::run::Target;

fn main() -> ExitCode {
    // Output piped into `head` and the like: end quietly when the reader goes.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread
    // starts has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let argv: Vec<String> = match std::env::args_os().map(|a| a.into_string()).collect() {
        Ok(argv) => argv,
        Err(bad) => {
            eprintln!(
                "error: argument {bad:?} is not valid UTF-8; sqlrs passes arguments on as text"
            );
            return ExitCode::from(exit::USAGE);
        }
    };
    let split = argv::split_composite(&argv);
    let cli = Cli::parse_from(&split.head);
    let then = split
        .run
        .map(|tail| Cli::parse_from(argv.iter().take(1).chain(&tail)));
    let ctx = Ctx {
        output: if then.as_ref().is_some_and(|t| t.output == Output::Json) {
            Output::Json
        } else {
            cli.output
        },
        quiet: cli.quiet || then.as_ref().is_some_and(|t| t.quiet),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    let result = runtime.block_on(dispatch(ctx, cli.command, then.map(|t| t.command)));
    // The terminal prompt's reader thread must not hold up the exit.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(
                e.downcast_ref::<CliError>()
                    .map_or(exit::ERROR, CliError::exit_code),
            )
        }
    }
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    CliError::Usage(message.into()).into()
}

fn spec(source: Source, engine: EngineArgs, instance: InstanceArgs) -> Spec {
    Spec {
        source,
        image: engine.image,
        instance,
    }
}

/// A plan hands out no instance: nothing to name or expire.
fn plan_spec(source: Source, engine: EngineArgs) -> Spec {
    spec(source, engine, InstanceArgs::default())
}

/// The composite removes its instance when the run ends: a name has nothing to hold on to.
fn composite_spec(spec: Spec) -> anyhow::Result<Spec> {
    if spec.instance.name.is_some() {
        return Err(usage(
            "--name (and --keep) have no place in `prepare … run …`: the composite removes its \
             instance when the run ends, so a name would outlive nothing; prepare with --name on \
             its own, then run against that instance with `--instance ID` (see `sqlrs ls --names`)",
        ));
    }
    Ok(spec)
}

async fn dispatch(ctx: Ctx, command: Command, then: Option<Command>) -> anyhow::Result<u8> {
    if let Some(then) = then {
        let spec = match command {
            Command::PreparePsql {
                engine,
                instance,
                args,
            } => spec(Source::Psql(args), engine, instance),
            Command::PrepareLb {
                engine,
                instance,
                args,
            } => spec(Source::Lb(args), engine, instance),
            Command::Prepare {
                name,
                engine,
                instance,
            } => spec(Source::Alias(name), engine, instance),
            _ => return Err(usage("only prepare can be followed by run")),
        };
        let spec = composite_spec(spec)?;
        let target = match then {
            Command::RunPsql {
                instance: None,
                args,
            } => Target::Psql(args),
            Command::RunPgbench {
                instance: None,
                args,
            } => Target::Pgbench(args),
            Command::Run {
                name,
                instance: None,
            } => Target::Alias(name),
            Command::RunPsql { .. } | Command::RunPgbench { .. } | Command::Run { .. } => {
                return Err(usage(
                    "--instance has no place after prepare: the run uses the instance prepare makes",
                ));
            }
            _ => {
                return Err(usage(
                    "after prepare's arguments only `run:psql -- …`, `run:pgbench -- …` or `run NAME` may follow",
                ));
            }
        };
        return run::composite(ctx, &spec, &target).await;
    }
    let need_instance = || {
        usage(
            "which instance? add --instance ID (see `sqlrs ls`), or run right after prepare: `sqlrs prepare:psql -- … run:psql -- …`",
        )
    };
    match command {
        Command::PreparePsql {
            engine,
            instance,
            args,
        } => prepare::prepare(ctx, &spec(Source::Psql(args), engine, instance)).await,
        Command::PrepareLb {
            engine,
            instance,
            args,
        } => prepare::prepare(ctx, &spec(Source::Lb(args), engine, instance)).await,
        Command::Prepare {
            name,
            engine,
            instance,
        } => prepare::prepare(ctx, &spec(Source::Alias(name), engine, instance)).await,
        Command::PlanPsql { engine, args } => {
            prepare::plan(ctx, &plan_spec(Source::Psql(args), engine)).await
        }
        Command::PlanLb { engine, args } => {
            prepare::plan(ctx, &plan_spec(Source::Lb(args), engine)).await
        }
        Command::Plan { name, engine } => {
            prepare::plan(ctx, &plan_spec(Source::Alias(name), engine)).await
        }
        Command::RunPsql { instance, args } => {
            run::run(&Target::Psql(args), &instance.ok_or_else(need_instance)?).await
        }
        Command::RunPgbench { instance, args } => {
            run::run(&Target::Pgbench(args), &instance.ok_or_else(need_instance)?).await
        }
        Command::Run { name, instance } => {
            run::run(&Target::Alias(name), &instance.ok_or_else(need_instance)?).await
        }
        Command::Watch(WatchArgs { job: Some(job), .. }) => prepare::watch(ctx, &job).await,
        Command::Watch(WatchArgs {
            job: None,
            stop,
            follow,
        }) => project::watch(ctx, stop, follow).await,
        Command::Ls(args) => ls::ls(ctx, &args).await,
        Command::Rm(args) => rm::rm(ctx, &args).await,
        Command::Status(args) => status::status(ctx, args.cache).await,
        Command::Pin { target: None } => pin::list(ctx).await,
        Command::Pin {
            target: Some(target),
        } => pin::pin(ctx, &target, true).await,
        Command::Unpin { target } => pin::pin(ctx, &target, false).await,
        Command::Daemon {
            action: DaemonAction::Start,
        } => daemon::start(ctx).await,
        Command::Daemon {
            action: DaemonAction::Stop,
        } => daemon::stop(ctx).await,
        Command::Daemon {
            action: DaemonAction::Status,
        } => daemon::status(ctx).await,
        Command::Init => init::init(ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn composite_refuses_names() {
        // (--name, --keep, --ttl) and whether a composite accepts them.
        let cases = [
            ((None, false, None), true),
            ((None, false, Some(Duration::from_secs(60))), true),
            ((Some("dev"), false, None), false),
            ((Some("dev"), true, Some(Duration::from_secs(60))), false),
        ];
        for ((name, keep, ttl), accepted) in cases {
            let instance = InstanceArgs {
                name: name.map(String::from),
                keep,
                ttl,
            };
            let source = Source::Alias("db".into());
            let got = composite_spec(spec(source, EngineArgs::default(), instance.clone()));
            match got {
                Ok(spec) => {
                    assert!(accepted, "{instance:?}");
                    assert_eq!(spec.instance, instance);
                }
                Err(e) => {
                    assert!(!accepted, "{instance:?}: {e}");
                    let error = e.downcast_ref::<CliError>().expect("a CliError");
                    assert_eq!(error.exit_code(), exit::USAGE);
                    assert!(
                        error
                            .to_string()
                            .contains("the composite removes its instance"),
                        "{error}"
                    );
                }
            }
        }
    }
}

//! The command-line grammar (clap): every command, flag and help text.

use std::time::Duration;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "sqlrs",
    version,
    about = "Fresh PostgreSQL databases in a known state, built once and cloned in milliseconds.",
    after_help = "\
Composite: `sqlrs prepare:psql -- <prepare args> run:psql -- <run args>` (or
`run:pgbench -- <args>`, or `sqlrs prepare NAME run NAME2`) prepares an instance,
runs against it, deletes it, and exits with the tool's exit code.

Exit codes: 0 ok, 1 error, 2 usage error, 3 job failed, 130 cancelled;
run:psql and run:pgbench exit with the tool's own code.

Environment: XDG_CONFIG_HOME, XDG_STATE_HOME, XDG_RUNTIME_DIR place the daemon's
files; SQLRSD_BIN names the daemon binary; SQLRS_PSQL / SQLRS_PGBENCH name the
host client binaries run:psql and run:pgbench use for native instances."
)]
pub struct Cli {
    /// Result format on stdout.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// No progress on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// What every command needs to know about how to speak.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub output: Output,
    pub quiet: bool,
}

impl Ctx {
    pub fn json(self) -> bool {
        self.output == Output::Json
    }

    /// A progress line on stderr, unless quiet.
    pub fn progress(self, line: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build (or reuse) the state psql's scripts make and start an instance of it; prints DSN=…
    #[command(name = "prepare:psql")]
    PreparePsql {
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        instance: InstanceArgs,
        /// psql arguments: -f FILE, -c SQL, -f - (stdin), -v NAME=VALUE, -1.
        #[arg(last = true, required = true, value_name = "PSQL ARGS")]
        args: Vec<String>,
    },
    /// Build (or reuse) the state a Liquibase changelog makes, one state per changeset; prints DSN=…
    #[command(name = "prepare:lb")]
    PrepareLb {
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        instance: InstanceArgs,
        /// Liquibase arguments: update --changelog-file FILE [--search-path …]
        /// [--contexts …] [--label-filter …] [-Dname=value …]; sqlrs supplies the connection.
        #[arg(last = true, required = true, value_name = "LIQUIBASE ARGS")]
        args: Vec<String>,
    },
    /// Prepare from the alias file NAME.prep.s9s.yaml (searched up to the workspace root).
    Prepare {
        /// Alias name (or a path to its file).
        name: String,
        /// Overrides the alias file's `image:`.
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        instance: InstanceArgs,
    },
    /// Show the steps a prepare would take, their state ids and which are cached.
    #[command(name = "plan:psql")]
    PlanPsql {
        #[command(flatten)]
        engine: EngineArgs,
        #[arg(last = true, required = true, value_name = "PSQL ARGS")]
        args: Vec<String>,
    },
    /// Show the changesets a prepare:lb would apply, their state ids and which are cached.
    #[command(name = "plan:lb")]
    PlanLb {
        #[command(flatten)]
        engine: EngineArgs,
        #[arg(last = true, required = true, value_name = "LIQUIBASE ARGS")]
        args: Vec<String>,
    },
    /// Plan from the alias file NAME.prep.s9s.yaml.
    Plan {
        /// Alias name (or a path to its file).
        name: String,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Run psql against an instance; exits with psql's code.
    #[command(
        name = "run:psql",
        long_about = "Run psql against an instance; exits with psql's code.\n\n\
Native instances: the host psql runs as `psql <DSN> <psql args>` with your terminal.\n\n\
Docker instances: psql runs inside the instance's container (no psql needed on the host); \
files the arguments name are made visible there, output streams back live, and Ctrl-C \
stops the run (exit 130). There is no terminal in the container, so psql gets stdin only \
as a script: all of stdin is sent when an argument is `-f -`, or when there is no -c/-f \
at all and stdin is not a terminal (`sqlrs run:psql --instance ID < q.sql`); otherwise \
none is sent. An interactive session (no -c/-f, stdin a terminal) needs a host psql: \
connect it to the instance's DSN."
    )]
    RunPsql {
        /// Instance id or a unique prefix of it (not used after prepare in a composite).
        #[arg(long)]
        instance: Option<String>,
        #[arg(last = true, value_name = "PSQL ARGS")]
        args: Vec<String>,
    },
    /// Run pgbench against an instance; exits with pgbench's code.
    #[command(
        name = "run:pgbench",
        long_about = "Run pgbench against an instance; exits with pgbench's code.\n\n\
Native instances: the host pgbench runs as `pgbench <pgbench args> <DSN>`.\n\n\
Docker instances: pgbench runs inside the instance's container (none needed on the host); \
files the arguments name (-f script.sql[@weight]) are made visible there, output streams \
back live, Ctrl-C stops the run (exit 130). No stdin is sent."
    )]
    RunPgbench {
        /// Instance id or a unique prefix of it (not used after prepare in a composite).
        #[arg(long)]
        instance: Option<String>,
        #[arg(last = true, value_name = "PGBENCH ARGS")]
        args: Vec<String>,
    },
    /// Run the alias NAME.run.s9s.yaml (psql or pgbench) against an instance, in the alias file's folder.
    Run {
        /// Alias name (or a path to its file).
        name: String,
        /// Instance id or a unique prefix of it (not used after prepare in a composite).
        #[arg(long)]
        instance: Option<String>,
    },
    /// Follow a job's progress (Ctrl-C detaches; the job keeps running), or,
    /// without a job, watch the workspace of the current folder and show its status.
    #[command(
        long_about = "Follow a job's progress, or watch the workspace of the current folder.\n\n\
`sqlrs watch JOB` follows the job's events to its end (Ctrl-C detaches; the job keeps running).\n\n\
`sqlrs watch` registers the workspace (the folder holding .sqlrs/) with sqlrsd, which then \
rebuilds changed prepare chains in the background, and prints its status: one line per alias \
with its status (cached, stale, building, failed, invalid) and head state. `--follow` keeps \
printing the status on every change until Ctrl-C; `--stop` makes sqlrsd forget the workspace."
    )]
    Watch(WatchArgs),
    /// List instances (default), states (as a tree), jobs or tasks.
    Ls(LsArgs),
    /// Remove an instance, a state or a job by id prefix (at least 8 hex characters).
    Rm(RmArgs),
    /// Show the daemon, its runtime, snapshotter and store, the warm pool and the watched
    /// workspaces. Starts the daemon when none runs.
    Status(StatusArgs),
    /// Keep a state, or whatever state an alias's chain ends in, from eviction;
    /// without a target, list the pins.
    #[command(
        long_about = "Keep a state, or the head state of an alias, from eviction.\n\nTARGET is an alias NAME (NAME.prep.s9s.yaml, found from the current folder up to the \
workspace root) or, when no such alias file exists, a state id prefix of at least 8 hex \
characters. An alias pin follows the alias: it protects the state its chain ends in now, \
and after an edit the new head. Without TARGET, the pins are listed."
    )]
    Pin { target: Option<String> },
    /// Remove a pin made with `sqlrs pin`.
    Unpin { target: String },
    /// Start, stop or inspect the daemon.
    Daemon {
        #[command(subcommand)]
        action: DaemonAction,
    },
    /// Make the current folder a sqlrs workspace (creates .sqlrs/); safe to repeat.
    Init,
}

/// The instance a prepare hands out: its stable name and how long it lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct InstanceArgs {
    /// Bind the instance to a stable name: asking again with the same name
    /// returns the same instance while its state is current, a new one when
    /// the chain changed (the old one is removed unless --keep).
    #[arg(
        long = "name",
        id = "instance_name",
        value_name = "NAME",
        value_parser = NonEmptyStringValueParser::new()
    )]
    pub name: Option<String>,
    /// With --name: when the chain changed, keep the previously named
    /// instance (it loses the name) instead of removing it.
    #[arg(long, requires = "instance_name")]
    pub keep: bool,
    /// Time to live, e.g. 90s, 30m, 2h, 1h30m: the instance is removed once it
    /// expired and no connection is open. Default: the daemon's configuration.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
}

/// A `--ttl` value: a human duration of at least a millisecond (0 would
/// mean the daemon's default on the wire).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration such as 90s, 30m, 2h or 1h30m"))?;
    if ttl.as_millis() == 0 {
        return Err(
            "a time to live must be at least 1ms; leave --ttl out for the configured default"
                .into(),
        );
    }
    Ok(ttl)
}

/// `sqlrs watch [JOB] [--stop] [--follow]`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Job id or a unique prefix of it; without one, the workspace of the current folder.
    pub job: Option<String>,
    /// Make sqlrsd stop watching the workspace of the current folder.
    #[arg(long, conflicts_with_all = ["job", "follow"])]
    pub stop: bool,
    /// Keep printing the workspace's status on every change until Ctrl-C.
    #[arg(long, conflicts_with = "job")]
    pub follow: bool,
}

/// Which engine a prepare or plan uses.
#[derive(Debug, Clone, Default, Args)]
pub struct EngineArgs {
    /// Run the engine in Docker with this image (its digest is part of the state identity).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Running instances (the default).
    #[arg(long)]
    pub instances: bool,
    /// Only named instances (`prepare --name`): NAME, INSTANCE, STATE, DSN.
    #[arg(long)]
    pub names: bool,
    /// Also the warm pool's instances (status `warm`).
    #[arg(long)]
    pub warm: bool,
    /// Cached states, drawn as a tree.
    #[arg(long)]
    pub states: bool,
    /// With --states: each state's disk use (own and exclusive, shared blocks
    /// counted once), uses, build cost and what keeps it from eviction.
    #[arg(long, requires = "states")]
    pub cache_details: bool,
    /// Jobs.
    #[arg(long)]
    pub jobs: bool,
    /// Tasks of every job, or of JOB.
    #[arg(long, value_name = "JOB", num_args = 0..=1, default_missing_value = "")]
    pub tasks: Option<String>,
}

/// `sqlrs status [--cache]`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Also measure the state cache: usage with blocks shared through
    /// copy-on-write counted once, limit, free space, pressure, what
    /// eviction could free and the last eviction.
    #[arg(long)]
    pub cache: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Id prefix, at least 8 hex characters.
    pub id: String,
    /// Also remove what depends on it (child states, their instances).
    #[arg(long)]
    pub recurse: bool,
    /// Remove even when in use: an instance with open connections, a state
    /// with instances (removed with it), a running job (cancelled). A state
    /// that a running build works on stays: cancel that job first.
    #[arg(long)]
    pub force: bool,
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum DaemonAction {
    /// Start the daemon unless one runs; prints its pid.
    Start,
    /// Ask the daemon to shut down and wait until it is gone (up to 30 s).
    Stop,
    /// Whether the daemon runs (never starts it); exit 1 when not running.
    Status,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn parses() {
        let parse = |line: &str| {
            Cli::try_parse_from(line.split_whitespace()).map(|c| format!("{:?}", c.command))
        };
        const NO_INSTANCE: &str = "instance: InstanceArgs { name: None, keep: false, ttl: None }";
        let ok = [
            (
                "sqlrs prepare:psql -- -f a.sql",
                format!(
                    "PreparePsql {{ engine: EngineArgs {{ image: None }}, {NO_INSTANCE}, args: [\"-f\", \"a.sql\"] }}"
                ),
            ),
            (
                "sqlrs prepare:psql --image postgres:17 -- -f a.sql",
                format!(
                    "PreparePsql {{ engine: EngineArgs {{ image: Some(\"postgres:17\") }}, {NO_INSTANCE}, args: [\"-f\", \"a.sql\"] }}"
                ),
            ),
            (
                "sqlrs prepare:psql --name dev --keep --ttl 2h -- -f a.sql",
                "PreparePsql { engine: EngineArgs { image: None }, instance: InstanceArgs { name: Some(\"dev\"), keep: true, ttl: Some(7200s) }, args: [\"-f\", \"a.sql\"] }".into(),
            ),
            (
                "sqlrs prepare:lb --ttl 90s -- update --changelog-file c.xml",
                "PrepareLb { engine: EngineArgs { image: None }, instance: InstanceArgs { name: None, keep: false, ttl: Some(90s) }, args: [\"update\", \"--changelog-file\", \"c.xml\"] }".into(),
            ),
            (
                "sqlrs plan:psql --image=pg -- -f a.sql",
                "PlanPsql { engine: EngineArgs { image: Some(\"pg\") }, args: [\"-f\", \"a.sql\"] }".into(),
            ),
            (
                "sqlrs prepare db --image pg",
                format!(
                    "Prepare {{ name: \"db\", engine: EngineArgs {{ image: Some(\"pg\") }}, {NO_INSTANCE} }}"
                ),
            ),
            (
                "sqlrs prepare db --name=dev --ttl 1h30m",
                "Prepare { name: \"db\", engine: EngineArgs { image: None }, instance: InstanceArgs { name: Some(\"dev\"), keep: false, ttl: Some(5400s) } }".into(),
            ),
            (
                "sqlrs prepare --name db db --ttl 250ms",
                "Prepare { name: \"db\", engine: EngineArgs { image: None }, instance: InstanceArgs { name: Some(\"db\"), keep: false, ttl: Some(250ms) } }".into(),
            ),
            (
                "sqlrs plan db",
                "Plan { name: \"db\", engine: EngineArgs { image: None } }".into(),
            ),
            (
                "sqlrs run:pgbench --instance abc -- -c 4 -T 10",
                "RunPgbench { instance: Some(\"abc\"), args: [\"-c\", \"4\", \"-T\", \"10\"] }".into(),
            ),
            (
                "sqlrs ls --tasks",
                "Ls(LsArgs { instances: false, names: false, warm: false, states: false, cache_details: false, jobs: false, tasks: Some(\"\") })".into(),
            ),
            (
                "sqlrs ls --tasks abc",
                "Ls(LsArgs { instances: false, names: false, warm: false, states: false, cache_details: false, jobs: false, tasks: Some(\"abc\") })".into(),
            ),
            (
                "sqlrs ls --names --warm",
                "Ls(LsArgs { instances: false, names: true, warm: true, states: false, cache_details: false, jobs: false, tasks: None })".into(),
            ),
            (
                "sqlrs run:psql --instance abc -- -c x",
                "RunPsql { instance: Some(\"abc\"), args: [\"-c\", \"x\"] }".into(),
            ),
            (
                "sqlrs daemon status --output json",
                "Daemon { action: Status }".into(),
            ),
            (
                "sqlrs watch 0123abcd",
                "Watch(WatchArgs { job: Some(\"0123abcd\"), stop: false, follow: false })".into(),
            ),
            (
                "sqlrs watch",
                "Watch(WatchArgs { job: None, stop: false, follow: false })".into(),
            ),
            (
                "sqlrs watch --stop",
                "Watch(WatchArgs { job: None, stop: true, follow: false })".into(),
            ),
            (
                "sqlrs watch --follow --output json",
                "Watch(WatchArgs { job: None, stop: false, follow: true })".into(),
            ),
        ];
        for (line, want) in ok {
            assert_eq!(parse(line).unwrap(), want, "{line}");
        }
        // (line, what the usage error says)
        let errors = [
            ("sqlrs prepare:psql -f a.sql", "unexpected argument '-f'"),
            ("sqlrs prepare:psql", "required arguments were not provided"),
            ("sqlrs run:pgbench -c 1", "unexpected argument '-c'"),
            (
                "sqlrs run:psql --image pg -- -c x",
                "unexpected argument '--image'",
            ),
            (
                "sqlrs prepare:psql --image -- -f a.sql",
                "a value is required",
            ),
            ("sqlrs --output yaml ls", "invalid value 'yaml'"),
            (
                "sqlrs prepare:psql --ttl 2 -- -f a.sql",
                "invalid value '2' for '--ttl <DURATION>': time unit needed",
            ),
            (
                "sqlrs prepare db --ttl soon",
                "write a duration such as 90s, 30m, 2h or 1h30m",
            ),
            ("sqlrs prepare db --ttl 0s", "must be at least 1ms"),
            ("sqlrs prepare db --ttl 10us", "must be at least 1ms"),
            (
                "sqlrs prepare db --keep",
                "the following required arguments were not provided:\n  --name <NAME>",
            ),
            (
                "sqlrs prepare:lb --keep -- update --changelog-file c.xml",
                "--name <NAME>",
            ),
            (
                "sqlrs prepare db --name=",
                "a value is required for '--name <NAME>'",
            ),
            (
                "sqlrs plan:psql --name dev -- -f a.sql",
                "unexpected argument '--name'",
            ),
            ("sqlrs plan db --ttl 1h", "unexpected argument '--ttl'"),
            (
                "sqlrs watch abc --stop",
                "the argument '[JOB]' cannot be used with '--stop'",
            ),
            (
                "sqlrs watch abc --follow",
                "the argument '[JOB]' cannot be used with '--follow'",
            ),
            (
                "sqlrs watch --stop --follow",
                "'--stop' cannot be used with '--follow'",
            ),
            ("sqlrs watch a b", "unexpected argument 'b'"),
        ];
        for (line, says) in errors {
            let err = parse(line).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{line}");
            let text = err.to_string();
            assert!(text.contains(says), "{line}: {text}");
        }
        let cli = Cli::try_parse_from(["sqlrs", "ls", "--output", "json", "-q"]).unwrap();
        assert_eq!((cli.output, cli.quiet), (Output::Json, true));
    }
}

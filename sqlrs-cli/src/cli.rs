//! The command-line grammar (clap): every command, flag and help text.

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
        /// psql arguments: -f FILE, -c SQL, -f - (stdin), -v NAME=VALUE, -1.
        #[arg(last = true, required = true, value_name = "PSQL ARGS")]
        args: Vec<String>,
    },
    /// Build (or reuse) the state a Liquibase changelog makes, one state per changeset; prints DSN=…
    #[command(name = "prepare:lb")]
    PrepareLb {
        #[command(flatten)]
        engine: EngineArgs,
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
    /// Follow a job's progress (Ctrl-C detaches; the job keeps running).
    Watch {
        /// Job id or a unique prefix of it.
        job: String,
    },
    /// List instances (default), states (as a tree), jobs or tasks.
    Ls(LsArgs),
    /// Remove an instance, a state or a job by id prefix (at least 8 hex characters).
    Rm(RmArgs),
    /// Show the daemon, its runtime, snapshotter and store. Starts the daemon when none runs.
    Status,
    /// Start, stop or inspect the daemon.
    Daemon {
        #[command(subcommand)]
        action: DaemonAction,
    },
    /// Make the current folder a sqlrs workspace (creates .sqlrs/); safe to repeat.
    Init,
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
    /// Cached states, drawn as a tree.
    #[arg(long)]
    pub states: bool,
    /// Jobs.
    #[arg(long)]
    pub jobs: bool,
    /// Tasks of every job, or of JOB.
    #[arg(long, value_name = "JOB", num_args = 0..=1, default_missing_value = "")]
    pub tasks: Option<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Id prefix, at least 8 hex characters.
    pub id: String,
    /// Also remove what depends on it (child states, their instances).
    #[arg(long)]
    pub recurse: bool,
    /// Remove even when in use (open connections, running jobs).
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
        let ok = [
            (
                "sqlrs prepare:psql -- -f a.sql",
                "PreparePsql { engine: EngineArgs { image: None }, args: [\"-f\", \"a.sql\"] }",
            ),
            (
                "sqlrs prepare:psql --image postgres:17 -- -f a.sql",
                "PreparePsql { engine: EngineArgs { image: Some(\"postgres:17\") }, args: [\"-f\", \"a.sql\"] }",
            ),
            (
                "sqlrs plan:psql --image=pg -- -f a.sql",
                "PlanPsql { engine: EngineArgs { image: Some(\"pg\") }, args: [\"-f\", \"a.sql\"] }",
            ),
            (
                "sqlrs prepare db --image pg",
                "Prepare { name: \"db\", engine: EngineArgs { image: Some(\"pg\") } }",
            ),
            (
                "sqlrs plan db",
                "Plan { name: \"db\", engine: EngineArgs { image: None } }",
            ),
            (
                "sqlrs run:pgbench --instance abc -- -c 4 -T 10",
                "RunPgbench { instance: Some(\"abc\"), args: [\"-c\", \"4\", \"-T\", \"10\"] }",
            ),
            (
                "sqlrs ls --tasks",
                "Ls(LsArgs { instances: false, states: false, jobs: false, tasks: Some(\"\") })",
            ),
            (
                "sqlrs ls --tasks abc",
                "Ls(LsArgs { instances: false, states: false, jobs: false, tasks: Some(\"abc\") })",
            ),
            (
                "sqlrs run:psql --instance abc -- -c x",
                "RunPsql { instance: Some(\"abc\"), args: [\"-c\", \"x\"] }",
            ),
            (
                "sqlrs daemon status --output json",
                "Daemon { action: Status }",
            ),
        ];
        for (line, want) in ok {
            assert_eq!(parse(line).unwrap(), want, "{line}");
        }
        for line in [
            "sqlrs prepare:psql -f a.sql",
            "sqlrs prepare:psql",
            "sqlrs run:pgbench -c 1",
            "sqlrs run:psql --image pg -- -c x",
            "sqlrs prepare:psql --image -- -f a.sql",
            "sqlrs --output yaml ls",
        ] {
            let err = parse(line).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{line}");
        }
        let cli = Cli::try_parse_from(["sqlrs", "ls", "--output", "json", "-q"]).unwrap();
        assert_eq!((cli.output, cli.quiet), (Output::Json, true));
    }
}

//! Liquibase support for `prepare:lb` and `plan:lb`: one state per changeset.
//!
//! The pieces, in the order the engine uses them:
//!
//! 1. [`parse_args`]: what follows `prepare:lb --` (`update` and the options
//!    that choose what it runs; connection options are refused).
//! 2. [`closure`]: every file Liquibase would read for that changelog (XML,
//!    YAML, JSON and formatted SQL changelogs, `include`, `includeAll`,
//!    `sqlFile`, `loadData` CSVs, …), resolved against the search path
//!    exactly as Liquibase resolves it, each with a content digest.
//!    [`Closure::digest`] keys a stored plan: while it is unchanged the
//!    engine reuses that plan without starting a JVM. [`materialize`] (or
//!    [`Closure::ingest`] + [`materialize_from_blobs`]) copies the closure into
//!    an execution folder with the same relative layout, so the file names
//!    Liquibase records in DATABASECHANGELOG are the user's own.
//! 3. [`discover`]: which Liquibase runs (`SQLRS_LIQUIBASE`, `liquibase.exec`,
//!    `PATH`), with its version and Java.
//! 4. [`Liquibase::plan`]: `update-sql` against an empty database lists the
//!    changesets `update` would run, with their checksums (it changes nothing
//!    in the database); [`Closure::check_plan`] refuses plans that cannot be
//!    built one changeset at a time (a `runAlways` changeset before others).
//! 5. [`Liquibase::update_one`]: `update-count --count 1` applies exactly the
//!    next changeset; [`applied`] reads DATABASECHANGELOG and
//!    [`check_applied`] proves that what ran is what was planned.
//! 6. [`fingerprint`]: a changeset's step fingerprint (DESIGN §3).
//!
//! Every Liquibase run starts a JVM (about 2–5 s on a busy 2-core machine),
//! so a cache hit must stop at step 2.

mod args;
mod changelog;
mod cli;
mod closure;
mod history;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

use crate::ids::{FieldHasher, Fingerprint};

pub use args::{LbArgs, parse_args};
pub use cli::{Jdbc, LbOutput, Liquibase, discover, locate};
pub use closure::{Closure, ClosureFile, FileRole, closure, materialize, materialize_from_blobs};
pub use history::{AppliedChangeset, applied, check_applied};

/// The environment variable naming the Liquibase launcher to run; it wins
/// over the `liquibase.exec` configuration key and `PATH`.
pub const ENV_EXEC: &str = "SQLRS_LIQUIBASE";

/// The Liquibase release sqlrs is tested with (npm `liquibase@4.28.1` ships it).
pub const TESTED_VERSION: &str = "4.28.0";

/// One changeset `update` would run, as Liquibase's `update-sql` reports it
/// (the row it would insert into DATABASECHANGELOG). The engine stores plans
/// in its index, hence the serde derives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlannedChangeset {
    pub id: String,
    pub author: String,
    /// The changelog name Liquibase records: the search-path-relative path of
    /// the changelog defining it, or its `logicalFilePath`.
    pub filename: String,
    /// Liquibase's checksum, e.g. `9:4a13de77d2b375c7ed8917e1e8e3e296`.
    pub checksum: String,
    /// Liquibase's summary of the changes, e.g. `createTable tableName=person`.
    pub description: String,
    pub comments: String,
    /// `EXECUTED` (or `MARK_RAN` when a precondition marks it ran).
    pub exec_type: String,
    /// The changeset's own context expression, as recorded.
    pub contexts: Option<String>,
    /// The changeset's own labels, as recorded.
    pub labels: Option<String>,
    /// The Liquibase version recorded with it, e.g. `4.28.0`.
    pub liquibase: String,
}

impl PlannedChangeset {
    /// `filename::id::author`, the way Liquibase names a changeset.
    pub fn label(&self) -> String {
        format!("{}::{}::{}", self.filename, self.id, self.author)
    }
}

/// The step fingerprint of one changeset (DESIGN §3): its Liquibase checksum,
/// id, author and recorded file name, what else DATABASECHANGELOG records
/// for it, the digest of its definition and of every file its changes read
/// (which the checksum does not always cover: preconditions, `valueClobFile`),
/// and the options that change what it does (contexts, labels, default
/// schema, `-D` parameters). Never an absolute path.
pub fn fingerprint(changeset: &PlannedChangeset, args: &LbArgs, closure: &Closure) -> Fingerprint {
    let mut h = FieldHasher::new("lb-changeset");
    for field in [
        &changeset.checksum,
        &changeset.id,
        &changeset.author,
        &changeset.filename,
        &changeset.description,
        &changeset.comments,
        &changeset.exec_type,
        &changeset.liquibase,
    ] {
        h.field(field.as_bytes());
    }
    for opt in [&changeset.contexts, &changeset.labels] {
        match opt {
            Some(v) => h.field(b"1").field(v.as_bytes()),
            None => h.field(b"0"),
        };
    }
    h.field(&closure.changeset_inputs(changeset).0);
    args.hash_effect(&mut h);
    h.finish()
}

/// Everything that can go wrong with a Liquibase step, each naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    // --- arguments ---
    #[error(
        "prepare:lb needs the Liquibase command `update`, e.g. `sqlrs prepare:lb -- update --changelog-file db/changelog.xml`"
    )]
    NoCommand,
    #[error(
        "sqlrs runs the Liquibase command `update` only, not `{command}`: use `sqlrs prepare:lb -- update --changelog-file …` (plan:lb lists the changesets)"
    )]
    UnsupportedCommand { command: String },
    #[error(
        "unexpected argument `{arg}` after `update`: give options as --name value or --name=value"
    )]
    UnexpectedArgument { arg: String },
    #[error("`{option}`: sqlrs supplies the database connection itself; remove this option")]
    ConnectionOption { option: String },
    #[error(
        "`{option}`: unknown or unsupported Liquibase option; prepare:lb accepts --changelog-file, --search-path, --contexts, --label-filter (--labels), --default-schema-name and -Dname=value"
    )]
    UnknownOption { option: String },
    #[error("`{option}` needs a value, e.g. {option}=VALUE")]
    MissingValue { option: String },
    #[error("`{option}` is given twice; give it once")]
    RepeatedOption { option: String },
    #[error("`{arg}`: a changelog parameter is written -Dname=value")]
    BadParameter { arg: String },
    #[error(
        "prepare:lb needs --changelog-file FILE: the root changelog, relative to the search path (by default the working directory)"
    )]
    NoChangelog,

    // --- the changelog closure ---
    #[error(
        "changelog `{name}` was not found in the search path ({}): Liquibase resolves --changelog-file against the search path (by default the working directory); give a path relative to it or add its folder with --search-path",
        roots_list(roots)
    )]
    ChangelogNotFound { name: String, roots: Vec<PathBuf> },
    #[error(
        "{}: {element} `{target}` was not found in the search path ({}){}; fix the path, or set errorIfMissing=\"false\" if it is optional",
        at(file, *line),
        roots_list(roots),
        relative_hint(*relative)
    )]
    IncludeNotFound {
        file: PathBuf,
        line: Option<u32>,
        element: &'static str,
        target: String,
        relative: bool,
        roots: Vec<PathBuf>,
    },
    #[error(
        "{}: includeAll `{target}`: no such folder in the search path ({}), or it holds no changelog (.xml, .yaml, .yml, .json, .sql){}; fix the path, or set errorIfMissingOrEmpty=\"false\"",
        at(file, *line),
        roots_list(roots),
        relative_hint(*relative)
    )]
    IncludeAllEmpty {
        file: PathBuf,
        line: Option<u32>,
        target: String,
        relative: bool,
        roots: Vec<PathBuf>,
    },
    #[error(
        "{}: cannot include `{target}`: Liquibase reads changelogs ending in .xml, .yaml, .yml, .json or .sql; rename it or include a changelog",
        at(file, *line)
    )]
    UnknownFormat {
        file: PathBuf,
        line: Option<u32>,
        target: String,
    },
    #[error(
        "`{name}` is in more than one search-path folder ({}); Liquibase refuses such ambiguous files: remove one of the folders from --search-path or one of the files",
        paths_list(found)
    )]
    Ambiguous { name: String, found: Vec<PathBuf> },
    #[error("include cycle {chain}; remove one of these includes")]
    Cycle { chain: String },
    #[error("{}: {message}; fix the changelog", at(file, *line))]
    Syntax {
        file: PathBuf,
        line: Option<u32>,
        message: String,
    },
    #[error("cannot read {}: {source}; check that it exists and is readable", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{} changed while sqlrs was planning (its content no longer matches the plan); run again",
        path.display()
    )]
    Changed { path: PathBuf },
    #[error(
        "cannot build the Liquibase execution folder at {}: {source}; check free space and permissions of the state directory",
        path.display()
    )]
    Materialize { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),

    // --- running Liquibase ---
    #[error(
        "Liquibase was not found ({searched}); install it with `npm install liquibase@4.28.1` (it bundles the jars and the PostgreSQL JDBC driver, and needs Java 11+, e.g. apt-get install openjdk-17-jre-headless), then put node_modules/liquibase/dist/liquibase/liquibase on PATH, or point SQLRS_LIQUIBASE or the liquibase.exec setting at it"
    )]
    NotFound { searched: String },
    #[error(
        "{origin} is {}, which is not an executable file; point it at the Liquibase launcher (e.g. node_modules/liquibase/dist/liquibase/liquibase from npm liquibase@4.28.1)",
        path.display()
    )]
    NotExecutable { origin: &'static str, path: PathBuf },
    #[error("cannot run {}: {source}", exec.display())]
    Launch { exec: PathBuf, source: io::Error },
    #[error(
        "{} --version did not report a Liquibase version; is Java 11+ installed (e.g. apt-get install openjdk-17-jre-headless, or set JAVA_HOME)? It said: {output}",
        exec.display()
    )]
    NoVersion { exec: PathBuf, output: String },
    #[error("Liquibase {command} failed{}: {message}", changeset_suffix(changeset))]
    Failed {
        command: &'static str,
        /// Liquibase's own explanation (its `Unexpected error running
        /// Liquibase:` paragraph, or the end of its output).
        message: String,
        /// `file::id::author` of the changeset Liquibase was running.
        changeset: Option<String>,
        stdout: String,
        stderr: String,
    },
    #[error(
        "cannot read the changesets from the output of Liquibase update-sql ({problem}); run `liquibase update-sql` by hand to see what it printed"
    )]
    PlanOutput { problem: String },
    #[error("Liquibase was cancelled")]
    Cancelled,
    #[error("{action} on {url}: {source}")]
    Database {
        action: &'static str,
        url: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "changeset {changeset} is runAlways and other changesets follow it: Liquibase runs it again before each of them, so sqlrs cannot build one state per changeset; move it to the end of the changelog or remove runAlways"
    )]
    RunAlways { changeset: String },
    #[error(
        "after step {step}, DATABASECHANGELOG holds {found} where the plan expects {expected}; the changelog changed while sqlrs was building: run again"
    )]
    Mismatch {
        step: usize,
        expected: String,
        found: String,
    },
}

impl LbError {
    /// The changelog file and line at fault, if the error has them.
    pub fn location(&self) -> Option<(&Path, Option<u32>)> {
        match self {
            LbError::IncludeNotFound { file, line, .. }
            | LbError::IncludeAllEmpty { file, line, .. }
            | LbError::UnknownFormat { file, line, .. }
            | LbError::Syntax { file, line, .. } => Some((file, *line)),
            _ => None,
        }
    }
}

fn at(file: &Path, line: Option<u32>) -> String {
    match line {
        Some(line) => format!("{}:{line}", file.display()),
        None => file.display().to_string(),
    }
}

fn roots_list(roots: &[PathBuf]) -> String {
    paths_list(roots)
}

fn paths_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn relative_hint(relative: bool) -> &'static str {
    if relative {
        " (relativeToChangelogFile: it is resolved next to the including changelog)"
    } else {
        " (without relativeToChangelogFile it is resolved against the search path, not the including changelog's folder)"
    }
}

fn changeset_suffix(changeset: &Option<String>) -> String {
    changeset
        .as_deref()
        .map(|c| format!(" in changeset {c}"))
        .unwrap_or_default()
}

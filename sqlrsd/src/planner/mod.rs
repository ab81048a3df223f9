//! The psql planner: turns `prepare:psql -- <psql args>` into a chain of
//! steps, each with the fingerprint that, with its parent, gives its state id.
//!
//! One step per `-f FILE`, `-f -` (the script on stdin) or `-c SQL`, in order.
//! psql applies `-v` variables and `-1` to its whole invocation, so every step
//! carries all variables (the last definition of a name wins) and the `-1`
//! flag. sqlrs runs each step as its own psql invocation so it can snapshot in
//! between: with `-1`, each step is its own transaction (not one transaction
//! around all of them), and a psql variable set with `\set` in one step is not
//! seen by the next.
//!
//! A fingerprint covers everything that can change the resulting data
//! directory and nothing else (DESIGN §3): the step kind, the bytes psql
//! executes, the include closure (`\i`, `\include`, `\ir`, `\include_relative`)
//! as a Merkle hash in directive order, the data files read by `\copy … from`
//! and `\lo_import`, the variables and `-1`. It never covers paths or file
//! names, so moving or renaming files (consistently with their includes)
//! keeps every id.
//!
//! Includes resolve exactly like psql: `\i` relative to psql's working
//! directory (the request's cwd, changed by `\cd`), `\ir` relative to the
//! folder of the file holding the directive (for `-c` and stdin, the working
//! directory). Meta-commands are found by a lexer that skips string literals,
//! quoted identifiers, comments, dollar-quoted bodies and `COPY … FROM STDIN`
//! data; their arguments are read with psql's quoting and `:name`, `:'name'`,
//! `:"name"` interpolation of the `-v` variables and of earlier `\set`s in the
//! same closure (an unknown `:name` stays literal, as in psql).
//!
//! Conditional blocks (`\if`, `\elif`, `\else`) are not evaluated: every
//! directive in every branch is resolved, so a branch that psql would skip
//! still needs its files to exist, and changes to them change the step.
//! Absolute include and data paths are allowed: they are hashed and mirrored
//! like the others, but psql opens an absolute path itself, so it reads the
//! user's file rather than the stored copy at execution time.

mod args;
mod closure;
mod lexer;
pub mod memo;
mod meta;

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::blobs::{BlobError, BlobStore};
use crate::ids::{Digest, FieldHasher, Fingerprint};

use args::Action;
use closure::{Loader, Walk};

/// A psql prepare request as the daemon receives it.
#[derive(Debug, Clone, Copy)]
pub struct PsqlRequest<'a> {
    /// psql's arguments (what follows `prepare:psql --`).
    pub args: &'a [String],
    /// The client's absolute working directory.
    pub cwd: &'a Path,
    /// The bytes sent on the client's stdin, for `-f -`.
    pub stdin: Option<&'a [u8]>,
}

/// One unit of preparation: one `-f`, `-c` or `-f -`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the user wrote, e.g. `-f schema.sql`, `-c create table t(…`.
    pub summary: String,
    pub fingerprint: Fingerprint,
    /// Every file the step reads (main file, includes, data), each once.
    pub inputs: Vec<Input>,
    pub kind: StepKind,
    /// All `-v` variables, sorted by name.
    pub vars: Vec<(String, String)>,
    pub single_transaction: bool,
    /// psql's working directory (the request's cwd).
    pub cwd: PathBuf,
}

impl Step {
    /// The script file of a `-f FILE` step.
    pub fn user_file(&self) -> Option<&Path> {
        match &self.kind {
            StepKind::File { path } => Some(path),
            StepKind::Command { .. } | StepKind::Stdin { .. } => None,
        }
    }
}

/// A file a step reads, as stored in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Absolute, lexically normalised user path.
    pub path: PathBuf,
    pub digest: Digest,
    pub role: InputRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputRole {
    /// The `-f FILE` script.
    Main,
    /// A file pulled in by `\i`, `\ir`, `\include`, `\include_relative`.
    Include,
    /// A file read by `\copy … from` or `\lo_import`.
    Data,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    File { path: PathBuf },
    Command { sql: String },
    Stdin { digest: Digest },
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{flag}: sqlrs connects psql to the instance itself; remove {flag}")]
    ConnectionFlag { flag: String },
    #[error(
        "psql argument {arg:?} names a database or connection, but sqlrs connects psql to the instance itself; remove it (give steps with -f FILE or -c SQL)"
    )]
    Positional { arg: String },
    #[error(
        "{flag}: unknown psql option; prepare accepts -f, -c, -v/--set, -1, -X and psql's echo and output-format options"
    )]
    UnknownFlag { flag: String },
    #[error("{flag}: ambiguous psql option (it could be {candidates}); write it out in full")]
    AmbiguousFlag { flag: String, candidates: String },
    #[error("{flag}: not supported by prepare because {why}; remove it")]
    UnsupportedFlag { flag: String, why: &'static str },
    #[error("{flag} needs a value, e.g. {example}")]
    MissingValue { flag: String, example: &'static str },
    #[error("{flag} takes no value; write {flag} alone")]
    UnexpectedValue { flag: String },
    #[error(
        "-v {arg}: {name:?} is not a valid psql variable name; use letters, digits and underscores"
    )]
    InvalidVariable { arg: String, name: String },
    #[error(
        "-v {arg}: sqlrs always runs psql with ON_ERROR_STOP=1 so that a failing step stops and leaves no state; remove this option"
    )]
    OnErrorStop { arg: String },
    #[error(
        "nothing to prepare: give at least one step with -f FILE, -c SQL or -f - (a script on stdin)"
    )]
    NoSteps,
    #[error(
        "-f - reads the script from stdin, but no stdin was sent; pipe the script into sqlrs or use -f FILE"
    )]
    MissingStdin,
    #[error("-f - is given twice, but stdin can be read only once; put the other script in a file")]
    StdinTwice,
    #[error("working directory {} is not absolute; run sqlrs from a real directory", .0.display())]
    RelativeCwd(PathBuf),
    #[error(
        "-f {arg}: cannot read {}: {reason}; check the path (relative paths start at {})",
        path.display(),
        cwd.display()
    )]
    MainFile {
        arg: String,
        path: PathBuf,
        cwd: PathBuf,
        reason: String,
    },
    #[error("{}:{line}: {problem}", file.display())]
    Directive {
        /// The file holding the directive (`<stdin>` or `<command>` when it is
        /// not a file).
        file: PathBuf,
        line: u32,
        problem: Box<DirectiveProblem>,
    },
    #[error(transparent)]
    Store(BlobError),
}

impl PlanError {
    /// The file and line of the directive at fault, if the error has one.
    pub fn location(&self) -> Option<(&Path, u32)> {
        match self {
            PlanError::Directive { file, line, .. } => Some((file, *line)),
            _ => None,
        }
    }
}

/// What is wrong with one meta-command of a script.
#[derive(Debug, thiserror::Error)]
pub enum DirectiveProblem {
    #[error("\\{directive} {arg}: cannot read {}: {reason}; {hint}", path.display())]
    Unreadable {
        directive: String,
        arg: String,
        path: PathBuf,
        reason: String,
        hint: String,
    },
    #[error("include cycle {chain}; remove one of these includes")]
    Cycle { chain: String },
    #[error(
        "\\copy … from program: sqlrs cannot fingerprint a program's output; write the data to a file and use \\copy … from 'file'"
    )]
    CopyProgram,
    #[error(
        "\\{directive}: a backquoted shell command in a file name cannot be fingerprinted; write the path out or pass it as a variable (-v NAME=VALUE)"
    )]
    Backtick { directive: String },
    #[error(
        "\\{directive} -: a script cannot read another script from stdin; include a file instead"
    )]
    StdinInclude { directive: String },
    #[error("\\{directive} needs a file name, e.g. \\{directive} schema.sql")]
    MissingArgument { directive: String },
    #[error("\\{directive}: unterminated quoted string; close the quote on the same line")]
    Unterminated { directive: String },
    #[error(
        "\\copy{args}: {detail}; psql's syntax is \\copy table [(columns)] from 'file' [options]"
    )]
    BadCopy { args: String, detail: String },
    #[error(
        "\\{directive} ON_ERROR_STOP: sqlrs always runs psql with ON_ERROR_STOP on so that a failing step stops and leaves no state; remove this line"
    )]
    OnErrorStop { directive: String },
    #[error("\\{directive} {arg}: ~user paths are not supported; write the path out")]
    TildeUser { directive: String, arg: String },
}

/// Plans a psql request into steps. With `blobs`, every input is ingested
/// into the store and the digests are those of the stored copies; without,
/// inputs are only hashed (plan only).
pub fn plan_psql(req: &PsqlRequest, blobs: Option<&BlobStore>) -> Result<Vec<Step>, PlanError> {
    if !req.cwd.is_absolute() {
        return Err(PlanError::RelativeCwd(req.cwd.to_owned()));
    }
    let cwd = normalize(req.cwd);
    let inv = args::parse(req.args)?;
    if inv.actions.is_empty() {
        return Err(PlanError::NoSteps);
    }
    let stdin_uses = inv
        .actions
        .iter()
        .filter(|a| matches!(a, Action::File(f) if f == "-"))
        .count();
    if stdin_uses > 1 {
        return Err(PlanError::StdinTwice);
    }
    if stdin_uses == 1 && req.stdin.is_none() {
        return Err(PlanError::MissingStdin);
    }
    let vars: Vec<(String, String)> = inv.vars.into_iter().collect();
    let mut loader = Loader::new(blobs);
    let mut steps = Vec::with_capacity(inv.actions.len());
    for action in &inv.actions {
        let mut walk = Walk::new(&mut loader, &cwd, &vars);
        let (kind, summary, node) = match action {
            Action::File(arg) if arg == "-" => {
                let bytes = req.stdin.unwrap_or_default();
                let (digest, node) = walk.stdin(bytes)?;
                (StepKind::Stdin { digest }, "-f - (stdin)".to_owned(), node)
            }
            Action::File(arg) => {
                let (path, node) = walk.main_file(arg)?;
                (StepKind::File { path }, format!("-f {arg}"), node)
            }
            Action::Command(sql) => {
                let node = walk.command(sql)?;
                (
                    StepKind::Command { sql: sql.clone() },
                    format!("-c {}", shorten(sql, 60)),
                    node,
                )
            }
        };
        let inputs = walk.into_inputs();
        let fingerprint = fingerprint(&kind, &node, &vars, inv.single_transaction);
        steps.push(Step {
            summary,
            fingerprint,
            inputs,
            kind,
            vars: vars.clone(),
            single_transaction: inv.single_transaction,
            cwd: cwd.clone(),
        });
    }
    Ok(steps)
}

fn fingerprint(
    kind: &StepKind,
    node: &Digest,
    vars: &[(String, String)],
    single_transaction: bool,
) -> Fingerprint {
    let tag: &[u8] = match kind {
        StepKind::File { .. } => b"file",
        StepKind::Command { .. } => b"command",
        StepKind::Stdin { .. } => b"stdin",
    };
    let mut h = FieldHasher::new("psql-step");
    h.field(tag).field(&node.0);
    h.field(&(vars.len() as u64).to_le_bytes());
    for (name, value) in vars {
        h.field(name.as_bytes()).field(value.as_bytes());
    }
    h.field(&[u8::from(single_transaction)]);
    h.finish()
}

/// Collapses whitespace and cuts to `max` characters (with `…`).
fn shorten(sql: &str, max: usize) -> String {
    let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max - 1).collect();
        format!("{}…", cut.trim_end())
    }
}

/// Lexical normalisation of an absolute path: drops `.`, resolves `..`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// A short reason for an I/O failure on a user's file.
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        io::ErrorKind::IsADirectory => "it is a directory".to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests;

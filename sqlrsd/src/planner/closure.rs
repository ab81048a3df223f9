//! Walks one step's include closure as psql would run it, folding it into a
//! Merkle hash (content, then each include's hash and each data digest in
//! directive order) and collecting the files the step reads.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::args::{parse_bool, valid_variable_name};
use super::lexer::{Lexer, Meta};
use super::meta::{CopyTarget, Options, Unterminated, Vars, parse_copy};
use super::{DirectiveProblem, Input, InputRole, PlanError, describe, normalize};
use crate::blobs::{self, BlobError, BlobStore};
use crate::ids::{Digest, FieldHasher};

/// Why a user's file could not be loaded.
enum LoadError {
    User(io::Error),
    Store(BlobError),
}

impl From<BlobError> for LoadError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::Read { source, .. } => LoadError::User(source),
            other => LoadError::Store(other),
        }
    }
}

/// Reads each user file once per plan (so every step sees the same bytes),
/// ingesting it into the blob store when there is one.
pub(super) struct Loader<'a> {
    blobs: Option<&'a BlobStore>,
    scripts: HashMap<PathBuf, (Digest, Rc<[u8]>)>,
    data: HashMap<PathBuf, Digest>,
}

impl<'a> Loader<'a> {
    pub fn new(blobs: Option<&'a BlobStore>) -> Self {
        Loader {
            blobs,
            scripts: HashMap::new(),
            data: HashMap::new(),
        }
    }

    fn script(&mut self, path: &Path) -> Result<(Digest, Rc<[u8]>), LoadError> {
        if let Some(hit) = self.scripts.get(path) {
            return Ok(hit.clone());
        }
        let bytes = match (self.blobs, self.data.get(path)) {
            (Some(store), Some(d)) => {
                let stored = store.path_of(d);
                fs::read(&stored).map_err(|source| {
                    LoadError::Store(BlobError::Store {
                        path: stored,
                        source,
                    })
                })?
            }
            _ => fs::read(path).map_err(LoadError::User)?,
        };
        let digest = self.bytes(&bytes).map_err(LoadError::Store)?;
        let hit = (digest, Rc::<[u8]>::from(bytes));
        self.scripts.insert(path.to_owned(), hit.clone());
        Ok(hit)
    }

    fn data(&mut self, path: &Path) -> Result<Digest, LoadError> {
        if let Some(d) = self.data.get(path) {
            return Ok(*d);
        }
        if let Some((d, _)) = self.scripts.get(path) {
            return Ok(*d);
        }
        let digest = match self.blobs {
            Some(store) => store.ingest_file(path)?,
            None => blobs::digest_file(path)?,
        };
        self.data.insert(path.to_owned(), digest);
        Ok(digest)
    }

    fn bytes(&self, bytes: &[u8]) -> Result<Digest, BlobError> {
        match self.blobs {
            Some(store) => store.ingest_bytes(bytes),
            None => Ok(Digest::of(bytes)),
        }
    }
}

/// Where a script comes from: a file, a `-c` command, or stdin.
#[derive(Debug, Clone, Copy)]
enum Origin<'p> {
    File(&'p Path),
    Command,
    Stdin,
}

impl Origin<'_> {
    fn name(&self) -> PathBuf {
        match self {
            Origin::File(p) => p.to_path_buf(),
            Origin::Command => PathBuf::from("<command>"),
            Origin::Stdin => PathBuf::from("<stdin>"),
        }
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// psql's `expand_tilde`: `~` and `~/…` are the home folder; None for `~user`.
fn expand_tilde(path: &[u8]) -> Option<Vec<u8>> {
    let Some(rest) = path.strip_prefix(b"~") else {
        return Some(path.to_vec());
    };
    let user_end = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
    if user_end > 0 {
        return None;
    }
    match std::env::var_os("HOME") {
        Some(home) => {
            let mut out = home.into_vec();
            out.extend_from_slice(rest);
            Some(out)
        }
        None => Some(path.to_vec()),
    }
}

/// The walk of one step: psql's working directory and variables as they
/// evolve through the closure, the include stack, and the inputs seen.
pub(super) struct Walk<'l, 'a> {
    loader: &'l mut Loader<'a>,
    cwd: PathBuf,
    vars: Vars,
    stack: Vec<PathBuf>,
    inputs: Vec<Input>,
    seen: HashSet<PathBuf>,
    from_stdin: bool,
}

/// A directive's failure at `origin`:`line`.
fn at(origin: Origin, line: u32, problem: DirectiveProblem) -> PlanError {
    PlanError::Directive {
        file: origin.name(),
        line,
        problem: Box::new(problem),
    }
}

/// A user's file that could not be read by the directive at `site`.
fn unreadable(site: Site, name: &[u8], path: &Path, e: LoadError, mut hint: String) -> PlanError {
    match e {
        LoadError::Store(e) => PlanError::Store(e),
        LoadError::User(e) => {
            let arg = lossy(name);
            if e.kind() == io::ErrorKind::NotFound && arg.contains(':') {
                hint.push_str(
                    " (variables set by \\gset, \\prompt or \\getenv are not known when planning; pass the value with -v NAME=VALUE)",
                );
            }
            at(
                site.origin,
                site.line,
                DirectiveProblem::Unreadable {
                    directive: site.directive.to_owned(),
                    arg,
                    path: path.to_owned(),
                    reason: describe(&e),
                    hint,
                },
            )
        }
    }
}

/// The directive being resolved: where it is and which command it is.
#[derive(Clone, Copy)]
struct Site<'s> {
    origin: Origin<'s>,
    line: u32,
    directive: &'s str,
}

impl<'l, 'a> Walk<'l, 'a> {
    pub fn new(loader: &'l mut Loader<'a>, cwd: &Path, vars: &[(String, String)]) -> Self {
        Walk {
            loader,
            cwd: cwd.to_owned(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            stack: Vec::new(),
            inputs: Vec::new(),
            seen: HashSet::new(),
            from_stdin: false,
        }
    }

    pub fn into_inputs(self) -> Vec<Input> {
        self.inputs
    }

    /// `-f FILE`: its absolute path and closure hash.
    pub fn main_file(&mut self, arg: &str) -> Result<(PathBuf, Digest), PlanError> {
        let path = normalize(&self.cwd.join(arg));
        let (digest, bytes) = self.loader.script(&path).map_err(|e| match e {
            LoadError::User(e) => PlanError::MainFile {
                arg: arg.to_owned(),
                path: path.clone(),
                cwd: self.cwd.clone(),
                reason: describe(&e),
            },
            LoadError::Store(e) => PlanError::Store(e),
        })?;
        self.add_input(&path, digest, InputRole::Main);
        self.stack.push(path.clone());
        let node = self.script(Origin::File(&path), &bytes, digest, false)?;
        self.stack.pop();
        Ok((path, node))
    }

    /// `-f -`: the digest of the script and its closure hash.
    pub fn stdin(&mut self, bytes: &[u8]) -> Result<(Digest, Digest), PlanError> {
        let digest = self.loader.bytes(bytes).map_err(PlanError::Store)?;
        self.from_stdin = true;
        let node = self.script(Origin::Stdin, bytes, digest, false)?;
        Ok((digest, node))
    }

    /// `-c SQL`: psql runs it as one query, unless it starts with a backslash,
    /// in which case it runs that one meta-command.
    pub fn command(&mut self, sql: &str) -> Result<Digest, PlanError> {
        let digest = Digest::of(sql.as_bytes());
        let meta_command = sql.starts_with('\\');
        let content = if meta_command { sql.as_bytes() } else { b"" };
        let node = self.script(Origin::Command, content, digest, true)?;
        Ok(node)
    }

    fn add_input(&mut self, path: &Path, digest: Digest, role: InputRole) {
        if self.seen.insert(path.to_owned()) {
            self.inputs.push(Input {
                path: path.to_owned(),
                digest,
                role,
            });
        }
    }

    /// Hashes one script: its digest, then every include and data file in
    /// directive order. `first_only` stops after the first meta-command.
    fn script(
        &mut self,
        origin: Origin,
        content: &[u8],
        digest: Digest,
        first_only: bool,
    ) -> Result<Digest, PlanError> {
        let mut node = FieldHasher::new("psql-script");
        node.field(&digest.0);
        let mut lexer = Lexer::new(content);
        while let Some(meta) = lexer.next_meta() {
            let fail = |problem| at(origin, meta.line, problem);
            let directive = lossy(meta.name);
            match meta.name {
                b"i" | b"include" | b"ir" | b"include_relative" => {
                    let child = self.include(origin, &meta, &directive)?;
                    node.field(b"include").field(&child.0);
                }
                b"copy" => match parse_copy(meta.args) {
                    Err(detail) => {
                        return Err(fail(DirectiveProblem::BadCopy {
                            args: lossy(meta.args).trim_end().to_owned(),
                            detail,
                        }));
                    }
                    Ok(CopyTarget::FromFile(name)) => {
                        let digest = self.data_file(origin, &meta, &directive, &name)?;
                        node.field(b"data").field(&digest.0);
                    }
                    Ok(CopyTarget::FromProgram) => return Err(fail(DirectiveProblem::CopyProgram)),
                    Ok(CopyTarget::FromStdin) => lexer.expect_copy_data(),
                    Ok(CopyTarget::FromPstdin) if self.from_stdin => lexer.expect_copy_data(),
                    Ok(CopyTarget::FromPstdin | CopyTarget::To) => {}
                },
                b"lo_import" => {
                    let name = self.file_option(origin, &meta, &directive)?;
                    let digest = self.data_file(origin, &meta, &directive, &name)?;
                    node.field(b"data").field(&digest.0);
                }
                b"set" => self.set(&meta, &directive).map_err(fail)?,
                b"unset" => self.unset(&meta, &directive).map_err(fail)?,
                b"cd" => self.cd(origin, &meta, &directive)?,
                b"getenv" => self.forget_option(&meta, 0),
                b"prompt" => self.forget_option(&meta, usize::MAX),
                _ => {}
            }
            if first_only {
                break;
            }
        }
        Ok(node.finish())
    }

    /// The file-name option of `\i`, `\lo_import`, …, tilde-expanded.
    fn file_option(
        &self,
        origin: Origin,
        meta: &Meta,
        directive: &str,
    ) -> Result<Vec<u8>, PlanError> {
        let fail = |problem| at(origin, meta.line, problem);
        let directive = directive.to_owned();
        let opt = Options::new(meta.args, &self.vars)
            .next(true)
            .map_err(|Unterminated| {
                fail(DirectiveProblem::Unterminated {
                    directive: directive.clone(),
                })
            })?
            .ok_or_else(|| {
                fail(DirectiveProblem::MissingArgument {
                    directive: directive.clone(),
                })
            })?;
        if opt.backtick {
            return Err(fail(DirectiveProblem::Backtick { directive }));
        }
        expand_tilde(&opt.text).ok_or_else(|| {
            fail(DirectiveProblem::TildeUser {
                directive,
                arg: lossy(&opt.text),
            })
        })
    }

    fn include(
        &mut self,
        origin: Origin,
        meta: &Meta,
        directive: &str,
    ) -> Result<Digest, PlanError> {
        let name = self.file_option(origin, meta, directive)?;
        if name == b"-" {
            return Err(at(
                origin,
                meta.line,
                DirectiveProblem::StdinInclude {
                    directive: directive.to_owned(),
                },
            ));
        }
        let relative = matches!(directive, "ir" | "include_relative");
        let base = match (relative, origin) {
            (true, Origin::File(file)) => file.parent().unwrap_or(Path::new("/")).to_owned(),
            _ => self.cwd.clone(),
        };
        let path = normalize(&base.join(OsStr::from_bytes(&name)));
        if let Some(i) = self.stack.iter().position(|p| *p == path) {
            let chain = self.stack[i..]
                .iter()
                .chain([&path])
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" → ");
            return Err(at(origin, meta.line, DirectiveProblem::Cycle { chain }));
        }
        let (digest, bytes) = match self.loader.script(&path) {
            Ok(hit) => hit,
            Err(e) => {
                let hint = if relative {
                    format!(
                        "\\{directive} paths are relative to the folder of the including file, {}",
                        base.display()
                    )
                } else {
                    format!(
                        "\\{directive} paths are relative to psql's working directory {}; use \\ir for a path relative to the including file",
                        self.cwd.display()
                    )
                };
                let site = Site {
                    origin,
                    line: meta.line,
                    directive,
                };
                return Err(unreadable(site, &name, &path, e, hint));
            }
        };
        self.add_input(&path, digest, InputRole::Include);
        self.stack.push(path.clone());
        let child = self.script(Origin::File(&path), &bytes, digest, false);
        self.stack.pop();
        child
    }

    /// A data file read by `\copy … from` or `\lo_import`, relative to
    /// psql's working directory.
    fn data_file(
        &mut self,
        origin: Origin,
        meta: &Meta,
        directive: &str,
        name: &[u8],
    ) -> Result<Digest, PlanError> {
        let name = expand_tilde(name).ok_or_else(|| {
            at(
                origin,
                meta.line,
                DirectiveProblem::TildeUser {
                    directive: directive.to_owned(),
                    arg: lossy(name),
                },
            )
        })?;
        let path = normalize(&self.cwd.join(OsStr::from_bytes(&name)));
        match self.loader.data(&path) {
            Ok(digest) => {
                self.add_input(&path, digest, InputRole::Data);
                Ok(digest)
            }
            Err(e) => {
                let hint = format!(
                    "\\{directive} paths are relative to psql's working directory {}",
                    self.cwd.display()
                );
                let site = Site {
                    origin,
                    line: meta.line,
                    directive,
                };
                Err(unreadable(site, &name, &path, e, hint))
            }
        }
    }

    /// `\set NAME VALUE…`: later directives in the closure see the variable.
    fn set(&mut self, meta: &Meta, directive: &str) -> Result<(), DirectiveProblem> {
        let unterminated = |Unterminated| DirectiveProblem::Unterminated {
            directive: directive.to_owned(),
        };
        let mut opts = Options::new(meta.args, &self.vars);
        let Some(name) = opts.next(false).map_err(unterminated)? else {
            return Ok(());
        };
        let value = opts.rest_concatenated().map_err(unterminated)?;
        if name.text == b"ON_ERROR_STOP" && parse_bool(&value) != Some(true) {
            return Err(DirectiveProblem::OnErrorStop {
                directive: directive.to_owned(),
            });
        }
        if valid_variable_name(&name.text) {
            self.vars.insert(name.text, value);
        }
        Ok(())
    }

    /// `\unset NAME`.
    fn unset(&mut self, meta: &Meta, directive: &str) -> Result<(), DirectiveProblem> {
        let name = Options::new(meta.args, &self.vars)
            .next(false)
            .map_err(|Unterminated| DirectiveProblem::Unterminated {
                directive: directive.to_owned(),
            })?;
        if let Some(name) = name {
            if name.text == b"ON_ERROR_STOP" {
                return Err(DirectiveProblem::OnErrorStop {
                    directive: directive.to_owned(),
                });
            }
            self.vars.remove(&name.text);
        }
        Ok(())
    }

    /// `\cd [DIR]`: later `\i` and `\copy` paths start there.
    fn cd(&mut self, origin: Origin, meta: &Meta, directive: &str) -> Result<(), PlanError> {
        let has_arg = Options::new(meta.args, &self.vars)
            .next(true)
            .ok()
            .flatten()
            .is_some();
        let dir = if has_arg {
            self.file_option(origin, meta, directive)?
        } else {
            expand_tilde(b"~").unwrap_or_default()
        };
        self.cwd = normalize(&self.cwd.join(OsStr::from_bytes(&dir)));
        Ok(())
    }

    /// `\getenv NAME ENV` and `\prompt [TEXT] NAME` set a variable to a value
    /// unknown when planning: later `:NAME` stays literal.
    fn forget_option(&mut self, meta: &Meta, index: usize) {
        let mut opts = Options::new(meta.args, &self.vars);
        let mut all = Vec::new();
        while let Ok(Some(opt)) = opts.next(false) {
            all.push(opt.text);
        }
        let name = if index == usize::MAX {
            all.pop()
        } else {
            all.into_iter().nth(index)
        };
        if let Some(name) = name {
            self.vars.remove(&name);
        }
    }
}

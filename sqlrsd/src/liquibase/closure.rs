//! The closure of a Liquibase changelog: every file Liquibase reads for it,
//! found exactly as Liquibase 4.28 finds it, with content digests; the plan
//! key; and the execution folder that reproduces the user's relative layout.
//!
//! Liquibase names every file by its path inside the search path (the
//! `--search-path` folders, by default the working directory) and looks each
//! name up in every search-path folder in turn; a name found in two folders
//! is an error. `relativeToChangelogFile` names are resolved next to the
//! including changelog and normalised (`db/../x.xml` is `x.xml`); other
//! names only lose a leading `./` or `/`. `includeAll` takes every changelog
//! (`.xml`, `.yaml`, `.yml`, `.json`, `.sql`) below a folder, following
//! symbolic links, in the order of their names. Changelog parameters
//! (`-D`, `<property>`) are expanded in file names, the first definition
//! winning; a property's `dbms` is honoured, its `context` and `labels`
//! are not evaluated (they are rare on properties used in paths).
//!
//! A file a change reads (`sqlFile`, `loadData`, …) that does not exist is
//! not an error here: Liquibase only needs it when the changeset is selected
//! (contexts, labels), and says so when planning. It is listed in
//! [`Closure::absent`], so creating it changes the plan key.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::changelog::{self, ChangesetDef, Format, ItemKind};
use super::{LbArgs, LbError, PlannedChangeset};
use crate::blobs::BlobStore;
use crate::ids::{Digest, FieldHasher};

/// One file Liquibase reads for the changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosureFile {
    /// Its name inside the search path, `/`-separated, as Liquibase resolves
    /// it (and records it in DATABASECHANGELOG, for changelogs).
    pub name: String,
    /// The user's file.
    pub path: PathBuf,
    /// SHA-256 of its content when the closure was read.
    pub digest: Digest,
    pub role: FileRole,
}

/// Why Liquibase reads a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileRole {
    /// A changelog: the root one, or one pulled in by `include`/`includeAll`.
    Changelog,
    /// Java properties read by `<property file=…>`.
    Properties,
    /// A file a change reads: `sqlFile`, `createProcedure`/`createView`
    /// `path`, `loadData`/`loadUpdateData` CSV, `valueClobFile`/`valueBlobFile`.
    Resource,
}

impl FileRole {
    fn tag(self) -> &'static [u8] {
        match self {
            FileRole::Changelog => b"changelog",
            FileRole::Properties => b"properties",
            FileRole::Resource => b"resource",
        }
    }
}

/// Everything Liquibase reads for one `update` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    /// The root changelog's name in the search path (pass it as
    /// `--changelog-file` in the execution folder).
    pub changelog: String,
    /// Every file read, each once, in the order Liquibase reaches them.
    pub files: Vec<ClosureFile>,
    /// Names of files changes refer to that do not exist (sorted).
    pub absent: Vec<String>,
    /// Folder names above the search root that names starting with `..`
    /// climb into (the user's own folder names, nearest last).
    above: Vec<String>,
    changesets: Vec<SourceChangeset>,
    args: Digest,
}

/// A changeset as written in the closure, for fingerprints.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceChangeset {
    filename: String,
    id: String,
    author: String,
    run_always: bool,
    /// Its definition plus the files its changes read.
    inputs: Digest,
}

impl Closure {
    /// The key of a plan made from this closure: the root changelog's name,
    /// the options that change what runs (contexts, labels, default schema,
    /// parameters), and every file's name, role and content digest. The
    /// search path itself is left out: what it resolves to is covered.
    /// Combine it with the Liquibase version ([`Liquibase::version`]): a
    /// different release may compute other checksums.
    ///
    /// [`Liquibase::version`]: super::Liquibase::version
    pub fn digest(&self) -> Digest {
        let mut h = FieldHasher::new("lb-closure");
        h.field(&self.args.0);
        let mut files: Vec<&ClosureFile> = self.files.iter().collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        h.field(&(files.len() as u64).to_le_bytes());
        for f in files {
            h.field(f.name.as_bytes())
                .field(f.role.tag())
                .field(&f.digest.0);
        }
        h.field(&(self.absent.len() as u64).to_le_bytes());
        for name in &self.absent {
            h.field(name.as_bytes());
        }
        h.finish()
    }

    /// The digest of what defines `changeset` in the closure: its definition
    /// in its changelog and the files its changes read. A changeset the
    /// closure cannot match (e.g. an id built from a parameter sqlrs does not
    /// know) gets the whole closure's digest, so any edit invalidates it.
    pub fn changeset_inputs(&self, changeset: &PlannedChangeset) -> Digest {
        self.source(changeset)
            .map(|c| c.inputs)
            .unwrap_or_else(|| self.digest())
    }

    /// Checks that `plan` can be built one changeset per Liquibase run: a
    /// `runAlways` changeset followed by another would run again in place
    /// of the next one (`update-count 1` picks it first every time).
    pub fn check_plan(&self, plan: &[PlannedChangeset]) -> Result<(), LbError> {
        let Some((_, before_last)) = plan.split_last() else {
            return Ok(());
        };
        match before_last
            .iter()
            .find(|p| self.source(p).is_some_and(|c| c.run_always))
        {
            Some(p) => Err(LbError::RunAlways {
                changeset: p.label(),
            }),
            None => Ok(()),
        }
    }

    fn source(&self, changeset: &PlannedChangeset) -> Option<&SourceChangeset> {
        self.changesets.iter().find(|c| {
            c.id == changeset.id && c.author == changeset.author && c.filename == changeset.filename
        })
    }

    /// Where to point `--search-path` inside an execution folder `root`: the
    /// root itself, or a folder below it when names climb above the search
    /// root with `..`.
    pub fn search_root(&self, root: &Path) -> PathBuf {
        self.above.iter().fold(root.to_owned(), |p, d| p.join(d))
    }

    /// Copies every file into the blob store, checking each against the
    /// digest read when planning ([`LbError::Changed`] if it was edited since).
    pub fn ingest(&self, blobs: &BlobStore) -> Result<(), LbError> {
        for f in &self.files {
            if blobs.ingest_file(&f.path)? != f.digest {
                return Err(LbError::Changed {
                    path: f.path.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Reads the changelog of `args` and everything it pulls in. `cwd` is the
/// user's working directory: relative search-path entries, and the default
/// search path, start there.
pub fn closure(args: &LbArgs, cwd: &Path) -> Result<Closure, LbError> {
    let roots: Vec<PathBuf> = if args.search_path.is_empty() {
        vec![cwd.to_owned()]
    } else {
        args.search_path
            .iter()
            .map(|entry| lexical(&cwd.join(entry)))
            .collect()
    };
    let name = normalize_name(&args.changelog_file);
    let mut walker = Walker {
        roots,
        params: args.params.clone(),
        files: Vec::new(),
        read: HashMap::new(),
        absent: BTreeSet::new(),
        stack: Vec::new(),
        changesets: Vec::new(),
    };
    let path = walker
        .find(&name)?
        .ok_or_else(|| LbError::ChangelogNotFound {
            name: args.changelog_file.clone(),
            roots: walker.roots.clone(),
        })?;
    if Format::of(&name).is_none() {
        return Err(LbError::UnknownFormat {
            file: path,
            line: None,
            target: name,
        });
    }
    walker.changelog(&name, &path)?;

    let depth = walker
        .files
        .iter()
        .map(|f| f.name.split('/').take_while(|c| *c == "..").count())
        .chain(
            walker
                .absent
                .iter()
                .map(|n| n.split('/').take_while(|c| *c == "..").count()),
        )
        .max()
        .unwrap_or(0);
    let mut h = FieldHasher::new("lb-args");
    h.field(name.as_bytes());
    args.hash_effect(&mut h);
    Ok(Closure {
        changelog: name,
        above: folders_above(&walker.roots[0], depth),
        files: walker.files,
        absent: walker.absent.into_iter().collect(),
        changesets: walker.changesets,
        args: h.finish(),
    })
}

/// The last `depth` folder names of `root` (padded with `_` at `/`).
fn folders_above(root: &Path, depth: usize) -> Vec<String> {
    let names: Vec<String> = root
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let mut out: Vec<String> = names.iter().rev().take(depth).rev().cloned().collect();
    while out.len() < depth {
        out.insert(0, "_".into());
    }
    out
}

struct Walker {
    roots: Vec<PathBuf>,
    params: BTreeMap<String, String>,
    files: Vec<ClosureFile>,
    /// Names already read, to their index in `files`.
    read: HashMap<String, usize>,
    absent: BTreeSet<String>,
    /// The changelogs being read, outermost first (for cycles).
    stack: Vec<String>,
    changesets: Vec<SourceChangeset>,
}

impl Walker {
    /// Reads the changelog `name` (found at `path`) and what it pulls in.
    fn changelog(&mut self, name: &str, path: &Path) -> Result<(), LbError> {
        if self.stack.iter().any(|n| n == name) {
            let mut chain = self.stack.clone();
            chain.push(name.to_owned());
            return Err(LbError::Cycle {
                chain: chain.join(" -> "),
            });
        }
        if self.read.contains_key(name) {
            return Ok(());
        }
        let bytes = self.add(name, path, FileRole::Changelog)?;
        let format = Format::of(name).expect("callers include only known formats");
        let text = String::from_utf8_lossy(&bytes);
        let parsed = changelog::parse(format, &text).map_err(|e| LbError::Syntax {
            file: path.to_owned(),
            line: e.line,
            message: e.message,
        })?;

        self.stack.push(name.to_owned());
        let mut inputs: Vec<Reads> = vec![Vec::new(); parsed.changesets.len()];
        for item in &parsed.items {
            let from = Origin {
                name,
                path,
                line: item.line,
            };
            self.follow(&from, &item.kind, &mut inputs)?;
        }
        self.stack.pop();
        self.record_changesets(
            name,
            parsed.logical_path.as_deref(),
            &parsed.changesets,
            inputs,
        );
        Ok(())
    }

    /// Follows one reference of the changelog `from`; files read by changes
    /// are noted in `inputs` under their changeset.
    fn follow(
        &mut self,
        from: &Origin,
        item: &ItemKind,
        inputs: &mut [Reads],
    ) -> Result<(), LbError> {
        match item {
            ItemKind::Property { name, value, dbms } => {
                if dbms.as_deref().is_none_or(applies_to_postgresql) {
                    let value = self.expand(value);
                    self.params.entry(name.clone()).or_insert(value);
                }
            }
            ItemKind::PropertyFile {
                file,
                relative,
                error_if_missing,
            } => {
                let target = self.target(from.name, file, *relative);
                match self.find(&target)? {
                    Some(found) => {
                        let bytes = self.add(&target, &found, FileRole::Properties)?;
                        for (k, v) in java_properties(&String::from_utf8_lossy(&bytes)) {
                            self.params.entry(k).or_insert(v);
                        }
                    }
                    None if *error_if_missing => {
                        return Err(self.not_found(from, target, "property file", *relative));
                    }
                    None => {
                        self.absent.insert(target);
                    }
                }
            }
            ItemKind::Include {
                file,
                relative,
                error_if_missing,
            } => {
                let target = self.target(from.name, file, *relative);
                match self.find(&target)? {
                    Some(_) if Format::of(&target).is_none() => {
                        return Err(LbError::UnknownFormat {
                            file: from.path.to_owned(),
                            line: from.line,
                            target,
                        });
                    }
                    Some(found) => self.changelog(&target, &found)?,
                    None if *error_if_missing => {
                        return Err(self.not_found(from, target, "included changelog", *relative));
                    }
                    None => {
                        self.absent.insert(target);
                    }
                }
            }
            ItemKind::IncludeAll {
                path,
                relative,
                error_if_missing,
                min_depth,
                max_depth,
                ends_with,
            } => {
                let target = self.target(from.name, path, *relative);
                let target = target.trim_end_matches('/');
                let found = self.list(target, *min_depth, *max_depth, ends_with)?;
                if found.is_empty() && *error_if_missing {
                    return Err(LbError::IncludeAllEmpty {
                        file: from.path.to_owned(),
                        line: from.line,
                        target: path.clone(),
                        relative: *relative,
                        roots: self.roots.clone(),
                    });
                }
                for child in found {
                    let found = self.find(&child)?.expect("listed files exist");
                    self.changelog(&child, &found)?;
                }
            }
            ItemKind::Resource {
                path,
                relative,
                changeset,
            } => {
                let target = self.target(from.name, path, *relative);
                let digest = match self.find(&target)? {
                    Some(found) => Some(self.add_resource(&target, &found)?),
                    None => {
                        self.absent.insert(target.clone());
                        None
                    }
                };
                if let Some(i) = changeset {
                    inputs[*i].push((target, digest));
                }
            }
        }
        Ok(())
    }

    fn record_changesets(
        &mut self,
        name: &str,
        logical: Option<&str>,
        defs: &[ChangesetDef],
        inputs: Vec<Reads>,
    ) {
        let changelog_name = match logical {
            Some(l) => logical_name(&self.expand(l)),
            None => name.to_owned(),
        };
        for (def, reads) in defs.iter().zip(inputs) {
            let mut h = FieldHasher::new("lb-changeset-inputs");
            h.field(&def.definition.0);
            h.field(&(reads.len() as u64).to_le_bytes());
            for (file, digest) in &reads {
                h.field(file.as_bytes());
                match digest {
                    Some(d) => h.field(&d.0),
                    None => h.field(b"absent"),
                };
            }
            let filename = match &def.logical_path {
                Some(l) => logical_name(&self.expand(l)),
                None => changelog_name.clone(),
            };
            self.changesets.push(SourceChangeset {
                filename,
                id: self.expand(&def.id),
                author: self.expand(&def.author),
                run_always: def.run_always,
                inputs: h.finish(),
            });
        }
    }

    fn not_found(
        &self,
        from: &Origin,
        target: String,
        element: &'static str,
        relative: bool,
    ) -> LbError {
        LbError::IncludeNotFound {
            file: from.path.to_owned(),
            line: from.line,
            element,
            target,
            relative,
            roots: self.roots.clone(),
        }
    }

    /// The name a reference in changelog `current` resolves to.
    fn target(&self, current: &str, path: &str, relative: bool) -> String {
        let path = self.expand(path);
        if relative {
            resolve_sibling(current, &path)
        } else {
            normalize_name(&path)
        }
    }

    /// `${name}` replaced by known parameters; unknown ones stay as written.
    fn expand(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find('}') {
                Some(end) if self.params.contains_key(&after[..end]) => {
                    out.push_str(&self.params[&after[..end]]);
                    rest = &after[end + 1..];
                }
                _ => {
                    out.push_str("${");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The file named `name` in the search path, if any.
    fn find(&self, name: &str) -> Result<Option<PathBuf>, LbError> {
        let found: Vec<PathBuf> = self
            .roots
            .iter()
            .map(|root| root.join(name))
            .filter(|p| p.is_file())
            .collect();
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.into_iter().next()),
            _ => Err(LbError::Ambiguous {
                name: name.to_owned(),
                found,
            }),
        }
    }

    /// The changelogs below folder `dir` of the search path, by name.
    fn list(
        &self,
        dir: &str,
        min_depth: u32,
        max_depth: u32,
        ends_with: &str,
    ) -> Result<Vec<String>, LbError> {
        let mut names = BTreeSet::new();
        for root in &self.roots {
            let base = if dir.is_empty() {
                root.clone()
            } else {
                root.join(dir)
            };
            if !base.is_dir() {
                continue;
            }
            let mut seen = HashSet::new();
            let mut found = Vec::new();
            walk_dir(&base, "", 1, max_depth, &mut seen, &mut found)?;
            for (rel, depth) in found {
                let name = if dir.is_empty() {
                    rel
                } else {
                    format!("{dir}/{rel}")
                };
                if depth >= min_depth
                    && Format::of(&name).is_some()
                    && (ends_with.is_empty() || name.ends_with(ends_with))
                {
                    names.insert(name);
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Reads `path` once under `name` and returns its bytes.
    fn add(&mut self, name: &str, path: &Path, role: FileRole) -> Result<Vec<u8>, LbError> {
        let bytes = fs::read(path).map_err(|source| LbError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.record(name, path, role, Digest::of(&bytes));
        Ok(bytes)
    }

    /// Hashes the resource `path` (without holding it in memory) under `name`.
    fn add_resource(&mut self, name: &str, path: &Path) -> Result<Digest, LbError> {
        if let Some(&i) = self.read.get(name) {
            return Ok(self.files[i].digest);
        }
        let read_err = |source| LbError::Read {
            path: path.to_owned(),
            source,
        };
        let mut hasher = Sha256::new();
        io::copy(&mut File::open(path).map_err(read_err)?, &mut hasher).map_err(read_err)?;
        let digest = Digest(hasher.finalize().into());
        self.record(name, path, FileRole::Resource, digest);
        Ok(digest)
    }

    fn record(&mut self, name: &str, path: &Path, role: FileRole, digest: Digest) {
        if !self.read.contains_key(name) {
            self.read.insert(name.to_owned(), self.files.len());
            self.files.push(ClosureFile {
                name: name.to_owned(),
                path: path.to_owned(),
                digest,
                role,
            });
        }
    }
}

/// The changelog holding a reference, and the reference's line.
struct Origin<'a> {
    name: &'a str,
    path: &'a Path,
    line: Option<u32>,
}

/// The files one changeset's changes read: name and digest (`None`: absent).
type Reads = Vec<(String, Option<Digest>)>;

/// Files below `dir` (following symbolic links, each real folder once), with
/// their `/`-separated path below the includeAll folder and their depth.
fn walk_dir(
    dir: &Path,
    prefix: &str,
    depth: u32,
    max_depth: u32,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<(String, u32)>,
) -> Result<(), LbError> {
    let read_err = |source| LbError::Read {
        path: dir.to_owned(),
        source,
    };
    if depth > max_depth || !seen.insert(fs::canonicalize(dir).map_err(read_err)?) {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            file_name
        } else {
            format!("{prefix}/{file_name}")
        };
        let path = entry.path();
        // `metadata` follows symbolic links, as Liquibase's folder walk does.
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk_dir(&path, &rel, depth + 1, max_depth, seen, out)?,
            Ok(m) if m.is_file() => out.push((rel, depth)),
            _ => {}
        }
    }
    Ok(())
}

/// Liquibase's `DatabaseChangeLog.normalizePath`: the name of a file given
/// without `relativeToChangelogFile` (`..` is kept as written).
pub(crate) fn normalize_name(path: &str) -> String {
    let mut p = path
        .strip_prefix("classpath:")
        .unwrap_or(path)
        .replace('\\', "/");
    while p.contains("//") {
        p = p.replace("//", "/");
    }
    p = p.replace("/./", "/");
    let b = p.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        p = p[2..].to_owned();
    }
    if let Some(rest) = p.strip_prefix("./") {
        p = rest.to_owned();
    }
    if let Some(rest) = p.strip_prefix('/') {
        p = rest.to_owned();
    }
    p
}

/// A `relativeToChangelogFile` name: `path` next to changelog `current`,
/// normalised (`a/b/../c` is `a/c`; leading `..` stay).
pub(crate) fn resolve_sibling(current: &str, path: &str) -> String {
    let path = path.replace('\\', "/");
    if path.starts_with('/') {
        return normalize_name(&path);
    }
    let parent = current.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("");
    let mut parts: Vec<&str> = Vec::new();
    for part in parent.split('/').chain(path.split('/')) {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// A `logicalFilePath` as Liquibase records it: `/` separators, no leading `/`.
fn logical_name(path: &str) -> String {
    let p = path.replace('\\', "/");
    p.strip_prefix('/').map(str::to_owned).unwrap_or(p)
}

/// Whether a `dbms` attribute (`postgresql`, `all`, `!oracle`, lists) selects PostgreSQL.
fn applies_to_postgresql(dbms: &str) -> bool {
    let list: Vec<&str> = dbms
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if list.iter().any(|d| d.eq_ignore_ascii_case("!postgresql")) {
        return false;
    }
    list.iter()
        .any(|d| d.eq_ignore_ascii_case("postgresql") || d.eq_ignore_ascii_case("all"))
        || list.iter().all(|d| d.starts_with('!'))
}

/// `key=value` / `key: value` lines of a Java properties file (`#`, `!` comments).
fn java_properties(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| match l.find(['=', ':']) {
            Some(i) => (l[..i].trim().to_owned(), l[i + 1..].trim().to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect()
}

/// `p` without `.` and with `..` applied to the component before it.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Copies the closure's files from the user's folders into the execution
/// folder `root`, each at its name below [`Closure::search_root`], checking
/// every copy against the planned digest. Returns the folder to pass to
/// Liquibase as `--search-path`.
pub fn materialize(closure: &Closure, root: &Path) -> Result<PathBuf, LbError> {
    let search = closure.search_root(root);
    for f in &closure.files {
        let dest = destination(&search, &f.name)?;
        if copy_hashing(&f.path, &dest)? != f.digest {
            let _ = fs::remove_file(&dest);
            return Err(LbError::Changed {
                path: f.path.clone(),
            });
        }
    }
    Ok(search)
}

/// Like [`materialize`], from the blob store (after [`Closure::ingest`]):
/// hard links where the store is on the same file system, copies elsewhere.
pub fn materialize_from_blobs(
    closure: &Closure,
    blobs: &BlobStore,
    root: &Path,
) -> Result<PathBuf, LbError> {
    let search = closure.search_root(root);
    for f in &closure.files {
        let blob = blobs.path_of(&f.digest);
        let dest = destination(&search, &f.name)?;
        let linked = match fs::hard_link(&blob, &dest) {
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                fs::copy(&blob, &dest).map(|_| ())
            }
            other => other,
        };
        linked.map_err(|source| LbError::Materialize { path: dest, source })?;
    }
    Ok(search)
}

/// `search/name`, with its folders created and no file there yet (a file
/// left by an earlier run could be a link to a stored blob).
fn destination(search: &Path, name: &str) -> Result<PathBuf, LbError> {
    let dest = lexical(&search.join(name));
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| LbError::Materialize { path, source }
    };
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(err(parent))?;
    }
    match fs::remove_file(&dest) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err(&dest)(e)),
        _ => Ok(dest),
    }
}

/// Copies `from` to `to` and returns the digest of the bytes written.
fn copy_hashing(from: &Path, to: &Path) -> Result<Digest, LbError> {
    let mut src = File::open(from).map_err(|source| LbError::Read {
        path: from.to_owned(),
        source,
    })?;
    let write_err = |source| LbError::Materialize {
        path: to.to_owned(),
        source,
    };
    let mut dst = File::create(to).map_err(write_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(LbError::Read {
                    path: from.to_owned(),
                    source,
                });
            }
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(write_err)?;
    }
    Ok(Digest(hasher.finalize().into()))
}

//! The content-addressed blob store (`blobs/sha256/…`) holding every psql input
//! a plan hashed, and the mirror trees psql executes those copies from.
//!
//! What is hashed is what runs (DESIGN §3): the planner ingests each input once,
//! and execution reads the stored copy through a mirror of the user's tree, so
//! relative `\i`, `\ir` and `\copy` paths resolve exactly as in the user's
//! folders while an editor saving a file mid-build cannot change what psql reads.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

use crate::ids::Digest;
use crate::planner::{Step, StepKind};

/// Files are read-only for everyone, folders traversable, so an unprivileged
/// psql or postgres can read them.
const FILE_MODE: u32 = 0o444;
const DIR_MODE: u32 = 0o755;
/// Temp files older than this are leftovers of an interrupted ingest.
const STALE_TEMP: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error(
        "blob store {path}: {source}; check that the sqlrs state directory is writable and not full"
    )]
    Store { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}; check that the file exists and is readable")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "blob {digest} is missing from the store ({path}); plan the chain again so its inputs are ingested"
    )]
    Missing { digest: Digest, path: PathBuf },
    #[error(
        "cannot build the execution folder at {path}: {source}; check free space and permissions of the state directory"
    )]
    Mirror { path: PathBuf, source: io::Error },
}

/// `<store>/blobs`: one read-only file per distinct content, named by its SHA-256.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// How psql runs one step against the mirror tree: arguments without
/// connection flags, its working directory, and the file fed to its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsqlInvocation {
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub stdin: Option<PathBuf>,
}

/// Where psql reported the first error of a step, in the user's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsqlErrorLocation {
    pub file: String,
    pub line: u32,
    pub message: String,
}

impl PsqlErrorLocation {
    /// psql names a file opened by a relative `\i` relative to its working
    /// directory; this makes such a name absolute against the step's `cwd`
    /// (names in `<…>`, like `<stdin>`, stay as they are).
    pub fn resolved_in(mut self, cwd: &Path) -> Self {
        if !self.file.starts_with('/') && !self.file.starts_with('<') {
            let absolute = mirror_path(Path::new("/"), &cwd.join(&self.file));
            self.file = absolute.to_string_lossy().into_owned();
        }
        self
    }
}

impl BlobStore {
    /// Opens (creating it if needed) the store rooted at `root` (`<store>/blobs`).
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        let store = BlobStore {
            root: root.to_owned(),
        };
        for dir in [store.root.clone(), store.sha_dir(), store.tmp_dir()] {
            make_dir(&dir).map_err(|source| BlobError::Store { path: dir, source })?;
        }
        store.remove_stale_temps();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/sha256/<2 hex>/<64 hex>`.
    pub fn path_of(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.sha_dir().join(&hex[..2]).join(hex)
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.path_of(d).is_file()
    }

    /// Stores `bytes` and returns their digest.
    pub fn ingest_bytes(&self, bytes: &[u8]) -> Result<Digest, BlobError> {
        let digest = Digest::of(bytes);
        if self.contains(&digest) {
            self.touch(&digest);
            return Ok(digest);
        }
        let (tmp_path, mut tmp) = self.temp_file()?;
        let written = tmp
            .write_all(bytes)
            .and_then(|()| tmp.sync_all())
            .map_err(|source| self.store_err(&tmp_path, source));
        drop(tmp);
        written.and_then(|()| self.commit(&tmp_path, &digest))?;
        Ok(digest)
    }

    /// Copies the file at `path` into the store, hashing exactly the bytes
    /// written, and returns their digest. The user's file is read once.
    pub fn ingest_file(&self, path: &Path) -> Result<Digest, BlobError> {
        let mut src = File::open(path).map_err(|source| read_err(path, source))?;
        let (tmp_path, mut tmp) = self.temp_file()?;
        let copied = copy_hashing(&mut src, &mut tmp, path, &tmp_path, self);
        // Content-addressed: a blob already stored under this digest holds
        // exactly these bytes, so the copy is dropped unsynced (the common
        // case of a cache hit).
        if let Ok(d) = &copied
            && self.contains(d)
        {
            drop(tmp);
            let _ = fs::remove_file(&tmp_path);
            self.touch(d);
            return Ok(*d);
        }
        let digest = match copied.and_then(|d| {
            tmp.sync_all()
                .map(|()| d)
                .map_err(|source| self.store_err(&tmp_path, source))
        }) {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_file(&tmp_path);
                return Err(e);
            }
        };
        drop(tmp);
        self.commit(&tmp_path, &digest)?;
        Ok(digest)
    }

    /// Builds the mirror of `step`'s inputs under `exec_root` (each input at
    /// `exec_root` + its absolute user path, hard-linked from the store, or
    /// copied across file systems) and returns how to run psql there.
    pub fn materialize(&self, exec_root: &Path, step: &Step) -> Result<PsqlInvocation, BlobError> {
        let mut dirs = Dirs::new(exec_root);
        let cwd = mirror_path(exec_root, &step.cwd);
        dirs.ensure(&cwd)?;
        for input in &step.inputs {
            let blob = self.existing(&input.digest)?;
            let dest = mirror_path(exec_root, &input.path);
            if let Some(parent) = dest.parent() {
                dirs.ensure(parent)?;
            }
            link_or_copy(&blob, &dest)
                .map_err(|source| BlobError::Mirror { path: dest, source })?;
        }

        let mut args: Vec<String> = vec!["-X".into(), "-v".into(), "ON_ERROR_STOP=1".into()];
        for (name, value) in &step.vars {
            args.push("-v".into());
            args.push(format!("{name}={value}"));
        }
        if step.single_transaction {
            args.push("-1".into());
        }
        let mut stdin = None;
        match &step.kind {
            StepKind::File { path } => {
                args.push("-f".into());
                args.push(mirror_path(exec_root, path).to_string_lossy().into_owned());
            }
            StepKind::Command { sql } => {
                args.push("-c".into());
                args.push(sql.clone());
            }
            StepKind::Stdin { digest } => {
                args.push("-f".into());
                args.push("-".into());
                stdin = Some(self.existing(digest)?);
            }
        }
        Ok(PsqlInvocation { args, cwd, stdin })
    }

    /// Marks a blob used now (its modification time), so collection keeps it.
    fn touch(&self, d: &Digest) {
        let path = self.path_of(d);
        if let Err(e) = File::open(&path).and_then(|f| f.set_modified(SystemTime::now())) {
            tracing::debug!("cannot mark {} used: {e}", path.display());
        }
    }

    /// Removes blobs last used before `unused_for` ago that `keep` does not
    /// hold; returns how many and their bytes. Blobs are copies of the
    /// user's inputs: the next plan that needs one stores it again.
    pub fn collect(&self, unused_for: Duration, keep: impl Fn(&Digest) -> bool) -> (usize, u64) {
        let cutoff = SystemTime::now().checked_sub(unused_for);
        let (mut count, mut bytes) = (0, 0);
        let Ok(fans) = fs::read_dir(self.sha_dir()) else {
            return (0, 0);
        };
        for fan in fans.flatten() {
            let Ok(files) = fs::read_dir(fan.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let Some(digest) = name.to_str().and_then(|n| n.parse::<Digest>().ok()) else {
                    continue;
                };
                let Ok(meta) = file.metadata() else {
                    continue;
                };
                let recent = match (meta.modified(), cutoff) {
                    (Ok(m), Some(c)) => m > c,
                    _ => true,
                };
                if recent || keep(&digest) {
                    continue;
                }
                if fs::remove_file(file.path()).is_ok() {
                    count += 1;
                    bytes += meta.len();
                }
            }
        }
        (count, bytes)
    }

    fn existing(&self, d: &Digest) -> Result<PathBuf, BlobError> {
        let path = self.path_of(d);
        if path.is_file() {
            Ok(path)
        } else {
            Err(BlobError::Missing { digest: *d, path })
        }
    }

    fn sha_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn store_err(&self, path: &Path, source: io::Error) -> BlobError {
        BlobError::Store {
            path: path.to_owned(),
            source,
        }
    }

    fn temp_file(&self) -> Result<(PathBuf, File), BlobError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = self
                .tmp_dir()
                .join(format!("{}-{n}-{nanos}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => return Ok((path, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(self.store_err(&path, source)),
            }
        }
    }

    /// Moves a complete, synced temp file to its digest name (or drops it
    /// when that content is stored already).
    fn commit(&self, tmp: &Path, digest: &Digest) -> Result<(), BlobError> {
        let dest = self.path_of(digest);
        let result = (|| {
            if dest.is_file() {
                return fs::remove_file(tmp).map_err(|e| (tmp.to_owned(), e));
            }
            let dir = dest.parent().expect("blob paths have a parent");
            make_dir(dir).map_err(|e| (dir.to_owned(), e))?;
            fs::set_permissions(tmp, fs::Permissions::from_mode(FILE_MODE))
                .map_err(|e| (tmp.to_owned(), e))?;
            fs::rename(tmp, &dest).map_err(|e| (dest.clone(), e))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| (dir.to_owned(), e))
        })();
        result.map_err(|(path, source)| {
            let _ = fs::remove_file(tmp);
            BlobError::Store { path, source }
        })
    }

    fn remove_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE_TEMP);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Streams `src` into `dst`, hashing exactly the bytes written.
fn copy_hashing(
    src: &mut File,
    dst: &mut File,
    src_path: &Path,
    dst_path: &Path,
    store: &BlobStore,
) -> Result<Digest, BlobError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(read_err(src_path, source)),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(|source| store.store_err(dst_path, source))?;
    }
    Ok(Digest(hasher.finalize().into()))
}

/// The SHA-256 of a file's content, streamed (for planning without a store).
pub fn digest_file(path: &Path) -> Result<Digest, BlobError> {
    let mut src = File::open(path).map_err(|source| read_err(path, source))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(read_err(path, source)),
        }
    }
    Ok(Digest(hasher.finalize().into()))
}

fn read_err(path: &Path, source: io::Error) -> BlobError {
    BlobError::Read {
        path: path.to_owned(),
        source,
    }
}

fn make_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Creates mirror folders with mode 0755 (whatever the umask), each once.
struct Dirs<'a> {
    exec_root: &'a Path,
    done: HashSet<PathBuf>,
}

impl<'a> Dirs<'a> {
    fn new(exec_root: &'a Path) -> Self {
        Dirs {
            exec_root,
            done: HashSet::new(),
        }
    }

    fn ensure(&mut self, dir: &Path) -> Result<(), BlobError> {
        if self.done.contains(dir) {
            return Ok(());
        }
        let mirror_err = |path: &Path, source| BlobError::Mirror {
            path: path.to_owned(),
            source,
        };
        make_dir(dir).map_err(|e| mirror_err(dir, e))?;
        let mut current = dir;
        loop {
            if !self.done.insert(current.to_owned()) {
                break;
            }
            fs::set_permissions(current, fs::Permissions::from_mode(DIR_MODE))
                .map_err(|e| mirror_err(current, e))?;
            match current.parent() {
                Some(parent)
                    if current != self.exec_root && current.starts_with(self.exec_root) =>
                {
                    current = parent
                }
                _ => break,
            }
        }
        Ok(())
    }
}

fn link_or_copy(blob: &Path, dest: &Path) -> io::Result<()> {
    match fs::remove_file(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if fs::hard_link(blob, dest).is_ok() {
        return Ok(());
    }
    fs::copy(blob, dest)?;
    fs::set_permissions(dest, fs::Permissions::from_mode(FILE_MODE))
}

/// Where the absolute user path `user` lives inside the mirror at `exec_root`.
pub fn mirror_path(exec_root: &Path, user: &Path) -> PathBuf {
    let mut parts = Vec::new();
    for c in user.components() {
        match c {
            Component::Normal(part) => parts.push(part),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut out = exec_root.to_owned();
    out.extend(parts);
    out
}

fn root_prefix(exec_root: &Path) -> String {
    let root = exec_root.to_string_lossy();
    format!("{}/", root.trim_end_matches('/'))
}

/// Maps a path psql printed (inside the mirror at `exec_root`) back to the
/// user's path. Paths outside the mirror (`<stdin>`, a relative `\i` path,
/// which is relative to the step's working directory) are returned unchanged.
pub fn user_path(exec_root: &Path, reported: &str) -> String {
    match reported.strip_prefix(&root_prefix(exec_root)) {
        Some(rest) => format!("/{rest}"),
        None => reported.to_owned(),
    }
}

/// Rewrites every mirror path in psql's output `text` to the user's path.
pub fn user_text(exec_root: &Path, text: &str) -> String {
    text.replace(&root_prefix(exec_root), "/")
}

/// Finds psql's first `psql:FILE:LINE: ERROR:  msg` report (or psql's own
/// `error:`), with the DETAIL/HINT/LINE/CONTEXT lines that follow it, and
/// maps FILE back to the user's path.
pub fn parse_psql_error(exec_root: &Path, stderr: &str) -> Option<PsqlErrorLocation> {
    const LEVELS: [&str; 4] = [": ERROR:", ": FATAL:", ": PANIC:", ": error:"];
    let lines: Vec<&str> = stderr.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("psql:") else {
            continue;
        };
        let Some((at, level)) = LEVELS
            .iter()
            .filter_map(|l| rest.find(l).map(|at| (at, *l)))
            .min_by_key(|(at, _)| *at)
        else {
            continue;
        };
        let Some((file, line_no)) = rest[..at].rsplit_once(':') else {
            continue;
        };
        let Ok(line_no) = line_no.parse::<u32>() else {
            continue;
        };
        let mut message = rest[at + level.len()..].trim().to_owned();
        for more in lines[i + 1..]
            .iter()
            .take_while(|l| !l.starts_with("psql:"))
        {
            message.push('\n');
            message.push_str(more.trim_end());
        }
        return Some(PsqlErrorLocation {
            file: user_path(exec_root, file),
            line: line_no,
            message: user_text(exec_root, message.trim_end()),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{Input, InputRole};
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn collection_removes_unused_blobs_and_keeps_held_or_recent_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let old = store.ingest_bytes(b"old").unwrap();
        let held = store.ingest_bytes(b"held").unwrap();
        let fresh = store.ingest_bytes(b"fresh").unwrap();
        let day_ago = SystemTime::now() - Duration::from_secs(86_400);
        for d in [&old, &held] {
            File::open(store.path_of(d))
                .unwrap()
                .set_modified(day_ago)
                .unwrap();
        }
        let (n, bytes) = store.collect(Duration::from_secs(3600), |d| *d == held);
        assert_eq!((n, bytes), (1, 3));
        assert!(!store.contains(&old));
        assert!(store.contains(&held) && store.contains(&fresh));
        // Stored again, a blob counts as used now.
        File::open(store.path_of(&held))
            .unwrap()
            .set_modified(day_ago)
            .unwrap();
        assert_eq!(store.ingest_bytes(b"held").unwrap(), held);
        assert_eq!(store.collect(Duration::from_secs(3600), |_| false), (0, 0));
    }

    #[test]
    fn ingest_is_content_addressed_and_read_only() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&tmp.path().join("blobs")).unwrap();
        let file = tmp.path().join("a.sql");
        fs::write(&file, b"create table t(a int);\n").unwrap();

        let from_file = store.ingest_file(&file).unwrap();
        let from_bytes = store.ingest_bytes(b"create table t(a int);\n").unwrap();
        assert_eq!(from_file, from_bytes);
        assert_eq!(from_file, Digest::of(b"create table t(a int);\n"));
        assert_eq!(digest_file(&file).unwrap(), from_file);

        let path = store.path_of(&from_file);
        let hex = from_file.to_hex();
        assert!(path.ends_with(format!("sha256/{}/{hex}", &hex[..2])));
        assert!(store.contains(&from_file));
        assert_eq!(fs::read(&path).unwrap(), b"create table t(a int);\n");
        assert_eq!(mode(&path), 0o444);
        assert_eq!(mode(path.parent().unwrap()), 0o755);
        assert_eq!(
            fs::read_dir(store.tmp_dir()).unwrap().count(),
            0,
            "temp files are dropped"
        );
        assert!(!store.contains(&Digest::of(b"other")));
    }

    #[test]
    fn ingest_missing_file_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&tmp.path().join("blobs")).unwrap();
        let err = store.ingest_file(&tmp.path().join("nope.csv")).unwrap_err();
        assert!(matches!(err, BlobError::Read { .. }));
        assert!(err.to_string().contains("nope.csv"), "{err}");
    }

    fn step(kind: StepKind, cwd: &Path, inputs: Vec<Input>) -> Step {
        Step {
            summary: "test".into(),
            fingerprint: Digest::of(b"fp"),
            inputs,
            kind,
            vars: vec![("app".into(), "x y".into())],
            single_transaction: true,
            cwd: cwd.to_owned(),
        }
    }

    #[test]
    fn materialize_mirrors_inputs_and_builds_args() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&tmp.path().join("blobs")).unwrap();
        let main = store.ingest_bytes(b"\\ir lib/a.sql\n").unwrap();
        let inc = store.ingest_bytes(b"select 1;\n").unwrap();
        let data = store.ingest_bytes(b"1,2\n").unwrap();
        let input = |p: &str, digest, role| Input {
            path: PathBuf::from(p),
            digest,
            role,
        };
        let s = step(
            StepKind::File {
                path: "/home/u/proj/schema.sql".into(),
            },
            Path::new("/home/u/proj/empty"),
            vec![
                input("/home/u/proj/schema.sql", main, InputRole::Main),
                input("/home/u/proj/lib/a.sql", inc, InputRole::Include),
                input("/data/t.csv", data, InputRole::Data),
            ],
        );
        let exec = tmp.path().join("exec/J");
        let inv = store.materialize(&exec, &s).unwrap();
        assert_eq!(inv.cwd, exec.join("home/u/proj/empty"));
        assert!(inv.cwd.is_dir());
        assert_eq!(mode(&inv.cwd), 0o755);
        let mirrored = exec.join("home/u/proj/schema.sql");
        assert_eq!(
            inv.args,
            [
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                "app=x y",
                "-1",
                "-f",
                mirrored.to_str().unwrap()
            ]
        );
        assert_eq!(inv.stdin, None);
        for (p, want) in [
            ("home/u/proj/schema.sql", &b"\\ir lib/a.sql\n"[..]),
            ("home/u/proj/lib/a.sql", b"select 1;\n"),
            ("data/t.csv", b"1,2\n"),
        ] {
            assert_eq!(fs::read(exec.join(p)).unwrap(), want, "{p}");
            assert_eq!(mode(&exec.join(p)), 0o444, "{p}");
        }
        // A second step in the same job folder replaces what is there.
        let again = store.materialize(&exec, &s).unwrap();
        assert_eq!(again, inv);
    }

    #[test]
    fn materialize_stdin_and_command() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&tmp.path().join("blobs")).unwrap();
        let script = store.ingest_bytes(b"select 1;\n").unwrap();
        let exec = tmp.path().join("exec");
        let cwd = Path::new("/home/u");

        let inv = store
            .materialize(
                &exec,
                &step(StepKind::Stdin { digest: script }, cwd, vec![]),
            )
            .unwrap();
        assert_eq!(&inv.args[inv.args.len() - 2..], ["-f", "-"]);
        assert_eq!(inv.stdin, Some(store.path_of(&script)));

        let mut s = step(
            StepKind::Command {
                sql: "create table t()".into(),
            },
            cwd,
            vec![],
        );
        s.single_transaction = false;
        s.vars.clear();
        let inv = store.materialize(&exec, &s).unwrap();
        assert_eq!(
            inv.args,
            ["-X", "-v", "ON_ERROR_STOP=1", "-c", "create table t()"]
        );

        let missing = Digest::of(b"never stored");
        let err = store
            .materialize(
                &exec,
                &step(StepKind::Stdin { digest: missing }, cwd, vec![]),
            )
            .unwrap_err();
        assert!(matches!(err, BlobError::Missing { .. }), "{err}");
    }

    #[test]
    fn user_paths_table() {
        let root = Path::new("/x/exec/J");
        let cases = [
            ("/x/exec/J/home/u/proj/seed.sql", "/home/u/proj/seed.sql"),
            ("/x/exec/Jother/a.sql", "/x/exec/Jother/a.sql"),
            ("<stdin>", "<stdin>"),
            ("lib/a.sql", "lib/a.sql"),
        ];
        for (reported, want) in cases {
            assert_eq!(user_path(root, reported), want, "{reported}");
            assert_eq!(user_path(Path::new("/x/exec/J/"), reported), want);
        }
        assert_eq!(
            user_text(root, "could not open /x/exec/J/home/u/a.csv: denied"),
            "could not open /home/u/a.csv: denied"
        );
    }

    #[test]
    fn psql_errors_table() {
        let root = Path::new("/tmp/x/exec");
        type Case<'a> = (&'a str, Option<(&'a str, u32, &'a str)>);
        let cases: &[Case] = &[
            (
                "psql:/tmp/x/exec/home/u/p/seed.sql:3: ERROR:  relation \"nope\" does not exist\n\
                 LINE 1: select * from nope;\n\
                 \x20                     ^\n",
                Some((
                    "/home/u/p/seed.sql",
                    3,
                    "relation \"nope\" does not exist\nLINE 1: select * from nope;\n                      ^",
                )),
            ),
            (
                "psql:/tmp/x/exec/home/u/p/lib/inc.sql:12: ERROR:  duplicate key\n\
                 DETAIL:  Key (id)=(1) already exists.\n\
                 CONTEXT:  COPY t, line 2\n\
                 psql:/tmp/x/exec/home/u/p/other.sql:1: ERROR:  later\n",
                Some((
                    "/home/u/p/lib/inc.sql",
                    12,
                    "duplicate key\nDETAIL:  Key (id)=(1) already exists.\nCONTEXT:  COPY t, line 2",
                )),
            ),
            (
                "psql:/tmp/x/exec/home/u/p/seed.sql:7: NOTICE:  hi\n\
                 psql:/tmp/x/exec/home/u/p/seed.sql:8: error: /tmp/x/exec/home/u/p/t.csv: No such file or directory\n",
                Some((
                    "/home/u/p/seed.sql",
                    8,
                    "/home/u/p/t.csv: No such file or directory",
                )),
            ),
            (
                "psql:<stdin>:2: ERROR:  syntax error at or near \"selec\"\n",
                Some(("<stdin>", 2, "syntax error at or near \"selec\"")),
            ),
            ("ERROR:  relation \"nope\" does not exist\n", None),
            ("psql: error: connection refused\n", None),
            ("", None),
        ];
        for (stderr, want) in cases {
            let got = parse_psql_error(root, stderr);
            let want = want.map(|(file, line, message)| PsqlErrorLocation {
                file: file.into(),
                line,
                message: message.into(),
            });
            assert_eq!(got, want, "{stderr}");
        }
    }

    #[test]
    fn relative_error_files_resolve_in_the_step_cwd() {
        let cwd = Path::new("/home/u/proj");
        let cases = [
            ("sql/lib/err.sql", "/home/u/proj/sql/lib/err.sql"),
            ("../other/x.sql", "/home/u/other/x.sql"),
            ("/abs/x.sql", "/abs/x.sql"),
            ("<stdin>", "<stdin>"),
        ];
        for (reported, want) in cases {
            let stderr = format!("psql:{reported}:2: ERROR:  relation \"nope\" does not exist\n");
            let located = parse_psql_error(Path::new("/x/exec"), &stderr)
                .unwrap()
                .resolved_in(cwd);
            assert_eq!(located.file, want, "{reported}");
            assert_eq!(located.line, 2);
        }
    }
}

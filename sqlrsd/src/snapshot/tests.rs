//! Tests of the snapshotters on real filesystems: the default one (copy), and
//! the btrfs and XFS mounts named by SQLRS_TEST_BTRFS and SQLRS_TEST_XFS
//! (packaging/ci/btrfs-image.sh makes both).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::btrfs::{self, BtrfsSnapshotter};
use super::tree::{FileContent, TreeSnapshotter};
use super::*;

const BTRFS_ENV: &str = "SQLRS_TEST_BTRFS";
const XFS_ENV: &str = "SQLRS_TEST_XFS";

/// The tests on the shared mounts run in parallel, each holding this
/// shared; a test that needs the mounts to itself (another test's `syncfs`
/// would write back the files it watches) holds it exclusively.
static MOUNTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

enum MountLock {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

/// A fresh directory on one of the test mounts, removed before the lock on
/// the mounts is let go.
struct TestDir {
    dir: tempfile::TempDir,
    _lock: MountLock,
}

impl TestDir {
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A fresh directory inside the test filesystem named by `var`, which must be of type `f_type`.
fn test_dir_on(var: &str, f_type: u32, what: &str, lock: MountLock) -> TestDir {
    let dir = std::env::var_os(var).unwrap_or_else(|| {
        panic!(
            "set {var} to a directory on a mounted {what} (packaging/ci/btrfs-image.sh creates \
             one as root)"
        )
    });
    let dir = PathBuf::from(dir);
    let found = filesystem_type(&dir).unwrap_or_else(|e| panic!("{var}: {e}"));
    assert_eq!(
        found,
        f_type,
        "{var}={} is on {}, not on {what} (packaging/ci/btrfs-image.sh creates one as root)",
        dir.display(),
        filesystem_name(found)
    );
    let dir = tempfile::tempdir_in(&dir).unwrap_or_else(|e| panic!("{var}={}: {e}", dir.display()));
    TestDir { dir, _lock: lock }
}

fn shared() -> MountLock {
    // A test that failed while holding the lock leaves nothing to protect.
    MountLock::Shared(MOUNTS.read().unwrap_or_else(|e| e.into_inner()))
}

fn exclusive() -> MountLock {
    MountLock::Exclusive(MOUNTS.write().unwrap_or_else(|e| e.into_inner()))
}

fn btrfs_dir_with(lock: MountLock) -> TestDir {
    test_dir_on(BTRFS_ENV, magic::BTRFS, "btrfs", lock)
}

fn xfs_dir_with(lock: MountLock) -> TestDir {
    test_dir_on(XFS_ENV, magic::XFS, "XFS with reflink=1", lock)
}

fn btrfs_dir() -> TestDir {
    btrfs_dir_with(shared())
}

fn xfs_dir() -> TestDir {
    xfs_dir_with(shared())
}

/// The uid and gid of the `postgres` account; the tests run as root like the daemon.
fn postgres_ids() -> (u32, u32) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run the snapshot tests as root: they chown files to the postgres account as the daemon does"
    );
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: name is NUL-terminated; the result is read before any other getpw* call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "the postgres account is missing: install PostgreSQL (apt-get install postgresql-15)"
    );
    // SAFETY: pw points at a valid passwd entry.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

#[derive(Clone, Copy)]
enum Owner {
    Root,
    Postgres,
}

enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(&'static str),
}

struct Shape {
    name: &'static str,
    root: (u32, Owner),
    nodes: Vec<(&'static str, Node, Owner)>,
}

impl Shape {
    fn file_bytes(&self) -> u64 {
        self.nodes
            .iter()
            .map(|(_, n, _)| match n {
                Node::File(_, data) => data.len() as u64,
                _ => 0,
            })
            .sum()
    }
}

/// Bytes that differ from block to block, so shared or lost extents show.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

fn shapes() -> Vec<Shape> {
    use Node::*;
    use Owner::*;
    vec![
        Shape {
            name: "empty",
            root: (0o700, Postgres),
            nodes: vec![],
        },
        Shape {
            name: "data-directory",
            root: (0o700, Postgres),
            nodes: vec![
                ("PG_VERSION", File(0o600, b"15\n".to_vec()), Postgres),
                ("base", Dir(0o700), Postgres),
                ("base/1", Dir(0o700), Postgres),
                ("base/1/1259", File(0o600, pattern(3 * 8192 + 17)), Postgres),
                ("base/1/1259_fsm", File(0o600, vec![]), Postgres),
                ("global", Dir(0o700), Postgres),
                ("global/pg_control", File(0o600, pattern(8192)), Postgres),
                ("pg_tblspc", Dir(0o700), Postgres),
                ("pg_tblspc/16384", Symlink("/srv/tablespace"), Postgres),
                ("pg_wal", Symlink("../wal"), Postgres),
                ("pg_stat_tmp", Dir(0o700), Postgres),
                (
                    "postgresql.conf",
                    File(0o640, b"port = 5432\n".to_vec()),
                    Postgres,
                ),
                ("root-owned", File(0o644, b"by root\n".to_vec()), Root),
            ],
        },
        Shape {
            name: "group-readable-and-odd-modes",
            root: (0o750, Postgres),
            nodes: vec![
                ("a", Dir(0o750), Postgres),
                ("a/b", Dir(0o711), Root),
                ("a/b/c", Dir(0o500), Postgres),
                ("a/b/c/big", File(0o400, pattern(2 << 20)), Postgres),
                ("a/b/setgid", Dir(0o2750), Postgres),
                ("a/exec", File(0o755, b"#!/bin/sh\n".to_vec()), Root),
                ("a/dangling", Symlink("does/not/exist"), Root),
                ("a/self", Symlink("."), Postgres),
            ],
        },
    ]
}

fn chown(path: &Path, owner: Owner, ids: (u32, u32)) {
    let (uid, gid) = match owner {
        Owner::Root => (0, 0),
        Owner::Postgres => ids,
    };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("lchown");
}

/// Fills the existing directory `root` with `shape`; modes are set after the
/// contents so read-only directories can still be filled.
fn build(root: &Path, shape: &Shape, ids: (u32, u32)) {
    let mut dir_modes = vec![];
    for (rel, node, owner) in &shape.nodes {
        let path = root.join(rel);
        match node {
            Node::Dir(mode) => {
                fs::create_dir(&path).expect("mkdir");
                dir_modes.push((path.clone(), *mode));
            }
            Node::File(mode, data) => {
                fs::write(&path, data).expect("write");
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).expect("chmod");
            }
            Node::Symlink(target) => std::os::unix::fs::symlink(target, &path).expect("symlink"),
        }
        chown(&path, *owner, ids);
    }
    dir_modes.push((root.to_path_buf(), shape.root.0));
    chown(root, shape.root.1, ids);
    for (path, mode) in dir_modes.into_iter().rev() {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

/// Everything the backends promise to preserve, one line per path.
fn describe(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, path: &Path, out: &mut BTreeMap<String, String>) {
        let meta = path.symlink_metadata().expect("lstat");
        let rel = path
            .strip_prefix(root)
            .expect("inside")
            .display()
            .to_string();
        let owner = format!("{}:{}", meta.uid(), meta.gid());
        let line = if meta.is_symlink() {
            let target = fs::read_link(path).expect("readlink");
            format!("symlink {owner} -> {}", target.display())
        } else if meta.is_file() {
            let mut hash = DefaultHasher::new();
            hash.write(&fs::read(path).expect("read"));
            let mode = meta.mode() & 0o7777;
            format!(
                "file {mode:o} {owner} {} bytes #{:x}",
                meta.len(),
                hash.finish()
            )
        } else {
            let mut children: Vec<PathBuf> = fs::read_dir(path)
                .expect("readdir")
                .map(|e| e.expect("entry").path())
                .collect();
            children.sort();
            for child in &children {
                walk(root, child, out);
            }
            format!("dir {:o} {owner}", meta.mode() & 0o7777)
        };
        out.insert(rel, line);
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Writes into a tree in place: overwrites the start of every regular file and
/// adds a file at the top, so a copy that shares data with it would change.
fn scribble(root: &Path) {
    for (rel, line) in describe(root) {
        if line.starts_with("file") {
            let file = OpenOptions::new()
                .write(true)
                .open(root.join(&rel))
                .expect("open for writing");
            file.write_all_at(b"scribbled", 0).expect("write");
        }
    }
    fs::write(root.join("added-later"), b"new").expect("write");
}

/// Runs the whole life cycle of states and instances on `snapshotter` in `base`
/// for every tree shape.
fn exercise(snapshotter: &dyn Snapshotter, base: &Path) {
    let ids = postgres_ids();
    for shape in shapes() {
        let case = format!("{} / {}", snapshotter.kind(), shape.name);
        let dir = base.join(shape.name);
        fs::create_dir(&dir).expect("mkdir");
        let [src, clone, snap, clone2] = ["src", "clone", "snap", "clone2"].map(|n| dir.join(n));

        snapshotter.create_empty(&src).expect("create_empty");
        let meta = src.symlink_metadata().expect("lstat");
        assert!(meta.is_dir(), "{case}");
        assert_eq!(meta.mode() & 0o7777, 0o700, "{case}: create_empty mode");
        build(&src, &shape, ids);
        let expected = describe(&src);

        snapshotter
            .clone_writable(&src, &clone)
            .expect("clone_writable");
        assert_eq!(describe(&clone), expected, "{case}: clone");
        snapshotter.snapshot(&src, &snap).expect("snapshot");
        assert_eq!(describe(&snap), expected, "{case}: snapshot");
        assert_eq!(
            snapshotter.usage(&snap).expect("usage"),
            shape.file_bytes(),
            "{case}: usage"
        );

        scribble(&src);
        assert_ne!(describe(&src), expected, "{case}: scribble changed nothing");
        assert_eq!(
            describe(&snap),
            expected,
            "{case}: snapshot after writes to src"
        );
        assert_eq!(
            describe(&clone),
            expected,
            "{case}: clone after writes to src"
        );

        snapshotter
            .clone_writable(&snap, &clone2)
            .expect("clone of the snapshot");
        assert_eq!(describe(&clone2), expected, "{case}: clone of the snapshot");
        scribble(&clone2);
        assert_eq!(
            describe(&snap),
            expected,
            "{case}: snapshot after writes to its clone"
        );

        for (dst, what) in [(&clone, "clone_writable"), (&snap, "snapshot")] {
            let err = match what {
                "clone_writable" => snapshotter.clone_writable(&src, dst),
                _ => snapshotter.snapshot(&src, dst),
            };
            assert!(
                matches!(err, Err(SnapshotError::DestinationExists(ref p)) if p == dst),
                "{case}: {what} onto an existing path gave {err:?}"
            );
        }
        assert_eq!(
            describe(&snap),
            expected,
            "{case}: a refused snapshot changed nothing"
        );

        for path in [&src, &clone, &snap, &clone2] {
            snapshotter.remove(path).expect("remove");
            assert!(!path.exists(), "{case}: {} still exists", path.display());
            snapshotter
                .remove(path)
                .expect("removing a missing path is fine");
        }
    }
}

#[test]
fn copy_backend_on_the_default_filesystem() {
    let base = tempfile::tempdir().expect("tempdir");
    exercise(&TreeSnapshotter::new(FileContent::Copy), base.path());
}

#[test]
fn reflink_backend_on_xfs() {
    let base = xfs_dir();
    exercise(&TreeSnapshotter::new(FileContent::Reflink), base.path());
}

#[test]
fn reflink_backend_on_btrfs() {
    let base = btrfs_dir();
    exercise(&TreeSnapshotter::new(FileContent::Reflink), base.path());
}

#[test]
fn btrfs_backend() {
    let base = btrfs_dir();
    exercise(&BtrfsSnapshotter, base.path());
}

fn raw_os_error<T: std::fmt::Debug>(result: io::Result<T>) -> Option<i32> {
    result.expect_err("the write should fail").raw_os_error()
}

#[test]
fn btrfs_states_are_read_only_subvolumes_and_instances_writable_ones() {
    let base = btrfs_dir();
    let base = base.path();
    let s = BtrfsSnapshotter;
    let [work, tmp, state, instance_dir] =
        ["work", "state.tmp", "state", "instance"].map(|n| base.join(n));
    s.create_empty(&work).expect("create_empty");
    fs::write(work.join("PG_VERSION"), b"15\n").expect("write");
    s.snapshot(&work, &tmp).expect("snapshot");

    let is_subvolume = |p: &Path| btrfs::is_subvolume(p, &p.symlink_metadata().expect("lstat"));
    for p in [&work, &tmp] {
        assert!(
            is_subvolume(p).expect("is_subvolume"),
            "{} is no subvolume",
            p.display()
        );
    }
    // States are made under a temporary name and renamed into place.
    fs::rename(&tmp, &state).expect("renaming a read-only snapshot");

    // Even root cannot write into a state.
    assert_eq!(
        raw_os_error(fs::write(state.join("new"), b"x")),
        Some(libc::EROFS)
    );
    let existing = OpenOptions::new()
        .write(true)
        .open(state.join("PG_VERSION"));
    assert_eq!(raw_os_error(existing), Some(libc::EROFS));
    assert_eq!(
        raw_os_error(fs::set_permissions(
            &state,
            fs::Permissions::from_mode(0o777)
        )),
        Some(libc::EROFS)
    );

    // An instance is a writable clone of the state, inside a plain folder.
    fs::create_dir(&instance_dir).expect("mkdir");
    let data = instance_dir.join("data");
    s.clone_writable(&state, &data).expect("clone_writable");
    assert!(is_subvolume(&data).expect("is_subvolume"));
    fs::write(data.join("PG_VERSION"), b"16\n").expect("an instance is writable");
    let mut f = OpenOptions::new()
        .append(true)
        .open(data.join("PG_VERSION"))
        .expect("open");
    f.write_all(b"more\n").expect("append");
    assert_eq!(fs::read(state.join("PG_VERSION")).expect("read"), b"15\n");

    // Removing the instance folder takes its subvolume along.
    s.remove(&instance_dir).expect("remove the instance folder");
    assert!(!instance_dir.exists());
    for p in [&state, &work] {
        s.remove(p).expect("remove");
        assert!(!p.exists(), "{} still exists", p.display());
    }
}

#[test]
fn btrfs_snapshot_of_a_plain_directory_is_a_read_only_subvolume() {
    let base = btrfs_dir();
    let base = base.path();
    let s = BtrfsSnapshotter;
    let plain = base.join("plain");
    let state = base.join("state");
    let ids = postgres_ids();
    let shape = shapes()
        .into_iter()
        .find(|s| s.name == "data-directory")
        .expect("shape");
    fs::create_dir(&plain).expect("mkdir");
    build(&plain, &shape, ids);
    s.snapshot(&plain, &state)
        .expect("snapshot of a plain directory");
    assert_eq!(describe(&state), describe(&plain));
    assert!(btrfs::is_subvolume(&state, &state.symlink_metadata().expect("lstat")).expect("stat"));
    assert_eq!(
        raw_os_error(fs::write(state.join("new"), b"x")),
        Some(libc::EROFS)
    );
    for p in [&state, &plain] {
        s.remove(p).expect("remove");
        assert!(!p.exists());
    }
}

/// A failed clone or snapshot leaves nothing at the destination.
#[test]
fn failures_leave_no_destination_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let with_fifo = tmp.path().join("with-fifo");
    fs::create_dir_all(with_fifo.join("sub")).expect("mkdir");
    fs::write(with_fifo.join("sub/file"), b"data").expect("write");
    let fifo = CString::new(
        with_fifo
            .join("sub/fifo")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("no NUL");
    // SAFETY: fifo is a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    let missing = tmp.path().join("missing");

    let copy = TreeSnapshotter::new(FileContent::Copy);
    let reflink = TreeSnapshotter::new(FileContent::Reflink);
    let plain = tmp.path().join("plain");
    fs::create_dir(&plain).expect("mkdir");
    fs::write(plain.join("file"), b"data").expect("write");
    let cases: [(&dyn Snapshotter, &Path, &str); 4] = [
        (
            &copy,
            &with_fifo,
            "is a named pipe; a PostgreSQL data directory may hold only",
        ),
        (&copy, &missing, "could not inspect"),
        (&reflink, &missing, "could not inspect"),
        // The default filesystem (ext4, tmpfs) has no reflinks.
        (&reflink, &plain, "could not reflink (FICLONE) into"),
    ];
    for (i, (s, src, message)) in cases.into_iter().enumerate() {
        for make in ["clone_writable", "snapshot"] {
            let dst = tmp.path().join(format!("dst-{i}-{make}"));
            let result = match make {
                "clone_writable" => s.clone_writable(src, &dst),
                _ => s.snapshot(src, &dst),
            };
            let err = result.expect_err("should fail").to_string();
            assert!(
                err.contains(message),
                "{} {make} {}: {err}",
                s.kind(),
                src.display()
            );
            assert!(!dst.exists(), "{} {make} left {}", s.kind(), dst.display());
        }
    }
}

#[test]
fn btrfs_failures_leave_no_destination_behind() {
    let base = btrfs_dir();
    let s = BtrfsSnapshotter;
    let missing = base.path().join("missing");
    for (make, dst) in [("clone_writable", "c"), ("snapshot", "s")] {
        let dst = base.path().join(dst);
        let result = match make {
            "clone_writable" => s.clone_writable(&missing, &dst),
            _ => s.snapshot(&missing, &dst),
        };
        assert!(result.is_err(), "{make} of a missing directory succeeded");
        assert!(!dst.exists(), "{make} left {}", dst.display());
    }
}

#[test]
fn backend_names_round_trip() {
    let cases = [
        ("btrfs", Some(Backend::Btrfs)),
        ("reflink", Some(Backend::Reflink)),
        ("copy", Some(Backend::Copy)),
        ("auto", None),
        ("Btrfs", None),
        ("", None),
    ];
    for (text, expected) in cases {
        let parsed = text.parse::<Backend>().ok();
        assert_eq!(parsed, expected, "{text:?}");
        if let Some(b) = parsed {
            assert_eq!(b.to_string(), text);
        }
    }
}

enum Expect {
    Chosen(Backend, &'static str),
    Refused(&'static str),
}

/// Runs detection on a fresh store inside `base` for each case; `{store}` in
/// the expected text stands for the store's path.
fn check_detect(base: &Path, cases: &[(BackendChoice, Expect)]) {
    for (i, (choice, expect)) in cases.iter().enumerate() {
        let store = base.join(format!("store-{i}"));
        let result = detect(&store, *choice);
        let shown = store.display().to_string();
        match (result, expect) {
            (Ok(d), Expect::Chosen(backend, reason)) => {
                assert_eq!(d.snapshotter.kind(), *backend, "{choice:?}: {}", d.reason);
                let reason = reason.replace("{store}", &shown);
                assert!(
                    d.reason.contains(&reason),
                    "{choice:?}: {:?} lacks {reason:?}",
                    d.reason
                );
                assert!(!d.reason.contains('\n'), "{choice:?}: {:?}", d.reason);
            }
            (Err(e), Expect::Refused(message)) => {
                let message = message.replace("{store}", &shown);
                assert!(
                    e.to_string().contains(&message),
                    "{choice:?}: {e} lacks {message:?}"
                );
            }
            (Ok(d), Expect::Refused(_)) => panic!("{choice:?}: expected an error, got {d:?}"),
            (Err(e), Expect::Chosen(..)) => panic!("{choice:?}: expected success, got {e}"),
        }
        let left: Vec<_> = fs::read_dir(&store).expect("readdir").collect();
        assert!(left.is_empty(), "{choice:?}: probes left {left:?}");
    }
}

#[test]
fn detect_on_the_default_filesystem() {
    let base = tempfile::tempdir().expect("tempdir");
    let f_type = filesystem_type(base.path()).expect("statfs");
    assert!(
        matches!(f_type, magic::EXT4 | magic::TMPFS | magic::OVERLAYFS),
        "the default temporary directory is on {}; point TMPDIR at ext4 or tmpfs",
        filesystem_name(f_type)
    );
    use BackendChoice::*;
    check_detect(
        base.path(),
        &[
            (Auto, Expect::Chosen(Backend::Copy, "copy: {store} is on ")),
            (
                Auto,
                Expect::Chosen(Backend::Copy, " (no reflink); copies are O(size)"),
            ),
            (
                Fixed(Backend::Copy),
                Expect::Chosen(Backend::Copy, "copy: set in the config"),
            ),
            (
                Fixed(Backend::Btrfs),
                Expect::Refused(
                    "the btrfs snapshot backend does not work on the state store {store}: it is \
                     on ",
                ),
            ),
            (
                Fixed(Backend::Btrfs),
                Expect::Refused(
                    ", not btrfs; set snapshot.backend to auto in the sqlrs config, or move the \
                     store onto a btrfs filesystem",
                ),
            ),
            (
                Fixed(Backend::Reflink),
                Expect::Refused(
                    "the reflink snapshot backend does not work on the state store {store}: ",
                ),
            ),
            (
                Fixed(Backend::Reflink),
                Expect::Refused(
                    " does not support it; set snapshot.backend to auto in the sqlrs config, or \
                     move the store onto XFS (made with reflink=1) or btrfs",
                ),
            ),
        ],
    );
}

#[test]
fn detect_on_xfs() {
    let base = xfs_dir();
    use BackendChoice::*;
    check_detect(
        base.path(),
        &[
            (
                Auto,
                Expect::Chosen(
                    Backend::Reflink,
                    "reflink: {store} is on xfs and reflinks (FICLONE) work",
                ),
            ),
            (
                Fixed(Backend::Reflink),
                Expect::Chosen(Backend::Reflink, "reflink: set in the config"),
            ),
            (
                Fixed(Backend::Copy),
                Expect::Chosen(Backend::Copy, "copy: set in the config; {store} is on xfs"),
            ),
            (
                Fixed(Backend::Btrfs),
                Expect::Refused(
                    "the btrfs snapshot backend does not work on the state store {store}",
                ),
            ),
        ],
    );
}

#[test]
fn detect_on_btrfs() {
    let base = btrfs_dir();
    use BackendChoice::*;
    check_detect(
        base.path(),
        &[
            (
                Auto,
                Expect::Chosen(
                    Backend::Btrfs,
                    "btrfs: {store} is on btrfs and subvolume snapshots work",
                ),
            ),
            (
                Fixed(Backend::Btrfs),
                Expect::Chosen(Backend::Btrfs, "btrfs: set in the config"),
            ),
            (
                Fixed(Backend::Reflink),
                Expect::Chosen(Backend::Reflink, "reflink: set in the config"),
            ),
            (
                Fixed(Backend::Copy),
                Expect::Chosen(Backend::Copy, "copy: set in the config"),
            ),
        ],
    );
}

const MIB: u64 = 1 << 20;

/// Bytes no filesystem can compress or deduplicate (xorshift64).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` to a new file at `path` and waits until it is on disk, so
/// FIEMAP sees allocated extents rather than delayed allocations.
fn write_synced(path: &Path, data: &[u8]) {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create");
    file.write_all(data).expect("write");
    file.sync_all().expect("fsync");
}

/// Fails unless `got` is within `slack` bytes of `want`.
fn assert_near(what: &str, got: u64, want: u64, slack: u64) {
    assert!(
        got.abs_diff(want) <= slack,
        "{what}: {got} bytes ({:.3} MiB), expected {want} ± {slack}",
        got as f64 / MIB as f64
    );
}

/// A 16 MiB file in tree `a`, a clone `b` that rewrote 1 MiB of it and a
/// snapshot `s` of `a`: checks what [`extents::account`] makes of them. With
/// `shared`, the backend shares unchanged blocks between the trees; without,
/// every tree has its own copy.
fn cow_accounting(snapshotter: &dyn Snapshotter, base: &Path, shared: bool) {
    use extents::{Extents, account};
    let on = filesystem_name(filesystem_type(base).expect("statfs"));
    let kind = format!("{} on {on}", snapshotter.kind());
    let [a, b, s] = ["a", "b", "s"].map(|n| base.join(n));
    let outside = base.join("outside");
    write_synced(&outside, &noise(4 << 20, 3));

    snapshotter.create_empty(&a).expect("create_empty");
    write_synced(&a.join("big"), &noise(16 << 20, 1));
    // Around what a data directory holds besides its big files: tiny files
    // (inline on btrfs), an empty one, a page, a folder, a symlink out of
    // the tree (which must not count).
    write_synced(&a.join("PG_VERSION"), b"15\n");
    write_synced(&a.join("empty"), b"");
    fs::create_dir(a.join("global")).expect("mkdir");
    write_synced(&a.join("global/pg_control"), &noise(8192, 2));
    std::os::unix::fs::symlink(&outside, a.join("outside")).expect("symlink");

    snapshotter.clone_writable(&a, &b).expect("clone_writable");
    snapshotter.snapshot(&a, &s).expect("snapshot");
    let big = OpenOptions::new()
        .write(true)
        .open(b.join("big"))
        .expect("open the clone's file");
    big.write_all_at(&noise(1 << 20, 4), 4 << 20)
        .expect("overwrite");
    big.sync_all().expect("fsync");
    // Neither followed nor waited on.
    let fifo = CString::new(a.join("fifo").into_os_string().into_encoded_bytes()).expect("no NUL");
    // SAFETY: fifo is a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");

    let [ea, eb, es] = [&a, &b, &s].map(|p| Extents::of_tree(p).expect("of_tree"));
    let two = account(&[("a", &ea), ("b", &eb)]);
    let three = account(&[("a", &ea), ("b", &eb), ("s", &es)]);
    let mib = |bytes: u64| format!("{:.3} MiB", bytes as f64 / MIB as f64);
    for (name, e) in [("a", &ea), ("b", &eb), ("s", &es)] {
        eprintln!(
            "{kind}: {name}: {} in {} ranges + {} private",
            mib(e.bytes()),
            e.ranges().len(),
            e.private()
        );
    }
    eprintln!(
        "{kind}: a+b: total {}, exclusive a {}, b {}",
        mib(two.total),
        mib(two.exclusive["a"]),
        mib(two.exclusive["b"])
    );
    eprintln!(
        "{kind}: a+b+s: total {}, exclusive a {}, b {}, s {}",
        mib(three.total),
        mib(three.exclusive["a"]),
        mib(three.exclusive["b"]),
        mib(three.exclusive["s"])
    );

    // The small files take a few KiB at most (btrfs keeps the tiny ones
    // inline, private to each tree); no filesystem here rounds 16 MiB by more.
    let slack = 64 << 10;
    let case = |what: &str| format!("{kind}: {what}");
    for (name, e) in [("a", &ea), ("b", &eb), ("s", &es)] {
        assert_near(&case(name), e.bytes(), 16 * MIB, slack);
    }
    if shared {
        assert_near(&case("a+b total"), two.total, 17 * MIB, slack);
        // The rewritten MiB: a's old blocks and b's new ones.
        assert_near(&case("a+b exclusive a"), two.exclusive["a"], MIB, slack);
        assert_near(&case("a+b exclusive b"), two.exclusive["b"], MIB, slack);
        assert_near(&case("a+b+s total"), three.total, 17 * MIB, slack);
        assert_near(&case("a+b+s exclusive a"), three.exclusive["a"], 0, slack);
        assert_near(&case("a+b+s exclusive b"), three.exclusive["b"], MIB, slack);
        assert_near(&case("a+b+s exclusive s"), three.exclusive["s"], 0, slack);
    } else {
        assert_near(&case("a+b total"), two.total, 32 * MIB, slack);
        assert_near(
            &case("a+b exclusive a"),
            two.exclusive["a"],
            16 * MIB,
            slack,
        );
        assert_near(
            &case("a+b exclusive b"),
            two.exclusive["b"],
            16 * MIB,
            slack,
        );
        assert_near(&case("a+b+s total"), three.total, 48 * MIB, slack);
        for name in ["a", "b", "s"] {
            assert_near(
                &case(&format!("a+b+s exclusive {name}")),
                three.exclusive[name],
                16 * MIB,
                slack,
            );
        }
    }
    // Whatever the filesystem, nothing is counted twice or lost.
    let private: u64 = [&ea, &eb, &es].iter().map(|e| e.private()).sum();
    let union = Extents::new(
        [&ea, &eb, &es]
            .iter()
            .flat_map(|e| e.ranges().iter().copied())
            .collect(),
        private,
    );
    assert_eq!(three.total, union.bytes(), "{kind}: union");

    // An instance's writes are not synced: until written back they are
    // delayed allocations without an address, which count as private.
    fs::write(b.join("unsynced"), noise(1 << 20, 5)).expect("write");
    let eb = Extents::of_tree(&b).expect("of_tree");
    eprintln!(
        "{kind}: b with 1 MiB unsynced: {} in {} ranges + {} private",
        mib(eb.bytes()),
        eb.ranges().len(),
        eb.private()
    );
    assert_near(&case("b with 1 MiB unsynced"), eb.bytes(), 17 * MIB, slack);

    for p in [&a, &b, &s] {
        snapshotter.remove(p).expect("remove");
    }
}

#[test]
fn extents_of_btrfs_snapshots() {
    let base = btrfs_dir();
    cow_accounting(&BtrfsSnapshotter, base.path(), true);
}

#[test]
fn extents_of_reflinks_on_btrfs() {
    let base = btrfs_dir();
    cow_accounting(
        &TreeSnapshotter::new(FileContent::Reflink),
        base.path(),
        true,
    );
}

#[test]
fn extents_of_reflinks_on_xfs() {
    let base = xfs_dir();
    cow_accounting(
        &TreeSnapshotter::new(FileContent::Reflink),
        base.path(),
        true,
    );
}

/// On ext4 FIEMAP works and nothing is shared; on tmpfs the fallback to
/// allocated sizes is what is measured.
#[test]
fn extents_of_copies_on_the_default_filesystem() {
    let base = tempfile::tempdir().expect("tempdir");
    cow_accounting(&TreeSnapshotter::new(FileContent::Copy), base.path(), false);
}

/// A full store names both ends of the failed copy (the state's directory
/// holds its id) and says how to make room; other failures stay short.
#[test]
fn out_of_space_messages_say_how_to_make_room() {
    let full = SnapshotError::Copy {
        from: "/s/states/5ffc08/base/4/1255".into(),
        to: "/s/instances/9b85/data/base/4/1255".into(),
        error: io::Error::from_raw_os_error(libc::ENOSPC),
    }
    .to_string();
    for want in [
        "could not copy /s/states/5ffc08/base/4/1255 to /s/instances/9b85/data/base/4/1255",
        "No space left on device",
        "sqlrs rm",
        "cache.reserve_bytes",
    ] {
        assert!(full.contains(want), "{want:?} in {full}");
    }
    let quota = SnapshotError::Io {
        op: "create",
        path: "/s/x".into(),
        error: io::Error::from_raw_os_error(libc::EDQUOT),
    }
    .to_string();
    assert!(quota.contains("sqlrs rm"), "{quota}");
    let denied = SnapshotError::Io {
        op: "create",
        path: "/s/x".into(),
        error: io::Error::from_raw_os_error(libc::EACCES),
    }
    .to_string();
    assert_eq!(
        denied,
        "could not create /s/x: Permission denied (os error 13)"
    );
}

/// `start_write_back` hands the disk the data files written since the time
/// given, and neither older files nor `pg_wal`: FIEMAP shows each file's
/// unwritten (delayed-allocation) bytes as private; the files the write-back
/// was asked for get their blocks soon after, the others keep them unwritten
/// (the kernel's own write-back comes to a file after 30 s). The mounts are
/// held exclusively: another test's `syncfs` would write back everything.
fn write_back_starts_with_recent_data_files(root: &Path) {
    let data = root.join("data");
    for dir in ["base/5", "global", "pg_wal"] {
        fs::create_dir_all(data.join(dir)).expect("mkdir");
    }
    let since = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    let recent = ["base/5/16384", "global/1262"];
    let old = "base/5/16390";
    let wal = "pg_wal/000000010000000000000007";
    for (i, name) in recent.iter().chain([&old, &wal]).enumerate() {
        fs::write(data.join(name), noise(1 << 20, 10 + i as u64)).expect("write");
    }
    fs::write(data.join("base/5/16399"), b"").expect("write");
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(data.join(old))
        .and_then(|f| f.set_modified(long_ago))
        .expect("set mtime");
    let unwritten = |name: &str| {
        extents::Extents::of_tree(&data.join(name))
            .expect("FIEMAP")
            .private()
    };
    for name in recent.iter().chain([&old, &wal]) {
        assert_eq!(unwritten(name), 1 << 20, "{name} is dirty before");
    }
    assert_eq!(start_write_back(&data, since), recent.len());
    // The write is started, not waited for; the kernel's own write-back
    // would take 30 s (dirty_expire_centisecs) to come to these files.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while recent.iter().any(|name| unwritten(name) != 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the recent files were not written within 10 s: {:?}",
            recent.map(|name| (name, unwritten(name)))
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for name in [old, wal] {
        assert_eq!(unwritten(name), 1 << 20, "{name} was left alone");
    }
}

#[test]
fn write_back_starts_with_recent_data_files_on_btrfs() {
    write_back_starts_with_recent_data_files(btrfs_dir_with(exclusive()).path());
}

#[test]
fn write_back_starts_with_recent_data_files_on_xfs() {
    write_back_starts_with_recent_data_files(xfs_dir_with(exclusive()).path());
}

//! Snapshotters: how the state store turns a PostgreSQL data directory into an
//! immutable state and a state into a writable instance (DESIGN §4).
//!
//! Three backends implement [`Snapshotter`]:
//! - **btrfs**: subvolumes and subvolume snapshots through the kernel's ioctls;
//!   O(1) in the size of the data directory and crash-consistent, so a running
//!   server can be snapshotted after a `CHECKPOINT` ([`Snapshotter::atomic`]).
//! - **reflink**: a walk of the tree that clones each regular file with
//!   `FICLONE` (XFS with `reflink=1`, btrfs); data is shared until written,
//!   but the walk is O(number of files).
//! - **copy**: the same walk copying bytes; works everywhere, O(size).
//!
//! All of them preserve what PostgreSQL checks: owner, group and permission
//! bits of every directory, file and symlink, symlink targets and empty
//! directories. Timestamps are not preserved and hard links are copied as
//! separate files (a data directory has none). [`detect`] picks the backend
//! for a store by probing it. [`extents`] measures the space states take
//! together, counting the blocks they share through copy-on-write once. The
//! calls block: async callers wrap them in `spawn_blocking`.

mod btrfs;
mod detect;
pub mod extents;
mod tree;

#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use detect::detect;

/// Makes and removes the directories of states and instances.
pub trait Snapshotter: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> Backend;
    /// True when snapshot() of a running server's directory is crash-consistent (btrfs): the
    /// caller then CHECKPOINTs instead of stopping the server before each snapshot.
    fn atomic(&self) -> bool;
    /// Creates an empty writable directory (mode 0700, owned by the caller) that
    /// clone/snapshot can later take (btrfs: a subvolume). `path` must not exist.
    fn create_empty(&self, path: &Path) -> Result<(), SnapshotError>;
    /// A writable copy of `src` at `dst` (dst must not exist, its parent must).
    /// Not synced: instances are disposable and their servers run without
    /// fsync, so a crash loses an instance's writes either way, and the
    /// source is a state that is durable already.
    fn clone_writable(&self, src: &Path, dst: &Path) -> Result<(), SnapshotError>;
    /// An immutable, durable copy of `src` at `dst` (btrfs: read-only snapshot);
    /// synced to disk (syncfs) before returning. The copy and reflink backends
    /// keep states immutable by convention only: nothing writes to them.
    fn snapshot(&self, src: &Path, dst: &Path) -> Result<(), SnapshotError>;
    /// Removes a directory made by any of the above (read-only btrfs snapshots
    /// included), a plain directory tree or a file. A missing path is not an error.
    fn remove(&self, path: &Path) -> Result<(), SnapshotError>;
    /// Bytes used by `path`: the apparent size of its regular files. Data shared
    /// with other states through CoW (btrfs, reflink) counts in full for each,
    /// so the sum over states can exceed what the disk really holds;
    /// [`extents::account`] tells what they hold together and what removing
    /// one frees.
    fn usage(&self, path: &Path) -> Result<u64, SnapshotError>;
}

/// A snapshot backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Btrfs,
    Reflink,
    Copy,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Btrfs, Backend::Reflink, Backend::Copy];

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Btrfs => "btrfs",
            Backend::Reflink => "reflink",
            Backend::Copy => "copy",
        }
    }

    /// What to do when this backend does not work on a store.
    fn fix(self) -> &'static str {
        match self {
            Backend::Btrfs => "move the store onto a btrfs filesystem",
            Backend::Reflink => "move the store onto XFS (made with reflink=1) or btrfs",
            Backend::Copy => "make the store directory writable by the daemon's account",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = SnapshotError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backend::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| SnapshotError::UnknownBackend(s.to_string()))
    }
}

/// The backend asked for in the configuration (`snapshot.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// Probe the store and take the best backend that works.
    Auto,
    /// Use this backend; fail if it does not work on the store.
    Fixed(Backend),
}

/// The snapshotter chosen for a store and why, in one line for `sqlrs status`.
pub struct Detected {
    pub snapshotter: Box<dyn Snapshotter>,
    pub reason: String,
}

impl fmt::Debug for Detected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detected")
            .field("snapshotter", &self.snapshotter.kind())
            .field("reason", &self.reason)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("could not {op} {path}: {error}{}", out_of_space_hint(error))]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("could not copy {from} to {to}: {error}{}", out_of_space_hint(error))]
    Copy {
        from: PathBuf,
        to: PathBuf,
        error: io::Error,
    },
    #[error(
        "{0} already exists; sqlrs never writes over an existing state or instance: remove it first"
    )]
    DestinationExists(PathBuf),
    #[error(
        "{path} is a {kind}; a PostgreSQL data directory may hold only directories, regular files \
         and symlinks: move it out of the data directory"
    )]
    UnsupportedFileType { path: PathBuf, kind: &'static str },
    #[error(
        "the {backend} snapshot backend does not work on the state store {store}: {why}; set \
         snapshot.backend to auto in the sqlrs config, or {fix}",
        fix = backend.fix()
    )]
    BackendUnavailable {
        store: PathBuf,
        backend: Backend,
        why: String,
    },
    #[error("unknown snapshot backend {0:?}: use auto, btrfs, reflink or copy")]
    UnknownBackend(String),
}

/// What to do when the store's filesystem is full (nothing for other errors).
fn out_of_space_hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => {
            "; the filesystem of the state store is full: remove instances and states you no \
             longer need (`sqlrs ls`, `sqlrs rm`), let the cache keep room for builds \
             (cache.reserve_bytes, cache.max_bytes in the sqlrs config), or move the store to a \
             bigger filesystem"
        }
        _ => "",
    }
}

/// Wraps an io::Error with what was being done and to which path.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |error| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

/// Fails when `dst` exists (even as a dangling symlink).
fn ensure_absent(dst: &Path) -> Result<(), SnapshotError> {
    match dst.symlink_metadata() {
        Ok(_) => Err(SnapshotError::DestinationExists(dst.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", dst)(e)),
    }
}

/// Runs `make`, which creates `dst`; on failure removes whatever it left at `dst`.
fn made_or_cleaned(
    snapshotter: &dyn Snapshotter,
    dst: &Path,
    make: impl FnOnce() -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    ensure_absent(dst)?;
    let result = make();
    if result.is_err() {
        // The original error is what the caller can act on; a failed clean-up
        // leaves a directory that reconciliation at start-up removes.
        let _ = snapshotter.remove(dst);
    }
    result
}

/// Writes back what is dirty on the filesystem holding `path` and waits for
/// it (syncfs): what a state needs before it is recorded.
pub fn write_back(path: &Path) -> Result<(), SnapshotError> {
    sync_filesystem(path)
}

/// Starts writing back the files of the data directory `data` modified at or
/// after `since`, without waiting for the disk (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`), and returns how many it asked for. Called while
/// a build step runs, so the data the step writes reaches the disk alongside
/// the step rather than all at once when its state is made durable (a btrfs
/// snapshot flushes its source first, the copy store syncs the state).
/// `pg_wal` is left out: most segments a long step writes are removed by a
/// checkpoint before the step ends, and what is removed need never be
/// written. A file that cannot be opened (another account's, removed
/// meanwhile) is skipped: this only moves work earlier.
pub fn start_write_back(data: &Path, since: std::time::SystemTime) -> usize {
    fn walk(dir: &Path, since: std::time::SystemTime, top: bool, asked: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                if !(top && entry.file_name() == "pg_wal") {
                    walk(&entry.path(), since, false, asked);
                }
            } else if meta.is_file()
                && meta.len() > 0
                && meta.modified().is_ok_and(|m| m >= since)
                && let Ok(file) = File::open(entry.path())
            {
                // SAFETY: `file` is an open descriptor for the whole call.
                unsafe {
                    libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
                };
                *asked += 1;
            }
        }
    }
    let mut asked = 0;
    walk(data, since, true, &mut asked);
    asked
}

/// Flushes the filesystem holding `path` to disk (syncfs).
fn sync_filesystem(path: &Path) -> Result<(), SnapshotError> {
    let dir = File::open(path).map_err(io_err("open", path))?;
    // SAFETY: syncfs takes any open descriptor; `dir` outlives the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io_err("sync the filesystem of", path)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The apparent size of the regular files under `path`, symlinks not followed.
fn apparent_size(path: &Path) -> Result<u64, SnapshotError> {
    let meta = path.symlink_metadata().map_err(io_err("inspect", path))?;
    if !meta.is_dir() {
        return Ok(if meta.is_file() { meta.len() } else { 0 });
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path).map_err(io_err("read the directory", path))? {
        let entry = entry.map_err(io_err("read the directory", path))?;
        total += apparent_size(&entry.path())?;
    }
    Ok(total)
}

/// Filesystem type numbers (statfs f_type) that detection and tests name.
mod magic {
    pub const BTRFS: u32 = 0x9123_683e;
    pub const XFS: u32 = 0x5846_5342;
    pub const EXT4: u32 = 0xef53;
    pub const TMPFS: u32 = 0x0102_1994;
    pub const OVERLAYFS: u32 = 0x794c_7630;
    pub const ZFS: u32 = 0x2fc1_2fc1;
    pub const NFS: u32 = 0x6969;
    pub const F2FS: u32 = 0xf2f5_2010;
    pub const BCACHEFS: u32 = 0xca45_1a4e;
    pub const FUSE: u32 = 0x6573_5546;
}

/// The statfs f_type of the filesystem holding `path`.
fn filesystem_type(path: &Path) -> Result<u32, SnapshotError> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io_err("inspect", path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path contains a NUL byte",
        ))
    })?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: cpath is NUL-terminated and buf is large enough for statfs.
    if unsafe { libc::statfs(cpath.as_ptr(), buf.as_mut_ptr()) } != 0 {
        return Err(io_err("statfs", path)(io::Error::last_os_error()));
    }
    // SAFETY: statfs succeeded, so it filled buf.
    let buf = unsafe { buf.assume_init() };
    // f_type's integer type differs between architectures; magics fit in 32 bits.
    #[allow(clippy::unnecessary_cast)]
    Ok(buf.f_type as u32)
}

/// A human name for a statfs f_type.
fn filesystem_name(f_type: u32) -> String {
    let name = match f_type {
        magic::BTRFS => "btrfs",
        magic::XFS => "xfs",
        magic::EXT4 => "ext4",
        magic::TMPFS => "tmpfs",
        magic::OVERLAYFS => "overlayfs",
        magic::ZFS => "zfs",
        magic::NFS => "nfs",
        magic::F2FS => "f2fs",
        magic::BCACHEFS => "bcachefs",
        magic::FUSE => "a FUSE filesystem",
        other => return format!("a filesystem of type {other:#x}"),
    };
    name.to_string()
}

//! The copy and reflink snapshotters: a recursive walk that recreates a data
//! directory file by file, preserving owners, permission bits and symlinks,
//! and either copies each regular file's bytes or clones them with `FICLONE`.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{
    Backend, SnapshotError, Snapshotter, apparent_size, ensure_absent, io_err, made_or_cleaned,
    sync_filesystem,
};

/// `FICLONE` = `_IOW(0x94, 9, int)` from linux/fs.h.
const FICLONE: u64 = (1 << 30) | (4 << 16) | (0x94 << 8) | 9;

/// How a regular file's content reaches the new tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileContent {
    /// Copy the bytes (copy_file_range, which some filesystems turn into a clone).
    Copy,
    /// Share the extents with `FICLONE`; fails where the filesystem cannot.
    Reflink,
}

/// A snapshotter that walks the tree: [`Backend::Copy`] or [`Backend::Reflink`].
pub(super) struct TreeSnapshotter {
    content: FileContent,
}

impl TreeSnapshotter {
    pub(super) fn new(content: FileContent) -> Self {
        TreeSnapshotter { content }
    }

    fn copy(&self, src: &Path, dst: &Path, durable: bool) -> Result<(), SnapshotError> {
        made_or_cleaned(self, dst, || {
            copy_tree(src, dst, self.content)?;
            if durable {
                sync_filesystem(dst)?;
            }
            Ok(())
        })
    }
}

impl Snapshotter for TreeSnapshotter {
    fn kind(&self) -> Backend {
        match self.content {
            FileContent::Copy => Backend::Copy,
            FileContent::Reflink => Backend::Reflink,
        }
    }

    fn atomic(&self) -> bool {
        false
    }

    fn create_empty(&self, path: &Path) -> Result<(), SnapshotError> {
        ensure_absent(path)?;
        fs::create_dir(path).map_err(io_err("create the directory", path))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(io_err("set the mode of", path))
    }

    fn clone_writable(&self, src: &Path, dst: &Path) -> Result<(), SnapshotError> {
        self.copy(src, dst, false)
    }

    fn snapshot(&self, src: &Path, dst: &Path) -> Result<(), SnapshotError> {
        self.copy(src, dst, true)
    }

    fn remove(&self, path: &Path) -> Result<(), SnapshotError> {
        let meta = match path.symlink_metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("inspect", path)(e)),
        };
        if meta.is_dir() {
            fs::remove_dir_all(path).map_err(io_err("remove", path))
        } else {
            fs::remove_file(path).map_err(io_err("remove", path))
        }
    }

    fn usage(&self, path: &Path) -> Result<u64, SnapshotError> {
        apparent_size(path)
    }
}

/// Recreates the directory `src` at `dst` (which must not exist).
pub(super) fn copy_tree(src: &Path, dst: &Path, content: FileContent) -> Result<(), SnapshotError> {
    let meta = src.symlink_metadata().map_err(io_err("inspect", src))?;
    if !meta.is_dir() {
        return Err(io_err("copy", src)(io::Error::from(
            io::ErrorKind::NotADirectory,
        )));
    }
    fs::create_dir(dst).map_err(io_err("create the directory", dst))?;
    copy_contents(src, dst, content)?;
    apply_owner_and_mode(dst, &meta)
}

/// Recreates everything inside the directory `src` inside the existing `dst`:
/// the folders and links first (one walk), then the files' content on a few
/// threads (a data directory is about a thousand files, most of them small,
/// so the cost is per file more than per byte), then the folders' modes.
pub(super) fn copy_contents(
    src: &Path,
    dst: &Path,
    content: FileContent,
) -> Result<(), SnapshotError> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    walk(src, dst, &mut files, &mut dirs)?;
    copy_files(&files, content)?;
    // Children before parents: a folder made read-only last.
    for (to, meta) in dirs.iter().rev() {
        apply_owner_and_mode(to, meta)?;
    }
    Ok(())
}

/// A regular file to copy: from, to, its metadata.
type FileJob = (PathBuf, PathBuf, Metadata);

fn walk(
    src: &Path,
    dst: &Path,
    files: &mut Vec<FileJob>,
    dirs: &mut Vec<(PathBuf, Metadata)>,
) -> Result<(), SnapshotError> {
    for entry in fs::read_dir(src).map_err(io_err("read the directory", src))? {
        let entry = entry.map_err(io_err("read the directory", src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        // DirEntry::metadata does not follow symlinks.
        let meta = entry.metadata().map_err(io_err("inspect", &from))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(&to).map_err(io_err("create the directory", &to))?;
            walk(&from, &to, files, dirs)?;
            dirs.push((to, meta));
        } else if kind.is_file() {
            files.push((from, to, meta));
        } else if kind.is_symlink() {
            let target = fs::read_link(&from).map_err(io_err("read the symlink", &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io_err("create the symlink", &to))?;
            std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()))
                .map_err(io_err("set the owner of", &to))?;
        } else {
            let kind = if kind.is_fifo() {
                "named pipe"
            } else if kind.is_socket() {
                "socket"
            } else {
                "device file"
            };
            return Err(SnapshotError::UnsupportedFileType { path: from, kind });
        }
    }
    Ok(())
}

/// Threads that copy files at once.
fn copy_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

fn copy_files(files: &[FileJob], content: FileContent) -> Result<(), SnapshotError> {
    let next = AtomicUsize::new(0);
    let work = || -> Result<(), SnapshotError> {
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some((from, to, meta)) = files.get(k) else {
                return Ok(());
            };
            copy_file(from, to, meta, content)?;
        }
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..copy_threads()).map(|_| scope.spawn(work)).collect();
        let mut result = work();
        for h in helpers {
            let r = h.join().expect("copy thread panicked");
            result = result.and(r);
        }
        result
    })
}

/// Gives `path` the owner, group and permission bits recorded in `meta`.
/// The owner goes first: chown clears set-id bits that chmod then restores.
pub(super) fn apply_owner_and_mode(path: &Path, meta: &Metadata) -> Result<(), SnapshotError> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
        .map_err(io_err("set the owner of", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err("set the mode of", path))
}

/// Copies or clones one regular file, with its owner and mode set on the
/// open descriptor (no second path lookup).
fn copy_file(
    from: &Path,
    to: &Path,
    meta: &Metadata,
    content: FileContent,
) -> Result<(), SnapshotError> {
    let src = File::open(from).map_err(io_err("open", from))?;
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io_err("create", to))?;
    match content {
        FileContent::Copy => {
            copy_bytes(&src, &dst, meta.len()).map_err(|error| SnapshotError::Copy {
                from: from.to_owned(),
                to: to.to_owned(),
                error,
            })?
        }
        FileContent::Reflink => {
            reflink(&src, &dst).map_err(io_err("reflink (FICLONE) into", to))?
        }
    }
    std::os::unix::fs::fchown(&dst, Some(meta.uid()), Some(meta.gid()))
        .map_err(io_err("set the owner of", to))?;
    dst.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err("set the mode of", to))
}

/// `len` bytes from `src` to `dst` with copy_file_range (in the kernel; a
/// clone where the filesystem can), falling back to read/write.
fn copy_bytes(src: &File, dst: &File, len: u64) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let chunk = usize::try_from(left).unwrap_or(usize::MAX).min(1 << 30);
        // SAFETY: both descriptors are open for the call; null offsets use and
        // advance the files' own positions.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                chunk,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                    io::copy(&mut &*src, &mut &*dst).map(drop)
                }
                _ => Err(e),
            };
        }
        if n == 0 {
            // The file shrank while copied; what was there is copied.
            break;
        }
        left -= n as u64;
    }
    // Grown while copied: the rest too.
    io::copy(&mut &*src, &mut &*dst).map(drop)
}

/// Makes `dst` share `src`'s extents (ioctl FICLONE).
pub(super) fn reflink(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its integer argument; both
    // files stay open for the duration of the call.
    if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

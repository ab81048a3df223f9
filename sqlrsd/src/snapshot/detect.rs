//! Picks the snapshotter for a state store by trying each backend on the
//! store itself: btrfs subvolume snapshots, then `FICLONE` reflinks, then
//! plain copies, and says why in one line.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::btrfs::BtrfsSnapshotter;
use super::tree::{self, FileContent, TreeSnapshotter};
use super::{
    Backend, BackendChoice, Detected, SnapshotError, Snapshotter, filesystem_name, filesystem_type,
    io_err, magic,
};

/// Chooses the snapshotter for the store directory `store` (created if missing).
pub fn detect(store: &Path, choice: BackendChoice) -> Result<Detected, SnapshotError> {
    fs::create_dir_all(store).map_err(io_err("create the state store", store))?;
    let f_type = filesystem_type(store)?;
    let fs_name = filesystem_name(f_type);
    let shown = store.display();
    match choice {
        BackendChoice::Fixed(backend) => {
            if backend == Backend::Btrfs && f_type != magic::BTRFS {
                return Err(SnapshotError::BackendUnavailable {
                    store: store.to_path_buf(),
                    backend,
                    why: format!("it is on {fs_name}, not btrfs"),
                });
            }
            probe(store, backend).map_err(|failure| SnapshotError::BackendUnavailable {
                store: store.to_path_buf(),
                backend,
                why: failure.describe(&fs_name),
            })?;
            let what = match backend {
                Backend::Btrfs => "subvolume snapshots work",
                Backend::Reflink => "reflinks (FICLONE) work; each file is cloned separately",
                Backend::Copy => "copies are O(size)",
            };
            Ok(detected(
                backend,
                format!("{backend}: set in the config; {shown} is on {fs_name} and {what}"),
            ))
        }
        BackendChoice::Auto => {
            let mut btrfs_failure = None;
            if f_type == magic::BTRFS {
                match probe(store, Backend::Btrfs) {
                    Ok(()) => {
                        return Ok(detected(
                            Backend::Btrfs,
                            format!("btrfs: {shown} is on btrfs and subvolume snapshots work"),
                        ));
                    }
                    Err(failure) => btrfs_failure = Some(failure.describe(&fs_name)),
                }
            }
            let reflink_failure = match probe(store, Backend::Reflink) {
                Ok(()) => {
                    let reason = match btrfs_failure {
                        Some(why) => format!(
                            "reflink: {shown} is on btrfs but subvolume snapshots fail ({why}); \
                             reflinks work, each file is cloned separately"
                        ),
                        None => format!(
                            "reflink: {shown} is on {fs_name} and reflinks (FICLONE) work; each \
                             file is cloned separately"
                        ),
                    };
                    return Ok(detected(Backend::Reflink, reason));
                }
                Err(why) => why,
            };
            probe(store, Backend::Copy).map_err(|failure| SnapshotError::BackendUnavailable {
                store: store.to_path_buf(),
                backend: Backend::Copy,
                why: failure.describe(&fs_name),
            })?;
            let no_reflink = if reflink_failure.unsupported {
                "no reflink".to_string()
            } else {
                format!("no reflink: {}", reflink_failure.describe(&fs_name))
            };
            Ok(detected(
                Backend::Copy,
                format!("copy: {shown} is on {fs_name} ({no_reflink}); copies are O(size)"),
            ))
        }
    }
}

fn snapshotter(backend: Backend) -> Box<dyn Snapshotter> {
    match backend {
        Backend::Btrfs => Box::new(BtrfsSnapshotter),
        Backend::Reflink => Box::new(TreeSnapshotter::new(FileContent::Reflink)),
        Backend::Copy => Box::new(TreeSnapshotter::new(FileContent::Copy)),
    }
}

fn detected(backend: Backend, reason: String) -> Detected {
    Detected {
        snapshotter: snapshotter(backend),
        reason,
    }
}

/// A fresh name in `store` for probe files, unlikely to collide with anything.
fn probe_path(store: &Path, what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    store.join(format!(".sqlrs-probe-{what}-{}-{n}", std::process::id()))
}

/// Why a backend did not work on a store.
struct ProbeFailure {
    /// The filesystem lacks the feature (as opposed to, say, a permission problem).
    unsupported: bool,
    error: SnapshotError,
}

impl ProbeFailure {
    /// One short clause for a status line or an error message.
    fn describe(&self, fs_name: &str) -> String {
        match &self.error {
            _ if self.unsupported => format!("{fs_name} does not support it"),
            SnapshotError::Io { op, error, .. } => format!("{op} failed: {error}"),
            other => other.to_string(),
        }
    }
}

/// Tries `backend` on `store` for real and cleans up.
fn probe(store: &Path, backend: Backend) -> Result<(), ProbeFailure> {
    let snapshotter = snapshotter(backend);
    let src = probe_path(store, "src");
    let dst = probe_path(store, "dst");
    let result = (|| -> Result<(), SnapshotError> {
        match backend {
            Backend::Btrfs => {
                snapshotter.create_empty(&src)?;
                snapshotter.snapshot(&src, &dst)
            }
            Backend::Reflink | Backend::Copy => {
                write_probe_file(&src)?;
                let from = File::open(&src).map_err(io_err("open", &src))?;
                let to = File::create(&dst).map_err(io_err("create", &dst))?;
                match backend {
                    Backend::Reflink => tree::reflink(&from, &to).map_err(io_err("reflink", &dst)),
                    _ => fs::copy(&src, &dst).map(drop).map_err(io_err("copy", &src)),
                }
            }
        }
    })();
    let cleanup = [&dst, &src]
        .into_iter()
        .map(|p| snapshotter.remove(p))
        .find_map(Result::err);
    match (result, cleanup) {
        (Ok(()), None) => Ok(()),
        (Err(error), _) | (Ok(()), Some(error)) => Err(ProbeFailure {
            unsupported: matches!(
                &error,
                SnapshotError::Io { error, .. } if matches!(
                    error.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL | libc::EXDEV)
                )
            ),
            error,
        }),
    }
}

fn write_probe_file(path: &Path) -> Result<(), SnapshotError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err("create", path))?;
    file.write_all(b"sqlrs snapshot backend probe\n")
        .map_err(io_err("write", path))
}

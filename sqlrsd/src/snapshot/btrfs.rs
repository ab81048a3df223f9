//! The btrfs snapshotter: every data directory is a subvolume; states are
//! read-only snapshots and instances writable ones, made with the kernel's
//! btrfs ioctls in O(1) regardless of the size of the directory.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::tree::{self, FileContent};
use super::{
    Backend, SnapshotError, Snapshotter, apparent_size, ensure_absent, filesystem_type, io_err,
    made_or_cleaned, magic, sync_filesystem,
};

/// `struct btrfs_ioctl_vol_args` from linux/btrfs.h.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2` from linux/btrfs.h; the unions are
/// represented by their largest members.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

const _: () = assert!(size_of::<VolArgs>() == 4096);
const _: () = assert!(size_of::<VolArgsV2>() == 4096);

const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (0x94 << 8) | nr
}

const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0x94 << 8) | nr
}

const IOC_SUBVOL_CREATE: u64 = iow(14, size_of::<VolArgs>());
const IOC_SNAP_DESTROY: u64 = iow(15, size_of::<VolArgs>());
const IOC_SNAP_CREATE_V2: u64 = iow(23, size_of::<VolArgsV2>());
const IOC_SUBVOL_GETFLAGS: u64 = ior(25, size_of::<u64>());
const IOC_SUBVOL_SETFLAGS: u64 = iow(26, size_of::<u64>());
const SUBVOL_RDONLY: u64 = 1 << 1;
/// The inode number of every subvolume's root directory.
const FIRST_FREE_OBJECTID: u64 = 256;

pub(super) struct BtrfsSnapshotter;

impl Snapshotter for BtrfsSnapshotter {
    fn kind(&self) -> Backend {
        Backend::Btrfs
    }

    fn atomic(&self) -> bool {
        true
    }

    fn create_empty(&self, path: &Path) -> Result<(), SnapshotError> {
        made_or_cleaned(self, path, || {
            create_subvolume(path)?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                .map_err(io_err("set the mode of", path))
        })
    }

    fn clone_writable(&self, src: &Path, dst: &Path) -> Result<(), SnapshotError> {
        made_or_cleaned(self, dst, || snapshot_or_copy(src, dst, false))
    }

    fn snapshot(&self, src: &Path, dst: &Path) -> Result<(), SnapshotError> {
        made_or_cleaned(self, dst, || {
            snapshot_or_copy(src, dst, true)?;
            sync_filesystem(dst)
        })
    }

    fn remove(&self, path: &Path) -> Result<(), SnapshotError> {
        let meta = match path.symlink_metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("inspect", path)(e)),
        };
        if is_subvolume(path, &meta)? {
            destroy_subvolume(path)
        } else if meta.is_dir() {
            // A plain directory may hold subvolumes (an instance folder holding
            // its data), which remove_dir_all could not delete when read-only.
            for entry in fs::read_dir(path).map_err(io_err("read the directory", path))? {
                let entry = entry.map_err(io_err("read the directory", path))?;
                self.remove(&entry.path())?;
            }
            fs::remove_dir(path).map_err(io_err("remove", path))
        } else {
            fs::remove_file(path).map_err(io_err("remove", path))
        }
    }

    fn usage(&self, path: &Path) -> Result<u64, SnapshotError> {
        apparent_size(path)
    }
}

/// Snapshots the subvolume `src` at `dst`. A plain directory (a state made by
/// another backend on the same filesystem) is reflinked into a new subvolume
/// instead, so states and instances are always subvolumes.
fn snapshot_or_copy(src: &Path, dst: &Path, read_only: bool) -> Result<(), SnapshotError> {
    let meta = src.symlink_metadata().map_err(io_err("inspect", src))?;
    if is_subvolume(src, &meta)? {
        return create_snapshot(src, dst, read_only);
    }
    if !meta.is_dir() {
        return Err(io_err("snapshot", src)(io::Error::from(
            io::ErrorKind::NotADirectory,
        )));
    }
    create_subvolume(dst)?;
    tree::copy_contents(src, dst, FileContent::Reflink)?;
    tree::apply_owner_and_mode(dst, &meta)?;
    if read_only {
        set_read_only(dst, true)?;
    }
    Ok(())
}

/// True when `path` is the root of a btrfs subvolume.
pub(super) fn is_subvolume(path: &Path, meta: &fs::Metadata) -> Result<bool, SnapshotError> {
    Ok(
        meta.is_dir()
            && meta.ino() == FIRST_FREE_OBJECTID
            && filesystem_type(path)? == magic::BTRFS,
    )
}

/// Opens the parent directory of `path` and returns it with the last component.
fn parent_and_name(path: &Path) -> Result<(File, &OsStr), SnapshotError> {
    let name = path
        .file_name()
        .ok_or_else(|| io_err("name", path)(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = File::open(parent).map_err(io_err("open", parent))?;
    Ok((dir, name))
}

/// Copies `name` into a NUL-terminated ioctl name field.
fn fill_name(field: &mut [u8], name: &OsStr, path: &Path) -> Result<(), SnapshotError> {
    let bytes = name.as_bytes();
    if bytes.len() >= field.len() {
        return Err(io_err("name", path)(io::Error::from(
            io::ErrorKind::InvalidFilename,
        )));
    }
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// Issues a btrfs ioctl whose argument is a pointer.
fn ioctl<T>(dir: &File, request: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, exclusively borrowed value of the type the
    // request expects; the kernel reads and writes only within it.
    if unsafe { libc::ioctl(dir.as_raw_fd(), request as _, arg as *mut T) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn vol_args(name: &OsStr, path: &Path) -> Result<Box<VolArgs>, SnapshotError> {
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; 4088],
    });
    fill_name(&mut args.name, name, path)?;
    Ok(args)
}

fn create_subvolume(path: &Path) -> Result<(), SnapshotError> {
    ensure_absent(path)?;
    let (parent, name) = parent_and_name(path)?;
    let mut args = vol_args(name, path)?;
    ioctl(&parent, IOC_SUBVOL_CREATE, &mut *args).map_err(io_err("create the subvolume", path))
}

fn create_snapshot(src: &Path, dst: &Path, read_only: bool) -> Result<(), SnapshotError> {
    let source = File::open(src).map_err(io_err("open", src))?;
    let (parent, name) = parent_and_name(dst)?;
    let mut args = Box::new(VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if read_only { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; 4040],
    });
    fill_name(&mut args.name, name, dst)?;
    ioctl(&parent, IOC_SNAP_CREATE_V2, &mut *args).map_err(io_err("snapshot the subvolume", src))
}

fn set_read_only(path: &Path, read_only: bool) -> Result<(), SnapshotError> {
    let dir = File::open(path).map_err(io_err("open", path))?;
    let mut flags = 0u64;
    ioctl(&dir, IOC_SUBVOL_GETFLAGS, &mut flags)
        .map_err(io_err("read the subvolume flags of", path))?;
    let mut wanted = if read_only {
        flags | SUBVOL_RDONLY
    } else {
        flags & !SUBVOL_RDONLY
    };
    if wanted == flags {
        return Ok(());
    }
    ioctl(&dir, IOC_SUBVOL_SETFLAGS, &mut wanted)
        .map_err(io_err("set the subvolume flags of", path))
}

/// Deletes the subvolume at `path` with its content. Without CAP_SYS_ADMIN the
/// kernel refuses SNAP_DESTROY on read-only subvolumes (and everywhere unless
/// mounted with user_subvol_rm_allowed); then the subvolume is made writable,
/// emptied and removed with rmdir, which owners may do.
fn destroy_subvolume(path: &Path) -> Result<(), SnapshotError> {
    let (parent, name) = parent_and_name(path)?;
    let mut args = vol_args(name, path)?;
    match ioctl(&parent, IOC_SNAP_DESTROY, &mut *args) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::EACCES | libc::EROFS)
            ) =>
        {
            set_read_only(path, false)?;
            if ioctl(&parent, IOC_SNAP_DESTROY, &mut *args).is_ok() {
                return Ok(());
            }
            for entry in fs::read_dir(path).map_err(io_err("read the directory", path))? {
                let entry = entry.map_err(io_err("read the directory", path))?;
                BtrfsSnapshotter.remove(&entry.path())?;
            }
            fs::remove_dir(path).map_err(io_err("delete the subvolume", path))
        }
        Err(e) => Err(io_err("delete the subvolume", path)(e)),
    }
}

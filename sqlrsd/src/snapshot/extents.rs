//! Space accounting that knows about copy-on-write: which physical byte ranges
//! the files of a state occupy (FIEMAP), so that blocks a btrfs snapshot or a
//! reflink clone shares between states count once, and what removing one state
//! would give back.
//!
//! The numbers are as good as what FIEMAP reports. On btrfs a state that
//! overwrote part of a shared extent leaves the whole old extent allocated
//! while anyone references part of it ("bookend" extents), so `exclusive` can
//! exceed what deleting the state frees there; compressed btrfs extents count
//! at their uncompressed length. Small files kept inside filesystem metadata
//! (btrfs and ext4 inline data) count as private to each tree even where a
//! snapshot shares them, at the length the filesystem reports (btrfs: a
//! whole 4 KiB block for a 3-byte PG_VERSION).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hash::Hash;
use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::{SnapshotError, io_err};

/// `struct fiemap` from linux/fiemap.h, without its flexible extent array.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
}

/// `struct fiemap_extent` from linux/fiemap.h.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// Extents asked for per FIEMAP call: a data file of 1 GiB (PostgreSQL's
/// segment size) written in one go is a handful of extents, so one call
/// nearly always maps a file.
const BATCH: usize = 128;

/// A `struct fiemap` followed by room for [`BATCH`] extents, as the kernel
/// expects them in one buffer.
#[repr(C)]
struct FiemapBuf {
    header: Fiemap,
    extents: [FiemapExtent; BATCH],
}

const _: () = assert!(size_of::<Fiemap>() == 32);
const _: () = assert!(size_of::<FiemapExtent>() == 56);
const _: () = assert!(size_of::<FiemapBuf>() == 32 + 56 * BATCH);

/// `FS_IOC_FIEMAP` = `_IOWR('f', 11, struct fiemap)` from linux/fs.h.
const FS_IOC_FIEMAP: u64 = (3 << 30) | ((size_of::<Fiemap>() as u64) << 16) | (0x66 << 8) | 11;

/// The last extent of the file.
const EXTENT_LAST: u32 = 0x1;
/// Location unknown; also set with DELALLOC.
const EXTENT_UNKNOWN: u32 = 0x2;
/// Not yet allocated: written but not written back.
const EXTENT_DELALLOC: u32 = 0x4;
/// Not block-aligned, so the physical offset names no block of its own.
const EXTENT_NOT_ALIGNED: u32 = 0x100;
/// Stored with the inode's metadata (btrfs, ext4 inline data).
const EXTENT_DATA_INLINE: u32 = 0x200;
/// Packed with other files' tails in one block.
const EXTENT_DATA_TAIL: u32 = 0x400;
/// Flags of extents whose physical address cannot be compared with others'.
const UNSHAREABLE: u32 =
    EXTENT_UNKNOWN | EXTENT_DELALLOC | EXTENT_NOT_ALIGNED | EXTENT_DATA_INLINE | EXTENT_DATA_TAIL;

/// The physical byte ranges the regular files of a tree occupy, plus bytes
/// that have no shareable physical address (inline / delalloc / unknown extents,
/// or filesystems without FIEMAP, where allocated size st_blocks*512 is used).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extents {
    /// Sorted, disjoint, non-adjacent, non-empty half-open ranges `[start, end)`.
    ranges: Vec<(u64, u64)>,
    /// Bytes counted without a physical address: never shared with another tree.
    private: u64,
}

impl Extents {
    /// Extents made of `ranges` (half-open `[start, end)`, in any order,
    /// overlapping or empty ones allowed) and `private` bytes.
    pub fn new(mut ranges: Vec<(u64, u64)>, private: u64) -> Extents {
        normalize(&mut ranges);
        Extents { ranges, private }
    }

    /// Walks `path` (symlinks not followed; directories, regular files;
    /// others ignored) and maps every regular file with FIEMAP.
    ///
    /// Files and directories that disappear during the walk (an instance's
    /// server deleting temporary files) are left out rather than failing it.
    /// Blocks: call it from `spawn_blocking`.
    pub fn of_tree(path: &Path) -> Result<Extents, SnapshotError> {
        let meta = path.symlink_metadata().map_err(io_err("inspect", path))?;
        let mut walk = Walk::default();
        if meta.is_dir() {
            walk.dir(path)?;
        } else if meta.is_file() {
            walk.file(path)?;
        }
        let mut ranges = walk.ranges;
        normalize(&mut ranges);
        Ok(Extents {
            ranges,
            private: walk.private,
        })
    }

    /// Bytes the tree occupies on its own (ranges + private).
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum::<u64>() + self.private
    }

    /// The physical ranges, sorted and merged.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// The bytes without a physical address.
    pub fn private(&self) -> u64 {
        self.private
    }
}

/// Sorts `ranges` and merges the ones that overlap or touch; drops empty ones.
fn normalize(ranges: &mut Vec<(u64, u64)>) {
    ranges.retain(|(s, e)| s < e);
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    *ranges = merged;
}

/// Space accounting over several trees (keys are e.g. state ids).
// Default and PartialEq by hand: derived ones would demand K: Default, and
// K: PartialEq is not enough for comparing HashMaps.
#[derive(Debug, Clone)]
pub struct Accounting<K> {
    /// Bytes all the trees occupy together: the union of their ranges plus
    /// every tree's private bytes.
    pub total: u64,
    /// Per tree, the bytes only it references (its ranges covered by no
    /// other tree, plus its private bytes): what removing it frees.
    pub exclusive: HashMap<K, u64>,
}

impl<K> Default for Accounting<K> {
    fn default() -> Self {
        Accounting {
            total: 0,
            exclusive: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash> PartialEq for Accounting<K> {
    fn eq(&self, other: &Self) -> bool {
        self.total == other.total && self.exclusive == other.exclusive
    }
}

impl<K: Eq + Hash> Eq for Accounting<K> {}

/// Accounts for `trees` in one sweep over the boundaries of their ranges,
/// O(E log E) in the number of ranges. Every key gets an `exclusive` entry;
/// a key given twice gets the sum of what its trees hold alone. The trees
/// must be on one filesystem: the physical addresses of two are unrelated.
pub fn account<K: Clone + Eq + Hash>(trees: &[(K, &Extents)]) -> Accounting<K> {
    let mut exclusive: HashMap<K, u64> = HashMap::with_capacity(trees.len());
    let mut total = 0;
    // (position, tree, opens): a tree's own ranges are disjoint, so at any
    // point each tree covers it at most once.
    let mut edges = Vec::with_capacity(trees.iter().map(|(_, e)| 2 * e.ranges.len()).sum());
    for (i, (key, extents)) in trees.iter().enumerate() {
        *exclusive.entry(key.clone()).or_default() += extents.private;
        total += extents.private;
        for &(s, e) in &extents.ranges {
            edges.push((s, i, true));
            edges.push((e, i, false));
        }
    }
    edges.sort_unstable_by_key(|&(position, ..)| position);
    let mut alone = vec![0u64; trees.len()];
    // How many trees cover the current point and the XOR of their indices,
    // which is the index of the one tree when only one does.
    let mut covering = 0usize;
    let mut which = 0usize;
    let mut at = 0u64;
    for (position, tree, opens) in edges {
        let span = position - at;
        if covering > 0 {
            total += span;
        }
        if covering == 1 {
            alone[which] += span;
        }
        at = position;
        which ^= tree;
        if opens {
            covering += 1;
        } else {
            covering -= 1;
        }
    }
    for ((key, _), bytes) in trees.iter().zip(alone) {
        *exclusive.get_mut(key).expect("every key was entered above") += bytes;
    }
    Accounting { total, exclusive }
}

/// What a walk has gathered so far.
#[derive(Default)]
struct Walk {
    ranges: Vec<(u64, u64)>,
    private: u64,
}

impl Walk {
    fn dir(&mut self, path: &Path) -> Result<(), SnapshotError> {
        let entries = match fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read the directory", path)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read the directory", path))?;
            let child = entry.path();
            // The type comes from the directory entry, without following symlinks.
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("inspect", &child)(e)),
            };
            if kind.is_dir() {
                self.dir(&child)?;
            } else if kind.is_file() {
                self.file(&child)?;
            }
        }
        Ok(())
    }

    fn file(&mut self, path: &Path) -> Result<(), SnapshotError> {
        // O_NONBLOCK and O_NOFOLLOW: if the entry was swapped for a FIFO or a
        // symlink since it was listed, the open neither hangs nor leaves the tree.
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(()),
            Err(e) => return Err(io_err("open", path)(e)),
        };
        let meta = file.metadata().map_err(io_err("inspect", path))?;
        if !meta.is_file() {
            return Ok(());
        }
        self.open_file(&file, &meta, path)
    }

    /// Maps `file`, open and known to be regular, whose metadata is `meta`.
    fn open_file(
        &mut self,
        file: &File,
        meta: &fs::Metadata,
        path: &Path,
    ) -> Result<(), SnapshotError> {
        let before = self.ranges.len();
        match map_file(file, &mut self.ranges) {
            Ok(private) => self.private += private,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL)
                ) =>
            {
                // No FIEMAP here (tmpfs, some FUSE and network filesystems):
                // what the file has allocated, with nothing known to be shared.
                self.ranges.truncate(before);
                self.private += meta.blocks() * 512;
            }
            Err(e) => return Err(io_err("map the extents (FIEMAP) of", path)(e)),
        }
        Ok(())
    }
}

/// Appends the physical ranges of `file` to `ranges` and returns the bytes of
/// its extents that have no physical address. On error, `ranges` may hold
/// part of the file's ranges.
fn map_file(file: &File, ranges: &mut Vec<(u64, u64)>) -> io::Result<u64> {
    let mut buf = Box::new(FiemapBuf {
        header: Fiemap::default(),
        extents: [FiemapExtent::default(); BATCH],
    });
    let mut private = 0u64;
    let mut start = 0u64;
    loop {
        // No FIEMAP_FLAG_SYNC: writing back an instance's dirty pages just to
        // measure it would cost more than the measure is worth; what is not
        // written back yet shows as delalloc and counts as private.
        buf.header = Fiemap {
            start,
            length: u64::MAX,
            extent_count: BATCH as u32,
            ..Fiemap::default()
        };
        // SAFETY: buf is a live, exclusively borrowed fiemap header followed by
        // room for extent_count extents, which is all the kernel writes.
        if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, &mut *buf) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mapped = (buf.header.mapped_extents as usize).min(BATCH);
        let extents = &buf.extents[..mapped];
        for extent in extents {
            if extent.flags & UNSHAREABLE != 0 {
                private += extent.length;
            } else {
                ranges.push((
                    extent.physical,
                    extent.physical.saturating_add(extent.length),
                ));
            }
        }
        let Some(last) = extents.last() else {
            return Ok(private);
        };
        if last.flags & EXTENT_LAST != 0 {
            return Ok(private);
        }
        let next = last.logical.saturating_add(last.length);
        if next <= start {
            return Err(io::Error::other(format!(
                "FIEMAP made no progress past byte {start}"
            )));
        }
        start = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;

    /// Half-open byte ranges as a test table writes them.
    type Ranges = &'static [(u64, u64)];

    #[test]
    fn new_sorts_and_merges_ranges() {
        let cases: &[(Ranges, Ranges)] = &[
            (&[], &[]),
            (&[(5, 5)], &[]),
            (&[(10, 20), (0, 5)], &[(0, 5), (10, 20)]),
            (&[(0, 10), (10, 20)], &[(0, 20)]),
            (&[(0, 10), (5, 15), (30, 40)], &[(0, 15), (30, 40)]),
            (&[(0, 100), (10, 20), (50, 60)], &[(0, 100)]),
            (&[(3, 4), (1, 2), (2, 3), (7, 7)], &[(1, 4)]),
        ];
        for (given, merged) in cases {
            let extents = Extents::new(given.to_vec(), 7);
            assert_eq!(extents.ranges(), *merged, "{given:?}");
            let len: u64 = merged.iter().map(|(s, e)| e - s).sum();
            assert_eq!(extents.bytes(), len + 7, "{given:?}");
        }
    }

    /// One case of `account`: trees as (ranges, private) and the expected
    /// total and exclusive bytes per tree, in order.
    struct Case {
        name: &'static str,
        trees: Vec<(Ranges, u64)>,
        total: u64,
        exclusive: Vec<u64>,
    }

    #[test]
    fn account_sweeps_shared_ranges() {
        let cases = vec![
            Case {
                name: "no trees",
                trees: vec![],
                total: 0,
                exclusive: vec![],
            },
            Case {
                name: "one tree",
                trees: vec![(&[(0, 10), (20, 30)], 5)],
                total: 25,
                exclusive: vec![25],
            },
            Case {
                name: "empty tree next to another",
                trees: vec![(&[], 0), (&[(0, 10)], 0)],
                total: 10,
                exclusive: vec![0, 10],
            },
            Case {
                name: "disjoint",
                trees: vec![(&[(0, 10)], 0), (&[(100, 150)], 0)],
                total: 60,
                exclusive: vec![10, 50],
            },
            Case {
                name: "adjacent",
                trees: vec![(&[(0, 10)], 0), (&[(10, 20)], 0)],
                total: 20,
                exclusive: vec![10, 10],
            },
            Case {
                name: "overlapping",
                trees: vec![(&[(0, 10)], 0), (&[(5, 20)], 0)],
                total: 20,
                exclusive: vec![5, 10],
            },
            Case {
                name: "identical",
                trees: vec![(&[(0, 16 * K)], 0), (&[(0, 16 * K)], 0)],
                total: 16 * K,
                exclusive: vec![0, 0],
            },
            Case {
                name: "nested",
                trees: vec![(&[(0, 100)], 0), (&[(40, 60)], 0)],
                total: 100,
                exclusive: vec![80, 0],
            },
            Case {
                // A snapshot whose clone rewrote 1 KiB in the middle.
                name: "clone with one rewritten block",
                trees: vec![
                    (&[(0, 16 * K)], 0),
                    (&[(0, 4 * K), (5 * K, 16 * K), (100 * K, 101 * K)], 0),
                ],
                total: 17 * K,
                exclusive: vec![K, K],
            },
            Case {
                name: "three trees",
                trees: vec![
                    (&[(0, 30)], 0),
                    (&[(10, 40)], 0),
                    (&[(20, 50), (60, 70)], 0),
                ],
                total: 60,
                // 0..10 only the first; 30..40 second and third; 40..50, 60..70 only the third.
                exclusive: vec![10, 0, 20],
            },
            Case {
                name: "three trees sharing one range, one alone elsewhere",
                trees: vec![(&[(0, 10)], 0), (&[(0, 10)], 0), (&[(0, 10), (10, 12)], 0)],
                total: 12,
                exclusive: vec![0, 0, 2],
            },
            Case {
                name: "private bytes are never shared",
                trees: vec![(&[(0, 10)], 3), (&[(0, 10)], 4), (&[], 5)],
                total: 22,
                exclusive: vec![3, 4, 5],
            },
            Case {
                name: "many boundaries at one position",
                trees: vec![
                    (&[(0, 10), (20, 30)], 0),
                    (&[(10, 20)], 0),
                    (&[(10, 20), (30, 40)], 0),
                ],
                total: 40,
                exclusive: vec![20, 0, 10],
            },
            Case {
                name: "ranges at the top of the address space",
                trees: vec![
                    (&[(u64::MAX - 10, u64::MAX)], 0),
                    (&[(u64::MAX - 4, u64::MAX)], 0),
                ],
                total: 10,
                exclusive: vec![6, 0],
            },
        ];
        for case in cases {
            let extents: Vec<Extents> = case
                .trees
                .iter()
                .map(|(ranges, private)| Extents::new(ranges.to_vec(), *private))
                .collect();
            let trees: Vec<(usize, &Extents)> = extents.iter().enumerate().collect();
            let got = account(&trees);
            assert_eq!(got.total, case.total, "{}: total", case.name);
            let exclusive: Vec<u64> = (0..trees.len()).map(|i| got.exclusive[&i]).collect();
            assert_eq!(exclusive, case.exclusive, "{}: exclusive", case.name);
            // Nothing is counted twice or lost: what only one tree holds plus
            // what several hold is the total.
            let union = Extents::new(
                extents.iter().flat_map(|e| e.ranges().to_vec()).collect(),
                0,
            );
            let private: u64 = extents.iter().map(Extents::private).sum();
            assert_eq!(union.bytes() + private, case.total, "{}: union", case.name);
        }
    }

    #[test]
    fn account_adds_up_a_key_given_twice() {
        let a = Extents::new(vec![(0, 10)], 1);
        let b = Extents::new(vec![(20, 30)], 2);
        let got = account(&[("x", &a), ("x", &b)]);
        assert_eq!(got.total, 23);
        assert_eq!(got.exclusive, HashMap::from([("x", 23)]));
    }

    /// A memfd lives on tmpfs, which has no FIEMAP: the file's allocated size
    /// counts as private.
    #[test]
    fn files_without_fiemap_count_their_allocated_size() {
        let name = std::ffi::CString::new("sqlrs-extents-test").expect("no NUL");
        // SAFETY: name is NUL-terminated.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: fd was just opened and nothing else owns it.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut ranges = vec![];
        let err = map_file(&file, &mut ranges).expect_err("tmpfs has no FIEMAP");
        assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP), "{err}");

        std::io::Write::write_all(&mut &file, &vec![7u8; 1 << 20]).expect("write");
        let meta = file.metadata().expect("fstat");
        let mut walk = Walk::default();
        walk.open_file(&file, &meta, Path::new("memfd"))
            .expect("the fallback");
        let extents = Extents::new(walk.ranges, walk.private);
        assert_eq!(extents.ranges(), &[] as &[(u64, u64)]);
        assert_eq!(extents.private(), 1 << 20);
    }
}

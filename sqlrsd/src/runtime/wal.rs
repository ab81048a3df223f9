//! WAL segments a cleanly stopped cluster does not need.
//!
//! After a checkpoint PostgreSQL renames old WAL segments to future names
//! for reuse instead of deleting them, keeping about twice the WAL written
//! in the last checkpoint cycle (up to `max_wal_size`): a step that loads
//! 10 MB leaves some 20 segments of stale WAL behind. Once the server has
//! shut down cleanly, nothing after the segment holding its shutdown
//! checkpoint is read again (the server writes the next record right after
//! that checkpoint and creates any segment it is missing), so a copy store
//! leaves those segments out of the state instead of copying them into every
//! instance.
//!
//! Read from `global/pg_control`: its first fields have kept their places
//! since PostgreSQL 9.3 (system identifier at 0, control version at 8,
//! cluster state at 16, time at 24, the latest checkpoint's location at 32,
//! its REDO location at 40 and its timeline at 48). Anything unexpected (a
//! state other than "shut down", a checkpoint segment not on disk, names not
//! of this timeline) leaves the directory as it is.

use std::fs;
use std::io;
use std::path::Path;

/// `DBState::DB_SHUTDOWNED` in pg_control.
const SHUT_DOWN: u32 = 1;

/// Removes the WAL segments after the shutdown checkpoint's segment from
/// the stopped cluster in `data_dir`; returns the bytes removed. Does
/// nothing when the cluster was not shut down cleanly.
pub fn prune_recycled_segments(data_dir: &Path) -> io::Result<u64> {
    let control = fs::read(data_dir.join("global/pg_control"))?;
    let Some(checkpoint) = Checkpoint::parse(&control) else {
        return Ok(0);
    };
    let wal = data_dir.join("pg_wal");
    // The segment size is the checkpoint segment's length: a power of two
    // from 1 MB to 1 GB (initdb --wal-segsize).
    let mut seg_size = None;
    for shift in 20..=30 {
        let size = 1u64 << shift;
        let name = checkpoint.segment_name(size);
        if fs::metadata(wal.join(&name)).is_ok_and(|m| m.is_file() && m.len() == size) {
            seg_size = Some(size);
            break;
        }
    }
    let Some(seg_size) = seg_size else {
        return Ok(0);
    };
    let current = checkpoint.location / seg_size;
    let per_id = 0x1_0000_0000 / seg_size;
    let mut removed = 0;
    for entry in fs::read_dir(&wal)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some((timeline, segno)) = parse_segment_name(&name, per_id) else {
            continue;
        };
        if timeline != checkpoint.timeline || segno <= current {
            continue;
        }
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        fs::remove_file(entry.path())?;
        removed += meta.len();
    }
    Ok(removed)
}

/// What pruning needs from pg_control.
#[derive(Debug, PartialEq, Eq)]
struct Checkpoint {
    location: u64,
    timeline: u32,
}

impl Checkpoint {
    /// The latest checkpoint of a cleanly shut down cluster, if it is one.
    fn parse(control: &[u8]) -> Option<Self> {
        let u32_at = |at: usize| {
            Some(u32::from_ne_bytes(
                control.get(at..at + 4)?.try_into().ok()?,
            ))
        };
        let u64_at = |at: usize| {
            Some(u64::from_ne_bytes(
                control.get(at..at + 8)?.try_into().ok()?,
            ))
        };
        if u32_at(16)? != SHUT_DOWN {
            return None;
        }
        let location = u64_at(32)?;
        // A shutdown checkpoint is its own REDO point.
        if u64_at(40)? != location {
            return None;
        }
        let timeline = u32_at(48)?;
        (timeline != 0 && location != 0).then_some(Self { location, timeline })
    }

    fn segment_name(&self, seg_size: u64) -> String {
        segment_name(
            self.timeline,
            self.location / seg_size,
            0x1_0000_0000 / seg_size,
        )
    }
}

/// `XLogFileName`: timeline, then the segment number split at 4 GB of WAL.
fn segment_name(timeline: u32, segno: u64, per_id: u64) -> String {
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// The timeline and segment number of a WAL segment's file name.
fn parse_segment_name(name: &str, per_id: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
    let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
    let lo = u64::from_str_radix(&name[16..], 16).ok()?;
    (lo < per_id).then_some((timeline, hi * per_id + lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn control(state: u32, checkpoint: u64, redo: u64, timeline: u32) -> Vec<u8> {
        let mut c = vec![0u8; 8192];
        c[8..12].copy_from_slice(&1300u32.to_ne_bytes());
        c[16..20].copy_from_slice(&state.to_ne_bytes());
        c[32..40].copy_from_slice(&checkpoint.to_ne_bytes());
        c[40..48].copy_from_slice(&redo.to_ne_bytes());
        c[48..52].copy_from_slice(&timeline.to_ne_bytes());
        c
    }

    /// A data directory with pg_control and 1 MB segments `segs` of
    /// timeline 1, plus the files PostgreSQL keeps beside them.
    fn cluster(control: Vec<u8>, segs: std::ops::RangeInclusive<u64>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("global")).unwrap();
        fs::create_dir_all(dir.path().join("pg_wal/archive_status")).unwrap();
        fs::write(dir.path().join("global/pg_control"), control).unwrap();
        for s in segs {
            let f =
                fs::File::create(dir.path().join("pg_wal").join(segment_name(1, s, 4096))).unwrap();
            f.set_len(MB).unwrap();
        }
        fs::write(
            dir.path().join("pg_wal/00000002.history"),
            "1\t0/0\tno reason\n",
        )
        .unwrap();
        dir
    }

    fn wal(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("pg_wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn names_follow_xlog_file_name() {
        // 1 MB segments: 4096 per 4 GB of WAL.
        assert_eq!(segment_name(1, 0x18, 4096), "000000010000000000000018");
        assert_eq!(segment_name(1, 4096 + 5, 4096), "000000010000000100000005");
        assert_eq!(segment_name(0x1F, 2, 256), "0000001F0000000000000002");
        assert_eq!(
            parse_segment_name("000000010000000100000005", 4096),
            Some((1, 4101))
        );
        assert_eq!(parse_segment_name("000000010000000000001000", 4096), None);
        assert_eq!(parse_segment_name("00000002.history", 4096), None);
        assert_eq!(parse_segment_name("archive_status", 4096), None);
    }

    #[test]
    fn a_clean_shutdown_keeps_its_checkpoint_segment_and_those_before() {
        let at = 0x18 * MB + 0x18500;
        let dir = cluster(control(SHUT_DOWN, at, at, 1), 0x17..=0x2A);
        assert_eq!(prune_recycled_segments(dir.path()).unwrap(), 18 * MB);
        assert_eq!(
            wal(dir.path()),
            [
                "000000010000000000000017",
                "000000010000000000000018",
                "00000002.history",
                "archive_status"
            ]
        );
        // Again: nothing more to do.
        assert_eq!(prune_recycled_segments(dir.path()).unwrap(), 0);
    }

    #[test]
    fn anything_unexpected_leaves_the_wal_alone() {
        let at = 0x18 * MB + 0x18500;
        let cases = [
            ("in production (not shut down)", control(5, at, at, 1)),
            ("crashed", control(4, at, at, 1)),
            (
                "checkpoint and REDO differ",
                control(SHUT_DOWN, at, at - 100, 1),
            ),
            ("another timeline", control(SHUT_DOWN, at, at, 2)),
            (
                "checkpoint segment missing",
                control(SHUT_DOWN, 0x40 * MB, 0x40 * MB, 1),
            ),
            (
                "short control file",
                control(SHUT_DOWN, at, at, 1)[..40].to_vec(),
            ),
        ];
        for (what, c) in cases {
            let dir = cluster(c, 0x18..=0x20);
            let before = wal(dir.path());
            assert_eq!(prune_recycled_segments(dir.path()).unwrap(), 0, "{what}");
            assert_eq!(wal(dir.path()), before, "{what}");
        }
    }
}

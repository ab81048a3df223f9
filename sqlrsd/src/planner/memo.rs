//! Plans remembered between requests. Planning reads and hashes every input
//! (megabytes for a data dump); asking again for an unchanged chain, which
//! is what a cache-hit prepare does, should not. A remembered plan is reused
//! only while every file it read still has the identity it had (device,
//! inode, size, modification and change times), and it is remembered only
//! when each of those files was last changed well before planning began, so
//! a change made while (or just before) the files were read can never hide
//! behind an equal timestamp: file times tick coarsely.

use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Step;
use crate::ids::{Digest, FieldHasher};

/// Files changed less than this before planning began are not trusted to
/// show a later change in their times.
const SETTLE: Duration = Duration::from_secs(1);

/// Plans kept; the least recently used goes first.
const CAPACITY: usize = 64;

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    })
}

struct Entry {
    key: Digest,
    steps: Arc<Vec<Step>>,
    stamps: Vec<(PathBuf, Stamp)>,
    /// Whether planning copied the inputs into the blob store.
    ingested: bool,
}

#[derive(Default)]
pub struct PlanMemo {
    entries: Mutex<VecDeque<Entry>>,
}

/// The key of a psql request: everything planning depends on besides the
/// files it reads.
pub fn key(args: &[String], cwd: &Path, stdin: Option<&[u8]>) -> Digest {
    let mut h = FieldHasher::new("plan-memo");
    h.field(cwd.as_os_str().as_encoded_bytes());
    h.field(&(args.len() as u64).to_le_bytes());
    for a in args {
        h.field(a.as_bytes());
    }
    match stdin {
        Some(bytes) => h.field(b"stdin").field(bytes),
        None => h.field(b"no stdin"),
    };
    h.finish()
}

impl PlanMemo {
    /// The remembered plan of `key` if no file it read has changed; with
    /// `ingested`, only a plan whose inputs are in the blob store.
    pub fn get(&self, key: &Digest, ingested: bool) -> Option<Arc<Vec<Step>>> {
        let mut entries = self.entries.lock().expect("plan memo lock");
        let k = entries.iter().position(|e| e.key == *key)?;
        let entry = &entries[k];
        if ingested && !entry.ingested {
            return None;
        }
        if entry
            .stamps
            .iter()
            .any(|(path, was)| stamp(path).as_ref() != Some(was))
        {
            entries.remove(k);
            return None;
        }
        let entry = entries.remove(k).expect("found above");
        let steps = entry.steps.clone();
        entries.push_front(entry);
        Some(steps)
    }

    /// Remembers a plan made from files read after `planned_at`, unless one
    /// of them changed too close to that moment (or is gone).
    pub fn put(&self, key: Digest, steps: &[Step], ingested: bool, planned_at: SystemTime) {
        let Some(limit) = planned_at
            .checked_sub(SETTLE)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        else {
            return;
        };
        let limit = limit.as_nanos() as i128;
        let mut stamps: Vec<(PathBuf, Stamp)> = Vec::new();
        for input in steps.iter().flat_map(|s| &s.inputs) {
            if stamps.iter().any(|(p, _)| *p == input.path) {
                continue;
            }
            match stamp(&input.path) {
                Some(s) if s.mtime_ns < limit && s.ctime_ns < limit => {
                    stamps.push((input.path.clone(), s))
                }
                _ => return,
            }
        }
        let mut entries = self.entries.lock().expect("plan memo lock");
        entries.retain(|e| e.key != key);
        entries.push_front(Entry {
            key,
            steps: Arc::new(steps.to_vec()),
            stamps,
            ingested,
        });
        entries.truncate(CAPACITY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{PsqlRequest, plan_psql};

    fn plan(dir: &Path) -> Vec<Step> {
        let args = ["-f", "a.sql"].map(String::from);
        plan_psql(
            &PsqlRequest {
                args: &args,
                cwd: dir,
                stdin: None,
            },
            None,
        )
        .unwrap()
    }

    fn age(path: &Path, secs: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    #[test]
    fn reused_until_an_input_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.sql"), dir.path().join("b.sql"));
        std::fs::write(&a, "\\i b.sql\n").unwrap();
        std::fs::write(&b, "select 1;\n").unwrap();
        let memo = PlanMemo::default();
        let args = ["-f", "a.sql"].map(String::from);
        let k = key(&args, dir.path(), None);

        // Just written: the change time is too recent to trust.
        memo.put(k, &plan(dir.path()), true, SystemTime::now());
        assert!(
            memo.get(&k, false).is_none(),
            "recently changed files are not remembered"
        );

        // Settled files (their change time is the write's; wait it out).
        std::thread::sleep(SETTLE + Duration::from_millis(50));
        let steps = plan(dir.path());
        memo.put(k, &steps, false, SystemTime::now());
        assert_eq!(memo.get(&k, false).as_deref(), Some(&steps));
        assert!(
            memo.get(&k, true).is_none(),
            "not ingested: no use for a build"
        );
        let other = key(&["-f", "b.sql"].map(String::from), dir.path(), None);
        assert!(memo.get(&other, false).is_none());

        // Same size, time set back: the change time still moves.
        std::fs::write(&b, "select 2;\n").unwrap();
        age(&b, 3600);
        assert!(
            memo.get(&k, false).is_none(),
            "an edited include invalidates"
        );
        assert!(memo.get(&k, false).is_none(), "and the entry is gone");
    }

    #[test]
    fn a_replaced_or_removed_file_invalidates() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.sql");
        std::fs::write(&a, "select 1;\n").unwrap();
        std::thread::sleep(SETTLE + Duration::from_millis(50));
        let memo = PlanMemo::default();
        let k = key(&["-f", "a.sql"].map(String::from), dir.path(), None);
        memo.put(k, &plan(dir.path()), true, SystemTime::now());
        assert!(memo.get(&k, true).is_some());
        // Rename-over, as editors save.
        let tmp = dir.path().join("a.sql.tmp");
        std::fs::write(&tmp, "select 1;\n").unwrap();
        std::fs::rename(&tmp, &a).unwrap();
        assert!(memo.get(&k, true).is_none());
        memo.put(k, &plan(dir.path()), true, SystemTime::now() + SETTLE * 2);
        std::fs::remove_file(&a).unwrap();
        assert!(memo.get(&k, true).is_none());
    }

    #[test]
    fn keys_cover_arguments_cwd_and_stdin() {
        let args = ["-f", "a.sql"].map(String::from);
        let base = key(&args, Path::new("/w"), None);
        assert_ne!(base, key(&args, Path::new("/x"), None));
        assert_ne!(base, key(&args, Path::new("/w"), Some(b"")));
        assert_ne!(
            base,
            key(
                &["-f", "a.sql", "-1"].map(String::from),
                Path::new("/w"),
                None
            )
        );
        assert_eq!(base, key(&args, Path::new("/w"), None));
    }
}

//! The folders one workspace watches: non-recursive `notify` watches whose
//! events are forwarded from notify's thread into a tokio channel, and what
//! an event means for the workspace.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Non-recursive watches on a set of folders.
pub struct FolderWatcher {
    inner: RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
}

impl FolderWatcher {
    /// A watcher sending every event into `tx`.
    pub fn new(tx: mpsc::UnboundedSender<notify::Result<notify::Event>>) -> notify::Result<Self> {
        let inner = notify::recommended_watcher(move |event| {
            // The project task is gone: the watcher is being dropped too.
            let _ = tx.send(event);
        })?;
        Ok(Self {
            inner,
            watched: BTreeSet::new(),
        })
    }

    /// Starts watching `dir` (no change when it is watched already). A folder
    /// that cannot be watched (gone, unreadable, out of inotify watches) is
    /// logged and left out; the next sync tries again.
    pub fn watch(&mut self, dir: &Path) {
        if self.watched.contains(dir) {
            return;
        }
        match self.inner.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched.insert(dir.to_owned());
            }
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => tracing::warn!(
                "cannot watch {}: the inotify watch limit is reached; raise it with `sysctl fs.inotify.max_user_watches=524288`",
                dir.display()
            ),
            Err(e) => tracing::debug!("cannot watch {}: {e}", dir.display()),
        }
    }

    /// Stops watching `dir` and every watched folder below it.
    pub fn unwatch_tree(&mut self, dir: &Path) {
        let below: Vec<PathBuf> = self
            .watched
            .range(dir.to_owned()..)
            .take_while(|p| p.starts_with(dir))
            .cloned()
            .collect();
        for p in below {
            self.unwatch(&p);
        }
    }

    /// Stops watching `dir`. notify drops the watch of a folder deleted or
    /// moved away by itself; removing it again here keeps both sides in step
    /// (the error for a watch already gone is expected).
    pub fn unwatch(&mut self, dir: &Path) {
        if self.watched.remove(dir) {
            let _ = self.inner.unwatch(dir);
        }
    }

    /// Watches exactly `wanted`.
    pub fn sync(&mut self, wanted: &BTreeSet<PathBuf>) {
        let extra: Vec<PathBuf> = self.watched.difference(wanted).cloned().collect();
        for dir in extra {
            self.unwatch(&dir);
        }
        for dir in wanted {
            self.watch(dir);
        }
    }

    pub fn len(&self) -> usize {
        self.watched.len()
    }
}

/// What an event says about its paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Content written (a write, or the close after writing).
    Written,
    /// The path appeared (created, or renamed onto it).
    Appeared,
    /// The path went away (deleted, or renamed away).
    Vanished,
    /// The kernel queue overflowed: events were lost, look at everything again.
    Rescan,
}

/// The meaning of a notify event, or None for events that change no content
/// (opening, reading, attribute changes) and the duplicate "both" rename
/// event (its halves arrive on their own).
pub fn classify(event: &notify::Event) -> Option<Change> {
    if event.need_rescan() {
        return Some(Change::Rescan);
    }
    match event.kind {
        EventKind::Create(_) => Some(Change::Appeared),
        EventKind::Remove(_) => Some(Change::Vanished),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Some(Change::Vanished),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(Change::Appeared),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => None,
        // A rename the backend cannot tell the side of: the path may be new.
        EventKind::Modify(ModifyKind::Name(_)) => Some(Change::Appeared),
        EventKind::Modify(ModifyKind::Metadata(_)) => None,
        EventKind::Modify(_) => Some(Change::Written),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Change::Written),
        EventKind::Access(_) => None,
        EventKind::Any | EventKind::Other => Some(Change::Written),
    }
}

//! Watched workspaces: which are registered, and the live status of every
//! prepare alias in them.
//!
//! A workspace (the folder holding `.sqlrs/`) is registered when a client
//! works in it ([`Projects::note_use`]) or asks for it ([`Projects::register`]);
//! registrations are kept in the index and watched again at daemon start
//! ([`Projects::restore`]). Each registered workspace has one task that owns
//! its state:
//!
//! - **Discovery.** The workspace is walked for `*.prep.s9s.yaml` files,
//!   skipping `.git`, `node_modules`, `target`, hidden folders other than
//!   `.sqlrs`, symbolic links to folders, and nested workspaces (folders
//!   with a `.sqlrs/` of their own).
//! - **Watching.** Non-recursive `notify` (inotify) watches on every folder
//!   of the walk and on the folder of every file a chain reads, wherever it
//!   lives (inputs outside the workspace, through `../` or symbolic links,
//!   are watched too; a link is watched both where it is and where it
//!   points). The set is updated after every plan; folders created in the
//!   workspace are walked and watched as they appear. Writes in place,
//!   closes after writing, creations, deletions and renames (both halves)
//!   count, so both save patterns of editors (write in place; write a
//!   temporary file and rename it over, with or without moving the original
//!   away first) trigger a re-plan. Opens, reads and attribute changes do
//!   not; neither do events on paths that are no alias file, no input, no
//!   workspace folder and not `.sqlrs/config.yaml` (exception: while an
//!   alias cannot be planned, any file appearing re-plans it, since it may
//!   be the missing one).
//! - **Debouncing.** Relevant events are collected; the aliases they concern
//!   are re-planned once nothing relevant happened for 100 ms, or 500 ms
//!   after the first event while events keep coming. Only the aliases whose
//!   alias file or inputs changed are re-planned, plus new and removed
//!   alias files. As soon as an event arrives, the steps from the first one
//!   reading the changed file are shown stale.
//! - **Planning and prebuild.** Each plan goes through
//!   [`Engine::refresh_alias`], which hashes every input and marks a cached
//!   head hot in the warm pool. When the head is missing and prebuild is on
//!   (the default; `prebuild: false` in `.sqlrs/config.yaml` turns it off),
//!   a low-priority prebuild job starts. A plan that yields another head
//!   cancels the running prebuild of the alias; only jobs started here are
//!   ever cancelled. A failed prebuild stands until a plan gives another
//!   head. When the job succeeds the alias is planned again (now cached).
//! - **Status.** An alias is `cached` (head state exists), `stale` (changed
//!   and not built, or a change not planned yet), `building` (its prebuild
//!   runs: step k of n, 0 while queued), `failed` (its prebuild failed: the
//!   error with file and line) or `invalid` (it cannot be planned: the error
//!   with the file and line at fault). Every file of the chain has the status
//!   of the last step reading it (`building` for every step the running
//!   prebuild has still to make), `failed` when a failing step reads it.
//!   Paths are absolute, the root's and the alias files' with symbolic
//!   links resolved. Each change is sent on the workspace's `watch` channel.
//!   When the kernel drops events (queue overflow) the whole workspace is
//!   walked and planned again.
//! - **Settings.** `.sqlrs/config.yaml` is read at registration and again
//!   when it changes; a broken file is logged and the defaults are used.
//!   Turning prebuild off cancels running prebuilds; turning it on builds
//!   what is stale.
//!
//! Unregistering stops the task, its watches and its prebuilds, and makes
//! the warm pool forget the workspace's heads.

mod alias;
mod config;
mod project;
mod walk;
mod watcher;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{CONFIG_FILE, ProjectConfig, ProjectConfigError};

use crate::engine::Engine;
use crate::index::IndexError;
use crate::model::{ProjectRecord, ProjectView, now_ms};
use project::Project;

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("{} is not inside a sqlrs workspace (no .sqlrs/ folder in it or above it); run `sqlrs init` at the workspace root", .0.display())]
    NotAWorkspace(PathBuf),
    #[error(
        "cannot watch the workspace {}: {source}; raise the inotify limits (`sysctl fs.inotify.max_user_instances=1024 fs.inotify.max_user_watches=524288`)",
        root.display()
    )]
    Watch {
        root: PathBuf,
        source: notify::Error,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// A workspace being watched.
struct Watched {
    view: Arc<watch::Sender<ProjectView>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub struct Projects {
    engine: Arc<Engine>,
    /// By workspace root.
    watched: Mutex<BTreeMap<String, Watched>>,
    /// One registration (or unregistration) at a time, so a workspace is
    /// never watched twice nor left watched after it was unregistered.
    registering: tokio::sync::Mutex<()>,
}

/// The workspace root holding `path`, symbolic links resolved.
fn workspace_of(path: &Path) -> Option<PathBuf> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    sqlrs_proto::alias::workspace_root(&path)
}

impl Projects {
    pub fn new(engine: Arc<Engine>) -> Arc<Self> {
        Arc::new(Self {
            engine,
            watched: Mutex::new(BTreeMap::new()),
            registering: tokio::sync::Mutex::new(()),
        })
    }

    /// Watches again the workspaces registered before a restart; one that
    /// is gone (no `.sqlrs/` any more) is unregistered with a warning.
    pub async fn restore(self: &Arc<Self>) -> Result<(), ProjectError> {
        for record in self.engine.index.projects()? {
            let root = Path::new(&record.root);
            let now = workspace_of(root);
            if now.as_deref() != Some(root) {
                tracing::warn!(
                    "{} is no longer a sqlrs workspace root (no .sqlrs/ folder): it is not watched any more",
                    record.root
                );
                self.engine.index.delete_project(&record.root)?;
                self.engine.forget_project(&record.root);
                continue;
            }
            if let Err(e) = self.register(root).await {
                tracing::warn!("cannot watch {} again: {e}", record.root);
            }
        }
        Ok(())
    }

    /// Registers the workspace holding `path` (again: no change) and
    /// returns a receiver of its status; its current value is already the
    /// planned status of every alias.
    pub async fn register(
        self: &Arc<Self>,
        path: &Path,
    ) -> Result<watch::Receiver<ProjectView>, ProjectError> {
        let root =
            workspace_of(path).ok_or_else(|| ProjectError::NotAWorkspace(path.to_owned()))?;
        let key = root.display().to_string();
        if let Some(rx) = self.subscribe(&key) {
            return Ok(rx);
        }
        let _one = self.registering.lock().await;
        if let Some(rx) = self.subscribe(&key) {
            return Ok(rx);
        }
        let (view, _) = watch::channel(ProjectView {
            root: key.clone(),
            prebuild: true,
            aliases: Vec::new(),
            updated_at_ms: now_ms(),
            watched: true,
        });
        let view = Arc::new(view);
        let stop = CancellationToken::new();
        let (mut project, inbox) = Project::open(
            self.engine.clone(),
            root.clone(),
            view.clone(),
            stop.clone(),
        )
        .map_err(|source| ProjectError::Watch {
            root: root.clone(),
            source,
        })?;
        self.engine.index.put_project(&ProjectRecord {
            root: key.clone(),
            registered_at_ms: now_ms(),
        })?;
        project.start().await;
        let rx = view.subscribe();
        let task = tokio::spawn(project.run(inbox));
        self.watched
            .lock()
            .expect("projects lock")
            .insert(key, Watched { view, stop, task });
        Ok(rx)
    }

    fn subscribe(&self, key: &str) -> Option<watch::Receiver<ProjectView>> {
        self.watched
            .lock()
            .expect("projects lock")
            .get(key)
            .map(|w| w.view.subscribe())
    }

    /// The registered root `path` names: the workspace holding it, or `path`
    /// itself when it is a registered root that is no workspace any more.
    fn registered_root(&self, path: &Path) -> Result<String, ProjectError> {
        let given = path.display().to_string();
        let known = |key: &str| -> Result<bool, ProjectError> {
            Ok(self
                .watched
                .lock()
                .expect("projects lock")
                .contains_key(key)
                || self.engine.index.projects()?.iter().any(|p| p.root == key))
        };
        match workspace_of(path) {
            Some(root) => Ok(root.display().to_string()),
            None if known(&given)? => Ok(given),
            None => Err(ProjectError::NotAWorkspace(path.to_owned())),
        }
    }

    /// Stops watching the workspace holding `path` (its watches, task and
    /// prebuilds) and makes the warm pool forget its heads; returns its last
    /// status, marked as no longer watched.
    pub async fn unregister(&self, path: &Path) -> Result<ProjectView, ProjectError> {
        let key = self.registered_root(path)?;
        let _one = self.registering.lock().await;
        let watched = self.watched.lock().expect("projects lock").remove(&key);
        self.engine.index.delete_project(&key)?;
        let view = match watched {
            Some(w) => {
                w.stop.cancel();
                if let Err(e) = w.task.await {
                    tracing::error!(root = %key, "the workspace task ended abnormally: {e}");
                }
                w.view.send_modify(|v| {
                    v.watched = false;
                    v.updated_at_ms = now_ms();
                });
                w.view.borrow().clone()
            }
            None => ProjectView {
                root: key.clone(),
                prebuild: ProjectConfig::load(Path::new(&key))
                    .map(|c| c.prebuild)
                    .unwrap_or(true),
                aliases: Vec::new(),
                updated_at_ms: now_ms(),
                watched: false,
            },
        };
        self.engine.forget_project(&key);
        Ok(view)
    }

    /// A client worked in `dir`: registers its workspace in the background,
    /// if it is in one that is not watched yet.
    pub fn note_use(self: &Arc<Self>, dir: &Path) {
        let Some(root) = workspace_of(dir) else {
            return;
        };
        if self.subscribe(&root.display().to_string()).is_some() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.register(&root).await {
                tracing::warn!("cannot watch the workspace {}: {e}", root.display());
            }
        });
    }

    /// The status of every watched workspace, by root.
    pub fn views(&self) -> Vec<ProjectView> {
        self.watched
            .lock()
            .expect("projects lock")
            .values()
            .map(|w| w.view.borrow().clone())
            .collect()
    }

    /// Stops every workspace task and its watches (the registrations stay
    /// for the next start).
    pub async fn shutdown(&self) {
        let _one = self.registering.lock().await;
        let all = std::mem::take(&mut *self.watched.lock().expect("projects lock"));
        for w in all.values() {
            w.stop.cancel();
        }
        for (root, w) in all {
            if let Err(e) = w.task.await {
                tracing::error!(%root, "the workspace task ended abnormally: {e}");
            }
        }
    }
}

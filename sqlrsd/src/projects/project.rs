//! One watched workspace: a task that owns its folders, aliases and watches,
//! turns file events into debounced re-plans, starts, follows and cancels
//! the prebuilds of its aliases, and publishes the workspace's view.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::alias::{Alias, Build, Failure, Outcome};
use super::config::{CONFIG_FILE, ProjectConfig};
use super::walk;
use super::watcher::{Change, FolderWatcher, classify};
use crate::engine::{Engine, EngineError};
use crate::jobs::LiveJob;
use crate::model::{EventKind, JobFailure, PlanView, ProjectView, StepProgress, now_ms};
use crate::planner::{DirectiveProblem, PlanError};

/// Quiet time after the last relevant event before the re-plan.
const QUIET: Duration = Duration::from_millis(100);
/// Longest wait for quiet while relevant events keep coming.
const MAX_WAIT: Duration = Duration::from_millis(500);

/// What a prebuild did, from its event stream.
#[derive(Debug)]
enum JobUpdate {
    Step(StepProgress),
    Failed(JobFailure),
    Succeeded,
    /// Cancelled, or its events are lost.
    Ended,
}

#[derive(Debug)]
struct JobMessage {
    alias: PathBuf,
    job_id: String,
    update: JobUpdate,
}

/// What the task reads: file events from notify's thread and prebuild
/// progress from the followers.
pub struct Inbox {
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    jobs: mpsc::UnboundedReceiver<JobMessage>,
}

/// Changes seen and not planned yet.
#[derive(Debug, Default)]
struct Pending {
    aliases: BTreeSet<PathBuf>,
    /// Folders created, removed or renamed: walked again.
    folders: BTreeSet<PathBuf>,
    config: bool,
    /// Events were lost: walk and plan everything.
    everything: bool,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Pending {
    fn touch(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn deadline(&self) -> Option<Instant> {
        Some((self.last? + QUIET).min(self.first? + MAX_WAIT))
    }
}

pub struct Project {
    root: PathBuf,
    key: String,
    engine: Arc<Engine>,
    view: Arc<watch::Sender<ProjectView>>,
    stop: CancellationToken,
    config: ProjectConfig,
    watcher: FolderWatcher,
    jobs: mpsc::UnboundedSender<JobMessage>,
    /// The workspace's folders (watched).
    folders: BTreeSet<PathBuf>,
    aliases: BTreeMap<PathBuf, Alias>,
    /// A watched file → the aliases reading it, each with the first
    /// (0-based) step that reads it.
    readers: HashMap<PathBuf, Vec<(PathBuf, usize)>>,
    pending: Pending,
}

impl Project {
    /// Starts watching the workspace at `root` (canonical) and walks it; no
    /// alias is planned yet.
    pub fn open(
        engine: Arc<Engine>,
        root: PathBuf,
        view: Arc<watch::Sender<ProjectView>>,
        stop: CancellationToken,
    ) -> notify::Result<(Self, Inbox)> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (jobs, jobs_rx) = mpsc::unbounded_channel();
        let watcher = FolderWatcher::new(events_tx)?;
        let mut project = Self {
            key: root.display().to_string(),
            root,
            engine,
            view,
            stop,
            config: ProjectConfig::default(),
            watcher,
            jobs,
            folders: BTreeSet::new(),
            aliases: BTreeMap::new(),
            readers: HashMap::new(),
            pending: Pending::default(),
        };
        project.config = project.read_config();
        Ok((
            project,
            Inbox {
                events,
                jobs: jobs_rx,
            },
        ))
    }

    /// Plans every alias of the workspace and publishes the first view.
    pub async fn start(&mut self) {
        let mut found = BTreeSet::new();
        self.rescan_folder(&self.root.clone(), &mut found);
        for path in found {
            self.refresh(&path).await;
        }
        self.sync_watches();
        self.publish();
        tracing::info!(
            root = %self.key,
            aliases = self.aliases.len(),
            folders = self.watcher.len(),
            "watching workspace"
        );
    }

    /// Runs until `stop` is cancelled, then cancels the prebuilds it started.
    pub async fn run(mut self, mut inbox: Inbox) {
        let stop = self.stop.clone();
        loop {
            let deadline = self.pending.deadline();
            // Plans can take a while (hashing, a Liquibase run): stopping
            // does not wait for them. A job is recorded as soon as it is
            // created, so none is left behind.
            let stopped = tokio::select! {
                biased;
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    tokio::select! {
                        _ = stop.cancelled() => true,
                        _ = self.flush() => false,
                    }
                }
                Some(event) = inbox.events.recv() => {
                    self.on_event(event);
                    false
                }
                Some(message) = inbox.jobs.recv() => {
                    tokio::select! {
                        _ = stop.cancelled() => true,
                        _ = self.on_job(message) => false,
                    }
                }
            };
            if stopped {
                break;
            }
        }
        for alias in self.aliases.values_mut() {
            if let Some(build) = alias.build.take() {
                self.engine.jobs.cancel(&build.job_id);
            }
        }
    }

    fn read_config(&self) -> ProjectConfig {
        ProjectConfig::load(&self.root).unwrap_or_else(|e| {
            tracing::warn!("{e}; using the default workspace settings");
            ProjectConfig::default()
        })
    }

    fn on_event(&mut self, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(root = %self.key, "file watch: {e}");
                return;
            }
        };
        let Some(change) = classify(&event) else {
            return;
        };
        let relevant = if change == Change::Rescan {
            self.pending.everything = true;
            true
        } else {
            let mut any = false;
            for path in &event.paths {
                any |= self.note(path, change);
            }
            any
        };
        if relevant {
            tracing::debug!(root = %self.key, ?change, paths = ?event.paths, "change");
            self.pending.touch();
            self.publish();
        }
    }

    /// Records what a change of `path` calls for; false when it concerns no
    /// alias file, input, folder nor the settings.
    fn note(&mut self, path: &Path, change: Change) -> bool {
        let mut relevant = false;
        if change == Change::Vanished {
            self.watcher.unwatch(path);
        }
        if path == self.root.join(CONFIG_FILE) {
            self.pending.config = true;
            relevant = true;
        }
        let in_workspace = path.parent().is_some_and(|p| self.folders.contains(p));
        if in_workspace && walk::is_prepare_alias(path) {
            self.pending.aliases.insert(path.to_owned());
            if let Some(alias) = self.aliases.get_mut(path) {
                alias.mark_stale(0);
            }
            relevant = true;
        }
        if let Some(readers) = self.readers.get(path) {
            for (alias, step) in readers {
                self.pending.aliases.insert(alias.clone());
                if let Some(alias) = self.aliases.get_mut(alias) {
                    alias.mark_stale(*step);
                }
            }
            relevant = true;
        }
        if change != Change::Written {
            let new_folder = change == Change::Appeared && in_workspace && path.is_dir();
            if new_folder || self.folders.contains(path) {
                self.pending.folders.insert(path.to_owned());
                relevant = true;
            }
            // A file that appears may be the one a plan error says is missing.
            if change == Change::Appeared {
                for alias in self.aliases.values() {
                    if matches!(alias.outcome, Outcome::Invalid(_)) {
                        self.pending.aliases.insert(alias.path.clone());
                        relevant = true;
                    }
                }
            }
        }
        relevant
    }

    /// Applies every pending change: settings, folders, then the aliases
    /// concerned, planned again; then the watches and the view.
    async fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let mut plan = pending.aliases;
        let mut folders = pending.folders;
        if pending.everything {
            folders.insert(self.root.clone());
            plan.extend(self.aliases.keys().cloned());
        }
        if pending.config {
            let was = self.config.prebuild;
            self.config = self.read_config();
            match (was, self.config.prebuild) {
                (true, false) => self.cancel_builds(),
                (false, true) => plan.extend(self.aliases.keys().cloned()),
                _ => {}
            }
        }
        // Folders gone first: a folder renamed inside the workspace is then
        // watched under its new name only.
        let (present, gone): (Vec<PathBuf>, Vec<PathBuf>) =
            folders.into_iter().partition(|d| d.is_dir());
        for dir in gone {
            self.forget_folder(&dir, &mut plan);
        }
        for dir in present {
            self.rescan_folder(&dir, &mut plan);
        }
        let mut removed = false;
        for path in plan {
            let is_alias =
                path.is_file() && path.parent().is_some_and(|p| self.folders.contains(p));
            if is_alias {
                self.refresh(&path).await;
            } else if let Some(mut alias) = self.aliases.remove(&path) {
                if let Some(build) = alias.build.take() {
                    self.engine.jobs.cancel(&build.job_id);
                }
                tracing::info!(alias = %path.display(), "alias file removed");
                removed = true;
            }
        }
        if removed {
            // The pool forgets the workspace's heads; the cached ones still
            // watched are marked hot again by planning them.
            self.engine.forget_project(&self.key);
            let cached: Vec<PathBuf> = self
                .aliases
                .values()
                .filter(|a| a.head_cached())
                .map(|a| a.path.clone())
                .collect();
            for path in cached {
                self.refresh(&path).await;
            }
        }
        self.sync_watches();
        self.publish();
    }

    fn cancel_builds(&mut self) {
        for alias in self.aliases.values_mut() {
            if let Some(build) = alias.build.take() {
                self.engine.jobs.cancel(&build.job_id);
            }
        }
    }

    /// A folder went away: it and its subfolders leave the workspace, and
    /// the aliases below it are checked again.
    fn forget_folder(&mut self, dir: &Path, plan: &mut BTreeSet<PathBuf>) {
        self.watcher.unwatch_tree(dir);
        self.folders.retain(|f| !f.starts_with(dir));
        plan.extend(self.aliases.keys().filter(|a| a.starts_with(dir)).cloned());
    }

    /// Walks `dir` again when it belongs to the workspace: its folders are
    /// watched, its alias files (and the ones known below it) checked.
    fn rescan_folder(&mut self, dir: &Path, plan: &mut BTreeSet<PathBuf>) {
        let belongs = dir == self.root
            || (dir.parent().is_some_and(|p| self.folders.contains(p))
                && walk::joins_workspace(dir));
        if !belongs {
            return;
        }
        let watcher = &mut self.watcher;
        let found = walk::walk(dir, &mut |d| watcher.watch(d));
        let now: BTreeSet<PathBuf> = found.folders.into_iter().collect();
        let old: Vec<PathBuf> = self
            .folders
            .iter()
            .filter(|f| f.starts_with(dir) && !now.contains(*f))
            .cloned()
            .collect();
        for f in old {
            self.watcher.unwatch(&f);
            self.folders.remove(&f);
        }
        self.folders.extend(now);
        plan.extend(found.aliases);
        plan.extend(self.aliases.keys().filter(|a| a.starts_with(dir)).cloned());
    }

    /// Plans the alias at `path` again, starting its prebuild when its head
    /// is missing and cancelling a prebuild the new plan supersedes.
    async fn refresh(&mut self, path: &Path) {
        let prebuild = self.config.prebuild;
        let idle = self
            .aliases
            .get(path)
            .is_none_or(|a| a.build.is_none() && a.failure.is_none());
        let build_now = prebuild && idle;
        let wants_build = self.plan_alias(path, build_now).await;
        if wants_build && !build_now {
            self.plan_alias(path, true).await;
        }
    }

    /// One plan of an alias; true when its head is missing and neither built
    /// nor failed.
    async fn plan_alias(&mut self, path: &Path, build: bool) -> bool {
        let (outcome, job, also) = match self.engine.refresh_alias(path, build).await {
            Ok(refresh) => {
                let dir = path.parent().unwrap_or(Path::new("/"));
                (
                    Outcome::Planned(absolute_inputs(refresh.plan, dir)),
                    refresh.job,
                    Vec::new(),
                )
            }
            Err(e) => {
                let (failure, also) = plan_failure(&e, path);
                tracing::debug!(alias = %path.display(), "cannot plan: {}", failure.message);
                (Outcome::Invalid(failure), None, also)
            }
        };
        let alias = self
            .aliases
            .entry(path.to_owned())
            .or_insert_with(|| Alias::new(path.to_owned(), outcome.clone()));
        alias.stale_from = None;
        match &outcome {
            Outcome::Invalid(failure) => {
                if let Some(old) = alias.build.take() {
                    self.engine.jobs.cancel(&old.job_id);
                }
                alias.failure = None;
                alias.inputs.extend(failure.file.iter().map(PathBuf::from));
                alias.inputs.extend(also);
                alias.inputs.retain(|p| p.is_absolute());
            }
            Outcome::Planned(plan) => {
                let head = plan
                    .steps
                    .last()
                    .map(|s| s.state_id.clone())
                    .unwrap_or_else(|| plan.base_id.clone());
                alias.built.clear();
                alias.inputs = plan
                    .steps
                    .iter()
                    .flat_map(|s| s.inputs.iter().map(PathBuf::from))
                    .collect();
                if let Some(old) = alias.build.take_if(|b| b.head != head) {
                    tracing::info!(alias = %path.display(), job = %old.job_id, "prebuild superseded");
                    self.engine.jobs.cancel(&old.job_id);
                }
                alias.failure.take_if(|f| f.head != head);
                if let Some(job) = job {
                    tracing::info!(alias = %path.display(), job = %job.id, "prebuild started");
                    alias.build = Some(Build {
                        job_id: job.id.clone(),
                        head,
                        step: 0,
                    });
                    follow(
                        &self.engine,
                        &job,
                        path.to_owned(),
                        self.jobs.clone(),
                        self.stop.clone(),
                    );
                }
            }
        }
        alias.outcome = outcome;
        self.config.prebuild
            && matches!(alias.outcome, Outcome::Planned(_))
            && !alias.head_cached()
            && alias.build.is_none()
            && alias.failure.is_none()
    }

    async fn on_job(&mut self, message: JobMessage) {
        let Some(alias) = self.aliases.get_mut(&message.alias) else {
            return;
        };
        let Some(build) = alias.build.as_mut().filter(|b| b.job_id == message.job_id) else {
            // A superseded prebuild's last events.
            return;
        };
        match message.update {
            JobUpdate::Step(progress) => match progress.status.as_str() {
                "running" => build.step = progress.index,
                "cached" | "succeeded" => {
                    alias.built.insert(progress.state_id);
                }
                _ => {}
            },
            JobUpdate::Failed(failure) => {
                let Build { job_id, head, .. } = alias.build.take().expect("matched above");
                tracing::info!(alias = %message.alias.display(), job = %job_id, "prebuild failed: {}", failure.message);
                alias.failure = Some(Failure {
                    job_id,
                    head,
                    failure,
                });
            }
            JobUpdate::Succeeded => {
                alias.build = None;
                self.refresh(&message.alias).await;
                self.sync_watches();
            }
            JobUpdate::Ended => alias.build = None,
        }
        self.publish();
    }

    /// Watches the workspace's folders and the folder of every file an
    /// alias reads, and indexes those files by the paths events name.
    fn sync_watches(&mut self) {
        let mut readers: HashMap<PathBuf, Vec<(PathBuf, usize)>> = HashMap::new();
        for alias in self.aliases.values() {
            let read: Vec<(PathBuf, usize)> = match &alias.outcome {
                Outcome::Planned(plan) => plan
                    .steps
                    .iter()
                    .enumerate()
                    .flat_map(|(i, s)| s.inputs.iter().map(move |p| (PathBuf::from(p), i)))
                    .collect(),
                Outcome::Invalid(_) => alias.inputs.iter().map(|p| (p.clone(), 0)).collect(),
            };
            for (file, step) in read {
                for key in event_paths(&file) {
                    let entry = readers.entry(key).or_default();
                    if !entry.iter().any(|(a, _)| *a == alias.path) {
                        entry.push((alias.path.clone(), step));
                    }
                }
            }
        }
        let mut wanted = self.folders.clone();
        wanted.extend(
            readers
                .keys()
                .filter_map(|k| k.parent().map(Path::to_owned)),
        );
        self.watcher.sync(&wanted);
        self.readers = readers;
    }

    /// Sends the view when it changed.
    fn publish(&self) {
        let aliases: Vec<_> = self.aliases.values().map(Alias::view).collect();
        let prebuild = self.config.prebuild;
        self.view.send_if_modified(|view| {
            if view.aliases == aliases && view.prebuild == prebuild {
                return false;
            }
            view.aliases = aliases;
            view.prebuild = prebuild;
            view.updated_at_ms = now_ms();
            true
        });
    }
}

/// The paths under which events about `file` arrive: the file in its
/// folder's real location, and its target when it is a symbolic link.
fn event_paths(file: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::with_capacity(2);
    if let (Some(dir), Some(name)) = (file.parent(), file.file_name()) {
        paths.push(
            dir.canonicalize()
                .unwrap_or_else(|_| dir.to_owned())
                .join(name),
        );
    }
    if let Ok(target) = file.canonicalize()
        && !paths.contains(&target)
    {
        paths.push(target);
    }
    paths
}

/// The plan with every input path absolute (relative ones are taken from
/// the alias file's folder).
fn absolute_inputs(mut plan: PlanView, dir: &Path) -> PlanView {
    for step in &mut plan.steps {
        for input in &mut step.inputs {
            if Path::new(input.as_str()).is_relative() {
                *input = dir.join(&*input).display().to_string();
            }
        }
    }
    plan
}

/// Why an alias cannot be planned, with the file and line at fault, and
/// the missing files whose creation can fix it (watched too).
pub(super) fn plan_failure(e: &EngineError, alias: &Path) -> (JobFailure, Vec<PathBuf>) {
    let mut file = None;
    let mut line = None;
    let mut missing = Vec::new();
    match e {
        EngineError::Plan(p) => {
            if let Some((f, l)) = p.location() {
                file = Some(f.display().to_string());
                line = Some(l);
            }
            match p {
                PlanError::MainFile { path, .. } => {
                    file = Some(path.display().to_string());
                    missing.push(path.clone());
                }
                PlanError::Directive { problem, .. } => {
                    if let DirectiveProblem::Unreadable { path, .. } = problem.as_ref() {
                        missing.push(path.clone());
                    }
                }
                _ => {}
            }
        }
        EngineError::Liquibase(l) => {
            if let Some((f, l)) = l.location() {
                file = Some(f.display().to_string());
                line = l;
            }
        }
        EngineError::InvalidRequest(message) if message.contains(&*alias.display().to_string()) => {
            file = Some(alias.display().to_string());
            if let Err(sqlrs_proto::alias::AliasError::Syntax {
                location: Some((l, _)),
                ..
            }) = sqlrs_proto::alias::load(alias)
            {
                line = Some(l as u32);
            }
        }
        _ => {}
    }
    (
        JobFailure {
            reason: e.reason().into(),
            message: e.to_string(),
            file,
            line,
            step: None,
        },
        missing,
    )
}

/// Forwards a prebuild's progress to the project task until its final
/// event (or until the project stops).
fn follow(
    engine: &Arc<Engine>,
    job: &LiveJob,
    alias: PathBuf,
    tx: mpsc::UnboundedSender<JobMessage>,
    stop: CancellationToken,
) {
    let engine = engine.clone();
    let job_id = job.id.clone();
    tokio::spawn(async move {
        let send = |update| {
            let _ = tx.send(JobMessage {
                alias: alias.clone(),
                job_id: job_id.clone(),
                update,
            });
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = forward(&engine, &job_id, &send) => {}
        }
    });
}

/// Replays the job's stored events, then the live ones, until the final
/// one; a follower that lags behind catches up from the index.
async fn forward(engine: &Engine, job_id: &str, send: &(dyn Fn(JobUpdate) + Sync)) {
    let (past, rx) = match engine.jobs.follow(job_id) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(job = %job_id, "cannot follow the prebuild: {e}");
            return send(JobUpdate::Ended);
        }
    };
    let mut last = 0u64;
    let deliver = |kind: EventKind| -> bool {
        let done = kind.is_final();
        if let Some(update) = update_of(kind) {
            send(update);
        }
        done
    };
    for e in past {
        last = e.seq;
        if deliver(e.kind) {
            return;
        }
    }
    let Some(mut rx) = rx else {
        return send(JobUpdate::Ended);
    };
    loop {
        let events = match rx.recv().await {
            Ok(e) => vec![e],
            Err(broadcast::error::RecvError::Lagged(_)) => match engine.index.events(job_id) {
                Ok(stored) => stored,
                Err(_) => return send(JobUpdate::Ended),
            },
            Err(broadcast::error::RecvError::Closed) => return send(JobUpdate::Ended),
        };
        for e in events {
            if e.seq <= last {
                continue;
            }
            last = e.seq;
            if deliver(e.kind) {
                return;
            }
        }
    }
}

fn update_of(kind: EventKind) -> Option<JobUpdate> {
    match kind {
        EventKind::Step(p) => Some(JobUpdate::Step(p)),
        EventKind::Failed(f) => Some(JobUpdate::Failed(f)),
        EventKind::Succeeded(_) => Some(JobUpdate::Succeeded),
        EventKind::Cancelled => Some(JobUpdate::Ended),
        EventKind::Planned(_) | EventKind::Log(_) => None,
    }
}

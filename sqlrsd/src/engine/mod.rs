//! The engine: turns a prepare request into a chain of states (reusing the
//! longest cached prefix, building and snapshotting the rest) and hands out
//! instances; removes instances, states and jobs; reconciles the store with
//! the index at start-up.

mod evict;
mod lb;
mod warm;

pub use evict::{CacheState, CacheView, EvictionReport, StateDetail};
pub use warm::{AliasRefresh, Delivery, HandOut, check_name};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::blobs::{self, BlobStore};
use crate::ids::{self, StateId};
use crate::index::{Index, IndexError};
use crate::jobs::{Jobs, LiveJob};
use crate::liquibase::LbError;
use crate::model::{
    EventKind, InstanceRecord, InstanceStatus, JobFailure, PlanStepView, PlanView, RunStatus,
    StateRecord, StepProgress, TaskKind, TaskRecord, now_ms, random_id,
};
use crate::planner::{self, PsqlRequest, Step};
use crate::pool::{Pool, PoolSettings};
use crate::runtime::docker::{ExecOptions, OutputStream};
use crate::runtime::{Runtime, RuntimeError, ServerHandle, ServerOptions, generate_password};
use crate::runtimes::{Runtimes, Selected};
use crate::scheduler::{Priority, Scheduler};
use crate::snapshot::{self, Snapshotter};
use crate::store::Store;

/// What a client asks to prepare.
#[derive(Debug, Clone)]
pub struct PrepareInput {
    pub kind: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub stdin: Option<Vec<u8>>,
    pub alias_path: Option<PathBuf>,
    /// Docker image of the engine; None: the default runtime.
    pub image: Option<String>,
}

/// A tool run inside an instance's container.
#[derive(Debug, Clone)]
pub struct ExecInput {
    pub instance: String,
    pub tool: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub stdin: Vec<u8>,
}

/// The paths an argument may name: itself, the value of `--opt=value`, the
/// value glued to a short option (`-fFILE`), and pgbench's `FILE@weight`.
fn arg_path_candidates(arg: &str) -> Vec<&str> {
    let mut out = vec![arg];
    if let Some((_, v)) = arg.split_once('=').filter(|_| arg.starts_with("--")) {
        out.push(v);
    }
    if arg.len() > 2 && arg.starts_with('-') && !arg.starts_with("--") {
        out.push(&arg[2..]);
    }
    let more: Vec<&str> = out
        .iter()
        .filter_map(|a| a.rsplit_once('@').map(|(f, _)| f))
        .collect();
    out.extend(more);
    out.retain(|a| !a.is_empty() && !a.starts_with('-'));
    out
}

/// Errors of engine operations other than a job's own failure.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("id prefix {prefix} matches several {what}s ({}); give more characters", matches.join(", "))]
    Ambiguous {
        what: &'static str,
        prefix: String,
        matches: Vec<String>,
    },
    #[error("id prefix {0:?} is too short: give at least 8 hex characters")]
    ShortPrefix(String),
    #[error(
        "{0:?} is not an id: ids are hex (0-9, a-f); give at least 8 of their characters (see `sqlrs ls`)"
    )]
    NotHex(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Plan(#[from] planner::PlanError),
    #[error(transparent)]
    Liquibase(#[from] LbError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl EngineError {
    /// Stable machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Ambiguous { .. } => "ambiguous_id",
            Self::ShortPrefix(_) => "short_prefix",
            Self::NotHex(_) => "not_an_id",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Plan(_) => "plan_error",
            Self::Liquibase(_) => "liquibase_error",
            Self::Index(_) => "index_error",
            Self::Runtime(_) => "runtime_error",
            Self::Snapshot(_) => "snapshot_error",
            Self::Io { .. } => "io_error",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How one prepare ended, other than with an instance.
enum Stop {
    Failed(JobFailure),
    Cancelled,
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Self {
        Stop::Failed(JobFailure {
            reason: e.reason().into(),
            message: e.to_string(),
            file: None,
            line: None,
            step: None,
        })
    }
}

macro_rules! impl_stop_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Stop {
            fn from(e: $t) -> Self {
                Stop::from(EngineError::from(e))
            }
        }
    )*};
}
impl_stop_from!(
    IndexError,
    RuntimeError,
    crate::snapshot::SnapshotError,
    planner::PlanError,
    LbError
);

/// One item a removal touched (or would touch, on a dry run).
#[derive(Debug, Clone)]
pub struct Removal {
    pub kind: &'static str,
    pub id: String,
    pub removed: bool,
    pub blocked_reason: Option<String>,
}

/// A planned chain: the base and the steps with their state ids.
struct Chain {
    rt: Selected,
    base: StateId,
    steps: Vec<ChainStep>,
    ids: Vec<StateId>,
    /// What the changeset steps of a Liquibase chain share.
    lb: Option<lb::LbChain>,
}

/// One step of a chain: a psql invocation or a Liquibase changeset.
enum ChainStep {
    Psql(Step),
    Changeset(lb::ChangesetStep),
}

impl Chain {
    /// The stored inputs its steps run from.
    fn blobs(&self) -> impl Iterator<Item = ids::Digest> + '_ {
        let psql = self.steps.iter().flat_map(|s| match s {
            ChainStep::Psql(step) => step
                .inputs
                .iter()
                .map(|i| i.digest)
                .chain(match &step.kind {
                    planner::StepKind::Stdin { digest } => Some(*digest),
                    _ => None,
                })
                .collect(),
            ChainStep::Changeset(_) => Vec::new(),
        });
        let lb = self
            .lb
            .iter()
            .flat_map(|lb| lb.closure.files.iter().map(|f| f.digest));
        psql.chain(lb)
    }
}

/// The lease key of a stored input.
fn blob_lease(d: &ids::Digest) -> String {
    format!("blob:{d}")
}

impl ChainStep {
    fn summary(&self) -> &str {
        match self {
            ChainStep::Psql(s) => &s.summary,
            ChainStep::Changeset(c) => &c.summary,
        }
    }

    /// The user's files the step reads, for plans.
    fn input_paths(&self) -> Vec<String> {
        match self {
            ChainStep::Psql(s) => s
                .inputs
                .iter()
                .map(|i| i.path.display().to_string())
                .collect(),
            ChainStep::Changeset(c) => c.inputs.clone(),
        }
    }
}

/// The lock on building one state, and the job holding it. It lives in the
/// daemon: it is released when its holder ends, however it ends (a failed,
/// cancelled or panicked job drops it), and a daemon that dies takes every
/// lock with it (one daemon per store; start-up reconciles what was built).
#[derive(Default)]
struct BuildLock {
    mutex: tokio::sync::Mutex<()>,
    owner: Mutex<Option<String>>,
}

impl BuildLock {
    /// Takes the lock for `job`, telling it who it waits for when another
    /// job holds it.
    async fn acquire(
        &self,
        jobs: &Jobs,
        job: &LiveJob,
        what: &str,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        let guard = match self.mutex.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                let owner = self.owner.lock().expect("build lock owner").clone();
                if let Some(owner) = owner {
                    let _ = jobs.emit(
                        job,
                        EventKind::Log(format!("waiting for job {owner}, which builds {what}")),
                    );
                }
                self.mutex.lock().await
            }
        };
        *self.owner.lock().expect("build lock owner") = Some(job.id.clone());
        guard
    }
}

pub struct Engine {
    pub store: Store,
    pub index: Arc<Index>,
    pub jobs: Jobs,
    pub blobs: BlobStore,
    pub runtimes: Runtimes,
    pub snapshotter: Box<dyn Snapshotter>,
    pub snapshotter_reason: String,
    /// Single flight: the first missing state of a build is locked while it is built.
    build_locks: Mutex<HashMap<StateId, Arc<BuildLock>>>,
    /// Liquibase, for `prepare:lb`.
    pub liquibase: lb::LbTool,
    /// Warm instances of hot states.
    pub pool: Pool,
    /// Bounded build slots, interactive prepares first.
    pub scheduler: Arc<Scheduler>,
    /// One prepare at a time per instance name.
    name_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Time to live of instances whose prepare names none.
    default_ttl: Option<Duration>,
    /// psql plans of unchanged inputs, reused without reading them again.
    plan_memo: planner::memo::PlanMemo,
    /// The cache's bounds: extents, leases, evictions.
    pub cache: CacheState,
}

/// How the engine hands out instances and runs builds.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub pool: PoolSettings,
    pub max_builds: usize,
    pub default_ttl: Option<Duration>,
    pub liquibase_exec: Option<PathBuf>,
    pub cache: crate::cache::Limits,
    /// How often the cache is checked besides around builds.
    pub cache_check: Duration,
}

impl Engine {
    pub fn new(
        store: Store,
        index: Arc<Index>,
        jobs: Jobs,
        blobs: BlobStore,
        runtimes: Runtimes,
        snapshotter: snapshot::Detected,
        settings: EngineSettings,
    ) -> Self {
        let class_cache = store.root().join("cache").join("liquibase");
        Self {
            store,
            index,
            jobs,
            blobs,
            runtimes,
            snapshotter: snapshotter.snapshotter,
            snapshotter_reason: snapshotter.reason,
            build_locks: Mutex::new(HashMap::new()),
            liquibase: lb::LbTool::new(settings.liquibase_exec, class_cache),
            pool: Pool::new(settings.pool),
            scheduler: Scheduler::new(settings.max_builds),
            name_locks: Mutex::new(HashMap::new()),
            default_ttl: settings.default_ttl,
            plan_memo: Default::default(),
            cache: CacheState::new(settings.cache, settings.cache_check),
        }
    }

    fn build_lock(&self, id: &StateId) -> Arc<BuildLock> {
        self.build_locks
            .lock()
            .expect("build locks")
            .entry(*id)
            .or_default()
            .clone()
    }

    /// Drops a build lock nobody holds or waits for, so the map stays small.
    fn forget_build_lock(&self, id: &StateId) {
        let mut locks = self.build_locks.lock().expect("build locks");
        if locks.get(id).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(id);
        }
    }

    fn is_cached(&self, id: &StateId) -> Result<bool, IndexError> {
        self.is_cached_hex(&id.to_hex())
    }

    fn is_cached_hex(&self, id: &str) -> Result<bool, IndexError> {
        Ok(self.index.state(id)?.is_some())
    }

    /// Resolves an alias file into kind, args and cwd.
    fn resolve_input(input: PrepareInput) -> Result<PrepareInput, EngineError> {
        let Some(alias_path) = input.alias_path.clone() else {
            return Ok(input);
        };
        let alias = sqlrs_proto::alias::load(&alias_path)
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        let cwd = alias_path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("/"));
        Ok(PrepareInput {
            kind: alias.kind,
            args: alias.args,
            cwd,
            stdin: input.stdin,
            alias_path: Some(alias_path),
            image: input.image.or(alias.image),
        })
    }

    /// Plans a request: steps, ids, fingerprints. `ingest` copies every input
    /// into the blob store (what is hashed is what will run).
    async fn chain(
        self: &Arc<Self>,
        input: PrepareInput,
        ingest: bool,
        cancel: &CancellationToken,
    ) -> Result<Chain, EngineError> {
        let input = Self::resolve_input(input)?;
        if !matches!(input.kind.as_str(), "psql" | "lb") {
            return Err(EngineError::InvalidRequest(format!(
                "prepare kind {:?} is not available: sqlrs prepares with psql (`prepare:psql`) or Liquibase (`prepare:lb`)",
                input.kind
            )));
        }
        if !input.cwd.is_absolute() {
            return Err(EngineError::InvalidRequest(format!(
                "working directory {} is not absolute",
                input.cwd.display()
            )));
        }
        let rt = self.runtimes.for_image(input.image.as_deref()).await?;
        let base = ids::base_id(&rt.runtime.engine());
        let (steps, fingerprints, lb) = if input.kind == "lb" {
            let (steps, fingerprints, lb) =
                self.lb_steps(&rt, &base, &input, ingest, cancel).await?;
            (steps, fingerprints, Some(lb))
        } else {
            let this = self.clone();
            let steps = tokio::task::spawn_blocking(move || {
                let key = planner::memo::key(&input.args, &input.cwd, input.stdin.as_deref());
                if let Some(steps) = this.plan_memo.get(&key, ingest)
                    // Stored inputs may have been collected since.
                    && (!ingest || steps.iter().all(|s| step_blobs_present(&this.blobs, s)))
                {
                    return Ok(steps.as_ref().clone());
                }
                let planned_at = std::time::SystemTime::now();
                let req = PsqlRequest {
                    args: &input.args,
                    cwd: &input.cwd,
                    stdin: input.stdin.as_deref(),
                };
                let steps = planner::plan_psql(&req, ingest.then_some(&this.blobs))?;
                this.plan_memo.put(key, &steps, ingest, planned_at);
                Ok::<_, planner::PlanError>(steps)
            })
            .await
            .expect("planner task panicked")?;
            let fingerprints = steps.iter().map(|s| s.fingerprint).collect();
            (
                steps.into_iter().map(ChainStep::Psql).collect(),
                fingerprints,
                None,
            )
        };
        let mut ids = Vec::with_capacity(steps.len());
        let mut parent = base;
        for f in &fingerprints {
            parent = ids::child_id(&parent, f);
            ids.push(parent);
        }
        Ok(Chain {
            rt,
            base,
            steps,
            ids,
            lb,
        })
    }

    fn plan_view(&self, chain: &Chain) -> Result<PlanView, IndexError> {
        let mut steps = Vec::with_capacity(chain.steps.len());
        for (i, (s, id)) in chain.steps.iter().zip(&chain.ids).enumerate() {
            steps.push(PlanStepView {
                index: i as u32 + 1,
                state_id: id.to_hex(),
                summary: s.summary().to_owned(),
                cached: self.is_cached(id)?,
                inputs: s.input_paths(),
            });
        }
        Ok(PlanView {
            base_id: chain.base.to_hex(),
            engine: chain.rt.runtime.engine().label(),
            steps,
        })
    }

    /// Plans without executing anything.
    pub async fn plan(self: &Arc<Self>, input: PrepareInput) -> Result<PlanView, EngineError> {
        let chain = self.chain(input, false, &CancellationToken::new()).await?;
        Ok(self.plan_view(&chain)?)
    }

    /// Runs a prepare job to its end, emitting events; never fails itself.
    pub async fn run_prepare(
        self: Arc<Self>,
        job: Arc<LiveJob>,
        input: PrepareInput,
        delivery: Delivery,
    ) {
        let _ = self.jobs.update(&job, |r| r.status = RunStatus::Running);
        let outcome = self.prepare(&job, input, delivery).await;
        let cancelled = job.cancel.is_cancelled();
        let (status, kind) = match outcome {
            Ok(instance) => (
                RunStatus::Succeeded,
                EventKind::Succeeded(instance.map(Box::new)),
            ),
            Err(Stop::Cancelled) => (RunStatus::Cancelled, EventKind::Cancelled),
            Err(Stop::Failed(_)) if cancelled => (RunStatus::Cancelled, EventKind::Cancelled),
            Err(Stop::Failed(f)) => (RunStatus::Failed, EventKind::Failed(f)),
        };
        let _ = self.jobs.update(&job, |r| {
            r.status = status;
            r.finished_at_ms = now_ms();
            if let EventKind::Failed(f) = &kind {
                r.error = Some(f.clone());
            }
            if let EventKind::Succeeded(Some(i)) = &kind {
                r.instance_id = Some(i.id.clone());
            }
            for t in &mut r.tasks {
                if !t.status.is_final() {
                    t.status = if status == RunStatus::Succeeded {
                        RunStatus::Succeeded
                    } else {
                        RunStatus::Cancelled
                    };
                }
            }
        });
        if let Err(e) = self.jobs.emit(&job, kind) {
            tracing::error!(job = %job.id, "cannot store the final event: {e}");
        }
        let _ = std::fs::remove_dir_all(self.store.exec_dir(&job.id));
        self.jobs.finish(&job);
    }

    fn set_task(&self, job: &LiveJob, index: u32, change: impl FnOnce(&mut TaskRecord)) {
        let _ = self.jobs.update(job, |r| {
            if let Some(t) = r.tasks.iter_mut().find(|t| t.index == index) {
                change(t);
            }
        });
    }

    fn step_event(&self, job: &LiveJob, chain: &Chain, k: usize, status: &str, elapsed_ms: u64) {
        let _ = self.jobs.emit(
            job,
            EventKind::Step(StepProgress {
                index: k as u32 + 1,
                total: chain.steps.len() as u32,
                status: status.into(),
                state_id: chain.ids[k].to_hex(),
                summary: chain.steps[k].summary().to_owned(),
                elapsed_ms,
            }),
        );
    }

    async fn prepare(
        self: &Arc<Self>,
        job: &Arc<LiveJob>,
        input: PrepareInput,
        delivery: Delivery,
    ) -> Result<Option<InstanceRecord>, Stop> {
        if let Delivery::Instance(HandOut {
            name: Some(name), ..
        }) = &delivery
        {
            check_name(name)?;
        }
        let now = now_ms();
        let _ = self.jobs.update(job, |r| {
            r.tasks.push(TaskRecord {
                index: 0,
                kind: TaskKind::Plan,
                summary: "plan".into(),
                status: RunStatus::Running,
                state_id: None,
                cached: false,
                started_at_ms: now,
                finished_at_ms: 0,
            })
        });
        let chain = match self.chain(input, true, &job.cancel).await {
            Ok(c) => c,
            Err(_) if job.cancel.is_cancelled() => {
                self.set_task(job, 0, |t| t.status = RunStatus::Cancelled);
                return Err(Stop::Cancelled);
            }
            Err(EngineError::Plan(e)) => {
                self.set_task(job, 0, |t| t.status = RunStatus::Failed);
                return Err(Stop::Failed(plan_failure(&e)));
            }
            Err(EngineError::Liquibase(e)) => {
                self.set_task(job, 0, |t| t.status = RunStatus::Failed);
                return Err(Stop::Failed(lb::failure(&e, None, None)));
            }
            Err(e) => return Err(e.into()),
        };
        let n = chain.steps.len();
        let now = now_ms();
        let head = chain.ids.last().expect("a plan has steps").to_hex();
        let _ = self.jobs.update(job, |r| {
            r.summary = chain
                .steps
                .iter()
                .map(ChainStep::summary)
                .collect::<Vec<_>>()
                .join(" ");
            r.state_id = Some(head.clone());
            r.tasks[0].status = RunStatus::Succeeded;
            r.tasks[0].finished_at_ms = now;
            for (k, s) in chain.steps.iter().enumerate() {
                r.tasks.push(TaskRecord {
                    index: k as u32 + 1,
                    kind: TaskKind::Step,
                    summary: s.summary().to_owned(),
                    status: RunStatus::Queued,
                    state_id: Some(chain.ids[k].to_hex()),
                    cached: false,
                    started_at_ms: 0,
                    finished_at_ms: 0,
                });
            }
            r.tasks.push(TaskRecord {
                index: n as u32 + 1,
                kind: TaskKind::Start,
                summary: "start instance".into(),
                status: RunStatus::Queued,
                state_id: Some(head.clone()),
                cached: false,
                started_at_ms: 0,
                finished_at_ms: 0,
            });
        });
        self.jobs
            .emit(job, EventKind::Planned(self.plan_view(&chain)?))?;
        match delivery {
            Delivery::Instance(how) => {
                let Some(name) = how.name.clone() else {
                    let mut inst = self
                        .make_head(job, &chain, &Delivery::Instance(how.clone()))
                        .await?;
                    if let Some(inst) = &mut inst {
                        self.bind(inst, &how).await?;
                    }
                    return Ok(inst);
                };
                // One prepare per name at a time: the second one finds the
                // first's instance.
                let lock = self.name_lock(&name);
                let result = tokio::select! {
                    _guard = lock.lock() => self.prepare_named(job, &chain, &how).await,
                    () = job.cancel.cancelled() => Err(Stop::Cancelled),
                };
                drop(lock);
                self.forget_name_lock(&name);
                result
            }
            prebuild @ Delivery::Prebuild { .. } => self.make_head(job, &chain, &prebuild).await,
        }
    }

    /// A prepare with `--name`: the named instance when it is of the head
    /// state, else a new one that takes the name.
    async fn prepare_named(
        self: &Arc<Self>,
        job: &Arc<LiveJob>,
        chain: &Chain,
        how: &HandOut,
    ) -> Result<Option<InstanceRecord>, Stop> {
        let n = chain.steps.len();
        let head = chain.ids[n - 1].to_hex();
        if let Some(inst) = self.reuse_named(&head, how).await? {
            for k in 0..n {
                self.step_event(job, chain, k, "cached", 0);
                self.set_task(job, k as u32 + 1, |t| {
                    t.status = RunStatus::Succeeded;
                    t.cached = true;
                });
            }
            self.jobs.emit(
                job,
                EventKind::Log(format!(
                    "instance {} is named {:?}; handing it out again",
                    inst.id,
                    inst.name.as_deref().unwrap_or_default()
                )),
            )?;
            return Ok(Some(inst));
        }
        let mut inst = self
            .make_head(job, chain, &Delivery::Instance(how.clone()))
            .await?;
        if let Some(inst) = &mut inst {
            self.bind(inst, how).await?;
        }
        Ok(inst)
    }

    /// Builds what is missing of the chain (the first missing state once,
    /// whoever asks; builds wait for a slot) and delivers.
    async fn make_head(
        self: &Arc<Self>,
        job: &Arc<LiveJob>,
        chain: &Chain,
        delivery: &Delivery,
    ) -> Result<Option<InstanceRecord>, Stop> {
        let n = chain.steps.len();
        // What the chain reads stays while it runs: its states and the
        // stored copies of its inputs.
        let _lease = self.cache.lease(
            std::iter::once(&chain.base)
                .chain(&chain.ids)
                .map(StateId::to_hex)
                .chain(chain.blobs().map(|d| blob_lease(&d))),
        );
        // Longest cached prefix; the first missing state is built once.
        let first_missing = self.cached_prefix(chain)?;
        if first_missing == n {
            return self.finish_prepare(job, chain, n, delivery).await;
        }
        let priority = match delivery {
            Delivery::Instance(_) => Priority::Interactive,
            Delivery::Prebuild { .. } => Priority::Background,
        };
        // Every state still missing is locked, in chain order, for the
        // whole build: a prepare that finds part of the chain cached by now
        // waits for the rest instead of building it a second time. (Locks
        // are taken root to leaf by every job, so none waits in a circle.)
        let missing: Vec<StateId> = chain.ids[first_missing..].to_vec();
        let result = self
            .build_missing(job, chain, delivery, &missing, priority)
            .await;
        for id in &missing {
            self.forget_build_lock(id);
        }
        result
    }

    /// [`Self::make_head`] with the missing states' locks held.
    async fn build_missing(
        self: &Arc<Self>,
        job: &Arc<LiveJob>,
        chain: &Chain,
        delivery: &Delivery,
        missing: &[StateId],
        priority: Priority,
    ) -> Result<Option<InstanceRecord>, Stop> {
        let locks: Vec<Arc<BuildLock>> = missing.iter().map(|id| self.build_lock(id)).collect();
        let acquired = tokio::select! {
            held = async {
                // The locks first: a job waiting for another's build holds
                // no build slot meanwhile.
                let mut guards = Vec::with_capacity(locks.len());
                for (lock, id) in locks.iter().zip(missing) {
                    let what = format!("state {}", id.to_hex());
                    guards.push(lock.acquire(&self.jobs, job, &what).await);
                }
                let slot = self.scheduler.acquire(priority).await;
                (guards, slot)
            } => Some(held),
            () = job.cancel.cancelled() => None,
        };
        // The build itself is not dropped on cancellation: it stops between
        // steps (psql is interrupted) and removes its build server.
        let Some((_guards, _slot)) = acquired else {
            return Err(Stop::Cancelled);
        };
        let cached = self.cached_prefix(chain)?;
        self.finish_prepare(job, chain, cached, delivery).await
    }

    /// With the first `cached` states in the store: reports them, then starts
    /// an instance of the head or builds the rest.
    async fn finish_prepare(
        self: &Arc<Self>,
        job: &Arc<LiveJob>,
        chain: &Chain,
        cached: usize,
        delivery: &Delivery,
    ) -> Result<Option<InstanceRecord>, Stop> {
        let n = chain.steps.len();
        let head = chain.ids[n - 1].to_hex();
        for k in 0..cached {
            self.step_event(job, chain, k, "cached", 0);
            self.set_task(job, k as u32 + 1, |t| {
                t.status = RunStatus::Succeeded;
                t.cached = true;
            });
        }
        let start_task = n as u32 + 1;
        if cached == n {
            if let Delivery::Prebuild { owner } = delivery {
                self.set_task(job, start_task, |t| t.status = RunStatus::Succeeded);
                self.keep_warm(owner, &chain.rt, &head);
                return Ok(None);
            }
            self.set_task(job, start_task, |t| {
                t.status = RunStatus::Running;
                t.started_at_ms = now_ms();
            });
            let instance = self.deliver(&chain.rt, &head, &job.id).await?;
            self.set_task(job, start_task, |t| {
                t.status = RunStatus::Succeeded;
                t.finished_at_ms = now_ms();
            });
            return Ok(Some(instance));
        }
        let parent = if cached == 0 {
            self.ensure_base(&chain.rt, &chain.base).await?;
            chain.base
        } else {
            chain.ids[cached - 1]
        };
        self.build(job, chain, cached, &parent, delivery).await
    }

    /// Number of leading steps whose states are cached.
    fn cached_prefix(&self, chain: &Chain) -> Result<usize, IndexError> {
        for (k, id) in chain.ids.iter().enumerate().rev() {
            if self.is_cached(id)? && self.store.state_path(&id.to_hex()).is_dir() {
                return Ok(k + 1);
            }
        }
        Ok(0)
    }

    /// Makes the engine's empty cluster, once.
    async fn ensure_base(&self, rt: &Selected, base: &StateId) -> Result<(), EngineError> {
        let runtime = &rt.runtime;
        let lock = self.build_lock(base);
        let _g = lock.mutex.lock().await;
        if self.is_cached(base)? {
            return Ok(());
        }
        let started = Instant::now();
        let id = base.to_hex();
        let work = self.store.work_dir().join(format!("base-{}", random_id()));
        self.snapshotter.create_empty(&work)?;
        let result = async {
            runtime.adopt_dir(&work)?;
            runtime.init_base(&work).await?;
            let label = runtime.engine().label();
            self.record_state(&id, None, "initdb".into(), &label, &work, started)
                .await
        }
        .await;
        let _ = self.snapshotter.remove(&work);
        result
    }

    /// Makes `data` state `id` and records it. Atomic backends snapshot it
    /// (the server may run) under a temporary name, synced, then renamed into
    /// place; the others take the directory itself (its server is stopped),
    /// less the WAL segments recycled for later use: synced, then renamed into
    /// place, so the caller clones it back into `data` if it goes on using
    /// it, without syncing that copy. Indexed last.
    async fn record_state(
        &self,
        id: &str,
        parent: Option<String>,
        summary: String,
        engine: &str,
        data: &Path,
        started: Instant,
    ) -> Result<(), EngineError> {
        let tmp = self.store.state_tmp_path(id);
        let dst = self.store.state_path(id);
        if tmp.exists() {
            self.snapshotter.remove(&tmp)?;
        }
        let t0 = Instant::now();
        if self.snapshotter.atomic() {
            self.snapshotter.snapshot(data, &tmp)?;
            crate::failpoint::hit("snapshot");
            std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        } else {
            // Stopped: the WAL it recycled for later use is not needed.
            match crate::runtime::wal::prune_recycled_segments(data) {
                Ok(0) => {}
                Ok(bytes) => tracing::debug!(state = %&id[..12], bytes, "recycled WAL left out"),
                Err(e) => tracing::warn!(
                    "keeping the WAL segments of {}: cannot prune them: {e}",
                    data.display()
                ),
            }
            snapshot::write_back(data)?;
            crate::failpoint::hit("snapshot");
            std::fs::rename(data, &dst).map_err(io_err(&dst))?;
        }
        let t1 = Instant::now();
        // The rename itself reaches the disk before the index names the
        // state: after a power cut the index never names a missing directory.
        sync_dir(&self.store.states_dir())?;
        crate::failpoint::hit("record");
        let t2 = Instant::now();
        let size = self.snapshotter.usage(&dst).unwrap_or(0);
        tracing::debug!(
            state = %&id[..12],
            snapshot_ms = (t1 - t0).as_millis() as u64,
            sync_dir_ms = (t2 - t1).as_millis() as u64,
            usage_ms = t2.elapsed().as_millis() as u64,
            "state saved"
        );
        let now = now_ms();
        self.index.put_state(&StateRecord {
            id: id.into(),
            parent,
            engine: engine.into(),
            summary,
            size_bytes: size,
            created_at_ms: now,
            last_used_at_ms: now,
            use_count: 0,
            build_ms: started.elapsed().as_millis() as u64,
        })?;
        Ok(())
    }

    fn server_options() -> ServerOptions {
        ServerOptions {
            durable: false,
            port: None,
        }
    }

    /// Builds steps `from..` on a clone of `parent`; the build server becomes
    /// the job's instance.
    async fn build(
        self: &Arc<Self>,
        job: &Arc<LiveJob>,
        chain: &Chain,
        from: usize,
        parent: &StateId,
        delivery: &Delivery,
    ) -> Result<Option<InstanceRecord>, Stop> {
        let mut record = Self::new_record(
            &chain.rt,
            &parent.to_hex(),
            &job.id,
            InstanceStatus::Building,
        );
        self.index.put_instance(&record)?;
        let prebuild = matches!(delivery, Delivery::Prebuild { .. });
        let result = self
            .build_steps(job, chain, from, &mut record, prebuild)
            .await;
        match (result, delivery) {
            (Ok(()), Delivery::Instance(_)) => {
                self.pool
                    .used(&record.state_id, &warm::target_of(&chain.rt));
                self.replenish(&record.state_id);
                Ok(Some(record))
            }
            (Ok(()), Delivery::Prebuild { owner }) => {
                // The build server ran at low priority: a fresh warm
                // instance serves the head instead.
                self.discard_instance(&record).await;
                self.keep_warm(owner, &chain.rt, &record.state_id);
                Ok(None)
            }
            (Err(stop), _) => {
                self.discard_instance(&record).await;
                Err(stop)
            }
        }
    }

    async fn build_steps(
        self: &Arc<Self>,
        job: &Arc<LiveJob>,
        chain: &Chain,
        from: usize,
        record: &mut InstanceRecord,
        low_priority: bool,
    ) -> Result<(), Stop> {
        let runtime = chain.rt.runtime.as_ref();
        let data = self.store.instance_data(&record.id);
        let run = self.store.instance_run(&record.id);
        // Background builds yield the CPU to everything else (native
        // servers; a container's processes are Docker's to schedule).
        let native = runtime.info().kind == "native";
        let lower = |server: &ServerHandle| {
            if low_priority && native {
                crate::runtime::memory::lower_priority(server.pid);
            }
        };
        self.room_for_step(job, chain, from).await?;
        let mut server = self.clone_and_start(&chain.rt, record).await?;
        lower(&server);
        record.started_at_ms = now_ms();
        record.server = Some(server.clone());
        self.index.put_instance(record)?;
        let exec_root = self.store.exec_dir(&job.id);
        let label = runtime.engine().label();
        for k in from..chain.steps.len() {
            if job.cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let task = k as u32 + 1;
            if k > from {
                self.room_for_step(job, chain, k).await?;
            }
            let started = Instant::now();
            self.step_event(job, chain, k, "running", 0);
            self.set_task(job, task, |t| {
                t.status = RunStatus::Running;
                t.started_at_ms = now_ms();
            });
            let step = &chain.steps[k];
            let execute = async {
                match step {
                    ChainStep::Psql(step) => {
                        self.run_step(job, runtime, &server, step, &exec_root, k)
                            .await
                    }
                    ChainStep::Changeset(_) => {
                        self.run_changeset(job, chain, runtime, &server, &exec_root, k)
                            .await
                    }
                }
            };
            let outcome = tokio::select! {
                outcome = execute => outcome,
                never = write_back_while_running(&data) => match never {},
            };
            if let Err(stop) = outcome {
                let status = match stop {
                    Stop::Cancelled => RunStatus::Cancelled,
                    Stop::Failed(_) => RunStatus::Failed,
                };
                self.set_task(job, task, |t| {
                    t.status = status;
                    t.finished_at_ms = now_ms();
                });
                self.step_event(
                    job,
                    chain,
                    k,
                    status.as_str(),
                    started.elapsed().as_millis() as u64,
                );
                return Err(stop);
            }
            crate::failpoint::hit("step");
            // Snapshot: atomic backends take the running server after a
            // checkpoint; the others need it stopped.
            let id = chain.ids[k].to_hex();
            let parent_id = if k == 0 {
                chain.base.to_hex()
            } else {
                chain.ids[k - 1].to_hex()
            };
            let atomic = self.snapshotter.atomic();
            let mut recorded = false;
            let snapshot = async {
                let t0 = Instant::now();
                if atomic {
                    runtime.checkpoint(&server).await?;
                } else {
                    runtime.stop(&server).await?;
                }
                tracing::debug!(
                    step = k + 1,
                    step_ms = started.elapsed().as_millis() as u64,
                    quiesce_ms = t0.elapsed().as_millis() as u64,
                    "step done, server quiet"
                );
                self.record_state(
                    &id,
                    Some(parent_id),
                    step.summary().to_owned(),
                    &label,
                    &data,
                    started,
                )
                .await?;
                recorded = true;
                if !atomic {
                    let t0 = Instant::now();
                    self.snapshotter
                        .clone_writable(&self.store.state_path(&id), &data)?;
                    tracing::debug!(
                        clone_ms = t0.elapsed().as_millis() as u64,
                        "state cloned back"
                    );
                    server = runtime.start(&data, &run, &Self::server_options()).await?;
                    lower(&server);
                    record.started_at_ms = now_ms();
                    record.server = Some(server.clone());
                }
                Ok::<_, EngineError>(())
            }
            .await;
            if let Err(e) = snapshot {
                // The step ran; what failed is keeping its result or going on
                // from it. Say which, and that a saved state stays.
                let message = if recorded {
                    format!(
                        "step {}'s state {} is saved, but the build cannot go on from it: {e}",
                        k + 1,
                        &id[..12]
                    )
                } else {
                    format!("step {} ran, but its state could not be saved: {e}", k + 1)
                };
                self.set_task(job, task, |t| {
                    t.status = RunStatus::Failed;
                    t.finished_at_ms = now_ms();
                });
                self.step_event(
                    job,
                    chain,
                    k,
                    "failed",
                    started.elapsed().as_millis() as u64,
                );
                return Err(Stop::Failed(JobFailure {
                    reason: e.reason().into(),
                    message,
                    file: None,
                    line: None,
                    step: Some(task),
                }));
            }
            record.state_id = id;
            self.index.put_instance(record)?;
            self.evict_later("after a snapshot");
            let elapsed = started.elapsed().as_millis() as u64;
            self.set_task(job, task, |t| {
                t.status = RunStatus::Succeeded;
                t.finished_at_ms = now_ms();
            });
            self.step_event(job, chain, k, "succeeded", elapsed);
        }
        let start_task = chain.steps.len() as u32 + 1;
        self.set_task(job, start_task, |t| t.status = RunStatus::Running);
        crate::failpoint::hit("hand_out");
        self.hand_out(runtime, record, &server).await?;
        self.set_task(job, start_task, |t| {
            t.status = RunStatus::Succeeded;
            t.finished_at_ms = now_ms();
        });
        Ok(())
    }

    /// Makes room for step `k` (0-based); the step fails when there is none.
    async fn room_for_step(
        self: &Arc<Self>,
        job: &LiveJob,
        chain: &Chain,
        k: usize,
    ) -> Result<(), Stop> {
        let Err(stop) = self.ensure_room().await else {
            return Ok(());
        };
        let stop = match stop {
            Stop::Failed(mut f) => {
                f.step = Some(k as u32 + 1);
                Stop::Failed(f)
            }
            other => other,
        };
        self.set_task(job, k as u32 + 1, |t| {
            t.status = RunStatus::Failed;
            t.finished_at_ms = now_ms();
        });
        self.step_event(job, chain, k, "failed", 0);
        Err(stop)
    }

    async fn run_step(
        &self,
        job: &LiveJob,
        runtime: &dyn Runtime,
        server: &ServerHandle,
        step: &Step,
        exec_root: &Path,
        k: usize,
    ) -> Result<(), Stop> {
        let inv = {
            let exec_root = exec_root.to_owned();
            self.blobs
                .materialize(&exec_root, step)
                .map_err(|e| EngineError::InvalidRequest(e.to_string()))?
        };
        let result = runtime
            .run_psql(
                server,
                &inv.args,
                &inv.cwd,
                inv.stdin.as_deref(),
                &job.cancel,
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(_) if job.cancel.is_cancelled() => Err(Stop::Cancelled),
            Err(RuntimeError::Psql { stderr, exit_code }) => {
                let located =
                    blobs::parse_psql_error(exec_root, &stderr).map(|l| l.resolved_in(&step.cwd));
                let fallback_file = step.user_file().map(|p| p.display().to_string());
                let message = match &located {
                    Some(l) => l.message.clone(),
                    None => format!(
                        "psql exited with code {exit_code}: {}",
                        blobs::user_text(exec_root, stderr.trim())
                    ),
                };
                Err(Stop::Failed(JobFailure {
                    reason: "sql_error".into(),
                    message,
                    file: located.as_ref().map(|l| l.file.clone()).or(fallback_file),
                    line: located.as_ref().map(|l| l.line),
                    step: Some(k as u32 + 1),
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn clone_into_instance(&self, state: &str, inst: &str) -> Result<(), EngineError> {
        let dir = self.store.instance_dir(inst);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
                .map_err(io_err(&dir))?;
        }
        // A run folder outside the store (long store paths) must be ours, not
        // a link someone planted in the temp dir.
        let run = self.store.instance_run(inst);
        if run
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            std::fs::remove_file(&run).map_err(io_err(&run))?;
        }
        self.snapshotter.clone_writable(
            &self.store.state_path(state),
            &self.store.instance_data(inst),
        )?;
        Ok(())
    }

    /// Gives a running server its password and records it as an instance.
    async fn hand_out(
        &self,
        runtime: &dyn Runtime,
        record: &mut InstanceRecord,
        server: &ServerHandle,
    ) -> Result<(), Stop> {
        let t0 = Instant::now();
        let password = generate_password();
        runtime.set_password(server, &password).await?;
        tracing::debug!(
            password_ms = t0.elapsed().as_millis() as u64,
            "password set"
        );
        record.dsn = runtime.dsn(server, &password);
        record.password = password;
        record.server = Some(server.clone());
        record.status = InstanceStatus::Running;
        self.index.put_instance(record)?;
        self.index.touch_state(&record.state_id, now_ms())?;
        Ok(())
    }

    /// Clones the record's state into its folder and starts a server on it.
    async fn clone_and_start(
        &self,
        rt: &Selected,
        record: &InstanceRecord,
    ) -> Result<ServerHandle, EngineError> {
        let t0 = Instant::now();
        self.clone_into_instance(&record.state_id, &record.id)?;
        tracing::debug!(
            instance = %record.id,
            clone_ms = t0.elapsed().as_millis() as u64,
            "state cloned"
        );
        Ok(rt
            .runtime
            .start(
                &self.store.instance_data(&record.id),
                &self.store.instance_run(&record.id),
                &Self::server_options(),
            )
            .await?)
    }

    /// A new instance of a cached state.
    async fn start_instance(
        &self,
        rt: &Selected,
        state: &str,
        job_id: &str,
    ) -> Result<InstanceRecord, Stop> {
        let mut record = Self::new_record(rt, state, job_id, InstanceStatus::Building);
        self.index.put_instance(&record)?;
        let result = async {
            let server = self.clone_and_start(rt, &record).await?;
            record.started_at_ms = now_ms();
            record.server = Some(server.clone());
            self.hand_out(rt.runtime.as_ref(), &mut record, &server)
                .await
        }
        .await;
        match result {
            Ok(()) => Ok(record),
            Err(e) => {
                self.discard_instance(&record).await;
                Err(e)
            }
        }
    }

    /// Stops an instance's server and removes its files and record.
    async fn discard_instance(&self, record: &InstanceRecord) {
        self.pool.remove_instance(&record.id);
        let runtime = self
            .runtimes
            .for_instance(&record.runtime, &record.image)
            .await;
        if let (Some(server), Ok(rt)) = (&record.server, &runtime)
            && rt.runtime.is_running(server)
            && let Err(e) = rt.runtime.stop(server).await
        {
            tracing::warn!(instance = %record.id, "stopping the server failed: {e}");
        }
        let data = self.store.instance_data(&record.id);
        crate::runtime::stop_stray(&data).await;
        if data.exists()
            && let Err(e) = self.snapshotter.remove(&data)
        {
            tracing::warn!(instance = %record.id, "removing {} failed: {e}", data.display());
        }
        let _ = std::fs::remove_dir_all(self.store.instance_run(&record.id));
        let _ = std::fs::remove_dir_all(self.store.instance_dir(&record.id));
        let _ = self.index.delete_instance(&record.id);
    }

    /// Resolves a full id or a prefix of at least 8 characters.
    pub fn resolve<'a>(
        what: &'static str,
        prefix: &str,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<String, EngineError> {
        if !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EngineError::NotHex(prefix.into()));
        }
        if prefix.len() < 8 {
            return Err(EngineError::ShortPrefix(prefix.into()));
        }
        let prefix = prefix.to_ascii_lowercase();
        let matches: Vec<String> = ids
            .into_iter()
            .filter(|id| id.starts_with(&prefix))
            .map(str::to_owned)
            .collect();
        match matches.len() {
            0 => Err(EngineError::NotFound {
                what,
                id: prefix.clone(),
            }),
            1 => Ok(matches.into_iter().next().expect("one match")),
            _ => Err(EngineError::Ambiguous {
                what,
                prefix,
                matches,
            }),
        }
    }

    /// An instance by name, full id or id prefix (warm instances of the
    /// pool are nobody's yet and are not found).
    pub fn instance(&self, prefix: &str) -> Result<InstanceRecord, EngineError> {
        let mut all = self.index.instances()?;
        all.retain(|i| i.status != InstanceStatus::Warm);
        if let Some(k) = all.iter().position(|i| i.name.as_deref() == Some(prefix)) {
            return Ok(all.swap_remove(k));
        }
        let id = match Self::resolve("instance", prefix, all.iter().map(|i| i.id.as_str())) {
            // Not an id: it was meant as a name.
            Err(EngineError::NotHex(_)) => {
                return Err(EngineError::NotFound {
                    what: "instance named",
                    id: prefix.into(),
                });
            }
            other => other?,
        };
        Ok(all
            .into_iter()
            .find(|i| i.id == id)
            .expect("resolved id exists"))
    }

    /// An instance about to be used: a server (or container) that went away
    /// is started again on the instance's data, with the same password (the
    /// port, and so the DSN, may change).
    pub async fn ready_instance(&self, prefix: &str) -> Result<InstanceRecord, EngineError> {
        let mut inst = self.instance(prefix)?;
        if inst.status == InstanceStatus::Building {
            return Ok(inst);
        }
        if inst.status == InstanceStatus::Lost {
            return Err(EngineError::InvalidRequest(format!(
                "instance {} is lost: {}; remove it with `sqlrs rm {}` and prepare again",
                inst.id,
                inst.note.as_deref().unwrap_or("its data is gone"),
                inst.id
            )));
        }
        let rt = self
            .runtimes
            .for_instance(&inst.runtime, &inst.image)
            .await?
            .runtime;
        if inst.server.as_ref().is_some_and(|s| rt.is_running(s)) {
            return Ok(inst);
        }
        let data = self.store.instance_data(&inst.id);
        if !data.is_dir() {
            return Err(EngineError::InvalidRequest(format!(
                "instance {} lost its data directory {}; remove it with `sqlrs rm {}`",
                inst.id,
                data.display(),
                inst.id
            )));
        }
        tracing::info!(instance = %inst.id, "its server is gone; starting it again");
        self.restart(rt.as_ref(), &mut inst).await?;
        Ok(inst)
    }

    /// Starts an instance's server again on its data (its old port first, so
    /// the DSN stays when that port is free) with its password, and records it.
    async fn restart(
        &self,
        rt: &dyn Runtime,
        inst: &mut InstanceRecord,
    ) -> Result<(), EngineError> {
        let data = self.store.instance_data(&inst.id);
        crate::runtime::stop_stray(&data).await;
        let opts = ServerOptions {
            port: inst.server.as_ref().map(|s| s.port),
            ..Self::server_options()
        };
        let server = rt
            .start(&data, &self.store.instance_run(&inst.id), &opts)
            .await?;
        rt.set_password(&server, &inst.password).await?;
        inst.dsn = rt.dsn(&server, &inst.password);
        inst.started_at_ms = now_ms();
        inst.server = Some(server);
        inst.status = InstanceStatus::Running;
        inst.note = None;
        self.index.put_instance(inst)?;
        Ok(())
    }

    /// Marks an instance lost, keeping it listed until it is removed.
    fn lose(&self, inst: &mut InstanceRecord, why: String) -> Result<(), EngineError> {
        inst.status = InstanceStatus::Lost;
        inst.server = None;
        inst.note = Some(why);
        self.index.put_instance(inst)?;
        Ok(())
    }

    pub async fn delete_instance(
        &self,
        prefix: &str,
        force: bool,
        dry_run: bool,
    ) -> Result<Vec<Removal>, EngineError> {
        let inst = self.instance(prefix)?;
        let blocked = self.instance_blocker(&inst, force).await;
        let removed = blocked.is_none() && !dry_run;
        if removed {
            self.discard_instance(&inst).await;
        }
        Ok(vec![Removal {
            kind: "instance",
            id: inst.id,
            removed: blocked.is_none(),
            blocked_reason: blocked,
        }])
    }

    /// Client sessions open on an instance's server, as the server sees
    /// them; 0 when its server is not running.
    pub async fn connection_count(&self, inst: &InstanceRecord) -> Result<u32, EngineError> {
        let Some(server) = &inst.server else {
            return Ok(0);
        };
        if inst.status == InstanceStatus::Building {
            return Ok(0);
        }
        let rt = self
            .runtimes
            .for_instance(&inst.runtime, &inst.image)
            .await?;
        if !rt.runtime.is_running(server) {
            return Ok(0);
        }
        Ok(rt.runtime.connection_count(server).await?)
    }

    async fn instance_blocker(&self, inst: &InstanceRecord, force: bool) -> Option<String> {
        if inst.status == InstanceStatus::Building {
            return Some(format!(
                "it is the build server of running job {}; cancel the job instead",
                inst.job_id
            ));
        }
        if force {
            return None;
        }
        // A client that just disconnected stays in the server's view for a
        // moment while its backend exits: look again before refusing.
        let mut n = 0;
        for attempt in 0..4 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n = self.connection_count(inst).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
        Some(format!("{n} open connection(s); close them or use --force"))
    }

    pub async fn delete_state(
        &self,
        prefix: &str,
        recurse: bool,
        force: bool,
        dry_run: bool,
    ) -> Result<Vec<Removal>, EngineError> {
        let states = self.index.states()?;
        let id = Self::resolve("state", prefix, states.iter().map(|s| s.id.as_str()))?;
        // The state and every descendant, parents before children.
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in &states {
            if let Some(p) = &s.parent {
                children.entry(p.as_str()).or_default().push(&s.id);
            }
        }
        let mut order = vec![id.clone()];
        let mut i = 0;
        while i < order.len() {
            if let Some(cs) = children.get(order[i].as_str()) {
                order.extend(cs.iter().map(|c| c.to_string()));
            }
            i += 1;
        }
        let subtree: HashSet<&str> = order.iter().map(String::as_str).collect();
        // Warm instances are the pool's: they never hold a state back.
        let (warm, instances): (Vec<InstanceRecord>, Vec<InstanceRecord>) = self
            .index
            .instances()?
            .into_iter()
            .filter(|inst| subtree.contains(inst.state_id.as_str()))
            .partition(|inst| inst.status == InstanceStatus::Warm);
        let descendants = order.len() - 1;
        let blocked = if descendants > 0 && !recurse {
            Some(format!(
                "it has {descendants} descendant state(s); use --recurse to remove them too"
            ))
        } else if !instances.is_empty() && !force {
            Some(format!(
                "{} instance(s) use it or a descendant; use --force to remove them too",
                instances.len()
            ))
        } else {
            None
        };
        let mut out = Vec::new();
        if let Some(reason) = blocked {
            out.push(Removal {
                kind: "state",
                id,
                removed: false,
                blocked_reason: Some(reason),
            });
            return Ok(out);
        }
        for inst in &instances {
            let blocker = self.instance_blocker(inst, force).await;
            if blocker.is_some() {
                out.push(Removal {
                    kind: "instance",
                    id: inst.id.clone(),
                    removed: false,
                    blocked_reason: blocker,
                });
                return Ok(out);
            }
        }
        if !dry_run {
            for inst in &warm {
                self.discard_instance(inst).await;
            }
        }
        for inst in instances {
            if !dry_run {
                self.discard_instance(&inst).await;
            }
            out.push(Removal {
                kind: "instance",
                id: inst.id,
                removed: true,
                blocked_reason: None,
            });
        }
        for sid in order.iter().rev() {
            if !dry_run {
                self.remove_state(sid)?;
            }
            out.push(Removal {
                kind: "state",
                id: sid.clone(),
                removed: true,
                blocked_reason: None,
            });
        }
        Ok(out)
    }

    /// Unindexes a state, then removes its directory.
    fn remove_state(&self, id: &str) -> Result<(), EngineError> {
        self.index.delete_state(id)?;
        self.index
            .delete_pin(&crate::model::PinTarget::State(id.into()))?;
        let path = self.store.state_path(id);
        if path.exists() {
            self.snapshotter.remove(&path)?;
        }
        Ok(())
    }

    pub fn delete_job(
        &self,
        prefix: &str,
        force: bool,
        dry_run: bool,
    ) -> Result<Vec<Removal>, EngineError> {
        let jobs = self.index.jobs()?;
        let id = Self::resolve("job", prefix, jobs.iter().map(|j| j.id.as_str()))?;
        let running = self.jobs.live(&id).is_some();
        let blocked = (running && !force)
            .then(|| "the job is running; cancel it first or use --force".to_string());
        if blocked.is_none() && !dry_run {
            if running {
                self.jobs.cancel(&id);
            } else {
                self.index.delete_job(&id)?;
            }
        }
        Ok(vec![Removal {
            kind: "job",
            id,
            removed: blocked.is_none(),
            blocked_reason: blocked,
        }])
    }

    /// Brings the store and the index back in line after a (re)start:
    /// half-made states and scratch folders go, states without a directory
    /// are unindexed, unfinished jobs are marked failed, build servers are
    /// discarded, and instances whose server died are started again.
    pub async fn reconcile(&self) -> Result<(), EngineError> {
        for dir in [self.store.root().join("exec"), self.store.work_dir()] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let _ = self.snapshotter.remove(&e.path());
                }
            }
        }
        let indexed: HashSet<String> = self.index.states()?.into_iter().map(|s| s.id).collect();
        let states_dir = self.store.states_dir();
        let mut on_disk = HashSet::new();
        for e in std::fs::read_dir(&states_dir)
            .map_err(io_err(&states_dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if indexed.contains(&name) {
                on_disk.insert(name);
            } else {
                tracing::info!("removing unindexed state directory {name}");
                let _ = self.snapshotter.remove(&e.path());
            }
        }
        for id in indexed.difference(&on_disk) {
            tracing::warn!("state {id} has no directory; unindexing it");
            self.index.delete_state(id)?;
        }
        let live_jobs: HashSet<String> = self.jobs.live_ids().into_iter().collect();
        for mut j in self.index.jobs()? {
            if !j.status.is_final() && !live_jobs.contains(&j.id) {
                j.status = RunStatus::Failed;
                j.finished_at_ms = now_ms();
                j.error = Some(JobFailure {
                    reason: "daemon_restarted".into(),
                    message: "sqlrsd stopped while the job ran; prepare again".into(),
                    file: None,
                    line: None,
                    step: None,
                });
                self.index.put_job(&j)?;
            }
        }
        let mut known = HashSet::new();
        for mut inst in self.index.instances()? {
            let data = self.store.instance_data(&inst.id);
            if matches!(inst.status, InstanceStatus::Building | InstanceStatus::Warm) {
                self.discard_instance(&inst).await;
                continue;
            }
            known.insert(inst.id.clone());
            if inst.status == InstanceStatus::Lost {
                continue;
            }
            if !data.is_dir() {
                tracing::warn!(instance = %inst.id, "its data directory is gone");
                self.lose(
                    &mut inst,
                    format!("its data directory {} is gone", data.display()),
                )?;
                continue;
            }
            let rt = match self.runtimes.for_instance(&inst.runtime, &inst.image).await {
                Ok(rt) => rt.runtime,
                Err(e) => {
                    tracing::warn!(instance = %inst.id, "its runtime is unavailable: {e}");
                    inst.status = InstanceStatus::Stopped;
                    inst.note = Some(format!("its runtime is unavailable: {e}"));
                    self.index.put_instance(&inst)?;
                    continue;
                }
            };
            if inst.server.as_ref().is_some_and(|s| rt.is_running(s)) {
                continue;
            }
            // The server (or its container) is gone: start it again on its
            // data, on its old port when free, so the DSN stays.
            match self.restart(rt.as_ref(), &mut inst).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(instance = %inst.id, "cannot restart: {e}");
                    inst.status = InstanceStatus::Stopped;
                    inst.note = Some(format!("cannot start its server again: {e}"));
                    self.index.put_instance(&inst)?;
                }
            }
        }
        // Containers labelled as this store's that no instance owns.
        let known_ids: Vec<String> = known.iter().cloned().collect();
        for docker in self.runtimes.connected_docker().await {
            if let Err(e) = docker.remove_orphans(self.store.root(), &known_ids).await {
                tracing::warn!("cannot clean orphaned containers: {e}");
            }
        }
        let inst_dir = self.store.instances_dir();
        for e in std::fs::read_dir(&inst_dir)
            .map_err(io_err(&inst_dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                let data = e.path().join("data");
                crate::runtime::stop_stray(&data).await;
                if data.exists() {
                    let _ = self.snapshotter.remove(&data);
                }
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }

    /// Runs `psql` or `pgbench` inside a Docker instance's container: files
    /// the arguments name (and, for psql, their includes and `\copy` data)
    /// are mirrored where the container sees them; output is streamed to
    /// `on_output`; returns the tool's exit code.
    pub async fn exec(
        &self,
        req: ExecInput,
        on_output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
        cancel: &CancellationToken,
    ) -> Result<i32, EngineError> {
        let inst = self.ready_instance(&req.instance).await?;
        if inst.runtime != "docker" {
            return Err(EngineError::InvalidRequest(format!(
                "instance {} runs on the native runtime: run psql on the host against its DSN",
                inst.id
            )));
        }
        let server = inst.server.clone().ok_or_else(|| {
            EngineError::InvalidRequest(format!("instance {} has no running server", inst.id))
        })?;
        let docker = self.runtimes.docker(&inst.image).await?;
        let root = self.store.exec_dir(&format!("run-{}", random_id()));
        let result = async {
            let opts = self.mirror_run_inputs(&req, &root)?;
            let mut cmd = vec![req.tool.clone()];
            cmd.extend(docker.connection_args(&server));
            match req.tool.as_str() {
                "psql" => {
                    cmd.extend(["-d".into(), "postgres".into()]);
                    cmd.extend(req.args.iter().cloned());
                }
                "pgbench" => {
                    cmd.extend(req.args.iter().cloned());
                    cmd.push("postgres".into());
                }
                other => {
                    return Err(EngineError::InvalidRequest(format!(
                        "tool {other:?} cannot run in an instance: use psql or pgbench"
                    )));
                }
            }
            Ok(docker
                .exec_stream(&server, cmd, &opts, on_output, cancel)
                .await?)
        }
        .await;
        let _ = std::fs::remove_dir_all(&root);
        result
    }

    /// Copies the run's input files into a mirror tree under `root`.
    fn mirror_run_inputs(&self, req: &ExecInput, root: &Path) -> Result<ExecOptions, EngineError> {
        let mut files: Vec<PathBuf> = req
            .args
            .iter()
            .flat_map(|a| arg_path_candidates(a))
            .map(|p| req.cwd.join(p))
            .filter(|p| p.is_file())
            .collect();
        if req.tool == "psql" {
            // Includes and data files, where the arguments plan as steps.
            let plan = planner::plan_psql(
                &PsqlRequest {
                    args: &req.args,
                    cwd: &req.cwd,
                    stdin: Some(&req.stdin),
                },
                None,
            );
            if let Ok(steps) = plan {
                files.extend(
                    steps
                        .iter()
                        .flat_map(|s| s.inputs.iter().map(|i| i.path.clone())),
                );
            }
        }
        let cwd = blobs::mirror_path(root, &req.cwd);
        std::fs::create_dir_all(&cwd).map_err(io_err(&cwd))?;
        for f in files {
            let dst = blobs::mirror_path(root, &f);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            std::fs::copy(&f, &dst).map_err(io_err(&f))?;
        }
        let stdin = if req.stdin.is_empty() {
            None
        } else {
            let path = root.join("stdin");
            std::fs::write(&path, &req.stdin).map_err(io_err(&path))?;
            Some(path)
        };
        Ok(ExecOptions {
            cwd: Some(cwd),
            env: Vec::new(),
            stdin,
        })
    }

    /// Bytes held by states (as recorded) and blobs.
    pub fn store_bytes(&self) -> u64 {
        let states: u64 = self
            .index
            .states()
            .map(|v| v.iter().map(|s| s.size_bytes).sum())
            .unwrap_or(0);
        states + dir_size(&self.store.blobs_dir())
    }
}

/// How often the data a running step writes is pushed to disk.
const WRITE_BACK_INTERVAL: Duration = Duration::from_millis(500);

/// Starts writing back the data files the step modified, every
/// [`WRITE_BACK_INTERVAL`], until dropped: the disk works while the step
/// does, so making the state durable afterwards finds little left to write.
async fn write_back_while_running(data: &Path) -> std::convert::Infallible {
    let mut tick = tokio::time::interval(WRITE_BACK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // The first walk takes every file: a copy store's clone of the parent
    // is not synced and keeps the parent's timestamps. Later walks take what
    // changed since the one before, with a second of overlap (timestamps
    // are coarse); asking again for a clean file costs nothing.
    let mut since = std::time::SystemTime::UNIX_EPOCH;
    loop {
        tick.tick().await;
        let path = data.to_owned();
        let walk_start = std::time::SystemTime::now();
        let _ = tokio::task::spawn_blocking(move || snapshot::start_write_back(&path, since)).await;
        since = walk_start - Duration::from_secs(1);
    }
}

fn step_blobs_present(blobs: &BlobStore, step: &Step) -> bool {
    step.inputs.iter().all(|i| blobs.contains(&i.digest))
        && match &step.kind {
            planner::StepKind::Stdin { digest } => blobs.contains(digest),
            _ => true,
        }
}

/// Makes the entries of directory `path` (renames into it) durable.
fn sync_dir(path: &Path) -> Result<(), EngineError> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err(path))
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

fn plan_failure(e: &planner::PlanError) -> JobFailure {
    let (file, line) = e
        .location()
        .map(|(f, l)| (Some(f.display().to_string()), Some(l)))
        .unwrap_or((None, None));
    JobFailure {
        reason: "plan_error".into(),
        message: e.to_string(),
        file,
        line,
        step: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_path_candidates_table() {
        let cases: &[(&str, &[&str])] = &[
            ("q.sql", &["q.sql"]),
            ("-f", &[]),
            ("-fq.sql", &["q.sql"]),
            ("--file=q.sql", &["q.sql"]),
            ("bench.sql@5", &["bench.sql@5", "bench.sql"]),
            ("-c", &[]),
        ];
        for (arg, want) in cases {
            assert_eq!(arg_path_candidates(arg), *want, "{arg}");
        }
    }

    #[test]
    fn prefix_resolution_table() {
        let ids = ["aaaaaaaa11", "aaaaaaaa22", "bbbbbbbb33"];
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("bbbbbbbb", Ok("bbbbbbbb33")),
            ("BBBBBBBB3", Ok("bbbbbbbb33")),
            ("aaaaaaaa", Err("ambiguous_id")),
            ("aaaaaaaa2", Ok("aaaaaaaa22")),
            ("cccccccc", Err("not_found")),
            ("aaaa", Err("short_prefix")),
            ("zzzzzzzz", Err("not_an_id")),
            ("dev", Err("not_an_id")),
        ];
        for (prefix, want) in cases {
            let got = Engine::resolve("state", prefix, ids);
            match (got, want) {
                (Ok(id), Ok(w)) => assert_eq!(id, *w, "{prefix}"),
                (Err(e), Err(r)) => assert_eq!(e.reason(), *r, "{prefix}"),
                (got, _) => panic!("{prefix}: {got:?}"),
            }
        }
        // What a user reads for the failures.
        let message = |prefix: &str| {
            Engine::resolve("state", prefix, ids)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            message("aaaaaaaa"),
            "id prefix aaaaaaaa matches several states (aaaaaaaa11, aaaaaaaa22); give more characters"
        );
        assert_eq!(message("cccccccc"), "state cccccccc not found");
        assert_eq!(
            message("aaaa"),
            "id prefix \"aaaa\" is too short: give at least 8 hex characters"
        );
        assert!(message("zzzzzzzz").contains("is not an id: ids are hex"));
    }
}

//! The gRPC boundary: authenticates calls, converts between wire types and
//! domain records, and maps engine errors to statuses with a stable reason.

use std::pin::Pin;
use std::sync::Arc;

use sqlrs_proto::pb::{self, sqlrs_server::Sqlrs};
use sqlrs_proto::{PROTOCOL_HEADER, PROTOCOL_VERSION, REASON_HEADER, TOKEN_HEADER};
use tokio::sync::{broadcast, watch};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

use crate::engine::{
    CacheView, Delivery, Engine, EngineError, ExecInput, HandOut, PrepareInput, Removal,
};
use crate::model::{
    AliasView, EventKind, InstanceRecord, InstanceStatus, JobEvent, JobFailure, JobRecord,
    PinTarget, PlanView, ProjectView, StateRecord, TaskRecord,
};
use crate::projects::{ProjectError, Projects};
use crate::runtime::docker::OutputStream;

/// What the daemon says about itself.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub socket_path: String,
    pub state_dir: String,
    pub started_at_ms: u64,
}

pub struct Service {
    engine: Arc<Engine>,
    projects: Arc<Projects>,
    info: DaemonInfo,
    token: String,
    shutdown: watch::Sender<bool>,
    /// Cancelled when the daemon begins to shut down.
    closing: tokio_util::sync::CancellationToken,
}

impl Service {
    pub fn new(
        engine: Arc<Engine>,
        projects: Arc<Projects>,
        info: DaemonInfo,
        token: String,
        shutdown: watch::Sender<bool>,
        closing: tokio_util::sync::CancellationToken,
    ) -> Self {
        Self {
            engine,
            projects,
            info,
            token,
            shutdown,
            closing,
        }
    }

    /// Every call but Health carries the token and this protocol version.
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let md = req.metadata();
        let protocol = md.get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok());
        if protocol != Some(PROTOCOL_VERSION.to_string().as_str()) {
            return Err(status(
                Code::FailedPrecondition,
                "protocol_mismatch",
                format!(
                    "client protocol {} does not match sqlrsd protocol {PROTOCOL_VERSION}; restart the daemon with `sqlrs daemon stop`",
                    protocol.unwrap_or("(none)")
                ),
            ));
        }
        let expected = format!("Bearer {}", self.token);
        match md.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
            Some(t) if t == expected => Ok(()),
            _ => Err(status(
                Code::Unauthenticated,
                "bad_token",
                "missing or wrong token; clients read it from the daemon's token file".into(),
            )),
        }
    }

    fn health(&self) -> pb::HealthReply {
        pb::HealthReply {
            protocol_version: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            socket_path: self.info.socket_path.clone(),
            started_at_ms: self.info.started_at_ms,
            state_dir: self.info.state_dir.clone(),
        }
    }
}

fn status(code: Code, reason: &str, message: String) -> Status {
    let mut s = Status::new(code, message);
    if let Ok(v) = reason.parse() {
        s.metadata_mut().insert(REASON_HEADER, v);
    }
    s
}

impl From<crate::index::IndexError> for Status {
    fn from(e: crate::index::IndexError) -> Self {
        EngineError::from(e).into()
    }
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::NotFound { .. } => Code::NotFound,
            EngineError::Ambiguous { .. }
            | EngineError::ShortPrefix(_)
            | EngineError::NotHex(_)
            | EngineError::InvalidRequest(_)
            | EngineError::Plan(_) => Code::InvalidArgument,
            _ => Code::Internal,
        };
        status(code, e.reason(), e.to_string())
    }
}

impl From<ProjectError> for Status {
    fn from(e: ProjectError) -> Self {
        match e {
            ProjectError::Index(e) => e.into(),
            ProjectError::NotAWorkspace(_) => {
                status(Code::InvalidArgument, "not_a_workspace", e.to_string())
            }
            ProjectError::Watch { .. } => {
                status(Code::ResourceExhausted, "watch_failed", e.to_string())
            }
        }
    }
}

fn prepare_input(r: pb::PrepareRequest) -> (PrepareInput, HandOut) {
    let how = HandOut {
        name: (!r.name.is_empty()).then_some(r.name),
        keep: r.keep,
        ttl: (r.ttl_ms > 0).then(|| std::time::Duration::from_millis(r.ttl_ms)),
    };
    let input = PrepareInput {
        kind: r.kind,
        args: r.args,
        cwd: r.cwd.into(),
        stdin: (!r.stdin.is_empty()).then_some(r.stdin),
        alias_path: (!r.alias_path.is_empty()).then(|| r.alias_path.into()),
        image: (!r.image.is_empty()).then_some(r.image),
    };
    (input, how)
}

/// The folder a request was made in: its alias file's, else its cwd.
fn request_dir(input: &PrepareInput) -> Option<std::path::PathBuf> {
    match &input.alias_path {
        Some(alias) => alias.parent().map(std::path::Path::to_owned),
        None => input.cwd.is_absolute().then(|| input.cwd.clone()),
    }
}

fn pb_alias(a: &AliasView) -> pb::AliasStatus {
    pb::AliasStatus {
        name: a.name.clone(),
        path: a.path.clone(),
        status: a.status.clone(),
        head_state_id: a.head_state_id.clone(),
        step: a.step,
        total: a.total,
        error: a.error.as_ref().map(pb_error),
        files: a
            .files
            .iter()
            .map(|f| pb::FileStatus {
                path: f.path.clone(),
                status: f.status.clone(),
                state_id: f.state_id.clone(),
                step: f.step,
            })
            .collect(),
        job_id: a.job_id.clone(),
    }
}

fn pb_project(p: &ProjectView) -> pb::ProjectStatus {
    pb::ProjectStatus {
        root: p.root.clone(),
        prebuild: p.prebuild,
        aliases: p.aliases.iter().map(pb_alias).collect(),
        updated_at_ms: p.updated_at_ms,
        watched: p.watched,
    }
}

fn pb_plan(p: &PlanView) -> pb::PlanReply {
    pb::PlanReply {
        base_id: p.base_id.clone(),
        engine: p.engine.clone(),
        steps: p
            .steps
            .iter()
            .map(|s| pb::PlanStep {
                index: s.index,
                state_id: s.state_id.clone(),
                summary: s.summary.clone(),
                cached: s.cached,
                inputs: s.inputs.clone(),
            })
            .collect(),
    }
}

fn pb_error(f: &JobFailure) -> pb::JobError {
    pb::JobError {
        reason: f.reason.clone(),
        message: f.message.clone(),
        file: f.file.clone().unwrap_or_default(),
        line: f.line.unwrap_or(0),
        step: f.step.unwrap_or(0),
    }
}

/// An instance as clients see it; `connections` is -1 when not asked.
fn pb_instance(i: &InstanceRecord, data_dir: String, connections: i32) -> pb::Instance {
    pb::Instance {
        id: i.id.clone(),
        state_id: i.state_id.clone(),
        dsn: i.dsn.clone(),
        port: i.server.as_ref().map_or(0, |s| u32::from(s.port)),
        created_at_ms: i.created_at_ms,
        status: i.status.as_str().into(),
        runtime: i.runtime.clone(),
        pid: i.server.as_ref().map_or(0, |s| s.pid),
        job_id: i.job_id.clone(),
        data_dir,
        image: i.image.clone(),
        name: i.name.clone().unwrap_or_default(),
        expires_at_ms: i.expires_at_ms,
        connections,
        from_pool: i.from_pool,
        started_at_ms: i.started_at_ms,
        note: i.note.clone().unwrap_or_default(),
    }
}

fn pb_event(e: &JobEvent, engine: &Engine) -> pb::JobEvent {
    use pb::job_event::Event;
    let event = match &e.kind {
        EventKind::Planned(p) => Event::Planned(pb::JobPlanned {
            plan: Some(pb_plan(p)),
        }),
        EventKind::Step(s) => Event::Step(pb::StepEvent {
            index: s.index,
            total: s.total,
            status: s.status.clone(),
            state_id: s.state_id.clone(),
            summary: s.summary.clone(),
            elapsed_ms: s.elapsed_ms,
        }),
        EventKind::Log(text) => Event::Log(pb::LogLine { text: text.clone() }),
        EventKind::Succeeded(i) => Event::Succeeded(pb::JobSucceeded {
            instance: i.as_ref().map(|i| {
                pb_instance(
                    i,
                    engine.store.instance_data(&i.id).display().to_string(),
                    -1,
                )
            }),
        }),
        EventKind::Failed(f) => Event::Failed(pb_error(f)),
        EventKind::Cancelled => Event::Cancelled(pb::JobCancelled {}),
    };
    pb::JobEvent {
        job_id: e.job_id.clone(),
        at_ms: e.at_ms,
        event: Some(event),
    }
}

fn pb_job(j: &JobRecord) -> pb::Job {
    pb::Job {
        id: j.id.clone(),
        kind: j.kind.clone(),
        status: j.status.as_str().into(),
        created_at_ms: j.created_at_ms,
        finished_at_ms: j.finished_at_ms,
        summary: j.summary.clone(),
        instance_id: j.instance_id.clone().unwrap_or_default(),
        state_id: j.state_id.clone().unwrap_or_default(),
        error: j.error.as_ref().map(pb_error),
    }
}

fn pb_task(job: &str, t: &TaskRecord) -> pb::Task {
    pb::Task {
        job_id: job.into(),
        index: t.index,
        kind: t.kind.as_str().into(),
        summary: t.summary.clone(),
        status: t.status.as_str().into(),
        state_id: t.state_id.clone().unwrap_or_default(),
        cached: t.cached,
        started_at_ms: t.started_at_ms,
        finished_at_ms: t.finished_at_ms,
    }
}

fn pb_cache(v: &CacheView) -> pb::CacheStatus {
    pb::CacheStatus {
        used_bytes: v.used_bytes(),
        states_bytes: v.states_bytes,
        blobs_bytes: v.blobs_bytes,
        max_bytes: v.limits.max_bytes.unwrap_or(0),
        reserve_bytes: v.limits.reserve_bytes,
        free_bytes: v.free_bytes,
        high_watermark: v.limits.high_watermark,
        low_watermark: v.limits.low_watermark,
        min_age_ms: v.limits.min_age.as_millis() as u64,
        pressure: v.pressure.as_str().into(),
        reclaimable_bytes: v.reclaimable_bytes,
        evictable_states: v.evictable_states as u32,
        pinned: v.states.iter().filter(|s| s.pinned).count() as u32,
        last_eviction: v.last_eviction.as_ref().map(|e| pb::Eviction {
            at_ms: e.at_ms,
            trigger: e.trigger.clone(),
            state_ids: e.removed.iter().map(|(id, _)| id.clone()).collect(),
            freed_bytes: e.freed_bytes,
            pressure_after: e.pressure.as_str().into(),
        }),
    }
}

fn pb_pin(target: &PinTarget, changed: bool, created_at_ms: u64) -> pb::PinReply {
    let (kind, target) = match target {
        PinTarget::State(id) => ("state", id),
        PinTarget::Alias(path) => ("alias", path),
    };
    pb::PinReply {
        kind: kind.into(),
        target: target.clone(),
        changed,
        created_at_ms,
    }
}

fn pin_request(r: &pb::PinRequest) -> (Option<&str>, Option<&std::path::Path>) {
    (
        (!r.state.is_empty()).then_some(r.state.as_str()),
        (!r.alias_path.is_empty()).then(|| std::path::Path::new(&r.alias_path)),
    )
}

fn pb_state(s: &StateRecord, instance_count: u32) -> pb::State {
    pb::State {
        id: s.id.clone(),
        parent_id: s.parent.clone().unwrap_or_default(),
        engine: s.engine.clone(),
        summary: s.summary.clone(),
        size_bytes: s.size_bytes,
        created_at_ms: s.created_at_ms,
        last_used_at_ms: s.last_used_at_ms,
        use_count: s.use_count,
        build_ms: s.build_ms,
        instance_count,
        ..Default::default()
    }
}

fn pb_removals(items: Vec<Removal>, dry_run: bool) -> pb::DeleteReply {
    pb::DeleteReply {
        items: items
            .into_iter()
            .map(|r| pb::DeletedItem {
                kind: r.kind.into(),
                id: r.id,
                removed: r.removed,
                blocked_reason: r.blocked_reason.unwrap_or_default(),
            })
            .collect(),
        dry_run,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

/// Replays a job's stored events, then follows the live ones until the final
/// event. Lagging followers catch up from the index.
fn follow(engine: Arc<Engine>, job_id: String) -> Result<EventStream, Status> {
    let (past, rx) = engine.jobs.follow(&job_id).map_err(Status::from)?;
    let (tx, out) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut last = 0u64;
        for e in &past {
            last = e.seq;
            if tx.send(Ok(pb_event(e, &engine))).await.is_err() {
                return;
            }
            if e.kind.is_final() {
                return;
            }
        }
        let Some(mut rx) = rx else { return };
        loop {
            let e = match rx.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let Ok(stored) = engine.index.events(&job_id) else {
                        return;
                    };
                    match stored.into_iter().find(|e| e.seq > last) {
                        Some(e) => e,
                        None => continue,
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if e.seq <= last {
                continue;
            }
            last = e.seq;
            let done = e.kind.is_final();
            if tx.send(Ok(pb_event(&e, &engine))).await.is_err() || done {
                return;
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)))
}

#[tonic::async_trait]
impl Sqlrs for Service {
    async fn health(
        &self,
        _: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthReply>, Status> {
        Ok(Response::new(self.health()))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        self.check(&req)?;
        let want_cache = req.get_ref().cache;
        let e = &self.engine;
        let cache = if want_cache {
            Some(pb_cache(&e.cache_view().await?))
        } else {
            None
        };
        let info = e.runtimes.default().runtime.info();
        let (liquibase, liquibase_error) = match e.liquibase.get().await {
            Ok(lb) => (
                format!(
                    "Liquibase {} on Java {} ({})",
                    lb.version,
                    lb.java,
                    lb.exec.display()
                ),
                String::new(),
            ),
            Err(err) => (String::new(), err.to_string()),
        };
        let ix = |r: Result<usize, crate::index::IndexError>| {
            r.map(|n| n as u64)
                .map_err(|e| Status::from(EngineError::from(e)))
        };
        Ok(Response::new(pb::StatusReply {
            daemon: Some(self.health()),
            runtime: info.kind.into(),
            engine: info.detail,
            snapshotter: e.snapshotter.kind().to_string(),
            snapshotter_reason: e.snapshotter_reason.clone(),
            store_path: e.store.root().display().to_string(),
            store_bytes: e.store_bytes(),
            state_count: ix(e.index.states().map(|v| v.len()))?,
            instance_count: ix(e.index.instances().map(|v| v.len()))?,
            job_count: ix(e.index.jobs().map(|v| v.len()))?,
            server_user: info.server_user,
            runtime_reason: e.runtimes.reason().into(),
            liquibase,
            liquibase_error,
            pool: Some({
                let p = e.pool.stats();
                pb::PoolStatus {
                    warm_instances: p.warm_instances,
                    starting: p.starting,
                    memory_bytes: p.memory_bytes,
                    memory_budget_bytes: p.memory_budget_bytes,
                    per_state: p.per_state,
                    hits: p.hits,
                    misses: p.misses,
                    hot_states: p.hot_states,
                }
            }),
            projects: self.projects.views().iter().map(pb_project).collect(),
            cache,
        }))
    }

    type PrepareStream = EventStream;

    async fn prepare(
        &self,
        req: Request<pb::PrepareRequest>,
    ) -> Result<Response<Self::PrepareStream>, Status> {
        self.check(&req)?;
        let (input, how) = prepare_input(req.into_inner());
        if let Some(dir) = request_dir(&input) {
            self.projects.note_use(&dir);
        }
        let job = self
            .engine
            .jobs
            .create("prepare", input.args.join(" "))
            .map_err(Status::from)?;
        // Follow before the job starts so no event is missed.
        let stream = follow(self.engine.clone(), job.id.clone())?;
        tokio::spawn(
            self.engine
                .clone()
                .run_prepare(job, input, Delivery::Instance(how)),
        );
        Ok(Response::new(stream))
    }

    async fn plan(
        &self,
        req: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PlanReply>, Status> {
        self.check(&req)?;
        let (input, _) = prepare_input(req.into_inner());
        if let Some(dir) = request_dir(&input) {
            self.projects.note_use(&dir);
        }
        let plan = self.engine.plan(input).await?;
        Ok(Response::new(pb_plan(&plan)))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        req: Request<pb::JobRef>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        self.check(&req)?;
        let id = self.resolve_job(&req.into_inner().job_id)?;
        Ok(Response::new(follow(self.engine.clone(), id)?))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::JobRef>,
    ) -> Result<Response<pb::CancelJobReply>, Status> {
        self.check(&req)?;
        let id = self.resolve_job(&req.into_inner().job_id)?;
        let cancelled = self.engine.jobs.cancel(&id);
        let job = self.engine.index.job(&id).map_err(Status::from)?;
        Ok(Response::new(pb::CancelJobReply {
            cancelled,
            status: job
                .map(|j| j.status.as_str().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsReply>, Status> {
        self.check(&req)?;
        let mut jobs = self.engine.index.jobs().map_err(Status::from)?;
        jobs.sort_by_key(|j| j.created_at_ms);
        Ok(Response::new(pb::ListJobsReply {
            jobs: jobs.iter().map(pb_job).collect(),
        }))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksReply>, Status> {
        self.check(&req)?;
        let wanted = req.into_inner().job_id;
        let mut jobs = self.engine.index.jobs().map_err(Status::from)?;
        if !wanted.is_empty() {
            let id = self.resolve_job(&wanted)?;
            jobs.retain(|j| j.id == id);
        }
        jobs.sort_by_key(|j| j.created_at_ms);
        let tasks = jobs
            .iter()
            .flat_map(|j| j.tasks.iter().map(|t| pb_task(&j.id, t)))
            .collect();
        Ok(Response::new(pb::ListTasksReply { tasks }))
    }

    async fn delete_job(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        self.check(&req)?;
        let r = req.into_inner();
        let items = self.engine.delete_job(&r.id, r.force, r.dry_run)?;
        Ok(Response::new(pb_removals(items, r.dry_run)))
    }

    async fn list_states(
        &self,
        req: Request<pb::ListStatesRequest>,
    ) -> Result<Response<pb::ListStatesReply>, Status> {
        self.check(&req)?;
        let details = req.get_ref().cache_details;
        let e = &self.engine;
        let err = |x| Status::from(EngineError::from(x));
        let view = if details {
            Some(e.cache_view().await?)
        } else {
            None
        };
        let mut states = e.index.states().map_err(err)?;
        let instances = e.index.instances().map_err(err)?;
        let pinned: std::collections::HashSet<String> = e
            .pins()?
            .into_iter()
            .filter_map(|p| match p.target {
                PinTarget::State(id) => Some(id),
                PinTarget::Alias(_) => None,
            })
            .collect();
        states.sort_by_key(|s| s.created_at_ms);
        Ok(Response::new(pb::ListStatesReply {
            states: states
                .iter()
                .map(|s| {
                    let n = instances.iter().filter(|i| i.state_id == s.id).count();
                    let mut out = pb_state(s, n as u32);
                    out.pinned = pinned.contains(&s.id);
                    if let Some(d) = view
                        .as_ref()
                        .and_then(|v| v.states.iter().find(|d| d.id == s.id))
                    {
                        out.own_bytes = d.own_bytes;
                        out.exclusive_bytes = d.exclusive_bytes;
                        out.protected = d.protected.clone().unwrap_or_default();
                        out.value = d.value;
                    }
                    out
                })
                .collect(),
        }))
    }

    async fn delete_state(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        self.check(&req)?;
        let r = req.into_inner();
        let items = self
            .engine
            .delete_state(&r.id, r.recurse, r.force, r.dry_run)
            .await?;
        Ok(Response::new(pb_removals(items, r.dry_run)))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesReply>, Status> {
        self.check(&req)?;
        let include_warm = req.into_inner().include_warm;
        let e = &self.engine;
        let mut instances = e
            .index
            .instances()
            .map_err(|x| Status::from(EngineError::from(x)))?;
        instances.retain(|i| include_warm || i.status != InstanceStatus::Warm);
        instances.sort_by_key(|i| i.created_at_ms);
        // Every server is asked for its sessions at once.
        let mut counts = tokio::task::JoinSet::new();
        for (k, i) in instances.iter().enumerate() {
            let engine = e.clone();
            let i = i.clone();
            counts.spawn(async move { (k, engine.connection_count(&i).await) });
        }
        let mut connections = vec![-1; instances.len()];
        while let Some(Ok((k, n))) = counts.join_next().await {
            connections[k] = n.map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX));
        }
        Ok(Response::new(pb::ListInstancesReply {
            instances: instances
                .iter()
                .zip(connections)
                .map(|(i, n)| pb_instance(i, e.store.instance_data(&i.id).display().to_string(), n))
                .collect(),
        }))
    }

    async fn get_instance(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::Instance>, Status> {
        self.check(&req)?;
        let i = self.engine.ready_instance(&req.into_inner().id).await?;
        let data = self.engine.store.instance_data(&i.id).display().to_string();
        let n = self.engine.connection_count(&i).await;
        let n = n.map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX));
        Ok(Response::new(pb_instance(&i, data, n)))
    }

    async fn delete_instance(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        self.check(&req)?;
        let r = req.into_inner();
        let items = self
            .engine
            .delete_instance(&r.id, r.force, r.dry_run)
            .await?;
        Ok(Response::new(pb_removals(items, r.dry_run)))
    }

    type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecOutput, Status>> + Send>>;

    async fn exec(
        &self,
        req: Request<pb::ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        use pb::exec_output::Output;
        self.check(&req)?;
        let r = req.into_inner();
        let input = ExecInput {
            instance: r.instance_id,
            tool: r.tool,
            args: r.args,
            cwd: r.cwd.into(),
            stdin: r.stdin,
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = tokio_util::sync::CancellationToken::new();
        // A client that goes away cancels its run.
        let closed = tx.clone();
        let on_close = cancel.clone();
        tokio::spawn(async move {
            closed.closed().await;
            on_close.cancel();
        });
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let out = tx.clone();
            let mut on_output = move |stream: OutputStream, bytes: &[u8]| {
                let output = match stream {
                    OutputStream::Stdout => Output::Stdout(bytes.to_vec()),
                    OutputStream::Stderr => Output::Stderr(bytes.to_vec()),
                };
                let _ = out.send(Ok(pb::ExecOutput {
                    output: Some(output),
                }));
            };
            let last = match engine.exec(input, &mut on_output, &cancel).await {
                Ok(code) => Ok(pb::ExecOutput {
                    output: Some(Output::ExitCode(code)),
                }),
                Err(e) => Err(Status::from(e)),
            };
            let _ = tx.send(last);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn register_project(
        &self,
        req: Request<pb::ProjectRef>,
    ) -> Result<Response<pb::ProjectStatus>, Status> {
        self.check(&req)?;
        let r = req.into_inner();
        let path = std::path::PathBuf::from(&r.path);
        let view = if r.stop {
            self.projects.unregister(&path).await?
        } else {
            self.projects.register(&path).await?.borrow().clone()
        };
        Ok(Response::new(pb_project(&view)))
    }

    type WatchProjectStream = Pin<Box<dyn Stream<Item = Result<pb::ProjectStatus, Status>> + Send>>;

    async fn watch_project(
        &self,
        req: Request<pb::ProjectRef>,
    ) -> Result<Response<Self::WatchProjectStream>, Status> {
        self.check(&req)?;
        let path = std::path::PathBuf::from(req.into_inner().path);
        let rx = self.projects.register(&path).await?;
        // The current status first, then every change; the stream ends when
        // the workspace is no longer watched or the daemon shuts down.
        let (tx, out) = tokio::sync::mpsc::channel(16);
        let closing = self.closing.clone();
        tokio::spawn(async move {
            let mut rx = rx;
            loop {
                let view = pb_project(&rx.borrow_and_update());
                if tx.send(Ok(view)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    () = closing.cancelled() => return,
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn pin(&self, req: Request<pb::PinRequest>) -> Result<Response<pb::PinReply>, Status> {
        self.check(&req)?;
        let (state, alias) = pin_request(req.get_ref());
        let target = self.engine.pin(state, alias)?;
        Ok(Response::new(pb_pin(&target, true, crate::model::now_ms())))
    }

    async fn unpin(&self, req: Request<pb::PinRequest>) -> Result<Response<pb::PinReply>, Status> {
        self.check(&req)?;
        let (state, alias) = pin_request(req.get_ref());
        let (target, existed) = self.engine.unpin(state, alias)?;
        Ok(Response::new(pb_pin(&target, existed, 0)))
    }

    async fn list_pins(
        &self,
        req: Request<pb::ListPinsRequest>,
    ) -> Result<Response<pb::ListPinsReply>, Status> {
        self.check(&req)?;
        let pins = self.engine.pins()?;
        Ok(Response::new(pb::ListPinsReply {
            pins: pins
                .iter()
                .map(|p| pb_pin(&p.target, true, p.created_at_ms))
                .collect(),
        }))
    }

    async fn shutdown(
        &self,
        req: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownReply>, Status> {
        self.check(&req)?;
        let _ = self.shutdown.send(true);
        Ok(Response::new(pb::ShutdownReply {}))
    }
}

impl Service {
    fn resolve_job(&self, prefix: &str) -> Result<String, Status> {
        let jobs = self.engine.index.jobs().map_err(Status::from)?;
        Ok(Engine::resolve(
            "job",
            prefix,
            jobs.iter().map(|j| j.id.as_str()),
        )?)
    }
}

//! `prepare:lb` and `plan:lb` in the engine: one state per Liquibase changeset.
//!
//! Planning reads the changelog closure (no JVM) and looks its digest up in
//! the index's stored plans; only a closure never planned before (or a new
//! Liquibase launcher) makes the engine start a scratch server on the empty
//! base state and ask Liquibase (`update-sql`) which changesets `update`
//! would run. A cache hit therefore never starts a JVM.
//!
//! Building runs `update-count --count 1` per changeset on the build server,
//! over JDBC to its loopback port (native, or a container's published port),
//! from the closure materialised out of the blob store, then checks
//! DATABASECHANGELOG: the applied rows must be exactly the plan's prefix, or
//! nothing is cached and the stored plan is dropped so the next run replans.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{ChainStep, Engine, EngineError, Stop, io_err};
use crate::ids::{FieldHasher, Fingerprint, StateId};
use crate::jobs::LiveJob;
use crate::liquibase::{self, Closure, Jdbc, LbArgs, LbError, Liquibase, PlannedChangeset};
use crate::model::{InstanceStatus, JobFailure};
use crate::runtime::{Runtime, ServerHandle, generate_password};
use crate::runtimes::Selected;

/// What the changeset steps of one Liquibase chain share.
pub(super) struct LbChain {
    pub args: LbArgs,
    pub closure: Closure,
    /// The changesets `update` runs, in order: step k applies `plan[k]`.
    pub plan: Vec<PlannedChangeset>,
    /// The index key of the stored plan.
    pub key: String,
}

/// One changeset as a chain step.
pub(super) struct ChangesetStep {
    /// `file::id::author`, Liquibase's name for it.
    pub summary: String,
    /// The user's changelog that defines it.
    pub inputs: Vec<String>,
}

/// Liquibase as this daemon finds it: located on every request (cheap), asked
/// for its version (a JVM start) only when the launcher changed.
pub struct LbTool {
    configured: Option<PathBuf>,
    /// Where Liquibase's JVM keeps its class-data archive.
    class_cache: PathBuf,
    found: tokio::sync::Mutex<Option<(Launcher, Liquibase)>>,
}

/// A launcher path with its size and modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Launcher {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl LbTool {
    pub fn new(configured: Option<PathBuf>, class_cache: PathBuf) -> Self {
        LbTool {
            configured,
            class_cache,
            found: tokio::sync::Mutex::new(None),
        }
    }

    fn launcher(&self) -> Result<Launcher, LbError> {
        let path = liquibase::locate(self.configured.as_deref())?;
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        let meta = std::fs::metadata(&path).ok();
        Ok(Launcher {
            len: meta.as_ref().map_or(0, |m| m.len()),
            modified: meta.and_then(|m| m.modified().ok()),
            path,
        })
    }

    /// The Liquibase to run, with its version and Java.
    pub async fn get(&self) -> Result<Liquibase, LbError> {
        let launcher = self.launcher()?;
        let mut found = self.found.lock().await;
        if let Some((l, tool)) = found.as_ref()
            && *l == launcher
        {
            return Ok(tool.clone());
        }
        let path = launcher.path.clone();
        let tool = tokio::task::spawn_blocking(move || liquibase::discover(Some(&path)))
            .await
            .expect("Liquibase discovery panicked")?
            .with_class_cache(&self.class_cache);
        *found = Some((launcher, tool.clone()));
        Ok(tool)
    }

    /// The key of a stored plan: the closure (files, options) and the
    /// launcher that planned it.
    fn plan_key(&self, closure: &Closure) -> Result<String, LbError> {
        let launcher = self.launcher()?;
        let mut h = FieldHasher::new("lb-plan");
        h.field(&closure.digest().0)
            .field(launcher.path.as_os_str().as_encoded_bytes())
            .field(&launcher.len.to_le_bytes());
        let nanos = launcher
            .modified
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.field(&nanos.to_le_bytes());
        Ok(format!("lb-{}", h.finish().to_hex()))
    }
}

impl Engine {
    /// The steps of a `prepare:lb` request, their fingerprints, and what
    /// they share.
    pub(super) async fn lb_steps(
        self: &Arc<Self>,
        rt: &Selected,
        base: &StateId,
        input: &super::PrepareInput,
        ingest: bool,
        cancel: &CancellationToken,
    ) -> Result<(Vec<ChainStep>, Vec<Fingerprint>, LbChain), EngineError> {
        let args = liquibase::parse_args(&input.args)?;
        let closure = {
            let (args, cwd) = (args.clone(), input.cwd.clone());
            tokio::task::spawn_blocking(move || liquibase::closure(&args, &cwd))
                .await
                .expect("changelog reader panicked")?
        };
        let key = self.liquibase.plan_key(&closure)?;
        let stored = self.index.plan::<Vec<PlannedChangeset>>(&key)?;
        // Liquibase plans from the stored copies too: what is hashed is what runs.
        let closure = if ingest || stored.is_none() {
            let this = self.clone();
            tokio::task::spawn_blocking(move || closure.ingest(&this.blobs).map(|()| closure))
                .await
                .expect("changelog ingest panicked")?
        } else {
            closure
        };
        let plan = match stored {
            Some(plan) => plan,
            None => {
                let plan = self.lb_plan(rt, base, &args, &closure, cancel).await?;
                self.index.put_plan(&key, &plan)?;
                plan
            }
        };
        closure.check_plan(&plan)?;
        if plan.is_empty() {
            return Err(EngineError::InvalidRequest(format!(
                "Liquibase update would run no changeset of {} (with these contexts and labels): nothing to prepare",
                args.changelog_file
            )));
        }
        let mut steps = Vec::with_capacity(plan.len());
        let mut fingerprints = Vec::with_capacity(plan.len());
        for c in &plan {
            fingerprints.push(liquibase::fingerprint(c, &args, &closure));
            let inputs = closure
                .files
                .iter()
                .filter(|f| f.name == c.filename)
                .map(|f| f.path.display().to_string())
                .collect();
            steps.push(ChainStep::Changeset(ChangesetStep {
                summary: c.label(),
                inputs,
            }));
        }
        // Files no changeset is in (changelogs that only include others, the
        // files their changes read) are the last step's too: a change to
        // them may change any step, and watchers must see them.
        let listed: std::collections::HashSet<String> = steps
            .iter()
            .flat_map(|s| match s {
                ChainStep::Changeset(c) => c.inputs.clone(),
                ChainStep::Psql(_) => Vec::new(),
            })
            .collect();
        let rest: Vec<String> = closure
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .filter(|p| !listed.contains(p))
            .collect();
        if let Some(ChainStep::Changeset(last)) = steps.last_mut() {
            for p in rest {
                if !last.inputs.contains(&p) {
                    last.inputs.push(p);
                }
            }
        }
        Ok((
            steps,
            fingerprints,
            LbChain {
                args,
                closure,
                plan,
                key,
            },
        ))
    }

    /// Asks Liquibase which changesets `update` runs, on a scratch server of
    /// the empty base state (removed afterwards).
    async fn lb_plan(
        &self,
        rt: &Selected,
        base: &StateId,
        args: &LbArgs,
        closure: &Closure,
        cancel: &CancellationToken,
    ) -> Result<Vec<PlannedChangeset>, EngineError> {
        let tool = self.liquibase.get().await?;
        self.ensure_base(rt, base).await?;
        let runtime = rt.runtime.as_ref();
        let mut record = Self::new_record(rt, &base.to_hex(), "", InstanceStatus::Building);
        self.index.put_instance(&record)?;
        let exec = self.store.exec_dir(&format!("lb-plan-{}", record.id));
        let result = async {
            let server = self.clone_and_start(rt, &record).await?;
            record.server = Some(server.clone());
            self.index.put_instance(&record)?;
            let jdbc = self.jdbc(runtime, &server).await?;
            let search = self.materialize_closure(closure, &exec)?;
            Ok::<_, EngineError>(tool.plan(&jdbc, &search, args, cancel).await?)
        }
        .await;
        self.discard_instance(&record).await;
        let _ = std::fs::remove_dir_all(&exec);
        result
    }

    /// A fresh password on `server` and the JDBC target Liquibase uses.
    async fn jdbc(
        &self,
        runtime: &dyn Runtime,
        server: &ServerHandle,
    ) -> Result<Jdbc, EngineError> {
        let password = generate_password();
        runtime.set_password(server, &password).await?;
        Ok(Jdbc::loopback(server.port, &password))
    }

    /// The closure, from the blob store, laid out under `root` (once per
    /// folder); returns the folder to give Liquibase as its search path.
    fn materialize_closure(&self, closure: &Closure, root: &Path) -> Result<PathBuf, EngineError> {
        let search = closure.search_root(root);
        if search.join(&closure.changelog).is_file() {
            return Ok(search);
        }
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        Ok(liquibase::materialize_from_blobs(
            closure,
            &self.blobs,
            root,
        )?)
    }

    /// Applies changeset `k` of a Liquibase chain on the build server and
    /// proves that DATABASECHANGELOG now holds exactly the plan's first k+1.
    pub(super) async fn run_changeset(
        &self,
        job: &LiveJob,
        chain: &super::Chain,
        runtime: &dyn Runtime,
        server: &ServerHandle,
        exec_root: &Path,
        k: usize,
    ) -> Result<(), Stop> {
        let lb = chain
            .lb
            .as_ref()
            .expect("a changeset step belongs to a Liquibase chain");
        let tool = self.liquibase.get().await.map_err(EngineError::from)?;
        let search = self.materialize_closure(&lb.closure, exec_root)?;
        let jdbc = self.jdbc(runtime, server).await?;
        let started = Instant::now();
        let planned = &lb.plan[k];
        match tool.update_one(&jdbc, &search, &lb.args, &job.cancel).await {
            Ok(_) => {}
            Err(_) if job.cancel.is_cancelled() => return Err(Stop::Cancelled),
            Err(LbError::Cancelled) => return Err(Stop::Cancelled),
            Err(e) => return Err(Stop::Failed(failure(&e, Some(lb), Some(k)))),
        }
        tracing::debug!(
            changeset = %planned.label(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "changeset applied"
        );
        let rows = liquibase::applied(&jdbc, &lb.args)
            .await
            .map_err(EngineError::from)?;
        if let Err(e) = liquibase::check_applied(&rows, &lb.plan[..=k]) {
            // The stored plan no longer describes what Liquibase runs.
            let _ = self.index.delete_plan(&lb.key);
            let mut f = failure(&e, Some(lb), Some(k));
            f.reason = "liquibase_mismatch".into();
            return Err(Stop::Failed(f));
        }
        Ok(())
    }
}

/// A job failure for a Liquibase error: the changelog file (and line) at
/// fault, or the changelog defining the failing changeset.
pub(super) fn failure(e: &LbError, lb: Option<&LbChain>, step: Option<usize>) -> JobFailure {
    let (mut file, line) = match e.location() {
        Some((f, l)) => (Some(f.display().to_string()), l),
        None => (None, None),
    };
    if file.is_none()
        && let (Some(lb), Some(k)) = (lb, step)
    {
        let name = &lb.plan[k].filename;
        file = lb
            .closure
            .files
            .iter()
            .find(|f| &f.name == name)
            .map(|f| f.path.display().to_string());
    }
    let reason = match e {
        LbError::Failed { .. } => "liquibase_error",
        _ if e.location().is_some() => "plan_error",
        _ => "liquibase_error",
    };
    JobFailure {
        reason: reason.into(),
        message: e.to_string(),
        file,
        line,
        step: step.map(|k| k as u32 + 1),
    }
}

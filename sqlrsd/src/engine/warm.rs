//! Instances before and after they are asked for: the warm pool (servers
//! started ahead for hot states and handed out by a cache-hit prepare),
//! stable names, time to live, the prebuild of watched aliases, and the
//! periodic upkeep that ties them together.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError, PrepareInput, Stop};
use crate::jobs::LiveJob;
use crate::model::{InstanceRecord, InstanceStatus, PlanView, now_ms, random_id};
use crate::pool::Target;
use crate::runtime::generate_password;
use crate::runtime::memory;
use crate::runtimes::Selected;

/// What a prepare job ends with.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// An instance for the client.
    Instance(HandOut),
    /// Only the states: a background prebuild for a watched alias (its
    /// file), which then keeps the head warm.
    Prebuild { owner: String },
}

/// How an instance is handed out.
#[derive(Debug, Clone, Default)]
pub struct HandOut {
    /// Stable name: asking again returns the same instance while its state
    /// is current.
    pub name: Option<String>,
    /// Keep the previously named instance when the chain changed.
    pub keep: bool,
    /// Time to live; None: the configured default.
    pub ttl: Option<Duration>,
}

/// A watched alias, planned.
pub struct AliasRefresh {
    pub plan: PlanView,
    /// The prebuild started for it, when its head was not cached.
    pub job: Option<Arc<LiveJob>>,
}

/// How often the pool and the instances' time to live are looked after.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Every how many upkeeps the warm servers' memory is measured again:
/// reading a server's page tables costs the CPU a prepare would use.
const MEASURE_EVERY: u32 = 15;

/// Names are short words: letters, digits, `_`, `-`, `.`.
pub fn check_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::InvalidRequest(format!(
            "instance name {name:?} is not valid: use up to 63 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )))
    }
}

pub(super) fn target_of(rt: &Selected) -> Target {
    Target {
        runtime: rt.runtime.info().kind.into(),
        image: rt.image.clone(),
    }
}

impl Engine {
    /// The instance bound to `name`, if any.
    pub(super) fn named(&self, name: &str) -> Result<Option<InstanceRecord>, EngineError> {
        Ok(self
            .index
            .instances()?
            .into_iter()
            .find(|i| i.name.as_deref() == Some(name)))
    }

    pub(super) fn name_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.name_locks
            .lock()
            .expect("name locks")
            .entry(name.into())
            .or_default()
            .clone()
    }

    pub(super) fn forget_name_lock(&self, name: &str) {
        let mut locks = self.name_locks.lock().expect("name locks");
        if locks.get(name).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(name);
        }
    }

    /// When an instance handed out now expires.
    fn expiry(&self, ttl: Option<Duration>) -> u64 {
        ttl.or(self.default_ttl)
            .filter(|t| !t.is_zero())
            .map_or(0, |t| now_ms() + t.as_millis() as u64)
    }

    /// The named instance of `head` when there is a current one: it is
    /// handed out again (its server restarted if it went away).
    pub(super) async fn reuse_named(
        &self,
        head: &str,
        how: &HandOut,
    ) -> Result<Option<InstanceRecord>, EngineError> {
        let Some(name) = &how.name else {
            return Ok(None);
        };
        let Some(existing) = self.named(name)? else {
            return Ok(None);
        };
        if existing.state_id != head || existing.status == InstanceStatus::Building {
            return Ok(None);
        }
        let mut inst = self.ready_instance(&existing.id).await?;
        let expires = self.expiry(how.ttl);
        if expires != inst.expires_at_ms {
            inst.expires_at_ms = expires;
            self.index.put_instance(&inst)?;
        }
        self.index.touch_state(head, now_ms())?;
        Ok(Some(inst))
    }

    /// Gives a new instance its name and expiry: the instance that had the
    /// name loses it (kept with `keep`, else removed).
    pub(super) async fn bind(
        &self,
        inst: &mut InstanceRecord,
        how: &HandOut,
    ) -> Result<(), EngineError> {
        let expires = self.expiry(how.ttl);
        if how.name.is_none() && expires == inst.expires_at_ms {
            return Ok(());
        }
        if let Some(name) = &how.name
            && let Some(mut old) = self.named(name)?
            && old.id != inst.id
        {
            if how.keep {
                old.name = None;
                self.index.put_instance(&old)?;
            } else {
                tracing::info!(instance = %old.id, name, "replaced by {}", inst.id);
                self.discard_instance(&old).await;
            }
        }
        inst.name = how.name.clone();
        inst.expires_at_ms = expires;
        self.index.put_instance(inst)?;
        Ok(())
    }

    /// A cache hit: a warm instance of `state` when one is ready, else a
    /// newly started one; either way the pool is topped up again.
    pub(super) async fn deliver(
        self: &Arc<Self>,
        rt: &Selected,
        state: &str,
        job_id: &str,
    ) -> Result<InstanceRecord, Stop> {
        let target = target_of(rt);
        self.pool.used(state, &target);
        let inst = match self.claim_warm(state, job_id).await {
            Some(inst) => {
                self.pool.count(true);
                inst
            }
            None => {
                self.pool.count(false);
                self.start_instance(rt, state, job_id).await?
            }
        };
        self.replenish(state);
        Ok(inst)
    }

    /// Takes a ready warm instance of `state` for job `job_id`.
    async fn claim_warm(&self, state: &str, job_id: &str) -> Option<InstanceRecord> {
        while let Some(id) = self.pool.take(state) {
            let Ok(Some(mut inst)) = self.index.instance(&id) else {
                continue;
            };
            if inst.status != InstanceStatus::Warm {
                continue;
            }
            let alive = self.server_alive(&inst).await;
            if !alive {
                tracing::warn!(instance = %inst.id, "a warm instance's server is gone; discarding it");
                self.discard_instance(&inst).await;
                continue;
            }
            inst.status = InstanceStatus::Running;
            inst.job_id = job_id.into();
            inst.from_pool = true;
            inst.created_at_ms = now_ms();
            if let Err(e) = self.index.put_instance(&inst) {
                tracing::warn!(instance = %inst.id, "cannot hand out a warm instance: {e}");
                self.discard_instance(&inst).await;
                continue;
            }
            let _ = self.index.touch_state(state, now_ms());
            return Some(inst);
        }
        None
    }

    /// Whether an instance's server (or container) still runs.
    async fn server_alive(&self, inst: &InstanceRecord) -> bool {
        match self.runtimes.for_instance(&inst.runtime, &inst.image).await {
            Ok(rt) => inst
                .server
                .as_ref()
                .is_some_and(|s| rt.runtime.is_running(s)),
            Err(_) => false,
        }
    }

    /// Starts warm instances of `state` in the background while the pool
    /// wants more of it.
    pub(super) fn replenish(self: &Arc<Self>, state: &str) {
        let Some(target) = self.pool.reserve(state) else {
            return;
        };
        let this = self.clone();
        let state = state.to_owned();
        tokio::spawn(async move {
            let mut target = Some(target);
            while let Some(t) = target {
                match this.start_warm(&state, &t).await {
                    Ok(inst) => {
                        let pid = inst.server.as_ref().map(|s| s.pid);
                        this.pool.started(&state, Some(inst.id.clone()));
                        if let Some(bytes) = pid.and_then(memory::process_tree_bytes) {
                            this.pool.set_memory(&inst.id, bytes);
                        }
                    }
                    Err(e) => {
                        this.pool.started(&state, None);
                        tracing::warn!(state = %state, "cannot start a warm instance: {e}");
                        return;
                    }
                }
                target = this.pool.reserve(&state);
            }
        });
    }

    async fn start_warm(
        &self,
        state: &str,
        target: &Target,
    ) -> Result<InstanceRecord, EngineError> {
        let _lease = self.cache.lease([state.to_owned()]);
        if !self.is_cached_hex(state)? {
            return Err(EngineError::NotFound {
                what: "state",
                id: state.into(),
            });
        }
        let rt = self
            .runtimes
            .for_instance(&target.runtime, &target.image)
            .await?;
        let mut record = Self::new_record(&rt, state, "", InstanceStatus::Warm);
        self.index.put_instance(&record)?;
        let result = async {
            let server = self.clone_and_start(&rt, &record).await?;
            crate::failpoint::hit("warm_start");
            record.started_at_ms = now_ms();
            let password = generate_password();
            rt.runtime.set_password(&server, &password).await?;
            record.dsn = rt.runtime.dsn(&server, &password);
            record.password = password;
            record.server = Some(server);
            self.index.put_instance(&record)?;
            Ok(())
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

    /// A new instance record of `state`; nothing started yet.
    pub(super) fn new_record(
        rt: &Selected,
        state: &str,
        job_id: &str,
        status: InstanceStatus,
    ) -> InstanceRecord {
        InstanceRecord {
            id: random_id(),
            state_id: state.into(),
            status,
            server: None,
            password: String::new(),
            dsn: String::new(),
            created_at_ms: now_ms(),
            job_id: job_id.into(),
            runtime: rt.runtime.info().kind.into(),
            image: rt.image.clone(),
            name: None,
            expires_at_ms: 0,
            from_pool: false,
            started_at_ms: 0,
            note: None,
        }
    }

    /// Plans a watched alias; keeps its head warm when it is cached, and
    /// otherwise (with `build`) starts a background prebuild of it.
    pub async fn refresh_alias(
        self: &Arc<Self>,
        alias_path: &Path,
        build: bool,
    ) -> Result<AliasRefresh, EngineError> {
        let input = PrepareInput {
            kind: String::new(),
            args: Vec::new(),
            cwd: alias_path
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| "/".into()),
            stdin: None,
            alias_path: Some(alias_path.to_owned()),
            image: None,
        };
        let chain = self
            .chain(input.clone(), false, &CancellationToken::new())
            .await?;
        let plan = self.plan_view(&chain)?;
        let owner = alias_path.display().to_string();
        let head = chain.ids.last().expect("a plan has steps").to_hex();
        if plan.steps.last().is_some_and(|s| s.cached) {
            self.pool
                .set_owner(&owner, Some((&head, &target_of(&chain.rt))));
            self.replenish(&head);
            return Ok(AliasRefresh { plan, job: None });
        }
        self.pool.set_owner(&owner, None);
        if !build {
            return Ok(AliasRefresh { plan, job: None });
        }
        let summary = format!("prebuild {}", alias_path.display());
        let job = self.jobs.create("prebuild", summary)?;
        tokio::spawn(
            self.clone()
                .run_prepare(job.clone(), input, Delivery::Prebuild { owner }),
        );
        Ok(AliasRefresh {
            plan,
            job: Some(job),
        })
    }

    /// The aliases of a workspace no longer keep states warm.
    pub fn forget_project(&self, root: &str) {
        let prefix = format!("{}/", root.trim_end_matches('/'));
        self.pool.forget_owners_under(&prefix);
    }

    /// A prebuild finished: its alias keeps the head warm.
    pub(super) fn keep_warm(self: &Arc<Self>, owner: &str, rt: &Selected, head: &str) {
        self.pool.set_owner(owner, Some((head, &target_of(rt))));
        self.replenish(head);
    }

    /// Looks after the pool and the instances' time to live until `stop`.
    pub async fn upkeep(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cache_checked = std::time::Instant::now();
        for round in 0u32.. {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            self.upkeep_once(round % MEASURE_EVERY == 0).await;
            if cache_checked.elapsed() >= self.cache.check_interval {
                cache_checked = std::time::Instant::now();
                if let Err(e) = self.evict("periodically").await {
                    tracing::warn!("periodic cache check failed: {e}");
                }
            }
        }
    }

    async fn upkeep_once(self: &Arc<Self>, measure: bool) {
        let Ok(instances) = self.index.instances() else {
            return;
        };
        // Warm instances no longer wanted, dead, or of a removed state.
        for id in self.pool.sweep() {
            if let Some(inst) = instances.iter().find(|i| i.id == id) {
                self.discard_instance(inst).await;
            }
        }
        for inst in instances
            .iter()
            .filter(|i| i.status == InstanceStatus::Warm)
        {
            if !self.pool.warm_ids().contains(&inst.id) {
                // Being started, or already discarded.
                continue;
            }
            let pid = inst.server.as_ref().map(|s| s.pid);
            let alive = self.server_alive(inst).await;
            if !alive || !self.is_cached_hex(&inst.state_id).unwrap_or(false) {
                self.discard_instance(inst).await;
                continue;
            }
            if measure && let Some(bytes) = pid.and_then(memory::process_tree_bytes) {
                self.pool.set_memory(&inst.id, bytes);
            }
        }
        for state in self.pool.hot_states() {
            if self.is_cached_hex(&state).unwrap_or(false) {
                self.replenish(&state);
            }
        }
        self.expire(&instances).await;
    }

    /// Removes instances past their time to live that nobody is connected to.
    async fn expire(&self, instances: &[InstanceRecord]) {
        let expired = |i: &InstanceRecord| {
            i.status == InstanceStatus::Running
                && i.expires_at_ms != 0
                && i.expires_at_ms <= now_ms()
        };
        for seen in instances.iter().filter(|i| expired(i)) {
            // A prepare handing the named instance out again extends its
            // time to live under the name lock: decide under it too, on the
            // record as it is now.
            let lock = seen.name.as_deref().map(|n| self.name_lock(n));
            let guard = match &lock {
                Some(lock) => Some(lock.lock().await),
                None => None,
            };
            let current = self.index.instance(&seen.id).ok().flatten();
            if let Some(inst) = current.filter(|i| expired(i)) {
                // Unknown counts as in use: try again at the next upkeep.
                let connections = self.connection_count(&inst).await.unwrap_or(1);
                if connections == 0 {
                    tracing::info!(instance = %inst.id, "time to live is over; removing it");
                    self.discard_instance(&inst).await;
                }
            }
            drop(guard);
            if let Some(name) = &seen.name {
                drop(lock);
                self.forget_name_lock(name);
            }
        }
    }

    /// Stops every warm instance (at shutdown: they are cheap to start again).
    pub async fn drain_pool(&self) {
        // Starts under way finish first: a server started on a folder being
        // removed would outlive the daemon.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.pool.close() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Ok(instances) = self.index.instances() else {
            return;
        };
        for inst in instances
            .iter()
            .filter(|i| i.status == InstanceStatus::Warm)
        {
            self.discard_instance(inst).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        for ok in ["dev", "feature-1", "a.b_c", "9lives"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".hidden", "a b", "ü", &"x".repeat(64)] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("is not valid"), "{bad}: {err}");
        }
    }
}

//! The cache's bounds on the engine: the extents of every state (measured
//! once: states never change), leases on the states running jobs use, pins,
//! and eviction before each build step, after each snapshot and
//! periodically. The policy itself is in [`crate::cache`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Engine, EngineError, PrepareInput, Stop, dir_size, io_err};
use crate::cache::{self, Entry, Limits, Pressure, Protection};
use crate::model::{InstanceStatus, JobFailure, PinRecord, PinTarget, StateRecord, now_ms};
use crate::snapshot::extents::Extents;

/// What one eviction removed, for `sqlrs status --cache`.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionReport {
    pub at_ms: u64,
    /// What started it: `before a build step`, `after a snapshot`, `periodic`.
    pub trigger: String,
    /// Removed states with the bytes each freed.
    pub removed: Vec<(String, u64)>,
    pub freed_bytes: u64,
    /// Pressure left after it.
    pub pressure: Pressure,
}

/// How full the cache is now.
#[derive(Debug, Clone)]
pub struct CacheView {
    pub limits: Limits,
    /// States, shared blocks counted once.
    pub states_bytes: u64,
    /// Stored inputs.
    pub blobs_bytes: u64,
    /// Available on the store's filesystem.
    pub free_bytes: u64,
    pub pressure: Pressure,
    /// What eviction could free if it removed every state it may.
    pub reclaimable_bytes: u64,
    pub evictable_states: usize,
    pub last_eviction: Option<EvictionReport>,
    pub states: Vec<StateDetail>,
}

impl CacheView {
    pub fn used_bytes(&self) -> u64 {
        self.states_bytes + self.blobs_bytes
    }
}

/// One state as the cache sees it.
#[derive(Debug, Clone)]
pub struct StateDetail {
    pub id: String,
    /// Bytes its files occupy on disk, blocks shared with others included.
    pub own_bytes: u64,
    /// Bytes no other state shares: what removing it frees.
    pub exclusive_bytes: u64,
    /// Why eviction leaves it alone (a state with children is left alone
    /// too, until they are gone); None: evictable.
    pub protected: Option<String>,
    pub pinned: bool,
    /// Rebuild value per byte; lower goes first.
    pub value: f64,
}

/// The engine's cache bookkeeping.
pub struct CacheState {
    pub limits: Limits,
    pub check_interval: Duration,
    extents: Mutex<HashMap<String, Arc<Extents>>>,
    /// States running jobs use, with how many hold each.
    leases: Mutex<HashMap<String, usize>>,
    last: Mutex<Option<EvictionReport>>,
    /// One eviction at a time.
    evicting: tokio::sync::Mutex<()>,
}

impl CacheState {
    pub fn new(limits: Limits, check_interval: Duration) -> Self {
        Self {
            limits,
            check_interval,
            extents: Mutex::default(),
            leases: Mutex::default(),
            last: Mutex::default(),
            evicting: tokio::sync::Mutex::new(()),
        }
    }

    /// Keeps `ids` from eviction until the lease is dropped. Taken before a
    /// job looks at what is cached, so a state it found stays.
    pub fn lease(&self, ids: impl IntoIterator<Item = String>) -> Lease<'_> {
        let ids: Vec<String> = ids.into_iter().collect();
        let mut leases = self.leases.lock().expect("leases");
        for id in &ids {
            *leases.entry(id.clone()).or_default() += 1;
        }
        Lease { cache: self, ids }
    }

    fn leased(&self) -> HashSet<String> {
        self.leases
            .lock()
            .expect("leases")
            .keys()
            .cloned()
            .collect()
    }
}

/// States kept from eviction while a job uses them.
pub struct Lease<'a> {
    cache: &'a CacheState,
    ids: Vec<String>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut leases = self.cache.leases.lock().expect("leases");
        for id in &self.ids {
            if let Some(n) = leases.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    leases.remove(id);
                }
            }
        }
    }
}

/// The states of the store as eviction sees them, and the store's usage.
struct Measured {
    entries: Vec<Entry>,
    records: Vec<StateRecord>,
    pinned: HashSet<String>,
    blobs_bytes: u64,
    free_bytes: u64,
}

/// Bytes available to the daemon on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Result<u64, EngineError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        EngineError::InvalidRequest(format!("{} contains a NUL byte", path.display()))
    })?;
    let mut buf = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c is NUL-terminated and buf is large enough for statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), buf.as_mut_ptr()) } != 0 {
        return Err(io_err(path)(std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs succeeded, so it filled buf.
    let buf = unsafe { buf.assume_init() };
    // The field types differ between architectures.
    #[allow(clippy::unnecessary_cast)]
    Ok(buf.f_bavail as u64 * buf.f_frsize as u64)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

impl Engine {
    /// Pins a state (by id or prefix) or an alias file; returns the target.
    pub fn pin(&self, state: Option<&str>, alias: Option<&Path>) -> Result<PinTarget, EngineError> {
        let target = self.pin_target(state, alias)?;
        self.index.put_pin(&PinRecord {
            target: target.clone(),
            created_at_ms: now_ms(),
        })?;
        Ok(target)
    }

    /// Removes a pin; false when there was none.
    pub fn unpin(
        &self,
        state: Option<&str>,
        alias: Option<&Path>,
    ) -> Result<(PinTarget, bool), EngineError> {
        let target = match (state, alias) {
            // A pin may outlive its state's id being resolvable.
            (Some(prefix), None) => {
                let pins = self.index.pins()?;
                let ids: Vec<&str> = pins
                    .iter()
                    .filter_map(|p| match &p.target {
                        PinTarget::State(id) => Some(id.as_str()),
                        PinTarget::Alias(_) => None,
                    })
                    .collect();
                match Self::resolve("pinned state", prefix, ids) {
                    Ok(id) => PinTarget::State(id),
                    Err(EngineError::NotFound { .. }) => self.pin_target(state, alias)?,
                    Err(e) => return Err(e),
                }
            }
            _ => self.pin_target(state, alias)?,
        };
        let existed = self.index.delete_pin(&target)?;
        Ok((target, existed))
    }

    fn pin_target(
        &self,
        state: Option<&str>,
        alias: Option<&Path>,
    ) -> Result<PinTarget, EngineError> {
        match (state, alias) {
            (Some(prefix), None) => {
                let states = self.index.states()?;
                let id = Self::resolve("state", prefix, states.iter().map(|s| s.id.as_str()))?;
                Ok(PinTarget::State(id))
            }
            (None, Some(path)) => {
                if !path.is_absolute() {
                    return Err(EngineError::InvalidRequest(format!(
                        "alias path {} is not absolute",
                        path.display()
                    )));
                }
                sqlrs_proto::alias::load(path)
                    .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
                Ok(PinTarget::Alias(path.display().to_string()))
            }
            _ => Err(EngineError::InvalidRequest(
                "pin names either a state or an alias file".into(),
            )),
        }
    }

    pub fn pins(&self) -> Result<Vec<PinRecord>, EngineError> {
        Ok(self.index.pins()?)
    }

    /// Extents of every state, measuring those not seen before.
    async fn extents_of(
        &self,
        records: &[StateRecord],
    ) -> Result<HashMap<String, Arc<Extents>>, EngineError> {
        let known = self.cache.extents.lock().expect("extents").clone();
        let mut out = HashMap::with_capacity(records.len());
        for r in records {
            if let Some(e) = known.get(&r.id) {
                out.insert(r.id.clone(), e.clone());
                continue;
            }
            let path = self.store.state_path(&r.id);
            let measured = tokio::task::spawn_blocking(move || Extents::of_tree(&path))
                .await
                .expect("extent walk panicked");
            match measured {
                Ok(e) => {
                    let e = Arc::new(e);
                    self.cache
                        .extents
                        .lock()
                        .expect("extents")
                        .insert(r.id.clone(), e.clone());
                    out.insert(r.id.clone(), e);
                }
                // Removed meanwhile: it holds nothing.
                Err(_) if !self.store.state_path(&r.id).exists() => {
                    out.insert(r.id.clone(), Arc::default());
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Forget states that are gone.
        let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        self.cache
            .extents
            .lock()
            .expect("extents")
            .retain(|id, _| ids.contains(id.as_str()));
        Ok(out)
    }

    /// Heads of pinned aliases, planned now (an alias that cannot be
    /// planned protects nothing until it can).
    async fn pinned_alias_heads(self: &Arc<Self>, pins: &[PinRecord]) -> HashMap<String, String> {
        let mut heads = HashMap::new();
        for p in pins {
            let PinTarget::Alias(path) = &p.target else {
                continue;
            };
            let input = PrepareInput {
                kind: String::new(),
                args: Vec::new(),
                cwd: Path::new(path).parent().unwrap_or(Path::new("/")).into(),
                stdin: None,
                alias_path: Some(path.into()),
                image: None,
            };
            match self.plan(input).await {
                Ok(plan) => {
                    if let Some(last) = plan.steps.last() {
                        heads.insert(last.state_id.clone(), path.clone());
                    }
                }
                Err(e) => tracing::debug!("pinned alias {path} cannot be planned: {e}"),
            }
        }
        heads
    }

    async fn measure(self: &Arc<Self>) -> Result<Measured, EngineError> {
        let records = self.index.states()?;
        let extents = self.extents_of(&records).await?;
        let pins = self.index.pins()?;
        let alias_heads = self.pinned_alias_heads(&pins).await;
        let pinned: HashSet<String> = pins
            .iter()
            .filter_map(|p| match &p.target {
                PinTarget::State(id) => Some(id.clone()),
                PinTarget::Alias(_) => None,
            })
            .collect();
        let watched = self.pool.owned_heads();
        let leased = self.cache.leased();
        let mut instances: HashMap<String, usize> = HashMap::new();
        for i in self.index.instances()? {
            if i.status != InstanceStatus::Warm {
                *instances.entry(i.state_id).or_default() += 1;
            }
        }
        let now = now_ms();
        let min_age = self.cache.limits.min_age.as_millis() as u64;
        let entries = records
            .iter()
            .map(|r| {
                let protection = if pinned.contains(&r.id) {
                    Some(Protection::Pinned)
                } else if let Some(path) = alias_heads.get(&r.id) {
                    Some(Protection::PinnedAlias(path.clone()))
                } else if watched.contains(&r.id) {
                    Some(Protection::Watched)
                } else if let Some(n) = instances.get(&r.id) {
                    Some(Protection::Instances(*n))
                } else if leased.contains(&r.id) {
                    Some(Protection::InUse)
                } else if now.saturating_sub(r.created_at_ms) < min_age {
                    Some(Protection::Young)
                } else {
                    None
                };
                Entry {
                    id: r.id.clone(),
                    parent: r.parent.clone(),
                    last_used_at_ms: r.last_used_at_ms,
                    use_count: r.use_count,
                    build_ms: r.build_ms,
                    extents: extents.get(&r.id).cloned().unwrap_or_default(),
                    protection,
                }
            })
            .collect();
        let blobs = self.store.blobs_dir();
        let blobs_bytes = tokio::task::spawn_blocking(move || dir_size(&blobs))
            .await
            .expect("blob walk panicked");
        Ok(Measured {
            entries,
            records,
            pinned,
            blobs_bytes,
            free_bytes: free_bytes(&self.store.states_dir())?,
        })
    }

    /// The cache's usage, limits and every state's share, for `sqlrs
    /// status --cache` and `sqlrs ls --states --cache-details`.
    pub async fn cache_view(self: &Arc<Self>) -> Result<CacheView, EngineError> {
        let m = self.measure().await?;
        let limits = self.cache.limits;
        let now = now_ms();
        let all = cache::plan(&m.entries, &limits, m.blobs_bytes, m.free_bytes, now, true);
        let parents: HashSet<&str> = m
            .records
            .iter()
            .filter_map(|r| r.parent.as_deref())
            .collect();
        let states = m
            .entries
            .iter()
            .map(|e| {
                let exclusive = all.exclusive.get(&e.id).copied().unwrap_or(0);
                let protected = e.protection.as_ref().map(Protection::describe).or_else(|| {
                    parents
                        .contains(e.id.as_str())
                        .then(|| "has descendant states".to_string())
                });
                StateDetail {
                    id: e.id.clone(),
                    own_bytes: e.extents.bytes(),
                    exclusive_bytes: exclusive,
                    protected,
                    pinned: m.pinned.contains(&e.id),
                    value: cache::value_per_byte(e, exclusive, now),
                }
            })
            .collect();
        Ok(CacheView {
            limits,
            states_bytes: all.states_bytes,
            blobs_bytes: m.blobs_bytes,
            free_bytes: m.free_bytes,
            pressure: limits.pressure(all.states_bytes + m.blobs_bytes, m.free_bytes),
            reclaimable_bytes: all.victims.iter().map(|v| v.frees).sum(),
            evictable_states: all.victims.len(),
            last_eviction: self.cache.last.lock().expect("last eviction").clone(),
            states,
        })
    }

    /// Evicts states while the cache is above its high watermark or into
    /// the free-space reserve; returns the pressure left.
    pub async fn evict(self: &Arc<Self>, trigger: &str) -> Result<Pressure, EngineError> {
        let limits = self.cache.limits;
        // Without a byte limit only free space matters: one statvfs.
        if limits.max_bytes.is_none()
            && limits.pressure(0, free_bytes(&self.store.states_dir())?) == Pressure::Ok
        {
            return Ok(Pressure::Ok);
        }
        let _one = self.cache.evicting.lock().await;
        let mut m = self.measure().await?;
        let rough = |m: &Measured| {
            limits.pressure(
                m.entries.iter().map(|e| e.extents.bytes()).sum::<u64>() + m.blobs_bytes,
                m.free_bytes,
            )
        };
        // The sum over-counts shared blocks: an exact look only when it
        // may matter.
        if rough(&m) == Pressure::Ok {
            return Ok(Pressure::Ok);
        }
        // Stored inputs go first: the next plan that needs one stores it
        // again from the user's file.
        let leased = self.cache.leased();
        let blobs = self.blobs.clone();
        let min_age = limits.min_age;
        let (n, bytes) = tokio::task::spawn_blocking(move || {
            blobs.collect(min_age, |d| leased.contains(&super::blob_lease(d)))
        })
        .await
        .expect("blob collection panicked");
        if n > 0 {
            tracing::info!(blobs = n, freed = %mib(bytes), "collected stored inputs {trigger}");
            m = self.measure().await?;
            if rough(&m) == Pressure::Ok {
                return Ok(Pressure::Ok);
            }
        }
        let plan = cache::plan(
            &m.entries,
            &limits,
            m.blobs_bytes,
            m.free_bytes,
            now_ms(),
            false,
        );
        let used = plan.states_bytes + m.blobs_bytes;
        if limits.pressure(used, m.free_bytes) == Pressure::Ok {
            return Ok(Pressure::Ok);
        }
        let mut removed = Vec::new();
        for v in &plan.victims {
            match self.evict_state(&v.id).await {
                Ok(true) => removed.push((v.id.clone(), v.frees)),
                Ok(false) => {}
                Err(e) => tracing::warn!(state = %v.id, "cannot evict: {e}"),
            }
        }
        let freed: u64 = removed.iter().map(|(_, b)| b).sum();
        let after = limits.pressure(
            used.saturating_sub(freed),
            m.free_bytes.saturating_add(freed),
        );
        if !removed.is_empty() {
            tracing::info!(
                states = removed.len(),
                freed = %mib(freed),
                "evicted {trigger}"
            );
            *self.cache.last.lock().expect("last eviction") = Some(EvictionReport {
                at_ms: now_ms(),
                trigger: trigger.into(),
                removed,
                freed_bytes: freed,
                pressure: after,
            });
        }
        Ok(after)
    }

    /// Removes one state chosen for eviction, unless something took it
    /// meanwhile: a job's lease, a child, an instance.
    async fn evict_state(self: &Arc<Self>, id: &str) -> Result<bool, EngineError> {
        if self
            .index
            .states()?
            .iter()
            .any(|s| s.parent.as_deref() == Some(id))
        {
            return Ok(false);
        }
        let instances: Vec<_> = self
            .index
            .instances()?
            .into_iter()
            .filter(|i| i.state_id == id)
            .collect();
        if instances.iter().any(|i| i.status != InstanceStatus::Warm) {
            return Ok(false);
        }
        {
            // Unindexed under the lease lock: a job that leases it after
            // this finds it missing and builds it again.
            let leases = self.cache.leases.lock().expect("leases");
            if leases.contains_key(id) {
                return Ok(false);
            }
            self.index.delete_state(id)?;
        }
        for inst in &instances {
            self.discard_instance(inst).await;
        }
        let path = self.store.state_path(id);
        if path.exists() {
            self.snapshotter.remove(&path)?;
        }
        self.cache.extents.lock().expect("extents").remove(id);
        tracing::debug!(state = %id, "evicted");
        Ok(true)
    }

    /// Before a build step: eviction when the cache is too full, and a
    /// failure naming the limits when nothing more can be freed.
    pub(super) async fn ensure_room(self: &Arc<Self>) -> Result<(), Stop> {
        let pressure = self.evict("before a build step").await?;
        if pressure != Pressure::Full {
            return Ok(());
        }
        let view = self.cache_view().await?;
        if view.pressure != Pressure::Full {
            return Ok(());
        }
        let limits = view.limits;
        let over = match limits.max_bytes {
            Some(max) if view.used_bytes() >= max => format!(
                "{} used of cache.max_bytes {}",
                mib(view.used_bytes()),
                mib(max)
            ),
            _ => format!(
                "{} free on the store's filesystem, below cache.reserve_bytes {}",
                mib(view.free_bytes),
                mib(limits.reserve_bytes)
            ),
        };
        let protected = view.states.iter().filter(|s| s.protected.is_some()).count();
        Err(Stop::Failed(JobFailure {
            reason: "cache_full".into(),
            message: format!(
                "the state cache is full ({over}) and nothing more can be evicted: {protected} of {} states are pinned, in use or too young; free space with `sqlrs rm` (instances, states) or `sqlrs unpin`, or raise cache.max_bytes in the sqlrs config",
                view.states.len()
            ),
            file: None,
            line: None,
            step: None,
        }))
    }

    /// Evicts in the background, logging what fails.
    pub fn evict_later(self: &Arc<Self>, trigger: &'static str) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.evict(trigger).await {
                tracing::warn!("eviction {trigger} failed: {e}");
            }
        });
    }
}

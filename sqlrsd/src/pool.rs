//! The warm pool's bookkeeping: which states are hot (recently handed out,
//! or the head of a watched alias), which pre-started instances each has,
//! and what they cost in memory. The engine starts and stops the servers;
//! this decides how many it wants.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a warm instance of a state runs on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Runtime kind: "native" or "docker".
    pub runtime: String,
    /// Docker image; empty for native.
    pub image: String,
}

#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Warm instances wanted per hot state; 0 turns the pool off.
    pub per_state: u32,
    pub memory_budget_bytes: u64,
    /// How long a handed-out state stays hot.
    pub idle: Duration,
}

/// What `sqlrs status` shows of the pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub warm_instances: u32,
    pub starting: u32,
    pub memory_bytes: u64,
    pub memory_budget_bytes: u64,
    pub per_state: u32,
    pub hits: u64,
    pub misses: u64,
    pub hot_states: u32,
}

/// Memory assumed for a server not measured yet.
const UNMEASURED_BYTES: u64 = 24 << 20;

#[derive(Debug)]
struct Hot {
    target: Target,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    hot: HashMap<String, Hot>,
    /// Watched alias (its file) → the head state it keeps hot.
    owners: HashMap<String, String>,
    /// State → ready warm instances, oldest first.
    warm: HashMap<String, Vec<String>>,
    /// State → instances being started for it.
    starting: HashMap<String, u32>,
    /// Warm instance → measured memory.
    memory: HashMap<String, u64>,
    /// Shutting down: no more starts.
    closed: bool,
}

impl Inner {
    fn is_hot(&self, state: &str, now: Instant, idle: Duration) -> bool {
        self.owners.values().any(|s| s == state)
            || self
                .hot
                .get(state)
                .is_some_and(|h| now.duration_since(h.last_used) < idle)
    }

    fn memory_total(&self) -> u64 {
        let warm: u64 = self
            .warm
            .values()
            .flatten()
            .map(|id| self.memory_of(id))
            .sum();
        let starting: u64 = self.starting.values().map(|&n| u64::from(n)).sum();
        warm + starting * self.estimate()
    }

    fn memory_of(&self, id: &str) -> u64 {
        self.memory.get(id).copied().unwrap_or(UNMEASURED_BYTES)
    }

    /// Expected memory of one more server: the mean of those measured.
    fn estimate(&self) -> u64 {
        if self.memory.is_empty() {
            return UNMEASURED_BYTES;
        }
        self.memory.values().sum::<u64>() / self.memory.len() as u64
    }
}

pub struct Pool {
    settings: PoolSettings,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("pool lock")
    }

    /// A state was handed out: it is hot for the idle time from now.
    pub fn used(&self, state: &str, target: &Target) {
        self.lock().hot.insert(
            state.into(),
            Hot {
                target: target.clone(),
                last_used: Instant::now(),
            },
        );
    }

    /// `owner` (a watched alias) keeps `head` hot; None: it keeps nothing.
    pub fn set_owner(&self, owner: &str, head: Option<(&str, &Target)>) {
        let mut inner = self.lock();
        match head {
            Some((state, target)) => {
                inner.owners.insert(owner.into(), state.into());
                inner
                    .hot
                    .entry(state.into())
                    .or_insert_with(|| Hot {
                        target: target.clone(),
                        last_used: Instant::now(),
                    })
                    .target = target.clone();
            }
            None => {
                inner.owners.remove(owner);
            }
        }
    }

    /// Every alias of a workspace under `prefix` stops keeping states hot.
    pub fn forget_owners_under(&self, prefix: &str) {
        self.lock().owners.retain(|o, _| !o.starts_with(prefix));
    }

    /// Counts a prepare that found a warm instance (or not).
    pub fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a warm instance of `state`, if one is ready.
    pub fn take(&self, state: &str) -> Option<String> {
        let mut inner = self.lock();
        let list = inner.warm.get_mut(state)?;
        let id = (!list.is_empty()).then(|| list.remove(0))?;
        if list.is_empty() {
            inner.warm.remove(state);
        }
        inner.memory.remove(&id);
        Some(id)
    }

    /// Starts no more warm instances; returns how many are starting now.
    pub fn close(&self) -> u32 {
        let mut inner = self.lock();
        inner.closed = true;
        inner.starting.values().sum()
    }

    /// Reserves the start of one warm instance of `state` when it is hot,
    /// short of its count, and the memory budget allows one more server.
    /// Returns what to start it on.
    pub fn reserve(&self, state: &str) -> Option<Target> {
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.closed
            || self.settings.per_state == 0
            || !inner.is_hot(state, now, self.settings.idle)
        {
            return None;
        }
        let have = inner.warm.get(state).map_or(0, |v| v.len() as u32)
            + inner.starting.get(state).copied().unwrap_or(0);
        if have >= self.settings.per_state {
            return None;
        }
        if inner.memory_total() + inner.estimate() > self.settings.memory_budget_bytes {
            return None;
        }
        let target = inner.hot.get(state)?.target.clone();
        *inner.starting.entry(state.into()).or_default() += 1;
        Some(target)
    }

    /// A reserved start ended: with the instance's id when it is ready.
    pub fn started(&self, state: &str, instance: Option<String>) {
        let mut inner = self.lock();
        if let Some(n) = inner.starting.get_mut(state) {
            *n -= 1;
            if *n == 0 {
                inner.starting.remove(state);
            }
        }
        if let Some(id) = instance {
            inner.warm.entry(state.into()).or_default().push(id);
        }
    }

    /// Records what a warm instance's server uses.
    pub fn set_memory(&self, instance: &str, bytes: u64) {
        let mut inner = self.lock();
        if inner.warm.values().flatten().any(|id| id == instance) {
            inner.memory.insert(instance.into(), bytes);
        }
    }

    /// Forgets an instance that was removed.
    pub fn remove_instance(&self, instance: &str) {
        let mut inner = self.lock();
        inner.memory.remove(instance);
        for list in inner.warm.values_mut() {
            list.retain(|id| id != instance);
        }
        inner.warm.retain(|_, list| !list.is_empty());
    }

    /// Ends what is no longer wanted: states that went cold stop being hot,
    /// and the warm instances to stop are returned (cold states first, then
    /// the oldest while over the memory budget).
    pub fn sweep(&self) -> Vec<String> {
        let mut inner = self.lock();
        let now = Instant::now();
        let idle = self.settings.idle;
        let cold: Vec<String> = inner
            .hot
            .keys()
            .filter(|s| !inner.is_hot(s, now, idle))
            .cloned()
            .collect();
        for s in &cold {
            inner.hot.remove(s);
        }
        let mut out = Vec::new();
        let states: Vec<String> = inner.warm.keys().cloned().collect();
        for s in states {
            let wanted = if inner.is_hot(&s, now, idle) {
                self.settings.per_state as usize
            } else {
                0
            };
            let list = inner.warm.get_mut(&s).expect("listed state");
            while list.len() > wanted {
                out.push(list.remove(0));
            }
        }
        while inner.memory_total() > self.settings.memory_budget_bytes {
            // The least recently used hot state gives up its oldest instance.
            let victim = inner
                .warm
                .iter()
                .filter(|(_, l)| !l.is_empty())
                .min_by_key(|(s, _)| inner.hot.get(*s).map(|h| h.last_used))
                .map(|(s, _)| s.clone());
            let Some(s) = victim else { break };
            let id = inner.warm.get_mut(&s).expect("victim").remove(0);
            inner.memory.remove(&id);
            out.push(id);
        }
        inner.warm.retain(|_, l| !l.is_empty());
        for id in &out {
            inner.memory.remove(id);
        }
        out
    }

    /// Head states of the watched aliases.
    pub fn owned_heads(&self) -> std::collections::HashSet<String> {
        self.lock().owners.values().cloned().collect()
    }

    /// Hot states that may be short of warm instances.
    pub fn hot_states(&self) -> Vec<String> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .hot
            .keys()
            .filter(|s| inner.is_hot(s, now, self.settings.idle))
            .cloned()
            .collect()
    }

    /// Every warm instance, ready ones only.
    pub fn warm_ids(&self) -> Vec<String> {
        self.lock().warm.values().flatten().cloned().collect()
    }

    pub fn stats(&self) -> PoolStats {
        let inner = self.lock();
        let now = Instant::now();
        PoolStats {
            warm_instances: inner.warm.values().map(|v| v.len() as u32).sum(),
            starting: inner.starting.values().sum(),
            memory_bytes: inner
                .warm
                .values()
                .flatten()
                .map(|id| inner.memory_of(id))
                .sum(),
            memory_budget_bytes: self.settings.memory_budget_bytes,
            per_state: self.settings.per_state,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            hot_states: inner
                .hot
                .keys()
                .filter(|s| inner.is_hot(s, now, self.settings.idle))
                .count() as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native() -> Target {
        Target {
            runtime: "native".into(),
            image: String::new(),
        }
    }

    fn pool(per_state: u32, budget_mib: u64, idle_ms: u64) -> Pool {
        Pool::new(PoolSettings {
            per_state,
            memory_budget_bytes: budget_mib << 20,
            idle: Duration::from_millis(idle_ms),
        })
    }

    #[test]
    fn only_hot_states_get_instances_up_to_the_count() {
        let p = pool(2, 1024, 60_000);
        assert_eq!(p.reserve("s1"), None, "never used: not hot");
        p.used("s1", &native());
        assert_eq!(p.reserve("s1"), Some(native()));
        assert_eq!(p.reserve("s1"), Some(native()));
        assert_eq!(p.reserve("s1"), None, "two starting already");
        p.started("s1", Some("i1".into()));
        p.started("s1", None);
        assert_eq!(
            p.reserve("s1"),
            Some(native()),
            "the failed start is retried"
        );
        assert_eq!(p.take("s1").as_deref(), Some("i1"));
        assert_eq!(p.take("s1"), None);
        let s = p.stats();
        assert_eq!((s.warm_instances, s.starting, s.hot_states), (0, 1, 1));
    }

    #[test]
    fn the_budget_bounds_starts_and_sweeps_the_oldest() {
        let p = pool(1, 50, 60_000);
        for s in ["a", "b", "c"] {
            p.used(s, &native());
        }
        assert!(p.reserve("a").is_some());
        p.started("a", Some("ia".into()));
        p.set_memory("ia", 20 << 20);
        assert!(p.reserve("b").is_some());
        p.started("b", Some("ib".into()));
        p.set_memory("ib", 20 << 20);
        assert_eq!(
            p.reserve("c"),
            None,
            "a third 20 MiB server would pass 50 MiB"
        );
        p.set_memory("ib", 40 << 20);
        assert_eq!(
            p.sweep(),
            ["ia"],
            "over budget: the least recently used goes"
        );
        assert_eq!(p.stats().memory_bytes, 40 << 20);
    }

    #[test]
    fn cold_states_lose_their_instances_owned_heads_stay() {
        let p = pool(1, 1024, 30);
        p.used("old", &native());
        p.set_owner("/w/db.prep.s9s.yaml", Some(("head", &native())));
        for s in ["old", "head"] {
            assert!(p.reserve(s).is_some(), "{s}");
            p.started(s, Some(format!("i-{s}")));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(p.sweep(), ["i-old"]);
        assert_eq!(p.warm_ids(), ["i-head"]);
        p.forget_owners_under("/w/");
        assert_eq!(p.sweep(), ["i-head"]);
        assert_eq!(p.stats().hot_states, 0);
    }

    #[test]
    fn zero_per_state_turns_the_pool_off() {
        let p = pool(0, 1024, 60_000);
        p.used("s", &native());
        assert_eq!(p.reserve("s"), None);
    }

    #[test]
    fn counters() {
        let p = pool(1, 1024, 60_000);
        p.count(true);
        p.count(false);
        p.count(false);
        let s = p.stats();
        assert_eq!((s.hits, s.misses), (1, 2));
    }
}

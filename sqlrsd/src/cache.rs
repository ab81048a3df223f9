//! The bounded state cache: how full the store is, counted with blocks that
//! states share through copy-on-write once, and which states to evict when it
//! is too full. Pure policy: the engine gathers the states, their extents and
//! what protects them, and removes what [`plan`] chooses.
//!
//! Only leaves of the state tree are evicted (a state with a child is some
//! other state's parent), and only unprotected ones: no instance, no pin, not
//! the head of a watched alias, not in use by a running job, older than the
//! minimum age. Among those, the state worth least per byte it frees goes
//! first; its parent may then become a leaf and a candidate in turn.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::snapshot::extents::{Extents, account};

/// Limits from the configuration (`cache.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// None: only the free-space reserve bounds the cache.
    pub max_bytes: Option<u64>,
    pub reserve_bytes: u64,
    pub high_watermark: f64,
    pub low_watermark: f64,
    pub min_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: None,
            reserve_bytes: 1 << 30,
            high_watermark: 0.9,
            low_watermark: 0.8,
            min_age: Duration::from_secs(600),
        }
    }
}

/// How full the cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// Below the high watermark, reserve kept.
    Ok,
    /// Above the high watermark or into the reserve: eviction runs.
    High,
    /// At the limit or the reserve used up: builds wait for eviction and
    /// fail when nothing can be freed.
    Full,
}

impl Pressure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::High => "high",
            Self::Full => "full",
        }
    }
}

impl Limits {
    /// `used`: bytes of states and stored inputs; `free`: bytes available on
    /// the store's filesystem.
    pub fn pressure(&self, used: u64, free: u64) -> Pressure {
        let max = self.max_bytes.unwrap_or(u64::MAX);
        if used >= max || free < self.reserve_bytes {
            Pressure::Full
        } else if used as f64 > self.high_watermark * max as f64 {
            Pressure::High
        } else {
            Pressure::Ok
        }
    }

    /// Whether eviction, once started, may stop: under the low watermark
    /// and the reserve kept with the watermarks' gap to spare (a fraction of
    /// the reserve when there is no byte limit).
    fn satisfied(&self, used: u64, free: u64) -> bool {
        let gap = self.high_watermark - self.low_watermark;
        let under = self
            .max_bytes
            .is_none_or(|max| used as f64 <= self.low_watermark * max as f64);
        let slack = match self.max_bytes {
            Some(max) => gap * max as f64,
            None => gap * self.reserve_bytes as f64,
        };
        under && free as f64 >= self.reserve_bytes as f64 + slack
    }
}

/// Why a state may not be evicted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    Pinned,
    /// The head of a pinned alias (its path).
    PinnedAlias(String),
    /// The head of a watched alias.
    Watched,
    /// Instances (not counting warm ones of the pool) use it.
    Instances(usize),
    /// A running job uses it.
    InUse,
    /// Younger than `cache.min_age`.
    Young,
}

impl Protection {
    pub fn describe(&self) -> String {
        match self {
            Self::Pinned => "pinned".into(),
            Self::PinnedAlias(path) => format!("head of pinned alias {path}"),
            Self::Watched => "head of a watched alias".into(),
            Self::Instances(n) => format!("{n} instance(s)"),
            Self::InUse => "in use by a running job".into(),
            Self::Young => "younger than cache.min_age".into(),
        }
    }
}

/// A state as eviction sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub parent: Option<String>,
    pub last_used_at_ms: u64,
    pub use_count: u64,
    pub build_ms: u64,
    pub extents: Arc<Extents>,
    pub protection: Option<Protection>,
}

/// What rebuilding a state is worth per byte it holds on its own: the time
/// its step takes, more for states used often, less the longer it has not
/// been used (halved after a day). Lower goes first.
pub fn value_per_byte(e: &Entry, exclusive: u64, now_ms: u64) -> f64 {
    let cost_s = e.build_ms.max(100) as f64 / 1000.0;
    let frequency = 1.0 + (1.0 + e.use_count as f64).ln();
    let idle_days = now_ms.saturating_sub(e.last_used_at_ms) as f64 / 86_400_000.0;
    let recency = 1.0 / (1.0 + idle_days);
    cost_s * frequency * recency / exclusive.max(4096) as f64
}

/// One state eviction would remove, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Victim {
    pub id: String,
    /// Bytes its removal frees (blocks no remaining state shares).
    pub frees: u64,
}

/// Usage of a set of states, each state's exclusive share, and what
/// eviction would remove to get back under the limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Bytes the states hold, shared blocks once.
    pub states_bytes: u64,
    /// Per state: bytes no other state shares.
    pub exclusive: HashMap<String, u64>,
    pub victims: Vec<Victim>,
}

/// Accounts `entries` and picks victims until the limits are satisfied
/// (`all`: until nothing more can go, which tells how much is reclaimable).
/// `other_bytes` is what the store holds besides states (stored inputs);
/// `free` the filesystem's available bytes.
pub fn plan(
    entries: &[Entry],
    limits: &Limits,
    other_bytes: u64,
    free: u64,
    now_ms: u64,
    all: bool,
) -> Plan {
    let accounting = |alive: &[&Entry]| {
        let trees: Vec<(String, &Extents)> = alive
            .iter()
            .map(|e| (e.id.clone(), e.extents.as_ref()))
            .collect();
        account(&trees)
    };
    let mut alive: Vec<&Entry> = entries.iter().collect();
    let first = accounting(&alive);
    let states_bytes = first.total;
    let exclusive = first.exclusive.clone();
    let mut current = first;
    let mut used = states_bytes + other_bytes;
    let mut free = free;
    let mut victims = Vec::new();
    loop {
        if !all && limits.satisfied(used, free) {
            break;
        }
        let parents: HashSet<&str> = alive.iter().filter_map(|e| e.parent.as_deref()).collect();
        let pick = alive
            .iter()
            .enumerate()
            .filter(|(_, e)| e.protection.is_none() && !parents.contains(e.id.as_str()))
            .map(|(k, e)| {
                let frees = current.exclusive.get(&e.id).copied().unwrap_or(0);
                (k, frees, value_per_byte(e, frees, now_ms))
            })
            .min_by(|a, b| a.2.total_cmp(&b.2));
        let Some((k, frees, _)) = pick else {
            break;
        };
        let victim = alive.swap_remove(k);
        victims.push(Victim {
            id: victim.id.clone(),
            frees,
        });
        used = used.saturating_sub(frees);
        free = free.saturating_add(frees);
        current = accounting(&alive);
    }
    Plan {
        states_bytes,
        exclusive,
        victims,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const DAY: u64 = 86_400_000;

    /// A state whose blocks are `ranges` (in MiB).
    fn entry(id: &str, parent: Option<&str>, ranges: &[(u64, u64)]) -> Entry {
        Entry {
            id: id.into(),
            parent: parent.map(Into::into),
            last_used_at_ms: 10 * DAY,
            use_count: 0,
            build_ms: 1000,
            extents: Arc::new(Extents::new(
                ranges.iter().map(|(a, b)| (a * MIB, b * MIB)).collect(),
                0,
            )),
            protection: None,
        }
    }

    fn limits(max_mib: u64) -> Limits {
        Limits {
            max_bytes: Some(max_mib * MIB),
            reserve_bytes: 0,
            ..Limits::default()
        }
    }

    fn ids(p: &Plan) -> Vec<&str> {
        p.victims.iter().map(|v| v.id.as_str()).collect()
    }

    #[test]
    fn pressure_table() {
        let l = Limits {
            max_bytes: Some(100),
            reserve_bytes: 10,
            ..Limits::default()
        };
        let cases = [
            (50, 1000, Pressure::Ok),
            (90, 1000, Pressure::Ok),
            (91, 1000, Pressure::High),
            (100, 1000, Pressure::Full),
            (50, 9, Pressure::Full),
        ];
        for (used, free, want) in cases {
            assert_eq!(l.pressure(used, free), want, "{used} {free}");
        }
        let unbounded = Limits {
            reserve_bytes: 10,
            ..Limits::default()
        };
        assert_eq!(unbounded.pressure(u64::MAX / 2, 11), Pressure::Ok);
        assert_eq!(unbounded.pressure(0, 9), Pressure::Full);
    }

    #[test]
    fn shared_blocks_count_once() {
        // b is a snapshot of a that rewrote 10 MiB: 110 MiB in all, not 200.
        let entries = [
            entry("a", None, &[(0, 100)]),
            entry("b", Some("a"), &[(0, 90), (200, 210)]),
        ];
        let p = plan(&entries, &limits(1000), 0, u64::MAX, 20 * DAY, false);
        assert_eq!(p.states_bytes, 110 * MIB);
        assert_eq!(p.exclusive["a"], 10 * MIB);
        assert_eq!(p.exclusive["b"], 10 * MIB);
        assert!(p.victims.is_empty());
    }

    #[test]
    fn leaves_go_first_and_parents_follow() {
        // A chain base -> s1 -> s2, each adding 100 MiB; limit 150 MiB:
        // s2 goes, then s1 (now a leaf), leaving the base (100 MiB <= 120).
        let entries = [
            entry("base", None, &[(0, 100)]),
            entry("s1", Some("base"), &[(0, 100), (100, 200)]),
            entry("s2", Some("s1"), &[(0, 200), (200, 300)]),
        ];
        let p = plan(&entries, &limits(150), 0, u64::MAX, 20 * DAY, false);
        assert_eq!(ids(&p), ["s2", "s1"]);
        assert_eq!(p.victims[0].frees, 100 * MIB);
        assert_eq!(p.victims[1].frees, 100 * MIB);
    }

    #[test]
    fn protected_states_and_their_ancestors_stay() {
        let mut entries = vec![
            entry("base", None, &[(0, 100)]),
            entry("s1", Some("base"), &[(0, 100), (100, 200)]),
            entry("s2", Some("s1"), &[(0, 200), (200, 300)]),
        ];
        entries[2].protection = Some(Protection::Pinned);
        let p = plan(&entries, &limits(150), 0, u64::MAX, 20 * DAY, false);
        assert!(p.victims.is_empty(), "{:?}", p.victims);
        let all = plan(&entries, &limits(150), 0, u64::MAX, 20 * DAY, true);
        assert!(all.victims.is_empty());
    }

    #[test]
    fn cheap_stale_large_states_go_before_costly_recent_small_ones() {
        let mut entries = vec![
            entry("base", None, &[(0, 10)]),
            entry("big_cheap_old", Some("base"), &[(0, 10), (100, 300)]),
            entry("small_costly_new", Some("base"), &[(0, 10), (400, 420)]),
            entry("mid", Some("base"), &[(0, 10), (500, 600)]),
        ];
        entries[1].last_used_at_ms = 0;
        entries[2].build_ms = 60_000;
        entries[2].use_count = 20;
        entries[2].last_used_at_ms = 20 * DAY;
        let p = plan(&entries, &limits(300), 0, u64::MAX, 20 * DAY, false);
        assert_eq!(ids(&p), ["big_cheap_old"]);
        let all = plan(&entries, &limits(300), 0, u64::MAX, 20 * DAY, true);
        assert_eq!(
            ids(&all),
            ["big_cheap_old", "mid", "small_costly_new", "base"]
        );
    }

    #[test]
    fn the_free_space_reserve_drives_eviction_without_a_byte_limit() {
        let entries = [
            entry("base", None, &[(0, 10)]),
            entry("a", Some("base"), &[(0, 10), (100, 150)]),
            entry("b", Some("base"), &[(0, 10), (200, 300)]),
        ];
        let l = Limits {
            reserve_bytes: 100 * MIB,
            ..Limits::default()
        };
        // 40 MiB free against a 100 MiB reserve (+10% gap): b's 100 MiB suffices.
        let p = plan(&entries, &l, 0, 40 * MIB, 20 * DAY, false);
        assert_eq!(ids(&p), ["b"]);
        assert_eq!(l.pressure(160 * MIB, 40 * MIB), Pressure::Full);
    }
}

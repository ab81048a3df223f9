//! `sqlrs status`: the daemon, its runtime, snapshotter and store, the warm
//! pool and the watched workspaces.

use serde::Serialize;
use sqlrs_proto::pb::{CacheStatus, PoolStatus, StatusReply, StatusRequest};

use crate::cli::Ctx;
use crate::daemon::{self, DaemonInfo};
use crate::error::{exit, reply};
use crate::project::{self, ProjectView};
use crate::render;

/// The warm pool for JSON output.
#[derive(Debug, Serialize, PartialEq)]
struct PoolView {
    warm_instances: u32,
    /// Instances being started for the pool right now.
    starting: u32,
    memory_bytes: u64,
    /// 0: no budget.
    memory_budget_bytes: u64,
    /// Warm instances kept per hot state.
    per_state: u32,
    /// Prepares served from the pool, and cache hits that had to start a server.
    hits: u64,
    misses: u64,
    hot_states: u32,
}

impl From<&PoolStatus> for PoolView {
    fn from(p: &PoolStatus) -> Self {
        PoolView {
            warm_instances: p.warm_instances,
            starting: p.starting,
            memory_bytes: p.memory_bytes,
            memory_budget_bytes: p.memory_budget_bytes,
            per_state: p.per_state,
            hits: p.hits,
            misses: p.misses,
            hot_states: p.hot_states,
        }
    }
}

/// `1 hit`, `2 hits`.
fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `key  value` rows with the keys aligned, each line after `indent`.
fn rows(rows: &[(&str, String)], indent: &str) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{indent}{k:width$}  {v}").trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

impl PoolView {
    fn text(&self) -> String {
        let memory = match self.memory_budget_bytes {
            0 => format!("{} (no budget)", render::size(self.memory_bytes)),
            budget => format!(
                "{} of {} budget",
                render::size(self.memory_bytes),
                render::size(budget)
            ),
        };
        rows(
            &[
                (
                    "instances",
                    format!("{} warm, {} starting", self.warm_instances, self.starting),
                ),
                (
                    "hot states",
                    format!(
                        "{} ({} each)",
                        self.hot_states,
                        count(self.per_state, "warm instance", "warm instances")
                    ),
                ),
                ("memory", memory),
                (
                    "hand-outs",
                    format!(
                        "{}, {}",
                        count(self.hits, "hit", "hits"),
                        count(self.misses, "miss", "misses")
                    ),
                ),
            ],
            "  ",
        )
    }
}

/// The state cache for JSON output (`status --cache`).
#[derive(Debug, Serialize, PartialEq)]
struct CacheView {
    /// States (shared blocks counted once) plus stored inputs.
    used_bytes: u64,
    states_bytes: u64,
    blobs_bytes: u64,
    /// None: no byte limit.
    max_bytes: Option<u64>,
    reserve_bytes: u64,
    free_bytes: u64,
    high_watermark: f64,
    low_watermark: f64,
    min_age_ms: u64,
    /// "ok" | "high" | "full".
    pressure: String,
    reclaimable_bytes: u64,
    evictable_states: u32,
    pinned: u32,
    last_eviction: Option<EvictionView>,
}

#[derive(Debug, Serialize, PartialEq)]
struct EvictionView {
    at_ms: u64,
    trigger: String,
    state_ids: Vec<String>,
    freed_bytes: u64,
    pressure_after: String,
}

impl From<&CacheStatus> for CacheView {
    fn from(c: &CacheStatus) -> Self {
        CacheView {
            used_bytes: c.used_bytes,
            states_bytes: c.states_bytes,
            blobs_bytes: c.blobs_bytes,
            max_bytes: (c.max_bytes != 0).then_some(c.max_bytes),
            reserve_bytes: c.reserve_bytes,
            free_bytes: c.free_bytes,
            high_watermark: c.high_watermark,
            low_watermark: c.low_watermark,
            min_age_ms: c.min_age_ms,
            pressure: c.pressure.clone(),
            reclaimable_bytes: c.reclaimable_bytes,
            evictable_states: c.evictable_states,
            pinned: c.pinned,
            last_eviction: c.last_eviction.as_ref().map(|e| EvictionView {
                at_ms: e.at_ms,
                trigger: e.trigger.clone(),
                state_ids: e.state_ids.clone(),
                freed_bytes: e.freed_bytes,
                pressure_after: e.pressure_after.clone(),
            }),
        }
    }
}

impl CacheView {
    fn text(&self, now_ms: u64) -> String {
        let used = match self.max_bytes {
            Some(max) => format!(
                "{} of {} ({:.0}%)",
                render::size(self.used_bytes),
                render::size(max),
                self.used_bytes as f64 * 100.0 / max as f64
            ),
            None => format!("{} (no limit)", render::size(self.used_bytes)),
        };
        let pct = |f: f64| format!("{:.0}%", f * 100.0);
        let last = match &self.last_eviction {
            None => "none".to_owned(),
            Some(e) => format!(
                "{}, {} freed, {} ({}; pressure then {})",
                count(e.state_ids.len() as u64, "state", "states"),
                render::size(e.freed_bytes),
                render::ago(now_ms, e.at_ms),
                e.trigger,
                e.pressure_after
            ),
        };
        rows(
            &[
                (
                    "used",
                    format!(
                        "{used}: states {}, inputs {}",
                        render::size(self.states_bytes),
                        render::size(self.blobs_bytes)
                    ),
                ),
                (
                    "free",
                    format!(
                        "{} on the store's filesystem, {} reserved",
                        render::size(self.free_bytes),
                        render::size(self.reserve_bytes)
                    ),
                ),
                (
                    "pressure",
                    format!(
                        "{} (evicts above {}, down to {}; keeps states younger than {})",
                        self.pressure,
                        pct(self.high_watermark),
                        pct(self.low_watermark),
                        render::duration(self.min_age_ms)
                    ),
                ),
                (
                    "reclaimable",
                    format!(
                        "{} in {}",
                        render::size(self.reclaimable_bytes),
                        count(self.evictable_states, "state", "states")
                    ),
                ),
                ("pinned", count(self.pinned, "pin", "pins")),
                ("last eviction", last),
            ],
            "  ",
        )
    }
}

/// The watched workspaces, each with its aliases.
fn projects_text(projects: &[ProjectView]) -> String {
    if projects.is_empty() {
        return "  none: `sqlrs watch` in a workspace adds it".into();
    }
    projects
        .iter()
        .map(|p| {
            let aliases = project::aliases_table(&p.aliases)
                .lines()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n");
            format!(
                "  {} (prebuild {})\n{aliases}",
                p.root,
                project::on_off(p.prebuild)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The status for JSON output.
#[derive(Debug, Serialize, PartialEq)]
struct StatusView {
    daemon: Option<DaemonInfo>,
    runtime: String,
    runtime_reason: String,
    engine: String,
    server_user: String,
    snapshotter: String,
    snapshotter_reason: String,
    store_path: String,
    store_bytes: u64,
    state_count: u64,
    instance_count: u64,
    job_count: u64,
    /// The Liquibase `prepare:lb` runs (version, Java, launcher), if any.
    liquibase: Option<String>,
    /// Why no Liquibase is usable, and how to install one.
    liquibase_error: Option<String>,
    /// The warm pool; None from a daemon that has none.
    pool: Option<PoolView>,
    /// The workspaces sqlrsd watches.
    projects: Vec<ProjectView>,
    /// With `--cache`: the state cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<CacheView>,
    #[serde(skip)]
    now_ms: u64,
}

impl StatusView {
    fn new(s: &StatusReply, now_ms: u64) -> Self {
        StatusView {
            daemon: s.daemon.as_ref().map(|h| DaemonInfo::new(h, now_ms)),
            runtime: s.runtime.clone(),
            runtime_reason: s.runtime_reason.clone(),
            engine: s.engine.clone(),
            server_user: s.server_user.clone(),
            snapshotter: s.snapshotter.clone(),
            snapshotter_reason: s.snapshotter_reason.clone(),
            store_path: s.store_path.clone(),
            store_bytes: s.store_bytes,
            state_count: s.state_count,
            instance_count: s.instance_count,
            job_count: s.job_count,
            liquibase: Some(s.liquibase.clone()).filter(|v| !v.is_empty()),
            liquibase_error: Some(s.liquibase_error.clone()).filter(|v| !v.is_empty()),
            pool: s.pool.as_ref().map(PoolView::from),
            projects: s.projects.iter().map(ProjectView::from).collect(),
            cache: s.cache.as_ref().map(CacheView::from),
            now_ms,
        }
    }

    fn text(&self) -> String {
        let mut rows = Vec::new();
        if let Some(d) = &self.daemon {
            rows.push((
                "daemon",
                format!(
                    "sqlrsd {}, pid {}, up {}",
                    d.version,
                    d.pid,
                    render::duration(d.uptime_s * 1000)
                ),
            ));
            rows.push(("socket", format!("{} (protocol {})", d.socket, d.protocol)));
        }
        rows.push(("runtime", with_reason(&self.runtime, &self.runtime_reason)));
        rows.push(("engine", self.engine.clone()));
        rows.push(("server user", self.server_user.clone()));
        rows.push((
            "snapshotter",
            with_reason(&self.snapshotter, &self.snapshotter_reason),
        ));
        rows.push((
            "store",
            format!("{} ({})", self.store_path, render::size(self.store_bytes)),
        ));
        rows.push((
            "contents",
            [
                (self.state_count, "state"),
                (self.instance_count, "instance"),
                (self.job_count, "job"),
            ]
            .map(|(n, what)| format!("{n} {what}{}", if n == 1 { "" } else { "s" }))
            .join(", "),
        ));
        rows.push((
            "liquibase",
            match (&self.liquibase, &self.liquibase_error) {
                (Some(found), _) => found.clone(),
                (None, Some(error)) => format!("not usable: {error}"),
                (None, None) => "unknown".into(),
            },
        ));
        let mut text = self::rows(&rows, "");
        if let Some(pool) = &self.pool {
            text.push_str("\n\npool\n");
            text.push_str(&pool.text());
        }
        text.push_str("\n\nwatched projects\n");
        text.push_str(&projects_text(&self.projects));
        if let Some(cache) = &self.cache {
            text.push_str("\n\ncache\n");
            text.push_str(&cache.text(self.now_ms));
        }
        text
    }
}

/// `name (reason)`, or the reason alone when it already starts with `name:`.
fn with_reason(name: &str, reason: &str) -> String {
    match reason.strip_prefix(name) {
        _ if reason.is_empty() => name.to_owned(),
        Some(rest) if rest.starts_with(':') => reason.to_owned(),
        _ => format!("{name} ({reason})"),
    }
}

pub async fn status(ctx: Ctx, cache: bool) -> anyhow::Result<u8> {
    let mut conn = daemon::connect(true).await?;
    let reply = reply(conn.client.status(StatusRequest { cache }).await)?;
    let view = StatusView::new(&reply, render::now_ms());
    if ctx.json() {
        render::print_json(&view)?;
    } else {
        println!("{}", view.text());
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlrs_proto::pb::{AliasStatus, Eviction, HealthReply, ProjectStatus};

    #[test]
    fn cache_rendering() {
        let status = CacheStatus {
            used_bytes: 6 << 30,
            states_bytes: (6 << 30) - (2 << 20),
            blobs_bytes: 2 << 20,
            max_bytes: 8 << 30,
            reserve_bytes: 1 << 30,
            free_bytes: 40 << 30,
            high_watermark: 0.9,
            low_watermark: 0.8,
            min_age_ms: 600_000,
            pressure: "ok".into(),
            reclaimable_bytes: 3 << 30,
            evictable_states: 4,
            pinned: 1,
            last_eviction: Some(Eviction {
                at_ms: 60_000,
                trigger: "after a snapshot".into(),
                state_ids: vec!["a".into(), "b".into()],
                freed_bytes: 512 << 20,
                pressure_after: "ok".into(),
            }),
        };
        let view = CacheView::from(&status);
        assert_eq!(
            view.text(120_000),
            "  used           6.0 GiB of 8.0 GiB (75%): states 6.0 GiB, inputs 2.0 MiB\n  \
               free           40.0 GiB on the store's filesystem, 1.0 GiB reserved\n  \
               pressure       ok (evicts above 90%, down to 80%; keeps states younger than 10m00s)\n  \
               reclaimable    3.0 GiB in 4 states\n  \
               pinned         1 pin\n  \
               last eviction  2 states, 512.0 MiB freed, 1m ago (after a snapshot; pressure then ok)"
        );
        let unbounded = CacheView::from(&CacheStatus {
            max_bytes: 0,
            last_eviction: None,
            ..status
        });
        let text = unbounded.text(0);
        assert!(
            text.starts_with("  used           6.0 GiB (no limit): "),
            "{text}"
        );
        assert!(text.ends_with("last eviction  none"), "{text}");
        let json = serde_json::to_value(&unbounded).unwrap();
        assert_eq!(json["max_bytes"], serde_json::Value::Null);
        assert_eq!(json["pressure"], "ok");
        assert_eq!(json["reclaimable_bytes"], 3u64 << 30);
    }

    #[test]
    fn rendering() {
        let reply = StatusReply {
            daemon: Some(HealthReply {
                protocol_version: 1,
                version: "0.1.0".into(),
                pid: 42,
                socket_path: "/run/sqlrs/sqlrsd.sock".into(),
                started_at_ms: 0,
                state_dir: "/var/lib/sqlrs".into(),
            }),
            runtime: "native".into(),
            engine: "PostgreSQL 15.18 (/usr/lib/postgresql/15/bin)".into(),
            snapshotter: "copy".into(),
            snapshotter_reason: "ext4 has no reflinks or subvolumes".into(),
            store_path: "/var/lib/sqlrs".into(),
            store_bytes: 3 << 30,
            state_count: 4,
            instance_count: 1,
            job_count: 9,
            server_user: "postgres".into(),
            runtime_reason: "native: runtime.kind = native in the config".into(),
            liquibase: String::new(),
            liquibase_error: "Liquibase was not found (none on PATH); install it".into(),
            pool: Some(PoolStatus {
                warm_instances: 2,
                starting: 1,
                memory_bytes: 48 << 20,
                memory_budget_bytes: 512 << 20,
                per_state: 1,
                hits: 12,
                misses: 1,
                hot_states: 3,
            }),
            projects: vec![ProjectStatus {
                root: "/home/me/shop".into(),
                prebuild: true,
                aliases: vec![AliasStatus {
                    name: "db".into(),
                    path: "/home/me/shop/db.prep.s9s.yaml".into(),
                    status: "building".into(),
                    head_state_id: "0123456789abcdef".into(),
                    step: 2,
                    total: 4,
                    ..Default::default()
                }],
                updated_at_ms: 9,
                watched: true,
            }],
            cache: None,
        };
        let view = StatusView::new(&reply, 125_000);
        assert_eq!(
            view.text(),
            "daemon       sqlrsd 0.1.0, pid 42, up 2m05s\n\
             socket       /run/sqlrs/sqlrsd.sock (protocol 1)\n\
             runtime      native: runtime.kind = native in the config\n\
             engine       PostgreSQL 15.18 (/usr/lib/postgresql/15/bin)\n\
             server user  postgres\n\
             snapshotter  copy (ext4 has no reflinks or subvolumes)\n\
             store        /var/lib/sqlrs (3.0 GiB)\n\
             contents     4 states, 1 instance, 9 jobs\n\
             liquibase    not usable: Liquibase was not found (none on PATH); install it\n\
             \n\
             pool\n  \
               instances   2 warm, 1 starting\n  \
               hot states  3 (1 warm instance each)\n  \
               memory      48.0 MiB of 512.0 MiB budget\n  \
               hand-outs   12 hits, 1 miss\n\
             \n\
             watched projects\n  \
               /home/me/shop (prebuild on)\n    \
                 ALIAS  STATUS    HEAD          DETAIL\n    \
                 db     building  0123456789ab  step 2/4"
        );
        // No pool (an older daemon) and nothing watched; no budget.
        let bare = StatusReply {
            pool: None,
            projects: Vec::new(),
            ..reply.clone()
        };
        assert!(
            StatusView::new(&bare, 125_000).text().ends_with(
                "install it\n\nwatched projects\n  none: `sqlrs watch` in a workspace adds it"
            ),
            "{}",
            StatusView::new(&bare, 125_000).text()
        );
        let unbounded = StatusReply {
            pool: Some(PoolStatus {
                memory_budget_bytes: 0,
                per_state: 2,
                hits: 1,
                misses: 0,
                ..reply.pool.unwrap()
            }),
            ..reply.clone()
        };
        let text = StatusView::new(&unbounded, 125_000).text();
        for want in [
            "\n  hot states  3 (2 warm instances each)\n",
            "\n  memory      48.0 MiB (no budget)\n",
            "\n  hand-outs   1 hit, 0 misses\n",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        let mut found = StatusView::new(&reply, 125_000);
        found.liquibase = Some("Liquibase 4.28.0 on Java 17.0.15 (/opt/lb/liquibase)".into());
        assert!(
            found
                .text()
                .contains("\nliquibase    Liquibase 4.28.0 on Java 17.0.15 (/opt/lb/liquibase)\n"),
            "{}",
            found.text()
        );
        let mut prefixed = StatusView::new(&reply, 125_000);
        prefixed.snapshotter_reason = "copy: /s is on ext4 (no reflink)".into();
        assert!(
            prefixed
                .text()
                .contains("\nsnapshotter  copy: /s is on ext4 (no reflink)\n"),
            "{}",
            prefixed.text()
        );
        let mut docker = StatusView::new(&reply, 125_000);
        docker.runtime = "docker".into();
        docker.runtime_reason = "Docker answers at unix:///d.sock and has image pg:17".into();
        assert!(
            docker.text().contains(
                "\nruntime      docker (Docker answers at unix:///d.sock and has image pg:17)\n"
            ),
            "{}",
            docker.text()
        );
        docker.runtime_reason = String::new();
        assert!(
            docker.text().contains("\nruntime      docker\n"),
            "{}",
            docker.text()
        );
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["daemon"]["uptime_s"], 125);
        assert_eq!(
            json["snapshotter_reason"],
            "ext4 has no reflinks or subvolumes"
        );
        assert_eq!(
            json["runtime_reason"],
            "native: runtime.kind = native in the config"
        );
        assert_eq!(json["store_bytes"], 3u64 << 30);
        assert_eq!(json["liquibase"], serde_json::Value::Null);
        assert_eq!(
            json["liquibase_error"],
            "Liquibase was not found (none on PATH); install it"
        );
        assert_eq!(
            json["pool"],
            serde_json::json!({
                "warm_instances": 2, "starting": 1, "memory_bytes": 48 << 20,
                "memory_budget_bytes": 512 << 20, "per_state": 1, "hits": 12, "misses": 1,
                "hot_states": 3,
            })
        );
        assert_eq!(json["projects"][0]["root"], "/home/me/shop");
        assert_eq!(json["projects"][0]["prebuild"], true);
        assert_eq!(json["projects"][0]["aliases"][0]["status"], "building");
        assert_eq!(json["projects"][0]["aliases"][0]["step"], 2);
        // The 14 fields before the warm pool, plus `pool` and `projects`.
        assert_eq!(json.as_object().unwrap().len(), 16);
        let bare = serde_json::to_value(StatusView::new(&bare, 125_000)).unwrap();
        assert!(bare.get("cache").is_none());
        assert_eq!(
            (&bare["pool"], &bare["projects"]),
            (&serde_json::Value::Null, &serde_json::json!([]))
        );
    }
}

//! `sqlrs ls`: instances (named ones, warm ones), states (as a tree), jobs
//! and tasks, as tables or JSON.

use serde::Serialize;
use sqlrs_proto::pb::{
    Instance, Job, ListInstancesRequest, ListJobsRequest, ListStatesRequest, ListTasksRequest,
    State, Task,
};

use crate::cli::{Ctx, LsArgs};
use crate::daemon;
use crate::error::{exit, reply};
use crate::job::ErrorItem;
use crate::render::{self, SHORT_ID, TreeNode, short, some_text, some_time};

/// An instance in JSON output.
#[derive(Debug, Serialize, PartialEq)]
pub struct InstanceItem {
    pub id: String,
    pub state_id: String,
    pub dsn: String,
    pub port: u32,
    pub status: String,
    /// "native" | "docker".
    pub runtime: String,
    /// The Docker image; None on the native runtime.
    pub image: Option<String>,
    pub pid: Option<u32>,
    pub job_id: Option<String>,
    pub data_dir: String,
    pub created_at_ms: u64,
    /// The stable name bound with `prepare --name`.
    pub name: Option<String>,
    /// When the instance expires; None: never.
    pub expires_at_ms: Option<u64>,
    /// Open client connections; None when unknown.
    pub connections: Option<u32>,
    /// Whether it came ready-started from the warm pool.
    pub from_pool: bool,
    /// When its server was started.
    pub started_at_ms: Option<u64>,
    /// Why it is stopped or lost.
    pub note: Option<String>,
}

/// A state in JSON output.
#[derive(Debug, Serialize, PartialEq)]
pub struct StateItem {
    pub id: String,
    /// None for a base state.
    pub parent_id: Option<String>,
    pub engine: String,
    pub summary: String,
    pub size_bytes: u64,
    pub created_at_ms: u64,
    pub last_used_at_ms: Option<u64>,
    pub use_count: u64,
    pub build_ms: u64,
    pub instance_count: u32,
    /// Kept from eviction by `sqlrs pin`.
    pub pinned: bool,
    /// With `--cache-details`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub cache: Option<StateCacheItem>,
}

/// A state's share of the cache in JSON output (`ls --states --cache-details`).
#[derive(Debug, Serialize, PartialEq)]
pub struct StateCacheItem {
    /// Bytes its files occupy, blocks shared with other states included.
    pub own_bytes: u64,
    /// Bytes no other state shares: what evicting it frees.
    pub exclusive_bytes: u64,
    /// Why eviction leaves it alone; None: evictable.
    pub protected: Option<String>,
    /// Rebuild value per byte; the lowest is evicted first.
    pub value: f64,
}

/// A job in JSON output.
#[derive(Debug, Serialize, PartialEq)]
pub struct JobItem {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub summary: String,
    pub instance_id: Option<String>,
    pub state_id: Option<String>,
    pub error: Option<ErrorItem>,
}

/// A task in JSON output.
#[derive(Debug, Serialize, PartialEq)]
pub struct TaskItem {
    pub job_id: String,
    pub index: u32,
    pub kind: String,
    pub summary: String,
    pub status: String,
    pub state_id: Option<String>,
    pub cached: bool,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
}

impl From<&Instance> for InstanceItem {
    fn from(i: &Instance) -> Self {
        InstanceItem {
            id: i.id.clone(),
            state_id: i.state_id.clone(),
            dsn: i.dsn.clone(),
            port: i.port,
            status: i.status.clone(),
            runtime: i.runtime.clone(),
            image: some_text(&i.image),
            pid: (i.pid != 0).then_some(i.pid),
            job_id: some_text(&i.job_id),
            data_dir: i.data_dir.clone(),
            created_at_ms: i.created_at_ms,
            name: some_text(&i.name),
            expires_at_ms: some_time(i.expires_at_ms),
            connections: u32::try_from(i.connections).ok(),
            from_pool: i.from_pool,
            started_at_ms: some_time(i.started_at_ms),
            note: some_text(&i.note),
        }
    }
}

impl From<&State> for StateItem {
    fn from(s: &State) -> Self {
        StateItem {
            id: s.id.clone(),
            parent_id: some_text(&s.parent_id),
            engine: s.engine.clone(),
            summary: s.summary.clone(),
            size_bytes: s.size_bytes,
            created_at_ms: s.created_at_ms,
            last_used_at_ms: some_time(s.last_used_at_ms),
            use_count: s.use_count,
            build_ms: s.build_ms,
            instance_count: s.instance_count,
            pinned: s.pinned,
            cache: None,
        }
    }
}

impl From<&Job> for JobItem {
    fn from(j: &Job) -> Self {
        let finished = some_time(j.finished_at_ms);
        JobItem {
            id: j.id.clone(),
            kind: j.kind.clone(),
            status: j.status.clone(),
            created_at_ms: j.created_at_ms,
            finished_at_ms: finished,
            duration_ms: finished.map(|f| f.saturating_sub(j.created_at_ms)),
            summary: j.summary.clone(),
            instance_id: some_text(&j.instance_id),
            state_id: some_text(&j.state_id),
            error: j.error.as_ref().map(ErrorItem::from),
        }
    }
}

impl From<&Task> for TaskItem {
    fn from(t: &Task) -> Self {
        TaskItem {
            job_id: t.job_id.clone(),
            index: t.index,
            kind: t.kind.clone(),
            summary: t.summary.clone(),
            status: t.status.clone(),
            state_id: some_text(&t.state_id),
            cached: t.cached,
            started_at_ms: some_time(t.started_at_ms),
            finished_at_ms: some_time(t.finished_at_ms),
        }
    }
}

/// `native`, or `docker:<image>` for a server in a container.
fn runtime_cell(i: &Instance) -> String {
    match (i.runtime.as_str(), i.image.as_str()) {
        (runtime, "") => runtime.to_owned(),
        (runtime, image) => format!("{runtime}:{image}"),
    }
}

/// The instance's name, `-` when it has none.
fn name_cell(i: &Instance) -> String {
    match i.name.as_str() {
        "" => "-".into(),
        name => name.to_owned(),
    }
}

/// Open connections; `?` when the server could not be asked.
fn connections_cell(i: &Instance) -> String {
    u32::try_from(i.connections).map_or_else(|_| "?".into(), |n| n.to_string())
}

fn instances_table(instances: &[Instance], now: u64) -> String {
    render::table(
        [
            "ID", "NAME", "STATE", "RUNTIME", "DSN", "PORT", "STATUS", "CONN", "CREATED", "EXPIRES",
        ],
        instances.iter().map(|i| {
            [
                short(&i.id, SHORT_ID).to_owned(),
                name_cell(i),
                short(&i.state_id, SHORT_ID).to_owned(),
                runtime_cell(i),
                i.dsn.clone(),
                i.port.to_string(),
                i.status.clone(),
                connections_cell(i),
                render::ago(now, i.created_at_ms),
                render::until(now, i.expires_at_ms),
            ]
        }),
    )
}

/// `ls --names`: what each name stands for.
fn names_table(instances: &[Instance]) -> String {
    render::table(
        ["NAME", "INSTANCE", "STATE", "DSN"],
        instances.iter().map(|i| {
            [
                i.name.clone(),
                short(&i.id, SHORT_ID).to_owned(),
                short(&i.state_id, SHORT_ID).to_owned(),
                i.dsn.clone(),
            ]
        }),
    )
}

fn states_tree(states: &[State], now: u64, details: bool) -> String {
    let nodes: Vec<TreeNode> = states
        .iter()
        .map(|s| {
            let mut columns = vec![
                short(&s.id, SHORT_ID).to_owned(),
                s.summary.clone(),
                render::size(s.size_bytes),
                format!("created {}", render::ago(now, s.created_at_ms)),
                format!("used {}", render::ago(now, s.last_used_at_ms)),
            ];
            if details {
                columns.extend([
                    match s.use_count {
                        1 => "1 use".to_owned(),
                        n => format!("{n} uses"),
                    },
                    format!("built in {}", render::duration(s.build_ms)),
                    format!(
                        "own {}, frees {}",
                        render::size(s.own_bytes),
                        render::size(s.exclusive_bytes)
                    ),
                    match s.protected.as_str() {
                        "" => "evictable".to_owned(),
                        why => format!("kept: {why}"),
                    },
                ]);
            } else if s.pinned {
                columns.push("pinned".into());
            }
            TreeNode {
                id: s.id.clone(),
                parent: s.parent_id.clone(),
                order: s.created_at_ms,
                columns,
            }
        })
        .collect();
    render::tree(&nodes).trim_end().to_owned()
}

fn jobs_table(jobs: &[Job], now: u64) -> String {
    render::table(
        ["ID", "KIND", "STATUS", "CREATED", "DURATION", "SUMMARY"],
        jobs.iter().map(|j| {
            let duration = match j.finished_at_ms {
                0 => format!("{}…", render::duration(now.saturating_sub(j.created_at_ms))),
                done => render::duration(done.saturating_sub(j.created_at_ms)),
            };
            [
                short(&j.id, SHORT_ID).to_owned(),
                j.kind.clone(),
                j.status.clone(),
                render::ago(now, j.created_at_ms),
                duration,
                j.summary.clone(),
            ]
        }),
    )
}

fn tasks_table(tasks: &[Task]) -> String {
    render::table(
        ["JOB", "#", "KIND", "STATUS", "CACHED", "SUMMARY"],
        tasks.iter().map(|t| {
            [
                short(&t.job_id, SHORT_ID).to_owned(),
                t.index.to_string(),
                t.kind.clone(),
                t.status.clone(),
                if t.cached { "yes" } else { "no" }.to_owned(),
                t.summary.clone(),
            ]
        }),
    )
}

/// One listing: its name, its JSON items and its drawn text (None when empty).
struct Section {
    name: &'static str,
    json: serde_json::Value,
    text: Option<String>,
}

/// `I` is the JSON item for a listed `T`.
fn section<T, I>(
    name: &'static str,
    items: &[T],
    draw: impl FnOnce(&[T]) -> String,
) -> anyhow::Result<Section>
where
    I: for<'a> From<&'a T> + Serialize,
{
    let json = serde_json::to_value(items.iter().map(I::from).collect::<Vec<_>>())?;
    let text = (!items.is_empty()).then(|| draw(items));
    Ok(Section { name, json, text })
}

pub async fn ls(ctx: Ctx, args: &LsArgs) -> anyhow::Result<u8> {
    let mut conn = daemon::connect(true).await?;
    let client = &mut conn.client;
    let now = render::now_ms();
    let default = !(args.states || args.jobs || args.tasks.is_some());
    let mut sections = Vec::new();
    if args.instances || args.names || args.warm || default {
        let request = ListInstancesRequest {
            include_warm: args.warm,
        };
        let mut list = reply(client.list_instances(request).await)?.instances;
        sections.push(if args.names {
            list.retain(|i| !i.name.is_empty());
            list.sort_by(|a, b| a.name.cmp(&b.name));
            section::<_, InstanceItem>("names", &list, names_table)?
        } else {
            section::<_, InstanceItem>("instances", &list, |l| instances_table(l, now))?
        });
    }
    if args.states {
        let request = ListStatesRequest {
            cache_details: args.cache_details,
        };
        let list = reply(client.list_states(request).await)?.states;
        let mut states =
            section::<_, StateItem>("states", &list, |l| states_tree(l, now, args.cache_details))?;
        if args.cache_details {
            let items: Vec<StateItem> = list
                .iter()
                .map(|s| StateItem {
                    cache: Some(StateCacheItem {
                        own_bytes: s.own_bytes,
                        exclusive_bytes: s.exclusive_bytes,
                        protected: some_text(&s.protected),
                        value: s.value,
                    }),
                    ..StateItem::from(s)
                })
                .collect();
            states.json = serde_json::to_value(items)?;
        }
        sections.push(states);
    }
    if args.jobs {
        let list = reply(client.list_jobs(ListJobsRequest {}).await)?.jobs;
        sections.push(section::<_, JobItem>("jobs", &list, |l| {
            jobs_table(l, now)
        })?);
    }
    if let Some(job_id) = &args.tasks {
        let request = ListTasksRequest {
            job_id: job_id.clone(),
        };
        let list = reply(client.list_tasks(request).await)?.tasks;
        sections.push(section::<_, TaskItem>("tasks", &list, tasks_table)?);
    }
    print(ctx, sections)?;
    Ok(exit::OK)
}

/// One section: a JSON array or its text. Several: a JSON object keyed by
/// section name, or titled text blocks.
fn print(ctx: Ctx, sections: Vec<Section>) -> anyhow::Result<()> {
    let several = sections.len() > 1;
    if ctx.json() {
        let value = if several {
            serde_json::Value::Object(
                sections
                    .into_iter()
                    .map(|s| (s.name.to_owned(), s.json))
                    .collect(),
            )
        } else {
            sections
                .into_iter()
                .next()
                .map_or(serde_json::Value::Null, |s| s.json)
        };
        return render::print_json(&value);
    }
    for (n, section) in sections.into_iter().enumerate() {
        if several {
            println!("{}{}:", if n > 0 { "\n" } else { "" }, section.name);
        }
        match section.text {
            Some(text) => println!("{text}"),
            None => ctx.progress(format_args!("no {}", section.name)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;
    const MIN: u64 = 60_000;

    fn state(
        id: &str,
        parent: &str,
        summary: &str,
        mib: u64,
        created_min_ago: u64,
        used_min_ago: Option<u64>,
    ) -> State {
        State {
            id: id.repeat(16),
            parent_id: parent.repeat(16),
            engine: "pg15".into(),
            summary: summary.into(),
            size_bytes: mib << 20,
            created_at_ms: NOW - created_min_ago * MIN,
            last_used_at_ms: used_min_ago.map_or(0, |m| NOW - m * MIN),
            use_count: 1,
            build_ms: 1500,
            instance_count: 0,
            ..Default::default()
        }
    }

    #[test]
    fn state_tree_text() {
        let states = [
            state("b", "a", "-f schema.sql", 40, 30, Some(3)),
            state("a", "", "base PostgreSQL 15", 38, 60, None),
            state("c", "b", "-f seed.sql", 52, 29, Some(3)),
            state("d", "a", "-c 'create table t()'", 39, 10, Some(10)),
        ];
        let want = "\
aaaaaaaaaaaa          base PostgreSQL 15     38.0 MiB  created 1h ago   used -
├── bbbbbbbbbbbb      -f schema.sql          40.0 MiB  created 30m ago  used 3m ago
│   └── cccccccccccc  -f seed.sql            52.0 MiB  created 29m ago  used 3m ago
└── dddddddddddd      -c 'create table t()'  39.0 MiB  created 10m ago  used 10m ago";
        assert_eq!(states_tree(&states, NOW, false), want);
    }

    #[test]
    fn state_tree_with_cache_details_and_pins() {
        let mut states = [
            state("a", "", "base PostgreSQL 15", 38, 60, None),
            state("b", "a", "-f schema.sql", 40, 30, Some(3)),
        ];
        states[0].own_bytes = 38 << 20;
        states[0].exclusive_bytes = 30 << 20;
        states[0].protected = "has descendant states".into();
        states[1].own_bytes = 40 << 20;
        states[1].exclusive_bytes = 2 << 20;
        states[1].pinned = true;
        let want = "\
aaaaaaaaaaaa      base PostgreSQL 15  38.0 MiB  created 1h ago   used -
└── bbbbbbbbbbbb  -f schema.sql       40.0 MiB  created 30m ago  used 3m ago  pinned";
        assert_eq!(states_tree(&states, NOW, false), want);
        let detailed = states_tree(&states, NOW, true);
        let lines: Vec<&str> = detailed.lines().collect();
        assert!(
            lines[0].ends_with(
                "1 use  built in 1.5s  own 38.0 MiB, frees 30.0 MiB  kept: has descendant states"
            ),
            "{detailed}"
        );
        assert!(
            lines[1].ends_with("1 use  built in 1.5s  own 40.0 MiB, frees 2.0 MiB   evictable"),
            "{detailed}"
        );
        let item = StateItem::from(&states[1]);
        let json = serde_json::to_value(&item).unwrap();
        assert_eq!(json["pinned"], true);
        assert!(json.get("exclusive_bytes").is_none(), "{json}");
    }

    #[test]
    fn tables() {
        let instance = Instance {
            id: "0123456789abcdef".into(),
            state_id: "fedcba9876543210".into(),
            dsn: "postgres://sqlrs:pw@127.0.0.1:54321/postgres".into(),
            port: 54321,
            created_at_ms: NOW - 3 * MIN,
            status: "running".into(),
            runtime: "native".into(),
            pid: 99,
            job_id: "".into(),
            data_dir: "/s/instances/0123".into(),
            image: String::new(),
            name: "dev".into(),
            expires_at_ms: NOW - 3 * MIN + 2 * 60 * MIN,
            connections: 2,
            from_pool: true,
            started_at_ms: NOW - 10 * MIN,
            note: String::new(),
        };
        let docker = Instance {
            id: "abcdef0123456789".into(),
            runtime: "docker".into(),
            image: "postgres:17".into(),
            dsn: "postgres://sqlrs:pw@127.0.0.1:5432/postgres".into(),
            port: 5432,
            pid: 0,
            name: String::new(),
            expires_at_ms: 0,
            connections: -1,
            ..instance.clone()
        };
        let warm = Instance {
            id: "5555555555555555".into(),
            dsn: "postgres://sqlrs:pw@127.0.0.1:54400/postgres".into(),
            port: 54400,
            status: "warm".into(),
            name: String::new(),
            expires_at_ms: NOW - MIN,
            connections: 0,
            ..instance.clone()
        };
        let ci = Instance {
            id: "9999999999999999".into(),
            state_id: "0000000000000000".into(),
            name: "ci".into(),
            ..docker.clone()
        };
        assert_eq!(
            instances_table(&[instance.clone(), docker, warm], NOW),
            "ID            NAME  STATE         RUNTIME             DSN                                           PORT   STATUS   CONN  CREATED  EXPIRES\n\
             0123456789ab  dev   fedcba987654  native              postgres://sqlrs:pw@127.0.0.1:54321/postgres  54321  running  2     3m ago   in 1h 57m\n\
             abcdef012345  -     fedcba987654  docker:postgres:17  postgres://sqlrs:pw@127.0.0.1:5432/postgres   5432   running  ?     3m ago   -\n\
             555555555555  -     fedcba987654  native              postgres://sqlrs:pw@127.0.0.1:54400/postgres  54400  warm     0     3m ago   expired"
        );
        assert_eq!(
            names_table(&[instance, ci]),
            "NAME  INSTANCE      STATE         DSN\n\
             dev   0123456789ab  fedcba987654  postgres://sqlrs:pw@127.0.0.1:54321/postgres\n\
             ci    999999999999  000000000000  postgres://sqlrs:pw@127.0.0.1:5432/postgres"
        );
        let job = |id: &str, status: &str, finished: u64| Job {
            id: id.into(),
            kind: "prepare".into(),
            status: status.into(),
            created_at_ms: NOW - 2 * MIN,
            finished_at_ms: finished,
            summary: "psql -f a.sql".into(),
            ..Default::default()
        };
        assert_eq!(
            jobs_table(
                &[
                    job("j1", "succeeded", NOW - 2 * MIN + 1_200),
                    job("j2", "running", 0)
                ],
                NOW
            ),
            "ID  KIND     STATUS     CREATED  DURATION  SUMMARY\n\
             j1  prepare  succeeded  2m ago   1.2s      psql -f a.sql\n\
             j2  prepare  running    2m ago   2m00s…    psql -f a.sql"
        );
        let task = Task {
            job_id: "j1".into(),
            index: 2,
            kind: "step".into(),
            summary: "-f a.sql".into(),
            status: "succeeded".into(),
            state_id: "s".into(),
            cached: true,
            started_at_ms: 1,
            finished_at_ms: 2,
        };
        assert_eq!(
            tasks_table(&[task]),
            "JOB  #  KIND  STATUS     CACHED  SUMMARY\n\
             j1   2  step  succeeded  yes     -f a.sql"
        );
    }

    #[test]
    fn json_shapes() {
        let job = Job {
            id: "j".into(),
            kind: "prepare".into(),
            status: "failed".into(),
            created_at_ms: 1_000,
            finished_at_ms: 3_500,
            summary: "psql -f a.sql".into(),
            instance_id: "".into(),
            state_id: "".into(),
            error: Some(sqlrs_proto::pb::JobError {
                reason: "sql_error".into(),
                message: "boom".into(),
                file: "a.sql".into(),
                line: 3,
                step: 1,
            }),
        };
        let cases = [
            (
                serde_json::to_value(JobItem::from(&job)).unwrap(),
                serde_json::json!({
                    "id": "j", "kind": "prepare", "status": "failed", "created_at_ms": 1000,
                    "finished_at_ms": 3500, "duration_ms": 2500, "summary": "psql -f a.sql",
                    "instance_id": null, "state_id": null,
                    "error": {"reason": "sql_error", "message": "boom", "file": "a.sql", "line": 3, "step": 1},
                }),
            ),
            (
                serde_json::to_value(StateItem::from(&state("a", "", "base", 1, 1, None))).unwrap(),
                serde_json::json!({
                    "id": "a".repeat(16), "parent_id": null, "engine": "pg15", "summary": "base",
                    "size_bytes": 1 << 20, "created_at_ms": NOW - MIN, "last_used_at_ms": null,
                    "use_count": 1, "build_ms": 1500, "instance_count": 0, "pinned": false,
                }),
            ),
            (
                serde_json::to_value(InstanceItem::from(&Instance {
                    id: "i".into(),
                    state_id: "s".into(),
                    dsn: "postgres://x".into(),
                    port: 5,
                    created_at_ms: 7,
                    status: "running".into(),
                    runtime: "native".into(),
                    pid: 0,
                    job_id: "j".into(),
                    data_dir: "/d".into(),
                    image: String::new(),
                    name: "dev".into(),
                    expires_at_ms: 9,
                    connections: 3,
                    from_pool: true,
                    started_at_ms: 6,
                    note: "its data directory /d is gone".into(),
                }))
                .unwrap(),
                serde_json::json!({
                    "id": "i", "state_id": "s", "dsn": "postgres://x", "port": 5, "status": "running",
                    "runtime": "native", "image": null, "pid": null, "job_id": "j", "data_dir": "/d",
                    "created_at_ms": 7, "name": "dev", "expires_at_ms": 9, "connections": 3,
                    "from_pool": true, "started_at_ms": 6, "note": "its data directory /d is gone",
                }),
            ),
            (
                serde_json::to_value(InstanceItem::from(&Instance {
                    id: "i".into(),
                    runtime: "docker".into(),
                    image: "sqlrs/postgres:15".into(),
                    pid: 12,
                    connections: -1,
                    ..Default::default()
                }))
                .unwrap(),
                serde_json::json!({
                    "id": "i", "state_id": "", "dsn": "", "port": 0, "status": "",
                    "runtime": "docker", "image": "sqlrs/postgres:15", "pid": 12, "job_id": null,
                    "data_dir": "", "created_at_ms": 0, "name": null, "expires_at_ms": null,
                    "connections": null, "from_pool": false, "started_at_ms": null, "note": null,
                }),
            ),
            (
                serde_json::to_value(TaskItem::from(&Task {
                    job_id: "j".into(),
                    index: 1,
                    kind: "plan".into(),
                    status: "running".into(),
                    started_at_ms: 4,
                    ..Default::default()
                }))
                .unwrap(),
                serde_json::json!({
                    "job_id": "j", "index": 1, "kind": "plan", "summary": "", "status": "running",
                    "state_id": null, "cached": false, "started_at_ms": 4, "finished_at_ms": null,
                }),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}

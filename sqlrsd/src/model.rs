//! Domain records of the engine: states, instances, jobs, tasks and job
//! events. Free of wire types; the gRPC boundary converts them.

use serde::{Deserialize, Serialize};

use crate::runtime::ServerHandle;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random 64-bit id as 16 hex characters (instances and jobs). Short on
/// purpose: an instance id is part of its server's Unix socket path.
pub fn random_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    hex::encode(bytes)
}

/// An immutable data directory in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateRecord {
    pub id: String,
    /// None for a base state.
    pub parent: Option<String>,
    pub engine: String,
    pub summary: String,
    pub size_bytes: u64,
    pub created_at_ms: u64,
    pub last_used_at_ms: u64,
    pub use_count: u64,
    pub build_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// A build server owned by a running job; not handed out yet.
    Building,
    /// A pre-started server in the warm pool, not handed out yet.
    Warm,
    Running,
    Stopped,
    /// Its data is gone (e.g. the store lost it in a crash): it is listed,
    /// with `note` saying why, until removed.
    Lost,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Warm => "warm",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Lost => "lost",
        }
    }
}

/// A writable clone of a state with (normally) a running server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub state_id: String,
    pub status: InstanceStatus,
    pub server: Option<ServerHandle>,
    pub password: String,
    pub dsn: String,
    pub created_at_ms: u64,
    pub job_id: String,
    /// Runtime kind that serves it: "native" or "docker".
    pub runtime: String,
    /// Docker image, empty for native.
    #[serde(default)]
    pub image: String,
    /// Stable name bound by `prepare --name`.
    #[serde(default)]
    pub name: Option<String>,
    /// When the instance expires; 0: never.
    #[serde(default)]
    pub expires_at_ms: u64,
    /// Handed out from the warm pool.
    #[serde(default)]
    pub from_pool: bool,
    /// When its current server was started; 0: not started.
    #[serde(default)]
    pub started_at_ms: u64,
    /// Why it is stopped or lost.
    #[serde(default)]
    pub note: Option<String>,
}

/// What a pin keeps from eviction: one state, or whatever state an alias
/// file's chain ends in at the time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum PinTarget {
    State(String),
    /// The alias file's absolute path.
    Alias(String),
}

impl PinTarget {
    /// The index key: `state:ID` or `alias:PATH`.
    pub fn key(&self) -> String {
        match self {
            Self::State(id) => format!("state:{id}"),
            Self::Alias(path) => format!("alias:{path}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PinRecord {
    pub target: PinTarget,
    pub created_at_ms: u64,
}

/// A workspace sqlrsd watches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProjectRecord {
    /// The folder holding `.sqlrs/`.
    pub root: String,
    pub registered_at_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Why a job failed, with the user's own file and line when there is one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobFailure {
    /// Stable machine-readable reason, e.g. `sql_error`, `plan_error`.
    pub reason: String,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// 1-based step index.
    pub step: Option<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Plan,
    Step,
    Start,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plan => "plan",
            Self::Step => "step",
            Self::Start => "start",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub index: u32,
    pub kind: TaskKind,
    pub summary: String,
    pub status: RunStatus,
    pub state_id: Option<String>,
    pub cached: bool,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub kind: String,
    pub status: RunStatus,
    pub created_at_ms: u64,
    pub finished_at_ms: u64,
    pub summary: String,
    pub instance_id: Option<String>,
    pub state_id: Option<String>,
    pub error: Option<JobFailure>,
    pub tasks: Vec<TaskRecord>,
}

/// One step of a plan as shown to users.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanStepView {
    pub index: u32,
    pub state_id: String,
    pub summary: String,
    pub cached: bool,
    pub inputs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanView {
    pub base_id: String,
    pub engine: String,
    pub steps: Vec<PlanStepView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepProgress {
    pub index: u32,
    pub total: u32,
    pub status: String,
    pub state_id: String,
    pub summary: String,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EventKind {
    Planned(PlanView),
    Step(StepProgress),
    Log(String),
    /// The instance handed out; None for a prebuild, which hands out none.
    Succeeded(Option<Box<InstanceRecord>>),
    Failed(JobFailure),
    Cancelled,
}

impl EventKind {
    /// Whether no event follows this one.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Succeeded(_) | Self::Failed(_) | Self::Cancelled)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: String,
    pub seq: u64,
    pub at_ms: u64,
    pub kind: EventKind,
}

/// What a watched workspace looks like now: every alias with its cache
/// status and the status of each file its chain reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProjectView {
    pub root: String,
    /// Whether changed chains are rebuilt in the background.
    pub prebuild: bool,
    pub aliases: Vec<AliasView>,
    pub updated_at_ms: u64,
    /// False once the workspace is no longer watched.
    pub watched: bool,
}

/// One `NAME.prep.s9s.yaml` of a watched workspace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AliasView {
    pub name: String,
    /// The alias file.
    pub path: String,
    /// `cached` | `stale` | `building` | `failed` | `invalid`.
    pub status: String,
    /// Empty when the alias cannot be planned.
    pub head_state_id: String,
    /// While building: the 1-based step running, of `total`.
    pub step: u32,
    pub total: u32,
    /// Why the build failed or the alias cannot be planned.
    pub error: Option<JobFailure>,
    pub files: Vec<FileView>,
    /// The prebuild job, while it runs or after it failed.
    pub job_id: String,
}

/// One file a chain reads, with the status of the step it belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileView {
    pub path: String,
    /// `cached` | `stale` | `building` | `failed`.
    pub status: String,
    pub state_id: String,
    /// 1-based step; the last one when the file is read by several.
    pub step: u32,
}

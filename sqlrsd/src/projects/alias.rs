//! One watched alias: its latest plan, its prebuild, and the status of the
//! alias and of every file its chain reads, computed from them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use sqlrs_proto::alias::AliasRole;

use crate::model::{AliasView, FileView, JobFailure, PlanView};

/// The latest plan of an alias, or why it cannot be planned.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Input paths are absolute.
    Planned(PlanView),
    Invalid(JobFailure),
}

/// A prebuild the watcher started, while it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Build {
    pub job_id: String,
    /// The state the job builds.
    pub head: String,
    /// The 1-based step running; 0 while the job waits for its turn.
    pub step: u32,
}

/// A prebuild that failed; it stands until a plan gives another head.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub job_id: String,
    pub head: String,
    pub failure: JobFailure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Cached,
    Stale,
    Building,
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Cached => "cached",
            Status::Stale => "stale",
            Status::Building => "building",
            Status::Failed => "failed",
        }
    }
}

/// Everything known about one alias file.
#[derive(Debug, Clone)]
pub struct Alias {
    pub path: PathBuf,
    pub outcome: Outcome,
    /// Every file the chain read at its last successful plan, plus the file
    /// a plan error names: what is watched for this alias.
    pub inputs: BTreeSet<PathBuf>,
    pub build: Option<Build>,
    pub failure: Option<Failure>,
    /// States the prebuild made or found since the plan was computed.
    pub built: HashSet<String>,
    /// A change seen but not planned yet: this 0-based step and every later
    /// one are stale.
    pub stale_from: Option<usize>,
}

impl Alias {
    pub fn new(path: PathBuf, outcome: Outcome) -> Self {
        Self {
            path,
            outcome,
            inputs: BTreeSet::new(),
            build: None,
            failure: None,
            built: HashSet::new(),
            stale_from: None,
        }
    }

    /// The alias name: the file name without `.prep.s9s.yaml`.
    pub fn name(&self) -> String {
        let file = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        file.strip_suffix(AliasRole::Prepare.suffix())
            .map(str::to_owned)
            .unwrap_or(file)
    }

    /// The head state of the latest plan, if it planned.
    pub fn head(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Planned(plan) => Some(
                plan.steps
                    .last()
                    .map(|s| s.state_id.as_str())
                    .unwrap_or(plan.base_id.as_str()),
            ),
            Outcome::Invalid(_) => None,
        }
    }

    /// Whether the latest plan's head state exists.
    pub fn head_cached(&self) -> bool {
        match &self.outcome {
            Outcome::Planned(plan) => plan
                .steps
                .last()
                .is_none_or(|s| s.cached || self.built.contains(&s.state_id)),
            Outcome::Invalid(_) => false,
        }
    }

    /// Marks the steps from `step` (0-based) on as changed and not planned yet.
    pub fn mark_stale(&mut self, step: usize) {
        self.stale_from = Some(self.stale_from.map_or(step, |s| s.min(step)));
    }

    fn step_status(&self, plan: &PlanView, i: usize) -> Status {
        let step = &plan.steps[i];
        if self.stale_from.is_some_and(|s| i >= s) {
            Status::Stale
        } else if step.cached || self.built.contains(&step.state_id) {
            Status::Cached
        } else if self
            .failure
            .as_ref()
            .is_some_and(|f| f.failure.step == Some(i as u32 + 1))
        {
            Status::Failed
        } else if self.build.is_some() {
            Status::Building
        } else {
            Status::Stale
        }
    }

    /// The alias as subscribers see it.
    pub fn view(&self) -> AliasView {
        let mut view = AliasView {
            name: self.name(),
            path: self.path.display().to_string(),
            status: String::new(),
            head_state_id: self.head().unwrap_or_default().to_owned(),
            step: 0,
            total: 0,
            error: None,
            files: Vec::new(),
            job_id: self
                .build
                .as_ref()
                .map(|b| b.job_id.clone())
                .unwrap_or_default(),
        };
        match &self.outcome {
            Outcome::Invalid(failure) => {
                view.files = failure
                    .file
                    .iter()
                    .filter(|f| Path::new(f).is_absolute())
                    .map(|f| FileView {
                        path: f.clone(),
                        status: Status::Failed.as_str().into(),
                        state_id: String::new(),
                        step: 0,
                    })
                    .collect();
                if self.stale_from.is_some() {
                    view.status = Status::Stale.as_str().into();
                } else {
                    view.status = "invalid".into();
                    view.error = Some(failure.clone());
                }
            }
            Outcome::Planned(plan) => {
                let steps: Vec<Status> = (0..plan.steps.len())
                    .map(|i| self.step_status(plan, i))
                    .collect();
                let status = if self.stale_from.is_some() {
                    Status::Stale
                } else if self.failure.is_some() {
                    Status::Failed
                } else if self.build.is_some() {
                    Status::Building
                } else if self.head_cached() {
                    Status::Cached
                } else {
                    Status::Stale
                };
                view.status = status.as_str().into();
                view.total = plan.steps.len() as u32;
                match (status, &self.build, &self.failure) {
                    (Status::Building, Some(b), _) => view.step = b.step,
                    (Status::Failed, _, Some(f)) => {
                        view.step = f.failure.step.unwrap_or(0);
                        view.error = Some(f.failure.clone());
                        view.job_id = f.job_id.clone();
                    }
                    _ => {}
                }
                view.files = file_views(plan, &steps);
            }
        }
        view
    }
}

/// Every file of the chain once, in reading order, with the status of the
/// last step reading it; a file read by a failed step stays failed.
fn file_views(plan: &PlanView, steps: &[Status]) -> Vec<FileView> {
    let mut files: Vec<FileView> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (step, status) in plan.steps.iter().zip(steps) {
        for input in &step.inputs {
            let file = FileView {
                path: input.clone(),
                status: status.as_str().into(),
                state_id: step.state_id.clone(),
                step: step.index,
            };
            match at.get(input.as_str()) {
                Some(&k) if files[k].status == Status::Failed.as_str() => {}
                Some(&k) => files[k] = file,
                None => {
                    at.insert(input, files.len());
                    files.push(file);
                }
            }
        }
    }
    files
}

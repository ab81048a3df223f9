//! The daemon as the language server uses it: one lazily made connection
//! (sqlrsd is started when none answers) and the few calls the editor needs.

use std::collections::HashMap;
use std::fs::TryLockError;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlrs_proto::client::{self, Client, ConnectError};
use sqlrs_proto::paths::Locations;
use sqlrs_proto::pb::job_event::Event;
use sqlrs_proto::pb::{
    DeleteRequest, Instance, JobError, JobRef, ListStatesRequest, PlanReply, PrepareRequest,
    ProjectRef, ProjectStatus, ShutdownRequest,
};
use tokio::sync::{Mutex, watch};
use tonic::Streaming;

/// How long a stopping daemon may take to be gone.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot reach sqlrsd: {0}")]
    Connect(#[from] ConnectError),
    #[error("sqlrsd refused the request{}: {}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(), status.message())]
    Call {
        status: tonic::Status,
        reason: Option<String>,
    },
    #[error("preparing {alias} failed: {}", located(.error))]
    PrepareFailed { alias: String, error: JobError },
    #[error("preparing {alias} was cancelled")]
    Cancelled { alias: String },
    #[error("sqlrsd (pid {pid}) has not stopped {}s after being asked to; see its log {}", STOP_TIMEOUT.as_secs(), log.display())]
    NotStopping { pid: u32, log: PathBuf },
    #[error(
        "sqlrsd ended the prepare of {alias} before it finished; `sqlrs ls --jobs` shows how it ended"
    )]
    StreamEnded { alias: String },
}

impl From<tonic::Status> for DaemonError {
    fn from(status: tonic::Status) -> Self {
        let reason = sqlrs_proto::status_reason(&status).map(str::to_owned);
        DaemonError::Call { status, reason }
    }
}

/// `file:line: message` when the error has a place, else the message.
pub fn located(error: &JobError) -> String {
    match (error.file.as_str(), error.line) {
        ("", _) => error.message.clone(),
        (file, 0) => format!("{file}: {}", error.message),
        (file, line) => format!("{file}:{line}: {}", error.message),
    }
}

/// Where the daemon is and how to start it.
pub struct Daemon {
    locations: Locations,
    exe: PathBuf,
    client: Mutex<Option<Client>>,
}

impl Daemon {
    pub fn new(locations: Locations, exe: PathBuf) -> Self {
        Self {
            locations,
            exe,
            client: Mutex::new(None),
        }
    }

    /// The connection, made (and the daemon started) on first use.
    pub async fn client(&self) -> Result<Client, DaemonError> {
        let mut cached = self.client.lock().await;
        if let Some(client) = &*cached {
            return Ok(client.clone());
        }
        let conn = client::connect_or_spawn(&self.locations, &self.exe).await?;
        *cached = Some(conn.client.clone());
        Ok(conn.client)
    }

    /// Drops the connection after a failure: the next call reconnects.
    pub async fn reset(&self) {
        *self.client.lock().await = None;
    }

    async fn call<T>(
        &self,
        result: Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, DaemonError> {
        match result {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => {
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown
                ) {
                    self.reset().await;
                }
                Err(status.into())
            }
        }
    }

    /// Subscribes to a workspace's status (registering it).
    pub async fn watch_project(
        &self,
        path: &Path,
    ) -> Result<Streaming<ProjectStatus>, DaemonError> {
        let request = ProjectRef {
            path: path.to_string_lossy().into_owned(),
            stop: false,
        };
        let reply = self.client().await?.watch_project(request).await;
        self.call(reply).await
    }

    /// Registers a workspace and returns its status now.
    pub async fn register_project(&self, path: &Path) -> Result<ProjectStatus, DaemonError> {
        let request = ProjectRef {
            path: path.to_string_lossy().into_owned(),
            stop: false,
        };
        let reply = self.client().await?.register_project(request).await;
        self.call(reply).await
    }

    pub async fn plan(&self, alias_path: &Path) -> Result<PlanReply, DaemonError> {
        let reply = self
            .client()
            .await?
            .plan(alias_request(alias_path, None))
            .await;
        self.call(reply).await
    }

    /// Prepares `alias_path` (bound to `name` when given) and returns the
    /// instance; `cancel` turning true cancels the job.
    pub async fn prepare(
        &self,
        alias_path: &Path,
        name: Option<&str>,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<Instance, DaemonError> {
        let alias = alias_path.display().to_string();
        let mut client = self.client().await?;
        let reply = client.prepare(alias_request(alias_path, name)).await;
        let mut stream = self.call(reply).await?;
        let mut job_id = String::new();
        let mut cancelled = false;
        loop {
            let event = tokio::select! {
                event = stream.message() => event?,
                changed = cancel.changed(), if !cancelled => {
                    if changed.is_ok() && *cancel.borrow() && !job_id.is_empty() {
                        cancelled = true;
                        client.cancel_job(JobRef { job_id: job_id.clone() }).await?;
                    }
                    continue;
                }
            };
            let Some(event) = event else {
                return Err(DaemonError::StreamEnded { alias });
            };
            if job_id.is_empty() {
                job_id = event.job_id;
            }
            match event.event {
                Some(Event::Succeeded(done)) => match done.instance {
                    Some(instance) if cancelled => {
                        self.delete_instance(&instance.id).await;
                        return Err(DaemonError::Cancelled { alias });
                    }
                    Some(instance) => return Ok(instance),
                    None => return Err(DaemonError::StreamEnded { alias }),
                },
                Some(Event::Failed(error)) => {
                    return Err(DaemonError::PrepareFailed { alias, error });
                }
                Some(Event::Cancelled(_)) => return Err(DaemonError::Cancelled { alias }),
                _ => {}
            }
        }
    }

    /// Removes an instance (open connections or not); failures are logged.
    pub async fn delete_instance(&self, id: &str) {
        let request = DeleteRequest {
            id: id.to_owned(),
            recurse: false,
            force: true,
            dry_run: false,
        };
        let result = match self.client().await {
            Ok(mut client) => self
                .call(client.delete_instance(request).await)
                .await
                .map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!("cannot remove instance {id}: {e}");
        }
    }

    /// The size of every state in the store.
    pub async fn state_sizes(&self) -> Result<HashMap<String, u64>, DaemonError> {
        let reply = self
            .client()
            .await?
            .list_states(ListStatesRequest::default())
            .await;
        Ok(self
            .call(reply)
            .await?
            .states
            .into_iter()
            .map(|s| (s.id, s.size_bytes))
            .collect())
    }

    /// Stops the daemon if one runs and waits until it is gone (its socket
    /// quiet, its store lock released); the next call starts a new one.
    /// Other calls wait meanwhile, so that none starts a daemon too early.
    pub async fn shutdown(&self) -> Result<(), DaemonError> {
        let mut cached = self.client.lock().await;
        *cached = None;
        let conn = match client::connect(&self.locations).await {
            Ok(conn) => conn,
            Err(ConnectError::NotRunning { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let pid = conn.health.pid;
        let mut client = conn.client;
        match client.shutdown(ShutdownRequest {}).await {
            // The daemon may close the connection before it answers.
            Err(status)
                if !matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) =>
            {
                return Err(status.into());
            }
            _ => {}
        }
        let asked = Instant::now();
        while !matches!(
            client::connect(&self.locations).await,
            Err(ConnectError::NotRunning { .. })
        ) || !store_free(&self.locations.daemon_lock_path())
        {
            if asked.elapsed() > STOP_TIMEOUT {
                return Err(DaemonError::NotStopping {
                    pid,
                    log: self.locations.log_path(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// Whether no daemon holds the store lock (a shared lock is refused while one does).
fn store_free(lock_path: &Path) -> bool {
    match std::fs::File::open(lock_path) {
        Ok(file) => !matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock)),
        Err(_) => true,
    }
}

fn alias_request(alias_path: &Path, name: Option<&str>) -> PrepareRequest {
    PrepareRequest {
        alias_path: alias_path.to_string_lossy().into_owned(),
        cwd: alias_path
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        name: name.unwrap_or_default().to_owned(),
        ..PrepareRequest::default()
    }
}

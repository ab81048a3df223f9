//! The daemon's lifecycle: one sqlrsd per store (an exclusive lock), a fresh
//! token, the engine put together from config, reconciliation, the upkeep
//! task and the watched workspaces, then gRPC on the local socket until
//! Shutdown or a signal.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlrs_proto::paths::{Locations, is_root};
use sqlrs_proto::pb::sqlrs_server::SqlrsServer;
use sqlrs_proto::transport;
use tokio::sync::watch;

use crate::blobs::BlobStore;
use crate::config::Config;
use crate::engine::{Engine, EngineSettings};
use crate::index::Index;
use crate::jobs::Jobs;
use crate::model::{now_ms, random_id};
use crate::pool::PoolSettings;
use crate::projects::Projects;
use crate::runtime::NativeConfig;
use crate::runtimes::{RuntimeSettings, Runtimes};
use crate::service::{DaemonInfo, Service};
use crate::snapshot::{self, BackendChoice};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another sqlrsd{} already serves {}; stop it with `sqlrs daemon stop` or use another XDG_STATE_HOME", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), .store.display())]
    AlreadyRunning { store: PathBuf, pid: Option<u32> },
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        // Not `source`: the message includes it already.
        error: std::io::Error,
    },
    #[error("snapshot.backend {0:?} in the config is not one of auto, btrfs, reflink, copy")]
    Backend(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Blobs(#[from] crate::blobs::BlobError),
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |error| DaemonError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Runs the daemon until it is asked to stop.
pub async fn run(loc: Locations) -> Result<(), DaemonError> {
    let root = is_root();
    let store = Store::new(&loc.state_dir);
    store.create(root).map_err(io(&loc.state_dir))?;
    let lock = lock_store(&loc.daemon_lock_path())?;
    let config = Config::load(&loc.config_path())?;
    let token = write_token(&loc.token_path())?;

    let index = Arc::new(Index::open(&store.index_path())?);
    let jobs = Jobs::new(index.clone(), config.jobs.max_events, config.jobs.keep);
    let blobs = BlobStore::open(&store.blobs_dir())?;
    let runtimes = Runtimes::new(RuntimeSettings {
        kind: config.runtime.kind,
        native: NativeConfig {
            bin_dir: config.runtime.native.bin_dir.clone(),
            server_user: config.runtime.native.server_user.clone(),
        },
        docker_host: config.runtime.docker.host.clone(),
        docker_image: config.docker_image().to_owned(),
        docker_network: config.runtime.docker.network,
        shared_dirs: vec![store.root().join("exec")],
    })
    .await?;
    tracing::info!(reason = %runtimes.reason(), "runtime");
    let choice = match config.snapshot.backend.as_str() {
        "auto" => BackendChoice::Auto,
        other => BackendChoice::Fixed(
            other
                .parse()
                .map_err(|_| DaemonError::Backend(other.into()))?,
        ),
    };
    let detected = snapshot::detect(&store.states_dir(), choice)?;
    tracing::info!(
        snapshotter = %detected.snapshotter.kind(),
        reason = %detected.reason,
        "store {}",
        store.root().display()
    );
    let engine = Arc::new(Engine::new(
        store,
        index,
        jobs,
        blobs,
        runtimes,
        detected,
        EngineSettings {
            pool: PoolSettings {
                per_state: config.pool.per_state,
                memory_budget_bytes: config.pool.memory_budget_mib << 20,
                idle: config.pool.idle.0,
            },
            max_builds: config.builds.max_concurrent,
            default_ttl: config.instances.ttl.map(|t| t.0),
            liquibase_exec: config.liquibase.exec.clone(),
            cache: crate::cache::Limits {
                max_bytes: config.cache.max_bytes.map(|b| b.0),
                reserve_bytes: config.cache.reserve_bytes.0,
                high_watermark: config.cache.high_watermark,
                low_watermark: config.cache.low_watermark,
                min_age: config.cache.min_age.0,
            },
            cache_check: config.cache.check_interval.0,
        },
    ));
    engine.reconcile().await?;
    engine.evict_later("at start-up");
    let upkeep = tokio_util::sync::CancellationToken::new();
    tokio::spawn(engine.clone().upkeep(upkeep.clone()));
    let projects = Projects::new(engine.clone());
    // Planning the registered workspaces again may take a while (Liquibase
    // starts a JVM): it does not hold up serving.
    {
        let projects = projects.clone();
        tokio::spawn(async move {
            if let Err(e) = projects.restore().await {
                tracing::warn!("cannot watch the registered workspaces again: {e}");
            }
        });
    }
    // Ask an installed Liquibase its version now (a JVM start), so neither
    // `sqlrs status` nor the first prepare:lb waits for it.
    {
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(e) = engine.liquibase.get().await {
                tracing::debug!("Liquibase: {e}");
            }
        });
    }

    let socket = loc.socket_path();
    let listener = transport::bind(&socket).map_err(io(&socket))?;
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    // Cancelled when shutdown begins: open streams end, so the server's
    // graceful shutdown does not wait for them.
    let closing = tokio_util::sync::CancellationToken::new();
    let service = Service::new(
        engine.clone(),
        projects.clone(),
        DaemonInfo {
            socket_path: socket.display().to_string(),
            state_dir: loc.state_dir.display().to_string(),
            started_at_ms: now_ms(),
        },
        token,
        shutdown_tx,
        closing.clone(),
    );
    tracing::info!(
        pid = std::process::id(),
        "listening on {}",
        socket.display()
    );
    let stop = {
        let engine = engine.clone();
        async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = shutdown_rx.wait_for(|v| *v) => {}
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
            closing.cancel();
            // Their event streams end with them.
            for id in engine.jobs.live_ids() {
                engine.jobs.cancel(&id);
            }
        }
    };
    tonic::transport::Server::builder()
        .add_service(
            SqlrsServer::new(service)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(transport::incoming(listener), stop)
        .await?;
    upkeep.cancel();
    projects.shutdown().await;
    stop_jobs(&engine).await;
    engine.drain_pool().await;
    let _ = std::fs::remove_file(&socket);
    // Detached tasks keep the index open until the runtime ends with the
    // process: the store lock is released by the exit itself, so that a
    // daemon started right after never finds the index still locked.
    std::mem::forget(lock);
    Ok(())
}

/// Cancels running jobs and gives them a moment to clean up their builds.
/// Instances keep running: they are re-adopted at the next start (warm
/// instances of the pool are stopped after this).
async fn stop_jobs(engine: &Engine) {
    for id in engine.jobs.live_ids() {
        engine.jobs.cancel(&id);
    }
    for _ in 0..200 {
        if engine.jobs.live_ids().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lock_store(path: &Path) -> Result<std::fs::File, DaemonError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            // The holder wrote its pid into the lock file.
            let pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            return Err(DaemonError::AlreadyRunning {
                store: path.parent().unwrap_or(path).to_owned(),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(path)(e)),
    }
    file.set_len(0).map_err(io(path))?;
    writeln!(file, "{}", std::process::id()).map_err(io(path))?;
    Ok(file)
}

/// A new token per daemon start, readable by the owner only.
fn write_token(path: &Path) -> Result<String, DaemonError> {
    let token = random_id() + &random_id();
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(token.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(token)
}

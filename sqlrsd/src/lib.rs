//! The sqlrs engine: plans psql chains into content-addressed states, builds
//! them on a PostgreSQL runtime, snapshots every step, and hands out
//! writable instances. The `sqlrsd` binary serves it over gRPC.

pub mod blobs;
pub mod cache;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod failpoint;
pub mod ids;
pub mod index;
pub mod jobs;
pub mod liquibase;
pub mod model;
pub mod planner;
pub mod pool;
pub mod projects;
pub mod runtime;
pub mod runtimes;
pub mod scheduler;
pub mod service;
pub mod snapshot;
pub mod store;

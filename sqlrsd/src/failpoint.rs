//! Crash points for the crash-safety tests: `SQLRS_CRASH_AT=NAME` in
//! sqlrsd's environment makes it abort (no clean-up, like `kill -9`) the
//! first time it reaches the point of that name. Points: `step` (a step ran,
//! before its snapshot), `snapshot` (the state's directory is complete and
//! synced, before it is renamed into place), `record` (renamed, before the
//! index names it), `hand_out` (the build finished, before its instance is
//! handed out), `warm_start` (a warm instance's server runs, before it is
//! recorded). Unset, a point costs one atomic load.

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const ENV: &str = "SQLRS_CRASH_AT";

fn armed() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Aborts the process when `point` is the armed crash point.
pub fn hit(point: &str) {
    if armed() == Some(point) {
        eprintln!("sqlrsd: {ENV}={point}: aborting");
        std::process::abort();
    }
}

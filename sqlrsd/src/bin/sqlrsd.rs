//! The sqlrsd daemon binary: logs to stderr, serves until stopped.

use std::io::IsTerminal;
use std::process::ExitCode;

use sqlrs_proto::paths::Locations;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SQLRSD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The last lines of the log are what a client shows when the
            // daemon fails to start: the reason must be there, not a backtrace.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    if let Some(arg) = std::env::args().nth(1) {
        match arg.as_str() {
            "--version" | "-V" => {
                println!("sqlrsd {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            _ => anyhow::bail!(
                "sqlrsd takes no arguments (got {arg:?}); it is configured by $XDG_CONFIG_HOME/sqlrs/config.yaml and started by `sqlrs daemon start`"
            ),
        }
    }
    sqlrsd::daemon::run(Locations::from_env()?).await?;
    Ok(())
}

//! The sqlrsd daemon binary: logs to stderr, serves until stopped.

use std::io::IsTerminal;

use sqlrs_proto::paths::Locations;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SQLRSD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
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
    let loc = Locations::from_env()?;
    if let Err(e) = sqlrsd::daemon::run(loc).await {
        tracing::error!("{e}");
        return Err(e.into());
    }
    Ok(())
}

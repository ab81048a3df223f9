//! `sqlrs-lsp`: the sqlrs language server over stdio. Logs go to stderr
//! (`SQLRS_LSP_LOG` sets the filter, e.g. `debug`), never to stdout.

use anyhow::Context;
use sqlrs_lsp::{Config, service};
use sqlrs_proto::client::daemon_exe;
use sqlrs_proto::paths::Locations;
use tower_lsp::Server;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("sqlrs-lsp {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SQLRS_LSP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config {
        locations: Locations::from_env().context("cannot find the sqlrs directories")?,
        daemon_exe: daemon_exe(),
    };
    let (service, socket) = service(config);
    Server::new(tokio::io::stdin(), tokio::io::stdout(), socket)
        .serve(service)
        .await;
    Ok(())
}

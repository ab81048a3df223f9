//! `sqlrs-lsp`: the sqlrs language server over stdio. Logs go to stderr
//! (`SQLRS_LSP_LOG` sets the filter, e.g. `debug`), never to stdout.

use anyhow::Context as _;
use sqlrs_lsp::{Config, service};
use sqlrs_proto::client::daemon_exe;
use sqlrs_proto::paths::Locations;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_lsp::Server;
use tower_lsp::jsonrpc::Request;

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
        .serve(ExitOnExit {
            inner: service,
            shut_down: false,
        })
        .await;
    Ok(())
}

/// Ends the process on the `exit` notification (code 0 after `shutdown`,
/// 1 without, as LSP asks). The transport would otherwise notice only at the
/// next message, and a client that keeps stdin open would keep the server.
struct ExitOnExit<S> {
    inner: S,
    shut_down: bool,
}

impl<S> tower_service::Service<Request> for ExitOnExit<S>
where
    S: tower_service::Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match req.method() {
            "shutdown" => self.shut_down = true,
            "exit" => {
                let code = if self.shut_down { 0 } else { 1 };
                tokio::spawn(async move {
                    // Whatever is being written goes out first.
                    tokio::time::sleep(EXIT_GRACE).await;
                    std::process::exit(code);
                });
            }
            _ => {}
        }
        self.inner.call(req)
    }
}

const EXIT_GRACE: Duration = Duration::from_millis(50);

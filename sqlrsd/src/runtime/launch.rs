//! Starting a server on a free loopback port, shared by the runtimes: a port
//! picked free can be taken before the server binds it, so a launch that
//! reports a taken port is tried again on another.

use std::future::Future;

use super::{RuntimeError, ServerHandle};

/// How many ports a start tries before giving up.
const PORT_ATTEMPTS: usize = 8;

/// Why one start attempt failed: a taken port is worth another try.
pub enum Launch {
    PortTaken(RuntimeError),
    Failed(RuntimeError),
}

impl From<RuntimeError> for Launch {
    fn from(e: RuntimeError) -> Self {
        Launch::Failed(e)
    }
}

/// Runs `launch` on `preferred` first, when given and free, then on free
/// ports until one is not taken.
pub async fn on_free_port<F, Fut>(
    preferred: Option<u16>,
    mut launch: F,
) -> Result<ServerHandle, RuntimeError>
where
    F: FnMut(u16) -> Fut,
    Fut: Future<Output = Result<ServerHandle, Launch>>,
{
    let mut last = None;
    let mut preferred = preferred.filter(|&p| is_free(p));
    for _ in 0..PORT_ATTEMPTS {
        let port = match preferred.take() {
            Some(port) => port,
            None => free_port()?,
        };
        match launch(port).await {
            Ok(server) => return Ok(server),
            Err(Launch::PortTaken(e)) => {
                tracing::debug!(port, "port taken, trying another");
                last = Some(e);
            }
            Err(Launch::Failed(e)) => return Err(e),
        }
    }
    Err(last.expect("PORT_ATTEMPTS is not zero"))
}

/// Whether nothing listens on `port` of 127.0.0.1 right now.
fn is_free(port: u16) -> bool {
    port != 0 && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> Result<u16, RuntimeError> {
    let io = |source| RuntimeError::Io {
        action: "find a free port on",
        path: "127.0.0.1".into(),
        source,
    };
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn handle(port: u16) -> ServerHandle {
        ServerHandle {
            pid: 1,
            port,
            socket_dir: PathBuf::from("/run"),
            data_dir: PathBuf::from("/data"),
        }
    }

    fn taken() -> Launch {
        Launch::PortTaken(RuntimeError::Io {
            action: "bind",
            path: "127.0.0.1".into(),
            source: std::io::Error::other("Address already in use"),
        })
    }

    #[tokio::test]
    async fn the_preferred_port_goes_first_and_a_taken_one_is_retried_elsewhere() {
        let spare = free_port().unwrap();
        let got = on_free_port(Some(spare), |port| async move { Ok(handle(port)) })
            .await
            .unwrap();
        assert_eq!(got.port, spare);

        // Busy: another port is used without trying it.
        let busy = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let got = on_free_port(Some(busy_port), |port| async move { Ok(handle(port)) })
            .await
            .unwrap();
        assert_ne!(got.port, busy_port);

        // Taken between the check and the bind: the next attempt moves on.
        let mut tried = Vec::new();
        let got = on_free_port(None, |port| {
            tried.push(port);
            let first = tried.len() == 1;
            async move {
                if first {
                    Err(taken())
                } else {
                    Ok(handle(port))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(tried.len(), 2);
        assert_eq!(got.port, tried[1]);

        // Every attempt taken: the last error, after PORT_ATTEMPTS tries.
        let mut attempts = 0;
        let err = on_free_port(None, |_| {
            attempts += 1;
            async { Err::<ServerHandle, _>(taken()) }
        })
        .await
        .unwrap_err();
        assert_eq!(attempts, PORT_ATTEMPTS);
        assert!(err.to_string().contains("Address already in use"), "{err}");
    }
}

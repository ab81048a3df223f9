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

/// Runs `launch` on free ports until one is not taken.
pub async fn on_free_port<F, Fut>(mut launch: F) -> Result<ServerHandle, RuntimeError>
where
    F: FnMut(u16) -> Fut,
    Fut: Future<Output = Result<ServerHandle, Launch>>,
{
    let mut last = None;
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port()?;
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

fn free_port() -> Result<u16, RuntimeError> {
    let io = |source| RuntimeError::Io {
        action: "find a free port on",
        path: "127.0.0.1".into(),
        source,
    };
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

//! gRPC over a local socket: the daemon's listener as a tonic incoming stream,
//! and the client's channel.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::paths::{create_private_dir, describe_user, effective_uid, foreign_owner_for};

/// One accepted client connection.
pub struct LocalConn(Stream);

impl Connected for LocalConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for LocalConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for LocalConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Binds the daemon's socket at `path`, in a folder restricted to the owner.
///
/// The caller must hold the daemon lock: a leftover socket file from a dead
/// daemon is removed.
pub fn bind(path: &Path) -> std::io::Result<Listener> {
    if let Some(dir) = path.parent() {
        check_socket_folder(dir, effective_uid())?;
        create_private_dir(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let name = path.to_fs_name::<GenericFilePath>()?;
    ListenerOptions::new().name(name).create_tokio()
}

/// Another user's folder could hand the socket (and the clients talking to
/// it) to that user: a daemon run by `me` refuses it rather than take it over.
fn check_socket_folder(dir: &Path, me: u32) -> std::io::Result<()> {
    match foreign_owner_for(dir, me)? {
        None => Ok(()),
        Some(owner) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the socket folder {} belongs to {}, but sqlrsd runs as {}: its socket (and the clients using it) must not be in another user's folder; remove it, or set XDG_RUNTIME_DIR to a folder of your own",
                dir.display(),
                describe_user(owner),
                describe_user(me)
            ),
        )),
    }
}

/// Turns a listener into the stream of connections tonic serves.
///
/// Accepting runs in its own task; the stream ends when the server drops it.
pub fn incoming(listener: Listener) -> ReceiverStream<std::io::Result<LocalConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let conn = listener.accept().await.map(LocalConn);
            if tx.send(conn).await.is_err() {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Opens a channel to the daemon listening at `path`.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_owned();
    // The URI is required by the API but unused: the connector ignores it.
    Endpoint::from_static("http://sqlrsd.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let name = path.as_path().to_fs_name::<GenericFilePath>()?;
                let stream = Stream::connect(name).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_folder_of_another_user_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let me = effective_uid();
        assert!(check_socket_folder(tmp.path(), me).is_ok(), "ours");
        assert!(
            check_socket_folder(&tmp.path().join("new"), me).is_ok(),
            "not there yet"
        );
        let err = check_socket_folder(tmp.path(), me ^ 1).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        let text = err.to_string();
        assert!(
            text.contains(&tmp.path().display().to_string())
                && text.contains(&format!("uid {me}"))
                && text.contains("XDG_RUNTIME_DIR"),
            "{text}"
        );
    }
}

//! The daemon's Unix socket: where it is, binding it safely, and connecting to it.
//!
//! Path ([`crate::config::socket_path`]): `--socket`, else `$KUGETSU_SOCKET`, else `$XDG_RUNTIME_DIR/kugetsu/kugetsu.sock`, else
//! `<state_dir>/kugetsu.sock`. The socket is created with mode 0600 (set before `bind`, so no
//! umask race), and every connection's peer is checked with `SO_PEERCRED`: its uid must be
//! ours, and it must not be a shadow's process (see [`crate::daemon::peer`]).

use std::path::Path;

use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;

use crate::exit::CliError;

/// Connects to the daemon at `path`.
pub async fn connect(path: &Path) -> std::io::Result<Stream> {
    let name = path.to_fs_name::<GenericFilePath>()?;
    Stream::connect(name).await
}

/// How long a socket that still accepts connections is watched before it counts as another
/// daemon's.
const LIVE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds the daemon's socket at `path`, mode 0600. Refuses when another daemon listens there;
/// replaces a stale socket file left by a daemon that died.
///
/// A daemon killed while it was starting a worker leaves the listening socket open for a
/// moment in the half-started child (between its fork and its exec, which closes it), so a
/// socket that accepts a connection is tried again for [`LIVE_CHECK`]: only one that keeps
/// accepting is another daemon.
pub async fn bind(path: &Path) -> Result<Listener, CliError> {
    let watched = std::time::Instant::now();
    while connect(path).await.is_ok() {
        if watched.elapsed() >= LIVE_CHECK {
            return Err(CliError::Usage(format!(
                "a kugetsu daemon is already listening on {}",
                path.display()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", parent.display())))?;
    }
    let name = path
        .to_fs_name::<GenericFilePath>()
        .map_err(|e| CliError::Usage(format!("bad socket path {}: {e}", path.display())))?;
    ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .try_overwrite(true)
        .create_tokio()
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", path.display())))
}

/// Whether the peer of `stream` runs as our effective uid.
pub fn peer_is_owner(stream: &Stream) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    stream
        .peer_creds()
        .ok()
        .and_then(|creds| creds.euid())
        .is_some_and(|uid| uid == me)
}

/// The pid of the peer of `stream`, as the kernel saw it when it connected.
pub fn peer_pid(stream: &Stream) -> Option<u32> {
    stream
        .peer_creds()
        .ok()
        .and_then(|creds| creds.pid())
        .and_then(|pid| u32::try_from(pid).ok())
}

/// One direction of a connection. Both halves share the stream (`&Stream` reads and writes),
/// so each can live in its own task.
#[derive(Debug, Clone)]
pub struct Half(pub std::sync::Arc<Stream>);

/// Splits a stream into a reading and a writing [`Half`].
pub fn halves(stream: Stream) -> (Half, Half) {
    let shared = std::sync::Arc::new(stream);
    (Half(shared.clone()), Half(shared))
}

impl tokio::io::AsyncRead for Half {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut stream: &Stream = &self.0;
        std::pin::Pin::new(&mut stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Half {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut stream: &Stream = &self.0;
        std::pin::Pin::new(&mut stream).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut stream: &Stream = &self.0;
        std::pin::Pin::new(&mut stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut stream: &Stream = &self.0;
        std::pin::Pin::new(&mut stream).poll_shutdown(cx)
    }
}

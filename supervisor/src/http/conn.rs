//! Connections: at most [`MAX_CONNECTIONS`] at once, and none idle for more than [`IDLE`].
//!
//! The listener ([`Capped`]) accepts the next connection only once it holds a permit, which
//! the connection keeps until it closes; further clients wait in the kernel's backlog, so a
//! flood of connections costs the daemon a bounded number of file descriptors.
//!
//! A connection whose socket saw no byte read or written for [`IDLE`] while no request of it
//! is being handled is closed ([`Connection`]): an idle keep-alive connection, a client that
//! opened one and sent nothing (or half a request), a client that stopped reading a response
//! (an event stream writes a keep-alive comment every 15 s, so one that reads stays busy).
//! Whether a request is in progress comes from [`track`], the outermost middleware, through
//! the [`Activity`] every connection shares with its requests.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a connection may sit with no traffic and no request in progress.
pub const IDLE: Duration = Duration::from_secs(60);

/// A listener that serves at most [`MAX_CONNECTIONS`] connections at once.
#[derive(Debug)]
pub struct Capped {
    listener: TcpListener,
    permits: Arc<Semaphore>,
}

impl Capped {
    pub fn new(listener: TcpListener) -> Capped {
        Capped {
            listener,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl axum::serve::Listener for Capped {
    type Io = Connection<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection<TcpStream>, SocketAddr) {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            // The semaphore is never closed.
            return std::future::pending().await;
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (Connection::new(stream, Some(permit)), addr);
                }
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted.
                    tracing::warn!("HTTP accept failed: {}", crate::exit::describe_io(&e));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// What a connection and its requests share: when it last moved bytes, and how many of its
/// requests are being handled.
#[derive(Debug)]
pub struct Activity {
    /// When the connection was accepted, the origin of `last_ms`.
    origin: Instant,
    /// Milliseconds from `origin` to the last byte read or written.
    last_ms: AtomicU64,
    /// Requests of the connection being handled now.
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Release);
    }

    /// When the connection counts as idle if nothing happens before.
    fn idle_at(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Acquire)) + IDLE
    }
}

/// A connection's [`Activity`], handed to each of its requests as `ConnectInfo`.
#[derive(Debug, Clone)]
pub struct Peer(pub Arc<Activity>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Capped>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Capped>) -> Peer {
        Peer(stream.io().activity.clone())
    }
}

/// Counts a request as in progress until its handler answered (the outermost middleware).
pub async fn track(request: Request, next: Next) -> Response {
    let activity = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(Peer(a))| a.clone());
    let _busy = activity.map(Busy::enter);
    next.run(request).await
}

/// One request in progress; dropping it (even when the request is abandoned) ends it.
struct Busy(Arc<Activity>);

impl Busy {
    fn enter(activity: Arc<Activity>) -> Busy {
        activity.busy.fetch_add(1, Ordering::AcqRel);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted connection: its stream, its permit, and its idle timer.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    _permit: Option<OwnedSemaphorePermit>,
    activity: Arc<Activity>,
    /// Fires at the earliest moment the connection may be idle; checked, then re-armed.
    timer: Pin<Box<Sleep>>,
}

impl<S> Connection<S> {
    pub fn new(stream: S, permit: Option<OwnedSemaphorePermit>) -> Connection<S> {
        let activity = Arc::new(Activity::new());
        let timer = Box::pin(tokio::time::sleep_until(activity.idle_at()));
        Connection {
            stream,
            _permit: permit,
            activity,
            timer,
        }
    }

    /// Called when the stream is not ready: an error once the connection has been idle for
    /// [`IDLE`], else the timer is armed so that this task is woken to look again.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let idle_at = self.activity.idle_at();
            if idle_at <= Instant::now() && self.activity.busy.load(Ordering::Acquire) == 0 {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "idle HTTP connection closed",
                )));
            }
            let next = idle_at.max(Instant::now() + Duration::from_millis(10));
            self.timer.as_mut().reset(next);
        }
    }

    /// Records traffic when `moved` bytes went through.
    fn moved(&self, moved: bool) {
        if moved {
            self.activity.touch();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Connection<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let moved = buf.filled().len() > before;
                self.moved(moved);
                Poll::Ready(result)
            }
            Poll::Pending => self.check_idle(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Connection<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                self.moved(matches!(result, Ok(n) if n > 0));
                Poll::Ready(result)
            }
            Poll::Pending => self.check_idle(cx).map(|r| r.map(|()| 0)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => self.check_idle(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_no_traffic_and_no_request_is_closed_after_idle() {
        let (client, server) = tokio::io::duplex(64);
        let mut conn = Connection::new(server, None);
        let mut client = client;
        let mut buf = [0u8; 8];
        // Traffic keeps it open.
        tokio::time::advance(IDLE / 2).await;
        client.write_all(b"GET").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 3);
        tokio::time::advance(IDLE / 2).await;
        client.write_all(b" /").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 2);
        // A request in progress keeps it open however long it takes.
        let busy = Busy::enter(conn.activity.clone());
        let waited = tokio::time::timeout(IDLE * 3, conn.read(&mut buf)).await;
        assert!(waited.is_err(), "closed while a request was in progress");
        drop(busy);
        // Then nothing for IDLE: closed.
        let error = tokio::time::timeout(IDLE * 2, conn.read(&mut buf))
            .await
            .expect("an idle connection stays open")
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_closed_after_idle() {
        let (_client, server) = tokio::io::duplex(16);
        let mut conn = Connection::new(server, None);
        let error = tokio::time::timeout(IDLE * 2, conn.write_all(&[0u8; 1024]))
            .await
            .expect("a stalled write goes on")
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    }
}

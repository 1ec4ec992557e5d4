//! Binding the HTTP server, capping its connections, routing, and stopping it.
//!
//! The address is bound before the daemon takes its socket, so a bad `--http` stops the
//! daemon from starting (exit 2, with the reason). A non-loopback address gets a warning: the
//! token is all that guards the daemon there, over plain HTTP. The token itself is never
//! logged; the log names the file that holds it.
//!
//! Limits: at most [`conn::MAX_CONNECTIONS`] connections at once (more wait in the kernel's
//! backlog), none idle for more than [`conn::IDLE`], request bodies of at most [`MAX_BODY`] bytes (413), at most
//! [`crate::http::sse::MAX_STREAMS`] event streams (503).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::daemon::command::Command;
use crate::exit::CliError;
use crate::http::auth::{self, Token};
use crate::http::conn::{self, Capped};
use crate::http::{AppState, api, dashboard, error, fleet, metrics, sse};
use crate::task::record::StateDir;

/// Largest request body read.
pub const MAX_BODY: usize = 1024 * 1024;
/// How long open connections get to finish when the daemon stops.
const DRAIN: Duration = Duration::from_secs(2);

/// A bound address with its token, not serving yet.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
    token: Token,
}

/// Binds `addr` and reads (or makes) the token of the state dir `root`.
pub async fn bind(addr: &str, root: &std::path::Path) -> Result<Bound, CliError> {
    let token = auth::load_or_create(root)?;
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        CliError::Usage(format!(
            "cannot listen for HTTP on {addr}: {}",
            crate::exit::describe_io(&e)
        ))
    })?;
    let addr = listener.local_addr().map_err(|e| {
        CliError::Usage(format!(
            "cannot listen for HTTP on {addr}: {}",
            crate::exit::describe_io(&e)
        ))
    })?;
    Ok(Bound {
        listener,
        addr,
        token,
    })
}

/// The running server.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: CancellationToken,
    server: JoinHandle<()>,
    sampler: JoinHandle<()>,
}

impl Bound {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts serving requests to the actor at `daemon`.
    pub fn serve(self, daemon: mpsc::UnboundedSender<Command>, state: StateDir) -> HttpServer {
        let stop = CancellationToken::new();
        let token_file = auth::token_path(&state.root);
        let app = AppState::new(daemon, state, self.token, stop.clone());
        let sampler = tokio::spawn(fleet::sample(app.clone()));
        let router = router(app);
        let listener = Capped::new(self.listener);
        let shutdown = stop.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<conn::Peer>(),
            )
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
            if let Err(e) = served {
                tracing::error!("the HTTP server failed: {e}");
            }
        });
        if !self.addr.ip().is_loopback() {
            tracing::warn!(
                "the HTTP API listens on {}, which is not a loopback address: anyone who can reach it and has the token drives this daemon, over plain HTTP",
                self.addr
            );
        }
        tracing::info!(
            "HTTP API on http://{}/ (sign a browser in with http://{}/?token=TOKEN; the token is in {})",
            self.addr,
            self.addr,
            token_file.display()
        );
        HttpServer {
            addr: self.addr,
            stop,
            server,
            sampler,
        }
    }
}

impl HttpServer {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ends the event streams, lets requests in progress finish for a moment, then stops.
    pub async fn stop(self) {
        self.stop.cancel();
        let mut server = self.server;
        if tokio::time::timeout(DRAIN, &mut server).await.is_err() {
            server.abort();
        }
        self.sampler.abort();
    }
}

/// Every route, behind the token.
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/api/v1/tasks", get(api::list).post(api::submit))
        .route("/api/v1/tasks/{id}", get(api::get))
        .route("/api/v1/tasks/{id}/cancel", post(api::cancel))
        .route("/api/v1/tasks/{id}/steer", post(api::steer))
        .route("/api/v1/tasks/{id}/resume", post(api::resume))
        .route("/api/v1/tasks/{id}/merge", post(api::merge))
        .route(
            "/api/v1/tasks/{id}/diff",
            get(api::diff_get).post(api::diff_post),
        )
        .route("/api/v1/tasks/{id}/events", get(sse::task_events))
        .route("/api/v1/events", get(sse::all_events))
        .route("/api/v1/fleet", get(fleet::fleet))
        .route("/metrics", get(metrics::metrics))
        .merge(dashboard::routes())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(conn::track))
        .with_state(app)
}

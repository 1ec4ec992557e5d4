//! [`AppState`]: what every HTTP handler shares.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::daemon::command::Command;
use crate::daemon::stats::FleetStats;
use crate::http::auth::Token;
use crate::http::error::ApiError;
use crate::http::fleet::History;
use crate::rpc::{Call, Method, RpcError};
use crate::task::record::StateDir;

/// The state of the HTTP server, cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The actor's inbox: every call goes through it, as a socket connection's do.
    daemon: mpsc::UnboundedSender<Command>,
    /// For the work done outside the actor (diff, merge, clean), as a connection does it.
    state: StateDir,
    /// What a request must present (its `Debug` hides it).
    token: Token,
    /// The fleet's recent history, filled by the sampler task.
    history: History,
    /// Cancelled when the daemon stops: event streams end and the sampler returns.
    stop: CancellationToken,
    /// One permit per open event stream, so streams (each may hold a subscriber's backlog)
    /// stay few whatever clients do.
    streams: Arc<Semaphore>,
}

impl AppState {
    /// The state of a server talking to the actor at `daemon`.
    pub fn new(
        daemon: mpsc::UnboundedSender<Command>,
        state: StateDir,
        token: Token,
        stop: CancellationToken,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                daemon,
                state,
                token,
                history: History::default(),
                stop,
                streams: Arc::new(Semaphore::new(crate::http::sse::MAX_STREAMS)),
            }),
        }
    }

    /// Makes one JSON-RPC call in process, through the same code as the socket; the result is
    /// the JSON the socket would answer.
    pub async fn call(&self, call: Call) -> Result<Value, RpcError> {
        crate::daemon::connection::dispatch(call, &self.inner.daemon, &self.inner.state).await
    }

    /// Makes one call of method `M` with typed params and result.
    pub async fn call_method<M: Method>(&self, params: &M::Params) -> Result<M::Result, RpcError> {
        let params = serde_json::to_value(params)
            .map_err(|e| RpcError::new(crate::rpc::INTERNAL_ERROR, e.to_string()))?;
        let value = self.call(Call::parse(M::NAME, Some(params))?).await?;
        serde_json::from_value(value)
            .map_err(|e| RpcError::new(crate::rpc::INTERNAL_ERROR, e.to_string()))
    }

    /// The pool, the queue and the daemon's counters now.
    pub async fn fleet(&self) -> Result<FleetStats, RpcError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .daemon
            .send(Command::Fleet { reply })
            .map_err(|_| RpcError::shutting_down())?;
        answer.await.map_err(|_| RpcError::shutting_down())
    }

    /// The fleet's history, oldest first.
    pub fn history(&self) -> &History {
        &self.inner.history
    }

    /// The actor's inbox (for subscriptions).
    pub fn daemon(&self) -> &mpsc::UnboundedSender<Command> {
        &self.inner.daemon
    }

    /// The token requests must present.
    pub fn token(&self) -> &Token {
        &self.inner.token
    }

    /// Cancelled when the daemon stops.
    pub fn stopping(&self) -> &CancellationToken {
        &self.inner.stop
    }

    /// A place for one more event stream, or 503 when [`crate::http::sse::MAX_STREAMS`] are
    /// open.
    pub fn stream_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.inner.streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                crate::rpc::INTERNAL_ERROR,
                format!(
                    "too many event streams open (at most {}); close one and try again",
                    crate::http::sse::MAX_STREAMS
                ),
            )
        })
    }
}

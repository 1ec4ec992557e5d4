//! The daemon's HTTP API (`kugetsu serve --http ADDR`, config `http`): REST, Server-Sent
//! Events, Prometheus metrics and the dashboard, on the daemon's own tokio runtime (axum).
//!
//! Every request goes through the same code as the JSON-RPC method it mirrors
//! ([`crate::daemon::connection::dispatch`]); event streams use the same bounded
//! subscriptions as the socket ([`crate::daemon::subscribers`]). The user reference is
//! `docs/http.md`.
//!
//! - [`server`]: binding, the connection cap, the router, shutdown.
//! - [`conn`]: the connection cap and the idle timeout.
//! - [`auth`]: the bearer token file, the sign-in cookie, the middleware that checks them.
//! - [`state`]: [`AppState`], what every handler shares, and its way to make calls.
//! - [`api`]: the REST endpoints under `/api/v1`.
//! - [`sse`]: the event streams (`/api/v1/tasks/ID/events`, `/api/v1/events`).
//! - [`fleet`]: the fleet's history (sampled every 2 s) and `/api/v1/fleet`.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`error`]: JSON errors and their HTTP statuses.
//! - [`dashboard`]: the web dashboard at `/`.

pub mod api;
pub mod auth;
pub mod conn;
pub mod dashboard;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod server;
pub mod sse;
pub mod state;

pub use state::AppState;

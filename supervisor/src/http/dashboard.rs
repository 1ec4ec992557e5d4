//! The web dashboard at `/`: its routes are mounted behind the same authentication as the
//! API (see [`crate::http::auth`]).

use axum::Router;

use crate::http::AppState;

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}

//! JSON errors: `{"error": {"code", "message", "data"?}}`, the code being the JSON-RPC one
//! the same request gets on the socket, with a fitting HTTP status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::rpc::{self, RpcError};

/// Seconds a client told `queue_full` or `shutting_down` waits before trying again.
const RETRY_AFTER_SECS: &str = "5";

/// An error answered as JSON with an HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: RpcError,
}

impl ApiError {
    /// An error with an explicit status.
    pub fn new(status: StatusCode, code: i64, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: RpcError::new(code, message),
        }
    }

    /// A 400 for a request whose parameters or body are unusable.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, rpc::INVALID_PARAMS, message)
    }
}

/// The HTTP status of a JSON-RPC error code.
pub fn status_of(code: i64) -> StatusCode {
    match code {
        rpc::PARSE_ERROR | rpc::INVALID_REQUEST | rpc::INVALID_PARAMS => StatusCode::BAD_REQUEST,
        rpc::NOT_FOUND | rpc::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        rpc::INVALID_STATE => StatusCode::CONFLICT,
        rpc::QUEUE_FULL => StatusCode::TOO_MANY_REQUESTS,
        rpc::SHUTTING_DOWN => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<RpcError> for ApiError {
    fn from(error: RpcError) -> ApiError {
        ApiError {
            status: status_of(error.code),
            error,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error });
        let retry = matches!(self.error.code, rpc::QUEUE_FULL | rpc::SHUTTING_DOWN);
        let mut response = (self.status, axum::Json(body)).into_response();
        if retry {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// Unknown paths: 404.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        rpc::METHOD_NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

/// A known path with the wrong method: 405.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        rpc::INVALID_REQUEST,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

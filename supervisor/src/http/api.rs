//! The REST endpoints under `/api/v1`: each builds the JSON-RPC call its method takes and
//! makes it through [`AppState::call`], the socket's own code.
//!
//! Bodies are JSON objects (at most [`crate::http::server::MAX_BODY`] bytes); an empty body
//! reads as `{}`. The task id comes from the path; unknown fields are refused as the socket
//! refuses them.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::rpc::{self, Call, Method as _};

/// A body as a JSON object (`{}` when empty).
fn object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|e| {
        let message = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "the request body is over {} bytes",
                crate::http::server::MAX_BODY
            )
        } else {
            e.body_text()
        };
        ApiError::new(e.status(), rpc::INVALID_REQUEST, message)
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::bad_request(format!(
            "the body must be a JSON object, not {}",
            kind_of(&other)
        ))),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            rpc::PARSE_ERROR,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Makes the call `method` with `params`, answering its result as JSON.
async fn call(app: &AppState, method: &str, params: Map<String, Value>) -> Result<Value, ApiError> {
    let call = Call::parse(method, Some(Value::Object(params)))?;
    Ok(app.call(call).await?)
}

/// Adds the path's task id to a body that must not name one itself.
fn with_task(mut params: Map<String, Value>, id: String) -> Result<Map<String, Value>, ApiError> {
    if params.contains_key("task") || params.contains_key("tasks") {
        return Err(ApiError::bad_request(
            "the task comes from the path; leave task out of the body",
        ));
    }
    params.insert("task".to_owned(), Value::String(id));
    Ok(params)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// `GET /api/v1/tasks` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Every finished task, not only the most recent (as `list` with `all`).
    #[serde(default)]
    all: bool,
}

/// `GET /api/v1/tasks`: `list`'s result, `{"tasks": [...]}`.
pub async fn list(
    State(app): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let mut params = Map::new();
    params.insert("all".to_owned(), Value::Bool(q.all));
    Ok(Json(call(&app, rpc::List::NAME, params).await?))
}

/// `POST /api/v1/tasks`: `submit`; 201 with `{"task": ID}` and the task's address.
pub async fn submit(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let result = call(&app, rpc::Submit::NAME, object(body)?).await?;
    let mut response = (StatusCode::CREATED, Json(&result)).into_response();
    if let Some(id) = result.get("task").and_then(Value::as_str)
        && let Ok(location) = HeaderValue::from_str(&format!("/api/v1/tasks/{id}"))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /api/v1/tasks/ID`: `get`'s task summary.
pub async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        call(&app, rpc::Get::NAME, with_task(Map::new(), id)?).await?,
    ))
}

/// `POST /api/v1/tasks/ID/cancel`.
pub async fn cancel(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = with_task(object(body)?, id)?;
    Ok(Json(call(&app, rpc::Cancel::NAME, params).await?))
}

/// `POST /api/v1/tasks/ID/steer` `{text}`.
pub async fn steer(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = with_task(object(body)?, id)?;
    Ok(Json(call(&app, rpc::Steer::NAME, params).await?))
}

/// `POST /api/v1/tasks/ID/resume` `{budget_tokens?, budget_usd?}`.
pub async fn resume(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = with_task(object(body)?, id)?;
    Ok(Json(call(&app, rpc::Resume::NAME, params).await?))
}

/// `POST /api/v1/tasks/ID/merge` `{into?, squash?, test?}`: `merge` of this one task; the
/// merge report (a refused task is in `refused`, with a 200: the request itself worked).
pub async fn merge(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut params = with_task(object(body)?, id)?;
    let task = params.remove("task").unwrap_or(Value::Null);
    params.insert("tasks".to_owned(), Value::Array(vec![task]));
    Ok(Json(call(&app, rpc::Merge::NAME, params).await?))
}

/// `GET /api/v1/tasks/ID/diff` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    #[serde(default)]
    stat: bool,
}

/// `GET /api/v1/tasks/ID/diff?stat=true`: `diff`'s result.
pub async fn diff_get(
    State(app): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let mut params = with_task(Map::new(), id)?;
    params.insert("stat".to_owned(), Value::Bool(q.stat));
    Ok(Json(call(&app, rpc::Diff::NAME, params).await?))
}

/// `POST /api/v1/tasks/ID/diff` `{stat?}`.
pub async fn diff_post(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = with_task(object(body)?, id)?;
    Ok(Json(call(&app, rpc::Diff::NAME, params).await?))
}

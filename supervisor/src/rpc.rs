//! The daemon's JSON-RPC 2.0 vocabulary: one message per line over the Unix socket.
//!
//! Methods: `submit`, `list`, `get`, `cancel`, `steer`, `subscribe` (events then arrive as
//! `event` notifications), `shutdown`, and `clean`. Errors carry a numeric code and, for the
//! ones a client must act on, a stable message: [`QUEUE_FULL`] is always `"queue_full"`.

use std::path::PathBuf;

use kugetsu_protocol::{EventEnvelope, Priority, Usage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest request line the daemon reads; longer ones get [`INVALID_REQUEST`].
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The JSON text was not valid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// The message is not a valid request (or is too large).
pub const INVALID_REQUEST: i64 = -32600;
/// No such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// The params do not fit the method, or a value in them is unusable.
pub const INVALID_PARAMS: i64 = -32602;
/// The daemon failed internally.
pub const INTERNAL_ERROR: i64 = -32603;
/// The queue is at capacity: retry later. Message: `queue_full`.
pub const QUEUE_FULL: i64 = -32001;
/// The daemon is shutting down and takes no new work. Message: `shutting_down`.
pub const SHUTTING_DOWN: i64 = -32002;
/// No task has that id. Message: `not_found`.
pub const NOT_FOUND: i64 = -32004;
/// The task is in a state that does not allow the request (e.g. cancel after it finished).
pub const INVALID_STATE: i64 = -32005;

/// A request as received.
#[derive(Debug, Deserialize)]
pub struct Request {
    pub jsonrpc: String,
    /// Absent for notifications (which get no response).
    #[serde(default)]
    pub id: Option<Value>,
    pub method: String,
    #[serde(default)]
    pub params: Option<Value>,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with a code and message.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Adds structured detail.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// A response line.
pub fn response(id: Value, result: Result<Value, RpcError>) -> Value {
    let mut message = serde_json::Map::new();
    message.insert("jsonrpc".to_owned(), Value::from("2.0"));
    message.insert("id".to_owned(), id);
    match result {
        Ok(result) => message.insert("result".to_owned(), result),
        Err(error) => message.insert(
            "error".to_owned(),
            serde_json::to_value(error).unwrap_or(Value::Null),
        ),
    };
    Value::Object(message)
}

/// The notification carrying one event to a subscriber.
pub fn event_notification(envelope: &EventEnvelope) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "method": "event", "params": envelope})
}

/// `submit` params. Paths must be absolute: the daemon does not share the client's cwd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitParams {
    pub prompt: String,
    pub repo: PathBuf,
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default)]
    pub no_worktree: bool,
    /// `PROVIDER/MODEL`; the daemon's configured model when absent.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_turns: Option<u32>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub mem_limit: Option<u64>,
    #[serde(default)]
    pub priority: Priority,
}

/// Params naming one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskParams {
    pub task: String,
}

/// `steer` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerParams {
    pub task: String,
    pub text: String,
}

/// `subscribe` params: one task's events (from `after_seq`), or every task's when `task` is
/// absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeParams {
    #[serde(default)]
    pub task: Option<String>,
    /// Replay events with a larger `seq` first (0 = all of them).
    #[serde(default)]
    pub after_seq: u64,
}

/// `shutdown` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownParams {
    /// Finish running and queued tasks first, taking no new ones.
    #[serde(default)]
    pub drain: bool,
}

/// `clean` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanParams {
    /// Also forget the finished tasks' records (their branches are always kept).
    #[serde(default)]
    pub purge: bool,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
}

impl TaskStatus {
    /// Whether the task has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskStatus::Queued | TaskStatus::Running)
    }

    /// The name shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::TimedOut => "timed_out",
        }
    }
}

/// What `list` and `get` say about a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub id: String,
    pub status: TaskStatus,
    pub priority: Priority,
    pub model: String,
    pub prompt: String,
    pub repo: PathBuf,
    pub branch: Option<String>,
    pub worktree: Option<String>,
    /// RFC 3339 creation time.
    pub created: String,
    /// The current worker's pid while running.
    pub pid: Option<u32>,
    pub attempt: u32,
    pub turns: u32,
    pub usage: Usage,
    pub restarts: u32,
    /// Memory of the worker and its tools, while running.
    pub rss_bytes: Option<u64>,
    pub mem_limit: u64,
    pub result: Option<String>,
    pub error: Option<String>,
}

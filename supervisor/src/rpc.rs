//! The daemon's JSON-RPC 2.0 vocabulary: one message per line over the Unix socket.
//!
//! Methods: `submit`, `list`, `get`, `events`, `cancel`, `steer`, `subscribe` (events then
//! arrive as `event` notifications), `shutdown`, `clean`, `diff` and `merge`; each is a [`Method`] type naming
//! its params and result, so the daemon and the client share one typed vocabulary. Errors carry
//! a numeric code and, for the ones a client must act on, a stable message: [`QUEUE_FULL`] is
//! always `"queue_full"`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kugetsu_protocol::{EventEnvelope, Priority, Usage};

pub use crate::land::api::{DiffParams, DiffResult, MergeParams, MergeReport, MergedMarker};
use serde::de::DeserializeOwned;
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
    /// Absent for notifications (which get no response). A present `null` is a request
    /// (JSON-RPC 2.0 allows it, though discouraged) and is answered with `id: null`.
    #[serde(default, deserialize_with = "present")]
    pub id: Option<Value>,
    pub method: String,
    #[serde(default)]
    pub params: Option<Value>,
}

/// Reads a member that is there, even as `null`, as `Some` (absence is the `default`).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// Most requests one batch may hold; a longer batch is refused whole with [`INVALID_REQUEST`].
pub const MAX_BATCH: usize = 1024;

/// A request as sent by a client.
#[derive(Debug, Serialize)]
pub struct Outgoing<'a, P> {
    pub jsonrpc: &'static str,
    pub id: u64,
    pub method: &'static str,
    pub params: &'a P,
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

    /// `not_found` for task `task`.
    pub fn not_found(task: &str) -> Self {
        RpcError::new(NOT_FOUND, "not_found").with_data(serde_json::json!({ "task": task }))
    }

    /// `shutting_down`.
    pub fn shutting_down() -> Self {
        RpcError::new(SHUTTING_DOWN, "shutting_down")
    }

    /// The answer for a [`CliError`](crate::exit::CliError) met while serving a request: bad
    /// input stays a params error, anything else is the daemon's failure.
    pub fn from_cli(error: &crate::exit::CliError) -> Self {
        use crate::exit::CliError;
        match error {
            CliError::Usage(text) => RpcError::new(INVALID_PARAMS, text.clone()),
            CliError::QueueFull(_) => RpcError::new(QUEUE_FULL, "queue_full"),
            CliError::Failed(text) => RpcError::new(INTERNAL_ERROR, text.clone()),
        }
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
    serde_json::json!({"jsonrpc": "2.0", "method": EVENT_NOTIFICATION, "params": envelope})
}

/// The method name of event notifications.
pub const EVENT_NOTIFICATION: &str = "event";
/// The method name of the last notification of a subscription the daemon ended.
pub const SUBSCRIPTION_ENDED: &str = "subscription_ended";

/// Why the daemon ended a subscription, sent as its last notification: the subscriber fell
/// behind by more than the daemon buffers for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionEnded {
    /// `lagged`.
    pub reason: String,
    /// What to do, for a person.
    pub message: String,
    /// For a one-task subscription: subscribe again with this `after_seq` to miss nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// For an all-tasks subscription: the last `seq` delivered, per task.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delivered: BTreeMap<String, u64>,
}

/// One method of the vocabulary: its name, its params and its result, shared by the daemon
/// (which decodes params and encodes results) and the client (which does the opposite).
pub trait Method {
    /// The JSON-RPC method name.
    const NAME: &'static str;
    /// What the request carries.
    type Params: Serialize + DeserializeOwned;
    /// What a successful response carries.
    type Result: Serialize + DeserializeOwned;
}

macro_rules! methods {
    ($($(#[$doc:meta])* $ty:ident = $name:literal, $params:ty => $result:ty;)*) => {
        $(
            $(#[$doc])*
            #[derive(Debug)]
            pub enum $ty {}
            impl Method for $ty {
                const NAME: &'static str = $name;
                type Params = $params;
                type Result = $result;
            }
        )*

        /// A decoded request: one variant per method.
        #[derive(Debug)]
        pub enum Call {
            $($ty($params),)*
        }

        impl Call {
            /// Decodes `method` and its `params` (absent params read as `{}`).
            pub fn parse(method: &str, params: Option<Value>) -> Result<Call, RpcError> {
                let params = match params {
                    None | Some(Value::Null) => Value::Object(Default::default()),
                    Some(value) => value,
                };
                match method {
                    $($name => serde_json::from_value(params).map(Call::$ty).map_err(|e| {
                        RpcError::new(INVALID_PARAMS, format!("invalid params for {method}: {e}"))
                    }),)*
                    other => Err(RpcError::new(
                        METHOD_NOT_FOUND,
                        format!("unknown method {other:?}"),
                    )),
                }
            }
        }
    };
}

methods! {
    /// Queue a task.
    Submit = "submit", SubmitParams => Submitted;
    /// The live tasks and the most recent finished ones.
    List = "list", ListParams => TaskList;
    /// One task.
    Get = "get", TaskParams => TaskSummary;
    /// A task's events so far.
    Events = "events", EventsParams => EventList;
    /// Cancel a queued or running task.
    Cancel = "cancel", TaskParams => Cancelled;
    /// Hand a message to a task's model.
    Steer = "steer", SteerParams => Steered;
    /// Continue a paused task, optionally with a new budget.
    Resume = "resume", ResumeParams => Resumed;
    /// Follow events (they arrive as `event` notifications after the response).
    Subscribe = "subscribe", SubscribeParams => Subscribed;
    /// Stop the daemon.
    Shutdown = "shutdown", ShutdownParams => Stopping;
    /// Remove finished tasks' worktrees (and records, with `purge`).
    Clean = "clean", CleanParams => Cleaned;
    /// A task's changes against the commit it started from.
    Diff = "diff", DiffParams => DiffResult;
    /// Land finished tasks, in order, onto a branch.
    Merge = "merge", MergeParams => MergeReport;
}

/// `submit`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub task: String,
}

/// `list` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Every finished task, not only the most recent ones.
    #[serde(default)]
    pub all: bool,
}

/// `list`'s result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskList {
    pub tasks: Vec<TaskSummary>,
    /// In a cluster, its nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSummary>,
}

/// One node of a cluster, as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub id: String,
    /// Whether it renewed its leases lately (and did not stop).
    pub up: bool,
    /// Shadows it runs, by its last report.
    pub running: u32,
    pub max_shadows: u32,
    /// Milliseconds since it was last heard from.
    pub seen_ms_ago: u64,
}

/// `events` params: one page of a task's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    pub task: String,
    /// Only events with a larger `seq` (0: from the start).
    #[serde(default)]
    pub after_seq: u64,
    /// At most this many events (the daemon also stops near [`EVENTS_PAGE_BYTES`]).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// Roughly the most bytes of events one `events` response carries; `more` says to ask again.
pub const EVENTS_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// `events`' result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<EventEnvelope>,
    /// More events follow the last one here: ask again with its `seq` as `after_seq`.
    #[serde(default)]
    pub more: bool,
}

/// `cancel`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    pub task: String,
    /// `cancelled` (it had not started) or `cancelling` (the shadow is stopping).
    pub status: String,
}

/// `steer`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steered {
    pub task: String,
}

/// `subscribe`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    pub subscribed: bool,
}

/// `shutdown`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    pub stopping: bool,
    pub drain: bool,
}

/// `clean`'s result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleaned {
    /// Tasks whose worktree was removed (their branches stay).
    pub removed_worktrees: Vec<String>,
    /// Worktrees kept because they hold work that is not committed, and records kept because
    /// their branch holds commits that have not landed, with why.
    #[serde(default)]
    pub kept: Vec<Kept>,
    /// Task records removed (`purge`).
    #[serde(default)]
    pub purged: Vec<String>,
}

/// A worktree or record `clean` or the retention policy left in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub task: String,
    pub reason: String,
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
    /// `workspace` or `off`; the daemon's `sandbox` setting when absent.
    #[serde(default)]
    pub sandbox: Option<kugetsu_protocol::SandboxMode>,
    /// `on` or `off`; the daemon's `network` setting when absent.
    #[serde(default)]
    pub network: Option<kugetsu_protocol::NetworkMode>,
    #[serde(default)]
    pub priority: Priority,
    /// The task pauses before a model request that would take its tokens past this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    /// The same in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// The MCP servers (`[mcp.NAME]` names) the shadow uses; every configured one when
    /// absent, none for `["none"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<Vec<String>>,
}

/// `resume` params: a paused task, and optionally a new budget.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeParams {
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
}

/// `resume`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    pub task: String,
    /// `queued`: it continues when the pool has room.
    pub status: String,
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
    /// Running, its next model request waiting for a permit (rate limit, daily budget).
    Waiting,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
    /// Stopped by its budget; `resume` continues it.
    Paused,
}

impl TaskStatus {
    /// Whether the task has ended.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            TaskStatus::Queued | TaskStatus::Running | TaskStatus::Waiting
        )
    }

    /// The name shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Waiting => "waiting",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::TimedOut => "timed_out",
            TaskStatus::Paused => "paused",
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
    /// The tool running now, while running.
    #[serde(default)]
    pub tool: Option<String>,
    pub result: Option<String>,
    pub error: Option<String>,
    /// Why the task waits (status `waiting`, or `queued` behind the daily budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// What the conflict radar reported on it while it ran: per other task id (or `base`),
    /// the conflicting files.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conflicts: BTreeMap<String, Vec<String>>,
    /// Where `kugetsu merge` landed it, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<MergedMarker>,
    /// In a cluster, the node that runs it (or ran it last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_id_is_a_request_and_a_missing_one_a_notification() {
        let request: Request =
            serde_json::from_str(r#"{"jsonrpc":"2.0","id":null,"method":"list"}"#).unwrap();
        assert_eq!(request.id, Some(Value::Null));
        let request: Request =
            serde_json::from_str(r#"{"jsonrpc":"2.0","id":7,"method":"list"}"#).unwrap();
        assert_eq!(request.id, Some(Value::from(7)));
        let notification: Request =
            serde_json::from_str(r#"{"jsonrpc":"2.0","method":"list"}"#).unwrap();
        assert_eq!(notification.id, None);
    }
}

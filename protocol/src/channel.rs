//! The supervisor <-> worker channel: one JSON object per line on the worker's stdin/stdout.
//!
//! Handshake, written down where it lives:
//! 1. The worker starts and sends [`WorkerMessage::Hello`] with [`PROTOCOL_VERSION`].
//! 2. The supervisor checks the version and answers [`SupervisorMessage::Start`], or closes the
//!    worker's stdin (and kills it) when the version differs or no hello came within
//!    [`HELLO_TIMEOUT`].
//! 3. From then on the worker streams [`WorkerMessage::Event`]s and heartbeats, ending with a
//!    `finished` event; the supervisor may send `steer`, `cancel` and `shutdown` at any time.
//! 4. When the task is governed ([`TaskSpec::governed`]), every model request waits for a
//!    permit: the worker sends [`WorkerMessage::Permit`] and sends nothing to the model until
//!    [`SupervisorMessage::Grant`] (or [`SupervisorMessage::Deny`]) with the same id comes
//!    back; then it reports the response's status and rate-limit headers
//!    ([`WorkerMessage::PermitHead`]) and, once the request is over, its usage
//!    ([`WorkerMessage::PermitEnd`]). Every permit granted ends with exactly one `permit_end`.
//! 5. When the tools are gated ([`TaskSpec::tool_gate`], a daemon that is a node of a
//!    cluster), every tool call waits for the supervisor's go-ahead: the worker journals the
//!    intent durably, sends `tool_start`, and runs nothing until [`SupervisorMessage::Proceed`]
//!    with the call's id comes back (the supervisor sends it once the intent is in the
//!    cluster's database, so a node that takes the task over knows the call may have run). The
//!    wait has no timeout; `cancel`, `shutdown` and `steer` act as at any other time, and a
//!    `proceed` for another call is ignored. A resumed worker's re-announced calls never run
//!    again and wait for nothing.
//!
//! A worker whose stdin reaches end-of-file treats it as `cancel`: nobody is listening any more.
//! While a gated tool call waits for its `proceed`, it treats it as `shutdown` instead: the
//! supervisor is gone and another node may take the task over, so the worker records nothing
//! more and exits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::{Event, Usage};
use crate::sandbox::SandboxPolicy;

/// Version of the worker channel. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 2;

/// How long a supervisor waits for a worker's `hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What a shadow should do. Sent once, in `start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Task id (also the name of the task directory and the branch suffix).
    pub id: String,
    /// The user's request.
    pub prompt: String,
    /// `PROVIDER/MODEL`.
    pub model: String,
    /// The turn budget; the task fails once it is spent.
    pub max_turns: u32,
    /// Wall-clock deadline as milliseconds since the Unix epoch, if the task has a timeout.
    #[serde(default)]
    pub deadline_unix_ms: Option<u64>,
    /// `<state_dir>/tasks/<id>`: where the worker keeps its journal and full tool outputs.
    pub task_dir: String,
    /// Token budget the worker keeps its context under, if not the model's default.
    #[serde(default)]
    pub context_window: Option<u64>,
    /// Model that writes compaction summaries, if not the task's model.
    #[serde(default)]
    pub compaction_model: Option<String>,
    /// `stream_timeout` in milliseconds: how long a model response may go without a content
    /// byte before the request is abandoned and retried. `None` (or absent, from an older
    /// supervisor) means the worker's default, 120 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_timeout_ms: Option<u32>,
    /// The shadow's memory limit in bytes (`mem_limit`, see docs/daemon.md), over the worker and the
    /// tool processes it started. The worker kills a tool command that would take the shadow
    /// past it; the supervisor enforces it too, more slowly, and restarts a worker that is over
    /// it by itself. `None` (or absent, from an older supervisor) leaves tools unwatched by the
    /// worker; `0` means the same.
    #[serde(default)]
    pub mem_limit_bytes: Option<u64>,
    /// The sandbox the shadow's tool processes run in. Absent (an older supervisor) means
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Box<SandboxPolicy>>,
    /// Provider variables (API keys, base URLs) for the worker's own model requests: they come
    /// over the channel so the worker's environment, readable through `/proc`, holds none.
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
    /// Whether model requests wait for the supervisor's permits (the governor).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub governed: bool,
    /// The task stops as `paused` before a model request that would take its tokens (input
    /// plus output, all requests) past this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    /// The same in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// Prices of the models the task uses (`PROVIDER/MODEL` -> price), as the supervisor
    /// resolved them from its config and the built-in table.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub prices: std::collections::BTreeMap<String, crate::price::Price>,
    /// The MCP servers whose tools the shadow offers its model (see [`crate::mcp`]). Absent
    /// (an older supervisor, or a task that uses none) means none: the worker starts nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp: Vec<crate::mcp::McpServer>,
    /// Whether every tool call waits for [`SupervisorMessage::Proceed`] after its `tool_start`
    /// (a cluster node: the intent must be in the database before the tool can have an
    /// effect). Absent means false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tool_gate: bool,
}

/// What a worker asks a permit for: one request to a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermitRequest {
    /// Unique per worker; the answer and the reports carry it.
    pub id: u64,
    /// The provider's name (`openai`, `anthropic`, ...).
    pub provider: String,
    /// The provider account the request goes to: provider, base URL and a fingerprint of the
    /// key (never the key). Requests to one account share its limits.
    pub account: String,
    /// The request's estimated input tokens.
    pub input_tokens: u64,
    /// The most tokens the request lets the model produce.
    pub max_output_tokens: u64,
}

/// The rate-limit headers of a response (`x-ratelimit-*`, `anthropic-ratelimit-*`,
/// `retry-after`, `retry-after-ms`), lower-case names, as received.
pub type RateHeaders = std::collections::BTreeMap<String, String>;

/// Provider variables (API keys, base URLs) handed to the worker over the channel, so they
/// are never in its environment where a tool could read them through `/proc`.
///
/// `Debug` prints the names only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub std::collections::BTreeMap<String, String>);

impl Secrets {
    /// The value of `name`, if the supervisor sent one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Whether no variable was sent.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// What a worker is doing, reported in heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Handshake done, loop not yet running.
    Starting,
    /// Waiting for the model's response to begin.
    WaitingModel,
    /// Receiving the model's streamed response.
    Streaming,
    /// Running a tool.
    Tool,
    /// Summarising older turns.
    Compacting,
}

/// Messages from supervisor to worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SupervisorMessage {
    /// Answer to `hello`: run this task, from its journal when `resume` is true.
    Start { task: Box<TaskSpec>, resume: bool },
    /// A message from the user, to be handed to the model at the next safe point.
    Steer { text: String },
    /// Stop the task: kill any running tool, emit `finished` with status `cancelled`, exit.
    Cancel,
    /// Exit as soon as possible without a `finished` event (the supervisor will resume it).
    Shutdown,
    /// The request `id` may go to the model now.
    Grant { id: u64 },
    /// The request `id` must not be sent: `reason` says why. With `pause`, the task stops as
    /// `paused` (a budget); otherwise the request fails with `reason`.
    Deny {
        id: u64,
        reason: String,
        #[serde(default)]
        pause: bool,
    },
    /// The tool call `call_id` may run now (gated tools only, see [`TaskSpec::tool_gate`]):
    /// sent once its intent is durable where the supervisor keeps it.
    Proceed { call_id: String },
}

impl SupervisorMessage {
    /// Every `type` tag a supervisor message can carry.
    pub const TYPES: &'static [&'static str] = &[
        "start", "steer", "cancel", "shutdown", "grant", "deny", "proceed",
    ];
}

/// Messages from worker to supervisor.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerMessage {
    /// The first line a worker writes.
    Hello {
        protocol: u32,
        /// The worker's crate version.
        version: String,
        pid: u32,
    },
    /// Sent periodically while the worker is alive, so a hung worker can be told apart.
    Heartbeat { phase: Phase },
    /// A task event (see [`Event`]).
    Event(Event),
    /// An event a resumed worker repeats from its journal because an earlier worker may have
    /// died before sending it (events trail the journal). The supervisor publishes it only if
    /// it has not published the same `tool_start`/`tool_end` before.
    Replay(Event),
    /// May this model request go out? (governed tasks only)
    Permit(PermitRequest),
    /// The response to permit `id` began: its HTTP status and rate-limit headers.
    PermitHead {
        id: u64,
        status: u16,
        headers: RateHeaders,
    },
    /// Permit `id`'s request is over; `usage` is what it consumed, if it completed.
    PermitEnd { id: u64, usage: Option<Usage> },
}

/// Wire form of the non-event worker messages.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control {
    Hello {
        protocol: u32,
        version: String,
        pid: u32,
    },
    Heartbeat {
        phase: Phase,
    },
    Replay {
        event: Box<Event>,
    },
    Permit(PermitRequest),
    PermitHead {
        id: u64,
        status: u16,
        headers: RateHeaders,
    },
    PermitEnd {
        id: u64,
        usage: Option<Usage>,
    },
}

impl WorkerMessage {
    /// The control `type` tags; every other known tag is an [`Event`].
    const CONTROL_TYPES: &'static [&'static str] = &[
        "hello",
        "heartbeat",
        "replay",
        "permit",
        "permit_head",
        "permit_end",
    ];

    /// Every `type` tag a worker message can carry.
    pub fn is_known_type(tag: &str) -> bool {
        Self::CONTROL_TYPES.contains(&tag) || Event::TYPES.contains(&tag)
    }
}

impl Serialize for WorkerMessage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            WorkerMessage::Hello {
                protocol,
                version,
                pid,
            } => Control::Hello {
                protocol: *protocol,
                version: version.clone(),
                pid: *pid,
            }
            .serialize(serializer),
            WorkerMessage::Heartbeat { phase } => {
                Control::Heartbeat { phase: *phase }.serialize(serializer)
            }
            WorkerMessage::Event(event) => event.serialize(serializer),
            WorkerMessage::Replay(event) => Control::Replay {
                event: Box::new(event.clone()),
            }
            .serialize(serializer),
            WorkerMessage::Permit(request) => {
                Control::Permit(request.clone()).serialize(serializer)
            }
            WorkerMessage::PermitHead {
                id,
                status,
                headers,
            } => Control::PermitHead {
                id: *id,
                status: *status,
                headers: headers.clone(),
            }
            .serialize(serializer),
            WorkerMessage::PermitEnd { id, usage } => Control::PermitEnd {
                id: *id,
                usage: *usage,
            }
            .serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for WorkerMessage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        let tag = value
            .get("type")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| D::Error::missing_field("type"))?;
        if Self::CONTROL_TYPES.contains(&tag) {
            match serde_json::from_value::<Control>(value).map_err(D::Error::custom)? {
                Control::Hello {
                    protocol,
                    version,
                    pid,
                } => Ok(WorkerMessage::Hello {
                    protocol,
                    version,
                    pid,
                }),
                Control::Heartbeat { phase } => Ok(WorkerMessage::Heartbeat { phase }),
                Control::Replay { event } => Ok(WorkerMessage::Replay(*event)),
                Control::Permit(request) => Ok(WorkerMessage::Permit(request)),
                Control::PermitHead {
                    id,
                    status,
                    headers,
                } => Ok(WorkerMessage::PermitHead {
                    id,
                    status,
                    headers,
                }),
                Control::PermitEnd { id, usage } => Ok(WorkerMessage::PermitEnd { id, usage }),
            }
        } else {
            serde_json::from_value::<Event>(value)
                .map(WorkerMessage::Event)
                .map_err(D::Error::custom)
        }
    }
}

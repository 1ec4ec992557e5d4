//! The supervisor <-> worker channel: one JSON object per line on the worker's stdin/stdout.
//!
//! Handshake, written down where it lives:
//! 1. The worker starts and sends [`WorkerMessage::Hello`] with [`PROTOCOL_VERSION`].
//! 2. The supervisor checks the version and answers [`SupervisorMessage::Start`], or closes the
//!    worker's stdin (and kills it) when the version differs or no hello came within
//!    [`HELLO_TIMEOUT`].
//! 3. From then on the worker streams [`WorkerMessage::Event`]s and heartbeats, ending with a
//!    `finished` event; the supervisor may send `steer`, `cancel` and `shutdown` at any time.
//!
//! A worker whose stdin reaches end-of-file treats it as `cancel`: nobody is listening any more.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::sandbox::SandboxPolicy;

/// Version of the worker channel. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

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
}

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
    Start { task: TaskSpec, resume: bool },
    /// A message from the user, to be handed to the model at the next safe point.
    Steer { text: String },
    /// Stop the task: kill any running tool, emit `finished` with status `cancelled`, exit.
    Cancel,
    /// Exit as soon as possible without a `finished` event (the supervisor will resume it).
    Shutdown,
}

impl SupervisorMessage {
    /// Every `type` tag a supervisor message can carry.
    pub const TYPES: &'static [&'static str] = &["start", "steer", "cancel", "shutdown"];
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
}

impl WorkerMessage {
    /// The control `type` tags; every other known tag is an [`Event`].
    const CONTROL_TYPES: &'static [&'static str] = &["hello", "heartbeat", "replay"];

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
            }
        } else {
            serde_json::from_value::<Event>(value)
                .map(WorkerMessage::Event)
                .map_err(D::Error::custom)
        }
    }
}

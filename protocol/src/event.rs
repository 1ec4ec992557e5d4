//! Task events: what a shadow did, in order, as users and integrations see it.
//!
//! Every event travels inside an [`EventEnvelope`] that adds the task id, a per-task sequence
//! number and a timestamp. The supervisor assigns the envelope; workers send bare events.

use serde::{Deserialize, Serialize};

use crate::sandbox::SandboxReport;

/// Version of the public event format, the `v` field of every envelope.
pub const EVENT_FORMAT_VERSION: u32 = 1;

/// Token counts as reported by the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// What the tokens cost in US dollars, when known: the provider's own figure (OpenRouter's
    /// `usage.cost`), else the tokens times the model's price (see [`crate::price`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

impl Usage {
    /// Adds another usage report to this one (a cost is known once any part's is).
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_usd = match (self.cost_usd, other.cost_usd) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
    }

    /// Input plus output tokens.
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// Queue priority of a task.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishStatus {
    /// The model stopped calling tools and gave its final answer.
    Completed,
    /// An unrecoverable error, `max_turns`, or too many restarts.
    Failed,
    /// A user (Ctrl-C, SIGTERM, `kugetsu cancel`) cancelled it.
    Cancelled,
    /// The task ran past its `--timeout`.
    TimedOut,
    /// The task stopped before a model request that would have passed its budget; `resume`
    /// continues it.
    Paused,
}

impl FinishStatus {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishStatus::Completed => "completed",
            FinishStatus::Failed => "failed",
            FinishStatus::Cancelled => "cancelled",
            FinishStatus::TimedOut => "timed_out",
            FinishStatus::Paused => "paused",
        }
    }
}

/// The last event of every task.
///
/// A worker fills in what it knows (status, result, error, turns, usage); the supervisor
/// completes `restarts`, `branch`, `worktree` and `changed_files` before publishing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    pub status: FinishStatus,
    /// The model's final text, when it gave one.
    pub result: Option<String>,
    /// What went wrong, for every status but `completed`.
    pub error: Option<String>,
    pub turns: u32,
    pub usage: Usage,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub worktree: Option<String>,
    /// Paths (relative to the worktree) that differ from the base after the task.
    #[serde(default)]
    pub changed_files: Vec<String>,
}

/// One thing that happened to a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Emitted by the supervisor when a submission is accepted into the queue.
    Queued { priority: Priority },
    /// Emitted by the supervisor once a worker process has completed its handshake.
    Started {
        attempt: u32,
        /// The worker process id.
        pid: u32,
        worktree: Option<String>,
        branch: Option<String>,
        model: String,
        /// Which protections of the sandbox hold for this attempt, and which do not (and why).
        /// Absent in logs written before the field existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sandbox: Option<SandboxReport>,
        /// The cluster node (its `node_id`) that runs this attempt; absent on a single-box
        /// daemon and in logs written before the field existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// Emitted by the worker before it asks the model for turn `turn` (1-based).
    TurnStart { turn: u32 },
    /// Emitted by the worker for every piece of assistant text as it streams in.
    TextDelta { text: String },
    /// Emitted by the worker when a model request failed mid-turn and is sent again (attempt
    /// `attempt`, 2 or more, after `wait_ms`), before the new attempt streams anything: every
    /// `text_delta` since the last `turn_start` (or `retry`) is void; the new attempt streams
    /// its text from the start. No tool call of a failed attempt ever runs.
    Retry {
        attempt: u32,
        /// Why the previous attempt failed.
        reason: String,
        wait_ms: u64,
    },
    /// Emitted by the worker once an assistant message is complete.
    AssistantMessage { text: String },
    /// Emitted by the worker right before a tool runs (after its intent is journaled).
    ToolStart {
        call_id: String,
        tool: String,
        args: serde_json::Value,
    },
    /// Emitted by the worker when a tool has finished, failed, or was interrupted.
    ToolEnd {
        call_id: String,
        tool: String,
        ok: bool,
        /// What the model sees: capped, with the full output kept in the task directory.
        output: String,
        truncated: bool,
        duration_ms: u64,
    },
    /// Emitted by the worker after a turn's tools have run; `usage` is that turn's.
    TurnEnd { turn: u32, usage: Usage },
    /// Emitted by the worker when a context compaction was applied or abandoned.
    Compaction {
        tokens_before: u64,
        tokens_after: u64,
        ok: bool,
    },
    /// Emitted by the worker when a steering message is handed to the model.
    Steered { text: String },
    /// Emitted by the supervisor when it restarts a worker from its checkpoint.
    Restarted { attempt: u32, reason: String },
    /// Emitted when a shadow's memory passed its limit.
    MemoryLimit {
        rss_bytes: u64,
        limit_bytes: u64,
        killed: bool,
    },
    /// The shadow's next model request waits for the provider account's rate limit.
    RateLimited { provider: String, wait_ms: u64 },
    /// Emitted by the daemon's conflict radar after a turn end, when this task's changes
    /// conflict with those of other live or unmerged tasks of the same repository (`with`:
    /// their ids) or with new commits on the branch it started from (`with`: `["base"]`);
    /// `files` are the paths that conflict. Sent again only when the overlap changes.
    Conflict {
        with: Vec<String>,
        files: Vec<String>,
    },
    /// The last event of a task.
    Finished(Finished),
}

impl Event {
    /// The `type` tag of this event on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Queued { .. } => "queued",
            Event::Started { .. } => "started",
            Event::TurnStart { .. } => "turn_start",
            Event::TextDelta { .. } => "text_delta",
            Event::Retry { .. } => "retry",
            Event::AssistantMessage { .. } => "assistant_message",
            Event::ToolStart { .. } => "tool_start",
            Event::ToolEnd { .. } => "tool_end",
            Event::TurnEnd { .. } => "turn_end",
            Event::Compaction { .. } => "compaction",
            Event::Steered { .. } => "steered",
            Event::Restarted { .. } => "restarted",
            Event::MemoryLimit { .. } => "memory_limit",
            Event::RateLimited { .. } => "rate_limited",
            Event::Conflict { .. } => "conflict",
            Event::Finished(_) => "finished",
        }
    }

    /// Every `type` tag an event can carry.
    pub const TYPES: &'static [&'static str] = &[
        "queued",
        "started",
        "turn_start",
        "text_delta",
        "retry",
        "assistant_message",
        "tool_start",
        "tool_end",
        "turn_end",
        "compaction",
        "steered",
        "restarted",
        "memory_limit",
        "rate_limited",
        "conflict",
        "finished",
    ];
}

/// An event as published: `{"v":1,"task":ID,"seq":N,"ts":RFC3339,"type":T,...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub v: u32,
    pub task: String,
    /// Per-task sequence number, starting at 1, without gaps.
    pub seq: u64,
    /// RFC 3339 UTC timestamp of when the supervisor recorded the event.
    pub ts: String,
    #[serde(flatten)]
    pub event: Event,
}

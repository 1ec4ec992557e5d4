//! Wire types and framing shared by the `kugetsu` supervisor and its `kugetsu-worker` processes.
//!
//! A worker talks to its supervisor over its own stdin and stdout, one JSON object per line.
//! This crate holds the vocabulary of that channel and of the public event stream, and nothing
//! else: no I/O policy, no agent logic.
//!
//! - [`event`]: the task events of the public stream (`kugetsu run --json`, `events.jsonl`) and
//!   their envelope.
//! - [`channel`]: the supervisor <-> worker messages (handshake, control, heartbeats).
//! - [`codec`]: the JSON-lines codec with a maximum line length and per-line errors.
//! - [`demo`]: the built-in demo's files and prompt (shared with the scripted model).
//! - [`layout`]: the file names inside a task's directory.
//! - [`mcp`]: the MCP servers a shadow uses, and how their tools are named for the model.
//! - [`model`]: `PROVIDER/MODEL` strings and what each provider needs from the environment.
//! - [`price`]: what tokens cost (built-in prices of well-known models).
//! - [`time`]: the HTTP-date format of `retry-after` headers.
//! - [`sandbox`]: the policy a shadow's tool processes run under, and the report of what
//!   protections hold.

pub mod channel;
pub mod codec;
pub mod demo;
pub mod event;
pub mod layout;
pub mod mcp;
pub mod model;
pub mod price;
pub mod sandbox;
pub mod time;

pub use channel::{
    HELLO_TIMEOUT, PROTOCOL_VERSION, PermitRequest, Phase, RateHeaders, Secrets, SupervisorMessage,
    TaskSpec, WorkerMessage,
};
pub use codec::{DecodeError, LineReader, MAX_LINE_BYTES, decode, encode, error_chain};
pub use event::{Event, EventEnvelope, FinishStatus, Finished, Priority, Usage};
pub use mcp::{McpServer, McpTransport};
pub use model::{ModelError, ModelRef, ProviderKind};
pub use price::Price;
pub use sandbox::{Missing, NetworkMode, Protection, SandboxMode, SandboxPolicy, SandboxReport};

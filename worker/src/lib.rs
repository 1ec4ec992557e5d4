//! `kugetsu-worker`: one shadow, i.e. one coding agent loop in its own process.
//!
//! The supervisor starts the worker with its cwd in the shadow's worktree and its stdin/stdout
//! as a JSON-lines channel (see [`kugetsu_protocol::channel`]). The worker says hello, receives
//! its task, runs the agent loop (prompt -> model -> tools -> model ...) and streams events until
//! `finished`.
//!
//! - [`guard`]: the process between the worker and a bash call that outlives neither.
//! - [`ipc`]: the channel: one reader task, one writer task (the only code that touches stdout).
//! - [`fit`]: shrinks an event that would not fit one channel line, instead of losing it.
//! - [`agent`]: the agent loop.
//! - [`context`]: token budget, background compaction, deterministic pruning.
//! - [`conversation`]: provider-neutral messages.
//! - [`journal`]: the checkpoint journal (append, fdatasync, longest-valid-prefix replay).
//! - [`mcp`]: MCP servers' tools for the model (`NAME__TOOL`), started only for a task that
//!   uses some.
//! - [`llm`]: model providers (OpenAI, Anthropic, scripted) and stream parsing.
//! - [`tools`]: read, write, edit, bash, grep, ls, confined to the worktree.
//! - [`session`]: the conversation plus its journal; rebuilds itself on resume.
//! - [`sandbox`]: the sandbox a shadow's tool processes run in, applied by the tool guard.
//! - [`tool_gate`]: a cluster node's go-ahead (`proceed`) that each tool call waits for.

#![deny(clippy::print_stdout)]

pub mod agent;
pub mod context;
pub mod conversation;
pub mod fit;
pub mod guard;
pub mod ipc;
pub mod journal;
pub mod llm;
pub mod mcp;
pub mod sandbox;
pub mod session;
pub mod tool_gate;
pub mod tools;

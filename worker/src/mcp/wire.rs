//! The lines between the worker and its MCP host process (see [`super::host`]), one JSON
//! object per line on the host's stdin and stdout:
//! 1. worker -> host: [`Start`], once;
//! 2. host -> worker: [`Ready`], once every server was started (or failed to);
//! 3. then, one at a time, worker -> host [`Call`] and host -> worker [`Answer`] with the
//!    same `id` (an answer to a call the worker gave up on is skipped by its id).
//!
//! The host exits at end-of-file on its stdin; the worker kills it when the task ends.

use std::path::PathBuf;

use kugetsu_protocol::{McpServer, SandboxPolicy};
use serde::{Deserialize, Serialize};

/// What the host needs: the servers, and where and how their processes run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Start {
    pub servers: Vec<McpServer>,
    /// The worktree (canonical): the servers' cwd.
    pub root: PathBuf,
    /// `<task_dir>/tool-output`.
    pub output_dir: PathBuf,
    /// The `kugetsu-worker` binary, whose tool guard starts each stdio server.
    pub guard: Option<PathBuf>,
    /// The shadow's sandbox, entered by the guard.
    pub sandbox: Option<SandboxPolicy>,
}

/// The servers' tools, as offered to the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ready {
    pub tools: Vec<ToolDef>,
}

/// One tool as the model sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ToolDef {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// One tool call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Call {
    pub id: u64,
    /// `NAME__TOOL`.
    pub name: String,
    pub args: serde_json::Value,
}

/// What a call produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub id: u64,
    pub ok: bool,
    pub output: String,
    pub truncated: bool,
}

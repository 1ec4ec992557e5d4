//! What a caller asks of a new task, independent of where the ask came from: `kugetsu run`
//! builds a [`TaskRequest`] from its flags, the daemon from `submit`'s params.

use std::path::PathBuf;
use std::time::Duration;

use kugetsu_protocol::{NetworkMode, Priority, SandboxMode};

use crate::task::record::Origin;

/// A request for a new task. Every `None` falls back to the config.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    /// What the shadow should do.
    pub prompt: String,
    /// A directory inside the repository to work on (absolute for the daemon).
    pub repo: PathBuf,
    /// The commit the worktree starts from (default: the repository's HEAD).
    pub base: Option<String>,
    /// Work in the repository itself instead of a fresh worktree.
    pub no_worktree: bool,
    /// `PROVIDER/MODEL`.
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    /// Wall-clock limit, counted from the task's first start.
    pub timeout: Option<Duration>,
    /// Memory limit of the shadow, in bytes.
    pub mem_limit: Option<u64>,
    /// `--sandbox`: confine the shadow's tools or not.
    pub sandbox: Option<SandboxMode>,
    /// `--network`: whether the shadow's tools reach the network.
    pub network: Option<NetworkMode>,
    pub priority: Priority,
    /// Who owns the task.
    pub origin: Origin,
    /// `--budget-tokens`, `--budget-usd`: the task pauses before a request that would pass it.
    pub budget: Budget,
    /// `--mcp`: the MCP servers the shadow uses; `None` means every configured one, and
    /// `["none"]` none.
    pub mcp: Option<Vec<String>>,
}

/// A task's budget; `None` falls back to the config's `budget_tokens` / `budget_usd`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budget {
    pub tokens: Option<u64>,
    pub usd: Option<f64>,
}

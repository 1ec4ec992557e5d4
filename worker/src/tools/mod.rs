//! The tools a shadow's model may call, all confined to the shadow's worktree.
//!
//! The agent loop sees five items: [`ToolContext`] (where tools run), [`ToolOutput`] (what the
//! model gets back), [`MemoryExceeded`] (a call killed for the shadow's memory limit), [`specs`]
//! (the tool list offered to the model) and [`run`] (one call). Everything else is private to
//! this module:
//!
//! - [`path`]: the one resolver every tool uses; no path, `..` or symlink may leave the worktree,
//!   and write and edit never change `.git`.
//! - [`beneath`]: opening paths beneath the worktree's directory fd (`openat2`, or a race-free
//!   walk on old kernels), so a path swapped for a symlink mid-call cannot lead outside.
//! - [`replace`]: where write and edit put a file, and the temp-file-and-rename that replaces
//!   it, all inside directory fds.
//! - [`read`], [`write`], [`edit`], [`grep`], [`ls`]: file tools, run on the blocking pool.
//! - [`bash`]: shell commands in their own process group, killed on timeout and on drop.
//! - [`reap`]: finding and killing every process a bash call started, even outside its group.
//! - [`memory`]: measuring a bash call's processes against the shadow's memory limit.
//! - [`env`]: the scrubbed environment bash commands get (no API keys, tokens or sockets).
//! - [`process`]: that environment with the sandbox's variables, and the tool guard's command,
//!   shared with the MCP servers a shadow starts.
//! - [`cap`]: head + tail capture and line cutting, so outputs stay small.
//! - [`lines`]: a line reader that never holds more than a bounded slice of a line.
//! - [`args`]: typed access to the JSON arguments, with errors that name the argument.
//! - [`outcome`], [`context`]: the result and error types, and where tools run.
//! - [`blocking`]: running file work off the async thread, stopped when the call is dropped.
//!
//! Invariants: [`run`] never panics and never fails (every problem is an `ok: false` output);
//! no tool touches anything outside [`ToolContext::root`] except bash (which is a shell) and the
//! bash output logs in [`ToolContext::output_dir`]; when [`run`] returns or its future is
//! dropped, no process it started is left alive.

mod args;
mod bash;
mod beneath;
mod blocking;
mod cap;
mod context;
mod edit;
mod env;
mod grep;
mod lines;
mod ls;
mod memory;
mod outcome;
mod path;
pub(crate) mod process;
mod read;
mod reap;
mod replace;
mod write;

#[cfg(test)]
mod escape_tests;
#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod testkit;

pub use context::ToolContext;
pub use outcome::{MemoryExceeded, ToolOutput};

use crate::conversation::ToolSpec;
use outcome::ToolError;

/// The tools offered to the model, in the order they are listed to it.
pub fn specs() -> Vec<ToolSpec> {
    vec![
        read::spec(),
        write::spec(),
        edit::spec(),
        bash::spec(),
        grep::spec(),
        ls::spec(),
    ]
}

/// Runs tool `name` with the JSON object `args`. Never fails: problems come back as `ok: false`.
///
/// Dropping the future kills whatever the tool started (processes, file walks).
pub async fn run(
    ctx: &ToolContext,
    call_id: &str,
    name: &str,
    args: &serde_json::Value,
) -> ToolOutput {
    let result = match name {
        "read" => read::run(ctx, args).await,
        "write" => write::run(ctx, args).await,
        "edit" => edit::run(ctx, args).await,
        "bash" => bash::run(ctx, call_id, args).await,
        "grep" => grep::run(ctx, args).await,
        "ls" => ls::run(ctx, args).await,
        _ => Err(ToolError::UnknownTool(name.to_owned())),
    };
    ToolOutput::from_result(result)
}

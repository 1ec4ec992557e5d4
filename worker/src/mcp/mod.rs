//! The MCP servers a shadow uses: their tools offered to the model as `NAME__TOOL`.
//!
//! The agent loop sees one item, [`McpTools`]: started once per task from
//! [`kugetsu_protocol::TaskSpec::mcp`], it lists the servers' tools for the model and runs the
//! calls whose names it [`McpTools::owns`]. A task with no server never builds one: no thread,
//! no child, no allocation.
//!
//! - [`servers`]: the registry: start, list, call, restart a crashed server (bounded).
//! - [`stdio`]: a server as a child process under the tool guard (the shadow's process group,
//!   sandbox and scrubbed environment, as bash commands get), spoken to over its stdin/stdout.
//! - [`http`]: a server at a URL, over streamable HTTP with the worker's own reqwest.
//! - [`render`]: a call's result as the text the model gets (text joined, other content
//!   summarized, capped).
//!
//! Invariants: nothing here fails the task; every problem with a server (it would not start,
//! crashed, answered garbage, hung) is a tool error naming the server. When [`McpTools`] is
//! dropped, every server process it started is killed.

mod http;
mod render;
mod servers;
mod stdio;

pub use servers::McpTools;

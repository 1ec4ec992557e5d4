//! The MCP servers a shadow uses: their tools offered to the model as `NAME__TOOL`.
//!
//! Two halves in two processes, so that the worker links no MCP code and a shadow that uses
//! no server pays nothing for it (no thread, no child, no allocation, no code pages):
//! - in the worker, [`McpTools`] ([`proxy`]): built only for a task with servers, it starts
//!   `kugetsu-mcp-host` (beside `kugetsu-worker`), hands it the servers, and relays calls;
//! - in the host, [`host::serve`]: the MCP sessions themselves (the `rmcp` SDK).
//!
//! - [`wire`]: the JSON lines between the two.
//! - [`servers`]: the host's registry: start, list, call, restart a crashed server (bounded).
//! - [`stdio`]: a server as a child process under the tool guard (the shadow's process group,
//!   sandbox and scrubbed environment, as bash commands get), spoken to over its stdin/stdout.
//! - [`http`]: a server at a URL, over streamable HTTP with the worker's own reqwest.
//! - [`render`]: a call's result as the text the model gets (text joined, other content
//!   summarized, capped).
//!
//! Invariants: nothing here fails the task; every problem with a server (it would not start,
//! crashed, answered garbage, hung) or with the host is a tool error naming what failed. When
//! [`McpTools`] is dropped the host is killed, and with it (through the tool guards) every
//! server process.

pub mod host;
mod http;
mod proxy;
mod render;
mod servers;
mod stdio;
mod wire;

pub use proxy::{HOST_BINARY, McpTools};

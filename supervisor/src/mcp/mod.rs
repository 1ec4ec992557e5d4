//! `kugetsu mcp`: kugetsu as a Model Context Protocol server on stdio, so that any MCP client
//! (Claude Code, Codex, Hermes, editors) can hand work to shadows (docs/mcp.md).
//!
//! - [`server`]: the rmcp [`ServerHandler`](rmcp::ServerHandler), its options, the stdio
//!   session and the shutdown order (running shadows are cancelled and waited for).
//! - [`tools`]: the eight tools, named and shaped like the Hermes plugin's, and their input
//!   schemas.
//! - [`params`]: reading a call's arguments, with errors that name the field.
//! - [`run`]: `kugetsu_run`, one shadow through a `kugetsu run --json` child, its events turned
//!   into progress notifications, MCP cancellation into a clean cancel.
//! - [`daemon`]: the daemon-backed tools through the JSON-RPC [`Client`](crate::cli::client::Client).
//!
//! Nothing here writes to stdout: the transport owns it, and `print_stdout` is denied.

pub mod daemon;
pub mod params;
pub mod run;
pub mod server;
pub mod tools;

pub use server::{McpOptions, serve};

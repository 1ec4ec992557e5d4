//! Test support for kugetsu's end-to-end tests: the real `kugetsu` and `kugetsu-worker`
//! binaries against a fake LLM, in throwaway git repositories.
//!
//! The LLM is the only fake. Everything else — git, worktrees, processes, signals, the file
//! system — is real, so a test that passes here passes for a user.
//!
//! - [`fake_llm`]: a hand-written HTTP/1.1 server speaking the OpenAI chat-completions and
//!   Anthropic Messages streaming formats byte for byte, scripted turn by turn from the test,
//!   recording every request and checking request invariants (a violation fails the test).
//! - [`harness`]: temporary repositories and state directories, and a runner for the real
//!   binaries with a controlled environment, an overall timeout and streamed events.
//! - [`events`]: the `--json` event stream of one task, and the checks every stream must pass.
//! - [`procs`]: finding processes by command line, to prove nothing a task started survives it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failed expectation is a failed test, reported with context"
)]

pub mod events;
pub mod fake_llm;
pub mod harness;
pub mod procs;

pub use events::Events;
pub use fake_llm::{ApiError, FakeLlm, RecordedRequest, Reply, ToolResult, Turn, Wire};
pub use harness::{Kugetsu, LiveRun, RunOutput, TestRepo};

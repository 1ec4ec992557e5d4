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
//! - [`browser`]: headless Chromium driven over WebDriver by a small client, for the
//!   dashboard's tests.
//! - [`events`]: the `--json` event stream of one task, and the checks every stream must pass.
//! - [`postgres`]: a real PostgreSQL server in a temporary directory, for the cluster's tests.
//! - [`procs`]: finding processes by command line, to prove nothing a task started survives it.
//! - [`journal`]: a task's checkpoint journal read back with the worker's own reader, and the
//!   invariants it keeps across crashes.
//! - [`rng`]: a seeded generator for random kill moments and damaged bytes; the seed is printed
//!   and `KUGETSU_TEST_SEED` replays it.
//!
//! A test reads like this (`tests/suite/*.rs` has many):
//!
//! ```ignore
//! let repo = TestRepo::new();                       // git repo + state dir + home in a tempdir
//! let server = FakeLlm::openai();                   // expects gpt-4.1-mini and its test key
//! server.push(Turn::text("Looking.").tool_call("read", json!({"path": "hello.txt"})));
//! server.push(Turn::text("Done."));
//! let out = repo.run().llm(&server).prompt("Read hello.txt").output().await;
//! out.assert_code(0).assert_status("completed");    // failures print stderr, events, worker.log
//! assert_eq!(out.finished()["result"], "Done.");    // finished() checks the whole stream first
//! server.request(2).tool_result(call_id);           // what went back to the model
//! // Dropping `server` fails the test if any request broke an invariant.
//! ```
//!
//! The binaries are taken from the cargo target directory the test executable runs from:
//! `cargo build --workspace && cargo test -p kugetsu-tests` (or `cargo test --workspace`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failed expectation is a failed test, reported with context"
)]

pub mod browser;
pub mod events;
pub mod fake_llm;
pub mod harness;
pub mod journal;
pub mod postgres;
pub mod procs;
pub mod rng;

pub use events::Events;
pub use fake_llm::{ApiError, FakeLlm, RateLimit, RecordedRequest, Reply, ToolResult, Turn, Wire};
pub use harness::daemon::{Daemon, Gate, RpcClient, Script};
pub use harness::{Kugetsu, LiveRun, RunOutput, TestRepo, WorkerProcess};

//! A fake LLM server that speaks the providers' real streaming wire formats.
//!
//! Real HTTP/1.1 on `127.0.0.1:0`, one task per connection, keep-alive; it runs on its own
//! thread and runtime so it serves whatever the test's own runtime is doing. The test scripts
//! a queue of [`Reply`]s ([`Turn`]s in a provider-neutral form, [`ApiError`]s, stalls, raw
//! bytes); each request takes the next one, encoded in the wire format its path asks for.
//! Summary requests (a compaction: no tools offered) run concurrently with turns, so once a
//! test scripts one with [`FakeLlm::push_summary`] they take replies from a queue of their
//! own. [`FakeLlmBuilder::usage_from_body`] makes turns report realistic usage (a token per 4
//! bytes of request), for clients that calibrate their context estimate on it.
//!
//! Every request is recorded ([`RecordedRequest`]) and checked against the invariants of the
//! real API (streaming on, the expected model and key, every tool result answering a tool call
//! the previous assistant message made, ...). Violations are collected and fail the test when
//! the [`FakeLlm`] is dropped, unless the test took them with [`FakeLlm::take_violations`].
//!
//! - `server`: the listener, the connection loop, the shared script and record.
//! - `http`: reading requests (Content-Length and chunked bodies) and writing responses.
//! - `reply`: the script vocabulary: [`Turn`], [`Reply`], [`ApiError`].
//! - `openai`, `anthropic`: encoding a reply in each provider's format.
//! - `invariants`: what every request must satisfy.
//! - `record`: recorded requests and what tests read from them.
//! - `ids`: provider-shaped ids (`call_…`, `toolu_…`, llama.cpp's 32-char ids).

mod anthropic;
mod http;
mod ids;
mod invariants;
mod openai;
mod record;
mod reply;
mod server;

pub use record::{RecordedRequest, ToolResult};
pub use reply::{ApiError, ErrorKind, Reply, Turn};
pub use server::{
    ANTHROPIC_KEY, ANTHROPIC_MODEL, FakeLlm, FakeLlmBuilder, OPENAI_KEY, OPENAI_MODEL, RateLimit,
    Wire,
};

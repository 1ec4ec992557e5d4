//! Model providers behind one interface: [`Provider::complete`] streams one assistant turn.
//!
//! - [`openai`]: chat completions over SSE (also OpenRouter, Ollama, vLLM, llama.cpp).
//! - [`anthropic`]: the Messages API over SSE.
//! - [`scripted`]: replays a JSON script of turns; the offline demo and the tests use it.
//! - `provider`: [`Provider`], the one type the agent loop talks to.
//! - `error`: [`LlmError`], one taxonomy for every failure, and how provider errors map to it.
//! - `http`: the shared client, one attempt's request/response, and the retry loop.
//! - [`gate`]: the task's budget and the governor's permits, passed before every request.
//! - `retry`: backoff, jitter and `retry-after` handling.
//! - `sse`: a push-based server-sent events parser that survives any chunking.
//!
//! Invariants: a [`Completion`] is only ever a whole answer: a stream that ends without a
//! finish/stop reason or end marker is an interruption ([`LlmError::Truncated`]) and is
//! retried, so no tool runs on arguments that may be partial (tools run only after
//! [`Provider::complete`] returned, which is why a turn may be retried even after a tool call
//! began streaming). Before a retried attempt streams anything, the [`StreamSink`] hears
//! [`StreamSink::retry`]: the text it was given since the turn began is void. No line, tool-call
//! argument or response is buffered past [`MAX_STREAM_BYTES`]. Dropping the future of
//! [`Provider::complete`] aborts the request; no `Debug` prints an API key.

pub mod anthropic;
mod error;
pub mod gate;
mod http;
pub mod openai;
mod provider;
mod retry;
pub mod scripted;
mod sse;

#[cfg(test)]
mod tests;

use kugetsu_protocol::Usage;

use crate::conversation::{Message, ToolCall, ToolSpec};

pub use error::{ErrorOrigin, LlmError};
pub use provider::Provider;

/// Cap on one SSE line, one tool call's arguments and the text plus arguments of a whole
/// response: past it the attempt fails with [`LlmError::TooLarge`], so a hostile server
/// cannot grow the worker.
pub const MAX_STREAM_BYTES: usize = 16 * 1024 * 1024;

/// How long a stream may go without a content byte by default (see `stream_timeout` in
/// docs/config.md).
pub const DEFAULT_STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Where a turn goes while it streams in.
///
/// Any `FnMut(&str)` is a sink that only hears text (and ignores retries).
pub trait StreamSink: Send {
    /// The next piece of assistant text.
    fn text(&mut self, text: &str);

    /// The attempt so far failed with `reason` and attempt number `attempt` (2 or more)
    /// follows after `wait`: every piece of text given since the turn began (or since the
    /// last retry) is void, and the new attempt streams its text from the start.
    fn retry(&mut self, attempt: u32, reason: &str, wait: std::time::Duration) {
        let _ = (attempt, reason, wait);
    }
}

impl<F: FnMut(&str) + Send> StreamSink for F {
    fn text(&mut self, text: &str) {
        self(text);
    }
}

/// One request for the next assistant turn.
#[derive(Debug, Clone, Copy)]
pub struct LlmRequest<'a> {
    /// The system prompt; omitted from the request when empty.
    pub system: &'a str,
    /// The conversation so far, oldest first.
    pub messages: &'a [Message],
    /// The tools the model may call.
    pub tools: &'a [ToolSpec],
    /// Cap on the tokens the model may produce in this turn.
    pub max_tokens: u32,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The model finished its answer.
    EndTurn,
    /// The model wants its tool calls run.
    ToolUse,
    /// The turn hit `max_tokens`.
    MaxTokens,
    /// Anything else the provider reported (`content_filter`, `refusal`, ...).
    Other(String),
}

/// A complete assistant turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// All text of the turn, as streamed to `on_text`.
    pub text: String,
    /// Tool calls in the order the model made them.
    pub tool_calls: Vec<ToolCall>,
    /// Tokens as the provider reported them (zero when it reported none).
    pub usage: Usage,
    /// Why the turn ended.
    pub stop: StopReason,
}

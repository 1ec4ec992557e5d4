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
//! Invariants: a turn is retried only while no tool call of it has begun streaming; dropping
//! the future of [`Provider::complete`] aborts the request; no `Debug` prints an API key.

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

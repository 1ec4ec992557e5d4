//! Model providers behind one interface: [`Provider::complete`] streams one assistant turn.
//!
//! - `openai`: chat completions over SSE (also OpenRouter, Ollama, vLLM, llama.cpp).
//! - `anthropic`: the Messages API over SSE.
//! - `scripted`: replays a JSON script of turns; the offline demo and the tests use it.

pub mod anthropic;
pub mod openai;
pub mod scripted;

use kugetsu_protocol::{ModelRef, ProviderKind, Usage};

use crate::conversation::{Message, ToolCall, ToolSpec};

/// One request for the next assistant turn.
#[derive(Debug, Clone, Copy)]
pub struct LlmRequest<'a> {
    pub system: &'a str,
    pub messages: &'a [Message],
    pub tools: &'a [ToolSpec],
    pub max_tokens: u32,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
    Other(String),
}

/// A complete assistant turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub stop: StopReason,
}

/// Everything that can go wrong talking to a model.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider is not usable as configured (missing key, bad script, bad URL).
    #[error("{0}")]
    Config(String),
    /// The provider answered with an error status.
    #[error("{provider} returned HTTP {status}: {message}")]
    Http {
        provider: &'static str,
        status: u16,
        message: String,
    },
}

/// The provider a task talks to.
#[derive(Debug)]
pub enum Provider {
    OpenAi(openai::OpenAiClient),
    Anthropic(anthropic::AnthropicClient),
    Scripted(scripted::Scripted),
}

impl Provider {
    /// Builds the provider for `model`, reading keys and base URLs through `env`.
    pub fn from_model(
        model: &ModelRef,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Provider, LlmError> {
        match model.provider {
            ProviderKind::Scripted => {
                Ok(Provider::Scripted(scripted::Scripted::load(&model.model)?))
            }
            ProviderKind::Anthropic => Ok(Provider::Anthropic(anthropic::AnthropicClient::new(
                model, env,
            )?)),
            ProviderKind::OpenAi | ProviderKind::OpenRouter | ProviderKind::Ollama => {
                Ok(Provider::OpenAi(openai::OpenAiClient::new(model, env)?))
            }
        }
    }

    /// Streams one assistant turn, calling `on_text` with each piece of text as it arrives.
    pub async fn complete(
        &self,
        request: &LlmRequest<'_>,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion, LlmError> {
        match self {
            Provider::OpenAi(p) => p.complete(request, on_text).await,
            Provider::Anthropic(p) => p.complete(request, on_text).await,
            Provider::Scripted(p) => p.complete(request, on_text).await,
        }
    }
}

impl LlmError {
    /// Whether the provider said the request does not fit the model's context window.
    pub fn is_context_overflow(&self) -> bool {
        false
    }
}

//! [`Provider`]: picks the client for a `PROVIDER/MODEL` string and forwards to it.

use kugetsu_protocol::{ModelRef, ProviderKind};

use std::time::Duration;

use super::gate::Gate;
use super::{Completion, LlmError, LlmRequest, StreamSink, anthropic, openai, scripted};

/// The provider a task talks to.
#[derive(Debug)]
pub enum Provider {
    /// `openai`, `openrouter` and `ollama`: chat completions.
    OpenAi(openai::OpenAiClient),
    /// `anthropic`: the Messages API.
    Anthropic(anthropic::AnthropicClient),
    /// `scripted`: a replayed script, no network.
    Scripted(scripted::Scripted),
}

impl Provider {
    /// Builds the provider for `model`, reading keys and base URLs through `env`; every
    /// request passes `gate` first.
    pub fn from_model(
        model: &ModelRef,
        env: &dyn Fn(&str) -> Option<String>,
        gate: Gate,
    ) -> Result<Provider, LlmError> {
        match model.provider {
            ProviderKind::Scripted => Ok(Provider::Scripted(
                scripted::Scripted::load(&model.model)?.with_gate(gate),
            )),
            ProviderKind::Anthropic => Ok(Provider::Anthropic(
                anthropic::AnthropicClient::new(model, env)?.with_gate(gate),
            )),
            ProviderKind::OpenAi | ProviderKind::OpenRouter | ProviderKind::Ollama => Ok(
                Provider::OpenAi(openai::OpenAiClient::new(model, env)?.with_gate(gate)),
            ),
        }
    }

    /// Sets how long a stream may go without a content byte before the attempt is abandoned
    /// and retried (`stream_timeout`; [`super::DEFAULT_STREAM_TIMEOUT`] unless set).
    pub fn set_stream_timeout(&mut self, timeout: Duration) {
        match self {
            Provider::OpenAi(p) => p.set_stream_timeout(timeout),
            Provider::Anthropic(p) => p.set_stream_timeout(timeout),
            Provider::Scripted(_) => {}
        }
    }

    /// Streams one assistant turn into `sink`: each piece of text as it arrives, and a
    /// [`StreamSink::retry`] before a retried attempt starts over.
    ///
    /// Retryable failures are retried inside (see the `retry` module); dropping the future
    /// aborts the request at once.
    pub async fn complete(
        &self,
        request: &LlmRequest<'_>,
        sink: &mut dyn StreamSink,
    ) -> Result<Completion, LlmError> {
        match self {
            Provider::OpenAi(p) => p.complete(request, sink).await,
            Provider::Anthropic(p) => p.complete(request, sink).await,
            Provider::Scripted(p) => p.complete(request, &mut |t: &str| sink.text(t)).await,
        }
    }
}

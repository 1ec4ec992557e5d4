//! The `openai` provider: streaming chat completions, also spoken by OpenRouter, Ollama, vLLM
//! and llama.cpp (the `openrouter` and `ollama` presets only change the base URL and key).
//!
//! A request is `POST {base}/chat/completions` with `stream: true` and
//! `stream_options.include_usage`; the conversation maps onto `system`, `user`, `assistant`
//! (with `tool_calls`) and `tool` messages. The answer is decoded by [`stream::ChatStream`].

mod stream;

use std::borrow::Cow;

use kugetsu_protocol::{ModelRef, ProviderKind};
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde::Serialize;

use super::error::ErrorSource;
use super::gate::Gate;
use super::http::{Ask, Endpoint, Timeouts, base_url, endpoint_url, key_header};
use super::retry::RetryPolicy;
use super::{Completion, LlmError, LlmRequest, StreamSink};
use crate::conversation::{Message, ToolCall, ToolSpec};

pub(crate) use stream::ChatStream;

/// Client for an OpenAI-compatible chat completions endpoint.
#[derive(Debug)]
pub struct OpenAiClient {
    /// The model id sent in each request.
    model: String,
    /// Which preset this is; decides how the output cap is named.
    kind: ProviderKind,
    /// Where requests go; holds the key.
    endpoint: Endpoint,
}

impl OpenAiClient {
    /// Builds the client for `model`, reading its base URL and key through `env`.
    pub fn new(model: &ModelRef, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, LlmError> {
        let (url_var, base) = base_url(model, env)?;
        let url = endpoint_url(url_var, &base, "chat/completions")?;
        let mut headers = HeaderMap::new();
        if let Some(auth) = key_header(model, env, |key| format!("Bearer {key}"))? {
            headers.insert(AUTHORIZATION, auth);
        }
        let source = ErrorSource {
            provider: model.provider.name(),
            key_env: model.provider.api_key_env(),
        };
        Ok(Self {
            model: model.model.clone(),
            kind: model.provider,
            endpoint: Endpoint::new(
                source,
                url,
                headers,
                RetryPolicy::from_env(env),
                Timeouts::default(),
            )?,
        })
    }

    /// Passes every request through `gate` (the task's budget and the governor's permits).
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.endpoint = self.endpoint.with_gate(gate);
        self
    }

    /// Replaces the retry policy (tests record delays instead of sleeping).
    #[cfg(test)]
    pub(crate) fn set_retry(&mut self, retry: RetryPolicy) {
        self.endpoint.set_retry(retry);
    }

    /// Sets the `stream_timeout` of every later request.
    pub(crate) fn set_stream_timeout(&mut self, timeout: std::time::Duration) {
        self.endpoint.set_stream_timeout(timeout);
    }

    /// Streams one assistant turn.
    pub async fn complete(
        &self,
        request: &LlmRequest<'_>,
        sink: &mut dyn StreamSink,
    ) -> Result<Completion, LlmError> {
        let body = serde_json::to_vec(&ChatRequest::new(&self.model, self.kind, request))
            .map_err(|source| LlmError::EncodeRequest { source })?;
        let source = self.endpoint.source();
        let ask = Ask::for_body(&body, request.max_tokens);
        self.endpoint
            .stream(body, ask, || ChatStream::new(source), sink)
            .await
    }
}

/// The body of a streaming chat completions request.
#[derive(Debug, Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ChatTool<'a>>,
    /// Ollama only knows this older name.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    /// OpenAI's reasoning models reject `max_tokens`; compatible servers accept this name.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    stream: bool,
    stream_options: StreamOptions,
    /// OpenRouter's usage accounting: the last chunk then carries `usage.cost`.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageAccounting>,
}

#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Debug, Serialize)]
struct UsageAccounting {
    include: bool,
}

#[derive(Debug, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
enum ChatMessage<'a> {
    System {
        content: &'a str,
    },
    User {
        content: &'a str,
    },
    Assistant {
        /// `null` when the turn is only tool calls, as OpenAI sends it.
        content: Option<&'a str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ChatToolCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: Cow<'a, str>,
    },
}

#[derive(Debug, Serialize)]
struct ChatToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: ChatFunctionCall<'a>,
}

#[derive(Debug, Serialize)]
struct ChatFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Debug, Serialize)]
struct ChatTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: ChatFunction<'a>,
}

#[derive(Debug, Serialize)]
struct ChatFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a serde_json::Value,
}

impl<'a> ChatRequest<'a> {
    fn new(model: &'a str, kind: ProviderKind, request: &LlmRequest<'a>) -> Self {
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if !request.system.is_empty() {
            messages.push(ChatMessage::System {
                content: request.system,
            });
        }
        messages.extend(request.messages.iter().map(chat_message));
        let (max_tokens, max_completion_tokens) = match kind {
            ProviderKind::Ollama => (Some(request.max_tokens), None),
            _ => (None, Some(request.max_tokens)),
        };
        Self {
            model,
            messages,
            tools: request.tools.iter().map(chat_tool).collect(),
            max_tokens,
            max_completion_tokens,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            usage: (kind == ProviderKind::OpenRouter).then_some(UsageAccounting { include: true }),
        }
    }
}

fn chat_message(message: &Message) -> ChatMessage<'_> {
    match message {
        Message::User { text } => ChatMessage::User { content: text },
        Message::Assistant { text, tool_calls } => ChatMessage::Assistant {
            content: (!text.is_empty() || tool_calls.is_empty()).then_some(text.as_str()),
            tool_calls: tool_calls.iter().map(chat_tool_call).collect(),
        },
        Message::ToolResult {
            call_id,
            content,
            is_error,
            ..
        } => ChatMessage::Tool {
            tool_call_id: call_id,
            // The format has no error flag; say it in the text.
            content: if *is_error {
                Cow::Owned(format!("error: {content}"))
            } else {
                Cow::Borrowed(content)
            },
        },
    }
}

fn chat_tool_call(call: &ToolCall) -> ChatToolCall<'_> {
    ChatToolCall {
        id: &call.id,
        kind: "function",
        function: ChatFunctionCall {
            name: &call.name,
            arguments: if call.arguments.trim().is_empty() {
                "{}"
            } else {
                &call.arguments
            },
        },
    }
}

fn chat_tool(spec: &ToolSpec) -> ChatTool<'_> {
    ChatTool {
        kind: "function",
        function: ChatFunction {
            name: &spec.name,
            description: &spec.description,
            parameters: &spec.parameters,
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn model(s: &str) -> ModelRef {
        s.parse().unwrap()
    }

    #[test]
    fn request_body_has_every_message_shape() {
        let messages = vec![
            Message::User {
                text: "fix it".into(),
            },
            Message::Assistant {
                text: String::new(),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "read".into(),
                    arguments: String::new(),
                }],
            },
            Message::ToolResult {
                call_id: "call_1".into(),
                name: "read".into(),
                content: "no such file".into(),
                is_error: true,
            },
            Message::Assistant {
                text: "done".into(),
                tool_calls: vec![],
            },
        ];
        let tools = [ToolSpec {
            name: std::borrow::Cow::Borrowed("read"),
            description: std::borrow::Cow::Borrowed("Reads a file."),
            parameters: json!({"type": "object"}),
        }];
        let request = LlmRequest {
            system: "be brief",
            messages: &messages,
            tools: &tools,
            max_tokens: 100,
        };
        let body = serde_json::to_value(ChatRequest::new("gpt-x", ProviderKind::OpenAi, &request))
            .unwrap();
        assert_eq!(
            body,
            json!({
                "model": "gpt-x",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "fix it"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "read", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "error: no such file"},
                    {"role": "assistant", "content": "done"}
                ],
                "tools": [{"type": "function", "function": {
                    "name": "read", "description": "Reads a file.",
                    "parameters": {"type": "object"}}}],
                "max_completion_tokens": 100,
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
        let ollama =
            serde_json::to_value(ChatRequest::new("q", ProviderKind::Ollama, &request)).unwrap();
        assert_eq!(ollama["max_tokens"], 100);
        assert!(ollama.get("max_completion_tokens").is_none());
        assert!(ollama.get("usage").is_none());
        let openrouter =
            serde_json::to_value(ChatRequest::new("q", ProviderKind::OpenRouter, &request))
                .unwrap();
        assert_eq!(openrouter["usage"], json!({"include": true}));
    }

    #[test]
    fn keys_and_base_urls_come_from_the_environment() {
        let env = |name: &str| match name {
            "OPENAI_API_KEY" => Some("sk-secret-123".to_owned()),
            "OPENAI_BASE_URL" => Some("http://127.0.0.1:9/v1/".to_owned()),
            _ => None,
        };
        let client = OpenAiClient::new(&model("openai/gpt-x"), &env).unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains("sk-secret-123"), "{debug}");
        assert!(
            debug.contains("http://127.0.0.1:9/v1/chat/completions"),
            "{debug}"
        );

        let error = OpenAiClient::new(&model("openrouter/x/y"), &|_| None).unwrap_err();
        assert!(matches!(error, LlmError::Config(_)));
        assert_eq!(
            error.to_string(),
            "openrouter/x/y needs an API key: set OPENROUTER_API_KEY"
        );
        let blank = |name: &str| (name == "OPENAI_API_KEY").then(|| "  ".to_owned());
        assert!(OpenAiClient::new(&model("openai/gpt-x"), &blank).is_err());

        let ollama = OpenAiClient::new(&model("ollama/qwen3"), &|_| None).unwrap();
        assert!(format!("{ollama:?}").contains("http://127.0.0.1:11434/v1/chat/completions"));
    }
}

//! The `anthropic` provider: the Messages API, streaming.
//!
//! A request is `POST {base}/v1/messages` (just `/messages` when the base already ends in
//! `/v1`) with `x-api-key` and `anthropic-version`. The conversation maps onto alternating
//! `user` and `assistant` messages of content blocks: assistant tool calls become `tool_use`
//! blocks with the arguments parsed into an object, and tool results become `tool_result`
//! blocks of a user message, merged with any user text that follows so roles alternate. The
//! answer is decoded by [`stream::MessageStream`].

mod stream;

use kugetsu_protocol::ModelRef;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use super::error::ErrorSource;
use super::gate::Gate;
use super::http::{Ask, Endpoint, Timeouts, base_url, endpoint_url, key_header};
use super::retry::RetryPolicy;
use super::{Completion, LlmError, LlmRequest, StreamSink};
use crate::conversation::{Message, ToolCall, ToolSpec};

pub(crate) use stream::MessageStream;

/// The API version every request is pinned to.
const API_VERSION: &str = "2023-06-01";

/// Client for the Anthropic Messages API (or a server speaking it).
#[derive(Debug)]
pub struct AnthropicClient {
    /// The model id sent in each request.
    model: String,
    /// Where requests go; holds the key.
    endpoint: Endpoint,
}

impl AnthropicClient {
    /// Builds the client for `model`, reading its base URL and key through `env`.
    pub fn new(model: &ModelRef, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, LlmError> {
        let (url_var, base) = base_url(model, env)?;
        let path = if base.trim_end_matches('/').ends_with("/v1") {
            "messages"
        } else {
            "v1/messages"
        };
        let url = endpoint_url(url_var, &base, path)?;
        let mut headers = HeaderMap::new();
        if let Some(key) = key_header(model, env, str::to_owned)? {
            headers.insert(HeaderName::from_static("x-api-key"), key);
        }
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        );
        let source = ErrorSource {
            provider: model.provider.name(),
            key_env: model.provider.api_key_env(),
        };
        Ok(Self {
            model: model.model.clone(),
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
        let body = serde_json::to_vec(&MessagesRequest::new(&self.model, request))
            .map_err(|source| LlmError::EncodeRequest { source })?;
        let source = self.endpoint.source();
        let ask = Ask::for_body(&body, request.max_tokens);
        self.endpoint
            .stream(body, ask, || MessageStream::new(source), sink)
            .await
    }
}

/// The body of a streaming Messages request.
#[derive(Debug, Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    system: &'a str,
    messages: Vec<ApiMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ApiTool<'a>>,
    stream: bool,
}

#[derive(Debug, Serialize)]
struct ApiMessage<'a> {
    role: Role,
    content: Vec<Block<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Role {
    User,
    Assistant,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: String,
        name: &'a str,
        input: serde_json::Value,
    },
    ToolResult {
        tool_use_id: String,
        content: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
}

#[derive(Debug, Serialize)]
struct ApiTool<'a> {
    name: &'a str,
    description: &'a str,
    input_schema: &'a serde_json::Value,
}

impl<'a> MessagesRequest<'a> {
    fn new(model: &'a str, request: &LlmRequest<'a>) -> Self {
        Self {
            model,
            max_tokens: request.max_tokens,
            system: request.system,
            messages: api_messages(request.messages),
            tools: request
                .tools
                .iter()
                .map(|spec: &'a ToolSpec| ApiTool {
                    name: &spec.name,
                    description: &spec.description,
                    input_schema: &spec.parameters,
                })
                .collect(),
            stream: true,
        }
    }
}

/// Maps the conversation onto strictly alternating messages: consecutive entries of one role
/// share a message, blank text is dropped (the API rejects empty blocks), and in a user
/// message the tool results come before any text, as the API requires.
fn api_messages(messages: &[Message]) -> Vec<ApiMessage<'_>> {
    let mut out: Vec<ApiMessage<'_>> = Vec::with_capacity(messages.len());
    for message in messages {
        let (role, blocks) = match message {
            Message::User { text } => (Role::User, text_block(text).into_iter().collect()),
            Message::Assistant { text, tool_calls } => (
                Role::Assistant,
                text_block(text)
                    .into_iter()
                    .chain(tool_calls.iter().map(tool_use_block))
                    .collect(),
            ),
            Message::ToolResult {
                call_id,
                content,
                is_error,
                ..
            } => (
                Role::User,
                vec![Block::ToolResult {
                    tool_use_id: tool_use_id(call_id),
                    content,
                    is_error: *is_error,
                }],
            ),
        };
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => out.push(ApiMessage {
                role,
                content: blocks,
            }),
        }
    }
    for message in &mut out {
        if message.role == Role::User {
            // Stable: results keep their order, text keeps its order after them.
            message
                .content
                .sort_by_key(|block| !matches!(block, Block::ToolResult { .. }));
        }
    }
    out
}

fn text_block(text: &str) -> Option<Block<'_>> {
    (!text.trim().is_empty()).then_some(Block::Text { text })
}

fn tool_use_block(call: &ToolCall) -> Block<'_> {
    // The API wants an object; arguments the model garbled were already answered with an
    // error result, so an empty object stands in for them.
    let input = match serde_json::from_str::<serde_json::Value>(&call.arguments) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        _ => serde_json::Value::Object(serde_json::Map::new()),
    };
    Block::ToolUse {
        id: tool_use_id(&call.id),
        name: &call.name,
        input,
    }
}

/// A tool call id the API accepts (`^[a-zA-Z0-9_-]+$`), for ids another provider minted.
fn tool_use_id(id: &str) -> String {
    if id.is_empty() {
        return "call".to_owned();
    }
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn model(s: &str) -> ModelRef {
        s.parse().unwrap()
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    fn result(call_id: &str, content: &str, is_error: bool) -> Message {
        Message::ToolResult {
            call_id: call_id.into(),
            name: "t".into(),
            content: content.into(),
            is_error,
        }
    }

    #[test]
    fn conversation_maps_to_alternating_block_messages() {
        let messages = vec![
            Message::User {
                text: "fix it".into(),
            },
            Message::Assistant {
                text: "Looking.".into(),
                tool_calls: vec![
                    call("toolu_1", "read", "{\"path\":\"a.rs\"}"),
                    call("call.2", "ls", ""),
                ],
            },
            result("toolu_1", "fn main() {}", false),
            result("call.2", "denied", true),
            Message::User {
                text: "also add tests".into(),
            },
            Message::Assistant {
                text: " ".into(),
                tool_calls: vec![],
            },
            Message::User {
                text: "well?".into(),
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
            max_tokens: 4096,
        };
        let body = serde_json::to_value(MessagesRequest::new("claude-x", &request)).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude-x",
                "max_tokens": 4096,
                "system": "be brief",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "fix it"}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Looking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a.rs"}},
                        {"type": "tool_use", "id": "call_2", "name": "ls", "input": {}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "fn main() {}"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "denied", "is_error": true},
                        {"type": "text", "text": "also add tests"},
                        {"type": "text", "text": "well?"}
                    ]}
                ],
                "tools": [{"name": "read", "description": "Reads a file.", "input_schema": {"type": "object"}}],
                "stream": true
            })
        );
    }

    #[test]
    fn text_before_results_in_one_user_message_moves_after_them() {
        let messages = vec![
            Message::Assistant {
                text: String::new(),
                tool_calls: vec![call("a", "ls", "{}")],
            },
            Message::User {
                text: "steer".into(),
            },
            result("a", "ok", false),
        ];
        let api = serde_json::to_value(api_messages(&messages)).unwrap();
        assert_eq!(api[1]["content"][0]["type"], "tool_result");
        assert_eq!(api[1]["content"][1]["type"], "text");
    }

    #[test]
    fn the_url_gets_v1_once_and_the_key_stays_hidden() {
        let env_with = |base: &'static str| {
            move |name: &str| match name {
                "ANTHROPIC_API_KEY" => Some("sk-ant-secret".to_owned()),
                "ANTHROPIC_BASE_URL" => Some(base.to_owned()),
                _ => None,
            }
        };
        for (base, url) in [
            (
                "https://api.anthropic.com",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                "https://proxy.example/v1/",
                "https://proxy.example/v1/messages",
            ),
            (
                "http://127.0.0.1:8080/",
                "http://127.0.0.1:8080/v1/messages",
            ),
        ] {
            let client =
                AnthropicClient::new(&model("anthropic/claude-x"), &env_with(base)).unwrap();
            let debug = format!("{client:?}");
            assert!(debug.contains(url), "{debug}");
            assert!(!debug.contains("sk-ant-secret"), "{debug}");
        }
        let error = AnthropicClient::new(&model("anthropic/claude-x"), &|_| None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "anthropic/claude-x needs an API key: set ANTHROPIC_API_KEY"
        );
    }
}

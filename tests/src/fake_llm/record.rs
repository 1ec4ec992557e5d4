//! Recorded requests, and the views of them tests assert on.

use std::time::Instant;

use serde_json::Value;

use super::http::header;
use super::server::Wire;

/// One request the fake LLM received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// 1-based position among all requests this server received.
    pub number: usize,
    /// Whether it was served as a summary request (a compaction): it offered no tools, and the
    /// test scripted summaries ([`FakeLlm::push_summary`](super::FakeLlm::push_summary)).
    pub summary: bool,
    /// The wire format the path asked for, if it named one.
    pub wire: Option<Wire>,
    pub method: String,
    pub path: String,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// When the whole request had been read.
    pub received_at: Instant,
}

/// A tool result the client sent back, in either provider's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    /// `tool_call_id` (OpenAI) or `tool_use_id` (Anthropic).
    pub call_id: String,
    /// The result text (text blocks joined).
    pub content: String,
    /// Anthropic's `is_error`; OpenAI has no such field.
    pub is_error: Option<bool>,
}

/// A tool call found in an assistant message the client sent back.
#[derive(Debug, Clone, PartialEq)]
pub struct EchoedCall {
    pub id: String,
    pub name: String,
    /// The arguments, parsed (OpenAI sends them as a JSON string, Anthropic as an object).
    pub arguments: Value,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as text (lossy UTF-8).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> &Value {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("request #{} has no JSON body", self.number))
    }

    /// `messages` of the body (empty when missing).
    pub fn messages(&self) -> &[Value] {
        self.json
            .as_ref()
            .and_then(|j| j.get("messages"))
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// The `model` field.
    pub fn model(&self) -> Option<&str> {
        self.json.as_ref()?.get("model")?.as_str()
    }

    /// The system prompt: OpenAI's leading `system` (or `developer`) message, Anthropic's
    /// `system` field (text blocks joined). Empty when there is none.
    pub fn system_text(&self) -> String {
        let Some(body) = self.json.as_ref() else {
            return String::new();
        };
        match self.wire {
            Some(Wire::Anthropic) => content_text(body.get("system")),
            _ => self
                .messages()
                .iter()
                .take_while(|m| {
                    matches!(
                        m.get("role").and_then(Value::as_str),
                        Some("system" | "developer")
                    )
                })
                .map(|m| content_text(m.get("content")))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// The messages after any leading system messages: the conversation itself.
    pub fn conversation(&self) -> &[Value] {
        let messages = self.messages();
        let skip = messages
            .iter()
            .take_while(|m| {
                matches!(
                    m.get("role").and_then(Value::as_str),
                    Some("system" | "developer")
                )
            })
            .count();
        &messages[skip..]
    }

    /// The role and text of every message of [`conversation`](Self::conversation), in order,
    /// in a provider-neutral form: `("user", text)`, `("assistant", text)`, and
    /// `("tool", content)` for each tool result (Anthropic's tool_result blocks become one
    /// entry each, before the user text of the same message).
    pub fn transcript(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for message in self.conversation() {
            let role = message.get("role").and_then(Value::as_str).unwrap_or("");
            match (self.wire, role) {
                (Some(Wire::OpenAi), "tool") => {
                    out.push(("tool".to_owned(), content_text(message.get("content"))));
                }
                (Some(Wire::Anthropic), "user") => {
                    let mut text = String::new();
                    match message.get("content") {
                        Some(Value::Array(blocks)) => {
                            for block in blocks {
                                match block.get("type").and_then(Value::as_str) {
                                    Some("tool_result") => out.push((
                                        "tool".to_owned(),
                                        content_text(block.get("content")),
                                    )),
                                    Some("text") => text.push_str(
                                        block.get("text").and_then(Value::as_str).unwrap_or(""),
                                    ),
                                    _ => {}
                                }
                            }
                        }
                        other => text = content_text(other),
                    }
                    if !text.is_empty() {
                        out.push(("user".to_owned(), text));
                    }
                }
                (_, role) => {
                    let text = match message.get("content") {
                        Some(Value::Array(blocks)) => blocks
                            .iter()
                            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                            .filter_map(|b| b.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join(""),
                        other => content_text(other),
                    };
                    out.push((role.to_owned(), text));
                }
            }
        }
        out
    }

    /// The text of the first user message of the conversation; panics when there is none.
    pub fn first_user_text(&self) -> String {
        self.user_texts()
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("request #{} has no user text", self.number))
    }

    /// Names of the tools offered in `tools`.
    pub fn tool_names(&self) -> Vec<String> {
        let Some(tools) = self
            .json
            .as_ref()
            .and_then(|j| j.get("tools"))
            .and_then(Value::as_array)
        else {
            return Vec::new();
        };
        tools
            .iter()
            .filter_map(|t| {
                t.pointer("/function/name")
                    .or_else(|| t.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Every tool result in the conversation, in order.
    pub fn tool_results(&self) -> Vec<ToolResult> {
        let mut out = Vec::new();
        for message in self.messages() {
            match self.wire {
                Some(Wire::OpenAi)
                    if message.get("role").and_then(Value::as_str) == Some("tool") =>
                {
                    out.push(ToolResult {
                        call_id: str_field(message, "tool_call_id"),
                        content: content_text(message.get("content")),
                        is_error: None,
                    });
                }
                Some(Wire::Anthropic) => {
                    for block in content_blocks(message) {
                        if block.get("type").and_then(Value::as_str) == Some("tool_result") {
                            out.push(ToolResult {
                                call_id: str_field(block, "tool_use_id"),
                                content: content_text(block.get("content")),
                                is_error: block.get("is_error").and_then(Value::as_bool),
                            });
                        }
                    }
                }
                Some(Wire::OpenAi) | None => {}
            }
        }
        out
    }

    /// The tool result answering `call_id`; panics when there is none.
    pub fn tool_result(&self, call_id: &str) -> ToolResult {
        self.tool_results()
            .into_iter()
            .find(|r| r.call_id == call_id)
            .unwrap_or_else(|| {
                panic!(
                    "request #{} carries no tool result for {call_id}; it has {:?}",
                    self.number,
                    self.tool_results()
                )
            })
    }

    /// Every tool call in the assistant messages of the conversation, in order.
    pub fn assistant_tool_calls(&self) -> Vec<EchoedCall> {
        let mut out = Vec::new();
        for message in self.messages() {
            if message.get("role").and_then(Value::as_str) != Some("assistant") {
                continue;
            }
            match self.wire {
                Some(Wire::OpenAi) => {
                    for call in message
                        .get("tool_calls")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let raw = call
                            .pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        out.push(EchoedCall {
                            id: str_field(call, "id"),
                            name: call
                                .pointer("/function/name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            arguments: serde_json::from_str(raw)
                                .unwrap_or_else(|_| Value::String(raw.to_owned())),
                        });
                    }
                }
                Some(Wire::Anthropic) => {
                    for block in content_blocks(message) {
                        if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                            out.push(EchoedCall {
                                id: str_field(block, "id"),
                                name: str_field(block, "name"),
                                arguments: block.get("input").cloned().unwrap_or(Value::Null),
                            });
                        }
                    }
                }
                None => {}
            }
        }
        out
    }

    /// The text of every user message that is not made of tool results, in order.
    pub fn user_texts(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(|m| match m.get("content") {
                Some(Value::Array(blocks)) => blocks
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
                other => content_text(other),
            })
            .filter(|t| !t.is_empty())
            .collect()
    }
}

fn str_field(value: &Value, name: &str) -> String {
    value
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The content blocks of an Anthropic message (a string content is one text block).
pub(crate) fn content_blocks(message: &Value) -> Vec<&Value> {
    match message.get("content") {
        Some(Value::Array(blocks)) => blocks.iter().collect(),
        _ => Vec::new(),
    }
}

/// The text of a content field: a string, or the text blocks of an array joined.
pub(crate) fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

//! What every request must satisfy: the rules the real APIs enforce (or that a correct client
//! keeps), checked on each request the fake LLM receives.

use std::collections::HashSet;

use serde_json::Value;

use super::record::{RecordedRequest, content_blocks};
use super::server::Wire;

/// What the test told the server to expect.
#[derive(Debug, Clone, Default)]
pub(crate) struct Expectations {
    /// The `model` field every request must carry.
    pub model: Option<String>,
    /// The key every request must carry (`Authorization: Bearer` or `x-api-key`).
    pub api_key: Option<String>,
    /// The `model` every summary request (one offering no tools) must carry, when it is not
    /// `model` (a separate compaction model).
    pub summary_model: Option<String>,
}

impl Expectations {
    /// What a request must satisfy: summary requests may name their own model.
    pub fn for_request(&self, summary: bool) -> Expectations {
        let mut out = self.clone();
        if summary && self.summary_model.is_some() {
            out.model.clone_from(&self.summary_model);
        }
        out
    }
}

/// The violations of `request`, each a one-line description. `issued` holds every tool-call id
/// this server has streamed so far.
pub(crate) fn check(
    wire: Wire,
    expect: &Expectations,
    request: &RecordedRequest,
    issued: &HashSet<String>,
) -> Vec<String> {
    let mut v = Vec::new();
    if request.method != "POST" {
        v.push(format!("method is {}, not POST", request.method));
    }
    if !request
        .header("content-type")
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"))
    {
        v.push(format!(
            "content-type is {:?}, not application/json",
            request.header("content-type")
        ));
    }
    let Some(body) = request.json.as_ref().filter(|j| j.is_object()) else {
        v.push("the body is not a JSON object".to_owned());
        return v;
    };
    if body.get("stream") != Some(&Value::Bool(true)) {
        v.push(format!(
            "\"stream\" is {:?}, not true",
            body.get("stream").map(Value::to_string)
        ));
    }
    if let Some(model) = &expect.model
        && body.get("model").and_then(Value::as_str) != Some(model.as_str())
    {
        v.push(format!(
            "\"model\" is {:?}, expected {model:?}",
            body.get("model").map(Value::to_string)
        ));
    }
    match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {}
        _ => v.push("\"messages\" is missing or empty".to_owned()),
    }
    match wire {
        Wire::OpenAi => check_openai(expect, request, body, issued, &mut v),
        Wire::Anthropic => check_anthropic(expect, request, body, issued, &mut v),
    }
    v
}

fn check_openai(
    expect: &Expectations,
    request: &RecordedRequest,
    body: &Value,
    issued: &HashSet<String>,
    v: &mut Vec<String>,
) {
    if let Some(key) = &expect.api_key {
        let want = format!("Bearer {key}");
        if request.header("authorization") != Some(want.as_str()) {
            v.push(format!(
                "authorization header is {:?}, expected \"Bearer <the key>\"",
                request.header("authorization").map(redact)
            ));
        }
    }
    if let Some(tools) = body.get("tools") {
        match tools.as_array() {
            Some(tools) if tools.is_empty() => v.push(
                "\"tools\" is an empty array, which the API rejects: leave the key out".to_owned(),
            ),
            Some(tools) => {
                for tool in tools {
                    let ok = tool.get("type").and_then(Value::as_str) == Some("function")
                        && tool.pointer("/function/name").is_some_and(Value::is_string)
                        && tool
                            .pointer("/function/parameters")
                            .is_some_and(Value::is_object);
                    if !ok {
                        v.push(format!("malformed tool definition {tool}"));
                    }
                }
            }
            None => v.push("\"tools\" is not an array".to_owned()),
        }
    }

    // Every assistant message with tool_calls must be followed by one tool message per call,
    // before anything else; every tool message must answer such a call.
    let mut open: Vec<String> = Vec::new();
    for (i, message) in request.messages().iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        match role {
            "system" | "developer" | "user" | "assistant" => {
                if !open.is_empty() {
                    v.push(format!(
                        "messages[{i}] ({role}) comes before tool results for {open:?}"
                    ));
                    open.clear();
                }
            }
            "tool" => {}
            other => v.push(format!("messages[{i}] has unknown role {other:?}")),
        }
        match role {
            "assistant" => {
                let calls = message.get("tool_calls").and_then(Value::as_array);
                let content = message.get("content");
                if calls.is_none_or(Vec::is_empty)
                    && content.is_none_or(|c| c.is_null() || c.as_str() == Some(""))
                {
                    v.push(format!(
                        "messages[{i}] is an assistant message with neither content nor tool calls"
                    ));
                }
                for call in calls.into_iter().flatten() {
                    let id = call.get("id").and_then(Value::as_str).unwrap_or("");
                    if id.is_empty() {
                        v.push(format!("messages[{i}] has a tool call without an id"));
                    } else if !issued.contains(id) {
                        v.push(format!(
                            "messages[{i}] echoes tool call id {id:?} that this server never sent"
                        ));
                    }
                    if call.get("type").and_then(Value::as_str) != Some("function") {
                        v.push(format!(
                            "messages[{i}] tool call {id:?} lacks type \"function\""
                        ));
                    }
                    if !call.pointer("/function/name").is_some_and(Value::is_string) {
                        v.push(format!(
                            "messages[{i}] tool call {id:?} lacks function.name"
                        ));
                    }
                    if !call
                        .pointer("/function/arguments")
                        .is_some_and(Value::is_string)
                    {
                        v.push(format!(
                            "messages[{i}] tool call {id:?}: function.arguments must be a JSON string"
                        ));
                    }
                    open.push(id.to_owned());
                }
            }
            "tool" => {
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                match open.iter().position(|o| o == id) {
                    Some(pos) => {
                        open.remove(pos);
                    }
                    None => v.push(format!(
                        "messages[{i}] is a tool result for {id:?}, which the previous assistant \
                         message did not call (or was already answered)"
                    )),
                }
                if !message
                    .get("content")
                    .is_some_and(|c| c.is_string() || c.is_array())
                {
                    v.push(format!("messages[{i}] tool result has no content"));
                }
            }
            _ => {}
        }
    }
    if !open.is_empty() {
        v.push(format!("tool calls {open:?} have no tool result"));
    }
}

fn check_anthropic(
    expect: &Expectations,
    request: &RecordedRequest,
    body: &Value,
    issued: &HashSet<String>,
    v: &mut Vec<String>,
) {
    if request.path != "/v1/messages" {
        v.push(format!(
            "path is {:?}; with ANTHROPIC_BASE_URL=http://HOST:PORT the client must post to \
             /v1/messages",
            request.path
        ));
    }
    if let Some(key) = &expect.api_key
        && request.header("x-api-key") != Some(key.as_str())
    {
        v.push(format!(
            "x-api-key header is {:?}, expected the key",
            request.header("x-api-key").map(redact)
        ));
    }
    if request
        .header("anthropic-version")
        .is_none_or(|a| a.trim().is_empty())
    {
        v.push("no anthropic-version header".to_owned());
    }
    if body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .is_none_or(|n| n == 0)
    {
        v.push("\"max_tokens\" is missing or not a positive integer".to_owned());
    }
    match body.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) if blocks.iter().all(|b| b.get("type").is_some()) => {}
        Some(other) => v.push(format!(
            "\"system\" is neither a string nor blocks: {other}"
        )),
    }
    if let Some(tools) = body.get("tools") {
        match tools.as_array() {
            Some(tools) => {
                for tool in tools {
                    let ok = tool.get("name").is_some_and(Value::is_string)
                        && tool.get("input_schema").is_some_and(Value::is_object);
                    if !ok {
                        v.push(format!("malformed tool definition {tool}"));
                    }
                }
            }
            None => v.push("\"tools\" is not an array".to_owned()),
        }
    }

    let messages = request.messages();
    if messages
        .first()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        .is_some_and(|r| r != "user")
    {
        v.push("the first message is not a user message".to_owned());
    }
    // The tool_use ids of the previous assistant message, to be answered by the very next
    // user message.
    let mut open: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        match role {
            "assistant" => {
                if !open.is_empty() {
                    v.push(format!(
                        "messages[{i}] (assistant) follows tool uses {open:?} that got no result"
                    ));
                }
                open.clear();
                let content = message.get("content");
                let empty = match content {
                    Some(Value::String(s)) => s.is_empty(),
                    Some(Value::Array(blocks)) => blocks.is_empty(),
                    _ => true,
                };
                if empty {
                    v.push(format!("messages[{i}] is an empty assistant message"));
                }
                for block in content_blocks(message) {
                    match block.get("type").and_then(Value::as_str) {
                        Some("tool_use") => {
                            let id = block.get("id").and_then(Value::as_str).unwrap_or("");
                            if !issued.contains(id) {
                                v.push(format!(
                                    "messages[{i}] echoes tool_use id {id:?} that this server \
                                     never sent"
                                ));
                            }
                            if !block.get("name").is_some_and(Value::is_string) {
                                v.push(format!("messages[{i}] tool_use {id:?} has no name"));
                            }
                            if !block.get("input").is_some_and(Value::is_object) {
                                v.push(format!(
                                    "messages[{i}] tool_use {id:?}: input must be an object"
                                ));
                            }
                            open.push(id.to_owned());
                        }
                        Some("text") if block.get("text").and_then(Value::as_str) == Some("") => {
                            v.push(format!(
                                "messages[{i}] has an empty text block (the API rejects it)"
                            ));
                        }
                        _ => {}
                    }
                }
            }
            "user" => {
                let blocks = content_blocks(message);
                let mut seen_other = false;
                for block in &blocks {
                    if block.get("type").and_then(Value::as_str) == Some("tool_result") {
                        if seen_other {
                            v.push(format!(
                                "messages[{i}]: tool_result blocks must come before other content"
                            ));
                        }
                        let id = block
                            .get("tool_use_id")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        match open.iter().position(|o| o == id) {
                            Some(pos) => {
                                open.remove(pos);
                            }
                            None => v.push(format!(
                                "messages[{i}] has a tool_result for {id:?}, which the previous \
                                 assistant message did not use (or was already answered)"
                            )),
                        }
                    } else {
                        seen_other = true;
                    }
                }
                if !open.is_empty() {
                    v.push(format!(
                        "messages[{i}] does not answer tool uses {open:?} of the previous \
                         assistant message"
                    ));
                    open.clear();
                }
            }
            other => v.push(format!(
                "messages[{i}] has role {other:?}; only user and assistant are allowed"
            )),
        }
    }
    if !open.is_empty() {
        v.push(format!("tool uses {open:?} have no tool_result"));
    }
}

/// Shows that a secret-bearing header was there without showing it.
fn redact(value: &str) -> String {
    let keep: String = value.chars().take(10).collect();
    format!("{keep}… ({} chars)", value.chars().count())
}

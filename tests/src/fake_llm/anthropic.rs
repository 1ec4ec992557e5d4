//! The Anthropic Messages wire format: SSE `event: NAME\ndata: {json}` events and error
//! bodies, as api.anthropic.com sends them.

use serde_json::{Value, json};

use super::ids::IdGen;
use super::reply::{ApiError, Block, ErrorKind, Turn, pieces_by_bytes, pieces_by_chars};

/// The SSE events of `turn`, and the tool-use ids issued in it.
pub(crate) fn stream(turn: &Turn, model: &str, ids: &mut IdGen) -> (Vec<Vec<u8>>, Vec<String>) {
    let mut events: Vec<Vec<u8>> = Vec::new();
    let mut tool_ids = Vec::new();
    events.push(event(
        "message_start",
        &json!({
            "type": "message_start",
            "message": {
                "id": ids.anthropic_message(),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": turn.input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 1,
                    "service_tier": "standard",
                },
            },
        }),
    ));
    let ping = event("ping", &json!({"type": "ping"}));
    if turn.blocks.is_empty() && !turn.quirks.no_ping {
        events.push(ping.clone());
    }
    for (index, block) in turn.blocks.iter().enumerate() {
        match block {
            Block::Text(text) => {
                events.push(event(
                    "content_block_start",
                    &json!({
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    }),
                ));
                if index == 0 && !turn.quirks.no_ping {
                    events.push(ping.clone());
                }
                for piece in pieces_by_chars(text, turn.text_piece) {
                    events.push(event(
                        "content_block_delta",
                        &json!({
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": piece},
                        }),
                    ));
                }
            }
            Block::ToolCall { name, arguments } => {
                let id = ids.anthropic_tool_use();
                tool_ids.push(id.clone());
                let mut content_block = json!({"type": "tool_use", "id": id, "name": name});
                if !turn.quirks.tool_use_without_input {
                    content_block["input"] = json!({});
                }
                events.push(event(
                    "content_block_start",
                    &json!({
                        "type": "content_block_start",
                        "index": index,
                        "content_block": content_block,
                    }),
                ));
                if index == 0 && !turn.quirks.no_ping {
                    events.push(ping.clone());
                }
                // The API opens every tool input with an empty partial_json.
                let mut pieces = vec![String::new()];
                pieces.extend(pieces_by_bytes(arguments, turn.args_piece));
                for piece in pieces {
                    events.push(event(
                        "content_block_delta",
                        &json!({
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        }),
                    ));
                }
            }
        }
        events.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }
    let stop = turn.stop_reason.clone().unwrap_or_else(|| {
        if turn.has_tool_calls() {
            "tool_use".to_owned()
        } else {
            "end_turn".to_owned()
        }
    });
    events.push(event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"output_tokens": turn.output_tokens},
        }),
    ));
    if !turn.omit_done {
        events.push(event("message_stop", &json!({"type": "message_stop"})));
    }
    (events, tool_ids)
}

fn event(name: &str, data: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// The in-stream `error` event.
pub(crate) fn stream_error(error: &ApiError) -> Vec<u8> {
    let (_, mut body) = error_body(error);
    if let Some(map) = body.as_object_mut() {
        map.remove("request_id");
    }
    event("error", &body)
}

/// Status and body of an error reply.
pub(crate) fn error_body(error: &ApiError) -> (u16, Value) {
    let (status, kind, message) = match error.kind {
        ErrorKind::Unauthorized => (401, "authentication_error", "invalid x-api-key"),
        ErrorKind::RateLimited => (
            429,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50,000 input \
             tokens per minute. Please try again later.",
        ),
        ErrorKind::ServerError => (500, "api_error", "Internal server error"),
        ErrorKind::Overloaded => (529, "overloaded_error", "Overloaded"),
        ErrorKind::ContextLengthExceeded => (
            400,
            "invalid_request_error",
            "prompt is too long: 215304 tokens > 200000 maximum",
        ),
        ErrorKind::InvalidRequest => (400, "invalid_request_error", "Invalid request."),
    };
    let message = error.message.as_deref().unwrap_or(message);
    (
        status,
        json!({
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": "req_011CFakeFakeFakeFakeFake",
        }),
    )
}

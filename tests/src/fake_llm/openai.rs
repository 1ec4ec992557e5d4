//! The OpenAI chat-completions wire format: SSE `data: {json}` chunks and error bodies, as
//! api.openai.com sends them (and, with quirks on, as llama.cpp does).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::ids::IdGen;
use super::reply::{ApiError, Block, ErrorKind, Turn, pieces_by_bytes, pieces_by_chars};

/// The SSE events of `turn` (each `data: …\n\n`), and the tool-call ids issued in it.
pub(crate) fn stream(turn: &Turn, model: &str, ids: &mut IdGen) -> (Vec<Vec<u8>>, Vec<String>) {
    let llama = turn.quirks.llama_cpp;
    let id = ids.openai_completion();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let chunk = |choices: Value, usage: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        });
        if llama {
            chunk["system_fingerprint"] = json!("b5460-f1a2b3c4");
            if !usage.is_null() {
                chunk["usage"] = usage;
            }
        } else {
            chunk["service_tier"] = json!("default");
            chunk["system_fingerprint"] = json!("fp_fake0b1c2d");
            chunk["usage"] = usage;
        }
        chunk
    };
    let choice = |delta: Value, finish: Value| {
        if llama {
            json!({"index": 0, "delta": delta, "finish_reason": finish})
        } else {
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
    };

    let mut events: Vec<Value> = Vec::new();
    let mut tool_ids = Vec::new();
    let starts_with_text = matches!(turn.blocks.first(), Some(Block::Text(_)));
    // The role arrives in the first delta. With a text turn it comes with an empty content
    // string; with a tool-only turn, OpenAI merges it into the first tool-call delta.
    let mut pending_role = true;
    if starts_with_text || turn.blocks.is_empty() {
        let mut delta = json!({"role": "assistant", "content": ""});
        if !llama {
            delta["refusal"] = Value::Null;
        }
        events.push(chunk(json!([choice(delta, Value::Null)]), Value::Null));
        pending_role = false;
    }
    let mut call_index = 0usize;
    for block in &turn.blocks {
        match block {
            Block::Text(text) => {
                for piece in pieces_by_chars(text, turn.text_piece) {
                    events.push(chunk(
                        json!([choice(json!({"content": piece}), Value::Null)]),
                        Value::Null,
                    ));
                }
            }
            Block::ToolCall { name, arguments } => {
                let call_id = if llama {
                    ids.llama_call()
                } else {
                    ids.openai_call()
                };
                tool_ids.push(call_id.clone());
                let mut first = json!({
                    "tool_calls": [{
                        "index": call_index,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }]
                });
                if pending_role {
                    first["role"] = json!("assistant");
                    first["content"] = if llama { json!("") } else { Value::Null };
                    if !llama {
                        first["refusal"] = Value::Null;
                    }
                    pending_role = false;
                } else if llama {
                    first["content"] = json!("");
                }
                events.push(chunk(json!([choice(first, Value::Null)]), Value::Null));
                for piece in pieces_by_bytes(arguments, turn.args_piece) {
                    let mut delta = json!({
                        "tool_calls": [{"index": call_index, "function": {"arguments": piece}}]
                    });
                    if llama {
                        delta["content"] = json!("");
                    }
                    events.push(chunk(json!([choice(delta, Value::Null)]), Value::Null));
                }
                call_index += 1;
            }
        }
    }
    let finish = turn.stop_reason.clone().unwrap_or_else(|| {
        if turn.has_tool_calls() {
            "tool_calls".to_owned()
        } else {
            "stop".to_owned()
        }
    });
    let mut last = chunk(json!([choice(json!({}), json!(finish))]), Value::Null);
    if llama {
        last["timings"] = timings(turn);
    }
    events.push(last);
    let usage = json!({
        "prompt_tokens": turn.input_tokens,
        "completion_tokens": turn.output_tokens,
        "total_tokens": turn.input_tokens + turn.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    });
    let mut usage_chunk = chunk(json!([]), usage);
    if llama {
        usage_chunk["timings"] = timings(turn);
    }
    events.push(usage_chunk);

    let mut bytes: Vec<Vec<u8>> = events.iter().map(data_line).collect();
    if !turn.omit_done {
        bytes.push(b"data: [DONE]\n\n".to_vec());
    }
    (bytes, tool_ids)
}

fn timings(turn: &Turn) -> Value {
    json!({
        "prompt_n": turn.input_tokens,
        "prompt_ms": 12.5,
        "prompt_per_token_ms": 0.125,
        "prompt_per_second": 8000.0,
        "predicted_n": turn.output_tokens,
        "predicted_ms": 40.0,
        "predicted_per_token_ms": 4.0,
        "predicted_per_second": 250.0,
    })
}

fn data_line(value: &Value) -> Vec<u8> {
    format!("data: {value}\n\n").into_bytes()
}

/// The in-stream error event OpenAI sends when a stream fails after it began.
pub(crate) fn stream_error(error: &ApiError) -> Vec<u8> {
    let (_, body) = error_body(error);
    data_line(&body)
}

/// Status and body of an error reply.
pub(crate) fn error_body(error: &ApiError) -> (u16, Value) {
    let (status, message, kind, param, code) = match error.kind {
        ErrorKind::Unauthorized => (
            401,
            "Incorrect API key provided: sk-test-****. You can find your API key at \
             https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            Value::Null,
            json!("invalid_api_key"),
        ),
        ErrorKind::RateLimited => (
            429,
            "Rate limit reached for gpt-4.1-mini in organization org-fake on tokens per min \
             (TPM): Limit 200000, Used 199500, Requested 1200. Please try again in 1s.",
            "tokens",
            Value::Null,
            json!("rate_limit_exceeded"),
        ),
        ErrorKind::ServerError => (
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            Value::Null,
            Value::Null,
        ),
        ErrorKind::Overloaded => (
            503,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            Value::Null,
            Value::Null,
        ),
        ErrorKind::ContextLengthExceeded => (
            400,
            "This model's maximum context length is 128000 tokens. However, your messages \
             resulted in 131072 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            json!("messages"),
            json!("context_length_exceeded"),
        ),
        ErrorKind::InvalidRequest => (
            400,
            "Invalid request.",
            "invalid_request_error",
            Value::Null,
            Value::Null,
        ),
    };
    let message = error.message.as_deref().unwrap_or(message);
    (
        status,
        json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

//! Decodes a streaming chat completions response into a [`Completion`].
//!
//! Each `data:` event is a chunk; `choices[0].delta` carries text in `content` and tool calls
//! in `tool_calls`, each delta naming its call by `index`. Only a call's first delta carries
//! `id` and `name`; later ones append to `function.arguments`. When a server omits `index`, a
//! new `id` opens a new call and a delta without one continues the last. A chunk with
//! `choices: []` carries `usage`; `data: [DONE]` ends the stream, and a chunk with `error`
//! (or an `event: error`) fails it. Every field is optional: llama.cpp, vLLM, Ollama and
//! OpenRouter each leave different ones out and add their own.

use kugetsu_protocol::Usage;
use serde::Deserialize;

use crate::conversation::ToolCall;
use crate::llm::error::{ErrorOrigin, ErrorSource, LlmError, ReportedError, classify};
use crate::llm::http::{StreamDecoder, decode_event};
use crate::llm::sse::{SseEvent, SseParser};
use crate::llm::{Completion, StopReason};

/// The state of one chat completions response being decoded.
#[derive(Debug)]
pub(crate) struct ChatStream {
    /// Names the provider in errors.
    source: ErrorSource,
    /// Splits the byte stream into events.
    sse: SseParser,
    /// Events completed by the current push, reused between pushes.
    events: Vec<SseEvent>,
    /// The text so far.
    text: String,
    /// Tool calls in the order they were opened.
    calls: Vec<PartialCall>,
    /// The last usage the server reported.
    usage: Usage,
    /// The last non-empty `finish_reason`.
    finish_reason: Option<String>,
    /// Whether any chunk arrived; a stream without one is an error.
    received: bool,
    /// Whether `[DONE]` arrived; later events are ignored.
    done: bool,
}

/// A tool call being assembled from deltas.
#[derive(Debug, Default)]
struct PartialCall {
    /// The `index` deltas name it by, when the server sends one.
    index: Option<u64>,
    id: String,
    name: String,
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct Chunk {
    choices: Option<Vec<Choice>>,
    usage: Option<ChunkUsage>,
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    index: Option<u64>,
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    content: Option<String>,
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Deserialize)]
struct ToolCallDelta {
    index: Option<u64>,
    id: Option<String>,
    function: Option<FunctionDelta>,
}

#[derive(Debug, Deserialize)]
struct FunctionDelta {
    name: Option<String>,
    /// A string fragment normally; some servers send the whole arguments object.
    arguments: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct ChunkUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    /// OpenRouter's own figure of what the request cost, in US dollars.
    #[serde(default)]
    cost: Option<f64>,
}

impl ChatStream {
    /// A decoder at the start of a response.
    pub(crate) fn new(source: ErrorSource) -> Self {
        Self {
            source,
            sse: SseParser::new(),
            events: Vec::new(),
            text: String::new(),
            calls: Vec::new(),
            usage: Usage::default(),
            finish_reason: None,
            received: false,
            done: false,
        }
    }

    fn drain(&mut self, on_text: &mut dyn FnMut(&str)) -> Result<(), LlmError> {
        let mut events = std::mem::take(&mut self.events);
        let result = events
            .iter()
            .try_for_each(|event| self.on_event(event, on_text));
        events.clear();
        self.events = events;
        result
    }

    fn on_event(
        &mut self,
        event: &SseEvent,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<(), LlmError> {
        let data = event.data.trim();
        if self.done || data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if event.event == "error" {
            let error: serde_json::Value = decode_event(self.source.provider, data)?;
            let error = error.get("error").unwrap_or(&error);
            return Err(self.stream_error(error));
        }
        let chunk: Chunk = decode_event(self.source.provider, data)?;
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            return Err(self.stream_error(&error));
        }
        self.received = true;
        if let Some(usage) = chunk.usage {
            self.usage = Usage {
                input_tokens: usage.prompt_tokens.unwrap_or(self.usage.input_tokens),
                output_tokens: usage.completion_tokens.unwrap_or(self.usage.output_tokens),
                cost_usd: usage
                    .cost
                    .filter(|c| c.is_finite() && *c >= 0.0)
                    .or(self.usage.cost_usd),
            };
        }
        for choice in chunk.choices.unwrap_or_default() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                if let Some(content) = delta.content.filter(|c| !c.is_empty()) {
                    self.text.push_str(&content);
                    on_text(&content);
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    self.merge_call(call);
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(reason);
            }
        }
        Ok(())
    }

    fn stream_error(&self, error: &serde_json::Value) -> LlmError {
        classify(
            self.source,
            ErrorOrigin::Stream,
            &ReportedError::from_value(error),
        )
    }

    fn merge_call(&mut self, delta: ToolCallDelta) {
        let id = delta.id.filter(|id| !id.is_empty());
        let slot = match (delta.index, &id) {
            (Some(index), _) => self.calls.iter().position(|c| c.index == Some(index)),
            (None, Some(id)) => self.calls.iter().position(|c| c.id == *id),
            (None, None) => self.calls.len().checked_sub(1),
        };
        let slot = slot.unwrap_or_else(|| {
            self.calls.push(PartialCall {
                index: delta.index,
                ..PartialCall::default()
            });
            self.calls.len() - 1
        });
        let call = &mut self.calls[slot];
        if let Some(id) = id
            && call.id.is_empty()
        {
            call.id = id;
        }
        let Some(function) = delta.function else {
            return;
        };
        if let Some(name) = function.name.filter(|n| !n.is_empty()) {
            // Names arrive whole on the first delta; some servers repeat them later.
            if call.name.is_empty() {
                call.name = name;
            } else if call.name != name {
                call.name.push_str(&name);
            }
        }
        match function.arguments {
            Some(serde_json::Value::String(piece)) => call.arguments.push_str(&piece),
            Some(serde_json::Value::Null) | None => {}
            Some(whole) => call.arguments.push_str(&whole.to_string()),
        }
    }
}

impl StreamDecoder for ChatStream {
    fn push(&mut self, bytes: &[u8], on_text: &mut dyn FnMut(&str)) -> Result<(), LlmError> {
        self.sse.push(bytes, &mut self.events);
        self.drain(on_text)
    }

    fn finish(mut self, on_text: &mut dyn FnMut(&str)) -> Result<Completion, LlmError> {
        self.sse.finish(&mut self.events);
        self.drain(on_text)?;
        if !self.received {
            return Err(LlmError::MalformedStream {
                provider: self.source.provider,
                reason: "the response ended before any chunk".to_owned(),
            });
        }
        let tool_calls: Vec<ToolCall> = self
            .calls
            .into_iter()
            .enumerate()
            .map(|(i, call)| ToolCall {
                id: if call.id.is_empty() {
                    format!("call_{}", i + 1)
                } else {
                    call.id
                },
                name: call.name,
                arguments: if call.arguments.trim().is_empty() {
                    "{}".to_owned()
                } else {
                    call.arguments
                },
            })
            .collect();
        let stop = match self.finish_reason.as_deref() {
            // Older Ollama says `stop` even when it called tools.
            Some("stop") if !tool_calls.is_empty() => StopReason::ToolUse,
            Some("stop") => StopReason::EndTurn,
            Some("tool_calls" | "function_call") => StopReason::ToolUse,
            Some("length") => StopReason::MaxTokens,
            Some(other) => StopReason::Other(other.to_owned()),
            None if tool_calls.is_empty() => StopReason::EndTurn,
            None => StopReason::ToolUse,
        };
        Ok(Completion {
            text: self.text,
            tool_calls,
            usage: self.usage,
            stop,
        })
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn tool_call_started(&self) -> bool {
        !self.calls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: ErrorSource = ErrorSource {
        provider: "openai",
        key_env: Some("OPENAI_API_KEY"),
    };

    /// Decodes `pieces` in order; returns the result and the text `on_text` saw.
    fn decode(pieces: &[&[u8]]) -> (Result<Completion, LlmError>, String) {
        let mut decoder = ChatStream::new(SOURCE);
        let mut seen = String::new();
        let mut on_text = |t: &str| seen.push_str(t);
        for piece in pieces {
            if let Err(e) = decoder.push(piece, &mut on_text) {
                return (Err(e), seen);
            }
        }
        let result = decoder.finish(&mut on_text);
        (result, seen)
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    /// Text with multi-byte characters, two tool calls interleaved by index, llama.cpp's
    /// extras (`content: ""`, `timings`), a comment, a multi-line data field, CRLF endings.
    const TWO_CALLS: &str = concat!(
        ": keep-alive\r\n\r\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"héllo ✓ \"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"世界\"},\"finish_reason\":null}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\",\"tool_calls\":[{\"index\":0,\"id\":\"aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF\",\"type\":\"function\",\"function\":{\"name\":\"read\",\"arguments\":\"\"}}]}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"bash\",\"arguments\":\"{\\\"comm\"}}]}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"path\\\": \"}}]}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"and\\\": \\\"ls\\\"}\"}}]}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\n",
        "data: \"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"ü.txt\\\"}\"}}]}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"timings\":{\"predicted_ms\":12.5}}\r\n\r\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":34,\"total_tokens\":154}}\r\n\r\n",
        "data: [DONE]\r\n\r\n",
    );

    fn two_calls_completion() -> Completion {
        Completion {
            text: "héllo ✓ 世界".into(),
            tool_calls: vec![
                call(
                    "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF",
                    "read",
                    "{\"path\": \"ü.txt\"}",
                ),
                call("call_2", "bash", "{\"command\": \"ls\"}"),
            ],
            usage: Usage {
                input_tokens: 120,
                output_tokens: 34,
                cost_usd: None,
            },
            stop: StopReason::ToolUse,
        }
    }

    #[test]
    fn text_and_interleaved_tool_calls_decode_at_every_split() {
        let bytes = TWO_CALLS.as_bytes();
        for split in 0..=bytes.len() {
            let (a, b) = bytes.split_at(split);
            let (result, seen) = decode(&[a, b]);
            assert_eq!(result.unwrap(), two_calls_completion(), "split at {split}");
            assert_eq!(seen, "héllo ✓ 世界");
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode(&one_by_one).0.unwrap(), two_calls_completion());
        let lf_only = TWO_CALLS.replace("\r\n", "\n");
        assert_eq!(
            decode(&[lf_only.as_bytes()]).0.unwrap(),
            two_calls_completion()
        );
    }

    #[test]
    fn calls_without_index_follow_their_ids() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"a\",\"function\":{\"name\":\"ls\",\"arguments\":\"{\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"arguments\":\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"b\",\"function\":{\"name\":\"read\",\"arguments\":{\"path\":\"x\"}}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"grep\"}}]}}]}\n\n",
        );
        let completion = decode(&[stream.as_bytes()]).0.unwrap();
        assert_eq!(
            completion.tool_calls,
            vec![
                call("a", "ls", "{}"),
                call("b", "readgrep", "{\"path\":\"x\"}"),
            ]
        );
        assert_eq!(completion.stop, StopReason::ToolUse);
        assert_eq!(completion.usage, Usage::default());
    }

    #[test]
    fn a_stream_cut_before_done_keeps_what_arrived() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"partial\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"ls\"}}]}}]}",
        );
        let (result, seen) = decode(&[stream.as_bytes()]);
        let completion = result.unwrap();
        assert_eq!(completion.text, "partial");
        assert_eq!(seen, "partial");
        assert_eq!(completion.tool_calls, vec![call("call_1", "ls", "{}")]);
        assert_eq!(completion.stop, StopReason::ToolUse);
    }

    #[test]
    fn finish_reasons_map_to_stop_reasons() {
        let stop = |reason: &str| {
            let data = format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"x\"}},\"finish_reason\":\"{reason}\"}}]}}\n\n"
            );
            decode(&[data.as_bytes()]).0.unwrap().stop
        };
        assert_eq!(stop("stop"), StopReason::EndTurn);
        assert_eq!(stop("length"), StopReason::MaxTokens);
        assert_eq!(stop("tool_calls"), StopReason::ToolUse);
        assert_eq!(
            stop("content_filter"),
            StopReason::Other("content_filter".into())
        );
    }

    #[test]
    fn empty_streams_are_errors() {
        for stream in ["", ": keep-alive\n\n", "data: [DONE]\n\n", "\n\n\n"] {
            let error = decode(&[stream.as_bytes()]).0.unwrap_err();
            assert!(
                matches!(error, LlmError::MalformedStream { .. }),
                "{stream:?}: {error}"
            );
        }
    }

    #[test]
    fn mid_stream_errors_are_typed() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"code\":null}}\n\n",
        );
        let (result, seen) = decode(&[stream.as_bytes()]);
        let error = result.unwrap_err();
        assert!(
            matches!(
                error,
                LlmError::Server {
                    origin: ErrorOrigin::Stream,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.is_retryable());
        assert_eq!(seen, "hi");

        let named = "event: error\ndata: {\"message\":\"prompt is too long\",\"type\":\"invalid_request_error\"}\n\n";
        let error = decode(&[named.as_bytes()]).0.unwrap_err();
        assert!(error.is_context_overflow(), "{error}");
    }

    #[test]
    fn malformed_json_is_a_typed_error_naming_the_data() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\": [oops\n\n";
        let error = decode(&[stream.as_bytes()]).0.unwrap_err();
        assert!(matches!(error, LlmError::MalformedEvent { .. }), "{error}");
        assert!(
            error.to_string().contains("{\\\"choices\\\": [oops"),
            "{error}"
        );
        let not_a_chunk = decode(&[b"data: [1, 2]\n\n"]).0.unwrap_err();
        assert!(matches!(not_a_chunk, LlmError::MalformedEvent { .. }));
    }

    #[test]
    fn events_after_done_are_ignored() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\ndata: garbage\n\n";
        let mut decoder = ChatStream::new(SOURCE);
        decoder.push(stream.as_bytes(), &mut |_| {}).unwrap();
        assert!(decoder.is_done());
        assert_eq!(decoder.finish(&mut |_| {}).unwrap().text, "a");
    }
}

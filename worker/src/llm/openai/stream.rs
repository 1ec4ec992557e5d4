//! Decodes a streaming chat completions response into a [`Completion`].
//!
//! Each `data:` event is a chunk; `choices[0].delta` carries text in `content` and tool calls
//! in `tool_calls`, each delta naming its call by `index`. Only a call's first delta carries
//! `id` and `name`; later ones append to `function.arguments`. When a server omits `index`, a
//! new `id` opens a new call and a delta without one continues the last. A chunk with
//! `choices: []` carries `usage`; `data: [DONE]` ends the stream, and a chunk with `error`
//! (or an `event: error`) fails it. Every field is optional: llama.cpp, vLLM, Ollama and
//! OpenRouter each leave different ones out and add their own.
//!
//! A stream is complete once it carried a `finish_reason` or `[DONE]`; one that ends with
//! neither is [`LlmError::Truncated`], whatever it held. Text and arguments together are
//! capped at
//! [`MAX_STREAM_BYTES`](crate::llm::MAX_STREAM_BYTES).

use kugetsu_protocol::Usage;
use serde::Deserialize;

use crate::conversation::ToolCall;
use crate::llm::error::{ErrorOrigin, ErrorSource, LlmError, ReportedError, classify};
use crate::llm::http::{StreamDecoder, check_size, decode_event, line_too_long};
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
    /// Bytes of text and tool-call arguments held, kept under
    /// [`MAX_STREAM_BYTES`](crate::llm::MAX_STREAM_BYTES).
    held: usize,
    /// Events with data seen (comments are not events), for the stall watchdog.
    content_events: u64,
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
            held: 0,
            content_events: 0,
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
        self.content_events += 1;
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
                    self.hold(content.len(), "a response")?;
                    self.text.push_str(&content);
                    on_text(&content);
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    self.merge_call(call)?;
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

    /// Counts `more` bytes about to be held, failing past the cap.
    fn hold(&mut self, more: usize, what: &'static str) -> Result<(), LlmError> {
        self.held += more;
        check_size(self.source.provider, what, self.held)
    }

    /// Whether the stream said how it ended: a finish reason or `[DONE]`.
    fn complete(&self) -> bool {
        self.done || self.finish_reason.is_some()
    }

    fn merge_call(&mut self, delta: ToolCallDelta) -> Result<(), LlmError> {
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
            return Ok(());
        };
        if let Some(name) = function.name.filter(|n| !n.is_empty()) {
            // Names arrive whole on the first delta; some servers repeat them later.
            if call.name.is_empty() {
                call.name = name;
            } else if call.name != name {
                call.name.push_str(&name);
            }
        }
        let piece = match function.arguments {
            Some(serde_json::Value::String(piece)) => piece,
            Some(serde_json::Value::Null) | None => return Ok(()),
            Some(whole) => whole.to_string(),
        };
        check_size(
            self.source.provider,
            "a tool call's arguments",
            call.arguments.len() + piece.len(),
        )?;
        call.arguments.push_str(&piece);
        self.hold(piece.len(), "a response")
    }
}

impl StreamDecoder for ChatStream {
    fn push(&mut self, bytes: &[u8], on_text: &mut dyn FnMut(&str)) -> Result<(), LlmError> {
        let pushed = self.sse.push(bytes, &mut self.events);
        // Events completed before the line that was too long still count.
        self.drain(on_text)?;
        pushed.map_err(|e| line_too_long(self.source.provider, e))
    }

    fn finish(mut self, on_text: &mut dyn FnMut(&str)) -> Result<Completion, LlmError> {
        self.sse
            .finish(&mut self.events)
            .map_err(|e| line_too_long(self.source.provider, e))?;
        match self.drain(on_text) {
            // What an abrupt end left of a last event: cut short if the stream is not
            // complete without it, an ignorable tail if it is.
            Err(LlmError::MalformedEvent { .. }) if self.complete() => {}
            Err(LlmError::MalformedEvent { .. }) => return Err(self.truncated()),
            other => other?,
        }
        if !self.complete() {
            return Err(self.truncated());
        }
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

    fn content_events(&self) -> u64 {
        self.content_events
    }
}

impl ChatStream {
    fn truncated(&self) -> LlmError {
        LlmError::Truncated {
            provider: self.source.provider,
            missing: "no finish_reason and no [DONE]",
        }
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
    fn openrouters_own_cost_is_kept_and_nonsense_is_not() {
        let stream = |cost: &str| {
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"hi\"}},\"finish_reason\":\"stop\"}}]}}\n\n\
                 data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":10,\"completion_tokens\":2,\"cost\":{cost}}}}}\n\n\
                 data: [DONE]\n\n"
            )
        };
        let usage = |cost: &str| decode(&[stream(cost).as_bytes()]).0.unwrap().usage;
        assert_eq!(usage("0.00042").cost_usd, Some(0.00042));
        assert_eq!(usage("-1").cost_usd, None);
        assert_eq!(usage("null").cost_usd, None);
        assert_eq!(usage("0.00042").input_tokens, 10);
    }

    #[test]
    fn calls_without_index_follow_their_ids() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"a\",\"function\":{\"name\":\"ls\",\"arguments\":\"{\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"arguments\":\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"b\",\"function\":{\"name\":\"read\",\"arguments\":{\"path\":\"x\"}}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"grep\"}}]}}]}\n\n",
            "data: [DONE]\n\n",
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
    fn a_stream_without_finish_reason_or_done_is_truncated_wherever_it_ends() {
        let bytes = TWO_CALLS.as_bytes();
        let finish = TWO_CALLS.find("\"finish_reason\":\"tool_calls\"").unwrap();
        // Every cut before the finish reason, even on an event boundary, even one that left
        // only whole tool calls: an interruption, never a turn.
        for cut in (0..finish).step_by(7) {
            let error = decode(&[&bytes[..cut]]).0.unwrap_err();
            assert!(
                matches!(error, LlmError::Truncated { .. }),
                "cut at {cut}: {error}"
            );
            assert!(error.is_retryable());
        }
        let (result, seen) =
            decode(&[b"data: {\"choices\":[{\"delta\":{\"content\":\"half a\"}}]}\n\n"]);
        assert_eq!(
            result.unwrap_err().to_string(),
            "the openai response stream ended early (no finish_reason and no [DONE])"
        );
        assert_eq!(seen, "half a");
    }

    #[test]
    fn a_finish_reason_without_done_is_complete() {
        let without_done = TWO_CALLS.replace("data: [DONE]\r\n\r\n", "");
        assert_eq!(
            decode(&[without_done.as_bytes()]).0.unwrap(),
            two_calls_completion()
        );
        // Cut inside the usage chunk that follows the finish reason: what arrived is whole.
        let cut = TWO_CALLS.find("\"completion_tokens\"").unwrap();
        let completion = decode(&[&TWO_CALLS.as_bytes()[..cut]]).0.unwrap();
        assert_eq!(completion.tool_calls, two_calls_completion().tool_calls);
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
        // Ended without a word: an interruption, retried.
        for stream in ["", ": keep-alive\n\n", "\n\n\n"] {
            let error = decode(&[stream.as_bytes()]).0.unwrap_err();
            assert!(
                matches!(error, LlmError::Truncated { .. }),
                "{stream:?}: {error}"
            );
        }
        // Said it was done without saying anything: malformed.
        let error = decode(&[b"data: [DONE]\n\n"]).0.unwrap_err();
        assert!(matches!(error, LlmError::MalformedStream { .. }), "{error}");
    }

    #[test]
    fn only_events_with_data_count_as_content() {
        let mut decoder = ChatStream::new(SOURCE);
        decoder
            .push(b": keep-alive\n\n: more\n\n\n\n", &mut |_| {})
            .unwrap();
        assert_eq!(decoder.content_events(), 0);
        decoder
            .push(b"data: {\"choices\":[]}\n\n: keep-alive\n\n", &mut |_| {})
            .unwrap();
        assert_eq!(decoder.content_events(), 1);
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

    /// Property tests; `PROPTEST_CASES` sets the number of cases.
    mod properties {
        use super::*;
        use crate::llm::sse::properties::{pieces, sizes};
        use proptest::prelude::*;

        /// Any text, control characters included.
        fn text() -> impl Strategy<Value = String> {
            prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter)
        }

        /// Text pieces, then tool calls as (id, name, argument pieces).
        type Turn = (Vec<String>, Vec<(String, String, Vec<String>)>);

        /// A generated turn.
        fn turn() -> impl Strategy<Value = Turn> {
            (
                prop::collection::vec(text(), 0..6),
                prop::collection::vec(
                    (
                        "[A-Za-z0-9_]{1,16}",
                        "[a-z_]{1,10}",
                        prop::collection::vec("[a-z{}\":, ]{0,6}[a-z{}\":]", 1..4),
                    ),
                    0..3,
                ),
            )
        }

        /// A stream cut short or with a byte changed.
        fn damaged(stream: &'static str) -> impl Strategy<Value = Vec<u8>> {
            let len = stream.len();
            (0..=len, 0..len, 1u8..=255, any::<bool>()).prop_map(
                move |(cut, at, flip, truncate)| {
                    let mut bytes = stream.as_bytes().to_vec();
                    if truncate {
                        bytes.truncate(cut);
                    } else {
                        bytes[at] ^= flip;
                    }
                    bytes
                },
            )
        }

        fn chunk(delta: &serde_json::Value) -> String {
            let chunk = serde_json::json!({"choices": [{"index": 0, "delta": delta}]});
            format!("data: {chunk}\n\n")
        }

        proptest! {
            /// The recorded turn decodes the same however the network cuts it.
            #[test]
            fn the_recorded_turn_decodes_in_any_pieces(sizes in sizes()) {
                let (result, seen) = decode(&pieces(TWO_CALLS.as_bytes(), &sizes));
                prop_assert_eq!(result.unwrap(), two_calls_completion());
                prop_assert_eq!(seen, "héllo ✓ 世界");
            }

            /// A generated turn, cut anywhere, gives its text and calls.
            #[test]
            fn a_generated_turn_decodes_in_any_pieces((texts, calls) in turn(), sizes in sizes()) {
                let mut stream = String::new();
                for text in &texts {
                    stream.push_str(&chunk(&serde_json::json!({"content": text})));
                }
                for (i, (id, name, args)) in calls.iter().enumerate() {
                    stream.push_str(&chunk(&serde_json::json!({"tool_calls": [{
                        "index": i, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]})));
                    for piece in args {
                        stream.push_str(&chunk(&serde_json::json!({"tool_calls": [{
                            "index": i, "function": {"arguments": piece}}]})));
                    }
                }
                let reason = if calls.is_empty() { "stop" } else { "tool_calls" };
                let end = serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]});
                stream.push_str(&format!("data: {end}\n\ndata: [DONE]\n\n"));
                let (result, seen) = decode(&pieces(stream.as_bytes(), &sizes));
                let completion = result.unwrap();
                prop_assert_eq!(&completion.text, &texts.concat());
                prop_assert_eq!(seen, texts.concat());
                let expected: Vec<ToolCall> = calls
                    .iter()
                    .map(|(id, name, args)| call(id, name, &args.concat()))
                    .collect();
                prop_assert_eq!(completion.tool_calls, expected);
            }

            /// A damaged stream never panics, and what it says does not depend on the cuts.
            #[test]
            fn a_damaged_stream_never_panics(bytes in damaged(TWO_CALLS), sizes in sizes()) {
                let whole = decode(&[&bytes]);
                let cut = decode(&pieces(&bytes, &sizes));
                prop_assert_eq!(whole.0.is_ok(), cut.0.is_ok());
                prop_assert_eq!(whole.1, cut.1);
            }

            /// Arbitrary bytes never panic.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
                let _ = decode(&[&bytes]);
            }
        }
    }
}

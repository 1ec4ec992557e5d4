//! Decodes a streaming Messages response into a [`Completion`].
//!
//! Events, by their JSON `type` (or the SSE `event:` name when a server leaves it out):
//! `message_start` carries the input usage (cache writes and reads count as input),
//! `content_block_start` opens a text or `tool_use` block by `index`, `content_block_delta`
//! appends `text_delta` text or `input_json_delta` argument JSON, `message_delta` carries the
//! stop reason and output usage, `message_stop` ends the stream and `error` fails it. `ping`,
//! `content_block_stop`, thinking blocks and unknown events are ignored, and a `tool_use` block
//! may start without `input`, as some compatible servers send it.
//!
//! A stream is complete once it carried a stop reason or `message_stop`; one that ends with
//! neither is [`LlmError::Truncated`], whatever it held. Text and arguments together are capped
//! at [`MAX_STREAM_BYTES`](crate::llm::MAX_STREAM_BYTES); `ping`s are not content for the stall watchdog.

use kugetsu_protocol::Usage;
use serde::Deserialize;

use crate::conversation::ToolCall;
use crate::llm::error::{ErrorOrigin, ErrorSource, LlmError, ReportedError, classify};
use crate::llm::http::{StreamDecoder, check_size, decode_event, line_too_long};
use crate::llm::sse::{SseEvent, SseParser};
use crate::llm::{Completion, StopReason};

/// The state of one Messages response being decoded.
#[derive(Debug)]
pub(crate) struct MessageStream {
    /// Names the provider in errors.
    source: ErrorSource,
    /// Splits the byte stream into events.
    sse: SseParser,
    /// Events completed by the current push, reused between pushes.
    events: Vec<SseEvent>,
    /// The text of every text block, in order.
    text: String,
    /// Content blocks in the order they were opened.
    blocks: Vec<OpenBlock>,
    /// Token counts as last reported, kept apart so a later report replaces, never adds.
    usage: UsageParts,
    /// `message_delta`'s stop reason.
    stop_reason: Option<String>,
    /// Whether any event other than `ping` arrived; a stream without one is an error.
    received: bool,
    /// Whether `message_stop` arrived; later events are ignored.
    done: bool,
    /// Bytes of text and tool-call arguments held, kept under
    /// [`MAX_STREAM_BYTES`](crate::llm::MAX_STREAM_BYTES).
    held: usize,
    /// Events other than `ping` seen, for the stall watchdog.
    content_events: u64,
}

#[derive(Debug)]
struct OpenBlock {
    index: u64,
    kind: BlockKind,
}

#[derive(Debug)]
enum BlockKind {
    Text,
    ToolUse {
        id: String,
        name: String,
        /// The `input_json_delta` pieces so far.
        json: String,
        /// The `input` the block started with, used when no delta follows.
        start_input: Option<serde_json::Value>,
    },
    /// Thinking and other blocks whose content is not part of the turn.
    Other,
}

#[derive(Debug, Default)]
struct UsageParts {
    input: u64,
    cache_creation: u64,
    cache_read: u64,
    output: u64,
}

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<StartMessage>,
    index: Option<u64>,
    content_block: Option<ContentBlock>,
    delta: Option<Delta>,
    usage: Option<ApiUsage>,
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    usage: Option<ApiUsage>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct ApiUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
    name: Option<String>,
    input: Option<serde_json::Value>,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    partial_json: Option<String>,
    stop_reason: Option<String>,
}

impl MessageStream {
    /// A decoder at the start of a response.
    pub(crate) fn new(source: ErrorSource) -> Self {
        Self {
            source,
            sse: SseParser::new(),
            events: Vec::new(),
            text: String::new(),
            blocks: Vec::new(),
            usage: UsageParts::default(),
            stop_reason: None,
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

    fn on_event(&mut self, sse: &SseEvent, on_text: &mut dyn FnMut(&str)) -> Result<(), LlmError> {
        let data = sse.data.trim();
        if self.done || data.is_empty() {
            return Ok(());
        }
        let event: Event = decode_event(self.source.provider, data)?;
        let kind = event.kind.as_deref().unwrap_or(&sse.event);
        if kind == "error" || event.error.as_ref().is_some_and(|e| !e.is_null()) {
            let error = event.error.unwrap_or(serde_json::Value::Null);
            return Err(classify(
                self.source,
                ErrorOrigin::Stream,
                &ReportedError::from_value(&error),
            ));
        }
        if kind != "ping" {
            self.received = true;
            self.content_events += 1;
        }
        match kind {
            "message_start" => {
                if let Some(usage) = event.message.and_then(|m| m.usage) {
                    self.usage.apply(usage);
                }
            }
            "content_block_start" => {
                let block = event.content_block.unwrap_or(ContentBlock {
                    kind: None,
                    id: None,
                    name: None,
                    input: None,
                    text: None,
                });
                let index = event.index.unwrap_or(self.blocks.len() as u64);
                self.open_block(index, block, on_text)?;
            }
            "content_block_delta" => {
                if let Some(delta) = event.delta {
                    self.apply_delta(event.index, delta, on_text)?;
                }
            }
            "message_delta" => {
                if let Some(reason) = event
                    .delta
                    .and_then(|d| d.stop_reason)
                    .filter(|r| !r.is_empty())
                {
                    self.stop_reason = Some(reason);
                }
                if let Some(usage) = event.usage {
                    self.usage.apply(usage);
                }
            }
            "message_stop" => self.done = true,
            _ => {}
        }
        Ok(())
    }

    /// Counts `more` bytes about to be held, failing past the cap.
    fn hold(&mut self, more: usize, what: &'static str) -> Result<(), LlmError> {
        self.held += more;
        check_size(self.source.provider, what, self.held)
    }

    /// Whether the stream said how it ended: a stop reason or `message_stop`.
    fn complete(&self) -> bool {
        self.done || self.stop_reason.is_some()
    }

    fn truncated(&self) -> LlmError {
        LlmError::Truncated {
            provider: self.source.provider,
            missing: "no stop_reason and no message_stop",
        }
    }

    fn open_block(
        &mut self,
        index: u64,
        block: ContentBlock,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<(), LlmError> {
        let kind = match block.kind.as_deref() {
            Some("text") => {
                if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                    self.hold(text.len(), "a response")?;
                    self.text.push_str(&text);
                    on_text(&text);
                }
                BlockKind::Text
            }
            Some("tool_use") => BlockKind::ToolUse {
                id: block.id.unwrap_or_default(),
                name: block.name.unwrap_or_default(),
                json: String::new(),
                start_input: block.input,
            },
            _ => BlockKind::Other,
        };
        self.blocks.push(OpenBlock { index, kind });
        Ok(())
    }

    fn apply_delta(
        &mut self,
        index: Option<u64>,
        delta: Delta,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<(), LlmError> {
        let provider = self.source.provider;
        let block = match index {
            Some(index) => self.blocks.iter_mut().rev().find(|b| b.index == index),
            None => self.blocks.last_mut(),
        };
        match (delta.kind.as_deref(), block) {
            (
                Some("text_delta"),
                Some(OpenBlock {
                    kind: BlockKind::Text,
                    ..
                })
                | None,
            ) => {
                if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
                    self.held += text.len();
                    check_size(provider, "a response", self.held)?;
                    self.text.push_str(&text);
                    on_text(&text);
                }
            }
            (
                Some("input_json_delta"),
                Some(OpenBlock {
                    kind: BlockKind::ToolUse { json, .. },
                    ..
                }),
            ) => {
                if let Some(piece) = delta.partial_json {
                    check_size(
                        provider,
                        "a tool call's arguments",
                        json.len() + piece.len(),
                    )?;
                    json.push_str(&piece);
                    self.held += piece.len();
                    check_size(provider, "a response", self.held)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl UsageParts {
    fn apply(&mut self, usage: ApiUsage) {
        self.input = usage.input_tokens.unwrap_or(self.input);
        self.cache_creation = usage
            .cache_creation_input_tokens
            .unwrap_or(self.cache_creation);
        self.cache_read = usage.cache_read_input_tokens.unwrap_or(self.cache_read);
        self.output = usage.output_tokens.unwrap_or(self.output);
    }

    fn total(&self) -> Usage {
        Usage {
            input_tokens: self.input + self.cache_creation + self.cache_read,
            output_tokens: self.output,
            cost_usd: None,
        }
    }
}

impl StreamDecoder for MessageStream {
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
                reason: "the response ended before any event".to_owned(),
            });
        }
        let tool_calls: Vec<ToolCall> = self
            .blocks
            .into_iter()
            .filter_map(|block| match block.kind {
                BlockKind::ToolUse {
                    id,
                    name,
                    json,
                    start_input,
                } => Some((id, name, json, start_input)),
                BlockKind::Text | BlockKind::Other => None,
            })
            .enumerate()
            .map(|(i, (id, name, json, start_input))| ToolCall {
                id: if id.is_empty() {
                    format!("toolu_{}", i + 1)
                } else {
                    id
                },
                name,
                arguments: if !json.trim().is_empty() {
                    json
                } else {
                    match start_input {
                        Some(input @ serde_json::Value::Object(_)) => input.to_string(),
                        _ => "{}".to_owned(),
                    }
                },
            })
            .collect();
        let stop = match self.stop_reason.as_deref() {
            Some("end_turn") => StopReason::EndTurn,
            Some("tool_use") => StopReason::ToolUse,
            Some("max_tokens") => StopReason::MaxTokens,
            Some(other) => StopReason::Other(other.to_owned()),
            None if tool_calls.is_empty() => StopReason::EndTurn,
            None => StopReason::ToolUse,
        };
        Ok(Completion {
            text: self.text,
            tool_calls,
            usage: self.usage.total(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: ErrorSource = ErrorSource {
        provider: "anthropic",
        key_env: Some("ANTHROPIC_API_KEY"),
    };

    fn decode(pieces: &[&[u8]]) -> (Result<Completion, LlmError>, String) {
        let mut decoder = MessageStream::new(SOURCE);
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

    /// Text, a thinking block, a `tool_use` without `input`, one with `{}` and no deltas,
    /// cache usage, a ping and an unknown event.
    const TURN: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"usage\":{\"input_tokens\":100,\"cache_creation_input_tokens\":20,\"cache_read_input_tokens\":30,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Ich prüfe \"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"das → 🦀\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01A\",\"name\":\"read\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"path\\\": \\\"sr\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"c/ü.rs\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01B\",\"name\":\"ls\",\"input\":{}}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":3}\n\n",
        "event: brand_new_event\ndata: {\"type\":\"brand_new_event\",\"x\":1}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":42}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    fn turn_completion() -> Completion {
        Completion {
            text: "Ich prüfe das → 🦀".into(),
            tool_calls: vec![
                call("toolu_01A", "read", "{\"path\": \"src/ü.rs\"}"),
                call("toolu_01B", "ls", "{}"),
            ],
            usage: Usage {
                input_tokens: 150,
                output_tokens: 42,
                cost_usd: None,
            },
            stop: StopReason::ToolUse,
        }
    }

    #[test]
    fn text_and_tool_use_decode_at_every_split() {
        let bytes = TURN.as_bytes();
        for split in 0..=bytes.len() {
            let (a, b) = bytes.split_at(split);
            let (result, seen) = decode(&[a, b]);
            assert_eq!(result.unwrap(), turn_completion(), "split at {split}");
            assert_eq!(seen, "Ich prüfe das → 🦀");
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode(&one_by_one).0.unwrap(), turn_completion());
        let crlf = TURN.replace('\n', "\r\n");
        let crlf_bytes = crlf.as_bytes();
        for split in 0..=crlf_bytes.len() {
            let (a, b) = crlf_bytes.split_at(split);
            assert_eq!(
                decode(&[a, b]).0.unwrap(),
                turn_completion(),
                "crlf split {split}"
            );
        }
    }

    #[test]
    fn a_stream_without_stop_reason_or_message_stop_is_truncated_wherever_it_ends() {
        let bytes = TURN.as_bytes();
        let stop = TURN.find("\"stop_reason\":\"tool_use\"").unwrap();
        // Every cut before the stop reason, even right after a whole tool call: an
        // interruption, so the call after it is never dropped and no partial call runs.
        for cut in (0..stop).step_by(7) {
            let error = decode(&[&bytes[..cut]]).0.unwrap_err();
            assert!(
                matches!(error, LlmError::Truncated { .. }),
                "cut at {cut}: {error}"
            );
            assert!(error.is_retryable());
        }
        let cut = TURN
            .split("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}")
            .next()
            .unwrap();
        let (result, seen) = decode(&[cut.as_bytes()]);
        assert_eq!(
            result.unwrap_err().to_string(),
            "the anthropic response stream ended early (no stop_reason and no message_stop)"
        );
        assert_eq!(seen, "Ich prüfe das → 🦀");
    }

    #[test]
    fn a_stop_reason_without_message_stop_is_complete() {
        let without_stop = TURN.replace(
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            "",
        );
        assert_eq!(
            decode(&[without_stop.as_bytes()]).0.unwrap(),
            turn_completion()
        );
    }

    #[test]
    fn pings_are_not_content() {
        let mut decoder = MessageStream::new(SOURCE);
        let ping = b"event: ping\ndata: {\"type\": \"ping\"}\n\n: comment\n\n";
        for _ in 0..5 {
            decoder.push(ping, &mut |_| {}).unwrap();
        }
        assert_eq!(decoder.content_events(), 0);
        let start = TURN.split("event: ping").next().unwrap();
        decoder.push(start.as_bytes(), &mut |_| {}).unwrap();
        assert_eq!(decoder.content_events(), 1);
    }

    #[test]
    fn events_named_only_by_the_sse_field_and_tool_input_in_the_start_block() {
        let stream = concat!(
            "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":5}}}\n\n",
            "event: content_block_start\ndata: {\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"grep\",\"input\":{\"pattern\":\"x\"}}}\n\n",
            "event: message_delta\ndata: {\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":3}}\n\n",
        );
        let completion = decode(&[stream.as_bytes()]).0.unwrap();
        assert_eq!(
            completion.tool_calls,
            vec![call("t1", "grep", "{\"pattern\":\"x\"}")]
        );
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 5,
                output_tokens: 3,
                cost_usd: None,
            }
        );
    }

    #[test]
    fn empty_streams_are_errors() {
        // Nothing but keep-alives before the end: an interruption, retried.
        for stream in ["", "event: ping\ndata: {\"type\":\"ping\"}\n\n", ": hi\n\n"] {
            let error = decode(&[stream.as_bytes()]).0.unwrap_err();
            assert!(matches!(error, LlmError::Truncated { .. }), "{error}");
        }
    }

    #[test]
    fn error_events_are_typed() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5}}}\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        let error = decode(&[stream.as_bytes()]).0.unwrap_err();
        assert!(
            matches!(
                error,
                LlmError::Overloaded {
                    origin: ErrorOrigin::Stream,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "anthropic is overloaded (error event in the stream): Overloaded"
        );
    }

    #[test]
    fn malformed_json_is_a_typed_error() {
        let error = decode(&[b"event: message_start\ndata: {\"type\":\"message_start\",\n\n"])
            .0
            .unwrap_err();
        assert!(matches!(error, LlmError::MalformedEvent { .. }), "{error}");
    }

    #[test]
    fn stop_reasons_map() {
        let stop = |reason: &str| {
            let data = format!(
                "data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{reason}\"}}}}\n\n"
            );
            decode(&[data.as_bytes()]).0.unwrap().stop
        };
        assert_eq!(stop("end_turn"), StopReason::EndTurn);
        assert_eq!(stop("max_tokens"), StopReason::MaxTokens);
        assert_eq!(stop("tool_use"), StopReason::ToolUse);
        assert_eq!(stop("refusal"), StopReason::Other("refusal".into()));
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

        fn event(data: &serde_json::Value) -> String {
            let kind = data["type"].as_str().unwrap_or_default().to_owned();
            format!("event: {kind}\ndata: {data}\n\n")
        }

        proptest! {
            /// The recorded turn decodes the same however the network cuts it.
            #[test]
            fn the_recorded_turn_decodes_in_any_pieces(sizes in sizes()) {
                let (result, seen) = decode(&pieces(TURN.as_bytes(), &sizes));
                prop_assert_eq!(result.unwrap(), turn_completion());
                prop_assert_eq!(seen, "Ich prüfe das → 🦀");
            }

            /// A generated turn, cut anywhere, gives its text and calls.
            #[test]
            fn a_generated_turn_decodes_in_any_pieces((texts, calls) in turn(), sizes in sizes()) {
                use serde_json::json;
                let mut stream = event(&json!({"type": "message_start", "message": {
                    "id": "msg_1", "type": "message", "role": "assistant", "content": [],
                    "model": "m", "stop_reason": null,
                    "usage": {"input_tokens": 5, "output_tokens": 1}}}));
                stream.push_str(&event(&json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}})));
                for text in &texts {
                    stream.push_str(&event(&json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": text}})));
                }
                stream.push_str(&event(&json!({"type": "content_block_stop", "index": 0})));
                for (i, (id, name, args)) in calls.iter().enumerate() {
                    stream.push_str(&event(&json!({"type": "content_block_start", "index": i + 1,
                        "content_block": {"type": "tool_use", "id": id, "name": name}})));
                    for piece in args {
                        stream.push_str(&event(&json!({"type": "content_block_delta",
                            "index": i + 1,
                            "delta": {"type": "input_json_delta", "partial_json": piece}})));
                    }
                    stream.push_str(&event(&json!({"type": "content_block_stop", "index": i + 1})));
                }
                let reason = if calls.is_empty() { "end_turn" } else { "tool_use" };
                stream.push_str(&event(&json!({"type": "message_delta",
                    "delta": {"stop_reason": reason}, "usage": {"output_tokens": 3}})));
                stream.push_str(&event(&json!({"type": "message_stop"})));
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
            fn a_damaged_stream_never_panics(bytes in damaged(TURN), sizes in sizes()) {
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

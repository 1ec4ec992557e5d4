//! The script vocabulary: what the fake LLM answers, independent of the wire format.
//!
//! ```ignore
//! server.push(Turn::text("Let me look.").tool_call("read", json!({"path": "a.txt"})));
//! server.push(ApiError::rate_limited().retry_after(1));
//! server.push(Turn::text("héllo ✓").split_writes(1).without_done());
//! ```

use std::time::Duration;

use serde_json::Value;

/// One block of an assistant turn, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Block {
    Text(String),
    ToolCall {
        name: String,
        /// The arguments as the JSON text the model streams (may be deliberately invalid).
        arguments: String,
    },
}

/// Deviations from the reference APIs that real servers are known for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Quirks {
    /// llama.cpp's OpenAI endpoint: random 32-char tool-call ids, `content: ""` where OpenAI
    /// sends null, an extra `timings` object, no `system_fingerprint`/`logprobs`.
    pub llama_cpp: bool,
    /// Anthropic-compatible servers that send no `ping` event.
    pub no_ping: bool,
    /// Anthropic-compatible servers whose `tool_use` blocks start without `input`.
    pub tool_use_without_input: bool,
}

/// Where the stream ends early.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cut {
    /// After this many SSE events, send the provider's in-stream error event and end the body.
    Error(usize, ApiError),
    /// After this many SSE events, send nothing more and keep the connection open.
    Stall(usize),
    /// After this many SSE events, end the body cleanly (a 200 that simply stops: no finish
    /// reason, no end marker).
    End(usize),
    /// After this many SSE events, send only keep-alives (OpenAI `: keep-alive` comments,
    /// Anthropic `ping` events), one per interval, until the client goes away.
    KeepAlive(usize, Duration),
}

/// One scripted assistant turn, streamed in the wire format the request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub(crate) blocks: Vec<Block>,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    /// Whether the test set the usage; a server built with
    /// [`FakeLlmBuilder::usage_from_body`](super::FakeLlmBuilder::usage_from_body) derives it
    /// from the request otherwise.
    pub(crate) usage_set: bool,
    /// Overrides the finish/stop reason derived from the blocks.
    pub(crate) stop_reason: Option<String>,
    /// Body written in pieces of this many bytes (each its own chunk, flushed, then a pause).
    pub(crate) write_size: Option<usize>,
    pub(crate) write_pause: Duration,
    /// Characters of text per content delta.
    pub(crate) text_piece: usize,
    /// Bytes (whole characters) of tool arguments per argument delta.
    pub(crate) args_piece: usize,
    /// OpenAI: no `data: [DONE]`; Anthropic: no `message_stop`.
    pub(crate) omit_done: bool,
    pub(crate) quirks: Quirks,
    pub(crate) cut: Option<Cut>,
}

impl Default for Turn {
    fn default() -> Self {
        Self {
            blocks: Vec::new(),
            input_tokens: 100,
            output_tokens: 10,
            usage_set: false,
            stop_reason: None,
            write_size: None,
            write_pause: Duration::from_millis(1),
            text_piece: 6,
            args_piece: 8,
            omit_done: false,
            quirks: Quirks::default(),
            cut: None,
        }
    }
}

impl Turn {
    /// An empty turn: add text and tool calls with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// A turn that starts with this text.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new().and_text(text)
    }

    /// Appends a text block.
    pub fn and_text(mut self, text: impl Into<String>) -> Self {
        self.blocks.push(Block::Text(text.into()));
        self
    }

    /// Appends a tool call with these arguments.
    pub fn tool_call(self, name: impl Into<String>, arguments: impl Into<Value>) -> Self {
        self.tool_call_raw(name, arguments.into().to_string())
    }

    /// Appends a tool call whose arguments are streamed as this exact text.
    pub fn tool_call_raw(mut self, name: impl Into<String>, arguments: impl Into<String>) -> Self {
        self.blocks.push(Block::ToolCall {
            name: name.into(),
            arguments: arguments.into(),
        });
        self
    }

    /// The usage the provider reports for this turn (default 100 in, 10 out).
    pub fn usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.input_tokens = input_tokens;
        self.output_tokens = output_tokens;
        self.usage_set = true;
        self
    }

    /// Forces the finish reason (OpenAI) or stop reason (Anthropic).
    pub fn stop_reason(mut self, reason: impl Into<String>) -> Self {
        self.stop_reason = Some(reason.into());
        self
    }

    /// Writes the response body `bytes` bytes at a time, each piece a separate chunk, flushed,
    /// with a short pause between pieces: the client really receives it split, inside UTF-8
    /// characters and SSE lines alike.
    pub fn split_writes(mut self, bytes: usize) -> Self {
        self.write_size = Some(bytes.max(1));
        self
    }

    /// The pause between split writes (default 1 ms).
    pub fn write_pause(mut self, pause: Duration) -> Self {
        self.write_pause = pause;
        self
    }

    /// Characters of text per content delta (default 6).
    pub fn text_deltas_of(mut self, chars: usize) -> Self {
        self.text_piece = chars.max(1);
        self
    }

    /// Bytes of tool-call arguments per argument delta (default 8, cut on character
    /// boundaries).
    pub fn arg_deltas_of(mut self, bytes: usize) -> Self {
        self.args_piece = bytes.max(1);
        self
    }

    /// OpenAI: leaves out `data: [DONE]`; Anthropic: leaves out `message_stop`.
    pub fn without_done(mut self) -> Self {
        self.omit_done = true;
        self
    }

    /// llama.cpp's dialect of the OpenAI stream.
    pub fn llama_cpp(mut self) -> Self {
        self.quirks.llama_cpp = true;
        self
    }

    /// Anthropic stream without `ping` events.
    pub fn no_ping(mut self) -> Self {
        self.quirks.no_ping = true;
        self
    }

    /// Anthropic `tool_use` blocks that start without an `input` field.
    pub fn tool_use_without_input(mut self) -> Self {
        self.quirks.tool_use_without_input = true;
        self
    }

    /// Sends `events` SSE events of this turn, then the provider's in-stream error event.
    pub fn error_after(mut self, events: usize, error: ApiError) -> Self {
        self.cut = Some(Cut::Error(events, error));
        self
    }

    /// Sends `events` SSE events of this turn, then nothing, keeping the connection open.
    pub fn stall_after(mut self, events: usize) -> Self {
        self.cut = Some(Cut::Stall(events));
        self
    }

    /// Sends `events` SSE events of this turn, then ends the response cleanly, as a server
    /// or proxy that cut the stream short does.
    pub fn end_after(mut self, events: usize) -> Self {
        self.cut = Some(Cut::End(events));
        self
    }

    /// Sends `events` SSE events of this turn, then a keep-alive every `every` (comments on
    /// the OpenAI wire, `ping` events on Anthropic's) and nothing else, until the client goes
    /// away.
    pub fn keep_alive_after(mut self, events: usize, every: Duration) -> Self {
        self.cut = Some(Cut::KeepAlive(events, every));
        self
    }

    /// The number of SSE events this turn streams in full (for cutting it with
    /// [`Turn::end_after`] at a known place). Event 0 is the stream's first.
    pub fn event_count(&self, wire: super::Wire) -> usize {
        let mut ids = super::ids::IdGen::new(0);
        match wire {
            super::Wire::OpenAi => super::openai::stream(self, "m", &mut ids).0.len(),
            super::Wire::Anthropic => super::anthropic::stream(self, "m", &mut ids).0.len(),
        }
    }

    /// The text of the turn, all text blocks joined.
    pub fn full_text(&self) -> String {
        self.blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text(t) => Some(t.as_str()),
                Block::ToolCall { .. } => None,
            })
            .collect()
    }

    pub(crate) fn has_tool_calls(&self) -> bool {
        self.blocks
            .iter()
            .any(|b| matches!(b, Block::ToolCall { .. }))
    }
}

/// The kind of error reply; encoded with each provider's real status and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 401: bad key.
    Unauthorized,
    /// 429: rate limited.
    RateLimited,
    /// 500: internal server error.
    ServerError,
    /// Anthropic 529 `overloaded_error`; OpenAI 503.
    Overloaded,
    /// 400: the prompt does not fit the context window.
    ContextLengthExceeded,
    /// 400: any other invalid request.
    InvalidRequest,
}

/// An error reply: an HTTP error status with the provider's error body, or (inside a [`Turn`])
/// the provider's in-stream error event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub(crate) kind: ErrorKind,
    pub(crate) retry_after: Option<u64>,
    pub(crate) message: Option<String>,
}

impl ApiError {
    pub fn new(kind: ErrorKind) -> Self {
        Self {
            kind,
            retry_after: None,
            message: None,
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(ErrorKind::Unauthorized)
    }

    pub fn rate_limited() -> Self {
        Self::new(ErrorKind::RateLimited)
    }

    pub fn server_error() -> Self {
        Self::new(ErrorKind::ServerError)
    }

    pub fn overloaded() -> Self {
        Self::new(ErrorKind::Overloaded)
    }

    pub fn context_length_exceeded() -> Self {
        Self::new(ErrorKind::ContextLengthExceeded)
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest).message(message)
    }

    /// Adds a `retry-after: SECONDS` header.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The `retry-after` seconds this reply sends, if any.
    pub fn retry_after_hint(&self) -> Option<u64> {
        self.retry_after
    }

    /// Replaces the provider's stock message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// What the fake LLM answers to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A streamed assistant turn.
    Turn(Turn),
    /// An HTTP error status with the provider's error body.
    Error(ApiError),
    /// A `200 text/event-stream` response head, then nothing until the client goes away.
    Stall,
    /// These bytes, verbatim, as the whole response (status line included); then the
    /// connection is closed.
    Raw(Vec<u8>),
    /// A `200 text/event-stream` chunked response whose body is these bytes, written in pieces
    /// of `write_size` bytes when given.
    RawSse {
        body: Vec<u8>,
        write_size: Option<usize>,
    },
    /// A `200 text/event-stream` response whose body is `prefix` and then `x` without end and
    /// without a newline, in 256 KiB chunks with `pause` between them, until the client goes
    /// away: one endless SSE line.
    EndlessLine { prefix: Vec<u8>, pause: Duration },
}

impl Reply {
    /// A raw SSE body, written as one piece.
    pub fn raw_sse(body: impl Into<Vec<u8>>) -> Self {
        Reply::RawSse {
            body: body.into(),
            write_size: None,
        }
    }

    /// A whole raw response, status line included.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Self {
        Reply::Raw(bytes.into())
    }
}

impl From<Turn> for Reply {
    fn from(turn: Turn) -> Self {
        Reply::Turn(turn)
    }
}

impl From<ApiError> for Reply {
    fn from(error: ApiError) -> Self {
        Reply::Error(error)
    }
}

/// Splits `text` into pieces of at most `chars` characters.
pub(crate) fn pieces_by_chars(text: &str, chars: usize) -> Vec<String> {
    let chars_vec: Vec<char> = text.chars().collect();
    chars_vec
        .chunks(chars.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

/// Splits `text` into pieces of about `bytes` bytes, never inside a character (a JSON text
/// piece must be valid UTF-8 to travel inside a JSON string).
pub(crate) fn pieces_by_bytes(text: &str, bytes: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = bytes.max(1).min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (head, tail) = rest.split_at(end);
        out.push(head.to_owned());
        rest = tail;
    }
    out
}

//! JSON-lines framing: one message per `\n`-terminated line, at most [`MAX_LINE_BYTES`] long.
//!
//! Errors are per line. A malformed, oversized or unknown line yields a [`DecodeError`] naming
//! what was wrong, and the reader carries on with the next line: one bad line never costs the
//! valid messages after it, and nothing here panics on input.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::channel::{SupervisorMessage, WorkerMessage};
use crate::event::{Event, EventEnvelope};

/// Longest line accepted, newline excluded. Large enough for a capped tool output (which the
/// worker limits well below this) plus its JSON escaping.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Why a line could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The line was longer than the limit; it was skipped up to its newline.
    #[error("line of {len} bytes exceeds the {max}-byte limit")]
    Oversized { len: usize, max: usize },
    /// The line is not valid UTF-8.
    #[error("line is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    /// The line is not a JSON object.
    #[error("malformed JSON")]
    Malformed {
        #[source]
        source: serde_json::Error,
    },
    /// The object has no string `type` field.
    #[error("message has no string \"type\" field")]
    MissingType,
    /// The `type` is not one this side knows.
    #[error("unknown message type {tag:?}")]
    UnknownType { tag: String },
    /// The `type` is known but the fields do not fit it.
    #[error("invalid {tag:?} message")]
    InvalidFields {
        tag: String,
        #[source]
        source: serde_json::Error,
    },
    /// Reading the stream failed; the stream is unusable after this.
    #[error("reading the channel failed")]
    Io {
        #[source]
        source: std::io::Error,
    },
}

/// A message type that travels as a tagged JSON object.
pub trait Wire: Serialize + DeserializeOwned {
    /// Whether `tag` is a `type` this message type has.
    fn knows(tag: &str) -> bool;
}

impl Wire for SupervisorMessage {
    fn knows(tag: &str) -> bool {
        SupervisorMessage::TYPES.contains(&tag)
    }
}

impl Wire for WorkerMessage {
    fn knows(tag: &str) -> bool {
        WorkerMessage::is_known_type(tag)
    }
}

impl Wire for Event {
    fn knows(tag: &str) -> bool {
        Event::TYPES.contains(&tag)
    }
}

impl Wire for EventEnvelope {
    fn knows(tag: &str) -> bool {
        Event::TYPES.contains(&tag)
    }
}

/// Serializes a message as one line, newline included.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing these types cannot fail: every map key is a string and no Serialize impl
    // returns an error. Fall back to an empty object rather than panic, just in case.
    let mut line = serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Parses one line (without its newline; a trailing `\r` is tolerated).
pub fn decode<T: Wire>(line: &[u8]) -> Result<T, DecodeError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE_BYTES {
        return Err(DecodeError::Oversized {
            len: line.len(),
            max: MAX_LINE_BYTES,
        });
    }
    let text = std::str::from_utf8(line).map_err(|e| DecodeError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|source| DecodeError::Malformed { source })?;
    let tag = match value.get("type") {
        Some(serde_json::Value::String(tag)) => tag.clone(),
        _ => return Err(DecodeError::MissingType),
    };
    if !T::knows(&tag) {
        return Err(DecodeError::UnknownType { tag });
    }
    serde_json::from_value(value).map_err(|source| DecodeError::InvalidFields { tag, source })
}

/// Reads capped lines from an async byte stream.
///
/// Memory use is bounded by `max` whatever the peer sends: an oversized line is discarded as
/// it streams past, then reported once.
///
/// Cancel-safe: a `next_line` future dropped halfway keeps what it had read, and the next call
/// continues the same line.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    max: usize,
    /// The line read so far (empty while discarding an oversized one).
    buf: Vec<u8>,
    /// Bytes of the current line seen so far, kept or not.
    seen: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// A reader with the default [`MAX_LINE_BYTES`] limit.
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, MAX_LINE_BYTES)
    }

    /// A reader that rejects lines longer than `max` bytes.
    pub fn with_limit(inner: R, max: usize) -> Self {
        Self {
            inner,
            max,
            buf: Vec::new(),
            seen: 0,
        }
    }

    /// The next raw line without its newline, `Ok(None)` at end of stream.
    ///
    /// A final line without a newline is still returned. An oversized line yields
    /// [`DecodeError::Oversized`] and the following call continues after it.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        loop {
            let available = self
                .inner
                .fill_buf()
                .await
                .map_err(|source| DecodeError::Io { source })?;
            if available.is_empty() {
                if self.seen == 0 {
                    return Ok(None);
                }
                break;
            }
            let (chunk, found_newline) = match memchr(available) {
                Some(i) => (&available[..i], true),
                None => (available, false),
            };
            let take = chunk.len();
            self.seen += take;
            if self.seen <= self.max {
                self.buf.extend_from_slice(chunk);
            } else {
                self.buf.clear();
            }
            self.inner.consume(take + usize::from(found_newline));
            if found_newline {
                break;
            }
        }
        let seen = std::mem::take(&mut self.seen);
        let line = std::mem::take(&mut self.buf);
        if seen > self.max {
            return Err(DecodeError::Oversized {
                len: seen,
                max: self.max,
            });
        }
        Ok(Some(line))
    }

    /// The next message if it can be had without waiting (it is already buffered), else
    /// `None`. Nothing is lost when it returns `None`: the reader is cancel-safe.
    pub fn next_ready<T: Wire>(&mut self) -> Option<Result<T, DecodeError>> {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let next = std::pin::pin!(self.next::<T>());
        match std::future::Future::poll(next, &mut context) {
            std::task::Poll::Ready(message) => message,
            std::task::Poll::Pending => None,
        }
    }

    /// The next decoded message, `None` at end of stream. Blank lines are skipped.
    pub async fn next<T: Wire>(&mut self) -> Option<Result<T, DecodeError>> {
        loop {
            match self.next_line().await {
                Ok(None) => return None,
                Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Some(line)) => return Some(decode(&line)),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

fn memchr(haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == b'\n')
}

/// Formats an error with its sources, `outer: inner: innermost`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

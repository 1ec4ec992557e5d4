//! One typed taxonomy for everything that can go wrong talking to a model, and the rules that
//! sort a provider's error (HTTP status, error `type`, `code`, message) into it.
//!
//! Both providers report errors in two places: the body of a non-2xx response, and an error
//! event in the middle of a 200 stream. Both end up in [`classify`], so a rate limit or an
//! overflowing context is recognised the same way wherever it shows up.

use std::fmt;

/// Everything that can go wrong talking to a model.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider is not usable as configured (missing key, bad script, bad URL).
    #[error("{0}")]
    Config(String),
    /// The request was not sent: it would pass the task's budget; the task pauses.
    #[error("{0}")]
    Paused(String),
    /// The supervisor's governor refused the request (e.g. a rate-limit wait that does not
    /// fit before the task's deadline).
    #[error("{0}")]
    NotPermitted(String),
    /// The provider refused the credentials (HTTP 401/403, `authentication_error`).
    #[error("{provider} refused the credentials ({origin}): {message}{}", key_hint(*.key_env))]
    Auth {
        /// Provider name, e.g. `openai`.
        provider: &'static str,
        /// Where the error was reported.
        origin: ErrorOrigin,
        /// The provider's own words.
        message: String,
        /// The variable the key was read from, named in the message.
        key_env: Option<&'static str>,
    },
    /// The account is out of quota or credit (HTTP 402, `insufficient_quota`); waiting won't help.
    #[error("{provider} account is out of quota or credit ({origin}): {message}")]
    QuotaExhausted {
        /// Provider name.
        provider: &'static str,
        /// Where the error was reported.
        origin: ErrorOrigin,
        /// The provider's own words.
        message: String,
    },
    /// Too many requests (HTTP 429, `rate_limit_error`); retried.
    #[error("{provider} rate limit hit ({origin}): {message}")]
    RateLimited {
        /// Provider name.
        provider: &'static str,
        /// Where the error was reported.
        origin: ErrorOrigin,
        /// The provider's own words.
        message: String,
    },
    /// The provider is temporarily overloaded (HTTP 529, `overloaded_error`); retried.
    #[error("{provider} is overloaded ({origin}): {message}")]
    Overloaded {
        /// Provider name.
        provider: &'static str,
        /// Where the error was reported.
        origin: ErrorOrigin,
        /// The provider's own words.
        message: String,
    },
    /// The provider failed internally (HTTP 5xx or 408, `api_error`, `server_error`); retried.
    #[error("{provider} server error ({origin}): {message}")]
    Server {
        /// Provider name.
        provider: &'static str,
        /// Where the error was reported.
        origin: ErrorOrigin,
        /// The provider's own words.
        message: String,
    },
    /// The conversation does not fit the model's context window; prune and ask again.
    #[error("the request does not fit {provider}'s context window ({origin}): {message}")]
    ContextOverflow {
        /// Provider name.
        provider: &'static str,
        /// Where the error was reported.
        origin: ErrorOrigin,
        /// The provider's own words.
        message: String,
    },
    /// The provider rejected the request as invalid (other 4xx: unknown model, bad schema...).
    #[error("{provider} rejected the request ({origin}): {message}")]
    BadRequest {
        /// Provider name.
        provider: &'static str,
        /// Where the error was reported.
        origin: ErrorOrigin,
        /// The provider's own words.
        message: String,
    },
    /// The request could not be sent or no response arrived (DNS, refused, TLS, timeout).
    #[error("cannot reach {provider} at {url}")]
    Transport {
        /// Provider name.
        provider: &'static str,
        /// The endpoint, so a wrong base URL is obvious.
        url: String,
        /// What the HTTP client reported.
        #[source]
        source: reqwest::Error,
    },
    /// The response stream broke off (the connection failed mid-body); retried.
    #[error("the {provider} response stream broke off")]
    StreamInterrupted {
        /// Provider name.
        provider: &'static str,
        /// What the HTTP client reported.
        #[source]
        source: reqwest::Error,
    },
    /// A 200 stream ended cleanly but without a finish/stop reason or its end marker, so the
    /// answer (and any tool call's arguments) may be cut short; retried, never used.
    #[error("the {provider} response stream ended early ({missing})")]
    Truncated {
        /// Provider name.
        provider: &'static str,
        /// What the end of a complete stream would have had.
        missing: &'static str,
    },
    /// No content arrived for `stream_timeout` (keep-alive comments and pings don't count);
    /// the request was abandoned and is retried.
    #[error("no content from {provider} for {} s (stream_timeout)", .timeout.as_secs_f64())]
    Stalled {
        /// Provider name.
        provider: &'static str,
        /// The `stream_timeout` that passed.
        timeout: std::time::Duration,
    },
    /// A line, tool-call argument or the whole response passed the size cap; not retried
    /// (the same request would likely get the same answer).
    #[error("{provider} sent {what} larger than the {} MiB cap", .limit >> 20)]
    TooLarge {
        /// Provider name.
        provider: &'static str,
        /// What was too large: `an SSE line`, `a tool call's arguments`, `a response`.
        what: &'static str,
        /// The cap, in bytes.
        limit: usize,
    },
    /// A `data:` line of the stream is not the JSON it should be.
    #[error("{provider} sent a stream event that is not valid JSON: {data:?}")]
    MalformedEvent {
        /// Provider name.
        provider: &'static str,
        /// The offending data, shortened.
        data: String,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The response is not a usable stream (empty, not an event stream, ...).
    #[error("{provider} sent a malformed stream: {reason}")]
    MalformedStream {
        /// Provider name.
        provider: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The request body could not be encoded as JSON.
    #[error("cannot encode the request")]
    EncodeRequest {
        /// What the encoder reported.
        #[source]
        source: serde_json::Error,
    },
    /// The server asked to be retried later than the longest wait; the error it came with
    /// is attached.
    #[error(
        "gave up: retry-after {} s exceeds the longest wait ({} s)",
        .wait.as_secs_f64(),
        .max.as_secs_f64()
    )]
    RetryAfterTooLong {
        /// What the server asked for.
        wait: std::time::Duration,
        /// The longest wait the retry policy allows.
        max: std::time::Duration,
        /// The error the hint came with.
        #[source]
        last: Box<LlmError>,
    },
    /// Every attempt failed with a retryable error; the last one is attached.
    #[error("gave up after {attempts} attempts")]
    RetriesExhausted {
        /// How many requests were sent.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<LlmError>,
    },
}

/// Where a provider reported an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorOrigin {
    /// In the body of a response with this non-2xx status.
    Status(u16),
    /// As an error event inside a streaming 200 response.
    Stream,
}

impl fmt::Display for ErrorOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorOrigin::Status(status) => write!(f, "HTTP {status}"),
            ErrorOrigin::Stream => f.write_str("error event in the stream"),
        }
    }
}

fn key_hint(key_env: Option<&'static str>) -> String {
    key_env.map_or_else(String::new, |var| format!(" (check {var})"))
}

impl LlmError {
    /// Whether the provider said the request does not fit the model's context window.
    pub fn is_context_overflow(&self) -> bool {
        matches!(self, LlmError::ContextOverflow { .. })
    }

    /// Whether sending the same request again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LlmError::RateLimited { .. }
                | LlmError::Overloaded { .. }
                | LlmError::Server { .. }
                | LlmError::Transport { .. }
                | LlmError::StreamInterrupted { .. }
                | LlmError::Truncated { .. }
                | LlmError::Stalled { .. }
        )
    }
}

/// Who reported an error, for the fields every provider error carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorSource {
    /// Provider name, e.g. `openrouter`.
    pub provider: &'static str,
    /// The variable the API key came from, named in authentication errors.
    pub key_env: Option<&'static str>,
}

/// A provider error as reported, before it is sorted into [`LlmError`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReportedError {
    /// The error's `type` (`rate_limit_error`, `invalid_request_error`, ...), or empty.
    pub kind: String,
    /// The error's `code` (`context_length_exceeded`, `429`, ...), or empty.
    pub code: String,
    /// The human-readable message.
    pub message: String,
}

impl ReportedError {
    /// Reads an error value: an object with `message`, `type` and `code` (a string or a
    /// number), or a bare string.
    pub(crate) fn from_value(value: &serde_json::Value) -> Self {
        let text = |v: Option<&serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        match value {
            serde_json::Value::Object(fields) => Self {
                kind: text(fields.get("type")),
                code: text(fields.get("code")),
                message: match fields.get("message") {
                    Some(message) => text(Some(message)),
                    None => value.to_string(),
                },
            },
            other => Self {
                message: text(Some(other)),
                ..Self::default()
            },
        }
    }

    /// The error a JSON body reports: `{"error": {...}}` (OpenAI, Anthropic), `{"error":
    /// "..."}` (Ollama) or a top-level `{"message": ...}` (vLLM); `None` when it holds none.
    pub(crate) fn from_json_error(body: &[u8]) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let fields = value.as_object()?;
        match fields.get("error") {
            Some(error) if !error.is_null() => Some(Self::from_value(error)),
            _ if fields.contains_key("message") => Some(Self::from_value(&value)),
            _ => None,
        }
    }

    /// The error an HTTP error body reports, else its text (proxies answer in HTML).
    pub(crate) fn from_body(body: &[u8]) -> Self {
        Self::from_json_error(body).unwrap_or_else(|| Self {
            message: String::from_utf8_lossy(body).into_owned(),
            ..Self::default()
        })
    }
}

/// Longest provider message kept in an error; proxies answer with whole HTML pages.
const MAX_MESSAGE_CHARS: usize = 600;

/// Sorts a reported error into the taxonomy; `origin` is the HTTP status or the stream.
pub(crate) fn classify(
    source: ErrorSource,
    origin: ErrorOrigin,
    error: &ReportedError,
) -> LlmError {
    let ErrorSource { provider, key_env } = source;
    let status = match origin {
        ErrorOrigin::Status(status) => Some(status),
        ErrorOrigin::Stream => None,
    };
    let kind = error.kind.to_ascii_lowercase();
    let code = error.code.to_ascii_lowercase();
    let message = shorten(error.message.trim(), MAX_MESSAGE_CHARS);
    let message = if message.is_empty() {
        "(no message)".to_owned()
    } else {
        message
    };
    let is = |names: &[&str]| names.iter().any(|n| kind == *n || code == *n);
    let rate_limit_kind = is(&["rate_limit_error", "rate_limit_exceeded", "rate_limited"]);
    // Rate limits talk about tokens too ("tokens per minute"); only a rejected request's
    // report can mean overflow.
    let overflow_status = status.is_none_or(|s| matches!(s, 400 | 413 | 422));
    if overflow_status
        && !rate_limit_kind
        && (status == Some(413) || is_overflow_report(&kind, &code, &message))
    {
        return LlmError::ContextOverflow {
            provider,
            origin,
            message,
        };
    }
    if matches!(status, Some(401 | 403))
        || is(&[
            "authentication_error",
            "permission_error",
            "invalid_api_key",
            "invalid_authentication",
        ])
    {
        return LlmError::Auth {
            provider,
            origin,
            message,
            key_env,
        };
    }
    if status == Some(402) || is(&["insufficient_quota", "billing_error"]) {
        return LlmError::QuotaExhausted {
            provider,
            origin,
            message,
        };
    }
    if status == Some(429) || rate_limit_kind {
        return LlmError::RateLimited {
            provider,
            origin,
            message,
        };
    }
    if status == Some(529) || is(&["overloaded_error", "overloaded"]) {
        return LlmError::Overloaded {
            provider,
            origin,
            message,
        };
    }
    let server_status = status.is_some_and(|s| s >= 500 || s == 408);
    let client_kind = is(&[
        "invalid_request_error",
        "not_found_error",
        "request_too_large",
    ]);
    if server_status || (status.is_none() && !client_kind) {
        // A stream that was already accepted and then failed is the server's problem unless
        // it says otherwise.
        return LlmError::Server {
            provider,
            origin,
            message,
        };
    }
    LlmError::BadRequest {
        provider,
        origin,
        message,
    }
}

/// Whether an error report says the prompt is longer than the model's context window.
///
/// Codes: OpenAI `context_length_exceeded`, llama.cpp `exceed_context_size_error`, Anthropic
/// `request_too_large`. Messages: OpenAI/vLLM/OpenRouter "maximum context length", Anthropic
/// "prompt is too long" and "exceed context limit", llama.cpp "exceeds the available context
/// size", Gemini "exceeds the maximum number of tokens", others "context length"/"context
/// window".
fn is_overflow_report(kind: &str, code: &str, message: &str) -> bool {
    const CODES: &[&str] = &[
        "context_length_exceeded",
        "exceed_context_size_error",
        "request_too_large",
        "string_above_max_length",
    ];
    const PHRASES: &[&str] = &[
        "context length",
        "context_length",
        "context window",
        "context limit",
        "context size",
        "prompt is too long",
        "prompt too long",
        "input is too long",
        "reduce the length of the messages",
        "exceeds the maximum number of tokens",
    ];
    if CODES.iter().any(|c| kind == *c || code == *c) {
        return true;
    }
    let message = message.to_ascii_lowercase();
    PHRASES.iter().any(|p| message.contains(p))
}

/// `text` cut to at most `max` characters, marked when cut.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI: ErrorSource = ErrorSource {
        provider: "openai",
        key_env: Some("OPENAI_API_KEY"),
    };

    fn report(kind: &str, code: &str, message: &str) -> ReportedError {
        ReportedError {
            kind: kind.to_owned(),
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    fn status(s: u16, kind: &str, code: &str, message: &str) -> LlmError {
        classify(OPENAI, ErrorOrigin::Status(s), &report(kind, code, message))
    }

    #[test]
    fn statuses_map_to_variants() {
        assert!(matches!(
            status(401, "", "", "bad key"),
            LlmError::Auth { .. }
        ));
        assert!(matches!(status(403, "", "", "no"), LlmError::Auth { .. }));
        assert!(matches!(
            status(429, "", "", "slow down"),
            LlmError::RateLimited { .. }
        ));
        assert!(matches!(
            status(529, "", "", "busy"),
            LlmError::Overloaded { .. }
        ));
        assert!(matches!(
            status(500, "", "", "oops"),
            LlmError::Server { .. }
        ));
        assert!(matches!(
            status(503, "", "", "oops"),
            LlmError::Server { .. }
        ));
        assert!(matches!(
            status(404, "", "", "no model"),
            LlmError::BadRequest { .. }
        ));
        assert!(matches!(
            status(429, "insufficient_quota", "insufficient_quota", "pay up"),
            LlmError::QuotaExhausted { .. }
        ));
        assert!(matches!(
            status(413, "", "", "too big"),
            LlmError::ContextOverflow { .. }
        ));
        assert!(matches!(
            status(
                429,
                "",
                "",
                "Rate limit reached: context length tokens per min"
            ),
            LlmError::RateLimited { .. }
        ));
    }

    #[test]
    fn context_overflow_is_recognised_across_servers() {
        let cases = [
            report(
                "invalid_request_error",
                "context_length_exceeded",
                "This model's maximum context length is 128000 tokens.",
            ),
            report(
                "BadRequestError",
                "400",
                "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens",
            ),
            report(
                "invalid_request_error",
                "",
                "prompt is too long: 208310 tokens > 200000 maximum",
            ),
            report(
                "invalid_request_error",
                "",
                "input length and `max_tokens` exceed context limit: 190000 + 32000 > 200000",
            ),
            report(
                "",
                "400",
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            ),
            report(
                "exceed_context_size_error",
                "400",
                "the request exceeds the available context size, try increasing it",
            ),
        ];
        for case in cases {
            let error = classify(OPENAI, ErrorOrigin::Status(400), &case);
            assert!(error.is_context_overflow(), "{case:?} -> {error}");
            assert!(!error.is_retryable());
        }
        let other = status(400, "invalid_request_error", "", "tools[0].name is invalid");
        assert!(matches!(other, LlmError::BadRequest { .. }));
        assert!(!other.is_context_overflow());
    }

    #[test]
    fn stream_errors_are_classified_by_type() {
        let stream = |kind: &str| classify(OPENAI, ErrorOrigin::Stream, &report(kind, "", "m"));
        assert!(matches!(
            stream("overloaded_error"),
            LlmError::Overloaded { .. }
        ));
        assert!(matches!(
            stream("rate_limit_error"),
            LlmError::RateLimited { .. }
        ));
        assert!(matches!(stream("api_error"), LlmError::Server { .. }));
        assert!(matches!(stream(""), LlmError::Server { .. }));
        assert!(matches!(
            stream("invalid_request_error"),
            LlmError::BadRequest { .. }
        ));
    }

    #[test]
    fn messages_are_lowercase_and_name_the_key_variable() {
        let error = status(401, "", "invalid_api_key", "Incorrect API key provided");
        assert_eq!(
            error.to_string(),
            "openai refused the credentials (HTTP 401): Incorrect API key provided \
             (check OPENAI_API_KEY)"
        );
        assert!(!error.is_retryable());
        let stream = classify(OPENAI, ErrorOrigin::Stream, &report("", "", ""));
        assert_eq!(
            stream.to_string(),
            "openai server error (error event in the stream): (no message)"
        );
    }

    #[test]
    fn error_bodies_of_every_server_shape_are_read() {
        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            ReportedError::from_body(anthropic),
            report("overloaded_error", "", "Overloaded")
        );
        let openai = br#"{"error":{"message":"m","type":"invalid_request_error","param":null,"code":"context_length_exceeded"}}"#;
        assert_eq!(
            ReportedError::from_body(openai),
            report("invalid_request_error", "context_length_exceeded", "m")
        );
        let llama = br#"{"error":{"code":400,"message":"m","type":"exceed_context_size_error","n_ctx":4096}}"#;
        assert_eq!(
            ReportedError::from_body(llama),
            report("exceed_context_size_error", "400", "m")
        );
        let vllm = br#"{"object":"error","message":"m","type":"BadRequestError","code":400}"#;
        assert_eq!(
            ReportedError::from_body(vllm),
            report("BadRequestError", "400", "m")
        );
        let ollama = br#"{"error":"model 'x' not found"}"#;
        assert_eq!(
            ReportedError::from_body(ollama),
            report("", "", "model 'x' not found")
        );
        let html = b"<html>502 Bad Gateway</html>";
        assert_eq!(
            ReportedError::from_body(html),
            report("", "", "<html>502 Bad Gateway</html>")
        );
        assert_eq!(ReportedError::from_json_error(br#"{"id":"x"}"#), None);
    }

    #[test]
    fn long_messages_are_shortened_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let error = status(502, "", "", &long);
        let LlmError::Server { message, .. } = error else {
            panic!("expected a server error");
        };
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(message.ends_with('…'));
    }
}

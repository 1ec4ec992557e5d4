//! The HTTP half shared by the streaming providers: one `reqwest` client per provider, one
//! POST per attempt, the response fed into a provider's [`StreamDecoder`], and the retry loop.
//!
//! What holds here:
//! - Dropping the future returned by [`Endpoint::stream`] drops the request and any retry
//!   sleep, which aborts the connection: cancel and timeout need nothing else.
//! - An error that is not [`LlmError::is_retryable`] is never retried. A retryable one is,
//!   even after text or a tool call began streaming: tools only run once a whole
//!   [`Completion`] is returned, so nothing of a failed attempt has had an effect. The sink
//!   hears [`StreamSink::retry`] before the next attempt streams its own text from the start,
//!   and the returned [`Completion`] holds only the successful attempt's turn.
//! - A response that goes `stream_timeout` ([`Timeouts::stream`]) without content (from the
//!   request until the head arrives, then between content events; keep-alive comments and
//!   pings don't count) is abandoned as [`LlmError::Stalled`] and retried; it never hangs.
//! - Nothing of a response is buffered past [`MAX_STREAM_BYTES`] (the decoders and the SSE
//!   parser enforce it; [`check_size`] is their one check).
//! - The API key only lives in headers marked sensitive, and [`Endpoint`]'s `Debug` prints
//!   header names only.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kugetsu_protocol::ModelRef;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Response, Url};
use serde::de::DeserializeOwned;

use super::error::{ErrorOrigin, ErrorSource, LlmError, ReportedError, classify, shorten};
use super::gate::{Gate, Permit, fingerprint, rate_headers};
use super::retry::{RetryPolicy, jitter, retry_after};
use super::sse::TooLong;
use super::{Completion, DEFAULT_STREAM_TIMEOUT, MAX_STREAM_BYTES, StreamSink};

/// How long establishing a connection (TCP and TLS) may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may take to open and a response may go without content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// Limit on opening the connection (TCP and TLS).
    pub connect: Duration,
    /// `stream_timeout`: limit on the wait for the response head and on the silence between
    /// two content events of the body.
    pub stream: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: CONNECT_TIMEOUT,
            stream: DEFAULT_STREAM_TIMEOUT,
        }
    }
}

/// Most bytes of an error body kept; the message is shortened further anyway.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Turns a provider's response stream into a [`Completion`], whatever the chunking.
pub(crate) trait StreamDecoder: Send {
    /// Feeds the next bytes, calling `on_text` for each piece of text they complete.
    fn push(&mut self, bytes: &[u8], on_text: &mut dyn FnMut(&str)) -> Result<(), LlmError>;
    /// Ends the stream (flushing what an abrupt end left) and returns the turn received, or
    /// why there is none.
    fn finish(self, on_text: &mut dyn FnMut(&str)) -> Result<Completion, LlmError>;
    /// Whether the stream said it is complete (`[DONE]`, `message_stop`).
    fn is_done(&self) -> bool;
    /// How many content events arrived so far: every event but keep-alive comments and
    /// pings. The stall watchdog restarts its clock whenever this grows.
    fn content_events(&self) -> u64;
}

/// One provider endpoint: where to POST, with which headers, and how to retry.
pub(crate) struct Endpoint {
    /// Shared by every attempt so connections are reused.
    client: reqwest::Client,
    /// The full URL requests are POSTed to.
    url: Url,
    /// `url` with any password masked, for `Debug` and error messages.
    shown_url: String,
    /// Authentication and version headers; secret ones are marked sensitive.
    headers: HeaderMap,
    /// Names the provider in errors.
    source: ErrorSource,
    /// When and how long to wait before another attempt.
    retry: RetryPolicy,
    /// How long an attempt may go without content.
    stream_timeout: Duration,
    /// The budget and permit every attempt passes first.
    gate: Gate,
}

/// What a request asks of the gate: its estimated input and its output cap, in tokens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    pub input_tokens: u64,
    pub max_output: u64,
}

impl Ask {
    /// The ask of a request whose JSON body is `body`: about four bytes a token (the body
    /// holds the tool schemas too, which count as input), and the request's output cap.
    pub(crate) fn for_body(body: &[u8], max_tokens: u32) -> Ask {
        Ask {
            input_tokens: (body.len() / 4) as u64,
            max_output: u64::from(max_tokens),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("provider", &self.source.provider)
            .field("url", &self.shown_url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("retry", &self.retry)
            .field("stream_timeout", &self.stream_timeout)
            .finish_non_exhaustive()
    }
}

/// The outcome of a failed attempt, with what the retry loop needs to decide.
#[derive(Debug)]
struct Failure {
    error: LlmError,
    /// The server's hint on when to come back.
    retry_after: Option<Duration>,
}

impl Failure {
    fn new(error: LlmError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

/// The base URL of `model`'s provider: its variable when set and not blank, else the default.
/// Returns the variable's name too, for error messages.
pub(crate) fn base_url(
    model: &ModelRef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(&'static str, String), LlmError> {
    let (var, default) = model
        .provider
        .base_url()
        .ok_or_else(|| LlmError::Config(format!("{} is not an HTTP provider", model.provider)))?;
    let base = env(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned());
    Ok((var, base))
}

/// The header carrying `model`'s API key as `format(key)`, marked sensitive so no `Debug`
/// prints it; `None` for providers that need no key.
pub(crate) fn key_header(
    model: &ModelRef,
    env: &dyn Fn(&str) -> Option<String>,
    format: impl Fn(&str) -> String,
) -> Result<Option<HeaderValue>, LlmError> {
    let Some(var) = model.provider.api_key_env() else {
        return Ok(None);
    };
    let key = env(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| LlmError::Config(format!("{model} needs an API key: set {var}")))?;
    let mut value = HeaderValue::from_str(&format(&key)).map_err(|_| {
        LlmError::Config(format!(
            "{var} holds characters that cannot be sent in an HTTP header"
        ))
    })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// Parses `base_url` and joins `path` onto it, tolerating a trailing slash on the base.
pub(crate) fn endpoint_url(var: &str, base_url: &str, path: &str) -> Result<Url, LlmError> {
    let joined = format!(
        "{}/{}",
        base_url.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    let url = Url::parse(&joined)
        .map_err(|e| LlmError::Config(format!("{var} is not a valid URL ({base_url:?}): {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(LlmError::Config(format!(
            "{var} must be an http or https URL, not {base_url:?}"
        )));
    }
    Ok(url)
}

impl Endpoint {
    /// An endpoint POSTing JSON to `url` with `headers` on a client of its own.
    pub(crate) fn new(
        source: ErrorSource,
        url: Url,
        mut headers: HeaderMap,
        retry: RetryPolicy,
        timeouts: Timeouts,
    ) -> Result<Self, LlmError> {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .tcp_keepalive(Duration::from_secs(60))
            .user_agent(concat!("kugetsu/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LlmError::Config(format!("cannot set up the HTTP client: {e}")))?;
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        Ok(Self {
            client,
            shown_url: shown.to_string(),
            url,
            headers,
            source,
            retry,
            stream_timeout: timeouts.stream,
            gate: Gate::default(),
        })
    }

    /// Passes every attempt through `gate`, naming this endpoint's account (provider, URL,
    /// and a fingerprint of the key headers) to the supervisor's governor.
    pub(crate) fn with_gate(mut self, gate: Gate) -> Self {
        let mut key = Vec::new();
        for value in self.headers.values().filter(|v| v.is_sensitive()) {
            key.extend_from_slice(value.as_bytes());
        }
        let mut url = self.url.clone();
        let _ = url.set_password(None);
        let account = format!(
            "{} {} key:{}",
            self.source.provider,
            url,
            if key.is_empty() {
                "none".to_owned()
            } else {
                fingerprint(&key)
            }
        );
        self.gate = gate.for_account(self.source.provider, account);
        self
    }

    /// Who errors are reported as coming from.
    pub(crate) fn source(&self) -> ErrorSource {
        self.source
    }

    /// Replaces the retry policy (tests record delays instead of sleeping).
    #[cfg(test)]
    pub(crate) fn set_retry(&mut self, retry: RetryPolicy) {
        self.retry = retry;
    }

    /// Sets how long an attempt may go without content (`stream_timeout`).
    pub(crate) fn set_stream_timeout(&mut self, timeout: Duration) {
        self.stream_timeout = timeout;
    }

    /// POSTs `body` and streams the answer through a fresh decoder per attempt, retrying as
    /// the policy allows.
    ///
    /// Each attempt first passes the gate (budget, then the governor's permit when the task
    /// is governed). A governed attempt answered 429 is not counted against the attempts: the
    /// governor, told the response's headers, holds the account as the server asks and the
    /// next permit comes when it may; it refuses one whose wait cannot fit the task's deadline.
    pub(crate) async fn stream<D: StreamDecoder>(
        &self,
        body: Vec<u8>,
        ask: Ask,
        new_decoder: impl Fn() -> D + Send + Sync,
        sink: &mut dyn StreamSink,
    ) -> Result<Completion, LlmError> {
        let body = Bytes::from(body);
        let mut attempt = 1;
        loop {
            // The permit comes before the attempt's stall watchdog starts: waiting for it is
            // not a stalled stream.
            let permit = self.gate.acquire(ask.input_tokens, ask.max_output).await?;
            let governed = permit.is_governed();
            let failure = match self
                .attempt(body.clone(), new_decoder(), sink, &permit)
                .await
            {
                Ok(mut completion) => {
                    permit.end(Some(&mut completion.usage));
                    return Ok(completion);
                }
                Err(failure) => failure,
            };
            permit.end(None);
            if governed && matches!(failure.error, LlmError::RateLimited { .. }) {
                // Nothing of a 429 was streamed: no deltas to take back.
                eprintln!(
                    "kugetsu-worker: {}; waiting for the governor's next permit",
                    kugetsu_protocol::error_chain(&failure.error)
                );
                continue;
            }
            if !failure.error.is_retryable() {
                return Err(failure.error);
            }
            if attempt >= self.retry.max_attempts {
                return Err(if attempt > 1 {
                    LlmError::RetriesExhausted {
                        attempts: attempt,
                        last: Box::new(failure.error),
                    }
                } else {
                    failure.error
                });
            }
            let Some(delay) = self.retry.delay(attempt, failure.retry_after, jitter()) else {
                return Err(LlmError::RetryAfterTooLong {
                    wait: failure.retry_after.unwrap_or_default(),
                    max: self.retry.max_retry_after,
                    last: Box::new(failure.error),
                });
            };
            let reason = kugetsu_protocol::error_chain(&failure.error);
            eprintln!(
                "kugetsu-worker: {reason}; retrying in {:.1} s (attempt {} of {})",
                delay.as_secs_f64(),
                attempt + 1,
                self.retry.max_attempts
            );
            sink.retry(attempt + 1, &reason, delay);
            self.retry.sleeper.sleep(delay).await;
            attempt += 1;
        }
    }

    /// One request and its response, start to finish.
    async fn attempt<D: StreamDecoder>(
        &self,
        body: Bytes,
        mut decoder: D,
        sink: &mut dyn StreamSink,
        permit: &Permit,
    ) -> Result<Completion, Failure> {
        let provider = self.source.provider;
        let mut on_text = |text: &str| sink.text(text);
        let mut watchdog = Watchdog::start(provider, self.stream_timeout);
        let sent = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(body)
            .send();
        let mut response = watchdog
            .guard(sent)
            .await
            .map_err(Failure::new)?
            .map_err(|source| {
                Failure::new(LlmError::Transport {
                    provider,
                    url: self.shown_url.clone(),
                    source,
                })
            })?;

        let status = response.status();
        permit.head(status.as_u16(), rate_headers(response.headers()));
        if !status.is_success() {
            let retry_after = retry_after(response.headers(), SystemTime::now());
            let body = watchdog
                .guard(read_capped(response))
                .await
                .unwrap_or_default();
            let report = ReportedError::from_body(&body);
            return Err(Failure {
                error: classify(self.source, ErrorOrigin::Status(status.as_u16()), &report),
                retry_after,
            });
        }
        if is_json(response.headers()) {
            // Some servers answer a streaming request with a plain JSON error and status 200.
            let body = watchdog
                .guard(read_capped(response))
                .await
                .unwrap_or_default();
            let error = match ReportedError::from_json_error(&body) {
                Some(report) => classify(self.source, ErrorOrigin::Stream, &report),
                None => LlmError::MalformedStream {
                    provider,
                    reason: format!(
                        "expected an event stream, got JSON: {}",
                        shorten(&String::from_utf8_lossy(&body), 200)
                    ),
                },
            };
            return Err(Failure::new(error));
        }

        read_body(&mut response, &mut decoder, &mut watchdog, &mut on_text)
            .await
            .map_err(Failure::new)?;
        decoder.finish(&mut on_text).map_err(Failure::new)
    }
}

/// Feeds the body of `response` into `decoder` until it ends or the decoder is done; fails
/// when the connection breaks, the decoder rejects what came, or the watchdog fires.
async fn read_body<D: StreamDecoder>(
    response: &mut Response,
    decoder: &mut D,
    watchdog: &mut Watchdog,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<(), LlmError> {
    let provider = watchdog.provider;
    loop {
        let chunk = match watchdog.guard(response.chunk()).await? {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(()),
            Err(source) => return Err(LlmError::StreamInterrupted { provider, source }),
        };
        decoder.push(&chunk, on_text)?;
        watchdog.observe(decoder.content_events());
        if decoder.is_done() {
            return Ok(());
        }
    }
}

/// Abandons an attempt that goes `limit` without content: its clock starts when the request
/// is sent and restarts whenever the decoder has seen another content event, so a server
/// that sends only keep-alive comments or pings (or nothing at all) is caught.
#[derive(Debug)]
struct Watchdog {
    provider: &'static str,
    limit: Duration,
    deadline: tokio::time::Instant,
    /// The decoder's content events when the clock last restarted.
    seen: u64,
}

impl Watchdog {
    fn start(provider: &'static str, limit: Duration) -> Self {
        Self {
            provider,
            limit,
            deadline: deadline_after(limit),
            seen: 0,
        }
    }

    /// Awaits `future` unless the deadline passes first.
    async fn guard<T>(&self, future: impl Future<Output = T>) -> Result<T, LlmError> {
        tokio::time::timeout_at(self.deadline, future)
            .await
            .map_err(|_| LlmError::Stalled {
                provider: self.provider,
                timeout: self.limit,
            })
    }

    /// Restarts the clock if content arrived since it last did.
    fn observe(&mut self, content_events: u64) {
        if content_events != self.seen {
            self.seen = content_events;
            self.deadline = deadline_after(self.limit);
        }
    }
}

/// `limit` from now; a limit too large to represent is as good as a year.
fn deadline_after(limit: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(limit)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// Fails with [`LlmError::TooLarge`] when `len` bytes of `what` pass [`MAX_STREAM_BYTES`].
pub(crate) fn check_size(
    provider: &'static str,
    what: &'static str,
    len: usize,
) -> Result<(), LlmError> {
    if len > MAX_STREAM_BYTES {
        return Err(LlmError::TooLarge {
            provider,
            what,
            limit: MAX_STREAM_BYTES,
        });
    }
    Ok(())
}

/// The error for an SSE line (or event) past the parser's limit.
pub(crate) fn line_too_long(provider: &'static str, error: TooLong) -> LlmError {
    LlmError::TooLarge {
        provider,
        what: "an SSE line",
        limit: error.limit,
    }
}

/// Parses the JSON of one stream event, naming it in the error when it is not valid.
pub(crate) fn decode_event<T: DeserializeOwned>(
    provider: &'static str,
    data: &str,
) -> Result<T, LlmError> {
    serde_json::from_str(data).map_err(|source| LlmError::MalformedEvent {
        provider,
        data: shorten(data, 200),
        source,
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// The response body up to [`MAX_ERROR_BODY`] bytes; a read error keeps what came before.
async fn read_capped(mut response: Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_with_or_without_trailing_slash() {
        let url = |base| endpoint_url("X", base, "chat/completions").map(|u| u.to_string());
        assert_eq!(
            url("https://api.openai.com/v1").unwrap(),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            url("http://127.0.0.1:8080/v1/").unwrap(),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
        let error = url("not a url").unwrap_err().to_string();
        assert!(error.starts_with("X is not a valid URL"), "{error}");
        let error = url("ftp://example.com").unwrap_err().to_string();
        assert!(error.contains("http or https"), "{error}");
    }

    #[test]
    fn debug_hides_secrets_in_headers_and_urls() {
        let mut headers = HeaderMap::new();
        let mut key = HeaderValue::from_static("Bearer sk-very-secret");
        key.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, key);
        let source = ErrorSource {
            provider: "openai",
            key_env: None,
        };
        let url = endpoint_url(
            "X",
            "https://user:hunter2@proxy.example/v1",
            "chat/completions",
        )
        .unwrap();
        let endpoint = Endpoint::new(
            source,
            url,
            headers,
            RetryPolicy::default(),
            Timeouts::default(),
        )
        .unwrap();
        let debug = format!("{endpoint:?}");
        assert!(!debug.contains("sk-very-secret"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains("https://user:***@proxy.example/v1/chat/completions"),
            "{debug}"
        );
        assert!(debug.contains("authorization"), "{debug}");
    }
}

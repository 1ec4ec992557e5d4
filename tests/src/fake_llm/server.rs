//! The fake LLM server: a listener on its own thread and runtime, one task per connection, a
//! shared script of replies and a record of requests.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use super::http::{self, Request};
use super::ids::IdGen;
use super::invariants::{self, Expectations};
use super::record::RecordedRequest;
use super::reply::{ApiError, Cut, Reply};
use super::{anthropic, openai};

/// The model id the OpenAI server of [`FakeLlm::openai`] expects.
pub const OPENAI_MODEL: &str = "gpt-4.1-mini";
/// The key the OpenAI server of [`FakeLlm::openai`] expects.
pub const OPENAI_KEY: &str = "sk-test-openai-0123456789";
/// The model id the Anthropic server of [`FakeLlm::anthropic`] expects.
pub const ANTHROPIC_MODEL: &str = "claude-sonnet-4-5";
/// The key the Anthropic server of [`FakeLlm::anthropic`] expects.
pub const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789";

/// A provider wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wire {
    /// OpenAI chat completions (`…/chat/completions`).
    OpenAi,
    /// Anthropic Messages (`…/messages`).
    Anthropic,
}

impl Wire {
    /// The wire format a request path asks for.
    pub fn from_path(path: &str) -> Option<Wire> {
        let path = path.split('?').next().unwrap_or_default();
        if path.ends_with("chat/completions") {
            Some(Wire::OpenAi)
        } else if path.ends_with("messages") {
            Some(Wire::Anthropic)
        } else {
            None
        }
    }

    /// The provider name of `kugetsu -m PROVIDER/MODEL`.
    pub fn provider(self) -> &'static str {
        match self {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
        }
    }
}

/// What a test can read and change while the server runs.
#[derive(Debug)]
struct State {
    /// Replies to turn requests (those offering tools).
    replies: VecDeque<Reply>,
    /// Replies to summary requests (those offering no tools): a compaction runs concurrently
    /// with turns, so its replies cannot share one ordered queue with theirs.
    summaries: VecDeque<Reply>,
    /// Whether the test ever scripted a summary; until it does, every request takes a reply
    /// from `replies` (a request without tools is a plain chat request then).
    summaries_apart: bool,
    requests: Vec<RecordedRequest>,
    /// When the response to each request (by number) was completely written.
    answered: std::collections::BTreeMap<usize, std::time::Instant>,
    violations: Vec<String>,
    /// Every tool-call id streamed so far: a client may only echo these.
    issued: HashSet<String>,
    ids: IdGen,
    /// The key's rate limit, when the test set one.
    limiter: Option<Limiter>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wire: Wire,
    expect: Expectations,
    /// Turns whose usage the test did not set report `input_tokens` = request body bytes / 4.
    usage_from_body: bool,
    /// The number of requests received; a watch so tests can wait for the n-th request.
    received: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock only ever comes from a test assertion; the state is
        // still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Configures a [`FakeLlm`] before it starts.
#[derive(Debug, Clone)]
pub struct FakeLlmBuilder {
    wire: Wire,
    expect: Expectations,
    usage_from_body: bool,
    limit: Option<RateLimit>,
}

/// A provider's rate limit on the key, enforced the way providers do: token buckets that
/// refill continuously, real rate-limit headers on every response, 429 with `retry-after`
/// over the limit.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Requests per minute, as the headers state it.
    pub rpm: u64,
    /// How many requests the bucket holds (a provider's burst allowance).
    pub request_burst: u64,
    /// Tokens per minute (input estimated from the body, plus the request's max tokens).
    pub tpm: Option<u64>,
    /// How many tokens the bucket holds.
    pub token_burst: u64,
}

/// One bucket of a [`RateLimit`].
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    capacity: f64,
    per_sec: f64,
    at: std::time::Instant,
}

impl Bucket {
    fn new(per_minute: u64, capacity: u64) -> Bucket {
        Bucket {
            level: capacity as f64,
            capacity: capacity as f64,
            per_sec: per_minute as f64 / 60.0,
            at: std::time::Instant::now(),
        }
    }

    fn refill(&mut self, now: std::time::Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.per_sec).min(self.capacity);
        self.at = now;
    }

    /// How long until `cost` fits (zero: it fits now).
    fn wait(&self, cost: f64) -> f64 {
        let cost = cost.min(self.capacity);
        ((cost - self.level) / self.per_sec).max(0.0)
    }

    fn reset_secs(&self) -> f64 {
        (self.capacity - self.level) / self.per_sec
    }
}

impl Limiter {
    /// Takes one request costing `tokens` if it fits now: whether it did, the rate-limit
    /// headers to send (as `wire`'s provider names them), and seconds until it would fit.
    fn admit(&mut self, tokens: f64, wire: Wire) -> (bool, Vec<(String, String)>, f64) {
        let now = std::time::Instant::now();
        self.requests.refill(now);
        if let Some(b) = self.tokens.as_mut() {
            b.refill(now);
        }
        let wait = self
            .requests
            .wait(1.0)
            .max(self.tokens.map_or(0.0, |b| b.wait(tokens)));
        let admitted = wait <= 0.0;
        if admitted {
            self.requests.level -= 1.0;
            if let Some(b) = self.tokens.as_mut() {
                b.level -= tokens.min(b.capacity);
            }
        }
        let mut headers = Vec::new();
        let mut add = |what: &str, limit: u64, bucket: &Bucket| match wire {
            Wire::OpenAi => {
                headers.push((format!("x-ratelimit-limit-{what}"), limit.to_string()));
                headers.push((
                    format!("x-ratelimit-remaining-{what}"),
                    (bucket.level.max(0.0).floor() as u64).to_string(),
                ));
                headers.push((
                    format!("x-ratelimit-reset-{what}"),
                    format!("{:.3}s", bucket.reset_secs()),
                ));
            }
            Wire::Anthropic => {
                headers.push((
                    format!("anthropic-ratelimit-{what}-limit"),
                    limit.to_string(),
                ));
                headers.push((
                    format!("anthropic-ratelimit-{what}-remaining"),
                    (bucket.level.max(0.0).floor() as u64).to_string(),
                ));
                let at = std::time::SystemTime::now()
                    + Duration::from_secs_f64(bucket.reset_secs().max(0.0));
                headers.push((
                    format!("anthropic-ratelimit-{what}-reset"),
                    humantime::format_rfc3339_seconds(at).to_string(),
                ));
            }
        };
        add("requests", self.limit.rpm, &self.requests);
        if let (Some(tpm), Some(bucket)) = (self.limit.tpm, &self.tokens) {
            add("tokens", tpm, bucket);
        }
        (admitted, headers, wait)
    }
}

/// The state of a [`RateLimit`].
#[derive(Debug)]
struct Limiter {
    limit: RateLimit,
    requests: Bucket,
    tokens: Option<Bucket>,
    throttled: usize,
}

impl FakeLlmBuilder {
    /// Every request must name this model.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.expect.model = Some(model.into());
        self
    }

    /// Every request must carry this key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.expect.api_key = Some(key.into());
        self
    }

    /// Summary requests (those offering no tools) must name this model instead of
    /// [`model`](Self::model)'s (a separate compaction model).
    pub fn summary_model(mut self, model: impl Into<String>) -> Self {
        self.expect.summary_model = Some(model.into());
        self
    }

    /// Reports realistic usage: a turn whose usage the test did not set claims one input
    /// token per 4 bytes of the request body, as a real tokenizer roughly would. A client that
    /// calibrates its token estimate on reported usage then sees a context that grows with
    /// the conversation.
    pub fn usage_from_body(mut self) -> Self {
        self.usage_from_body = true;
        self
    }

    /// Enforces `limit` on the key: over it, 429 with `retry-after` and no reply taken.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on a thread of its own.
    pub fn start(self) -> FakeLlm {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("set the listener non-blocking");
        let addr = listener.local_addr().expect("listener address");
        let (received, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                replies: VecDeque::new(),
                summaries: VecDeque::new(),
                summaries_apart: false,
                requests: Vec::new(),
                answered: std::collections::BTreeMap::new(),
                violations: Vec::new(),
                issued: HashSet::new(),
                ids: IdGen::new(u64::from(addr.port())),
                limiter: self.limit.map(|limit| Limiter {
                    limit,
                    requests: Bucket::new(limit.rpm, limit.request_burst),
                    tokens: limit.tpm.map(|tpm| Bucket::new(tpm, limit.token_burst)),
                    throttled: 0,
                }),
            }),
            wire: self.wire,
            expect: self.expect,
            usage_from_body: self.usage_from_body,
            received,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("fake-llm-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fake LLM runtime");
                runtime.block_on(accept_loop(listener, thread_shared, stopped));
                // Dropping the runtime cancels every connection task, stalled ones included.
            })
            .expect("spawn the fake LLM thread");
        FakeLlm {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// A fake LLM server. See the [module docs](super).
///
/// Dropping it stops the server and fails the test if any request violated an invariant.
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Tells the accept loop to end; the thread then drops its runtime and every connection.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for FakeLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("FakeLlm")
            .field("addr", &self.addr)
            .field("wire", &self.shared.wire)
            .field("requests", &state.requests.len())
            .field("replies_left", &state.replies.len())
            .field("summaries_left", &state.summaries.len())
            .field("violations", &state.violations)
            .finish()
    }
}

impl FakeLlm {
    /// A server for `wire` with no expectations set.
    pub fn builder(wire: Wire) -> FakeLlmBuilder {
        FakeLlmBuilder {
            wire,
            expect: Expectations::default(),
            usage_from_body: false,
            limit: None,
        }
    }

    /// An OpenAI server expecting [`OPENAI_MODEL`] and [`OPENAI_KEY`].
    pub fn openai() -> FakeLlm {
        Self::builder(Wire::OpenAi)
            .model(OPENAI_MODEL)
            .api_key(OPENAI_KEY)
            .start()
    }

    /// An Anthropic server expecting [`ANTHROPIC_MODEL`] and [`ANTHROPIC_KEY`].
    pub fn anthropic() -> FakeLlm {
        Self::builder(Wire::Anthropic)
            .model(ANTHROPIC_MODEL)
            .api_key(ANTHROPIC_KEY)
            .start()
    }

    /// The server for `wire` with its default model and key.
    pub fn start(wire: Wire) -> FakeLlm {
        match wire {
            Wire::OpenAi => Self::openai(),
            Wire::Anthropic => Self::anthropic(),
        }
    }

    pub fn wire(&self) -> Wire {
        self.shared.wire
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL a client is configured with: `http://127.0.0.1:PORT/v1` for OpenAI (the
    /// client appends `/chat/completions`), `http://127.0.0.1:PORT` for Anthropic (the client
    /// appends `/v1/messages`, as the SDKs do).
    pub fn base_url(&self) -> String {
        match self.shared.wire {
            Wire::OpenAi => format!("http://{}/v1", self.addr),
            Wire::Anthropic => format!("http://{}", self.addr),
        }
    }

    /// The model every request must name, when set.
    pub fn model(&self) -> Option<&str> {
        self.shared.expect.model.as_deref()
    }

    /// `PROVIDER/MODEL` for `kugetsu -m`.
    pub fn model_arg(&self) -> String {
        format!(
            "{}/{}",
            self.shared.wire.provider(),
            self.model().unwrap_or("fake-model")
        )
    }

    /// The key every request must carry, when set.
    pub fn api_key(&self) -> Option<&str> {
        self.shared.expect.api_key.as_deref()
    }

    /// The environment a client needs to reach this server: base URL and key variables.
    pub fn env(&self) -> Vec<(String, String)> {
        let (url_var, key_var) = match self.shared.wire {
            Wire::OpenAi => ("OPENAI_BASE_URL", "OPENAI_API_KEY"),
            Wire::Anthropic => ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"),
        };
        let mut env = vec![(url_var.to_owned(), self.base_url())];
        if let Some(key) = self.api_key() {
            env.push((key_var.to_owned(), key.to_owned()));
        }
        env
    }

    /// Queues a reply; requests take replies in the order they were pushed.
    pub fn push(&self, reply: impl Into<Reply>) -> &Self {
        self.shared.lock().replies.push_back(reply.into());
        self
    }

    /// Queues several replies.
    pub fn push_all<R: Into<Reply>>(&self, replies: impl IntoIterator<Item = R>) -> &Self {
        let mut state = self.shared.lock();
        state.replies.extend(replies.into_iter().map(Into::into));
        drop(state);
        self
    }

    /// Queues a reply for summary requests (those offering no tools, as a compaction's
    /// does); they take these in order, apart from the turn replies of [`push`](Self::push).
    ///
    /// Until a test first calls this, requests are not told apart: each takes the next reply
    /// of [`push`](Self::push), tools or not.
    pub fn push_summary(&self, reply: impl Into<Reply>) -> &Self {
        let mut state = self.shared.lock();
        state.summaries_apart = true;
        state.summaries.push_back(reply.into());
        drop(state);
        self
    }

    /// Turn replies not yet taken by a request.
    pub fn remaining(&self) -> usize {
        self.shared.lock().replies.len()
    }

    /// Summary replies not yet taken by a request.
    pub fn remaining_summaries(&self) -> usize {
        self.shared.lock().summaries.len()
    }

    /// Every turn request (one offering tools) so far, in arrival order.
    pub fn turn_requests(&self) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| !r.summary).collect()
    }

    /// Every summary request (one offering no tools) so far, in arrival order.
    pub fn summary_requests(&self) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.summary).collect()
    }

    /// The `number`-th turn request (1-based); panics when there is none.
    pub fn turn_request(&self, number: usize) -> RecordedRequest {
        let turns = self.turn_requests();
        turns
            .get(number.wrapping_sub(1))
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "the fake LLM received {} turn requests, not {number}",
                    turns.len()
                )
            })
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// How many requests were answered 429 for the rate limit.
    pub fn throttled(&self) -> usize {
        self.shared
            .lock()
            .limiter
            .as_ref()
            .map_or(0, |l| l.throttled)
    }

    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// The `number`-th request (1-based); panics when there is none.
    pub fn request(&self, number: usize) -> RecordedRequest {
        let state = self.shared.lock();
        state
            .requests
            .get(number.wrapping_sub(1))
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "the fake LLM received {} requests, not {number}",
                    state.requests.len()
                )
            })
    }

    /// When the response to request `number` (1-based) had been completely written (or its
    /// connection broke); `None` while it is still being written. A client may act on a
    /// stream's last event a moment before this is recorded.
    pub fn answered_at(&self, number: usize) -> Option<std::time::Instant> {
        self.shared.lock().answered.get(&number).copied()
    }

    /// Every tool-call id the server has streamed, in no particular order.
    pub fn issued_tool_ids(&self) -> HashSet<String> {
        self.shared.lock().issued.clone()
    }

    /// The invariant violations so far.
    pub fn violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }

    /// Takes the violations so far, so that dropping the server does not fail the test for
    /// them (for tests that provoke violations on purpose).
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut self.shared.lock().violations)
    }

    /// Panics with every violation so far, if there are any.
    pub fn assert_no_violations(&self) {
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "the fake LLM saw invalid requests:\n  {}",
            violations.join("\n  ")
        );
    }

    /// Panics unless every scripted reply (turns and summaries) was taken.
    pub fn assert_all_served(&self) {
        let state = self.shared.lock();
        assert!(
            state.replies.is_empty() && state.summaries.is_empty(),
            "{} scripted replies and {} summaries were never requested (the client made {} \
             requests)",
            state.replies.len(),
            state.summaries.len(),
            state.requests.len()
        );
    }

    /// Waits until at least `count` requests have arrived; panics after `timeout`.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let mut received = self.shared.received.subscribe();
        let reached = tokio::time::timeout(timeout, received.wait_for(|n| *n >= count)).await;
        if !matches!(reached, Ok(Ok(_))) {
            panic!(
                "waited {timeout:?} for {count} requests to the fake LLM; got {}",
                self.request_count()
            );
        }
        self.requests()
    }

    /// Waits until at least `count` turn requests have arrived; panics after `timeout`.
    pub async fn wait_for_turn_requests(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Vec<RecordedRequest> {
        self.wait_until(&format!("{count} turn requests"), timeout, |requests| {
            requests.iter().filter(|r| !r.summary).count() >= count
        })
        .await;
        self.turn_requests()
    }

    /// Waits until at least `count` summary requests have arrived; panics after `timeout`.
    pub async fn wait_for_summary_requests(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Vec<RecordedRequest> {
        self.wait_until(&format!("{count} summary requests"), timeout, |requests| {
            requests.iter().filter(|r| r.summary).count() >= count
        })
        .await;
        self.summary_requests()
    }

    /// Waits until the recorded requests satisfy `done`; panics after `timeout`.
    async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[RecordedRequest]) -> bool,
    ) {
        let mut received = self.shared.received.subscribe();
        let shared = &self.shared;
        let reached = tokio::time::timeout(
            timeout,
            received.wait_for(|_| done(&shared.lock().requests)),
        )
        .await;
        if !matches!(reached, Ok(Ok(_))) {
            panic!(
                "waited {timeout:?} for {what} to the fake LLM; got {} turn and {} summary \
                 requests",
                self.turn_requests().len(),
                self.summary_requests().len()
            );
        }
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if !std::thread::panicking() {
            self.assert_no_violations();
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).expect("register the listener");
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
                }
            }
        }
    }
}

/// How a streamed reply ends after its events.
enum Tail {
    /// The body ends (the last chunk).
    End,
    /// Nothing more, the connection held open until the client closes it.
    Stall,
    /// These keep-alive bytes at this interval until the client goes away.
    KeepAlive(Vec<u8>, Duration),
}

/// A reply, encoded for the wire and ready to write.
enum Planned {
    Sse {
        events: Vec<Vec<u8>>,
        write_size: Option<usize>,
        pause: Duration,
        /// After the events: end, stall, or send keep-alives.
        tail: Tail,
        /// Rate-limit headers.
        extra: Vec<(String, String)>,
    },
    /// `prefix`, then `x` forever (no newline) until the client goes away.
    EndlessLine {
        prefix: Vec<u8>,
        pause: Duration,
    },
    Error {
        status: u16,
        body: Value,
        retry_after: Option<u64>,
        extra: Vec<(String, String)>,
    },
    Stall,
    Raw(Vec<u8>),
    /// The path named no known API (or the other provider's).
    NotFound,
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let request = match http::read_request(&mut read, &mut write).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    shared
                        .lock()
                        .violations
                        .push(format!("malformed HTTP request: {e}"));
                    let _ = write
                        .write_all(
                            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                }
                return;
            }
        };
        let keep_alive = request.keep_alive;
        let (planned, request_id, number) = plan(&shared, request);
        let written = write_planned(&mut read, &mut write, shared.wire, planned, &request_id).await;
        shared
            .lock()
            .answered
            .insert(number, std::time::Instant::now());
        match written {
            Ok(true) if keep_alive => {}
            _ => {
                let _ = write.shutdown().await;
                return;
            }
        }
    }
}

/// Records `request`, checks it, and picks (and encodes) its reply.
fn plan(shared: &Shared, request: Request) -> (Planned, String, usize) {
    let wire = Wire::from_path(&request.path);
    let json: Option<Value> = serde_json::from_slice(&request.body).ok();
    let body_tokens = (request.body.len() / 4) as u64;
    let mut state = shared.lock();
    // Once the test scripts summaries, a request offering no tools is a summary (a
    // compaction), served from its own queue.
    let summary = state.summaries_apart
        && json.as_ref().is_some_and(|j| {
            j.get("tools")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
        });
    let number = state.requests.len() + 1;
    let recorded = RecordedRequest {
        number,
        summary,
        wire,
        method: request.method,
        path: request.path,
        headers: request.headers,
        body: request.body,
        json,
        received_at: std::time::Instant::now(),
    };
    let mut violations = Vec::new();
    let mut extra = Vec::new();
    if wire == Some(shared.wire)
        && let Some(limiter) = state.limiter.as_mut()
    {
        let max_tokens = recorded.json.as_ref().and_then(|j| {
            j.get("max_tokens")
                .or_else(|| j.get("max_completion_tokens"))
                .and_then(Value::as_u64)
        });
        let cost = (body_tokens + max_tokens.unwrap_or(0)) as f64;
        let (admitted, headers, retry) = limiter.admit(cost, shared.wire);
        extra = headers;
        if !admitted {
            limiter.throttled += 1;
            let retry_secs = retry.ceil().max(1.0) as u64;
            let error = ApiError::rate_limited().retry_after(retry_secs);
            if shared.wire == Wire::OpenAi {
                extra.push((
                    "retry-after-ms".to_owned(),
                    format!("{:.0}", (retry * 1000.0).ceil().max(1.0)),
                ));
            }
            let (status, body) = match shared.wire {
                Wire::OpenAi => openai::error_body(&error),
                Wire::Anthropic => anthropic::error_body(&error),
            };
            state.requests.push(recorded);
            let request_id = state.ids.request_id();
            drop(state);
            shared.received.send_replace(number);
            return (
                Planned::Error {
                    status,
                    body,
                    retry_after: Some(retry_secs),
                    extra,
                },
                request_id,
                number,
            );
        }
    }
    let reply = match wire {
        Some(w) if w == shared.wire => {
            let expect = shared.expect.for_request(summary);
            violations = invariants::check(w, &expect, &recorded, &state.issued);
            let (queue, what) = if summary {
                (&mut state.summaries, "summary ")
            } else {
                (&mut state.replies, "")
            };
            queue.pop_front().or_else(|| {
                violations.push(format!("arrived when no {what}reply was scripted"));
                Some(Reply::Error(ApiError::invalid_request(format!(
                    "fake LLM: {what}request #{number} arrived but the test scripted no more \
                     {what}replies"
                ))))
            })
        }
        Some(w) => {
            violations.push(format!(
                "path asks for the {w:?} API of a {:?} server",
                shared.wire
            ));
            None
        }
        None => {
            violations.push("path names no known API".to_owned());
            None
        }
    };
    for v in violations {
        let line = format!(
            "request #{number} ({} {}): {v}",
            recorded.method, recorded.path
        );
        state.violations.push(line);
    }
    let model = recorded
        .model()
        .or(shared.expect.for_request(summary).model.as_deref())
        .unwrap_or("fake-model")
        .to_owned();
    state.requests.push(recorded);
    let request_id = state.ids.request_id();
    let planned = match reply {
        None => Planned::NotFound,
        Some(Reply::Turn(mut turn)) => {
            if shared.usage_from_body && !turn.usage_set {
                turn.input_tokens = body_tokens;
            }
            let State { ids, issued, .. } = &mut *state;
            let (mut events, tool_ids) = match shared.wire {
                Wire::OpenAi => openai::stream(&turn, &model, ids),
                Wire::Anthropic => anthropic::stream(&turn, &model, ids),
            };
            issued.extend(tool_ids);
            let mut tail = Tail::End;
            match &turn.cut {
                None => {}
                Some(Cut::End(n)) => events.truncate(*n),
                Some(Cut::KeepAlive(n, every)) => {
                    events.truncate(*n);
                    let keep_alive = match shared.wire {
                        Wire::OpenAi => b": keep-alive\n\n".to_vec(),
                        Wire::Anthropic => b"event: ping\ndata: {\"type\": \"ping\"}\n\n".to_vec(),
                    };
                    tail = Tail::KeepAlive(keep_alive, *every);
                }
                Some(Cut::Error(n, error)) => {
                    events.truncate(*n);
                    events.push(match shared.wire {
                        Wire::OpenAi => openai::stream_error(error),
                        Wire::Anthropic => anthropic::stream_error(error),
                    });
                }
                Some(Cut::Stall(n)) => {
                    events.truncate(*n);
                    tail = Tail::Stall;
                }
            }
            Planned::Sse {
                events,
                write_size: turn.write_size,
                pause: turn.write_pause,
                tail,
                extra,
            }
        }
        Some(Reply::Error(error)) => {
            let (status, body) = match shared.wire {
                Wire::OpenAi => openai::error_body(&error),
                Wire::Anthropic => anthropic::error_body(&error),
            };
            Planned::Error {
                status,
                body,
                retry_after: error.retry_after,
                extra,
            }
        }
        Some(Reply::Stall) => Planned::Stall,
        Some(Reply::Raw(bytes)) => Planned::Raw(bytes),
        Some(Reply::RawSse { body, write_size }) => Planned::Sse {
            events: vec![body],
            write_size,
            pause: Duration::from_millis(1),
            tail: Tail::End,
            extra,
        },
        Some(Reply::EndlessLine { prefix, pause }) => Planned::EndlessLine { prefix, pause },
    };
    drop(state);
    shared.received.send_replace(number);
    (planned, request_id, number)
}

/// Writes a planned reply. `Ok(true)` when the connection can serve another request.
async fn write_planned(
    read: &mut BufReader<OwnedReadHalf>,
    write: &mut OwnedWriteHalf,
    wire: Wire,
    planned: Planned,
    request_id: &str,
) -> io::Result<bool> {
    match planned {
        Planned::Sse {
            events,
            write_size,
            pause,
            tail,
            extra,
        } => {
            let mut headers = sse_headers(wire, request_id);
            headers.extend(extra);
            http::write_head(write, 200, &headers).await?;
            match write_size {
                None => {
                    for event in &events {
                        http::write_chunk(write, event).await?;
                    }
                }
                Some(size) => {
                    let body = events.concat();
                    for (i, piece) in body.chunks(size).enumerate() {
                        if i > 0 {
                            tokio::time::sleep(pause).await;
                        }
                        http::write_chunk(write, piece).await?;
                    }
                }
            }
            match tail {
                Tail::End => {}
                Tail::Stall => {
                    wait_for_close(read).await;
                    return Ok(false);
                }
                Tail::KeepAlive(keep_alive, every) => {
                    // Until a write fails: the client gave up on the stream.
                    loop {
                        tokio::time::sleep(every).await;
                        http::write_chunk(write, &keep_alive).await?;
                    }
                }
            }
            http::write_last_chunk(write).await?;
            Ok(true)
        }
        Planned::EndlessLine { prefix, pause } => {
            http::write_head(write, 200, &sse_headers(wire, request_id)).await?;
            http::write_chunk(write, &prefix).await?;
            let piece = vec![b'x'; 256 * 1024];
            // Until a write fails: the client gave up on the line.
            loop {
                http::write_chunk(write, &piece).await?;
                tokio::time::sleep(pause).await;
            }
        }
        Planned::Error {
            status,
            body,
            retry_after,
            extra,
        } => {
            let body = body.to_string();
            let mut headers = vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                ("content-length".to_owned(), body.len().to_string()),
            ];
            headers.extend(extra);
            headers.push(request_id_header(wire, request_id));
            if let Some(seconds) = retry_after {
                headers.push(("retry-after".to_owned(), seconds.to_string()));
            }
            if wire == Wire::Anthropic {
                let retry = matches!(status, 408 | 409 | 429 | 500..);
                headers.push(("x-should-retry".to_owned(), retry.to_string()));
            }
            http::write_head(write, status, &headers).await?;
            write.write_all(body.as_bytes()).await?;
            write.flush().await?;
            Ok(true)
        }
        Planned::Stall => {
            http::write_head(write, 200, &sse_headers(wire, request_id)).await?;
            wait_for_close(read).await;
            Ok(false)
        }
        Planned::Raw(bytes) => {
            write.write_all(&bytes).await?;
            write.flush().await?;
            Ok(false)
        }
        Planned::NotFound => {
            let body = r#"{"error":{"message":"not found","type":"invalid_request_error"}}"#;
            let headers = [
                ("content-type".to_owned(), "application/json".to_owned()),
                ("content-length".to_owned(), body.len().to_string()),
            ];
            http::write_head(write, 404, &headers).await?;
            write.write_all(body.as_bytes()).await?;
            write.flush().await?;
            Ok(true)
        }
    }
}

fn sse_headers(wire: Wire, request_id: &str) -> Vec<(String, String)> {
    vec![
        (
            "content-type".to_owned(),
            "text/event-stream; charset=utf-8".to_owned(),
        ),
        ("transfer-encoding".to_owned(), "chunked".to_owned()),
        ("cache-control".to_owned(), "no-cache".to_owned()),
        ("connection".to_owned(), "keep-alive".to_owned()),
        request_id_header(wire, request_id),
    ]
}

fn request_id_header(wire: Wire, request_id: &str) -> (String, String) {
    let name = match wire {
        Wire::OpenAi => "x-request-id",
        Wire::Anthropic => "request-id",
    };
    (name.to_owned(), request_id.to_owned())
}

/// Returns once the client closes its side (or the connection breaks).
async fn wait_for_close(read: &mut BufReader<OwnedReadHalf>) {
    let mut buf = [0u8; 1024];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

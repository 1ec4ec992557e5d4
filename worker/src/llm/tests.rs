//! Providers driven over real HTTP against [`fake_server::FakeServer`]: request shapes on the
//! wire, streamed answers, error statuses, retries, timeouts and cancellation.

mod fake_server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kugetsu_protocol::{ModelRef, Usage};
use reqwest::header::HeaderMap;
use serde_json::json;

use self::fake_server::{FakeServer, Reply};
use super::error::ErrorSource;
use super::http::{Endpoint, Timeouts, endpoint_url};
use super::openai::ChatStream;
use super::retry::{RetryPolicy, Sleeper};
use super::{Completion, LlmError, LlmRequest, MAX_STREAM_BYTES, Provider, StopReason, StreamSink};
use crate::conversation::{Message, ToolCall, ToolSpec};

/// Longest any single test waits on the network before failing.
const DEADLINE: Duration = Duration::from_secs(20);

fn tool_call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

/// A conversation with a tool round trip, so every message shape goes over the wire.
fn conversation() -> Vec<Message> {
    vec![
        Message::User {
            text: "list the files".into(),
        },
        Message::Assistant {
            text: "Sure.".into(),
            tool_calls: vec![tool_call("call_0", "ls", "{\"path\":\".\"}")],
        },
        Message::ToolResult {
            call_id: "call_0".into(),
            name: "ls".into(),
            content: "a.txt\nb.txt".into(),
            is_error: false,
        },
    ]
}

fn tools() -> Vec<ToolSpec> {
    vec![ToolSpec {
        name: std::borrow::Cow::Borrowed("ls"),
        description: std::borrow::Cow::Borrowed("Lists a directory."),
        parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
    }]
}

/// A retry policy that records the delays it is asked for instead of sleeping them.
fn recording_policy(max_attempts: u32) -> (RetryPolicy, Arc<Mutex<Vec<Duration>>>) {
    let delays = Arc::new(Mutex::new(Vec::new()));
    let record = delays.clone();
    let policy = RetryPolicy {
        max_attempts,
        sleeper: Sleeper::from_fn(move |delay| {
            record.lock().unwrap().push(delay);
            Box::pin(async {})
        }),
        ..RetryPolicy::default()
    };
    (policy, delays)
}

fn provider(model: &str, vars: &[(&str, String)], retry: RetryPolicy) -> Provider {
    let model: ModelRef = model.parse().unwrap();
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.clone()))
        .collect();
    let env = move |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut provider = Provider::from_model(&model, &env, Default::default()).unwrap();
    match &mut provider {
        Provider::OpenAi(client) => client.set_retry(retry),
        Provider::Anthropic(client) => client.set_retry(retry),
        Provider::Scripted(_) => {}
    }
    provider
}

fn openai(server: &FakeServer, retry: RetryPolicy) -> Provider {
    provider(
        "openai/gpt-test",
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", server.url("/v1/")),
        ],
        retry,
    )
}

fn anthropic(server: &FakeServer, retry: RetryPolicy) -> Provider {
    provider(
        "anthropic/claude-test",
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-test".into()),
            ("ANTHROPIC_BASE_URL", server.url("")),
        ],
        retry,
    )
}

/// Runs one turn of `provider` on [`conversation`]; returns the result and the streamed text.
async fn complete(provider: &Provider) -> (Result<Completion, LlmError>, String) {
    let messages = conversation();
    let tools = tools();
    let request = LlmRequest {
        system: "You are terse.",
        messages: &messages,
        tools: &tools,
        max_tokens: 512,
    };
    let mut seen = String::new();
    let mut on_text = |text: &str| seen.push_str(text);
    let result = tokio::time::timeout(DEADLINE, provider.complete(&request, &mut on_text))
        .await
        .expect("the provider finished within the deadline");
    (result, seen)
}

/// A sink that keeps the text since the last retry and every retry it heard.
#[derive(Debug, Default)]
struct Recorder {
    /// Text given since the turn began or the last retry (what a consumer still shows).
    text: String,
    /// Every piece of text given, across attempts.
    all_text: String,
    /// `(attempt, reason)` of each retry.
    retries: Vec<(u32, String)>,
}

impl StreamSink for Recorder {
    fn text(&mut self, text: &str) {
        self.text.push_str(text);
        self.all_text.push_str(text);
    }

    fn retry(&mut self, attempt: u32, reason: &str, _wait: Duration) {
        self.text.clear();
        self.retries.push((attempt, reason.to_owned()));
    }
}

/// Runs one turn like [`complete`], recording what the sink heard.
async fn complete_recorded(provider: &Provider) -> (Result<Completion, LlmError>, Recorder) {
    let messages = conversation();
    let tools = tools();
    let request = LlmRequest {
        system: "You are terse.",
        messages: &messages,
        tools: &tools,
        max_tokens: 512,
    };
    let mut recorder = Recorder::default();
    let result = tokio::time::timeout(DEADLINE, provider.complete(&request, &mut recorder))
        .await
        .expect("the provider finished within the deadline");
    (result, recorder)
}

/// A provider on `server` whose streams time out after `timeout` without content.
fn with_stream_timeout(mut provider: Provider, timeout: Duration) -> Provider {
    provider.set_stream_timeout(timeout);
    provider
}

const OPENAI_TWO_CALLS: &str = concat!(
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Reading bøth \"}}]}\n\n",
    ": keep-alive\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"files ✓\"}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"read\",\"arguments\":\"\"}}]}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"path\\\":\"}}]}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"read\",\"arguments\":\"{\\\"path\\\":\\\"b.txt\\\"}\"}}]}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"a.txt\\\"}\"}}]}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":321,\"completion_tokens\":45,\"total_tokens\":366}}\n\n",
    "data: [DONE]\n\n",
);

const ANTHROPIC_TURN: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-test\",\"usage\":{\"input_tokens\":210,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\ndata: {\"type\":\"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Reading a.txt — \"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"now.\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"read\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"path\\\": \"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"a.txt\\\"}\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":27}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

fn anthropic_turn() -> Completion {
    Completion {
        text: "Reading a.txt — now.".into(),
        tool_calls: vec![tool_call("toolu_01", "read", "{\"path\": \"a.txt\"}")],
        usage: Usage {
            input_tokens: 210,
            output_tokens: 27,
            cost_usd: None,
        },
        stop: StopReason::ToolUse,
    }
}

#[tokio::test]
async fn openai_streams_text_and_two_tool_calls() {
    let server = FakeServer::start(vec![Reply::sse(OPENAI_TWO_CALLS, 7)]).await;
    let (result, seen) = complete(&openai(&server, RetryPolicy::default())).await;
    assert_eq!(
        result.unwrap(),
        Completion {
            text: "Reading bøth files ✓".into(),
            tool_calls: vec![
                tool_call("call_a", "read", "{\"path\":\"a.txt\"}"),
                tool_call("call_b", "read", "{\"path\":\"b.txt\"}"),
            ],
            usage: Usage {
                input_tokens: 321,
                output_tokens: 45,
                cost_usd: None,
            },
            stop: StopReason::ToolUse,
        }
    );
    assert_eq!(seen, "Reading bøth files ✓");

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("accept"), Some("text/event-stream"));
    let body = &request.body;
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        body["tools"],
        json!([{"type": "function", "function": {
            "name": "ls",
            "description": "Lists a directory.",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}
        }}])
    );
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "list the files"},
            {"role": "assistant", "content": "Sure.", "tool_calls": [
                {"id": "call_0", "type": "function",
                 "function": {"name": "ls", "arguments": "{\"path\":\".\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_0", "content": "a.txt\nb.txt"}
        ])
    );
}

#[tokio::test]
async fn anthropic_streams_text_and_tool_use() {
    let server = FakeServer::start(vec![Reply::sse(ANTHROPIC_TURN, 5)]).await;
    let (result, seen) = complete(&anthropic(&server, RetryPolicy::default())).await;
    assert_eq!(result.unwrap(), anthropic_turn());
    assert_eq!(seen, "Reading a.txt — now.");

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/v1/messages");
    assert_eq!(request.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.body,
        json!({
            "model": "claude-test",
            "max_tokens": 512,
            "system": "You are terse.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "list the files"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Sure."},
                    {"type": "tool_use", "id": "call_0", "name": "ls", "input": {"path": "."}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_0", "content": "a.txt\nb.txt"}
                ]}
            ],
            "tools": [{
                "name": "ls",
                "description": "Lists a directory.",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}
            }],
            "stream": true
        })
    );
}

#[tokio::test]
async fn rate_limit_429_honours_retry_after_then_succeeds() {
    let server = FakeServer::start(vec![
        Reply::error(
            429,
            r#"{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}"#,
            &[("retry-after", "2")],
        ),
        Reply::sse(OPENAI_TWO_CALLS, 64),
    ])
    .await;
    let (policy, delays) = recording_policy(5);
    let (result, _) = complete(&openai(&server, policy)).await;
    assert_eq!(result.unwrap().tool_calls.len(), 2);
    assert_eq!(server.requests().len(), 2);
    let delays = delays.lock().unwrap().clone();
    assert_eq!(delays.len(), 1);
    assert!(
        delays[0] >= Duration::from_secs(2) && delays[0] < Duration::from_millis(2500),
        "{delays:?}"
    );
}

#[tokio::test]
async fn overloaded_529_is_retried_then_succeeds() {
    let server = FakeServer::start(vec![
        Reply::error(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &[],
        ),
        Reply::sse(ANTHROPIC_TURN, 64),
    ])
    .await;
    let (policy, delays) = recording_policy(5);
    let (result, _) = complete(&anthropic(&server, policy)).await;
    assert_eq!(result.unwrap(), anthropic_turn());
    assert_eq!(server.requests().len(), 2);
    let delays = delays.lock().unwrap().clone();
    assert_eq!(delays.len(), 1);
    // No hint: backoff from the 1 s base with equal jitter.
    assert!(
        delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_secs(1),
        "{delays:?}"
    );
}

#[tokio::test]
async fn overloaded_event_mid_stream_is_retried_before_any_tool_call() {
    let overloaded = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\n",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    let server = FakeServer::start(vec![
        Reply::sse(overloaded, 16),
        Reply::sse(ANTHROPIC_TURN, 64),
    ])
    .await;
    let (policy, _) = recording_policy(5);
    let (result, _) = complete(&anthropic(&server, policy)).await;
    assert_eq!(result.unwrap(), anthropic_turn());
    assert_eq!(server.requests().len(), 2);
}

/// Tools run only once a whole completion is back, so an attempt that failed halfway through
/// a tool call is retried; nothing of the broken call leaks into the result.
#[tokio::test]
async fn a_failure_mid_tool_call_is_retried_and_no_partial_call_leaks() {
    let broken = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Reading\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_x\",\"function\":{\"name\":\"bash\",\"arguments\":\"{\\\"comm\"}}]}}]}\n\n",
        "data: {\"error\":{\"message\":\"The server had an error processing your request.\",\"type\":\"server_error\"}}\n\n",
    );
    // The same, but the connection just ends (cleanly) in the middle of the arguments.
    let cut = broken.split("data: {\"error\"").next().unwrap();
    let server = FakeServer::start(vec![
        Reply::sse(broken, 32),
        Reply::sse(cut, 32),
        Reply::sse(OPENAI_TWO_CALLS, 64),
    ])
    .await;
    let (policy, delays) = recording_policy(5);
    let (result, recorder) = complete_recorded(&openai(&server, policy)).await;
    let completion = result.unwrap();
    assert_eq!(
        completion.tool_calls,
        vec![
            tool_call("call_a", "read", "{\"path\":\"a.txt\"}"),
            tool_call("call_b", "read", "{\"path\":\"b.txt\"}"),
        ]
    );
    assert_eq!(completion.text, "Reading bøth files ✓");
    assert_eq!(server.requests().len(), 3);
    assert_eq!(delays.lock().unwrap().len(), 2);
    let attempts: Vec<u32> = recorder.retries.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [2, 3]);
    assert!(
        recorder.retries[0].1.contains("server error"),
        "{:?}",
        recorder.retries
    );
    assert!(
        recorder.retries[1].1.contains("ended early"),
        "{:?}",
        recorder.retries
    );
    // What a consumer keeps after discarding on each retry is the last attempt's text.
    assert_eq!(recorder.text, "Reading bøth files ✓");
    assert_eq!(recorder.all_text, "ReadingReadingReading bøth files ✓");
}

/// A 200 stream that ends cleanly with no finish reason and no end marker is an interruption
/// on both wires: retried, never taken as the answer.
#[tokio::test]
async fn a_truncated_stream_is_retried_on_both_wires() {
    let openai_cut = OPENAI_TWO_CALLS
        .split("data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"a.txt")
        .next()
        .unwrap();
    let server = FakeServer::start(vec![
        Reply::sse(openai_cut, 16),
        Reply::sse(OPENAI_TWO_CALLS, 64),
    ])
    .await;
    let (policy, _) = recording_policy(5);
    let (result, recorder) = complete_recorded(&openai(&server, policy)).await;
    assert_eq!(result.unwrap().tool_calls.len(), 2);
    assert_eq!(server.requests().len(), 2);
    assert_eq!(recorder.retries.len(), 1);
    assert!(
        recorder.retries[0]
            .1
            .contains("ended early (no finish_reason and no [DONE])"),
        "{:?}",
        recorder.retries
    );

    let anthropic_cut = ANTHROPIC_TURN.split("event: message_delta").next().unwrap();
    let server = FakeServer::start(vec![
        Reply::sse(anthropic_cut, 16),
        Reply::sse(ANTHROPIC_TURN, 64),
    ])
    .await;
    let (policy, _) = recording_policy(5);
    let (result, recorder) = complete_recorded(&anthropic(&server, policy)).await;
    assert_eq!(result.unwrap(), anthropic_turn());
    assert_eq!(server.requests().len(), 2);
    assert!(
        recorder.retries[0]
            .1
            .contains("ended early (no stop_reason and no message_stop)"),
        "{:?}",
        recorder.retries
    );
    assert_eq!(recorder.text, "Reading a.txt — now.");

    // Truncated every time: the error says so, and how often it was tried.
    let server = FakeServer::start(vec![Reply::sse(anthropic_cut, 64); 3]).await;
    let (policy, _) = recording_policy(3);
    let (result, _) = complete(&anthropic(&server, policy)).await;
    assert_eq!(
        kugetsu_protocol::error_chain(&result.unwrap_err()),
        "gave up after 3 attempts: the anthropic response stream ended early (no stop_reason \
         and no message_stop)"
    );
}

#[tokio::test]
async fn a_retry_after_past_the_longest_wait_gives_up_saying_why() {
    let server = FakeServer::start(vec![Reply::error(
        429,
        r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
        &[("retry-after", "600")],
    )])
    .await;
    let (policy, delays) = recording_policy(5);
    let (result, _) = complete(&openai(&server, policy)).await;
    let error = result.unwrap_err();
    assert!(
        matches!(error, LlmError::RetryAfterTooLong { .. }),
        "{error}"
    );
    assert_eq!(
        kugetsu_protocol::error_chain(&error),
        "gave up: retry-after 600 s exceeds the longest wait (60 s): openai rate limit hit \
         (HTTP 429): Rate limit reached"
    );
    assert!(delays.lock().unwrap().is_empty());
}

/// Keep-alive comments (OpenAI) and pings (Anthropic) are not content: a stream of nothing
/// else is abandoned after `stream_timeout` and retried.
#[tokio::test]
async fn keep_alives_do_not_hold_off_the_stream_timeout() {
    let every = Duration::from_millis(20);
    let first = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n".to_vec();
    let server = FakeServer::start(vec![
        Reply::KeepAlive {
            pieces: vec![first],
            keep_alive: b": keep-alive\n\n".to_vec(),
            every,
        },
        Reply::sse(OPENAI_TWO_CALLS, 64),
    ])
    .await;
    let closed = server.watch_close();
    let (policy, _) = recording_policy(5);
    let provider = with_stream_timeout(openai(&server, policy), Duration::from_millis(300));
    let (result, recorder) = complete_recorded(&provider).await;
    assert_eq!(result.unwrap().tool_calls.len(), 2);
    assert_eq!(
        recorder.retries,
        [(
            2,
            "no content from openai for 0.3 s (stream_timeout)".to_owned()
        )]
    );
    tokio::time::timeout(DEADLINE, closed)
        .await
        .expect("the stalled connection was closed")
        .unwrap();

    let start = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}\n\n",
    );
    let server = FakeServer::start(vec![
        Reply::KeepAlive {
            pieces: vec![start.as_bytes().to_vec()],
            keep_alive: b"event: ping\ndata: {\"type\": \"ping\"}\n\n".to_vec(),
            every,
        },
        Reply::sse(ANTHROPIC_TURN, 64),
    ])
    .await;
    let (policy, _) = recording_policy(5);
    let provider = with_stream_timeout(anthropic(&server, policy), Duration::from_millis(300));
    let (result, recorder) = complete_recorded(&provider).await;
    assert_eq!(result.unwrap(), anthropic_turn());
    assert_eq!(recorder.retries.len(), 1, "{:?}", recorder.retries);
    assert!(recorder.retries[0].1.contains("(stream_timeout)"));
}

/// Content that keeps coming, however slowly, is never cut off by the stream timeout: its
/// clock restarts with every content event, not once per request.
#[tokio::test]
async fn a_slow_stream_with_content_is_not_a_stall() {
    let mut body = "data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\n".repeat(300);
    body.push_str("data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    // The server pauses at least a millisecond after each 10-byte piece: the whole body takes
    // over a second, four times the timeout; the gap between two events about 5 ms.
    let server = FakeServer::start(vec![Reply::sse(&body, 10)]).await;
    assert!(body.len() / 10 > 1000);
    let (policy, _) = recording_policy(1);
    let provider = with_stream_timeout(openai(&server, policy), Duration::from_millis(250));
    let (result, recorder) = complete_recorded(&provider).await;
    assert_eq!(result.unwrap().text, "ab".repeat(300));
    assert!(recorder.retries.is_empty());
}

/// A server that never sends a newline cannot grow the worker: the line stops at the cap with
/// a clear error, which is not retried.
#[tokio::test]
async fn a_line_without_newline_fails_at_the_cap() {
    let piece = vec![b'x'; 1024 * 1024];
    let mut pieces = vec![b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec()];
    pieces.extend(std::iter::repeat_n(
        piece,
        MAX_STREAM_BYTES / (1024 * 1024) + 4,
    ));
    let server = FakeServer::start(vec![
        Reply::Stall { pieces },
        Reply::sse(OPENAI_TWO_CALLS, 64),
    ])
    .await;
    let (policy, delays) = recording_policy(5);
    let (result, _) = complete(&openai(&server, policy)).await;
    let error = result.unwrap_err();
    assert!(matches!(error, LlmError::TooLarge { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "openai sent an SSE line larger than the 16 MiB cap"
    );
    assert!(!error.is_retryable());
    assert_eq!(server.requests().len(), 1);
    assert!(delays.lock().unwrap().is_empty());
}

/// Arguments that keep growing in small deltas stop at the cap too.
#[tokio::test]
async fn tool_call_arguments_stop_at_the_cap() {
    let delta = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":\"{}\"}}}}]}}}}]}}\n\n",
        "a".repeat(512 * 1024)
    );
    let mut pieces = vec![b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":{\"name\":\"write\",\"arguments\":\"\"}}]}}]}\n\n".to_vec()];
    pieces.extend(std::iter::repeat_n(delta.into_bytes(), 2 * 16 + 4));
    let server = FakeServer::start(vec![Reply::Stall { pieces }]).await;
    let (policy, _) = recording_policy(5);
    let (result, _) = complete(&openai(&server, policy)).await;
    let error = result.unwrap_err();
    assert_eq!(
        error.to_string(),
        "openai sent a tool call's arguments larger than the 16 MiB cap"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn unauthorized_401_is_not_retried_and_names_the_key() {
    let server = FakeServer::start(vec![
        Reply::error(
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-test.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
            &[],
        ),
        Reply::sse(OPENAI_TWO_CALLS, 64),
    ])
    .await;
    let (policy, delays) = recording_policy(5);
    let (result, _) = complete(&openai(&server, policy)).await;
    let error = result.unwrap_err();
    assert!(matches!(error, LlmError::Auth { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "openai refused the credentials (HTTP 401): Incorrect API key provided: sk-test. \
         (check OPENAI_API_KEY)"
    );
    assert_eq!(server.requests().len(), 1);
    assert!(delays.lock().unwrap().is_empty());
}

#[tokio::test]
async fn context_overflow_400_is_detected_and_not_retried() {
    let server = FakeServer::start(vec![
        Reply::error(
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#,
            &[],
        ),
        Reply::sse(ANTHROPIC_TURN, 64),
    ])
    .await;
    let (policy, _) = recording_policy(5);
    let (result, _) = complete(&anthropic(&server, policy)).await;
    let error = result.unwrap_err();
    assert!(error.is_context_overflow(), "{error}");
    assert_eq!(server.requests().len(), 1);

    let server = FakeServer::start(vec![Reply::error(
        400,
        r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
        &[],
    )])
    .await;
    let (result, _) = complete(&openai(&server, RetryPolicy::default())).await;
    assert!(result.unwrap_err().is_context_overflow());
}

#[tokio::test]
async fn server_errors_give_up_after_five_attempts() {
    let failing = Reply::error(
        500,
        r#"{"error":{"message":"boom","type":"server_error"}}"#,
        &[],
    );
    let server = FakeServer::start(vec![failing; 5]).await;
    let (policy, delays) = recording_policy(5);
    let (result, _) = complete(&openai(&server, policy)).await;
    let error = result.unwrap_err();
    let LlmError::RetriesExhausted { attempts, last } = &error else {
        panic!("expected RetriesExhausted, got {error}");
    };
    assert_eq!(*attempts, 5);
    assert!(matches!(**last, LlmError::Server { .. }));
    assert_eq!(
        kugetsu_protocol::error_chain(&error),
        "gave up after 5 attempts: openai server error (HTTP 500): boom"
    );
    assert_eq!(server.requests().len(), 5);
    let delays = delays.lock().unwrap().clone();
    assert_eq!(delays.len(), 4);
    for (i, delay) in delays.iter().enumerate() {
        let full = Duration::from_secs(1 << i);
        assert!(
            *delay >= full / 2 && *delay <= full,
            "retry {i}: {delays:?}"
        );
    }
}

#[tokio::test]
async fn a_connection_dropped_before_any_response_byte_is_retried() {
    let server = FakeServer::start(vec![Reply::Hangup, Reply::sse(OPENAI_TWO_CALLS, 64)]).await;
    let (policy, delays) = recording_policy(5);
    let (result, _) = complete(&openai(&server, policy)).await;
    assert_eq!(result.unwrap().tool_calls.len(), 2);
    assert_eq!(server.requests().len(), 2);
    assert_eq!(delays.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_unreachable_server_is_a_transport_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (policy, _) = recording_policy(2);
    let provider = provider(
        "openai/gpt-test",
        &[
            ("OPENAI_API_KEY", "sk".into()),
            ("OPENAI_BASE_URL", format!("http://{addr}/v1")),
        ],
        policy,
    );
    let (result, _) = complete(&provider).await;
    let error = result.unwrap_err();
    let LlmError::RetriesExhausted { attempts: 2, last } = &error else {
        panic!("expected two attempts, got {error}");
    };
    assert!(matches!(**last, LlmError::Transport { .. }), "{last}");
    assert!(
        last.to_string()
            .contains(&format!("http://{addr}/v1/chat/completions"))
    );
}

#[tokio::test]
async fn a_json_error_with_status_200_is_typed() {
    let server = FakeServer::start(vec![Reply::Http {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        pieces: vec![
            br#"{"error":{"message":"model not found","type":"invalid_request_error"}}"#.to_vec(),
        ],
    }])
    .await;
    let (result, _) = complete(&openai(&server, RetryPolicy::default())).await;
    let error = result.unwrap_err();
    assert!(matches!(error, LlmError::BadRequest { .. }), "{error}");
}

#[tokio::test]
async fn a_stalled_stream_fails_after_the_stream_timeout() {
    let server = FakeServer::start(vec![Reply::Stall {
        pieces: vec![b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n".to_vec()],
    }])
    .await;
    let source = ErrorSource {
        provider: "openai",
        key_env: None,
    };
    let url = endpoint_url("X", &server.url("/v1"), "chat/completions").unwrap();
    let (policy, _) = recording_policy(1);
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        stream: Duration::from_millis(200),
    };
    let endpoint = Endpoint::new(source, url, HeaderMap::new(), policy, timeouts).unwrap();
    let mut seen = String::new();
    let mut on_text = |t: &str| seen.push_str(t);
    let result = tokio::time::timeout(
        DEADLINE,
        endpoint.stream(
            b"{}".to_vec(),
            crate::llm::http::Ask::for_body(b"{}", 100),
            || ChatStream::new(source),
            &mut on_text,
        ),
    )
    .await
    .unwrap();
    let error = result.unwrap_err();
    assert!(matches!(error, LlmError::Stalled { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "no content from openai for 0.2 s (stream_timeout)"
    );
    assert!(error.is_retryable());
    assert_eq!(seen, "hi");
}

/// A server that accepts the request and never answers is caught by the same timeout.
#[tokio::test]
async fn a_server_that_never_answers_is_a_stall() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (policy, _) = recording_policy(2);
    let provider = provider(
        "openai/gpt-test",
        &[
            ("OPENAI_API_KEY", "sk".into()),
            ("OPENAI_BASE_URL", format!("http://{addr}/v1")),
        ],
        policy,
    );
    let provider = with_stream_timeout(provider, Duration::from_millis(200));
    let (result, _) = complete(&provider).await;
    assert_eq!(
        kugetsu_protocol::error_chain(&result.unwrap_err()),
        "gave up after 2 attempts: no content from openai for 0.2 s (stream_timeout)"
    );
    drop(listener);
}

#[tokio::test]
async fn dropping_the_future_closes_the_connection() {
    let server = FakeServer::start(vec![Reply::Stall {
        pieces: vec![b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n".to_vec()],
    }])
    .await;
    let closed = server.watch_close();
    let provider = openai(&server, RetryPolicy::default());
    let messages = conversation();
    let request = LlmRequest {
        system: "",
        messages: &messages,
        tools: &[],
        max_tokens: 16,
    };
    let (text_tx, mut text_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut on_text = move |t: &str| {
        let _ = text_tx.send(t.to_owned());
    };
    let mut turn = Box::pin(provider.complete(&request, &mut on_text));
    tokio::select! {
        result = &mut turn => panic!("the stalled turn ended: {result:?}"),
        text = text_rx.recv() => assert_eq!(text.as_deref(), Some("hi")),
    }
    drop(turn);
    tokio::time::timeout(DEADLINE, closed)
        .await
        .expect("the server saw the connection close")
        .unwrap();
}

#[test]
fn providers_are_shareable_and_their_futures_send() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Provider>();
    let provider = Provider::from_model(
        &"scripted/demo".parse().unwrap(),
        &|_| None,
        Default::default(),
    )
    .unwrap();
    let request = LlmRequest {
        system: "",
        messages: &[],
        tools: &[],
        max_tokens: 1,
    };
    let mut on_text = |_: &str| {};
    let future = provider.complete(&request, &mut on_text);
    assert_send(&future);
}

#[test]
fn missing_keys_are_config_errors_naming_the_variable() {
    for (model, var) in [
        ("openai/gpt-x", "OPENAI_API_KEY"),
        ("anthropic/claude-x", "ANTHROPIC_API_KEY"),
        ("openrouter/meta/llama", "OPENROUTER_API_KEY"),
    ] {
        let error = Provider::from_model(&model.parse().unwrap(), &|_| None, Default::default())
            .unwrap_err();
        assert!(
            matches!(&error, LlmError::Config(m) if m.contains(var)),
            "{error}"
        );
    }
    assert!(
        Provider::from_model(
            &"ollama/qwen3".parse().unwrap(),
            &|_| None,
            Default::default()
        )
        .is_ok()
    );
}

//! Provider errors end to end: error statuses with the real bodies, retries with backoff and
//! `retry-after`, in-stream error events.

use std::time::Duration;

use kugetsu_tests::events::str_of;
use kugetsu_tests::{ApiError, FakeLlm, RunOutput, TestRepo, Turn, Wire};
use serde_json::json;

async fn run(repo: &TestRepo, server: &FakeLlm) -> RunOutput {
    repo.run()
        .llm(server)
        .prompt("Do the thing.")
        .output()
        .await
}

fn error_of(out: &RunOutput) -> String {
    out.finished()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("finished has no error\n{}", out.context()))
        .to_owned()
}

async fn unauthorized_fails_with_the_provider_message(wire: Wire, message: &str) {
    let repo = TestRepo::new();
    let server = FakeLlm::start(wire);
    server.push(ApiError::unauthorized());
    let out = run(&repo, &server).await;
    out.assert_code(1).assert_status("failed");
    let error = error_of(&out);
    assert!(
        error.contains(message),
        "the provider's message is in the error: {error}"
    );
    assert!(error.contains("401"), "the status is in the error: {error}");
    assert_eq!(server.request_count(), 1, "a 401 is not retried");
    // A failed task still tells where it ran.
    let id = out.task_id().to_owned();
    assert_eq!(out.finished()["branch"], format!("kugetsu/{id}"));
}

#[tokio::test]
async fn openai_401_fails_with_the_provider_message() {
    unauthorized_fails_with_the_provider_message(Wire::OpenAi, "Incorrect API key provided").await;
}

#[tokio::test]
async fn anthropic_401_fails_with_the_provider_message() {
    unauthorized_fails_with_the_provider_message(Wire::Anthropic, "invalid x-api-key").await;
}

async fn retried_then_completes(wire: Wire, error: ApiError) {
    let hint = error.retry_after_hint();
    let repo = TestRepo::new();
    let server = FakeLlm::start(wire);
    server.push(error);
    server.push(Turn::text("Made it on the second try."));
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    assert_eq!(out.finished()["result"], "Made it on the second try.");
    assert_eq!(server.request_count(), 2);
    // The retry is the same request.
    let requests = server.requests();
    assert_eq!(requests[0].json(), requests[1].json());
    if let Some(seconds) = hint {
        // The server's retry-after is honoured (KUGETSU_RETRY_BASE_MS only shrinks backoff).
        let waited = requests[1].received_at - requests[0].received_at;
        assert!(
            waited >= Duration::from_millis(seconds * 1000 - 100),
            "retried after {waited:?} despite retry-after: {seconds}"
        );
    }
}

#[tokio::test]
async fn openai_429_with_retry_after_is_retried() {
    retried_then_completes(Wire::OpenAi, ApiError::rate_limited().retry_after(1)).await;
}

#[tokio::test]
async fn anthropic_429_with_retry_after_is_retried() {
    retried_then_completes(Wire::Anthropic, ApiError::rate_limited().retry_after(1)).await;
}

#[tokio::test]
async fn anthropic_529_overloaded_is_retried() {
    retried_then_completes(Wire::Anthropic, ApiError::overloaded()).await;
}

#[tokio::test]
async fn openai_500_is_retried() {
    retried_then_completes(Wire::OpenAi, ApiError::server_error()).await;
}

/// An in-stream error after a complete tool call has been streamed: no tool has run yet (tools
/// run once the whole turn is in), so the turn is retried, with a `retry` event naming the
/// error; the calls run once, from the attempt that completed. When every attempt fails the
/// same way, the task fails saying how often it tried and why.
async fn mid_stream_error_after_a_tool_call_is_retried(wire: Wire, error: ApiError, message: &str) {
    let repo = TestRepo::new();
    let server = FakeLlm::start(wire);
    // Events before the cut: OpenAI role+text+first call+its args+second call's head;
    // Anthropic message_start, text block, ping, first tool block complete.
    let cut = match wire {
        Wire::OpenAi => 5,
        Wire::Anthropic => 9,
    };
    let turn = Turn::text("Working")
        .tool_call("write", json!({"path": "x.txt", "content": "x"}))
        .tool_call("write", json!({"path": "y.txt", "content": "y"}))
        .text_deltas_of(100)
        .arg_deltas_of(100);
    server.push(turn.clone().error_after(cut, error.clone()));
    server.push(turn.clone());
    server.push(Turn::text("Both written."));
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    let retries = out.events.of_type("retry");
    assert_eq!(retries.len(), 1, "{:?}", out.events);
    assert!(
        str_of(retries[0], "reason").contains(message),
        "the stream's error message is in the retry: {}",
        retries[0]
    );
    let starts = out.events.tool_starts();
    assert_eq!(starts.len(), 2, "each call ran once: {:?}", out.events);
    let worktree = repo.worktree(out.task_id());
    assert_eq!(
        std::fs::read_to_string(worktree.join("x.txt")).unwrap(),
        "x"
    );
    assert_eq!(
        std::fs::read_to_string(worktree.join("y.txt")).unwrap(),
        "y"
    );
    assert_eq!(server.request_count(), 3);

    let repo = TestRepo::new();
    let server = FakeLlm::start(wire);
    for _ in 0..5 {
        server.push(turn.clone().error_after(cut, error.clone()));
    }
    let out = run(&repo, &server).await;
    out.assert_code(1).assert_status("failed");
    let failure = error_of(&out);
    assert!(
        failure.contains("gave up after 5 attempts: ") && failure.contains(message),
        "{failure}"
    );
    assert!(out.events.tool_starts().is_empty(), "{:?}", out.events);
    assert_eq!(out.events.of_type("retry").len(), 4);
    assert_eq!(server.request_count(), 5);
}

#[tokio::test]
async fn openai_mid_stream_error_event_is_retried_then_fails_clearly() {
    mid_stream_error_after_a_tool_call_is_retried(
        Wire::OpenAi,
        ApiError::server_error().message("upstream inference node crashed (fake 7731)"),
        "upstream inference node crashed (fake 7731)",
    )
    .await;
}

#[tokio::test]
async fn anthropic_mid_stream_overloaded_event_is_retried_then_fails_clearly() {
    mid_stream_error_after_a_tool_call_is_retried(
        Wire::Anthropic,
        ApiError::overloaded().message("Overloaded (fake 7732)"),
        "Overloaded (fake 7732)",
    )
    .await;
}

#[tokio::test]
async fn anthropic_mid_stream_invalid_request_fails_without_retry() {
    let repo = TestRepo::new();
    let server = FakeLlm::anthropic();
    server.push(Turn::text("Partial answer that never ends").error_after(
        4,
        ApiError::invalid_request("messages: text content blocks must be non-empty (fake 7733)"),
    ));
    let out = run(&repo, &server).await;
    out.assert_code(1).assert_status("failed");
    let error = error_of(&out);
    assert!(error.contains("fake 7733"), "{error}");
    assert_eq!(server.request_count(), 1);
    // The text that did arrive was shown as it streamed.
    assert!(!out.events.streamed_text().is_empty());
    assert!(
        out.events
            .of_type("text_delta")
            .iter()
            .all(|e| !str_of(e, "text").is_empty())
    );
}

/// A provider-reported context overflow is answered by pruning the conversation and asking
/// again, even when the shadow's own estimate thought it fit (a llama.cpp server
/// started with a small `-c`, say); the pruned conversation still pairs every tool result
/// with its call (the server checks it).
async fn context_overflow_is_pruned_and_retried(wire: Wire) {
    let repo = TestRepo::new();
    let server = FakeLlm::start(wire);
    server
        .push(Turn::text("Listing numbers.").tool_call("bash", json!({"command": "seq 1 30000"})));
    server.push(Turn::text("And more.").tool_call("bash", json!({"command": "seq 30000 60000"})));
    server.push(ApiError::context_length_exceeded());
    server.push(Turn::text("Summarised the numbers."));
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    assert_eq!(out.finished()["result"], "Summarised the numbers.");
    assert_eq!(server.request_count(), 4);
    let (rejected, retried) = (server.request(3), server.request(4));
    assert!(
        retried.body.len() < rejected.body.len(),
        "the retry is smaller: {} >= {} bytes",
        retried.body.len(),
        rejected.body.len()
    );
    assert!(
        retried
            .user_texts()
            .iter()
            .any(|t| t.contains("Do the thing.")),
        "the task itself survives pruning: {:?}",
        retried.messages()
    );
}

#[tokio::test]
async fn openai_context_overflow_is_pruned_and_retried() {
    context_overflow_is_pruned_and_retried(Wire::OpenAi).await;
}

#[tokio::test]
async fn anthropic_context_overflow_is_pruned_and_retried() {
    context_overflow_is_pruned_and_retried(Wire::Anthropic).await;
}

//! Stream parsing end to end: bodies split anywhere (inside UTF-8 characters and SSE lines),
//! argument deltas without ids, several tool calls per turn, usage accounting, the ways real
//! servers stray from the reference APIs, and hostile ones: streams cut short, stalls behind
//! keep-alives, a line without end.

use std::time::Duration;

use kugetsu_tests::events::str_of;
use kugetsu_tests::events::tokens;
use kugetsu_tests::{FakeLlm, Reply, RunOutput, TestRepo, Turn, Wire};
use serde_json::{Value, json};

const UTF8_TEXT: &str = "héllo ✓ 日本 — ünïcödé 🦀 done";

async fn run(repo: &TestRepo, server: &FakeLlm) -> RunOutput {
    repo.run()
        .llm(server)
        .prompt("Do the thing.")
        .output()
        .await
}

/// Multi-byte text split into `bytes`-byte writes arrives whole and in order.
async fn utf8_text_in_tiny_writes(wire: Wire, bytes: usize) {
    let repo = TestRepo::new();
    let server = FakeLlm::start(wire);
    server.push(Turn::text(UTF8_TEXT).text_deltas_of(3).split_writes(bytes));
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    let finished = out.finished();
    assert_eq!(finished["result"], UTF8_TEXT);
    assert_eq!(out.events.streamed_text(), UTF8_TEXT);
    assert_eq!(
        str_of(out.events.first("assistant_message"), "text"),
        UTF8_TEXT
    );
    server.assert_all_served();
}

#[tokio::test]
async fn openai_utf8_text_in_one_byte_writes() {
    utf8_text_in_tiny_writes(Wire::OpenAi, 1).await;
}

#[tokio::test]
async fn anthropic_utf8_text_in_one_byte_writes() {
    utf8_text_in_tiny_writes(Wire::Anthropic, 1).await;
}

#[tokio::test]
async fn openai_utf8_text_in_three_byte_writes() {
    utf8_text_in_tiny_writes(Wire::OpenAi, 3).await;
}

/// Two tool calls in one turn, their arguments streamed in small pieces (OpenAI: only the
/// first delta of a call carries its id and name), the body in 3-byte writes.
async fn two_tool_calls_in_split_writes(wire: Wire) {
    let repo = TestRepo::new();
    let server = FakeLlm::start(wire);
    let a = "première ligne ✓\n";
    let b = "日本語のテキスト\nline two\n";
    server.push(
        Turn::text("Writing two files.")
            .tool_call("write", json!({"path": "a.txt", "content": a}))
            .tool_call("write", json!({"path": "dir/b.txt", "content": b}))
            .arg_deltas_of(5)
            .split_writes(3),
    );
    server.push(Turn::text("Both written.").split_writes(3));
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    let worktree = repo.worktree(out.task_id());
    assert_eq!(std::fs::read_to_string(worktree.join("a.txt")).unwrap(), a);
    assert_eq!(
        std::fs::read_to_string(worktree.join("dir/b.txt")).unwrap(),
        b
    );
    let starts = out.events.tool_starts();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0]["args"], json!({"path": "a.txt", "content": a}));
    assert_eq!(
        starts[1]["args"],
        json!({"path": "dir/b.txt", "content": b})
    );
    assert_ne!(starts[0]["call_id"], starts[1]["call_id"]);
    // Both results went back, each under its own call's id.
    let request = server.request(2);
    for start in &starts {
        request.tool_result(str_of(start, "call_id"));
    }
    assert_eq!(request.assistant_tool_calls().len(), 2);
    server.assert_all_served();
}

#[tokio::test]
async fn openai_two_tool_calls_with_id_less_argument_deltas_in_three_byte_writes() {
    two_tool_calls_in_split_writes(Wire::OpenAi).await;
}

#[tokio::test]
async fn anthropic_two_tool_uses_with_partial_json_in_three_byte_writes() {
    two_tool_calls_in_split_writes(Wire::Anthropic).await;
}

/// Provider-reported usage is reported per turn and summed in `finished`.
async fn usage_adds_up(wire: Wire) {
    let repo = TestRepo::new();
    let server = FakeLlm::start(wire);
    server.push(Turn::new().tool_call("ls", json!({})).usage(1200, 34));
    server.push(Turn::text("Looked.").usage(1500, 21));
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    let ends = out.events.of_type("turn_end");
    assert_eq!(ends.len(), 2);
    assert_eq!(
        tokens(&ends[0]["usage"]),
        json!({"input_tokens": 1200, "output_tokens": 34})
    );
    assert_eq!(
        tokens(&ends[1]["usage"]),
        json!({"input_tokens": 1500, "output_tokens": 21})
    );
    let total = &out.finished()["usage"];
    assert_eq!(
        tokens(total),
        json!({"input_tokens": 2700, "output_tokens": 55})
    );
    // The fake's models are well-known ones: each turn is priced and the costs add up.
    let cost = |usage: &Value| usage["cost_usd"].as_f64().unwrap_or(-1.0);
    assert!(cost(&ends[0]["usage"]) > 0.0, "{}", ends[0]);
    let sum = cost(&ends[0]["usage"]) + cost(&ends[1]["usage"]);
    assert!((cost(total) - sum).abs() < 1e-12, "{total} vs {sum}");
}

#[tokio::test]
async fn openai_usage_chunks_add_up() {
    usage_adds_up(Wire::OpenAi).await;
}

#[tokio::test]
async fn anthropic_usage_adds_up() {
    usage_adds_up(Wire::Anthropic).await;
}

/// A finish reason without `[DONE]` is a whole answer: a stream is cut short only when it has
/// neither (see `truncated_stream_is_retried_then_completes`). The fake's `without_done` still
/// sends each turn's `finish_reason`.
#[tokio::test]
async fn openai_stream_with_finish_reason_but_without_done_completes() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(
        Turn::new()
            .tool_call("read", json!({"path": "hello.txt"}))
            .without_done(),
    );
    server.push(Turn::text("No [DONE] needed.").without_done());
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    assert_eq!(out.finished()["result"], "No [DONE] needed.");
    assert_eq!(out.events.tool_ends()[0]["ok"], true);
    assert!(
        str_of(out.events.tool_ends()[0], "output").contains("hello world"),
        "{:?}",
        out.events
    );
    assert!(out.events.of_type("retry").is_empty(), "{:?}", out.events);
    assert_eq!(server.request_count(), 2);
}

/// The same on Anthropic's wire: a `stop_reason` without `message_stop` is complete.
#[tokio::test]
async fn anthropic_stream_with_stop_reason_but_without_message_stop_completes() {
    let repo = TestRepo::new();
    let server = FakeLlm::anthropic();
    server.push(
        Turn::new()
            .tool_call("read", json!({"path": "hello.txt"}))
            .without_done(),
    );
    server.push(Turn::text("No message_stop needed.").without_done());
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    assert_eq!(out.finished()["result"], "No message_stop needed.");
    assert!(out.events.of_type("retry").is_empty(), "{:?}", out.events);
    assert_eq!(server.request_count(), 2);
}

/// A 200 stream that simply stops (no finish reason, no end marker) in the middle of a tool
/// call's arguments is an interruption: retried with a `retry` event, the cut call never runs,
/// and the turn's second call is not lost.
async fn truncated_stream_is_retried_then_completes(wire: Wire) {
    let repo = TestRepo::new();
    let server = FakeLlm::start(wire);
    let a = "première ligne ✓\n";
    let b = "日本語のテキスト\nline two\n";
    let turn = Turn::text("Writing two files.")
        .tool_call("write", json!({"path": "a.txt", "content": a}))
        .tool_call("write", json!({"path": "dir/b.txt", "content": b}))
        .arg_deltas_of(5);
    // Past the text and a few argument deltas of the first call: well inside it.
    let text_events = match wire {
        Wire::OpenAi => 1 + 3 + 1, // role, three text deltas, the call's first delta
        Wire::Anthropic => 3 + 3 + 2, // start, block, ping, three deltas, stop, tool block
    };
    let cut = text_events + 3;
    assert!(
        cut + 12 < turn.event_count(wire),
        "the cut is inside the first call"
    );
    server.push(turn.clone().end_after(cut));
    server.push(turn);
    server.push(Turn::text("Both written."));
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");

    let worktree = repo.worktree(out.task_id());
    assert_eq!(std::fs::read_to_string(worktree.join("a.txt")).unwrap(), a);
    assert_eq!(
        std::fs::read_to_string(worktree.join("dir/b.txt")).unwrap(),
        b
    );
    // Only the whole calls of the retried attempt ran.
    let starts = out.events.tool_starts();
    assert_eq!(starts.len(), 2, "{:?}", out.events);
    assert_eq!(starts[0]["args"], json!({"path": "a.txt", "content": a}));
    let retries = out.events.of_type("retry");
    assert_eq!(retries.len(), 1, "{:?}", out.events);
    assert_eq!(retries[0]["attempt"], 2);
    let missing = match wire {
        Wire::OpenAi => "no finish_reason and no [DONE]",
        Wire::Anthropic => "no stop_reason and no message_stop",
    };
    assert!(
        str_of(retries[0], "reason").contains(&format!("response stream ended early ({missing})")),
        "{}",
        retries[0]
    );
    // The retry sits inside turn 1, after the first attempt's text and before its message.
    let types = out
        .events
        .types_among(&["turn_start", "text_delta", "retry", "assistant_message"]);
    let retry_at = types.iter().position(|t| *t == "retry").unwrap();
    assert_eq!(types[0], "turn_start");
    assert_eq!(types[1], "text_delta");
    assert!(
        !types[..retry_at].contains(&"assistant_message"),
        "{types:?}"
    );
    // Dropping the deltas before the retry leaves exactly what the model said.
    assert_eq!(
        out.events.streamed_text(),
        "Writing two files.Both written."
    );
    assert_eq!(
        out.events.all_streamed_text(),
        "Writing two files.Writing two files.Both written."
    );
    assert_eq!(
        str_of(out.events.first("assistant_message"), "text"),
        "Writing two files."
    );
    assert_eq!(server.request_count(), 3);
    server.assert_all_served();
}

#[tokio::test]
async fn openai_truncated_stream_is_retried_then_completes() {
    truncated_stream_is_retried_then_completes(Wire::OpenAi).await;
}

#[tokio::test]
async fn anthropic_truncated_stream_is_retried_then_completes() {
    truncated_stream_is_retried_then_completes(Wire::Anthropic).await;
}

/// A connection that breaks while a tool call streams (no tool has run: tools run once the
/// whole turn is in) is retried, and nothing of the broken call leaks.
#[tokio::test]
async fn a_connection_dropped_mid_tool_call_is_retried() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    let partial = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_cut\",\"type\":\"function\",\"function\":{\"name\":\"write\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"path\\\": \\\"he\"}}]},\"finish_reason\":null}]}\n\n",
    );
    // A chunked body whose last chunk never comes: the connection just closes.
    let raw = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{partial}\r\n",
        partial.len()
    );
    server.push(Reply::raw(raw));
    server.push(Turn::new().tool_call("write", json!({"path": "hello.txt", "content": "whole\n"})));
    server.push(Turn::text("Written."));
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    let starts = out.events.tool_starts();
    assert_eq!(starts.len(), 1, "{:?}", out.events);
    assert_ne!(starts[0]["call_id"], "call_cut");
    assert_eq!(
        std::fs::read_to_string(repo.worktree(out.task_id()).join("hello.txt")).unwrap(),
        "whole\n"
    );
    let retries = out.events.of_type("retry");
    assert_eq!(retries.len(), 1, "{:?}", out.events);
    assert!(
        str_of(retries[0], "reason").contains("stream broke off"),
        "{}",
        retries[0]
    );
}

/// A server that sends nothing at all, then one that sends only keep-alives (comments on
/// OpenAI, pings on Anthropic): each is abandoned after `stream_timeout` and retried.
async fn stalls_are_caught_by_the_stream_timeout(wire: Wire) {
    let repo = TestRepo::new();
    let server = FakeLlm::start(wire);
    server.push(Reply::Stall);
    server.push(Turn::text("Thinking hard").keep_alive_after(4, Duration::from_millis(50)));
    server.push(Turn::text("Done thinking."));
    let out = repo
        .run()
        .llm(&server)
        .env("KUGETSU_STREAM_TIMEOUT", "1s")
        .prompt("Do the thing.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    assert_eq!(out.finished()["result"], "Done thinking.");
    let retries = out.events.of_type("retry");
    assert_eq!(retries.len(), 2, "{:?}", out.events);
    for (i, retry) in retries.iter().enumerate() {
        assert_eq!(retry["attempt"], i as u64 + 2);
        assert_eq!(
            str_of(retry, "reason"),
            format!(
                "no content from {} for 1 s (stream_timeout)",
                wire.provider()
            )
        );
    }
    assert_eq!(out.events.streamed_text(), "Done thinking.");
    assert_eq!(server.request_count(), 3);
    server.assert_all_served();
}

#[tokio::test]
async fn openai_stalls_are_caught_by_the_stream_timeout() {
    stalls_are_caught_by_the_stream_timeout(Wire::OpenAi).await;
}

#[tokio::test]
async fn anthropic_stalls_are_caught_by_the_stream_timeout() {
    stalls_are_caught_by_the_stream_timeout(Wire::Anthropic).await;
}

/// An absurd `stream_timeout` is refused before anything runs.
#[tokio::test]
async fn a_zero_stream_timeout_is_a_usage_error() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    let out = repo
        .run()
        .llm(&server)
        .env("KUGETSU_STREAM_TIMEOUT", "0s")
        .prompt("Do the thing.")
        .output()
        .await;
    out.assert_code(2);
    assert!(
        out.stderr.contains("KUGETSU_STREAM_TIMEOUT=\"0s\"") && out.stderr.contains("too short"),
        "{}",
        out.stderr
    );
    assert_eq!(server.request_count(), 0);
}

/// Peak resident memory (`VmHWM`) of a live process, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A server that sends one SSE line without end: the worker stops at the 16 MiB cap with a
/// clear error, does not retry, and its memory stays far from the hundreds of MiB an unbounded
/// buffer reaches.
#[tokio::test]
async fn an_endless_sse_line_fails_at_the_cap_and_the_worker_stays_small() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Reply::EndlessLine {
        prefix: b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"".to_vec(),
        pause: Duration::from_millis(2),
    });
    let mut live = repo
        .run()
        .llm(&server)
        .prompt("Do the thing.")
        .spawn()
        .await;
    let started = live.wait_for("started", Duration::from_secs(30)).await;
    let pid = u32::try_from(started["pid"].as_u64().unwrap()).unwrap();
    // The high-water mark only grows: the last reading before the worker exits is its peak
    // so far, and an unbounded buffer would pass any bound long before it could exit.
    let mut peak = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(50);
    while let Some(rss) = peak_rss(pid) {
        peak = peak.max(rss);
        assert!(
            peak < 160 << 20,
            "the worker reached {} MiB on one SSE line",
            peak >> 20
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never gave up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(peak > 0, "the worker was never measured");
    let out = live.finish().await;
    out.assert_code(1).assert_status("failed");
    let error = str_of(out.finished(), "error");
    assert!(
        error.contains("openai sent an SSE line larger than the 16 MiB cap"),
        "{error}"
    );
    assert!(out.events.of_type("retry").is_empty(), "{:?}", out.events);
    assert!(
        out.events.of_type("memory_limit").is_empty(),
        "{:?}",
        out.events
    );
    assert_eq!(out.finished()["restarts"], 0);
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn llama_cpp_quirks_are_tolerated() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(
        Turn::text("Reading.")
            .tool_call("read", json!({"path": "hello.txt"}))
            .llama_cpp()
            .split_writes(7),
    );
    server.push(Turn::text("It says hello world.").llama_cpp());
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    let call_id = str_of(out.events.tool_starts()[0], "call_id");
    assert_eq!(call_id.len(), 32, "llama.cpp's random id is kept as is");
    assert_eq!(out.events.tool_end(call_id)["ok"], true);
    // The result goes back under llama.cpp's id (the server checks it is the one it sent).
    server.request(2).tool_result(call_id);
    assert_eq!(out.finished()["result"], "It says hello world.");
}

#[tokio::test]
async fn anthropic_without_ping_and_tool_use_without_input() {
    let repo = TestRepo::new();
    let server = FakeLlm::anthropic();
    server.push(
        Turn::new()
            .tool_call("read", json!({"path": "hello.txt"}))
            .no_ping()
            .tool_use_without_input(),
    );
    server.push(Turn::text("Read it.").no_ping());
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    let start = out.events.tool_starts()[0];
    assert_eq!(start["args"], json!({"path": "hello.txt"}));
    assert_eq!(out.events.tool_end(str_of(start, "call_id"))["ok"], true);
}

#[tokio::test]
async fn anthropic_tool_call_with_empty_arguments() {
    // A tool use whose input streams as nothing at all: `{}` is meant.
    let repo = TestRepo::new();
    let server = FakeLlm::anthropic();
    server.push(Turn::new().tool_call_raw("ls", ""));
    server.push(Turn::text("Listed."));
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    let end = out.events.tool_ends()[0];
    assert_eq!(end["ok"], true, "{end}");
    assert!(str_of(end, "output").contains("hello.txt"));
}

/// A tool call whose arguments would not fit one 4 MiB channel line still runs on its whole
/// arguments, and its `tool_start` arrives shortened with a marker rather than not at all.
#[tokio::test]
async fn a_tool_start_too_big_for_a_line_arrives_truncated() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    let content = "ünïcödé line\n".repeat(400_000); // about 6 MiB
    server.push(
        Turn::new()
            .tool_call("write", json!({"path": "big.txt", "content": content}))
            .arg_deltas_of(1 << 20),
    );
    server.push(Turn::text("Wrote it."));
    let out = run(&repo, &server).await;
    out.assert_code(0).assert_status("completed");
    let written = std::fs::read_to_string(repo.worktree(out.task_id()).join("big.txt")).unwrap();
    assert!(written == content, "the tool got the whole content");
    let starts = out.events.tool_starts();
    assert_eq!(starts.len(), 1, "the tool_start is not dropped");
    let args = &starts[0]["args"];
    assert_eq!(args["path"], "big.txt");
    let shown = str_of(args, "content");
    assert!(shown.len() < 1 << 20, "{}", shown.len());
    assert!(content.starts_with(&shown[..1000]));
    assert!(
        shown.ends_with(&format!(
            "… [truncated by kugetsu: {} bytes]",
            content.len()
        )),
        "{}",
        &shown[shown.len() - 80..]
    );
    let end = out.events.tool_end(str_of(starts[0], "call_id"));
    assert_eq!(end["ok"], true, "{end}");
}

//! Stream parsing end to end: bodies split anywhere (inside UTF-8 characters and SSE lines),
//! argument deltas without ids, several tool calls per turn, usage accounting, and the ways
//! real servers stray from the reference APIs.

use kugetsu_tests::events::str_of;
use kugetsu_tests::events::tokens;
use kugetsu_tests::{FakeLlm, RunOutput, TestRepo, Turn, Wire};
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

#[tokio::test]
async fn openai_stream_without_done_completes() {
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

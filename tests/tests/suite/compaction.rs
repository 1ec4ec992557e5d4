//! Context compaction against the fake LLM, on both wires: past 70% of a
//! small window a summary of the older turns is requested in the background (no tools, its
//! own system prompt, the compaction model when one is set) and applied at the next turn
//! boundary: the next request starts with the prompt, the summary and the files touched, then
//! the recent turns verbatim; it is journaled, so a restarted worker keeps it. A failed
//! summary falls back to pruning and the task still completes.

use std::time::Duration;

use kugetsu_tests::events::str_of;
use kugetsu_tests::fake_llm::{ANTHROPIC_KEY, ANTHROPIC_MODEL, OPENAI_KEY, OPENAI_MODEL};
use kugetsu_tests::journal::{self, Record};
use kugetsu_tests::{
    ApiError, FakeLlm, Kugetsu, RecordedRequest, Reply, RunOutput, TestRepo, Turn, Wire,
};
use kugetsu_worker::context::SUMMARY_SYSTEM;
use serde_json::{Value, json};

/// The window every test here runs with: a few kilobytes of conversation fill it.
const WINDOW: &str = "3000";
const PROMPT: &str = "Write the notes, count to 2500, then check twice.";
const SUMMARY: &str = "SUMMARY-7731: wrote notes.txt, read hello.txt, counted to 2500.";
const ANSWER: &str = "Done: the notes are written.";

/// A server that reports realistic usage (so the worker's estimate follows the bytes).
fn server(wire: Wire, summary_model: Option<&str>) -> FakeLlm {
    let (model, key) = match wire {
        Wire::OpenAi => (OPENAI_MODEL, OPENAI_KEY),
        Wire::Anthropic => (ANTHROPIC_MODEL, ANTHROPIC_KEY),
    };
    let mut builder = FakeLlm::builder(wire)
        .model(model)
        .api_key(key)
        .usage_from_body();
    if let Some(summary_model) = summary_model {
        builder = builder.summary_model(summary_model);
    }
    builder.start()
}

/// Turn 1 writes a file, reads one and prints ~11 KB (over 90% of the window on its own);
/// turns 2 and 3 are small; turn 4 answers. Compaction starts before request 3 (the first
/// boundary with an older turn to summarise) and, the context being past 90%, is waited for
/// and applied before request 4.
fn script_turns(server: &FakeLlm, last: Reply) {
    server.push(
        Turn::text("Writing the notes, then counting.")
            .tool_call(
                "write",
                json!({"path": "notes.txt", "content": "the answer is 42\n"}),
            )
            .tool_call("read", json!({"path": "hello.txt"}))
            .tool_call("bash", json!({"command": "seq 1 2500"})),
    );
    server.push(Turn::text("Checking.").tool_call("bash", json!({"command": "echo small-two"})));
    server.push(
        Turn::text("Checking again.").tool_call("bash", json!({"command": "echo small-three"})),
    );
    server.push(last);
}

fn run(repo: &TestRepo, server: &FakeLlm) -> Kugetsu {
    repo.run()
        .llm(server)
        .env("KUGETSU_CONTEXT_WINDOW", WINDOW)
        .prompt(PROMPT)
}

/// The conversation of `request` from the assistant message that made call `call_id` on.
fn from_call(request: &RecordedRequest, call_id: &str) -> Vec<Value> {
    let conversation = request.conversation();
    let at = conversation
        .iter()
        .position(|m| m.to_string().contains(call_id))
        .unwrap_or_else(|| panic!("request #{} never mentions {call_id}", request.number));
    conversation[at..].to_vec()
}

/// Every text of `request`'s conversation (messages, tool results) joined.
fn text_of(request: &RecordedRequest) -> String {
    request
        .transcript()
        .into_iter()
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks a successful compaction: its event, its request, the next turn request, the
/// journal.
fn assert_compacted(out: &RunOutput, server: &FakeLlm, repo: &TestRepo, summary_model: &str) {
    let compactions = out.events.of_type("compaction");
    let applied = compactions
        .iter()
        .find(|e| e["ok"] == true)
        .unwrap_or_else(|| panic!("no successful compaction: {:?}", out.events));
    let (before, after) = (
        applied["tokens_before"].as_u64().unwrap(),
        applied["tokens_after"].as_u64().unwrap(),
    );
    assert!(after < before, "compaction shrank nothing: {applied}");

    // The summary request: no tools, the summary system prompt, the compaction model, and
    // the older turns to summarise.
    let summaries = server.summary_requests();
    assert_eq!(summaries.len(), 1, "one summary request");
    let summary = &summaries[0];
    assert!(summary.tool_names().is_empty());
    assert!(
        summary.json().get("tools").is_none(),
        "a summary request sends no tools key"
    );
    assert_eq!(summary.system_text(), SUMMARY_SYSTEM);
    assert_eq!(summary.model(), Some(summary_model));
    let transcript = summary.first_user_text();
    assert!(
        transcript.contains(PROMPT) && transcript.contains("notes.txt"),
        "the summary request carries the older turns: {transcript:.400}"
    );

    // The first turn request after the compaction event: prompt, summary, files, then the
    // recent turns exactly as the request before it had them.
    let turns = server.turn_requests();
    assert_eq!(turns.len(), 4, "four turns");
    let (third, fourth) = (&turns[2], &turns[3]);
    let first = fourth.first_user_text();
    for needle in [
        PROMPT,
        SUMMARY,
        "Files read so far: hello.txt",
        "Files modified so far: notes.txt",
    ] {
        assert!(
            first.contains(needle),
            "the compacted first message lacks {needle:?}: {first}"
        );
    }
    let second_call = out.events.tool_end_of("bash", 1);
    let kept = from_call(third, str_of(second_call, "call_id"));
    let conversation = fourth.conversation();
    assert_eq!(
        conversation[1..=kept.len()],
        kept[..],
        "the recent turns are kept verbatim"
    );
    assert!(
        text_of(third).contains("2499\n2500") && !text_of(fourth).contains("2499\n2500"),
        "the old tool output is gone"
    );
    assert!(
        fourth.body.len() * 3 < third.body.len(),
        "{} bytes after, {} before",
        fourth.body.len(),
        third.body.len()
    );

    // The journal holds the compacted conversation.
    let records = journal::read_clean(&repo.task_dir(out.task_id()).join("journal.jsonl"));
    let compaction = records
        .iter()
        .find_map(|r| match r {
            Record::Compaction {
                messages,
                tokens_before,
                tokens_after,
            } => Some((messages, *tokens_before, *tokens_after)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no compaction record\n{}", journal::describe(&records)));
    assert_eq!((compaction.1, compaction.2), (before, after));
    let first_message = serde_json::to_string(&compaction.0[0]).unwrap();
    assert!(first_message.contains(SUMMARY), "{first_message}");
}

async fn a_summary_replaces_the_older_turns(wire: Wire) {
    let repo = TestRepo::new();
    let server = server(wire, None);
    script_turns(&server, Turn::text(ANSWER).into());
    server.push_summary(Turn::text(SUMMARY));
    let out = run(&repo, &server).output().await;
    out.assert_code(0).assert_status("completed");
    assert_eq!(out.finished()["result"], ANSWER);
    let model = server.model().unwrap().to_owned();
    assert_compacted(&out, &server, &repo, &model);
    server.assert_all_served();
}

#[tokio::test]
async fn openai_compaction_summarises_older_turns() {
    a_summary_replaces_the_older_turns(Wire::OpenAi).await;
}

#[tokio::test]
async fn anthropic_compaction_summarises_older_turns() {
    a_summary_replaces_the_older_turns(Wire::Anthropic).await;
}

#[tokio::test]
async fn the_compaction_model_writes_the_summary() {
    let repo = TestRepo::new();
    let server = server(Wire::OpenAi, Some("cheap-model"));
    script_turns(&server, Turn::text(ANSWER).into());
    server.push_summary(Turn::text(SUMMARY));
    let out = run(&repo, &server)
        .env("KUGETSU_COMPACTION_MODEL", "openai/cheap-model")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    assert_compacted(&out, &server, &repo, "cheap-model");
    assert!(
        server
            .turn_requests()
            .iter()
            .all(|r| r.model() == Some(OPENAI_MODEL)),
        "turns keep the task's model"
    );
}

/// How a summary fails.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// 500 on every attempt until the retries are spent.
    ServerErrors,
    /// A 400 with the provider's error body: not retried.
    ErrorBody,
    /// A summary that comes back empty.
    Empty,
}

async fn a_failed_summary_prunes_and_completes(wire: Wire, failure: Failure) {
    let repo = TestRepo::new();
    let server = server(wire, None);
    script_turns(&server, Turn::text(ANSWER).into());
    match failure {
        Failure::ServerErrors => {
            // The provider's retry budget is 5 requests in all.
            for _ in 0..5 {
                server.push_summary(ApiError::server_error());
            }
        }
        Failure::ErrorBody => {
            server.push_summary(ApiError::invalid_request("summary refused (fake 7740)"));
        }
        Failure::Empty => {
            server.push_summary(Turn::new());
        }
    }
    let out = run(&repo, &server).output().await;
    out.assert_code(0).assert_status("completed");
    assert_eq!(out.finished()["result"], ANSWER);
    server.assert_all_served();
    let compactions = out.events.of_type("compaction");
    assert!(
        !compactions.is_empty() && compactions.iter().all(|e| e["ok"] == false),
        "only failed compactions: {compactions:?}"
    );
    // Pruned instead: the next request is smaller, the big output replaced by a note, the
    // task's prompt and the latest turn intact.
    let turns = server.turn_requests();
    assert_eq!(turns.len(), 4);
    let (third, fourth) = (&turns[2], &turns[3]);
    assert!(
        fourth.body.len() < third.body.len(),
        "pruned: {} >= {} bytes",
        fourth.body.len(),
        third.body.len()
    );
    assert!(
        text_of(third).contains("2499\n2500") && !text_of(fourth).contains("2499\n2500"),
        "the old output is pruned"
    );
    assert!(text_of(fourth).contains("pruned"), "a note says so");
    assert_eq!(fourth.first_user_text(), PROMPT);
    let last_call = out.events.tool_end_of("bash", 2);
    assert!(fourth.body_text().contains(str_of(last_call, "call_id")));
    let log = std::fs::read_to_string(repo.task_dir(out.task_id()).join("worker.log")).unwrap();
    assert!(
        log.contains("compaction failed"),
        "worker.log says why:\n{log}"
    );
}

#[tokio::test]
async fn openai_summary_500s_fall_back_to_pruning() {
    a_failed_summary_prunes_and_completes(Wire::OpenAi, Failure::ServerErrors).await;
}

#[tokio::test]
async fn anthropic_summary_error_body_falls_back_to_pruning() {
    a_failed_summary_prunes_and_completes(Wire::Anthropic, Failure::ErrorBody).await;
}

#[tokio::test]
async fn openai_empty_summary_falls_back_to_pruning() {
    a_failed_summary_prunes_and_completes(Wire::OpenAi, Failure::Empty).await;
}

/// A worker killed after a compaction resumes with the compacted conversation: the journal,
/// not the model, remembers it.
async fn a_compaction_survives_a_worker_kill(wire: Wire) {
    let repo = TestRepo::new();
    let server = server(wire, None);
    // Request 4 (the first compacted one) never gets an answer: the worker dies waiting.
    script_turns(&server, Reply::Stall);
    server.push(Turn::text(ANSWER));
    server.push_summary(Turn::text(SUMMARY));
    let mut live = run(&repo, &server).spawn().await;
    let started = live.wait_for("started", Duration::from_secs(30)).await;
    let compaction = live.wait_for("compaction", Duration::from_secs(30)).await;
    assert_eq!(compaction["ok"], true, "{compaction}");
    server
        .wait_for_turn_requests(4, Duration::from_secs(30))
        .await;
    let pid = i32::try_from(started["pid"].as_u64().unwrap()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = live.finish().await;
    out.assert_code(0).assert_status("completed");
    assert_eq!(out.finished()["restarts"], 1);
    assert_eq!(out.finished()["result"], ANSWER);
    let turns = server.turn_requests();
    assert_eq!(turns.len(), 5, "the stalled request is asked again");
    let (stalled, resumed) = (&turns[3], &turns[4]);
    assert!(resumed.first_user_text().contains(SUMMARY));
    assert_eq!(
        resumed.conversation(),
        stalled.conversation(),
        "the resumed worker asks with the same compacted conversation"
    );
    assert_eq!(server.summary_requests().len(), 1, "no second summary");
}

#[tokio::test]
async fn openai_compaction_survives_a_worker_kill() {
    a_compaction_survives_a_worker_kill(Wire::OpenAi).await;
}

#[tokio::test]
async fn anthropic_compaction_survives_a_worker_kill() {
    a_compaction_survives_a_worker_kill(Wire::Anthropic).await;
}

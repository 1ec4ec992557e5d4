//! Steering at the worker level: `steer {text}` on the worker's stdin, at any
//! moment, is handed to the model at the next safe point (after the running tool's result,
//! before the next request) as a user message, journaled, with a `steered` event. A steer
//! that arrives while the model gives its final answer earns another turn; one sent before a
//! crash is delivered by the resumed worker when the supervisor sends it again, exactly once.

use std::time::{Duration, Instant};

use kugetsu_tests::events::{kind, str_of};
use kugetsu_tests::journal::{self, INTERRUPTED_RESULT, Record};
use kugetsu_tests::{FakeLlm, RecordedRequest, Reply, TestRepo, Turn, WorkerProcess, procs};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// Starts a worker on `repo` for `server` with `prompt`.
async fn start(repo: &TestRepo, server: &FakeLlm, prompt: &str, resume: bool) -> WorkerProcess {
    let mut worker = repo.worker().llm(server).spawn().await;
    assert_eq!(
        worker.hello()["protocol"],
        kugetsu_protocol::PROTOCOL_VERSION,
        "{}",
        worker.hello()
    );
    worker.start(repo.worker_task(prompt, server), resume).await;
    worker
}

/// The position of the first event satisfying `matches`; panics when there is none.
fn position(events: &[Value], what: &str, matches: impl Fn(&Value) -> bool) -> usize {
    events
        .iter()
        .position(matches)
        .unwrap_or_else(|| panic!("no {what} in {events:#?}"))
}

/// The last two messages of a request's conversation as (role, text).
fn last_two(request: &RecordedRequest) -> Vec<(String, String)> {
    let transcript = request.transcript();
    transcript[transcript.len().saturating_sub(2)..].to_vec()
}

fn steers(records: &[Record]) -> Vec<&str> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Steer { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn journal_of(repo: &TestRepo) -> Vec<Record> {
    journal::read_clean(&repo.worker_task_dir().join("journal.jsonl"))
}

#[tokio::test]
async fn a_steer_during_a_tool_is_delivered_after_its_result() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server
        .push(Turn::text("Sleeping first.").tool_call("bash", json!({"command": "sleep 1.0723"})));
    server.push(Turn::text("Noted the weather too. Done."));
    let mut worker = start(&repo, &server, "Sleep a second.", false).await;
    let tool = worker.wait_for("tool_start", WAIT).await;
    let call = str_of(&tool, "call_id").to_owned();
    procs::wait_until_running("1.0723", WAIT).await;
    worker.steer("Also mention the weather.").await;
    let out = worker.finish().await;
    assert_eq!(out.finished()["status"], "completed", "{out:#?}");
    assert_eq!(out.finished()["result"], "Noted the weather too. Done.");

    // Delivered after the tool's result, before the next turn's request.
    let events = &out.events;
    let end = position(events, "tool_end", |e| kind(e) == "tool_end");
    let steered = position(events, "steered", |e| kind(e) == "steered");
    let second = position(events, "turn_start 2", |e| {
        kind(e) == "turn_start" && e["turn"] == 2
    });
    assert!(end < steered && steered < second, "{:?}", out.types());
    assert_eq!(events[end]["ok"], true, "the tool was not disturbed");
    assert_eq!(events[steered]["text"], "Also mention the weather.");
    assert_eq!(out.of_type("steered").len(), 1);

    // The model sees it as a user message right after the tool result.
    assert_eq!(server.request_count(), 2);
    let request = server.request(2);
    assert_eq!(request.tool_result(&call).call_id, call);
    let tail = last_two(&request);
    assert_eq!(tail[0].0, "tool");
    assert_eq!(
        tail[1],
        ("user".to_owned(), "Also mention the weather.".to_owned())
    );

    // Journaled between the tool's result and the next assistant message.
    let records = journal_of(&repo);
    let kinds: Vec<&str> = records.iter().map(journal::kind).collect();
    let at = kinds.iter().position(|k| *k == "steer").unwrap();
    assert_eq!(steers(&records), ["Also mention the weather."]);
    assert!(kinds[..at].contains(&"tool_result"), "{kinds:?}");
    assert_eq!(
        kinds.iter().rposition(|k| *k == "assistant").unwrap(),
        at + 1,
        "{kinds:?}"
    );
}

#[tokio::test]
async fn a_steer_while_the_model_streams_is_not_dropped() {
    let repo = TestRepo::new();
    let server = FakeLlm::anthropic();
    server.push(
        Turn::text("Let me think about this at some length before acting.")
            .tool_call("bash", json!({"command": "echo acted"}))
            .text_deltas_of(4)
            .split_writes(48)
            .write_pause(Duration::from_millis(15)),
    );
    server.push(Turn::text("Acted, and used tabs as asked."));
    let mut worker = start(&repo, &server, "Act.", false).await;
    worker.wait_for("text_delta", WAIT).await;
    worker.steer("Use tabs, not spaces.").await;
    let sent = Instant::now();
    let out = worker.finish().await;
    assert_eq!(out.finished()["status"], "completed", "{out:#?}");
    assert!(
        server.answered_at(1).is_some_and(|done| done > sent),
        "the steer was sent while the response streamed"
    );
    let steered = out.of_type("steered");
    assert_eq!(steered.len(), 1, "{:?}", out.types());
    assert_eq!(steered[0]["text"], "Use tabs, not spaces.");
    let types = out.types();
    let end = types.iter().position(|t| *t == "tool_end").unwrap();
    let at = types.iter().position(|t| *t == "steered").unwrap();
    assert!(end < at, "not between the call and its result: {types:?}");
    assert_eq!(server.request_count(), 2);
    let tail = last_two(&server.request(2));
    assert_eq!(tail[0].0, "tool");
    assert_eq!(
        tail[1],
        ("user".to_owned(), "Use tabs, not spaces.".to_owned())
    );
    assert_eq!(steers(&journal_of(&repo)), ["Use tabs, not spaces."]);
}

#[tokio::test]
async fn a_steer_during_the_final_answer_asks_the_model_again() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(
        Turn::text("Here is my final answer, written out slowly for the test.")
            .text_deltas_of(4)
            .split_writes(48)
            .write_pause(Duration::from_millis(15)),
    );
    server.push(Turn::text("Updated answer, in French."));
    let mut worker = start(&repo, &server, "Answer.", false).await;
    worker.wait_for("text_delta", WAIT).await;
    worker.steer("Answer in French.").await;
    let sent = Instant::now();
    let out = worker.finish().await;
    assert_eq!(out.finished()["status"], "completed", "{out:#?}");
    assert!(
        server.answered_at(1).is_some_and(|done| done > sent),
        "the steer was sent before the final answer had arrived"
    );
    // The final answer did not end the task: the steer was delivered and the model asked
    // again.
    assert_eq!(out.finished()["result"], "Updated answer, in French.");
    assert_eq!(out.finished()["turns"], 2);
    let types = out.types();
    let first_answer = types
        .iter()
        .position(|t| *t == "assistant_message")
        .unwrap();
    let steered = types.iter().position(|t| *t == "steered").unwrap();
    let second = position(&out.events, "turn_start 2", |e| {
        kind(e) == "turn_start" && e["turn"] == 2
    });
    assert!(first_answer < steered && steered < second, "{types:?}");
    assert_eq!(server.request_count(), 2);
    let transcript = server.request(2).transcript();
    assert_eq!(
        transcript,
        [
            ("user".to_owned(), "Answer.".to_owned()),
            (
                "assistant".to_owned(),
                "Here is my final answer, written out slowly for the test.".to_owned()
            ),
            ("user".to_owned(), "Answer in French.".to_owned()),
        ]
    );
    let kinds: Vec<&str> = journal_of(&repo).iter().map(journal::kind).collect();
    assert_eq!(
        kinds,
        [
            "task",
            "assistant",
            "turn_end",
            "steer",
            "assistant",
            "turn_end"
        ]
    );
}

/// A steer sent while a tool runs, then the worker dies before the safe point: the journal
/// has no trace of it, so the supervisor sends it again to the resumed worker, which
/// delivers it once, after the interrupted call's result.
#[tokio::test]
async fn a_steer_undelivered_at_a_crash_is_delivered_after_resume() {
    let _cleanup = procs::KillOnDrop("300.7474");
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Turn::text("Waiting.").tool_call("bash", json!({"command": "sleep 300.7474"})));
    server.push(Turn::text("Skipped the wait, used the cache."));
    // Only asked for if the steer comes a turn late.
    server.push(Turn::text("Late: now using the cache."));
    let mut worker = start(&repo, &server, "Wait.", false).await;
    let tool = worker.wait_for("tool_start", WAIT).await;
    let call = str_of(&tool, "call_id").to_owned();
    procs::wait_until_running("300.7474", WAIT).await;
    worker.steer("Use the cache instead.").await;
    worker.kill().await;
    // The tool dies with its worker (PDEATHSIG).
    procs::wait_until_gone("300.7474", WAIT).await;
    let records = journal_of(&repo);
    assert!(
        steers(&records).is_empty(),
        "not delivered before the crash\n{}",
        journal::describe(&records)
    );

    // As the supervisor does: start (resume) and the undelivered steer, together.
    let mut worker = repo.worker().llm(&server).spawn().await;
    worker
        .start_with_steers(
            repo.worker_task("Wait.", &server),
            true,
            &["Use the cache instead."],
        )
        .await;
    let out = worker.finish().await;
    assert_eq!(out.finished()["status"], "completed", "{out:#?}");
    // Replays of journaled events are the supervisor's to filter; the news comes first.
    let events: Vec<&serde_json::Value> = out
        .events
        .iter()
        .filter(|e| e["type"] != "replay")
        .collect();
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types[..2],
        ["tool_end", "steered"],
        "the interrupted result, then the steer, before the first request: {types:?}"
    );
    assert_eq!(events[0]["call_id"], call.as_str());
    assert_eq!(events[0]["output"], INTERRUPTED_RESULT);
    assert_eq!(out.of_type("steered").len(), 1);
    assert_eq!(
        out.finished()["result"],
        "Skipped the wait, used the cache."
    );
    assert_eq!(server.request_count(), 2);
    let request = server.request(2);
    assert!(request.tool_result(&call).content.contains("interrupted"));
    assert_eq!(
        last_two(&request)[1],
        ("user".to_owned(), "Use the cache instead.".to_owned())
    );
    assert_eq!(steers(&journal_of(&repo)), ["Use the cache instead."]);
}

/// A steer delivered (journaled) before a crash is part of the conversation the resumed
/// worker rebuilds; it is not delivered a second time.
#[tokio::test]
async fn a_delivered_steer_survives_a_worker_kill() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Turn::text("Listing.").tool_call("bash", json!({"command": "sleep 0.5"})));
    // The request carrying the steer never gets an answer: the worker dies waiting.
    server.push(Reply::Stall);
    server.push(Turn::text("Listed, hidden files included."));
    let mut worker = start(&repo, &server, "List files.", false).await;
    worker.wait_for("tool_start", WAIT).await;
    worker.steer("Include hidden files.").await;
    worker.wait_for("steered", WAIT).await;
    server.wait_for_requests(2, WAIT).await;
    worker.kill().await;
    assert_eq!(steers(&journal_of(&repo)), ["Include hidden files."]);

    let worker = start(&repo, &server, "List files.", true).await;
    let out = worker.finish().await;
    assert_eq!(out.finished()["status"], "completed", "{out:#?}");
    assert!(out.of_type("steered").is_empty(), "{:?}", out.types());
    assert_eq!(server.request_count(), 3);
    let (stalled, resumed) = (server.request(2), server.request(3));
    assert_eq!(
        last_two(&resumed)[1],
        ("user".to_owned(), "Include hidden files.".to_owned())
    );
    assert_eq!(stalled.conversation(), resumed.conversation());
    assert_eq!(steers(&journal_of(&repo)), ["Include hidden files."]);
}

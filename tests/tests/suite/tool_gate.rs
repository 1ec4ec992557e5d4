//! The tool gate at the worker level (`tool_gate: true` in the spec, as a cluster node sends
//! it): every tool call, once its intent is journaled and its `tool_start` sent, waits for
//! `proceed {call_id}` before it runs. A `proceed` for another call changes nothing; `cancel`
//! while a call waits closes it without running it; a supervisor gone while a call waits
//! (stdin closed) leaves the call unanswered, and whoever resumes the task never runs it.
//! MCP tools wait like built-in ones.

use std::time::Duration;

use kugetsu_protocol::mcp::{McpServer, McpTransport};
use kugetsu_tests::events::{kind, str_of};
use kugetsu_tests::journal::{self, INTERRUPTED_RESULT, Record};
use kugetsu_tests::{FakeLlm, TestRepo, Turn, WorkerProcess};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);
/// Long enough for an ungated `touch` to have run many times over.
const NOT_YET: Duration = Duration::from_secs(1);
/// The file the model's bash call creates, in the worktree.
const MARKER: &str = "gated-marker";

/// A worker on `repo` whose model first calls bash to create [`MARKER`], then says "Done.";
/// started with the tools gated. Returns it once the call's `tool_start` arrived, with the
/// call's id.
async fn start_gated(repo: &TestRepo, server: &FakeLlm) -> (WorkerProcess, String) {
    server.push(
        Turn::text("Creating the marker.")
            .tool_call("bash", json!({"command": format!("touch {MARKER}")})),
    );
    server.push(Turn::text("Done."));
    let mut worker = repo.worker().llm(server).spawn().await;
    let mut task = repo.worker_task("Create the marker.", server);
    task.tool_gate = true;
    worker.start(task, false).await;
    let tool = worker.wait_for("tool_start", WAIT).await;
    (worker, str_of(&tool, "call_id").to_owned())
}

fn journal_of(repo: &TestRepo) -> Vec<Record> {
    journal::read_clean(&repo.worker_task_dir().join("journal.jsonl"))
}

/// Whether the journal holds the intent of `call` and a result for it.
fn intent_and_result(records: &[Record], call: &str) -> (bool, Option<(bool, String)>) {
    let intent = records
        .iter()
        .any(|r| matches!(r, Record::ToolIntent { call_id, .. } if call_id == call));
    let result = records.iter().find_map(|r| match r {
        Record::ToolResult {
            call_id,
            ok,
            output,
            ..
        } if call_id == call => Some((*ok, output.clone())),
        _ => None,
    });
    (intent, result)
}

#[tokio::test]
async fn a_gated_tool_runs_only_after_its_proceed() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    let (mut worker, call) = start_gated(&repo, &server).await;
    let marker = repo.repo().join(MARKER);

    tokio::time::sleep(NOT_YET).await;
    assert!(!marker.exists(), "the tool ran before its proceed");
    let (intent, result) = intent_and_result(&journal_of(&repo), &call);
    assert!(intent, "tool_start came before the intent was journaled");
    assert_eq!(result, None, "the call has a result before its proceed");

    // Another call's go-ahead lets nothing through; a steer waits for the next safe point.
    worker.proceed("call_not_waiting").await;
    worker.steer("Also say hello.").await;
    tokio::time::sleep(NOT_YET).await;
    assert!(!marker.exists(), "the tool ran on another call's proceed");

    worker.proceed(&call).await;
    let out = worker.finish().await;
    assert_eq!(out.finished()["status"], "completed", "{out:#?}");
    assert!(marker.exists(), "the tool did not run after its proceed");
    let ends = out.of_type("tool_end");
    assert_eq!(ends.len(), 1, "{out:#?}");
    assert_eq!(ends[0]["call_id"], call.as_str());
    assert_eq!(ends[0]["ok"], true, "{out:#?}");
    let types = out.types();
    let end = types.iter().position(|t| *t == "tool_end");
    let steered = types.iter().position(|t| *t == "steered");
    assert!(
        end.is_some() && steered > end,
        "the steer was not delivered after the call's result: {types:?}"
    );
    assert!(
        out.log
            .contains("ignoring proceed for call call_not_waiting"),
        "{}",
        out.log
    );
    let (_, result) = intent_and_result(&journal_of(&repo), &call);
    assert!(matches!(result, Some((true, _))), "{result:?}");
}

#[tokio::test]
async fn a_call_cancelled_while_it_waits_never_runs() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    let (mut worker, call) = start_gated(&repo, &server).await;
    worker
        .send(&kugetsu_protocol::SupervisorMessage::Cancel)
        .await;
    let out = worker.finish().await;
    assert_eq!(out.finished()["status"], "cancelled", "{out:#?}");
    let ends = out.of_type("tool_end");
    assert_eq!(ends.len(), 1, "{out:#?}");
    assert_eq!(ends[0]["call_id"], call.as_str());
    assert_eq!(ends[0]["ok"], false);
    assert!(
        str_of(ends[0], "output").contains("before this tool ran"),
        "{out:#?}"
    );
    assert!(!repo.repo().join(MARKER).exists(), "a cancelled call ran");
    let (_, result) = intent_and_result(&journal_of(&repo), &call);
    assert!(matches!(result, Some((false, _))), "{result:?}");
}

#[tokio::test]
async fn a_supervisor_gone_while_a_call_waits_leaves_it_unanswered_and_never_run() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    let (mut worker, call) = start_gated(&repo, &server).await;
    worker.close_stdin();
    let out = worker.finish().await;
    assert!(out.status.success(), "{out:#?}");
    assert!(
        !out.types().contains(&"finished"),
        "stopped as on cancel, not as on shutdown: {out:#?}"
    );
    assert!(
        !out.types().contains(&"tool_end"),
        "the waiting call was answered: {out:#?}"
    );
    let (intent, result) = intent_and_result(&journal_of(&repo), &call);
    assert!(intent);
    assert_eq!(result, None, "the waiting call got a result");

    // Whoever resumes the task answers the call as interrupted and never runs it.
    let mut worker = repo.worker().llm(&server).spawn().await;
    let mut task = repo.worker_task("Create the marker.", &server);
    task.tool_gate = true;
    worker.start(task, true).await;
    let out = worker.finish().await;
    assert_eq!(out.finished()["status"], "completed", "{out:#?}");
    assert!(
        !repo.repo().join(MARKER).exists(),
        "a resumed worker ran the call"
    );
    let end = out
        .events
        .iter()
        .find(|e| kind(e) == "tool_end" && e["call_id"] == call.as_str())
        .unwrap_or_else(|| panic!("the resumed worker did not close the call: {out:#?}"));
    assert_eq!(end["ok"], false);
    assert_eq!(str_of(end, "output"), INTERRUPTED_RESULT, "{out:#?}");
}

/// An MCP server with one tool, `mark`, that creates the file named by its first argument.
const MARK_SERVER: &str = r#"
import json, sys
def send(m):
    sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    m = json.loads(line)
    method, id_ = m.get("method"), m.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": id_, "result": {"protocolVersion": m["params"]["protocolVersion"],
              "capabilities": {"tools": {}}, "serverInfo": {"name": "marker", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": id_, "result": {"tools": [{"name": "mark",
              "description": "creates the marker", "inputSchema": {"type": "object", "properties": {}}}]}})
    elif method == "tools/call":
        open(sys.argv[1], "w").close()
        send({"jsonrpc": "2.0", "id": id_, "result": {"content": [{"type": "text", "text": "marked"}]}})
"#;

#[tokio::test]
async fn an_mcp_tool_waits_for_its_proceed_too() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    let script = repo.side_dir().join("mark_mcp.py");
    std::fs::write(&script, MARK_SERVER).unwrap();
    let marker = repo.side_dir().join("mcp-marker");
    server.push(Turn::text("Marking.").tool_call("marker__mark", json!({})));
    server.push(Turn::text("Done."));
    let mut worker = repo.worker().llm(&server).spawn().await;
    let mut task = repo.worker_task("Mark it.", &server);
    task.tool_gate = true;
    task.mcp = vec![McpServer {
        name: "marker".to_owned(),
        transport: McpTransport::Stdio {
            command: "python3".to_owned(),
            args: vec![script.display().to_string(), marker.display().to_string()],
            env: Default::default(),
        },
        call_timeout_ms: 20_000,
        startup_timeout_ms: 20_000,
    }];
    worker.start(task, false).await;
    let tool = worker.wait_for("tool_start", WAIT).await;
    assert_eq!(str_of(&tool, "tool"), "marker__mark", "{tool}");
    let call = str_of(&tool, "call_id").to_owned();

    tokio::time::sleep(NOT_YET).await;
    assert!(!marker.exists(), "the MCP tool ran before its proceed");
    worker.proceed(&call).await;
    let out = worker.finish().await;
    assert_eq!(out.finished()["status"], "completed", "{out:#?}");
    assert!(
        marker.exists(),
        "the MCP tool did not run after its proceed"
    );
    let ends = out.of_type("tool_end");
    assert_eq!(ends.len(), 1, "{out:#?}");
    assert_eq!(ends[0]["ok"], true, "{out:#?}");
    assert_eq!(str_of(ends[0], "output"), "marked", "{out:#?}");
}

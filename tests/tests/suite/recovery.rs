//! Crash recovery end to end (see docs/layout.md, docs/daemon.md): a worker killed with SIGKILL mid-tool is
//! restarted from its checkpoint; the interrupted call is never run again, the model is told
//! its effects are unknown, and nothing the dead worker started survives.

use std::time::Duration;

use kugetsu_tests::events::{kind, str_of};
use kugetsu_tests::{FakeLlm, TestRepo, Turn, procs};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

#[tokio::test]
async fn a_killed_worker_resumes_without_rerunning_the_interrupted_tool() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Turn::text("Counting, then waiting.").tool_call(
        "bash", // The shell's own command line does not hold the marker: only the sleep
        // does, so once it runs the echo has run.
        json!({"command": "echo ran >> count.txt; sleep 300.61$((60 + 1))"}),
    ));
    server.push(Turn::text("The wait was interrupted; stopping here."));
    let mut run = repo
        .run()
        .llm(&server)
        .prompt("Count and wait.")
        .spawn()
        .await;
    let started = run.wait_for("started", Duration::from_secs(30)).await;
    let worker = i32::try_from(started["pid"].as_u64().unwrap()).unwrap();
    let tool = run.wait_for("tool_start", Duration::from_secs(30)).await;
    procs::wait_until_running("300.6161", Duration::from_secs(10)).await;
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();

    let restarted = run.wait_for("restarted", Duration::from_secs(30)).await;
    assert_eq!(restarted["attempt"], 2);
    let again = run.wait_for("started", Duration::from_secs(30)).await;
    assert_eq!(again["attempt"], 2);
    assert_ne!(again["pid"], started["pid"], "a new worker process");
    let out = run.finish().await;
    out.assert_code(0).assert_status("completed");
    let finished = out.finished();
    assert_eq!(finished["restarts"], 1);
    assert_eq!(
        finished["result"],
        "The wait was interrupted; stopping here."
    );

    // The interrupted call was not run again ...
    let worktree = repo.worktree(out.task_id());
    assert_eq!(
        std::fs::read_to_string(worktree.join("count.txt")).unwrap(),
        "ran\n",
        "the tool ran exactly once"
    );
    let call_id = str_of(&tool, "call_id");
    let bash_starts = out
        .events
        .tool_starts()
        .into_iter()
        .filter(|e| str_of(e, "call_id") == call_id)
        .count();
    assert_eq!(bash_starts, 1, "no second tool_start for {call_id}");
    // ... its tool_start is closed (the stream stays well formed) ...
    let end = out.events.tool_end(call_id);
    assert_eq!(end["ok"], false, "{end}");
    // ... the model was told, under the call's id ...
    assert_eq!(server.request_count(), 2);
    let result = server.request(2).tool_result(call_id);
    let told = result.content.to_lowercase();
    assert!(
        told.contains("interrupt") || told.contains("restart"),
        "the model learns the call was interrupted: {result:?}"
    );
    // ... and the dead worker's shell did not outlive it.
    procs::wait_until_gone("300.6161", Duration::from_secs(10)).await;
    let kinds: Vec<&str> = out.events.all().iter().map(kind).collect();
    let restart_at = kinds.iter().position(|k| *k == "restarted").unwrap();
    assert!(kinds[restart_at + 1..].contains(&"started"));
}

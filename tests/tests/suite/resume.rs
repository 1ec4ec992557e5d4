//! `kugetsu run --resume ID` end to end (see docs/layout.md, docs/cli.md): a task whose `kugetsu run` process
//! was SIGKILLed continues from its checkpoint in a new run; its worker did not outlive the
//! old run; the interrupted call is reported, never re-run; finished tasks and unknown ids
//! are answered without running anything.

use std::time::Duration;

use kugetsu_protocol::Usage;
use kugetsu_tests::events::{Events, kind, str_of};
use kugetsu_tests::harness::{Script, call_id};
use kugetsu_tests::journal::{self, Record};
use kugetsu_tests::{ApiError, FakeLlm, LiveRun, RunOutput, TestRepo, Turn, procs};
use nix::sys::signal::Signal;
use serde_json::json;

/// SIGKILLs the `kugetsu run` process, waits for its worker to die with it, and returns what
/// the run printed.
async fn kill_the_run(run: LiveRun, worker_pid: u32) -> RunOutput {
    run.signal(Signal::SIGKILL);
    let out = run.finish().await;
    assert_eq!(
        out.signal,
        Some(9),
        "kugetsu died of SIGKILL\n{}",
        out.context()
    );
    // PDEATHSIG: the worker goes with the run that started it.
    procs::wait_until_dead(worker_pid, Duration::from_secs(10)).await;
    out
}

fn pid_of(started: &serde_json::Value) -> u32 {
    u32::try_from(started["pid"].as_u64().expect("started.pid")).unwrap()
}

#[tokio::test]
async fn resume_after_the_whole_run_is_killed() {
    let _cleanup = procs::KillOnDrop("300.6262");
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Turn::text("Counting, then waiting.").tool_call(
        "bash",
        // Only the sleep's command line holds the marker (the shell's has `$((…))`).
        json!({"command": "echo ran >> count.txt; sleep 300.62$((60 + 2))"}),
    ));
    server.push(Turn::text("The wait was cut short; stopping here."));
    let mut run = repo
        .run()
        .llm(&server)
        .prompt("Count and wait.")
        .spawn()
        .await;
    let started = run.wait_for("started", Duration::from_secs(30)).await;
    let tool = run.wait_for("tool_start", Duration::from_secs(30)).await;
    let call = str_of(&tool, "call_id").to_owned();
    procs::wait_until_running("300.6262", Duration::from_secs(10)).await;
    let first = kill_the_run(run, pid_of(&started)).await;
    let id = first.task_id().to_owned();
    assert!(
        !first.events.types().contains(&"finished"),
        "{}",
        first.context()
    );

    let out = repo.resume(&id).envs(server.env()).output().await;
    out.assert_code(0).assert_status("completed");
    // The resumed run says so before its worker starts: restarted, then started attempt 2.
    assert_eq!(
        out.events.types()[..2],
        ["restarted", "started"],
        "{}",
        out.context()
    );
    assert_eq!(out.events.first("restarted")["attempt"], 2);
    let again = out.events.first("started");
    assert_eq!(again["attempt"], 2);
    assert_ne!(again["pid"], started["pid"], "a new worker");
    assert_eq!(out.task_id(), id);
    let finished = out.events.finished();
    assert_eq!(finished["result"], "The wait was cut short; stopping here.");

    // The interrupted call was not run again, and the model was told under its id.
    let worktree = repo.worktree(&id);
    assert_eq!(
        std::fs::read_to_string(worktree.join("count.txt")).unwrap(),
        "ran\n",
        "the interrupted call ran exactly once"
    );
    assert_eq!(server.request_count(), 2);
    let told = server.request(2).tool_result(&call);
    assert!(
        told.content.contains("interrupted by a restart"),
        "the model learns the call was interrupted: {told:?}"
    );
    let end = out.events.tool_end(&call);
    assert_eq!(end["ok"], false, "{end}");
    assert!(
        out.events.tool_starts().is_empty(),
        "nothing was started again: {:?}",
        out.events
    );

    // The task's whole log reads as one stream: the old run's events, then the new one's,
    // seq without gaps, every tool_start closed.
    let log = Events::from_file(&repo.task_dir(&id).join("events.jsonl"));
    log.assert_well_formed();
    assert_eq!(log.len(), first.events.len() + out.events.len());
    assert_eq!(
        out.events.all()[0]["seq"],
        first.events.len() as u64 + 1,
        "the resumed run continues the sequence"
    );
    // Nothing the first worker started is left.
    procs::wait_until_gone("300.6262", Duration::from_secs(10)).await;
    // The resume is a restart: `finished.restarts` counts it, as the log's `restarted`
    // events do.
    assert_eq!(
        finished["restarts"],
        log.of_type("restarted").len() as u64,
        "finished.restarts does not count the resume: {finished}"
    );
}

/// With a worker killed by the death of its run, the tool's own processes must not outlive
/// the shadow either: the sleeping command is gone as soon as the run is.
#[tokio::test]
async fn a_killed_run_leaves_no_tool_process_behind() {
    let _cleanup = procs::KillOnDrop("300.6464");
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Turn::text("Waiting.").tool_call(
        "bash",
        json!({"command": "sleep 300.64$((60 + 4)); echo waited"}),
    ));
    let mut run = repo.run().llm(&server).prompt("Wait.").spawn().await;
    let started = run.wait_for("started", Duration::from_secs(30)).await;
    run.wait_for("tool_start", Duration::from_secs(30)).await;
    procs::wait_until_running("300.6464", Duration::from_secs(10)).await;
    kill_the_run(run, pid_of(&started)).await;
    procs::wait_until_gone("300.6464", Duration::from_secs(5)).await;
}

/// Whatever the dead run left running (see the test above) must be gone before a resumed
/// worker starts on the same worktree: the model is told the interrupted call's effects are
/// unknown, so the call must not go on having effects behind the new worker's back.
#[tokio::test]
async fn a_resumed_worker_starts_only_after_the_dead_runs_tools_are_gone() {
    let _cleanup = procs::KillOnDrop("300.6363");
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Turn::text("Waiting.").tool_call(
        "bash",
        json!({"command": "sleep 300.63$((60 + 3)); echo late >> late.txt"}),
    ));
    server.push(Turn::text("Stopped waiting."));
    let mut run = repo.run().llm(&server).prompt("Wait.").spawn().await;
    let started = run.wait_for("started", Duration::from_secs(30)).await;
    run.wait_for("tool_start", Duration::from_secs(30)).await;
    procs::wait_until_running("300.6363", Duration::from_secs(10)).await;
    let first = kill_the_run(run, pid_of(&started)).await;

    let mut resumed = repo
        .resume(first.task_id())
        .envs(server.env())
        .spawn()
        .await;
    resumed.wait_for("started", Duration::from_secs(30)).await;
    let left = procs::matching("300.6363");
    let out = resumed.finish().await;
    out.assert_code(0).assert_status("completed");
    assert!(
        left.is_empty(),
        "the dead run's tool still ran when the resumed worker started: {left:?}"
    );
}

#[tokio::test]
async fn resume_of_a_finished_task_prints_its_finished_event() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Turn::text("All done."));
    server.push(ApiError::unauthorized());
    let done = repo.run().llm(&server).prompt("Finish.").output().await;
    done.assert_code(0).assert_status("completed");
    let failed = repo.run().llm(&server).prompt("Fail.").output().await;
    failed.assert_code(1).assert_status("failed");

    for (earlier, code) in [(&done, 0), (&failed, 1)] {
        let id = earlier.task_id();
        let again = repo.resume(id).envs(server.env()).output().await;
        again.assert_code(code);
        assert_eq!(
            again.events.all(),
            [earlier.events.finished().clone()],
            "only the task's finished event, as it was"
        );
    }
    assert_eq!(server.request_count(), 2, "no model request on resume");
}

#[tokio::test]
async fn resume_of_an_unknown_task_is_a_usage_error() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    for id in ["1m7zzzzzzzzzz", "not a task id"] {
        let out = repo.resume(id).envs(server.env()).output().await;
        out.assert_code(2);
        assert!(out.events.is_empty(), "no events: {:?}", out.events);
        assert!(!out.stderr.trim().is_empty(), "stderr says why");
    }
    assert_eq!(server.request_count(), 0);
}

/// The first part of a crash that lands between a journal write and the event announcing it:
/// a scripted task whose first call (a long sleep) is running is killed with its run.
/// Returns the task id.
async fn kill_during_the_first_call(repo: &TestRepo, script: &Script, marker: &str) -> String {
    let model = script.write(&repo.root().join("script.json"));
    let mut run = repo.run().model(&model).prompt("Go.").spawn().await;
    let started = run.wait_for("started", Duration::from_secs(30)).await;
    run.wait_for("tool_start", Duration::from_secs(30)).await;
    procs::wait_until_running(marker, Duration::from_secs(10)).await;
    let out = kill_the_run(run, pid_of(&started)).await;
    out.task_id().to_owned()
}

/// A worker killed after a tool's result reached the journal but before its `tool_end`
/// reached the supervisor (the result's fdatasync is a window of milliseconds; the crash
/// loop hits it): the resumed task's event stream must still close that `tool_start`.
#[tokio::test]
async fn a_result_journaled_just_before_a_crash_still_closes_its_tool_start() {
    let _cleanup = procs::KillOnDrop("300.6565");
    let repo = TestRepo::new();
    let script = Script::new()
        .bash("Waiting.", "sleep 300.6565")
        .answer("Done.");
    let id = kill_during_the_first_call(&repo, &script, "300.6565").await;
    // The crash happened a moment later: the result was written, its event never sent.
    let path = repo.task_dir(&id).join("journal.jsonl");
    journal::append(
        &path,
        &[Record::ToolResult {
            call_id: call_id(1, 1),
            tool: "bash".to_owned(),
            ok: true,
            output: "(no output)\n[exit code 0]".to_owned(),
            truncated: false,
        }],
    );
    let out = repo.resume(&id).output().await;
    out.assert_code(0).assert_status("completed");
    let log = Events::from_file(&repo.task_dir(&id).join("events.jsonl"));
    let ends = log.of_type("tool_end");
    assert_eq!(
        ends.iter()
            .filter(|e| str_of(e, "call_id") == call_id(1, 1))
            .count(),
        1,
        "the tool_start of {} is closed exactly once: {log:?}",
        call_id(1, 1)
    );
    log.assert_well_formed();
}

/// A worker killed after a tool's intent reached the journal but before its `tool_start`
/// reached the supervisor: the resumed worker reports the call interrupted, and the stream
/// must not carry a `tool_end` for a call it never announced.
#[tokio::test]
async fn an_intent_journaled_just_before_a_crash_is_announced_before_it_is_closed() {
    let _cleanup = procs::KillOnDrop("300.6666");
    let repo = TestRepo::new();
    let script = Script::new()
        .bash("Waiting.", "sleep 300.6666")
        .bash("Then this.", "echo two")
        .answer("Done.");
    let id = kill_during_the_first_call(&repo, &script, "300.6666").await;
    // The crash happened later: call 1 finished, turn 2 was journaled up to its intent, and
    // neither reached the supervisor.
    let path = repo.task_dir(&id).join("journal.jsonl");
    let second = kugetsu_worker::conversation::ToolCall {
        id: call_id(2, 1),
        name: "bash".to_owned(),
        arguments: json!({"command": "echo two"}).to_string(),
    };
    journal::append(
        &path,
        &[
            Record::ToolResult {
                call_id: call_id(1, 1),
                tool: "bash".to_owned(),
                ok: true,
                output: "(no output)\n[exit code 0]".to_owned(),
                truncated: false,
            },
            Record::TurnEnd {
                turn: 1,
                usage: Usage::default(),
            },
            Record::Assistant {
                text: "Then this.".to_owned(),
                tool_calls: vec![second.clone()],
                usage: Usage::default(),
            },
            Record::ToolIntent {
                call_id: second.id.clone(),
                tool: second.name.clone(),
                args: second.arguments.clone(),
            },
        ],
    );
    let out = repo.resume(&id).output().await;
    out.assert_code(0).assert_status("completed");
    // The journal is right: call 2 is answered as interrupted, never run.
    let records = journal::read_clean(&path);
    journal::assert_tool_calls_paired(&records);
    let results = journal::results(&records);
    let second_result = &results[call_id(2, 1).as_str()];
    assert_eq!(second_result.len(), 1);
    assert!(!second_result[0].0 && second_result[0].1 == journal::INTERRUPTED_RESULT);
    // It is announced (its intent is journaled) and closed as interrupted: never run.
    let end = out.events.tool_end(&call_id(2, 1));
    assert_eq!(end["ok"], false, "{end}");
    assert_eq!(
        end["output"],
        journal::INTERRUPTED_RESULT,
        "the interrupted call was not run"
    );
    // The stream: every tool_end follows its tool_start.
    let log = Events::from_file(&repo.task_dir(&id).join("events.jsonl"));
    let types: Vec<&str> = log.all().iter().map(kind).collect();
    assert!(types.contains(&"finished"));
    log.assert_well_formed();
}

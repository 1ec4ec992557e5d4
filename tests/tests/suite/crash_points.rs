//! The crash-point sweep: the daemon or a worker dies (as by `kill -9`) at each durable write
//! and around tool calls in turn (`kugetsu_os::crash`), and nothing is lost or done twice:
//! every task the daemon took finishes exactly once, completed, each tool call ran once, and
//! every journal reads back.

use std::time::{Duration, Instant};

use kugetsu_tests::harness::Script;
use kugetsu_tests::harness::bin_path;
use kugetsu_tests::journal;
use kugetsu_tests::{Daemon, RpcClient, TestRepo};
use serde_json::{Value, json};

const TASKS: usize = 2;
const WAIT: Duration = Duration::from_secs(90);

fn crash_points_built_in() -> bool {
    let out = std::process::Command::new(bin_path("kugetsu-worker"))
        .arg("--version")
        .output()
        .expect("run kugetsu-worker --version");
    String::from_utf8_lossy(&out.stderr).contains("(crash points)")
}

#[tokio::test]
async fn a_crash_at_every_durable_write_loses_nothing_and_runs_nothing_twice() {
    assert!(
        crash_points_built_in(),
        "kugetsu-worker was built without crash points: build with \
         `cargo build --workspace --features kugetsu-os/failpoints` (scripts/check does)"
    );
    for point in kugetsu_os::crash::POINTS {
        sweep(point).await;
    }
}

/// One point: two tasks of two tool calls each, a crash at `point`, the daemon restarted if it
/// was the one that died; then every invariant.
async fn sweep(point: &str) {
    let repo = TestRepo::new();
    let marker = repo.root().join("crashed");
    let model = Script::new()
        .bash("one", "echo one >> steps.txt")
        .bash("two", "echo two >> steps.txt")
        .answer("done")
        .write(&repo.root().join("script.json"));
    let mut daemon = Daemon::builder(&repo)
        .env("KUGETSU_CRASH_AT", point)
        .env("KUGETSU_CRASH_MARKER", &marker)
        .start()
        .await;
    let mut accepted = Vec::new();
    {
        let mut rpc = daemon.rpc().await;
        for i in 0..TASKS {
            let submitted = rpc
                .try_call(
                    "submit",
                    json!({"prompt": format!("steps {i}"), "repo": repo.repo(), "model": model}),
                )
                .await;
            match submitted {
                Some(Ok(result)) => {
                    accepted.push(result["task"].as_str().unwrap_or_default().to_owned());
                }
                Some(Err(e)) => panic!("{point}: submit refused: {e}"),
                // The daemon died answering: the task may or may not exist (checked below).
                None => break,
            }
        }
    }
    let mut restarted = false;
    let deadline = Instant::now() + WAIT;
    let tasks = loop {
        if daemon.try_status().is_some() {
            assert!(
                !restarted,
                "{point}: the daemon died twice\n{}",
                daemon.stderr()
            );
            restarted = true;
            daemon.restart().await;
            // Submissions the crash cut short are made again, as a client would.
            let mut rpc = daemon.rpc().await;
            while accepted.len() < TASKS {
                let result = rpc
                    .call(
                        "submit",
                        json!({"prompt": "steps again", "repo": repo.repo(), "model": model}),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{point}: submit after restart: {e}"));
                accepted.push(result["task"].as_str().unwrap_or_default().to_owned());
            }
        }
        if let Some(tasks) = all_finished(&daemon, &accepted).await {
            break tasks;
        }
        assert!(
            Instant::now() < deadline,
            "{point}: tasks did not finish\n{}",
            daemon.context(None)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        marker.exists(),
        "{point}: the crash point was never reached"
    );
    for task in &tasks {
        let id = task["id"].as_str().unwrap_or_default();
        assert_eq!(
            task["status"],
            "completed",
            "{point}: task {id}\n{}",
            daemon.context(Some(id))
        );
        let events = kugetsu_tests::Events::from_file(&repo.task_dir(id).join("events.jsonl"));
        assert_eq!(
            events.of_type("finished").len(),
            1,
            "{point}: task {id} finished more than once\n{}",
            daemon.context(Some(id))
        );
        // Each tool call ran exactly once (an interrupted one is never run again: the model
        // is told, and the script moves on, so a step may be missing but never doubled).
        let steps =
            std::fs::read_to_string(repo.worktree(id).join("steps.txt")).unwrap_or_default();
        for step in ["one", "two"] {
            assert!(
                steps.matches(step).count() <= 1,
                "{point}: task {id} ran `{step}` twice: {steps:?}"
            );
        }
        let journal = repo.task_dir(id).join("journal.jsonl");
        let records = journal::read_clean(&journal);
        journal::assert_tool_calls_paired(&records);
    }
    if !restarted {
        daemon.assert_alive();
    }
    daemon.wait_no_orphans(Duration::from_secs(10)).await;
}

/// Every task the daemon knows of, once all of `accepted` (and any other it runs) finished.
async fn all_finished(daemon: &Daemon, accepted: &[String]) -> Option<Vec<Value>> {
    let mut rpc: RpcClient = RpcClient::connect(daemon.socket()).await.ok()?;
    let list = rpc.try_call("list", json!({"all": true})).await?.ok()?;
    let tasks: Vec<Value> = list["tasks"].as_array()?.clone();
    let done = |t: &Value| {
        !matches!(
            t["status"].as_str(),
            Some("queued" | "running" | "waiting") | None
        )
    };
    let known: Vec<&str> = tasks.iter().filter_map(|t| t["id"].as_str()).collect();
    if accepted.iter().all(|id| known.contains(&id.as_str())) && tasks.iter().all(done) {
        Some(tasks)
    } else {
        None
    }
}

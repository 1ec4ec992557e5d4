//! `kugetsu run` as a command: exit codes, usage errors, budgets, signals, `--no-worktree`.

use std::time::Duration;

use kugetsu_tests::events::{sorted_strings, str_of};
use kugetsu_tests::fake_llm::OPENAI_MODEL;
use kugetsu_tests::{FakeLlm, Reply, RunOutput, TestRepo, Turn, procs};
use nix::sys::signal::Signal;
use serde_json::json;

/// A usage error: exit 2, one line on stderr, nothing on stdout, no task created.
fn assert_usage_error(repo: &TestRepo, out: &RunOutput) -> String {
    out.assert_code(2);
    let stderr = out.stderr.trim();
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line on stderr, got:\n{stderr}"
    );
    assert!(out.events.is_empty(), "no events: {:?}", out.events);
    let tasks = repo.state_dir().join("tasks");
    let created = std::fs::read_dir(&tasks).map_or(0, Iterator::count);
    assert_eq!(created, 0, "a usage error creates no task");
    assert!(
        !repo.branches().iter().any(|b| b.starts_with("kugetsu/")),
        "a usage error creates no branch"
    );
    stderr.to_owned()
}

#[tokio::test]
async fn missing_api_key_is_a_usage_error() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    let out = repo
        .run()
        .env("OPENAI_BASE_URL", server.base_url())
        .model(&server.model_arg())
        .prompt("hi")
        .output()
        .await;
    let stderr = assert_usage_error(&repo, &out);
    assert!(stderr.contains("OPENAI_API_KEY"), "{stderr}");
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn unknown_provider_is_a_usage_error() {
    let repo = TestRepo::new();
    let out = repo.run().model("foo/bar").prompt("hi").output().await;
    let stderr = assert_usage_error(&repo, &out);
    assert!(stderr.contains("foo"), "{stderr}");
}

#[tokio::test]
async fn a_directory_that_is_not_a_git_repository_is_a_usage_error() {
    let repo = TestRepo::new();
    let plain = repo.root().join("plain-dir");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("file.txt"), "not in git\n").unwrap();
    let out = repo
        .kugetsu()
        .args(["run", "--json", "-m", "scripted/demo", "--state-dir"])
        .arg(repo.state_dir())
        .arg("-C")
        .arg(&plain)
        .prompt("hi")
        .output()
        .await;
    let stderr = assert_usage_error(&repo, &out);
    assert!(
        stderr.contains("git") || stderr.contains(plain.to_str().unwrap()),
        "{stderr}"
    );
}

#[tokio::test]
async fn no_model_is_a_usage_error_that_says_how_to_set_one() {
    let repo = TestRepo::new();
    let out = repo.run().prompt("hi").output().await;
    let stderr = assert_usage_error(&repo, &out);
    assert!(
        stderr.contains("KUGETSU_MODEL") || stderr.contains("--model") || stderr.contains("-m "),
        "says how to set a model: {stderr}"
    );
}

#[tokio::test]
async fn model_and_state_dir_come_from_the_environment() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Turn::text("Configured by the environment."));
    let out = repo
        .kugetsu()
        .args(["run", "--json", "-C"])
        .arg(repo.repo())
        .envs(server.env())
        .env("KUGETSU_MODEL", format!("openai/{OPENAI_MODEL}"))
        .env("KUGETSU_STATE_DIR", repo.state_dir())
        .prompt("hi")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let id = out.task_id();
    assert!(repo.task_dir(id).join("events.jsonl").is_file());
    assert!(repo.worktree(id).is_dir());
    assert!(str_of(out.events.first("started"), "model").contains(OPENAI_MODEL));
}

#[tokio::test]
async fn max_turns_fails_a_model_that_keeps_calling_tools() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Turn::text("Looking.").tool_call("ls", json!({})));
    server.push(Turn::text("Looking again.").tool_call("ls", json!({})));
    let out = repo
        .run()
        .llm(&server)
        .args(["--max-turns", "2"])
        .prompt("Never stop.")
        .output()
        .await;
    out.assert_code(1).assert_status("failed");
    let finished = out.finished();
    let error = str_of(finished, "error");
    assert!(
        error.contains("max_turns") || error.contains("max-turns") || error.contains("max turns"),
        "{error}"
    );
    assert_eq!(finished["turns"], 2);
    assert_eq!(server.request_count(), 2, "no third request");
    assert_eq!(finished["result"], "Looking again.");
}

#[tokio::test]
async fn timeout_with_a_stalled_stream_times_out() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Turn::text("Thinking very hard about this").stall_after(3));
    let out = repo
        .run()
        .llm(&server)
        .args(["--timeout", "2s"])
        .prompt("Think.")
        .output()
        .await;
    out.assert_code(1).assert_status("timed_out");
    let finished = out.finished();
    assert!(finished["error"].is_string());
    assert_eq!(server.request_count(), 1);
    assert!(
        out.duration < Duration::from_secs(30),
        "the 2 s timeout ended the run, not the harness: {:?}",
        out.duration
    );
}

#[tokio::test]
async fn timeout_with_a_silent_server_times_out() {
    let repo = TestRepo::new();
    let server = FakeLlm::anthropic();
    server.push(Reply::Stall);
    let out = repo
        .run()
        .llm(&server)
        .args(["--timeout", "2s"])
        .prompt("Think.")
        .output()
        .await;
    out.assert_code(1).assert_status("timed_out");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn sigterm_cancels_the_task_and_kills_its_tool() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Turn::new().tool_call("bash", json!({"command": "sleep 300.5151"})));
    let mut run = repo.run().llm(&server).prompt("Sleep.").spawn().await;
    let start = run.wait_for("tool_start", Duration::from_secs(30)).await;
    assert_eq!(start["tool"], "bash");
    procs::wait_until_running("300.5151", Duration::from_secs(10)).await;
    run.signal(Signal::SIGTERM);
    let out = run.finish().await;
    out.assert_code(1).assert_status("cancelled");
    let end = out.events.tool_end(str_of(&start, "call_id"));
    assert_eq!(end["ok"], false, "{end}");
    procs::wait_until_gone("300.5151", Duration::from_secs(10)).await;
    assert_eq!(
        server.request_count(),
        1,
        "a cancelled task asks nothing more"
    );
}

#[tokio::test]
async fn no_worktree_edits_the_repository_in_place() {
    let repo = TestRepo::new();
    let server = FakeLlm::anthropic();
    server.push(
        Turn::text("Editing in place.")
            .tool_call(
                "edit",
                json!({"path": "hello.txt", "old_text": "world", "new_text": "in place"}),
            )
            .tool_call("write", json!({"path": "added.txt", "content": "new\n"})),
    );
    server.push(Turn::text("Edited the checkout itself."));
    let out = repo
        .run()
        .llm(&server)
        .arg("--no-worktree")
        .prompt("Edit here.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    assert_eq!(repo.read("hello.txt").as_deref(), Some("hello in place\n"));
    assert_eq!(repo.read("added.txt").as_deref(), Some("new\n"));
    let finished = out.finished();
    let worktree = std::path::Path::new(str_of(finished, "worktree"))
        .canonicalize()
        .unwrap();
    assert_eq!(worktree, repo.repo(), "the task ran in the repository");
    assert!(
        std::fs::read_dir(repo.state_dir().join("worktrees")).map_or(0, Iterator::count) == 0,
        "no worktree was created"
    );
    assert_eq!(
        sorted_strings(&finished["changed_files"]),
        ["added.txt", "hello.txt"]
    );
}

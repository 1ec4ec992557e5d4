//! The Hermes plugin (see docs/daemon.md), loaded the way Hermes loads it (`register(ctx)`), driving the
//! real `kugetsu` binary through `$KUGETSU_BIN`.

use std::process::Stdio;

use kugetsu_tests::events::kind;
use kugetsu_tests::harness::daemon::WAIT;
use kugetsu_tests::harness::{Script, bin_path};
use kugetsu_tests::{Daemon, Gate, TestRepo};
use serde_json::{Value, json};

/// Loads the plugin with a recording `ctx`, calls `tool` with `args`, and returns what the
/// handler returned (parsed) plus the names of the tools it registered.
async fn call_plugin(
    repo: &TestRepo,
    tool: &str,
    args: Value,
    extra_env: &[(&str, &str)],
) -> (Value, Vec<String>) {
    let plugin_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/hermes");
    let program = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import kugetsu
class Ctx:
    def __init__(self):
        self.tools = {}
    def register_tool(self, name, toolset, schema, handler, **kwargs):
        assert toolset == "kugetsu" and schema["name"] == name and callable(handler)
        self.tools[name] = handler
ctx = Ctx()
kugetsu.register(ctx)
out = ctx.tools[sys.argv[2]](json.loads(sys.argv[3]))
assert isinstance(out, str), "handlers return strings"
print(json.dumps({"result": json.loads(out), "tools": sorted(ctx.tools)}))
"#;
    let mut command = tokio::process::Command::new("python3");
    command
        .arg("-c")
        .arg(program)
        .arg(&plugin_dir)
        .arg(tool)
        .arg(args.to_string())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", repo.home())
        .env("KUGETSU_BIN", bin_path("kugetsu"))
        .env("KUGETSU_STATE_DIR", repo.state_dir())
        // Not passed on by the plugin: it hands the child an explicit environment.
        .env("UNRELATED_SECRET", "must-not-leak")
        .stdin(Stdio::null());
    for (k, v) in extra_env {
        command.env(k, v);
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), command.output())
        .await
        .expect("the plugin call finishes")
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    let tools = reply["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    (reply["result"].clone(), tools)
}

#[tokio::test]
async fn kugetsu_run_returns_the_finished_event_of_a_real_run() {
    let repo = TestRepo::new();
    let script = Script::new()
        .bash("Writing a note.", "echo from-hermes > note.txt")
        .answer("Wrote note.txt.");
    let model = script.write(&repo.root().join("script.json"));
    let (finished, tools) = call_plugin(
        &repo,
        "kugetsu_run",
        json!({"prompt": "write a note", "repo": repo.repo(), "model": model, "timeout_s": 60}),
        &[],
    )
    .await;
    assert_eq!(
        tools,
        [
            "kugetsu_cancel",
            "kugetsu_diff",
            "kugetsu_logs",
            "kugetsu_merge",
            "kugetsu_run",
            "kugetsu_status",
            "kugetsu_steer",
            "kugetsu_submit"
        ]
    );
    assert_eq!(finished["type"], "finished", "{finished}");
    assert_eq!(finished["status"], "completed", "{finished}");
    assert_eq!(finished["result"], "Wrote note.txt.");
    assert_eq!(finished["changed_files"], json!(["note.txt"]));
    let worktree = finished["worktree"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(worktree).join("note.txt")).unwrap(),
        "from-hermes\n"
    );
    assert!(
        !repo.repo().join("note.txt").exists(),
        "the checkout is untouched"
    );
}

#[tokio::test]
async fn handlers_never_raise_and_report_errors_as_json() {
    let repo = TestRepo::new();
    // Bad model: the CLI's one-line error comes back, with its exit code.
    let (reply, _) = call_plugin(
        &repo,
        "kugetsu_run",
        json!({"prompt": "x", "repo": repo.repo(), "model": "nope/model"}),
        &[],
    )
    .await;
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("unknown provider"),
        "{reply}"
    );
    assert_eq!(reply["exit_code"], 2);
    // Missing arguments.
    let (reply, _) = call_plugin(&repo, "kugetsu_run", json!({}), &[]).await;
    assert_eq!(reply["error"], "prompt is required");
    let (reply, _) = call_plugin(&repo, "kugetsu_cancel", json!({}), &[]).await;
    assert_eq!(reply["error"], "task is required");
    // No daemon: submit and status say so.
    let (reply, _) = call_plugin(
        &repo,
        "kugetsu_submit",
        json!({"prompt": "x", "repo": repo.repo(), "model": "scripted/demo"}),
        &[],
    )
    .await;
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("no kugetsu daemon"),
        "{reply}"
    );
    let (reply, _) = call_plugin(&repo, "kugetsu_status", json!({}), &[]).await;
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("no kugetsu daemon"),
        "{reply}"
    );
    // No binary at all.
    let (reply, _) = call_plugin(
        &repo,
        "kugetsu_run",
        json!({"prompt": "x"}),
        &[("KUGETSU_BIN", "/nonexistent/kugetsu")],
    )
    .await;
    assert!(
        reply["error"].as_str().unwrap().contains("cannot run"),
        "{reply}"
    );
}

#[tokio::test]
async fn the_child_gets_only_the_allowed_environment() {
    let repo = TestRepo::new();
    let script = Script::new()
        .bash("Looking.", "env > env.txt")
        .answer("Done.");
    let model = script.write(&repo.root().join("script.json"));
    let (finished, _) = call_plugin(
        &repo,
        "kugetsu_run",
        json!({"prompt": "dump env", "repo": repo.repo(), "model": model}),
        &[("XDG_CACHE_HOME", "/tmp/xdg-cache-for-test")],
    )
    .await;
    assert_eq!(finished["status"], "completed", "{finished}");
    let env = std::fs::read_to_string(
        std::path::Path::new(finished["worktree"].as_str().unwrap()).join("env.txt"),
    )
    .unwrap();
    assert!(
        env.contains("XDG_CACHE_HOME=/tmp/xdg-cache-for-test"),
        "{env}"
    );
    assert!(!env.contains("UNRELATED_SECRET"), "{env}");
}

#[tokio::test]
async fn steer_logs_diff_and_merge_drive_the_daemon() {
    let repo = TestRepo::new();
    // Where the plugin's child finds the daemon from KUGETSU_STATE_DIR alone.
    let daemon = Daemon::builder(&repo)
        .socket(repo.state_dir().join("kugetsu.sock"))
        .start()
        .await;
    let gate = Gate::new(repo.root(), "gate");
    let model = kugetsu_tests::Script::new()
        .bash("Writing.", "echo from-a-shadow > shadow.txt")
        .bash("Waiting.", &gate.wait_command())
        .text("Done.")
        .write(&repo.root().join("scripts").join("hermes.json"));
    let id = daemon.submit(&["-m", &model], "Write a file.").await;
    let mut events = daemon.rpc().await;
    events.call("subscribe", json!({"task": id})).await.unwrap();
    events
        .wait_event("the write", WAIT, |e| kind(e) == "tool_end")
        .await;

    let (diff, _) = call_plugin(&repo, "kugetsu_diff", json!({"task": id}), &[]).await;
    assert!(
        diff["diff"].as_str().unwrap().contains("+from-a-shadow"),
        "{diff}"
    );
    let (steered, _) = call_plugin(
        &repo,
        "kugetsu_steer",
        json!({"task": id, "text": "also say hello"}),
        &[],
    )
    .await;
    assert_eq!(steered, json!({"task": id, "steered": true}));
    gate.open();
    assert_eq!(daemon.wait_finished(&id, WAIT).await.status(), "completed");

    let (logs, _) = call_plugin(&repo, "kugetsu_logs", json!({"task": id}), &[]).await;
    let kinds: Vec<&str> = logs["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"steered") && kinds.last() == Some(&"finished"),
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"text_delta"), "{kinds:?}");

    let (merged, _) = call_plugin(&repo, "kugetsu_merge", json!({"task": id}), &[]).await;
    assert_eq!(merged["landed"][0]["task"], id.as_str(), "{merged}");
    assert_eq!(merged["landed"][0]["into"], "main", "{merged}");
    assert_eq!(repo.git(&["show", "main:shadow.txt"]), "from-a-shadow\n");
    // A refusal is a report, not an error; a finished task cannot be steered.
    let (again, _) = call_plugin(&repo, "kugetsu_merge", json!({"task": id}), &[]).await;
    assert_eq!(again["refused"][0]["reason"], "already_merged", "{again}");
    let (late, _) = call_plugin(
        &repo,
        "kugetsu_steer",
        json!({"task": id, "text": "too late"}),
        &[],
    )
    .await;
    assert!(
        late["error"].as_str().unwrap().contains("already ended"),
        "{late}"
    );
    let (missing, _) = call_plugin(&repo, "kugetsu_diff", json!({}), &[]).await;
    assert_eq!(missing["error"], "task is required");
}

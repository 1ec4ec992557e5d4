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

/// The virtualenv with the real hermes-agent package (`.ci/run` creates it):
/// `$KUGETSU_HERMES_VENV`, else `target/hermes-venv` in the repository.
fn hermes_python() -> Option<std::path::PathBuf> {
    let venv = std::env::var_os("KUGETSU_HERMES_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/hermes-venv")
        });
    let python = venv.join("bin/python");
    python.exists().then_some(python)
}

/// A Hermes session in the real hermes-agent package: its plugin manager discovers and loads
/// the plugin from `$HERMES_HOME/plugins` (enabled in `config.yaml`), the model's tool calls go
/// through its tool registry, and the session is a real `HermesCLI`, handed to the plugin
/// manager (`_cli_ref`) as its `run()` does: `ctx.inject_message` writes to its input queues
/// (`_pending_input` when idle, `_interrupt_queue` mid-turn). `mode`: `idle` (the agent
/// waits for input), `busy` (mid-turn; this session cancels its task instead of letting it
/// finish), `gateway` (no CLI: `inject_message` delivers nothing) or `exit` (Hermes exits
/// while its task runs on).
async fn hermes_session(
    repo: &TestRepo,
    python: &std::path::Path,
    mode: &str,
    args: Value,
) -> Value {
    let plugin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/hermes/kugetsu");
    let home = repo.root().join(format!("hermes-{mode}"));
    let program = r#"
import json, os, sys, threading, time
from pathlib import Path
plugin, mode, gate, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
home = Path(os.environ["HERMES_HOME"])
(home / "plugins").mkdir(parents=True)
(home / "plugins" / "kugetsu").symlink_to(plugin)
(home / "config.yaml").write_text("plugins:\n  enabled:\n    - kugetsu\n")
import psutil
from hermes_cli.plugins import discover_plugins, get_plugin_manager
from tools.registry import registry
discover_plugins()
manager = get_plugin_manager()
loaded = manager._plugins.get("kugetsu")
assert loaded is not None and loaded.enabled, loaded and loaded.error
cli = None
if mode != "gateway":
    from cli import HermesCLI
    cli = HermesCLI()
    # What HermesCLI.run() does before its input loop, and what that loop sets during a turn.
    manager._cli_ref = cli
    cli._agent_running = mode == "busy"
submitted = json.loads(registry.dispatch("kugetsu_submit", args))
task = submitted["task"]
time.sleep(0.5)
out = {"submitted": submitted, "tools": sorted(loaded.tools_registered)}
if cli:
    out["early"] = cli._pending_input.qsize() + cli._interrupt_queue.qsize()
if mode == "exit":
    out["children"] = [p.cmdline() for p in psutil.Process().children(recursive=True)]
    print(json.dumps(out))
    sys.exit(0)
if mode == "busy":
    out["cancel"] = json.loads(registry.dispatch("kugetsu_cancel", {"task": task}))
else:
    Path(gate).write_text("open\n")
if cli:
    into, other = (cli._interrupt_queue, cli._pending_input) if cli._agent_running else (cli._pending_input, cli._interrupt_queue)
    out["note"] = into.get(timeout=60)
    out["other"] = other.qsize()
def watchers():
    return [t.name for t in threading.enumerate() if t.name.startswith("kugetsu-watch")]
deadline = time.time() + 60
while watchers() and time.time() < deadline:
    time.sleep(0.05)
out["watchers"] = watchers()
out["children"] = [p.cmdline() for p in psutil.Process().children(recursive=True)]
print(json.dumps(out))
"#;
    let output = tokio::process::Command::new(python)
        .arg("-c")
        .arg(program)
        .arg(&plugin)
        .arg(mode)
        .arg(repo.root().join("gate"))
        .arg(args.to_string())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", repo.home())
        .env("HERMES_HOME", &home)
        .env("KUGETSU_BIN", bin_path("kugetsu"))
        .env("KUGETSU_STATE_DIR", repo.state_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), output)
        .await
        .expect("the Hermes session finishes")
        .expect("the venv's python runs");
    assert!(
        output.status.success(),
        "hermes session ({mode}) failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "one JSON line ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test]
async fn a_submitted_task_ends_with_a_note_in_the_real_hermes_session() {
    let Some(python) = hermes_python() else {
        eprintln!(
            "SKIPPED: no hermes-agent virtualenv at target/hermes-venv (or $KUGETSU_HERMES_VENV); \
             .ci/run creates it"
        );
        return;
    };
    let repo = TestRepo::new();
    let _daemon = Daemon::builder(&repo)
        .socket(repo.state_dir().join("kugetsu.sock"))
        .start()
        .await;
    let gate = Gate::new(repo.root(), "gate");
    let model = Script::new()
        .bash("Writing.", "echo from-hermes > note.txt")
        .bash("Waiting.", gate.wait_command())
        .answer("Wrote note.txt.")
        .write(&repo.root().join("notify.json"));
    let args = json!({"prompt": "write a note", "repo": repo.repo(), "model": model});

    // Idle session: the note is its next input, and only once the task has finished.
    let idle = hermes_session(&repo, &python, "idle", args.clone()).await;
    assert_eq!(
        idle["tools"],
        json!([
            "kugetsu_cancel",
            "kugetsu_diff",
            "kugetsu_logs",
            "kugetsu_merge",
            "kugetsu_run",
            "kugetsu_status",
            "kugetsu_steer",
            "kugetsu_submit"
        ]),
        "the real loader registered them all: {idle}"
    );
    let id = idle["submitted"]["task"].as_str().expect("a task id");
    assert_eq!(idle["early"], 0, "no note before the task ends: {idle}");
    let note = idle["note"].as_str().unwrap();
    assert!(
        note.starts_with(&format!("[kugetsu] Task {id} finished: completed.")),
        "{note}"
    );
    assert!(note.contains("\u{201c}Wrote note.txt.\u{201d}"), "{note}");
    assert!(note.contains(&format!("Branch: kugetsu/{id}.")), "{note}");
    assert!(note.contains("Changed: note.txt."), "{note}");
    assert_eq!(idle["other"], 0, "{idle}");
    assert_eq!(idle["watchers"], json!([]), "{idle}");
    assert_eq!(
        idle["children"],
        json!([]),
        "no follower left running: {idle}"
    );

    // Busy session (mid-turn): the note interrupts the turn; a cancelled task says so.
    Gate::new(repo.root(), "gate"); // closed again
    let busy = hermes_session(&repo, &python, "busy", args.clone()).await;
    let id = busy["submitted"]["task"].as_str().expect("a task id");
    assert_eq!(busy["early"], 0, "{busy}");
    assert_eq!(busy["cancel"]["task"], id, "{busy}");
    let note = busy["note"].as_str().unwrap();
    assert!(
        note.starts_with(&format!(
            "[kugetsu] Task {id} finished: cancelled. Error: cancelled. Branch: kugetsu/{id}."
        )),
        "{note}"
    );
    assert_eq!(busy["other"], 0, "{busy}");
    assert_eq!(busy["children"], json!([]), "{busy}");

    // Gateway (no CLI): nothing to inject into; the watcher still ends, quietly.
    let gateway = hermes_session(&repo, &python, "gateway", args.clone()).await;
    assert!(gateway["submitted"]["task"].is_string(), "{gateway}");
    assert_eq!(gateway["watchers"], json!([]), "{gateway}");
    assert_eq!(gateway["children"], json!([]), "{gateway}");

    // Hermes exits while its task still runs: its follower goes with it.
    Gate::new(repo.root(), "gate");
    let exit = hermes_session(&repo, &python, "exit", args).await;
    let id = exit["submitted"]["task"].as_str().expect("a task id");
    let following = |argv: &Value| argv.to_string().contains(id);
    assert!(
        exit["children"].as_array().unwrap().iter().any(following),
        "a follower ran: {exit}"
    );
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(" logs ") && c.contains(id))
        .collect();
    assert!(left.is_empty(), "followers left behind: {left:?}");
    Gate::new(repo.root(), "gate").open();
}

//! `kugetsu mcp` (docs/mcp.md) driven by a real MCP client: the official Python SDK (`mcp` on
//! PyPI, in the virtualenv `.ci/run` makes) running `tests/mcp/client.py`, which spawns the
//! server with `mcp.client.stdio`. Plus the protocol's failure paths spoken by hand.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kugetsu_tests::harness::bin_path;
use kugetsu_tests::{Daemon, Gate, Script, TestRepo};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The virtualenv's python with the `mcp` package: `$KUGETSU_MCP_VENV`, else
/// `target/mcp-venv`. Without it the test is skipped loudly, or fails under CI.
fn mcp_python() -> Option<PathBuf> {
    let venv = std::env::var_os("KUGETSU_MCP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mcp-venv"));
    let python = venv.join("bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no MCP Python SDK virtualenv at {} (CI is set: .ci/run must create it)",
        venv.display()
    );
    eprintln!(
        "SKIPPED: no MCP Python SDK virtualenv at {} (or $KUGETSU_MCP_VENV); .ci/run creates it",
        venv.display()
    );
    None
}

/// Runs the client script on `steps` against `kugetsu mcp ARGS` started in `cwd`; returns its
/// report (`tools`, `steps`).
async fn client(python: &Path, repo: &TestRepo, cwd: &Path, args: &[&str], steps: Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp/client.py");
    let mut server_args = vec!["mcp".to_owned()];
    server_args.extend(args.iter().map(|a| (*a).to_owned()));
    let plan = json!({
        "server": {
            "command": bin_path("kugetsu"),
            "args": server_args,
            "cwd": cwd,
            // Merged over the SDK's default environment (PATH, HOME, ...): no config of the
            // user's, and the state dir of this test.
            "env": {
                "HOME": repo.home(),
                "KUGETSU_STATE_DIR": repo.state_dir(),
                "XDG_CONFIG_HOME": repo.home().join(".config"),
            },
        },
        "steps": steps,
    });
    let output = tokio::process::Command::new(python)
        .arg(&script)
        .arg(plan.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), output)
        .await
        .expect("the MCP client finishes")
        .expect("the venv's python runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(output.status.success(), "the MCP client failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "one JSON object ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The steps' records, skipping `write` steps.
fn calls(report: &Value) -> Vec<Value> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.get("tool").is_some())
        .cloned()
        .collect()
}

fn progress_messages(step: &Value) -> Vec<String> {
    step["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Waits until the task's event log ends with `finished`; returns that event.
async fn finished_in_log(repo: &TestRepo, id: &str) -> Value {
    let path = repo.task_dir(id).join("events.jsonl");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(last) = text.lines().last()
            && let Ok(event) = serde_json::from_str::<Value>(last)
            && event["type"] == "finished"
        {
            return event;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} never finished: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_python_sdk_lists_the_tools_and_runs_a_shadow_with_progress() {
    let Some(python) = mcp_python() else {
        return;
    };
    let repo = TestRepo::new();
    let model = Script::new()
        .bash("Writing a note.", "echo from-mcp > note.txt")
        .text("Wrote note.txt.")
        .write(&repo.root().join("scripts/run.json"));
    let gate = Gate::new(repo.root(), "gate");
    let held = Script::new()
        .bash("Waiting.", &gate.wait_command())
        .text("Never reached.")
        .write(&repo.root().join("scripts/held.json"));
    let not_git = repo.side_dir();
    std::fs::create_dir_all(&not_git).unwrap();
    let socket = repo.root().join("no-daemon.sock");
    let report = client(
        &python,
        &repo,
        &repo.repo(),
        &["--socket", socket.to_str().unwrap()],
        json!([
            // repo defaults to the directory kugetsu mcp started in.
            {"tool": "kugetsu_run", "arguments": {"prompt": "write a note", "model": model, "timeout_s": 120}},
            {"tool": "kugetsu_run", "arguments": {"prompt": "wait", "model": held}, "cancel_on": "tool bash"},
            {"tool": "kugetsu_run", "arguments": {"prompt": "x", "repo": not_git, "model": model}},
            {"tool": "kugetsu_run", "arguments": {"prompt": "x", "timeout_s": "soon"}},
            {"tool": "kugetsu_status", "arguments": {}},
            {"tool": "kugetsu_steer", "arguments": {"task": "x"}},
            {"tool": "kugetsu_nope", "arguments": {}},
        ]),
    )
    .await;

    // The tools, named and shaped as the Hermes plugin's.
    let tools: Vec<&str> = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        [
            "kugetsu_run",
            "kugetsu_submit",
            "kugetsu_status",
            "kugetsu_cancel",
            "kugetsu_steer",
            "kugetsu_logs",
            "kugetsu_diff",
            "kugetsu_merge"
        ]
    );
    let schema = |name: &str| {
        report["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["inputSchema"]
            .clone()
    };
    let properties = |name: &str| {
        let mut keys: Vec<String> = schema(name)["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        properties("kugetsu_run"),
        ["base", "model", "prompt", "repo", "timeout_s"]
    );
    assert_eq!(schema("kugetsu_run")["required"], json!(["prompt"]));
    assert_eq!(
        schema("kugetsu_run")["properties"]["timeout_s"]["type"],
        "integer"
    );
    assert_eq!(
        properties("kugetsu_submit"),
        ["base", "model", "priority", "prompt", "repo"]
    );
    assert_eq!(
        schema("kugetsu_submit")["properties"]["priority"]["enum"],
        json!(["high", "normal", "low"])
    );
    assert_eq!(properties("kugetsu_status"), ["task"]);
    assert!(schema("kugetsu_status").get("required").is_none());
    assert_eq!(schema("kugetsu_steer")["required"], json!(["task", "text"]));
    assert_eq!(properties("kugetsu_diff"), ["stat", "task"]);
    assert_eq!(properties("kugetsu_merge"), ["into", "task"]);
    for name in [
        "kugetsu_cancel",
        "kugetsu_logs",
        "kugetsu_diff",
        "kugetsu_merge",
    ] {
        assert_eq!(schema(name)["required"], json!(["task"]), "{name}");
    }

    let steps = calls(&report);
    // The run: its result is the `finished` event, the work is on its branch.
    let run = &steps[0];
    assert_eq!(run["is_error"], false, "{run}");
    let finished = &run["json"];
    assert_eq!(finished["type"], "finished", "{run}");
    assert_eq!(finished["status"], "completed", "{run}");
    assert_eq!(finished["result"], "Wrote note.txt.");
    assert_eq!(finished["changed_files"], json!(["note.txt"]));
    let id = finished["task"].as_str().unwrap();
    let branch = finished["branch"].as_str().unwrap();
    assert_eq!(branch, format!("kugetsu/{id}"));
    assert!(repo.has_branch(branch), "{:?}", repo.branches());
    assert_eq!(
        repo.git(&["show", &format!("{branch}:note.txt")]),
        "from-mcp\n"
    );
    assert!(
        !repo.repo().join("note.txt").exists(),
        "the checkout is untouched"
    );
    // Progress: numbered in order, following the shadow from start to end.
    let numbers: Vec<f64> = run["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_f64().unwrap())
        .collect();
    assert!(numbers.len() >= 2, "{run}");
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    let messages = progress_messages(run);
    let position = |prefix: &str| {
        messages
            .iter()
            .position(|m| m.starts_with(prefix))
            .unwrap_or_else(|| panic!("no progress {prefix:?} in {messages:?}"))
    };
    assert!(
        messages[0].starts_with(&format!("task {id} started")),
        "{messages:?}"
    );
    assert!(
        position("turn 1") < position("tool bash echo from-mcp"),
        "{messages:?}"
    );
    assert!(position("tool bash") < position("turn 2"), "{messages:?}");
    assert_eq!(messages.last().unwrap(), "done: completed", "{messages:?}");

    // Cancelled by the client mid-tool: the shadow stops cleanly with `cancelled`.
    let cancelled = &steps[1];
    assert_eq!(cancelled["cancelled"], true, "{cancelled}");
    let started = progress_messages(cancelled)
        .into_iter()
        .find(|m| m.starts_with("task "))
        .expect("a started message");
    let held_id = started.split_whitespace().nth(1).unwrap().to_owned();
    let end = finished_in_log(&repo, &held_id).await;
    assert_eq!(end["status"], "cancelled", "{end}");

    // Errors a model can act on.
    let not_a_repo = &steps[2];
    assert_eq!(not_a_repo["is_error"], true, "{not_a_repo}");
    assert!(
        not_a_repo["text"]
            .as_str()
            .unwrap()
            .contains("is not a git repository"),
        "{not_a_repo}"
    );
    let bad = &steps[3];
    assert_eq!(bad["is_error"], true, "{bad}");
    assert!(
        bad["text"].as_str().unwrap().contains("`timeout_s`"),
        "{bad}"
    );
    let no_daemon = &steps[4];
    assert_eq!(no_daemon["is_error"], true, "{no_daemon}");
    let text = no_daemon["text"].as_str().unwrap();
    assert!(text.contains("`kugetsu serve`"), "{text}");
    assert!(text.contains(socket.to_str().unwrap()), "{text}");
    let missing = &steps[5];
    assert_eq!(missing["is_error"], true, "{missing}");
    assert!(
        missing["text"]
            .as_str()
            .unwrap()
            .contains("`text` is required"),
        "{missing}"
    );
    let unknown = &steps[6];
    assert_eq!(unknown["protocol_error"]["code"], -32602, "{unknown}");
    assert!(
        unknown["protocol_error"]["message"]
            .as_str()
            .unwrap()
            .contains("kugetsu_nope"),
        "{unknown}"
    );
}

#[tokio::test]
async fn the_daemon_backed_tools_drive_a_real_daemon() {
    let Some(python) = mcp_python() else {
        return;
    };
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo)
        .socket(repo.root().join("daemon.sock"))
        .start()
        .await;
    let gate = Gate::new(repo.root(), "gate");
    let model = Script::new()
        .bash("Writing.", "echo from-a-shadow > shadow.txt")
        .bash("Waiting.", &gate.wait_command())
        .text("Done.")
        .write(&repo.root().join("scripts/daemon.json"));
    let held_gate = Gate::new(repo.root(), "held-gate");
    let held = Script::new()
        .bash("Waiting.", &held_gate.wait_command())
        .text("Never reached.")
        .write(&repo.root().join("scripts/held.json"));
    let not_git = repo.side_dir();
    std::fs::create_dir_all(&not_git).unwrap();
    let main_before = repo.git(&["rev-parse", "main"]);
    let socket = daemon.socket().to_str().unwrap().to_owned();
    let report = client(
        &python,
        &repo,
        &repo.repo(),
        &["--socket", &socket],
        json!([
            {"tool": "kugetsu_submit", "arguments": {"prompt": "Write a file.", "model": model}, "save": {"task": "task"}},
            {"tool": "kugetsu_status", "arguments": {"task": "$task"}, "until": {"status": ["running"]}},
            {"tool": "kugetsu_logs", "arguments": {"task": "$task"},
             "until": {"events.-1.type": ["tool_start"]}},
            {"tool": "kugetsu_steer", "arguments": {"task": "$task", "text": "also say hello"}},
            {"write": gate.path(), "text": "open\n"},
            {"tool": "kugetsu_status", "arguments": {"task": "$task"},
             "until": {"status": ["completed", "failed", "cancelled", "timed_out", "paused"]}},
            {"tool": "kugetsu_logs", "arguments": {"task": "$task"}},
            {"tool": "kugetsu_diff", "arguments": {"task": "$task"}},
            {"tool": "kugetsu_merge", "arguments": {"task": "$task"}},
            {"tool": "kugetsu_status", "arguments": {}},
            {"tool": "kugetsu_submit", "arguments": {"prompt": "Wait.", "model": held, "priority": "high"}, "save": {"held": "task"}},
            {"tool": "kugetsu_cancel", "arguments": {"task": "$held"}},
            {"tool": "kugetsu_status", "arguments": {"task": "$held"}, "until": {"status": ["cancelled"]}},
            {"tool": "kugetsu_status", "arguments": {"task": "no-such-task"}},
            {"tool": "kugetsu_submit", "arguments": {"prompt": "x", "repo": not_git, "model": model}},
            {"tool": "kugetsu_submit", "arguments": {"prompt": "x", "priority": "urgent"}},
        ]),
    )
    .await;
    let steps = calls(&report);
    let submitted = &steps[0];
    assert_eq!(submitted["is_error"], false, "{submitted}");
    let id = submitted["json"]["task"].as_str().unwrap().to_owned();
    assert_eq!(submitted["json"], json!({"task": id}));
    assert_eq!(steps[1]["json"]["status"], "running", "{}", steps[1]);
    assert_eq!(steps[1]["json"]["id"], id.as_str(), "{}", steps[1]);
    assert_eq!(
        steps[3]["json"],
        json!({"task": id, "steered": true}),
        "{}",
        steps[3]
    );
    assert_eq!(steps[4]["json"]["status"], "completed", "{}", steps[4]);

    let logs = &steps[5]["json"];
    assert_eq!(logs["task"], id.as_str());
    let kinds: Vec<&str> = logs["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"steered"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"finished"), "{kinds:?}");
    assert!(!kinds.contains(&"text_delta"), "{kinds:?}");

    let diff = &steps[6];
    assert_eq!(diff["is_error"], false, "{diff}");
    assert!(
        diff["json"]["diff"]
            .as_str()
            .unwrap()
            .contains("+from-a-shadow"),
        "{diff}"
    );

    let merged = &steps[7]["json"];
    assert_eq!(merged["landed"][0]["task"], id.as_str(), "{merged}");
    assert_eq!(merged["landed"][0]["into"], "main", "{merged}");
    assert_ne!(repo.git(&["rev-parse", "main"]), main_before, "main moved");
    assert_eq!(repo.git(&["show", "main:shadow.txt"]), "from-a-shadow\n");

    let listed = &steps[8]["json"]["tasks"];
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str()),
        "{listed}"
    );

    let held_id = steps[9]["json"]["task"].as_str().unwrap().to_owned();
    let cancel = &steps[10];
    assert_eq!(cancel["is_error"], false, "{cancel}");
    assert_eq!(cancel["json"]["task"], held_id.as_str(), "{cancel}");
    assert!(
        ["cancelled", "cancelling"].contains(&cancel["json"]["status"].as_str().unwrap()),
        "{cancel}"
    );
    assert_eq!(steps[11]["json"]["status"], "cancelled", "{}", steps[11]);

    let unknown = &steps[12];
    assert_eq!(unknown["is_error"], true, "{unknown}");
    let text = unknown["text"].as_str().unwrap();
    assert!(text.contains("no such task"), "{text}");
    assert!(text.contains("kugetsu_status"), "{text}");
    let not_a_repo = &steps[13];
    assert_eq!(not_a_repo["is_error"], true, "{not_a_repo}");
    assert!(
        not_a_repo["text"]
            .as_str()
            .unwrap()
            .contains("not a git repository"),
        "{not_a_repo}"
    );
    let bad_priority = &steps[14];
    assert_eq!(bad_priority["is_error"], true, "{bad_priority}");
    assert!(
        bad_priority["text"]
            .as_str()
            .unwrap()
            .contains("`priority`"),
        "{bad_priority}"
    );
}

/// `kugetsu mcp` spoken to by hand, after the `initialize` handshake.
struct ByHand {
    server: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl ByHand {
    async fn start(repo: &TestRepo) -> ByHand {
        let mut server = tokio::process::Command::new(bin_path("kugetsu"))
            .args(["mcp", "--state-dir"])
            .arg(repo.state_dir())
            .current_dir(repo.repo())
            .env("HOME", repo.home())
            .env("XDG_CONFIG_HOME", repo.home().join(".config"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = server.stdin.take();
        let lines = BufReader::new(server.stdout.take().unwrap()).lines();
        let mut this = ByHand {
            server,
            stdin,
            lines,
        };
        this.send(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"by-hand","version":"0"}}}"#,
        )
        .await;
        let init = this.response(1).await;
        assert_eq!(init["result"]["serverInfo"]["name"], "kugetsu", "{init}");
        assert!(
            init["result"]["capabilities"]["tools"].is_object(),
            "{init}"
        );
        this.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        this
    }

    /// Writes `message` as one line to the server's stdin.
    async fn send(&mut self, message: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(message.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// The next message on stdout matching `pick`; every line must be JSON.
    async fn next(&mut self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let wait = async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("stdout closed before {what}"));
                let message: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout carries only JSON-RPC ({e}): {line}"));
                if pick(&message) {
                    return message;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("no {what}"))
    }

    async fn response(&mut self, id: u64) -> Value {
        self.next(&format!("response {id}"), |m| m["id"] == id)
            .await
    }

    /// Waits for the server to exit; returns whether it exited 0.
    async fn exit(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(90), self.server.wait())
            .await
            .expect("the server exits")
            .unwrap()
            .success()
    }
}

#[tokio::test]
async fn protocol_garbage_gets_errors_and_the_session_goes_on() {
    let repo = TestRepo::new();
    let mut mcp = ByHand::start(&repo).await;
    // Not JSON at all, then JSON that is no valid request: neither ends the session.
    mcp.send("this is not json {").await;
    mcp.send(
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"kugetsu_run","arguments":"not an object"}}"#,
    )
    .await;
    let invalid = mcp.response(2).await;
    assert!(invalid["error"]["code"].is_i64(), "{invalid}");
    mcp.send(r#"{"jsonrpc":"2.0","id":3,"method":"no/such/method","params":{}}"#)
        .await;
    let unknown = mcp.response(3).await;
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
    // A well-formed call with bad arguments is a tool error, not a protocol error.
    mcp.send(
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"kugetsu_cancel","arguments":{}}}"#,
    )
    .await;
    let tool_error = mcp.response(4).await;
    assert_eq!(tool_error["result"]["isError"], true, "{tool_error}");
    assert!(
        tool_error["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("`task` is required"),
        "{tool_error}"
    );
    mcp.send(r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#)
        .await;
    let list = mcp.response(5).await;
    assert_eq!(
        list["result"]["tools"].as_array().unwrap().len(),
        8,
        "{list}"
    );
    // Closing stdin ends the server cleanly.
    mcp.stdin = None;
    assert!(mcp.exit().await, "kugetsu mcp exits 0 when its client goes");
}

/// Starts a `kugetsu_run` held at a gate and waits for its `tool bash` progress; returns the
/// task id from its `started` progress.
async fn held_run(mcp: &mut ByHand, repo: &TestRepo) -> String {
    let gate = Gate::new(repo.root(), "gate");
    let held = Script::new()
        .bash("Waiting.", &gate.wait_command())
        .text("Never reached.")
        .write(&repo.root().join("scripts/held.json"));
    let call = json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "kugetsu_run", "arguments": {"prompt": "wait", "model": held},
                   "_meta": {"progressToken": "p7"}},
    });
    mcp.send(&call.to_string()).await;
    let started = mcp
        .next("the started progress", |m| {
            m["method"] == "notifications/progress"
                && m["params"]["message"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("task "))
        })
        .await;
    assert_eq!(started["params"]["progressToken"], "p7", "{started}");
    let id = started["params"]["message"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    mcp.next("the tool progress", |m| {
        m["params"]["message"]
            .as_str()
            .is_some_and(|t| t.starts_with("tool bash"))
    })
    .await;
    id
}

#[tokio::test]
async fn a_client_that_goes_mid_run_leaves_a_cleanly_cancelled_task() {
    let repo = TestRepo::new();
    let mut mcp = ByHand::start(&repo).await;
    let id = held_run(&mut mcp, &repo).await;
    mcp.stdin = None;
    assert!(
        mcp.exit().await,
        "kugetsu mcp exits 0 once its shadow stopped"
    );
    // Finished before the server exited: nothing left to wait for.
    let text = std::fs::read_to_string(repo.task_dir(&id).join("events.jsonl")).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "finished", "{last}");
    assert_eq!(last["status"], "cancelled", "{last}");
}

#[tokio::test]
async fn sigterm_mid_run_cancels_the_shadow_before_exiting() {
    let repo = TestRepo::new();
    let mut mcp = ByHand::start(&repo).await;
    let id = held_run(&mut mcp, &repo).await;
    let pid = nix::unistd::Pid::from_raw(mcp.server.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(mcp.exit().await, "kugetsu mcp exits 0 after a SIGTERM");
    let text = std::fs::read_to_string(repo.task_dir(&id).join("events.jsonl")).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "cancelled", "{last}");
}

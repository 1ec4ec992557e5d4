//! MCP servers as shadow tools (docs/mcp.md), against real third-party servers from npm
//! (`@modelcontextprotocol/server-everything` and `server-filesystem`, installed by `.ci/run`
//! into `target/mcp-servers`) and a deliberately broken one: their tools reach the model as
//! `NAME__TOOL`, calls are journaled like built-in ones and confined by the sandbox, a broken
//! server gives tool errors while the task goes on, an interrupted call is never re-run, and
//! no server process outlives its shadow.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kugetsu_tests::events::str_of;
use kugetsu_tests::{Daemon, FakeLlm, TestRepo, Turn, journal, procs};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

/// Where `.ci/run` installs the npm servers; `KUGETSU_MCP_SERVERS` points elsewhere.
fn servers_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KUGETSU_MCP_SERVERS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mcp-servers"),
        PathBuf::from,
    );
    let found = dir
        .join("node_modules/@modelcontextprotocol/server-everything/dist/index.js")
        .is_file()
        && dir
            .join("node_modules/@modelcontextprotocol/server-filesystem/dist/index.js")
            .is_file();
    if found {
        return Some(dir.canonicalize().unwrap());
    }
    let message = format!(
        "the npm MCP servers are not installed in {} (run .ci/run, or npm install --prefix \
         target/mcp-servers @modelcontextprotocol/server-everything \
         @modelcontextprotocol/server-filesystem)",
        dir.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{message}");
    }
    eprintln!("\n\n!!! SKIPPED: {message} !!!\n");
    None
}

fn server_js(dir: &Path, package: &str) -> String {
    dir.join(format!(
        "node_modules/@modelcontextprotocol/{package}/dist/index.js"
    ))
    .display()
    .to_string()
}

/// Writes `text` as the task's config file and returns its path.
fn config(repo: &TestRepo, text: &str) -> PathBuf {
    let path = repo.root().join("kugetsu-config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A small MCP server that misbehaves on purpose, by `MODE`: `answer` answers `initialize`
/// and `tools/list` (tools `ping`, `hang`, `crash`, `slow_append`) and then does what the
/// called tool says; `garbage` prints non-JSON and never answers.
const BROKEN_SERVER: &str = r#"
import json, sys, time
mode = sys.argv[1]
if mode == "garbage":
    print("this is not JSON-RPC", flush=True)
    print("{oops", flush=True)
    time.sleep(600)
    sys.exit(0)
tools = [{"name": n, "description": d, "inputSchema": {"type": "object", "properties": {}}}
         for n, d in [("ping", "answers pong"), ("hang", "never answers"), ("crash", "exits"),
                      ("slow_append", "appends a line to ran.txt, then sleeps")]]
def send(m):
    sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    m = json.loads(line)
    method, id_ = m.get("method"), m.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": id_, "result": {"protocolVersion": m["params"]["protocolVersion"],
              "capabilities": {"tools": {}}, "serverInfo": {"name": "broken", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": id_, "result": {"tools": tools}})
    elif method == "tools/call":
        name = m["params"]["name"]
        if name == "ping":
            send({"jsonrpc": "2.0", "id": id_, "result": {"content": [{"type": "text", "text": "pong"}]}})
        if name == "crash":
            sys.exit(3)
        if name == "slow_append":
            with open(sys.argv[2], "a") as f:
                f.write("ran\n")
            time.sleep(600)
        if name == "hang":
            time.sleep(600)
"#;

fn broken_script(repo: &TestRepo) -> String {
    // In the side dir, which the tests' sandbox lets shadows read and write.
    let path = repo.side_dir().join("broken_mcp.py");
    std::fs::write(&path, BROKEN_SERVER).unwrap();
    path.display().to_string()
}

/// An extra argument (server-everything ignores it) that finds this test's server processes.
const MARK: &str = "kugetsu-mcp-test-everything-7f3a";

#[tokio::test]
async fn everything_server_tools_reach_the_model_and_are_journaled() {
    let Some(dir) = servers_dir() else { return };
    let repo = TestRepo::new();
    let config = config(
        &repo,
        &format!(
            "[mcp.everything]\ncommand = \"node\"\nargs = [{:?}, \"stdio\", \"{MARK}\"]\nenv = {{ MCP_TEST_MARK = \"set-by-config\" }}\n",
            server_js(&dir, "server-everything")
        ),
    );
    let server = FakeLlm::openai();
    server.push(
        Turn::new()
            .tool_call(
                "everything__echo",
                json!({"message": "hello from the shadow"}),
            )
            .tool_call("everything__get-sum", json!({"a": 2, "b": 40}))
            .tool_call("everything__get-env", json!({})),
    );
    server.push(Turn::text("Echoed, added and looked."));
    let out = repo
        .run()
        .llm(&server)
        .arg("--config")
        .arg(&config)
        .prompt("Use the MCP tools.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    server.assert_all_served();

    // The model was offered the server's tools, with their schemas, beside the built-ins.
    let first = server.request(1);
    let tools = first.tool_names();
    for name in ["everything__echo", "everything__get-sum", "bash", "read"] {
        assert!(
            tools.contains(&name.to_owned()),
            "{name} offered: {tools:?}"
        );
    }
    let offered = first.json()["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "everything__echo")
        .cloned()
        .unwrap();
    assert_eq!(
        offered["function"]["parameters"]["properties"]["message"]["type"], "string",
        "{offered}"
    );

    let starts = out.events.tool_starts();
    let ends = out.events.tool_ends();
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert_eq!(str_of(starts[0], "tool"), "everything__echo");
    assert_eq!(starts[0]["args"]["message"], "hello from the shadow");
    for end in &ends {
        assert_eq!(end["ok"], true, "{end}");
    }
    let echo = str_of(ends[0], "output");
    assert!(echo.contains("hello from the shadow"), "{echo}");
    let sum = str_of(ends[1], "output");
    assert!(sum.contains("42"), "{sum}");
    // The server runs with the scrubbed environment plus its configured env: no API key.
    let env = str_of(ends[2], "output");
    assert!(env.contains("set-by-config"), "{env}");
    assert!(
        !env.contains("OPENAI_API_KEY"),
        "the key leaked to the server: {env}"
    );

    // What the model got next is what the tools said.
    let second = server.request(2);
    let told = second.tool_result(str_of(starts[0], "call_id"));
    assert!(told.content.contains("hello from the shadow"), "{told:?}");
    let told = second.tool_result(str_of(starts[1], "call_id"));
    assert!(told.content.contains("42"), "{told:?}");

    // Journaled like built-in tools: an intent, then one result, for each call.
    let records = journal::read_clean(&repo.task_dir(out.task_id()).join("journal.jsonl"));
    journal::assert_tool_calls_paired(&records);
    let intents = journal::intents(&records);
    assert_eq!(intents.len(), 3, "{}", journal::describe(&records));
    let results = journal::results(&records);
    let (ok, output) = results[str_of(starts[1], "call_id")][0];
    assert!(ok && output.contains("42"), "{output}");
    // The server died with its shadow.
    procs::wait_until_gone(MARK, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn the_filesystem_server_is_held_by_the_sandbox() {
    let Some(dir) = servers_dir() else { return };
    let repo = TestRepo::new();
    // A secret the shadow must not read: kugetsu's state dir is outside every sandbox.
    std::fs::create_dir_all(repo.state_dir()).unwrap();
    let secret = repo.state_dir().join("secret.txt");
    std::fs::write(&secret, "the-secret-value\n").unwrap();
    // The server is configured with the widest root: only the sandbox stands in the way.
    let config = config(
        &repo,
        &format!(
            "[mcp.filesystem]\ncommand = \"node\"\nargs = [{:?}, \"/\"]\n",
            server_js(&dir, "server-filesystem")
        ),
    );
    let work = repo.repo().canonicalize().unwrap();
    let note = work.join("note.txt").display().to_string();
    let server = FakeLlm::openai();
    server.push(Turn::new().tool_call(
        "filesystem__write_file",
        json!({"path": note, "content": "written through MCP\n"}),
    ));
    server.push(
        Turn::new()
            .tool_call("filesystem__read_file", json!({"path": note}))
            .tool_call(
                "filesystem__read_file",
                json!({"path": secret.display().to_string()}),
            ),
    );
    server.push(Turn::text("Done."));
    let out = repo
        .run()
        .llm(&server)
        .arg("--no-worktree")
        .arg("--config")
        .arg(&config)
        .arg("--mcp")
        .arg("filesystem")
        .prompt("Write and read a note.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let ends = out.events.tool_ends();
    assert_eq!(ends.len(), 3, "{ends:?}");
    assert_eq!(ends[0]["ok"], true, "{}", ends[0]);
    assert_eq!(
        std::fs::read_to_string(work.join("note.txt")).unwrap(),
        "written through MCP\n"
    );
    assert_eq!(ends[1]["ok"], true, "{}", ends[1]);
    assert!(str_of(ends[1], "output").contains("written through MCP"));
    // Outside the worktree: the server's own rules allow it, the sandbox does not.
    assert_eq!(ends[2]["ok"], false, "{}", ends[2]);
    assert!(
        !str_of(ends[2], "output").contains("the-secret-value"),
        "{}",
        ends[2]
    );
    let told = server.request(3).tool_result(str_of(ends[2], "call_id"));
    assert!(!told.content.contains("the-secret-value"), "{told:?}");
}

#[tokio::test]
async fn unknown_mcp_names_are_usage_errors_naming_the_configured_ones() {
    let repo = TestRepo::new();
    let config = config(
        &repo,
        "[mcp.alpha]\ncommand = \"true\"\n[mcp.beta]\nurl = \"http://127.0.0.1:9/mcp\"\n",
    );
    let out = repo
        .run()
        .model("scripted/demo")
        .arg("--config")
        .arg(&config)
        .arg("--mcp")
        .arg("gamma")
        .prompt("anything")
        .output()
        .await;
    out.assert_code(2);
    let stderr = out.stderr.clone();
    assert!(
        stderr.contains("gamma") && stderr.contains("alpha, beta"),
        "{stderr}"
    );

    let bad = config_text_refused(&repo, "[mcp.\"a.b\"]\ncommand = \"x\"\n").await;
    assert!(bad.contains("mcp.a.b"), "{bad}");
    let bad = config_text_refused(&repo, "[mcp.x]\ncommand = \"x\"\nurl = \"http://h/\"\n").await;
    assert!(bad.contains("mcp.x") && bad.contains("not both"), "{bad}");
    let bad = config_text_refused(&repo, "[mcp.x]\nargs = [\"a\"]\n").await;
    assert!(bad.contains("mcp.x"), "{bad}");
    let bad = config_text_refused(&repo, "[mcp.x]\ncommand = \"x\"\ntimeout = \"soon\"\n").await;
    assert!(bad.contains("mcp.x.timeout"), "{bad}");
}

async fn config_text_refused(repo: &TestRepo, text: &str) -> String {
    let config = config(repo, text);
    let out = repo
        .run()
        .model("scripted/demo")
        .arg("--config")
        .arg(&config)
        .prompt("anything")
        .output()
        .await;
    out.assert_code(2);
    out.stderr
}

#[tokio::test]
async fn broken_servers_give_tool_errors_and_the_task_goes_on() {
    let repo = TestRepo::new();
    let script = broken_script(&repo);
    let config = config(
        &repo,
        &format!(
            "[mcp.gone]\ncommand = \"sh\"\nargs = [\"-c\", \"exit 3\"]\nstartup_timeout = \"10s\"\n\
             [mcp.garbage]\ncommand = \"python3\"\nargs = [{script:?}, \"garbage\"]\nstartup_timeout = \"2s\"\n\
             [mcp.flaky]\ncommand = \"python3\"\nargs = [{script:?}, \"answer\", \"unused\"]\ntimeout = \"2s\"\n"
        ),
    );
    let server = FakeLlm::openai();
    server.push(
        Turn::new()
            .tool_call("gone__anything", json!({}))
            .tool_call("garbage__anything", json!({}))
            .tool_call("flaky__hang", json!({}))
            .tool_call("flaky__crash", json!({})),
    );
    server.push(Turn::text("Every server failed; finishing anyway."));
    let out = repo
        .run()
        .llm(&server)
        .arg("--config")
        .arg(&config)
        .prompt("Try the broken servers.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let tools = server.request(1).tool_names();
    assert!(tools.contains(&"flaky__hang".to_owned()), "{tools:?}");
    assert!(!tools.iter().any(|t| t.starts_with("gone__")), "{tools:?}");
    let ends = out.events.tool_ends();
    assert_eq!(ends.len(), 4, "{ends:?}");
    for (end, server_name, what) in [
        (ends[0], "gone", "exited with code 3"),
        (ends[1], "garbage", "initialize"),
        (ends[2], "flaky", "did not answer within 2 s"),
        (ends[3], "flaky", "stopped during the call"),
    ] {
        assert_eq!(end["ok"], false, "{end}");
        let output = str_of(end, "output");
        assert!(
            output.contains(&format!("MCP server `{server_name}`")) && output.contains(what),
            "{server_name}: {output}"
        );
    }
    assert_eq!(
        out.finished()["result"],
        "Every server failed; finishing anyway."
    );
    procs::wait_until_gone(&script, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_worker_killed_during_an_mcp_call_resumes_without_rerunning_it() {
    let repo = TestRepo::new();
    let script = broken_script(&repo);
    let ran = repo.side_dir().join("ran.txt");
    let config = config(
        &repo,
        &format!(
            "[mcp.slow]\ncommand = \"python3\"\nargs = [{script:?}, \"answer\", {:?}]\n",
            ran.display().to_string()
        ),
    );
    let server = FakeLlm::openai();
    server.push(Turn::text("Appending.").tool_call("slow__slow_append", json!({})));
    server.push(Turn::text("The call was interrupted; stopping."));
    let mut run = repo
        .run()
        .llm(&server)
        .arg("--config")
        .arg(&config)
        .prompt("Append once.")
        .spawn()
        .await;
    let started = run.wait_for("started", Duration::from_secs(60)).await;
    let worker = i32::try_from(started["pid"].as_u64().unwrap()).unwrap();
    let tool = run.wait_for("tool_start", Duration::from_secs(60)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&ran).unwrap_or_default().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the MCP call never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    run.wait_for("restarted", Duration::from_secs(60)).await;
    let out = run.finish().await;
    out.assert_code(0).assert_status("completed");
    assert_eq!(
        std::fs::read_to_string(&ran).unwrap(),
        "ran\n",
        "the interrupted MCP call ran exactly once"
    );
    let call_id = str_of(&tool, "call_id");
    let told = server.request(2).tool_result(call_id);
    assert!(
        told.content.contains("interrupted by a restart"),
        "the model learns the call was interrupted: {told:?}"
    );
    // The dead worker's server did not outlive it, nor did the second worker's.
    procs::wait_until_gone(&script, Duration::from_secs(10)).await;
}

/// server-everything in its streamable HTTP mode, killed on drop.
struct HttpServer {
    child: std::process::Child,
    url: String,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_server(dir: &Path) -> HttpServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("node")
        .arg(server_js(dir, "server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = HttpServer {
        child,
        url: format!("http://127.0.0.1:{port}/mcp"),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "server-everything never listened on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

#[tokio::test]
async fn a_streamable_http_server_serves_its_tools() {
    let Some(dir) = servers_dir() else { return };
    let remote = http_server(&dir).await;
    let repo = TestRepo::new();
    let config = config(&repo, &format!("[mcp.remote]\nurl = {:?}\n", remote.url));
    let server = FakeLlm::anthropic();
    server.push(
        Turn::new()
            .tool_call("remote__echo", json!({"message": "over HTTP"}))
            .tool_call("remote__get-sum", json!({"a": 20, "b": 22})),
    );
    server.push(Turn::text("Both answered."));
    let out = repo
        .run()
        .llm(&server)
        .arg("--config")
        .arg(&config)
        .arg("--mcp")
        .arg("remote")
        .prompt("Use the remote server.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    assert!(
        server
            .request(1)
            .tool_names()
            .contains(&"remote__echo".to_owned())
    );
    let ends = out.events.tool_ends();
    assert_eq!(ends.len(), 2, "{ends:?}");
    assert_eq!(ends[0]["ok"], true, "{}", ends[0]);
    assert!(
        str_of(ends[0], "output").contains("over HTTP"),
        "{}",
        ends[0]
    );
    assert!(str_of(ends[1], "output").contains("42"), "{}", ends[1]);
    let told = server.request(2).tool_result(str_of(ends[0], "call_id"));
    assert!(told.content.contains("over HTTP"), "{told:?}");
}

#[tokio::test]
async fn submit_takes_the_mcp_field_and_refuses_unknown_names() {
    let repo = TestRepo::new();
    let script = broken_script(&repo);
    let server = FakeLlm::openai();
    let daemon = Daemon::builder(&repo)
        .config(format!(
            "[mcp.flaky]\ncommand = \"python3\"\nargs = [{script:?}, \"answer\", \"unused\"]\n"
        ))
        .llm(&server)
        .start()
        .await;
    let mut rpc = daemon.rpc().await;
    let params = |mcp: serde_json::Value| {
        json!({
            "prompt": "Ping.",
            "repo": repo.repo(),
            "model": server.model_arg(),
            "mcp": mcp,
        })
    };
    let refused = rpc
        .call("submit", params(json!(["nope"])))
        .await
        .unwrap_err();
    assert_eq!(refused["code"], -32602, "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("nope") && message.contains("flaky"),
        "{message}"
    );

    server.push(Turn::new().tool_call("flaky__ping", json!({})));
    server.push(Turn::text("Pinged."));
    let id = rpc.call("submit", params(json!(["flaky"]))).await.unwrap()["task"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = daemon.wait_finished(&id, Duration::from_secs(120)).await;
    let end = events.tool_ends()[0];
    assert_eq!(end["ok"], true, "{end}");
    assert_eq!(str_of(end, "output"), "pong");

    server.push(Turn::text("No tools needed."));
    let id = rpc.call("submit", params(json!(["none"]))).await.unwrap()["task"]
        .as_str()
        .unwrap()
        .to_owned();
    daemon.wait_finished(&id, Duration::from_secs(120)).await;
    let tools = server.request(3).tool_names();
    assert!(!tools.iter().any(|t| t.starts_with("flaky__")), "{tools:?}");
    assert!(
        server
            .request(1)
            .tool_names()
            .contains(&"flaky__ping".to_owned())
    );
    procs::wait_until_gone(&script, Duration::from_secs(10)).await;
}

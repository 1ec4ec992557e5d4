//! The bash tool end to end: timeouts kill the whole process group, the environment is
//! scrubbed of secrets, long output is capped with the full text kept on disk.

use std::path::Path;
use std::time::Duration;

use kugetsu_tests::events::str_of;
use kugetsu_tests::fake_llm::Wire;
use kugetsu_tests::{FakeLlm, TestRepo, Turn, procs};
use serde_json::json;

#[tokio::test]
async fn bash_timeout_kills_the_whole_process_group() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(Turn::new().tool_call(
        "bash",
        json!({"command": "sleep 300.4242 & sleep 301.4242", "timeout_s": 1}),
    ));
    server.push(Turn::text("That took too long."));
    let out = repo
        .run()
        .llm(&server)
        .prompt("Wait a while.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let end = out.events.tool_ends()[0];
    assert_eq!(end["ok"], false, "{end}");
    let output = str_of(end, "output").to_lowercase();
    assert!(
        output.contains("timed out") || output.contains("timeout"),
        "the output says the command timed out: {output}"
    );
    // The background sleep was in the tool's process group too.
    procs::wait_until_gone("300.4242", Duration::from_secs(10)).await;
    procs::wait_until_gone("301.4242", Duration::from_secs(10)).await;
}

const OPENAI_SECRET: &str = "sk-test-SECRET123";
const GITHUB_SECRET: &str = "ghp_SECRET456";
const ANTHROPIC_SECRET: &str = "sk-ant-SECRET789";

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn bash_environment_is_scrubbed_of_secrets() {
    let repo = TestRepo::new();
    let server = FakeLlm::builder(Wire::OpenAi)
        .model("gpt-4.1-mini")
        .api_key(OPENAI_SECRET)
        .start();
    server.push(Turn::new().tool_call("bash", json!({"command": "env"})));
    server.push(Turn::text("Looked at the environment."));
    let out = repo
        .run()
        .llm(&server)
        .env("GITHUB_TOKEN", GITHUB_SECRET)
        .env("ANTHROPIC_API_KEY", ANTHROPIC_SECRET)
        .prompt("Show the environment.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let end = out.events.tool_ends()[0];
    assert_eq!(end["ok"], true, "{end}");
    let output = str_of(end, "output");
    assert!(output.contains("PATH="), "env ran: {output}");
    for secret in [OPENAI_SECRET, GITHUB_SECRET, ANTHROPIC_SECRET] {
        assert!(!output.contains(secret), "{secret} leaked into: {output}");
    }

    // The full output on disk.
    let id = out.task_id();
    let call_id = str_of(end, "call_id");
    let log = repo
        .task_dir(id)
        .join("tool-output")
        .join(format!("{call_id}.log"));
    let full = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("the full output is kept in {}: {e}", log.display()));
    assert!(full.contains("PATH="));
    // Nowhere in the task's files, the worktree, or what went to the model.
    let mut places = files_under(&repo.task_dir(id));
    places.extend(
        files_under(&repo.worktree(id))
            .into_iter()
            .filter(|p| !p.components().any(|c| c.as_os_str() == ".git")),
    );
    for path in places {
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        for secret in [OPENAI_SECRET, GITHUB_SECRET, ANTHROPIC_SECRET] {
            assert!(
                !text.contains(secret),
                "{secret} leaked into {}",
                path.display()
            );
        }
    }
    let second = String::from_utf8_lossy(&server.request(2).body).into_owned();
    for secret in [OPENAI_SECRET, GITHUB_SECRET, ANTHROPIC_SECRET] {
        assert!(!second.contains(secret), "{secret} was sent to the model");
    }
}

#[tokio::test]
async fn long_bash_output_is_capped_and_kept_whole_on_disk() {
    let repo = TestRepo::new();
    let server = FakeLlm::anthropic();
    server.push(Turn::new().tool_call(
        "bash",
        json!({"command": "seq 1 200000; echo LAST-LINE-MARKER"}),
    ));
    server.push(Turn::text("Lots of numbers."));
    let out = repo.run().llm(&server).prompt("Count.").output().await;
    out.assert_code(0).assert_status("completed");
    let end = out.events.tool_ends()[0];
    assert_eq!(end["ok"], true);
    assert_eq!(end["truncated"], true, "1.3 MB of output is capped");
    let output = str_of(end, "output");
    assert!(output.len() < 200_000, "capped: {} bytes", output.len());
    // Head and tail survive.
    assert!(
        output.contains("\n2\n") || output.starts_with("1\n"),
        "head kept"
    );
    assert!(output.contains("LAST-LINE-MARKER"), "tail kept");
    let log = repo
        .task_dir(out.task_id())
        .join("tool-output")
        .join(format!("{}.log", str_of(end, "call_id")));
    let full = std::fs::read_to_string(&log).unwrap();
    assert!(full.contains("\n100000\n") && full.contains("LAST-LINE-MARKER"));
    // The model sees the capped output, not 1.3 MB.
    let result = server.request(2).tool_result(str_of(end, "call_id"));
    assert!(result.content.len() < 200_000);
    assert!(result.content.contains("LAST-LINE-MARKER"));
}

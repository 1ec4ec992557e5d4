//! Tool semantics end to end: what each tool does with its arguments, and that a
//! tool error is a result the model sees, never the end of the task.

use kugetsu_tests::events::str_of;
use kugetsu_tests::{FakeLlm, RunOutput, TestRepo, Turn};
use serde_json::json;

async fn run(repo: &TestRepo, server: &FakeLlm) -> RunOutput {
    let out = repo
        .run()
        .llm(server)
        .prompt("Use the tools.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    server.assert_all_served();
    out
}

#[tokio::test]
async fn edit_needs_an_exact_unique_match() {
    let repo = TestRepo::with_files(&[("dup.txt", "x = 1\ny = 2\nx = 1\n")]);
    let server = FakeLlm::openai();
    server.push(
        Turn::new()
            .tool_call(
                "edit",
                json!({"path": "dup.txt", "old_text": "x = 1", "new_text": "x = 3"}),
            )
            .tool_call(
                "edit",
                json!({"path": "dup.txt", "old_text": "z = 9", "new_text": "z = 0"}),
            ),
    );
    server.push(Turn::new().tool_call(
        "edit",
        json!({"path": "dup.txt", "old_text": "x = 1\ny = 2", "new_text": "x = 3\ny = 2"}),
    ));
    server.push(Turn::text("Edited the first x."));
    let out = run(&repo, &server).await;
    let ends = out.events.tool_ends();
    assert_eq!(
        ends[0]["ok"], false,
        "an ambiguous match is refused: {}",
        ends[0]
    );
    assert_eq!(
        ends[1]["ok"], false,
        "a missing match is refused: {}",
        ends[1]
    );
    assert_ne!(
        str_of(ends[0], "output"),
        str_of(ends[1], "output"),
        "the two errors say different things"
    );
    assert_eq!(ends[2]["ok"], true, "{}", ends[2]);
    let worktree = repo.worktree(out.task_id());
    assert_eq!(
        std::fs::read_to_string(worktree.join("dup.txt")).unwrap(),
        "x = 3\ny = 2\nx = 1\n"
    );
}

#[tokio::test]
async fn read_numbers_lines_and_honours_offset_and_limit() {
    let repo =
        TestRepo::with_files(&[("words.txt", "alpha\nbravo\ncharlie\ndelta\necho\nfoxtrot\n")]);
    let server = FakeLlm::anthropic();
    server.push(
        Turn::new()
            .tool_call(
                "read",
                json!({"path": "words.txt", "offset": 3, "limit": 2}),
            )
            .tool_call("read", json!({"path": "missing.txt"})),
    );
    server.push(Turn::text("Read them."));
    let out = run(&repo, &server).await;
    let ends = out.events.tool_ends();
    let window = str_of(ends[0], "output");
    assert_eq!(ends[0]["ok"], true);
    assert!(window.contains("delta"), "{window}");
    assert!(
        !window.contains("alpha") && !window.contains("foxtrot"),
        "{window}"
    );
    let delta_line = window.lines().find(|l| l.contains("delta")).unwrap();
    assert!(delta_line.contains('4'), "line-numbered: {window}");
    assert_eq!(ends[1]["ok"], false);
    assert!(str_of(ends[1], "output").contains("missing.txt"));
}

#[tokio::test]
async fn grep_searches_with_a_regex_and_respects_gitignore() {
    let repo = TestRepo::with_files(&[
        (".gitignore", "ignored/\n"),
        ("src/found.rs", "fn main() { let needle_42 = 1; }\n"),
        ("docs/other.md", "nothing to see\n"),
    ]);
    let server = FakeLlm::openai();
    server.push(Turn::new().tool_call(
        "write",
        json!({"path": "ignored/hidden.rs", "content": "let needle_42 = 2;\n"}),
    ));
    server.push(
        Turn::new()
            .tool_call("grep", json!({"pattern": "needle_[0-9]+"}))
            .tool_call("grep", json!({"pattern": "needle", "glob": "*.md"})),
    );
    server.push(Turn::text("Found it."));
    let out = run(&repo, &server).await;
    let found = out.events.tool_end_of("grep", 0);
    let output = str_of(found, "output");
    assert_eq!(found["ok"], true, "{found}");
    assert!(output.contains("src/found.rs"), "{output}");
    assert!(
        !output.contains("ignored/"),
        ".gitignore is respected: {output}"
    );
    let none = str_of(out.events.tool_end_of("grep", 1), "output");
    assert!(!none.contains("src/found.rs"), "the glob filters: {none}");
}

#[tokio::test]
async fn bash_runs_in_the_worktree_and_reports_failure() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(
        Turn::new()
            .tool_call("bash", json!({"command": "pwd"}))
            .tool_call("bash", json!({"command": "echo to-stderr >&2; exit 3"})),
    );
    server.push(Turn::text("Ran both."));
    let out = run(&repo, &server).await;
    let pwd = out.events.tool_end_of("bash", 0);
    assert_eq!(pwd["ok"], true);
    let worktree = repo.worktree(out.task_id());
    assert_eq!(
        str_of(pwd, "output").lines().next().map(str::trim),
        worktree.to_str(),
        "bash runs in the worktree"
    );
    let failed = out.events.tool_end_of("bash", 1);
    assert_eq!(
        failed["ok"], false,
        "a non-zero exit is a failed call: {failed}"
    );
    let output = str_of(failed, "output");
    assert!(output.contains("to-stderr"), "stderr is captured: {output}");
    assert!(output.contains('3'), "the exit code is reported: {output}");
}

#[tokio::test]
async fn bad_tool_calls_are_tool_errors_and_the_task_goes_on() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(
        Turn::text("Trying some things.")
            .tool_call_raw("write", r#"{"path": "a.txt", "content": "#)
            .tool_call("no_such_tool", json!({}))
            .tool_call("read", json!({})),
    );
    server.push(Turn::text("Recovered."));
    let out = run(&repo, &server).await;
    let ends = out.events.tool_ends();
    assert_eq!(ends.len(), 3);
    for end in &ends {
        assert_eq!(end["ok"], false, "{end}");
        assert!(!str_of(end, "output").is_empty());
    }
    assert!(str_of(ends[1], "output").contains("no_such_tool"));
    assert!(!repo.worktree(out.task_id()).join("a.txt").exists());
    assert_eq!(out.finished()["result"], "Recovered.");
}

#[tokio::test]
async fn base_ref_starts_the_worktree_at_that_commit() {
    let repo = TestRepo::new();
    repo.write("hello.txt", "hello second commit\n");
    repo.commit_all("second");
    let server = FakeLlm::anthropic();
    server.push(Turn::new().tool_call("read", json!({"path": "hello.txt"})));
    server.push(Turn::text("It is the first version."));
    let out = repo
        .run()
        .llm(&server)
        .args(["--base", "HEAD~1"])
        .prompt("Read hello.txt.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let read = out.events.tool_end_of("read", 0);
    assert!(str_of(read, "output").contains("hello world"), "{read}");
    let worktree = repo.worktree(out.task_id());
    assert_eq!(
        std::fs::read_to_string(worktree.join("hello.txt")).unwrap(),
        "hello world\n"
    );
    assert_eq!(out.finished()["changed_files"], json!([]));
    let base = repo.git(&["rev-parse", "HEAD~1"]);
    let branch_base = repo.git(&[
        "merge-base",
        &format!("kugetsu/{}", out.task_id()),
        "HEAD~1",
    ]);
    assert_eq!(branch_base, base);
}

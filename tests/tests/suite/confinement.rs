//! Tools are confined to the worktree: no path, `..` or symlink may escape it, and an escape
//! attempt is a tool error the model sees, not the end of the task.

use kugetsu_tests::events::str_of;
use kugetsu_tests::{FakeLlm, TestRepo, Turn};
use serde_json::{Value, json};

const OUTSIDE: &str = "OUTSIDE-ORIGINAL-CONTENT-5e1f\n";

#[tokio::test]
async fn path_escapes_are_refused_and_change_nothing_outside() {
    let repo = TestRepo::new();
    let root = repo.root().to_path_buf();
    // A file next to the repository (and so, seen from the worktree, three levels up) ...
    std::fs::write(root.join("outside.txt"), OUTSIDE).unwrap();
    // ... and one right next to the worktree, where `../outside.txt` leads from it.
    let worktrees = repo.state_dir().join("worktrees");
    std::fs::create_dir_all(&worktrees).unwrap();
    std::fs::write(worktrees.join("outside.txt"), OUTSIDE).unwrap();
    let outside_dir = root.join("outside_dir");
    std::fs::create_dir_all(&outside_dir).unwrap();
    // Symlinks committed in the repository, pointing outside it by absolute path, so they
    // point outside from the worktree too.
    repo.symlink("link.txt", &root.join("outside.txt"));
    repo.symlink("linkdir", &outside_dir);
    repo.commit_all("add symlinks");

    let attempts: Vec<(&str, Value, &str)> = vec![
        ("read", json!({"path": "../outside.txt"}), "../outside.txt"),
        (
            "read",
            json!({"path": "../../../outside.txt"}),
            "../../../outside.txt",
        ),
        ("read", json!({"path": "/etc/passwd"}), "/etc/passwd"),
        (
            "write",
            json!({"path": "../../escape.txt", "content": "escaped"}),
            "../../escape.txt",
        ),
        (
            "edit",
            json!({"path": "link.txt", "old_text": "OUTSIDE-ORIGINAL", "new_text": "PWNED"}),
            "link.txt",
        ),
        (
            "write",
            json!({"path": "linkdir/evil.txt", "content": "escaped"}),
            "linkdir/evil.txt",
        ),
        (
            "read",
            json!({"path": "linkdir/../../outside.txt"}),
            "linkdir/../../outside.txt",
        ),
        ("ls", json!({"path": "../.."}), "../.."),
        ("grep", json!({"pattern": "OUTSIDE", "path": "/"}), "/"),
    ];
    let server = FakeLlm::anthropic();
    let mut turn = Turn::text("Let me try a few paths.");
    for (tool, args, _) in &attempts {
        turn = turn.tool_call(*tool, args.clone());
    }
    server.push(turn);
    server.push(Turn::text("None of those paths are reachable."));

    let out = repo
        .run()
        .llm(&server)
        .prompt("Poke around outside the repository.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let starts = out.events.tool_starts();
    assert_eq!(starts.len(), attempts.len());
    let request = server.request(2);
    for (start, (tool, _, path)) in starts.iter().zip(&attempts) {
        let end = out.events.tool_end(str_of(start, "call_id"));
        assert_eq!(str_of(end, "tool"), *tool);
        let output = str_of(end, "output");
        assert_eq!(end["ok"], false, "{tool} {path} must be refused: {output}");
        assert!(
            output.contains(path),
            "the error for {tool} names the path {path:?}: {output}"
        );
        assert!(!output.contains("OUTSIDE-ORIGINAL"), "leaked: {output}");
        assert!(
            !output.contains("root:x:0:0"),
            "leaked /etc/passwd: {output}"
        );
        let result = request.tool_result(str_of(start, "call_id"));
        assert_eq!(result.is_error, Some(true), "the model is told it failed");
    }

    // Nothing outside was created or changed.
    assert_eq!(
        std::fs::read_to_string(root.join("outside.txt")).unwrap(),
        OUTSIDE
    );
    assert_eq!(
        std::fs::read_to_string(worktrees.join("outside.txt")).unwrap(),
        OUTSIDE
    );
    for escaped in [
        repo.state_dir().join("escape.txt"),
        root.join("escape.txt"),
        outside_dir.join("evil.txt"),
    ] {
        assert!(!escaped.exists(), "{} was created", escaped.display());
    }
    assert_eq!(std::fs::read_dir(&outside_dir).unwrap().count(), 0);
    assert_eq!(out.finished()["changed_files"], json!([]));
}

//! The file tools and git's data, end to end: a shadow whose model tries to rewrite the
//! worktree's `.git` link (to point it at the user's repository) or git's config gets tool
//! errors, the user's repository keeps its branch, index and config, and the task still
//! completes with its other work.

use kugetsu_tests::TestRepo;
use kugetsu_tests::events::{sorted_strings, str_of};
use kugetsu_tests::harness::Script;
use serde_json::json;

#[tokio::test]
async fn a_shadow_cannot_write_the_worktrees_git_link_or_git_config() {
    let repo = TestRepo::new();
    let user_git = repo.repo().join(".git");
    let head = repo.git(&["rev-parse", "HEAD"]);
    let branch = repo.git(&["symbolic-ref", "HEAD"]);
    let index = std::fs::read(user_git.join("index")).unwrap();
    let config = std::fs::read(user_git.join("config")).unwrap();

    let gitdir = format!("gitdir: {}\n", user_git.display());
    let attempts = [
        ("write", json!({"path": ".git", "content": gitdir})),
        (
            "write",
            json!({"path": ".git/config", "content": "[core]\n\thooksPath = /tmp/hooks\n"}),
        ),
        (
            "edit",
            json!({"path": ".git", "old_text": "gitdir: ", "new_text": gitdir}),
        ),
        ("write", json!({"path": "sub/../.git", "content": gitdir})),
    ];
    let mut calls: Vec<(&str, serde_json::Value)> = attempts.to_vec();
    calls.push((
        "write",
        json!({"path": "notes.txt", "content": "still working\n"}),
    ));
    let script = Script::new()
        .turn("Let me point this worktree at the main repository.", &calls)
        .answer("The .git link is protected; I wrote my notes instead.");
    let model = script.write(&repo.root().join("git_link.json"));

    let out = repo
        .run()
        .model(&model)
        .prompt("Rewrite .git.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");

    let ends = out.events.tool_ends();
    assert_eq!(ends.len(), attempts.len() + 1);
    for (end, (tool, args)) in ends.iter().zip(&attempts) {
        let output = str_of(end, "output");
        assert_eq!(end["ok"], false, "{tool} {args} must be refused: {output}");
        let path = args["path"].as_str().unwrap();
        assert!(
            output.contains(&format!("`{path}`")) && output.contains("inside `.git`"),
            "{tool} {path}: {output}"
        );
    }
    let last = ends.last().unwrap();
    assert_eq!(last["ok"], true, "{last}");

    // The worktree's link still leads to its own git dir, not to the user's repository.
    let worktree = repo.worktree(out.task_id());
    let link = std::fs::read_to_string(worktree.join(".git")).unwrap();
    assert!(link.contains("/worktrees/"), "{link}");
    assert_eq!(
        std::fs::read_to_string(worktree.join("notes.txt")).unwrap(),
        "still working\n"
    );
    // The user's repository is as it was.
    assert_eq!(repo.git(&["rev-parse", "HEAD"]), head);
    assert_eq!(repo.git(&["symbolic-ref", "HEAD"]), branch);
    assert_eq!(std::fs::read(user_git.join("index")).unwrap(), index);
    assert_eq!(std::fs::read(user_git.join("config")).unwrap(), config);
    assert_eq!(
        sorted_strings(&out.finished()["changed_files"]),
        ["notes.txt"]
    );
}

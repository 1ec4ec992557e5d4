//! Confinement across tools: every escape route, tried with every tool that takes a path,
//! must fail with a message naming the path and leave everything outside the worktree as it
//! was.

use serde_json::{Value, json};

use super::testkit::Fixture;

/// Paths that name a file outside the root, directly or through symlinks (see
/// [`Fixture::escape_links`]). `{outside}` is replaced by the absolute outside directory.
const FILE_ESCAPES: [&str; 10] = [
    "{outside}/secret.txt",
    "../outside/secret.txt",
    "a/../../outside/secret.txt",
    "outdir/secret.txt",
    "outdir/new.txt",
    "outdir/deep/new.txt",
    "outfile",
    "dangling",
    "uplink/outside/secret.txt",
    "sub/rel_out/secret.txt",
];

/// Paths that name a directory outside the root.
const DIR_ESCAPES: [&str; 7] = [
    "{outside}",
    "..",
    "../outside",
    "a/../..",
    "outdir",
    "uplink",
    "sub/rel_out",
];

/// Runs `tool` and checks it refused `given` by name and left the outside untouched.
async fn assert_refused(fx: &Fixture, tool: &str, given: &str, args: Value) {
    let before = fx.outside_snapshot();
    let out = fx.run(tool, args).await;
    assert!(!out.ok, "{tool} {given}: {out:?}");
    assert!(
        out.output.contains(&format!("`{given}`")) && out.output.contains("outside the worktree"),
        "{tool} {given}: {}",
        out.output
    );
    assert_eq!(
        fx.outside_snapshot(),
        before,
        "{tool} {given} changed the outside"
    );
}

/// `path` with `{outside}` replaced by the outside directory.
fn expand(fx: &Fixture, path: &str) -> String {
    path.replace("{outside}", fx.outside.to_str().unwrap())
}

#[tokio::test]
async fn escapes_are_refused_by_every_file_tool() {
    let fx = Fixture::new();
    fx.escape_links();
    fx.file("a/keep.txt", "inside\n");
    for path in FILE_ESCAPES {
        let path = expand(&fx, path);
        assert_refused(&fx, "read", &path, json!({"path": path})).await;
        assert_refused(
            &fx,
            "write",
            &path,
            json!({"path": path, "content": "pwned"}),
        )
        .await;
        let edit = json!({"path": path, "old_text": "outside secret", "new_text": "pwned"});
        assert_refused(&fx, "edit", &path, edit).await;
        assert_refused(
            &fx,
            "grep",
            &path,
            json!({"pattern": "secret", "path": path}),
        )
        .await;
    }
    assert!(!fx.outside.join("new.txt").exists());
    assert!(!fx.outside.join("deep").exists());
    assert!(!fx.outside.join("missing.txt").exists());
}

#[tokio::test]
async fn escapes_are_refused_by_ls_and_grep_for_directories() {
    let fx = Fixture::new();
    fx.escape_links();
    for path in DIR_ESCAPES {
        let path = expand(&fx, path);
        assert_refused(&fx, "ls", &path, json!({"path": path})).await;
        assert_refused(
            &fx,
            "grep",
            &path,
            json!({"pattern": "secret", "path": path}),
        )
        .await;
    }
}

#[tokio::test]
async fn a_whole_tree_grep_does_not_follow_escaping_symlinks() {
    let fx = Fixture::new();
    fx.escape_links();
    fx.file("inside.txt", "no secret here\n");
    let out = fx.run("grep", json!({"pattern": "outside secret"})).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.output, "no matches for `outside secret` in `.`");
}

#[tokio::test]
async fn symlinks_that_stay_inside_work() {
    let fx = Fixture::new();
    fx.file("real/data.txt", "hello\n");
    fx.symlink("real", "alias");
    fx.symlink("real/data.txt", "data_link");
    let out = fx.run("read", json!({"path": "alias/data.txt"})).await;
    assert_eq!(out.output, "     1\thello\n");
    let out = fx.run("read", json!({"path": "data_link"})).await;
    assert_eq!(out.output, "     1\thello\n");
    let out = fx
        .run(
            "edit",
            json!({"path": "alias/data.txt", "old_text": "hello", "new_text": "bye"}),
        )
        .await;
    assert!(out.ok, "{out:?}");
    let out = fx
        .run("write", json!({"path": "alias/new.txt", "content": "x"}))
        .await;
    assert!(out.ok, "{out:?}");
    assert!(fx.root.join("real/new.txt").is_file());
    let out = fx.run("ls", json!({"path": "alias"})).await;
    assert_eq!(out.output, "data.txt\nnew.txt\n");
    let out = fx
        .run("grep", json!({"pattern": "bye", "path": "alias"}))
        .await;
    assert_eq!(out.output, "real/data.txt:1: bye\n");
}

#[tokio::test]
async fn unknown_tools_and_bad_arguments_are_reported() {
    let fx = Fixture::new();
    let out = fx.run("rm", json!({})).await;
    assert!(!out.ok);
    assert_eq!(
        out.output,
        "unknown tool `rm`; the tools are read, write, edit, bash, grep and ls"
    );
    let out = fx.run("read", json!("a.txt")).await;
    assert_eq!(
        out.output,
        "the arguments must be a JSON object, not a string"
    );
    let names: Vec<_> = super::specs().iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, ["read", "write", "edit", "bash", "grep", "ls"]);
}

/// Every file under the root's `.git` with its content (or the `.git` file's content).
fn git_snapshot(fx: &Fixture) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let git = fx.root.join(".git");
    if git.is_file() {
        return vec![(git.clone(), std::fs::read(&git).unwrap())];
    }
    super::testkit::snapshot(&git)
}

/// Write and edit calls on git's data, each with the path it names.
fn git_attempts(fx: &Fixture) -> Vec<(&'static str, String, Value)> {
    let abs = fx.root.join(".git/config").to_str().unwrap().to_owned();
    let write = |path: &str| json!({"path": path, "content": "gitdir: /elsewhere\n"});
    let edit = |path: &str| json!({"path": path, "old_text": "core", "new_text": "pwned"});
    let mut attempts = vec![];
    for path in [
        ".git",
        ".git/config",
        ".git/hooks/pre-commit",
        "sub/../.git",
        "./.git/new/dir/file",
        "gitlink/x",
        "gitlink/config",
        "gitlink/deep/new",
        "gitlink",
        "sub/up_git/config",
        "nested/.git",
        abs.as_str(),
    ] {
        attempts.push(("write", path.to_owned(), write(path)));
        attempts.push(("edit", path.to_owned(), edit(path)));
    }
    attempts
}

/// Runs every [`git_attempts`] call and checks each was refused naming `.git`, with git's
/// data left as it was.
async fn assert_git_untouched(fx: &Fixture) {
    fx.file("sub/keep.txt", "");
    fx.symlink(".git", "gitlink");
    fx.symlink("../.git", "sub/up_git");
    let before = git_snapshot(fx);
    for (tool, path, args) in git_attempts(fx) {
        let out = fx.run(tool, args).await;
        assert!(!out.ok, "{tool} {path}: {out:?}");
        assert!(
            out.output.contains(&format!("`{path}`")) && out.output.contains("inside `.git`"),
            "{tool} {path}: {}",
            out.output
        );
        assert_eq!(git_snapshot(fx), before, "{tool} {path} changed .git");
    }
    assert!(!fx.root.join("nested/.git").exists());
    assert_eq!(fx.stray_temp_files(), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn a_git_directory_is_never_written_or_edited() {
    let fx = Fixture::new();
    fx.file(".git/config", "[core]\n\tbare = false\n");
    fx.file(".git/HEAD", "ref: refs/heads/main\n");
    fx.file(".git/hooks/pre-commit", "#!/bin/sh\n");
    assert_git_untouched(&fx).await;
    // Looking is allowed.
    let out = fx.run("read", json!({"path": ".git/config"})).await;
    assert!(out.ok && out.output.contains("bare = false"), "{out:?}");
    let out = fx.run("ls", json!({"path": "gitlink"})).await;
    assert_eq!(out.output, "HEAD\nconfig\nhooks/\n");
}

#[tokio::test]
async fn a_git_file_is_never_written_or_edited() {
    let fx = Fixture::new();
    fx.file(".git", "gitdir: /somewhere/.git/worktrees/core\n");
    assert_git_untouched(&fx).await;
    let out = fx.run("read", json!({"path": ".git"})).await;
    assert!(out.ok && out.output.contains("gitdir:"), "{out:?}");
}

#[tokio::test]
async fn writes_through_inside_symlinks_keep_the_links() {
    let fx = Fixture::new();
    fx.file("src/lib.rs", "old\n");
    fx.symlink("../src", "sub/up_src");
    fx.symlink("up_src/lib.rs", "sub/lib_link");
    fx.symlink("sub/lib_link", "chain");
    for (i, path) in ["sub/up_src/lib.rs", "sub/lib_link", "chain"]
        .iter()
        .enumerate()
    {
        let content = format!("v{i}\n");
        let out = fx
            .run("write", json!({"path": path, "content": content}))
            .await;
        assert!(out.ok, "{path}: {out:?}");
        assert_eq!(
            std::fs::read_to_string(fx.root.join("src/lib.rs")).unwrap(),
            content
        );
    }
    let out = fx
        .run(
            "edit",
            json!({"path": "chain", "old_text": "v2", "new_text": "v3"}),
        )
        .await;
    assert!(out.ok, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(fx.root.join("src/lib.rs")).unwrap(),
        "v3\n"
    );
    for link in ["sub/up_src", "sub/lib_link", "chain"] {
        assert!(
            fx.root.join(link).symlink_metadata().unwrap().is_symlink(),
            "{link}"
        );
    }
    let out = fx
        .run(
            "write",
            json!({"path": "sub/up_src/new/deep.rs", "content": "x"}),
        )
        .await;
    assert!(out.ok, "{out:?}");
    assert!(fx.root.join("src/new/deep.rs").is_file());
    assert_eq!(fx.stray_temp_files(), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn absolute_symlinks_are_refused_even_when_they_point_inside() {
    let fx = Fixture::new();
    fx.file("src/a.rs", "a\n");
    fx.symlink(fx.root.join("src"), "abs_src");
    let out = fx.run("read", json!({"path": "abs_src/a.rs"})).await;
    assert!(!out.ok, "{out:?}");
    assert!(
        out.output.contains("`abs_src/a.rs`") && out.output.contains("relative symlinks"),
        "{}",
        out.output
    );
}

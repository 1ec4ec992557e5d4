//! Git: repository checks, worktrees on their own branch, and what a task changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, LazyLock};

use tokio::process::Command;

use crate::exit::CliError;

/// Runs `git -C dir args...` and returns its trimmed stdout, or its stderr as the error.
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run git: {}", crate::exit::describe_io(&e)))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("git failed")
            .trim()
            .to_owned())
    }
}

/// The top level of the repository containing `dir`.
pub async fn toplevel(dir: &Path) -> Result<PathBuf, CliError> {
    if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    match git(dir, &["rev-parse", "--show-toplevel"]).await {
        Ok(top) => Ok(PathBuf::from(top)),
        // git did not even start (e.g. out of file descriptors): say that, not "not a repo".
        Err(e) if e.starts_with("cannot run git") => Err(CliError::Failed(e)),
        Err(_) => Err(CliError::Usage(format!(
            "{} is not a git repository",
            dir.display()
        ))),
    }
}

/// The commit `reference` names in `repo`.
pub async fn resolve_commit(repo: &Path, reference: &str) -> Result<String, CliError> {
    git(
        repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{reference}^{{commit}}"),
        ],
    )
    .await
    .map_err(|_| {
        if reference == "HEAD" {
            CliError::Usage(format!(
                "{} has no commits yet: commit something first, or use --no-worktree",
                repo.display()
            ))
        } else {
            CliError::Usage(format!(
                "--base {reference:?} is not a commit in {}",
                repo.display()
            ))
        }
    })
}

/// The current branch of `dir`, if it is on one.
pub async fn current_branch(dir: &Path) -> Option<String> {
    git(dir, &["symbolic-ref", "--quiet", "--short", "HEAD"])
        .await
        .ok()
}

/// Serializes worktree changes per repository: git's `worktree add`/`remove` are not safe to
/// run concurrently on one repository (they read each other's half-written admin files).
fn worktree_lock(repo: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: LazyLock<std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let mut locks = LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    locks.entry(repo.to_owned()).or_default().clone()
}

/// `git worktree add <path> -b <branch> <base>`.
///
/// Serialized per repository within this process; a failure caused by another process
/// changing the repository's worktrees at the same moment (nothing was created) is retried.
pub async fn add_worktree(
    repo: &Path,
    path: &Path,
    branch: &str,
    base: &str,
) -> Result<(), CliError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", parent.display())))?;
    }
    let lock = worktree_lock(repo);
    let _held = lock.lock().await;
    let path_text = path.to_string_lossy();
    let args = ["worktree", "add", "--quiet", &path_text, "-b", branch, base];
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        let error = match git(repo, &args).await {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        let untouched = !path.exists() && !branch_exists(repo, branch).await;
        if attempt >= 4 || !untouched {
            return Err(CliError::Failed(format!(
                "git worktree add failed: {error}"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
    }
}

async fn branch_exists(repo: &Path, branch: &str) -> bool {
    let reference = format!("refs/heads/{branch}");
    git(repo, &["show-ref", "--verify", "--quiet", &reference])
        .await
        .is_ok()
}

/// Commits everything the shadow left in its worktree onto its branch, so the work survives
/// the worktree's removal. Returns whether there was anything to commit.
pub async fn commit_all(worktree: &Path, message: &str) -> Result<bool, String> {
    git(worktree, &["add", "--all"]).await?;
    if git(worktree, &["diff", "--cached", "--quiet"])
        .await
        .is_ok()
    {
        return Ok(false);
    }
    git(
        worktree,
        &[
            "-c",
            "user.name=kugetsu",
            "-c",
            "user.email=kugetsu@localhost",
            "-c",
            "commit.gpgsign=false",
            "commit",
            "--quiet",
            "--no-verify",
            "-m",
            message,
        ],
    )
    .await?;
    Ok(true)
}

/// Paths that differ between `base` and the working tree of `dir` (committed, staged,
/// unstaged and untracked), sorted and without duplicates.
pub async fn changed_files(dir: &Path, base: Option<&str>) -> Vec<String> {
    let mut files = Vec::new();
    if let Some(base) = base
        && let Ok(out) = git(dir, &["diff", "--name-only", "--no-renames", base]).await
    {
        files.extend(out.lines().map(str::to_owned));
    }
    if let Ok(out) = git(dir, &["ls-files", "--others", "--exclude-standard"]).await {
        files.extend(out.lines().map(str::to_owned));
    }
    files.retain(|f| !f.is_empty());
    files.sort();
    files.dedup();
    files
}

/// The paths in the worktree `dir` that hold changes not committed (staged, unstaged or
/// untracked and not ignored).
pub async fn uncommitted(dir: &Path) -> Result<Vec<String>, String> {
    let out = git(dir, &["status", "--porcelain", "--untracked-files=all"]).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.get(3..))
        .map(str::to_owned)
        .collect())
}

/// `git diff` of `dir` against `base`, for showing a person what a shadow did.
pub async fn diff(dir: &Path, base: &str) -> Result<String, String> {
    git(
        dir,
        &["-c", "color.ui=never", "diff", "--stat", "--patch", base],
    )
    .await
}

/// `git worktree remove --force <path>` (the branch stays).
pub async fn remove_worktree(repo: &Path, path: &Path) -> Result<(), String> {
    let lock = worktree_lock(repo);
    let _held = lock.lock().await;
    let path_text = path.to_string_lossy();
    git(repo, &["worktree", "remove", "--force", &path_text])
        .await
        .map(drop)
}

//! Git, run so that nothing a shadow wrote can make it run code or read the wrong repository.
//!
//! A shadow controls its worktree's files, including the `.git` link, `.gitattributes` and
//! (without the sandbox) the repository's config and hooks. So every git call here:
//! - addresses the repository through our own records: `GIT_DIR` = the worktree's admin dir
//!   `<common>/worktrees/<id>` (checked against the worktree when it is made), `GIT_COMMON_DIR`
//!   and `GIT_WORK_TREE` explicitly; the worktree's `.git` file and the admin dir's
//!   `commondir` file are never read;
//! - reads no configuration but the user's own repository config (`GIT_CONFIG_NOSYSTEM`,
//!   `GIT_CONFIG_GLOBAL=/dev/null`, `HOME` and `XDG_CONFIG_HOME` pointing nowhere) and
//!   overrides what could run code: `core.hooksPath=/dev/null`, `core.fsmonitor=false`,
//!   `core.untrackedCache=false`, `core.attributesFile=/dev/null`, no external diff or textconv
//!   (a call that talks to a remote, [`Git::reaching_remote`], sets its own ssh command and
//!   credential helpers from the daemon's user's config instead: `crate::cluster::checkpoint`);
//! - runs with a scrubbed environment (no provider key, nothing secret), stdin closed, in its
//!   own process group, killed after [`GIT_TIMEOUT`].
//!
//! Filter drivers (`filter.<x>.clean` named by a `.gitattributes` the shadow wrote) cannot be
//! switched off by name, so committing a shadow's work never runs `git add`: [`Worktree::commit_all`]
//! hashes the worktree's files as they are (`hash-object --no-filters`) into a scratch index
//! seeded from the branch tip, writes the tree, makes the commit with `commit-tree` and moves
//! only `refs/heads/kugetsu/<id>`, with `update-ref --no-deref` and the old value, so neither a
//! symbolic ref nor a concurrent change can redirect it. Files behind a symbolic link inside
//! the worktree are not followed.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::exit::CliError;

/// The longest any one git call may take before its process group is killed.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(300);

/// Configuration that could make git run a program, overridden on every call.
const INERT: [&str; 12] = [
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.attributesFile=/dev/null",
    "core.pager=cat",
    "core.sshCommand=false",
    "credential.helper=",
    "diff.external=",
    "color.ui=never",
    "commit.gpgSign=false",
    "gc.auto=0",
    "maintenance.auto=false",
];

/// The [`INERT`] settings a call that talks to a remote sets for itself.
const REMOTE_REACH: [&str; 2] = ["core.sshCommand=", "credential.helper="];

/// Variables passed to git from our environment; everything else is dropped.
const KEPT_VARS: [&str; 5] = ["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];

/// Where a git call looks for the repository.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Repo<'a> {
    /// `git -C dir`: the user's own checkout (trusted: the shadow cannot write it).
    Checkout(&'a Path),
    /// A shadow's worktree, by our records.
    Worktree(&'a Worktree),
    /// The repository's shared git dir alone (`GIT_DIR`, no work tree): objects and refs,
    /// never anyone's checkout.
    Common(&'a Path),
}

/// One git invocation (see the module doc for what every call is protected from).
pub(crate) struct Git<'a> {
    repo: Repo<'a>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    /// Talks to a remote: the caller sets how to reach it (see [`Git::reaching_remote`]).
    remote: bool,
    /// How many settings [`Git::config_env`] has numbered.
    config_count: usize,
}

impl<'a> Git<'a> {
    pub(crate) fn new(repo: Repo<'a>) -> Self {
        Git {
            repo,
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            remote: false,
            config_count: 0,
        }
    }

    /// For a call that talks to a remote: `core.sshCommand` and `credential.helper` are left
    /// to the caller, which sets them itself (through `GIT_CONFIG_*`, after the repository's
    /// config) instead of having them switched off.
    pub(crate) fn reaching_remote(mut self) -> Self {
        self.remote = true;
        self
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub(crate) fn arg_ref(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    pub(crate) fn env(mut self, key: &'static str, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A setting for git's command-line scope, passed as `GIT_CONFIG_KEY_<n>` /
    /// `GIT_CONFIG_VALUE_<n>` (in the environment, not on the command line), numbered in
    /// the order given: read after the repository's config, before `-c`.
    pub(crate) fn config_env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        let n = self.config_count;
        self.config_count += 1;
        self.env
            .push((format!("GIT_CONFIG_KEY_{n}").into(), key.into()));
        self.env
            .push((format!("GIT_CONFIG_VALUE_{n}").into(), value.into()));
        self.env
            .retain(|(k, _)| k.as_os_str() != "GIT_CONFIG_COUNT");
        self.env.push((
            "GIT_CONFIG_COUNT".into(),
            self.config_count.to_string().into(),
        ));
        self
    }

    pub(crate) fn stdin(mut self, input: Vec<u8>) -> Self {
        self.stdin = Some(input);
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new("git");
        command.env_clear();
        for name in KEPT_VARS {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .env("HOME", "/dev/null")
            .env("XDG_CONFIG_HOME", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ATTR_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("GIT_OPTIONAL_LOCKS", "0");
        for setting in INERT {
            if self.remote && REMOTE_REACH.iter().any(|key| setting.starts_with(key)) {
                continue;
            }
            command.arg("-c").arg(setting);
        }
        match self.repo {
            Repo::Checkout(dir) => {
                command.arg("-C").arg(dir);
            }
            Repo::Common(common) => {
                command.env("GIT_DIR", common).current_dir(common);
            }
            Repo::Worktree(worktree) => {
                command
                    .env("GIT_DIR", &worktree.admin)
                    .env("GIT_COMMON_DIR", &worktree.common)
                    .env("GIT_WORK_TREE", &worktree.path)
                    .current_dir(&worktree.path);
            }
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
            .args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        command
    }

    /// Runs git and returns its stdout, or the first line of its stderr as the error.
    pub(crate) async fn run(self) -> Result<String, String> {
        self.run_bytes()
            .await
            .map(|out| String::from_utf8_lossy(&out).trim_end().to_owned())
    }

    pub(crate) async fn run_bytes(self) -> Result<Vec<u8>, String> {
        let output = self.run_output().await?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(first_line(&output.stderr))
        }
    }

    /// Runs git and returns its exit code (`None`: killed by a signal) with its stdout, for
    /// commands whose failure status carries an answer (`merge-tree` on a conflict).
    pub(crate) async fn run_status(self) -> Result<(Option<i32>, Vec<u8>), String> {
        let output = self.run_output().await?;
        Ok((output.status.code(), output.stdout))
    }

    /// Runs git and returns its whole output, whatever its exit status (for a caller that
    /// reports git's full stderr or reads `push --porcelain`).
    pub(crate) async fn output(self) -> Result<std::process::Output, String> {
        self.run_output().await
    }

    async fn run_output(self) -> Result<std::process::Output, String> {
        let mut child = self
            .command()
            .spawn()
            .map_err(|e| format!("cannot run git: {}", crate::exit::describe_io(&e)))?;
        // Waited for below: the daemon's reaper of adopted orphans leaves it alone.
        let _owned = child.id().map(kugetsu_os::process::own);
        let group = child
            .id()
            .and_then(kugetsu_os::process::ProcessGroup::of_leader);
        if let (Some(input), Some(mut pipe)) = (self.stdin, child.stdin.take()) {
            // Written concurrently with reading: a large input must not deadlock on a full pipe.
            tokio::spawn(async move {
                let _ = pipe.write_all(&input).await;
            });
        }
        let output = match tokio::time::timeout(GIT_TIMEOUT, child.wait_with_output()).await {
            Ok(output) => output.map_err(|e| format!("cannot run git: {e}"))?,
            Err(_) => {
                if let Some(group) = group {
                    group.signal(nix::sys::signal::Signal::SIGKILL);
                }
                return Err(format!(
                    "git took longer than {}s and was killed",
                    GIT_TIMEOUT.as_secs()
                ));
            }
        };
        Ok(output)
    }
}

/// The first non-empty line of git's stderr, as an error.
fn first_line(stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("git failed")
        .trim()
        .to_owned()
}

/// The name of `branch`'s file inside `refs/heads/kugetsu/` (its last component).
fn ref_file_name(branch: &str) -> &str {
    branch.rsplit('/').next().unwrap_or(branch)
}

/// Runs `git -C dir args...` in the user's checkout and returns its trimmed stdout.
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    Git::new(Repo::Checkout(dir)).args(args).run().await
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

/// The local branch `reference` names in `repo` (`HEAD` on a branch, `main`,
/// `refs/heads/main`), without `refs/heads/`; `None` for a commit, a tag or a detached HEAD.
pub async fn branch_of(repo: &Path, reference: &str) -> Option<String> {
    if reference.starts_with('-') {
        return None;
    }
    let full = git(repo, &["rev-parse", "--symbolic-full-name", reference])
        .await
        .ok()?;
    full.strip_prefix("refs/heads/")
        .filter(|b| !b.is_empty())
        .map(str::to_owned)
}

/// The current branch of `dir`, if it is on one.
pub async fn current_branch(dir: &Path) -> Option<String> {
    git(dir, &["symbolic-ref", "--quiet", "--short", "HEAD"])
        .await
        .ok()
}

/// The repository's shared git dir (`.git` of the main checkout), canonical.
pub async fn common_dir(repo: &Path) -> Result<PathBuf, String> {
    let dir = git(
        repo,
        &["rev-parse", "--path-format=absolute", "--git-common-dir"],
    )
    .await?;
    PathBuf::from(dir)
        .canonicalize()
        .map_err(|e| format!("the repository's git dir: {e}"))
}

/// Serializes worktree changes per repository: git's `worktree add`/`remove` are not safe to
/// run concurrently on one repository (they read each other's half-written admin files).
pub(crate) fn worktree_lock(repo: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: LazyLock<std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let mut locks = LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    locks.entry(repo.to_owned()).or_default().clone()
}

/// An exclusive lock on `<git common dir>/kugetsu-worktrees.lock` held while this process
/// changes the repository's worktrees, so that processes sharing a repository (the nodes of a
/// cluster on one machine) do not either; `None` (and no wait) where it cannot be taken.
pub(crate) async fn process_lock(repo: &Path) -> Option<nix::fcntl::Flock<std::fs::File>> {
    let common = common_dir(repo).await.ok()?;
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(common.join("kugetsu-worktrees.lock"))
            .ok()?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).ok()
    })
    .await
    .ok()
    .flatten()
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
    // Other processes (cluster nodes sharing a machine) add worktrees to the same repository.
    let _across = process_lock(repo).await;
    let path_text = path.to_string_lossy();
    // A supervisor killed halfway through an earlier add may have left the branch (git makes
    // it first), an empty directory, or an admin entry for a directory that is gone. Such a
    // branch still points at the base (no shadow ran on it): check the worktree out again.
    if path.is_dir() && std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none()) {
        let _ = std::fs::remove_dir(path);
    }
    let leftover = !path.exists() && branch_exists(repo, branch).await;
    if leftover {
        let tip = resolve_commit(repo, branch).await.ok();
        let base_commit = resolve_commit(repo, base).await.ok();
        if tip.is_none() || tip != base_commit {
            return Err(CliError::Failed(format!(
                "git worktree add failed: a branch named '{branch}' already exists and does                  not point at the task's base"
            )));
        }
        let _ = git(repo, &["worktree", "prune"]).await;
    }
    let fresh = ["worktree", "add", "--quiet", &path_text, "-b", branch, base];
    let again = ["worktree", "add", "--quiet", &path_text, branch];
    let args: &[&str] = if leftover { &again } else { &fresh };
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        let error = match git(repo, args).await {
            Ok(_) => break,
            Err(error) => error,
        };
        // A `worktree add` of a supervisor killed a moment ago may still have been running
        // (it finishes on its own) and made this very worktree: that one is as good as ours.
        if made_for(repo, path, branch).await {
            break;
        }
        let untouched = !path.exists() && !branch_exists(repo, branch).await;
        if attempt >= 4 || !untouched {
            return Err(CliError::Failed(format!(
                "git worktree add failed: {error}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
    }
    // Our records must name the admin dir git made: check it now, while the shadow has not run.
    Worktree::open(repo, path)
        .await
        .map(drop)
        .map_err(CliError::Failed)
}

/// Whether `path` is a registered worktree of `repo` checked out on `branch` (read from its
/// admin files, nothing run inside it).
async fn made_for(repo: &Path, path: &Path, branch: &str) -> bool {
    if !path.join(".git").is_file() {
        return false;
    }
    let Ok(worktree) = Worktree::open(repo, path).await else {
        return false;
    };
    std::fs::read_to_string(worktree.admin.join("HEAD"))
        .is_ok_and(|head| head.trim_end() == format!("ref: refs/heads/{branch}"))
}

async fn branch_exists(repo: &Path, branch: &str) -> bool {
    let reference = format!("refs/heads/{branch}");
    git(repo, &["show-ref", "--verify", "--quiet", &reference])
        .await
        .is_ok()
}

/// Whether the worktree admin dir `admin` records `path` as its worktree (its `gitdir` file
/// names `path/.git`).
fn points_back(admin: &Path, path: &Path) -> bool {
    let Ok(gitdir) = std::fs::read_to_string(admin.join("gitdir")) else {
        return false;
    };
    let expected = path.join(".git");
    let recorded = PathBuf::from(gitdir.trim_end());
    recorded == expected
        || recorded.canonicalize().ok() == expected.canonicalize().ok()
            && recorded.parent().and_then(|p| p.canonicalize().ok()) == path.canonicalize().ok()
}

/// A shadow's worktree as our records name it.
#[derive(Debug, Clone)]
pub struct Worktree {
    /// The worktree (`<state_dir>/worktrees/<id>`).
    path: PathBuf,
    /// The repository's shared git dir.
    common: PathBuf,
    /// `<common>/worktrees/<id>`: the worktree's own git dir (HEAD, index).
    admin: PathBuf,
}

impl Worktree {
    /// The worktree at `path` of the repository `repo`. Checks that git's admin dir for it is
    /// `<common>/worktrees/<name of path>` and points back at `path`: true when `worktree add`
    /// made it, and never decided by the worktree's `.git` file.
    pub async fn open(repo: &Path, path: &Path) -> Result<Self, String> {
        let common = common_dir(repo).await?;
        let name = path
            .file_name()
            .ok_or_else(|| format!("{} has no name", path.display()))?;
        let mut admin = common.join("worktrees").join(name);
        if !points_back(&admin, path) {
            // Git names the admin dir after the worktree's directory, with a number added when
            // that name is taken (a task taken over from another node of the cluster, whose
            // stale worktree of the same name is registered in the same repository).
            let numbered = std::fs::read_dir(common.join("worktrees"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path())
                .filter(|dir| {
                    dir.file_name()
                        .and_then(|n| n.to_str())
                        .zip(name.to_str())
                        .and_then(|(n, base)| n.strip_prefix(base))
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .find(|dir| points_back(dir, path));
            match numbered {
                Some(dir) => admin = dir,
                None => {
                    return Err(format!(
                        "{} does not belong to the worktree {}",
                        admin.display(),
                        path.display()
                    ));
                }
            }
        }
        Ok(Worktree {
            path: path.to_path_buf(),
            common,
            admin,
        })
    }

    /// The repository's shared git dir.
    pub fn common(&self) -> &Path {
        &self.common
    }

    /// `<common>/worktrees/<id>`.
    pub fn admin(&self) -> &Path {
        &self.admin
    }

    fn git(&self) -> Git<'_> {
        Git::new(Repo::Worktree(self))
    }

    /// Seeds the task's private refs directory with `branch`'s tip, once: a file already there
    /// is the shadow's own progress (its tools commit into that directory, bound over the
    /// shared `refs/heads/kugetsu/`) and is kept.
    pub async fn seed_private_ref(&self, branch: &str, dir: &Path) -> Result<(), String> {
        let file = dir.join(ref_file_name(branch));
        if file.exists() {
            return Ok(());
        }
        let tip = self.tip(branch).await?;
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&file, format!("{tip}\n")))
            .map_err(|e| format!("cannot seed {}: {e}", file.display()))
    }

    /// Moves `branch` to where the shadow's tools left it in the private refs directory `dir`
    /// (nothing to do without one). The file is the shadow's: only a plain commit id that
    /// names a commit is taken; anything else is refused and the branch stays.
    pub async fn adopt_private_ref(&self, branch: &str, dir: &Path) -> Result<(), String> {
        let file = dir.join(ref_file_name(branch));
        let Ok(text) = std::fs::read(&file) else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&text[..text.len().min(256)])
            .trim()
            .to_owned();
        if !matches!(text.len(), 40 | 64) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the shadow left its branch ref as {text:?}, not a commit id; the branch stays"
            ));
        }
        let commit = self
            .git()
            .args(["rev-parse", "--verify", "--quiet"])
            .arg_ref(&format!("{text}^{{commit}}"))
            .run()
            .await
            .map_err(|_| format!("the shadow's branch names {text}, which is not a commit"))?;
        let tip = self.tip(branch).await?;
        if commit == tip {
            return Ok(());
        }
        self.git()
            .args([
                "update-ref",
                "--no-deref",
                "-m",
                "kugetsu: the shadow's commits",
            ])
            .arg_ref(&format!("refs/heads/{branch}"))
            .arg_ref(&commit)
            .arg_ref(&tip)
            .run()
            .await
            .map(drop)
    }

    /// The commit `refs/heads/<branch>` points at.
    async fn tip(&self, branch: &str) -> Result<String, String> {
        self.git()
            .args(["rev-parse", "--verify", "--quiet"])
            .arg_ref(&format!("refs/heads/{branch}^{{commit}}"))
            .run()
            .await
    }

    /// Commits every file of the worktree, as it is on disk, onto `branch` (and only there).
    /// `scratch` is an index file of ours (outside the worktree) to build the commit in.
    /// Returns whether there was anything to commit.
    pub async fn commit_all(
        &self,
        branch: &str,
        scratch: &Path,
        message: &str,
    ) -> Result<bool, String> {
        let Snapshot {
            tip,
            tip_tree,
            tree,
        } = self.snapshot(branch, scratch).await?;
        if tree == tip_tree {
            return Ok(false);
        }
        let commit = self
            .git()
            .env("GIT_AUTHOR_NAME", "kugetsu")
            .env("GIT_AUTHOR_EMAIL", "kugetsu@localhost")
            .env("GIT_COMMITTER_NAME", "kugetsu")
            .env("GIT_COMMITTER_EMAIL", "kugetsu@localhost")
            .args(["commit-tree"])
            .arg_ref(&tree)
            .args(["-p"])
            .arg_ref(&tip)
            .args(["-m", message])
            .run()
            .await?;
        self.git()
            .args([
                "update-ref",
                "--no-deref",
                "-m",
                "kugetsu: the shadow's work",
            ])
            .arg_ref(&format!("refs/heads/{branch}"))
            .arg_ref(&commit)
            .arg_ref(&tip)
            .run()
            .await?;
        // The worktree's own index follows its branch (no refresh, so no filter runs).
        let _ = self.git().args(["read-tree"]).arg_ref(&tree).run().await;
        Ok(true)
    }

    /// The paths whose content on disk differs from the tip of `branch` (what a commit would
    /// record), found the same filter-free way as [`Worktree::commit_all`].
    pub async fn uncommitted(&self, branch: &str, scratch: &Path) -> Result<Vec<String>, String> {
        let Snapshot { tip_tree, tree, .. } = self.snapshot(branch, scratch).await?;
        if tree == tip_tree {
            return Ok(Vec::new());
        }
        let out = self
            .git()
            .args(["diff-tree", "-r", "--name-only", "--no-renames", "-z"])
            .arg_ref(&tip_tree)
            .arg_ref(&tree)
            .run_bytes()
            .await?;
        Ok(split_z(&out))
    }

    /// The worktree as it is on disk now (committed or not), hashed into a tree the same
    /// filter-free way as [`Worktree::commit_all`]; no ref and no file of the worktree moves.
    pub async fn tree_now(&self, branch: &str, scratch: &Path) -> Result<String, String> {
        Ok(self.snapshot(branch, scratch).await?.tree)
    }

    /// The commit the worktree's `HEAD` names (read through our records of its admin dir).
    pub(crate) async fn head(&self) -> Result<String, String> {
        self.git()
            .args(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])
            .run()
            .await
            .map_err(|_| format!("the worktree {} has no HEAD commit", self.path.display()))
    }

    /// The worktree as it is on disk now, hashed into a tree on top of the commit `base` the
    /// same filter-free way as [`Worktree::commit_all`] (tracked files as they are, deletions,
    /// untracked files that are not ignored); no ref, no index and no file of the worktree
    /// changes. `scratch` is an index file of ours, left removed.
    pub(crate) async fn tree_onto(&self, base: &str, scratch: &Path) -> Result<String, String> {
        let _ = std::fs::remove_file(scratch);
        let result = self.hash_tree(base, scratch).await;
        remove_scratch(scratch);
        Ok(result?.0)
    }

    /// Hashes the worktree into a tree, leaving `scratch` removed.
    async fn snapshot(&self, branch: &str, scratch: &Path) -> Result<Snapshot, String> {
        let _ = std::fs::remove_file(scratch);
        let result = self.snapshot_with(branch, scratch).await;
        remove_scratch(scratch);
        result
    }

    async fn snapshot_with(&self, branch: &str, scratch: &Path) -> Result<Snapshot, String> {
        let tip = self.tip(branch).await?;
        let (tree, tip_tree) = self.hash_tree(&tip, scratch).await?;
        Ok(Snapshot {
            tip,
            tip_tree,
            tree,
        })
    }

    /// The worktree hashed into a tree on top of `tip` (and `tip`'s own tree).
    async fn hash_tree(&self, tip: &str, scratch: &Path) -> Result<(String, String), String> {
        let index = || self.git().env("GIT_INDEX_FILE", scratch);
        index().args(["read-tree"]).arg_ref(tip).run().await?;
        let tracked = index()
            .args(["ls-files", "-z", "--cached"])
            .run_bytes()
            .await?;
        let untracked = index()
            .args(["ls-files", "-z", "--others", "--exclude-standard"])
            .run_bytes()
            .await?;
        let mut paths: Vec<&[u8]> = tracked
            .split(|b| *b == 0)
            .chain(untracked.split(|b| *b == 0))
            .filter(|p| !p.is_empty())
            .collect();
        paths.sort_unstable();
        paths.dedup();

        let mut regular: Vec<(&[u8], &'static str)> = Vec::new();
        let mut entries: Vec<u8> = Vec::new();
        for path in paths {
            match self.entry_kind(&bytes_path(path)) {
                Entry::Regular { executable } => {
                    regular.push((path, if executable { "100755" } else { "100644" }));
                }
                Entry::Symlink(target) => {
                    let id = self
                        .git()
                        .args(["hash-object", "-w", "--no-filters", "--stdin"])
                        .stdin(target)
                        .run()
                        .await?;
                    push_entry(&mut entries, "120000", &id, path);
                }
                Entry::Gone => push_entry(&mut entries, "0", ZERO_ID, path),
                Entry::Skip => {}
            }
        }
        if !regular.is_empty() {
            let mut list = Vec::new();
            for (path, _) in &regular {
                list.extend_from_slice(
                    self.path
                        .join(bytes_path(path))
                        .into_os_string()
                        .as_encoded_bytes(),
                );
                list.push(b'\n');
            }
            let ids = self
                .git()
                .args(["hash-object", "-w", "--no-filters", "--stdin-paths"])
                .stdin(list)
                .run()
                .await?;
            let ids: Vec<&str> = ids.lines().collect();
            if ids.len() != regular.len() {
                return Err("git hash-object returned fewer ids than files".to_owned());
            }
            for ((path, mode), id) in regular.iter().zip(ids) {
                push_entry(&mut entries, mode, id, path);
            }
        }
        index()
            .args(["update-index", "-z", "--index-info"])
            .stdin(entries)
            .run()
            .await?;
        let tree = index().args(["write-tree"]).run().await?;
        let tip_tree = self
            .git()
            .args(["rev-parse"])
            .arg_ref(&format!("{tip}^{{tree}}"))
            .run()
            .await?;
        Ok((tree, tip_tree))
    }

    /// What a path listed by git is on disk, never following a symbolic link.
    fn entry_kind(&self, rel: &Path) -> Entry {
        // A parent that is a link (or not a directory) means the path is gone from the tree.
        let mut dir = self.path.clone();
        let components: Vec<_> = rel.components().collect();
        if components
            .iter()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Entry::Skip;
        }
        for component in &components[..components.len().saturating_sub(1)] {
            dir.push(component);
            match dir.symlink_metadata() {
                Ok(meta) if meta.is_dir() => {}
                _ => return Entry::Gone,
            }
        }
        let full = self.path.join(rel);
        match full.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => match std::fs::read_link(&full) {
                Ok(target) => Entry::Symlink(target.into_os_string().into_encoded_bytes()),
                Err(_) => Entry::Gone,
            },
            Ok(meta) if meta.is_file() => Entry::Regular {
                executable: meta.permissions().mode() & 0o111 != 0,
            },
            // A directory where git listed a file is a submodule or a nested repository.
            Ok(meta) if meta.is_dir() => Entry::Skip,
            Ok(_) | Err(_) => Entry::Gone,
        }
    }

    /// Paths that differ between `base` and the tip of `branch`, sorted.
    pub async fn changed_files(&self, base: &str, branch: &str) -> Vec<String> {
        let out = self
            .git()
            .args([
                "diff-tree",
                "-r",
                "--name-only",
                "--no-renames",
                "--no-ext-diff",
                "--no-textconv",
                "-z",
            ])
            .arg_ref(base)
            .arg_ref(&format!("refs/heads/{branch}"))
            .run_bytes()
            .await
            .unwrap_or_default();
        split_z(&out)
    }

    /// The patch from `base` to the tip of `branch`, with a stat, for a person.
    pub async fn diff(&self, base: &str, branch: &str) -> Result<String, String> {
        self.git()
            .args([
                "diff",
                "--no-ext-diff",
                "--no-textconv",
                "--stat",
                "--patch",
            ])
            .arg_ref(base)
            .arg_ref(&format!("refs/heads/{branch}"))
            .run()
            .await
    }
}

/// Removes a scratch index file and the lock file git may have left beside it.
fn remove_scratch(scratch: &Path) {
    let _ = std::fs::remove_file(scratch);
    let mut lock = scratch.as_os_str().to_owned();
    lock.push(".lock");
    let _ = std::fs::remove_file(lock);
}

/// The worktree hashed into a tree, and the branch it would go on.
struct Snapshot {
    tip: String,
    tip_tree: String,
    tree: String,
}

/// NUL-separated paths as sorted, deduplicated strings.
pub(crate) fn split_z(bytes: &[u8]) -> Vec<String> {
    let mut files: Vec<String> = bytes
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    files.sort();
    files.dedup();
    files
}

/// What [`Worktree::entry_kind`] found.
enum Entry {
    Regular { executable: bool },
    Symlink(Vec<u8>),
    Gone,
    Skip,
}

const ZERO_ID: &str = "0000000000000000000000000000000000000000";

/// One `--index-info` record: `MODE SP ID TAB PATH NUL`.
fn push_entry(out: &mut Vec<u8>, mode: &str, id: &str, path: &[u8]) {
    out.extend_from_slice(mode.as_bytes());
    out.push(b' ');
    out.extend_from_slice(id.as_bytes());
    out.push(b'\t');
    out.extend_from_slice(path);
    out.push(0);
}

fn bytes_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

/// Paths that differ between `base` and the working tree of the user's checkout `dir`
/// (a `--no-worktree` task), sorted and without duplicates.
pub async fn changed_files(dir: &Path, base: Option<&str>) -> Vec<String> {
    let mut files = Vec::new();
    if let Some(base) = base
        && let Ok(out) = git(
            dir,
            &[
                "diff",
                "--no-ext-diff",
                "--no-textconv",
                "--name-only",
                "--no-renames",
                base,
            ],
        )
        .await
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

/// Removes a shadow's worktree by our records: its directory and its admin dir (the branch
/// stays). Never asks git to interpret the worktree's `.git` file.
pub async fn remove_worktree(repo: &Path, path: &Path) -> Result<(), String> {
    let lock = worktree_lock(repo);
    let _held = lock.lock().await;
    let _across = process_lock(repo).await;
    let admin = match Worktree::open(repo, path).await {
        Ok(worktree) => Some(worktree.admin),
        Err(_) => None,
    };
    if path.exists() {
        std::fs::remove_dir_all(path)
            .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    }
    if let Some(admin) = admin {
        std::fs::remove_dir_all(&admin)
            .map_err(|e| format!("cannot remove {}: {e}", admin.display()))?;
    }
    Ok(())
}

/// [`Worktree::uncommitted`] of the worktree `path` of `repo`.
pub async fn uncommitted(
    repo: &Path,
    path: &Path,
    branch: &str,
    scratch: &Path,
) -> Result<Vec<String>, String> {
    Worktree::open(repo, path)
        .await?
        .uncommitted(branch, scratch)
        .await
}

/// `git diff` (the patch, or `--stat`) from `base` to the working tree of the user's
/// checkout `dir` (a `--no-worktree` task's work).
pub async fn checkout_diff(dir: &Path, base: &str, stat: bool) -> Result<String, String> {
    git(
        dir,
        &[
            "diff",
            "--no-ext-diff",
            "--no-textconv",
            "--no-color",
            "--no-renames",
            if stat { "--stat" } else { "--patch" },
            base,
        ],
    )
    .await
}

/// The tracked files of the user's checkout `dir` whose content differs from its `HEAD`
/// (staged or not); untracked files are not counted.
pub async fn checkout_changes(dir: &Path) -> Result<Vec<String>, String> {
    let out = Git::new(Repo::Checkout(dir))
        .args([
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=no",
            "--ignore-submodules=all",
        ])
        .run_bytes()
        .await?;
    // Each record is `XY path`; a rename or copy adds its source as the next record.
    let mut files = Vec::new();
    let mut records = out.split(|b| *b == 0).filter(|r| !r.is_empty());
    while let Some(record) = records.next() {
        let record = String::from_utf8_lossy(record);
        if let Some(path) = record.get(3..) {
            files.push(path.to_owned());
        }
        if record.starts_with(['R', 'C']) {
            records.next();
        }
    }
    Ok(files)
}

/// Brings the user's clean checkout `dir` from commit `from` to `to`: git's two-tree
/// `read-tree -m -u`, which updates the index and the files that differ and refuses, changing
/// nothing, if that would overwrite a local change or an untracked file.
pub async fn checkout_advance(dir: &Path, from: &str, to: &str) -> Result<(), String> {
    Git::new(Repo::Checkout(dir))
        .args(["read-tree", "-m", "-u"])
        .arg_ref(from)
        .arg_ref(to)
        .run()
        .await
        .map(drop)
}

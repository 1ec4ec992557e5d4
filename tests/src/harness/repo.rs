//! A throwaway git repository with its state directory and home beside it.
//!
//! ```text
//! <tmp>/            TestRepo::root(): room for files "outside" the repository
//!   repo/           TestRepo::repo(): `git init`, one commit of the given files, branch main
//!   state/          TestRepo::state_dir(): kugetsu's --state-dir
//!   home/           TestRepo::home(): HOME of every child, with a .gitconfig
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use kugetsu_protocol::TaskSpec;

use super::run::Kugetsu;
use super::worker::{WorkerCommand, task_spec};
use crate::fake_llm::FakeLlm;

/// The files of [`TestRepo::new`].
pub const DEFAULT_FILES: &[(&str, &str)] = &[
    (
        "README.md",
        "# sample\n\nA small project for kugetsu's end-to-end tests.\n",
    ),
    ("hello.txt", "hello world\n"),
    ("src/answer.sh", "#!/bin/sh\necho 42\n"),
];

/// A temporary git repository, state directory and home. Removed on drop.
#[derive(Debug)]
pub struct TestRepo {
    tmp: TempDir,
    /// The canonical path of `tmp`, so paths compare equal to what the product reports.
    root: PathBuf,
}

impl TestRepo {
    /// A repository holding [`DEFAULT_FILES`].
    pub fn new() -> Self {
        Self::with_files(DEFAULT_FILES)
    }

    /// A repository holding `files` (relative path, content), committed on branch `main`.
    pub fn with_files(files: &[(&str, &str)]) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("kugetsu-e2e-")
            .tempdir()
            .expect("create a temporary directory");
        let root = tmp.path().canonicalize().expect("canonicalize the tempdir");
        let this = Self { tmp, root };
        for dir in [this.repo(), this.state_dir(), this.home(), this.side_dir()] {
            std::fs::create_dir_all(&dir).expect("create a test directory");
        }
        std::fs::write(
            this.home().join(".gitconfig"),
            "[user]\n\tname = kugetsu tests\n\temail = tests@kugetsu.invalid\n\
             [init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n",
        )
        .expect("write .gitconfig");
        this.git(&["init", "--quiet", "--initial-branch=main"]);
        for (path, content) in files {
            this.write(path, content);
        }
        this.commit_all("initial commit");
        this
    }

    /// The temporary directory holding everything; files here are outside the repository.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The main checkout.
    pub fn repo(&self) -> PathBuf {
        self.root.join("repo")
    }

    /// `<tmp>/side`: where scripted tool commands may leave side effects for a test to check.
    /// The only place outside the worktree a sandboxed shadow may write (through
    /// `KUGETSU_SANDBOX_WRITE`, set for every run and daemon of this repository).
    pub fn side_dir(&self) -> PathBuf {
        self.root.join("side")
    }

    /// The state directory given to kugetsu.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// The HOME of every child process.
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    /// `<state>/worktrees/<id>`: where task `id`'s worktree lives.
    pub fn worktree(&self, id: &str) -> PathBuf {
        self.state_dir().join("worktrees").join(id)
    }

    /// `<state>/tasks/<id>`: task `id`'s directory.
    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.state_dir().join("tasks").join(id)
    }

    /// Runs git in the main checkout; panics when it fails. Returns stdout.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(self.repo())
            .env_clear()
            .env("PATH", super::run::path_var())
            .env("HOME", self.home())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a file in the main checkout (creating directories), without committing it.
    pub fn write(&self, rel: &str, content: &str) {
        let path = self.repo().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create directories");
        }
        std::fs::write(&path, content).expect("write a repository file");
    }

    /// Creates a symlink `rel` in the main checkout pointing at `target`, without committing.
    pub fn symlink(&self, rel: &str, target: &Path) {
        let path = self.repo().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create directories");
        }
        std::os::unix::fs::symlink(target, &path).expect("create a symlink");
    }

    /// Commits everything in the main checkout.
    pub fn commit_all(&self, message: &str) {
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
    }

    /// A file of the main checkout, if it exists.
    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.repo().join(rel)).ok()
    }

    /// Whether branch `name` exists in the repository.
    pub fn has_branch(&self, name: &str) -> bool {
        self.branches().iter().any(|b| b == name)
    }

    /// Every local branch.
    pub fn branches(&self) -> Vec<String> {
        self.git(&["branch", "--list", "--format=%(refname:short)"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `kugetsu` with this repository's environment, cwd at [`TestRepo::root`], no arguments.
    pub fn kugetsu(&self) -> Kugetsu {
        Kugetsu::new(self.root(), &self.home())
            .env("KUGETSU_SANDBOX_WRITE", self.side_dir())
            .state_dir_hint(self.state_dir())
    }

    /// `kugetsu run --json -C <repo> --state-dir <state>`; add options and a prompt.
    pub fn run(&self) -> Kugetsu {
        self.kugetsu()
            .arg("run")
            .arg("--json")
            .arg("-C")
            .arg(self.repo())
            .arg("--state-dir")
            .arg(self.state_dir())
    }

    /// `kugetsu run --resume ID --json --state-dir <state>`: continues task `id`.
    pub fn resume(&self, id: &str) -> Kugetsu {
        self.kugetsu()
            .arg("run")
            .arg("--resume")
            .arg(id)
            .arg("--json")
            .arg("--state-dir")
            .arg(self.state_dir())
    }

    /// `<tmp>/worker-task`: the task directory of a worker driven directly by the test.
    pub fn worker_task_dir(&self) -> PathBuf {
        self.root.join("worker-task")
    }

    /// `kugetsu-worker` with this repository's environment, cwd at [`TestRepo::repo`],
    /// stderr appended to `worker_task_dir()/worker.log`.
    pub fn worker(&self) -> WorkerCommand {
        WorkerCommand::new(
            &self.repo(),
            &self.home(),
            &self.worker_task_dir().join("worker.log"),
        )
    }

    /// A task with `prompt` for `server`'s model, in [`TestRepo::worker_task_dir`].
    pub fn worker_task(&self, prompt: &str, server: &FakeLlm) -> TaskSpec {
        task_spec("t1", prompt, &server.model_arg(), &self.worker_task_dir())
    }

    /// Keeps the directory after the test (for debugging a failure by hand).
    pub fn keep(self) -> PathBuf {
        let path = self.root.clone();
        let _ = self.tmp.keep();
        path
    }
}

impl Default for TestRepo {
    fn default() -> Self {
        Self::new()
    }
}

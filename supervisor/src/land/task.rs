//! A task as landing sees it: its record, whether it finished, whether it landed, and the
//! tree of its work now. Read from the task directory, so the same code serves the daemon
//! and a CLI without one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use kugetsu_protocol::Event;

use crate::exit::CliError;
use crate::land::api::MergedMarker;
use crate::land::repo::Store;
use crate::task::git::Worktree;
use crate::task::record::{RecordError, StateDir, TaskDir, TaskRecord, is_valid_id};

/// One task's record and directory.
#[derive(Debug, Clone)]
pub struct Task {
    pub dir: TaskDir,
    pub record: TaskRecord,
}

impl Task {
    /// Loads task `id` from `state`; a missing task is a usage error.
    pub fn load(state: &StateDir, id: &str) -> Result<Task, CliError> {
        if !is_valid_id(id) {
            return Err(CliError::Usage(format!("{id:?} is not a task id")));
        }
        let dir = state.task(id);
        let record = dir.load().map_err(|e| match e {
            RecordError::Missing { .. } => {
                CliError::Usage(format!("no task {id} in {}", state.root.display()))
            }
            other => CliError::Failed(kugetsu_protocol::error_chain(&other)),
        })?;
        Ok(Task { dir, record })
    }

    /// The task's branch (`kugetsu/<id>`).
    pub fn branch(&self) -> String {
        self.record
            .branch
            .clone()
            .unwrap_or_else(|| format!("kugetsu/{}", self.record.id))
    }

    /// The commit the task started from.
    pub fn base(&self) -> Result<&str, CliError> {
        self.record.base_commit.as_deref().ok_or_else(|| {
            CliError::Usage(format!(
                "task {} has no base commit (its repository had no commits)",
                self.record.id
            ))
        })
    }

    /// Whether its last event is `finished`.
    pub fn finished(&self) -> bool {
        crate::task::events::read_last(&self.dir.events_file())
            .is_some_and(|e| matches!(e.event, Event::Finished(_)))
    }

    /// Where it landed, if it did.
    pub fn merged(&self) -> Option<MergedMarker> {
        read_marker(&self.dir)
    }

    /// The tree of the task's work as it is now: its worktree's files (committed or not)
    /// while the worktree exists, else its branch's tip. `None` without a worktree.
    pub async fn tree_now(&self, store: &Store) -> Result<(String, &'static str), String> {
        let branch = self.branch();
        if self.record.workdir.is_dir()
            && let Ok(worktree) = Worktree::open(&self.record.repo, &self.record.workdir).await
        {
            let scratch = scratch_index(&self.dir);
            let tree = worktree.tree_now(&branch, &scratch).await;
            return tree.map(|t| (t, "worktree"));
        }
        let tip = store
            .commit_of(&format!("refs/heads/{branch}"))
            .await
            .ok_or_else(|| format!("the task's branch {branch} is gone"))?;
        store.tree_of(&tip).await.map(|t| (t, "branch"))
    }
}

impl Task {
    /// The task's commits that are on neither the branch it started from nor (once it
    /// landed) anywhere else that matters: `base_ref..kugetsu/<id>`, or `base_commit..` when
    /// it has no base branch. Empty once it landed (`merged.json`), and for a task without a
    /// worktree (its work is in the user's checkout). A shadow commit its tools made that the
    /// branch never took (still only in the task's private refs) counts too.
    pub async fn unmerged(&self) -> Result<Vec<String>, String> {
        if !self.record.worktree || self.merged().is_some() {
            return Ok(Vec::new());
        }
        let store = Store::open(&self.record.repo).await?;
        let branch = self.branch();
        let mut tips = Vec::new();
        if let Some(tip) = store.commit_of(&format!("refs/heads/{branch}")).await {
            tips.push(tip);
        }
        if let Some(private) = self.private_tip(&store, &branch).await {
            tips.push(private);
        }
        let base = match &self.record.base_ref {
            Some(base_ref) => store.commit_of(&format!("refs/heads/{base_ref}")).await,
            None => None,
        }
        .or_else(|| self.record.base_commit.clone());
        let Some(base) = base else {
            return Ok(tips);
        };
        let mut commits = Vec::new();
        for tip in tips {
            for commit in store.commits(&base, &tip).await? {
                if !commits.contains(&commit) {
                    commits.push(commit);
                }
            }
        }
        Ok(commits)
    }

    /// The commit the shadow's tools left in its private refs directory, when it names one
    /// (read as data: only a plain commit id is taken).
    async fn private_tip(&self, store: &Store, branch: &str) -> Option<String> {
        let name = branch.rsplit('/').next().unwrap_or(branch);
        let text = std::fs::read(self.dir.private_refs().join(name)).ok()?;
        let text = String::from_utf8_lossy(&text[..text.len().min(256)])
            .trim()
            .to_owned();
        if !matches!(text.len(), 40 | 64) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        store.commit_of(&text).await
    }
}

/// A scratch index file of ours in the task dir, unique to this call (several readers may
/// snapshot one worktree at once, and the task's own commit uses `commit-index`).
fn scratch_index(dir: &TaskDir) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.path()
        .join(format!("land-index-{}-{n}", std::process::id()))
}

/// Reads `merged.json`.
pub fn read_marker(dir: &TaskDir) -> Option<MergedMarker> {
    let bytes = std::fs::read(dir.merged_file()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `merged.json` atomically.
pub fn write_marker(dir: &TaskDir, marker: &MergedMarker) -> std::io::Result<()> {
    crate::task::record::write_json_atomic(&dir.merged_file(), marker)
}

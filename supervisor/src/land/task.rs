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

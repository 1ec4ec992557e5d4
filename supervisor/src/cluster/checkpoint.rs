//! Checkpoints of a shadow's worktree (placeholder signatures; the implementation lands next).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckpointError(String);

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub commit: String,
    pub parent: String,
}

pub async fn snapshot(_worktree: &Path, _repo: &Path) -> Result<Snapshot, CheckpointError> {
    Err(CheckpointError("checkpoints are not built yet".to_owned()))
}

pub async fn push(
    _repo: &Path,
    _remote: &str,
    _task: &str,
    _fence: i64,
    _commit: &str,
) -> Result<String, CheckpointError> {
    Err(CheckpointError("checkpoints are not built yet".to_owned()))
}

pub async fn restore(
    _repo: &Path,
    _remote: &str,
    _reference: &str,
    _commit: &str,
    _worktree: &Path,
    _branch: &str,
) -> Result<(), CheckpointError> {
    Err(CheckpointError("checkpoints are not built yet".to_owned()))
}

pub async fn restore_base(
    _repo: &Path,
    _worktree: &Path,
    _branch: &str,
    _base: &str,
) -> Result<(), CheckpointError> {
    Err(CheckpointError("checkpoints are not built yet".to_owned()))
}

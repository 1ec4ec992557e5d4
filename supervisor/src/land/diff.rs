//! `kugetsu diff ID [--stat]`: a task's changes against the commit it started from. For a
//! task with a worktree that is the worktree's files as they are now (so a running task's
//! uncommitted work shows), hashed filter-free; once the worktree is cleaned, its branch.

use crate::exit::CliError;
use crate::land::api::{DiffParams, DiffResult};
use crate::land::repo::Store;
use crate::land::task::Task;
use crate::task::record::StateDir;

/// The diff `params` ask for.
pub async fn diff(state: &StateDir, params: &DiffParams) -> Result<DiffResult, CliError> {
    let task = Task::load(state, &params.task)?;
    let base = task.base()?.to_owned();
    if !task.record.worktree {
        // A `--no-worktree` task worked in the user's own checkout.
        let diff = crate::task::git::checkout_diff(&task.record.workdir, &base, params.stat)
            .await
            .map_err(CliError::Failed)?;
        return Ok(DiffResult {
            task: params.task.clone(),
            base,
            source: "checkout".to_owned(),
            diff,
        });
    }
    let store = Store::open(&task.record.repo)
        .await
        .map_err(CliError::Failed)?;
    let (tree, source) = task.tree_now(&store).await.map_err(CliError::Failed)?;
    let diff = store
        .diff(&base, &tree, params.stat)
        .await
        .map_err(CliError::Failed)?;
    Ok(DiffResult {
        task: params.task.clone(),
        base,
        source: source.to_owned(),
        diff,
    })
}

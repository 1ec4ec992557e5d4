//! Removing what finished tasks leave behind: `kugetsu clean` and the `task_retention` policy.
//!
//! Both work on finished tasks' directories only (never a live one), and both keep work: a
//! branch is never removed, and a worktree holding changes that are not committed stays where
//! it is (reported as kept). Neither holds any of the daemon's state, so both run outside the
//! actor.

use std::time::{Duration, SystemTime};

use crate::rpc::{Cleaned, Kept};
use crate::task::git;
use crate::task::prepare::unix_ms;
use crate::task::record::{Origin, StateDir, id_created_unix_ms};

/// How often the retention policy looks for expired tasks.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// How long after start the first retention pass runs (start-up stays fast).
const RETENTION_FIRST: Duration = Duration::from_secs(60);

/// Removes the worktrees of finished daemon tasks created before `older_than_ms` (all of
/// them when `None`), and with `purge` their records too.
pub async fn clean(state: &StateDir, purge: bool, older_than_ms: Option<u64>) -> Cleaned {
    let mut cleaned = Cleaned::default();
    let live = state.live_ids().unwrap_or_default();
    for id in state.all_ids() {
        if live.contains(&id) {
            continue;
        }
        if let (Some(limit), Some(created)) = (older_than_ms, id_created_unix_ms(&id))
            && created >= limit
        {
            // Ids sort by creation time: every later one is younger too.
            break;
        }
        let dir = state.task(&id);
        let Ok(record) = dir.load() else { continue };
        if record.origin != Origin::Daemon {
            continue;
        }
        let finished = crate::task::events::read_last(&dir.events_file())
            .is_some_and(|e| e.event.kind() == "finished");
        if !finished {
            continue;
        }
        let mut worktree_gone = !record.worktree || !record.workdir.exists();
        if !worktree_gone {
            let branch = record
                .branch
                .clone()
                .unwrap_or_else(|| format!("kugetsu/{}", record.id));
            match git::uncommitted(&record.repo, &record.workdir, &branch, &dir.scratch_index())
                .await
            {
                Ok(changes) if changes.is_empty() => {
                    match git::remove_worktree(&record.repo, &record.workdir).await {
                        Ok(()) => {
                            cleaned.removed_worktrees.push(id.clone());
                            worktree_gone = true;
                        }
                        Err(e) => cleaned.kept.push(Kept {
                            task: id.clone(),
                            reason: format!("cannot remove its worktree: {e}"),
                        }),
                    }
                }
                Ok(changes) => cleaned.kept.push(Kept {
                    task: id.clone(),
                    reason: format!(
                        "its worktree has uncommitted changes ({})",
                        changes.join(", ")
                    ),
                }),
                Err(e) => cleaned.kept.push(Kept {
                    task: id.clone(),
                    reason: format!("cannot tell whether its worktree is clean: {e}"),
                }),
            }
        }
        if purge && worktree_gone && dir.remove().is_ok() {
            cleaned.purged.push(id);
        }
    }
    cleaned
}

/// Runs the retention policy in the background: finished tasks older than `retention` lose
/// their worktree (when clean) and their record. `None` turns it off.
pub fn spawn_retention(state: StateDir, retention: Option<Duration>) {
    let Some(retention) = retention else { return };
    tokio::spawn(async move {
        tokio::time::sleep(RETENTION_FIRST).await;
        loop {
            let cutoff = unix_ms(SystemTime::now())
                .saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
            let cleaned = clean(&state, true, Some(cutoff)).await;
            if !cleaned.purged.is_empty() || !cleaned.kept.is_empty() {
                eprintln!(
                    "kugetsu: retention: removed {} old tasks; kept {} worktrees with uncommitted work",
                    cleaned.purged.len(),
                    cleaned.kept.len()
                );
            }
            tokio::time::sleep(RETENTION_EVERY).await;
        }
    });
}

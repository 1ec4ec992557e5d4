//! Removing what finished tasks leave behind: `kugetsu clean` and the `task_retention` policy.
//!
//! Both work on finished tasks' directories only (never a live one), and both keep work,
//! reporting what they kept and why:
//! - a branch is never removed;
//! - a worktree holding changes that are not committed stays where it is (one whose work is
//!   all committed holds nothing its branch does not, and goes);
//! - a task whose branch holds commits that have not landed (not reachable from the branch it
//!   started from, no `merged.json`), or whose shadow left commits its branch never took,
//!   keeps its record, so `kugetsu diff` and `kugetsu merge` still find it.
//!
//! Neither holds any of the daemon's state, so both run outside the actor.

use std::time::{Duration, SystemTime};

use crate::rpc::{Cleaned, Kept};
use crate::task::git;
use crate::task::prepare::unix_ms;
use crate::task::record::{Origin, StateDir, id_created_unix_ms};

/// How often the retention policy looks for expired tasks.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// How many kept tasks one retention pass names in the log.
const KEPT_SHOWN: usize = 10;
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
        if purge && worktree_gone {
            let task = crate::land::task::Task {
                dir: dir.clone(),
                record: record.clone(),
            };
            match task.unmerged().await {
                Ok(commits) if commits.is_empty() => {}
                Ok(commits) => {
                    let branch = task.branch();
                    let plural = if commits.len() == 1 { "" } else { "s" };
                    cleaned.kept.push(Kept {
                        task: id.clone(),
                        reason: format!(
                            "its branch {branch} holds {} unmerged commit{plural} (land it with `kugetsu merge {id}`)",
                            commits.len()
                        ),
                    });
                    continue;
                }
                Err(e) => {
                    cleaned.kept.push(Kept {
                        task: id.clone(),
                        reason: format!("cannot tell whether its commits landed: {e}"),
                    });
                    continue;
                }
            }
            match dir.remove() {
                Ok(()) => cleaned.purged.push(id),
                Err(e) => cleaned.kept.push(Kept {
                    task: id,
                    reason: format!("cannot remove its record: {e}"),
                }),
            }
        }
    }
    cleaned
}

/// Runs the retention policy in the background: finished tasks older than the retention in
/// `retention` (re-read at each pass, so a config reload takes effect) lose their worktree
/// (when clean) and their record. `None` turns it off.
pub fn spawn_retention(
    state: StateDir,
    retention: tokio::sync::watch::Receiver<Option<Duration>>,
    daemon: tokio::sync::mpsc::UnboundedSender<crate::daemon::command::Command>,
) {
    tokio::spawn(async move {
        tokio::time::sleep(RETENTION_FIRST).await;
        loop {
            let Some(retention) = *retention.borrow() else {
                tokio::time::sleep(RETENTION_EVERY).await;
                continue;
            };
            let cutoff = unix_ms(SystemTime::now())
                .saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
            let cleaned = clean(&state, true, Some(cutoff)).await;
            if !cleaned.purged.is_empty() {
                let tasks = cleaned.purged.clone();
                if daemon
                    .send(crate::daemon::command::Command::Forget { tasks })
                    .is_err()
                {
                    return;
                }
            }
            if !cleaned.purged.is_empty() || !cleaned.kept.is_empty() {
                tracing::info!(
                    "retention: removed {} old tasks; kept {} with work not committed or not landed",
                    cleaned.purged.len(),
                    cleaned.kept.len()
                );
                for kept in cleaned.kept.iter().take(KEPT_SHOWN) {
                    tracing::info!(task = %kept.task, "retention: kept: {}", kept.reason);
                }
                if cleaned.kept.len() > KEPT_SHOWN {
                    tracing::info!(
                        "retention: ... and {} more (`kugetsu clean` lists them)",
                        cleaned.kept.len() - KEPT_SHOWN
                    );
                }
            }
            tokio::time::sleep(RETENTION_EVERY).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use kugetsu_protocol::{
        Event, FinishStatus, Finished, NetworkMode, Priority, SandboxMode, Usage,
    };

    use super::*;
    use crate::task::events::EventLog;
    use crate::task::record::{TaskRecord, task_id_at};

    const DAY_MS: u64 = 24 * 3600 * 1000;

    /// A finished (or, with `finished: false`, still live) daemon task created `age_ms` ago.
    fn task(state: &StateDir, age_ms: u64, finished: bool) -> String {
        let now = unix_ms(SystemTime::now());
        let id = task_id_at(now - age_ms);
        let dir = state.task(&id);
        std::fs::create_dir_all(dir.path()).unwrap();
        dir.save(&TaskRecord {
            id: id.clone(),
            prompt: "p".to_owned(),
            model: "scripted/demo".to_owned(),
            repo: state.root.clone(),
            workdir: state.root.clone(),
            branch: None,
            base_commit: None,
            base_ref: None,
            worktree: false,
            max_turns: 1,
            timeout_ms: None,
            deadline_unix_ms: None,
            mem_limit: 1 << 20,
            created_unix_ms: now - age_ms,
            sandbox: SandboxMode::Workspace,
            network: NetworkMode::On,
            priority: Priority::Normal,
            origin: Origin::Daemon,
            budget_tokens: None,
            budget_usd: None,
            mcp: Vec::new(),
        })
        .unwrap();
        let mut log = EventLog::open(&dir.events_file(), &id).unwrap();
        if finished {
            log.publish(Event::Finished(Finished {
                status: FinishStatus::Completed,
                result: None,
                error: None,
                turns: 1,
                usage: Usage::default(),
                restarts: 0,
                branch: None,
                worktree: None,
                changed_files: Vec::new(),
            }));
        } else {
            state.mark_live(&id).unwrap();
        }
        id
    }

    #[tokio::test]
    async fn retention_removes_only_old_finished_tasks() {
        let root = std::env::temp_dir().join(format!("kugetsu-retention-{}", std::process::id()));
        let state = StateDir { root: root.clone() };
        let old = task(&state, 40 * DAY_MS, true);
        let old_live = task(&state, 41 * DAY_MS, false);
        let young = task(&state, DAY_MS, true);
        let cutoff = unix_ms(SystemTime::now()) - 30 * DAY_MS;
        let cleaned = clean(&state, true, Some(cutoff)).await;
        assert_eq!(cleaned.purged, vec![old.clone()]);
        assert!(!state.task(&old).exists());
        assert!(
            state.task(&old_live).exists(),
            "a live task is never removed"
        );
        assert!(state.task(&young).exists(), "a young task is kept");
        std::fs::remove_dir_all(&root).unwrap();
    }
}

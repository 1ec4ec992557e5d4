//! `kugetsu merge ID... [--into BRANCH] [--squash] [--test CMD]`: landing tasks, in the order
//! given, onto a branch.
//!
//! For each task, against the branch's tip at that moment:
//! 1. its commits (`base..kugetsu/<id>`) are replayed onto the tip one by one, keeping their
//!    authors and messages, each by `git merge-tree --write-tree` over its parent (a
//!    cherry-pick in memory; when the tip is an ancestor of the task's branch, the branch's
//!    own commits are taken as they are); with `--squash`, the whole change becomes one
//!    commit on the tip;
//! 2. the test command (`--test`, else config `test_command`) runs on the result in a scratch
//!    directory under the shadow sandbox ([`crate::land::scratch`]);
//! 3. a checkout of the branch (the user's, found by git's worktree records) is brought along
//!    with `read-tree -m -u`; one with uncommitted changes to tracked files stops the whole
//!    merge before anything moves;
//! 4. the branch moves with `update-ref NEW OLD`, and the task's `merged.json` is written.
//!
//! A conflict, a failing test or a branch that moved meanwhile refuses that task: nothing of
//! it lands, the branch stays where it was, and the next task is tried. Merges are serialized
//! within a process; between processes `update-ref`'s old value keeps them honest.

use std::sync::LazyLock;

use crate::config::Config;
use crate::exit::CliError;
use crate::land::api::{Landed, MergeParams, MergeReport, MergedMarker, Refused};
use crate::land::repo::{Merge, Store};
use crate::land::scratch;
use crate::land::task::{Task, write_marker};
use crate::task::git;
use crate::task::record::StateDir;

/// One merge at a time in this process (the daemon serves many connections).
static MERGING: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(Default::default);

/// Lands `params.tasks` in order; what could not land is in the report's `refused`.
pub async fn merge(
    state: &StateDir,
    config: &Config,
    params: &MergeParams,
) -> Result<MergeReport, CliError> {
    if params.tasks.is_empty() {
        return Err(CliError::Usage(
            "name at least one task to merge".to_owned(),
        ));
    }
    if params.into.as_deref().is_some_and(|b| !valid_branch(b)) {
        return Err(CliError::Usage(format!(
            "--into {:?} is not a branch name",
            params.into.as_deref().unwrap_or_default()
        )));
    }
    // Every id must name a task before anything lands.
    let tasks = params
        .tasks
        .iter()
        .map(|id| Task::load(state, id))
        .collect::<Result<Vec<_>, _>>()?;
    let test = params
        .test
        .clone()
        .or_else(|| config.test_command.clone())
        .filter(|c| !c.trim().is_empty());
    let _one_at_a_time = MERGING.lock().await;
    let mut report = MergeReport::default();
    for task in tasks {
        let landing = Landing {
            task: &task,
            state,
            config,
            squash: params.squash,
            test: test.as_deref(),
        };
        match landing.land(params.into.as_deref()).await {
            Ok(landed) => report.landed.push(landed),
            Err(refused) => {
                let stop = refused.reason == "dirty_checkout";
                report.refused.push(refused);
                if stop {
                    break;
                }
            }
        }
    }
    Ok(report)
}

/// Whether `name` can be a branch under `refs/heads/` (checked again by git).
fn valid_branch(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['-', '/'])
        && !name.ends_with(['/', '.'])
        && !name.contains("..")
        && !name.contains("@{")
        && !name
            .bytes()
            .any(|b| b.is_ascii_control() || b" ~^:?*[\\".contains(&b))
}

/// One task being landed.
struct Landing<'a> {
    task: &'a Task,
    state: &'a StateDir,
    config: &'a Config,
    squash: bool,
    test: Option<&'a str>,
}

impl Landing<'_> {
    fn refuse(&self, reason: &str, message: String) -> Refused {
        Refused {
            task: self.task.record.id.clone(),
            reason: reason.to_owned(),
            message,
            files: Vec::new(),
            output: None,
        }
    }

    async fn land(&self, into: Option<&str>) -> Result<Landed, Refused> {
        let record = &self.task.record;
        let id = &record.id;
        if let Some(marker) = self.task.merged() {
            return Err(self.refuse(
                "already_merged",
                format!(
                    "task {id} already landed on {} ({})",
                    marker.into,
                    short(&marker.commit)
                ),
            ));
        }
        if !self.task.finished() {
            return Err(self.refuse(
                "not_finished",
                format!("task {id} is still running; merge it once it has finished"),
            ));
        }
        if !record.worktree {
            return Err(self.refuse(
                "error",
                format!("task {id} worked in the checkout itself (--no-worktree): its changes are already there"),
            ));
        }
        let Some(target) = into.map(str::to_owned).or_else(|| record.base_ref.clone()) else {
            return Err(self.refuse(
                "error",
                format!("task {id} did not start from a branch; say where with --into BRANCH"),
            ));
        };
        if target.starts_with("kugetsu/") {
            // A shadow's branch (and the worktree it is checked out in) is the shadow's.
            return Err(self.refuse(
                "error",
                format!("task {id}: {target} is a shadow's branch; land on one of yours with --into BRANCH"),
            ));
        }
        let error = |e: String| self.refuse("error", format!("task {id}: {e}"));
        let store = Store::open(&record.repo).await.map_err(error)?;
        let Some(tip) = store.commit_of(&format!("refs/heads/{target}")).await else {
            return Err(error(format!("there is no branch {target}")));
        };
        let branch = self.task.branch();
        let Some(task_tip) = store.commit_of(&format!("refs/heads/{branch}")).await else {
            return Err(error(format!("its branch {branch} is gone")));
        };
        let base = self.task.base().map_err(|e| error(e.to_string()))?;
        let commits = store.commits(base, &task_tip).await.map_err(error)?;
        if commits.is_empty() {
            return Err(self.refuse(
                "nothing_to_merge",
                format!("task {id} made no commits on {branch}"),
            ));
        }

        // A checkout of the target with local changes stops everything, before any work.
        let checkouts: Vec<_> = store
            .checkouts_of(&target)
            .await
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        for checkout in &checkouts {
            let changes = git::checkout_changes(checkout).await.map_err(error)?;
            if !changes.is_empty() {
                let mut refused = self.refuse(
                    "dirty_checkout",
                    format!(
                        "{target} is checked out at {} with uncommitted changes; commit or stash them, then merge again (nothing was merged)",
                        checkout.display()
                    ),
                );
                refused.files = changes;
                return Err(refused);
            }
        }

        let new = match self.replay(&store, base, &tip, &task_tip, &commits).await? {
            Replayed::Done(new) => new,
            Replayed::Conflict(files) => {
                let mut refused = self.refuse(
                    "conflict",
                    format!(
                        "task {id} conflicts with {target} in {}; {target} stays at {}",
                        files.join(", "),
                        short(&tip)
                    ),
                );
                refused.files = files;
                return Err(refused);
            }
        };

        if let Some(command) = self.test {
            let tree = store.tree_of(&new).await.map_err(error)?;
            let outcome = scratch::run_test(&store, &tree, command, self.config, self.state)
                .await
                .map_err(error)?;
            if !outcome.passed {
                let mut refused = self.refuse(
                    "test_failed",
                    format!(
                        "task {id}: the test `{command}` failed on the merged result ({}); {target} stays at {}",
                        outcome.status,
                        short(&tip)
                    ),
                );
                refused.output = Some(outcome.tail);
                return Err(refused);
            }
        }

        // The checkouts first: if one cannot follow, nothing moves.
        let mut advanced: Vec<std::path::PathBuf> = Vec::new();
        for checkout in &checkouts {
            if let Err(e) = git::checkout_advance(checkout, &tip, &new).await {
                for done in &advanced {
                    let _ = git::checkout_advance(done, &new, &tip).await;
                }
                return Err(self.refuse(
                    "dirty_checkout",
                    format!(
                        "{target} is checked out at {} and cannot be brought along ({e}); {target} stays at {}",
                        checkout.display(),
                        short(&tip)
                    ),
                ));
            }
            advanced.push(checkout.clone());
        }
        if let Err(e) = store.move_branch(&target, &new, &tip).await {
            for done in &advanced {
                let _ = git::checkout_advance(done, &new, &tip).await;
            }
            return Err(self.refuse(
                "moved",
                format!("{target} changed while task {id} was being landed ({e}); try again"),
            ));
        }
        let marker = MergedMarker {
            into: target.clone(),
            commit: new.clone(),
            unix_ms: crate::task::prepare::unix_ms(std::time::SystemTime::now()),
        };
        if let Err(e) = write_marker(&self.task.dir, &marker) {
            tracing::error!(
                task = %id,
                "the task landed on {target} but its merged marker could not be written: {e}"
            );
        }
        let added = store.commits(&tip, &new).await.map_or(0, |c| c.len());
        Ok(Landed {
            task: id.clone(),
            into: target,
            commit: new,
            commits: added,
            checkout: advanced.first().map(|p| p.display().to_string()),
        })
    }

    /// The task's work on `tip`, as commits (or one, with `--squash`).
    async fn replay(
        &self,
        store: &Store,
        base: &str,
        tip: &str,
        task_tip: &str,
        commits: &[String],
    ) -> Result<Replayed, Refused> {
        let id = &self.task.record.id;
        let error = |e: String| self.refuse("error", format!("task {id}: {e}"));
        if self.squash {
            return match store.merge(base, tip, task_tip).await.map_err(error)? {
                Merge::Conflict(files) => Ok(Replayed::Conflict(files)),
                Merge::Clean(tree) => {
                    let message = format!(
                        "kugetsu {id}: {}\n\nSquashed from kugetsu/{id} ({} commits).\n",
                        first_line(&self.task.record.prompt),
                        commits.len()
                    );
                    let commit = store
                        .commit(&tree, tip, None, &message)
                        .await
                        .map_err(error)?;
                    Ok(Replayed::Done(commit))
                }
            };
        }
        if store.is_ancestor(tip, task_tip).await {
            return Ok(Replayed::Done(task_tip.to_owned()));
        }
        let mut current = tip.to_owned();
        for commit in commits {
            let parent = store
                .commit_of(&format!("{commit}^"))
                .await
                .ok_or_else(|| error(format!("commit {} has no parent", short(commit))))?;
            let tree = match store
                .merge(&parent, &current, commit)
                .await
                .map_err(error)?
            {
                Merge::Conflict(files) => return Ok(Replayed::Conflict(files)),
                Merge::Clean(tree) => tree,
            };
            if tree == store.tree_of(&current).await.map_err(error)? {
                continue; // already there
            }
            let author = store.authorship(commit).await.map_err(error)?;
            current = store
                .commit(&tree, &current, Some(&author), &author.message)
                .await
                .map_err(error)?;
        }
        Ok(Replayed::Done(current))
    }
}

/// What replaying a task's commits gave.
enum Replayed {
    /// The new tip.
    Done(String),
    /// These files conflict.
    Conflict(Vec<String>),
}

fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").chars().take(72).collect()
}

#[cfg(test)]
mod tests {
    use super::valid_branch;

    #[test]
    fn branch_names_that_git_or_a_shell_would_misread_are_refused() {
        for good in ["main", "release/1.2", "kugetsu/1m8s106ps6pxr", "feature-x"] {
            assert!(valid_branch(good), "{good}");
        }
        for bad in [
            "", "-x", "/main", "main/", "a..b", "a b", "a:b", "a~1", "x@{1}", "m.", "a\nb",
        ] {
            assert!(!valid_branch(bad), "{bad:?}");
        }
    }
}

//! The conflict radar: while shadows run, whose changes would not merge with whose.
//!
//! The daemon shows the radar every event it sees ([`Radar::observe`]); a `turn_end` after a
//! tool that may have changed files (`write`, `edit`, `bash`), and a `finished`, make it look
//! at the task again. The radar runs in one background task of its own, so the actor never
//! waits on git. For a task whose turn ended it:
//! 1. hashes the worktree into a tree, filter-free ([`Task::tree_now`]), and reads the tip of
//!    the branch it started from; when neither changed since its last look, that is all;
//! 2. lists the paths the task changed against its base commit;
//! 3. for every other task of the same repository it has seen (running, or finished and not
//!    landed) that changed one of those paths, merges the two trees in memory with
//!    `git merge-tree --write-tree` over their common base; and when the base branch has
//!    new commits touching those paths, merges the task's tree with the branch's tip;
//! 4. reports each overlap that is new or changed as a [`Conflict`] to the daemon, which
//!    records a `conflict {with, files}` event on each live task concerned and, with
//!    `steer_on_conflict`, steers the later of the two shadows with [`Conflict::note`].
//!
//! No worktree, index or ref is touched (only objects are written). A task is looked at at
//! most once per [`MIN_INTERVAL`]; turn ends meanwhile are coalesced into that one look. Disjoint changes cost no merge at all.
//! The radar knows the tasks whose turns ended since the daemon started and, from the first
//! time it meets a repository, that repository's finished tasks that have not landed (by
//! their branches); a task that landed (`merged.json`) leaves its view.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use std::time::Duration;

use kugetsu_protocol::Event;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::land::repo::{Merge, Store};
use crate::land::task::Task;
use crate::task::record::StateDir;

/// The least time between two looks at one task: a shadow that ends turns faster than this
/// is looked at once per interval, with everything it changed meanwhile.
const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// How many of the state dir's newest tasks the radar reads when it first meets a repository.
const SEED_LIMIT: usize = 500;

/// The `with` entry for the task's own base branch.
pub const BASE: &str = "base";

/// An overlap to report on `task`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The task the event goes on.
    pub task: String,
    /// The other task, or [`BASE`].
    pub with: String,
    pub files: Vec<String>,
    /// What to tell this task's model, when it is the one to steer (the later of the two, or
    /// the task itself against its base).
    pub note: Option<String>,
}

/// The daemon's handle on the radar; the radar stops once it is dropped.
#[derive(Debug)]
pub struct Radar {
    tx: mpsc::UnboundedSender<String>,
    /// Tasks that ran a tool able to change files (`write`, `edit`, `bash`) since their last
    /// look: a turn without one leaves the tree as it was, and costs nothing.
    touched: std::collections::HashSet<String>,
}

impl Radar {
    /// Starts the radar on `state`; overlaps go to `report`.
    pub fn spawn(state: StateDir, report: impl Fn(Conflict) + Send + 'static) -> Radar {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let mut view = View::default();
            // Tasks waiting for their next look, and when they may have it.
            let mut due: BTreeMap<String, Instant> = BTreeMap::new();
            let mut last_look: HashMap<String, Instant> = HashMap::new();
            loop {
                let next = due.values().min().copied();
                tokio::select! {
                    message = rx.recv() => {
                        let Some(id) = message else { return };
                        let at = last_look.get(&id).map_or_else(Instant::now, |t| *t + MIN_INTERVAL);
                        due.entry(id).or_insert(at);
                        continue;
                    }
                    () = sleep_until_or_forever(next) => {}
                }
                let now = Instant::now();
                let ready: Vec<String> = due
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in ready {
                    due.remove(&id);
                    last_look.insert(id.clone(), Instant::now());
                    for conflict in view.look(&state, &id).await {
                        report(conflict);
                    }
                }
                last_look.retain(|_, t| t.elapsed() < MIN_INTERVAL);
            }
        });
        Radar {
            tx,
            touched: Default::default(),
        }
    }

    /// Notes one of task `id`'s events: a `turn_end` after a tool that may have changed
    /// files, and a `finished`, make the radar look at the task again.
    pub fn observe(&mut self, id: &str, event: &Event) {
        match event {
            Event::ToolEnd { tool, .. } if matches!(tool.as_str(), "write" | "edit" | "bash") => {
                self.touched.insert(id.to_owned());
            }
            Event::TurnEnd { .. } if self.touched.remove(id) => self.changed(id),
            Event::Finished(_) => {
                self.touched.remove(id);
                self.changed(id);
            }
            _ => {}
        }
    }

    /// Task `id`'s tree may have changed.
    pub fn changed(&self, id: &str) {
        let _ = self.tx.send(id.to_owned());
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the radar knows of one task.
#[derive(Debug, Clone)]
struct Seen {
    common: PathBuf,
    base: String,
    base_ref: Option<String>,
    tree: String,
    /// Paths changed against `base`.
    paths: BTreeSet<String>,
    /// The base branch's tip at the last look.
    base_tip: Option<String>,
}

/// Everything the radar knows.
#[derive(Debug, Default)]
struct View {
    seen: BTreeMap<String, Seen>,
    /// One store per repository (finding the git dir is a git call).
    stores: HashMap<PathBuf, Store>,
    /// The files last reported per pair (task, other), so an unchanged overlap is not
    /// reported again.
    reported: HashMap<(String, String), Vec<String>>,
}

impl View {
    /// Looks at task `id` again; returns the overlaps to report.
    async fn look(&mut self, state: &StateDir, id: &str) -> Vec<Conflict> {
        let Ok(task) = Task::load(state, id) else {
            return Vec::new();
        };
        if !task.record.worktree || task.merged().is_some() {
            self.forget(id);
            return Vec::new();
        }
        let Some(base) = task.record.base_commit.clone() else {
            return Vec::new();
        };
        let repo = task.record.repo.clone();
        let store = match self.stores.get(&repo) {
            Some(store) => store.clone(),
            None => match Store::open(&repo).await {
                Ok(store) => {
                    self.stores.insert(repo.clone(), store.clone());
                    self.seed(state, &repo, &store, id).await;
                    store
                }
                Err(_) => return Vec::new(),
            },
        };
        let Ok((tree, _)) = task.tree_now(&store).await else {
            return Vec::new();
        };
        let base_tip = match &task.record.base_ref {
            Some(base_ref) => store.commit_of(&format!("refs/heads/{base_ref}")).await,
            None => None,
        };
        let previous = self.seen.get(id);
        if previous.is_some_and(|p| p.tree == tree && p.base_tip == base_tip) {
            return Vec::new();
        }
        let paths = match previous {
            Some(p) if p.tree == tree => p.paths.clone(),
            _ => match store.changed_paths(&base, &tree).await {
                Ok(paths) => paths.into_iter().collect(),
                Err(_) => return Vec::new(),
            },
        };
        let me = Seen {
            common: store.common().to_path_buf(),
            base,
            base_ref: task.record.base_ref.clone(),
            tree,
            paths,
            base_tip,
        };
        self.seen.insert(id.to_owned(), me.clone());
        if me.paths.is_empty() {
            return Vec::new();
        }

        let mut found: Vec<(String, Vec<String>)> = Vec::new();
        let others: Vec<(String, Seen)> = self
            .seen
            .iter()
            .filter(|(other, seen)| *other != id && seen.common == me.common)
            .map(|(other, seen)| (other.clone(), seen.clone()))
            .collect();
        for (other, seen) in others {
            if crate::land::task::read_marker(&state.task(&other)).is_some() {
                self.forget(&other);
                continue;
            }
            if me.paths.is_disjoint(&seen.paths) {
                continue;
            }
            let base = if seen.base == me.base {
                me.base.clone()
            } else {
                match store.merge_base(&me.base, &seen.base).await {
                    Ok(base) => base,
                    Err(_) => continue,
                }
            };
            if let Ok(Merge::Conflict(files)) = store.merge(&base, &me.tree, &seen.tree).await {
                found.push((other, files));
            }
        }
        if let Some(tip) = me.base_tip.as_deref().filter(|tip| *tip != me.base)
            && let Ok(moved) = store.changed_paths(&me.base, tip).await
            && moved.iter().any(|p| me.paths.contains(p))
            && let Ok(Merge::Conflict(files)) = store.merge(&me.base, &me.tree, tip).await
        {
            found.push((BASE.to_owned(), files));
        }

        let mut conflicts = Vec::new();
        for (other, files) in found {
            let key = (id.to_owned(), other.clone());
            if self.reported.get(&key) == Some(&files) {
                continue;
            }
            self.reported.insert(key, files.clone());
            let shown = files.join(", ");
            if other == BASE {
                let branch = me.base_ref.as_deref().unwrap_or("the base branch");
                conflicts.push(Conflict {
                    task: id.to_owned(),
                    with: other,
                    files,
                    note: Some(format!(
                        "Note from kugetsu: new commits on {branch} change {shown} in ways that conflict with your changes there. Keep your edits to these files to what the task needs."
                    )),
                });
                continue;
            }
            self.reported
                .insert((other.clone(), id.to_owned()), files.clone());
            // Ids sort by creation time: the later task is the one steered.
            let (later, earlier) = if *id > *other {
                (id.to_owned(), other.clone())
            } else {
                (other.clone(), id.to_owned())
            };
            let note = format!(
                "Note from kugetsu: task {earlier}, another shadow on this repository, also changes {shown}, and your changes conflict with its changes there. Keep your edits to these files to what your task needs; the other change may land first."
            );
            for (task, with) in [(id.to_owned(), other.clone()), (other, id.to_owned())] {
                conflicts.push(Conflict {
                    note: (task == later).then(|| note.clone()),
                    task,
                    with,
                    files: files.clone(),
                });
            }
        }
        conflicts
    }

    /// The first time a repository comes up: its finished tasks that have not landed (the
    /// newest [`SEED_LIMIT`] of the state dir), by their branches, so a task that ended before
    /// the daemon started is compared too.
    async fn seed(
        &mut self,
        state: &StateDir,
        repo: &std::path::Path,
        store: &Store,
        except: &str,
    ) {
        for id in state.all_ids().into_iter().rev().take(SEED_LIMIT) {
            if id == except || self.seen.contains_key(&id) {
                continue;
            }
            let Ok(task) = Task::load(state, &id) else {
                continue;
            };
            if task.record.repo != repo
                || !task.record.worktree
                || task.merged().is_some()
                || !task.finished()
            {
                continue;
            }
            let Some(base) = task.record.base_commit.clone() else {
                continue;
            };
            let Some(tip) = store
                .commit_of(&format!("refs/heads/{}", task.branch()))
                .await
            else {
                continue;
            };
            let (Ok(tree), Ok(paths)) = (
                store.tree_of(&tip).await,
                store.changed_paths(&base, &tip).await,
            ) else {
                continue;
            };
            if paths.is_empty() {
                continue;
            }
            self.seen.insert(
                id,
                Seen {
                    common: store.common().to_path_buf(),
                    base,
                    base_ref: task.record.base_ref.clone(),
                    tree,
                    paths: paths.into_iter().collect(),
                    base_tip: None,
                },
            );
        }
    }

    fn forget(&mut self, id: &str) {
        self.seen.remove(id);
        self.reported.retain(|(a, b), _| a != id && b != id);
    }
}

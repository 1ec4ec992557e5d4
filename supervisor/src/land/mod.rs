//! Landing the shadows' work: `kugetsu diff`, `kugetsu merge` and the conflict radar.
//!
//! Everything here treats what a shadow wrote as hostile input: every git call goes through
//! the inert wrapper of [`crate::task::git`], merges happen in memory (`git merge-tree
//! --write-tree`) on the repository's object store, and the only checkout ever updated is the
//! user's own, clean one, by git's two-tree `read-tree -m -u`, which refuses to overwrite
//! anything. A branch moves with `update-ref` and its old value, so a concurrent change is
//! never lost.
//!
//! - [`api`]: the `diff`/`merge` params and results, the `merged.json` marker.
//! - [`task`]: finding a task's record and what it started from, with or without a daemon.
//! - [`repo`]: the git operations (merge-tree, commit-tree, update-ref, writing a tree out).
//! - [`diff`]: a task's changes against the commit it started from.
//! - [`merge`]: landing tasks in order onto a branch, with a test command.
//! - [`radar`]: the conflict radar, comparing running and unlanded tasks after each turn.
//! - [`scratch`]: the scratch directory a test command runs in, under a shadow's sandbox.

pub mod api;
pub mod diff;
pub mod merge;
pub mod radar;
pub mod repo;
pub mod scratch;
pub mod task;

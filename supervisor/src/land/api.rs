//! What landing says over JSON-RPC and on disk: `diff` and `merge` params and results, and
//! the `merged.json` marker of a landed task.

use serde::{Deserialize, Serialize};

/// `diff` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffParams {
    pub task: String,
    /// A summary of the changed files (`git diff --stat`) instead of the patch.
    #[serde(default)]
    pub stat: bool,
}

/// `diff`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffResult {
    pub task: String,
    /// The commit the task started from.
    pub base: String,
    /// What the diff is of: `worktree` (the files as they are now, committed or not) or
    /// `branch` (the task's branch; its worktree is gone).
    pub source: String,
    /// The patch, or the stat; empty when nothing changed.
    pub diff: String,
}

/// `merge` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeParams {
    /// The tasks, landed in this order.
    pub tasks: Vec<String>,
    /// The branch to land on (default: the branch each task started from).
    #[serde(default)]
    pub into: Option<String>,
    /// One commit per task instead of its commits replayed one by one.
    #[serde(default)]
    pub squash: bool,
    /// The command that must pass on the result (default: the config's `test_command`).
    #[serde(default)]
    pub test: Option<String>,
}

/// `merge`'s result: what landed and what was refused, in the order asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeReport {
    pub landed: Vec<Landed>,
    pub refused: Vec<Refused>,
}

/// A task that landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Landed {
    pub task: String,
    /// The branch it landed on.
    pub into: String,
    /// The branch's new tip.
    pub commit: String,
    /// How many commits were added to the branch.
    pub commits: usize,
    /// The checkout of the branch that was brought along, if one is checked out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout: Option<String>,
}

/// A task that was not landed (its target branch did not move for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub task: String,
    /// `conflict`, `test_failed`, `dirty_checkout`, `not_finished`, `already_merged`,
    /// `nothing_to_merge`, `moved` (the branch moved meanwhile), or `error`.
    pub reason: String,
    /// For a person.
    pub message: String,
    /// The conflicting files (`conflict`), or the checkout's changed files
    /// (`dirty_checkout`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// The last lines of the test command's output (`test_failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// `merged.json`: where and when a task landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedMarker {
    /// The branch it landed on.
    pub into: String,
    /// That branch's tip right after it landed.
    pub commit: String,
    pub unix_ms: u64,
}

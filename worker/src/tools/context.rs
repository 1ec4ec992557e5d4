//! Where a shadow's tools run.

use std::path::PathBuf;

/// Where tools run: the worktree they are confined to and where bash keeps full outputs.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// The worktree, canonicalized. No tool reads or writes outside it.
    pub root: PathBuf,
    /// Where full tool outputs are kept (`<task_dir>/tool-output`); created on first use.
    pub output_dir: PathBuf,
}

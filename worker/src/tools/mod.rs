//! The tools a shadow's model may call, all confined to the shadow's worktree.

use std::path::PathBuf;

use crate::conversation::ToolSpec;

/// Where tools run.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// The worktree, canonicalized. No tool reads or writes outside it.
    pub root: PathBuf,
    /// Where full tool outputs are kept (`<task_dir>/tool-output`).
    pub output_dir: PathBuf,
}

/// What a tool call produced, as the model will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub ok: bool,
    pub output: String,
    /// Whether `output` was cut; the full text is in `output_dir`.
    pub truncated: bool,
}

/// The tools offered to the model.
pub fn specs() -> Vec<ToolSpec> {
    Vec::new()
}

/// Runs tool `name`. Dropping the future kills whatever the tool started.
pub async fn run(
    _ctx: &ToolContext,
    _call_id: &str,
    name: &str,
    _args: &serde_json::Value,
) -> ToolOutput {
    ToolOutput {
        ok: false,
        output: format!("tool {name} not built yet"),
        truncated: false,
    }
}

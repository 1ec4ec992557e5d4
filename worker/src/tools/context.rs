//! Where a shadow's tools run.

use std::path::PathBuf;
use std::sync::Arc;

use kugetsu_protocol::SandboxPolicy;

/// Where tools run: the worktree they are confined to, where bash keeps full outputs, and the
/// memory a bash command may use.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// The worktree, canonicalized. No tool reads or writes outside it.
    pub root: PathBuf,
    /// Where full tool outputs are kept (`<task_dir>/tool-output`); created on first use.
    pub output_dir: PathBuf,
    /// The shadow's memory limit in bytes (worker plus tool processes). A bash command that
    /// takes the shadow past it is killed; `None` means bash commands are not measured.
    pub mem_limit: Option<u64>,
    /// The `kugetsu-worker` binary, to run each bash call under a tool guard (see
    /// [`crate::guard`]) so nothing it starts outlives a killed worker. `None` runs the shell
    /// directly (tests, where the current executable is not the worker).
    pub guard: Option<PathBuf>,
    /// The sandbox every tool process runs in, applied by the tool guard (so a policy needs a
    /// `guard`). `None` runs tools unconfined (tests; a supervisor that sent no policy).
    pub sandbox: Option<Arc<SandboxPolicy>>,
}

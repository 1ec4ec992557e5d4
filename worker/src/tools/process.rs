//! What every tool process starts with, shared by `bash` and the MCP servers a shadow runs
//! (see [`crate::mcp`]): the scrubbed environment with the sandbox's variables, and the command
//! that runs a program under the tool guard.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::context::ToolContext;
use super::env::scrubbed;
use super::outcome::ToolError;
use crate::sandbox::POLICY_VAR;
use kugetsu_protocol::SandboxMode;

/// The environment a tool process gets: `vars` minus secrets, with `TMPDIR` (and `TMP`,
/// `TEMP`) pointed at the task's private temp dir and the sandbox policy for the guard when
/// the shadow is sandboxed. A policy without a guard to apply it is refused rather than run
/// unconfined.
pub(crate) fn environment<I>(
    ctx: &ToolContext,
    vars: I,
) -> Result<Vec<(OsString, OsString)>, ToolError>
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    let mut env = scrubbed(vars);
    if let Some(policy) = ctx.sandbox.as_deref()
        && policy.mode == SandboxMode::Workspace
    {
        if ctx.guard.is_none() {
            return Err(ToolError::Failed(
                "the sandbox needs the tool guard (the worker binary), which was not found"
                    .to_owned(),
            ));
        }
        if let Some(tmp) = &policy.tmp_dir {
            env.retain(|(k, _)| !["TMPDIR", "TMP", "TEMP"].iter().any(|name| k == name));
            for name in ["TMPDIR", "TMP", "TEMP"] {
                env.push((name.into(), tmp.into()));
            }
        }
        let json = serde_json::to_string(policy)
            .map_err(|e| ToolError::Failed(format!("cannot encode the sandbox: {e}")))?;
        env.push((POLICY_VAR.into(), json.into()));
    }
    Ok(env)
}

/// A command that runs `program` (a path) under the tool guard when there is one (see
/// [`crate::guard`]), else directly. The caller adds the arguments, the environment, the
/// stdio and [`kugetsu_os::process::contain`].
pub(crate) fn guarded(program: &Path, guard: Option<&Path>) -> Command {
    match guard {
        Some(guard) => {
            let mut cmd = Command::new(guard);
            cmd.arg(crate::guard::GUARD_ARG)
                .arg(std::process::id().to_string())
                .arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// The value of `PATH` in `env`.
pub(crate) fn path_of(env: &[(OsString, OsString)]) -> OsString {
    env.iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The first `name` in the directories of `path` that is an executable file; a `name` with a
/// slash is taken as it is.
pub(crate) fn find_in_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |candidate: &Path| {
        candidate
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let candidate = PathBuf::from(name);
        return executable(&candidate).then_some(candidate);
    }
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| executable(candidate))
}

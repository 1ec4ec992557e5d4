//! An MCP server as a child process, started the way bash commands are: under the tool guard
//! (which leads its own process group, enters the shadow's sandbox, and kills everything below
//! it when the worker dies), with the scrubbed environment plus the server's configured `env`,
//! cwd = the worktree. Its stdin and stdout carry JSON-RPC lines; its stderr goes to the
//! worker's (the task's `worker.log`), where its own diagnostics help whoever reads them.

use std::collections::BTreeMap;
use std::process::Stdio;

use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::tools::ToolContext;
use crate::tools::process;
use kugetsu_os::process::ProcessGroup;
use nix::sys::signal::Signal;

/// A running server process. Dropping it kills the process and everything it started.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    /// The guard (or, without one, the server itself); `kill_on_drop` as a last resort.
    child: Child,
    /// The group the guard leads; `None` if its pid was unusable.
    group: Option<ProcessGroup>,
}

impl ServerProcess {
    /// Whether the process has exited, and how (`None`: still running).
    pub(crate) fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(describe(status)),
            Ok(None) => None,
            Err(e) => Some(format!("lost ({e})")),
        }
    }

    /// Kills the server, everything it started, and the guard.
    fn kill(&mut self) {
        if let Some(pid) = self.child.id() {
            // Descendants first: the server may sit in a pid namespace the group signal
            // reaches only through its members.
            kugetsu_os::process::kill_descendants(pid, &[]);
            if let Some(group) = self.group {
                group.signal(Signal::SIGKILL);
            }
        }
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a server process ended, in words.
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "exited".to_owned(),
    }
}

/// Starts `command ARGS` in the worktree with the tool environment plus `extra`.
pub(crate) fn spawn(
    ctx: &ToolContext,
    command: &str,
    args: &[String],
    extra: &BTreeMap<String, String>,
) -> Result<(ServerProcess, ChildStdout, ChildStdin), String> {
    let mut env = process::environment(ctx, std::env::vars_os()).map_err(|e| e.to_string())?;
    // The server's own variables come last so they win, but never over the sandbox's.
    for (key, value) in extra {
        if key == crate::sandbox::POLICY_VAR {
            continue;
        }
        env.retain(|(k, _)| k != key.as_str());
        env.push((key.into(), value.into()));
    }
    env.push(("PWD".into(), ctx.root.clone().into_os_string()));
    let path = process::path_of(&env);
    let program = process::find_in_path(command, &path)
        .ok_or_else(|| format!("cannot start `{command}`: not found on PATH or not executable"))?;
    let mut cmd = process::guarded(&program, ctx.guard.as_deref());
    cmd.args(args)
        .current_dir(&ctx.root)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    kugetsu_os::process::contain(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{command}`: {e}"))?;
    let group = child.id().and_then(ProcessGroup::of_leader);
    let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return Err(format!(
            "cannot start `{command}`: its pipes were not set up"
        ));
    };
    Ok((ServerProcess { child, group }, stdout, stdin))
}

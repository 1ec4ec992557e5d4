//! The scratch directory a merge's test command runs in, and running it there under the same
//! sandbox as a shadow's tools.
//!
//! The merged tree is written out by [`Store::write_tree`] (blobs read directly: no checkout,
//! no filter) into `<state_dir>/land/<n>/tree`, which is not a git repository. The command runs
//! as `kugetsu-worker __tool-guard PID /bin/sh -c CMD`, the worker's own tool guard, with a
//! policy built by [`crate::task::sandbox::policy`] for that directory: it may write only
//! there and in its temp dir, reads neither kugetsu's state nor the user's secrets, has no
//! network with `network = "off"`, and is killed with its whole process group after
//! [`TEST_TIMEOUT`]. Its environment is a short allow-list ([`TEST_ENV`]), never the
//! supervisor's own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kugetsu_protocol::SandboxMode;

use crate::config::Config;
use crate::land::repo::Store;
use crate::task::record::StateDir;
use crate::task::sandbox::{Inputs, policy};

/// The longest a test command may run.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// The most of a failing command's output shown, from its end.
const TAIL_BYTES: usize = 4096;
/// Variables passed from our environment to the test command.
const TEST_ENV: [&str; 9] = [
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TERM",
    "CARGO_HOME",
    "RUSTUP_HOME",
];

/// How a test command went.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub passed: bool,
    /// `exit N`, `killed by signal`, or `timed out`.
    pub status: String,
    /// The end of its output (stdout and stderr together).
    pub tail: String,
}

/// A scratch directory under `<state_dir>/land/`, removed on drop.
#[derive(Debug)]
struct Scratch {
    root: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs `command` on `tree` of `store` in a scratch directory under the sandbox of `config`.
pub async fn run_test(
    store: &Store,
    tree: &str,
    command: &str,
    config: &Config,
    state: &StateDir,
) -> Result<Outcome, String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let scratch = Scratch {
        root: state.root.join("land").join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )),
    };
    let _ = std::fs::remove_dir_all(&scratch.root);
    let work = scratch.root.join("tree");
    let tmp = scratch.root.join("tmp");
    for dir in [&work, &tmp] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    store.write_tree(tree, &work).await?;
    let log_path = scratch.root.join("output.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let mut cmd = command_for(command, &work, &tmp, config, state)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .kill_on_drop(true);
    kugetsu_os::process::contain(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the test command: {e}"))?;
    let _owned = child.id().map(kugetsu_os::process::own);
    let group = child
        .id()
        .and_then(kugetsu_os::process::ProcessGroup::of_leader);
    let status = match tokio::time::timeout(TEST_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => return Err(format!("cannot wait for the test command: {e}")),
        Err(_) => None,
    };
    if let Some(group) = group {
        // Whatever it left behind goes with it.
        group.signal(nix::sys::signal::Signal::SIGKILL);
    }
    let (passed, status) = match status {
        Some(status) if status.success() => (true, "exit 0".to_owned()),
        Some(status) => (
            false,
            status
                .code()
                .map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}")),
        ),
        None => (
            false,
            format!("timed out after {} s", TEST_TIMEOUT.as_secs()),
        ),
    };
    Ok(Outcome {
        passed,
        status,
        tail: tail(&log_path),
    })
}

/// `sh -c command` in `work`, through the tool guard when the sandbox is on.
fn command_for(
    command: &str,
    work: &Path,
    tmp: &Path,
    config: &Config,
    state: &StateDir,
) -> Result<tokio::process::Command, String> {
    let mut cmd = if config.sandbox == SandboxMode::Off {
        tokio::process::Command::new("/bin/sh")
    } else {
        let guard = crate::task::shadow::find_worker().map_err(|e| {
            format!("the test command runs in the sandbox, which needs the worker binary: {e}")
        })?;
        let mut cmd = tokio::process::Command::new(guard);
        cmd.arg(kugetsu_protocol::sandbox::GUARD_ARG)
            .arg(std::process::id().to_string())
            .arg("/bin/sh");
        cmd
    };
    cmd.arg("-c").arg(command).current_dir(work).env_clear();
    for name in TEST_ENV {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    for name in ["TMPDIR", "TMP", "TEMP"] {
        cmd.env(name, tmp);
    }
    cmd.env("PWD", work);
    if config.sandbox != SandboxMode::Off {
        let env = |key: &str| std::env::var(key).ok();
        let socket = crate::config::socket_path(None, &state.root, &env);
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut policy = policy(&Inputs {
            mode: config.sandbox,
            network: config.network,
            state_dir: &state.root,
            socket: &socket,
            home: home.as_deref(),
            config_file: config.path.as_deref(),
            worktree: work,
            tmp_dir: tmp,
            tool_output: tmp,
            git_common: None,
            git_admin: None,
            private_refs: None,
            extra_read: &config.sandbox_paths.read,
            extra_write: &config.sandbox_paths.write,
            extra_deny: &config.sandbox_paths.deny,
        });
        // The scratch tree is no repository: there is no `.git` link to protect.
        policy.read_only.clear();
        let json = serde_json::to_string(&policy)
            .map_err(|e| format!("cannot encode the sandbox: {e}"))?;
        cmd.env(kugetsu_protocol::sandbox::POLICY_VAR, json);
    }
    Ok(cmd)
}

/// The last [`TAIL_BYTES`] of the file at `path`, from a line start.
fn tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(TAIL_BYTES);
    let mut text = String::from_utf8_lossy(&bytes[start..]).into_owned();
    if start > 0
        && let Some(newline) = text.find('\n')
    {
        text.drain(..=newline);
    }
    text.trim_end().to_owned()
}

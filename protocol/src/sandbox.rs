//! The sandbox of a shadow's tool processes, as data.
//!
//! The supervisor builds one [`SandboxPolicy`] per task (from the config, the state dir, the
//! daemon's socket and the task's record) and sends it in the task spec; the worker's tool
//! guard applies it in the tool's process before the shell is executed. The worker never
//! widens it. [`SandboxReport`] is what the `started` event and `kugetsu doctor` say about it:
//! which protections hold on this host and which do not, and why.

use serde::{Deserialize, Serialize};

/// `sandbox` in the config, `--sandbox` on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    /// Tools write only in the worktree and the task's temp dir, and read everything but the
    /// user's secrets and kugetsu's other state.
    #[default]
    Workspace,
    /// No confinement of tool processes beyond the process group (the user opted out).
    Off,
}

impl SandboxMode {
    /// The name used on the wire, in the config and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::Workspace => "workspace",
            SandboxMode::Off => "off",
        }
    }
}

impl std::str::FromStr for SandboxMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "workspace" => Ok(SandboxMode::Workspace),
            "off" => Ok(SandboxMode::Off),
            other => Err(format!(
                "sandbox must be `workspace` or `off`, not `{other}`"
            )),
        }
    }
}

/// `network` in the config, `--network` on the command line: whether tools reach the network.
/// The worker's own model traffic is never affected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    #[default]
    On,
    Off,
}

impl NetworkMode {
    /// The name used on the wire, in the config and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::On => "on",
            NetworkMode::Off => "off",
        }
    }
}

impl std::str::FromStr for NetworkMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" => Ok(NetworkMode::On),
            "off" | "false" | "no" => Ok(NetworkMode::Off),
            other => Err(format!("network must be `on` or `off`, not `{other}`")),
        }
    }
}

/// What a shadow's tool processes may do. Paths are absolute and canonical.
///
/// Landlock is an allow-list, so "read everything but X" is spelled out in [`Self::read`] as
/// every sibling along the path from `/` down to each X (see the supervisor's policy
/// builder); [`Self::list`] are those paths' ancestors, which may be listed but whose files
/// are only reachable through the entries of `read`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPolicy {
    pub mode: SandboxMode,
    #[serde(default)]
    pub network: NetworkMode,
    /// Readable and executable, with everything beneath.
    #[serde(default)]
    pub read: Vec<String>,
    /// Directories whose entries may be listed (not read): the ancestors of denied paths.
    #[serde(default)]
    pub list: Vec<String>,
    /// Readable and writable, with everything beneath: the worktree, the task's temp dir, the
    /// parts of the shared git dir that commits in the worktree touch, `sandbox_write`.
    #[serde(default)]
    pub write: Vec<String>,
    /// Device files that may be opened for writing (`/dev/null`, terminals).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Files made read-only with a bind mount where mount namespaces are available (the
    /// worktree's `.git` link). Landlock alone cannot protect a file inside a writable tree.
    #[serde(default)]
    pub read_only: Vec<String>,
    /// Directories bound over others where mount namespaces are available, `(source, target)`:
    /// the task's own refs directory over the shared `refs/heads/kugetsu/` (and its reflogs),
    /// so a tool's `git commit` moves the shadow's branch and no other task's.
    #[serde(default)]
    pub binds: Vec<(String, String)>,
    /// The task's private temp dir: the tools' `TMPDIR` (and `TMP`, `TEMP`).
    #[serde(default)]
    pub tmp_dir: Option<String>,
    /// Whether the temp dir is also mounted on `/tmp` (where mount namespaces are available).
    /// The supervisor says no when the worktree or the repository lives under `/tmp`: they
    /// would vanish behind it, and binding them back inside the writable temp dir would make
    /// them writable in full (Landlock follows the mount tree).
    #[serde(default)]
    pub private_tmp: bool,
}

impl SandboxPolicy {
    /// The policy of `--sandbox off`: nothing is confined.
    pub fn off() -> Self {
        SandboxPolicy {
            mode: SandboxMode::Off,
            ..SandboxPolicy::default()
        }
    }
}

/// One protection the sandbox can give, named as `doctor` and `started.sandbox` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protection {
    /// Landlock filesystem rules: writes only in the worktree and temp dir, no reads of the
    /// user's secrets or kugetsu's state.
    Filesystem,
    /// Landlock's domain rule: no ptrace of, and no `/proc/PID/environ` or memory reads from,
    /// processes outside the shadow (root included). Some kernels have been seen to let
    /// `/proc/PID/environ` reads through anyway: [`Protection::PidNamespace`] is what hides
    /// other processes for sure.
    Ptrace,
    /// A pid namespace with its own `/proc`: a tool sees only the shadow's processes, so no
    /// other process's environment, command line or memory can even be named.
    PidNamespace,
    /// Landlock signal scoping (ABI 6): no signals to processes outside the shadow.
    Signals,
    /// Landlock abstract unix socket scoping (ABI 6).
    AbstractSockets,
    /// A private mount namespace: the worktree's `.git` link is read-only.
    MountNamespace,
    /// The task's temp dir is what its tools see as `/tmp`.
    PrivateTmp,
    /// `network = "off"`: a network namespace of its own (or Landlock TCP rules).
    NetworkOff,
    /// `pids_limit` through a cgroup.
    PidsLimit,
    /// The daemon's socket refuses processes of a shadow.
    SocketPeerCheck,
    /// Secrets travel over the channel; worker and tool environments are scrubbed.
    SecretScrubbing,
    /// The supervisor's git runs no hook, fsmonitor, filter or textconv a shadow planted.
    InertGit,
    /// A shadow's tools see only its own branch under `refs/heads/kugetsu/` (a private refs
    /// directory bound there): they cannot move other tasks' branches.
    OtherRefs,
    /// A protection this reader does not know (written by a newer supervisor).
    #[serde(other)]
    Unknown,
}

impl Protection {
    /// The name used on the wire and by `kugetsu doctor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::Filesystem => "filesystem",
            Protection::Ptrace => "ptrace",
            Protection::PidNamespace => "pid_namespace",
            Protection::Signals => "signals",
            Protection::AbstractSockets => "abstract_sockets",
            Protection::MountNamespace => "mount_namespace",
            Protection::PrivateTmp => "private_tmp",
            Protection::NetworkOff => "network_off",
            Protection::PidsLimit => "pids_limit",
            Protection::SocketPeerCheck => "socket_peer_check",
            Protection::SecretScrubbing => "secret_scrubbing",
            Protection::InertGit => "inert_git",
            Protection::OtherRefs => "other_refs",
            Protection::Unknown => "unknown",
        }
    }
}

/// A protection that is not in force, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    pub protection: Protection,
    pub reason: String,
}

/// The `sandbox` field of the `started` event, and what `kugetsu doctor` lists.
///
/// Shape: `{"mode":"workspace","network":"on","in_force":["filesystem",...],
/// "missing":[{"protection":"pids_limit","reason":"..."}]}`. With `mode` `"off"`, `in_force`
/// holds only what does not depend on the sandbox (secret scrubbing, inert git).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    pub mode: SandboxMode,
    #[serde(default)]
    pub network: NetworkMode,
    #[serde(default)]
    pub in_force: Vec<Protection>,
    #[serde(default)]
    pub missing: Vec<Missing>,
}

/// The first argument of `kugetsu-worker` that runs its tool guard
/// (`kugetsu-worker __tool-guard PARENT_PID PROGRAM ARGS...`): the one way anything, the
/// worker's bash tool or the supervisor's test command, enters a shadow's sandbox.
pub const GUARD_ARG: &str = "__tool-guard";

/// The environment variable carrying a [`SandboxPolicy`] (as JSON) to the tool guard.
pub const POLICY_VAR: &str = "KUGETSU_SANDBOX_POLICY";

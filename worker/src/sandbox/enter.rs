//! Entering the sandbox, in the one order that works:
//! 1. in the tool guard: the namespaces (mount, pid, network), since mounting is refused to a
//!    process Landlock already restricts;
//! 2. in the tool's process, between fork and exec ([`Entered::in_child`]): a `/proc` of the
//!    new pid namespace is mounted (the child is that namespace's first process, so only the
//!    shadow's own processes are visible there, and no ancestor's `/proc/PID/environ`
//!    exists to be read), then the Landlock ruleset is built and enforced (built after the
//!    mounts: a rule holds on the file it was opened on, not on whatever is mounted there
//!    later).
//!
//! The guard itself stays outside the Landlock domain: it must still reap and kill its
//! descendants and watch its parent.
//!
//! Fail-closed rule: a mechanism the host offers (per [`kugetsu_os::probe`], consulted only
//! when applying fails) must apply, or the tool does not run. A mechanism the host lacks is
//! skipped: the supervisor already reported it missing in `started.sandbox`.

use std::ffi::OsStr;

use kugetsu_protocol::{NetworkMode, SandboxMode, SandboxPolicy};

use super::{landlock, namespaces};

/// The environment variable that carries the policy (JSON) from the worker to the tool guard.
/// The guard removes it before the tool's program starts.
pub const POLICY_VAR: &str = kugetsu_protocol::sandbox::POLICY_VAR;

/// A sandbox half entered: what is left to do in the tool's process.
#[derive(Debug)]
pub struct Entered {
    /// The policy, with what entering the namespaces changed; taken by the first
    /// [`Entered::in_child`].
    policy: Option<SandboxPolicy>,
    /// Whether `network = "off"` needs Landlock's TCP rules (no network namespace).
    deny_tcp: bool,
    /// Whether the child is the first process of a new pid namespace (and mounts its /proc).
    pid_namespace: bool,
    /// Whether the kernel offers Landlock, so a ruleset left unenforced is an error.
    landlock_required: bool,
}

/// Enters the namespaces of the policy in `json` and prepares its Landlock ruleset; `None`
/// for `mode = "off"`.
pub fn enter(json: &OsStr) -> Result<Option<Entered>, String> {
    let policy: SandboxPolicy = serde_json::from_slice(json.as_encoded_bytes())
        .map_err(|e| format!("unreadable sandbox policy: {e}"))?;
    if policy.mode == SandboxMode::Off {
        return Ok(None);
    }
    let network_off = policy.network == NetworkMode::Off;
    let mut own_netns = false;
    let mut pid_namespace = false;
    let mut policy = policy;
    match namespaces::enter(&policy) {
        Ok(entered) => {
            own_netns = network_off;
            pid_namespace = true;
            if entered.private_tmp {
                policy.write.push("/tmp".to_owned());
            }
        }
        // The host offers no namespaces: no private /tmp or /proc, no read-only `.git` link,
        // and network off falls back to Landlock's TCP rules below.
        Err(e) if kugetsu_os::probe::host().namespaces.is_err() => drop(e),
        Err(e) => return Err(format!("cannot enter the sandbox's namespaces: {e}")),
    }
    Ok(Some(Entered {
        policy: Some(policy),
        deny_tcp: network_off && !own_netns,
        pid_namespace,
        landlock_required: kugetsu_os::probe::landlock_abi().is_ok(),
    }))
}

impl Entered {
    /// The second half, in the tool's process before it execs. Runs in a forked child of the
    /// single-threaded guard, so allocating is safe; errors make the spawn fail.
    pub fn in_child(&mut self) -> std::io::Result<()> {
        if self.pid_namespace {
            namespaces::mount_proc()?;
        }
        let Some(policy) = self.policy.take() else {
            return Ok(());
        };
        let ruleset = landlock::prepare(&policy, self.deny_tcp)
            .map_err(|e| std::io::Error::other(format!("cannot build the Landlock rules: {e}")))?;
        match landlock::enforce(ruleset) {
            Ok(landlock::Outcome::Enforced) => Ok(()),
            // No Landlock in this kernel: the filesystem and scope rules are missing (the
            // supervisor reported it); what the namespaces give still holds.
            Ok(landlock::Outcome::Unsupported) if !self.landlock_required => Ok(()),
            Ok(landlock::Outcome::Unsupported) => Err(std::io::Error::other(
                "Landlock is available but the ruleset was not enforced",
            )),
            Err(e) => Err(std::io::Error::other(format!(
                "cannot apply the Landlock rules: {e}"
            ))),
        }
    }
}

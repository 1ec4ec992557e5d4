//! Entering the sandbox, in the one order that works: namespaces first (mounting is refused
//! to a process Landlock already restricts), then Landlock.
//!
//! Fail-closed rule: a mechanism the host offers (per [`kugetsu_os::probe::host`], consulted
//! only when applying fails) must apply, or the tool does not run. A mechanism the host lacks
//! is skipped: the supervisor already reported it missing in `started.sandbox`.

use std::ffi::OsStr;

use kugetsu_protocol::{NetworkMode, SandboxMode, SandboxPolicy};

use super::{landlock, namespaces};

/// The environment variable that carries the policy (JSON) from the worker to the tool guard.
/// The guard removes it before the tool's program starts.
pub const POLICY_VAR: &str = "KUGETSU_SANDBOX_POLICY";

/// Applies the policy in `json` to the calling process (and so to everything it starts).
pub fn enter(json: &OsStr) -> Result<(), String> {
    let policy: SandboxPolicy = serde_json::from_slice(json.as_encoded_bytes())
        .map_err(|e| format!("unreadable sandbox policy: {e}"))?;
    if policy.mode == SandboxMode::Off {
        return Ok(());
    }
    let host = kugetsu_os::probe::host;
    let network_off = policy.network == NetworkMode::Off;
    let mut own_netns = false;
    let mut policy = policy;
    match namespaces::enter(&policy) {
        Ok(entered) => {
            own_netns = network_off;
            if entered.private_tmp {
                policy.write.push("/tmp".to_owned());
            }
        }
        // The host offers no namespaces: no private /tmp, no read-only `.git` link, and
        // network off falls back to Landlock's TCP rules below.
        Err(e) if host().namespaces.is_err() => drop(e),
        Err(e) => return Err(format!("cannot enter the sandbox's namespaces: {e}")),
    }
    let tcp = network_off && !own_netns;
    match landlock::restrict(&policy, tcp) {
        Ok(landlock::Outcome::Enforced) => Ok(()),
        // No Landlock in this kernel: the filesystem, scope and ptrace rules are missing
        // (reported by the supervisor); what the namespaces give still holds.
        Ok(landlock::Outcome::Unsupported) if host().landlock.is_err() => Ok(()),
        Ok(landlock::Outcome::Unsupported) => {
            Err("Landlock is available but the ruleset was not enforced".to_owned())
        }
        Err(e) => Err(format!("cannot apply the Landlock rules: {e}")),
    }
}

//! The Landlock part of the sandbox: what a tool process may read, write and reach.
//!
//! The ruleset handles every access right the `landlock` crate knows (newest ABI) in its
//! best-effort mode: on an older kernel the rights it lacks are dropped, which leaves those
//! operations unrestricted, and this is reported through [`Outcome`] and the supervisor's probe.
//! By ABI:
//! - 1: read/write/execute/make/remove rules on paths; and, for any ABI, the domain rule that a
//!   sandboxed process cannot ptrace (or read `/proc/PID/environ`, `mem`, ... of) a process
//!   outside its domain, root included;
//! - 2: `Refer` (linking and renaming across directories); before it, such moves are refused
//!   outright by the kernel inside a domain, so `git` and `mv` between directories fail;
//! - 3: `Truncate`; before it, truncating is not restricted;
//! - 4: TCP bind/connect rules, used for `network = "off"` when no network namespace could be
//!   had; before it, such a shadow keeps TCP;
//! - 5: device ioctls;
//! - 6: signal and abstract unix socket scoping (no `kill` of the daemon or the worker); before
//!   it, signals to other processes of the same user are not restricted;
//! - 9: connecting to pathname unix sockets only where the policy grants write.
//!
//! Paths that do not exist are skipped (a config's `sandbox_read` may name an optional
//! toolchain); a path that exists but cannot be opened is an error.

use std::path::Path;

use kugetsu_protocol::SandboxPolicy;
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};

/// The newest ABI this code knows the meaning of.
const TARGET: ABI = ABI::V10;

/// How restricting went.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The kernel enforces the rules (all, or those its ABI has).
    Enforced,
    /// The kernel enforces nothing.
    Unsupported,
}

/// A ruleset built (its paths opened), not yet enforced.
pub(super) type Prepared = landlock::RulesetCreated;

/// Builds the ruleset of `policy`; `deny_tcp` adds TCP bind/connect rules that allow nothing.
pub(super) fn prepare(policy: &SandboxPolicy, deny_tcp: bool) -> Result<Prepared, String> {
    let fail = |e: landlock::RulesetError| e.to_string();
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET))
        .map_err(fail)?
        .scope(Scope::from_all(TARGET))
        .map_err(fail)?;
    if deny_tcp {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(fail)?;
    }
    let mut created = ruleset.create().map_err(fail)?;
    let read = AccessFs::from_read(TARGET);
    let all = AccessFs::from_all(TARGET);
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev;
    let groups: [(&[String], BitFlags<AccessFs>); 4] = [
        (&policy.read, read),
        (&policy.list, BitFlags::from(AccessFs::ReadDir)),
        (&policy.write, all),
        (&policy.devices, device),
    ];
    for (paths, access) in groups {
        for path in paths {
            let path = Path::new(path);
            let Ok(meta) = path.metadata() else {
                continue;
            };
            // Directory-only rights on a file are an error: keep what a file can have.
            let access = if meta.is_dir() {
                access
            } else {
                access & AccessFs::from_file(TARGET)
            };
            if access.is_empty() {
                continue;
            }
            let fd = PathFd::new(path).map_err(|e| format!("{}: {e}", path.display()))?;
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(created)
}

/// Restricts the calling process (and what it execs) to `ruleset`.
pub(super) fn enforce(ruleset: Prepared) -> Result<Outcome, String> {
    let status = ruleset.restrict_self().map_err(|e| e.to_string())?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Outcome::Enforced,
        RulesetStatus::NotEnforced => Outcome::Unsupported,
    })
}

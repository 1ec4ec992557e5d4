//! `kugetsu-os`: the OS plumbing both kugetsu binaries share, and nothing else.
//!
//! It is deliberately small (libc, nix, tokio's `Command`): the supervisor links it instead of
//! the whole agent, and the worker links it instead of carrying a second copy.
//!
//! - [`process`]: process groups, PDEATHSIG with the parent re-check, subreaping, finding and
//!   killing descendants through `/proc`.
//! - [`env`]: environments with secrets removed (names that look secret, URL passwords).
//! - [`probe`]: what this host offers to confine a shadow (Landlock ABI, namespaces, cgroups).
//! - [`allowlist`]: "everything but these paths" as the sibling allow-list Landlock needs.
//! - [`cgroup`]: one cgroup per shadow for `pids_limit`, v2 delegated or v1 `pids`.

pub mod allowlist;
pub mod cgroup;
pub mod crash;
pub mod env;
pub mod probe;
pub mod process;

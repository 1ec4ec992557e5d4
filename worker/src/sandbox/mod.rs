//! The sandbox a shadow's tool processes run in (see docs/sandbox.md), applied by the tool guard.
//!
//! The policy is data ([`kugetsu_protocol::SandboxPolicy`]), built once by the supervisor and
//! carried in the task spec. The worker hands it to each tool guard in [`POLICY_VAR`]; the
//! guard, a fresh single-threaded process, enters the namespaces and builds the ruleset, and
//! the tool's process enforces it between fork and exec (see [`enter`]), so every process of
//! the call inherits it and nothing runs unconfined. Doing this in the guard rather than in a
//! `pre_exec` hook of the worker keeps the worker's multi-threaded runtime out of the forked
//! child (opening paths and building rulesets allocate).
//!
//! Each mechanism is in its own file, with what happens when the kernel lacks it written next
//! to the check:
//! - [`namespaces`]: private mount namespace (temp dir over `/tmp`, `.git` link read-only), a
//!   pid namespace with its own `/proc`, and, with `network = "off"`, a network namespace.
//! - [`landlock`]: filesystem allow-list, TCP rules when no network namespace is available,
//!   signal and abstract-socket scoping, and (by being a Landlock domain) no ptrace of or
//!   `/proc/PID/environ` reads from anything outside the shadow.
//! - [`enter`]: the order they are applied in, and the fail-closed rule.

mod enter;
mod landlock;
mod namespaces;

pub use enter::{Entered, POLICY_VAR, enter};

//! The sandbox a shadow's tool processes run in (DESIGN §8), applied by the tool guard.
//!
//! The policy is data ([`kugetsu_protocol::SandboxPolicy`]), built once by the supervisor and
//! carried in the task spec. The worker hands it to each tool guard in [`POLICY_VAR`]; the
//! guard, a fresh single-threaded process, applies it to itself before it starts the tool's
//! program, so every process of the call inherits it and nothing runs unconfined. Applying it
//! there rather than in a `pre_exec` hook of the worker keeps the worker's runtime out of the
//! forked child (opening paths and building rulesets allocate).
//!
//! Each mechanism is in its own file, with what happens when the kernel lacks it written next
//! to the check:
//! - [`namespaces`]: private mount namespace (temp dir over `/tmp`, `.git` link read-only) and,
//!   with `network = "off"`, a network namespace of its own.
//! - [`landlock`]: filesystem allow-list, TCP rules when no network namespace is available,
//!   signal and abstract-socket scoping, and (by being a Landlock domain) no ptrace of or
//!   `/proc/PID/environ` reads from anything outside the shadow.
//! - [`enter`]: the order they are applied in, and the fail-closed rule.

mod enter;
mod landlock;
mod namespaces;

pub use enter::{POLICY_VAR, enter};

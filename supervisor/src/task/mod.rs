//! One task's life, shared by `kugetsu run` and the daemon: its on-disk record, preparing it,
//! spawning and driving its workers to `finished`, its event log, its git worktree, and the
//! memory accounting that holds it to its limit.
//!
//! - [`record`]: task ids, the task directory and `task.json` ([`record::TaskDir`]).
//! - [`request`]: what a caller asks for ([`request::TaskRequest`]), independent of the CLI.
//! - [`prepare`]: validating a request, creating the task, its worktree; reopening it.
//! - [`drive`]: running workers until `finished`, restarts with backoff.
//! - [`control`]: what an owner may ask of a running task, and where a run starts.
//! - [`attempt`]: one worker's life as a state machine whose decisions are plain methods.
//! - [`events`]: event envelopes, the group-committed `events.jsonl`, the one fold of events.
//! - [`git`]: repository checks, worktrees, committing the shadow's work.
//! - [`shadow`]: spawning one worker process, the handshake, the channel.
//! - [`sandbox`]: the policy a shadow's tools run under, its cgroup, and what holds on this host.
//! - [`memory`]: the sysinfo sampler behind memory limits and pool admission.
//!
//! What all shadows of one supervisor share is its [`Fleet`]: the memory sampler and the
//! governor ([`crate::govern`]).

pub mod attempt;
pub mod control;
pub mod drive;
pub mod events;
pub mod git;
pub mod memory;
pub mod prepare;
pub mod record;
pub mod request;
pub mod sandbox;
pub mod shadow;

/// What every shadow of one supervisor shares: the memory sampler and the governor.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub sampler: memory::Sampler,
    pub governor: crate::govern::Governor,
}

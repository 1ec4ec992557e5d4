//! `kugetsu`: the supervisor that runs coding agents ("shadows") as isolated worker processes.
//!
//! # Theory of operation
//!
//! A task becomes a shadow in four steps: the supervisor gives it an id and a task directory
//! ([`task`]), a git worktree on its own branch ([`git`]), a `kugetsu-worker` child process
//! in its own process group ([`shadow`]), and a handshake over the worker's stdin/stdout. From
//! then on the worker streams events; the supervisor stamps each with the task id, a sequence
//! number and a timestamp ([`events`]), appends it to `events.jsonl` and hands it to whoever
//! watches (`--json` lines on stdout, or the live view of [`render`]).
//!
//! A [`shadow::Shadow`] is the handle to one running worker: `cancel`/`steer` send control
//! messages, dropping it kills the worker's process group. Shutdown order for `kugetsu run`:
//! first signal -> `cancel` to the worker, which stops its tool and reports `finished`;
//! worker exit -> any process the shadow left behind is killed (we are their subreaper);
//! then the result is printed and the process exits with the code of [`exit`].
//!
//! Modules:
//! - [`cli`]: command-line definitions.
//! - [`config`]: config file, `KUGETSU_*` overrides and the state directory.
//! - [`task`]: task ids, task directories, atomic file writes.
//! - [`git`]: repository checks, worktrees, changed files.
//! - [`memory`]: the sysinfo sampler behind memory limits and pool admission.
//! - [`shadow`]: spawning a worker, the handshake, the event relay.
//! - [`events`]: event envelopes and the per-task event log.
//! - [`render`]: the human progress view.
//! - [`driver`]: preparing a task, driving its workers, restarts, resume.
//! - [`run`]: `kugetsu run`, one shadow in the foreground.
//! - [`demo`]: `kugetsu demo`, the offline showcase.
//! - [`doctor`]: `kugetsu doctor`, environment checks.
//! - [`exit`]: exit codes and the error type that carries one.
//! - [`daemon`]: `kugetsu serve`, the actor that owns the queue and the pool.
//! - [`connection`]: one client connection to the daemon (JSON-RPC over the socket).
//! - [`client`]: the CLI side of the daemon commands (submit, ps, logs, ...).
//! - [`rpc`]: the JSON-RPC vocabulary shared by both sides.
//! - [`socket`]: where the socket is, binding it 0600, peer checks.
//! - [`queue`]: the bounded priority queue.
//! - [`reload`]: config hot reload.
//! - [`sdnotify`]: systemd notifications.

pub mod cli;
pub mod client;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod driver;
pub mod events;
pub mod exit;
pub mod git;
pub mod memory;
pub mod queue;
pub mod reload;
pub mod render;
pub mod rpc;
pub mod run;
pub mod sdnotify;
pub mod shadow;
pub mod socket;
pub mod task;

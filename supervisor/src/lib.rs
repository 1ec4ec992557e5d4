//! `kugetsu`: the supervisor that runs coding agents ("shadows") as isolated worker processes.
//!
//! # Theory of operation
//!
//! A task becomes a shadow in four steps, the same for `kugetsu run` and the daemon
//! ([`task`]): a [`task::request::TaskRequest`] is validated and given an id and a task
//! directory ([`task::prepare`], [`task::record`]), a git worktree on its own branch
//! ([`task::git`]), a `kugetsu-worker` child process in its own process group
//! ([`task::shadow`]), and a handshake over the worker's stdin/stdout. From then on the worker
//! streams events; the supervisor stamps each with the task id, a sequence number and a
//! timestamp, appends it to `events.jsonl` in group-committed batches ([`task::events`]) and
//! hands it to whoever watches. One worker's life is a state machine ([`task::attempt`]); the
//! task's life across crashed workers, with backoff, is [`task::drive`].
//!
//! The daemon ([`daemon`]) is one actor that owns the queue, the table of live tasks and the
//! subscribers; connections, shadow tasks and the config watcher talk to it through commands
//! on one channel. Its shutdown order: stop accepting submissions; detach running shadows (their
//! workers exit, their tasks stay resumable) unless draining; exit once every shadow task has
//! returned; remove the socket.
//!
//! `kugetsu run`'s shutdown order: first signal -> `cancel` to the worker, which stops its tool
//! and reports `finished`; worker exit -> any process the shadow left behind is killed (we are
//! their subreaper); then the result is printed and the process exits with the code of
//! [`exit`].
//!
//! Modules:
//! - [`task`]: one task's life, shared by `run` and the daemon.
//! - [`cluster`]: a fleet on many machines: nodes sharing one PostgreSQL (`cluster = ...`).
//! - [`govern`]: the governor: shared rate limits per provider account, the daily budget.
//! - [`daemon`]: `kugetsu serve`: actor, commands, connections, queue, reload, sd_notify.
//! - [`http`]: the daemon's HTTP API (`serve --http`): REST, SSE, metrics, the dashboard.
//! - [`cli`]: what a user types: arguments, run, demo, doctor, the daemon's clients, render.
//! - [`land`]: `diff`, `merge` and the conflict radar: landing the shadows' work.
//! - [`rpc`]: the typed JSON-RPC vocabulary shared by the daemon and its clients.
//! - [`config`]: config file, `KUGETSU_*` overrides and the state directory.
//! - [`exit`]: exit codes and the error type that carries one.
//! - [`log`]: the supervisor's own log lines (`tracing`), human or JSON.
//! - [`mcp`]: `kugetsu mcp`, kugetsu as an MCP server on stdio (the Hermes plugin's tools).

pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod exit;
pub mod govern;
pub mod http;
pub mod land;
pub mod log;
pub mod mcp;
pub mod rpc;
pub mod task;

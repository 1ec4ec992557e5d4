//! Running the real binaries in throwaway places.
//!
//! - `repo`: [`TestRepo`], a temporary directory holding a real git repository (`repo/`), a
//!   state directory (`state/`), a home (`home/`) and room for files "outside" the repository.
//! - `run`: [`Kugetsu`], a command builder for the real `kugetsu` binary with a controlled
//!   environment; [`RunOutput`] for a finished run; [`LiveRun`] to watch events as they stream
//!   and act on them (signals), each wait bounded by a timeout.
//! - [`cluster`]: [`cluster::TestCluster`], a real PostgreSQL and N `kugetsu serve` nodes on
//!   one repository, with the fault tests' shared invariant checks.
//! - [`http`]: a small HTTP/1.1 client for the daemon's HTTP API, event streams included.
//! - `script`: [`Script`], a script for the `scripted` provider written to a file.
//! - `worker`: [`WorkerProcess`], the real `kugetsu-worker` driven over its JSON-lines
//!   channel as the supervisor drives it (start, steer, kill), for worker-level tests.

pub mod cluster;
pub mod daemon;
pub mod http;
mod repo;
mod run;
mod script;
mod worker;

pub use repo::{DEFAULT_FILES, TestRepo};
pub use run::{Kugetsu, LiveRun, RUN_TIMEOUT, RunOutput, StdoutKind, bin_path};
pub use script::{Script, call_id};
pub use worker::{WorkerCommand, WorkerOutput, WorkerProcess, task_spec};

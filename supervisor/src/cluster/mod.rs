//! A fleet on many machines: `kugetsu serve` nodes sharing one PostgreSQL as their queue and
//! source of truth (`cluster = "postgres://..."`). Without `cluster`, nothing here is loaded.
//!
//! # Theory of operation
//!
//! The database holds every task (its record, state, lease, fence), its events, its journal
//! lines and its newest checkpoint ([`db`], migrations embedded). A node is the single-box
//! daemon with its queue moved into the database:
//!
//! - Submissions on any node go into the database (with their `queued` event) and wake the
//!   nodes (LISTEN/NOTIFY, with polling every [`node::TICK`] as the fallback).
//! - The claimer ([`node`]) takes tasks up to the node's free slots and memory headroom with
//!   `FOR UPDATE SKIP LOCKED`, tasks whose lease expired first, then priority and FIFO. Each
//!   claim takes a new fence from a global sequence and a lease in database time. A claimed
//!   task is laid out locally ([`adopt`]: its record, events and journal from the database, its
//!   worktree from its checkpoint) and handed to the actor, which runs it as any other.
//! - Every event of a running task goes through its writer ([`writer`]): batched into one
//!   fenced transaction with the journal lines the worker wrote meanwhile, then fanned out.
//!   A worker waits before each tool until its intent is in the database (the tool gate), so
//!   a node that takes the task over never re-runs it. At each turn end the writer pushes a
//!   checkpoint of the worktree ([`checkpoint`]).
//! - The lease keeper renews every lease three times per `lease_ttl`. When a renewal is late
//!   (the database is down, or the node was stopped) the node freezes its shadows (SIGSTOP);
//!   the next renewal resumes those it still holds (SIGCONT) and kills those it lost.
//! - Reads ([`api`]) — `list`, `get`, `events`, `subscribe`, `cancel`, `steer` — go to the
//!   database, so every node answers for the whole cluster.

pub mod adopt;
pub mod api;
pub mod checkpoint;
pub mod db;
pub mod governor;
pub mod node;
pub mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::ClusterConfig;
use crate::task::control::ShadowControl;
use crate::task::record::StateDir;

/// The cluster this process is a node of, once `serve` joined it.
static ACTIVE: OnceLock<Arc<Cluster>> = OnceLock::new();

/// The cluster this daemon is a node of (`None`: a single-box daemon).
pub fn active() -> Option<&'static Arc<Cluster>> {
    ACTIVE.get()
}

/// One node's view of its cluster.
#[derive(Debug)]
pub struct Cluster {
    pub db: db::Db,
    pub node_id: String,
    pub ttl: Duration,
    pub checkpoint_remote: Option<String>,
    pub state: StateDir,
    /// The leases this node holds, by task.
    pub leases: Mutex<HashMap<String, Lease>>,
    /// `queue_capacity`, for submissions (the queue is the cluster's).
    pub queue_capacity: std::sync::atomic::AtomicU32,
}

/// A task this node runs under a lease.
#[derive(Debug, Clone)]
pub struct Lease {
    pub fence: i64,
    /// The shadow's control channel (proceed, cancel, steer, detach).
    pub control: mpsc::UnboundedSender<ShadowControl>,
    /// The task's writer.
    pub writer: mpsc::UnboundedSender<writer::Message>,
}

impl Cluster {
    /// Makes `config` this process's cluster.
    pub fn install(
        config: &ClusterConfig,
        state: StateDir,
        queue_capacity: u32,
    ) -> Result<Arc<Cluster>, db::DbError> {
        let cluster = Arc::new(Cluster {
            db: db::Db::new(&config.url)?,
            node_id: config.node_id.clone(),
            ttl: config.lease_ttl,
            checkpoint_remote: config.checkpoint_remote.clone(),
            state,
            leases: Mutex::new(HashMap::new()),
            queue_capacity: std::sync::atomic::AtomicU32::new(queue_capacity),
        });
        let _ = ACTIVE.set(cluster.clone());
        Ok(ACTIVE.get().cloned().unwrap_or(cluster))
    }

    /// The lease held on `task`, if any.
    pub fn lease(&self, task: &str) -> Option<Lease> {
        self.leases.lock().ok().and_then(|l| l.get(task).cloned())
    }

    /// All leases held, as (task, fence).
    pub fn fences(&self) -> Vec<(String, i64)> {
        self.leases
            .lock()
            .map(|l| l.iter().map(|(t, l)| (t.clone(), l.fence)).collect())
            .unwrap_or_default()
    }

    /// Drops the lease on `task` (the task ended here, or was lost).
    pub fn drop_lease(&self, task: &str) -> Option<Lease> {
        self.leases.lock().ok().and_then(|mut l| l.remove(task))
    }
}

/// The `KUGETSU_NODE` marker every process of a node's shadows carries (beside
/// `KUGETSU_SHADOW`), so a node only ever signals its own shadows' processes, also on a
/// machine several nodes share, and finds its own leftovers after a restart.
pub const NODE_ENV: &str = "KUGETSU_NODE";

/// The processes of task `task` that belong to node `node`.
pub fn task_processes(task: &str, node: &str) -> Vec<u32> {
    let shadow = format!("{}={task}", crate::task::shadow::SHADOW_ENV);
    let node = format!("{NODE_ENV}={node}");
    kugetsu_os::process::processes_with_envs(&[shadow.as_bytes(), node.as_bytes()])
}

/// Sends `signal` to every process of task `task` on node `node`; returns how many.
pub fn signal_task(task: &str, node: &str, signal: nix::sys::signal::Signal) -> usize {
    let pids = task_processes(task, node);
    for &pid in &pids {
        if let Ok(raw) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal);
        }
    }
    pids.len()
}

//! What the daemon actor hears: the one vocabulary between the actor and everything that
//! talks to it (connections, shadow tasks, the config watcher, housekeeping).

use std::path::PathBuf;

use kugetsu_protocol::{EventEnvelope, Finished};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::daemon::subscribers::Sink;
use crate::rpc::{Call, RpcError};
use crate::task::prepare::Prepared;
use crate::task::record::{StateDir, TaskDir};

/// Where a subscription's past events are, for the connection to replay before live ones.
#[derive(Debug)]
pub struct Replay {
    /// The task's `events.jsonl` (one-task subscriptions only).
    pub log: Option<PathBuf>,
    /// Whether the task is still live (false: the replay is all there is).
    pub live: bool,
}

/// A task a cluster node claimed and laid out, ready to start here at once.
#[derive(Debug)]
pub struct Adopted {
    pub prepared: Prepared,
    pub progress: crate::task::events::Progress,
    /// The shadow's control channel (the node's lease holds the sender too).
    pub control: tokio::sync::mpsc::UnboundedSender<crate::task::control::ShadowControl>,
    pub controls: tokio::sync::mpsc::UnboundedReceiver<crate::task::control::ShadowControl>,
    /// Where the task's events go to be written to the cluster's database.
    pub writer: tokio::sync::mpsc::UnboundedSender<crate::cluster::writer::Message>,
    /// Laying the task out failed: it ends `failed` with this reason.
    pub failure: Option<String>,
}

/// A running shadow's memory and wait reason: (task, RSS bytes, why it waits).
pub type LocalStat = (String, Option<u64>, Option<String>);

/// What a node may claim now.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Free slots under `max_shadows` (0 while stopping or held by the daily budget).
    pub slots: usize,
    /// The biggest `mem_limit` a new shadow may have for the host's free memory.
    pub memory: u64,
    /// `task_retention` now (finished tasks older than it leave the database too).
    pub retention: Option<std::time::Duration>,
}

/// Everything the actor hears.
#[derive(Debug)]
pub enum Command {
    /// A client's request that the actor answers from its state.
    Call {
        call: Call,
        reply: oneshot::Sender<Result<serde_json::Value, RpcError>>,
    },
    /// A client wants to submit: may it, and with which settings?
    Admit {
        reply: oneshot::Sender<Result<(Config, StateDir), RpcError>>,
    },
    /// A submitted task is on disk (record, live marker, `queued` event): queue it.
    Enqueue {
        prepared: Box<Prepared>,
        queued: EventEnvelope,
        reply: oneshot::Sender<Result<(), RpcError>>,
    },
    /// A paused task goes back in the queue (its record already holds the new budget).
    Requeue {
        prepared: Box<Prepared>,
        progress: Box<crate::task::events::Progress>,
        reply: oneshot::Sender<Result<(), RpcError>>,
    },
    /// A client wants events; they go to `sink` until it closes or lags.
    Subscribe {
        task: Option<String>,
        after_seq: u64,
        sink: Sink,
        reply: oneshot::Sender<Result<Replay, RpcError>>,
    },
    /// Where a task's directory is (live, or finished on disk).
    Locate {
        task: String,
        reply: oneshot::Sender<Result<TaskDir, RpcError>>,
    },
    /// The settings in effect and the state dir (for work done outside the actor, `merge`).
    Settings {
        reply: oneshot::Sender<(Config, StateDir)>,
    },
    /// The conflict radar found an overlap to report on a task.
    Conflict(crate::land::radar::Conflict),
    /// These finished tasks landed (`merge`).
    Merged {
        landed: Vec<(String, crate::rpc::MergedMarker)>,
    },
    /// These finished tasks' records were removed (`clean --purge`, retention).
    Forget { tasks: Vec<String> },
    /// A running shadow published an event.
    Event(EventEnvelope),
    /// A shadow task returned: `None` when it was detached.
    Done {
        id: String,
        finished: Option<Finished>,
    },
    /// The config file changed.
    Reload,
    /// A cluster node claimed a task: run it now.
    Adopt(Box<Adopted>),
    /// How many tasks a cluster node may claim now.
    Capacity { reply: oneshot::Sender<Capacity> },
    /// What `ps` shows of this node's running shadows that only this node knows: per task,
    /// its memory and why it waits (for the cluster's database).
    LocalStats {
        reply: oneshot::Sender<Vec<LocalStat>>,
    },
    /// The pool, the queue and the counters now (the HTTP API's metrics and fleet chart).
    Fleet {
        reply: oneshot::Sender<crate::daemon::stats::FleetStats>,
    },
}

//! What each request does to the daemon's state, on the actor's side. Every handler here is
//! quick: anything that waits on git or reads a log runs in the connection's task
//! ([`crate::daemon::connection`]) before or after it.

use kugetsu_protocol::{Event, EventEnvelope, FinishStatus, Finished};
use serde_json::Value;

use crate::daemon::actor::Daemon;
use crate::daemon::command::Replay;
use crate::daemon::subscribers::Sink;
use crate::daemon::table::Entry;
use crate::rpc::{
    self, Call, Cancelled, ListParams, Method, RpcError, ShutdownParams, SteerParams, Steered,
    Stopping, TaskList, TaskParams, TaskSummary,
};
use crate::task::control::ShadowControl;
use crate::task::events::{EventLog, Progress};
use crate::task::prepare::Prepared;
use crate::task::record::{TaskDir, is_valid_id};

/// Encodes a typed result.
fn answer<M: Method>(result: Result<M::Result, RpcError>) -> Result<Value, RpcError> {
    result.and_then(|r| {
        serde_json::to_value(r).map_err(|e| RpcError::new(rpc::INTERNAL_ERROR, e.to_string()))
    })
}

impl Daemon {
    /// Answers a request from the actor's state.
    pub(super) fn call(&mut self, call: Call) -> Result<Value, RpcError> {
        match call {
            Call::List(params) => answer::<rpc::List>(Ok(self.list(&params))),
            Call::Get(TaskParams { task }) => answer::<rpc::Get>(self.get(&task)),
            Call::Cancel(TaskParams { task }) => answer::<rpc::Cancel>(self.cancel(&task)),
            Call::Steer(params) => answer::<rpc::Steer>(self.steer(params)),
            Call::Shutdown(ShutdownParams { drain }) => {
                self.begin_stop(drain);
                answer::<rpc::Shutdown>(Ok(Stopping {
                    stopping: true,
                    drain,
                }))
            }
            // The connection serves these itself; reaching here is a bug, not bad input.
            Call::Submit(_)
            | Call::Resume(_)
            | Call::Events(_)
            | Call::Subscribe(_)
            | Call::Clean(_)
            | Call::Diff(_)
            | Call::Merge(_) => Err(RpcError::new(
                rpc::INTERNAL_ERROR,
                "request routed to the wrong place",
            )),
        }
    }

    /// Whether a submission may go ahead now (it is checked again when it is enqueued).
    pub(super) fn admit(&self) -> Result<(), RpcError> {
        if self.stopping.is_some() {
            return Err(RpcError::shutting_down());
        }
        if self.queue.is_full() {
            return Err(self.queue_full());
        }
        Ok(())
    }

    fn queue_full(&self) -> RpcError {
        RpcError::new(rpc::QUEUE_FULL, "queue_full").with_data(serde_json::json!({
            "capacity": self.queue.capacity(),
            "queued": self.queue.len(),
        }))
    }

    /// Queues a submitted task whose record and `queued` event are already on disk.
    pub(super) fn enqueue(
        &mut self,
        prepared: Prepared,
        queued: &EventEnvelope,
    ) -> Result<(), RpcError> {
        self.admit()?;
        let id = prepared.record.id.clone();
        let priority = prepared.record.priority;
        let mut entry = Entry::new(prepared, Progress::default());
        entry.progress.note_envelope(queued);
        self.table.live.insert(id.clone(), entry);
        self.queue.push_recovered(id, priority);
        self.subscribers.fan_out(queued);
        Ok(())
    }

    /// Queues a paused task again; its worker resumes from the journal.
    pub(super) fn requeue(
        &mut self,
        prepared: Prepared,
        progress: Progress,
    ) -> Result<(), RpcError> {
        self.admit()?;
        let id = prepared.record.id.clone();
        if self.table.live.contains_key(&id) {
            return Err(RpcError::new(
                rpc::INVALID_PARAMS,
                format!("task {id} is already queued or running"),
            ));
        }
        self.state.mark_live(&id).map_err(|e| {
            RpcError::new(
                rpc::INTERNAL_ERROR,
                format!("cannot record the task: {}", crate::exit::describe_io(&e)),
            )
        })?;
        let priority = prepared.record.priority;
        let entry = Entry::new(prepared, progress);
        self.table.live.insert(id.clone(), entry);
        self.table.forget(std::slice::from_ref(&id));
        self.queue.push_recovered(id, priority);
        Ok(())
    }

    /// Registers a subscriber; the connection replays `Replay::log` before live events.
    pub(super) fn subscribe(
        &mut self,
        task: Option<String>,
        after_seq: u64,
        sink: Sink,
    ) -> Result<Replay, RpcError> {
        let Some(task) = task else {
            self.subscribers.add(None, after_seq, sink);
            return Ok(Replay {
                log: None,
                live: true,
            });
        };
        let dir = self.locate(&task)?;
        let live = self.table.live.contains_key(&task);
        if live {
            // Live events start queuing now; the connection skips those the replay covered.
            self.subscribers.add(Some(task), after_seq, sink);
        }
        Ok(Replay {
            log: Some(dir.events_file()),
            live,
        })
    }

    /// The directory of a live or finished task.
    pub(super) fn locate(&self, task: &str) -> Result<TaskDir, RpcError> {
        if let Some(entry) = self.table.live.get(task) {
            return Ok(entry.prepared.dir.clone());
        }
        if !is_valid_id(task) {
            return Err(RpcError::not_found(task));
        }
        let dir = self.state.task(task);
        if self.table.finished(&self.state, task).is_some() {
            Ok(dir)
        } else {
            Err(RpcError::not_found(task))
        }
    }

    fn list(&mut self, params: &ListParams) -> TaskList {
        let snapshot = self.sampler.latest();
        let mut tasks = if params.all {
            // Every finished task is on disk; the connection is not the place to hold them
            // all twice, so they are read here, once, for this request.
            let live = &self.table.live;
            self.state
                .all_ids()
                .into_iter()
                .filter(|id| !live.contains_key(id))
                .filter_map(|id| crate::daemon::table::load_finished(&self.state.task(&id)))
                .collect()
        } else {
            self.table.recent(&self.state)
        };
        tasks.extend(
            self.table
                .live
                .values()
                .map(|e| e.summary(&snapshot, &self.governor)),
        );
        tasks.sort_by(|a, b| a.id.cmp(&b.id));
        TaskList {
            tasks,
            nodes: Vec::new(),
        }
    }

    fn get(&self, task: &str) -> Result<TaskSummary, RpcError> {
        if let Some(entry) = self.table.live.get(task) {
            return Ok(entry.summary(&self.sampler.latest(), &self.governor));
        }
        if !is_valid_id(task) {
            return Err(RpcError::not_found(task));
        }
        self.table
            .finished(&self.state, task)
            .ok_or_else(|| RpcError::not_found(task))
    }

    fn steer(&mut self, SteerParams { task, text }: SteerParams) -> Result<Steered, RpcError> {
        if text.trim().is_empty() {
            return Err(RpcError::new(
                rpc::INVALID_PARAMS,
                "the steering text is empty",
            ));
        }
        let Some(entry) = self.table.live.get_mut(&task) else {
            return Err(self.ended(&task));
        };
        match &entry.control {
            Some(control) => {
                let _ = control.send(ShadowControl::Steer(text));
            }
            None => entry.pending_steers.push(text),
        }
        Ok(Steered { task })
    }

    fn cancel(&mut self, task: &str) -> Result<Cancelled, RpcError> {
        let Some(entry) = self.table.live.get_mut(task) else {
            return Err(self.ended(task));
        };
        if let Some(control) = &entry.control {
            let _ = control.send(ShadowControl::Cancel);
            return Ok(Cancelled {
                task: task.to_owned(),
                status: "cancelling".to_owned(),
            });
        }
        self.queue.remove(task);
        self.resume_first.retain(|t| t != task);
        let finished = Finished {
            status: FinishStatus::Cancelled,
            result: None,
            error: Some("cancelled before it started".to_owned()),
            turns: entry.progress.turns,
            usage: entry.progress.usage,
            restarts: entry.progress.restarts,
            branch: entry.prepared.record.branch.clone(),
            worktree: None,
            changed_files: Vec::new(),
        };
        let dir = entry.prepared.dir.clone();
        let envelope = publish_now(&dir, Event::Finished(finished.clone()));
        self.table.finish(task, finished);
        self.state.unmark_live(task);
        if let Some(envelope) = envelope {
            self.counters.observe(&envelope);
            self.subscribers.fan_out(&envelope);
        }
        Ok(Cancelled {
            task: task.to_owned(),
            status: "cancelled".to_owned(),
        })
    }

    /// The error for a request that needs a live task: `not_found`, or that it ended.
    fn ended(&self, task: &str) -> RpcError {
        match self.get(task) {
            Ok(summary) => RpcError::new(
                rpc::INVALID_STATE,
                format!("task {task} already ended ({})", summary.status.as_str()),
            ),
            Err(e) => e,
        }
    }
}

/// Appends one event to the log of a task that is not running (no driver owns its log).
fn publish_now(dir: &TaskDir, event: Event) -> Option<EventEnvelope> {
    match EventLog::open(&dir.events_file(), dir.id()) {
        Ok(mut log) => Some(log.publish(event)),
        Err(e) => {
            tracing::error!(task = %dir.id(), "cannot record the end of the task: {e}");
            None
        }
    }
}

//! `kugetsu serve`: the daemon. Many shadows, one queue, one socket.
//!
//! # Theory of operation
//!
//! The daemon is one actor, [`Daemon`], that owns all state: the [`Queue`], the task table, the
//! subscribers. Nothing else touches that state; everything else talks to the actor through
//! [`Command`]s on one channel:
//!
//! - each client connection ([`crate::connection`]) sends `Call`s and `Subscribe`s and awaits
//!   the answer on a oneshot;
//! - each running shadow is a tokio task running [`driver::drive`], which sends every event it
//!   publishes (`Event`) and, at the end, `Done`;
//! - the config watcher sends `Reload`.
//!
//! A tick every 500 ms starts queued tasks while fewer than `max_shadows` run and the host
//! has memory for one more (`mem_limit` + a reserve), and reports status to systemd.
//!
//! Durability: a submission is acknowledged only after its `task.json` and its `queued` event
//! are on disk. After a crash (or `kill -9`) the daemon rebuilds its table from the state
//! directory: tasks with a `finished` event are done, tasks with a `started` event resume from
//! their journals (after killing anything a dead worker left behind), the rest are queued again
//! in their original order.
//!
//! Shutdown order: stop accepting submissions; without `drain`, detach running shadows (their
//! workers exit, their tasks stay resumable) and exit once every shadow task returned; with
//! `drain`, keep running until the queue is empty and nothing runs. Then remove the socket.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use interprocess::local_socket::tokio::prelude::*;
use kugetsu_protocol::{Event, EventEnvelope, FinishStatus, Finished, Usage};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use crate::cli::{ServeArgs, TaskOptions};
use crate::config::Config;
use crate::driver::{self, Prepared, Resume, ShadowControl};
use crate::events::{self, EventLog};
use crate::exit::CliError;
use crate::memory::Sampler;
use crate::queue::Queue;
use crate::rpc::{
    self, CleanParams, RpcError, ShutdownParams, SteerParams, SubmitParams, SubscribeParams,
    TaskParams, TaskStatus, TaskSummary,
};
use crate::sdnotify::Notifier;
use crate::task::{Origin, StateDir, TaskRecord};

/// Memory kept free on the host beyond a new shadow's limit before it may start.
pub const MEMORY_RESERVE: u64 = 256 * 1024 * 1024;
/// How often the daemon schedules, and reports to systemd.
const TICK: Duration = Duration::from_millis(500);

/// A request from a client connection.
#[derive(Debug)]
pub enum Call {
    Submit(SubmitParams),
    List,
    Get(TaskParams),
    Events(TaskParams),
    Cancel(TaskParams),
    Steer(SteerParams),
    Shutdown(ShutdownParams),
    Clean(CleanParams),
}

/// Everything the actor hears.
#[derive(Debug)]
pub enum Command {
    /// A client's request; the answer goes back on `reply`.
    Call {
        call: Call,
        reply: oneshot::Sender<Result<Value, RpcError>>,
    },
    /// A client wants events; they go to `sink` until it closes.
    Subscribe {
        params: SubscribeParams,
        sink: mpsc::UnboundedSender<EventEnvelope>,
        reply: oneshot::Sender<Result<Value, RpcError>>,
    },
    /// A running shadow published an event.
    Event(EventEnvelope),
    /// A shadow task returned: `None` when it was detached.
    Done {
        id: String,
        finished: Option<Finished>,
    },
    /// The config file changed.
    Reload,
}

/// One task the daemon knows.
#[derive(Debug)]
struct Entry {
    prepared: Prepared,
    status: TaskStatus,
    /// How the next start of this task begins (fresh, or resuming its journal).
    resume: Resume,
    pid: Option<u32>,
    turns: u32,
    usage: Usage,
    restarts: u32,
    finished: Option<Finished>,
    /// The running shadow's control channel. Held here so cancel and steer reach it.
    control: Option<mpsc::UnboundedSender<ShadowControl>>,
    /// Steers that arrived while the task was queued.
    pending_steers: Vec<String>,
}

/// Someone following events.
#[derive(Debug)]
struct Subscriber {
    task: Option<String>,
    sink: mpsc::UnboundedSender<EventEnvelope>,
    /// The highest `seq` sent per task, so a replayed event is never sent twice.
    sent: BTreeMap<String, u64>,
}

/// The daemon actor.
#[derive(Debug)]
struct Daemon {
    config: Config,
    /// `--config`, if given; else the default location is read (when it exists).
    config_path: Option<PathBuf>,
    state: StateDir,
    queue: Queue,
    /// Tasks to resume before anything queued (they were running when the daemon died).
    resume_first: VecDeque<String>,
    /// Every task, by id (ids sort by creation time).
    tasks: BTreeMap<String, Entry>,
    running: usize,
    subscribers: Vec<Subscriber>,
    sampler: Sampler,
    /// Handed to shadow tasks and the config watcher.
    commands: mpsc::UnboundedSender<Command>,
    notifier: Notifier,
    /// `Some(drain)` once shutdown began.
    stopping: Option<bool>,
    /// Whether the last scheduling attempt was held back by host memory (logged once).
    memory_held: bool,
    /// Tasks already reported as too big for this host.
    warned_impossible: std::collections::HashSet<String>,
}

/// Entry point of `kugetsu serve`.
pub async fn serve(args: ServeArgs) -> Result<ExitCode, CliError> {
    let env = |key: &str| std::env::var(key).ok();
    let config = Config::load(args.config.as_deref(), &env)?;
    let state = StateDir {
        root: crate::config::state_dir(args.state_dir.as_deref(), &env)?,
    };
    std::fs::create_dir_all(state.root.join("tasks"))
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", state.root.display())))?;
    let socket_path = crate::socket::socket_path(args.socket.as_deref(), &state.root, &env);
    let listener = crate::socket::bind(&socket_path).await?;
    if let Err(e) = kugetsu_os::process::become_subreaper() {
        eprintln!("kugetsu: warning: cannot become a subreaper ({e}); orphans may escape");
    }
    let (commands, mut inbox) = mpsc::unbounded_channel();
    let mut daemon = Daemon {
        queue: Queue::new(config.queue_capacity as usize),
        config_path: args.config.clone(),
        config,
        state,
        resume_first: VecDeque::new(),
        tasks: BTreeMap::new(),
        running: 0,
        subscribers: Vec::new(),
        sampler: Sampler::spawn(),
        commands: commands.clone(),
        notifier: Notifier::from_env(),
        stopping: None,
        memory_held: false,
        warned_impossible: std::collections::HashSet::new(),
    };
    // Admission needs real numbers: never schedule on an empty snapshot.
    daemon.sampler.first_sample(Duration::from_secs(2)).await;
    daemon.recover().await;
    // Watch the file even if it does not exist yet: creating it is a change too.
    let watch_path = args
        .config
        .clone()
        .or_else(|| crate::config::default_path(&env));
    let _watcher = crate::reload::watch(watch_path.as_deref(), commands.clone());

    let accept_commands = commands.clone();
    let acceptor = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    tokio::spawn(crate::connection::serve_connection(
                        stream,
                        accept_commands.clone(),
                    ));
                }
                Err(e) => {
                    eprintln!("kugetsu: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    drop(commands);
    eprintln!(
        "kugetsu: serving on {} (state {}, max_shadows {}, queue_capacity {})",
        socket_path.display(),
        daemon.state.root.display(),
        daemon.config.max_shadows,
        daemon.config.queue_capacity
    );
    let status = daemon.status_line();
    daemon.notifier.ready(&status);

    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            return Err(CliError::Failed(
                "cannot install signal handlers".to_owned(),
            ));
        }
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(command) = inbox.recv() => daemon.handle(command).await,
            _ = tick.tick() => {
                daemon.schedule().await;
                let status = daemon.status_line();
                daemon.notifier.status(&status);
                daemon.notifier.watchdog();
            }
            _ = sigterm.recv() => daemon.begin_stop(false),
            _ = sigint.recv() => daemon.begin_stop(false),
        }
        if daemon.finished_stopping() {
            break;
        }
    }
    daemon.notifier.stopping();
    acceptor.abort();
    let _ = std::fs::remove_file(&socket_path);
    // Let connection writers send their last answers (the `shutdown` reply among them).
    tokio::time::sleep(Duration::from_millis(100)).await;
    eprintln!("kugetsu: stopped");
    Ok(ExitCode::SUCCESS)
}

impl Daemon {
    fn status_line(&self) -> String {
        format!(
            "{} running, {} queued (max_shadows {})",
            self.running,
            self.queue.len() + self.resume_first.len(),
            self.config.max_shadows
        )
    }

    /// Rebuilds the task table from the state directory (see the module docs).
    async fn recover(&mut self) {
        let Ok(dir) = std::fs::read_dir(self.state.root.join("tasks")) else {
            return;
        };
        let mut ids: Vec<String> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|id| crate::task::is_valid_id(id))
            .collect();
        ids.sort();
        let (mut queued, mut resumed) = (0, 0);
        for id in ids {
            let task_dir = self.state.task_dir(&id);
            let Ok(bytes) = std::fs::read(task_dir.join("task.json")) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<TaskRecord>(&bytes) else {
                eprintln!("kugetsu: warning: task {id} has an unreadable task.json; skipped");
                continue;
            };
            if record.origin != Origin::Daemon {
                continue;
            }
            let events = events::read_all(&task_dir.join("events.jsonl"))
                .await
                .unwrap_or_default();
            let count =
                |kind: &str| events.iter().filter(|e| e.event.kind() == kind).count() as u32;
            let mut entry = Entry {
                status: TaskStatus::Queued,
                resume: Resume::FRESH,
                pid: None,
                turns: 0,
                usage: Usage::default(),
                restarts: 0,
                finished: None,
                control: None,
                pending_steers: Vec::new(),
                prepared: Prepared {
                    record,
                    task_dir,
                    config: self.config.clone(),
                },
            };
            for envelope in &events {
                note(&mut entry, &envelope.event);
            }
            if let Some(Event::Finished(finished)) = events.last().map(|e| &e.event) {
                entry.status = status_of(finished.status);
                entry.finished = Some(finished.clone());
            } else if count("started") > 0 {
                // It was running when the daemon died. Its worker died with us (PDEATHSIG);
                // anything it left behind must not run beside the resumed one.
                crate::shadow::kill_task_leftovers(&id);
                entry.status = TaskStatus::Queued;
                entry.resume = Resume {
                    attempt: count("started") + 1,
                    from_journal: true,
                    earlier_restarts: count("restarted"),
                };
                self.resume_first.push_back(id.clone());
                resumed += 1;
            } else {
                self.queue
                    .push_recovered(id.clone(), entry.prepared.record.priority);
                queued += 1;
            }
            self.tasks.insert(id, entry);
        }
        if queued + resumed > 0 {
            eprintln!("kugetsu: recovered {queued} queued and {resumed} running tasks");
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Call { call, reply } => {
                let submitted = matches!(call, Call::Submit(_));
                let answer = self.call(call).await;
                let _ = reply.send(answer);
                if submitted {
                    self.schedule().await;
                }
            }
            Command::Subscribe {
                params,
                sink,
                reply,
            } => {
                let answer = self.subscribe(params, sink).await;
                let _ = reply.send(answer);
            }
            Command::Event(envelope) => {
                if let Some(entry) = self.tasks.get_mut(&envelope.task) {
                    note(entry, &envelope.event);
                }
                self.fan_out(&envelope);
            }
            Command::Done { id, finished } => {
                self.running = self.running.saturating_sub(1);
                if let Some(entry) = self.tasks.get_mut(&id) {
                    entry.control = None;
                    entry.pid = None;
                    if let Some(finished) = finished {
                        entry.status = status_of(finished.status);
                        entry.finished = Some(finished);
                    }
                }
                self.schedule().await;
            }
            Command::Reload => self.reload(),
        }
    }

    async fn call(&mut self, call: Call) -> Result<Value, RpcError> {
        match call {
            Call::Submit(params) => self.submit(params).await,
            Call::List => {
                let tasks: Vec<TaskSummary> =
                    self.tasks.values().map(|e| self.summary(e)).collect();
                Ok(json!({ "tasks": tasks }))
            }
            Call::Get(TaskParams { task }) => {
                let entry = self.entry(&task)?;
                serde_json::to_value(self.summary(entry))
                    .map_err(|e| RpcError::new(rpc::INTERNAL_ERROR, e.to_string()))
            }
            Call::Events(TaskParams { task }) => {
                let entry = self.entry(&task)?;
                let events = events::read_all(&entry.prepared.task_dir.join("events.jsonl"))
                    .await
                    .unwrap_or_default();
                Ok(json!({ "events": events }))
            }
            Call::Cancel(TaskParams { task }) => self.cancel(&task).await,
            Call::Steer(SteerParams { task, text }) => {
                if text.trim().is_empty() {
                    return Err(RpcError::new(
                        rpc::INVALID_PARAMS,
                        "the steering text is empty",
                    ));
                }
                let entry = self.tasks.get_mut(&task).ok_or_else(|| not_found(&task))?;
                match (&entry.control, entry.status) {
                    (Some(control), _) => {
                        let _ = control.send(ShadowControl::Steer(text));
                    }
                    (None, TaskStatus::Queued) => entry.pending_steers.push(text),
                    (None, status) => {
                        return Err(RpcError::new(
                            rpc::INVALID_STATE,
                            format!("task {task} already ended ({})", status.as_str()),
                        ));
                    }
                }
                Ok(json!({ "task": task }))
            }
            Call::Shutdown(ShutdownParams { drain }) => {
                self.begin_stop(drain);
                Ok(json!({ "stopping": true, "drain": drain }))
            }
            Call::Clean(CleanParams { purge }) => self.clean(purge).await,
        }
    }

    fn entry(&self, task: &str) -> Result<&Entry, RpcError> {
        self.tasks.get(task).ok_or_else(|| not_found(task))
    }

    async fn submit(&mut self, params: SubmitParams) -> Result<Value, RpcError> {
        if self.stopping.is_some() {
            return Err(RpcError::new(rpc::SHUTTING_DOWN, "shutting_down"));
        }
        if self.queue.is_full() {
            return Err(
                RpcError::new(rpc::QUEUE_FULL, "queue_full").with_data(json!({
                    "capacity": self.queue.capacity(),
                    "queued": self.queue.len(),
                })),
            );
        }
        if !params.repo.is_absolute() {
            return Err(RpcError::new(
                rpc::INVALID_PARAMS,
                format!(
                    "repo must be an absolute path, not {}",
                    params.repo.display()
                ),
            ));
        }
        let options = TaskOptions {
            repo: params.repo,
            base: params.base,
            no_worktree: params.no_worktree,
            model: params.model,
            max_turns: params.max_turns,
            timeout: params.timeout_ms.map(Duration::from_millis),
            mem_limit: params.mem_limit,
            state_dir: Some(self.state.root.clone()),
            resume: None,
            config: None,
        };
        let env = |key: &str| std::env::var(key).ok();
        let prepared = driver::prepare(
            &options,
            &params.prompt,
            &self.config,
            &env,
            params.priority,
            Origin::Daemon,
        )
        .await
        .map_err(|e| RpcError::new(rpc::INVALID_PARAMS, e.to_string()))?;
        let id = prepared.record.id.clone();
        let mut log = EventLog::open(&prepared.task_dir.join("events.jsonl"), &id)
            .await
            .map_err(|e| {
                RpcError::new(
                    rpc::INTERNAL_ERROR,
                    format!("cannot open the event log: {e}"),
                )
            })?;
        let envelope = log.publish(Event::Queued {
            priority: params.priority,
        });
        let record_priority = prepared.record.priority;
        self.tasks.insert(
            id.clone(),
            Entry {
                prepared,
                status: TaskStatus::Queued,
                resume: Resume::FRESH,
                pid: None,
                turns: 0,
                usage: Usage::default(),
                restarts: 0,
                finished: None,
                control: None,
                pending_steers: Vec::new(),
            },
        );
        self.queue.push_recovered(id.clone(), record_priority);
        self.fan_out(&envelope);
        Ok(json!({ "task": id }))
    }

    async fn cancel(&mut self, task: &str) -> Result<Value, RpcError> {
        let entry = self.tasks.get_mut(task).ok_or_else(|| not_found(task))?;
        if let Some(control) = &entry.control {
            let _ = control.send(ShadowControl::Cancel);
            return Ok(json!({ "task": task, "status": "cancelling" }));
        }
        if entry.status != TaskStatus::Queued {
            return Err(RpcError::new(
                rpc::INVALID_STATE,
                format!("task {task} already ended ({})", entry.status.as_str()),
            ));
        }
        self.queue.remove(task);
        self.resume_first.retain(|t| t != task);
        let finished = Finished {
            status: FinishStatus::Cancelled,
            result: None,
            error: Some("cancelled before it started".to_owned()),
            turns: entry.turns,
            usage: entry.usage,
            restarts: entry.restarts,
            branch: entry.prepared.record.branch.clone(),
            worktree: None,
            changed_files: Vec::new(),
        };
        entry.status = TaskStatus::Cancelled;
        entry.finished = Some(finished.clone());
        let task_dir = entry.prepared.task_dir.clone();
        match EventLog::open(&task_dir.join("events.jsonl"), task).await {
            Ok(mut log) => {
                let envelope = log.publish(Event::Finished(finished));
                self.fan_out(&envelope);
            }
            Err(e) => eprintln!("kugetsu: cannot record the cancellation of {task}: {e}"),
        }
        Ok(json!({ "task": task, "status": "cancelled" }))
    }

    async fn subscribe(
        &mut self,
        params: SubscribeParams,
        sink: mpsc::UnboundedSender<EventEnvelope>,
    ) -> Result<Value, RpcError> {
        let mut sent = BTreeMap::new();
        if let Some(task) = &params.task {
            let entry = self.entry(task)?;
            // Replay what is on disk; live events already in flight are deduplicated by seq.
            let past = events::read_all(&entry.prepared.task_dir.join("events.jsonl"))
                .await
                .unwrap_or_default();
            let mut last = params.after_seq;
            for envelope in past.into_iter().filter(|e| e.seq > params.after_seq) {
                last = last.max(envelope.seq);
                let _ = sink.send(envelope);
            }
            sent.insert(task.clone(), last);
            if entry.status.is_final() {
                // Everything, `finished` included, was just replayed.
                return Ok(json!({ "subscribed": true }));
            }
        }
        self.subscribers.push(Subscriber {
            task: params.task,
            sink,
            sent,
        });
        Ok(json!({ "subscribed": true }))
    }

    fn fan_out(&mut self, envelope: &EventEnvelope) {
        self.subscribers.retain_mut(|sub| {
            if sub.task.as_deref().is_some_and(|t| t != envelope.task) {
                return !sub.sink.is_closed();
            }
            let last = sub.sent.entry(envelope.task.clone()).or_insert(0);
            if envelope.seq <= *last {
                return true;
            }
            *last = envelope.seq;
            let finished_single =
                sub.task.is_some() && matches!(envelope.event, Event::Finished(_));
            sub.sink.send(envelope.clone()).is_ok() && !finished_single
        });
    }

    /// Starts queued tasks while the pool and the host allow.
    async fn schedule(&mut self) {
        if self.stopping == Some(false) {
            return;
        }
        let snapshot = self.sampler.latest();
        if !snapshot.valid {
            // No memory figures yet: admission cannot be judged; the next tick will.
            return;
        }
        // Tasks no host of this size could ever run wait aside, so they block nobody.
        let mut impossible: Vec<String> = Vec::new();
        while self.running < self.config.max_shadows as usize {
            let next = self
                .resume_first
                .iter()
                .chain(self.queue.iter())
                .find(|id| !impossible.contains(id))
                .cloned();
            let Some(id) = next else { break };
            let Some(limit) = self.tasks.get(&id).map(|e| e.prepared.record.mem_limit) else {
                self.resume_first.retain(|t| t != &id);
                self.queue.remove(&id);
                continue;
            };
            if limit.saturating_add(MEMORY_RESERVE) > snapshot.total {
                if self.warned_impossible.insert(id.clone()) {
                    eprintln!(
                        "kugetsu: holding queued tasks: task {id} needs {} MiB + {} MiB reserve and this host has {} MiB in all; it waits until cancelled",
                        limit >> 20,
                        MEMORY_RESERVE >> 20,
                        snapshot.total >> 20
                    );
                }
                impossible.push(id);
                continue;
            }
            if snapshot.available < limit.saturating_add(MEMORY_RESERVE) {
                if !self.memory_held {
                    eprintln!(
                        "kugetsu: holding queued tasks: {} MiB available, a shadow needs {} MiB + {} MiB reserve",
                        snapshot.available >> 20,
                        limit >> 20,
                        MEMORY_RESERVE >> 20
                    );
                    self.memory_held = true;
                }
                break;
            }
            self.memory_held = false;
            if self.resume_first.front() == Some(&id) {
                self.resume_first.pop_front();
            } else {
                self.queue.remove(&id);
            }
            self.start(&id);
        }
    }

    fn start(&mut self, id: &str) {
        let Some(entry) = self.tasks.get_mut(id) else {
            return;
        };
        let (control, mut controls) = mpsc::unbounded_channel();
        for text in entry.pending_steers.drain(..) {
            let _ = control.send(ShadowControl::Steer(text));
        }
        entry.control = Some(control);
        entry.status = TaskStatus::Running;
        let mut prepared = entry.prepared.clone();
        let resume = entry.resume;
        let sampler = self.sampler.clone();
        let commands = self.commands.clone();
        let id = id.to_owned();
        self.running += 1;
        tokio::spawn(async move {
            let finished = match driver::materialize(&mut prepared).await {
                Ok(()) => {
                    let events = commands.clone();
                    driver::drive(&prepared, resume, &sampler, &mut controls, &mut |e| {
                        let _ = events.send(Command::Event(e.clone()));
                    })
                    .await
                }
                Err(error) => Some(
                    driver::fail(&prepared, error, &mut |e| {
                        let _ = commands.send(Command::Event(e.clone()));
                    })
                    .await,
                ),
            };
            let _ = commands.send(Command::Done { id, finished });
        });
    }

    fn begin_stop(&mut self, drain: bool) {
        if self.stopping == Some(false) {
            return;
        }
        self.stopping = Some(drain);
        eprintln!(
            "kugetsu: shutting down{}",
            if drain { " after the queue drains" } else { "" }
        );
        self.notifier.stopping();
        if !drain {
            for entry in self.tasks.values() {
                if let Some(control) = &entry.control {
                    let _ = control.send(ShadowControl::Detach);
                }
            }
        }
    }

    fn finished_stopping(&self) -> bool {
        match self.stopping {
            None => false,
            Some(false) => self.running == 0,
            Some(true) => {
                self.running == 0 && self.queue.is_empty() && self.resume_first.is_empty()
            }
        }
    }

    fn reload(&mut self) {
        let env = |key: &str| std::env::var(key).ok();
        let new = match Config::load(self.config_path.as_deref(), &env) {
            Ok(new) => new,
            Err(e) => {
                eprintln!(
                    "kugetsu: config reload rejected ({e}); keeping the previous configuration"
                );
                return;
            }
        };
        let old = &self.config;
        let mut changes = Vec::new();
        macro_rules! diff {
            ($field:ident) => {
                if old.$field != new.$field {
                    changes.push(format!(
                        "{} {:?} -> {:?}",
                        stringify!($field),
                        old.$field,
                        new.$field
                    ));
                }
            };
        }
        diff!(max_shadows);
        diff!(queue_capacity);
        diff!(mem_limit);
        diff!(max_restarts);
        diff!(max_turns);
        diff!(model);
        diff!(compaction_model);
        diff!(context_window);
        if changes.is_empty() {
            return;
        }
        eprintln!("kugetsu: config reloaded: {}", changes.join(", "));
        self.queue.set_capacity(new.queue_capacity as usize);
        // Queued tasks pick up the new restart policy and context settings when they start.
        for entry in self.tasks.values_mut() {
            if entry.status == TaskStatus::Queued {
                entry.prepared.config = new.clone();
            }
        }
        self.config = new;
    }

    async fn clean(&mut self, purge: bool) -> Result<Value, RpcError> {
        let mut removed = Vec::new();
        let ids: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, e)| e.status.is_final())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let Some(entry) = self.tasks.get(&id) else {
                continue;
            };
            let record = &entry.prepared.record;
            if record.worktree && record.workdir.exists() {
                if let Err(e) = crate::git::remove_worktree(&record.repo, &record.workdir).await {
                    eprintln!("kugetsu: cannot remove the worktree of {id}: {e}");
                    continue;
                }
                removed.push(id.clone());
            }
            if purge {
                let _ = std::fs::remove_dir_all(&entry.prepared.task_dir);
                self.tasks.remove(&id);
            }
        }
        Ok(json!({ "removed_worktrees": removed }))
    }

    fn summary(&self, entry: &Entry) -> TaskSummary {
        let record = &entry.prepared.record;
        let rss_bytes = entry
            .pid
            .and_then(|pid| self.sampler.latest().shadow(pid))
            .map(|m| m.total());
        let created = std::time::UNIX_EPOCH + Duration::from_millis(record.created_unix_ms);
        TaskSummary {
            id: record.id.clone(),
            status: entry.status,
            priority: record.priority,
            model: record.model.clone(),
            prompt: record.prompt.clone(),
            repo: record.repo.clone(),
            branch: record.branch.clone(),
            worktree: Some(record.workdir.display().to_string()),
            created: humantime::format_rfc3339_seconds(created).to_string(),
            pid: entry.pid,
            attempt: entry.resume.attempt,
            turns: entry.turns,
            usage: entry.usage,
            restarts: entry.restarts,
            rss_bytes,
            mem_limit: record.mem_limit,
            result: entry.finished.as_ref().and_then(|f| f.result.clone()),
            error: entry.finished.as_ref().and_then(|f| f.error.clone()),
        }
    }
}

/// Updates an entry's counters from one of its events.
fn note(entry: &mut Entry, event: &Event) {
    match event {
        Event::Started { pid, attempt, .. } => {
            entry.pid = Some(*pid);
            entry.resume.attempt = *attempt;
            entry.status = TaskStatus::Running;
        }
        Event::TurnEnd { usage, .. } => {
            entry.turns += 1;
            entry.usage.add(*usage);
        }
        Event::Restarted { .. } => entry.restarts += 1,
        _ => {}
    }
}

fn status_of(status: FinishStatus) -> TaskStatus {
    match status {
        FinishStatus::Completed => TaskStatus::Completed,
        FinishStatus::Failed => TaskStatus::Failed,
        FinishStatus::Cancelled => TaskStatus::Cancelled,
        FinishStatus::TimedOut => TaskStatus::TimedOut,
    }
}

fn not_found(task: &str) -> RpcError {
    RpcError::new(rpc::NOT_FOUND, "not_found").with_data(json!({ "task": task }))
}

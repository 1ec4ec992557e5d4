//! The daemon actor: the one owner of the queue, the task table and the subscribers.
//!
//! # Theory of operation
//!
//! Nothing but [`Daemon`] touches the daemon's state; everything else talks to it through
//! [`Command`]s on one channel, each answered on a oneshot:
//!
//! - each client connection ([`crate::daemon::connection`]) sends calls; the slow parts of a
//!   request (validating and creating a submitted task, reading a log from disk) run in the
//!   connection's own task, so the actor decides and never waits on git; its only disk work
//!   is small: the `finished` of a task cancelled while queued, and `list` reading finished
//!   tasks' records (the newest [`crate::daemon::table::RECENT`] once, or all with `--all`);
//! - each running shadow is a tokio task running [`crate::task::drive::drive`], which sends
//!   every event it commits (`Event`) and, at the end, `Done`;
//! - the config watcher sends `Reload`.
//!
//! A tick every 500 ms starts queued tasks while fewer than `max_shadows` run and the host has
//! memory for one more (`mem_limit` + a reserve), and reports status to systemd; a submission
//! and a shadow's end schedule at once.
//!
//! Durability: a submission is acknowledged only after its `task.json`, its live marker and its
//! `queued` event are on disk. After a crash (or `kill -9`) the daemon rebuilds its table from
//! the live markers only (never the whole history): a task with `finished` is done, one with a
//! `started` event resumes from its journal (after killing anything a dead worker left behind),
//! the rest are queued again in their original order.
//!
//! Shutdown order: stop accepting submissions; without `drain`, detach running shadows (their
//! workers exit, their tasks stay resumable) and exit once every shadow task returned; with
//! `drain`, keep running until the queue is empty and nothing runs. Then remove the socket.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use interprocess::local_socket::tokio::prelude::*;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::daemon::command::Command;
use crate::daemon::queue::Queue;
use crate::daemon::sdnotify::Notifier;
use crate::daemon::subscribers::Subscribers;
use crate::daemon::table::{Entry, Table};
use crate::exit::CliError;
use crate::govern::{Governor, Settings};
use crate::rpc::TaskStatus;
use crate::task::Fleet;
use crate::task::control::ShadowControl;
use crate::task::drive;
use crate::task::events::{self, Progress};
use crate::task::memory::Sampler;
use crate::task::prepare::{self, Prepared};
use crate::task::record::{Origin, StateDir};

/// Memory kept free on the host beyond a new shadow's limit before it may start.
pub const MEMORY_RESERVE: u64 = 256 * 1024 * 1024;
/// How often the daemon schedules, and reports to systemd.
const TICK: Duration = Duration::from_millis(500);

/// The daemon actor.
#[derive(Debug)]
pub struct Daemon {
    pub(super) config: Config,
    /// `--config` and the other command-line settings that outlive a reload.
    options: ServeOptions,
    pub(super) state: StateDir,
    pub(super) queue: Queue,
    /// Tasks to resume before anything queued (they were running when the daemon died).
    pub(super) resume_first: VecDeque<String>,
    pub(super) table: Table,
    pub(super) running: usize,
    /// What the daemon counted since it started (restarts, tokens, finished tasks...).
    pub(super) counters: crate::daemon::stats::Counters,
    pub(super) subscribers: Subscribers,
    pub(super) sampler: Sampler,
    /// Rate limits and the daily budget, shared by every shadow.
    pub(super) governor: Governor,
    /// Whether the last scheduling attempt was held back by the daily budget (logged once).
    budget_held: bool,
    /// Handed to shadow tasks and the config watcher.
    commands: mpsc::UnboundedSender<Command>,
    notifier: Notifier,
    /// `Some(drain)` once shutdown began.
    pub(super) stopping: Option<bool>,
    /// Whether the last scheduling attempt was held back by host memory (logged once).
    memory_held: bool,
    /// Tasks already reported as too big for this host.
    warned_impossible: HashSet<String>,
    /// `task_retention` for the retention pass, which runs outside the actor.
    retention: tokio::sync::watch::Sender<Option<Duration>>,
    /// The conflict radar, shown every event; its findings come back as `Command::Conflict`.
    radar: crate::land::radar::Radar,
    /// The node loop, when this daemon is a node of a cluster.
    node: Option<crate::cluster::node::NodeHandle>,
}

/// Where `kugetsu serve` was told to find its config, socket and state.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub config: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// Overrides the config's `sandbox` for every task (and survives reloads).
    pub sandbox: Option<kugetsu_protocol::SandboxMode>,
    /// Overrides the config's `network` for every task (and survives reloads).
    pub network: Option<kugetsu_protocol::NetworkMode>,
    /// `--http ADDR`: overrides the config's `http` (read at start; a reload does not move it).
    pub http: Option<String>,
}

impl ServeOptions {
    /// Applies the command line's overrides to a freshly loaded config.
    fn apply(&self, config: &mut Config) {
        if let Some(sandbox) = self.sandbox {
            config.sandbox = sandbox;
        }
        if let Some(network) = self.network {
            config.network = network;
        }
    }
}

/// Entry point of `kugetsu serve`.
pub async fn serve(args: ServeOptions) -> Result<ExitCode, CliError> {
    let env = |key: &str| std::env::var(key).ok();
    let mut config = Config::load(args.config.as_deref(), &env)?;
    args.apply(&mut config);
    if config.sandbox == kugetsu_protocol::SandboxMode::Off {
        tracing::warn!("sandbox is off: every shadow's tools run with this daemon's full access");
    }
    let state = StateDir {
        root: crate::config::state_dir(args.state_dir.as_deref(), &env)?,
    };
    std::fs::create_dir_all(state.tasks()).map_err(|e| {
        CliError::Usage(format!(
            "cannot create {}: {}",
            state.root.display(),
            crate::exit::describe_io(&e)
        ))
    })?;
    match crate::daemon::limits::raise_nofile() {
        Ok(limit) if limit.shadows() < u64::from(config.max_shadows) => tracing::warn!(
            "the open-files limit ({}) allows about {} shadows, fewer than max_shadows {}; raise it (ulimit -n, LimitNOFILE=)",
            limit.soft,
            limit.shadows(),
            config.max_shadows
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-files limit: {e}"),
    }
    // Bound before the socket: a bad address stops the daemon before it takes the socket.
    let http = match args.http.as_deref().or(config.http.as_deref()) {
        Some(addr) => Some(crate::http::server::bind(addr, &state.root).await?),
        None => None,
    };
    // A node joins its cluster before it takes the socket: a database it cannot reach, or
    // another live process under the same node_id, stops it here.
    let cluster = match config.cluster.as_deref() {
        Some(settings) => {
            let joined = async {
                let cluster = crate::cluster::Cluster::install(
                    settings,
                    state.clone(),
                    config.queue_capacity,
                )?;
                let listener = crate::cluster::node::join(&cluster, config.max_shadows).await?;
                Ok::<_, crate::cluster::db::DbError>((cluster, listener))
            }
            .await;
            match joined {
                Ok(joined) => Some(joined),
                Err(e) => {
                    return Err(CliError::Failed(format!(
                        "cannot join the cluster at {} as node {}: {e}",
                        crate::config::redact_url(&settings.url),
                        settings.node_id
                    )));
                }
            }
        }
        None => None,
    };
    let socket_path = crate::config::socket_path(args.socket.as_deref(), &state.root, &env);
    let listener = crate::daemon::socket::bind(&socket_path).await?;
    if let Err(e) = kugetsu_os::process::become_subreaper() {
        tracing::warn!("cannot become a subreaper ({e}); orphans may escape");
    }
    let (commands, mut inbox) = mpsc::unbounded_channel();
    let config_retention = config.task_retention;
    let state_for_radar = state.clone();
    let mut daemon = Daemon {
        queue: Queue::new(config.queue_capacity as usize),
        options: args.clone(),
        governor: Governor::new(
            Settings::daemon(&config.governance),
            Some(state.root.join("usage").join("daily.json")),
        ),
        config,
        state,
        resume_first: VecDeque::new(),
        table: Table::default(),
        running: 0,
        counters: Default::default(),
        subscribers: Subscribers::default(),
        sampler: Sampler::spawn(),
        budget_held: false,
        commands: commands.clone(),
        notifier: Notifier::from_env(),
        stopping: None,
        memory_held: false,
        warned_impossible: HashSet::new(),
        retention: tokio::sync::watch::Sender::new(config_retention),
        radar: {
            let commands = commands.clone();
            crate::land::radar::Radar::spawn(state_for_radar, move |conflict| {
                let _ = commands.send(Command::Conflict(conflict));
            })
        },
        node: None,
    };
    // Admission needs real numbers: never schedule on an empty snapshot.
    daemon.sampler.first_sample(Duration::from_secs(2)).await;
    match cluster {
        // A node's tasks live in the database; this state dir holds its copies.
        Some((cluster, listener)) => {
            tracing::info!(
                "node {} of the cluster at {} (lease_ttl {} ms, checkpoints {})",
                cluster.node_id,
                daemon
                    .config
                    .cluster
                    .as_ref()
                    .map(|c| crate::config::redact_url(&c.url))
                    .unwrap_or_default(),
                cluster.ttl.as_millis(),
                cluster.checkpoint_remote.as_deref().unwrap_or("off")
            );
            daemon.node = Some(crate::cluster::node::spawn(
                &cluster,
                listener,
                commands.clone(),
            ));
        }
        None => daemon.recover().await,
    }
    crate::daemon::housekeeping::spawn_retention(
        daemon.state.clone(),
        daemon.retention.subscribe(),
        commands.clone(),
    );
    // Watch the file even if it does not exist yet: creating it is a change too.
    let watch_path = args
        .config
        .clone()
        .or_else(|| crate::config::default_path(&env));
    let _watcher = crate::daemon::reload::watch(watch_path.as_deref(), commands.clone());

    let accept_commands = commands.clone();
    let accept_state = daemon.state.clone();
    let acceptor = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    tokio::spawn(crate::daemon::connection::serve_connection(
                        stream,
                        accept_commands.clone(),
                        accept_state.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {}", crate::exit::describe_io(&e));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let http = http.map(|bound| bound.serve(commands.clone(), daemon.state.clone()));
    drop(commands);
    tracing::info!(
        "serving on {} (state {}, max_shadows {}, queue_capacity {})",
        socket_path.display(),
        daemon.state.root.display(),
        daemon.config.max_shadows,
        daemon.config.queue_capacity
    );
    let status = daemon.status_line();
    daemon.notifier.ready(&status);

    let (mut sigterm, mut sigint, mut sigchld) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::child()),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => {
            return Err(CliError::Failed(
                "cannot install signal handlers".to_owned(),
            ));
        }
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Orphans adopted by this subreaper (tool processes of a worker that died) are reaped once
    // seen as zombies on two ticks in a row; only looked for after a child exited.
    let mut zombies: Vec<u32> = Vec::new();
    let mut child_exited = false;
    loop {
        tokio::select! {
            Some(command) = inbox.recv() => daemon.handle(command),
            _ = sigchld.recv() => child_exited = true,
            _ = tick.tick() => {
                if child_exited || !zombies.is_empty() {
                    child_exited = false;
                    let workers: Vec<u32> = daemon
                        .table
                        .live
                        .values()
                        .filter_map(|e| e.progress.pid)
                        .collect();
                    kugetsu_os::process::reap_lingering(&zombies, &workers);
                    zombies = kugetsu_os::process::zombie_children();
                }
                daemon.schedule();
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
    if let Some(node) = daemon.node.take()
        && let Some(cluster) = crate::cluster::active()
    {
        // Let the writers land their last events and give their leases back.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cluster.fences().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node.stop(cluster).await;
    }
    acceptor.abort();
    if let Some(http) = http {
        http.stop().await;
    }
    let _ = std::fs::remove_file(&socket_path);
    // Let connection writers send their last answers (the `shutdown` reply among them).
    tokio::time::sleep(Duration::from_millis(100)).await;
    tracing::info!("stopped");
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

    /// Rebuilds the table from the live markers (see the module docs).
    async fn recover(&mut self) {
        let ids = match self.state.live_ids() {
            Some(ids) => ids,
            // A state dir from before live markers: find the unfinished tasks once, and mark
            // them so that no later start reads the whole history again.
            None => self.migrate_to_live_markers().await,
        };
        let (mut queued, mut resumed) = (0, 0);
        for id in ids {
            let dir = self.state.task(&id);
            let record = match dir.load() {
                Ok(record) if record.origin == Origin::Daemon => record,
                Ok(_) => {
                    self.state.unmark_live(&id);
                    continue;
                }
                Err(e) => {
                    self.report_damaged(&id, &e).await;
                    continue;
                }
            };
            let events = events::read_all(&dir.events_file())
                .await
                .unwrap_or_default();
            let progress = Progress::of(&events);
            // A paused task still marked live was resumed and waits for its turn.
            if progress
                .finished
                .as_ref()
                .is_some_and(|f| f.status != kugetsu_protocol::FinishStatus::Paused)
            {
                self.state.unmark_live(&id);
                continue;
            }
            let priority = record.priority;
            let entry = Entry::new(
                Prepared {
                    record,
                    dir,
                    config: self.config.clone(),
                },
                progress,
            );
            if entry.resume.from_journal {
                // It was running when the daemon died. Its worker died with us (PDEATHSIG);
                // anything it left behind must not run beside the resumed one.
                crate::task::shadow::kill_task_leftovers(&id);
                self.resume_first.push_back(id.clone());
                resumed += 1;
            } else {
                self.queue.push_recovered(id.clone(), priority);
                queued += 1;
            }
            self.table.live.insert(id, entry);
        }
        if queued + resumed > 0 {
            tracing::info!("recovered {queued} queued and {resumed} running tasks");
        }
    }

    /// A live task whose record cannot be used: said in the log, and ended as `failed` with
    /// the reason in its own `events.jsonl` (so `ps`, `show` and `logs` tell it too), never run
    /// and never dropped silently. Its directory stays on disk for inspection.
    async fn report_damaged(&mut self, id: &str, error: &crate::task::record::RecordError) {
        let why = kugetsu_protocol::error_chain(error);
        let dir = self.state.task(id);
        let finished = Progress::default().finished(
            kugetsu_protocol::FinishStatus::Failed,
            format!("damaged task record, not run: {why}"),
        );
        let written = if dir.path().is_dir() {
            let path = dir.events_file();
            let event = kugetsu_protocol::Event::Finished(finished.clone());
            let task = id.to_owned();
            tokio::task::spawn_blocking(move || {
                events::EventLog::open(&path, &task).map(|mut log| log.publish(event))
            })
            .await
            .ok()
            .and_then(Result::ok)
        } else {
            None
        };
        match written {
            Some(_) => tracing::error!(
                "queued task {id}: {why}; marked failed in {} and not run",
                dir.events_file().display()
            ),
            None => tracing::error!(
                "queued task {id}: {why}; its directory {} is gone or \
                 unwritable, so it is not run",
                dir.path().display()
            ),
        }
        self.table
            .remember_damaged(crate::daemon::table::damaged_summary(id, &finished));
        self.state.unmark_live(id);
    }

    async fn migrate_to_live_markers(&self) -> Vec<String> {
        let mut live = Vec::new();
        for id in self.state.all_ids() {
            let dir = self.state.task(&id);
            if !matches!(dir.load(), Ok(record) if record.origin == Origin::Daemon) {
                continue;
            }
            let finished = crate::task::events::read_last(&dir.events_file())
                .is_some_and(|e| e.event.kind() == "finished");
            if !finished {
                if let Err(e) = self.state.mark_live(&id) {
                    tracing::warn!("cannot mark task {id} live: {e}");
                }
                live.push(id);
            }
        }
        if let Err(e) = std::fs::create_dir_all(self.state.live()) {
            tracing::warn!("cannot create {}: {e}", self.state.live().display());
        }
        live
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Call { call, reply } => {
                let answer = self.call(call);
                let _ = reply.send(answer);
            }
            Command::Admit { reply } => {
                let _ = reply.send(
                    self.admit()
                        .map(|()| (self.config.clone(), self.state.clone())),
                );
            }
            Command::Enqueue {
                prepared,
                queued,
                reply,
            } => {
                let answer = self.enqueue(*prepared, &queued);
                let _ = reply.send(answer);
                self.schedule();
            }
            Command::Requeue {
                prepared,
                progress,
                reply,
            } => {
                let _ = reply.send(self.requeue(*prepared, *progress));
                self.schedule();
            }
            Command::Subscribe {
                task,
                after_seq,
                sink,
                reply,
            } => {
                let _ = reply.send(self.subscribe(task, after_seq, sink));
            }
            Command::Locate { task, reply } => {
                let _ = reply.send(self.locate(&task));
            }
            Command::Forget { tasks } => self.table.forget(&tasks),
            Command::Settings { reply } => {
                let _ = reply.send((self.config.clone(), self.state.clone()));
            }
            Command::Merged { landed } => self.table.mark_merged(&landed),
            Command::Conflict(conflict) => self.on_conflict(conflict),
            Command::Event(envelope) => {
                self.radar.observe(&envelope.task, &envelope.event);
                if let Some(entry) = self.table.live.get_mut(&envelope.task) {
                    entry.progress.note_envelope(&envelope);
                    if entry.progress.starts > 0 {
                        entry.status = TaskStatus::Running;
                    }
                }
                self.counters.observe(&envelope);
                self.subscribers.fan_out(&envelope);
            }
            Command::Done { id, finished } => {
                self.running = self.running.saturating_sub(1);
                match finished {
                    Some(finished) => {
                        self.table.finish(&id, finished);
                        self.state.unmark_live(&id);
                    }
                    None if self.node.is_some() => {
                        // Detached or lost: the task is the cluster's again.
                        self.table.live.remove(&id);
                        if let Some(lease) = crate::cluster::active().and_then(|c| c.lease(&id)) {
                            let _ = lease.writer.send(crate::cluster::writer::Message::Detached);
                        }
                    }
                    None => {
                        if let Some(entry) = self.table.live.get_mut(&id) {
                            entry.control = None;
                        }
                    }
                }
                self.schedule();
            }
            Command::Reload => self.reload(),
            Command::Adopt(adopted) => self.adopt(*adopted),
            Command::Capacity { reply } => {
                let _ = reply.send(self.capacity());
            }
            Command::LocalStats { reply } => {
                let snapshot = self.sampler.latest();
                let stats = self
                    .table
                    .live
                    .iter()
                    .filter(|(_, e)| e.status == TaskStatus::Running)
                    .map(|(id, e)| {
                        let rss = e
                            .progress
                            .pid
                            .and_then(|pid| snapshot.shadow(pid))
                            .map(|m| m.total());
                        (id.clone(), rss, self.governor.waiting(id))
                    })
                    .collect();
                let _ = reply.send(stats);
            }
            Command::Fleet { reply } => {
                let _ = reply.send(self.fleet_stats());
            }
        }
    }

    /// Records a radar finding on a live task and, with `steer_on_conflict`, steers it.
    fn on_conflict(&mut self, conflict: crate::land::radar::Conflict) {
        let Some(control) = self
            .table
            .live
            .get(&conflict.task)
            .and_then(|e| e.control.as_ref())
        else {
            return;
        };
        let _ = control.send(ShadowControl::Publish(kugetsu_protocol::Event::Conflict {
            with: vec![conflict.with],
            files: conflict.files,
        }));
        if self.config.steer_on_conflict
            && let Some(note) = conflict.note
        {
            let _ = control.send(ShadowControl::Steer(note));
        }
    }

    /// Starts queued tasks while the pool and the host allow.
    pub(super) fn schedule(&mut self) {
        if self.stopping == Some(false) {
            return;
        }
        let snapshot = self.sampler.latest();
        if !snapshot.valid {
            // No memory figures yet: admission cannot be judged; the next tick will.
            return;
        }
        if let Some(reason) = self.governor.daily_spent() {
            if !self.budget_held && !self.queue.is_empty() {
                tracing::info!("holding queued tasks: {reason}");
            }
            self.budget_held = true;
            return;
        }
        self.budget_held = false;
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
            let Some(limit) = self
                .table
                .live
                .get(&id)
                .map(|e| e.prepared.record.mem_limit)
            else {
                self.resume_first.retain(|t| t != &id);
                self.queue.remove(&id);
                continue;
            };
            if limit.saturating_add(MEMORY_RESERVE) > snapshot.total {
                let reason = format!(
                    "can never start here: mem_limit {} MiB + {} MiB reserve exceeds this host's {} MiB in all; cancel it or resubmit with a smaller --mem-limit",
                    limit >> 20,
                    MEMORY_RESERVE >> 20,
                    snapshot.total >> 20
                );
                if self.warned_impossible.insert(id.clone()) {
                    tracing::info!("holding queued tasks: task {id} {reason}");
                }
                if let Some(entry) = self.table.live.get_mut(&id) {
                    entry.held = Some(reason);
                }
                impossible.push(id);
                continue;
            }
            if let Some(entry) = self.table.live.get_mut(&id) {
                entry.held = None;
            }
            if snapshot.available < limit.saturating_add(MEMORY_RESERVE) {
                if !self.memory_held {
                    tracing::info!(
                        "holding queued tasks: {} MiB available, a shadow needs {} MiB + {} MiB reserve",
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
        let Some(entry) = self.table.live.get_mut(id) else {
            return;
        };
        let (control, controls) = mpsc::unbounded_channel();
        for text in entry.pending_steers.drain(..) {
            let _ = control.send(ShadowControl::Steer(text));
        }
        entry.control = Some(control);
        self.launch(id, controls, None, None);
    }

    /// Runs a task a cluster node claimed, at once (the node already judged the capacity).
    fn adopt(&mut self, adopted: crate::daemon::command::Adopted) {
        let id = adopted.prepared.record.id.clone();
        let mut entry = Entry::new(adopted.prepared, adopted.progress);
        entry.control = Some(adopted.control);
        self.table.live.insert(id.clone(), entry);
        self.launch(&id, adopted.controls, Some(adopted.writer), adopted.failure);
    }

    /// What a cluster node may claim now: free slots, and the memory a new shadow may have.
    fn capacity(&self) -> crate::daemon::command::Capacity {
        let snapshot = self.sampler.latest();
        let none = crate::daemon::command::Capacity {
            slots: 0,
            memory: 0,
            retention: self.config.task_retention,
        };
        if self.stopping.is_some() || !snapshot.valid || self.governor.daily_spent().is_some() {
            return none;
        }
        let memory = snapshot
            .available
            .min(snapshot.total)
            .saturating_sub(MEMORY_RESERVE);
        // One claim takes several tasks: as many as the memory holds at the usual limit.
        let fit = usize::try_from(memory / self.config.mem_limit.max(1)).unwrap_or(usize::MAX);
        crate::daemon::command::Capacity {
            slots: (self.config.max_shadows as usize)
                .saturating_sub(self.running)
                .min(fit.max(1)),
            memory,
            retention: self.config.task_retention,
        }
    }

    /// Spawns the task that drives `id`'s shadow; its events also go to `writer` (a cluster
    /// node's database writer) when there is one; with `failure`, it ends `failed` at once.
    fn launch(
        &mut self,
        id: &str,
        mut controls: mpsc::UnboundedReceiver<ShadowControl>,
        writer: Option<mpsc::UnboundedSender<crate::cluster::writer::Message>>,
        failure: Option<String>,
    ) {
        let Some(entry) = self.table.live.get_mut(id) else {
            return;
        };
        entry.status = TaskStatus::Running;
        let mut prepared = entry.prepared.clone();
        let resume = entry.resume;
        let fleet = Fleet {
            sampler: self.sampler.clone(),
            governor: self.governor.clone(),
        };
        let commands = self.commands.clone();
        let id = id.to_owned();
        self.running += 1;
        tokio::spawn(async move {
            let events = commands.clone();
            let mut watch = move |e: &kugetsu_protocol::EventEnvelope| {
                let _ = events.send(Command::Event(e.clone()));
                if let Some(writer) = &writer {
                    let _ =
                        writer.send(crate::cluster::writer::Message::Event(Box::new(e.clone())));
                }
            };
            let materialized = match failure {
                Some(why) => Err(why),
                None => prepare::materialize(&mut prepared).await,
            };
            let finished = match materialized {
                Ok(()) => drive::drive(&prepared, resume, &fleet, &mut controls, &mut watch).await,
                Err(error) => Some(drive::fail(&prepared, error, &mut watch).await),
            };
            let _ = commands.send(Command::Done { id, finished });
        });
    }

    pub(super) fn begin_stop(&mut self, drain: bool) {
        if self.stopping == Some(false) {
            return;
        }
        self.stopping = Some(drain);
        if let Some(node) = &self.node {
            node.stop_claiming();
        }
        tracing::info!(
            "shutting down{}",
            if drain { " after the queue drains" } else { "" }
        );
        self.notifier.stopping();
        if !drain {
            for entry in self.table.live.values() {
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
        let new = match Config::load(self.options.config.as_deref(), &env) {
            Ok(mut new) => {
                self.options.apply(&mut new);
                new
            }
            Err(e) => {
                tracing::warn!("config reload rejected ({e}); keeping the previous configuration");
                return;
            }
        };
        let changes = self.config.changes_to(&new);
        if changes.is_empty() {
            return;
        }
        tracing::info!("config reloaded: {}", changes.join(", "));
        self.queue.set_capacity(new.queue_capacity as usize);
        // Queued tasks pick up the new restart policy and context settings when they start.
        for entry in self.table.live.values_mut() {
            if entry.status == TaskStatus::Queued {
                entry.prepared.config = new.clone();
            }
        }
        self.retention.send_replace(new.task_retention);
        self.governor.configure(Settings::daemon(&new.governance));
        self.config = new;
        self.schedule();
    }
}

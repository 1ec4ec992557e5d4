//! Running one task's shadow: preparing the task, driving its worker to `finished`,
//! restarting a crashed worker from its journal, and resuming a task later.
//!
//! [`prepare`] validates everything that can be wrong before anything is created (model,
//! keys, repository) so that bad input costs nothing; then it creates the task directory and
//! the worktree. [`drive`] runs workers until one reports `finished`, obeying the
//! [`ShadowControl`] messages of whoever owns the task (`kugetsu run` maps signals to them, the
//! daemon maps RPCs), and completes the `finished` event with what only the supervisor knows
//! (restarts, branch, worktree, changed files).

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kugetsu_protocol::{
    Event, EventEnvelope, FinishStatus, Finished, ModelRef, Priority, ProviderKind, TaskSpec,
    Usage, WorkerMessage,
};
use tokio::sync::{mpsc, watch};

use crate::cli::TaskOptions;
use crate::config::Config;
use crate::events::EventLog;
use crate::exit::CliError;
use crate::git;
use crate::memory::{Sampler, Snapshot};
use crate::shadow::{FromWorker, Shadow, describe_exit, find_worker};
use crate::task::{Origin, StateDir, TaskRecord, write_json_atomic};

/// How long a cancelled worker gets to report `finished` before it is killed.
const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// How long past its deadline a worker may run before the supervisor kills it.
const DEADLINE_GRACE: Duration = Duration::from_secs(15);
/// How long a detached worker gets to exit before it is killed.
const DETACH_GRACE: Duration = Duration::from_secs(5);

/// What the owner of a running task can ask of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowControl {
    /// Stop the task: `finished` with status `cancelled`. A second `Cancel` kills at once.
    Cancel,
    /// Hand a message to the model at its next safe point (kept until it is delivered).
    Steer(String),
    /// Stop the worker but leave the task resumable (the daemon is shutting down).
    Detach,
}

/// A task ready to run: validated, with its directory and worktree created.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub record: TaskRecord,
    pub task_dir: PathBuf,
    pub config: Config,
}

/// Checks the request and creates the task: its directory, `task.json` and worktree.
///
/// The worktree is not created yet (see [`materialize`]): a queued task costs a directory and
/// two small files, nothing more.
pub async fn prepare(
    options: &TaskOptions,
    prompt: &str,
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    priority: Priority,
    origin: Origin,
) -> Result<Prepared, CliError> {
    if prompt.trim().is_empty() {
        return Err(CliError::Usage("the prompt is empty".to_owned()));
    }
    let model = resolve_model(options.model.as_deref(), config, env)?;
    let repo = git::toplevel(&options.repo).await?;
    let base_ref = options.base.as_deref().unwrap_or("HEAD");
    let base_commit = if options.no_worktree && options.base.is_none() {
        git::resolve_commit(&repo, "HEAD").await.ok()
    } else {
        Some(git::resolve_commit(&repo, base_ref).await?)
    };
    if options.no_worktree && options.base.is_some() {
        return Err(CliError::Usage(
            "--base needs a worktree; drop --no-worktree or --base".to_owned(),
        ));
    }
    let state = StateDir {
        root: crate::config::state_dir(options.state_dir.as_deref(), env)?,
    };
    let (id, task_dir) = state.create_task_dir().map_err(|e| {
        CliError::Usage(format!(
            "cannot create a task directory under {}: {e}",
            state.root.display()
        ))
    })?;
    let (workdir, branch) = if options.no_worktree {
        (repo.clone(), git::current_branch(&repo).await)
    } else {
        (state.worktree(&id), Some(format!("kugetsu/{id}")))
    };
    let now_ms = unix_ms(SystemTime::now());
    let record = TaskRecord {
        id,
        prompt: prompt.to_owned(),
        model: model.to_string(),
        repo,
        workdir,
        branch,
        base_commit,
        worktree: !options.no_worktree,
        max_turns: options.max_turns.unwrap_or(config.max_turns),
        timeout_ms: options
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        deadline_unix_ms: None,
        mem_limit: options.mem_limit.unwrap_or(config.mem_limit),
        created_unix_ms: now_ms,
        priority,
        origin,
    };
    // Durable before anyone is told the task exists.
    if let Err(e) = write_json_atomic(&task_dir.join("task.json"), &record) {
        let _ = std::fs::remove_dir_all(&task_dir);
        return Err(CliError::Failed(format!("cannot write task.json: {e}")));
    }
    Ok(Prepared {
        record,
        task_dir,
        config: config.clone(),
    })
}

/// [`prepare`] and [`materialize`] at once, for a task that starts right away. Nothing is
/// left behind when it fails.
pub async fn prepare_now(
    options: &TaskOptions,
    prompt: &str,
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Prepared, CliError> {
    let mut prepared = prepare(options, prompt, config, env, Priority::Normal, Origin::Run).await?;
    if let Err(e) = materialize(&mut prepared).await {
        let _ = std::fs::remove_dir_all(&prepared.task_dir);
        return Err(CliError::Failed(e));
    }
    Ok(prepared)
}

/// Makes a prepared task ready to start: creates its worktree and fixes its deadline (a
/// timeout counts from the first start, not from submission). Idempotent.
pub async fn materialize(prepared: &mut Prepared) -> Result<(), String> {
    let record = &mut prepared.record;
    if record.worktree && !record.workdir.exists() {
        let branch = record
            .branch
            .clone()
            .unwrap_or_else(|| format!("kugetsu/{}", record.id));
        let base = record
            .base_commit
            .clone()
            .unwrap_or_else(|| "HEAD".to_owned());
        git::add_worktree(&record.repo, &record.workdir, &branch, &base)
            .await
            .map_err(|e| e.to_string())?;
    }
    if record.deadline_unix_ms.is_none()
        && let Some(timeout) = record.timeout_ms
    {
        record.deadline_unix_ms = Some(unix_ms(SystemTime::now()).saturating_add(timeout));
        write_json_atomic(&prepared.task_dir.join("task.json"), &*record)
            .map_err(|e| format!("cannot update task.json: {e}"))?;
    }
    Ok(())
}

/// What `--resume ID` found.
#[derive(Debug)]
pub enum Reopened {
    /// The task can continue from its journal.
    Resumable(Prepared, Resume),
    /// The task already ended; this is its `finished` event.
    Finished(EventEnvelope),
}

/// Loads an existing task for `--resume`.
pub async fn reopen(
    id: &str,
    options: &TaskOptions,
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Reopened, CliError> {
    if !crate::task::is_valid_id(id) {
        return Err(CliError::Usage(format!("{id:?} is not a task id")));
    }
    let state = StateDir {
        root: crate::config::state_dir(options.state_dir.as_deref(), env)?,
    };
    let task_dir = state.task_dir(id);
    let text = std::fs::read(task_dir.join("task.json"))
        .map_err(|e| CliError::Usage(format!("no task {id} in {} ({e})", state.root.display())))?;
    let record: TaskRecord = serde_json::from_slice(&text)
        .map_err(|e| CliError::Usage(format!("task {id}: unreadable task.json: {e}")))?;
    let events = crate::events::read_all(&task_dir.join("events.jsonl"))
        .await
        .unwrap_or_default();
    if let Some(last) = events.last()
        && matches!(last.event, Event::Finished(_))
    {
        return Ok(Reopened::Finished(last.clone()));
    }
    if !record.workdir.is_dir() {
        return Err(CliError::Usage(format!(
            "task {id}: its worktree {} is gone",
            record.workdir.display()
        )));
    }
    resolve_model(Some(&record.model), config, env)?;
    let count = |kind: &str| events.iter().filter(|e| e.event.kind() == kind).count() as u32;
    let resume = Resume {
        attempt: count("started") + 1,
        from_journal: true,
        earlier_restarts: count("restarted"),
    };
    Ok(Reopened::Resumable(
        Prepared {
            record,
            task_dir,
            config: config.clone(),
        },
        resume,
    ))
}

/// Picks the model (flag, then config/`KUGETSU_MODEL`) and checks its provider can be used.
fn resolve_model(
    flag: Option<&str>,
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ModelRef, CliError> {
    let text = flag.or(config.model.as_deref()).ok_or_else(|| {
        CliError::Usage(
            "no model set: pass -m PROVIDER/MODEL (e.g. -m openai/gpt-4.1-mini), set KUGETSU_MODEL, \
             or put model = \"PROVIDER/MODEL\" in the config file"
                .to_owned(),
        )
    })?;
    let mut model: ModelRef = text
        .parse()
        .map_err(|e: kugetsu_protocol::ModelError| CliError::Usage(e.to_string()))?;
    if let Some(key) = model.provider.api_key_env()
        && env(key).is_none_or(|v| v.trim().is_empty())
    {
        return Err(CliError::Usage(format!(
            "{key} is not set; model {model} needs it (export {key}=...)"
        )));
    }
    if model.provider == ProviderKind::Scripted && model.model != "demo" {
        // The worker runs in the worktree: pin the script's path to where the user stands.
        let path = std::path::absolute(&model.model)
            .map_err(|e| CliError::Usage(format!("script {}: {e}", model.model)))?;
        if !path.is_file() {
            return Err(CliError::Usage(format!(
                "script {} does not exist (model {model})",
                path.display()
            )));
        }
        model.model = path.display().to_string();
    }
    Ok(model)
}

/// What the supervisor saw of a task, to describe it if the worker cannot.
#[derive(Debug, Default)]
struct Observed {
    turns: u32,
    usage: Usage,
    last_text: Option<String>,
}

impl Observed {
    fn note(&mut self, event: &Event) {
        match event {
            Event::TurnStart { turn } => self.turns = self.turns.max(*turn),
            Event::TurnEnd { usage, .. } => self.usage.add(*usage),
            Event::AssistantMessage { text } if !text.is_empty() => {
                self.last_text = Some(text.clone());
            }
            _ => {}
        }
    }

    fn finished(&self, status: FinishStatus, error: String) -> Finished {
        Finished {
            status,
            result: self.last_text.clone(),
            error: Some(error),
            turns: self.turns,
            usage: self.usage,
            restarts: 0,
            branch: None,
            worktree: None,
            changed_files: Vec::new(),
        }
    }
}

/// Runs a prepared task to its end, publishing every event to the log and to `watch`.
///
/// Returns `None` when the task was detached ([`ShadowControl::Detach`]): it has no
/// `finished` event and resumes from its journal later.
pub async fn drive(
    prepared: &Prepared,
    resume: Resume,
    sampler: &Sampler,
    control: &mut mpsc::UnboundedReceiver<ShadowControl>,
    watch: &mut (dyn FnMut(&EventEnvelope) + Send),
) -> Option<Finished> {
    let record = &prepared.record;
    let mut log = match EventLog::open(&prepared.task_dir.join("events.jsonl"), &record.id).await {
        Ok(log) => log,
        Err(e) => {
            return Some(Observed::default().finished(
                FinishStatus::Failed,
                format!("cannot open the event log: {e}"),
            ));
        }
    };
    let mut publish = |log: &mut EventLog, event: Event| {
        let envelope = log.publish(event);
        watch(&envelope);
    };
    let mut finished =
        run_worker(prepared, &mut log, &mut publish, resume, sampler, control).await?;

    if record.worktree {
        let first_line: String = record
            .prompt
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(72)
            .collect();
        let message = format!("kugetsu {}: {first_line}", record.id);
        if let Err(e) = git::commit_all(&record.workdir, &message).await {
            warn(&format!(
                "cannot commit the shadow's work on its branch: {e}"
            ));
        }
    }
    finished.changed_files =
        git::changed_files(&record.workdir, record.base_commit.as_deref()).await;
    finished.branch.clone_from(&record.branch);
    finished.worktree = Some(record.workdir.display().to_string());
    publish(&mut log, Event::Finished(finished.clone()));
    Some(finished)
}

/// Ends a task that could not start (e.g. its worktree could not be created): publishes a
/// `failed` finished event and returns it.
pub async fn fail(
    prepared: &Prepared,
    error: String,
    watch: &mut (dyn FnMut(&EventEnvelope) + Send),
) -> Finished {
    let record = &prepared.record;
    let mut finished = Observed::default().finished(FinishStatus::Failed, error);
    finished.branch.clone_from(&record.branch);
    match EventLog::open(&prepared.task_dir.join("events.jsonl"), &record.id).await {
        Ok(mut log) => watch(&log.publish(Event::Finished(finished.clone()))),
        Err(e) => warn(&format!(
            "cannot record the failure of task {}: {e}",
            record.id
        )),
    }
    finished
}

/// How a single worker process ended.
enum Attempt {
    /// It reported `finished` (or the supervisor ended the task for it).
    Finished(Finished),
    /// It died or hung without `finished`; `reason` says how, `progressed` whether it had
    /// emitted any task event first.
    Crashed { reason: String, progressed: bool },
    /// The owner detached the task; the worker was told to stop.
    Detached,
}

/// What the supervisor tracks of a task across its workers.
#[derive(Debug)]
struct Tracking {
    /// Memory snapshots, to hold the shadow to its `mem_limit`.
    memory: watch::Receiver<Arc<Snapshot>>,
    /// Registers each worker's process tree for measuring.
    sampler: Sampler,
    observed: Observed,
    /// Steering messages sent but not yet confirmed by a `steered` event: re-sent to the
    /// next worker if this one dies, so a steer is never dropped.
    pending_steers: VecDeque<String>,
    /// A cancel was requested (kept across restarts).
    cancelled: bool,
    /// Calls announced with `tool_start` / closed with `tool_end`, so a resumed worker's
    /// re-announcements (see the worker's session) are published once and in pairs.
    calls_started: HashSet<String>,
    calls_ended: HashSet<String>,
}

impl Tracking {
    /// Records `event`; returns whether its `tool_start`/`tool_end` had not been seen yet.
    fn is_new(&mut self, event: &Event) -> bool {
        match event {
            Event::ToolStart { call_id, .. } => self.calls_started.insert(call_id.clone()),
            Event::ToolEnd { call_id, .. } => self.calls_ended.insert(call_id.clone()),
            _ => true,
        }
    }
}

/// Runs workers for the task until one reports `finished`, restarting crashed ones from
/// their journal with exponential backoff plus jitter.
async fn run_worker(
    prepared: &Prepared,
    log: &mut EventLog,
    publish: &mut (dyn FnMut(&mut EventLog, Event) + Send),
    mut resume: Resume,
    sampler: &Sampler,
    control: &mut mpsc::UnboundedReceiver<ShadowControl>,
) -> Option<Finished> {
    let mut tracking = Tracking {
        observed: Observed::default(),
        pending_steers: VecDeque::new(),
        cancelled: false,
        memory: sampler.subscribe(),
        sampler: sampler.clone(),
        calls_started: HashSet::new(),
        calls_ended: HashSet::new(),
    };
    if resume.from_journal {
        // What earlier runs of this task already published.
        for envelope in crate::events::read_all(&prepared.task_dir.join("events.jsonl"))
            .await
            .unwrap_or_default()
        {
            tracking.is_new(&envelope.event);
        }
    }
    let program = match find_worker() {
        Ok(program) => program,
        Err(e) => {
            return Some(
                tracking
                    .observed
                    .finished(FinishStatus::Failed, e.to_string()),
            );
        }
    };
    let mut restarts = RestartPolicy::new(prepared.config.max_restarts);
    let mut restarts_total = resume.earlier_restarts;
    if resume.from_journal {
        restarts_total += 1;
        publish(
            log,
            Event::Restarted {
                attempt: resume.attempt,
                reason: "resumed from its checkpoint".to_owned(),
            },
        );
    }
    loop {
        let outcome = run_attempt(
            prepared,
            &program,
            log,
            publish,
            &mut tracking,
            resume,
            control,
        )
        .await;
        let (reason, progressed) = match outcome {
            Attempt::Finished(mut finished) => {
                finished.restarts = restarts_total;
                return Some(finished);
            }
            Attempt::Detached => return None,
            Attempt::Crashed { reason, progressed } => (reason, progressed),
        };
        let end = |tracking: &Tracking, status, error| {
            let mut finished = tracking.observed.finished(status, error);
            finished.restarts = restarts_total;
            Some(finished)
        };
        if tracking.cancelled {
            return end(
                &tracking,
                FinishStatus::Cancelled,
                format!("cancelled; {reason}"),
            );
        }
        let Some(delay) = restarts.next_delay(progressed) else {
            return end(
                &tracking,
                FinishStatus::Failed,
                format!(
                    "the worker crashed more than {} times within {}s; last: {reason}",
                    prepared.config.max_restarts,
                    RESTART_WINDOW.as_secs()
                ),
            );
        };
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                message = control.recv() => match message {
                    // Between workers there is nobody to ask: a cancel ends the task here.
                    Some(ShadowControl::Cancel) => {
                        return end(&tracking, FinishStatus::Cancelled, "cancelled".to_owned());
                    }
                    Some(ShadowControl::Steer(text)) => tracking.pending_steers.push_back(text),
                    Some(ShadowControl::Detach) | None => return None,
                },
            }
        }
        restarts_total += 1;
        resume.attempt += 1;
        resume.from_journal = true;
        publish(
            log,
            Event::Restarted {
                attempt: resume.attempt,
                reason,
            },
        );
    }
}

/// Where a run starts: which attempt, and whether the worker resumes from its journal.
#[derive(Debug, Clone, Copy)]
pub struct Resume {
    pub attempt: u32,
    pub from_journal: bool,
    pub earlier_restarts: u32,
}

impl Resume {
    /// A task's first run.
    pub const FRESH: Resume = Resume {
        attempt: 1,
        from_journal: false,
        earlier_restarts: 0,
    };
}

/// Restarts allowed within this window before the task fails.
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// A worker silent for this long (no event, no heartbeat) is taken for hung and restarted.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// Exponential backoff with jitter, and the cap on restarts per window.
///
/// The backoff grows only over consecutive crashes that made no progress (a crash loop); a
/// worker that got as far as working on its task before dying restarts at the base delay, so
/// a single `kill -9` costs milliseconds. Every restart counts against the window's cap.
#[derive(Debug)]
struct RestartPolicy {
    max: u32,
    recent: std::collections::VecDeque<tokio::time::Instant>,
    /// Crashes in a row without progress.
    fruitless: u32,
}

impl RestartPolicy {
    fn new(max: u32) -> Self {
        RestartPolicy {
            max,
            recent: std::collections::VecDeque::new(),
            fruitless: 0,
        }
    }

    /// The delay before the next restart, or `None` when the budget is spent. `progressed`
    /// says whether the crashed worker had emitted any task event.
    fn next_delay(&mut self, progressed: bool) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max as usize {
            return None;
        }
        self.recent.push_back(now);
        self.fruitless = if progressed { 0 } else { self.fruitless + 1 };
        // 10 ms, 20 ms, 40 ms ... capped at 5 s.
        let exponent = self.fruitless.min(9);
        let base = Duration::from_millis(10 << exponent).min(Duration::from_secs(5));
        Some(base + jitter(base / 2))
    }
}

/// A random duration in `[0, max)`.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(nanos);
    Duration::from_nanos(hasher.finish() % nanos)
}

async fn run_attempt(
    prepared: &Prepared,
    program: &std::path::Path,
    log: &mut EventLog,
    publish: &mut (dyn FnMut(&mut EventLog, Event) + Send),
    tracking: &mut Tracking,
    resume: Resume,
    control: &mut mpsc::UnboundedReceiver<ShadowControl>,
) -> Attempt {
    let record = &prepared.record;
    let spec = TaskSpec {
        id: record.id.clone(),
        prompt: record.prompt.clone(),
        model: record.model.clone(),
        max_turns: record.max_turns,
        deadline_unix_ms: record.deadline_unix_ms,
        task_dir: prepared.task_dir.display().to_string(),
        context_window: prepared.config.context_window,
        compaction_model: prepared.config.compaction_model.clone(),
        mem_limit_bytes: Some(record.mem_limit),
    };
    let worker_log = prepared.task_dir.join("worker.log");
    if resume.from_journal {
        crate::shadow::kill_task_leftovers(&record.id);
    }
    let spawned = Shadow::spawn(
        program,
        &record.workdir,
        &worker_log,
        spec,
        resume.from_journal,
    )
    .await;
    let (mut shadow, mut from_worker) = match spawned {
        Ok(pair) => pair,
        Err(e) => {
            return Attempt::Crashed {
                reason: kugetsu_protocol::error_chain(&e),
                progressed: false,
            };
        }
    };
    publish(
        log,
        Event::Started {
            attempt: resume.attempt,
            pid: shadow.pid,
            worktree: Some(record.workdir.display().to_string()),
            branch: record.branch.clone(),
            model: record.model.clone(),
        },
    );
    for text in &tracking.pending_steers {
        shadow.steer(text.clone());
    }
    let _measured = tracking.sampler.watch(shadow.pid);
    let mut cancel_by: Option<tokio::time::Instant> = None;
    if tracking.cancelled {
        cancel(&mut shadow, &mut cancel_by);
    }
    let backstop = record
        .deadline_unix_ms
        .map(|ms| instant_at(ms) + DEADLINE_GRACE);
    let mut silent_since = tokio::time::Instant::now();
    let mut progressed = false;
    // Set when the supervisor killed the worker for its memory; becomes the restart reason.
    let mut memory_kill: Option<String> = None;
    let mut tools_over = 0u32;
    tracking.memory.mark_unchanged();
    let outcome = loop {
        tokio::select! {
            Ok(()) = tracking.memory.changed() => {
                let snapshot = tracking.memory.borrow_and_update().clone();
                let Some(mem) = snapshot.shadow(shadow.pid) else { continue };
                let limit = record.mem_limit;
                if mem.worker_rss > limit && memory_kill.is_none() {
                    publish(log, Event::MemoryLimit {
                        rss_bytes: mem.total(),
                        limit_bytes: limit,
                        killed: true,
                    });
                    memory_kill = Some(format!(
                        "worker killed for using {} MiB, over its {} MiB memory limit",
                        mem.worker_rss >> 20,
                        limit >> 20
                    ));
                    shadow.kill();
                } else if mem.total() > limit {
                    // The worker kills a runaway tool itself within ~100 ms and tells the
                    // model; this is the backstop if it did not.
                    tools_over += 1;
                    if tools_over >= 2 {
                        tools_over = 0;
                        publish(log, Event::MemoryLimit {
                            rss_bytes: mem.total(),
                            limit_bytes: limit,
                            killed: true,
                        });
                        kugetsu_os::process::kill_descendants(shadow.pid, &[]);
                    }
                } else {
                    tools_over = 0;
                }
            }
            item = from_worker.recv() => {
                silent_since = tokio::time::Instant::now();
                match item {
                    Some(FromWorker::Message(WorkerMessage::Event(Event::Finished(finished)))) => {
                        break Attempt::Finished(finished);
                    }
                    Some(FromWorker::Message(WorkerMessage::Replay(event))) => {
                        // Published only if no earlier worker got it out.
                        if tracking.is_new(&event) {
                            tracking.observed.note(&event);
                            publish(log, event);
                        }
                    }
                    Some(FromWorker::Message(WorkerMessage::Event(event))) => {
                        progressed = true;
                        tracking.is_new(&event);
                        if let Event::Steered { text } = &event
                            && let Some(i) = tracking.pending_steers.iter().position(|t| t == text)
                        {
                            tracking.pending_steers.remove(i);
                        }
                        tracking.observed.note(&event);
                        publish(log, event);
                    }
                    Some(FromWorker::Message(_)) => {}
                    Some(FromWorker::BadLine(reason)) => {
                        warn(&format!("worker sent a bad line: {reason}"));
                    }
                    None => {
                        let status = shadow.finish(Duration::from_secs(2)).await;
                        let how = status.map_or_else(|| "unknown status".to_owned(), describe_exit);
                        break Attempt::Crashed {
                            reason: memory_kill
                                .take()
                                .unwrap_or_else(|| format!("worker {how} without finishing")),
                            progressed,
                        };
                    }
                }
            }
            message = control.recv() => match message {
                Some(ShadowControl::Cancel) => {
                    tracking.cancelled = true;
                    cancel(&mut shadow, &mut cancel_by);
                }
                Some(ShadowControl::Steer(text)) => {
                    shadow.steer(text.clone());
                    tracking.pending_steers.push_back(text);
                }
                Some(ShadowControl::Detach) | None => {
                    shadow.shutdown();
                    shadow.finish(DETACH_GRACE).await;
                    break Attempt::Detached;
                }
            },
            () = sleep_until(cancel_by) => {
                shadow.kill();
                break Attempt::Finished(tracking.observed.finished(
                    FinishStatus::Cancelled,
                    "cancelled; the worker did not stop in time and was killed".to_owned(),
                ));
            }
            () = sleep_until(backstop) => {
                shadow.kill();
                break Attempt::Finished(tracking.observed.finished(
                    FinishStatus::TimedOut,
                    "timed out; the worker did not stop at its deadline and was killed".to_owned(),
                ));
            }
            () = tokio::time::sleep_until(silent_since + SILENCE_LIMIT) => {
                shadow.kill();
                break Attempt::Crashed {
                    reason: format!(
                        "worker silent for {}s (no heartbeat); killed",
                        SILENCE_LIMIT.as_secs()
                    ),
                    progressed,
                };
            }
        }
    };
    shadow.finish(Duration::from_secs(5)).await;
    // Tool processes a dead worker left behind were reparented to us: they go with it.
    shadow.kill_leftovers();
    outcome
}

fn cancel(shadow: &mut Shadow, cancel_by: &mut Option<tokio::time::Instant>) {
    if cancel_by.is_some() {
        // A second signal: the user wants out now.
        shadow.kill();
        *cancel_by = Some(tokio::time::Instant::now());
    } else {
        shadow.cancel();
        *cancel_by = Some(tokio::time::Instant::now() + CANCEL_GRACE);
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn instant_at(unix_ms_at: u64) -> tokio::time::Instant {
    let now = unix_ms(SystemTime::now());
    tokio::time::Instant::now() + Duration::from_millis(unix_ms_at.saturating_sub(now))
}

fn warn(message: &str) {
    eprintln!("kugetsu: warning: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_over_fruitless_crashes_and_resets_on_progress() {
        let mut policy = RestartPolicy::new(6);
        let d1 = policy.next_delay(false).unwrap();
        let d2 = policy.next_delay(false).unwrap();
        let d3 = policy.next_delay(false).unwrap();
        assert!(d1 < Duration::from_millis(40), "{d1:?}");
        assert!(
            d2 >= Duration::from_millis(20) && d3 >= Duration::from_millis(40),
            "{d2:?} {d3:?}"
        );
        let reset = policy.next_delay(true).unwrap();
        assert!(reset < Duration::from_millis(15), "{reset:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn more_than_max_restarts_in_the_window_is_refused_until_it_slides() {
        let mut policy = RestartPolicy::new(2);
        assert!(policy.next_delay(true).is_some());
        assert!(policy.next_delay(true).is_some());
        assert!(policy.next_delay(true).is_none());
        tokio::time::advance(RESTART_WINDOW + Duration::from_secs(1)).await;
        assert!(policy.next_delay(true).is_some());
    }
}

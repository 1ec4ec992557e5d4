//! One worker's life, from spawn to exit, as a state machine.
//!
//! [`run`] is the only async part: it spawns the worker, turns what happens (a worker message,
//! a memory snapshot, an owner's control message, a timer) into a call on [`Attempt`], and
//! carries out the [`Effect`]s that call returns. Every decision (when to kill, what to publish,
//! when the attempt is over and how) is a plain method of [`Attempt`], tested without processes.
//!
//! Events the worker sends in a burst are drained together and committed to the event log as
//! one batch (see [`crate::task::events`] for what that promises).

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::time::Duration;

use kugetsu_protocol::{
    Event, EventEnvelope, FinishStatus, Finished, SandboxMode, TaskSpec, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::govern::{Answer, Poll};
use crate::task::Fleet;
use crate::task::control::{Resume, ShadowControl};
use crate::task::events::{Progress, Publisher};
use crate::task::memory::ShadowMem;
use crate::task::prepare::{Prepared, instant_at};
use crate::task::sandbox::{ShadowSandbox, provider_secrets};
use crate::task::shadow::{FromWorker, Shadow, describe_exit};

/// How long a cancelled worker gets to report `finished` before it is killed.
pub const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// How long past its deadline a worker may run before the supervisor kills it.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(15);
/// A worker silent for this long (no event, no heartbeat) is taken for hung and restarted.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// How long a worker gets to exit once its attempt is over, before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Snapshots in a row with the tools over the limit before the supervisor kills them (the
/// worker kills a runaway tool itself within ~100 ms; this is the backstop).
const TOOLS_OVER_SNAPSHOTS: u32 = 2;

/// What the supervisor tracks of a task across its workers.
#[derive(Debug, Default)]
pub struct Tracking {
    /// The fold of everything published so far.
    pub progress: Progress,
    /// Steering messages sent but not yet confirmed by a `steered` event: re-sent to the
    /// next worker if this one dies, so a steer is never dropped.
    pub pending_steers: VecDeque<String>,
    /// A cancel was requested (kept across restarts).
    pub cancelled: bool,
    /// Calls announced with `tool_start` / closed with `tool_end`, so a resumed worker's
    /// re-announcements (see the worker's session) are published once and in pairs.
    calls_started: HashSet<String>,
    calls_ended: HashSet<String>,
}

impl Tracking {
    /// Takes note of what earlier runs of the task already published.
    pub fn seen(&mut self, events: &[EventEnvelope]) {
        for envelope in events {
            self.is_new(&envelope.event);
        }
    }

    /// Records `event`; returns whether its `tool_start`/`tool_end` had not been seen yet.
    fn is_new(&mut self, event: &Event) -> bool {
        match event {
            Event::ToolStart { call_id, .. } => self.calls_started.insert(call_id.clone()),
            Event::ToolEnd { call_id, .. } => self.calls_ended.insert(call_id.clone()),
            _ => true,
        }
    }
}

/// How one worker process ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It reported `finished` (or the supervisor ended the task for it).
    Finished(Finished),
    /// It died or hung without `finished`; `reason` says how, `progressed` whether it had
    /// emitted any task event first.
    Crashed { reason: String, progressed: bool },
    /// The owner detached the task; the worker was told to stop.
    Detached,
}

/// Something [`run`] must do because of a decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish an event (effects of one step are committed as one batch, before the rest).
    Publish(Event),
    /// SIGKILL the worker's process group.
    KillWorker,
    /// SIGKILL every process below the worker, not the worker.
    KillTools,
    /// Ask the worker to cancel its task.
    CancelWorker,
    /// Hand a steering message to the worker.
    Steer(String),
    /// Let the worker's tool call with this id run (`proceed`).
    Proceed(String),
    /// Ask the worker to exit, leaving the task resumable.
    Shutdown,
    /// Tell the operator something odd (on stderr).
    Warn(String),
}

/// The result of one decision: keep going with these effects, or stop with an outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Continue(Vec<Effect>),
    End(Vec<Effect>, Outcome),
}

/// Which timer fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// A cancelled worker did not stop within its grace.
    Cancel,
    /// The task's deadline plus grace passed.
    Deadline,
    /// The worker was silent for [`SILENCE_LIMIT`].
    Silence,
}

/// The decisions of one attempt.
#[derive(Debug)]
pub struct Attempt {
    /// The shadow's `mem_limit`, in bytes.
    limit: u64,
    /// Whether the worker emitted any task event (a crash after progress restarts fast).
    progressed: bool,
    /// Set when the supervisor killed the worker for its memory; becomes the restart reason.
    memory_kill: Option<String>,
    /// Snapshots in a row with the tools over the limit.
    tools_over: u32,
    /// When a cancelled worker is killed if it has not finished.
    cancel_by: Option<Instant>,
    /// The last time the worker said anything.
    heard_at: Instant,
    /// When the worker is killed for overrunning the task's deadline.
    backstop: Option<Instant>,
}

impl Attempt {
    /// A new attempt for a shadow limited to `limit` bytes, killed at `backstop` if still
    /// running then.
    pub fn new(limit: u64, backstop: Option<Instant>, now: Instant) -> Attempt {
        Attempt {
            limit,
            progressed: false,
            memory_kill: None,
            tools_over: 0,
            cancel_by: None,
            heard_at: now,
            backstop,
        }
    }

    /// What a freshly started worker is told: steers not yet confirmed, and a cancel that
    /// arrived while no worker ran.
    pub fn begin(&mut self, tracking: &Tracking, now: Instant) -> Vec<Effect> {
        let mut effects: Vec<Effect> = tracking
            .pending_steers
            .iter()
            .cloned()
            .map(Effect::Steer)
            .collect();
        if tracking.cancelled {
            effects.extend(self.cancel(now));
        }
        effects
    }

    /// A memory snapshot of the shadow. The one place that decides on (and publishes)
    /// `memory_limit`.
    pub fn on_memory(&mut self, mem: ShadowMem) -> Vec<Effect> {
        if self.memory_kill.is_some() {
            // The worker is already being killed; nothing more to decide.
            return Vec::new();
        }
        let event = Event::MemoryLimit {
            rss_bytes: mem.total(),
            limit_bytes: self.limit,
            killed: true,
        };
        if mem.worker_rss > self.limit {
            self.memory_kill = Some(format!(
                "worker killed for using {} MiB, over its {} MiB memory limit",
                mem.worker_rss >> 20,
                self.limit >> 20
            ));
            return vec![Effect::Publish(event), Effect::KillWorker];
        }
        if mem.total() <= self.limit {
            self.tools_over = 0;
            return Vec::new();
        }
        self.tools_over += 1;
        if self.tools_over < TOOLS_OVER_SNAPSHOTS {
            return Vec::new();
        }
        self.tools_over = 0;
        vec![Effect::Publish(event), Effect::KillTools]
    }

    /// A message (or an undecodable line) from the worker.
    pub fn on_worker(&mut self, tracking: &mut Tracking, item: FromWorker, now: Instant) -> Step {
        self.heard_at = now;
        let message = match item {
            FromWorker::Message(message) => message,
            FromWorker::BadLine(reason) => {
                return Step::Continue(vec![Effect::Warn(format!(
                    "worker sent a bad line: {reason}"
                ))]);
            }
        };
        match message {
            WorkerMessage::Event(Event::Finished(finished)) => {
                Step::End(Vec::new(), Outcome::Finished(finished))
            }
            WorkerMessage::Replay(event) => {
                // Published only if no earlier worker got it out.
                if tracking.is_new(&event) {
                    tracking.progress.note(&event);
                    Step::Continue(vec![Effect::Publish(event)])
                } else {
                    Step::Continue(Vec::new())
                }
            }
            WorkerMessage::Event(event) => {
                self.progressed = true;
                tracking.is_new(&event);
                if let Event::Steered { text } = &event
                    && let Some(i) = tracking.pending_steers.iter().position(|t| t == text)
                {
                    tracking.pending_steers.remove(i);
                }
                tracking.progress.note(&event);
                Step::Continue(vec![Effect::Publish(event)])
            }
            _ => Step::Continue(Vec::new()),
        }
    }

    /// A control message from the task's owner (`None`: the owner is gone).
    pub fn on_control(
        &mut self,
        tracking: &mut Tracking,
        control: Option<ShadowControl>,
        now: Instant,
    ) -> Step {
        match control {
            Some(ShadowControl::Cancel) => {
                tracking.cancelled = true;
                Step::Continue(self.cancel(now))
            }
            Some(ShadowControl::Steer(text)) => {
                tracking.pending_steers.push_back(text.clone());
                Step::Continue(vec![Effect::Steer(text)])
            }
            Some(ShadowControl::Publish(event)) => Step::Continue(vec![Effect::Publish(event)]),
            Some(ShadowControl::Proceed(call_id)) => Step::Continue(vec![Effect::Proceed(call_id)]),
            Some(ShadowControl::Detach) | None => {
                Step::End(vec![Effect::Shutdown], Outcome::Detached)
            }
        }
    }

    /// The worker's channel closed; `how` describes its exit.
    pub fn on_exit(&mut self, how: &str) -> Outcome {
        Outcome::Crashed {
            reason: self
                .memory_kill
                .take()
                .unwrap_or_else(|| format!("worker {how} without finishing")),
            progressed: self.progressed,
        }
    }

    /// The next timer to wait for.
    pub fn next_timer(&self) -> (Instant, Timer) {
        let mut next = (self.heard_at + SILENCE_LIMIT, Timer::Silence);
        for (at, timer) in [
            (self.cancel_by, Timer::Cancel),
            (self.backstop, Timer::Deadline),
        ] {
            if let Some(at) = at
                && at < next.0
            {
                next = (at, timer);
            }
        }
        next
    }

    /// A timer fired: each one ends the attempt, killing the worker.
    pub fn on_timer(&mut self, timer: Timer, tracking: &Tracking) -> Step {
        let outcome = match timer {
            Timer::Cancel => Outcome::Finished(tracking.progress.finished(
                FinishStatus::Cancelled,
                "cancelled; the worker did not stop in time and was killed".to_owned(),
            )),
            Timer::Deadline => Outcome::Finished(tracking.progress.finished(
                FinishStatus::TimedOut,
                "timed out; the worker did not stop at its deadline and was killed".to_owned(),
            )),
            Timer::Silence => Outcome::Crashed {
                reason: format!(
                    "worker silent for {}s (no heartbeat); killed",
                    SILENCE_LIMIT.as_secs()
                ),
                progressed: self.progressed,
            },
        };
        Step::End(vec![Effect::KillWorker], outcome)
    }

    fn cancel(&mut self, now: Instant) -> Vec<Effect> {
        if self.cancel_by.is_some() {
            // A second cancel: the owner wants out now.
            self.cancel_by = Some(now);
            vec![Effect::KillWorker]
        } else {
            self.cancel_by = Some(now + CANCEL_GRACE);
            vec![Effect::CancelWorker]
        }
    }
}

/// Hands the governor what a worker says about permits: a request becomes a ticket (granted
/// at once, refused, or waited for in `permits`, with a `rate_limited` event in `effects` when
/// the provider's limit is the wait); a response head and an end are reported.
fn govern(
    item: &FromWorker,
    fleet: &Fleet,
    task: &str,
    deadline: Option<Instant>,
    shadow: &Shadow,
    permits: &mut tokio::task::JoinSet<(u64, Answer)>,
    effects: &mut Vec<Effect>,
) {
    let FromWorker::Message(message) = item else {
        return;
    };
    match message {
        WorkerMessage::Permit(request) => {
            let mut ticket = fleet.governor.ticket(task, request.clone(), deadline);
            match ticket.poll() {
                Poll::Ready(answer) => shadow.answer_permit(ticket.id(), answer),
                Poll::Wait {
                    until,
                    rate_limited,
                    ..
                } => {
                    if rate_limited {
                        let wait = until.saturating_duration_since(Instant::now());
                        effects.push(Effect::Publish(Event::RateLimited {
                            provider: ticket.provider().to_owned(),
                            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        }));
                    }
                    permits.spawn(ticket.wait());
                }
            }
        }
        WorkerMessage::PermitHead {
            id,
            status,
            headers,
        } => fleet.governor.head(task, *id, *status, headers),
        WorkerMessage::PermitEnd { id, usage } => fleet.governor.end(task, *id, *usage),
        _ => {}
    }
}

/// Runs one worker of `prepared` until its attempt is over, publishing through `out`.
pub async fn run(
    prepared: &Prepared,
    program: &Path,
    out: &mut Publisher<'_>,
    tracking: &mut Tracking,
    resume: Resume,
    fleet: &Fleet,
    control: &mut mpsc::UnboundedReceiver<ShadowControl>,
) -> Outcome {
    let record = &prepared.record;
    let env = |key: &str| std::env::var(key).ok();
    // Kept to the end of the attempt: dropping it removes the shadow's cgroup.
    let sandbox = ShadowSandbox::prepare(prepared, &env).await;
    if record.sandbox == SandboxMode::Off {
        tracing::warn!(
            task = %record.id,
            "the task runs with --sandbox off: its tools can read and write everything this \
             user can, including secrets and other tasks"
        );
    }
    let spec = TaskSpec {
        id: record.id.clone(),
        prompt: record.prompt.clone(),
        model: record.model.clone(),
        max_turns: record.max_turns,
        deadline_unix_ms: record.deadline_unix_ms,
        task_dir: prepared.dir.path().display().to_string(),
        context_window: prepared.config.context_window,
        compaction_model: prepared.config.compaction_model.clone(),
        // At most a day (the config refuses more): always fits.
        stream_timeout_ms: Some(
            u32::try_from(prepared.config.stream_timeout.as_millis()).unwrap_or(u32::MAX),
        ),
        mem_limit_bytes: Some(record.mem_limit),
        sandbox: Some(Box::new(sandbox.policy.clone())),
        secrets: provider_secrets(std::env::vars()),
        governed: fleet.governor.governs(),
        budget_tokens: record.budget_tokens,
        budget_usd: record.budget_usd,
        prices: std::iter::once(record.model.as_str())
            .chain(prepared.config.compaction_model.as_deref())
            .filter_map(|m| Some((m.to_owned(), prepared.config.governance.price(m)?)))
            .collect(),
        mcp: record
            .mcp
            .iter()
            .filter_map(|name| {
                let server = prepared.config.mcp.get(name).cloned();
                if server.is_none() {
                    tracing::warn!(
                        task = %record.id,
                        "MCP server `{name}` is no longer configured: the shadow runs without it"
                    );
                }
                server
            })
            .collect(),
        // A cluster node sends `proceed` for a call once its intent is in the database, so a
        // node that takes the task over never runs a call that may have run already.
        tool_gate: crate::cluster::active().is_some(),
    };
    if resume.from_journal {
        crate::task::shadow::kill_task_leftovers(&record.id);
    }
    let spawned = Shadow::spawn(
        program,
        &record.workdir,
        &prepared.dir.worker_log(),
        spec,
        resume.from_journal,
        sandbox.cgroup.as_ref().map(|c| c.procs_file()).as_deref(),
    )
    .await;
    let (mut shadow, mut from_worker) = match spawned {
        Ok(pair) => pair,
        Err(e) => {
            return Outcome::Crashed {
                reason: kugetsu_protocol::error_chain(&e),
                progressed: false,
            };
        }
    };
    let commit = |out: &mut Publisher<'_>, tracking: &mut Tracking, events: Vec<Event>| {
        for envelope in out.commit(events) {
            tracking.progress.note_envelope(&envelope);
        }
    };
    commit(
        out,
        tracking,
        vec![Event::Started {
            attempt: resume.attempt,
            pid: shadow.pid,
            worktree: Some(record.workdir.display().to_string()),
            branch: record.branch.clone(),
            model: record.model.clone(),
            sandbox: Some(sandbox.report.clone()),
            node: crate::cluster::active().map(|c| c.node_id.clone()),
        }],
    );
    let mut measured = fleet.sampler.watch(shadow.pid);
    // Permits the worker waits for; dropped (and their reservations given back) with the attempt.
    let mut permits: tokio::task::JoinSet<(u64, Answer)> = tokio::task::JoinSet::new();
    let deadline = record.deadline_unix_ms.map(instant_at);
    let now = Instant::now();
    let backstop = record
        .deadline_unix_ms
        .map(|ms| instant_at(ms) + DEADLINE_GRACE);
    let mut attempt = Attempt::new(record.mem_limit, backstop, now);
    let begin = attempt.begin(tracking, now);
    let mut step = Step::Continue(begin);
    let outcome = loop {
        let (effects, end) = match step {
            Step::Continue(effects) => (effects, None),
            Step::End(effects, outcome) => (effects, Some(outcome)),
        };
        let (events, actions): (Vec<Effect>, Vec<Effect>) = effects
            .into_iter()
            .partition(|e| matches!(e, Effect::Publish(_)));
        let events: Vec<Event> = events
            .into_iter()
            .filter_map(|e| match e {
                Effect::Publish(event) => Some(event),
                _ => None,
            })
            .collect();
        if !events.is_empty() {
            commit(out, tracking, events);
            measured.set_busy(tracking.progress.tool.is_some());
        }
        for action in actions {
            match action {
                Effect::KillWorker => shadow.kill(),
                Effect::KillTools => {
                    kugetsu_os::process::kill_descendants(shadow.pid, &[]);
                }
                Effect::CancelWorker => shadow.cancel(),
                Effect::Steer(text) => shadow.steer(text),
                Effect::Proceed(call_id) => shadow.proceed(call_id),
                Effect::Shutdown => shadow.shutdown(),
                Effect::Warn(text) => tracing::warn!(task = %record.id, "{text}"),
                Effect::Publish(_) => {}
            }
        }
        if let Some(outcome) = end {
            break outcome;
        }
        let (at, timer) = attempt.next_timer();
        step = tokio::select! {
            Ok(()) = measured.memory.changed() => {
                let figures = *measured.memory.borrow_and_update();
                match figures {
                    Some(mem) => Step::Continue(attempt.on_memory(mem)),
                    None => Step::Continue(Vec::new()),
                }
            }
            Some(Ok((id, answer))) = permits.join_next(), if !permits.is_empty() => {
                shadow.answer_permit(id, answer);
                Step::Continue(Vec::new())
            }
            item = from_worker.recv() => match item {
                Some(item) => {
                    measured.touch();
                    let now = Instant::now();
                    let mut governed = Vec::new();
                    govern(&item, fleet, &record.id, deadline, &shadow, &mut permits, &mut governed);
                    let mut step = attempt.on_worker(tracking, item, now);
                    // Drain the burst so it is committed as one batch.
                    while let Step::Continue(effects) = &mut step
                        && let Ok(more) = from_worker.try_recv()
                    {
                        govern(&more, fleet, &record.id, deadline, &shadow, &mut permits, effects);
                        match attempt.on_worker(tracking, more, now) {
                            Step::Continue(more) => effects.extend(more),
                            Step::End(more, outcome) => {
                                let mut all = std::mem::take(effects);
                                all.extend(more);
                                step = Step::End(all, outcome);
                            }
                        }
                    }
                    let (Step::Continue(effects) | Step::End(effects, _)) = &mut step;
                    effects.splice(0..0, governed);
                    step
                }
                None => {
                    let status = shadow.finish(Duration::from_secs(2)).await;
                    let how = status.map_or_else(|| "unknown status".to_owned(), describe_exit);
                    Step::End(Vec::new(), attempt.on_exit(&how))
                }
            },
            message = control.recv() => attempt.on_control(tracking, message, Instant::now()),
            () = tokio::time::sleep_until(at) => attempt.on_timer(timer, tracking),
        };
    };
    drop(permits);
    fleet.governor.forget(&record.id);
    shadow.finish(EXIT_GRACE).await;
    // Tool processes a dead worker left behind were reparented to us: they go with it.
    shadow.kill_leftovers();
    // And whatever is still in the shadow's cgroup (nothing in it can leave it).
    if let Some(cgroup) = &sandbox.cgroup {
        let killed = cgroup.kill_all();
        kugetsu_os::process::reap(&killed, Duration::from_millis(500));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use kugetsu_protocol::Usage;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn mem(worker: u64, tools: u64) -> ShadowMem {
        ShadowMem {
            worker_rss: worker * MIB,
            tools_rss: tools * MIB,
        }
    }

    fn event(event: Event) -> FromWorker {
        FromWorker::Message(WorkerMessage::Event(event))
    }

    fn finished(status: FinishStatus) -> Finished {
        Finished {
            status,
            result: None,
            error: None,
            turns: 1,
            usage: Usage::default(),
            restarts: 0,
            branch: None,
            worktree: None,
            changed_files: Vec::new(),
        }
    }

    #[test]
    fn a_worker_over_its_limit_is_killed_once_and_that_is_the_restart_reason() {
        let now = Instant::now();
        let mut attempt = Attempt::new(100 * MIB, None, now);
        assert_eq!(attempt.on_memory(mem(50, 10)), []);
        let effects = attempt.on_memory(mem(150, 0));
        assert!(matches!(
            effects.as_slice(),
            [
                Effect::Publish(Event::MemoryLimit { killed: true, .. }),
                Effect::KillWorker
            ]
        ));
        // Later snapshots of the dying worker publish nothing more.
        assert_eq!(attempt.on_memory(mem(150, 50)), []);
        match attempt.on_exit("killed by SIGKILL") {
            Outcome::Crashed { reason, .. } => assert!(reason.contains("memory limit"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tools_over_the_limit_are_killed_after_two_snapshots_in_a_row() {
        let mut attempt = Attempt::new(100 * MIB, None, Instant::now());
        assert_eq!(attempt.on_memory(mem(10, 95)), []);
        assert_eq!(
            attempt.on_memory(mem(10, 5)),
            [],
            "back under: the count restarts"
        );
        assert_eq!(attempt.on_memory(mem(10, 95)), []);
        let effects = attempt.on_memory(mem(10, 95));
        assert!(matches!(
            effects.as_slice(),
            [
                Effect::Publish(Event::MemoryLimit { .. }),
                Effect::KillTools
            ]
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_asks_first_and_kills_on_the_second_or_after_the_grace() {
        let mut tracking = Tracking::default();
        let now = Instant::now();
        let mut attempt = Attempt::new(MIB, None, now);
        assert_eq!(
            attempt.on_control(&mut tracking, Some(ShadowControl::Cancel), now),
            Step::Continue(vec![Effect::CancelWorker])
        );
        assert!(tracking.cancelled);
        assert_eq!(attempt.next_timer(), (now + CANCEL_GRACE, Timer::Cancel));
        assert_eq!(
            attempt.on_control(&mut tracking, Some(ShadowControl::Cancel), now),
            Step::Continue(vec![Effect::KillWorker])
        );
        match attempt.on_timer(Timer::Cancel, &tracking) {
            Step::End(effects, Outcome::Finished(f)) => {
                assert_eq!(effects, [Effect::KillWorker]);
                assert_eq!(f.status, FinishStatus::Cancelled);
            }
            other => panic!("{other:?}"),
        }
        // A later worker of a cancelled task is cancelled as soon as it starts.
        let mut next = Attempt::new(MIB, None, now);
        assert_eq!(next.begin(&tracking, now), [Effect::CancelWorker]);
    }

    #[tokio::test(start_paused = true)]
    async fn steers_are_kept_until_confirmed_and_resent_to_the_next_worker() {
        let mut tracking = Tracking::default();
        let now = Instant::now();
        let mut attempt = Attempt::new(MIB, None, now);
        let steer = Some(ShadowControl::Steer("also docs".to_owned()));
        assert_eq!(
            attempt.on_control(&mut tracking, steer, now),
            Step::Continue(vec![Effect::Steer("also docs".to_owned())])
        );
        // The worker died before confirming: the next one gets it again.
        let mut next = Attempt::new(MIB, None, now);
        assert_eq!(
            next.begin(&tracking, now),
            [Effect::Steer("also docs".to_owned())]
        );
        let steered = event(Event::Steered {
            text: "also docs".to_owned(),
        });
        assert!(matches!(
            next.on_worker(&mut tracking, steered, now),
            Step::Continue(effects) if matches!(effects.as_slice(), [Effect::Publish(Event::Steered { .. })])
        ));
        assert!(tracking.pending_steers.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_proceed_goes_to_the_worker_and_is_not_kept() {
        let mut tracking = Tracking::default();
        let now = Instant::now();
        let mut attempt = Attempt::new(MIB, None, now);
        let proceed = Some(ShadowControl::Proceed("call_1".to_owned()));
        assert_eq!(
            attempt.on_control(&mut tracking, proceed, now),
            Step::Continue(vec![Effect::Proceed("call_1".to_owned())])
        );
        // Unlike a steer, it is for this worker's waiting call only: the next worker replays
        // that call and never runs it.
        let mut next = Attempt::new(MIB, None, now);
        assert_eq!(next.begin(&tracking, now), []);
    }

    #[tokio::test(start_paused = true)]
    async fn replays_are_published_once_and_finished_ends_the_attempt() {
        let mut tracking = Tracking::default();
        let now = Instant::now();
        let mut attempt = Attempt::new(MIB, None, now);
        let start = Event::ToolStart {
            call_id: "c1".to_owned(),
            tool: "bash".to_owned(),
            args: serde_json::json!({}),
        };
        assert!(matches!(
            attempt.on_worker(&mut tracking, event(start.clone()), now),
            Step::Continue(e) if e.len() == 1
        ));
        assert_eq!(tracking.progress.tool.as_deref(), Some("bash"));
        let replay = FromWorker::Message(WorkerMessage::Replay(start));
        assert_eq!(
            attempt.on_worker(&mut tracking, replay, now),
            Step::Continue(Vec::new())
        );
        let done = event(Event::Finished(finished(FinishStatus::Completed)));
        assert!(matches!(
            attempt.on_worker(&mut tracking, done, now),
            Step::End(_, Outcome::Finished(f)) if f.status == FinishStatus::Completed
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_and_the_deadline_end_the_attempt_whichever_comes_first() {
        let tracking = Tracking::default();
        let now = Instant::now();
        let mut attempt = Attempt::new(MIB, Some(now + Duration::from_secs(5)), now);
        assert_eq!(
            attempt.next_timer(),
            (now + Duration::from_secs(5), Timer::Deadline)
        );
        assert!(matches!(
            attempt.on_timer(Timer::Deadline, &tracking),
            Step::End(_, Outcome::Finished(f)) if f.status == FinishStatus::TimedOut
        ));
        let mut quiet = Attempt::new(MIB, None, now);
        assert_eq!(quiet.next_timer(), (now + SILENCE_LIMIT, Timer::Silence));
        // Any message, a heartbeat included, resets the silence clock.
        let later = now + Duration::from_secs(30);
        let heartbeat = FromWorker::Message(WorkerMessage::Heartbeat {
            phase: kugetsu_protocol::Phase::WaitingModel,
        });
        let mut t = Tracking::default();
        quiet.on_worker(&mut t, heartbeat, later);
        assert_eq!(quiet.next_timer(), (later + SILENCE_LIMIT, Timer::Silence));
        assert!(matches!(
            quiet.on_timer(Timer::Silence, &tracking),
            Step::End(
                _,
                Outcome::Crashed {
                    progressed: false,
                    ..
                }
            )
        ));
        assert!(matches!(
            quiet.on_control(&mut t, None, later),
            Step::End(effects, Outcome::Detached) if effects == [Effect::Shutdown]
        ));
    }
}

//! Driving a prepared task to `finished`: worker after worker, restarting a crashed one from
//! its journal with backoff, then committing the shadow's work and completing the `finished`
//! event with what only the supervisor knows (restarts, branch, worktree, changed files).
//!
//! The owner of the task (`kugetsu run` maps signals, the daemon maps RPCs) steers it through
//! [`ShadowControl`] messages; each worker's life is [`crate::task::attempt`].

use std::collections::VecDeque;
use std::time::Duration;

use kugetsu_protocol::{Event, EventEnvelope, FinishStatus, Finished};
use tokio::sync::mpsc;

use crate::task::Fleet;
use crate::task::attempt::{self, Outcome, Tracking};
use crate::task::control::{Resume, ShadowControl};
use crate::task::events::{self, EventLog, Progress, Publisher};
use crate::task::git;
use crate::task::prepare::Prepared;
use crate::task::shadow::find_worker;

/// Runs a prepared task to its end, publishing every event to the log and to `watch`.
///
/// Returns `None` when the task was detached ([`ShadowControl::Detach`]): it has no
/// `finished` event and resumes from its journal later.
pub async fn drive(
    prepared: &Prepared,
    resume: Resume,
    fleet: &Fleet,
    control: &mut mpsc::UnboundedReceiver<ShadowControl>,
    watch: &mut (dyn FnMut(&EventEnvelope) + Send),
) -> Option<Finished> {
    let record = &prepared.record;
    let mut log = match EventLog::open(&prepared.dir.events_file(), &record.id) {
        Ok(log) => log,
        Err(e) => {
            return Some(Progress::default().finished(
                FinishStatus::Failed,
                format!(
                    "cannot open the event log: {}",
                    crate::exit::describe_io(&e)
                ),
            ));
        }
    };
    let mut finished = run_workers(prepared, &mut log, watch, resume, fleet, control).await?;

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
        let branch = record
            .branch
            .clone()
            .unwrap_or_else(|| format!("kugetsu/{}", record.id));
        match git::Worktree::open(&record.repo, &record.workdir).await {
            Ok(worktree) => {
                // What the tools committed went to the task's private refs directory.
                if let Err(e) = worktree
                    .adopt_private_ref(&branch, &prepared.dir.private_refs())
                    .await
                {
                    warn(&format!("task {}: {e}", record.id));
                }
                if let Err(e) = worktree
                    .commit_all(&branch, &prepared.dir.scratch_index(), &message)
                    .await
                {
                    warn(&format!(
                        "cannot commit the shadow's work on its branch: {e}"
                    ));
                }
                if let Some(base) = record.base_commit.as_deref() {
                    finished.changed_files = worktree.changed_files(base, &branch).await;
                }
            }
            Err(e) => warn(&format!(
                "cannot commit the shadow's work on its branch: {e}"
            )),
        }
    } else {
        finished.changed_files =
            git::changed_files(&record.workdir, record.base_commit.as_deref()).await;
    }
    // The shadow's private temp dir and cgroup go with the task (nothing in them is the work).
    let _ = std::fs::remove_dir_all(prepared.dir.tmp());
    crate::task::sandbox::remove_cgroup(&record.id).await;
    finished.branch.clone_from(&record.branch);
    finished.worktree = Some(record.workdir.display().to_string());
    watch(&log.publish(Event::Finished(finished.clone())));
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
    let mut finished = Progress::default().finished(FinishStatus::Failed, error);
    finished.branch.clone_from(&record.branch);
    match EventLog::open(&prepared.dir.events_file(), &record.id) {
        Ok(mut log) => watch(&log.publish(Event::Finished(finished.clone()))),
        Err(e) => warn(&format!(
            "cannot record the failure of task {}: {e}",
            record.id
        )),
    }
    finished
}

/// Runs workers for the task until one reports `finished`, restarting crashed ones from
/// their journal with exponential backoff plus jitter.
async fn run_workers(
    prepared: &Prepared,
    log: &mut EventLog,
    watch: &mut (dyn FnMut(&EventEnvelope) + Send),
    mut resume: Resume,
    fleet: &Fleet,
    control: &mut mpsc::UnboundedReceiver<ShadowControl>,
) -> Option<Finished> {
    let mut tracking = Tracking::default();
    if resume.from_journal {
        // What earlier runs of this task already published.
        let earlier = events::read_all(&prepared.dir.events_file())
            .await
            .unwrap_or_default();
        tracking.seen(&earlier);
        tracking.progress = Progress::of(&earlier);
    }
    let program = match find_worker() {
        Ok(program) => program,
        Err(e) => {
            return Some(
                tracking
                    .progress
                    .finished(FinishStatus::Failed, e.to_string()),
            );
        }
    };
    let mut restarts = RestartPolicy::new(prepared.config.max_restarts);
    let mut restarts_total = resume.earlier_restarts;
    let mut out = Publisher { log, watch };
    if resume.from_journal {
        restarts_total += 1;
        out.publish(Event::Restarted {
            attempt: resume.attempt,
            reason: "resumed from its checkpoint".to_owned(),
        });
    }
    loop {
        let outcome = attempt::run(
            prepared,
            &program,
            &mut out,
            &mut tracking,
            resume,
            fleet,
            control,
        )
        .await;
        let (reason, progressed) = match outcome {
            Outcome::Finished(mut finished) => {
                finished.restarts = restarts_total;
                return Some(finished);
            }
            Outcome::Detached => return None,
            Outcome::Crashed { reason, progressed } => (reason, progressed),
        };
        let end = |tracking: &Tracking, status, error| {
            let mut finished = tracking.progress.finished(status, error);
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
                    Some(ShadowControl::Publish(event)) => {
                        out.publish(event);
                    }
                    // The call belonged to the worker that died: the next one replays it and
                    // never runs it, so there is nothing to let through.
                    Some(ShadowControl::Proceed(_)) => {}
                    Some(ShadowControl::Detach) | None => return None,
                },
            }
        }
        restarts_total += 1;
        resume.attempt += 1;
        resume.from_journal = true;
        out.publish(Event::Restarted {
            attempt: resume.attempt,
            reason,
        });
    }
}

/// Restarts allowed within this window before the task fails.
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// Exponential backoff with jitter, and the cap on restarts per window.
///
/// The backoff grows only over consecutive crashes that made no progress (a crash loop); a
/// worker that got as far as working on its task before dying restarts at the base delay, so
/// a single `kill -9` costs milliseconds. Every restart counts against the window's cap.
#[derive(Debug)]
struct RestartPolicy {
    max: u32,
    recent: VecDeque<tokio::time::Instant>,
    /// Crashes in a row without progress.
    fruitless: u32,
}

impl RestartPolicy {
    fn new(max: u32) -> Self {
        RestartPolicy {
            max,
            recent: VecDeque::new(),
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

fn warn(message: &str) {
    tracing::warn!("{message}");
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

//! The daemon's table of tasks: the live ones (queued or running) in memory, finished ones on
//! disk, read on demand.
//!
//! A finished task leaves the table: what the daemon keeps of its history is a bounded list of
//! the most recent summaries ([`RECENT`]), so memory and start-up time do not grow with the
//! number of tasks ever run. Anything older is read from its task directory when asked for.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use kugetsu_protocol::{Event, FinishStatus, Finished};
use tokio::sync::mpsc;

use crate::govern::Governor;
use crate::rpc::{MergedMarker, TaskStatus, TaskSummary};
use crate::task::control::{Resume, ShadowControl};
use crate::task::events::Progress;
use crate::task::memory::Snapshot;
use crate::task::prepare::Prepared;
use crate::task::record::{Origin, StateDir, TaskDir, TaskRecord};

/// How many finished tasks' summaries the daemon keeps in memory.
pub const RECENT: usize = 200;

/// One live task.
#[derive(Debug)]
pub struct Entry {
    pub prepared: Prepared,
    /// `Queued` or `Running`.
    pub status: TaskStatus,
    /// How the next start of this task begins (fresh, or resuming its journal).
    pub resume: Resume,
    /// The fold of its events so far.
    pub progress: Progress,
    /// The running shadow's control channel. Held here so cancel and steer reach it.
    pub control: Option<mpsc::UnboundedSender<ShadowControl>>,
    /// Steers that arrived while the task was queued.
    pub pending_steers: Vec<String>,
    /// Why the scheduler holds this queued task aside for good (it can never be admitted
    /// here, e.g. its `mem_limit` exceeds the host's memory); shown as `waiting`.
    pub held: Option<String>,
}

impl Entry {
    /// A task that has not run yet, or resumes after `progress`.
    pub fn new(prepared: Prepared, progress: Progress) -> Entry {
        Entry {
            prepared,
            status: TaskStatus::Queued,
            resume: Resume::after(&progress),
            progress,
            control: None,
            pending_steers: Vec::new(),
            held: None,
        }
    }

    /// What `list` and `get` say about it; `snapshot` gives its memory while running, the
    /// governor whether it waits for a permit.
    pub fn summary(&self, snapshot: &Snapshot, governor: &Governor) -> TaskSummary {
        let rss_bytes = self
            .progress
            .pid
            .filter(|_| self.status == TaskStatus::Running)
            .and_then(|pid| snapshot.shadow(pid))
            .map(|m| m.total());
        let mut summary = summarize(&self.prepared.record, &self.progress, self.status);
        summary.rss_bytes = rss_bytes;
        summary.attempt = self.resume.attempt.max(self.progress.attempt);
        match self.status {
            TaskStatus::Running => {
                if let Some(reason) = governor.waiting(&self.prepared.record.id) {
                    summary.status = TaskStatus::Waiting;
                    summary.waiting = Some(reason);
                }
            }
            TaskStatus::Queued => {
                summary.waiting = self.held.clone().or_else(|| governor.daily_spent());
            }
            _ => {}
        }
        summary
    }
}

/// The summary of a task from its record and the fold of its events.
pub fn summarize(record: &TaskRecord, progress: &Progress, status: TaskStatus) -> TaskSummary {
    let created = std::time::UNIX_EPOCH + Duration::from_millis(record.created_unix_ms);
    let finished = progress.finished.as_ref();
    TaskSummary {
        id: record.id.clone(),
        status,
        priority: record.priority,
        model: record.model.clone(),
        prompt: record.prompt.clone(),
        repo: record.repo.clone(),
        branch: record.branch.clone(),
        worktree: Some(record.workdir.display().to_string()),
        created: humantime::format_rfc3339_seconds(created).to_string(),
        pid: progress.pid.filter(|_| status == TaskStatus::Running),
        attempt: progress.attempt,
        turns: finished.map_or(progress.turns, |f| f.turns.max(progress.turns)),
        usage: finished.map_or(progress.usage, |f| f.usage),
        restarts: finished.map_or(progress.restarts, |f| f.restarts),
        rss_bytes: None,
        mem_limit: record.mem_limit,
        tool: progress
            .tool
            .clone()
            .filter(|_| status == TaskStatus::Running),
        result: finished.and_then(|f| f.result.clone()),
        error: finished.and_then(|f| f.error.clone()),
        waiting: None,
        budget_tokens: record.budget_tokens,
        budget_usd: record.budget_usd,
        conflicts: progress.conflicts.clone(),
        merged: None,
        node: None,
    }
}

/// The status a finished task shows.
pub fn status_of(status: FinishStatus) -> TaskStatus {
    match status {
        FinishStatus::Completed => TaskStatus::Completed,
        FinishStatus::Failed => TaskStatus::Failed,
        FinishStatus::Cancelled => TaskStatus::Cancelled,
        FinishStatus::TimedOut => TaskStatus::TimedOut,
        FinishStatus::Paused => TaskStatus::Paused,
    }
}

/// Live tasks by id (ids sort by creation time), and the recent finished ones.
#[derive(Debug, Default)]
pub struct Table {
    pub live: BTreeMap<String, Entry>,
    /// Newest last; at most [`RECENT`].
    recent: VecDeque<TaskSummary>,
    /// Whether `recent` was filled from disk since the daemon started.
    recent_loaded: bool,
}

impl Table {
    /// Moves a task that finished out of the live table.
    pub fn finish(&mut self, id: &str, finished: Finished) -> Option<TaskSummary> {
        let mut entry = self.live.remove(id)?;
        let status = status_of(finished.status);
        entry.progress.finished = Some(finished);
        let summary = summarize(&entry.prepared.record, &entry.progress, status);
        self.remember(summary.clone());
        Some(summary)
    }

    fn remember(&mut self, summary: TaskSummary) {
        self.recent.retain(|s| s.id != summary.id);
        self.recent.push_back(summary);
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// Remembers a task whose record is damaged, as finished (see [`damaged_summary`]).
    pub fn remember_damaged(&mut self, summary: TaskSummary) {
        self.remember(summary);
    }

    /// The recent finished tasks, oldest first, read from disk the first time.
    pub fn recent(&mut self, state: &StateDir) -> Vec<TaskSummary> {
        if !self.recent_loaded {
            self.recent_loaded = true;
            let live = &self.live;
            let mut found: Vec<TaskSummary> = state
                .all_ids()
                .into_iter()
                .rev()
                .filter(|id| !live.contains_key(id))
                .filter_map(|id| load_finished(&state.task(&id)))
                .take(RECENT)
                .collect();
            found.reverse();
            for summary in found {
                if !self.recent.iter().any(|s| s.id == summary.id) {
                    self.recent.push_front(summary);
                }
            }
            self.recent
                .make_contiguous()
                .sort_by(|a, b| a.id.cmp(&b.id));
            while self.recent.len() > RECENT {
                self.recent.pop_front();
            }
        }
        self.recent.iter().cloned().collect()
    }

    /// Drops what is remembered of tasks whose records were removed.
    pub fn forget(&mut self, ids: &[String]) {
        self.recent.retain(|s| !ids.contains(&s.id));
    }

    /// Notes that these finished tasks landed (`kugetsu merge`).
    pub fn mark_merged(&mut self, landed: &[(String, MergedMarker)]) {
        for summary in &mut self.recent {
            if let Some((_, marker)) = landed.iter().find(|(id, _)| *id == summary.id) {
                summary.merged = Some(marker.clone());
            }
        }
    }

    /// A finished task's summary: from memory if recent, else from disk.
    pub fn finished(&self, state: &StateDir, id: &str) -> Option<TaskSummary> {
        self.recent
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .or_else(|| load_finished(&state.task(id)))
    }
}

/// A finished daemon task's summary, read from its directory (`None` for tasks that are not
/// the daemon's, not finished, or unreadable).
pub fn load_finished(dir: &TaskDir) -> Option<TaskSummary> {
    let record = match dir.load() {
        Ok(record) => record,
        // A damaged record still shows, if its events say how it ended (the daemon writes a
        // `failed` when it finds the damage on a live task).
        Err(_) => {
            let last = crate::task::events::read_last(&dir.events_file())?;
            let Event::Finished(finished) = &last.event else {
                return None;
            };
            return Some(damaged_summary(dir.id(), finished));
        }
    };
    if record.origin != Origin::Daemon {
        return None;
    }
    let last = crate::task::events::read_last(&dir.events_file())?;
    let Event::Finished(finished) = &last.event else {
        return None;
    };
    let progress = Progress {
        finished: Some(finished.clone()),
        last_seq: last.seq,
        ..Progress::default()
    };
    let mut summary = summarize(&record, &progress, status_of(finished.status));
    summary.merged = crate::land::task::read_marker(dir);
    Some(summary)
}

/// The summary of a finished task whose `task.json` is damaged or missing: what its id and
/// its `finished` event tell, the rest left empty (`model` is `?`).
pub fn damaged_summary(id: &str, finished: &Finished) -> TaskSummary {
    let created = crate::task::record::id_created_unix_ms(id)
        .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms))
        .unwrap_or(std::time::UNIX_EPOCH);
    TaskSummary {
        id: id.to_owned(),
        status: status_of(finished.status),
        priority: kugetsu_protocol::Priority::Normal,
        model: "?".to_owned(),
        prompt: String::new(),
        repo: std::path::PathBuf::new(),
        branch: None,
        worktree: None,
        created: humantime::format_rfc3339_seconds(created).to_string(),
        pid: None,
        attempt: 0,
        turns: finished.turns,
        usage: finished.usage,
        restarts: finished.restarts,
        rss_bytes: None,
        mem_limit: 0,
        tool: None,
        result: finished.result.clone(),
        error: finished.error.clone(),
        waiting: None,
        budget_tokens: None,
        budget_usd: None,
        conflicts: Default::default(),
        merged: None,
        node: None,
    }
}

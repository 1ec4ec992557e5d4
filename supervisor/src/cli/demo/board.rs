//! What the demo knows of its shadows: the fold of their events (from the daemon's
//! subscription) and of the daemon's `list` answers (memory, whether a shadow waits for a
//! permit). Plain data and methods, no I/O: the view and the closing table read it.

use std::collections::HashMap;

use kugetsu_protocol::demo::DemoJob;
use kugetsu_protocol::{Event, EventEnvelope, FinishStatus, Finished};

use crate::cli::render::{clip, summarize_args};
use crate::rpc::{TaskStatus, TaskSummary};

/// One shadow of the demo.
#[derive(Debug)]
pub struct Shadow {
    pub id: String,
    pub job: &'static DemoJob,
    pub status: TaskStatus,
    /// The turn it is in (0 before the first).
    pub turn: u32,
    /// The tool it runs now, else the last thing it did.
    pub doing: String,
    /// Its memory (worker and tools) in the daemon's latest `list`, while it runs.
    pub rss: Option<u64>,
    /// The most `list` reported for it.
    pub peak_rss: Option<u64>,
    pub finished: Option<Finished>,
    /// The last `seq` taken, so events seen twice (after a resubscription) count once.
    last_seq: u64,
}

/// Something worth a line in the live view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The shadow's index on the board.
    pub shadow: usize,
    pub tone: Tone,
    pub text: String,
}

/// How a note is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Tool,
    Ok,
    Bad,
}

/// What [`Board::apply`] did with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Not one of ours, or already taken.
    Skipped,
    /// Taken; with a note when it is worth a line.
    Taken(Option<Note>),
}

/// Every shadow of the demo, in the order they were submitted.
#[derive(Debug, Default)]
pub struct Board {
    pub shadows: Vec<Shadow>,
    by_id: HashMap<String, usize>,
    /// Shadows started and not finished, by their events.
    running: usize,
    /// The most shadows running at once, by their events.
    pub most_running: usize,
    /// The most shadows the daemon listed as running (or waiting for a permit) at once.
    pub most_listed_running: usize,
    /// How many had started when the first one finished.
    pub started_before_first_finish: Option<usize>,
    started: usize,
    /// The most memory all shadows used together, in one `list` answer.
    pub peak_together: u64,
}

impl Board {
    /// Adds a submitted shadow.
    pub fn add(&mut self, id: String, job: &'static DemoJob) {
        self.by_id.insert(id.clone(), self.shadows.len());
        self.shadows.push(Shadow {
            id,
            job,
            status: TaskStatus::Queued,
            turn: 0,
            doing: "submitted".to_owned(),
            rss: None,
            peak_rss: None,
            finished: None,
            last_seq: 0,
        });
    }

    /// The shadow with task id `id`.
    pub fn get(&self, id: &str) -> Option<&Shadow> {
        self.by_id.get(id).map(|&i| &self.shadows[i])
    }

    /// The last `seq` taken of task `id` (0: none yet).
    pub fn last_seq(&self, id: &str) -> u64 {
        self.get(id).map_or(0, |s| s.last_seq)
    }

    /// Whether every shadow has finished.
    pub fn all_finished(&self) -> bool {
        self.shadows.iter().all(|s| s.finished.is_some())
    }

    /// The ids of the shadows that have not finished.
    pub fn unfinished(&self) -> Vec<String> {
        self.shadows
            .iter()
            .filter(|s| s.finished.is_none())
            .map(|s| s.id.clone())
            .collect()
    }

    /// How many are queued, running and finished.
    pub fn counts(&self) -> (usize, usize, usize) {
        let finished = self.shadows.iter().filter(|s| s.finished.is_some()).count();
        let queued = self
            .shadows
            .iter()
            .filter(|s| s.status == TaskStatus::Queued)
            .count();
        (queued, self.shadows.len() - finished - queued, finished)
    }

    /// How many completed.
    pub fn completed(&self) -> usize {
        self.shadows
            .iter()
            .filter(|s| {
                s.finished
                    .as_ref()
                    .is_some_and(|f| f.status == FinishStatus::Completed)
            })
            .count()
    }

    /// The memory of the running shadows now, by the latest `list`.
    pub fn rss_now(&self) -> u64 {
        self.shadows.iter().filter_map(|s| s.rss).sum()
    }

    /// The sum of each shadow's peak.
    pub fn sum_of_peaks(&self) -> u64 {
        self.shadows.iter().filter_map(|s| s.peak_rss).sum()
    }

    /// Folds one event in.
    pub fn apply(&mut self, envelope: &EventEnvelope) -> Applied {
        let Some(&index) = self.by_id.get(&envelope.task) else {
            return Applied::Skipped;
        };
        let shadow = &mut self.shadows[index];
        if envelope.seq <= shadow.last_seq {
            return Applied::Skipped;
        }
        shadow.last_seq = envelope.seq;
        let note = |tone: Tone, text: String| {
            Some(Note {
                shadow: index,
                tone,
                text,
            })
        };
        let note = match &envelope.event {
            Event::Queued { .. } => {
                shadow.doing = "queued".to_owned();
                note(Tone::Plain, format!("queued: {}", shadow.job.prompt))
            }
            Event::Started { pid, branch, .. } => {
                if shadow.status == TaskStatus::Queued {
                    self.running += 1;
                    self.started += 1;
                    self.most_running = self.most_running.max(self.running);
                }
                shadow.status = TaskStatus::Running;
                shadow.doing = format!("started, worker pid {pid}");
                let branch = branch.as_deref().unwrap_or("-");
                note(
                    Tone::Plain,
                    format!("started: worker pid {pid}, branch {branch}"),
                )
            }
            Event::TurnStart { turn } => {
                shadow.turn = *turn;
                shadow.doing = "thinking".to_owned();
                None
            }
            Event::TextDelta { .. } => {
                shadow.doing = "writing".to_owned();
                None
            }
            Event::AssistantMessage { text } => {
                let first = text.lines().next().unwrap_or("").trim();
                shadow.doing = format!("said: {}", clip(first, 60));
                (!first.is_empty()).then(|| Note {
                    shadow: index,
                    tone: Tone::Plain,
                    text: format!("says: {}", clip(first, 100)),
                })
            }
            Event::ToolStart { tool, args, .. } => {
                shadow.doing = format!("▸ {tool} {}", summarize_args(tool, args));
                note(Tone::Tool, shadow.doing.clone())
            }
            Event::ToolEnd {
                tool,
                ok,
                output,
                duration_ms,
                ..
            } => {
                let first = tool_summary(tool, *ok, output);
                let mark = if *ok { "✓" } else { "✗" };
                shadow.doing = format!("{mark} {tool} {first}");
                note(
                    if *ok { Tone::Ok } else { Tone::Bad },
                    format!("{mark} {tool} ({duration_ms} ms) {first}"),
                )
            }
            Event::TurnEnd { .. } => None,
            Event::Retry { reason, .. } => {
                note(Tone::Bad, format!("↻ retrying: {}", clip(reason, 100)))
            }
            Event::Compaction {
                tokens_before,
                tokens_after,
                ok,
            } => note(
                if *ok { Tone::Plain } else { Tone::Bad },
                format!("⟲ compaction {tokens_before} → {tokens_after} tokens"),
            ),
            Event::Steered { text } => note(Tone::Plain, format!("↪ steered: {}", clip(text, 80))),
            Event::Restarted { attempt, reason } => note(
                Tone::Bad,
                format!("↻ restarted (attempt {attempt}): {}", clip(reason, 80)),
            ),
            Event::MemoryLimit {
                rss_bytes,
                limit_bytes,
                killed,
            } => note(
                Tone::Bad,
                format!(
                    "! memory {} over the {} limit{}",
                    mib(*rss_bytes),
                    mib(*limit_bytes),
                    if *killed { ", killed" } else { "" }
                ),
            ),
            Event::RateLimited { provider, wait_ms } => {
                shadow.doing = format!("waiting for {provider}'s rate limit");
                note(
                    Tone::Plain,
                    format!("… waiting {wait_ms} ms for {provider}'s rate limit"),
                )
            }
            Event::Conflict { with, files } => note(
                Tone::Bad,
                format!(
                    "⚠ overlaps {} in {}",
                    with.join(", "),
                    clip(&files.join(", "), 80)
                ),
            ),
            Event::Finished(finished) => {
                if matches!(shadow.status, TaskStatus::Running | TaskStatus::Waiting) {
                    self.running = self.running.saturating_sub(1);
                }
                if self.started_before_first_finish.is_none() {
                    self.started_before_first_finish = Some(self.started);
                }
                shadow.status = crate::daemon::table::status_of(finished.status);
                shadow.rss = None;
                shadow.doing = outcome(finished);
                shadow.finished = Some(finished.clone());
                let files = match finished.changed_files.len() {
                    0 => "no files changed".to_owned(),
                    n => format!("{n} file{} changed", if n == 1 { "" } else { "s" }),
                };
                note(
                    if finished.status == FinishStatus::Completed {
                        Tone::Ok
                    } else {
                        Tone::Bad
                    },
                    format!(
                        "{} after {} turn{}, {files}",
                        finished.status.as_str(),
                        finished.turns,
                        if finished.turns == 1 { "" } else { "s" }
                    ),
                )
            }
        };
        Applied::Taken(note)
    }

    /// Folds in one `list` answer: memory and permit waits of the running shadows.
    pub fn sample(&mut self, tasks: &[TaskSummary]) {
        let mut together = 0;
        let mut running = 0;
        for task in tasks {
            let Some(&index) = self.by_id.get(&task.id) else {
                continue;
            };
            let shadow = &mut self.shadows[index];
            if shadow.finished.is_some() {
                continue;
            }
            if matches!(task.status, TaskStatus::Running | TaskStatus::Waiting) {
                running += 1;
                if shadow.status != TaskStatus::Queued {
                    shadow.status = task.status;
                }
            }
            shadow.rss = task.rss_bytes;
            if let Some(rss) = task.rss_bytes {
                together += rss;
                shadow.peak_rss = Some(shadow.peak_rss.map_or(rss, |p| p.max(rss)));
            }
        }
        self.peak_together = self.peak_together.max(together);
        self.most_listed_running = self.most_listed_running.max(running);
    }
}

/// A tool's output in a few words: what `read` and `ls` saw, else the first line.
fn tool_summary(tool: &str, ok: bool, output: &str) -> String {
    let text = match tool {
        "read" if ok => {
            let lines = output.lines().count();
            format!("{lines} line{}", if lines == 1 { "" } else { "s" })
        }
        "ls" if ok => output.lines().collect::<Vec<_>>().join(" "),
        _ => output.lines().next().unwrap_or("").trim().to_owned(),
    };
    clip(&text, 80)
}

/// A finished shadow's outcome in one line: its result, or what went wrong.
pub fn outcome(finished: &Finished) -> String {
    let detail = match finished.status {
        FinishStatus::Completed => finished.result.as_deref(),
        _ => finished.error.as_deref().or(finished.result.as_deref()),
    };
    let first = detail.and_then(|d| d.lines().next()).unwrap_or("").trim();
    if first.is_empty() || first == finished.status.as_str() {
        finished.status.as_str().to_owned()
    } else {
        format!("{}: {first}", finished.status.as_str())
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use kugetsu_protocol::demo::job_for;
    use kugetsu_protocol::{Priority, Usage};

    use super::*;

    fn envelope(task: &str, seq: u64, event: Event) -> EventEnvelope {
        EventEnvelope {
            v: 1,
            task: task.to_owned(),
            seq,
            ts: "2026-12-01T00:00:00Z".to_owned(),
            event,
        }
    }

    fn started(task: &str, seq: u64) -> EventEnvelope {
        envelope(
            task,
            seq,
            Event::Started {
                attempt: 1,
                pid: 7,
                worktree: None,
                branch: Some(format!("kugetsu/{task}")),
                model: "scripted/demo/verbose".to_owned(),
                sandbox: None,
                node: None,
            },
        )
    }

    fn finished(task: &str, seq: u64, status: FinishStatus) -> EventEnvelope {
        envelope(
            task,
            seq,
            Event::Finished(Finished {
                status,
                result: Some("Done. It works.\nMore.".to_owned()),
                error: None,
                turns: 4,
                usage: Usage::default(),
                restarts: 0,
                branch: Some(format!("kugetsu/{task}")),
                worktree: None,
                changed_files: vec!["greet.sh".to_owned()],
            }),
        )
    }

    fn summary(id: &str, status: TaskStatus, rss: Option<u64>) -> TaskSummary {
        TaskSummary {
            id: id.to_owned(),
            status,
            priority: Priority::Normal,
            model: String::new(),
            prompt: String::new(),
            repo: "/r".into(),
            branch: None,
            worktree: None,
            created: String::new(),
            pid: None,
            attempt: 1,
            turns: 0,
            usage: Usage::default(),
            restarts: 0,
            rss_bytes: rss,
            mem_limit: 1,
            tool: None,
            result: None,
            error: None,
            waiting: None,
            budget_tokens: None,
            budget_usd: None,
            conflicts: Default::default(),
            merged: None,
            node: None,
        }
    }

    fn board(n: usize) -> Board {
        let mut board = Board::default();
        for i in 0..n {
            board.add(format!("t{i}"), job_for(i));
        }
        board
    }

    #[test]
    fn counts_concurrency_from_events_and_skips_repeats_and_strangers() {
        let mut board = board(3);
        for i in 0..3 {
            let queued = envelope(
                &format!("t{i}"),
                1,
                Event::Queued {
                    priority: Priority::Normal,
                },
            );
            assert!(matches!(board.apply(&queued), Applied::Taken(Some(_))));
            assert_eq!(board.apply(&queued), Applied::Skipped);
        }
        assert_eq!(board.counts(), (3, 0, 0));
        board.apply(&started("t0", 2));
        board.apply(&started("t1", 2));
        assert_eq!(board.most_running, 2);
        board.apply(&finished("t0", 3, FinishStatus::Completed));
        board.apply(&started("t2", 2));
        board.apply(&finished("t1", 3, FinishStatus::Failed));
        board.apply(&finished("t2", 3, FinishStatus::Completed));
        assert_eq!(board.most_running, 2);
        assert_eq!(board.started_before_first_finish, Some(2));
        assert_eq!(board.counts(), (0, 0, 3));
        assert_eq!(board.completed(), 2);
        assert!(board.all_finished());
        assert_eq!(
            board.apply(&finished("nobody", 9, FinishStatus::Completed)),
            Applied::Skipped
        );
        assert_eq!(board.shadows[0].doing, "completed: Done. It works.");
        assert_eq!(board.last_seq("t2"), 3);
    }

    #[test]
    fn memory_peaks_per_shadow_and_together() {
        let mut board = board(2);
        board.apply(&started("t0", 2));
        board.apply(&started("t1", 2));
        board.sample(&[
            summary("t0", TaskStatus::Running, Some(3 << 20)),
            summary("t1", TaskStatus::Running, Some(5 << 20)),
            summary("other", TaskStatus::Running, Some(100 << 20)),
        ]);
        board.sample(&[
            summary("t0", TaskStatus::Running, Some(6 << 20)),
            summary("t1", TaskStatus::Waiting, Some(1 << 20)),
        ]);
        assert_eq!(board.shadows[0].peak_rss, Some(6 << 20));
        assert_eq!(board.shadows[1].peak_rss, Some(5 << 20));
        assert_eq!(board.shadows[1].status, TaskStatus::Waiting);
        assert_eq!(board.sum_of_peaks(), 11 << 20);
        assert_eq!(board.peak_together, 8 << 20);
        assert_eq!(board.rss_now(), 7 << 20);
        assert_eq!(board.most_listed_running, 2);
        assert_eq!(mib(3 << 19), "1.5 MiB");
        assert_eq!(tool_summary("read", true, "1\ta\n2\tb\n"), "2 lines");
        assert_eq!(tool_summary("ls", true, ".git\nlib/\n"), ".git lib/");
        assert_eq!(tool_summary("bash", true, "ok\nmore\n"), "ok");
    }
}

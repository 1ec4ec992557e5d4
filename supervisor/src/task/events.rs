//! Event envelopes, the per-task event log (`events.jsonl`), and the one fold of a task's
//! events into what the supervisor reports about it ([`Progress`]).
//!
//! The log is the single source of a task's sequence numbers: every published event passes
//! through [`EventLog::commit`], which stamps a batch, appends it with one write, and returns the
//! envelopes for whoever watches.
//!
//! # Durability (group commit)
//!
//! A watcher (a `--json` stdout, a subscriber, a client) is handed an event only after its
//! batch was written to `events.jsonl`: it is in the kernel's page cache and survives a crash
//! of the supervisor. A batch that holds a checkpoint event ([`is_checkpoint`]: `queued`,
//! `started`, `restarted`, `turn_end`, `tool_end`, `memory_limit`, `finished`) is
//! also on stable storage (one `fdatasync` for the whole batch) before anyone is told. The other
//! events (streamed text, `tool_start`, ...) reach stable storage with the next checkpoint batch
//! or the kernel's writeback; a power loss may drop them, and a resumed worker re-emits what
//! matters from its own journal.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use kugetsu_protocol::event::EVENT_FORMAT_VERSION;
use kugetsu_protocol::{Event, EventEnvelope, FinishStatus, Finished, LineReader, Usage};

/// The event log of one task.
#[derive(Debug)]
pub struct EventLog {
    task: String,
    next_seq: u64,
    file: std::fs::File,
    /// Whether a write failure was already reported (once per log, not per event).
    warned: bool,
}

/// Whether `event` must be on stable storage before anyone hears of it.
pub fn is_checkpoint(event: &Event) -> bool {
    matches!(
        event,
        Event::Queued { .. }
            | Event::Started { .. }
            | Event::Restarted { .. }
            | Event::TurnEnd { .. }
            | Event::ToolEnd { .. }
            | Event::MemoryLimit { .. }
            | Event::Finished(_)
    )
}

impl EventLog {
    /// Opens (or creates) the log, continuing its sequence after the last event in it. Reads
    /// only the log's tail: a torn last line (a crash mid-append) is cut first.
    pub fn open(path: &Path, task: &str) -> std::io::Result<EventLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        drop_torn_tail(&file)?;
        let last = match read_last(path) {
            Some(envelope) => envelope.seq,
            // A damaged last line: find the highest seq the slow way, so none is reused.
            None if file.metadata()?.len() > 0 => max_seq(path),
            None => 0,
        };
        Ok(EventLog {
            task: task.to_owned(),
            next_seq: last + 1,
            file,
            warned: false,
        })
    }

    /// Stamps one event, commits it, and returns its envelope.
    pub fn publish(&mut self, event: Event) -> EventEnvelope {
        let mut batch = self.commit(vec![event]);
        batch.remove(0)
    }

    /// Stamps `events` with consecutive sequence numbers, appends them with one write (and
    /// one `fdatasync` when any is a checkpoint), and returns their envelopes in order.
    ///
    /// A failing disk does not stop the task: the envelopes are still returned for live
    /// watchers, and the error is reported once on stderr.
    pub fn commit(&mut self, events: Vec<Event>) -> Vec<EventEnvelope> {
        let ts = now_rfc3339();
        let mut durable = false;
        let mut bytes = Vec::new();
        let envelopes: Vec<EventEnvelope> = events
            .into_iter()
            .map(|event| {
                durable |= is_checkpoint(&event);
                let envelope = EventEnvelope {
                    v: EVENT_FORMAT_VERSION,
                    task: self.task.clone(),
                    seq: self.next_seq,
                    ts: ts.clone(),
                    event,
                };
                self.next_seq += 1;
                bytes.extend_from_slice(&kugetsu_protocol::encode(&envelope));
                envelope
            })
            .collect();
        let written = self.file.write_all(&bytes).and_then(|()| {
            kugetsu_os::crash::point("events.written");
            if durable {
                self.file.sync_data()?;
                kugetsu_os::crash::point("events.synced");
            }
            Ok(())
        });
        if let Err(e) = written
            && !self.warned
        {
            self.warned = true;
            tracing::error!(task = %self.task, "cannot append to the task's event log: {e}");
        }
        envelopes
    }
}

/// An event log and whoever watches it: what is committed is handed to the watcher.
pub struct Publisher<'a> {
    pub log: &'a mut EventLog,
    pub watch: &'a mut (dyn FnMut(&EventEnvelope) + Send),
}

impl std::fmt::Debug for Publisher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("log", &self.log).finish()
    }
}

impl Publisher<'_> {
    /// Commits `events` as one batch and hands each envelope to the watcher; returns them.
    pub fn commit(&mut self, events: Vec<Event>) -> Vec<EventEnvelope> {
        let envelopes = self.log.commit(events);
        for envelope in &envelopes {
            (self.watch)(envelope);
        }
        envelopes
    }

    /// Commits one event.
    pub fn publish(&mut self, event: Event) {
        self.commit(vec![event]);
    }
}

/// Cuts a last line left without its newline by a crash, so the next event starts a line.
fn drop_torn_tail(file: &std::fs::File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut reader = file;
    let window = len.min(64 * 1024);
    reader.seek(SeekFrom::Start(len - window))?;
    let mut tail = vec![0u8; window as usize];
    reader.read_exact(&mut tail)?;
    if tail.last() == Some(&b'\n') {
        return Ok(());
    }
    let keep = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => len - window + i as u64 + 1,
        None if window == len => 0,
        // A torn line longer than the window: keep everything rather than guess.
        None => return Ok(()),
    };
    file.set_len(keep)
}

/// The highest `seq` of any whole event in the log.
fn max_seq(path: &Path) -> u64 {
    use std::io::BufRead;
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let Ok(file) = std::fs::File::open(path) else {
        return 0;
    };
    std::io::BufReader::new(file)
        .split(b'\n')
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_slice::<Seq>(&line).ok())
        .map(|s| s.seq)
        .max()
        .unwrap_or(0)
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Every event of a log file. A line that does not parse (e.g. one torn by a crash) is
/// skipped.
pub async fn read_all(path: &Path) -> std::io::Result<Vec<EventEnvelope>> {
    let file = tokio::fs::File::open(path).await?;
    let mut reader = LineReader::new(tokio::io::BufReader::new(file));
    let mut events = Vec::new();
    while let Some(item) = reader.next::<EventEnvelope>().await {
        if let Ok(envelope) = item {
            events.push(envelope);
        }
    }
    Ok(events)
}

/// The last whole event of a log, reading only its tail (`None` if the log is empty, missing,
/// or its last line is not an event).
pub fn read_last(path: &Path) -> Option<EventEnvelope> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut window: u64 = 16 * 1024;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start)).ok()?;
        let mut tail = Vec::new();
        Read::by_ref(&mut file)
            .take(window)
            .read_to_end(&mut tail)
            .ok()?;
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        match body.iter().rposition(|b| *b == b'\n') {
            Some(i) => return serde_json::from_slice(&body[i + 1..]).ok(),
            None if start == 0 => return serde_json::from_slice(body).ok(),
            // One event longer than the window (a long result): look further back.
            None if window < kugetsu_protocol::MAX_LINE_BYTES as u64 => window *= 4,
            None => return None,
        }
    }
}

/// Folds a task's events into what the supervisor reports about it. The one place where the
/// stream is read as turns, usage, attempts and restarts: the driver, the daemon's table and
/// resume all use it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// The highest turn started.
    pub turns: u32,
    /// Usage summed over `turn_end`s.
    pub usage: Usage,
    /// The last non-empty assistant message: the result if the worker cannot give one.
    pub last_text: Option<String>,
    /// How many workers were started (`started` events).
    pub starts: u32,
    /// How many `restarted` events.
    pub restarts: u32,
    /// The pid of the latest worker, from its `started` event.
    pub pid: Option<u32>,
    /// The latest `started` event's attempt number.
    pub attempt: u32,
    /// The name of the tool running now (a `tool_start` without its `tool_end`).
    pub tool: Option<String>,
    /// The `finished` event, once there is one.
    pub finished: Option<Finished>,
    /// The last `seq` seen.
    pub last_seq: u64,
    /// What the conflict radar reported: per other task (or `base`), the conflicting files
    /// it named last.
    pub conflicts: std::collections::BTreeMap<String, Vec<String>>,
}

impl Progress {
    /// The fold of a whole log.
    pub fn of(events: &[EventEnvelope]) -> Progress {
        let mut progress = Progress::default();
        for envelope in events {
            progress.note_envelope(envelope);
        }
        progress
    }

    /// Adds one envelope.
    pub fn note_envelope(&mut self, envelope: &EventEnvelope) {
        self.last_seq = self.last_seq.max(envelope.seq);
        self.note(&envelope.event);
    }

    /// Adds one event.
    pub fn note(&mut self, event: &Event) {
        match event {
            Event::Started { attempt, pid, .. } => {
                // A paused task that was resumed is not finished any more.
                self.finished = None;
                self.starts += 1;
                self.attempt = *attempt;
                self.pid = Some(*pid);
                self.tool = None;
            }
            Event::Restarted { .. } => self.restarts += 1,
            Event::TurnStart { turn } => self.turns = self.turns.max(*turn),
            Event::TurnEnd { usage, .. } => self.usage.add(*usage),
            Event::AssistantMessage { text } if !text.is_empty() => {
                self.last_text = Some(text.clone());
            }
            Event::ToolStart { tool, .. } => self.tool = Some(tool.clone()),
            Event::ToolEnd { .. } => self.tool = None,
            Event::Conflict { with, files } => {
                for other in with {
                    self.conflicts.insert(other.clone(), files.clone());
                }
            }
            Event::Finished(finished) => {
                self.finished = Some(finished.clone());
                self.pid = None;
                self.tool = None;
            }
            _ => {}
        }
    }

    /// A `finished` event for a task the supervisor ends itself, from what it saw.
    pub fn finished(&self, status: FinishStatus, error: String) -> Finished {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(seq: u64, event: Event) -> EventEnvelope {
        EventEnvelope {
            v: EVENT_FORMAT_VERSION,
            task: "t".to_owned(),
            seq,
            ts: now_rfc3339(),
            event,
        }
    }

    #[test]
    fn progress_folds_turns_usage_attempts_and_the_last_text() {
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 2,
            cost_usd: None,
        };
        let events = vec![
            envelope(
                1,
                Event::Started {
                    attempt: 1,
                    pid: 7,
                    worktree: None,
                    branch: None,
                    model: "m".to_owned(),
                    sandbox: None,
                    node: None,
                },
            ),
            envelope(2, Event::TurnStart { turn: 1 }),
            envelope(
                3,
                Event::AssistantMessage {
                    text: "hi".to_owned(),
                },
            ),
            envelope(4, Event::TurnEnd { turn: 1, usage }),
            envelope(
                5,
                Event::Restarted {
                    attempt: 2,
                    reason: "x".to_owned(),
                },
            ),
            envelope(6, Event::TurnStart { turn: 2 }),
            envelope(7, Event::TurnEnd { turn: 2, usage }),
        ];
        let progress = Progress::of(&events);
        assert_eq!(progress.turns, 2);
        assert_eq!(progress.usage.input_tokens, 20);
        assert_eq!(progress.starts, 1);
        assert_eq!(progress.restarts, 1);
        assert_eq!(progress.pid, Some(7));
        assert_eq!(progress.last_seq, 7);
        assert_eq!(progress.last_text.as_deref(), Some("hi"));
        assert!(progress.finished.is_none());
    }

    #[tokio::test]
    async fn a_batch_is_one_append_with_consecutive_seqs_and_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("kugetsu-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut log = EventLog::open(&path, "t").unwrap();
        let batch = log.commit(vec![
            Event::TextDelta {
                text: "a".to_owned(),
            },
            Event::TextDelta {
                text: "b".to_owned(),
            },
        ]);
        assert_eq!(batch.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        drop(log);
        // A torn tail is cut, and the sequence continues after the last whole line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"torn")
            .unwrap();
        let mut log = EventLog::open(&path, "t").unwrap();
        assert_eq!(log.publish(Event::TurnStart { turn: 1 }).seq, 3);
        let seqs: Vec<u64> = read_all(&path)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

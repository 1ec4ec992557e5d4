//! Event envelopes and the per-task event log (`<task_dir>/events.jsonl`).
//!
//! The log is the single source of a task's sequence numbers: every published event passes
//! through [`EventLog::publish`], which stamps it, appends it, and returns the envelope for
//! whoever watches.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use kugetsu_protocol::event::EVENT_FORMAT_VERSION;
use kugetsu_protocol::{Event, EventEnvelope, LineReader};

/// The event log of one task.
#[derive(Debug)]
pub struct EventLog {
    task: String,
    next_seq: u64,
    file: std::fs::File,
}

impl EventLog {
    /// Opens (or creates) the log, continuing its sequence after any events already in it.
    pub async fn open(path: &Path, task: &str) -> std::io::Result<EventLog> {
        let last = read_all(path)
            .await
            .unwrap_or_default()
            .last()
            .map_or(0, |e| e.seq);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        drop_torn_tail(&file)?;
        Ok(EventLog {
            task: task.to_owned(),
            next_seq: last + 1,
            file,
        })
    }

    /// Stamps `event`, appends it to the log and returns the envelope.
    ///
    /// A failing disk does not stop the task: the event is still returned for live watchers
    /// and the error is reported once on stderr.
    pub fn publish(&mut self, event: Event) -> EventEnvelope {
        let envelope = EventEnvelope {
            v: EVENT_FORMAT_VERSION,
            task: self.task.clone(),
            seq: self.next_seq,
            ts: now_rfc3339(),
            event,
        };
        self.next_seq += 1;
        let line = kugetsu_protocol::encode(&envelope);
        // `queued` acknowledges a submission and `finished` ends a task: both must survive a
        // crash. The others are rebuilt or repeated by a resumed worker.
        let durable = matches!(envelope.event, Event::Finished(_) | Event::Queued { .. });
        let written = self.file.write_all(&line).and_then(|()| {
            if durable {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            eprintln!(
                "kugetsu: cannot append to the event log of task {}: {e}",
                self.task
            );
        }
        envelope
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

/// RFC 3339 UTC timestamp with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Every event of a log file, skipping (and stopping at) nothing: a line that does not parse,
/// e.g. one torn by a crash, is skipped.
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

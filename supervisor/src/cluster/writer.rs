//! One running task's writer: its events and journal lines into the database, fenced.
//!
//! The actor hands every event the task commits locally to the writer, in order. The writer
//! batches what arrived, adds the journal lines the worker appended since the last batch, and
//! writes both (and the task's summary for `ps`) in one transaction that checks the task's
//! fence first. Then:
//!
//! - each `tool_start` in the batch gets its go-ahead (`proceed`): the worker ran no tool
//!   whose intent is not in the database, so a node taking over never runs it again;
//! - a `turn_end` pushes a checkpoint of the worktree (where `checkpoint_remote` is set);
//! - a `finished` ends the task in the same transaction, and the writer with it.
//!
//! A database that does not answer is retried with backoff, holding the batch (and so the
//! worker, at its next tool); a refused fence means the lease is lost: the node kills the
//! shadow and nothing more is written.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kugetsu_protocol::{Event, EventEnvelope};
use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::cluster::api::StoredProgress;
use crate::cluster::db::{DbError, check_fence, timed};
use crate::task::control::ShadowControl;
use crate::task::events::Progress;
use crate::task::record::TaskRecord;

/// Most events in one transaction.
const BATCH: usize = 512;
/// Longest pause between retries while the database is away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the writer hears.
#[derive(Debug)]
pub enum Message {
    /// An event the task committed locally.
    Event(Box<EventEnvelope>),
    /// The task was detached (the node stops): give the lease back so another node takes it
    /// over at once.
    Detached,
    /// The lease was lost: write nothing more.
    Lost,
}

/// One task's writer (see the module docs).
#[derive(Debug)]
pub struct Writer {
    pub cluster: Arc<Cluster>,
    pub task: String,
    pub fence: i64,
    pub record: TaskRecord,
    pub journal: PathBuf,
    /// Bytes of the journal already in the database.
    pub journal_offset: u64,
    /// Lines of the journal already in the database.
    pub journal_lines: i64,
    pub progress: Progress,
    pub control: mpsc::UnboundedSender<ShadowControl>,
    /// Told the task's id when its lease is found lost.
    pub lost: mpsc::UnboundedSender<String>,
}

/// What one batch held that needs doing after its commit.
#[derive(Debug, Default)]
struct After {
    proceed: Vec<String>,
    checkpoint: bool,
    finished: bool,
}

impl Writer {
    /// Runs until the task finished, was detached or lost, or its events end.
    pub async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Message>) {
        let mut detached = false;
        'batches: loop {
            let Some(first) = inbox.recv().await else {
                break;
            };
            let mut envelopes = Vec::new();
            let mut message = Some(first);
            while let Some(m) = message.take() {
                match m {
                    Message::Event(e) => envelopes.push(*e),
                    Message::Detached => detached = true,
                    Message::Lost => return,
                }
                if envelopes.len() < BATCH && !detached {
                    message = inbox.try_recv().ok();
                }
            }
            if !envelopes.is_empty() {
                let mut backoff = Duration::from_millis(50);
                let mut warned = false;
                let after = loop {
                    if self
                        .cluster
                        .lease(&self.task)
                        .is_none_or(|l| l.fence != self.fence)
                    {
                        // Lost meanwhile: the node already stopped the shadow.
                        return;
                    }
                    match self.write(&envelopes).await {
                        Ok(after) => break after,
                        Err(DbError::Fenced) => {
                            tracing::warn!(
                                task = %self.task,
                                "lease lost (fence {} refused): stopping the shadow",
                                self.fence
                            );
                            let _ = self.lost.send(self.task.clone());
                            return;
                        }
                        Err(e) if e.is_duplicate() => {
                            tracing::error!(
                                task = %self.task,
                                "this node's copy of the task is out of step with the cluster database ({e}): giving the task up for another claim"
                            );
                            let _ = self.lost.send(self.task.clone());
                            return;
                        }
                        Err(e) => {
                            if !warned {
                                tracing::warn!(task = %self.task, "cannot write events to the cluster database ({e}); retrying");
                                warned = true;
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            // Take what arrived meanwhile into the same batch.
                            while envelopes.len() < BATCH * 4 {
                                match inbox.try_recv() {
                                    Ok(Message::Event(e)) => envelopes.push(*e),
                                    Ok(Message::Detached) => detached = true,
                                    Ok(Message::Lost) => return,
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                };
                if warned {
                    tracing::info!(task = %self.task, "cluster database reachable again");
                }
                for call in after.proceed {
                    let _ = self.control.send(ShadowControl::Proceed(call));
                }
                if after.finished {
                    self.cluster.drop_lease(&self.task);
                    return;
                }
                if after.checkpoint {
                    self.checkpoint().await;
                }
            }
            if detached {
                break 'batches;
            }
        }
        self.release().await;
    }

    /// New complete lines of the journal since the last batch.
    fn journal_lines(&mut self) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(&self.journal) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.journal_offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let lines: Vec<String> = bytes[..end]
            .split(|b| *b == b'\n')
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        lines
    }

    /// One fenced transaction: the events, the new journal lines, the summary, the finish.
    async fn write(&mut self, envelopes: &[EventEnvelope]) -> Result<After, DbError> {
        let lines = self.journal_lines();
        let consumed: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        let mut progress = self.progress.clone();
        let mut after = After::default();
        let mut seqs = Vec::with_capacity(envelopes.len());
        let mut bodies = Vec::with_capacity(envelopes.len());
        let mut finished = None;
        for envelope in envelopes {
            progress.note_envelope(envelope);
            match &envelope.event {
                Event::ToolStart { call_id, .. } => after.proceed.push(call_id.clone()),
                Event::TurnEnd { .. } => after.checkpoint = true,
                Event::Finished(f) => finished = Some(f.clone()),
                _ => {}
            }
            seqs.push(i64::try_from(envelope.seq).unwrap_or(i64::MAX));
            bodies.push(serde_json::to_string(envelope).map_err(|e| DbError::Data(e.to_string()))?);
        }
        let line_numbers: Vec<i64> = (0..lines.len())
            .map(|i| self.journal_lines + i64::try_from(i).unwrap_or(0))
            .collect();
        let summary = serde_json::to_value(StoredProgress::of(&progress))
            .map_err(|e| DbError::Data(e.to_string()))?;
        let finished_json = finished
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| DbError::Data(e.to_string()))?;
        let status = finished.as_ref().map(|f| f.status.as_str().to_owned());
        let (task, fence) = (self.task.clone(), self.fence);
        timed(async {
            let mut client = self.cluster.db.client().await?;
            let tx = client.transaction().await?;
            check_fence(&tx, &task, fence).await?;
            tx.execute(
                "INSERT INTO kugetsu.events (task, seq, fence, body)
                 SELECT $1, s, $2, b FROM unnest($3::bigint[], $4::text[]) AS x(s, b)",
                &[&task, &fence, &seqs, &bodies],
            )
            .await?;
            if !lines.is_empty() {
                tx.execute(
                    "INSERT INTO kugetsu.journal (task, line, fence, body)
                     SELECT $1, l, $2, b FROM unnest($3::bigint[], $4::text[]) AS x(l, b)",
                    &[&task, &fence, &line_numbers, &lines],
                )
                .await?;
            }
            match (&finished_json, &status) {
                (Some(finished), Some(status)) => {
                    tx.execute(
                        "UPDATE kugetsu.tasks SET state = 'finished', status = $2, finished = $3,
                                summary = $4, finished_at = now(), lease_until = NULL
                          WHERE id = $1",
                        &[&task, status, finished, &summary],
                    )
                    .await?;
                }
                _ => {
                    tx.execute(
                        "UPDATE kugetsu.tasks SET summary = coalesce(summary, '{}') || $2 WHERE id = $1",
                        &[&task, &summary],
                    )
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
        .await?;
        self.journal_offset += consumed;
        self.journal_lines += i64::try_from(lines.len()).unwrap_or(0);
        self.progress = progress;
        after.finished = finished.is_some();
        Ok(after)
    }

    /// Pushes a checkpoint of the worktree and records it, fenced. A failure is logged: the
    /// task goes on, a takeover starts from the previous checkpoint.
    async fn checkpoint(&self) {
        let Some(remote) = self.cluster.checkpoint_remote.clone() else {
            return;
        };
        if !self.record.worktree {
            return;
        }
        let snapshot =
            match crate::cluster::checkpoint::snapshot(&self.record.workdir, &self.record.repo)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(task = %self.task, "checkpoint: {e}");
                    return;
                }
            };
        let reference = match crate::cluster::checkpoint::push(
            &self.record.repo,
            &remote,
            &self.task,
            self.fence,
            &snapshot.commit,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(task = %self.task, "checkpoint push: {e}");
                return;
            }
        };
        let (task, fence) = (self.task.clone(), self.fence);
        let recorded = timed(async {
            let mut client = self.cluster.db.client().await?;
            let tx = client.transaction().await?;
            check_fence(&tx, &task, fence).await?;
            tx.execute(
                "UPDATE kugetsu.tasks SET checkpoint = $2, checkpoint_ref = $3 WHERE id = $1",
                &[&task, &snapshot.commit, &reference],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await;
        if let Err(e) = recorded {
            tracing::warn!(task = %self.task, "checkpoint {}: not recorded ({e})", snapshot.commit);
        }
    }

    /// Gives the lease back (the node stops): another node may take the task at once.
    async fn release(&self) {
        if self.cluster.drop_lease(&self.task).is_none() {
            return;
        }
        let (task, fence) = (self.task.clone(), self.fence);
        let released = timed(async {
            let client = self.cluster.db.client().await?;
            client
                .execute(
                    "UPDATE kugetsu.tasks SET lease_until = now()
                      WHERE id = $1 AND fence = $2 AND state = 'running'",
                    &[&task, &fence],
                )
                .await?;
            Ok(())
        })
        .await;
        if let Err(e) = released {
            tracing::warn!(task = %self.task, "cannot give the lease back ({e}); it expires by itself");
        }
    }
}

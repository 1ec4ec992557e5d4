//! What clients ask a node, answered for the whole cluster from the database: submit, list,
//! get, events, subscribe, cancel, steer, resume.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use kugetsu_protocol::{Event, EventEnvelope, FinishStatus, Finished, Priority};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::cluster::db::{DbError, timed};
use crate::daemon::subscribers::{Line, Sink};
use crate::daemon::table::{status_of, summarize};
use crate::rpc::{self, Cancelled, RpcError, Steered, TaskList, TaskStatus, TaskSummary};
use crate::task::events::{Progress, now_rfc3339};
use crate::task::record::{TaskRecord, is_valid_id};

/// How often a follower looks for new events.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// Events of every task a follower re-reads behind its cursor (rows whose ids were taken
/// before, but committed after, the newest one it saw).
const FOLLOW_WINDOW: i64 = 1000;
/// The most finished tasks `list` shows without `all`.
const RECENT: i64 = 200;

impl From<DbError> for RpcError {
    fn from(e: DbError) -> RpcError {
        RpcError::new(rpc::INTERNAL_ERROR, format!("cluster database: {e}"))
    }
}

pub fn priority_code(p: Priority) -> i16 {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

/// The `queued` envelope of a new task (seq 1).
pub fn queued_envelope(task: &str, priority: Priority) -> EventEnvelope {
    EventEnvelope {
        v: 1,
        task: task.to_owned(),
        seq: 1,
        ts: now_rfc3339(),
        event: Event::Queued { priority },
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, RpcError> {
    serde_json::to_string(value).map_err(|e| RpcError::new(rpc::INTERNAL_ERROR, e.to_string()))
}

impl Cluster {
    /// Puts a new task in the cluster's queue with its `queued` event, and wakes the nodes.
    /// Refused with `queue_full` when `queue_capacity` tasks already wait.
    pub async fn submit(&self, record: &TaskRecord) -> Result<(), RpcError> {
        let body = serde_json::to_value(record)
            .map_err(|e| RpcError::new(rpc::INTERNAL_ERROR, e.to_string()))?;
        let queued = encode(&queued_envelope(&record.id, record.priority))?;
        let capacity = i64::from(
            self.queue_capacity
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let mem_limit = i64::try_from(record.mem_limit).unwrap_or(i64::MAX);
        let priority = priority_code(record.priority);
        let inserted = timed(async {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            let n = tx
                .execute(
                    "INSERT INTO kugetsu.tasks (id, priority, state, record, mem_limit)
                     SELECT $1, $2, 'queued', $3, $4
                      WHERE (SELECT count(*) FROM kugetsu.tasks WHERE state = 'queued') < $5",
                    &[&record.id, &priority, &body, &mem_limit, &capacity],
                )
                .await?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO kugetsu.events (task, seq, body) VALUES ($1, 1, $2)",
                    &[&record.id, &queued],
                )
                .await?;
                tx.execute("NOTIFY kugetsu_tasks", &[]).await?;
            }
            tx.commit().await?;
            Ok(n == 1)
        })
        .await?;
        if !inserted {
            let queued = self.queued_count().await.unwrap_or(capacity);
            return Err(RpcError::new(rpc::QUEUE_FULL, "queue_full")
                .with_data(serde_json::json!({ "capacity": capacity, "queued": queued })));
        }
        Ok(())
    }

    async fn queued_count(&self) -> Result<i64, DbError> {
        timed(async {
            let client = self.db.client().await?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM kugetsu.tasks WHERE state = 'queued'",
                    &[],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    /// Every live task and the recent finished ones (all of them with `all`), by id.
    pub async fn list(&self, all: bool) -> Result<TaskList, RpcError> {
        let limit = if all { i64::MAX } else { RECENT };
        let rows = timed(async {
            let client = self.db.client().await?;
            Ok(client
                .query(
                    "(SELECT id, state, record, node, summary, finished, claims
                        FROM kugetsu.tasks WHERE state <> 'finished')
                     UNION ALL
                     (SELECT id, state, record, node, summary, finished, claims
                        FROM kugetsu.tasks WHERE state = 'finished'
                       ORDER BY id DESC LIMIT $1)",
                    &[&limit],
                )
                .await?)
        })
        .await?;
        let mut tasks: Vec<TaskSummary> = rows.iter().filter_map(summary_of).collect();
        tasks.sort_by(|a, b| a.id.cmp(&b.id));
        let nodes = self.nodes().await?;
        Ok(TaskList { tasks, nodes })
    }

    /// The cluster's nodes: up when heard from within one and a half of this node's lease times
    /// (a node renews three times per lease).
    pub async fn nodes(&self) -> Result<Vec<rpc::NodeSummary>, RpcError> {
        let window = crate::cluster::db::millis(self.ttl.mul_f64(1.5));
        let rows = timed(async {
            let client = self.db.client().await?;
            Ok(client
                .query(
                    "SELECT id, NOT stopped AND seen_at > now() - $1 * interval '1 millisecond',
                            running, max_shadows,
                            (extract(epoch FROM now() - seen_at) * 1000)::bigint
                       FROM kugetsu.nodes ORDER BY id",
                    &[&window],
                )
                .await?)
        })
        .await?;
        Ok(rows
            .iter()
            .map(|r| rpc::NodeSummary {
                id: r.get(0),
                up: r.get(1),
                running: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                max_shadows: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
                seen_ms_ago: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
            })
            .collect())
    }

    /// One task.
    pub async fn get(&self, task: &str) -> Result<TaskSummary, RpcError> {
        if !is_valid_id(task) {
            return Err(RpcError::not_found(task));
        }
        let row = timed(async {
            let client = self.db.client().await?;
            Ok(client
                .query_opt(
                    "SELECT id, state, record, node, summary, finished, claims
                       FROM kugetsu.tasks WHERE id = $1",
                    &[&task],
                )
                .await?)
        })
        .await?;
        row.as_ref()
            .and_then(summary_of)
            .ok_or_else(|| RpcError::not_found(task))
    }

    /// The task's record as submitted (for `diff`, `merge` and `show` on any node).
    pub async fn record(&self, task: &str) -> Result<Option<(TaskRecord, String)>, RpcError> {
        let row = timed(async {
            let client = self.db.client().await?;
            Ok(client
                .query_opt(
                    "SELECT record, state FROM kugetsu.tasks WHERE id = $1",
                    &[&task],
                )
                .await?)
        })
        .await?;
        Ok(row.and_then(|row| {
            let record = serde_json::from_value(row.get::<_, Value>(0)).ok()?;
            Some((record, row.get(1)))
        }))
    }

    /// Makes sure this node's state dir holds task `task`'s record and events as the
    /// database has them (for `diff` and `merge` of a task that ran on another node).
    pub async fn ensure_local(&self, task: &str) -> Result<(), RpcError> {
        if !is_valid_id(task) {
            return Err(RpcError::not_found(task));
        }
        if self.lease(task).is_some() {
            return Ok(());
        }
        let Some((record, _)) = self.record(task).await? else {
            return Err(RpcError::not_found(task));
        };
        let events = timed(async {
            let client = self.db.client().await?;
            Ok(client
                .query(
                    "SELECT body FROM kugetsu.events WHERE task = $1 ORDER BY seq",
                    &[&task],
                )
                .await?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>())
        })
        .await?;
        let dir = self.state.task(task);
        let written = std::fs::create_dir_all(dir.path())
            .and_then(|()| dir.save(&record))
            .and_then(|()| crate::cluster::adopt::write_lines(&dir.events_file(), &events));
        written.map_err(|e| {
            RpcError::new(
                rpc::INTERNAL_ERROR,
                format!(
                    "cannot copy task {task} from the cluster database: {}",
                    crate::exit::describe_io(&e)
                ),
            )
        })?;
        Ok(())
    }

    /// One page of a task's events, as the JSON of an `rpc::EventList`.
    pub async fn events_page(
        &self,
        task: &str,
        after_seq: u64,
        limit: Option<u64>,
    ) -> Result<Vec<u8>, RpcError> {
        self.get(task).await?;
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let limit = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = timed(async {
            let client = self.db.client().await?;
            Ok(client
                .query(
                    "SELECT body FROM kugetsu.events WHERE task = $1 AND seq > $2
                      ORDER BY seq LIMIT $3",
                    &[&task, &after, &limit.saturating_add(1)],
                )
                .await?)
        })
        .await?;
        let mut page = b"{\"events\":[".to_vec();
        let mut more = false;
        for (i, row) in rows.iter().enumerate() {
            let body: &str = row.get(0);
            if i64::try_from(i).unwrap_or(i64::MAX) >= limit || page.len() >= rpc::EVENTS_PAGE_BYTES
            {
                more = true;
                break;
            }
            if i > 0 {
                page.push(b',');
            }
            page.extend_from_slice(body.as_bytes());
        }
        page.extend_from_slice(if more {
            b"],\"more\":true}"
        } else {
            b"],\"more\":false}"
        });
        Ok(page)
    }

    /// Cancels a task: a queued one ends at once as `cancelled`; a running one is flagged and
    /// the node running it stops it.
    pub async fn cancel(&self, task: &str) -> Result<Cancelled, RpcError> {
        if !is_valid_id(task) {
            return Err(RpcError::not_found(task));
        }
        let outcome = timed(async {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            let Some(row) = tx
                .query_opt(
                    "SELECT state, record, status, summary FROM kugetsu.tasks WHERE id = $1 FOR UPDATE",
                    &[&task],
                )
                .await?
            else {
                return Ok(None);
            };
            let state: String = row.get(0);
            let outcome = match state.as_str() {
                "queued" => {
                    let record: TaskRecord = serde_json::from_value(row.get(1))
                        .map_err(|e| DbError::Data(e.to_string()))?;
                    let progress = progress_of(row.get(3));
                    let finished = Finished {
                        status: FinishStatus::Cancelled,
                        result: None,
                        error: Some("cancelled before it started".to_owned()),
                        turns: progress.turns,
                        usage: progress.usage,
                        restarts: progress.restarts,
                        branch: record.branch.clone(),
                        worktree: None,
                        changed_files: Vec::new(),
                    };
                    let seq: i64 = tx
                        .query_one(
                            "SELECT coalesce(max(seq), 0) + 1 FROM kugetsu.events WHERE task = $1",
                            &[&task],
                        )
                        .await?
                        .get(0);
                    let envelope = EventEnvelope {
                        v: 1,
                        task: task.to_owned(),
                        seq: u64::try_from(seq).unwrap_or(0),
                        ts: now_rfc3339(),
                        event: Event::Finished(finished.clone()),
                    };
                    let body = serde_json::to_string(&envelope)
                        .map_err(|e| DbError::Data(e.to_string()))?;
                    let finished = serde_json::to_value(&finished)
                        .map_err(|e| DbError::Data(e.to_string()))?;
                    tx.execute(
                        "INSERT INTO kugetsu.events (task, seq, body) VALUES ($1, $2, $3)",
                        &[&task, &seq, &body],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE kugetsu.tasks SET state = 'finished', status = 'cancelled',
                                finished = $2, finished_at = now()
                          WHERE id = $1",
                        &[&task, &finished],
                    )
                    .await?;
                    Ok("cancelled")
                }
                "running" => {
                    tx.execute(
                        "UPDATE kugetsu.tasks SET cancel = true WHERE id = $1",
                        &[&task],
                    )
                    .await?;
                    tx.execute("NOTIFY kugetsu_control", &[]).await?;
                    Ok("cancelling")
                }
                _ => Err(row.get::<_, Option<String>>(2).unwrap_or_default()),
            };
            tx.commit().await?;
            Ok(Some(outcome))
        })
        .await?;
        match outcome {
            None => Err(RpcError::not_found(task)),
            Some(Ok(status)) => Ok(Cancelled {
                task: task.to_owned(),
                status: status.to_owned(),
            }),
            Some(Err(status)) => Err(RpcError::new(
                rpc::INVALID_STATE,
                format!("task {task} already ended ({status})"),
            )),
        }
    }

    /// Steers a task: delivered by the node that runs it (now, or when it starts).
    pub async fn steer(&self, task: &str, text: &str) -> Result<Steered, RpcError> {
        if text.trim().is_empty() {
            return Err(RpcError::new(
                rpc::INVALID_PARAMS,
                "the steering text is empty",
            ));
        }
        if !is_valid_id(task) {
            return Err(RpcError::not_found(task));
        }
        let state = timed(async {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            let row = tx
                .query_opt(
                    "SELECT state, status FROM kugetsu.tasks WHERE id = $1 FOR SHARE",
                    &[&task],
                )
                .await?;
            let Some(row) = row else { return Ok(None) };
            let state: String = row.get(0);
            if state != "finished" {
                tx.execute(
                    "INSERT INTO kugetsu.steers (task, text) VALUES ($1, $2)",
                    &[&task, &text],
                )
                .await?;
                tx.execute("NOTIFY kugetsu_control", &[]).await?;
            }
            tx.commit().await?;
            Ok(Some((state, row.get::<_, Option<String>>(1))))
        })
        .await?;
        match state {
            None => Err(RpcError::not_found(task)),
            Some((state, status)) if state == "finished" => Err(RpcError::new(
                rpc::INVALID_STATE,
                format!("task {task} already ended ({})", status.unwrap_or_default()),
            )),
            Some(_) => Ok(Steered {
                task: task.to_owned(),
            }),
        }
    }

    /// Puts a paused task back in the queue with `budget` (where given) as its new budget.
    pub async fn resume(
        &self,
        task: &str,
        budget_tokens: Option<u64>,
        budget_usd: Option<f64>,
    ) -> Result<rpc::Resumed, RpcError> {
        let Some((mut record, state)) = self.record(task).await? else {
            return Err(RpcError::not_found(task));
        };
        let status = self.get(task).await?.status;
        if state != "finished" || status != TaskStatus::Paused {
            return Err(RpcError::new(
                rpc::INVALID_PARAMS,
                format!(
                    "task {task} is not paused: {}",
                    if state == "finished" {
                        format!("it finished as {}", status.as_str())
                    } else {
                        "it is queued or running".to_owned()
                    }
                ),
            ));
        }
        if let Some(tokens) = budget_tokens {
            record.budget_tokens = Some(tokens);
        }
        if let Some(usd) = budget_usd {
            record.budget_usd = Some(usd);
        }
        let body = serde_json::to_value(&record)
            .map_err(|e| RpcError::new(rpc::INTERNAL_ERROR, e.to_string()))?;
        let n = timed(async {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            let n = tx
                .execute(
                    "UPDATE kugetsu.tasks SET state = 'queued', record = $2, status = NULL,
                            finished = NULL, finished_at = NULL, node = NULL, fence = NULL,
                            lease_until = NULL, cancel = false
                      WHERE id = $1 AND state = 'finished' AND status = 'paused'",
                    &[&task, &body],
                )
                .await?;
            tx.execute("NOTIFY kugetsu_tasks", &[]).await?;
            tx.commit().await?;
            Ok(n)
        })
        .await?;
        if n == 0 {
            return Err(RpcError::new(
                rpc::INVALID_PARAMS,
                format!("task {task} is not paused any more"),
            ));
        }
        Ok(rpc::Resumed {
            task: task.to_owned(),
            status: "queued".to_owned(),
        })
    }

    /// Follows events into `out`: one task's after `after_seq` until its `finished`, or every
    /// task's (`task` None) from now on; returns when `out` closes, or after `finished`.
    pub async fn follow(&self, task: Option<String>, after_seq: u64, out: Sink) {
        match task {
            Some(task) => {
                let mut after = i64::try_from(after_seq).unwrap_or(i64::MAX);
                loop {
                    let rows = match self.events_after(&task, after).await {
                        Ok(rows) => rows,
                        Err(e) => {
                            tracing::debug!("following {task}: {e}");
                            Vec::new()
                        }
                    };
                    for (seq, body) in rows {
                        after = seq;
                        let Some(line) = line_of(&body) else { continue };
                        let last = line.last;
                        if !out.push(line).await || last {
                            return;
                        }
                    }
                    if out.is_closed() {
                        return;
                    }
                    tokio::time::sleep(FOLLOW_EVERY).await;
                }
            }
            None => {
                if let Err(e) = self.follow_all(&out).await {
                    tracing::debug!("following every task: {e}");
                }
            }
        }
    }

    async fn events_after(&self, task: &str, after: i64) -> Result<Vec<(i64, String)>, DbError> {
        timed(async {
            let client = self.db.client().await?;
            let rows = client
                .query(
                    "SELECT seq, body FROM kugetsu.events WHERE task = $1 AND seq > $2
                      ORDER BY seq LIMIT 1000",
                    &[&task, &after],
                )
                .await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .await
    }

    async fn follow_all(&self, out: &Sink) -> Result<(), DbError> {
        let start: i64 = timed(async {
            let client = self.db.client().await?;
            Ok(client
                .query_one("SELECT coalesce(max(gid), 0) FROM kugetsu.events", &[])
                .await?
                .get(0))
        })
        .await?;
        let mut cursor = start;
        // (task, seq) sent recently, so the window behind the cursor sends nothing twice.
        let mut seen: HashSet<(String, i64)> = HashSet::new();
        let mut order: VecDeque<(i64, (String, i64))> = VecDeque::new();
        loop {
            let from = cursor.saturating_sub(FOLLOW_WINDOW).max(start);
            let rows = timed(async {
                let client = self.db.client().await?;
                Ok(client
                    .query(
                        "SELECT gid, task, seq, body FROM kugetsu.events WHERE gid > $1
                          ORDER BY gid LIMIT 2000",
                        &[&from],
                    )
                    .await?)
            })
            .await
            .unwrap_or_default();
            for row in &rows {
                let gid: i64 = row.get(0);
                let key = (row.get::<_, String>(1), row.get::<_, i64>(2));
                if !seen.insert(key.clone()) {
                    continue;
                }
                order.push_back((gid, key));
                cursor = cursor.max(gid);
                if let Some(line) = line_of(row.get::<_, &str>(3))
                    && !out.push(line).await
                {
                    return Ok(());
                }
            }
            while order
                .front()
                .is_some_and(|(gid, _)| *gid < cursor.saturating_sub(FOLLOW_WINDOW))
            {
                if let Some((_, key)) = order.pop_front() {
                    seen.remove(&key);
                }
            }
            if out.is_closed() {
                return Ok(());
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
}

/// The subscription line of a stored envelope (a damaged row is skipped).
fn line_of(body: &str) -> Option<std::sync::Arc<Line>> {
    serde_json::from_str::<EventEnvelope>(body)
        .ok()
        .map(|e| Line::event(&e))
}

/// The fold of a task's events as its node last stored it.
fn progress_of(summary: Option<Value>) -> Progress {
    summary
        .and_then(|s| serde_json::from_value::<StoredProgress>(s).ok())
        .map(|s| s.progress())
        .unwrap_or_default()
}

/// What a node stores as a task's `summary`: the fields `ps` needs that only events tell.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StoredProgress {
    pub turns: u32,
    pub usage: kugetsu_protocol::Usage,
    pub restarts: u32,
    pub attempt: u32,
    pub pid: Option<u32>,
    pub tool: Option<String>,
    /// Written by the node's stats pass, not by the writer (whose summaries leave it alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

impl StoredProgress {
    pub fn of(progress: &Progress) -> StoredProgress {
        StoredProgress {
            turns: progress.turns,
            usage: progress.usage,
            restarts: progress.restarts,
            attempt: progress.attempt,
            pid: progress.pid,
            tool: progress.tool.clone(),
            rss_bytes: None,
            waiting: None,
        }
    }

    fn progress(&self) -> Progress {
        Progress {
            turns: self.turns,
            usage: self.usage,
            restarts: self.restarts,
            attempt: self.attempt,
            pid: self.pid,
            tool: self.tool.clone(),
            ..Progress::default()
        }
    }
}

/// A row of (id, state, record, node, summary, finished, claims) as `list` shows it.
fn summary_of(row: &tokio_postgres::Row) -> Option<TaskSummary> {
    let record: TaskRecord = serde_json::from_value(row.get(2)).ok()?;
    let state: String = row.get(1);
    let node: Option<String> = row.get(3);
    let stored: Option<StoredProgress> = row
        .get::<_, Option<Value>>(4)
        .and_then(|s| serde_json::from_value(s).ok());
    let finished: Option<Finished> = row
        .get::<_, Option<Value>>(5)
        .and_then(|f| serde_json::from_value(f).ok());
    let claims: i32 = row.get(6);
    let mut progress = stored
        .as_ref()
        .map(StoredProgress::progress)
        .unwrap_or_default();
    let status = match (state.as_str(), &finished) {
        ("finished", Some(f)) => status_of(f.status),
        ("running", _) => TaskStatus::Running,
        _ => TaskStatus::Queued,
    };
    progress.finished = finished;
    let mut summary = summarize(&record, &progress, status);
    summary.attempt = summary.attempt.max(u32::try_from(claims).unwrap_or(0));
    if let Some(stored) = &stored
        && status == TaskStatus::Running
    {
        summary.rss_bytes = stored.rss_bytes;
        if let Some(waiting) = &stored.waiting {
            summary.status = TaskStatus::Waiting;
            summary.waiting = Some(waiting.clone());
        }
    }
    summary.node = node;
    Some(summary)
}

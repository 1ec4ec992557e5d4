//! The node loop: joining the cluster, claiming tasks, keeping leases (and freezing shadows
//! when a renewal is late), delivering cancels and steers to the shadows this node runs.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::cluster::adopt::{self, Claimed};
use crate::cluster::db::{DbError, millis, timed};
use crate::cluster::{Cluster, Lease, writer};
use crate::daemon::command::{Adopted, Capacity, Command};
use crate::task::control::ShadowControl;

/// How long a starting node waits for its name to be free.
const NAME_WAIT: Duration = Duration::from_secs(10);

/// How often a node looks for work and for cancels and steers (NOTIFY wakes it sooner).
pub const TICK: Duration = Duration::from_millis(500);

/// Joins the cluster: applies the schema, takes the node's name (refused while another live
/// process holds it), registers the node and gives back the leases an earlier run of this
/// node left (so they are taken over at once, here or elsewhere).
pub async fn join(cluster: &Arc<Cluster>, max_shadows: u32) -> Result<Listener, DbError> {
    cluster.db.migrate().await?;
    let listener = Listener::connect(cluster).await?;
    let max = i32::try_from(max_shadows).unwrap_or(i32::MAX);
    let version = env!("CARGO_PKG_VERSION");
    timed(async {
        let client = cluster.db.client().await?;
        client
            .execute(
                "INSERT INTO kugetsu.nodes (id, max_shadows, version)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET started_at = now(), seen_at = now(),
                        max_shadows = $2, version = $3, running = 0, stopped = false",
                &[&cluster.node_id, &max, &version],
            )
            .await?;
        let released = client
            .execute(
                "UPDATE kugetsu.tasks SET lease_until = now()
                  WHERE node = $1 AND state = 'running' AND lease_until > now()",
                &[&cluster.node_id],
            )
            .await?;
        if released > 0 {
            tracing::info!(
                "cluster: gave back {released} leases of an earlier run of node {}",
                cluster.node_id
            );
        }
        Ok(())
    })
    .await?;
    Ok(listener)
}

/// The node's own connection outside the pool: it holds the node's name (a session advisory
/// lock) and LISTENs for new tasks and controls.
#[derive(Debug)]
pub struct Listener {
    wake: mpsc::UnboundedReceiver<()>,
}

impl Listener {
    async fn connect(cluster: &Arc<Cluster>) -> Result<Listener, DbError> {
        let (wake_tx, wake) = mpsc::unbounded_channel();
        let first = open_listener(cluster, wake_tx.clone()).await?;
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let mut done = first;
            loop {
                let _ = done.await;
                tracing::warn!("cluster: lost the node's database connection; reconnecting");
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match open_listener(&cluster, wake_tx.clone()).await {
                        Ok(next) => {
                            tracing::info!("cluster: node connection back");
                            done = next;
                            break;
                        }
                        Err(e) => tracing::debug!("cluster: reconnecting: {e}"),
                    }
                }
            }
        });
        Ok(Listener { wake })
    }
}

/// Opens the listening connection: it takes the node's name (a session advisory lock, so a
/// second live process under one `node_id` is refused) and LISTENs. The returned receiver
/// resolves when the connection closes.
async fn open_listener(
    cluster: &Arc<Cluster>,
    wake: mpsc::UnboundedSender<()>,
) -> Result<oneshot::Receiver<()>, DbError> {
    let (client, mut connection) = timed(async {
        Ok(cluster
            .db
            .config
            .connect(crate::cluster::db::tls()?)
            .await?)
    })
    .await?;
    let (closed_tx, closed) = oneshot::channel();
    tokio::spawn(async move {
        loop {
            let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    let _ = wake.send(());
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        let _ = closed_tx.send(());
    });
    let name = format!("kugetsu node {}", cluster.node_id);
    // An earlier run of this node that is still going away (or whose connection the server
    // has not yet seen close) holds the name for a moment: wait a little for it.
    let deadline = tokio::time::Instant::now() + NAME_WAIT;
    let locked = loop {
        let locked: bool = timed(async {
            Ok(client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                    &[&name],
                )
                .await?
                .get(0))
        })
        .await?;
        if locked || tokio::time::Instant::now() >= deadline {
            break locked;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if !locked {
        return Err(DbError::Schema(format!(
            "another live process already runs as node {:?}: give each node its own node_id",
            cluster.node_id
        )));
    }
    timed(async {
        client
            .batch_execute("LISTEN kugetsu_tasks; LISTEN kugetsu_control")
            .await?;
        Ok(())
    })
    .await?;
    // The client (and so the lock and the LISTEN) lives as long as its connection.
    let (hold_tx, hold) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _client = client;
        let _ = hold.await;
    });
    let (done_tx, done) = oneshot::channel();
    tokio::spawn(async move {
        let _ = closed.await;
        drop(hold_tx);
        let _ = done_tx.send(());
    });
    Ok(done)
}

/// Runs the node: the claimer and the lease keeper, until `stop` is set.
pub fn spawn(
    cluster: &Arc<Cluster>,
    listener: Listener,
    commands: mpsc::UnboundedSender<Command>,
) -> NodeHandle {
    let frozen = Arc::new(AtomicBool::new(false));
    let (lost_tx, lost_rx) = mpsc::unbounded_channel();
    let keeper = tokio::spawn(keep_leases(cluster.clone(), frozen.clone(), lost_rx));
    let claimer = tokio::spawn(claim_loop(
        cluster.clone(),
        listener,
        commands,
        frozen,
        lost_tx.clone(),
    ));
    NodeHandle {
        keeper,
        claimer,
        lost: lost_tx,
    }
}

/// The node's running loops.
#[derive(Debug)]
pub struct NodeHandle {
    keeper: tokio::task::JoinHandle<()>,
    claimer: tokio::task::JoinHandle<()>,
    pub lost: mpsc::UnboundedSender<String>,
}

impl NodeHandle {
    /// Stops claiming (the node shuts down); leases stay renewed until the shadows detached.
    pub fn stop_claiming(&self) {
        self.claimer.abort();
    }

    /// Stops the lease keeper and marks the node stopped.
    pub async fn stop(self, cluster: &Cluster) {
        self.claimer.abort();
        self.keeper.abort();
        let _ = timed(async {
            let client = cluster.db.client().await?;
            client
                .execute(
                    "UPDATE kugetsu.nodes SET stopped = true, running = 0, seen_at = now() WHERE id = $1",
                    &[&cluster.node_id],
                )
                .await?;
            // Whatever this node still holds (a claim it had no time to start) goes back.
            let fences: Vec<i64> = cluster.fences().iter().map(|(_, f)| *f).collect();
            client
                .execute(
                    "UPDATE kugetsu.tasks SET lease_until = now()
                      WHERE node = $1 AND state = 'running' AND fence = ANY($2)",
                    &[&cluster.node_id, &fences],
                )
                .await?;
            Ok(())
        })
        .await;
    }
}

/// Renews every lease three times per `lease_ttl`; freezes the shadows when a renewal is
/// late, resumes the renewed ones and kills the lost ones when one lands.
async fn keep_leases(
    cluster: Arc<Cluster>,
    frozen: Arc<AtomicBool>,
    mut lost: mpsc::UnboundedReceiver<String>,
) {
    let every = cluster.ttl / 3;
    // Freeze well before the lease runs out in the database's time.
    let freeze_after = cluster.ttl.mul_f64(0.75);
    let mut last_ok = Instant::now();
    let mut next = Instant::now() + every;
    let mut failing = false;
    loop {
        let freeze_at = last_ok + freeze_after;
        tokio::select! {
            () = tokio::time::sleep_until(next.min(freeze_at)) => {}
            Some(task) = lost.recv() => {
                lose(&cluster, &task, "its lease was lost");
                continue;
            }
        }
        let now = Instant::now();
        if now >= freeze_at && !frozen.swap(true, Ordering::SeqCst) {
            let n = freeze_all(&cluster);
            tracing::warn!(
                "cluster: no lease renewal for {} ms: froze {n} processes of this node's shadows until one lands",
                now.duration_since(last_ok).as_millis()
            );
        }
        if now < next {
            continue;
        }
        let sent = Instant::now();
        let held = cluster.fences();
        let renewal = renew(&cluster, &held);
        tokio::pin!(renewal);
        let result = loop {
            tokio::select! {
                r = &mut renewal => break r,
                () = tokio::time::sleep_until(last_ok + freeze_after), if !frozen.load(Ordering::SeqCst) => {
                    frozen.store(true, Ordering::SeqCst);
                    let n = freeze_all(&cluster);
                    tracing::warn!("cluster: lease renewal late: froze {n} processes of this node's shadows until one lands");
                }
            }
        };
        match result {
            Ok(renewed) => {
                if failing {
                    tracing::info!("cluster: lease renewal works again");
                    failing = false;
                }
                last_ok = sent;
                next = sent + every;
                let renewed: HashSet<String> = renewed.into_iter().collect();
                for (task, _) in &held {
                    if !renewed.contains(task) {
                        lose(&cluster, task, "its lease expired before it was renewed");
                    }
                }
                if frozen.swap(false, Ordering::SeqCst) {
                    let mut n = 0;
                    for (task, _) in cluster.fences() {
                        n += crate::cluster::signal_task(&task, &cluster.node_id, Signal::SIGCONT);
                    }
                    tracing::info!("cluster: leases renewed: resumed {n} processes");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("cluster: cannot renew leases ({e}); retrying");
                    failing = true;
                }
                next = Instant::now() + Duration::from_millis(500).min(every);
            }
        }
    }
}

/// SIGSTOPs every process of every shadow this node runs.
fn freeze_all(cluster: &Cluster) -> usize {
    cluster
        .fences()
        .iter()
        .map(|(task, _)| crate::cluster::signal_task(task, &cluster.node_id, Signal::SIGSTOP))
        .sum()
}

/// Stops a shadow whose lease is gone: nothing more of it is written, its processes die.
fn lose(cluster: &Cluster, task: &str, why: &str) {
    let Some(lease) = cluster.drop_lease(task) else {
        return;
    };
    tracing::warn!(task = %task, "cluster: {why}; killing its shadow here");
    let _ = lease.writer.send(writer::Message::Lost);
    let _ = lease.control.send(ShadowControl::Detach);
    crate::cluster::signal_task(task, &cluster.node_id, Signal::SIGKILL);
}

/// One renewal: the tasks whose leases it extended.
async fn renew(cluster: &Cluster, held: &[(String, i64)]) -> Result<Vec<String>, DbError> {
    let tasks: Vec<String> = held.iter().map(|(t, _)| t.clone()).collect();
    let fences: Vec<i64> = held.iter().map(|(_, f)| *f).collect();
    let ttl = millis(cluster.ttl);
    let running = i32::try_from(held.len()).unwrap_or(i32::MAX);
    timed(async {
        let client = cluster.db.client().await?;
        let rows = client
            .query(
                "UPDATE kugetsu.tasks t SET lease_until = now() + $3 * interval '1 millisecond'
                   FROM unnest($1::text[], $2::bigint[]) AS h(id, fence)
                  WHERE t.id = h.id AND t.fence = h.fence AND t.state = 'running'
                    AND t.lease_until > now()
                 RETURNING t.id",
                &[&tasks, &fences, &ttl],
            )
            .await?;
        client
            .execute(
                "UPDATE kugetsu.nodes SET seen_at = now(), running = $2 WHERE id = $1",
                &[&cluster.node_id, &running],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    })
    .await
}

async fn claim_loop(
    cluster: Arc<Cluster>,
    mut listener: Listener,
    commands: mpsc::UnboundedSender<Command>,
    frozen: Arc<AtomicBool>,
    lost: mpsc::UnboundedSender<String>,
) {
    let mut warned = false;
    let mut cancelled = HashSet::new();
    let mut last_purge = Instant::now();
    let mut last_stats = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            Some(()) = listener.wake.recv() => {
                // Many notifications at once are one wake-up.
                while listener.wake.try_recv().is_ok() {}
            }
        }
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        let result = async {
            deliver_controls(&cluster, &mut cancelled).await?;
            let (reply, answer) = oneshot::channel();
            if commands.send(Command::Capacity { reply }).is_err() {
                return Ok(());
            }
            let Ok(capacity) = answer.await else {
                return Ok(());
            };
            if last_stats.elapsed() >= STATS_EVERY {
                last_stats = Instant::now();
                publish_stats(&cluster, &commands).await?;
            }
            if let Some(retention) = capacity.retention
                && last_purge.elapsed() >= PURGE_EVERY
            {
                last_purge = Instant::now();
                purge(&cluster, retention).await?;
            }
            if capacity.slots == 0 {
                return Ok(());
            }
            let claimed = claim(&cluster, &capacity).await?;
            for task in claimed {
                start(&cluster, task, &commands, &lost).await;
            }
            Ok::<(), DbError>(())
        }
        .await;
        match result {
            Ok(()) if warned => {
                tracing::info!("cluster: claiming works again");
                warned = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !warned {
                    tracing::warn!("cluster: cannot claim tasks ({e}); retrying");
                    warned = true;
                }
            }
        }
    }
}

/// How often a node writes its shadows' memory and waits for `ps` on other nodes.
const STATS_EVERY: Duration = Duration::from_secs(2);

/// Writes this node's running shadows' memory and wait reasons into their summaries.
async fn publish_stats(
    cluster: &Cluster,
    commands: &mpsc::UnboundedSender<Command>,
) -> Result<(), DbError> {
    let (reply, answer) = oneshot::channel();
    if commands.send(Command::LocalStats { reply }).is_err() {
        return Ok(());
    }
    let Ok(stats) = answer.await else {
        return Ok(());
    };
    if stats.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = stats.iter().map(|(id, _, _)| id.clone()).collect();
    let rss: Vec<Option<i64>> = stats
        .iter()
        .map(|(_, r, _)| r.and_then(|r| i64::try_from(r).ok()))
        .collect();
    let waiting: Vec<Option<String>> = stats.iter().map(|(_, _, w)| w.clone()).collect();
    timed(async {
        let client = cluster.db.client().await?;
        client
            .execute(
                "UPDATE kugetsu.tasks t
                    SET summary = coalesce(t.summary, '{}')
                                  || jsonb_build_object('rss_bytes', x.rss, 'waiting', x.waiting)
                   FROM unnest($1::text[], $2::bigint[], $3::text[]) AS x(id, rss, waiting)
                  WHERE t.id = x.id AND t.node = $4 AND t.state = 'running'",
                &[&ids, &rss, &waiting, &cluster.node_id],
            )
            .await?;
        Ok(())
    })
    .await
}

/// How often a node removes finished tasks older than `task_retention` from the database.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Removes finished tasks older than `retention` (their events, journal and steers go with
/// them); any node may do it, doing it twice is harmless.
async fn purge(cluster: &Cluster, retention: Duration) -> Result<(), DbError> {
    let older = millis(retention);
    let removed = timed(async {
        let client = cluster.db.client().await?;
        Ok(client
            .execute(
                "DELETE FROM kugetsu.tasks WHERE state = 'finished'
                   AND finished_at < now() - $1 * interval '1 millisecond'",
                &[&older],
            )
            .await?)
    })
    .await?;
    if removed > 0 {
        tracing::info!(
            "cluster: removed {removed} finished tasks past task_retention from the database"
        );
    }
    Ok(())
}

/// Claims up to `capacity.slots` tasks that fit the memory this node has: tasks whose lease
/// expired first (takeovers), then queued ones by priority and submission order.
pub async fn claim(cluster: &Cluster, capacity: &Capacity) -> Result<Vec<Claimed>, DbError> {
    let ttl = millis(cluster.ttl);
    let fits = i64::try_from(capacity.memory).unwrap_or(i64::MAX);
    let mut left = i64::try_from(capacity.slots).unwrap_or(0);
    let mut claimed = Vec::new();
    for takeover in [true, false] {
        if left == 0 {
            break;
        }
        let filter = if takeover {
            "state = 'running' AND lease_until < now()"
        } else {
            "state = 'queued'"
        };
        let order = if takeover {
            "lease_until, priority, ord"
        } else {
            "priority, ord"
        };
        let sql = format!(
            "WITH c AS (
                SELECT id, node AS previous FROM kugetsu.tasks
                 WHERE {filter} AND mem_limit <= $3
                 ORDER BY {order}
                 LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE kugetsu.tasks t SET state = 'running', node = $1,
                    fence = nextval('kugetsu.fence'),
                    lease_until = now() + $4 * interval '1 millisecond',
                    claims = t.claims + 1, started_at = coalesce(t.started_at, now())
               FROM c WHERE t.id = c.id
             RETURNING t.id, t.fence, t.record, t.claims, t.checkpoint, t.checkpoint_ref, c.previous"
        );
        let rows = timed(async {
            let client = cluster.db.client().await?;
            Ok(client
                .query(&sql, &[&cluster.node_id, &left, &fits, &ttl])
                .await?)
        })
        .await?;
        left -= i64::try_from(rows.len()).unwrap_or(0);
        claimed.extend(rows.iter().map(|r| Claimed {
            id: r.get(0),
            fence: r.get(1),
            record: r.get(2),
            claims: r.get(3),
            checkpoint: r.get(4),
            checkpoint_ref: r.get(5),
            previous_node: r.get(6),
        }));
    }
    Ok(claimed)
}

/// Lays a claimed task out and hands it to the actor, with its lease and writer in place.
async fn start(
    cluster: &Arc<Cluster>,
    claimed: Claimed,
    commands: &mpsc::UnboundedSender<Command>,
    lost: &mpsc::UnboundedSender<String>,
) {
    let (control, controls) = mpsc::unbounded_channel();
    let (writer_tx, writer_rx) = mpsc::unbounded_channel();
    if let Ok(mut leases) = cluster.leases.lock() {
        leases.insert(
            claimed.id.clone(),
            Lease {
                fence: claimed.fence,
                control: control.clone(),
                writer: writer_tx.clone(),
            },
        );
    }
    match &claimed.previous_node {
        Some(previous) if previous != &cluster.node_id => tracing::info!(
            task = %claimed.id,
            "cluster: taking over from node {previous} (fence {})",
            claimed.fence
        ),
        _ => tracing::debug!(task = %claimed.id, "cluster: claimed (fence {})", claimed.fence),
    }
    let (reply, answer) = oneshot::channel();
    if commands.send(Command::Settings { reply }).is_err() {
        return;
    }
    let Ok((config, _)) = answer.await else {
        return;
    };
    let (laid, failure) = match adopt::lay_out(cluster, &claimed, &config).await {
        Ok(laid) => (laid, None),
        Err(why) => match fallback(cluster, &claimed, &config) {
            Some(laid) => (laid, Some(why)),
            None => {
                tracing::error!(task = %claimed.id, "cluster: {why}; the task is left for its lease to expire");
                cluster.drop_lease(&claimed.id);
                return;
            }
        },
    };
    let writer = writer::Writer {
        cluster: cluster.clone(),
        task: claimed.id.clone(),
        fence: claimed.fence,
        record: laid.prepared.record.clone(),
        journal: laid.prepared.dir.journal_file(),
        journal_offset: laid.journal_bytes,
        journal_lines: laid.journal_lines,
        progress: laid.progress.clone(),
        control: control.clone(),
        lost: lost.clone(),
    };
    tokio::spawn(writer.run(writer_rx));
    let _ = commands.send(Command::Adopt(Box::new(Adopted {
        prepared: laid.prepared,
        progress: laid.progress,
        control,
        controls,
        writer: writer_tx,
        failure,
    })));
}

/// When laying a task out failed: enough of it on disk to record its failure.
fn fallback(
    cluster: &Cluster,
    claimed: &Claimed,
    config: &crate::config::Config,
) -> Option<adopt::Laid> {
    let record: crate::task::record::TaskRecord =
        serde_json::from_value(claimed.record.clone()).ok()?;
    let dir = cluster.state.task(&record.id);
    std::fs::create_dir_all(dir.path()).ok()?;
    dir.save(&record).ok()?;
    // No worker starts: the journal stays the database's, and nothing of it is written again.
    let _ = std::fs::remove_file(dir.journal_file());
    Some(adopt::Laid {
        prepared: crate::task::prepare::Prepared {
            record,
            dir,
            config: config.clone(),
        },
        progress: Default::default(),
        journal_lines: 0,
        journal_bytes: 0,
    })
}

/// Hands this node's shadows the cancels and steers clients left in the database.
async fn deliver_controls(
    cluster: &Cluster,
    cancelled: &mut HashSet<String>,
) -> Result<(), DbError> {
    let held = cluster.fences();
    cancelled.retain(|t| held.iter().any(|(h, _)| h == t));
    if held.is_empty() {
        return Ok(());
    }
    let tasks: Vec<String> = held.iter().map(|(t, _)| t.clone()).collect();
    let (cancels, steers) = timed(async {
        let client = cluster.db.client().await?;
        let cancels: Vec<String> = client
            .query(
                "SELECT id FROM kugetsu.tasks WHERE id = ANY($1) AND cancel AND state = 'running'",
                &[&tasks],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let steers: Vec<(i64, String, String)> = client
            .query(
                "UPDATE kugetsu.steers SET delivered = true
                  WHERE id IN (SELECT id FROM kugetsu.steers
                                WHERE task = ANY($1) AND NOT delivered ORDER BY id)
                 RETURNING id, task, text",
                &[&tasks],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        Ok((cancels, steers))
    })
    .await?;
    let mut steers = steers;
    steers.sort_by_key(|(id, _, _)| *id);
    for (_, task, text) in steers {
        if let Some(lease) = cluster.lease(&task) {
            let _ = lease.control.send(ShadowControl::Steer(text));
        }
    }
    for task in cancels {
        if let Some(lease) = cluster.lease(&task)
            && cancelled.insert(task)
        {
            let _ = lease.control.send(ShadowControl::Cancel);
        }
    }
    Ok(())
}

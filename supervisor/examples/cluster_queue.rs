//! Measures the cluster's queue itself (used by `scripts/bench`): submissions, then claims and
//! fenced finishes by several concurrent claimers, all with the node's own code against a real
//! PostgreSQL.
//!
//! Usage: `cluster_queue URL [--tasks N] [--claimers K] [--slots S]`. URL is a PostgreSQL
//! connection string to a database of its own (the schema is applied; a database that already
//! holds queued or running tasks is refused, as they would be claimed). Submits N tasks
//! (`Cluster::submit`, with their `queued` events) from K concurrent submitters, then K
//! claimers, each a node of its own, claim up to S tasks at a time (`node::claim`: `FOR UPDATE
//! SKIP LOCKED`, a fence and a lease each) and finish each claimed task the way a task's writer
//! does (one transaction: the fence checked, its `started` and `finished` events written with
//! the fence, the task marked finished). Prints one JSON object: the rates, and the checks
//! that every task was claimed once and finished once.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark binary"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kugetsu_protocol::{Event, EventEnvelope, FinishStatus, Finished, Usage};
use kugetsu_supervisor::cluster::db::{Db, check_fence, timed};
use kugetsu_supervisor::cluster::{Cluster, node};
use kugetsu_supervisor::config::ClusterConfig;
use kugetsu_supervisor::daemon::command::Capacity;
use kugetsu_supervisor::task::events::now_rfc3339;
use kugetsu_supervisor::task::record::{StateDir, TaskRecord, new_task_id};

struct Args {
    url: String,
    tasks: usize,
    claimers: usize,
    slots: usize,
}

fn usage() -> ! {
    eprintln!("usage: cluster_queue URL [--tasks N] [--claimers K] [--slots S]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        url: String::new(),
        tasks: 5000,
        claimers: 8,
        slots: 4,
    };
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> usize {
            let value = args.next().unwrap_or_else(|| usage());
            match value.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    eprintln!("cluster_queue: {name} {value:?}: expected a positive number");
                    std::process::exit(2);
                }
            }
        };
        match arg.as_str() {
            "--tasks" => parsed.tasks = number("--tasks"),
            "--claimers" => parsed.claimers = number("--claimers"),
            "--slots" => parsed.slots = number("--slots"),
            "-h" | "--help" => usage(),
            other if other.starts_with('-') => {
                eprintln!("cluster_queue: unknown option {other:?}");
                usage();
            }
            other if parsed.url.is_empty() => parsed.url = other.to_owned(),
            _ => usage(),
        }
    }
    if parsed.url.is_empty() {
        usage();
    }
    parsed
}

/// A node of the benchmark's cluster (its own pool and name).
fn node_of(url: &str, id: &str, state: &std::path::Path) -> Cluster {
    Cluster {
        db: Db::new(url).expect("a pool"),
        node_id: id.to_owned(),
        ttl: Duration::from_secs(30),
        checkpoint_remote: None,
        state: StateDir {
            root: state.to_path_buf(),
        },
        leases: Default::default(),
        queue_capacity: std::sync::atomic::AtomicU32::new(u32::MAX),
    }
}

fn record(id: &str, repo: &std::path::Path) -> TaskRecord {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "prompt": "queue benchmark",
        "model": "scripted/none",
        "repo": repo,
        "workdir": repo,
        "branch": null,
        "base_commit": null,
        "worktree": false,
        "max_turns": 1,
        "deadline_unix_ms": null,
        "mem_limit": 64u64 << 20,
        "created_unix_ms": 0,
        "origin": "daemon",
    }))
    .expect("a task record")
}

fn envelope(task: &str, seq: u64, event: Event) -> String {
    serde_json::to_string(&EventEnvelope {
        v: 1,
        task: task.to_owned(),
        seq,
        ts: now_rfc3339(),
        event,
    })
    .expect("an envelope")
}

/// Finishes a claimed task as its writer would: one transaction, fence first.
async fn finish(cluster: &Cluster, task: &str, fence: i64) {
    let started = envelope(
        task,
        2,
        serde_json::from_value(serde_json::json!({
            "type": "started", "attempt": 1, "pid": std::process::id(), "worktree": null,
            "branch": null, "model": "scripted/none", "node": cluster.node_id,
        }))
        .expect("a started event"),
    );
    let finished = Finished {
        status: FinishStatus::Completed,
        result: Some("done".to_owned()),
        error: None,
        turns: 1,
        usage: Usage::default(),
        restarts: 0,
        branch: None,
        worktree: None,
        changed_files: Vec::new(),
    };
    let finished_json = serde_json::to_value(&finished).expect("finished json");
    let finished_line = envelope(task, 3, Event::Finished(finished));
    let mut backoff = Duration::from_millis(5);
    loop {
        let result = timed(async {
            let mut client = cluster.db.client().await?;
            let tx = client.transaction().await?;
            check_fence(&tx, task, fence).await?;
            tx.execute(
                "INSERT INTO kugetsu.events (task, seq, fence, body)
                 VALUES ($1, 2, $2, $3), ($1, 3, $2, $4)",
                &[&task, &fence, &started, &finished_line],
            )
            .await?;
            tx.execute(
                "UPDATE kugetsu.tasks SET state = 'finished', status = 'completed', finished = $2,
                        finished_at = now(), lease_until = NULL
                  WHERE id = $1",
                &[&task, &finished_json],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await;
        match result {
            Ok(()) => return,
            Err(e) if e.is_conflict() => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            Err(e) => panic!("finishing {task}: {e}"),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let config = ClusterConfig {
        url: args.url.clone(),
        node_id: "bench-submitter".to_owned(),
        lease_ttl: Duration::from_secs(30),
        checkpoint_remote: None,
    };
    let submitter = Cluster::install(
        &config,
        StateDir {
            root: scratch.path().join("submitter"),
        },
        u32::MAX,
    )
    .expect("the cluster");
    submitter.db.migrate().await.expect("the schema");
    {
        let client = submitter.db.client().await.expect("a connection");
        let busy: i64 = client
            .query_one(
                "SELECT count(*) FROM kugetsu.tasks WHERE state IN ('queued', 'running')",
                &[],
            )
            .await
            .expect("a count")
            .get(0);
        if busy > 0 {
            eprintln!(
                "cluster_queue: the database holds {busy} queued or running tasks; \
                 use a database of its own"
            );
            std::process::exit(1);
        }
    }
    let prefix = new_task_id();
    let ids: Arc<Vec<String>> =
        Arc::new((0..args.tasks).map(|i| format!("{prefix}{i:08}")).collect());
    let repo = scratch.path().to_path_buf();

    // Submissions: K submitters share the ids.
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut submitters = Vec::new();
    for _ in 0..args.claimers {
        let (ids, next, submitter, repo) =
            (ids.clone(), next.clone(), submitter.clone(), repo.clone());
        submitters.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                submitter
                    .submit(&record(id, &repo))
                    .await
                    .unwrap_or_else(|e| panic!("submit {id}: {}", e.message));
            }
        }));
    }
    for s in submitters {
        s.await.expect("a submitter");
    }
    let submit_seconds = t0.elapsed().as_secs_f64();

    // Claims and finishes: K nodes until the queue is empty.
    let claims = Arc::new(AtomicUsize::new(0));
    let t1 = Instant::now();
    let mut claimers = Vec::new();
    for k in 0..args.claimers {
        let cluster = Arc::new(node_of(
            &args.url,
            &format!("bench-node-{k}"),
            &scratch.path().join(format!("node-{k}")),
        ));
        let (claims, slots) = (claims.clone(), args.slots);
        claimers.push(tokio::spawn(async move {
            let capacity = Capacity {
                slots,
                memory: u64::MAX,
                retention: None,
            };
            loop {
                let claimed = match node::claim(&cluster, &capacity).await {
                    Ok(c) => c,
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => panic!("claim: {e}"),
                };
                if claimed.is_empty() {
                    break;
                }
                claims.fetch_add(claimed.len(), Ordering::Relaxed);
                for task in claimed {
                    finish(&cluster, &task.id, task.fence).await;
                }
            }
        }));
    }
    for c in claimers {
        c.await.expect("a claimer");
    }
    let claim_seconds = t1.elapsed().as_secs_f64();
    let claims = claims.load(Ordering::Relaxed);

    // What the database holds afterwards.
    let client = submitter.db.client().await.expect("a connection");
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'finished' AND status = 'completed'),
                    count(*) FILTER (WHERE claims <> 1),
                    (SELECT count(*) FROM kugetsu.events e
                      WHERE e.task LIKE $1 || '%' AND e.body::jsonb->>'type' = 'finished')
               FROM kugetsu.tasks WHERE id LIKE $1 || '%'",
            &[&prefix],
        )
        .await
        .expect("the tally");
    let (finished, reclaimed, finished_events): (i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2));
    let completions = usize::try_from(finished).unwrap_or(0);
    let ok = completions == args.tasks
        && claims == args.tasks
        && reclaimed == 0
        && finished_events == i64::try_from(args.tasks).unwrap_or(-1);
    println!(
        "{}",
        serde_json::json!({
            "tasks": args.tasks,
            "claimers": args.claimers,
            "slots": args.slots,
            "submit_seconds": submit_seconds,
            "submits_per_s": args.tasks as f64 / submit_seconds,
            "claim_seconds": claim_seconds,
            "claims": claims,
            "completions": completions,
            "claims_completions_per_s": (claims + completions) as f64 / claim_seconds,
            "tasks_per_s": completions as f64 / claim_seconds,
            "tasks_claimed_more_than_once": reclaimed,
            "finished_events": finished_events,
            "ok": ok,
        })
    );
    if !ok {
        std::process::exit(1);
    }
}

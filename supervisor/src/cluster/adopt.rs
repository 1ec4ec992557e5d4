//! Laying a claimed task out on this node: its record, events and journal from the database
//! into the node's own task directory, and its worktree (from its checkpoint on a takeover).

use std::io::Write;
use std::path::Path;

use kugetsu_protocol::EventEnvelope;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::cluster::db::{DbError, timed};
use crate::config::Config;
use crate::task::events::Progress;
use crate::task::prepare::Prepared;
use crate::task::record::TaskRecord;

/// A task this node just claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub fence: i64,
    pub record: Value,
    /// Claims so far, this one included.
    pub claims: i32,
    pub checkpoint: Option<String>,
    pub checkpoint_ref: Option<String>,
    /// The node that held it before (a takeover), if any.
    pub previous_node: Option<String>,
}

/// What laying out a task gave.
#[derive(Debug)]
pub struct Laid {
    pub prepared: Prepared,
    pub progress: Progress,
    /// Lines and bytes of the journal as written from the database.
    pub journal_lines: i64,
    pub journal_bytes: u64,
}

/// Writes `lines` (each without its newline) to `path` through a temporary file.
pub(crate) fn write_lines(path: &Path, lines: &[String]) -> std::io::Result<u64> {
    let tmp = path.with_extension("cluster-tmp");
    let mut file = std::fs::File::create(&tmp)?;
    let mut bytes = 0u64;
    let mut out = std::io::BufWriter::new(&mut file);
    for line in lines {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        bytes += line.len() as u64 + 1;
    }
    out.flush()?;
    drop(out);
    file.sync_data()?;
    std::fs::rename(&tmp, path)?;
    Ok(bytes)
}

/// Lays out `claimed` in this node's state dir. Errors are the reason the task fails.
pub async fn lay_out(
    cluster: &Cluster,
    claimed: &Claimed,
    config: &Config,
) -> Result<Laid, String> {
    let mut record: TaskRecord = serde_json::from_value(claimed.record.clone())
        .map_err(|e| format!("the task's record in the cluster database is damaged: {e}"))?;
    if record.id != claimed.id {
        return Err(format!(
            "the cluster database's record of task {} names task {}",
            claimed.id, record.id
        ));
    }
    // The record names the submitting node's paths; this node's are its own.
    if record.worktree {
        record.workdir = cluster.state.worktree(&record.id);
    }
    // The deadline runs from the first start, on whichever node: set once, kept in the
    // database with the worktree's place (for `diff` and `merge` on any node).
    if record.deadline_unix_ms.is_none()
        && let Some(timeout) = record.timeout_ms
    {
        record.deadline_unix_ms = Some(
            crate::task::prepare::unix_ms(std::time::SystemTime::now()).saturating_add(timeout),
        );
    }
    let updated = serde_json::to_value(&record).map_err(|e| e.to_string())?;
    timed(async {
        let mut client = cluster.db.client().await?;
        let tx = client.transaction().await?;
        crate::cluster::db::check_fence(&tx, &record.id, claimed.fence).await?;
        tx.execute(
            "UPDATE kugetsu.tasks SET record = $2 WHERE id = $1",
            &[&record.id, &updated],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    })
    .await
    .map_err(|e| format!("cannot record the task's start in the cluster database: {e}"))?;
    let dir = cluster.state.task(&record.id);
    let (events, journal) = read_logs(cluster, &record.id)
        .await
        .map_err(|e| format!("cannot read the task's logs from the cluster database: {e}"))?;
    let envelopes: Vec<EventEnvelope> = events
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let io = |what: &str, e: std::io::Error| {
        format!(
            "cannot write the task's {what}: {}",
            crate::exit::describe_io(&e)
        )
    };
    std::fs::create_dir_all(dir.path()).map_err(|e| io("directory", e))?;
    dir.save(&record).map_err(|e| io("task.json", e))?;
    write_lines(&dir.events_file(), &events).map_err(|e| io("events.jsonl", e))?;
    let journal_bytes =
        write_lines(&dir.journal_file(), &journal).map_err(|e| io("journal.jsonl", e))?;
    if record.worktree {
        lay_out_worktree(cluster, claimed, &record).await?;
    }
    Ok(Laid {
        progress: Progress::of(&envelopes),
        prepared: Prepared {
            record,
            dir,
            config: config.clone(),
        },
        journal_lines: i64::try_from(journal.len()).unwrap_or(0),
        journal_bytes,
    })
}

async fn read_logs(cluster: &Cluster, task: &str) -> Result<(Vec<String>, Vec<String>), DbError> {
    timed(async {
        let client = cluster.db.client().await?;
        let events = client
            .query(
                "SELECT body FROM kugetsu.events WHERE task = $1 ORDER BY seq",
                &[&task],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let journal = client
            .query(
                "SELECT body FROM kugetsu.journal WHERE task = $1 ORDER BY line",
                &[&task],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok((events, journal))
    })
    .await
}

/// The worktree of a claimed task: from its checkpoint when it has one; else a worktree this
/// node already has; else, on a takeover, a fresh one at the base (the branch may exist); a
/// first claim leaves it to the normal start.
async fn lay_out_worktree(
    cluster: &Cluster,
    claimed: &Claimed,
    record: &TaskRecord,
) -> Result<(), String> {
    let branch = record
        .branch
        .clone()
        .unwrap_or_else(|| format!("kugetsu/{}", record.id));
    let checkpoint = match (
        &claimed.checkpoint,
        &claimed.checkpoint_ref,
        &cluster.checkpoint_remote,
    ) {
        (Some(commit), Some(reference), Some(remote)) => Some((commit, reference, remote)),
        _ => None,
    };
    if let Some((commit, reference, remote)) = checkpoint {
        if record.workdir.exists() {
            crate::task::git::remove_worktree(&record.repo, &record.workdir)
                .await
                .map_err(|e| format!("cannot replace this node's old worktree: {e}"))?;
        }
        return crate::cluster::checkpoint::restore(
            &record.repo,
            remote,
            reference,
            commit,
            &record.workdir,
            &branch,
        )
        .await
        .map_err(|e| format!("cannot restore the checkpoint {commit}: {e}"));
    }
    if record.workdir.exists() || claimed.claims <= 1 {
        return Ok(());
    }
    let base = record
        .base_commit
        .clone()
        .unwrap_or_else(|| "HEAD".to_owned());
    crate::cluster::checkpoint::restore_base(&record.repo, &record.workdir, &branch, &base)
        .await
        .map_err(|e| format!("cannot make the worktree at {base}: {e}"))
}

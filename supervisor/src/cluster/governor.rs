//! The governor's account state shared by a cluster's nodes (schema version 2), so N nodes on
//! one key stay within its limit.
//!
//! The database keeps, per provider account (the governor's account key: provider, base URL,
//! key fingerprint), a token bucket per limit in database time, the limits the headers taught,
//! a 429's hold, and the cluster's spending per day. The bucket arithmetic lives in the
//! migration's functions, so a permit is one statement ([`reserve`]): one round trip, the
//! account's row locked only for its duration.
//!
//! Nothing is held for a node: a reservation is a charge on a bucket that refills on its own,
//! so a node that dies with reservations out costs the account at most one window of
//! capacity, never more.
//!
//! When the database does not answer, [`Health`] decides: each node keeps to its share of the
//! limits (the limit divided by the nodes last seen up) on its local governor, says so in the
//! log, and looks at the database again every [`RETRY`] rather than on every permit.

use std::time::Duration;

use tokio::time::Instant;

use super::Cluster;
use super::db::{DbError, millis, timed};

/// How many buckets an account has: requests, tokens, input tokens, output tokens.
pub const BUCKETS: usize = 4;
/// The longest a permit waits for the database before the node goes on with its share.
pub const PERMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node that found the database unreachable keeps to its share before it asks
/// again.
pub const RETRY: Duration = Duration::from_secs(5);

/// What the cluster's ledger answered a permit.
#[derive(Debug, Clone, PartialEq)]
pub struct Reserved {
    /// How long until the charge is covered (zero: go now).
    pub wait: Duration,
    /// The account is held (a 429 seen by some node): for how long, and why. Nothing was
    /// charged.
    pub hold: Option<(Duration, String)>,
    /// The limits the headers reported, as any node saw them.
    pub learned: [Option<u64>; BUCKETS],
    /// What the cluster spent today (UTC).
    pub day_tokens: u64,
    pub day_usd: f64,
    /// Nodes up now (heard from within three lease times), at least 1.
    pub nodes: u32,
}

fn to_db(values: [Option<u64>; BUCKETS]) -> Vec<Option<i64>> {
    values
        .iter()
        .map(|v| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
        .collect()
}

fn costs(values: [u64; BUCKETS]) -> Vec<i64> {
    values
        .iter()
        .map(|&v| i64::try_from(v).unwrap_or(i64::MAX))
        .collect()
}

fn from_ms(ms: f64) -> Duration {
    if ms.is_finite() && ms > 0.0 {
        Duration::from_secs_f64(ms / 1000.0)
    } else {
        Duration::ZERO
    }
}

/// Bounds a permit's query by [`PERMIT_TIMEOUT`] (inside the pool's own [`timed`] bound).
async fn quick<T>(
    work: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    tokio::time::timeout(PERMIT_TIMEOUT, timed(work))
        .await
        .unwrap_or(Err(DbError::Timeout))
}

/// Charges `cost` (per bucket) on `account`'s shared buckets whose limit is known (the lower of
/// `configured` and what the headers taught), unless the account is held.
pub async fn reserve(
    cluster: &Cluster,
    account: &str,
    configured: [Option<u64>; BUCKETS],
    cost: [u64; BUCKETS],
) -> Result<Reserved, DbError> {
    let window = millis(cluster.ttl * 3);
    let (configured, cost) = (to_db(configured), costs(cost));
    let row = quick(async {
        let client = cluster.db.client().await?;
        let statement = client
            .prepare_cached("SELECT * FROM kugetsu.gov_reserve($1, $2, $3, $4)")
            .await?;
        Ok(client
            .query_one(&statement, &[&account, &configured, &cost, &window])
            .await?)
    })
    .await?;
    let hold_ms: f64 = row.get(1);
    let hold_why: String = row.get(2);
    let learned: Vec<Option<i64>> = row.get(3);
    let mut taught = [None; BUCKETS];
    for (slot, value) in taught.iter_mut().zip(learned) {
        *slot = value.and_then(|v| u64::try_from(v).ok());
    }
    let nodes: i32 = row.get(6);
    Ok(Reserved {
        wait: from_ms(row.get(0)),
        hold: (hold_ms > 0.0).then(|| (from_ms(hold_ms), hold_why)),
        learned: taught,
        day_tokens: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
        day_usd: row.get(5),
        nodes: u32::try_from(nodes).unwrap_or(1).max(1),
    })
}

/// Hands back `amount` per bucket on `account` (a reservation that never went out, or a
/// request's unused charge).
pub async fn refund(
    cluster: &Cluster,
    account: &str,
    amount: [u64; BUCKETS],
) -> Result<(), DbError> {
    let amount = costs(amount);
    timed(async {
        let client = cluster.db.client().await?;
        let statement = client
            .prepare_cached("SELECT kugetsu.gov_refund($1, $2)")
            .await?;
        client.execute(&statement, &[&account, &amount]).await?;
        Ok(())
    })
    .await
}

/// A response head on `account`: the limits it reported, the remaining counts, and a 429's
/// hold (how long, and why) for every node.
pub async fn observe(
    cluster: &Cluster,
    account: &str,
    learned: [Option<u64>; BUCKETS],
    remaining: [Option<u64>; BUCKETS],
    hold: Option<(Duration, String)>,
) -> Result<(), DbError> {
    let (learned, remaining) = (to_db(learned), to_db(remaining));
    let (hold_ms, why) = hold.map_or((0.0, String::new()), |(d, why)| (millis(d), why));
    timed(async {
        let client = cluster.db.client().await?;
        let statement = client
            .prepare_cached("SELECT kugetsu.gov_observe($1, $2, $3, $4, $5)")
            .await?;
        client
            .execute(
                &statement,
                &[&account, &learned, &remaining, &hold_ms, &why],
            )
            .await?;
        Ok(())
    })
    .await
}

/// Adds what a request spent to today's (UTC) total; returns the cluster's total today.
pub async fn spend(cluster: &Cluster, tokens: u64, usd: f64) -> Result<(u64, f64), DbError> {
    let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
    let row = timed(async {
        let client = cluster.db.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO kugetsu.gov_daily AS d (day, tokens, cost_usd)
                 VALUES ((now() AT TIME ZONE 'UTC')::date, $1, $2)
                 ON CONFLICT (day) DO UPDATE
                    SET tokens = d.tokens + excluded.tokens,
                        cost_usd = d.cost_usd + excluded.cost_usd
                 RETURNING tokens, cost_usd",
            )
            .await?;
        Ok(client.query_one(&statement, &[&tokens, &usd]).await?)
    })
    .await?;
    Ok((u64::try_from(row.get::<_, i64>(0)).unwrap_or(0), row.get(1)))
}

/// A node's share of a limit while the database is unreachable: the limit divided by the nodes
/// last seen up, rounded down, at least 1.
pub fn share(limit: u64, nodes: u32) -> u64 {
    (limit / u64::from(nodes.max(1))).max(1)
}

/// Whether the shared ledger is reachable, as this node last found it.
#[derive(Debug, Clone)]
pub struct Health {
    /// Nodes up at the last answer (what a share divides by).
    nodes: u32,
    /// Since when the database has not answered, and when to ask again.
    down: Option<(Instant, Instant)>,
}

/// A change [`Health`] reports, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The database stopped answering: the node keeps to `1/nodes` of each limit.
    Degraded { nodes: u32 },
    /// It answers again after `after`.
    Recovered { after: Duration },
}

impl Default for Health {
    fn default() -> Health {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            nodes: 1,
            down: None,
        }
    }

    /// Whether a permit should ask the database now (always, unless it failed less than
    /// [`RETRY`] ago).
    pub fn should_ask(&self, now: Instant) -> bool {
        self.down.is_none_or(|(_, next)| now >= next)
    }

    /// The divisor of each limit on the local governor: 1 while the database answers.
    pub fn divisor(&self) -> u32 {
        if self.down.is_some() { self.nodes } else { 1 }
    }

    /// The database answered, with `nodes` up.
    pub fn answered(&mut self, nodes: u32, now: Instant) -> Option<Change> {
        self.nodes = nodes.max(1);
        self.down.take().map(|(since, _)| Change::Recovered {
            after: now.saturating_duration_since(since),
        })
    }

    /// The database did not answer.
    pub fn failed(&mut self, now: Instant) -> Option<Change> {
        match &mut self.down {
            Some((_, next)) => {
                *next = now + RETRY;
                None
            }
            None => {
                self.down = Some((now, now + RETRY));
                Some(Change::Degraded { nodes: self.nodes })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_divides_the_limit_by_the_live_nodes_and_never_reaches_zero() {
        assert_eq!(share(240, 2), 120);
        assert_eq!(share(100, 3), 33);
        assert_eq!(share(1, 4), 1);
        assert_eq!(share(50, 0), 50);
    }

    #[test]
    fn an_unreachable_database_degrades_once_and_is_asked_again_after_a_while() {
        let t0 = Instant::now();
        let mut health = Health::new();
        assert!(health.should_ask(t0));
        assert_eq!(health.divisor(), 1);
        assert_eq!(health.answered(3, t0), None);
        assert_eq!(
            health.divisor(),
            1,
            "the share applies only while the database is down"
        );
        assert_eq!(health.failed(t0), Some(Change::Degraded { nodes: 3 }));
        assert_eq!(health.divisor(), 3);
        // Permits in the meantime go on with the share, without waiting for the database.
        assert!(!health.should_ask(t0 + Duration::from_secs(1)));
        assert!(health.should_ask(t0 + RETRY));
        // A second failure is not a second change, and pushes the next look out.
        assert_eq!(health.failed(t0 + RETRY), None);
        assert!(!health.should_ask(t0 + RETRY + Duration::from_secs(1)));
        assert_eq!(
            health.answered(2, t0 + RETRY * 2),
            Some(Change::Recovered { after: RETRY * 2 })
        );
        assert_eq!(health.divisor(), 1);
        assert!(health.should_ask(t0 + RETRY * 2));
    }

    #[test]
    fn durations_from_the_database_are_never_negative() {
        assert_eq!(from_ms(-5.0), Duration::ZERO);
        assert_eq!(from_ms(f64::NAN), Duration::ZERO);
        assert_eq!(from_ms(1500.0), Duration::from_millis(1500));
    }
}

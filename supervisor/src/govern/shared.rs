//! The governor of a cluster node: its accounts' state is the cluster's.
//!
//! The local governor decides first, as on a single box (daily budget, holds, its buckets,
//! concurrency). A permit it lets through then asks the cluster's ledger
//! ([`crate::cluster::governor`]) in one round trip: the ledger charges the permit on the
//! account's shared buckets and answers when it is covered, or that the account is held by a
//! 429 another node saw (copied into the local account, so the node's next permits wait for
//! it without asking), the limits any node learned, today's spending across the cluster, and
//! the nodes up. Response heads (limits, remaining counts, a 429's hold) and the end of a
//! request (its unused charge, its spending) go to the ledger from a spawned task, off the
//! worker's path.
//!
//! When the database does not answer within [`ledger::PERMIT_TIMEOUT`], the node goes on with
//! its local governor, each limit divided by the nodes last seen up (its share), says so in
//! the log, and asks again after [`ledger::RETRY`]; spending it could not record is added on the next
//! success. A single-box governor has none of this (`Inner::shared` is `None`).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use kugetsu_protocol::{PermitRequest, RateHeaders, Usage};
use tokio::time::Instant;

use super::{Charge, Charged, Governor, Poll, State, Step, Ticket, headers, refused, today};
use crate::cluster::Cluster;
use crate::cluster::governor::{self as ledger, BUCKETS, Change, Health};

/// What the waiting reason says while the cluster's buckets hold a permit.
const SHARED_WHY: &str = "the account's limits, shared by the cluster's nodes";

/// A node's link to its cluster's ledger.
#[derive(Debug)]
pub(super) struct Node {
    cluster: Arc<Cluster>,
    /// Whether the database answers (a plain lock: never held across an await).
    health: Mutex<Health>,
    /// Spending (tokens, dollars) not yet recorded in the database.
    unsynced: Mutex<(u64, f64)>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request's charge per bucket (requests, tokens, input, output).
fn costs(charge: Charge) -> [u64; BUCKETS] {
    [1, charge.tokens, charge.input, charge.output]
}

impl Node {
    pub(super) fn new(cluster: Arc<Cluster>) -> Node {
        Node {
            cluster,
            health: Mutex::new(Health::new()),
            unsynced: Mutex::new((0, 0.0)),
        }
    }

    /// Logs a change of the database's health.
    fn report(&self, change: Option<Change>, error: Option<&str>) {
        match change {
            Some(Change::Degraded { nodes }) => tracing::warn!(
                "cluster governor: the database did not answer ({}); until it does, node {} \
                 keeps to its share of each account's limits (1/{nodes}, the nodes last seen \
                 up) on its own governor",
                error.unwrap_or("no answer"),
                self.cluster.node_id
            ),
            Some(Change::Recovered { after }) => tracing::info!(
                "cluster governor: the database answers again after {} s; node {} shares the \
                 accounts' limits with the cluster again",
                after.as_secs(),
                self.cluster.node_id
            ),
            None => {}
        }
    }

    /// A response head: what it taught goes to the ledger (a 429's hold for every node).
    pub(super) fn head(
        &self,
        governor: &Governor,
        task: &str,
        id: u64,
        status: u16,
        headers: &RateHeaders,
    ) {
        let now = Instant::now();
        let (account, hold) = {
            let state = governor.lock();
            let Some(granted) = state.granted.get(&(task.to_owned(), id)) else {
                return;
            };
            let hold = (status == 429)
                .then(|| state.accounts.get(&granted.account))
                .flatten()
                .and_then(|a| {
                    a.hold_until.filter(|&h| h > now).map(|h| {
                        (
                            h - now,
                            format!("{} (seen by node {})", a.hold_why, self.cluster.node_id),
                        )
                    })
                });
            (granted.account.clone(), hold)
        };
        let seen = headers::observe(headers, SystemTime::now());
        let counters = [
            seen.requests,
            seen.tokens,
            seen.input_tokens,
            seen.output_tokens,
        ];
        let learned = counters.map(|c| c.and_then(|c| c.limit));
        let remaining = counters.map(|c| c.and_then(|c| c.remaining));
        if hold.is_none() && learned.iter().chain(&remaining).all(Option::is_none) {
            return;
        }
        let cluster = self.cluster.clone();
        spawn(async move {
            if let Err(e) = ledger::observe(&cluster, &account, learned, remaining, hold).await {
                tracing::debug!("cluster governor: a response head was not shared: {e}");
            }
        });
    }

    /// A request is over: its unused charge and its spending go to the ledger.
    pub(super) fn settle(
        self: &Arc<Node>,
        governor: &Governor,
        account: String,
        given: [u64; BUCKETS],
        usage: Option<Usage>,
    ) {
        let node = self.clone();
        let governor = governor.clone();
        spawn(async move {
            if given.iter().any(|&g| g > 0)
                && let Err(e) = ledger::refund(&node.cluster, &account, given).await
            {
                tracing::debug!("cluster governor: an unused charge was not handed back: {e}");
            }
            let Some(usage) = usage else {
                return;
            };
            let (tokens, usd) = {
                let mut unsynced = locked(&node.unsynced);
                let owed = (
                    unsynced.0 + usage.tokens(),
                    unsynced.1 + usage.cost_usd.unwrap_or(0.0),
                );
                *unsynced = (0, 0.0);
                owed
            };
            match ledger::spend(&node.cluster, tokens, usd).await {
                Ok((day_tokens, day_usd)) => governor.lock().merge_daily(day_tokens, day_usd),
                Err(e) => {
                    tracing::debug!("cluster governor: spending not recorded yet: {e}");
                    let mut unsynced = locked(&node.unsynced);
                    unsynced.0 += tokens;
                    unsynced.1 += usd;
                }
            }
        });
    }

    /// Hands back a charge the ledger holds for a permit that never went.
    fn refund(&self, account: String, cost: [u64; BUCKETS]) {
        let cluster = self.cluster.clone();
        spawn(async move {
            if let Err(e) = ledger::refund(&cluster, &account, cost).await {
                tracing::debug!("cluster governor: a reservation was not handed back: {e}");
            }
        });
    }
}

/// Runs `work` on the current runtime, if there is one (there always is in the daemon).
fn spawn(work: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(work);
    }
}

/// One look at a node's permit: the local governor first, then what the ledger answered.
pub(super) fn poll(
    state: &mut State,
    step: &mut Step,
    task: &str,
    request: &PermitRequest,
    deadline: Option<Instant>,
    charged: &mut Charged,
    now: Instant,
) -> Poll {
    if let Some(poll) = state.admit(request, deadline, charged, now, SystemTime::now()) {
        return poll;
    }
    match *step {
        Step::Local => state.grant(task, request, now),
        Step::Ask | Step::Asking => {
            *step = Step::Asking;
            Poll::Wait {
                until: now,
                reason: String::new(),
                rate_limited: false,
            }
        }
        Step::Asked { ready, .. } if ready > now => {
            if let Some(deadline) = deadline
                && ready > deadline
            {
                if let Some((_, marks)) = charged.take()
                    && state.settings.enabled
                    && let Some(account) = state.accounts.get_mut(&request.account)
                {
                    account.uncharge(Charge::of(request), marks, now);
                }
                return refused(request, ready, deadline, SHARED_WHY, now);
            }
            Poll::Wait {
                until: ready,
                reason: format!("rate limited: {SHARED_WHY}"),
                rate_limited: true,
            }
        }
        Step::Asked { .. } => state.grant(task, request, now),
    }
}

impl State {
    /// Divides each limit by `share` from now on (1: the whole limit).
    fn set_share(&mut self, share: u32, now: Instant) {
        if self.share == share {
            return;
        }
        self.share = share;
        for account in self.accounts.values_mut() {
            let limits = self.settings.rate_limits.get(&account.provider).copied();
            account.apply_limits(limits.as_ref(), share, now);
        }
    }

    /// The cluster spent `tokens` and `usd` today: the daily budget counts them.
    fn merge_daily(&mut self, tokens: u64, usd: f64) {
        if self.daily.day != today(SystemTime::now()) {
            return;
        }
        if tokens > self.daily.tokens || usd > self.daily.cost_usd {
            self.daily.tokens = self.daily.tokens.max(tokens);
            self.daily.cost_usd = self.daily.cost_usd.max(usd);
            self.save_ledger();
        }
    }
}

impl Ticket {
    /// Asks the cluster's ledger for this permit (the local governor let it through).
    pub(super) async fn consult(&mut self) {
        let Some(node) = self.governor.inner.shared.clone() else {
            self.step = Step::Local;
            return;
        };
        let now = Instant::now();
        if !locked(&node.health).should_ask(now) {
            self.step = Step::Asked {
                ready: now,
                charged: false,
            };
            return;
        }
        let (enabled, configured) = {
            let state = self.governor.lock();
            let limits = state.settings.rate_limits.get(&self.request.provider);
            (
                state.settings.enabled,
                [
                    limits.and_then(|l| l.rpm),
                    limits.and_then(|l| l.tpm),
                    None,
                    None,
                ],
            )
        };
        let (configured, cost) = if enabled {
            (configured, costs(Charge::of(&self.request)))
        } else {
            ([None; BUCKETS], [0; BUCKETS])
        };
        let answer = ledger::reserve(&node.cluster, &self.request.account, configured, cost).await;
        let now = Instant::now();
        match answer {
            Ok(reserved) => {
                let change = locked(&node.health).answered(reserved.nodes, now);
                node.report(change, None);
                let mut state = self.governor.lock();
                state.set_share(1, now);
                state.merge_daily(reserved.day_tokens, reserved.day_usd);
                let limits = state
                    .settings
                    .rate_limits
                    .get(&self.request.provider)
                    .copied();
                let share = state.share;
                let account = state.accounts.get_mut(&self.request.account);
                if enabled && let Some(account) = account {
                    let mut taught = false;
                    for (mine, theirs) in account.learned.iter_mut().zip(reserved.learned) {
                        if mine.is_none() && theirs.is_some() {
                            *mine = theirs;
                            taught = true;
                        }
                    }
                    if taught {
                        account.apply_limits(limits.as_ref(), share, now);
                    }
                    if let Some((hold, why)) = reserved.hold {
                        // Nothing was charged: asked again once the hold is over.
                        account.hold(now + hold, &why);
                        self.step = Step::Ask;
                        return;
                    }
                }
                self.step = Step::Asked {
                    ready: now + reserved.wait,
                    charged: enabled,
                };
            }
            Err(e) => {
                let (change, share) = {
                    let mut health = locked(&node.health);
                    (health.failed(now), health.divisor())
                };
                node.report(change, Some(&e.to_string()));
                self.governor.lock().set_share(share, now);
                self.step = Step::Asked {
                    ready: now,
                    charged: false,
                };
            }
        }
    }

    /// Hands back what the ledger holds for this permit, which will not go.
    pub(super) fn give_back(&self) {
        if let Step::Asked { charged: true, .. } = self.step
            && let Some(node) = &self.governor.inner.shared
        {
            node.refund(
                self.request.account.clone(),
                costs(Charge::of(&self.request)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::request;
    use super::super::{Answer, Settings};
    use super::*;

    fn on() -> State {
        State::new(
            Settings {
                enabled: true,
                ..Settings::default()
            },
            None,
        )
    }

    fn look(
        s: &mut State,
        step: &mut Step,
        id: u64,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Poll {
        poll(s, step, "t", &request(id), deadline, &mut None, now)
    }

    #[test]
    fn a_permit_the_local_governor_lets_through_asks_the_ledger_before_it_goes() {
        let mut s = on();
        let t0 = Instant::now();
        let mut step = Step::Ask;
        let Poll::Wait {
            until,
            reason,
            rate_limited: false,
        } = look(&mut s, &mut step, 1, None, t0)
        else {
            panic!("granted without asking the ledger");
        };
        assert_eq!((until, reason.as_str(), step), (t0, "", Step::Asking));
        assert!(
            s.granted.is_empty(),
            "nothing goes before the ledger answers"
        );
        // The ledger says the charge is covered in 3 s.
        step = Step::Asked {
            ready: t0 + Duration::from_secs(3),
            charged: true,
        };
        let Poll::Wait {
            until,
            reason,
            rate_limited: true,
        } = look(&mut s, &mut step, 1, None, t0)
        else {
            panic!("the ledger's wait was not kept");
        };
        assert_eq!(until, t0 + Duration::from_secs(3));
        assert!(reason.contains("shared by the cluster"), "{reason}");
        assert_eq!(
            look(&mut s, &mut step, 1, None, t0 + Duration::from_secs(3)),
            Poll::Ready(Answer::Grant)
        );
        assert_eq!(s.granted.len(), 1);
    }

    #[test]
    fn a_ledger_wait_past_the_deadline_is_refused() {
        let mut s = on();
        let t0 = Instant::now();
        let mut step = Step::Asked {
            ready: t0 + Duration::from_secs(60),
            charged: true,
        };
        let Poll::Ready(Answer::Deny {
            reason,
            pause: false,
        }) = look(&mut s, &mut step, 1, Some(t0 + Duration::from_secs(10)), t0)
        else {
            panic!("a wait past the deadline was not refused");
        };
        assert!(reason.contains("past the task's deadline"), "{reason}");
        assert!(s.granted.is_empty());
    }

    #[test]
    fn a_hold_another_node_saw_stops_the_local_governor_first() {
        let mut s = on();
        let t0 = Instant::now();
        let mut step = Step::Ask;
        look(&mut s, &mut step, 1, None, t0);
        // What `consult` does with a hold: the account waits, and asks again after.
        if let Some(account) = s.accounts.get_mut(&request(1).account) {
            account.hold(
                t0 + Duration::from_secs(5),
                "retry-after 5.0 s after a 429 (seen by node a)",
            );
        }
        let mut step = Step::Ask;
        let Poll::Wait {
            until,
            reason,
            rate_limited: true,
        } = look(&mut s, &mut step, 2, None, t0)
        else {
            panic!("the hold did not hold");
        };
        assert_eq!(until, t0 + Duration::from_secs(5));
        assert!(reason.contains("seen by node a"), "{reason}");
        assert_eq!(step, Step::Ask, "the ledger is not asked during a hold");
    }

    #[test]
    fn without_the_database_each_node_keeps_to_its_share_of_the_limit() {
        let mut s = on();
        let t0 = Instant::now();
        let mut step = Step::Local;
        assert_eq!(
            look(&mut s, &mut step, 1, None, t0),
            Poll::Ready(Answer::Grant)
        );
        // One a second; the first response told the limit.
        let headers = [("x-ratelimit-limit-requests", "60")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        s.head("t", 1, 200, &headers, t0);
        s.set_share(2, t0);
        let limit = s
            .accounts
            .values()
            .next()
            .and_then(|a| a.requests.as_ref().map(|b| b.limit()));
        assert_eq!(limit, Some(30));
        s.set_share(1, t0);
        let limit = s
            .accounts
            .values()
            .next()
            .and_then(|a| a.requests.as_ref().map(|b| b.limit()));
        assert_eq!(limit, Some(60));
    }

    #[test]
    fn the_clusters_spending_counts_against_the_daily_budget() {
        let mut s = State::new(
            Settings {
                daily_tokens: Some(1000),
                ..Settings::default()
            },
            None,
        );
        let t0 = Instant::now();
        let mut step = Step::Asked {
            ready: t0,
            charged: false,
        };
        assert_eq!(
            look(&mut s, &mut step, 1, None, t0),
            Poll::Ready(Answer::Grant)
        );
        s.merge_daily(1200, 0.0);
        let Poll::Wait {
            reason,
            rate_limited: false,
            ..
        } = look(&mut s, &mut step, 2, None, t0)
        else {
            panic!("the cluster's spending did not count");
        };
        assert!(reason.contains("daily budget of 1000 tokens"), "{reason}");
        // A lower figure from the database never lowers what this node knows it spent.
        s.merge_daily(10, 0.0);
        assert_eq!(s.daily.tokens, 1200);
    }
}

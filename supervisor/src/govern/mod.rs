//! The fleet governor: shadows share a provider account's rate limits and the daemon's daily
//! budget instead of fighting over them.
//!
//! One [`Governor`] per supervisor (the daemon's serves all its shadows; `kugetsu run` has one
//! for its single shadow). A governed worker asks a permit before every model request (see
//! the worker channel's `permit`); the governor answers once the request may go:
//!
//! - Accounts are told apart by provider, base URL and a fingerprint of the key; each has a
//!   [`Bucket`] per known limit (requests, tokens, and Anthropic's input and output tokens).
//!   Limits come from `[rate_limits.PROVIDER]` and from response headers (the lower wins), the
//!   remaining counts the headers report replace the bucket's own guess, and a request is
//!   charged its estimated input plus its output cap in tokens.
//! - Until an account's first response head is seen, one request goes at a time (its headers
//!   tell the limits before the rest of the fleet piles in).
//! - A 429 holds the whole account for its `retry-after` (else a backoff doubling from 1 s),
//!   halves the account's concurrency, which then grows back by one per successful response.
//! - A wait that cannot end before the task's deadline is refused with the reason; otherwise a
//!   task waits as long as it takes, shown as `waiting` with the reason.
//! - The daily budget: once today's (UTC) tokens or dollars reach `daily_budget_*`, permits
//!   wait (and the daemon starts no queued task) until the day rolls over or the budget is
//!   raised. What was spent today is kept in `<state_dir>/usage/daily.json`.
//! - On a cluster node the accounts' state is the cluster's ([`shared`]): a permit the local
//!   governor lets through is then charged on the account's buckets in the database, a 429
//!   holds every node, the daily budget counts every node's spending. A single-box governor
//!   never touches any of it.
//!
//! All decisions happen under one lock in plain methods ([`State`]); waiting is a
//! [`Ticket`]'s loop over them.

pub mod bucket;
pub mod headers;
mod shared;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kugetsu_protocol::{PermitRequest, RateHeaders, Usage};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{Governance, RateLimit};
use bucket::Bucket;

/// How long a first request may go without its response head before others may follow.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest backoff after a 429 that gave no `retry-after`.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Concurrency above this is "unlimited" again.
const OPEN_CAP: u32 = 256;
/// Longest a waiting permit sleeps before it looks again (a reload or a new day may free it).
const RECHECK: Duration = Duration::from_secs(5);

/// The answer to a permit.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Grant,
    /// Refused: `pause` for a budget, else the request fails with `reason`.
    Deny {
        reason: String,
        pause: bool,
    },
}

/// What one look at a permit found.
#[derive(Debug, Clone, PartialEq)]
pub enum Poll {
    Ready(Answer),
    /// Not yet: look again at `until` (or when something changes). `rate_limited` says the
    /// wait is the provider's limit (an event is due), not the daily budget.
    Wait {
        until: Instant,
        reason: String,
        rate_limited: bool,
    },
}

/// The governor's settings, from the config.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Whether rate limits are applied (`governor`); budgets hold either way.
    pub enabled: bool,
    pub rate_limits: std::collections::BTreeMap<String, RateLimit>,
    pub daily_tokens: Option<u64>,
    pub daily_usd: Option<f64>,
}

impl Settings {
    /// The daemon's settings from its config.
    pub fn daemon(g: &Governance) -> Settings {
        Settings {
            enabled: g.enabled,
            rate_limits: g.rate_limits.clone(),
            daily_tokens: g.daily_budget_tokens,
            daily_usd: g.daily_budget_usd,
        }
    }

    /// `kugetsu run`'s: the same without the daemon's daily budget.
    pub fn run(g: &Governance) -> Settings {
        Settings {
            daily_tokens: None,
            daily_usd: None,
            ..Settings::daemon(g)
        }
    }

    /// Whether permits are needed at all.
    pub fn governs(&self) -> bool {
        self.enabled || self.daily_tokens.is_some() || self.daily_usd.is_some()
    }
}

/// Handle to the governor; cheap to clone.
#[derive(Debug, Clone)]
pub struct Governor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Woken when something may free a waiting permit.
    changed: Notify,
    /// On a cluster node: the cluster's ledger, asked before a permit goes (`None` on a
    /// single box, which then pays nothing for it).
    shared: Option<Arc<shared::Node>>,
}

/// Counters of one account, for `/metrics`, the bench and the docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AccountStats {
    pub granted: u64,
    /// Responses answered 429.
    pub throttled: u64,
    /// Permits that had to wait.
    pub waited: u64,
}

/// Everything the governor knows, behind its lock.
#[derive(Debug)]
pub struct State {
    settings: Settings,
    accounts: HashMap<String, Account>,
    /// Permits out: (task, id) -> what they hold.
    granted: HashMap<(String, u64), Granted>,
    /// Tasks waiting for a permit now, and why.
    waiting: HashMap<String, String>,
    daily: Daily,
    ledger: Option<PathBuf>,
    /// What each limit is divided by: 1, except on a cluster node whose database is
    /// unreachable (then the nodes up, so together they stay within the limit).
    share: u32,
}

#[derive(Debug)]
struct Account {
    provider: String,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    input: Option<Bucket>,
    output: Option<Bucket>,
    /// Limits the headers reported, per bucket (requests, tokens, input, output).
    learned: [Option<u64>; 4],
    hold_until: Option<Instant>,
    hold_why: String,
    in_flight: u32,
    /// Most requests in flight at once (`u32::MAX`: no cap).
    cap: u32,
    /// When the first request went out, until its response head is seen.
    probe: Option<Instant>,
    /// Whether any response head was seen.
    seen_head: bool,
    /// 429s in a row.
    strikes: u32,
    stats: AccountStats,
}

/// What a granted permit holds.
#[derive(Debug, Clone)]
struct Granted {
    account: String,
    /// Each bucket's stamp when this permit went out (see [`Bucket::sync`]).
    stamps: [f64; 4],
    charge: Charge,
}

/// What a ticket reserved so far: when it is covered, and on which buckets (a bucket made
/// after the ticket first looked, when the first response taught the limits, is charged on
/// its next look).
pub type Charged = Option<(Instant, [bool; 4])>;

/// What a request is charged, per bucket.
#[derive(Debug, Clone, Copy, Default)]
struct Charge {
    tokens: u64,
    input: u64,
    output: u64,
}

impl Charge {
    fn of(request: &PermitRequest) -> Charge {
        Charge {
            tokens: request.input_tokens + request.max_output_tokens,
            input: request.input_tokens,
            output: request.max_output_tokens,
        }
    }
}

/// Today's spending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Daily {
    /// Days since 1970-01-01, UTC.
    day: u64,
    tokens: u64,
    cost_usd: f64,
}

/// The refusal of a wait that would end after the task's deadline.
fn refused(
    request: &PermitRequest,
    until: Instant,
    deadline: Instant,
    why: &str,
    now: Instant,
) -> Poll {
    Poll::Ready(Answer::Deny {
        reason: format!(
            "rate limit: {} asks to wait {:.0} s ({why}), past the task's deadline in {:.0} s",
            request.provider,
            until.saturating_duration_since(now).as_secs_f64().ceil(),
            deadline.saturating_duration_since(now).as_secs_f64()
        ),
        pause: false,
    })
}

fn today(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

impl Account {
    fn new(
        provider: &str,
        limits: Option<&RateLimit>,
        share: u32,
        enabled: bool,
        now: Instant,
    ) -> Account {
        let mut account = Account {
            provider: provider.to_owned(),
            requests: None,
            tokens: None,
            input: None,
            output: None,
            learned: [None; 4],
            hold_until: None,
            hold_why: String::new(),
            in_flight: 0,
            cap: if enabled { 1 } else { u32::MAX },
            probe: None,
            seen_head: false,
            strikes: 0,
            stats: AccountStats::default(),
        };
        account.apply_limits(limits, share, now);
        account
    }

    /// Sets each bucket's limit to the lower of the config's and the headers' (divided by
    /// `share`, see [`State`]).
    fn apply_limits(&mut self, limits: Option<&RateLimit>, share: u32, now: Instant) {
        let configured = [
            limits.and_then(|l| l.rpm),
            limits.and_then(|l| l.tpm),
            None,
            None,
        ];
        let buckets = [
            &mut self.requests,
            &mut self.tokens,
            &mut self.input,
            &mut self.output,
        ];
        for ((bucket, learned), configured) in buckets.into_iter().zip(self.learned).zip(configured)
        {
            let limit = match (learned, configured) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let limit = match limit {
                Some(limit) if share > 1 => Some(crate::cluster::governor::share(limit, share)),
                limit => limit,
            };
            match (limit, bucket.as_mut()) {
                (None, _) => *bucket = None,
                (Some(limit), Some(b)) => b.set_limit(limit, now),
                (Some(limit), None) => *bucket = Some(Bucket::new(limit, now)),
            }
        }
    }

    fn cap_now(&mut self, now: Instant) -> u32 {
        if let Some(started) = self.probe
            && now.saturating_duration_since(started) >= PROBE_TIMEOUT
        {
            // The first response is slow to begin: do not keep the fleet behind it.
            self.probe = None;
            if !self.seen_head && self.cap == 1 {
                self.cap = u32::MAX;
            }
        }
        self.cap
    }

    fn buckets(&mut self, charge: Charge) -> [(&mut Option<Bucket>, u64); 4] {
        [
            (&mut self.requests, 1),
            (&mut self.tokens, charge.tokens),
            (&mut self.input, charge.input),
            (&mut self.output, charge.output),
        ]
    }

    /// Charges `charge` on every bucket not yet in `marks`; returns when all of the ticket's
    /// reservations are covered.
    fn charge(&mut self, charge: Charge, charged: &mut Charged, now: Instant) -> Instant {
        let (mut ready, mut marks) = charged.unwrap_or((now, [false; 4]));
        for (mark, (bucket, cost)) in marks.iter_mut().zip(self.buckets(charge)) {
            if let Some(bucket) = bucket
                && !*mark
            {
                ready = ready.max(now + bucket.reserve(cost, now));
                *mark = true;
            }
        }
        *charged = Some((ready, marks));
        ready
    }

    /// A reservation goes out: the buckets' stamps for a later sync.
    fn send(&mut self, charge: Charge) -> [f64; 4] {
        let mut stamps = [0.0; 4];
        for (stamp, (bucket, cost)) in stamps.iter_mut().zip(self.buckets(charge)) {
            if let Some(bucket) = bucket {
                *stamp = bucket.send(cost);
            }
        }
        stamps
    }

    fn uncharge(&mut self, charge: Charge, marks: [bool; 4], now: Instant) {
        for (mark, (bucket, cost)) in marks.into_iter().zip(self.buckets(charge)) {
            if let Some(bucket) = bucket
                && mark
            {
                bucket.cancel(cost, now);
            }
        }
    }

    fn limits_text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(b) = &self.requests {
            parts.push(format!("{} requests/min", b.limit()));
        }
        if let Some(b) = &self.tokens {
            parts.push(format!("{} tokens/min", b.limit()));
        }
        if let Some(b) = &self.input {
            parts.push(format!("{} input tokens/min", b.limit()));
        }
        if let Some(b) = &self.output {
            parts.push(format!("{} output tokens/min", b.limit()));
        }
        if parts.is_empty() {
            "its concurrency".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

impl State {
    fn new(settings: Settings, ledger: Option<PathBuf>) -> State {
        let now = SystemTime::now();
        let mut daily = ledger
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|bytes| serde_json::from_slice::<Daily>(&bytes).ok())
            .unwrap_or_default();
        if daily.day != today(now) {
            daily = Daily {
                day: today(now),
                ..Daily::default()
            };
        }
        State {
            settings,
            accounts: HashMap::new(),
            granted: HashMap::new(),
            waiting: HashMap::new(),
            daily,
            ledger,
            share: 1,
        }
    }

    /// Why the daily budget stops new requests now, if it does.
    fn daily_spent(&mut self, now: SystemTime) -> Option<String> {
        if self.daily.day != today(now) {
            self.daily = Daily {
                day: today(now),
                ..Daily::default()
            };
        }
        if let Some(limit) = self.settings.daily_tokens
            && self.daily.tokens >= limit
        {
            return Some(format!(
                "the daily budget of {limit} tokens is spent ({} used today, UTC); waiting for \
                 tomorrow or a higher daily_budget_tokens",
                self.daily.tokens
            ));
        }
        if let Some(limit) = self.settings.daily_usd
            && self.daily.cost_usd >= limit
        {
            return Some(format!(
                "the daily budget of ${limit:.2} is spent (${:.4} used today, UTC); waiting for \
                 tomorrow or a higher daily_budget_usd",
                self.daily.cost_usd
            ));
        }
        None
    }

    /// One look at a permit: `charged` keeps what this ticket already reserved and when it
    /// is covered, so looking again never charges twice.
    fn poll(
        &mut self,
        task: &str,
        request: &PermitRequest,
        deadline: Option<Instant>,
        charged: &mut Charged,
        now: Instant,
        wall: SystemTime,
    ) -> Poll {
        match self.admit(request, deadline, charged, now, wall) {
            Some(poll) => poll,
            None => self.grant(task, request, now),
        }
    }

    /// Whether a permit must wait or is refused (`None`: it may go now).
    fn admit(
        &mut self,
        request: &PermitRequest,
        deadline: Option<Instant>,
        charged: &mut Charged,
        now: Instant,
        wall: SystemTime,
    ) -> Option<Poll> {
        if let Some(reason) = self.daily_spent(wall) {
            let midnight = Duration::from_secs((self.daily.day + 1) * 86_400)
                .saturating_sub(wall.duration_since(UNIX_EPOCH).unwrap_or_default());
            return Some(Poll::Wait {
                until: now + midnight.min(RECHECK),
                reason,
                rate_limited: false,
            });
        }
        let enabled = self.settings.enabled;
        let account = self.account_for(request, now);
        if enabled {
            let mut until = None;
            let mut why = String::new();
            if let Some(hold) = account.hold_until.filter(|&h| h > now) {
                until = Some(hold);
                why.clone_from(&account.hold_why);
            }
            if until.is_none() {
                let ready = account.charge(Charge::of(request), charged, now);
                if ready > now {
                    until = Some(ready);
                    why = format!("the account's limit of {}", account.limits_text());
                }
            }
            if let Some(until) = until {
                if let Some(deadline) = deadline
                    && until > deadline
                {
                    if let Some((_, marks)) = charged.take() {
                        account.uncharge(Charge::of(request), marks, now);
                    }
                    return Some(refused(request, until, deadline, &why, now));
                }
                return Some(Poll::Wait {
                    until,
                    reason: format!("rate limited: {why}"),
                    rate_limited: true,
                });
            }
            if account.in_flight >= account.cap_now(now) {
                // Looked at again when a permit ends (a notification), or when a slow first
                // response stops holding the fleet back.
                let until = account
                    .probe
                    .map_or(now + RECHECK, |p| (p + PROBE_TIMEOUT).min(now + RECHECK));
                return Some(Poll::Wait {
                    until,
                    reason: format!(
                        "rate limited: {} of {} requests in flight on the account",
                        account.in_flight,
                        if account.cap == u32::MAX {
                            0
                        } else {
                            account.cap
                        }
                    ),
                    rate_limited: true,
                });
            }
        } else if charged.is_none() {
            *charged = Some((now, [false; 4]));
        }
        None
    }

    /// The account `request` goes to, made with the configured limits on first use.
    fn account_for(&mut self, request: &PermitRequest, now: Instant) -> &mut Account {
        let enabled = self.settings.enabled;
        let limits = self.settings.rate_limits.get(&request.provider).copied();
        let share = self.share;
        self.accounts
            .entry(request.account.clone())
            .or_insert_with(|| {
                Account::new(&request.provider, limits.as_ref(), share, enabled, now)
            })
    }

    /// A permit [`State::admit`] let through goes out.
    fn grant(&mut self, task: &str, request: &PermitRequest, now: Instant) -> Poll {
        let enabled = self.settings.enabled;
        let account = self.account_for(request, now);
        let charge = if enabled {
            Charge::of(request)
        } else {
            Charge::default()
        };
        let stamps = if enabled {
            account.send(charge)
        } else {
            [0.0; 4]
        };
        account.in_flight += 1;
        account.stats.granted += 1;
        if !account.seen_head && account.probe.is_none() {
            account.probe = Some(now);
        }
        self.granted.insert(
            (task.to_owned(), request.id),
            Granted {
                account: request.account.clone(),
                stamps,
                charge,
            },
        );
        Poll::Ready(Answer::Grant)
    }

    /// A permit's response began.
    fn head(&mut self, task: &str, id: u64, status: u16, headers: &RateHeaders, now: Instant) {
        let Some(granted) = self.granted.get(&(task.to_owned(), id)).cloned() else {
            return;
        };
        let limits = self.settings.rate_limits.clone();
        let share = self.share;
        let Some(account) = self.accounts.get_mut(&granted.account) else {
            return;
        };
        let seen = headers::observe(headers, SystemTime::now());
        let counters = [
            seen.requests,
            seen.tokens,
            seen.input_tokens,
            seen.output_tokens,
        ];
        for (i, counter) in counters.iter().enumerate() {
            if let Some(limit) = counter.and_then(|c| c.limit) {
                account.learned[i] = Some(limit);
            }
        }
        account.apply_limits(limits.get(&account.provider), share, now);
        let buckets = [
            &mut account.requests,
            &mut account.tokens,
            &mut account.input,
            &mut account.output,
        ];
        for ((bucket, counter), stamp) in buckets.into_iter().zip(counters).zip(granted.stamps) {
            if let (Some(bucket), Some(remaining)) =
                (bucket.as_mut(), counter.and_then(|c| c.remaining))
            {
                bucket.sync(remaining, stamp, now);
            }
        }
        // A limit with no rate we know, used up: wait for its reset.
        if let Some(requests) = seen.requests
            && account.requests.is_none()
            && requests.remaining == Some(0)
            && let Some(reset) = requests.reset
        {
            account.hold(
                now + reset.min(MAX_BACKOFF),
                "the account's requests are used up",
            );
        }
        let first = !account.seen_head;
        account.seen_head = true;
        account.probe = None;
        if status == 429 {
            account.stats.throttled += 1;
            account.strikes += 1;
            let wait = seen.retry_after.unwrap_or_else(|| {
                Duration::from_secs(1 << account.strikes.saturating_sub(1).min(6)).min(MAX_BACKOFF)
            });
            let why = match seen.retry_after {
                Some(after) => format!("retry-after {:.1} s after a 429", after.as_secs_f64()),
                None => format!(
                    "a 429 without retry-after, backing off {} s",
                    wait.as_secs()
                ),
            };
            account.hold(now + wait, &why);
            account.cap = (account.in_flight / 2).max(1);
        } else if first {
            // The first response told the limits: the rest of the fleet may follow.
            account.cap = u32::MAX;
        } else if (200..300).contains(&status) {
            account.strikes = 0;
            account.cap = match account.cap {
                u32::MAX => u32::MAX,
                cap if cap + 1 >= OPEN_CAP => u32::MAX,
                cap => cap + 1,
            };
        }
    }

    /// A permit's request is over. Returns its account and what was handed back on each
    /// bucket (requests, tokens, input, output).
    fn end(
        &mut self,
        task: &str,
        id: u64,
        usage: Option<Usage>,
        now: Instant,
    ) -> Option<(String, [u64; 4])> {
        let mut ended = None;
        if let Some(granted) = self.granted.remove(&(task.to_owned(), id))
            && let Some(account) = self.accounts.get_mut(&granted.account)
        {
            account.in_flight = account.in_flight.saturating_sub(1);
            let mut given = [0; 4];
            if let Some(usage) = usage {
                let refunds = [
                    (
                        &mut account.tokens,
                        granted.charge.tokens.saturating_sub(usage.tokens()),
                    ),
                    (
                        &mut account.input,
                        granted.charge.input.saturating_sub(usage.input_tokens),
                    ),
                    (
                        &mut account.output,
                        granted.charge.output.saturating_sub(usage.output_tokens),
                    ),
                ];
                for ((bucket, amount), given) in refunds.into_iter().zip(&mut given[1..]) {
                    if let Some(bucket) = bucket {
                        if !bucket.synced() {
                            *given = amount;
                        }
                        bucket.refund(amount, now);
                    }
                }
            }
            ended = Some((granted.account, given));
        }
        if let Some(usage) = usage {
            let wall = SystemTime::now();
            self.daily_spent(wall);
            self.daily.tokens += usage.tokens();
            self.daily.cost_usd += usage.cost_usd.unwrap_or(0.0);
            self.save_ledger();
        }
        ended
    }

    fn save_ledger(&self) {
        let Some(path) = &self.ledger else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(&self.daily) else {
            return;
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("json.tmp");
        if std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// Every permit `task` holds is given back (its worker is gone).
    fn forget(&mut self, task: &str) {
        let ids: Vec<(String, u64)> = self
            .granted
            .keys()
            .filter(|(t, _)| t == task)
            .cloned()
            .collect();
        for key in ids {
            if let Some(granted) = self.granted.remove(&key)
                && let Some(account) = self.accounts.get_mut(&granted.account)
            {
                account.in_flight = account.in_flight.saturating_sub(1);
            }
        }
        self.waiting.remove(task);
    }
}

impl Account {
    fn hold(&mut self, until: Instant, why: &str) {
        if self.hold_until.is_none_or(|h| h < until) {
            self.hold_until = Some(until);
            why.clone_into(&mut self.hold_why);
        }
    }
}

impl Governor {
    /// A governor with `settings`, keeping today's spending in `ledger` (the daemon's
    /// `<state_dir>/usage/daily.json`) when given. On a cluster node (once `serve` joined
    /// its cluster) it shares its accounts' state with the other nodes.
    pub fn new(settings: Settings, ledger: Option<PathBuf>) -> Governor {
        Governor {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(settings, ledger)),
                changed: Notify::new(),
                shared: crate::cluster::active()
                    .map(|cluster| Arc::new(shared::Node::new(cluster.clone()))),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// New settings (a reload); waiting permits look again.
    pub fn configure(&self, settings: Settings) {
        let now = Instant::now();
        {
            let mut state = self.lock();
            let share = state.share;
            for account in state.accounts.values_mut() {
                let limits = settings.rate_limits.get(&account.provider).copied();
                account.apply_limits(limits.as_ref(), share, now);
                if !settings.enabled {
                    account.cap = u32::MAX;
                    account.hold_until = None;
                }
            }
            state.settings = settings;
        }
        self.inner.changed.notify_waiters();
    }

    /// Whether tasks must ask permits (rate limits on, or a daily budget set).
    pub fn governs(&self) -> bool {
        self.lock().settings.governs()
    }

    /// Why the daily budget stops new work now, if it does.
    pub fn daily_spent(&self) -> Option<String> {
        self.lock().daily_spent(SystemTime::now())
    }

    /// A permit request of `task`'s worker, answered by [`Ticket::poll`] / [`Ticket::wait`].
    pub fn ticket(&self, task: &str, request: PermitRequest, deadline: Option<Instant>) -> Ticket {
        Ticket {
            governor: self.clone(),
            task: task.to_owned(),
            request,
            deadline,
            charged: None,
            waited: false,
            done: false,
            step: if self.inner.shared.is_some() {
                Step::Ask
            } else {
                Step::Local
            },
        }
    }

    /// A permit's response began with `status` and `headers`.
    pub fn head(&self, task: &str, id: u64, status: u16, headers: &RateHeaders) {
        self.lock().head(task, id, status, headers, Instant::now());
        if let Some(node) = &self.inner.shared {
            node.head(self, task, id, status, headers);
        }
        self.inner.changed.notify_waiters();
    }

    /// A permit's request is over.
    pub fn end(&self, task: &str, id: u64, usage: Option<Usage>) {
        let ended = self.lock().end(task, id, usage, Instant::now());
        if let (Some(node), Some((account, given))) = (&self.inner.shared, ended) {
            node.settle(self, account, given, usage);
        }
        self.inner.changed.notify_waiters();
    }

    /// `task`'s worker is gone: what it held is free.
    pub fn forget(&self, task: &str) {
        self.lock().forget(task);
        self.inner.changed.notify_waiters();
    }

    /// Why `task` waits for a permit now, if it does.
    pub fn waiting(&self, task: &str) -> Option<String> {
        self.lock().waiting.get(task).cloned()
    }
}

/// One permit request on its way to an answer. Dropping it before then gives back what it
/// reserved.
#[derive(Debug)]
pub struct Ticket {
    governor: Governor,
    task: String,
    request: PermitRequest,
    deadline: Option<Instant>,
    /// What this ticket reserved, once it did.
    charged: Charged,
    /// Whether it had to wait.
    waited: bool,
    done: bool,
    /// Where it stands with the cluster's ledger.
    step: Step,
}

/// Where a permit stands with the cluster's ledger (see [`shared`]).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// A single-box governor: there is none.
    Local,
    /// To be asked once the local governor lets the permit through.
    Ask,
    /// The local governor let it through: the ledger is being asked ([`Ticket::wait`]).
    Asking,
    /// The ledger answered: the permit is covered at `ready`; `charged` says whether the
    /// ledger holds a charge for it, given back if the permit never goes.
    Asked { ready: Instant, charged: bool },
}

impl Ticket {
    /// The permit's id.
    pub fn id(&self) -> u64 {
        self.request.id
    }

    /// The provider asked.
    pub fn provider(&self) -> &str {
        &self.request.provider
    }

    /// One look: an answer, or how long to wait.
    pub fn poll(&mut self) -> Poll {
        let now = Instant::now();
        let mut state = self.governor.lock();
        let poll = match self.step {
            Step::Local => state.poll(
                &self.task,
                &self.request,
                self.deadline,
                &mut self.charged,
                now,
                SystemTime::now(),
            ),
            _ => shared::poll(
                &mut state,
                &mut self.step,
                &self.task,
                &self.request,
                self.deadline,
                &mut self.charged,
                now,
            ),
        };
        match &poll {
            // Not a wait yet: the ledger is to be asked.
            Poll::Wait { .. } if self.step == Step::Asking => {}
            Poll::Ready(answer) => {
                if *answer != Answer::Grant {
                    self.give_back();
                }
                self.done = true;
                state.waiting.remove(&self.task);
                if self.waited
                    && let Some(account) = state.accounts.get_mut(&self.request.account)
                {
                    account.stats.waited += 1;
                }
            }
            Poll::Wait { reason, .. } => {
                self.waited = true;
                state.waiting.insert(self.task.clone(), reason.clone());
            }
        }
        poll
    }

    /// Waits for the answer.
    pub async fn wait(mut self) -> (u64, Answer) {
        let changed = self.governor.clone();
        loop {
            let notified = changed.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.poll() {
                Poll::Ready(answer) => return (self.request.id, answer),
                Poll::Wait { .. } if self.step == Step::Asking => self.consult().await,
                Poll::Wait { until, .. } => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = &mut notified => {}
                    }
                }
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.give_back();
        let mut state = self.governor.lock();
        state.waiting.remove(&self.task);
        if let Some((_, marks)) = self.charged.take()
            && state.settings.enabled
            && let Some(account) = state.accounts.get_mut(&self.request.account)
        {
            account.uncharge(Charge::of(&self.request), marks, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A permit request of 100 input tokens and a 1000-token output cap on one account.
    pub(super) fn request(id: u64) -> PermitRequest {
        PermitRequest {
            id,
            provider: "openai".to_owned(),
            account: "openai http://x key:1".to_owned(),
            input_tokens: 100,
            max_output_tokens: 1000,
        }
    }

    fn state(settings: Settings) -> State {
        State::new(settings, None)
    }

    fn on() -> Settings {
        Settings {
            enabled: true,
            ..Settings::default()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> RateHeaders {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn poll(s: &mut State, id: u64, deadline: Option<Instant>, now: Instant) -> Poll {
        let mut charged = None;
        s.poll(
            "t",
            &request(id),
            deadline,
            &mut charged,
            now,
            SystemTime::now(),
        )
    }

    #[test]
    fn the_first_request_goes_alone_until_its_headers_arrive() {
        let mut s = state(on());
        let t0 = Instant::now();
        assert_eq!(poll(&mut s, 1, None, t0), Poll::Ready(Answer::Grant));
        assert!(matches!(poll(&mut s, 2, None, t0), Poll::Wait { .. }));
        s.head(
            "t",
            1,
            200,
            &headers(&[
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", "59"),
            ]),
            t0,
        );
        assert_eq!(poll(&mut s, 2, None, t0), Poll::Ready(Answer::Grant));
    }

    #[test]
    fn requests_that_waited_for_the_first_response_are_charged_on_the_limits_it_taught() {
        let mut s = state(on());
        let t0 = Instant::now();
        let (mut second, mut third): (Charged, Charged) = (None, None);
        let look = |s: &mut State, id, charged: &mut Charged| {
            s.poll("t", &request(id), None, charged, t0, SystemTime::now())
        };
        assert_eq!(look(&mut s, 1, &mut None), Poll::Ready(Answer::Grant));
        assert!(matches!(look(&mut s, 2, &mut second), Poll::Wait { .. }));
        assert!(matches!(look(&mut s, 3, &mut third), Poll::Wait { .. }));
        // The first response: one a second, one left.
        s.head(
            "t",
            1,
            200,
            &headers(&[
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", "1"),
            ]),
            t0,
        );
        assert_eq!(look(&mut s, 2, &mut second), Poll::Ready(Answer::Grant));
        let Poll::Wait { until, .. } = look(&mut s, 3, &mut third) else {
            panic!("the third went past the limit the first response taught");
        };
        assert!((until - t0).as_secs_f64() > 0.9, "{:?}", until - t0);
    }

    #[test]
    fn a_429_holds_the_whole_account_and_a_wait_past_the_deadline_is_refused() {
        let mut s = state(on());
        let t0 = Instant::now();
        assert_eq!(poll(&mut s, 1, None, t0), Poll::Ready(Answer::Grant));
        s.head("t", 1, 429, &headers(&[("retry-after", "30")]), t0);
        s.end("t", 1, None, t0);
        let Poll::Wait {
            until,
            reason,
            rate_limited,
        } = poll(&mut s, 2, None, t0)
        else {
            panic!("not held");
        };
        assert!(
            rate_limited && reason.contains("retry-after 30.0 s"),
            "{reason}"
        );
        assert_eq!(until, t0 + Duration::from_secs(30));
        let Poll::Ready(Answer::Deny {
            reason,
            pause: false,
        }) = poll(&mut s, 3, Some(t0 + Duration::from_secs(10)), t0)
        else {
            panic!("a wait past the deadline was not refused");
        };
        assert!(reason.contains("past the task's deadline"), "{reason}");
        let stats = s
            .accounts
            .values()
            .next()
            .map(|a| a.stats)
            .unwrap_or_default();
        assert_eq!((stats.granted, stats.throttled), (1, 1));
        // Once the hold is over the account is open again, at half its concurrency.
        assert_eq!(
            poll(&mut s, 4, None, t0 + Duration::from_secs(31)),
            Poll::Ready(Answer::Grant)
        );
    }

    #[test]
    fn requests_line_up_at_the_rate_the_headers_give() {
        let mut s = state(on());
        let t0 = Instant::now();
        assert_eq!(poll(&mut s, 1, None, t0), Poll::Ready(Answer::Grant));
        // One a second, none left.
        s.head(
            "t",
            1,
            200,
            &headers(&[
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", "0"),
            ]),
            t0,
        );
        let waits: Vec<Duration> = (2..5)
            .map(|id| match poll(&mut s, id, None, t0) {
                Poll::Wait { until, .. } => until - t0,
                other => panic!("{other:?}"),
            })
            .collect();
        for (i, wait) in waits.iter().enumerate() {
            let expected = (i + 1) as f64;
            assert!((wait.as_secs_f64() - expected).abs() < 1e-3, "{waits:?}");
        }
    }

    #[test]
    fn the_daily_budget_holds_requests_until_it_is_raised() {
        let mut settings = Settings {
            daily_tokens: Some(1000),
            ..Settings::default()
        };
        let mut s = state(settings.clone());
        let t0 = Instant::now();
        assert_eq!(poll(&mut s, 1, None, t0), Poll::Ready(Answer::Grant));
        let usage = Usage {
            input_tokens: 900,
            output_tokens: 200,
            cost_usd: None,
        };
        s.end("t", 1, Some(usage), t0);
        let Poll::Wait {
            reason,
            rate_limited: false,
            ..
        } = poll(&mut s, 2, None, t0)
        else {
            panic!("not held by the daily budget");
        };
        assert!(reason.contains("daily budget of 1000 tokens"), "{reason}");
        settings.daily_tokens = Some(5000);
        s.settings = settings;
        assert_eq!(poll(&mut s, 2, None, t0), Poll::Ready(Answer::Grant));
    }
}

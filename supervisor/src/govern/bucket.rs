//! A token bucket that takes reservations: the model providers' own rate-limit model (a
//! per-minute limit that replenishes continuously), kept on the client side.
//!
//! The level may go below zero: a request that does not fit yet is charged at once and told
//! when the bucket will have refilled to cover it, so waiting shadows line up in order instead
//! of all retrying at the same instant. Plain arithmetic over [`Instant`]s, tested without a
//! clock.

use std::time::Duration;

use tokio::time::Instant;

/// One limit (requests or tokens per minute) of one account.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// The limit per minute; also the most the bucket holds.
    limit: f64,
    /// What may be spent now; negative while reservations wait.
    level: f64,
    /// When `level` was last brought up to date.
    at: Instant,
    /// Whether the provider's headers have reported the remaining amount (the provider's own
    /// count then rules, and unused reservations are not handed back on our own guess).
    synced: bool,
    /// Charged to reservations that have not gone out yet.
    reserved: f64,
    /// Charged to requests that went out, ever: a request's stamp tells how much went out
    /// after it.
    sent: f64,
}

impl Bucket {
    /// A full bucket of `limit` per minute.
    pub fn new(limit: u64, now: Instant) -> Bucket {
        let limit = limit.max(1) as f64;
        Bucket {
            limit,
            level: limit,
            at: now,
            synced: false,
            reserved: 0.0,
            sent: 0.0,
        }
    }

    /// The limit per minute.
    pub fn limit(&self) -> u64 {
        self.limit as u64
    }

    /// Whether a provider's remaining count has been seen.
    pub fn synced(&self) -> bool {
        self.synced
    }

    fn rate_per_sec(&self) -> f64 {
        self.limit / 60.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.rate_per_sec()).min(self.limit);
        self.at = self.at.max(now);
    }

    /// A new limit per minute (from a header or the config); the level keeps its share.
    pub fn set_limit(&mut self, limit: u64, now: Instant) {
        self.refill(now);
        let limit = limit.max(1) as f64;
        if (limit - self.limit).abs() < f64::EPSILON {
            return;
        }
        self.level = self.level.min(limit);
        self.limit = limit;
    }

    /// The most one request is charged: the whole bucket.
    fn capped(&self, cost: u64) -> f64 {
        (cost as f64).min(self.limit)
    }

    /// Charges a reservation of `cost` (at most the whole bucket) and returns how long until it
    /// is covered.
    pub fn reserve(&mut self, cost: u64, now: Instant) -> Duration {
        self.refill(now);
        let cost = self.capped(cost);
        self.level -= cost;
        self.reserved += cost;
        self.wait(now)
    }

    /// A reservation of `cost` goes out now; returns its stamp for [`Bucket::sync`].
    pub fn send(&mut self, cost: u64) -> f64 {
        let cost = self.capped(cost);
        self.reserved = (self.reserved - cost).max(0.0);
        self.sent += cost;
        self.sent
    }

    /// How long until the level is back to zero (all reservations covered).
    pub fn wait(&self, now: Instant) -> Duration {
        if self.level >= 0.0 {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let missing = -self.level - elapsed * self.rate_per_sec();
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(missing / self.rate_per_sec())
    }

    /// Hands back `amount` charged but not used (a reservation given up, or a request that
    /// used less than it was charged) — unless the provider's own count rules.
    pub fn refund(&mut self, amount: u64, now: Instant) {
        if self.synced {
            return;
        }
        self.refill(now);
        self.level = (self.level + amount as f64).min(self.limit);
    }

    /// Hands back a reservation that never went out, whatever rules the count.
    pub fn cancel(&mut self, cost: u64, now: Instant) {
        self.refill(now);
        let cost = self.capped(cost);
        self.reserved = (self.reserved - cost).max(0.0);
        self.level = (self.level + cost).min(self.limit);
    }

    /// The provider said `remaining` are left when it took the request stamped `stamp`: what
    /// went out after that request may not be in its count yet, and what is reserved is
    /// promised to waiting requests.
    pub fn sync(&mut self, remaining: u64, stamp: f64, now: Instant) {
        self.refill(now);
        let since = (self.sent - stamp).max(0.0);
        self.level = (remaining as f64 - since).min(self.limit) - self.reserved;
        self.at = now;
        self.synced = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_full_bucket_lets_its_limit_through_then_paces_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(60, t0); // one a second
        for _ in 0..60 {
            assert_eq!(bucket.reserve(1, t0), Duration::ZERO);
        }
        // The next ones line up a second apart.
        assert!((bucket.reserve(1, t0).as_secs_f64() - 1.0).abs() < 1e-6);
        assert!((bucket.reserve(1, t0).as_secs_f64() - 2.0).abs() < 1e-6);
        // Time passing covers them.
        assert!((bucket.wait(t0 + secs(1.5)).as_secs_f64() - 0.5).abs() < 1e-6);
        assert_eq!(bucket.wait(t0 + secs(2.0)), Duration::ZERO);
    }

    #[test]
    fn the_bucket_never_holds_more_than_its_limit() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10, t0);
        bucket.reserve(10, t0);
        // An hour later it is full, not 600 deep.
        let later = t0 + secs(3600.0);
        for _ in 0..10 {
            assert_eq!(bucket.reserve(1, later), Duration::ZERO);
        }
        assert!(bucket.reserve(1, later) > Duration::ZERO);
    }

    #[test]
    fn a_cost_larger_than_the_bucket_waits_for_a_full_one() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(600, t0); // 10 a second
        bucket.reserve(600, t0);
        let wait = bucket.reserve(10_000, t0);
        assert!((wait.as_secs_f64() - 60.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn the_providers_count_rules_once_seen() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(100, t0);
        bucket.reserve(1, t0);
        let first = bucket.send(1);
        bucket.reserve(2, t0);
        bucket.send(2);
        // Someone else used the key: 5 left when it took the first, and 2 of ours went out
        // after that one.
        bucket.sync(5, first, t0);
        assert!(bucket.synced());
        assert_eq!(bucket.reserve(3, t0), Duration::ZERO);
        assert!(bucket.reserve(1, t0) > Duration::ZERO);
        // Unused charges are not handed back on our own guess any more...
        let before = bucket.wait(t0);
        bucket.refund(50, t0);
        assert_eq!(bucket.wait(t0), before);
        // ...but a reservation that never went out is.
        bucket.cancel(1, t0);
        assert_eq!(bucket.wait(t0), Duration::ZERO);
    }

    #[test]
    fn waiting_reservations_survive_a_sync() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(60, t0); // one a second
        bucket.sync(1, 0.0, t0);
        let stamp = {
            bucket.reserve(1, t0);
            bucket.send(1)
        };
        // Two more line up behind it.
        assert!((bucket.reserve(1, t0).as_secs_f64() - 1.0).abs() < 1e-6);
        assert!((bucket.reserve(1, t0).as_secs_f64() - 2.0).abs() < 1e-6);
        // The provider confirms: nothing left. The two waiting keep their places, and a new
        // one lines up after them, not beside them.
        bucket.sync(0, stamp, t0);
        assert!((bucket.reserve(1, t0).as_secs_f64() - 3.0).abs() < 1e-6);
    }

    #[test]
    fn a_lower_limit_takes_effect_at_once() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(1000, t0);
        bucket.set_limit(2, t0);
        assert_eq!(bucket.limit(), 2);
        assert_eq!(bucket.reserve(1, t0), Duration::ZERO);
        assert_eq!(bucket.reserve(1, t0), Duration::ZERO);
        assert!((bucket.reserve(1, t0).as_secs_f64() - 30.0).abs() < 1e-6);
    }
}

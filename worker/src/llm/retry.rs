//! When and how long to wait before sending a failed model request again.
//!
//! [`RetryPolicy`] is plain data plus an injectable [`Sleeper`], so tests can record the
//! delays instead of waiting them out. The rules:
//!
//! - At most [`RetryPolicy::max_attempts`] requests in all; only errors that
//!   [`LlmError::is_retryable`](super::LlmError::is_retryable) are retried.
//! - Without a server hint, exponential backoff from `base_delay`, capped at `max_delay`, with
//!   "equal jitter" (half fixed, half random) so two hundred shadows hitting one rate limit do
//!   not come back in lockstep.
//! - A server hint (`retry-after-ms`, or `retry-after` in seconds or as an HTTP-date) is
//!   honoured plus a little jitter; a hint longer than `max_retry_after` gives up at once
//!   rather than parking a shadow for an hour.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kugetsu_protocol::time::parse_http_date;
use reqwest::header::HeaderMap;

/// Environment variable shrinking the backoff base (milliseconds), for end-to-end tests.
pub(crate) const BASE_DELAY_ENV: &str = "KUGETSU_RETRY_BASE_MS";

/// A future that completes after the delay it was made for.
pub(crate) type SleepFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How the retry loop waits; tokio's timer in production, a recorder in tests.
#[derive(Clone)]
pub(crate) struct Sleeper(Arc<dyn Fn(Duration) -> SleepFuture + Send + Sync>);

impl Sleeper {
    /// Sleeps on tokio's timer.
    pub(crate) fn tokio() -> Self {
        Self::from_fn(|delay| Box::pin(tokio::time::sleep(delay)))
    }

    /// Sleeps however `sleep` says.
    pub(crate) fn from_fn(sleep: impl Fn(Duration) -> SleepFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(sleep))
    }

    /// Waits for `delay`.
    pub(crate) fn sleep(&self, delay: Duration) -> SleepFuture {
        (self.0)(delay)
    }
}

impl fmt::Debug for Sleeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sleeper")
    }
}

/// How often and how patiently a failed request is sent again.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// Requests sent at most, the first one included.
    pub max_attempts: u32,
    /// Backoff before the first retry when the server gives no hint; doubles per retry.
    pub base_delay: Duration,
    /// Cap on the computed backoff.
    pub max_delay: Duration,
    /// Longest server hint that is waited out; longer ones give up.
    pub max_retry_after: Duration,
    /// How the waiting is done.
    pub sleeper: Sleeper,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
            sleeper: Sleeper::tokio(),
        }
    }
}

impl RetryPolicy {
    /// The default policy, with the base delay taken from [`BASE_DELAY_ENV`] when it is set.
    pub(crate) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let mut policy = Self::default();
        if let Some(ms) = env(BASE_DELAY_ENV).and_then(|v| v.trim().parse::<u64>().ok()) {
            policy.base_delay = Duration::from_millis(ms);
        }
        policy
    }

    /// The wait before retrying after failed attempt number `attempt` (1-based), given the
    /// server's hint and a random `jitter` in `[0, 1)`; `None` when the hint is too long.
    pub(crate) fn delay(
        &self,
        attempt: u32,
        hint: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        let jitter = jitter.clamp(0.0, 1.0);
        match hint {
            Some(hint) if hint > self.max_retry_after => None,
            Some(hint) => Some(hint + self.base_delay.mul_f64(jitter / 2.0)),
            None => {
                let doublings = attempt.saturating_sub(1).min(20);
                let backoff = self
                    .base_delay
                    .saturating_mul(1 << doublings)
                    .min(self.max_delay);
                Some(backoff.mul_f64(0.5 + jitter / 2.0))
            }
        }
    }
}

/// A random number in `[0, 1)` for jitter, from the standard library's per-process random
/// hash keys (no RNG dependency for one number per retry).
pub(crate) fn jitter() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos().into()),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The server's hint on when to retry: `retry-after-ms`, else `retry-after` as seconds or
/// an HTTP-date (relative to `now`).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return seconds(ms / 1000.0);
    }
    let value = header("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn seconds(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay(1, None, 0.0), Some(Duration::from_millis(500)));
        assert_eq!(policy.delay(1, None, 1.0), Some(Duration::from_secs(1)));
        assert_eq!(policy.delay(3, None, 0.0), Some(Duration::from_secs(2)));
        assert_eq!(policy.delay(4, None, 1.0), Some(Duration::from_secs(8)));
        assert_eq!(policy.delay(30, None, 1.0), Some(Duration::from_secs(30)));
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn server_hints_are_honoured_up_to_the_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(7)), 0.0),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(7)), 1.0),
            Some(Duration::from_millis(7500))
        );
        assert_eq!(policy.delay(1, Some(Duration::from_secs(3600)), 0.5), None);
    }

    #[test]
    fn base_delay_comes_from_the_environment() {
        let policy = RetryPolicy::from_env(&|name| (name == BASE_DELAY_ENV).then(|| "5".into()));
        assert_eq!(policy.base_delay, Duration::from_millis(5));
        let policy = RetryPolicy::from_env(&|_| Some("soon".into()));
        assert_eq!(policy.base_delay, Duration::from_secs(1));
    }

    #[test]
    fn retry_after_headers_parse_in_every_form() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let at = |pairs| retry_after(&headers(pairs), now);
        assert_eq!(at(&[("retry-after", "2")]), Some(Duration::from_secs(2)));
        assert_eq!(
            at(&[("retry-after", " 1.5 ")]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            at(&[("retry-after", "3"), ("retry-after-ms", "250")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            at(&[("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT")]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            at(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]),
            Some(Duration::ZERO)
        );
        assert_eq!(at(&[("retry-after", "-1")]), None);
        assert_eq!(at(&[("retry-after", "tomorrow")]), None);
        assert_eq!(at(&[]), None);
    }

    #[test]
    fn http_dates_match_known_timestamps() {
        let secs =
            |text| parse_http_date(text).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(secs("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(secs("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(secs("Tue, 29 Feb 2028 12:00:00 GMT"), Some(1_835_438_400));
        assert_eq!(secs("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(secs("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(secs("Sun, 06 Nov 1994 08:49 GMT"), None);
    }
}

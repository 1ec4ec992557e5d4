//! What a provider's response headers say about its rate limits.
//!
//! - OpenAI (and OpenRouter, vLLM and others that copy it): `x-ratelimit-limit-requests`,
//!   `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` (a duration such as `1s`,
//!   `6m0s`, `20ms`), and the same for `-tokens`.
//! - Anthropic: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
//!   remaining,reset}` (reset as an RFC 3339 time).
//! - Both: `retry-after-ms`, `retry-after` (seconds or an HTTP-date).
//!
//! Limits are per minute. Values that do not parse are ignored, never trusted.

use std::time::{Duration, SystemTime};

use kugetsu_protocol::RateHeaders;

/// One limit as reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Until the limit is whole again.
    pub reset: Option<Duration>,
}

impl Counter {
    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

/// Everything one response said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub requests: Option<Counter>,
    /// Input plus output tokens (OpenAI's one token limit; Anthropic's combined one).
    pub tokens: Option<Counter>,
    pub input_tokens: Option<Counter>,
    pub output_tokens: Option<Counter>,
    pub retry_after: Option<Duration>,
}

/// Reads `headers` as of `now`.
pub fn observe(headers: &RateHeaders, now: SystemTime) -> Observed {
    let get = |name: &str| headers.get(name).map(|v| v.trim());
    let openai = |what: &str| {
        counter(
            get(&format!("x-ratelimit-limit-{what}")),
            get(&format!("x-ratelimit-remaining-{what}")),
            get(&format!("x-ratelimit-reset-{what}")).and_then(parse_go_duration),
        )
    };
    let anthropic = |what: &str| {
        counter(
            get(&format!("anthropic-ratelimit-{what}-limit")),
            get(&format!("anthropic-ratelimit-{what}-remaining")),
            get(&format!("anthropic-ratelimit-{what}-reset"))
                .and_then(|v| humantime::parse_rfc3339_weak(v).ok())
                .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO)),
        )
    };
    Observed {
        requests: openai("requests").or_else(|| anthropic("requests")),
        tokens: openai("tokens").or_else(|| anthropic("tokens")),
        input_tokens: anthropic("input-tokens"),
        output_tokens: anthropic("output-tokens"),
        retry_after: retry_after(&get, now),
    }
}

fn counter(
    limit: Option<&str>,
    remaining: Option<&str>,
    reset: Option<Duration>,
) -> Option<Counter> {
    let number = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok());
    let counter = Counter {
        limit: number(limit).filter(|&l| l > 0),
        remaining: number(remaining),
        reset,
    };
    (!counter.is_empty()).then_some(counter)
}

/// `retry-after-ms`, else `retry-after` as seconds or an HTTP-date.
fn retry_after<'a>(get: &dyn Fn(&str) -> Option<&'a str>, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let value = get("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = kugetsu_protocol::time::parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A Go-style duration as OpenAI sends it: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(split);
        let value: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn headers(pairs: &[(&str, &str)]) -> RateHeaders {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn openai_headers_give_both_limits() {
        let seen = observe(
            &headers(&[
                ("x-ratelimit-limit-requests", "240"),
                ("x-ratelimit-remaining-requests", "239"),
                ("x-ratelimit-reset-requests", "250ms"),
                ("x-ratelimit-limit-tokens", "40000"),
                ("x-ratelimit-remaining-tokens", "31000"),
                ("x-ratelimit-reset-tokens", "13.5s"),
            ]),
            SystemTime::now(),
        );
        assert_eq!(
            seen.requests,
            Some(Counter {
                limit: Some(240),
                remaining: Some(239),
                reset: Some(Duration::from_millis(250))
            })
        );
        assert_eq!(seen.tokens.unwrap().remaining, Some(31000));
        assert_eq!(
            seen.tokens.unwrap().reset,
            Some(Duration::from_millis(13500))
        );
        assert_eq!(seen.input_tokens, None);
        assert_eq!(seen.retry_after, None);
    }

    #[test]
    fn anthropic_headers_give_their_limits_and_reset_times() {
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600); // 2026-01-01T00:00:00Z
        let seen = observe(
            &headers(&[
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2026-01-01T00:00:07Z"),
                ("anthropic-ratelimit-input-tokens-limit", "30000"),
                ("anthropic-ratelimit-output-tokens-remaining", "7000"),
                ("retry-after", "7"),
            ]),
            now,
        );
        let requests = seen.requests.unwrap();
        assert_eq!(requests.limit, Some(50));
        assert_eq!(requests.remaining, Some(0));
        assert_eq!(requests.reset, Some(Duration::from_secs(7)));
        assert_eq!(seen.input_tokens.unwrap().limit, Some(30000));
        assert_eq!(seen.output_tokens.unwrap().remaining, Some(7000));
        assert_eq!(seen.retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn garbage_is_ignored() {
        let seen = observe(
            &headers(&[
                ("x-ratelimit-limit-requests", "-5"),
                ("x-ratelimit-remaining-requests", "lots"),
                ("x-ratelimit-reset-requests", "soon"),
                ("x-ratelimit-limit-tokens", "0"),
                ("retry-after", "whenever"),
            ]),
            SystemTime::now(),
        );
        assert_eq!(seen, Observed::default());
    }

    #[test]
    fn retry_after_ms_wins_and_dates_count_from_now() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let seen = observe(
            &headers(&[("retry-after", "3"), ("retry-after-ms", "250")]),
            now,
        );
        assert_eq!(seen.retry_after, Some(Duration::from_millis(250)));
        let seen = observe(
            &headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT")]),
            now,
        );
        assert_eq!(seen.retry_after, Some(Duration::from_secs(30)));
    }

    #[test]
    fn go_durations_parse() {
        let d = |s| parse_go_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(d("1s"), Some(1.0));
        assert_eq!(d("6m0s"), Some(360.0));
        assert_eq!(d("20ms"), Some(0.02));
        assert_eq!(d("1h2m3.5s"), Some(3723.5));
        assert_eq!(d(""), None);
        assert_eq!(d("5"), None);
        assert_eq!(d("3x"), None);
    }
}

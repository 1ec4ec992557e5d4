//! Figures in a few characters: memory, ages.

use std::time::{Duration, SystemTime};

/// Memory in a few characters: `512K`, `42M`, `1.5G`, `12G`.
pub fn bytes(n: u64) -> String {
    const K: u64 = 1 << 10;
    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;
    match n {
        n if n < M => format!("{}K", n / K),
        n if n < G => format!("{}M", n / M),
        n if n < 10 * G => format!("{:.1}G", n as f64 / G as f64),
        n => format!("{}G", n / G),
    }
}

/// How long ago an RFC 3339 time was, in a few characters (`42s`, `7m`, `3h`, `2d`); `-` when
/// it does not parse.
pub fn age(created: &str, now: SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339(created) else {
        return "-".to_owned();
    };
    let secs = now.duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_figures() {
        assert_eq!(bytes(300 << 10), "300K");
        assert_eq!(bytes(42 << 20), "42M");
        assert_eq!(bytes(512 << 20), "512M");
        assert_eq!(bytes(3 << 29), "1.5G");
        assert_eq!(bytes(12 << 30), "12G");
    }

    #[test]
    fn ages() {
        let created = "2026-12-01T12:00:00.000Z";
        let at = |secs| {
            humantime::parse_rfc3339("2026-12-01T12:00:00Z").unwrap() + Duration::from_secs(secs)
        };
        assert_eq!(age(created, at(42)), "42s");
        assert_eq!(age(created, at(7 * 60 + 5)), "7m");
        assert_eq!(age(created, at(3 * 3600)), "3h");
        assert_eq!(age(created, at(2 * 86_400)), "2d");
        assert_eq!(age("yesterday", at(1)), "-");
        let before = humantime::parse_rfc3339("2026-12-01T11:00:00Z").unwrap();
        assert_eq!(age(created, before), "0s", "a clock behind the daemon's");
    }
}

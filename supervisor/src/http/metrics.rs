//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! Gauges are the fleet now; the `_total` counters are what the daemon counted from the
//! events it saw since it started (see [`crate::daemon::stats::Counters`]), so they start
//! again at 0 when it restarts, as Prometheus expects of counters.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::daemon::stats::FleetStats;
use crate::http::AppState;
use crate::http::error::ApiError;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every finished status, so each series exists from the start.
const STATUSES: [&str; 5] = ["completed", "failed", "cancelled", "timed_out", "paused"];

/// `GET /metrics`.
pub async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let stats = app.fleet().await?;
    let mut response = render(&stats).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

/// A label value escaped as the format says: backslash, double quote and newline.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes the HELP and TYPE lines of one metric.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition of `stats`.
pub fn render(stats: &FleetStats) -> String {
    let mut out = String::new();
    let c = &stats.counters;
    head(
        &mut out,
        "kugetsu_shadows_running",
        "gauge",
        "Shadows running now.",
    );
    let _ = writeln!(out, "kugetsu_shadows_running {}", stats.running);
    head(
        &mut out,
        "kugetsu_max_shadows",
        "gauge",
        "Most shadows that may run at once (max_shadows).",
    );
    let _ = writeln!(out, "kugetsu_max_shadows {}", stats.max_shadows);
    head(
        &mut out,
        "kugetsu_tasks_queued",
        "gauge",
        "Tasks waiting in the queue.",
    );
    let _ = writeln!(out, "kugetsu_tasks_queued {}", stats.queued);
    head(
        &mut out,
        "kugetsu_queue_capacity",
        "gauge",
        "Most tasks the queue holds (queue_capacity).",
    );
    let _ = writeln!(out, "kugetsu_queue_capacity {}", stats.queue_capacity);
    head(
        &mut out,
        "kugetsu_shadow_rss_bytes",
        "gauge",
        "Resident memory of a running shadow: its worker and every tool process below it.",
    );
    for shadow in &stats.shadows {
        if let Some(rss) = shadow.rss_bytes {
            let _ = writeln!(
                out,
                "kugetsu_shadow_rss_bytes{{task=\"{}\"}} {rss}",
                escape_label(&shadow.task)
            );
        }
    }
    head(
        &mut out,
        "kugetsu_shadow_mem_limit_bytes",
        "gauge",
        "The mem_limit of a running shadow.",
    );
    for shadow in &stats.shadows {
        let _ = writeln!(
            out,
            "kugetsu_shadow_mem_limit_bytes{{task=\"{}\"}} {}",
            escape_label(&shadow.task),
            shadow.mem_limit
        );
    }
    head(
        &mut out,
        "kugetsu_host_memory_bytes",
        "gauge",
        "All of the host's memory.",
    );
    let _ = writeln!(out, "kugetsu_host_memory_bytes {}", stats.host_total_bytes);
    head(
        &mut out,
        "kugetsu_tokens_total",
        "counter",
        "Model tokens used by the daemon's shadows since the daemon started, by direction.",
    );
    let _ = writeln!(
        out,
        "kugetsu_tokens_total{{direction=\"input\"}} {}",
        c.input_tokens
    );
    let _ = writeln!(
        out,
        "kugetsu_tokens_total{{direction=\"output\"}} {}",
        c.output_tokens
    );
    head(
        &mut out,
        "kugetsu_cost_usd_total",
        "counter",
        "What those tokens cost in US dollars, where the price is known.",
    );
    let _ = writeln!(out, "kugetsu_cost_usd_total {}", c.cost_usd);
    head(
        &mut out,
        "kugetsu_restarts_total",
        "counter",
        "Workers restarted from their checkpoint after they died, since the daemon started.",
    );
    let _ = writeln!(out, "kugetsu_restarts_total {}", c.restarts);
    head(
        &mut out,
        "kugetsu_rate_limit_waits_total",
        "counter",
        "Model requests that waited for the governor (rate_limited events) since the daemon started.",
    );
    let _ = writeln!(out, "kugetsu_rate_limit_waits_total {}", c.rate_limit_waits);
    head(
        &mut out,
        "kugetsu_rate_limited_shadows",
        "gauge",
        "Running shadows whose next model request waits for a permit now.",
    );
    let waiting = stats.shadows.iter().filter(|s| s.waiting).count();
    let _ = writeln!(out, "kugetsu_rate_limited_shadows {waiting}");
    head(
        &mut out,
        "kugetsu_conflicts",
        "gauge",
        "Live tasks the conflict radar found overlapping another task or their base.",
    );
    let _ = writeln!(out, "kugetsu_conflicts {}", stats.conflicts);
    head(
        &mut out,
        "kugetsu_tasks_finished_total",
        "counter",
        "Tasks that finished since the daemon started, by status.",
    );
    for status in STATUSES {
        let n = c.finished.get(status).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "kugetsu_tasks_finished_total{{status=\"{status}\"}} {n}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::stats::{Counters, ShadowStats};

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_metric_has_help_and_type_and_samples_are_well_formed() {
        let mut counters = Counters::default();
        counters.finished.insert("completed", 3);
        counters.input_tokens = 12;
        let stats = FleetStats {
            running: 1,
            queued: 2,
            max_shadows: 20,
            queue_capacity: 100,
            shadows: vec![ShadowStats {
                task: "t\"1".to_owned(),
                rss_bytes: Some(4096),
                mem_limit: 1 << 29,
                waiting: true,
            }],
            conflicts: 0,
            host_total_bytes: 1 << 33,
            counters,
        };
        let text = render(&stats);
        let mut typed = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(typed.contains(name), "{name} has no TYPE line before it");
            let value = line.rsplit(' ').next().unwrap();
            value.parse::<f64>().unwrap();
        }
        assert!(text.contains("kugetsu_shadow_rss_bytes{task=\"t\\\"1\"} 4096\n"));
        assert!(text.contains("kugetsu_tasks_finished_total{status=\"completed\"} 3\n"));
        assert!(text.contains("kugetsu_rate_limited_shadows 1\n"));
        assert!(text.contains("kugetsu_tokens_total{direction=\"input\"} 12\n"));
    }
}

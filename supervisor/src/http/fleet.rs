//! The fleet's recent history (what the dashboard charts) and `GET /api/v1/fleet`.
//!
//! A sampler task asks the actor for its [`FleetStats`] every [`SAMPLE_EVERY`] and keeps the
//! last [`HISTORY_LEN`] samples (30 minutes) in a ring buffer: bounded, whatever the uptime.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::daemon::stats::FleetStats;
use crate::http::AppState;
use crate::http::error::ApiError;

/// How often the fleet is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: 30 minutes of them.
pub const HISTORY_LEN: usize = 30 * 60 / 2;

/// One point of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub unix_ms: u64,
    /// The running shadows' memory, summed.
    pub rss_bytes: u64,
    pub running: usize,
    pub queued: usize,
}

impl Sample {
    fn of(stats: &FleetStats, now: SystemTime) -> Sample {
        Sample {
            unix_ms: now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            rss_bytes: rss_sum(stats),
            running: stats.running,
            queued: stats.queued,
        }
    }
}

fn rss_sum(stats: &FleetStats) -> u64 {
    stats.shadows.iter().filter_map(|s| s.rss_bytes).sum()
}

/// The last [`HISTORY_LEN`] samples, shared by the sampler and the handlers.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// A plain mutex: held only to push or copy, never across an await.
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl History {
    /// Adds a sample, dropping the oldest beyond [`HISTORY_LEN`].
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == HISTORY_LEN {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn snapshot(&self) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.iter().copied().collect()
    }
}

/// Samples the fleet until the server stops.
pub async fn sample(app: AppState) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = app.stopping().cancelled() => return,
        }
        match app.fleet().await {
            Ok(stats) => app.history().push(Sample::of(&stats, SystemTime::now())),
            Err(_) => return,
        }
    }
}

/// `GET /api/v1/fleet`'s answer.
#[derive(Debug, Serialize)]
pub struct Fleet {
    pub running: usize,
    pub queued: usize,
    pub max_shadows: u32,
    pub queue_capacity: usize,
    /// The running shadows' memory, summed.
    pub rss_bytes: u64,
    /// The running shadows' `mem_limit`s, summed.
    pub mem_limit: u64,
    /// All of the host's memory.
    pub host_total_bytes: u64,
    /// Every 2 s over the last 30 minutes, oldest first.
    pub history: Vec<Sample>,
}

/// `GET /api/v1/fleet`.
pub async fn fleet(State(app): State<AppState>) -> Result<Json<Fleet>, ApiError> {
    let stats = app.fleet().await?;
    Ok(Json(Fleet {
        running: stats.running,
        queued: stats.queued,
        max_shadows: stats.max_shadows,
        queue_capacity: stats.queue_capacity,
        rss_bytes: rss_sum(&stats),
        mem_limit: stats.shadows.iter().map(|s| s.mem_limit).sum(),
        host_total_bytes: stats.host_total_bytes,
        history: app.history().snapshot(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_last_30_minutes() {
        let history = History::default();
        for i in 0..(HISTORY_LEN as u64 + 10) {
            history.push(Sample {
                unix_ms: i,
                rss_bytes: 0,
                running: 0,
                queued: 0,
            });
        }
        let samples = history.snapshot();
        assert_eq!(samples.len(), HISTORY_LEN);
        assert_eq!(samples[0].unix_ms, 10);
        assert_eq!(samples.last().unwrap().unix_ms, HISTORY_LEN as u64 + 9);
    }
}

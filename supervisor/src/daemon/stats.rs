//! What the daemon counts about its fleet, for the HTTP API's `/metrics` and `/api/v1/fleet`.
//!
//! [`Counters`] are kept by the actor from the events it sees since it started (like every
//! Prometheus counter, they start again at 0 when the daemon restarts); [`FleetStats`] is a
//! snapshot of the pool, the queue and those counters, answered to [`Command::Fleet`].
//!
//! [`Command::Fleet`]: crate::daemon::command::Command::Fleet

use std::collections::BTreeMap;

use kugetsu_protocol::{Event, EventEnvelope};

use crate::daemon::actor::Daemon;
use crate::rpc::TaskStatus;

/// Counted from the events the daemon saw since it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// `restarted` events: workers started again after they died.
    pub restarts: u64,
    /// `rate_limited` events: model requests that waited for the governor.
    pub rate_limit_waits: u64,
    /// Tokens of every `turn_end`.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The cost of every `turn_end` whose usage had one, in US dollars.
    pub cost_usd: f64,
    /// `finished` events by status (`completed`, `failed`, ...).
    pub finished: BTreeMap<&'static str, u64>,
}

impl Counters {
    /// Counts one event.
    pub fn observe(&mut self, envelope: &EventEnvelope) {
        match &envelope.event {
            Event::Restarted { .. } => self.restarts += 1,
            Event::RateLimited { .. } => self.rate_limit_waits += 1,
            Event::TurnEnd { usage, .. } => {
                self.input_tokens += usage.input_tokens;
                self.output_tokens += usage.output_tokens;
                self.cost_usd += usage.cost_usd.unwrap_or(0.0);
            }
            Event::Finished(finished) => {
                *self.finished.entry(finished.status.as_str()).or_insert(0) += 1;
            }
            _ => {}
        }
    }
}

/// One running shadow's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowStats {
    pub task: String,
    /// Its worker and tools together (`None` before the sampler saw its worker).
    pub rss_bytes: Option<u64>,
    pub mem_limit: u64,
    /// Whether its next model request waits for a permit (rate limit, daily budget).
    pub waiting: bool,
}

/// The pool, the queue and the counters, as the actor sees them now.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetStats {
    pub running: usize,
    pub queued: usize,
    pub max_shadows: u32,
    pub queue_capacity: usize,
    /// Every running shadow, by task id.
    pub shadows: Vec<ShadowStats>,
    /// Live tasks the conflict radar reported an overlap on.
    pub conflicts: usize,
    /// All of the host's memory, in bytes (0 before the first sample).
    pub host_total_bytes: u64,
    pub counters: Counters,
}

impl Daemon {
    /// The snapshot [`Command::Fleet`](crate::daemon::command::Command::Fleet) answers.
    pub(super) fn fleet_stats(&self) -> FleetStats {
        let snapshot = self.sampler.latest();
        let shadows = self
            .table
            .live
            .values()
            .filter(|e| e.status == TaskStatus::Running)
            .map(|e| ShadowStats {
                task: e.prepared.record.id.clone(),
                rss_bytes: e
                    .progress
                    .pid
                    .and_then(|pid| snapshot.shadow(pid))
                    .map(|m| m.total()),
                mem_limit: e.prepared.record.mem_limit,
                waiting: self.governor.waiting(&e.prepared.record.id).is_some(),
            })
            .collect();
        FleetStats {
            running: self.running,
            queued: self.queue.len() + self.resume_first.len(),
            max_shadows: self.config.max_shadows,
            queue_capacity: self.queue.capacity(),
            shadows,
            conflicts: self
                .table
                .live
                .values()
                .filter(|e| !e.progress.conflicts.is_empty())
                .count(),
            host_total_bytes: if snapshot.valid { snapshot.total } else { 0 },
            counters: self.counters.clone(),
        }
    }
}

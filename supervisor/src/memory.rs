//! Memory accounting for shadows, measured with sysinfo.
//!
//! One [`Sampler`] task refreshes the process table and the host's available memory every
//! [`SAMPLE_INTERVAL`] while anyone listens, and publishes an immutable [`Snapshot`] through a
//! `watch` channel. Each running shadow reads the latest snapshot to account its worker and the
//! tool processes below it; the pool reads it to decide whether a shadow may start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sysinfo::{MemoryRefreshKind, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::watch;

/// How often memory is measured (DESIGN §4: at least every 500 ms).
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// One process in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcMem {
    pub rss: u64,
    pub parent: Option<u32>,
}

/// The process table and host memory at one instant.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub procs: HashMap<u32, ProcMem>,
    /// Memory the host can still give out (`MemAvailable`), in bytes.
    pub available: u64,
    /// All of the host's memory, in bytes.
    pub total: u64,
    /// Whether this snapshot holds real data (false before the first sample).
    pub valid: bool,
}

/// The memory of one shadow: its worker, and everything below the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowMem {
    pub worker_rss: u64,
    pub tools_rss: u64,
}

impl ShadowMem {
    /// Worker plus tools.
    pub fn total(&self) -> u64 {
        self.worker_rss + self.tools_rss
    }
}

impl Snapshot {
    /// The memory of the shadow whose worker is `worker`, if the worker is in the snapshot.
    pub fn shadow(&self, worker: u32) -> Option<ShadowMem> {
        let worker_rss = self.procs.get(&worker)?.rss;
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (&pid, proc) in &self.procs {
            if let Some(parent) = proc.parent {
                children.entry(parent).or_default().push(pid);
            }
        }
        let mut tools_rss = 0;
        let mut stack = vec![worker];
        while let Some(pid) = stack.pop() {
            for &kid in children.get(&pid).map_or(&[][..], Vec::as_slice) {
                tools_rss += self.procs.get(&kid).map_or(0, |p| p.rss);
                stack.push(kid);
            }
        }
        Some(ShadowMem {
            worker_rss,
            tools_rss,
        })
    }
}

/// Handle to the sampling task. Cheap to clone; the task stops when every handle is gone.
#[derive(Debug, Clone)]
pub struct Sampler {
    rx: watch::Receiver<Arc<Snapshot>>,
}

impl Sampler {
    /// Starts sampling in the background.
    pub fn spawn() -> Sampler {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        tokio::spawn(sample(tx));
        Sampler { rx }
    }

    /// A receiver of snapshots, updated every [`SAMPLE_INTERVAL`].
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }

    /// The latest snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// Waits (at most `limit`) for the first real sample.
    pub async fn first_sample(&self, limit: std::time::Duration) {
        let mut rx = self.rx.clone();
        let _ = tokio::time::timeout(limit, rx.wait_for(|s| s.valid)).await;
    }
}

async fn sample(tx: watch::Sender<Arc<Snapshot>>) {
    let Ok(mut system) = System::new() else {
        eprintln!("kugetsu: warning: cannot read process memory; memory limits are not enforced");
        return;
    };
    let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_memory().without_tasks(),
        );
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let procs = system
            .processes()
            .iter()
            .map(|(pid, proc)| {
                (
                    pid.as_u32(),
                    ProcMem {
                        rss: proc.memory(),
                        parent: proc.parent().map(sysinfo::Pid::as_u32),
                    },
                )
            })
            .collect();
        let snapshot = Snapshot {
            procs,
            available: system.available_memory(),
            total: system.total_memory(),
            valid: true,
        };
        if tx.send(Arc::new(snapshot)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shadow_counts_its_worker_and_every_descendant() {
        let mut procs = HashMap::new();
        let mut add = |pid, rss, parent| {
            procs.insert(pid, ProcMem { rss, parent });
        };
        add(1, 10, None);
        add(100, 5, Some(1)); // worker
        add(101, 7, Some(100)); // bash
        add(102, 11, Some(101)); // its child
        add(200, 99, Some(1)); // another shadow
        let snapshot = Snapshot {
            procs,
            available: 0,
            total: 0,
            valid: true,
        };
        let mem = snapshot.shadow(100).unwrap();
        assert_eq!(
            mem,
            ShadowMem {
                worker_rss: 5,
                tools_rss: 18
            }
        );
        assert!(snapshot.shadow(300).is_none());
    }

    #[tokio::test]
    async fn the_sampler_sees_this_process() {
        let sampler = Sampler::spawn();
        let mut rx = sampler.subscribe();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        let snapshot = sampler.latest();
        assert!(snapshot.valid && snapshot.available > 0);
        let me = snapshot.procs.get(&std::process::id()).unwrap();
        assert!(me.rss > 0);
    }
}

//! Memory accounting for shadows, measured with sysinfo.
//!
//! One [`Sampler`] task refreshes the process table and the host's available memory every
//! [`SAMPLE_INTERVAL`] while anyone listens, and publishes an immutable [`Snapshot`] through a
//! `watch` channel. Each running shadow reads the latest snapshot to account its worker and the
//! tool processes below it; the pool reads it to decide whether a shadow may start.
//!
//! A worker is counted by its RSS; each process below it by its PSS (`Pss:` of
//! `/proc/PID/smaps_rollup`, read only when the tree is walked, i.e. while a tool runs), so
//! pages shared by many tool processes (forks of one shell, one library mapped by all) count
//! once in all instead of once per process. Where `smaps_rollup` is missing (kernels before
//! 4.14), RSS is summed, which errs high.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sysinfo::{MemoryRefreshKind, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::watch;

/// How often memory is measured (at least every 500 ms; see docs/daemon.md).
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// One process in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcMem {
    /// Resident bytes: RSS for a worker, PSS (else RSS) for a tool process.
    pub rss: u64,
    pub parent: Option<u32>,
}

/// The process table and host memory at one instant.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub procs: HashMap<u32, ProcMem>,
    /// Children of each process, built once per sample for every shadow's lookup.
    children: HashMap<u32, Vec<u32>>,
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
    /// A snapshot of `procs`, with the parent-to-children index built.
    pub fn new(procs: HashMap<u32, ProcMem>, available: u64, total: u64) -> Snapshot {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (&pid, proc) in &procs {
            if let Some(parent) = proc.parent {
                children.entry(parent).or_default().push(pid);
            }
        }
        Snapshot {
            procs,
            children,
            available,
            total,
            valid: true,
        }
    }

    /// The memory of the shadow whose worker is `worker`, if the worker is in the snapshot.
    pub fn shadow(&self, worker: u32) -> Option<ShadowMem> {
        let worker_rss = self.procs.get(&worker)?.rss;
        let mut tools_rss = 0;
        let mut stack = vec![worker];
        while let Some(pid) = stack.pop() {
            for &kid in self.children.get(&pid).map_or(&[][..], Vec::as_slice) {
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
///
/// Only the process trees of registered workers are measured ([`Sampler::watch`]), and each
/// only as far as it can have changed: a worker that runs no tool ([`Watched::set_busy`]) and
/// had nothing below it at the last walk has only its own RSS to read, one `pread` of its kept-
/// open `/proc/PID/statm`; its tree is walked again every [`WALK_EVERY`] samples as a safety
/// net. A worker running a tool, or with processes below it, is walked and measured with
/// sysinfo every sample. Each watcher gets its own channel that changes only when its shadow's
/// figures do, so idle shadows are never woken.
#[derive(Debug, Clone)]
pub struct Sampler {
    rx: watch::Receiver<Arc<Snapshot>>,
    /// Worker pids whose trees are measured.
    roots: Roots,
}

/// Registered workers: how many watchers each has, and where its figures go.
type Roots = Arc<std::sync::Mutex<HashMap<u32, Registration>>>;

#[derive(Debug)]
struct Registration {
    watchers: usize,
    tx: watch::Sender<Option<ShadowMem>>,
    /// Set while the worker runs a tool: its tree is walked every sample then.
    busy: Arc<AtomicBool>,
    /// Set when the worker sent something; cleared by the sample that reads its RSS.
    active: Arc<AtomicBool>,
    /// What the sampler keeps of the worker between samples (from its first sample on).
    tracked: Option<Tracked>,
    /// The figures last sent on `tx`.
    sent: Option<ShadowMem>,
}

/// Keeps a worker's tree measured while it lives; dropping it stops that.
#[derive(Debug)]
pub struct Watched {
    roots: Roots,
    pid: u32,
    /// This shadow's figures, updated when they change.
    pub memory: watch::Receiver<Option<ShadowMem>>,
    busy: Arc<AtomicBool>,
    active: Arc<AtomicBool>,
}

impl Watched {
    /// Says whether the worker runs a tool now (its tree is then walked every sample).
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// Says the worker sent something: its RSS is read at the next sample. A worker that stays
    /// silent (waiting on its model) is read every [`QUIET_READ_EVERY`] samples only.
    pub fn touch(&self) {
        self.active.store(true, Ordering::Relaxed);
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let mut roots = self
            .roots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(registration) = roots.get_mut(&self.pid) {
            registration.watchers -= 1;
            if registration.watchers == 0 {
                roots.remove(&self.pid);
            }
        }
    }
}

impl Sampler {
    /// Starts sampling in the background.
    pub fn spawn() -> Sampler {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let roots = Roots::default();
        tokio::spawn(sample(tx, roots.clone()));
        Sampler { rx, roots }
    }

    /// Measures the tree of the worker `pid` (and `pid` itself) until the guard is dropped.
    pub fn watch(&self, pid: u32) -> Watched {
        let mut roots = self
            .roots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let registration = roots.entry(pid).or_insert_with(|| Registration {
            watchers: 0,
            tx: watch::channel(None).0,
            busy: Arc::default(),
            active: Arc::new(AtomicBool::new(true)),
            tracked: None,
            sent: None,
        });
        registration.watchers += 1;
        Watched {
            roots: self.roots.clone(),
            pid,
            memory: registration.tx.subscribe(),
            busy: registration.busy.clone(),
            active: registration.active.clone(),
        }
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

/// Processes with their parents (`None` for a root).
type Tree = Vec<(u32, Option<u32>)>;

/// `roots` and all their descendants, with each one's parent, read from
/// `/proc/PID/task/TID/children`.
fn subtrees(roots: &[u32]) -> Tree {
    let mut out: Vec<(u32, Option<u32>)> = roots.iter().map(|&pid| (pid, None)).collect();
    let mut seen: std::collections::HashSet<u32> = roots.iter().copied().collect();
    let mut next = 0;
    while next < out.len() {
        let pid = out[next].0;
        next += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for kid in children
                .split_whitespace()
                .filter_map(|k| k.parse::<u32>().ok())
            {
                if seen.insert(kid) {
                    out.push((kid, Some(pid)));
                }
            }
        }
    }
    out
}

/// How often a quiet worker's tree is walked anyway, in samples (30 s; a safety net: a worker
/// that runs no tool starts no process).
const WALK_EVERY: u32 = 60;

/// How often a quiet worker's RSS is read when it said nothing since the last read, in samples
/// (4 s). A worker that sends nothing receives nothing worth keeping either: its memory moves
/// with its traffic, which [`Watched::touch`] reports, and its own buffers are capped.
const QUIET_READ_EVERY: u32 = 8;

/// What the sampler remembers of one worker between samples.
#[derive(Debug)]
struct Tracked {
    /// `/proc/PID/statm`, kept open: one `pread` reads the worker's RSS.
    statm: Option<std::fs::File>,
    /// Samples since the last walk of its tree.
    since_walk: u32,
    /// Samples since its RSS was last read.
    since_read: u32,
    /// Its tree at the last walk, each process with its parent and RSS (the worker first).
    tree: Vec<(u32, ProcMem)>,
}

impl Tracked {
    fn open(pid: u32) -> Tracked {
        Tracked {
            statm: std::fs::File::open(format!("/proc/{pid}/statm")).ok(),
            // Staggered, so a fleet started at once is not walked all in the same sample.
            since_walk: pid % WALK_EVERY,
            since_read: 0,
            tree: Vec::new(),
        }
    }

    /// The worker's RSS now, from its `statm` (`None` if it cannot be read).
    fn read_rss(&self, page_size: u64) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let file = self.statm.as_ref()?;
        let mut buf = [0u8; 128];
        let n = file.read_at(&mut buf, 0).ok()?;
        let pages: u64 = std::str::from_utf8(&buf[..n])
            .ok()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(pages * page_size)
    }

    /// Whether the tree must be walked (and measured with sysinfo) this sample: the worker
    /// runs a tool, had processes below it at the last walk, was never walked, or is due for
    /// the safety-net walk. Otherwise it has nothing below it and one `pread` is enough.
    fn must_walk(&self, busy: bool) -> bool {
        busy || self.tree.len() != 1 || self.since_walk >= WALK_EVERY
    }

    fn memory(&self) -> Option<ShadowMem> {
        let (_, worker) = self.tree.first()?;
        Some(ShadowMem {
            worker_rss: worker.rss,
            tools_rss: self.tree[1..].iter().map(|(_, p)| p.rss).sum(),
        })
    }
}

async fn sample(tx: watch::Sender<Arc<Snapshot>>, roots: Roots) {
    let Ok(mut system) = System::new() else {
        tracing::warn!("cannot read process memory; memory limits are not enforced");
        return;
    };
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        // One pass under the lock (no await inside): registering or dropping a watcher waits
        // at most one sample's work, and nothing is copied out per worker.
        let mut roots = roots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Walk only the workers that may have processes below them; measure those trees in
        // one sysinfo refresh. The others' RSS is one pread of their statm.
        let mut stale: Vec<u32> = Vec::new();
        for (&pid, registration) in roots.iter_mut() {
            let busy = registration.busy.load(Ordering::Relaxed);
            let entry = registration
                .tracked
                .get_or_insert_with(|| Tracked::open(pid));
            entry.since_walk += 1;
            entry.since_read += 1;
            if entry.must_walk(busy) {
                registration.active.store(false, Ordering::Relaxed);
                stale.push(pid);
                continue;
            }
            if !registration.active.swap(false, Ordering::Relaxed)
                && entry.since_read < QUIET_READ_EVERY
            {
                continue;
            }
            entry.since_read = 0;
            match entry.read_rss(page_size) {
                Some(rss) => {
                    if let Some((_, worker)) = entry.tree.first_mut() {
                        worker.rss = rss;
                    }
                }
                // Gone, or unreadable: look properly.
                None => stale.push(pid),
            }
        }
        if !stale.is_empty() {
            let walked: Vec<(u32, Tree)> =
                stale.iter().map(|&pid| (pid, subtrees(&[pid]))).collect();
            let pids: Vec<sysinfo::Pid> = walked
                .iter()
                .flat_map(|(_, tree)| tree.iter().map(|&(p, _)| sysinfo::Pid::from_u32(p)))
                .collect();
            system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&pids),
                true,
                ProcessRefreshKind::nothing().with_memory().without_tasks(),
            );
            for (root, tree) in walked {
                let Some(entry) = roots.get_mut(&root).and_then(|r| r.tracked.as_mut()) else {
                    continue;
                };
                entry.since_walk = 0;
                entry.since_read = 0;
                entry.tree = tree
                    .into_iter()
                    .filter_map(|(pid, parent)| {
                        let proc = system.process(sysinfo::Pid::from_u32(pid))?;
                        // The worker is counted by RSS; its tools by PSS (see the module docs).
                        let rss = match parent {
                            None => proc.memory(),
                            Some(_) => kugetsu_os::process::proportional_bytes(pid)
                                .unwrap_or_else(|| proc.memory()),
                        };
                        Some((pid, ProcMem { rss, parent }))
                    })
                    .collect();
            }
        }
        let mut procs = HashMap::with_capacity(roots.len());
        for registration in roots.values_mut() {
            let Some(entry) = &registration.tracked else {
                continue;
            };
            procs.extend(entry.tree.iter().copied());
            let memory = entry.memory();
            // Compared here first: an unchanged figure costs no lock and wakes nobody.
            if memory != registration.sent {
                registration.sent = memory;
                registration.tx.send_replace(memory);
            }
        }
        drop(roots);
        let snapshot = Snapshot::new(procs, system.available_memory(), system.total_memory());
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
        let snapshot = Snapshot::new(procs, 0, 0);
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
    async fn the_sampler_measures_a_watched_tree() {
        let sampler = Sampler::spawn();
        let mut child = tokio::process::Command::new("sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut me = sampler.watch(std::process::id());
        tokio::time::timeout(Duration::from_secs(5), me.memory.changed())
            .await
            .unwrap()
            .unwrap();
        let mem = me.memory.borrow().unwrap();
        assert!(mem.worker_rss > 0 && mem.tools_rss > 0, "{mem:?}");
        let snapshot = sampler.latest();
        assert_eq!(
            snapshot.procs[&child.id().unwrap()].parent,
            Some(std::process::id())
        );
        child.kill().await.unwrap();
    }

    #[tokio::test]
    async fn a_quiet_worker_is_still_read_now_and_then() {
        let sampler = Sampler::spawn();
        let mut me = sampler.watch(std::process::id());
        tokio::time::timeout(Duration::from_secs(5), me.memory.changed())
            .await
            .unwrap()
            .unwrap();
        let before = me.memory.borrow_and_update().unwrap().worker_rss;
        // Grow by 64 MiB without a `touch`: the safety-net read must see it.
        let grown: Vec<u8> = vec![1; 64 << 20];
        std::hint::black_box(&grown);
        let seen = tokio::time::timeout(
            Duration::from_secs(20),
            me.memory
                .wait_for(|m| m.is_some_and(|m| m.worker_rss >= before + (32 << 20))),
        )
        .await;
        assert!(seen.is_ok(), "a quiet worker's growth was never read");
    }

    #[tokio::test]
    async fn the_sampler_sees_this_process() {
        let sampler = Sampler::spawn();
        let _me = sampler.watch(std::process::id());
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

//! Holding a bash call to the shadow's memory limit (see docs/daemon.md), from inside the worker.
//!
//! The supervisor measures every shadow as well, but only every 500 ms and from the whole
//! process table. The worker knows which processes belong to the call it is running, so it
//! can stop a runaway command within about [`SAMPLE_INTERVAL`] and tell the model why. While a
//! bash call runs under a limit, a [`MemoryWatch`] adds up the resident memory of every
//! process of the call and of the worker itself; once the sum is over the limit, bash kills the
//! call. A call without a limit is never measured, and nothing is measured between calls.
//!
//! Which processes are the call's, without reading the whole process table at every sample:
//! - No pid alive just before the shell was spawned (the [`Baseline`]) is the call's.
//! - A pid that shows up later is the call's when it is the shell, when its parent is one of
//!   the call's processes, or, when the worker is a child subreaper, when its parent is the
//!   worker: the worker runs one tool at a time and the call's orphans are reparented to it.
//! - A worker that is not a subreaper (a test binary) loses orphans to init; a new pid outside
//!   the tree still counts when its environment carries the call's tag ([`super::reap`]).
//!
//! Each new pid's `/proc/<pid>/stat` (and, without subreaping, its environment) is read once,
//! and the pid keeps its verdict until it leaves `/proc`. A sample therefore costs one listing
//! of `/proc`, the pids that are new since the last one, and one `/proc/<pid>/statm` per process
//! of the call. A pid could only change hands between two samples if the kernel's pid counter
//! wrapped around within [`SAMPLE_INTERVAL`], which no fork rate comes near.
//!
//! The call's processes are counted by PSS (`/proc/PID/smaps_rollup`): a page shared by n
//! processes counts 1/n in each, so 500 sleeping forks of one shell cost what they really
//! cost, not 500 times the shell's resident size. Where the kernel lacks `smaps_rollup` the
//! RSS from `statm` is summed instead, which errs high, never low. The worker's own figure is
//! its RSS (one read of `/proc/self/statm`).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::reap::{CallTag, is_subreaper};
use kugetsu_os::process::parent_of;

/// Time between two measurements of a running bash call.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// How long a chain of new processes (parent, grandparent, ...) is followed up to a known one.
const MAX_CHAIN: usize = 512;

/// The pids alive just before a call's shell is spawned: none of them belongs to the call.
#[derive(Debug)]
pub(crate) struct Baseline(Vec<u32>);

impl Baseline {
    /// Lists `/proc` now. Must be taken before the shell is spawned.
    pub(crate) fn take() -> Self {
        Self(kugetsu_os::process::pids())
    }
}

/// One measurement of a shadow while a bash call runs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Memory of the call's processes (PSS, else RSS).
    pub(crate) tools: u64,
    /// Resident memory of the worker.
    pub(crate) worker: u64,
}

impl Usage {
    /// The shadow's resident memory: the call's processes plus the worker.
    pub(crate) fn total(self) -> u64 {
        self.tools.saturating_add(self.worker)
    }
}

/// Measures one running bash call against the shadow's memory limit. Lives as long as the call
/// is waited for; dropping it stops the measuring (there is no background task).
#[derive(Debug)]
pub(crate) struct MemoryWatch {
    limit: u64,
    /// When to measure next; the first sample is one interval after the shell started, so the
    /// many commands that end sooner are never measured.
    ticks: Interval,
    members: Members,
}

impl MemoryWatch {
    /// Starts watching the call whose shell is `shell` (spawned after `baseline` was taken)
    /// and whose processes carry `tag`, against `limit` bytes.
    pub(crate) fn start(limit: u64, baseline: Baseline, shell: Option<u32>, tag: &CallTag) -> Self {
        let mut ticks = tokio::time::interval_at(Instant::now() + SAMPLE_INTERVAL, SAMPLE_INTERVAL);
        // A worker thread busy elsewhere should not cause a burst of samples afterwards.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            limit,
            ticks,
            members: Members::new(baseline, shell, tag),
        }
    }

    /// The limit in bytes.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Waits until the next measurement is due.
    pub(crate) async fn tick(&mut self) {
        self.ticks.tick().await;
    }

    /// Measures the shadow now; `Some` when it is over the limit.
    pub(crate) fn check(&mut self) -> Option<Usage> {
        let usage = self.members.measure();
        (usage.total() > self.limit).then_some(usage)
    }
}

/// Which live processes are the call's (see the module docs for the rules).
#[derive(Debug)]
struct Members {
    /// The worker's pid.
    worker: u32,
    /// Whether the worker is a child subreaper: then its new children are the call's, and the
    /// tag is never needed (no process of the call can end up outside the worker's tree).
    adopts: bool,
    /// The call's shell, the root of its tree when the worker does not adopt orphans.
    shell: Option<u32>,
    /// `KUGETSU_TOOL_CALL=<tag>` as it appears in `/proc/<pid>/environ`.
    tag: Vec<u8>,
    /// The pids in the latest listing of `/proc` that have a verdict.
    known: HashMap<u32, Known>,
    /// Number of the latest listing; entries not seen in it have left `/proc`.
    listing: u64,
}

/// What is remembered of one live pid.
#[derive(Debug, Clone, Copy)]
struct Known {
    /// Whether the process is one of the call's.
    ours: bool,
    /// The listing that last saw it.
    seen: u64,
}

impl Members {
    fn new(baseline: Baseline, shell: Option<u32>, tag: &CallTag) -> Self {
        let mut known: HashMap<u32, Known> = baseline
            .0
            .into_iter()
            .map(|pid| {
                (
                    pid,
                    Known {
                        ours: false,
                        seen: 0,
                    },
                )
            })
            .collect();
        // Only if the pid was freed and reused in the instant between listing and spawning.
        if let Some(shell) = shell {
            known.remove(&shell);
        }
        Self {
            worker: std::process::id(),
            adopts: is_subreaper(),
            shell,
            tag: tag.entry(),
            known,
            listing: 0,
        }
    }

    /// The resident memory of the call's processes and of the worker, now.
    fn measure(&mut self) -> Usage {
        self.refresh();
        let tools = self
            .known
            .iter()
            .filter(|(_, known)| known.ours)
            .map(|(&pid, _)| tool_bytes(pid))
            .fold(0u64, u64::saturating_add);
        Usage {
            tools,
            worker: resident_bytes("/proc/self/statm"),
        }
    }

    /// Lists `/proc`, forgets the pids that left it and judges the new ones.
    fn refresh(&mut self) {
        self.listing += 1;
        let listing = self.listing;
        let mut new: HashMap<u32, Option<u32>> = HashMap::new();
        for pid in kugetsu_os::process::pids() {
            match self.known.get_mut(&pid) {
                Some(known) => known.seen = listing,
                None => {
                    new.insert(pid, parent_of(pid));
                }
            }
        }
        self.known.retain(|_, known| known.seen == listing);
        let pids: Vec<u32> = new.keys().copied().collect();
        for pid in pids {
            let _ = self.judge(pid, &new, 0);
        }
    }

    /// Whether `pid` is the call's, judging it (and new ancestors first) when it is new.
    ///
    /// `None` when it cannot be told yet: the pid, or a new ancestor, vanished before its
    /// parent could be read. Such a pid gets no verdict and is looked at again next time, so a
    /// process whose short-lived parent exited in between is not written off for good.
    fn judge(&mut self, pid: u32, new: &HashMap<u32, Option<u32>>, depth: usize) -> Option<bool> {
        if let Some(known) = self.known.get(&pid) {
            return Some(known.ours);
        }
        if pid == 0 {
            // The "parent" of init and of processes whose parent is outside our pid namespace.
            return Some(false);
        }
        let parent = new.get(&pid).copied().flatten();
        let by_tree = if Some(pid) == self.shell || (self.adopts && parent == Some(self.worker)) {
            Some(true)
        } else if depth >= MAX_CHAIN {
            Some(false)
        } else {
            parent.and_then(|parent| self.judge(parent, new, depth + 1))
        };
        let ours = match by_tree {
            Some(true) => true,
            _ if !self.adopts && has_env_entry(pid, &self.tag) => true,
            Some(false) => false,
            None => return None,
        };
        self.known.insert(
            pid,
            Known {
                ours,
                seen: self.listing,
            },
        );
        Some(ours)
    }
}

/// Resident bytes from a `statm` file (its second field, in pages); 0 for a process gone.
/// A tool process's memory: its PSS (shared pages split among the processes sharing them, so
/// many forks of one program are not counted many times over), else its RSS.
fn tool_bytes(pid: u32) -> u64 {
    kugetsu_os::process::proportional_bytes(pid)
        .unwrap_or_else(|| resident_bytes(&format!("/proc/{pid}/statm")))
}

fn resident_bytes(statm: &str) -> u64 {
    std::fs::read_to_string(statm)
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages.saturating_mul(page_size()))
}

/// The size of a memory page, asked of the system once.
fn page_size() -> u64 {
    static PAGE_SIZE: OnceLock<u64> = OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        #[expect(
            unsafe_code,
            reason = "sysconf has no safe wrapper among the enabled nix features"
        )]
        // SAFETY: sysconf only reads a system constant; it takes no pointers.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
    })
}

/// Whether the environment of `pid` holds the exact `NAME=value` `entry`.
fn has_env_entry(pid: u32, entry: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|environ| environ.split(|b| *b == 0).any(|var| var == entry))
}

/// `512 MiB`, `1.2 GiB`: a size as a person reads it.
pub(crate) fn human_size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    let one_decimal = |value: f64, unit: &str| {
        let text = format!("{value:.1}");
        let text = text.strip_suffix(".0").unwrap_or(&text);
        format!("{text} {unit}")
    };
    if bytes >= GIB {
        one_decimal(bytes as f64 / GIB as f64, "GiB")
    } else if bytes >= MIB {
        format!("{} MiB", (bytes + MIB / 2) / MIB)
    } else {
        format!("{} KiB", bytes.div_ceil(KIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::reap::TAG_VAR;

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human_size(512 * 1024 * 1024), "512 MiB");
        assert_eq!(human_size(1288490189), "1.2 GiB");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(70 * 1024 * 1024 + 300_000), "70 MiB");
        assert_eq!(human_size(1000), "1 KiB");
    }

    #[test]
    fn the_worker_itself_is_measured() {
        assert!(page_size() >= 4096);
        assert!(resident_bytes("/proc/self/statm") > 0);
        assert_eq!(resident_bytes("/proc/0/statm"), 0);
    }

    #[test]
    fn a_child_is_the_calls_and_a_process_from_before_is_not() {
        let tag = CallTag::new();
        let mut before = std::process::Command::new("sleep")
            .arg("30")
            .env(TAG_VAR, tag.value())
            .spawn()
            .unwrap();
        let baseline = Baseline::take();
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let mut members = Members::new(baseline, Some(shell.id()), &tag);
        // The shell forks its sleep right away, but not necessarily before we look.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let ours = loop {
            members.refresh();
            let ours: Vec<u32> = members
                .known
                .iter()
                .filter(|(_, known)| known.ours)
                .map(|(pid, _)| *pid)
                .collect();
            if ours.len() == 2 || std::time::Instant::now() > deadline {
                break ours;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        kugetsu_os::process::kill_pids(&ours);
        before.kill().unwrap();
        let _ = shell.wait();
        let _ = before.wait();
        assert_eq!(ours.len(), 2, "{ours:?}");
        assert!(ours.contains(&shell.id()));
        // Tagged, but alive before the call: never the call's.
        assert!(!ours.contains(&before.id()));
    }
}

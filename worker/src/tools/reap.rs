//! Killing everything a bash call started, including processes that left its process group.
//!
//! A call's processes are found three ways, because each alone has holes:
//!
//! 1. **The process group.** The shell leads its own group ([`kugetsu_os::process::contain`]), so
//!    one `killpg` reaches every `&` job and pipeline that did not move to another group.
//! 2. **The call tag.** Every process of the call inherits `KUGETSU_TOOL_CALL=<unique>` in its
//!    environment, so `/proc/<pid>/environ` finds those that left the group (`setsid`,
//!    daemons) wherever they were reparented. It misses processes that cleared their
//!    environment and those that are not dumpable (setuid programs, some agents).
//! 3. **Adopted orphans.** When the worker is a child subreaper (in production it is, see
//!    `ipc::serve`), orphans reparent to it. The worker starts no process other than its
//!    tools and runs one tool at a time, so every descendant it has after a call ended was
//!    started by that call: all are killed and the dead ones reaped. A process that is not a
//!    subreaper (a test binary, running tests in parallel) skips this step, so it never kills
//!    a neighbour's processes.
//!
//! [`CallProcesses`] does all three when told to ([`CallProcesses::kill_all`]) and when
//! dropped, which is what makes dropping a bash call's future safe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;

use kugetsu_os::process::ProcessGroup;

/// The environment variable that tags every process of one bash call.
pub(crate) const TAG_VAR: &str = "KUGETSU_TOOL_CALL";

/// Rounds of looking for tagged processes: a process killed in one round may have forked just
/// before, so look again until a round finds nothing.
const SWEEP_ROUNDS: usize = 8;

/// A value of [`TAG_VAR`] that no other call (of this or any worker) uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallTag(String);

impl CallTag {
    /// A fresh tag: worker pid, a per-process counter, and the time (pids get reused).
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self(format!(
            "{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// The value to put in the child's environment.
    pub(crate) fn value(&self) -> &str {
        &self.0
    }

    /// The `NAME=value` entry as it appears in `/proc/<pid>/environ`.
    pub(crate) fn entry(&self) -> Vec<u8> {
        format!("{TAG_VAR}={}", self.0).into_bytes()
    }
}

/// Everything one bash call started. Dropping it kills all of it (SIGKILL, no grace): the
/// kill-on-drop guard of a bash call.
#[derive(Debug)]
pub(crate) struct CallProcesses {
    /// The shell's process group; `None` if the shell's pid was unusable.
    group: Option<ProcessGroup>,
    tag: CallTag,
    /// Set once [`Self::kill_all`] ran, so drop does not scan `/proc` again.
    done: bool,
}

impl CallProcesses {
    /// Takes charge of the processes of the call whose shell leads `group` and whose
    /// environment carries `tag`.
    pub(crate) fn new(group: Option<ProcessGroup>, tag: CallTag) -> Self {
        Self {
            group,
            tag,
            done: false,
        }
    }

    /// Asks the process group to stop (SIGTERM); [`Self::kill_all`] must follow.
    pub(crate) fn terminate_group(&self) {
        if let Some(group) = self.group {
            group.signal_descendants_of(std::process::id(), Signal::SIGTERM);
        }
    }

    /// SIGKILLs every process of the call that is still alive, by all three means; returns how
    /// many tagged processes were alive (e.g. background jobs left behind by the shell).
    pub(crate) fn kill_all(&mut self) -> usize {
        self.done = true;
        let entry = self.tag.entry();
        let alive = tagged(&entry);
        // The shell may already be reaped: only members that are ours, never a reused id.
        if let Some(group) = self.group {
            group.signal_descendants_of(std::process::id(), Signal::SIGKILL);
        }
        kill(&alive);
        for _ in 1..SWEEP_ROUNDS {
            let more = tagged(&entry);
            if more.is_empty() {
                break;
            }
            kill(&more);
            std::thread::sleep(Duration::from_millis(2));
        }
        if is_subreaper() {
            let me = std::process::id();
            kugetsu_os::process::kill_descendants(me, &[]);
            // The shell itself is tokio's child: tokio reaps it, we must not.
            let shell: Vec<u32> = self
                .group
                .and_then(|g| u32::try_from(g.0).ok())
                .into_iter()
                .collect();
            kugetsu_os::process::reap_orphans(&shell);
        }
        alive.len()
    }
}

impl Drop for CallProcesses {
    fn drop(&mut self) {
        if !self.done {
            self.kill_all();
        }
    }
}

use kugetsu_os::process::{kill_pids as kill, processes_with_env as tagged};

/// Whether orphans of our descendants reparent to us (see the module docs, step 3).
pub(crate) fn is_subreaper() -> bool {
    nix::sys::prctl::get_child_subreaper().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_unique() {
        let a = CallTag::new();
        let b = CallTag::new();
        assert_ne!(a, b);
        assert!(a.value().starts_with(&format!("{}-", std::process::id())));
    }

    #[test]
    fn tagged_finds_processes_by_their_environment() {
        let tag = CallTag::new();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env(TAG_VAR, tag.value())
            .spawn()
            .unwrap();
        let pid = child.id();
        // spawn returns once exec happened, so the environment is the one set here.
        assert_eq!(tagged(&tag.entry()), vec![pid]);
        assert!(tagged(&CallTag::new().entry()).is_empty());
        let mut procs = CallProcesses::new(None, tag);
        assert_eq!(procs.kill_all(), 1);
        assert!(!child.wait().unwrap().success());
    }
}

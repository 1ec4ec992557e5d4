//! Process groups and clean-up of what a shadow started.
//!
//! Guarantees this module gives the code that spawns children, and how:
//! - A child runs in its own process group ([`contain`] calls `setpgid(0, 0)`), so one signal
//!   to the group reaches everything it forked that did not call `setsid`.
//! - A child dies with the thread that spawned it (`PR_SET_PDEATHSIG` = `SIGKILL`), and a child
//!   whose parent already died between `fork` and `exec` exits at once (parent re-check).
//! - [`become_subreaper`] makes orphans of our descendants (e.g. a `setsid` grandchild whose
//!   parent exited) reparent to us instead of init, so [`kill_descendants`] can still find them.
//!
//! Linux-only: kugetsu targets Linux VPSes.

use std::collections::HashMap;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The id of a process group we created (equal to its leader's pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessGroup(pub i32);

impl ProcessGroup {
    /// The group led by the child `pid` (valid for children spawned through [`contain`]).
    pub fn of_leader(pid: u32) -> Option<Self> {
        i32::try_from(pid).ok().filter(|p| *p > 0).map(ProcessGroup)
    }

    /// Sends `signal` to every process of the group; a group already gone is not an error.
    ///
    /// Only safe while the leader is not yet reaped: once it is, and the group is empty, the
    /// id can be reused (pid_max may be as low as 32768) by an unrelated process leading its
    /// own group. After reaping, use [`ProcessGroup::signal_descendants_of`].
    pub fn signal(self, signal: Signal) {
        let _ = killpg(Pid::from_raw(self.0), signal);
    }

    /// Sends `signal` to the members of this group that descend from `ancestor`, found in
    /// `/proc`. Safe whenever: a reused group id of processes that are not ours is left
    /// alone. Returns how many were signalled.
    pub fn signal_descendants_of(self, ancestor: u32, signal: Signal) -> usize {
        let ours = descendants(ancestor);
        let mut sent = 0;
        for pid in ours {
            if group_of(pid) == Some(self.0)
                && let Ok(raw) = i32::try_from(pid)
                && nix::sys::signal::kill(Pid::from_raw(raw), signal).is_ok()
            {
                sent += 1;
            }
        }
        sent
    }
}

/// Makes `command` spawn its child in a new process group that dies with this process.
pub fn contain(command: &mut tokio::process::Command) {
    command.process_group(0);
    let parent = std::process::id();
    #[expect(
        unsafe_code,
        reason = "pre_exec is the only way to set PDEATHSIG in the child"
    )]
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe syscalls
    // (prctl, getppid, _exit); it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then nobody would kill us.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`).
pub fn become_subreaper() -> std::io::Result<()> {
    #[expect(
        unsafe_code,
        reason = "prctl has no safe wrapper in nix for this option"
    )]
    // SAFETY: a plain prctl call with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The pids in `/proc` now (processes, not threads); none if `/proc` cannot be read.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// The proportional set size of `pid` in bytes (`Pss:` of `/proc/PID/smaps_rollup`): its
/// private pages plus its share of each page it shares, so summing it over many processes
/// that map the same pages (500 forks of one shell) counts those pages once. `None` where the
/// kernel has no `smaps_rollup` (before 4.14) or the process is gone; callers fall back to RSS.
pub fn proportional_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_pss(&text)
}

/// The `Pss:` line of a `smaps_rollup`, in bytes.
pub fn parse_pss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: u64 = line["Pss:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Every living descendant of `root` (children, grandchildren, ...), read from `/proc`.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in pids() {
        if let Some(ppid) = parent_of(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(kids) = children.get(&pid) {
            for &kid in kids {
                out.push(kid);
                stack.push(kid);
            }
        }
    }
    out
}

/// Field `index` (0 = state) of `/proc/PID/stat` after the command name.
fn stat_field(pid: u32, index: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(index).map(str::to_owned)
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_field(pid, 1)?.parse().ok()
}

/// The process group of `pid`, from `/proc/PID/stat`.
pub fn group_of(pid: u32) -> Option<i32> {
    stat_field(pid, 2)?.parse().ok()
}

/// SIGKILLs every descendant of `root` except those in `keep`, and returns how many it killed.
pub fn kill_descendants(root: u32, keep: &[u32]) -> usize {
    let mut killed = 0;
    // Killing a process may orphan its children onto us; loop until nothing is left.
    for _ in 0..8 {
        let victims: Vec<u32> = descendants(root)
            .into_iter()
            .filter(|pid| !keep.contains(pid))
            .collect();
        if victims.is_empty() {
            break;
        }
        for pid in victims {
            if let Ok(raw) = i32::try_from(pid)
                && nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok()
            {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    killed
}

/// Reaps every exited child that nobody else waits for (adopted orphans), without blocking.
pub fn reap_orphans(keep: &[u32]) {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    for pid in descendants(std::process::id()) {
        if keep.contains(&pid) || parent_of(pid) != Some(std::process::id()) {
            continue;
        }
        if let Ok(raw) = i32::try_from(pid) {
            // Only zombies answer; a living orphan stays as it is.
            let _ = waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Live processes (other than us) whose environment holds the exact `NAME=value` `entry`.
/// Zombies have an empty environment, so they never match.
pub fn processes_with_env(entry: &[u8]) -> Vec<u32> {
    let me = std::process::id();
    pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|b| *b == 0).any(|var| var == entry))
        })
        .collect()
}

/// Live processes (other than us) whose environment holds every one of `entries`.
pub fn processes_with_envs(entries: &[&[u8]]) -> Vec<u32> {
    let me = std::process::id();
    pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                entries
                    .iter()
                    .all(|entry| environ.split(|b| *b == 0).any(|var| var == *entry))
            })
        })
        .collect()
}

/// SIGKILLs each of `pids` (gone ones are skipped silently).
pub fn kill_pids(pids: &[u32]) {
    for &pid in pids {
        if let Ok(raw) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

/// Reaps `pids` that are our children and have exited (adopted orphans we killed), waiting
/// at most `limit` for them to die.
pub fn reap(pids: &[u32], limit: Duration) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = std::time::Instant::now() + limit;
    let me = std::process::id();
    let mut left: Vec<u32> = pids.to_vec();
    // A killed process's children are reparented to us only once their own parent is gone:
    // one not yet ours is looked at again until it is, or it is gone from /proc.
    while !left.is_empty() && std::time::Instant::now() < deadline {
        left.retain(|&pid| {
            let Ok(raw) = i32::try_from(pid) else {
                return false;
            };
            match parent_of(pid) {
                None => false,
                Some(parent) if parent != me => true,
                Some(_) => matches!(
                    waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)),
                    Ok(WaitStatus::StillAlive)
                ),
            }
        });
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Our zombie children, for [`reap_lingering`] (from `/proc/self/task/*/children`: only our
/// own children are looked at, not the whole process table).
pub fn zombie_children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        out.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
                .filter(|&pid| stat_field(pid, 0).as_deref() == Some("Z")),
        );
    }
    out
}

/// Children this process spawned and waits for itself (see [`own`]): never reaped by
/// [`reap_lingering`], whatever state they are in.
static OWNED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Marks `pid`, a child this process just spawned and will wait for, as its own until the
/// returned guard is dropped (after the wait).
pub fn own(pid: u32) -> Owned {
    OWNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(pid);
    Owned(pid)
}

/// A child marked by [`own`].
#[derive(Debug)]
pub struct Owned(u32);

impl Drop for Owned {
    fn drop(&mut self) {
        let mut owned = OWNED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = owned.iter().position(|&p| p == self.0) {
            owned.swap_remove(i);
        }
    }
}

/// Reaps the zombies among `earlier` (from [`zombie_children`] a while ago) that are still
/// our zombies now, except `keep` and the children marked with [`own`] (their spawner waits
/// for them): what is left is an adopted orphan nobody waits for.
pub fn reap_lingering(earlier: &[u32], keep: &[u32]) -> usize {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let now = zombie_children();
    let owned = OWNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut reaped = 0;
    for pid in earlier {
        if keep.contains(pid) || owned.contains(pid) || !now.contains(pid) {
            continue;
        }
        if let Ok(raw) = i32::try_from(*pid)
            && waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)).is_ok()
        {
            reaped += 1;
        }
    }
    reaped
}

#[cfg(test)]
mod pss_tests {
    use super::*;

    #[test]
    fn pss_is_read_in_bytes() {
        let rollup = "55d0-7ff [rollup]\nRss:                3940 kB\nPss:                 811 kB\n\
                      Pss_Anon:            304 kB\n";
        assert_eq!(parse_pss(rollup), Some(811 * 1024));
        assert_eq!(parse_pss("Rss: 3 kB\n"), None);
        assert_eq!(parse_pss("Pss: lots kB\n"), None);
        if std::path::Path::new("/proc/self/smaps_rollup").exists() {
            let pss = proportional_bytes(std::process::id()).unwrap();
            assert!(pss > 0);
        }
    }
}

//! Finding processes by command line through `/proc`, to prove that nothing a task started
//! outlives it. Tests give their long-running commands a unique marker (`sleep 300.4242`).

use std::time::{Duration, Instant};

/// A live process: its pid and its command line with NULs shown as spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub cmdline: String,
}

/// Every live (non-zombie) process, other than this one, whose command line contains `marker`.
pub fn matching(marker: &str) -> Vec<Proc> {
    let me = std::process::id();
    let mut out = Vec::new();
    for pid in kugetsu_os::process::pids() {
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if !cmdline.contains(marker) || is_zombie(pid) {
            continue;
        }
        out.push(Proc {
            pid,
            cmdline: cmdline.trim_end().to_owned(),
        });
    }
    out
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name, which may itself hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

/// Polls until no process matches `marker`; panics with the survivors after `timeout`.
pub async fn wait_until_gone(marker: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = matching(marker);
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("processes matching {marker:?} still alive after {timeout:?}: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until a process matches `marker`; panics after `timeout`.
pub async fn wait_until_running(marker: &str, timeout: Duration) -> Proc {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = matching(marker).into_iter().next() {
            return found;
        }
        if Instant::now() >= deadline {
            panic!("no process matching {marker:?} appeared within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// Polls until process `pid` is gone (or a zombie); panics after `timeout`.
pub async fn wait_until_dead(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
                .unwrap_or_default();
            panic!("process {pid} ({cmdline}) still alive after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills every process matching its marker when dropped, so a test that provokes a leak
/// (or finds one) does not leave it running for the rest of the suite, even when it fails.
#[derive(Debug)]
pub struct KillOnDrop(pub &'static str);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for leftover in matching(self.0) {
            if let Ok(pid) = i32::try_from(leftover.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

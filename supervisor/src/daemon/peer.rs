//! Whether a socket peer is a shadow's process, which must never drive the daemon.
//!
//! The peer's pid comes from `SO_PEERCRED` (the kernel's, not the peer's word). A peer is a
//! shadow's when any of these holds, checked from the peer up through its ancestors in
//! `/proc`:
//! - it descends from this daemon: no legitimate client does (the daemon's children are
//!   workers and git), and since the daemon is a subreaper, an orphan a shadow left behind
//!   (`setsid nohup ...`) is reparented to the daemon and still counts;
//! - it descends from a `kugetsu-worker` (a shadow of `kugetsu run` or of another daemon);
//! - its environment carries the `KUGETSU_SHADOW` marker (a tool can unset it in its own
//!   children, hence the other checks);
//! - it is in a shadow's cgroup (`kugetsu-shadows/`), which nothing in a shadow can leave.
//!
//! A peer whose pid the kernel cannot tell us (another pid namespace) is refused too.

use crate::task::shadow::SHADOW_ENV;

/// Why the peer `pid` counts as a shadow's process, or `None` when it does not.
pub fn shadow_reason(pid: Option<u32>) -> Option<String> {
    let Some(pid) = pid.filter(|p| *p > 0) else {
        return Some("its pid is not visible from the daemon".to_owned());
    };
    let me = std::process::id();
    if kugetsu_os::cgroup::in_shadow_cgroup(pid) {
        return Some(format!("pid {pid} is in a shadow's cgroup"));
    }
    let marker = format!("{SHADOW_ENV}=");
    if std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ
            .split(|b| *b == 0)
            .any(|var| var.starts_with(marker.as_bytes()))
    }) {
        return Some(format!("pid {pid} carries {SHADOW_ENV}"));
    }
    let mut current = pid;
    // Bounded: a chain longer than any real process tree is not worth following.
    for _ in 0..4096 {
        if current == me {
            return Some(format!("pid {pid} descends from the daemon"));
        }
        let comm = std::fs::read_to_string(format!("/proc/{current}/comm")).unwrap_or_default();
        if comm.trim_end() == "kugetsu-worker" {
            return Some(format!("pid {pid} descends from worker {current}"));
        }
        match kugetsu_os::process::parent_of(current) {
            Some(parent) if parent > 0 && parent != current => current = parent,
            _ => break,
        }
    }
    None
}

//! A cgroup per shadow, to hold its processes to `pids_limit`.
//!
//! Two host shapes are supported, found by [`probe`]:
//! - cgroup v2 where our own cgroup is delegated to us (systemd `Delegate=yes`): the
//!   supervisor moves itself into a `supervisor` leaf (v2 forbids processes in a cgroup
//!   whose children have controllers), enables `pids` for the children, and makes
//!   `kugetsu-shadows/<task>` beside it;
//! - cgroup v1 with a writable `pids` hierarchy: `<pids mount>/<our path>/kugetsu-shadows/<task>`.
//!
//! Anything else (v2 without delegation, no `pids` controller, a read-only `/sys/fs/cgroup`)
//! is [`CgroupSupport::Unavailable`] with the reason, and `pids_limit` is reported missing.
//! The worker joins its cgroup between fork and exec ([`join_in_pre_exec`]), so the limit
//! covers every process it and its tools ever start; nothing in a shadow can write the
//! cgroup files (the sandbox grants no write under `/sys`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// The directory that holds one cgroup per shadow; its name also marks a shadow's process.
pub const SHADOWS_DIR: &str = "kugetsu-shadows";

/// Where shadow cgroups can be made on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSupport {
    /// cgroup v2, delegated: `dir` is our own cgroup.
    V2 { dir: PathBuf },
    /// cgroup v1 `pids` hierarchy: `dir` is our own cgroup in it.
    V1Pids { dir: PathBuf },
    /// No usable cgroup, and why.
    Unavailable(String),
}

/// Finds out where shadow cgroups can be made.
pub fn probe() -> CgroupSupport {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
    if v2.exists() {
        let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
            return CgroupSupport::Unavailable("cannot find our cgroup v2 path".to_owned());
        };
        let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        let controllers =
            std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "pids") {
            return CgroupSupport::Unavailable(format!(
                "cgroup v2: the pids controller is not available in {}",
                dir.display()
            ));
        }
        if !writable(&dir.join("cgroup.subtree_control")) || !writable(&dir) {
            return CgroupSupport::Unavailable(format!(
                "cgroup v2: {} is not delegated to us (systemd: Delegate=yes)",
                dir.display()
            ));
        }
        return CgroupSupport::V2 { dir };
    }
    let mount = Path::new("/sys/fs/cgroup/pids");
    if mount.is_dir() {
        let path = own
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers.split(',').any(|c| c == "pids").then_some(path)
            })
            .unwrap_or("/");
        let dir = mount.join(path.trim_start_matches('/'));
        if !writable(&dir) {
            return CgroupSupport::Unavailable(format!(
                "cgroup v1: {} is not writable by us",
                dir.display()
            ));
        }
        return CgroupSupport::V1Pids { dir };
    }
    CgroupSupport::Unavailable("no cgroup v2 and no cgroup v1 pids hierarchy".to_owned())
}

fn writable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    #[expect(unsafe_code, reason = "access(2) has no std wrapper")]
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe {
        libc::access(c.as_ptr(), libc::W_OK) == 0
    }
}

/// One shadow's cgroup. Dropping it does nothing: [`ShadowCgroup::remove`] once the shadow's
/// processes are gone.
#[derive(Debug, Clone)]
pub struct ShadowCgroup {
    dir: PathBuf,
}

impl ShadowCgroup {
    /// Makes (or reuses) the cgroup of task `id` with `pids.max` = `pids_limit`.
    pub fn create(support: &CgroupSupport, id: &str, pids_limit: u64) -> io::Result<Self> {
        let parent = match support {
            CgroupSupport::V1Pids { dir } => {
                let parent = dir.join(SHADOWS_DIR);
                std::fs::create_dir_all(&parent)?;
                parent
            }
            CgroupSupport::V2 { dir } => prepare_v2(dir)?,
            CgroupSupport::Unavailable(reason) => {
                return Err(io::Error::new(io::ErrorKind::Unsupported, reason.clone()));
            }
        };
        let dir = parent.join(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        std::fs::write(dir.join("pids.max"), format!("{pids_limit}\n"))?;
        Ok(ShadowCgroup { dir })
    }

    /// The cgroup task `id` has (or would have) on this host, without making it.
    pub fn of(support: &CgroupSupport, id: &str) -> Option<Self> {
        let parent = match support {
            CgroupSupport::V1Pids { dir } | CgroupSupport::V2 { dir } => dir.join(SHADOWS_DIR),
            CgroupSupport::Unavailable(_) => return None,
        };
        Some(ShadowCgroup {
            dir: parent.join(id),
        })
    }

    /// The file a process writes `0` to in order to join.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILLs every process in the cgroup until it is empty, and returns their pids. A
    /// shadow's processes cannot leave its cgroup, so this reaches everything it started,
    /// however it hid (`setsid`, a fork storm, a cleared environment marker). v2's
    /// `cgroup.kill` is used where it exists; the member list is read either way.
    pub fn kill_all(&self) -> Vec<u32> {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        let mut killed: Vec<u32> = Vec::new();
        // A member may be mid-fork when it is killed: look again until a round finds none.
        for _ in 0..50 {
            let Ok(text) = std::fs::read_to_string(self.procs_file()) else {
                break;
            };
            let members: Vec<u32> = text
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if members.is_empty() {
                break;
            }
            crate::process::kill_pids(&members);
            for pid in members {
                if !killed.contains(&pid) {
                    killed.push(pid);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        killed
    }

    /// Removes the cgroup; fails (harmlessly) while a process is still in it.
    pub fn remove(&self) -> io::Result<()> {
        std::fs::remove_dir(&self.dir)
    }
}

/// v2: our processes move to a `supervisor` leaf so `pids` can be enabled for children.
fn prepare_v2(own: &Path) -> io::Result<PathBuf> {
    let leaf = own.join("supervisor");
    let parent = own.join(SHADOWS_DIR);
    if !parent.join("cgroup.subtree_control").exists() || !leaf.exists() {
        std::fs::create_dir_all(&leaf)?;
        let procs = std::fs::read_to_string(own.join("cgroup.procs"))?;
        for pid in procs.split_whitespace() {
            // A process that exited in between is not an error.
            let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
        }
        std::fs::write(own.join("cgroup.subtree_control"), "+pids")?;
        std::fs::create_dir_all(&parent)?;
        std::fs::write(parent.join("cgroup.subtree_control"), "+pids")?;
    }
    Ok(parent)
}

/// Whether process `pid` is in a shadow's cgroup.
pub fn in_shadow_cgroup(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
        text.lines()
            .any(|l| l.contains(&format!("/{SHADOWS_DIR}/")))
    })
}

/// Makes `command`'s child join the cgroup whose `cgroup.procs` is `procs` before it execs,
/// so the limit holds from its first instruction. A child that cannot join fails to spawn.
pub fn join_in_pre_exec(command: &mut tokio::process::Command, procs: &Path) -> io::Result<()> {
    let path = CString::new(procs.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the cgroup path"))?;
    #[expect(
        unsafe_code,
        reason = "pre_exec is the only way to join a cgroup before the child runs"
    )]
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe syscalls
    // (open, write, close) on memory allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let written = libc::write(fd, c"0\n".as_ptr().cast(), 2);
            let error = io::Error::last_os_error();
            libc::close(fd);
            if written != 2 {
                return Err(error);
            }
            Ok(())
        });
    }
    Ok(())
}

//! Private mount and network namespaces for a tool call.
//!
//! - Mount: `/` is made private (nothing we mount leaks back to the host), the task's temp dir
//!   is bound over `/tmp` when the policy asks for it, the policy's `binds` are made (the
//!   task's own refs directory over the shared `refs/heads/kugetsu/`), and each `read_only` file
//!   (the worktree's `.git` link) is bound onto itself read-only, so it can be neither
//!   rewritten nor removed.
//! - Pid: the guard's next child (the tool's shell) is the first process of a new pid
//!   namespace, with a `/proc` of its own ([`mount_proc`]): the tool sees only the shadow's
//!   processes, and when the shell exits everything it left behind is killed by the kernel.
//! - Network (`network = "off"`): a namespace of its own, with only a loopback device that
//!   is brought up, so local test servers inside the call still work while nothing outside
//!   is reachable.
//!
//! As root the process unshares directly; otherwise it first enters a user namespace that
//! maps only its own uid and gid. When the kernel or the container refuses `unshare`
//! (`EPERM`, `EINVAL`, `ENOSPC` for `user.max_user_namespaces = 0`), this returns the error and
//! the caller decides (see [`super::enter`]).

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::Path;

use kugetsu_os::probe::NamespaceRoute;
use kugetsu_protocol::{NetworkMode, SandboxPolicy};
use nix::mount::{MsFlags, mount};

/// What entering the namespaces changed, for the Landlock rules that follow.
#[derive(Debug, Default)]
pub(super) struct Entered {
    /// The task's temp dir is mounted on `/tmp` (so `/tmp` needs its write rule).
    pub(super) private_tmp: bool,
}

/// Enters the namespaces `policy` asks for.
pub(super) fn enter(policy: &SandboxPolicy) -> Result<Entered, String> {
    let network_off = policy.network == NetworkMode::Off;
    let tmp = policy
        .tmp_dir
        .as_deref()
        .map(Path::new)
        .filter(|dir| policy.private_tmp && dir.is_dir() && Path::new("/tmp").is_dir());
    let cwd = std::env::current_dir().map_err(|e| format!("the working directory: {e}"))?;
    let root = nix::unistd::geteuid().is_root();
    let route = if root {
        NamespaceRoute::Privileged
    } else {
        NamespaceRoute::UserNamespace
    };
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(
        route.flags(network_off),
    ))
    .map_err(|e| format!("unshare: {e}"))?;
    if route == NamespaceRoute::UserNamespace {
        // setgroups must be denied before an unprivileged process may write gid_map.
        write("/proc/self/setgroups", "deny")?;
        write("/proc/self/uid_map", &format!("{uid} {uid} 1"))?;
        write("/proc/self/gid_map", &format!("{gid} {gid} 1"))?;
    }
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("making / private: {e}"))?;
    if let Some(tmp) = tmp {
        bind(tmp, Path::new("/tmp"))?;
    }
    for (source, target) in &policy.binds {
        let (source, target) = (Path::new(source), Path::new(target));
        if source.is_dir() && target.is_dir() {
            bind(source, target)?;
        }
    }
    for file in &policy.read_only {
        let file = Path::new(file);
        if !file.exists() {
            continue;
        }
        bind(file, file)?;
        mount(
            none,
            file,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            none,
        )
        .map_err(|e| format!("making {} read-only: {e}", file.display()))?;
    }
    // The working directory still points into the mounts as they were: enter it again by
    // path, or relative paths would bypass the read-only binds.
    std::env::set_current_dir(&cwd).map_err(|e| format!("re-entering {}: {e}", cwd.display()))?;
    if network_off {
        // Without loopback up, even a server the call starts itself is unreachable. Failing
        // to bring it up leaves the call with no network at all, which is still "off".
        let _ = loopback_up();
    }
    Ok(Entered {
        private_tmp: tmp.is_some(),
    })
}

/// Mounts a `/proc` of the calling process's pid namespace: called in the first process of the
/// namespace the guard made, before it execs the tool.
pub(super) fn mount_proc() -> std::io::Result<()> {
    let none: Option<&str> = None;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(std::io::Error::from)
}

fn bind(source: &Path, target: &Path) -> Result<(), String> {
    let none: Option<&str> = None;
    mount(
        Some(source),
        target,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(|e| format!("binding {} on {}: {e}", source.display(), target.display()))
}

fn write(path: &str, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {path}: {e}"))
}

/// `ip link set lo up`, with one ioctl on a throwaway socket.
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::FromRawFd as _;
    #[expect(
        unsafe_code,
        reason = "SIOCGIFFLAGS/SIOCSIFFLAGS have no safe wrapper in std or nix"
    )]
    // SAFETY: `socket` returns a fresh descriptor that `OwnedFd` then owns; `ifreq` is a
    // plain C struct, zeroed, with a NUL-terminated name, that the kernel reads and writes
    // within its size.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let socket = OwnedFd::from_raw_fd(raw);
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

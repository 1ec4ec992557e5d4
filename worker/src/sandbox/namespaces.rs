//! Private mount and network namespaces for a tool call.
//!
//! - Mount: `/` is made private (nothing we mount leaks back to the host), the task's temp dir
//!   is bound over `/tmp`, paths the policy keeps visible under `/tmp` (a worktree or
//!   repository that lives there) are bound back at their places, and each `read_only` file
//!   (the worktree's `.git` link) is bound onto itself read-only, so it can be neither
//!   rewritten nor removed.
//! - Network (`network = "off"`): a namespace of its own, with only a loopback device that
//!   is brought up, so local test servers inside the call still work while nothing outside
//!   is reachable.
//!
//! As root the process unshares directly; otherwise it first enters a user namespace that
//! maps only its own uid and gid. When the kernel or the container refuses `unshare`
//! (`EPERM`, `EINVAL`, `ENOSPC` for `user.max_user_namespaces = 0`), this returns the error and
//! the caller decides (see [`super::enter`]).

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use kugetsu_os::probe::NamespaceRoute;
use kugetsu_protocol::{NetworkMode, SandboxPolicy};
use nix::fcntl::{OFlag, open};
use nix::mount::{MsFlags, mount};
use nix::sys::stat::Mode;

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
        .filter(|dir| dir.is_dir() && Path::new("/tmp").is_dir());
    if tmp.is_none() && policy.read_only.is_empty() && !network_off {
        return Ok(Entered::default());
    }
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
        // Opened in the new namespace (a bind's source must be a mount of it) and before
        // /tmp is covered (afterwards they could not be found by path).
        let keep = kept_under_tmp(&policy.keep_visible)?;
        bind(tmp, Path::new("/tmp"))?;
        for (path, fd) in &keep {
            make_mount_point(path, fd)?;
            let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
            bind(Path::new(&source), path)?;
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

/// The paths of `keep` that live under `/tmp`, outermost only, each opened (`O_PATH`).
fn kept_under_tmp(keep: &[String]) -> Result<Vec<(PathBuf, OwnedFd)>, String> {
    let mut paths: Vec<PathBuf> = keep
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.starts_with("/tmp") && p != Path::new("/tmp") && p.exists())
        .collect();
    paths.sort();
    let mut outer: Vec<PathBuf> = Vec::new();
    for path in paths {
        if !outer.iter().any(|o| path.starts_with(o)) {
            outer.push(path);
        }
    }
    outer
        .into_iter()
        .map(|path| {
            open(&path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                .map(|fd| (path.clone(), fd))
                .map_err(|e| format!("opening {}: {e}", path.display()))
        })
        .collect()
}

/// Creates, in the new `/tmp`, the directory or empty file that `path` is bound onto.
fn make_mount_point(path: &Path, fd: &OwnedFd) -> Result<(), String> {
    let is_dir = nix::sys::stat::fstat(fd)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .unwrap_or(true);
    let made = if is_dir {
        std::fs::create_dir_all(path)
    } else {
        path.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::File::create(path).map(drop))
    };
    made.map_err(|e| format!("making a mount point at {}: {e}", path.display()))
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

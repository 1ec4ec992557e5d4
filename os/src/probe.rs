//! What this host lets kugetsu use to confine a shadow, found out by trying.
//!
//! The supervisor probes to build each task's report (`started.sandbox`, `kugetsu doctor`);
//! the worker's tool guard relies on the same answers to decide which mechanisms to apply and
//! which to report missing rather than fail on. Every probe is cheap (a syscall, a forked child
//! that exits at once, a few files in `/sys`) and is run once per process: [`host`].

use std::sync::OnceLock;

use crate::cgroup::{self, CgroupSupport};

/// The host's sandboxing features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The Landlock ABI version the kernel offers, or why there is none.
    pub landlock: Result<u32, String>,
    /// Whether a process can get mount, pid and network namespaces of its own (through a
    /// user namespace when it is not root), or why not.
    pub namespaces: Result<NamespaceRoute, String>,
    /// How a shadow's processes can be counted and limited.
    pub cgroups: CgroupSupport,
    /// Whether a process in a Landlock domain is really refused `/proc/PID/environ` of a
    /// process outside it (tried, not assumed: some kernels have been seen to allow it).
    pub landlock_ptrace: bool,
}

/// How a tool process gets its namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceRoute {
    /// It has `CAP_SYS_ADMIN` (root): `unshare(CLONE_NEWNS | CLONE_NEWNET)` directly.
    Privileged,
    /// Through a user namespace of its own first (`CLONE_NEWUSER`).
    UserNamespace,
}

impl NamespaceRoute {
    /// The `unshare` flags that give a process's children private mount and pid namespaces
    /// (and a network namespace with `network`).
    pub fn flags(self, network: bool) -> libc::c_int {
        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID;
        if network {
            flags |= libc::CLONE_NEWNET;
        }
        if self == NamespaceRoute::UserNamespace {
            flags |= libc::CLONE_NEWUSER;
        }
        flags
    }
}

impl Host {
    /// Landlock signal and abstract-socket scoping came with ABI 6.
    pub fn landlock_scopes(&self) -> bool {
        self.landlock.as_ref().is_ok_and(|abi| *abi >= 6)
    }

    /// Landlock TCP bind/connect rules came with ABI 4.
    pub fn landlock_tcp(&self) -> bool {
        self.landlock.as_ref().is_ok_and(|abi| *abi >= 4)
    }
}

/// The probe's answers, computed on first use.
pub fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| Host {
        landlock: landlock_abi(),
        namespaces: namespaces(),
        cgroups: cgroup::probe(),
        landlock_ptrace: landlock_ptrace(),
    })
}

/// Forks a child that enters a minimal Landlock domain and tries to open our
/// `/proc/PID/environ`: true when that is refused.
fn landlock_ptrace() -> bool {
    /// `struct landlock_ruleset_attr` with only `handled_access_fs` (ABI 1 layout).
    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
    }
    const MAKE_BLOCK: u64 = 1 << 11;
    let Ok(path) = std::ffi::CString::new(format!("/proc/{}/environ", std::process::id())) else {
        return false;
    };
    let attr = RulesetAttr {
        handled_access_fs: MAKE_BLOCK,
    };
    #[expect(
        unsafe_code,
        reason = "fork and the Landlock syscalls are raw; the probe needs a child"
    )]
    // SAFETY: the child only makes async-signal-safe syscalls (landlock_create_ruleset,
    // prctl, landlock_restrict_self, open, _exit) on memory prepared before the fork; the
    // parent only waits for it.
    unsafe {
        match libc::fork() {
            -1 => false,
            0 => {
                let fd = libc::syscall(
                    libc::SYS_landlock_create_ruleset,
                    &attr as *const RulesetAttr,
                    std::mem::size_of::<RulesetAttr>(),
                    0u32,
                );
                if fd < 0 || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(2);
                }
                if libc::syscall(libc::SYS_landlock_restrict_self, fd as libc::c_int, 0u32) != 0 {
                    libc::_exit(2);
                }
                if libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) >= 0 {
                    libc::_exit(1);
                }
                libc::_exit(0)
            }
            child => {
                let mut status = 0;
                while libc::waitpid(child, &mut status, 0) != child {
                    if *libc::__errno_location() != libc::EINTR {
                        return false;
                    }
                }
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
            }
        }
    }
}

/// Asks the kernel for its Landlock ABI version (cheap: one syscall, not cached) (`landlock_create_ruleset` with the
/// `VERSION` flag creates nothing).
pub fn landlock_abi() -> Result<u32, String> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    #[expect(
        unsafe_code,
        reason = "the version query of landlock_create_ruleset has no safe wrapper here"
    )]
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag, the kernel reads and
    // writes no memory of ours and returns a number.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if version > 0 {
        return u32::try_from(version).map_err(|_| "an unknown Landlock ABI".to_owned());
    }
    Err(match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOSYS) => "the kernel is built without Landlock".to_owned(),
        Some(libc::EOPNOTSUPP) => {
            "Landlock is not enabled at boot (add `landlock` to the `lsm=` kernel parameter)"
                .to_owned()
        }
        _ => format!(
            "Landlock is unavailable: {}",
            std::io::Error::last_os_error()
        ),
    })
}

/// Forks a child that tries to enter new mount, pid and network namespaces (and make its
/// mounts private, which is what the tool guard does next), and reports how it went.
fn namespaces() -> Result<NamespaceRoute, String> {
    #[expect(unsafe_code, reason = "geteuid has no side effects")]
    // SAFETY: geteuid cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let route = if root {
        NamespaceRoute::Privileged
    } else {
        NamespaceRoute::UserNamespace
    };
    match try_in_child(route.flags(true)) {
        0 => Ok(route),
        errno => Err(format!(
            "unshare of mount, pid and network namespaces{} fails here: {}",
            if root { "" } else { " (in a user namespace)" },
            std::io::Error::from_raw_os_error(errno)
        )),
    }
}

/// Runs `unshare(flags)` and a private remount of `/` in a forked child; returns 0 or the
/// errno that stopped it.
fn try_in_child(flags: libc::c_int) -> i32 {
    #[expect(
        unsafe_code,
        reason = "fork, unshare, mount and waitpid are raw syscalls; the probe needs a child"
    )]
    // SAFETY: the child only makes async-signal-safe syscalls (unshare, mount, _exit) on
    // static data, so forking a multi-threaded process is sound; the parent only waits.
    unsafe {
        match libc::fork() {
            -1 => *libc::__errno_location(),
            0 => {
                if libc::unshare(flags) != 0 {
                    libc::_exit(*libc::__errno_location() & 0x7f);
                }
                let root = c"/".as_ptr();
                if libc::mount(
                    std::ptr::null(),
                    root,
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    libc::_exit(*libc::__errno_location() & 0x7f);
                }
                libc::_exit(0)
            }
            child => {
                let mut status = 0;
                loop {
                    if libc::waitpid(child, &mut status, 0) == child {
                        break;
                    }
                    if *libc::__errno_location() != libc::EINTR {
                        return libc::ECHILD;
                    }
                }
                if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    libc::EINTR
                }
            }
        }
    }
}

//! The open-files limit a fleet needs.
//!
//! Each running shadow holds a few descriptors in the daemon (the worker's stdin and stdout
//! pipes, its event log, a pidfd or signal pipe share) and more for a moment while git runs.
//! The common default soft limit of 1024 runs out at a few hundred shadows, so the daemon
//! raises its soft limit to the hard limit at start; `doctor` reports what that allows.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors a running shadow holds in the daemon, with room for its transient git calls.
pub const FDS_PER_SHADOW: u64 = 4;
/// Descriptors the daemon keeps for itself (sockets, config watcher, clients, std streams).
pub const FDS_RESERVED: u64 = 128;

/// The open-files limit after trying to raise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

impl FdLimit {
    /// How many shadows this limit allows at once.
    pub fn shadows(self) -> u64 {
        self.soft.saturating_sub(FDS_RESERVED) / FDS_PER_SHADOW
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the result. A failure leaves
/// the limit as it was (and is reported by the caller through the returned figures).
pub fn raise_nofile() -> std::io::Result<FdLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        // RLIM_INFINITY is not accepted for NOFILE; the hard limit is what we may take.
        if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            return Ok(FdLimit { soft: hard, hard });
        }
    }
    Ok(FdLimit { soft, hard })
}

/// The current limit, unchanged.
pub fn current() -> std::io::Result<FdLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    Ok(FdLimit { soft, hard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_estimate_follows_the_soft_limit() {
        assert_eq!(
            FdLimit {
                soft: 1024,
                hard: 4096
            }
            .shadows(),
            224
        );
        assert_eq!(FdLimit { soft: 64, hard: 64 }.shadows(), 0);
        // Raising the soft limit up to the hard one needs no privilege.
        let raised = raise_nofile().unwrap();
        assert_eq!(raised.soft, raised.hard);
        assert_eq!(current().unwrap(), raised);
    }
}

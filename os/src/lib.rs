//! `kugetsu-os`: the OS plumbing both kugetsu binaries share, and nothing else.
//!
//! It is deliberately small (libc, nix, tokio's `Command`): the supervisor links it instead of
//! the whole agent, and the worker links it instead of carrying a second copy.
//!
//! - [`process`]: process groups, PDEATHSIG with the parent re-check, subreaping, finding and
//!   killing descendants through `/proc`.

pub mod process;

//! The environment bash commands run with: the worker's own, minus anything secret.
//!
//! The model must not see (or leak) the provider API keys, nor talk to the systemd notify
//! socket. The rules (secret-looking names, whole provider families, passwords inside URLs)
//! live in [`kugetsu_os::env`], because the supervisor applies the same ones to the worker's
//! own environment.

pub(crate) use kugetsu_os::env::scrubbed;

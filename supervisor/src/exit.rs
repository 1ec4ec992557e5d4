//! Exit codes of `kugetsu` and the error type that carries one.

use std::process::ExitCode;

use kugetsu_protocol::FinishStatus;

/// The task completed.
pub const SUCCESS: u8 = 0;
/// The task failed, was cancelled or timed out.
pub const FAILED: u8 = 1;
/// Bad usage or configuration: nothing was started.
pub const USAGE: u8 = 2;
/// The queue is full; retry later (`EX_TEMPFAIL`).
pub const QUEUE_FULL: u8 = 75;

/// The exit code for a finished task.
pub fn for_status(status: FinishStatus) -> u8 {
    match status {
        FinishStatus::Completed => SUCCESS,
        FinishStatus::Failed
        | FinishStatus::Cancelled
        | FinishStatus::TimedOut
        | FinishStatus::Paused => FAILED,
    }
}

/// Describes an I/O error for a person, naming the fix for the ones with a known cause.
pub fn describe_io(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => format!(
            "{error}: kugetsu ran out of file descriptors; raise the open-files limit \
             (`ulimit -n`, or LimitNOFILE= for systemd) or lower max_shadows"
        ),
        Some(libc::ENOSPC) => format!("{error}: the disk is full"),
        _ => error.to_string(),
    }
}

/// An error that ends the command, with the exit code it ends it with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input or configuration; nothing was started.
    #[error("{0}")]
    Usage(String),
    /// Something failed while running.
    #[error("{0}")]
    Failed(String),
    /// The daemon's queue is full; retry later.
    #[error("{0}")]
    QueueFull(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Usage(_) => USAGE,
            CliError::Failed(_) => FAILED,
            CliError::QueueFull(_) => QUEUE_FULL,
        })
    }
}

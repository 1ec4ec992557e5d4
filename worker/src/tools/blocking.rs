//! Running a tool's file work on tokio's blocking pool, so the worker's single async thread
//! keeps answering the supervisor (heartbeats, cancel) while a large read or grep runs.
//!
//! A blocking thread cannot be interrupted, so the work gets a [`Stop`] flag instead: dropping
//! the future returned by [`run_blocking`] raises it, and long loops check it and give up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::outcome::{ToolError, ToolOutput};

/// Raised when nobody waits for the result any more; long-running work checks it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Whether the caller went away and the work should end now.
    pub(crate) fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Raises the flag when dropped, i.e. when the tool call's future goes away.
struct RaiseOnDrop(Stop);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `work` on the blocking pool. Dropping the returned future asks it to stop.
pub(crate) async fn run_blocking<F>(work: F) -> Result<ToolOutput, ToolError>
where
    F: FnOnce(&Stop) -> Result<ToolOutput, ToolError> + Send + 'static,
{
    let stop = Stop::default();
    let guard = RaiseOnDrop(stop.clone());
    let result = tokio::task::spawn_blocking(move || work(&stop)).await;
    drop(guard);
    result.unwrap_or_else(|e| {
        Err(ToolError::Failed(format!(
            "the tool stopped abnormally: {e}"
        )))
    })
}

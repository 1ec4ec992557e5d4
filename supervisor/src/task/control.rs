//! What the owner of a task can ask of it while it runs ([`ShadowControl`]), and where its next
//! run starts ([`Resume`]): the vocabulary shared by the driver, each attempt, and the owners
//! (`kugetsu run` and the daemon).

use crate::task::events::Progress;

/// What the owner of a running task can ask of it.
#[derive(Debug, Clone, PartialEq)]
pub enum ShadowControl {
    /// Stop the task: `finished` with status `cancelled`. A second `Cancel` kills at once.
    Cancel,
    /// Hand a message to the model at its next safe point (kept until it is delivered).
    Steer(String),
    /// Stop the worker but leave the task resumable (the daemon is shutting down).
    Detach,
    /// Record an event the owner made about the task (the conflict radar's `conflict`) in
    /// its log, in order with the worker's.
    Publish(kugetsu_protocol::Event),
    /// Let the tool call with this id run: its intent is durable where the owner keeps it (a
    /// cluster node, once the call's `tool_start` is in the database). Only a task whose
    /// tools are gated waits for it; the worker ignores it for any call but the waiting one.
    Proceed(String),
}

/// Where a run starts: which attempt, and whether the worker resumes from its journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub attempt: u32,
    pub from_journal: bool,
    pub earlier_restarts: u32,
}

impl Resume {
    /// A task's first run.
    pub const FRESH: Resume = Resume {
        attempt: 1,
        from_journal: false,
        earlier_restarts: 0,
    };

    /// Where a task continues after the runs `progress` describes: fresh if no worker ever
    /// started, else from its journal.
    pub fn after(progress: &Progress) -> Resume {
        if progress.starts == 0 {
            return Resume::FRESH;
        }
        Resume {
            attempt: progress.starts + 1,
            from_journal: true,
            earlier_restarts: progress.restarts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_resumes_fresh_until_a_worker_started() {
        assert_eq!(Resume::after(&Progress::default()), Resume::FRESH);
        let progress = Progress {
            starts: 2,
            restarts: 1,
            ..Progress::default()
        };
        assert_eq!(
            Resume::after(&progress),
            Resume {
                attempt: 3,
                from_journal: true,
                earlier_restarts: 1
            }
        );
    }
}

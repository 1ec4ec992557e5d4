//! The names of the files in a task's directory (`<state_dir>/tasks/<id>/`), shared by the
//! supervisor (which owns the directory: see its `TaskDir`) and the worker (which writes its
//! journal and tool outputs there).

/// The task's record, written by the supervisor.
pub const TASK_RECORD: &str = "task.json";
/// The public event log, written by the supervisor only.
pub const EVENTS: &str = "events.jsonl";
/// The checkpoint journal, written by the worker only.
pub const JOURNAL: &str = "journal.jsonl";
/// The workers' stderr.
pub const WORKER_LOG: &str = "worker.log";
/// Full outputs of tool calls whose result the model sees capped, written by the worker.
pub const TOOL_OUTPUT: &str = "tool-output";

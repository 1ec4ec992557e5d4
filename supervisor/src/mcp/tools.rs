//! The tools `kugetsu mcp` offers: the Hermes plugin's names, arguments and descriptions
//! (`scripts/hermes/kugetsu/__init__.py`), so a model meets the same tools through either.

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{Value, json};

/// One of the tools, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolName {
    /// `kugetsu_run`: one shadow to its end, no daemon.
    Run,
    /// `kugetsu_submit`: queue a task on the daemon.
    Submit,
    /// `kugetsu_status`: one task, or the daemon's list.
    Status,
    /// `kugetsu_cancel`: cancel a queued or running task.
    Cancel,
    /// `kugetsu_steer`: a message for a running task's model.
    Steer,
    /// `kugetsu_logs`: a task's events so far.
    Logs,
    /// `kugetsu_diff`: a task's changes.
    Diff,
    /// `kugetsu_merge`: land a finished task.
    Merge,
}

impl ToolName {
    /// Every tool, in the order `tools/list` gives them.
    pub const ALL: [ToolName; 8] = [
        ToolName::Run,
        ToolName::Submit,
        ToolName::Status,
        ToolName::Cancel,
        ToolName::Steer,
        ToolName::Logs,
        ToolName::Diff,
        ToolName::Merge,
    ];

    /// The name a client calls it by.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolName::Run => "kugetsu_run",
            ToolName::Submit => "kugetsu_submit",
            ToolName::Status => "kugetsu_status",
            ToolName::Cancel => "kugetsu_cancel",
            ToolName::Steer => "kugetsu_steer",
            ToolName::Logs => "kugetsu_logs",
            ToolName::Diff => "kugetsu_diff",
            ToolName::Merge => "kugetsu_merge",
        }
    }

    /// The tool called `name`, if there is one.
    pub fn parse(name: &str) -> Option<ToolName> {
        ToolName::ALL.into_iter().find(|t| t.as_str() == name)
    }

    fn description(self) -> &'static str {
        match self {
            ToolName::Run => {
                "Run a coding agent (a kugetsu shadow) on a git repository until it finishes. It \
                 works in its own git worktree and branch kugetsu/<id>, never in your checkout. \
                 Progress notifications follow its turns and tool calls. Returns the final event \
                 as JSON: status, result (the agent's final answer), branch, worktree, \
                 changed_files, usage."
            }
            ToolName::Submit => {
                "Queue a coding task on the kugetsu daemon and return at once with its id; the \
                 agent runs in the background in its own worktree. Use kugetsu_status to follow \
                 it."
            }
            ToolName::Status => {
                "State of one kugetsu task (status, result, branch, ...), or of all the daemon's \
                 tasks when no task is given."
            }
            ToolName::Cancel => "Cancel a queued or running kugetsu task.",
            ToolName::Steer => {
                "Send a message to a running kugetsu task's agent; it reads it before its next \
                 step."
            }
            ToolName::Logs => {
                "A kugetsu task's events so far (turns, tool calls and results, conflicts, the \
                 final event), as JSON; the most recent ones when there are many."
            }
            ToolName::Diff => {
                "The changes a kugetsu task made, as a unified diff against the commit it \
                 started from (a running task's uncommitted work included)."
            }
            ToolName::Merge => {
                "Land a finished kugetsu task's commits on a branch (default: the branch it \
                 started from), only if they merge cleanly and the configured test command \
                 passes. Returns {landed, refused}; a refusal names the conflicting files or the \
                 failing test output."
            }
        }
    }

    fn schema(self) -> Value {
        let prompt = json!({"type": "string", "description": "What the agent should do."});
        let repo = json!({
            "type": "string",
            "description": "Path of the git repository (default: the directory kugetsu mcp was \
                            started in; a relative path is resolved against it)."
        });
        let base = json!({
            "type": "string",
            "description": "Git ref the worktree starts from (default: HEAD)."
        });
        let task = json!({"type": "string", "description": "Task id."});
        match self {
            ToolName::Run => json!({
                "type": "object",
                "properties": {
                    "prompt": prompt,
                    "repo": repo,
                    "model": {
                        "type": "string",
                        "description": "PROVIDER/MODEL, e.g. openai/gpt-4.1-mini (default: \
                                        kugetsu's configured model)."
                    },
                    "base": base,
                    "timeout_s": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Wall-clock limit in seconds."
                    },
                },
                "required": ["prompt"],
            }),
            ToolName::Submit => json!({
                "type": "object",
                "properties": {
                    "prompt": prompt,
                    "repo": repo,
                    "model": {
                        "type": "string",
                        "description": "PROVIDER/MODEL (default: the daemon's configured model)."
                    },
                    "base": base,
                    "priority": {
                        "type": "string",
                        "enum": ["high", "normal", "low"],
                        "description": "Queue priority (default normal)."
                    },
                },
                "required": ["prompt"],
            }),
            ToolName::Status => json!({
                "type": "object",
                "properties": {
                    "task": {"type": "string", "description": "Task id; omit for the whole list."}
                },
            }),
            ToolName::Cancel | ToolName::Logs => json!({
                "type": "object",
                "properties": {"task": task},
                "required": ["task"],
            }),
            ToolName::Steer => json!({
                "type": "object",
                "properties": {
                    "task": task,
                    "text": {"type": "string", "description": "The message for the agent."},
                },
                "required": ["task", "text"],
            }),
            ToolName::Diff => json!({
                "type": "object",
                "properties": {
                    "task": task,
                    "stat": {
                        "type": "boolean",
                        "description": "Only a summary of the changed files."
                    },
                },
                "required": ["task"],
            }),
            ToolName::Merge => json!({
                "type": "object",
                "properties": {
                    "task": task,
                    "into": {
                        "type": "string",
                        "description": "Branch to land on (default: the task's base branch)."
                    },
                },
                "required": ["task"],
            }),
        }
    }

    /// Hints for clients that show or gate tools: which only read.
    fn annotations(self) -> ToolAnnotations {
        let read_only = matches!(self, ToolName::Status | ToolName::Logs | ToolName::Diff);
        ToolAnnotations::new()
            .read_only(read_only)
            .destructive(false)
            .open_world(false)
    }

    /// The tool's definition as `tools/list` gives it.
    pub fn definition(self) -> Tool {
        let schema: JsonObject = match self.schema() {
            Value::Object(map) => map,
            _ => JsonObject::new(),
        };
        Tool::new(self.as_str(), self.description(), Arc::new(schema))
            .with_annotations(self.annotations())
    }
}

/// Every tool's definition.
pub fn definitions() -> Vec<Tool> {
    ToolName::ALL
        .into_iter()
        .map(ToolName::definition)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_schemas_are_objects() {
        for tool in ToolName::ALL {
            assert_eq!(ToolName::parse(tool.as_str()), Some(tool));
            let definition = tool.definition();
            assert_eq!(definition.input_schema.get("type"), Some(&json!("object")));
        }
        assert_eq!(ToolName::parse("kugetsu_nope"), None);
    }

    #[test]
    fn the_required_arguments_are_the_hermes_plugins() {
        let required = |tool: ToolName| tool.definition().input_schema.get("required").cloned();
        assert_eq!(required(ToolName::Run), Some(json!(["prompt"])));
        assert_eq!(required(ToolName::Submit), Some(json!(["prompt"])));
        assert_eq!(required(ToolName::Status), None);
        assert_eq!(required(ToolName::Steer), Some(json!(["task", "text"])));
        assert_eq!(required(ToolName::Merge), Some(json!(["task"])));
    }
}

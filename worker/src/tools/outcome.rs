//! What a tool call produces: [`ToolOutput`] for the model (with [`MemoryExceeded`] when the
//! call was killed for memory), [`ToolError`] inside the tools.

use std::error::Error as _;

use super::path::PathError;

/// What a tool call produced, as the model will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// Whether the call did what was asked (for bash: the command exited with status 0).
    pub ok: bool,
    /// The text the model receives: the result, or a message saying what went wrong.
    pub output: String,
    /// Whether `output` was cut; it says where the rest is (the file itself, or a bash log).
    pub truncated: bool,
    /// Set when the call was killed for taking the shadow past its memory limit (bash only);
    /// the agent reports it as a `memory_limit` event before the call's `tool_end`.
    pub memory: Option<MemoryExceeded>,
}

/// A tool call killed because the shadow went over its memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryExceeded {
    /// The shadow's resident memory when it was measured over the limit: the call's processes
    /// plus the worker itself.
    pub rss_bytes: u64,
    /// The shadow's memory limit.
    pub limit_bytes: u64,
}

impl ToolOutput {
    /// A successful result.
    pub(crate) fn success(output: String, truncated: bool) -> Self {
        Self {
            ok: true,
            output,
            truncated,
            memory: None,
        }
    }

    /// Turns a tool's result into what the model sees; an error becomes `ok: false` with its
    /// whole cause chain as text.
    pub(crate) fn from_result(result: Result<ToolOutput, ToolError>) -> Self {
        match result {
            Ok(output) => output,
            Err(error) => Self {
                ok: false,
                output: error.render(),
                truncated: false,
                memory: None,
            },
        }
    }
}

/// Why a tool call failed. Messages are written for the model: they name the argument or the
/// path at fault and, where it helps, say what to do instead.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ToolError {
    /// The model called a tool that does not exist.
    #[error("unknown tool `{0}`; the tools are read, write, edit, bash, grep and ls")]
    UnknownTool(String),
    /// The arguments are not a JSON object.
    #[error("the arguments must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    /// A required argument is absent or null.
    #[error("missing required argument `{0}`")]
    MissingArgument(&'static str),
    /// An argument has the wrong type or an unusable value.
    #[error("argument `{name}` {problem}")]
    InvalidArgument {
        /// The argument's name as in the tool's schema.
        name: &'static str,
        /// What is wrong with it, phrased to follow the name.
        problem: String,
    },
    /// A path argument is unusable: outside the worktree, through an escaping symlink, ...
    #[error(transparent)]
    Path(#[from] PathError),
    /// A file system operation failed.
    #[error("cannot {action} `{path}`")]
    Io {
        /// What we tried, e.g. "read" or "create the directories of".
        action: &'static str,
        /// The path as the model gave it.
        path: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A failure the tool explains in its own words (not found, ambiguous edit, ...).
    #[error("{0}")]
    Failed(String),
}

impl ToolError {
    /// An I/O failure on `path` while trying to `action` it.
    pub(crate) fn io(action: &'static str, path: &str, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// An invalid argument.
    pub(crate) fn invalid(name: &'static str, problem: impl Into<String>) -> Self {
        Self::InvalidArgument {
            name,
            problem: problem.into(),
        }
    }

    /// The message and every cause, joined by `: ` (the model sees no error types).
    pub(crate) fn render(&self) -> String {
        let mut text = self.to_string();
        let mut cause = self.source();
        while let Some(error) = cause {
            text.push_str(": ");
            text.push_str(&error.to_string());
            cause = error.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_render_errors_with_their_causes() {
        let error = ToolError::io(
            "read",
            "src/a.rs",
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied"),
        );
        let output = ToolOutput::from_result(Err(error));
        assert!(!output.ok);
        assert_eq!(output.output, "cannot read `src/a.rs`: permission denied");
    }
}

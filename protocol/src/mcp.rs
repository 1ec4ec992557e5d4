//! The MCP servers a shadow uses: which ones, how to reach them, how long to wait for them.
//!
//! The supervisor resolves a task's `--mcp` choice against the config's `[mcp.NAME]` tables and
//! sends the result in [`crate::TaskSpec::mcp`]; the worker starts each server, lists its tools
//! and offers them to the model as `NAME__TOOL` (see [`tool_name`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The separator between a server's name and its tool's name in what the model sees.
pub const SEPARATOR: &str = "__";

/// The longest tool name providers accept (OpenAI and Anthropic: 64 characters).
pub const MAX_TOOL_NAME: usize = 64;

/// One MCP server as a task uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServer {
    /// The `NAME` of `[mcp.NAME]`: `[A-Za-z0-9_-]`, the prefix of its tools' names.
    pub name: String,
    /// How the worker reaches it.
    pub transport: McpTransport,
    /// The longest one tool call may take, in milliseconds.
    pub call_timeout_ms: u64,
    /// The longest starting it (spawn or connect, `initialize`, `tools/list`) may take.
    pub startup_timeout_ms: u64,
}

/// How a server is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum McpTransport {
    /// A child process speaking JSON-RPC on its stdin and stdout, started in the shadow's
    /// sandbox with the scrubbed environment plus `env`.
    Stdio {
        /// The program (looked up on `PATH`).
        command: String,
        /// Its arguments.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
        /// Variables set for it on top of the shadow's scrubbed environment.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
    /// A server at an `http://` or `https://` URL, spoken to with streamable HTTP.
    Http {
        /// The endpoint, e.g. `http://127.0.0.1:3001/mcp`.
        url: String,
    },
}

/// Whether `name` may name a server: non-empty, `[A-Za-z0-9_-]` only, no `__` (it would make
/// `NAME__TOOL` ambiguous), and short enough to leave room for a tool name.
pub fn valid_server_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "contains {c:?}: a server's name may hold only letters, digits, `_` and `-`"
        ));
    }
    if name.contains(SEPARATOR) {
        return Err(format!(
            "contains `{SEPARATOR}`, which separates a server's name from its tools' names"
        ));
    }
    if name.len() + SEPARATOR.len() >= MAX_TOOL_NAME {
        return Err(format!(
            "is {} characters long: `NAME{SEPARATOR}TOOL` must fit {MAX_TOOL_NAME} characters",
            name.len()
        ));
    }
    Ok(())
}

/// The name the model sees for `tool` of `server`: `SERVER__TOOL`, with every character
/// providers refuse (outside `[A-Za-z0-9_-]`) replaced by `_`. `None` when it would pass
/// [`MAX_TOOL_NAME`] characters.
pub fn tool_name(server: &str, tool: &str) -> Option<String> {
    let mut name = String::with_capacity(server.len() + SEPARATOR.len() + tool.len());
    name.push_str(server);
    name.push_str(SEPARATOR);
    name.extend(tool.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        }
    }));
    (name.len() <= MAX_TOOL_NAME && !tool.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_checked() {
        assert!(valid_server_name("everything").is_ok());
        assert!(valid_server_name("my-fs_2").is_ok());
        assert!(valid_server_name("").is_err());
        assert!(valid_server_name("a.b").unwrap_err().contains("'.'"));
        assert!(valid_server_name("a__b").is_err());
        assert!(valid_server_name(&"x".repeat(62)).is_err());
    }

    #[test]
    fn tool_names_are_sanitized_and_capped() {
        assert_eq!(
            tool_name("everything", "echo").as_deref(),
            Some("everything__echo")
        );
        assert_eq!(
            tool_name("fs", "read.file").as_deref(),
            Some("fs__read_file")
        );
        assert_eq!(tool_name("fs", ""), None);
        assert_eq!(tool_name("fs", &"t".repeat(61)), None);
        assert_eq!(tool_name("fs", &"t".repeat(60)).map(|n| n.len()), Some(64));
    }

    #[test]
    fn transports_round_trip_and_old_specs_decode() {
        let server = McpServer {
            name: "fs".to_owned(),
            transport: McpTransport::Stdio {
                command: "node".to_owned(),
                args: vec!["server.js".to_owned()],
                env: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
            },
            call_timeout_ms: 60_000,
            startup_timeout_ms: 30_000,
        };
        let json = serde_json::to_string(&server).unwrap();
        assert!(json.contains(r#""type":"stdio""#), "{json}");
        assert_eq!(serde_json::from_str::<McpServer>(&json).unwrap(), server);
    }
}

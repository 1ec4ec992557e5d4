//! The provider-neutral conversation a shadow keeps: what was said, asked and answered.

use serde::{Deserialize, Serialize};

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call (echoed back with the result).
    pub id: String,
    /// Tool name.
    pub name: String,
    /// The arguments as the raw JSON text the model produced (may be invalid JSON).
    pub arguments: String,
}

/// One entry of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    /// The task prompt, a steering message, or a compaction summary.
    User { text: String },
    /// A complete assistant turn.
    Assistant {
        text: String,
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call.
    ToolResult {
        call_id: String,
        name: String,
        content: String,
        is_error: bool,
    },
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Built-in tools have static names; an MCP server's tools are named at run time.
    pub name: std::borrow::Cow<'static, str>,
    pub description: std::borrow::Cow<'static, str>,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

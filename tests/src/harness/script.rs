//! Scripts for the `scripted` provider (`-m scripted/ABS_PATH.json`): assistant turns replayed
//! by the worker itself, no network. The turn replayed is the number of assistant messages
//! the conversation already holds, so a resumed shadow continues where it left off; the
//! scripted tool-call ids are `call_<turn>_<index>` (both 1-based).

use std::path::Path;

use serde_json::{Value, json};

/// A script being put together.
#[derive(Debug, Clone, Default)]
pub struct Script {
    delay_ms: u64,
    summary: Option<String>,
    turns: Vec<Value>,
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pause before each streamed text piece (12 characters each).
    pub fn delay_ms(mut self, delay_ms: u64) -> Self {
        self.delay_ms = delay_ms;
        self
    }

    /// The answer to compaction requests.
    pub fn summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(summary.into());
        self
    }

    /// A turn with `text` and tool calls `(name, arguments)`.
    pub fn turn(mut self, text: impl Into<String>, calls: &[(&str, Value)]) -> Self {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(name, arguments)| json!({"name": name, "arguments": arguments}))
            .collect();
        self.turns
            .push(json!({"text": text.into(), "tool_calls": calls}));
        self
    }

    /// A turn with `text` and one `bash` call running `command`.
    pub fn bash(self, text: impl Into<String>, command: impl Into<String>) -> Self {
        let command = command.into();
        self.turn(text, &[("bash", json!({"command": command}))])
    }

    /// A final turn: text and no tool calls.
    pub fn answer(self, text: impl Into<String>) -> Self {
        self.turn(text, &[])
    }

    /// The number of turns so far.
    pub fn len(&self) -> usize {
        self.turns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// The script as JSON.
    pub fn to_json(&self) -> Value {
        let mut script = json!({"delay_ms": self.delay_ms, "turns": self.turns});
        if let Some(summary) = &self.summary {
            script["summary"] = json!(summary);
        }
        script
    }

    /// Writes the script to `path` (absolute) and returns the model argument
    /// `scripted/<path>`.
    pub fn write(&self, path: &Path) -> String {
        assert!(path.is_absolute(), "a script path must be absolute");
        std::fs::write(path, self.to_json().to_string()).expect("write the script");
        format!("scripted/{}", path.display())
    }
}

/// The id the scripted provider gives call `index` (1-based) of turn `turn` (1-based).
pub fn call_id(turn: usize, index: usize) -> String {
    format!("call_{turn}_{index}")
}

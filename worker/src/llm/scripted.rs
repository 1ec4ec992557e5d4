//! The `scripted` provider: replays assistant turns from a JSON script, no network.
//!
//! `scripted/demo` is the built-in script of `kugetsu demo`; `scripted/PATH.json` loads a file
//! (relative paths resolve against the worker's cwd, absolute ones as is). A script is either
//! an array of turns or `{"delay_ms": N, "summary": "...", "turns": [...]}`, each turn
//! `{"text": "...", "tool_calls": [{"name": "...", "arguments": {...}}]}`.
//!
//! The turn replayed is chosen by how many assistant messages the conversation already holds,
//! so a resumed shadow continues the script where it left off.

use std::time::Duration;

use kugetsu_protocol::Usage;
use serde::Deserialize;

use super::gate::Gate;
use super::{Completion, LlmError, LlmRequest, StopReason};
use crate::conversation::{Message, ToolCall};

const DEMO_SCRIPT: &str = r##"{
  "delay_ms": 12,
  "turns": [
    {
      "text": "Let me look at the project first.",
      "tool_calls": [
        {"name": "ls", "arguments": {}},
        {"name": "read", "arguments": {"path": "greet.sh"}}
      ]
    },
    {
      "text": "greet.sh takes the name as its first argument. I'll accept --verbose before it and print the date when it is given.",
      "tool_calls": [
        {"name": "edit", "arguments": {
          "path": "greet.sh",
          "old_text": "name=\"${1:-world}\"\necho \"hello, $name\"\n",
          "new_text": "verbose=0\nif [ \"$1\" = \"--verbose\" ]; then\n  verbose=1\n  shift\nfi\nname=\"${1:-world}\"\necho \"hello, $name\"\nif [ \"$verbose\" = 1 ]; then\n  echo \"date: $(date -u +%Y-%m-%d)\"\nfi\n"
        }},
        {"name": "write", "arguments": {
          "path": "tests/test_greet.sh",
          "content": "#!/bin/sh\nset -e\ncd \"$(dirname \"$0\")/..\"\n[ \"$(sh greet.sh kugetsu)\" = \"hello, kugetsu\" ]\nsh greet.sh --verbose kugetsu | grep -q '^date: '\necho \"all greet tests passed\"\n"
        }}
      ]
    },
    {
      "text": "Now the test.",
      "tool_calls": [
        {"name": "bash", "arguments": {"command": "sh tests/test_greet.sh && sh greet.sh --verbose shadow"}}
      ]
    },
    {
      "text": "Done. greet.sh now accepts `--verbose` (before the name) and then also prints today's date; tests/test_greet.sh checks both modes and passes.",
      "tool_calls": []
    }
  ]
}"##;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScriptFile {
    Bare(Vec<ScriptTurn>),
    Full {
        #[serde(default)]
        delay_ms: u64,
        #[serde(default)]
        summary: Option<String>,
        turns: Vec<ScriptTurn>,
    },
}

#[derive(Debug, Clone, Deserialize)]
struct ScriptTurn {
    #[serde(default)]
    text: String,
    #[serde(default)]
    tool_calls: Vec<ScriptCall>,
}

#[derive(Debug, Clone, Deserialize)]
struct ScriptCall {
    name: String,
    #[serde(default)]
    arguments: serde_json::Value,
}

/// A loaded script.
#[derive(Debug)]
pub struct Scripted {
    turns: Vec<ScriptTurn>,
    /// Pause between streamed text pieces, so a person can watch the demo type.
    delay: Duration,
    /// The answer to compaction requests.
    summary: Option<String>,
    /// The task's budget and the governor's permits, passed like a real provider's.
    gate: Gate,
}

impl Scripted {
    /// Loads `demo` or a script file.
    pub fn load(name: &str) -> Result<Self, LlmError> {
        let text = if name == "demo" {
            DEMO_SCRIPT.to_owned()
        } else {
            std::fs::read_to_string(name)
                .map_err(|e| LlmError::Config(format!("cannot read script {name:?}: {e}")))?
        };
        Self::parse(&text).map_err(|e| LlmError::Config(format!("script {name:?}: {e}")))
    }

    fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let (delay_ms, summary, turns) = match serde_json::from_str(text)? {
            ScriptFile::Bare(turns) => (0, None, turns),
            ScriptFile::Full {
                delay_ms,
                summary,
                turns,
            } => (delay_ms, summary, turns),
        };
        Ok(Self {
            turns,
            delay: Duration::from_millis(delay_ms),
            summary,
            gate: Gate::default(),
        })
    }

    /// Passes every request through `gate`.
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = gate.for_account("scripted", "scripted".to_owned());
        self
    }

    /// Replays the turn after the conversation's last assistant message, once the gate lets
    /// the request through (a script's requests count against budgets and limits too).
    pub async fn complete(
        &self,
        request: &LlmRequest<'_>,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion, LlmError> {
        let permit = self
            .gate
            .acquire(
                input_chars(request) as u64 / 4,
                u64::from(request.max_tokens),
            )
            .await?;
        let mut completion = self.replay(request, on_text).await?;
        permit.end(Some(&mut completion.usage));
        Ok(completion)
    }

    async fn replay(
        &self,
        request: &LlmRequest<'_>,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion, LlmError> {
        if request.system == crate::context::SUMMARY_SYSTEM {
            // A compaction summary, not a turn of the script.
            let text = self.summary.clone().unwrap_or_else(|| {
                "The agent worked through the earlier turns of the script.".to_owned()
            });
            return Ok(Completion {
                usage: Usage {
                    input_tokens: 0,
                    output_tokens: (text.len() / 4) as u64,
                    cost_usd: None,
                },
                text,
                tool_calls: Vec::new(),
                stop: StopReason::EndTurn,
            });
        }
        let index = request
            .messages
            .iter()
            .filter(|m| matches!(m, Message::Assistant { .. }))
            .count();
        let turn = self.turns.get(index).ok_or_else(|| {
            LlmError::Config(format!(
                "the script has {} turns and the conversation asks for turn {}",
                self.turns.len(),
                index + 1
            ))
        })?;
        for piece in chunks(&turn.text, 12) {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            on_text(piece);
        }
        let tool_calls: Vec<ToolCall> = turn
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, call)| ToolCall {
                id: format!("call_{}_{}", index + 1, i + 1),
                name: call.name.clone(),
                arguments: if call.arguments.is_null() {
                    "{}".to_owned()
                } else {
                    call.arguments.to_string()
                },
            })
            .collect();
        let input_chars = input_chars(request);
        let output_chars =
            turn.text.len() + tool_calls.iter().map(|c| c.arguments.len()).sum::<usize>();
        Ok(Completion {
            text: turn.text.clone(),
            stop: if tool_calls.is_empty() {
                StopReason::EndTurn
            } else {
                StopReason::ToolUse
            },
            tool_calls,
            usage: Usage {
                input_tokens: (input_chars / 4) as u64,
                output_tokens: (output_chars / 4).max(1) as u64,
                cost_usd: None,
            },
        })
    }
}

/// The size of a request's system prompt and messages as JSON, in bytes.
fn input_chars(request: &LlmRequest<'_>) -> usize {
    request.system.len()
        + request
            .messages
            .iter()
            .map(|m| serde_json::to_string(m).map_or(0, |s| s.len()))
            .sum::<usize>()
}

/// Splits `text` into pieces of about `size` bytes on character boundaries.
fn chunks(text: &str, size: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = size.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_script_parses_and_chunks_keep_characters_whole() {
        let script = Scripted::load("demo").unwrap();
        assert_eq!(script.turns.len(), 4);
        let text = "héllo wörld ✓ done";
        let joined: String = chunks(text, 3).collect();
        assert_eq!(joined, text);
    }
}

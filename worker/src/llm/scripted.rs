//! The `scripted` provider: replays assistant turns from a JSON script, no network.
//!
//! Built in: `scripted/demo/NAME`, the scripts of `kugetsu demo`'s jobs
//! ([`kugetsu_protocol::demo::DEMO_JOBS`]: `verbose`, `function`, `typo`, ...), and
//! `scripted/demo`, the `verbose` job without its pauses. `scripted/PATH.json` loads a file
//! (relative paths resolve against the worker's cwd, absolute ones as is). A script is either
//! an array of turns or `{"delay_ms": N, "summary": "...", "turns": [...]}`, each turn
//! `{"think_ms": N, "text": "...", "tool_calls": [{"name": "...", "arguments": {...}}]}`:
//! `delay_ms` is the pause between streamed pieces of text (about 12 bytes each), `think_ms`
//! (optional, default 0) a pause before the turn's answer begins, as a real model takes to
//! start answering.
//!
//! The turn replayed is chosen by how many assistant messages the conversation already holds,
//! so a resumed shadow continues the script where it left off.

use std::time::Duration;

use kugetsu_protocol::demo::{self, DemoJob};
use kugetsu_protocol::{RateHeaders, Usage};
use serde::Deserialize;

use super::gate::Gate;
use super::{Completion, LlmError, LlmRequest, StopReason};
use crate::conversation::{Message, ToolCall};

/// The job `scripted/demo` replays (without its pauses).
const VERBOSE: &DemoJob = &demo::DEMO_JOBS[0];

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
    /// Milliseconds to wait before answering (the model "thinking").
    #[serde(default)]
    think_ms: u64,
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
    /// Loads `demo`, `demo/NAME` (built in) or a script file.
    pub fn load(name: &str) -> Result<Self, LlmError> {
        let invalid = |e: serde_json::Error| LlmError::Config(format!("script {name:?}: {e}"));
        if name == "demo" {
            let mut script = Self::parse(VERBOSE.script).map_err(invalid)?;
            for turn in &mut script.turns {
                turn.think_ms = 0;
            }
            return Ok(script);
        }
        if let Some(job) = name.strip_prefix("demo/").and_then(demo::job) {
            return Self::parse(job.script).map_err(invalid);
        }
        let text = std::fs::read_to_string(name).map_err(|e| {
            let builtin = if name.starts_with("demo/") {
                let names: Vec<String> = demo::DEMO_JOBS
                    .iter()
                    .map(|job| format!("demo/{}", job.name))
                    .collect();
                format!(" (built-in scripts: demo, {})", names.join(", "))
            } else {
                String::new()
            };
            LlmError::Config(format!("cannot read script {name:?}: {e}{builtin}"))
        })?;
        Self::parse(&text).map_err(invalid)
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
        // A real provider's response head (status, rate-limit headers) arrives before the
        // model starts thinking; so does this one's, and the governor learns at once that a
        // script sets no limits rather than holding the fleet behind the first request.
        permit.head(200, RateHeaders::default());
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
        if turn.think_ms > 0 {
            tokio::time::sleep(Duration::from_millis(turn.think_ms)).await;
        }
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
        assert!(script.turns.iter().all(|t| t.think_ms == 0));
        assert_eq!(VERBOSE.name, "verbose");
        let text = "héllo wörld ✓ done";
        let joined: String = chunks(text, 3).collect();
        assert_eq!(joined, text);
    }

    #[test]
    fn every_demo_job_is_built_in_and_pauses_between_turns() {
        for job in demo::DEMO_JOBS {
            let script = Scripted::load(&format!("demo/{}", job.name)).unwrap();
            assert!(script.turns.len() >= 2, "{}", job.name);
            assert!(script.turns.iter().all(|t| t.think_ms > 0), "{}", job.name);
        }
        let LlmError::Config(message) = Scripted::load("demo/nope").unwrap_err() else {
            panic!("not a config error");
        };
        assert!(message.contains("demo/verbose"), "{message}");
    }
}

//! Keeping a shadow's context under its token budget.
//!
//! - [`Budget`] estimates the tokens of a conversation from its bytes, with a bytes-per-token
//!   ratio calibrated by the input token counts the provider reports, and never learned
//!   outside [`MIN_BYTES_PER_TOKEN`]..=[`MAX_BYTES_PER_TOKEN`]: a provider that reports
//!   nonsense (a constant count for growing requests) cannot switch compaction off.
//! - [`Compactor`] summarises older turns with an LLM, in the background, under quotas
//!   (cooldown, timeout, attempts per task); its result is applied at a turn boundary.
//! - [`prune`] is the deterministic fallback: oldest tool outputs go first.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kugetsu_protocol::{ModelRef, ProviderKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conversation::Message;
use crate::llm::{LlmRequest, Provider};

/// Start compacting once the context passes this share of the window.
pub const COMPACT_AT: f64 = 0.70;
/// Prune at once (not waiting for a compaction) past this share of the window.
pub const PRUNE_AT: f64 = 0.90;
/// What pruning aims for, as a share of the window.
pub const PRUNE_TO: f64 = 0.50;
/// Minimum time between two compaction attempts.
pub const COOLDOWN: Duration = Duration::from_secs(60);
/// How long one compaction may take.
pub const TIMEOUT: Duration = Duration::from_secs(120);
/// Compaction attempts allowed per task.
pub const MAX_ATTEMPTS: u32 = 100;

/// Fewest bytes per token a calibration may learn: CJK text and dense JSON come close to it.
pub const MIN_BYTES_PER_TOKEN: f64 = 1.5;
/// Most bytes per token a calibration may learn: even long runs of indentation and English
/// prose stay under it.
pub const MAX_BYTES_PER_TOKEN: f64 = 8.0;

/// The context window of well-known models, else 128k tokens.
pub fn default_window(model: &ModelRef) -> u64 {
    let id = model.model.to_ascii_lowercase();
    let id = id.rsplit('/').next().unwrap_or(&id);
    match model.provider {
        ProviderKind::Anthropic => 200_000,
        _ if id.starts_with("claude") => 200_000,
        _ if id.starts_with("gpt-4.1") => 1_047_576,
        _ if id.starts_with("gpt-5") => 400_000,
        _ if id.starts_with("o3") || id.starts_with("o4") => 200_000,
        _ if id.starts_with("gemini") => 1_048_576,
        _ => 128_000,
    }
}

/// Token estimates for one conversation.
#[derive(Debug, Clone)]
pub struct Budget {
    /// The window the context must stay under.
    pub window: u64,
    /// Tokens per byte of serialized conversation, learned from provider reports.
    ratio: f64,
}

impl Budget {
    /// A budget for `window` tokens, assuming ~4 bytes per token until calibrated.
    pub fn new(window: u64) -> Budget {
        Budget {
            window: window.max(1024),
            ratio: 0.25,
        }
    }

    /// Estimated tokens of a request made of `system` and `messages`.
    pub fn estimate(&self, system: &str, messages: &[Message]) -> u64 {
        (request_bytes(system, messages) as f64 * self.ratio).ceil() as u64
    }

    /// Learns from the provider: a request of `bytes` cost `input_tokens`. What a report
    /// implies is held to a plausible tokenizer's bounds first, so the estimate never falls
    /// below `bytes / MAX_BYTES_PER_TOKEN` nor rises past `bytes / MIN_BYTES_PER_TOKEN`.
    pub fn calibrate(&mut self, bytes: usize, input_tokens: u64) {
        if bytes < 256 || input_tokens == 0 {
            return;
        }
        let observed = (input_tokens as f64 / bytes as f64)
            .clamp(1.0 / MAX_BYTES_PER_TOKEN, 1.0 / MIN_BYTES_PER_TOKEN);
        self.ratio = 0.5 * self.ratio + 0.5 * observed;
    }

    /// Whether `tokens` passed `share` of the window.
    pub fn over(&self, tokens: u64, share: f64) -> bool {
        tokens as f64 > self.window as f64 * share
    }
}

/// Bytes of a request as the estimate counts them.
pub fn request_bytes(system: &str, messages: &[Message]) -> usize {
    system.len() + messages.iter().map(message_bytes).sum::<usize>()
}

fn message_bytes(message: &Message) -> usize {
    // Per-message overhead approximates the role and framing tokens providers add.
    16 + match message {
        Message::User { text } => text.len(),
        Message::Assistant { text, tool_calls } => {
            text.len()
                + tool_calls
                    .iter()
                    .map(|c| c.id.len() + c.name.len() + c.arguments.len() + 16)
                    .sum::<usize>()
        }
        Message::ToolResult {
            call_id, content, ..
        } => call_id.len() + content.len(),
    }
}

/// A summary that finished in the background, ready to apply.
#[derive(Debug)]
pub struct Summary {
    /// Messages `[0, cut)` are replaced by the summary.
    pub cut: usize,
    pub text: String,
}

/// Runs compactions in the background under quotas.
#[derive(Debug, Default)]
pub struct Compactor {
    attempts: u32,
    last_start: Option<Instant>,
    running: Option<(usize, JoinHandle<Result<String, String>>)>,
}

impl Compactor {
    /// Whether a compaction is in flight.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Whether the quotas allow starting one now.
    pub fn may_start(&self) -> bool {
        self.running.is_none()
            && self.attempts < MAX_ATTEMPTS
            && self.last_start.is_none_or(|t| t.elapsed() >= COOLDOWN)
    }

    /// Starts summarising `messages[..cut]` with `provider` in the background.
    pub fn start(&mut self, provider: Arc<Provider>, messages: &[Message], cut: usize) {
        self.attempts += 1;
        self.last_start = Some(Instant::now());
        let transcript = transcript(&messages[..cut]);
        let handle = tokio::spawn(async move {
            let request_messages = vec![Message::User { text: transcript }];
            let request = LlmRequest {
                system: SUMMARY_SYSTEM,
                messages: &request_messages,
                tools: &[],
                max_tokens: 4096,
            };
            let mut ignore = |_: &str| {};
            match tokio::time::timeout(TIMEOUT, provider.complete(&request, &mut ignore)).await {
                Ok(Ok(completion)) if !completion.text.trim().is_empty() => Ok(completion.text),
                Ok(Ok(_)) => Err("the summary came back empty".to_owned()),
                Ok(Err(e)) => Err(kugetsu_protocol::error_chain(&e)),
                Err(_) => Err(format!("the summary took longer than {TIMEOUT:?}")),
            }
        });
        self.running = Some((cut, handle));
    }

    /// The finished compaction, if one finished: `Ok` to apply, `Err` if it failed.
    /// Never waits for one still running.
    pub async fn take_finished(&mut self) -> Option<Result<Summary, String>> {
        if self.running.as_ref().is_some_and(|(_, h)| h.is_finished()) {
            self.wait().await
        } else {
            None
        }
    }

    /// Waits for the running compaction, if any.
    pub async fn wait(&mut self) -> Option<Result<Summary, String>> {
        let (cut, handle) = self.running.take()?;
        let joined = handle.await;
        Some(match joined {
            Ok(Ok(text)) => Ok(Summary { cut, text }),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("the compaction task failed: {e}")),
        })
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        if let Some((_, handle)) = &self.running {
            handle.abort();
        }
    }
}

/// The system prompt of a compaction request.
pub const SUMMARY_SYSTEM: &str = "You compact the working memory of a coding agent. Summarise the \
     conversation you are given so the agent can continue the task from your summary alone: the \
     goal, what was done and found, decisions and their reasons, errors met, and what remains. \
     Be specific (file names, functions, commands); leave out pleasantries. Plain text.";

/// Caps each item of a transcript so the summary request itself stays small.
const TRANSCRIPT_ITEM_CHARS: usize = 4000;

fn transcript(messages: &[Message]) -> String {
    let mut out = String::from(
        "Summarise this conversation of a coding agent (oldest first) for the agent itself:\n\n",
    );
    for message in messages {
        let (who, text) = match message {
            Message::User { text } => ("USER", text.clone()),
            Message::Assistant { text, tool_calls } => {
                let mut t = text.clone();
                for call in tool_calls {
                    t.push_str(&format!("\n[calls {}({})]", call.name, call.arguments));
                }
                ("ASSISTANT", t)
            }
            Message::ToolResult {
                name,
                content,
                is_error,
                ..
            } => (
                if *is_error {
                    "TOOL ERROR"
                } else {
                    "TOOL RESULT"
                },
                format!("{name}: {content}"),
            ),
        };
        out.push_str(who);
        out.push_str(": ");
        out.push_str(&clip(&text, TRANSCRIPT_ITEM_CHARS));
        out.push_str("\n\n");
    }
    out
}

fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [... {} bytes cut]", &text[..end], text.len() - end)
}

/// Where to cut so that the kept, verbatim tail holds whole turns worth about `keep_tokens`,
/// and at least the last turn. Returns `None` when there is nothing older to summarise.
pub fn choose_cut(messages: &[Message], budget: &Budget, keep_tokens: u64) -> Option<usize> {
    let turn_starts: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m, Message::Assistant { .. }))
        .map(|(i, _)| i)
        .collect();
    let mut cut = *turn_starts.last()?;
    for &start in turn_starts.iter().rev().skip(1) {
        if budget.estimate("", &messages[start..]) > keep_tokens {
            break;
        }
        cut = start;
    }
    (cut > 1).then_some(cut)
}

/// Files the conversation read and modified, from its tool calls.
pub fn files_touched(messages: &[Message]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut read = BTreeSet::new();
    let mut modified = BTreeSet::new();
    for message in messages {
        if let Message::Assistant { tool_calls, .. } = message {
            for call in tool_calls {
                let path = serde_json::from_str::<serde_json::Value>(&call.arguments)
                    .ok()
                    .and_then(|v| v.get("path").and_then(|p| p.as_str()).map(str::to_owned));
                match (call.name.as_str(), path) {
                    ("read", Some(p)) => {
                        read.insert(p);
                    }
                    ("write" | "edit", Some(p)) => {
                        modified.insert(p);
                    }
                    _ => {}
                }
            }
        }
    }
    (read, modified)
}

/// The conversation after applying `summary`: the prompt with the summary, then the kept tail.
pub fn compacted(prompt: &str, messages: &[Message], summary: &Summary) -> Vec<Message> {
    let (read, modified) = files_touched(&messages[..summary.cut]);
    let list = |set: &BTreeSet<String>| {
        if set.is_empty() {
            "(none)".to_owned()
        } else {
            set.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    };
    let text = format!(
        "{prompt}\n\n[Earlier turns of this task were compacted. Summary of them:]\n{}\n\n\
         Files read so far: {}\nFiles modified so far: {}",
        summary.text.trim(),
        list(&read),
        list(&modified)
    );
    let mut out = vec![Message::User { text }];
    out.extend_from_slice(&messages[summary.cut..]);
    out
}

/// Replaces the oldest tool outputs (never those of the last turn) with a short note until
/// the estimate fits `target_tokens`. Returns whether anything changed.
pub fn prune(system: &str, messages: &mut [Message], budget: &Budget, target_tokens: u64) -> bool {
    let last_turn = messages
        .iter()
        .rposition(|m| matches!(m, Message::Assistant { .. }))
        .unwrap_or(messages.len());
    let mut changed = false;
    for i in 0..last_turn {
        if budget.estimate(system, messages) <= target_tokens {
            break;
        }
        if let Message::ToolResult { name, content, .. } = &mut messages[i]
            && content.len() > 200
        {
            *content = format!(
                "[output of {name} ({} bytes) pruned to save context; run the tool again if you need it]",
                content.len()
            );
            changed = true;
        }
    }
    // Still too big: shorten old assistant texts too.
    for i in 0..last_turn {
        if budget.estimate(system, messages) <= target_tokens {
            break;
        }
        if let Message::Assistant { text, .. } = &mut messages[i]
            && text.len() > 400
        {
            *text = clip(text, 400);
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::ToolCall;

    fn turn(i: usize, output: usize) -> Vec<Message> {
        vec![
            Message::Assistant {
                text: format!("step {i}"),
                tool_calls: vec![ToolCall {
                    id: format!("c{i}"),
                    name: "read".to_owned(),
                    arguments: format!(r#"{{"path":"f{i}.rs"}}"#),
                }],
            },
            Message::ToolResult {
                call_id: format!("c{i}"),
                name: "read".to_owned(),
                content: "x".repeat(output),
                is_error: false,
            },
        ]
    }

    fn conversation(turns: usize, output: usize) -> Vec<Message> {
        let mut messages = vec![Message::User {
            text: "task".to_owned(),
        }];
        for i in 0..turns {
            messages.extend(turn(i, output));
        }
        messages
    }

    #[test]
    fn calibration_moves_the_estimate_toward_reported_usage() {
        let messages = conversation(4, 4000);
        let mut budget = Budget::new(100_000);
        let before = budget.estimate("", &messages);
        let bytes = request_bytes("", &messages);
        for _ in 0..10 {
            budget.calibrate(bytes, (bytes / 2) as u64);
        }
        let after = budget.estimate("", &messages);
        assert!(after > before * 3 / 2, "{before} -> {after}");
    }

    #[test]
    fn calibration_stays_within_plausible_tokenizer_bounds() {
        // A provider reporting a constant 100 input tokens however large the request grows:
        // the estimate keeps growing with the bytes, and a 6000-token window still compacts.
        let mut budget = Budget::new(6000);
        for turns in 1..=40 {
            let messages = conversation(turns, 2000);
            budget.calibrate(request_bytes("", &messages), 100);
        }
        let messages = conversation(40, 2000);
        let bytes = request_bytes("", &messages) as f64;
        let estimate = budget.estimate("", &messages);
        assert!(
            estimate as f64 >= bytes / MAX_BYTES_PER_TOKEN,
            "{bytes} bytes estimated as {estimate} tokens"
        );
        assert!(budget.over(estimate, COMPACT_AT), "{estimate}");

        // One claiming a token per byte (or more) cannot inflate the estimate past the bound.
        let mut budget = Budget::new(100_000);
        for _ in 0..20 {
            budget.calibrate(bytes as usize, bytes as u64 * 10);
        }
        let estimate = budget.estimate("", &messages) as f64;
        assert!(
            estimate <= (bytes / MIN_BYTES_PER_TOKEN).ceil(),
            "{estimate}"
        );
        assert!(estimate >= bytes / MIN_BYTES_PER_TOKEN * 0.99, "{estimate}");
    }

    #[test]
    fn compaction_keeps_whole_recent_turns_and_lists_files() {
        let messages = conversation(10, 4000);
        let budget = Budget::new(20_000);
        let cut = choose_cut(&messages, &budget, 3000).unwrap();
        assert!(matches!(messages[cut], Message::Assistant { .. }));
        assert!(cut > 1 && cut < messages.len() - 1);
        let summary = Summary {
            cut,
            text: "did things".to_owned(),
        };
        let out = compacted("task", &messages, &summary);
        let Message::User { text } = &out[0] else {
            panic!()
        };
        assert!(text.starts_with("task") && text.contains("did things") && text.contains("f0.rs"));
        assert_eq!(&out[1..], &messages[cut..]);
    }

    #[test]
    fn pruning_drops_oldest_outputs_first_and_spares_the_last_turn() {
        let mut messages = conversation(6, 8000);
        let budget = Budget::new(20_000);
        let target = budget.estimate("", &messages) / 2;
        assert!(prune("", &mut messages, &budget, target));
        assert!(budget.estimate("", &messages) <= target);
        let Message::ToolResult { content, .. } = &messages[2] else {
            panic!()
        };
        assert!(content.contains("pruned"));
        let Message::ToolResult { content, .. } = messages.last().unwrap() else {
            panic!()
        };
        assert_eq!(content.len(), 8000);
    }
}

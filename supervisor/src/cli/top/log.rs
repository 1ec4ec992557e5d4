//! A task's events as the lines of `top`'s log view: tool calls with their arguments and
//! whether they worked, the assistant's text, steering, restarts, memory, the end.

use kugetsu_protocol::{Event, EventEnvelope};

use crate::cli::top::fmt::bytes;

/// How a log line is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Lifecycle: queued, started, turns.
    Info,
    /// The assistant's text.
    Text,
    /// A tool call starting.
    Tool,
    /// A tool call that worked.
    Ok,
    /// A tool call that failed, or a task that did not complete.
    Error,
    /// A steering message handed to the model.
    Steer,
    /// Restarts, memory, rate limits, retries, conflicts.
    Warn,
    /// The task's end.
    End,
}

/// One line of the log view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `HH:MM:SS` of the event.
    pub time: String,
    pub kind: Kind,
    pub text: String,
}

/// The columns the time takes before each line's text (`12:00:01 `).
pub const TIME_WIDTH: usize = 9;

/// Splits `text` into the pieces the log view shows it in, each at most `width` characters.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars
        .chunks(width.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

/// The longest text kept for one event's line (arguments, output).
const MAX_TEXT: usize = 400;

/// The lines one event shows as (none for streamed text pieces: the whole message follows).
pub fn lines_of(envelope: &EventEnvelope) -> Vec<LogLine> {
    let time = envelope
        .ts
        .get(11..19)
        .unwrap_or(envelope.ts.as_str())
        .to_owned();
    let line = |kind, text: String| LogLine {
        time: time.clone(),
        kind,
        text,
    };
    match &envelope.event {
        Event::Queued { priority } => vec![line(
            Kind::Info,
            format!("queued ({})", format!("{priority:?}").to_lowercase()),
        )],
        Event::Started {
            attempt,
            pid,
            model,
            branch,
            ..
        } => {
            let branch = branch
                .as_deref()
                .map(|b| format!(", branch {b}"))
                .unwrap_or_default();
            vec![line(
                Kind::Info,
                format!("started attempt {attempt}: {model}, worker pid {pid}{branch}"),
            )]
        }
        Event::TurnStart { turn } => vec![line(Kind::Info, format!("turn {turn}"))],
        Event::TextDelta { .. } | Event::TurnEnd { .. } => Vec::new(),
        Event::Retry {
            attempt,
            reason,
            wait_ms,
        } => vec![line(
            Kind::Warn,
            format!("model request retry {attempt} in {wait_ms} ms: {reason}"),
        )],
        Event::AssistantMessage { text } => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| line(Kind::Text, l.to_owned()))
            .collect(),
        Event::ToolStart { tool, args, .. } => {
            vec![line(Kind::Tool, format!("▸ {tool} {}", args_text(args)))]
        }
        Event::ToolEnd {
            tool,
            ok,
            output,
            duration_ms,
            ..
        } => {
            let first = output.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let more = output.lines().filter(|l| !l.trim().is_empty()).count();
            let more = if more > 1 {
                format!(" (+{} lines)", more - 1)
            } else {
                String::new()
            };
            let (kind, mark, word) = if *ok {
                (Kind::Ok, "✓", "ok")
            } else {
                (Kind::Error, "✗", "error")
            };
            vec![line(
                kind,
                format!(
                    "{mark} {tool} {word} in {duration_ms} ms: {}{more}",
                    clip(first)
                ),
            )]
        }
        Event::Compaction {
            tokens_before,
            tokens_after,
            ok,
        } => vec![line(
            Kind::Info,
            if *ok {
                format!("context compacted: {tokens_before} -> {tokens_after} tokens")
            } else {
                format!("context compaction failed at {tokens_before} tokens")
            },
        )],
        Event::Steered { text } => vec![line(Kind::Steer, format!("» steered: {}", clip(text)))],
        Event::Restarted { attempt, reason } => vec![line(
            Kind::Warn,
            format!("restarted (attempt {attempt}): {reason}"),
        )],
        Event::MemoryLimit {
            rss_bytes,
            limit_bytes,
            killed,
        } => vec![line(
            Kind::Warn,
            format!(
                "memory limit: {} of {}{}",
                bytes(*rss_bytes),
                bytes(*limit_bytes),
                if *killed { ", killed" } else { "" }
            ),
        )],
        Event::RateLimited { provider, wait_ms } => vec![line(
            Kind::Warn,
            format!("rate limited by {provider}: waits {wait_ms} ms"),
        )],
        Event::Conflict { with, files } => vec![line(
            Kind::Warn,
            format!(
                "conflicts with {} in {}",
                with.join(", "),
                clip(&files.join(", "))
            ),
        )],
        Event::Finished(finished) => {
            let kind = if finished.status == kugetsu_protocol::FinishStatus::Completed {
                Kind::End
            } else {
                Kind::Error
            };
            let mut lines = vec![line(
                kind,
                format!(
                    "finished: {} after {} turns",
                    finished.status.as_str(),
                    finished.turns
                ),
            )];
            if let Some(error) = &finished.error {
                lines.push(line(Kind::Error, format!("error: {}", clip(error))));
            }
            if let Some(result) = &finished.result {
                lines.extend(
                    result
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| line(Kind::End, l.to_owned())),
                );
            }
            lines
        }
    }
}

/// A tool's arguments in one line: a lone string argument (bash's command, read's path) as
/// itself, anything else as compact JSON.
fn args_text(args: &serde_json::Value) -> String {
    let text = match args.as_object() {
        Some(map) if map.len() == 1 => match map.values().next() {
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => args.to_string(),
        },
        _ => args.to_string(),
    };
    clip(&text.replace('\n', " ⏎ "))
}

fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MAX_TEXT).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kugetsu_protocol::{FinishStatus, Finished, Usage};
    use serde_json::json;

    fn at(event: Event) -> EventEnvelope {
        EventEnvelope {
            v: 1,
            task: "t1".to_owned(),
            seq: 1,
            ts: "2026-12-01T12:34:56.789Z".to_owned(),
            event,
        }
    }

    fn texts(event: Event) -> Vec<String> {
        lines_of(&at(event)).into_iter().map(|l| l.text).collect()
    }

    #[test]
    fn tools_show_their_arguments_and_outcome() {
        let start = lines_of(&at(Event::ToolStart {
            call_id: "c1".to_owned(),
            tool: "bash".to_owned(),
            args: json!({"command": "sleep 1\necho done"}),
        }));
        assert_eq!(start[0].time, "12:34:56");
        assert_eq!(start[0].kind, Kind::Tool);
        assert_eq!(start[0].text, "▸ bash sleep 1 ⏎ echo done");
        assert_eq!(
            texts(Event::ToolStart {
                call_id: "c2".to_owned(),
                tool: "edit".to_owned(),
                args: json!({"path": "a.rs", "old": "x"}),
            }),
            [r#"▸ edit {"old":"x","path":"a.rs"}"#]
        );
        let end = lines_of(&at(Event::ToolEnd {
            call_id: "c1".to_owned(),
            tool: "bash".to_owned(),
            ok: false,
            output: "\nno such file\nsecond\n".to_owned(),
            truncated: false,
            duration_ms: 12,
        }));
        assert_eq!(end[0].kind, Kind::Error);
        assert_eq!(
            end[0].text,
            "✗ bash error in 12 ms: no such file (+1 lines)"
        );
    }

    #[test]
    fn text_steering_memory_and_the_end() {
        assert_eq!(
            texts(Event::AssistantMessage {
                text: "One.\n\nTwo.".to_owned()
            }),
            ["One.", "Two."]
        );
        assert!(
            texts(Event::TextDelta {
                text: "On".to_owned()
            })
            .is_empty()
        );
        assert_eq!(
            texts(Event::Steered {
                text: "run the tests".to_owned()
            }),
            ["» steered: run the tests"]
        );
        assert_eq!(
            texts(Event::MemoryLimit {
                rss_bytes: 600 << 20,
                limit_bytes: 512 << 20,
                killed: true
            }),
            ["memory limit: 600M of 512M, killed"]
        );
        let finished = texts(Event::Finished(Finished {
            status: FinishStatus::Cancelled,
            result: None,
            error: Some("cancelled by the user".to_owned()),
            turns: 2,
            usage: Usage::default(),
            restarts: 0,
            branch: None,
            worktree: None,
            changed_files: Vec::new(),
        }));
        assert_eq!(
            finished,
            [
                "finished: cancelled after 2 turns",
                "error: cancelled by the user"
            ]
        );
    }
}

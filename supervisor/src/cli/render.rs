//! The live, human view of a task on stderr (`kugetsu run` without `--json`).

use std::io::{IsTerminal, Write};

use kugetsu_protocol::{Event, EventEnvelope, FinishStatus};

/// Renders events as they happen.
#[derive(Debug)]
pub struct Renderer {
    color: bool,
    /// Whether streamed text is mid-line (so the next block starts on a fresh line).
    in_text: bool,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    /// A renderer for stderr, in colour when stderr is a terminal and `NO_COLOR` is unset.
    pub fn new() -> Self {
        let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Renderer {
            color,
            in_text: false,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn line(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.in_text {
            let _ = writeln!(err);
            self.in_text = false;
        }
        let _ = writeln!(err, "{text}");
    }

    /// Shows one event.
    pub fn show(&mut self, envelope: &EventEnvelope) {
        match &envelope.event {
            Event::Queued { priority } => {
                let text = self.paint("2", &format!("queued ({priority:?})"));
                self.line(&text);
            }
            Event::Started {
                attempt,
                pid,
                worktree,
                branch,
                model,
                sandbox,
                node,
            } => {
                let head = self.paint("1", &format!("kugetsu ▸ task {}", envelope.task));
                let mut detail = format!("{model} · worker pid {pid}");
                if let Some(node) = node {
                    detail.push_str(&format!(" on node {node}"));
                }
                if *attempt > 1 {
                    detail.push_str(&format!(" · attempt {attempt}"));
                }
                self.line(&format!("{head} · {detail}"));
                if let Some(worktree) = worktree {
                    let branch = branch.as_deref().unwrap_or("-");
                    let text = self.paint("2", &format!("  worktree {worktree} (branch {branch})"));
                    self.line(&text);
                }
                if let Some(sandbox) = sandbox {
                    let missing: Vec<String> = sandbox
                        .missing
                        .iter()
                        .map(|m| m.protection.as_str().to_owned())
                        .collect();
                    let mut text = format!(
                        "  sandbox {} · network {}",
                        sandbox.mode.as_str(),
                        sandbox.network.as_str()
                    );
                    if !missing.is_empty() {
                        text.push_str(&format!(" · missing: {}", missing.join(", ")));
                    }
                    let text = self.paint("2", &text);
                    self.line(&text);
                }
            }
            Event::TurnStart { turn } => {
                let text = self.paint("36", &format!("── turn {turn}"));
                self.line(&text);
            }
            Event::TextDelta { text } => {
                let mut err = std::io::stderr().lock();
                if !self.in_text {
                    let _ = write!(err, "  ");
                    self.in_text = true;
                }
                let _ = write!(err, "{}", text.replace('\n', "\n  "));
                let _ = err.flush();
            }
            Event::Retry {
                attempt,
                reason,
                wait_ms,
            } => {
                // Text already on screen cannot be taken back: say it is void.
                let void = if self.in_text {
                    "; the text above is void"
                } else {
                    ""
                };
                let text = self.paint(
                    "33",
                    &format!(
                        "  ↻ model request failed, retrying (attempt {attempt}, in {:.1} s){void}: {}",
                        *wait_ms as f64 / 1000.0,
                        clip(reason, 200)
                    ),
                );
                self.line(&text);
            }
            Event::AssistantMessage { .. } => {
                if self.in_text {
                    let _ = writeln!(std::io::stderr());
                    self.in_text = false;
                }
            }
            Event::ToolStart { tool, args, .. } => {
                let text = self.paint("33", &format!("  ▸ {tool} {}", summarize_args(tool, args)));
                self.line(&text);
            }
            Event::ToolEnd {
                tool,
                ok,
                output,
                duration_ms,
                ..
            } => {
                let first = output.lines().next().unwrap_or("").trim();
                let first = clip(first, 100);
                let text = if *ok {
                    self.paint("32", &format!("  ✓ {tool} ({duration_ms} ms) {first}"))
                } else {
                    self.paint("31", &format!("  ✗ {tool} ({duration_ms} ms) {first}"))
                };
                self.line(&text);
            }
            Event::TurnEnd { .. } => {}
            Event::Compaction {
                tokens_before,
                tokens_after,
                ok,
            } => {
                let verb = if *ok {
                    "compacted"
                } else {
                    "compaction failed"
                };
                let text = self.paint(
                    "35",
                    &format!("  ⟲ {verb}: {tokens_before} → {tokens_after} tokens"),
                );
                self.line(&text);
            }
            Event::Steered { text } => {
                let text = self.paint("35", &format!("  ↪ steered: {}", clip(text, 100)));
                self.line(&text);
            }
            Event::Conflict { with, files } => {
                let text = self.paint(
                    "33",
                    &format!(
                        "  ⚠ conflicts with {} in {}",
                        with.join(", "),
                        clip(&files.join(", "), 100)
                    ),
                );
                self.line(&text);
            }
            Event::Restarted { attempt, reason } => {
                let text = self.paint(
                    "33",
                    &format!("  ↻ restarted (attempt {attempt}): {reason}"),
                );
                self.line(&text);
            }
            Event::MemoryLimit {
                rss_bytes,
                limit_bytes,
                killed,
            } => {
                let action = if *killed { ", killed" } else { "" };
                let text = self.paint(
                    "31",
                    &format!(
                        "  ! memory {} MiB over the {} MiB limit{action}",
                        rss_bytes >> 20,
                        limit_bytes >> 20
                    ),
                );
                self.line(&text);
            }
            Event::RateLimited { provider, wait_ms } => {
                let text = self.paint(
                    "33",
                    &format!(
                        "  … waiting {:.1} s for {provider}'s rate limit",
                        *wait_ms as f64 / 1000.0
                    ),
                );
                self.line(&text);
            }
            Event::Finished(finished) => {
                let (code, word) = match finished.status {
                    FinishStatus::Completed => ("1;32", "completed"),
                    FinishStatus::Failed => ("1;31", "failed"),
                    FinishStatus::Cancelled => ("1;33", "cancelled"),
                    FinishStatus::TimedOut => ("1;31", "timed out"),
                    FinishStatus::Paused => ("1;33", "paused"),
                };
                let mut summary = format!(
                    "── {word} after {} turn{} · {} in / {} out tokens",
                    finished.turns,
                    if finished.turns == 1 { "" } else { "s" },
                    finished.usage.input_tokens,
                    finished.usage.output_tokens
                );
                if let Some(cost) = finished.usage.cost_usd {
                    summary.push_str(&format!(" · ${cost:.4}"));
                }
                if !finished.changed_files.is_empty() {
                    summary.push_str(&format!(
                        " · {} file{} changed",
                        finished.changed_files.len(),
                        if finished.changed_files.len() == 1 {
                            ""
                        } else {
                            "s"
                        }
                    ));
                }
                if finished.restarts > 0 {
                    summary.push_str(&format!(" · {} restarts", finished.restarts));
                }
                let text = self.paint(code, &summary);
                self.line(&text);
                if let Some(error) = &finished.error
                    && finished.status != FinishStatus::Completed
                {
                    let text = self.paint("31", &format!("   {error}"));
                    self.line(&text);
                }
                if let Some(branch) = &finished.branch {
                    let text = self.paint("2", &format!("   branch {branch}"));
                    self.line(&text);
                }
            }
        }
    }
}

/// The one argument a person wants to see for each tool.
pub(crate) fn summarize_args(tool: &str, args: &serde_json::Value) -> String {
    let field = |name: &str| args.get(name).and_then(serde_json::Value::as_str);
    let text = match tool {
        "bash" => field("command").map(|c| format!("$ {}", c.lines().next().unwrap_or(""))),
        "grep" => field("pattern").map(|p| match field("path") {
            Some(path) => format!("/{p}/ in {path}"),
            None => format!("/{p}/"),
        }),
        "ls" => Some(field("path").unwrap_or(".").to_owned()),
        _ => field("path").map(str::to_owned),
    };
    clip(&text.unwrap_or_else(|| args.to_string()), 100)
}

/// `text` cut to `max_chars` characters, with `…` when it was longer.
pub(crate) fn clip(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_owned()
    } else {
        let mut clipped: String = text.chars().take(max_chars).collect();
        clipped.push('…');
        clipped
    }
}

//! A shadow's conversation and the journal that makes it survive a crash.
//!
//! Every change to the conversation goes through a [`Session`] method that journals it first
//! (durably where docs/layout.md says), so the conversation rebuilt by [`Session::resume`] is the
//! one the model last saw.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use kugetsu_protocol::Usage;

use crate::conversation::{Message, ToolCall};
use crate::journal::{Durability, INTERRUPTED_RESULT, Journal, Record, Tail};

/// A journal write failed: the task cannot promise durability any more.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the checkpoint journal {path}")]
pub struct JournalError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// What the loop should do next, derived from the conversation alone.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Ask the model for a new turn.
    AskModel,
    /// Run these tool calls of the last assistant message (they never started).
    RunTools(Vec<ToolCall>),
    /// The model gave its final answer.
    Done,
}

/// A tool call of the latest turns, as the journal knows it, re-announced on resume.
///
/// Events trail the journal (the journal is synced first, the event written after), so a
/// worker killed at the wrong instant may have journaled a call whose `tool_start` or
/// `tool_end` never reached the supervisor. A resumed worker re-announces the calls of its
/// last two turns; the supervisor drops the ones it has already seen. That window is enough
/// because the agent journals no new turn before everything it emitted is written to the
/// supervisor's pipe ([`crate::ipc::Outbox::delivered`]): without that, workers killed one
/// after another before their first write each moved the journal on by a turn, and an
/// undelivered `tool_end` slid out of the window for good.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayedCall {
    pub call_id: String,
    pub tool: String,
    /// The raw JSON arguments of the intent.
    pub args: String,
    /// `(ok, output, truncated)` once the call has a result (an interrupted call has one).
    pub result: Option<(bool, String, bool)>,
    /// Whether that result was made just now (the call was found interrupted): it is news,
    /// not a repetition.
    pub fresh: bool,
}

/// Intents and results seen while replaying a journal.
#[derive(Debug, Default)]
struct Replaying {
    intents: HashMap<String, (String, String)>,
    results: HashMap<String, (bool, String, bool)>,
    /// Calls answered as interrupted by this resume.
    fresh: HashSet<String>,
}

/// How many of the latest turns a resumed worker re-announces.
const REPLAYED_TURNS: usize = 2;

/// The conversation, its counters, and its journal.
#[derive(Debug)]
pub struct Session {
    pub messages: Vec<Message>,
    /// Completed model turns (assistant messages), also across restarts.
    pub turns: u32,
    /// Total usage reported by the provider.
    pub usage: Usage,
    /// Usage of the latest turn, for its `turn_end`.
    pub last_usage: Usage,
    /// The latest non-empty assistant text: the task's result when it ends.
    pub last_text: Option<String>,
    journal: Journal,
}

impl Session {
    /// Starts a fresh session for `prompt`, journaling the prompt.
    pub fn start(journal_path: &Path, prompt: &str) -> Result<Session, JournalError> {
        let journal = Journal::create(journal_path).map_err(|source| JournalError {
            path: journal_path.display().to_string(),
            source,
        })?;
        let mut session = Session {
            messages: Vec::new(),
            turns: 0,
            usage: Usage::default(),
            last_usage: Usage::default(),
            last_text: None,
            journal,
        };
        session.record(
            &Record::Task {
                prompt: prompt.to_owned(),
            },
            Durability::Sync,
        )?;
        session.messages.push(Message::User {
            text: prompt.to_owned(),
        });
        Ok(session)
    }

    /// Rebuilds the session from its journal. Tool calls that had started but left no result
    /// are answered with an "interrupted" result (journaled) and returned, never re-run.
    /// A journal without even its prompt starts over from `prompt`.
    pub fn resume(
        journal_path: &Path,
        prompt: &str,
    ) -> Result<(Session, Vec<ReplayedCall>, Tail), JournalError> {
        let err = |source| JournalError {
            path: journal_path.display().to_string(),
            source,
        };
        let (journal, replay) = Journal::resume(journal_path).map_err(err)?;
        if replay.records.is_empty() {
            return Ok((
                Session::start(journal_path, prompt)?,
                Vec::new(),
                replay.tail,
            ));
        }
        let mut session = Session {
            messages: Vec::new(),
            turns: 0,
            usage: Usage::default(),
            last_usage: Usage::default(),
            last_text: None,
            journal,
        };
        let mut seen = Replaying::default();
        for record in replay.records {
            session.apply(record, &mut seen);
        }
        for call in session.unanswered_calls() {
            if seen.intents.contains_key(&call.id) {
                session.tool_result(&call.id, &call.name, false, INTERRUPTED_RESULT, false)?;
                seen.results.insert(
                    call.id.clone(),
                    (false, INTERRUPTED_RESULT.to_owned(), false),
                );
                seen.fresh.insert(call.id.clone());
            }
        }
        let replayed = session.replayed_calls(&mut seen);
        Ok((session, replayed, replay.tail))
    }

    /// The journaled calls of the last [`REPLAYED_TURNS`] assistant messages, in order.
    fn replayed_calls(&self, seen: &mut Replaying) -> Vec<ReplayedCall> {
        let calls: Vec<&ToolCall> = self
            .messages
            .iter()
            .rev()
            .filter_map(|m| match m {
                Message::Assistant { tool_calls, .. } => Some(tool_calls),
                _ => None,
            })
            .take(REPLAYED_TURNS)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .flatten()
            .collect();
        calls
            .into_iter()
            .filter_map(|call| {
                let (tool, args) = seen.intents.remove(&call.id)?;
                Some(ReplayedCall {
                    call_id: call.id.clone(),
                    tool,
                    args,
                    result: seen.results.remove(&call.id),
                    fresh: seen.fresh.contains(&call.id),
                })
            })
            .collect()
    }

    fn apply(&mut self, record: Record, seen: &mut Replaying) {
        match record {
            Record::Task { prompt } => self.messages.push(Message::User { text: prompt }),
            Record::Assistant {
                text,
                tool_calls,
                usage,
            } => {
                self.note_assistant(&text, usage);
                self.messages.push(Message::Assistant { text, tool_calls });
            }
            Record::ToolIntent {
                call_id,
                tool,
                args,
            } => {
                seen.intents.insert(call_id, (tool, args));
            }
            Record::ToolResult {
                call_id,
                tool,
                ok,
                output,
                truncated,
            } => {
                seen.results
                    .insert(call_id.clone(), (ok, output.clone(), truncated));
                self.messages.push(Message::ToolResult {
                    call_id,
                    name: tool,
                    content: output,
                    is_error: !ok,
                });
            }
            Record::Steer { text } => self.messages.push(Message::User { text }),
            Record::Compaction { messages, .. } => self.messages = messages,
            Record::TurnEnd { .. } => {}
        }
    }

    fn note_assistant(&mut self, text: &str, usage: Usage) {
        self.turns += 1;
        self.usage.add(usage);
        self.last_usage = usage;
        if !text.is_empty() {
            self.last_text = Some(text.to_owned());
        }
    }

    fn record(&mut self, record: &Record, durability: Durability) -> Result<(), JournalError> {
        self.journal
            .append(record, durability)
            .map_err(|source| JournalError {
                path: self.journal.path().display().to_string(),
                source,
            })
    }

    /// The tool calls of the last assistant message that have no result yet, in order.
    fn unanswered_calls(&self) -> Vec<ToolCall> {
        let Some(last) = self
            .messages
            .iter()
            .rposition(|m| matches!(m, Message::Assistant { .. }))
        else {
            return Vec::new();
        };
        let answered: HashSet<&str> = self.messages[last..]
            .iter()
            .filter_map(|m| match m {
                Message::ToolResult { call_id, .. } => Some(call_id.as_str()),
                _ => None,
            })
            .collect();
        match &self.messages[last] {
            Message::Assistant { tool_calls, .. } => tool_calls
                .iter()
                .filter(|c| !answered.contains(c.id.as_str()))
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// What the loop should do next.
    pub fn next(&self) -> Next {
        let pending = self.unanswered_calls();
        if !pending.is_empty() {
            return Next::RunTools(pending);
        }
        match self.messages.last() {
            Some(Message::Assistant { tool_calls, .. }) if tool_calls.is_empty() => Next::Done,
            _ => Next::AskModel,
        }
    }

    /// Records a complete assistant message.
    pub fn assistant(
        &mut self,
        text: String,
        tool_calls: Vec<ToolCall>,
        usage: Usage,
    ) -> Result<(), JournalError> {
        let record = Record::Assistant {
            text,
            tool_calls,
            usage,
        };
        self.record(&record, Durability::Sync)?;
        if let Record::Assistant {
            text, tool_calls, ..
        } = record
        {
            self.note_assistant(&text, usage);
            self.messages.push(Message::Assistant { text, tool_calls });
        }
        Ok(())
    }

    /// Records that a tool is about to run. Durable before it returns.
    pub fn tool_intent(&mut self, call: &ToolCall) -> Result<(), JournalError> {
        self.record(
            &Record::ToolIntent {
                call_id: call.id.clone(),
                tool: call.name.clone(),
                args: call.arguments.clone(),
            },
            Durability::Sync,
        )
    }

    /// Records a tool's result. Durable before it returns.
    pub fn tool_result(
        &mut self,
        call_id: &str,
        tool: &str,
        ok: bool,
        output: &str,
        truncated: bool,
    ) -> Result<(), JournalError> {
        self.record(
            &Record::ToolResult {
                call_id: call_id.to_owned(),
                tool: tool.to_owned(),
                ok,
                output: output.to_owned(),
                truncated,
            },
            Durability::Sync,
        )?;
        self.messages.push(Message::ToolResult {
            call_id: call_id.to_owned(),
            name: tool.to_owned(),
            content: output.to_owned(),
            is_error: !ok,
        });
        Ok(())
    }

    /// Records a steering message handed to the model.
    pub fn steer(&mut self, text: &str) -> Result<(), JournalError> {
        self.record(
            &Record::Steer {
                text: text.to_owned(),
            },
            Durability::Sync,
        )?;
        self.messages.push(Message::User {
            text: text.to_owned(),
        });
        Ok(())
    }

    /// Records the end of a turn.
    pub fn turn_end(&mut self) -> Result<(), JournalError> {
        let record = Record::TurnEnd {
            turn: self.turns,
            usage: self.last_usage,
        };
        self.record(&record, Durability::Sync)
    }

    /// Replaces the conversation (a compaction or a pruning), journaled.
    pub fn replace(
        &mut self,
        messages: Vec<Message>,
        tokens_before: u64,
        tokens_after: u64,
    ) -> Result<(), JournalError> {
        let record = Record::Compaction {
            messages,
            tokens_before,
            tokens_after,
        };
        self.record(&record, Durability::Sync)?;
        if let Record::Compaction { messages, .. } = record {
            self.messages = messages;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> ToolCall {
        ToolCall {
            id: id.to_owned(),
            name: "bash".to_owned(),
            arguments: "{}".to_owned(),
        }
    }

    #[test]
    fn resume_answers_started_calls_as_interrupted_and_reruns_unstarted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut session = Session::start(&path, "do it").unwrap();
        session
            .assistant(
                "two things".to_owned(),
                vec![call("a"), call("b"), call("c")],
                Usage::default(),
            )
            .unwrap();
        session.tool_intent(&call("a")).unwrap();
        session
            .tool_result("a", "bash", true, "done", false)
            .unwrap();
        session.tool_intent(&call("b")).unwrap();
        drop(session); // killed while b ran

        let (session, replayed, tail) = Session::resume(&path, "do it").unwrap();
        assert_eq!(tail, Tail::Clean);
        // a (done) and b (interrupted now) are re-announced with their results; c never started.
        let ids: Vec<&str> = replayed.iter().map(|c| c.call_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(replayed[0].result, Some((true, "done".to_owned(), false)));
        let (ok, output, _) = replayed[1].result.clone().unwrap();
        assert!(!ok && output.contains("interrupted by a restart"));
        // a ran and b was interrupted: only c, which never started, is left to run.
        assert_eq!(session.next(), Next::RunTools(vec![call("c")]));
        assert_eq!(session.turns, 1);
        let Some(Message::ToolResult {
            content, is_error, ..
        }) = session.messages.last()
        else {
            panic!("no interrupted result");
        };
        assert!(*is_error && content.contains("interrupted by a restart"));

        // The interrupted result itself was journaled: a second resume agrees.
        let (again, replayed, _) = Session::resume(&path, "do it").unwrap();
        assert_eq!(replayed.len(), 2, "the same calls, now both with results");
        assert_eq!(again.messages, session.messages);
    }

    #[test]
    fn a_finished_conversation_resumes_as_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut session = Session::start(&path, "hi").unwrap();
        session
            .assistant("all done".to_owned(), Vec::new(), Usage::default())
            .unwrap();
        let (session, _, _) = Session::resume(&path, "hi").unwrap();
        assert_eq!(session.next(), Next::Done);
        assert_eq!(session.last_text.as_deref(), Some("all done"));
    }
}

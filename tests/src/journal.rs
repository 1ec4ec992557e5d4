//! A task's checkpoint journal (`<task_dir>/journal.jsonl`), read back with the worker's own
//! reader, and the invariants every journal must keep after any number of crashes.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

pub use kugetsu_worker::journal::{INTERRUPTED_RESULT, Record, Replay, Tail};

/// The valid prefix of the journal at `path`, as a resuming worker reads it.
pub fn read(path: &Path) -> Replay {
    kugetsu_worker::journal::read(path)
        .unwrap_or_else(|e| panic!("cannot read the journal {}: {e}", path.display()))
}

/// Every record of the journal at `path`; panics unless it ends cleanly.
pub fn read_clean(path: &Path) -> Vec<Record> {
    let replay = read(path);
    assert_eq!(
        replay.tail,
        Tail::Clean,
        "the journal {} does not end cleanly after {} records",
        path.display(),
        replay.records.len()
    );
    replay.records
}

/// The byte range of every line of the file at `path`, its newline included.
pub fn line_spans(path: &Path) -> Vec<Range<usize>> {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("cannot read the journal {}: {e}", path.display()));
    let mut spans = Vec::new();
    let mut start = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if *byte == b'\n' {
            spans.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < bytes.len() {
        spans.push(start..bytes.len());
    }
    spans
}

/// The `type` of a record, as written.
pub fn kind(record: &Record) -> &'static str {
    match record {
        Record::Task { .. } => "task",
        Record::Assistant { .. } => "assistant",
        Record::ToolIntent { .. } => "tool_intent",
        Record::ToolResult { .. } => "tool_result",
        Record::Steer { .. } => "steer",
        Record::Compaction { .. } => "compaction",
        Record::TurnEnd { .. } => "turn_end",
    }
}

/// The call ids of the tool intents, in order.
pub fn intents(records: &[Record]) -> Vec<&str> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::ToolIntent { call_id, .. } => Some(call_id.as_str()),
            _ => None,
        })
        .collect()
}

/// The tool results by call id: `(ok, output)` of each, in order of appearance.
pub fn results(records: &[Record]) -> BTreeMap<&str, Vec<(bool, &str)>> {
    let mut out: BTreeMap<&str, Vec<(bool, &str)>> = BTreeMap::new();
    for record in records {
        if let Record::ToolResult {
            call_id,
            ok,
            output,
            ..
        } = record
        {
            out.entry(call_id.as_str())
                .or_default()
                .push((*ok, output.as_str()));
        }
    }
    out
}

/// Checks what crashes must never break: every tool intent is journaled once and answered
/// by exactly one result after it; no result answers a call that never had an intent.
pub fn assert_tool_calls_paired(records: &[Record]) {
    let mut seen_intent: BTreeMap<&str, usize> = BTreeMap::new();
    let mut answered: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        match record {
            Record::ToolIntent { call_id, .. } => {
                if let Some(first) = seen_intent.insert(call_id, i) {
                    panic!(
                        "tool call {call_id} has two intents (records {first} and {i}): it ran \
                         twice\n{}",
                        describe(records)
                    );
                }
            }
            Record::ToolResult { call_id, .. } => {
                assert!(
                    seen_intent.contains_key(call_id.as_str()),
                    "record {i}: a result for {call_id}, which has no intent before it\n{}",
                    describe(records)
                );
                if let Some(first) = answered.insert(call_id, i) {
                    panic!(
                        "tool call {call_id} has two results (records {first} and {i})\n{}",
                        describe(records)
                    );
                }
            }
            _ => {}
        }
    }
    let unanswered: Vec<&&str> = seen_intent
        .keys()
        .filter(|id| !answered.contains_key(**id))
        .collect();
    assert!(
        unanswered.is_empty(),
        "tool calls {unanswered:?} have an intent but no result\n{}",
        describe(records)
    );
}

/// One line per record (`seq kind detail`), for failure messages.
pub fn describe(records: &[Record]) -> String {
    let mut out = format!("{} journal records:\n", records.len());
    for (i, record) in records.iter().enumerate() {
        let detail = match record {
            Record::Task { prompt } => format!("{prompt:.60}"),
            Record::Assistant {
                text, tool_calls, ..
            } => {
                let ids: Vec<&str> = tool_calls.iter().map(|c| c.id.as_str()).collect();
                format!("{text:.60} calls {ids:?}")
            }
            Record::ToolIntent { call_id, tool, .. } => format!("{call_id} {tool}"),
            Record::ToolResult {
                call_id,
                ok,
                output,
                ..
            } => format!("{call_id} ok={ok} {output:.60}"),
            Record::Steer { text } => format!("{text:.60}"),
            Record::Compaction {
                messages,
                tokens_before,
                tokens_after,
            } => format!(
                "{} messages, {tokens_before} -> {tokens_after} tokens",
                messages.len()
            ),
            Record::TurnEnd { turn, .. } => format!("turn {turn}"),
        };
        out.push_str(&format!("  {:>3} {:<11} {detail}\n", i + 1, kind(record)));
    }
    out
}

/// Appends `records` after the valid prefix of the journal at `path`, the way a worker
/// would have had it lived a moment longer.
pub fn append(path: &Path, records: &[Record]) {
    use kugetsu_worker::journal::{Durability, Journal};
    let (mut journal, _) = Journal::resume(path)
        .unwrap_or_else(|e| panic!("cannot open the journal {}: {e}", path.display()));
    for record in records {
        journal
            .append(record, Durability::Sync)
            .unwrap_or_else(|e| panic!("cannot append to {}: {e}", path.display()));
    }
}

//! Makes every message fit one channel line ([`MAX_LINE_BYTES`]), which the supervisor's
//! reader enforces by dropping longer lines: an event that would not fit is shrunk, never lost.
//!
//! - `text_delta`: split into several deltas, in order, whose texts join to the original.
//! - `tool_start` (also as a replay): every string in `args` longer than [`KEEP_BYTES`] is cut
//!   to that and ends in [`TRUNCATED_MARKER`] plus its full size; args that still do not fit
//!   become `{"truncated": true, "bytes": N, "head": "..."}`. The call itself runs on its whole
//!   arguments, and the journal keeps them.
//! - `assistant_message`, `finished` (`result`, `error`): the text is cut with the marker.
//!
//! Room is left for the envelope (`v`, `task`, `seq`, `ts`) the supervisor adds.

use kugetsu_protocol::{Event, MAX_LINE_BYTES, WorkerMessage, encode};

/// Bytes a fitted line may take, leaving room for the supervisor's envelope.
const LINE_ROOM: usize = MAX_LINE_BYTES - 4096;
/// Bytes of one long string kept when an event is shrunk.
pub const KEEP_BYTES: usize = 64 * 1024;
/// Ends every string that was cut, followed by the original size.
pub const TRUNCATED_MARKER: &str = "… [truncated by kugetsu: ";
/// Bytes of text per delta when a delta is split (JSON escaping may grow text up to 6 times).
const DELTA_PIECE: usize = LINE_ROOM / 8;

/// `message` as one or more messages that each encode to a line under the limit.
pub fn fit(message: WorkerMessage) -> Vec<WorkerMessage> {
    if encode(&message).len() <= LINE_ROOM {
        return vec![message];
    }
    match message {
        WorkerMessage::Event(event) => fit_event(event)
            .into_iter()
            .map(WorkerMessage::Event)
            .collect(),
        WorkerMessage::Replay(event) => fit_event(event)
            .into_iter()
            .map(WorkerMessage::Replay)
            .collect(),
        other => vec![other],
    }
}

fn fit_event(event: Event) -> Vec<Event> {
    match event {
        Event::TextDelta { text } => split(&text, DELTA_PIECE)
            .into_iter()
            .map(|text| Event::TextDelta {
                text: text.to_owned(),
            })
            .collect(),
        Event::ToolStart {
            call_id,
            tool,
            args,
        } => vec![Event::ToolStart {
            call_id,
            tool,
            args: shrink_args(args),
        }],
        Event::AssistantMessage { text } => vec![Event::AssistantMessage { text: cut(&text) }],
        Event::Finished(mut finished) => {
            finished.result = finished.result.as_deref().map(cut);
            finished.error = finished.error.as_deref().map(cut);
            vec![Event::Finished(finished)]
        }
        other => vec![other],
    }
}

/// `args` with every long string cut; a whole replacement when that is not enough.
fn shrink_args(args: serde_json::Value) -> serde_json::Value {
    let bytes = args.to_string().len();
    let mut shrunk = args;
    cut_strings(&mut shrunk);
    if shrunk.to_string().len() <= LINE_ROOM / 2 {
        return shrunk;
    }
    let text = shrunk.to_string();
    serde_json::json!({
        "truncated": true,
        "bytes": bytes,
        "head": &text[..floor_char_boundary(&text, KEEP_BYTES)],
    })
}

fn cut_strings(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) if text.len() > KEEP_BYTES => *text = cut(text),
        serde_json::Value::Array(items) => items.iter_mut().for_each(cut_strings),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(cut_strings),
        _ => {}
    }
}

/// `text` cut to [`KEEP_BYTES`] (on a character boundary) plus the marker and its size.
fn cut(text: &str) -> String {
    if text.len() <= KEEP_BYTES {
        return text.to_owned();
    }
    let head = &text[..floor_char_boundary(text, KEEP_BYTES)];
    format!("{head}{TRUNCATED_MARKER}{} bytes]", text.len())
}

/// `text` in pieces of at most `max` bytes, cut on character boundaries.
fn split(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let end = match floor_char_boundary(rest, max) {
            0 => rest.chars().next().map_or(rest.len(), char::len_utf8),
            end => end,
        };
        let (piece, tail) = rest.split_at(end);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

fn floor_char_boundary(text: &str, max: usize) -> usize {
    if max >= text.len() {
        return text.len();
    }
    (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn line_len(message: &WorkerMessage) -> usize {
        encode(message).len()
    }

    #[test]
    fn small_messages_pass_untouched() {
        let message = WorkerMessage::Event(Event::ToolStart {
            call_id: "c".into(),
            tool: "write".into(),
            args: json!({"path": "a", "content": "x"}),
        });
        assert_eq!(fit(message.clone()), vec![message]);
    }

    #[test]
    fn a_huge_tool_start_is_truncated_with_a_marker_not_dropped() {
        let content = "ü".repeat(3 * 1024 * 1024); // 6 MiB of two-byte characters
        for wrap in [WorkerMessage::Event, WorkerMessage::Replay] {
            let message = wrap(Event::ToolStart {
                call_id: "call_1".into(),
                tool: "write".into(),
                args: json!({"path": "big.txt", "content": content}),
            });
            let fitted = fit(message);
            assert_eq!(fitted.len(), 1);
            assert!(line_len(&fitted[0]) <= LINE_ROOM);
            let (WorkerMessage::Event(Event::ToolStart { call_id, args, .. })
            | WorkerMessage::Replay(Event::ToolStart { call_id, args, .. })) = &fitted[0]
            else {
                panic!("{:?}", fitted[0]);
            };
            assert_eq!(call_id, "call_1");
            assert_eq!(args["path"], "big.txt");
            let cut = args["content"].as_str().unwrap();
            assert!(cut.starts_with("üü"), "{}", &cut[..10]);
            assert!(
                cut.ends_with(&format!("{TRUNCATED_MARKER}{} bytes]", content.len())),
                "{}",
                &cut[cut.len() - 60..]
            );
        }
        // Many strings, each under the cut, can still be too many: the whole args go.
        let many: Vec<String> = (0..200).map(|_| "y".repeat(KEEP_BYTES)).collect();
        let fitted = fit(WorkerMessage::Event(Event::ToolStart {
            call_id: "c".into(),
            tool: "t".into(),
            args: json!(many),
        }));
        assert!(line_len(&fitted[0]) <= LINE_ROOM);
        let WorkerMessage::Event(Event::ToolStart { args, .. }) = &fitted[0] else {
            panic!();
        };
        assert_eq!(args["truncated"], true);
        assert!(args["bytes"].as_u64().unwrap() > 200 * KEEP_BYTES as u64);
    }

    #[test]
    fn a_huge_text_delta_is_split_in_order() {
        let text: String = "日本語\n\"quoted\"".repeat(400_000);
        let fitted = fit(WorkerMessage::Event(Event::TextDelta {
            text: text.clone(),
        }));
        assert!(fitted.len() > 1);
        let mut joined = String::new();
        for message in &fitted {
            assert!(line_len(message) <= LINE_ROOM);
            let WorkerMessage::Event(Event::TextDelta { text }) = message else {
                panic!("{message:?}");
            };
            joined.push_str(text);
        }
        assert_eq!(joined, text);
    }
}

//! Golden fixtures pin the wire format; codec tests pin the error behaviour.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use kugetsu_protocol::{
    DecodeError, Event, EventEnvelope, LineReader, SupervisorMessage, WorkerMessage, decode, encode,
};

const EVENTS: &str = include_str!("fixtures/events.jsonl");
const CHANNEL: &str = include_str!("fixtures/channel.jsonl");

/// Decoding then encoding a fixture line must give back the exact bytes.
fn round_trips<T: kugetsu_protocol::codec::Wire>(line: &str) -> T {
    let value: T = decode(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
    let encoded = encode(&value);
    assert_eq!(String::from_utf8(encoded).unwrap(), format!("{line}\n"));
    value
}

#[test]
fn every_event_type_round_trips_byte_for_byte() {
    let mut seen = Vec::new();
    for line in EVENTS.lines() {
        let envelope: EventEnvelope = round_trips(line);
        seen.push(envelope.event.kind());
    }
    for kind in Event::TYPES {
        assert!(seen.contains(kind), "fixture lacks a {kind} event");
    }
}

#[test]
fn channel_messages_round_trip_byte_for_byte() {
    let lines: Vec<&str> = CHANNEL.lines().collect();
    assert!(matches!(
        round_trips::<WorkerMessage>(lines[0]),
        WorkerMessage::Hello { protocol: 2, .. }
    ));
    assert!(matches!(
        round_trips::<WorkerMessage>(lines[1]),
        WorkerMessage::Heartbeat { .. }
    ));
    assert!(matches!(
        round_trips::<WorkerMessage>(lines[2]),
        WorkerMessage::Replay(Event::ToolStart { .. })
    ));
    assert!(matches!(
        round_trips::<WorkerMessage>(lines[3]),
        WorkerMessage::Event(Event::TurnStart { turn: 2 })
    ));
    let SupervisorMessage::Start {
        task,
        resume: false,
    } = round_trips::<SupervisorMessage>(lines[4])
    else {
        panic!("not a fresh start: {}", lines[4]);
    };
    assert_eq!(task.mem_limit_bytes, Some(512 * 1024 * 1024));
    assert!(matches!(
        round_trips::<SupervisorMessage>(lines[5]),
        SupervisorMessage::Steer { .. }
    ));
    assert_eq!(
        round_trips::<SupervisorMessage>(lines[6]),
        SupervisorMessage::Cancel
    );
    assert_eq!(
        round_trips::<SupervisorMessage>(lines[7]),
        SupervisorMessage::Shutdown
    );
    let WorkerMessage::Permit(permit) = round_trips::<WorkerMessage>(lines[8]) else {
        panic!("not a permit: {}", lines[8]);
    };
    assert_eq!((permit.id, permit.max_output_tokens), (3, 8192));
    assert_eq!(
        round_trips::<SupervisorMessage>(lines[9]),
        SupervisorMessage::Grant { id: 3 }
    );
    let WorkerMessage::PermitHead {
        status, headers, ..
    } = round_trips::<WorkerMessage>(lines[10])
    else {
        panic!("not a permit head: {}", lines[10]);
    };
    assert_eq!((status, headers["retry-after"].as_str()), (429, "2"));
    assert!(matches!(
        round_trips::<WorkerMessage>(lines[11]),
        WorkerMessage::PermitEnd { id: 3, usage: None }
    ));
    assert!(matches!(
        round_trips::<SupervisorMessage>(lines[12]),
        SupervisorMessage::Deny {
            id: 4,
            pause: true,
            ..
        }
    ));
    let WorkerMessage::PermitEnd {
        usage: Some(usage), ..
    } = round_trips::<WorkerMessage>(lines[13])
    else {
        panic!("no usage: {}", lines[13]);
    };
    assert_eq!(usage.cost_usd, Some(0.0038));
    // A cluster node's: tools gated, and the go-ahead for one call.
    let SupervisorMessage::Start { task, .. } = round_trips::<SupervisorMessage>(lines[14]) else {
        panic!("not a start: {}", lines[14]);
    };
    assert!(task.tool_gate);
    assert_eq!(
        round_trips::<SupervisorMessage>(lines[15]),
        SupervisorMessage::Proceed {
            call_id: "call_1".to_owned()
        }
    );
    for line in &lines {
        let tag: serde_json::Value = serde_json::from_str(line).unwrap();
        let tag = tag["type"].as_str().unwrap();
        assert!(
            SupervisorMessage::TYPES.contains(&tag) || WorkerMessage::is_known_type(tag),
            "{tag} is not a known type"
        );
    }
}

#[test]
fn started_names_its_node_only_in_a_cluster() {
    let nodes: Vec<Option<String>> = EVENTS
        .lines()
        .map(|line| decode::<EventEnvelope>(line.as_bytes()).unwrap())
        .filter_map(|envelope| match envelope.event {
            Event::Started { node, .. } => Some(node),
            _ => None,
        })
        .collect();
    assert_eq!(nodes, [None, Some("node-b".to_owned())]);
}

#[test]
fn unknown_fields_are_ignored_and_optional_ones_default() {
    let line = br#"{"type":"finished","status":"failed","result":null,"error":"boom","turns":1,"usage":{"input_tokens":1,"output_tokens":2},"extra":true}"#;
    let WorkerMessage::Event(Event::Finished(finished)) = decode(line).unwrap() else {
        panic!("not finished");
    };
    assert_eq!(finished.restarts, 0);
    assert!(finished.changed_files.is_empty());
}

#[test]
fn a_start_from_an_older_supervisor_has_no_memory_limit() {
    let line = br#"{"type":"start","task":{"id":"t","prompt":"p","model":"scripted/demo","max_turns":3,"task_dir":"/s/t"},"resume":true}"#;
    let SupervisorMessage::Start { task, resume: true } = decode(line).unwrap() else {
        panic!("not a resume");
    };
    assert_eq!(task.mem_limit_bytes, None);
    assert_eq!(task.context_window, None);
    assert!(!task.tool_gate, "an older supervisor's tools are not gated");
}

#[test]
fn bad_lines_get_errors_that_name_the_problem() {
    let cases: &[(&[u8], &str)] = &[
        (b"{not json", "malformed JSON"),
        (b"[1,2]", "no string \"type\""),
        (b"{\"type\":7}", "no string \"type\""),
        (
            b"{\"type\":\"explode\"}",
            "unknown message type \"explode\"",
        ),
        (b"{\"type\":\"steer\"}", "invalid \"steer\" message"),
        (b"{\"type\":\"steer\",\"text\":\"\xff\"}", "not valid UTF-8"),
    ];
    for (line, expected) in cases {
        let err = decode::<SupervisorMessage>(line).unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "{:?}: got {err}",
            String::from_utf8_lossy(line)
        );
    }
    // The field-level cause is kept as the error's source.
    let err = decode::<SupervisorMessage>(b"{\"type\":\"steer\"}").unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("text"), "{source}");
}

#[tokio::test]
async fn the_reader_recovers_after_bad_and_oversized_lines() {
    let big = "x".repeat(300);
    let input = format!(
        "{{\"type\":\"cancel\"}}\n{{broken\n{{\"type\":\"steer\",\"text\":\"{big}\"}}\n\n{{\"type\":\"nope\"}}\r\n{{\"type\":\"steer\",\"text\":\"ok\"}}\n{{\"type\":\"shutdown\"}}"
    );
    // A 1-byte buffer makes every line arrive split at every byte.
    let stream = tokio::io::BufReader::with_capacity(1, input.as_bytes());
    let mut reader = LineReader::with_limit(stream, 100);
    let mut got = Vec::new();
    while let Some(item) = reader.next::<SupervisorMessage>().await {
        got.push(item);
    }
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(matches!(got[0], Ok(SupervisorMessage::Cancel)));
    assert!(matches!(got[1], Err(DecodeError::Malformed { .. })));
    assert!(matches!(
        got[2],
        Err(DecodeError::Oversized { max: 100, len }) if len > 300
    ));
    assert!(matches!(got[3], Err(DecodeError::UnknownType { ref tag }) if tag == "nope"));
    assert!(matches!(got[4], Ok(SupervisorMessage::Steer { ref text }) if text == "ok"));
    // The last line has no newline and still counts.
    assert!(matches!(got[5], Ok(SupervisorMessage::Shutdown)));
}

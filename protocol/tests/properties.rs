//! Property tests of the JSON-lines codec: fuzzing that runs on the stable toolchain.
//!
//! Each property runs 256 cases by default (a few seconds in all); `PROPTEST_CASES=100000`
//! runs a long fuzzing session instead. A failing case is shrunk and saved under
//! `proptest-regressions/`, which is committed so the case keeps being tried.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use kugetsu_protocol::{
    DecodeError, Event, EventEnvelope, LineReader, SupervisorMessage, WorkerMessage, decode, encode,
};
use proptest::prelude::*;

/// Reads every line of `bytes` through a [`LineReader`] with limit `max`, the bytes arriving
/// `chunk` at a time.
fn read_lines(bytes: &[u8], chunk: usize, max: usize) -> Vec<Result<Vec<u8>, usize>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let reader = tokio::io::BufReader::with_capacity(chunk, bytes);
        let mut lines = LineReader::with_limit(reader, max);
        let mut out = Vec::new();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    assert!(line.len() <= max, "a line over the limit was kept");
                    out.push(Ok(line));
                }
                Ok(None) => return out,
                Err(DecodeError::Oversized { len, max: limit }) => {
                    assert_eq!(limit, max);
                    out.push(Err(len));
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    })
}

/// What the reader must return: the input split at newlines (a final newline ends the last
/// line, it does not start an empty one), each line over `max` reported with its length.
fn expected_lines(bytes: &[u8], max: usize) -> Vec<Result<Vec<u8>, usize>> {
    let mut pieces: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if pieces.last().is_some_and(|p| p.is_empty()) {
        pieces.pop();
    }
    pieces
        .into_iter()
        .map(|p| {
            if p.len() > max {
                Err(p.len())
            } else {
                Ok(p.to_vec())
            }
        })
        .collect()
}

/// Bytes that are mostly lines: newlines, JSON punctuation and letters are frequent.
fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => Just(b'\n'),
            2 => prop::sample::select(b"{}[]\":,\\ \r".to_vec()),
            4 => b'a'..=b'z',
            1 => any::<u8>(),
        ],
        0..400,
    )
}

proptest! {
    /// Whatever arrives, in whatever pieces: the lines come out as split at newlines, the
    /// oversized ones reported with their length and never held.
    #[test]
    fn line_reader_splits_any_bytes_in_any_chunks(
        bytes in line_bytes(),
        chunk in 1usize..64,
        max in 1usize..80,
    ) {
        prop_assert_eq!(read_lines(&bytes, chunk, max), expected_lines(&bytes, max));
    }

    /// Decoding arbitrary bytes as any message type never panics, and whatever decodes
    /// encodes to one line that decodes to the same message.
    #[test]
    fn decode_never_panics_and_what_decodes_round_trips(bytes in line_bytes()) {
        let _ = decode::<SupervisorMessage>(&bytes);
        let _ = decode::<WorkerMessage>(&bytes);
        let _ = decode::<EventEnvelope>(&bytes);
        if let Ok(event) = decode::<Event>(&bytes) {
            let line = encode(&event);
            prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            let again: Event = decode(&line[..line.len() - 1]).unwrap();
            prop_assert_eq!(again, event);
        }
    }

    /// Any text survives a round trip, newlines and control characters included: an encoded
    /// message is always exactly one line.
    #[test]
    fn any_text_round_trips_in_one_line(text in any::<String>(), chunk in 1usize..32) {
        let event = Event::TextDelta { text };
        let mut stream = encode(&event);
        stream.extend_from_slice(&encode(&event));
        let lines = read_lines(&stream, chunk, kugetsu_protocol::codec::MAX_LINE_BYTES);
        prop_assert_eq!(lines.len(), 2);
        for line in lines {
            let decoded: Event = decode(&line.unwrap()).unwrap();
            prop_assert_eq!(&decoded, &event);
        }
    }
}

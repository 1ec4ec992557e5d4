//! A push-based parser for server-sent events (the `text/event-stream` format both providers
//! stream in), independent of HTTP.
//!
//! Bytes go in through [`SseParser::push`] in whatever pieces the network delivers; complete
//! events come out. Lines may end in `\n`, `\r\n` or a lone `\r`, and a chunk may end between
//! the `\r` and the `\n`, inside a line, or inside a multi-byte UTF-8 character: bytes are kept
//! until their line is complete and only then decoded. [`SseParser::finish`] flushes what an
//! abruptly closed stream left behind.
//!
//! Following the WHATWG rules: `data:` lines of one event are joined with `\n`, a single space
//! after the colon is dropped, lines starting with `:` are comments (`: keep-alive`), `id:` and
//! `retry:` are ignored, and a blank line dispatches the event. Invalid UTF-8 is replaced, not
//! fatal: the JSON layer above reports anything that matters.
//!
//! Memory is bounded: a line, or the data of one event, longer than the parser's limit
//! ([`MAX_STREAM_BYTES`] unless [`SseParser::with_limit`] says otherwise) fails the push with
//! [`TooLong`] instead of growing the buffer; a hostile server that never sends a newline costs
//! at most the limit.

use super::MAX_STREAM_BYTES;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, empty when the server sent none (the spec's default `message`).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// A line or an event's data passed the parser's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    /// The limit, in bytes.
    pub limit: usize,
}

/// The parser's state between pushes.
#[derive(Debug)]
pub struct SseParser {
    /// Most bytes one line, or the data of one event, may hold.
    limit: usize,
    /// Bytes of the line not yet terminated; undecoded so a split character stays whole.
    line: Vec<u8>,
    /// The previous push ended on `\r`, so a leading `\n` of the next one ends nothing.
    after_cr: bool,
    /// `data:` lines of the event being assembled.
    data: String,
    /// Whether any `data:` line was seen for the event being assembled.
    has_data: bool,
    /// `event:` field of the event being assembled.
    event: String,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_limit(MAX_STREAM_BYTES)
    }
}

impl SseParser {
    /// A parser at the start of a stream, with the [`MAX_STREAM_BYTES`] limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser whose lines and event data may hold at most `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            line: Vec::new(),
            after_cr: false,
            data: String::new(),
            has_data: false,
            event: String::new(),
        }
    }

    /// Feeds the next bytes of the stream, appending every event they complete to `out`.
    /// Fails, buffering nothing more, once a line or an event's data passes the limit.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), TooLong> {
        let mut rest = bytes;
        // An empty push (a network read of nothing) must not forget a pending `\r`: the
        // `\n` that follows it in the next push still belongs to the same line ending.
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.reserve_line(end)?;
            self.line.extend_from_slice(&rest[..end]);
            let terminator = rest[end];
            rest = &rest[end + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out)?;
        }
        self.reserve_line(rest.len())?;
        self.line.extend_from_slice(rest);
        Ok(())
    }

    fn reserve_line(&self, more: usize) -> Result<(), TooLong> {
        if self.line.len() + more > self.limit {
            return Err(TooLong { limit: self.limit });
        }
        Ok(())
    }

    /// Ends the stream: an unterminated last line and an event missing its blank line are
    /// still delivered, since servers that close early rarely send the final terminator.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), TooLong> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out)?;
        }
        self.dispatch(out);
        self.after_cr = false;
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), TooLong> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(TooLong { limit: self.limit });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => value.clone_into(&mut self.event),
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        if std::mem::take(&mut self.has_data) {
            out.push(SseEvent {
                event,
                data: std::mem::take(&mut self.data),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            parser.push(piece, &mut out).unwrap();
        }
        parser.finish(&mut out).unwrap();
        out
    }

    fn event(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.to_owned(),
            data: data.to_owned(),
        }
    }

    const STREAM: &str = ": keep-alive\r\n\
                          event: greeting\r\n\
                          data: {\"text\":\"héllo ✓\"}\r\n\
                          \r\n\
                          data:first\n\
                          data:  second\n\
                          id: 7\n\
                          retry: 100\n\
                          \n\
                          \n\
                          data: lone cr\r\r\
                          event: empty-data\n\
                          data\n\
                          \n\
                          event: no-data\n\
                          \n\
                          data: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            event("greeting", "{\"text\":\"héllo ✓\"}"),
            event("", "first\n second"),
            event("", "lone cr"),
            event("empty-data", ""),
            event("", "[DONE]"),
        ]
    }

    #[test]
    fn parses_fields_comments_and_line_endings() {
        assert_eq!(parse_in_pieces(&[STREAM.as_bytes()]), expected());
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        for split in 0..=bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(parse_in_pieces(&[a, b]), expected(), "split at {split}");
        }
        let single_bytes: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_in_pieces(&single_bytes), expected());
    }

    #[test]
    fn crlf_split_between_cr_and_lf_ends_one_line_only() {
        let events = parse_in_pieces(&[b"data: a\r", b"\n", b"\r", b"\ndata: b\n\n"]);
        assert_eq!(events, vec![event("", "a"), event("", "b")]);
    }

    #[test]
    fn finish_delivers_an_unterminated_event() {
        assert_eq!(
            parse_in_pieces(&[b"data: {\"a\":1}\n\ndata: [DONE]"]),
            vec![event("", "{\"a\":1}"), event("", "[DONE]")]
        );
        assert_eq!(parse_in_pieces(&[b""]), Vec::<SseEvent>::new());
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let events = parse_in_pieces(&[b"data: a\xffb\n\n"]);
        assert_eq!(events, vec![event("", "a\u{fffd}b")]);
    }

    #[test]
    fn a_line_without_newline_stops_at_the_limit() {
        let mut parser = SseParser::with_limit(64);
        let mut out = Vec::new();
        parser.push(b"data: {\"a\":1}\n\n", &mut out).unwrap();
        assert_eq!(out, vec![event("", "{\"a\":1}")]);
        // 60 bytes fit; the next piece of the same line does not, and nothing more is kept.
        parser.push(&[b'x'; 60], &mut out).unwrap();
        assert_eq!(
            parser.push(&[b'x'; 8], &mut out),
            Err(TooLong { limit: 64 })
        );
        assert!(parser.line.len() <= 64);
        // In one piece, however large.
        let mut parser = SseParser::with_limit(64);
        let huge = vec![b'y'; 10_000];
        assert_eq!(parser.push(&huge, &mut out), Err(TooLong { limit: 64 }));
        assert!(parser.line.capacity() <= 64, "{}", parser.line.capacity());
    }

    /// Found by the property tests: an empty push between the `\r` and the `\n` of a
    /// `\r\n` took the `\n` for a blank line, splitting the event in two.
    #[test]
    fn an_empty_push_between_cr_and_lf_ends_nothing() {
        let got = parse_in_pieces(&[b"data: a\r", b"", b"\ndata: b\r\n\r\n"]);
        assert_eq!(got, [event("", "a\nb")]);
    }

    #[test]
    fn an_event_of_many_short_data_lines_stops_at_the_limit() {
        let mut parser = SseParser::with_limit(64);
        let mut out = Vec::new();
        let line = b"data: 0123456789\n";
        let mut result = Ok(());
        for _ in 0..10 {
            result = parser.push(line, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(TooLong { limit: 64 }));
        assert!(out.is_empty());
        assert!(parser.data.len() <= 64);
        // Lines and events under the limit are fine however many there are.
        let mut parser = SseParser::with_limit(64);
        for _ in 0..1000 {
            parser
                .push(b"data: 0123456789\n\n: keep-alive\n", &mut out)
                .unwrap();
        }
        assert_eq!(out.len(), 1000);
    }
}

/// Property tests, and the helpers the stream decoders' properties share.
/// `PROPTEST_CASES` sets the number of cases (256 by default).
#[cfg(test)]
pub(crate) mod properties {
    use super::*;
    use proptest::prelude::*;

    /// `bytes` cut into pieces of the given sizes (cycled; a 0 is an empty push, and sizes
    /// that are all 0 give one piece).
    pub(crate) fn pieces<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = bytes;
        let mut i = 0;
        while !rest.is_empty() {
            let size = match sizes.get(i % sizes.len().max(1)) {
                Some(&size) if sizes.iter().any(|&s| s > 0) => size,
                _ => rest.len(),
            };
            let (piece, tail) = rest.split_at(size.min(rest.len()));
            out.push(piece);
            rest = tail;
            i += 1;
        }
        out
    }

    /// Piece sizes for [`pieces`]: mostly small, so cuts land inside lines, `\r\n` pairs and
    /// multi-byte characters.
    pub(crate) fn sizes() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(
            prop_oneof![1 => Just(0usize), 4 => 1usize..8, 1 => 8usize..200],
            1..16,
        )
    }

    /// Everything `bytes` gives, pushed in `pieces`, and the first error if any.
    fn parse(limit: usize, pieces: &[&[u8]]) -> (Vec<SseEvent>, Result<(), TooLong>) {
        let mut parser = SseParser::with_limit(limit);
        let mut out = Vec::new();
        for piece in pieces {
            let pushed = parser.push(piece, &mut out);
            // Bounded whatever the input: nothing held is over the limit.
            assert!(parser.line.len() <= limit && parser.data.len() <= limit);
            if pushed.is_err() {
                return (out, pushed);
            }
        }
        let finished = parser.finish(&mut out);
        (out, finished)
    }

    /// One event as a server may write it.
    #[derive(Debug, Clone)]
    struct Written {
        event: String,
        data: Vec<String>,
        comment: bool,
    }

    fn field_text() -> impl Strategy<Value = String> {
        // Anything but line breaks; a leading space is data (only one is dropped).
        "[^\r\n]{0,24}"
    }

    fn written() -> impl Strategy<Value = Written> {
        (
            prop_oneof![Just(String::new()), "[a-z_]{1,12}"],
            prop::collection::vec(field_text(), 1..4),
            any::<bool>(),
        )
            .prop_map(|(event, data, comment)| Written {
                event,
                data,
                comment,
            })
    }

    fn encode(events: &[Written], ending: &str) -> Vec<u8> {
        let mut out = String::new();
        for e in events {
            if e.comment {
                out.push_str(&format!(": keep-alive{ending}"));
            }
            if !e.event.is_empty() {
                out.push_str(&format!("event: {}{ending}", e.event));
            }
            for line in &e.data {
                out.push_str(&format!("data: {line}{ending}"));
            }
            out.push_str(ending);
        }
        out.into_bytes()
    }

    proptest! {
        /// A valid stream gives the same events however it is cut, with any line ending.
        #[test]
        fn a_valid_stream_parses_the_same_in_any_pieces(
            events in prop::collection::vec(written(), 0..12),
            ending in prop::sample::select(vec!["\n", "\r\n", "\r"]),
            sizes in sizes(),
        ) {
            let bytes = encode(&events, ending);
            let (got, result) = parse(MAX_STREAM_BYTES, &pieces(&bytes, &sizes));
            prop_assert_eq!(result, Ok(()));
            let expected: Vec<SseEvent> = events
                .iter()
                .map(|e| SseEvent { event: e.event.clone(), data: e.data.join("\n") })
                .collect();
            prop_assert_eq!(got, expected);
        }

        /// Arbitrary bytes never panic, stay within the limit, and give the same events and
        /// the same verdict whole or in pieces.
        #[test]
        fn arbitrary_bytes_are_bounded_and_cut_independent(
            bytes in prop::collection::vec(
                prop_oneof![
                    2 => prop::sample::select(b"\r\n:data event ".to_vec()),
                    1 => any::<u8>(),
                ],
                0..600,
            ),
            limit in 1usize..128,
            sizes in sizes(),
        ) {
            let whole = parse(limit, &[&bytes]);
            let cut = parse(limit, &pieces(&bytes, &sizes));
            prop_assert_eq!(cut, whole);
        }
    }
}

//! Keeping outputs small: a head + tail capture for streams, and text from cut bytes.
//!
//! Cuts never split a UTF-8 character, and where a line break is near the cut, the cut is
//! moved to it so the model sees whole lines.

use std::collections::VecDeque;

/// How far from a cut we look for a line break to cut at instead.
const LINE_SLACK: usize = 1024;

/// Keeps the first `head_cap` and the last `tail_cap` bytes of a stream, and counts the rest.
#[derive(Debug)]
pub(crate) struct HeadTail {
    head: Vec<u8>,
    head_cap: usize,
    /// A ring of the latest bytes once the head is full.
    tail: VecDeque<u8>,
    tail_cap: usize,
    total: u64,
}

impl HeadTail {
    /// An empty capture keeping at most `head_cap + tail_cap` bytes.
    pub(crate) fn new(head_cap: usize, tail_cap: usize) -> Self {
        Self {
            head: Vec::new(),
            head_cap,
            tail: VecDeque::new(),
            tail_cap,
            total: 0,
        }
    }

    /// Adds the next bytes of the stream.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let take = self
            .head_cap
            .saturating_sub(self.head.len())
            .min(chunk.len());
        self.head.extend_from_slice(&chunk[..take]);
        let rest = &chunk[take..];
        if rest.len() >= self.tail_cap {
            self.tail.clear();
            self.tail.extend(&rest[rest.len() - self.tail_cap..]);
        } else {
            let overflow = (self.tail.len() + rest.len()).saturating_sub(self.tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(rest);
        }
    }

    /// How many bytes the stream had in all.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Whether bytes were left out between head and tail.
    pub(crate) fn is_cut(&self) -> bool {
        self.total > (self.head.len() + self.tail.len()) as u64
    }

    /// The text kept; when bytes were left out, `marker(omitted)` is put on its own line where
    /// they were. Invalid UTF-8 shows as U+FFFD.
    pub(crate) fn render(&self, marker: impl FnOnce(u64) -> String) -> String {
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        if !self.is_cut() {
            let mut all = self.head.clone();
            all.extend_from_slice(&tail);
            return String::from_utf8_lossy(&all).into_owned();
        }
        let head = &self.head[..head_end(&self.head)];
        let tail = &tail[tail_start(&tail)..];
        let omitted = self.total - (head.len() + tail.len()) as u64;
        let mut text = String::from_utf8_lossy(head).into_owned();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&marker(omitted));
        text.push('\n');
        text.push_str(&String::from_utf8_lossy(tail));
        text
    }
}

/// Where to end a head: after its last line break if one is near the end, else before any
/// incomplete UTF-8 character.
fn head_end(bytes: &[u8]) -> usize {
    let window = bytes.len().saturating_sub(LINE_SLACK);
    if let Some(i) = bytes[window..].iter().rposition(|b| *b == b'\n') {
        return window + i + 1;
    }
    let len = bytes.len();
    let Some(start) = (len.saturating_sub(4)..len)
        .rev()
        .find(|&i| !is_continuation(bytes[i]))
    else {
        return len;
    };
    if start + utf8_width(bytes[start]) > len {
        start
    } else {
        len
    }
}

/// Where to start a tail: after its first line break if one is near the start, else at the
/// first byte that starts a UTF-8 character.
fn tail_start(bytes: &[u8]) -> usize {
    let window = bytes.len().min(LINE_SLACK);
    if let Some(i) = bytes[..window].iter().position(|b| *b == b'\n') {
        return i + 1;
    }
    bytes
        .iter()
        .take(4)
        .position(|b| !is_continuation(*b))
        .unwrap_or(0)
}

/// Whether `byte` continues a UTF-8 sequence (rather than starting one).
fn is_continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

/// The length of the UTF-8 sequence that `lead` starts (1 for ASCII and stray bytes).
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// `bytes` as text, without an incomplete character at the end (which a byte cut can leave);
/// other invalid UTF-8 shows as U+FFFD.
pub(crate) fn lossy_prefix(bytes: &[u8]) -> String {
    let end = match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => bytes.len(),
    };
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_everything_under_the_limit() {
        let mut capture = HeadTail::new(8, 8);
        capture.push(b"hello ");
        capture.push(b"world");
        assert!(!capture.is_cut());
        assert_eq!(capture.render(|_| unreachable!()), "hello world");
    }

    #[test]
    fn cap_keeps_head_and_tail_of_long_streams() {
        let mut capture = HeadTail::new(2000, 2000);
        for i in 0..10_000 {
            capture.push(format!("line {i}\n").as_bytes());
        }
        assert!(capture.is_cut());
        let text = capture.render(|n| format!("[{n} omitted]"));
        assert!(text.starts_with("line 0\nline 1\n"), "{text}");
        assert!(text.ends_with("line 9999\n"));
        // Cut at line breaks: every kept line is whole.
        for line in text.lines().filter(|l| !l.starts_with('[')) {
            assert!(line.starts_with("line "), "{line:?}");
        }
        let kept: usize = text
            .lines()
            .filter(|l| !l.starts_with('['))
            .map(|l| l.len() + 1)
            .sum();
        let omitted: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix('[')?.strip_suffix(" omitted]")?.parse().ok())
            .unwrap();
        assert_eq!(kept as u64 + omitted, capture.total());
    }

    #[test]
    fn cap_never_splits_a_character() {
        let mut capture = HeadTail::new(5, 5);
        capture.push("ééééééééé".as_bytes());
        let text = capture.render(|_| "[cut]".to_owned());
        assert!(!text.contains('\u{FFFD}'), "{text}");
        assert_eq!(text, "éé\n[cut]\néé");
    }

    #[test]
    fn cap_lossy_prefix_drops_a_cut_character() {
        let bytes = "aé".as_bytes();
        assert_eq!(lossy_prefix(&bytes[..2]), "a");
        assert_eq!(lossy_prefix(bytes), "aé");
        assert_eq!(lossy_prefix(b"a\xffb"), "a\u{FFFD}b");
    }
}

//! Reading lines without ever holding more than a bounded prefix of one.
//!
//! A minified file or a log with a gigabyte-long line must not blow the worker's memory budget,
//! so [`BoundedLines`] keeps at most `max` bytes of each line and only counts the rest.

use std::io::{self, BufRead};

/// How many leading bytes are checked for NUL when deciding whether a file is binary.
pub(crate) const SNIFF_LEN: usize = 8192;

/// Whether `start` (the first bytes of a file) looks binary: it holds a NUL byte.
pub(crate) fn looks_binary(start: &[u8]) -> bool {
    start.contains(&0)
}

/// A line reader that keeps at most `max` bytes of each line.
#[derive(Debug)]
pub(crate) struct BoundedLines<R> {
    reader: R,
    max: usize,
}

impl<R: BufRead> BoundedLines<R> {
    /// Reads lines from `reader`, keeping up to `max` bytes of each.
    pub(crate) fn new(reader: R, max: usize) -> Self {
        Self { reader, max }
    }

    /// Reads the next line into `buf` (without its `\n`, and without a `\r` before it when the
    /// line was kept whole). Returns the line's full length in bytes, or `None` at the end.
    pub(crate) fn next_line(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        buf.clear();
        let mut full = 0;
        let mut any = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                break;
            }
            any = true;
            let newline = available.iter().position(|b| *b == b'\n');
            let part = &available[..newline.unwrap_or(available.len())];
            let room = self.max.saturating_sub(buf.len()).min(part.len());
            buf.extend_from_slice(&part[..room]);
            full += part.len();
            let used = part.len() + usize::from(newline.is_some());
            self.reader.consume(used);
            if newline.is_some() {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        if full == buf.len() && buf.last() == Some(&b'\r') {
            buf.pop();
            full -= 1;
        }
        Ok(Some(full))
    }

    /// Counts the lines left, without keeping any of them.
    pub(crate) fn count_rest(&mut self) -> io::Result<u64> {
        let mut count = 0;
        let mut pending = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                break;
            }
            let newlines = available.iter().filter(|b| **b == b'\n').count();
            count += newlines as u64;
            pending = available.last() != Some(&b'\n');
            let len = available.len();
            self.reader.consume(len);
        }
        Ok(count + u64::from(pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_counted() {
        let text = format!("short\r\n{}\nlast", "x".repeat(100));
        let mut lines = BoundedLines::new(io::BufReader::with_capacity(16, text.as_bytes()), 10);
        let mut buf = Vec::new();
        assert_eq!(lines.next_line(&mut buf).unwrap(), Some(5));
        assert_eq!(buf, b"short");
        assert_eq!(lines.next_line(&mut buf).unwrap(), Some(100));
        assert_eq!(buf, b"xxxxxxxxxx");
        assert_eq!(lines.next_line(&mut buf).unwrap(), Some(4));
        assert_eq!(buf, b"last");
        assert_eq!(lines.next_line(&mut buf).unwrap(), None);
    }

    #[test]
    fn lines_count_the_rest() {
        let mut lines = BoundedLines::new("a\nb\nc".as_bytes(), 10);
        let mut buf = Vec::new();
        lines.next_line(&mut buf).unwrap();
        assert_eq!(lines.count_rest().unwrap(), 2);
        let mut lines = BoundedLines::new("a\nb\n".as_bytes(), 10);
        assert_eq!(lines.count_rest().unwrap(), 2);
    }
}

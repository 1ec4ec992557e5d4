//! `read {path, offset?, limit?}`: a text file's lines, numbered, with caps on lines and bytes.
//!
//! Output lines are `{number:>6}\t{text}`, numbered from 1. At most `limit` lines (default
//! 2000), 2000 bytes per line and about 50 KB in all are shown; a closing note says which lines
//! were shown and which `offset` continues. Files are streamed, never loaded whole, so a huge
//! file costs time, not memory. Binary files (a NUL byte in the first 8 KiB), directories and
//! special files are refused with a message saying what to use instead. The file is opened
//! beneath the worktree's fd (see [`super::beneath`]), following only symlinks that stay
//! inside; `.git` may be read (only write and edit refuse it).

use std::fs::File;
use std::io::{BufRead, BufReader};

use rustix::fs::OFlags;
use rustix::io::Errno;
use serde_json::json;

use super::args::Args;
use super::beneath::Tree;
use super::blocking::{Stop, run_blocking};
use super::cap::lossy_prefix;
use super::context::ToolContext;
use super::lines::{BoundedLines, SNIFF_LEN, looks_binary};
use super::outcome::{ToolError, ToolOutput};
use super::path::{Confined, confine, open_error, open_tree};
use crate::conversation::ToolSpec;

/// Lines shown when the model gives no `limit`.
const DEFAULT_LIMIT: u64 = 2000;
/// Bytes of one line shown; the rest of the line is replaced by a note.
const MAX_LINE: usize = 2000;
/// Bytes of output, about; the last line that fits ends the output.
const MAX_OUTPUT: usize = 50 * 1024;
/// Files up to this size are read to the end to say how many lines they have.
const COUNT_LINES_UP_TO: u64 = 32 * 1024 * 1024;

/// The schema offered to the model.
pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: std::borrow::Cow::Borrowed("read"),
        description: std::borrow::Cow::Borrowed(
            "Read a text file. Lines are numbered from 1 as `number<TAB>text`. Shows at \
            most `limit` lines (default 2000) starting at line `offset` (default 1), lines \
            longer than 2000 bytes are cut, and output stops at about 50 KB; a note at the end \
            says which offset continues. Paths are relative to the worktree root (or absolute \
            inside it).",
        ),
        parameters: json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "The file to read."},
                "offset": {"type": "integer", "minimum": 1,
                           "description": "The first line to show, counting from 1."},
                "limit": {"type": "integer", "minimum": 1,
                          "description": "How many lines to show at most (default 2000)."}
            },
            "required": ["path"],
            "additionalProperties": false
        }),
    }
}

/// Reads the file the arguments name.
pub(crate) async fn run(
    ctx: &ToolContext,
    args: &serde_json::Value,
) -> Result<ToolOutput, ToolError> {
    let args = Args::new(args)?;
    let path = args.required_str("path")?;
    // Some models count from 0; line 0 can only mean the first line.
    let offset = args.optional_count("offset")?.unwrap_or(1).max(1);
    let limit = match args.optional_count("limit")? {
        Some(0) => return Err(ToolError::invalid("limit", "must be at least 1")),
        Some(limit) => limit,
        None => DEFAULT_LIMIT,
    };
    let target = confine(&ctx.root, path)?;
    let root = ctx.root.clone();
    run_blocking(move |stop| {
        let tree = open_tree(&root)?;
        read_lines(&tree, &target, offset, limit, stop)
    })
    .await
}

/// Which lines were shown and why the output ended.
struct Shown {
    last: u64,
    lines_cut: bool,
    hit_byte_cap: bool,
    more_follow: bool,
}

/// Shows `limit` lines of the file from line `offset`, within the byte cap.
fn read_lines(
    tree: &Tree,
    target: &Confined,
    offset: u64,
    limit: u64,
    stop: &Stop,
) -> Result<ToolOutput, ToolError> {
    let given = &target.given;
    let file = open_file(tree, target)?;
    let meta = file
        .metadata()
        .map_err(|e| ToolError::io("read", given, e))?;
    if meta.is_dir() {
        return Err(ToolError::Failed(format!(
            "`{given}` is a directory; use ls to list it"
        )));
    }
    if !meta.is_file() {
        return Err(not_a_file(given));
    }
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let start = reader
        .fill_buf()
        .map_err(|e| ToolError::io("read", given, e))?;
    if start.is_empty() {
        return Ok(ToolOutput::success(format!("(`{given}` is empty)"), false));
    }
    if looks_binary(&start[..start.len().min(SNIFF_LEN)]) {
        return Err(ToolError::Failed(format!(
            "`{given}` is a binary file ({} bytes); read shows text only, use bash (e.g. \
             `xxd {given} | head -50`) to inspect it",
            meta.len()
        )));
    }

    let mut lines = BoundedLines::new(reader, MAX_LINE);
    let mut buf = Vec::new();
    let mut out = String::new();
    let mut seen = 0u64;
    let mut shown = Shown {
        last: 0,
        lines_cut: false,
        hit_byte_cap: false,
        more_follow: false,
    };
    while let Some(full) = lines
        .next_line(&mut buf)
        .map_err(|e| ToolError::io("read", given, e))?
    {
        if stop.requested() {
            return Err(ToolError::Failed("the read was cancelled".to_owned()));
        }
        seen += 1;
        if seen < offset {
            continue;
        }
        if seen >= offset.saturating_add(limit) {
            shown.more_follow = true;
            break;
        }
        let mut entry = format!("{seen:>6}\t{}", lossy_prefix(&buf));
        if full > buf.len() {
            shown.lines_cut = true;
            entry.push_str(&format!(" [... line cut, {} more bytes]", full - buf.len()));
        }
        entry.push('\n');
        if out.len() + entry.len() > MAX_OUTPUT && shown.last > 0 {
            shown.hit_byte_cap = true;
            shown.more_follow = true;
            break;
        }
        out.push_str(&entry);
        shown.last = seen;
    }
    if shown.last == 0 {
        return Err(ToolError::Failed(format!(
            "offset {offset} is past the end of `{given}`, which has {seen} lines"
        )));
    }
    let total = if !shown.more_follow {
        Some(seen)
    } else if meta.len() <= COUNT_LINES_UP_TO {
        lines.count_rest().ok().map(|rest| seen + rest)
    } else {
        None
    };
    if shown.more_follow {
        out.push_str(&continuation_note(offset, &shown, total));
    }
    Ok(ToolOutput::success(
        out,
        shown.more_follow || shown.lines_cut,
    ))
}

/// Opens the file `target` names, beneath the root, following only symlinks that stay inside.
/// `O_NONBLOCK` so that a FIFO cannot hang the call before it is refused.
fn open_file(tree: &Tree, target: &Confined) -> Result<File, ToolError> {
    let given = &target.given;
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = tree.open_rel(&target.rel, flags).map_err(|e| {
        open_error(tree.path(), given, e, |e| {
            match e.raw_os_error().map(Errno::from_raw_os_error) {
                Some(Errno::NOENT) => ToolError::Failed(format!("`{given}` does not exist")),
                Some(Errno::NXIO) => not_a_file(given),
                _ => ToolError::io("open", given, e),
            }
        })
    })?;
    Ok(File::from(fd))
}

/// The refusal for FIFOs, sockets and devices.
fn not_a_file(given: &str) -> ToolError {
    ToolError::Failed(format!(
        "`{given}` is not a regular file (a FIFO, socket or device); read only reads files"
    ))
}

/// The closing note when lines remain: which lines were shown and how to go on.
fn continuation_note(offset: u64, shown: &Shown, total: Option<u64>) -> String {
    let of = match total {
        Some(total) => format!(" of {total}"),
        None => " (more follow)".to_owned(),
    };
    let why = if shown.hit_byte_cap {
        "output capped at 50 KB: "
    } else {
        ""
    };
    format!(
        "[{why}showing lines {offset}-{}{of}; call read with offset={} to continue]\n",
        shown.last,
        shown.last + 1
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::tools::testkit::Fixture;

    #[tokio::test]
    async fn read_numbers_lines_and_pages() {
        let fx = Fixture::new();
        let text: String = (1..=10).map(|i| format!("line {i}\n")).collect();
        fx.file("a.txt", &text);
        let out = fx.run("read", json!({"path": "a.txt"})).await;
        assert!(out.ok && !out.truncated, "{out:?}");
        assert!(
            out.output.starts_with("     1\tline 1\n     2\tline 2\n"),
            "{}",
            out.output
        );
        assert!(out.output.ends_with("    10\tline 10\n"));

        let out = fx
            .run("read", json!({"path": "a.txt", "offset": 3, "limit": 2}))
            .await;
        assert!(out.ok && out.truncated);
        assert_eq!(
            out.output,
            "     3\tline 3\n     4\tline 4\n[showing lines 3-4 of 10; call read with offset=5 to continue]\n"
        );

        let out = fx.run("read", json!({"path": "a.txt", "offset": 11})).await;
        assert!(!out.ok);
        assert!(out.output.contains("past the end"), "{}", out.output);
    }

    #[tokio::test]
    async fn read_caps_lines_and_bytes() {
        let fx = Fixture::new();
        let text = format!("{}\nshort\n", "x".repeat(5000));
        fx.file("long.txt", &text);
        let out = fx.run("read", json!({"path": "long.txt"})).await;
        assert!(out.ok && out.truncated);
        assert!(
            out.output.contains("[... line cut, 3000 more bytes]"),
            "{}",
            out.output
        );
        assert!(out.output.contains("     2\tshort"));

        let text: String = (1..=5000).map(|i| format!("{i:0>60}\n")).collect();
        fx.file("big.txt", &text);
        let out = fx.run("read", json!({"path": "big.txt"})).await;
        assert!(out.ok && out.truncated);
        assert!(out.output.len() <= 51 * 1024, "{}", out.output.len());
        let note = out.output.lines().last().unwrap();
        assert!(
            note.starts_with("[output capped at 50 KB: showing lines 1-"),
            "{note}"
        );
        assert!(note.contains("of 5000; call read with offset="), "{note}");
    }

    #[tokio::test]
    async fn read_refuses_binaries_directories_and_missing_files() {
        let fx = Fixture::new();
        std::fs::write(fx.root.join("bin"), b"ELF\0\x01\x02").unwrap();
        std::fs::create_dir(fx.root.join("dir")).unwrap();
        let out = fx.run("read", json!({"path": "bin"})).await;
        assert!(
            !out.ok && out.output.contains("binary file"),
            "{}",
            out.output
        );
        let out = fx.run("read", json!({"path": "dir"})).await;
        assert!(
            !out.ok && out.output.contains("is a directory"),
            "{}",
            out.output
        );
        let out = fx.run("read", json!({"path": "nope.txt"})).await;
        assert!(
            !out.ok && out.output.contains("`nope.txt` does not exist"),
            "{}",
            out.output
        );
        let out = fx.run("read", json!({})).await;
        assert_eq!(out.output, "missing required argument `path`");
        let out = fx.run("read", json!({"path": "a", "limit": 0})).await;
        assert_eq!(out.output, "argument `limit` must be at least 1");
    }
}

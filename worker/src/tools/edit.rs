//! `edit {path, old_text, new_text}`: replace the one exact occurrence of a text in a file.
//!
//! Exactness is the point: the model must quote the file as it is, and a text that appears
//! twice is refused (with the count) rather than guessed at. The file is found, read and
//! replaced through directory fds beneath the worktree, atomically like `write` does, keeping
//! its permissions; `.git` is refused.

use std::io::Read as _;

use serde_json::json;

use super::args::Args;
use super::blocking::run_blocking;
use super::context::ToolContext;
use super::outcome::{ToolError, ToolOutput};
use super::path::{Confined, confine_for_change, open_error, open_tree};
use super::replace::{Parents, Place, locate, replace};
use crate::conversation::ToolSpec;

/// Files larger than this are not edited in memory (the worker keeps a small footprint).
const MAX_EDIT_BYTES: u64 = 8 * 1024 * 1024;

/// The schema offered to the model.
pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: std::borrow::Cow::Borrowed("edit"),
        description: std::borrow::Cow::Borrowed(
            "Replace text in a file. `old_text` must match the file exactly \
            (including whitespace and indentation) and occur exactly once; include enough \
            surrounding lines to make it unique. `new_text` replaces it (it may be empty to \
            delete). Paths are relative to the worktree root (or absolute inside it); `.git` \
            cannot be edited.",
        ),
        parameters: json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "The file to edit."},
                "old_text": {"type": "string", "description": "The exact text to replace."},
                "new_text": {"type": "string", "description": "The text to put in its place."}
            },
            "required": ["path", "old_text", "new_text"],
            "additionalProperties": false
        }),
    }
}

/// Edits the file the arguments name.
pub(crate) async fn run(
    ctx: &ToolContext,
    args: &serde_json::Value,
) -> Result<ToolOutput, ToolError> {
    let args = Args::new(args)?;
    let path = args.required_str("path")?;
    let old_text = args.required_str("old_text")?.to_owned();
    let new_text = args.required_str("new_text")?.to_owned();
    if old_text.is_empty() {
        return Err(ToolError::invalid(
            "old_text",
            "is empty; quote the text to replace (use write to create or overwrite a file)",
        ));
    }
    if old_text == new_text {
        return Err(ToolError::invalid(
            "new_text",
            "is the same as old_text; nothing would change",
        ));
    }
    let target = confine_for_change(&ctx.root, path)?;
    let root = ctx.root.clone();
    run_blocking(move |_| {
        let tree = open_tree(&root)?;
        let missing = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => ToolError::Failed(format!(
                "`{}` does not exist; use write to create it",
                target.given
            )),
            _ => ToolError::io("open", &target.given, e),
        };
        let place = match locate(&tree, &target, Parents::Existing) {
            Err(ToolError::Io { source, .. }) => {
                return Err(open_error(tree.path(), &target.given, source, missing));
            }
            other => other?,
        };
        edit_file(&place, &target, &old_text, &new_text)
    })
    .await
}

/// Replaces the one occurrence of `old_text` in the file, or says why it cannot.
fn edit_file(
    place: &Place,
    target: &Confined,
    old_text: &str,
    new_text: &str,
) -> Result<ToolOutput, ToolError> {
    let given = &target.given;
    let content = load(place, given)?;
    let count = content.matches(old_text).count();
    if count == 0 {
        let mut message = format!(
            "old_text was not found in `{given}`; it must match the file exactly, including \
             whitespace and indentation (read the file and copy the text)"
        );
        if content.contains("\r\n") && old_text.contains('\n') && !old_text.contains('\r') {
            message.push_str("; note that this file uses CRLF (\\r\\n) line endings");
        }
        return Err(ToolError::Failed(message));
    }
    if count > 1 {
        return Err(ToolError::Failed(format!(
            "old_text was found {count} times in `{given}`; it must occur exactly once, so \
             include more surrounding lines to make it unique"
        )));
    }
    let Some(at) = content.find(old_text) else {
        return Err(ToolError::Failed(format!(
            "old_text was not found in `{given}`"
        )));
    };
    let mut edited = String::with_capacity(content.len() - old_text.len() + new_text.len());
    edited.push_str(&content[..at]);
    edited.push_str(new_text);
    edited.push_str(&content[at + old_text.len()..]);
    replace(place, edited.as_bytes(), given)?;
    let line = content[..at].matches('\n').count() + 1;
    Ok(ToolOutput::success(
        format!("edited `{given}`: replaced 1 occurrence starting at line {line}"),
        false,
    ))
}

/// The whole file as text, refusing what cannot be edited as text.
fn load(place: &Place, given: &str) -> Result<String, ToolError> {
    let file = place.open_read().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            ToolError::Failed(format!("`{given}` does not exist; use write to create it"))
        }
        _ if e.raw_os_error() == Some(libc::ENXIO) => not_a_file(given),
        _ => ToolError::io("read", given, e),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| ToolError::io("read", given, e))?;
    if !meta.is_file() {
        return Err(not_a_file(given));
    }
    if meta.len() > MAX_EDIT_BYTES {
        return Err(ToolError::Failed(format!(
            "`{given}` is {} bytes, more than edit handles ({MAX_EDIT_BYTES}); use bash (e.g. \
             sed) for large files",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    (&file)
        .take(MAX_EDIT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ToolError::io("read", given, e))?;
    String::from_utf8(bytes).map_err(|_| {
        ToolError::Failed(format!(
            "`{given}` is not UTF-8 text; edit changes text files only"
        ))
    })
}

/// The refusal for directories, FIFOs, sockets and devices.
fn not_a_file(given: &str) -> ToolError {
    ToolError::Failed(format!(
        "`{given}` is not a regular file; edit changes files"
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::tools::testkit::Fixture;

    #[tokio::test]
    async fn edit_replaces_a_unique_match() {
        let fx = Fixture::new();
        let file = fx.file("a.rs", "fn a() {}\nfn b() {}\nfn c() {}\n");
        let out = fx
            .run(
                "edit",
                json!({"path": "a.rs", "old_text": "fn b() {}", "new_text": "fn bee() {}"}),
            )
            .await;
        assert!(out.ok, "{out:?}");
        assert_eq!(
            out.output,
            "edited `a.rs`: replaced 1 occurrence starting at line 2"
        );
        assert_eq!(
            std::fs::read_to_string(file).unwrap(),
            "fn a() {}\nfn bee() {}\nfn c() {}\n"
        );
    }

    #[tokio::test]
    async fn edit_refuses_missing_text() {
        let fx = Fixture::new();
        let file = fx.file("a.rs", "one\r\ntwo\r\n");
        let out = fx
            .run(
                "edit",
                json!({"path": "a.rs", "old_text": "one\ntwo", "new_text": "x"}),
            )
            .await;
        assert!(!out.ok);
        assert!(
            out.output.starts_with("old_text was not found in `a.rs`"),
            "{}",
            out.output
        );
        assert!(out.output.contains("CRLF"), "{}", out.output);
        assert_eq!(std::fs::read_to_string(file).unwrap(), "one\r\ntwo\r\n");
    }

    #[tokio::test]
    async fn edit_refuses_ambiguous_text_and_says_how_often_it_occurs() {
        let fx = Fixture::new();
        let file = fx.file("a.rs", "x = 1;\nx = 1;\nx = 1;\n");
        let out = fx
            .run(
                "edit",
                json!({"path": "a.rs", "old_text": "x = 1;", "new_text": "x = 2;"}),
            )
            .await;
        assert!(!out.ok);
        assert!(out.output.contains("found 3 times"), "{}", out.output);
        assert_eq!(
            std::fs::read_to_string(file).unwrap(),
            "x = 1;\nx = 1;\nx = 1;\n"
        );
    }

    #[tokio::test]
    async fn edit_refuses_empty_or_identical_text_and_missing_files() {
        let fx = Fixture::new();
        fx.file("a.rs", "abc");
        let out = fx
            .run(
                "edit",
                json!({"path": "a.rs", "old_text": "", "new_text": "x"}),
            )
            .await;
        assert!(
            !out.ok && out.output.starts_with("argument `old_text` is empty"),
            "{}",
            out.output
        );
        let out = fx
            .run(
                "edit",
                json!({"path": "a.rs", "old_text": "b", "new_text": "b"}),
            )
            .await;
        assert!(
            !out.ok && out.output.contains("same as old_text"),
            "{}",
            out.output
        );
        let out = fx
            .run(
                "edit",
                json!({"path": "nope.rs", "old_text": "b", "new_text": "c"}),
            )
            .await;
        assert!(
            !out.ok && out.output.contains("does not exist"),
            "{}",
            out.output
        );
        let out = fx
            .run("edit", json!({"path": "a.rs", "old_text": "b"}))
            .await;
        assert_eq!(out.output, "missing required argument `new_text`");
    }
}

//! `ls {path?}`: the entries of a directory, sorted by name.
//!
//! Directories end with `/`, symlinks show as `name -> target` (with `/` when they lead to a
//! directory). Everything is listed, hidden entries included (`.git` too: looking is fine); at
//! most 1000 entries are shown. The directory is opened and read through an fd beneath the
//! worktree, so what is listed is what was checked.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{Dir, FileType, OFlags};
use serde_json::json;

use super::args::Args;
use super::beneath::{DIR_PATH, Tree, entry_type};
use super::blocking::run_blocking;
use super::context::ToolContext;
use super::outcome::{ToolError, ToolOutput};
use super::path::{Confined, confine, open_error, open_tree};
use crate::conversation::ToolSpec;

/// Entries shown at most; a note gives the number left out.
const MAX_ENTRIES: usize = 1000;

/// The schema offered to the model.
pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: std::borrow::Cow::Borrowed("ls"),
        description: std::borrow::Cow::Borrowed(
            "List a directory (default: the worktree root), sorted by name. \
            Directories end with `/`, symlinks show as `name -> target`. Paths are relative to \
            the worktree root (or absolute inside it).",
        ),
        parameters: json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "The directory to list (default `.`)."}
            },
            "additionalProperties": false
        }),
    }
}

/// Lists the directory the arguments name.
pub(crate) async fn run(
    ctx: &ToolContext,
    args: &serde_json::Value,
) -> Result<ToolOutput, ToolError> {
    let args = Args::new(args)?;
    let path = args
        .optional_str("path")?
        .filter(|p| !p.is_empty())
        .unwrap_or(".");
    let target = confine(&ctx.root, path)?;
    let root = ctx.root.clone();
    run_blocking(move |_| {
        let tree = open_tree(&root)?;
        list(&tree, &target)
    })
    .await
}

/// The listing of the directory at `target`.
fn list(tree: &Tree, target: &Confined) -> Result<ToolOutput, ToolError> {
    let given = &target.given;
    let dir = tree
        .open_rel(&target.rel, OFlags::RDONLY | OFlags::DIRECTORY)
        .map_err(|e| {
            open_error(tree.path(), given, e, |e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    ToolError::Failed(format!("`{given}` does not exist"))
                }
                std::io::ErrorKind::NotADirectory => {
                    ToolError::Failed(format!("`{given}` is a file, not a directory; use read"))
                }
                _ => ToolError::io("list", given, e),
            })
        })?;
    let mut entries = Dir::read_from(&dir).map_err(|e| ToolError::io("list", given, e.into()))?;
    let mut names: Vec<(OsString, String)> = Vec::new();
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(|e| ToolError::io("list", given, e.into()))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::Unknown => entry_type(dir.as_fd(), name).unwrap_or(FileType::Unknown),
            kind => kind,
        };
        let shown = describe(tree, &dir, &target.rel, name, kind);
        names.push((name.to_owned(), shown));
    }
    if names.is_empty() {
        return Ok(ToolOutput::success(format!("(`{given}` is empty)"), false));
    }
    names.sort();
    let total = names.len();
    let mut out: String = names
        .iter()
        .take(MAX_ENTRIES)
        .map(|(_, shown)| format!("{shown}\n"))
        .collect();
    let cut = total > MAX_ENTRIES;
    if cut {
        out.push_str(&format!(
            "[... {} more entries not shown ({total} in all); use bash (e.g. `ls {given} | \
             grep PATTERN`) to find one]\n",
            total - MAX_ENTRIES
        ));
    }
    Ok(ToolOutput::success(out, cut))
}

/// One entry as listed: `name`, `name/`, or `name -> target` (`name/ -> target` for a link to
/// a directory; the slash only when the link leads to a directory inside the worktree).
fn describe(tree: &Tree, dir: &OwnedFd, rel: &Path, name: &OsStr, kind: FileType) -> String {
    let shown = name.to_string_lossy();
    match kind {
        FileType::Directory => format!("{shown}/"),
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(dir, name, Vec::new())
                .map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned())
                .unwrap_or_else(|_| "?".to_owned());
            let slash = if tree.open_rel(&rel.join(name), DIR_PATH).is_ok() {
                "/"
            } else {
                ""
            };
            format!("{shown}{slash} -> {target}")
        }
        _ => shown.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::tools::testkit::Fixture;

    #[tokio::test]
    async fn ls_sorts_and_marks_entries() {
        let fx = Fixture::new();
        fx.file("b.txt", "");
        fx.file("a/x.txt", "");
        fx.file(".hidden", "");
        fx.symlink("a", "link_dir");
        fx.symlink("b.txt", "link_file");
        let out = fx.run("ls", json!({})).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(
            out.output,
            ".hidden\na/\nb.txt\nlink_dir/ -> a\nlink_file -> b.txt\n"
        );
        let out = fx.run("ls", json!({"path": "a"})).await;
        assert_eq!(out.output, "x.txt\n");
    }

    #[tokio::test]
    async fn ls_caps_long_listings_and_refuses_files() {
        let fx = Fixture::new();
        for i in 0..1005 {
            fx.file(&format!("many/f{i:04}"), "");
        }
        let out = fx.run("ls", json!({"path": "many"})).await;
        assert!(out.ok && out.truncated);
        assert_eq!(out.output.lines().count(), 1001);
        assert!(
            out.output
                .contains("5 more entries not shown (1005 in all)"),
            "{}",
            out.output
        );
        let out = fx.run("ls", json!({"path": "many/f0001"})).await;
        assert!(
            !out.ok && out.output.contains("not a directory"),
            "{}",
            out.output
        );
    }
}

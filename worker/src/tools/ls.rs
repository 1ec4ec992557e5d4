//! `ls {path?}`: the entries of a directory, sorted by name.
//!
//! Directories end with `/`, symlinks show as `name -> target` (with `/` when they lead to a
//! directory). Everything is listed, hidden entries included; at most 1000 entries are shown.

use serde_json::json;

use super::args::Args;
use super::blocking::run_blocking;
use super::context::ToolContext;
use super::outcome::{ToolError, ToolOutput};
use super::path::{Confined, resolve};
use crate::conversation::ToolSpec;

/// Entries shown at most; a note gives the number left out.
const MAX_ENTRIES: usize = 1000;

/// The schema offered to the model.
pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: "ls",
        description: "List a directory (default: the worktree root), sorted by name. \
            Directories end with `/`, symlinks show as `name -> target`. Paths are relative to \
            the worktree root (or absolute inside it).",
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
    let target = resolve(&ctx.root, path)?;
    run_blocking(move |_| list(&target)).await
}

/// The listing of the directory at `target`.
fn list(target: &Confined) -> Result<ToolOutput, ToolError> {
    let given = &target.given;
    let entries = std::fs::read_dir(&target.real).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ToolError::Failed(format!("`{given}` does not exist")),
        std::io::ErrorKind::NotADirectory => {
            ToolError::Failed(format!("`{given}` is a file, not a directory; use read"))
        }
        _ => ToolError::io("list", given, e),
    })?;
    let mut names: Vec<(std::ffi::OsString, String)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ToolError::io("list", given, e))?;
        let name = entry.file_name();
        let shown = describe(&entry, &name.to_string_lossy());
        names.push((name, shown));
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
/// a directory).
fn describe(entry: &std::fs::DirEntry, name: &str) -> String {
    let Ok(kind) = entry.file_type() else {
        return name.to_owned();
    };
    if kind.is_dir() {
        return format!("{name}/");
    }
    if kind.is_symlink() {
        let target = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".to_owned());
        let slash = if entry.path().is_dir() { "/" } else { "" };
        return format!("{name}{slash} -> {target}");
    }
    name.to_owned()
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

//! `write {path, content}`: create or replace a file, creating its directories.
//!
//! The file is replaced atomically: the content goes to a temp file in the same directory,
//! which is renamed over the target, so a reader (or a crash) sees the old file or the new one,
//! never half of it. An existing file keeps its permission bits (an executable script stays
//! executable). No fsync: these are worktree files the model can rewrite, not kugetsu's own
//! state, and an fsync per edit would cost more than it protects.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use super::args::Args;
use super::blocking::run_blocking;
use super::context::ToolContext;
use super::outcome::{ToolError, ToolOutput};
use super::path::{Confined, resolve};
use crate::conversation::ToolSpec;

/// The schema offered to the model.
pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: "write",
        description: "Create a file or replace its whole content. Missing parent directories \
            are created. To change part of an existing file, prefer edit. Paths are relative \
            to the worktree root (or absolute inside it).",
        parameters: json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "The file to write."},
                "content": {"type": "string", "description": "The complete new content."}
            },
            "required": ["path", "content"],
            "additionalProperties": false
        }),
    }
}

/// Writes the file the arguments name.
pub(crate) async fn run(
    ctx: &ToolContext,
    args: &serde_json::Value,
) -> Result<ToolOutput, ToolError> {
    let args = Args::new(args)?;
    let path = args.required_str("path")?;
    let content = args.required_str("content")?.to_owned();
    let target = resolve(&ctx.root, path)?;
    run_blocking(move |_| {
        let before = existing_file_len(&target)?;
        if let Some(parent) = target.real.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ToolError::io("create the directories of", &target.given, e))?;
        }
        replace_file(&target, content.as_bytes())?;
        let given = &target.given;
        let bytes = content.len();
        let message = match before {
            None => format!("created `{given}` ({bytes} bytes)"),
            Some(old) => format!("wrote {bytes} bytes to `{given}` (replacing {old} bytes)"),
        };
        Ok(ToolOutput::success(message, false))
    })
    .await
}

/// The size of the regular file at `target`, `None` if nothing is there; anything else there
/// (a directory, a FIFO) is an error.
fn existing_file_len(target: &Confined) -> Result<Option<u64>, ToolError> {
    match std::fs::metadata(&target.real) {
        Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
        Ok(meta) if meta.is_dir() => Err(ToolError::Failed(format!(
            "`{}` is a directory; give the path of a file",
            target.given
        ))),
        Ok(_) => Err(ToolError::Failed(format!(
            "`{}` is not a regular file (a FIFO, socket or device)",
            target.given
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ToolError::io("inspect", &target.given, e)),
    }
}

/// Replaces (or creates) the file at `target.real` with `content`, atomically, keeping the
/// permissions of a file that was there. The parent directory must exist.
pub(crate) fn replace_file(target: &Confined, content: &[u8]) -> Result<(), ToolError> {
    let given = &target.given;
    let Some((dir, name)) = target.real.parent().zip(target.real.file_name()) else {
        return Err(ToolError::Failed(format!("`{given}` is not a file path")));
    };
    let temp = dir.join(format!(
        ".{}.kugetsu-{}.tmp",
        name.to_string_lossy(),
        unique_suffix()
    ));
    let result = write_temp(&temp, content, &target.real)
        .and_then(|()| std::fs::rename(&temp, &target.real));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(ToolError::io("write", given, e));
    }
    Ok(())
}

/// Writes `content` to a new file `temp` with the permissions of `like` (when it exists).
fn write_temp(temp: &Path, content: &[u8], like: &Path) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)?;
    file.write_all(content)?;
    if let Ok(meta) = std::fs::metadata(like) {
        file.set_permissions(meta.permissions())?;
    }
    Ok(())
}

/// A suffix no other temp file of this process (or another worker) uses.
fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::json;

    use crate::tools::testkit::Fixture;

    #[tokio::test]
    async fn write_creates_directories_and_reports_bytes() {
        let fx = Fixture::new();
        let out = fx
            .run("write", json!({"path": "a/b/c.txt", "content": "hello\n"}))
            .await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.output, "created `a/b/c.txt` (6 bytes)");
        assert_eq!(
            std::fs::read_to_string(fx.root.join("a/b/c.txt")).unwrap(),
            "hello\n"
        );

        let out = fx
            .run("write", json!({"path": "a/b/c.txt", "content": "bye"}))
            .await;
        assert_eq!(
            out.output,
            "wrote 3 bytes to `a/b/c.txt` (replacing 6 bytes)"
        );
        assert_eq!(
            std::fs::read_to_string(fx.root.join("a/b/c.txt")).unwrap(),
            "bye"
        );
        let names: Vec<_> = std::fs::read_dir(fx.root.join("a/b")).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file is left behind");
    }

    #[tokio::test]
    async fn write_keeps_permissions_and_refuses_directories() {
        let fx = Fixture::new();
        let script = fx.file("run.sh", "#!/bin/sh\n");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = fx
            .run(
                "write",
                json!({"path": "run.sh", "content": "#!/bin/sh\necho\n"}),
            )
            .await;
        assert!(out.ok);
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);

        std::fs::create_dir(fx.root.join("d")).unwrap();
        let out = fx.run("write", json!({"path": "d", "content": "x"})).await;
        assert!(
            !out.ok && out.output.contains("is a directory"),
            "{}",
            out.output
        );
        let out = fx.run("write", json!({"path": "x.txt"})).await;
        assert_eq!(out.output, "missing required argument `content`");
    }

    #[tokio::test]
    async fn write_through_an_inside_symlink_writes_its_target() {
        let fx = Fixture::new();
        fx.file("real.txt", "old");
        fx.symlink("real.txt", "alias.txt");
        let out = fx
            .run("write", json!({"path": "alias.txt", "content": "new"}))
            .await;
        assert!(out.ok, "{out:?}");
        assert_eq!(
            std::fs::read_to_string(fx.root.join("real.txt")).unwrap(),
            "new"
        );
        assert!(
            fx.root
                .join("alias.txt")
                .symlink_metadata()
                .unwrap()
                .is_symlink()
        );
    }
}

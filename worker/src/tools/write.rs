//! `write {path, content}`: create or replace a file, creating its directories.
//!
//! The file is replaced atomically (see [`super::replace`]): the content goes to a temp file
//! in the same directory, fsynced and renamed over the target, so a reader (or a crash) sees
//! the old file or the new one, never half of it. An existing file keeps its permission bits
//! (an executable script stays executable). Every directory is opened or created beneath the
//! worktree's fd, never by path, and `.git` is refused.

use serde_json::json;

use super::args::Args;
use super::blocking::run_blocking;
use super::context::ToolContext;
use super::outcome::{ToolError, ToolOutput};
use super::path::{confine_for_change, open_tree};
use super::replace::{Parents, locate, replace};
use crate::conversation::ToolSpec;

/// The schema offered to the model.
pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: std::borrow::Cow::Borrowed("write"),
        description: std::borrow::Cow::Borrowed(
            "Create a file or replace its whole content. Missing parent directories \
            are created. To change part of an existing file, prefer edit. Paths are relative \
            to the worktree root (or absolute inside it); `.git` cannot be written.",
        ),
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
    let target = confine_for_change(&ctx.root, path)?;
    let root = ctx.root.clone();
    run_blocking(move |_| {
        let given = &target.given;
        let tree = open_tree(&root)?;
        let place = locate(&tree, &target, Parents::Create)?;
        let before = match place.kind() {
            Ok(None) => None,
            Ok(Some(rustix::fs::FileType::RegularFile)) => Some(
                rustix::fs::statat(
                    &place.dir,
                    &place.name,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map(|stat| stat.st_size)
                .map_err(|e| ToolError::io("inspect", given, e.into()))?,
            ),
            Ok(Some(rustix::fs::FileType::Directory)) => {
                return Err(ToolError::Failed(format!(
                    "`{given}` is a directory; give the path of a file"
                )));
            }
            Ok(Some(_)) => {
                return Err(ToolError::Failed(format!(
                    "`{given}` is not a regular file (a FIFO, socket or device)"
                )));
            }
            Err(e) => return Err(ToolError::io("inspect", given, e)),
        };
        replace(&place, content.as_bytes(), given)?;
        let bytes = content.len();
        let message = match before {
            None => format!("created `{given}` ({bytes} bytes)"),
            Some(old) => format!("wrote {bytes} bytes to `{given}` (replacing {old} bytes)"),
        };
        Ok(ToolOutput::success(message, false))
    })
    .await
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

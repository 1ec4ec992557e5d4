//! Confinement: turning a model's path into one the tools can open beneath the worktree.
//!
//! Two layers, so that what is checked is what is opened:
//!
//! 1. [`confine`] works on the text alone. The path is joined to the root and normalised
//!    lexically (`.` goes, `..` removes the previous component); if the result is not under
//!    the root (`../x`, `a/../../x`, `/etc/passwd`) it is refused. What remains is a path
//!    relative to the root, with no `..`, that names nothing yet.
//! 2. Every open of that relative path goes through [`super::beneath`]: the kernel (or a
//!    race-free walk) resolves it beneath the root's directory fd, following only symlinks
//!    that stay inside. [`open_error`] turns the kernel's refusals (`EXDEV`, `ELOOP`) into the
//!    [`PathError`]s below. Nothing ever opens a path string that was checked earlier.
//!
//! Absolute symlinks are refused even when they point inside the worktree: beneath the root,
//! the kernel cannot tell where `/` is, and a worktree should hold relative links anyway.
//!
//! The worktree's `.git` (the file of a linked worktree, or the directory of a main checkout)
//! and anything named `.git` below the root is git's data: [`confine_for_change`] refuses
//! such paths for write and edit before anything is touched; `replace` also refuses, by
//! inode, a `.git` reached through symlinks. Reading it (read, ls) is allowed.

use std::io;
use std::path::{Component, Path, PathBuf};

use rustix::io::Errno;

use super::beneath::Tree;
use super::outcome::ToolError;

/// Why a path was refused. Each message names the path as the model gave it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PathError {
    /// The path argument is an empty string.
    #[error("the path is empty; give a path relative to the worktree root")]
    Empty,
    /// The path holds a NUL byte, which no file name can contain.
    #[error("path `{path}` contains a NUL byte")]
    Nul {
        /// The path as given, with the NUL escaped.
        path: String,
    },
    /// The path names a place outside the worktree, absolutely or with `..`.
    #[error(
        "path `{path}` is outside the worktree `{root}`; use a path relative to the worktree \
         root or an absolute path inside it"
    )]
    Outside {
        /// The path as given.
        path: String,
        /// The worktree root, to show what "inside" means.
        root: String,
    },
    /// Resolving the path met a symlink that leads out of the worktree (or an absolute one).
    #[error(
        "path `{path}` goes through a symlink that leads outside the worktree `{root}`; only \
         relative symlinks that stay inside the worktree are followed"
    )]
    ThroughSymlink {
        /// The path as given.
        path: String,
        /// The worktree root.
        root: String,
    },
    /// Symlinks refer to each other in a loop, the chain is too long, or a `/proc` magic link.
    #[error("path `{path}` has too many levels of symlinks")]
    SymlinkLoop {
        /// The path as given.
        path: String,
    },
    /// The path is the worktree's `.git` or inside it.
    #[error(
        "path `{path}` is inside `.git`, which holds git's own data; write and edit never \
         change it (read and ls may look at it; use git through bash to change the repository)"
    )]
    Git {
        /// The path as given.
        path: String,
    },
}

/// A path checked, by its text, to name something under the worktree root.
#[derive(Debug, Clone)]
pub(crate) struct Confined {
    /// The path relative to the root, normalised, without `.` or `..`; `.` for the root.
    pub(crate) rel: PathBuf,
    /// The path as the model gave it, for messages.
    pub(crate) given: String,
}

impl Confined {
    /// Whether this is the root itself.
    pub(crate) fn is_root(&self) -> bool {
        self.rel == Path::new(".")
    }
}

/// Checks `given` against the canonical `root` by its text, refusing anything that leaves it.
pub(crate) fn confine(root: &Path, given: &str) -> Result<Confined, PathError> {
    if given.is_empty() {
        return Err(PathError::Empty);
    }
    if given.contains('\0') {
        return Err(PathError::Nul {
            path: given.replace('\0', "\\0"),
        });
    }
    let lexical = normalize(&root.join(given));
    let inside = lexical.strip_prefix(root).map_err(|_| PathError::Outside {
        path: given.to_owned(),
        root: root.display().to_string(),
    })?;
    let rel = if inside.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        inside.to_path_buf()
    };
    Ok(Confined {
        rel,
        given: given.to_owned(),
    })
}

/// [`confine`] for a tool that changes files: also refuses any path with a `.git` component.
pub(crate) fn confine_for_change(root: &Path, given: &str) -> Result<Confined, PathError> {
    let target = confine(root, given)?;
    if names_git(&target.rel) {
        return Err(PathError::Git { path: target.given });
    }
    Ok(target)
}

/// Whether some component of `path` is `.git`.
pub(crate) fn names_git(path: &Path) -> bool {
    path.components()
        .any(|c| matches!(c, Component::Normal(name) if name == ".git"))
}

/// What an error from opening `target` beneath `root` means: leaving the root and symlink
/// loops become the [`PathError`] refusals; anything else is left to `other`.
pub(crate) fn open_error(
    root: &Path,
    given: &str,
    error: io::Error,
    other: impl FnOnce(io::Error) -> ToolError,
) -> ToolError {
    match error.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::XDEV) => PathError::ThroughSymlink {
            path: given.to_owned(),
            root: root.display().to_string(),
        }
        .into(),
        Some(Errno::LOOP) => PathError::SymlinkLoop {
            path: given.to_owned(),
        }
        .into(),
        _ => other(error),
    }
}

/// Opens the worktree root for one tool call.
pub(crate) fn open_tree(root: &Path) -> Result<Tree, ToolError> {
    Tree::open(root).map_err(|e| ToolError::io("open the worktree", &root.display().to_string(), e))
}

/// `path` relative to `root` when it is inside it, else absolute; for messages and listings.
pub(crate) fn shown(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".to_owned(),
        Ok(rel) => rel.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

/// Removes `.` and resolves `..` textually (`..` at `/` stays at `/`).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::Normal(_) => {
                out.push(component.as_os_str());
            }
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::testkit::Fixture;

    #[test]
    fn paths_inside_become_relative() {
        let fx = Fixture::new();
        let root = &fx.root;
        let rel = |given: &str| confine(root, given).unwrap().rel;
        assert_eq!(rel("src/a.rs"), Path::new("src/a.rs"));
        assert_eq!(rel("./src/../src/a.rs"), Path::new("src/a.rs"));
        assert_eq!(rel("."), Path::new("."));
        assert_eq!(rel("a/.."), Path::new("."));
        let abs = root.join("src/a.rs");
        assert_eq!(rel(abs.to_str().unwrap()), Path::new("src/a.rs"));
        assert_eq!(rel(root.to_str().unwrap()), Path::new("."));
    }

    #[test]
    fn paths_leaving_the_root_are_refused_by_their_text() {
        let fx = Fixture::new();
        let root = &fx.root;
        let outside_file = fx.outside.join("secret.txt");
        for given in [
            "../x",
            "a/../../x",
            "..",
            outside_file.to_str().unwrap(),
            "/etc/passwd",
        ] {
            let err = confine(root, given).unwrap_err();
            assert!(matches!(err, PathError::Outside { .. }), "{given}: {err}");
            assert!(err.to_string().contains(given), "{err}");
        }
        assert!(matches!(confine(root, ""), Err(PathError::Empty)));
        assert!(matches!(confine(root, "a\0b"), Err(PathError::Nul { .. })));
    }

    #[test]
    fn git_paths_are_refused_for_changes() {
        let fx = Fixture::new();
        let root = &fx.root;
        let git_config = root.join(".git/config");
        for given in [
            ".git",
            ".git/config",
            "./.git/hooks/pre-commit",
            "sub/../.git",
            "sub/.git",
            git_config.to_str().unwrap(),
        ] {
            let err = confine_for_change(root, given).unwrap_err();
            assert!(matches!(err, PathError::Git { .. }), "{given}: {err}");
            assert!(err.to_string().contains(&format!("`{given}`")), "{err}");
            assert!(confine(root, given).is_ok(), "{given} may be read");
        }
        assert!(confine_for_change(root, ".gitignore").is_ok());
        assert!(confine_for_change(root, "a/.github/x").is_ok());
    }
}

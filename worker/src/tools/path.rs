//! Confinement: the one resolver every tool uses to turn a model's path into a real one.
//!
//! A path is relative to the worktree root or absolute inside it. [`resolve`] returns the real
//! location it names, with every symlink followed, and refuses (touching nothing) any path that
//! would end up outside the root:
//!
//! 1. Join to the root and normalise lexically: `.` goes, `..` removes the previous component.
//!    If the result is not under the root (`../x`, `a/../../x`, `/etc/passwd`), refuse.
//! 2. Walk the rest one component at a time from the canonical root, like `realpath`: a
//!    symlink is replaced by its target (absolute targets restart from `/`, relative ones from
//!    the link's directory, a `..` in a target goes to the parent of the already-real prefix).
//!    The first component that does not exist ends the walk; what follows it is appended as is
//!    and must hold no `..` (we cannot know where it would lead).
//! 3. The real path must be under the root. Dangling symlinks are followed too, so a write to a
//!    link pointing at a missing file outside the root is refused like any other escape.
//!
//! Tools then operate on the real path, never on the path the model gave, so what was checked is
//! what is opened. A concurrent change between check and use (only the model's own bash
//! commands could make one, and bash is not confined anyway) is out of scope.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// How many symlinks one resolution may follow before it is called a loop (Linux's limit).
const MAX_SYMLINKS: usize = 40;

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
    /// The path goes through a symlink that leads out of the worktree.
    #[error(
        "path `{path}` goes through the symlink `{link}` -> `{target}`, which leads outside the \
         worktree"
    )]
    ThroughSymlink {
        /// The path as given.
        path: String,
        /// The symlink, relative to the root when it is inside it.
        link: String,
        /// Where the symlink points, as stored in it.
        target: String,
    },
    /// A symlink leads to a missing directory followed by `..`.
    #[error("path `{path}` cannot be resolved: it leads through a missing directory and then `..`")]
    Unresolvable {
        /// The path as given.
        path: String,
    },
    /// Symlinks refer to each other in a loop, or the chain is too long.
    #[error("path `{path}` has too many levels of symlinks")]
    SymlinkLoop {
        /// The path as given.
        path: String,
    },
    /// Looking at a component failed (permission denied, not a directory, ...).
    #[error("cannot resolve path `{path}`")]
    Io {
        /// The path as given.
        path: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
}

/// A path checked to be inside the worktree.
#[derive(Debug, Clone)]
pub(crate) struct Confined {
    /// The real location: absolute, symlinks resolved, under the canonical root.
    pub(crate) real: PathBuf,
    /// The path as the model gave it, for messages.
    pub(crate) given: String,
}

/// One step of the walk: a name to enter, or a `..` that came from a symlink target.
enum Step {
    Parent,
    Name(OsString),
}

/// Resolves `given` against the canonical `root`, refusing anything that leaves it.
pub(crate) fn resolve(root: &Path, given: &str) -> Result<Confined, PathError> {
    if given.is_empty() {
        return Err(PathError::Empty);
    }
    if given.contains('\0') {
        return Err(PathError::Nul {
            path: given.replace('\0', "\\0"),
        });
    }
    let outside = || PathError::Outside {
        path: given.to_owned(),
        root: root.display().to_string(),
    };
    let lexical = normalize(&root.join(given));
    let inside = lexical.strip_prefix(root).map_err(|_| outside())?;
    let mut steps: VecDeque<Step> = inside
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(Step::Name(name.to_owned())),
            _ => None,
        })
        .collect();

    let mut real = root.to_path_buf();
    let mut followed = 0;
    let mut last_link: Option<(PathBuf, PathBuf)> = None;
    while let Some(step) = steps.pop_front() {
        let name = match step {
            Step::Parent => {
                // `real` has no symlinks left, so its lexical parent is its real parent.
                real.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let next = real.join(&name);
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(PathError::SymlinkLoop {
                        path: given.to_owned(),
                    });
                }
                let target = std::fs::read_link(&next).map_err(|source| PathError::Io {
                    path: given.to_owned(),
                    source,
                })?;
                if target.is_absolute() {
                    real = PathBuf::from("/");
                }
                for component in target.components().rev() {
                    match component {
                        Component::Normal(part) => steps.push_front(Step::Name(part.to_owned())),
                        Component::ParentDir => steps.push_front(Step::Parent),
                        Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                    }
                }
                last_link = Some((next, target));
            }
            Ok(_) => real = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                real = next;
                for step in steps.drain(..) {
                    match step {
                        Step::Name(part) => real.push(part),
                        Step::Parent => {
                            return Err(PathError::Unresolvable {
                                path: given.to_owned(),
                            });
                        }
                    }
                }
            }
            Err(source) => {
                return Err(PathError::Io {
                    path: given.to_owned(),
                    source,
                });
            }
        }
    }

    if !real.starts_with(root) {
        return Err(match last_link {
            Some((link, target)) => PathError::ThroughSymlink {
                path: given.to_owned(),
                link: shown(root, &link),
                target: target.display().to_string(),
            },
            None => outside(),
        });
    }
    Ok(Confined {
        real,
        given: given.to_owned(),
    })
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
    fn paths_inside_resolve_to_real_locations() {
        let fx = Fixture::new();
        fx.file("src/a.rs", "a");
        fx.symlink("src/a.rs", "alias.rs");
        fx.symlink("src", "srclink");
        let root = &fx.root;
        assert_eq!(
            resolve(root, "src/a.rs").unwrap().real,
            root.join("src/a.rs")
        );
        assert_eq!(
            resolve(root, "./src/../src/a.rs").unwrap().real,
            root.join("src/a.rs")
        );
        assert_eq!(
            resolve(root, "alias.rs").unwrap().real,
            root.join("src/a.rs")
        );
        assert_eq!(
            resolve(root, "srclink/a.rs").unwrap().real,
            root.join("src/a.rs")
        );
        assert_eq!(
            resolve(root, "srclink/new/b.rs").unwrap().real,
            root.join("src/new/b.rs")
        );
        assert_eq!(resolve(root, ".").unwrap().real, *root);
        let abs = root.join("src/a.rs");
        assert_eq!(resolve(root, abs.to_str().unwrap()).unwrap().real, abs);
    }

    #[test]
    fn paths_leaving_the_root_are_refused() {
        let fx = Fixture::new();
        fx.escape_links();
        let root = &fx.root;
        let outside_file = fx.outside.join("secret.txt");
        for given in [
            "../x",
            "a/../../x",
            "..",
            outside_file.to_str().unwrap(),
            "/etc/passwd",
        ] {
            let err = resolve(root, given).unwrap_err();
            assert!(matches!(err, PathError::Outside { .. }), "{given}: {err}");
            assert!(err.to_string().contains(given), "{err}");
        }
        for given in [
            "outdir/secret.txt",
            "outdir/new.txt",
            "outdir/deep/new.txt",
            "outfile",
            "dangling",
            "uplink/x",
            "sub/rel_out/secret.txt",
        ] {
            let err = resolve(root, given).unwrap_err();
            assert!(
                matches!(err, PathError::ThroughSymlink { .. }),
                "{given}: {err}"
            );
            assert!(err.to_string().contains(given), "{err}");
        }
    }

    #[test]
    fn symlink_loops_and_missing_dotdot_are_refused() {
        let fx = Fixture::new();
        fx.symlink("loop_b", "loop_a");
        fx.symlink("loop_a", "loop_b");
        fx.symlink("missing/../x", "weird");
        let root = &fx.root;
        assert!(matches!(
            resolve(root, "loop_a/x"),
            Err(PathError::SymlinkLoop { .. })
        ));
        assert!(matches!(
            resolve(root, "weird"),
            Err(PathError::Unresolvable { .. })
        ));
        assert!(matches!(resolve(root, ""), Err(PathError::Empty)));
    }

    #[test]
    fn a_file_used_as_a_directory_is_an_error() {
        let fx = Fixture::new();
        fx.file("a.txt", "x");
        let err = resolve(&fx.root, "a.txt/b").unwrap_err();
        assert!(matches!(err, PathError::Io { .. }), "{err}");
    }
}

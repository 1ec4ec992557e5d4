//! "Everything but these paths", spelled as an allow-list.
//!
//! Landlock grants access to whole trees and has no "except": a rule on `/` would grant the
//! user's `~/.ssh` too. So to read everything but `D`, grant read on every sibling along the
//! path from the root down to `D` (and, for several denied paths, along each), and only a
//! directory *listing* right on the ancestors themselves. Computed once per task, from the
//! filesystem as it is then: entries created later in an ancestor directory are not readable.
//!
//! Symbolic links among the siblings are granted by their target: a link whose target holds
//! or lies inside a denied path is left out (its target is reached by its real path, if at all).

use std::path::{Path, PathBuf};

/// What [`everything_but`] grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Readable with everything beneath.
    pub read: Vec<PathBuf>,
    /// Ancestors of denied paths: their entries may be listed, not read.
    pub list: Vec<PathBuf>,
}

/// Everything beneath `root` except the `deny` paths (absolute; canonicalized here when they
/// exist, kept as given when they do not, so a secret made later stays denied).
pub fn everything_but(root: &Path, deny: &[PathBuf]) -> AllowList {
    let deny: Vec<PathBuf> = deny
        .iter()
        .map(|d| d.canonicalize().unwrap_or_else(|_| d.clone()))
        .collect();
    let mut out = AllowList::default();
    walk(root, &deny, &mut out);
    out
}

fn walk(dir: &Path, deny: &[PathBuf], out: &mut AllowList) {
    if deny.iter().any(|d| d == dir) {
        return;
    }
    if !deny.iter().any(|d| d.starts_with(dir)) {
        out.read.push(dir.to_path_buf());
        return;
    }
    out.list.push(dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if !is_link {
            walk(&path, deny, out);
            continue;
        }
        // A dangling link grants nothing anyway.
        if let Ok(target) = path.canonicalize() {
            let touches = deny
                .iter()
                .any(|d| d.starts_with(&target) || target.starts_with(d));
            if !touches {
                out.read.push(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "home/u/.ssh",
            "home/u/src",
            "home/v",
            "usr/bin",
            "state/worktrees/a",
        ] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("home/u/.bashrc"), "").unwrap();
        std::os::unix::fs::symlink(dir.path().join("home/u"), dir.path().join("uhome")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("usr/bin"), dir.path().join("bin")).unwrap();
        dir
    }

    fn rel(root: &Path, paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn siblings_along_the_path_are_granted_and_the_denied_paths_are_not() {
        let dir = tree();
        let root = dir.path().canonicalize().unwrap();
        let allow = everything_but(&root, &[root.join("home/u/.ssh"), root.join("state")]);
        assert_eq!(
            rel(&root, &allow.read),
            ["bin", "home/u/.bashrc", "home/u/src", "home/v", "usr"]
        );
        assert_eq!(rel(&root, &allow.list), ["", "home", "home/u"]);
    }

    #[test]
    fn nothing_denied_grants_the_root_and_a_missing_secret_still_splits() {
        let dir = tree();
        let root = dir.path().canonicalize().unwrap();
        assert_eq!(everything_but(&root, &[]).read, std::slice::from_ref(&root));
        let allow = everything_but(&root, &[root.join("home/v/.aws")]);
        assert!(allow.list.contains(&root.join("home/v")));
        assert!(!allow.read.contains(&root.join("home/v")));
        assert!(allow.read.contains(&root.join("home/u")));
    }
}

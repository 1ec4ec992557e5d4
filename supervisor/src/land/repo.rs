//! The git work of landing, on the repository's shared git dir alone (objects and refs,
//! `GIT_DIR` = the common dir, no work tree), through the inert wrapper of
//! [`crate::task::git`]: no hook, filter, fsmonitor or global config ever runs, whatever the
//! shadows wrote. Merging is `merge-tree --write-tree` (in memory, no checkout); a result is
//! written out for a test command by reading blobs, never by `git checkout`.

use std::path::{Path, PathBuf};

use crate::task::git::{Git, Repo, split_z};

/// The repository a task belongs to, addressed by its shared git dir.
#[derive(Debug, Clone)]
pub struct Store {
    common: PathBuf,
}

/// What `merge-tree` made of two trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// They merge cleanly into this tree.
    Clean(String),
    /// These paths conflict.
    Conflict(Vec<String>),
}

/// Who wrote a commit, and what it says, to carry over when it is replayed.
#[derive(Debug, Clone)]
pub struct Authorship {
    pub name: String,
    pub email: String,
    /// ISO 8601.
    pub date: String,
    pub message: String,
}

impl Store {
    /// The store of the repository whose top level is `repo`.
    pub async fn open(repo: &Path) -> Result<Store, String> {
        Ok(Store {
            common: crate::task::git::common_dir(repo).await?,
        })
    }

    /// The shared git dir.
    pub fn common(&self) -> &Path {
        &self.common
    }

    fn git(&self) -> Git<'_> {
        Git::new(Repo::Common(&self.common))
    }

    /// The commit `reference` names, if it names one.
    pub async fn commit_of(&self, reference: &str) -> Option<String> {
        self.git()
            .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .arg_ref(&format!("{reference}^{{commit}}"))
            .run()
            .await
            .ok()
    }

    /// The tree of `commit`.
    pub async fn tree_of(&self, commit: &str) -> Result<String, String> {
        self.git()
            .args(["rev-parse", "--verify", "--end-of-options"])
            .arg_ref(&format!("{commit}^{{tree}}"))
            .run()
            .await
    }

    /// The commits in `base..tip`, oldest first.
    pub async fn commits(&self, base: &str, tip: &str) -> Result<Vec<String>, String> {
        let out = self
            .git()
            .args(["rev-list", "--reverse", "--topo-order", "--end-of-options"])
            .arg_ref(&format!("{base}..{tip}"))
            .run()
            .await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// The best common ancestor of `a` and `b`.
    pub async fn merge_base(&self, a: &str, b: &str) -> Result<String, String> {
        self.git()
            .args(["merge-base"])
            .arg_ref(a)
            .arg_ref(b)
            .run()
            .await
    }

    /// Whether `ancestor` is reachable from `commit`.
    pub async fn is_ancestor(&self, ancestor: &str, commit: &str) -> bool {
        matches!(
            self.git()
                .args(["merge-base", "--is-ancestor"])
                .arg_ref(ancestor)
                .arg_ref(commit)
                .run_status()
                .await,
            Ok((Some(0), _))
        )
    }

    /// Merges the trees `ours` and `theirs` (commits or trees) over `base`, in memory.
    pub async fn merge(&self, base: &str, ours: &str, theirs: &str) -> Result<Merge, String> {
        let (code, out) = self
            .git()
            .args([
                "merge-tree",
                "--write-tree",
                "--name-only",
                "--no-messages",
                "-z",
            ])
            .arg_ref(&format!("--merge-base={base}"))
            .arg_ref(ours)
            .arg_ref(theirs)
            .run_status()
            .await?;
        let mut fields = out.split(|b| *b == 0);
        let tree = fields
            .next()
            .map(|t| String::from_utf8_lossy(t).trim().to_owned())
            .unwrap_or_default();
        match code {
            Some(0) if !tree.is_empty() => Ok(Merge::Clean(tree)),
            Some(1) => {
                let rest: Vec<u8> = fields.collect::<Vec<_>>().join(&0u8);
                Ok(Merge::Conflict(split_z(&rest)))
            }
            _ => Err(format!(
                "git merge-tree failed on {ours} and {theirs} (exit {code:?})"
            )),
        }
    }

    /// Who wrote `commit`, and its message.
    pub async fn authorship(&self, commit: &str) -> Result<Authorship, String> {
        let out = self
            .git()
            .args([
                "log",
                "-1",
                "--no-show-signature",
                "--format=%an%x00%ae%x00%aI%x00%B",
            ])
            .arg_ref(commit)
            .arg_ref("--")
            .run()
            .await?;
        let mut parts = out.splitn(4, '\0');
        let mut next = || parts.next().unwrap_or_default().to_owned();
        Ok(Authorship {
            name: next(),
            email: next(),
            date: next(),
            message: next(),
        })
    }

    /// Makes a commit of `tree` on `parent`, written by `author` (kugetsu when `None`) and
    /// committed by kugetsu.
    pub async fn commit(
        &self,
        tree: &str,
        parent: &str,
        author: Option<&Authorship>,
        message: &str,
    ) -> Result<String, String> {
        let mut git = self
            .git()
            .env("GIT_COMMITTER_NAME", "kugetsu")
            .env("GIT_COMMITTER_EMAIL", "kugetsu@localhost");
        git = match author {
            Some(author) => git
                .env("GIT_AUTHOR_NAME", author.name.clone())
                .env("GIT_AUTHOR_EMAIL", author.email.clone())
                .env("GIT_AUTHOR_DATE", author.date.clone()),
            None => git
                .env("GIT_AUTHOR_NAME", "kugetsu")
                .env("GIT_AUTHOR_EMAIL", "kugetsu@localhost"),
        };
        git.args(["commit-tree"])
            .arg_ref(tree)
            .args(["-p"])
            .arg_ref(parent)
            .stdin(message.as_bytes().to_vec())
            .run()
            .await
    }

    /// Moves `refs/heads/<branch>` from `old` to `new`, only if it still is at `old`.
    pub async fn move_branch(&self, branch: &str, new: &str, old: &str) -> Result<(), String> {
        self.git()
            .args(["update-ref", "--no-deref", "-m", "kugetsu merge"])
            .arg_ref(&format!("refs/heads/{branch}"))
            .arg_ref(new)
            .arg_ref(old)
            .run()
            .await
            .map(drop)
    }

    /// The patch (or, with `stat`, the summary) from `from` to `to` (commits or trees).
    pub async fn diff(&self, from: &str, to: &str, stat: bool) -> Result<String, String> {
        self.git()
            .args([
                "diff-tree",
                "-r",
                "--no-ext-diff",
                "--no-textconv",
                "--no-renames",
                "--no-color",
                if stat { "--stat" } else { "--patch" },
            ])
            .arg_ref(from)
            .arg_ref(to)
            .run()
            .await
    }

    /// The paths that differ between `from` and `to`.
    pub async fn changed_paths(&self, from: &str, to: &str) -> Result<Vec<String>, String> {
        let out = self
            .git()
            .args(["diff-tree", "-r", "--name-only", "--no-renames", "-z"])
            .arg_ref(from)
            .arg_ref(to)
            .run_bytes()
            .await?;
        Ok(split_z(&out))
    }

    /// The working trees that have `refs/heads/<branch>` checked out (by git's records).
    pub async fn checkouts_of(&self, branch: &str) -> Vec<PathBuf> {
        let Ok(out) = self
            .git()
            .args(["worktree", "list", "--porcelain", "-z"])
            .run_bytes()
            .await
        else {
            return Vec::new();
        };
        let wanted = format!("branch refs/heads/{branch}");
        let mut found = Vec::new();
        let mut current: Option<PathBuf> = None;
        for field in out.split(|b| *b == 0) {
            let field = String::from_utf8_lossy(field);
            if let Some(path) = field.strip_prefix("worktree ") {
                current = Some(PathBuf::from(path));
            } else if field == wanted
                && let Some(path) = current.take()
            {
                found.push(path);
            }
        }
        found
    }

    /// Writes the files of `tree` under `dir` (which must be empty): blobs read with
    /// `cat-file`, so no filter or attribute of the tree runs; symbolic links are made as
    /// links, submodules left out.
    pub async fn write_tree(&self, tree: &str, dir: &Path) -> Result<(), String> {
        let listing = self
            .git()
            .args(["ls-tree", "-r", "-z", "--full-tree"])
            .arg_ref(tree)
            .run_bytes()
            .await?;
        let mut entries: Vec<(String, String, PathBuf)> = Vec::new();
        for record in listing.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let Some(tab) = record.iter().position(|b| *b == b'\t') else {
                continue;
            };
            let meta = String::from_utf8_lossy(&record[..tab]).into_owned();
            let path = bytes_path(&record[tab + 1..]);
            let mut meta = meta.split(' ');
            let (Some(mode), Some(kind), Some(id)) = (meta.next(), meta.next(), meta.next()) else {
                continue;
            };
            let safe = path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(n) if n != ".git"));
            if kind == "blob" && safe {
                entries.push((mode.to_owned(), id.to_owned(), path));
            }
        }
        // One `cat-file --batch` for every blob: `<id> blob <size>\n<content>\n` each.
        let mut ids = Vec::new();
        for (_, id, _) in &entries {
            ids.extend_from_slice(id.as_bytes());
            ids.push(b'\n');
        }
        let batch = self
            .git()
            .args(["cat-file", "--batch"])
            .stdin(ids)
            .run_bytes()
            .await?;
        let mut rest: &[u8] = &batch;
        for (mode, _, path) in entries {
            let header_end = rest
                .iter()
                .position(|b| *b == b'\n')
                .ok_or("git cat-file --batch ended early")?;
            let header = String::from_utf8_lossy(&rest[..header_end]).into_owned();
            let size: usize = header
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("git cat-file --batch said {header:?}"))?;
            let start = header_end + 1;
            let content = rest
                .get(start..start + size)
                .ok_or("git cat-file --batch ended early")?;
            rest = rest.get(start + size + 1..).unwrap_or_default();
            let target = dir.join(&path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            let written = if mode == "120000" {
                std::os::unix::fs::symlink(bytes_path(content), &target)
            } else {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::write(&target, content).and_then(|()| {
                    let bits = if mode == "100755" { 0o755 } else { 0o644 };
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(bits))
                })
            };
            written.map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        }
        Ok(())
    }
}

fn bytes_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::process::Command;

    use super::*;

    /// A fresh repository under the system temp dir, with git's own CLI for the setup.
    fn repo(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kugetsu-land-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        sh(&dir, &["init", "-q", "-b", "main"]);
        dir
    }

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A tree of `(mode, path, content)` entries, all at the top level.
    fn tree(dir: &Path, entries: &[(&str, &str, &str)]) -> String {
        let mut listing = String::new();
        for (mode, path, content) in entries {
            let file = dir.join(".blob");
            std::fs::write(&file, content).unwrap();
            let id = sh(
                dir,
                &["hash-object", "-w", "--no-filters", file.to_str().unwrap()],
            );
            listing.push_str(&format!("{mode} blob {id}\t{path}\n"));
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '%s' \"$0\" | git -C '{}' mktree",
                dir.display()
            ))
            .arg(listing)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[tokio::test]
    async fn merges_report_conflicting_paths_and_trees_are_written_without_git() {
        let dir = repo("merge");
        let store = Store {
            common: dir.join(".git"),
        };
        let base = tree(
            &dir,
            &[
                ("100644", "a.txt", "one\ntwo\n"),
                ("100644", "b.txt", "b\n"),
            ],
        );
        let ours = tree(
            &dir,
            &[
                ("100644", "a.txt", "one\nTWO\n"),
                ("100644", "b.txt", "b\n"),
            ],
        );
        let theirs = tree(
            &dir,
            &[
                ("100644", "a.txt", "one\ndeux\n"),
                ("100644", "b.txt", "B\n"),
            ],
        );
        let other = tree(
            &dir,
            &[
                ("100644", "a.txt", "one\ntwo\n"),
                ("100644", "b.txt", "B\n"),
            ],
        );
        assert_eq!(
            store.merge(&base, &ours, &theirs).await.unwrap(),
            Merge::Conflict(vec!["a.txt".to_owned()])
        );
        let Merge::Clean(merged) = store.merge(&base, &ours, &other).await.unwrap() else {
            panic!("disjoint changes merge");
        };
        assert_eq!(
            store.changed_paths(&base, &merged).await.unwrap(),
            vec!["a.txt".to_owned(), "b.txt".to_owned()]
        );

        // Written out from blobs: content, the executable bit and links as they are.
        let odd = tree(
            &dir,
            &[
                ("100644", "a.txt", "one\nTWO\n"),
                ("100755", "run.sh", "#!/bin/sh\n"),
                ("120000", "link", "/etc/passwd"),
            ],
        );
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        store.write_tree(&odd, &out).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("a.txt")).unwrap(),
            "one\nTWO\n"
        );
        let mode = std::fs::metadata(out.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(out.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

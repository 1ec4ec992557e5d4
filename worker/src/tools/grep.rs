//! `grep {pattern, path?, glob?}`: regex search over the worktree, honouring `.gitignore`.
//!
//! The walk uses the `ignore` crate the way git sees the tree: `.gitignore` and `.ignore`
//! files from the worktree root down apply (without requiring a `.git` directory, since a
//! worktree has a `.git` file), nothing above the root does, `.git` itself is skipped, hidden
//! files are searched. When `path` is below the root, the ignore files of the directories
//! between the root and `path` are applied too; `path` itself is always searched, like
//! ripgrep does with an explicit path. Symlinks are never followed (one could lead out of the
//! worktree), binary files (a NUL in the first 8 KiB) are skipped.
//!
//! The walk itself lists directories by path (the `ignore` crate has no fd API), so a
//! directory swapped for a symlink mid-walk could have its outside entries listed; but every
//! file is opened beneath the worktree's fd with `O_NOFOLLOW` (see [`super::beneath`]), so no
//! line from outside is ever searched or shown. `path` is opened the same way, and the walk
//! starts from the real directory that fd names.
//!
//! Output is `path:line: text`, paths relative to the root, sorted by path; at most 200
//! matches and about 40 KB are shown, matched lines are cut at 500 bytes.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ignore::gitignore::Gitignore;
use ignore::overrides::{Override, OverrideBuilder};
use ignore::{Match, WalkBuilder};
use regex::bytes::{Regex, RegexBuilder};
use rustix::fs::OFlags;
use serde_json::json;

use super::args::Args;
use super::beneath::Tree;
use super::blocking::{Stop, run_blocking};
use super::cap::lossy_prefix;
use super::context::ToolContext;
use super::lines::{BoundedLines, SNIFF_LEN, looks_binary};
use super::outcome::{ToolError, ToolOutput};
use super::path::{Confined, confine, open_error, open_tree, shown};
use crate::conversation::ToolSpec;

/// Matches shown at most.
const MAX_MATCHES: usize = 200;
/// Output bytes, about.
const MAX_OUTPUT: usize = 40 * 1024;
/// Bytes of a matched line shown.
const MAX_SHOWN_LINE: usize = 500;
/// Bytes of a line searched; the rest of a longer line is not.
const MAX_SEARCHED_LINE: usize = 64 * 1024;
/// Memory the compiled regex may use.
const REGEX_SIZE_LIMIT: usize = 8 * 1024 * 1024;

/// The schema offered to the model.
pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: std::borrow::Cow::Borrowed("grep"),
        description: std::borrow::Cow::Borrowed(
            "Search file contents with a regular expression (Rust regex syntax; \
            `(?i)` for case-insensitive) under the worktree root or `path`. Skips files \
            ignored by .gitignore, the .git directory and binary files. `glob` limits the \
            files searched, e.g. `*.rs` or `src/**/*.ts`. Prints `path:line: text`, at most \
            200 matches.",
        ),
        parameters: json!({
            "type": "object",
            "properties": {
                "pattern": {"type": "string", "description": "The regular expression."},
                "path": {"type": "string",
                         "description": "A directory or file to search (default: the worktree root)."},
                "glob": {"type": "string",
                         "description": "Only search files whose path matches this glob."}
            },
            "required": ["pattern"],
            "additionalProperties": false
        }),
    }
}

/// Searches as the arguments say.
pub(crate) async fn run(
    ctx: &ToolContext,
    args: &serde_json::Value,
) -> Result<ToolOutput, ToolError> {
    let args = Args::new(args)?;
    let pattern = args.required_str("pattern")?;
    if pattern.is_empty() {
        return Err(ToolError::invalid("pattern", "is empty"));
    }
    let regex = RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| ToolError::invalid("pattern", format!("is not a valid regex: {e}")))?;
    let overrides = match args.optional_str("glob")?.filter(|g| !g.is_empty()) {
        Some(glob) => Some(glob_filter(&ctx.root, glob)?),
        None => None,
    };
    let path = args
        .optional_str("path")?
        .filter(|p| !p.is_empty())
        .unwrap_or(".");
    let target = confine(&ctx.root, path)?;
    let root = ctx.root.clone();
    let pattern = pattern.to_owned();
    run_blocking(move |stop| {
        let tree = open_tree(&root)?;
        let start = real_start(&tree, &target)?;
        let search = Search {
            tree,
            start,
            regex,
            overrides,
        };
        let found = search.run(stop)?;
        Ok(found.into_output(&pattern, &target.given))
    })
    .await
}

/// The real path of what `target` names, found through an fd opened beneath the root: with
/// symlinks resolved, so that matches are shown by their real paths.
fn real_start(tree: &Tree, target: &Confined) -> Result<PathBuf, ToolError> {
    let given = &target.given;
    let fd = tree.open_rel(&target.rel, OFlags::PATH).map_err(|e| {
        open_error(tree.path(), given, e, |e| match e.kind() {
            std::io::ErrorKind::NotFound => ToolError::Failed(format!("`{given}` does not exist")),
            _ => ToolError::io("search", given, e),
        })
    })?;
    // The kernel's name for the fd; without /proc, the path as given (still inside: every
    // file is opened beneath the root anyway, only names may show a symlink).
    let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap_or_else(|_| tree.path().join(&target.rel));
    if !real.starts_with(tree.path()) {
        return Err(ToolError::Failed(format!(
            "`{given}` moved outside the worktree while it was opened"
        )));
    }
    Ok(real)
}

/// The `glob` argument as an override whitelist, globs relative to the root.
fn glob_filter(root: &Path, glob: &str) -> Result<Override, ToolError> {
    let mut builder = OverrideBuilder::new(root);
    builder
        .add(glob)
        .map_err(|e| ToolError::invalid("glob", format!("is not a valid glob: {e}")))?;
    builder
        .build()
        .map_err(|e| ToolError::invalid("glob", format!("is not a valid glob: {e}")))
}

/// One search, ready to run on a blocking thread.
struct Search {
    tree: Tree,
    start: PathBuf,
    regex: Regex,
    overrides: Option<Override>,
}

/// What a search found.
#[derive(Default)]
struct Found {
    text: String,
    matches: usize,
    stopped_early: bool,
    binary_skipped: usize,
}

impl Found {
    fn is_full(&self) -> bool {
        self.matches >= MAX_MATCHES || self.text.len() >= MAX_OUTPUT
    }

    fn into_output(mut self, pattern: &str, path: &str) -> ToolOutput {
        if self.matches == 0 {
            let mut text = format!("no matches for `{pattern}` in `{path}`");
            match self.binary_skipped {
                0 => {}
                1 => text.push_str(" (1 binary file skipped)"),
                n => text.push_str(&format!(" ({n} binary files skipped)")),
            }
            return ToolOutput::success(text, false);
        }
        if self.stopped_early {
            self.text.push_str(&format!(
                "[stopped after {} matches; narrow the pattern, path or glob to see the rest]\n",
                self.matches
            ));
        }
        ToolOutput::success(self.text, self.stopped_early)
    }
}

impl Search {
    fn run(&self, stop: &Stop) -> Result<Found, ToolError> {
        let inherited = inherited_ignores(self.tree.path(), &self.start);
        let mut builder = WalkBuilder::new(&self.start);
        builder
            .hidden(false)
            .parents(false)
            .require_git(false)
            .follow_links(false)
            .sort_by_file_name(|a, b| a.cmp(b))
            .filter_entry(move |entry| {
                entry.file_name() != ".git"
                    && (entry.depth() == 0
                        || !is_ignored(
                            &inherited,
                            entry.path(),
                            entry.file_type().is_some_and(|t| t.is_dir()),
                        ))
            });
        if let Some(overrides) = &self.overrides {
            builder.overrides(overrides.clone());
        }
        let mut found = Found::default();
        for entry in builder.build() {
            if stop.requested() {
                return Err(ToolError::Failed("the search was cancelled".to_owned()));
            }
            // Unreadable directories and files are skipped, as `grep -s` would.
            let Ok(entry) = entry else { continue };
            if entry.path_is_symlink() || !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let Ok(inside) = entry.path().strip_prefix(self.tree.path()) else {
                continue;
            };
            let rel = shown(self.tree.path(), entry.path());
            let _ = self.search_file(inside, &rel, &mut found, stop);
            if found.is_full() {
                found.stopped_early = true;
                break;
            }
        }
        Ok(found)
    }

    /// Adds the matches of file `inside` (relative to the root) to `found`.
    fn search_file(
        &self,
        inside: &Path,
        rel: &str,
        found: &mut Found,
        stop: &Stop,
    ) -> std::io::Result<()> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
        let file = File::from(self.tree.open_rel(inside, flags)?);
        if !file.metadata()?.is_file() {
            return Ok(());
        }
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let start = reader.fill_buf()?;
        if looks_binary(&start[..start.len().min(SNIFF_LEN)]) {
            found.binary_skipped += 1;
            return Ok(());
        }
        let mut lines = BoundedLines::new(reader, MAX_SEARCHED_LINE);
        let mut buf = Vec::new();
        let mut number = 0u64;
        while let Some(full) = lines.next_line(&mut buf)? {
            number += 1;
            if number.is_multiple_of(4096) && stop.requested() {
                return Ok(());
            }
            if !self.regex.is_match(&buf) {
                continue;
            }
            let keep = &buf[..buf.len().min(MAX_SHOWN_LINE)];
            let text = lossy_prefix(keep);
            found.text.push_str(&format!("{rel}:{number}: {text}"));
            if full > keep.len() {
                found.text.push_str(&format!(
                    " [... line cut, {} more bytes]",
                    full - keep.len()
                ));
            }
            found.text.push('\n');
            found.matches += 1;
            if found.is_full() {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The `.gitignore` and `.ignore` files of the directories from `root` down to `start`'s
/// parent, outermost first: a walk from `start` would not read them itself.
fn inherited_ignores(root: &Path, start: &Path) -> Vec<Gitignore> {
    let mut out = Vec::new();
    let Ok(rel) = start.strip_prefix(root) else {
        return out;
    };
    let mut dir = root.to_path_buf();
    for component in rel.components() {
        for name in [".gitignore", ".ignore"] {
            let file = dir.join(name);
            if file.is_file() {
                let (matcher, _partial_error) = Gitignore::new(&file);
                out.push(matcher);
            }
        }
        dir.push(component);
    }
    out
}

/// Whether the innermost ignore file with an opinion on `path` ignores it.
fn is_ignored(ignores: &[Gitignore], path: &Path, is_dir: bool) -> bool {
    for matcher in ignores.iter().rev() {
        match matcher.matched(path, is_dir) {
            Match::Ignore(_) => return true,
            Match::Whitelist(_) => return false,
            Match::None => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::tools::testkit::Fixture;

    fn tree() -> Fixture {
        let fx = Fixture::new();
        fx.file(".gitignore", "target/\n*.log\n");
        fx.file("src/main.rs", "fn main() {\n    needle();\n}\n");
        fx.file("src/lib.rs", "pub fn needle() {}\n");
        fx.file("src/notes.txt", "a needle in text\n");
        fx.file("target/debug/out.rs", "needle in build output\n");
        fx.file("run.log", "needle in a log\n");
        fx.file(".git/HEAD", "needle in git\n");
        fx.file(".github/ci.yml", "needle: hidden but tracked\n");
        std::fs::write(fx.root.join("src/blob.bin"), b"needle\0binary").unwrap();
        fx
    }

    #[tokio::test]
    async fn grep_respects_gitignore_and_skips_git_and_binaries() {
        let fx = tree();
        let out = fx.run("grep", json!({"pattern": "needle"})).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(
            out.output,
            ".github/ci.yml:1: needle: hidden but tracked\n\
             src/lib.rs:1: pub fn needle() {}\n\
             src/main.rs:2:     needle();\n\
             src/notes.txt:1: a needle in text\n"
        );
    }

    #[tokio::test]
    async fn grep_applies_ignore_files_above_a_subdirectory_path() {
        let fx = tree();
        fx.file("src/gen/x.log", "needle in a nested log\n");
        fx.file("src/gen/y.rs", "needle nested\n");
        let out = fx
            .run("grep", json!({"pattern": "needle", "path": "src/gen"}))
            .await;
        assert_eq!(out.output, "src/gen/y.rs:1: needle nested\n");
        // An explicitly named path is searched even when it is ignored.
        let out = fx
            .run("grep", json!({"pattern": "needle", "path": "target"}))
            .await;
        assert_eq!(
            out.output,
            "target/debug/out.rs:1: needle in build output\n"
        );
    }

    #[tokio::test]
    async fn grep_filters_by_glob() {
        let fx = tree();
        let out = fx
            .run("grep", json!({"pattern": "needle", "glob": "*.rs"}))
            .await;
        assert_eq!(
            out.output,
            "src/lib.rs:1: pub fn needle() {}\nsrc/main.rs:2:     needle();\n"
        );
        let out = fx
            .run("grep", json!({"pattern": "needle", "glob": "*.py"}))
            .await;
        assert!(out.ok);
        assert_eq!(out.output, "no matches for `needle` in `.`");
        let out = fx
            .run("grep", json!({"pattern": "absent", "path": "src"}))
            .await;
        assert_eq!(
            out.output,
            "no matches for `absent` in `src` (1 binary file skipped)"
        );
    }

    #[tokio::test]
    async fn grep_reports_invalid_regex_and_glob() {
        let fx = tree();
        let out = fx.run("grep", json!({"pattern": "fn (main"})).await;
        assert!(!out.ok);
        assert!(
            out.output
                .starts_with("argument `pattern` is not a valid regex"),
            "{}",
            out.output
        );
        let out = fx.run("grep", json!({"pattern": "x", "glob": "a[b"})).await;
        assert!(!out.ok);
        assert!(
            out.output
                .starts_with("argument `glob` is not a valid glob"),
            "{}",
            out.output
        );
        let out = fx
            .run("grep", json!({"pattern": "x", "path": "nope"}))
            .await;
        assert!(
            !out.ok && out.output.contains("does not exist"),
            "{}",
            out.output
        );
    }

    #[tokio::test]
    async fn grep_caps_matches() {
        let fx = Fixture::new();
        let text: String = (0..500).map(|i| format!("hit {i}\n")).collect();
        fx.file("many.txt", &text);
        let out = fx.run("grep", json!({"pattern": "hit"})).await;
        assert!(out.ok && out.truncated);
        assert_eq!(out.output.lines().count(), 201);
        assert!(out.output.ends_with(
            "[stopped after 200 matches; narrow the pattern, path or glob to see the rest]\n"
        ));
    }
}

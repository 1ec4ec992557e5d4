//! Opening paths beneath the worktree root without races: the root is opened once per tool call
//! as a directory fd, and every later open, create, mkdir, stat or listing is relative to it.
//!
//! [`open_beneath`] asks the kernel to do the whole resolution with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)`: symlinks are followed only while they stay below the starting
//! directory, absolute symlinks and `..` that would climb above it fail with `EXDEV`, and
//! `/proc` magic links fail with `ELOOP`. Because the check and the open are one system call, a
//! directory swapped for a symlink while a tool runs can make the call fail, never make it
//! land outside.
//!
//! Kernels before 5.6 have no `openat2` (`ENOSYS`); then [`walk_beneath`] does the same
//! resolution in user space, one component at a time: each directory is opened with
//! `O_PATH | O_DIRECTORY | O_NOFOLLOW` relative to the fd of the one before, a symlink is read
//! with `readlinkat` and its target spliced into the rest of the path, and `..` goes back to
//! the fd the walk came through (never above the start). Every step holds an fd to a
//! directory already proven beneath the start, so this is race-free too, only slower.
//!
//! [`Tree`] is the opened root plus what the tools need to know about it: its identity and
//! that of its `.git` directory, which write and edit must never change.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Symlinks one resolution may follow before it is called a loop (Linux's limit).
const MAX_SYMLINKS: usize = 40;
/// How often an `openat2` that returned `EAGAIN` (a concurrent rename made the kernel unsure
/// that a `..` stayed beneath) is retried before giving up.
const EAGAIN_RETRIES: usize = 64;
/// Levels climbed from a directory looking for the root before giving up.
const MAX_DEPTH: usize = 4096;

/// Set once `openat2` answered `ENOSYS`: every later open uses [`walk_beneath`].
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Flags for a directory fd used only as the base of `*at` calls.
pub(crate) const DIR_PATH: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

/// Which inode an fd refers to: equal ids are the same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The id of the file `fd` refers to.
    pub(crate) fn of(fd: impl AsFd) -> io::Result<Self> {
        let stat = rustix::fs::fstat(fd)?;
        Ok(Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
        })
    }
}

/// The worktree root, opened once for one tool call.
#[derive(Debug)]
pub(crate) struct Tree {
    /// The root directory; every path a tool touches is resolved beneath it.
    fd: OwnedFd,
    /// The root's (canonical) path, for messages and to turn listings back into paths.
    path: PathBuf,
    /// The root's identity, to recognise it when climbing from a directory.
    id: FileId,
    /// The identity of `<root>/.git`: a directory in a main checkout, a `gitdir:` file in a
    /// linked worktree (whose real git dir lies outside the root, out of reach anyway).
    git: Option<FileId>,
    /// Whether `git` is a directory, whose whole subtree is then git's.
    git_is_dir: bool,
}

impl Tree {
    /// Opens the worktree at `path` (trusted: the supervisor made it, the model did not).
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let id = FileId::of(&fd)?;
        let git_flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let (git, git_is_dir) = match rustix::fs::openat(&fd, ".git", git_flags, Mode::empty()) {
            Ok(git) => {
                let stat = rustix::fs::fstat(&git)?;
                let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
                (Some(FileId::of(&git)?), is_dir)
            }
            Err(Errno::NOENT) => (None, false),
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            fd,
            path: path.to_path_buf(),
            id,
            git,
            git_is_dir,
        })
    }

    /// The root's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `rel` (relative to the root) beneath the root with `flags`.
    pub(crate) fn open_rel(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        open_beneath(self.fd.as_fd(), rel, flags, Mode::empty())
    }

    /// Whether the entry `name` of directory `dir` is git's: `dir` is the root's `.git`
    /// directory or below it, or `dir` is the root and `name` is `.git`.
    ///
    /// Climbing uses `..` from `dir`, so a directory renamed into `.git` at that very moment
    /// could be missed; only a process that can already write `.git` can make that rename,
    /// and for such a process this check protects nothing anyway.
    pub(crate) fn is_git(&self, dir: BorrowedFd<'_>, name: Option<&OsStr>) -> io::Result<bool> {
        let mut id = FileId::of(dir)?;
        if id == self.id {
            return Ok(name.is_some_and(|n| n == ".git"));
        }
        let Some(git) = self.git.filter(|_| self.git_is_dir) else {
            return Ok(false);
        };
        let mut current = rustix::fs::openat(dir, ".", DIR_PATH, Mode::empty())?;
        for _ in 0..MAX_DEPTH {
            if id == git {
                return Ok(true);
            }
            if id == self.id {
                return Ok(false);
            }
            let parent = rustix::fs::openat(&current, "..", DIR_PATH, Mode::empty())?;
            let parent_id = FileId::of(&parent)?;
            if parent_id == id {
                // At `/` without meeting the root: not a directory of this worktree at all.
                return Ok(false);
            }
            (current, id) = (parent, parent_id);
        }
        Ok(false)
    }

    /// Whether some leading part of `rel` resolves (beneath the root) to the root's `.git`:
    /// what a path like `link/x` with `link -> .git` runs into, where `.git` is a file.
    pub(crate) fn leads_through_git(&self, rel: &Path) -> bool {
        let Some(git) = self.git else {
            return false;
        };
        let mut prefix = PathBuf::new();
        for component in rel.components() {
            prefix.push(component);
            let opened = self.open_rel(&prefix, OFlags::PATH);
            if opened.and_then(FileId::of).is_ok_and(|id| id == git) {
                return true;
            }
        }
        false
    }
}

/// Opens `rel` beneath `dir`: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, or
/// [`walk_beneath`] where the kernel has no `openat2`. `mode` is used with `O_CREAT` only.
pub(crate) fn open_beneath(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::CLOEXEC;
    let rel: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match openat2_beneath(dir, rel, flags, mode) {
            Err(e) if e.raw_os_error() == Some(Errno::NOSYS.raw_os_error()) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            result => return result,
        }
    }
    walk_beneath(dir, rel, flags, mode)
}

/// The kernel's resolution: one `openat2`, retried while it answers `EAGAIN`.
pub(crate) fn openat2_beneath(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let mut last = Errno::AGAIN;
    for _ in 0..EAGAIN_RETRIES {
        match rustix::fs::openat2(dir, rel, flags, mode, resolve) {
            Err(Errno::AGAIN) => last = Errno::AGAIN,
            Err(Errno::INTR) => last = Errno::INTR,
            result => return result.map_err(io::Error::from),
        }
    }
    Err(last.into())
}

/// The user-space resolution for kernels without `openat2`: the same answers (`EXDEV` for
/// anything that would leave `dir`, `ELOOP` for too many symlinks), one component at a time.
pub(crate) fn walk_beneath(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::CLOEXEC;
    if rel.is_absolute() {
        return Err(Errno::XDEV.into());
    }
    // What is left to resolve, last component first.
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, rel.as_os_str());
    // The directories the walk went through, to go back to on `..`.
    let mut ancestors: Vec<OwnedFd> = Vec::new();
    let mut current = rustix::fs::openat(dir, ".", DIR_PATH, Mode::empty())?;
    let mut followed = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            current = ancestors.pop().ok_or(Errno::XDEV)?;
            continue;
        }
        let last = pending.is_empty();
        let attempt = if last {
            rustix::fs::openat(&current, &name, flags | OFlags::NOFOLLOW, mode)
        } else {
            rustix::fs::openat(&current, &name, DIR_PATH | OFlags::NOFOLLOW, Mode::empty())
        };
        let error = match attempt {
            Ok(fd) if last && flags.contains(OFlags::PATH) && is_symlink(&fd)? => Errno::LOOP,
            Ok(fd) if last => return Ok(fd),
            Ok(fd) => {
                ancestors.push(std::mem::replace(&mut current, fd));
                continue;
            }
            Err(e) => e,
        };
        // `O_NOFOLLOW` answers `ELOOP` (or `ENOTDIR` with `O_DIRECTORY`) on a symlink.
        if !matches!(error, Errno::LOOP | Errno::NOTDIR) {
            return Err(error.into());
        }
        let target = match rustix::fs::readlinkat(&current, &name, Vec::new()) {
            Ok(target) => target,
            Err(Errno::INVAL) => return Err(error.into()),
            Err(e) => return Err(e.into()),
        };
        followed += 1;
        if followed > MAX_SYMLINKS {
            return Err(Errno::LOOP.into());
        }
        let target = OsStr::from_bytes(target.as_bytes());
        if target.as_bytes().starts_with(b"/") {
            return Err(Errno::XDEV.into());
        }
        if target.is_empty() {
            return Err(Errno::NOENT.into());
        }
        push_components(&mut pending, target);
    }
    // The path ended on a directory (`.`, `a/..`): open that directory itself.
    rustix::fs::openat(&current, ".", flags, mode).map_err(io::Error::from)
}

/// Pushes the components of `path` onto `pending` so that the first pops first.
fn push_components(pending: &mut Vec<OsString>, path: &OsStr) {
    for component in Path::new(path).components().rev() {
        match component {
            Component::Normal(name) => pending.push(name.to_owned()),
            Component::ParentDir => pending.push(OsString::from("..")),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
}

/// Whether `fd` (opened with `O_PATH | O_NOFOLLOW`) is a symlink.
fn is_symlink(fd: &OwnedFd) -> io::Result<bool> {
    let stat = rustix::fs::fstat(fd)?;
    Ok(FileType::from_raw_mode(stat.st_mode) == FileType::Symlink)
}

/// The type of entry `name` in `dir`, not following a symlink.
pub(crate) fn entry_type(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<FileType> {
    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(FileType::from_raw_mode(stat.st_mode))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::tools::testkit::Fixture;

    type Resolver = fn(BorrowedFd<'_>, &Path, OFlags, Mode) -> io::Result<OwnedFd>;
    const RESOLVERS: [(&str, Resolver); 2] = [("openat2", openat2_beneath), ("walk", walk_beneath)];

    fn errno(result: io::Result<OwnedFd>) -> Option<i32> {
        result.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn both_resolvers_follow_inside_symlinks_and_refuse_the_rest() {
        let fx = Fixture::new();
        fx.escape_links();
        fx.file("src/a.rs", "a");
        fx.symlink("src/a.rs", "alias.rs");
        fx.symlink("src", "srclink");
        fx.symlink("../src", "sub/up_src");
        fx.symlink("loop_b", "loop_a");
        fx.symlink("loop_a", "loop_b");
        fx.symlink(fx.root.join("src"), "abs_inside");
        let tree = Tree::open(&fx.root).unwrap();
        let src = FileId::of(tree.open_rel(Path::new("src"), DIR_PATH).unwrap()).unwrap();
        let a = FileId::of(
            tree.open_rel(Path::new("src/a.rs"), OFlags::RDONLY)
                .unwrap(),
        )
        .unwrap();
        for (which, resolve) in RESOLVERS {
            let open =
                |rel: &str, flags| resolve(tree.fd.as_fd(), Path::new(rel), flags, Mode::empty());
            for (rel, want) in [
                ("src/a.rs", a),
                ("alias.rs", a),
                ("srclink/a.rs", a),
                ("sub/up_src/a.rs", a),
                ("src/../src/a.rs", a),
            ] {
                let got = FileId::of(open(rel, OFlags::RDONLY).unwrap()).unwrap();
                assert_eq!(got, want, "{which} {rel}");
            }
            assert_eq!(FileId::of(open("srclink", DIR_PATH).unwrap()).unwrap(), src);
            assert_eq!(FileId::of(open(".", DIR_PATH).unwrap()).unwrap(), tree.id);
            for rel in [
                "..",
                "../outside/secret.txt",
                "outdir/secret.txt",
                "outfile",
                "dangling",
                "uplink/x",
                "sub/rel_out/secret.txt",
                "abs_inside/a.rs",
                "/etc/passwd",
            ] {
                let got = errno(open(rel, OFlags::RDONLY));
                assert_eq!(got, Some(Errno::XDEV.raw_os_error()), "{which} {rel}");
            }
            let got = errno(open("loop_a/x", OFlags::RDONLY));
            assert_eq!(got, Some(Errno::LOOP.raw_os_error()), "{which}");
            let got = errno(open("src/a.rs/x", OFlags::RDONLY));
            assert_eq!(got, Some(Errno::NOTDIR.raw_os_error()), "{which}");
            let got = errno(open("nope/x", OFlags::RDONLY));
            assert_eq!(got, Some(Errno::NOENT.raw_os_error()), "{which}");
        }
    }

    #[test]
    fn git_is_recognised_through_symlinks() {
        let fx = Fixture::new();
        fx.file(".git/config", "[core]\n");
        fx.file("src/a.rs", "a");
        fx.symlink(".git", "gitlink");
        let tree = Tree::open(&fx.root).unwrap();
        let dir = |rel: &str| tree.open_rel(Path::new(rel), DIR_PATH).unwrap();
        let name = Some(OsStr::new("x"));
        assert!(
            tree.is_git(dir(".").as_fd(), Some(OsStr::new(".git")))
                .unwrap()
        );
        assert!(!tree.is_git(dir(".").as_fd(), name).unwrap());
        assert!(tree.is_git(dir("gitlink").as_fd(), name).unwrap());
        assert!(tree.is_git(dir(".git").as_fd(), name).unwrap());
        assert!(!tree.is_git(dir("src").as_fd(), name).unwrap());
    }

    #[test]
    fn both_resolvers_stay_beneath_while_a_directory_is_swapped() {
        let fx = Fixture::new();
        let swapper = fx.race_pair();
        let tree = Tree::open(&fx.root).unwrap();
        let outside =
            FileId::of(rustix::fs::open(&fx.outside, DIR_PATH, Mode::empty()).unwrap()).unwrap();
        let create = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        for (which, resolve) in RESOLVERS {
            for i in 0..150 {
                if let Ok(fd) = resolve(
                    tree.fd.as_fd(),
                    Path::new("d/f.txt"),
                    OFlags::RDONLY,
                    Mode::empty(),
                ) {
                    let text = std::io::read_to_string(std::fs::File::from(fd)).unwrap();
                    assert_eq!(text, "inside\n", "{which}");
                }
                if let Ok(dir) = resolve(tree.fd.as_fd(), Path::new("d"), DIR_PATH, Mode::empty()) {
                    assert_ne!(FileId::of(dir).unwrap(), outside, "{which}");
                }
                let name = format!("d/{which}{i}");
                let _ = resolve(
                    tree.fd.as_fd(),
                    Path::new(&name),
                    create,
                    Mode::from_raw_mode(0o600),
                );
            }
        }
        let swaps = swapper.stop();
        assert!(swaps > 0);
        let outside: Vec<_> = std::fs::read_dir(&fx.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outside.len(), 2, "files were created outside: {outside:?}");
    }
}

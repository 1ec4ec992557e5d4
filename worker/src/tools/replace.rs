//! Where write and edit put a file, and how they replace it, all through directory fds.
//!
//! [`locate`] finds the directory that will hold the file and the file's name in it: the
//! parent is opened beneath the root (created one directory at a time with `mkdirat` when
//! write asks for it), and a final component that is a symlink is followed like the kernel
//! would, so writing `alias.txt` replaces the file the link names and keeps the link. Git's
//! data is refused there, by inode: a `.git` reached through a symlink is still `.git`.
//!
//! [`replace`] writes a temp file with a random name beside the target, inside that same
//! directory fd (`O_CREAT | O_EXCL | O_NOFOLLOW`), fsyncs it and renames it over the target
//! with `renameat` within the fd: a reader or a crash sees the old file or the new one, and a
//! failure removes the temp file. Nothing is ever created through a path string.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::beneath::{DIR_PATH, Tree, entry_type, open_beneath};
use super::outcome::ToolError;
use super::path::{Confined, PathError, names_git, open_error};

/// Symlinks followed from the final component before it is called a loop.
const MAX_SYMLINKS: usize = 40;
/// Temp names tried before giving up (each is random; a clash means something odd).
const TEMP_ATTEMPTS: usize = 8;

/// Whether [`locate`] creates missing parent directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parents {
    /// Create them, like `mkdir -p` (write).
    Create,
    /// They must exist (edit).
    Existing,
}

/// A file's place: the directory holding it, opened beneath the root, and its name there.
#[derive(Debug)]
pub(crate) struct Place {
    /// The directory; every later call on the file is relative to it.
    pub(crate) dir: OwnedFd,
    /// The file's name in `dir` (not a symlink, or nothing yet).
    pub(crate) name: OsString,
}

impl Place {
    /// What is at the place now, without following a symlink; `None` when nothing is.
    pub(crate) fn kind(&self) -> io::Result<Option<FileType>> {
        match entry_type(self.dir.as_fd(), &self.name) {
            Ok(kind) => Ok(Some(kind)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the file at the place for reading (never through a symlink).
    pub(crate) fn open_read(&self) -> io::Result<std::fs::File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = open_beneath(
            self.dir.as_fd(),
            Path::new(&self.name),
            flags,
            Mode::empty(),
        )?;
        Ok(std::fs::File::from(fd))
    }
}

/// Finds where the file `target` names lives, refusing git's data and anything outside.
pub(crate) fn locate(tree: &Tree, target: &Confined, parents: Parents) -> Result<Place, ToolError> {
    let given = target.given.as_str();
    let git = || {
        ToolError::from(PathError::Git {
            path: given.to_owned(),
        })
    };
    let refused = |e: io::Error, action: &'static str| {
        open_error(tree.path(), given, e, |e| ToolError::io(action, given, e))
    };
    if target.is_root() {
        return Err(ToolError::Failed(format!(
            "`{given}` is a directory; give the path of a file"
        )));
    }
    // Unlike `target.rel`, a path spliced from a symlink's target may hold `..`; the kernel
    // resolves those against the real directories.
    let mut path = target.rel.clone();
    for _ in 0..=MAX_SYMLINKS {
        let (parent, name) = split(&path).ok_or_else(|| {
            ToolError::Failed(format!("`{given}` is a directory; give the path of a file"))
        })?;
        if names_git(&path) {
            return Err(git());
        }
        let dir = match parents {
            Parents::Create => create_dirs(tree, &parent, given)?,
            Parents::Existing => match tree.open_rel(&parent, DIR_PATH) {
                Ok(dir) => dir,
                // A missing or non-directory parent may be missing inside git's data.
                Err(_) if tree.leads_through_git(&parent) => return Err(git()),
                Err(e) => return Err(refused(e, "open the directory of")),
            },
        };
        if tree
            .is_git(dir.as_fd(), Some(&name))
            .map_err(|e| ToolError::io("inspect", given, e))?
        {
            return Err(git());
        }
        match rustix::fs::readlinkat(&dir, &name, Vec::new()) {
            Ok(link) => {
                let link = PathBuf::from(OsStr::from_bytes(link.as_bytes()));
                if link.is_absolute() {
                    return Err(refused(Errno::XDEV.into(), "resolve"));
                }
                path = parent.join(link);
            }
            Err(Errno::INVAL | Errno::NOENT) => return Ok(Place { dir, name }),
            Err(e) => return Err(refused(e.into(), "inspect")),
        }
    }
    Err(PathError::SymlinkLoop {
        path: given.to_owned(),
    }
    .into())
}

/// Splits `path` into its parent (`.` at the top) and a final plain name.
fn split(path: &Path) -> Option<(PathBuf, OsString)> {
    let Some(Component::Normal(name)) = path.components().next_back() else {
        return None;
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some((parent.to_path_buf(), name.to_owned()))
}

/// Opens directory `rel` beneath the root, creating what is missing one level at a time:
/// `mkdirat` in the fd of the level above, then an open beneath that same fd.
fn create_dirs(tree: &Tree, rel: &Path, given: &str) -> Result<OwnedFd, ToolError> {
    let refused = |e: io::Error| {
        open_error(tree.path(), given, e, |e| {
            ToolError::io("create the directories of", given, e)
        })
    };
    let git = || {
        ToolError::from(PathError::Git {
            path: given.to_owned(),
        })
    };
    match tree.open_rel(rel, DIR_PATH) {
        Ok(dir) => return Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // `link/x` with `link -> .git` where `.git` is a file.
        Err(_) if tree.leads_through_git(rel) => return Err(git()),
        Err(e) => return Err(refused(e)),
    }
    let mut dir = tree.open_rel(Path::new("."), DIR_PATH).map_err(refused)?;
    let mut prefix = PathBuf::new();
    let mut checked_git = false;
    for component in rel.components() {
        prefix.push(component);
        let name = match tree.open_rel(&prefix, DIR_PATH) {
            Ok(next) => {
                dir = next;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match component {
                Component::Normal(name) => name,
                _ => return Err(refused(e)),
            },
            Err(e) => return Err(refused(e)),
        };
        // The first directory to be created: make sure its parent is not git's.
        if !checked_git {
            if tree
                .is_git(dir.as_fd(), Some(name))
                .map_err(|e| ToolError::io("inspect", given, e))?
            {
                return Err(git());
            }
            checked_git = true;
        }
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o777)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(refused(e.into())),
        }
        dir =
            open_beneath(dir.as_fd(), Path::new(name), DIR_PATH, Mode::empty()).map_err(refused)?;
    }
    Ok(dir)
}

/// Replaces (or creates) the file at `place` with `content`, atomically, keeping the
/// permission bits of a regular file that was there.
pub(crate) fn replace(place: &Place, content: &[u8], given: &str) -> Result<(), ToolError> {
    let fail = |e: io::Error| ToolError::io("write", given, e);
    let keep_mode = match rustix::fs::statat(&place.dir, &place.name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile => {
            Some(Mode::from_raw_mode(stat.st_mode))
        }
        Ok(_) => None,
        Err(Errno::NOENT) => None,
        Err(e) => return Err(fail(e.into())),
    };
    let (temp_name, file) = create_temp(place).map_err(fail)?;
    let result = fill(file, content, keep_mode).and_then(|()| {
        rustix::fs::renameat(&place.dir, &temp_name, &place.dir, &place.name)
            .map_err(io::Error::from)
    });
    if let Err(e) = result {
        let _ = rustix::fs::unlinkat(&place.dir, &temp_name, AtFlags::empty());
        return Err(fail(e));
    }
    Ok(())
}

/// Creates a new, empty temp file beside the target: `.NAME.kugetsu-RANDOM.tmp`.
fn create_temp(place: &Place) -> io::Result<(OsString, std::fs::File)> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
    let mut last = io::Error::from(Errno::EXIST);
    for _ in 0..TEMP_ATTEMPTS {
        let mut name = OsString::from(".");
        name.push(&place.name);
        name.push(format!(".kugetsu-{:016x}.tmp", random_u64()));
        match open_beneath(
            place.dir.as_fd(),
            Path::new(&name),
            flags,
            Mode::from_raw_mode(0o666),
        ) {
            Ok(fd) => return Ok((name, std::fs::File::from(fd))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Writes `content`, sets `mode` and makes it durable.
fn fill(mut file: std::fs::File, content: &[u8], mode: Option<Mode>) -> io::Result<()> {
    file.write_all(content)?;
    if let Some(mode) = mode {
        rustix::fs::fchmod(&file, mode)?;
    }
    file.sync_all()
}

/// 64 random bits from the kernel; if it has none to give, the pid and a clock (the
/// `O_EXCL` create stays safe either way, only clashes get likelier).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()) {
        Ok(8) => u64::from_ne_bytes(bytes),
        _ => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            (u64::from(std::process::id()) << 32) ^ u64::from(nanos)
        }
    }
}

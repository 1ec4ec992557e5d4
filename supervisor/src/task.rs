//! Task ids, task directories and their `task.json`, and atomic file writes.

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kugetsu_protocol::Priority;
use serde::{Deserialize, Serialize};

/// Lowercase Crockford base32: digits and letters without i, l, o, u.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new task id: 9 characters of milliseconds since the epoch (so ids sort by creation time)
/// followed by 4 random characters, e.g. `1k9z3m8xqa7f2`.
pub fn new_task_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    let random = hasher.finish();
    let mut id = String::with_capacity(13);
    for i in (0..9).rev() {
        id.push(ALPHABET[((millis >> (5 * i)) & 31) as usize] as char);
    }
    for i in 0..4 {
        id.push(ALPHABET[((random >> (5 * i)) & 31) as usize] as char);
    }
    id
}

/// Whether `id` looks like a task id (safe to use as a path component and a branch suffix).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| ALPHABET.contains(&b))
}

/// What `task.json` records about a task: everything needed to run or resume it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub prompt: String,
    pub model: String,
    /// The repository the task works on (top level, absolute).
    pub repo: PathBuf,
    /// Where the shadow works: the worktree, or `repo` with `--no-worktree`.
    pub workdir: PathBuf,
    /// `kugetsu/<id>`, or the repository's current branch with `--no-worktree`.
    pub branch: Option<String>,
    /// The commit the task started from.
    pub base_commit: Option<String>,
    pub worktree: bool,
    pub max_turns: u32,
    /// `--timeout`, counted from the task's first start.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Set at the first start when the task has a timeout; kept across restarts.
    pub deadline_unix_ms: Option<u64>,
    pub mem_limit: u64,
    pub created_unix_ms: u64,
    #[serde(default)]
    pub priority: Priority,
    /// Who owns the task: the daemon resumes its own tasks after a restart, never others'.
    #[serde(default)]
    pub origin: Origin,
}

/// Who created a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `kugetsu run` (resumable with `kugetsu run --resume`).
    #[default]
    Run,
    /// The daemon (`kugetsu submit`).
    Daemon,
}

/// The directories of one state dir.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// `<state_dir>/tasks/<id>`.
    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.root.join("tasks").join(id)
    }

    /// `<state_dir>/worktrees/<id>`.
    pub fn worktree(&self, id: &str) -> PathBuf {
        self.root.join("worktrees").join(id)
    }

    /// Creates a fresh task directory under a new, unique id.
    pub fn create_task_dir(&self) -> std::io::Result<(String, PathBuf)> {
        std::fs::create_dir_all(self.root.join("tasks"))?;
        loop {
            let id = new_task_id();
            let dir = self.task_dir(&id);
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok((id, dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a value as pretty JSON, atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_valid_and_sort_by_time() {
        let a = new_task_id();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let b = new_task_id();
        assert_eq!(a.len(), 13);
        assert!(is_valid_id(&a) && is_valid_id(&b));
        assert!(a < b, "{a} !< {b}");
        assert!(!is_valid_id("../x"));
        assert!(!is_valid_id(""));
    }

    #[test]
    fn atomic_write_replaces_content() {
        let dir = std::env::temp_dir().join(format!("kugetsu-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("task.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

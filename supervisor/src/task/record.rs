//! Task ids, the state directory, one task's directory and its `task.json`, and atomic writes.
//!
//! [`TaskDir`] is the one owner of a task's on-disk layout: every path inside
//! `<state_dir>/tasks/<id>/` is made here (from the names in [`kugetsu_protocol::layout`],
//! which the worker shares), and loading a record checks it against the directory it came
//! from.

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kugetsu_protocol::{NetworkMode, Priority, SandboxMode, layout};
use serde::{Deserialize, Serialize};

/// Lowercase Crockford base32: digits and letters without i, l, o, u.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new task id: 9 characters of milliseconds since the epoch (so ids sort by creation time)
/// followed by 4 random characters, e.g. `1k9z3m8xqa7f2`.
pub fn new_task_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    task_id_at(millis)
}

/// A new task id for a task created at `millis` since the epoch.
pub fn task_id_at(millis: u64) -> String {
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

/// When task `id` was created (its first 9 characters), in milliseconds since the epoch.
pub fn id_created_unix_ms(id: &str) -> Option<u64> {
    if !is_valid_id(id) || id.len() < 9 {
        return None;
    }
    id.bytes().take(9).try_fold(0u64, |acc, b| {
        let digit = ALPHABET.iter().position(|a| *a == b)? as u64;
        Some((acc << 5) | digit)
    })
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
    /// The branch the task started from (`main` for `--base main` or a checkout on `main`),
    /// where `kugetsu merge` lands it by default. Absent when it started from a detached HEAD
    /// or a plain commit, and in records older than landing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ref: Option<String>,
    pub worktree: bool,
    pub max_turns: u32,
    /// `--timeout`, counted from the task's first start.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Set at the first start when the task has a timeout; kept across restarts.
    pub deadline_unix_ms: Option<u64>,
    pub mem_limit: u64,
    /// `--sandbox` as resolved at submission (absent in older records: the default).
    #[serde(default)]
    pub sandbox: SandboxMode,
    /// `--network` as resolved at submission.
    #[serde(default)]
    pub network: NetworkMode,
    pub created_unix_ms: u64,
    #[serde(default)]
    pub priority: Priority,
    /// Who owns the task: the daemon resumes its own tasks after a restart, never others'.
    #[serde(default)]
    pub origin: Origin,
    /// The task pauses before a model request that would take its tokens past this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    /// The same in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// The MCP servers (`[mcp.NAME]` names) whose tools the shadow gets, as resolved at
    /// submission (absent in older records and for `--mcp none`: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp: Vec<String>,
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
    /// `<state_dir>/tasks`.
    pub fn tasks(&self) -> PathBuf {
        self.root.join("tasks")
    }

    /// The directory of task `id` (which need not exist).
    pub fn task(&self, id: &str) -> TaskDir {
        TaskDir {
            id: id.to_owned(),
            path: self.tasks().join(id),
        }
    }

    /// `<state_dir>/worktrees/<id>`.
    pub fn worktree(&self, id: &str) -> PathBuf {
        self.root.join("worktrees").join(id)
    }

    /// `<state_dir>/live`: one empty marker file per task the daemon has not finished, so a
    /// restart reads only those and never the whole history.
    pub fn live(&self) -> PathBuf {
        self.root.join("live")
    }

    /// Creates a fresh task directory under a new, unique id.
    pub fn create_task(&self) -> std::io::Result<TaskDir> {
        std::fs::create_dir_all(self.tasks())?;
        loop {
            let dir = self.task(&new_task_id());
            match std::fs::create_dir(&dir.path) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Marks task `id` as the daemon's unfinished work (durable before it returns).
    pub fn mark_live(&self, id: &str) -> std::io::Result<()> {
        let live = self.live();
        std::fs::create_dir_all(&live)?;
        std::fs::File::create(live.join(id))?.sync_all()?;
        std::fs::File::open(&live)?.sync_all()?;
        kugetsu_os::crash::point("live.marked");
        Ok(())
    }

    /// Forgets the live marker of task `id` (it finished, or was removed).
    pub fn unmark_live(&self, id: &str) {
        let _ = std::fs::remove_file(self.live().join(id));
    }

    /// The ids with a live marker, oldest first. `None` when the state dir predates markers.
    pub fn live_ids(&self) -> Option<Vec<String>> {
        ids_in(&self.live())
    }

    /// Every task id in the state dir, oldest first (reads directory names only).
    pub fn all_ids(&self) -> Vec<String> {
        ids_in(&self.tasks()).unwrap_or_default()
    }
}

/// The names in `dir` that are task ids, sorted (oldest first); `None` if `dir` is unreadable.
fn ids_in(dir: &Path) -> Option<Vec<String>> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|id| is_valid_id(id))
        .collect();
    ids.sort();
    Some(ids)
}

/// Why a task's record could not be loaded. Each names the file, so a log line says which
/// record to look at.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// There is no such task (no `task.json`).
    #[error("no task {id}")]
    Missing { id: String },
    /// `task.json` exists but cannot be read.
    #[error("task {id}: cannot read {}", path.display())]
    Io {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `task.json` is not a task record.
    #[error("task {id}: {} is damaged", path.display())]
    Corrupt {
        id: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// `task.json` names another task than its directory (copied, or tampered with).
    #[error("task {id}: {} belongs to task {claimed:?}, not to its directory", path.display())]
    Mismatch {
        id: String,
        path: PathBuf,
        claimed: String,
    },
}

/// One task's directory, `<state_dir>/tasks/<id>/`, and the files in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDir {
    id: String,
    path: PathBuf,
}

impl TaskDir {
    /// The task's id (the directory's name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `task.json`: the record ([`TaskRecord`]).
    pub fn record_file(&self) -> PathBuf {
        self.path.join(layout::TASK_RECORD)
    }

    /// `events.jsonl`: the public event log, written by the supervisor only.
    pub fn events_file(&self) -> PathBuf {
        self.path.join(layout::EVENTS)
    }

    /// `journal.jsonl`: the worker's checkpoint, written by the worker only.
    pub fn journal_file(&self) -> PathBuf {
        self.path.join(layout::JOURNAL)
    }

    /// `worker.log`: the workers' stderr.
    pub fn worker_log(&self) -> PathBuf {
        self.path.join(layout::WORKER_LOG)
    }

    /// `tmp/`: the shadow's private temp dir (its tools' `TMPDIR`), removed with the task.
    pub fn tmp(&self) -> PathBuf {
        self.path.join("tmp")
    }

    /// `git-refs/`: the shadow's own branch ref, bound over the shared `refs/heads/kugetsu/`
    /// in its tools' mount namespace (so they can move that branch and no other); the
    /// supervisor moves the real branch to it when the task ends.
    pub fn private_refs(&self) -> PathBuf {
        self.path.join("git-refs")
    }

    /// `git-reflogs/`: the reflogs of the tools' commits, bound over the shared
    /// `logs/refs/heads/kugetsu/` the same way (and never read by the supervisor).
    pub fn private_reflogs(&self) -> PathBuf {
        self.path.join("git-reflogs")
    }

    /// `tool-output/`: the worker's full bash outputs (the model is told their paths, so its
    /// tools may read this directory, and nothing else of the task's).
    pub fn tool_output(&self) -> PathBuf {
        self.path.join(layout::TOOL_OUTPUT)
    }

    /// `commit-index`: the scratch git index the supervisor builds a commit in (a file of
    /// ours, outside everything the shadow can write).
    pub fn scratch_index(&self) -> PathBuf {
        self.path.join("commit-index")
    }

    /// `merged.json`: written once `kugetsu merge` landed the task (see `crate::land`).
    pub fn merged_file(&self) -> PathBuf {
        self.path.join("merged.json")
    }

    /// Whether the task has a record at all.
    pub fn exists(&self) -> bool {
        self.record_file().is_file()
    }

    /// Reads `task.json`, checking that it belongs to this directory.
    pub fn load(&self) -> Result<TaskRecord, RecordError> {
        let id = self.id.clone();
        let path = self.record_file();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RecordError::Missing { id });
            }
            Err(source) => return Err(RecordError::Io { id, path, source }),
        };
        let record: TaskRecord = match serde_json::from_slice(&bytes) {
            Ok(record) => record,
            Err(source) => return Err(RecordError::Corrupt { id, path, source }),
        };
        if record.id != self.id {
            return Err(RecordError::Mismatch {
                id,
                path,
                claimed: record.id,
            });
        }
        Ok(record)
    }

    /// Writes `task.json` atomically.
    pub fn save(&self, record: &TaskRecord) -> std::io::Result<()> {
        write_json_atomic(&self.record_file(), record)?;
        kugetsu_os::crash::point("record.saved");
        Ok(())
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.path)
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
        let created = id_created_unix_ms(&b).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            created <= now && now - created < 60_000,
            "{created} vs {now}"
        );
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

    #[test]
    fn a_record_loads_only_from_its_own_directory() {
        let root = std::env::temp_dir().join(format!("kugetsu-record-{}", new_task_id()));
        let state = StateDir { root: root.clone() };
        let dir = state.create_task().unwrap();
        let record = TaskRecord {
            id: dir.id().to_owned(),
            prompt: "p".to_owned(),
            model: "scripted/demo".to_owned(),
            repo: root.clone(),
            workdir: root.clone(),
            branch: None,
            base_commit: None,
            base_ref: None,
            worktree: false,
            max_turns: 3,
            timeout_ms: None,
            deadline_unix_ms: None,
            mem_limit: 1 << 20,
            sandbox: SandboxMode::Workspace,
            network: NetworkMode::On,
            created_unix_ms: 1,
            priority: Priority::Normal,
            origin: Origin::Daemon,
            budget_tokens: None,
            budget_usd: None,
            mcp: vec!["everything".to_owned()],
        };
        dir.save(&record).unwrap();
        assert_eq!(dir.load().unwrap(), record);
        assert_eq!(dir.events_file(), dir.path().join("events.jsonl"));

        // A record copied into another task's directory (or naming `../..`) is refused.
        let other = state.create_task().unwrap();
        let mut forged = record;
        forged.id = "../../..".to_owned();
        other.save(&forged).unwrap();
        let error = other.load().unwrap_err();
        assert!(matches!(error, RecordError::Mismatch { .. }), "{error}");
        let text = error.to_string();
        assert!(
            text.contains(&other.record_file().display().to_string()) && text.contains("../../.."),
            "{text}"
        );
        std::fs::write(other.record_file(), b"{not json").unwrap();
        assert!(matches!(other.load(), Err(RecordError::Corrupt { .. })));
        assert!(matches!(
            state.task("0000000000000").load(),
            Err(RecordError::Missing { .. })
        ));

        state.mark_live(dir.id()).unwrap();
        assert_eq!(state.live_ids().unwrap(), vec![dir.id().to_owned()]);
        state.unmark_live(dir.id());
        assert_eq!(state.live_ids().unwrap(), Vec::<String>::new());
        assert_eq!(state.all_ids().len(), 2);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

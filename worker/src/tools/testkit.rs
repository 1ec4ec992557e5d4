//! Test support: a worktree and an "outside" directory side by side in a temp dir, a thread
//! that swaps a directory and an escaping symlink under running tools, and helpers to look for
//! processes by a marker in their command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::{ToolContext, ToolOutput};

/// A temp dir holding `root/` (the worktree), `outside/` (must never change) and `task/`.
pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    /// The canonical worktree root.
    pub(crate) root: PathBuf,
    /// A sibling of the root holding `secret.txt`; tools must never touch it.
    pub(crate) outside: PathBuf,
    /// Where bash logs go.
    pub(crate) output_dir: PathBuf,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), "outside secret\n").unwrap();
        Self {
            _dir: dir,
            root,
            outside,
            output_dir: base.join("task").join("tool-output"),
        }
    }

    pub(crate) fn ctx(&self) -> ToolContext {
        ToolContext {
            root: self.root.clone(),
            output_dir: self.output_dir.clone(),
            mem_limit: None,
            guard: None,
            sandbox: None,
        }
    }

    /// Writes `content` to `rel` under the root, creating directories.
    pub(crate) fn file(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Creates the symlink `rel` (under the root) pointing at `target` (stored as given).
    pub(crate) fn symlink(&self, target: impl AsRef<Path>, rel: &str) {
        let link = self.root.join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, link).unwrap();
    }

    /// The escaping symlinks every confinement test tries: `outdir` (a directory outside),
    /// `outfile` (a file outside), `dangling` (a missing file outside), `uplink` (`..`) and
    /// `sub/rel_out` (a relative `../../outside`).
    pub(crate) fn escape_links(&self) {
        self.symlink(&self.outside, "outdir");
        self.symlink(self.outside.join("secret.txt"), "outfile");
        self.symlink(self.outside.join("missing.txt"), "dangling");
        self.symlink("..", "uplink");
        self.symlink("../../outside", "sub/rel_out");
    }

    /// The race setup: `d/` (a real directory holding `f.txt` = `inside\n`) and `swap`, a
    /// symlink to `outside/` (which holds `f.txt` = `OUTSIDE-DATA\n`). A [`Swapper`] exchanges
    /// the two names, so `d/f.txt` names the inside file or, for an instant, the outside one.
    pub(crate) fn race_pair(&self) -> Swapper {
        self.file("d/f.txt", "inside\n");
        std::fs::write(self.outside.join("f.txt"), "OUTSIDE-DATA\n").unwrap();
        self.symlink(&self.outside, "swap");
        Swapper::start(self.root.join("d"), self.root.join("swap"))
    }

    /// The real directory of [`Self::race_pair`], under whichever name it has now.
    pub(crate) fn race_dir(&self) -> PathBuf {
        let d = self.root.join("d");
        if d.symlink_metadata().unwrap().is_dir() {
            d
        } else {
            self.root.join("swap")
        }
    }

    /// Every path under the temp dir (root and outside) whose name marks a temp file.
    pub(crate) fn stray_temp_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone(), self.outside.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                if entry.file_name().to_string_lossy().contains(".kugetsu-") {
                    out.push(entry.path());
                }
                if entry.file_type().unwrap().is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        out
    }

    /// Every file under `outside/` with its content, to show nothing there changed.
    pub(crate) fn outside_snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        snapshot(&self.outside)
    }

    /// Runs tool `name` through the public entry point.
    pub(crate) async fn run(&self, name: &str, args: Value) -> ToolOutput {
        super::run(&self.ctx(), "call_test", name, &args).await
    }
}

/// A thread exchanging two names (`renameat2(RENAME_EXCHANGE)`) in a loop until stopped.
pub(crate) struct Swapper {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Swapper {
    fn start(a: PathBuf, b: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, swaps) = (stop.clone(), swaps.clone());
            std::thread::spawn(move || {
                let cwd = rustix::fs::CWD;
                let flags = rustix::fs::RenameFlags::EXCHANGE;
                while !stop.load(Ordering::Relaxed) {
                    rustix::fs::renameat_with(cwd, &a, cwd, &b, flags).unwrap();
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // On a loaded machine the thread may not run before the racing loop is over; a race
        // test must race, so it starts only once the names are being exchanged.
        while swaps.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        Self {
            stop,
            swaps,
            thread: Some(thread),
        }
    }

    /// Stops the thread; returns how many exchanges it made.
    pub(crate) fn stop(mut self) -> u64 {
        self.halt();
        self.swaps.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Pids of live processes whose command line contains `marker`.
pub(crate) fn pids_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for pid in kugetsu_os::process::pids() {
        // A zombie's cmdline is empty, so only processes still running can match.
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Waits up to `timeout` for some process with `marker` to appear.
pub(crate) async fn wait_for_process(marker: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while pids_with(marker).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no process with `{marker}` appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to `timeout` for every process with `marker` to be gone; returns the survivors.
pub(crate) async fn survivors(marker: &str, timeout: Duration) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = pids_with(marker);
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every file and directory under `dir` with its content (directories with none), sorted.
pub(crate) fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.push((path.clone(), Vec::new()));
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

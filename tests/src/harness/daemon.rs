//! Running the real daemon (`kugetsu serve`) and talking to it the ways users do.
//!
//! - [`Daemon`]: one `kugetsu serve` with its own socket, config file and state directory (the
//!   [`TestRepo`]'s), a controlled environment (cleared, then `PATH`, `HOME`, the socket, and
//!   what the test adds), its stderr collected as it arrives. It can be killed with SIGKILL and
//!   restarted on the same state; dropping it kills it and every process it left behind.
//! - CLI clients: [`Daemon::kugetsu`] is a `kugetsu` command with the daemon's environment, and
//!   the helpers around it ([`Daemon::submit`], [`Daemon::ps`], [`Daemon::logs`], ...).
//! - [`RpcClient`]: a raw JSON-RPC 2.0 client over the Unix socket, for protocol-level tests
//!   and for waiting on events (subscriptions) instead of polling.
//! - [`PsPoller`]: polls `kugetsu ps --json` in the background and keeps every snapshot, to check
//!   pool limits and start order as the daemon reported them.
//! - [`Script`] (the `scripted` provider's turns, written to a file) and [`Gate`] (a file a bash
//!   tool waits for, so a test decides when a task may go on).
//! - Process checks: every process the daemon starts inherits an instance marker
//!   ([`INSTANCE_ENV`]) from its environment; [`Daemon::processes`] finds them through `/proc`,
//!   and [`Daemon::orphans`] those that are not (any more) below the running daemon.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::repo::TestRepo;
use super::run::{Kugetsu, RunOutput, bin_path, path_var};
use crate::events::{Events, kind};
use crate::fake_llm::FakeLlm;

/// The variable that marks every process of one test daemon (the daemon, its workers, their
/// tools): its value is unique per [`Daemon`].
pub const INSTANCE_ENV: &str = "KUGETSU_E2E_INSTANCE";
/// How long the daemon may take to accept connections after it was spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The default bound of every wait on the daemon (a response, an event, a task's end).
pub const WAIT: Duration = Duration::from_secs(45);

/// Sets up a [`Daemon`]: config file contents, environment, socket location.
#[derive(Debug)]
pub struct DaemonBuilder {
    root: PathBuf,
    repo: PathBuf,
    home: PathBuf,
    state_dir: PathBuf,
    config: String,
    socket: Option<PathBuf>,
    env: BTreeMap<OsString, OsString>,
    soft_nofile: Option<u64>,
}

impl DaemonBuilder {
    /// The contents of the config file given with `--config` (TOML).
    pub fn config(mut self, toml: impl Into<String>) -> Self {
        self.config = toml.into();
        self
    }

    /// Where the socket is (default: `<repo root>/kugetsu.sock`), for `KUGETSU_SOCKET`.
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// Adds a variable to the daemon's (and the clients') environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .insert(key.as_ref().to_owned(), value.as_ref().to_owned());
        self
    }

    /// The environment for reaching `server` (base URL and key), so its model can be used.
    pub fn llm(mut self, server: &FakeLlm) -> Self {
        for (key, value) in server.env() {
            self.env.insert(key.into(), value.into());
        }
        self
    }

    /// Gives the daemon its own directory `dir` (created): its config file, default socket,
    /// working directory and instance marker there, its state directory `dir/state`. Several
    /// daemons of one [`TestRepo`] (the nodes of a cluster) share the repository and home.
    pub fn node_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).expect("create the daemon's directory");
        self.state_dir = dir.join("state");
        self.root = dir;
        self
    }

    /// Starts the daemon with its open-files soft limit lowered to `soft` (through `sh`'s
    /// `ulimit`, which then execs it: the daemon keeps the shell's pid).
    pub fn soft_nofile(mut self, soft: u64) -> Self {
        self.soft_nofile = Some(soft);
        self
    }

    /// Spawns `kugetsu serve` without waiting for it (see [`Daemon::wait_ready`]).
    pub fn spawn(self) -> Daemon {
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(|| self.root.join("kugetsu.sock"));
        let config = self.root.join("config").join("config.toml");
        std::fs::create_dir_all(config.parent().expect("config has a directory"))
            .expect("create the config directory");
        std::fs::write(&config, &self.config).expect("write the config file");
        let mut env = BTreeMap::new();
        env.insert(OsString::from("PATH"), path_var());
        env.insert("HOME".into(), self.home.clone().into_os_string());
        env.insert("KUGETSU_RETRY_BASE_MS".into(), "10".into());
        env.insert("RUST_BACKTRACE".into(), "1".into());
        env.insert("KUGETSU_SOCKET".into(), socket.clone().into_os_string());
        let instance = format!("{}", self.root.display());
        env.insert(INSTANCE_ENV.into(), instance.clone().into());
        env.extend(self.env);
        let (stderr_tx, stderr) = watch::channel(String::new());
        let mut daemon = Daemon {
            root: self.root,
            repo: self.repo,
            home: self.home,
            state_dir: self.state_dir,
            socket,
            config,
            env,
            instance,
            child: None,
            pid: 0,
            stderr_tx: Arc::new(stderr_tx),
            stderr,
            readers: Vec::new(),
            soft_nofile: self.soft_nofile,
        };
        daemon.spawn_process();
        daemon
    }

    /// Spawns `kugetsu serve` and waits until its socket accepts connections.
    pub async fn start(self) -> Daemon {
        let mut daemon = self.spawn();
        daemon.wait_ready().await;
        daemon
    }
}

/// A running `kugetsu serve`. Dropping it SIGKILLs the daemon and every process it started.
#[derive(Debug)]
pub struct Daemon {
    root: PathBuf,
    repo: PathBuf,
    home: PathBuf,
    state_dir: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    /// The whole environment of the daemon and of every client.
    env: BTreeMap<OsString, OsString>,
    /// The value of [`INSTANCE_ENV`].
    instance: String,
    /// `None` once the process has been reaped.
    child: Option<Child>,
    pid: u32,
    /// Everything the daemon (all its incarnations) wrote on stderr. The reader tasks append.
    stderr_tx: Arc<watch::Sender<String>>,
    stderr: watch::Receiver<String>,
    readers: Vec<JoinHandle<()>>,
    /// The open-files soft limit the daemon starts with (see [`DaemonBuilder::soft_nofile`]).
    soft_nofile: Option<u64>,
}

impl Daemon {
    /// A daemon on `repo`'s state directory and home; see [`DaemonBuilder`].
    pub fn builder(repo: &TestRepo) -> DaemonBuilder {
        DaemonBuilder {
            root: repo.root().to_path_buf(),
            repo: repo.repo(),
            home: repo.home(),
            state_dir: repo.state_dir(),
            config: String::new(),
            socket: None,
            env: BTreeMap::from([(
                OsString::from("KUGETSU_SANDBOX_WRITE"),
                repo.side_dir().into_os_string(),
            )]),
            soft_nofile: None,
        }
    }

    fn spawn_process(&mut self) {
        let mut cmd = match self.soft_nofile {
            None => Command::new(bin_path("kugetsu")),
            Some(soft) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -S -n {soft} && exec \"$0\" \"$@\""))
                    .arg(bin_path("kugetsu"));
                sh
            }
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .current_dir(&self.root)
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn kugetsu serve");
        self.pid = child.id().expect("a fresh child has a pid");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&self.stderr_tx);
        if !sink.borrow().is_empty() {
            sink.send_modify(|s| {
                let _ = writeln!(s, "--- [test] kugetsu serve started again ---");
            });
        }
        self.readers.push(tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        sink.send_modify(|s| s.push_str(&text));
                    }
                }
            }
        }));
        self.child = Some(child);
    }

    /// Waits until the socket accepts connections; panics (with stderr) if the daemon exits
    /// first or takes longer than [`READY_TIMEOUT`].
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if UnixStream::connect(&self.socket).await.is_ok() {
                return;
            }
            if let Some(status) = self.try_status() {
                panic!(
                    "kugetsu serve exited ({status}) before accepting connections\n{}",
                    self.context(None)
                );
            }
            assert!(
                Instant::now() < deadline,
                "kugetsu serve did not accept connections on {} within {READY_TIMEOUT:?}\n{}",
                self.socket.display(),
                self.context(None)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The daemon's pid (of its current incarnation).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The test repository (for `-C`).
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// Room for test files outside the repository (the [`TestRepo`]'s root).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Everything the daemon printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.borrow().clone()
    }

    /// The current length of stderr, to wait for something printed after this point.
    pub fn stderr_mark(&self) -> usize {
        self.stderr.borrow().len()
    }

    /// Waits until stderr, after byte `since`, contains `needle`; returns that part.
    pub async fn wait_for_stderr(&self, since: usize, needle: &str, timeout: Duration) -> String {
        let mut rx = self.stderr.clone();
        let found = tokio::time::timeout(
            timeout,
            // The whole line: stderr may arrive mid-line.
            rx.wait_for(|s| {
                s.get(since..)
                    .is_some_and(|s| s.find(needle).is_some_and(|at| s[at..].contains('\n')))
            }),
        )
        .await;
        match found {
            Ok(Ok(text)) => text.get(since..).unwrap_or_default().to_owned(),
            _ => panic!(
                "the daemon did not print {needle:?} within {timeout:?}\n{}",
                self.context(None)
            ),
        }
    }

    /// Replaces the config file the way editors do (write a new file, rename it over).
    pub fn write_config(&self, toml: &str) {
        let tmp = self.config.with_extension("toml.new");
        std::fs::write(&tmp, toml).expect("write the new config");
        std::fs::rename(&tmp, &self.config).expect("rename the new config into place");
    }

    /// A `kugetsu` client command with the daemon's environment, cwd at the test root.
    pub fn kugetsu(&self) -> Kugetsu {
        Kugetsu::new(&self.root, &self.home)
            .envs(self.client_env())
            .state_dir_hint(self.state_dir.clone())
    }

    /// A raw `kugetsu` command (for what [`Kugetsu`] does not offer, e.g. another uid).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin_path("kugetsu"));
        cmd.current_dir(&self.root)
            .env_clear()
            .envs(self.client_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// The clients' environment: the daemon's without the instance marker (a client is not a
    /// process of the daemon).
    fn client_env(&self) -> impl Iterator<Item = (&OsString, &OsString)> {
        self.env
            .iter()
            .filter(|(k, _)| k.as_os_str() != INSTANCE_ENV)
    }

    /// Runs `kugetsu ARGS` (stdout kept as text) to its end.
    pub async fn cli<I, S>(&self, args: I) -> RunOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kugetsu().args(args).text_stdout().output().await
    }

    /// Runs `kugetsu ARGS`, whose stdout is `--json` events, to its end.
    pub async fn cli_events<I, S>(&self, args: I) -> RunOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kugetsu().args(args).output().await
    }

    /// `kugetsu submit --json -C <repo> ARGS PROMPT`; returns the task id.
    pub async fn submit(&self, args: &[&str], prompt: &str) -> String {
        let out = self
            .kugetsu()
            .args(["submit", "--json", "-C"])
            .arg(&self.repo)
            .args(args)
            .prompt(prompt)
            .text_stdout()
            .output()
            .await;
        if out.code != Some(0) {
            panic!(
                "kugetsu submit {args:?} exited with {:?}\nstdout: {}\nstderr: {}\n{}",
                out.code,
                out.stdout,
                out.stderr,
                self.context(None)
            );
        }
        let reply: Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("submit --json printed {:?}: {e}", out.stdout));
        reply["task"]
            .as_str()
            .unwrap_or_else(|| panic!("no task id in {reply}"))
            .to_owned()
    }

    /// `kugetsu ps --json`: the task summaries.
    pub async fn ps(&self) -> Vec<Value> {
        let out = self.cli(["ps", "--json"]).await;
        parse_ps(&out).unwrap_or_else(|e| panic!("{e}\n{}", self.context(None)))
    }

    /// `kugetsu logs ID --json`: the task's events so far (checked to parse as events).
    pub async fn logs(&self, id: &str) -> Events {
        let out = self.cli_events(["logs", "--json", id]).await;
        out.assert_code(0);
        out.events
    }

    /// A raw JSON-RPC connection.
    pub async fn rpc(&self) -> RpcClient {
        let mut client = RpcClient::connect(&self.socket).await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to {}: {e}\n{}",
                self.socket.display(),
                self.context(None)
            )
        });
        client.log = Some(self.stderr.clone());
        client
    }

    /// A connection subscribed to every task's events (from now on).
    pub async fn subscribe_all(&self) -> RpcClient {
        let mut client = self.rpc().await;
        client
            .call("subscribe", json!({}))
            .await
            .unwrap_or_else(|e| panic!("subscribe failed: {e}"));
        client
    }

    /// Follows task `id` (from its first event) until `finished`; returns the whole stream.
    pub async fn wait_finished(&self, id: &str, timeout: Duration) -> Events {
        let mut client = self.rpc().await;
        client
            .call("subscribe", json!({"task": id, "after_seq": 0}))
            .await
            .unwrap_or_else(|e| panic!("subscribe to {id} failed: {e}"));
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match client.try_next_event(left).await {
                Some(event) => {
                    let done = kind(&event) == "finished";
                    events.push(event);
                    if done {
                        return Events(events);
                    }
                }
                None => panic!(
                    "task {id} did not finish within {timeout:?}\n--- {:?}\n{}",
                    Events(events),
                    self.context(Some(id))
                ),
            }
        }
    }

    /// Starts polling `kugetsu ps --json` in the background.
    pub fn poll_ps(&self) -> PsPoller {
        let client = self.kugetsu().args(["ps", "--json"]).text_stdout();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let mut snapshots = Vec::new();
            loop {
                let out = client.clone().output().await;
                if let Ok(tasks) = parse_ps(&out) {
                    snapshots.push(tasks);
                }
                tokio::select! {
                    _ = &mut stopped => return snapshots,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        });
        PsPoller { stop, handle }
    }

    /// Sends `sig` to the daemon (as systemd's `kill` or a terminal would).
    pub fn signal(&self, sig: Signal) {
        signal::kill(pid(self.pid), sig).unwrap_or_else(|e| panic!("kill -{sig} the daemon: {e}"));
    }

    /// SIGKILLs the daemon and reaps it.
    pub async fn kill9(&mut self) {
        signal::kill(pid(self.pid), Signal::SIGKILL).expect("kill -9 the daemon");
        let status = self.wait_exit(WAIT).await;
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status}"
        );
    }

    /// Starts the daemon again on the same state, socket and config; waits until it is ready.
    pub async fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart() needs the previous daemon gone"
        );
        self.spawn_process();
        self.wait_ready().await;
    }

    /// Waits for the daemon to exit by itself; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("the daemon is running");
        let status = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.expect("wait for the daemon"),
            Err(_) => panic!(
                "the daemon did not exit within {timeout:?}\n{}",
                self.context(None)
            ),
        };
        self.child = None;
        // Let the reader take the last of stderr.
        if let Some(reader) = self.readers.pop() {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        status
    }

    /// The exit status if the daemon has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// Panics unless the daemon is still running.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.try_status() {
            panic!("the daemon died ({status})\n{}", self.context(None));
        }
    }

    /// Every live process of this daemon instance other than the daemon itself: workers,
    /// tools, and whatever an earlier incarnation left behind.
    pub fn processes(&self) -> Vec<ProcInfo> {
        let entry = format!("{INSTANCE_ENV}={}", self.instance);
        with_env_entry(entry.as_bytes())
            .into_iter()
            .filter(|p| p.pid != self.pid)
            .collect()
    }

    /// The processes of this instance that are not descendants of the running daemon.
    pub fn orphans(&self) -> Vec<ProcInfo> {
        let alive = self.child.is_some();
        self.processes()
            .into_iter()
            .filter(|p| !(alive && is_descendant(p.pid, self.pid)))
            .collect()
    }

    /// Polls until [`Daemon::orphans`] is empty; panics with them after `timeout`.
    pub async fn wait_no_orphans(&self, timeout: Duration) {
        self.wait_processes("orphaned", timeout, Self::orphans)
            .await;
    }

    /// Polls until no process of this instance but the daemon is left.
    pub async fn wait_no_processes(&self, timeout: Duration) {
        self.wait_processes("leftover", timeout, Self::processes)
            .await;
    }

    async fn wait_processes(
        &self,
        what: &str,
        timeout: Duration,
        find: fn(&Self) -> Vec<ProcInfo>,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let found = find(self);
            if found.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} processes still alive after {timeout:?} (daemon pid {}): {found:#?}",
                self.pid
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The daemon's stderr and, for `task`, its event log and worker log: for failure messages.
    pub fn context(&self, task: Option<&str>) -> String {
        let mut out = format!("--- daemon stderr ---\n{}", *self.stderr.borrow());
        if let Some(task) = task {
            let dir = self.state_dir.join("tasks").join(task);
            for file in ["events.jsonl", "worker.log"] {
                if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    let _ = writeln!(out, "--- {task}/{file} (tail) ---");
                    for line in tail.into_iter().rev() {
                        let _ = writeln!(out, "{line}");
                    }
                }
            }
        }
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = signal::kill(pid(self.pid), Signal::SIGKILL);
        }
        // Workers die with the daemon (PDEATHSIG); tools they orphaned may not: sweep them.
        for _ in 0..3 {
            let left = self.processes();
            if left.is_empty() {
                break;
            }
            for p in left {
                let _ = signal::kill(pid(p.pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for reader in &self.readers {
            reader.abort();
        }
    }
}

fn pid(raw: u32) -> Pid {
    Pid::from_raw(i32::try_from(raw).expect("pid fits i32"))
}

fn parse_ps(out: &RunOutput) -> Result<Vec<Value>, String> {
    if out.code != Some(0) {
        return Err(format!(
            "kugetsu ps --json exited with {:?}: {}",
            out.code, out.stderr
        ));
    }
    let value: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("ps --json printed {:?}: {e}", out.stdout))?;
    value["tasks"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("ps --json has no tasks array: {value}"))
}

/// A background poller of `kugetsu ps --json`; [`PsPoller::stop`] returns what it saw.
#[derive(Debug)]
pub struct PsPoller {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Vec<Vec<Value>>>,
}

impl PsPoller {
    /// Stops polling (after one last snapshot) and returns every snapshot, oldest first.
    pub async fn stop(self) -> PsHistory {
        let _ = self.stop.send(());
        let snapshots = self.handle.await.expect("the ps poller panicked");
        PsHistory { snapshots }
    }
}

/// What a [`PsPoller`] saw: one task list per successful `ps --json`.
#[derive(Debug, Clone)]
pub struct PsHistory {
    pub snapshots: Vec<Vec<Value>>,
}

impl PsHistory {
    /// The most tasks `running` at once in any snapshot.
    pub fn max_running(&self) -> usize {
        self.snapshots
            .iter()
            .map(|tasks| tasks.iter().filter(|t| t["status"] == "running").count())
            .max()
            .unwrap_or(0)
    }

    /// For each task, the index of the first snapshot where it was no longer `queued`.
    pub fn first_dequeued(&self) -> HashMap<String, usize> {
        let mut first = HashMap::new();
        for (i, tasks) in self.snapshots.iter().enumerate() {
            for task in tasks {
                if task["status"] != "queued"
                    && let Some(id) = task["id"].as_str()
                {
                    first.entry(id.to_owned()).or_insert(i);
                }
            }
        }
        first
    }

    /// Panics unless the tasks of `expected` left the queue in that order as far as the
    /// snapshots can tell: a task never appears started in a snapshot where one that should
    /// have started before it is still queued. (Tasks started between the same two snapshots
    /// are not ordered among themselves.)
    pub fn assert_start_order(&self, expected: &[String], names: &HashMap<String, String>) {
        let first = self.first_dequeued();
        let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_owned());
        for (i, earlier) in expected.iter().enumerate() {
            let Some(&a) = first.get(earlier) else {
                panic!(
                    "{} was never seen leaving the queue in {} snapshots",
                    name(earlier),
                    self.snapshots.len()
                );
            };
            for later in &expected[i + 1..] {
                if let Some(&b) = first.get(later) {
                    assert!(
                        a <= b,
                        "{} started (snapshot {b}) before {} (snapshot {a}), which should have \
                         started first; expected order: {:?}",
                        name(later),
                        name(earlier),
                        expected.iter().map(|id| name(id)).collect::<Vec<_>>()
                    );
                }
            }
        }
    }
}

/// A raw JSON-RPC 2.0 client: one message per line over the Unix socket.
#[derive(Debug)]
pub struct RpcClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    /// Messages read while looking for another one, oldest first.
    backlog: VecDeque<Value>,
    /// The daemon's stderr, for failure messages.
    log: Option<watch::Receiver<String>>,
}

impl RpcClient {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> std::io::Result<RpcClient> {
        let (read, writer) = UnixStream::connect(path).await?.into_split();
        Ok(RpcClient {
            reader: BufReader::new(read),
            writer,
            next_id: 1,
            backlog: VecDeque::new(),
            log: None,
        })
    }

    fn context(&self) -> String {
        match &self.log {
            Some(log) => format!("--- daemon stderr ---\n{}", *log.borrow()),
            None => String::new(),
        }
    }

    /// Writes `bytes` and a newline.
    pub async fn send_line(&mut self, bytes: &[u8]) {
        let mut line = Vec::with_capacity(bytes.len() + 1);
        line.extend_from_slice(bytes);
        line.push(b'\n');
        self.send_raw(&line).await;
    }

    /// Writes `bytes` as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("write to the daemon: {e}\n{}", self.context()));
        self.writer.flush().await.expect("flush to the daemon");
    }

    /// Sends a request; returns its id.
    pub async fn send(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_line(request.to_string().as_bytes()).await;
        id
    }

    /// Reads one message from the socket; `None` at end of file. Panics after `timeout`.
    async fn read_message(&mut self, timeout: Duration) -> Option<Value> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(timeout, self.reader.read_until(b'\n', &mut line)).await;
        match read {
            Err(_) => panic!(
                "no message from the daemon within {timeout:?}\n{}",
                self.context()
            ),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Ok(Err(e)) => panic!("read from the daemon: {e}"),
            Ok(Ok(0)) => None,
            Ok(Ok(_)) => Some(serde_json::from_slice(&line).unwrap_or_else(|e| {
                panic!(
                    "the daemon sent a line that is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&line)
                )
            })),
        }
    }

    /// Reads until a message satisfies `wanted` (the backlog first); others are kept.
    async fn find(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(i) = self.backlog.iter().position(&wanted) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {what} from the daemon within {timeout:?}; got {:?}\n{}",
                    self.backlog,
                    self.context()
                );
            }
            let message = self.read_message(left).await?;
            if wanted(&message) {
                return Some(message);
            }
            self.backlog.push_back(message);
        }
    }

    /// The next response (a message with an `id`, not a notification); panics at end of file.
    pub async fn next_response(&mut self) -> Value {
        self.find("response", WAIT, |m| m.get("method").is_none())
            .await
            .unwrap_or_else(|| panic!("the daemon closed the connection\n{}", self.context()))
    }

    /// The response to request `id`.
    pub async fn response(&mut self, id: u64) -> Value {
        self.find(&format!("response to {id}"), WAIT, |m| {
            m.get("method").is_none() && m["id"] == id
        })
        .await
        .unwrap_or_else(|| panic!("the daemon closed the connection\n{}", self.context()))
    }

    /// Like [`RpcClient::call`], but `None` instead of a panic when the daemon is gone (it
    /// died, or closed the connection).
    pub async fn try_call(&mut self, method: &str, params: Value) -> Option<Result<Value, Value>> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
            .to_string()
            .into_bytes();
        line.push(b'\n');
        self.writer.write_all(&line).await.ok()?;
        self.writer.flush().await.ok()?;
        let response = self
            .find(&format!("response to {id}"), WAIT, |m| {
                m.get("method").is_none() && m["id"] == id
            })
            .await?;
        Some(match (response.get("result"), response.get("error")) {
            (Some(result), None) => Ok(result.clone()),
            _ => Err(response.get("error").cloned().unwrap_or(Value::Null)),
        })
    }

    /// Calls `method`: its `result`, or its `error` object.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.send(method, params).await;
        let response = self.response(id).await;
        assert_eq!(response["jsonrpc"], "2.0", "{response}");
        match (response.get("result"), response.get("error")) {
            (Some(result), None) => Ok(result.clone()),
            (None, Some(error)) => Err(error.clone()),
            _ => panic!("a response needs exactly one of result and error: {response}"),
        }
    }

    /// The next `event` notification's envelope, or `None` when the connection ends first.
    /// Panics after `timeout`.
    pub async fn try_next_event(&mut self, timeout: Duration) -> Option<Value> {
        let message = self
            .find("event notification", timeout, |m| m["method"] == "event")
            .await?;
        assert_eq!(message["jsonrpc"], "2.0", "{message}");
        assert!(
            message.get("id").is_none(),
            "a notification has no id: {message}"
        );
        Some(message["params"].clone())
    }

    /// Reads event notifications until one satisfies `matches`; returns it.
    pub async fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_next_event(left).await {
                Some(event) if matches(&event) => return event,
                Some(_) => {}
                None => panic!("the connection ended before {what}\n{}", self.context()),
            }
        }
    }

    /// Whether the daemon closed the connection (reads and drops what is still coming).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut line = Vec::new();
            match tokio::time::timeout(left, self.reader.read_until(b'\n', &mut line)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// A live process found through `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub cmdline: String,
    /// Its `KUGETSU_SHADOW` (the task it belongs to), if any.
    pub shadow: Option<String>,
}

/// `(state, ppid)` of `pid` from `/proc/PID/stat`.
fn stat_of(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name, which may itself hold spaces.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every live (non-zombie) process whose environment holds the entry `entry` (`KEY=VALUE`).
pub fn with_env_entry(entry: &[u8]) -> Vec<ProcInfo> {
    kugetsu_os::process::processes_with_env(entry)
        .into_iter()
        .filter_map(|pid| {
            let (state, ppid) = stat_of(pid)?;
            if matches!(state, 'Z' | 'X') {
                return None;
            }
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let shadow = environ
                .split(|b| *b == 0)
                .find_map(|e| e.strip_prefix(b"KUGETSU_SHADOW="))
                .map(|v| String::from_utf8_lossy(v).into_owned());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
                .unwrap_or_default();
            Some(ProcInfo {
                pid,
                ppid,
                cmdline: cmdline.trim_end().to_owned(),
                shadow,
            })
        })
        .collect()
}

/// Whether `ancestor` is an ancestor of `pid`.
pub fn is_descendant(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        match stat_of(pid) {
            Some((_, ppid)) if ppid == ancestor => return true,
            Some((_, ppid)) if ppid > 1 => pid = ppid,
            _ => return false,
        }
    }
    false
}

/// Assistant turns for the `scripted` provider, written to a file.
#[derive(Debug, Clone, Default)]
pub struct Script {
    turns: Vec<Value>,
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    /// A turn saying `text` and calling bash with `command`.
    pub fn bash(mut self, text: &str, command: &str) -> Self {
        self.turns.push(json!({
            "text": text,
            "tool_calls": [{"name": "bash", "arguments": {"command": command}}],
        }));
        self
    }

    /// A final turn: `text`, no tool calls.
    pub fn text(mut self, text: &str) -> Self {
        self.turns.push(json!({"text": text, "tool_calls": []}));
        self
    }

    /// Writes the script to `path` (creating directories); returns the `-m` model string.
    pub fn write(&self, path: &Path) -> String {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create the script directory");
        }
        let text = json!({"turns": self.turns}).to_string();
        std::fs::write(path, text).expect("write the script");
        format!("scripted/{}", path.display())
    }
}

/// A file a bash tool waits for: the test opens the gate by creating it.
#[derive(Debug, Clone)]
pub struct Gate {
    path: PathBuf,
}

impl Gate {
    /// A closed gate at `dir/name`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        Gate { path }
    }

    /// A shell command that returns once the gate is open.
    pub fn wait_command(&self) -> String {
        format!(
            "while [ ! -e '{}' ]; do sleep 0.05; done",
            self.path.display()
        )
    }

    pub fn open(&self) {
        std::fs::write(&self.path, "open\n").expect("open the gate");
    }

    /// The file whose existence opens the gate.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

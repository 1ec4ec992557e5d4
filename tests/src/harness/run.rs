//! Running the real `kugetsu` binary: a command builder, a finished run, a live run.
//!
//! Children get a controlled environment (cleared, then `PATH`, a temporary `HOME`,
//! `KUGETSU_RETRY_BASE_MS=10` and whatever the test adds), their own process group (so a
//! timed-out run is killed whole), null stdin, and an overall timeout ([`RUN_TIMEOUT`]) after
//! which they are killed and the test fails with everything they printed.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::events::{Events, kind};
use crate::fake_llm::FakeLlm;

/// How long any one run may take before it is killed and the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of binary `name` (`kugetsu`, `kugetsu-worker`) in the cargo target directory.
///
/// The test executable lives in `<target>/<profile>/deps/`, the workspace binaries in
/// `<target>/<profile>/`; deriving one from the other honours `CARGO_TARGET_DIR` and the
/// profile. `cargo test --workspace` (or `cargo build --workspace`) builds them.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("the test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} does not exist: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// The `PATH` children get: the test's own, or a standard one.
pub(crate) fn path_var() -> OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into())
}

/// A `kugetsu` invocation being put together.
#[derive(Debug, Clone)]
pub struct Kugetsu {
    program: PathBuf,
    args: Vec<OsString>,
    /// Appended after every option.
    prompt: Option<String>,
    env: BTreeMap<OsString, OsString>,
    cwd: PathBuf,
    timeout: Duration,
    /// Where task directories are, to show `worker.log` when a run fails.
    state_dir: Option<PathBuf>,
    /// Whether stdout carries `--json` events (checked line by line) or text for a person.
    stdout: StdoutKind,
}

/// What a run prints on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutKind {
    /// One JSON event per line (`--json`): every line must parse.
    Events,
    /// Text for a person (the final result, a diff): kept as is.
    Text,
}

impl Kugetsu {
    /// `kugetsu` run in `cwd` with `HOME=home` and the base environment.
    pub fn new(cwd: &Path, home: &Path) -> Self {
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), path_var());
        env.insert("HOME".into(), home.as_os_str().to_owned());
        env.insert("KUGETSU_RETRY_BASE_MS".into(), "10".into());
        env.insert("RUST_BACKTRACE".into(), "1".into());
        Self {
            program: bin_path("kugetsu"),
            args: Vec::new(),
            prompt: None,
            env,
            cwd: cwd.to_path_buf(),
            timeout: RUN_TIMEOUT,
            state_dir: None,
            stdout: StdoutKind::Events,
        }
    }

    pub(crate) fn state_dir_hint(mut self, dir: PathBuf) -> Self {
        self.state_dir = Some(dir);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .insert(key.as_ref().to_owned(), value.as_ref().to_owned());
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env
                .insert(k.as_ref().to_owned(), v.as_ref().to_owned());
        }
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.remove(key.as_ref());
        self
    }

    /// `-m MODEL`.
    pub fn model(self, model: &str) -> Self {
        self.arg("-m").arg(model)
    }

    /// `-m` and the environment for talking to `server`.
    pub fn llm(self, server: &FakeLlm) -> Self {
        let model = server.model_arg();
        self.envs(server.env()).model(&model)
    }

    /// The prompt, passed after every option.
    pub fn prompt(mut self, prompt: impl Into<String>) -> Self {
        self.prompt = Some(prompt.into());
        self
    }

    /// Declares stdout to be text for a person rather than `--json` events.
    pub fn text_stdout(mut self) -> Self {
        self.stdout = StdoutKind::Text;
        self
    }

    /// Replaces [`RUN_TIMEOUT`] for this run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        if let Some(prompt) = &self.prompt {
            cmd.arg(prompt);
        }
        cmd.current_dir(&self.cwd)
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    /// A one-line description for failure messages.
    fn describe(&self) -> String {
        let mut s = String::from("kugetsu");
        for arg in &self.args {
            let _ = write!(s, " {}", arg.to_string_lossy());
        }
        if let Some(prompt) = &self.prompt {
            let _ = write!(s, " {prompt:?}");
        }
        s
    }

    /// Starts the run; watch it with [`LiveRun`].
    pub async fn spawn(self) -> LiveRun {
        let mut child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.describe()));
        let pid = child.id().expect("a fresh child has a pid");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout_task = tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr_text);
        let stderr_task = tokio::spawn(async move {
            let mut reader = BufReader::new(stderr);
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        let started = Instant::now();
        LiveRun {
            description: self.describe(),
            child,
            pid,
            lines,
            events: Vec::new(),
            stdout: String::new(),
            stderr: stderr_text,
            tasks: vec![stdout_task, stderr_task],
            started,
            deadline: started + self.timeout,
            state_dir: self.state_dir,
            stdout_kind: self.stdout,
            exited: false,
        }
    }

    /// Runs to the end (bounded by the run timeout) and returns what happened.
    pub async fn output(self) -> RunOutput {
        self.spawn().await.finish().await
    }
}

/// A running `kugetsu`, its events read as they arrive.
///
/// Dropping it (a failed assertion, say) kills the child's whole process group.
#[derive(Debug)]
pub struct LiveRun {
    description: String,
    child: Child,
    pid: u32,
    /// Lines of stdout, from the reader task.
    lines: mpsc::UnboundedReceiver<String>,
    events: Vec<Value>,
    stdout: String,
    stderr: Arc<Mutex<String>>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
    deadline: Instant,
    state_dir: Option<PathBuf>,
    stdout_kind: StdoutKind,
    /// Whether the child has been reaped (its pid, and so its group id, may be reused).
    exited: bool,
}

impl LiveRun {
    /// The pid (and process group id) of the `kugetsu` process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The events read so far.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The next event, or `None` once stdout is closed. Panics after `timeout` (or the run's
    /// overall deadline) and on a stdout line that is not a JSON event.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        assert_eq!(
            self.stdout_kind,
            StdoutKind::Events,
            "events are only read from --json runs"
        );
        let until = (Instant::now() + timeout).min(self.deadline);
        let wait = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, self.lines.recv()).await {
            Ok(Some(line)) => self.accept_line(&line),
            Ok(None) => None,
            Err(_) => {
                let context = self.context();
                panic!(
                    "no event within {:?} from {}\n{context}",
                    wait, self.description
                );
            }
        }
    }

    /// Keeps a stdout line; in an event stream, parses it (panicking on anything else).
    fn accept_line(&mut self, line: &str) -> Option<Value> {
        self.stdout.push_str(line);
        self.stdout.push('\n');
        if self.stdout_kind == StdoutKind::Text {
            return None;
        }
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "stdout line is not a JSON event ({e}): {line:?}\n{}",
                self.context()
            )
        });
        self.events.push(value.clone());
        Some(value)
    }

    /// Reads events until one satisfies `matches`; returns it. Panics after `timeout` or when
    /// stdout ends first.
    pub async fn wait_for_event(
        &mut self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&Value) -> bool,
    ) -> Value {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(event) if matches(&event) => return event,
                Some(_) => {}
                None => panic!("stdout ended before {what} arrived\n{}", self.context()),
            }
        }
    }

    /// Reads events until one of type `kind` arrives; returns it.
    pub async fn wait_for(&mut self, kind_: &str, timeout: Duration) -> Value {
        self.wait_for_event(kind_, timeout, |e| kind(e) == kind_)
            .await
    }

    /// Sends `signal` to the `kugetsu` process (not its group), as `kill -SIG PID` would.
    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.pid).expect("pid fits i32");
        signal::kill(Pid::from_raw(pid), signal)
            .unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
    }

    /// Reads every remaining event and waits for the process to exit, within the run's
    /// deadline; kills the process group and panics past it.
    pub async fn finish(mut self) -> RunOutput {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.accept_line(&line);
                }
                Ok(None) => break,
                Err(_) => self.timed_out("stdout to close"),
            }
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let status = match tokio::time::timeout(left, self.child.wait()).await {
            Ok(status) => status.expect("wait for kugetsu"),
            Err(_) => self.timed_out("the process to exit"),
        };
        self.exited = true;
        for task in std::mem::take(&mut self.tasks) {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left.max(Duration::from_secs(1)), task).await;
        }
        use std::os::unix::process::ExitStatusExt as _;
        RunOutput {
            description: self.description.clone(),
            code: status.code(),
            signal: status.signal(),
            events: Events(std::mem::take(&mut self.events)),
            stdout: std::mem::take(&mut self.stdout),
            stderr: self.stderr(),
            duration: self.started.elapsed(),
            state_dir: self.state_dir.clone(),
        }
    }

    fn timed_out(&mut self, what: &str) -> ! {
        self.kill_group();
        let context = self.context();
        panic!(
            "{} did not finish within {:?} (waiting for {what}); killed it\n{context}",
            self.description,
            self.deadline - self.started
        );
    }

    fn kill_group(&mut self) {
        if !self.exited
            && let Ok(pid) = i32::try_from(self.pid)
        {
            let _ = signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    fn context(&self) -> String {
        let events = Events(self.events.clone());
        let task = events
            .0
            .first()
            .and_then(|e| e.get("task"))
            .and_then(Value::as_str);
        context(&self.stderr(), &events, self.state_dir.as_deref(), task)
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// How a run ended and everything it printed.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub description: String,
    /// The exit code, `None` when a signal ended the process.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub events: Events,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
    state_dir: Option<PathBuf>,
}

impl RunOutput {
    /// Panics, showing stderr, the events and the worker log, unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        if self.code != Some(code) {
            panic!(
                "{} exited with {:?} (signal {:?}), expected {code}\n{}",
                self.description,
                self.code,
                self.signal,
                self.context()
            );
        }
        self
    }

    /// The `finished` event (last, exactly once), after checking the stream is well formed.
    pub fn finished(&self) -> &Value {
        self.events.assert_well_formed();
        self.events.finished()
    }

    /// Panics with context unless `finished.status` is `status`.
    pub fn assert_status(&self, status: &str) -> &Self {
        let got = self
            .events
            .0
            .last()
            .filter(|e| kind(e) == "finished")
            .and_then(|e| e.get("status"))
            .and_then(Value::as_str);
        if got != Some(status) {
            panic!(
                "{}: finished.status is {got:?}, expected {status:?}\n{}",
                self.description,
                self.context()
            );
        }
        self
    }

    /// The task id of the run's events.
    pub fn task_id(&self) -> &str {
        self.events.task_id()
    }

    /// stderr, events and the tail of `worker.log`, for failure messages.
    pub fn context(&self) -> String {
        let task = self
            .events
            .0
            .first()
            .and_then(|e| e.get("task"))
            .and_then(Value::as_str);
        context(&self.stderr, &self.events, self.state_dir.as_deref(), task)
    }
}

fn context(stderr: &str, events: &Events, state_dir: Option<&Path>, task: Option<&str>) -> String {
    let mut out = format!("--- stderr ---\n{stderr}\n--- {events:?}");
    if let (Some(state), Some(task)) = (state_dir, task) {
        let log = state.join("tasks").join(task).join("worker.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let _ = writeln!(out, "--- {} (tail) ---", log.display());
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

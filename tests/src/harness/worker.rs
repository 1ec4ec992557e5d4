//! Driving the real `kugetsu-worker` over its JSON-lines channel, the way the supervisor
//! does, for what `kugetsu run` cannot reach (steering at a chosen moment, a `resume: true`
//! start on a journal the test prepared).
//!
//! ```ignore
//! let mut worker = repo.worker().llm(&server).spawn().await;   // waits for hello
//! worker.start(repo.worker_task("Do it.", &server), false).await;
//! worker.wait_for("tool_start", Duration::from_secs(10)).await;
//! worker.steer("Also update the README.").await;
//! let out = worker.finish().await;                              // through `finished`
//! ```
//!
//! The worker runs with a cleared environment (plus `PATH`, `HOME`,
//! `KUGETSU_RETRY_BASE_MS=10` and what the test adds), its cwd where the test says, stderr
//! appended to a log file, and its own process group. Dropping a [`WorkerProcess`] kills
//! that group; its tools die with it through PDEATHSIG.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kugetsu_protocol::{SupervisorMessage, TaskSpec};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::run::{RUN_TIMEOUT, bin_path, path_var};
use crate::events::kind;
use crate::fake_llm::FakeLlm;

/// How long a worker may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A `kugetsu-worker` invocation being put together.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    program: PathBuf,
    cwd: PathBuf,
    env: BTreeMap<OsString, OsString>,
    /// Where stderr is appended, as the supervisor does with `worker.log`.
    log: PathBuf,
    timeout: Duration,
}

impl WorkerCommand {
    /// The worker run in `cwd` with `HOME=home`, stderr appended to `log`.
    pub fn new(cwd: &Path, home: &Path, log: &Path) -> Self {
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), path_var());
        env.insert("HOME".into(), home.as_os_str().to_owned());
        env.insert("KUGETSU_RETRY_BASE_MS".into(), "10".into());
        env.insert("RUST_BACKTRACE".into(), "1".into());
        Self {
            program: bin_path("kugetsu-worker"),
            cwd: cwd.to_path_buf(),
            env,
            log: log.to_path_buf(),
            timeout: RUN_TIMEOUT,
        }
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .insert(key.as_ref().to_owned(), value.as_ref().to_owned());
        self
    }

    /// The environment for talking to `server` (base URL and key).
    pub fn llm(mut self, server: &FakeLlm) -> Self {
        for (key, value) in server.env() {
            self.env.insert(key.into(), value.into());
        }
        self
    }

    /// Replaces [`RUN_TIMEOUT`] as the bound on the whole life of the worker.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the worker and waits for its `hello`.
    pub async fn spawn(self) -> WorkerProcess {
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir).expect("create the worker log's directory");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the worker log");
        let mut child = Command::new(&self.program)
            .current_dir(&self.cwd)
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
        let pid = child.id().expect("a fresh child has a pid");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut worker = WorkerProcess {
            child,
            pid,
            stdin: Some(stdin),
            lines,
            hello: Value::Null,
            messages: Vec::new(),
            log: self.log,
            deadline: Instant::now() + self.timeout,
            exited: false,
        };
        let hello = worker
            .next_message(HELLO_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("the worker closed stdout before hello\n{}", worker.log()));
        assert_eq!(
            kind(&hello),
            "hello",
            "the first line is not hello: {hello}"
        );
        worker.hello = hello;
        worker.messages.clear();
        worker
    }
}

/// A running `kugetsu-worker`, its stdout read as it arrives.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    pid: u32,
    /// The channel to the worker; `None` once closed.
    stdin: Option<ChildStdin>,
    /// Lines of stdout, from the reader task.
    lines: mpsc::UnboundedReceiver<String>,
    hello: Value,
    /// Every message after `hello` read so far, heartbeats included.
    messages: Vec<Value>,
    log: PathBuf,
    deadline: Instant,
    /// Whether the child has been reaped (its pid may be reused from then on).
    exited: bool,
}

/// How a worker ended and what it said.
#[derive(Debug, Clone)]
pub struct WorkerOutput {
    pub status: ExitStatus,
    /// Every event (no hello, no heartbeats), in order; the last is `finished`.
    pub events: Vec<Value>,
    /// `worker.log` as it is now.
    pub log: String,
}

impl WorkerOutput {
    /// The `finished` event; panics unless it is there and last.
    pub fn finished(&self) -> &Value {
        let last = self.events.last().unwrap_or_else(|| panic!("no events"));
        assert_eq!(
            kind(last),
            "finished",
            "the last event is not finished: {self:#?}"
        );
        last
    }

    /// The `type` of every event, in order.
    pub fn types(&self) -> Vec<&str> {
        self.events.iter().map(kind).collect()
    }

    /// Every event of type `kind_`.
    pub fn of_type(&self, kind_: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| kind(e) == kind_).collect()
    }
}

impl WorkerProcess {
    /// The worker's pid (and process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its `hello` message.
    pub fn hello(&self) -> &Value {
        &self.hello
    }

    /// Every event read so far (no heartbeats), in order.
    pub fn events(&self) -> Vec<&Value> {
        self.messages
            .iter()
            .filter(|m| kind(m) != "heartbeat")
            .collect()
    }

    /// The `type` of every event read so far, in order.
    pub fn types(&self) -> Vec<&str> {
        self.events().into_iter().map(kind).collect()
    }

    /// Writes one message to the worker's stdin.
    pub async fn send(&mut self, message: &SupervisorMessage) {
        self.send_all(std::slice::from_ref(message)).await;
    }

    /// Writes `messages` to the worker's stdin in one write: they are all there before the
    /// worker reads the first.
    pub async fn send_all(&mut self, messages: &[SupervisorMessage]) {
        let mut bytes = Vec::new();
        for message in messages {
            bytes.extend(serde_json::to_vec(message).expect("serialize a supervisor message"));
            bytes.push(b'\n');
        }
        let stdin = self.stdin.as_mut().expect("stdin is still open");
        stdin
            .write_all(&bytes)
            .await
            .unwrap_or_else(|e| panic!("write to the worker: {e}"));
        stdin.flush().await.expect("flush the worker's stdin");
    }

    /// Sends `start`.
    pub async fn start(&mut self, task: TaskSpec, resume: bool) {
        self.send(&SupervisorMessage::Start {
            task: Box::new(task),
            resume,
        })
        .await;
    }

    /// Sends `start` and, in the same write, `steer` for each of `steers`: what the
    /// supervisor does when it restarts a worker with steers the dead one never delivered.
    pub async fn start_with_steers(&mut self, task: TaskSpec, resume: bool, steers: &[&str]) {
        let mut messages = vec![SupervisorMessage::Start {
            task: Box::new(task),
            resume,
        }];
        messages.extend(steers.iter().map(|text| SupervisorMessage::Steer {
            text: (*text).to_owned(),
        }));
        self.send_all(&messages).await;
    }

    /// Sends `steer {text}`.
    pub async fn steer(&mut self, text: &str) {
        self.send(&SupervisorMessage::Steer {
            text: text.to_owned(),
        })
        .await;
    }

    /// Sends `proceed {call_id}`: the call may run (a task whose tools are gated).
    pub async fn proceed(&mut self, call_id: &str) {
        self.send(&SupervisorMessage::Proceed {
            call_id: call_id.to_owned(),
        })
        .await;
    }

    /// Closes the worker's stdin, as a supervisor that went away does.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next message (heartbeats included), or `None` once stdout is closed. Panics after
    /// `timeout` (or the worker's overall deadline) and on a line that is not JSON.
    pub async fn next_message(&mut self, timeout: Duration) -> Option<Value> {
        let until = (Instant::now() + timeout).min(self.deadline);
        let wait = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, self.lines.recv()).await {
            Ok(Some(line)) => {
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!(
                        "worker stdout line is not JSON ({e}): {line:?}\n{}",
                        self.log()
                    )
                });
                self.messages.push(value.clone());
                Some(value)
            }
            Ok(None) => None,
            Err(_) => panic!(
                "no message from the worker within {wait:?}; events so far: {:#?}\n{}",
                self.events(),
                self.log()
            ),
        }
    }

    /// Reads messages until an event satisfies `matches`; returns it. Panics after `timeout`
    /// or when stdout ends first.
    pub async fn wait_for_event(
        &mut self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&Value) -> bool,
    ) -> Value {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.next_message(left).await {
                Some(message) if kind(&message) != "heartbeat" && matches(&message) => {
                    return message;
                }
                Some(_) => {}
                None => panic!(
                    "worker stdout ended before {what}; events: {:#?}\n{}",
                    self.events(),
                    self.log()
                ),
            }
        }
    }

    /// Reads messages until an event of type `kind_` arrives; returns it.
    pub async fn wait_for(&mut self, kind_: &str, timeout: Duration) -> Value {
        self.wait_for_event(kind_, timeout, |e| kind(e) == kind_)
            .await
    }

    /// Kills the worker with SIGKILL, as a crash would, and waits until it is reaped.
    pub async fn kill(&mut self) {
        if self.exited {
            return;
        }
        let pid = i32::try_from(self.pid).expect("pid fits i32");
        let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        self.wait().await;
    }

    /// Waits for the worker to exit, within its deadline.
    async fn wait(&mut self) -> ExitStatus {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let status = match tokio::time::timeout(left, self.child.wait()).await {
            Ok(status) => status.expect("wait for the worker"),
            Err(_) => {
                self.kill_group();
                panic!(
                    "the worker did not exit in time; events: {:#?}\n{}",
                    self.events(),
                    self.log()
                );
            }
        };
        self.exited = true;
        status
    }

    /// Reads every remaining message and waits for the worker to exit (stdin stays open, as
    /// the supervisor keeps it: closing it would cancel the task).
    pub async fn finish(mut self) -> WorkerOutput {
        while self
            .next_message(self.deadline.saturating_duration_since(Instant::now()))
            .await
            .is_some()
        {}
        let status = self.wait().await;
        WorkerOutput {
            status,
            events: self.events().into_iter().cloned().collect(),
            log: self.log(),
        }
    }

    /// The worker's stderr log so far.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("--- {} ---\n{text}", self.log.display())
    }

    fn kill_group(&mut self) {
        if !self.exited
            && let Ok(pid) = i32::try_from(self.pid)
        {
            let _ = signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// A task for a worker driven by a test: `max_turns` 20, no deadline, the window and
/// compaction model left to the worker's defaults.
pub fn task_spec(id: &str, prompt: &str, model: &str, task_dir: &Path) -> TaskSpec {
    TaskSpec {
        id: id.to_owned(),
        prompt: prompt.to_owned(),
        model: model.to_owned(),
        max_turns: 20,
        deadline_unix_ms: None,
        task_dir: task_dir.display().to_string(),
        context_window: None,
        compaction_model: None,
        stream_timeout_ms: None,
        mem_limit_bytes: None,
        sandbox: None,
        secrets: Default::default(),
        governed: false,
        budget_tokens: None,
        budget_usd: None,
        prices: Default::default(),
        mcp: Vec::new(),
        tool_gate: false,
    }
}

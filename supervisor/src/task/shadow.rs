//! One running worker process: spawning it, the handshake, and the channel to it.
//!
//! Guarantees, and how they are kept:
//! - The worker runs in its own process group with `PDEATHSIG` (see
//!   [`kugetsu_os::process::contain`]): a terminal's Ctrl-C reaches the supervisor only
//!   (which turns it into `cancel`), and a supervisor killed with `kill -9` takes the worker with it.
//! - stdin and stdout are the JSON-lines channel; stderr goes to `worker.log`, so nothing the
//!   worker prints by accident can corrupt the channel or the user's terminal.
//! - Dropping a [`Shadow`] SIGKILLs the worker's process group.
//! - The worker's `oom_score_adj` is raised above ours so the kernel's OOM killer picks a
//!   shadow before the supervisor.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use kugetsu_os::process::{ProcessGroup, contain};
use kugetsu_protocol::{
    DecodeError, HELLO_TIMEOUT, LineReader, PROTOCOL_VERSION, SupervisorMessage, TaskSpec,
    WorkerMessage, encode,
};
use nix::sys::signal::Signal;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The environment variable naming the task a process belongs to.
pub const SHADOW_ENV: &str = "KUGETSU_SHADOW";

/// The `oom_score_adj` given to workers (the supervisor keeps its own, lower one).
pub const WORKER_OOM_SCORE_ADJ: i32 = 500;

/// Environment variables a worker must not inherit: they belong to the supervisor's service
/// manager, and a child that used them would speak for the supervisor.
const SUPERVISOR_ONLY_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    // The cluster's connection string (it may carry a password): only nodes reach the database.
    "KUGETSU_CLUSTER",
    "PGPASSWORD",
    "PGPASSFILE",
];

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No worker binary was found.
    #[error(
        "cannot find kugetsu-worker next to {exe} and KUGETSU_WORKER is not set (reinstall kugetsu)"
    )]
    NotFound { exe: String },
    /// The process could not be started.
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The worker's log could not be opened.
    #[error("cannot open the worker log {path}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The worker did not complete the handshake.
    #[error("the worker failed its handshake: {0}")]
    Handshake(String),
}

/// Where the worker binary is: beside our own executable, else `$KUGETSU_WORKER`.
pub fn find_worker() -> Result<PathBuf, SpawnError> {
    let exe = std::env::current_exe().ok();
    if let Some(candidate) = exe
        .as_deref()
        .and_then(Path::parent)
        .map(|dir| dir.join("kugetsu-worker"))
        .filter(|p| p.is_file())
    {
        return Ok(candidate);
    }
    if let Some(path) = std::env::var_os("KUGETSU_WORKER").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    Err(SpawnError::NotFound {
        exe: exe.map_or_else(|| "kugetsu".to_owned(), |p| p.display().to_string()),
    })
}

/// What the supervisor hears from a worker.
#[derive(Debug)]
pub enum FromWorker {
    /// A decoded message.
    Message(WorkerMessage),
    /// A line that could not be decoded (it is skipped; later lines still arrive).
    BadLine(String),
}

/// Handle to a running worker. Dropping it kills the worker's process group.
#[derive(Debug)]
pub struct Shadow {
    /// The worker process; `kill_on_drop` is the last line of defence.
    child: Child,
    /// The worker's process group (the worker leads it).
    group: ProcessGroup,
    /// The worker's pid, as reported in `started`.
    pub pid: u32,
    /// Messages for the writer task, which owns the worker's stdin. A channel, not the pipe
    /// itself, so a worker that stops reading can never block the supervisor.
    to_worker: mpsc::UnboundedSender<SupervisorMessage>,
    /// `KUGETSU_SHADOW=<task id>`: the environment entry every process of this shadow has.
    marker: Vec<u8>,
    /// How the worker exited, once it is reaped. From then on its pid and group id may be
    /// reused by unrelated processes, so nothing may be signalled through them.
    exit: Option<ExitStatus>,
    /// Marks the worker as waited for by this handle (the daemon's orphan reaper skips it).
    _owned: kugetsu_os::process::Owned,
}

impl Shadow {
    /// Starts `program` in `workdir`, completes the handshake and sends `start`.
    ///
    /// Returns the handle and the stream of what the worker says after its hello.
    pub async fn spawn(
        program: &Path,
        workdir: &Path,
        log: &Path,
        task: TaskSpec,
        resume: bool,
        cgroup_procs: Option<&Path>,
    ) -> Result<(Shadow, mpsc::UnboundedReceiver<FromWorker>), SpawnError> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| SpawnError::Log {
                path: log.display().to_string(),
                source,
            })?;
        let mut command = Command::new(program);
        command
            .current_dir(workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        // Nothing secret in the worker's environment, which its tools could read through
        // /proc: provider keys travel in the task spec instead.
        command
            .env_clear()
            .envs(kugetsu_os::env::scrubbed(std::env::vars_os()));
        for key in SUPERVISOR_ONLY_ENV {
            command.env_remove(key);
        }
        if let Some(procs) = cgroup_procs {
            kugetsu_os::cgroup::join_in_pre_exec(&mut command, procs).map_err(|source| {
                SpawnError::Spawn {
                    program: program.display().to_string(),
                    source,
                }
            })?;
        }
        // Inherited by every process the shadow starts, so leftovers can be found later.
        command.env(SHADOW_ENV, &task.id);
        if let Some(cluster) = crate::cluster::active() {
            command.env(crate::cluster::NODE_ENV, &cluster.node_id);
        }
        contain(&mut command);
        let mut child = command.spawn().map_err(|source| SpawnError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let owned = kugetsu_os::process::own(pid);
        let group = ProcessGroup::of_leader(pid)
            .ok_or_else(|| SpawnError::Handshake("the worker exited at once".to_owned()))?;
        set_oom_score_adj(pid, WORKER_OOM_SCORE_ADJ);

        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => (stdin, stdout),
            _ => return Err(SpawnError::Handshake("no pipes to the worker".to_owned())),
        };
        let (to_worker, writer_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_to_worker(stdin, writer_rx));
        let (events_tx, mut events) = mpsc::unbounded_channel();
        tokio::spawn(read_from_worker(stdout, events_tx));

        let mut shadow = Shadow {
            child,
            group,
            pid,
            to_worker,
            marker: format!("{SHADOW_ENV}={}", task.id).into_bytes(),
            exit: None,
            _owned: owned,
        };
        let hello = tokio::time::timeout(HELLO_TIMEOUT, events.recv()).await;
        let failure = match hello {
            Ok(Some(FromWorker::Message(WorkerMessage::Hello {
                protocol, pid: _, ..
            }))) if protocol == PROTOCOL_VERSION => None,
            Ok(Some(FromWorker::Message(WorkerMessage::Hello {
                protocol, version, ..
            }))) => Some(format!(
                "worker {version} speaks protocol {protocol}, this supervisor speaks {PROTOCOL_VERSION}"
            )),
            Ok(Some(FromWorker::Message(other))) => Some(format!("expected hello, got {other:?}")),
            Ok(Some(FromWorker::BadLine(line))) => Some(format!("expected hello, got {line}")),
            Ok(None) => {
                let status = shadow.wait_for_exit(Duration::from_secs(2)).await;
                Some(format!(
                    "the worker exited before saying hello ({}); see {}",
                    status.map_or_else(|| "still running".to_owned(), describe_exit),
                    log.display()
                ))
            }
            Err(_) => Some(format!("no hello within {HELLO_TIMEOUT:?}")),
        };
        if let Some(reason) = failure {
            shadow.kill();
            return Err(SpawnError::Handshake(reason));
        }
        shadow.send(SupervisorMessage::Start {
            task: Box::new(task),
            resume,
        });
        Ok((shadow, events))
    }

    fn send(&self, message: SupervisorMessage) {
        let _ = self.to_worker.send(message);
    }

    /// Asks the worker to stop its task and report `finished` with status `cancelled`.
    pub fn cancel(&self) {
        self.send(SupervisorMessage::Cancel);
    }

    /// Answers the worker's permit request `id`.
    pub fn answer_permit(&self, id: u64, answer: crate::govern::Answer) {
        self.send(match answer {
            crate::govern::Answer::Grant => SupervisorMessage::Grant { id },
            crate::govern::Answer::Deny { reason, pause } => {
                SupervisorMessage::Deny { id, reason, pause }
            }
        });
    }

    /// Hands a steering message to the worker.
    pub fn steer(&self, text: String) {
        self.send(SupervisorMessage::Steer { text });
    }

    /// Lets the worker's tool call `call_id` run (a task whose tools are gated).
    pub fn proceed(&self, call_id: String) {
        self.send(SupervisorMessage::Proceed { call_id });
    }

    /// Asks the worker to exit without `finished`; the task stays resumable.
    pub fn shutdown(&self) {
        self.send(SupervisorMessage::Shutdown);
    }

    /// Kills every process this shadow started that is still alive other than the worker
    /// (e.g. tool processes orphaned by a killed worker) and reaps those adopted by us.
    pub fn kill_leftovers(&self) {
        kill_marked(&self.marker, Some(self.pid));
    }

    /// SIGKILLs the worker's whole process group (while its id is still ours).
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            self.group.signal(Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
    }

    /// Waits up to `limit` for the worker to exit.
    pub async fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = tokio::time::timeout(limit, self.child.wait())
                .await
                .ok()
                .and_then(Result::ok);
        }
        self.exit
    }

    /// Waits up to `grace` for the worker to exit, then kills it and reaps it.
    pub async fn finish(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.wait_for_exit(grace).await {
            return Some(status);
        }
        self.kill();
        self.exit = self.child.wait().await.ok();
        self.exit
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        // Once the worker is reaped its group id may belong to someone else: leave it.
        if self.exit.is_none() {
            self.group.signal(Signal::SIGKILL);
        }
    }
}

/// Kills every process carrying task `id`'s `KUGETSU_SHADOW` marker: what an earlier worker
/// of the task (of this supervisor, or of one that was killed) left running. Call it before
/// a resumed worker starts, so nothing old works in the worktree beside it.
///
/// On a node of a cluster, only this node's processes of the task are killed (another node on
/// the same machine may run the task now).
pub fn kill_task_leftovers(id: &str) -> usize {
    kill_marked(format!("{SHADOW_ENV}={id}").as_bytes(), None)
}

/// Kills the processes carrying `marker` (but `except`). On a cluster node, only those that
/// also carry this node's `KUGETSU_NODE` marker: another node on the same machine may run
/// the same task now, and its processes are not ours.
fn kill_marked(marker: &[u8], except: Option<u32>) -> usize {
    let node =
        crate::cluster::active().map(|c| format!("{}={}", crate::cluster::NODE_ENV, c.node_id));
    let mut killed = 0;
    // A killed process's child may be mid-fork: look again until a round finds nothing.
    for _ in 0..4 {
        let found = match &node {
            Some(node) => kugetsu_os::process::processes_with_envs(&[marker, node.as_bytes()]),
            None => kugetsu_os::process::processes_with_env(marker),
        };
        let leftovers: Vec<u32> = found
            .into_iter()
            .filter(|&pid| Some(pid) != except)
            .collect();
        if leftovers.is_empty() {
            break;
        }
        killed += leftovers.len();
        kugetsu_os::process::kill_pids(&leftovers);
        kugetsu_os::process::reap(&leftovers, Duration::from_millis(500));
    }
    killed
}

/// Describes how a process ended, e.g. `exit status 3` or `killed by SIGKILL`.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let name = Signal::try_from(signal).map_or_else(|_| signal.to_string(), |s| s.to_string());
        format!("killed by {name}")
    } else {
        format!("exit status {}", status.code().unwrap_or(-1))
    }
}

fn set_oom_score_adj(pid: u32, value: i32) {
    // Best effort: raising a child's score needs no privilege, but /proc may be read-only.
    let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), value.to_string());
}

async fn write_to_worker(
    mut stdin: tokio::process::ChildStdin,
    mut rx: mpsc::UnboundedReceiver<SupervisorMessage>,
) {
    while let Some(message) = rx.recv().await {
        if stdin.write_all(&encode(&message)).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
    // All senders gone: closing stdin tells the worker nobody is listening.
}

async fn read_from_worker(
    stdout: tokio::process::ChildStdout,
    tx: mpsc::UnboundedSender<FromWorker>,
) {
    let mut reader = LineReader::new(BufReader::new(stdout));
    while let Some(item) = reader.next::<WorkerMessage>().await {
        let forwarded = match item {
            Ok(message) => FromWorker::Message(message),
            Err(DecodeError::Io { .. }) => break,
            Err(e) => FromWorker::BadLine(kugetsu_protocol::error_chain(&e)),
        };
        if tx.send(forwarded).is_err() {
            break;
        }
    }
}

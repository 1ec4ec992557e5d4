//! `bash {command, timeout_s?}`: a shell command in the worktree, contained and capped.
//!
//! What the command gets, and why:
//! - `bash -c COMMAND` (`sh -c` where bash is missing), cwd = the worktree root, `PWD` set to
//!   it so `pwd` prints a path the other tools accept.
//! - stdin is `/dev/null`: nobody can answer a prompt, so a command waiting for input should
//!   see end-of-file at once instead of hanging until the timeout. `GIT_TERMINAL_PROMPT=0`
//!   and `PAGER=cat` stop git and friends from asking or paging.
//! - stdout and stderr share one pipe, so the model sees them interleaved as a terminal would.
//! - The worker's environment minus secrets ([`super::env`]), plus the call tag ([`super::reap`]).
//! - Its own process group, with PDEATHSIG ([`kugetsu_os::process::contain`]).
//! - The shadow's sandbox ([`crate::sandbox`]), entered by the tool guard before the shell
//!   starts; `TMPDIR` (and `TMP`, `TEMP`) point at the task's private temp dir. A policy
//!   without a guard to apply it is refused rather than run unconfined.
//!
//! How it ends: the command exits (then whatever it left running, `&` jobs or `setsid`
//! daemons, is killed), or the timeout (default 120 s) passes (SIGTERM to the group, 2 s of
//! grace, then SIGKILL to everything), or the shadow goes over its memory limit while the
//! command runs (SIGKILL to everything at once; measured every 100 ms by [`MemoryWatch`] when
//! the context has a limit), or the future is dropped (SIGKILL to everything, by
//! [`CallProcesses`]'s drop). The output is streamed in full to `<output_dir>/<call_id>.log`;
//! the model gets the first and last 12 KiB with a line saying how much was left out and where
//! the whole is, then a line with the exit code, the signal, or why the command was killed.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncReadExt as _;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::args::Args;
use super::cap::HeadTail;
use super::context::ToolContext;
use super::memory::{Baseline, MemoryWatch, Usage, human_size};
use super::outcome::{MemoryExceeded, ToolError, ToolOutput};
use super::process;
use super::reap::{CallProcesses, CallTag, TAG_VAR};
use crate::conversation::ToolSpec;
use kugetsu_os::process::ProcessGroup;

/// Seconds a command may run when the model gives no `timeout_s`.
const DEFAULT_TIMEOUT_S: f64 = 120.0;
/// The longest timeout accepted; larger values are lowered to it.
const MAX_TIMEOUT_S: f64 = 24.0 * 3600.0;
/// Time between SIGTERM and SIGKILL on timeout.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long to keep reading output once everything was killed (a process that escaped may
/// hold the pipe open forever).
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(1);
/// How long to wait for a killed shell to be reaped (it could be stuck in the kernel).
const REAP_WAIT: Duration = Duration::from_secs(5);
/// Bytes shown from the start of the output.
const HEAD_BYTES: usize = 12 * 1024;
/// Bytes shown from the end of the output.
const TAIL_BYTES: usize = 12 * 1024;
/// The log on disk stops here, so a runaway command cannot fill the disk.
const LOG_LIMIT: u64 = 64 * 1024 * 1024;

/// The schema offered to the model.
pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: std::borrow::Cow::Borrowed("bash"),
        description: std::borrow::Cow::Borrowed(
            "Run a shell command with `bash -c` in the worktree root. stdin is \
            closed (no interactive input); stdout and stderr are merged. The command is \
            killed, with everything it started, after `timeout_s` seconds (default 120); \
            background processes still running when it exits are killed too, and so is a \
            command that takes the agent over its memory limit. Long output keeps its first \
            and last 12 KiB; the full output is saved to a file whose path is given. Ends \
            with the exit code.",
        ),
        parameters: json!({
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The shell command to run."},
                "timeout_s": {"type": "number", "exclusiveMinimum": 0,
                              "description": "Seconds before the command is killed (default 120)."}
            },
            "required": ["command"],
            "additionalProperties": false
        }),
    }
}

/// Runs the command the arguments give, with the worker's environment (minus secrets).
pub(crate) async fn run(
    ctx: &ToolContext,
    call_id: &str,
    args: &serde_json::Value,
) -> Result<ToolOutput, ToolError> {
    run_with_env(ctx, call_id, args, std::env::vars_os()).await
}

/// Runs the command with `vars` (minus secrets) as the environment it starts from.
pub(crate) async fn run_with_env<I>(
    ctx: &ToolContext,
    call_id: &str,
    args: &serde_json::Value,
    vars: I,
) -> Result<ToolOutput, ToolError>
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    let args = Args::new(args)?;
    let command = args.required_str("command")?;
    if command.trim().is_empty() {
        return Err(ToolError::invalid("command", "is empty"));
    }
    let timeout_s = args
        .optional_seconds("timeout_s")?
        .unwrap_or(DEFAULT_TIMEOUT_S)
        .min(MAX_TIMEOUT_S);
    if !ctx.root.is_dir() {
        return Err(ToolError::Failed(format!(
            "the worktree `{}` does not exist any more",
            ctx.root.display()
        )));
    }

    let tag = CallTag::new();
    let mut env = process::environment(ctx, vars)?;
    env.extend([
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ("PAGER".into(), "cat".into()),
        ("PWD".into(), ctx.root.clone().into_os_string()),
        (TAG_VAR.into(), tag.value().into()),
    ]);
    let log = Log::create(&ctx.output_dir, call_id);
    // Listed before the shell exists, so nothing in it can be the call's.
    let baseline = ctx.mem_limit.map(|limit| (limit, Baseline::take()));
    let (child, output) = spawn(&ctx.root, command, &env, ctx.guard.as_deref())?;
    let memory =
        baseline.map(|(limit, baseline)| MemoryWatch::start(limit, baseline, child.id(), &tag));
    let group = child.id().and_then(ProcessGroup::of_leader);
    let mut running = Running {
        processes: CallProcesses::new(group, tag),
        memory,
        child,
        output,
        eof: false,
        buf: vec![0; 16 * 1024],
        capture: HeadTail::new(HEAD_BYTES, TAIL_BYTES),
        log,
    };
    let ending = running.finish(Duration::from_secs_f64(timeout_s)).await;
    Ok(running.report(&ending, timeout_s))
}

/// Starts `command` under bash (or sh), returning the child and the read end of its output.
///
/// With a `guard` (the worker binary), the shell runs under the tool guard, which leads the
/// process group in the shell's place (see [`crate::guard`]).
fn spawn(
    root: &Path,
    command: &str,
    env: &[(OsString, OsString)],
    guard: Option<&Path>,
) -> Result<(Child, pipe::Receiver), ToolError> {
    let start_error = |e: std::io::Error| ToolError::Failed(format!("cannot start the shell: {e}"));
    let (reader, writer) = std::io::pipe().map_err(start_error)?;
    let path = process::path_of(env);
    for shell in ["bash", "sh"] {
        let stdout = writer.try_clone().map_err(start_error)?;
        let stderr = writer.try_clone().map_err(start_error)?;
        let mut cmd = match guard {
            Some(guard) => {
                // The guard cannot report a missing shell the way spawn does: look it up.
                let Some(found) = process::find_in_path(shell, &path) else {
                    if shell == "bash" {
                        continue;
                    }
                    break;
                };
                process::guarded(&found, Some(guard))
            }
            None => Command::new(shell),
        };
        cmd.arg("-c")
            .arg(command)
            .current_dir(root)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        kugetsu_os::process::contain(&mut cmd);
        match cmd.spawn() {
            Ok(child) => {
                // Our copies of the write end must go, or the read end never sees EOF.
                drop(cmd);
                drop(writer);
                let output =
                    pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(start_error)?;
                return Ok((child, output));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && shell == "bash" => continue,
            Err(e) => return Err(start_error(e)),
        }
    }
    Err(ToolError::Failed(
        "cannot start the shell: neither bash nor sh was found on PATH".to_owned(),
    ))
}

/// How a command ended.
enum Ending {
    /// It exited by itself.
    Exited(ExitStatus),
    /// It ran past its timeout and was killed.
    TimedOut,
    /// It took the shadow over its memory limit and was killed.
    OverMemory {
        /// The measurement that was over.
        usage: Usage,
        /// The limit, in bytes.
        limit: u64,
    },
    /// Waiting for it failed; it was killed.
    Lost(std::io::Error),
}

/// Why [`Running::pump_until`] stopped.
enum Pumped {
    /// The shell exited.
    Exited(ExitStatus),
    /// The deadline passed.
    Deadline,
    /// The shadow is over its memory limit.
    OverMemory {
        /// The measurement that was over.
        usage: Usage,
        /// The limit, in bytes.
        limit: u64,
    },
}

/// A started command and everything needed to collect its output.
struct Running {
    /// Declared first so it drops first: kills the whole call before the child handle goes.
    processes: CallProcesses,
    /// Measures the call against the shadow's memory limit; `None` when there is no limit.
    memory: Option<MemoryWatch>,
    child: Child,
    output: pipe::Receiver,
    /// Whether the output pipe reached end-of-file (every writer is gone).
    eof: bool,
    buf: Vec<u8>,
    capture: HeadTail,
    log: Log,
}

/// What [`Running::finish`] found out, besides the output.
struct Finished {
    ending: Ending,
    /// Tagged processes still alive after the shell ended (background jobs).
    left_running: usize,
    /// Whether all output was read; false if a process that escaped clean-up holds the pipe.
    drained: bool,
}

impl Running {
    /// Waits for the command to end (or times it out), kills what is left, reads the rest.
    async fn finish(&mut self, timeout: Duration) -> Finished {
        let ending = match self.pump_until(Instant::now() + timeout).await {
            Ok(Pumped::Exited(status)) => Ending::Exited(status),
            Ok(Pumped::Deadline) => {
                self.processes.terminate_group();
                // Over memory during the grace: no more grace, the kill below follows at once.
                let _ = self.pump_until(Instant::now() + TERM_GRACE).await;
                Ending::TimedOut
            }
            // No SIGTERM first: a grace period is time for the memory to keep growing.
            Ok(Pumped::OverMemory { usage, limit }) => Ending::OverMemory { usage, limit },
            Err(e) => Ending::Lost(e),
        };
        // Measuring stops with the command.
        self.memory = None;
        let left_running = self.processes.kill_all();
        if !matches!(ending, Ending::Exited(_)) {
            // Reap the killed shell now rather than leave a zombie for tokio to find later.
            let _ = tokio::time::timeout(REAP_WAIT, self.child.wait()).await;
        }
        let drained = tokio::time::timeout(DRAIN_AFTER_KILL, self.drain())
            .await
            .is_ok();
        Finished {
            ending,
            left_running,
            drained,
        }
    }

    /// Collects output until the shell exits, `deadline` passes or the shadow is measured
    /// over its memory limit.
    async fn pump_until(&mut self, deadline: Instant) -> std::io::Result<Pumped> {
        loop {
            tokio::select! {
                read = self.output.read(&mut self.buf), if !self.eof => match read {
                    Ok(0) | Err(_) => self.eof = true,
                    Ok(n) => self.sink(n),
                },
                status = self.child.wait() => return status.map(Pumped::Exited),
                () = tokio::time::sleep_until(deadline) => return Ok(Pumped::Deadline),
                () = next_sample(self.memory.as_mut()) => {
                    if let Some(watch) = self.memory.as_mut()
                        && let Some(usage) = watch.check()
                    {
                        return Ok(Pumped::OverMemory { usage, limit: watch.limit() });
                    }
                }
            }
        }
    }

    /// Reads the output to its end.
    async fn drain(&mut self) {
        while !self.eof {
            match self.output.read(&mut self.buf).await {
                Ok(0) | Err(_) => self.eof = true,
                Ok(n) => self.sink(n),
            }
        }
    }

    /// Takes the first `n` bytes of the read buffer.
    fn sink(&mut self, n: usize) {
        let chunk = &self.buf[..n];
        self.capture.push(chunk);
        self.log.write(chunk);
    }

    /// The text the model gets: the capped output, then how the command ended.
    fn report(self, finished: &Finished, timeout_s: f64) -> ToolOutput {
        let total = self.capture.total();
        let log = &self.log;
        let mut text = self.capture.render(|omitted| {
            format!(
                "[... {omitted} of {total} bytes omitted; {}]",
                log.whereabouts()
            )
        });
        if total == 0 {
            text.push_str("(no output)");
        }
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let ok = matches!(&finished.ending, Ending::Exited(status) if status.success());
        match &finished.ending {
            Ending::Exited(status) => text.push_str(&describe(*status)),
            Ending::TimedOut => text.push_str(&format!(
                "[timed out after {timeout_s} s; the command and every process it started were \
                 killed]"
            )),
            Ending::OverMemory { usage, limit } => text.push_str(&format!(
                "[killed: this command's processes used {}; with the agent itself ({}) that is \
                 over the shadow's memory limit of {}. Use less memory (e.g. fewer parallel \
                 jobs: cargo build -j1, smaller inputs)]",
                human_size(usage.tools),
                human_size(usage.worker),
                human_size(*limit)
            )),
            Ending::Lost(e) => text.push_str(&format!(
                "[lost track of the command ({e}); it and every process it started were killed]"
            )),
        }
        if finished.left_running > 0 && matches!(finished.ending, Ending::Exited(_)) {
            let n = finished.left_running;
            let what = if n == 1 { "process" } else { "processes" };
            text.push_str(&format!(
                "\n[{n} background {what} still running when the command ended were killed; \
                 tools cannot leave processes running]"
            ));
        }
        if !finished.drained {
            text.push_str(
                "\n[a process that escaped clean-up still holds the output open; later output \
                 is not shown]",
            );
        }
        let memory = match finished.ending {
            Ending::OverMemory { usage, limit } => Some(MemoryExceeded {
                rss_bytes: usage.total(),
                limit_bytes: limit,
            }),
            _ => None,
        };
        ToolOutput {
            ok,
            output: text,
            truncated: self.capture.is_cut(),
            memory,
        }
    }
}

/// Resolves when `watch` wants a measurement; never without a watch.
async fn next_sample(watch: Option<&mut MemoryWatch>) {
    match watch {
        Some(watch) => watch.tick().await,
        None => std::future::pending().await,
    }
}

/// `[exit code N]` or `[killed by signal N (NAME)]`.
fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("[exit code {code}]");
    }
    match status.signal() {
        Some(signal) => {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map_or_else(|_| "unknown".to_owned(), |s| s.as_str().to_owned());
            format!("[killed by signal {signal} ({name})]")
        }
        None => format!("[ended: {status}]"),
    }
}

/// The full output on disk, `<output_dir>/<call_id>.log`.
struct Log {
    path: PathBuf,
    /// `None` once the file could not be created or written.
    file: Option<File>,
    written: u64,
    /// Why the log is missing or incomplete, for the model.
    problem: Option<String>,
}

impl Log {
    /// Opens the log, creating `dir`. Failure is not fatal: the command still runs.
    fn create(dir: &Path, call_id: &str) -> Self {
        let path = dir.join(format!("{}.log", file_stem(call_id)));
        let opened = std::fs::create_dir_all(dir).and_then(|()| File::create(&path));
        let (file, problem) = match opened {
            Ok(file) => (Some(file), None),
            Err(e) => (
                None,
                Some(format!("the full output could not be saved: {e}")),
            ),
        };
        Self {
            path,
            file,
            written: 0,
            problem,
        }
    }

    /// Appends `chunk`. Writes are synchronous: small appends to the page cache, cheaper
    /// than a trip through the blocking pool on the worker's single thread.
    fn write(&mut self, chunk: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let room = LOG_LIMIT.saturating_sub(self.written);
        let take = chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if let Err(e) = file.write_all(&chunk[..take]) {
            self.problem = Some(format!("the full output could not be saved: {e}"));
            self.file = None;
            return;
        }
        self.written += take as u64;
        if take < chunk.len() {
            self.problem = Some(format!(
                "only the first {} MiB of the output were saved, in {}",
                LOG_LIMIT / (1024 * 1024),
                self.path.display()
            ));
            self.file = None;
        }
    }

    /// Where the whole output is, as said to the model.
    fn whereabouts(&self) -> String {
        match &self.problem {
            Some(problem) => problem.clone(),
            None => format!(
                "the full output is in {} (read it with bash, e.g. sed -n or grep)",
                self.path.display()
            ),
        }
    }
}

/// A file name made from `call_id`, which comes from the provider and could hold `/` or `..`.
fn file_stem(call_id: &str) -> String {
    let stem: String = call_id
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.is_empty() {
        "call".to_owned()
    } else {
        stem
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::run_with_env;
    use crate::tools::ToolOutput;
    use crate::tools::testkit::{Fixture, survivors, wait_for_process};

    const GONE_WITHIN: Duration = Duration::from_secs(5);

    async fn bash(fx: &Fixture, args: Value) -> ToolOutput {
        ToolOutput::from_result(run_with_env(&fx.ctx(), "call_1", &args, std::env::vars_os()).await)
    }

    #[tokio::test]
    async fn bash_reports_exit_code_and_merges_stderr() {
        let fx = Fixture::new();
        let out = bash(&fx, json!({"command": "echo out; echo err >&2; exit 3"})).await;
        assert!(!out.ok && !out.truncated);
        assert_eq!(out.output, "out\nerr\n[exit code 3]");
        let out = bash(&fx, json!({"command": "true"})).await;
        assert!(out.ok);
        assert_eq!(out.output, "(no output)\n[exit code 0]");
        let out = bash(&fx, json!({"command": "kill -9 $$"})).await;
        assert!(!out.ok);
        assert_eq!(out.output, "(no output)\n[killed by signal 9 (SIGKILL)]");
    }

    #[tokio::test]
    async fn bash_runs_in_the_worktree_without_stdin() {
        let fx = Fixture::new();
        let out = bash(
            &fx,
            json!({"command": "pwd; cat; echo \"$GIT_TERMINAL_PROMPT $PAGER\"", "timeout_s": 10}),
        )
        .await;
        assert!(out.ok, "{out:?}");
        let root = fx.root.display();
        assert_eq!(out.output, format!("{root}\n0 cat\n[exit code 0]"));
    }

    #[tokio::test]
    async fn bash_caps_output_keeping_head_tail_and_the_full_log() {
        let fx = Fixture::new();
        let out = bash(
            &fx,
            json!({"command": "echo HEAD-START; seq 1 30000; echo TAIL-END"}),
        )
        .await;
        assert!(out.ok && out.truncated, "{out:?}");
        let full: String = std::iter::once("HEAD-START".to_owned())
            .chain((1..=30000).map(|i| i.to_string()))
            .chain(std::iter::once("TAIL-END".to_owned()))
            .map(|line| line + "\n")
            .collect();
        assert!(
            out.output.starts_with("HEAD-START\n1\n2\n"),
            "{}",
            out.output
        );
        assert!(
            out.output
                .ends_with("29999\n30000\nTAIL-END\n[exit code 0]")
        );
        assert!(out.output.len() < 26 * 1024, "{}", out.output.len());
        let log = fx.output_dir.join("call_1.log");
        let marker = out.output.lines().find(|l| l.starts_with("[... ")).unwrap();
        assert!(
            marker.contains(&format!(
                "bytes omitted; the full output is in {}",
                log.display()
            )),
            "{marker}"
        );
        assert!(
            marker.contains(&format!("of {} bytes", full.len())),
            "{marker}"
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), full);
    }

    #[tokio::test]
    async fn bash_timeout_kills_the_whole_group() {
        let fx = Fixture::new();
        let out = bash(
            &fx,
            json!({"command": "sleep 300.123 & sleep 301.123; echo never", "timeout_s": 1}),
        )
        .await;
        assert!(!out.ok);
        assert!(
            out.output.ends_with(
                "[timed out after 1 s; the command and every process it started were killed]"
            ),
            "{}",
            out.output
        );
        assert!(!out.output.contains("never"));
        assert_eq!(survivors("300.123", GONE_WITHIN).await, Vec::<u32>::new());
        assert_eq!(survivors("301.123", GONE_WITHIN).await, Vec::<u32>::new());
    }

    #[tokio::test]
    async fn bash_kills_background_jobs_left_after_exit() {
        let fx = Fixture::new();
        let out = bash(
            &fx,
            json!({"command": "sleep 302.123 & setsid sleep 303.123 & nohup sleep 304.123 >/dev/null 2>&1 & echo started"}),
        )
        .await;
        assert!(out.ok, "{out:?}");
        assert!(
            out.output.starts_with("started\n[exit code 0]\n["),
            "{}",
            out.output
        );
        assert!(
            out.output.contains("background processes still running"),
            "{}",
            out.output
        );
        for marker in ["302.123", "303.123", "304.123"] {
            assert_eq!(
                survivors(marker, GONE_WITHIN).await,
                Vec::<u32>::new(),
                "{marker}"
            );
        }
    }

    #[tokio::test]
    async fn bash_dropped_mid_command_kills_the_group() {
        let fx = Fixture::new();
        let ctx = fx.ctx();
        let args = json!({"command": "setsid sleep 305.123 & sleep 306.123"});
        let call = run_with_env(&ctx, "call_1", &args, std::env::vars_os());
        let mut call = Box::pin(call);
        tokio::select! {
            _ = &mut call => panic!("the command should still be running"),
            () = wait_for_process("306.123", GONE_WITHIN) => {}
        }
        wait_for_process("305.123", GONE_WITHIN).await;
        drop(call);
        assert_eq!(survivors("305.123", GONE_WITHIN).await, Vec::<u32>::new());
        assert_eq!(survivors("306.123", GONE_WITHIN).await, Vec::<u32>::new());
    }

    /// The worker is a child subreaper; a shared test process must not be one (it would kill
    /// its neighbours' processes), so this part runs in a child test process.
    #[tokio::test]
    #[ignore = "run in its own process by bash_as_a_subreaper_kills_processes_that_hid"]
    async fn subreaper_child() {
        if std::env::var_os("KUGETSU_SUBREAPER_TEST").is_none() {
            return;
        }
        kugetsu_os::process::become_subreaper().unwrap();
        let fx = Fixture::new();
        // No tag (env -i) and no group (setsid): only the subreaper sweep can find it.
        // The loop waits until the untagged sleep runs: before its exec it is a tagged subshell.
        let command = "env -i setsid sleep 307.123 & \
            until pgrep -f '^sleep 307[.]123' >/dev/null; do sleep 0.01; done; echo started";
        let out = bash(&fx, json!({ "command": command })).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(survivors("307.123", GONE_WITHIN).await, Vec::<u32>::new());

        // As a subreaper the worker measures the orphans it adopted (it never reads tags).
        let command = format!("(setsid {} &); sleep 30.4707", hog(160, "30.4706"));
        let out = bash_limited(&fx, &command, Some(64 * MIB)).await;
        assert!(!out.ok, "{out:?}");
        assert!(
            out.memory.is_some_and(|m| m.rss_bytes > 64 * MIB),
            "{out:?}"
        );
        for marker in ["30.4706", "30.4707"] {
            assert_eq!(survivors(marker, GONE_WITHIN).await, Vec::<u32>::new());
        }
    }

    #[test]
    fn bash_as_a_subreaper_kills_processes_that_hid() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "tools::bash::tests::subreaper_child",
            ])
            .env("KUGETSU_SUBREAPER_TEST", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    const MIB: u64 = 1024 * 1024;

    /// Runs bash under the memory limit `limit`.
    async fn bash_limited(fx: &Fixture, command: &str, limit: Option<u64>) -> ToolOutput {
        let mut ctx = fx.ctx();
        ctx.mem_limit = limit;
        let args = json!({ "command": command });
        ToolOutput::from_result(run_with_env(&ctx, "call_1", &args, std::env::vars_os()).await)
    }

    /// A python process holding `mib` MiB, then sleeping `sleep` (also its marker in `ps`).
    fn hog(mib: u64, sleep: &str) -> String {
        format!("python3 -c 'b = bytearray({mib} * 1024 * 1024); import time; time.sleep({sleep})'")
    }

    #[tokio::test]
    async fn bash_over_the_memory_limit_is_killed_with_everything_it_started() {
        let fx = Fixture::new();
        let command = format!(
            "echo before; {} & sleep 30.4702; echo never",
            hog(160, "30.4701")
        );
        let started = std::time::Instant::now();
        let out = bash_limited(&fx, &command, Some(64 * MIB)).await;
        // Well before either sleep could end.
        assert!(started.elapsed() < Duration::from_secs(20), "{out:?}");
        assert!(!out.ok, "{out:?}");
        let expected = regex::Regex::new(concat!(
            r"^before\n\[killed: this command's processes used \d+(\.\d)? [KMG]iB; ",
            r"with the agent itself \(\d+(\.\d)? [KMG]iB\) that is over the shadow's memory ",
            r"limit of 64 MiB\. Use less memory \(e\.g\. fewer parallel jobs: cargo build -j1, ",
            r"smaller inputs\)\]$",
        ))
        .unwrap();
        assert!(expected.is_match(&out.output), "{}", out.output);
        let memory = out.memory.unwrap();
        assert_eq!(memory.limit_bytes, 64 * MIB);
        assert!(memory.rss_bytes > memory.limit_bytes, "{memory:?}");
        for marker in ["30.4701", "30.4702"] {
            assert_eq!(
                survivors(marker, GONE_WITHIN).await,
                Vec::<u32>::new(),
                "{marker}"
            );
        }
        let log = std::fs::read_to_string(fx.output_dir.join("call_1.log")).unwrap();
        assert_eq!(log, "before\n");
    }

    #[tokio::test]
    async fn bash_memory_of_a_process_that_left_the_tree_counts_by_its_tag() {
        let fx = Fixture::new();
        // The subshell exits at once: python, in its own session, is orphaned (to init, as a
        // test binary is no subreaper) before the first sample.
        let command = format!("(setsid {} &); sleep 30.4704", hog(160, "30.4703"));
        let started = std::time::Instant::now();
        let out = bash_limited(&fx, &command, Some(64 * MIB)).await;
        assert!(started.elapsed() < Duration::from_secs(20), "{out:?}");
        assert!(!out.ok, "{out:?}");
        assert!(
            out.output.contains("memory limit of 64 MiB"),
            "{}",
            out.output
        );
        assert!(
            out.memory.is_some_and(|m| m.rss_bytes > 64 * MIB),
            "{out:?}"
        );
        for marker in ["30.4703", "30.4704"] {
            assert_eq!(
                survivors(marker, GONE_WITHIN).await,
                Vec::<u32>::new(),
                "{marker}"
            );
        }
    }

    #[tokio::test]
    async fn bash_under_the_memory_limit_is_unaffected() {
        let fx = Fixture::new();
        // Long enough to be measured a few times.
        let command = format!("{}; echo done", hog(16, "0.5"));
        let out = bash_limited(&fx, &command, Some(512 * MIB)).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.output, "done\n[exit code 0]");
        assert_eq!(out.memory, None);
    }

    #[tokio::test]
    async fn bash_without_a_memory_limit_is_not_measured() {
        let fx = Fixture::new();
        let command = format!("{}; echo done", hog(100, "0.3"));
        let out = bash_limited(&fx, &command, None).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.output, "done\n[exit code 0]");
        assert_eq!(out.memory, None);
    }

    #[tokio::test]
    async fn bash_environment_has_no_secrets() {
        let fx = Fixture::new();
        let path = std::env::var_os("PATH").unwrap();
        let vars: Vec<(OsString, OsString)> = vec![
            ("OPENAI_API_KEY".into(), "sk-test-secret".into()),
            ("MY_TOKEN".into(), "x".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "aws-test-secret".into()),
            ("NOTIFY_SOCKET".into(), "/run/systemd/notify".into()),
            ("PATH".into(), path.clone()),
            ("KEEP_ME".into(), "yes".into()),
        ];
        let args = json!({"command": "env"});
        let out = ToolOutput::from_result(run_with_env(&fx.ctx(), "c", &args, vars).await);
        assert!(out.ok, "{out:?}");
        for secret in [
            "sk-test-secret",
            "MY_TOKEN",
            "aws-test-secret",
            "NOTIFY_SOCKET",
        ] {
            assert!(
                !out.output.contains(secret),
                "{secret} leaked: {}",
                out.output
            );
        }
        let path_line = format!("PATH={}", path.to_str().unwrap());
        for kept in [
            path_line.as_str(),
            "KEEP_ME=yes",
            "GIT_TERMINAL_PROMPT=0",
            "PAGER=cat",
        ] {
            assert!(
                out.output.lines().any(|l| l == kept),
                "{kept} missing: {}",
                out.output
            );
        }
    }

    #[tokio::test]
    async fn bash_falls_back_to_sh_without_bash() {
        let fx = Fixture::new();
        let bin = fx.outside.join("bin");
        std::fs::create_dir(&bin).unwrap();
        let sh = which("sh");
        std::os::unix::fs::symlink(&sh, bin.join("sh")).unwrap();
        let vars = vec![(OsString::from("PATH"), bin.into_os_string())];
        let args = json!({"command": "echo \"$0\""});
        let out = ToolOutput::from_result(run_with_env(&fx.ctx(), "c", &args, vars).await);
        assert!(out.ok, "{out:?}");
        assert_eq!(out.output, "sh\n[exit code 0]");
    }

    /// The absolute path of `program` on this machine's PATH.
    fn which(program: &str) -> std::path::PathBuf {
        std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
            .unwrap()
    }

    #[tokio::test]
    async fn bash_log_names_cannot_escape_the_output_dir() {
        let fx = Fixture::new();
        let args = json!({"command": "echo hi"});
        let out = ToolOutput::from_result(
            run_with_env(&fx.ctx(), "../../evil/x", &args, std::env::vars_os()).await,
        );
        assert!(out.ok);
        let names: Vec<_> = std::fs::read_dir(&fx.output_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["______evil_x.log"]);
    }

    #[tokio::test]
    async fn bash_checks_its_arguments() {
        let fx = Fixture::new();
        let out = bash(&fx, json!({})).await;
        assert_eq!(out.output, "missing required argument `command`");
        let out = bash(&fx, json!({"command": "  "})).await;
        assert_eq!(out.output, "argument `command` is empty");
        let out = bash(&fx, json!({"command": "true", "timeout_s": "soon"})).await;
        assert_eq!(
            out.output,
            "argument `timeout_s` must be a positive number of seconds, not \"soon\""
        );
    }
}

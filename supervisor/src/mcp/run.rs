//! `kugetsu_run`: one shadow, run by a `kugetsu run --json` child of this server.
//!
//! A child rather than the task code in this process: each run is its own supervisor, so
//! runs that overlap do not share a subreaper or signal handlers, and a run's cleanup (which
//! kills whatever is left below its process) can never reach another run's shadow. The child
//! is this same binary, in its own process group, and dies with this process (PDEATHSIG).
//!
//! Its stdout is the task's events as JSON lines: the notable ones become progress
//! notifications, and the last, `finished`, is the tool's result. MCP cancellation of the
//! request becomes SIGTERM, which `kugetsu run` turns into a clean cancel of the shadow; its
//! `finished` (status `cancelled`) is then still read and returned.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use kugetsu_protocol::{Event, EventEnvelope, LineReader};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStderr, Command};
use tokio_util::sync::CancellationToken;

use crate::mcp::params::Params;
use crate::mcp::server::{McpOptions, Outcome, Progress};

/// Longest event line read from the child (the worker already caps its events at 4 MiB).
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// How many of the child's last stderr lines are kept to explain a run that ended without
/// `finished`.
const STDERR_KEPT: usize = 20;
/// Most characters of a tool's arguments a progress message quotes.
const ARGS_SHOWN: usize = 120;

/// What the model asked for.
#[derive(Debug)]
struct RunRequest {
    prompt: String,
    repo: PathBuf,
    model: Option<String>,
    base: Option<String>,
    timeout_s: Option<u64>,
}

impl RunRequest {
    fn read(params: &Params, cwd: &Path) -> Result<RunRequest, String> {
        let bad = |e: crate::mcp::params::BadArgument| e.0;
        Ok(RunRequest {
            prompt: params.required("prompt").map_err(bad)?,
            repo: resolve_repo(params.string("repo").map_err(bad)?.as_deref(), cwd)?,
            model: params.string("model").map_err(bad)?,
            base: params.string("base").map_err(bad)?,
            timeout_s: params.positive_integer("timeout_s").map_err(bad)?,
        })
    }

    fn argv(&self, options: &McpOptions) -> Vec<std::ffi::OsString> {
        let mut argv: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "--json".into(),
            "-C".into(),
            self.repo.clone().into(),
        ];
        if let Some(model) = &self.model {
            argv.extend(["-m".into(), model.into()]);
        }
        if let Some(base) = &self.base {
            argv.extend(["--base".into(), base.into()]);
        }
        if let Some(seconds) = self.timeout_s {
            argv.extend(["--timeout".into(), format!("{seconds}s").into()]);
        }
        if let Some(dir) = &options.state_dir {
            argv.extend(["--state-dir".into(), dir.clone().into()]);
        }
        if let Some(config) = &options.config {
            argv.extend(["--config".into(), config.clone().into()]);
        }
        argv.extend(["--".into(), self.prompt.clone().into()]);
        argv
    }
}

/// The repository a call names: `cwd` when none, a relative path resolved against `cwd`; it
/// must be a directory (whether it is a git repository, `kugetsu run` says).
pub fn resolve_repo(repo: Option<&str>, cwd: &Path) -> Result<PathBuf, String> {
    let path = match repo {
        None => cwd.to_path_buf(),
        Some(repo) => cwd.join(repo),
    };
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => Ok(path),
        Ok(_) => Err(format!(
            "repo {} is not a directory; give the path of a git repository",
            path.display()
        )),
        Err(e) => Err(format!(
            "repo {}: {e}; give the path of a git repository",
            path.display()
        )),
    }
}

/// Runs the shadow to its end; its `finished` event is the outcome.
pub async fn run(
    options: &McpOptions,
    params: &Params,
    mut progress: Option<Progress>,
    cancel: CancellationToken,
) -> Outcome {
    let request = RunRequest::read(params, &options.cwd)?;
    let binary = std::env::current_exe()
        .map_err(|e| format!("cannot find the kugetsu binary to run the shadow: {e}"))?;
    let mut command = Command::new(&binary);
    command
        .args(request.argv(options))
        .current_dir(&options.cwd)
        // Nothing reads the child's stdin: the MCP client's messages are ours.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    kugetsu_os::process::contain(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("cannot read the shadow's output".to_owned());
    };
    let stderr = tokio::spawn(keep_stderr(stderr));
    let mut events = LineReader::with_limit(BufReader::new(stdout), MAX_EVENT_BYTES);
    let mut finished: Option<String> = None;
    let mut cancelled = false;
    loop {
        let line = tokio::select! {
            line = events.next_line() => line,
            () = cancel.cancelled(), if !cancelled => {
                cancelled = true;
                tracing::info!("kugetsu_run cancelled by the client; cancelling its shadow");
                if let Some(pid) = pid {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                }
                continue;
            }
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("a bad event line from the shadow: {e}");
                continue;
            }
        };
        let Ok(envelope) = serde_json::from_slice::<EventEnvelope>(&line) else {
            continue;
        };
        if let Event::Finished(_) = envelope.event {
            finished = Some(String::from_utf8_lossy(&line).trim_end().to_owned());
        }
        if let (Some(progress), Some(message)) = (progress.as_mut(), message(&envelope))
            && !cancelled
        {
            progress.send(message).await;
        }
    }
    let status = child.wait().await;
    let last_lines = stderr.await.unwrap_or_default();
    if let Some(finished) = finished {
        return Ok(finished);
    }
    let why = last_lines
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("kugetsu: ").to_owned());
    Err(match (why, status) {
        (Some(why), _) => why,
        (None, Ok(status)) => format!("kugetsu run ended ({status}) without a result"),
        (None, Err(e)) => format!("kugetsu run was lost: {e}"),
    })
}

/// Copies the child's stderr to ours (it is log lines) and returns its last lines.
async fn keep_stderr(stderr: ChildStderr) -> Vec<String> {
    let mut lines = BufReader::new(stderr).lines();
    let mut kept = VecDeque::with_capacity(STDERR_KEPT);
    while let Ok(Some(line)) = lines.next_line().await {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
        if kept.len() == STDERR_KEPT {
            kept.pop_front();
        }
        kept.push_back(line);
    }
    kept.into()
}

/// The progress message for a notable event: the shadow starting, each turn, each tool call,
/// a restart, a limit hit, and the end.
pub fn message(envelope: &EventEnvelope) -> Option<String> {
    let task = &envelope.task;
    Some(match &envelope.event {
        Event::Started {
            attempt, branch, ..
        } => match branch {
            Some(branch) => format!("task {task} started (attempt {attempt}) on branch {branch}"),
            None => format!("task {task} started (attempt {attempt})"),
        },
        Event::TurnStart { turn } => format!("turn {turn}"),
        Event::ToolStart { tool, args, .. } => format!("tool {tool} {}", shown_args(args)),
        Event::ToolEnd {
            tool, ok: false, ..
        } => format!("tool {tool} failed"),
        Event::Steered { .. } => "steered".to_owned(),
        Event::Restarted { attempt, reason } => format!("restarted (attempt {attempt}): {reason}"),
        Event::MemoryLimit { killed: true, .. } => "over its memory limit: killed".to_owned(),
        Event::RateLimited { provider, wait_ms } => {
            format!("waiting {wait_ms} ms for the {provider} rate limit")
        }
        Event::Finished(finished) => {
            let mut text = format!("done: {}", finished.status.as_str());
            if let Some(error) = &finished.error {
                text.push_str(&format!(" ({error})"));
            }
            text
        }
        _ => return None,
    })
}

/// A tool call's arguments in one short line: the command of `bash`, the path of the file
/// tools, else the JSON.
fn shown_args(args: &serde_json::Value) -> String {
    let text = ["command", "path", "pattern"]
        .iter()
        .find_map(|key| args.get(key).and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_else(|| args.to_string());
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > ARGS_SHOWN {
        let mut cut: String = one_line.chars().take(ARGS_SHOWN - 1).collect();
        cut.push('…');
        cut
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(event: serde_json::Value) -> EventEnvelope {
        let mut value = json!({"v": 1, "task": "t1", "seq": 1, "ts": "2026-01-01T00:00:00Z"});
        if let (Some(map), serde_json::Value::Object(extra)) = (value.as_object_mut(), event) {
            map.extend(extra);
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn notable_events_have_messages() {
        assert_eq!(
            message(&envelope(json!({"type": "turn_start", "turn": 2}))).as_deref(),
            Some("turn 2")
        );
        assert_eq!(
            message(&envelope(
                json!({"type": "tool_start", "call_id": "c", "tool": "bash",
                "args": {"command": "echo hi\n  && ls"}})
            ))
            .as_deref(),
            Some("tool bash echo hi && ls")
        );
        assert_eq!(
            message(&envelope(json!({"type": "text_delta", "text": "x"}))),
            None
        );
        let long = "x".repeat(500);
        let shown = message(&envelope(
            json!({"type": "tool_start", "call_id": "c", "tool": "write", "args": {"path": long}}),
        ))
        .unwrap();
        assert_eq!(shown.chars().count(), "tool write ".len() + ARGS_SHOWN);
    }

    #[test]
    fn repos_resolve_against_the_start_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("r")).unwrap();
        std::fs::write(dir.path().join("f"), "").unwrap();
        assert_eq!(resolve_repo(None, dir.path()).unwrap(), dir.path());
        assert_eq!(
            resolve_repo(Some("r"), dir.path()).unwrap(),
            dir.path().join("r")
        );
        assert!(
            resolve_repo(Some("f"), dir.path())
                .unwrap_err()
                .contains("is not a directory")
        );
        assert!(
            resolve_repo(Some("/nonexistent/x"), dir.path())
                .unwrap_err()
                .contains("/nonexistent/x")
        );
    }
}

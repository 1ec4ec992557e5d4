//! The worker's side of MCP: [`McpTools`] starts the MCP host process ([`super::host`]) for a
//! task that uses servers, and relays the model's calls to it. Only JSON lines cross; the
//! worker links no MCP code, so a task without servers costs nothing (no thread, no child,
//! no allocation, no extra code pages).

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use kugetsu_protocol::{LineReader, McpServer, encode, mcp as names};
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::wire::{Answer, Call, Ready, Start};
use crate::conversation::ToolSpec;
use crate::tools::{ToolContext, ToolOutput};

/// The host's executable, beside `kugetsu-worker`.
pub const HOST_BINARY: &str = "kugetsu-mcp-host";
/// How often the host is started again after it died.
const MAX_HOST_STARTS: u32 = 3;
/// Slack over the servers' own timeouts before the host itself is presumed stuck.
const HOST_SLACK: Duration = Duration::from_secs(10);

/// A task's MCP servers, reached through the MCP host. Built only for a task that uses at
/// least one server; dropping it kills the host and with it every server process.
#[derive(Debug)]
pub struct McpTools {
    start: Start,
    /// The configured servers' names, so calls to a server that offered no tools still reach
    /// it (and get its error).
    servers: Vec<String>,
    specs: Vec<ToolSpec>,
    host: Option<Host>,
    /// Why the host is not running, when it is not.
    down: String,
    starts: u32,
    next_id: u64,
    /// The longest the host may take to answer `Start` (every server's start-up).
    start_limit: Duration,
    /// The longest one call may take (the server's timeout, plus a restart).
    call_limit: Duration,
}

/// A running host process.
#[derive(Debug)]
struct Host {
    /// `kill_on_drop`: the host and, through the tool guards, every server die with it.
    child: Child,
    stdin: ChildStdin,
    lines: LineReader<BufReader<ChildStdout>>,
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            kugetsu_os::process::kill_descendants(pid, &[]);
        }
        let _ = self.child.start_kill();
    }
}

impl McpTools {
    /// Starts the host for `servers` and lists their tools; `None` when there are none.
    pub async fn start(servers: &[McpServer], ctx: &ToolContext) -> Option<McpTools> {
        if servers.is_empty() {
            return None;
        }
        let ms = |total: u64| Duration::from_millis(total);
        let start_limit = ms(servers.iter().map(|s| s.startup_timeout_ms).sum()) + HOST_SLACK;
        let call_limit = ms(servers
            .iter()
            .map(|s| s.call_timeout_ms.saturating_add(s.startup_timeout_ms))
            .max()
            .unwrap_or(0))
            + HOST_SLACK;
        let mut tools = McpTools {
            start: Start {
                servers: servers.to_vec(),
                root: ctx.root.clone(),
                output_dir: ctx.output_dir.clone(),
                guard: ctx.guard.clone(),
                sandbox: ctx.sandbox.as_deref().cloned(),
            },
            servers: servers.iter().map(|s| s.name.clone()).collect(),
            specs: Vec::new(),
            host: None,
            down: String::new(),
            starts: 0,
            next_id: 0,
            start_limit,
            call_limit,
        };
        match tools.launch().await {
            Ok(ready) => {
                tools.specs = ready
                    .tools
                    .into_iter()
                    .map(|t| ToolSpec {
                        name: Cow::Owned(t.name),
                        description: Cow::Owned(t.description),
                        parameters: t.parameters,
                    })
                    .collect();
            }
            Err(reason) => {
                eprintln!("kugetsu-worker: the MCP host did not start: {reason}");
                tools.down = reason;
            }
        }
        Some(tools)
    }

    /// The servers' tools as offered to the model.
    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    /// Whether `name` is `NAME__...` for a configured server NAME.
    pub fn owns(&self, name: &str) -> bool {
        name.split_once(names::SEPARATOR)
            .is_some_and(|(server, _)| self.servers.iter().any(|s| s == server))
    }

    /// Runs the call through the host. Never fails: problems are `ok: false` outputs.
    pub async fn call(&mut self, name: &str, args: &serde_json::Value) -> ToolOutput {
        if self.host.is_none() {
            if self.starts > MAX_HOST_STARTS {
                return failure(format!(
                    "MCP servers are not available: {}; the MCP host was started {} times",
                    self.down, self.starts
                ));
            }
            if let Err(reason) = self.launch().await {
                self.down = reason.clone();
                return failure(format!("MCP servers are not available: {reason}"));
            }
        }
        let Some(host) = self.host.as_mut() else {
            return failure("MCP servers are not available".to_owned());
        };
        self.next_id += 1;
        let id = self.next_id;
        let call = Call {
            id,
            name: name.to_owned(),
            args: args.clone(),
        };
        let answer = tokio::time::timeout(self.call_limit, async {
            host.stdin
                .write_all(&encode(&call))
                .await
                .map_err(|e| format!("cannot reach the MCP host ({e})"))?;
            host.stdin
                .flush()
                .await
                .map_err(|e| format!("cannot reach the MCP host ({e})"))?;
            loop {
                match host.lines.next_line().await {
                    Ok(Some(line)) => match serde_json::from_slice::<Answer>(&line) {
                        Ok(answer) if answer.id == id => return Ok(answer),
                        // The answer to a call given up on earlier.
                        Ok(_) => continue,
                        Err(e) => return Err(format!("the MCP host answered garbage ({e})")),
                    },
                    Ok(None) | Err(_) => {
                        let status = host.child.try_wait().ok().flatten();
                        return Err(match status {
                            Some(status) => format!("the MCP host {status}"),
                            None => "the MCP host closed its output".to_owned(),
                        });
                    }
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(answer)) => ToolOutput {
                ok: answer.ok,
                output: answer.output,
                truncated: answer.truncated,
                memory: None,
            },
            Ok(Err(reason)) => {
                self.host = None;
                self.down = reason.clone();
                failure(format!(
                    "MCP call `{name}` failed: {reason}; the servers will be started again at \
                     the next call"
                ))
            }
            Err(_) => {
                self.host = None;
                self.down = "the MCP host stopped answering".to_owned();
                failure(format!(
                    "MCP call `{name}`: no answer within {} s; the servers were stopped and \
                     will be started again at the next call",
                    self.call_limit.as_secs()
                ))
            }
        }
    }

    /// Starts the host and waits for its [`Ready`].
    async fn launch(&mut self) -> Result<Ready, String> {
        self.starts += 1;
        let program = host_binary(self.start.guard.as_ref())
            .ok_or_else(|| format!("cannot find {HOST_BINARY} beside kugetsu-worker"))?;
        let mut cmd = Command::new(&program);
        cmd.current_dir(&self.start.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        kugetsu_os::process::contain(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(format!("cannot start {HOST_BINARY}: no pipes"));
        };
        let mut host = Host {
            child,
            stdin,
            lines: LineReader::new(BufReader::new(stdout)),
        };
        let ready = tokio::time::timeout(self.start_limit, async {
            host.stdin
                .write_all(&encode(&self.start))
                .await
                .map_err(|e| format!("cannot reach the MCP host ({e})"))?;
            host.stdin
                .flush()
                .await
                .map_err(|e| format!("cannot reach the MCP host ({e})"))?;
            match host.lines.next_line().await {
                Ok(Some(line)) => serde_json::from_slice::<Ready>(&line)
                    .map_err(|e| format!("the MCP host answered garbage ({e})")),
                _ => Err("the MCP host exited before listing the tools".to_owned()),
            }
        })
        .await
        .map_err(|_| "the MCP host did not list the tools in time".to_owned())??;
        self.host = Some(host);
        Ok(ready)
    }
}

/// `kugetsu-mcp-host` beside `worker` (the worker binary), else beside the running executable.
fn host_binary(worker: Option<&PathBuf>) -> Option<PathBuf> {
    let beside = |exe: &std::path::Path| exe.parent().map(|dir| dir.join(HOST_BINARY));
    worker
        .and_then(|w| beside(w))
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| beside(&exe))
                .filter(|p| p.is_file())
        })
}

fn failure(output: String) -> ToolOutput {
    ToolOutput {
        ok: false,
        output,
        truncated: false,
        memory: None,
    }
}

//! The demo's own daemon: `kugetsu serve` (this very executable) as a child, on a config,
//! state dir and socket of the demo's own, so the shadows go through the daemon's queue, pool,
//! memory sampler and governor exactly as submitted work does.
//!
//! The child gets a bare environment (`PATH`, `HOME`, `TMPDIR`, and `KUGETSU_WORKER` when
//! set, which says where the worker binary is), never the user's `KUGETSU_*` settings or
//! config file. It runs in its own process group (a Ctrl-C at the terminal reaches the demo,
//! which cancels the shadows itself) and dies with the demo (`PDEATHSIG`). Its log goes to
//! `daemon.log` beside the state dir.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::cli::args::ClientOptions;
use crate::cli::client::Client;
use crate::exit::CliError;
use crate::rpc::{self, ShutdownParams};

/// Variables the daemon child keeps from the demo's environment.
const PASSED: &[&str] = &["PATH", "HOME", "TMPDIR", "KUGETSU_WORKER"];

/// How long the daemon may take to answer its socket after it was started.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long it may take to stop once asked.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// Memory each demo shadow is held to: far above what a scripted worker and its shell need,
/// and small enough that admission (the limit plus the daemon's reserve must be free) holds on
/// a small machine.
pub const DEMO_MEM_LIMIT: &str = "128MiB";

/// The running daemon child.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pid: Option<u32>,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    /// The most memory the daemon process was seen using.
    pub peak_rss: Option<u64>,
}

impl Daemon {
    /// Writes the demo's config under `base` and starts `kugetsu serve` on it, with room for
    /// `shadows` at once; returns once its socket answers.
    pub async fn start(base: &Path, shadows: u32) -> Result<Daemon, CliError> {
        let state = base.join("state");
        let socket = state.join("kugetsu.sock");
        let config = base.join("config.toml");
        let log = base.join("daemon.log");
        let failed = |what: &str, e: std::io::Error| {
            CliError::Failed(format!(
                "cannot {what} for the demo's daemon: {}",
                crate::exit::describe_io(&e)
            ))
        };
        std::fs::create_dir_all(&state).map_err(|e| failed("create its state dir", e))?;
        std::fs::write(
            &config,
            format!(
                "# Written by `kugetsu demo` for its own daemon.\n\
                 max_shadows = {shadows}\n\
                 mem_limit = \"{DEMO_MEM_LIMIT}\"\n"
            ),
        )
        .map_err(|e| failed("write the config", e))?;
        let log_file = std::fs::File::create(&log).map_err(|e| failed("create the log", e))?;
        let exe = std::env::current_exe().map_err(|e| failed("find this executable", e))?;
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .arg("--socket")
            .arg(&socket)
            .env_clear()
            .envs(
                PASSED
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
            )
            // The daemon reads nothing from stdin; its stdout stays empty.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        kugetsu_os::process::contain(&mut command);
        let child = command
            .spawn()
            .map_err(|e| failed("start `kugetsu serve`", e))?;
        let mut daemon = Daemon {
            pid: child.id(),
            child,
            socket,
            state,
            log,
            peak_rss: None,
        };
        daemon.wait_ready().await?;
        Ok(daemon)
    }

    /// How a client reaches it (explicit paths: nothing from the environment).
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            socket: Some(self.socket.clone()),
            state_dir: Some(self.state.clone()),
        }
    }

    /// A new connection to it.
    pub async fn connect(&self) -> Result<Client, CliError> {
        Client::connect(&self.options()).await.map_err(|e| {
            CliError::Failed(format!(
                "cannot reach the demo's daemon: {e}{}",
                self.log_hint()
            ))
        })
    }

    async fn wait_ready(&mut self) -> Result<(), CliError> {
        let since = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(CliError::Failed(format!(
                    "the demo's daemon exited at start ({status}){}",
                    self.log_hint()
                )));
            }
            if let Ok(mut client) = Client::connect(&self.options()).await
                && client
                    .call::<rpc::List>(&rpc::ListParams::default())
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if since.elapsed() > READY_WITHIN {
                return Err(CliError::Failed(format!(
                    "the demo's daemon did not answer on {} within {} s{}",
                    self.socket.display(),
                    READY_WITHIN.as_secs(),
                    self.log_hint()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resolves when the daemon exits (cancel-safe, for `select!`).
    pub async fn exited(&mut self) -> String {
        match self.child.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        }
    }

    /// Notes the daemon's memory now.
    pub fn sample(&mut self) {
        if let Some(rss) = self.pid.and_then(rss_of) {
            self.peak_rss = Some(self.peak_rss.map_or(rss, |p| p.max(rss)));
        }
    }

    /// Asks the daemon to stop (shadows still running are detached: their workers exit) and
    /// waits for it; kills it if it does not stop in time.
    pub async fn stop(mut self) {
        if let Ok(mut client) = Client::connect(&self.options()).await {
            // An idle daemon may be gone before its answer is out: that is what was asked.
            let _ = client
                .call::<rpc::Shutdown>(&ShutdownParams { drain: false })
                .await;
        }
        if tokio::time::timeout(STOP_WITHIN, self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "kugetsu: the demo's daemon did not stop within {} s; killing it",
                STOP_WITHIN.as_secs()
            );
            let _ = self.child.kill().await;
        }
    }

    /// The end of the daemon's log, to explain a failure.
    pub fn log_hint(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n  ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; the end of its log ({}):\n  {tail}", self.log.display())
        }
    }
}

/// The resident memory of process `pid`, from `/proc/PID/status`.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_rss() {
        let rss = rss_of(std::process::id()).unwrap();
        assert!(rss > 0);
    }
}

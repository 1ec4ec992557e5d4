//! Command-line definitions (see docs/cli.md).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run many isolated coding agents on one machine.
#[derive(Debug, Parser)]
#[command(name = "kugetsu", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one shadow in the foreground (no daemon) and print its result.
    Run(Box<RunArgs>),
    /// Offline showcase: 8 shadows at once on the scripted model, each with its own job.
    Demo(DemoArgs),
    /// Run the daemon: a queue and a pool of shadows behind a Unix socket.
    Serve(ServeArgs),
    /// Queue a task on the daemon and print its id.
    Submit(Box<SubmitArgs>),
    /// List the daemon's tasks.
    Ps(PsArgs),
    /// Show one task.
    Show(ShowArgs),
    /// Print a task's events (`-f` follows them to the end).
    Logs(LogsArgs),
    /// Cancel a queued or running task.
    Cancel(IdArgs),
    /// Continue a paused task (stopped by its budget), optionally with a new budget.
    Resume(ResumeArgs),
    /// Hand a message to a running task's model.
    Steer(SteerArgs),
    /// Terminal dashboard: shadows, memory, the queue; cancel, steer, open a log.
    Top(TopArgs),
    /// Remove the worktrees of finished tasks (their branches stay).
    Clean(CleanArgs),
    /// Stop the daemon.
    Shutdown(ShutdownArgs),
    /// Show a task's changes against the commit it started from.
    Diff(DiffArgs),
    /// Land finished tasks, in order, onto a branch (tested, only if all holds).
    Merge(MergeArgs),
    /// Serve kugetsu's tools to an MCP client over stdio (Claude Code, Codex, Hermes, ...).
    Mcp(McpArgs),
    /// Check config, providers, git, limits and sandbox.
    Doctor(DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (roff), or write one page per command into a directory.
    Man(ManArgs),
}

/// `kugetsu completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `kugetsu man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write kugetsu.1 and kugetsu-COMMAND.1 for every command into DIR instead of printing
    /// kugetsu.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `kugetsu doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Config file to check (default: $XDG_CONFIG_HOME/kugetsu/config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory to check.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// How a client finds the daemon.
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
    /// The daemon's socket (default: $KUGETSU_SOCKET, $XDG_RUNTIME_DIR/kugetsu/kugetsu.sock,
    /// <state_dir>/kugetsu.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The daemon's state directory (used to find its socket).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// How a shadow's tools are confined (docs/sandbox.md); `None` leaves it to the config.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct SandboxArgs {
    /// Confine the shadow's tools (`workspace`, the default) or not (`off`; logged loudly).
    #[arg(long, value_name = "workspace|off")]
    pub sandbox: Option<kugetsu_protocol::SandboxMode>,
    /// Whether the shadow's tools may use the network (the model traffic is not affected).
    #[arg(long, value_name = "on|off")]
    pub network: Option<kugetsu_protocol::NetworkMode>,
}

/// A task's budget (docs/cli.md); `None` leaves it to the config.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct BudgetArgs {
    /// Pause the task before a model request that would take its tokens (in + out) past N.
    #[arg(long, value_name = "N", value_parser = parse_budget_tokens)]
    pub budget_tokens: Option<u64>,
    /// Pause the task before a model request that would take its cost past X dollars.
    #[arg(long, value_name = "X", value_parser = parse_budget_usd)]
    pub budget_usd: Option<f64>,
}

impl BudgetArgs {
    /// The budget these flags ask for.
    pub fn budget(&self) -> crate::task::request::Budget {
        crate::task::request::Budget {
            tokens: self.budget_tokens,
            usd: self.budget_usd,
        }
    }
}

fn parse_budget_tokens(text: &str) -> Result<u64, String> {
    match text.trim().replace('_', "").parse::<u64>() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a number of tokens above 0")),
        Ok(n) => Ok(n),
    }
}

fn parse_budget_usd(text: &str) -> Result<f64, String> {
    match text.trim().trim_start_matches('$').parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{text:?} is not a positive number of dollars")),
    }
}

/// `kugetsu resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The paused task.
    pub id: String,
    #[command(flatten)]
    pub budget: BudgetArgs,
    #[command(flatten)]
    pub client: ClientOptions,
}

/// `kugetsu serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (default: $XDG_CONFIG_HOME/kugetsu/config.toml); watched for changes.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to listen.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(flatten)]
    pub confine: SandboxArgs,
    /// Where tasks, worktrees and logs live.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Also serve the HTTP API and dashboard on ADDR (e.g. 127.0.0.1:7777); see docs/http.md.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// How the daemon writes its log lines on stderr (`KUGETSU_LOG` picks which).
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        env = "KUGETSU_LOG_FORMAT",
        default_value_t
    )]
    pub log_format: crate::log::LogFormat,
}

/// `kugetsu submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub task: TaskOptions,
    /// Queue priority: high, normal or low.
    #[arg(long, value_name = "P", default_value = "normal", value_parser = parse_priority)]
    pub priority: kugetsu_protocol::Priority,
    /// Follow the task to its end and exit with `run`'s exit codes.
    #[arg(long)]
    pub wait: bool,
    /// Machine-readable output: `{"task":ID}`, or the events as JSON lines with --wait.
    #[arg(long)]
    pub json: bool,
    /// The daemon's socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// What the shadow should do.
    #[arg(value_name = "PROMPT")]
    pub prompt: String,
}

/// `kugetsu ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// Every finished task, not only the most recent ones.
    #[arg(long)]
    pub all: bool,
    /// Print the task list as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `kugetsu show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// Print the task as JSON.
    #[arg(long)]
    pub json: bool,
    /// The task id.
    pub id: String,
}

/// `kugetsu logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// Follow new events until the task finishes.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print events as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// The task id.
    pub id: String,
}

/// Commands that name one task.
#[derive(Debug, Args)]
pub struct IdArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// The task id.
    pub id: String,
}

/// `kugetsu steer`.
#[derive(Debug, Args)]
pub struct SteerArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// The task id.
    pub id: String,
    /// The message for the model.
    pub text: String,
}

/// `kugetsu top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// Print the plain `ps` table of live tasks once and exit (for scripts; no terminal
    /// needed).
    #[arg(long)]
    pub once: bool,
}

/// `kugetsu clean`.
#[derive(Debug, Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// Also delete the finished tasks' records and logs.
    #[arg(long)]
    pub purge: bool,
}

/// `kugetsu diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// Only a summary of the changed files.
    #[arg(long)]
    pub stat: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The task id.
    pub id: String,
}

/// `kugetsu merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// The branch to land on (default: the branch each task started from).
    #[arg(long, value_name = "BRANCH")]
    pub into: Option<String>,
    /// One commit per task instead of its commits replayed one by one.
    #[arg(long)]
    pub squash: bool,
    /// A command that must pass on each merged result (default: config `test_command`).
    #[arg(long, value_name = "CMD")]
    pub test: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The tasks, landed in this order.
    #[arg(value_name = "ID", required = true)]
    pub ids: Vec<String>,
}

/// `kugetsu mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// Config file `kugetsu_run` loads (default: $XDG_CONFIG_HOME/kugetsu/config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `kugetsu shutdown`.
#[derive(Debug, Args)]
pub struct ShutdownArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// Finish running and queued tasks first (no new submissions meanwhile).
    #[arg(long)]
    pub drain: bool,
}

fn parse_priority(text: &str) -> Result<kugetsu_protocol::Priority, String> {
    match text {
        "high" => Ok(kugetsu_protocol::Priority::High),
        "normal" => Ok(kugetsu_protocol::Priority::Normal),
        "low" => Ok(kugetsu_protocol::Priority::Low),
        other => Err(format!("{other:?} is not a priority (high, normal, low)")),
    }
}

/// Options shared by everything that creates a task.
#[derive(Debug, Clone, Args)]
pub struct TaskOptions {
    /// The git repository to work on.
    #[arg(short = 'C', long = "repo", value_name = "DIR", default_value = ".")]
    pub repo: PathBuf,
    /// The commit the worktree starts from (default: the repository's HEAD).
    #[arg(long, value_name = "REF")]
    pub base: Option<String>,
    /// Work in the repository itself instead of a fresh worktree.
    #[arg(long)]
    pub no_worktree: bool,
    /// The model, as PROVIDER/MODEL (default: the config's `model`, or KUGETSU_MODEL).
    #[arg(short = 'm', long, value_name = "PROVIDER/MODEL")]
    pub model: Option<String>,
    /// Most model turns the task may take.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_turns: Option<u32>,
    /// Wall-clock limit for the task, e.g. 90s, 10m, 1h.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Memory limit of the shadow, e.g. 512MiB.
    #[arg(long, value_name = "SIZE", value_parser = crate::config::parse_mem_limit)]
    pub mem_limit: Option<u64>,
    #[command(flatten)]
    pub confine: SandboxArgs,
    #[command(flatten)]
    pub budget: BudgetArgs,
    /// Give the shadow the tools of MCP server NAME (`[mcp.NAME]` in the config); repeat for
    /// more. Without it the shadow gets every configured server; `--mcp none` gives it none.
    #[arg(long = "mcp", value_name = "NAME")]
    pub mcp: Vec<String>,
    /// Where tasks, worktrees and logs live.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Continue an earlier task from its checkpoint (no PROMPT then).
    #[arg(long, value_name = "ID")]
    pub resume: Option<String>,
    /// Config file (default: $XDG_CONFIG_HOME/kugetsu/config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl TaskOptions {
    /// The task these options ask for.
    pub fn request(
        &self,
        prompt: &str,
        priority: kugetsu_protocol::Priority,
        origin: crate::task::record::Origin,
    ) -> crate::task::request::TaskRequest {
        crate::task::request::TaskRequest {
            prompt: prompt.to_owned(),
            repo: self.repo.clone(),
            base: self.base.clone(),
            no_worktree: self.no_worktree,
            model: self.model.clone(),
            max_turns: self.max_turns,
            timeout: self.timeout,
            mem_limit: self.mem_limit,
            sandbox: self.confine.sandbox,
            network: self.confine.network,
            priority,
            origin,
            budget: self.budget.budget(),
            mcp: self.mcp_choice(),
        }
    }

    /// `--mcp` as a request field: `None` (every configured server) when not given.
    pub fn mcp_choice(&self) -> Option<Vec<String>> {
        (!self.mcp.is_empty()).then(|| self.mcp.clone())
    }
}

/// `kugetsu run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub task: TaskOptions,
    /// Print events as JSON lines on stdout instead of the live view.
    #[arg(long)]
    pub json: bool,
    /// What the shadow should do.
    #[arg(value_name = "PROMPT", required_unless_present = "resume")]
    pub prompt: Option<String>,
}

/// `kugetsu demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many shadows to run at once (each gets one of the demo's jobs, in turn).
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shadows: u32,
    /// Print every shadow's events as JSON lines on stdout instead of the live view (the
    /// closing table then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Keep the throwaway repository and state directory instead of deleting them.
    #[arg(long)]
    pub keep: bool,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let trimmed = text.trim();
    if let Ok(secs) = trimmed.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(trimmed)
        .map_err(|e| format!("{e} (expected e.g. 30s, 10m, 1h30m)"))
        .and_then(|d| {
            if d.is_zero() {
                Err("the timeout must be longer than zero".to_owned())
            } else {
                Ok(d)
            }
        })
}

//! Command-line definitions (DESIGN §5).

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
    /// Offline showcase: a shadow on the scripted model edits a throwaway repository.
    Demo(DemoArgs),
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
    #[arg(long, value_name = "SIZE", value_parser = crate::config::parse_size)]
    pub mem_limit: Option<u64>,
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
    /// Print events as JSON lines on stdout instead of the live view.
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

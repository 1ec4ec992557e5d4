//! `kugetsu diff` and `kugetsu merge`: asked of the daemon when one is running (so it knows
//! what landed), else done here on the state dir with the same code.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::args::{ClientOptions, DiffArgs, MergeArgs};
use crate::cli::client::Client;
use crate::config::Config;
use crate::exit::CliError;
use crate::land::api::{DiffParams, DiffResult, MergeParams, MergeReport};
use crate::rpc;
use crate::task::record::StateDir;

/// The state dir these options name, for working without a daemon.
fn state(options: &ClientOptions) -> Result<StateDir, CliError> {
    let env = |key: &str| std::env::var(key).ok();
    Ok(StateDir {
        root: crate::config::state_dir(options.state_dir.as_deref(), &env)?,
    })
}

/// `kugetsu diff`.
pub async fn diff(args: DiffArgs) -> Result<ExitCode, CliError> {
    let params = DiffParams {
        task: args.id.clone(),
        stat: args.stat,
    };
    let result: DiffResult = match Client::connect(&args.client).await {
        Ok(mut client) => client.call::<rpc::Diff>(&params).await?,
        Err(_) => crate::land::diff::diff(&state(&args.client)?, &params).await?,
    };
    if args.json {
        print(&serde_json::to_string(&result).unwrap_or_default());
    } else if result.diff.is_empty() {
        eprintln!(
            "kugetsu: task {} has no changes against {}",
            result.task,
            short(&result.base)
        );
    } else {
        print(&result.diff);
    }
    Ok(ExitCode::SUCCESS)
}

/// `kugetsu merge`: exits 1 when any task was refused.
pub async fn merge(args: MergeArgs) -> Result<ExitCode, CliError> {
    let params = MergeParams {
        tasks: args.ids.clone(),
        into: args.into.clone(),
        squash: args.squash,
        test: args.test.clone(),
    };
    let report: MergeReport = match Client::connect(&args.client).await {
        Ok(mut client) => client.call::<rpc::Merge>(&params).await?,
        Err(_) => {
            let env = |key: &str| std::env::var(key).ok();
            let config = Config::load(None, &env)?;
            crate::land::merge::merge(&state(&args.client)?, &config, &params).await?
        }
    };
    if args.json {
        print(&serde_json::to_string(&report).unwrap_or_default());
    } else {
        for landed in &report.landed {
            let plural = if landed.commits == 1 { "" } else { "s" };
            print(&format!(
                "landed {} on {}: {} commit{plural}, now at {}{}",
                landed.task,
                landed.into,
                landed.commits,
                short(&landed.commit),
                landed
                    .checkout
                    .as_deref()
                    .map(|c| format!(" (checkout {c} updated)"))
                    .unwrap_or_default()
            ));
        }
        for refused in &report.refused {
            eprintln!(
                "refused {} ({}): {}",
                refused.task, refused.reason, refused.message
            );
            if !refused.files.is_empty() {
                eprintln!("  files: {}", refused.files.join(", "));
            }
            if let Some(output) = &refused.output {
                eprintln!("  output (last lines):");
                for line in output.lines() {
                    eprintln!("    {line}");
                }
            }
        }
    }
    Ok(if report.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::FAILED)
    })
}

fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

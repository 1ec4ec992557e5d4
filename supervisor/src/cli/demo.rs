//! `kugetsu demo`: the offline showcase.
//!
//! Creates a throwaway git repository, runs one shadow on the built-in `scripted/demo` model
//! against it (the live view shows every step), then prints the diff the shadow made on its
//! branch. Needs no network and no API key.

use std::path::Path;
use std::process::ExitCode;

use kugetsu_protocol::demo::{DEMO_FILES, DEMO_PROMPT};
use tokio::process::Command;

use crate::cli::args::DemoArgs;
use crate::cli::run::drive_in_foreground;
use crate::config::Config;
use crate::exit::{self, CliError};
use crate::task::control::Resume;
use crate::task::git;
use crate::task::prepare::prepare_now;
use crate::task::record::{Origin, StateDir};
use crate::task::request::TaskRequest;

/// Entry point of `kugetsu demo`.
pub async fn demo(args: DemoArgs) -> Result<ExitCode, CliError> {
    let base = std::env::temp_dir().join(format!(
        "kugetsu-demo-{}",
        crate::task::record::new_task_id()
    ));
    let repo = base.join("repo");
    let state = base.join("state");
    let outcome = run_demo(&args, &repo, &state).await;
    if args.keep {
        eprintln!(
            "kept the demo repository {} and state {}",
            repo.display(),
            state.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&base);
    }
    outcome
}

async fn run_demo(args: &DemoArgs, repo: &Path, state: &Path) -> Result<ExitCode, CliError> {
    make_repo(repo)
        .await
        .map_err(|e| CliError::Failed(format!("cannot create the demo repository: {e}")))?;
    eprintln!("kugetsu demo: a shadow on the scripted model works on a throwaway repository");
    eprintln!("  repo   {}", repo.display());
    eprintln!("  task   {DEMO_PROMPT}");
    eprintln!();
    let request = TaskRequest {
        prompt: DEMO_PROMPT.to_owned(),
        repo: repo.to_owned(),
        base: None,
        no_worktree: false,
        model: Some("scripted/demo".to_owned()),
        max_turns: Some(10),
        timeout: Some(std::time::Duration::from_secs(120)),
        mem_limit: None,
        sandbox: None,
        network: None,
        priority: kugetsu_protocol::Priority::Normal,
        origin: Origin::Run,
        budget: Default::default(),
        mcp: Some(Vec::new()),
    };
    // The demo must not depend on the user's config or environment.
    let config = Config::load(None, &|_| None)?;
    let state = StateDir {
        root: state.to_owned(),
    };
    let prepared = prepare_now(&request, &state, &config, &|_| None).await?;
    let finished = drive_in_foreground(&prepared, Resume::FRESH, args.json).await?;
    if !args.json {
        if let Some(result) = &finished.result {
            eprintln!();
            eprintln!("result: {result}");
        }
        if let (Some(base), Some(branch)) = (&prepared.record.base_commit, &finished.branch) {
            eprintln!();
            eprintln!("the diff the shadow made on branch {branch}:");
            eprintln!();
            let diff =
                match git::Worktree::open(&prepared.record.repo, &prepared.record.workdir).await {
                    Ok(worktree) => worktree.diff(base, branch).await,
                    Err(e) => Err(e),
                };
            match diff {
                Ok(diff) if diff.trim().is_empty() => eprintln!("(no changes)"),
                Ok(diff) => crate::cli::run::print_text(&diff),
                Err(e) => eprintln!("cannot show the diff: {e}"),
            }
        }
    }
    Ok(ExitCode::from(exit::for_status(finished.status)))
}

async fn make_repo(repo: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(repo)?;
    for (name, content) in DEMO_FILES {
        std::fs::write(repo.join(name), content)?;
    }
    let steps: [&[&str]; 3] = [
        &["init", "--quiet", "--initial-branch=main"],
        &["add", "--all"],
        &[
            "-c",
            "user.name=kugetsu demo",
            "-c",
            "user.email=demo@localhost",
            "-c",
            "commit.gpgsign=false",
            "commit",
            "--quiet",
            "-m",
            "greet: initial version",
        ],
    ];
    for args in steps {
        let status = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .await?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "git {} failed",
                args.join(" ")
            )));
        }
    }
    Ok(())
}

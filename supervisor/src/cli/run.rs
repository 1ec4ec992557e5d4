//! `kugetsu run`: one shadow in the foreground, no daemon.
//!
//! SIGINT and SIGTERM become [`ShadowControl::Cancel`] (a second one kills at once); events go
//! to stdout as JSON lines with `--json`, else to the live view on stderr with the model's
//! final text on stdout.

use std::io::Write;
use std::process::ExitCode;

use kugetsu_protocol::{Event, EventEnvelope, Finished};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::cli::args::RunArgs;
use crate::cli::render::Renderer;
use crate::config::Config;
use crate::exit::{self, CliError};
use crate::govern::{Governor, Settings};
use crate::task::Fleet;
use crate::task::control::{Resume, ShadowControl};
use crate::task::drive::drive;
use crate::task::memory::Sampler;
use crate::task::prepare::{Prepared, Reopened, prepare_now, reopen};
use crate::task::record::{Origin, StateDir};

/// Entry point of `kugetsu run`.
pub async fn run(args: RunArgs) -> Result<ExitCode, CliError> {
    let env = |key: &str| std::env::var(key).ok();
    let config = Config::load(args.task.config.as_deref(), &env)?;
    let state = StateDir {
        root: crate::config::state_dir(args.task.state_dir.as_deref(), &env)?,
    };
    let (prepared, resume) = match (&args.task.resume, &args.prompt) {
        (Some(id), None) => {
            match reopen(id, &state, &config, &env, args.task.budget.budget()).await? {
                Reopened::Resumable(prepared, resume) => (*prepared, resume),
                Reopened::Finished(envelope) => {
                    let Event::Finished(finished) = &envelope.event else {
                        return Err(CliError::Failed("corrupt event log".to_owned()));
                    };
                    if args.json {
                        print_json(&envelope);
                    } else {
                        eprintln!("task {id} already finished ({})", finished.status.as_str());
                        print_result(finished);
                    }
                    return Ok(ExitCode::from(exit::for_status(finished.status)));
                }
            }
        }
        (None, Some(prompt)) => {
            let request =
                args.task
                    .request(prompt, kugetsu_protocol::Priority::Normal, Origin::Run);
            (
                prepare_now(&request, &state, &config, &env).await?,
                Resume::FRESH,
            )
        }
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "--resume continues an existing task: give no PROMPT with it".to_owned(),
            ));
        }
        (None, None) => return Err(CliError::Usage("a PROMPT is required".to_owned())),
    };
    let finished = drive_in_foreground(&prepared, resume, args.json).await?;
    if !args.json {
        print_result(&finished);
    }
    Ok(ExitCode::from(exit::for_status(finished.status)))
}

/// Drives a task with this process as its only owner: signals cancel it, events go to stdout
/// (`json`) or the live view.
pub async fn drive_in_foreground(
    prepared: &Prepared,
    resume: Resume,
    json: bool,
) -> Result<Finished, CliError> {
    if let Err(e) = kugetsu_os::process::become_subreaper() {
        eprintln!("kugetsu: warning: cannot become a subreaper ({e}); orphans may escape");
    }
    let (control, mut controls) = mpsc::unbounded_channel();
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| CliError::Failed(format!("cannot handle SIGINT: {e}")))?;
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| CliError::Failed(format!("cannot handle SIGTERM: {e}")))?;
    let signals = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigint.recv() => {}
                _ = sigterm.recv() => {}
            }
            if control.send(ShadowControl::Cancel).is_err() {
                break;
            }
        }
    });
    let fleet = Fleet {
        sampler: Sampler::spawn(),
        governor: Governor::new(Settings::run(&prepared.config.governance), None),
    };
    let finished = if json {
        drive(prepared, resume, &fleet, &mut controls, &mut print_json).await
    } else {
        let mut renderer = Renderer::new();
        drive(prepared, resume, &fleet, &mut controls, &mut |e| {
            renderer.show(e);
        })
        .await
    };
    signals.abort();
    // This process ran one shadow and nothing else is running now: anything still below us
    // (an orphan that even shed the shadow's environment marker) is a straggler.
    kugetsu_os::process::kill_descendants(std::process::id(), &[]);
    kugetsu_os::process::reap_orphans(&[]);
    finished.ok_or_else(|| CliError::Failed("the task was detached".to_owned()))
}

/// Writes one event as a JSON line on stdout.
pub fn print_json(envelope: &EventEnvelope) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&kugetsu_protocol::encode(envelope));
    let _ = out.flush();
}

/// Prints the model's final text on stdout (the human mode's result).
pub fn print_result(finished: &Finished) {
    if let Some(result) = &finished.result {
        print_text(result);
    }
}

/// Prints `text` on stdout with exactly one trailing newline.
pub fn print_text(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", text.trim_end());
    let _ = out.flush();
}

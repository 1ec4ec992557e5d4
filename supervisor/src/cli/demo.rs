//! `kugetsu demo`: the offline showcase. Many shadows at once, through the daemon.
//!
//! It lays out a small shell project in a throwaway git repository, starts a daemon of its
//! own (`kugetsu serve` on a private config, state dir and socket: [`daemon`]), subscribes to
//! every event, and submits one task per shadow (default 8) through the same `submit` call
//! `kugetsu submit` makes, each with its own job and the built-in script for it
//! (`scripted/demo/NAME`, [`kugetsu_protocol::demo`]). The daemon queues them, starts them
//! in its pool, each in its own worktree on branch `kugetsu/<id>`, and samples their memory.
//! While they run, the events are folded into a [`board::Board`] (with the daemon's `list`
//! polled for memory) that the live view draws ([`view`]); at the end a closing table
//! ([`report`]) is printed and the daemon is stopped. Needs no network and no API key, and
//! reads none of the user's config or `KUGETSU_*` variables.
//!
//! Ctrl-C (or SIGTERM) cancels every shadow and still prints the table; a second one stops at
//! once. Exit 0 when every shadow completed, 1 otherwise.
//!
//! - [`board`]: what is known of each shadow (status, turn, tool, memory) and of the fleet.
//! - [`view`]: the live view on stderr (a table redrawn in place, or plain lines).
//! - [`report`]: the closing table.
//! - [`daemon`]: the daemon child.

pub mod board;
pub mod daemon;
pub mod report;
pub mod view;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kugetsu_protocol::demo::{DEMO_FILES, DemoJob, job_for};
use kugetsu_protocol::{EventEnvelope, Priority};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::cli::args::DemoArgs;
use crate::cli::client::Client;
use crate::cli::demo::board::{Applied, Board};
use crate::cli::demo::daemon::Daemon;
use crate::cli::demo::report::Closing;
use crate::cli::demo::view::{Ending, Mode, View};
use crate::cli::run::print_json;
use crate::exit::CliError;
use crate::rpc::{self, EventsParams, ListParams, SubmitParams, SubscribeParams, TaskParams};

/// Turns each shadow may take (its script takes four).
const MAX_TURNS: u32 = 10;
/// How long each shadow may run (its script takes seconds).
const TASK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the demo waits for all of them, past which it gives up.
const DEMO_DEADLINE: Duration = Duration::from_secs(240);
/// How often the daemon's `list` is read for memory.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How often the terminal view is redrawn (when something changed).
const DRAW_EVERY: Duration = Duration::from_millis(100);

/// Entry point of `kugetsu demo`.
pub async fn demo(args: DemoArgs) -> Result<ExitCode, CliError> {
    let base = std::env::temp_dir().join(format!(
        "kugetsu-demo-{}",
        crate::task::record::new_task_id()
    ));
    let outcome = run_demo(&args, &base).await;
    if args.keep {
        eprintln!("kept the demo's files in {}", base.display());
    } else {
        let _ = std::fs::remove_dir_all(&base);
    }
    outcome
}

async fn run_demo(args: &DemoArgs, base: &Path) -> Result<ExitCode, CliError> {
    let since = Instant::now();
    // Taken over from the start, so a Ctrl-C while the daemon starts is not a kill that
    // leaves the throwaway files behind: it cancels the shadows once they are submitted.
    let signals = Signals::install()?;
    let repo = base.join("repo");
    make_repo(&repo)
        .await
        .map_err(|e| CliError::Failed(format!("cannot create the demo repository: {e}")))?;
    eprintln!(
        "kugetsu demo: {} shadows at once on the scripted model (offline, no key),\n  \
         each with its own job, worktree and branch, run by a daemon of its own",
        args.shadows
    );
    eprintln!("  repo    {} (a tiny shell project)", repo.display());
    let daemon = Daemon::start(base, args.shadows).await?;
    eprintln!(
        "  daemon  kugetsu serve, state {}, log {}",
        daemon.state.display(),
        daemon.log.display()
    );
    eprintln!();
    let mut demo = Demo {
        daemon,
        board: Board::default(),
        view: View::new(Mode::detect(args.json), since),
        json: args.json,
    };
    let watched = demo.run(&repo, args.shadows, signals).await;
    demo.view.close(
        &demo.board,
        if watched.is_ok() {
            Ending::Done
        } else {
            Ending::Failed
        },
    );
    let wall = since.elapsed();
    let Demo { daemon, board, .. } = demo;
    let (socket, state) = (daemon.socket.clone(), daemon.state.clone());
    let daemon_peak = daemon.peak_rss;
    daemon.stop().await;
    watched?;
    let table = Closing {
        board: &board,
        wall,
        daemon_peak,
        repo: &repo,
        state: &state,
        socket: &socket,
        kept: args.keep,
        width: terminal_width(args.json),
    }
    .render();
    if args.json {
        eprint!("\n{table}");
    } else {
        eprintln!();
        crate::cli::run::print_text(&table);
    }
    Ok(ExitCode::from(
        if board.completed() == board.shadows.len() {
            crate::exit::SUCCESS
        } else {
            crate::exit::FAILED
        },
    ))
}

/// The width of the terminal the closing table goes to (stdout, or stderr with `--json`),
/// if it goes to one.
fn terminal_width(json: bool) -> Option<usize> {
    let terminal = if json {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    terminal
        .then(view::columns)
        .flatten()
        .map(|cols| cols.saturating_sub(1))
}

/// SIGINT and SIGTERM, handled by the demo (first: cancel the shadows; second: stop).
#[derive(Debug)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, CliError> {
        let handle = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| CliError::Failed(format!("cannot handle {name}: {e}")))
        };
        Ok(Signals {
            interrupt: handle(SignalKind::interrupt(), "SIGINT")?,
            terminate: handle(SignalKind::terminate(), "SIGTERM")?,
        })
    }
}

/// What the event reader hands the demo.
#[derive(Debug)]
enum Feed {
    Event(Box<EventEnvelope>),
    /// The subscription ended (the daemon cut a slow reader off, or went away): the
    /// connection, to subscribe again on.
    Lost(Box<Client>),
}

/// One run of the demo.
#[derive(Debug)]
struct Demo {
    daemon: Daemon,
    board: Board,
    view: View,
    json: bool,
}

impl Demo {
    /// Submits the shadows and watches them until all have finished.
    async fn run(
        &mut self,
        repo: &Path,
        shadows: u32,
        mut signals: Signals,
    ) -> Result<(), CliError> {
        let mut control = self.daemon.connect().await?;
        // Subscribed before anything is submitted, so no event is missed.
        let mut events = self.daemon.connect().await?;
        events
            .call::<rpc::Subscribe>(&SubscribeParams {
                task: None,
                after_seq: 0,
            })
            .await?;
        let (feed, mut feeds) = mpsc::unbounded_channel();
        read_events(events, feed.clone());
        for index in 0..shadows as usize {
            let job = job_for(index);
            let id = control
                .call::<rpc::Submit>(&submission(job, repo))
                .await?
                .task;
            self.board.add(id, job);
        }
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        let mut draw = tokio::time::interval(DRAW_EVERY);
        let deadline = tokio::time::sleep(DEMO_DEADLINE);
        tokio::pin!(deadline);
        let mut cancelling = false;
        while !self.board.all_finished() {
            tokio::select! {
                Some(item) = feeds.recv() => match item {
                    Feed::Event(envelope) => self.take(&envelope),
                    Feed::Lost(client) => {
                        let client = self.resubscribe(*client, &mut control).await?;
                        read_events(client, feed.clone());
                    }
                },
                _ = sample.tick() => {
                    let tasks = control.call::<rpc::List>(&ListParams::default()).await?;
                    self.board.sample(&tasks.tasks);
                    self.daemon.sample();
                    self.view.touch();
                }
                _ = draw.tick() => self.view.draw(&self.board),
                status = self.daemon.exited() => {
                    return Err(CliError::Failed(format!(
                        "the demo's daemon exited ({status}){}",
                        self.daemon.log_hint()
                    )));
                }
                _ = signals.interrupt.recv() => {
                    if cancelling {
                        return Err(CliError::Failed("interrupted".to_owned()));
                    }
                    cancelling = true;
                    self.cancel_all(&mut control).await;
                }
                _ = signals.terminate.recv() => {
                    if cancelling {
                        return Err(CliError::Failed("terminated".to_owned()));
                    }
                    cancelling = true;
                    self.cancel_all(&mut control).await;
                }
                () = &mut deadline => {
                    return Err(CliError::Failed(format!(
                        "the shadows did not all finish within {} s",
                        DEMO_DEADLINE.as_secs()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Takes one event: onto the board, to stdout (`--json`), into the view.
    fn take(&mut self, envelope: &EventEnvelope) {
        if let Applied::Taken(note) = self.board.apply(envelope) {
            if self.json {
                print_json(envelope);
            }
            if let Some(note) = note {
                self.view.note(&self.board, note);
            }
        }
    }

    /// Subscribes again on `client` after a subscription ended, then reads from each
    /// unfinished task's log what was missed meanwhile; events the new subscription repeats
    /// are skipped by their `seq`.
    async fn resubscribe(
        &mut self,
        mut client: Client,
        control: &mut Client,
    ) -> Result<Client, CliError> {
        client
            .call::<rpc::Subscribe>(&SubscribeParams {
                task: None,
                after_seq: 0,
            })
            .await?;
        for id in self.board.unfinished() {
            loop {
                let page = control
                    .call::<rpc::Events>(&EventsParams {
                        task: id.clone(),
                        after_seq: self.board.last_seq(&id),
                        limit: None,
                    })
                    .await?;
                for envelope in &page.events {
                    self.take(envelope);
                }
                if !page.more || page.events.is_empty() {
                    break;
                }
            }
        }
        Ok(client)
    }

    /// Asks the daemon to cancel every shadow still going (each then finishes `cancelled`).
    async fn cancel_all(&mut self, control: &mut Client) {
        self.view
            .say("kugetsu demo: cancelling the shadows (again to stop at once)");
        for id in self.board.unfinished() {
            // One that ended meanwhile answers with an error: nothing to do then.
            let _ = control.call::<rpc::Cancel>(&TaskParams { task: id }).await;
        }
    }
}

/// Forwards the subscription's events on `client` until it ends, then hands `client` back.
fn read_events(mut client: Client, feed: mpsc::UnboundedSender<Feed>) {
    tokio::spawn(async move {
        loop {
            match client.next_event().await {
                Ok(envelope) => {
                    if feed.send(Feed::Event(Box::new(envelope))).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = feed.send(Feed::Lost(Box::new(client)));
                    return;
                }
            }
        }
    });
}

/// The submission of one shadow's job.
fn submission(job: &DemoJob, repo: &Path) -> SubmitParams {
    SubmitParams {
        prompt: job.prompt.to_owned(),
        repo: repo.to_owned(),
        base: None,
        no_worktree: false,
        model: Some(format!("scripted/demo/{}", job.name)),
        max_turns: Some(MAX_TURNS),
        timeout_ms: Some(TASK_TIMEOUT.as_millis() as u64),
        mem_limit: None,
        sandbox: None,
        network: None,
        priority: Priority::Normal,
        budget_tokens: None,
        budget_usd: None,
        // The demo's daemon has a private config without MCP servers.
        mcp: None,
    }
}

async fn make_repo(repo: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(repo)?;
    for (name, content) in DEMO_FILES {
        let path = repo.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, content)?;
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
            "greet: a tiny shell project",
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

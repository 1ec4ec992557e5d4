//! `kugetsu top`: a terminal dashboard of the daemon's fleet, live from its JSON-RPC API.
//!
//! - [`app`]: the state and what each key does to it (no terminal, no daemon: tested alone).
//! - [`draw`]: the screen drawn from that state, one function per part.
//! - [`log`]: a task's events as the log view's lines.
//! - [`fmt`]: memory and age figures.
//!
//! This file holds the loop. Its `select!` only turns inputs into calls on the [`App`]: a
//! tick asks `list` again (about once a second), a key becomes an [`Effect`] that is carried
//! out here (`cancel`, `steer`, opening a log), a log feed delivers the open task's events,
//! a signal ends it. The log feed is a task of its own on a second connection: `subscribe`
//! with the task replays its events so far and then sends the live ones, so the main
//! connection's calls never wait behind a stream of events.
//!
//! The terminal is put in raw mode on the alternate screen by [`Screen`] and restored when it
//! drops: on `q`, Ctrl-C, SIGTERM/SIGHUP/SIGINT, an error (the daemon going away) and, through
//! the panic hook ratatui installs, a panic. `--once` and a stdout that is not a terminal
//! never touch it.

pub mod app;
pub mod draw;
pub mod fmt;
pub mod log;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use kugetsu_protocol::{Event, EventEnvelope};
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self as term, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cli::args::{ClientOptions, TopArgs};
use crate::cli::client::{Client, NextEvent, list, print_line, table};
use crate::exit::CliError;
use crate::rpc::{self, SteerParams, SubscribeParams, TaskParams, TaskSummary};
use app::{App, Effect, Key};

/// How often the task list is asked for again.
const REFRESH: Duration = Duration::from_secs(1);
/// How long one call may take before `top` says the daemon is not answering (and goes on).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `kugetsu top`.
pub async fn top(args: TopArgs) -> Result<ExitCode, CliError> {
    if args.once {
        let mut client = Client::connect(&args.client).await?;
        let tasks = list(&mut client, false).await?;
        let live: Vec<TaskSummary> = tasks.into_iter().filter(|t| !t.status.is_final()).collect();
        print_line(&table(&live));
        return Ok(ExitCode::SUCCESS);
    }
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    if !std::io::stdout().is_terminal() || dumb {
        let why = if dumb {
            "TERM is dumb"
        } else {
            "stdout is not a terminal"
        };
        return Err(CliError::Usage(format!(
            "`top` draws a full-screen dashboard and needs a terminal ({why}); \
             use `kugetsu top --once` for a plain table, or `kugetsu ps --json`"
        )));
    }
    let client = Client::connect(&args.client).await?;
    let mut signals = Signals::new()?;
    let mut screen = Screen::enter()?;
    let result = run(&mut screen.terminal, client, &args.client, &mut signals).await;
    // The terminal is itself again before anything is said on stderr.
    drop(screen);
    result
}

/// The terminal in raw mode on the alternate screen; dropping it restores both.
struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    fn enter() -> Result<Screen, CliError> {
        match ratatui::try_init() {
            Ok(terminal) => Ok(Screen { terminal }),
            Err(e) => {
                let _ = ratatui::try_restore();
                Err(CliError::Failed(format!("cannot set up the terminal: {e}")))
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        let _ = ratatui::try_restore();
    }
}

/// The signals that end `top` (SIGINT only from `kill`: Ctrl-C is a key in raw mode).
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, CliError> {
        let listen = |kind| {
            signal(kind).map_err(|e| CliError::Failed(format!("cannot listen for signals: {e}")))
        };
        Ok(Signals {
            term: listen(SignalKind::terminate())?,
            hup: listen(SignalKind::hangup())?,
            int: listen(SignalKind::interrupt())?,
        })
    }

    async fn any(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// What woke the loop.
enum Input {
    Tick,
    Terminal(term::Event),
    /// The terminal's input ended or failed.
    TerminalGone(String),
    Log(LogMessage),
    Signal,
}

/// What the log feed sends.
#[derive(Debug)]
enum LogMessage {
    Event(Box<EventEnvelope>),
    /// The feed could not go on.
    Failed(String),
}

/// The open log's feed: its task and where its events arrive. Dropping it stops the task.
struct LogFeed {
    task: JoinHandle<()>,
    events: mpsc::Receiver<LogMessage>,
}

impl Drop for LogFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn next_log(feed: &mut Option<LogFeed>) -> LogMessage {
    match feed {
        Some(feed) => match feed.events.recv().await {
            Some(message) => message,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn run(
    terminal: &mut DefaultTerminal,
    mut client: Client,
    options: &ClientOptions,
    signals: &mut Signals,
) -> Result<ExitCode, CliError> {
    let mut app = App::new(client.socket().display().to_string());
    let mut keys = read_terminal();
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut feed: Option<LogFeed> = None;
    loop {
        terminal
            .draw(|frame| draw::draw(frame, &app, SystemTime::now()))
            .map_err(|e| CliError::Failed(format!("cannot draw on the terminal: {e}")))?;
        let input = tokio::select! {
            _ = tick.tick() => Input::Tick,
            event = keys.recv() => match event {
                Some(Ok(event)) => Input::Terminal(event),
                Some(Err(e)) => Input::TerminalGone(e),
                None => Input::TerminalGone("its input ended".to_owned()),
            },
            message = next_log(&mut feed) => Input::Log(message),
            () = signals.any() => Input::Signal,
        };
        match input {
            Input::Tick => refresh(&mut client, &mut app).await?,
            // A resize needs nothing but the draw at the top of the loop.
            Input::Terminal(term::Event::Key(key)) if key.kind != KeyEventKind::Release => {
                let Some(key) = key_of(key) else {
                    continue;
                };
                match app.key(key) {
                    Effect::None => {}
                    Effect::Quit => return Ok(ExitCode::SUCCESS),
                    Effect::Cancel(task) => {
                        cancel(&mut client, &mut app, task).await;
                        refresh(&mut client, &mut app).await?;
                    }
                    Effect::Steer { task, text } => steer(&mut client, &mut app, task, text).await,
                    Effect::OpenLog(task) => feed = Some(open_log(options, task)),
                    Effect::CloseLog => feed = None,
                }
            }
            Input::Terminal(_) => {}
            Input::TerminalGone(why) => {
                return Err(CliError::Failed(format!("lost the terminal: {why}")));
            }
            Input::Log(LogMessage::Event(envelope)) => app.log_event(&envelope),
            Input::Log(LogMessage::Failed(why)) => {
                app.error(format!("the log stopped: {why}"));
                feed = None;
            }
            Input::Signal => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// Asks `list` again. The daemon closing the connection ends `top` (with its message); a
/// daemon that does not answer in time is said in the status line.
async fn refresh(client: &mut Client, app: &mut App) -> Result<(), CliError> {
    match tokio::time::timeout(CALL_TIMEOUT, list(client, false)).await {
        Ok(Ok(tasks)) => {
            app.set_tasks(tasks);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            app.error(format!(
                "the daemon did not answer `list` within {} s",
                CALL_TIMEOUT.as_secs()
            ));
            Ok(())
        }
    }
}

async fn cancel(client: &mut Client, app: &mut App, task: String) {
    let params = TaskParams { task: task.clone() };
    match tokio::time::timeout(CALL_TIMEOUT, client.call::<rpc::Cancel>(&params)).await {
        Ok(Ok(result)) => app.info(format!("{} {}", result.status, result.task)),
        Ok(Err(e)) => app.error(format!("cancel {task}: {e}")),
        Err(_) => app.error(format!("cancel {task}: the daemon did not answer")),
    }
}

async fn steer(client: &mut Client, app: &mut App, task: String, text: String) {
    let params = SteerParams {
        task: task.clone(),
        text,
    };
    match tokio::time::timeout(CALL_TIMEOUT, client.call::<rpc::Steer>(&params)).await {
        Ok(Ok(_)) => app.info(format!("steering message queued for {task}")),
        Ok(Err(e)) => app.error(format!("steer {task}: {e}")),
        Err(_) => app.error(format!("steer {task}: the daemon did not answer")),
    }
}

/// Follows `task` on a connection of its own: its events so far, then the live ones, until
/// its `finished`. Cut off for reading slowly, it subscribes again after the last `seq` seen.
fn open_log(options: &ClientOptions, task: String) -> LogFeed {
    let (send, events) = mpsc::channel(1024);
    let options = options.clone();
    let handle = tokio::spawn(async move {
        let failed = |e: CliError| LogMessage::Failed(e.to_string());
        let mut client = match Client::connect(&options).await {
            Ok(client) => client,
            Err(e) => {
                let _ = send.send(failed(e)).await;
                return;
            }
        };
        let mut after_seq = 0;
        loop {
            let params = SubscribeParams {
                task: Some(task.clone()),
                after_seq,
            };
            if let Err(e) = client.call::<rpc::Subscribe>(&params).await {
                let _ = send.send(failed(e)).await;
                return;
            }
            loop {
                match client.next_event().await {
                    Ok(envelope) => {
                        after_seq = after_seq.max(envelope.seq);
                        let last = matches!(envelope.event, Event::Finished(_));
                        if send
                            .send(LogMessage::Event(Box::new(envelope)))
                            .await
                            .is_err()
                            || last
                        {
                            return;
                        }
                    }
                    Err(NextEvent::Lagged(seq)) => {
                        after_seq = after_seq.max(seq);
                        break;
                    }
                    Err(NextEvent::Ended(e)) => {
                        let _ = send.send(failed(e)).await;
                        return;
                    }
                }
            }
        }
    });
    LogFeed {
        task: handle,
        events,
    }
}

/// Reads the terminal's events on a thread of its own (crossterm's reads block) and hands
/// them to the loop. The thread ends when the loop is gone.
fn read_terminal() -> mpsc::UnboundedReceiver<Result<term::Event, String>> {
    let (send, receive) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        loop {
            if send.is_closed() {
                return;
            }
            match term::poll(Duration::from_millis(200)) {
                Ok(false) => {}
                Ok(true) => {
                    let event = term::read().map_err(|e| e.to_string());
                    let failed = event.is_err();
                    if send.send(event).is_err() || failed {
                        return;
                    }
                }
                Err(e) => {
                    let _ = send.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    receive
}

/// The [`Key`] a key event means, if any.
fn key_of(event: KeyEvent) -> Option<Key> {
    if event.modifiers.contains(KeyModifiers::CONTROL) {
        return match event.code {
            KeyCode::Char('c') => Some(Key::Interrupt),
            _ => None,
        };
    }
    Some(match event.code {
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Char(c) => Key::Char(c),
        _ => return None,
    })
}

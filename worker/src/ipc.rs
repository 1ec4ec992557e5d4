//! The worker's side of the channel: handshake, one reader task, one writer task.
//!
//! Invariant: nothing but [`writer`] writes to stdout. Everything else sends a
//! [`WorkerMessage`] through an [`Outbox`], so lines never interleave and a slow supervisor
//! never blocks the agent loop halfway through a line.

use std::process::ExitCode;
use std::time::Duration;

use kugetsu_protocol::{
    DecodeError, Event, LineReader, PROTOCOL_VERSION, Phase, SupervisorMessage, TaskSpec,
    WorkerMessage, encode,
};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::agent;

/// How often a worker reports that it is alive. A quarter of the supervisor's 60 s silence
/// limit: rare enough that a thousand idle shadows cost their daemon next to nothing.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

/// A cheap, cloneable sender of messages to the supervisor. Sending never blocks; messages
/// sent after the writer has gone (the supervisor closed our stdout) are dropped.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<WorkerMessage>,
}

impl Outbox {
    /// Queues one event for the supervisor.
    pub fn emit(&self, event: Event) {
        let _ = self.tx.send(WorkerMessage::Event(event));
    }

    /// Queues an event repeated from the journal (see [`WorkerMessage::Replay`]).
    pub fn replay(&self, event: Event) {
        let _ = self.tx.send(WorkerMessage::Replay(event));
    }

    fn send(&self, message: WorkerMessage) {
        let _ = self.tx.send(message);
    }

    /// An outbox whose messages land in the returned receiver (for tests and embedding).
    pub fn channel() -> (Outbox, mpsc::UnboundedReceiver<WorkerMessage>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Outbox { tx }, rx)
    }
}

/// What the supervisor asked of a running task, delivered to the agent loop.
#[derive(Debug)]
pub struct Control {
    /// Fired by `cancel` or by the supervisor closing our stdin.
    pub cancel: CancellationToken,
    /// Fired by `shutdown`: stop without a `finished` event, the task will be resumed.
    pub shutdown: CancellationToken,
    /// Steering messages, in arrival order; never dropped.
    pub steer: mpsc::UnboundedReceiver<String>,
    /// The loop's current phase, read by the heartbeat task.
    pub phase: watch::Sender<Phase>,
}

/// The writer task: the one place that writes protocol lines to stdout.
async fn writer(mut rx: mpsc::UnboundedReceiver<WorkerMessage>) {
    let mut stdout = tokio::io::stdout();
    while let Some(message) = rx.recv().await {
        let mut batch = encode(&message);
        // Coalesce whatever else is already queued (text deltas arrive in bursts).
        while let Ok(more) = rx.try_recv() {
            batch.extend_from_slice(&encode(&more));
            if batch.len() > 64 * 1024 {
                break;
            }
        }
        if stdout.write_all(&batch).await.is_err() || stdout.flush().await.is_err() {
            // The supervisor is gone; nobody can hear us any more.
            return;
        }
    }
}

/// Runs the worker: handshake, task, events, exit. This is the whole life of the process.
pub async fn serve() -> ExitCode {
    if let Err(e) = kugetsu_os::process::become_subreaper() {
        eprintln!(
            "kugetsu-worker: cannot become subreaper ({e}); orphaned tool processes may linger"
        );
    }
    let (outbox, rx) = Outbox::channel();
    let writer = tokio::spawn(writer(rx));
    outbox.send(WorkerMessage::Hello {
        protocol: PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
    });

    let mut reader = LineReader::new(BufReader::new(tokio::io::stdin()));
    let (task, resume) = match wait_for_start(&mut reader).await {
        Some(start) => start,
        None => {
            eprintln!("kugetsu-worker: the supervisor closed the channel before sending start");
            drop(outbox);
            let _ = writer.await;
            return ExitCode::from(2);
        }
    };

    let (steer_tx, steer_rx) = mpsc::unbounded_channel();
    let (phase_tx, phase_rx) = watch::channel(Phase::Starting);
    let control = Control {
        cancel: CancellationToken::new(),
        shutdown: CancellationToken::new(),
        steer: steer_rx,
        phase: phase_tx,
    };
    let mailbox = Mailbox {
        cancel: control.cancel.clone(),
        shutdown: control.shutdown.clone(),
        steer: steer_tx,
    };
    // What the supervisor sent together with `start` (e.g. steers kept across a restart) is
    // already buffered: hand it over before the loop's first safe point, not one turn late.
    while let Some(message) = reader.next_ready::<SupervisorMessage>() {
        mailbox.deliver(message);
    }
    let reader_task = tokio::spawn(read_control(reader, mailbox));
    let heartbeat = tokio::spawn(heartbeat(outbox.clone(), phase_rx));

    let shutdown = control.shutdown.clone();
    let finished = agent::run(task, resume, outbox.clone(), control).await;
    heartbeat.abort();
    reader_task.abort();
    let code = match finished {
        Some(finished) => {
            outbox.emit(Event::Finished(finished));
            ExitCode::SUCCESS
        }
        None => {
            debug_assert!(shutdown.is_cancelled());
            ExitCode::SUCCESS
        }
    };
    drop(outbox);
    let _ = writer.await;
    code
}

async fn wait_for_start<R>(reader: &mut LineReader<R>) -> Option<(TaskSpec, bool)>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    loop {
        match reader.next::<SupervisorMessage>().await? {
            Ok(SupervisorMessage::Start { task, resume }) => return Some((task, resume)),
            Ok(SupervisorMessage::Cancel | SupervisorMessage::Shutdown) => return None,
            Ok(SupervisorMessage::Steer { .. }) => {
                eprintln!("kugetsu-worker: ignoring steer before start");
            }
            Err(DecodeError::Io { source }) => {
                eprintln!("kugetsu-worker: reading stdin failed: {source}");
                return None;
            }
            Err(e) => eprintln!(
                "kugetsu-worker: bad line from supervisor: {}",
                kugetsu_protocol::error_chain(&e)
            ),
        }
    }
}

/// Where control messages go once the task runs.
struct Mailbox {
    cancel: CancellationToken,
    shutdown: CancellationToken,
    steer: mpsc::UnboundedSender<String>,
}

impl Mailbox {
    /// Acts on one message; returns false when the channel is broken and reading must stop.
    fn deliver(&self, message: Result<SupervisorMessage, DecodeError>) -> bool {
        match message {
            Ok(SupervisorMessage::Steer { text }) => {
                let _ = self.steer.send(text);
            }
            Ok(SupervisorMessage::Cancel) => self.cancel.cancel(),
            Ok(SupervisorMessage::Shutdown) => self.shutdown.cancel(),
            Ok(SupervisorMessage::Start { .. }) => {
                eprintln!("kugetsu-worker: ignoring a second start");
            }
            Err(DecodeError::Io { source }) => {
                eprintln!("kugetsu-worker: reading stdin failed: {source}");
                return false;
            }
            Err(e) => eprintln!(
                "kugetsu-worker: bad line from supervisor: {}",
                kugetsu_protocol::error_chain(&e)
            ),
        }
        true
    }
}

async fn read_control<R>(mut reader: LineReader<R>, mailbox: Mailbox)
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    while let Some(message) = reader.next::<SupervisorMessage>().await {
        if !mailbox.deliver(message) {
            break;
        }
    }
    // End of stdin: the supervisor is gone or wants us gone.
    mailbox.cancel.cancel();
}

async fn heartbeat(outbox: Outbox, phase: watch::Receiver<Phase>) {
    let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let current = *phase.borrow();
        outbox.send(WorkerMessage::Heartbeat { phase: current });
    }
}

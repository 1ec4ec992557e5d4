//! The worker's side of the channel: handshake, one reader task, one writer task.
//!
//! Invariant: nothing but [`writer`] writes to stdout. Everything else sends a
//! [`WorkerMessage`] through an [`Outbox`], so lines never interleave and a slow supervisor
//! never blocks the agent loop halfway through a line.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kugetsu_protocol::{
    DecodeError, Event, LineReader, MAX_LINE_BYTES, PROTOCOL_VERSION, Phase, SupervisorMessage,
    TaskSpec, WorkerMessage, encode,
};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::llm::gate::Answer;
use crate::tool_gate::ToolGate;
use crate::{agent, fit};

/// How often a worker reports that it is alive. A quarter of the supervisor's 60 s silence
/// limit: rare enough that a thousand idle shadows cost their daemon next to nothing.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

/// A cheap, cloneable sender of messages to the supervisor. Sending never blocks; messages
/// sent after the writer has gone (the supervisor closed our stdout) are dropped.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<WorkerMessage>,
    delivery: Arc<Delivery>,
}

/// How far the writer got, for [`Outbox::delivered`].
#[derive(Debug)]
struct Delivery {
    /// Messages queued so far.
    queued: AtomicU64,
    /// Messages written and flushed so far; `u64::MAX` once there is nothing to wait for
    /// (no writer, or the writer is gone).
    written: watch::Sender<u64>,
}

/// The writer's end of an [`Outbox`].
#[derive(Debug)]
struct Queue {
    rx: mpsc::UnboundedReceiver<WorkerMessage>,
    delivery: Arc<Delivery>,
}

impl Outbox {
    /// Queues one event for the supervisor.
    pub fn emit(&self, event: Event) {
        self.send(WorkerMessage::Event(event));
    }

    /// Queues an event repeated from the journal (see [`WorkerMessage::Replay`]).
    pub fn replay(&self, event: Event) {
        self.send(WorkerMessage::Replay(event));
    }

    pub(crate) fn send(&self, message: WorkerMessage) {
        // Counted before it is queued, so `written` never passes `queued`.
        self.delivery.queued.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(message);
    }

    /// Waits until every message queued so far is written to stdout, or the writer is gone.
    ///
    /// Written means in the pipe: the supervisor reads it even if this process is killed the
    /// next instant. The agent waits for this before it journals a new turn, so events never
    /// trail the journal by more than the turn in progress (what a resumed worker re-announces
    /// rests on that; see [`crate::session::ReplayedCall`]).
    pub async fn delivered(&self) {
        let target = self.delivery.queued.load(Ordering::SeqCst);
        let mut written = self.delivery.written.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = written.wait_for(|&n| n >= target).await;
    }

    /// An outbox whose messages land in the returned receiver (for tests and embedding).
    /// Nothing writes them anywhere, so [`Outbox::delivered`] never waits.
    pub fn channel() -> (Outbox, mpsc::UnboundedReceiver<WorkerMessage>) {
        let (outbox, queue) = Outbox::for_writer();
        outbox.delivery.written.send_replace(u64::MAX);
        (outbox, queue.rx)
    }

    /// An outbox and the queue that [`writer`] empties.
    fn for_writer() -> (Outbox, Queue) {
        let (tx, rx) = mpsc::unbounded_channel();
        let delivery = Arc::new(Delivery {
            queued: AtomicU64::new(0),
            written: watch::Sender::new(0),
        });
        (
            Outbox {
                tx,
                delivery: delivery.clone(),
            },
            Queue { rx, delivery },
        )
    }
}

/// What the supervisor asked of a running task, delivered to the agent loop.
#[derive(Debug)]
pub struct Control {
    /// Fired by `cancel` or by the supervisor closing our stdin.
    pub cancel: CancellationToken,
    /// Fired by `shutdown`: stop without a `finished` event, the task will be resumed. Also
    /// fired when stdin closes while a gated tool call waits for its `proceed`.
    pub shutdown: CancellationToken,
    /// Steering messages, in arrival order; never dropped.
    pub steer: mpsc::UnboundedReceiver<String>,
    /// The loop's current phase, read by the heartbeat task.
    pub phase: watch::Sender<Phase>,
    /// The task's budget and the governor's permits, shared by its providers.
    pub gate: Arc<crate::llm::gate::Shared>,
    /// Where each tool call waits for the supervisor's `proceed`, shared with the reader
    /// task; `None` when the task's tools are not gated (nothing to wait for, nothing paid).
    pub tool_gate: Option<Arc<ToolGate>>,
}

/// The writer task: the one place that writes protocol lines to stdout (`out`).
async fn writer<W: AsyncWrite + Unpin>(mut out: W, queue: Queue) {
    let Queue { mut rx, delivery } = queue;
    while let Some(message) = rx.recv().await {
        let mut batch = encode_fitted(message);
        let mut count = 1;
        // Coalesce whatever else is already queued (text deltas arrive in bursts).
        while let Ok(more) = rx.try_recv() {
            batch.extend_from_slice(&encode_fitted(more));
            count += 1;
            if batch.len() > 64 * 1024 {
                break;
            }
        }
        if out.write_all(&batch).await.is_err() || out.flush().await.is_err() {
            // The supervisor is gone; nobody can hear us any more.
            delivery.written.send_replace(u64::MAX);
            return;
        }
        delivery
            .written
            .send_modify(|n| *n = n.saturating_add(count));
    }
}

/// The line(s) of `message`, shrunk to fit the line limit when it would not (see [`fit`]).
fn encode_fitted(message: WorkerMessage) -> Vec<u8> {
    let line = encode(&message);
    if line.len() <= MAX_LINE_BYTES - 4096 {
        return line;
    }
    fit::fit(message).iter().flat_map(encode).collect()
}

/// Runs the worker: handshake, task, events, exit. This is the whole life of the process.
pub async fn serve() -> ExitCode {
    if let Err(e) = kugetsu_os::process::become_subreaper() {
        eprintln!(
            "kugetsu-worker: cannot become subreaper ({e}); orphaned tool processes may linger"
        );
    }
    let (outbox, queue) = Outbox::for_writer();
    let writer = tokio::spawn(writer(tokio::io::stdout(), queue));
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
        gate: crate::llm::gate::Shared::new(
            crate::llm::gate::Budget {
                tokens: task.budget_tokens,
                usd: task.budget_usd,
            },
            kugetsu_protocol::Usage::default(),
            task.governed.then(|| outbox.clone()),
        ),
        tool_gate: task.tool_gate.then(ToolGate::new),
    };
    let mailbox = Mailbox {
        cancel: control.cancel.clone(),
        shutdown: control.shutdown.clone(),
        steer: steer_tx,
        gate: control.gate.clone(),
        tool_gate: control.tool_gate.clone(),
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
            Ok(SupervisorMessage::Start { task, resume }) => return Some((*task, resume)),
            Ok(SupervisorMessage::Cancel | SupervisorMessage::Shutdown) => return None,
            Ok(SupervisorMessage::Steer { .. }) => {
                eprintln!("kugetsu-worker: ignoring steer before start");
            }
            Ok(SupervisorMessage::Grant { .. } | SupervisorMessage::Deny { .. }) => {
                eprintln!("kugetsu-worker: ignoring a permit answer before start");
            }
            Ok(SupervisorMessage::Proceed { call_id }) => {
                eprintln!("kugetsu-worker: ignoring proceed for call {call_id} before start");
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
    /// Where permit answers go.
    gate: Arc<crate::llm::gate::Shared>,
    /// Where `proceed` goes (`None`: the task's tools are not gated).
    tool_gate: Option<Arc<ToolGate>>,
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
            Ok(SupervisorMessage::Grant { id }) => self.gate.answer(id, Answer::Grant),
            Ok(SupervisorMessage::Deny { id, reason, pause }) => {
                self.gate.answer(id, Answer::Deny { reason, pause });
            }
            Ok(SupervisorMessage::Proceed { call_id }) => match &self.tool_gate {
                Some(gate) => gate.proceed(&call_id),
                None => eprintln!(
                    "kugetsu-worker: ignoring proceed for call {call_id}: this task's tools are not gated"
                ),
            },
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

    /// The supervisor closed our stdin (or reading it failed): nobody is listening any more.
    /// That cancels the task, unless a tool call waits for its `proceed`: then the call has
    /// not run and another node may take the task over, so the worker stops as on `shutdown`
    /// and records no result for it.
    fn closed(&self) {
        if self.tool_gate.as_ref().is_some_and(|g| g.is_waiting()) {
            self.shutdown.cancel();
        } else {
            self.cancel.cancel();
        }
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
    mailbox.closed();
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn delta(len: usize) -> Event {
        Event::TextDelta {
            text: "x".repeat(len),
        }
    }

    /// A resumed worker's replays must be in the pipe before it journals a new turn (see
    /// `session::ReplayedCall`): `delivered` waits for the write, not just for the queue.
    #[tokio::test]
    async fn delivered_waits_until_everything_queued_is_written() {
        let (outbox, queue) = Outbox::for_writer();
        // A pipe far smaller than what is queued: the writer blocks until it is read.
        let (ours, mut theirs) = tokio::io::duplex(64);
        let writer = tokio::spawn(writer(ours, queue));
        outbox.replay(delta(300));
        outbox.emit(delta(300));
        {
            let waiting = outbox.delivered();
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(Duration::from_millis(100), &mut waiting)
                    .await
                    .is_err(),
                "delivered before the supervisor could read a byte"
            );
            let mut read = Vec::new();
            let mut buf = [0u8; 256];
            let read_all = async {
                while read.iter().filter(|b| **b == b'\n').count() < 2 {
                    let n = theirs.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the pipe closed early");
                    read.extend_from_slice(&buf[..n]);
                }
            };
            tokio::time::timeout(Duration::from_secs(5), read_all)
                .await
                .expect("the writer wrote both lines");
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("delivered once both lines were written");
        }
        // Nothing queued since: no wait.
        tokio::time::timeout(Duration::from_secs(5), outbox.delivered())
            .await
            .expect("nothing left to deliver");
        drop(outbox);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn delivered_does_not_wait_for_a_writer_that_is_gone() {
        let (outbox, queue) = Outbox::for_writer();
        let (ours, theirs) = tokio::io::duplex(64);
        drop(theirs); // the supervisor closed our stdout
        let writer = tokio::spawn(writer(ours, queue));
        outbox.emit(delta(10));
        tokio::time::timeout(Duration::from_secs(5), outbox.delivered())
            .await
            .expect("no writer to wait for");
        writer.await.unwrap();
        // An outbox without any writer (tests, embedding) never waits either.
        let (outbox, _rx) = Outbox::channel();
        outbox.emit(delta(10));
        tokio::time::timeout(Duration::from_secs(5), outbox.delivered())
            .await
            .expect("a channel outbox has nothing to wait for");
    }

    fn new_mailbox(tool_gate: Option<Arc<ToolGate>>) -> (Mailbox, mpsc::UnboundedReceiver<String>) {
        let (steer, steers) = mpsc::unbounded_channel();
        let mailbox = Mailbox {
            cancel: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            steer,
            gate: Arc::default(),
            tool_gate,
        };
        (mailbox, steers)
    }

    /// Runs the reader task over `input` (then end-of-file) to its end.
    async fn read_all(input: &'static [u8], mailbox: &Mailbox) {
        let copy = Mailbox {
            cancel: mailbox.cancel.clone(),
            shutdown: mailbox.shutdown.clone(),
            steer: mailbox.steer.clone(),
            gate: mailbox.gate.clone(),
            tool_gate: mailbox.tool_gate.clone(),
        };
        tokio::time::timeout(
            Duration::from_secs(5),
            read_control(LineReader::new(BufReader::new(input)), copy),
        )
        .await
        .expect("the reader stops at end-of-file");
    }

    #[tokio::test]
    async fn stdin_closing_while_a_gated_call_waits_is_a_shutdown() {
        let gate = ToolGate::new();
        let pass = gate.expect("call_a");
        let (mailbox, mut steers) = new_mailbox(Some(gate.clone()));
        read_all(
            b"{\"type\":\"steer\",\"text\":\"also docs\"}\n{\"type\":\"proceed\",\"call_id\":\"call_b\"}\n",
            &mailbox,
        )
        .await;
        assert!(
            mailbox.shutdown.is_cancelled(),
            "not stopped as on shutdown"
        );
        assert!(
            !mailbox.cancel.is_cancelled(),
            "cancelled: the call would be answered"
        );
        // The steer is queued as at any other time; the other call's proceed changed nothing.
        assert_eq!(steers.try_recv().ok().as_deref(), Some("also docs"));
        assert!(gate.is_waiting());
        drop(pass);
    }

    #[tokio::test]
    async fn stdin_closing_when_no_call_waits_is_a_cancel() {
        // A call that got its proceed no longer waits.
        let gate = ToolGate::new();
        let pass = gate.expect("call_a");
        let (mailbox, _steers) = new_mailbox(Some(gate.clone()));
        read_all(b"{\"type\":\"proceed\",\"call_id\":\"call_a\"}\n", &mailbox).await;
        tokio::time::timeout(Duration::from_secs(5), pass.wait())
            .await
            .expect("the proceed read from stdin let the call go");
        assert!(mailbox.cancel.is_cancelled());
        assert!(!mailbox.shutdown.is_cancelled());

        // Nor does anything wait in a task whose tools are not gated (a proceed is ignored).
        let (mailbox, _steers) = new_mailbox(None);
        read_all(b"{\"type\":\"proceed\",\"call_id\":\"call_a\"}\n", &mailbox).await;
        assert!(mailbox.cancel.is_cancelled());
        assert!(!mailbox.shutdown.is_cancelled());
    }
}

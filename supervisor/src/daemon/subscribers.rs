//! Event fan-out to subscribers, each with a bounded backlog.
//!
//! The daemon never waits for a subscriber and never buffers without bound for one: each
//! event is serialized once into a shared line, and each subscriber's [`Sink`] admits it only
//! while that subscriber's backlog (lines queued but not yet written to its socket) stays under
//! [`BACKLOG_LINES`] and [`BACKLOG_BYTES`]. A subscriber that falls further behind is cut off:
//! it gets the lines already queued, then a last `subscription_ended` notification saying from
//! which `seq` to subscribe again, and nothing more.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kugetsu_protocol::{Event, EventEnvelope};
use tokio::sync::{mpsc, oneshot};

use crate::rpc::{self, SubscriptionEnded};

/// Most lines queued for one subscriber.
pub const BACKLOG_LINES: usize = 4096;
/// Most bytes queued for one subscriber.
pub const BACKLOG_BYTES: usize = 8 * 1024 * 1024;

/// One serialized notification, shared by every subscriber that gets it.
#[derive(Debug)]
pub struct Line {
    pub task: String,
    pub seq: u64,
    /// Whether this is the task's `finished` event.
    pub last: bool,
    /// The JSON-RPC notification, newline included.
    pub bytes: Vec<u8>,
}

impl Line {
    /// The `event` notification of `envelope`.
    pub fn event(envelope: &EventEnvelope) -> Arc<Line> {
        let mut bytes = serde_json::to_vec(&rpc::event_notification(envelope)).unwrap_or_default();
        bytes.push(b'\n');
        Arc::new(Line {
            task: envelope.task.clone(),
            seq: envelope.seq,
            last: matches!(envelope.event, Event::Finished(_)),
            bytes,
        })
    }
}

/// The daemon's end of one subscription.
#[derive(Debug)]
pub struct Sink {
    lines: mpsc::Sender<Arc<Line>>,
    /// Bytes queued and not yet written, shared with the connection that writes them.
    backlog: Arc<AtomicUsize>,
    /// Where the reason goes when the daemon cuts the subscription off.
    ended: Option<oneshot::Sender<SubscriptionEnded>>,
}

/// The connection's end of one subscription.
#[derive(Debug)]
pub struct Feed {
    pub lines: mpsc::Receiver<Arc<Line>>,
    /// Subtract each line's length once it is written.
    pub backlog: Arc<AtomicUsize>,
    /// Resolves if the daemon cut the subscription off.
    pub ended: oneshot::Receiver<SubscriptionEnded>,
}

/// A connected sink and feed.
pub fn channel() -> (Sink, Feed) {
    let (lines, lines_rx) = mpsc::channel(BACKLOG_LINES);
    let (ended, ended_rx) = oneshot::channel();
    let backlog = Arc::new(AtomicUsize::new(0));
    (
        Sink {
            lines,
            backlog: backlog.clone(),
            ended: Some(ended),
        },
        Feed {
            lines: lines_rx,
            backlog,
            ended: ended_rx,
        },
    )
}

impl Sink {
    /// Queues `line`, waiting while the subscriber's feed is full (for a producer that can
    /// wait, such as a follower reading a cluster's database); false once the feed is gone.
    pub async fn push(&self, line: Arc<Line>) -> bool {
        let len = line.bytes.len();
        if self.lines.send(line).await.is_err() {
            return false;
        }
        self.backlog.fetch_add(len, Ordering::AcqRel);
        true
    }

    /// Whether the feed's end is gone.
    pub fn is_closed(&self) -> bool {
        self.lines.is_closed()
    }

    /// Queues `line` unless the subscriber is too far behind.
    fn offer(&self, line: &Arc<Line>) -> Result<(), Offer> {
        let queued = self.backlog.load(Ordering::Acquire);
        if queued + line.bytes.len() > BACKLOG_BYTES && queued > 0 {
            return Err(Offer::Lagged);
        }
        match self.lines.try_send(line.clone()) {
            Ok(()) => {
                self.backlog.fetch_add(line.bytes.len(), Ordering::AcqRel);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Offer::Lagged),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Offer::Gone),
        }
    }
}

enum Offer {
    Lagged,
    Gone,
}

/// Someone following events.
#[derive(Debug)]
struct Subscriber {
    /// One task's events, or every task's.
    task: Option<String>,
    sink: Sink,
    /// The highest `seq` queued per task, so an event is never sent twice.
    sent: BTreeMap<String, u64>,
}

/// Every subscriber of the daemon.
#[derive(Debug, Default)]
pub struct Subscribers {
    subs: Vec<Subscriber>,
}

impl Subscribers {
    /// Adds a subscriber to `task` (or every task) that already has `after_seq` of it.
    pub fn add(&mut self, task: Option<String>, after_seq: u64, sink: Sink) {
        let mut sent = BTreeMap::new();
        if let Some(task) = &task {
            sent.insert(task.clone(), after_seq);
        }
        self.subs.push(Subscriber { task, sink, sent });
    }

    /// How many subscribers there are.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether nobody subscribes.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Hands `envelope` to everyone who follows its task; cuts off whoever lags.
    pub fn fan_out(&mut self, envelope: &EventEnvelope) {
        if self.subs.is_empty() {
            return;
        }
        let mut line: Option<Arc<Line>> = None;
        self.subs.retain_mut(|sub| {
            if sub.task.as_deref().is_some_and(|t| t != envelope.task) {
                return !sub.sink.lines.is_closed();
            }
            let last = sub.sent.entry(envelope.task.clone()).or_insert(0);
            if envelope.seq <= *last {
                return true;
            }
            let line = line.get_or_insert_with(|| Line::event(envelope));
            match sub.sink.offer(line) {
                Ok(()) => {
                    *last = envelope.seq;
                    // A one-task subscription ends with that task's `finished`.
                    !(sub.task.is_some() && line.last)
                }
                Err(Offer::Gone) => false,
                Err(Offer::Lagged) => {
                    cut_off(sub);
                    false
                }
            }
        });
    }
}

fn cut_off(sub: &mut Subscriber) {
    let (after_seq, delivered) = match &sub.task {
        Some(task) => (sub.sent.get(task).copied(), BTreeMap::new()),
        None => (None, std::mem::take(&mut sub.sent)),
    };
    let message = match after_seq {
        Some(seq) => format!(
            "the subscriber fell too far behind and was cut off; subscribe again with after_seq={seq} to continue"
        ),
        None => "the subscriber fell too far behind and was cut off; `delivered` holds the last seq sent per task: subscribe to each with after_seq=SEQ to continue".to_owned(),
    };
    if let Some(ended) = sub.sink.ended.take() {
        let _ = ended.send(SubscriptionEnded {
            reason: "lagged".to_owned(),
            message,
            after_seq,
            delivered,
        });
    }
}

#[cfg(test)]
mod tests {
    use kugetsu_protocol::event::EVENT_FORMAT_VERSION;

    use super::*;

    fn delta(task: &str, seq: u64, size: usize) -> EventEnvelope {
        EventEnvelope {
            v: EVENT_FORMAT_VERSION,
            task: task.to_owned(),
            seq,
            ts: "2026-01-01T00:00:00.000Z".to_owned(),
            event: Event::TextDelta {
                text: "x".repeat(size),
            },
        }
    }

    #[test]
    fn a_subscriber_that_never_reads_is_cut_off_with_where_to_resume() {
        let mut subs = Subscribers::default();
        let (sink, mut feed) = channel();
        subs.add(Some("t".to_owned()), 0, sink);
        let mut seq = 0;
        while !subs.is_empty() {
            seq += 1;
            subs.fan_out(&delta("t", seq, 64 * 1024));
            assert!(seq < 10_000, "never cut off");
        }
        // What was queued stays within the budget, and the last queued seq is where to resume.
        let queued = feed.backlog.load(Ordering::Acquire);
        assert!(queued <= BACKLOG_BYTES, "{queued}");
        let mut last = 0;
        while let Ok(line) = feed.lines.try_recv() {
            last = line.seq;
        }
        let ended = feed.ended.try_recv().unwrap();
        assert_eq!(ended.reason, "lagged");
        assert_eq!(ended.after_seq, Some(last));
        assert!(ended.message.contains(&format!("after_seq={last}")));
    }

    #[test]
    fn events_are_deduplicated_and_filtered_by_task() {
        let mut subs = Subscribers::default();
        let (sink, mut feed) = channel();
        subs.add(Some("a".to_owned()), 2, sink);
        for seq in 1..=4 {
            subs.fan_out(&delta("a", seq, 1));
            subs.fan_out(&delta("b", seq, 1));
        }
        subs.fan_out(&delta("a", 4, 1));
        let mut got = Vec::new();
        while let Ok(line) = feed.lines.try_recv() {
            got.push((line.task.clone(), line.seq));
        }
        assert_eq!(got, [("a".to_owned(), 3), ("a".to_owned(), 4)]);
        drop(feed);
        subs.fan_out(&delta("a", 5, 1));
        assert!(subs.is_empty(), "a closed feed is dropped");
    }
}

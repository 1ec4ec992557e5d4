//! The event streams, as Server-Sent Events.
//!
//! `GET /api/v1/tasks/ID/events`: the task's events from `events.jsonl` (after the
//! `Last-Event-ID` header, else `?after=N`, else from the start), then live ones, each as
//! `id: SEQ` and `data: ENVELOPE` (the event envelope, the same JSON as on the socket and in
//! the log); the stream ends after `finished`. A finished task with nothing after the id
//! asked for answers 204, which tells an `EventSource` not to reconnect.
//!
//! `GET /api/v1/events`: every task's live events (no `id:` lines: each envelope names its
//! task and seq); it ends only when the daemon stops.
//!
//! Both are daemon subscriptions like the socket's ([`open_subscription`]) with the same
//! bounded backlog: a client that reads slower than events come is cut off, after the events
//! already queued for it, with a last `event: subscription_ended` whose data says where to
//! resume. Bytes go through a small pipe to the response body; a client that stops reading
//! for [`STALL`] loses the stream. A `: keep-alive` comment goes out every [`KEEP_ALIVE`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kugetsu_protocol::{Event, EventEnvelope};
use serde::Deserialize;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use crate::daemon::connection::open_subscription;
use crate::daemon::subscribers::Feed;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::rpc::{self, SubscribeParams};
use crate::task::events;

/// How often an idle stream carries a comment line.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a write may wait for a client that does not read before the stream is dropped.
pub const STALL: Duration = Duration::from_secs(60);
/// The pipe between the forwarding task and the response body.
const PIPE_BYTES: usize = 64 * 1024;
/// Most event streams open at once (each may hold a subscriber's whole backlog).
pub const MAX_STREAMS: usize = 64;

/// `?after=N`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct After {
    #[serde(default)]
    after: Option<u64>,
}

/// `GET /api/v1/tasks/ID/events`.
pub async fn task_events(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<After>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = q.map_err(|e| ApiError::bad_request(e.body_text()))?.0;
    let after = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event's seq"))?,
        None => q.after.unwrap_or(0),
    };
    let permit = app.stream_permit()?;
    let params = SubscribeParams {
        task: Some(id),
        after_seq: after,
    };
    let (replay, feed) = open_subscription(&params, app.daemon()).await?;
    let past = match &replay.log {
        Some(log) => events::read_all(log).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let past: Vec<EventEnvelope> = past.into_iter().filter(|e| e.seq > after).collect();
    if !replay.live && past.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let stream = Stream {
        single: true,
        after,
        live: replay.live,
        stop: app.stopping().clone(),
    };
    Ok(respond(move |out| async move {
        let _permit = permit;
        stream.forward(past, feed, out).await;
    }))
}

/// `GET /api/v1/events`.
pub async fn all_events(State(app): State<AppState>) -> Result<Response, ApiError> {
    let permit = app.stream_permit()?;
    let (_, feed) = open_subscription(&SubscribeParams::default(), app.daemon()).await?;
    let stream = Stream {
        single: false,
        after: 0,
        live: true,
        stop: app.stopping().clone(),
    };
    Ok(respond(move |out| async move {
        let _permit = permit;
        stream.forward(Vec::new(), feed, out).await;
    }))
}

/// An event-stream response whose bytes `write` produces on its end of a pipe.
fn respond<F, Fut>(write: F) -> Response
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (writer, reader) = tokio::io::duplex(PIPE_BYTES);
    tokio::spawn(write(writer));
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// What one stream forwards.
struct Stream {
    /// One task's events (ends after `finished`), or every task's.
    single: bool,
    /// The client has the task's events up to this seq.
    after: u64,
    /// Whether live events follow the replay.
    live: bool,
    stop: CancellationToken,
}

/// The `params` of an `event` notification, as the bytes it was serialized to.
#[derive(Deserialize)]
struct Notification<'a> {
    #[serde(borrow)]
    params: &'a serde_json::value::RawValue,
}

impl Stream {
    async fn forward(self, past: Vec<EventEnvelope>, mut feed: Feed, mut out: DuplexStream) {
        let mut last = self.after;
        for envelope in &past {
            last = envelope.seq;
            let data = serde_json::to_string(envelope).unwrap_or_default();
            if !send(
                &mut out,
                &frame(self.single.then_some(envelope.seq), None, &data),
            )
            .await
            {
                return;
            }
            if self.single && matches!(envelope.event, Event::Finished(_)) {
                return;
            }
        }
        drop(past);
        if !self.live {
            return;
        }
        let mut keep_alive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            tokio::select! {
                line = feed.lines.recv() => {
                    let Some(line) = line else { break };
                    let size = line.bytes.len();
                    if self.single && line.seq <= last {
                        // Covered by the replay.
                        feed.backlog.fetch_sub(size, Ordering::AcqRel);
                        continue;
                    }
                    let data = serde_json::from_slice::<Notification<'_>>(&line.bytes)
                        .map(|n| n.params.get().to_owned())
                        .unwrap_or_default();
                    let id = self.single.then_some(line.seq);
                    let sent = send(&mut out, &frame(id, None, &data)).await;
                    feed.backlog.fetch_sub(size, Ordering::AcqRel);
                    if !sent || (self.single && line.last) {
                        return;
                    }
                    last = line.seq;
                }
                _ = keep_alive.tick() => {
                    if !send(&mut out, b": keep-alive\n\n").await {
                        return;
                    }
                }
                () = self.stop.cancelled() => {
                    let _ = send(&mut out, b": the daemon is stopping\n\n").await;
                    return;
                }
            }
        }
        // The daemon ended the subscription: say why, if it cut the client off.
        if let Ok(ended) = feed.ended.try_recv() {
            let data = serde_json::to_string(&ended).unwrap_or_default();
            let _ = send(&mut out, &frame(None, Some(rpc::SUBSCRIPTION_ENDED), &data)).await;
        }
    }
}

/// One SSE message.
fn frame(id: Option<u64>, event: Option<&str>, data: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(data.len() + 32);
    if let Some(id) = id {
        bytes.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    if let Some(event) = event {
        bytes.extend_from_slice(format!("event: {event}\n").as_bytes());
    }
    // JSON text holds no raw newline, so one data line carries it.
    bytes.extend_from_slice(b"data: ");
    bytes.extend_from_slice(data.as_bytes());
    bytes.extend_from_slice(b"\n\n");
    bytes
}

/// Writes to the pipe; false once the client is gone or stalled for [`STALL`].
async fn send(out: &mut DuplexStream, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(STALL, out.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_sse_messages() {
        assert_eq!(frame(Some(7), None, "{}"), b"id: 7\ndata: {}\n\n");
        assert_eq!(
            frame(None, Some("subscription_ended"), "{\"a\":1}"),
            b"event: subscription_ended\ndata: {\"a\":1}\n\n"
        );
    }
}

//! One client connection to the daemon: JSON-RPC 2.0 requests in, responses and event
//! notifications out, one message per line.
//!
//! The handshake is the peer check: a connection whose peer uid is not ours is closed before
//! a byte is read. Then requests are read with a size cap (an oversized line is answered with
//! an error and skipped; the connection survives). One writer task owns the socket's send half,
//! fed by a bounded channel, so responses and notifications never interleave mid-line and a
//! client that stops reading holds a bounded amount of the daemon's memory (see
//! [`crate::daemon::subscribers`]).
//!
//! The slow parts of a request run here, not in the actor: a submission is validated and
//! written to disk (record, live marker, `queued` event) before the actor is asked to queue it;
//! logs are read from disk here; `clean` works on finished tasks' directories here; `diff`
//! and `merge` (git, and a test command) run here too.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use interprocess::local_socket::tokio::Stream;
use kugetsu_protocol::{DecodeError, Event, EventEnvelope, LineReader};
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::daemon::command::{Command, Replay};
use crate::daemon::socket::{Half, halves, peer_is_owner, peer_pid};
use crate::daemon::subscribers::{self, Feed, Line};
use crate::rpc::{
    self, Call, EventsParams, Method, ResumeParams, Resumed, RpcError, SubmitParams, Submitted,
    SubscribeParams, Subscribed,
};
use crate::task::events::{self, EventLog};
use crate::task::prepare;
use crate::task::record::{Origin, StateDir};
use crate::task::request::TaskRequest;

/// Lines waiting for the socket writer. Small: the real backlog bound is per subscription.
const OUTBOX: usize = 64;

/// One line for the writer: a response, or a notification shared with other subscribers.
#[derive(Debug)]
enum Out {
    Owned(Vec<u8>),
    /// Its length is returned to the subscription's backlog once written.
    Shared(Arc<Line>, Arc<std::sync::atomic::AtomicUsize>),
}

/// Serves one connection until the client hangs up.
pub async fn serve_connection(
    stream: Stream,
    daemon: mpsc::UnboundedSender<Command>,
    state: StateDir,
) {
    if !peer_is_owner(&stream) {
        tracing::warn!("refused a connection from another user");
        return;
    }
    if let Some(reason) = crate::daemon::peer::shadow_reason(peer_pid(&stream)) {
        tracing::warn!("refused a connection from a shadow's process: {reason}");
        return;
    }
    let (recv, send) = halves(stream);
    let (out, out_rx) = mpsc::channel::<Out>(OUTBOX);
    let writer = tokio::spawn(write_lines(send, out_rx));
    read_requests(recv, &out, &daemon, &state).await;
    drop(out);
    let _ = writer.await;
}

async fn write_lines(mut send: Half, mut rx: mpsc::Receiver<Out>) {
    while let Some(line) = rx.recv().await {
        let written = match &line {
            Out::Owned(bytes) => send.write_all(bytes).await,
            Out::Shared(line, backlog) => {
                let written = send.write_all(&line.bytes).await;
                backlog.fetch_sub(line.bytes.len(), Ordering::AcqRel);
                written
            }
        };
        if written.is_err() {
            return;
        }
    }
    let _ = send.flush().await;
}

fn encode(message: &Value) -> Out {
    let mut line = serde_json::to_vec(message).unwrap_or_default();
    line.push(b'\n');
    Out::Owned(line)
}

/// Most requests of one connection in progress at once; reading pauses beyond it.
const IN_FLIGHT: usize = 64;

/// What one request produced: its response (none for a notification), and for a
/// subscription the forwarding to start once that response is out.
#[derive(Debug, Default)]
struct Answer {
    response: Option<Out>,
    then: Option<Forward>,
}

/// A subscription waiting for its response to be written before its events follow.
#[derive(Debug)]
struct Forward {
    params: SubscribeParams,
    replay: Replay,
    feed: Feed,
}

fn answer(id: Option<Value>, result: Result<Value, RpcError>) -> Answer {
    Answer {
        response: id.map(|id| encode(&rpc::response(id, result))),
        then: None,
    }
}

/// Writes answers in request order as they complete, so requests run concurrently (many
/// submissions on one connection validate and reach the disk in parallel) while responses keep
/// the order of the requests.
async fn respond_in_order(mut pending: mpsc::Receiver<JoinHandle<Answer>>, out: mpsc::Sender<Out>) {
    while let Some(handle) = pending.recv().await {
        let Ok(answer) = handle.await else { continue };
        if let Some(response) = answer.response
            && out.send(response).await.is_err()
        {
            return;
        }
        if let Some(Forward {
            params,
            replay,
            feed,
        }) = answer.then
        {
            tokio::spawn(forward(params, replay, feed, out.clone()));
        }
    }
}

async fn read_requests(
    recv: Half,
    out: &mpsc::Sender<Out>,
    daemon: &mpsc::UnboundedSender<Command>,
    state: &StateDir,
) {
    let (pending, pending_rx) = mpsc::channel::<JoinHandle<Answer>>(IN_FLIGHT);
    let responder = tokio::spawn(respond_in_order(pending_rx, out.clone()));
    let mut reader = LineReader::with_limit(BufReader::new(recv), rpc::MAX_REQUEST_BYTES);
    loop {
        let line = match reader.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(DecodeError::Io { .. }) => break,
            Err(e) => {
                let error = RpcError::new(rpc::INVALID_REQUEST, e.to_string());
                let ready = answer(Some(Value::Null), Err(error));
                if pending.send(tokio::spawn(async { ready })).await.is_err() {
                    break;
                }
                continue;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let work = match serde_json::from_slice::<Value>(&line) {
            Err(e) => {
                let error = RpcError::new(rpc::PARSE_ERROR, format!("parse error: {e}"));
                let ready = answer(Some(Value::Null), Err(error));
                tokio::spawn(async { ready })
            }
            Ok(Value::Array(batch)) => {
                tokio::spawn(serve_batch(batch, daemon.clone(), state.clone()))
            }
            Ok(value) => start(value, daemon, state),
        };
        if pending.send(work).await.is_err() {
            break;
        }
    }
    drop(pending);
    let _ = responder.await;
}

/// Starts serving one request (or answers at once why it is not one).
fn start(
    value: Value,
    daemon: &mpsc::UnboundedSender<Command>,
    state: &StateDir,
) -> JoinHandle<Answer> {
    match parse(value) {
        Ok((id, call)) => tokio::spawn(serve_call(id, call, daemon.clone(), state.clone())),
        Err((id, error)) => {
            let ready = answer(id, Err(error));
            tokio::spawn(async { ready })
        }
    }
}

/// Serves a JSON-RPC batch: its requests run concurrently and their responses go out as one
/// array line, in the batch's order (notifications leave no entry; a batch of notifications
/// only gets no line at all). An empty batch, or one over [`rpc::MAX_BATCH`], gets one
/// Invalid Request error. `subscribe` is refused inside a batch: its events could not follow
/// a response that is part of an array.
async fn serve_batch(
    batch: Vec<Value>,
    daemon: mpsc::UnboundedSender<Command>,
    state: StateDir,
) -> Answer {
    if batch.is_empty() || batch.len() > rpc::MAX_BATCH {
        let why = if batch.is_empty() {
            "empty batch".to_owned()
        } else {
            format!(
                "batch of {} requests (at most {})",
                batch.len(),
                rpc::MAX_BATCH
            )
        };
        return answer(
            Some(Value::Null),
            Err(RpcError::new(rpc::INVALID_REQUEST, why)),
        );
    }
    let work: Vec<JoinHandle<Answer>> = batch
        .into_iter()
        .map(|value| {
            if value.get("method").and_then(Value::as_str) == Some(rpc::Subscribe::NAME) {
                let id = match parse(value) {
                    Ok((id, _)) | Err((id, _)) => id,
                };
                let error = RpcError::new(
                    rpc::INVALID_REQUEST,
                    "subscribe cannot be part of a batch; send it on its own line",
                );
                let ready = answer(id, Err(error));
                return tokio::spawn(async { ready });
            }
            start(value, &daemon, &state)
        })
        .collect();
    let mut line = vec![b'['];
    let mut any = false;
    for handle in work {
        let Ok(Answer {
            response: Some(Out::Owned(mut bytes)),
            ..
        }) = handle.await
        else {
            continue;
        };
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        if any {
            line.push(b',');
        }
        line.extend_from_slice(&bytes);
        any = true;
    }
    line.extend_from_slice(b"]\n");
    Answer {
        response: any.then_some(Out::Owned(line)),
        then: None,
    }
}

/// Decodes one request; on failure, the id to answer with and the error.
fn parse(value: Value) -> Result<(Option<Value>, Call), (Option<Value>, RpcError)> {
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    let request = match serde_json::from_value::<rpc::Request>(value) {
        Ok(request) if request.jsonrpc == "2.0" => request,
        Ok(_) => {
            return Err((
                Some(id),
                RpcError::new(rpc::INVALID_REQUEST, "jsonrpc must be \"2.0\""),
            ));
        }
        Err(e) => {
            return Err((
                Some(id),
                RpcError::new(rpc::INVALID_REQUEST, format!("invalid request: {e}")),
            ));
        }
    };
    let id = request.id.clone();
    match Call::parse(&request.method, request.params) {
        Ok(call) => Ok((id, call)),
        // A notification (no id) that fails gets no answer, as JSON-RPC says.
        Err(error) => Err((id, error)),
    }
}

/// Serves one decoded request.
async fn serve_call(
    id: Option<Value>,
    call: Call,
    daemon: mpsc::UnboundedSender<Command>,
    state: StateDir,
) -> Answer {
    match call {
        Call::Subscribe(params) => subscribe(id, params, &daemon).await,
        Call::Events(params) => match events_page(&params, &daemon).await {
            // The page is built from the log's own lines, never as a tree of values.
            Ok(page) => Answer {
                response: id.map(|id| {
                    let mut line = b"{\"jsonrpc\":\"2.0\",\"id\":".to_vec();
                    line.extend_from_slice(&serde_json::to_vec(&id).unwrap_or_default());
                    line.extend_from_slice(b",\"result\":");
                    line.extend_from_slice(&page);
                    line.extend_from_slice(b"}\n");
                    Out::Owned(line)
                }),
                then: None,
            },
            Err(error) => answer(id, Err(error)),
        },
        call => answer(id, dispatch(call, &daemon, &state).await),
    }
}

/// Serves one request that has one answer: the entry point shared by this socket and the
/// HTTP API ([`crate::http`]), so both run the same code for every method. `subscribe` is a
/// stream, not an answer: it is refused here (see [`open_subscription`]).
pub async fn dispatch(
    call: Call,
    daemon: &mpsc::UnboundedSender<Command>,
    state: &StateDir,
) -> Result<Value, RpcError> {
    match call {
        Call::Subscribe(_) => Err(RpcError::new(
            rpc::INVALID_REQUEST,
            "subscribe is a stream of events, not a request with one answer",
        )),
        Call::Submit(params) => typed::<rpc::Submit>(submit(params, daemon).await),
        Call::Resume(params) => match crate::cluster::active() {
            Some(cluster) => typed::<rpc::Resume>(
                cluster
                    .resume(&params.task, params.budget_tokens, params.budget_usd)
                    .await,
            ),
            None => typed::<rpc::Resume>(resume(params, daemon).await),
        },
        Call::List(params) if crate::cluster::active().is_some() => {
            let cluster = cluster_of()?;
            typed::<rpc::List>(cluster.list(params.all).await)
        }
        Call::Get(params) if crate::cluster::active().is_some() => {
            typed::<rpc::Get>(cluster_of()?.get(&params.task).await)
        }
        Call::Cancel(params) if crate::cluster::active().is_some() => {
            typed::<rpc::Cancel>(cluster_of()?.cancel(&params.task).await)
        }
        Call::Steer(params) if crate::cluster::active().is_some() => {
            typed::<rpc::Steer>(cluster_of()?.steer(&params.task, &params.text).await)
        }
        Call::Diff(params) if crate::cluster::active().is_some() => {
            cluster_of()?.ensure_local(&params.task).await?;
            let result = crate::land::diff::diff(state, &params)
                .await
                .map_err(|e| RpcError::from_cli(&e));
            typed::<rpc::Diff>(result)
        }
        Call::Merge(params) if crate::cluster::active().is_some() => {
            for task in &params.tasks {
                cluster_of()?.ensure_local(task).await?;
            }
            typed::<rpc::Merge>(merge(params, daemon).await)
        }
        Call::Events(params) => {
            let page = events_page(&params, daemon).await?;
            serde_json::from_slice(&page)
                .map_err(|e| RpcError::new(rpc::INTERNAL_ERROR, e.to_string()))
        }
        Call::Clean(params) => {
            let cleaned = crate::daemon::housekeeping::clean(state, params.purge, None).await;
            if !cleaned.purged.is_empty() {
                let tasks = cleaned.purged.clone();
                let _ = daemon.send(Command::Forget { tasks });
            }
            typed::<rpc::Clean>(Ok(cleaned))
        }
        Call::Diff(params) => {
            let result = crate::land::diff::diff(state, &params)
                .await
                .map_err(|e| RpcError::from_cli(&e));
            typed::<rpc::Diff>(result)
        }
        Call::Merge(params) => typed::<rpc::Merge>(merge(params, daemon).await),
        call => ask(daemon, |reply| Command::Call { call, reply })
            .await
            .and_then(|r| r),
    }
}

fn typed<M: Method>(result: Result<M::Result, RpcError>) -> Result<Value, RpcError> {
    result.and_then(|r| {
        serde_json::to_value(r).map_err(|e| RpcError::new(rpc::INTERNAL_ERROR, e.to_string()))
    })
}

/// Sends the actor a command and waits for its answer.
async fn ask<T>(
    daemon: &mpsc::UnboundedSender<Command>,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, RpcError> {
    let (reply, answer) = oneshot::channel();
    daemon
        .send(make(reply))
        .map_err(|_| RpcError::shutting_down())?;
    answer.await.map_err(|_| RpcError::shutting_down())
}

/// The cluster this daemon is a node of (checked by the caller).
fn cluster_of() -> Result<&'static std::sync::Arc<crate::cluster::Cluster>, RpcError> {
    crate::cluster::active()
        .ok_or_else(|| RpcError::new(rpc::INTERNAL_ERROR, "not a node of a cluster"))
}

/// One page of a task's events: from the cluster's database on a node, else from disk.
async fn events_page(
    params: &EventsParams,
    daemon: &mpsc::UnboundedSender<Command>,
) -> Result<Vec<u8>, RpcError> {
    match crate::cluster::active() {
        Some(cluster) => {
            cluster
                .events_page(&params.task, params.after_seq, params.limit)
                .await
        }
        None => read_events(params, daemon).await,
    }
}

/// Lands tasks (slow: merges and a test command), then tells the actor what landed.
async fn merge(
    params: rpc::MergeParams,
    daemon: &mpsc::UnboundedSender<Command>,
) -> Result<rpc::MergeReport, RpcError> {
    let (config, state) = ask(daemon, |reply| Command::Settings { reply }).await?;
    let report = crate::land::merge::merge(&state, &config, &params)
        .await
        .map_err(|e| RpcError::from_cli(&e))?;
    let landed: Vec<_> = report
        .landed
        .iter()
        .filter_map(|l| {
            crate::land::task::read_marker(&state.task(&l.task)).map(|m| (l.task.clone(), m))
        })
        .collect();
    if !landed.is_empty() {
        let _ = daemon.send(Command::Merged { landed });
    }
    Ok(report)
}

/// Validates and creates a submitted task, then has the actor queue it.
async fn submit(
    params: SubmitParams,
    daemon: &mpsc::UnboundedSender<Command>,
) -> Result<Submitted, RpcError> {
    let (config, state) = ask(daemon, |reply| Command::Admit { reply }).await??;
    if !params.repo.is_absolute() {
        return Err(RpcError::new(
            rpc::INVALID_PARAMS,
            format!(
                "repo must be an absolute path, not {}",
                params.repo.display()
            ),
        ));
    }
    if let Some(limit) = params.mem_limit {
        crate::config::check_mem_limit(limit)
            .map_err(|e| RpcError::new(rpc::INVALID_PARAMS, format!("mem_limit: {e}")))?;
    }
    if params.max_turns == Some(0) {
        return Err(RpcError::new(
            rpc::INVALID_PARAMS,
            "max_turns must be at least 1".to_owned(),
        ));
    }
    let request = TaskRequest {
        prompt: params.prompt,
        repo: params.repo,
        base: params.base,
        no_worktree: params.no_worktree,
        model: params.model,
        max_turns: params.max_turns,
        timeout: params.timeout_ms.map(std::time::Duration::from_millis),
        mem_limit: params.mem_limit,
        sandbox: params.sandbox,
        network: params.network,
        priority: params.priority,
        origin: Origin::Daemon,
        budget: crate::task::request::Budget {
            tokens: params.budget_tokens,
            usd: params.budget_usd,
        },
        mcp: params.mcp,
    };
    let env = |key: &str| std::env::var(key).ok();
    let prepared = prepare::prepare(&request, &state, &config, &env)
        .await
        .map_err(|e| RpcError::from_cli(&e))?;
    let id = prepared.record.id.clone();
    if let Some(cluster) = crate::cluster::active() {
        // The cluster's queue holds it now; whichever node claims it lays it out again.
        let queued = cluster.submit(&prepared.record).await;
        let _ = prepared.dir.remove();
        queued?;
        kugetsu_os::crash::point("queue.enqueued");
        return Ok(Submitted { task: id });
    }
    let undo = |why: String| {
        state.unmark_live(&id);
        let _ = prepared.dir.remove();
        RpcError::new(rpc::INTERNAL_ERROR, why)
    };
    if let Err(e) = state.mark_live(&id) {
        return Err(undo(format!(
            "cannot record the task: {}",
            crate::exit::describe_io(&e)
        )));
    }
    let queued = match EventLog::open(&prepared.dir.events_file(), &id) {
        Ok(mut log) => log.publish(Event::Queued {
            priority: request.priority,
        }),
        Err(e) => {
            return Err(undo(format!(
                "cannot open the event log: {}",
                crate::exit::describe_io(&e)
            )));
        }
    };
    let dir = prepared.dir.clone();
    let queued_result = ask(daemon, |reply| Command::Enqueue {
        prepared: Box::new(prepared),
        queued,
        reply,
    })
    .await
    .and_then(|r| r);
    if let Err(e) = queued_result {
        // Refused after all (the queue filled up meanwhile, or shutdown began): nothing stays.
        state.unmark_live(&id);
        let _ = dir.remove();
        return Err(e);
    }
    kugetsu_os::crash::point("queue.enqueued");
    Ok(Submitted { task: id })
}

/// Puts a paused task back in the queue, with the new budget given; its worker resumes from
/// the journal when the pool has room.
async fn resume(
    params: ResumeParams,
    daemon: &mpsc::UnboundedSender<Command>,
) -> Result<Resumed, RpcError> {
    let (config, state) = ask(daemon, |reply| Command::Admit { reply }).await??;
    let env = |key: &str| std::env::var(key).ok();
    let budget = crate::task::request::Budget {
        tokens: params.budget_tokens,
        usd: params.budget_usd,
    };
    let not_paused = |why: String| {
        RpcError::new(
            rpc::INVALID_PARAMS,
            format!("task {} is not paused: {why}", params.task),
        )
    };
    let prepared = match prepare::reopen(&params.task, &state, &config, &env, budget)
        .await
        .map_err(|e| RpcError::from_cli(&e))?
    {
        prepare::Reopened::Resumable(prepared, _) => prepared,
        prepare::Reopened::Finished(envelope) => {
            let status = match &envelope.event {
                Event::Finished(f) => f.status.as_str(),
                _ => "finished",
            };
            return Err(not_paused(format!("it finished as {status}")));
        }
    };
    if prepared.record.origin != Origin::Daemon {
        return Err(RpcError::new(
            rpc::INVALID_PARAMS,
            format!(
                "task {} was started by kugetsu run: continue it with kugetsu run --resume {}",
                params.task, params.task
            ),
        ));
    }
    let events = events::read_all(&prepared.dir.events_file())
        .await
        .unwrap_or_default();
    let progress = events::Progress::of(&events);
    if !progress
        .finished
        .as_ref()
        .is_some_and(|f| f.status == kugetsu_protocol::FinishStatus::Paused)
    {
        return Err(not_paused("it is queued or running".to_owned()));
    }
    let task = prepared.record.id.clone();
    ask(daemon, |reply| Command::Requeue {
        prepared,
        progress: Box::new(progress),
        reply,
    })
    .await??;
    Ok(Resumed {
        task,
        status: "queued".to_owned(),
    })
}

/// One page of a task's log as the JSON of an [`rpc::EventList`], made of the log's lines
/// (each checked to be an event envelope; a torn or damaged line is skipped).
async fn read_events(
    params: &EventsParams,
    daemon: &mpsc::UnboundedSender<Command>,
) -> Result<Vec<u8>, RpcError> {
    let task = params.task.clone();
    let dir = ask(daemon, |reply| Command::Locate { task, reply }).await??;
    let limit = params.limit.unwrap_or(u64::MAX);
    let mut page = b"{\"events\":[".to_vec();
    let mut count = 0u64;
    let mut more = false;
    if let Ok(file) = tokio::fs::File::open(dir.events_file()).await {
        let mut reader = LineReader::new(BufReader::new(file));
        loop {
            let line = match reader.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) | Err(DecodeError::Io { .. }) => break,
                Err(_) => continue,
            };
            match serde_json::from_slice::<EventEnvelope>(&line) {
                Ok(envelope) if envelope.seq > params.after_seq => {}
                _ => continue,
            }
            if count >= limit || page.len() >= rpc::EVENTS_PAGE_BYTES {
                more = true;
                break;
            }
            if count > 0 {
                page.push(b',');
            }
            page.extend_from_slice(line.strip_suffix(b"\n").unwrap_or(&line));
            count += 1;
        }
    }
    page.extend_from_slice(if more {
        b"],\"more\":true}"
    } else {
        b"],\"more\":false}"
    });
    Ok(page)
}

/// Registers a subscriber with the actor: where its past events are ([`Replay`]) and the
/// bounded feed its live ones arrive on (see [`crate::daemon::subscribers`]). Shared by this
/// socket's `subscribe` and the HTTP API's event streams.
pub async fn open_subscription(
    params: &SubscribeParams,
    daemon: &mpsc::UnboundedSender<Command>,
) -> Result<(Replay, Feed), RpcError> {
    let (sink, feed) = subscribers::channel();
    let task = params.task.clone();
    if let Some(cluster) = crate::cluster::active() {
        // Events come from the database (the task may run on another node).
        if let Some(task) = &task {
            cluster.get(task).await?;
        }
        let after = params.after_seq;
        tokio::spawn(async move { cluster.follow(task, after, sink).await });
        return Ok((
            Replay {
                log: None,
                live: true,
            },
            feed,
        ));
    }
    let replay = ask(daemon, |reply| Command::Subscribe {
        task,
        after_seq: params.after_seq,
        sink,
        reply,
    })
    .await
    .and_then(|r| r)?;
    Ok((replay, feed))
}

/// Registers a subscription; its answer starts the forwarding (replay from disk, then live
/// events) once the response is written, so the response always comes first.
async fn subscribe(
    id: Option<Value>,
    params: SubscribeParams,
    daemon: &mpsc::UnboundedSender<Command>,
) -> Answer {
    match open_subscription(&params, daemon).await {
        Ok((replay, feed)) => Answer {
            then: Some(Forward {
                params,
                replay,
                feed,
            }),
            ..answer(
                id,
                typed::<rpc::Subscribe>(Ok(Subscribed { subscribed: true })),
            )
        },
        Err(error) => answer(id, Err(error)),
    }
}

async fn forward(params: SubscribeParams, replay: Replay, mut feed: Feed, out: mpsc::Sender<Out>) {
    let single = params.task.is_some();
    let mut last = params.after_seq;
    if let Some(log) = &replay.log {
        let past: Vec<EventEnvelope> = events::read_all(log).await.unwrap_or_default();
        for envelope in past.iter().filter(|e| e.seq > params.after_seq) {
            last = envelope.seq;
            let line = Line::event(envelope);
            if out.send(Out::Owned(line.bytes.clone())).await.is_err() {
                return;
            }
            if single && line.last {
                return;
            }
        }
    }
    if !replay.live {
        return;
    }
    while let Some(line) = feed.lines.recv().await {
        if single && line.seq <= last {
            // Covered by the replay: give its bytes back to the backlog and skip it.
            feed.backlog.fetch_sub(line.bytes.len(), Ordering::AcqRel);
            continue;
        }
        let end = single && line.last;
        if out
            .send(Out::Shared(line, feed.backlog.clone()))
            .await
            .is_err()
            || end
        {
            return;
        }
    }
    // The daemon dropped the subscription: say why, if it was cut off.
    if let Ok(ended) = feed.ended.try_recv() {
        let notice = serde_json::json!({
            "jsonrpc": "2.0",
            "method": rpc::SUBSCRIPTION_ENDED,
            "params": ended,
        });
        let _ = out.send(encode(&notice)).await;
    }
}

/// Property tests of the JSON-RPC layer; `PROPTEST_CASES` sets the number of cases.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Any JSON value, a few levels deep.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z_0-9./]{0,10}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            "[a-z_]{0,8}",
                            prop::sample::select(vec!["task", "prompt", "repo", "after_seq"])
                                .prop_map(str::to_owned),
                        ],
                        inner
                    ),
                    0..4
                )
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    const METHODS: [&str; 12] = [
        "submit",
        "list",
        "get",
        "events",
        "cancel",
        "steer",
        "resume",
        "subscribe",
        "shutdown",
        "clean",
        "diff",
        "merge",
    ];

    /// Something shaped like a request, each member possibly missing or wrong.
    fn request() -> impl Strategy<Value = Value> {
        (
            prop::option::of(prop_oneof![Just(Value::from("2.0")), json()]),
            prop::option::of(json()),
            prop::option::of(prop_oneof![
                prop::sample::select(METHODS.to_vec()).prop_map(Value::from),
                json(),
            ]),
            prop::option::of(json()),
        )
            .prop_map(|(jsonrpc, id, method, params)| {
                let mut object = serde_json::Map::new();
                for (key, value) in [
                    ("jsonrpc", jsonrpc),
                    ("id", id),
                    ("method", method),
                    ("params", params),
                ] {
                    if let Some(value) = value {
                        object.insert(key.to_owned(), value);
                    }
                }
                Value::Object(object)
            })
    }

    proptest! {
        /// Any message decodes to a call or to a JSON-RPC error, never a panic; the answer
        /// carries the request's id (`null` kept as `null`), and only a message without an
        /// id goes unanswered.
        #[test]
        fn any_message_gets_a_call_or_a_json_rpc_error(value in prop_oneof![request(), json()]) {
            let id = value.get("id").cloned();
            match parse(value.clone()) {
                Ok((answered, _call)) => {
                    prop_assert_eq!(value["jsonrpc"].as_str(), Some("2.0"));
                    prop_assert_eq!(answered, id);
                }
                Err((answered, error)) => {
                    prop_assert!(
                        [
                            rpc::INVALID_REQUEST,
                            rpc::METHOD_NOT_FOUND,
                            rpc::INVALID_PARAMS,
                        ]
                        .contains(&error.code),
                        "{error:?}"
                    );
                    // Unanswered only when it was a well-formed notification.
                    if answered.is_none() {
                        prop_assert!(id.is_none());
                    }
                    if let Some(id) = &id && error.code != rpc::INVALID_REQUEST {
                        prop_assert_eq!(answered.as_ref(), Some(id));
                    }
                }
            }
        }

        /// Every method decodes arbitrary params to a call or an Invalid Params error.
        #[test]
        fn any_params_decode_or_are_refused(
            method in prop::sample::select(METHODS.to_vec()),
            params in prop::option::of(json()),
        ) {
            if let Err(error) = Call::parse(method, params) {
                prop_assert_eq!(error.code, rpc::INVALID_PARAMS);
            }
        }

        /// Arbitrary bytes on a line never panic the decoder.
        #[test]
        fn any_line_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
                let _ = parse(value);
            }
        }
    }
}

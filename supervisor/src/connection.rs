//! One client connection to the daemon: JSON-RPC 2.0 requests in, responses and event
//! notifications out, one message per line.
//!
//! The handshake is the peer check: a connection whose peer uid is not ours is closed before
//! a byte is read. Then requests are read with a size cap (an oversized line is answered with
//! an error and skipped; the connection survives); each is handed to the daemon actor and its
//! answer written back. One writer task owns the socket's send half, so responses and event
//! notifications never interleave mid-line.

use interprocess::local_socket::tokio::Stream;
use kugetsu_protocol::{DecodeError, Event, LineReader};
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::daemon::{Call, Command};
use crate::rpc::{self, RpcError, SubscribeParams};
use crate::socket::{Half, halves, peer_is_owner};

/// Serves one connection until the client hangs up.
pub async fn serve_connection(stream: Stream, daemon: mpsc::UnboundedSender<Command>) {
    if !peer_is_owner(&stream) {
        eprintln!("kugetsu: refused a connection from another user");
        return;
    }
    let (recv, send) = halves(stream);
    let (out, out_rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(write_lines(send, out_rx));
    read_requests(recv, &out, &daemon).await;
    drop(out);
    let _ = writer.await;
}

async fn write_lines(mut send: Half, mut rx: mpsc::UnboundedReceiver<Value>) {
    while let Some(message) = rx.recv().await {
        let mut line = serde_json::to_vec(&message).unwrap_or_default();
        line.push(b'\n');
        if send.write_all(&line).await.is_err() {
            return;
        }
    }
    let _ = send.flush().await;
}

async fn read_requests(
    recv: Half,
    out: &mpsc::UnboundedSender<Value>,
    daemon: &mpsc::UnboundedSender<Command>,
) {
    let mut reader = LineReader::with_limit(BufReader::new(recv), rpc::MAX_REQUEST_BYTES);
    loop {
        let line = match reader.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(DecodeError::Io { .. }) => return,
            Err(e) => {
                let error = RpcError::new(rpc::INVALID_REQUEST, e.to_string());
                let _ = out.send(rpc::response(Value::Null, Err(error)));
                continue;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let request: rpc::Request = match serde_json::from_slice::<Value>(&line) {
            Err(e) => {
                let error = RpcError::new(rpc::PARSE_ERROR, format!("parse error: {e}"));
                let _ = out.send(rpc::response(Value::Null, Err(error)));
                continue;
            }
            Ok(value) => {
                let id = value.get("id").cloned().unwrap_or(Value::Null);
                match serde_json::from_value::<rpc::Request>(value) {
                    Ok(request) if request.jsonrpc == "2.0" => request,
                    Ok(_) => {
                        let error = RpcError::new(rpc::INVALID_REQUEST, "jsonrpc must be \"2.0\"");
                        let _ = out.send(rpc::response(id, Err(error)));
                        continue;
                    }
                    Err(e) => {
                        let error =
                            RpcError::new(rpc::INVALID_REQUEST, format!("invalid request: {e}"));
                        let _ = out.send(rpc::response(id, Err(error)));
                        continue;
                    }
                }
            }
        };
        let id = request.id.clone();
        if request.method == "subscribe" {
            match params::<SubscribeParams>(request.params, "subscribe") {
                Ok(params) => subscribe(id, params, out, daemon).await,
                Err(error) => {
                    if let Some(id) = id {
                        let _ = out.send(rpc::response(id, Err(error)));
                    }
                }
            }
            continue;
        }
        let result = dispatch(request, daemon).await;
        if let Some(id) = id {
            let _ = out.send(rpc::response(id, result));
        }
    }
}

fn params<T: serde::de::DeserializeOwned + Default>(
    params: Option<Value>,
    method: &str,
) -> Result<T, RpcError> {
    match params {
        None | Some(Value::Null) => Ok(T::default()),
        Some(value) => serde_json::from_value(value).map_err(|e| {
            RpcError::new(
                rpc::INVALID_PARAMS,
                format!("invalid params for {method}: {e}"),
            )
        }),
    }
}

fn required<T: serde::de::DeserializeOwned>(
    params: Option<Value>,
    method: &str,
) -> Result<T, RpcError> {
    serde_json::from_value(params.unwrap_or(Value::Null)).map_err(|e| {
        RpcError::new(
            rpc::INVALID_PARAMS,
            format!("invalid params for {method}: {e}"),
        )
    })
}

async fn dispatch(
    request: rpc::Request,
    daemon: &mpsc::UnboundedSender<Command>,
) -> Result<Value, RpcError> {
    let method = request.method.as_str();
    let call = match method {
        "submit" => Call::Submit(required(request.params, method)?),
        "list" => Call::List,
        "get" => Call::Get(required(request.params, method)?),
        "events" => Call::Events(required(request.params, method)?),
        "cancel" => Call::Cancel(required(request.params, method)?),
        "steer" => Call::Steer(required(request.params, method)?),
        "shutdown" => Call::Shutdown(params(request.params, method)?),
        "clean" => Call::Clean(params(request.params, method)?),
        other => {
            return Err(RpcError::new(
                rpc::METHOD_NOT_FOUND,
                format!("unknown method {other:?}"),
            ));
        }
    };
    let (reply, answer) = oneshot::channel();
    daemon
        .send(Command::Call { call, reply })
        .map_err(|_| RpcError::new(rpc::SHUTTING_DOWN, "shutting_down"))?;
    answer
        .await
        .map_err(|_| RpcError::new(rpc::SHUTTING_DOWN, "shutting_down"))?
}

/// Registers a subscription, answers the request, then forwards events as notifications in
/// the background (so the response always precedes the first notification).
async fn subscribe(
    id: Option<Value>,
    params: SubscribeParams,
    out: &mpsc::UnboundedSender<Value>,
    daemon: &mpsc::UnboundedSender<Command>,
) {
    let (sink, mut events) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    let single = params.task.is_some();
    let registered = match daemon.send(Command::Subscribe {
        params,
        sink,
        reply,
    }) {
        Ok(()) => answer
            .await
            .unwrap_or_else(|_| Err(RpcError::new(rpc::SHUTTING_DOWN, "shutting_down"))),
        Err(_) => Err(RpcError::new(rpc::SHUTTING_DOWN, "shutting_down")),
    };
    let ok = registered.is_ok();
    if let Some(id) = id {
        let _ = out.send(rpc::response(id, registered));
    }
    if !ok {
        return;
    }
    let out = out.clone();
    tokio::spawn(async move {
        while let Some(envelope) = events.recv().await {
            let last = single && matches!(envelope.event, Event::Finished(_));
            if out.send(rpc::event_notification(&envelope)).is_err() || last {
                return;
            }
        }
    });
}

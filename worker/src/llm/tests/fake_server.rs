//! A tiny HTTP/1.1 server for tests: answers each connection with the next scripted reply,
//! writing bodies in several small flushed writes so the client sees them in separate
//! chunks, and records every request it was sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// What the server does with one connection.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// Answers with this status, headers and body, the body written in `pieces`.
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        pieces: Vec<Vec<u8>>,
    },
    /// Reads the request, then closes the connection without a byte of response.
    Hangup,
    /// Sends the head and these pieces, then holds the connection open until the client
    /// goes away, and reports that on the channel given to [`FakeServer::watch_close`].
    Stall { pieces: Vec<Vec<u8>> },
    /// Like [`Reply::Stall`], but writes `keep_alive` every `every` until the client goes away
    /// (SSE comments, Anthropic pings: bytes that are not content).
    KeepAlive {
        pieces: Vec<Vec<u8>>,
        keep_alive: Vec<u8>,
        every: Duration,
    },
}

impl Reply {
    /// A 200 event stream, its bytes written `piece` bytes at a time.
    pub(crate) fn sse(body: &str, piece: usize) -> Self {
        Reply::Http {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            pieces: body.as_bytes().chunks(piece).map(<[u8]>::to_vec).collect(),
        }
    }

    /// An error status with a JSON body and extra headers.
    pub(crate) fn error(status: u16, body: &str, headers: &[(&str, &str)]) -> Self {
        let mut all = vec![("content-type".to_owned(), "application/json".to_owned())];
        all.extend(
            headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        Reply::Http {
            status,
            headers: all,
            pieces: vec![body.as_bytes().to_vec()],
        }
    }
}

/// A request as the server received it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Recorded {
    /// The value of header `name` (lowercase).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running fake server.
#[derive(Debug)]
pub(crate) struct FakeServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    closed: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

impl FakeServer {
    /// Starts a server answering connections with `replies`, in order, then stopping.
    pub(crate) async fn start(replies: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let closed: Arc<Mutex<Option<oneshot::Sender<()>>>> = Arc::new(Mutex::new(None));
        let (log, close) = (requests.clone(), closed.clone());
        tokio::spawn(async move {
            for reply in replies {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                serve(stream, reply, &log, &close).await;
            }
        });
        Self {
            addr,
            requests,
            closed,
        }
    }

    /// The base URL to point a provider at, with `path` appended (e.g. `/v1`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// A channel that fires when a [`Reply::Stall`] connection is closed by the client.
    pub(crate) fn watch_close(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        *self.closed.lock().unwrap() = Some(tx);
        rx
    }
}

async fn serve(
    mut stream: TcpStream,
    reply: Reply,
    log: &Mutex<Vec<Recorded>>,
    closed: &Mutex<Option<oneshot::Sender<()>>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    log.lock().unwrap().push(request);
    match reply {
        Reply::Http {
            status,
            headers,
            pieces,
        } => {
            let mut head = format!("HTTP/1.1 {status} Whatever\r\nconnection: close\r\n");
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            write_pieces(&mut stream, head, &pieces).await;
            let _ = stream.shutdown().await;
        }
        Reply::Hangup => {}
        Reply::KeepAlive {
            pieces,
            keep_alive,
            every,
        } => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n".to_owned();
            write_pieces(&mut stream, head, &pieces).await;
            // Until a write fails: the client closed the connection.
            loop {
                tokio::time::sleep(every).await;
                if stream.write_all(&keep_alive).await.is_err() || stream.flush().await.is_err() {
                    break;
                }
            }
            if let Some(tx) = closed.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
        Reply::Stall { pieces } => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n".to_owned();
            write_pieces(&mut stream, head, &pieces).await;
            let mut buf = [0u8; 64];
            // Returns once the client closes its end (0 bytes or an error).
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            if let Some(tx) = closed.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    }
}

async fn write_pieces(stream: &mut TcpStream, head: String, pieces: &[Vec<u8>]) {
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for piece in pieces {
        if stream.write_all(piece).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        // Give the client a chance to read each piece on its own.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads one request: the head up to the blank line, then `content-length` bytes of body.
async fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some(Recorded {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    })
}

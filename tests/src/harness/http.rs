//! A small HTTP/1.1 client for the daemon's HTTP API (`kugetsu serve --http`), over a plain
//! TCP stream: one request per connection (`Connection: close`), chunked bodies decoded, and
//! event streams read message by message ([`SseStream`]).
//!
//! [`HttpApi::of`] finds the address in the daemon's stderr (the `HTTP API on http://ADDR/`
//! line, so `127.0.0.1:0` works) and the token in `<state_dir>/http.token`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::daemon::{Daemon, WAIT};

/// The daemon's HTTP API: where it listens and its token.
#[derive(Debug, Clone)]
pub struct HttpApi {
    pub addr: SocketAddr,
    pub token: String,
}

/// A response read to its end.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (with the body) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }

    /// Panics unless the status is `status`.
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "{}", self.text());
        self
    }

    /// The JSON error's code; panics unless the body is `{"error": {"code", "message"}}`.
    pub fn error_code(&self) -> i64 {
        let body = self.json();
        assert!(body["error"]["message"].is_string(), "{body}");
        body["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no error code in {body}"))
    }
}

impl HttpApi {
    /// The API of `daemon`, once it printed its address.
    pub async fn of(daemon: &Daemon) -> HttpApi {
        HttpApi::after(daemon, 0).await
    }

    /// The API of `daemon` as it printed it after stderr byte `mark` (after a restart).
    pub async fn after(daemon: &Daemon, mark: usize) -> HttpApi {
        let text = daemon
            .wait_for_stderr(mark, "HTTP API on http://", WAIT)
            .await;
        let at = text.rfind("HTTP API on http://").expect("the address line");
        let rest = &text[at + "HTTP API on http://".len()..];
        let addr = rest[..rest.find('/').expect("the address ends with /")]
            .parse()
            .expect("a socket address");
        let token = std::fs::read_to_string(daemon.state_dir().join("http.token"))
            .expect("the token file")
            .trim()
            .to_owned();
        HttpApi { addr, token }
    }

    /// The bearer header for this API's token.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// A connection to the API.
    pub async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.expect("connect")
    }

    /// Sends one request with exactly `headers` (no token unless given) and reads the response.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        let stream = self.connect().await;
        let mut reader = BufReader::new(stream);
        write_request(reader.get_mut(), method, path, headers, body).await;
        tokio::time::timeout(WAIT, read_response(&mut reader))
            .await
            .unwrap_or_else(|_| panic!("no response to {method} {path} within {WAIT:?}"))
    }

    /// `GET path` with the token.
    pub async fn get(&self, path: &str) -> HttpResponse {
        let auth = self.bearer();
        self.send("GET", path, &[("Authorization", &auth)], None)
            .await
    }

    /// `POST path` with the token and a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> HttpResponse {
        let auth = self.bearer();
        let body = body.to_string();
        self.send(
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(body.as_bytes()),
        )
        .await
    }

    /// Opens an event stream at `path` with the token and `headers`.
    pub async fn sse(&self, path: &str, headers: &[(&str, &str)]) -> SseStream {
        let auth = self.bearer();
        let mut all = vec![
            ("Authorization", auth.as_str()),
            ("Accept", "text/event-stream"),
        ];
        all.extend_from_slice(headers);
        let stream = self.connect().await;
        let mut reader = BufReader::new(stream);
        write_request(reader.get_mut(), "GET", path, &all, None).await;
        let (status, headers) = tokio::time::timeout(WAIT, read_head(&mut reader))
            .await
            .expect("the stream's head");
        let chunked =
            header_of(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
        SseStream {
            status,
            headers,
            reader,
            chunked,
            pending: Vec::new(),
            ended: false,
            comments: Vec::new(),
        }
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Writes a request line, headers and body.
pub async fn write_request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: kugetsu.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    if let Some(body) = body {
        // The server may answer (413) and close before it read everything.
        let _ = stream.write_all(body).await;
    }
}

async fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .await
            .expect("read the status line");
        assert!(!line.is_empty(), "the connection closed before a response");
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("read a header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        // `100 Continue` comes before the real answer.
        if status != 100 {
            return (status, headers);
        }
    }
}

async fn read_response(reader: &mut BufReader<TcpStream>) -> HttpResponse {
    let (status, headers) = read_head(reader).await;
    let mut body = Vec::new();
    if header_of(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while let Some(chunk) = read_chunk(reader).await {
            body.extend_from_slice(&chunk);
        }
    } else if let Some(length) = header_of(&headers, "content-length") {
        body.resize(length.parse().expect("a length"), 0);
        reader.read_exact(&mut body).await.expect("read the body");
    } else {
        reader.read_to_end(&mut body).await.expect("read the body");
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// The next chunk of a chunked body; `None` after the last (or if the connection closed).
async fn read_chunk(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
    if size == 0 {
        let mut end = String::new();
        let _ = reader.read_line(&mut end).await;
        return None;
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).await.ok()?;
    chunk.truncate(size);
    Some(chunk)
}

/// One Server-Sent Events message.
#[derive(Debug, Clone, PartialEq)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseMessage {
    /// The data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// An open event stream.
#[derive(Debug)]
pub struct SseStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Bytes received and not yet split into messages.
    pending: Vec<u8>,
    ended: bool,
    /// The comment lines seen so far (`: keep-alive` ...).
    pub comments: Vec<String>,
}

impl SseStream {
    /// The header `name` of the response.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    /// The next message; `None` once the stream ended. Panics after `timeout` without one.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseMessage> {
        tokio::time::timeout(timeout, self.next_message())
            .await
            .unwrap_or_else(|_| panic!("no event within {timeout:?}"))
    }

    /// Every message until the stream ends (each within `timeout` of the last).
    pub async fn to_end(&mut self, timeout: Duration) -> Vec<SseMessage> {
        let mut all = Vec::new();
        while let Some(message) = self.next(timeout).await {
            all.push(message);
        }
        all
    }

    /// Waits for a comment line containing `text`, skipping messages; panics after `timeout`
    /// or when the stream ends first.
    pub async fn wait_comment(&mut self, text: &str, timeout: Duration) {
        let seen = |s: &Self| s.comments.iter().any(|c| c.contains(text));
        tokio::time::timeout(timeout, async {
            while !seen(self) {
                if self.next_block().await.is_none() && !seen(self) {
                    panic!("the stream ended before a {text:?} comment");
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {text:?} comment within {timeout:?}"));
    }

    async fn next_message(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(message) = self.next_block().await? {
                return Some(message);
            }
        }
    }

    /// The next block: `Some(None)` for one of comments only, `None` once the stream ended.
    async fn next_block(&mut self) -> Option<Option<SseMessage>> {
        loop {
            if let Some(at) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..at + 2).collect();
                let text = String::from_utf8_lossy(&block[..at]).into_owned();
                let mut message = SseMessage {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut fields = false;
                for line in text.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        self.comments.push(comment.trim().to_owned());
                        continue;
                    }
                    fields = true;
                    let (name, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match name {
                        "id" => message.id = Some(value.to_owned()),
                        "event" => message.event = Some(value.to_owned()),
                        "data" => {
                            if !message.data.is_empty() {
                                message.data.push('\n');
                            }
                            message.data.push_str(value);
                        }
                        _ => {}
                    }
                }
                return Some(fields.then_some(message));
            }
            if self.ended {
                return None;
            }
            let bytes = if self.chunked {
                read_chunk(&mut self.reader).await
            } else {
                let mut buf = vec![0; 16 * 1024];
                match self.reader.read(&mut buf).await {
                    Ok(0) | Err(_) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some(buf)
                    }
                }
            };
            match bytes {
                Some(bytes) => self.pending.extend_from_slice(&bytes),
                None => self.ended = true,
            }
        }
    }
}

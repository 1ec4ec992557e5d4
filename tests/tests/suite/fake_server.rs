//! Self-tests of the fake LLM: raw HTTP over a TcpStream, checking the bytes it sends and the
//! invariants it enforces, so the end-to-end suites can trust it.

use std::time::Duration;

use kugetsu_tests::fake_llm::{ApiError, FakeLlm, Reply, Turn, Wire};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A response as read off the socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    /// The chunks of a chunked body, as framed by the server.
    frames: Vec<Vec<u8>>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
}

struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(server: &FakeLlm) -> Conn {
        let stream = TcpStream::connect(server.addr()).await.expect("connect");
        Conn {
            stream: BufReader::new(stream),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.expect("write");
    }

    async fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &Value) {
        let body = body.to_string();
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        self.send(req.as_bytes()).await;
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        self.stream.read_line(&mut line).await.expect("read a line");
        line.trim_end_matches(['\r', '\n']).to_owned()
    }

    async fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').expect("header line");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        (status, headers)
    }

    async fn response(&mut self) -> RawResponse {
        tokio::time::timeout(Duration::from_secs(20), self.response_inner())
            .await
            .expect("a whole response within 20 s")
    }

    async fn response_inner(&mut self) -> RawResponse {
        let (status, headers) = self.read_head().await;
        let mut response = RawResponse {
            status,
            headers,
            frames: Vec::new(),
            body: Vec::new(),
        };
        if response
            .header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            loop {
                let size = self.line().await;
                let size = usize::from_str_radix(&size, 16).expect("chunk size");
                if size == 0 {
                    assert_eq!(self.line().await, "", "no trailers expected");
                    break;
                }
                let mut frame = vec![0; size];
                self.stream.read_exact(&mut frame).await.expect("chunk");
                assert_eq!(self.line().await, "", "chunk ends in CRLF");
                response.body.extend_from_slice(&frame);
                response.frames.push(frame);
            }
        } else if let Some(len) = response.header("content-length") {
            let mut body = vec![0; len.parse().expect("content-length")];
            self.stream.read_exact(&mut body).await.expect("body");
            response.body = body;
        } else {
            self.stream
                .read_to_end(&mut response.body)
                .await
                .expect("body to close");
        }
        response
    }
}

/// `(event name, data)` of each SSE event; asserts the `\n\n` framing.
fn sse(body: &[u8]) -> Vec<(Option<String>, String)> {
    let text = std::str::from_utf8(body).expect("SSE body is UTF-8");
    assert!(text.ends_with("\n\n"), "SSE body ends with a blank line");
    text.trim_end_matches('\n')
        .split("\n\n")
        .map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    assert!(data.is_none(), "one data line per event: {block:?}");
                    data = Some(d.to_owned());
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            (name, data.expect("an SSE event has data"))
        })
        .collect()
}

fn openai_headers(server: &FakeLlm) -> Vec<(&'static str, String)> {
    vec![(
        "authorization",
        format!("Bearer {}", server.api_key().unwrap()),
    )]
}

fn anthropic_headers(server: &FakeLlm) -> Vec<(&'static str, String)> {
    vec![
        ("x-api-key", server.api_key().unwrap().to_owned()),
        ("anthropic-version", "2023-06-01".to_owned()),
    ]
}

fn as_refs<'a>(headers: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn openai_body(server: &FakeLlm, messages: Value) -> Value {
    let mut body = json!({
        "model": server.model().unwrap(),
        "stream": true,
        "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {"name": "write", "parameters": {"type": "object"}}}],
    });
    body["messages"] = messages;
    body
}

fn anthropic_body(server: &FakeLlm, messages: Value) -> Value {
    let mut body = json!({
        "model": server.model().unwrap(),
        "max_tokens": 1024,
        "stream": true,
        "system": "you are a test",
        "tools": [{"name": "write", "description": "writes", "input_schema": {"type": "object"}}],
    });
    body["messages"] = messages;
    body
}

/// The OpenAI stream's chunks as JSON, asserting the `[DONE]` terminator when `done`.
fn openai_chunks(body: &[u8], done: bool) -> Vec<Value> {
    let mut events = sse(body);
    for (name, _) in &events {
        assert!(name.is_none(), "OpenAI streams carry no event names");
    }
    if done {
        let (_, last) = events.pop().expect("events");
        assert_eq!(last, "[DONE]");
    } else {
        assert_ne!(events.last().unwrap().1, "[DONE]");
    }
    events
        .into_iter()
        .map(|(_, data)| serde_json::from_str(&data).expect("chunk JSON"))
        .collect()
}

#[tokio::test]
async fn openai_stream_matches_the_reference_format() {
    let server = FakeLlm::openai();
    server.push(
        Turn::text("héllo ✓ 日本")
            .tool_call("write", json!({"path": "a.txt", "content": "ä\n"}))
            .tool_call("ls", json!({}))
            .usage(12, 5),
    );
    let mut conn = Conn::open(&server).await;
    let headers = openai_headers(&server);
    conn.post(
        "/v1/chat/completions",
        &as_refs(&headers),
        &openai_body(&server, json!([{"role": "user", "content": "hi"}])),
    )
    .await;
    let response = conn.response().await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(response.header("x-request-id").is_some());

    let chunks = openai_chunks(&response.body, true);
    for chunk in &chunks {
        assert!(chunk["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(chunk["created"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(chunk["model"], "gpt-4.1-mini");
    }
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");

    let mut text = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = Vec::new();
    for chunk in &chunks {
        let Some(choice) = chunk["choices"].as_array().unwrap().first() else {
            continue;
        };
        let delta = &choice["delta"];
        if let Some(piece) = delta["content"].as_str() {
            text.push_str(piece);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if index == calls.len() {
                // Only the first delta of a call names it.
                assert!(call["id"].as_str().unwrap().starts_with("call_"));
                assert_eq!(call["type"], "function");
                calls.push((
                    call["id"].as_str().unwrap().to_owned(),
                    call["function"]["name"].as_str().unwrap().to_owned(),
                    call["function"]["arguments"].as_str().unwrap().to_owned(),
                ));
            } else {
                let keys: Vec<&String> = call.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["function", "index"], "later deltas: {call}");
                let fkeys: Vec<&String> = call["function"].as_object().unwrap().keys().collect();
                assert_eq!(fkeys, ["arguments"]);
                calls[index]
                    .2
                    .push_str(call["function"]["arguments"].as_str().unwrap());
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish.push(reason.to_owned());
        }
    }
    assert_eq!(text, "héllo ✓ 日本");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].1, "write");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].2).unwrap(),
        json!({"path": "a.txt", "content": "ä\n"})
    );
    assert_eq!(calls[1].1, "ls");
    assert_eq!(finish, ["tool_calls"]);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 12);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 17);

    let issued = server.issued_tool_ids();
    assert!(issued.contains(&calls[0].0) && issued.contains(&calls[1].0));
    assert_eq!(server.request(1).wire, Some(Wire::OpenAi));
    server.assert_all_served();
}

#[tokio::test]
async fn anthropic_stream_matches_the_reference_format() {
    let server = FakeLlm::anthropic();
    server.push(
        Turn::text("héllo ✓")
            .tool_call("write", json!({"path": "b.txt", "content": "日本"}))
            .usage(12, 5),
    );
    let mut conn = Conn::open(&server).await;
    let headers = anthropic_headers(&server);
    conn.post(
        "/v1/messages",
        &as_refs(&headers),
        &anthropic_body(&server, json!([{"role": "user", "content": "hi"}])),
    )
    .await;
    let response = conn.response().await;
    assert_eq!(response.status, 200);
    assert!(response.header("request-id").is_some());

    let events = sse(&response.body);
    let names: Vec<&str> = events
        .iter()
        .map(|(n, _)| n.as_deref().expect("every Anthropic event is named"))
        .collect();
    let data: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    for (name, data) in names.iter().zip(&data) {
        assert_eq!(data["type"], *name, "event name matches data.type");
    }
    let mut compact: Vec<&str> = names.clone();
    compact.dedup();
    assert_eq!(
        compact,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &data[0]["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["model"], "claude-sonnet-4-5");
    assert_eq!(start["usage"]["input_tokens"], 12);

    let mut text = String::new();
    let mut json_text = String::new();
    let mut tool_block = None;
    for d in &data {
        match d["type"].as_str().unwrap() {
            "content_block_start" if d["content_block"]["type"] == "tool_use" => {
                let block = &d["content_block"];
                assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
                assert_eq!(block["name"], "write");
                assert_eq!(block["input"], json!({}));
                tool_block = Some(d["index"].as_u64().unwrap());
            }
            "content_block_delta" => match d["delta"]["type"].as_str().unwrap() {
                "text_delta" => {
                    assert_eq!(d["index"], 0);
                    text.push_str(d["delta"]["text"].as_str().unwrap());
                }
                "input_json_delta" => {
                    assert_eq!(d["index"].as_u64(), tool_block);
                    json_text.push_str(d["delta"]["partial_json"].as_str().unwrap());
                }
                other => panic!("unexpected delta {other}"),
            },
            _ => {}
        }
    }
    assert_eq!(text, "héllo ✓");
    assert_eq!(
        serde_json::from_str::<Value>(&json_text).unwrap(),
        json!({"path": "b.txt", "content": "日本"})
    );
    let delta = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["output_tokens"], 5);
}

#[tokio::test]
async fn split_writes_arrive_as_separate_tiny_chunks() {
    let server = FakeLlm::openai();
    server.push(Turn::text("日本語 ✓").split_writes(1));
    server.push(Turn::text("日本語 ✓").split_writes(3));
    let headers = openai_headers(&server);
    let body = openai_body(&server, json!([{"role": "user", "content": "hi"}]));
    for size in [1, 3] {
        let mut conn = Conn::open(&server).await;
        conn.post("/v1/chat/completions", &as_refs(&headers), &body)
            .await;
        let response = conn.response().await;
        assert!(response.frames.len() > 100);
        assert!(response.frames.iter().all(|f| f.len() <= size));
        // Pieces really cut through characters: some frame is not valid UTF-8 on its own.
        assert!(
            response
                .frames
                .iter()
                .any(|f| std::str::from_utf8(f).is_err())
        );
        let text: String = openai_chunks(&response.body, true)
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, "日本語 ✓");
    }
}

#[tokio::test]
async fn error_replies_carry_the_real_bodies_and_headers_on_one_connection() {
    let server = FakeLlm::openai();
    server.push(ApiError::rate_limited().retry_after(1));
    server.push(ApiError::unauthorized());
    server.push(ApiError::context_length_exceeded());
    let headers = openai_headers(&server);
    let body = openai_body(&server, json!([{"role": "user", "content": "hi"}]));
    let mut conn = Conn::open(&server).await;

    conn.post("/v1/chat/completions", &as_refs(&headers), &body)
        .await;
    let r = conn.response().await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    let e = r.json();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Rate limit")
    );
    assert!(e["error"]["param"].is_null());

    conn.post("/v1/chat/completions", &as_refs(&headers), &body)
        .await;
    let r = conn.response().await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");

    conn.post("/v1/chat/completions", &as_refs(&headers), &body)
        .await;
    let r = conn.response().await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    assert_eq!(server.request_count(), 3);

    let server = FakeLlm::anthropic();
    server.push(ApiError::overloaded());
    server.push(ApiError::rate_limited().retry_after(2));
    let headers = anthropic_headers(&server);
    let body = anthropic_body(&server, json!([{"role": "user", "content": "hi"}]));
    let mut conn = Conn::open(&server).await;
    conn.post("/v1/messages", &as_refs(&headers), &body).await;
    let r = conn.response().await;
    assert_eq!(r.status, 529);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "overloaded_error");
    assert_eq!(r.json()["error"]["message"], "Overloaded");
    conn.post("/v1/messages", &as_refs(&headers), &body).await;
    let r = conn.response().await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn llama_cpp_quirks_and_a_missing_done() {
    let server = FakeLlm::openai();
    server.push(
        Turn::new()
            .tool_call("ls", json!({"path": "."}))
            .llama_cpp()
            .without_done(),
    );
    let headers = openai_headers(&server);
    let mut conn = Conn::open(&server).await;
    conn.post(
        "/v1/chat/completions",
        &as_refs(&headers),
        &openai_body(&server, json!([{"role": "user", "content": "hi"}])),
    )
    .await;
    let chunks = openai_chunks(&conn.response().await.body, false);
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    assert_eq!(
        first["content"], "",
        "llama.cpp sends an empty string, not null"
    );
    let id = first["tool_calls"][0]["id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
    assert!(chunks.iter().any(|c| c.get("timings").is_some()));
    assert!(chunks.iter().all(|c| {
        c["choices"]
            .get(0)
            .is_none_or(|choice| choice.get("logprobs").is_none())
    }));
}

#[tokio::test]
async fn mid_stream_errors_and_stalls() {
    let server = FakeLlm::openai();
    server.push(Turn::text("partial answer").error_after(2, ApiError::server_error()));
    server.push(Reply::Stall);
    let headers = openai_headers(&server);
    let body = openai_body(&server, json!([{"role": "user", "content": "hi"}]));
    let mut conn = Conn::open(&server).await;
    conn.post("/v1/chat/completions", &as_refs(&headers), &body)
        .await;
    let r = conn.response().await;
    assert_eq!(r.status, 200);
    let events = sse(&r.body);
    assert_eq!(events.len(), 3);
    let error: Value = serde_json::from_str(&events[2].1).unwrap();
    assert_eq!(error["error"]["type"], "server_error");

    let mut conn = Conn::open(&server).await;
    conn.post("/v1/chat/completions", &as_refs(&headers), &body)
        .await;
    let (status, _) = conn.read_head().await;
    assert_eq!(status, 200);
    let mut buf = [0u8; 16];
    let more = tokio::time::timeout(Duration::from_millis(300), conn.stream.read(&mut buf)).await;
    assert!(
        more.is_err(),
        "a stalled stream sends nothing after its head"
    );

    let server = FakeLlm::anthropic();
    server.push(Turn::text("partial").error_after(3, ApiError::overloaded()));
    let headers = anthropic_headers(&server);
    let mut conn = Conn::open(&server).await;
    conn.post(
        "/v1/messages",
        &as_refs(&headers),
        &anthropic_body(&server, json!([{"role": "user", "content": "hi"}])),
    )
    .await;
    let events = sse(&conn.response().await.body);
    assert_eq!(events.len(), 4);
    assert_eq!(events[3].0.as_deref(), Some("error"));
    let error: Value = serde_json::from_str(&events[3].1).unwrap();
    assert_eq!(error["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn streams_cut_short_kept_alive_and_endless() {
    let server = FakeLlm::openai();
    server.push(Turn::text("cut short").end_after(2));
    server.push(Turn::text("kept alive").keep_alive_after(1, Duration::from_millis(5)));
    server.push(Reply::EndlessLine {
        prefix: b"data: ".to_vec(),
        pause: Duration::from_millis(1),
    });
    let headers = openai_headers(&server);
    let body = openai_body(&server, json!([{"role": "user", "content": "hi"}]));

    // Ends cleanly after two events: no finish reason, no [DONE].
    let mut conn = Conn::open(&server).await;
    conn.post("/v1/chat/completions", &as_refs(&headers), &body)
        .await;
    let events = sse(&conn.response().await.body);
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|(_, data)| data != "[DONE]"
        && serde_json::from_str::<Value>(data).unwrap()["choices"][0]["finish_reason"].is_null()));

    // One event, then comments only, for as long as anyone listens.
    let mut conn = Conn::open(&server).await;
    conn.post("/v1/chat/completions", &as_refs(&headers), &body)
        .await;
    assert_eq!(conn.read_head().await.0, 200);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(12).filter(|w| w == b": keep-alive").count() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.stream.read(&mut buf))
            .await
            .expect("keep-alives keep coming")
            .unwrap();
        assert!(n > 0, "the connection stays open");
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(seen.windows(6).filter(|w| w == b"data: ").count(), 1);

    // One line without end: megabytes and not a single newline after the head.
    let mut conn = Conn::open(&server).await;
    conn.post("/v1/chat/completions", &as_refs(&headers), &body)
        .await;
    assert_eq!(conn.read_head().await.0, 200);
    let mut total = 0;
    let mut payload_newlines = 0;
    while total < 4 << 20 {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.stream.read(&mut buf))
            .await
            .expect("the line keeps coming")
            .unwrap();
        assert!(n > 0, "the connection stays open");
        // Chunk framing has CRLFs; the payload (x's) has none of its own.
        payload_newlines += buf[..n].iter().filter(|b| **b == b'\n').count();
        total += n;
    }
    // At most one chunk-size line per 256 KiB chunk, none from the payload.
    assert!(
        payload_newlines <= 2 * (total / (256 << 10) + 2),
        "{payload_newlines}"
    );
}

#[tokio::test]
async fn raw_replies_are_sent_verbatim() {
    let server = FakeLlm::openai();
    server.push(Reply::raw(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 5\r\n\r\noops!",
    ));
    server.push(Reply::raw_sse("data: {\"weird\":true}\n\n"));
    let headers = openai_headers(&server);
    let body = openai_body(&server, json!([{"role": "user", "content": "hi"}]));
    let mut conn = Conn::open(&server).await;
    conn.post("/v1/chat/completions", &as_refs(&headers), &body)
        .await;
    let r = conn.response().await;
    assert_eq!((r.status, r.text().as_str()), (502, "oops!"));
    let mut conn = Conn::open(&server).await;
    conn.post("/v1/chat/completions", &as_refs(&headers), &body)
        .await;
    assert_eq!(conn.response().await.text(), "data: {\"weird\":true}\n\n");
}

#[tokio::test]
async fn chunked_request_bodies_are_read() {
    let server = FakeLlm::openai();
    server.push(Turn::text("ok"));
    let body = openai_body(&server, json!([{"role": "user", "content": "hi"}])).to_string();
    let (a, b) = body.split_at(body.len() / 2);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         authorization: Bearer {}\r\ntransfer-encoding: chunked\r\n\r\n\
         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        server.api_key().unwrap(),
        a.len(),
        b.len()
    );
    let mut conn = Conn::open(&server).await;
    conn.send(request.as_bytes()).await;
    assert_eq!(conn.response().await.status, 200);
    assert_eq!(server.request(1).messages()[0]["content"], "hi");
}

#[tokio::test]
async fn a_correct_tool_round_trip_has_no_violations() {
    // OpenAI: the id streamed in turn 1 comes back in the assistant message and the tool
    // result of request 2.
    let server = FakeLlm::openai();
    server.push(Turn::new().tool_call("write", json!({"path": "a", "content": "b"})));
    server.push(Turn::text("done"));
    let headers = openai_headers(&server);
    let user = json!({"role": "user", "content": "hi"});
    let mut conn = Conn::open(&server).await;
    conn.post(
        "/v1/chat/completions",
        &as_refs(&headers),
        &openai_body(&server, json!([user])),
    )
    .await;
    let chunks = openai_chunks(&conn.response().await.body, true);
    let id = chunks[0]["choices"][0]["delta"]["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let messages = json!([
        user,
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "write", "arguments": "{\"path\":\"a\",\"content\":\"b\"}"}}
        ]},
        {"role": "tool", "tool_call_id": id, "content": "wrote 1 byte to a"}
    ]);
    conn.post(
        "/v1/chat/completions",
        &as_refs(&headers),
        &openai_body(&server, messages),
    )
    .await;
    assert_eq!(conn.response().await.status, 200);
    let second = server.request(2);
    assert_eq!(second.tool_result(&id).content, "wrote 1 byte to a");
    assert_eq!(second.assistant_tool_calls()[0].arguments["path"], "a");
    assert_eq!(second.user_texts(), ["hi"]);
    server.assert_no_violations();

    // Anthropic: the same with tool_use / tool_result blocks.
    let server = FakeLlm::anthropic();
    server.push(Turn::text("writing").tool_call("write", json!({"path": "a"})));
    server.push(Turn::text("done"));
    let headers = anthropic_headers(&server);
    let user = json!({"role": "user", "content": "hi"});
    let mut conn = Conn::open(&server).await;
    conn.post(
        "/v1/messages",
        &as_refs(&headers),
        &anthropic_body(&server, json!([user])),
    )
    .await;
    let events = sse(&conn.response().await.body);
    let id = events
        .iter()
        .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap())
        .find_map(|d| d["content_block"]["id"].as_str().map(str::to_owned))
        .unwrap();
    let messages = json!([
        user,
        {"role": "assistant", "content": [
            {"type": "text", "text": "writing"},
            {"type": "tool_use", "id": id, "name": "write", "input": {"path": "a"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": id, "content": "ok", "is_error": false}
        ]}
    ]);
    conn.post(
        "/v1/messages",
        &as_refs(&headers),
        &anthropic_body(&server, messages),
    )
    .await;
    assert_eq!(conn.response().await.status, 200);
    let result = server.request(2).tool_result(&id);
    assert_eq!(
        (result.content.as_str(), result.is_error),
        ("ok", Some(false))
    );
    server.assert_no_violations();
}

#[tokio::test]
async fn openai_invariant_violations_are_recorded() {
    let server = FakeLlm::openai();
    server.push(Turn::text("one"));
    server.push(Turn::text("two"));
    let mut conn = Conn::open(&server).await;
    // No key, stream off, another model.
    conn.post(
        "/v1/chat/completions",
        &[],
        &json!({"model": "gpt-other", "stream": false, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    conn.response().await;
    // A tool result answering a call nobody made.
    let headers = openai_headers(&server);
    conn.post(
        "/v1/chat/completions",
        &as_refs(&headers),
        &openai_body(
            &server,
            json!([
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_invented", "type": "function", "function": {"name": "ls", "arguments": {}}}
                ]},
                {"role": "tool", "tool_call_id": "call_other", "content": "x"}
            ]),
        ),
    )
    .await;
    conn.response().await;
    // Nothing left in the script: an error reply, and a violation.
    conn.post(
        "/v1/chat/completions",
        &as_refs(&headers),
        &openai_body(&server, json!([{"role": "user", "content": "hi"}])),
    )
    .await;
    let r = conn.response().await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no more replies")
    );

    let violations = server.take_violations().join("\n");
    for needle in [
        "request #1",
        "authorization header",
        "\"stream\" is",
        "\"model\" is",
        "request #2",
        "\"call_invented\" that this server never sent",
        "function.arguments must be a JSON string",
        "tool result for \"call_other\"",
        "tool calls [\"call_invented\"] have no tool result",
        "request #3",
        "no reply was scripted",
    ] {
        assert!(
            violations.contains(needle),
            "missing {needle:?} in:\n{violations}"
        );
    }
}

#[tokio::test]
async fn anthropic_invariant_violations_are_recorded() {
    let server = FakeLlm::anthropic();
    server.push(Turn::text("one"));
    server.push(Turn::text("two"));
    let mut conn = Conn::open(&server).await;
    // Wrong path, no anthropic-version, no max_tokens, a system message in `messages`.
    conn.post(
        "/messages",
        &[("x-api-key", server.api_key().unwrap())],
        &json!({"model": server.model().unwrap(), "stream": true, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "nope"}
        ]}),
    )
    .await;
    conn.response().await;
    let headers = anthropic_headers(&server);
    conn.post(
        "/v1/messages",
        &as_refs(&headers),
        &anthropic_body(
            &server,
            json!([
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_invented", "name": "ls", "input": "{}"}
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "first"},
                    {"type": "tool_result", "tool_use_id": "toolu_invented", "content": "x"}
                ]}
            ]),
        ),
    )
    .await;
    conn.response().await;
    let violations = server.take_violations().join("\n");
    for needle in [
        "must post to /v1/messages",
        "no anthropic-version header",
        "\"max_tokens\"",
        "role \"system\"",
        "\"toolu_invented\" that this server never sent",
        "input must be an object",
        "tool_result blocks must come before other content",
    ] {
        assert!(
            violations.contains(needle),
            "missing {needle:?} in:\n{violations}"
        );
    }
}

#[tokio::test]
async fn waiting_for_requests_and_keep_alive() {
    let server = FakeLlm::builder(Wire::OpenAi).start();
    server.push_all([Turn::text("a"), Turn::text("b")]);
    let mut conn = Conn::open(&server).await;
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        conn.post("/v1/chat/completions", &[], &body).await;
        conn.response().await;
    }
    let requests = server.wait_for_requests(2, Duration::from_secs(5)).await;
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].number, 2);
    server.assert_all_served();
}

#[tokio::test]
#[should_panic(expected = "the fake LLM saw invalid requests")]
async fn dropping_a_server_with_violations_fails_the_test() {
    let server = FakeLlm::openai();
    let mut conn = Conn::open(&server).await;
    conn.post(
        "/v1/chat/completions",
        &[],
        &json!({"model": "gpt-4.1-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    conn.response().await;
    drop(server);
}

/// Once a test scripts summaries, requests offering no tools (a compaction's) are served from
/// their own queue, whatever order they arrive in relative to turns; they may name the
/// summary model; a realistic-usage server reports the body's size.
#[tokio::test]
async fn summary_requests_take_their_own_queue() {
    let server = FakeLlm::builder(Wire::OpenAi)
        .model("gpt-4.1-mini")
        .api_key("sk-test-openai-0123456789")
        .summary_model("cheap-model")
        .usage_from_body()
        .start();
    server.push(Turn::text("turn one").text_deltas_of(100));
    server.push_summary(Turn::text("the summary").text_deltas_of(100));
    let headers = openai_headers(&server);
    let mut conn = Conn::open(&server).await;
    // The summary first: no tools key, the summary model.
    let mut summary = openai_body(&server, json!([{"role": "user", "content": "summarise"}]));
    summary.as_object_mut().unwrap().remove("tools");
    summary["model"] = json!("cheap-model");
    conn.post("/v1/chat/completions", &as_refs(&headers), &summary)
        .await;
    let r = conn.response().await;
    assert!(r.text().contains("the summary"), "{}", r.text());
    let turn = openai_body(&server, json!([{"role": "user", "content": "go"}]));
    conn.post("/v1/chat/completions", &as_refs(&headers), &turn)
        .await;
    let r = conn.response().await;
    assert!(r.text().contains("turn one"), "{}", r.text());
    // Usage follows the request body: ~1 token per 4 bytes.
    let usage = sse(&r.body)
        .into_iter()
        .filter_map(|(_, data)| serde_json::from_str::<Value>(&data).ok())
        .find_map(|chunk| chunk["usage"]["prompt_tokens"].as_u64())
        .expect("a usage chunk");
    let request = server.turn_request(1);
    assert_eq!(usage, (request.body.len() / 4) as u64);

    assert_eq!(server.summary_requests().len(), 1);
    assert!(server.summary_requests()[0].summary);
    assert_eq!(server.turn_requests().len(), 1);
    assert!(!request.summary);
    server.assert_all_served();
    // A summary nobody scripted is a violation, not a turn reply taken by mistake.
    server.push(Turn::text("turn two"));
    conn.post("/v1/chat/completions", &as_refs(&headers), &summary)
        .await;
    assert_eq!(conn.response().await.status, 400);
    assert_eq!(server.remaining(), 1);
    let violations = server.take_violations().join("\n");
    assert!(
        violations.contains("no summary reply was scripted"),
        "{violations}"
    );
}

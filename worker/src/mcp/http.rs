//! Streamable HTTP MCP servers, through rmcp's transport with its HTTP client trait
//! implemented over the worker's own reqwest (so one reqwest version is linked, not two).
//!
//! What the client does, per the MCP streamable HTTP transport: every JSON-RPC message is a
//! POST (`Accept: application/json, text/event-stream`, the session id once the server gave
//! one); the answer is `202`/`204` (nothing to read), a JSON body, or an SSE stream. A GET
//! opens the server's own stream (a `405` means it has none); a DELETE ends the session. The
//! session logic, retries and reconnection are rmcp's.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::service::{RoleClient, RunningService, ServiceExt as _};
use rmcp::transport::common::http_header::{
    EVENT_STREAM_MIME_TYPE, HEADER_LAST_EVENT_ID, HEADER_SESSION_ID, JSON_MIME_TYPE,
};
use rmcp::transport::streamable_http_client::{
    HttpStatusError, SseError, StreamableHttpClient, StreamableHttpClientTransport,
    StreamableHttpClientTransportConfig, StreamableHttpError, StreamableHttpPostResponse,
};
use sse_stream::{Sse, SseStream};

/// Longest JSON answer read into memory; a longer one is an error.
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;
/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The worker's reqwest client, as rmcp's streamable HTTP client.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: reqwest::Client,
}

type Failure = StreamableHttpError<reqwest::Error>;

/// Connects to the server at `url` and runs `initialize`.
pub(crate) async fn connect(url: &str) -> Result<RunningService<RoleClient, ()>, String> {
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot set up HTTP: {e}"))?;
    let transport = StreamableHttpClientTransport::with_client(
        HttpClient { client },
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()),
    );
    ().serve(transport)
        .await
        .map_err(|e| format!("`initialize` at {url} failed: {e}"))
}

fn with_headers(
    mut request: reqwest::RequestBuilder,
    session_id: Option<&str>,
    auth_header: Option<String>,
    custom_headers: HashMap<HeaderName, HeaderValue>,
) -> reqwest::RequestBuilder {
    if let Some(session) = session_id {
        request = request.header(HEADER_SESSION_ID, session);
    }
    if let Some(auth) = auth_header {
        request = request.bearer_auth(auth);
    }
    for (name, value) in custom_headers {
        request = request.header(name, value);
    }
    request
}

fn content_type(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase())
}

fn session_of(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(HEADER_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The response's body as an SSE stream, read chunk by chunk. No event may grow past
/// [`MAX_JSON_BODY`]: a server that never ends one gets an error, not the worker's memory.
fn sse(response: reqwest::Response) -> BoxStream<'static, Result<Sse, SseError>> {
    let chunks = futures::stream::unfold(
        Some((response, EventBound::default())),
        |state| async move {
            let (mut response, mut bound) = state?;
            match response.chunk().await {
                Ok(Some(chunk)) => match bound.feed(&chunk) {
                    Ok(()) => Some((Ok(chunk), Some((response, bound)))),
                    Err(e) => Some((Err(e), None)),
                },
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        },
    );
    SseStream::from_bytes_stream(chunks).boxed()
}

/// Bytes since the last SSE event boundary (a blank line), across chunks.
#[derive(Debug, Default)]
struct EventBound {
    pending: usize,
    /// The last byte seen other than `\r` (so `\r\n\r\n` ends an event as `\n\n` does).
    last: u8,
}

impl EventBound {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), std::io::Error> {
        for &byte in chunk {
            if byte == b'\r' {
                continue;
            }
            if byte == b'\n' && self.last == b'\n' {
                self.pending = 0;
            } else {
                self.pending += 1;
                if self.pending > MAX_JSON_BODY {
                    return Err(std::io::Error::other(format!(
                        "an SSE event over {MAX_JSON_BODY} bytes"
                    )));
                }
            }
            self.last = byte;
        }
        Ok(())
    }
}

/// A non-success status as rmcp's error, with the start of the body.
async fn status_error(response: reqwest::Response) -> Failure {
    let status = response.status();
    if status.as_u16() == 429 || status.is_server_error() {
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        return StreamableHttpError::HttpStatus(HttpStatusError::new(status.as_u16(), retry_after));
    }
    let body = response.text().await.unwrap_or_default();
    let mut end = body.len().min(512);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    StreamableHttpError::UnexpectedServerResponse(Cow::Owned(format!(
        "HTTP {status}: {}",
        &body[..end]
    )))
}

impl StreamableHttpClient for HttpClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, Failure> {
        let body = serde_json::to_vec(&message)?;
        let request = self
            .client
            .post(uri.as_ref())
            .header(
                reqwest::header::ACCEPT,
                format!("{JSON_MIME_TYPE}, {EVENT_STREAM_MIME_TYPE}"),
            )
            .header(reqwest::header::CONTENT_TYPE, JSON_MIME_TYPE)
            .body(body);
        let request = with_headers(request, session_id.as_deref(), auth_header, custom_headers);
        let response = request.send().await.map_err(StreamableHttpError::Client)?;
        let status = response.status();
        if matches!(
            status,
            reqwest::StatusCode::ACCEPTED | reqwest::StatusCode::NO_CONTENT
        ) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == reqwest::StatusCode::NOT_FOUND && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        if !status.is_success() {
            return Err(status_error(response).await);
        }
        let session = session_of(&response);
        let kind = content_type(&response);
        let awaits_nothing = !matches!(message, ClientJsonRpcMessage::Request(_));
        match kind.as_deref() {
            Some(ct) if ct.starts_with(EVENT_STREAM_MIME_TYPE) => {
                Ok(StreamableHttpPostResponse::Sse(sse(response), session))
            }
            Some(ct) if ct.starts_with(JSON_MIME_TYPE) => {
                if response
                    .content_length()
                    .is_some_and(|n| n > MAX_JSON_BODY as u64)
                {
                    return Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(
                        format!("a JSON answer over {MAX_JSON_BODY} bytes"),
                    )));
                }
                let mut response = response;
                let mut body = Vec::new();
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(StreamableHttpError::Client)?
                {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_JSON_BODY {
                        return Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(
                            format!("a JSON answer over {MAX_JSON_BODY} bytes"),
                        )));
                    }
                }
                if body.is_empty() && awaits_nothing {
                    return Ok(StreamableHttpPostResponse::Accepted);
                }
                let parsed: ServerJsonRpcMessage = serde_json::from_slice(&body)?;
                Ok(StreamableHttpPostResponse::Json(parsed, session))
            }
            _ if awaits_nothing => Ok(StreamableHttpPostResponse::Accepted),
            _ => Err(StreamableHttpError::UnexpectedContentType(kind)),
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), Failure> {
        let request = with_headers(
            self.client.delete(uri.as_ref()),
            Some(&session_id),
            auth_header,
            custom_headers,
        );
        let response = request.send().await.map_err(StreamableHttpError::Client)?;
        let status = response.status();
        if status.is_success() || status == reqwest::StatusCode::METHOD_NOT_ALLOWED {
            return Ok(());
        }
        Err(status_error(response).await)
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, Failure> {
        let mut request = self.client.get(uri.as_ref()).header(
            reqwest::header::ACCEPT,
            format!("{EVENT_STREAM_MIME_TYPE}, {JSON_MIME_TYPE}"),
        );
        if let Some(last) = last_event_id {
            request = request.header(HEADER_LAST_EVENT_ID, last);
        }
        let request = with_headers(request, session_id.as_deref(), auth_header, custom_headers);
        let response = request.send().await.map_err(StreamableHttpError::Client)?;
        let status = response.status();
        if status == reqwest::StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportSse);
        }
        if status == reqwest::StatusCode::NOT_FOUND && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        if !status.is_success() {
            return Err(status_error(response).await);
        }
        match content_type(&response).as_deref() {
            Some(ct) if ct.starts_with(EVENT_STREAM_MIME_TYPE) => Ok(sse(response)),
            _ => Err(StreamableHttpError::ServerDoesNotSupportSse),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sse_event_may_not_grow_past_the_cap_but_events_reset_it() {
        let mut bound = EventBound::default();
        let half = vec![b'x'; MAX_JSON_BODY / 2 + 1];
        assert!(bound.feed(&half).is_ok());
        // An event boundary split across chunks, with CRLF line ends.
        assert!(bound.feed(b"\r\n\r").is_ok());
        assert!(bound.feed(b"\n").is_ok());
        assert!(bound.feed(&half).is_ok());
        assert!(bound.feed(b"\n\n").is_ok());
        assert!(bound.feed(&half).is_ok());
        let error = bound
            .feed(&half)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("SSE event over"), "{error}");
    }
}

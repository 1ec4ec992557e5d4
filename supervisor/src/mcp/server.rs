//! The MCP session on stdio, and what each `tools/call` turns into.
//!
//! Theory of operation: rmcp reads JSON-RPC from stdin and writes to stdout (nothing else
//! touches stdout; logs go to stderr through `tracing`). Each request runs in its own task;
//! its [`RequestContext`] carries the client's progress token and a cancellation token that
//! rmcp cancels on `notifications/cancelled` for it, and for every request still running when
//! the session ends (stdin closed, or a SIGTERM or SIGINT, which end it the same way; rmcp
//! first gives running requests a few seconds to answer). A `kugetsu_run` runs inside this
//! server's [`TaskTracker`],
//! so after the session ends [`serve`] waits for each cancelled shadow to finish cleanly
//! (its `finished` event written, its worker gone) before the process exits.
//!
//! Malformed input never ends the session: a line that is not JSON is skipped, a message that
//! is JSON but not a valid request gets a JSON-RPC error, an unknown tool gets
//! `invalid_params`, and a known tool called badly gets a tool error naming the field.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::{Peer, RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exit::CliError;
use crate::mcp::params::Params;
use crate::mcp::tools::{self, ToolName};
use crate::mcp::{daemon, run};

/// How long, once the client has gone, the server waits for cancelled shadows to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// What `kugetsu mcp` was started with.
#[derive(Debug, Clone)]
pub struct McpOptions {
    /// The daemon's socket (`--socket`), else found as the client commands find it.
    pub socket: Option<PathBuf>,
    /// The state directory (`--state-dir`): the daemon's socket, and `kugetsu_run`'s tasks.
    pub state_dir: Option<PathBuf>,
    /// The config file `kugetsu_run` loads (`--config`).
    pub config: Option<PathBuf>,
    /// Where `kugetsu mcp` was started: the default `repo`, and what a relative one is
    /// resolved against.
    pub cwd: PathBuf,
}

/// What a tool call produced: its JSON text, or a message for the model.
pub type Outcome = Result<String, String>;

/// The server: cheap to clone (rmcp hands each request a reference).
#[derive(Debug, Clone)]
pub struct KugetsuMcp {
    options: Arc<McpOptions>,
    /// The `kugetsu_run` calls in flight, so that shutdown can wait for their shadows.
    runs: TaskTracker,
}

impl KugetsuMcp {
    /// A server for `options`.
    pub fn new(options: McpOptions) -> KugetsuMcp {
        KugetsuMcp {
            options: Arc::new(options),
            runs: TaskTracker::new(),
        }
    }

    async fn call(
        &self,
        tool: ToolName,
        params: Params,
        context: RequestContext<RoleServer>,
    ) -> Result<Outcome, ErrorData> {
        if tool != ToolName::Run {
            return Ok(daemon::call(tool, &params, &self.options).await);
        }
        let progress = context
            .meta
            .get_progress_token()
            .map(|token| Progress::new(context.peer.clone(), token));
        let options = self.options.clone();
        let cancel = context.ct.clone();
        self.runs
            .spawn(async move { run::run(&options, &params, progress, cancel).await })
            .await
            .map_err(|e| ErrorData::internal_error(format!("kugetsu_run failed: {e}"), None))
    }
}

impl ServerHandler for KugetsuMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("kugetsu", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "kugetsu runs coding agents (shadows), each in its own git worktree and branch \
                 kugetsu/<id>. kugetsu_run runs one to its end and returns its final event; \
                 kugetsu_submit queues one on the kugetsu daemon (`kugetsu serve`), followed \
                 with kugetsu_status, kugetsu_logs, kugetsu_steer, kugetsu_cancel, and landed \
                 with kugetsu_diff and kugetsu_merge.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools::definitions()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(tool) = ToolName::parse(&request.name) else {
            let names: Vec<&str> = ToolName::ALL.iter().map(|t| t.as_str()).collect();
            return Err(ErrorData::invalid_params(
                format!(
                    "unknown tool {:?}; kugetsu mcp offers {}",
                    request.name,
                    names.join(", ")
                ),
                None,
            ));
        };
        let outcome = match Params::new(tool, request.arguments) {
            Ok(params) => self.call(tool, params, context).await?,
            Err(bad) => Err(bad.0),
        };
        if let Err(message) = &outcome {
            tracing::info!(tool = tool.as_str(), "tool error: {message}");
        }
        Ok(CallToolResponse::Complete(match outcome {
            Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
            Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
        }))
    }
}

/// Progress notifications for one request: numbered from 1 in the order sent.
#[derive(Debug)]
pub struct Progress {
    peer: Peer<RoleServer>,
    token: ProgressToken,
    sent: u32,
}

impl Progress {
    fn new(peer: Peer<RoleServer>, token: ProgressToken) -> Progress {
        Progress {
            peer,
            token,
            sent: 0,
        }
    }

    /// Sends `message` as the next step. A client that is gone is not an error here: the
    /// request's cancellation says what to do about that.
    pub async fn send(&mut self, message: String) {
        self.sent += 1;
        let param = ProgressNotificationParam::new(self.token.clone(), f64::from(self.sent))
            .with_message(message);
        if let Err(e) = self.peer.notify_progress(param).await {
            tracing::debug!("cannot send a progress notification: {e}");
        }
    }
}

/// `kugetsu mcp`: serves the tools on stdio until the client closes stdin, or a SIGTERM or
/// SIGINT arrives (which end the session the same way; a second one stops waiting for the
/// shadows, which then die with this process).
pub async fn serve(options: McpOptions) -> Result<ExitCode, CliError> {
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| CliError::Failed(format!("cannot handle SIGTERM: {e}")))?;
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| CliError::Failed(format!("cannot handle SIGINT: {e}")))?;
    let server = KugetsuMcp::new(options);
    let runs = server.runs.clone();
    let session = server
        .serve(rmcp::transport::stdio_pipes())
        .await
        .map_err(|e| CliError::Failed(format!("the MCP session did not start: {e}")))?;
    let mut stop = Some(session.cancellation_token());
    let force = CancellationToken::new();
    let signals = tokio::spawn({
        let force = force.clone();
        async move {
            loop {
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = sigint.recv() => {}
                }
                match stop.take() {
                    Some(stop) => {
                        tracing::info!(
                            "stopping: the MCP session ends, running shadows are cancelled"
                        );
                        stop.cancel();
                    }
                    None => force.cancel(),
                }
            }
        }
    });
    match session.waiting().await {
        Ok(reason) => tracing::debug!("the MCP session ended: {reason:?}"),
        Err(e) => tracing::warn!("the MCP session ended abnormally: {e}"),
    }
    // Every request still running was cancelled with the session; each run now stops its
    // shadow and waits for its `finished`.
    runs.close();
    if !runs.is_empty() {
        tracing::info!("cancelling {} running shadow(s)", runs.len());
    }
    let stopped = tokio::select! {
        done = tokio::time::timeout(SHUTDOWN_GRACE, runs.wait()) => done.is_ok(),
        () = force.cancelled() => false,
    };
    signals.abort();
    if !stopped {
        tracing::warn!(
            "{} shadow(s) did not stop in time; their tasks can be resumed with `kugetsu run --resume ID`",
            runs.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! The daemon-backed tools: each call opens a connection to the daemon's socket (found as the
//! client commands find it), makes its JSON-RPC calls and answers with the JSON the Hermes
//! plugin gives for the same tool.

use std::collections::VecDeque;

use kugetsu_protocol::{Event, Priority};
use serde_json::{Value, json};

use crate::cli::args::ClientOptions;
use crate::cli::client::Client;
use crate::exit::CliError;
use crate::land::api::{DiffParams, MergeParams};
use crate::mcp::params::{BadArgument, Params};
use crate::mcp::run::resolve_repo;
use crate::mcp::server::{McpOptions, Outcome};
use crate::mcp::tools::ToolName;
use crate::rpc::{self, EventsParams, ListParams, SteerParams, SubmitParams, TaskParams};

/// Most events `kugetsu_logs` returns (the last ones).
pub const MAX_LOG_EVENTS: usize = 200;
/// Most characters of diff text `kugetsu_diff` returns.
pub const MAX_DIFF_CHARS: usize = 100_000;

/// Why a daemon-backed call failed, as the model reads it.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The arguments were wrong.
    #[error(transparent)]
    Argument(#[from] BadArgument),
    /// The daemon (or reaching it) failed.
    #[error("{}", explain(.0))]
    Daemon(#[from] CliError),
    /// Something about the request itself, said in full.
    #[error("{0}")]
    Other(String),
}

/// A daemon error with the next step a model can take.
fn explain(error: &CliError) -> String {
    let text = error.to_string();
    if text.starts_with("no such task") {
        format!("{text}; kugetsu_status without a task lists the daemon's tasks")
    } else {
        text
    }
}

/// Runs daemon-backed `tool`.
pub async fn call(tool: ToolName, params: &Params, options: &McpOptions) -> Outcome {
    let result = match tool {
        ToolName::Submit => submit(params, options).await,
        ToolName::Status => status(params, options).await,
        ToolName::Cancel => cancel(params, options).await,
        ToolName::Steer => steer(params, options).await,
        ToolName::Logs => logs(params, options).await,
        ToolName::Diff => diff(params, options).await,
        ToolName::Merge => merge(params, options).await,
        ToolName::Run => Err(Failure::Other(
            "kugetsu_run does not go through the daemon".to_owned(),
        )),
    };
    result
        .map(|value| value.to_string())
        .map_err(|e| e.to_string())
}

async fn connect(options: &McpOptions) -> Result<Client, Failure> {
    let client = ClientOptions {
        socket: options.socket.clone(),
        state_dir: options.state_dir.clone(),
    };
    Ok(Client::connect(&client).await?)
}

async fn submit(params: &Params, options: &McpOptions) -> Result<Value, Failure> {
    let prompt = params.required("prompt")?;
    let repo =
        resolve_repo(params.string("repo")?.as_deref(), &options.cwd).map_err(Failure::Other)?;
    let priority = match params
        .choice("priority", &["high", "normal", "low"])?
        .as_deref()
    {
        Some("high") => Priority::High,
        Some("low") => Priority::Low,
        _ => Priority::Normal,
    };
    let request = SubmitParams {
        prompt,
        repo,
        base: params.string("base")?,
        model: params.string("model")?,
        priority,
        ..SubmitParams::default()
    };
    let mut client = connect(options).await?;
    let submitted = client.call::<rpc::Submit>(&request).await?;
    Ok(json!({ "task": submitted.task }))
}

async fn status(params: &Params, options: &McpOptions) -> Result<Value, Failure> {
    let task = params.string("task")?;
    let mut client = connect(options).await?;
    Ok(match task {
        Some(task) => json!(client.call::<rpc::Get>(&TaskParams { task }).await?),
        None => json!(client.call::<rpc::List>(&ListParams { all: false }).await?),
    })
}

async fn cancel(params: &Params, options: &McpOptions) -> Result<Value, Failure> {
    let task = params.required("task")?;
    let mut client = connect(options).await?;
    let cancelled = client.call::<rpc::Cancel>(&TaskParams { task }).await?;
    Ok(json!({ "task": cancelled.task, "status": cancelled.status }))
}

async fn steer(params: &Params, options: &McpOptions) -> Result<Value, Failure> {
    let task = params.required("task")?;
    let text = params.required("text")?;
    let mut client = connect(options).await?;
    let steered = client
        .call::<rpc::Steer>(&SteerParams { task, text })
        .await?;
    Ok(json!({ "task": steered.task, "steered": true }))
}

/// The task's events without streamed text pieces, the last [`MAX_LOG_EVENTS`] of them.
async fn logs(params: &Params, options: &McpOptions) -> Result<Value, Failure> {
    let task = params.required("task")?;
    let mut client = connect(options).await?;
    let mut kept = VecDeque::with_capacity(MAX_LOG_EVENTS);
    let mut left_out = 0usize;
    let mut after_seq = 0;
    loop {
        let page = client
            .call::<rpc::Events>(&EventsParams {
                task: task.clone(),
                after_seq,
                limit: None,
            })
            .await?;
        for envelope in page.events.iter() {
            after_seq = envelope.seq;
            if matches!(envelope.event, Event::TextDelta { .. }) {
                continue;
            }
            if kept.len() == MAX_LOG_EVENTS {
                kept.pop_front();
                left_out += 1;
            }
            kept.push_back(envelope.clone());
        }
        if !page.more || page.events.is_empty() {
            break;
        }
    }
    let mut reply = json!({ "task": task, "events": Vec::from(kept) });
    if left_out > 0 {
        reply["left_out"] = json!(left_out);
    }
    Ok(reply)
}

async fn diff(params: &Params, options: &McpOptions) -> Result<Value, Failure> {
    let request = DiffParams {
        task: params.required("task")?,
        stat: params.flag("stat")?,
    };
    let mut client = connect(options).await?;
    let mut result = client.call::<rpc::Diff>(&request).await?;
    let truncated = result.diff.chars().count() > MAX_DIFF_CHARS;
    if truncated {
        result.diff = result.diff.chars().take(MAX_DIFF_CHARS).collect();
    }
    let mut reply = json!(result);
    if truncated {
        reply["truncated"] = json!(true);
    }
    Ok(reply)
}

/// Lands the task; a refusal is a report (`refused` names why), not an error.
async fn merge(params: &Params, options: &McpOptions) -> Result<Value, Failure> {
    let request = MergeParams {
        tasks: vec![params.required("task")?],
        into: params.string("into")?,
        ..MergeParams::default()
    };
    let mut client = connect(options).await?;
    Ok(json!(client.call::<rpc::Merge>(&request).await?))
}

//! The agent loop: prompt -> model -> tool calls -> results -> model ... until the model stops
//! calling tools, the turn budget is spent, the deadline passes, or the task is cancelled.
//!
//! The loop runs inside a `select!` with the cancel and shutdown tokens and the deadline.
//! Losing that race drops the loop's future, which aborts an in-flight model request and kills
//! a running tool's process group (the tools' drop guards): cancellation needs no cooperation
//! from the code being cancelled.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kugetsu_protocol::{Event, FinishStatus, Finished, ModelRef, Phase, TaskSpec, Usage};

use crate::conversation::{Message, ToolCall, ToolSpec};
use crate::ipc::{Control, Outbox, error_chain};
use crate::llm::{LlmRequest, Provider};
use crate::tools::{self, ToolContext};

/// Output token budget of one assistant turn.
const MAX_OUTPUT_TOKENS: u32 = 8192;

/// Running totals kept outside the loop's future so they survive its cancellation.
#[derive(Debug, Default)]
struct Progress {
    turns: u32,
    usage: Usage,
    last_text: Option<String>,
    /// The tool running right now, so a cancelled task can close its `tool_start`.
    running_tool: Option<(String, String, Instant)>,
}

/// How the loop itself ended.
enum LoopEnd {
    Completed,
    Failed(String),
}

/// Runs `task` to its end. Returns the `finished` event to send, or `None` on `shutdown`.
pub async fn run(
    task: TaskSpec,
    _resume: bool,
    outbox: Outbox,
    mut control: Control,
) -> Option<Finished> {
    let mut progress = Progress::default();
    let deadline = task.deadline_unix_ms.map(deadline_instant);
    let (cancel, shutdown) = (control.cancel.clone(), control.shutdown.clone());
    let end = tokio::select! {
        end = agent_loop(&task, &outbox, &mut control, &mut progress) => Ok(end),
        () = cancel.cancelled() => Err(FinishStatus::Cancelled),
        () = shutdown.cancelled() => return None,
        () = sleep_until(deadline) => Err(FinishStatus::TimedOut),
    };
    if let Some((call_id, tool, started)) = progress.running_tool.take() {
        outbox.emit(Event::ToolEnd {
            call_id,
            tool,
            ok: false,
            output: "interrupted: the task was stopped while this tool ran".to_owned(),
            truncated: false,
            duration_ms: millis(started.elapsed()),
        });
    }
    let (status, error) = match end {
        Ok(LoopEnd::Completed) => (FinishStatus::Completed, None),
        Ok(LoopEnd::Failed(error)) => (FinishStatus::Failed, Some(error)),
        Err(FinishStatus::Cancelled) => (FinishStatus::Cancelled, Some("cancelled".to_owned())),
        Err(status) => (
            status,
            Some(format!(
                "timed out after {} turns: the task's deadline passed",
                progress.turns
            )),
        ),
    };
    Some(Finished {
        status,
        result: progress.last_text,
        error,
        turns: progress.turns,
        usage: progress.usage,
        restarts: 0,
        branch: None,
        worktree: None,
        changed_files: Vec::new(),
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn deadline_instant(unix_ms: u64) -> tokio::time::Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis);
    tokio::time::Instant::now() + Duration::from_millis(unix_ms.saturating_sub(now_ms))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn system_prompt(root: &std::path::Path) -> String {
    format!(
        "You are a coding agent working alone in a git worktree at {root}.\n\
         Use the tools to inspect and change files; every path is relative to the worktree and \
         no tool can reach outside it. `bash` runs commands there with a timeout.\n\
         Work step by step, check your changes (build, run tests) where you can, and when the \
         task is done reply with a short summary of what you changed and no tool calls.",
        root = root.display()
    )
}

async fn agent_loop(
    task: &TaskSpec,
    outbox: &Outbox,
    control: &mut Control,
    progress: &mut Progress,
) -> LoopEnd {
    let model: ModelRef = match task.model.parse() {
        Ok(model) => model,
        Err(e) => return LoopEnd::Failed(e.to_string()),
    };
    let env = |name: &str| std::env::var(name).ok();
    let provider = match Provider::from_model(&model, &env) {
        Ok(provider) => provider,
        Err(e) => return LoopEnd::Failed(error_chain(&e)),
    };
    let root = match std::env::current_dir().and_then(|d| d.canonicalize()) {
        Ok(root) => root,
        Err(e) => return LoopEnd::Failed(format!("cannot resolve the worktree: {e}")),
    };
    let ctx = ToolContext {
        root: root.clone(),
        output_dir: PathBuf::from(&task.task_dir).join("tool-output"),
    };
    let specs: Vec<ToolSpec> = tools::specs();
    let system = system_prompt(&root);
    let mut messages = vec![Message::User {
        text: task.prompt.clone(),
    }];

    loop {
        if progress.turns >= task.max_turns {
            return LoopEnd::Failed(format!(
                "reached max_turns ({}) before the model finished",
                task.max_turns
            ));
        }
        deliver_steering(control, outbox, &mut messages);
        progress.turns += 1;
        let turn = progress.turns;
        outbox.emit(Event::TurnStart { turn });
        control.phase.send_replace(Phase::WaitingModel);

        let request = LlmRequest {
            system: &system,
            messages: &messages,
            tools: &specs,
            max_tokens: MAX_OUTPUT_TOKENS,
        };
        let phase = &control.phase;
        let mut on_text = |text: &str| {
            phase.send_if_modified(|p| std::mem::replace(p, Phase::Streaming) != Phase::Streaming);
            outbox.emit(Event::TextDelta {
                text: text.to_owned(),
            });
        };
        let completion = match provider.complete(&request, &mut on_text).await {
            Ok(completion) => completion,
            Err(e) => return LoopEnd::Failed(format!("model request failed: {}", error_chain(&e))),
        };
        progress.usage.add(completion.usage);
        outbox.emit(Event::AssistantMessage {
            text: completion.text.clone(),
        });
        if !completion.text.is_empty() {
            progress.last_text = Some(completion.text.clone());
        }
        let calls = completion.tool_calls.clone();
        messages.push(Message::Assistant {
            text: completion.text,
            tool_calls: completion.tool_calls,
        });

        for call in &calls {
            control.phase.send_replace(Phase::Tool);
            let result = run_tool(&ctx, call, outbox, progress).await;
            messages.push(result);
        }
        outbox.emit(Event::TurnEnd {
            turn,
            usage: completion.usage,
        });
        if calls.is_empty() {
            return LoopEnd::Completed;
        }
    }
}

/// Hands every pending steering message to the model as a user message.
fn deliver_steering(control: &mut Control, outbox: &Outbox, messages: &mut Vec<Message>) {
    while let Ok(text) = control.steer.try_recv() {
        outbox.emit(Event::Steered { text: text.clone() });
        messages.push(Message::User { text });
    }
}

async fn run_tool(
    ctx: &ToolContext,
    call: &ToolCall,
    outbox: &Outbox,
    progress: &mut Progress,
) -> Message {
    let parsed: Result<serde_json::Value, _> = if call.arguments.trim().is_empty() {
        Ok(serde_json::Value::Object(Default::default()))
    } else {
        serde_json::from_str(&call.arguments)
    };
    let args_for_event = parsed.as_ref().map_or_else(
        |_| serde_json::Value::String(call.arguments.clone()),
        Clone::clone,
    );
    outbox.emit(Event::ToolStart {
        call_id: call.id.clone(),
        tool: call.name.clone(),
        args: args_for_event,
    });
    let started = Instant::now();
    progress.running_tool = Some((call.id.clone(), call.name.clone(), started));
    let output = match parsed {
        Ok(args) => tools::run(ctx, &call.id, &call.name, &args).await,
        Err(e) => tools::ToolOutput {
            ok: false,
            output: format!("the arguments are not valid JSON ({e}); send a JSON object"),
            truncated: false,
        },
    };
    progress.running_tool = None;
    outbox.emit(Event::ToolEnd {
        call_id: call.id.clone(),
        tool: call.name.clone(),
        ok: output.ok,
        output: output.output.clone(),
        truncated: output.truncated,
        duration_ms: millis(started.elapsed()),
    });
    Message::ToolResult {
        call_id: call.id.clone(),
        name: call.name.clone(),
        content: output.output,
        is_error: !output.ok,
    }
}

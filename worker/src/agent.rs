//! The agent loop: prompt -> model -> tool calls -> results -> model ... until the model stops
//! calling tools, the turn budget is spent, the deadline passes, or the task is cancelled.
//!
//! The loop runs inside a `select!` with the cancel and shutdown tokens and the deadline.
//! Losing that race drops the loop's future, which aborts an in-flight model request and kills
//! a running tool's process group (the tools' drop guards): cancellation needs no cooperation
//! from the code being cancelled. Everything that must outlive that drop (the conversation,
//! the counters, the journal) lives in a [`Session`] owned by [`run`].
//!
//! Safe points: steering messages and finished compactions are applied only at turn
//! boundaries, after the tool results of the previous turn, so no message ever lands between
//! a tool call and its result.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kugetsu_protocol::{Event, FinishStatus, Finished, ModelRef, Phase, TaskSpec};

use crate::context::{self, Budget, Compactor};
use crate::conversation::{ToolCall, ToolSpec};
use crate::ipc::{Control, Outbox};
use crate::llm::gate::{Gate, Shared};
use crate::llm::{LlmError, LlmRequest, Provider, StreamSink};
use crate::mcp::McpTools;
use crate::session::{Next, Session};
use crate::tool_gate::ToolGate;
use crate::tools::{self, ToolContext};
use kugetsu_protocol::error_chain;

/// Output token budget of one assistant turn.
const MAX_OUTPUT_TOKENS: u32 = 8192;
/// How often a request that overflowed the context is pruned and retried.
const OVERFLOW_RETRIES: u32 = 2;

/// Why the loop stopped early: an error, or a budget that the next request would pass.
enum Stop {
    Failed(String),
    Paused(String),
}

impl From<String> for Stop {
    fn from(error: String) -> Stop {
        Stop::Failed(error)
    }
}

/// How the loop itself ended.
enum LoopEnd {
    Completed,
    Failed(String),
    /// A model request would have passed the task's budget.
    Paused(String),
}

/// The tool call between its `tool_start` and its result, so a stopped task can close it.
type RunningTool = Option<Running>;

/// A tool call that has sent its `tool_start` and has no result yet.
#[derive(Debug)]
struct Running {
    call_id: String,
    tool: String,
    /// When the tool began; `None` while it waits for the supervisor's `proceed`.
    started: Option<Instant>,
}

/// Runs `task` to its end. Returns the `finished` event to send, or `None` on `shutdown`.
pub async fn run(
    task: TaskSpec,
    resume: bool,
    outbox: Outbox,
    mut control: Control,
) -> Option<Finished> {
    let journal_path = Path::new(&task.task_dir).join(kugetsu_protocol::layout::JOURNAL);
    let opened = if resume {
        Session::resume(&journal_path, &task.prompt).map(|(session, replayed, tail)| {
            if let crate::journal::Tail::Damaged { line, reason } = tail {
                eprintln!("kugetsu-worker: journal damaged at line {line} ({reason}); resuming from the record before it");
            }
            for call in replayed {
                let args = serde_json::from_str(&call.args)
                    .unwrap_or(serde_json::Value::String(call.args));
                outbox.replay(Event::ToolStart {
                    call_id: call.call_id.clone(),
                    tool: call.tool.clone(),
                    args,
                });
                if let Some((ok, output, truncated)) = call.result {
                    let end = Event::ToolEnd {
                        call_id: call.call_id,
                        tool: call.tool,
                        ok,
                        output,
                        truncated,
                        duration_ms: 0,
                    };
                    if call.fresh {
                        outbox.emit(end);
                    } else {
                        outbox.replay(end);
                    }
                }
            }
            session
        })
    } else {
        Session::start(&journal_path, &task.prompt)
    };
    let mut session = match opened {
        Ok(session) => session,
        Err(e) => return Some(finished(None, FinishStatus::Failed, Some(error_chain(&e)))),
    };

    control.gate.restore_spent(session.usage);
    let mut running: RunningTool = None;
    let deadline = task.deadline_unix_ms.map(deadline_instant);
    let (cancel, shutdown) = (control.cancel.clone(), control.shutdown.clone());
    let end = tokio::select! {
        end = agent_loop(&task, &outbox, &mut control, &mut session, &mut running) => Ok(end),
        () = cancel.cancelled() => Err(FinishStatus::Cancelled),
        () = shutdown.cancelled() => return None,
        () = sleep_until(deadline) => Err(FinishStatus::TimedOut),
    };
    close_stopped(&outbox, &mut session, &mut running);
    let (status, error) = match end {
        Ok(LoopEnd::Completed) => (FinishStatus::Completed, None),
        Ok(LoopEnd::Failed(error)) => (FinishStatus::Failed, Some(error)),
        Ok(LoopEnd::Paused(reason)) => (FinishStatus::Paused, Some(format!("paused: {reason}"))),
        Err(FinishStatus::Cancelled) => (FinishStatus::Cancelled, Some("cancelled".to_owned())),
        Err(status) => (
            status,
            Some(format!(
                "timed out after {} turns: the task's deadline passed",
                session.turns
            )),
        ),
    };
    Some(finished(Some(&session), status, error))
}

/// Gives the tool call a stopped task left open its result (journaled, so a later resume does
/// not report it as unknown) and its `tool_end`.
fn close_stopped(outbox: &Outbox, session: &mut Session, running: &mut RunningTool) {
    let Some(Running {
        call_id,
        tool,
        started,
    }) = running.take()
    else {
        return;
    };
    let output = match started {
        Some(_) => "interrupted: the task was stopped while this tool ran",
        None => "interrupted: the task was stopped before this tool ran (it was waiting for the supervisor's go-ahead)",
    }
    .to_owned();
    let _ = session.tool_result(&call_id, &tool, false, &output, false);
    outbox.emit(Event::ToolEnd {
        call_id,
        tool,
        ok: false,
        output,
        truncated: false,
        duration_ms: started.map_or(0, |at| millis(at.elapsed())),
    });
}

fn finished(session: Option<&Session>, status: FinishStatus, error: Option<String>) -> Finished {
    Finished {
        status,
        result: session.and_then(|s| s.last_text.clone()),
        error,
        turns: session.map_or(0, |s| s.turns),
        usage: session.map(|s| s.usage).unwrap_or_default(),
        restarts: 0,
        branch: None,
        worktree: None,
        changed_files: Vec::new(),
    }
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

fn system_prompt(root: &Path) -> String {
    format!(
        "You are a coding agent working alone in a git worktree at {root}.\n\
         Use the tools to inspect and change files; every path is relative to the worktree and \
         no tool can reach outside it. `bash` runs commands there with a timeout.\n\
         Work step by step, check your changes (build, run tests) where you can, and when the \
         task is done reply with a short summary of what you changed and no tool calls.",
        root = root.display()
    )
}

/// What the loop needs besides the session, set up once.
struct Setup {
    provider: Arc<Provider>,
    summarizer: Arc<Provider>,
    ctx: ToolContext,
    specs: Vec<ToolSpec>,
    /// The task's MCP servers; `None` for a task that uses none (nothing started, nothing
    /// allocated).
    mcp: Option<McpTools>,
    system: String,
    budget: Budget,
}

fn setup(task: &TaskSpec, gate: &Arc<Shared>) -> Result<Setup, String> {
    let model: ModelRef = task
        .model
        .parse()
        .map_err(|e: kugetsu_protocol::ModelError| e.to_string())?;
    // Keys come over the channel; the environment is the fallback of a supervisor that
    // sends none (and of tests that drive the worker directly).
    let env = |name: &str| {
        task.secrets
            .get(name)
            .map(str::to_owned)
            .or_else(|| std::env::var(name).ok())
    };
    let gate = |model: &str| {
        Gate::new(
            gate.clone(),
            model,
            task.prices.get(model).copied().or_else(|| {
                let model: ModelRef = model.parse().ok()?;
                kugetsu_protocol::price::built_in(&model)
            }),
        )
    };
    let stream_timeout = task
        .stream_timeout_ms
        .map(|ms| Duration::from_millis(ms.into()));
    let with_timeout = |mut provider: Provider| {
        if let Some(timeout) = stream_timeout {
            provider.set_stream_timeout(timeout);
        }
        provider
    };
    let provider = Arc::new(with_timeout(
        Provider::from_model(&model, &env, gate(&task.model)).map_err(|e| error_chain(&e))?,
    ));
    let summarizer = match task.compaction_model.as_deref().filter(|m| !m.is_empty()) {
        None => provider.clone(),
        Some(text) => {
            let model: ModelRef = text
                .parse()
                .map_err(|e: kugetsu_protocol::ModelError| format!("compaction_model: {e}"))?;
            Arc::new(with_timeout(
                Provider::from_model(&model, &env, gate(text))
                    .map_err(|e| format!("compaction_model: {}", error_chain(&e)))?,
            ))
        }
    };
    let root = std::env::current_dir()
        .and_then(|d| d.canonicalize())
        .map_err(|e| format!("cannot resolve the worktree: {e}"))?;
    Ok(Setup {
        provider,
        summarizer,
        ctx: ToolContext {
            root: root.clone(),
            output_dir: PathBuf::from(&task.task_dir).join(kugetsu_protocol::layout::TOOL_OUTPUT),
            // A limit of zero would kill every command: it means no limit, as absent does.
            mem_limit: task.mem_limit_bytes.filter(|&limit| limit > 0),
            guard: std::env::current_exe().ok(),
            sandbox: task.sandbox.as_deref().cloned().map(Arc::new),
        },
        specs: tools::specs(),
        mcp: None,
        system: system_prompt(&root),
        budget: Budget::new(
            task.context_window
                .unwrap_or_else(|| context::default_window(&model)),
        ),
    })
}

async fn agent_loop(
    task: &TaskSpec,
    outbox: &Outbox,
    control: &mut Control,
    session: &mut Session,
    running: &mut RunningTool,
) -> LoopEnd {
    match agent_turns(task, outbox, control, session, running).await {
        Ok(end) => end,
        Err(Stop::Failed(error)) => LoopEnd::Failed(error),
        Err(Stop::Paused(reason)) => LoopEnd::Paused(reason),
    }
}

async fn agent_turns(
    task: &TaskSpec,
    outbox: &Outbox,
    control: &mut Control,
    session: &mut Session,
    running: &mut RunningTool,
) -> Result<LoopEnd, Stop> {
    let mut setup = setup(task, &control.gate)?;
    if !task.mcp.is_empty() {
        setup.mcp = McpTools::start(&task.mcp, &setup.ctx).await;
        if let Some(mcp) = &setup.mcp {
            setup.specs.extend_from_slice(mcp.specs());
        }
    }
    let mut compactor = Compactor::default();
    let journal_err = |e: crate::session::JournalError| error_chain(&e);

    loop {
        match session.next() {
            Next::RunTools(calls) => {
                for call in &calls {
                    control.phase.send_replace(Phase::Tool);
                    run_tool(
                        &setup.ctx,
                        setup.mcp.as_mut(),
                        control.tool_gate.as_deref(),
                        call,
                        outbox,
                        session,
                        running,
                    )
                    .await?;
                }
                session.turn_end().map_err(journal_err)?;
                outbox.emit(Event::TurnEnd {
                    turn: session.turns,
                    usage: session.last_usage,
                });
                continue;
            }
            Next::Done => {
                // A steer that arrived while the model was finishing is never dropped.
                if !deliver_steering(control, outbox, session)? {
                    return Ok(LoopEnd::Completed);
                }
            }
            Next::AskModel => {
                deliver_steering(control, outbox, session)?;
            }
        }

        // What this worker said so far (a resume's replays, the last turn's tool_ends) is in
        // the pipe before the journal moves on to a new turn: a resumed worker re-announces
        // only the calls of the last turns, so events must never trail the journal by more.
        outbox.delivered().await;
        manage_context(task, outbox, control, session, &mut setup, &mut compactor).await?;

        if session.turns >= task.max_turns {
            return Ok(LoopEnd::Failed(format!(
                "reached max_turns ({}) before the model finished",
                task.max_turns
            )));
        }
        let turn = session.turns + 1;
        outbox.emit(Event::TurnStart { turn });
        let completion = ask_model(outbox, control, session, &mut setup).await?;
        outbox.emit(Event::AssistantMessage {
            text: completion.text.clone(),
        });
        session
            .assistant(completion.text, completion.tool_calls, completion.usage)
            .map_err(journal_err)?;
        if let Next::Done = session.next() {
            session.turn_end().map_err(journal_err)?;
            outbox.emit(Event::TurnEnd {
                turn: session.turns,
                usage: session.last_usage,
            });
        }
    }
}

/// Streams one assistant turn; on a context overflow, prunes and tries again.
async fn ask_model(
    outbox: &Outbox,
    control: &mut Control,
    session: &mut Session,
    setup: &mut Setup,
) -> Result<crate::llm::Completion, Stop> {
    let mut attempt = 0;
    loop {
        control.phase.send_replace(Phase::WaitingModel);
        let request = LlmRequest {
            system: &setup.system,
            messages: &session.messages,
            tools: &setup.specs,
            max_tokens: MAX_OUTPUT_TOKENS,
        };
        let bytes = context::request_bytes(&setup.system, &session.messages);
        let mut sink = TurnSink {
            outbox,
            phase: &control.phase,
        };
        match setup.provider.complete(&request, &mut sink).await {
            Ok(completion) => {
                setup.budget.calibrate(bytes, completion.usage.input_tokens);
                return Ok(completion);
            }
            Err(e) if e.is_context_overflow() && attempt < OVERFLOW_RETRIES => {
                attempt += 1;
                // The provider knows the window better than our estimate: whatever we sent
                // did not fit, so the usable window is below it.
                let sent = setup.budget.estimate(&setup.system, &session.messages);
                setup.budget.window = setup.budget.window.min(sent * 9 / 10).max(1024);
                let target =
                    (setup.budget.window as f64 * context::PRUNE_TO / f64::from(attempt)) as u64;
                if !prune_now(outbox, session, setup, target)? {
                    return Err(overflow_error(&e).into());
                }
            }
            Err(e) if e.is_context_overflow() => return Err(overflow_error(&e).into()),
            Err(LlmError::Paused(reason)) => return Err(Stop::Paused(reason)),
            Err(e) => return Err(format!("model request failed: {}", error_chain(&e)).into()),
        }
    }
}

/// Streams a turn to the supervisor: `text_delta`s as the text arrives, and `retry` when an
/// attempt failed and the next one starts over.
struct TurnSink<'a> {
    outbox: &'a Outbox,
    /// The heartbeat's phase: streaming once text arrives, waiting again on a retry.
    phase: &'a tokio::sync::watch::Sender<Phase>,
}

impl StreamSink for TurnSink<'_> {
    fn text(&mut self, text: &str) {
        self.phase
            .send_if_modified(|p| std::mem::replace(p, Phase::Streaming) != Phase::Streaming);
        self.outbox.emit(Event::TextDelta {
            text: text.to_owned(),
        });
    }

    fn retry(&mut self, attempt: u32, reason: &str, wait: Duration) {
        self.phase.send_replace(Phase::WaitingModel);
        self.outbox.emit(Event::Retry {
            attempt,
            reason: reason.to_owned(),
            wait_ms: millis(wait),
        });
    }
}

fn overflow_error(e: &LlmError) -> String {
    format!(
        "the context does not fit the model even after pruning: {}",
        error_chain(e)
    )
}

/// Applies a finished compaction, starts one when the context grew past the threshold, and
/// prunes when it is about to overflow.
async fn manage_context(
    task: &TaskSpec,
    outbox: &Outbox,
    control: &mut Control,
    session: &mut Session,
    setup: &mut Setup,
    compactor: &mut Compactor,
) -> Result<(), String> {
    let estimate = setup.budget.estimate(&setup.system, &session.messages);
    let mut finished = compactor.take_finished().await;
    if finished.is_none()
        && compactor.is_running()
        && setup.budget.over(estimate, context::PRUNE_AT)
    {
        // About to overflow: better to wait for the summary than to prune blindly.
        control.phase.send_replace(Phase::Compacting);
        finished = compactor.wait().await;
    }
    match finished {
        Some(Ok(summary)) if summary.cut <= session.messages.len() => {
            let messages = context::compacted(&task.prompt, &session.messages, &summary);
            let after = setup.budget.estimate(&setup.system, &messages);
            session
                .replace(messages, estimate, after)
                .map_err(|e| error_chain(&e))?;
            outbox.emit(Event::Compaction {
                tokens_before: estimate,
                tokens_after: after,
                ok: true,
            });
        }
        Some(Ok(_)) => {}
        Some(Err(reason)) => {
            eprintln!("kugetsu-worker: compaction failed: {reason}");
            outbox.emit(Event::Compaction {
                tokens_before: estimate,
                tokens_after: estimate,
                ok: false,
            });
            if setup.budget.over(estimate, context::COMPACT_AT) {
                let target = (setup.budget.window as f64 * context::PRUNE_TO) as u64;
                prune_now(outbox, session, setup, target)?;
            }
        }
        None => {}
    }
    let estimate = setup.budget.estimate(&setup.system, &session.messages);
    if setup.budget.over(estimate, context::COMPACT_AT) && compactor.may_start() {
        let keep = (setup.budget.window as f64 * 0.3) as u64;
        if let Some(cut) = context::choose_cut(&session.messages, &setup.budget, keep) {
            compactor.start(setup.summarizer.clone(), &session.messages, cut);
        }
    }
    if setup.budget.over(estimate, context::PRUNE_AT) && !compactor.is_running() {
        let target = (setup.budget.window as f64 * context::PRUNE_TO) as u64;
        prune_now(outbox, session, setup, target)?;
    }
    Ok(())
}

/// Deterministic pruning, journaled, with a `compaction` event (`ok: false`: no summary).
fn prune_now(
    outbox: &Outbox,
    session: &mut Session,
    setup: &Setup,
    target: u64,
) -> Result<bool, String> {
    let before = setup.budget.estimate(&setup.system, &session.messages);
    let mut messages = session.messages.clone();
    if !context::prune(&setup.system, &mut messages, &setup.budget, target) {
        return Ok(false);
    }
    let after = setup.budget.estimate(&setup.system, &messages);
    session
        .replace(messages, before, after)
        .map_err(|e| error_chain(&e))?;
    outbox.emit(Event::Compaction {
        tokens_before: before,
        tokens_after: after,
        ok: false,
    });
    Ok(true)
}

/// Hands every pending steering message to the model. Returns whether there was any.
fn deliver_steering(
    control: &mut Control,
    outbox: &Outbox,
    session: &mut Session,
) -> Result<bool, String> {
    let mut any = false;
    while let Ok(text) = control.steer.try_recv() {
        session.steer(&text).map_err(|e| error_chain(&e))?;
        outbox.emit(Event::Steered { text });
        any = true;
    }
    Ok(any)
}

/// Runs one tool call: its intent journaled durably, `tool_start`, with `gate` the wait for
/// the supervisor's `proceed`, the tool, its result journaled, `tool_end`.
async fn run_tool(
    ctx: &ToolContext,
    mcp: Option<&mut McpTools>,
    gate: Option<&ToolGate>,
    call: &ToolCall,
    outbox: &Outbox,
    session: &mut Session,
    running: &mut RunningTool,
) -> Result<(), String> {
    let parsed: Result<serde_json::Value, _> = if call.arguments.trim().is_empty() {
        Ok(serde_json::Value::Object(Default::default()))
    } else {
        serde_json::from_str(&call.arguments)
    };
    let args_for_event = parsed.as_ref().map_or_else(
        |_| serde_json::Value::String(call.arguments.clone()),
        Clone::clone,
    );
    // The intent is durable before the tool can have any effect.
    session.tool_intent(call).map_err(|e| error_chain(&e))?;
    kugetsu_os::crash::point("tool.intent");
    // Registered before `tool_start` goes out, so the answer cannot beat the wait.
    let pass = gate.map(|gate| gate.expect(&call.id));
    outbox.emit(Event::ToolStart {
        call_id: call.id.clone(),
        tool: call.name.clone(),
        args: args_for_event,
    });
    *running = Some(Running {
        call_id: call.id.clone(),
        tool: call.name.clone(),
        started: None,
    });
    if let Some(pass) = pass {
        // No timeout: the supervisor decides whether a worker that waits too long is killed.
        pass.wait().await;
    }
    let started = Instant::now();
    if let Some(running) = running.as_mut() {
        running.started = Some(started);
    }
    let output = match parsed {
        Ok(args) => match mcp {
            Some(mcp) if mcp.owns(&call.name) => mcp.call(&call.name, &args).await,
            _ => tools::run(ctx, &call.id, &call.name, &args).await,
        },
        Err(e) => tools::ToolOutput {
            ok: false,
            output: format!("the arguments are not valid JSON ({e}); send a JSON object"),
            truncated: false,
            memory: None,
        },
    };
    kugetsu_os::crash::point("tool.ran");
    session
        .tool_result(
            &call.id,
            &call.name,
            output.ok,
            &output.output,
            output.truncated,
        )
        .map_err(|e| error_chain(&e))?;
    *running = None;
    emit_tool_end(outbox, call, output, millis(started.elapsed()));
    Ok(())
}

/// Closes a tool call for the supervisor: `memory_limit` first when the call was killed for
/// taking the shadow over its memory limit, then the call's `tool_end`.
fn emit_tool_end(outbox: &Outbox, call: &ToolCall, output: tools::ToolOutput, duration_ms: u64) {
    if let Some(exceeded) = output.memory {
        outbox.emit(Event::MemoryLimit {
            rss_bytes: exceeded.rss_bytes,
            limit_bytes: exceeded.limit_bytes,
            killed: true,
        });
    }
    outbox.emit(Event::ToolEnd {
        call_id: call.id.clone(),
        tool: call.name.clone(),
        ok: output.ok,
        output: output.output,
        truncated: output.truncated,
        duration_ms,
    });
}

#[cfg(test)]
mod tests {
    use kugetsu_protocol::WorkerMessage;
    use tokio::sync::mpsc::UnboundedReceiver;

    use super::*;
    use crate::tools::{MemoryExceeded, ToolOutput};

    const MIB: u64 = 1024 * 1024;

    fn bash_call(command: &str) -> ToolCall {
        ToolCall {
            id: "call_mem".to_owned(),
            name: "bash".to_owned(),
            arguments: serde_json::json!({ "command": command }).to_string(),
        }
    }

    /// The events sent so far, in order.
    fn events(rx: &mut UnboundedReceiver<WorkerMessage>) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(message) = rx.try_recv() {
            if let WorkerMessage::Event(event) = message {
                out.push(event);
            }
        }
        out
    }

    #[test]
    fn a_call_killed_for_memory_reports_memory_limit_before_tool_end() {
        let (outbox, mut rx) = Outbox::channel();
        let output = ToolOutput {
            ok: false,
            output: "[killed: ...]".to_owned(),
            truncated: false,
            memory: Some(MemoryExceeded {
                rss_bytes: 700 * MIB,
                limit_bytes: 512 * MIB,
            }),
        };
        emit_tool_end(&outbox, &bash_call("make"), output, 7);
        let got = events(&mut rx);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[0],
            Event::MemoryLimit {
                rss_bytes: 700 * MIB,
                limit_bytes: 512 * MIB,
                killed: true
            }
        );
        let Event::ToolEnd {
            call_id,
            ok: false,
            duration_ms: 7,
            ..
        } = &got[1]
        else {
            panic!("no failed tool_end after memory_limit: {got:?}");
        };
        assert_eq!(call_id, "call_mem");

        let output = ToolOutput {
            ok: true,
            output: "fine".to_owned(),
            truncated: false,
            memory: None,
        };
        emit_tool_end(&outbox, &bash_call("true"), output, 1);
        let got = events(&mut rx);
        assert!(
            matches!(got[..], [Event::ToolEnd { ok: true, .. }]),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_bash_call_over_the_limit_emits_memory_limit_then_tool_end() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap().join("root");
        std::fs::create_dir(&root).unwrap();
        let ctx = ToolContext {
            root,
            output_dir: dir.path().join("tool-output"),
            mem_limit: Some(64 * MIB),
            guard: None,
            sandbox: None,
        };
        let mut session = Session::start(&dir.path().join("journal.jsonl"), "eat memory").unwrap();
        let call = bash_call(
            "python3 -c 'b = bytearray(160 * 1024 * 1024); import time; time.sleep(30.4705)'",
        );
        session
            .assistant(String::new(), vec![call.clone()], Default::default())
            .unwrap();
        let (outbox, mut rx) = Outbox::channel();
        let mut running: RunningTool = None;
        run_tool(&ctx, None, None, &call, &outbox, &mut session, &mut running)
            .await
            .unwrap();
        assert!(running.is_none());
        let got = events(&mut rx);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(got[0], Event::ToolStart { .. }), "{got:?}");
        let Event::MemoryLimit {
            rss_bytes,
            limit_bytes,
            killed: true,
        } = got[1]
        else {
            panic!("no memory_limit before tool_end: {got:?}");
        };
        assert_eq!(limit_bytes, 64 * MIB);
        assert!(rss_bytes > limit_bytes, "{rss_bytes}");
        let Event::ToolEnd { ok, output, .. } = &got[2] else {
            panic!("no tool_end: {got:?}");
        };
        assert!(!ok);
        assert!(
            output.contains("over the shadow's memory limit of 64 MiB"),
            "{output}"
        );
    }

    /// A session with one turn calling bash to create `marker`, a tool context in `dir`, and
    /// that call.
    fn gated_setup(dir: &Path, marker: &Path) -> (ToolContext, Session, ToolCall) {
        let root = dir.canonicalize().unwrap().join("root");
        std::fs::create_dir(&root).unwrap();
        let ctx = ToolContext {
            root,
            output_dir: dir.join("tool-output"),
            mem_limit: None,
            guard: None,
            sandbox: None,
        };
        let mut session = Session::start(&dir.join("journal.jsonl"), "touch it").unwrap();
        let call = ToolCall {
            id: "call_gated".to_owned(),
            name: "bash".to_owned(),
            arguments: serde_json::json!({ "command": format!("touch '{}'", marker.display()) })
                .to_string(),
        };
        session
            .assistant(String::new(), vec![call.clone()], Default::default())
            .unwrap();
        (ctx, session, call)
    }

    /// Long enough for an ungated `touch` to have run: the tool must not have run by then.
    const NOT_YET: Duration = Duration::from_millis(500);
    const WAIT: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn a_gated_call_waits_for_its_proceed_and_ignores_another_calls() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        let (ctx, mut session, call) = gated_setup(dir.path(), &marker);
        let gate = ToolGate::new();
        let (outbox, mut rx) = Outbox::channel();
        let mut running: RunningTool = None;
        {
            let tool = run_tool(
                &ctx,
                None,
                Some(&gate),
                &call,
                &outbox,
                &mut session,
                &mut running,
            );
            tokio::pin!(tool);
            assert!(
                tokio::time::timeout(NOT_YET, &mut tool).await.is_err(),
                "the call finished without a proceed"
            );
            assert!(!marker.exists(), "the tool ran before its proceed");
            assert!(gate.is_waiting());
            let got = events(&mut rx);
            assert!(
                matches!(&got[..], [Event::ToolStart { call_id, .. }] if call_id == "call_gated"),
                "{got:?}"
            );

            gate.proceed("call_other");
            assert!(
                tokio::time::timeout(NOT_YET, &mut tool).await.is_err(),
                "another call's proceed let it run"
            );
            assert!(!marker.exists(), "the tool ran on another call's proceed");
            assert!(gate.is_waiting());

            gate.proceed("call_gated");
            tokio::time::timeout(WAIT, tool)
                .await
                .expect("the call ran once it had its proceed")
                .unwrap();
        }
        assert!(marker.exists(), "the tool did not run");
        assert!(running.is_none());
        assert!(!gate.is_waiting());
        let got = events(&mut rx);
        assert!(
            matches!(&got[..], [Event::ToolEnd { ok: true, call_id, .. }] if call_id == "call_gated"),
            "{got:?}"
        );
        assert_eq!(session.next(), Next::AskModel, "the call has its result");
    }

    #[tokio::test]
    async fn a_call_cancelled_while_it_waits_never_runs_and_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        let (ctx, mut session, call) = gated_setup(dir.path(), &marker);
        let journal = dir.path().join("journal.jsonl");
        let gate = ToolGate::new();
        let (outbox, mut rx) = Outbox::channel();
        let mut running: RunningTool = None;
        let cancel = tokio_util::sync::CancellationToken::new();
        let cancelled = {
            let tool = run_tool(
                &ctx,
                None,
                Some(&gate),
                &call,
                &outbox,
                &mut session,
                &mut running,
            );
            let cancel_later = async {
                tokio::time::sleep(NOT_YET).await;
                cancel.cancel();
            };
            // What `run` does: the loop's future loses the race against the cancel token.
            tokio::select! {
                _ = tool => false,
                () = async { tokio::join!(cancel.cancelled(), cancel_later); } => true,
            }
        };
        assert!(cancelled, "the call finished without a proceed");
        assert!(!gate.is_waiting(), "a dropped call still counts as waiting");
        close_stopped(&outbox, &mut session, &mut running);
        // A proceed that comes too late runs nothing either.
        gate.proceed("call_gated");
        tokio::time::sleep(NOT_YET).await;
        assert!(!marker.exists(), "a cancelled call ran");

        let got = events(&mut rx);
        let [Event::ToolStart { .. }, Event::ToolEnd { ok, output, .. }] = &got[..] else {
            panic!("not tool_start then tool_end: {got:?}");
        };
        assert!(!ok);
        assert!(output.contains("before this tool ran"), "{output}");
        // The result is journaled: a resumed worker does not run the call either.
        drop(session);
        let (session, replayed, _) = Session::resume(&journal, "touch it").unwrap();
        assert_eq!(session.next(), Next::AskModel);
        let (ok, output, _) = replayed[0].result.clone().unwrap();
        assert!(!ok && output.contains("before this tool ran"), "{output}");
    }

    #[tokio::test]
    async fn an_ungated_call_runs_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        let (ctx, mut session, call) = gated_setup(dir.path(), &marker);
        let (outbox, mut rx) = Outbox::channel();
        let mut running: RunningTool = None;
        tokio::time::timeout(
            WAIT,
            run_tool(&ctx, None, None, &call, &outbox, &mut session, &mut running),
        )
        .await
        .expect("an ungated call waits for nothing")
        .unwrap();
        assert!(marker.exists());
        let got = events(&mut rx);
        assert!(
            matches!(
                &got[..],
                [Event::ToolStart { .. }, Event::ToolEnd { ok: true, .. }]
            ),
            "{got:?}"
        );
    }
}

//! The CLI side of the daemon: `submit`, `ps`, `show`, `logs`, `cancel`, `steer`, `clean`,
//! `shutdown`. Each connects to the socket, makes JSON-RPC calls, and prints. `top` lives in
//! [`crate::cli::top`] and uses the [`Client`] and the `ps` table from here.
//!
//! Without a daemon every command says so in one line and exits 2. A full queue exits 75.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use kugetsu_protocol::{DecodeError, Event, EventEnvelope, LineReader};
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};

use crate::cli::args::{
    CleanArgs, ClientOptions, IdArgs, LogsArgs, PsArgs, ResumeArgs, ShowArgs, ShutdownArgs,
    SteerArgs, SubmitArgs,
};
use crate::cli::render::Renderer;
use crate::cli::run::{print_json, print_result};
use crate::daemon::socket::{Half, halves};
use crate::exit::{self, CliError};
use crate::rpc::{
    self, CleanParams, EventsParams, ListParams, Method, Outgoing, ResumeParams, RpcError,
    ShutdownParams, SteerParams, SubmitParams, SubscribeParams, SubscriptionEnded, TaskParams,
    TaskStatus, TaskSummary,
};

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    /// The socket it connected to (shown by `top`).
    path: std::path::PathBuf,
    reader: LineReader<BufReader<Half>>,
    send: Half,
    next_id: u64,
}

/// Longest line accepted from the daemon (a `list` of many tasks can be large).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

impl Client {
    /// Connects to the daemon found through `options` and the environment.
    pub async fn connect(options: &ClientOptions) -> Result<Client, CliError> {
        Self::connect_to(options.socket.as_deref(), options.state_dir.as_deref()).await
    }

    async fn connect_to(
        socket: Option<&std::path::Path>,
        state_dir: Option<&std::path::Path>,
    ) -> Result<Client, CliError> {
        let env = |key: &str| std::env::var(key).ok();
        let state = crate::config::state_dir(state_dir, &env)?;
        let path = crate::config::socket_path(socket, &state, &env);
        let stream = crate::daemon::socket::connect(&path).await.map_err(|e| {
            CliError::Usage(format!(
                "no kugetsu daemon is running (cannot connect to {}: {e}); start one with `kugetsu serve`",
                path.display()
            ))
        })?;
        let (recv, send) = halves(stream);
        Ok(Client {
            path,
            reader: LineReader::with_limit(BufReader::new(recv), MAX_RESPONSE_BYTES),
            send,
            next_id: 1,
        })
    }

    /// The daemon's socket this client is connected to.
    pub fn socket(&self) -> &std::path::Path {
        &self.path
    }

    /// Calls method `M` and waits for its response (notifications before it are dropped).
    pub async fn call<M: Method>(&mut self, params: &M::Params) -> Result<M::Result, CliError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Outgoing {
            jsonrpc: "2.0",
            id,
            method: M::NAME,
            params,
        };
        let mut line = serde_json::to_vec(&request).map_err(|e| CliError::Failed(e.to_string()))?;
        line.push(b'\n');
        self.send
            .write_all(&line)
            .await
            .map_err(|e| CliError::Failed(format!("lost the daemon: {e}")))?;
        loop {
            let message = self.next_message().await?;
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(error) = message.get("error") {
                let error: RpcError = serde_json::from_value(error.clone())
                    .unwrap_or_else(|_| RpcError::new(rpc::INTERNAL_ERROR, error.to_string()));
                return Err(cli_error(error));
            }
            let result = message.get("result").cloned().unwrap_or(Value::Null);
            return serde_json::from_value(result).map_err(|e| {
                CliError::Failed(format!("bad answer from the daemon to {}: {e}", M::NAME))
            });
        }
    }

    async fn next_message(&mut self) -> Result<Value, CliError> {
        match self.reader.next_line().await {
            Ok(Some(line)) => serde_json::from_slice(&line)
                .map_err(|e| CliError::Failed(format!("bad message from the daemon: {e}"))),
            Ok(None) | Err(DecodeError::Io { .. }) => Err(CliError::Failed(
                "the daemon closed the connection".to_owned(),
            )),
            Err(e) => Err(CliError::Failed(format!(
                "bad message from the daemon: {e}"
            ))),
        }
    }

    /// The next event notification of a subscription; [`Lagged`] when the daemon cut a
    /// one-task subscription off because this client read too slowly.
    pub async fn next_event(&mut self) -> Result<EventEnvelope, NextEvent> {
        loop {
            let message = self.next_message().await.map_err(Ended)?;
            let params = message.get("params").cloned().unwrap_or(Value::Null);
            match message.get("method").and_then(Value::as_str) {
                Some(rpc::EVENT_NOTIFICATION) => {
                    if let Ok(envelope) = serde_json::from_value::<EventEnvelope>(params) {
                        return Ok(envelope);
                    }
                }
                Some(rpc::SUBSCRIPTION_ENDED) => {
                    let ended: Option<SubscriptionEnded> = serde_json::from_value(params).ok();
                    return Err(match ended {
                        Some(SubscriptionEnded {
                            after_seq: Some(seq),
                            ..
                        }) => Lagged(seq),
                        other => Ended(CliError::Failed(other.map_or_else(
                            || "the daemon ended the subscription".to_owned(),
                            |e| e.message,
                        ))),
                    });
                }
                _ => {}
            }
        }
    }
}

/// Why [`Client::next_event`] returned no event.
#[derive(Debug)]
pub enum NextEvent {
    /// The daemon cut the subscription off; subscribe again after this `seq`.
    Lagged(u64),
    /// The connection or the subscription ended for good.
    Ended(CliError),
}

use NextEvent::{Ended, Lagged};

/// Maps a daemon error to the CLI's exit codes.
fn cli_error(error: RpcError) -> CliError {
    let detail = error
        .data
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    match error.code {
        rpc::QUEUE_FULL => CliError::QueueFull(format!(
            "queue_full: the daemon's queue is full{detail}; retry later"
        )),
        rpc::NOT_FOUND => CliError::Usage(format!("no such task{detail}")),
        rpc::INVALID_PARAMS | rpc::INVALID_REQUEST | rpc::METHOD_NOT_FOUND => {
            CliError::Usage(error.message)
        }
        rpc::SHUTTING_DOWN => CliError::Failed("the daemon is shutting down".to_owned()),
        _ => CliError::Failed(error.message),
    }
}

/// `kugetsu submit`.
pub async fn submit(args: SubmitArgs) -> Result<ExitCode, CliError> {
    if args.task.resume.is_some() {
        return Err(CliError::Usage(
            "--resume is for `kugetsu run`; the daemon resumes its own tasks".to_owned(),
        ));
    }
    let repo = std::path::absolute(&args.task.repo)
        .map_err(|e| CliError::Usage(format!("{}: {e}", args.task.repo.display())))?;
    let params = SubmitParams {
        prompt: args.prompt.clone(),
        repo,
        base: args.task.base.clone(),
        no_worktree: args.task.no_worktree,
        model: args.task.model.clone(),
        max_turns: args.task.max_turns,
        timeout_ms: args
            .task
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        mem_limit: args.task.mem_limit,
        sandbox: args.task.confine.sandbox,
        network: args.task.confine.network,
        priority: args.priority,
        budget_tokens: args.task.budget.budget_tokens,
        budget_usd: args.task.budget.budget_usd,
        mcp: args.task.mcp_choice(),
    };
    let mut client =
        Client::connect_to(args.socket.as_deref(), args.task.state_dir.as_deref()).await?;
    let id = client.call::<rpc::Submit>(&params).await?.task;
    if !args.wait {
        if args.json {
            print_line(&json!({ "task": id }).to_string());
        } else {
            print_line(&id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        eprintln!("kugetsu: queued task {id}");
    }
    let finished = follow(&mut client, &id, args.json).await?;
    if !args.json {
        print_result(&finished);
    }
    Ok(ExitCode::from(exit::for_status(finished.status)))
}

/// Prints a task's events from the start until `finished`, which it returns. A reader slower
/// than the task is cut off by the daemon with the `seq` to continue from: it subscribes again
/// from there, so nothing is missed and nothing is printed twice.
async fn follow(
    client: &mut Client,
    id: &str,
    json: bool,
) -> Result<kugetsu_protocol::Finished, CliError> {
    let mut renderer = Renderer::new();
    let mut after_seq = 0;
    loop {
        let params = SubscribeParams {
            task: Some(id.to_owned()),
            after_seq,
        };
        client.call::<rpc::Subscribe>(&params).await?;
        loop {
            let envelope = match client.next_event().await {
                Ok(envelope) => envelope,
                Err(Lagged(seq)) => {
                    after_seq = seq.max(after_seq);
                    break;
                }
                Err(Ended(e)) => return Err(e),
            };
            if envelope.seq <= after_seq {
                continue;
            }
            after_seq = envelope.seq;
            if json {
                print_json(&envelope);
            } else {
                renderer.show(&envelope);
            }
            if let Event::Finished(finished) = envelope.event {
                return Ok(finished);
            }
        }
    }
}

/// The daemon's tasks (`list`): live ones and the recently finished, or `all` of them.
pub(crate) async fn list(client: &mut Client, all: bool) -> Result<Vec<TaskSummary>, CliError> {
    Ok(client.call::<rpc::List>(&ListParams { all }).await?.tasks)
}

/// `kugetsu ps`.
pub async fn ps(args: PsArgs) -> Result<ExitCode, CliError> {
    let mut client = Client::connect(&args.client).await?;
    let listed = client
        .call::<rpc::List>(&ListParams { all: args.all })
        .await?;
    if args.json {
        let mut out = json!({ "tasks": listed.tasks });
        if !listed.nodes.is_empty() {
            out["nodes"] = json!(listed.nodes);
        }
        print_line(&out.to_string());
    } else {
        let mut text = table(&listed.tasks);
        if !listed.nodes.is_empty() {
            text.push_str(&nodes_line(&listed.nodes));
        }
        print_line(&text);
    }
    Ok(ExitCode::SUCCESS)
}

/// The cluster's nodes under the `ps` table.
fn nodes_line(nodes: &[rpc::NodeSummary]) -> String {
    let shown: Vec<String> = nodes
        .iter()
        .map(|n| {
            if n.up {
                format!("{} up, {}/{} running", n.id, n.running, n.max_shadows)
            } else {
                format!("{} down (last seen {} s ago)", n.id, n.seen_ms_ago / 1000)
            }
        })
        .collect();
    format!("\nnodes: {}\n", shown.join(" · "))
}

/// The `ps` table of `tasks`, with the counts and the queue's reasons below it.
pub(crate) fn table(tasks: &[TaskSummary]) -> String {
    // In a cluster, which node runs each task.
    let node_width = tasks
        .iter()
        .filter_map(|t| t.node.as_ref().map(|n| n.chars().count()))
        .max()
        .map(|w| w.clamp(4, 24));
    let node_cell = |node: Option<&str>| match node_width {
        Some(w) => format!("{:<w$} ", clip(node.unwrap_or("-"), w)),
        None => String::new(),
    };
    let mut out = format!(
        "{:<14} {:<10} {}{:<7} {:>5} {:>8} {:>9} {:>8} {:<24} {}\n",
        "ID",
        "STATUS",
        node_cell(Some("NODE")),
        "PRIO",
        "TURNS",
        "TOKENS",
        "COST",
        "MEM",
        "MODEL",
        "PROMPT"
    );
    for task in tasks {
        let mem = task
            .rss_bytes
            .map_or_else(|| "-".to_owned(), |b| format!("{}M", b >> 20));
        let prompt: String = task
            .prompt
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(50)
            .collect();
        out.push_str(&format!(
            "{:<14} {:<10} {}{:<7} {:>5} {:>8} {:>9} {:>8} {:<24} {}\n",
            task.id,
            status_shown(task),
            node_cell(task.node.as_deref()),
            format!("{:?}", task.priority).to_lowercase(),
            task.turns,
            tokens_text(task.usage.tokens()),
            task.usage
                .cost_usd
                .map_or_else(|| "-".to_owned(), |c| format!("${c:.4}")),
            mem,
            clip(&task.model, 24),
            prompt
        ));
    }
    let running = tasks
        .iter()
        .filter(|t| matches!(t.status, TaskStatus::Running | TaskStatus::Waiting))
        .count();
    let waiting = tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Waiting)
        .count();
    let queued = tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Queued)
        .count();
    let waiting = if waiting > 0 {
        format!(" ({waiting} waiting for a permit)")
    } else {
        String::new()
    };
    for task in tasks
        .iter()
        .filter(|t| !t.conflicts.is_empty() && t.merged.is_none())
    {
        for (with, files) in &task.conflicts {
            let with = if with == crate::land::radar::BASE {
                "new commits on its base"
            } else {
                with.as_str()
            };
            out.push_str(&format!(
                "! {} conflicts with {with} in {}\n",
                task.id,
                clip(&files.join(", "), 80)
            ));
        }
    }
    out.push_str(&format!(
        "{running} running{waiting}, {queued} queued, {} total",
        tasks.len()
    ));
    // One line per distinct reason: a held task's reason names it, a shared one (the daily
    // budget) is said once.
    let mut said: Vec<&str> = Vec::new();
    for task in tasks.iter().filter(|t| t.status == TaskStatus::Queued) {
        let Some(reason) = task.waiting.as_deref() else {
            continue;
        };
        if said.contains(&reason) {
            continue;
        }
        said.push(reason);
        if reason.starts_with("can never start") {
            out.push_str(&format!("\nqueued task {} {reason}", task.id));
        } else {
            out.push_str(&format!("\nqueued tasks wait: {reason}"));
        }
    }
    out
}

/// A token count in a few characters: `950`, `12.3k`, `4.1M`.
pub(crate) fn tokens_text(n: u64) -> String {
    match n {
        0 => "-".to_owned(),
        n if n < 10_000 => n.to_string(),
        n if n < 1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        n => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// The status column: a completed task that landed shows as `merged`.
pub(crate) fn status_shown(task: &TaskSummary) -> &'static str {
    if task.merged.is_some() {
        "merged"
    } else {
        task.status.as_str()
    }
}

/// The first `max` characters of `text`.
pub(crate) fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// `kugetsu show`.
pub async fn show(args: ShowArgs) -> Result<ExitCode, CliError> {
    let mut client = Client::connect(&args.client).await?;
    let task = client
        .call::<rpc::Get>(&TaskParams {
            task: args.id.clone(),
        })
        .await?;
    if args.json {
        print_line(&serde_json::to_string(&task).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = format!(
        "task      {}\nstatus    {}\npriority  {:?}\nmodel     {}\nrepo      {}\n",
        task.id,
        task.status.as_str(),
        task.priority,
        task.model,
        task.repo.display()
    );
    if let Some(branch) = &task.branch {
        text.push_str(&format!("branch    {branch}\n"));
    }
    if let Some(worktree) = &task.worktree {
        text.push_str(&format!("worktree  {worktree}\n"));
    }
    for (with, files) in &task.conflicts {
        text.push_str(&format!("conflict  with {with} in {}\n", files.join(", ")));
    }
    if let Some(merged) = &task.merged {
        text.push_str(&format!(
            "merged    into {} at {}\n",
            merged.into,
            merged.commit.get(..10).unwrap_or(&merged.commit)
        ));
    }
    text.push_str(&format!(
        "created   {}\nturns     {}\ntokens    {} in / {} out\n",
        task.created, task.turns, task.usage.input_tokens, task.usage.output_tokens,
    ));
    if let Some(cost) = task.usage.cost_usd {
        text.push_str(&format!("cost      ${cost:.4}\n"));
    }
    match (task.budget_tokens, task.budget_usd) {
        (None, None) => {}
        (tokens, usd) => {
            let parts: Vec<String> = tokens
                .map(|t| format!("{t} tokens"))
                .into_iter()
                .chain(usd.map(|u| format!("${u}")))
                .collect();
            text.push_str(&format!("budget    {}\n", parts.join(", ")));
        }
    }
    if let Some(reason) = &task.waiting {
        text.push_str(&format!("waiting   {reason}\n"));
    }
    text.push_str(&format!(
        "restarts  {}\nmem limit {} MiB\n",
        task.restarts,
        task.mem_limit >> 20
    ));
    if let Some(pid) = task.pid {
        text.push_str(&format!("pid       {pid}\n"));
    }
    if let Some(rss) = task.rss_bytes {
        text.push_str(&format!("memory    {} MiB\n", rss >> 20));
    }
    if let Some(error) = &task.error {
        text.push_str(&format!("error     {error}\n"));
    }
    text.push_str(&format!("prompt    {}", task.prompt));
    if let Some(result) = &task.result {
        text.push_str(&format!("\nresult    {result}"));
    }
    print_line(&text);
    Ok(ExitCode::SUCCESS)
}

/// `kugetsu logs`.
pub async fn logs(args: LogsArgs) -> Result<ExitCode, CliError> {
    let mut client = Client::connect(&args.client).await?;
    if args.follow {
        follow(&mut client, &args.id, args.json).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut renderer = Renderer::new();
    let mut after_seq = 0;
    loop {
        let page = client
            .call::<rpc::Events>(&EventsParams {
                task: args.id.clone(),
                after_seq,
                limit: None,
            })
            .await?;
        for envelope in &page.events {
            after_seq = envelope.seq;
            if args.json {
                print_json(envelope);
            } else {
                renderer.show(envelope);
            }
        }
        if !page.more || page.events.is_empty() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kugetsu resume`.
pub async fn resume(args: ResumeArgs) -> Result<ExitCode, CliError> {
    let mut client = Client::connect(&args.client).await?;
    let result = client
        .call::<rpc::Resume>(&ResumeParams {
            task: args.id.clone(),
            budget_tokens: args.budget.budget_tokens,
            budget_usd: args.budget.budget_usd,
        })
        .await?;
    print_line(&format!("{} {}", result.status, result.task));
    Ok(ExitCode::SUCCESS)
}

/// `kugetsu cancel`.
pub async fn cancel(args: IdArgs) -> Result<ExitCode, CliError> {
    let mut client = Client::connect(&args.client).await?;
    let result = client
        .call::<rpc::Cancel>(&TaskParams {
            task: args.id.clone(),
        })
        .await?;
    print_line(&format!("{} {}", result.status, result.task));
    Ok(ExitCode::SUCCESS)
}

/// `kugetsu steer`.
pub async fn steer(args: SteerArgs) -> Result<ExitCode, CliError> {
    let mut client = Client::connect(&args.client).await?;
    client
        .call::<rpc::Steer>(&SteerParams {
            task: args.id.clone(),
            text: args.text.clone(),
        })
        .await?;
    print_line(&format!("steering message queued for {}", args.id));
    Ok(ExitCode::SUCCESS)
}

/// `kugetsu clean`.
pub async fn clean(args: CleanArgs) -> Result<ExitCode, CliError> {
    let mut client = Client::connect(&args.client).await?;
    let result = client
        .call::<rpc::Clean>(&CleanParams { purge: args.purge })
        .await?;
    let removed = &result.removed_worktrees;
    for kept in &result.kept {
        eprintln!("kept {}: {}", kept.task, kept.reason);
    }
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    if removed.is_empty() && result.purged.is_empty() {
        print_line("nothing to clean");
    }
    if !removed.is_empty() {
        print_line(&format!(
            "removed {} worktree{}: {}",
            removed.len(),
            plural(removed.len()),
            removed.join(" ")
        ));
    }
    if !result.purged.is_empty() {
        print_line(&format!(
            "removed the record{} of {}",
            plural(result.purged.len()),
            result.purged.join(" ")
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `kugetsu shutdown`: asks the daemon to stop and, unless draining, waits until it has.
pub async fn shutdown(args: ShutdownArgs) -> Result<ExitCode, CliError> {
    let mut client = Client::connect(&args.client).await?;
    match client
        .call::<rpc::Shutdown>(&ShutdownParams { drain: args.drain })
        .await
    {
        Ok(_) => {}
        // An idle daemon may exit before its answer is out: gone is what was asked for.
        Err(CliError::Failed(_)) if !args.drain && Client::connect(&args.client).await.is_err() => {
            print_line("the daemon stopped");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    }
    if args.drain {
        print_line("the daemon stops once its queue drains");
        return Ok(ExitCode::SUCCESS);
    }
    // The daemon closes our connection when it exits.
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        while client.next_message().await.is_ok() {}
    })
    .await;
    if gone.is_err() {
        return Err(CliError::Failed(
            "the daemon did not stop within 30 s".to_owned(),
        ));
    }
    print_line("the daemon stopped");
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` and a newline to stdout.
pub(crate) fn print_line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

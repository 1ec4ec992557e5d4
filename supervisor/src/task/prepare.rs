//! Making a task: validating a [`TaskRequest`], creating its directory and record, its
//! worktree when it is about to start, and reopening an existing task for `--resume`.
//!
//! [`prepare`] checks everything that can be wrong before anything is created (model, keys,
//! repository) so that bad input costs nothing and is a usage error; what fails after that
//! (a full disk, a git failure) is a runtime failure, never reported as bad usage.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kugetsu_protocol::{EventEnvelope, ModelRef, ProviderKind};

use crate::config::Config;
use crate::exit::CliError;
use crate::task::control::Resume;
use crate::task::events::{self, Progress};
use crate::task::git;
use crate::task::record::{RecordError, StateDir, TaskDir, TaskRecord, is_valid_id};
use crate::task::request::{Budget, TaskRequest};

/// A task ready to run: validated, with its directory and record created.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub record: TaskRecord,
    pub dir: TaskDir,
    pub config: Config,
}

/// A budget must be positive, and a dollar budget needs a price for the model (config
/// `[prices."PROVIDER/MODEL"]`, or the built-in table): without one it could never be kept.
pub fn check_budget(
    model: &str,
    tokens: Option<u64>,
    usd: Option<f64>,
    config: &Config,
) -> Result<(), CliError> {
    if tokens == Some(0) {
        return Err(CliError::Usage(
            "--budget-tokens must be at least 1".to_owned(),
        ));
    }
    if let Some(usd) = usd
        && !(usd.is_finite() && usd > 0.0)
    {
        return Err(CliError::Usage(format!(
            "--budget-usd must be a positive number of dollars, not {usd}"
        )));
    }
    if usd.is_some() && config.governance.price(model).is_none() {
        return Err(CliError::Usage(format!(
            "--budget-usd needs the price of {model}, which kugetsu does not know: add              [prices.\"{model}\"] input_per_mtok = ... and output_per_mtok = ... to the config"
        )));
    }
    Ok(())
}

/// The MCP servers a task uses: every configured one without `--mcp`, none for `--mcp none`,
/// else the ones named (each must be configured).
pub fn resolve_mcp(choice: Option<&[String]>, config: &Config) -> Result<Vec<String>, CliError> {
    let Some(names) = choice else {
        return Ok(config.mcp.keys().cloned().collect());
    };
    if names.iter().any(|n| n == "none") {
        if names.len() > 1 {
            return Err(CliError::Usage(
                "--mcp none cannot be combined with server names".to_owned(),
            ));
        }
        return Ok(Vec::new());
    }
    let mut chosen: Vec<String> = Vec::new();
    for name in names {
        if !config.mcp.contains_key(name) {
            let configured: Vec<&str> = config.mcp.keys().map(String::as_str).collect();
            return Err(CliError::Usage(if configured.is_empty() {
                format!(
                    "--mcp {name}: no MCP server is configured (add [mcp.{name}] to the config)"
                )
            } else {
                format!(
                    "--mcp {name}: no such MCP server; the configured ones are {} (or none)",
                    configured.join(", ")
                )
            }));
        }
        if !chosen.contains(name) {
            chosen.push(name.clone());
        }
    }
    Ok(chosen)
}

/// Checks the request and creates the task: its directory and `task.json`.
///
/// The worktree is not created yet (see [`materialize`]): a queued task costs a directory and
/// two small files, nothing more.
pub async fn prepare(
    request: &TaskRequest,
    state: &StateDir,
    config: &Config,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Prepared, CliError> {
    if request.prompt.trim().is_empty() {
        return Err(CliError::Usage("the prompt is empty".to_owned()));
    }
    let model = resolve_model(request.model.as_deref(), config, env)?;
    let budget_tokens = request.budget.tokens.or(config.governance.budget_tokens);
    let budget_usd = request.budget.usd.or(config.governance.budget_usd);
    check_budget(&model.to_string(), budget_tokens, budget_usd, config)?;
    let mcp = resolve_mcp(request.mcp.as_deref(), config)?;
    if request.no_worktree && request.base.is_some() {
        return Err(CliError::Usage(
            "--base needs a worktree; drop --no-worktree or --base".to_owned(),
        ));
    }
    let repo = git::toplevel(&request.repo).await?;
    let base_commit = if request.no_worktree {
        git::resolve_commit(&repo, "HEAD").await.ok()
    } else {
        Some(git::resolve_commit(&repo, request.base.as_deref().unwrap_or("HEAD")).await?)
    };
    let base_ref = git::branch_of(&repo, request.base.as_deref().unwrap_or("HEAD")).await;
    let dir = state.create_task().map_err(|e| {
        CliError::Failed(format!(
            "cannot create a task directory under {}: {}",
            state.root.display(),
            crate::exit::describe_io(&e)
        ))
    })?;
    let id = dir.id().to_owned();
    let (workdir, branch) = if request.no_worktree {
        (repo.clone(), git::current_branch(&repo).await)
    } else {
        (state.worktree(&id), Some(format!("kugetsu/{id}")))
    };
    let record = TaskRecord {
        id,
        prompt: request.prompt.clone(),
        model: model.to_string(),
        repo,
        workdir,
        branch,
        base_commit,
        base_ref,
        worktree: !request.no_worktree,
        max_turns: request.max_turns.unwrap_or(config.max_turns),
        timeout_ms: request
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        deadline_unix_ms: None,
        mem_limit: request.mem_limit.unwrap_or(config.mem_limit),
        sandbox: request.sandbox.unwrap_or(config.sandbox),
        network: request.network.unwrap_or(config.network),
        created_unix_ms: unix_ms(SystemTime::now()),
        priority: request.priority,
        origin: request.origin,
        budget_tokens,
        budget_usd,
        mcp,
    };
    // Durable before anyone is told the task exists.
    if let Err(e) = dir.save(&record) {
        let _ = dir.remove();
        return Err(CliError::Failed(format!(
            "cannot write task.json: {}",
            crate::exit::describe_io(&e)
        )));
    }
    Ok(Prepared {
        record,
        dir,
        config: config.clone(),
    })
}

/// [`prepare`] and [`materialize`] at once, for a task that starts right away. Nothing is
/// left behind when it fails.
pub async fn prepare_now(
    request: &TaskRequest,
    state: &StateDir,
    config: &Config,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Prepared, CliError> {
    let mut prepared = prepare(request, state, config, env).await?;
    if let Err(e) = materialize(&mut prepared).await {
        let _ = prepared.dir.remove();
        return Err(CliError::Failed(e));
    }
    Ok(prepared)
}

/// Makes a prepared task ready to start: creates its worktree and fixes its deadline (a
/// timeout counts from the first start, not from submission). Idempotent.
pub async fn materialize(prepared: &mut Prepared) -> Result<(), String> {
    let record = &mut prepared.record;
    if record.worktree && !record.workdir.exists() {
        let branch = record
            .branch
            .clone()
            .unwrap_or_else(|| format!("kugetsu/{}", record.id));
        let base = record
            .base_commit
            .clone()
            .unwrap_or_else(|| "HEAD".to_owned());
        git::add_worktree(&record.repo, &record.workdir, &branch, &base)
            .await
            .map_err(|e| e.to_string())?;
    }
    if record.deadline_unix_ms.is_none()
        && let Some(timeout) = record.timeout_ms
    {
        record.deadline_unix_ms = Some(unix_ms(SystemTime::now()).saturating_add(timeout));
        prepared
            .dir
            .save(record)
            .map_err(|e| format!("cannot update task.json: {}", crate::exit::describe_io(&e)))?;
    }
    Ok(())
}

/// What `--resume ID` found.
#[derive(Debug)]
pub enum Reopened {
    /// The task can continue from its journal.
    Resumable(Box<Prepared>, Resume),
    /// The task already ended; this is its `finished` event.
    Finished(Box<EventEnvelope>),
}

/// Loads an existing task for `--resume`.
///
/// A task paused by its budget is resumable: `budget` (where given) replaces its budget in
/// `task.json` first.
pub async fn reopen(
    id: &str,
    state: &StateDir,
    config: &Config,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    budget: Budget,
) -> Result<Reopened, CliError> {
    if !is_valid_id(id) {
        return Err(CliError::Usage(format!("{id:?} is not a task id")));
    }
    let dir = state.task(id);
    let mut record = dir.load().map_err(|e| match e {
        RecordError::Missing { .. } => {
            CliError::Usage(format!("no task {id} in {}", state.root.display()))
        }
        RecordError::Io { .. } => CliError::Failed(kugetsu_protocol::error_chain(&e)),
        other => CliError::Usage(kugetsu_protocol::error_chain(&other)),
    })?;
    let events = events::read_all(&dir.events_file())
        .await
        .unwrap_or_default();
    if let Some(last) = events.last()
        && let kugetsu_protocol::Event::Finished(finished) = &last.event
        && finished.status != kugetsu_protocol::FinishStatus::Paused
    {
        return Ok(Reopened::Finished(Box::new(last.clone())));
    }
    if budget != Budget::default() {
        let tokens = budget.tokens.or(record.budget_tokens);
        let usd = budget.usd.or(record.budget_usd);
        check_budget(&record.model, tokens, usd, config)?;
        record.budget_tokens = tokens;
        record.budget_usd = usd;
        dir.save(&record).map_err(|e| {
            CliError::Failed(format!(
                "cannot update task.json: {}",
                crate::exit::describe_io(&e)
            ))
        })?;
    }
    if !record.workdir.is_dir() {
        return Err(CliError::Usage(format!(
            "task {id}: its worktree {} is gone",
            record.workdir.display()
        )));
    }
    resolve_model(Some(&record.model), config, env)?;
    let resume = Resume::after(&Progress::of(&events));
    Ok(Reopened::Resumable(
        Box::new(Prepared {
            record,
            dir,
            config: config.clone(),
        }),
        resume,
    ))
}

/// Picks the model (flag, then config/`KUGETSU_MODEL`) and checks its provider can be used.
fn resolve_model(
    flag: Option<&str>,
    config: &Config,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<ModelRef, CliError> {
    let text = flag.or(config.model.as_deref()).ok_or_else(|| {
        CliError::Usage(
            "no model set: pass -m PROVIDER/MODEL (e.g. -m openai/gpt-4.1-mini), set KUGETSU_MODEL, \
             or put model = \"PROVIDER/MODEL\" in the config file"
                .to_owned(),
        )
    })?;
    let mut model: ModelRef = text
        .parse()
        .map_err(|e: kugetsu_protocol::ModelError| CliError::Usage(e.to_string()))?;
    if let Some(key) = model.provider.api_key_env()
        && env(key).is_none_or(|v| v.trim().is_empty())
    {
        return Err(CliError::Usage(format!(
            "{key} is not set; model {model} needs it (export {key}=...)"
        )));
    }
    if model.provider == ProviderKind::Scripted
        && !kugetsu_protocol::demo::is_builtin_script(&model.model)
    {
        // The worker runs in the worktree: pin the script's path to where the user stands.
        let path = std::path::absolute(&model.model)
            .map_err(|e| CliError::Usage(format!("script {}: {e}", model.model)))?;
        if !path.is_file() {
            return Err(CliError::Usage(format!(
                "script {} does not exist (model {model})",
                path.display()
            )));
        }
        model.model = path.display().to_string();
    }
    Ok(model)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The monotonic instant at wall-clock time `unix_ms_at` (now, if that is past).
pub fn instant_at(unix_ms_at: u64) -> tokio::time::Instant {
    let now = unix_ms(SystemTime::now());
    tokio::time::Instant::now() + Duration::from_millis(unix_ms_at.saturating_sub(now))
}

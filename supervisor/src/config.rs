//! Configuration: the TOML file, `KUGETSU_<KEY>` overrides, and the state directory.
//!
//! Precedence, highest first: command-line flags, `KUGETSU_<KEY>` environment variables, the
//! config file (`--config`, else `$XDG_CONFIG_HOME/kugetsu/config.toml`), built-in defaults.

use std::path::{Path, PathBuf};

use kugetsu_protocol::{NetworkMode, SandboxMode};
use serde::Deserialize;

use crate::exit::CliError;

/// Default number of shadows running at once.
pub const DEFAULT_MAX_SHADOWS: u32 = 20;
/// Default queue capacity.
pub const DEFAULT_QUEUE_CAPACITY: u32 = 1000;
/// Default per-shadow memory limit: 512 MiB.
pub const DEFAULT_MEM_LIMIT: u64 = 512 * 1024 * 1024;
/// Smallest `mem_limit` accepted: a worker alone needs some tens of MiB.
pub const MIN_MEM_LIMIT: u64 = 16 * 1024 * 1024;
/// Largest `mem_limit` accepted: 1 PiB, more than any single host has. Limits between the
/// host's memory and this are accepted, and such a task waits with the reason shown in `ps`
/// and `show` (a config may be shared by hosts of different sizes).
pub const MAX_MEM_LIMIT: u64 = 1 << 50;
/// Default restarts allowed within the restart window.
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
/// Default turn budget of a task.
pub const DEFAULT_MAX_TURNS: u32 = 100;
/// Default `stream_timeout`: how long a model response may go without a content byte.
pub const DEFAULT_STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Shortest `stream_timeout` accepted.
pub const MIN_STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest `stream_timeout` accepted (a local model may take long over a big prompt, but not
/// a day).
pub const MAX_STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The settings in effect.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the settings came from, for error messages.
    pub path: Option<PathBuf>,
    pub model: Option<String>,
    pub compaction_model: Option<String>,
    pub max_shadows: u32,
    pub queue_capacity: u32,
    pub mem_limit: u64,
    pub max_restarts: u32,
    pub max_turns: u32,
    pub context_window: Option<u64>,
    /// `stream_timeout`: how long a model response may go without a content byte (keep-alive
    /// comments and pings don't count) before the worker abandons the request and retries.
    pub stream_timeout: std::time::Duration,
    /// How long finished tasks' records and clean worktrees are kept (`None`: forever).
    pub task_retention: Option<std::time::Duration>,
    /// `sandbox`: whether shadows' tools are confined (see docs/sandbox.md).
    pub sandbox: SandboxMode,
    /// `network`: whether shadows' tools reach the network.
    pub network: NetworkMode,
    /// `pids_limit`: most processes one shadow may have (where cgroups allow).
    pub pids_limit: u64,
    /// `sandbox_read`, `sandbox_write`, `sandbox_deny` (boxed: rarely set, and a config is
    /// carried by every prepared task).
    pub sandbox_paths: Box<SandboxPaths>,
    /// `test_command`: what `kugetsu merge` runs on a merged result unless `--test` says
    /// otherwise (`None`: no test).
    pub test_command: Option<String>,
    /// `steer_on_conflict`: whether the conflict radar tells the later of two overlapping
    /// shadows about the other change.
    pub steer_on_conflict: bool,
    /// The governor, budgets and prices (boxed for the same reason).
    pub governance: Box<Governance>,
    /// `http`: the address the daemon serves its HTTP API on (`None`: no HTTP).
    pub http: Option<String>,
    /// `[mcp.NAME]`: the MCP servers shadows may use, by name (boxed: rarely set).
    pub mcp: Box<std::collections::BTreeMap<String, kugetsu_protocol::McpServer>>,
    /// `cluster` and its companions: this daemon is a node of a fleet on one PostgreSQL
    /// (`None`: a single-box daemon, and nothing of the cluster is loaded).
    pub cluster: Option<Box<ClusterConfig>>,
}

/// `cluster = "postgres://..."`, `node_id`, `lease_ttl`, `checkpoint_remote`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The PostgreSQL connection string (may hold a password: never logged whole).
    pub url: String,
    /// This node's name in the cluster (default: the host name).
    pub node_id: String,
    /// How long a claim holds without a renewal (default 30 s).
    pub lease_ttl: std::time::Duration,
    /// A git remote every node reaches (a path or URL) for checkpoints (`None`: no
    /// checkpoints; a task taken over starts from its base commit with its journal).
    pub checkpoint_remote: Option<String>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("url", &redact_url(&self.url))
            .field("node_id", &self.node_id)
            .field("lease_ttl", &self.lease_ttl)
            .field("checkpoint_remote", &self.checkpoint_remote)
            .finish()
    }
}

/// Default `lease_ttl`.
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Shortest `lease_ttl`: renewals run three times per lease, and a database round trip must fit.
pub const MIN_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(3);

/// A connection string with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    // postgres://user:password@host/db -> postgres://user:***@host/db
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((auth, host)) = rest.rsplit_once('@')
        && let Some((user, _)) = auth.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    // key=value form: password=...
    url.split_whitespace()
        .map(|part| {
            if part.to_ascii_lowercase().starts_with("password=") {
                "password=***".to_owned()
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses `lease_ttl`.
pub fn parse_lease_ttl(text: &str) -> Result<std::time::Duration, String> {
    let ttl = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}; e.g. 30s, 1m)"))?;
    if ttl < MIN_LEASE_TTL {
        return Err(format!(
            "{text:?} is too short: a lease is renewed three times per lease_ttl (at least {})",
            humantime::format_duration(MIN_LEASE_TTL)
        ));
    }
    Ok(ttl)
}

/// Checks a node id: what `ps` shows and what a lease names.
pub fn check_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("node_id {id:?} must be 1 to 64 characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "node_id {id:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// This host's name, the default `node_id`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| check_node_id(h).is_ok())
        .unwrap_or_else(|| "node".to_owned())
}

/// Default `timeout` of an MCP server's tool call.
pub const DEFAULT_MCP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Default `startup_timeout` of an MCP server (start, `initialize`, `tools/list`).
pub const DEFAULT_MCP_STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One `[mcp.NAME]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct McpFile {
    command: Option<String>,
    args: Option<Vec<String>>,
    env: Option<std::collections::BTreeMap<String, String>>,
    url: Option<String>,
    timeout: Option<String>,
    startup_timeout: Option<String>,
}

/// Checks `[mcp.NAME]` tables and turns them into servers, naming the key at fault.
fn mcp_servers(
    file: std::collections::BTreeMap<String, McpFile>,
) -> Result<std::collections::BTreeMap<String, kugetsu_protocol::McpServer>, String> {
    use kugetsu_protocol::McpTransport;
    let mut servers = std::collections::BTreeMap::new();
    for (name, table) in file {
        kugetsu_protocol::mcp::valid_server_name(&name)
            .map_err(|e| format!("mcp.{name}: the name {e}"))?;
        if name == "none" {
            return Err("mcp.none: `none` is reserved (`--mcp none` means no server)".to_owned());
        }
        let transport = match (table.command, table.url) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "mcp.{name}: set either `command` (a stdio server) or `url` (streamable \
                     HTTP), not both"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "mcp.{name}: set `command` (a stdio server) or `url` (streamable HTTP)"
                ));
            }
            (Some(command), None) => {
                if command.trim().is_empty() {
                    return Err(format!("mcp.{name}.command is empty"));
                }
                McpTransport::Stdio {
                    command,
                    args: table.args.unwrap_or_default(),
                    env: table.env.unwrap_or_default(),
                }
            }
            (None, Some(url)) => {
                if table.args.is_some() || table.env.is_some() {
                    return Err(format!(
                        "mcp.{name}: `args` and `env` are for a `command`, not a `url`"
                    ));
                }
                let rest = url
                    .trim()
                    .strip_prefix("http://")
                    .or_else(|| url.trim().strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                    return Err(format!(
                        "mcp.{name}.url: {url:?} must be an http:// or https:// URL with a host"
                    ));
                }
                McpTransport::Http {
                    url: url.trim().to_owned(),
                }
            }
        };
        let duration = |key: &str, text: Option<String>, default: std::time::Duration| {
            let Some(text) = text else {
                return Ok(default);
            };
            let value = humantime::parse_duration(text.trim()).map_err(|e| {
                format!("mcp.{name}.{key}: {text:?} is not a duration ({e}; e.g. 60s, 5m)")
            })?;
            if value < std::time::Duration::from_millis(100) || value > MAX_STREAM_TIMEOUT {
                return Err(format!(
                    "mcp.{name}.{key}: {text:?} is refused (between 100ms and 24h)"
                ));
            }
            Ok(value)
        };
        let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let call_timeout = duration("timeout", table.timeout, DEFAULT_MCP_TIMEOUT)?;
        let startup_timeout = duration(
            "startup_timeout",
            table.startup_timeout,
            DEFAULT_MCP_STARTUP_TIMEOUT,
        )?;
        servers.insert(
            name.clone(),
            kugetsu_protocol::McpServer {
                name,
                transport,
                call_timeout_ms: millis(call_timeout),
                startup_timeout_ms: millis(startup_timeout),
            },
        );
    }
    Ok(servers)
}

/// `governor`, `[rate_limits.PROVIDER]`, `[prices."PROVIDER/MODEL"]` and the budgets.
#[derive(Debug, Clone, PartialEq)]
pub struct Governance {
    /// `governor`: whether model requests wait for permits (rate limits shared per account).
    pub enabled: bool,
    /// `[rate_limits.PROVIDER]`: limits the provider's headers may lower but never raise.
    pub rate_limits: std::collections::BTreeMap<String, RateLimit>,
    /// `[prices."PROVIDER/MODEL"]`: prices over the built-in table.
    pub prices: std::collections::BTreeMap<String, kugetsu_protocol::Price>,
    /// `budget_tokens`, `budget_usd`: each task's default budget.
    pub budget_tokens: Option<u64>,
    pub budget_usd: Option<f64>,
    /// `daily_budget_tokens`, `daily_budget_usd`: what the daemon's shadows may spend per UTC day.
    pub daily_budget_tokens: Option<u64>,
    pub daily_budget_usd: Option<f64>,
}

impl Default for Governance {
    fn default() -> Governance {
        Governance {
            enabled: true,
            rate_limits: Default::default(),
            prices: Default::default(),
            budget_tokens: None,
            budget_usd: None,
            daily_budget_tokens: None,
            daily_budget_usd: None,
        }
    }
}

impl Governance {
    /// The price of `model`: the config's entry, else the built-in one.
    pub fn price(&self, model: &str) -> Option<kugetsu_protocol::Price> {
        self.prices.get(model).copied().or_else(|| {
            let model: kugetsu_protocol::ModelRef = model.parse().ok()?;
            kugetsu_protocol::price::built_in(&model)
        })
    }
}

/// One provider's configured limits, per minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

/// Paths the config adds to the sandbox's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxPaths {
    /// `sandbox_read`: more paths tools may read.
    pub read: Vec<PathBuf>,
    /// `sandbox_write`: more paths tools may write.
    pub write: Vec<PathBuf>,
    /// `sandbox_deny`: more paths tools may not read.
    pub deny: Vec<PathBuf>,
}

/// Default `pids_limit`.
pub const DEFAULT_PIDS_LIMIT: u64 = 512;

/// Default retention of finished tasks: 30 days.
pub const DEFAULT_TASK_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);

/// The file's shape: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    model: Option<String>,
    compaction_model: Option<String>,
    max_shadows: Option<u32>,
    queue_capacity: Option<u32>,
    mem_limit: Option<SizeValue>,
    max_restarts: Option<u32>,
    max_turns: Option<u32>,
    context_window: Option<u64>,
    stream_timeout: Option<String>,
    task_retention: Option<String>,
    sandbox: Option<String>,
    network: Option<NetworkValue>,
    pids_limit: Option<u64>,
    sandbox_read: Option<Vec<PathBuf>>,
    sandbox_write: Option<Vec<PathBuf>>,
    sandbox_deny: Option<Vec<PathBuf>>,
    governor: Option<bool>,
    rate_limits: Option<std::collections::BTreeMap<String, RateLimit>>,
    prices: Option<std::collections::BTreeMap<String, kugetsu_protocol::Price>>,
    budget_tokens: Option<u64>,
    budget_usd: Option<f64>,
    daily_budget_tokens: Option<u64>,
    daily_budget_usd: Option<f64>,
    test_command: Option<String>,
    steer_on_conflict: Option<bool>,
    http: Option<String>,
    mcp: Option<std::collections::BTreeMap<String, McpFile>>,
    cluster: Option<String>,
    node_id: Option<String>,
    lease_ttl: Option<String>,
    checkpoint_remote: Option<String>,
}

/// `network` written as `"on"`/`"off"` or a boolean.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NetworkValue {
    Bool(bool),
    Text(String),
}

/// A size written as a number of bytes or a string such as "512MiB".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl Config {
    /// Loads the config from `explicit` (which must exist) or the default location (which may
    /// not), then applies `KUGETSU_*` variables read through `env`.
    pub fn load(
        explicit: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, CliError> {
        let (path, file) = match explicit {
            Some(path) => (Some(path.to_owned()), Some(read_file(path)?)),
            None => match default_path(env) {
                Some(path) if path.exists() => {
                    let file = read_file(&path)?;
                    (Some(path), Some(file))
                }
                _ => (None, None),
            },
        };
        let file = file.unwrap_or_default();
        let origin = path
            .as_ref()
            .map_or_else(|| "config".to_owned(), |p| p.display().to_string());
        let mem_limit = match file.mem_limit {
            None => None,
            Some(SizeValue::Bytes(n)) => Some(
                check_mem_limit(n)
                    .map_err(|e| CliError::Usage(format!("{origin}: mem_limit: {e}")))?,
            ),
            Some(SizeValue::Text(t)) => Some(
                parse_mem_limit(&t)
                    .map_err(|e| CliError::Usage(format!("{origin}: mem_limit: {e}")))?,
            ),
        };
        let sandbox = match &file.sandbox {
            None => SandboxMode::default(),
            Some(text) => text
                .parse()
                .map_err(|e| CliError::Usage(format!("{origin}: {e}")))?,
        };
        let network = match &file.network {
            None => NetworkMode::default(),
            Some(NetworkValue::Bool(true)) => NetworkMode::On,
            Some(NetworkValue::Bool(false)) => NetworkMode::Off,
            Some(NetworkValue::Text(text)) => text
                .parse()
                .map_err(|e| CliError::Usage(format!("{origin}: {e}")))?,
        };
        let governance = Governance {
            enabled: file.governor.unwrap_or(true),
            rate_limits: file.rate_limits.unwrap_or_default(),
            prices: file.prices.unwrap_or_default(),
            budget_tokens: file.budget_tokens,
            budget_usd: file.budget_usd,
            daily_budget_tokens: file.daily_budget_tokens,
            daily_budget_usd: file.daily_budget_usd,
        };
        validate_governance(&governance).map_err(|e| CliError::Usage(format!("{origin}: {e}")))?;
        let mcp = mcp_servers(file.mcp.unwrap_or_default())
            .map_err(|e| CliError::Usage(format!("{origin}: {e}")))?;
        let lease_ttl = match &file.lease_ttl {
            None => DEFAULT_LEASE_TTL,
            Some(text) => parse_lease_ttl(text)
                .map_err(|e| CliError::Usage(format!("{origin}: lease_ttl: {e}")))?,
        };
        if let Some(id) = &file.node_id {
            check_node_id(id).map_err(|e| CliError::Usage(format!("{origin}: {e}")))?;
        }
        // Built even without `cluster`, so that KUGETSU_CLUSTER finds the file's companions;
        // dropped below unless a connection string is set.
        let cluster = Some(Box::new(ClusterConfig {
            url: file.cluster.unwrap_or_default().trim().to_owned(),
            node_id: file.node_id.clone().unwrap_or_else(host_name),
            lease_ttl,
            checkpoint_remote: file.checkpoint_remote.filter(|r| !r.trim().is_empty()),
        }));
        let mut config = Config {
            cluster,
            mcp: Box::new(mcp),
            path,
            governance: Box::new(governance),
            sandbox,
            network,
            pids_limit: file.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT),
            sandbox_paths: Box::new(SandboxPaths {
                read: file.sandbox_read.unwrap_or_default(),
                write: file.sandbox_write.unwrap_or_default(),
                deny: file.sandbox_deny.unwrap_or_default(),
            }),
            model: file.model,
            compaction_model: file.compaction_model,
            max_shadows: file.max_shadows.unwrap_or(DEFAULT_MAX_SHADOWS),
            queue_capacity: file.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY),
            mem_limit: mem_limit.unwrap_or(DEFAULT_MEM_LIMIT),
            max_restarts: file.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS),
            max_turns: file.max_turns.unwrap_or(DEFAULT_MAX_TURNS),
            context_window: file.context_window,
            stream_timeout: match &file.stream_timeout {
                None => DEFAULT_STREAM_TIMEOUT,
                Some(text) => parse_stream_timeout(text)
                    .map_err(|e| CliError::Usage(format!("{origin}: stream_timeout: {e}")))?,
            },
            test_command: file.test_command.filter(|c| !c.trim().is_empty()),
            steer_on_conflict: file.steer_on_conflict.unwrap_or(false),
            http: file.http.filter(|a| !a.trim().is_empty()),
            task_retention: match &file.task_retention {
                None => Some(DEFAULT_TASK_RETENTION),
                Some(text) => parse_retention(text)
                    .map_err(|e| CliError::Usage(format!("{origin}: task_retention: {e}")))?,
            },
        };
        config
            .check_counts()
            .map_err(|e| CliError::Usage(format!("{origin}: {e}")))?;
        config.apply_env(env)?;
        if config.cluster.as_ref().is_some_and(|c| c.url.is_empty()) {
            config.cluster = None;
        }
        config.check_counts().map_err(CliError::Usage)?;
        Ok(config)
    }

    /// Refuses counts that would leave the daemon unable to do anything, naming the key.
    fn check_counts(&self) -> Result<(), String> {
        for (key, value, why) in [
            (
                "max_shadows",
                u64::from(self.max_shadows),
                "no task could ever run",
            ),
            (
                "queue_capacity",
                u64::from(self.queue_capacity),
                "every submission would be refused",
            ),
            (
                "max_turns",
                u64::from(self.max_turns),
                "no task could take a turn",
            ),
            ("pids_limit", self.pids_limit, "no tool could start"),
        ] {
            if value == 0 {
                return Err(format!("{key} = 0 is refused: {why} (at least 1)"));
            }
        }
        if let Some(window) = self.context_window
            && window < MIN_CONTEXT_WINDOW
        {
            return Err(format!(
                "context_window = {window} is refused: a prompt alone needs more (at least \
                 {MIN_CONTEXT_WINDOW} tokens)"
            ));
        }
        Ok(())
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), CliError> {
        let get = |key: &str| env(key).filter(|v| !v.trim().is_empty());
        fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, CliError> {
            value
                .trim()
                .parse()
                .map_err(|_| CliError::Usage(format!("{key}={value:?} is not a valid number")))
        }
        if let Some(v) = get("KUGETSU_MODEL") {
            self.model = Some(v);
        }
        if let Some(v) = get("KUGETSU_COMPACTION_MODEL") {
            self.compaction_model = Some(v);
        }
        if let Some(v) = get("KUGETSU_MAX_SHADOWS") {
            self.max_shadows = number("KUGETSU_MAX_SHADOWS", &v)?;
        }
        if let Some(v) = get("KUGETSU_QUEUE_CAPACITY") {
            self.queue_capacity = number("KUGETSU_QUEUE_CAPACITY", &v)?;
        }
        if let Some(v) = get("KUGETSU_MEM_LIMIT") {
            self.mem_limit = parse_mem_limit(&v)
                .map_err(|e| CliError::Usage(format!("KUGETSU_MEM_LIMIT={v:?}: {e}")))?;
        }
        if let Some(v) = get("KUGETSU_MAX_RESTARTS") {
            self.max_restarts = number("KUGETSU_MAX_RESTARTS", &v)?;
        }
        if let Some(v) = get("KUGETSU_MAX_TURNS") {
            self.max_turns = number("KUGETSU_MAX_TURNS", &v)?;
        }
        if let Some(v) = get("KUGETSU_CONTEXT_WINDOW") {
            self.context_window = Some(number("KUGETSU_CONTEXT_WINDOW", &v)?);
        }
        if let Some(v) = get("KUGETSU_STREAM_TIMEOUT") {
            self.stream_timeout = parse_stream_timeout(&v)
                .map_err(|e| CliError::Usage(format!("KUGETSU_STREAM_TIMEOUT={v:?}: {e}")))?;
        }
        if let Some(v) = get("KUGETSU_SANDBOX") {
            self.sandbox = v
                .parse()
                .map_err(|e| CliError::Usage(format!("KUGETSU_SANDBOX: {e}")))?;
        }
        if let Some(v) = get("KUGETSU_NETWORK") {
            self.network = v
                .parse()
                .map_err(|e| CliError::Usage(format!("KUGETSU_NETWORK: {e}")))?;
        }
        if let Some(v) = get("KUGETSU_PIDS_LIMIT") {
            self.pids_limit = number("KUGETSU_PIDS_LIMIT", &v)?;
        }
        // Lists of paths: colon-separated, like PATH.
        let paths = |v: &str| std::env::split_paths(v).collect::<Vec<_>>();
        if let Some(v) = get("KUGETSU_SANDBOX_READ") {
            self.sandbox_paths.read = paths(&v);
        }
        if let Some(v) = get("KUGETSU_SANDBOX_WRITE") {
            self.sandbox_paths.write = paths(&v);
        }
        if let Some(v) = get("KUGETSU_SANDBOX_DENY") {
            self.sandbox_paths.deny = paths(&v);
        }
        if let Some(v) = get("KUGETSU_GOVERNOR") {
            self.governance.enabled = match v.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "1" | "yes" => true,
                "off" | "false" | "0" | "no" => false,
                _ => {
                    return Err(CliError::Usage(format!(
                        "KUGETSU_GOVERNOR={v:?}: expected on or off"
                    )));
                }
            };
        }
        if let Some(v) = get("KUGETSU_CLUSTER")
            && let Some(cluster) = &mut self.cluster
        {
            cluster.url = v.trim().to_owned();
        }
        if let Some(v) = get("KUGETSU_NODE_ID") {
            let v = v.trim().to_owned();
            check_node_id(&v).map_err(|e| CliError::Usage(format!("KUGETSU_NODE_ID: {e}")))?;
            if let Some(cluster) = &mut self.cluster {
                cluster.node_id = v;
            }
        }
        if let Some(v) = get("KUGETSU_LEASE_TTL") {
            let ttl = parse_lease_ttl(&v)
                .map_err(|e| CliError::Usage(format!("KUGETSU_LEASE_TTL: {e}")))?;
            if let Some(cluster) = &mut self.cluster {
                cluster.lease_ttl = ttl;
            }
        }
        if let Some(v) = get("KUGETSU_CHECKPOINT_REMOTE")
            && let Some(cluster) = &mut self.cluster
        {
            cluster.checkpoint_remote = Some(v.trim().to_owned());
        }
        if let Some(v) = get("KUGETSU_HTTP") {
            self.http = Some(v.trim().to_owned());
        }
        if let Some(v) = get("KUGETSU_TEST_COMMAND") {
            self.test_command = Some(v);
        }
        if let Some(v) = get("KUGETSU_STEER_ON_CONFLICT") {
            self.steer_on_conflict = match v.trim() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                other => {
                    return Err(CliError::Usage(format!(
                        "KUGETSU_STEER_ON_CONFLICT={other:?} is not true or false"
                    )));
                }
            };
        }
        if let Some(v) = get("KUGETSU_BUDGET_TOKENS") {
            self.governance.budget_tokens = Some(number("KUGETSU_BUDGET_TOKENS", &v)?);
        }
        if let Some(v) = get("KUGETSU_BUDGET_USD") {
            self.governance.budget_usd = Some(number("KUGETSU_BUDGET_USD", &v)?);
        }
        if let Some(v) = get("KUGETSU_DAILY_BUDGET_TOKENS") {
            self.governance.daily_budget_tokens = Some(number("KUGETSU_DAILY_BUDGET_TOKENS", &v)?);
        }
        if let Some(v) = get("KUGETSU_DAILY_BUDGET_USD") {
            self.governance.daily_budget_usd = Some(number("KUGETSU_DAILY_BUDGET_USD", &v)?);
        }
        validate_governance(&self.governance).map_err(CliError::Usage)?;
        if let Some(v) = get("KUGETSU_TASK_RETENTION") {
            self.task_retention = parse_retention(&v)
                .map_err(|e| CliError::Usage(format!("KUGETSU_TASK_RETENTION={v:?}: {e}")))?;
        }
        Ok(())
    }

    /// What differs from `new`, one `key old -> new` per changed setting (for reload logs).
    pub fn changes_to(&self, new: &Config) -> Vec<String> {
        let mut changes = Vec::new();
        macro_rules! diff {
            ($($field:ident),*) => {$(
                if self.$field != new.$field {
                    changes.push(format!(
                        "{} {:?} -> {:?}",
                        stringify!($field),
                        self.$field,
                        new.$field
                    ));
                }
            )*};
        }
        diff!(
            max_shadows,
            queue_capacity,
            mem_limit,
            max_restarts,
            max_turns,
            model,
            compaction_model,
            context_window,
            stream_timeout,
            task_retention,
            test_command,
            steer_on_conflict,
            governance
        );
        // Names only: a server's `env` may hold a token, and this goes to the log.
        if self.mcp != new.mcp {
            let names = |c: &Config| c.mcp.keys().cloned().collect::<Vec<_>>();
            changes.push(format!("mcp {:?} -> {:?}", names(self), names(new)));
        }
        changes
    }
}

/// Checks the governor's settings: known providers, positive limits, valid prices and budgets.
pub fn validate_governance(g: &Governance) -> Result<(), String> {
    for (provider, limit) in &g.rate_limits {
        if kugetsu_protocol::ProviderKind::from_name(provider).is_none() {
            return Err(format!(
                "rate_limits.{provider}: unknown provider (expected one of openai, anthropic, \
                 openrouter, ollama, scripted)"
            ));
        }
        for (key, value) in [("rpm", limit.rpm), ("tpm", limit.tpm)] {
            if value == Some(0) {
                return Err(format!(
                    "rate_limits.{provider}.{key} must be at least 1 (leave it out for no limit)"
                ));
            }
        }
    }
    for (model, price) in &g.prices {
        model
            .parse::<kugetsu_protocol::ModelRef>()
            .map_err(|e| format!("prices.{model:?}: {e}"))?;
        if let Some(problem) = price.invalid() {
            return Err(format!("prices.{model:?}: {problem}"));
        }
    }
    check_budgets("budget", g.budget_tokens, g.budget_usd)?;
    check_budgets("daily_budget", g.daily_budget_tokens, g.daily_budget_usd)
}

/// `<prefix>_tokens` must be at least 1 and `<prefix>_usd` a positive number of dollars.
pub fn check_budgets(prefix: &str, tokens: Option<u64>, usd: Option<f64>) -> Result<(), String> {
    if tokens == Some(0) {
        return Err(format!(
            "{prefix}_tokens must be at least 1 (leave it out for no budget)"
        ));
    }
    if let Some(usd) = usd
        && !(usd.is_finite() && usd > 0.0)
    {
        return Err(format!(
            "{prefix}_usd must be a positive number of dollars, not {usd}"
        ));
    }
    Ok(())
}

/// Parses a `stream_timeout` such as `120s`, `2m`, `500ms`, within
/// [`MIN_STREAM_TIMEOUT`]..=[`MAX_STREAM_TIMEOUT`].
pub fn parse_stream_timeout(text: &str) -> Result<std::time::Duration, String> {
    let timeout = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}; e.g. 120s, 5m, 500ms)"))?;
    if timeout < MIN_STREAM_TIMEOUT {
        return Err(format!(
            "{text:?} is too short: a stream may pause longer than that between tokens (at \
             least {})",
            humantime::format_duration(MIN_STREAM_TIMEOUT)
        ));
    }
    if timeout > MAX_STREAM_TIMEOUT {
        return Err(format!(
            "{text:?} is too long: a stalled request would hold its shadow that long (at most \
             {})",
            humantime::format_duration(MAX_STREAM_TIMEOUT)
        ));
    }
    Ok(timeout)
}

/// Parses a retention such as `30d`, `12h`, `90m`; `off` (or `0`) keeps tasks forever.
pub fn parse_retention(text: &str) -> Result<Option<std::time::Duration>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") || t == "0" {
        return Ok(None);
    }
    humantime::parse_duration(t)
        .map(Some)
        .map_err(|e| format!("{text:?} is not a duration ({e}; e.g. 30d, 12h, or off)"))
}

fn read_file(path: &Path) -> Result<FileConfig, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let place = e
            .span()
            .map(|span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let source = text.lines().nth(line - 1).unwrap_or("").trim();
                format!(" line {line} (`{source}`):")
            })
            .unwrap_or_else(|| ":".to_owned());
        CliError::Usage(format!("config {}{place} {}", path.display(), e.message()))
    })
}

/// `$XDG_CONFIG_HOME/kugetsu/config.toml`, else `~/.config/kugetsu/config.toml`.
pub fn default_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("kugetsu").join("config.toml"))
}

/// The state directory: `--state-dir`, `$KUGETSU_STATE_DIR`, `$STATE_DIRECTORY` (systemd),
/// `$XDG_STATE_HOME/kugetsu`, `~/.local/state/kugetsu`.
pub fn state_dir(
    flag: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, CliError> {
    let nonempty = |key: &str| env(key).filter(|v| !v.is_empty());
    let dir = if let Some(flag) = flag {
        flag.to_owned()
    } else if let Some(dir) = nonempty("KUGETSU_STATE_DIR") {
        PathBuf::from(dir)
    } else if let Some(dirs) = nonempty("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; the first is ours.
        PathBuf::from(dirs.split(':').next().unwrap_or(&dirs))
    } else if let Some(xdg) = nonempty("XDG_STATE_HOME") {
        Path::new(&xdg).join("kugetsu")
    } else if let Some(home) = nonempty("HOME") {
        Path::new(&home).join(".local/state/kugetsu")
    } else {
        return Err(CliError::Usage(
            "no state directory: pass --state-dir or set KUGETSU_STATE_DIR".to_owned(),
        ));
    };
    std::path::absolute(&dir)
        .map_err(|e| CliError::Usage(format!("state directory {}: {e}", dir.display())))
}

/// Where the daemon's socket is: `--socket`, else `$KUGETSU_SOCKET`, else
/// `$XDG_RUNTIME_DIR/kugetsu/kugetsu.sock`, else `<state_dir>/kugetsu.sock`.
pub fn socket_path(
    flag: Option<&Path>,
    state_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> PathBuf {
    let nonempty = |key: &str| env(key).filter(|v| !v.is_empty());
    if let Some(flag) = flag {
        flag.to_owned()
    } else if let Some(path) = nonempty("KUGETSU_SOCKET") {
        PathBuf::from(path)
    } else if let Some(runtime) = nonempty("XDG_RUNTIME_DIR") {
        Path::new(&runtime).join("kugetsu").join("kugetsu.sock")
    } else {
        state_dir.join("kugetsu.sock")
    }
}

/// Smallest `context_window` accepted, in tokens.
pub const MIN_CONTEXT_WINDOW: u64 = 1024;

/// Parses a `mem_limit` (a size, see [`parse_size`]) within
/// [`MIN_MEM_LIMIT`]..=[`MAX_MEM_LIMIT`].
pub fn parse_mem_limit(text: &str) -> Result<u64, String> {
    check_mem_limit(parse_size(text)?)
}

/// Checks a `mem_limit` in bytes against [`MIN_MEM_LIMIT`]..=[`MAX_MEM_LIMIT`].
pub fn check_mem_limit(bytes: u64) -> Result<u64, String> {
    if bytes < MIN_MEM_LIMIT {
        return Err(format!(
            "{bytes} bytes is too small: a worker alone needs more (at least {} MiB)",
            MIN_MEM_LIMIT >> 20
        ));
    }
    if bytes > MAX_MEM_LIMIT {
        return Err(format!(
            "{bytes} bytes is more than any host has (at most {} TiB)",
            MAX_MEM_LIMIT >> 40
        ));
    }
    Ok(bytes)
}

/// Parses a size such as `512MiB`, `512M`, `1.5G`, `1GiB`, `4096` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512MiB, 2G, 1048576)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    let bytes = number * multiplier as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{text:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_keys_come_from_the_file_and_the_environment_and_bad_ones_are_refused() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let none = |_: &str| None;
        // Without `cluster`, the companions are inert.
        std::fs::write(&path, "node_id = \"box-1\"\nlease_ttl = \"10s\"\n").unwrap();
        assert!(Config::load(Some(&path), &none).unwrap().cluster.is_none());
        // KUGETSU_CLUSTER turns them on.
        let env = |k: &str| (k == "KUGETSU_CLUSTER").then(|| "postgres://db/k".to_owned());
        let cluster = Config::load(Some(&path), &env).unwrap().cluster.unwrap();
        assert_eq!(cluster.url, "postgres://db/k");
        assert_eq!(cluster.node_id, "box-1");
        assert_eq!(cluster.lease_ttl, Duration::from_secs(10));
        assert_eq!(cluster.checkpoint_remote, None);
        std::fs::write(
            &path,
            "cluster = \"postgres://u:pw@db/k\"\ncheckpoint_remote = \"/srv/c.git\"\n",
        )
        .unwrap();
        let cluster = Config::load(Some(&path), &none).unwrap().cluster.unwrap();
        assert_eq!(cluster.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(cluster.checkpoint_remote.as_deref(), Some("/srv/c.git"));
        assert!(check_node_id(&cluster.node_id).is_ok());
        // The password never shows.
        assert!(!format!("{cluster:?}").contains("pw"));
        assert_eq!(redact_url("postgres://u:pw@db/k"), "postgres://u:***@db/k");
        assert_eq!(
            redact_url("host=db password=pw user=u"),
            "host=db password=*** user=u"
        );
        let env = |k: &str| match k {
            "KUGETSU_NODE_ID" => Some("box-2".to_owned()),
            "KUGETSU_LEASE_TTL" => Some("5s".to_owned()),
            _ => None,
        };
        let cluster = Config::load(Some(&path), &env).unwrap().cluster.unwrap();
        assert_eq!(cluster.node_id, "box-2");
        assert_eq!(cluster.lease_ttl, Duration::from_secs(5));
        for (file, why) in [
            ("lease_ttl = \"1s\"", "too short"),
            ("lease_ttl = \"soon\"", "not a duration"),
            ("node_id = \"a b\"", "may hold only"),
            ("node_id = \"\"", "1 to 64"),
        ] {
            std::fs::write(&path, format!("cluster = \"postgres://db/k\"\n{file}\n")).unwrap();
            let Err(CliError::Usage(message)) = Config::load(Some(&path), &none) else {
                panic!("{file} was accepted");
            };
            assert!(message.contains(why), "{file}: {message}");
        }
        let env = |k: &str| (k == "KUGETSU_NODE_ID").then(|| "no/slash".to_owned());
        assert!(Config::load(Some(Path::new("/dev/null")), &env).is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn stream_timeouts_parse_and_absurd_ones_are_refused() {
        use std::time::Duration;
        assert_eq!(parse_stream_timeout("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_stream_timeout(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(
            parse_stream_timeout("500ms"),
            Ok(Duration::from_millis(500))
        );
        for (bad, why) in [
            ("soon", "is not a duration"),
            ("120", "is not a duration"),
            ("0s", "too short"),
            ("10ms", "too short"),
            ("30d", "too long"),
        ] {
            let error = parse_stream_timeout(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        let none = |_: &str| None;
        let config = Config::load(Some(Path::new("/dev/null")), &none).unwrap();
        assert_eq!(config.stream_timeout, DEFAULT_STREAM_TIMEOUT);
        let env = |k: &str| (k == "KUGETSU_STREAM_TIMEOUT").then(|| "1s".to_owned());
        let config = Config::load(Some(Path::new("/dev/null")), &env).unwrap();
        assert_eq!(config.stream_timeout, Duration::from_secs(1));
        let env = |k: &str| (k == "KUGETSU_STREAM_TIMEOUT").then(|| "0".to_owned());
        let error = Config::load(Some(Path::new("/dev/null")), &env).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("KUGETSU_STREAM_TIMEOUT=\"0\""),
            "{error}"
        );
    }

    #[test]
    fn mcp_servers_load_with_defaults_and_reloads_log_names_only() {
        let dir = std::env::temp_dir().join(format!("kugetsu-config-mcp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(
            &path,
            "[mcp.fs]\ncommand = \"node\"\nargs = [\"fs.js\", \"/\"]\nenv = { TOKEN = \"s3cret\" }\n\
             [mcp.web]\nurl = \"https://example.com/mcp\"\ntimeout = \"5s\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&path), &|_| None).unwrap();
        let fs = &config.mcp["fs"];
        assert_eq!(fs.call_timeout_ms, 60_000);
        assert_eq!(fs.startup_timeout_ms, 30_000);
        assert!(matches!(
            &fs.transport,
            kugetsu_protocol::McpTransport::Stdio { command, args, env }
                if command == "node" && args.len() == 2 && env["TOKEN"] == "s3cret"
        ));
        assert_eq!(config.mcp["web"].call_timeout_ms, 5_000);
        let without = Config::load(None, &|_| None).unwrap();
        let changes = without.changes_to(&config).join("\n");
        assert!(changes.contains(r#"mcp [] -> ["fs", "web"]"#), "{changes}");
        assert!(!changes.contains("s3cret"), "{changes}");
        for (text, key) in [
            ("[mcp.fs]\n", "mcp.fs: set `command`"),
            ("[mcp.none]\ncommand = \"x\"\n", "mcp.none"),
            ("[mcp.a]\nurl = \"ftp://h\"\n", "mcp.a.url"),
            (
                "[mcp.a]\nurl = \"http://h\"\nenv = {}\n",
                "mcp.a: `args` and `env`",
            ),
            (
                "[mcp.a]\ncommand = \"x\"\nstartup_timeout = \"1ms\"\n",
                "mcp.a.startup_timeout",
            ),
            ("[mcp.a]\ncommand = \"x\"\nport = 3\n", "port"),
        ] {
            std::fs::write(&path, text).unwrap();
            let Err(CliError::Usage(message)) = Config::load(Some(&path), &|_| None) else {
                panic!("{text} was accepted");
            };
            assert!(message.contains(key), "{text}: {message}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn absurd_values_are_refused_with_the_key_named() {
        assert_eq!(parse_mem_limit("512MiB"), Ok(512 << 20));
        assert_eq!(parse_mem_limit("64TiB"), Ok(64 << 40));
        for bad in [
            "18446744073709551615",
            "18446744073709551614",
            "2048TiB",
            "1k",
            "1",
        ] {
            assert!(parse_mem_limit(bad).is_err(), "{bad}");
        }
        assert!(
            check_mem_limit(u64::MAX)
                .unwrap_err()
                .contains("more than any host")
        );
        let dir =
            std::env::temp_dir().join(format!("kugetsu-config-absurd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        for (text, key) in [
            ("max_shadows = 0\n", "max_shadows"),
            ("queue_capacity = 0\n", "queue_capacity"),
            ("max_turns = 0\n", "max_turns"),
            ("pids_limit = 0\n", "pids_limit"),
            ("context_window = 3\n", "context_window"),
            ("mem_limit = 9223372036854775807\n", "mem_limit"),
            ("mem_limit = \"18446744073709551615\"\n", "mem_limit"),
            ("mem_limit = 1\n", "mem_limit"),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = Config::load(Some(&path), &|_| None)
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{text}: {error}");
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
        std::fs::write(&path, "").unwrap();
        for (var, key) in [
            ("KUGETSU_MAX_SHADOWS", "max_shadows"),
            ("KUGETSU_QUEUE_CAPACITY", "queue_capacity"),
            ("KUGETSU_MAX_TURNS", "max_turns"),
        ] {
            let env = |k: &str| (k == var).then(|| "0".to_owned());
            let error = Config::load(Some(&path), &env).unwrap_err().to_string();
            assert!(error.contains(key), "{var}: {error}");
        }
        let env = |k: &str| (k == "KUGETSU_MEM_LIMIT").then(|| "99999TiB".to_owned());
        let error = Config::load(Some(&path), &env).unwrap_err().to_string();
        assert!(error.contains("KUGETSU_MEM_LIMIT"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_overrides_file_and_bad_values_are_rejected() {
        let dir = std::env::temp_dir().join(format!("kugetsu-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(
            &path,
            "model = \"openai/a\"\nmax_shadows = 3\nmem_limit = \"1GiB\"\n",
        )
        .unwrap();
        let env = |k: &str| (k == "KUGETSU_MAX_SHADOWS").then(|| "4".to_owned());
        let config = Config::load(Some(&path), &env).unwrap();
        assert_eq!(config.max_shadows, 4);
        assert_eq!(config.model.as_deref(), Some("openai/a"));
        assert_eq!(config.mem_limit, 1 << 30);

        std::fs::write(&path, "max_shadow = 3\n").unwrap();
        let err = Config::load(Some(&path), &|_| None).unwrap_err();
        assert!(err.to_string().contains("max_shadow"), "{err}");
        let bad = |k: &str| (k == "KUGETSU_MAX_SHADOWS").then(|| "many".to_owned());
        std::fs::write(&path, "").unwrap();
        assert!(Config::load(Some(&path), &bad).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Property tests; `PROPTEST_CASES` sets the number of cases.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A TOML value of any shape a user might write.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                (0u64..5).prop_map(|n| n.to_string()),
                any::<bool>().prop_map(|b| b.to_string()),
                "[0-9]{0,22}(\\.[0-9]{0,3})?( ?[kKmMgGtTpP]i?[bB]?)?"
                    .prop_map(|t| format!("{t:?}")),
                "[0-9]{1,4}(ms|s|m|h|d)".prop_map(|t| format!("{t:?}")),
                "[ -~]{0,12}".prop_map(|t| format!("{t:?}")),
                Just("[1, \"a\"]".to_owned()),
                Just("{ rpm = 0 }".to_owned()),
            ]
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => prop::sample::select(vec![
                    "max_shadows", "queue_capacity", "mem_limit", "max_restarts", "max_turns",
                    "context_window", "stream_timeout", "task_retention", "sandbox", "network",
                    "pids_limit", "budget_tokens", "budget_usd", "daily_budget_usd", "governor",
                    "model", "test_command", "steer_on_conflict", "sandbox_read",
                ])
                .prop_map(str::to_owned),
                1 => "[a-z_]{1,12}",
            ]
        }

        fn load(text: &[u8]) -> Result<Config, CliError> {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("config.toml");
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path), &|_| None)
        }

        proptest! {
            /// Sizes never panic, and an accepted `mem_limit` is within its bounds.
            #[test]
            fn sizes_never_panic_and_limits_stay_in_bounds(text in "\\PC{0,24}") {
                let _ = parse_size(&text);
                let _ = parse_stream_timeout(&text);
                let _ = parse_retention(&text);
                if let Ok(limit) = parse_mem_limit(&text) {
                    prop_assert!((MIN_MEM_LIMIT..=MAX_MEM_LIMIT).contains(&limit));
                }
            }

            /// Any config of known and unknown keys loads or is refused with a message, and a
            /// config that loads holds only usable values.
            #[test]
            fn any_config_loads_usable_or_is_refused(
                lines in prop::collection::vec((key(), value()), 0..8),
            ) {
                let text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
                match load(text.as_bytes()) {
                    Ok(config) => {
                        prop_assert!(config.max_shadows >= 1);
                        prop_assert!(config.queue_capacity >= 1);
                        prop_assert!(config.max_turns >= 1);
                        prop_assert!(config.pids_limit >= 1);
                        prop_assert!((MIN_MEM_LIMIT..=MAX_MEM_LIMIT).contains(&config.mem_limit));
                        prop_assert!(config.stream_timeout >= MIN_STREAM_TIMEOUT);
                        prop_assert!(config.stream_timeout <= MAX_STREAM_TIMEOUT);
                    }
                    Err(e) => prop_assert!(!e.to_string().is_empty()),
                }
            }

            /// Arbitrary bytes as a config file never panic.
            #[test]
            fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
                let _ = load(&bytes);
            }
        }
    }
}

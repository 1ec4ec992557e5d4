//! The registry of a task's MCP servers: starting them, listing their tools, running calls,
//! and restarting a server that died.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, PaginatedRequestParams, Tool};
use rmcp::service::{RoleClient, RunningService, ServiceExt as _};
use rmcp::transport::async_rw::AsyncRwTransport;

use super::render;
use super::stdio::{self, ServerProcess};
use crate::conversation::ToolSpec;
use crate::tools::{ToolContext, ToolOutput};
use kugetsu_protocol::mcp::{self as names, McpServer, McpTransport};

/// Most tools taken from one server; the rest are left out (and logged).
const MAX_TOOLS: usize = 128;
/// Most `tools/list` pages read from one server.
const MAX_PAGES: usize = 16;
/// Longest tool description passed on to the model.
const MAX_DESCRIPTION: usize = 4 * 1024;
/// Longest input schema (serialized) passed on; a bigger one leaves the tool out.
const MAX_SCHEMA: usize = 32 * 1024;
/// Longest JSON-RPC line read from a stdio server (rmcp drops longer ones).
const MAX_LINE: usize = 16 * 1024 * 1024;
/// How often one server may be restarted after crashing or failing to start.
pub(crate) const MAX_RESTARTS: u32 = 3;

/// A task's MCP servers and the tools they offer the model. Built only for a task that uses
/// at least one server; dropping it kills every server process.
pub struct Registry {
    servers: Vec<Server>,
    /// What the model calls (`NAME__TOOL`) -> the server's index and the tool's own name.
    routes: HashMap<String, (usize, String)>,
    /// The tools as offered to the model, in the servers' order.
    specs: Vec<ToolSpec>,
}

/// One configured server and where it stands.
struct Server {
    spec: McpServer,
    state: State,
    /// Restarts so far, against [`MAX_RESTARTS`].
    restarts: u32,
}

enum State {
    /// Boxed: a connection is a few hundred bytes, a reason a pointer.
    Up(Box<Connection>),
    /// Not running, for the reason given; restarted at its next call while restarts remain.
    Down(String),
}

/// A live session with a server.
struct Connection {
    service: RunningService<RoleClient, ()>,
    /// The server's process (stdio); declared after `service` so the session ends first.
    process: Option<ServerProcess>,
}

impl Registry {
    /// Starts every server of `servers` and lists its tools; `None` when there are none (a
    /// task without MCP pays nothing). A server that fails to start is left down: its calls
    /// get tool errors naming it, and it is tried again at its next call.
    pub async fn start(servers: &[McpServer], ctx: &ToolContext) -> Option<Registry> {
        if servers.is_empty() {
            return None;
        }
        let mut tools = Registry {
            servers: Vec::with_capacity(servers.len()),
            routes: HashMap::new(),
            specs: Vec::new(),
        };
        for spec in servers {
            let index = tools.servers.len();
            let state = match connect(spec, ctx).await {
                Ok((connection, listed)) => {
                    tools.add_tools(index, &spec.name, listed);
                    State::Up(Box::new(connection))
                }
                Err(reason) => {
                    eprintln!(
                        "kugetsu-worker: MCP server `{}` did not start: {reason}",
                        spec.name
                    );
                    State::Down(format!("it did not start: {reason}"))
                }
            };
            tools.servers.push(Server {
                spec: spec.clone(),
                state,
                restarts: 0,
            });
        }
        Some(tools)
    }

    /// The servers' tools as offered to the model.
    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    fn server_of(&self, name: &str) -> Option<usize> {
        let (server, _) = name.split_once(names::SEPARATOR)?;
        self.servers.iter().position(|s| s.spec.name == server)
    }

    fn add_tools(&mut self, index: usize, server: &str, listed: Vec<Tool>) {
        for tool in listed {
            let Some(name) = names::tool_name(server, &tool.name) else {
                eprintln!(
                    "kugetsu-worker: MCP server `{server}`: tool `{}` left out: `{server}{}{}` \
                     would pass the {} characters providers accept",
                    tool.name,
                    names::SEPARATOR,
                    tool.name,
                    names::MAX_TOOL_NAME
                );
                continue;
            };
            if self.routes.contains_key(&name) {
                eprintln!(
                    "kugetsu-worker: MCP server `{server}`: tool `{}` left out: its name \
                     becomes `{name}`, like an earlier tool's",
                    tool.name
                );
                continue;
            }
            let schema = serde_json::Value::Object((*tool.input_schema).clone());
            if schema.to_string().len() > MAX_SCHEMA {
                eprintln!(
                    "kugetsu-worker: MCP server `{server}`: tool `{}` left out: its input \
                     schema is over {MAX_SCHEMA} bytes",
                    tool.name
                );
                continue;
            }
            let mut description = tool
                .description
                .as_deref()
                .or(tool.title.as_deref())
                .unwrap_or("")
                .to_owned();
            if description.len() > MAX_DESCRIPTION {
                let mut end = MAX_DESCRIPTION;
                while !description.is_char_boundary(end) {
                    end -= 1;
                }
                description.truncate(end);
                description.push_str(" [...]");
            }
            self.specs.push(ToolSpec {
                name: Cow::Owned(name.clone()),
                description: Cow::Owned(format!("(MCP server `{server}`) {description}")),
                parameters: schema,
            });
            self.routes.insert(name, (index, tool.name.into_owned()));
        }
    }

    /// Runs the call `name` with `args`. Never fails: every problem is an `ok: false` output
    /// naming the server.
    pub async fn call(
        &mut self,
        ctx: &ToolContext,
        name: &str,
        args: &serde_json::Value,
    ) -> ToolOutput {
        let Some(index) = self.server_of(name) else {
            return failure(format!("unknown tool `{name}`"));
        };
        let server_name = self.servers[index].spec.name.clone();
        let tool = match self.routes.get(name) {
            Some((_, tool)) => tool.clone(),
            None if matches!(self.servers[index].state, State::Up(_)) => {
                let known: Vec<&str> = self
                    .specs
                    .iter()
                    .map(|s| s.name.as_ref())
                    .filter(|n| n.starts_with(&format!("{server_name}{}", names::SEPARATOR)))
                    .collect();
                return failure(format!(
                    "MCP server `{server_name}` has no tool `{name}`; its tools are: {}",
                    if known.is_empty() {
                        "(none)".to_owned()
                    } else {
                        known.join(", ")
                    }
                ));
            }
            // A server that never started: its tools are unknown, try to bring it up.
            None => name
                .split_once(names::SEPARATOR)
                .map_or_else(String::new, |(_, t)| t.to_owned()),
        };
        let Some(arguments) = args.as_object().cloned() else {
            return failure("the arguments must be a JSON object".to_owned());
        };
        if let Err(reason) = self.ensure_up(ctx, index).await {
            return failure(reason);
        }
        let server = &mut self.servers[index];
        let State::Up(connection) = &mut server.state else {
            return failure(format!("MCP server `{server_name}` is not running"));
        };
        let mut params = CallToolRequestParams::new(tool);
        params.arguments = Some(arguments);
        let timeout = Duration::from_millis(server.spec.call_timeout_ms);
        match tokio::time::timeout(timeout, connection.service.call_tool(params)).await {
            Ok(Ok(result)) => {
                let (text, truncated) = render::render(&result);
                ToolOutput {
                    ok: !result.is_error.unwrap_or(false),
                    output: text,
                    truncated,
                    memory: None,
                }
            }
            Ok(Err(rmcp::ServiceError::McpError(error))) => failure(format!(
                "MCP server `{server_name}` refused the call: {}",
                error.message
            )),
            Ok(Err(error)) => {
                let what = connection
                    .process
                    .as_mut()
                    .and_then(ServerProcess::exit_status)
                    .map_or_else(
                        || format!("the connection failed ({error})"),
                        |status| format!("it {status}"),
                    );
                let message = format!(
                    "MCP server `{server_name}` stopped during the call: {what}; {}",
                    restart_note(server.restarts)
                );
                server.state = State::Down(format!("it stopped: {what}"));
                failure(message)
            }
            Err(_) => {
                let message = format!(
                    "MCP server `{server_name}` did not answer within {} s; the call was \
                     abandoned and the server stopped; {}",
                    timeout.as_secs_f64(),
                    restart_note(server.restarts)
                );
                server.state = State::Down("it hung on a call and was stopped".to_owned());
                failure(message)
            }
        }
    }

    /// Brings server `index` up if it is down and restarts remain.
    async fn ensure_up(&mut self, ctx: &ToolContext, index: usize) -> Result<(), String> {
        let server = &mut self.servers[index];
        if let State::Up(connection) = &mut server.state {
            let exited = connection
                .process
                .as_mut()
                .and_then(ServerProcess::exit_status);
            match exited {
                Some(status) => server.state = State::Down(format!("it {status}")),
                None if connection.service.is_closed() => {
                    server.state = State::Down("its connection closed".to_owned());
                }
                None => return Ok(()),
            }
        }
        let State::Down(reason) = &server.state else {
            return Ok(());
        };
        let reason = reason.clone();
        if server.restarts >= MAX_RESTARTS {
            return Err(format!(
                "MCP server `{}` is not available: {reason}, and it was restarted \
                 {MAX_RESTARTS} times already",
                server.spec.name
            ));
        }
        server.restarts += 1;
        let spec = server.spec.clone();
        match connect(&spec, ctx).await {
            Ok((connection, listed)) => {
                let had_tools = self.routes.values().any(|(i, _)| *i == index);
                if !had_tools {
                    self.add_tools(index, &spec.name, listed);
                }
                self.servers[index].state = State::Up(Box::new(connection));
                Ok(())
            }
            Err(e) => {
                let server = &mut self.servers[index];
                let message = format!(
                    "MCP server `{}` is not available: {reason}, and restarting it failed: {e}",
                    spec.name
                );
                server.state = State::Down(format!("restarting it failed: {e}"));
                Err(message)
            }
        }
    }
}

fn restart_note(restarts: u32) -> String {
    if restarts < MAX_RESTARTS {
        "it will be restarted at its next call".to_owned()
    } else {
        "it will not be restarted again".to_owned()
    }
}

fn failure(output: String) -> ToolOutput {
    ToolOutput {
        ok: false,
        output,
        truncated: false,
        memory: None,
    }
}

/// Starts (or reaches) `spec`, runs `initialize` and lists its tools, all within its start-up
/// timeout.
async fn connect(spec: &McpServer, ctx: &ToolContext) -> Result<(Connection, Vec<Tool>), String> {
    let timeout = Duration::from_millis(spec.startup_timeout_ms);
    let (service, mut process) = match &spec.transport {
        McpTransport::Stdio { command, args, env } => {
            let (process, stdout, stdin) = stdio::spawn(ctx, command, args, env)?;
            let transport =
                AsyncRwTransport::new_client(stdout, stdin).with_max_line_length(MAX_LINE);
            let mut process = process;
            match tokio::time::timeout(timeout, ().serve(transport)).await {
                Ok(Ok(service)) => (service, Some(process)),
                Ok(Err(e)) => {
                    let status = process.exit_status();
                    return Err(match status {
                        Some(status) => format!("it {status} before answering `initialize`"),
                        None => format!("`initialize` failed: {e}"),
                    });
                }
                Err(_) => {
                    return Err(format!(
                        "no answer to `initialize` within {} s",
                        timeout.as_secs_f64()
                    ));
                }
            }
        }
        McpTransport::Http { url } => {
            let service = tokio::time::timeout(timeout, super::http::connect(url))
                .await
                .map_err(|_| {
                    format!(
                        "no answer to `initialize` within {} s",
                        timeout.as_secs_f64()
                    )
                })??;
            (service, None)
        }
    };
    let listed = match tokio::time::timeout(timeout, list_tools(&service)).await {
        Ok(Ok(listed)) => listed,
        Ok(Err(e)) => {
            let status = process.as_mut().and_then(ServerProcess::exit_status);
            return Err(match status {
                Some(status) => format!("it {status} during `tools/list`"),
                None => format!("`tools/list` failed: {e}"),
            });
        }
        Err(_) => {
            return Err(format!(
                "no answer to `tools/list` within {} s",
                timeout.as_secs_f64()
            ));
        }
    };
    Ok((Connection { service, process }, listed))
}

/// `tools/list`, page by page, up to [`MAX_PAGES`] pages and [`MAX_TOOLS`] tools.
async fn list_tools(
    service: &RunningService<RoleClient, ()>,
) -> Result<Vec<Tool>, rmcp::ServiceError> {
    let mut tools = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let params = cursor
            .take()
            .map(|c| PaginatedRequestParams::default().with_cursor(Some(c)));
        let page = service.list_tools(params).await?;
        tools.extend(page.tools);
        match page.next_cursor {
            Some(next) if tools.len() < MAX_TOOLS => cursor = Some(next),
            _ => break,
        }
    }
    if tools.len() > MAX_TOOLS {
        eprintln!(
            "kugetsu-worker: an MCP server lists {} tools; only the first {MAX_TOOLS} are offered",
            tools.len()
        );
        tools.truncate(MAX_TOOLS);
    }
    Ok(tools)
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field(
                "servers",
                &self
                    .servers
                    .iter()
                    .map(|s| &s.spec.name)
                    .collect::<Vec<_>>(),
            )
            .field("tools", &self.routes.len())
            .finish()
    }
}

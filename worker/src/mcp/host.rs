//! The MCP host: the process that holds a task's MCP sessions, so the worker itself links no
//! MCP code and a shadow that uses no server stays exactly as small as before (see
//! [`super`]). `kugetsu-mcp-host` is started by the worker ([`super::proxy`]) with the lines
//! of [`super::wire`] on its stdin and stdout; nothing else writes to its stdout.

use std::process::ExitCode;
use std::sync::Arc;

use kugetsu_protocol::{LineReader, encode};
use tokio::io::{AsyncWriteExt as _, BufReader};

use super::servers::Registry;
use super::wire::{Answer, Call, Ready, Start, ToolDef};
use crate::tools::ToolContext;

/// Serves one worker until its stdin closes.
pub async fn serve() -> ExitCode {
    let mut lines = LineReader::new(BufReader::new(tokio::io::stdin()));
    let mut stdout = tokio::io::stdout();
    let start: Start = match lines.next_line().await {
        Ok(Some(line)) => match serde_json::from_slice(&line) {
            Ok(start) => start,
            Err(e) => {
                eprintln!("kugetsu-mcp-host: unreadable start line: {e}");
                return ExitCode::from(2);
            }
        },
        _ => return ExitCode::SUCCESS,
    };
    let ctx = ToolContext {
        root: start.root,
        output_dir: start.output_dir,
        mem_limit: None,
        guard: start.guard,
        sandbox: start.sandbox.map(Arc::new),
    };
    let mut registry = Registry::start(&start.servers, &ctx).await;
    let ready = Ready {
        tools: registry
            .as_ref()
            .map(|r| {
                r.specs()
                    .iter()
                    .map(|spec| ToolDef {
                        name: spec.name.to_string(),
                        description: spec.description.to_string(),
                        parameters: spec.parameters.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    if write(&mut stdout, &encode(&ready)).await.is_err() {
        return ExitCode::SUCCESS;
    }
    loop {
        let call: Call = match lines.next_line().await {
            Ok(Some(line)) => match serde_json::from_slice(&line) {
                Ok(call) => call,
                Err(e) => {
                    eprintln!("kugetsu-mcp-host: unreadable call line: {e}");
                    continue;
                }
            },
            // The worker is gone: dropping the registry kills every server.
            Ok(None) | Err(_) => return ExitCode::SUCCESS,
        };
        let output = match registry.as_mut() {
            Some(registry) => registry.call(&ctx, &call.name, &call.args).await,
            None => crate::tools::ToolOutput {
                ok: false,
                output: format!("unknown tool `{}`", call.name),
                truncated: false,
                memory: None,
            },
        };
        let answer = Answer {
            id: call.id,
            ok: output.ok,
            output: output.output,
            truncated: output.truncated,
        };
        if write(&mut stdout, &encode(&answer)).await.is_err() {
            return ExitCode::SUCCESS;
        }
    }
}

async fn write(stdout: &mut tokio::io::Stdout, line: &[u8]) -> std::io::Result<()> {
    stdout.write_all(line).await?;
    stdout.flush().await
}

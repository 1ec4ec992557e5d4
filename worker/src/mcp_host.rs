//! The `kugetsu-mcp-host` binary: a shadow's MCP sessions, in a process of their own (see
//! `kugetsu_worker::mcp`). Started by `kugetsu-worker`, never by hand.

use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kugetsu-mcp-host: cannot start the async runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let code = runtime.block_on(kugetsu_worker::mcp::host::serve());
    runtime.shutdown_background();
    code
}

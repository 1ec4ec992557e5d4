//! The `kugetsu` binary.

use std::process::ExitCode;

use clap::Parser;
use kugetsu_supervisor::cli::args::{Cli, Command};
use kugetsu_supervisor::cli::{client, demo, doctor, generate, land, run, top};
use kugetsu_supervisor::{daemon, log, mcp};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (format, role) = match &cli.command {
        Command::Serve(args) => (args.log_format, log::Role::Daemon),
        _ => (log::LogFormat::Human, log::Role::Command),
    };
    let log_filter = std::env::var("KUGETSU_LOG").ok();
    match log::filter(log_filter.as_deref()) {
        // The MCP SDK's own info lines (every message received) are noise on an MCP
        // client's stderr unless asked for.
        Ok(filter) if matches!(cli.command, Command::Mcp(_)) && log_filter.is_none() => log::init(
            format,
            role,
            filter.with_target("rmcp", tracing_subscriber::filter::LevelFilter::WARN),
        ),
        Ok(filter) => log::init(format, role, filter),
        Err(e) => {
            eprintln!("kugetsu: {e}");
            return ExitCode::from(kugetsu_supervisor::exit::USAGE);
        }
    }
    kugetsu_os::crash::arm();
    if matches!(
        cli.command,
        Command::Run(_) | Command::Demo(_) | Command::Serve(_)
    ) {
        // This process holds the provider keys while shadows run: no process of the same
        // user may read its memory or /proc/PID/environ (Landlock stops a sandboxed root).
        let _ = nix::sys::prctl::set_dumpable(false);
    }
    if matches!(
        cli.command,
        Command::Run(_) | Command::Demo(_) | Command::Serve(_) | Command::Doctor(_)
    ) {
        // Probed now, before anything reaps children with waitpid(-1): the probe forks and
        // waits for its own children.
        let _ = kugetsu_os::probe::host();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kugetsu: cannot start the async runtime: {e}");
            return ExitCode::from(kugetsu_supervisor::exit::FAILED);
        }
    };
    let is_mcp = matches!(cli.command, Command::Mcp(_));
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Demo(args) => demo::demo(args).await,
            Command::Serve(args) => {
                daemon::serve(daemon::actor::ServeOptions {
                    config: args.config,
                    socket: args.socket,
                    state_dir: args.state_dir,
                    sandbox: args.confine.sandbox,
                    network: args.confine.network,
                    http: args.http,
                })
                .await
            }
            Command::Submit(args) => client::submit(*args).await,
            Command::Ps(args) => client::ps(args).await,
            Command::Show(args) => client::show(args).await,
            Command::Logs(args) => client::logs(args).await,
            Command::Cancel(args) => client::cancel(args).await,
            Command::Resume(args) => client::resume(args).await,
            Command::Steer(args) => client::steer(args).await,
            Command::Top(args) => top::top(args).await,
            Command::Clean(args) => client::clean(args).await,
            Command::Shutdown(args) => client::shutdown(args).await,
            Command::Diff(args) => land::diff(args).await,
            Command::Merge(args) => land::merge(args).await,
            Command::Mcp(args) => match std::env::current_dir() {
                Ok(cwd) => {
                    mcp::serve(mcp::McpOptions {
                        socket: args.client.socket,
                        state_dir: args.client.state_dir,
                        config: args.config,
                        cwd,
                    })
                    .await
                }
                Err(e) => Err(kugetsu_supervisor::exit::CliError::Usage(format!(
                    "cannot read the current directory: {e}"
                ))),
            },
            Command::Doctor(args) => doctor::doctor(args).await,
            Command::Completions(args) => generate::completions(&args),
            Command::Man(args) => generate::man(&args),
        }
    });
    if is_mcp {
        // Its stdin may be read on a blocking thread that stays parked in read(2) when the
        // session ended for another reason than EOF (a signal): do not wait for it.
        runtime.shutdown_background();
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kugetsu: {e}");
            e.code()
        }
    }
}

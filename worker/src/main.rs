//! The `kugetsu-worker` binary: one shadow. Started by `kugetsu`, never by hand.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == kugetsu_worker::guard::GUARD_ARG)
    {
        return kugetsu_worker::guard::run(&args[2..]);
    }
    if std::env::args().nth(1).as_deref() == Some("--version") {
        let crash = if kugetsu_os::crash::ENABLED {
            " (crash points)"
        } else {
            ""
        };
        eprintln!("kugetsu-worker {}{crash}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    kugetsu_os::crash::arm();
    // One thread is plenty for one agent loop and keeps the idle footprint small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kugetsu-worker: cannot start the async runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let code = runtime.block_on(kugetsu_worker::ipc::serve());
    // Do not wait for blocking threads: one may sit in a read of stdin that cannot be
    // cancelled, and everything worth keeping is already flushed.
    runtime.shutdown_background();
    code
}

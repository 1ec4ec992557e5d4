//! The tool guard: a tiny process between the worker and a `bash` tool call.
//!
//! `PR_SET_PDEATHSIG` reaches only a direct child: when a worker is killed, its shell dies but
//! the shell's own children (a `sleep`, a `cargo build`) would be orphaned to init and run on.
//! So the worker starts `kugetsu-worker __tool-guard PARENT PROGRAM ARGS...` instead of the
//! shell. The guard
//! - leads the call's process group (the shell and its jobs join it),
//! - asks for SIGTERM when its parent dies, and is a child subreaper,
//! - enters the shadow's sandbox when the worker passed a policy in
//!   [`crate::sandbox::POLICY_VAR`] (see [`crate::sandbox`]); a sandbox that should apply and
//!   does not stops the call with exit code 126 before PROGRAM runs,
//! - runs PROGRAM and waits for it, reaping adopted orphans as they exit,
//! - on its parent's death, SIGKILLs every descendant and the whole group, then exits,
//! - otherwise exits the way PROGRAM did (same code, or the same signal), so the worker sees
//!   the shell's own status.
//!
//! A SIGTERM while the parent lives is the worker's timeout reaching the whole group: the
//! guard leaves it to the shell and keeps waiting (the worker follows up with SIGKILL).
//! The guard is synchronous and allocation-light; it never touches the worker's channel.

use std::ffi::OsString;
use std::process::{Command, ExitCode};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// The first argument that selects guard mode.
pub const GUARD_ARG: &str = kugetsu_protocol::sandbox::GUARD_ARG;

/// Runs the guard with `args` = `PARENT PROGRAM ARGS...`; never returns normally on the
/// parent-death path.
pub fn run(args: &[OsString]) -> ExitCode {
    let (Some(parent), Some(program)) = (
        args.first()
            .and_then(|p| p.to_str())
            .and_then(|p| p.parse::<i32>().ok()),
        args.get(1),
    ) else {
        eprintln!("kugetsu-worker {GUARD_ARG}: usage: PARENT_PID PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let mut signals = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        signals.add(signal);
    }
    // Blocked before anything can arrive; the child gets a clean mask from std's spawn.
    if signals.thread_block().is_err() || nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_err() {
        eprintln!("kugetsu-worker {GUARD_ARG}: cannot set up signals");
        return ExitCode::from(126);
    }
    if nix::unistd::getppid().as_raw() != parent {
        // The worker died before PDEATHSIG was armed: nothing to run for.
        return ExitCode::from(137);
    }
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let sandbox = match std::env::var_os(crate::sandbox::POLICY_VAR) {
        Some(policy) => match crate::sandbox::enter(&policy) {
            Ok(entered) => entered,
            Err(e) => {
                eprintln!("kugetsu-worker: the sandbox could not be set up, nothing was run: {e}");
                return ExitCode::from(126);
            }
        },
        None => None,
    };
    let mut command = Command::new(program);
    command
        .args(&args[2..])
        .env_remove(crate::sandbox::POLICY_VAR);
    if let Some(mut sandbox) = sandbox {
        use std::os::unix::process::CommandExt as _;
        #[expect(
            unsafe_code,
            reason = "the sandbox's last steps must run in the tool's process before exec"
        )]
        // SAFETY: the guard is single-threaded, so the forked child may allocate; the closure
        // only mounts /proc and makes the Landlock syscalls, touching nothing shared.
        unsafe {
            command.pre_exec(move || sandbox.in_child());
        }
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "kugetsu-worker: cannot start {}: {e}",
                program.to_string_lossy()
            );
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let child = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(status) = reap(child) {
                    exit_like(status);
                }
            }
            Ok(_) if nix::unistd::getppid().as_raw() != parent => kill_everything(),
            // The worker's SIGTERM to the group: the shell handles it; we wait.
            Ok(_) | Err(_) => {}
        }
    }
}

/// Reaps every exited child; returns the status of `child` once it is among them.
fn reap(child: Pid) -> Option<WaitStatus> {
    let mut found = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(status) if status.pid() == Some(child) => found = Some(status),
            Ok(_) => {}
        }
    }
}

/// Exits with `status`'s code, or dies of its signal.
fn exit_like(status: WaitStatus) -> ! {
    match status {
        WaitStatus::Signaled(_, signal, _) => {
            let _ = SigSet::all().thread_unblock();
            let _ = reset_and_raise(signal);
            std::process::exit(128 + signal as i32)
        }
        WaitStatus::Exited(_, code) => std::process::exit(code),
        _ => std::process::exit(1),
    }
}

fn reset_and_raise(signal: Signal) -> nix::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, sigaction};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    #[expect(
        unsafe_code,
        reason = "sigaction is unsafe in nix; setting SIG_DFL installs no handler"
    )]
    // SAFETY: installing the default disposition runs no code of ours in signal context.
    unsafe {
        sigaction(signal, &default)?;
    }
    nix::sys::signal::raise(signal)
}

/// The parent died: nothing of this call may outlive it.
fn kill_everything() -> ! {
    kugetsu_os::process::kill_descendants(std::process::id(), &[]);
    let _ = nix::sys::signal::killpg(nix::unistd::getpgrp(), Signal::SIGKILL);
    std::process::exit(137)
}

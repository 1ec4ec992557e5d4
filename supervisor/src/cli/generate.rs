//! `kugetsu completions SHELL` and `kugetsu man`: generated from the clap definitions in
//! [`crate::cli::args`], so they can never disagree with what the binary accepts.
//! `scripts/install` installs both.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::args::{Cli, CompletionsArgs, ManArgs};
use crate::exit::CliError;

/// `kugetsu completions SHELL`: the script on stdout.
pub fn completions(args: &CompletionsArgs) -> Result<ExitCode, CliError> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "kugetsu", &mut script);
    write_stdout(&script)?;
    Ok(ExitCode::SUCCESS)
}

/// `kugetsu man [--dir DIR]`: kugetsu.1 on stdout, or every page into DIR.
pub fn man(args: &ManArgs) -> Result<ExitCode, CliError> {
    let command = Cli::command();
    match &args.dir {
        None => {
            let mut page = Vec::new();
            render(&command, "kugetsu", &mut page)?;
            write_stdout(&page)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", dir.display())))?;
            let written = write_pages(&command, "kugetsu", "kugetsu", dir)?;
            eprintln!("wrote {written} man pages in {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `NAME.1` for `command` and `NAME-SUB.1` for each visible subcommand, recursively;
/// returns how many pages. `invocation` is what a user types (`kugetsu run`).
fn write_pages(
    command: &clap::Command,
    name: &str,
    invocation: &str,
    dir: &Path,
) -> Result<usize, CliError> {
    // The SYNOPSIS shows the whole invocation, the page title the page's name.
    let command = command
        .clone()
        .name(name.to_owned())
        .bin_name(invocation.to_owned());
    let mut page = Vec::new();
    render(&command, name, &mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page)
        .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
    let mut written = 1;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        written += write_pages(
            sub,
            &format!("{name}-{}", sub.get_name()),
            &format!("{invocation} {}", sub.get_name()),
            dir,
        )?;
    }
    Ok(written)
}

fn render(command: &clap::Command, title: &str, out: &mut Vec<u8>) -> Result<(), CliError> {
    clap_mangen::Man::new(command.clone())
        .title(title.to_owned())
        .render(out)
        .map_err(|e| CliError::Failed(format!("cannot render the man page: {e}")))
}

fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        // `kugetsu man | head`: the reader went away; nothing is wrong.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Failed(format!("cannot write to stdout: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kugetsu", &mut script);
            let script = String::from_utf8_lossy(&script);
            for sub in ["serve", "submit", "merge", "top", "demo", "completions"] {
                assert!(script.contains(sub), "{shell:?} lacks {sub}");
            }
        }
    }

    #[test]
    fn man_pages_cover_every_command() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let written = write_pages(&Cli::command(), "kugetsu", "kugetsu", dir.path())
            .unwrap_or_else(|e| unreachable!("{e}"));
        let subcommands = Cli::command().get_subcommands().count();
        assert_eq!(written, subcommands + 1);
        let run = std::fs::read_to_string(dir.path().join("kugetsu-run.1"))
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(run.contains(".TH kugetsu-run"), "{run}");
        assert!(run.contains("max\\-turns"), "{run}");
    }
}

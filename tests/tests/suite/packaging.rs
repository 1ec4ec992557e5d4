//! Packaging habits: shell completions and man pages generated from the clap definitions, and
//! the daemon's log lines (human by default, JSON with `--log-format json`).

use std::process::Command;
use std::time::Duration;

use kugetsu_tests::harness::bin_path;
use kugetsu_tests::{Daemon, TestRepo};
use serde_json::Value;

fn kugetsu(args: &[&str]) -> std::process::Output {
    Command::new(bin_path("kugetsu"))
        .args(args)
        .env_remove("KUGETSU_LOG")
        .output()
        .expect("run kugetsu")
}

#[test]
fn the_bash_completion_parses_and_completes_subcommands_and_flags() {
    let out = kugetsu(&["completions", "bash"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("kugetsu.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // Load it in a real bash and ask it what `kugetsu mer<TAB>` and `kugetsu merge --in<TAB>`
    // complete to, the way bash's completion machinery calls the function.
    let probe = format!(
        r#"source {script}
complete -p kugetsu
COMP_WORDS=(kugetsu mer); COMP_CWORD=1; COMP_LINE="kugetsu mer"; COMP_POINT=11
_kugetsu kugetsu mer kugetsu; echo "sub: ${{COMPREPLY[*]}}"
COMP_WORDS=(kugetsu merge --in); COMP_CWORD=2; COMP_LINE="kugetsu merge --in"; COMP_POINT=18
_kugetsu kugetsu --in merge; echo "flag: ${{COMPREPLY[*]}}"
"#,
        script = script.display()
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &probe])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("-F _kugetsu kugetsu"), "{stdout}");
    assert!(stdout.contains("sub: merge"), "{stdout}");
    assert!(stdout.contains("flag: --into"), "{stdout}");
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = kugetsu(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for sub in ["run", "serve", "submit", "ps", "top", "merge", "doctor"] {
            assert!(script.contains(sub), "{shell} lacks {sub}");
        }
    }
    let out = kugetsu(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

#[test]
fn man_pages_are_written_for_every_command_and_render() {
    let out = kugetsu(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH kugetsu 1"), "{page}");
    for sub in ["run", "serve", "merge", "completions"] {
        assert!(page.contains(sub), "kugetsu.1 lacks {sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = kugetsu(&["man", "--dir", &dir.path().display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for name in [
        "kugetsu.1",
        "kugetsu-run.1",
        "kugetsu-serve.1",
        "kugetsu-merge.1",
    ] {
        assert!(pages.iter().any(|p| p == name), "{name} missing: {pages:?}");
    }
    let serve = std::fs::read_to_string(dir.path().join("kugetsu-serve.1")).unwrap();
    assert!(serve.contains("log\\-format"), "{serve}");
    // Rendered as a person reads it, by man-db's `man` (installed by .ci/run).
    let out = Command::new("man")
        .arg("-l")
        .arg(dir.path().join("kugetsu-merge.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // man justifies lines; compare with single spaces.
    let text = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(text.contains("kugetsu merge"), "{text}");
    assert!(text.contains("--squash"), "{text}");
}

#[test]
fn a_bad_log_filter_is_a_usage_error() {
    let out = Command::new(bin_path("kugetsu"))
        .args(["ps"])
        .env("KUGETSU_LOG", "kugetsu=loud")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("KUGETSU_LOG"), "{stderr}");
}

#[tokio::test]
async fn the_daemon_logs_json_lines_when_asked() {
    let repo = TestRepo::new();
    let mut daemon = Daemon::builder(&repo)
        .env("KUGETSU_LOG_FORMAT", "json")
        .start()
        .await;
    daemon
        .wait_for_stderr(0, "serving on", Duration::from_secs(30))
        .await;
    let out = daemon.cli(["shutdown"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    daemon.wait_exit(Duration::from_secs(30)).await;
    let log = daemon.stderr();
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}\n{log}"));
        assert!(value["timestamp"].is_string(), "{line}");
        assert!(value["level"].is_string(), "{line}");
        messages.push(value["message"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        messages.iter().any(|m| m.starts_with("serving on")),
        "{log}"
    );
    assert!(messages.iter().any(|m| m == "stopped"), "{log}");
}

#[tokio::test]
async fn the_daemon_logs_human_lines_by_default() {
    let repo = TestRepo::new();
    let mut daemon = Daemon::builder(&repo).start().await;
    let line = daemon
        .wait_for_stderr(0, "kugetsu: serving on", Duration::from_secs(30))
        .await;
    assert!(!line.trim_start().starts_with('{'), "{line}");
    let out = daemon.cli(["shutdown"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    daemon.wait_exit(Duration::from_secs(30)).await;
}

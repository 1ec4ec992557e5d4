//! The offline path: the `scripted` provider and `kugetsu demo`, no network at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kugetsu_tests::events::{kind, sorted_strings, str_of};
use kugetsu_tests::{Events, RunOutput, TestRepo};
use serde_json::Value;

/// The files of the demo repository (as `kugetsu demo` creates them).
const DEMO_FILES: &[(&str, &str)] = &[
    (
        "greet.sh",
        "#!/bin/sh\n# Prints a greeting.\nname=\"${1:-world}\"\necho \"hello, $name\"\n",
    ),
    (
        "README.md",
        "# greet\n\nA tiny greeter: `sh greet.sh NAME`.\n",
    ),
];

#[tokio::test]
async fn scripted_demo_model_runs_offline_in_a_worktree() {
    let repo = TestRepo::with_files(DEMO_FILES);
    let out = repo
        .run()
        .model("scripted/demo")
        .prompt("Add a --verbose flag to greet.sh, add a test for it, and run the test.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let finished = out.finished();
    let id = out.task_id();
    assert!(
        str_of(finished, "result").starts_with("Done."),
        "{finished}"
    );
    assert_eq!(
        sorted_strings(&finished["changed_files"]),
        ["greet.sh", "tests/test_greet.sh"]
    );
    let worktree = repo.worktree(id);
    let greet = std::fs::read_to_string(worktree.join("greet.sh")).unwrap();
    assert!(greet.contains("--verbose"), "{greet}");
    assert!(worktree.join("tests/test_greet.sh").is_file());
    let bash = out.events.tool_end_of("bash", 0);
    assert_eq!(bash["ok"], true, "{bash}");
    assert!(str_of(bash, "output").contains("all greet tests passed"));
    assert!(out.events.tool_ends().iter().all(|e| e["ok"] == true));
    // The user's checkout is untouched; the work is on the branch.
    assert_eq!(repo.read("greet.sh").as_deref(), Some(DEMO_FILES[0].1));
    assert!(repo.has_branch(&format!("kugetsu/{id}")));
}

/// A job of `kugetsu demo` and what it must leave on its branch: the files it changes (against
/// `main`), and pieces of text those files must then hold (or, with `!`, no longer hold).
type Job = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

const DEMO_JOBS: &[Job] = &[
    (
        "verbose",
        &["greet.sh", "tests/test_greet.sh"],
        &[
            ("greet.sh", "--verbose"),
            ("tests/test_greet.sh", "all greet tests passed"),
        ],
    ),
    (
        "function",
        &["lib/text.sh"],
        &[("lib/text.sh", "lower() {")],
    ),
    (
        "typo",
        &["docs/usage.md"],
        &[
            ("docs/usage.md", "receives a name"),
            ("docs/usage.md", "!recieve"),
        ],
    ),
    (
        "test",
        &["tests/test_repeat.sh"],
        &[("tests/test_repeat.sh", "repeat 3 ab")],
    ),
    ("docs", &["README.md"], &[("README.md", "## Text helpers")]),
    ("ci", &["check.sh"], &[("check.sh", "sh -n")]),
    (
        "todo",
        &["farewell.sh"],
        &[("farewell.sh", "goodbye, $name"), ("farewell.sh", "!TODO")],
    ),
    (
        "count",
        &["count.sh", "tests/test_count.sh"],
        &[("count.sh", "wc -w"), ("tests/test_count.sh", "count ok")],
    ),
];

/// A demo run has many shadows and takes seconds; this bounds it on a loaded machine.
const DEMO_TIMEOUT: Duration = Duration::from_secs(240);

/// `kugetsu demo` with `TMPDIR` inside the test's directory (the throwaway repository goes
/// there), and that directory.
fn demo(repo: &TestRepo) -> (kugetsu_tests::Kugetsu, PathBuf) {
    let tmp = repo.root().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let command = repo
        .kugetsu()
        .arg("demo")
        .env("TMPDIR", &tmp)
        .timeout(DEMO_TIMEOUT);
    (command, tmp)
}

/// One row of the closing table.
#[derive(Debug)]
struct Row {
    id: String,
    job: String,
    line: String,
    changed: String,
    branch: String,
}

/// The rows of the closing table in `text`: the lines after the `SHADOW JOB RESULT ...`
/// header up to the first empty line.
fn closing_rows(text: &str) -> Vec<Row> {
    let mut lines = text
        .lines()
        .skip_while(|l| !(l.starts_with("SHADOW") && l.contains("PEAK RSS")));
    assert!(lines.next().is_some(), "no closing table in:\n{text}");
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words
                .iter()
                .position(|w| w.starts_with("kugetsu/"))
                .unwrap_or_else(|| panic!("no branch in row {line:?}"));
            Row {
                id: words[0].to_owned(),
                job: words[1].to_owned(),
                line: line.to_owned(),
                changed: words[at - 1].to_owned(),
                branch: words[at].to_owned(),
            }
        })
        .collect()
}

fn assert_no_escape_codes(what: &str, text: &str) {
    assert!(
        !text.contains('\x1b'),
        "{what} holds terminal escape codes though it is not a terminal:\n{text:?}"
    );
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The directory `--keep` kept, as said on stderr.
fn kept_dir(out: &RunOutput) -> PathBuf {
    let line = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("kept the demo's files in "))
        .unwrap_or_else(|| panic!("--keep did not say where:\n{}", out.stderr));
    PathBuf::from(line.trim())
}

#[tokio::test]
async fn kugetsu_demo_runs_eight_shadows_each_leaving_its_job_on_its_own_branch() {
    let repo = TestRepo::new();
    let (command, _tmp) = demo(&repo);
    let out = command.arg("--keep").text_stdout().output().await;
    out.assert_code(0);
    // Not a terminal: plain lines, no escape codes, on either stream.
    assert_no_escape_codes("stderr", &out.stderr);
    assert_no_escape_codes("stdout", &out.stdout);
    let rows = closing_rows(&out.stdout);
    assert_eq!(rows.len(), 8, "{}", out.stdout);
    let ids: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 8, "task ids repeat: {}", out.stdout);
    let base = kept_dir(&out);
    let demo_repo = base.join("repo");
    for (job, changes, contents) in DEMO_JOBS {
        let row = rows
            .iter()
            .find(|r| r.job == *job)
            .unwrap_or_else(|| panic!("no row for job {job}:\n{}", out.stdout));
        let context = || format!("job {job}, row {:?}\n{}", row.line, out.stdout);
        assert!(row.line.contains("completed: Done."), "{}", context());
        assert!(row.line.ends_with("MiB"), "no peak memory: {}", context());
        assert_eq!(row.branch, format!("kugetsu/{}", row.id), "{}", context());
        assert_eq!(row.changed, changes.join(","), "{}", context());
        // The branch exists in the kept repository and carries exactly the job's change.
        let changed = git(&demo_repo, &["diff", "--name-only", "main", &row.branch]);
        assert_eq!(
            changed.lines().collect::<Vec<_>>(),
            *changes,
            "{}",
            context()
        );
        for (file, text) in *contents {
            let content = git(&demo_repo, &["show", &format!("{}:{file}", row.branch)]);
            match text.strip_prefix('!') {
                Some(gone) => assert!(!content.contains(gone), "{file}: {content}"),
                None => assert!(content.contains(text), "{file}: {content}"),
            }
        }
        // The live view told of its start and its end.
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with(&row.id) && l.contains("started")),
            "{}\n{}",
            context(),
            out.stderr
        );
    }
    // The user-facing checkout of the demo repository is untouched: one commit, clean.
    assert_eq!(
        git(&demo_repo, &["rev-list", "--count", "main"]).trim(),
        "1"
    );
    assert_eq!(git(&demo_repo, &["status", "--porcelain"]), "");
    assert!(out.stdout.contains("8 of 8 completed"), "{}", out.stdout);
    assert!(out.stdout.contains("all of them at once"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains(&format!("git -C {} log", demo_repo.display())),
        "{}",
        out.stdout
    );
    // The demo's daemon is gone: its socket was removed when it stopped.
    let state = base.join("state");
    let socket = state.join("kugetsu.sock");
    assert!(!socket.exists());
    // The jobs compose: all eight land on main, one after the other, each tested, with the
    // `kugetsu merge` the closing table suggests (on the kept state dir, no daemon).
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let suggested = format!(
        "kugetsu merge --state-dir {} --socket {} --test 'sh tests/run.sh' {}",
        state.display(),
        socket.display(),
        ids.join(" ")
    );
    assert!(
        out.stdout.contains(&suggested),
        "{suggested}\n{}",
        out.stdout
    );
    let merged = repo
        .kugetsu()
        .arg("merge")
        .arg("--state-dir")
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .args(["--test", "sh tests/run.sh"])
        .args(&ids)
        .text_stdout()
        .output()
        .await;
    merged.assert_code(0);
    assert_eq!(
        git(&demo_repo, &["rev-list", "--count", "main"]).trim(),
        "9"
    );
    let check = std::process::Command::new("sh")
        .arg("check.sh")
        .current_dir(&demo_repo)
        .output()
        .unwrap();
    let check_out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check_out}");
    assert!(check_out.contains("4 passed, 0 failed"), "{check_out}");
}

#[tokio::test]
async fn kugetsu_demo_json_streams_every_shadow_s_envelopes_and_they_overlap() {
    let repo = TestRepo::new();
    let (command, tmp) = demo(&repo);
    // Every stdout line must parse as JSON (the harness checks), and as an envelope (below).
    let out = command.arg("--json").output().await;
    out.assert_code(0);
    assert_no_escape_codes("stderr", &out.stderr);
    let mut per_task: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for event in out.events.all() {
        per_task
            .entry(str_of(event, "task").to_owned())
            .or_default()
            .push(event.clone());
    }
    assert_eq!(per_task.len(), 8, "{:?}", out.events);
    let mut models = BTreeSet::new();
    for events in per_task.values() {
        let events = Events(events.clone());
        // Each task's stream is complete and well formed: seq 1..N, `finished` last.
        events.assert_well_formed();
        assert_eq!(kind(&events.0[0]), "queued", "{events:?}");
        assert_eq!(events.status(), "completed", "{events:?}");
        let model = str_of(events.first("started"), "model").to_owned();
        if model == "scripted/demo/verbose" {
            let tools: Vec<&str> = events
                .tool_starts()
                .iter()
                .map(|e| str_of(e, "tool"))
                .collect();
            assert_eq!(tools, ["ls", "read", "edit", "write", "bash"]);
        }
        models.insert(model);
    }
    let expected: BTreeSet<String> = DEMO_JOBS
        .iter()
        .map(|(job, _, _)| format!("scripted/demo/{job}"))
        .collect();
    assert_eq!(models, expected);
    // Every tool is shown, and they all worked.
    let tools: BTreeSet<&str> = out
        .events
        .tool_ends()
        .iter()
        .map(|e| str_of(e, "tool"))
        .collect();
    assert_eq!(
        tools,
        BTreeSet::from(["bash", "edit", "grep", "ls", "read", "write"])
    );
    assert!(out.events.tool_ends().iter().all(|e| e["ok"] == true));
    // They ran at once: several had started before the first one finished.
    let first_finish = out
        .events
        .all()
        .iter()
        .position(|e| kind(e) == "finished")
        .unwrap();
    let started_before: BTreeSet<&str> = out.events.all()[..first_finish]
        .iter()
        .filter(|e| kind(e) == "started")
        .map(|e| str_of(e, "task"))
        .collect();
    assert!(
        started_before.len() >= 2,
        "only {started_before:?} had started before the first finished"
    );
    // The closing table went to stderr, with all eight.
    assert_eq!(closing_rows(&out.stderr).len(), 8, "{}", out.stderr);
    // The throwaway repository and state are gone afterwards.
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "demo left {left:?} behind");
}

#[tokio::test]
async fn kugetsu_demo_refuses_a_number_of_shadows_out_of_range() {
    let repo = TestRepo::new();
    for bad in ["0", "65", "many"] {
        let (command, tmp) = demo(&repo);
        let out = command
            .args(["--shadows", bad])
            .text_stdout()
            .output()
            .await;
        out.assert_code(2);
        assert!(out.stderr.contains("--shadows"), "{bad}: {}", out.stderr);
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
        assert!(left.is_empty(), "{bad}: demo left {left:?} behind");
    }
}

#[tokio::test]
async fn kugetsu_demo_on_a_terminal_redraws_one_table_in_place() {
    let repo = TestRepo::new();
    let tmp = repo.root().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    // `script` (util-linux) gives the demo a pseudo-terminal as stdout and stderr.
    let command = format!(
        "env -i PATH={} HOME={} TMPDIR={} {} demo",
        std::env::var("PATH").unwrap_or_default(),
        repo.home().display(),
        tmp.display(),
        kugetsu_tests::harness::bin_path("kugetsu").display()
    );
    let out = tokio::time::timeout(
        DEMO_TIMEOUT,
        tokio::process::Command::new("script")
            .args(["-q", "-e", "-c", &command, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the demo under script did not finish")
    .expect("cannot run script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    assert_eq!(out.status.code(), Some(0), "{text}");
    // The cursor is hidden while the table is redrawn, and shown again at the end.
    let hidden = text.find("\x1b[?25l").unwrap_or_else(|| panic!("{text:?}"));
    let shown = text
        .rfind("\x1b[?25h")
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(
        hidden < shown && text.rfind("\x1b[?25l") == Some(hidden),
        "{text:?}"
    );
    // Each redraw goes back over the whole frame (a header, 8 rows, the totals, 6 recent
    // events) and clears it: one table in place, not a scrolling log.
    let redraw = "\x1b[16F\x1b[J";
    let frames: Vec<String> = text.split(redraw).map(strip_colours).collect();
    assert!(frames.len() > 3, "the table was not redrawn:\n{text:?}");
    let moves = text.matches("F\x1b[J").count();
    assert_eq!(
        moves,
        frames.len() - 1,
        "a redraw of another height:\n{text:?}"
    );
    // A frame mid-run (a redrawn one: the first follows the banner and the cursor's hiding):
    // the header and one line per shadow, several running at once.
    let busy = frames[1..]
        .iter()
        .find(|f| f.lines().filter(|l| l.contains("  running  ")).count() >= 2)
        .unwrap_or_else(|| panic!("no frame with two shadows running:\n{frames:#?}"));
    let header = busy.lines().find(|l| l.starts_with("SHADOW")).unwrap();
    assert!(header.contains("STATUS") && header.contains("TURN") && header.contains("RSS"));
    for (job, _, _) in DEMO_JOBS {
        assert!(
            busy.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(job)),
            "no row for {job} in:\n{busy}"
        );
    }
    // The last frame was cleared for the closing table, which follows with all eight.
    let last = frames.last().unwrap();
    assert!(!last.contains("STATUS"), "{last}");
    assert_eq!(closing_rows(last).len(), 8, "{last}");
}

/// `text` without SGR colour sequences.
fn strip_colours(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\x1b[") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 2..];
        match tail.find(|c: char| !(c.is_ascii_digit() || c == ';')) {
            Some(end) if tail[end..].starts_with('m') => rest = &tail[end + 1..],
            _ => {
                out.push_str("\x1b[");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn kugetsu_demo_interrupted_cancels_every_shadow_and_still_shows_the_table() {
    let repo = TestRepo::new();
    let (command, tmp) = demo(&repo);
    let mut live = command.arg("--json").spawn().await;
    live.wait_for("started", DEMO_TIMEOUT).await;
    live.signal(nix::sys::signal::Signal::SIGINT);
    let out = live.finish().await;
    out.assert_code(1);
    let finished = out.events.of_type("finished");
    assert_eq!(finished.len(), 8, "{:?}", out.events);
    let statuses: BTreeSet<&str> = finished.iter().map(|e| str_of(e, "status")).collect();
    assert!(statuses.contains("cancelled"), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| ["cancelled", "completed"].contains(s)),
        "{statuses:?}"
    );
    let rows = closing_rows(&out.stderr);
    assert_eq!(rows.len(), 8, "{}", out.stderr);
    assert!(
        rows.iter().any(|r| r.line.contains("cancelled")),
        "{}",
        out.stderr
    );
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "demo left {left:?} behind");
}

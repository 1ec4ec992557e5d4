//! Resuming from a damaged journal (see docs/layout.md): the longest valid prefix is replayed and
//! nothing past the damage; the damage is logged; the conversation continues by the session
//! rules from exactly that prefix (a started call without a result is reported interrupted,
//! never re-run; a call that never started runs; otherwise the model is asked again).

use std::collections::BTreeMap;
use std::time::Duration;

use kugetsu_tests::events::{kind, str_of};
use kugetsu_tests::harness::{Script, call_id};
use kugetsu_tests::journal::{self, INTERRUPTED_RESULT, Record, Tail};
use kugetsu_tests::rng::Rng;
use kugetsu_tests::{TestRepo, procs};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Steps of the script; the run is killed while step [`KILLED_AT`] sleeps.
const STEPS: usize = 6;
const KILLED_AT: usize = 4;

/// How the test damages the journal of the killed run.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Truncate at a random byte inside the last record (a torn final write).
    TruncateLast,
    /// Truncate at a random byte inside the last tool result (the crash tore that write).
    TruncateLastResult,
    /// Flip a random byte of the middle record (bit rot).
    FlipMiddle,
}

impl Damage {
    /// The sleep of the killed step, unique per test (they run in parallel). Its shell's
    /// command line spells it `300.NN$((N0 + N))`, so a process matching it is the sleep
    /// itself, and the step's `echo` already ran.
    fn marker(self) -> (&'static str, &'static str) {
        match self {
            Damage::TruncateLast => ("300.6868", "300.68$((60 + 8))"),
            Damage::TruncateLastResult => ("300.6969", "300.69$((60 + 9))"),
            Damage::FlipMiddle => ("300.7171", "300.71$((70 + 1))"),
        }
    }
}

/// What the session rules say a resume from `prefix` does next.
#[derive(Debug)]
struct Expected {
    /// Assistant messages in the prefix: the model is next asked for turn `assistants + 1`.
    assistants: usize,
    /// Calls of the last assistant message with an intent and no result: answered as
    /// interrupted, never run again.
    interrupted: Vec<String>,
    /// Calls of the last assistant message without an intent: run.
    rerun: Vec<String>,
}

fn expected_after(prefix: &[Record]) -> Expected {
    let assistants = prefix
        .iter()
        .filter(|r| matches!(r, Record::Assistant { .. }))
        .count();
    let Some(last) = prefix
        .iter()
        .rposition(|r| matches!(r, Record::Assistant { .. }))
    else {
        return Expected {
            assistants,
            interrupted: Vec::new(),
            rerun: Vec::new(),
        };
    };
    let Record::Assistant { tool_calls, .. } = &prefix[last] else {
        unreachable!()
    };
    let tail = &prefix[last..];
    let intents = journal::intents(tail);
    let results = journal::results(tail);
    let open = tool_calls
        .iter()
        .filter(|c| !results.contains_key(c.id.as_str()));
    let (interrupted, rerun): (Vec<_>, Vec<_>) =
        open.partition(|c| intents.contains(&c.id.as_str()));
    Expected {
        assistants,
        interrupted: interrupted.into_iter().map(|c| c.id.clone()).collect(),
        rerun: rerun.into_iter().map(|c| c.id.clone()).collect(),
    }
}

/// The step of a scripted call id `call_<N>_1`.
fn step_of(call: &str) -> usize {
    call.strip_prefix("call_")
        .and_then(|rest| rest.strip_suffix("_1"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a step's call id: {call}"))
}

async fn damage_and_resume(test: &str, damage: Damage) {
    let mut rng = Rng::for_test(test);
    let (marker, spelled) = damage.marker();
    let repo = TestRepo::new();
    let side = repo.side_dir().join("steps.log");
    let flag = repo.root().join("released");
    let mut script = Script::new();
    for n in 1..=STEPS {
        let command = if n == KILLED_AT {
            format!(
                "echo step-{n} >> '{}'; [ -e '{}' ] || sleep {spelled}",
                side.display(),
                flag.display()
            )
        } else {
            format!("echo step-{n} >> '{}'", side.display())
        };
        script = script.bash(format!("Step {n}."), command);
    }
    let script = script.answer("All steps done.");
    let model = script.write(&repo.root().join("steps.json"));

    // Run until step 4 sleeps, then kill the whole run.
    let mut run = repo
        .run()
        .model(&model)
        .prompt("Run the steps.")
        .spawn()
        .await;
    let started = run.wait_for("started", Duration::from_secs(30)).await;
    let killed_call = call_id(KILLED_AT, 1);
    run.wait_for_event(
        "the killed step's tool_start",
        Duration::from_secs(30),
        |e| kind(e) == "tool_start" && e["call_id"] == killed_call.as_str(),
    )
    .await;
    procs::wait_until_running(marker, Duration::from_secs(10)).await;
    run.signal(Signal::SIGKILL);
    let first = run.finish().await;
    let worker = u32::try_from(started["pid"].as_u64().unwrap()).unwrap();
    procs::wait_until_dead(worker, Duration::from_secs(10)).await;
    // A re-run of the killed step must not sleep; its old sleep is not this test's concern.
    std::fs::write(&flag, "").unwrap();
    for leftover in procs::matching(marker) {
        let _ = kill(Pid::from_raw(leftover.pid as i32), Signal::SIGKILL);
    }
    let id = first.task_id().to_owned();

    // The journal as the killed run left it: whole, ending with the killed step's intent.
    let path = repo.task_dir(&id).join("journal.jsonl");
    let whole = journal::read_clean(&path);
    assert!(
        matches!(whole.last(), Some(Record::ToolIntent { call_id, .. }) if *call_id == killed_call),
        "{}",
        journal::describe(&whole)
    );
    let spans = journal::line_spans(&path);
    assert_eq!(spans.len(), whole.len());
    let mut bytes = std::fs::read(&path).unwrap();
    let damaged_line = match damage {
        Damage::TruncateLast | Damage::TruncateLastResult => {
            let line = match damage {
                Damage::TruncateLast => whole.len() - 1,
                _ => whole
                    .iter()
                    .rposition(|r| matches!(r, Record::ToolResult { .. }))
                    .unwrap(),
            };
            let span = &spans[line];
            let cut = rng.index(span.start + 1..span.end);
            eprintln!(
                "{test}: truncating at byte {cut}, inside record {}",
                line + 1
            );
            bytes.truncate(cut);
            line
        }
        Damage::FlipMiddle => {
            let line = whole.len() / 2;
            let span = &spans[line];
            let at = rng.index(span.start..span.end - 1);
            let mask = u8::try_from(rng.in_range(1..256)).unwrap();
            eprintln!(
                "{test}: flipping byte {at} ({:?}) of record {} with {mask:#04x}",
                bytes[at] as char,
                line + 1
            );
            bytes[at] ^= mask;
            line
        }
    };
    std::fs::write(&path, &bytes).unwrap();
    let replay = journal::read(&path);
    assert!(
        matches!(replay.tail, Tail::Damaged { line, .. } if line == damaged_line as u64 + 1),
        "the reader sees the damage at line {}: {:?}\n{}",
        damaged_line + 1,
        replay.tail,
        journal::describe(&replay.records)
    );
    let prefix = replay.records;
    assert_eq!(prefix[..], whole[..damaged_line]);
    let expect = expected_after(&prefix);
    eprintln!("{test}: {expect:?}\n{}", journal::describe(&prefix));

    // Resume.
    let out = repo.resume(&id).output().await;
    out.assert_code(0).assert_status("completed");
    assert_eq!(out.events.finished()["result"], "All steps done.");
    let log = std::fs::read_to_string(repo.task_dir(&id).join("worker.log")).unwrap();
    assert!(
        log.contains(&format!("journal damaged at line {}", damaged_line + 1)),
        "worker.log names the damage:\n{log}"
    );

    // The resumed worker went on from the prefix by the session rules ...
    let resumed_starts: Vec<&str> = out
        .events
        .tool_starts()
        .iter()
        .map(|e| str_of(e, "call_id"))
        .collect();
    for call in &expect.interrupted {
        let end = out.events.tool_end(call);
        assert_eq!(end["ok"], false, "{end}");
        assert_eq!(end["output"], INTERRUPTED_RESULT, "{end}");
        assert!(
            !resumed_starts.contains(&call.as_str()),
            "{call} was interrupted: it must not run again"
        );
    }
    for call in &expect.rerun {
        assert!(
            resumed_starts.contains(&call.as_str()),
            "{call} never started: it runs on resume; started {resumed_starts:?}"
        );
    }
    let first_turn = out.events.first("turn_start");
    assert_eq!(
        first_turn["turn"],
        expect.assistants as u64 + 1,
        "the model is asked for the turn after the prefix's last: {:?}",
        out.events
    );

    // ... and the journal kept exactly the prefix, then what the rules say comes next.
    let records = journal::read_clean(&path);
    journal::assert_tool_calls_paired(&records);
    assert_eq!(
        records[..prefix.len()],
        prefix[..],
        "the valid prefix is kept as it was"
    );
    let next = &records[prefix.len()];
    match (expect.interrupted.first(), expect.rerun.first()) {
        (Some(call), _) => assert!(
            matches!(next, Record::ToolResult { call_id, ok: false, output, .. }
                if call_id == call && output == INTERRUPTED_RESULT),
            "first new record: {next:?}"
        ),
        (None, Some(call)) => assert!(
            matches!(next, Record::ToolIntent { call_id, .. } if call_id == call),
            "first new record: {next:?}"
        ),
        (None, None) => assert!(
            matches!(next, Record::Assistant { text, .. }
                if *text == script.to_json()["turns"][expect.assistants]["text"]),
            "first new record: {next:?}"
        ),
    }

    // The side effects: steps 1..=4 ran before the kill; after it, the calls that never
    // started ran, then every step after the prefix's last assistant message. Nothing else:
    // in particular no call answered (or interrupted) in the prefix ran again.
    let text = std::fs::read_to_string(&side).unwrap();
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for line in text.lines() {
        let step = line.strip_prefix("step-").unwrap().parse().unwrap();
        *counts.entry(step).or_default() += 1;
    }
    let rerun: Vec<usize> = expect.rerun.iter().map(|c| step_of(c)).collect();
    let expected: BTreeMap<usize, usize> = (1..=STEPS)
        .map(|s| {
            let n = usize::from(s <= KILLED_AT)
                + usize::from(rerun.contains(&s))
                + usize::from(s > expect.assistants);
            (s, n)
        })
        .collect();
    assert_eq!(counts, expected, "times each step ran");
}

#[tokio::test]
async fn a_damaged_journal_tail_is_dropped_on_resume() {
    damage_and_resume(
        "a_damaged_journal_tail_is_dropped_on_resume",
        Damage::TruncateLast,
    )
    .await;
}

#[tokio::test]
async fn a_torn_tool_result_is_reported_interrupted_on_resume() {
    damage_and_resume(
        "a_torn_tool_result_is_reported_interrupted_on_resume",
        Damage::TruncateLastResult,
    )
    .await;
}

#[tokio::test]
async fn a_corrupt_middle_record_drops_everything_after_it_on_resume() {
    damage_and_resume(
        "a_corrupt_middle_record_drops_everything_after_it_on_resume",
        Damage::FlipMiddle,
    )
    .await;
}

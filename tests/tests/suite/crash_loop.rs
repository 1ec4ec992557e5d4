//! A crash loop end to end (see docs/layout.md, docs/daemon.md): a worker SIGKILLed over and over at random
//! moments (mid-tool, mid-journal-write, mid-turn, while resuming) still completes its task,
//! and no completed tool call ever runs twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kugetsu_tests::events::{kind, str_of};
use kugetsu_tests::harness::{Script, call_id};
use kugetsu_tests::journal::{self, Record};
use kugetsu_tests::rng::Rng;
use kugetsu_tests::{TestRepo, procs};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// Kills to inflict before letting the task finish.
const KILLS: usize = 50;
/// Bash steps in the script: more than the kills can use up (each kill interrupts at most
/// the step it lands in, plus whatever steps finished before it).
const STEPS: usize = 120;
/// Every step sleeps 0.02, 0.1 or 0.3 s with these digits appended, so its processes can be
/// found by command line.
const MARKER: &str = "0481577";

/// The step number of a scripted call id `call_<N>_1`.
fn step_of(call: &str) -> usize {
    call.strip_prefix("call_")
        .and_then(|rest| rest.strip_suffix("_1"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a step's call id: {call}"))
}

#[tokio::test]
async fn crash_loop_50_kills() {
    let mut rng = Rng::for_test("crash_loop_50_kills");
    let repo = TestRepo::new();
    let side = repo.side_dir().join("steps.log");
    let mut script = Script::new();
    for n in 1..=STEPS {
        let sleep = ["0.02", "0.1", "0.3"][rng.index(0..3)];
        script = script.bash(
            format!("Step {n}."),
            format!(
                "echo step-{n} >> '{}'; sleep {sleep}{MARKER}",
                side.display()
            ),
        );
    }
    let script = script.answer("All steps done.");
    let model = script.write(&repo.root().join("steps.json"));

    let began = Instant::now();
    let mut run = repo
        .run()
        .model(&model)
        .env("KUGETSU_MAX_RESTARTS", "1000")
        .args(["--max-turns", &(STEPS + 1).to_string()])
        .prompt("Run every step of the script.")
        .timeout(Duration::from_secs(120))
        .spawn()
        .await;
    let mut kills = 0;
    loop {
        let event = run
            .wait_for_event("started or finished", Duration::from_secs(30), |e| {
                matches!(kind(e), "started" | "finished")
            })
            .await;
        if kind(&event) == "finished" || kills >= KILLS {
            break;
        }
        let pid = u32::try_from(event["pid"].as_u64().expect("started.pid")).unwrap();
        // A random moment of this worker's life: the point of the test, not a wait for
        // something to happen.
        tokio::time::sleep(Duration::from_millis(rng.in_range(20..251))).await;
        let is_worker = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("kugetsu-worker"));
        if is_worker && procs::alive(pid) {
            let _ = kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL);
            kills += 1;
        }
    }
    let steps_during_kills = run
        .events()
        .iter()
        .filter(|e| kind(e) == "tool_end")
        .count();
    let out = run.finish().await;
    eprintln!(
        "{kills} kills over {steps_during_kills} steps, {} restarts, {:?}",
        out.events.of_type("restarted").len(),
        began.elapsed()
    );
    assert!(
        kills >= KILLS,
        "the task finished after only {kills} kills: the script ran out of steps (seed {})",
        rng.seed()
    );
    out.assert_code(0).assert_status("completed");
    let finished = out.events.finished();
    assert_eq!(finished["result"], "All steps done.");

    // Every kill restarted the worker, and the count in `finished` agrees.
    let restarted = out.events.of_type("restarted");
    assert!(restarted.len() >= KILLS, "{} restarts", restarted.len());
    assert_eq!(finished["restarts"], restarted.len() as u64);
    let started = out.events.of_type("started");
    assert_eq!(started.len(), restarted.len() + 1);
    for (i, event) in started.iter().enumerate() {
        assert_eq!(event["attempt"], i as u64 + 1, "attempts count up: {event}");
    }

    // The side file: each step ran at most once, in order; a step the model saw succeed ran
    // exactly once.
    let text = std::fs::read_to_string(&side).expect("the steps wrote their file");
    let ran: Vec<usize> = text
        .lines()
        .map(|l| {
            l.strip_prefix("step-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("odd line {l:?} in the side file"))
        })
        .collect();
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for step in &ran {
        *counts.entry(*step).or_default() += 1;
    }
    let twice: Vec<(&usize, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "steps that ran twice: {twice:?}");
    assert!(
        ran.windows(2).all(|w| w[0] < w[1]),
        "a step ran after a later one (a re-run): {ran:?}"
    );
    // The journal reads back whole, every intent has exactly one result, and a step whose
    // result was ok (the model saw it succeed) ran exactly once.
    let records = journal::read_clean(&repo.task_dir(out.task_id()).join("journal.jsonl"));
    journal::assert_tool_calls_paired(&records);
    let results = journal::results(&records);
    let ok_steps: Vec<usize> = results
        .iter()
        .filter(|(_, r)| r.iter().all(|(ok, _)| *ok))
        .map(|(id, _)| step_of(id))
        .collect();
    for step in &ok_steps {
        assert_eq!(
            counts.get(step),
            Some(&1),
            "step {step} succeeded but ran {:?} times",
            counts.get(step)
        );
    }
    assert!(
        ran.iter().all(|s| *s <= STEPS),
        "a step past the script's last ran"
    );
    eprintln!(
        "{} steps completed, {} interrupted",
        ok_steps.len(),
        STEPS - ok_steps.len()
    );
    let intents = journal::intents(&records);
    assert_eq!(
        intents.len(),
        STEPS,
        "one intent per step\n{}",
        journal::describe(&records)
    );
    for (n, id) in intents.iter().enumerate() {
        assert_eq!(*id, call_id(n + 1, 1), "intents in step order");
    }
    let assistants = records
        .iter()
        .filter(|r| matches!(r, Record::Assistant { .. }))
        .count();
    assert_eq!(assistants, STEPS + 1, "one assistant message per turn");

    // Nothing any of the dead workers started is left.
    procs::wait_until_gone(MARKER, Duration::from_secs(10)).await;

    // Last, the event stream as a whole: one task, seq without gaps, and every tool_start
    // closed by one tool_end. (A kill landing while a tool result is being synced leaves a
    // tool_start that is never closed: see `resume::a_result_journaled_just_before_a_crash_
    // still_closes_its_tool_start`, which reproduces it deterministically.)
    let ends = out.events.tool_ends();
    for end in &ends {
        let step = step_of(str_of(end, "call_id"));
        if end["ok"] == Value::Bool(true) {
            assert_eq!(counts.get(&step), Some(&1), "step {step}: {end}");
        }
    }
    let mut ended: Vec<usize> = ends.iter().map(|e| step_of(str_of(e, "call_id"))).collect();
    ended.sort_unstable();
    let missing: Vec<usize> = (1..=STEPS).filter(|s| !ended.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "steps {missing:?} have a tool_start but no tool_end (their results are in the \
         journal: the crash came between the result's write and its event)"
    );
    assert_eq!(
        ended,
        (1..=STEPS).collect::<Vec<_>>(),
        "one tool_end per step"
    );
    out.events.assert_well_formed();
}

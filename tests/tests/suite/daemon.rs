//! The daemon end to end (see docs/daemon.md, docs/cli.md): `kugetsu serve` and its CLI clients, real
//! binaries over the real Unix socket — the pool and the priority queue, backpressure,
//! recovery after `kill -9`, memory limits, containment, hot reload, the socket's permissions,
//! protocol robustness, every client command, and systemd's notify protocol.
//!
//! Waits are bounded and event driven (subscriptions, the socket, `/proc`); tasks that must
//! stay running until the test says so wait on a [`Gate`].

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use kugetsu_tests::events::{kind, str_of};
use kugetsu_tests::harness::daemon::{RpcClient, WAIT};
use kugetsu_tests::{
    ApiError, Daemon, Events, FakeLlm, Gate, RunOutput, Script, TestRepo, Turn, procs,
};
use serde_json::{Value, json};

const MIB: u64 = 1024 * 1024;

/// A task that waits at `gate`, then ends with a final text.
fn blocker_model(repo: &TestRepo, gate: &Gate, name: &str) -> String {
    Script::new()
        .bash("Waiting for the gate.", &gate.wait_command())
        .text("Released.")
        .write(&repo.root().join("scripts").join(format!("{name}.json")))
}

/// A task that runs `command`, then ends with `Done.`.
fn bash_model(repo: &TestRepo, name: &str, command: &str) -> String {
    Script::new()
        .bash("Working.", command)
        .text("Done.")
        .write(&repo.root().join("scripts").join(format!("{name}.json")))
}

/// Waits on `events` (a subscription to every task) until `n` distinct tasks of `among` (all
/// when empty) have sent an event of type `kind_` from now on; returns them in arrival order.
async fn wait_tasks(
    events: &mut RpcClient,
    kind_: &str,
    n: usize,
    among: &[String],
) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    while seen.len() < n {
        let event = events
            .wait_event(&format!("{n} `{kind_}` events"), WAIT, |e| {
                kind(e) == kind_ && (among.is_empty() || among.iter().any(|t| *t == e["task"]))
            })
            .await;
        let task = str_of(&event, "task").to_owned();
        if !seen.contains(&task) {
            seen.push(task);
        }
    }
    seen
}

/// Tasks of a `ps --json` list with status `status`.
fn with_status<'a>(tasks: &'a [Value], status: &str) -> Vec<&'a str> {
    tasks
        .iter()
        .filter(|t| t["status"] == status)
        .map(|t| t["id"].as_str().unwrap_or_default())
        .collect()
}

/// A one-line error on stderr; returns it.
fn one_line_error(out: &RunOutput, code: i32) -> String {
    out.assert_code(code);
    let stderr = out.stderr.trim();
    assert_eq!(
        stderr.lines().count(),
        1,
        "{}: one line on stderr, got:\n{stderr}",
        out.description
    );
    stderr.to_owned()
}

/// The most tasks running at once according to their `started`/`finished` timestamps.
fn max_overlap(streams: &[Events]) -> usize {
    // RFC 3339 UTC with milliseconds sorts as text; at a tie an end counts before a start
    // (a slot is freed before it is reused).
    let mut points: Vec<(String, i32)> = Vec::new();
    for events in streams {
        for event in events.all() {
            match kind(event) {
                "started" => points.push((str_of(event, "ts").to_owned(), 1)),
                "finished" if !events.of_type("started").is_empty() => {
                    points.push((str_of(event, "ts").to_owned(), -1));
                }
                _ => {}
            }
        }
    }
    points.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, delta) in points {
        now += delta;
        max = max.max(now);
    }
    usize::try_from(max).unwrap_or(0)
}

// 1. The pool and the priority queue.
#[tokio::test]
async fn daemon_pool_runs_at_most_max_shadows_and_starts_by_priority_then_fifo() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo)
        .config("max_shadows = 4\n")
        .start()
        .await;
    let gate = Gate::new(repo.root(), "release-blockers");
    let blocker = blocker_model(&repo, &gate, "blocker");
    let work = bash_model(&repo, "work", "sleep 0.5; echo done");
    let mut events = daemon.subscribe_all().await;

    let mut names: HashMap<String, String> = HashMap::new();
    let mut blockers = Vec::new();
    for i in 0..4 {
        let id = daemon
            .submit(&["-m", &blocker], &format!("blocker {i}"))
            .await;
        names.insert(id.clone(), format!("blocker {i}"));
        blockers.push(id);
    }
    wait_tasks(&mut events, "started", 4, &blockers).await;

    // The pool is full: all 30 queue up, in an interleaved priority order.
    let poller = daemon.poll_ps();
    let priorities = ["low", "normal", "high"];
    let mut work_tasks: Vec<(String, &str)> = Vec::new();
    for n in 0..30 {
        let priority = priorities[n % 3];
        let name = format!("task {n} ({priority})");
        let id = daemon
            .submit(&["-m", &work, "--priority", priority], &name)
            .await;
        names.insert(id.clone(), name);
        work_tasks.push((id, priority));
    }
    let tasks = daemon.ps().await;
    assert_eq!(with_status(&tasks, "running").len(), 4, "{tasks:#?}");
    assert_eq!(with_status(&tasks, "queued").len(), 30, "{tasks:#?}");

    gate.open();
    let all: Vec<String> = blockers
        .iter()
        .cloned()
        .chain(work_tasks.iter().map(|(id, _)| id.clone()))
        .collect();
    wait_tasks(&mut events, "finished", all.len(), &all).await;
    let history = poller.stop().await;

    let mut streams = Vec::new();
    for id in &all {
        let events = daemon.logs(id).await;
        events.assert_well_formed();
        assert_eq!(events.status(), "completed", "{}: {events:?}", names[id]);
        streams.push(events);
    }
    for events in &streams[4..] {
        assert_eq!(events.finished()["result"], "Done.", "{events:?}");
        let bash = events.tool_end_of("bash", 0);
        assert_eq!(bash["ok"], true, "{bash}");
        assert!(str_of(bash, "output").contains("done"), "{bash}");
    }
    let overlap = max_overlap(&streams);
    assert!(
        overlap <= 4,
        "{overlap} tasks ran at once by their started/finished events (max_shadows 4)"
    );
    assert!(
        history.snapshots.len() >= 5,
        "too few ps snapshots to judge: {}",
        history.snapshots.len()
    );
    assert_eq!(
        history.max_running(),
        4,
        "`ps` never showed more (nor fewer) than max_shadows running at once"
    );
    // high before normal before low, FIFO within each.
    let mut expected = Vec::new();
    for priority in ["high", "normal", "low"] {
        expected.extend(
            work_tasks
                .iter()
                .filter(|(_, p)| *p == priority)
                .map(|(id, _)| id.clone()),
        );
    }
    history.assert_start_order(&expected, &names);
}

/// Many shadows of one repository starting at the same moment (a reload widening the pool)
/// each get their worktree: their `git worktree add`s must not trip over each other.
#[tokio::test]
async fn daemon_a_burst_of_starts_on_one_repository_all_get_worktrees() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo)
        .config("max_shadows = 1\n")
        .start()
        .await;
    let gate = Gate::new(repo.root(), "gate");
    let blocker = blocker_model(&repo, &gate, "blocker");
    let quick = bash_model(&repo, "quick", "echo quick");
    let mut events = daemon.subscribe_all().await;
    let first = daemon.submit(&["-m", &blocker], "Hold the pool.").await;
    wait_tasks(&mut events, "started", 1, std::slice::from_ref(&first)).await;
    let mut burst = Vec::new();
    for i in 0..16 {
        burst.push(daemon.submit(&["-m", &quick], &format!("quick {i}")).await);
    }
    let mark = daemon.stderr_mark();
    daemon.write_config("max_shadows = 17\n");
    daemon
        .wait_for_stderr(mark, "max_shadows 1 -> 17", Duration::from_secs(10))
        .await;
    let mut failures = Vec::new();
    for id in &burst {
        let events = daemon.wait_finished(id, WAIT).await;
        if events.status() != "completed" {
            failures.push(format!("{id}: {}", events.finished()["error"]));
        }
    }
    gate.open();
    assert!(
        failures.is_empty(),
        "{} of {} tasks started together failed:\n{}",
        failures.len(),
        burst.len(),
        failures.join("\n")
    );
    assert_eq!(
        daemon.wait_finished(&first, WAIT).await.status(),
        "completed"
    );
}

/// A shadow starts only while the host has memory for its limit (plus a reserve): a task
/// whose limit no host here can meet stays queued — also right after a restart — and goes
/// when cancelled, letting the queue move on.
#[tokio::test]
async fn daemon_holds_a_task_the_host_has_no_memory_for() {
    let repo = TestRepo::new();
    let mut daemon = Daemon::builder(&repo).start().await;
    let quick = bash_model(&repo, "quick", "echo quick");
    let mark = daemon.stderr_mark();
    let huge = daemon
        .submit(
            &["-m", &quick, "--mem-limit", "64TiB"],
            "Needs a bigger host.",
        )
        .await;
    daemon
        .wait_for_stderr(mark, "holding queued tasks", Duration::from_secs(10))
        .await;
    let tasks = daemon.ps().await;
    assert_eq!(with_status(&tasks, "queued"), [huge.as_str()], "{tasks:#?}");
    // It says why, in `ps` (its summary and the table) and in `show`.
    let waiting = tasks[0]["waiting"].as_str().unwrap_or_default();
    assert!(
        waiting.contains("can never start here") && waiting.contains("mem_limit"),
        "{tasks:#?}"
    );
    let ps = daemon.cli(["ps"]).await;
    ps.assert_code(0);
    assert!(
        ps.stdout
            .contains(&format!("queued task {huge} can never start here")),
        "{}",
        ps.stdout
    );
    let show = daemon.cli(["show", &huge]).await;
    show.assert_code(0);
    assert!(
        show.stdout.contains("waiting   can never start here"),
        "{}",
        show.stdout
    );
    // An absurd limit is refused at once, naming it.
    let refused = daemon
        .cli([
            "submit",
            "-m",
            &quick,
            "--mem-limit",
            "18446744073709551615",
            "No.",
        ])
        .await;
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(refused.stderr.contains("--mem-limit"), "{}", refused.stderr);

    daemon.kill9().await;
    let mark = daemon.stderr_mark();
    daemon.restart().await;
    // Either the daemon holds the task again, or it let it start: whichever comes first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.stderr()[mark..].contains("holding queued tasks") {
        let tasks = daemon.ps().await;
        if with_status(&tasks, "queued") != [huge.as_str()] {
            panic!(
                "after a restart the task started without memory for it: {tasks:#?}\n{:?}\n{}",
                daemon.logs(&huge).await,
                daemon.context(None)
            );
        }
        assert!(Instant::now() < deadline, "{}", daemon.context(None));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tasks = daemon.ps().await;
    assert_eq!(with_status(&tasks, "queued"), [huge.as_str()], "{tasks:#?}");

    let next = daemon.submit(&["-m", &quick], "Fits anywhere.").await;
    daemon.cli(["cancel", &huge]).await.assert_code(0);
    let events = daemon.wait_finished(&huge, WAIT).await;
    assert_eq!(
        events.types(),
        ["queued", "finished"],
        "never started: {events:?}"
    );
    assert_eq!(
        daemon.wait_finished(&next, WAIT).await.status(),
        "completed"
    );
}

// 2. Backpressure.
#[tokio::test]
async fn daemon_submit_to_a_full_queue_is_rejected_at_once_with_queue_full() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo)
        .config("max_shadows = 1\nqueue_capacity = 2\n")
        .start()
        .await;
    let gate = Gate::new(repo.root(), "gate");
    let blocker = blocker_model(&repo, &gate, "blocker");
    let mut events = daemon.subscribe_all().await;
    let running = daemon.submit(&["-m", &blocker], "runs").await;
    wait_tasks(&mut events, "started", 1, std::slice::from_ref(&running)).await;
    daemon.submit(&["-m", &blocker], "queued 1").await;
    daemon.submit(&["-m", &blocker], "queued 2").await;

    // Nothing will leave the queue until the gate opens: a blocking submit would hang here
    // until the run's timeout fails the test.
    for wait in [false, true] {
        let mut client = daemon
            .kugetsu()
            .args(["submit", "-C"])
            .arg(repo.repo())
            .args(["-m", &blocker])
            .timeout(Duration::from_secs(20))
            .text_stdout();
        if wait {
            client = client.arg("--wait");
        }
        let out = client.prompt("one too many").output().await;
        let stderr = one_line_error(&out, 75);
        assert!(stderr.contains("queue_full"), "{stderr}");
        assert!(out.stdout.trim().is_empty(), "stdout: {}", out.stdout);
    }

    let mut rpc = daemon.rpc().await;
    let error = rpc
        .call(
            "submit",
            json!({"prompt": "one too many", "repo": repo.repo(), "model": blocker}),
        )
        .await
        .expect_err("a submit to a full queue fails");
    assert_eq!(error["code"], -32001, "{error}");
    assert_eq!(error["message"], "queue_full", "{error}");

    let tasks = daemon.ps().await;
    assert_eq!(
        tasks.len(),
        3,
        "rejected submissions leave no task: {tasks:#?}"
    );
    assert_eq!(with_status(&tasks, "queued").len(), 2, "{tasks:#?}");
}

// 3. kill -9 of the daemon mid-run, and a restart.
#[tokio::test]
async fn daemon_killed_with_sigkill_resumes_running_tasks_and_keeps_the_queue_order() {
    let repo = TestRepo::new();
    let mut daemon = Daemon::builder(&repo)
        .config("max_shadows = 2\n")
        .start()
        .await;
    let side = repo.side_dir();
    let side_file = |name: &str| side.join(name).display().to_string();
    // Each task appends a line per step to its own side file; the running ones then sleep
    // (the sleep's marker is computed by the shell, so only the sleep process carries it).
    let script = |name: &str, nap: &str| {
        Script::new()
            .bash("Step one.", &format!("echo s1 >> {}{nap}", side_file(name)))
            .bash("Step two.", &format!("echo s2 >> {}", side_file(name)))
            .text("Done.")
            .write(&repo.root().join("scripts").join(format!("{name}.json")))
    };
    let mut names = HashMap::new();
    let mut running = Vec::new();
    for (i, name) in ["r0", "r1"].into_iter().enumerate() {
        let model = script(name, &format!("; sleep 30.43$((10+{i}))"));
        let id = daemon.submit(&["-m", &model], name).await;
        names.insert(id.clone(), name.to_owned());
        running.push(id);
    }
    for i in 0..2 {
        procs::wait_until_running(&format!("sleep 30.43{}", 10 + i), WAIT).await;
    }
    let mut queued = Vec::new();
    for (name, priority) in [
        ("q0", "low"),
        ("q1", "high"),
        ("q2", "normal"),
        ("q3", "high"),
    ] {
        let model = script(name, "");
        let id = daemon
            .submit(&["-m", &model, "--priority", priority], name)
            .await;
        names.insert(id.clone(), name.to_owned());
        queued.push(id);
    }
    let before = daemon.ps().await;
    let mut run_now = with_status(&before, "running");
    run_now.sort_unstable();
    let mut expected_running: Vec<&str> = running.iter().map(String::as_str).collect();
    expected_running.sort_unstable();
    assert_eq!(run_now, expected_running, "{before:#?}");
    assert_eq!(with_status(&before, "queued").len(), 4, "{before:#?}");
    let old_workers: Vec<u32> = daemon
        .processes()
        .into_iter()
        .filter(|p| p.ppid == daemon.pid())
        .map(|p| p.pid)
        .collect();
    assert_eq!(
        old_workers.len(),
        2,
        "two workers: {:#?}",
        daemon.processes()
    );

    daemon.kill9().await;
    // One shadow at a time from here on, so the start order is fully visible.
    daemon.write_config("max_shadows = 1\n");
    daemon.restart().await;
    let poller = daemon.poll_ps();
    let after = daemon.ps().await;
    assert_eq!(after.len(), 6, "every task is still known: {after:#?}");
    for task in &after {
        assert!(
            task["status"] == "queued" || task["status"] == "running",
            "nothing ended across the restart: {task}"
        );
    }
    // Nothing from before the kill runs beside the new daemon's shadows.
    daemon.wait_no_orphans(Duration::from_secs(10)).await;
    for pid in &old_workers {
        assert!(
            !daemon.processes().iter().any(|p| p.pid == *pid),
            "old worker {pid} survived"
        );
    }

    let all: Vec<String> = running.iter().chain(&queued).cloned().collect();
    let mut streams = HashMap::new();
    for id in &all {
        let events = daemon.wait_finished(id, WAIT).await;
        events.assert_well_formed();
        assert_eq!(events.status(), "completed", "{}: {events:?}", names[id]);
        streams.insert(id.clone(), events);
    }
    let history = poller.stop().await;
    for i in 0..2 {
        procs::wait_until_gone(&format!("sleep 30.43{}", 10 + i), Duration::from_secs(10)).await;
    }

    for id in &running {
        let events = &streams[id];
        let restarted = events.first("restarted");
        assert_eq!(restarted["attempt"], 2, "{events:?}");
        let attempts: Vec<&Value> = events
            .of_type("started")
            .iter()
            .map(|e| &e["attempt"])
            .collect();
        assert_eq!(attempts, [1, 2], "{events:?}");
        // The interrupted step was not run again; the model was told.
        let interrupted = events.tool_end_of("bash", 0);
        assert_eq!(interrupted["ok"], false, "{interrupted}");
    }
    for id in &queued {
        let events = &streams[id];
        assert!(events.of_type("restarted").is_empty(), "{events:?}");
        assert_eq!(events.of_type("started").len(), 1, "{events:?}");
    }
    for name in ["r0", "r1", "q0", "q1", "q2", "q3"] {
        assert_eq!(
            std::fs::read_to_string(side.join(name)).unwrap_or_default(),
            "s1\ns2\n",
            "each step of {name} ran exactly once"
        );
    }
    // The queue kept its order: high (FIFO), normal, low.
    let expected: Vec<String> = [1, 3, 2, 0].iter().map(|&i| queued[i].clone()).collect();
    history.assert_start_order(&expected, &names);
    daemon.wait_no_processes(Duration::from_secs(10)).await;
}

// 4. Memory: a tool far over the shadow's limit.
#[tokio::test]
async fn daemon_kills_a_tool_over_mem_limit_and_the_task_still_completes() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo)
        .config("mem_limit = \"64MiB\"\n")
        .start()
        .await;
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let model = Script::new()
        .bash(
            "Allocating.",
            &format!(
                "{python} -c 'b = bytearray(600 * 1024 * 1024); import time; time.sleep(60.7171)'"
            ),
        )
        .text("The allocation was stopped.")
        .write(&repo.root().join("scripts/hog.json"));
    let id = daemon.submit(&["-m", &model], "Allocate a lot.").await;
    let events = daemon.wait_finished(&id, WAIT).await;
    events.assert_well_formed();
    procs::wait_until_gone("60.7171", Duration::from_secs(10)).await;

    let limit = events.first("memory_limit");
    assert_eq!(limit["killed"], true, "{limit}");
    assert_eq!(limit["limit_bytes"], 64 * MIB, "{limit}");
    assert!(
        limit["rss_bytes"].as_u64().unwrap_or(0) > 64 * MIB,
        "{limit}"
    );
    let bash = events.tool_end_of("bash", 0);
    assert_eq!(bash["ok"], false, "the model gets a tool error: {bash}");
    assert!(
        events.of_type("restarted").is_empty(),
        "the tool, not the worker, was over: {events:?}"
    );
    assert_eq!(events.status(), "completed", "{events:?}");
    assert_eq!(events.finished()["result"], "The allocation was stopped.");
    let output = str_of(bash, "output").to_lowercase();
    assert!(
        output.contains("memory"),
        "the tool error says the call was killed for its memory: {bash}"
    );
}

/// Many sleeping tool processes share nearly all their pages: counted by PSS they fit a
/// modest limit, though their RSS summed per process is far over it (500 sleeps were once
/// counted as 585 MiB and killed). Neither the worker's watch nor the supervisor's sampler
/// kills them.
#[tokio::test]
async fn daemon_counts_shared_pages_of_many_sleeping_tools_once() {
    const SLEEPERS: usize = 300;
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo)
        .config("mem_limit = \"256MiB\"\n")
        .start()
        .await;
    // The sleeps end by themselves: long enough for many samples of both the worker (every
    // 100 ms) and the supervisor (every 500 ms), short enough for a test.
    let model = Script::new()
        .bash(
            "Sleeping in crowds.",
            &format!("for i in $(seq {SLEEPERS}); do sleep 8.5353 & done; wait; echo all slept"),
        )
        .text("Done.")
        .write(&repo.root().join("scripts/crowd.json"));
    let id = daemon.submit(&["-m", &model], "Sleep a lot.").await;
    let deadline = Instant::now() + WAIT;
    let sleepers = || {
        procs::matching("sleep 8.5353")
            .into_iter()
            .filter(|p| p.cmdline == "sleep 8.5353")
            .collect::<Vec<_>>()
    };
    while sleepers().len() < SLEEPERS {
        assert!(Instant::now() < deadline, "{}", daemon.context(Some(&id)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The test means something only if the per-process RSS sum is over the limit.
    let rss: u64 = sleepers()
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{}/statm", p.pid)).ok())
        .filter_map(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * 4096;
    assert!(
        rss > 256 * MIB,
        "{SLEEPERS} sleeps have only {} MiB of RSS",
        rss / MIB
    );
    let events = daemon.wait_finished(&id, WAIT).await;
    procs::wait_until_gone("8.5353", Duration::from_secs(10)).await;
    assert!(
        events.of_type("memory_limit").is_empty(),
        "RSS {} MiB: {events:?}",
        rss / MIB
    );
    let bash = events.tool_end_of("bash", 0);
    assert_eq!(bash["ok"], true, "{bash}");
    assert!(str_of(bash, "output").contains("all slept"), "{bash}");
    assert_eq!(events.status(), "completed", "{events:?}");
}

// 5. Containment: processes that leave the tool's process group and session.
#[tokio::test]
async fn daemon_leaves_no_setsid_escapee_behind_after_finish_or_cancel() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo)
        .config("max_shadows = 2\n")
        .start()
        .await;
    let gate = Gate::new(repo.root(), "gate");
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    // Markers are assembled at run time, so only the escapees' command lines hold them.
    let double_fork = format!(
        "{python} -c 'import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        \
         os.execvp(\"sleep\", [\"sleep\", \"300.91\" + \"92\"])\n    os._exit(0)\nos.wait()' \
         </dev/null >/dev/null 2>&1"
    );
    let finishing = bash_model(
        &repo,
        "finishing",
        &format!(
            "setsid sh -c 'exec sleep 300.91$((90+1))' </dev/null >/dev/null 2>&1 & {double_fork}; {}",
            gate.wait_command()
        ),
    );
    let cancelled = bash_model(
        &repo,
        "cancelled",
        "setsid sh -c 'exec sleep 300.91$((90+3))' </dev/null >/dev/null 2>&1 & sleep 300.91$((90+4))",
    );
    let a = daemon
        .submit(&["-m", &finishing], "Escape, then finish.")
        .await;
    let b = daemon
        .submit(&["-m", &cancelled], "Escape, then wait.")
        .await;
    for marker in ["300.9191", "300.9192", "300.9193", "300.9194"] {
        procs::wait_until_running(marker, WAIT).await;
    }

    let out = daemon.cli(["cancel", &b]).await;
    out.assert_code(0);
    let events = daemon.wait_finished(&b, WAIT).await;
    assert_eq!(events.status(), "cancelled", "{events:?}");
    procs::wait_until_gone("300.9193", Duration::from_secs(10)).await;
    procs::wait_until_gone("300.9194", Duration::from_secs(10)).await;

    gate.open();
    let events = daemon.wait_finished(&a, WAIT).await;
    assert_eq!(events.status(), "completed", "{events:?}");
    procs::wait_until_gone("300.9191", Duration::from_secs(10)).await;
    procs::wait_until_gone("300.9192", Duration::from_secs(10)).await;
    daemon.wait_no_processes(Duration::from_secs(10)).await;
}

// 6. Config hot reload.
#[tokio::test]
async fn daemon_reloads_its_config_and_rejects_a_bad_one_keeping_the_old() {
    let repo = TestRepo::new();
    let mut daemon = Daemon::builder(&repo)
        .config("max_shadows = 1\n")
        .start()
        .await;
    let gate = Gate::new(repo.root(), "gate");
    let blocker = blocker_model(&repo, &gate, "blocker");
    let mut events = daemon.subscribe_all().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            daemon
                .submit(&["-m", &blocker], &format!("blocker {i}"))
                .await,
        );
    }
    wait_tasks(&mut events, "started", 1, &ids).await;
    let tasks = daemon.ps().await;
    assert_eq!(with_status(&tasks, "running").len(), 1, "{tasks:#?}");

    let mark = daemon.stderr_mark();
    daemon.write_config("max_shadows = 2\n");
    let said = daemon
        .wait_for_stderr(mark, "max_shadows 1 -> 2", Duration::from_secs(10))
        .await;
    assert!(said.contains("reload"), "{said}");
    wait_tasks(&mut events, "started", 1, &ids).await;

    let mark = daemon.stderr_mark();
    daemon.write_config("max_shadows = \"lots\"\n");
    let said = daemon
        .wait_for_stderr(mark, "rejected", Duration::from_secs(10))
        .await;
    let config = daemon.config_path().display().to_string();
    assert!(
        said.contains(&config) && said.contains("lots"),
        "the rejection names the file and the bad value: {said}"
    );
    daemon.assert_alive();
    let tasks = daemon.ps().await;
    assert_eq!(with_status(&tasks, "running").len(), 2, "{tasks:#?}");
    assert_eq!(with_status(&tasks, "queued").len(), 1, "{tasks:#?}");

    // The setting in force was still 2.
    let mark = daemon.stderr_mark();
    daemon.write_config("max_shadows = 3\n");
    daemon
        .wait_for_stderr(mark, "max_shadows 2 -> 3", Duration::from_secs(10))
        .await;
    wait_tasks(&mut events, "started", 1, &ids).await;
    gate.open();
    for id in &ids {
        assert_eq!(daemon.wait_finished(id, WAIT).await.status(), "completed");
    }
}

// 7. The socket.
#[tokio::test]
async fn daemon_socket_is_private_to_its_user_and_owned_by_one_daemon() {
    let repo = TestRepo::new();
    // A directory everyone may enter, so only the socket's own mode keeps others out.
    let dir = tempfile::Builder::new()
        .prefix("kugetsu-sock-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("kugetsu.sock");
    let mut daemon = Daemon::builder(&repo).socket(&socket).start().await;

    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{meta:?}");

    let mut nobody = daemon.command();
    nobody
        .arg("ps")
        .uid(65534)
        .gid(65534)
        .current_dir("/")
        .env("HOME", "/");
    let out = tokio::time::timeout(Duration::from_secs(20), nobody.output())
        .await
        .expect("kugetsu ps as nobody finishes")
        .expect("run kugetsu ps as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);

    let other_state = repo.root().join("other-state");
    let second = daemon
        .kugetsu()
        .args(["serve", "--state-dir"])
        .arg(&other_state)
        .timeout(Duration::from_secs(20))
        .text_stdout()
        .output()
        .await;
    let stderr = one_line_error(&second, 2);
    assert!(stderr.contains("already"), "{stderr}");
    daemon.assert_alive();
    assert!(socket.exists(), "the first daemon's socket is still there");
    daemon.cli(["ps"]).await.assert_code(0);
}

// 8. Protocol robustness.
#[tokio::test]
async fn daemon_answers_bad_input_with_json_rpc_errors_and_never_dies() {
    let repo = TestRepo::new();
    let mut daemon = Daemon::builder(&repo).start().await;
    let mut rpc = daemon.rpc().await;

    let expect_error = |response: &Value, code: i64| {
        assert_eq!(response["jsonrpc"], "2.0", "{response}");
        assert_eq!(response["error"]["code"], code, "{response}");
        assert!(response["error"]["message"].is_string(), "{response}");
        assert!(response.get("result").is_none(), "{response}");
    };

    rpc.send_line(b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": ")
        .await;
    let response = rpc.next_response().await;
    expect_error(&response, -32700);
    assert_eq!(response["id"], Value::Null, "{response}");
    assert!(rpc.call("list", json!({})).await.unwrap()["tasks"].is_array());

    let pad = "x".repeat(2 * 1024 * 1024);
    let huge = format!(r#"{{"jsonrpc":"2.0","id":99,"method":"list","params":{{"pad":"{pad}"}}}}"#);
    rpc.send_line(huge.as_bytes()).await;
    let response = rpc.next_response().await;
    expect_error(&response, -32600);
    assert!(rpc.call("list", json!({})).await.unwrap()["tasks"].is_array());

    let error = rpc.call("frobnicate", json!({})).await.unwrap_err();
    assert_eq!(error["code"], -32601, "{error}");
    for (method, params) in [
        ("submit", json!({"prompt": 5})),
        (
            "submit",
            json!({"prompt": "p", "repo": "/tmp", "colour": "red"}),
        ),
        ("get", json!({})),
        ("get", Value::Null),
        ("cancel", json!({"task": 123})),
        ("steer", json!({"task": "x"})),
        ("subscribe", json!({"after_seq": "soon"})),
        ("shutdown", json!({"drain": "yes"})),
        ("events", json!([1, 2])),
    ] {
        let error = rpc.call(method, params.clone()).await.unwrap_err();
        assert_eq!(error["code"], -32602, "{method} {params}: {error}");
    }
    let error = rpc.call("get", json!({"task": "nope"})).await.unwrap_err();
    assert_eq!(error["code"], -32004, "{error}");
    assert_eq!(error["message"], "not_found", "{error}");
    let error = rpc
        .call("submit", json!({"prompt": "p", "repo": "relative/dir"}))
        .await
        .unwrap_err();
    assert_eq!(error["code"], -32602, "{error}");

    for line in [
        &br#"{"jsonrpc":"1.0","id":7,"method":"list"}"#[..],
        br#"{"id":8,"method":"list"}"#,
        br#"{"jsonrpc":"2.0","id":9}"#,
        b"[]",
        b"\"a string\"",
        b"42",
    ] {
        rpc.send_line(line).await;
        let response = rpc.next_response().await;
        expect_error(&response, -32600);
    }
    rpc.send_line(b"\xff\xfe{\"not\": utf8}").await;
    let response = rpc.next_response().await;
    assert!(
        response["error"]["code"] == -32700 || response["error"]["code"] == -32600,
        "{response}"
    );
    // A notification (no id) gets no answer; the next request still does.
    rpc.send_line(br#"{"jsonrpc":"2.0","method":"list"}"#).await;
    assert!(rpc.call("list", json!({})).await.unwrap()["tasks"].is_array());

    // Clients that vanish mid-line or before reading their answer.
    let mut rude = daemon.rpc().await;
    rude.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"meth").await;
    drop(rude);
    let mut rude = daemon.rpc().await;
    rude.send(
        "submit",
        json!({"prompt": "p", "repo": repo.repo(), "model": "scripted/demo"}),
    )
    .await;
    drop(rude);
    let mut rude = daemon.rpc().await;
    rude.send_raw(&vec![b'{'; 3 * 1024 * 1024]).await;
    drop(rude);

    daemon.assert_alive();
    let mut fresh = daemon.rpc().await;
    assert!(fresh.call("list", json!({})).await.unwrap()["tasks"].is_array());
    assert!(rpc.call("list", json!({})).await.unwrap()["tasks"].is_array());
}

/// Queued tasks whose `task.json` was damaged, removed or forged (an `id` of `../../..`)
/// while the daemon was down are not dropped silently: the log names each and its file, and
/// each ends `failed` with the reason in its own events, shown by `ps` and `show` — also after
/// another restart. The rest of the queue runs.
#[tokio::test]
async fn daemon_reports_damaged_records_of_queued_tasks_and_runs_the_rest() {
    let repo = TestRepo::new();
    let mut daemon = Daemon::builder(&repo)
        .config("max_shadows = 1\n")
        .start()
        .await;
    let gate = Gate::new(repo.root(), "gate");
    let blocker = blocker_model(&repo, &gate, "blocker");
    let quick = bash_model(&repo, "quick", "echo quick");
    let mut events = daemon.subscribe_all().await;
    let first = daemon.submit(&["-m", &blocker], "Hold the pool.").await;
    wait_tasks(&mut events, "started", 1, std::slice::from_ref(&first)).await;
    let garbled = daemon.submit(&["-m", &quick], "garbled").await;
    let missing = daemon.submit(&["-m", &quick], "missing").await;
    let forged = daemon.submit(&["-m", &quick], "forged").await;
    let fine = daemon.submit(&["-m", &quick], "fine").await;
    drop(events);
    daemon.kill9().await;

    let tasks_dir = daemon.state_dir().join("tasks");
    let record = |id: &str| tasks_dir.join(id).join("task.json");
    std::fs::write(record(&garbled), b"{\"id\": \"trunc").unwrap();
    std::fs::remove_file(record(&missing)).unwrap();
    let mut claimed: Value =
        serde_json::from_slice(&std::fs::read(record(&forged)).unwrap()).unwrap();
    claimed["id"] = json!("../../..");
    std::fs::write(record(&forged), claimed.to_string()).unwrap();

    let mark = daemon.stderr_mark();
    daemon.restart().await;
    // The socket is bound before recovery runs; "serving on" follows it.
    daemon
        .wait_for_stderr(mark, "kugetsu: serving on", Duration::from_secs(10))
        .await;
    let log = daemon.stderr()[mark..].to_owned();
    for id in [&garbled, &missing, &forged] {
        assert!(
            log.contains(&format!("queued task {id}")),
            "{id} not reported:\n{log}"
        );
    }
    assert!(
        log.contains(&record(&forged).display().to_string()) && log.contains("../../.."),
        "{log}"
    );
    assert!(
        log.contains(&record(&garbled).display().to_string()),
        "{log}"
    );
    gate.open();
    assert_eq!(
        daemon.wait_finished(&fine, WAIT).await.status(),
        "completed"
    );
    assert_eq!(
        daemon.wait_finished(&first, WAIT).await.status(),
        "completed"
    );
    for round in ["after the restart", "after one more"] {
        let tasks = daemon.ps().await;
        let failed = with_status(&tasks, "failed");
        for id in [&garbled, &missing, &forged] {
            assert!(failed.contains(&id.as_str()), "{round}: {id}: {tasks:#?}");
            let task = tasks.iter().find(|t| t["id"] == **id).unwrap();
            let error = task["error"].as_str().unwrap_or_default();
            assert!(error.contains("damaged task record"), "{round}: {task}");
        }
        let show = daemon.cli(["show", &forged]).await;
        show.assert_code(0);
        assert!(show.stdout.contains("../../.."), "{round}: {}", show.stdout);
        let events = std::fs::read_to_string(
            daemon
                .state_dir()
                .join("tasks")
                .join(&garbled)
                .join("events.jsonl"),
        )
        .unwrap();
        let last: Value = serde_json::from_str(events.lines().last().unwrap()).unwrap();
        assert_eq!(last["type"], "finished", "{last}");
        assert_eq!(last["status"], "failed", "{last}");
        daemon.kill9().await;
        daemon.restart().await;
    }
    daemon.assert_alive();
}

/// JSON-RPC 2.0 batches: an array of requests gets an array of responses (notifications
/// leave no entry, invalid members get an Invalid Request each, `subscribe` is refused inside
/// one); `"id": null` is a request and gets an answer with `id: null`.
#[tokio::test]
async fn daemon_answers_batches_and_null_ids_as_json_rpc_says() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo).start().await;
    let mut rpc = daemon.rpc().await;

    rpc.send_line(br#"{"jsonrpc":"2.0","id":null,"method":"list"}"#)
        .await;
    let response = rpc.next_response().await;
    assert_eq!(response["id"], Value::Null, "{response}");
    assert!(response["result"]["tasks"].is_array(), "{response}");

    rpc.send_line(
        br#"[{"jsonrpc":"2.0","id":1,"method":"list"},
             {"jsonrpc":"2.0","method":"list"},
             {"jsonrpc":"2.0","id":"two","method":"get","params":{"task":"nope"}},
             7,
             {"jsonrpc":"2.0","id":3,"method":"frobnicate"},
             {"jsonrpc":"2.0","id":4,"method":"subscribe"}]"#
            .iter()
            .filter(|b| **b != b'\n')
            .copied()
            .collect::<Vec<u8>>()
            .as_slice(),
    )
    .await;
    let response = rpc.next_response().await;
    let answers = response.as_array().unwrap_or_else(|| panic!("{response}"));
    assert_eq!(answers.len(), 5, "{response}");
    assert_eq!(answers[0]["id"], 1, "{response}");
    assert!(answers[0]["result"]["tasks"].is_array(), "{response}");
    assert_eq!(answers[1]["id"], "two", "{response}");
    assert_eq!(answers[1]["error"]["code"], -32004, "{response}");
    assert_eq!(answers[2]["id"], Value::Null, "{response}");
    assert_eq!(answers[2]["error"]["code"], -32600, "{response}");
    assert_eq!(answers[3]["id"], 3, "{response}");
    assert_eq!(answers[3]["error"]["code"], -32601, "{response}");
    assert_eq!(answers[4]["id"], 4, "{response}");
    assert_eq!(answers[4]["error"]["code"], -32600, "{response}");

    rpc.send_line(b"[1, 2, 3]").await;
    let response = rpc.next_response().await;
    let answers = response.as_array().unwrap_or_else(|| panic!("{response}"));
    assert_eq!(answers.len(), 3, "{response}");
    for answer in answers {
        assert_eq!(answer["error"]["code"], -32600, "{response}");
        assert_eq!(answer["id"], Value::Null, "{response}");
    }

    // A batch of notifications only gets nothing; the next request is answered as usual.
    rpc.send_line(br#"[{"jsonrpc":"2.0","method":"list"},{"jsonrpc":"2.0","method":"list"}]"#)
        .await;
    assert!(rpc.call("list", json!({})).await.unwrap()["tasks"].is_array());

    let over = format!(
        "[{}]",
        vec![r#"{"jsonrpc":"2.0","method":"list"}"#; 1025].join(",")
    );
    rpc.send_line(over.as_bytes()).await;
    let response = rpc.next_response().await;
    assert_eq!(response["error"]["code"], -32600, "{response}");
    assert_eq!(response["id"], Value::Null, "{response}");
}

// 9. Clients.
#[tokio::test]
async fn daemon_clients_without_a_daemon_exit_2_with_one_line() {
    let repo = TestRepo::new();
    let socket = repo.root().join("nobody-listens.sock");
    let client = repo
        .kugetsu()
        .env("KUGETSU_SOCKET", &socket)
        .timeout(Duration::from_secs(20))
        .text_stdout();
    let repo_dir = repo.repo().display().to_string();
    let commands: [&[&str]; 10] = [
        &["ps"],
        &["ps", "--json"],
        &["submit", "-C", &repo_dir, "-m", "scripted/demo", "hello"],
        &[
            "submit",
            "--wait",
            "-C",
            &repo_dir,
            "-m",
            "scripted/demo",
            "hello",
        ],
        &["logs", "t1"],
        &["show", "t1"],
        &["cancel", "t1"],
        &["steer", "t1", "hi"],
        &["top", "--once"],
        &["shutdown"],
    ];
    for args in commands {
        let out = client.clone().args(args).output().await;
        let stderr = one_line_error(&out, 2);
        assert!(stderr.contains("no kugetsu daemon"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
}

#[tokio::test]
async fn daemon_submit_wait_json_streams_events_and_exits_by_status() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    server.push(ApiError::unauthorized());
    let daemon = Daemon::builder(&repo).llm(&server).start().await;
    let model = bash_model(&repo, "ok", "echo hello from the shadow");

    let out = daemon
        .kugetsu()
        .args(["submit", "--wait", "--json", "-m", &model, "-C"])
        .arg(repo.repo())
        .prompt("Say hello.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let finished = out.finished();
    assert_eq!(finished["result"], "Done.");
    assert_eq!(out.events.types()[0], "queued");
    let bash = out.events.tool_end_of("bash", 0);
    assert!(
        str_of(bash, "output").contains("hello from the shadow"),
        "{bash}"
    );

    let out = daemon
        .kugetsu()
        .args(["submit", "--wait", "--json"])
        .llm(&server)
        .arg("-C")
        .arg(repo.repo())
        .prompt("This one fails.")
        .output()
        .await;
    out.assert_code(1).assert_status("failed");
    out.finished();
}

#[tokio::test]
async fn daemon_logs_show_top_and_logs_follow() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo).start().await;
    let gate = Gate::new(repo.root(), "gate");
    let blocker = blocker_model(&repo, &gate, "blocker");
    let id = daemon.submit(&["-m", &blocker], "Wait for the gate.").await;
    let mut rpc = daemon.rpc().await;
    rpc.call("subscribe", json!({"task": id})).await.unwrap();
    rpc.wait_event("tool_start", WAIT, |e| kind(e) == "tool_start")
        .await;

    let so_far = daemon.logs(&id).await;
    assert_eq!(&so_far.types()[..2], ["queued", "started"], "{so_far:?}");
    assert!(so_far.types().contains(&"tool_start"), "{so_far:?}");
    assert!(so_far.of_type("finished").is_empty(), "{so_far:?}");
    for (i, event) in so_far.all().iter().enumerate() {
        assert_eq!(event["seq"], i + 1, "{so_far:?}");
        assert_eq!(event["task"], id.as_str());
    }

    let show = daemon.cli(["show", &id]).await;
    show.assert_code(0);
    assert!(
        show.stdout.contains(&id) && show.stdout.contains("running"),
        "{}",
        show.stdout
    );
    let show = daemon.cli(["show", "--json", &id]).await;
    show.assert_code(0);
    let summary: Value = serde_json::from_str(show.stdout.trim()).unwrap();
    assert_eq!(summary["status"], "running", "{summary}");
    assert_eq!(summary["attempt"], 1, "{summary}");
    let top = daemon.cli(["top", "--once"]).await;
    top.assert_code(0);
    assert!(top.stdout.contains(&id), "{}", top.stdout);
    assert!(top.stdout.contains("1 running"), "{}", top.stdout);
    let ps = daemon.cli(["ps"]).await;
    ps.assert_code(0);
    assert!(ps.stdout.contains(&id), "{}", ps.stdout);

    let follow = daemon
        .kugetsu()
        .args(["logs", "-f", "--json", &id])
        .spawn()
        .await;
    gate.open();
    let out = follow.finish().await;
    out.assert_code(0).assert_status("completed");
    out.finished();
    assert!(out.events.len() > so_far.len(), "{:?}", out.events);
    assert_eq!(out.events.all()[..so_far.len()], *so_far.all());
    let full = daemon.logs(&id).await;
    assert_eq!(full.all(), out.events.all());
}

#[tokio::test]
async fn daemon_cancel_of_a_queued_and_of_a_running_task() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo)
        .config("max_shadows = 1\n")
        .start()
        .await;
    let sleeper = bash_model(&repo, "sleeper", "sleep 300.95$((90+5))");
    let running = daemon.submit(&["-m", &sleeper], "Sleep.").await;
    let queued = daemon.submit(&["-m", &sleeper], "Sleep later.").await;
    procs::wait_until_running("300.9595", WAIT).await;

    let out = daemon.cli(["cancel", &queued]).await;
    out.assert_code(0);
    assert!(out.stdout.contains("cancelled"), "{}", out.stdout);
    let events = daemon.wait_finished(&queued, WAIT).await;
    events.assert_well_formed();
    assert_eq!(events.types(), ["queued", "finished"], "{events:?}");
    assert_eq!(events.status(), "cancelled");

    let out = daemon.cli(["cancel", &running]).await;
    out.assert_code(0);
    let events = daemon.wait_finished(&running, WAIT).await;
    events.assert_well_formed();
    assert_eq!(events.status(), "cancelled", "{events:?}");
    procs::wait_until_gone("300.9595", Duration::from_secs(10)).await;
    daemon.wait_no_processes(Duration::from_secs(10)).await;

    // Cancelling what already ended, or what never existed, fails.
    let again = daemon.cli(["cancel", &running]).await;
    assert_ne!(again.code, Some(0), "{again:?}");
    one_line_error(&again, again.code.unwrap_or(-1));
    let unknown = daemon.cli(["cancel", "t0000000000000"]).await;
    one_line_error(&unknown, 2);
    let tasks = daemon.ps().await;
    assert_eq!(with_status(&tasks, "cancelled").len(), 2, "{tasks:#?}");
}

#[tokio::test]
async fn daemon_steer_of_a_running_task_reaches_the_model() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    let gate = Gate::new(repo.root(), "gate");
    server.push(
        Turn::text("Waiting a moment.").tool_call("bash", json!({"command": gate.wait_command()})),
    );
    server.push(Turn::text("Using the blue one."));
    let daemon = Daemon::builder(&repo).llm(&server).start().await;
    let id = daemon
        .kugetsu()
        .args(["submit", "--json", "-C"])
        .arg(repo.repo())
        .llm(&server)
        .prompt("Pick a colour.")
        .text_stdout()
        .output()
        .await;
    id.assert_code(0);
    let id: Value = serde_json::from_str(id.stdout.trim()).unwrap();
    let id = id["task"].as_str().unwrap().to_owned();
    let mut rpc = daemon.rpc().await;
    rpc.call("subscribe", json!({"task": id})).await.unwrap();
    rpc.wait_event("tool_start", WAIT, |e| kind(e) == "tool_start")
        .await;

    let text = "Prefer the blue one, please.";
    let out = daemon.cli(["steer", &id, text]).await;
    out.assert_code(0);
    gate.open();
    let events = daemon.wait_finished(&id, WAIT).await;
    events.assert_well_formed();
    assert_eq!(events.status(), "completed", "{events:?}");
    let steered = events.first("steered");
    assert_eq!(steered["text"], text, "{steered}");
    let types = events.types();
    let at = types.iter().position(|t| *t == "steered").unwrap();
    assert!(
        types[at..].contains(&"turn_start"),
        "steered before the next turn: {events:?}"
    );
    assert_eq!(server.request_count(), 2);
    assert!(
        server.request(2).json().to_string().contains(text),
        "the next request carries the steering text: {}",
        server.request(2).json()
    );
    assert!(!server.request(1).json().to_string().contains(text));
}

#[tokio::test]
async fn daemon_shutdown_stops_it_and_a_restart_resumes_the_detached_task() {
    let repo = TestRepo::new();
    let mut daemon = Daemon::builder(&repo).start().await;
    let gate = Gate::new(repo.root(), "gate");
    let blocker = blocker_model(&repo, &gate, "blocker");
    let id = daemon.submit(&["-m", &blocker], "Wait for the gate.").await;
    let mut rpc = daemon.rpc().await;
    rpc.call("subscribe", json!({"task": id})).await.unwrap();
    rpc.wait_event("tool_start", WAIT, |e| kind(e) == "tool_start")
        .await;

    let out = daemon.cli(["shutdown"]).await;
    out.assert_code(0);
    let status = daemon.wait_exit(WAIT).await;
    assert!(status.success(), "{status}\n{}", daemon.context(None));
    assert!(!daemon.socket().exists(), "the socket is removed");
    daemon.wait_no_processes(Duration::from_secs(10)).await;

    daemon.restart().await;
    gate.open();
    let events = daemon.wait_finished(&id, WAIT).await;
    events.assert_well_formed();
    assert_eq!(events.status(), "completed", "{events:?}");
    assert_eq!(events.first("restarted")["attempt"], 2, "{events:?}");
}

#[tokio::test]
async fn daemon_shutdown_of_an_idle_daemon_reports_success() {
    let repo = TestRepo::new();
    let mut daemon = Daemon::builder(&repo).start().await;
    let out = daemon.cli(["shutdown"]).await;
    let status = daemon.wait_exit(WAIT).await;
    assert!(status.success(), "{status}");
    assert!(!daemon.socket().exists(), "the socket is removed");
    out.assert_code(0);
    assert!(out.stdout.contains("stopped"), "{}", out.stdout);
}

#[tokio::test]
async fn daemon_shutdown_drain_finishes_the_queue_first() {
    let repo = TestRepo::new();
    let mut daemon = Daemon::builder(&repo)
        .config("max_shadows = 1\n")
        .start()
        .await;
    let gate = Gate::new(repo.root(), "gate");
    let blocker = blocker_model(&repo, &gate, "blocker");
    let quick = bash_model(&repo, "quick", "echo quick");
    let mut events = daemon.subscribe_all().await;
    let first = daemon.submit(&["-m", &blocker], "Wait for the gate.").await;
    wait_tasks(&mut events, "started", 1, std::slice::from_ref(&first)).await;
    let second = daemon.submit(&["-m", &quick], "Quick one.").await;
    let third = daemon.submit(&["-m", &quick], "Quick two.").await;

    let out = daemon.cli(["shutdown", "--drain"]).await;
    out.assert_code(0);
    // No new work while draining ...
    let late = daemon
        .kugetsu()
        .args(["submit", "-C"])
        .arg(repo.repo())
        .args(["-m", &quick])
        .prompt("Too late.")
        .text_stdout()
        .output()
        .await;
    assert_ne!(late.code, Some(0), "{late:?}");
    one_line_error(&late, late.code.unwrap_or(-1));
    let mut rpc = daemon.rpc().await;
    let error = rpc
        .call(
            "submit",
            json!({"prompt": "late", "repo": repo.repo(), "model": quick}),
        )
        .await
        .unwrap_err();
    assert_eq!(error["code"], -32002, "{error}");
    assert_eq!(error["message"], "shutting_down", "{error}");
    drop(rpc);
    // ... but what was queued still runs.
    daemon.assert_alive();
    gate.open();
    let status = daemon.wait_exit(WAIT).await;
    assert!(status.success(), "{status}");
    assert!(!daemon.socket().exists(), "the socket is removed");
    for id in [&first, &second, &third] {
        let log = std::fs::read_to_string(repo.task_dir(id).join("events.jsonl")).unwrap();
        let last: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!(last["type"], "finished", "{id}: {log}");
        assert_eq!(last["status"], "completed", "{id}: {log}");
    }
}

#[tokio::test]
async fn daemon_clean_removes_finished_worktrees_and_keeps_branches() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo).start().await;
    let gate = Gate::new(repo.root(), "gate");
    let blocker = blocker_model(&repo, &gate, "blocker");
    let writer = bash_model(&repo, "writer", "echo made by a shadow > made.txt");
    let done = daemon.submit(&["-m", &writer], "Make a file.").await;
    assert_eq!(
        daemon.wait_finished(&done, WAIT).await.status(),
        "completed"
    );
    let busy = daemon.submit(&["-m", &blocker], "Wait for the gate.").await;
    let mut rpc = daemon.rpc().await;
    rpc.call("subscribe", json!({"task": busy})).await.unwrap();
    rpc.wait_event("started", WAIT, |e| kind(e) == "started")
        .await;
    assert!(repo.worktree(&done).is_dir());

    let out = daemon.cli(["clean"]).await;
    out.assert_code(0);
    assert!(out.stdout.contains(&done), "{}", out.stdout);
    assert!(!out.stdout.contains(&busy), "{}", out.stdout);
    assert!(
        !repo.worktree(&done).exists(),
        "the finished task's worktree is gone"
    );
    assert!(
        repo.worktree(&busy).is_dir(),
        "a running task's worktree stays"
    );
    let branch = format!("kugetsu/{done}");
    assert!(repo.has_branch(&branch), "{:?}", repo.branches());
    assert_eq!(
        repo.git(&["show", &format!("{branch}:made.txt")]),
        "made by a shadow\n"
    );
    let worktrees = repo.git(&["worktree", "list", "--porcelain"]);
    assert!(!worktrees.contains(&done), "{worktrees}");
    // The task itself is still known.
    let show = daemon.cli(["show", "--json", &done]).await;
    show.assert_code(0);
    gate.open();
    assert_eq!(
        daemon.wait_finished(&busy, WAIT).await.status(),
        "completed"
    );
}

// 10. systemd's notify protocol.
#[tokio::test]
async fn daemon_speaks_sd_notify_and_keeps_it_from_its_shadows() {
    let repo = TestRepo::new();
    let notify_path = repo.root().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
    let mut daemon = Daemon::builder(&repo)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .spawn();

    let mut messages: Vec<String> = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let Some(message) = recv_notify(&notify, deadline).await else {
            panic!("no READY=1; got {messages:?}\n{}", daemon.context(None));
        };
        let ready = message.lines().any(|l| l == "READY=1");
        messages.push(message);
        if ready {
            break;
        }
    }
    // Ready means ready: the socket accepts connections already.
    let mut rpc = RpcClient::connect(daemon.socket())
        .await
        .expect("the socket accepts connections once READY=1 is sent");
    assert!(rpc.call("list", json!({})).await.unwrap()["tasks"].is_array());
    daemon.wait_ready().await;

    // The task runs until the test has seen the status say so.
    let gate = Gate::new(repo.root(), "gate");
    let model = bash_model(
        &repo,
        "env",
        &format!(
            "env; echo ---worker---; tr '\\0' '\\n' < /proc/$PPID/environ; {}",
            gate.wait_command()
        ),
    );
    // Without the sandbox, so the tool can read its parent's environment at all.
    let id = daemon
        .submit(&["-m", &model, "--sandbox", "off"], "Show the environment.")
        .await;
    let mut pings = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while pings < 2 || !messages.iter().any(|m| m.contains("STATUS=1 running")) {
        let Some(message) = recv_notify(&notify, deadline).await else {
            panic!("notify: {pings} WATCHDOG=1 and no running STATUS; got {messages:?}");
        };
        pings += message.lines().filter(|l| *l == "WATCHDOG=1").count();
        messages.push(message);
    }
    assert!(
        messages
            .iter()
            .any(|m| m.lines().any(|l| l.starts_with("STATUS="))),
        "{messages:?}"
    );

    gate.open();
    let events = daemon.wait_finished(&id, WAIT).await;
    assert_eq!(events.status(), "completed", "{events:?}");
    let output = str_of(events.tool_end_of("bash", 0), "output").to_owned();
    let (tool_env, worker_env) = output
        .split_once("---worker---")
        .unwrap_or_else(|| panic!("{output}"));
    assert!(
        worker_env.contains(&format!("KUGETSU_SHADOW={id}")),
        "read the worker's own environment: {worker_env}"
    );
    for env in [tool_env, worker_env] {
        assert!(!env.contains("NOTIFY_SOCKET"), "{env}");
        assert!(!env.contains("WATCHDOG_"), "{env}");
    }
    // systemd stops a service with SIGTERM; a clean stop says so.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let status = daemon.wait_exit(WAIT).await;
    assert!(status.success(), "{status}");
    while let Some(message) = recv_notify(&notify, Instant::now() + Duration::from_secs(2)).await {
        let stopping = message.contains("STOPPING=1");
        messages.push(message);
        if stopping {
            break;
        }
    }
    assert!(
        messages.iter().any(|m| m.contains("STOPPING=1")),
        "{messages:?}"
    );
}

/// The next notify datagram, or `None` at the deadline.
async fn recv_notify(socket: &tokio::net::UnixDatagram, deadline: Instant) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn daemon_clean_keeps_a_worktree_with_uncommitted_work() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo).start().await;
    let writer = bash_model(&repo, "writer", "echo made by a shadow > made.txt");
    let first = daemon.submit(&["-m", &writer], "Make a file.").await;
    let second = daemon.submit(&["-m", &writer], "Make a file too.").await;
    for id in [&first, &second] {
        assert_eq!(daemon.wait_finished(id, WAIT).await.status(), "completed");
    }
    // Work someone left in the first worktree after the task committed its own.
    std::fs::write(repo.worktree(&first).join("notes.txt"), "not committed\n").unwrap();

    let out = daemon.cli(["clean", "--purge"]).await;
    out.assert_code(0);
    assert!(out.stdout.contains(&second), "{}", out.stdout);
    assert!(
        out.stderr.contains(&first) && out.stderr.contains("uncommitted"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(repo.worktree(&first).join("notes.txt")).unwrap(),
        "not committed\n",
        "the uncommitted work is where it was"
    );
    assert!(!repo.worktree(&second).exists());
    // The second's commit has not landed: its record stays (so diff and merge find it), and
    // so does its branch.
    assert!(
        out.stderr.contains(&format!("kept {second}")) && out.stderr.contains("unmerged"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("removed the record"), "{}", out.stdout);
    daemon.cli(["show", "--json", &first]).await.assert_code(0);
    daemon.cli(["show", "--json", &second]).await.assert_code(0);
    let diff = daemon.cli(["diff", &second]).await;
    diff.assert_code(0);
    assert!(diff.stdout.contains("+made by a shadow"), "{}", diff.stdout);

    // Once it landed, its record may go; its branch is kept all the same.
    daemon.cli(["merge", &second]).await.assert_code(0);
    let out = daemon.cli(["clean", "--purge"]).await;
    out.assert_code(0);
    assert!(out.stdout.contains(&second), "{}", out.stdout);
    assert!(repo.has_branch(&format!("kugetsu/{second}")));
    daemon.cli(["show", &second]).await.assert_code(2);
    daemon.cli(["show", "--json", &first]).await.assert_code(0);
}

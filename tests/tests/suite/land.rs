//! Landing end to end (see docs/cli.md `diff`, `merge`): real repositories, the real daemon
//! and CLI, shadows on the scripted model. What a branch points at is always read back from
//! git itself.

use kugetsu_tests::events::kind;
use kugetsu_tests::harness::daemon::WAIT;
use kugetsu_tests::{Daemon, Gate, Script, TestRepo};
use serde_json::{Value, json};

const FILES: &[(&str, &str)] = &[("a.txt", "one\ntwo\nthree\n"), ("b.txt", "alpha\nbeta\n")];

/// A model that runs `command` in one turn, then answers.
fn model(repo: &TestRepo, name: &str, command: &str) -> String {
    Script::new()
        .bash("Working.", command)
        .text("Done.")
        .write(&repo.root().join("scripts").join(format!("{name}.json")))
}

/// Submits a task running `command` and waits for it to complete.
async fn finished_task(daemon: &Daemon, repo: &TestRepo, name: &str, command: &str) -> String {
    let model = model(repo, name, command);
    let id = daemon.submit(&["-m", &model], name).await;
    let events = daemon.wait_finished(&id, WAIT).await;
    assert_eq!(events.status(), "completed", "{events:?}");
    id
}

fn main_tip(repo: &TestRepo) -> String {
    repo.git(&["rev-parse", "main"]).trim().to_owned()
}

async fn summary(daemon: &Daemon, id: &str) -> Value {
    daemon
        .ps()
        .await
        .into_iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in ps"))
}

#[tokio::test]
async fn land_two_shadows_on_different_files_in_order() {
    let repo = TestRepo::with_files(FILES);
    let daemon = Daemon::builder(&repo).start().await;
    let first = finished_task(&daemon, &repo, "first", "echo ONE > a.txt").await;
    let second = finished_task(&daemon, &repo, "second", "echo BETA >> b.txt").await;
    let before = main_tip(&repo);

    let diff = daemon.cli(["diff", &first]).await;
    diff.assert_code(0);
    assert!(
        diff.stdout.contains("+ONE") && diff.stdout.contains("-two"),
        "{}",
        diff.stdout
    );
    assert!(!diff.stdout.contains("b.txt"), "{}", diff.stdout);
    let stat = daemon.cli(["diff", "--stat", &second]).await;
    stat.assert_code(0);
    assert!(
        stat.stdout.contains("b.txt") && stat.stdout.contains("1 file changed"),
        "{}",
        stat.stdout
    );

    let out = daemon.cli(["merge", &first, &second]).await;
    out.assert_code(0);
    assert!(
        out.stdout.contains(&format!("landed {first} on main")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("landed {second} on main")),
        "{}",
        out.stdout
    );
    // Both changes are on main, in order, on top of where it was.
    assert_eq!(repo.git(&["show", "main:a.txt"]), "ONE\n");
    assert_eq!(repo.git(&["show", "main:b.txt"]), "alpha\nbeta\nBETA\n");
    let log = repo.git(&["log", "--format=%s", &format!("{before}..main")]);
    let subjects: Vec<&str> = log.lines().collect();
    assert_eq!(subjects.len(), 2, "{log}");
    assert!(
        subjects[0].contains(&second) && subjects[1].contains(&first),
        "{log}"
    );
    // The clean checkout of main came along; nothing is left uncommitted there.
    assert_eq!(repo.read("a.txt").as_deref(), Some("ONE\n"));
    assert_eq!(repo.git(&["status", "--porcelain"]), "");

    for id in [&first, &second] {
        let task = summary(&daemon, id).await;
        assert_eq!(task["merged"]["into"], "main", "{task}");
    }
    let ps = daemon.cli(["ps"]).await;
    assert!(ps.stdout.contains("merged"), "{}", ps.stdout);
    // Landing twice is refused, and changes nothing.
    let tip = main_tip(&repo);
    let again = daemon.cli(["merge", &first]).await;
    again.assert_code(1);
    assert!(again.stderr.contains("already_merged"), "{}", again.stderr);
    assert_eq!(main_tip(&repo), tip);
}

#[tokio::test]
async fn land_refuses_a_conflict_and_leaves_main_where_it_was() {
    let repo = TestRepo::with_files(FILES);
    let daemon = Daemon::builder(&repo).start().await;
    let first = finished_task(&daemon, &repo, "first", "sed -i 's/two/TWO/' a.txt").await;
    let second = finished_task(&daemon, &repo, "second", "sed -i 's/two/deux/' a.txt").await;

    let out = daemon.cli(["merge", "--json", &first, &second]).await;
    out.assert_code(1);
    let report: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(report["landed"][0]["task"], first.as_str(), "{report}");
    let landed_tip = report["landed"][0]["commit"].as_str().unwrap().to_owned();
    assert_eq!(report["refused"][0]["task"], second.as_str(), "{report}");
    assert_eq!(report["refused"][0]["reason"], "conflict", "{report}");
    assert_eq!(report["refused"][0]["files"], json!(["a.txt"]), "{report}");
    // main holds the first change only.
    assert_eq!(main_tip(&repo), landed_tip);
    assert_eq!(repo.git(&["show", "main:a.txt"]), "one\nTWO\nthree\n");
    assert!(summary(&daemon, &second).await.get("merged").is_none());
    // The human form names the file.
    let text = daemon.cli(["merge", &second]).await;
    text.assert_code(1);
    assert!(
        text.stderr.contains("conflict") && text.stderr.contains("a.txt"),
        "{}",
        text.stderr
    );
    assert_eq!(main_tip(&repo), landed_tip);
}

#[tokio::test]
async fn land_a_failing_test_refuses_and_a_passing_one_lands() {
    let repo = TestRepo::with_files(FILES);
    let daemon = Daemon::builder(&repo).start().await;
    let id = finished_task(&daemon, &repo, "task", "echo ONE > a.txt").await;
    let before = main_tip(&repo);

    // The test sees the merged tree (not the checkout) and its output tail is shown.
    let out = daemon
        .cli(["merge", "--test", "echo checking; cat a.txt; exit 7", &id])
        .await;
    out.assert_code(1);
    assert!(
        out.stderr.contains("test_failed") && out.stderr.contains("exit 7"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("checking") && out.stderr.contains("ONE"),
        "{}",
        out.stderr
    );
    assert_eq!(main_tip(&repo), before, "main stays");
    assert_eq!(repo.read("a.txt").as_deref(), Some("one\ntwo\nthree\n"));

    // The test runs confined like a shadow: it cannot write the user's checkout.
    let escape = format!("echo x > {}/escaped.txt", repo.repo().display());
    let out = daemon.cli(["merge", "--test", &escape, &id]).await;
    out.assert_code(1);
    assert!(!repo.repo().join("escaped.txt").exists());

    let out = daemon
        .cli(["merge", "--test", "grep -q ONE a.txt", &id])
        .await;
    out.assert_code(0);
    assert_eq!(repo.git(&["show", "main:a.txt"]), "ONE\n");
}

#[tokio::test]
async fn land_leaves_a_dirty_checkout_alone() {
    let repo = TestRepo::with_files(FILES);
    let daemon = Daemon::builder(&repo).start().await;
    let id = finished_task(&daemon, &repo, "task", "echo BETA >> b.txt").await;
    let before = main_tip(&repo);
    repo.write("a.txt", "my own unfinished edit\n");

    let out = daemon.cli(["merge", &id]).await;
    out.assert_code(1);
    assert!(
        out.stderr.contains("dirty_checkout") && out.stderr.contains("uncommitted"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("a.txt"), "{}", out.stderr);
    assert_eq!(main_tip(&repo), before);
    assert_eq!(
        repo.read("a.txt").as_deref(),
        Some("my own unfinished edit\n")
    );
    assert_eq!(repo.read("b.txt").as_deref(), Some("alpha\nbeta\n"));

    // A shadow's branch is never a target.
    let out = daemon
        .cli(["merge", "--into", &format!("kugetsu/{id}"), &id])
        .await;
    out.assert_code(1);
    assert!(out.stderr.contains("a shadow's branch"), "{}", out.stderr);

    // Elsewhere (a branch nobody has checked out) it lands, and the checkout is untouched.
    repo.git(&["branch", "release", &before]);
    let out = daemon.cli(["merge", "--into", "release", &id]).await;
    out.assert_code(0);
    assert_eq!(repo.git(&["show", "release:b.txt"]), "alpha\nbeta\nBETA\n");
    assert_eq!(
        repo.read("a.txt").as_deref(),
        Some("my own unfinished edit\n")
    );
    assert_eq!(main_tip(&repo), before);
}

#[tokio::test]
async fn land_diff_shows_a_running_tasks_uncommitted_work_and_works_without_a_daemon() {
    let repo = TestRepo::with_files(FILES);
    let mut daemon = Daemon::builder(&repo).start().await;
    let gate = Gate::new(repo.root(), "gate");
    let model = Script::new()
        .bash("Editing.", "echo WIP >> b.txt")
        .bash("Waiting.", &gate.wait_command())
        .text("Done.")
        .write(&repo.root().join("scripts").join("wip.json"));
    let id = daemon.submit(&["-m", &model], "Work in progress.").await;
    let mut events = daemon.rpc().await;
    events.call("subscribe", json!({"task": id})).await.unwrap();
    events
        .wait_event("the edit", WAIT, |e| kind(e) == "tool_end")
        .await;
    // The shadow waits at the gate with its edit on disk, not committed: diff shows it.
    let out = daemon.cli(["diff", &id]).await;
    out.assert_code(0);
    assert!(out.stdout.contains("+WIP"), "{}", out.stdout);
    let rpc = daemon
        .rpc()
        .await
        .call("diff", json!({"task": id, "stat": true}))
        .await;
    let result = rpc.unwrap();
    assert_eq!(result["source"], "worktree", "{result}");
    assert!(
        result["diff"].as_str().unwrap().contains("b.txt"),
        "{result}"
    );
    gate.open();
    daemon.wait_finished(&id, WAIT).await;

    // Without a daemon, from the task record on disk.
    daemon.cli(["shutdown"]).await.assert_code(0);
    daemon.wait_exit(WAIT).await;
    let state = repo.state_dir();
    let out = daemon
        .cli(["diff", "--state-dir", state.to_str().unwrap(), &id])
        .await;
    out.assert_code(0);
    assert!(out.stdout.contains("+WIP"), "{}", out.stdout);
    let unknown = daemon
        .cli([
            "diff",
            "--state-dir",
            state.to_str().unwrap(),
            "0000000000000",
        ])
        .await;
    unknown.assert_code(2);
}

/// A model that runs `command`, waits at each gate in turn, then answers.
fn gated_model(repo: &TestRepo, name: &str, command: &str, gates: &[&Gate]) -> String {
    let mut script = Script::new().bash("Editing.", command);
    for gate in gates {
        script = script.bash("Waiting.", &gate.wait_command());
    }
    script
        .text("Done.")
        .write(&repo.root().join("scripts").join(format!("{name}.json")))
}

#[tokio::test]
async fn land_radar_flags_two_running_shadows_on_the_same_lines_then_one_lands() {
    let repo = TestRepo::with_files(FILES);
    let daemon = Daemon::builder(&repo)
        .config("steer_on_conflict = true\n")
        .start()
        .await;
    let mut events = daemon.subscribe_all().await;
    let gate = Gate::new(repo.root(), "gate");
    let first_model = gated_model(&repo, "first", "sed -i 's/two/TWO/' a.txt", &[&gate]);
    let second_model = gated_model(&repo, "second", "sed -i 's/two/deux/' a.txt", &[&gate]);
    let other_model = gated_model(&repo, "other", "echo more >> b.txt", &[&gate]);
    let first = daemon.submit(&["-m", &first_model], "first").await;
    let second = daemon.submit(&["-m", &second_model], "second").await;
    let other = daemon.submit(&["-m", &other_model], "other").await;

    // Both overlapping shadows hear of it while they run, each naming the other.
    let mut flagged: Vec<(String, Value)> = Vec::new();
    while flagged.len() < 2 {
        let event = events
            .wait_event("conflict events", WAIT, |e| kind(e) == "conflict")
            .await;
        flagged.push((event["task"].as_str().unwrap().to_owned(), event));
    }
    for (task, event) in &flagged {
        let expected = if *task == first { &second } else { &first };
        assert!(*task == first || *task == second, "{event}");
        assert_eq!(event["with"], json!([expected]), "{event}");
        assert_eq!(event["files"], json!(["a.txt"]), "{event}");
    }
    // ps shows it while they run.
    let running = summary(&daemon, &second).await;
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(running["conflicts"][&first], json!(["a.txt"]), "{running}");
    let ps = daemon.cli(["ps"]).await;
    assert!(
        ps.stdout
            .contains(&format!("! {second} conflicts with {first} in a.txt")),
        "{}",
        ps.stdout
    );
    assert!(summary(&daemon, &other).await.get("conflicts").is_none());

    gate.open();
    let later = daemon.wait_finished(&second, WAIT).await;
    assert_eq!(later.status(), "completed", "{later:?}");
    daemon.wait_finished(&first, WAIT).await;
    daemon.wait_finished(&other, WAIT).await;
    // The later shadow was told about the other change.
    let steered: Vec<&Value> = later.0.iter().filter(|e| kind(e) == "steered").collect();
    assert_eq!(steered.len(), 1, "{later:?}");
    assert!(
        steered[0]["text"].as_str().unwrap().contains(&first),
        "{}",
        steered[0]
    );
    let earlier = daemon.logs(&first).await;
    assert!(
        !earlier.0.iter().any(|e| kind(e) == "steered"),
        "{earlier:?}"
    );

    let before = main_tip(&repo);
    let out = daemon.cli(["merge", &first, &second, &other]).await;
    out.assert_code(1);
    assert!(
        out.stdout.contains(&format!("landed {first} on main")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("landed {other} on main")),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains(&format!("refused {second} (conflict)")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("a.txt"), "{}", out.stderr);
    assert_eq!(repo.git(&["show", "main:a.txt"]), "one\nTWO\nthree\n");
    assert_eq!(repo.git(&["show", "main:b.txt"]), "alpha\nbeta\nmore\n");
    let added = repo.git(&["rev-list", "--count", &format!("{before}..main")]);
    assert_eq!(added.trim(), "2");
}

#[tokio::test]
async fn land_radar_sees_new_commits_on_the_base() {
    let repo = TestRepo::with_files(FILES);
    let daemon = Daemon::builder(&repo).start().await;
    let mut events = daemon.subscribe_all().await;
    let edited = Gate::new(repo.root(), "edited");
    let hold = Gate::new(repo.root(), "hold");
    let model = gated_model(
        &repo,
        "task",
        "sed -i 's/three/THREE/' a.txt",
        &[&edited, &hold],
    );
    let id = daemon.submit(&["-m", &model], "task").await;
    events
        .wait_event("the edit's turn end", WAIT, |e| kind(e) == "turn_end")
        .await;
    // Someone commits to the same line on main meanwhile; the radar sees it at the next turn
    // end.
    repo.write("a.txt", "one\ntwo\ntrois\n");
    repo.commit_all("a change on main");
    edited.open();
    let event = events
        .wait_event("a conflict with the base", WAIT, |e| kind(e) == "conflict")
        .await;
    assert_eq!(event["task"], id.as_str(), "{event}");
    assert_eq!(event["with"], json!(["base"]), "{event}");
    assert_eq!(event["files"], json!(["a.txt"]), "{event}");
    hold.open();
    daemon.wait_finished(&id, WAIT).await;
    let out = daemon.cli(["merge", &id]).await;
    out.assert_code(1);
    assert!(out.stderr.contains("conflict"), "{}", out.stderr);
}

#[tokio::test]
async fn land_radar_compares_with_a_task_that_finished_before_the_daemon_started() {
    let repo = TestRepo::with_files(FILES);
    let mut daemon = Daemon::builder(&repo).start().await;
    let done = finished_task(&daemon, &repo, "done", "sed -i 's/two/TWO/' a.txt").await;
    daemon.cli(["shutdown"]).await.assert_code(0);
    daemon.wait_exit(WAIT).await;
    daemon.restart().await;

    let mut events = daemon.subscribe_all().await;
    let gate = Gate::new(repo.root(), "gate");
    let model = gated_model(&repo, "late", "sed -i 's/two/deux/' a.txt", &[&gate]);
    let late = daemon.submit(&["-m", &model], "late").await;
    let event = events
        .wait_event("a conflict with the finished task", WAIT, |e| {
            kind(e) == "conflict"
        })
        .await;
    assert_eq!(event["task"], late.as_str(), "{event}");
    assert_eq!(event["with"], json!([done]), "{event}");
    gate.open();
    daemon.wait_finished(&late, WAIT).await;
}

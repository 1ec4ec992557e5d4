//! The governor: shadows share a provider account's rate limit and the daemon's budgets, with
//! the real binaries against a fake provider that enforces the limit with real headers.

use std::time::Duration;

use kugetsu_tests::events::{kind, str_of};
use kugetsu_tests::{Daemon, FakeLlm, RateLimit, TestRepo, Turn, Wire};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

/// A fake OpenAI-compatible provider enforcing `limit` on its key.
fn limited(wire: Wire, limit: RateLimit) -> FakeLlm {
    let builder = FakeLlm::builder(wire);
    let builder = match wire {
        Wire::OpenAi => builder
            .model(kugetsu_tests::fake_llm::OPENAI_MODEL)
            .api_key(kugetsu_tests::fake_llm::OPENAI_KEY),
        Wire::Anthropic => builder
            .model(kugetsu_tests::fake_llm::ANTHROPIC_MODEL)
            .api_key(kugetsu_tests::fake_llm::ANTHROPIC_KEY),
    };
    builder.rate_limit(limit).start()
}

/// Submits `n` tasks over one connection; returns their ids.
async fn submit_many(daemon: &Daemon, llm: &FakeLlm, n: usize, extra: Value) -> Vec<String> {
    let mut rpc = daemon.rpc().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let mut params = json!({
            "prompt": format!("task {i}"),
            "repo": daemon.repo(),
            "no_worktree": true,
            "model": llm.model_arg(),
        });
        if let (Some(params), Some(extra)) = (params.as_object_mut(), extra.as_object()) {
            params.extend(extra.clone());
        }
        let result = rpc
            .call("submit", params)
            .await
            .unwrap_or_else(|e| panic!("submit {i}: {e}\n{}", daemon.stderr()));
        ids.push(str_of(&result, "task").to_owned());
    }
    ids
}

#[tokio::test]
async fn twenty_shadows_share_one_keys_request_limit_and_all_complete() {
    const SHADOWS: usize = 20;
    let repo = TestRepo::new();
    // 240 requests a minute (4 a second), 8 at most in a burst: 60 requests cannot all go at
    // once, and without coordination most of them would be answered 429.
    let llm = limited(
        Wire::OpenAi,
        RateLimit {
            rpm: 240,
            request_burst: 8,
            tpm: None,
            token_burst: 0,
        },
    );
    llm.push_all(
        (0..2 * SHADOWS).map(|_| Turn::new().tool_call("bash", json!({"command": "true"}))),
    );
    llm.push_all((0..SHADOWS).map(|i| Turn::text(format!("done {i}"))));
    let daemon = Daemon::builder(&repo)
        .config(format!("max_shadows = {SHADOWS}\n"))
        .llm(&llm)
        .start()
        .await;
    let mut events = daemon.subscribe_all().await;
    let poller = daemon.poll_ps();
    let ids = submit_many(&daemon, &llm, SHADOWS, json!({})).await;
    let mut finished = std::collections::HashMap::new();
    let mut rate_limited = 0;
    while finished.len() < SHADOWS {
        let event = events
            .wait_event("every task finished", WAIT, |e| {
                matches!(kind(e), "finished" | "rate_limited")
            })
            .await;
        if kind(&event) == "rate_limited" {
            assert_eq!(event["provider"], "openai", "{event}");
            assert!(event["wait_ms"].as_u64().is_some(), "{event}");
            rate_limited += 1;
        } else {
            finished.insert(str_of(&event, "task").to_owned(), event["status"].clone());
        }
    }
    let history = poller.stop().await;
    for id in &ids {
        assert_eq!(
            finished[id],
            "completed",
            "task {id} did not complete\n{}",
            daemon.context(Some(id))
        );
    }
    let answered = 3 * SHADOWS;
    let throttled = llm.throttled();
    let total = answered + throttled;
    eprintln!("{throttled} of {total} requests answered 429; {rate_limited} rate_limited events");
    assert!(
        throttled * 20 <= total,
        "{throttled} of {total} requests were answered 429 (over 5%)\n{}",
        daemon.stderr()
    );
    assert!(rate_limited > 0, "no shadow ever waited for the limit");
    let waited: Vec<&Value> = history
        .snapshots
        .iter()
        .flatten()
        .filter(|t| t["status"] == "waiting")
        .collect();
    assert!(
        waited.iter().all(|t| t["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("rate limited"))),
        "{waited:?}"
    );
    drop(events);
}

#[tokio::test]
async fn a_tokens_per_minute_limit_paces_requests_by_their_size() {
    const SHADOWS: usize = 6;
    let repo = TestRepo::new();
    // Each request costs its input (body / 4) plus its output cap (8192) against the limit:
    // about one request a second fits, two at most in a burst.
    let llm = limited(
        Wire::Anthropic,
        RateLimit {
            rpm: 10_000,
            request_burst: 100,
            tpm: Some(600_000),
            token_burst: 20_000,
        },
    );
    llm.push_all((0..SHADOWS).map(|i| Turn::text(format!("done {i}"))));
    let daemon = Daemon::builder(&repo).llm(&llm).start().await;
    let ids = submit_many(&daemon, &llm, SHADOWS, json!({})).await;
    for id in &ids {
        let events = daemon.wait_finished(id, WAIT).await;
        assert_eq!(events.status(), "completed", "{}", daemon.context(Some(id)));
    }
    assert!(
        llm.throttled() <= 1,
        "{} requests were answered 429 under a token limit the headers announced",
        llm.throttled()
    );
}

#[tokio::test]
async fn a_task_paused_by_its_budget_resumes_without_rerunning_anything() {
    let repo = TestRepo::new();
    let llm = FakeLlm::openai();
    let side = repo.side_dir().join("side.txt");
    llm.push(
        Turn::new()
            .tool_call(
                "bash",
                json!({"command": format!("echo once >> {}", side.display())}),
            )
            .usage(100_000, 50),
    );
    llm.push(Turn::text("all done").usage(1000, 10));
    let daemon = Daemon::builder(&repo).llm(&llm).start().await;

    // The first request fits the budget; its usage passes it, so the second must not go.
    let out = daemon
        .cli_events([
            "submit",
            "--wait",
            "--json",
            "--no-worktree",
            "-C",
            repo.repo().to_str().unwrap(),
            "-m",
            &llm.model_arg(),
            "--budget-tokens",
            "60000",
            "do it",
        ])
        .await;
    out.assert_code(1).assert_status("paused");
    let error = out.finished()["error"].as_str().unwrap_or_default();
    assert!(error.contains("token budget (60000)"), "{error}");
    let id = out.task_id().to_owned();
    assert_eq!(llm.turn_requests().len(), 1);
    let show = daemon.cli(["show", &id]).await;
    assert!(show.stdout.contains("paused"), "{}", show.stdout);
    assert!(show.stdout.contains("60000 tokens"), "{}", show.stdout);

    // A resume with a higher budget continues the same conversation.
    let resumed = daemon
        .cli(["resume", &id, "--budget-tokens", "1000000"])
        .await;
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    assert!(resumed.stdout.contains(&id), "{}", resumed.stdout);
    let deadline = std::time::Instant::now() + WAIT;
    let mut rpc = daemon.rpc().await;
    loop {
        let task = rpc.call("get", json!({"task": id})).await.unwrap();
        if task["status"] == "completed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && task["status"] != "failed",
            "{task}\n{}",
            daemon.context(Some(&id))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = daemon.logs(&id).await;
    let statuses: Vec<&str> = events
        .of_type("finished")
        .iter()
        .map(|f| f["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(statuses, ["paused", "completed"]);
    assert_eq!(events.of_type("finished")[1]["result"], "all done");
    assert_eq!(std::fs::read_to_string(&side).unwrap(), "once\n");
    let requests = llm.turn_requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].tool_results().len(),
        1,
        "the resumed request lost the tool result"
    );

    // A task that is not paused cannot be resumed.
    let again = daemon.cli(["resume", &id]).await;
    assert_eq!(again.code, Some(2), "{}", again.stderr);
    assert!(again.stderr.contains("not paused"), "{}", again.stderr);
}

#[tokio::test]
async fn run_pauses_at_its_budget_and_run_resume_continues() {
    let repo = TestRepo::new();
    let llm = FakeLlm::openai();
    llm.push(
        Turn::new()
            .tool_call("bash", json!({"command": "echo step >> steps.txt"}))
            .usage(50_000, 5),
    );
    llm.push(Turn::text("finished").usage(10, 1));
    let out = repo
        .run()
        .llm(&llm)
        .args(["--budget-tokens", "40000"])
        .prompt("go")
        .output()
        .await;
    out.assert_code(1).assert_status("paused");
    let id = out.task_id().to_owned();
    let resumed = repo
        .resume(&id)
        .llm(&llm)
        .args(["--budget-tokens", "200000"])
        .output()
        .await;
    resumed.assert_code(0).assert_status("completed");
    // The resumed run's events continue the task's log (its seq goes on from the pause).
    assert_eq!(resumed.events.types()[..2], ["restarted", "started"]);
    assert_eq!(resumed.events.finished()["result"], "finished");
    assert_eq!(llm.turn_requests().len(), 2);
    let worktree = repo.worktree(&id);
    assert_eq!(
        std::fs::read_to_string(worktree.join("steps.txt")).unwrap(),
        "step\n"
    );
}

#[tokio::test]
async fn the_daily_budget_holds_the_fleet_until_a_reload_raises_it() {
    let repo = TestRepo::new();
    let llm = FakeLlm::openai();
    // Task A's first turn spends the whole day's budget.
    llm.push(
        Turn::new()
            .tool_call("bash", json!({"command": "true"}))
            .usage(200_000, 10),
    );
    llm.push(Turn::text("a done"));
    llm.push(Turn::text("b done"));
    let daemon = Daemon::builder(&repo)
        .config("daily_budget_tokens = 150000\n")
        .llm(&llm)
        .start()
        .await;
    let a = submit_many(&daemon, &llm, 1, json!({})).await.remove(0);
    llm.wait_for_turn_requests(1, WAIT).await;
    // A's next request waits for the day's budget...
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ta = daemon
            .ps()
            .await
            .into_iter()
            .find(|t| t["id"] == a.as_str());
        let ta = ta.unwrap_or_default();
        if ta["status"] == "waiting" {
            assert!(
                ta["waiting"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("daily budget"),
                "{ta}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task A never waited: {ta}\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and a task submitted now is not started.
    let b = submit_many(&daemon, &llm, 1, json!({})).await.remove(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tb = daemon
        .ps()
        .await
        .into_iter()
        .find(|t| t["id"] == b.as_str())
        .unwrap_or_default();
    assert_eq!(tb["status"], "queued", "{tb}");
    assert!(
        tb["waiting"]
            .as_str()
            .unwrap_or_default()
            .contains("daily budget"),
        "{tb}"
    );
    let text = daemon.cli(["ps"]).await.stdout;
    assert!(text.contains("waiting"), "{text}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        llm.turn_requests().len(),
        1,
        "a request went past the daily budget"
    );

    // Raising the budget releases both.
    let mark = daemon.stderr_mark();
    daemon.write_config("daily_budget_tokens = 10000000\n");
    daemon
        .wait_for_stderr(mark, "config reloaded", Duration::from_secs(30))
        .await;
    for id in [&a, &b] {
        let events = daemon.wait_finished(id, WAIT).await;
        assert_eq!(events.status(), "completed", "{}", daemon.context(Some(id)));
    }
    let spent: Value = serde_json::from_slice(
        &std::fs::read(daemon.state_dir().join("usage").join("daily.json")).unwrap(),
    )
    .unwrap();
    assert!(spent["tokens"].as_u64().unwrap_or(0) >= 200_010, "{spent}");
}

#[tokio::test]
async fn bad_limits_budgets_and_prices_are_rejected_with_a_clear_line() {
    let repo = TestRepo::new();
    let cases = [
        (
            "[rate_limits.nosuch]\nrpm = 5\n",
            "rate_limits.nosuch: unknown provider",
        ),
        (
            "[rate_limits.openai]\nrpm = 0\n",
            "rate_limits.openai.rpm must be at least 1",
        ),
        ("[rate_limits.openai]\nrpn = 5\n", "unknown field `rpn`"),
        (
            "[prices.\"openai/my-model\"]\ninput_per_mtok = -1\noutput_per_mtok = 2\n",
            "input_per_mtok must be a non-negative number",
        ),
        (
            "daily_budget_usd = -3\n",
            "daily_budget_usd must be a positive number",
        ),
        ("budget_tokens = 0\n", "budget_tokens must be at least 1"),
    ];
    for (toml, expected) in cases {
        let config = repo.root().join("bad.toml");
        std::fs::write(&config, toml).unwrap();
        let out = repo
            .run()
            .model("scripted/demo")
            .arg("--config")
            .arg(&config)
            .prompt("x")
            .output()
            .await;
        assert_eq!(out.code, Some(2), "{toml}: {}", out.stderr);
        assert!(out.stderr.contains(expected), "{toml}: {}", out.stderr);
    }
    // A dollar budget needs a price.
    let out = repo
        .run()
        .model("openai/my-finetune")
        .env("OPENAI_API_KEY", "sk-x")
        .args(["--budget-usd", "5"])
        .prompt("x")
        .output()
        .await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("needs the price of openai/my-finetune"),
        "{}",
        out.stderr
    );
    let out = repo
        .run()
        .model("scripted/demo")
        .args(["--budget-tokens", "0"])
        .prompt("x")
        .output()
        .await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("not a number of tokens above 0"),
        "{}",
        out.stderr
    );
}

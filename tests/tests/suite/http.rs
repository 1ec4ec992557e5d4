//! The daemon's HTTP API end to end (see docs/http.md): the real daemon with `http` set,
//! real HTTP over TCP, real repositories, shadows on the scripted model.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use kugetsu_tests::FakeLlm;
use kugetsu_tests::Turn;
use kugetsu_tests::events::kind;
use kugetsu_tests::harness::daemon::WAIT;
use kugetsu_tests::harness::http::{HttpApi, SseMessage};
use kugetsu_tests::{Daemon, Gate, Script, TestRepo};
use serde_json::{Value, json};

const HTTP: &str = "http = \"127.0.0.1:0\"\n";
const FILES: &[(&str, &str)] = &[("a.txt", "one\ntwo\nthree\n"), ("b.txt", "alpha\nbeta\n")];

async fn start(repo: &TestRepo, config: &str) -> (Daemon, HttpApi) {
    let daemon = Daemon::builder(repo)
        .config(format!("{HTTP}{config}"))
        .start()
        .await;
    let api = HttpApi::of(&daemon).await;
    (daemon, api)
}

/// A model that runs `command`, waits at `gate` (if any), then answers.
fn model(repo: &TestRepo, name: &str, command: &str, gate: Option<&Gate>) -> String {
    let mut script = Script::new().bash("Working.", command);
    if let Some(gate) = gate {
        script = script.bash("Waiting.", &gate.wait_command());
    }
    script
        .text("Done.")
        .write(&repo.root().join("scripts").join(format!("{name}.json")))
}

/// Submits over HTTP; returns the task id.
async fn submit(api: &HttpApi, repo: &TestRepo, model: &str, prompt: &str) -> String {
    let response = api
        .post(
            "/api/v1/tasks",
            &json!({"prompt": prompt, "repo": repo.repo(), "model": model}),
        )
        .await;
    response.assert_status(201);
    let id = response.json()["task"].as_str().unwrap().to_owned();
    assert_eq!(
        response.header("location"),
        Some(format!("/api/v1/tasks/{id}").as_str())
    );
    id
}

/// Polls `GET /api/v1/tasks/ID` until `done` holds.
async fn wait_task(api: &HttpApi, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let task = api.get(&format!("/api/v1/tasks/{id}")).await;
        task.assert_status(200);
        let task = task.json();
        if done(&task) {
            return task;
        }
        assert!(Instant::now() < deadline, "{what}: {task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn envelopes(messages: &[SseMessage]) -> Vec<Value> {
    messages.iter().map(SseMessage::json).collect()
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn http_requires_the_token_and_signs_a_browser_in_with_a_cookie() {
    let repo = TestRepo::new();
    let (mut daemon, api) = start(&repo, "").await;
    let token_file = daemon.state_dir().join("http.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        api.token.len() >= 32 && api.token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        api.token
    );
    assert!(
        !daemon.stderr().contains(&api.token),
        "the token is in the log"
    );

    // No token, a wrong one, the right one.
    for path in [
        "/api/v1/tasks",
        "/metrics",
        "/api/v1/fleet",
        "/api/v1/events",
    ] {
        let none = api.send("GET", path, &[], None).await;
        none.assert_status(401);
        none.error_code();
        let wrong = api
            .send(
                "GET",
                path,
                &[("Authorization", "Bearer 00112233445566778899")],
                None,
            )
            .await;
        wrong.assert_status(401);
        wrong.error_code();
    }
    let ok = api.get("/api/v1/tasks").await;
    ok.assert_status(200);
    assert_eq!(ok.json(), json!({"tasks": []}));

    // A browser: told how to sign in, refused with a wrong token, signed in with the right one.
    let page = api.send("GET", "/", &[], None).await;
    page.assert_status(401);
    assert!(page.text().contains("/?token="), "{}", page.text());
    assert!(page.text().contains("http.token"), "{}", page.text());
    let wrong = api.send("GET", "/?token=nottheone", &[], None).await;
    wrong.assert_status(401);
    assert!(wrong.header("set-cookie").is_none());
    let signed = api
        .send("GET", &format!("/?token={}", api.token), &[], None)
        .await;
    signed.assert_status(303);
    assert_eq!(signed.header("location"), Some("/"));
    let cookie = signed.header("set-cookie").expect("a cookie").to_owned();
    let attributes: BTreeSet<&str> = cookie.split(';').map(str::trim).collect();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(attribute), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_owned();
    assert_eq!(pair, format!("kugetsu_token={}", api.token));
    let with_cookie = api
        .send(
            "GET",
            "/api/v1/tasks",
            &[("Cookie", &format!("theme=dark; {pair}"))],
            None,
        )
        .await;
    with_cookie.assert_status(200);
    let bad_cookie = api
        .send(
            "GET",
            "/api/v1/tasks",
            &[("Cookie", "kugetsu_token=0000")],
            None,
        )
        .await;
    bad_cookie.assert_status(401);

    // The token is reused across restarts.
    daemon.cli(["shutdown"]).await.assert_code(0);
    daemon.wait_exit(WAIT).await;
    let mark = daemon.stderr_mark();
    daemon.restart().await;
    let again = HttpApi::after(&daemon, mark).await;
    assert_eq!(again.token, api.token);
    again.get("/api/v1/tasks").await.assert_status(200);

    // A token file others may read is refused: the daemon does not start.
    daemon.cli(["shutdown"]).await.assert_code(0);
    daemon.wait_exit(WAIT).await;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = daemon
        .kugetsu()
        .args(["serve", "--state-dir"])
        .arg(daemon.state_dir())
        .args(["--http", "127.0.0.1:0"])
        .output()
        .await;
    out.assert_code(2);
    assert!(
        out.stderr.contains("http.token") && out.stderr.contains("0600"),
        "{}",
        out.stderr
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn http_a_flood_of_connections_is_capped_and_the_daemon_stays_responsive() {
    const FLOOD: usize = 300;
    const CAP: usize = 256;
    let repo = TestRepo::new();
    let (daemon, api) = start(&repo, "").await;
    api.get("/api/v1/tasks").await.assert_status(200);
    let baseline = open_fds(daemon.pid());
    let mut idle = Vec::new();
    for _ in 0..FLOOD {
        idle.push(tokio::net::TcpStream::connect(api.addr).await.unwrap());
    }
    // The daemon takes connections up to the cap, and no more: wait for its count of open
    // files to settle, then look.
    let deadline = Instant::now() + WAIT;
    let mut counts = vec![open_fds(daemon.pid())];
    while counts.len() < 20
        || counts[counts.len() - 20..]
            .iter()
            .any(|&c| c != counts[counts.len() - 1])
    {
        assert!(Instant::now() < deadline, "never settled: {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        counts.push(open_fds(daemon.pid()));
    }
    let settled = *counts.last().unwrap();
    assert!(
        settled + 16 > baseline + CAP,
        "only {} connections taken (baseline {baseline}, settled {settled})",
        settled - baseline
    );
    let mut rpc = daemon.rpc().await;
    rpc.call("list", json!({})).await.unwrap();
    let held = open_fds(daemon.pid()) - baseline;
    assert!(held < CAP + 16, "the daemon holds {held} more fds");
    // Once they go, HTTP answers again.
    drop(idle);
    api.get("/api/v1/tasks").await.assert_status(200);
}

#[tokio::test]
async fn http_warns_on_a_non_loopback_address() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo)
        .config("http = \"0.0.0.0:0\"\n")
        .start()
        .await;
    let line = daemon
        .wait_for_stderr(0, "not a loopback address", WAIT)
        .await;
    assert!(line.contains("warning"), "{line}");
    let api = HttpApi::of(&daemon).await;
    let local = HttpApi {
        addr: format!("127.0.0.1:{}", api.addr.port()).parse().unwrap(),
        token: api.token.clone(),
    };
    local.get("/api/v1/tasks").await.assert_status(200);
}

#[tokio::test]
async fn http_refuses_an_address_it_cannot_bind() {
    let repo = TestRepo::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let daemon = Daemon::builder(&repo).start().await;
    daemon.cli(["shutdown"]).await.assert_code(0);
    let out = daemon
        .kugetsu()
        .args(["serve", "--http", &addr, "--state-dir"])
        .arg(daemon.state_dir())
        .output()
        .await;
    out.assert_code(2);
    assert!(
        out.stderr.contains("cannot listen for HTTP") && out.stderr.contains(&addr),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn http_rest_submits_lists_steers_diffs_merges_and_cancels_on_real_repos() {
    let repo = TestRepo::with_files(FILES);
    let (daemon, api) = start(&repo, "").await;
    let gate = Gate::new(repo.root(), "gate");
    let model_a = model(&repo, "edit", "echo BETA >> b.txt", Some(&gate));
    let id = submit(&api, &repo, &model_a, "Edit b.txt.").await;

    let list = api.get("/api/v1/tasks").await;
    list.assert_status(200);
    let tasks = list.json()["tasks"].as_array().unwrap().clone();
    assert!(tasks.iter().any(|t| t["id"] == id), "{tasks:?}");
    let all = api.get("/api/v1/tasks?all=true").await;
    all.assert_status(200);
    assert!(
        all.json()["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id)
    );

    // The edit is on disk while the shadow waits at the gate: the diff shows it.
    wait_task(&api, &id, "the edit", |t| {
        t["tool"] == "bash" && t["status"] == "running"
    })
    .await;
    let deadline = Instant::now() + WAIT;
    let diff = loop {
        let diff = api.get(&format!("/api/v1/tasks/{id}/diff?stat=true")).await;
        diff.assert_status(200);
        let diff = diff.json();
        if diff["diff"].as_str().unwrap().contains("b.txt") {
            break diff;
        }
        assert!(Instant::now() < deadline, "{diff}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(diff["source"], "worktree", "{diff}");
    let patch = api
        .post(&format!("/api/v1/tasks/{id}/diff"), &json!({}))
        .await;
    patch.assert_status(200);
    assert!(
        patch.json()["diff"].as_str().unwrap().contains("+BETA"),
        "{}",
        patch.text()
    );

    // Steer, then let it finish: the steer reached the model.
    let steered = api
        .post(
            &format!("/api/v1/tasks/{id}/steer"),
            &json!({"text": "Also be brief."}),
        )
        .await;
    steered.assert_status(200);
    assert_eq!(steered.json()["task"], id);
    gate.open();
    let done = wait_task(&api, &id, "completion", |t| t["status"] == "completed").await;
    assert_eq!(done["result"], "Done.", "{done}");
    let log = daemon.logs(&id).await;
    let steers = log.of_type("steered");
    assert_eq!(steers.len(), 1, "{log:?}");
    assert_eq!(steers[0]["text"], "Also be brief.");

    // Only a paused task resumes.
    let resume = api
        .post(&format!("/api/v1/tasks/{id}/resume"), &json!({}))
        .await;
    resume.assert_status(400);
    assert!(resume.text().contains("not paused"), "{}", resume.text());

    // Merge it onto main through the API.
    let merged = api
        .post(&format!("/api/v1/tasks/{id}/merge"), &json!({}))
        .await;
    merged.assert_status(200);
    let report = merged.json();
    assert_eq!(report["landed"][0]["task"], id, "{report}");
    assert_eq!(repo.git(&["show", "main:b.txt"]), "alpha\nbeta\nBETA\n");
    let twice = api
        .post(&format!("/api/v1/tasks/{id}/merge"), &json!({}))
        .await;
    assert!(
        twice.status == 200 && twice.json()["refused"][0]["task"] == id || twice.status >= 400,
        "{}",
        twice.text()
    );

    // Cancel a running one.
    let hold = Gate::new(repo.root(), "hold");
    let model_b = model(&repo, "held", "true", Some(&hold));
    let other = submit(&api, &repo, &model_b, "Wait.").await;
    wait_task(&api, &other, "the start", |t| t["status"] == "running").await;
    let cancelled = api
        .post(&format!("/api/v1/tasks/{other}/cancel"), &json!({}))
        .await;
    cancelled.assert_status(200);
    assert_eq!(cancelled.json()["status"], "cancelling");
    wait_task(&api, &other, "the cancel", |t| t["status"] == "cancelled").await;
    // Cancelling it again: it already ended.
    let again = api
        .post(&format!("/api/v1/tasks/{other}/cancel"), &json!({}))
        .await;
    again.assert_status(409);
    assert_eq!(again.error_code(), -32005);
}

#[tokio::test]
async fn http_task_events_replay_resume_without_gap_or_duplicate_and_end_after_finished() {
    let repo = TestRepo::with_files(FILES);
    let (daemon, api) = start(&repo, "").await;
    let gate = Gate::new(repo.root(), "gate");
    let m = model(&repo, "sse", "echo X >> a.txt", Some(&gate));
    let id = submit(&api, &repo, &m, "Stream me.").await;
    let path = format!("/api/v1/tasks/{id}/events");

    // Live: read until the shadow waits at the gate, then drop the stream.
    let mut first = api.sse(&path, &[]).await;
    assert_eq!(first.status, 200);
    assert!(
        first
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream"),
        "{:?}",
        first.headers
    );
    let mut seen: Vec<SseMessage> = Vec::new();
    let mut tool_starts = 0;
    while tool_starts < 2 {
        let message = first.next(WAIT).await.expect("the stream goes on");
        if kind(&message.json()) == "tool_start" {
            tool_starts += 1;
        }
        seen.push(message);
    }
    drop(first);
    let last = seen.last().unwrap().id.clone().unwrap();

    // Resume with Last-Event-ID; the stream ends by itself after `finished`.
    let mut resumed = api.sse(&path, &[("Last-Event-ID", &last)]).await;
    assert_eq!(resumed.status, 200);
    gate.open();
    let rest = resumed.to_end(WAIT).await;
    seen.extend(rest);
    let events = envelopes(&seen);
    assert_eq!(kind(events.last().unwrap()), "finished", "{events:#?}");
    // `id:` is the seq, and the two streams together are the log, once each, in order.
    for (message, event) in seen.iter().zip(&events) {
        assert_eq!(
            message.id.as_deref(),
            Some(event["seq"].to_string().as_str())
        );
        assert_eq!(message.event, None);
        assert_eq!(event["task"], id);
    }
    let log = daemon.logs(&id).await;
    assert_eq!(events, log.all(), "the streams differ from the log");
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs(&events), expected);

    // Replay of a finished task, whole and from ?after=N.
    let mut whole = api.sse(&path, &[]).await;
    assert_eq!(envelopes(&whole.to_end(WAIT).await), log.all());
    let mid = events.len() / 2;
    let mut tail = api.sse(&format!("{path}?after={mid}"), &[]).await;
    assert_eq!(envelopes(&tail.to_end(WAIT).await), log.all()[mid..]);
    // Nothing after the end: 204, so an EventSource stops reconnecting.
    let end = events.len().to_string();
    let nothing = api.sse(&path, &[("Last-Event-ID", &end)]).await;
    assert_eq!(nothing.status, 204);
    let bad = api.sse(&path, &[("Last-Event-ID", "soon")]).await;
    assert_eq!(bad.status, 400);
    let unknown = api.sse("/api/v1/tasks/0000000000000/events", &[]).await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn http_all_events_stream_carries_every_task_and_outlives_their_ends() {
    let repo = TestRepo::with_files(FILES);
    let (mut daemon, api) = start(&repo, "").await;
    let mut stream = api.sse("/api/v1/events", &[]).await;
    assert_eq!(stream.status, 200);
    let m = model(&repo, "quick", "true", None);
    let first = submit(&api, &repo, &m, "One.").await;
    let second = submit(&api, &repo, &m, "Two.").await;
    let mut finished = BTreeSet::new();
    let mut per_task: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while finished.len() < 2 {
        let message = stream.next(WAIT).await.expect("the stream goes on");
        assert_eq!(message.id, None);
        let event = message.json();
        let task = event["task"].as_str().unwrap().to_owned();
        per_task
            .entry(task.clone())
            .or_default()
            .push(event["seq"].as_u64().unwrap());
        if kind(&event) == "finished" {
            finished.insert(task);
        }
    }
    assert_eq!(finished, BTreeSet::from([first.clone(), second.clone()]));
    for (task, seqs) in &per_task {
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, &expected, "{task}");
    }
    // Still open: a third task's events arrive on it.
    let third = submit(&api, &repo, &m, "Three.").await;
    let message = stream.next(WAIT).await.expect("the stream is still open");
    assert_eq!(message.json()["task"], third);
    daemon.wait_finished(&third, WAIT).await;
    while stream
        .next(WAIT)
        .await
        .is_some_and(|m| kind(&m.json()) != "finished")
    {}

    // The server stops with the daemon: the stream ends, and nothing listens any more.
    daemon.cli(["shutdown"]).await.assert_code(0);
    assert_eq!(
        stream.next(WAIT).await,
        None,
        "the stream outlived the daemon"
    );
    assert!(
        stream.comments.iter().any(|c| c.contains("stopping")),
        "{:?}",
        stream.comments
    );
    daemon.wait_exit(WAIT).await;
    assert!(tokio::net::TcpStream::connect(api.addr).await.is_err());
}

#[tokio::test]
async fn http_an_idle_event_stream_carries_keep_alive_comments() {
    let repo = TestRepo::new();
    let (_daemon, api) = start(&repo, "").await;
    let mut stream = api.sse("/api/v1/events", &[]).await;
    assert_eq!(stream.status, 200);
    // One comes every 15 s; wait for it with the usual generous bound.
    stream.wait_comment("keep-alive", WAIT).await;
    // The connection was kept: it still serves events.
    let m = model(&repo, "after", "true", None);
    let id = submit(&api, &repo, &m, "After the comment.").await;
    let message = stream.next(WAIT).await.expect("the stream goes on");
    assert_eq!(message.json()["task"], id);
}

/// Every sample of a Prometheus text exposition, by name and labels; panics on a line that is
/// not the format or a sample without TYPE.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut typed = BTreeSet::new();
    let mut helped = BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap().to_owned();
            let kind = parts.next().unwrap();
            assert!(["gauge", "counter"].contains(&kind), "{line}");
            assert!(helped.contains(&name), "TYPE before HELP: {line}");
            typed.insert(name);
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert!(typed.contains(name), "no TYPE for {name}");
        let labels = &series[name.len()..];
        assert!(
            labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
            "{line}"
        );
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[tokio::test]
async fn http_metrics_and_fleet_show_a_running_shadow_and_what_finished() {
    let repo = TestRepo::with_files(FILES);
    let (_daemon, api) = start(&repo, "max_shadows = 3\nqueue_capacity = 7\n").await;
    let gate = Gate::new(repo.root(), "gate");
    // The shadow waits at the gate: its worker and the waiting tool are measured.
    let m = model(&repo, "mem", "true", Some(&gate));
    let id = submit(&api, &repo, &m, "Hold.").await;
    wait_task(&api, &id, "a measured shadow", |t| {
        t["status"] == "running" && t["rss_bytes"].as_u64().is_some_and(|r| r > 0)
    })
    .await;

    let response = api.get("/metrics").await;
    response.assert_status(200);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        response.headers
    );
    let metrics = parse_metrics(&response.text());
    assert_eq!(metrics["kugetsu_shadows_running"], 1.0, "{metrics:?}");
    assert_eq!(metrics["kugetsu_tasks_queued"], 0.0);
    assert_eq!(metrics["kugetsu_queue_capacity"], 7.0);
    let rss = metrics[&format!("kugetsu_shadow_rss_bytes{{task=\"{id}\"}}")];
    assert!(rss > 0.0, "{metrics:?}");
    let limit = metrics[&format!("kugetsu_shadow_mem_limit_bytes{{task=\"{id}\"}}")];
    assert_eq!(limit, 512.0 * 1024.0 * 1024.0);
    for name in [
        "kugetsu_tokens_total{direction=\"input\"}",
        "kugetsu_tokens_total{direction=\"output\"}",
        "kugetsu_cost_usd_total",
        "kugetsu_restarts_total",
        "kugetsu_rate_limit_waits_total",
        "kugetsu_rate_limited_shadows",
        "kugetsu_conflicts",
        "kugetsu_tasks_finished_total{status=\"completed\"}",
    ] {
        assert!(metrics.contains_key(name), "{name} missing: {metrics:?}");
    }

    // The fleet: figures now, and a history that shows the shadow.
    let deadline = Instant::now() + WAIT;
    loop {
        let fleet = api.get("/api/v1/fleet").await;
        fleet.assert_status(200);
        let fleet = fleet.json();
        assert_eq!(fleet["max_shadows"], 3, "{fleet}");
        assert_eq!(fleet["running"], 1, "{fleet}");
        assert_eq!(fleet["mem_limit"], 512u64 << 20, "{fleet}");
        assert!(fleet["host_total_bytes"].as_u64().unwrap() > 0, "{fleet}");
        let history = fleet["history"].as_array().unwrap();
        if history.iter().any(|s| {
            s["running"] == 1
                && s["rss_bytes"].as_u64().unwrap() > 0
                && s["unix_ms"].as_u64().unwrap() > 0
        }) {
            assert!(fleet["rss_bytes"].as_u64().unwrap() > 0, "{fleet}");
            break;
        }
        assert!(Instant::now() < deadline, "{fleet}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    gate.open();
    wait_task(&api, &id, "completion", |t| t["status"] == "completed").await;
    let metrics = parse_metrics(&api.get("/metrics").await.text());
    assert_eq!(
        metrics["kugetsu_tasks_finished_total{status=\"completed\"}"],
        1.0
    );
    assert_eq!(metrics["kugetsu_shadows_running"], 0.0);
    assert!(!metrics.keys().any(|k| k.contains(&id)), "{metrics:?}");
}

#[tokio::test]
async fn http_bad_requests_get_json_errors_with_fitting_statuses() {
    let repo = TestRepo::with_files(FILES);
    let (_daemon, api) = start(&repo, "max_shadows = 1\nqueue_capacity = 1\n").await;
    let auth = api.bearer();
    let auth = [("Authorization", auth.as_str())];

    let bad_json = api
        .send("POST", "/api/v1/tasks", &auth, Some(b"{\"prompt\": "))
        .await;
    bad_json.assert_status(400);
    assert_eq!(bad_json.error_code(), -32700);
    let not_object = api.post("/api/v1/tasks", &json!(["prompt"])).await;
    not_object.assert_status(400);
    let unknown_field = api
        .post(
            "/api/v1/tasks",
            &json!({"prompt": "x", "repo": repo.repo(), "colour": "red"}),
        )
        .await;
    unknown_field.assert_status(400);
    assert_eq!(unknown_field.error_code(), -32602);
    assert!(
        unknown_field.text().contains("colour"),
        "{}",
        unknown_field.text()
    );
    let relative = api
        .post("/api/v1/tasks", &json!({"prompt": "x", "repo": "repo"}))
        .await;
    relative.assert_status(400);
    let unknown_task = api.get("/api/v1/tasks/0000000000000").await;
    unknown_task.assert_status(404);
    assert_eq!(unknown_task.error_code(), -32004);
    let steer_unknown = api
        .post("/api/v1/tasks/0000000000000/steer", &json!({"text": "hi"}))
        .await;
    steer_unknown.assert_status(404);
    let steer_extra = api
        .post(
            "/api/v1/tasks/0000000000000/steer",
            &json!({"text": "hi", "task": "x"}),
        )
        .await;
    steer_extra.assert_status(400);
    let no_route = api.get("/api/v1/nothing").await;
    no_route.assert_status(404);
    no_route.error_code();
    let wrong_method = api.send("DELETE", "/api/v1/tasks", &auth, None).await;
    wrong_method.assert_status(405);
    wrong_method.error_code();
    let bad_query = api.get("/api/v1/tasks?all=maybe").await;
    bad_query.assert_status(400);
    bad_query.error_code();
    let huge = vec![b' '; 2 * 1024 * 1024];
    let too_big = api.send("POST", "/api/v1/tasks", &auth, Some(&huge)).await;
    too_big.assert_status(413);
    too_big.error_code();

    // A full queue: 429 with Retry-After, and nothing was created.
    let gate = Gate::new(repo.root(), "gate");
    let m = model(&repo, "hold", "true", Some(&gate));
    let running = submit(&api, &repo, &m, "Run.").await;
    wait_task(&api, &running, "the start", |t| t["status"] == "running").await;
    let queued = submit(&api, &repo, &m, "Queue.").await;
    let full = api
        .post(
            "/api/v1/tasks",
            &json!({"prompt": "x", "repo": repo.repo(), "model": m}),
        )
        .await;
    full.assert_status(429);
    assert_eq!(full.error_code(), -32001);
    assert_eq!(full.json()["error"]["message"], "queue_full");
    assert!(full.header("retry-after").is_some(), "{:?}", full.headers);
    let empty_steer = api
        .post(
            &format!("/api/v1/tasks/{running}/steer"),
            &json!({"text": "  "}),
        )
        .await;
    empty_steer.assert_status(400);
    gate.open();
    wait_task(&api, &queued, "the queued one", |t| {
        t["status"] == "completed"
    })
    .await;
}

#[tokio::test]
async fn http_a_stalled_event_stream_is_cut_off_while_the_daemon_stays_responsive() {
    let repo = TestRepo::new();
    let llm = FakeLlm::openai();
    // About 3 MB of streamed text in small deltas: ~48k text_delta events.
    let text = "kugetsu ".repeat(3 * 1024 * 1024 / 8);
    llm.push(Turn::text(text).text_deltas_of(64));
    let daemon = Daemon::builder(&repo).config(HTTP).llm(&llm).start().await;
    let api = HttpApi::of(&daemon).await;

    // A client asks for every event and never reads a byte of the body.
    let mut stalled = api.sse("/api/v1/events", &[]).await;
    assert_eq!(stalled.status, 200);
    let id = daemon
        .submit(&["--no-worktree", "-m", &llm.model_arg()], "stream a lot")
        .await;
    // The daemon answers HTTP all along.
    wait_task(&api, &id, "completion", |t| {
        assert!(t["status"] != "failed", "{t}");
        t["status"] == "completed"
    })
    .await;
    api.get("/metrics").await.assert_status(200);

    // The stalled client gets what was queued for it, then why it was cut off.
    let mut delivered = 0;
    let ended = loop {
        let message = stalled
            .next(WAIT)
            .await
            .expect("the stream ended without saying why");
        if message.event.as_deref() == Some("subscription_ended") {
            break message.json();
        }
        assert_eq!(message.json()["task"], id);
        delivered += 1;
    };
    assert_eq!(ended["reason"], "lagged", "{ended}");
    let last = ended["delivered"][&id].as_u64().unwrap();
    assert!(last > 0 && last < 40_000, "{ended}");
    assert_eq!(
        delivered, last,
        "every event queued before the cut-off arrives"
    );
    assert_eq!(
        stalled.next(WAIT).await,
        None,
        "the stream ends after the notice"
    );
}

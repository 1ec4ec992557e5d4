//! The daemon at fleet scale: many idle shadows under a low open-files limit, and clients
//! that subscribe and never read.

use std::time::Duration;

use kugetsu_tests::events::{kind, str_of};
use kugetsu_tests::harness::daemon::WAIT;
use kugetsu_tests::{Daemon, FakeLlm, TestRepo, Turn};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const MIB: u64 = 1024 * 1024;

/// `VmHWM` (peak RSS) of `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/PID/status")
        * 1024
}

#[tokio::test]
async fn a_hundred_idle_shadows_run_under_a_256_file_soft_limit() {
    const SHADOWS: usize = 100;
    let repo = TestRepo::new();
    let llm = FakeLlm::openai();
    llm.push_all((0..SHADOWS).map(|_| Turn::text("thinking").stall_after(0)));
    // 100 shadows need more descriptors than 256: the daemon must raise its own soft limit.
    let daemon = Daemon::builder(&repo)
        .config(format!(
            "max_shadows = {SHADOWS}\nqueue_capacity = 200\nmem_limit = \"64MiB\"\n"
        ))
        .llm(&llm)
        .soft_nofile(256)
        .start()
        .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let soft: u64 = open_files
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert!(soft > 256, "the daemon kept its soft limit: {open_files}");

    let mut events = daemon.subscribe_all().await;
    let mut rpc = daemon.rpc().await;
    let mut ids = Vec::new();
    for i in 0..SHADOWS {
        let result = rpc
            .call(
                "submit",
                json!({"prompt": format!("idle {i}"), "repo": repo.repo(), "no_worktree": true, "model": llm.model_arg()}),
            )
            .await
            .unwrap_or_else(|e| panic!("submit {i} failed: {e}\n{}", daemon.stderr()));
        ids.push(str_of(&result, "task").to_owned());
    }
    let mut started = std::collections::HashSet::new();
    while started.len() < SHADOWS {
        let event = events
            .wait_event("every shadow started", WAIT, |e| kind(e) == "started")
            .await;
        started.insert(str_of(&event, "task").to_owned());
    }
    llm.wait_for_requests(SHADOWS, WAIT).await;
    let ps = daemon.ps().await;
    let running = ps.iter().filter(|t| t["status"] == "running").count();
    assert_eq!(running, SHADOWS, "{}", daemon.stderr());
    let stderr = daemon.stderr();
    assert!(
        !stderr.contains("not a git repository") && !stderr.contains("file descriptors"),
        "{stderr}"
    );
    // The fleet can still be stopped cleanly.
    for id in &ids {
        rpc.call("cancel", json!({"task": id})).await.unwrap();
    }
}

#[tokio::test]
async fn subscribers_that_never_read_are_cut_off_and_the_daemon_stays_small() {
    let repo = TestRepo::new();
    let llm = FakeLlm::openai();
    // About 3 MB of streamed text in small deltas: ~48k text_delta events.
    let text = "kugetsu ".repeat(3 * 1024 * 1024 / 8);
    llm.push(Turn::text(text).text_deltas_of(64));
    let daemon = Daemon::builder(&repo).llm(&llm).start().await;

    // Three clients subscribe to every task and never read a byte.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::UnixStream::connect(daemon.socket())
            .await
            .unwrap();
        stream
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"subscribe\",\"params\":{}}\n")
            .await
            .unwrap();
        stalled.push(stream);
    }
    let id = daemon
        .submit(&["--no-worktree", "-m", &llm.model_arg()], "stream a lot")
        .await;
    // Polled, not followed: a subscriber slower than the stream is cut off by design.
    let mut rpc = daemon.rpc().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let task = rpc.call("get", json!({"task": id})).await.unwrap();
        if task["status"] == "completed" {
            break;
        }
        assert!(
            task["status"] == "running" || task["status"] == "queued",
            "{task}\n{}",
            daemon.stderr()
        );
        assert!(std::time::Instant::now() < deadline, "{task}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = rpc.call("events", json!({"task": id})).await.unwrap();
    let deltas = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| kind(e) == "text_delta")
        .count();
    assert!(deltas > 10_000, "only {deltas} deltas were streamed");
    // Reading that whole log back (`events`, paged) does not inflate the daemon either.
    let peak = peak_rss(daemon.pid());
    assert!(
        peak < 64 * MIB,
        "the daemon peaked at {} MiB with stalled subscribers",
        peak / MIB
    );

    // Each stalled client gets what was queued for it, then the reason it was cut off and
    // where to resume; the connection itself stays usable.
    let stream = stalled.pop().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            line.clear();
            let n = reader.read_line(&mut line).await.unwrap();
            assert!(
                n > 0,
                "the connection closed without a subscription_ended notice"
            );
            let message: Value = serde_json::from_str(&line).unwrap();
            if message["method"] == "subscription_ended" {
                return message;
            }
        }
    })
    .await
    .expect("a subscription_ended notice");
    assert_eq!(ended["params"]["reason"], "lagged", "{ended}");
    let delivered = ended["params"]["delivered"][&id].as_u64().unwrap();
    assert!(delivered > 0, "{ended}");
    let mut stream = reader.into_inner();
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"get\",\"params\":{\"task\":\"")
        .await
        .unwrap();
    stream.write_all(id.as_bytes()).await.unwrap();
    stream.write_all(b"\"}}\n").await.unwrap();
    let mut reader = BufReader::new(stream);
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            let message: Value = serde_json::from_str(&line).unwrap();
            if message["id"] == 2 {
                return message;
            }
        }
    })
    .await
    .expect("an answer after the cut-off");
    assert_eq!(answer["result"]["status"], "completed", "{answer}");
}

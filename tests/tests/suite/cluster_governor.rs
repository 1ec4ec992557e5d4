//! The governor in a cluster: two nodes (real `kugetsu serve` daemons on one real PostgreSQL,
//! each with its own state directory and socket) share one key's rate limit and its 429 holds,
//! against a fake provider that enforces the limit with real headers.

use std::time::{Duration, Instant};

use kugetsu_tests::events::str_of;
use kugetsu_tests::postgres::Postgres;
use kugetsu_tests::{ApiError, Daemon, FakeLlm, RateLimit, TestRepo, Turn, Wire};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);

/// Node `id` of the cluster at `pg`, on `home` (its own state directory and socket), with
/// `max_shadows` slots and `extra` config.
async fn node(pg: &Postgres, home: &TestRepo, id: &str, llm: &FakeLlm, extra: &str) -> Daemon {
    Daemon::builder(home)
        .config(format!(
            "cluster = \"{}\"\nnode_id = \"{id}\"\n{extra}",
            pg.url()
        ))
        .llm(llm)
        .start()
        .await
}

/// Submits `n` tasks through `daemon`, all on the one repository `repo`; returns their ids.
async fn submit(daemon: &Daemon, repo: &TestRepo, llm: &FakeLlm, n: usize) -> Vec<String> {
    let mut rpc = daemon.rpc().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let result = rpc
            .call(
                "submit",
                json!({
                    "prompt": format!("task {i}"),
                    "repo": repo.repo(),
                    "no_worktree": true,
                    "model": llm.model_arg(),
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("submit {i}: {e}\n{}", daemon.stderr()));
        ids.push(str_of(&result, "task").to_owned());
    }
    ids
}

/// Which node ran each task, from the database.
fn nodes_of(pg: &Postgres) -> Vec<(String, String)> {
    pg.rows("SELECT id, coalesce(node, '') FROM kugetsu.tasks ORDER BY id")
        .into_iter()
        .map(|r| (r[0].clone(), r.get(1).cloned().unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn two_nodes_on_one_key_stay_within_its_limit_and_all_complete() {
    const PER_NODE: usize = 10;
    let Some(pg) = Postgres::start() else { return };
    // One repository for every task; the second TestRepo is only node b's home.
    let (repo, home_b) = (TestRepo::new(), TestRepo::new());
    // 240 requests a minute (4 a second), 8 at most in a burst: 60 requests from two nodes
    // cannot all go at once.
    let llm = FakeLlm::builder(Wire::OpenAi)
        .model(kugetsu_tests::fake_llm::OPENAI_MODEL)
        .api_key(kugetsu_tests::fake_llm::OPENAI_KEY)
        .rate_limit(RateLimit {
            rpm: 240,
            request_burst: 8,
            tpm: None,
            token_burst: 0,
        })
        .start();
    let total = 2 * PER_NODE;
    llm.push_all((0..2 * total).map(|_| Turn::new().tool_call("bash", json!({"command": "true"}))));
    llm.push_all((0..total).map(|i| Turn::text(format!("done {i}"))));
    let config = format!("max_shadows = {PER_NODE}\n");
    let a = node(&pg, &repo, "a", &llm, &config).await;
    let b = node(&pg, &home_b, "b", &llm, &config).await;
    let mut ids = submit(&a, &repo, &llm, PER_NODE).await;
    ids.extend(submit(&b, &repo, &llm, PER_NODE).await);
    for id in &ids {
        let events = a.wait_finished(id, WAIT).await;
        assert_eq!(
            events.status(),
            "completed",
            "task {id}\n{}\n--- node b\n{}",
            a.context(Some(id)),
            b.stderr()
        );
    }
    let ran: Vec<(String, String)> = nodes_of(&pg);
    for name in ["a", "b"] {
        assert!(
            ran.iter().any(|(_, n)| n == name),
            "node {name} ran no task: {ran:?}"
        );
    }
    let throttled = llm.throttled();
    let sent = 3 * total + throttled;
    eprintln!("{throttled} of {sent} requests answered 429");
    assert!(
        throttled * 20 <= sent,
        "{throttled} of {sent} requests were answered 429 (over 5%)\n--- node a\n{}\n--- node b\n{}",
        a.stderr(),
        b.stderr()
    );
    // The limit the headers taught is the cluster's, in the shared ledger.
    let learned = pg.rows("SELECT learned[1], lim[1] FROM kugetsu.gov_accounts");
    assert_eq!(learned.len(), 1, "one account: {learned:?}");
    assert_eq!(learned[0][0], "240", "{learned:?}");
    assert_eq!(learned[0][1], "240", "{learned:?}");
}

#[tokio::test]
async fn a_429_seen_by_one_node_holds_the_other_nodes_requests() {
    const HOLD_SECS: u64 = 8;
    let Some(pg) = Postgres::start() else { return };
    let (repo, home_b) = (TestRepo::new(), TestRepo::new());
    let llm = FakeLlm::openai();
    llm.push(ApiError::rate_limited().retry_after(HOLD_SECS));
    llm.push_all((0..4).map(|i| Turn::text(format!("done {i}"))));
    // Node a has one slot: once its task runs, b takes the rest.
    let a = node(&pg, &repo, "a", &llm, "max_shadows = 1\n").await;
    let first = submit(&a, &repo, &llm, 1).await.remove(0);
    llm.wait_for_turn_requests(1, WAIT).await;
    // The 429's hold reaches the ledger.
    let deadline = Instant::now() + WAIT;
    loop {
        let held = pg.rows(
            "SELECT hold_why FROM kugetsu.gov_accounts WHERE hold_until > now() + interval '2 s'",
        );
        if let Some(row) = held.first() {
            assert!(row[0].contains("seen by node a"), "{held:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hold never reached the database\n{}",
            a.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = node(&pg, &home_b, "b", &llm, "max_shadows = 3\n").await;
    let later = submit(&b, &repo, &llm, 3).await;
    for id in std::iter::once(&first).chain(&later) {
        let events = b.wait_finished(id, WAIT).await;
        assert_eq!(
            events.status(),
            "completed",
            "task {id}\n{}\n--- node a\n{}",
            b.context(Some(id)),
            a.stderr()
        );
    }
    let ran = nodes_of(&pg);
    assert!(
        ran.iter().any(|(id, n)| *id == first && n == "a"),
        "{ran:?}"
    );
    // Nothing went to the server, from either node, before the hold was over: node b, which
    // started after the 429, waited for the hold node a saw.
    let held_at = llm
        .answered_at(1)
        .unwrap_or_else(|| panic!("the 429 was not answered"));
    let requests = llm.requests();
    assert_eq!(requests.len(), 5, "one 429 and four turns");
    for request in &requests[1..] {
        let after = request.received_at.saturating_duration_since(held_at);
        assert!(
            after >= Duration::from_secs(HOLD_SECS) - Duration::from_millis(500),
            "request #{} went {after:?} after the 429 (retry-after {HOLD_SECS} s)\n--- node \
             b\n{}",
            request.number,
            b.stderr()
        );
    }
}

#[tokio::test]
async fn the_shared_ledger_charges_in_database_time_holds_and_hands_back() {
    let Some(pg) = Postgres::start() else { return };
    let repo = TestRepo::new();
    // A node applies the schema.
    let llm = FakeLlm::openai();
    let _a = node(&pg, &repo, "a", &llm, "").await;
    // Several statements in one call run in one transaction: one database time, so the
    // buckets do not refill between them.
    let waits = |sql: &str| -> Vec<String> {
        pg.psql("kugetsu", sql)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let reserve = "SELECT round(o_wait_ms) FROM kugetsu.gov_reserve('k', '{6,NULL,NULL,NULL}', \
                   '{1,500,0,0}', 90000);";
    // Six a minute: six go at once, the seventh is covered ten seconds later, the eighth
    // twenty.
    assert_eq!(
        waits(&reserve.repeat(8)),
        ["0", "0", "0", "0", "0", "0", "10000", "20000"]
    );
    // Two handed back (reservations that never went): the next waits for one less.
    let out = waits(&format!(
        "SELECT kugetsu.gov_refund('k', '{{2,0,0,0}}'); {reserve}"
    ));
    assert!(
        out.last()
            .is_some_and(|w| w.parse::<f64>().unwrap_or(0.0) <= 10_000.0),
        "{out:?}"
    );
    // No limit known for tokens: nothing is charged there, until the headers teach one.
    assert_eq!(
        pg.rows("SELECT lim[2] IS NULL FROM kugetsu.gov_accounts WHERE account = 'k'")[0][0],
        "t"
    );
    pg.psql(
        "kugetsu",
        "SELECT kugetsu.gov_observe('k', '{NULL,1000,NULL,NULL}', '{NULL,NULL,NULL,NULL}', 0, '')",
    );
    waits(reserve);
    assert_eq!(
        pg.rows("SELECT lim[2], round(level[2]) FROM kugetsu.gov_accounts WHERE account = 'k'"),
        [["1000", "500"]]
    );
    // The lower of a node's configured limit and the learned one applies.
    pg.psql(
        "kugetsu",
        "SELECT kugetsu.gov_observe('k2', '{60,NULL,NULL,NULL}', '{NULL,NULL,NULL,NULL}', 0, '')",
    );
    let lower = "SELECT round(o_wait_ms) FROM kugetsu.gov_reserve('k2', '{6,NULL,NULL,NULL}', \
                 '{1,0,0,0}', 90000);";
    assert_eq!(
        waits(&lower.repeat(7)).last().map(String::as_str),
        Some("10000")
    );
    // A 429's hold: every node's next permit is held, and charged nothing meanwhile.
    pg.psql(
        "kugetsu",
        "SELECT kugetsu.gov_observe('k3', '{6,NULL,NULL,NULL}', '{NULL,NULL,NULL,NULL}', 30000, \
         'retry-after 30.0 s after a 429 (seen by node x)')",
    );
    let held = pg.rows(
        "SELECT round(o_wait_ms), o_hold_ms > 25000, o_hold_why, o_learned[1], o_nodes \
         FROM kugetsu.gov_reserve('k3', '{NULL,NULL,NULL,NULL}', '{1,0,0,0}', 90000)",
    );
    assert_eq!(
        held,
        [[
            "0",
            "t",
            "retry-after 30.0 s after a 429 (seen by node x)",
            "6",
            "1"
        ]]
    );
    assert_eq!(
        pg.rows("SELECT level[1] IS NULL FROM kugetsu.gov_accounts WHERE account = 'k3'"),
        [["t"]],
        "a held permit was charged"
    );
    // Every permit learns what the cluster spent today.
    pg.psql(
        "kugetsu",
        "INSERT INTO kugetsu.gov_daily VALUES ((now() AT TIME ZONE 'UTC')::date, 1234, 0.5)",
    );
    let spent = pg.rows(
        "SELECT o_day_tokens, o_day_usd FROM kugetsu.gov_reserve('k4', '{NULL,NULL,NULL,NULL}', \
         '{0,0,0,0}', 90000)",
    );
    assert_eq!(spent, [["1234", "0.5"]]);
}

#[tokio::test]
async fn with_the_database_down_a_node_keeps_to_its_share_and_says_so() {
    let Some(pg) = Postgres::start() else { return };
    let repo = TestRepo::new();
    let llm = FakeLlm::openai();
    // The first answer is a 429: the retry's permit comes while the database is down.
    llm.push(ApiError::rate_limited().retry_after(3));
    llm.push(Turn::text("done"));
    let a = node(&pg, &repo, "a", &llm, "lease_ttl = \"60s\"\n").await;
    let mark = a.stderr_mark();
    let id = submit(&a, &repo, &llm, 1).await.remove(0);
    llm.wait_for_turn_requests(1, WAIT).await;
    pg.stop();
    // The permit does not stall on the database: the retry goes, on the node's own governor.
    llm.wait_for_turn_requests(2, WAIT).await;
    let log = a
        .wait_for_stderr(mark, "cluster governor: the database did not answer", WAIT)
        .await;
    assert!(
        log.contains("keeps to its share of each account's limits (1/1"),
        "{log}"
    );
    pg.restart();
    pg.wait_ready(WAIT);
    let events = a.wait_finished(&id, WAIT).await;
    assert_eq!(events.status(), "completed", "{}", a.context(Some(&id)));
}

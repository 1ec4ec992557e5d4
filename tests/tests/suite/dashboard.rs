//! The web dashboard (docs/http.md, "Dashboard") in a real browser: headless Chromium driven
//! over WebDriver, against the real daemon with its HTTP API on a real git repository and
//! shadows on the scripted model. The assertions are about what a person sees on the page;
//! what the page claims (a steer, a cancel, a merge) is checked again in the task's event log
//! and in git.
//!
//! Without `chromium` and `chromium-driver` installed the browser test is skipped with a loud
//! message, unless `CI` is set: then their absence fails it.

use std::io::Write as _;
use std::path::PathBuf;

use kugetsu_tests::browser::{self, Availability, Browser};
use kugetsu_tests::harness::daemon::WAIT;
use kugetsu_tests::harness::http::HttpApi;
use kugetsu_tests::{Daemon, Gate, Script, TestRepo};
use serde_json::Value;

const FILES: &[(&str, &str)] = &[("a.txt", "one\ntwo\nthree\n"), ("b.txt", "alpha\nbeta\n")];

/// Starts the daemon with the HTTP API on `addr` (`127.0.0.1:0`: a port the system picks) and
/// three shadows at most; where it listens and its token.
async fn http_daemon(repo: &TestRepo, addr: &str) -> (Daemon, HttpApi) {
    let daemon = Daemon::builder(repo)
        .config(format!("http = \"{addr}\"\nmax_shadows = 3\n"))
        .start()
        .await;
    let api = HttpApi::of(&daemon).await;
    (daemon, api)
}

/// A scripted model named `name`: each of `commands` in its own turn, then `answer`.
fn model(repo: &TestRepo, name: &str, commands: &[&str], answer: &str) -> String {
    let mut script = Script::new();
    for command in commands {
        script = script.bash("Working on it.", command);
    }
    script
        .text(answer)
        .write(&repo.root().join("scripts").join(format!("{name}.json")))
}

/// Where the screenshot goes: `$KUGETSU_SCREENSHOT`, else `dashboard.png` in the cargo target
/// directory the test runs from.
fn screenshot_path() -> PathBuf {
    if let Some(path) = std::env::var_os("KUGETSU_SCREENSHOT") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/all-HASH
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test runs from a cargo target directory");
    target.join("dashboard.png")
}

/// The events of `id` in its `events.jsonl`.
fn event_log(daemon: &Daemon, id: &str) -> Vec<Value> {
    let path = daemon
        .state_dir()
        .join("tasks")
        .join(id)
        .join("events.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Says, past the test harness's output capture, that the browser test did not run.
fn skip_loudly(why: &str) {
    let banner = format!(
        "\n=== SKIPPED: the dashboard browser test did not run: {why}. \
         Install them (apt-get install chromium chromium-driver) or set CI=1 to make this a failure. ===\n\n"
    );
    let _ = std::io::stderr().write_all(banner.as_bytes());
}

#[tokio::test]
async fn dashboard_in_a_real_browser_shows_the_fleet_and_steers_cancels_and_merges() {
    if let Availability::Skip(why) = browser::availability() {
        skip_loudly(&why);
        return;
    }
    // Each step is its own future on the heap: one future for the whole walk overflows the
    // test thread's stack in debug builds.
    let mut walk = Box::pin(Walk::start()).await;
    Box::pin(walk.sign_in()).await;
    Box::pin(walk.memory()).await;
    Box::pin(walk.log_and_steer()).await;
    Box::pin(walk.cancel()).await;
    Box::pin(walk.diff_and_merge()).await;
    Box::pin(walk.sign_out_and_disconnect()).await;
    walk.browser.close().await;
}

/// The dashboard test's daemon, tasks and browser.
struct Walk {
    repo: TestRepo,
    daemon: Daemon,
    base: String,
    token: String,
    browser: Browser,
    /// Completed before the browser opens; merged from the page.
    merge_id: String,
    /// Counts to three, then waits at `steer_gate`; steered from the page.
    steer_id: String,
    steer_gate: Gate,
    /// Waits forever; cancelled from the page.
    cancel_id: String,
    /// Holds the third slot until `hold_gate` opens.
    hold_id: String,
    hold_gate: Gate,
    /// Low priority, queued behind the three.
    queued_id: String,
}

impl Walk {
    async fn start() -> Walk {
        let repo = TestRepo::with_files(FILES);
        // A fixed port, so the page finds the daemon again after its restart.
        let port = browser::free_port();
        let (daemon, api) = http_daemon(&repo, &format!("127.0.0.1:{port}")).await;

        // A task that completes at once, for the merge. Its change and prompt carry markup:
        // the page must show it as text.
        let merge_model = model(
            &repo,
            "merge",
            &["echo '<b id=\"injected\">bold</b>' >> b.txt"],
            "Added a <i>line</i>.",
        );
        let merge_id = daemon
            .submit(&["-m", &merge_model], "Add <b>a line</b> to b.txt")
            .await;
        let merged = daemon.wait_finished(&merge_id, WAIT).await;
        assert_eq!(merged.status(), "completed", "{merged:?}");

        // Three shadows held at gates (the pool is full), one more queued behind them.
        let steer_gate = Gate::new(repo.root(), "steer-gate");
        let cancel_gate = Gate::new(repo.root(), "cancel-gate");
        let hold_gate = Gate::new(repo.root(), "hold-gate");
        let steer_model = model(
            &repo,
            "steer",
            &[
                "for i in 1 2 3; do echo tick $i; sleep 0.2; done",
                &steer_gate.wait_command(),
            ],
            "Steered and done.",
        );
        let cancel_model = model(&repo, "cancel", &[&cancel_gate.wait_command()], "Never.");
        let hold_model = model(&repo, "hold", &[&hold_gate.wait_command()], "Held.");
        let queued_model = model(&repo, "queued", &["echo queued"], "Queued and done.");
        let steer_id = daemon
            .submit(&["-m", &steer_model], "Count to three, then wait")
            .await;
        let cancel_id = daemon.submit(&["-m", &cancel_model], "Wait forever").await;
        let hold_id = daemon.submit(&["-m", &hold_model], "Hold a slot").await;
        let queued_id = daemon
            .submit(
                &["-m", &queued_model, "--priority", "low"],
                "Wait for a free slot",
            )
            .await;
        let browser = Browser::launch(1500, 1000).await;
        Walk {
            repo,
            daemon,
            base: format!("http://{}", api.addr),
            token: api.token,
            browser,
            merge_id,
            steer_id,
            steer_gate,
            cancel_id,
            hold_id,
            hold_gate,
            queued_id,
        }
    }

    /// The status cell of `id`'s row in the shadows table.
    fn status_of(id: &str) -> String {
        format!("#shadows tr[data-task='{id}'] .status")
    }

    async fn sign_in(&mut self) {
        let browser = &self.browser;
        let base = &self.base;
        // Without the cookie the page says how to sign in.
        browser.goto(&format!("{base}/")).await;
        let page = browser.page_text().await;
        assert!(
            page.contains("/?token="),
            "the page without a cookie does not say how to sign in:\n{page}"
        );
        assert!(browser.find("#shadows").await.is_none(), "{page}");

        // Signed in, the token leaves the address bar and the table lists every shadow.
        browser.goto(&format!("{base}/?token={}", self.token)).await;
        let url = browser.current_url().await;
        assert_eq!(url, format!("{base}/"), "the sign-in did not redirect to /");
        for (id, status) in [
            (&self.merge_id, "completed"),
            (&self.steer_id, "running"),
            (&self.cancel_id, "running"),
            (&self.hold_id, "running"),
        ] {
            browser
                .wait_for_text(&Self::status_of(id), status, WAIT)
                .await;
        }
        // The queued one is in the queue, with its priority.
        let queued_row = browser
            .wait_for_text(
                &format!("#queue tr[data-task='{}']", self.queued_id),
                "low",
                WAIT,
            )
            .await;
        assert!(queued_row.contains(&self.queued_id), "{queued_row}");
        // The hostile prompt is shown as text.
        browser
            .wait_for_text(
                &format!("#shadows tr[data-task='{}']", self.merge_id),
                "Add <b>a line</b> to b.txt",
                WAIT,
            )
            .await;
        // The header counts the fleet.
        let running = browser.wait_for_text("#count-running", "3 / 3", WAIT).await;
        assert_eq!(running, "3 / 3");
        assert_eq!(browser.text_of("#count-queued").await, "1");
    }

    async fn memory(&mut self) {
        let browser = &self.browser;
        // A running shadow's memory bar is filled to its RSS against its limit.
        let bar = format!("#shadows tr[data-task='{}'] .membar .fill", self.hold_id);
        let width = browser
            .wait_for("a filled memory bar", WAIT, || async {
                let width = browser
                    .execute(
                        "const e = document.querySelector(arguments[0]); \
                         return e ? e.style.width : null;",
                        serde_json::json!([bar]),
                    )
                    .await;
                let pct: f64 = width.as_str()?.trim_end_matches('%').parse().ok()?;
                (pct > 0.0).then_some(pct)
            })
            .await;
        assert!(width <= 100.0, "{width}");
        let memtext = browser
            .text_of(&format!(
                "#shadows tr[data-task='{}'] .memtext",
                self.hold_id
            ))
            .await;
        assert!(memtext.contains(" / 512 MiB"), "{memtext}");

        // The memory chart has points (the daemon samples every 2 s).
        browser
            .wait_for("three samples in the memory chart", WAIT, || async {
                let n = browser
                    .execute(
                        "const l = document.querySelector('#chart polyline.rss'); \
                         return l ? l.points.numberOfItems : 0;",
                        serde_json::json!([]),
                    )
                    .await
                    .as_u64()?;
                (n >= 3).then_some(n)
            })
            .await;
        let caption = browser.text_of("#chart-caption").await;
        assert!(caption.contains("samples"), "{caption}");
    }

    async fn log_and_steer(&mut self) {
        let browser = &self.browser;
        let id = &self.steer_id;
        // A click on a row opens its log, which grows with tool lines as the shadow works.
        browser
            .click(&format!("#shadows tr[data-task='{id}']"))
            .await;
        browser.wait_for_text("#detail-id", id, WAIT).await;
        let first_tool = browser.wait_for_text("#log .tool", "✓", WAIT).await;
        assert!(first_tool.contains("bash for i in 1 2 3"), "{first_tool}");
        assert!(
            first_tool.contains("tick 3"),
            "the output is missing: {first_tool}"
        );
        let tool_lines = browser
            .wait_for("the gate's tool line", WAIT, || async {
                let lines = browser.find_all("#log .tool").await;
                (lines.len() >= 2).then_some(lines.len())
            })
            .await;
        let log_before = browser.find_all("#log .line").await.len();
        assert!(log_before > tool_lines, "{log_before} lines");

        // Steer: the daemon's answer is shown, and the steered line appears once the shadow
        // reaches its next turn.
        let steering = "Also mention <the tests> & be brief";
        browser.type_into("#steer-text", steering).await;
        browser.click("#steer-button").await;
        browser
            .wait_for_text("#answer", "Steering accepted", WAIT)
            .await;

        // Several shadows running, one queued, a log open: the screenshot.
        let shot = browser.screenshot().await;
        assert!(shot.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        let path = screenshot_path();
        std::fs::write(&path, &shot).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        let _ = std::io::stderr()
            .write_all(format!("dashboard screenshot: {}\n", path.display()).as_bytes());

        self.steer_gate.open();
        let steered = browser
            .wait_for_text("#log .steered", "steered", WAIT)
            .await;
        assert!(steered.contains(steering), "{steered}");
        browser
            .wait_for_text("#log .finished", "completed", WAIT)
            .await;
        assert!(browser.find_all("#log .line").await.len() > log_before);
        let log = event_log(&self.daemon, id);
        assert!(
            log.iter()
                .any(|e| e["type"] == "steered" && e["text"] == steering),
            "no steered event in {id}'s events.jsonl: {log:?}"
        );
        browser
            .wait_for_text(&Self::status_of(id), "completed", WAIT)
            .await;
    }

    async fn cancel(&mut self) {
        let browser = &self.browser;
        let id = &self.cancel_id;
        browser
            .click(&format!("#shadows tr[data-task='{id}']"))
            .await;
        browser.wait_for_text("#detail-id", id, WAIT).await;
        browser.click("#cancel-button").await;
        let answer = browser.wait_for_text("#answer", "Cancel:", WAIT).await;
        assert!(answer.contains("cancel"), "{answer}");
        browser
            .wait_for_text(&Self::status_of(id), "cancelled", WAIT)
            .await;
        let log = event_log(&self.daemon, id);
        assert_eq!(
            log.last().map(|e| (e["type"].clone(), e["status"].clone())),
            Some(("finished".into(), "cancelled".into())),
            "{log:?}"
        );
    }

    async fn diff_and_merge(&mut self) {
        let browser = &self.browser;
        let repo = &self.repo;
        let id = &self.merge_id;
        // The diff of the completed task, coloured, its markup shown as text.
        browser
            .click(&format!("#shadows tr[data-task='{id}']"))
            .await;
        browser.wait_for_text("#detail-id", id, WAIT).await;
        // Its log ends with the model's answer, markup and all, as text.
        let finished = browser
            .wait_for_text("#log .finished", "completed", WAIT)
            .await;
        assert!(finished.contains("Added a <i>line</i>."), "{finished}");
        assert!(browser.find("#log i").await.is_none(), "markup was parsed");
        browser.click("#tab-diff").await;
        let added = browser.wait_for_text("#diff .add", "bold", WAIT).await;
        assert_eq!(added, "+<b id=\"injected\">bold</b>");
        assert!(
            browser.find("#injected").await.is_none(),
            "markup was parsed"
        );
        assert!(browser.text_of("#diff .file").await.contains("b.txt"));

        // Merge from the page: it says where the task landed, and git agrees.
        let before = repo.git(&["rev-parse", "main"]).trim().to_owned();
        browser.click("#merge-button").await;
        let landed = browser.wait_for_text("#answer", "Landed", WAIT).await;
        let after = repo.git(&["rev-parse", "main"]).trim().to_owned();
        assert_ne!(before, after, "main did not move: {landed}");
        assert!(landed.contains(" on main at "), "{landed}");
        assert!(landed.contains(&after[..12]), "{landed} vs {after}");
        let tip_of_task = repo
            .git(&["rev-parse", &format!("kugetsu/{id}")])
            .trim()
            .to_owned();
        // git fails (and the harness with it) unless the task's tip is now on main.
        repo.git(&["merge-base", "--is-ancestor", &tip_of_task, "main"]);
        assert!(
            repo.git(&["show", "main:b.txt"]).contains("bold</b>"),
            "main lacks the task's change"
        );
        // A second merge is refused, and the refusal is shown.
        browser.click("#merge-button").await;
        let refused = browser.wait_for_text("#answer", "Refused", WAIT).await;
        assert!(refused.contains("already_merged"), "{refused}");

        // The queued task ran once a slot was free.
        browser
            .wait_for_text(&Self::status_of(&self.queued_id), "completed", WAIT)
            .await;
    }

    async fn sign_out_and_disconnect(&mut self) {
        let browser = &self.browser;
        // A cookie that is gone: the page tells the person how to sign in again.
        browser.delete_cookie("kugetsu_token").await;
        browser.wait_for_text("#signin", "/?token=", WAIT).await;
        browser
            .goto(&format!("{}/?token={}", self.base, self.token))
            .await;
        browser
            .wait_for_text(&Self::status_of(&self.hold_id), "running", WAIT)
            .await;

        // The daemon goes away: the page says so and keeps trying, and comes back with it.
        self.hold_gate.open();
        self.daemon.wait_finished(&self.hold_id, WAIT).await;
        self.daemon.kill9().await;
        browser
            .wait_for_text("#banner", "disconnected, retrying", WAIT)
            .await;
        let mark = self.daemon.stderr_mark();
        self.daemon.restart().await;
        let again = HttpApi::after(&self.daemon, mark).await;
        assert_eq!(format!("http://{}", again.addr), self.base);
        browser
            .wait_for("the banner gone after the restart", WAIT, || async {
                let banner = browser.text_of("#banner").await;
                let conn = browser.text_of("#conn").await;
                (banner.is_empty() && conn == "live").then_some(())
            })
            .await;
        browser
            .wait_for_text(&Self::status_of(&self.hold_id), "completed", WAIT)
            .await;
    }
}

/// The assets come with their content types and ETags, and a browser that has them gets 304.
#[tokio::test]
async fn dashboard_assets_have_content_types_and_etags() {
    let repo = TestRepo::with_files(FILES);
    let (_daemon, api) = http_daemon(&repo, "127.0.0.1:0").await;
    let bearer = api.bearer();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/style.css", "text/css; charset=utf-8"),
    ] {
        let unauthorized = api.send("GET", path, &[], None).await;
        assert_eq!(unauthorized.status, 401, "{path} without the token");
        let fresh = api.get(path).await;
        assert_eq!(fresh.status, 200, "{path}: {}", fresh.text());
        assert_eq!(fresh.header("content-type"), Some(content_type), "{path}");
        assert_eq!(fresh.header("cache-control"), Some("no-cache"), "{path}");
        let etag = fresh
            .header("etag")
            .unwrap_or_else(|| panic!("{path} has no ETag"))
            .to_owned();
        let cached = api
            .send(
                "GET",
                path,
                &[("Authorization", &bearer), ("If-None-Match", &etag)],
                None,
            )
            .await;
        assert_eq!(cached.status, 304, "{path} with its ETag");
        assert!(cached.body.is_empty(), "{path}: a 304 has no body");
        let stale = api
            .send(
                "GET",
                path,
                &[("Authorization", &bearer), ("If-None-Match", "\"stale\"")],
                None,
            )
            .await;
        assert_eq!(stale.status, 200, "{path} with another ETag");
        assert_eq!(stale.body, fresh.body);
    }
    let page = api.get("/").await;
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.text().contains("/assets/app.js"));
}

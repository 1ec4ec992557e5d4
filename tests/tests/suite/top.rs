//! `kugetsu top` end to end (docs/cli.md#kugetsu-top): the real dashboard in a real terminal
//! (tmux, on a server of the test's own), against a real daemon whose shadows run scripted
//! models held at a [`Gate`] so they are seen running. Keys go in with `send-keys`, the screen
//! comes out with `capture-pane`, and what the keys did is checked over the daemon's API.
//!
//! `top` runs inside a small shell script that records its pid, its exit code and
//! `stty -a` after it ended: the terminal must be back in cooked mode with echo on whichever
//! way `top` ended.
//!
//! Waits poll the screen with generous deadlines; nothing asserts how long anything took.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kugetsu_tests::events::kind;
use kugetsu_tests::harness::bin_path;
use kugetsu_tests::harness::daemon::WAIT;
use kugetsu_tests::{Daemon, Gate, Script, TestRepo};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// The daemon's config in these tests: two shadows at once (a third task queues), a known
/// memory limit for the bars' figures.
const CONFIG: &str = "max_shadows = 2\nmem_limit = \"512MiB\"\n";

/// A tmux server of this test's own (`tmux -L`), with one session running `top` in a script.
/// Dropping it kills the server.
struct Tmux {
    server: String,
    session: &'static str,
    /// Where the script leaves `top`'s pid, exit code, stderr and `stty -a`.
    dir: PathBuf,
}

impl Tmux {
    /// Starts `kugetsu top ARGS` (prefixed by `env`, e.g. `TERM=dumb`) in a `width`x`height`
    /// terminal.
    fn start(dir: &Path, name: &str, width: u16, height: u16, env: &str, args: &str) -> Tmux {
        let dir = dir.join(format!("tmux-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("top.sh");
        let d = dir.display();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 {env} sh -c 'echo $$ > \"{d}/pid\"; exec \"$0\" \"$@\"' '{kugetsu}' top {args} 2> '{d}/stderr'\n\
                 echo $? > '{d}/code.tmp' && mv '{d}/code.tmp' '{d}/code'\n\
                 stty -a > '{d}/stty'\n",
                kugetsu = bin_path("kugetsu").display(),
            ),
        )
        .unwrap();
        let tmux = Tmux {
            server: format!("kugetsu-top-{}-{name}", std::process::id()),
            session: "top",
            dir,
        };
        let out = tmux.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            tmux.session,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &format!("sh '{}'", script.display()),
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        tmux
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.server)
            .args(args)
            .output()
            .expect("run tmux (is it installed? .ci/run installs it)")
    }

    /// The screen as text (empty once the session is gone).
    fn screen(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-t", self.session]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends tmux key names (`Down`, `Enter`, `Escape`, `c`).
    fn keys(&self, keys: &[&str]) {
        for key in keys {
            let out = self.tmux(&["send-keys", "-t", self.session, key]);
            assert!(out.status.success(), "send-keys {key}: {out:?}");
        }
    }

    /// Types `text` literally.
    fn type_text(&self, text: &str) {
        let out = self.tmux(&["send-keys", "-t", self.session, "-l", text]);
        assert!(out.status.success(), "send-keys -l {text:?}: {out:?}");
    }

    fn alive(&self) -> bool {
        self.tmux(&["has-session", "-t", self.session])
            .status
            .success()
    }

    /// Waits until the screen satisfies `ok`; returns it. Panics with the last screen.
    async fn wait_screen(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline && self.alive(),
                "the screen never showed {what} (session alive: {}); last screen:\n{screen}\nstderr: {}",
                self.alive(),
                self.read("stderr").unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for `top` to end; returns its exit code. Checks the terminal it left behind.
    async fn wait_exit(&self) -> i32 {
        let deadline = Instant::now() + WAIT;
        while self.read("code").is_none() || self.alive() {
            assert!(
                Instant::now() < deadline,
                "top did not exit; screen:\n{}",
                self.screen()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stty = self.read("stty").expect("stty -a ran after top");
        let flags: Vec<&str> = stty.split_whitespace().collect();
        for flag in ["icanon", "echo", "isig", "icrnl", "opost"] {
            assert!(
                flags.contains(&flag) && !flags.contains(&format!("-{flag}").as_str()),
                "the terminal was left without {flag}:\n{stty}"
            );
        }
        self.read("code").unwrap().trim().parse().unwrap()
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(name)).ok()
    }

    fn pid(&self) -> i32 {
        self.read("pid").unwrap().trim().parse().unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// The screen line that starts with task `id` (its row).
fn row<'a>(screen: &'a str, id: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.starts_with(id))
}

/// Whether `line` shows a memory figure against 512 MiB, like `14M/512M`.
fn has_rss(line: &str) -> bool {
    line.match_indices("/512M").any(|(at, _)| {
        let before: Vec<char> = line[..at].chars().rev().take(2).collect();
        matches!(before.as_slice(), [unit, digit, ..] if "KMG".contains(*unit) && digit.is_ascii_digit())
    })
}

/// A task that calls bash to wait at each gate in turn, then answers.
fn gated_model(repo: &TestRepo, name: &str, gates: &[&Gate]) -> String {
    let mut script = Script::new();
    for (i, gate) in gates.iter().enumerate() {
        script = script.bash(&format!("Waiting at gate {}.", i + 1), &gate.wait_command());
    }
    script
        .text("All gates passed.")
        .write(&repo.root().join("scripts").join(format!("{name}.json")))
}

async fn status_of(daemon: &Daemon, id: &str) -> Value {
    daemon
        .rpc()
        .await
        .call("get", json!({"task": id}))
        .await
        .unwrap()
}

#[tokio::test]
async fn top_under_tmux_shows_the_fleet_steers_cancels_opens_a_log_and_quits() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo).config(CONFIG).start().await;
    let gate_a = Gate::new(repo.root(), "gate-a");
    let gate_b = Gate::new(repo.root(), "gate-b");
    let never = Gate::new(repo.root(), "never");
    let model_a = gated_model(&repo, "a", &[&gate_a]);
    let model_b = gated_model(&repo, "b", &[&gate_b, &never]);
    let a = daemon.submit(&["-m", &model_a], "Task A waits.").await;
    let b = daemon
        .submit(&["-m", &model_b], "Task B waits twice.")
        .await;
    let c = daemon
        .submit(&["-m", &model_a, "--priority", "low"], "Task C queues.")
        .await;

    let socket = daemon.socket().display().to_string();
    let top = Tmux::start(
        repo.root(),
        "fleet",
        120,
        40,
        "",
        &format!("--socket '{socket}'"),
    );
    let screen = top
        .wait_screen(
            "both shadows running with their memory and the queued task",
            |s| {
                [&a, &b]
                    .iter()
                    .all(|id| row(s, id).is_some_and(|r| r.contains("running") && has_rss(r)))
                    && s.lines()
                        .any(|l| l.starts_with("1.") && l.contains(c.as_str()) && l.contains("low"))
            },
        )
        .await;
    assert!(screen.contains(&format!("daemon {socket}")), "{screen}");
    assert!(
        screen.contains("2 running · 1 queued · 3 total"),
        "{screen}"
    );
    assert!(screen.contains("queue (1)"), "{screen}");
    assert!(screen.contains("q  quit"), "{screen}");
    let limit = status_of(&daemon, &a).await["mem_limit"].clone();
    assert_eq!(limit, 512 * 1024 * 1024, "the figure's limit is the task's");
    // For the session note: one real screen.
    let target = bin_path("kugetsu")
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    std::fs::write(target.join("top-screen.txt"), &screen).unwrap();

    // A resize redraws; the rest runs at 80x24.
    let out = top.tmux(&["resize-window", "-t", top.session, "-x", "80", "-y", "24"]);
    assert!(out.status.success(), "resize-window: {out:?}");
    let small = top
        .wait_screen("the fleet redrawn at 80x24", |s| {
            s.lines().count() <= 24
                && s.lines().all(|l| l.chars().count() <= 80)
                && [&a, &b]
                    .iter()
                    .all(|id| row(s, id).is_some_and(|r| r.contains("running") && has_rss(r)))
                && s.contains("q  quit")
        })
        .await;
    assert!(small.contains("2 running · 1 queued · 3 total"), "{small}");

    // Down selects B; `s` opens the input line; Enter sends.
    let mut events = daemon.rpc().await;
    events.call("subscribe", json!({"task": b})).await.unwrap();
    top.keys(&["Down", "s"]);
    top.wait_screen("the steering input line", |s| {
        s.contains(&format!("steer {b}>"))
    })
    .await;
    top.type_text("run the tests first");
    top.wait_screen("the typed message", |s| {
        s.contains(&format!("steer {b}> run the tests first"))
    })
    .await;
    top.keys(&["Enter"]);
    top.wait_screen("the steer's result", |s| {
        s.contains(&format!("steering message queued for {b}"))
    })
    .await;
    // Delivered at B's next turn.
    gate_b.open();
    let steered = events
        .wait_event("B's steered event", WAIT, |e| kind(e) == "steered")
        .await;
    assert_eq!(steered["text"], "run the tests first", "{steered}");
    assert_eq!(steered["task"], b.as_str());

    // `c` asks; `y` cancels B (now at its second gate, which never opens).
    top.keys(&["c"]);
    top.wait_screen("the cancel question", |s| {
        s.contains(&format!("cancel task {b}? y/n"))
    })
    .await;
    top.keys(&["y"]);
    top.wait_screen("the cancel's result", |s| {
        s.contains(&format!("cancelling {b}")) || s.contains(&format!("cancelled {b}"))
    })
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let task = status_of(&daemon, &b).await;
        if task["status"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "B was not cancelled: {task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B's slot went to C.
    top.wait_screen("B gone and C running", |s| {
        row(s, &b).is_none() && row(s, &c).is_some_and(|r| r.contains("running"))
    })
    .await;

    // A's log: its events so far, live.
    top.keys(&["Home", "l"]);
    let log = top
        .wait_screen("A's log with its tool call", |s| {
            s.contains(&format!("log {a} · following"))
                && s.contains("Waiting at gate 1.")
                && s.contains("▸ bash while [ ! -e")
        })
        .await;
    assert!(log.contains("started attempt 1"), "{log}");
    assert!(log.contains("queued (normal)"), "{log}");
    gate_a.open();
    top.wait_screen("A's tool result and its end, live", |s| {
        s.contains("✓ bash ok")
            && s.contains("finished: completed")
            && s.contains("All gates passed.")
    })
    .await;
    top.keys(&["Escape"]);
    top.wait_screen("the fleet again", |s| s.contains("shadows ("))
        .await;

    top.keys(&["q"]);
    assert_eq!(top.wait_exit().await, 0, "{:?}", top.read("stderr"));
    assert_eq!(top.read("stderr").unwrap_or_default(), "");
}

#[tokio::test]
async fn top_restores_the_terminal_on_sigterm_ctrl_c_and_when_the_daemon_goes_away() {
    let repo = TestRepo::new();
    let mut daemon = Daemon::builder(&repo).config(CONFIG).start().await;
    let gate = Gate::new(repo.root(), "gate");
    let model = gated_model(&repo, "held", &[&gate]);
    let id = daemon.submit(&["-m", &model], "Hold on.").await;
    let args = format!("--socket '{}'", daemon.socket().display());
    let running = |s: &str| row(s, &id).is_some_and(|r| r.contains("running"));

    // SIGTERM (what a closing terminal emulator or `kill` sends).
    let termed = Tmux::start(repo.root(), "term", 80, 24, "", &args);
    termed.wait_screen("the running task", running).await;
    signal::kill(Pid::from_raw(termed.pid()), Signal::SIGTERM).unwrap();
    assert_eq!(termed.wait_exit().await, 0);

    // Ctrl-C is a key in raw mode: it quits like `q`.
    let interrupted = Tmux::start(repo.root(), "ctrl-c", 80, 24, "", &args);
    interrupted.wait_screen("the running task", running).await;
    interrupted.keys(&["C-c"]);
    assert_eq!(interrupted.wait_exit().await, 0);

    // A terminal that cannot draw is refused with the way out.
    let dumb = Tmux::start(repo.root(), "dumb", 80, 24, "TERM=dumb", &args);
    assert_eq!(dumb.wait_exit().await, 2);
    let stderr = dumb.read("stderr").unwrap();
    assert!(
        stderr.contains("TERM is dumb") && stderr.contains("kugetsu top --once"),
        "{stderr}"
    );

    // The daemon dies under it: top ends, says so, and leaves the terminal usable.
    let orphaned = Tmux::start(repo.root(), "gone", 80, 24, "", &args);
    orphaned.wait_screen("the running task", running).await;
    daemon.kill9().await;
    assert_eq!(orphaned.wait_exit().await, 1);
    let stderr = orphaned.read("stderr").unwrap();
    assert!(stderr.contains("daemon"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn top_once_prints_the_plain_table_and_top_without_a_terminal_points_to_it() {
    let repo = TestRepo::new();
    let daemon = Daemon::builder(&repo)
        .config("max_shadows = 1\n")
        .start()
        .await;
    let gate = Gate::new(repo.root(), "gate");
    let model = gated_model(&repo, "held", &[&gate]);
    let first = daemon.submit(&["-m", &model], "First.").await;
    let second = daemon.submit(&["-m", &model], "Second.").await;
    let mut events = daemon.rpc().await;
    events
        .call("subscribe", json!({"task": first}))
        .await
        .unwrap();
    events
        .wait_event("the first task's tool call", WAIT, |e| {
            kind(e) == "tool_start"
        })
        .await;

    let once = daemon.cli(["top", "--once"]).await;
    once.assert_code(0);
    let lines: Vec<&str> = once.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATUS"),
        "{}",
        once.stdout
    );
    let line = |id: &str| lines.iter().find(|l| l.starts_with(id)).copied();
    assert!(
        line(&first).is_some_and(|l| l.contains("running")),
        "{}",
        once.stdout
    );
    assert!(
        line(&second).is_some_and(|l| l.contains("queued")),
        "{}",
        once.stdout
    );
    assert!(
        once.stdout.contains("1 running, 1 queued, 2 total"),
        "{}",
        once.stdout
    );
    assert!(
        !once.stdout.contains('\x1b'),
        "plain text: {:?}",
        once.stdout
    );

    // Without --once and without a terminal (stdout is a pipe here): a usage error that
    // names the way out, and nothing on stdout.
    let piped = daemon.cli(["top"]).await;
    piped.assert_code(2);
    assert!(piped.stdout.is_empty(), "{}", piped.stdout);
    assert!(
        piped.stderr.contains("not a terminal") && piped.stderr.contains("kugetsu top --once"),
        "{}",
        piped.stderr
    );

    gate.open();
    daemon.wait_finished(&first, WAIT).await;
    daemon.wait_finished(&second, WAIT).await;
    let once = daemon.cli(["top", "--once"]).await;
    once.assert_code(0);
    assert!(
        !once.stdout.contains(&first),
        "only live tasks: {}",
        once.stdout
    );
    assert!(
        once.stdout.contains("0 running, 0 queued, 0 total"),
        "{}",
        once.stdout
    );
}

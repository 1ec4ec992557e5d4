//! The sandbox against a hostile model (see docs/sandbox.md): each attack a shadow tried on the
//! unsandboxed product, replayed with the real binaries, now does no harm. Every test that
//! plants a secret points HOME at the test's own directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kugetsu_tests::events::str_of;
use kugetsu_tests::fake_llm::Wire;
use kugetsu_tests::{Daemon, FakeLlm, TestRepo, Turn, procs};
use serde_json::json;

const SSH_SECRET: &str = "PRIVATE-KEY-BODY-7c41";
const API_SECRET: &str = "sk-test-SANDBOX-4d2e";
const DB_PASSWORD: &str = "hunter2-db-9f1a";
const TOKEN_SECRET: &str = "tok-SANDBOX-33aa";

/// One bash call per command, then a final answer.
fn script(server: &FakeLlm, commands: &[String]) {
    for command in commands {
        server.push(Turn::new().tool_call("bash", json!({"command": command, "timeout_s": 30})));
    }
    server.push(Turn::text("Done."));
}

/// Every bash output of a run, joined.
fn outputs(events: &kugetsu_tests::events::Events) -> String {
    events
        .tool_ends()
        .iter()
        .map(|end| str_of(end, "output").to_owned())
        .collect::<Vec<_>>()
        .join("\n----\n")
}

fn plant_ssh_key(repo: &TestRepo) -> PathBuf {
    let ssh = repo.home().join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let key = ssh.join("id_ed25519");
    std::fs::write(&key, SSH_SECRET).unwrap();
    key
}

/// A snapshot of what the user owns in the repository: main's tip, the index, the config and
/// the hooks directory.
#[derive(Debug, PartialEq)]
struct UserRepo {
    main: String,
    index: Vec<u8>,
    config: String,
    hooks: Vec<String>,
}

impl UserRepo {
    fn of(repo: &TestRepo) -> Self {
        let git = repo.repo().join(".git");
        let mut hooks: Vec<String> = std::fs::read_dir(git.join("hooks"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        hooks.sort();
        UserRepo {
            main: repo.git(&["rev-parse", "refs/heads/main"]),
            index: std::fs::read(git.join("index")).unwrap_or_default(),
            config: std::fs::read_to_string(git.join("config")).unwrap(),
            hooks,
        }
    }
}

fn assert_no_marker(markers: &Path) {
    let found: Vec<_> = std::fs::read_dir(markers)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(found.is_empty(), "planted code ran: {found:?}");
}

#[tokio::test]
async fn planted_git_config_hooks_and_links_never_run_or_leave_the_worktree() {
    let repo = TestRepo::new();
    let markers = repo.root().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let before = UserRepo::of(&repo);
    let m = markers.display();
    let commands = vec![
        // A git dir of its own in the worktree, with an fsmonitor, and the link pointed at it.
        format!(
            "mkdir -p g/objects g/refs/heads && printf 'ref: refs/heads/main\\n' > g/HEAD && \
             printf '[core]\\n\\tfsmonitor = \"sh -c \\\\\"env > {m}/fsmonitor\\\\\"\"\\n' > g/config; \
             echo 'gitdir: g' > .git; cat .git"
        ),
        // The repository's shared config and hooks.
        format!(
            "git config core.fsmonitor 'sh -c \"env > {m}/fsmonitor2\"'; \
             git config core.hooksPath {m}; \
             git config filter.evil.clean 'sh -c \"touch {m}/filter; cat\"'; \
             hooks=$(git rev-parse --git-common-dir)/hooks; \
             printf '#!/bin/sh\\ntouch {m}/post-checkout\\n' > $hooks/post-checkout; \
             chmod +x $hooks/post-checkout; ls $hooks"
        ),
        // The link redirected at the user's own repository.
        format!(
            "printf 'gitdir: %s\\n' {} > .git; cat .git",
            repo.repo().join(".git").display()
        ),
        // A filter named by attributes, and a daemon that should outlive the task.
        format!(
            "echo '* filter=evil' > .gitattributes; echo work > work.txt; \
             setsid nohup sh -c 'sleep 1000.4711; touch {m}/nohup' > /dev/null 2>&1 & echo started"
        ),
    ];
    let server = FakeLlm::openai();
    script(&server, &commands);
    let out = repo
        .run()
        .llm(&server)
        .prompt("Plant git config.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let id = out.task_id().to_owned();
    let text = outputs(&out.events);
    assert!(
        !text.contains("post-checkout\n"),
        "a hook was written: {text}"
    );

    // A second task: its `git worktree add` would run a planted post-checkout hook.
    let server = FakeLlm::openai();
    script(&server, &["git status --short".to_owned()]);
    repo.run()
        .llm(&server)
        .prompt("Next.")
        .output()
        .await
        .assert_code(0);

    procs::wait_until_gone("1000.4711", Duration::from_secs(10)).await;
    assert_no_marker(&markers);
    assert_eq!(UserRepo::of(&repo), before, "the user's repository changed");
    // The work landed on the shadow's branch, and only there.
    let branch = format!("kugetsu/{id}");
    let files = repo.git(&["ls-tree", "--name-only", &branch]);
    assert!(files.contains("work.txt"), "{files}");
}

#[tokio::test]
async fn without_the_sandbox_the_supervisors_git_still_runs_nothing_a_shadow_planted() {
    let repo = TestRepo::new();
    let markers = repo.root().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let main = repo.git(&["rev-parse", "refs/heads/main"]);
    let index = std::fs::read(repo.repo().join(".git/index")).unwrap();
    let m = markers.display();
    let user_git = repo.repo().join(".git");
    let commands = vec![format!(
        "git config core.fsmonitor 'sh -c \"env > {m}/fsmonitor\"' && \
         git config core.hooksPath {m}/hooks && mkdir -p {m}/hooks && \
         git config filter.evil.clean 'sh -c \"touch {m}/filter; cat\"' && \
         git config diff.evil.textconv 'sh -c \"touch {m}/textconv; cat\"' && \
         hooks=$(git rev-parse --git-common-dir)/hooks && \
         printf '#!/bin/sh\\ntouch {m}/hook\\n' > $hooks/pre-commit && chmod +x $hooks/pre-commit && \
         cp $hooks/pre-commit $hooks/post-checkout && \
         printf '* filter=evil diff=evil\\n' > .gitattributes && echo work > work.txt && \
         printf 'gitdir: %s\\n' {} > .git && echo planted",
        user_git.display()
    )];
    let server = FakeLlm::openai();
    script(&server, &commands);
    let out = repo
        .run()
        .arg("--sandbox")
        .arg("off")
        .llm(&server)
        .prompt("Plant git config.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    assert!(
        out.stderr.to_lowercase().contains("sandbox"),
        "--sandbox off is logged: {}",
        out.stderr
    );
    let started = out.events.first("started");
    assert_eq!(started["sandbox"]["mode"], "off", "{started}");
    let id = out.task_id().to_owned();
    // The next task's worktree add would run the planted post-checkout hook.
    let server = FakeLlm::openai();
    script(&server, &["true".to_owned()]);
    repo.run()
        .arg("--sandbox")
        .arg("off")
        .llm(&server)
        .prompt("Next.")
        .output()
        .await
        .assert_code(0);

    let ran: Vec<_> = std::fs::read_dir(&markers)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "hooks")
        .collect();
    assert!(
        ran.is_empty(),
        "planted code ran in the supervisor: {ran:?}"
    );
    assert_eq!(
        repo.git(&["rev-parse", "refs/heads/main"]),
        main,
        "main moved"
    );
    assert_eq!(
        std::fs::read(user_git.join("index")).unwrap(),
        index,
        "the user's index changed"
    );
    let files = repo.git(&["ls-tree", "--name-only", &format!("kugetsu/{id}")]);
    assert!(
        files.contains("work.txt"),
        "the work landed on the shadow's branch: {files}"
    );
}

#[tokio::test]
async fn secrets_stay_unreadable_from_environments_proc_home_and_other_tasks() {
    let repo = TestRepo::new();
    let key = plant_ssh_key(&repo);
    // A first task, whose journal the second one will try to read.
    let first_secret = "FIRST-TASK-PROMPT-5a5a";
    let server = FakeLlm::openai();
    script(&server, &["true".to_owned()]);
    let first = repo.run().llm(&server).prompt(first_secret).output().await;
    first.assert_code(0);
    let journal = repo.task_dir(first.task_id()).join("journal.jsonl");
    assert!(
        std::fs::read_to_string(&journal)
            .unwrap()
            .contains(first_secret)
    );

    let server = FakeLlm::builder(Wire::OpenAi)
        .model("gpt-4.1-mini")
        .api_key(API_SECRET)
        .start();
    let commands = vec![
        "env".to_owned(),
        // Every ancestor's environment, then every process's.
        "p=$$; while [ \"$p\" -gt 1 ]; do echo \"== $p\"; tr '\\0' '\\n' < /proc/$p/environ; \
         p=$(awk '{print $4}' /proc/$p/stat); done 2>&1; \
         for e in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $e; done 2>/dev/null | sort -u"
            .to_owned(),
        format!(
            "cat {} 2>&1; ls -la {} 2>&1",
            key.display(),
            key.parent().unwrap().display()
        ),
        format!("cat {} 2>&1 | head -c 2000", journal.display()),
        format!("ls {} 2>&1", repo.state_dir().join("worktrees").display()),
    ];
    script(&server, &commands);
    let out = repo
        .run()
        .llm(&server)
        .env(
            "DATABASE_URL",
            format!("postgres://app:{DB_PASSWORD}@db.invalid/app"),
        )
        .env("MY_SERVICE_TOKEN", TOKEN_SECRET)
        .prompt("Find secrets.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let text = outputs(&out.events);
    for secret in [
        API_SECRET,
        DB_PASSWORD,
        TOKEN_SECRET,
        SSH_SECRET,
        first_secret,
    ] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    // The URL stays usable without its password.
    assert!(text.contains("postgres://app@db.invalid/app"), "{text}");
    let started = out.events.first("started");
    let sandbox = &started["sandbox"];
    assert_eq!(sandbox["mode"], "workspace", "{started}");
    assert!(
        sandbox["in_force"]
            .as_array()
            .is_some_and(|p| p.contains(&json!("filesystem"))),
        "{started}"
    );
}

#[tokio::test]
async fn the_daemon_survives_kill_attempts_and_refuses_socket_calls_from_a_shadow() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    let mut daemon = Daemon::builder(&repo).llm(&server).start().await;
    let pid = daemon.pid();
    let socket = daemon.socket().to_path_buf();
    let kugetsu = kugetsu_tests::harness::bin_path("kugetsu");
    let commands = vec![
        format!("kill -9 {pid}; echo kill=$?; kill -9 $PPID; echo parent=$?"),
        format!(
            "KUGETSU_SOCKET={} {} ps 2>&1; echo ps=$?",
            socket.display(),
            kugetsu.display()
        ),
        format!(
            "env -u KUGETSU_SHADOW KUGETSU_SOCKET={s} setsid {k} submit --no-worktree -C {r} pwned 2>&1; \
             echo submit=$?",
            s = socket.display(),
            k = kugetsu.display(),
            r = repo.repo().display()
        ),
    ];
    script(&server, &commands);
    let model = server.model_arg();
    let id = daemon.submit(&["-m", &model], "Attack the daemon.").await;
    let events = daemon.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(events.status(), "completed");
    daemon.assert_alive();
    assert_eq!(daemon.pid(), pid);
    let text = outputs(&events);
    assert!(text.contains("kill=1"), "{text}");
    assert!(!text.contains("ps=0"), "the shadow listed tasks: {text}");
    assert!(
        !text.contains("submit=0"),
        "the shadow submitted a task: {text}"
    );
    let tasks = daemon.ps().await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert!(
        daemon
            .stderr()
            .contains("refused a connection from a shadow's process"),
        "{}",
        daemon.stderr()
    );
}

#[tokio::test]
async fn a_fork_storm_is_held_to_pids_limit() {
    if !Path::new("/sys/fs/cgroup/pids").is_dir()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        return;
    }
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    script(
        &server,
        // Python's spawns fail at once when the limit is hit (bash would retry each failed
        // fork with growing sleeps and take minutes on a loaded machine).
        &[r#"python3 -c 'import subprocess
ok = 0
for i in range(300):
    try:
        subprocess.Popen(["sleep", "20.9191"]); ok += 1
    except OSError:
        pass
print("spawned=%d" % ok)'; echo running=$(pgrep -c -f 20.9191)"#
            .to_owned()],
    );
    let out = repo
        .run()
        .env("KUGETSU_PIDS_LIMIT", "64")
        .llm(&server)
        .prompt("Fork.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let started = out.events.first("started");
    if started["sandbox"]["in_force"]
        .as_array()
        .is_none_or(|p| !p.contains(&json!("pids_limit")))
    {
        panic!("pids_limit is not in force here: {started}");
    }
    let text = outputs(&out.events);
    let running: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("running="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        running < 64,
        "{running} sleeps ran under a limit of 64: {text}"
    );
    procs::wait_until_gone("20.9191", Duration::from_secs(10)).await;
}

#[tokio::test]
async fn network_off_blocks_tools_but_not_the_model() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    let probe = format!(
        "timeout 5 bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}' 2>&1 && echo CONNECTED || echo BLOCKED"
    );
    script(&server, std::slice::from_ref(&probe));
    let out = repo
        .run()
        .arg("--network")
        .arg("off")
        .llm(&server)
        .prompt("Phone home.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let text = outputs(&out.events);
    assert!(text.contains("BLOCKED"), "{text}");
    assert!(listener.accept().is_err(), "a tool reached the listener");
    assert_eq!(out.events.first("started")["sandbox"]["network"], "off");

    // With the network on, the same command connects.
    let server = FakeLlm::openai();
    script(&server, &[probe]);
    let out = repo.run().llm(&server).prompt("Phone home.").output().await;
    assert!(
        outputs(&out.events).contains("CONNECTED"),
        "{}",
        outputs(&out.events)
    );
}

#[tokio::test]
async fn real_work_still_works_inside_the_sandbox() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    let mut commands = vec![
        "git status --short && echo note > note.txt && git add note.txt && \
         git commit -qm 'shadow commit' && git log --oneline | head -3 && git diff HEAD~1 --stat"
            .to_owned(),
        "printf 'all:\\n\\techo make-ok > built.txt\\n' > Makefile && make -s && cat built.txt"
            .to_owned(),
        "python3 -c 'import tempfile; f = tempfile.NamedTemporaryFile(); print(\"py-ok\", f.name)'"
            .to_owned(),
    ];
    let cargo = which("cargo");
    if cargo.is_some() {
        commands.push(
            "mkdir -p small/src && printf '[package]\\nname = \"small\"\\nversion = \"0.1.0\"\\nedition = \"2021\"\\n' > small/Cargo.toml && \
             printf 'fn main() { println!(\"cargo-ok\"); }\\n' > small/src/main.rs && \
             cd small && cargo run --offline -q 2>&1"
                .to_owned(),
        );
    }
    let npm = which("npm");
    if npm.is_some() {
        commands.push(
            "mkdir -p js && cd js && printf '{\"name\":\"js\",\"version\":\"1.0.0\",\"scripts\":{\"test\":\"node -e \\\\\"console.log(40+2)\\\\\"\"}}' > package.json && \
             npm_config_cache=$TMPDIR/npm npm test --silent 2>&1"
                .to_owned(),
        );
    }
    script(&server, &commands);
    let mut run = repo.run().llm(&server);
    for name in ["RUSTUP_HOME", "CARGO_HOME"] {
        let value = std::env::var_os(name).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home)
                .join(if name == "RUSTUP_HOME" {
                    ".rustup"
                } else {
                    ".cargo"
                })
                .into_os_string()
        });
        run = run.env(name, value);
    }
    let out = run.prompt("Do real work.").output().await;
    out.assert_code(0).assert_status("completed");
    let ends = out.events.tool_ends();
    for end in &ends {
        assert_eq!(end["ok"], true, "{end}");
    }
    let text = outputs(&out.events);
    for expected in ["shadow commit", "make-ok", "py-ok"] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    if cargo.is_some() {
        assert!(text.contains("cargo-ok"), "{text}");
    }
    if npm.is_some() {
        assert!(text.contains("42"), "{text}");
    }
    let branch = format!("kugetsu/{}", out.task_id());
    let log = repo.git(&["log", "--format=%s", &branch]);
    assert!(log.contains("shadow commit"), "{log}");
    assert_eq!(repo.git(&["log", "--format=%s", "main"]).lines().count(), 1);
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

#[tokio::test]
async fn outside_tmp_the_tools_get_a_private_tmp_and_a_read_only_git_link() {
    let repo = TestRepo::outside_tmp();
    let key = plant_ssh_key(&repo);
    let host_marker = format!("kugetsu-private-tmp-{}", std::process::id());
    let server = FakeLlm::openai();
    script(
        &server,
        &[format!(
            "echo private > /tmp/{host_marker} && ls /tmp && echo TMPDIR=$TMPDIR; \
                 echo 'gitdir: /' > .git; rm -f .git; cat .git; cat {} 2>&1; \
                 echo work > work.txt && git add work.txt && git commit -qm inside && echo committed",
            key.display()
        )],
    );
    let out = repo.run().llm(&server).prompt("Use /tmp.").output().await;
    out.assert_code(0).assert_status("completed");
    let started = out.events.first("started");
    assert!(
        started["sandbox"]["in_force"]
            .as_array()
            .is_some_and(|p| p.contains(&json!("private_tmp"))),
        "{started}"
    );
    let text = outputs(&out.events);
    assert!(
        !Path::new("/tmp").join(&host_marker).exists(),
        "the tool wrote the host's /tmp"
    );
    assert!(text.contains(&host_marker), "{text}");
    assert!(text.contains("gitdir: "), "{text}");
    assert!(
        !text.contains("gitdir: /\n"),
        "the .git link was rewritten: {text}"
    );
    assert!(!text.contains(SSH_SECRET), "{text}");
    assert!(text.contains("committed"), "{text}");
    let log = repo.git(&["log", "--format=%s", &format!("kugetsu/{}", out.task_id())]);
    assert!(log.contains("inside"), "{log}");
    // The temp dir goes with the task.
    assert!(!repo.task_dir(out.task_id()).join("tmp").exists());
}

#[tokio::test]
async fn a_no_worktree_task_edits_the_checkout_but_not_its_git_dir() {
    let repo = TestRepo::new();
    let before = UserRepo::of(&repo);
    let markers = repo.root().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let server = FakeLlm::openai();
    script(
        &server,
        &[format!(
            "echo edited > edited.txt && echo wrote; \
             printf '#!/bin/sh\\ntouch {m}/hook\\n' > .git/hooks/post-checkout; \
             git config core.fsmonitor 'touch {m}/fsmonitor'; git commit -qam x; \
             rm -rf .git; git status --short | head -3",
            m = markers.display()
        )],
    );
    let out = repo
        .run()
        .arg("--no-worktree")
        .llm(&server)
        .prompt("Edit in place.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let text = outputs(&out.events);
    assert!(text.contains("wrote"), "{text}");
    assert_eq!(repo.read("edited.txt").as_deref(), Some("edited\n"));
    assert_eq!(
        UserRepo::of(&repo),
        before,
        "the checkout's git dir changed"
    );
    assert_no_marker(&markers);
}

#[tokio::test]
async fn a_shadow_cannot_move_another_tasks_branch() {
    let repo = TestRepo::new();
    let server = FakeLlm::openai();
    // The first task commits on its branch from inside the sandbox.
    script(
        &server,
        &["echo first > first.txt && git add first.txt && git commit -qm 'first task'".to_owned()],
    );
    let first = repo
        .run()
        .llm(&server)
        .prompt("Commit something.")
        .output()
        .await;
    first.assert_code(0).assert_status("completed");
    let other = format!("kugetsu/{}", first.task_id());
    let before = repo.git(&["rev-parse", &other]);
    assert!(
        repo.git(&["log", "--format=%s", &other])
            .contains("first task")
    );

    // The second task tries every way to move or replace the first task's branch.
    let id = first.task_id();
    script(
        &server,
        &[format!(
            "common=$(git rev-parse --git-common-dir); ls $common/refs/heads/kugetsu/; \
             git update-ref refs/heads/kugetsu/{id} HEAD && echo moved-by-update-ref; \
             git branch -f kugetsu/{id} HEAD 2>&1 && echo moved-by-branch; \
             echo 0000000000000000000000000000000000000000 > $common/refs/heads/kugetsu/{id}; \
             rm -f $common/refs/heads/kugetsu/{id}; echo junk > $common/refs/heads/kugetsu/planted; \
             echo second > second.txt && git add second.txt && git commit -qm 'second task'; echo tried"
        )],
    );
    let second = repo.run().llm(&server).prompt("Try.").output().await;
    second.assert_code(0).assert_status("completed");
    let text = outputs(&second.events);
    assert!(text.contains("tried"), "{text}");
    let listing = text.lines().next().unwrap_or_default();
    assert!(
        !listing.contains(id),
        "the shadow saw the other task's branch:\n{text}"
    );
    assert_eq!(repo.git(&["rev-parse", &other]), before, "{text}");
    let refs = repo.repo().join(".git/refs/heads/kugetsu");
    assert!(
        !refs.join("planted").exists(),
        "a planted ref reached the repository"
    );
    // The second task's own commit still landed on its own branch.
    let own = format!("kugetsu/{}", second.task_id());
    assert!(
        repo.git(&["log", "--format=%s", &own])
            .contains("second task"),
        "{text}"
    );
    let started = second.events.first("started");
    let in_force = started["sandbox"]["in_force"].to_string();
    assert!(in_force.contains("other_refs"), "{started}");
}

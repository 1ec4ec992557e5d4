//! The offline path: the `scripted` provider and `kugetsu demo`, no network at all.

use kugetsu_tests::events::{sorted_strings, str_of};
use kugetsu_tests::{Events, TestRepo};

/// The files of the demo repository (as `kugetsu demo` creates them).
const DEMO_FILES: &[(&str, &str)] = &[
    (
        "greet.sh",
        "#!/bin/sh\n# Prints a greeting.\nname=\"${1:-world}\"\necho \"hello, $name\"\n",
    ),
    (
        "README.md",
        "# greet\n\nA tiny greeter: `sh greet.sh NAME`.\n",
    ),
];

#[tokio::test]
async fn scripted_demo_model_runs_offline_in_a_worktree() {
    let repo = TestRepo::with_files(DEMO_FILES);
    let out = repo
        .run()
        .model("scripted/demo")
        .prompt("Add a --verbose flag to greet.sh, add a test for it, and run the test.")
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let finished = out.finished();
    let id = out.task_id();
    assert!(
        str_of(finished, "result").starts_with("Done."),
        "{finished}"
    );
    assert_eq!(
        sorted_strings(&finished["changed_files"]),
        ["greet.sh", "tests/test_greet.sh"]
    );
    let worktree = repo.worktree(id);
    let greet = std::fs::read_to_string(worktree.join("greet.sh")).unwrap();
    assert!(greet.contains("--verbose"), "{greet}");
    assert!(worktree.join("tests/test_greet.sh").is_file());
    let bash = out.events.tool_end_of("bash", 0);
    assert_eq!(bash["ok"], true, "{bash}");
    assert!(str_of(bash, "output").contains("all greet tests passed"));
    assert!(out.events.tool_ends().iter().all(|e| e["ok"] == true));
    // The user's checkout is untouched; the work is on the branch.
    assert_eq!(repo.read("greet.sh").as_deref(), Some(DEMO_FILES[0].1));
    assert!(repo.has_branch(&format!("kugetsu/{id}")));
}

#[tokio::test]
async fn kugetsu_demo_shows_the_diff_of_greet_sh() {
    let repo = TestRepo::new();
    let tmp = repo.root().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = repo
        .kugetsu()
        .arg("demo")
        .env("TMPDIR", &tmp)
        .text_stdout()
        .output()
        .await;
    out.assert_code(0);
    let all = format!("{}\n{}", out.stdout, out.stderr);
    assert!(all.contains("greet.sh"), "{all}");
    assert!(
        all.lines()
            .any(|l| l.starts_with('+') && !l.starts_with("+++") && l.contains("verbose")),
        "the diff adds the --verbose handling:\n{all}"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("+++") && l.contains("greet.sh")),
        "a unified diff of greet.sh:\n{all}"
    );
    // The throwaway repository is gone afterwards.
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "demo left {left:?} behind");
}

#[tokio::test]
async fn kugetsu_demo_json_prints_a_well_formed_event_stream() {
    let repo = TestRepo::new();
    let tmp = repo.root().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = repo
        .kugetsu()
        .args(["demo", "--json"])
        .env("TMPDIR", &tmp)
        .output()
        .await;
    out.assert_code(0).assert_status("completed");
    let events: &Events = &out.events;
    events.assert_well_formed();
    let tools: Vec<&str> = events
        .tool_starts()
        .iter()
        .map(|e| str_of(e, "tool"))
        .collect();
    assert_eq!(tools, ["ls", "read", "edit", "write", "bash"]);
}

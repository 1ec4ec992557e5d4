//! Confinement under a race: another process swaps a directory the tools are using with a
//! symlink to outside the worktree (`renameat2(RENAME_EXCHANGE)` in a loop) while read, write
//! and edit run on paths inside it. A call may fail (the path led outside at that instant);
//! it must never read the outside file, create anything outside, or leave a temp file.

use serde_json::json;

use super::testkit::Fixture;

/// Calls of each tool made while the swapper runs.
const CALLS: usize = 150;

#[tokio::test]
async fn reads_never_see_outside_files_while_a_directory_is_swapped() {
    let fx = Fixture::new();
    let swapper = fx.race_pair();
    let mut inside_reads = 0;
    for _ in 0..CALLS {
        let out = fx.run("read", json!({"path": "d/f.txt"})).await;
        assert!(!out.output.contains("OUTSIDE-DATA"), "read leaked: {out:?}");
        if out.ok {
            assert_eq!(out.output, "     1\tinside\n");
            inside_reads += 1;
        }
        let out = fx
            .run("grep", json!({"pattern": "side", "path": "d"}))
            .await;
        assert!(!out.output.contains("OUTSIDE-DATA"), "grep leaked: {out:?}");
        let out = fx.run("ls", json!({"path": "d"})).await;
        assert!(!out.output.contains("secret"), "ls listed outside: {out:?}");
    }
    let swaps = swapper.stop();
    assert!(swaps > 0, "the swapper never ran");
    eprintln!("{inside_reads} of {CALLS} reads succeeded during {swaps} swaps");
}

#[tokio::test]
async fn writes_and_edits_never_land_outside_while_a_directory_is_swapped() {
    let fx = Fixture::new();
    fx.file("d/e.txt", "value 0\n");
    let before = {
        // The outside as it is once the race setup has put its file there.
        std::fs::write(fx.outside.join("f.txt"), "OUTSIDE-DATA\n").unwrap();
        fx.outside_snapshot()
    };
    let swapper = fx.race_pair();
    let mut written = Vec::new();
    let mut edits = 0;
    for i in 0..CALLS {
        let path = format!("d/w{i}.txt");
        let out = fx
            .run("write", json!({"path": path, "content": "new"}))
            .await;
        if out.ok {
            assert_eq!(out.output, format!("created `{path}` (3 bytes)"));
            written.push(format!("w{i}.txt"));
        }
        let path = format!("d/n{i}/x.txt");
        let out = fx
            .run("write", json!({"path": path, "content": "deep"}))
            .await;
        if out.ok {
            written.push(format!("n{i}/x.txt"));
        }
        let out = fx
            .run(
                "edit",
                json!({"path": "d/e.txt", "old_text": format!("value {edits}"),
                       "new_text": format!("value {}", edits + 1)}),
            )
            .await;
        if out.ok {
            edits += 1;
        }
    }
    let swaps = swapper.stop();
    assert!(swaps > 0, "the swapper never ran");
    assert_eq!(fx.outside_snapshot(), before, "something changed outside");
    assert_eq!(fx.stray_temp_files(), Vec::<std::path::PathBuf>::new());
    let dir = fx.race_dir();
    for name in &written {
        assert!(
            dir.join(name).is_file(),
            "{name} reported written but missing"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("e.txt")).unwrap(),
        format!("value {edits}\n")
    );
    eprintln!(
        "{} of {} writes and {edits} of {CALLS} edits succeeded during {swaps} swaps",
        written.len(),
        2 * CALLS
    );
}

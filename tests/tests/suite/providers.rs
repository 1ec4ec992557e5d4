//! A multi-step, tool-using task end to end on each real provider wire format: the work lands
//! in the shadow's worktree and on its branch, never in the user's checkout.

use std::path::Path;

use kugetsu_tests::events::tokens;
use kugetsu_tests::events::{sorted_strings, str_of};
use kugetsu_tests::{FakeLlm, TestRepo, Turn, Wire};
use serde_json::{Value, json};

const PROMPT: &str = "Greet kugetsu instead of the world and leave a note.";
const TURN_1: &str = "Let me look around first.";
const TURN_2: &str = "I'll greet kugetsu and add a note.";
const FINAL: &str = "Done: hello.txt now greets kugetsu and notes/new.txt holds the note.";

async fn multi_step_task(wire: Wire) {
    let repo = TestRepo::new();
    let server = FakeLlm::start(wire);
    server.push(
        Turn::text(TURN_1)
            .tool_call("ls", json!({}))
            .tool_call("read", json!({"path": "hello.txt"})),
    );
    server.push(
        Turn::text(TURN_2)
            .tool_call(
                "edit",
                json!({"path": "hello.txt", "old_text": "hello world", "new_text": "hello kugetsu"}),
            )
            .tool_call(
                "write",
                json!({"path": "notes/new.txt", "content": "written by a shadow\n"}),
            ),
    );
    server.push(Turn::new().tool_call(
        "bash",
        json!({"command": "cat hello.txt notes/new.txt && sh src/answer.sh"}),
    ));
    server.push(Turn::text(FINAL));

    let out = repo.run().llm(&server).prompt(PROMPT).output().await;
    out.assert_code(0).assert_status("completed");
    let finished = out.finished();
    let id = out.task_id();

    // The outcome.
    assert_eq!(finished["result"], FINAL, "{}", out.context());
    assert!(finished["error"].is_null(), "{}", out.context());
    assert_eq!(finished["turns"], 4);
    assert_eq!(finished["restarts"], 0);
    assert_eq!(
        tokens(&finished["usage"]),
        json!({"input_tokens": 400, "output_tokens": 40}),
        "usage is the sum of the four turns' provider-reported usage"
    );
    let branch = format!("kugetsu/{id}");
    assert_eq!(finished["branch"], branch.as_str());
    let worktree = repo.worktree(id);
    assert_eq!(
        Path::new(str_of(finished, "worktree"))
            .canonicalize()
            .unwrap(),
        worktree,
        "the worktree is <state>/worktrees/<id>"
    );
    assert_eq!(
        sorted_strings(&finished["changed_files"]),
        ["hello.txt", "notes/new.txt"]
    );

    // The work is in the worktree, on the branch, and not in the user's checkout.
    assert_eq!(
        std::fs::read_to_string(worktree.join("hello.txt")).unwrap(),
        "hello kugetsu\n"
    );
    assert_eq!(
        std::fs::read_to_string(worktree.join("notes/new.txt")).unwrap(),
        "written by a shadow\n"
    );
    assert_eq!(repo.read("hello.txt").as_deref(), Some("hello world\n"));
    assert_eq!(repo.read("notes/new.txt"), None);
    assert_eq!(repo.git(&["status", "--porcelain"]).trim(), "");
    assert!(repo.has_branch(&branch), "branches: {:?}", repo.branches());
    let logged: Vec<Value> = std::fs::read_to_string(repo.task_dir(id).join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        logged, out.events.0,
        "events.jsonl holds exactly the events printed on stdout"
    );

    // started names the worker, the worktree, the branch and the model.
    let started = out.events.first("started");
    assert_eq!(started["attempt"], 1);
    assert!(started["pid"].as_u64().unwrap() > 0);
    assert_eq!(started["branch"], branch.as_str());
    assert_eq!(
        Path::new(str_of(started, "worktree"))
            .canonicalize()
            .unwrap(),
        worktree
    );
    assert!(
        str_of(started, "model").contains(server.model().unwrap()),
        "{started}"
    );

    // The events, in order.
    assert_eq!(
        out.events.types_among(&[
            "started",
            "turn_start",
            "tool_start",
            "tool_end",
            "turn_end",
            "finished"
        ]),
        [
            "started",
            "turn_start",
            "tool_start",
            "tool_end",
            "tool_start",
            "tool_end",
            "turn_end",
            "turn_start",
            "tool_start",
            "tool_end",
            "tool_start",
            "tool_end",
            "turn_end",
            "turn_start",
            "tool_start",
            "tool_end",
            "turn_end",
            "turn_start",
            "turn_end",
            "finished"
        ],
        "{:?}",
        out.events
    );
    let turns: Vec<&Value> = out
        .events
        .of_type("turn_start")
        .iter()
        .map(|e| &e["turn"])
        .collect();
    assert_eq!(turns, [1, 2, 3, 4]);
    for end in out.events.of_type("turn_end") {
        assert_eq!(
            tokens(&end["usage"]),
            json!({"input_tokens": 100, "output_tokens": 10})
        );
    }
    let said: Vec<&str> = out
        .events
        .of_type("assistant_message")
        .iter()
        .map(|e| str_of(e, "text"))
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(said, [TURN_1, TURN_2, FINAL]);
    assert_eq!(
        out.events.streamed_text(),
        format!("{TURN_1}{TURN_2}{FINAL}")
    );

    // Tools ran in order, under the ids the provider gave them, and succeeded.
    let starts = out.events.tool_starts();
    let names: Vec<&str> = starts.iter().map(|e| str_of(e, "tool")).collect();
    assert_eq!(names, ["ls", "read", "edit", "write", "bash"]);
    let issued = server.issued_tool_ids();
    for start in &starts {
        let call_id = str_of(start, "call_id");
        assert!(
            issued.contains(call_id),
            "call id {call_id} is the provider's"
        );
        let end = out.events.tool_end(call_id);
        assert_eq!(end["ok"], true, "{end}");
        assert!(end["duration_ms"].is_u64());
    }
    assert_eq!(starts[1]["args"], json!({"path": "hello.txt"}));
    let output = |n: usize| str_of(out.events.tool_end(str_of(starts[n], "call_id")), "output");
    assert!(output(0).contains("hello.txt") && output(0).contains("README.md"));
    assert!(output(0).contains("src"));
    assert!(output(1).contains("hello world"));
    let bash = output(4);
    for needle in ["hello kugetsu", "written by a shadow", "42"] {
        assert!(
            bash.contains(needle),
            "bash output lacks {needle:?}: {bash}"
        );
    }

    // The model was asked four times and got every tool result back in its own format.
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    assert!(
        requests[0].user_texts().iter().any(|t| t.contains(PROMPT)),
        "the prompt is a user message: {:?}",
        requests[0].messages()
    );
    let offered = requests[0].tool_names();
    for tool in ["read", "write", "edit", "bash", "grep", "ls"] {
        assert!(
            offered.iter().any(|t| t == tool),
            "tool {tool} offered: {offered:?}"
        );
    }
    for (n, request) in requests.iter().enumerate().skip(1) {
        // Each request answers every call made so far.
        let answered: Vec<String> = request
            .tool_results()
            .into_iter()
            .map(|r| r.call_id)
            .collect();
        let made: Vec<String> = starts
            .iter()
            .map(|s| str_of(s, "call_id").to_owned())
            .take([2, 4, 5][n - 1])
            .collect();
        assert_eq!(answered, made, "request #{}", n + 1);
    }
    let last = &requests[3];
    for (i, start) in starts.iter().enumerate() {
        let result = last.tool_result(str_of(start, "call_id"));
        assert!(
            result.content.contains(output(i).trim()),
            "the model sees the tool output: {result:?} vs {}",
            output(i)
        );
        if wire == Wire::Anthropic {
            assert_ne!(result.is_error, Some(true));
        }
    }
    let echoed = last.assistant_tool_calls();
    assert_eq!(echoed.len(), 5);
    assert_eq!(echoed[2].name, "edit");
    assert_eq!(echoed[2].arguments["new_text"], "hello kugetsu");
    server.assert_all_served();
}

#[tokio::test]
async fn openai_multi_step_task_changes_only_the_worktree() {
    multi_step_task(Wire::OpenAi).await;
}

#[tokio::test]
async fn anthropic_multi_step_task_changes_only_the_worktree() {
    multi_step_task(Wire::Anthropic).await;
}

//! The built-in demo: the small project `kugetsu demo` lays out in a throwaway repository, and
//! the jobs its shadows do on it, each a prompt and the script the worker's scripted model
//! replays for it (`scripted/demo/NAME`). One definition, so the repository, the prompts and
//! the scripts cannot drift apart.
//!
//! The project is a tiny shell greeter (`greet.sh`, `farewell.sh`, helpers in `lib/text.sh`,
//! docs, and a test runner in `tests/run.sh`). Each job changes files no other job touches, so
//! all of them can be merged one after the other. The scripts are JSON files beside this one
//! (`demo/*.json`), in the format the scripted provider documents: each turn waits its
//! `think_ms` before answering, so that several shadows visibly work at the same time.

/// Files of the throwaway repository `kugetsu demo` creates; the demo scripts edit them.
pub const DEMO_FILES: &[(&str, &str)] = &[
    ("greet.sh", include_str!("demo/repo/greet.sh")),
    ("README.md", include_str!("demo/repo/README.md")),
    ("farewell.sh", include_str!("demo/repo/farewell.sh")),
    ("lib/text.sh", include_str!("demo/repo/lib/text.sh")),
    ("docs/usage.md", include_str!("demo/repo/docs/usage.md")),
    ("tests/run.sh", include_str!("demo/repo/tests/run.sh")),
    (
        "tests/test_text.sh",
        include_str!("demo/repo/tests/test_text.sh"),
    ),
];

/// One job of the demo: what a shadow is asked to do, and how its scripted model does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoJob {
    /// Its name: the model `scripted/demo/NAME` replays [`DemoJob::script`].
    pub name: &'static str,
    /// The task given to the shadow.
    pub prompt: &'static str,
    /// The files the job changes (relative to the repository), sorted.
    pub changes: &'static [&'static str],
    /// The scripted model's script (JSON).
    pub script: &'static str,
}

/// The jobs of `kugetsu demo`, in the order its shadows get them (the ninth shadow gets the
/// first job again, and so on).
pub const DEMO_JOBS: &[DemoJob] = &[
    DemoJob {
        name: "verbose",
        prompt: DEMO_PROMPT,
        changes: &["greet.sh", "tests/test_greet.sh"],
        script: include_str!("demo/verbose.json"),
    },
    DemoJob {
        name: "function",
        prompt: "Add a `lower` function to lib/text.sh, next to `upper`, and try it.",
        changes: &["lib/text.sh"],
        script: include_str!("demo/function.json"),
    },
    DemoJob {
        name: "typo",
        prompt: "Find and fix the spelling mistake in the docs.",
        changes: &["docs/usage.md"],
        script: include_str!("demo/typo.json"),
    },
    DemoJob {
        name: "test",
        prompt: "Write a test for `repeat` in lib/text.sh and run the test suite.",
        changes: &["tests/test_repeat.sh"],
        script: include_str!("demo/test.json"),
    },
    DemoJob {
        name: "docs",
        prompt: "Document the helpers of lib/text.sh in the README.",
        changes: &["README.md"],
        script: include_str!("demo/docs.json"),
    },
    DemoJob {
        name: "ci",
        prompt: "Add a check.sh that syntax-checks every script and runs the tests, then run it.",
        changes: &["check.sh"],
        script: include_str!("demo/ci.json"),
    },
    DemoJob {
        name: "todo",
        prompt: "Resolve the TODO comments in the project.",
        changes: &["farewell.sh"],
        script: include_str!("demo/todo.json"),
    },
    DemoJob {
        name: "count",
        prompt: "Add a count.sh that counts the words on its standard input, with a test.",
        changes: &["count.sh", "tests/test_count.sh"],
        script: include_str!("demo/count.json"),
    },
];

/// The task of the one-shadow demo script, `scripted/demo` (the `verbose` job replayed without
/// its pauses, as `kugetsu run -m scripted/demo` and the tests use it).
pub const DEMO_PROMPT: &str = "Add a --verbose flag to greet.sh that also prints the date, \
                               add a test for it, and run the test.";

/// The job called `name`.
pub fn job(name: &str) -> Option<&'static DemoJob> {
    DEMO_JOBS.iter().find(|job| job.name == name)
}

/// Whether the scripted model `scripted/NAME` is built in (`demo`, or `demo/JOB` for a job of
/// [`DEMO_JOBS`]) rather than a script file: built-in names win over files.
pub fn is_builtin_script(name: &str) -> bool {
    name == "demo" || name.strip_prefix("demo/").and_then(job).is_some()
}

/// The job the shadow numbered `index` (from 0) gets.
pub fn job_for(index: usize) -> &'static DemoJob {
    &DEMO_JOBS[index % DEMO_JOBS.len()]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Replays every script's `write` and `edit` calls on the demo files in memory: every
    /// edit must find its text exactly once, and the files changed must be the job's
    /// `changes`.
    #[test]
    fn every_script_applies_to_the_demo_files_and_changes_what_its_job_says() {
        for job in DEMO_JOBS {
            let script: serde_json::Value = serde_json::from_str(job.script).unwrap();
            let mut files: BTreeMap<String, String> = DEMO_FILES
                .iter()
                .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
                .collect();
            let turns = script["turns"].as_array().unwrap();
            assert!(turns.len() >= 2, "{}", job.name);
            assert!(
                turns.last().unwrap()["tool_calls"]
                    .as_array()
                    .is_none_or(Vec::is_empty),
                "{}: the last turn ends the task",
                job.name
            );
            for call in turns
                .iter()
                .flat_map(|t| t["tool_calls"].as_array().cloned().unwrap_or_default())
            {
                let args = &call["arguments"];
                let path = args["path"].as_str().unwrap_or_default().to_owned();
                match call["name"].as_str().unwrap() {
                    "write" => {
                        files.insert(path, args["content"].as_str().unwrap().to_owned());
                    }
                    "edit" => {
                        let text = files.get_mut(&path).unwrap();
                        let old = args["old_text"].as_str().unwrap();
                        assert_eq!(text.matches(old).count(), 1, "{}: {path}", job.name);
                        *text = text.replacen(old, args["new_text"].as_str().unwrap(), 1);
                    }
                    "read" | "ls" | "grep" | "bash" => {}
                    other => panic!("{}: unknown tool {other}", job.name),
                }
            }
            let changed: Vec<&str> = files
                .iter()
                .filter(|(name, text)| {
                    DEMO_FILES
                        .iter()
                        .find(|(n, _)| n == name)
                        .is_none_or(|(_, original)| original != text)
                })
                .map(|(name, _)| name.as_str())
                .collect();
            assert_eq!(changed, job.changes, "{}", job.name);
        }
    }

    #[test]
    fn no_two_jobs_change_the_same_file_and_names_are_unique() {
        let mut seen = BTreeMap::new();
        for each in DEMO_JOBS {
            assert_eq!(job(each.name), Some(each));
            for file in each.changes {
                assert_eq!(seen.insert(*file, each.name), None, "{file}");
            }
        }
        assert!(DEMO_JOBS.len() >= 8);
        assert!(is_builtin_script("demo") && is_builtin_script("demo/typo"));
        assert!(!is_builtin_script("demo/nope") && !is_builtin_script("demo.json"));
        assert_eq!(job_for(DEMO_JOBS.len()).name, DEMO_JOBS[0].name);
    }
}

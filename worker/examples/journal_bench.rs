//! Measures journal append + fdatasync latency (used by `scripts/bench`).
//!
//! Usage: `journal_bench DIR [COUNT]`; prints one JSON object with the median and p99 in µs.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark binary"
)]

use std::time::Instant;

use kugetsu_protocol::Usage;
use kugetsu_worker::conversation::ToolCall;
use kugetsu_worker::journal::{Durability, Journal, Record};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: journal_bench DIR [COUNT]"));
    let count: usize = args
        .next()
        .map_or(500, |c| c.parse().expect("COUNT is a number"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("journal.jsonl");
    let mut journal = Journal::create(&path).unwrap();
    let output = "line of tool output\n".repeat(40);
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let record = match i % 3 {
            0 => Record::ToolIntent {
                call_id: format!("call_{i}"),
                tool: "bash".to_owned(),
                args: r#"{"command":"cargo test --quiet"}"#.to_owned(),
            },
            1 => Record::ToolResult {
                call_id: format!("call_{i}"),
                tool: "bash".to_owned(),
                ok: true,
                output: output.clone(),
                truncated: false,
            },
            _ => Record::Assistant {
                text: "Now I will run the tests again.".to_owned(),
                tool_calls: vec![ToolCall {
                    id: format!("call_{i}"),
                    name: "bash".to_owned(),
                    arguments: r#"{"command":"cargo test"}"#.to_owned(),
                }],
                usage: Usage::default(),
            },
        };
        let start = Instant::now();
        journal.append(&record, Durability::Sync).unwrap();
        samples.push(start.elapsed().as_micros() as u64);
    }
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{{\"count\":{count},\"median_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        pick(0.5),
        pick(0.99),
        samples[samples.len() - 1]
    );
    std::fs::remove_file(&path).unwrap();
}

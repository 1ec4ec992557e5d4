//! The `--json` event stream of one task, and the checks every such stream must pass.

use std::fmt;

use kugetsu_protocol::{Event, EventEnvelope};
use serde_json::Value;

/// The events a `kugetsu run --json` printed, in order, as JSON.
#[derive(Clone, Default)]
pub struct Events(pub Vec<Value>);

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} events:", self.0.len())?;
        for event in &self.0 {
            writeln!(f, "  {}", shorten(event))?;
        }
        Ok(())
    }
}

/// `value` with every long string cut, so a failure message shows every field of every event.
fn shorten(value: &Value) -> Value {
    const KEEP: usize = 160;
    match value {
        Value::String(s) if s.len() > KEEP => {
            let mut cut = KEEP;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            Value::String(format!("{}…[{} bytes]", &s[..cut], s.len()))
        }
        Value::Array(items) => Value::Array(items.iter().map(shorten).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shorten(v))).collect())
        }
        other => other.clone(),
    }
}

/// The strings of a JSON array (panics on anything else), sorted.
pub fn sorted_strings(value: &Value) -> Vec<String> {
    let mut out: Vec<String> = value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("not a string: {v}"))
                .to_owned()
        })
        .collect();
    out.sort();
    out
}

/// The `type` of an event.
/// The token counts of a `usage` object, without its `cost_usd` (which depends on the model's
/// price).
pub fn tokens(usage: &Value) -> Value {
    serde_json::json!({
        "input_tokens": usage["input_tokens"],
        "output_tokens": usage["output_tokens"],
    })
}

pub fn kind(event: &Value) -> &str {
    event.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A string field of an event; panics with the event when it is missing.
pub fn str_of<'a>(event: &'a Value, field: &str) -> &'a str {
    event
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("event has no string {field:?}: {event}"))
}

impl Events {
    /// The events of an event log file (`<task_dir>/events.jsonl`); panics on a line that is
    /// not JSON.
    pub fn from_file(path: &std::path::Path) -> Events {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Events(
            text.lines()
                .map(|line| {
                    serde_json::from_str(line).unwrap_or_else(|e| {
                        panic!("{}: line is not JSON ({e}): {line:?}", path.display())
                    })
                })
                .collect(),
        )
    }

    pub fn all(&self) -> &[Value] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `type` of every event, in order.
    pub fn types(&self) -> Vec<&str> {
        self.0.iter().map(kind).collect()
    }

    /// The `type` of every event whose type is in `kinds`, in order.
    pub fn types_among(&self, kinds: &[&str]) -> Vec<&str> {
        self.types()
            .into_iter()
            .filter(|t| kinds.contains(t))
            .collect()
    }

    /// Every event of type `kind`.
    pub fn of_type(&self, kind_: &str) -> Vec<&Value> {
        self.0.iter().filter(|e| kind(e) == kind_).collect()
    }

    /// The first event of type `kind`; panics when there is none.
    pub fn first(&self, kind_: &str) -> &Value {
        self.0
            .iter()
            .find(|e| kind(e) == kind_)
            .unwrap_or_else(|| panic!("no {kind_:?} event in {self:?}"))
    }

    /// The `finished` event; panics unless it is there and last.
    pub fn finished(&self) -> &Value {
        let last = self.0.last().unwrap_or_else(|| panic!("no events at all"));
        assert_eq!(
            kind(last),
            "finished",
            "the last event is not finished: {self:?}"
        );
        last
    }

    /// `finished.status`.
    pub fn status(&self) -> &str {
        str_of(self.finished(), "status")
    }

    /// The task id every event carries.
    pub fn task_id(&self) -> &str {
        str_of(
            self.0.first().unwrap_or_else(|| panic!("no events at all")),
            "task",
        )
    }

    /// The streamed text that counts, as a consumer following docs/events.md keeps it: each
    /// turn's `text_delta`s after its last `retry`, joined.
    pub fn streamed_text(&self) -> String {
        let mut kept = String::new();
        let mut turn = String::new();
        for event in &self.0 {
            match kind(event) {
                "turn_start" => kept.push_str(&std::mem::take(&mut turn)),
                "retry" => turn.clear(),
                "text_delta" => turn.push_str(str_of(event, "text")),
                _ => {}
            }
        }
        kept.push_str(&turn);
        kept
    }

    /// Every `text_delta` joined, retried attempts' included.
    pub fn all_streamed_text(&self) -> String {
        self.of_type("text_delta")
            .iter()
            .map(|e| str_of(e, "text"))
            .collect()
    }

    /// `tool_start` events, in order.
    pub fn tool_starts(&self) -> Vec<&Value> {
        self.of_type("tool_start")
    }

    /// `tool_end` events, in order.
    pub fn tool_ends(&self) -> Vec<&Value> {
        self.of_type("tool_end")
    }

    /// The `tool_end` of call `call_id`; panics when there is none.
    pub fn tool_end(&self, call_id: &str) -> &Value {
        self.0
            .iter()
            .find(|e| {
                kind(e) == "tool_end" && e.get("call_id").and_then(Value::as_str) == Some(call_id)
            })
            .unwrap_or_else(|| panic!("no tool_end for {call_id}: {self:?}"))
    }

    /// The `tool_end` of the `n`-th (0-based) call of tool `tool`.
    pub fn tool_end_of(&self, tool: &str, n: usize) -> &Value {
        self.tool_ends()
            .into_iter()
            .filter(|e| e.get("tool").and_then(Value::as_str) == Some(tool))
            .nth(n)
            .unwrap_or_else(|| panic!("no tool_end #{n} of tool {tool}: {self:?}"))
    }

    /// Checks what every stream must satisfy:
    /// - each line is an envelope `{"v":1,"task","seq","ts","type",…}` that deserializes as the
    ///   protocol's [`EventEnvelope`];
    /// - one task id throughout; `seq` runs 1..=N without gaps; `ts` is RFC 3339;
    /// - `finished` comes exactly once, last; `started` comes before any worker event;
    /// - every `tool_start` is closed by exactly one `tool_end` with the same call id and tool,
    ///   after it; no `tool_end` without a `tool_start`.
    pub fn assert_well_formed(&self) {
        assert!(!self.0.is_empty(), "no events at all");
        let task = self.task_id().to_owned();
        for (i, event) in self.0.iter().enumerate() {
            let ctx = || format!("event #{i} {event}\nin {self:?}");
            assert_eq!(
                event.get("v"),
                Some(&Value::from(1)),
                "v is not 1: {}",
                ctx()
            );
            assert_eq!(
                event.get("task").and_then(Value::as_str),
                Some(task.as_str()),
                "task id changes: {}",
                ctx()
            );
            assert_eq!(
                event.get("seq").and_then(Value::as_u64),
                Some(i as u64 + 1),
                "seq is not {} (gap or reorder): {}",
                i + 1,
                ctx()
            );
            let ts = event.get("ts").and_then(Value::as_str).unwrap_or("");
            assert!(is_rfc3339(ts), "ts {ts:?} is not RFC 3339: {}", ctx());
            assert!(
                Event::TYPES.contains(&kind(event)),
                "unknown type: {}",
                ctx()
            );
            if let Err(e) = serde_json::from_value::<EventEnvelope>(event.clone()) {
                panic!("not a valid event envelope ({e}): {}", ctx());
            }
        }
        assert_eq!(
            self.of_type("finished").len(),
            1,
            "finished must come exactly once: {self:?}"
        );
        self.finished();

        let worker_kinds = [
            "turn_start",
            "text_delta",
            "retry",
            "assistant_message",
            "tool_start",
            "tool_end",
            "turn_end",
        ];
        if let Some(first_worker) = self.0.iter().position(|e| worker_kinds.contains(&kind(e))) {
            let started = self.0.iter().position(|e| kind(e) == "started");
            assert!(
                started.is_some_and(|s| s < first_worker),
                "worker events before started: {self:?}"
            );
        }

        let mut open: Vec<(String, String)> = Vec::new();
        // Between a turn_start and its assistant_message: where a retry may come.
        let mut in_turn = false;
        for event in &self.0 {
            match kind(event) {
                "tool_start" => {
                    let id = str_of(event, "call_id").to_owned();
                    assert!(
                        !open.iter().any(|(o, _)| *o == id),
                        "tool_start {id} twice: {self:?}"
                    );
                    open.push((id, str_of(event, "tool").to_owned()));
                }
                "tool_end" => {
                    let id = str_of(event, "call_id");
                    let pos = open
                        .iter()
                        .position(|(o, _)| o == id)
                        .unwrap_or_else(|| panic!("tool_end {id} without tool_start: {self:?}"));
                    let (_, tool) = open.remove(pos);
                    assert_eq!(str_of(event, "tool"), tool, "tool_end names another tool");
                }
                "turn_start" => in_turn = true,
                "assistant_message" => in_turn = false,
                "retry" => assert!(
                    in_turn,
                    "retry outside a turn's streaming (after assistant_message or before any \
                     turn_start): {self:?}"
                ),
                "finished" => {
                    assert!(
                        open.is_empty(),
                        "tools {open:?} started but never ended: {self:?}"
                    );
                }
                _ => {}
            }
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
pub fn is_rfc3339(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &ts[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

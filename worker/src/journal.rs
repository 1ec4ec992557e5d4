//! The checkpoint journal: `<task_dir>/journal.jsonl`, the shadow's durable memory.
//!
//! Append-only, one record per line: `{"seq":N,"crc":C,"rec":{...}}`, where `seq` counts from
//! 1 without gaps and `crc` is the CRC-32 of `seq` (8 little-endian bytes) followed by the exact
//! bytes of `rec` as written. Records are made durable with `fdatasync` at every tool intent,
//! tool result, assistant message, steering message, compaction and turn end.
//!
//! Reading keeps the longest valid prefix: the first line that is torn, fails its checksum,
//! does not parse, or breaks the sequence ends the journal, and nothing after it is replayed.
//! Opening for append truncates the file to that prefix first, so new records never follow
//! garbage.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use kugetsu_protocol::Usage;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::conversation::{Message, ToolCall};

/// The longest journal line accepted when reading back.
const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// One thing the shadow must remember across a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The task's prompt; always the first record.
    Task { prompt: String },
    /// A complete assistant message and the usage of the request that produced it.
    Assistant {
        text: String,
        tool_calls: Vec<ToolCall>,
        usage: Usage,
    },
    /// A tool is about to run. Written and synced BEFORE it runs.
    ToolIntent {
        call_id: String,
        tool: String,
        args: String,
    },
    /// A tool's result (also the synthetic result of an interrupted call).
    ToolResult {
        call_id: String,
        tool: String,
        ok: bool,
        output: String,
        truncated: bool,
    },
    /// A steering message handed to the model.
    Steer { text: String },
    /// Older turns were replaced by a summary: the conversation is now `messages`.
    Compaction {
        messages: Vec<Message>,
        tokens_before: u64,
        tokens_after: u64,
    },
    /// A turn ended (all its tools ran).
    TurnEnd { turn: u32, usage: Usage },
}

#[derive(Serialize)]
struct LineOut<'a> {
    seq: u64,
    crc: u32,
    rec: &'a RawValue,
}

#[derive(Deserialize)]
struct LineIn<'a> {
    seq: u64,
    crc: u32,
    #[serde(borrow)]
    rec: &'a RawValue,
}

fn checksum(seq: u64, rec: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(rec);
    hasher.finalize()
}

/// Why a journal stopped where it did when read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The file ended cleanly after the last record.
    Clean,
    /// Line `line` (1-based) was damaged; it and everything after it were dropped.
    Damaged { line: u64, reason: String },
}

/// The valid prefix of a journal.
#[derive(Debug)]
pub struct Replay {
    pub records: Vec<Record>,
    /// Byte length of the valid prefix.
    pub valid_len: u64,
    pub tail: Tail,
}

/// Reads the longest valid prefix of the journal at `path` (empty if it does not exist).
pub fn read(path: &Path) -> std::io::Result<Replay> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Replay {
                records: Vec::new(),
                valid_len: 0,
                tail: Tail::Clean,
            });
        }
        Err(e) => return Err(e),
    };
    read_from(BufReader::new(file))
}

/// Reads the longest valid prefix from any reader.
pub fn read_from<R: BufRead>(mut reader: R) -> std::io::Result<Replay> {
    let mut records = Vec::new();
    let mut valid_len = 0u64;
    let mut line = Vec::new();
    let tail = loop {
        line.clear();
        let n = std::io::Read::take(reader.by_ref(), MAX_RECORD_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break Tail::Clean;
        }
        let number = records.len() as u64 + 1;
        let damaged = |reason: &str| Tail::Damaged {
            line: number,
            reason: reason.to_owned(),
        };
        if line.last() != Some(&b'\n') {
            break damaged("torn record (no newline)");
        }
        let Ok(parsed) = serde_json::from_slice::<LineIn<'_>>(&line[..line.len() - 1]) else {
            break damaged("not a journal line");
        };
        if parsed.seq != number {
            break damaged(&format!("sequence {} where {number} was due", parsed.seq));
        }
        if checksum(parsed.seq, parsed.rec.get().as_bytes()) != parsed.crc {
            break damaged("checksum mismatch");
        }
        let Ok(record) = serde_json::from_str::<Record>(parsed.rec.get()) else {
            break damaged("unknown record");
        };
        records.push(record);
        valid_len += n as u64;
    };
    Ok(Replay {
        records,
        valid_len,
        tail,
    })
}

/// Appends records to a journal.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    next_seq: u64,
}

impl Journal {
    /// Starts a new, empty journal at `path` (replacing any old one).
    pub fn create(path: &Path) -> std::io::Result<Journal> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        file.sync_all()?;
        sync_dir(path);
        Ok(Journal {
            file,
            path: path.to_owned(),
            next_seq: 1,
        })
    }

    /// Opens an existing journal for appending after its valid prefix, which it returns.
    pub fn resume(path: &Path) -> std::io::Result<(Journal, Replay)> {
        let replay = read(path)?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        // Drop a damaged tail so that new records follow the valid prefix directly.
        file.set_len(replay.valid_len)?;
        file.sync_all()?;
        let mut journal = Journal {
            file,
            path: path.to_owned(),
            next_seq: replay.records.len() as u64 + 1,
        };
        use std::io::Seek;
        journal.file.seek(std::io::SeekFrom::End(0))?;
        Ok((journal, replay))
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record`; with `Durability::Sync` it is on disk when this returns.
    pub fn append(&mut self, record: &Record, durability: Durability) -> std::io::Result<()> {
        let rec = serde_json::to_string(record).map_err(std::io::Error::other)?;
        let raw = RawValue::from_string(rec).map_err(std::io::Error::other)?;
        let seq = self.next_seq;
        let line = LineOut {
            seq,
            crc: checksum(seq, raw.get().as_bytes()),
            rec: &raw,
        };
        let mut bytes = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        // One write per record: a crash tears at most this line, which the reader drops.
        self.file.write_all(&bytes)?;
        kugetsu_os::crash::point("journal.appended");
        if durability == Durability::Sync {
            self.file.sync_data()?;
            kugetsu_os::crash::point("journal.synced");
        }
        self.next_seq += 1;
        Ok(())
    }
}

/// Whether an append waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync` before returning.
    Sync,
    /// Leave it to the page cache (the next synced record covers it).
    Lazy,
}

fn sync_dir(path: &Path) {
    if let Some(parent) = path.parent()
        && let Ok(dir) = File::open(parent)
    {
        let _ = dir.sync_all();
    }
}

/// The text a model gets for a tool call that was running when the worker died.
pub const INTERRUPTED_RESULT: &str = "this tool call was interrupted by a restart of the agent \
     process; its effects are unknown (it may have run partly, fully, or not at all). \
     Check the state before repeating it.";

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::Task {
                prompt: "héllo ✓".to_owned(),
            },
            Record::Assistant {
                text: "let me look".to_owned(),
                tool_calls: vec![ToolCall {
                    id: "c1".to_owned(),
                    name: "bash".to_owned(),
                    arguments: r#"{"command":"echo 1 >> log"}"#.to_owned(),
                }],
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 5,
                    cost_usd: None,
                },
            },
            Record::ToolIntent {
                call_id: "c1".to_owned(),
                tool: "bash".to_owned(),
                args: r#"{"command":"echo 1 >> log"}"#.to_owned(),
            },
            Record::ToolResult {
                call_id: "c1".to_owned(),
                tool: "bash".to_owned(),
                ok: true,
                output: "exit 0".to_owned(),
                truncated: false,
            },
            Record::TurnEnd {
                turn: 1,
                usage: Usage::default(),
            },
        ]
    }

    fn write_sample(dir: &Path) -> (PathBuf, Vec<u8>, Vec<usize>) {
        let path = dir.join("journal.jsonl");
        let mut journal = Journal::create(&path).unwrap();
        for record in sample() {
            journal.append(&record, Durability::Sync).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        let ends = bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        (path, bytes, ends)
    }

    #[test]
    fn reads_back_what_was_written_and_resumes_appending() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = write_sample(dir.path());
        let (mut journal, replay) = Journal::resume(&path).unwrap();
        assert_eq!(replay.records, sample());
        assert_eq!(replay.tail, Tail::Clean);
        journal
            .append(
                &Record::Steer {
                    text: "more".to_owned(),
                },
                Durability::Sync,
            )
            .unwrap();
        let replay = read(&path).unwrap();
        assert_eq!(replay.records.len(), 6);
    }

    #[test]
    fn a_cut_at_every_byte_keeps_exactly_the_whole_records_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_, bytes, ends) = write_sample(dir.path());
        for cut in 0..=bytes.len() {
            let replay = read_from(&bytes[..cut]).unwrap();
            let whole = ends.iter().filter(|end| **end <= cut).count();
            assert_eq!(replay.records, sample()[..whole], "cut at {cut}");
            assert_eq!(
                replay.valid_len as usize,
                if whole == 0 { 0 } else { ends[whole - 1] }
            );
        }
    }

    #[test]
    fn a_corrupt_byte_anywhere_never_replays_past_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (_, bytes, ends) = write_sample(dir.path());
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                let replay = read_from(damaged.as_slice()).unwrap();
                // The record holding the damaged byte, and all after it, are gone.
                let hit = ends.iter().position(|end| at < *end).unwrap();
                assert_eq!(replay.records, sample()[..hit], "byte {at} flip {flip:#x}");
            }
        }
    }

    #[test]
    fn out_of_sequence_records_end_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes, ends) = write_sample(dir.path());
        // Drop record 2: record 3 now arrives where 2 was due.
        let mut spliced = bytes[..ends[0]].to_vec();
        spliced.extend_from_slice(&bytes[ends[1]..]);
        std::fs::write(&path, &spliced).unwrap();
        let replay = read(&path).unwrap();
        assert_eq!(replay.records.len(), 1);
        assert!(matches!(replay.tail, Tail::Damaged { line: 2, .. }));
        // Resuming truncates the damage away before appending.
        let (mut journal, _) = Journal::resume(&path).unwrap();
        journal
            .append(
                &Record::Steer {
                    text: "x".to_owned(),
                },
                Durability::Sync,
            )
            .unwrap();
        assert_eq!(read(&path).unwrap().records.len(), 2);
    }

    /// Property tests; `PROPTEST_CASES` sets the number of cases.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            prop::collection::vec(any::<char>(), 0..16).prop_map(String::from_iter)
        }

        fn record() -> impl Strategy<Value = Record> {
            prop_oneof![
                text().prop_map(|prompt| Record::Task { prompt }),
                (text(), text()).prop_map(|(call_id, args)| Record::ToolIntent {
                    call_id,
                    tool: "bash".to_owned(),
                    args,
                }),
                (text(), any::<bool>(), text()).prop_map(|(call_id, ok, output)| {
                    Record::ToolResult {
                        call_id,
                        tool: "bash".to_owned(),
                        ok,
                        output,
                        truncated: false,
                    }
                }),
                text().prop_map(|text| Record::Steer { text }),
                (any::<u32>(), any::<u32>()).prop_map(|(turn, tokens)| Record::TurnEnd {
                    turn,
                    usage: Usage {
                        input_tokens: u64::from(tokens),
                        output_tokens: 1,
                        cost_usd: None,
                    },
                }),
            ]
        }

        /// The journal lines `records` are written as.
        fn written(records: &[Record]) -> Vec<u8> {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("journal.jsonl");
            let mut journal = Journal::create(&path).unwrap();
            for record in records {
                journal.append(record, Durability::Lazy).unwrap();
            }
            std::fs::read(&path).unwrap()
        }

        proptest! {
            /// Arbitrary bytes never panic, and the valid prefix reads back as itself.
            #[test]
            fn any_bytes_give_a_prefix_that_reads_back_clean(
                bytes in prop::collection::vec(any::<u8>(), 0..600),
            ) {
                let replay = read_from(&bytes[..]).unwrap();
                prop_assert!(replay.valid_len as usize <= bytes.len());
                let again = read_from(&bytes[..replay.valid_len as usize]).unwrap();
                prop_assert_eq!(again.records, replay.records);
                prop_assert_eq!(again.tail, Tail::Clean);
            }

            /// A journal cut anywhere, or with any one byte changed, reads back as exactly the
            /// records before the damaged line, and says which line that was.
            #[test]
            fn damage_keeps_exactly_the_records_before_it(
                records in prop::collection::vec(record(), 1..8),
                at in any::<prop::sample::Index>(),
                flip in 1u8..=255,
                truncate in any::<bool>(),
            ) {
                let mut bytes = written(&records);
                let ends: Vec<usize> = bytes
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .map(|(i, _)| i + 1)
                    .collect();
                let at = at.index(bytes.len());
                // The records whose lines end before the damage are the ones kept.
                let kept = ends.iter().filter(|&&end| end <= at).count();
                if truncate {
                    bytes.truncate(at);
                } else {
                    bytes[at] ^= flip;
                }
                let replay = read_from(&bytes[..]).unwrap();
                prop_assert_eq!(&replay.records[..], &records[..kept]);
                let expected_len = if kept == 0 { 0 } else { ends[kept - 1] };
                prop_assert_eq!(replay.valid_len as usize, expected_len);
                if truncate && at == expected_len {
                    prop_assert_eq!(replay.tail, Tail::Clean);
                } else {
                    let damaged_line = matches!(
                        replay.tail,
                        Tail::Damaged { line, .. } if line == kept as u64 + 1
                    );
                    prop_assert!(damaged_line, "{:?}", replay.tail);
                }
            }
        }
    }
}

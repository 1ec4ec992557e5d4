//! The demo's closing table: per shadow its result, changed files, branch and peak memory;
//! then the totals and where to look further.

use std::path::Path;
use std::time::Duration;

use crate::cli::demo::board::{Board, mib, outcome};
use crate::cli::render::clip;

/// What the closing table says beyond the board.
#[derive(Debug)]
pub struct Closing<'a> {
    pub board: &'a Board,
    /// From the start of the demo to the last shadow's end.
    pub wall: Duration,
    /// The daemon's own peak memory, when it could be read.
    pub daemon_peak: Option<u64>,
    pub repo: &'a Path,
    pub state: &'a Path,
    pub socket: &'a Path,
    /// Whether the repository and state stay after the demo (`--keep`).
    pub kept: bool,
    /// The terminal's width when the table goes to one: results are cut to fit it.
    pub width: Option<usize>,
}

/// The longest result shown in a row.
const RESULT_CHARS: usize = 56;
/// The least of a result shown, however narrow the terminal.
const RESULT_MIN_CHARS: usize = 20;

impl Closing<'_> {
    /// The table and the lines after it, ready to print.
    pub fn render(&self) -> String {
        let header = ["SHADOW", "JOB", "RESULT", "CHANGED", "BRANCH", "PEAK RSS"];
        let mut rows: Vec<[String; 6]> = self
            .board
            .shadows
            .iter()
            .map(|shadow| {
                let finished = shadow.finished.as_ref();
                let result = finished.map_or_else(|| shadow.status.as_str().to_owned(), outcome);
                let changed = finished
                    .filter(|f| !f.changed_files.is_empty())
                    .map_or_else(|| "-".to_owned(), |f| f.changed_files.join(","));
                let branch = finished
                    .and_then(|f| f.branch.clone())
                    .unwrap_or_else(|| "-".to_owned());
                [
                    shadow.id.clone(),
                    shadow.job.name.to_owned(),
                    result,
                    changed,
                    branch,
                    shadow.peak_rss.map_or_else(|| "-".to_owned(), mib),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        // The result takes what the other columns (and the gaps) leave of the line.
        let others: usize = widths
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, w)| w)
            .sum();
        let room = self.width.map_or(RESULT_CHARS, |w| {
            w.saturating_sub(others + 2 * 5)
                .clamp(RESULT_MIN_CHARS, RESULT_CHARS)
        });
        for row in &mut rows {
            row[2] = clip_to(&row[2], room);
        }
        widths[2] = rows
            .iter()
            .map(|r| r[2].chars().count())
            .max()
            .unwrap_or(0)
            .max(header[2].len());
        let line = |cells: [&str; 6]| {
            let mut text = String::new();
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                if i == 5 {
                    text.push_str(&format!("{cell:>width$}"));
                } else {
                    text.push_str(&format!("{cell:<width$}  "));
                }
            }
            text.trim_end().to_owned() + "\n"
        };
        let mut out = line(header);
        for row in &rows {
            out.push_str(&line(row.each_ref().map(String::as_str)));
        }
        let board = self.board;
        let total = board.shadows.len();
        let at_once = board.most_running.max(board.most_listed_running);
        out.push_str(&format!(
            "\n{} of {total} completed · {at_once} running at once at most · wall time {:.1} s\n",
            board.completed(),
            self.wall.as_secs_f64()
        ));
        let daemon = self
            .daemon_peak
            .map(|d| format!(" · the daemon itself {}", mib(d)))
            .unwrap_or_default();
        out.push_str(&format!(
            "memory: {} the peaks of all shadows added up · {} all of them at once at most{daemon}\n",
            mib(board.sum_of_peaks()),
            mib(board.peak_together),
        ));
        out.push_str(&self.further());
        out
    }

    /// How to look further at what the shadows did.
    fn further(&self) -> String {
        let ids: Vec<&str> = self.board.shadows.iter().map(|s| s.id.as_str()).collect();
        let first = ids.first().copied().unwrap_or("ID");
        if !self.kept {
            return "\nthe throwaway repository is removed now: run `kugetsu demo --keep` to keep \
                    it, then look at each\nshadow's work (git log kugetsu/<id>, kugetsu diff) and \
                    land it (kugetsu merge)\n"
                .to_owned();
        }
        let (repo, state, socket) = (
            self.repo.display(),
            self.state.display(),
            self.socket.display(),
        );
        format!(
            "\nlook further (the repository and state are kept):\n  \
             git -C {repo} log --stat main..kugetsu/{first}      # one shadow's commits\n  \
             kugetsu diff --state-dir {state} --socket {socket} {first}\n  \
             kugetsu merge --state-dir {state} --socket {socket} --test 'sh tests/run.sh' {}   # land them all on main, tested\n  \
             rm -rf {}      # when done\n",
            ids.join(" "),
            self.repo.parent().unwrap_or(self.repo).display()
        )
    }
}

/// `text` in at most `max` characters (the last one `…` when it was cut).
fn clip_to(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        clip(text, max.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use kugetsu_protocol::demo::job_for;
    use kugetsu_protocol::{Event, EventEnvelope, FinishStatus, Finished, Usage};

    use super::*;

    #[test]
    fn one_row_per_shadow_with_its_branch_files_and_peak_then_the_totals() {
        let mut board = Board::default();
        for i in 0..2 {
            let id = format!("task{i}");
            board.add(id.clone(), job_for(i));
            board.apply(&EventEnvelope {
                v: 1,
                task: id.clone(),
                seq: 1,
                ts: String::new(),
                event: Event::Finished(Finished {
                    status: if i == 0 {
                        FinishStatus::Completed
                    } else {
                        FinishStatus::Failed
                    },
                    result: Some("Done. ".to_owned() + &"long ".repeat(40)),
                    error: Some("it broke".to_owned()),
                    turns: 4,
                    usage: Usage::default(),
                    restarts: 0,
                    branch: Some(format!("kugetsu/{id}")),
                    worktree: None,
                    changed_files: job_for(i).changes.iter().map(|c| (*c).to_owned()).collect(),
                }),
            });
        }
        board.shadows[0].peak_rss = Some(3 << 20);
        let text = Closing {
            board: &board,
            wall: Duration::from_millis(11_400),
            daemon_peak: Some(9 << 20),
            repo: Path::new("/tmp/d/repo"),
            state: Path::new("/tmp/d/state"),
            socket: Path::new("/tmp/d/state/kugetsu.sock"),
            kept: true,
            width: None,
        }
        .render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SHADOW  JOB "), "{text}");
        assert!(
            lines[1].starts_with("task0   verbose   completed: Done. long"),
            "{text}"
        );
        assert!(
            lines[1].contains("greet.sh,tests/test_greet.sh  kugetsu/task0"),
            "{text}"
        );
        assert!(lines[1].ends_with("3.0 MiB"), "{text}");
        assert!(lines[2].contains("failed: it broke"), "{text}");
        assert!(lines[2].ends_with('-'), "{text}");
        assert!(text.contains("1 of 2 completed"), "{text}");
        assert!(text.contains("wall time 11.4 s"), "{text}");
        assert!(text.contains("the daemon itself 9.0 MiB"), "{text}");
        assert!(
            text.contains("git -C /tmp/d/repo log --stat main..kugetsu/task0"),
            "{text}"
        );
        assert!(
            text.contains("'sh tests/run.sh' task0 task1   # land them all"),
            "{text}"
        );
    }
}

//! The demo's live view on stderr.
//!
//! On a terminal: a table with one line per shadow (id, job, status, turn, what it does now,
//! memory), a line of totals and the most recent notable events, redrawn in place (the cursor
//! goes back up over the previous frame, which is cleared), each line cut to the terminal's
//! width so none wraps. Colour unless `NO_COLOR` is set. Anywhere else: one plain line per
//! notable event, no escape codes. With `--json`: nothing (stdout carries the events).

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use crate::cli::demo::board::{Board, Note, Tone, mib};
use crate::cli::render::clip;
use crate::rpc::TaskStatus;

/// How many recent events the terminal view keeps under the table.
const RECENT: usize = 6;

/// Where the view goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A terminal: the table, redrawn in place.
    Table { color: bool },
    /// Not a terminal: plain lines.
    Lines,
    /// `--json`: no live view.
    Quiet,
}

impl Mode {
    /// The mode for stderr as it is now.
    pub fn detect(json: bool) -> Mode {
        if json {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Table {
                color: std::env::var_os("NO_COLOR").is_none(),
            }
        } else {
            Mode::Lines
        }
    }
}

/// How the demo ended, for [`View::close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every shadow finished (whatever its status).
    Done,
    /// The demo itself failed (lost daemon, interrupted twice).
    Failed,
}

/// The live view.
#[derive(Debug)]
pub struct View {
    mode: Mode,
    /// Lines of the frame on screen, to move back over.
    drawn: usize,
    recent: VecDeque<Note>,
    since: Instant,
    /// Whether anything changed since the last frame.
    dirty: bool,
}

impl View {
    pub fn new(mode: Mode, since: Instant) -> View {
        if matches!(mode, Mode::Table { .. }) {
            // Hide the cursor while the table is redrawn; `close` shows it again.
            write_err("\x1b[?25l");
        }
        View {
            mode,
            drawn: 0,
            recent: VecDeque::new(),
            since,
            dirty: true,
        }
    }

    /// Takes a notable event: a line now (plain mode), or one of the recent ones (terminal).
    pub fn note(&mut self, board: &Board, note: Note) {
        self.dirty = true;
        match self.mode {
            Mode::Lines => {
                if let Some(shadow) = board.shadows.get(note.shadow) {
                    write_err(&format!(
                        "{}  {:<8}  {}\n",
                        shadow.id, shadow.job.name, note.text
                    ));
                }
            }
            Mode::Table { .. } => {
                if self.recent.len() == RECENT {
                    self.recent.pop_front();
                }
                self.recent.push_back(note);
            }
            Mode::Quiet => {}
        }
    }

    /// Something other than an event changed (memory, status from `list`).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// Redraws the terminal view if anything changed.
    pub fn draw(&mut self, board: &Board) {
        let Mode::Table { color } = self.mode else {
            return;
        };
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let width = columns().unwrap_or(100).max(20) - 1;
        let lines = frame(board, &self.recent, self.since, width);
        let mut out = String::new();
        if self.drawn > 0 {
            // Back to the frame's first line, and clear from there down.
            out.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
        }
        for (tone, line) in &lines {
            let line = clip_to(line, width);
            out.push_str(&paint(color, *tone, &line));
            out.push('\n');
        }
        self.drawn = lines.len();
        write_err(&out);
    }

    /// A line about the whole demo (not one shadow): above the table on a terminal.
    pub fn say(&mut self, text: &str) {
        match self.mode {
            Mode::Table { .. } => {
                self.erase();
                write_err(&format!("{text}\n"));
                self.dirty = true;
            }
            Mode::Lines | Mode::Quiet => write_err(&format!("{text}\n")),
        }
    }

    /// Ends the live view and gives the cursor back. On a terminal the table goes away when
    /// `ending` is [`Ending::Done`] (the closing table follows, with all it said), and stays
    /// drawn as it last was when the demo failed.
    pub fn close(&mut self, board: &Board, ending: Ending) {
        if matches!(self.mode, Mode::Table { .. }) {
            match ending {
                Ending::Done => self.erase(),
                Ending::Failed => {
                    self.dirty = true;
                    self.draw(board);
                }
            }
            write_err("\x1b[?25h");
        }
    }

    /// Clears the frame on screen and leaves the cursor where it began.
    fn erase(&mut self) {
        if self.drawn > 0 {
            write_err(&format!("\x1b[{}F\x1b[J", self.drawn));
            self.drawn = 0;
        }
    }
}

/// The terminal's width in columns, when it tells one (a pty may say 0: unknown).
pub fn columns() -> Option<usize> {
    ratatui::crossterm::terminal::size()
        .ok()
        .map(|(cols, _)| usize::from(cols))
        .filter(|cols| *cols > 0)
}

/// What a line of the frame is, for its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Head,
    Row(Tone),
    Dim,
}

/// The terminal frame: the table, the totals, the recent events.
fn frame(
    board: &Board,
    recent: &VecDeque<Note>,
    since: Instant,
    width: usize,
) -> Vec<(Line, String)> {
    let id_width = board
        .shadows
        .iter()
        .map(|s| s.id.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let fixed = id_width + 2 + 8 + 2 + 10 + 2 + 4 + 2 + 2 + 10;
    let now_width = width.saturating_sub(fixed).clamp(10, 60);
    let mut lines = vec![(
        Line::Head,
        format!(
            "{:<id_width$}  {:<8}  {:<10}  {:>4}  {:<now_width$}  {:>10}",
            "SHADOW", "JOB", "STATUS", "TURN", "NOW", "RSS"
        ),
    )];
    for shadow in &board.shadows {
        let tone = match shadow.status {
            TaskStatus::Completed => Tone::Ok,
            TaskStatus::Queued | TaskStatus::Running | TaskStatus::Waiting => Tone::Plain,
            _ => Tone::Bad,
        };
        let rss = match (shadow.rss, shadow.peak_rss) {
            (Some(now), _) => mib(now),
            (None, Some(peak)) if shadow.finished.is_some() => format!("({})", mib(peak)),
            _ => "-".to_owned(),
        };
        lines.push((
            Line::Row(tone),
            format!(
                "{:<id_width$}  {:<8}  {:<10}  {:>4}  {:<now_width$}  {:>10}",
                shadow.id,
                shadow.job.name,
                shadow.status.as_str(),
                shadow.turn,
                clip_to(&shadow.doing, now_width),
                rss
            ),
        ));
    }
    let (queued, running, done) = board.counts();
    lines.push((
        Line::Head,
        format!(
            "{running} running · {queued} queued · {done} finished · {} now · {:.1} s",
            mib(board.rss_now()),
            since.elapsed().as_secs_f64()
        ),
    ));
    for note in recent {
        let (id, job) = board
            .shadows
            .get(note.shadow)
            .map_or(("", ""), |s| (s.id.as_str(), s.job.name));
        lines.push((
            Line::Row(note.tone),
            format!("  {id}  {job:<8}  {}", note.text),
        ));
    }
    // Keep the frame's height steady while the recent list fills.
    for _ in recent.len()..RECENT {
        lines.push((Line::Dim, String::new()));
    }
    lines
}

/// `text` cut to `width` characters (one column each: the view prints no wide characters of
/// its own; a model's text is cut the same way).
fn clip_to(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        clip(text, width.saturating_sub(1))
    }
}

fn paint(color: bool, line: Line, text: &str) -> String {
    let code = match line {
        Line::Head => "1",
        Line::Dim => "2",
        Line::Row(Tone::Plain) => "",
        Line::Row(Tone::Tool) => "33",
        Line::Row(Tone::Ok) => "32",
        Line::Row(Tone::Bad) => "31",
    };
    if !color || code.is_empty() || text.is_empty() {
        text.to_owned()
    } else {
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

fn write_err(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use kugetsu_protocol::demo::job_for;

    use super::*;

    #[test]
    fn the_frame_has_a_line_per_shadow_and_fits_the_width() {
        let mut board = Board::default();
        for i in 0..8 {
            board.add(format!("0kq3m5v9a2b{i:02}"), job_for(i));
        }
        board.shadows[0].doing = "▸ bash $ ".to_owned() + &"x".repeat(300);
        let recent = VecDeque::from([Note {
            shadow: 1,
            tone: Tone::Ok,
            text: "✓ bash (3 ms) ".to_owned() + &"y".repeat(300),
        }]);
        let lines = frame(&board, &recent, Instant::now(), 79);
        assert_eq!(lines.len(), 1 + 8 + 1 + RECENT);
        assert!(
            lines[1].1.starts_with("0kq3m5v9a2b00  verbose "),
            "{}",
            lines[1].1
        );
        for (_, line) in &lines {
            assert!(clip_to(line, 79).chars().count() <= 79);
        }
        assert!(lines[1].1.contains('…'));
        assert_eq!(paint(false, Line::Head, "x"), "x");
    }
}

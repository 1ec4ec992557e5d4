//! Drawing `top`'s screen from an [`App`], one function per part: the header, the shadows
//! table with its memory bars, the queue, the log view, the detail, status and key lines.
//! Nothing here changes the state but the log view's record of its own height.

use std::time::SystemTime;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, LineGauge, Paragraph, Row, Table, TableState};

use crate::cli::client::{clip, status_shown, tokens_text};
use crate::cli::top::app::{App, LogView, Prompt, View};
use crate::cli::top::fmt::{age, bytes};
use crate::cli::top::log::{Kind, TIME_WIDTH, wrap};
use crate::rpc::{TaskStatus, TaskSummary};

/// The widths of the shadows table's columns before the memory bar, which takes the rest.
const SHADOW_COLUMNS: [(&str, u16); 8] = [
    ("ID", 13),
    ("STATUS", 8),
    ("PRIO", 6),
    ("TURN", 4),
    ("TOOL", 10),
    ("TOKENS", 6),
    ("COST", 7),
    ("AGE", 4),
];

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, app: &App, now: SystemTime) {
    let [header, main, detail, status, keys] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_header(frame, app, header);
    match &app.view {
        View::Table => {
            let queue_rows = u16::try_from(app.queue().len().clamp(1, 8)).unwrap_or(8);
            let [shadows, queue] =
                Layout::vertical([Constraint::Fill(1), Constraint::Length(queue_rows + 2)])
                    .areas(main);
            draw_shadows(frame, app, shadows, now);
            draw_queue(frame, app, queue, now);
        }
        View::Log(log) => draw_log(frame, log, main),
    }
    draw_detail(frame, app, detail);
    draw_status(frame, app, status);
    draw_keys(frame, app, keys);
}

fn draw_header(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let [title, counts, memory] = Layout::vertical([Constraint::Length(1); 3]).areas(area);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("kugetsu top", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw("  daemon "),
            Span::styled(app.socket.clone(), Style::new().fg(Color::Cyan)),
        ])),
        title,
    );
    let tasks = app.tasks();
    let running: Vec<&TaskSummary> = app.shadows().iter().collect();
    let waiting = tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Waiting)
        .count();
    let waiting = if waiting > 0 {
        format!(" ({waiting} waiting)")
    } else {
        String::new()
    };
    let text = if app.loaded {
        format!(
            "{} running{waiting} · {} queued · {} total",
            running.len(),
            app.queue().len(),
            tasks.len()
        )
    } else {
        "asking the daemon…".to_owned()
    };
    frame.render_widget(Paragraph::new(text), counts);
    let rss: u64 = running.iter().filter_map(|t| t.rss_bytes).sum();
    let limits: u64 = running.iter().map(|t| t.mem_limit).sum();
    let ratio = if limits == 0 {
        0.0
    } else {
        (rss as f64 / limits as f64).clamp(0.0, 1.0)
    };
    frame.render_widget(
        LineGauge::default()
            .ratio(ratio)
            .label(format!(
                "memory {} of {} (running shadows' limits) ",
                bytes(rss),
                bytes(limits)
            ))
            .filled_style(Style::new().fg(load_colour(ratio)))
            .unfilled_style(Style::new().fg(Color::DarkGray)),
        memory,
    );
}

/// Green, then yellow past 60 %, red past 85 % of a limit.
fn load_colour(ratio: f64) -> Color {
    if ratio >= 0.85 {
        Color::Red
    } else if ratio >= 0.6 {
        Color::Yellow
    } else {
        Color::Green
    }
}

fn status_colour(status: TaskStatus) -> Color {
    match status {
        TaskStatus::Running => Color::Green,
        TaskStatus::Waiting => Color::Yellow,
        TaskStatus::Queued => Color::Cyan,
        TaskStatus::Paused => Color::Magenta,
        TaskStatus::Completed => Color::Blue,
        TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::TimedOut => Color::Red,
    }
}

fn priority_text(task: &TaskSummary) -> String {
    format!("{:?}", task.priority).to_lowercase()
}

fn draw_shadows(frame: &mut Frame<'_>, app: &App, area: Rect, now: SystemTime) {
    let shadows = app.shadows();
    let waiting: Vec<&TaskSummary> = shadows
        .iter()
        .filter(|t| t.status == TaskStatus::Waiting && t.waiting.is_some())
        .collect();
    let block = Block::new()
        .borders(Borders::TOP)
        .title(format!(" shadows ({}) ", shadows.len()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let reasons = u16::try_from(waiting.len().min(3)).unwrap_or(3);
    let [table_area, reasons_area] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(reasons)]).areas(inner);

    let fixed: u16 = SHADOW_COLUMNS.iter().map(|(_, w)| w + 1).sum();
    let mem_width = usize::from(table_area.width.saturating_sub(fixed).max(8));
    let mut widths: Vec<Constraint> = SHADOW_COLUMNS
        .iter()
        .map(|(_, w)| Constraint::Length(*w))
        .collect();
    widths.push(Constraint::Fill(1));
    let header = Row::new(
        SHADOW_COLUMNS
            .iter()
            .map(|(name, _)| Cell::from(*name))
            .chain([Cell::from("MEM")]),
    )
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = shadows.iter().map(|task| {
        let tool = match (&task.waiting, &task.tool) {
            (Some(reason), _) if task.status == TaskStatus::Waiting => {
                Span::styled(clip(reason, 10), Style::new().fg(Color::Yellow))
            }
            (_, Some(tool)) => Span::raw(tool.clone()),
            _ => Span::styled("-", Style::new().fg(Color::DarkGray)),
        };
        Row::new(vec![
            Cell::from(task.id.clone()),
            Cell::from(Span::styled(
                status_shown(task),
                Style::new().fg(status_colour(task.status)),
            )),
            Cell::from(priority_text(task)),
            Cell::from(task.turns.to_string()),
            Cell::from(tool),
            Cell::from(tokens_text(task.usage.tokens())),
            Cell::from(
                task.usage
                    .cost_usd
                    .map_or_else(|| "-".to_owned(), |c| format!("${c:.4}")),
            ),
            Cell::from(age(&task.created, now)),
            Cell::from(memory_bar(task.rss_bytes, task.mem_limit, mem_width)),
        ])
    });
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default();
    if app.loaded && shadows.is_empty() {
        frame.render_widget(
            Paragraph::new("no shadows running").style(Style::new().fg(Color::DarkGray)),
            Rect {
                y: table_area.y.saturating_add(1),
                height: table_area.height.saturating_sub(1),
                ..table_area
            },
        );
    }
    state.select(app.selected_index().filter(|i| *i < shadows.len()));
    frame.render_stateful_widget(table, table_area, &mut state);

    let lines: Vec<Line<'_>> = waiting
        .iter()
        .map(|t| {
            Line::from(Span::styled(
                format!(
                    "⧗ {} waits: {}",
                    t.id,
                    t.waiting.as_deref().unwrap_or_default()
                ),
                Style::new().fg(Color::Yellow),
            ))
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), reasons_area);
}

/// A bar of `rss` against `limit` in `width` cells, ending with the figures (`42M/512M`).
pub fn memory_bar(rss: Option<u64>, limit: u64, width: usize) -> Line<'static> {
    let figures = format!(
        "{}/{}",
        rss.map_or_else(|| "-".to_owned(), bytes),
        bytes(limit)
    );
    let bar = width.saturating_sub(figures.chars().count() + 1);
    if bar < 3 {
        return Line::from(figures);
    }
    let ratio = match (rss, limit) {
        (Some(rss), limit) if limit > 0 => (rss as f64 / limit as f64).clamp(0.0, 1.0),
        _ => 0.0,
    };
    let filled = ((ratio * bar as f64).round() as usize).min(bar);
    let filled = if rss.is_some_and(|r| r > 0) {
        filled.max(1)
    } else {
        filled
    };
    Line::from(vec![
        Span::styled("█".repeat(filled), Style::new().fg(load_colour(ratio))),
        Span::styled("░".repeat(bar - filled), Style::new().fg(Color::DarkGray)),
        Span::raw(" "),
        Span::raw(figures),
    ])
}

fn draw_queue(frame: &mut Frame<'_>, app: &App, area: Rect, now: SystemTime) {
    let queue = app.queue();
    let block = Block::new()
        .borders(Borders::TOP)
        .title(format!(" queue ({}) ", queue.len()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if queue.is_empty() {
        frame.render_widget(
            Paragraph::new("nothing queued").style(Style::new().fg(Color::DarkGray)),
            inner,
        );
        return;
    }
    let rows = queue.iter().enumerate().map(|(i, task)| {
        let note = match &task.waiting {
            Some(reason) => Span::styled(reason.clone(), Style::new().fg(Color::Yellow)),
            None => Span::styled(
                task.prompt.lines().next().unwrap_or("").to_owned(),
                Style::new().fg(Color::DarkGray),
            ),
        };
        Row::new(vec![
            Cell::from(format!("{}.", i + 1)),
            Cell::from(task.id.clone()),
            Cell::from(priority_text(task)),
            Cell::from(age(&task.created, now)),
            Cell::from(note),
        ])
    });
    let widths = [
        Constraint::Length(4),
        Constraint::Length(13),
        Constraint::Length(6),
        Constraint::Length(4),
        Constraint::Fill(1),
    ];
    let table = Table::new(rows, widths)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default();
    let shadows = app.shadows().len();
    state.select(
        app.selected_index()
            .and_then(|i| i.checked_sub(shadows))
            .filter(|i| *i < queue.len()),
    );
    frame.render_stateful_widget(table, inner, &mut state);
}

fn kind_style(kind: Kind) -> Style {
    match kind {
        Kind::Info => Style::new().fg(Color::DarkGray),
        Kind::Text => Style::new(),
        Kind::Tool => Style::new().fg(Color::Cyan),
        Kind::Ok => Style::new().fg(Color::Green),
        Kind::Error => Style::new().fg(Color::Red),
        Kind::Steer => Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD),
        Kind::Warn => Style::new().fg(Color::Yellow),
        Kind::End => Style::new().fg(Color::Blue).add_modifier(Modifier::BOLD),
    }
}

fn draw_log(frame: &mut Frame<'_>, log: &LogView, area: Rect) {
    const TIME: usize = TIME_WIDTH;
    let width = usize::from(area.width).saturating_sub(TIME).max(10);
    log.width.set(width);
    let mut lines: Vec<Line<'_>> = Vec::new();
    for line in &log.lines {
        let style = kind_style(line.kind);
        for (i, piece) in wrap(&line.text, width).into_iter().enumerate() {
            let time = if i == 0 {
                format!("{:<TIME$}", line.time)
            } else {
                " ".repeat(TIME)
            };
            lines.push(Line::from(vec![
                Span::styled(time, Style::new().fg(Color::DarkGray)),
                Span::styled(piece, style),
            ]));
        }
    }
    let height = usize::from(area.height.saturating_sub(1));
    let max_scroll = lines.len().saturating_sub(height);
    log.max_scroll.set(max_scroll);
    log.page.set(height.max(1));
    let offset = log.scroll.min(max_scroll);
    let start = lines.len().saturating_sub(height + offset);
    let state = if log.ended {
        "ended".to_owned()
    } else if offset == 0 {
        "following".to_owned()
    } else {
        format!("{offset} lines up, End follows")
    };
    let block = Block::new()
        .borders(Borders::TOP)
        .title(format!(" log {} · {state} ", log.task));
    let shown: Vec<Line<'_>> = lines.into_iter().skip(start).take(height).collect();
    let empty = shown.is_empty();
    frame.render_widget(Paragraph::new(shown).block(block), area);
    if empty {
        frame.render_widget(
            Paragraph::new("no events yet").style(Style::new().fg(Color::DarkGray)),
            Rect {
                y: area.y.saturating_add(1),
                height: area.height.saturating_sub(1),
                ..area
            },
        );
    }
}

/// The selected task (or the log's) in one line: its prompt, or why it waits.
fn draw_detail(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let task = match &app.view {
        View::Log(log) => app.tasks().iter().find(|t| t.id == log.task),
        View::Table => app.selected(),
    };
    let Some(task) = task else {
        return;
    };
    let mut spans = vec![Span::styled(
        format!("{} ", task.id),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    if matches!(app.view, View::Log(_)) {
        spans.push(Span::styled(
            format!("{} ", status_shown(task)),
            Style::new().fg(status_colour(task.status)),
        ));
        spans.push(Span::raw(format!(
            "turn {} · {} · ",
            task.turns,
            memory_bar(task.rss_bytes, task.mem_limit, 0)
                .spans
                .iter()
                .map(|s| s.content.as_ref())
                .collect::<String>()
        )));
    }
    match &task.waiting {
        Some(reason) => spans.push(Span::styled(
            format!("waiting: {reason}"),
            Style::new().fg(Color::Yellow),
        )),
        None => spans.push(Span::styled(
            format!(
                "{} · {}",
                task.model,
                task.prompt.lines().next().unwrap_or("")
            ),
            Style::new().fg(Color::DarkGray),
        )),
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_status(frame: &mut Frame<'_>, app: &App, area: Rect) {
    match &app.prompt {
        Some(Prompt::ConfirmCancel { task }) => frame.render_widget(
            Paragraph::new(format!("cancel task {task}? y/n"))
                .style(Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)),
            area,
        ),
        Some(Prompt::Steer { task, input }) => {
            let head = format!("steer {task}> ");
            // Keep the end of a long message in view.
            let room = usize::from(area.width).saturating_sub(head.chars().count() + 1);
            let skip = input.chars().count().saturating_sub(room);
            let shown: String = input.chars().skip(skip).collect();
            let x = area.x.saturating_add(
                u16::try_from(head.chars().count() + shown.chars().count()).unwrap_or(u16::MAX),
            );
            frame.render_widget(
                Paragraph::new(Line::from(vec![
                    Span::styled(head, Style::new().fg(Color::Magenta)),
                    Span::raw(shown),
                ])),
                area,
            );
            frame.set_cursor_position((x.min(area.right().saturating_sub(1)), area.y));
        }
        None => {
            if let Some(status) = &app.status {
                let colour = if status.error {
                    Color::Red
                } else {
                    Color::Green
                };
                frame.render_widget(
                    Paragraph::new(status.text.clone()).style(Style::new().fg(colour)),
                    area,
                );
            }
        }
    }
}

fn draw_keys(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let keys: &[(&str, &str)] = match (&app.prompt, &app.view) {
        (Some(Prompt::ConfirmCancel { .. }), _) => &[("y", "cancel it"), ("n/Esc", "keep it")],
        (Some(Prompt::Steer { .. }), _) => &[("Enter", "send"), ("Esc", "abort")],
        (None, View::Table) => &[
            ("↑↓/jk", "select"),
            ("l/Enter", "log"),
            ("s", "steer"),
            ("c", "cancel"),
            ("q", "quit"),
        ],
        (None, View::Log(_)) => &[
            ("↑↓/PgUp/PgDn", "scroll"),
            ("End", "follow"),
            ("s", "steer"),
            ("c", "cancel"),
            ("Esc/q", "back"),
        ],
    };
    let mut spans = Vec::new();
    for (key, what) in keys {
        spans.push(Span::styled(
            format!(" {key} "),
            Style::new().add_modifier(Modifier::REVERSED),
        ));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::top::app::Key;
    use crate::cli::top::app::tests::task;
    use kugetsu_protocol::{Event, EventEnvelope, Priority};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn screen(app: &App, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        let now = humantime::parse_rfc3339("2026-12-01T12:00:42Z").unwrap();
        terminal.draw(|f| draw(f, app, now)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn fleet() -> App {
        let mut running = task("06ak2m9xqa7f2", TaskStatus::Running, Priority::High);
        running.rss_bytes = Some(42 << 20);
        running.tool = Some("bash".to_owned());
        running.usage.input_tokens = 12_000;
        running.usage.output_tokens = 345;
        running.usage.cost_usd = Some(0.0123);
        let mut waiting = task("06ak2m9xr0c3b", TaskStatus::Waiting, Priority::Normal);
        waiting.rss_bytes = Some(400 << 20);
        waiting.waiting = Some("rate limit of openai, 3.2 s".to_owned());
        let mut held = task("06ak2m9xs4d5e", TaskStatus::Queued, Priority::Low);
        held.waiting = Some("daily budget reached".to_owned());
        let mut app = App::new("/run/user/1000/kugetsu/kugetsu.sock".to_owned());
        app.set_tasks(vec![
            running,
            waiting,
            held,
            task("06ak2m9xt6f7g", TaskStatus::Queued, Priority::High),
        ]);
        app
    }

    #[test]
    fn the_fleet_fits_80_by_24() {
        let app = fleet();
        let text = screen(&app, 80, 24);
        assert!(
            text.contains("daemon /run/user/1000/kugetsu/kugetsu.sock"),
            "{text}"
        );
        assert!(
            text.contains("2 running (1 waiting) · 2 queued · 4 total"),
            "{text}"
        );
        assert!(text.contains("memory 442M of 1.0G"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("06ak2m9xqa7f2"))
            .unwrap_or_else(|| panic!("{text}"));
        for cell in [
            "running", "high", "bash", "12.3k", "$0.0123", "42s", "42M/512M",
        ] {
            assert!(row.contains(cell), "{cell} in {row:?}");
        }
        assert!(row.contains('█'), "{row}");
        let waiting = text
            .lines()
            .find(|l| l.starts_with("06ak2m9xr0c3b"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(waiting.contains("waiting") && waiting.contains("400M/512M"));
        assert!(
            text.contains("⧗ 06ak2m9xr0c3b waits: rate limit of openai, 3.2 s"),
            "{text}"
        );
        // The queue in run order: high first.
        let high = text
            .find("1.   06ak2m9xt6f7g")
            .unwrap_or_else(|| panic!("{text}"));
        let low = text
            .find("2.   06ak2m9xs4d5e")
            .unwrap_or_else(|| panic!("{text}"));
        assert!(high < low);
        assert!(text.contains("daily budget reached"), "{text}");
        assert!(text.contains("s  steer"), "{text}");
    }

    #[test]
    fn prompts_and_the_log_view() {
        let mut app = fleet();
        app.key(Key::Char('c'));
        assert!(screen(&app, 80, 24).contains("cancel task 06ak2m9xqa7f2? y/n"));
        app.key(Key::Esc);
        app.key(Key::Char('s'));
        for c in "try again".chars() {
            app.key(Key::Char(c));
        }
        assert!(screen(&app, 80, 24).contains("steer 06ak2m9xqa7f2> try again"));
        app.key(Key::Esc);
        app.key(Key::Enter);
        for seq in 1..=40 {
            app.log_event(&EventEnvelope {
                v: 1,
                task: "06ak2m9xqa7f2".to_owned(),
                seq,
                ts: "2026-12-01T12:00:01.207Z".to_owned(),
                event: Event::ToolStart {
                    call_id: format!("c{seq}"),
                    tool: "bash".to_owned(),
                    args: serde_json::json!({"command": format!("sleep {seq}")}),
                },
            });
        }
        let text = screen(&app, 80, 24);
        assert!(text.contains("log 06ak2m9xqa7f2 · following"), "{text}");
        assert!(text.contains("12:00:01 ▸ bash sleep 40"), "{text}");
        assert!(!text.contains("▸ bash sleep 1\n"), "{text}");
        app.key(Key::Home);
        let text = screen(&app, 80, 24);
        assert!(text.contains("▸ bash sleep 1 "), "{text}");
        assert!(text.contains("lines up, End follows"), "{text}");
    }

    #[test]
    fn an_idle_daemon_and_one_not_answered_yet() {
        let mut app = App::new("/tmp/k.sock".to_owned());
        let text = screen(&app, 80, 24);
        assert!(text.contains("asking the daemon…"), "{text}");
        app.set_tasks(vec![task("t1", TaskStatus::Completed, Priority::Normal)]);
        let text = screen(&app, 80, 24);
        assert!(text.contains("0 running · 0 queued · 0 total"), "{text}");
        assert!(text.contains("no shadows running"), "{text}");
        assert!(text.contains("nothing queued"), "{text}");
        assert!(text.contains("memory 0K of 0K"), "{text}");
        app.key(Key::Char('s'));
        assert!(app.prompt.is_none());
        assert!(screen(&app, 80, 24).contains("no task selected"));
    }

    #[test]
    fn a_memory_bar_fits_its_width() {
        let bar = |rss, width| {
            memory_bar(rss, 512 << 20, width)
                .spans
                .iter()
                .map(|s| s.content.as_ref())
                .collect::<String>()
        };
        assert_eq!(bar(Some(256 << 20), 18), "████░░░░ 256M/512M");
        assert_eq!(bar(None, 16), "░░░░░░░░░ -/512M");
        assert_eq!(bar(Some(1 << 20), 8), "1M/512M");
        assert_eq!(
            bar(Some(1 << 20), 20).chars().filter(|c| *c == '█').count(),
            1
        );
    }
}

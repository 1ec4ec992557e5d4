//! What `kugetsu top` knows and what each key does to it, apart from the terminal and the
//! daemon: the loop feeds it task lists, log events and [`Key`]s, and carries out the
//! [`Effect`] a key asks for (an RPC call, opening a log feed, quitting). Everything here is
//! plain data, tested without a terminal or a daemon.

use std::cell::Cell;

use kugetsu_protocol::{EventEnvelope, Priority};

use crate::cli::top::log::{LogLine, lines_of, wrap};
use crate::rpc::{TaskStatus, TaskSummary};

/// A key press, as far as `top` cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    Backspace,
    /// Ctrl-C: quits from anywhere (the terminal is in raw mode, so it sends no SIGINT).
    Interrupt,
    Char(char),
}

/// What the loop must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond drawing again.
    None,
    /// Leave `top`.
    Quit,
    /// `cancel` this task.
    Cancel(String),
    /// `steer` this task with `text`.
    Steer { task: String, text: String },
    /// Start following this task's events for the log view.
    OpenLog(String),
    /// Stop following the log view's task.
    CloseLog,
}

/// The main area: the fleet, or one task's log.
#[derive(Debug)]
pub enum View {
    Table,
    Log(LogView),
}

/// A question or an input line at the bottom of the screen, over either view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// `cancel task? y/n`.
    ConfirmCancel { task: String },
    /// The steering message being typed.
    Steer { task: String, input: String },
}

/// The last action's outcome, shown in the status line until the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub text: String,
    pub error: bool,
}

/// One task's events as lines, scrollable.
#[derive(Debug)]
pub struct LogView {
    pub task: String,
    pub lines: Vec<LogLine>,
    /// Lines scrolled up from the end; 0 follows the end as lines arrive.
    pub scroll: usize,
    /// The largest useful `scroll`, as the last draw found it (wrapped lines minus the
    /// height): keys clamp to it so scrolling back down takes effect at once.
    pub max_scroll: Cell<usize>,
    /// The height of the log area at the last draw (a page for PgUp/PgDn).
    pub page: Cell<usize>,
    /// The width lines were wrapped to at the last draw (so lines arriving while scrolled
    /// back move `scroll` by as many screen lines as they will take).
    pub width: Cell<usize>,
    /// The last `seq` shown (a re-subscription may repeat events).
    pub last_seq: u64,
    /// Whether the task's `finished` arrived (the feed has ended).
    pub ended: bool,
}

impl LogView {
    fn new(task: String) -> LogView {
        LogView {
            task,
            lines: Vec::new(),
            scroll: 0,
            max_scroll: Cell::new(0),
            page: Cell::new(10),
            width: Cell::new(70),
            last_seq: 0,
            ended: false,
        }
    }

    fn scroll_by(&mut self, up: isize) {
        let max = self.max_scroll.get();
        let now = self.scroll.min(max);
        self.scroll = now.saturating_add_signed(up).min(max);
    }
}

/// The state of `top`.
#[derive(Debug)]
pub struct App {
    /// The daemon's socket, for the header.
    pub socket: String,
    /// Live tasks, shadows first (by id), then the queue in run order.
    tasks: Vec<TaskSummary>,
    /// How many of `tasks` are shadows (not queued).
    shadows: usize,
    /// Whether a `list` has been answered yet.
    pub loaded: bool,
    /// The selected task's id: kept by id, so a refresh that reorders keeps it.
    selected: Option<String>,
    pub view: View,
    pub prompt: Option<Prompt>,
    pub status: Option<Status>,
}

impl App {
    pub fn new(socket: String) -> App {
        App {
            socket,
            tasks: Vec::new(),
            shadows: 0,
            loaded: false,
            selected: None,
            view: View::Table,
            prompt: None,
            status: None,
        }
    }

    /// Takes a fresh `list`: keeps the live tasks, shadows first, then the queue in the
    /// daemon's run order (priority, then submission). The selection stays on its task; when
    /// that one is gone, on the row where it was.
    pub fn set_tasks(&mut self, tasks: Vec<TaskSummary>) {
        let was = self.selected_index();
        let (mut queue, mut shadows): (Vec<TaskSummary>, Vec<TaskSummary>) = tasks
            .into_iter()
            .filter(|t| !t.status.is_final())
            .partition(|t| t.status == TaskStatus::Queued);
        shadows.sort_by(|a, b| a.id.cmp(&b.id));
        queue.sort_by(|a, b| (lane(a.priority), &a.id).cmp(&(lane(b.priority), &b.id)));
        self.shadows = shadows.len();
        shadows.append(&mut queue);
        self.tasks = shadows;
        self.loaded = true;
        let still_there = self
            .selected
            .as_ref()
            .is_some_and(|id| self.tasks.iter().any(|t| &t.id == id));
        if !still_there {
            let row = was.unwrap_or(0).min(self.tasks.len().saturating_sub(1));
            self.selected = self.tasks.get(row).map(|t| t.id.clone());
        }
    }

    /// The running (and waiting) shadows.
    pub fn shadows(&self) -> &[TaskSummary] {
        &self.tasks[..self.shadows]
    }

    /// The queued tasks, in run order.
    pub fn queue(&self) -> &[TaskSummary] {
        &self.tasks[self.shadows..]
    }

    /// Every live task.
    pub fn tasks(&self) -> &[TaskSummary] {
        &self.tasks
    }

    /// Index into [`App::tasks`] of the selection.
    pub fn selected_index(&self) -> Option<usize> {
        let id = self.selected.as_ref()?;
        self.tasks.iter().position(|t| &t.id == id)
    }

    pub fn selected(&self) -> Option<&TaskSummary> {
        self.selected_index().and_then(|i| self.tasks.get(i))
    }

    /// Shows the outcome of an action.
    pub fn info(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            error: false,
        });
    }

    /// Shows a failed action.
    pub fn error(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            error: true,
        });
    }

    /// Adds an event of the log view's task (others are ignored).
    pub fn log_event(&mut self, envelope: &EventEnvelope) {
        let View::Log(log) = &mut self.view else {
            return;
        };
        if envelope.task != log.task || envelope.seq <= log.last_seq {
            return;
        }
        log.last_seq = envelope.seq;
        let lines = lines_of(envelope);
        if log.scroll > 0 {
            // Scrolled back: keep the same lines in view.
            let width = log.width.get();
            log.scroll += lines
                .iter()
                .map(|l| wrap(&l.text, width).len())
                .sum::<usize>();
        }
        log.lines.extend(lines);
        if matches!(envelope.event, kugetsu_protocol::Event::Finished(_)) {
            log.ended = true;
        }
    }

    /// The task a key acts on: the log's task in the log view, else the selection.
    fn target(&self) -> Option<String> {
        match &self.view {
            View::Log(log) => Some(log.task.clone()),
            View::Table => self.selected.clone(),
        }
    }

    /// What `key` does.
    pub fn key(&mut self, key: Key) -> Effect {
        if key == Key::Interrupt {
            return Effect::Quit;
        }
        if let Some(prompt) = self.prompt.take() {
            return self.prompt_key(prompt, key);
        }
        match key {
            Key::Char('q') if matches!(self.view, View::Table) => Effect::Quit,
            Key::Char('q') | Key::Esc if matches!(self.view, View::Log(_)) => {
                self.view = View::Table;
                Effect::CloseLog
            }
            Key::Char('c') => {
                match self.target() {
                    Some(task) => self.prompt = Some(Prompt::ConfirmCancel { task }),
                    None => self.error("no task selected"),
                }
                Effect::None
            }
            Key::Char('s') => {
                match self.target() {
                    Some(task) => {
                        self.prompt = Some(Prompt::Steer {
                            task,
                            input: String::new(),
                        })
                    }
                    None => self.error("no task selected"),
                }
                Effect::None
            }
            _ => match &mut self.view {
                View::Table => self.table_key(key),
                View::Log(log) => {
                    let page = isize::try_from(log.page.get().max(1)).unwrap_or(10);
                    match key {
                        Key::Up | Key::Char('k') => log.scroll_by(1),
                        Key::Down | Key::Char('j') => log.scroll_by(-1),
                        Key::PageUp => log.scroll_by(page),
                        Key::PageDown | Key::Char(' ') => log.scroll_by(-page),
                        Key::Home | Key::Char('g') => log.scroll_by(isize::MAX),
                        Key::End | Key::Char('G') => log.scroll = 0,
                        _ => {}
                    }
                    Effect::None
                }
            },
        }
    }

    fn table_key(&mut self, key: Key) -> Effect {
        let last = self.tasks.len().saturating_sub(1);
        let row = self.selected_index();
        let to = match key {
            Key::Up | Key::Char('k') => row.map(|r| r.saturating_sub(1)),
            Key::Down | Key::Char('j') => Some(row.map_or(0, |r| (r + 1).min(last))),
            Key::Home | Key::Char('g') => Some(0),
            Key::End | Key::Char('G') => Some(last),
            Key::PageUp => row.map(|r| r.saturating_sub(10)),
            Key::PageDown => Some(row.map_or(0, |r| (r + 10).min(last))),
            Key::Enter | Key::Char('l') => {
                return match self.selected.clone() {
                    Some(task) => {
                        self.view = View::Log(LogView::new(task.clone()));
                        Effect::OpenLog(task)
                    }
                    None => {
                        self.error("no task selected");
                        Effect::None
                    }
                };
            }
            _ => None,
        };
        if let Some(task) = to.and_then(|r| self.tasks.get(r)) {
            self.selected = Some(task.id.clone());
        }
        Effect::None
    }

    fn prompt_key(&mut self, prompt: Prompt, key: Key) -> Effect {
        match prompt {
            Prompt::ConfirmCancel { task } => match key {
                Key::Char('y' | 'Y') => Effect::Cancel(task),
                Key::Char('n' | 'N') | Key::Esc | Key::Char('q') => {
                    self.info(format!("{task} not cancelled"));
                    Effect::None
                }
                _ => {
                    // Anything else keeps asking.
                    self.prompt = Some(Prompt::ConfirmCancel { task });
                    Effect::None
                }
            },
            Prompt::Steer { task, mut input } => match key {
                Key::Esc => {
                    self.info("steering aborted");
                    Effect::None
                }
                Key::Enter if input.trim().is_empty() => {
                    self.error("an empty steering message is not sent (Esc aborts)");
                    self.prompt = Some(Prompt::Steer { task, input });
                    Effect::None
                }
                Key::Enter => Effect::Steer { task, text: input },
                Key::Backspace => {
                    input.pop();
                    self.prompt = Some(Prompt::Steer { task, input });
                    Effect::None
                }
                Key::Char(c) => {
                    input.push(c);
                    self.prompt = Some(Prompt::Steer { task, input });
                    Effect::None
                }
                _ => {
                    self.prompt = Some(Prompt::Steer { task, input });
                    Effect::None
                }
            },
        }
    }
}

/// The daemon's queue lanes: high before normal before low.
fn lane(priority: Priority) -> u8 {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kugetsu_protocol::{Event, Usage};

    pub(crate) fn task(id: &str, status: TaskStatus, priority: Priority) -> TaskSummary {
        TaskSummary {
            id: id.to_owned(),
            status,
            priority,
            model: "scripted/demo".to_owned(),
            prompt: format!("prompt of {id}"),
            repo: "/repo".into(),
            branch: None,
            worktree: None,
            created: "2026-12-01T12:00:00.000Z".to_owned(),
            pid: None,
            attempt: 1,
            turns: 3,
            usage: Usage::default(),
            restarts: 0,
            rss_bytes: None,
            mem_limit: 512 << 20,
            tool: None,
            result: None,
            error: None,
            waiting: None,
            budget_tokens: None,
            budget_usd: None,
            conflicts: Default::default(),
            merged: None,
            node: None,
        }
    }

    fn fleet() -> App {
        let mut app = App::new("/run/kugetsu.sock".to_owned());
        app.set_tasks(vec![
            task("t1", TaskStatus::Running, Priority::Normal),
            task("t2", TaskStatus::Completed, Priority::Normal),
            task("t3", TaskStatus::Queued, Priority::Low),
            task("t4", TaskStatus::Waiting, Priority::High),
            task("t5", TaskStatus::Queued, Priority::High),
        ]);
        app
    }

    fn ids(tasks: &[TaskSummary]) -> Vec<&str> {
        tasks.iter().map(|t| t.id.as_str()).collect()
    }

    #[test]
    fn live_tasks_only_shadows_first_then_the_queue_in_run_order() {
        let app = fleet();
        assert_eq!(ids(app.shadows()), ["t1", "t4"]);
        assert_eq!(ids(app.queue()), ["t5", "t3"]);
        assert_eq!(app.selected().map(|t| t.id.as_str()), Some("t1"));
    }

    #[test]
    fn selection_moves_through_shadows_and_queue_and_survives_a_refresh() {
        let mut app = fleet();
        for _ in 0..2 {
            assert_eq!(app.key(Key::Down), Effect::None);
        }
        assert_eq!(app.selected().map(|t| t.id.as_str()), Some("t5"));
        app.key(Key::Char('j'));
        app.key(Key::Down);
        assert_eq!(app.selected().map(|t| t.id.as_str()), Some("t3"));
        app.key(Key::Char('k'));
        assert_eq!(app.selected().map(|t| t.id.as_str()), Some("t5"));
        // t5 started: it is a shadow now, still selected.
        app.set_tasks(vec![
            task("t1", TaskStatus::Running, Priority::Normal),
            task("t3", TaskStatus::Queued, Priority::Low),
            task("t4", TaskStatus::Running, Priority::High),
            task("t5", TaskStatus::Running, Priority::High),
        ]);
        assert_eq!(app.selected().map(|t| t.id.as_str()), Some("t5"));
        // It finished: the selection stays on its row.
        app.set_tasks(vec![
            task("t1", TaskStatus::Running, Priority::Normal),
            task("t3", TaskStatus::Queued, Priority::Low),
            task("t4", TaskStatus::Running, Priority::High),
        ]);
        assert_eq!(app.selected().map(|t| t.id.as_str()), Some("t3"));
        app.set_tasks(Vec::new());
        assert!(app.selected().is_none());
        assert_eq!(app.key(Key::Char('c')), Effect::None);
        assert!(app.prompt.is_none());
        assert!(app.status.as_ref().is_some_and(|s| s.error));
    }

    #[test]
    fn cancel_asks_first() {
        let mut app = fleet();
        app.key(Key::Down);
        assert_eq!(app.key(Key::Char('c')), Effect::None);
        assert_eq!(
            app.prompt,
            Some(Prompt::ConfirmCancel {
                task: "t4".to_owned()
            })
        );
        assert_eq!(app.key(Key::Char('x')), Effect::None);
        assert!(app.prompt.is_some(), "another key keeps asking");
        assert_eq!(app.key(Key::Char('n')), Effect::None);
        assert!(app.prompt.is_none());
        app.key(Key::Char('c'));
        assert_eq!(app.key(Key::Char('y')), Effect::Cancel("t4".to_owned()));
        assert!(app.prompt.is_none());
    }

    #[test]
    fn steer_types_a_line_enter_sends_esc_aborts() {
        let mut app = fleet();
        app.key(Key::Char('s'));
        for c in "use the qx".chars() {
            assert_eq!(app.key(Key::Char(c)), Effect::None);
        }
        // Keys that mean something elsewhere are text here.
        app.key(Key::Backspace);
        app.key(Key::Backspace);
        for c in "bash tool".chars() {
            app.key(Key::Char(c));
        }
        assert_eq!(
            app.key(Key::Enter),
            Effect::Steer {
                task: "t1".to_owned(),
                text: "use the bash tool".to_owned()
            }
        );
        app.key(Key::Char('s'));
        app.key(Key::Char('q'));
        assert_eq!(app.key(Key::Esc), Effect::None);
        assert!(app.prompt.is_none());
        app.key(Key::Char('s'));
        app.key(Key::Char(' '));
        assert_eq!(app.key(Key::Enter), Effect::None, "blank is not sent");
        assert!(app.prompt.is_some());
        assert_eq!(app.key(Key::Interrupt), Effect::Quit);
    }

    fn envelope(task: &str, seq: u64, event: Event) -> EventEnvelope {
        EventEnvelope {
            v: 1,
            task: task.to_owned(),
            seq,
            ts: "2026-12-01T12:00:01.207Z".to_owned(),
            event,
        }
    }

    #[test]
    fn the_log_follows_its_task_scrolls_and_closes() {
        let mut app = fleet();
        app.key(Key::Down);
        assert_eq!(app.key(Key::Char('l')), Effect::OpenLog("t4".to_owned()));
        let text = |seq, text: &str| Event::AssistantMessage {
            text: format!("{text} {seq}"),
        };
        for seq in 1..=30 {
            app.log_event(&envelope("t4", seq, text(seq, "line")));
        }
        app.log_event(&envelope("t1", 31, text(31, "other task")));
        app.log_event(&envelope("t4", 30, text(30, "repeated")));
        let View::Log(log) = &app.view else {
            panic!("not in the log view")
        };
        assert_eq!(log.lines.len(), 30);
        log.max_scroll.set(20);
        log.page.set(10);
        app.key(Key::PageUp);
        app.key(Key::Up);
        let View::Log(log) = &app.view else {
            panic!("not in the log view")
        };
        assert_eq!(log.scroll, 11);
        app.key(Key::Home);
        app.key(Key::Down);
        let View::Log(log) = &app.view else {
            panic!("not in the log view")
        };
        assert_eq!(log.scroll, 19);
        // A line arriving while scrolled back keeps the view where it was: two screen lines
        // at this width.
        log.width.set(10);
        app.log_event(&envelope("t4", 31, text(31, "a longer line")));
        let View::Log(log) = &app.view else {
            panic!("not in the log view")
        };
        assert_eq!(log.scroll, 21);
        // Steering and cancelling in the log act on its task.
        app.key(Key::Char('c'));
        assert_eq!(app.key(Key::Char('y')), Effect::Cancel("t4".to_owned()));
        app.key(Key::End);
        assert_eq!(app.key(Key::Esc), Effect::CloseLog);
        assert!(matches!(app.view, View::Table));
        assert_eq!(app.key(Key::Char('q')), Effect::Quit);
    }
}

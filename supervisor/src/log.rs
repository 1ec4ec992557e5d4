//! Where the supervisor's own messages go: `tracing` events written to stderr.
//!
//! Two formats. `human` (the default) keeps the lines a person reads at a terminal or in
//! `journalctl`: `kugetsu: MESSAGE key=value ...`, with `warning: ` / `error: ` after the prefix
//! for those levels, and, for the daemon outside journald, an RFC 3339 timestamp in front.
//! `json` writes one JSON object per line (`timestamp`, `level`, `message`, the event's fields
//! such as `task`, and `target`) for journald's JSON readers and log shippers.
//!
//! `KUGETSU_LOG` picks what is written: a level (`warn`, `info`, `debug`, `trace`, `off`) or
//! per-target directives (`kugetsu_supervisor::daemon=debug,info`); default `info`.

use std::fmt;
use std::str::FromStr;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `kugetsu: message key=value`, for people.
    #[default]
    Human,
    /// One JSON object per line, for machines.
    Json,
}

/// Where the logging is set up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `kugetsu serve`: a long-lived process whose lines want timestamps (unless journald
    /// stamps them itself).
    Daemon,
    /// Every other command: its messages are part of what the user reads on stderr.
    Command,
}

/// The filter `KUGETSU_LOG` asks for, or why it is unusable.
pub fn filter(text: Option<&str>) -> Result<Targets, String> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(Targets::new().with_default(LevelFilter::INFO)),
        Some(text) => {
            // A bare level applies to everything; `Targets` reads a bare word as a target.
            if let Ok(level) = LevelFilter::from_str(text) {
                return Ok(Targets::new().with_default(level));
            }
            Targets::from_str(text).map_err(|e| {
                format!(
                    "KUGETSU_LOG={text:?} is not a log filter ({e}); use a level (warn, info, \
                     debug) or directives such as kugetsu_supervisor::daemon=debug,info"
                )
            })
        }
    }
}

/// Installs the process's subscriber. Called once, before anything logs; a second call (tests)
/// keeps the first.
pub fn init(format: LogFormat, role: Role, filter: Targets) {
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Human => {
            // journald stamps every line itself; a second timestamp is noise there.
            let timestamps = role == Role::Daemon && std::env::var_os("JOURNAL_STREAM").is_none();
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(false)
                        .event_format(Human { timestamps }),
                )
                .try_init()
        }
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .try_init(),
    };
    drop(result);
}

/// The human line format.
#[derive(Debug)]
struct Human {
    timestamps: bool,
}

impl<S, N> FormatEvent<S, N> for Human
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.timestamps {
            SystemTime.format_time(&mut writer)?;
            writer.write_char(' ')?;
        }
        writer.write_str("kugetsu: ")?;
        match *event.metadata().level() {
            Level::ERROR => writer.write_str("error: ")?,
            Level::WARN => writer.write_str("warning: ")?,
            Level::DEBUG => writer.write_str("debug: ")?,
            Level::TRACE => writer.write_str("trace: ")?,
            Level::INFO => {}
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_read_levels_and_directives_and_refuse_garbage() {
        assert!(filter(None).is_ok());
        assert!(filter(Some("  ")).is_ok());
        let debug = filter(Some("debug")).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(debug.would_enable("kugetsu_supervisor::daemon", &Level::DEBUG));
        assert!(!debug.would_enable("kugetsu_supervisor::daemon", &Level::TRACE));
        let mixed = filter(Some("kugetsu_supervisor::daemon=debug,warn"))
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(mixed.would_enable("kugetsu_supervisor::daemon::actor", &Level::DEBUG));
        assert!(!mixed.would_enable("kugetsu_supervisor::task", &Level::INFO));
        let error = filter(Some("kugetsu=loud")).err().unwrap_or_default();
        assert!(error.contains("KUGETSU_LOG"), "{error}");
    }
}

//! Crash points: named places where a test can have the process die as if `kill -9` hit it
//! at that instant, for the crash-point sweep.
//!
//! Built only with the `failpoints` feature (the test builds of `scripts/check`); every shipped
//! build compiles [`point`] to nothing. Armed by two variables, read once at start
//! ([`arm`]):
//!
//! - `KUGETSU_CRASH_AT=NAME`: the point to die at;
//! - `KUGETSU_CRASH_MARKER=PATH`: the process dies there only if it can create `PATH` (which
//!   must not exist yet), so across restarts the crash happens exactly once.
//!
//! The points (see each call site): `journal.appended` (a record written, before its fsync),
//! `journal.synced` (after it), `tool.intent` (a tool's intent journaled, before it runs),
//! `tool.ran` (it ran, before its result is journaled), `events.written` (a batch of events
//! appended, before its fdatasync), `events.synced` (after it), `record.saved` (task.json
//! replaced), `live.marked` (a live marker made), `queue.enqueued` (a submission queued, before
//! it is acknowledged).

/// Every crash point, for the sweep.
pub const POINTS: &[&str] = &[
    "journal.appended",
    "journal.synced",
    "tool.intent",
    "tool.ran",
    "events.written",
    "events.synced",
    "record.saved",
    "live.marked",
    "queue.enqueued",
];

/// Arms the crash point named by `KUGETSU_CRASH_AT`, if any (no-op without the feature).
pub fn arm() {
    #[cfg(feature = "failpoints")]
    {
        let (Ok(name), Ok(marker)) = (
            std::env::var("KUGETSU_CRASH_AT"),
            std::env::var("KUGETSU_CRASH_MARKER"),
        ) else {
            return;
        };
        let marker = std::path::PathBuf::from(marker);
        let _ = fail::cfg_callback(name, move || {
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&marker)
                .is_ok()
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::this(),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        });
    }
}

/// A crash point (see the module docs); compiled to nothing without the feature.
#[inline(always)]
pub fn point(name: &'static str) {
    #[cfg(feature = "failpoints")]
    {
        let _ = fail::eval(name, |_| ());
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Whether this build has crash points.
pub const ENABLED: bool = cfg!(feature = "failpoints");

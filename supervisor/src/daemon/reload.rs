//! Config hot reload: a `notify` watcher on the config file's directory that tells the daemon
//! actor when the file changed. The actor re-reads and validates it (a bad file is rejected
//! and the old settings stay).

use std::path::Path;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::daemon::command::Command;

/// Watches `config` (if any); the returned watcher must be kept alive.
pub fn watch(
    config: Option<&Path>,
    daemon: mpsc::UnboundedSender<Command>,
) -> Option<notify::RecommendedWatcher> {
    let config = config?;
    let dir = config
        .parent()
        .filter(|d| !d.as_os_str().is_empty())?
        .to_owned();
    // A config file created later must be seen too: the directory has to exist to be watched.
    let _ = std::fs::create_dir_all(&dir);
    let name = config.file_name()?.to_owned();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Editors replace files by rename; watching the directory sees every way.
        if event.paths.iter().any(|p| p.file_name() == Some(&name))
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            let _ = daemon.send(Command::Reload);
        }
    })
    .map_err(|e| tracing::warn!("config hot reload unavailable: {e}"))
    .ok()?;
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!("cannot watch {} for config changes: {e}", dir.display());
        return None;
    }
    Some(watcher)
}

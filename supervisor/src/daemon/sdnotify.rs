//! systemd's notify protocol (`Type=notify`): READY, STATUS, WATCHDOG and STOPPING messages
//! sent as datagrams to `$NOTIFY_SOCKET`. Without that variable every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// A connection to the service manager, if there is one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half the watchdog timeout: how often `WATCHDOG=1` must be sent, if a watchdog is set.
    watchdog_every: Option<Duration>,
    last_ping: Option<Instant>,
    last_status: String,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
            let addr = match bytes.first() {
                Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).ok()?,
                Some(b'/') => SocketAddr::from_pathname(&path).ok()?,
                _ => return None,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(|u| Duration::from_micros(u / 2));
        Notifier {
            target,
            watchdog_every,
            last_ping: None,
            last_status: String::new(),
        }
    }

    /// Sends one message (e.g. `READY=1\nSTATUS=...`); failures are ignored, as systemd does.
    pub fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            let _ = socket.send_to_addr(message.as_bytes(), addr);
        }
    }

    /// Tells systemd the daemon is ready, with a first status line.
    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_owned();
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// Updates the status line when it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_owned();
            self.send(&format!("STATUS={status}"));
        }
    }

    /// Pings the watchdog when it is due.
    pub fn watchdog(&mut self) {
        if let Some(every) = self.watchdog_every
            && self.last_ping.is_none_or(|t| t.elapsed() >= every)
        {
            self.last_ping = Some(Instant::now());
            self.send("WATCHDOG=1");
        }
    }

    /// Tells systemd the daemon is stopping.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

//! `kugetsu serve`: the daemon. Many shadows, one queue, one socket.
//!
//! - [`actor`]: the actor that owns all state, and its run loop.
//! - [`command`]: what the actor hears ([`command::Command`]).
//! - [`commands`]: what each JSON-RPC method does to that state.
//! - [`table`]: the live tasks, and finished ones loaded from disk on demand.
//! - [`subscribers`]: event fan-out with a bounded backlog per subscriber.
//! - [`connection`]: one client connection (JSON-RPC over the socket).
//! - [`socket`]: where the socket is, binding it 0600, peer checks.
//! - [`peer`]: whether a peer is a shadow's process (refused).
//! - [`queue`]: the bounded priority queue.
//! - [`limits`]: the file-descriptor limit a fleet needs.
//! - [`housekeeping`]: `clean` and the retention policy, on finished tasks' directories.
//! - [`reload`]: config hot reload.
//! - [`sdnotify`]: systemd notifications.
//! - [`stats`]: the counters and the fleet snapshot behind the HTTP API's metrics.

pub mod actor;
pub mod command;
pub mod commands;
pub mod connection;
pub mod housekeeping;
pub mod limits;
pub mod peer;
pub mod queue;
pub mod reload;
pub mod sdnotify;
pub mod socket;
pub mod stats;
pub mod subscribers;
pub mod table;

pub use actor::serve;

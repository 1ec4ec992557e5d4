//! The suites, one file per area.

mod fake_server;

//! The suites, one file per area.

mod bash;
mod cli;
mod confinement;
mod daemon;
mod errors;
mod fake_server;
mod providers;
mod recovery;
mod scripted;
mod streaming;
mod tools;

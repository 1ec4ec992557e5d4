//! The suites, one file per area.

mod bash;
mod cli;
mod compaction;
mod confinement;
mod crash_loop;
mod crash_points;
mod daemon;
mod errors;
mod fake_server;
mod file_races;
mod fleet;
mod governor;
mod hermes;
mod journal_damage;
mod land;
mod packaging;
mod providers;
mod recovery;
mod resume;
mod sandbox;
mod scripted;
mod steering;
mod streaming;
mod tools;
mod top;

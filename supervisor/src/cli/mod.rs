//! What a user types: the command line, and the commands that are not the daemon itself.
//!
//! - [`args`]: the clap definitions of every subcommand and its options.
//! - [`run`]: `kugetsu run`, one shadow in the foreground.
//! - [`demo`]: `kugetsu demo`, the offline showcase.
//! - [`doctor`]: `kugetsu doctor`, environment checks.
//! - [`generate`]: `completions` and `man`, generated from [`args`].
//! - [`client`]: the daemon's clients (`submit`, `ps`, `logs`, ...).
//! - [`land`]: `diff` and `merge`, through the daemon or, without one, on the state dir.
//! - [`render`]: the human progress view.
//! - [`top`]: `kugetsu top`, the terminal dashboard of the fleet.

pub mod args;
pub mod client;
pub mod demo;
pub mod doctor;
pub mod generate;
pub mod land;
pub mod render;
pub mod run;
pub mod top;

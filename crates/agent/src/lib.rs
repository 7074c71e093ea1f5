//! gosok's node agent (`docs/AGENTS.md`): registers nodes, keeps them under a lease, runs the
//! tasks the engine places on them as process groups, reports how they end, and serves their
//! logs. `run` is the whole agent; `gosok agent` is its command line.

pub mod agent;
pub mod client;
pub mod config;
pub mod discovery;
pub mod leftovers;
pub mod logs;
pub mod runner;
pub mod sandbox;

pub use agent::run;
pub use config::{Config, NodeTemplate};

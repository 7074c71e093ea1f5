//! gosok's scheduling engine: the functional core that the controller and the simulator both
//! drive.
//!
//! No I/O, no async, no clock, no global state. Events go in through [`Engine::apply`]; a
//! scheduling pass runs in [`Engine::schedule`]; decisions come out. The same events and
//! seed give the same decisions, byte for byte.

pub mod baselines;
pub mod cluster;
pub mod config;
pub mod constraints;
pub mod engine;
pub mod event;
pub mod explain;
pub mod fragmentation;
pub mod gittins;
pub mod hold;
pub mod ids;
pub mod job;
pub mod placement;
pub mod queue;
pub mod reservation;
pub mod scorers;
pub mod snapshot;
pub mod tenants;
pub mod waste;

pub use config::{EngineConfig, QueuePolicy};
pub use engine::{Engine, Explanation, PassStats, PassTimes};
pub use event::{Decision, EngineError, Event, JobState, PreemptReason, TaskPlacement};
pub use explain::{Blocker, WaitReason};
pub use ids::JobId;
pub use snapshot::{SNAPSHOT_FORMAT, SnapshotError};

//! gosok's digital twin: the production engine on a virtual clock.
//!
//! - [`workload`]: the input formats — the cluster file (TOML `ClusterSpec`) and the workload
//!   file (JSON Lines: a job spec plus `submit_s`, `duration_s`, `tenant`).
//! - [`import`]: trace importers (Alibaba openb, Microsoft Philly, any CSV with a column
//!   mapping) that write those two files, and the synthetic generator.
//! - [`replay`]: the event loop that drives `gosok_engine::Engine`.
//! - [`policy`]: the policies (FIFO, SJF, SRTF, gosok) and placements as engine configurations.
//! - [`report`], [`chart`]: what a run reports (JSON, table, CSV, SVG).
//! - [`philly`]: the Helios (SC'21) comparison on the Philly trace.
//!
//! Errors about inputs name the file, line and column ([`error::InputError`]); nothing here
//! panics on any input.

pub mod chart;
pub mod csv;
pub mod error;
pub mod import;
pub mod philly;
pub mod policy;
pub mod replay;
pub mod report;
pub mod workload;

pub use error::{BadRows, InputError, Skipped};
pub use policy::{Estimates, Placement, Policy};
pub use replay::{ReplayOptions, RunResult, SimError, replay, replay_many};
pub use report::Report;
pub use workload::{Workload, WorkloadJob, read_cluster, read_workload};

//! Arrival-only GPU packing experiments on real cluster traces.
//!
//! This crate reproduces the experiment of FGD (Weng et al., "Beware of Fragmentation:
//! Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent", USENIX ATC '23) on the
//! Alibaba openb v2023 trace, and measures gosok's own packing policy against it.
//!
//! Map:
//! - [`csv`]: CSV files with errors naming file, line, column and problem (reusable by importers);
//! - [`model`] and [`load`]: nodes, pods and GPU models, read from the trace's CSV files (a
//!   loader: placement is the engine's);
//! - [`engine_run`]: the cluster and pods as the engine sees them, one arrival through it;
//! - [`policy`]: the policies by name, each a configuration of the engine's scorers;
//! - [`experiment`]: the runner (seeds, shuffle, inflation, placement through the engine,
//!   per-x recording);
//! - [`report`]: medians over seeds and the table / JSON / CSV outputs;
//! - [`chart`]: SVG charts (the paper's Figure 9(a));
//! - [`published`]: the published results and statistics over seeds;
//! - [`compare`]: our runs side by side with the published ones (`gosok sim fgd-compare`).

pub mod chart;
pub mod compare;
pub mod csv;
pub mod engine_run;
pub mod experiment;
pub mod load;
pub mod model;
pub mod policy;
pub mod published;
pub mod report;
pub mod variants;

//! gosok's domain model: the words of `shared/PRODUCT.md` as types.
//!
//! Everything here is plain data plus validation. The engine turns these specs into its own
//! compact, indexed form; the controller and the simulator read and write them as TOML and JSON.

pub mod agent;
pub mod catalog;
pub mod error;
pub mod job;
pub mod tenant;
pub mod topology;

pub use catalog::{AcceleratorModel, Catalog, ModelId};
pub use error::SpecError;
pub use job::{
    ACCELERATOR_TAINT, Constraints, JobSpec, OnTaskFailure, SpreadConstraint, Taint, TaskGroupSpec,
    TopologyConstraint, TopologyLevel, TopologyMode,
};
pub use tenant::{PriorityClass, QuotaSpec, TenantSpec, Tier};
pub use topology::{ClusterSpec, NodeSpec, NodeState, RackSpec, ResolvedNode, SiteSpec};

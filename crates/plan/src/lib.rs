//! Capacity planning (`gosok plan`): what a facility power budget holds (`site`), how much
//! capacity a demand needs to keep waits under a target, found by replaying it through the
//! twin (`capacity`), and a demand model to plan against when no trace exists (`demand`).

pub mod capacity;
pub mod chart;
pub mod demand;
pub mod headroom;
pub mod measure;
pub mod params;
pub mod search;
pub mod site;
pub mod target;

/// What went wrong; `Usage` errors are the user's input (the CLI exits with code 2 for them).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{flag}: {problem}")]
    Usage { flag: String, problem: String },
    #[error("{0}")]
    Sim(String),
}

impl PlanError {
    pub fn usage(flag: &str, problem: impl Into<String>) -> PlanError {
        PlanError::Usage {
            flag: flag.to_string(),
            problem: problem.into(),
        }
    }

    pub fn is_usage(&self) -> bool {
        matches!(self, PlanError::Usage { .. })
    }
}

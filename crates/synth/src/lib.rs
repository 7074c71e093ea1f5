//! Seeded synthetic highways and workloads.
//!
//! Benchmarks, tests and the simulator need highways and job streams of any size that look
//! like the real thing (several sites, racks with power caps, a mix of accelerator models,
//! tenants of every tier; small fractional jobs, many single-node jobs, a few large gangs)
//! without shipping trace data. Everything here is a pure function of its parameters and a
//! seed: the same seed gives the same highway and the same jobs, byte for byte, on every
//! machine (`rand_chacha`, never the thread RNG).

pub mod highway;
pub mod workload;

pub use highway::{HighwayParams, SITES, highway};
pub use workload::{JobKind, SyntheticJob, WorkloadGen, WorkloadParams, workload};

/// A parameter outside the range that makes a sensible highway or workload.
///
/// `field` is the parameter's name as it appears in the params struct (`nodes`,
/// `accelerators_per_node`), so that a CLI can name its own flag for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParamError {
    pub field: &'static str,
    pub message: String,
}

impl ParamError {
    fn new(field: &'static str, message: impl Into<String>) -> ParamError {
        ParamError {
            field,
            message: message.into(),
        }
    }
}

fn check_count(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ParamError> {
    if value < min || value > max {
        return Err(ParamError::new(
            field,
            format!("is {value}; it must be between {min} and {max}"),
        ));
    }
    Ok(())
}

fn check_real(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), ParamError> {
    if !value.is_finite() || value < min || value > max {
        return Err(ParamError::new(
            field,
            format!("is {value}; it must be a number between {min} and {max}"),
        ));
    }
    Ok(())
}

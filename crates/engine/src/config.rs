//! Engine configuration: every tunable, with the default gosok ships.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Seeds the tie-breaking between equally good nodes.
    pub seed: u64,
    /// Fraction of board power an allocated accelerator is assumed to draw.
    pub accelerator_utilisation: f64,
    /// Half-life of the decayed usage that fair share looks at.
    pub fair_share_half_life_s: u64,
    /// Placement scorers and their weights, by name (see `placement::scorer_by_name`).
    pub scorers: Vec<(String, f64)>,
    /// How many feasible nodes are scored per replica (Kubernetes' percentageOfNodesToScore,
    /// Nomad's limit iterator): candidates come best-fit first, so a small number suffices.
    pub score_candidates: usize,
    /// Planning runtime for a job that gives neither estimate nor limit.
    pub default_runtime_s: u64,
    /// When a job outruns its estimate and limit, plan it to end this much later.
    pub overrun_grace_s: u64,
    /// Requeues after a lost node before a job fails, unless its spec says otherwise.
    pub default_max_retries: u64,
    /// Preemption searches per pass; each is bounded, this bounds their sum.
    pub max_preemption_attempts_per_pass: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            seed: 0,
            accelerator_utilisation: 0.9,
            fair_share_half_life_s: 7 * 24 * 3600,
            scorers: vec![
                ("bestfit".into(), 1.0),
                ("fgd".into(), 1.0),
                ("consolidate".into(), 2.0),
                ("power".into(), 0.25),
            ],
            score_candidates: 16,
            default_runtime_s: 24 * 3600,
            overrun_grace_s: 600,
            default_max_retries: 3,
            max_preemption_attempts_per_pass: 2,
        }
    }
}

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
    /// How the queue is ordered (the digital twin compares gosok's default with the classic
    /// policies of the literature).
    pub queue_policy: QueuePolicy,
    /// Once a tenant's first job in line cannot start, none of its later jobs may start in
    /// that pass (FIFO/SJF as in Helios; each tenant is its own line).
    pub head_of_line_blocking: bool,
    /// Reservations for the first job that cannot start, and backfill around them.
    pub backfill: bool,
}

/// Queue order within a priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum QueuePolicy {
    /// Weighted dominant-resource fair share across tenants, then age (gosok's default).
    #[default]
    FairShare,
    /// Submit time only.
    Fifo,
    /// Shortest runtime estimate first (with true durations as estimates: the oracle SJF).
    ShortestFirst,
    /// Shortest remaining estimate first, preemptive: a job whose remaining time is shorter
    /// preempts running ones with longer remaining time. Each preemption adds a checkpoint
    /// overhead to the victim's remaining time: `overhead_s` for jobs of up to 1, 8, or more
    /// accelerators (Helios: 7 / 30 / 60 s).
    ShortestRemainingFirst { overhead_s: [u64; 3] },
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
            queue_policy: QueuePolicy::FairShare,
            head_of_line_blocking: false,
            backfill: true,
        }
    }
}

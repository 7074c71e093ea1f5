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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum QueuePolicy {
    /// Weighted dominant-resource fair share across tenants; within a tenant, discretised
    /// least attained service (Tiresias' 2D-LAS), preemptive for preemptible jobs, with
    /// promotion against starvation (gosok's default; `docs/SCHEDULING.md`).
    FairShareLas(Las),
    /// Weighted dominant-resource fair share across tenants, then age within a tenant (the
    /// default before `fair_share_las`; kept for comparison).
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

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy::FairShareLas(Las::default())
    }
}

/// The attained-service ladder of `QueuePolicy::FairShareLas`.
///
/// A job's attained service is the accelerator-seconds it has run (thousandths count as
/// fractions), summed over its attempts since it was last promoted. Level `k` holds the jobs
/// whose attained service is below `first_level_accel_s × level_ratio^k`; the last level
/// holds the rest. Within a tenant, lower levels go first, and within a level older jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Las {
    /// Upper bound of the first level, in accelerator-seconds.
    pub first_level_accel_s: u64,
    /// Each level's bound is this many times the one before (a geometric ladder: the same
    /// shape at every scale).
    pub level_ratio: u64,
    /// Number of levels (1 = no ladder: age order, 2..=8).
    pub levels: u8,
    /// A preemptible job is preempted for a job of a lower level of its own tenant and class
    /// only after it has run this long in its current attempt.
    pub min_run_s: u64,
    /// An attempt is also safe for this many times the job's run time before it: the
    /// protected run doubles (for 1) with every preemption, so a job of run time D is
    /// preempted for this order at most about log2(D / min_run_s) times.
    pub protect_runs: u32,
    /// A job sent back to a higher level waits at most this many times its total run time
    /// before it is promoted to the first level (its ladder restarts from zero); 0: never.
    pub promote_after_runs: u32,
    /// Checkpoint overhead added to a preempted job's remaining estimate, for jobs of up to 1,
    /// 8, or more accelerators (as `ShortestRemainingFirst`).
    pub overhead_s: [u64; 3],
    /// After a search among higher-level jobs found no room for a job, it is not searched
    /// again for this long (as Kubernetes backs off unschedulable pods): each pass would
    /// mostly find the same.
    pub retry_s: u64,
    /// Order by the Gittins index of the sizes of the tenant's jobs of the same shape that
    /// ended (`gittins.rs`) once there are `min_samples` of them, else of all its jobs, else
    /// by attained service alone: the index is mapped onto the same ladder (a job of index
    /// G stands where a job of attained service 1/G would).
    pub learned_sizes: bool,
    /// Jobs that must have ended before their sizes order others.
    pub min_samples: u32,
}

impl Default for Las {
    fn default() -> Self {
        Las {
            first_level_accel_s: 3600,
            level_ratio: 4,
            levels: 6,
            min_run_s: 600,
            protect_runs: 1,
            promote_after_runs: 2,
            overhead_s: [7, 30, 60],
            retry_s: 300,
            learned_sizes: true,
            min_samples: 16,
        }
    }
}

impl Las {
    /// Most levels a ladder may have.
    pub const MAX_LEVELS: u8 = 8;

    /// The level of a job that attained `milli_s` thousandth-accelerator-seconds.
    pub fn level(&self, milli_s: u64) -> u8 {
        let mut bound = self.first_level_accel_s.saturating_mul(1000);
        let mut level = 0;
        while level + 1 < self.levels && milli_s >= bound {
            level += 1;
            bound = bound.saturating_mul(self.level_ratio);
        }
        level
    }

    /// How long an attempt of a job that ran `run_s` before it is safe from preemption for
    /// this order.
    pub fn protected_s(&self, run_s: u64) -> u64 {
        self.min_run_s
            .max(run_s.saturating_mul(self.protect_runs as u64))
    }

    /// The attained service (thousandth-accelerator-seconds) at which level `level` ends.
    pub fn bound_milli_s(&self, level: u8) -> u64 {
        let mut bound = self.first_level_accel_s.saturating_mul(1000);
        for _ in 0..level {
            bound = bound.saturating_mul(self.level_ratio);
        }
        bound
    }

    pub fn validate(&self) -> Result<(), gosok_model::SpecError> {
        let err = |f: &str, m: &str| {
            Err(gosok_model::SpecError::new(
                format!("queue_policy.{f}"),
                m.to_string(),
            ))
        };
        if !(1..=Las::MAX_LEVELS).contains(&self.levels) {
            return err("levels", "must be between 1 and 8");
        }
        if self.first_level_accel_s == 0 {
            return err("first_level_accel_s", "must be at least 1");
        }
        if self.level_ratio < 2 {
            return err("level_ratio", "must be at least 2");
        }
        if self.learned_sizes && self.min_samples == 0 {
            return err("min_samples", "must be at least 1");
        }
        Ok(())
    }
}

/// Expected waste places every replica (`waste.rs`); a gang's later replicas also prefer its
/// earlier ones' scale-up domain, rack and site, and racks with power headroom break ties.
pub fn default_scorers() -> Vec<(String, f64)> {
    vec![
        ("waste".into(), 1.0),
        ("consolidate".into(), 2.0),
        ("power".into(), 0.25),
    ]
}

/// The weighted mix that was the default before expected waste (kept for comparison).
pub fn mixed_scorers() -> Vec<(String, f64)> {
    vec![
        ("bestfit".into(), 1.0),
        ("fgd".into(), 1.0),
        ("consolidate".into(), 2.0),
        ("power".into(), 0.25),
    ]
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            seed: 0,
            accelerator_utilisation: 0.9,
            fair_share_half_life_s: 7 * 24 * 3600,
            scorers: default_scorers(),
            score_candidates: 16,
            default_runtime_s: 24 * 3600,
            overrun_grace_s: 600,
            default_max_retries: 3,
            max_preemption_attempts_per_pass: 2,
            queue_policy: QueuePolicy::default(),
            head_of_line_blocking: false,
            backfill: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_is_geometric_and_its_last_level_open() {
        let las = Las {
            first_level_accel_s: 10,
            level_ratio: 4,
            levels: 3,
            ..Las::default()
        };
        // Bounds at 10, 40 accelerator-seconds; the third level holds the rest.
        assert_eq!(las.level(0), 0);
        assert_eq!(las.level(9_999), 0);
        assert_eq!(las.level(10_000), 1);
        assert_eq!(las.level(39_999), 1);
        assert_eq!(las.level(40_000), 2);
        assert_eq!(las.level(u64::MAX), 2);
        assert_eq!(
            (las.bound_milli_s(0), las.bound_milli_s(1)),
            (10_000, 40_000)
        );
        let one = Las { levels: 1, ..las };
        assert_eq!(one.level(u64::MAX), 0);
    }

    #[test]
    fn protection_grows_with_the_run_time_before() {
        let las = Las::default();
        assert_eq!(las.protected_s(0), las.min_run_s);
        assert_eq!(las.protected_s(5000), 5000);
        let off = Las {
            protect_runs: 0,
            ..las
        };
        assert_eq!(off.protected_s(5000), off.min_run_s);
    }

    #[test]
    fn bad_ladders_are_refused_with_the_field_named() {
        for (las, field) in [
            (
                Las {
                    levels: 0,
                    ..Las::default()
                },
                "queue_policy.levels",
            ),
            (
                Las {
                    levels: 9,
                    ..Las::default()
                },
                "queue_policy.levels",
            ),
            (
                Las {
                    level_ratio: 1,
                    ..Las::default()
                },
                "queue_policy.level_ratio",
            ),
            (
                Las {
                    first_level_accel_s: 0,
                    ..Las::default()
                },
                "queue_policy.first_level_accel_s",
            ),
        ] {
            assert_eq!(las.validate().unwrap_err().field, field);
        }
        assert!(Las::default().validate().is_ok());
    }

    #[test]
    fn policies_are_named_in_config_files() {
        let p: QueuePolicy =
            serde_json::from_str(r#"{"kind":"fair_share_las","min_run_s":300}"#).unwrap();
        assert_eq!(
            p,
            QueuePolicy::FairShareLas(Las {
                min_run_s: 300,
                ..Las::default()
            })
        );
        let p: QueuePolicy = serde_json::from_str(r#"{"kind":"fair_share"}"#).unwrap();
        assert_eq!(p, QueuePolicy::FairShare);
        assert_eq!(EngineConfig::default().queue_policy, QueuePolicy::default());
        assert!(matches!(
            QueuePolicy::default(),
            QueuePolicy::FairShareLas(_)
        ));
        assert!(serde_json::from_str::<QueuePolicy>(r#"{"kind":"fair_share_las","x":1}"#).is_err());
    }
}

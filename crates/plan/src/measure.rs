//! One replay through the twin and what the planners read from it.

use std::collections::BTreeSet;

use serde::Serialize;

use gosok_model::{Catalog, ClusterSpec, Tier};
use gosok_sim::replay::Outcome;
use gosok_sim::{Policy, ReplayOptions, WorkloadJob, replay};

use crate::PlanError;
use crate::target::{Statistic, Target};

/// What one replay gave.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub accelerators: u64,
    /// The target's statistic over the counted jobs, seconds (`None`: some never finished and
    /// the statistic is infinite).
    pub target_wait_s: Option<f64>,
    pub met: bool,
    /// Over all jobs that started.
    pub avg_wait_s: f64,
    pub p95_wait_s: Option<f64>,
    pub jobs_never_finished: u64,
    pub utilization: f64,
    pub energy_kwh: f64,
    pub replay_wall_s: f64,
}

/// What to replay with and what to measure.
#[derive(Debug, Clone)]
pub struct Measure {
    pub target: Target,
    /// Only tenants of this tier count towards the target.
    pub tier: Option<Tier>,
    pub policy: Policy,
    pub seed: u64,
}

impl Measure {
    /// The names of the tenants whose jobs count.
    pub fn counted(&self, cluster: &ClusterSpec) -> BTreeSet<String> {
        cluster
            .tenant
            .iter()
            .filter(|t| self.tier.is_none_or(|tier| t.tier == tier))
            .map(|t| t.name.clone())
            .collect()
    }

    /// Replays `jobs` on `cluster` and measures the waits (all the time each job was pending).
    pub fn run(
        &self,
        cluster: &ClusterSpec,
        jobs: &[WorkloadJob],
        catalog: &Catalog,
    ) -> Result<Measured, PlanError> {
        let counted = self.counted(cluster);
        let mut opts = ReplayOptions::new(self.policy);
        opts.seed = self.seed;
        opts.series_points = 50;
        let started = std::time::Instant::now();
        let r = replay(cluster, jobs, catalog, &opts, &|_, _| {})
            .map_err(|e| PlanError::Sim(e.to_string()))?;
        let wall = started.elapsed().as_secs_f64();
        let mut waits = Vec::new();
        let mut all = Vec::with_capacity(r.outcomes.len());
        for o in &r.outcomes {
            // A job's wait is all the time it spent pending, across preemptions: under a
            // preemptive order the first start alone would hide the waits after it.
            let w = match o.outcome {
                Outcome::Succeeded | Outcome::Failed => Some(o.queue_s),
                Outcome::Rejected | Outcome::Unfinished => None,
            };
            all.push(w);
            let name = r.tenant_names.get(o.tenant as usize);
            if name.is_some_and(|n| counted.contains(n)) {
                waits.push(w);
            }
        }
        let value = self.target.measure(&waits);
        let started_waits: Vec<u64> = all.iter().flatten().copied().collect();
        let p95 = Target {
            statistic: Statistic::Percentile(95.0),
            limit_s: 0,
            text: String::new(),
        }
        .measure(&all);
        Ok(Measured {
            accelerators: r.report.accelerators.round() as u64,
            target_wait_s: value,
            met: self.target.met(value),
            avg_wait_s: if started_waits.is_empty() {
                0.0
            } else {
                started_waits.iter().sum::<u64>() as f64 / started_waits.len() as f64
            },
            p95_wait_s: p95,
            jobs_never_finished: all.iter().filter(|w| w.is_none()).count() as u64,
            utilization: r.report.utilization,
            energy_kwh: r.report.energy_kwh,
            replay_wall_s: wall,
        })
    }
}

/// Runs `f` on each item, `threads` at a time, in order.
pub fn parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: &(dyn Fn(&T) -> Result<R, PlanError> + Sync),
) -> Result<Vec<R>, PlanError> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(threads.max(1)) {
        let results: Vec<Result<R, PlanError>> = std::thread::scope(|s| {
            let hs: Vec<_> = chunk.iter().map(|x| s.spawn(move || f(x))).collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(PlanError::Sim("a replay thread panicked".into())))
                })
                .collect()
        });
        for r in results {
            out.push(r?);
        }
    }
    Ok(out)
}

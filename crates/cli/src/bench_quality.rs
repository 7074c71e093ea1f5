//! Placement quality in `gosok bench engine`: how many accelerators stay unallocated when the
//! synthetic workload has asked for as much as the highway holds, for the default placement
//! (expected waste) with its candidate bound, without the bound (every feasible node
//! scored), and for the previous weighted mix.
//!
//! Arrival only, as in the FGD experiment: jobs of the synthetic mix arrive and never end;
//! after each arrival worth 0.5 % of the highway a pass places what it can. Power is ample
//! and every job belongs to one tenant without quota or share cap, so that what is left
//! unallocated is what placement wasted (fragments, stranded accelerators), not what power
//! or tenant limits kept back.

use anyhow::{Context, Result};
use serde::Serialize;

use gosok_engine::{Engine, EngineConfig, Event, JobId};
use gosok_model::Catalog;
use gosok_synth::{HighwayParams, WorkloadGen, WorkloadParams};

/// Share of the highway's accelerators that arrives between two passes.
const STEP: f64 = 0.005;

#[derive(Debug, Clone, Serialize)]
pub struct QualityRun {
    /// `default` (expected waste) or `mixed` (bestfit + fgd + consolidate + power).
    pub scorers: &'static str,
    /// Feasible nodes scored per replica (0: all of them).
    pub score_candidates: usize,
    /// Unallocated accelerators, in % of the highway, once the arrived demand equals it.
    pub unallocated_pct: f64,
    pub jobs_arrived: usize,
    pub jobs_running: usize,
    /// Engine time of the whole run (submissions and passes), ms.
    pub engine_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Quality {
    pub nodes: usize,
    pub accelerators: u64,
    pub runs: Vec<QualityRun>,
}

/// A placement to measure: its name, scorers and candidate bound (0: none).
type Configuration = (&'static str, Vec<(String, f64)>, usize);

/// The configurations compared: the default and its candidate bound, then the old mix.
fn configurations() -> Vec<Configuration> {
    let default = gosok_engine::config::default_scorers();
    let bound = EngineConfig::default().score_candidates;
    vec![
        ("default", default.clone(), bound),
        ("default", default, 0),
        ("mixed", gosok_engine::config::mixed_scorers(), bound),
    ]
}

/// Runs every configuration on a highway of `nodes` nodes.
pub fn placement_quality(
    sites: usize,
    nodes: usize,
    accelerators_per_node: u64,
    seed: u64,
) -> Result<Quality> {
    let params = HighwayParams {
        sites,
        nodes,
        accelerators_per_node,
        site_power_budget_mw: 10_000.0,
        constrained_rack_fraction: 0.0,
        ..HighwayParams::default()
    };
    let mut cluster = gosok_synth::highway(&params, seed);
    // One tenant, no quota or share cap: placement alone decides.
    cluster
        .tenant
        .retain(|t| t.quotas.is_empty() && t.share_cap >= 1.0);
    cluster.tenant.truncate(1);
    let tenant = cluster
        .tenant
        .first()
        .map(|t| t.name.clone())
        .context("the synthetic highway has no tenant without limits (a gosok-synth bug)")?;
    let accelerators: u64 = cluster
        .node
        .iter()
        .map(|n| n.count.unwrap_or(1) * n.accelerators)
        .sum();
    let mut runs = Vec::new();
    for (name, scorers, candidates) in configurations() {
        let cfg = EngineConfig {
            seed,
            scorers,
            score_candidates: if candidates == 0 {
                usize::MAX
            } else {
                candidates
            },
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(Catalog::builtin(), &cluster, cfg)
            .context("the engine refused the synthetic highway (a gosok-synth bug)")?;
        let capacity = accelerators * 1000;
        let step = ((capacity as f64 * STEP) as u64).max(1);
        let mut stream = WorkloadGen::new(&WorkloadParams::default(), &cluster, seed);
        let (mut arrived, mut next_step, mut jobs) = (0u64, step, 0usize);
        let started = std::time::Instant::now();
        while arrived < capacity {
            let Some(job) = stream.next() else { break };
            jobs += 1;
            arrived += job.spec.total_accelerator_milli();
            engine
                .apply(Event::Submit {
                    id: JobId(jobs as u64),
                    tenant: tenant.clone(),
                    spec: job.spec,
                })
                .context("submitting a quality-benchmark job")?;
            if arrived >= next_step || arrived >= capacity {
                engine.schedule();
                next_step += step;
            }
        }
        let engine_ms = started.elapsed().as_secs_f64() * 1000.0;
        let c = engine.cluster();
        let free: u64 = c.sites.iter().map(|s| s.free_milli).sum();
        runs.push(QualityRun {
            scorers: name,
            score_candidates: candidates,
            unallocated_pct: (free as f64 / capacity.max(1) as f64 * 1e4).round() / 100.0,
            jobs_arrived: jobs,
            jobs_running: engine
                .jobs()
                .filter(|j| j.state == gosok_engine::JobState::Running)
                .count(),
            engine_ms: (engine_ms * 10.0).round() / 10.0,
        });
    }
    Ok(Quality {
        nodes,
        accelerators,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_highway_is_filled_and_measured_for_every_configuration() {
        let q = placement_quality(1, 40, 8, 1).unwrap();
        assert_eq!(q.accelerators, 320);
        assert_eq!(q.runs.len(), 3);
        for r in &q.runs {
            assert!(r.jobs_running > 0, "{r:?}");
            assert!(
                r.unallocated_pct >= 0.0 && r.unallocated_pct < 100.0,
                "{r:?}"
            );
        }
    }
}

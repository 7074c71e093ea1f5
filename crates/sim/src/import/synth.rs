//! Synthetic highways and workloads for scale tests (`gosok trace synth`), from
//! `gosok_synth`: several sites of racks with power caps and a mix of accelerator models;
//! a Poisson stream of fractional, single-node and gang jobs with log-normal runtimes and
//! the over-estimates users give.
//!
//! The arrival rate is set from a target offered load (accelerator-seconds asked per second
//! over the accelerators there are), measured on a pilot sample of the same generator.

use gosok_synth::{HighwayParams, WorkloadGen, WorkloadParams, highway};

use crate::import::{ImportError, ImportSummary, Imported};
use crate::workload::WorkloadJob;

#[derive(Debug, Clone)]
pub struct SynthParams {
    pub nodes: usize,
    pub sites: usize,
    pub jobs: usize,
    pub seed: u64,
    /// Offered load as a fraction of accelerator capacity (ignored with `arrival_rate_per_s`).
    pub load: f64,
    pub arrival_rate_per_s: Option<f64>,
}

/// Jobs of the pilot sample that measures the mean work per job.
const PILOT_JOBS: usize = 4000;

/// Accelerators of the highway, and how many of them its sites' power budgets can run at
/// once (IT budget = facility budget / PUE, against every node's full draw at the engine's
/// default utilisation): the capacity an offered load is a fraction of. A synthetic highway
/// of many nodes on few sites is power-bound, and a load measured against accelerators it
/// cannot power would grow its queue without end.
pub fn powered_capacity(cluster: &gosok_model::ClusterSpec) -> (f64, f64) {
    let catalog = gosok_model::Catalog::builtin();
    let util = gosok_engine::EngineConfig::default().accelerator_utilisation;
    let mut per_site: Vec<(f64, f64)> = vec![(0.0, 0.0); cluster.site.len()];
    for n in &cluster.node {
        let Some(site) = cluster
            .rack
            .iter()
            .find(|r| r.name == n.rack)
            .and_then(|r| cluster.site.iter().position(|s| s.name == r.site))
        else {
            continue;
        };
        let board = n
            .accelerator
            .as_deref()
            .and_then(|m| catalog.id(m))
            .map_or(0.0, |id| catalog.get(id).board_power_w as f64);
        let count = n.count.unwrap_or(1) as f64;
        per_site[site].0 += count * n.accelerators as f64;
        per_site[site].1 += count * (n.base_power_w as f64 + n.accelerators as f64 * board * util);
    }
    let mut all = 0.0;
    let mut powered = 0.0;
    for (s, (accel, full_w)) in cluster.site.iter().zip(per_site) {
        let budget_it_w = s.power_budget_mw * 1e6 / s.pue.max(1.0);
        all += accel;
        powered += if full_w > 0.0 {
            accel * (budget_it_w / full_w).min(1.0)
        } else {
            0.0
        };
    }
    (all, powered)
}

pub fn synthesize(p: &SynthParams) -> Result<Imported, ImportError> {
    if p.nodes == 0 || p.nodes > 1_000_000 {
        return Err(ImportError::param("--nodes", "give 1 to 1000000 nodes"));
    }
    if p.sites == 0 || p.sites > gosok_synth::SITES.len() {
        return Err(ImportError::param(
            "--sites",
            format!("give 1 to {} sites", gosok_synth::SITES.len()),
        ));
    }
    if p.jobs > 100_000_000 {
        return Err(ImportError::param("--jobs", "at most 100000000 jobs"));
    }
    if !(p.load.is_finite() && p.load > 0.0 && p.load <= 100.0) {
        return Err(ImportError::param(
            "--load",
            "give a fraction of capacity above 0 (e.g. 0.9)",
        ));
    }
    let hp = HighwayParams {
        nodes: p.nodes,
        sites: p.sites,
        ..HighwayParams::default()
    };
    hp.validate()
        .map_err(|e| ImportError::param(&format!("--{}", e.field.replace('_', "-")), e.message))?;
    let cluster = highway(&hp, p.seed);
    let (accelerators, capacity) = powered_capacity(&cluster);
    let mut wp = WorkloadParams {
        jobs: p.jobs,
        ..WorkloadParams::default()
    };
    let rate = match p.arrival_rate_per_s {
        Some(r) => r,
        None => {
            // Accelerator-seconds per job, from a pilot stream with its own seed.
            let pilot: Vec<_> = WorkloadGen::new(&wp, &cluster, p.seed ^ 0x5eed_1107)
                .take(PILOT_JOBS)
                .collect();
            let work: f64 = pilot
                .iter()
                .map(|j| j.spec.total_accelerator_milli() as f64 / 1000.0 * j.duration_s as f64)
                .sum::<f64>()
                / pilot.len().max(1) as f64;
            if work <= 0.0 || capacity <= 0.0 {
                WorkloadParams::default().arrival_rate_per_s
            } else {
                p.load * capacity / work
            }
        }
    };
    wp.arrival_rate_per_s = rate;
    wp.validate()
        .map_err(|e| ImportError::param("--arrival-rate", e.to_string()))?;
    let jobs: Vec<WorkloadJob> = WorkloadGen::new(&wp, &cluster, p.seed)
        .take(p.jobs)
        .enumerate()
        .map(|(i, j)| WorkloadJob {
            id: Some(format!("synth-{i}")),
            tenant: j.tenant,
            submit_s: j.submit_s,
            duration_s: j.duration_s,
            duration_measured_on: None,
            spec: j.spec,
        })
        .collect();
    let mut summary = ImportSummary {
        source: format!(
            "synthetic: {} nodes in {} sites, {} jobs",
            p.nodes, p.sites, p.jobs
        ),
        rows_read: jobs.len() as u64,
        jobs_written: jobs.len() as u64,
        seed: Some(p.seed),
        ..ImportSummary::default()
    };
    summary.count_cluster(&cluster);
    summary.notes.push(format!(
        "{accelerators:.0} accelerators, of which the sites' power budgets can run {capacity:.0} at once"
    ));
    summary.notes.push(match p.arrival_rate_per_s {
        Some(r) => format!("Poisson arrivals at {r} jobs/s"),
        None => format!(
            "Poisson arrivals at {rate:.4} jobs/s: offered load {} of the powered accelerators",
            p.load
        ),
    });
    Ok(Imported {
        cluster,
        jobs,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_trace_and_the_load_sets_the_rate() {
        let p = SynthParams {
            nodes: 50,
            sites: 2,
            jobs: 300,
            seed: 3,
            load: 0.8,
            arrival_rate_per_s: None,
        };
        let a = synthesize(&p).unwrap();
        let b = synthesize(&p).unwrap();
        assert_eq!(a.jobs, b.jobs);
        assert_eq!(a.cluster, b.cluster);
        assert_eq!(a.summary.seed, Some(3));
        let busier = synthesize(&SynthParams {
            load: 1.6,
            ..p.clone()
        })
        .unwrap();
        // Twice the load: the same jobs arrive in about half the time.
        let span = |i: &Imported| i.jobs.last().unwrap().submit_s as f64;
        let ratio = span(&a) / span(&busier);
        assert!((1.8..2.2).contains(&ratio), "{ratio}");
        assert!(
            synthesize(&SynthParams {
                nodes: 0,
                ..p.clone()
            })
            .is_err()
        );
        assert!(synthesize(&SynthParams { load: -1.0, ..p }).is_err());
    }
}

#[cfg(test)]
mod admission_tests {
    use super::*;

    #[test]
    fn every_synthetic_job_can_run_somewhere() {
        // Small highways are where a site pin or a one-site gang can ask for what a site
        // does not have; the engine rejects such jobs at submit.
        let catalog = gosok_model::Catalog::builtin();
        for (seed, sites) in [(1, 2), (2, 3), (5, 3), (7, 4)] {
            let im = synthesize(&SynthParams {
                nodes: 40,
                sites,
                jobs: 1500,
                seed,
                load: 0.5,
                arrival_rate_per_s: None,
            })
            .unwrap();
            let r = crate::replay(
                &im.cluster,
                &im.jobs,
                &catalog,
                &crate::ReplayOptions::new(crate::Policy::Gosok),
                &|_, _| {},
            )
            .unwrap();
            assert_eq!(
                r.report.jobs_rejected, 0,
                "seed {seed}, {sites} sites: {:?}",
                r.report.rejected_by_reason
            );
        }
    }
}

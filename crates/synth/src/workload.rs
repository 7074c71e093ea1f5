//! Synthetic workloads: a Poisson stream of jobs against a given highway.
//!
//! The mix follows what GPU cluster traces show (Alibaba PAI and openb, Philly, Helios):
//! many small jobs, a long tail of large ones. Fractional jobs (notebooks, inference) ask for
//! a quarter or half of one accelerator; most jobs ask for 1, 2, 4 or 8 whole accelerators on
//! one node; a few are gangs of 2 to 64 full nodes (to 256 when the stream allows larger
//! gangs), sometimes with a topology constraint.
//! Runtimes are log-normal: most jobs are short, a few run for days.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use gosok_model::job::MAX_RUNTIME_S;
use gosok_model::{
    Catalog, ClusterSpec, Constraints, JobSpec, PriorityClass, TaskGroupSpec, TopologyConstraint,
    TopologyLevel, TopologyMode,
};

use crate::highway::pick_weighted;
use crate::{ParamError, check_count, check_real};

/// One job of a synthetic workload: who submits what, when, and how long it really runs
/// (which the engine never sees: it only learns it when the tasks end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyntheticJob {
    pub tenant: String,
    pub submit_s: u64,
    pub duration_s: u64,
    pub spec: JobSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// One replica on a fraction of one accelerator.
    Fractional,
    /// One replica on whole accelerators of one node.
    Single,
    /// Several replicas that start together.
    Gang,
}

impl SyntheticJob {
    pub fn kind(&self) -> JobKind {
        let g = &self.spec.groups;
        if g.iter().any(|g| g.accelerator_milli.is_some()) {
            JobKind::Fractional
        } else if g.iter().map(|g| g.replicas).sum::<u64>() > 1 {
            JobKind::Gang
        } else {
            JobKind::Single
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadParams {
    pub jobs: usize,
    /// Time of the stream's start; the first job arrives after it.
    pub start_s: u64,
    /// Mean arrivals per second of the Poisson process.
    pub arrival_rate_per_s: f64,
    /// Relative frequencies of the three kinds of job.
    pub fractional_weight: f64,
    pub single_weight: f64,
    pub gang_weight: f64,
    /// Largest gang, in replicas (each replica a full node of up to 8 accelerators).
    pub max_gang_replicas: u64,
    /// Median runtime of a single-node job; fractional jobs run half as long, gangs 3×.
    pub median_duration_s: u64,
    /// Spread of runtimes: σ of the log-normal (1.0: a tenth of jobs run 3.6× the median).
    pub duration_sigma: f64,
}

impl Default for WorkloadParams {
    fn default() -> Self {
        WorkloadParams {
            jobs: 1_000,
            start_s: 0,
            arrival_rate_per_s: 0.1,
            fractional_weight: 0.25,
            single_weight: 0.65,
            gang_weight: 0.10,
            max_gang_replicas: 64,
            median_duration_s: 3600,
            duration_sigma: 1.0,
        }
    }
}

impl WorkloadParams {
    pub fn validate(&self) -> Result<(), ParamError> {
        check_count("jobs", self.jobs as u64, 0, 100_000_000)?;
        check_real("arrival_rate_per_s", self.arrival_rate_per_s, 1e-9, 1e6)?;
        check_real("fractional_weight", self.fractional_weight, 0.0, 1e6)?;
        check_real("single_weight", self.single_weight, 0.0, 1e6)?;
        check_real("gang_weight", self.gang_weight, 0.0, 1e6)?;
        if self.fractional_weight + self.single_weight + self.gang_weight <= 0.0 {
            return Err(ParamError::new(
                "single_weight",
                "the three kind weights are all 0; make at least one positive",
            ));
        }
        check_count("max_gang_replicas", self.max_gang_replicas, 2, 100_000)?;
        check_count(
            "median_duration_s",
            self.median_duration_s,
            1,
            MAX_RUNTIME_S,
        )?;
        check_real("duration_sigma", self.duration_sigma, 0.0, 5.0)?;
        Ok(())
    }
}

/// Generates `p.jobs` jobs for `cluster`, in submission order. See [`WorkloadGen`].
pub fn workload(p: &WorkloadParams, cluster: &ClusterSpec, seed: u64) -> Vec<SyntheticJob> {
    WorkloadGen::new(p, cluster, seed).take(p.jobs).collect()
}

/// What a tenant may ever hold, so that the generator asks for nothing admission would
/// reject outright.
struct TenantLimits {
    name: String,
    weight: f64,
    share_cap_milli: u64,
    /// Quotas as (models covered, preemptible limit, guaranteed), in thousandths.
    quotas: Vec<(Vec<String>, u64, u64)>,
}

impl TenantLimits {
    /// Largest accelerator total (thousandths) one job on any of `models` may ask for.
    fn max_milli(&self, models: &[String], preemptible: bool) -> u64 {
        let per_model = models.iter().map(|m| {
            self.quotas
                .iter()
                .filter(|q| q.0.contains(m))
                .map(|q| if preemptible { q.1 } else { q.2 })
                .min()
                .unwrap_or(u64::MAX)
        });
        per_model.max().unwrap_or(0).min(self.share_cap_milli)
    }
}

/// An endless, seeded stream of jobs for one highway (use `take(n)`). It ends at once when the
/// highway has no tenants or no accelerators, since then no job could be admitted.
///
/// The stream only asks for what the highway could ever run: models present on it, gangs that
/// fit a site, totals within the tenant's share cap and quota. Clamps parameters out of range
/// (see [`WorkloadParams::validate`]).
pub struct WorkloadGen {
    rng: ChaCha8Rng,
    p: WorkloadParams,
    tenants: Vec<TenantLimits>,
    tenant_weights: Vec<f64>,
    sites: Vec<String>,
    /// Per site of `sites`: nodes by model (only sites with accelerators).
    site_models: Vec<Vec<(String, u64)>>,
    catalog: Catalog,
    /// Models present, with the number of nodes that have them.
    models: Vec<(String, u64)>,
    model_weights: Vec<f64>,
    all_models: Vec<String>,
    hopper: Vec<String>,
    hopper_majority: bool,
    big_hbm: bool,
    any_shareable: bool,
    /// Accelerators of a full-node replica.
    node_accel: u64,
    cpu_per_accel_milli: u64,
    mem_per_accel_mib: u64,
    max_gang: u64,
    clock_s: f64,
}

impl WorkloadGen {
    pub fn new(p: &WorkloadParams, cluster: &ClusterSpec, seed: u64) -> WorkloadGen {
        let catalog = Catalog::builtin();
        let d = WorkloadParams::default();
        let real = |v: f64, lo: f64, hi: f64, default: f64| {
            if v.is_finite() {
                v.clamp(lo, hi)
            } else {
                default
            }
        };
        let mut p = p.clone();
        p.arrival_rate_per_s = real(p.arrival_rate_per_s, 1e-9, 1e6, d.arrival_rate_per_s);
        p.fractional_weight = real(p.fractional_weight, 0.0, 1e6, 0.0);
        p.single_weight = real(p.single_weight, 0.0, 1e6, 0.0);
        p.gang_weight = real(p.gang_weight, 0.0, 1e6, 0.0);
        if p.fractional_weight + p.single_weight + p.gang_weight <= 0.0 {
            p.single_weight = 1.0;
        }
        p.max_gang_replicas = p.max_gang_replicas.clamp(2, 100_000);
        p.median_duration_s = p.median_duration_s.clamp(1, MAX_RUNTIME_S);
        p.duration_sigma = real(p.duration_sigma, 0.0, 5.0, d.duration_sigma);

        // What the highway holds, per model and per site.
        let mut models: Vec<(String, u64)> = Vec::new();
        let mut site_nodes = vec![0u64; cluster.site.len()];
        let mut site_models: Vec<Vec<(String, u64)>> = vec![Vec::new(); cluster.site.len()];
        let mut total_milli = 0u64;
        let (mut node_accel, mut cpu_milli, mut mem_mib) = (0u64, u64::MAX, u64::MAX);
        for n in &cluster.node {
            let (Some(m), true) = (&n.accelerator, n.accelerators > 0) else {
                continue;
            };
            if catalog.id(m).is_none() {
                continue;
            }
            let count = n.count.unwrap_or(1);
            match models.iter_mut().find(|x| x.0 == *m) {
                Some(x) => x.1 += count,
                None => models.push((m.clone(), count)),
            }
            let site = cluster
                .rack
                .iter()
                .find(|r| r.name == n.rack)
                .and_then(|r| cluster.site.iter().position(|s| s.name == r.site));
            if let Some(s) = site {
                site_nodes[s] += count;
                match site_models[s].iter_mut().find(|x| x.0 == *m) {
                    Some(x) => x.1 += count,
                    None => site_models[s].push((m.clone(), count)),
                }
            }
            total_milli += count * n.accelerators * 1000;
            node_accel = node_accel.max(n.accelerators.min(8));
            cpu_milli = cpu_milli.min(n.cpu_cores * 1000 / n.accelerators);
            mem_mib = mem_mib.min(n.mem_mib / n.accelerators);
        }
        let info = |m: &str| catalog.id(m).map(|id| catalog.get(id));
        let all_models: Vec<String> = models.iter().map(|m| m.0.clone()).collect();
        let hopper: Vec<String> = all_models
            .iter()
            .filter(|m| info(m).is_some_and(|i| i.class == "nvidia-hopper"))
            .cloned()
            .collect();
        let hopper_nodes: u64 = models
            .iter()
            .filter(|m| hopper.contains(&m.0))
            .map(|m| m.1)
            .sum();
        let all_nodes: u64 = models.iter().map(|m| m.1).sum();
        let tenants: Vec<TenantLimits> = cluster
            .tenant
            .iter()
            .map(|t| TenantLimits {
                name: t.name.clone(),
                weight: if t.weight.is_finite() {
                    t.weight.max(0.0)
                } else {
                    0.0
                },
                share_cap_milli: (t.share_cap.clamp(0.0, 1.0) * total_milli as f64) as u64,
                quotas: t
                    .quotas
                    .iter()
                    .map(|q| {
                        let covered = all_models
                            .iter()
                            .filter(|m| {
                                q.accelerator == "*"
                                    || q.accelerator == **m
                                    || info(m).is_some_and(|i| i.class == q.accelerator)
                            })
                            .cloned()
                            .collect();
                        let g = q.guaranteed.saturating_mul(1000);
                        (
                            covered,
                            g.saturating_add(q.borrow_limit.saturating_mul(1000)),
                            g,
                        )
                    })
                    .collect(),
            })
            .collect();
        let mut tenant_weights: Vec<f64> = tenants.iter().map(|t| t.weight).collect();
        if tenant_weights.iter().all(|w| *w <= 0.0) {
            tenant_weights.iter_mut().for_each(|w| *w = 1.0);
        }
        // A gang must fit one site (some ask for that), with room to spare.
        let smallest_site = site_nodes
            .iter()
            .copied()
            .filter(|&n| n > 0)
            .min()
            .unwrap_or(0);
        WorkloadGen {
            catalog: catalog.clone(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            tenants,
            tenant_weights,
            sites: cluster
                .site
                .iter()
                .zip(&site_nodes)
                .filter(|(_, n)| **n > 0)
                .map(|(s, _)| s.name.clone())
                .collect(),
            site_models: site_models
                .into_iter()
                .zip(&site_nodes)
                .filter(|(_, n)| **n > 0)
                .map(|(m, _)| m)
                .collect(),
            model_weights: models.iter().map(|m| m.1 as f64).collect(),
            big_hbm: all_models
                .iter()
                .any(|m| info(m).is_some_and(|i| i.hbm_gib >= 141)),
            any_shareable: all_models
                .iter()
                .any(|m| info(m).is_some_and(|i| i.shareable)),
            hopper_majority: hopper_nodes * 2 >= all_nodes.max(1),
            hopper,
            models,
            all_models,
            node_accel,
            cpu_per_accel_milli: cpu_milli.min(10_000),
            mem_per_accel_mib: mem_mib.min(96 * 1024),
            max_gang: p.max_gang_replicas.min(smallest_site / 2),
            clock_s: p.start_s as f64,
            p,
        }
    }

    fn uniform(&mut self) -> f64 {
        self.rng.r#gen::<f64>()
    }

    /// A log-normal runtime around `median_s`, within a minute and two weeks.
    fn duration(&mut self, median_s: f64) -> u64 {
        // Box–Muller: one standard normal from two uniforms.
        let (u1, u2) = (1.0 - self.uniform(), self.uniform());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let d = median_s * (self.p.duration_sigma * z).exp();
        d.clamp(60.0, 14.0 * 86_400.0) as u64
    }

    /// Nodes of site `s` (an index into `sites`) with a model the group accepts.
    fn nodes_for(&self, s: usize, g: &TaskGroupSpec) -> u64 {
        let catalog = &self.catalog;
        self.site_models[s]
            .iter()
            .filter(|(m, _)| {
                let info = catalog.id(m).map(|id| catalog.get(id));
                let named = g.models.is_empty()
                    || g.models
                        .iter()
                        .any(|x| x == m || info.is_some_and(|i| i.class == *x));
                let hbm =
                    g.min_hbm_gib == 0 || info.is_some_and(|i| i.hbm_gib as u64 >= g.min_hbm_gib);
                named && hbm
            })
            .map(|(_, n)| *n)
            .sum()
    }

    fn group(&self, replicas: u64, accelerators: u64) -> TaskGroupSpec {
        let mut g = TaskGroupSpec::whole(replicas, accelerators);
        g.cpu_milli = accelerators * self.cpu_per_accel_milli;
        g.mem_mib = accelerators * self.mem_per_accel_mib;
        g
    }

    fn next_job(&mut self) -> Option<SyntheticJob> {
        if self.tenants.is_empty() || self.node_accel == 0 {
            return None;
        }
        let gap = -(1.0 - self.uniform()).ln() / self.p.arrival_rate_per_s;
        self.clock_s += gap;
        let submit_s = self.clock_s as u64;
        let t = pick_weighted(&mut self.rng, &self.tenant_weights);
        let preemptible = self.rng.gen_bool(0.9);
        let priority = match self.uniform() {
            u if u < 0.10 => Some(PriorityClass::Low),
            u if u < 0.15 => Some(PriorityClass::High),
            _ => None,
        };
        let mut kind = match pick_weighted(
            &mut self.rng,
            &[
                self.p.fractional_weight,
                self.p.single_weight,
                self.p.gang_weight,
            ],
        ) {
            0 => JobKind::Fractional,
            1 => JobKind::Single,
            _ => JobKind::Gang,
        };
        if kind == JobKind::Fractional && !self.any_shareable {
            kind = JobKind::Single;
        }
        let mut constraints = Constraints::default();
        let (group, median) = match kind {
            JobKind::Fractional => {
                let mut g = self.group(1, 0);
                g.accelerators = None;
                g.accelerator_milli = Some(if self.rng.gen_bool(0.5) { 250 } else { 500 });
                g.cpu_milli = (2000u64).min(self.cpu_per_accel_milli);
                g.mem_mib = (16 * 1024u64).min(self.mem_per_accel_mib);
                (g, 0.5)
            }
            JobKind::Single => {
                let k = [1u64, 2, 4, 8][pick_weighted(&mut self.rng, &[0.35, 0.25, 0.2, 0.2])];
                let mut g = self.group(1, k.min(self.node_accel));
                match self.uniform() {
                    u if u < 0.15 => {
                        let m = pick_weighted(&mut self.rng, &self.model_weights);
                        g.models = vec![self.models[m].0.clone()];
                    }
                    u if u < 0.23 && self.big_hbm => g.min_hbm_gib = 141,
                    _ => {}
                }
                (g, 1.0)
            }
            JobKind::Gang => {
                // Up to 64 nodes the mix of the default streams; a stream allowed larger
                // gangs (national scale) also asks for 128 and 256 nodes, rarely.
                const SIZES: [u64; 8] = [2, 4, 8, 16, 32, 64, 128, 256];
                const WEIGHTS: [f64; 8] = [0.3, 0.25, 0.2, 0.12, 0.08, 0.05, 0.015, 0.005];
                let sizes = if self.p.max_gang_replicas > 64 { 8 } else { 6 };
                let replicas = SIZES[pick_weighted(&mut self.rng, &WEIGHTS[..sizes])];
                let mut g = self.group(replicas.min(self.max_gang), self.node_accel);
                if self.hopper_majority && self.rng.gen_bool(0.2) {
                    g.models = vec!["nvidia-hopper".into()];
                }
                constraints.topology = match self.uniform() {
                    u if u < 0.25 => Some(TopologyConstraint {
                        level: TopologyLevel::ScaleUpDomain,
                        mode: TopologyMode::Preferred,
                    }),
                    u if u < 0.40 => Some(TopologyConstraint {
                        level: TopologyLevel::Site,
                        mode: TopologyMode::Required,
                    }),
                    _ => None,
                };
                (g, 3.0)
            }
        };
        let mut group = group;
        // A gang that must stay in one site fits the largest site's nodes of its models.
        if constraints
            .topology
            .is_some_and(|t| t.level == TopologyLevel::Site && t.mode == TopologyMode::Required)
        {
            let most = (0..self.sites.len())
                .map(|s| self.nodes_for(s, &group))
                .max()
                .unwrap_or(0);
            group.replicas = group.replicas.min(most.max(1));
        }
        // Keep the job within what its tenant may ever hold: shrink a gang, and where even
        // a pair of nodes is too much, ask for one node.
        let models = match group.models.first().map(String::as_str) {
            None => &self.all_models,
            Some("nvidia-hopper") => &self.hopper,
            Some(_) => &group.models,
        };
        let max_milli = self.tenants[t].max_milli(models, preemptible);
        let per_replica = group.accelerators.unwrap_or(0) * 1000;
        if per_replica > 0 && group.replicas * per_replica > max_milli {
            group.replicas = (max_milli / per_replica).max(1);
        }
        if group.replicas <= 1 {
            group.replicas = 1;
            constraints.topology = None;
        }
        if group.replicas == 1 && self.rng.gen_bool(0.05) && !self.sites.is_empty() {
            // Pin to a site that has the job's models (the same single draw either way, so
            // the stream stays aligned).
            let fits: Vec<usize> = (0..self.sites.len())
                .filter(|&s| self.nodes_for(s, &group) > 0)
                .collect();
            let k = self.rng.gen_range(0..self.sites.len());
            if !fits.is_empty() {
                constraints.sites = vec![self.sites[fits[k % fits.len()]].clone()];
            }
        }
        let duration_s = self.duration(self.p.median_duration_s as f64 * median);
        // Users overestimate: most give an estimate of 1–3× the real runtime, half of those
        // a limit of twice the estimate; some give only a limit, some nothing.
        let (estimate, limit) = match self.uniform() {
            u if u < 0.75 => {
                let e = (duration_s as f64 * self.rng.gen_range(1.0..3.0)) as u64;
                let e = e.clamp(1, MAX_RUNTIME_S / 2);
                (Some(e), self.rng.gen_bool(0.5).then_some(e * 2))
            }
            u if u < 0.85 => {
                let l = (duration_s as f64 * self.rng.gen_range(1.5..4.0)) as u64;
                (None, Some(l.clamp(1, MAX_RUNTIME_S)))
            }
            _ => (None, None),
        };
        let spec = JobSpec {
            name: None,
            groups: vec![group],
            priority,
            preemptible,
            runtime_estimate_s: estimate,
            runtime_limit_s: limit,
            max_retries: None,
            on_task_failure: Default::default(),
            constraints,
        };
        Some(SyntheticJob {
            tenant: self.tenants[t].name.clone(),
            submit_s,
            duration_s,
            spec,
        })
    }
}

impl Iterator for WorkloadGen {
    type Item = SyntheticJob;
    fn next(&mut self) -> Option<SyntheticJob> {
        self.next_job()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::highway::{HighwayParams, highway};

    fn small() -> ClusterSpec {
        highway(
            &HighwayParams {
                nodes: 400,
                ..HighwayParams::default()
            },
            11,
        )
    }

    #[test]
    fn the_same_seed_gives_the_same_jobs_and_another_seed_others() {
        let c = small();
        let p = WorkloadParams {
            jobs: 500,
            ..WorkloadParams::default()
        };
        assert_eq!(workload(&p, &c, 4), workload(&p, &c, 4));
        assert_ne!(workload(&p, &c, 4), workload(&p, &c, 5));
        assert_eq!(workload(&p, &c, 4).len(), 500);
    }

    #[test]
    fn the_mix_contains_every_kind_and_mostly_single_node_jobs() {
        let jobs = workload(
            &WorkloadParams {
                jobs: 2000,
                ..WorkloadParams::default()
            },
            &small(),
            1,
        );
        let count = |k| jobs.iter().filter(|j| j.kind() == k).count();
        let (f, s, g) = (
            count(JobKind::Fractional),
            count(JobKind::Single),
            count(JobKind::Gang),
        );
        assert!(
            f > 300 && s > 1000 && g > 50,
            "fractional {f}, single {s}, gang {g}"
        );
        let milli: Vec<u64> = jobs
            .iter()
            .filter_map(|j| j.spec.groups[0].accelerator_milli)
            .collect();
        assert!(milli.contains(&250) && milli.contains(&500));
        for k in [1, 2, 4, 8] {
            assert!(
                jobs.iter().any(
                    |j| j.kind() == JobKind::Single && j.spec.groups[0].accelerators == Some(k)
                )
            );
        }
        let gangs: Vec<&SyntheticJob> = jobs.iter().filter(|j| j.kind() == JobKind::Gang).collect();
        assert!(
            gangs
                .iter()
                .all(|j| j.spec.groups[0].accelerators == Some(8))
        );
        assert!(
            gangs
                .iter()
                .all(|j| (2..=64).contains(&j.spec.groups[0].replicas))
        );
        let topo = |l| {
            gangs
                .iter()
                .any(|j| j.spec.constraints.topology.is_some_and(|t| t.level == l))
        };
        assert!(topo(TopologyLevel::ScaleUpDomain) && topo(TopologyLevel::Site));
        let prio = |p| jobs.iter().any(|j| j.spec.priority == p);
        assert!(prio(Some(PriorityClass::Low)) && prio(Some(PriorityClass::High)) && prio(None));
        let preemptible = jobs.iter().filter(|j| j.spec.preemptible).count();
        assert!(preemptible > 1600 && preemptible < 2000);
        assert!(jobs.iter().any(|j| j.spec.runtime_estimate_s.is_some()));
        assert!(jobs.iter().any(|j| j.spec.runtime_limit_s.is_some()));
    }

    #[test]
    fn gangs_above_64_nodes_only_when_the_stream_allows_them() {
        // Six sites of 3,000 nodes: room for 256-node gangs.
        let c = highway(
            &HighwayParams {
                sites: 6,
                nodes: 18_000,
                ..HighwayParams::default()
            },
            3,
        );
        let largest = |max_gang_replicas| {
            let p = WorkloadParams {
                jobs: 20_000,
                max_gang_replicas,
                ..WorkloadParams::default()
            };
            workload(&p, &c, 7)
                .iter()
                .filter(|j| j.kind() == JobKind::Gang)
                .map(|j| j.spec.groups[0].replicas)
                .max()
                .unwrap_or(0)
        };
        assert_eq!(largest(64), 64);
        assert_eq!(largest(256), 256);
    }

    #[test]
    fn every_job_is_valid_and_arrives_in_order() {
        let jobs = workload(
            &WorkloadParams {
                jobs: 3000,
                ..WorkloadParams::default()
            },
            &small(),
            2,
        );
        for j in &jobs {
            j.spec.validate().unwrap();
            assert!(j.duration_s >= 60);
        }
        assert!(jobs.windows(2).all(|w| w[0].submit_s <= w[1].submit_s));
        // Poisson at 0.1/s: 3000 jobs take about 30,000 s.
        let last = jobs.last().unwrap().submit_s;
        assert!((25_000..35_000).contains(&last), "{last}");
        let mut durations: Vec<u64> = jobs
            .iter()
            .filter(|j| j.kind() == JobKind::Single)
            .map(|j| j.duration_s)
            .collect();
        durations.sort_unstable();
        let median = durations[durations.len() / 2];
        assert!(
            (2400..5400).contains(&median),
            "median single-node runtime {median} s"
        );
    }

    #[test]
    fn jobs_stay_within_what_their_tenant_may_hold() {
        // On a tiny highway the quota tenant's limit is a couple of nodes: gangs shrink.
        let c = highway(
            &HighwayParams {
                nodes: 12,
                sites: 1,
                ..HighwayParams::default()
            },
            1,
        );
        let jobs = workload(
            &WorkloadParams {
                jobs: 2000,
                gang_weight: 1.0,
                ..WorkloadParams::default()
            },
            &c,
            3,
        );
        for j in jobs.iter().filter(|j| j.tenant == "kisti-hpc") {
            assert!(j.spec.total_accelerator_milli() <= 16_000, "{:?}", j.spec);
        }
        assert!(jobs.iter().all(|j| j.spec.groups[0].replicas <= 6));
    }

    #[test]
    fn a_highway_without_tenants_gives_no_jobs() {
        let mut c = small();
        c.tenant.clear();
        assert!(workload(&WorkloadParams::default(), &c, 1).is_empty());
    }
}

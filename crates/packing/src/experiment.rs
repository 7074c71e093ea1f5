//! The arrival-only packing experiment of FGD (ATC '23), as `PROTOCOL.md` of the openb trace
//! describes it.
//!
//! For one seed: sort the pods by name, shuffle them, then inflate (or shrink) the list to
//! `tune_ratio` times the cluster's GPU capacity by sampling pods with replacement and appending
//! them; then place the pods one at a time — no pod ever leaves, a pod that fits nowhere is
//! dropped — and after every pod record the allocated and fragmented GPU share against the
//! arrived GPU demand. The curves are binned by `x = round(arrived / capacity * 100)` and each
//! bin holds the mean of its samples, as the published analysis scripts do.
//!
//! Every pod is placed by the engine (`gosok_engine`, see [`crate::engine_run`]): submitted as
//! a job, one scheduling pass, its decision read back; the engine's seed is the run's seed, so
//! its tie-break among equally scored nodes is a random node order per seed, as the published
//! simulator's. The arrival order comes from a ChaCha8 stream seeded with the seed, so every
//! policy sees the same arrivals for the same seed. The same seed gives the same result, bit
//! for bit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gosok_engine::fragmentation::{FragTarget, TypicalShape, popular};
use gosok_engine::ids::ModelSet;
use gosok_engine::job::AccelReq;
use gosok_model::JobSpec;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;

use crate::engine_run::{EngineCluster, EngineInputError, arrive};
use crate::model::{Cluster, Demand, PodSpec, Workload};
use crate::policy::PolicyKind;

/// FGD's typical pods: the most popular shapes covering this share of the pods (the
/// fragmentation curve is measured against them, as the published analysis does).
pub const FGD_POPULARITY: f64 = 0.95;

/// The inflation of the published experiment: 130 % of the cluster's GPUs.
pub const DEFAULT_TUNE_RATIO: f64 = 1.3;

/// The published seeds.
pub const PUBLISHED_SEEDS: std::ops::RangeInclusive<u64> = 42..=51;

/// Bins of arrived workload kept, in percent of GPU capacity (0..=MAX_X_PCT).
pub const MAX_X_PCT: usize = 200;

/// A workload prepared once and shared by all runs on it.
#[derive(Debug)]
pub struct Prepared {
    pub cluster: Arc<Cluster>,
    pub workload: Arc<Workload>,
    /// Pod indices sorted by pod name (the simulator's order before shuffling).
    by_name: Vec<u32>,
    /// The cluster as the engine sees it.
    pub engine: EngineCluster,
    /// Each pod as the job it is submitted as.
    jobs: Vec<JobSpec>,
    /// FGD's typical pods of the whole workload, for the fragmentation curve.
    pub typical: FragTarget,
}

impl Prepared {
    pub fn new(
        cluster: Arc<Cluster>,
        workload: Arc<Workload>,
    ) -> Result<Prepared, EngineInputError> {
        let mut by_name: Vec<u32> = (0..workload.pods.len() as u32).collect();
        by_name.sort_by(|&a, &b| {
            workload.pods[a as usize]
                .name
                .cmp(&workload.pods[b as usize].name)
        });
        let engine = EngineCluster::new(&cluster)?;
        let jobs = workload
            .pods
            .iter()
            .map(|p| engine.job(&cluster, p))
            .collect();
        let typical = typical_shapes(&engine, &cluster, &workload.pods);
        Ok(Prepared {
            cluster,
            workload,
            by_name,
            engine,
            jobs,
            typical,
        })
    }

    /// The pods in the order they arrive for `seed`: shuffled, then inflated or shrunk to
    /// `tune_ratio` times the cluster's GPU capacity.
    pub fn arrival_order(&self, tune_ratio: f64, seed: u64) -> Vec<u32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order = self.by_name.clone();
        order.shuffle(&mut rng);
        if tune_ratio <= 0.0 || order.is_empty() {
            return order;
        }
        let pods = &self.workload.pods;
        let target = tune_ratio * self.cluster.total_gpu_milli() as f64;
        let mut total: u64 = self.workload.total_gpu_milli();
        if (total as f64) < target {
            // Append pods sampled with replacement (from the name-sorted list) until the next
            // one would pass the target. The simulator's stop test adds the sampled pod's
            // per-GPU amount, not its total; we keep that quirk so that the arrivals match.
            let mut guard = 0usize;
            loop {
                let pick = self.by_name[rng.gen_range(0..self.by_name.len())];
                let d = pods[pick as usize].demand;
                if (total + u64::from(d.gpu_milli)) as f64 > target {
                    break;
                }
                total += u64::from(d.total_gpu_milli());
                order.push(pick);
                // A workload of CPU-only pods never reaches a GPU target; stop at a bound far
                // above any real inflation rather than loop forever.
                guard += 1;
                if guard > 100 * pods.len() + 1_000_000 {
                    break;
                }
            }
        } else {
            // Remove pods at random until the total is within the target.
            while total as f64 > target && !order.is_empty() {
                let i = rng.gen_range(0..order.len());
                let removed = order.remove(i);
                total -= u64::from(pods[removed as usize].demand.total_gpu_milli());
            }
        }
        order
    }
}

/// The engine's view of a pod's shape.
fn shape_of(engine: &EngineCluster, cluster: &Cluster, d: &Demand) -> TypicalShape {
    let n_models = engine.catalog.len();
    let accel = if !d.wants_gpu() {
        AccelReq::None
    } else if d.is_shared_gpu() {
        AccelReq::Milli(d.gpu_milli)
    } else {
        AccelReq::Whole(u16::from(d.gpu_count))
    };
    let models = if accel == AccelReq::None {
        ModelSet::default()
    } else if d.models.is_any() {
        ModelSet::all(n_models)
    } else {
        let mut set = ModelSet::default();
        for (i, name) in cluster.models.names().iter().enumerate() {
            if d.models.0 & (1 << i) != 0
                && let Some(id) = engine.catalog.id(name)
            {
                set = set.with(id);
            }
        }
        set
    };
    TypicalShape {
        accel,
        cpu_milli: u64::from(d.cpu_milli),
        models,
    }
}

/// FGD's typical pods of `pods`, in the engine's terms.
fn typical_shapes(engine: &EngineCluster, cluster: &Cluster, pods: &[PodSpec]) -> FragTarget {
    let mut counts: std::collections::BTreeMap<TypicalShape, f64> = Default::default();
    for p in pods {
        *counts
            .entry(shape_of(engine, cluster, &p.demand))
            .or_default() += 1.0;
    }
    let counts: Vec<(TypicalShape, f64)> = counts.into_iter().collect();
    FragTarget::new(&popular(&counts, FGD_POPULARITY), engine.catalog.len())
}

/// One run: one policy, one seed.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub policy: PolicyKind,
    pub seed: u64,
    pub arrived_pods: u64,
    pub failed_pods: u64,
    pub arrived_gpu_milli: u64,
    pub allocated_gpu_milli: u64,
    /// Allocated GPU share (% of capacity) by arrived workload x = 0..=MAX_X_PCT (% of
    /// capacity); `None` where no sample fell within one point of x.
    pub allocated_pct: Vec<Option<f64>>,
    /// Fragmented GPU share (% of capacity) against FGD's typical pods, binned the same way.
    pub frag_pct: Vec<Option<f64>>,
}

impl RunResult {
    /// Unallocated GPU share at x (100 − allocated).
    pub fn unallocated_pct(&self, x: usize) -> Option<f64> {
        self.allocated_pct
            .get(x)
            .copied()
            .flatten()
            .map(|a| 100.0 - a)
    }
}

/// A failure of a run: the engine refused the cluster or an event.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy {policy}, seed {seed}: {source}")]
pub struct RunError {
    pub policy: PolicyKind,
    pub seed: u64,
    #[source]
    pub source: EngineInputError,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bin {
    allocated_sum: f64,
    frag_sum: f64,
    samples: u32,
}

/// Rounds half to even, as Python's `round` does in the published analysis.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// How a run places: which policy, and how many feasible nodes the engine scores per pod
/// (`None`: all of them, as the published experiment's scheduler does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSpec {
    pub policy: PolicyKind,
    pub candidates: Option<usize>,
}

impl From<PolicyKind> for RunSpec {
    fn from(policy: PolicyKind) -> RunSpec {
        RunSpec {
            policy,
            candidates: None,
        }
    }
}

/// Runs `spec` on `prepared` for `seed`.
pub fn run(
    prepared: &Prepared,
    spec: impl Into<RunSpec>,
    seed: u64,
    tune_ratio: f64,
) -> Result<RunResult, RunError> {
    run_observed(prepared, spec.into(), seed, tune_ratio, &mut |_| {})
}

/// What happened to one arriving pod, for observers of a run.
#[derive(Clone, Copy)]
pub struct Arrival<'a> {
    pub pod: &'a PodSpec,
    /// The node it went to; `None` when it fit nowhere.
    pub node: Option<usize>,
    /// Arrived GPU demand so far, including this pod (milli-GPUs).
    pub arrived_gpu_milli: u64,
    /// The engine after the pod's pass.
    pub engine: &'a gosok_engine::Engine,
}

/// Like [`run`], calling `observe` after every arrival.
pub fn run_observed(
    prepared: &Prepared,
    spec: RunSpec,
    seed: u64,
    tune_ratio: f64,
    observe: &mut dyn FnMut(Arrival<'_>),
) -> Result<RunResult, RunError> {
    let kind = spec.policy;
    let fail = |source| RunError {
        policy: kind,
        seed,
        source,
    };
    let order = prepared.arrival_order(tune_ratio, seed);
    let mut engine = prepared
        .engine
        .engine(kind.scorers(), spec.candidates, seed)
        .map_err(fail)?;
    let typical = &prepared.typical;
    let node_frag = |engine: &gosok_engine::Engine, n: usize| {
        let node = &engine.cluster().nodes[n];
        typical.node_frag_milli(&node.used_milli, node.cpu_free_milli, node.model)
    };
    let mut frags: Vec<f64> = (0..prepared.cluster.nodes.len())
        .map(|n| node_frag(&engine, n))
        .collect();
    let mut frag_total: f64 = frags.iter().sum();
    let capacity = prepared.cluster.total_gpu_milli().max(1) as f64;
    let mut bins = vec![Bin::default(); MAX_X_PCT + 1];
    let mut arrived_gpu_milli = 0u64;
    let mut allocated_gpu_milli = 0u64;
    let mut failed = 0u64;
    for (id, &pi) in order.iter().enumerate() {
        let pod = &prepared.workload.pods[pi as usize];
        arrived_gpu_milli += u64::from(pod.demand.total_gpu_milli());
        let job = prepared.jobs[pi as usize].clone();
        let placed = arrive(&mut engine, &prepared.engine, id as u64, job).map_err(fail)?;
        match placed {
            Some((n, _)) => {
                allocated_gpu_milli += u64::from(pod.demand.total_gpu_milli());
                frag_total -= frags[n];
                frags[n] = node_frag(&engine, n);
                frag_total += frags[n];
            }
            None => failed += 1,
        }
        observe(Arrival {
            pod,
            node: placed.map(|(n, _)| n),
            arrived_gpu_milli,
            engine: &engine,
        });
        let x = round_half_even(arrived_gpu_milli as f64 / capacity * 100.0);
        if x >= 0.0 && (x as usize) <= MAX_X_PCT {
            let bin = &mut bins[x as usize];
            bin.allocated_sum += 100.0 * allocated_gpu_milli as f64 / capacity;
            bin.frag_sum += 100.0 * frag_total.max(0.0) / capacity;
            bin.samples += 1;
        }
    }
    let (allocated_pct, frag_pct) = finish_bins(&bins);
    Ok(RunResult {
        policy: kind,
        seed,
        arrived_pods: order.len() as u64,
        failed_pods: failed,
        arrived_gpu_milli,
        allocated_gpu_milli,
        allocated_pct,
        frag_pct,
    })
}

/// Bin means; an empty bin takes the mean of its neighbours' samples (the published scripts'
/// fallback), and stays empty when they are empty too.
fn finish_bins(bins: &[Bin]) -> (Vec<Option<f64>>, Vec<Option<f64>>) {
    let mut allocated = Vec::with_capacity(bins.len());
    let mut frag = Vec::with_capacity(bins.len());
    for (i, b) in bins.iter().enumerate() {
        let (mut a, mut f, mut n) = (b.allocated_sum, b.frag_sum, b.samples);
        if n == 0 {
            for j in [i.wrapping_sub(1), i + 1] {
                if let Some(nb) = bins.get(j) {
                    a += nb.allocated_sum;
                    f += nb.frag_sum;
                    n += nb.samples;
                }
            }
        }
        if n == 0 {
            allocated.push(None);
            frag.push(None);
        } else {
            allocated.push(Some(a / f64::from(n)));
            frag.push(Some(f / f64::from(n)));
        }
    }
    (allocated, frag)
}

/// Runs every (policy, seed) pair on `threads` threads; results come back in the order of
/// `policies` × `seeds`. `progress` is called with (runs done, runs in all) after each run.
pub fn run_many(
    prepared: &Prepared,
    policies: &[RunSpec],
    seeds: &[u64],
    tune_ratio: f64,
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<RunResult>, RunError> {
    let jobs: Vec<(RunSpec, u64)> = policies
        .iter()
        .flat_map(|&p| seeds.iter().map(move |&s| (p, s)))
        .collect();
    run_jobs(&jobs, threads, progress, |&(p, s)| {
        run(prepared, p, s, tune_ratio)
    })
}

/// Runs `jobs` on `threads` threads (at least one), keeping the jobs' order in the results.
pub fn run_jobs<J: Sync, R: Send, E: Send>(
    jobs: &[J],
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
    work: impl Fn(&J) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let threads = threads.clamp(1, jobs.len().max(1));
    let mut slots: Vec<Option<Result<R, E>>> = Vec::with_capacity(jobs.len());
    slots.resize_with(jobs.len(), || None);
    let chunks: Vec<Vec<(usize, Result<R, E>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        out.push((i, work(job)));
                        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                        progress(d, jobs.len());
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (i, r) in chunks.into_iter().flatten() {
        slots[i] = Some(r);
    }
    let mut results = Vec::with_capacity(jobs.len());
    for slot in slots {
        match slot {
            Some(Ok(r)) => results.push(r),
            Some(Err(e)) => return Err(e),
            // Only a panicking worker leaves a slot empty; its panic already printed.
            None => continue,
        }
    }
    Ok(results)
}

/// The machine's available parallelism (1 when unknown).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GpuModels, ModelMask, NodeSpec, PodSpec};

    fn tiny() -> Prepared {
        let mut models = GpuModels::default();
        let t4 = models.intern("T4").unwrap();
        let cluster = Cluster {
            models,
            nodes: (0..4)
                .map(|i| NodeSpec {
                    name: format!("n{i}"),
                    cpu_milli: 32000,
                    memory_mib: 65536,
                    gpu_count: 2,
                    model: Some(t4),
                })
                .collect(),
            skipped_rows: vec![],
        };
        let shapes = [
            (4000, 500, 1),
            (8000, 1000, 1),
            (2000, 0, 0),
            (1000, 250, 1),
        ];
        let pods = (0..20)
            .map(|i| {
                let (cpu, milli, count) = shapes[i % shapes.len()];
                PodSpec {
                    name: format!("p{i:02}"),
                    memory_mib: 1024,
                    demand: Demand {
                        cpu_milli: cpu,
                        gpu_milli: milli,
                        gpu_count: count,
                        models: ModelMask::ANY,
                    },
                }
            })
            .collect();
        let workload = Workload {
            name: "tiny".into(),
            pods,
            skipped_rows: vec![],
        };
        Prepared::new(Arc::new(cluster), Arc::new(workload)).unwrap()
    }

    #[test]
    fn arrival_order_is_a_shuffle_then_inflation_and_is_deterministic() {
        let p = tiny();
        let a = p.arrival_order(1.3, 42);
        assert_eq!(a, p.arrival_order(1.3, 42));
        assert_ne!(a, p.arrival_order(1.3, 43));
        // The first 20 arrivals are every pod once, shuffled.
        let mut head = a[..20].to_vec();
        assert_ne!(head, (0..20).collect::<Vec<u32>>());
        head.sort_unstable();
        assert_eq!(head, (0..20).collect::<Vec<u32>>());
        // Inflated to about 130 % of the 8 GPUs: total within one pod of 10.4 GPUs.
        let total: u64 = a
            .iter()
            .map(|&i| u64::from(p.workload.pods[i as usize].demand.total_gpu_milli()))
            .sum();
        assert!(total as f64 <= 10_400.0 && total >= 9_400, "{total}");
    }

    #[test]
    fn shrinking_removes_pods_until_within_target() {
        let p = tiny();
        let a = p.arrival_order(0.5, 7);
        let total: u64 = a
            .iter()
            .map(|&i| u64::from(p.workload.pods[i as usize].demand.total_gpu_milli()))
            .sum();
        assert!(total <= 4000 && a.len() < 20, "{total} {}", a.len());
    }

    #[test]
    fn runs_are_deterministic_and_record_every_bin_up_to_the_end() {
        let p = tiny();
        for kind in PolicyKind::ALL {
            let a = run(&p, kind, 42, 1.3).unwrap();
            let b = run(&p, kind, 42, 1.3).unwrap();
            assert_eq!(a.allocated_pct, b.allocated_pct, "{kind}");
            assert_eq!(a.failed_pods, b.failed_pods);
            assert!(a.allocated_gpu_milli <= 8000);
            let last = (a.arrived_gpu_milli as f64 / 80.0).round() as usize;
            assert!(a.allocated_pct[last].is_some(), "{kind}");
            assert!(a.allocated_pct[last + 2].is_none());
        }
    }

    #[test]
    fn observers_see_every_arrival_and_the_books_add_up() {
        let p = tiny();
        let mut seen = 0u64;
        let mut placed_milli = 0u64;
        let mut engine_milli = 0u64;
        let r = run_observed(&p, PolicyKind::Gosok.into(), 3, 1.3, &mut |a| {
            seen += 1;
            if a.node.is_some() {
                placed_milli += u64::from(a.pod.demand.total_gpu_milli());
            }
            engine_milli = a
                .engine
                .cluster()
                .nodes
                .iter()
                .map(|n| n.used_total_milli())
                .sum();
            // What the engine holds is what the run counted as placed.
            assert_eq!(engine_milli, placed_milli);
        })
        .unwrap();
        assert_eq!(seen, r.arrived_pods);
        assert_eq!(r.allocated_gpu_milli, placed_milli);
        assert!(r.failed_pods > 0, "130 % of the GPUs cannot all be placed");
    }

    #[test]
    fn a_bounded_candidate_search_is_a_run_of_its_own() {
        let p = tiny();
        let spec = RunSpec {
            policy: PolicyKind::Gosok,
            candidates: Some(1),
        };
        let a = run(&p, spec, 5, 1.3).unwrap();
        assert_eq!(
            a.allocated_pct,
            run(&p, spec, 5, 1.3).unwrap().allocated_pct
        );
    }

    #[test]
    fn run_many_keeps_the_job_order() {
        let p = tiny();
        let r = run_many(
            &p,
            &[PolicyKind::Fgd.into(), PolicyKind::Random.into()],
            &[1, 2, 3],
            1.3,
            3,
            &|_, _| {},
        )
        .unwrap();
        let got: Vec<_> = r.iter().map(|r| (r.policy, r.seed)).collect();
        assert_eq!(got[0], (PolicyKind::Fgd, 1));
        assert_eq!(got[5], (PolicyKind::Random, 3));
    }

    #[test]
    fn half_even_rounding() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(3.49), 3.0);
    }
}

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
//! Randomness: the arrival order comes from a ChaCha8 stream seeded with the seed, so every
//! policy sees the same arrivals for the same seed; so does the node order that breaks ties
//! (stream 2, see [`crate::policy`]). Random choices of the policies (the Random policy's node
//! and GPU) come from stream 1. The same seed gives the same result, bit for bit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;

use crate::frag::{FGD_POPULARITY_PCT, TypicalPods};
use crate::model::{Cluster, Demand, Workload};
use crate::policy::{
    BestFit, Clustering, DotProd, Fgd, Gosok, GosokModel, NodeChoice, Packing, PodView, Policy,
    PolicyKind, RandomPolicy,
};
use crate::state::{ClusterState, PlaceError};

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
    /// The shape id of each pod (equal demands share a shape).
    shapes: Vec<u32>,
    shape_count: usize,
    /// FGD's target workload: the simulator's typical pods (95 % popularity cut).
    pub typical: Arc<TypicalPods>,
    /// What gosok's policy knows of the workload (every shape by popularity, CPU per GPU,
    /// GPU-type pressure).
    pub gosok: Arc<GosokModel>,
}

impl Prepared {
    pub fn new(cluster: Arc<Cluster>, workload: Arc<Workload>) -> Prepared {
        let mut by_name: Vec<u32> = (0..workload.pods.len() as u32).collect();
        by_name.sort_by(|&a, &b| {
            workload.pods[a as usize]
                .name
                .cmp(&workload.pods[b as usize].name)
        });
        let mut ids: std::collections::HashMap<Demand, u32> = std::collections::HashMap::new();
        let shapes = workload
            .pods
            .iter()
            .map(|p| {
                let next = ids.len() as u32;
                *ids.entry(p.demand).or_insert(next)
            })
            .collect();
        let typical = Arc::new(TypicalPods::popular(
            &workload.pods,
            &cluster.models,
            FGD_POPULARITY_PCT,
        ));
        let all_shapes = Arc::new(TypicalPods::all_shapes(&workload.pods, &cluster.models));
        let gosok = Arc::new(GosokModel::new(all_shapes, &cluster));
        Prepared {
            cluster,
            workload,
            by_name,
            shapes,
            shape_count: ids.len(),
            typical,
            gosok,
        }
    }

    /// A fresh policy of `kind` for this workload.
    pub fn policy(&self, kind: PolicyKind) -> Box<dyn Policy> {
        match kind {
            PolicyKind::Random => Box::new(RandomPolicy),
            PolicyKind::DotProd => Box::new(DotProd),
            PolicyKind::Clustering => Box::new(Clustering),
            PolicyKind::Packing => Box::new(Packing),
            PolicyKind::BestFit => Box::new(BestFit),
            PolicyKind::Fgd => Box::new(Fgd::new(self.typical.clone())),
            PolicyKind::Gosok => Box::new(Gosok::new(self.gosok.clone())),
        }
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

    pub fn shape_count(&self) -> usize {
        self.shape_count
    }

    /// The node order that breaks ties for `seed`: a uniformly random permutation of the nodes
    /// (the simulator prefixes node names with a random permutation index and takes the smallest
    /// name among equal scores).
    pub fn tie_order(&self, seed: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(2);
        let mut order: Vec<usize> = (0..self.cluster.nodes.len()).collect();
        order.shuffle(&mut rng);
        order
    }
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

/// A failure of a run: a policy chose GPUs that the node does not have.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy {policy}, seed {seed}: {source}")]
pub struct RunError {
    pub policy: PolicyKind,
    pub seed: u64,
    #[source]
    pub source: PlaceError,
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

/// Runs `kind` on `prepared` for `seed`.
pub fn run(
    prepared: &Prepared,
    kind: PolicyKind,
    seed: u64,
    tune_ratio: f64,
) -> Result<RunResult, RunError> {
    run_to_state(prepared, kind, seed, tune_ratio).map(|(r, _)| r)
}

/// Runs `kind` on `prepared` for `seed` and also returns the cluster as the last pod left it.
pub fn run_to_state(
    prepared: &Prepared,
    kind: PolicyKind,
    seed: u64,
    tune_ratio: f64,
) -> Result<(RunResult, ClusterState), RunError> {
    run_observed(prepared, kind, seed, tune_ratio, &mut |_| {})
}

/// What happened to one arriving pod, for observers of a run.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub pod: &'a crate::model::PodSpec,
    /// The node it went to; `None` when it fit nowhere.
    pub node: Option<usize>,
    /// Arrived GPU demand so far, including this pod (milli-GPUs).
    pub arrived_gpu_milli: u64,
    pub state: &'a ClusterState,
}

/// Like [`run_to_state`], calling `observe` after every arrival.
pub fn run_observed(
    prepared: &Prepared,
    kind: PolicyKind,
    seed: u64,
    tune_ratio: f64,
    observe: &mut dyn FnMut(Arrival<'_>),
) -> Result<(RunResult, ClusterState), RunError> {
    let order = prepared.arrival_order(tune_ratio, seed);
    let node_order = prepared.tie_order(seed);
    let mut policy = prepared.policy(kind);
    let choice = policy.node_choice();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1);
    let mut state = ClusterState::new(&prepared.cluster);
    policy.start(&state, prepared.shape_count());
    let typical = &prepared.typical;
    let mut node_frag: Vec<f64> = state
        .nodes
        .iter()
        .map(|n| typical.node_frag_milli(n.cpu_left, n.gpus(), n.model))
        .collect();
    let mut frag_total: f64 = node_frag.iter().sum();
    let capacity = state.total_gpu_milli.max(1) as f64;
    let mut bins = vec![Bin::default(); MAX_X_PCT + 1];
    let mut fitting: Vec<usize> = Vec::with_capacity(state.nodes.len());
    let mut arrived_gpu_milli = 0u64;
    let mut failed = 0u64;
    for &pi in &order {
        let pod = &prepared.workload.pods[pi as usize];
        let view = PodView {
            demand: pod.demand,
            shape: prepared.shapes[pi as usize],
        };
        arrived_gpu_milli += u64::from(pod.demand.total_gpu_milli());
        let chosen = match choice {
            NodeChoice::BestScore => {
                let mut best: Option<(f64, usize)> = None;
                for &n in &node_order {
                    if !state.nodes[n].fits(&pod.demand, pod.memory_mib) {
                        continue;
                    }
                    let s = policy.score(&state, n, &view);
                    // Strictly greater: the first node in the tie order keeps a tie. A NaN
                    // score never wins.
                    if best.is_none_or(|(b, _)| s > b) && !s.is_nan() {
                        best = Some((s, n));
                    }
                }
                best.map(|(_, n)| n)
            }
            NodeChoice::Uniform => {
                fitting.clear();
                fitting.extend(
                    (0..state.nodes.len())
                        .filter(|&n| state.nodes[n].fits(&pod.demand, pod.memory_mib)),
                );
                match fitting.len() {
                    0 => None,
                    len => Some(fitting[rng.gen_range(0..len)]),
                }
            }
        };
        let placed =
            chosen.and_then(|n| policy.pick_gpus(&state, n, &view, &mut rng).map(|g| (n, g)));
        match placed {
            Some((n, gpus)) => {
                state
                    .place(n, &pod.demand, pod.memory_mib, gpus)
                    .map_err(|source| RunError {
                        policy: kind,
                        seed,
                        source,
                    })?;
                let node = &state.nodes[n];
                frag_total -= node_frag[n];
                node_frag[n] = typical.node_frag_milli(node.cpu_left, node.gpus(), node.model);
                frag_total += node_frag[n];
            }
            None => failed += 1,
        }
        observe(Arrival {
            pod,
            node: placed.map(|(n, _)| n),
            arrived_gpu_milli,
            state: &state,
        });
        let x = round_half_even(arrived_gpu_milli as f64 / capacity * 100.0);
        if x >= 0.0 && (x as usize) <= MAX_X_PCT {
            let bin = &mut bins[x as usize];
            bin.allocated_sum += state.allocated_gpu_pct();
            bin.frag_sum += 100.0 * frag_total.max(0.0) / capacity;
            bin.samples += 1;
        }
    }
    let (allocated_pct, frag_pct) = finish_bins(&bins);
    let result = RunResult {
        policy: kind,
        seed,
        arrived_pods: order.len() as u64,
        failed_pods: failed,
        arrived_gpu_milli,
        allocated_gpu_milli: state.used_gpu_milli,
        allocated_pct,
        frag_pct,
    };
    Ok((result, state))
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
    policies: &[PolicyKind],
    seeds: &[u64],
    tune_ratio: f64,
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<RunResult>, RunError> {
    let jobs: Vec<(PolicyKind, u64)> = policies
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
        Prepared::new(Arc::new(cluster), Arc::new(workload))
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
        let (r, state) = run_observed(&p, PolicyKind::Gosok, 3, 1.3, &mut |a| {
            seen += 1;
            if a.node.is_some() {
                placed_milli += u64::from(a.pod.demand.total_gpu_milli());
            }
        })
        .unwrap();
        assert_eq!(seen, r.arrived_pods);
        assert_eq!(placed_milli, state.used_gpu_milli);
        assert_eq!(r.allocated_gpu_milli, state.used_gpu_milli);
    }

    #[test]
    fn run_many_keeps_the_job_order() {
        let p = tiny();
        let r = run_many(
            &p,
            &[PolicyKind::Fgd, PolicyKind::Random],
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

//! FGD: Fragmentation Gradient Descent (Weng et al., ATC '23), as the simulator implements it
//! (`-gpusel FGD -dimext share -norm max`).
//!
//! For each node the pod fits, FGD computes how much the node's expected fragmentation (against
//! the typical pods, see [`crate::frag`]) grows if the pod lands there, and scores
//! `int(100 * sigmoid((frag_before - frag_after) / 1000))`: the less fragmentation grows, the
//! higher. A shared-GPU pod is tried on every GPU that holds it and the node takes the best
//! GPU's score; the pod then goes on the first GPU (by index) with that score. Whole-GPU pods
//! take the first free GPUs.
//!
//! The score is an integer, as kube-scheduler requires, so different fragmentation changes often
//! share a score; the runner's random tie-break is part of what FGD does in the experiment.
//!
//! Speed: the score depends only on the node's state and the pod's shape, so it is cached per
//! (shape, node) and recomputed only when the node has changed since.

use std::sync::Arc;

use rand_chacha::ChaCha8Rng;

use super::{MAX_NODE_SCORE, PodView, Policy, go_int};
use crate::frag::TypicalPods;
use crate::model::{Demand, MAX_GPUS_PER_NODE, MILLI_PER_GPU};
use crate::state::{ClusterState, GpuSet, NodeState};

/// Per-(shape, node) score cache: an entry is valid while its stamp equals the node's version
/// plus one (0 marks an empty entry).
#[derive(Debug, Default)]
pub(crate) struct ScoreCache {
    nodes: usize,
    entries: Vec<(u32, f64)>,
}

impl ScoreCache {
    pub(crate) fn reset(&mut self, nodes: usize, shapes: usize) {
        self.nodes = nodes;
        self.entries.clear();
        self.entries.resize(nodes * shapes.max(1), (0, 0.0));
    }

    #[inline]
    pub(crate) fn get_or_insert_with(
        &mut self,
        shape: u32,
        node: usize,
        version: u32,
        compute: impl FnOnce() -> f64,
    ) -> f64 {
        let index = shape as usize * self.nodes + node;
        if index >= self.entries.len() {
            // A shape the runner did not announce: compute without caching.
            return compute();
        }
        let stamp = version.wrapping_add(1);
        let entry = &mut self.entries[index];
        if entry.0 != stamp {
            *entry = (stamp, compute());
        }
        entry.1
    }
}

/// FGD with the simulator's typical pods.
#[derive(Debug)]
pub struct Fgd {
    typical: Arc<TypicalPods>,
    cache: ScoreCache,
}

impl Fgd {
    pub fn new(typical: Arc<TypicalPods>) -> Fgd {
        Fgd {
            typical,
            cache: ScoreCache::default(),
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// FGD's integer score for a fragmentation change `before - after` (milli-GPUs).
pub fn fgd_score_of_change(reduction_milli: f64) -> f64 {
    go_int(sigmoid(reduction_milli / 1000.0) * MAX_NODE_SCORE as f64)
}

/// The node's GPUs after a pod of `demand` took its GPUs as the simulator's `Sub` does (for a
/// shared pod, use [`after_shared_on`] instead).
pub(crate) fn gpus_after_whole(node: &NodeState, demand: &Demand) -> [u16; MAX_GPUS_PER_NODE] {
    let mut left = node.gpu_left;
    if demand.wants_gpu() {
        let mut need = demand.gpu_count;
        for l in left.iter_mut().take(usize::from(node.gpu_count)) {
            if need == 0 {
                break;
            }
            if u32::from(*l) == MILLI_PER_GPU {
                *l -= demand.gpu_milli;
                need -= 1;
            }
        }
    }
    left
}

/// The node's GPUs after a shared pod of `gpu_milli` took it from GPU `gpu`.
pub(crate) fn after_shared_on(
    node: &NodeState,
    gpu: usize,
    gpu_milli: u16,
) -> [u16; MAX_GPUS_PER_NODE] {
    let mut left = node.gpu_left;
    left[gpu] -= gpu_milli;
    left
}

/// FGD's score of `demand` on `node`, and for a shared pod the GPU it would use.
pub(crate) fn fgd_node_score(
    typical: &TypicalPods,
    node: &NodeState,
    demand: &Demand,
) -> (f64, Option<usize>) {
    let count = usize::from(node.gpu_count);
    let before = typical.node_frag_milli(node.cpu_left, node.gpus(), node.model);
    let cpu_after = node.cpu_left.saturating_sub(demand.cpu_milli);
    if demand.is_shared_gpu() {
        let mut best: Option<(f64, usize)> = None;
        for (i, &l) in node.gpus().iter().enumerate() {
            if l < demand.gpu_milli {
                continue;
            }
            // GPUs with the same amount left give the same result; the first one wins ties.
            if node.gpus()[..i].contains(&l) {
                continue;
            }
            let left = after_shared_on(node, i, demand.gpu_milli);
            let after = typical.node_frag_milli(cpu_after, &left[..count], node.model);
            let s = fgd_score_of_change(before - after);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
        }
        match best {
            Some((s, i)) => (s, Some(i)),
            None => (0.0, None),
        }
    } else {
        let left = gpus_after_whole(node, demand);
        let after = typical.node_frag_milli(cpu_after, &left[..count], node.model);
        (fgd_score_of_change(before - after), None)
    }
}

impl Policy for Fgd {
    fn name(&self) -> &'static str {
        "fgd"
    }

    fn start(&mut self, state: &ClusterState, shapes: usize) {
        self.cache.reset(state.nodes.len(), shapes);
    }

    fn score(&mut self, state: &ClusterState, node: usize, pod: &PodView) -> f64 {
        let n = &state.nodes[node];
        let typical = &self.typical;
        self.cache
            .get_or_insert_with(pod.shape, node, n.version, || {
                fgd_node_score(typical, n, &pod.demand).0
            })
    }

    fn pick_gpus(
        &mut self,
        state: &ClusterState,
        node: usize,
        pod: &PodView,
        _: &mut ChaCha8Rng,
    ) -> Option<GpuSet> {
        let n = &state.nodes[node];
        if pod.demand.is_shared_gpu() {
            fgd_node_score(&self.typical, n, &pod.demand)
                .1
                .map(GpuSet::single)
        } else {
            n.best_fit_gpus(&pod.demand)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frag::TypicalPod;
    use crate::model::ModelMask;
    use crate::policy::testkit::{cluster, pod, use_gpu};
    use rand::SeedableRng;

    fn typical(shapes: &[(u32, u16, u8, f64)]) -> Arc<TypicalPods> {
        Arc::new(TypicalPods::new(
            shapes
                .iter()
                .map(|&(cpu, milli, count, weight)| TypicalPod {
                    demand: Demand {
                        cpu_milli: cpu,
                        gpu_milli: milli,
                        gpu_count: count,
                        models: ModelMask::ANY,
                    },
                    weight,
                })
                .collect(),
            1,
        ))
    }

    #[test]
    fn score_follows_the_fragmentation_change() {
        // Target workload: all pods want 600 m of one GPU.
        let t = typical(&[(1000, 600, 1, 1.0)]);
        let (_, mut s) = cluster(&[(64000, 2), (64000, 2)]);
        use_gpu(&mut s, 1, 0, 1000, 500); // node 1: GPU 0 has 500 m left (a fragment for 600 m)
        let mut p = Fgd::new(t);
        p.start(&s, 1);
        let q = pod(1000, 400, 1);
        // Node 0: 1000 -> 600 left on one GPU, still usable: frag 0 -> 0, score int(50.0) = 50.
        assert_eq!(p.score(&s, 0, &q), 50.0);
        // Node 1: putting 400 m on GPU 0 turns the 500 m fragment into a 100 m one:
        // frag 500 -> 100, sigmoid(0.4) = 0.5987 -> 59.
        assert_eq!(p.score(&s, 1, &q), 59.0);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(p.pick_gpus(&s, 1, &q, &mut rng), Some(GpuSet::single(0)));
        // The cache follows the node: now GPU 0 has 100 m left and only GPU 1 holds 400 m,
        // leaving 600 m there (still usable): no change, 50.
        use_gpu(&mut s, 1, 0, 1000, 400);
        assert_eq!(p.score(&s, 1, &q), 50.0);
    }

    #[test]
    fn score_of_change_matches_the_simulator() {
        assert_eq!(fgd_score_of_change(0.0), 50.0);
        assert_eq!(fgd_score_of_change(-1000.0), 26.0);
        assert_eq!(fgd_score_of_change(2000.0), 88.0);
        assert_eq!(fgd_score_of_change(-1e9), 0.0);
    }

    #[test]
    fn whole_gpu_pods_take_free_gpus_and_cpu_pods_only_cpu() {
        let t = typical(&[(1000, 1000, 1, 0.5), (1000, 0, 0, 0.5)]);
        let (_, s) = cluster(&[(64000, 4)]);
        let n = &s.nodes[0];
        // A CPU pod changes no GPU: the change is 0.
        assert_eq!(fgd_node_score(&t, n, &pod(1000, 0, 0).demand).0, 50.0);
        // Two whole GPUs: idle falls by 2000, half of which was a fragment (for the CPU pods):
        // frag 2000 -> 1000, sigmoid(1) -> 73.
        assert_eq!(fgd_node_score(&t, n, &pod(1000, 1000, 2).demand).0, 73.0);
    }
}

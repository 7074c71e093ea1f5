//! GpuClustering: put pods of the same GPU kind together (`-gpusel best`).
//!
//! A pod's kind is "shared GPU" or "k whole GPUs"; pods without GPUs score 0 everywhere (so
//! they land at random). For a GPU pod, with `used = 25 * (8000 - gpu_left_total) / 8000`
//! (integer arithmetic, as in the simulator):
//! - node hosting only pods of the pod's kind: `75 + used`;
//! - node hosting the pod's kind among others: `50 + used`;
//! - node hosting no GPU pods: `25 + used`;
//! - node hosting only other kinds: `used`.

use rand_chacha::ChaCha8Rng;

use super::{MAX_NODE_SCORE, MAX_SPEC_GPU_MILLI, PodView, Policy};
use crate::state::{AFFINITY_KINDS, ClusterState, GpuSet, NodeState};

#[derive(Debug, Default)]
pub struct Clustering;

/// The simulator's integer GpuClustering score of `pod` on `node`.
pub fn clustering_score(node: &NodeState, pod: &PodView) -> f64 {
    let d = &pod.demand;
    if !d.wants_gpu() {
        return 0.0;
    }
    let kind = if d.is_shared_gpu() {
        0
    } else {
        usize::from(d.gpu_count).min(AFFINITY_KINDS - 1)
    };
    let max_gpu = MAX_SPEC_GPU_MILLI as i64;
    let quarter = MAX_NODE_SCORE / 4;
    let used = quarter * (max_gpu - i64::from(node.gpu_left_total)) / max_gpu;
    let kinds = node.kinds_hosted();
    let base = if node.pods_by_kind[kind] > 0 {
        if kinds == 1 { 3 * quarter } else { 2 * quarter }
    } else if kinds == 0 {
        quarter
    } else {
        0
    };
    (base + used) as f64
}

impl Policy for Clustering {
    fn name(&self) -> &'static str {
        "clustering"
    }

    fn score(&mut self, state: &ClusterState, node: usize, pod: &PodView) -> f64 {
        clustering_score(&state.nodes[node], pod)
    }

    fn pick_gpus(
        &mut self,
        state: &ClusterState,
        node: usize,
        pod: &PodView,
        _: &mut ChaCha8Rng,
    ) -> Option<GpuSet> {
        state.nodes[node].best_fit_gpus(&pod.demand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testkit::{cluster, pod, use_gpu};
    use crate::state::GpuSet;

    #[test]
    fn same_kind_first_then_mixed_then_idle_then_other_kinds() {
        let (_, mut s) = cluster(&[(64000, 8), (64000, 8), (64000, 8), (64000, 8)]);
        let share = pod(1000, 500, 1);
        use_gpu(&mut s, 0, 0, 1000, 500); // only shared pods
        use_gpu(&mut s, 1, 0, 1000, 500); // shared and whole
        s.place(1, &pod(1000, 1000, 1).demand, 0, GpuSet::single(1))
            .unwrap();
        s.place(3, &pod(1000, 1000, 1).demand, 0, GpuSet::single(1))
            .unwrap(); // only whole-GPU pods
        let mut p = Clustering;
        // used = 25 * 500 / 8000 = 1 (integer), 25 * 1500 / 8000 = 4, 25 * 1000 / 8000 = 3.
        assert_eq!(p.score(&s, 0, &share), 76.0);
        assert_eq!(p.score(&s, 1, &share), 54.0);
        assert_eq!(p.score(&s, 2, &share), 25.0);
        assert_eq!(p.score(&s, 3, &share), 3.0);
        assert_eq!(p.score(&s, 0, &pod(1000, 0, 0)), 0.0);
    }
}

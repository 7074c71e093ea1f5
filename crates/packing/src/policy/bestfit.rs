//! BestFit: the node left with the least, CPU and GPU weighted equally (`-gpusel best`).
//!
//! `score = int(100 * (1 - Σ_{cpu,gpu} 0.5 * (free - request) / max_spec))` with max_spec the
//! largest node (128 CPUs, 8 GPUs), as in the simulator.

use rand_chacha::ChaCha8Rng;

use super::{MAX_NODE_SCORE, MAX_SPEC_CPU_MILLI, MAX_SPEC_GPU_MILLI, PodView, Policy, go_int};
use crate::state::{ClusterState, GpuSet, NodeState};

#[derive(Debug, Default)]
pub struct BestFit;

/// The simulator's integer BestFit score of `pod` on `node`.
pub fn bestfit_score(node: &NodeState, pod: &PodView) -> f64 {
    let d = &pod.demand;
    let cpu_after = f64::from(node.cpu_left) - f64::from(d.cpu_milli);
    let gpu_after = f64::from(node.gpu_left_total) - f64::from(d.total_gpu_milli());
    if cpu_after < 0.0 || gpu_after < 0.0 {
        return 0.0;
    }
    let left = 0.5 * cpu_after / MAX_SPEC_CPU_MILLI + 0.5 * gpu_after / MAX_SPEC_GPU_MILLI;
    go_int((1.0 - left) * MAX_NODE_SCORE as f64)
}

impl Policy for BestFit {
    fn name(&self) -> &'static str {
        "bestfit"
    }

    fn score(&mut self, state: &ClusterState, node: usize, pod: &PodView) -> f64 {
        bestfit_score(&state.nodes[node], pod)
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

    #[test]
    fn less_left_after_placement_scores_higher() {
        let (_, mut s) = cluster(&[(128000, 8), (32000, 2), (128000, 8)]);
        use_gpu(&mut s, 2, 0, 64000, 700);
        let mut p = BestFit;
        let q = pod(16000, 500, 1);
        // (112000/128000 + 7500/8000)/2 = 0.90625 -> int(9.375) = 9.
        assert_eq!(p.score(&s, 0, &q), 9.0);
        // (16000/128000 + 1500/8000)/2 = 0.15625 -> 84.
        assert_eq!(p.score(&s, 1, &q), 84.0);
        // (48000/128000 + 6800/8000)/2 = 0.6125 -> 38.
        assert_eq!(p.score(&s, 2, &q), 38.0);
        // GPU 0 has 300 m left, too little for 500 m: the tightest that holds it is GPU 1;
        // 200 m fits GPU 0, the tightest.
        let g = p
            .pick_gpus(&s, 2, &q, &mut rand::SeedableRng::seed_from_u64(0))
            .unwrap();
        assert_eq!(g, GpuSet::single(1));
        let g = p
            .pick_gpus(
                &s,
                2,
                &pod(1, 200, 1),
                &mut rand::SeedableRng::seed_from_u64(0),
            )
            .unwrap();
        assert_eq!(g, GpuSet::single(0));
    }
}

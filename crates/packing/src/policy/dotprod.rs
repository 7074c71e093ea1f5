//! DotProd: the simulator's Tetris-style score with `-dimext merge -norm max -gpusel best`.
//!
//! The node's free vector `(cpu_left, gpu_left_total)` and the pod's request vector
//! `(cpu, gpu_total)` are both divided by the largest node `(128 CPUs, 8 GPUs)`; the score is
//! `int(100 * (1 - (free · request) / 2))`. A larger dot product thus scores *lower*, exactly as
//! in the simulator's code, which makes it prefer nodes with less left (a packing heuristic).
//! The GPU is the tightest one that holds the pod.

use rand_chacha::ChaCha8Rng;

use super::{MAX_NODE_SCORE, MAX_SPEC_CPU_MILLI, MAX_SPEC_GPU_MILLI, PodView, Policy, go_int};
use crate::state::{ClusterState, GpuSet, NodeState};

#[derive(Debug, Default)]
pub struct DotProd;

/// The simulator's integer DotProd score of `pod` on `node`.
pub fn dotprod_score(node: &NodeState, pod: &PodView) -> f64 {
    let d = &pod.demand;
    if node.cpu_left < d.cpu_milli {
        return 0.0;
    }
    let free_cpu = f64::from(node.cpu_left) / MAX_SPEC_CPU_MILLI;
    let free_gpu = f64::from(node.gpu_left_total) / MAX_SPEC_GPU_MILLI;
    let req_cpu = f64::from(d.cpu_milli) / MAX_SPEC_CPU_MILLI;
    let req_gpu = f64::from(d.total_gpu_milli()) / MAX_SPEC_GPU_MILLI;
    let dot = (free_cpu * req_cpu + free_gpu * req_gpu) / 2.0;
    go_int(MAX_NODE_SCORE as f64 * (1.0 - dot))
}

impl Policy for DotProd {
    fn name(&self) -> &'static str {
        "dotprod"
    }

    fn score(&mut self, state: &ClusterState, node: usize, pod: &PodView) -> f64 {
        dotprod_score(&state.nodes[node], pod)
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
    fn larger_free_dot_request_scores_lower() {
        let (_, mut s) = cluster(&[(64000, 8), (64000, 8)]);
        use_gpu(&mut s, 1, 0, 32000, 1000);
        let mut p = DotProd;
        let big = pod(16000, 1000, 2);
        // Idle node: dot = (0.5*0.125 + 1*0.25)/2 = 0.15625 -> int(84.375) = 84.
        assert_eq!(p.score(&s, 0, &big), 84.0);
        // Half-used CPU, 7 GPUs: dot = (0.25*0.125 + 0.875*0.25)/2 = 0.125 -> 87.
        assert_eq!(p.score(&s, 1, &big), 87.0);
        let g = p
            .pick_gpus(&s, 1, &big, &mut rand::SeedableRng::seed_from_u64(0))
            .unwrap();
        assert_eq!(g, GpuSet(0b110));
    }
}

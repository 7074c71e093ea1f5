//! GpuPacking: prefer partly used GPUs, then free GPUs on used nodes, then idle nodes
//! (`-gpusel best`). Pods without GPUs score 0 everywhere (they land at random).
//!
//! Integer scores as in the simulator, from high to low:
//! 1. the pod fits on GPUs already in use: `100 - (Σ percent left on the GPUs used) / 10`, at
//!    least 50;
//! 2. it needs free GPUs of a node in use: `50 - free GPUs used`, at least 33;
//! 3. the node is idle: `33 - its GPUs`, at least its GPUs.

use rand_chacha::ChaCha8Rng;

use super::{MAX_NODE_SCORE, PodView, Policy};
use crate::model::MILLI_PER_GPU;
use crate::state::{ClusterState, GpuSet, NodeState};

#[derive(Debug, Default)]
pub struct Packing;

/// The simulator's integer GpuPacking score of `pod` on `node`.
pub fn packing_score(node: &NodeState, pod: &PodView) -> f64 {
    let d = &pod.demand;
    if !d.wants_gpu() {
        return 0.0;
    }
    let full = i64::from(node.full_gpus);
    if node.full_gpus == node.gpu_count {
        return (MAX_NODE_SCORE / 3 - full).max(full) as f64;
    }
    // Walk the GPUs from the least left to the most (stable on ties), as the simulator does.
    let mut order = [0usize; crate::model::MAX_GPUS_PER_NODE];
    let gpus = node.gpus();
    for (i, o) in order.iter_mut().enumerate().take(gpus.len()) {
        *o = i;
    }
    let order = &mut order[..gpus.len()];
    order.sort_by_key(|&i| gpus[i]);
    let mut need = d.gpu_count;
    let mut free_used = 0i64;
    let mut percent_left = 0i64;
    for &i in order.iter() {
        if need == 0 {
            break;
        }
        let left = gpus[i];
        if d.gpu_milli <= left {
            need -= 1;
            percent_left += i64::from(left) * 100 / i64::from(MILLI_PER_GPU);
            if u32::from(left) == MILLI_PER_GPU {
                free_used += 1;
            }
        }
    }
    if need != 0 {
        return 0.0;
    }
    if free_used > 0 {
        return (MAX_NODE_SCORE / 2 - free_used).max(MAX_NODE_SCORE / 3) as f64;
    }
    (MAX_NODE_SCORE - percent_left / 10).max(MAX_NODE_SCORE / 2) as f64
}

impl Policy for Packing {
    fn name(&self) -> &'static str {
        "packing"
    }

    fn score(&mut self, state: &ClusterState, node: usize, pod: &PodView) -> f64 {
        packing_score(&state.nodes[node], pod)
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
    fn shared_gpus_then_free_gpus_of_used_nodes_then_idle_nodes() {
        let (_, mut s) = cluster(&[(64000, 8), (64000, 2), (64000, 8), (64000, 1)]);
        use_gpu(&mut s, 0, 3, 1000, 600); // 400 m left on GPU 3
        let mut p = Packing;
        let share = pod(1000, 300, 1);
        // Fits on the 400 m GPU: 100 - 40/10 = 96.
        assert_eq!(p.score(&s, 0, &share), 96.0);
        // Idle nodes: 33 - GPUs.
        assert_eq!(p.score(&s, 1, &share), 31.0);
        assert_eq!(p.score(&s, 2, &share), 25.0);
        assert_eq!(p.score(&s, 3, &share), 32.0);
        // A whole GPU on the used node takes a free GPU: 50 - 1.
        assert_eq!(p.score(&s, 0, &pod(1000, 1000, 1)), 49.0);
        assert_eq!(p.score(&s, 0, &pod(1000, 1000, 4)), 46.0);
        assert_eq!(p.score(&s, 0, &pod(1000, 0, 0)), 0.0);
    }
}

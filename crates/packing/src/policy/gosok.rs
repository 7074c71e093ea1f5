//! gosok's own packing policy (first cut: exact fragmentation change against every shape).

use std::sync::Arc;

use rand_chacha::ChaCha8Rng;

use super::fgd::{ScoreCache, after_shared_on, gpus_after_whole};
use super::{PodView, Policy};
use crate::frag::TypicalPods;
use crate::state::{ClusterState, GpuSet, NodeState};

#[derive(Debug)]
pub struct Gosok {
    target: Arc<TypicalPods>,
    cache: ScoreCache,
}

impl Gosok {
    pub fn new(target: Arc<TypicalPods>) -> Gosok {
        Gosok {
            target,
            cache: ScoreCache::default(),
        }
    }
}

fn node_score(target: &TypicalPods, node: &NodeState, pod: &PodView) -> (f64, Option<usize>) {
    let d = &pod.demand;
    let count = usize::from(node.gpu_count);
    let before = target.node_frag_milli(node.cpu_left, node.gpus(), node.model);
    let cpu_after = node.cpu_left.saturating_sub(d.cpu_milli);
    if d.is_shared_gpu() {
        let mut best: Option<(f64, usize)> = None;
        for (i, &l) in node.gpus().iter().enumerate() {
            if l < d.gpu_milli || node.gpus()[..i].contains(&l) {
                continue;
            }
            let left = after_shared_on(node, i, d.gpu_milli);
            let after = target.node_frag_milli(cpu_after, &left[..count], node.model);
            let s = before - after;
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
        }
        match best {
            Some((s, i)) => (s, Some(i)),
            None => (f64::NEG_INFINITY, None),
        }
    } else {
        let left = gpus_after_whole(node, d);
        let after = target.node_frag_milli(cpu_after, &left[..count], node.model);
        (before - after, None)
    }
}

impl Policy for Gosok {
    fn name(&self) -> &'static str {
        "gosok"
    }

    fn start(&mut self, state: &ClusterState, shapes: usize) {
        self.cache.reset(state.nodes.len(), shapes);
    }

    fn score(&mut self, state: &ClusterState, node: usize, pod: &PodView) -> f64 {
        let n = &state.nodes[node];
        let target = &self.target;
        self.cache
            .get_or_insert_with(pod.shape, node, n.version, || node_score(target, n, pod).0)
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
            node_score(&self.target, n, pod).1.map(GpuSet::single)
        } else {
            n.best_fit_gpus(&pod.demand)
        }
    }
}

//! gosok's own packing policy (research version with switchable variants).

use std::sync::Arc;

use rand_chacha::ChaCha8Rng;

use super::bestfit::bestfit_score;
use super::fgd::{ScoreCache, after_shared_on, fgd_score_of_change, gpus_after_whole};
use super::{PodView, Policy};
use crate::frag::TypicalPods;
use crate::state::{ClusterState, GpuSet, NodeState};

#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub typical95: bool,
    pub quantize: bool,
    pub secondary: u8,
    pub gpu_bestfit: bool,
    pub tol: f64,
    pub gw: bool,
}

impl Variant {
    fn from_env() -> Variant {
        let s = std::env::var("GOSOK_VARIANT").unwrap_or_default();
        let mut v = Variant {
            typical95: false,
            quantize: false,
            secondary: 0,
            gpu_bestfit: false,
            tol: 0.0,
            gw: false,
        };
        for part in s.split(',') {
            match part {
                "t95" => v.typical95 = true,
                "q" => v.quantize = true,
                "bf" => v.secondary = 1,
                "used" => v.secondary = 2,
                "gbf" => v.gpu_bestfit = true,
                "gw" => v.gw = true,
                p if p.starts_with("tol") => v.tol = p[3..].parse().unwrap_or(0.0),
                _ => {}
            }
        }
        v
    }
}

#[derive(Debug)]
pub struct Gosok {
    target: Arc<TypicalPods>,
    cache: ScoreCache,
    v: Variant,
}

impl Gosok {
    pub fn new(all: Arc<TypicalPods>, typical: Arc<TypicalPods>, gw: Arc<TypicalPods>) -> Gosok {
        let v = Variant::from_env();
        Gosok {
            target: if v.typical95 {
                typical
            } else if v.gw {
                gw
            } else {
                all
            },
            cache: ScoreCache::default(),
            v,
        }
    }
}

fn primary(v: &Variant, change: f64) -> f64 {
    if v.quantize {
        fgd_score_of_change(change)
    } else if v.tol > 0.0 {
        (change / v.tol).floor()
    } else {
        change
    }
}

fn node_score(
    v: &Variant,
    target: &TypicalPods,
    node: &NodeState,
    pod: &PodView,
) -> (f64, Option<usize>) {
    let d = &pod.demand;
    let count = usize::from(node.gpu_count);
    let before = target.node_frag_milli(node.cpu_left, node.gpus(), node.model);
    let cpu_after = node.cpu_left.saturating_sub(d.cpu_milli);
    let p = if d.is_shared_gpu() {
        let mut best: Option<(f64, u16, usize)> = None;
        for (i, &l) in node.gpus().iter().enumerate() {
            if l < d.gpu_milli || node.gpus()[..i].contains(&l) {
                continue;
            }
            let left = after_shared_on(node, i, d.gpu_milli);
            let after = target.node_frag_milli(cpu_after, &left[..count], node.model);
            let s = primary(v, before - after);
            let better = match best {
                None => true,
                Some((b, bl, _)) => s > b || (v.gpu_bestfit && s == b && l < bl),
            };
            if better {
                best = Some((s, l, i));
            }
        }
        match best {
            Some((s, _, i)) => (s, Some(i)),
            None => (f64::NEG_INFINITY, None),
        }
    } else {
        let left = gpus_after_whole(node, d);
        let after = target.node_frag_milli(cpu_after, &left[..count], node.model);
        (primary(v, before - after), None)
    };
    let sec = match v.secondary {
        1 => bestfit_score(node, pod) / 101.0,
        2 => {
            let cap = f64::from(node.gpu_count) * 1000.0;
            if cap > 0.0 {
                1.0 - f64::from(node.gpu_left_total) / cap
            } else {
                0.0
            }
        }
        _ => 0.0,
    };
    if v.secondary > 0 {
        (p.0 + sec * 0.999, p.1)
    } else {
        p
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
        let v = self.v;
        self.cache
            .get_or_insert_with(pod.shape, node, n.version, || {
                node_score(&v, target, n, pod).0
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
            node_score(&self.v, &self.target, n, pod)
                .1
                .map(GpuSet::single)
        } else {
            n.best_fit_gpus(&pod.demand)
        }
    }
}

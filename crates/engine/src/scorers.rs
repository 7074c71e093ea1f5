//! Placement scorers: each looks at one candidate node for one replica and says how good it
//! is, in [0, 1]. The engine adds them up with the configured weights. A new placement
//! policy is a new scorer here plus a name in `scorer_by_name`.

use gosok_model::ModelId;

use crate::cluster::{Cluster, Node};
use crate::ids::NodeIdx;
use crate::job::AccelReq;

/// The accelerator demands seen in the workload, by size, with their frequencies (summing to
/// 1). FGD measures fragmentation against it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    pub demands: Vec<(AccelReq, f64)>,
    /// CPU thousandths and memory MiB that accelerator replicas ask per thousandth of an
    /// accelerator (`waste`'s `ρ`).
    pub cpu_per_milli: f64,
    pub mem_per_milli: f64,
    /// Per model: the share of its capacity that model-restricted demand wants (`waste`'s `π`).
    pub pressure: Vec<f64>,
}

pub struct ScoreInput<'a> {
    pub cluster: &'a Cluster,
    pub node: NodeIdx,
    pub model: Option<ModelId>,
    pub req: AccelReq,
    /// CPU and memory of the replica.
    pub cpu_milli: u64,
    pub mem_mib: u64,
    /// Nodes earlier replicas of the same gang were placed on.
    pub placed: &'a [NodeIdx],
    pub profile: &'a Profile,
    pub delta_w: u64,
}

pub trait Scorer: Send + Sync {
    fn name(&self) -> &'static str;
    fn score(&self, input: &ScoreInput) -> f64;
}

pub fn scorer_by_name(name: &str) -> Option<Box<dyn Scorer>> {
    Some(match name {
        "bestfit" => Box::new(BestFit),
        "fgd" => Box::new(Fragmentation),
        "consolidate" => Box::new(Consolidate),
        "power" => Box::new(PowerHeadroom),
        "waste" => Box::new(crate::waste::ExpectedWaste),
        _ => return None,
    })
}

pub const SCORER_NAMES: &[&str] = &["waste", "bestfit", "fgd", "consolidate", "power"];

/// Prefers the node left with the least free accelerator capacity (and, for CPU-only work, the
/// least free CPU): keeps whole nodes free for big gangs.
pub struct BestFit;

impl Scorer for BestFit {
    fn name(&self) -> &'static str {
        "bestfit"
    }
    fn score(&self, i: &ScoreInput) -> f64 {
        let n = &i.cluster.nodes[i.node as usize];
        let total = n.devices() as u64 * 1000;
        if total == 0 || i.req == AccelReq::None {
            return 1.0 - n.cpu_free_milli as f64 / n.cpu_total_milli.max(1) as f64;
        }
        let used_after = n.used_total_milli() + i.req.milli();
        used_after as f64 / total as f64
    }
}

/// Free thousandths on `used` that a task demanding `d` could not use (FGD's fragment
/// measure for one node and one task size).
pub(crate) fn fragment(used: &[u16], d: AccelReq) -> u64 {
    let free = |u: u16| (1000 - u) as u64;
    match d {
        AccelReq::None => 0,
        AccelReq::Whole(k) => {
            let whole = used.iter().filter(|&&u| u == 0).count() as u16;
            if whole < k {
                used.iter().map(|&u| free(u)).sum()
            } else {
                used.iter().filter(|&&u| u > 0).map(|&u| free(u)).sum()
            }
        }
        AccelReq::Milli(m) => used
            .iter()
            .map(|&u| free(u))
            .filter(|&f| f < m as u64)
            .sum(),
    }
}

/// Applies what `placement::pick_devices` would take to a copy of a node's devices.
fn take_devices(used: &mut [u16], req: AccelReq) {
    match req {
        AccelReq::None => {}
        AccelReq::Whole(k) => {
            for u in used.iter_mut().filter(|u| **u == 0).take(k as usize) {
                *u = 1000;
            }
        }
        AccelReq::Milli(m) => {
            if let Some(u) = used
                .iter_mut()
                .filter(|u| **u + m <= 1000)
                .max_by_key(|u| **u)
            {
                *u += m;
            }
        }
    }
}

/// `f` of a node's devices as they would be after a replica of `req` took its share (on the
/// stack for common node sizes: this runs for every candidate node).
pub(crate) fn after_taking<R>(used: &[u16], req: AccelReq, f: impl FnOnce(&[u16]) -> R) -> R {
    let mut stack = [0u16; 16];
    let mut heap = Vec::new();
    let after: &mut [u16] = if used.len() <= stack.len() {
        &mut stack[..used.len()]
    } else {
        heap.resize(used.len(), 0);
        &mut heap
    };
    after.copy_from_slice(used);
    take_devices(after, req);
    f(after)
}

pub(crate) fn expected_fragment(used: &[u16], p: &Profile) -> f64 {
    p.demands
        .iter()
        .map(|&(d, w)| w * fragment(used, d) as f64)
        .sum()
}

/// Fragmentation gradient descent (FGD, Weng et al., ATC'23): prefers the node whose expected
/// fragmentation, measured against the workload's demand sizes, grows least.
pub struct Fragmentation;

impl Scorer for Fragmentation {
    fn name(&self) -> &'static str {
        "fgd"
    }
    fn score(&self, i: &ScoreInput) -> f64 {
        let n: &Node = &i.cluster.nodes[i.node as usize];
        if n.used_milli.is_empty() || i.profile.demands.is_empty() || i.req == AccelReq::None {
            return 0.5;
        }
        let before = expected_fragment(&n.used_milli, i.profile);
        let after = after_taking(&n.used_milli, i.req, |after| {
            expected_fragment(after, i.profile)
        });
        let total = (n.used_milli.len() * 1000) as f64;
        // Δ ranges over [-total, total]; map "fragmentation fell most" to 1.
        0.5 - (after - before) / (2.0 * total)
    }
}

/// Keeps a gang's replicas together: the more earlier replicas share the node's scale-up
/// domain (then rack, then site), the better.
pub struct Consolidate;

impl Scorer for Consolidate {
    fn name(&self) -> &'static str {
        "consolidate"
    }
    fn score(&self, i: &ScoreInput) -> f64 {
        if i.placed.is_empty() {
            return 0.0;
        }
        let nodes = &i.cluster.nodes;
        let me = &nodes[i.node as usize];
        let mut s = 0.0;
        for &p in i.placed {
            let o = &nodes[p as usize];
            s += if o.domain == me.domain {
                1.0
            } else if o.rack == me.rack {
                0.75
            } else if o.site == me.site {
                0.25
            } else {
                0.0
            };
        }
        s / i.placed.len() as f64
    }
}

/// Prefers racks with the most power headroom left after the placement, so that no rack
/// runs at its cap while others idle.
pub struct PowerHeadroom;

impl Scorer for PowerHeadroom {
    fn name(&self) -> &'static str {
        "power"
    }
    fn score(&self, i: &ScoreInput) -> f64 {
        let rack = &i.cluster.racks[i.cluster.nodes[i.node as usize].rack as usize];
        if rack.cap_w == 0 {
            return 0.0;
        }
        rack.cap_w.saturating_sub(rack.it_w + i.delta_w) as f64 / rack.cap_w as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_counts_what_a_task_size_cannot_use() {
        // Two devices half used, two free: a whole-device task cannot use the halves.
        let used = [500, 500, 0, 0];
        assert_eq!(fragment(&used, AccelReq::Whole(1)), 1000);
        // A 3-device task cannot fit at all: everything free is a fragment.
        assert_eq!(fragment(&used, AccelReq::Whole(3)), 3000);
        // A 0.6 task cannot use the 0.5 halves.
        assert_eq!(fragment(&used, AccelReq::Milli(600)), 1000);
        assert_eq!(fragment(&used, AccelReq::Milli(500)), 0);
    }
}

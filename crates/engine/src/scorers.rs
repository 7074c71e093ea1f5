//! Placement scorers: each looks at one candidate node for one replica and says how good it
//! is, in [0, 1]. The engine adds them up with the configured weights. A new placement
//! policy is a new scorer here plus a name in `scorer_by_name`.

use gosok_model::ModelId;

use crate::cluster::Cluster;
use crate::fragmentation::FragTarget;
use crate::ids::{JobId, ModelSet, NodeIdx};
use crate::job::AccelReq;

/// What the workload submitted so far looks like, for the scorers that weigh a placement
/// against the work still to come. Rebuilt by the engine from the jobs submitted and the
/// nodes declared.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    /// FGD's target workload: the replica shapes (accelerators, CPU, models) covering 95 %
    /// of the replicas submitted, weighted by popularity.
    pub typical: FragTarget,
    /// Every shape submitted, weighted by popularity (`waste` measures against all of them,
    /// so that rare shapes that fill odd gaps count too).
    pub all_shapes: FragTarget,
    /// CPU thousandths and memory MiB that accelerator replicas ask per thousandth of an
    /// accelerator (`waste`'s `ρ`).
    pub cpu_per_milli: f64,
    pub mem_per_milli: f64,
    /// Per model: the share of its capacity that model-restricted demand wants (`waste`'s `π`).
    pub pressure: Vec<f64>,
    /// The largest node's CPU and accelerator thousandths: the scale of `bestfit`, `dotprod`
    /// and `clustering`.
    pub max_node_cpu_milli: u64,
    pub max_node_accel_milli: u64,
}

pub struct ScoreInput<'a> {
    pub cluster: &'a Cluster,
    pub node: NodeIdx,
    pub model: Option<ModelId>,
    pub req: AccelReq,
    /// CPU and memory of the replica.
    pub cpu_milli: u64,
    pub mem_mib: u64,
    /// The models the replica's group accepts.
    pub models: ModelSet,
    /// The job being placed (the random scorer draws per job).
    pub job: JobId,
    /// Nodes earlier replicas of the same gang were placed on.
    pub placed: &'a [NodeIdx],
    pub profile: &'a Profile,
    pub delta_w: u64,
}

pub trait Scorer: Send + Sync {
    fn name(&self) -> &'static str;
    /// How good the node is for the replica, in [0, 1].
    fn score(&self, input: &ScoreInput) -> f64;
    /// The devices the replica should take on the chosen node, when this scorer has a view
    /// (the first scorer that answers decides); `None`: best fit (`placement::pick_devices`).
    fn devices(&self, _input: &ScoreInput) -> Option<Vec<u8>> {
        None
    }
}

pub fn scorer_by_name(name: &str) -> Option<Box<dyn Scorer>> {
    use crate::baselines::{BestFit, Clustering, DotProd, Fragmentation, Packing, Random};
    Some(match name {
        "waste" => Box::new(crate::waste::ExpectedWaste),
        "bestfit" => Box::new(BestFit),
        "fgd" => Box::new(Fragmentation),
        "random" => Box::new(Random),
        "dotprod" => Box::new(DotProd),
        "packing" => Box::new(Packing),
        "clustering" => Box::new(Clustering),
        "consolidate" => Box::new(Consolidate),
        "power" => Box::new(PowerHeadroom),
        _ => return None,
    })
}

pub const SCORER_NAMES: &[&str] = &[
    "waste",
    "bestfit",
    "fgd",
    "random",
    "dotprod",
    "packing",
    "clustering",
    "consolidate",
    "power",
];

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

/// `f` of a node's devices as they would be after a replica took `req` — its best-fit
/// devices, or for a fraction the device `on` when given (on the stack for common node
/// sizes: this runs for every candidate node).
pub(crate) fn after_taking<R>(
    used: &[u16],
    req: AccelReq,
    on: Option<usize>,
    f: impl FnOnce(&[u16]) -> R,
) -> R {
    let mut stack = [0u16; 16];
    let mut heap = Vec::new();
    let after: &mut [u16] = if used.len() <= stack.len() {
        &mut stack[..used.len()]
    } else {
        heap.resize(used.len(), 0);
        &mut heap
    };
    after.copy_from_slice(used);
    match (req, on) {
        (AccelReq::Milli(m), Some(d)) => after[d] += m,
        _ => take_devices(after, req),
    }
    f(after)
}

/// For a fraction: the best device by `score` (higher is better) among those it fits,
/// the lowest-numbered on ties, each distinct fill level tried once; for anything else the
/// best-fit devices' score. Returns the score and, for a fraction, the device.
pub(crate) fn best_device(
    used: &[u16],
    req: AccelReq,
    mut score: impl FnMut(&[u16]) -> f64,
) -> (f64, Option<usize>) {
    let AccelReq::Milli(m) = req else {
        return (after_taking(used, req, None, &mut score), None);
    };
    let mut best: Option<(f64, usize)> = None;
    for (d, &u) in used.iter().enumerate() {
        // Devices as full as an earlier one give the same result.
        if u + m > 1000 || used[..d].contains(&u) {
            continue;
        }
        let s = after_taking(used, req, Some(d), &mut score);
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, d));
        }
    }
    match best {
        Some((s, d)) => (s, Some(d)),
        None => (f64::NEG_INFINITY, None),
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

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
    /// Node terms computed against this profile, kept for the next placements (not state:
    /// never saved, compared or cloned).
    #[serde(skip)]
    pub memo: ScoreMemo,
}

/// What a memoised node term is: a value and, for a fraction, the device it was found on.
pub type NodeTerm = (f64, Option<usize>);

/// Scorers that memoise a term, each in its own slot.
pub const MEMO_SLOTS: usize = 2;
pub const MEMO_WASTE: usize = 0;
pub const MEMO_FGD: usize = 1;

/// Node terms that depend only on a node's devices, free CPU and memory, the replica's
/// accelerators, CPU and memory, and the profile (expected waste's and FGD's fragmentation
/// sums, the costly part of scoring), kept across placements. Between two placements only
/// the nodes that took or gave something change, so most candidates of the next replica of
/// the same size are scored from here. A term is reused only when the node's contents are
/// exactly what they were when it was computed (checked, not assumed) and the profile has
/// not been rebuilt since, so the decisions are those of computing every term afresh.
#[derive(Default)]
pub struct ScoreMemo {
    table: std::sync::Mutex<MemoTable>,
}

impl ScoreMemo {
    /// The profile changed: every term computed so far is stale.
    pub fn forget(&self) {
        let mut t = self.lock();
        t.generation = t.generation.wrapping_add(1);
        if t.generation == u32::MAX {
            // After 2^32 rebuilds an old entry could look current: start afresh.
            *t = MemoTable::default();
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, MemoTable> {
        // A panic while scoring leaves nothing half-written that matters: entries are
        // checked before use.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clone for ScoreMemo {
    fn clone(&self) -> ScoreMemo {
        ScoreMemo::default()
    }
}

impl PartialEq for ScoreMemo {
    fn eq(&self, _: &ScoreMemo) -> bool {
        true
    }
}

impl std::fmt::Debug for ScoreMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScoreMemo")
    }
}

/// Most devices of a node whose terms are memoised (larger nodes are scored afresh).
const MEMO_MAX_DEVICES: usize = 16;
/// Replica sizes whose terms are kept per node (a replica size takes the way its hash
/// names, in place of whatever was there).
const MEMO_WAYS: usize = 8;

/// A node's contents when its terms were last computed, how often they changed, and its
/// terms that do not depend on the replica (the waste before placing anything).
#[derive(Clone, Copy, Default)]
struct NodeSeen {
    epoch: u32,
    devices: u8,
    model: Option<ModelId>,
    cpu_free_milli: u64,
    mem_free_mib: u64,
    used_milli: [u16; MEMO_MAX_DEVICES],
    /// The profile generation `before` belongs to.
    before_generation: u32,
    before: [Option<f64>; MEMO_SLOTS],
}

/// One replica size's terms on one node.
#[derive(Clone, Copy)]
struct MemoEntry {
    epoch: u32,
    generation: u32,
    req: AccelReq,
    cpu_milli: u64,
    mem_mib: u64,
    slots: [Option<NodeTerm>; MEMO_SLOTS],
}

const EMPTY_ENTRY: MemoEntry = MemoEntry {
    epoch: 0,
    generation: 0,
    req: AccelReq::None,
    cpu_milli: 0,
    mem_mib: 0,
    slots: [None; MEMO_SLOTS],
};

#[derive(Default)]
pub(crate) struct MemoTable {
    /// Rebuilds of the profile; terms carry this plus one, so a fresh entry (0) is never
    /// current.
    generation: u32,
    nodes: Vec<NodeSeen>,
    /// `MEMO_WAYS` per node, side by side.
    entries: Vec<MemoEntry>,
}

/// A node's memoised terms for one replica, for the scorers to read and fill.
pub struct MemoSlots<'a> {
    before: &'a [std::cell::Cell<Option<f64>>],
    terms: &'a [std::cell::Cell<Option<NodeTerm>>],
}

impl MemoTable {
    /// The memo of node `n` of `cluster` for a replica asking `req`, `cpu_milli` and
    /// `mem_mib`: terms still valid are kept, stale ones emptied. `None` for nodes too
    /// large to memoise.
    pub(crate) fn slots(
        &mut self,
        cluster: &Cluster,
        n: NodeIdx,
        req: AccelReq,
        cpu_milli: u64,
        mem_mib: u64,
    ) -> Option<MemoSlots<'_>> {
        use std::cell::Cell;
        let node = &cluster.nodes[n as usize];
        let devices = node.used_milli.len();
        if devices > MEMO_MAX_DEVICES {
            return None;
        }
        if self.nodes.len() < cluster.nodes.len() {
            self.nodes.resize(cluster.nodes.len(), NodeSeen::default());
            self.entries
                .resize(cluster.nodes.len() * MEMO_WAYS, EMPTY_ENTRY);
        }
        let generation = self.generation.wrapping_add(1);
        let seen = &mut self.nodes[n as usize];
        if seen.devices as usize != devices
            || seen.model != node.model
            || seen.cpu_free_milli != node.cpu_free_milli
            || seen.mem_free_mib != node.mem_free_mib
            || seen.used_milli[..devices] != node.used_milli[..]
        {
            *seen = NodeSeen {
                epoch: seen.epoch.wrapping_add(1),
                devices: devices as u8,
                model: node.model,
                cpu_free_milli: node.cpu_free_milli,
                mem_free_mib: node.mem_free_mib,
                used_milli: seen.used_milli,
                before_generation: generation,
                before: [None; MEMO_SLOTS],
            };
            seen.used_milli[..devices].copy_from_slice(&node.used_milli);
        } else if seen.before_generation != generation {
            seen.before_generation = generation;
            seen.before = [None; MEMO_SLOTS];
        }
        let epoch = seen.epoch;
        let (kind, amount) = match req {
            AccelReq::None => (0, 0),
            AccelReq::Whole(k) => (1, k as u64),
            AccelReq::Milli(m) => (2, m as u64),
        };
        let way = crate::ids::mix64(kind << 32 | amount, cpu_milli ^ mem_mib.rotate_left(32))
            as usize
            % MEMO_WAYS;
        let e = &mut self.entries[n as usize * MEMO_WAYS + way];
        if !(e.epoch == epoch
            && e.generation == generation
            && e.req == req
            && e.cpu_milli == cpu_milli
            && e.mem_mib == mem_mib)
        {
            *e = MemoEntry {
                epoch,
                generation,
                req,
                cpu_milli,
                mem_mib,
                slots: [None; MEMO_SLOTS],
            };
        }
        Some(MemoSlots {
            before: Cell::from_mut(&mut seen.before[..]).as_slice_of_cells(),
            terms: Cell::from_mut(&mut e.slots[..]).as_slice_of_cells(),
        })
    }
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
    /// This node's memoised terms for this replica (see `ScoreMemo`), when kept.
    pub memo: Option<&'a MemoSlots<'a>>,
}

impl ScoreInput<'_> {
    /// The node term in `slot`: memoised, or computed by `f` (which must depend only on what
    /// `ScoreMemo` keys on) and kept.
    pub fn memoised(&self, slot: usize, f: impl FnOnce() -> NodeTerm) -> NodeTerm {
        memoised(self.memo.and_then(|m| m.terms.get(slot)), f)
    }

    /// The node's own term in `slot` before the replica is placed (a function of the node's
    /// contents and the profile alone): memoised, or computed by `f` and kept.
    pub fn memoised_before(&self, slot: usize, f: impl FnOnce() -> f64) -> f64 {
        memoised(self.memo.and_then(|m| m.before.get(slot)), f)
    }
}

fn memoised<T: Copy>(cell: Option<&std::cell::Cell<Option<T>>>, f: impl FnOnce() -> T) -> T {
    let Some(cell) = cell else {
        return f();
    };
    if let Some(v) = cell.get() {
        return v;
    }
    let v = f();
    cell.set(Some(v));
    v
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
    /// Whether it keeps node terms in the `ScoreMemo` (placement looks them up only then:
    /// for cheap scorers the lookup would cost more than it saves).
    fn memoises(&self) -> bool {
        false
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

#[cfg(test)]
mod tests {
    use super::*;
    use gosok_model::{Catalog, ClusterSpec, NodeSpec, NodeState, RackSpec, SiteSpec};

    fn one_node_cluster() -> Cluster {
        let catalog = Catalog::builtin();
        let mut spec = ClusterSpec::default();
        spec.site.push(SiteSpec {
            name: "s".into(),
            region: "r".into(),
            jurisdiction: "NL".into(),
            power_budget_mw: 10.0,
            pue: 1.0,
        });
        spec.rack.push(RackSpec {
            name: "r0".into(),
            site: "s".into(),
            power_cap_kw: 1000.0,
            scale_up_domain: None,
            allow_undeclared_nodes: false,
            max_nodes: None,
        });
        let model = catalog.get(0).name.clone();
        spec.node.push(NodeSpec {
            name: "n0".into(),
            rack: "r0".into(),
            count: None,
            cpu_cores: 64,
            mem_mib: 1 << 20,
            accelerator: Some(model),
            accelerators: 4,
            base_power_w: 100,
            labels: Default::default(),
            taints: Vec::new(),
            state: NodeState::Up,
        });
        Cluster::new(&catalog, &spec, 0.9).unwrap()
    }

    /// Fills every empty slot of the node's memo with `v`, returning what was there.
    fn fill(t: &mut MemoTable, c: &Cluster, req: AccelReq, v: f64) -> (Option<f64>, Option<f64>) {
        let s = t.slots(c, 0, req, 1000, 1024).unwrap();
        let was = (s.before[0].get(), s.terms[0].get().map(|x| x.0));
        s.before[0].set(Some(v));
        s.terms[0].set(Some((v, None)));
        was
    }

    #[test]
    fn memoised_terms_live_until_the_node_or_the_profile_changes() {
        let mut c = one_node_cluster();
        let memo = ScoreMemo::default();
        let whole = AccelReq::Whole(1);
        {
            let mut t = memo.lock();
            assert_eq!(fill(&mut t, &c, whole, 1.0), (None, None));
            // Same node, same replica: both terms kept.
            assert_eq!(fill(&mut t, &c, whole, 2.0), (Some(1.0), Some(1.0)));
            // Another replica size: the node's own term is shared, the placement term not.
            assert_eq!(
                fill(&mut t, &c, AccelReq::Milli(500), 3.0),
                (Some(2.0), None)
            );
        }
        // The profile was rebuilt: nothing is current.
        memo.forget();
        assert_eq!(fill(&mut memo.lock(), &c, whole, 4.0), (None, None));
        // The node's contents changed (and changed back): its terms are recomputed.
        c.nodes[0].used_milli[1] = 250;
        assert_eq!(fill(&mut memo.lock(), &c, whole, 5.0), (None, None));
        c.nodes[0].used_milli[1] = 0;
        assert_eq!(fill(&mut memo.lock(), &c, whole, 6.0), (None, None));
        c.nodes[0].cpu_free_milli -= 1;
        assert_eq!(fill(&mut memo.lock(), &c, whole, 7.0), (None, None));
        assert_eq!(
            fill(&mut memo.lock(), &c, whole, 8.0),
            (Some(7.0), Some(7.0))
        );
    }
}

//! Expected waste: gosok's default placement scorer.
//!
//! Each candidate node is scored by how much accelerator capacity the placement is expected
//! to leave unusable, in thousandths of an accelerator, counting three kinds of waste:
//!
//! 1. **Fragmentation** against the live workload profile (the demand sizes submitted so
//!    far, weighted by how often they come): free capacity on the node that a typical
//!    replica could not use (FGD's measure, `scorers::fragment`).
//! 2. **Stranding**: a node whose CPU or memory runs out strands its idle accelerators. With
//!    `ρ` the CPU (memory) the workload's accelerator replicas ask per thousandth of an
//!    accelerator, a node with `idle` free thousandths and `cpu` free CPU strands about
//!    `max(0, idle − cpu / ρ)` of them.
//! 3. **Model displacement** (among the nodes of the model a group is tried on): replicas restricted to some accelerator models can only use
//!    those; a replica that could run anywhere but takes one leaves less for them. With `π_m`
//!    the share of model `m`'s capacity the restricted demand will want once as much has
//!    arrived as the highway holds, taking `g` thousandths of `m` displaces `g × min(1, π_m)`.
//!
//! Where power binds, waking an idle node also costs the accelerators its base draw could
//! have powered (`wake_cost`).
//!
//! The score is `before − after − displaced`: all the terms are amounts of accelerator
//! expected to go unused, so they need no weights; nothing is fitted — `ρ` and `π` come from
//! the jobs submitted and the nodes declared. CPU-only replicas are scored too: taking CPU
//! from an accelerator node strands its accelerators, so they go to CPU nodes first.

use std::collections::BTreeMap;

use gosok_model::ModelId;

use crate::cluster::{Cluster, Node};
use crate::fragmentation::{FragTarget, TypicalShape, popular};
use crate::ids::ModelSet;
use crate::job::{AccelReq, GroupReq};
use crate::scorers::{MEMO_WASTE, Profile, ScoreInput, Scorer, best_device};

/// What the workload submitted so far asks for: replica shapes by popularity (FGD's and
/// expected waste's targets) and the inputs of `ρ` and `π`. Halved when the counts grow
/// large, which keeps the ratios.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DemandTotals {
    /// Over replicas that ask for accelerators: their thousandths, CPU and memory.
    pub accel_milli: f64,
    pub cpu_milli: f64,
    pub mem_mib: f64,
    /// Accelerator thousandths asked, by the set of models a group accepts.
    pub by_models: BTreeMap<u128, f64>,
    /// Replicas submitted, by shape.
    pub by_shape: BTreeMap<TypicalShape, f64>,
    /// Replicas counted in all, and when the profile was last rebuilt.
    pub replicas: f64,
    pub replicas_at_refresh: f64,
}

/// FGD's typical shapes: the most popular covering this share of the replicas.
const TYPICAL_SHARE: f64 = 0.95;
/// Most shapes expected waste measures against, and most the engine keeps counting: rare
/// shapes beyond them weigh little and would slow every score.
const MAX_SHAPES: usize = 256;
const MAX_COUNTED_SHAPES: usize = 4096;

impl DemandTotals {
    pub fn add(&mut self, g: &GroupReq) {
        let r = g.replicas as f64;
        let shape = TypicalShape {
            accel: g.accel,
            cpu_milli: g.cpu_milli,
            models: if g.accel == AccelReq::None {
                ModelSet::default()
            } else {
                g.models
            },
        };
        *self.by_shape.entry(shape).or_default() += r;
        self.replicas += r;
        if self.by_shape.len() > MAX_COUNTED_SHAPES {
            // Keep the more popular half (ties by shape: deterministic).
            let mut counts: Vec<(TypicalShape, f64)> =
                self.by_shape.iter().map(|(s, c)| (*s, *c)).collect();
            counts.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            counts.truncate(MAX_COUNTED_SHAPES / 2);
            self.by_shape = counts.into_iter().collect();
        }
        if g.accel == AccelReq::None {
            return;
        }
        let milli = g.accel.milli() as f64 * r;
        self.accel_milli += milli;
        self.cpu_milli += g.cpu_milli as f64 * r;
        self.mem_mib += g.mem_mib as f64 * r;
        *self.by_models.entry(g.models.0).or_default() += milli;
    }

    /// Whether the workload grew enough since the profile was last rebuilt to rebuild it:
    /// by 1 % (every replica at first). The profile describes a distribution, which a few
    /// more replicas barely move, and rebuilding it per submission would cost more than
    /// placing them.
    pub fn grown(&self) -> bool {
        self.replicas > self.replicas_at_refresh * 1.01
    }

    fn halve(&mut self) {
        self.replicas /= 2.0;
        self.replicas_at_refresh /= 2.0;
        self.accel_milli /= 2.0;
        self.cpu_milli /= 2.0;
        self.mem_mib /= 2.0;
        for v in self
            .by_models
            .values_mut()
            .chain(self.by_shape.values_mut())
        {
            *v /= 2.0;
        }
    }

    /// Rebuilds `profile` from the workload counted so far and the highway's known nodes.
    pub fn refresh(&mut self, cluster: &Cluster, profile: &mut Profile) {
        if self.replicas > 1e9 {
            self.halve();
        }
        self.replicas_at_refresh = self.replicas;
        let n_models = cluster.model_names.len();
        let counts: Vec<(TypicalShape, f64)> =
            self.by_shape.iter().map(|(s, c)| (*s, *c)).collect();
        profile.typical = FragTarget::new(&popular(&counts, TYPICAL_SHARE), n_models);
        let mut all = popular(&counts, 1.0);
        if all.len() > MAX_SHAPES {
            all.truncate(MAX_SHAPES);
            let kept: f64 = all.iter().map(|s| s.1).sum();
            for s in &mut all {
                s.1 /= kept;
            }
        }
        profile.all_shapes = FragTarget::new(&all, n_models);
        profile.max_node_cpu_milli = cluster
            .nodes
            .iter()
            .map(|n| n.cpu_total_milli)
            .max()
            .unwrap_or(0);
        profile.max_node_accel_milli = cluster.max_devices as u64 * 1000;
        self.fill(cluster, profile);
        profile.memo.forget();
    }

    /// Fills the profile's `ρ` (CPU and memory per thousandth) and `π` (per model) for the
    /// highway's known nodes.
    fn fill(&self, cluster: &Cluster, profile: &mut Profile) {
        let n_models = cluster.model_names.len();
        profile.cpu_per_milli = ratio(self.cpu_milli, self.accel_milli);
        profile.mem_per_milli = ratio(self.mem_mib, self.accel_milli);
        let mut capacity = vec![0f64; n_models];
        for n in &cluster.nodes {
            if let Some(m) = n.model {
                capacity[m as usize] += n.devices() as f64 * 1000.0;
            }
        }
        let total_capacity: f64 = capacity.iter().sum();
        let present = cluster.present_models;
        let mut pressure = vec![0f64; n_models];
        if self.accel_milli > 0.0 {
            for (&bits, &milli) in &self.by_models {
                let set = ModelSet(bits).and(present);
                if set == present {
                    continue;
                }
                let allowed: f64 = set.iter().map(|m| capacity[m as usize]).sum();
                if allowed <= 0.0 {
                    continue;
                }
                // Its part of the demand once as much has arrived as the highway holds,
                // spread over the models it accepts in proportion to their capacity, as a
                // share of each one's capacity.
                let demand = total_capacity * milli / self.accel_milli;
                for m in set.iter() {
                    pressure[m as usize] += demand / allowed;
                }
            }
        }
        profile.pressure = pressure;
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Expected unusable thousandths of a node of `model` with devices `used` and `cpu`, `mem`
/// free.
fn waste(used: &[u16], cpu_milli: u64, mem_mib: u64, model: Option<ModelId>, p: &Profile) -> f64 {
    let frag = p.all_shapes.node_frag_milli(used, cpu_milli, model);
    let idle: f64 = used.iter().map(|&u| (1000 - u) as f64).sum();
    let strand = |free: u64, per_milli: f64| {
        if per_milli > 0.0 {
            (idle - free as f64 / per_milli).max(0.0)
        } else {
            0.0
        }
    };
    frag + strand(cpu_milli, p.cpu_per_milli).max(strand(mem_mib, p.mem_per_milli))
}

/// The expected-waste scorer (see the module documentation).
#[derive(Default)]
pub struct ExpectedWaste;

impl ExpectedWaste {
    /// Thousandths of accelerator the placement is expected to make unusable (negative:
    /// it makes some usable again), displacement included; for a fraction, on the device
    /// where it adds least, which it returns too.
    pub fn waste_added(&self, node: &Node, i: &ScoreInput) -> (f64, Option<usize>) {
        let (less, device) = Self::less_waste(node, i);
        (
            -less + displaced(node.model, i.req, i.profile) + wake_cost(i.cluster, node),
            device,
        )
    }

    /// How much less the node's own waste (fragmentation and stranding) is after the
    /// placement, and for a fraction the device.
    fn less_waste(node: &Node, i: &ScoreInput) -> (f64, Option<usize>) {
        // A function of the node's devices, CPU and memory, the replica and the profile.
        i.memoised(MEMO_WASTE, || Self::less_waste_afresh(node, i))
    }

    fn less_waste_afresh(node: &Node, i: &ScoreInput) -> (f64, Option<usize>) {
        let p = i.profile;
        let before = i.memoised_before(MEMO_WASTE, || {
            waste(
                &node.used_milli,
                node.cpu_free_milli,
                node.mem_free_mib,
                node.model,
                p,
            )
        });
        let cpu = node.cpu_free_milli.saturating_sub(i.cpu_milli);
        let mem = node.mem_free_mib.saturating_sub(i.mem_mib);
        best_device(&node.used_milli, i.req, |after| {
            before - waste(after, cpu, mem, node.model, p)
        })
    }
}

/// Waking an idle node spends its base draw. Where power binds (the rack or site cannot
/// power all of its free accelerators), every watt is accelerator capacity: the base draw
/// is worth `base_w / device_w` accelerators that can no longer run.
fn wake_cost(cluster: &Cluster, node: &Node) -> f64 {
    if !node.tasks.is_empty() || node.device_w == 0 {
        return 0.0;
    }
    let rack = &cluster.racks[node.rack as usize];
    let site = &cluster.sites[node.site as usize];
    let want = |free_milli: u64| free_milli * node.device_w / 1000;
    let rack_room = rack.cap_w.saturating_sub(rack.it_w);
    let site_room = (site.budget_w * 1000 / site.pue_milli.max(1)).saturating_sub(site.it_w);
    if rack_room >= want(rack.free_milli) && site_room >= want(site.free_milli) {
        return 0.0;
    }
    node.base_w as f64 * 1000.0 / node.device_w as f64
}

fn displaced(model: Option<ModelId>, req: AccelReq, p: &Profile) -> f64 {
    match model.and_then(|m| p.pressure.get(m as usize)) {
        Some(&pi) => req.milli() as f64 * pi.min(1.0),
        None => 0.0,
    }
}

impl Scorer for ExpectedWaste {
    fn name(&self) -> &'static str {
        "waste"
    }
    fn score(&self, i: &ScoreInput) -> f64 {
        let node = &i.cluster.nodes[i.node as usize];
        if node.used_milli.is_empty() && i.req == AccelReq::None {
            // A node without accelerators wastes none.
            return 1.0;
        }
        // One scale for every node (the largest node's capacity), so that a thousandth
        // wasted counts the same on a small node as on a big one.
        let scale = (i.cluster.max_devices.max(1) as f64) * 1000.0;
        (0.5 - self.waste_added(node, i).0 / (2.0 * scale)).clamp(0.0, 1.0)
    }
    fn memoises(&self) -> bool {
        true
    }
    fn devices(&self, i: &ScoreInput) -> Option<Vec<u8>> {
        // Only a fraction has a device to choose; whole devices go best fit.
        if !matches!(i.req, AccelReq::Milli(_)) {
            return None;
        }
        let node = &i.cluster.nodes[i.node as usize];
        self.waste_added(node, i).1.map(|d| vec![d as u8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(cpu_per_milli: f64) -> Profile {
        let one = TypicalShape {
            accel: AccelReq::Whole(1),
            cpu_milli: 0,
            models: ModelSet::all(1),
        };
        Profile {
            all_shapes: FragTarget::new(&[(one, 1.0)], 1),
            cpu_per_milli,
            ..Profile::default()
        }
    }

    #[test]
    fn a_node_short_of_cpu_strands_its_idle_accelerators() {
        // 2 CPU per accelerator: 4 idle devices need 8 CPUs.
        let p = profile(2.0);
        assert_eq!(waste(&[0; 4], 8000, 1 << 20, Some(0), &p), 0.0);
        // With 5 CPUs left, 1.5 devices' worth is stranded.
        assert_eq!(waste(&[0; 4], 5000, 1 << 20, Some(0), &p), 1500.0);
    }

    #[test]
    fn restricted_demand_presses_on_the_models_it_accepts() {
        let p = Profile {
            pressure: vec![0.0, 0.8],
            ..profile(0.0)
        };
        assert_eq!(displaced(Some(0), AccelReq::Whole(1), &p), 0.0);
        assert_eq!(displaced(Some(1), AccelReq::Whole(2), &p), 1600.0);
        assert_eq!(displaced(None, AccelReq::None, &p), 0.0);
    }
}

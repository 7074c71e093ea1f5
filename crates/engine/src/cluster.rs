//! The engine's live view of the highway: what every node, rack and site has free, what it
//! draws, and the indices placement searches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gosok_model::{Catalog, ClusterSpec, ModelId, NodeSpec, NodeState, SpecError};

use crate::ids::{DomainIdx, JobId, NodeIdx, RackIdx, SiteIdx};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Site {
    pub name: Arc<str>,
    pub region: String,
    pub jurisdiction: String,
    pub pue_milli: u64,
    pub budget_w: u64,
    /// Estimated IT draw of everything placed here.
    pub it_w: u64,
    /// Free accelerator thousandths on its up nodes.
    pub free_milli: u64,
}

impl Site {
    pub fn facility_w(&self, it_w: u64) -> u64 {
        it_w * self.pue_milli / 1000
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Rack {
    pub name: Arc<str>,
    pub site: SiteIdx,
    pub domain: DomainIdx,
    pub cap_w: u64,
    pub it_w: u64,
    pub nodes: Vec<NodeIdx>,
    /// Free accelerator thousandths on its up nodes.
    pub free_milli: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Domain {
    pub site: SiteIdx,
    pub nodes: Vec<NodeIdx>,
    /// Free accelerator thousandths on its up nodes.
    pub free_milli: u64,
}

/// A task's hold on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRef {
    pub job: JobId,
    pub task: u32,
}

/// A task as its node keeps it: what it holds and when it is planned to end, so that the
/// capacity profile of reservations needs nothing but the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeTask {
    pub job: JobId,
    pub task: u32,
    /// Whole devices (fractions count as none: they free no whole device).
    pub whole: u16,
    /// Holds a fraction of one device (GPU clustering tells such tasks from CPU-only ones).
    pub shared: bool,
    pub cpu_milli: u64,
    pub mem_mib: u64,
    /// Start + estimate, start + limit, start + default runtime (0: not given).
    pub ends_s: [u64; 3],
}

impl NodeTask {
    /// When it is planned to end: the first of estimate, limit and default still ahead,
    /// else a grace period from now.
    pub fn planned_end_s(&self, now_s: u64, grace_s: u64) -> u64 {
        self.ends_s
            .iter()
            .copied()
            .find(|&e| e > now_s)
            .unwrap_or(now_s.saturating_add(grace_s))
    }

    /// When it ends at the latest: its runtime limit if it has one still ahead, else as
    /// planned.
    pub fn limit_end_s(&self, now_s: u64, grace_s: u64) -> u64 {
        match self.ends_s[1] {
            e if e > now_s => e,
            _ => self.planned_end_s(now_s, grace_s),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub name: Arc<str>,
    pub site: SiteIdx,
    pub rack: RackIdx,
    pub domain: DomainIdx,
    pub model: Option<ModelId>,
    pub state: NodeState,
    pub cpu_total_milli: u64,
    pub cpu_free_milli: u64,
    pub mem_total_mib: u64,
    pub mem_free_mib: u64,
    /// Thousandths in use, per device.
    pub used_milli: Vec<u16>,
    pub free_whole: u16,
    pub base_w: u64,
    /// Draw of one fully used device (board power × utilisation).
    pub device_w: u64,
    pub draw_w: u64,
    pub tasks: Vec<NodeTask>,
    /// What node selectors match (`constraints.node_labels`).
    pub labels: BTreeMap<String, String>,
    /// Only replicas that tolerate each of these are placed here.
    pub taints: Vec<gosok_model::Taint>,
}

impl Node {
    pub fn devices(&self) -> u16 {
        self.used_milli.len() as u16
    }

    /// The node's draw if its devices were used as `used_milli` and `has_tasks` said.
    pub fn draw_for(&self, used_total_milli: u64, has_tasks: bool) -> u64 {
        if !has_tasks {
            return 0;
        }
        self.base_w + used_total_milli * self.device_w / 1000
    }

    pub fn free_milli(&self) -> u64 {
        self.devices() as u64 * 1000 - self.used_total_milli()
    }

    pub fn used_total_milli(&self) -> u64 {
        self.used_milli.iter().map(|&u| u as u64).sum()
    }

    pub fn has_partial(&self) -> bool {
        self.used_milli.iter().any(|&u| u > 0 && u < 1000)
    }

    pub fn max_partial_free(&self) -> u16 {
        self.used_milli
            .iter()
            .filter(|&&u| u > 0 && u < 1000)
            .map(|&u| 1000 - u)
            .max()
            .unwrap_or(0)
    }
}

/// What a task holds on its node; releasing gives exactly this back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    pub node: NodeIdx,
    pub devices: Vec<u8>,
    pub milli: u16,
    pub cpu_milli: u64,
    pub mem_mib: u64,
}

/// Up nodes with the same free whole devices, split by whether they host work: an idle node
/// must power its base load too, so when a site cannot afford that, placement skips the idle
/// ones without looking at each.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Bucket {
    pub busy: BTreeSet<NodeIdx>,
    pub idle: BTreeSet<NodeIdx>,
}

impl Bucket {
    pub fn len(&self) -> usize {
        self.busy.len() + self.idle.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Busy nodes first, then idle ones.
    pub fn iter(&self) -> impl Iterator<Item = &NodeIdx> {
        self.busy.iter().chain(self.idle.iter())
    }
    pub fn contains(&self, n: NodeIdx) -> bool {
        self.busy.contains(&n) || self.idle.contains(&n)
    }
    fn set(&mut self, idle: bool) -> &mut BTreeSet<NodeIdx> {
        if idle { &mut self.idle } else { &mut self.busy }
    }
}

/// Up nodes by (site, model) and free whole devices: best fit is a walk from the smallest
/// sufficient bucket upwards.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Index {
    n_models: usize,
    /// [site * n_models + model][free_whole] -> nodes
    whole: Vec<Vec<Bucket>>,
    /// [site * n_models + model] -> nodes with a partly used device
    partial: Vec<BTreeSet<NodeIdx>>,
    /// [site] -> up nodes (for jobs that want no accelerator)
    any: Vec<BTreeSet<NodeIdx>>,
}

impl Index {
    pub fn bucket(&self, site: SiteIdx, model: ModelId) -> &[Bucket] {
        &self.whole[site as usize * self.n_models + model as usize]
    }
    pub fn partial(&self, site: SiteIdx, model: ModelId) -> &BTreeSet<NodeIdx> {
        &self.partial[site as usize * self.n_models + model as usize]
    }
    pub fn any(&self, site: SiteIdx) -> &BTreeSet<NodeIdx> {
        &self.any[site as usize]
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Cluster {
    pub sites: Vec<Site>,
    pub racks: Vec<Rack>,
    pub domains: Vec<Domain>,
    pub nodes: Vec<Node>,
    pub node_by_name: BTreeMap<Arc<str>, NodeIdx>,
    pub site_by_name: BTreeMap<String, SiteIdx>,
    pub rack_by_name: BTreeMap<String, RackIdx>,
    pub model_names: Vec<Arc<str>>,
    pub index: Index,
    /// Bumped whenever what exists or is usable changes (node state, power caps), so that
    /// caches of "could this shape ever fit" know to recompute.
    pub epoch: u64,
    /// Totals over nodes that are not down: the denominators of shares.
    pub usable_accel_milli: u64,
    pub usable_cpu_milli: u64,
    pub usable_mem_mib: u64,
    pub max_devices: u16,
    /// Accelerators of all known nodes, whatever their state: the denominator of share caps
    /// at admission.
    pub known_accel_milli: u64,
    /// Smallest base draw of a node of each (site, model): [site * n_models + model].
    min_base_w: Vec<u64>,
    /// Draw of one fully used device of each model (board power × utilisation).
    pub model_device_w: Vec<u64>,
    /// Models some known node has.
    pub present_models: crate::ids::ModelSet,
}

/// A node as the cluster first holds it: down, nothing used.
fn new_node(
    catalog: &Catalog,
    name: &str,
    r: &Rack,
    rack: RackIdx,
    spec: &NodeSpec,
    utilisation: f64,
) -> Node {
    let model = spec.accelerator.as_deref().and_then(|m| catalog.id(m));
    let device_w = model
        .map(|m| (catalog.get(m).board_power_w as f64 * utilisation).round() as u64)
        .unwrap_or(0);
    let devices = spec.accelerators as u16;
    Node {
        name: name.into(),
        site: r.site,
        rack,
        domain: r.domain,
        model,
        state: NodeState::Down,
        cpu_total_milli: spec.cpu_cores * 1000,
        cpu_free_milli: spec.cpu_cores * 1000,
        mem_total_mib: spec.mem_mib,
        mem_free_mib: spec.mem_mib,
        used_milli: vec![0; devices as usize],
        free_whole: devices,
        base_w: spec.base_power_w,
        device_w,
        draw_w: 0,
        tasks: Vec::new(),
        labels: spec.labels.clone(),
        // The spec was validated; a taint that does not parse cannot be here.
        taints: spec
            .taints
            .iter()
            .filter_map(|t| gosok_model::Taint::parse("taints", t).ok())
            .collect(),
    }
}

fn mw_to_w(mw: f64) -> u64 {
    (mw * 1e6).round() as u64
}

impl Cluster {
    pub fn new(
        catalog: &Catalog,
        spec: &ClusterSpec,
        utilisation: f64,
    ) -> Result<Cluster, SpecError> {
        let resolved = spec.resolve(catalog)?;
        let n_models = catalog.len().max(1);
        let mut sites = Vec::new();
        let mut site_by_name = BTreeMap::new();
        for s in &spec.site {
            site_by_name.insert(s.name.clone(), sites.len() as SiteIdx);
            sites.push(Site {
                name: s.name.as_str().into(),
                region: s.region.clone(),
                jurisdiction: s.jurisdiction.clone(),
                pue_milli: (s.pue * 1000.0).round() as u64,
                budget_w: mw_to_w(s.power_budget_mw),
                it_w: 0,
                free_milli: 0,
            });
        }
        let mut racks = Vec::new();
        let mut rack_by_name = BTreeMap::new();
        let mut domains: Vec<Domain> = Vec::new();
        let mut domain_by_name: BTreeMap<(SiteIdx, String), DomainIdx> = BTreeMap::new();
        for r in &spec.rack {
            let site = site_by_name[&r.site];
            let dname = r.scale_up_domain.clone().unwrap_or_else(|| r.name.clone());
            let domain = *domain_by_name.entry((site, dname)).or_insert_with(|| {
                domains.push(Domain {
                    site,
                    nodes: Vec::new(),
                    free_milli: 0,
                });
                (domains.len() - 1) as DomainIdx
            });
            rack_by_name.insert(r.name.clone(), racks.len() as RackIdx);
            racks.push(Rack {
                name: r.name.as_str().into(),
                site,
                domain,
                cap_w: (r.power_cap_kw * 1000.0).round() as u64,
                it_w: 0,
                nodes: Vec::new(),
                free_milli: 0,
            });
        }
        let mut nodes = Vec::with_capacity(resolved.len());
        let mut node_by_name = BTreeMap::new();
        let mut max_devices = 0u16;
        let mut states = Vec::with_capacity(resolved.len());
        for rn in resolved {
            states.push(rn.spec.state);
            let idx = nodes.len() as NodeIdx;
            let rack = rn.rack as RackIdx;
            let node = new_node(
                catalog,
                &rn.name,
                &racks[rack as usize],
                rack,
                &rn.spec,
                utilisation,
            );
            max_devices = max_devices.max(node.devices());
            node_by_name.insert(node.name.clone(), idx);
            racks[rack as usize].nodes.push(idx);
            domains[node.domain as usize].nodes.push(idx);
            nodes.push(node);
        }
        let n_sites = sites.len().max(1);
        let index = Index {
            n_models,
            whole: (0..n_sites * n_models)
                .map(|_| (0..=max_devices).map(|_| Bucket::default()).collect())
                .collect(),
            partial: (0..n_sites * n_models).map(|_| BTreeSet::new()).collect(),
            any: (0..n_sites).map(|_| BTreeSet::new()).collect(),
        };
        let mut c = Cluster {
            sites,
            racks,
            domains,
            nodes,
            node_by_name,
            site_by_name,
            rack_by_name,
            model_names: catalog
                .models()
                .iter()
                .map(|m| Arc::from(m.name.as_str()))
                .collect(),
            index,
            epoch: 0,
            usable_accel_milli: 0,
            usable_cpu_milli: 0,
            usable_mem_mib: 0,
            max_devices,
            present_models: Default::default(),
            known_accel_milli: 0,
            min_base_w: vec![u64::MAX; n_sites * n_models],
            model_device_w: catalog
                .models()
                .iter()
                .map(|m| (m.board_power_w as f64 * utilisation).round() as u64)
                .collect(),
        };
        c.known_accel_milli = c.nodes.iter().map(|n| n.devices() as u64 * 1000).sum();
        for n in &c.nodes {
            if let Some(m) = n.model {
                let k = n.site as usize * n_models + m as usize;
                c.min_base_w[k] = c.min_base_w[k].min(n.base_w);
            }
        }
        for n in &c.nodes {
            if let Some(m) = n.model {
                c.present_models = c.present_models.with(m);
            }
        }
        for (i, state) in states.into_iter().enumerate() {
            c.set_state(i as NodeIdx, state);
        }
        Ok(c)
    }

    /// Adds a node to `rack` in place: appended, down, then set to the state its spec gives.
    /// The caller has checked the spec and that the name is new.
    pub fn add_node(
        &mut self,
        catalog: &Catalog,
        name: &str,
        rack: RackIdx,
        spec: &NodeSpec,
        utilisation: f64,
    ) -> NodeIdx {
        let idx = self.nodes.len() as NodeIdx;
        let node = new_node(
            catalog,
            name,
            &self.racks[rack as usize],
            rack,
            spec,
            utilisation,
        );
        let devices = node.devices();
        if devices > self.max_devices {
            // Every (site, model) has a bucket per free-device count up to the largest node.
            for b in &mut self.index.whole {
                b.resize_with(devices as usize + 1, Bucket::default);
            }
            self.max_devices = devices;
        }
        if let Some(m) = node.model {
            let k = node.site as usize * self.index.n_models + m as usize;
            self.min_base_w[k] = self.min_base_w[k].min(node.base_w);
            self.present_models = self.present_models.with(m);
        }
        self.known_accel_milli += devices as u64 * 1000;
        self.node_by_name.insert(node.name.clone(), idx);
        self.racks[rack as usize].nodes.push(idx);
        self.domains[node.domain as usize].nodes.push(idx);
        self.nodes.push(node);
        self.epoch += 1;
        self.set_state(idx, spec.state);
        idx
    }

    fn unindex(&mut self, n: NodeIdx) {
        let node = &self.nodes[n as usize];
        if node.state != NodeState::Up {
            return;
        }
        let (site, free) = (node.site as usize, node.free_whole as usize);
        if let Some(m) = node.model {
            let k = site * self.index.n_models + m as usize;
            let idle = node.tasks.is_empty();
            self.index.whole[k][free].set(idle).remove(&n);
            self.index.partial[k].remove(&n);
        }
        self.index.any[site].remove(&n);
        self.add_free(n, -(self.nodes[n as usize].free_milli() as i64));
    }

    /// Adds `delta` free thousandths of node `n` to its domain, rack and site.
    fn add_free(&mut self, n: NodeIdx, delta: i64) {
        let node = &self.nodes[n as usize];
        let (d, r, s) = (node.domain as usize, node.rack as usize, node.site as usize);
        let f = |v: &mut u64| *v = v.wrapping_add_signed(delta);
        f(&mut self.domains[d].free_milli);
        f(&mut self.racks[r].free_milli);
        f(&mut self.sites[s].free_milli);
    }

    /// Moves an up node between index buckets after its devices changed from `before`
    /// (free whole devices, has a partly used device, free thousandths, idle).
    fn reindex_after(&mut self, n: NodeIdx, before: (u16, bool, u64, bool)) {
        let node = &self.nodes[n as usize];
        if node.state != NodeState::Up {
            return;
        }
        let after = (
            node.free_whole,
            node.has_partial(),
            node.free_milli(),
            node.tasks.is_empty(),
        );
        if let Some(m) = node.model {
            let k = node.site as usize * self.index.n_models + m as usize;
            if (before.0, before.3) != (after.0, after.3) {
                self.index.whole[k][before.0 as usize]
                    .set(before.3)
                    .remove(&n);
                self.index.whole[k][after.0 as usize].set(after.3).insert(n);
            }
            if before.1 != after.1 {
                if after.1 {
                    self.index.partial[k].insert(n);
                } else {
                    self.index.partial[k].remove(&n);
                }
            }
        }
        self.add_free(n, after.2 as i64 - before.2 as i64);
    }

    fn reindex(&mut self, n: NodeIdx) {
        let node = &self.nodes[n as usize];
        if node.state != NodeState::Up {
            return;
        }
        let (site, free) = (node.site as usize, node.free_whole as usize);
        if let Some(m) = node.model {
            let k = site * self.index.n_models + m as usize;
            let idle = node.tasks.is_empty();
            self.index.whole[k][free].set(idle).insert(n);
            if node.has_partial() {
                self.index.partial[k].insert(n);
            }
        }
        self.index.any[site].insert(n);
        self.add_free(n, self.nodes[n as usize].free_milli() as i64);
    }

    pub fn set_state(&mut self, n: NodeIdx, state: NodeState) {
        let old = self.nodes[n as usize].state;
        if old == state {
            return;
        }
        self.unindex(n);
        let node = &mut self.nodes[n as usize];
        let (acc, cpu, mem) = (
            node.devices() as u64 * 1000,
            node.cpu_total_milli,
            node.mem_total_mib,
        );
        if old == NodeState::Down {
            self.usable_accel_milli += acc;
            self.usable_cpu_milli += cpu;
            self.usable_mem_mib += mem;
        }
        if state == NodeState::Down {
            self.usable_accel_milli -= acc;
            self.usable_cpu_milli -= cpu;
            self.usable_mem_mib -= mem;
        }
        node.state = state;
        self.reindex(n);
        self.epoch += 1;
    }

    /// The smallest base draw of a node of `model` at `site` (what an idle one adds first).
    pub fn min_base_w(&self, site: SiteIdx, model: ModelId) -> u64 {
        let w = self.min_base_w[site as usize * self.index.n_models + model as usize];
        if w == u64::MAX { 0 } else { w }
    }

    /// The extra IT draw of adding `add_milli` device-thousandths to node `n`.
    pub fn draw_delta(&self, n: NodeIdx, add_milli: u64) -> u64 {
        let node = &self.nodes[n as usize];
        let used = node.used_total_milli();
        // The difference of the node's draw itself: rounding the added share on its own
        // could come out a watt short of what taking it really adds.
        node.draw_for(used + add_milli, true) - node.draw_for(used, !node.tasks.is_empty())
    }

    /// Whether `delta_w` more IT draw on node `n` keeps its rack and site within their caps.
    pub fn power_fits(&self, n: NodeIdx, delta_w: u64) -> Result<(), PowerBlock> {
        self.power_fits_holding(n, delta_w, 0, 0)
    }

    /// As `power_fits`, with `held_rack_w` and `held_site_w` kept free for a reservation.
    pub fn power_fits_holding(
        &self,
        n: NodeIdx,
        delta_w: u64,
        held_rack_w: u64,
        held_site_w: u64,
    ) -> Result<(), PowerBlock> {
        let node = &self.nodes[n as usize];
        let rack = &self.racks[node.rack as usize];
        if rack.it_w + delta_w + held_rack_w > rack.cap_w {
            return Err(PowerBlock::Rack);
        }
        let site = &self.sites[node.site as usize];
        if site.facility_w(site.it_w + delta_w + held_site_w) > site.budget_w {
            return Err(PowerBlock::Site);
        }
        Ok(())
    }

    /// Records when a started task is planned to end (see `NodeTask::ends_s`).
    pub fn set_task_ends(&mut self, n: NodeIdx, task: TaskRef, ends_s: [u64; 3]) {
        let node = &mut self.nodes[n as usize];
        if let Some(t) = node
            .tasks
            .iter_mut()
            .find(|t| t.job == task.job && t.task == task.task)
        {
            t.ends_s = ends_s;
        }
    }

    /// Takes what a task holds. The caller has checked that it fits.
    pub fn take(&mut self, hold: &Hold, task: TaskRef) {
        let n = hold.node;
        let node = &mut self.nodes[n as usize];
        let before = (
            node.free_whole,
            node.has_partial(),
            node.free_milli(),
            node.tasks.is_empty(),
        );
        for &d in &hold.devices {
            node.used_milli[d as usize] += hold.milli;
            if node.used_milli[d as usize] == hold.milli {
                node.free_whole -= 1;
            }
        }
        node.cpu_free_milli -= hold.cpu_milli;
        node.mem_free_mib -= hold.mem_mib;
        node.tasks.push(NodeTask {
            job: task.job,
            task: task.task,
            whole: if hold.milli == 1000 {
                hold.devices.len() as u16
            } else {
                0
            },
            shared: hold.milli < 1000 && !hold.devices.is_empty(),
            cpu_milli: hold.cpu_milli,
            mem_mib: hold.mem_mib,
            ends_s: [0; 3],
        });
        self.refresh_power(n);
        self.reindex_after(n, before);
    }

    /// Gives back exactly what `take` took.
    pub fn give(&mut self, hold: &Hold, task: TaskRef) {
        let n = hold.node;
        let node = &mut self.nodes[n as usize];
        let before = (
            node.free_whole,
            node.has_partial(),
            node.free_milli(),
            node.tasks.is_empty(),
        );
        for &d in &hold.devices {
            node.used_milli[d as usize] -= hold.milli;
            if node.used_milli[d as usize] == 0 {
                node.free_whole += 1;
            }
        }
        node.cpu_free_milli += hold.cpu_milli;
        node.mem_free_mib += hold.mem_mib;
        if let Some(p) = node
            .tasks
            .iter()
            .position(|t| t.job == task.job && t.task == task.task)
        {
            node.tasks.swap_remove(p);
        }
        self.refresh_power(n);
        self.reindex_after(n, before);
    }

    fn refresh_power(&mut self, n: NodeIdx) {
        let node = &mut self.nodes[n as usize];
        let new = node.draw_for(node.used_total_milli(), !node.tasks.is_empty());
        let old = std::mem::replace(&mut node.draw_w, new);
        let (rack, site) = (node.rack as usize, node.site as usize);
        self.racks[rack].it_w = self.racks[rack].it_w - old + new;
        self.sites[site].it_w = self.sites[site].it_w - old + new;
    }

    pub fn site_facility_draw_w(&self, s: SiteIdx) -> u64 {
        let site = &self.sites[s as usize];
        site.facility_w(site.it_w)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerBlock {
    Rack,
    Site,
}

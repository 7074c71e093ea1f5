//! Placement: filter, then score, replica by replica, all or nothing for the whole gang.
//!
//! Candidate nodes come from the cluster index in best-fit order (smallest sufficient free
//! count first); each candidate passes the filters (state, model, accelerators, CPU, memory,
//! reservation slack, rack and site power) or counts toward the blocker that stopped it. The
//! first `score_candidates` feasible nodes are scored and the best takes the replica. Holds are
//! taken as replicas are placed and given back if the gang does not fit whole, so no partial
//! gang ever outlives the call.

use std::collections::BTreeMap;

use gosok_model::{ModelId, NodeState, TopologyLevel, TopologyMode};

use crate::cluster::{Cluster, Hold, PowerBlock, TaskRef};
use crate::explain::Blocker;
use crate::ids::{IdMap, JobId, ModelSet, NodeIdx, RackIdx, SiteIdx, SiteSet, mix64};
use crate::job::{AccelReq, GroupReq, Shape};
use crate::scorers::{Profile, ScoreInput, Scorer};
use crate::tenants::Tenant;

/// What a reserved node can still give to jobs that would run past the reservation's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Slack {
    pub accel_milli: u64,
    pub cpu_milli: u64,
    pub mem_mib: u64,
}

/// Capacity held for the first job that could not start.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    pub job: Option<JobId>,
    pub start_s: u64,
    pub slack: IdMap<NodeIdx, Slack>,
    /// IT power held for the job per rack and per site, when power is what it waits for:
    /// without it, small jobs would take every watt that frees up and a big gang would
    /// starve on a power-capped site.
    pub rack_w: IdMap<RackIdx, u64>,
    pub site_w: IdMap<SiteIdx, u64>,
}

impl Reservation {
    pub fn holds_power(&self) -> bool {
        !self.rack_w.is_empty() || !self.site_w.is_empty()
    }
}

pub struct Request<'a> {
    pub job: JobId,
    pub shape: &'a Shape,
    pub tenant: &'a Tenant,
    pub preemptible: bool,
    /// Must leave the reservation's capacity alone (it would still run when it begins).
    pub bound_by_reservation: bool,
    /// Where the running replicas of the job's group are (`constraints.group`).
    pub group_use: Option<&'a crate::constraints::GroupUse>,
}

#[derive(Debug, Clone)]
pub struct Placed {
    pub task: u32,
    pub group: u16,
    pub model: Option<ModelId>,
    pub hold: Hold,
}

pub struct Placer<'a> {
    pub scorers: &'a [(Box<dyn Scorer>, f64)],
    pub profile: &'a Profile,
    pub score_candidates: usize,
    pub seed: u64,
    /// Nodes the filters looked at, for pass statistics.
    pub visited: std::cell::Cell<u64>,
}

/// Why replicas did not fit, counted over the nodes looked at.
#[derive(Default)]
struct Misses([u32; 11]);

impl Misses {
    fn add(&mut self, b: Blocker) {
        self.0[b as usize] += 1;
    }
    fn worst(&self) -> Option<Blocker> {
        const ALL: [Blocker; 11] = [
            Blocker::Accelerators,
            Blocker::Cpu,
            Blocker::Memory,
            Blocker::RackPower,
            Blocker::SitePower,
            Blocker::Reservation,
            Blocker::Topology,
            Blocker::NodeLabels,
            Blocker::Taints,
            Blocker::AntiAffinity,
            Blocker::Spread,
        ];
        let (i, &n) = self
            .0
            .iter()
            .enumerate()
            .max_by_key(|&(i, &n)| (n, std::cmp::Reverse(i)))?;
        (n > 0).then_some(ALL[i])
    }
}

/// Where replicas may go in one attempt.
enum Scope<'c> {
    Sites(SiteSet),
    Nodes(&'c [NodeIdx]),
    Node(NodeIdx),
}

/// Most topology units (domains, racks, sites, nodes) one placement tries.
const MAX_UNITS_TRIED: usize = 16;

struct Attempt<'r> {
    req: &'r Request<'r>,
    reservation: Option<&'r Reservation>,
    slack_used: IdMap<NodeIdx, Slack>,
    placed: Vec<Placed>,
    placed_nodes: Vec<NodeIdx>,
    model_use: Vec<(ModelId, u64)>,
    misses: Misses,
}

impl<'a> Placer<'a> {
    /// Places the whole gang or nothing. On success the holds are taken on `cluster` and the
    /// reservation slack the gang used is returned for the caller to charge.
    pub fn place(
        &self,
        cluster: &mut Cluster,
        req: &Request,
        reservation: Option<&Reservation>,
    ) -> Result<(Vec<Placed>, IdMap<NodeIdx, Slack>), Blocker> {
        let mut at = Attempt {
            req,
            reservation: reservation.filter(|_| req.bound_by_reservation),
            slack_used: IdMap::default(),
            placed: Vec::new(),
            placed_nodes: Vec::new(),
            model_use: Vec::new(),
            misses: Misses::default(),
        };
        let shape = req.shape;
        if !self.could_fit(cluster, shape) {
            return Err(Blocker::Accelerators);
        }
        let units = match shape.topology {
            None => vec![UnitKey::All],
            Some(t) => {
                let mut u = self.units(cluster, shape, t.level);
                if t.mode == TopologyMode::Preferred {
                    u.push(UnitKey::All);
                }
                u
            }
        };
        let unit_count = units.len();
        for unit in units {
            // Topology lists are copied out: placement mutates node state while it walks them.
            let owned: Vec<NodeIdx> = match unit {
                UnitKey::Domain(d) => cluster.domains[d as usize].nodes.clone(),
                UnitKey::Rack(r) => cluster.racks[r as usize].nodes.clone(),
                _ => Vec::new(),
            };
            let scope = match unit {
                UnitKey::All => Scope::Sites(shape.sites),
                UnitKey::Site(s) => Scope::Sites(SiteSet(1 << s)),
                UnitKey::Domain(_) | UnitKey::Rack(_) => Scope::Nodes(&owned),
                UnitKey::Node(n) => Scope::Node(n),
            };
            if self.place_in(cluster, &mut at, &scope) {
                let mut placed = std::mem::take(&mut at.placed);
                placed.sort_by_key(|p| p.task);
                return Ok((placed, at.slack_used));
            }
            self.rollback(cluster, &mut at);
        }
        Err(match at.misses.worst() {
            Some(b) => b,
            None if shape.topology.is_some() && unit_count == 0 => Blocker::Topology,
            None => Blocker::Accelerators,
        })
    }

    /// Whether a one-replica job would fit on node `n` as it is now (filters only).
    pub fn fits_on(
        &self,
        cluster: &Cluster,
        req: &Request,
        reservation: Option<&Reservation>,
        n: NodeIdx,
    ) -> bool {
        let [group] = &req.shape.groups[..] else {
            return false;
        };
        if group.replicas != 1 {
            return false;
        }
        let at = Attempt {
            req,
            reservation: reservation.filter(|_| req.bound_by_reservation),
            slack_used: IdMap::default(),
            placed: Vec::new(),
            placed_nodes: Vec::new(),
            model_use: Vec::new(),
            misses: Misses::default(),
        };
        let model = cluster.nodes[n as usize]
            .model
            .filter(|_| group.accel != AccelReq::None);
        if let Some(m) = model
            && (!group.models.contains(m)
                || !req
                    .tenant
                    .quota_allows(m, group.accel_milli_total(), req.preemptible))
        {
            return false;
        }
        self.check(cluster, &at, n, group, model).is_ok()
    }

    fn rollback(&self, cluster: &mut Cluster, at: &mut Attempt) {
        for p in at.placed.drain(..) {
            cluster.give(
                &p.hold,
                TaskRef {
                    job: at.req.job,
                    task: p.task,
                },
            );
        }
        at.placed_nodes.clear();
        at.slack_used.clear();
        at.model_use.clear();
    }

    /// Topology units at `level` that could hold the whole gang now, best fit first. Free
    /// capacity per unit is kept by the cluster (over all models: a cheap upper bound that
    /// placement then checks).
    fn units(&self, cluster: &Cluster, shape: &Shape, level: TopologyLevel) -> Vec<UnitKey> {
        let need = shape.accel_milli_total();
        let mut scored: Vec<(u64, u64, UnitKey)> = Vec::new();
        let mut consider = |free: u64, key: UnitKey, id: u64| {
            if free >= need {
                scored.push((free - need, mix64(self.seed, id), key));
            }
        };
        match level {
            TopologyLevel::Site => {
                for s in shape
                    .sites
                    .iter()
                    .filter(|&s| (s as usize) < cluster.sites.len())
                {
                    consider(
                        cluster.sites[s as usize].free_milli,
                        UnitKey::Site(s),
                        s as u64,
                    );
                }
            }
            TopologyLevel::ScaleUpDomain => {
                for (d, dom) in cluster.domains.iter().enumerate() {
                    if shape.sites.contains(dom.site) {
                        consider(dom.free_milli, UnitKey::Domain(d as u32), d as u64);
                    }
                }
            }
            TopologyLevel::Rack => {
                for (r, rack) in cluster.racks.iter().enumerate() {
                    if shape.sites.contains(rack.site) {
                        consider(rack.free_milli, UnitKey::Rack(r as u32), r as u64);
                    }
                }
            }
            TopologyLevel::Node => {
                let models = shape
                    .groups
                    .iter()
                    .fold(ModelSet::default(), |s, g| ModelSet(s.0 | g.models.0));
                let whole: u16 = shape
                    .groups
                    .iter()
                    .map(|g| match g.accel {
                        AccelReq::Whole(k) => {
                            k.saturating_mul(g.replicas.min(u16::MAX as u32) as u16)
                        }
                        _ => 0,
                    })
                    .fold(0u16, u16::saturating_add);
                for s in shape
                    .sites
                    .iter()
                    .filter(|&s| (s as usize) < cluster.sites.len())
                {
                    for m in models.iter() {
                        for level in cluster.index.bucket(s, m).iter().skip(whole as usize) {
                            for &n in level.iter() {
                                consider(
                                    cluster.nodes[n as usize].free_milli(),
                                    UnitKey::Node(n),
                                    n as u64,
                                );
                            }
                        }
                    }
                    if models.is_empty() {
                        for &n in cluster.index.any(s) {
                            consider(0, UnitKey::Node(n), n as u64);
                        }
                    }
                }
            }
        }
        scored.sort_by_key(|&(surplus, tie, _)| (surplus, tie));
        scored
            .into_iter()
            .take(MAX_UNITS_TRIED)
            .map(|(_, _, k)| k)
            .collect()
    }

    /// An upper bound, from bucket sizes alone, on whether the gang's whole-device groups
    /// could fit at all: lets a hopeless attempt fail without touching any node.
    pub fn could_fit(&self, cluster: &Cluster, shape: &Shape) -> bool {
        let n_sites = cluster.sites.len() as u16;
        shape.groups.iter().all(|g| {
            let AccelReq::Whole(k) = g.accel else {
                return true;
            };
            let mut replicas = 0u64;
            for s in shape.sites.iter().take_while(|&s| s < n_sites) {
                for m in g.models.and(cluster.present_models).iter() {
                    for (level, nodes) in cluster
                        .index
                        .bucket(s, m)
                        .iter()
                        .enumerate()
                        .skip(k as usize)
                    {
                        replicas += nodes.len() as u64 * (level as u64 / k as u64);
                    }
                }
            }
            replicas >= g.replicas as u64
        })
    }

    fn place_in(&self, cluster: &mut Cluster, at: &mut Attempt, scope: &Scope) -> bool {
        let shape = at.req.shape;
        // Biggest replicas first: they are the hardest to fit.
        let mut order: Vec<usize> = (0..shape.groups.len()).collect();
        order.sort_by_key(|&g| std::cmp::Reverse(shape.groups[g].accel.milli()));
        let mut first_task = vec![0u32; shape.groups.len()];
        for g in 1..shape.groups.len() {
            first_task[g] = first_task[g - 1] + shape.groups[g - 1].replicas;
        }
        'groups: for g in order {
            let group = &shape.groups[g];
            let models: Vec<Option<ModelId>> = if group.accel == AccelReq::None {
                vec![None]
            } else {
                group.models.iter().map(Some).collect()
            };
            // When every feasible node is scored, a one-replica group goes to the best node
            // of any model it accepts (as a scheduler scoring all nodes would). With a
            // bounded candidate list, and for gangs (whose replicas stay on one model), the
            // models are tried in catalog order and the first that fits takes it: comparing
            // every model would multiply the nodes scored.
            let mut preselected: Option<(Option<ModelId>, Best)> = None;
            if group.replicas == 1
                && models.len() > 1
                && self.score_candidates >= cluster.nodes.len()
            {
                for &model in &models {
                    let Some(m) = model else { continue };
                    let already = at.model_use.iter().find(|u| u.0 == m).map_or(0, |u| u.1);
                    if !at.req.tenant.quota_allows(
                        m,
                        already + group.accel_milli_total(),
                        at.req.preemptible,
                    ) {
                        continue;
                    }
                    let mut search = Search {
                        walk: self.walk(cluster, at, scope, group, model),
                        live: Vec::new(),
                    };
                    if let Some(b) = self.best_node(cluster, at, &mut search, group, model)
                        && preselected.as_ref().is_none_or(|(_, p)| b.beats(p))
                    {
                        preselected = Some((model, b));
                    }
                }
                if preselected.is_none() {
                    return false;
                }
            }
            for model in models {
                if let Some(m) = model {
                    let already = at.model_use.iter().find(|u| u.0 == m).map_or(0, |u| u.1);
                    if !at.req.tenant.quota_allows(
                        m,
                        already + group.accel_milli_total(),
                        at.req.preemptible,
                    ) {
                        continue;
                    }
                }
                if preselected.as_ref().is_some_and(|p| p.0 != model) {
                    continue;
                }
                let mark = at.placed.len();
                let mut ok = true;
                let mut search = Search {
                    walk: self.walk(cluster, at, scope, group, model),
                    live: Vec::new(),
                };
                for r in 0..group.replicas {
                    let chosen = match preselected.take() {
                        Some((_, best)) => Some(best),
                        None => self.best_node(cluster, at, &mut search, group, model),
                    };
                    let Some(Best { node, devices, .. }) = chosen else {
                        ok = false;
                        break;
                    };
                    let hold = Hold {
                        node,
                        devices,
                        milli: match group.accel {
                            AccelReq::Milli(m) => m,
                            _ => 1000,
                        },
                        cpu_milli: group.cpu_milli,
                        mem_mib: group.mem_mib,
                    };
                    let task = first_task[g] + r;
                    cluster.take(
                        &hold,
                        TaskRef {
                            job: at.req.job,
                            task,
                        },
                    );
                    if let Some(res) = at.reservation
                        && res.slack.contains_key(&node)
                    {
                        let s = at.slack_used.entry(node).or_default();
                        s.accel_milli += slack_accel(group.accel);
                        s.cpu_milli += group.cpu_milli;
                        s.mem_mib += group.mem_mib;
                    }
                    at.placed_nodes.push(node);
                    at.placed.push(Placed {
                        task,
                        group: g as u16,
                        model,
                        hold,
                    });
                }
                if ok {
                    if let Some(m) = model {
                        match at.model_use.iter_mut().find(|u| u.0 == m) {
                            Some(u) => u.1 += group.accel_milli_total(),
                            None => at.model_use.push((m, group.accel_milli_total())),
                        }
                    }
                    continue 'groups;
                }
                for p in at.placed.drain(mark..) {
                    cluster.give(
                        &p.hold,
                        TaskRef {
                            job: at.req.job,
                            task: p.task,
                        },
                    );
                    if let Some(s) = at.slack_used.get_mut(&p.hold.node) {
                        s.accel_milli -= slack_accel(group.accel);
                        s.cpu_milli -= group.cpu_milli;
                        s.mem_mib -= group.mem_mib;
                    }
                }
                at.placed_nodes.truncate(mark);
            }
            return false;
        }
        true
    }

    /// Where candidates for `group` on `model` come from in `scope`, best fit first.
    fn walk(
        &self,
        cluster: &Cluster,
        at: &mut Attempt,
        scope: &Scope,
        group: &GroupReq,
        model: Option<ModelId>,
    ) -> Walk {
        let kind = match (scope, group.accel, model) {
            (Scope::Node(n), _, _) => WalkKind::List(vec![*n]),
            (Scope::Nodes(list), _, _) => WalkKind::List(list.to_vec()),
            (Scope::Sites(_), AccelReq::None, _) | (Scope::Sites(_), _, None) => WalkKind::Any,
            (Scope::Sites(_), AccelReq::Whole(k), Some(m)) => WalkKind::Whole(k, m),
            (Scope::Sites(_), AccelReq::Milli(_), Some(m)) => WalkKind::Milli(m),
        };
        let mut sites = Vec::new();
        let mut idle_ok = 0u64;
        if let Scope::Sites(scope_sites) = scope {
            let n_sites = cluster.sites.len() as u16;
            // A site without power for even the cheapest such replica is skipped whole
            // rather than node by node; idle nodes only where the site can also power an
            // idle node's base load.
            for s in SiteSet(at.req.shape.sites.0 & scope_sites.0)
                .iter()
                .take_while(|&s| s < n_sites)
            {
                let site = &cluster.sites[s as usize];
                let least_w = model.map_or(0, |m| {
                    group.accel.milli().min(1000) * cluster.model_device_w[m as usize] / 1000
                });
                let held = at
                    .reservation
                    .and_then(|r| r.site_w.get(&s))
                    .copied()
                    .unwrap_or(0);
                if site.facility_w(site.it_w + least_w + held) > site.budget_w {
                    at.misses.add(Blocker::SitePower);
                    continue;
                }
                sites.push(s);
                let idle_w = least_w + model.map_or(0, |m| cluster.min_base_w(s, m));
                if site.facility_w(site.it_w + idle_w + held) <= site.budget_w {
                    idle_ok |= 1 << s;
                } else {
                    at.misses.add(Blocker::SitePower);
                }
            }
        }
        let level = match kind {
            WalkKind::Whole(k, _) => k as usize,
            _ => 1,
        };
        Walk {
            kind,
            sites,
            idle_ok,
            levels: false,
            level,
            si: 0,
            idle: false,
            last: None,
            pos: 0,
            buf: Vec::new(),
            buf_pos: 0,
            max_level: cluster.max_devices as usize,
        }
    }

    /// The best node for the next replica, its score and its devices. Candidates still
    /// feasible from the previous replica are scored again; the walk only goes on to top them
    /// up, so a 64-replica gang walks the index once, not 64 times.
    fn best_node(
        &self,
        cluster: &Cluster,
        at: &mut Attempt,
        search: &mut Search,
        group: &GroupReq,
        model: Option<ModelId>,
    ) -> Option<Best> {
        search.walk.forget_read_ahead();
        let limit = self.score_candidates.max(1);
        let mut best: Option<(f64, u64, NodeIdx, u64)> = None;
        let mut feasible: Vec<NodeIdx> = Vec::with_capacity(limit.min(64));
        // Nodes already considered for this replica: a bitmap once many are scored.
        let mut seen: Vec<u64> = if limit > 64 {
            vec![0; cluster.nodes.len().div_ceil(64)]
        } else {
            Vec::new()
        };
        let mut memo = self
            .scorers
            .iter()
            .any(|(s, _)| s.memoises())
            .then(|| self.profile.memo.lock());
        let mut consider = |n: NodeIdx, at: &mut Attempt, feasible: &mut Vec<NodeIdx>| {
            self.visited.set(self.visited.get() + 1);
            match self.check(cluster, at, n, group, model) {
                Err(b) => at.misses.add(b),
                Ok(delta_w) => {
                    let slots = memo.as_mut().and_then(|m| {
                        m.slots(cluster, n, group.accel, group.cpu_milli, group.mem_mib)
                    });
                    let mut input = self.input(cluster, at, n, group, model, delta_w);
                    input.memo = slots.as_ref();
                    let score: f64 = self.scorers.iter().map(|(s, w)| w * s.score(&input)).sum();
                    let tie = mix64(self.seed, n as u64);
                    let better = match &best {
                        None => true,
                        Some((bs, bt, _, _)) => score > *bs || (score == *bs && tie < *bt),
                    };
                    if better {
                        best = Some((score, tie, n, delta_w));
                    }
                    feasible.push(n);
                }
            }
        };
        for n in std::mem::take(&mut search.live) {
            if let Some(word) = seen.get_mut(n as usize / 64) {
                *word |= 1 << (n % 64);
            }
            consider(n, at, &mut feasible);
        }
        while feasible.len() < limit {
            let Some(n) = search.walk.next(cluster, limit - feasible.len()) else {
                break;
            };
            let new = match seen.get_mut(n as usize / 64) {
                Some(word) => {
                    let bit = 1u64 << (n % 64);
                    let new = *word & bit == 0;
                    *word |= bit;
                    new
                }
                None => !feasible.contains(&n),
            };
            if new {
                consider(n, at, &mut feasible);
            }
        }
        search.live = feasible;
        drop(memo);
        let (score, tie, n, delta_w) = best?;
        // A scorer may choose the devices (FGD, random); otherwise best fit.
        let input = self.input(cluster, at, n, group, model, delta_w);
        let devices = self
            .scorers
            .iter()
            .find_map(|(s, _)| s.devices(&input))
            .or_else(|| pick_devices(&cluster.nodes[n as usize].used_milli, group.accel))?;
        Some(Best {
            score,
            tie,
            node: n,
            devices,
        })
    }

    fn input<'c>(
        &'c self,
        cluster: &'c Cluster,
        at: &'c Attempt,
        n: NodeIdx,
        group: &GroupReq,
        model: Option<ModelId>,
        delta_w: u64,
    ) -> ScoreInput<'c> {
        ScoreInput {
            cluster,
            node: n,
            model,
            req: group.accel,
            cpu_milli: group.cpu_milli,
            mem_mib: group.mem_mib,
            models: group.models,
            job: at.req.job,
            placed: &at.placed_nodes,
            profile: self.profile,
            delta_w,
            memo: None,
        }
    }

    /// The filters, in order from cheapest: the devices the replica would take and the extra
    /// draw, or what stopped it.
    fn check(
        &self,
        cluster: &Cluster,
        at: &Attempt,
        n: NodeIdx,
        group: &GroupReq,
        model: Option<ModelId>,
    ) -> Result<u64, Blocker> {
        let node = &cluster.nodes[n as usize];
        if node.state != NodeState::Up || !at.req.shape.sites.contains(node.site) {
            return Err(Blocker::Topology);
        }
        if model.is_some() && node.model != model {
            return Err(Blocker::Accelerators);
        }
        if !devices_fit(&node.used_milli, node.free_whole, group.accel) {
            return Err(Blocker::Accelerators);
        }
        if node.cpu_free_milli < group.cpu_milli {
            return Err(Blocker::Cpu);
        }
        if node.mem_free_mib < group.mem_mib {
            return Err(Blocker::Memory);
        }
        let rules = at.req.shape.rules.as_deref();
        crate::constraints::node_admits(node, rules, group.accel != AccelReq::None)?;
        if let Some(r) = rules.filter(|r| r.counts_replicas()) {
            crate::constraints::count_admits(cluster, n, r, at.req.group_use, &at.placed_nodes)?;
        }
        if let Some(res) = at.reservation
            && let Some(slack) = res.slack.get(&n)
        {
            let used = at.slack_used.get(&n).copied().unwrap_or_default();
            if used.accel_milli + slack_accel(group.accel) > slack.accel_milli
                || used.cpu_milli + group.cpu_milli > slack.cpu_milli
                || used.mem_mib + group.mem_mib > slack.mem_mib
            {
                return Err(Blocker::Reservation);
            }
        }
        let delta_w = cluster.draw_delta(n, group.accel.milli());
        let (held_rack_w, held_site_w) = at.reservation.map_or((0, 0), |r| {
            (
                r.rack_w.get(&node.rack).copied().unwrap_or(0),
                r.site_w.get(&node.site).copied().unwrap_or(0),
            )
        });
        cluster
            .power_fits_holding(n, delta_w, held_rack_w, held_site_w)
            .map_err(|b| match b {
                PowerBlock::Rack => Blocker::RackPower,
                PowerBlock::Site => Blocker::SitePower,
            })?;
        Ok(delta_w)
    }
}

/// The node chosen for a replica.
struct Best {
    score: f64,
    /// The seeded tie-break: among equal scores the smallest wins.
    tie: u64,
    node: NodeIdx,
    devices: Vec<u8>,
}

impl Best {
    fn beats(&self, other: &Best) -> bool {
        self.score > other.score || (self.score == other.score && self.tie < other.tie)
    }
}

/// One group's candidate search across its replicas.
struct Search {
    walk: Walk,
    /// Feasible candidates found for the previous replica.
    live: Vec<NodeIdx>,
}

enum WalkKind {
    List(Vec<NodeIdx>),
    Any,
    Whole(u16, ModelId),
    Milli(ModelId),
}

/// A resumable walk over the index in best-fit order: for whole devices, buckets from the
/// smallest sufficient free count upwards, per site busy nodes before idle ones; for a
/// fraction, nodes with a partly used device first. It resumes after the last node it gave,
/// so nodes that move between buckets while a gang is placed are not given twice in a row.
struct Walk {
    kind: WalkKind,
    sites: Vec<u16>,
    idle_ok: u64,
    /// Past the partly-used (or any-node) stage.
    levels: bool,
    level: usize,
    max_level: usize,
    si: usize,
    idle: bool,
    last: Option<NodeIdx>,
    pos: usize,
    /// Nodes read ahead from the current set, after `last`.
    buf: Vec<NodeIdx>,
    buf_pos: usize,
}

/// Most nodes a walk reads ahead from one index set.
const WALK_BATCH: usize = 64;

impl Walk {
    /// Forgets the nodes read ahead: the cluster changed since (a replica was placed), so
    /// the walk reads on from the last node it gave.
    fn forget_read_ahead(&mut self) {
        self.buf.clear();
        self.buf_pos = 0;
    }

    /// The next node; `wanted` says how many more the caller expects to take, so that a
    /// bounded search reads no further ahead than it may use (the read-ahead is forgotten
    /// at every replica).
    fn next(&mut self, cluster: &Cluster, wanted: usize) -> Option<NodeIdx> {
        let batch = wanted.clamp(1, WALK_BATCH);
        use std::ops::Bound::{Excluded, Unbounded};
        loop {
            if let Some(&n) = self.buf.get(self.buf_pos) {
                self.buf_pos += 1;
                self.last = Some(n);
                return Some(n);
            }
            let set = match &self.kind {
                WalkKind::List(list) => {
                    let n = list.get(self.pos).copied();
                    self.pos += 1;
                    return n;
                }
                _ if self.si >= self.sites.len() => return None,
                WalkKind::Any => cluster.index.any(self.sites[self.si]),
                WalkKind::Milli(m) if !self.levels => {
                    cluster.index.partial(self.sites[self.si], *m)
                }
                WalkKind::Whole(_, m) | WalkKind::Milli(m) => {
                    if self.level > self.max_level {
                        return None;
                    }
                    let b = &cluster.index.bucket(self.sites[self.si], *m)[self.level];
                    if self.idle { &b.idle } else { &b.busy }
                }
            };
            // The next few nodes of the set at once: a lookup in the set per node would
            // cost more than the filters when every feasible node is scored.
            self.buf.clear();
            self.buf_pos = 0;
            match self.last {
                None => self.buf.extend(set.iter().take(batch).copied()),
                Some(l) => self
                    .buf
                    .extend(set.range((Excluded(l), Unbounded)).take(batch).copied()),
            }
            if !self.buf.is_empty() {
                continue;
            }
            self.last = None;
            match self.kind {
                WalkKind::Any => self.si += 1,
                WalkKind::Milli(_) if !self.levels => {
                    self.si += 1;
                    if self.si == self.sites.len() {
                        (self.levels, self.si) = (true, 0);
                    }
                }
                _ => {
                    if !self.idle && self.idle_ok >> self.sites[self.si] & 1 == 1 {
                        self.idle = true;
                    } else {
                        self.idle = false;
                        self.si += 1;
                        if self.si == self.sites.len() {
                            self.si = 0;
                            self.level += 1;
                        }
                    }
                }
            }
        }
    }
}

/// A fractional replica may need a fresh device, so reservations count it as a whole one.
fn slack_accel(a: AccelReq) -> u64 {
    match a {
        AccelReq::None => 0,
        AccelReq::Whole(k) => k as u64 * 1000,
        AccelReq::Milli(_) => 1000,
    }
}

/// Whether a replica's devices are free on a node, without choosing them.
fn devices_fit(used: &[u16], free_whole: u16, accel: AccelReq) -> bool {
    match accel {
        AccelReq::None => true,
        AccelReq::Whole(k) => free_whole >= k,
        AccelReq::Milli(m) => used.iter().any(|&u| u + m <= 1000),
    }
}

/// Which devices a replica takes: whole requests the lowest-numbered free devices; a
/// fraction the fullest device it still fits on (best fit), else a free one.
pub fn pick_devices(used: &[u16], accel: AccelReq) -> Option<Vec<u8>> {
    match accel {
        AccelReq::None => Some(Vec::new()),
        AccelReq::Whole(k) => {
            let free: Vec<u8> = used
                .iter()
                .enumerate()
                .filter(|(_, u)| **u == 0)
                .map(|(i, _)| i as u8)
                .take(k as usize)
                .collect();
            (free.len() == k as usize).then_some(free)
        }
        AccelReq::Milli(m) => used
            .iter()
            .enumerate()
            .filter(|(_, u)| **u + m <= 1000)
            .max_by_key(|(i, u)| (**u, std::cmp::Reverse(*i)))
            .map(|(i, _)| vec![i as u8]),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum UnitKey {
    All,
    Site(u16),
    Domain(u32),
    Rack(u32),
    Node(NodeIdx),
}

/// Summed capacity per topology unit, used by admission to tell "never fits" from "not now".
pub fn unit_of(cluster: &Cluster, n: NodeIdx, level: Option<TopologyLevel>) -> u64 {
    let node = &cluster.nodes[n as usize];
    match level {
        None => 0,
        Some(TopologyLevel::Site) => node.site as u64,
        Some(TopologyLevel::ScaleUpDomain) => node.domain as u64,
        Some(TopologyLevel::Rack) => node.rack as u64,
        Some(TopologyLevel::Node) => n as u64,
    }
}

/// Replicas of `group` on `model` that node `n` could host if it were empty: the measure
/// admission sums to decide whether a job can ever run.
pub fn hostable_when_empty(
    cluster: &Cluster,
    n: NodeIdx,
    group: &GroupReq,
    model: Option<ModelId>,
) -> u64 {
    let node = &cluster.nodes[n as usize];
    if model.is_some() && node.model != model {
        return 0;
    }
    let by_accel = match group.accel {
        AccelReq::None => u64::MAX,
        AccelReq::Whole(k) => node.devices() as u64 / k as u64,
        AccelReq::Milli(m) => node.devices() as u64 * (1000 / m as u64),
    };
    let by_cpu = node
        .cpu_total_milli
        .checked_div(group.cpu_milli)
        .unwrap_or(u64::MAX);
    let by_mem = node
        .mem_total_mib
        .checked_div(group.mem_mib)
        .unwrap_or(u64::MAX);
    let h = by_accel.min(by_cpu).min(by_mem);
    if h == 0
        || h == u64::MAX
            && group.accel == AccelReq::None
            && group.cpu_milli == 0
            && group.mem_mib == 0
    {
        return h.min(1_000_000);
    }
    // One replica must fit the rack and site power on its own.
    let one_w =
        node.base_w + group.accel.milli().min(node.devices() as u64 * 1000) * node.device_w / 1000;
    let rack = &cluster.racks[node.rack as usize];
    let site = &cluster.sites[node.site as usize];
    if one_w > rack.cap_w || site.facility_w(one_w) > site.budget_w {
        return 0;
    }
    h.min(1_000_000)
}

/// Sums `per_node` by topology unit and returns the largest sum (or the total). With
/// `spread`, each rack's (or site's) part counts at most its cap.
pub fn largest_unit(
    cluster: &Cluster,
    nodes: impl Iterator<Item = NodeIdx>,
    level: Option<TopologyLevel>,
    spread: Option<(TopologyLevel, u32)>,
    per_node: impl Fn(NodeIdx) -> u64,
) -> u64 {
    // (topology unit, spread unit) -> replicas
    let mut sums: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for n in nodes {
        let v = per_node(n);
        if v > 0 {
            let node = &cluster.nodes[n as usize];
            let part = match spread {
                None => 0,
                Some((TopologyLevel::Site, _)) => node.site as u64,
                Some(_) => node.rack as u64,
            };
            *sums.entry((unit_of(cluster, n, level), part)).or_default() += v;
        }
    }
    let cap = spread.map_or(u64::MAX, |s| s.1 as u64);
    let mut units: BTreeMap<u64, u64> = BTreeMap::new();
    for ((unit, _), v) in sums {
        *units.entry(unit).or_default() += v.min(cap);
    }
    units.values().copied().max().unwrap_or(0)
}

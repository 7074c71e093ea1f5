//! Preemption: for a job that cannot start, which running preemptible jobs to stop so that
//! it can (priority class, tenants reclaiming their guarantee, attained service).

use super::*;

/// Most entries of the attained-service index one look for a victim reads, with learned
/// sizes (where an entry does not tell the job's level).
const LAS_VICTIM_PROBE: usize = 64;
/// Most running jobs one preemption search considers as victims.
const MAX_VICTIMS: usize = 256;
/// Most nodes a one-replica preemption looks at.
const MAX_PREEMPTION_NODES: usize = 64;
/// Most victims a preemption tries to spare after finding a sufficient set.
const MAX_SPARE_TRIES: usize = 4;

/// A running job's entry in `Engine::las_ready`: the time from which a first-level job of its
/// tenant and class may preempt it — once its attained service is past the first level's
/// bound and its attempt is past its protected time. A job of a higher level may preempt it
/// from then on too, once its level is higher still. With learned sizes a job's level may
/// rise and fall as it runs, so the entry counts from the end of its protected time only.
/// None for a job holding no accelerators (its service never grows) or a ladder of one level.
pub(super) fn las_ready_key(las: &Las, job: &Job) -> Option<LasReady> {
    let accel = job.accel_milli();
    if accel == 0 || las.levels < 2 {
        return None;
    }
    let earliest = job.started_s.saturating_add(las.protected_s(job.run_s));
    if las.learned_sizes {
        return Some((job.tenant, job.priority, earliest, job.id));
    }
    let crosses = job.started_s.saturating_add(
        las.bound_milli_s(0)
            .saturating_sub(job.attained_milli_s)
            .div_ceil(accel),
    );
    Some((job.tenant, job.priority, crosses.max(earliest), job.id))
}

/// (tenant, priority class, from when, job): see `las_ready_key`.
pub(super) type LasReady = (TenantIdx, PriorityClass, u64, JobId);

/// Replicas a rack or site could host by the index, and the least each would draw: for
/// `power_could_fit`.
#[derive(Default)]
struct Draws {
    /// Replicas that add only device draw: on busy nodes, and an idle node's after its first.
    cheap: u64,
    /// First replicas on idle nodes (they add the node's base draw too).
    first: u64,
    device_w: Option<u64>,
    base_w: Option<u64>,
}

impl Draws {
    fn add(&mut self, per_node: u64, device_w: u64, base_w: u64, idle: bool) {
        if per_node == 0 {
            return;
        }
        self.device_w = Some(self.device_w.map_or(device_w, |w| w.min(device_w)));
        if idle {
            self.cheap += per_node - 1;
            self.first += 1;
            self.base_w = Some(self.base_w.map_or(base_w, |w| w.min(base_w)));
        } else {
            self.cheap += per_node;
        }
    }

    /// The most replicas whose least draws, cheapest first, fit in `headroom_w`.
    fn hosted(&self, headroom_w: u64) -> u64 {
        let device_w = self.device_w.unwrap_or(0);
        if device_w == 0 {
            return self.cheap + self.first;
        }
        if headroom_w / device_w <= self.cheap {
            return headroom_w / device_w;
        }
        let left = headroom_w - self.cheap * device_w;
        let first_w = device_w.saturating_add(self.base_w.unwrap_or(0));
        self.cheap + self.first.min(left / first_w)
    }
}

/// A tentative placement kept to be taken again: the tasks and the reservation slack used.
type Tried = (Vec<Placed>, IdMap<NodeIdx, Slack>);

/// The most IT draw a site may add before its facility draw passes its budget (the check
/// `Cluster::power_fits_holding` makes, with nothing held).
fn site_it_headroom_w(site: &crate::cluster::Site) -> u64 {
    if site.pue_milli == 0 {
        return u64::MAX;
    }
    // The largest x with x × pue / 1000 (rounded down) at most the budget.
    let most = ((site.budget_w as u128 + 1) * 1000 - 1) / site.pue_milli as u128;
    (most.min(u64::MAX as u128) as u64).saturating_sub(site.it_w)
}

impl Engine {
    pub(super) fn could_preempt(&self, id: JobId) -> bool {
        let job = &self.jobs[&id];
        let lower = self
            .preemptible_running
            .first()
            .is_some_and(|&(p, _)| p < job.priority);
        lower || self.reclaim_models(id).is_some() || self.shorter_than_some_running(id)
    }

    /// Under `FairShareLas`: whether a running preemptible job of the same tenant and class
    /// is on a higher level than this pending job and has run its minimum time (and the
    /// job's last search that found no room is `retry_s` ago). With learned sizes, a look
    /// that found no victim (it reads up to `LAS_VICTIM_PROBE` jobs' levels) is not repeated
    /// for `retry_s` either, or until another running job's protected time ends if sooner.
    pub(super) fn las_victim_ready(&mut self, id: JobId) -> bool {
        let Some(las) = self.las() else {
            return false;
        };
        let job = &self.jobs[&id];
        let level = self.level_of(&las, job);
        if level + 1 >= las.levels || self.las_retry.get(&id).is_some_and(|&r| r > self.now_s) {
            return false;
        }
        let found = self
            .las_victims(job.tenant, job.priority, level)
            .next()
            .is_some();
        if !found && las.learned_sizes {
            // Again after retry_s, or as soon as another running job's protected time ends.
            let (t, p, now) = (job.tenant, job.priority, self.now_s);
            let next = self
                .las_ready
                .range((t, p, now + 1, JobId(0))..=(t, p, u64::MAX, JobId(u64::MAX)))
                .next()
                .map_or(u64::MAX, |k| k.2);
            let retry = now.saturating_add(las.retry_s).min(next);
            self.las_retry.insert(id, retry);
        }
        found
    }

    /// Under `FairShareLas`: the running jobs a job of tenant `t`, class `p` and level
    /// `level` may preempt now (higher level, past their protected time), from the index.
    fn las_victims(
        &self,
        t: TenantIdx,
        p: PriorityClass,
        level: u8,
    ) -> impl Iterator<Item = JobId> + '_ {
        let now = self.now_s;
        let las = self.las();
        // With learned sizes a job's level is not known from its index entry: look at a
        // bounded number, longest-protected first (a later pass looks again).
        let probe = if las.is_some_and(|l| l.learned_sizes) {
            LAS_VICTIM_PROBE
        } else {
            usize::MAX
        };
        self.las_ready
            .range((t, p, 0, JobId(0))..=(t, p, now, JobId(u64::MAX)))
            .take(probe)
            .map(|k| k.3)
            .filter(move |v| {
                las.is_some_and(|l| {
                    level == 0 && !l.learned_sizes || self.level_of(&l, &self.jobs[v]) > level
                })
            })
    }

    /// SRTF: whether some running job of the same class or lower has more time left.
    fn shorter_than_some_running(&self, id: JobId) -> bool {
        if !matches!(
            self.cfg.queue_policy,
            QueuePolicy::ShortestRemainingFirst { .. }
        ) {
            return false;
        }
        let job = &self.jobs[&id];
        let mine = job.remaining_s(self.now_s, self.cfg.default_runtime_s);
        self.preemptible_running
            .range(..=(job.priority, JobId(u64::MAX)))
            .any(|(_, v)| self.jobs[v].remaining_s(self.now_s, self.cfg.default_runtime_s) > mine)
    }

    /// Models on which the job's tenant may reclaim borrowed capacity for it: the whole job
    /// fits within the tenant's guarantee there.
    pub(super) fn reclaim_models(&self, id: JobId) -> Option<ModelSet> {
        let job = &self.jobs[&id];
        let tenant = &self.tenants[job.tenant as usize];
        let shape = &self.shapes[job.shape as usize];
        let mut all = ModelSet::default();
        for g in shape.groups.iter().filter(|g| g.accel != AccelReq::None) {
            let ok = g
                .models
                .iter()
                .filter(|&m| tenant.within_guarantee(m, g.accel_milli_total()))
                .fold(ModelSet::default(), ModelSet::with);
            if ok.is_empty() {
                return None;
            }
            all = ModelSet(all.0 | ok.0);
        }
        (!all.is_empty()).then_some(all)
    }

    /// Looks for the cheapest set of victims whose removal lets the job start; if found,
    /// preempts them and starts the job in the same breath, so the freed capacity cannot go
    /// to anyone else and nothing is preempted for a job that then does not start.
    pub(super) fn try_preempt(&mut self, id: JobId, out: &mut Vec<Decision>) -> bool {
        // Decided before any victim goes: preempting changes who outranks whom.
        let bound = self.bound_by_reservation(id);
        let job = &self.jobs[&id];
        let (priority, tenant) = (job.priority, job.tenant);
        let shape = &self.shapes[job.shape as usize];
        let reclaim = self.reclaim_models(id);
        let models = shape
            .groups
            .iter()
            .fold(ModelSet::default(), |s, g| ModelSet(s.0 | g.models.0));
        // Candidates: preemptible running work (of a lower class, unless reclaiming) with a
        // task where this job could run.
        let upto = if reclaim.is_some() {
            PriorityClass::Critical
        } else {
            priority
        };
        let now = self.now_s;
        let srtf = matches!(
            self.cfg.queue_policy,
            QueuePolicy::ShortestRemainingFirst { .. }
        );
        let mine = self.jobs[&id].remaining_s(now, self.cfg.default_runtime_s);
        let las = self.las();
        let my_level = las.map_or(0, |l| self.level_of(&l, &self.jobs[&id]));
        // Jobs of its own class are victims only when reclaiming or under SRTF; under LAS
        // the tenant's own ready jobs come from their index below.
        let own_class = reclaim.is_some() || srtf;
        let rules = shape.rules.as_deref();
        let fair = self.fair_share();
        let usable = |v: JobId| {
            self.jobs[&v].tasks.iter().any(|t| {
                let n = &self.cluster.nodes[t.hold.node as usize];
                shape.sites.contains(n.site)
                    && (models.is_empty() || n.model.is_some_and(|m| models.contains(m)))
                    && constraints::labels_match(n, rules)
                    && constraints::taints_tolerated(n, rules, !models.is_empty())
            })
        };
        // Lowest classes first; once enough victims are found, a class boundary ends the
        // search (victims of higher classes would sort after all of them).
        let mut cands: Vec<JobId> = Vec::new();
        let mut class = None;
        for &(p, v) in self.preemptible_running.range(..=(upto, JobId(u64::MAX))) {
            if class != Some(p) && cands.len() >= 2 * MAX_VICTIMS || !own_class && p >= priority {
                break;
            }
            class = Some(p);
            if usable(v) {
                cands.push(v);
            }
        }
        if las.is_some() && !own_class && my_level + 1 < las.map_or(0, |l| l.levels) {
            cands.extend(
                self.las_victims(tenant, priority, my_level)
                    .filter(|&v| usable(v))
                    .take(2 * MAX_VICTIMS),
            );
        }
        let mut victims: Vec<(PreemptReason, (PriorityClass, u64, JobId))> = cands
            .into_iter()
            .filter_map(|v| {
                let vj = &self.jobs[&v];
                if !vj.preemptible || vj.state != JobState::Running {
                    return None;
                }
                let cost = (now - vj.started_s + 1).saturating_mul(vj.accel_milli() + 1);
                let key = (vj.priority, cost, v);
                // Under fair share a higher class preempts only its own tenant's jobs; another
                // tenant's capacity is taken back only by reclaim, for a job within its
                // guarantee (below).
                if vj.priority < priority && (vj.tenant == tenant || !fair) {
                    return Some((PreemptReason::Priority { by: id }, key));
                }
                if srtf && vj.priority == priority {
                    // SRTF: the longest remaining go first.
                    let left = vj.remaining_s(now, self.cfg.default_runtime_s);
                    return (left > mine).then_some((
                        PreemptReason::ShorterRemaining { by: id },
                        (vj.priority, u64::MAX - left, v),
                    ));
                }
                if let Some(las) = las
                    && vj.priority == priority
                    && vj.tenant == tenant
                {
                    // LAS: the tenant's own jobs on a higher level that ran their minimum,
                    // the most attained service first.
                    let attained = vj.attained_now_milli_s(now);
                    let ready = self.level_of(&las, vj) > my_level
                        && now.saturating_sub(vj.started_s) >= las.protected_s(vj.run_s);
                    return ready.then_some((
                        PreemptReason::LeastAttained { by: id },
                        (vj.priority, u64::MAX - attained, v),
                    ));
                }
                let rm = reclaim?;
                let vt = &self.tenants[vj.tenant as usize];
                let borrowing = vj.tenant != tenant
                    && vj.tasks.iter().all(|t| {
                        t.model
                            .is_some_and(|m| rm.contains(m) && vt.is_borrowing(m, vj.accel_milli()))
                    });
                borrowing.then_some((PreemptReason::Reclaim { by: id }, key))
            })
            .collect();
        victims.sort_by_key(|v| v.1);
        // Reclaim may take a victim only while its tenant, after the victims before it, is
        // still borrowing what the victim holds.
        let mut released: BTreeMap<(TenantIdx, ModelId), u64> = BTreeMap::new();
        victims.retain(|(reason, (_, _, v))| {
            let vj = &self.jobs[v];
            let vt = &self.tenants[vj.tenant as usize];
            let milli = vj.accel_milli();
            let mut models: Vec<ModelId> = vj.tasks.iter().filter_map(|t| t.model).collect();
            models.dedup();
            let ok = !matches!(reason, PreemptReason::Reclaim { .. })
                || models.iter().all(|&m| {
                    let before = released.get(&(vj.tenant, m)).copied().unwrap_or(0);
                    vt.is_borrowing(m, before + milli)
                });
            if ok {
                for m in models {
                    *released.entry((vj.tenant, m)).or_default() += milli;
                }
            }
            ok
        });
        victims.truncate(MAX_VICTIMS);
        let single = matches!(&shape.groups[..], [g] if g.replicas == 1);
        let chosen = if single {
            self.victims_on_one_node(id, &victims, bound)
                .map(|c| (c, None))
        } else {
            self.victims_for_gang(id, &victims, bound)
                .map(|(c, tried)| (c, Some(tried)))
        };
        let Some((chosen, tried)) = chosen else {
            return false;
        };
        for &i in &chosen {
            let (reason, (_, _, v)) = victims[i].clone();
            self.preempt(v, reason, out);
        }
        // A gang's search ends on the cluster of its last successful tentative placement
        // (the chosen victims off their nodes, nothing else changed that placement reads),
        // so that placement is the one a new search would find: it is taken again.
        let placed = match tried {
            Some((placed, slack_used)) => {
                for p in &placed {
                    self.cluster.take(
                        &p.hold,
                        TaskRef {
                            job: id,
                            task: p.task,
                        },
                    );
                }
                Ok((placed, slack_used))
            }
            None => self.place_as(id, bound),
        };
        match placed {
            Ok((placed, slack_used)) => {
                self.start_placed(id, placed, slack_used, out);
                true
            }
            Err(_) => false,
        }
    }

    /// An upper bound from the index and power: whether each whole-device group of the job
    /// could have its replicas hosted within its racks' caps and its sites' budgets (in one
    /// unit, when its topology is required). A replica draws at least its devices' draw,
    /// and the first on an idle node the node's base draw too; so a rack (a site) hosts at
    /// most the replicas that, cheapest first, fit its headroom. Never says no when the
    /// job would fit, so a tentative placement it rules out would have failed: skipping it
    /// changes nothing. A job `bound` by the reservation leaves the power it holds alone.
    fn power_could_fit(&self, id: JobId, bound: bool) -> bool {
        let c = &self.cluster;
        let res = bound.then_some(&self.reservation);
        let shape = &self.shapes[self.jobs[&id].shape as usize];
        let required = shape
            .topology
            .filter(|t| t.mode == gosok_model::TopologyMode::Required)
            .map(|t| t.level);
        if required == Some(TopologyLevel::Node) {
            return true;
        }
        let n_sites = c.sites.len() as u16;
        let mut racks: BTreeMap<crate::ids::RackIdx, Draws> = BTreeMap::new();
        let mut domains: BTreeMap<u32, u64> = BTreeMap::new();
        // All replicas of a group go to nodes of one model (`Placer::place`): a group fits
        // only if it fits on some model alone.
        shape.groups.iter().all(|g| {
            let AccelReq::Whole(k) = g.accel else {
                return true;
            };
            let k = k.max(1) as u64;
            g.models.and(c.present_models).iter().any(|m| {
                let device_w = k * c.model_device_w[m as usize];
                // Replicas in all, and in the best single unit.
                let (mut all, mut best_unit) = (0u64, 0u64);
                for s in shape.sites.iter().take_while(|&s| s < n_sites) {
                    racks.clear();
                    domains.clear();
                    let mut site = Draws::default();
                    for (free, b) in c.index.bucket(s, m).iter().enumerate().skip(k as usize) {
                        let per_node = free as u64 / k;
                        for (set, idle) in [(&b.busy, false), (&b.idle, true)] {
                            for &n in set {
                                let node = &c.nodes[n as usize];
                                let base_w = if idle { node.base_w } else { 0 };
                                site.add(per_node, device_w, base_w, idle);
                                racks
                                    .entry(node.rack)
                                    .or_default()
                                    .add(per_node, device_w, base_w, idle);
                            }
                        }
                    }
                    if site.cheap + site.first == 0 {
                        continue;
                    }
                    let held_w = res.and_then(|r| r.site_w.get(&s)).copied().unwrap_or(0);
                    let by_site = site
                        .hosted(site_it_headroom_w(&c.sites[s as usize]).saturating_sub(held_w));
                    let mut by_racks = 0u64;
                    for (&r, d) in &racks {
                        let rack = &c.racks[r as usize];
                        let held_w = res.and_then(|res| res.rack_w.get(&r)).copied().unwrap_or(0);
                        let hosted = d.hosted(rack.cap_w.saturating_sub(rack.it_w + held_w));
                        by_racks = by_racks.saturating_add(hosted);
                        if required == Some(TopologyLevel::Rack) {
                            best_unit = best_unit.max(hosted.min(by_site));
                        }
                        *domains.entry(rack.domain).or_default() += hosted;
                    }
                    let in_site = by_racks.min(by_site);
                    all = all.saturating_add(in_site);
                    match required {
                        Some(TopologyLevel::Site) => best_unit = best_unit.max(in_site),
                        Some(TopologyLevel::ScaleUpDomain) => {
                            for &d in domains.values() {
                                best_unit = best_unit.max(d.min(by_site));
                            }
                        }
                        _ => {}
                    }
                }
                let most = if required.is_some() { best_unit } else { all };
                most >= g.replicas as u64
            })
        })
    }

    /// For a one-replica job, as Kubernetes does for a pod: on each node holding victims,
    /// the cheapest victims (cheapest first) that make the job fit there; the node where that
    /// costs least wins. No tentative placement is needed, only the node's own filters.
    /// Returns indices into `victims`; the state is unchanged.
    fn victims_on_one_node(
        &mut self,
        id: JobId,
        victims: &[(PreemptReason, (PriorityClass, u64, JobId))],
        bound: bool,
    ) -> Option<Vec<usize>> {
        let shape = &self.shapes[self.jobs[&id].shape as usize];
        let need: u64 = shape.groups.iter().map(|g| g.accel.milli()).sum();
        let mut by_node: BTreeMap<NodeIdx, Vec<usize>> = BTreeMap::new();
        // What the victims hold on each node: a node where even all of it with what is free
        // is too little is not tried.
        let mut held: BTreeMap<NodeIdx, u64> = BTreeMap::new();
        for (i, (_, (_, _, v))) in victims.iter().enumerate() {
            for t in self.jobs[v].tasks.iter().filter(|t| t.exit_code.is_none()) {
                if shape
                    .sites
                    .contains(self.cluster.nodes[t.hold.node as usize].site)
                {
                    let list = by_node.entry(t.hold.node).or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                    *held.entry(t.hold.node).or_default() +=
                        t.hold.devices.len() as u64 * t.hold.milli as u64;
                }
            }
        }
        // Nodes whose cheapest victim is cheapest first; a bounded number of them.
        let mut nodes: Vec<(u64, NodeIdx)> = by_node
            .iter()
            .map(|(&n, l)| (victims[l[0]].1.1, n))
            .collect();
        nodes.sort_unstable();
        nodes.truncate(MAX_PREEMPTION_NODES);
        let mut best: Option<(u64, Vec<usize>)> = None;
        for (_, n) in nodes {
            if self.cluster.nodes[n as usize].free_milli() + held[&n] < need {
                continue;
            }
            let mut freed = Vec::new();
            let mut cost = 0u64;
            for &i in &by_node[&n] {
                if best.as_ref().is_some_and(|b| cost >= b.0) {
                    break;
                }
                self.charge(victims[i].1.2, true);
                freed.push(i);
                cost = cost.saturating_add(victims[i].1.1);
                let job = &self.jobs[&id];
                let placer = new_placer(&self.scorers, &self.profile, &self.cfg);
                let request =
                    request_for(job, &self.shapes, &self.tenants, &self.group_uses, bound);
                if placer.fits_on(&self.cluster, &request, Some(&self.reservation), n) {
                    if best.as_ref().is_none_or(|b| cost < b.0) {
                        best = Some((cost, freed.clone()));
                    }
                    break;
                }
            }
            for &i in freed.iter().rev() {
                self.charge(victims[i].1.2, false);
            }
        }
        best.map(|b| b.1)
    }

    /// For a gang: the smallest cheapest-first prefix of `victims` that makes room (a binary
    /// search: freeing more never takes room away), then spare whom we can, most expensive
    /// first. Returns indices into `victims` and the last tentative placement that
    /// succeeded (made with exactly the chosen victims off their nodes); the state is
    /// unchanged. A tentative placement that bucket counts or site power rule out is not
    /// made: it would fail (`power_could_fit`), and most that fail on a power-bound highway
    /// fail for site power.
    fn victims_for_gang(
        &mut self,
        id: JobId,
        victims: &[(PreemptReason, (PriorityClass, u64, JobId))],
        bound: bool,
    ) -> Option<(Vec<usize>, Tried)> {
        let order: Vec<JobId> = victims.iter().map(|v| v.1.2).collect();
        // Free victims cheapest first until bucket counts say the gang could fit (cheap, no
        // placement), then confirm with real placements, freeing more while power or
        // topology still say no.
        let mut lo = 0;
        while lo < order.len() {
            self.charge(order[lo], true);
            lo += 1;
            if self.could_fit_now(id) {
                break;
            }
        }
        let mut step = 1;
        let mut tried = loop {
            if let Some(t) = self.try_place_kept(id, bound) {
                break t;
            }
            if lo == order.len() {
                for &v in order[..lo].iter().rev() {
                    self.charge(v, false);
                }
                return None;
            }
            let next = (lo + step).min(order.len());
            for &v in &order[lo..next] {
                self.charge(v, true);
            }
            lo = next;
            step *= 2;
        };
        // The victims of the prefix are off their nodes now.
        let prefix = &order[..lo];
        let mut keep = vec![false; prefix.len()];
        for k in (0..prefix.len()).rev().take(MAX_SPARE_TRIES) {
            self.charge(prefix[k], false);
            let fits = if self.could_fit_now(id) {
                self.try_place_kept(id, bound)
            } else {
                None
            };
            match fits {
                Some(t) => {
                    keep[k] = true;
                    tried = t;
                }
                None => self.charge(prefix[k], true),
            }
        }
        let chosen: Vec<usize> = (0..prefix.len()).filter(|&k| !keep[k]).collect();
        for &k in &chosen {
            self.charge(prefix[k], false);
        }
        Some((chosen, tried))
    }

    /// A tentative placement, undone, and kept if it succeeded; none is tried where
    /// `power_could_fit` says it would fail.
    fn try_place_kept(&mut self, id: JobId, bound: bool) -> Option<Tried> {
        if !self.power_could_fit(id, bound) {
            return None;
        }
        let (placed, slack_used) = self.place_as(id, bound).ok()?;
        for p in &placed {
            self.cluster.give(
                &p.hold,
                TaskRef {
                    job: id,
                    task: p.task,
                },
            );
        }
        Some((placed, slack_used))
    }
}

//! The invariants the engine promises, checked after every step by the tests.

use super::*;

impl Engine {
    /// Checks every invariant the engine promises; tests call it after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let c = &self.cluster;
        let mut pending = 0;
        let mut used: Vec<Vec<u32>> = c
            .nodes
            .iter()
            .map(|n| vec![0; n.used_milli.len()])
            .collect();
        let mut cpu = vec![0u64; c.nodes.len()];
        let mut mem = vec![0u64; c.nodes.len()];
        for j in self.jobs.values() {
            let queued = self.queues.contains(j.tenant, j.class, j.pending());
            match j.state {
                JobState::Pending => {
                    pending += 1;
                    if !queued || !j.tasks.is_empty() {
                        return Err(format!(
                            "pending job {} is not queued exactly as pending",
                            j.id
                        ));
                    }
                }
                JobState::Running => {
                    if queued {
                        return Err(format!("running job {} is still queued", j.id));
                    }
                    let shape = &self.shapes[j.shape as usize];
                    let want: u32 = shape.groups.iter().map(|g| g.replicas).sum();
                    if j.tasks.len() != want as usize {
                        return Err(format!(
                            "job {} runs {} of its {} tasks: a partial gang",
                            j.id,
                            j.tasks.len(),
                            want
                        ));
                    }
                    for t in j.tasks.iter().filter(|t| t.exit_code.is_none()) {
                        let n = &c.nodes[t.hold.node as usize];
                        if !shape.sites.contains(n.site) {
                            return Err(format!(
                                "job {} runs on {} outside its allowed sites",
                                j.id, n.name
                            ));
                        }
                        if let Some(m) = t.model
                            && n.model != Some(m)
                        {
                            return Err(format!("job {} has a task on the wrong model", j.id));
                        }
                        for &d in &t.hold.devices {
                            used[t.hold.node as usize][d as usize] += t.hold.milli as u32;
                        }
                        cpu[t.hold.node as usize] += t.hold.cpu_milli;
                        mem[t.hold.node as usize] += t.hold.mem_mib;
                    }
                    if let Some(top) = shape
                        .topology
                        .filter(|t| t.mode == gosok_model::TopologyMode::Required)
                    {
                        let units: BTreeSet<u64> = j
                            .tasks
                            .iter()
                            .map(|t| placement::unit_of(c, t.hold.node, Some(top.level)))
                            .collect();
                        if units.len() > 1 {
                            return Err(format!(
                                "job {} spans {} units of its required topology",
                                j.id,
                                units.len()
                            ));
                        }
                    }
                }
                _ => {
                    if queued || !j.tasks.is_empty() {
                        return Err(format!(
                            "finished job {} still holds resources or a queue place",
                            j.id
                        ));
                    }
                }
            }
        }
        if pending != self.queues.len() || self.queues.iter().count() != pending {
            return Err("pending count disagrees with the queues".into());
        }
        // Every pending job down the ladder is scheduled for promotion.
        let scheduled: BTreeSet<(JobId, u32)> =
            self.promotions.iter().map(|&(_, id, a)| (id, a)).collect();
        if let Some(las) = self.las()
            && las.promote_after_runs > 0
            && let Some(j) = self.jobs.values().find(|j| {
                j.state == JobState::Pending
                    && order::down_the_ladder(&las, j)
                    && !scheduled.contains(&(j.id, j.attempt))
            })
        {
            return Err(format!("job {} is down the ladder with no promotion", j.id));
        }
        if let Some(las) = self.las() {
            let want: BTreeSet<LasReady> = self
                .jobs
                .values()
                .filter(|j| j.preemptible && j.state == JobState::Running)
                .filter_map(|j| las_ready_key(&las, j))
                .collect();
            if want != self.las_ready {
                return Err("the attained-service index disagrees with the running jobs".into());
            }
        } else if !self.las_ready.is_empty()
            || !self.promotions.is_empty()
            || !self.las_retry.is_empty()
        {
            return Err("attained-service state kept without the ladder".into());
        }
        let mut rack_w = vec![0u64; c.racks.len()];
        let mut site_w = vec![0u64; c.sites.len()];
        for (i, n) in c.nodes.iter().enumerate() {
            for (d, &u) in used[i].iter().enumerate() {
                if u > 1000 || u != n.used_milli[d] as u32 {
                    return Err(format!(
                        "node {} device {d}: {u} thousandths held, {} recorded",
                        n.name, n.used_milli[d]
                    ));
                }
            }
            if cpu[i] > n.cpu_total_milli || n.cpu_free_milli != n.cpu_total_milli - cpu[i] {
                return Err(format!("node {}: CPU over-allocated or miscounted", n.name));
            }
            if mem[i] > n.mem_total_mib || n.mem_free_mib != n.mem_total_mib - mem[i] {
                return Err(format!(
                    "node {}: memory over-allocated or miscounted",
                    n.name
                ));
            }
            rack_w[n.rack as usize] += n.draw_w;
            site_w[n.site as usize] += n.draw_w;
        }
        // Every task a node keeps belongs to a running job and knows when it ends.
        for n in &c.nodes {
            for t in &n.tasks {
                let ok = self.jobs.get(&t.job).is_some_and(|j| {
                    j.state == JobState::Running && t.ends_s == j.ends_s(self.cfg.default_runtime_s)
                });
                if !ok {
                    return Err(format!(
                        "node {} keeps a stale task of job {}",
                        n.name, t.job
                    ));
                }
            }
        }
        // The index and the free-capacity sums agree with the nodes.
        let mut free = (
            vec![0u64; c.domains.len()],
            vec![0u64; c.racks.len()],
            vec![0u64; c.sites.len()],
        );
        for (i, n) in c.nodes.iter().enumerate() {
            let up = n.state == NodeState::Up;
            if let Some(m) = n.model {
                let listed =
                    c.index.bucket(n.site, m)[n.free_whole as usize].contains(i as NodeIdx);
                let partial = c.index.partial(n.site, m).contains(&(i as NodeIdx));
                if listed != up || partial != (up && n.has_partial()) {
                    return Err(format!("node {}: index out of date", n.name));
                }
            }
            if up {
                free.0[n.domain as usize] += n.free_milli();
                free.1[n.rack as usize] += n.free_milli();
                free.2[n.site as usize] += n.free_milli();
            }
        }
        let sums_agree = c
            .domains
            .iter()
            .zip(&free.0)
            .all(|(d, f)| d.free_milli == *f)
            && c.racks.iter().zip(&free.1).all(|(r, f)| r.free_milli == *f)
            && c.sites.iter().zip(&free.2).all(|(s, f)| s.free_milli == *f);
        if !sums_agree {
            return Err("free capacity per domain, rack or site miscounted".into());
        }
        for (r, rack) in c.racks.iter().enumerate() {
            if rack.it_w != rack_w[r] {
                return Err(format!("rack {}: draw miscounted", rack.name));
            }
        }
        for (s, site) in c.sites.iter().enumerate() {
            if site.it_w != site_w[s] {
                return Err(format!("site {}: draw miscounted", site.name));
            }
        }
        self.check_constraints()
    }

    /// No live task sits on a node its job's selector or tolerations exclude; no node, rack
    /// or site holds more of a job's replicas than its caps allow, nor more of a group's
    /// than the largest cap of the group's jobs there; the group counts are what runs.
    fn check_constraints(&self) -> Result<(), String> {
        let c = &self.cluster;
        let mut groups = GroupUses::new();
        // Per (tenant, group): the largest per-node and per-unit cap of its jobs on each
        // node, rack or site (the last job placed there had a cap at least the count).
        type Caps = BTreeMap<(TenantIdx, String), BTreeMap<(u8, u64), u32>>;
        let mut caps: Caps = BTreeMap::new();
        for j in self.jobs.values().filter(|j| j.state == JobState::Running) {
            let shape = &self.shapes[j.shape as usize];
            let rules = shape.rules.as_deref();
            let mut own = GroupUse::default();
            for t in j.tasks.iter().filter(|t| t.exit_code.is_none()) {
                let node = &c.nodes[t.hold.node as usize];
                let wants_accel = shape.groups[t.group as usize].accel != AccelReq::None;
                if let Err(b) = constraints::node_admits(node, rules, wants_accel) {
                    return Err(format!(
                        "job {} runs a task on node {} against its constraints ({b:?})",
                        j.id, node.name
                    ));
                }
                own.count(c, t.hold.node, false);
            }
            let Some(r) = rules else { continue };
            let spread_of = |u: &GroupUse| match r.spread {
                Some((TopologyLevel::Site, _)) => {
                    u.site.iter().map(|(&k, &v)| (k as u64, v)).collect()
                }
                Some(_) => u.rack.iter().map(|(&k, &v)| (k as u64, v)).collect(),
                None => Vec::new(),
            };
            if let Some(max) = r.max_per_node
                && own.node.values().any(|&v| v > max)
            {
                return Err(format!("job {} exceeds max_replicas_per_node", j.id));
            }
            if let Some((_, max)) = r.spread
                && spread_of(&own).iter().any(|&(_, v)| v > max)
            {
                return Err(format!("job {} exceeds its spread cap", j.id));
            }
            if let Some(g) = &r.group {
                let key = (j.tenant, g.clone());
                let total = groups.entry(key.clone()).or_default();
                let cap = caps.entry(key).or_default();
                let mut raise = |k: (u8, u64), m: Option<u32>| {
                    let e = cap.entry(k).or_default();
                    *e = (*e).max(m.unwrap_or(u32::MAX));
                };
                let (rack_cap, site_cap) = match r.spread {
                    Some((TopologyLevel::Site, m)) => (None, Some(m)),
                    Some((_, m)) => (Some(m), None),
                    None => (None, None),
                };
                for (&n, &v) in &own.node {
                    for _ in 0..v {
                        total.count(c, n, false);
                    }
                    let node = &c.nodes[n as usize];
                    raise((0, n as u64), r.max_per_node);
                    raise((1, node.rack as u64), rack_cap);
                    raise((2, node.site as u64), site_cap);
                }
            }
        }
        if groups != self.group_uses {
            return Err("the running replicas of groups are miscounted".into());
        }
        // The last job of a group placed in a unit saw fewer than its cap there, and the
        // jobs there now were all placed before it or are it: the count is within the
        // largest cap of the group's jobs in the unit.
        for (key, total) in &groups {
            let cap = &caps[key];
            let over = |kind: u8, counts: Vec<(u64, u32)>| {
                counts
                    .into_iter()
                    .any(|(u, v)| v > cap.get(&(kind, u)).copied().unwrap_or(u32::MAX))
            };
            let node: Vec<(u64, u32)> = total.node.iter().map(|(&k, &v)| (k as u64, v)).collect();
            let rack: Vec<(u64, u32)> = total.rack.iter().map(|(&k, &v)| (k as u64, v)).collect();
            let site: Vec<(u64, u32)> = total.site.iter().map(|(&k, &v)| (k as u64, v)).collect();
            if over(0, node) || over(1, rack) || over(2, site) {
                return Err(format!(
                    "group {:?} exceeds its anti-affinity or spread caps",
                    key.1
                ));
            }
        }
        Ok(())
    }

    /// Whether every rack and site is within its power cap (a lowered cap may leave
    /// non-preemptible work over it, which `Shed` reports).
    pub fn power_within_caps(&self) -> Result<(), String> {
        let c = &self.cluster;
        for r in &c.racks {
            if r.it_w > r.cap_w {
                return Err(format!(
                    "rack {} draws {} W over its {} W cap",
                    r.name, r.it_w, r.cap_w
                ));
            }
        }
        for (s, site) in c.sites.iter().enumerate() {
            let f = c.site_facility_draw_w(s as u16);
            if f > site.budget_w {
                return Err(format!(
                    "site {} draws {f} W over its {} W budget",
                    site.name, site.budget_w
                ));
            }
        }
        Ok(())
    }
}

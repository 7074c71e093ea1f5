//! Reservations: when the first job in line cannot start, find the earliest time it could,
//! from a time-indexed capacity profile of running work, and hold that capacity for it.
//!
//! Unlike a whole-node reservation, only what the job needs is held: a node's slack (what it
//! will have free at the reservation's start beyond the job's share) stays usable for jobs
//! that would run past the start.

use gosok_model::{ModelId, NodeState};

use crate::cluster::Cluster;
use crate::constraints::{self, GroupUse};
use crate::ids::{IdMap, JobId, ModelSet, NodeIdx, mix64};
use crate::job::{AccelReq, Shape};
use crate::placement::{Reservation, Slack, unit_of};

/// A group's earliest start, the topology unit it starts in, and the (time, node) slots used.
type Pick = (u64, u64, Vec<(u64, NodeIdx)>);

/// What ends when on one node.
struct Release {
    at_s: u64,
    whole: u64,
    cpu_milli: u64,
    mem_mib: u64,
}

/// A node's free capacity over time, from now.
struct Timeline {
    node: NodeIdx,
    now: (u64, u64, u64),
    releases: Vec<Release>,
}

impl Timeline {
    fn free_at(&self, t: u64, taken: (u64, u64, u64)) -> (u64, u64, u64) {
        let (mut a, mut c, mut m) = self.now;
        for r in self.releases.iter().take_while(|r| r.at_s <= t) {
            a += r.whole;
            c += r.cpu_milli;
            m += r.mem_mib;
        }
        (
            a.saturating_sub(taken.0),
            c.saturating_sub(taken.1),
            m.saturating_sub(taken.2),
        )
    }
}

fn hostable(free: (u64, u64, u64), accel: AccelReq, cpu: u64, mem: u64) -> u64 {
    let by_accel = match accel {
        AccelReq::None => u64::MAX,
        AccelReq::Whole(k) => free.0 / k as u64,
        AccelReq::Milli(_) => free.0,
    };
    let by_cpu = free.1.checked_div(cpu).unwrap_or(u64::MAX);
    let by_mem = free.2.checked_div(mem).unwrap_or(u64::MAX);
    by_accel.min(by_cpu).min(by_mem)
}

pub struct PlanInput<'a> {
    pub cluster: &'a Cluster,
    pub now_s: u64,
    pub grace_s: u64,
    pub seed: u64,
    /// Where the running replicas of the job's group are (`constraints.group`).
    pub group_use: Option<&'a GroupUse>,
    /// Plan running tasks to end at their runtime limits, not their estimates: a bound
    /// that holds, once estimates have proved wrong for this reservation.
    pub by_limits: bool,
}

/// The earliest start for `shape` and the slack left on the nodes it would use, or None if it
/// cannot start on up nodes even when everything running has ended.
pub fn plan(
    input: &PlanInput,
    job: JobId,
    shape: &Shape,
    allowed: ModelSet,
) -> Option<Reservation> {
    let cluster = input.cluster;
    let level = shape.topology.map(|t| t.level);
    let mut taken: IdMap<NodeIdx, (u64, u64, u64)> = IdMap::default();
    let rules = shape.rules.as_deref();
    // Replicas of this job per node and per spread unit so far (anti-affinity, spread).
    let mut replicas_on: IdMap<NodeIdx, u64> = IdMap::default();
    let mut replicas_in: std::collections::BTreeMap<u64, u64> = Default::default();
    let mut start_s = input.now_s;
    let mut unit_fixed: Option<u64> = None;
    let mut order: Vec<usize> = (0..shape.groups.len()).collect();
    order.sort_by_key(|&g| std::cmp::Reverse(shape.groups[g].accel.milli()));
    for g in order {
        let group = &shape.groups[g];
        let models: Vec<Option<ModelId>> = if group.accel == AccelReq::None {
            vec![None]
        } else {
            group.models.and(allowed).iter().map(Some).collect()
        };
        let mut best: Option<Pick> = None;
        let mut tl = Timeline {
            node: 0,
            now: (0, 0, 0),
            releases: Vec::new(),
        };
        for model in models {
            // Every (time, node) at which one more replica could be hosted.
            let mut slots: Vec<(u64, u64, NodeIdx, u64)> = Vec::new();
            for n in candidates(input, shape, model) {
                let unit = unit_of(cluster, n, level);
                if unit_fixed.is_some_and(|u| u != unit)
                    || constraints::node_admits(
                        &cluster.nodes[n as usize],
                        rules,
                        group.accel != AccelReq::None,
                    )
                    .is_err()
                {
                    continue;
                }
                // Replicas still allowed on this node by `max_replicas_per_node`.
                let per_node_cap = rules.and_then(|r| r.max_per_node).map_or(u64::MAX, |m| {
                    let running = input
                        .group_use
                        .and_then(|u| u.node.get(&n))
                        .copied()
                        .unwrap_or(0);
                    (m as u64)
                        .saturating_sub(running as u64 + replicas_on.get(&n).copied().unwrap_or(0))
                });
                timeline_into(input, n, &mut tl);
                let t0 = taken.get(&n).copied().unwrap_or_default();
                let tie = mix64(input.seed, n as u64);
                // Free capacity now, then after each release in time order.
                let mut free = tl.now;
                let mut had = 0u64;
                for i in 0..=tl.releases.len() {
                    let t = if i == 0 {
                        input.now_s
                    } else {
                        let r = &tl.releases[i - 1];
                        free.0 += r.whole;
                        free.1 += r.cpu_milli;
                        free.2 += r.mem_mib;
                        r.at_s
                    };
                    let avail = (
                        free.0.saturating_sub(t0.0),
                        free.1.saturating_sub(t0.1),
                        free.2.saturating_sub(t0.2),
                    );
                    let h = hostable(avail, group.accel, group.cpu_milli, group.mem_mib)
                        .min(group.replicas as u64)
                        .min(per_node_cap);
                    for _ in had..h {
                        slots.push((t, tie, n, unit));
                    }
                    had = had.max(h);
                    if had >= group.replicas as u64 {
                        break;
                    }
                }
            }
            let need = group.replicas as usize;
            if let Some((_, cap)) = rules.and_then(|r| r.spread) {
                // Earliest slots first, at most `cap` replicas per rack (or site) in all.
                slots.sort_unstable();
                let mut used = replicas_in.clone();
                slots.retain(|s| {
                    let part = constraints::spread_unit(cluster, s.2, rules);
                    let running = input.group_use.map_or(0, |u| {
                        let node = &cluster.nodes[s.2 as usize];
                        match rules.and_then(|r| r.spread) {
                            Some((gosok_model::TopologyLevel::Site, _)) => {
                                u.site.get(&node.site).copied().unwrap_or(0)
                            }
                            _ => u.rack.get(&node.rack).copied().unwrap_or(0),
                        }
                    }) as u64;
                    let c = used.entry(part).or_default();
                    if running + *c < cap as u64 {
                        *c += 1;
                        true
                    } else {
                        false
                    }
                });
            }
            if level.is_none() && slots.len() > need {
                // Only the `need` earliest matter: select, then sort just those.
                slots.select_nth_unstable(need - 1);
                slots.truncate(need);
            }
            slots.sort_unstable();
            // Per unit, the time its `need`-th slot opens; the earliest unit wins.
            let pick = if level.is_none() {
                (slots.len() >= need).then(|| {
                    (
                        slots[need - 1].0,
                        0u64,
                        slots[..need].iter().map(|s| (s.0, s.2)).collect::<Vec<_>>(),
                    )
                })
            } else {
                let mut per_unit: std::collections::BTreeMap<u64, Vec<(u64, NodeIdx)>> =
                    Default::default();
                let mut found: Option<(u64, u64)> = None;
                for s in &slots {
                    let v = per_unit.entry(s.3).or_default();
                    if v.len() < need {
                        v.push((s.0, s.2));
                        if v.len() == need && found.is_none_or(|(t, _)| s.0 < t) {
                            found = Some((s.0, s.3));
                            break;
                        }
                    }
                }
                found.map(|(t, u)| (t, u, per_unit.remove(&u).unwrap_or_default()))
            };
            if let Some((t, u, chosen)) = pick
                && best.as_ref().is_none_or(|b| t < b.0)
            {
                best = Some((t, u, chosen));
            }
        }
        let (t, unit, chosen) = best?;
        if level.is_some() {
            unit_fixed = Some(unit);
        }
        start_s = start_s.max(t);
        for (_, n) in chosen {
            *replicas_on.entry(n).or_default() += 1;
            *replicas_in
                .entry(constraints::spread_unit(cluster, n, rules))
                .or_default() += 1;
            let e = taken.entry(n).or_default();
            e.0 += match group.accel {
                AccelReq::Whole(k) => k as u64,
                AccelReq::Milli(_) => 1,
                AccelReq::None => 0,
            };
            e.1 += group.cpu_milli;
            e.2 += group.mem_mib;
        }
    }
    // Slack: what each reserved node has free at the start beyond the job's share.
    let mut slack = IdMap::default();
    let mut rack_w: IdMap<crate::ids::RackIdx, u64> = IdMap::default();
    let mut site_w: IdMap<crate::ids::SiteIdx, u64> = IdMap::default();
    let mut nodes: Vec<NodeIdx> = taken.keys().copied().collect();
    nodes.sort_unstable();
    for n in nodes {
        let tl = timeline(input, n);
        let t = taken[&n];
        let free = tl.free_at(start_s, t);
        slack.insert(
            n,
            Slack {
                accel_milli: free.0 * 1000,
                cpu_milli: free.1,
                mem_mib: free.2,
            },
        );
        // What the job would draw here (a fraction counted as a whole device).
        let node = &cluster.nodes[n as usize];
        let base = if node.tasks.is_empty() {
            node.base_w
        } else {
            0
        };
        let w = base + t.0 * node.device_w;
        *rack_w.entry(node.rack).or_default() += w;
        *site_w.entry(node.site).or_default() += w;
    }
    Some(Reservation {
        job: Some(job),
        start_s,
        slack,
        rack_w,
        site_w,
    })
}

/// Up nodes of `model` (any node for CPU-only work) in the job's sites.
fn candidates<'a>(
    input: &'a PlanInput,
    shape: &'a Shape,
    model: Option<ModelId>,
) -> impl Iterator<Item = NodeIdx> + 'a {
    let cluster = input.cluster;
    shape
        .sites
        .iter()
        .take_while(|&s| (s as usize) < cluster.sites.len())
        .flat_map(move |s| -> Box<dyn Iterator<Item = NodeIdx> + 'a> {
            match model {
                Some(m) => Box::new(
                    cluster
                        .index
                        .bucket(s, m)
                        .iter()
                        .flat_map(|b| b.iter().copied()),
                ),
                None => Box::new(cluster.index.any(s).iter().copied()),
            }
        })
}

fn timeline(input: &PlanInput, n: NodeIdx) -> Timeline {
    let mut tl = Timeline {
        node: n,
        now: (0, 0, 0),
        releases: Vec::new(),
    };
    timeline_into(input, n, &mut tl);
    tl
}

/// Fills `tl` with node `n`'s free capacity now and what frees up when, reusing its buffer.
fn timeline_into(input: &PlanInput, n: NodeIdx, tl: &mut Timeline) {
    let node = &input.cluster.nodes[n as usize];
    debug_assert!(node.state == NodeState::Up);
    tl.node = n;
    tl.now = (
        node.free_whole as u64,
        node.cpu_free_milli,
        node.mem_free_mib,
    );
    tl.releases.clear();
    tl.releases.extend(node.tasks.iter().map(|t| Release {
        at_s: if input.by_limits {
            t.limit_end_s(input.now_s, input.grace_s)
        } else {
            t.planned_end_s(input.now_s, input.grace_s)
        },
        whole: t.whole as u64,
        cpu_milli: t.cpu_milli,
        mem_mib: t.mem_mib,
    }));
    tl.releases.sort_unstable_by_key(|r| r.at_s);
}

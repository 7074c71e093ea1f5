//! `gosok plan capacity`: the smallest capacity that meets a wait target, found by replaying
//! the demand through the twin (the production engine on a virtual clock) at growing capacity.
//!
//! Capacity grows by whole servers in the (site, model) pairs given (every pair the cluster
//! has, by default), shared among them in proportion to what each has today, and never beyond
//! a site's power budget: a server counts at its maximum draw (base + accelerators × board
//! power), so the engine's power caps never bind earlier than they do today. The new servers
//! copy the shape of the site's existing servers of that model (CPUs, memory, base power,
//! labels) in new racks shaped like theirs.
//!
//! The search assumes that more capacity never makes the wait worse. It first doubles the
//! added servers until the target is met (or the budgets are reached), then narrows the
//! interval between the largest capacity that misses and the smallest that meets it. Each
//! round replays several capacities at once, one per thread; a capacity is never replayed
//! twice.

use std::collections::BTreeMap;

use serde::Serialize;

use gosok_model::{Catalog, ClusterSpec, NodeSpec, RackSpec, Tier};
use gosok_sim::WorkloadJob;

use crate::PlanError;
use crate::measure::{Measure, Measured, parallel};
use crate::search::{Bounds, smallest_good};
use crate::target::Target;

/// Where capacity may grow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Grow {
    pub site: String,
    pub model: String,
}

impl Grow {
    /// `site=pohang,model=H100`.
    pub fn parse(text: &str) -> Result<Grow, PlanError> {
        let (mut site, mut model) = (None, None);
        for part in text.split(',') {
            match part.trim().split_once('=') {
                Some(("site", v)) if !v.trim().is_empty() => site = Some(v.trim().to_string()),
                Some(("model", v)) if !v.trim().is_empty() => model = Some(v.trim().to_string()),
                _ => {
                    return Err(PlanError::usage(
                        "--grow",
                        format!("{text:?}: write site=NAME,model=MODEL"),
                    ));
                }
            }
        }
        match (site, model) {
            (Some(site), Some(model)) => Ok(Grow { site, model }),
            _ => Err(PlanError::usage(
                "--grow",
                format!("{text:?}: both site= and model= are needed"),
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CapacityInputs {
    /// The target, the tier it counts, the policy and seed of every replay.
    pub measure: Measure,
    /// Empty: every (site, model) the cluster has.
    pub grow: Vec<Grow>,
    /// At most this many times the servers a (site, model) has today are added.
    pub max_growth: f64,
    /// Replays run at once.
    pub threads: usize,
}

/// One (site, model) that grows: what it copies and how far it can go.
#[derive(Debug, Clone, Serialize)]
pub struct GrowSlot {
    pub site: String,
    pub model: String,
    pub servers_now: u64,
    pub accelerators_per_server: u64,
    /// Maximum draw of one new server (base + accelerators × board power), watts.
    pub server_max_w: u64,
    /// Most servers that can be added (power budget or --max-growth).
    pub max_added: u64,
    /// Why it stops there.
    pub limited_by: String,
    /// The site's power left for new servers (IT budget − the maximum draw of what is there).
    pub site_free_w: u64,
    #[serde(skip)]
    template: NodeSpec,
    #[serde(skip)]
    rack_template: RackSpec,
    #[serde(skip)]
    servers_per_rack: u64,
}

/// One replay of the search.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Servers added (negative: taken away) against today's cluster.
    pub added_servers: i64,
    #[serde(flatten)]
    pub run: Measured,
}

#[derive(Debug, Clone, Serialize)]
pub struct CapacityPlan {
    pub target: Target,
    pub tier: Option<Tier>,
    pub policy: String,
    pub jobs: u64,
    pub accelerators_now: u64,
    pub grow: Vec<GrowSlot>,
    /// Every capacity replayed, by size.
    pub curve: Vec<Point>,
    /// The smallest capacity that meets the target.
    pub answer: Point,
    /// Where adding servers stops paying: the point of the curve farthest below the chord from
    /// the smallest to the largest capacity replayed (Kneedle).
    pub knee: Option<Point>,
    pub replays: u64,
    pub wall_s: f64,
    pub notes: Vec<String>,
    /// The cluster file of the answer.
    #[serde(skip)]
    pub answer_cluster: ClusterSpec,
}

fn model_of(n: &NodeSpec) -> Option<&str> {
    n.accelerator.as_deref().filter(|_| n.accelerators > 0)
}

fn node_count(n: &NodeSpec) -> u64 {
    n.count.unwrap_or(1)
}

/// The slots capacity grows in, with their limits.
pub fn grow_slots(
    cluster: &ClusterSpec,
    catalog: &Catalog,
    grow: &[Grow],
    max_growth: f64,
) -> Result<Vec<GrowSlot>, PlanError> {
    let site_of_rack: BTreeMap<&str, &str> = cluster
        .rack
        .iter()
        .map(|r| (r.name.as_str(), r.site.as_str()))
        .collect();
    let board_w = |model: &str| {
        catalog
            .id(model)
            .map(|id| catalog.get(id).board_power_w as u64)
    };
    let max_draw =
        |n: &NodeSpec| n.base_power_w + model_of(n).and_then(board_w).unwrap_or(0) * n.accelerators;
    // Servers per (site, model) and each site's committed maximum draw.
    let mut now: BTreeMap<(String, String), (u64, &NodeSpec)> = BTreeMap::new();
    let mut site_draw_w: BTreeMap<&str, u64> = BTreeMap::new();
    for n in &cluster.node {
        let Some(site) = site_of_rack.get(n.rack.as_str()) else {
            continue;
        };
        *site_draw_w.entry(site).or_default() += max_draw(n) * node_count(n);
        if let Some(m) = model_of(n) {
            let canonical = catalog
                .id(m)
                .map_or(m.to_string(), |id| catalog.get(id).name.clone());
            let e = now.entry((site.to_string(), canonical)).or_insert((0, n));
            e.0 += node_count(n);
        }
    }
    let wanted: Vec<(String, String)> = if grow.is_empty() {
        now.keys().cloned().collect()
    } else {
        let mut v = Vec::new();
        for g in grow {
            if !cluster.site.iter().any(|s| s.name == g.site) {
                let names: Vec<&str> = cluster.site.iter().map(|s| s.name.as_str()).collect();
                return Err(PlanError::usage(
                    "--grow",
                    format!(
                        "site {:?} is not in the cluster (sites: {})",
                        g.site,
                        names.join(", ")
                    ),
                ));
            }
            let Some(id) = crate::site::model_id(catalog, &g.model) else {
                return Err(PlanError::usage(
                    "--grow",
                    format!("model {:?} is not in the accelerator catalog", g.model),
                ));
            };
            let key = (g.site.clone(), catalog.get(id).name.clone());
            if !now.contains_key(&key) {
                return Err(PlanError::usage(
                    "--grow",
                    format!(
                        "site {:?} has no {} server to copy; add one to the cluster file first",
                        key.0, key.1
                    ),
                ));
            }
            if !v.contains(&key) {
                v.push(key);
            }
        }
        v
    };
    if wanted.is_empty() {
        return Err(PlanError::usage(
            "--cluster",
            "the cluster has no accelerator servers to grow",
        ));
    }
    let mut slots = Vec::new();
    for (site, model) in wanted {
        let (servers_now, template) = now[&(site.clone(), model.clone())];
        let rack_template = cluster
            .rack
            .iter()
            .find(|r| r.name == template.rack)
            .cloned()
            .ok_or_else(|| PlanError::Sim(format!("rack {:?} is missing", template.rack)))?;
        let servers_per_rack = cluster
            .node
            .iter()
            .filter(|n| n.rack == template.rack)
            .map(node_count)
            .sum::<u64>()
            .max(1);
        let s = cluster
            .site
            .iter()
            .find(|s| s.name == site)
            .ok_or_else(|| PlanError::Sim(format!("site {site:?} is missing")))?;
        let it_budget_w = (s.power_budget_mw * 1e6 / s.pue) as u64;
        let server_max_w = max_draw(template).max(1);
        let committed = site_draw_w.get(site.as_str()).copied().unwrap_or(0);
        let site_free_w = it_budget_w.saturating_sub(committed);
        let by_power = site_free_w / server_max_w;
        let by_growth = (servers_now as f64 * max_growth).floor() as u64;
        let (max_added, limited_by) = if by_power <= by_growth {
            (
                by_power,
                format!(
                    "site {site} power budget ({} MW at PUE {})",
                    s.power_budget_mw, s.pue
                ),
            )
        } else {
            (by_growth, format!("--max-growth {max_growth}"))
        };
        slots.push(GrowSlot {
            site,
            model,
            servers_now,
            accelerators_per_server: template.accelerators,
            server_max_w,
            max_added,
            limited_by,
            site_free_w,
            template: template.clone(),
            rack_template,
            servers_per_rack,
        });
    }
    Ok(slots)
}

/// How a change of `delta` servers is shared among the slots. Growth goes a server at a time
/// to the slot furthest below its proportional share (what each has today), within each
/// site's power budget (slots of one site share it); shrinking takes a server at a time from
/// the slot that keeps the largest fraction, and leaves every slot at least one server.
pub fn share_out(slots: &[GrowSlot], delta: i64) -> Vec<i64> {
    let mut counts = vec![0i64; slots.len()];
    let now = |k: usize| slots[k].servers_now.max(1) as f64;
    if delta >= 0 {
        let mut site_left_w: BTreeMap<&str, u64> = slots
            .iter()
            .map(|s| (s.site.as_str(), s.site_free_w))
            .collect();
        for _ in 0..delta {
            let mut best: Option<(usize, f64)> = None;
            for (k, s) in slots.iter().enumerate() {
                if counts[k] as u64 >= s.max_added || site_left_w[s.site.as_str()] < s.server_max_w
                {
                    continue;
                }
                let fill = (counts[k] + 1) as f64 / now(k);
                if best.is_none_or(|(_, f)| fill < f) {
                    best = Some((k, fill));
                }
            }
            let Some((k, _)) = best else {
                break;
            };
            counts[k] += 1;
            if let Some(left) = site_left_w.get_mut(slots[k].site.as_str()) {
                *left -= slots[k].server_max_w;
            }
        }
    } else {
        for _ in 0..delta.unsigned_abs() {
            let mut best: Option<(usize, f64)> = None;
            for (k, s) in slots.iter().enumerate() {
                let left = s.servers_now as i64 + counts[k];
                if left <= 1 {
                    continue;
                }
                let keep = (left - 1) as f64 / now(k);
                if best.is_none_or(|(_, f)| keep > f) {
                    best = Some((k, keep));
                }
            }
            let Some((k, _)) = best else {
                break;
            };
            counts[k] -= 1;
        }
    }
    counts
}

/// The cluster with `counts[k]` servers added to (or, negative, taken from) slot k. Servers
/// are taken from the slot's last node entries first; new ones go into new racks shaped like
/// the template's.
pub fn grown_cluster(cluster: &ClusterSpec, slots: &[GrowSlot], counts: &[i64]) -> ClusterSpec {
    let mut c = cluster.clone();
    let site_of_rack: BTreeMap<String, String> = cluster
        .rack
        .iter()
        .map(|r| (r.name.clone(), r.site.clone()))
        .collect();
    for (s, &n) in slots.iter().zip(counts) {
        if n < 0 {
            let mut take = n.unsigned_abs();
            for node in c.node.iter_mut().rev() {
                if take == 0 {
                    break;
                }
                let here = site_of_rack
                    .get(&node.rack)
                    .is_some_and(|site| *site == s.site)
                    && node.accelerators == s.template.accelerators
                    && node.accelerator == s.template.accelerator;
                if !here {
                    continue;
                }
                let have = node_count(node);
                let cut = take.min(have);
                node.count = Some(have - cut);
                take -= cut;
            }
            c.node.retain(|n| n.count != Some(0));
            continue;
        }
        let mut left = n as u64;
        let mut r = 0;
        while left > 0 {
            let here = left.min(s.servers_per_rack);
            let rack = format!("plan-{}-{}-r{:03}", s.site, s.model, r);
            let mut rs = s.rack_template.clone();
            rs.name = rack.clone();
            rs.scale_up_domain = rs
                .scale_up_domain
                .as_ref()
                .map(|_| format!("{rack}-domain"));
            rs.max_nodes = None;
            c.rack.push(rs);
            let mut ns = s.template.clone();
            ns.name = format!("{rack}-n");
            ns.rack = rack;
            ns.count = Some(here);
            c.node.push(ns);
            left -= here;
            r += 1;
        }
    }
    c
}

/// The Kneedle point of a decreasing curve: the point farthest below the chord from the
/// first to the last point (`None` for fewer than three finite points).
pub fn knee_index(points: &[(f64, Option<f64>)]) -> Option<usize> {
    let pts: Vec<(usize, f64, f64)> = points
        .iter()
        .enumerate()
        .filter_map(|(k, (x, y))| y.map(|y| (k, *x, y)))
        .collect();
    if pts.len() < 3 {
        return None;
    }
    let (_, x0, y0) = pts[0];
    let (_, x1, y1) = pts[pts.len() - 1];
    if x1 <= x0 || y0 <= y1 {
        return None;
    }
    pts.iter()
        .map(|&(k, x, y)| (y0 + (y1 - y0) * (x - x0) / (x1 - x0) - y, k))
        .filter(|(gap, _)| *gap > 0.0)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Finds the smallest capacity that meets the target.
pub fn plan_capacity(
    cluster: &ClusterSpec,
    jobs: &[WorkloadJob],
    catalog: &Catalog,
    inputs: &CapacityInputs,
) -> Result<CapacityPlan, PlanError> {
    let started = std::time::Instant::now();
    if !(inputs.max_growth.is_finite() && inputs.max_growth > 0.0) {
        return Err(PlanError::usage(
            "--max-growth",
            format!("{} is not a positive factor", inputs.max_growth),
        ));
    }
    if jobs.is_empty() {
        return Err(PlanError::usage("--workload", "the workload has no jobs"));
    }
    let slots = grow_slots(cluster, catalog, &inputs.grow, inputs.max_growth)?;
    let measure = &inputs.measure;
    let counted = measure.counted(cluster);
    if counted.is_empty() {
        return Err(PlanError::usage(
            "--tier",
            "no tenant of the cluster has this tier",
        ));
    }
    if !jobs.iter().any(|j| counted.contains(&j.tenant)) {
        return Err(PlanError::usage(
            "--tier",
            "the workload has no job of a tenant of this tier",
        ));
    }
    let max_total: i64 = share_out(&slots, i64::MAX / 4).iter().sum();
    let min_total: i64 = share_out(&slots, -(i64::MAX / 4)).iter().sum();
    let servers_now: u64 = slots.iter().map(|s| s.servers_now).sum();
    let bounds = Bounds {
        start: 0,
        step: (servers_now as i64 / 10).max(1),
        min: min_total,
        max: max_total,
        resolution: (servers_now as i64 / 100).max(1),
        threads: inputs.threads,
        lean: 1,
    };
    let eval = |xs: &[i64]| -> Result<Vec<Point>, PlanError> {
        parallel(xs, inputs.threads, &|&delta| {
            let counts = share_out(&slots, delta);
            let c = grown_cluster(cluster, &slots, &counts);
            Ok(Point {
                added_servers: counts.iter().sum(),
                run: measure.run(&c, jobs, catalog)?,
            })
        })
    };
    let found = smallest_good(&bounds, &eval, &|p: &Point| p.run.met)?;
    let done = found.done;
    let mut notes = Vec::new();
    let Some(answer_add) = found.answer else {
        let p = &done[&max_total];
        return Err(PlanError::usage(
            "--target",
            format!(
                "{} cannot be met: with {} servers added ({} accelerators, the most the power budgets and --max-growth allow: {}) the statistic is {}",
                measure.target.text,
                max_total,
                p.run.accelerators,
                slots
                    .iter()
                    .map(|s| format!("{}/{} +{} ({})", s.site, s.model, s.max_added, s.limited_by))
                    .collect::<Vec<_>>()
                    .join("; "),
                p.run
                    .target_wait_s
                    .map_or("infinite (jobs never finish)".to_string(), |w| format!(
                        "{w:.0} s"
                    ))
            ),
        ));
    };
    if found.good_at_min {
        notes.push(
            "even the smallest capacity the search may leave (one server per site and model) meets the target"
                .into(),
        );
    }
    let good_below = done
        .iter()
        .filter(|(a, p)| **a < answer_add && p.run.met)
        .count();
    if good_below > 0 {
        notes.push(format!(
            "{good_below} smaller capacities also met the target although a larger one missed it: waits are not monotone in capacity here (scheduling anomalies); the answer is the smallest capacity above every miss"
        ));
    }
    let answer = done[&answer_add].clone();
    let curve: Vec<Point> = done.values().cloned().collect();
    let refs: Vec<&Point> = curve.iter().collect();
    let counts = share_out(&slots, answer_add);
    let answer_cluster = grown_cluster(cluster, &slots, &counts);
    let accelerators_now = done[&0].run.accelerators;
    Ok(CapacityPlan {
        target: measure.target.clone(),
        tier: measure.tier,
        policy: measure.policy.name().to_string(),
        jobs: jobs.len() as u64,
        accelerators_now,
        grow: slots,
        knee: knee_index(
            &refs
                .iter()
                .map(|p| (p.run.accelerators as f64, p.run.target_wait_s))
                .collect::<Vec<_>>(),
        )
        .map(|k| refs[k].clone()),
        replays: curve.len() as u64,
        curve,
        answer,
        wall_s: started.elapsed().as_secs_f64(),
        notes,
        answer_cluster,
    })
}

/// The curve as CSV.
pub fn curve_csv(plan: &CapacityPlan) -> String {
    let mut s = String::from(
        "added_servers,accelerators,target_wait_s,met,avg_wait_s,p95_wait_s,jobs_never_finished,utilization,energy_kwh\n",
    );
    let opt = |v: Option<f64>| v.map_or("inf".to_string(), |v| format!("{v:.0}"));
    for p in &plan.curve {
        s.push_str(&format!(
            "{},{},{},{},{:.0},{},{},{:.4},{:.1}\n",
            p.added_servers,
            p.run.accelerators,
            opt(p.run.target_wait_s),
            p.run.met,
            p.run.avg_wait_s,
            opt(p.run.p95_wait_s),
            p.run.jobs_never_finished,
            p.run.utilization,
            p.run.energy_kwh
        ));
    }
    s
}

/// A readable summary.
pub fn table(plan: &CapacityPlan) -> String {
    let h = |v: Option<f64>| v.map_or("never".to_string(), gosok_sim::report::human_s);
    let mut s = format!(
        "target {} ({} jobs{}), policy {}\n",
        plan.target.text,
        plan.jobs,
        plan.tier
            .map_or(String::new(), |t| format!(", tenants of tier {t:?}")),
        plan.policy
    );
    s.push_str("grows in:\n");
    for g in &plan.grow {
        s.push_str(&format!(
            "  {}/{}: {} servers × {} now, up to +{} ({})\n",
            g.site, g.model, g.servers_now, g.accelerators_per_server, g.max_added, g.limited_by
        ));
    }
    s.push_str(&format!(
        "{:>8} {:>13} {:>12} {:>5} {:>12} {:>12} {:>10} {:>6}\n",
        "+servers",
        "accelerators",
        "target stat",
        "met",
        "avg wait",
        "p95 wait",
        "unfinished",
        "util"
    ));
    for p in &plan.curve {
        s.push_str(&format!(
            "{:>8} {:>13} {:>12} {:>5} {:>12} {:>12} {:>10} {:>5.1}%\n",
            p.added_servers,
            p.run.accelerators,
            h(p.run.target_wait_s),
            if p.run.met { "yes" } else { "no" },
            gosok_sim::report::human_s(p.run.avg_wait_s),
            h(p.run.p95_wait_s),
            p.run.jobs_never_finished,
            p.run.utilization * 100.0
        ));
    }
    s.push_str(&format!(
        "answer: {} accelerators ({} servers; today {}): {} = {}\n",
        plan.answer.run.accelerators,
        crate::chart::signed(plan.answer.added_servers),
        plan.accelerators_now,
        plan.target.text,
        h(plan.answer.run.target_wait_s)
    ));
    if let Some(k) = &plan.knee {
        s.push_str(&format!(
            "knee: {} accelerators ({} servers), statistic {}\n",
            k.run.accelerators,
            crate::chart::signed(k.added_servers),
            h(k.run.target_wait_s)
        ));
    }
    s.push_str(&format!(
        "{} replays in {:.1} s\n",
        plan.replays, plan.wall_s
    ));
    for n in &plan.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}

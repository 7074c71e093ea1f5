//! `gosok plan headroom`: how much demand a cluster sustains before a wait target is missed.
//!
//! The demand is the model of `demand` (fitted from a workload, tiers of tenants with their
//! growth); the search scales its arrival rate and replays each scale through the twin on the
//! fixed cluster, and finds the largest scale that still meets the target. With a yearly
//! growth rate it also says how many years of that growth the cluster absorbs.

use serde::Serialize;

use gosok_model::{Catalog, ClusterSpec};

use crate::PlanError;
use crate::demand::{self, DemandInputs, Fitted};
use crate::measure::{Measure, Measured, parallel};
use crate::search::{Bounds, smallest_good};
use crate::target::Target;

/// Scales are searched in hundredths.
const PERCENT: f64 = 100.0;

#[derive(Debug, Clone, Serialize)]
pub struct ScalePoint {
    /// The fitted arrival rate is multiplied by this.
    pub scale: f64,
    pub jobs: u64,
    pub accelerator_hours_per_day: f64,
    #[serde(flatten)]
    pub run: Measured,
}

#[derive(Debug, Clone, Serialize)]
pub struct Headroom {
    pub target: Target,
    pub days: f64,
    pub seed: u64,
    pub fitted_jobs_per_day: f64,
    pub fitted_accelerator_hours_per_day: f64,
    /// Every scale replayed, smallest first.
    pub curve: Vec<ScalePoint>,
    /// The largest scale that meets the target.
    pub answer: ScalePoint,
    /// Years of `growth_per_year` until demand reaches `answer.scale` (from scale 1).
    pub growth_per_year: Option<f64>,
    pub years: Option<f64>,
    pub wall_s: f64,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct HeadroomInputs {
    /// The demand (its `scale` is what the search varies).
    pub demand: DemandInputs,
    pub measure: Measure,
    pub threads: usize,
    /// The largest scale tried.
    pub max_scale: f64,
    /// To say how many years of this growth the headroom lasts.
    pub growth_per_year: Option<f64>,
}

/// Finds the largest demand scale in (0, `max_scale`] that meets the target.
pub fn plan_headroom(
    cluster: &ClusterSpec,
    fitted: &Fitted,
    catalog: &Catalog,
    inputs: &HeadroomInputs,
) -> Result<Headroom, PlanError> {
    let started = std::time::Instant::now();
    let (demand_inputs, measure, threads) = (&inputs.demand, &inputs.measure, inputs.threads);
    let (max_scale, growth_per_year) = (inputs.max_scale, inputs.growth_per_year);
    if !(0.01..=10_000.0).contains(&max_scale) {
        return Err(PlanError::usage(
            "--max-scale",
            format!("{max_scale} is not in [0.01, 10000]"),
        ));
    }
    if let Some(g) = growth_per_year
        && !(g.is_finite() && g > 0.0)
    {
        return Err(PlanError::usage(
            "--growth-per-year",
            format!("{g} is not a positive growth rate"),
        ));
    }
    // Demand beyond what the cluster can serve at all cannot be sustained: past the scale
    // whose offered accelerator-hours equal the cluster's, the backlog grows without bound,
    // whatever a finite replay's statistic says (a preemptive order keeps serving short jobs
    // first, so a percentile over all jobs can stay low while the long ones wait for weeks).
    // So the search stops at that scale.
    let accelerators: f64 = cluster
        .node
        .iter()
        .filter(|n| n.state == gosok_model::NodeState::Up)
        .map(|n| (n.accelerators * n.count.unwrap_or(1)) as f64)
        .sum();
    let saturation = accelerators * 24.0 / fitted.accelerator_hours_per_day.max(1e-9);
    let mut notes = Vec::new();
    let limit = if saturation < max_scale {
        notes.push(format!(
            "searched up to {saturation:.2} ×, where the demand's accelerator-hours equal what the cluster's {accelerators:.0} accelerators can serve; beyond it the backlog grows without bound"
        ));
        saturation
    } else {
        max_scale
    };
    // x = −scale in hundredths: the smallest good x is the largest scale that meets the target.
    let max_x = -1;
    let min_x = -((limit * PERCENT).round() as i64).max(1);
    let bounds = Bounds {
        start: (-100i64).clamp(min_x, max_x),
        step: 50,
        min: min_x,
        max: max_x,
        resolution: 2,
        threads,
        lean: -1,
    };
    let eval = |xs: &[i64]| -> Result<Vec<ScalePoint>, PlanError> {
        parallel(xs, threads, &|&x| {
            let scale = -x as f64 / PERCENT;
            let d = demand::generate(
                fitted.clone(),
                &DemandInputs {
                    scale,
                    ..demand_inputs.clone()
                },
            )?;
            let c = demand::cluster_with_tenants(cluster, &d);
            Ok(ScalePoint {
                scale,
                jobs: d.jobs,
                accelerator_hours_per_day: d.accelerator_hours_per_day,
                run: measure.run(&c, &d.workload, catalog)?,
            })
        })
    };
    let found = smallest_good(&bounds, &eval, &|p: &ScalePoint| p.run.met)?;
    let Some(x) = found.answer else {
        return Err(PlanError::usage(
            "--target",
            format!(
                "{} is missed even at 1 % of the fitted demand: the cluster cannot meet it (check that the jobs fit its servers)",
                measure.target.text
            ),
        ));
    };
    if found.good_at_min {
        notes.push(format!(
            "the target is met even at the largest scale searched ({limit:.2} ×): there the cluster's capacity, not the wait target, is the limit"
        ));
    }
    let answer = found.done[&x].clone();
    let years = growth_per_year
        .filter(|_| answer.scale > 1.0)
        .map(|g| answer.scale.ln() / (1.0 + g).ln());
    if answer.scale < 1.0 {
        notes.push(format!(
            "the fitted demand itself (scale 1) misses the target; only {:.0} % of it is met",
            answer.scale * 100.0
        ));
    }
    let mut curve: Vec<ScalePoint> = found.done.into_values().collect();
    curve.reverse();
    Ok(Headroom {
        target: measure.target.clone(),
        days: demand_inputs.days,
        seed: demand_inputs.seed,
        fitted_jobs_per_day: fitted.jobs_per_day,
        fitted_accelerator_hours_per_day: fitted.accelerator_hours_per_day,
        curve,
        answer,
        growth_per_year,
        years,
        wall_s: started.elapsed().as_secs_f64(),
        notes,
    })
}

/// A readable summary.
pub fn table(h: &Headroom) -> String {
    let w = |v: Option<f64>| v.map_or("never".to_string(), gosok_sim::report::human_s);
    let mut s = format!(
        "target {}: fitted demand {:.0} jobs/day, {:.0} accelerator-hours/day; {} days, seed {}\n",
        h.target.text, h.fitted_jobs_per_day, h.fitted_accelerator_hours_per_day, h.days, h.seed
    );
    s.push_str(&format!(
        "{:>7} {:>9} {:>14} {:>12} {:>5} {:>12} {:>10} {:>6}\n",
        "scale", "jobs", "accel-h/day", "target stat", "met", "avg wait", "unfinished", "util"
    ));
    for p in &h.curve {
        s.push_str(&format!(
            "{:>7.2} {:>9} {:>14.0} {:>12} {:>5} {:>12} {:>10} {:>5.1}%\n",
            p.scale,
            p.jobs,
            p.accelerator_hours_per_day,
            w(p.run.target_wait_s),
            if p.run.met { "yes" } else { "no" },
            gosok_sim::report::human_s(p.run.avg_wait_s),
            p.run.jobs_never_finished,
            p.run.utilization * 100.0
        ));
    }
    s.push_str(&format!(
        "answer: {:.2} × the fitted demand ({:.0} accelerator-hours/day) meets {} ({})\n",
        h.answer.scale,
        h.answer.accelerator_hours_per_day,
        h.target.text,
        w(h.answer.run.target_wait_s)
    ));
    if let (Some(g), Some(y)) = (h.growth_per_year, h.years) {
        s.push_str(&format!(
            "at {:+.0} % a year, demand reaches that in {y:.1} years\n",
            g * 100.0
        ));
    }
    s.push_str(&format!("{} replays in {:.1} s\n", h.curve.len(), h.wall_s));
    for n in &h.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}

//! What a replay reports: one JSON object per run, a terminal table, and the time series CSV.

use std::fmt::Write;

use serde::Serialize;

use crate::replay::{RunResult, Sample};

/// One run's measures. Everything here is a function of the inputs and the seed (no wall
/// time), so the same seed gives the same JSON, byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub policy: String,
    pub placement: String,
    pub scorers: Vec<(String, f64)>,
    pub seed: u64,
    pub sites_in_cluster: u64,
    pub nodes: u64,
    /// Accelerators on nodes that are up.
    pub accelerators: f64,
    pub jobs: u64,
    pub jobs_completed: u64,
    pub jobs_failed: u64,
    pub jobs_rejected: u64,
    /// Still pending or running when nothing more could happen.
    pub jobs_unfinished: u64,
    /// Job completion time (end − submit) of completed jobs.
    pub avg_jct_s: f64,
    pub p50_jct_s: u64,
    pub p99_jct_s: u64,
    /// Time completed jobs spent pending (all waits, across preemptions).
    pub avg_queue_s: f64,
    pub p50_queue_s: u64,
    pub p99_queue_s: u64,
    /// Allocated accelerators over capacity, averaged over the run (first arrival to last
    /// event).
    pub utilization: f64,
    /// First arrival to the last job's end.
    pub makespan_s: u64,
    pub preemptions: u64,
    /// The longest any job needing 8 or more accelerators waited (until the end of the run
    /// for one that never started).
    pub longest_wait_8plus_accelerators_s: Option<u64>,
    /// Facility energy (IT × PUE) of all sites.
    pub energy_kwh: f64,
    pub tenants: Vec<TenantReport>,
    /// How evenly accelerator-time went by weight (`tenants[].share` against
    /// `tenants[].entitled_share`).
    pub fairness: Fairness,
    pub sites: Vec<SiteReport>,
    /// Rejections at submit, by the constraint named.
    pub rejected_by_reason: Vec<(String, u64)>,
    pub scheduling_passes: u64,
    /// The scheduling interval (0: a pass after every batch of simultaneous events).
    pub tick_s: u64,
    /// Where the engine's runtime estimates came from: oracle, given or history.
    pub estimates: String,
    /// What the engine's passes did, summed over the run (for performance work).
    pub engine_work: EngineWork,
}

/// Sums of the engine's `PassStats` over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineWork {
    pub considered: u64,
    pub cached: u64,
    pub placements: u64,
    pub nodes_visited: u64,
    pub preemption_searches: u64,
    pub reservation_plans: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantReport {
    pub tenant: String,
    pub jobs: u64,
    pub jobs_completed: u64,
    pub avg_jct_s: f64,
    pub p50_jct_s: u64,
    pub p99_jct_s: u64,
    pub avg_queue_s: f64,
    pub preemptions: u64,
    pub weight: f64,
    /// Of the accelerator-time all tenants received over the run, this tenant's part.
    pub share: f64,
    /// What fair share entitled it to: at every moment, the allocated accelerators divided
    /// among the tenants with jobs pending or running, by weight.
    pub entitled_share: f64,
    /// The same per day (`fairness.period_s`) from the first arrival.
    pub daily_share: Vec<f64>,
    pub daily_entitled_share: Vec<f64>,
}

/// Jain's index of received ÷ entitled accelerator-time over the tenants entitled to any:
/// 1 when each received its entitlement, 1/n when one received everything. Meaningful for
/// tenants that are backlogged (one that asks for less than its entitlement receives less).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fairness {
    pub period_s: u64,
    pub jain_index: f64,
    pub daily_jain_index: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteReport {
    pub site: String,
    pub accelerators: f64,
    pub utilization: f64,
    /// Facility power (IT draw × PUE), averaged over the run and at its peak.
    pub avg_power_w: f64,
    pub peak_power_w: f64,
    pub energy_kwh: f64,
}

/// Nearest-rank percentile of sorted values (0 for none).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Seconds as a short human duration: `42 s`, `3.5 min`, `7.2 h`, `2.1 d`.
pub fn human_s(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86_400.0)
    }
}

/// Side-by-side table of runs (one column per policy).
pub fn table(runs: &[(&Report, f64)]) -> String {
    let mut out = String::new();
    if runs.is_empty() {
        return out;
    }
    let r0 = runs[0].0;
    let _ = writeln!(
        out,
        "gosok sim replay: {} jobs on {} nodes ({} accelerators, {} sites), seed {}",
        r0.jobs, r0.nodes, r0.accelerators, r0.sites_in_cluster, r0.seed
    );
    type Row = (&'static str, fn(&Report) -> String);
    let rows: [Row; 18] = [
        ("placement", |r| r.placement.clone()),
        ("runtime estimates", |r| r.estimates.clone()),
        ("completed", |r| r.jobs_completed.to_string()),
        ("failed / rejected / unfinished", |r| {
            format!(
                "{} / {} / {}",
                r.jobs_failed, r.jobs_rejected, r.jobs_unfinished
            )
        }),
        ("avg JCT", |r| {
            format!("{:.0} s ({})", r.avg_jct_s, human_s(r.avg_jct_s))
        }),
        ("p50 JCT", |r| format!("{} s", r.p50_jct_s)),
        ("p99 JCT", |r| {
            format!("{} s ({})", r.p99_jct_s, human_s(r.p99_jct_s as f64))
        }),
        ("avg queue delay", |r| {
            format!("{:.0} s ({})", r.avg_queue_s, human_s(r.avg_queue_s))
        }),
        ("p50 queue delay", |r| format!("{} s", r.p50_queue_s)),
        ("p99 queue delay", |r| format!("{} s", r.p99_queue_s)),
        ("utilization", |r| format!("{:.1} %", r.utilization * 100.0)),
        ("makespan", |r| {
            format!("{} s ({})", r.makespan_s, human_s(r.makespan_s as f64))
        }),
        ("preemptions", |r| r.preemptions.to_string()),
        ("longest wait, >= 8 accel.", |r| {
            r.longest_wait_8plus_accelerators_s
                .map_or("-".into(), |s| format!("{s} s ({})", human_s(s as f64)))
        }),
        ("energy", |r| format!("{:.1} MWh", r.energy_kwh / 1000.0)),
        ("peak power (all sites)", |r| {
            format!(
                "{:.1} kW",
                r.sites.iter().map(|s| s.peak_power_w).sum::<f64>() / 1000.0
            )
        }),
        ("avg power (all sites)", |r| {
            format!(
                "{:.1} kW",
                r.sites.iter().map(|s| s.avg_power_w).sum::<f64>() / 1000.0
            )
        }),
        ("scheduling passes", |r| r.scheduling_passes.to_string()),
    ];
    let width = 30;
    let col = runs
        .iter()
        .flat_map(|(r, _)| rows.iter().map(move |(_, f)| f(r).len()))
        .max()
        .unwrap_or(10)
        .max(12)
        + 2;
    let _ = write!(out, "{:width$}", "policy");
    for (r, _) in runs {
        let _ = write!(out, "{:>col$}", r.policy);
    }
    out.push('\n');
    for (name, f) in rows {
        let _ = write!(out, "{name:width$}");
        for (r, _) in runs {
            let _ = write!(out, "{:>col$}", f(r));
        }
        out.push('\n');
    }
    let _ = write!(out, "{:width$}", "wall time");
    for (_, wall) in runs {
        let _ = write!(out, "{:>col$}", format!("{wall:.2} s"));
    }
    out.push('\n');
    // Per-tenant average JCT and queue delay, side by side.
    if r0.tenants.len() > 1 {
        let _ = writeln!(out, "\nper tenant: avg JCT s / avg queue delay s (jobs)");
        let _ = write!(out, "{:width$}", "tenant");
        for (r, _) in runs {
            let _ = write!(out, "{:>col$}", r.policy);
        }
        out.push('\n');
        for (i, t) in r0.tenants.iter().enumerate() {
            let _ = write!(out, "{:width$}", format!("{} ({})", t.tenant, t.jobs));
            for (r, _) in runs {
                let cell = r.tenants.get(i).map_or("-".into(), |t| {
                    format!("{:.0} / {:.0}", t.avg_jct_s, t.avg_queue_s)
                });
                let _ = write!(out, "{cell:>col$}");
            }
            out.push('\n');
        }
    }
    out
}

/// The time series as CSV: time, running, pending, utilisation, facility power per site.
pub fn series_csv(series: &[Sample], site_names: &[String]) -> String {
    let mut s = String::from("t_s,running,pending,utilization");
    for n in site_names {
        let _ = write!(s, ",power_w_{n}");
    }
    s.push('\n');
    for r in series {
        let _ = write!(
            s,
            "{},{},{},{:.4}",
            r.t_s, r.running, r.pending, r.utilization
        );
        for w in &r.site_power_w {
            let _ = write!(s, ",{w}");
        }
        s.push('\n');
    }
    s
}

/// The JSON of several runs of one workload.
#[derive(Serialize)]
pub struct MultiReport<'a, I: Serialize> {
    pub input: &'a I,
    pub runs: Vec<&'a Report>,
}

/// Per-job outcomes as CSV (for one's own analysis): id index, tenant, accelerators, submit,
/// first start, end, queue, preemptions, outcome.
pub fn jobs_csv(run: &RunResult) -> String {
    let mut s = String::from(
        "job,tenant,accelerators,submit_s,first_start_s,end_s,queue_s,preemptions,outcome\n",
    );
    for (i, o) in run.outcomes.iter().enumerate() {
        let opt = |v: Option<u64>| v.map_or(String::new(), |x| x.to_string());
        let _ = writeln!(
            s,
            "{i},{},{},{},{},{},{},{},{}",
            run.tenant_names
                .get(o.tenant as usize)
                .map_or("", |t| t.as_str()),
            o.accel_milli as f64 / 1000.0,
            o.submit_s,
            opt(o.first_start_s),
            opt(o.end_s),
            o.queue_s,
            o.preemptions,
            serde_json::to_value(o.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_s(42.0), "42 s");
        assert_eq!(human_s(600.0), "10.0 min");
        assert_eq!(human_s(36_000.0), "10.0 h");
        assert_eq!(human_s(864_000.0), "10.0 d");
    }
}

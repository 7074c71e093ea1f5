//! `gosok plan demand`: a demand model to plan against when no trace of the future exists.
//!
//! Fitted from a workload the twin already reads (any `gosok trace import` output: Philly,
//! the Alibaba traces, or a workload file of one's own):
//! - the joint distribution of job shape (the job's groups) and duration, kept empirical (a
//!   bootstrap of the trace's own jobs, so size and length stay correlated as they were);
//! - the arrival rate (jobs per day over the trace's span) and its hour-of-week profile
//!   (168 shares), so the diurnal and weekly rhythm stays.
//!
//! Scaled to the tenants being planned for: tiers with a number of tenants, a share of the
//! demand and a yearly growth rate (compounded continuously over the horizon). Arrivals are
//! Poisson within each hour at the fitted, scaled, grown rate. The same seed gives the same
//! workload.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use gosok_model::{ClusterSpec, JobSpec, TenantSpec, Tier};
use gosok_sim::WorkloadJob;

use crate::PlanError;

const HOURS_PER_WEEK: usize = 168;
const DAY_S: u64 = 86_400;

/// One tier of tenants: `startup=20,share=0.5,growth=0.8`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierDemand {
    pub tier: Tier,
    pub tenants: u64,
    /// Fraction of all demand; `None`: in proportion to the tenants.
    pub share: Option<f64>,
    /// Yearly growth of this tier's demand (0.5 = +50 % a year).
    pub growth_per_year: f64,
}

pub fn parse_tier(name: &str) -> Option<Tier> {
    serde_json::from_value(serde_json::Value::String(name.to_ascii_lowercase())).ok()
}

impl TierDemand {
    pub fn parse(text: &str) -> Result<TierDemand, PlanError> {
        let bad = |why: String| {
            PlanError::usage(
                "--tier",
                format!("{text:?}: {why} (write e.g. startup=20,share=0.5,growth=0.8)"),
            )
        };
        let mut parts = text.split(',');
        let head = parts.next().unwrap_or("");
        let Some((tier, n)) = head.split_once('=') else {
            return Err(bad("the first part must be TIER=TENANTS".into()));
        };
        let Some(tier_v) = parse_tier(tier.trim()) else {
            return Err(bad(format!(
                "unknown tier {tier:?} (anchor, commercial, public, academic, startup)"
            )));
        };
        let tenants: u64 = match n.trim().parse() {
            Ok(v) if v > 0 && v <= 10_000 => v,
            _ => return Err(bad(format!("{n:?} is not a tenant count in 1..=10000"))),
        };
        let mut d = TierDemand {
            tier: tier_v,
            tenants,
            share: None,
            growth_per_year: 0.0,
        };
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                return Err(bad(format!("{p:?} is not KEY=VALUE")));
            };
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| bad(format!("{k}: {v:?} is not a number")))?;
            match k.trim() {
                "share" if v.is_finite() && v > 0.0 && v <= 1.0 => d.share = Some(v),
                "share" => return Err(bad(format!("share {v} is not in (0, 1]"))),
                "growth" if v.is_finite() && v > -1.0 && v <= 100.0 => d.growth_per_year = v,
                "growth" => return Err(bad(format!("growth {v} is not in (-1, 100]"))),
                other => return Err(bad(format!("unknown key {other:?} (share, growth)"))),
            }
        }
        Ok(d)
    }
}

/// Accelerators a job holds (fractions as fractions).
pub fn job_accelerators(spec: &JobSpec) -> f64 {
    spec.groups
        .iter()
        .map(|g| {
            g.replicas as f64
                * (g.accelerators.unwrap_or(0) as f64
                    + g.accelerator_milli.unwrap_or(0) as f64 / 1000.0)
        })
        .sum()
}

/// The fitted model.
#[derive(Debug, Clone, Serialize)]
pub struct Fitted {
    pub jobs: u64,
    pub span_days: f64,
    pub jobs_per_day: f64,
    pub accelerator_hours_per_day: f64,
    /// Share of arrivals in each hour of the week (Monday 00:00 = 0 if the trace starts then;
    /// hour 0 is the trace's first hour).
    #[serde(skip)]
    pub hour_of_week: Vec<f64>,
    #[serde(skip)]
    samples: Vec<(JobSpec, u64, Option<String>)>,
}

/// Fits the model to a workload.
pub fn fit(jobs: &[WorkloadJob]) -> Result<Fitted, PlanError> {
    if jobs.len() < 2 {
        return Err(PlanError::usage(
            "--fit",
            "the workload needs at least two jobs to fit arrivals",
        ));
    }
    let first = jobs.iter().map(|j| j.submit_s).min().unwrap_or(0);
    let last = jobs.iter().map(|j| j.submit_s).max().unwrap_or(0);
    let span_s = (last - first).max(3600);
    let mut hours = vec![0.0; HOURS_PER_WEEK];
    let mut accel_h = 0.0;
    let mut samples = Vec::with_capacity(jobs.len());
    for j in jobs {
        let h = (((j.submit_s - first) / 3600) as usize) % HOURS_PER_WEEK;
        hours[h] += 1.0;
        let accel = job_accelerators(&j.spec);
        accel_h += accel * j.duration_s as f64 / 3600.0;
        let mut spec = j.spec.clone();
        // Where the trace's jobs were pinned (its sites, regions) means nothing on the cluster
        // being planned: the shape and the length are what is kept.
        spec.constraints.sites.clear();
        spec.constraints.regions.clear();
        spec.constraints.jurisdictions.clear();
        samples.push((spec, j.duration_s, j.duration_measured_on.clone()));
    }
    // Weeks the trace covers per hour-of-week slot, so a partial week does not skew it.
    let mut covered = vec![0.0; HOURS_PER_WEEK];
    for h in 0..(span_s / 3600 + 1) {
        covered[(h as usize) % HOURS_PER_WEEK] += 1.0;
    }
    let rates: Vec<f64> = hours
        .iter()
        .zip(&covered)
        .map(|(n, c)| if *c > 0.0 { n / c } else { 0.0 })
        .collect();
    let total: f64 = rates.iter().sum();
    let hour_of_week = rates.iter().map(|r| r / total.max(1e-12)).collect();
    let span_days = span_s as f64 / DAY_S as f64;
    Ok(Fitted {
        jobs: jobs.len() as u64,
        span_days,
        jobs_per_day: jobs.len() as f64 / span_days,
        accelerator_hours_per_day: accel_h / span_days,
        hour_of_week,
        samples,
    })
}

#[derive(Debug, Clone)]
pub struct DemandInputs {
    pub tiers: Vec<TierDemand>,
    /// Multiplies the fitted arrival rate.
    pub scale: f64,
    pub days: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TierSummary {
    pub tier: Tier,
    pub tenants: u64,
    pub share: f64,
    pub growth_per_year: f64,
    pub jobs: u64,
    pub accelerator_hours: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Demand {
    pub fitted: Fitted,
    pub scale: f64,
    pub days: f64,
    pub seed: u64,
    pub jobs: u64,
    pub accelerator_hours_per_day: f64,
    pub tiers: Vec<TierSummary>,
    #[serde(skip)]
    pub workload: Vec<WorkloadJob>,
    #[serde(skip)]
    pub tenants: Vec<TenantSpec>,
}

/// Poisson sample (Knuth for small means, normal approximation above).
fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    if mean < 30.0 {
        let l = (-mean).exp();
        let mut k = 0;
        let mut p = 1.0;
        loop {
            p *= rng.r#gen::<f64>();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }
    // Box–Muller.
    let u1: f64 = rng.r#gen::<f64>().max(1e-300);
    let u2: f64 = rng.r#gen();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (mean + z * mean.sqrt()).round().max(0.0) as u64
}

/// Generates the workload.
pub fn generate(fitted: Fitted, inputs: &DemandInputs) -> Result<Demand, PlanError> {
    if inputs.tiers.is_empty() {
        return Err(PlanError::usage(
            "--tier",
            "give at least one tier of tenants",
        ));
    }
    if !(inputs.scale.is_finite() && inputs.scale > 0.0) {
        return Err(PlanError::usage(
            "--scale",
            format!("{} is not a positive factor", inputs.scale),
        ));
    }
    if !(inputs.days.is_finite() && inputs.days > 0.0 && inputs.days <= 3650.0) {
        return Err(PlanError::usage(
            "--days",
            format!("{} is not in (0, 3650]", inputs.days),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in &inputs.tiers {
        if !seen.insert(t.tier) {
            return Err(PlanError::usage(
                "--tier",
                format!("tier {:?} is given twice", t.tier),
            ));
        }
    }
    // Shares: the given ones, the rest split by tenant counts.
    let given: f64 = inputs.tiers.iter().filter_map(|t| t.share).sum();
    if given > 1.0 + 1e-9 {
        return Err(PlanError::usage(
            "--tier",
            format!("the shares add up to {given}, more than 1"),
        ));
    }
    let open_tenants: u64 = inputs
        .tiers
        .iter()
        .filter(|t| t.share.is_none())
        .map(|t| t.tenants)
        .sum();
    let shares: Vec<f64> = inputs
        .tiers
        .iter()
        .map(|t| match t.share {
            Some(s) => s,
            None if open_tenants > 0 => (1.0 - given) * t.tenants as f64 / open_tenants as f64,
            None => 0.0,
        })
        .collect();
    let total_share: f64 = shares.iter().sum();
    if total_share <= 0.0 {
        return Err(PlanError::usage("--tier", "the shares leave no demand"));
    }
    let mut tenants = Vec::new();
    let mut tier_tenants: Vec<Vec<String>> = Vec::new();
    for t in &inputs.tiers {
        let tier_name = serde_json::to_value(t.tier)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let names: Vec<String> = (1..=t.tenants)
            .map(|k| format!("{tier_name}-{k:03}"))
            .collect();
        for n in &names {
            tenants.push(TenantSpec::new(n, t.tier));
        }
        tier_tenants.push(names);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(inputs.seed);
    let hours = (inputs.days * 24.0).ceil() as u64;
    let mut workload = Vec::new();
    let mut per_tier: Vec<(u64, f64)> = vec![(0, 0.0); inputs.tiers.len()];
    for h in 0..hours {
        let t_years = (h as f64 * 3600.0) / (365.0 * DAY_S as f64);
        let slot = fitted.hour_of_week[(h as usize) % HOURS_PER_WEEK];
        for (k, t) in inputs.tiers.iter().enumerate() {
            let grown = (1.0 + t.growth_per_year).powf(t_years);
            let mean =
                fitted.jobs_per_day * 7.0 * slot * inputs.scale * shares[k] / total_share * grown;
            for _ in 0..poisson(&mut rng, mean) {
                let (spec, dur, measured) = &fitted.samples[rng.gen_range(0..fitted.samples.len())];
                let tenant = &tier_tenants[k][rng.gen_range(0..tier_tenants[k].len())];
                let accel = job_accelerators(spec);
                per_tier[k].0 += 1;
                per_tier[k].1 += accel * *dur as f64 / 3600.0;
                workload.push(WorkloadJob {
                    id: None,
                    tenant: tenant.clone(),
                    submit_s: h * 3600 + rng.gen_range(0..3600),
                    duration_s: *dur,
                    duration_measured_on: measured.clone(),
                    spec: spec.clone(),
                });
            }
        }
    }
    workload.sort_by_key(|j| j.submit_s);
    for (k, j) in workload.iter_mut().enumerate() {
        j.id = Some(format!("d{k}"));
    }
    let tiers: Vec<TierSummary> = inputs
        .tiers
        .iter()
        .zip(&shares)
        .zip(&per_tier)
        .map(|((t, s), (n, ah))| TierSummary {
            tier: t.tier,
            tenants: t.tenants,
            share: s / total_share,
            growth_per_year: t.growth_per_year,
            jobs: *n,
            accelerator_hours: *ah,
        })
        .collect();
    let ah: f64 = tiers.iter().map(|t| t.accelerator_hours).sum();
    Ok(Demand {
        scale: inputs.scale,
        days: inputs.days,
        seed: inputs.seed,
        jobs: workload.len() as u64,
        accelerator_hours_per_day: ah / inputs.days,
        tiers,
        fitted,
        workload,
        tenants,
    })
}

/// `cluster` with the demand's tenants in place of its own (a workload's tenants must be
/// declared in the cluster it runs on).
pub fn cluster_with_tenants(cluster: &ClusterSpec, demand: &Demand) -> ClusterSpec {
    let mut c = cluster.clone();
    let mut names: BTreeMap<String, ()> = BTreeMap::new();
    c.tenant
        .retain(|t| names.insert(t.name.clone(), ()).is_none());
    for t in &demand.tenants {
        if !names.contains_key(&t.name) {
            c.tenant.push(t.clone());
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(submit_s: u64, dur: u64, accel: u64) -> WorkloadJob {
        let line = format!(
            r#"{{"tenant":"t","submit_s":{submit_s},"duration_s":{dur},"groups":[{{"accelerators":{accel}}}],"constraints":{{"sites":["x"]}}}}"#
        );
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn tier_parsing() {
        let t = TierDemand::parse("startup=20,share=0.5,growth=0.8").unwrap();
        assert_eq!(t.tier, Tier::Startup);
        assert_eq!(t.tenants, 20);
        assert_eq!(t.share, Some(0.5));
        assert_eq!(t.growth_per_year, 0.8);
        for bad in [
            "startup",
            "giant=3",
            "startup=0",
            "startup=2,share=2",
            "startup=2,x=1",
        ] {
            assert!(
                TierDemand::parse(bad)
                    .unwrap_err()
                    .to_string()
                    .starts_with("--tier"),
                "{bad}"
            );
        }
    }

    #[test]
    fn generates_the_fitted_rate_and_is_deterministic() {
        // 2,000 jobs over 20 days: 100 a day.
        let jobs: Vec<WorkloadJob> = (0..2000)
            .map(|k| job(k * 864, 600 + k % 7, 1 + k % 4))
            .collect();
        let f = fit(&jobs).unwrap();
        assert!((f.jobs_per_day - 100.0).abs() < 1.0, "{}", f.jobs_per_day);
        let inputs = DemandInputs {
            tiers: vec![
                TierDemand::parse("startup=4,share=0.75").unwrap(),
                TierDemand::parse("academic=2").unwrap(),
            ],
            scale: 2.0,
            days: 20.0,
            seed: 7,
        };
        let d = generate(f.clone(), &inputs).unwrap();
        // 2 × 100 a day × 20 days = 4,000 expected; Poisson noise is ~±63.
        assert!((d.jobs as f64 - 4000.0).abs() < 300.0, "{}", d.jobs);
        let startup = d.tiers[0].jobs as f64 / d.jobs as f64;
        assert!((startup - 0.75).abs() < 0.03, "{startup}");
        assert!(
            d.workload
                .iter()
                .all(|j| j.spec.constraints.sites.is_empty())
        );
        let again = generate(f, &inputs).unwrap();
        assert_eq!(d.workload, again.workload);
    }

    #[test]
    fn growth_compounds() {
        let jobs: Vec<WorkloadJob> = (0..3650).map(|k| job(k * 8640, 60, 1)).collect();
        let f = fit(&jobs).unwrap();
        let inputs = DemandInputs {
            tiers: vec![TierDemand::parse("public=1,growth=1.0").unwrap()],
            scale: 1.0,
            days: 365.0,
            seed: 1,
        };
        let d = generate(f, &inputs).unwrap();
        let first: usize = d
            .workload
            .iter()
            .filter(|j| j.submit_s < 30 * DAY_S)
            .count();
        let last: usize = d
            .workload
            .iter()
            .filter(|j| j.submit_s >= 335 * DAY_S)
            .count();
        // Doubling over the year: the last month about twice the first.
        let r = last as f64 / first as f64;
        assert!((1.6..2.4).contains(&r), "{r}");
    }
}

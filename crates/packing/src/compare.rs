//! Our runs side by side with the published ones: every workload of the trace folder that has
//! published results, every published policy plus gosok's, the published seeds.
//!
//! A median of ours "matches" when it lies inside the published [min, max] over seeds widened by
//! [`BAND_SLACK_PCT`] percentage points. Go's random stream cannot be replayed from Rust, so
//! distributions are compared, not runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::csv::CsvError;
use crate::experiment::{Prepared, RunError, RunResult, run, run_jobs};
use crate::load::{BadRows, load_nodes, load_pods};
use crate::policy::PolicyKind;
use crate::published::{Published, Stats};

/// Arrived workloads compared (% of GPU capacity).
pub const COMPARE_X_PCT: [usize; 4] = [95, 100, 110, 130];

/// How far outside the published band a median may lie and still match (percentage points).
pub const BAND_SLACK_PCT: f64 = 0.5;

/// The node list of the FGD experiment, inside `csv/` of the trace folder.
pub const NODE_LIST: &str = "openb_node_list_gpu_node.csv";

/// The published results, inside the trace folder.
pub const PUBLISHED_ALLOCATION: &str = "fgd_expected_results/analysis_allo_discrete.csv";

/// Why a comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Input(#[from] CsvError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{0}")]
    Setup(String),
}

/// One (workload, policy, x) comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub workload: String,
    pub policy: String,
    pub x_pct: usize,
    pub ours: Stats,
    /// `None` for gosok's policy, which has no published results.
    pub published: Option<Stats>,
    /// Whether our median lies in the published [min, max] widened by the slack.
    pub within_band: Option<bool>,
}

/// Whether FGD < BestFit < {Packing, Clustering} < DotProd < Random holds at one x.
#[derive(Debug, Clone, Serialize)]
pub struct RankingCheck {
    pub workload: String,
    pub x_pct: usize,
    pub ours_holds: bool,
    pub published_holds: bool,
    /// Our policies from the least unallocated GPU to the most.
    pub ours_order: Vec<String>,
    pub published_order: Vec<String>,
}

/// gosok's policy against FGD at x = 100.
#[derive(Debug, Clone, Serialize)]
pub struct GosokVsFgd {
    pub workload: String,
    pub gosok: Stats,
    pub fgd_ours: Stats,
    pub fgd_published: Stats,
    /// gosok's mean below FGD's published mean.
    pub beats_published_fgd: bool,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub experiment: &'static str,
    pub traces_dir: String,
    pub seeds: Vec<u64>,
    pub tune_ratio: f64,
    pub x_pct: Vec<usize>,
    pub band_slack_pct: f64,
    pub runs: usize,
    pub wall_time_s: f64,
    pub rows: Vec<CompareRow>,
    pub rankings: Vec<RankingCheck>,
    pub gosok_vs_fgd: Vec<GosokVsFgd>,
    /// Published workloads whose pod list is not in the folder (kept back for evaluation).
    pub missing_pod_lists: Vec<String>,
    pub rows_compared: usize,
    pub rows_within_band: usize,
    pub rankings_ours_hold: usize,
    pub rankings_published_hold: usize,
    pub gosok_wins: usize,
}

/// What a comparison runs.
#[derive(Debug, Clone)]
pub struct CompareSpec {
    pub traces_dir: PathBuf,
    pub seeds: Vec<u64>,
    pub tune_ratio: f64,
    pub threads: usize,
    pub policies: Vec<PolicyKind>,
    /// Only workloads whose name contains one of these (all when empty).
    pub only: Vec<String>,
}

const RANKED: [PolicyKind; 6] = PolicyKind::PUBLISHED;

fn ranking_holds(value: impl Fn(PolicyKind) -> Option<f64>) -> Option<bool> {
    let fgd = value(PolicyKind::Fgd)?;
    let bestfit = value(PolicyKind::BestFit)?;
    let packing = value(PolicyKind::Packing)?;
    let clustering = value(PolicyKind::Clustering)?;
    let dotprod = value(PolicyKind::DotProd)?;
    let random = value(PolicyKind::Random)?;
    // Packing and Clustering are "about equal" in the claim: either order between them holds.
    Some(
        fgd < bestfit
            && bestfit < packing.min(clustering)
            && packing.max(clustering) < dotprod
            && dotprod < random,
    )
}

fn order(value: impl Fn(PolicyKind) -> Option<f64>) -> Vec<String> {
    let mut v: Vec<(f64, PolicyKind)> = RANKED
        .iter()
        .filter_map(|&p| value(p).map(|x| (x, p)))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v.into_iter().map(|(_, p)| p.name().to_string()).collect()
}

/// Runs the comparison. `progress` gets (runs done, runs in all).
pub fn compare(
    spec: &CompareSpec,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<CompareReport, CompareError> {
    let started = std::time::Instant::now();
    let csv_dir = spec.traces_dir.join("csv");
    let cluster = Arc::new(load_nodes(&csv_dir.join(NODE_LIST), BadRows::Fail)?);
    let published = Published::read(&spec.traces_dir.join(PUBLISHED_ALLOCATION))?;
    let mut prepared = Vec::new();
    let mut missing = Vec::new();
    for workload in published.workloads() {
        if !spec.only.is_empty() && !spec.only.iter().any(|o| workload.contains(o.as_str())) {
            continue;
        }
        let path = csv_dir.join(format!("{workload}.csv"));
        if !path.exists() {
            missing.push(workload);
            continue;
        }
        let pods = load_pods(&path, &cluster, BadRows::Fail)?;
        prepared.push(
            Prepared::new(cluster.clone(), Arc::new(pods))
                .map_err(|e| CompareError::Setup(e.to_string()))?,
        );
    }
    if prepared.is_empty() {
        return Err(CompareError::Setup(format!(
            "{}: no pod list of a published workload found in {} (expected e.g. openb_pod_list_default.csv)",
            spec.traces_dir.display(),
            csv_dir.display()
        )));
    }
    let jobs: Vec<(usize, PolicyKind, u64)> = (0..prepared.len())
        .flat_map(|w| {
            spec.policies
                .iter()
                .flat_map(move |&p| spec.seeds.iter().map(move |&s| (w, p, s)))
        })
        .collect();
    let results: Vec<RunResult> = run_jobs(&jobs, spec.threads, progress, |&(w, p, s)| {
        run(&prepared[w], p, s, spec.tune_ratio)
    })?;
    let mut report = CompareReport {
        experiment: "fgd-compare",
        traces_dir: spec.traces_dir.display().to_string(),
        seeds: spec.seeds.clone(),
        tune_ratio: spec.tune_ratio,
        x_pct: COMPARE_X_PCT.to_vec(),
        band_slack_pct: BAND_SLACK_PCT,
        runs: results.len(),
        wall_time_s: 0.0,
        rows: Vec::new(),
        rankings: Vec::new(),
        gosok_vs_fgd: Vec::new(),
        missing_pod_lists: missing,
        rows_compared: 0,
        rows_within_band: 0,
        rankings_ours_hold: 0,
        rankings_published_hold: 0,
        gosok_wins: 0,
    };
    for (w, prep) in prepared.iter().enumerate() {
        let name = prep.workload.name.clone();
        let ours = |p: PolicyKind, x: usize| -> Option<Stats> {
            let v: Vec<f64> = jobs
                .iter()
                .zip(&results)
                .filter(|((jw, jp, _), _)| *jw == w && *jp == p)
                .filter_map(|(_, r)| r.unallocated_pct(x))
                .collect();
            Stats::of(&v)
        };
        let theirs = |p: PolicyKind, x: usize| -> Option<Stats> {
            p.published_name()
                .and_then(|n| Stats::of(&published.unallocated_at(&name, n, x)))
        };
        for &p in &spec.policies {
            for x in COMPARE_X_PCT {
                let Some(o) = ours(p, x) else { continue };
                let t = theirs(p, x);
                let within = t.map(|t| {
                    o.median >= t.min - BAND_SLACK_PCT && o.median <= t.max + BAND_SLACK_PCT
                });
                if let Some(ok) = within {
                    report.rows_compared += 1;
                    report.rows_within_band += usize::from(ok);
                }
                report.rows.push(CompareRow {
                    workload: name.clone(),
                    policy: p.name().to_string(),
                    x_pct: x,
                    ours: o,
                    published: t,
                    within_band: within,
                });
            }
        }
        for x in COMPARE_X_PCT {
            let ours_med = |p: PolicyKind| ours(p, x).map(|s| s.median);
            let theirs_med = |p: PolicyKind| theirs(p, x).map(|s| s.median);
            if let (Some(o), Some(t)) = (ranking_holds(ours_med), ranking_holds(theirs_med)) {
                report.rankings_ours_hold += usize::from(o);
                report.rankings_published_hold += usize::from(t);
                report.rankings.push(RankingCheck {
                    workload: name.clone(),
                    x_pct: x,
                    ours_holds: o,
                    published_holds: t,
                    ours_order: order(ours_med),
                    published_order: order(theirs_med),
                });
            }
        }
        if let (Some(g), Some(f), Some(fp)) = (
            ours(PolicyKind::Gosok, 100),
            ours(PolicyKind::Fgd, 100),
            theirs(PolicyKind::Fgd, 100),
        ) {
            let wins = g.mean < fp.mean;
            report.gosok_wins += usize::from(wins);
            report.gosok_vs_fgd.push(GosokVsFgd {
                workload: name.clone(),
                gosok: g,
                fgd_ours: f,
                fgd_published: fp,
                beats_published_fgd: wins,
            });
        }
    }
    report.wall_time_s = started.elapsed().as_secs_f64();
    Ok(report)
}

fn short(workload: &str) -> &str {
    workload.strip_prefix("openb_pod_list_").unwrap_or(workload)
}

/// The side-by-side table: ours vs published at each compared x, `*` marking a median outside
/// the widened band; then the ranking checks and gosok against FGD.
pub fn compare_table(r: &CompareReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Unallocated GPU (% of capacity) at arrived workload x: ours = median over seeds {}; published = median [min-max].",
        crate::report::seeds_text(&r.seeds)
    );
    let _ = writeln!(
        out,
        "'*' marks our median outside the published band widened by {} points.",
        r.band_slack_pct
    );
    let _ = write!(out, "{:<12} {:<11}", "workload", "policy");
    for x in &r.x_pct {
        let _ = write!(out, " | {:<27}", format!("x={x}: ours  published"));
    }
    let _ = writeln!(out);
    let mut last = String::new();
    let mut line = String::new();
    for row in &r.rows {
        let key = format!("{}/{}", row.workload, row.policy);
        if key != last {
            if !line.is_empty() {
                let _ = writeln!(out, "{line}");
            }
            line = format!("{:<12} {:<11}", short(&row.workload), row.policy);
            last = key;
        }
        let mark = match row.within_band {
            Some(false) => '*',
            _ => ' ',
        };
        let published = row.published.map_or("(none)".to_string(), |p| {
            format!("{:5.2} [{:5.2}-{:5.2}]", p.median, p.min, p.max)
        });
        let _ = write!(line, " | {:5.2}{mark} {published:<20}", row.ours.median);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "\nWithin the widened band: {} of {} medians.",
        r.rows_within_band, r.rows_compared
    );
    let _ = writeln!(
        out,
        "\nRanking FGD < BestFit < Packing~Clustering < DotProd < Random (medians): holds for ours in {} of {}, for the published in {} of {}.",
        r.rankings_ours_hold,
        r.rankings.len(),
        r.rankings_published_hold,
        r.rankings.len()
    );
    for k in r
        .rankings
        .iter()
        .filter(|k| !k.ours_holds || !k.published_holds)
    {
        let _ = writeln!(
            out,
            "  {:<12} x={:<3} ours {:<5} [{}]  published {:<5} [{}]",
            short(&k.workload),
            k.x_pct,
            if k.ours_holds { "holds" } else { "no" },
            k.ours_order.join(" < "),
            if k.published_holds { "holds" } else { "no" },
            k.published_order.join(" < ")
        );
    }
    if !r.gosok_vs_fgd.is_empty() {
        let _ = writeln!(
            out,
            "\ngosok vs FGD at x=100 (unallocated GPU %, mean [min-max] over seeds):"
        );
        for g in &r.gosok_vs_fgd {
            let _ = writeln!(
                out,
                "  {:<12} gosok {:5.2} [{:5.2}-{:5.2}]  FGD ours {:5.2}  FGD published {:5.2}  {}",
                short(&g.workload),
                g.gosok.mean,
                g.gosok.min,
                g.gosok.max,
                g.fgd_ours.mean,
                g.fgd_published.mean,
                if g.beats_published_fgd {
                    "better"
                } else {
                    "NOT better"
                }
            );
        }
        let _ = writeln!(
            out,
            "  gosok below FGD's published mean on {} of {} workloads.",
            r.gosok_wins,
            r.gosok_vs_fgd.len()
        );
    }
    if !r.missing_pod_lists.is_empty() {
        let _ = writeln!(
            out,
            "\nPublished but without a pod list here: {}",
            r.missing_pod_lists.join(", ")
        );
    }
    let _ = writeln!(out, "\n{} runs in {:.1} s.", r.runs, r.wall_time_s);
    out
}

/// The trace folder relative to a crate's manifest directory (`../../../shared/traces/...`).
pub fn default_traces_dir(manifest_dir: &Path) -> PathBuf {
    manifest_dir.join("../../../shared/traces/alibaba-openb-v2023")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_accepts_either_order_of_packing_and_clustering() {
        let v = |p: PolicyKind| {
            Some(match p {
                PolicyKind::Fgd => 4.0,
                PolicyKind::BestFit => 7.0,
                PolicyKind::Packing => 8.4,
                PolicyKind::Clustering => 8.2,
                PolicyKind::DotProd => 9.0,
                PolicyKind::Random => 13.0,
                PolicyKind::Gosok => 1.0,
            })
        };
        assert_eq!(ranking_holds(v), Some(true));
        assert_eq!(order(v)[0], "fgd");
        let bad = |p: PolicyKind| {
            if p == PolicyKind::DotProd {
                Some(20.0)
            } else {
                v(p)
            }
        };
        assert_eq!(ranking_holds(bad), Some(false));
        assert_eq!(ranking_holds(|_| None), None);
    }
}

//! Summaries over seeds and the outputs of an experiment: a terminal table, one JSON object, and
//! CSV time series.

use std::fmt::Write as _;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::experiment::RunResult;
use crate::policy::PolicyKind;
use crate::published::Stats;

/// The arrived-workload points the reports cover: 0..=130 % of GPU capacity.
pub const REPORT_MAX_X_PCT: usize = 130;

/// The points of the terminal table.
pub const TABLE_X_PCT: [usize; 8] = [50, 80, 90, 95, 100, 110, 120, 130];

/// A curve over arrived workload, serialised as a JSON object `{"0": v, "1": v, ...}` in x order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curve(pub Vec<(usize, f64)>);

impl Curve {
    pub fn at(&self, x: usize) -> Option<f64> {
        self.0.iter().find(|&&(px, _)| px == x).map(|&(_, v)| v)
    }
}

impl Serialize for Curve {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (x, v) in &self.0 {
            // Two decimals are what the published analysis keeps; more would be noise.
            map.serialize_entry(&x.to_string(), &((v * 1e4).round() / 1e4))?;
        }
        map.end()
    }
}

/// Inputs of an experiment, recorded in every report.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentInfo {
    pub experiment: &'static str,
    pub workload: String,
    pub nodes_file: String,
    pub pods_file: String,
    pub nodes: usize,
    pub gpus: u64,
    pub pods: usize,
    pub seeds: Vec<u64>,
    pub tune_ratio: f64,
    pub skipped_node_rows: usize,
    pub skipped_pod_rows: usize,
    /// The first few skipped rows with their reason (all are counted above).
    pub skipped_row_reasons: Vec<String>,
}

/// One run in a summary.
#[derive(Debug, Clone, Serialize)]
pub struct RunLine {
    pub seed: u64,
    pub arrived_pods: u64,
    pub failed_pods: u64,
    pub arrived_gpu_milli: u64,
    pub allocated_gpu_milli: u64,
}

/// One policy over all seeds.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    pub policy: String,
    #[serde(flatten)]
    pub info: ExperimentInfo,
    /// Median over seeds of the unallocated GPU share (% of capacity), by arrived workload (%).
    pub unallocated_gpu_pct_median: Curve,
    pub unallocated_gpu_pct_min: Curve,
    pub unallocated_gpu_pct_max: Curve,
    /// FGD's fragmentation measure (fragmented GPU, % of capacity) against the typical pods.
    pub frag_gpu_pct_median: Curve,
    pub frag_gpu_pct_min: Curve,
    pub frag_gpu_pct_max: Curve,
    pub failed_pods_median: f64,
    pub runs: Vec<RunLine>,
}

/// Several policies on one workload.
#[derive(Debug, Clone, Serialize)]
pub struct MultiPolicyReport {
    #[serde(flatten)]
    pub info: ExperimentInfo,
    pub policy: String,
    pub policies: Vec<PolicySummary>,
}

fn curves(runs: &[&RunResult], value: impl Fn(&RunResult, usize) -> Option<f64>) -> [Curve; 3] {
    let mut median = Curve::default();
    let mut min = Curve::default();
    let mut max = Curve::default();
    for x in 0..=REPORT_MAX_X_PCT {
        let values: Vec<f64> = runs.iter().filter_map(|r| value(r, x)).collect();
        if let Some(s) = Stats::of(&values) {
            median.0.push((x, s.median));
            min.0.push((x, s.min));
            max.0.push((x, s.max));
        }
    }
    [median, min, max]
}

/// Summarises the runs of `policy` among `results`.
pub fn summarize(
    policy: PolicyKind,
    info: &ExperimentInfo,
    results: &[RunResult],
) -> PolicySummary {
    let runs: Vec<&RunResult> = results.iter().filter(|r| r.policy == policy).collect();
    let [u_med, u_min, u_max] = curves(&runs, |r, x| r.unallocated_pct(x));
    let [f_med, f_min, f_max] = curves(&runs, |r, x| r.frag_pct.get(x).copied().flatten());
    let failed: Vec<f64> = runs.iter().map(|r| r.failed_pods as f64).collect();
    PolicySummary {
        policy: policy.name().to_string(),
        info: info.clone(),
        unallocated_gpu_pct_median: u_med,
        unallocated_gpu_pct_min: u_min,
        unallocated_gpu_pct_max: u_max,
        frag_gpu_pct_median: f_med,
        frag_gpu_pct_min: f_min,
        frag_gpu_pct_max: f_max,
        failed_pods_median: Stats::of(&failed).map_or(0.0, |s| s.median),
        runs: runs
            .iter()
            .map(|r| RunLine {
                seed: r.seed,
                arrived_pods: r.arrived_pods,
                failed_pods: r.failed_pods,
                arrived_gpu_milli: r.arrived_gpu_milli,
                allocated_gpu_milli: r.allocated_gpu_milli,
            })
            .collect(),
    }
}

/// The JSON object of an experiment: the policy's summary for one policy, otherwise an object
/// with `policies` listing each policy's summary.
pub fn to_json(info: &ExperimentInfo, summaries: &[PolicySummary]) -> serde_json::Result<String> {
    if let [one] = summaries {
        serde_json::to_string_pretty(one)
    } else {
        let report = MultiPolicyReport {
            info: info.clone(),
            policy: summaries
                .iter()
                .map(|s| s.policy.as_str())
                .collect::<Vec<_>>()
                .join(","),
            policies: summaries.to_vec(),
        };
        serde_json::to_string_pretty(&report)
    }
}

/// A compact description of a seed list: `42-51` for a range, else comma-separated.
pub fn seeds_text(seeds: &[u64]) -> String {
    let contiguous = seeds.windows(2).all(|w| w[1] == w[0] + 1);
    match seeds {
        [] => String::new(),
        [one] => one.to_string(),
        [first, .., last] if contiguous => format!("{first}-{last}"),
        _ => seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// The terminal table: unallocated GPU % (median [min–max] over seeds) at a few arrived
/// workloads, FGD's fragmentation at 100 % and failed pods.
pub fn table(info: &ExperimentInfo, summaries: &[PolicySummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "FGD arrival-only packing: workload {} ({} pods), {} nodes / {} GPUs, seeds {}, inflated to {:.0} % of GPU capacity",
        info.workload,
        info.pods,
        info.nodes,
        info.gpus,
        seeds_text(&info.seeds),
        info.tune_ratio * 100.0
    );
    if info.skipped_node_rows + info.skipped_pod_rows > 0 {
        let _ = writeln!(
            out,
            "skipped bad rows: {} in the node list, {} in the pod list",
            info.skipped_node_rows, info.skipped_pod_rows
        );
    }
    let _ = writeln!(
        out,
        "Unallocated GPU (% of capacity), median [min-max] over seeds, by arrived workload x (% of capacity)"
    );
    let _ = write!(out, "{:<11}", "policy");
    for x in TABLE_X_PCT {
        let _ = write!(out, " {:>19}", format!("x={x}"));
    }
    let _ = writeln!(out, " {:>9} {:>7}", "frag@100", "failed");
    for s in summaries {
        let _ = write!(out, "{:<11}", s.policy);
        for x in TABLE_X_PCT {
            let cell = match (
                s.unallocated_gpu_pct_median.at(x),
                s.unallocated_gpu_pct_min.at(x),
                s.unallocated_gpu_pct_max.at(x),
            ) {
                (Some(m), Some(lo), Some(hi)) => format!("{m:5.2} [{lo:5.2}-{hi:5.2}]"),
                _ => "-".to_string(),
            };
            let _ = write!(out, " {cell:>19}");
        }
        let frag = s
            .frag_gpu_pct_median
            .at(100)
            .map_or("-".to_string(), |f| format!("{f:.2}"));
        let _ = writeln!(out, " {frag:>9} {:>7.0}", s.failed_pods_median);
    }
    out
}

/// Every run's curve as CSV: `policy,seed,x_pct,allocated_gpu_pct,unallocated_gpu_pct,frag_gpu_pct`.
pub fn runs_csv(results: &[RunResult]) -> String {
    let mut out =
        String::from("policy,seed,x_pct,allocated_gpu_pct,unallocated_gpu_pct,frag_gpu_pct\n");
    for r in results {
        for x in 0..=REPORT_MAX_X_PCT {
            if let Some(a) = r.allocated_pct.get(x).copied().flatten() {
                let f = r.frag_pct.get(x).copied().flatten().unwrap_or(f64::NAN);
                let _ = writeln!(
                    out,
                    "{},{},{x},{a:.4},{:.4},{f:.4}",
                    r.policy,
                    r.seed,
                    100.0 - a
                );
            }
        }
    }
    out
}

/// The summary curves as CSV: `policy,x_pct,unallocated_gpu_pct_median,..._min,..._max,frag_gpu_pct_median,..._min,..._max`.
pub fn summary_csv(summaries: &[PolicySummary]) -> String {
    let mut out = String::from(
        "policy,x_pct,unallocated_gpu_pct_median,unallocated_gpu_pct_min,unallocated_gpu_pct_max,frag_gpu_pct_median,frag_gpu_pct_min,frag_gpu_pct_max\n",
    );
    for s in summaries {
        for &(x, m) in &s.unallocated_gpu_pct_median.0 {
            let v = |c: &Curve| c.at(x).map_or(String::new(), |v| format!("{v:.4}"));
            let _ = writeln!(
                out,
                "{},{x},{m:.4},{},{},{},{},{}",
                s.policy,
                v(&s.unallocated_gpu_pct_min),
                v(&s.unallocated_gpu_pct_max),
                v(&s.frag_gpu_pct_median),
                v(&s.frag_gpu_pct_min),
                v(&s.frag_gpu_pct_max)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(policy: PolicyKind, seed: u64, alloc_at_100: f64) -> RunResult {
        let mut allocated = vec![None; 201];
        allocated[100] = Some(alloc_at_100);
        allocated[0] = Some(0.5);
        RunResult {
            policy,
            seed,
            arrived_pods: 10,
            failed_pods: seed,
            arrived_gpu_milli: 1000,
            allocated_gpu_milli: 900,
            allocated_pct: allocated,
            frag_pct: vec![Some(3.0); 201],
        }
    }

    fn info() -> ExperimentInfo {
        ExperimentInfo {
            experiment: "fgd-arrival-only-packing",
            workload: "w".into(),
            nodes_file: "n.csv".into(),
            pods_file: "p.csv".into(),
            nodes: 2,
            gpus: 10,
            pods: 10,
            seeds: vec![1, 2, 3],
            tune_ratio: 1.3,
            skipped_node_rows: 0,
            skipped_pod_rows: 1,
            skipped_row_reasons: vec!["p.csv:3:1: bad".into()],
        }
    }

    #[test]
    fn summaries_take_median_min_max_over_seeds() {
        let results = vec![
            result(PolicyKind::Fgd, 1, 95.0),
            result(PolicyKind::Fgd, 2, 96.0),
            result(PolicyKind::Fgd, 3, 90.0),
            result(PolicyKind::Random, 1, 80.0),
        ];
        let s = summarize(PolicyKind::Fgd, &info(), &results);
        assert_eq!(s.unallocated_gpu_pct_median.at(100), Some(5.0));
        assert_eq!(s.unallocated_gpu_pct_min.at(100), Some(4.0));
        assert_eq!(s.unallocated_gpu_pct_max.at(100), Some(10.0));
        assert_eq!(s.unallocated_gpu_pct_median.at(50), None);
        assert_eq!(s.failed_pods_median, 2.0);
        let json: serde_json::Value =
            serde_json::from_str(&to_json(&info(), std::slice::from_ref(&s)).unwrap()).unwrap();
        assert_eq!(json["policy"], "fgd");
        assert_eq!(json["workload"], "w");
        assert_eq!(json["seeds"], serde_json::json!([1, 2, 3]));
        assert_eq!(json["unallocated_gpu_pct_median"]["100"], 5.0);
        assert_eq!(json["skipped_pod_rows"], 1);
        let r = summarize(PolicyKind::Random, &info(), &results);
        let json: serde_json::Value =
            serde_json::from_str(&to_json(&info(), &[s, r]).unwrap()).unwrap();
        assert_eq!(json["policy"], "fgd,random");
        assert_eq!(
            json["policies"][1]["unallocated_gpu_pct_median"]["100"],
            20.0
        );
    }

    #[test]
    fn curve_keys_keep_numeric_order() {
        let c = Curve(vec![(0, 1.0), (2, 2.0), (10, 3.0), (100, 4.0)]);
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(text, r#"{"0":1.0,"2":2.0,"10":3.0,"100":4.0}"#);
    }

    #[test]
    fn table_and_csv_show_every_policy() {
        let results = vec![
            result(PolicyKind::Fgd, 1, 95.0),
            result(PolicyKind::BestFit, 1, 93.0),
        ];
        let s = vec![
            summarize(PolicyKind::Fgd, &info(), &results),
            summarize(PolicyKind::BestFit, &info(), &results),
        ];
        let t = table(&info(), &s);
        assert!(t.contains("seeds 1-3"), "{t}");
        assert!(
            t.contains("skipped bad rows: 0 in the node list, 1 in the pod list"),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("bestfit") && l.contains(" 7.00 [ 7.00- 7.00]")),
            "{t}"
        );
        let csv = runs_csv(&results);
        assert!(csv.contains("fgd,1,100,95.0000,5.0000,3.0000"), "{csv}");
        assert!(summary_csv(&s).contains("bestfit,100,7.0000,7.0000,7.0000,3.0000"));
        assert_eq!(seeds_text(&[42, 43, 44]), "42-44");
        assert_eq!(seeds_text(&[1, 5]), "1,5");
    }
}

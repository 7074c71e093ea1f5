//! `gosok sim fgd` and `gosok sim fgd-compare`: FGD's arrival-only packing experiment on a
//! node list and a pod list, and the comparison of every published workload with the
//! published results.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use gosok_packing::chart;
use gosok_packing::compare::{CompareSpec, compare, compare_table};
use gosok_packing::experiment::{self, DEFAULT_TUNE_RATIO, Prepared, RunSpec};
use gosok_packing::load::{BadRows, load_nodes, load_pods};
use gosok_packing::policy::PolicyKind;
use gosok_packing::report::{self, ExperimentInfo};
use gosok_packing::variants::{DEFAULT_VARIANTS, Variant, compare_variants, variant_table};

#[derive(Subcommand)]
pub enum SimCommand {
    /// FGD's arrival-only packing experiment (ATC '23): shuffle the pods, inflate them to
    /// `--tune` times the GPU capacity, place them one at a time with no departures, and report
    /// unallocated GPU against arrived workload.
    ///
    /// JSON (`--format json`): for one policy, one object with `policy`, `workload`, `seeds`,
    /// `unallocated_gpu_pct_median` / `_min` / `_max` and `frag_gpu_pct_median` / `_min` /
    /// `_max` (maps from arrived workload "0".."130", % of GPU capacity); for several policies,
    /// an object whose `policies` lists one such object per policy.
    Fgd(FgdArgs),
    /// Every workload of the trace folder that has published results, every published policy
    /// and gosok's, side by side with the published medians and bands.
    FgdCompare(CompareArgs),
    /// Stress variants of the default openb pod list beyond the published levels (CPU ×K,
    /// more CPU-only pods, GPU-share, multi-GPU and GPU-model-restriction ratios): gosok's
    /// default placement (expected waste) against FGD at x = 100, both through the engine.
    FgdVariants(VariantArgs),
}

#[derive(Args)]
pub struct VariantArgs {
    /// The trace folder with csv/openb_node_list_gpu_node.csv and the pod lists.
    #[arg(long, default_value = "../shared/traces/alibaba-openb-v2023")]
    traces: PathBuf,
    /// Variants, comma-separated: cpu-xK, cpupods-xK, gpushare-R, multigpu-R, gpuspec-R;
    /// default: cpu-x2,cpu-x3,cpupods-x3,cpupods-x4,gpushare-60..90,multigpu-50,60,gpuspec-50,66.
    #[arg(long)]
    variants: Option<String>,
    #[arg(long, default_value = "42-51")]
    seeds: String,
    #[arg(long, default_value_t = DEFAULT_TUNE_RATIO)]
    tune: f64,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args)]
pub struct FgdArgs {
    /// Node list CSV (`sn,cpu_milli,memory_mib,gpu,model`), e.g. openb_node_list_gpu_node.csv.
    #[arg(long)]
    nodes: PathBuf,
    /// Pod list CSV (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`).
    #[arg(long)]
    pods: PathBuf,
    /// Policy: random, dotprod, clustering, packing, bestfit, fgd, gosok; a comma-separated
    /// list of them; or all.
    #[arg(long, default_value = "all")]
    policy: String,
    /// Seeds, e.g. 42-51 (the published ones) or 1,5,9; recorded in the report.
    #[arg(long, default_value = "42-51")]
    seeds: String,
    /// Inflate (or shrink) the pods to this multiple of the cluster's GPU capacity.
    #[arg(long, default_value_t = DEFAULT_TUNE_RATIO)]
    tune: f64,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Also write report.json, runs.csv, summary.csv, unallocated_gpu.svg and
    /// fragmentation.svg into this folder (created if missing).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Leave out rows that do not validate (they are counted in the report) instead of
    /// stopping at the first.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Runs in parallel (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Feasible nodes the engine scores per pod (its `score_candidates`); default: every
    /// feasible node, as the published experiment's scheduler does. The engine's own default
    /// is 16.
    #[arg(long)]
    candidates: Option<usize>,
}

#[derive(Args)]
pub struct CompareArgs {
    /// The trace folder: csv/ with the node and pod lists and fgd_expected_results/ with
    /// analysis_allo_discrete.csv.
    #[arg(long, default_value = "../shared/traces/alibaba-openb-v2023")]
    traces: PathBuf,
    /// Seeds (the published ones by default).
    #[arg(long, default_value = "42-51")]
    seeds: String,
    /// Policies to run (gosok's has no published numbers; it is compared with FGD).
    #[arg(long, default_value = "all")]
    policy: String,
    /// Only workloads whose name contains one of these (comma-separated), e.g. default,cpu050.
    #[arg(long)]
    workloads: Option<String>,
    #[arg(long, default_value_t = DEFAULT_TUNE_RATIO)]
    tune: f64,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Also write compare.json and compare.txt into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    threads: Option<usize>,
}

/// Parses `42-51`, `1,5,9` or a mix such as `1,10-12`.
pub fn parse_seeds(text: &str) -> anyhow::Result<Vec<u64>> {
    let mut seeds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| -> anyhow::Result<u64> {
            s.parse::<u64>()
                .with_context(|| format!("--seeds: {s:?} is not a seed (use e.g. 42-51 or 1,5,9)"))
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if hi < lo {
            bail!("--seeds: {part:?} runs backwards (write the smaller seed first)");
        }
        if hi - lo >= 10_000 || seeds.len() as u64 + (hi - lo) >= 10_000 {
            bail!("--seeds: {text:?} names more than 10000 seeds");
        }
        for s in lo..=hi {
            if !seeds.contains(&s) {
                seeds.push(s);
            }
        }
    }
    if seeds.is_empty() {
        bail!("--seeds: no seed given (use e.g. 42-51)");
    }
    Ok(seeds)
}

fn check_tune(tune: f64) -> anyhow::Result<()> {
    if !tune.is_finite() || !(0.0..=10.0).contains(&tune) {
        bail!("--tune {tune}: give a multiple of the GPU capacity between 0 (no inflation) and 10");
    }
    Ok(())
}

/// A progress bar that shows itself only once the work has run for a second (and only on a
/// terminal), so quick runs stay quiet.
struct Progress {
    bar: ProgressBar,
    started: Instant,
}

impl Progress {
    fn new(what: &str) -> Progress {
        let bar = ProgressBar::hidden();
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} runs, {elapsed} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(what.to_string());
        Progress {
            bar,
            started: Instant::now(),
        }
    }

    fn update(&self, done: usize, total: usize) {
        if self.bar.is_hidden() && self.started.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        self.bar.set_length(total as u64);
        // Workers report out of order; never move the bar backwards.
        if done as u64 > self.bar.position() {
            self.bar.set_position(done as u64);
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn threads(requested: Option<usize>) -> usize {
    requested
        .filter(|&t| t > 0)
        .unwrap_or_else(experiment::default_threads)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))
}

pub fn run(command: SimCommand) -> anyhow::Result<()> {
    match command {
        SimCommand::Fgd(args) => run_fgd(args),
        SimCommand::FgdCompare(args) => run_compare(args),
        SimCommand::FgdVariants(args) => run_variants(args),
    }
}

fn run_variants(a: VariantArgs) -> anyhow::Result<()> {
    let variants = match &a.variants {
        Some(text) => Variant::parse_list(text).map_err(|e| anyhow::anyhow!("--variants: {e}"))?,
        None => DEFAULT_VARIANTS.to_vec(),
    };
    let seeds = parse_seeds(&a.seeds)?;
    check_tune(a.tune)?;
    if !a.traces.is_dir() {
        bail!(
            "--traces {}: no such folder (give the alibaba-openb-v2023 trace folder)",
            a.traces.display()
        );
    }
    let progress = Progress::new("sim fgd-variants");
    let report = compare_variants(
        &a.traces,
        &variants,
        &seeds,
        a.tune,
        threads(a.threads),
        &|d, t| progress.update(d, t),
    )?;
    progress.finish();
    match a.format {
        Format::Table => print!("{}", variant_table(&report)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

fn run_fgd(a: FgdArgs) -> anyhow::Result<()> {
    let policies =
        PolicyKind::parse_list(&a.policy).map_err(|e| anyhow::anyhow!("--policy: {e}"))?;
    let seeds = parse_seeds(&a.seeds)?;
    check_tune(a.tune)?;
    let bad_rows = if a.skip_bad_rows {
        BadRows::Skip
    } else {
        BadRows::Fail
    };
    let cluster = load_nodes(&a.nodes, bad_rows)?;
    let workload = load_pods(&a.pods, &cluster, bad_rows)?;
    let mut reasons: Vec<String> = cluster
        .skipped_rows
        .iter()
        .chain(&workload.skipped_rows)
        .take(20)
        .cloned()
        .collect();
    reasons.shrink_to_fit();
    let info = ExperimentInfo {
        experiment: "fgd-arrival-only-packing",
        workload: workload.name.clone(),
        nodes_file: a.nodes.display().to_string(),
        pods_file: a.pods.display().to_string(),
        nodes: cluster.nodes.len(),
        gpus: cluster.total_gpus(),
        pods: workload.pods.len(),
        seeds: seeds.clone(),
        tune_ratio: a.tune,
        skipped_node_rows: cluster.skipped_rows.len(),
        skipped_pod_rows: workload.skipped_rows.len(),
        skipped_row_reasons: reasons,
    };
    if cluster.total_gpus() == 0 {
        bail!(
            "{}: the node list has no GPUs; the experiment measures GPU allocation",
            a.nodes.display()
        );
    }
    if a.candidates == Some(0) {
        bail!(
            "--candidates: 0 scores no node; give at least 1 (or leave it out: every feasible node)"
        );
    }
    let prepared = Prepared::new(Arc::new(cluster), Arc::new(workload))?;
    let progress = Progress::new(&format!("sim fgd {}", info.workload));
    let runs: Vec<RunSpec> = policies
        .iter()
        .map(|&policy| RunSpec {
            policy,
            candidates: a.candidates,
        })
        .collect();
    let results = experiment::run_many(
        &prepared,
        &runs,
        &seeds,
        a.tune,
        threads(a.threads),
        &|d, t| progress.update(d, t),
    )?;
    progress.finish();
    let summaries: Vec<_> = policies
        .iter()
        .map(|&p| report::summarize(p, &info, &results))
        .collect();
    let json = report::to_json(&info, &summaries)?;
    match a.format {
        Format::Table => print!("{}", report::table(&info, &summaries)),
        Format::Json => println!("{json}"),
    }
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        write(&dir.join("report.json"), &json)?;
        write(&dir.join("runs.csv"), &report::runs_csv(&results))?;
        write(&dir.join("summary.csv"), &report::summary_csv(&summaries))?;
        chart::unallocated_chart(&dir.join("unallocated_gpu.svg"), &info.workload, &summaries)?;
        chart::frag_chart(&dir.join("fragmentation.svg"), &info.workload, &summaries)?;
        eprintln!(
            "wrote report.json, runs.csv, summary.csv, unallocated_gpu.svg, fragmentation.svg to {}",
            dir.display()
        );
    }
    Ok(())
}

fn run_compare(a: CompareArgs) -> anyhow::Result<()> {
    let policies =
        PolicyKind::parse_list(&a.policy).map_err(|e| anyhow::anyhow!("--policy: {e}"))?;
    let seeds = parse_seeds(&a.seeds)?;
    check_tune(a.tune)?;
    if !a.traces.is_dir() {
        bail!(
            "--traces {}: no such folder (give the alibaba-openb-v2023 trace folder, e.g. ../shared/traces/alibaba-openb-v2023)",
            a.traces.display()
        );
    }
    let spec = CompareSpec {
        traces_dir: a.traces.clone(),
        seeds,
        tune_ratio: a.tune,
        threads: threads(a.threads),
        policies,
        only: a
            .workloads
            .as_deref()
            .map(|w| {
                w.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    };
    let progress = Progress::new("sim fgd-compare");
    let report = compare(&spec, &|d, t| progress.update(d, t))?;
    progress.finish();
    let json = serde_json::to_string_pretty(&report)?;
    let table = compare_table(&report);
    match a.format {
        Format::Table => print!("{table}"),
        Format::Json => println!("{json}"),
    }
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        write(&dir.join("compare.json"), &json)?;
        write(&dir.join("compare.txt"), &table)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let nodes = dir.join("nodes.csv");
        std::fs::write(
            &nodes,
            "sn,cpu_milli,memory_mib,gpu,model\na,32000,65536,2,T4\nb,64000,131072,8,G2\n",
        )
        .unwrap();
        let pods = dir.join("pods.csv");
        std::fs::write(
            &pods,
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n\
             p0,4000,1024,1,500,\n\
             p1,4000,1024,1,abc,\n\
             p2,8000,2048,2,1000,G2\n\
             p3,2000,512,0,0,\n",
        )
        .unwrap();
        (nodes, pods)
    }

    fn args(nodes: PathBuf, pods: PathBuf, out: Option<PathBuf>, skip: bool) -> FgdArgs {
        FgdArgs {
            nodes,
            pods,
            policy: "fgd,bestfit".into(),
            seeds: "1-2".into(),
            tune: 1.3,
            format: Format::Json,
            out,
            skip_bad_rows: skip,
            threads: Some(1),
            candidates: None,
        }
    }

    #[test]
    fn bad_rows_stop_the_run_with_their_place_unless_skipped() {
        let dir = std::env::temp_dir().join(format!("gosok-sim-fgd-{}", std::process::id()));
        let (nodes, pods) = fixture(&dir);
        let e = run_fgd(args(nodes.clone(), pods.clone(), None, false)).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("pods.csv:3:16: column `gpu_milli`"), "{text}");
        assert!(text.contains("\"abc\" is not a number"), "{text}");
        let out = dir.join("out");
        run_fgd(args(nodes, pods, Some(out.clone()), true)).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["skipped_pod_rows"], 1);
        assert_eq!(json["policies"][0]["policy"], "fgd");
        assert_eq!(json["seeds"], serde_json::json!([1, 2]));
        for f in [
            "runs.csv",
            "summary.csv",
            "unallocated_gpu.svg",
            "fragmentation.svg",
        ] {
            assert!(out.join(f).exists(), "{f}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn seeds_parse_ranges_and_lists() {
        assert_eq!(parse_seeds("42-51").unwrap(), (42..=51).collect::<Vec<_>>());
        assert_eq!(parse_seeds("1,5, 9").unwrap(), [1, 5, 9]);
        assert_eq!(parse_seeds("1,3-4,3").unwrap(), [1, 3, 4]);
        assert!(
            parse_seeds("9-1")
                .unwrap_err()
                .to_string()
                .contains("backwards")
        );
        assert!(
            parse_seeds("x")
                .unwrap_err()
                .to_string()
                .contains("not a seed")
        );
        assert!(parse_seeds("").is_err());
        assert!(parse_seeds("0-99999").is_err());
    }
}

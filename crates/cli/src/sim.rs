//! `gosok sim replay` and `gosok sim philly-compare`: workloads through the production engine
//! on a virtual clock (the FGD packing experiments live in `sim_fgd`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use gosok_model::Catalog;
use gosok_sim::import::philly::{PhillyParams, import_philly};
use gosok_sim::philly::{PhillyFiles, RunAverages, compare, read_published};
use gosok_sim::report::{self, Report};
use gosok_sim::{
    BadRows, Estimates, Placement, Policy, ReplayOptions, RunResult, chart, read_cluster,
    read_workload, replay_many,
};

use crate::sim_fgd;

#[derive(Subcommand)]
pub enum SimCommand {
    /// Replay a workload through gosok's engine on a virtual clock: jobs arrive at their
    /// submit times, run for their true durations, and free their accelerators.
    ///
    /// JSON (`--format json`): for one policy one object (jobs_completed, avg_jct_s,
    /// p50_jct_s, p99_jct_s, avg_queue_s, utilization, makespan_s, preemptions,
    /// longest_wait_8plus_accelerators_s, energy_kwh, tenants[], sites[] with power, seed,
    /// input); for several, `{"input": ..., "runs": [...]}`. See docs/SIMULATOR.md.
    Replay(ReplayArgs),
    /// Import the Philly trace with Helios' virtual clusters, replay FIFO, SJF, SRTF and gosok,
    /// and print ours beside Helios' published averages.
    PhillyCompare(PhillyCompareArgs),
    #[command(flatten)]
    Fgd(sim_fgd::SimCommand),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// Cluster file (TOML, see examples/cluster.toml).
    #[arg(long)]
    cluster: PathBuf,
    /// Workload file (JSON Lines, see examples/workload.jsonl).
    #[arg(long)]
    workload: PathBuf,
    /// fifo, sjf, srtf, gosok, gosok-age (gosok with the age order within a tenant),
    /// gosok-las (gosok's ladder without learned sizes), a comma-separated list of them (run
    /// in parallel), or all.
    #[arg(long, default_value = "gosok")]
    policy: String,
    /// consolidate (Helios), gosok (the engine's default mix), an engine scorer (bestfit,
    /// fgd, power, ...), or weights such as bestfit:1,fgd:0.5. Default: consolidate for
    /// fifo/sjf/srtf, gosok for gosok.
    #[arg(long)]
    placement: Option<String>,
    /// Seeds the engine's tie-breaks; recorded in the report.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Also write report.json, series-<policy>.csv, jobs-<policy>.csv, jct_cdf.svg,
    /// queue_cdf.svg and utilization.svg into this folder (created if missing).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Leave out workload lines that do not validate (they are counted in the report)
    /// instead of stopping at the first.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Scheduling interval in seconds: 0 runs a pass after every batch of simultaneous
    /// events; N runs passes every N s of virtual time (events still happen on time).
    /// Large synthetic replays use e.g. 60.
    #[arg(long, default_value_t = 0)]
    tick_s: u64,
    /// Runtime estimates the engine sees: auto (the true duration for sjf and srtf, the
    /// jobs' own for fifo and gosok), given (the jobs' own only), history (for jobs without
    /// one, the median run time of recently completed jobs of the same tenant and size;
    /// never the job's own), or oracle.
    #[arg(long, default_value = "auto")]
    estimates: String,
}

#[derive(Args)]
pub struct PhillyCompareArgs {
    /// The philly-pollux trace folder (philly.csv and helios-qssf-philly/).
    #[arg(long, default_value = "../shared/traces/philly-pollux")]
    traces: PathBuf,
    /// Policies to run.
    #[arg(long, default_value = "fifo,sjf,srtf,gosok")]
    policy: String,
    /// Submit-time window as Helios used it (from inclusive, to exclusive).
    #[arg(long, default_value = "2017-10-01")]
    from: String,
    #[arg(long, default_value = "2017-12-01")]
    to: String,
    /// Only these VCs (comma-separated); default: all of philly_vc.csv.
    #[arg(long)]
    vcs: Option<String>,
    /// Divide submit times by K (K × the offered load): a sensitivity experiment, not the
    /// reproduction.
    #[arg(long, default_value_t = 1.0)]
    arrival_compression: f64,
    /// Runtime estimates of the gosok run: given (the trace has none) or history (the median
    /// run time of recently completed jobs of the same VC and size). FIFO, SJF and SRTF
    /// keep Helios' setup (SJF and SRTF know the true durations).
    #[arg(long, default_value = "given")]
    gosok_estimates: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Also write compare.json, compare.txt, the imported cluster and workload, and each
    /// run's report and charts into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(command: SimCommand) -> anyhow::Result<()> {
    match command {
        SimCommand::Replay(a) => run_replay(a),
        SimCommand::PhillyCompare(a) => run_philly(a),
        SimCommand::Fgd(c) => sim_fgd::run(c),
    }
}

/// What the runs were given; recorded beside the results.
#[derive(Serialize)]
struct Input {
    cluster_file: String,
    workload_file: String,
    jobs: usize,
    skipped_bad_rows: gosok_sim::Skipped,
    seed: u64,
}

/// One bar for all parallel runs, shown only once the work has run for a second (and only on
/// a terminal), so quick runs stay quiet.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    done: Vec<AtomicU64>,
}

impl Progress {
    fn new(what: &str, runs: usize, jobs: u64) -> Progress {
        let bar = ProgressBar::hidden();
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} jobs, {elapsed} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(what.to_string());
        bar.set_length(jobs * runs as u64);
        Progress {
            bar,
            started: Instant::now(),
            done: (0..runs).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn update(&self, run: usize, done: u64) {
        if let Some(d) = self.done.get(run) {
            d.store(done, Ordering::Relaxed);
        }
        if self.bar.is_hidden() && self.started.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        let sum: u64 = self.done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
        if sum > self.bar.position() {
            self.bar.set_position(sum);
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))
}

fn options(
    policies: &[Policy],
    placement: &Option<String>,
    seed: u64,
    tick_s: u64,
    estimates: &str,
) -> anyhow::Result<Vec<ReplayOptions>> {
    let estimates = Estimates::parse(estimates).map_err(|e| anyhow::anyhow!("--estimates: {e}"))?;
    let placement = placement
        .as_deref()
        .map(Placement::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--placement: {e}"))?;
    Ok(policies
        .iter()
        .map(|&p| ReplayOptions {
            placement: placement
                .clone()
                .unwrap_or_else(|| Placement::default_for(p)),
            seed,
            tick_s,
            estimates,
            ..ReplayOptions::new(p)
        })
        .collect())
}

/// Runs the policies in parallel with a progress bar; returns each run and its wall time.
fn run_all(
    what: &str,
    cluster: &gosok_model::ClusterSpec,
    jobs: &[gosok_sim::WorkloadJob],
    catalog: &Catalog,
    opts: &[ReplayOptions],
) -> anyhow::Result<Vec<(RunResult, f64)>> {
    let progress = Progress::new(what, opts.len(), jobs.len() as u64);
    let results = replay_many(cluster, jobs, catalog, opts, &|k, d, _| {
        progress.update(k, d)
    });
    progress.finish();
    results
        .into_iter()
        .zip(opts)
        .map(|(r, o)| r.with_context(|| format!("policy {}", o.policy)))
        .collect()
}

/// The report as JSON with the input beside it.
fn report_json<I: Serialize>(input: &I, runs: &[(RunResult, f64)]) -> anyhow::Result<String> {
    let v = if runs.len() == 1 {
        let mut v = serde_json::to_value(&runs[0].0.report)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("input".into(), serde_json::to_value(input)?);
        }
        v
    } else {
        let reports: Vec<&Report> = runs.iter().map(|r| &r.0.report).collect();
        serde_json::to_value(report::MultiReport {
            input,
            runs: reports,
        })?
    };
    Ok(serde_json::to_string_pretty(&v)?)
}

/// report.json, per-run CSVs and the charts.
fn write_out(dir: &Path, json: &str, runs: &[(RunResult, f64)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    write(&dir.join("report.json"), &format!("{json}\n"))?;
    for (r, _) in runs {
        let p = &r.report.policy;
        write(
            &dir.join(format!("series-{p}.csv")),
            &report::series_csv(&r.series, &r.site_names),
        )?;
        write(&dir.join(format!("jobs-{p}.csv")), &report::jobs_csv(r))?;
    }
    let refs: Vec<&RunResult> = runs.iter().map(|r| &r.0).collect();
    chart::jct_cdf(&dir.join("jct_cdf.svg"), &refs)?;
    chart::queue_cdf(&dir.join("queue_cdf.svg"), &refs)?;
    chart::utilization_chart(&dir.join("utilization.svg"), &refs)?;
    Ok(())
}

fn run_replay(a: ReplayArgs) -> anyhow::Result<()> {
    let policies = Policy::parse_list(&a.policy).map_err(|e| anyhow::anyhow!("--policy: {e}"))?;
    let opts = options(&policies, &a.placement, a.seed, a.tick_s, &a.estimates)?;
    let catalog = Catalog::builtin();
    let cluster = read_cluster(&a.cluster, &catalog)?;
    let bad = if a.skip_bad_rows {
        BadRows::Skip
    } else {
        BadRows::Fail
    };
    let workload = read_workload(&a.workload, &catalog, bad)?;
    workload.check_tenants(&a.workload, &cluster)?;
    let input = Input {
        cluster_file: a.cluster.display().to_string(),
        workload_file: a.workload.display().to_string(),
        jobs: workload.jobs.len(),
        skipped_bad_rows: workload.skipped.clone(),
        seed: a.seed,
    };
    let runs = run_all("sim replay", &cluster, &workload.jobs, &catalog, &opts)?;
    let json = report_json(&input, &runs)?;
    match a.format {
        Format::Json => println!("{json}"),
        Format::Table => {
            let rows: Vec<(&Report, f64)> = runs.iter().map(|(r, w)| (&r.report, *w)).collect();
            print!("{}", report::table(&rows));
            if workload.skipped.rows > 0 {
                println!(
                    "skipped {} bad workload lines (--skip-bad-rows); the first: {}",
                    workload.skipped.rows,
                    workload.skipped.first.first().map_or("", |s| s.as_str())
                );
            }
        }
    }
    for (r, wall) in &runs {
        eprintln!(
            "sim replay: {} took {wall:.2} s wall time ({} jobs)",
            r.report.policy, r.report.jobs
        );
    }
    if let Some(dir) = &a.out {
        write_out(dir, &json, &runs)?;
        eprintln!(
            "wrote report.json, series-*.csv, jobs-*.csv, jct_cdf.svg, queue_cdf.svg, utilization.svg to {}",
            dir.display()
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct PhillyInput {
    traces: String,
    from: String,
    to: String,
    arrival_compression: f64,
    vcs: Vec<String>,
    jobs: usize,
    seed: u64,
    wall_s: Vec<(String, f64)>,
}

fn run_philly(a: PhillyCompareArgs) -> anyhow::Result<()> {
    let policies = Policy::parse_list(&a.policy).map_err(|e| anyhow::anyhow!("--policy: {e}"))?;
    if !a.traces.is_dir() {
        bail!(
            "--traces {}: no such folder (give the philly-pollux trace folder, e.g. ../shared/traces/philly-pollux)",
            a.traces.display()
        );
    }
    let files = PhillyFiles::in_dir(&a.traces);
    let published = read_published(&files)?;
    let catalog = Catalog::builtin();
    let mut p = PhillyParams::new(files.jobs.clone(), files.vcs.clone());
    p.from = Some(a.from.clone());
    p.to = Some(a.to.clone());
    p.arrival_compression = a.arrival_compression;
    let mut imported = import_philly(&p, &catalog)?;
    if let Some(only) = &a.vcs {
        let keep: Vec<&str> = only
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        for v in &keep {
            if !imported.cluster.site.iter().any(|s| s.name == *v) {
                bail!("--vcs: {v:?} is not a VC of {}", files.vcs.display());
            }
        }
        imported.jobs.retain(|j| keep.contains(&j.tenant.as_str()));
    }
    eprint!("{}", imported.summary.text());
    let mut opts = options(&policies, &None, a.seed, 0, "auto")?;
    let gosok_estimates = match a.gosok_estimates.as_str() {
        "given" => Estimates::Given,
        "history" => Estimates::History,
        other => bail!("--gosok-estimates: {other:?}; use given or history"),
    };
    for o in opts.iter_mut().filter(|o| o.policy.is_gosok()) {
        o.estimates = gosok_estimates;
    }
    let started = Instant::now();
    let runs = run_all(
        "sim philly-compare",
        &imported.cluster,
        &imported.jobs,
        &catalog,
        &opts,
    )?;
    let averages: Vec<RunAverages> = runs
        .iter()
        .map(|(r, _)| RunAverages::of(&r.report))
        .collect();
    let cmp = compare(&averages, &published);
    let table = gosok_sim::philly::table(&cmp);
    let input = PhillyInput {
        traces: a.traces.display().to_string(),
        from: a.from.clone(),
        to: a.to.clone(),
        arrival_compression: a.arrival_compression,
        vcs: imported
            .cluster
            .site
            .iter()
            .map(|s| s.name.clone())
            .collect(),
        jobs: imported.jobs.len(),
        seed: a.seed,
        wall_s: runs
            .iter()
            .map(|(r, w)| (r.report.policy.clone(), *w))
            .collect(),
    };
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "input": input,
        "comparison": cmp,
    }))?;
    match a.format {
        Format::Json => println!("{json}"),
        Format::Table => {
            print!("{table}");
            for (r, w) in &runs {
                println!(
                    "  {}: {w:.2} s wall time for {} jobs",
                    r.report.policy, r.report.jobs
                );
            }
        }
    }
    eprintln!(
        "sim philly-compare: {} policies in {:.1} s",
        runs.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        write(&dir.join("compare.json"), &format!("{json}\n"))?;
        write(&dir.join("compare.txt"), &table)?;
        gosok_sim::import::write_dir(
            &dir.join("trace"),
            &imported,
            "Philly (Pollux philly.csv) with Helios' VCs, imported by gosok sim philly-compare",
        )?;
        let replay_input = Input {
            cluster_file: dir.join("trace/cluster.toml").display().to_string(),
            workload_file: dir.join("trace/workload.jsonl").display().to_string(),
            jobs: imported.jobs.len(),
            skipped_bad_rows: imported.summary.skipped_bad_rows.clone(),
            seed: a.seed,
        };
        let rj = report_json(&replay_input, &runs)?;
        write_out(&dir.join("runs"), &rj, &runs)?;
        eprintln!(
            "wrote compare.json, compare.txt, trace/ and runs/ to {}",
            dir.display()
        );
    }
    Ok(())
}

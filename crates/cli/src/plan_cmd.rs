//! `gosok plan site | capacity | demand`: capacity planning (the `gosok-plan` crate).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use gosok_model::{Catalog, ClusterSpec};
use gosok_plan::PlanError;
use gosok_plan::capacity::{self, CapacityInputs, Grow};
use gosok_plan::demand::{self, DemandInputs, TierDemand};
use gosok_plan::params::Parameters;
use gosok_plan::site::{self, SiteInputs};
use gosok_plan::target::Target;
use gosok_sim::{BadRows, Policy, read_cluster, read_workload};

#[derive(Subcommand)]
pub enum PlanCommand {
    /// What a facility power budget holds: servers, accelerators, HBM (TB and stacks), DRAM
    /// dies and wafers, capital cost and yearly energy. Every number traces to a catalog or
    /// planning parameter (catalog/planning.toml) or a flag; the JSON names its inputs.
    Site(SiteArgs),
    /// The smallest capacity that keeps waits under a target: replays the workload through the
    /// engine at growing capacity (new servers in the given sites/models, within each site's
    /// power budget) and reports the curve, the answer and the knee.
    Capacity(CapacityArgs),
    /// A demand model to plan against: fits job sizes, durations and the arrival rhythm of a
    /// workload (any `gosok trace import` output) and generates demand for tiers of tenants
    /// with their growth; writes a workload and a cluster file the twin replays.
    Demand(DemandArgs),
    /// How much demand a cluster sustains: scales a demand model (as `plan demand` makes it)
    /// and replays it until a wait target is missed; with --growth-per-year, how many years of
    /// growth that is.
    Headroom(HeadroomArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args)]
pub struct SiteArgs {
    /// Facility power budget, MW.
    #[arg(long, allow_negative_numbers = true)]
    power_mw: f64,
    /// Power usage effectiveness (facility power / IT power), at least 1.
    #[arg(long, default_value_t = 1.3, allow_negative_numbers = true)]
    pue: f64,
    /// Accelerator model (catalog name, any case).
    #[arg(long)]
    model: String,
    /// Fraction of board power each accelerator is provisioned for (1 = maximum).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    utilisation: f64,
    /// Average fraction of board power over the year, for energy (default: --utilisation).
    #[arg(long, allow_negative_numbers = true)]
    average_utilisation: Option<f64>,
    #[arg(long)]
    node_accelerators: Option<u64>,
    #[arg(long, allow_negative_numbers = true)]
    node_base_power_w: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    board_power_w: Option<f64>,
    #[arg(long)]
    network_ports: Option<u64>,
    #[arg(long, allow_negative_numbers = true)]
    switch_w_per_port: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    switch_ports_per_host_port: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    node_price_krw: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    krw_per_usd: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    energy_price_krw_per_kwh: Option<f64>,
    #[arg(long)]
    hbm_stacks: Option<u64>,
    #[arg(long)]
    dies_per_stack: Option<u64>,
    #[arg(long)]
    die_gbit: Option<u64>,
    #[arg(long, allow_negative_numbers = true)]
    die_area_mm2: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    die_yield: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    stack_yield: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    wafer_diameter_mm: Option<f64>,
    /// Planning parameters file (default: the built-in catalog/planning.toml).
    #[arg(long)]
    parameters: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Args)]
pub struct CapacityArgs {
    /// Cluster file (TOML) of today's capacity; `demo` or `demo-large` for the highway
    /// `gosok up` runs.
    #[arg(long)]
    cluster: PathBuf,
    /// Workload file (JSON Lines) of the demand.
    #[arg(long)]
    workload: PathBuf,
    /// pNN-wait<=DURATION or avg-wait<=DURATION (e.g. "p95-wait<=1h"); a wait is
    /// all the time a job was pending, across preemptions.
    #[arg(long)]
    target: String,
    /// Only jobs of tenants of this tier count towards the target.
    #[arg(long)]
    tier: Option<String>,
    /// Where to add servers: site=NAME,model=MODEL (repeatable). Default: every (site, model)
    /// the cluster has, in proportion to its servers today.
    #[arg(long)]
    grow: Vec<String>,
    /// At most this many times a (site, model)'s servers today are added.
    #[arg(long, default_value_t = 16.0, allow_negative_numbers = true)]
    max_growth: f64,
    /// Replays run at once (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// fifo, sjf, srtf, gosok (default: the engine's default order), gosok-age, gosok-las.
    #[arg(long, default_value = "gosok")]
    policy: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write curve.csv, curve.svg, report.html, report.json and cluster.toml (the
    /// answer's cluster file) into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Args)]
pub struct DemandArgs {
    /// The workload to fit (JSON Lines; e.g. the output of `gosok trace import philly`).
    #[arg(long)]
    fit: PathBuf,
    /// The cluster the demand will run on (a file, `demo` or `demo-large`); the generated
    /// cluster.toml is this one with the demand's tenants.
    #[arg(long)]
    cluster: PathBuf,
    /// A tier of tenants: TIER=TENANTS[,share=F][,growth=G] (repeatable), e.g.
    /// startup=20,share=0.5,growth=0.8 (+80 % a year). Tiers without share split the rest of
    /// the demand by their tenant counts.
    #[arg(long, required = true)]
    tier: Vec<String>,
    /// Multiplies the fitted arrival rate.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    scale: f64,
    /// Horizon in days (default: the fitted trace's span).
    #[arg(long, allow_negative_numbers = true)]
    days: Option<f64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder for workload.jsonl, cluster.toml and demand.json (created if missing).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Args)]
pub struct HeadroomArgs {
    /// The cluster (a file, `demo` or `demo-large`).
    #[arg(long)]
    cluster: PathBuf,
    /// The workload the demand model is fitted to.
    #[arg(long)]
    fit: PathBuf,
    /// Tiers of tenants, as for `plan demand` (repeatable).
    #[arg(long, required = true)]
    tier: Vec<String>,
    /// pNN-wait<=DURATION or avg-wait<=DURATION.
    #[arg(long)]
    target: String,
    /// Only jobs of tenants of this tier count towards the target.
    #[arg(long)]
    target_tier: Option<String>,
    /// Horizon in days (default: the fitted trace's span).
    #[arg(long, allow_negative_numbers = true)]
    days: Option<f64>,
    /// The largest multiple of the fitted demand tried.
    #[arg(long, default_value_t = 64.0, allow_negative_numbers = true)]
    max_scale: f64,
    /// Yearly demand growth, to express the headroom in years (0.5 = +50 % a year).
    #[arg(long, allow_negative_numbers = true)]
    growth_per_year: Option<f64>,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "gosok")]
    policy: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub fn run(c: PlanCommand) -> anyhow::Result<()> {
    match c {
        PlanCommand::Site(a) => site_cmd(a),
        PlanCommand::Capacity(a) => capacity_cmd(a),
        PlanCommand::Demand(a) => demand_cmd(a),
        PlanCommand::Headroom(a) => headroom_cmd(a),
    }
}

fn usage(flag: &str, problem: impl Into<String>) -> anyhow::Error {
    PlanError::usage(flag, problem).into()
}

fn site_cmd(a: SiteArgs) -> anyhow::Result<()> {
    let catalog = Catalog::builtin();
    let params = match &a.parameters {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| usage("--parameters", format!("{}: {e}", p.display())))?;
            Parameters::from_toml(&text)?
        }
        None => Parameters::builtin(),
    };
    let inputs = SiteInputs {
        power_mw: a.power_mw,
        pue: a.pue,
        model: a.model,
        utilisation: a.utilisation,
        average_utilisation: a.average_utilisation,
        node_accelerators: a.node_accelerators,
        node_base_power_w: a.node_base_power_w,
        board_power_w: a.board_power_w,
        network_ports: a.network_ports,
        switch_w_per_port: a.switch_w_per_port,
        switch_ports_per_host_port: a.switch_ports_per_host_port,
        node_price_krw: a.node_price_krw,
        krw_per_usd: a.krw_per_usd,
        energy_price_krw_per_kwh: a.energy_price_krw_per_kwh,
        hbm_stacks: a.hbm_stacks,
        dies_per_stack: a.dies_per_stack,
        die_gbit: a.die_gbit,
        die_area_mm2: a.die_area_mm2,
        die_yield: a.die_yield,
        stack_yield: a.stack_yield,
        wafer_diameter_mm: a.wafer_diameter_mm,
    };
    let plan = site::plan_site(&inputs, &catalog, &params)?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        Output::Table => print!("{}", site::table(&plan)),
    }
    Ok(())
}

/// A cluster file, or `demo` / `demo-large`: the highway `gosok up` runs (small or large).
fn load_cluster(arg: &std::path::Path, catalog: &Catalog) -> anyhow::Result<ClusterSpec> {
    let scale = match arg.to_str() {
        Some("demo") => Some(crate::up::Scale::Small),
        Some("demo-large") => Some(crate::up::Scale::Large),
        _ => None,
    };
    match scale {
        Some(s) => {
            // `gosok up` declares its nodes down until their agents register; a plan assumes
            // every server it counts is up.
            let mut c = crate::up::demo_cluster(s)?;
            for n in &mut c.node {
                n.state = gosok_model::NodeState::Up;
            }
            Ok(c)
        }
        None => read_cluster(arg, catalog).map_err(|e| usage("--cluster", e.to_string())),
    }
}

fn read_inputs(
    cluster: &std::path::Path,
    workload: &std::path::Path,
    catalog: &Catalog,
) -> anyhow::Result<(ClusterSpec, Vec<gosok_sim::WorkloadJob>)> {
    let c = load_cluster(cluster, catalog)?;
    let w = read_workload(workload, catalog, BadRows::Fail)
        .map_err(|e| usage("--workload", e.to_string()))?;
    w.check_tenants(workload, &c)
        .map_err(|e| usage("--workload", e.to_string()))?;
    Ok((c, w.jobs))
}

fn tier_arg(flag: &str, t: &Option<String>) -> anyhow::Result<Option<gosok_model::Tier>> {
    match t {
        Some(t) => Ok(Some(demand::parse_tier(t).ok_or_else(|| {
            usage(
                flag,
                format!("unknown tier {t:?} (anchor, commercial, public, academic, startup)"),
            )
        })?)),
        None => Ok(None),
    }
}

fn threads_arg(t: Option<usize>) -> anyhow::Result<usize> {
    match t {
        Some(0) => Err(usage("--threads", "must be at least 1")),
        Some(t) => Ok(t),
        None => Ok(std::thread::available_parallelism().map_or(2, |n| n.get())),
    }
}

fn headroom_cmd(a: HeadroomArgs) -> anyhow::Result<()> {
    let catalog = Catalog::builtin();
    let measure = gosok_plan::measure::Measure {
        target: Target::parse(&a.target)?,
        tier: tier_arg("--target-tier", &a.target_tier)?,
        policy: Policy::parse(&a.policy).map_err(|e| usage("--policy", e))?,
        seed: a.seed,
    };
    let tiers = a
        .tier
        .iter()
        .map(|t| TierDemand::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let threads = threads_arg(a.threads)?;
    let cluster = load_cluster(&a.cluster, &catalog)?;
    let w = read_workload(&a.fit, &catalog, BadRows::Fail)
        .map_err(|e| usage("--fit", e.to_string()))?;
    let fitted = demand::fit(&w.jobs)?;
    let days = a.days.unwrap_or(fitted.span_days.ceil());
    let inputs = gosok_plan::headroom::HeadroomInputs {
        demand: DemandInputs {
            tiers,
            scale: 1.0,
            days,
            seed: a.seed,
        },
        measure,
        threads,
        max_scale: a.max_scale,
        growth_per_year: a.growth_per_year,
    };
    let h = gosok_plan::headroom::plan_headroom(&cluster, &fitted, &catalog, &inputs)?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&h)?),
        Output::Table => print!("{}", gosok_plan::headroom::table(&h)),
    }
    Ok(())
}

fn capacity_cmd(a: CapacityArgs) -> anyhow::Result<()> {
    let catalog = Catalog::builtin();
    let target = Target::parse(&a.target)?;
    let tier = tier_arg("--tier", &a.tier)?;
    let grow = a
        .grow
        .iter()
        .map(|g| Grow::parse(g))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = Policy::parse(&a.policy).map_err(|e| usage("--policy", e))?;
    let threads = threads_arg(a.threads)?;
    let (cluster, jobs) = read_inputs(&a.cluster, &a.workload, &catalog)?;
    let inputs = CapacityInputs {
        measure: gosok_plan::measure::Measure {
            target,
            tier,
            policy,
            seed: a.seed,
        },
        grow,
        max_growth: a.max_growth,
        threads,
    };
    let plan = capacity::plan_capacity(&cluster, &jobs, &catalog, &inputs)?;
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
        };
        write("curve.csv", &capacity::curve_csv(&plan))?;
        write("report.json", &serde_json::to_string_pretty(&plan)?)?;
        write("cluster.toml", &plan.answer_cluster.to_toml())?;
        let svg_path = dir.join("curve.svg");
        gosok_plan::chart::curve_svg(&svg_path, &plan).map_err(|e| anyhow::anyhow!(e))?;
        let svg = std::fs::read_to_string(&svg_path).unwrap_or_default();
        let command: Vec<String> = std::env::args().collect();
        write(
            "report.html",
            &gosok_plan::chart::report_html(&plan, &svg, &command.join(" ")),
        )?;
        eprintln!(
            "wrote curve.csv, curve.svg, report.html, report.json and cluster.toml into {}",
            dir.display()
        );
    }
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        Output::Table => print!("{}", capacity::table(&plan)),
    }
    Ok(())
}

fn demand_cmd(a: DemandArgs) -> anyhow::Result<()> {
    let catalog = Catalog::builtin();
    let tiers = a
        .tier
        .iter()
        .map(|t| TierDemand::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let cluster = load_cluster(&a.cluster, &catalog)?;
    let w = read_workload(&a.fit, &catalog, BadRows::Fail)
        .map_err(|e| usage("--fit", e.to_string()))?;
    let fitted = demand::fit(&w.jobs)?;
    let days = a.days.unwrap_or(fitted.span_days.ceil());
    let d = demand::generate(
        fitted,
        &DemandInputs {
            tiers,
            scale: a.scale,
            days,
            seed: a.seed,
        },
    )?;
    let c = demand::cluster_with_tenants(&cluster, &d);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut text = String::with_capacity(d.workload.len() * 160);
    for j in &d.workload {
        text.push_str(&j.to_line());
        text.push('\n');
    }
    let write = |name: &str, body: &str| {
        let p = a.out.join(name);
        std::fs::write(&p, body).with_context(|| format!("writing {}", p.display()))
    };
    write("workload.jsonl", &text)?;
    write("cluster.toml", &c.to_toml())?;
    write("demand.json", &serde_json::to_string_pretty(&d)?)?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&d)?),
        Output::Table => {
            println!(
                "fitted {} jobs over {:.1} days: {:.0} jobs/day, {:.0} accelerator-hours/day",
                d.fitted.jobs,
                d.fitted.span_days,
                d.fitted.jobs_per_day,
                d.fitted.accelerator_hours_per_day
            );
            println!(
                "generated {} jobs over {days} days (scale {}, seed {}): {:.0} accelerator-hours/day",
                d.jobs, d.scale, d.seed, d.accelerator_hours_per_day
            );
            for t in &d.tiers {
                println!(
                    "  {:?}: {} tenants, share {:.2}, growth {:+.0} %/year: {} jobs, {:.0} accelerator-hours",
                    t.tier,
                    t.tenants,
                    t.share,
                    t.growth_per_year * 100.0,
                    t.jobs,
                    t.accelerator_hours
                );
            }
            println!(
                "wrote workload.jsonl, cluster.toml and demand.json into {}",
                a.out.display()
            );
        }
    }
    Ok(())
}

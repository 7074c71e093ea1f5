//! `gosok trace import …` and `gosok trace synth`: traces into gosok's own cluster and
//! workload files (`DIR/cluster.toml`, `DIR/workload.jsonl`, `DIR/import.json`), which
//! `gosok sim replay` then reads.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use gosok_model::Catalog;
use gosok_sim::BadRows;
use gosok_sim::import::mapped::{MappedParams, import_mapped};
use gosok_sim::import::openb::{OpenbParams, import_openb};
use gosok_sim::import::philly::{PhillyParams, import_philly};
use gosok_sim::import::synth::{SynthParams, synthesize};
use gosok_sim::import::{Imported, write_dir};

#[derive(Subcommand)]
pub enum TraceCommand {
    /// Import a published trace into DIR/cluster.toml and DIR/workload.jsonl.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Generate a synthetic highway and workload (seeded) into DIR.
    Synth(SynthArgs),
}

#[derive(Subcommand)]
pub enum ImportCommand {
    /// Alibaba GPU cluster trace v2023 (openb): a node list and a pod list with times.
    Openb(OpenbArgs),
    /// Microsoft Philly (Pollux's philly.csv) with Helios' virtual clusters (philly_vc.csv).
    Philly(PhillyArgs),
    /// Any CSV job list with a column mapping, against a cluster file.
    Csv(CsvArgs),
}

#[derive(Args)]
pub struct OpenbArgs {
    /// Node list CSV (sn,cpu_milli,memory_mib,gpu,model).
    #[arg(long)]
    nodes: PathBuf,
    /// Pod list CSV with creation_time, deletion_time and scheduled_time.
    #[arg(long)]
    pods: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Leave out rows that do not validate (counted in DIR/import.json) instead of stopping.
    #[arg(long)]
    skip_bad_rows: bool,
}

#[derive(Args)]
pub struct PhillyArgs {
    /// philly.csv (timestamp,duration,num_gpus,gpu_time,cluster).
    #[arg(long)]
    jobs: PathBuf,
    /// philly_vc.csv (vc,node num): the virtual clusters and their 8-GPU node counts.
    #[arg(long)]
    vcs: PathBuf,
    /// First submit time kept (inclusive), YYYY-MM-DD[ HH:MM:SS].
    #[arg(long)]
    from: Option<String>,
    /// Submit times before this are kept (exclusive).
    #[arg(long)]
    to: Option<String>,
    /// Catalog model the nodes are labelled with (power figures only).
    #[arg(long, default_value = "P100")]
    gpu_model: String,
    /// Divide submit times by K (K × the offered load; a sensitivity experiment).
    #[arg(long, default_value_t = 1.0)]
    arrival_compression: f64,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    skip_bad_rows: bool,
}

#[derive(Args)]
pub struct CsvArgs {
    /// The job list CSV.
    #[arg(long)]
    jobs: PathBuf,
    /// field=column pairs: submit_s and duration_s required; accelerators, id, tenant,
    /// cpu_milli, mem_mib, models, runtime_estimate_s, runtime_limit_s,
    /// duration_measured_on optional.
    #[arg(long)]
    map: String,
    /// The cluster file the jobs run on (copied to DIR/cluster.toml, with any tenants the
    /// jobs name that it lacks).
    #[arg(long)]
    cluster: PathBuf,
    /// Tenant of every job when no column is mapped to tenant.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Unit of the time columns: s, ms, min or h.
    #[arg(long, default_value = "s")]
    time_unit: String,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    skip_bad_rows: bool,
}

#[derive(Args)]
pub struct SynthArgs {
    /// Nodes of the synthetic highway (8 accelerators each).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Sites the nodes are spread over.
    #[arg(long, default_value_t = 3)]
    sites: usize,
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Seed of the highway and the workload; recorded in DIR/import.json.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Offered load: accelerator-seconds asked per second over the accelerators there are.
    #[arg(long, default_value_t = 0.9)]
    load: f64,
    /// Mean arrivals per second (overrides --load).
    #[arg(long)]
    arrival_rate: Option<f64>,
    #[arg(long)]
    out: PathBuf,
}

fn bad(skip: bool) -> BadRows {
    if skip { BadRows::Skip } else { BadRows::Fail }
}

fn finish(out: &std::path::Path, imported: &Imported, header: &str) -> anyhow::Result<()> {
    write_dir(out, imported, header)?;
    eprint!("{}", imported.summary.text());
    eprintln!(
        "wrote {0}/cluster.toml, {0}/workload.jsonl and {0}/import.json",
        out.display()
    );
    Ok(())
}

pub fn run(command: TraceCommand) -> anyhow::Result<()> {
    let catalog = Catalog::builtin();
    match command {
        TraceCommand::Import(ImportCommand::Openb(a)) => {
            let p = OpenbParams {
                nodes: a.nodes.clone(),
                pods: a.pods.clone(),
                bad: bad(a.skip_bad_rows),
            };
            let im = import_openb(&p, &catalog)?;
            let header = format!(
                "Alibaba openb, imported by gosok trace import openb\nnodes: {}\npods: {}",
                a.nodes.display(),
                a.pods.display()
            );
            finish(&a.out, &im, &header)
        }
        TraceCommand::Import(ImportCommand::Philly(a)) => {
            let mut p = PhillyParams::new(a.jobs.clone(), a.vcs.clone());
            p.from = a.from.clone();
            p.to = a.to.clone();
            p.gpu_model = a.gpu_model.clone();
            p.arrival_compression = a.arrival_compression;
            p.bad = bad(a.skip_bad_rows);
            let im = import_philly(&p, &catalog)?;
            let header = format!(
                "Microsoft Philly, imported by gosok trace import philly\njobs: {}\nvcs: {}\nwindow: [{}, {})",
                a.jobs.display(),
                a.vcs.display(),
                a.from.as_deref().unwrap_or("start"),
                a.to.as_deref().unwrap_or("end")
            );
            finish(&a.out, &im, &header)
        }
        TraceCommand::Import(ImportCommand::Csv(a)) => {
            let seconds_per_unit = match a.time_unit.as_str() {
                "s" => 1.0,
                "ms" => 0.001,
                "min" => 60.0,
                "h" => 3600.0,
                other => anyhow::bail!("--time-unit: {other:?}; use s, ms, min or h"),
            };
            let cluster = gosok_sim::read_cluster(&a.cluster, &catalog)?;
            let p = MappedParams {
                jobs: a.jobs.clone(),
                map: a.map.clone(),
                cluster,
                tenant: a.tenant.clone(),
                seconds_per_unit,
                bad: bad(a.skip_bad_rows),
            };
            let im = import_mapped(&p, &catalog)?;
            let header = format!(
                "{} on {}, imported by gosok trace import csv --map {}",
                a.jobs.display(),
                a.cluster.display(),
                a.map
            );
            finish(&a.out, &im, &header)
        }
        TraceCommand::Synth(a) => {
            let p = SynthParams {
                nodes: a.nodes,
                sites: a.sites,
                jobs: a.jobs,
                seed: a.seed,
                load: a.load,
                arrival_rate_per_s: a.arrival_rate,
            };
            let im = synthesize(&p)?;
            let header = format!(
                "synthetic highway and workload: gosok trace synth --nodes {} --sites {} --jobs {} --seed {} --load {}",
                a.nodes, a.sites, a.jobs, a.seed, a.load
            );
            finish(&a.out, &im, &header)
        }
    }
}

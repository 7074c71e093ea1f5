//! `gosok`: one binary, one subcommand per job.

mod agent_cmd;
mod alloc;
mod api;
mod batch_script;
mod bench;
mod bench_agents;
mod bench_console;
mod bench_quality;
mod bench_replicas;
mod client;
mod human;
mod plan_cmd;
mod replica_cmd;
mod server_cmd;
mod sim;
mod sim_fgd;
mod store_cmd;
mod trace;
mod up;
mod usage_cmd;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Counts live heap bytes so that `gosok bench` can report what the engine really holds.
#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

#[derive(Parser)]
#[command(
    name = "gosok",
    version,
    about = "gosok: the control plane of a shared, multi-site AI compute highway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure gosok on this machine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Replay traces through gosok's policies (the digital twin's experiments).
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Import traces (Alibaba openb, Philly, any CSV) and generate synthetic workloads.
    #[command(subcommand)]
    Trace(trace::TraceCommand),
    /// Capacity planning: what a power budget holds, the capacity a demand needs, demand models.
    #[command(subcommand)]
    Plan(plan_cmd::PlanCommand),
    /// The controller: `gosok server init`, `gosok server run`.
    #[command(subcommand)]
    Server(server_cmd::ServerCommand),
    #[command(flatten)]
    Client(client::Command),
    #[command(flatten)]
    Accounting(usage_cmd::Command),
    /// Start a local highway: a controller, node agents for a demo highway (pohang, jeonnam,
    /// ulsan) and demo tenants, in one process tree. Ctrl-C stops it; starting it again on the
    /// same data directory resumes.
    Up(up::UpArgs),
    /// A node agent: registers this machine's node (or --nodes N virtual ones) with the
    /// controller and runs the tasks placed on it.
    Agent(Box<agent_cmd::AgentArgs>),
    /// Print gosok's version.
    Version,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Drive the scheduling engine on a synthetic highway: placements per second, pass
    /// latency with a long queue, memory per pending job.
    Engine(EngineArgs),
    /// Drive a controller over loopback HTTP: durable submissions per second, GET /v1/queue
    /// with a long queue, restart time with a long event log.
    Server(server_cmd::BenchServerArgs),
    /// Run trivial tasks on virtual nodes of a real agent: task starts per second,
    /// submit-to-running latency, and an idle agent's cost per node.
    Agents(bench_agents::BenchAgentsArgs),
    /// Time the web console's pages against a controller with the large demo highway and
    /// 100,000 jobs: latency per page, page weight, live-update delay.
    Console(bench_console::BenchConsoleArgs),
    /// Controller replicas on PostgreSQL against one on SQLite: durable submissions per
    /// second, follower lag, and takeover time after SIGKILL of the leader.
    Replicas(bench_replicas::BenchReplicasArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scorers {
    Default,
    Mixed,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Preset {
    /// 3 sites, 10,000 nodes × 8 accelerators, 100,000 pending jobs.
    Default,
    /// The national highway: 6 sites, 32,500 nodes × 8 (260,000 accelerators), 1,000,000
    /// pending jobs with gangs up to 256 nodes, 32.5 MW sites, 65 job ends per pass, no
    /// placement-quality run.
    National,
}

/// Each flag left out takes the preset's value (shown as default / national).
#[derive(Args)]
struct EngineArgs {
    /// The highway and queue to start from; the flags below override its values.
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    preset: Preset,
    /// Sites of the synthetic highway [3 / 6].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    sites: Option<u64>,
    /// Nodes in all, spread evenly over the sites [10000 / 32500].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    nodes: Option<u64>,
    /// Accelerators in each node [8].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    accelerators_per_node: Option<u64>,
    /// Pending jobs kept in the queue while passes are timed [100000 / 1000000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pending: Option<u64>,
    /// Steady-state scheduling passes timed [200].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    passes: Option<u64>,
    /// Running jobs that end before each steady-state pass [20 / 65].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    ends_per_pass: Option<u64>,
    /// Empty highways each throughput measurement is repeated on (the median is reported) [3].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    rounds: Option<u64>,
    /// Facility power budget of each site, in MW [20 / 32.5].
    #[arg(long)]
    site_power_budget_mw: Option<f64>,
    /// Largest gang of the queued mix, in nodes; above 64 the mix also asks for 128 and 256
    /// [64 / 256].
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=100_000))]
    max_gang_nodes: Option<u64>,
    /// Seed of the synthetic highway and workload; recorded in the report [1].
    #[arg(long)]
    seed: Option<u64>,
    /// Placement scorers of the speed measurements: default (expected waste) or mixed (the
    /// weighted bestfit + fgd + consolidate + power mix of earlier versions).
    #[arg(long, value_enum, default_value_t = Scorers::Default)]
    scorers: Scorers,
    /// Nodes of the placement-quality highway (unallocated accelerators at full load); 0
    /// skips the measurement [1000 / 0].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    quality_nodes: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Started by `gosok agent` itself (`gosok agent-watchdog WORK_DIR`): kills the agent's
/// tasks if the agent dies. Dispatched before the parser so that typo suggestions never
/// offer it.
const WATCHDOG: &str = "agent-watchdog";

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == WATCHDOG {
        gosok_agent::leftovers::watchdog(std::path::Path::new(&args[2]));
        return ExitCode::SUCCESS;
    }
    client::move_global_flags(&mut args);
    let cli = Cli::parse_from(args);
    if !matches!(
        cli.command,
        Command::Up(_) | Command::Agent(_) | Command::Server(_) | Command::Bench(_)
    ) {
        // A command whose output goes to `head` ends quietly when the reader goes away, as
        // Unix tools do (Rust ignores SIGPIPE, and the next print would panic). Long-running
        // servers keep ignoring it: a peer that hangs up must not kill them.
        // SAFETY: setting a signal's disposition to its default has no preconditions.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Bad input to a planning command is a usage error, as clap's own are.
            match e.downcast_ref::<gosok_plan::PlanError>() {
                Some(p) if p.is_usage() => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sim(c) => sim::run(c)?,
        Command::Trace(c) => trace::run(c)?,
        Command::Plan(c) => plan_cmd::run(c)?,
        Command::Version => println!("gosok {}", env!("CARGO_PKG_VERSION")),
        Command::Server(c) => server_cmd::run(c)?,
        Command::Client(c) => client::run(c)?,
        Command::Accounting(c) => usage_cmd::run(c)?,
        Command::Bench(BenchCommand::Server(a)) => server_cmd::bench(a)?,
        Command::Bench(BenchCommand::Agents(a)) => bench_agents::run(a)?,
        Command::Bench(BenchCommand::Console(a)) => bench_console::run(a)?,
        Command::Bench(BenchCommand::Replicas(a)) => bench_replicas::run(a)?,
        Command::Up(a) => up::run(a)?,
        Command::Agent(a) => agent_cmd::run(*a)?,
        Command::Bench(BenchCommand::Engine(a)) => {
            let base = bench::EngineBenchParams::preset(match a.preset {
                Preset::Default => "default",
                Preset::National => "national",
            })?;
            // Counts were range-checked by clap, so they fit in usize on every target.
            let p = bench::EngineBenchParams {
                sites: a.sites.map_or(base.sites, |v| v as usize),
                nodes: a.nodes.map_or(base.nodes, |v| v as usize),
                accelerators_per_node: a
                    .accelerators_per_node
                    .unwrap_or(base.accelerators_per_node),
                pending: a.pending.map_or(base.pending, |v| v as usize),
                passes: a.passes.map_or(base.passes, |v| v as usize),
                ends_per_pass: a.ends_per_pass.map_or(base.ends_per_pass, |v| v as usize),
                rounds: a.rounds.map_or(base.rounds, |v| v as usize),
                site_power_budget_mw: a.site_power_budget_mw.unwrap_or(base.site_power_budget_mw),
                seed: a.seed.unwrap_or(base.seed),
                scorers: match a.scorers {
                    Scorers::Default => "default",
                    Scorers::Mixed => "mixed",
                }
                .into(),
                quality_nodes: a.quality_nodes.map_or(base.quality_nodes, |v| v as usize),
                max_gang_replicas: a.max_gang_nodes.unwrap_or(base.max_gang_replicas),
                preset: base.preset,
            };
            let heap = bench::HeapProbe {
                live_bytes: alloc::live_bytes,
                live_allocs: alloc::live_allocs,
            };
            let report =
                bench::run_engine_bench(&p, &heap, &mut |line| eprintln!("bench: {line}"))?;
            match a.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Format::Table => print!("{}", bench::table(&report)),
            }
        }
    }
    Ok(())
}

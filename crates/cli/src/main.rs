//! `gosok`: one binary, one subcommand per job.

mod agent_cmd;
mod alloc;
mod api;
mod batch_script;
mod bench;
mod bench_agents;
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

#[derive(Args)]
struct EngineArgs {
    /// Sites of the synthetic highway.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    sites: u64,
    /// Nodes in all, spread evenly over the sites.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    nodes: u64,
    /// Accelerators in each node.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    accelerators_per_node: u64,
    /// Pending jobs kept in the queue while passes are timed.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pending: u64,
    /// Steady-state scheduling passes timed.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    passes: u64,
    /// Running jobs that end before each steady-state pass.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    ends_per_pass: u64,
    /// Empty highways each throughput measurement is repeated on (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    rounds: u64,
    /// Facility power budget of each site, in MW.
    #[arg(long, default_value_t = 20.0)]
    site_power_budget_mw: f64,
    /// Seed of the synthetic highway and workload; recorded in the report.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Placement scorers of the speed measurements: default (expected waste) or mixed (the
    /// weighted bestfit + fgd + consolidate + power mix of earlier versions).
    #[arg(long, value_enum, default_value_t = Scorers::Default)]
    scorers: Scorers,
    /// Nodes of the placement-quality highway (unallocated accelerators at full load); 0
    /// skips the measurement.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    quality_nodes: u64,
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
        Command::Bench(BenchCommand::Replicas(a)) => bench_replicas::run(a)?,
        Command::Up(a) => up::run(a)?,
        Command::Agent(a) => agent_cmd::run(*a)?,
        Command::Bench(BenchCommand::Engine(a)) => {
            // Counts were range-checked by clap, so they fit in usize on every target.
            let p = bench::EngineBenchParams {
                sites: a.sites as usize,
                nodes: a.nodes as usize,
                accelerators_per_node: a.accelerators_per_node,
                pending: a.pending as usize,
                passes: a.passes as usize,
                ends_per_pass: a.ends_per_pass as usize,
                rounds: a.rounds as usize,
                site_power_budget_mw: a.site_power_budget_mw,
                seed: a.seed,
                scorers: match a.scorers {
                    Scorers::Default => "default",
                    Scorers::Mixed => "mixed",
                }
                .into(),
                quality_nodes: a.quality_nodes as usize,
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

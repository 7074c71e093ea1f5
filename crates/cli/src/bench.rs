//! `gosok bench engine`: how fast the real engine places work on a synthetic highway, how
//! long one scheduling pass takes with a long queue, and what a pending job costs in memory.
//!
//! Only engine calls are timed (`Instant` around `apply` and `schedule`); building the highway,
//! generating jobs and the bookkeeping of this driver are not. Everything is seeded, so two
//! runs with the same flags do the same work; only the clock differs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use gosok_engine::{Decision, Engine, EngineConfig, Event, JobId};
use gosok_model::{Catalog, ClusterSpec, JobSpec, TaskGroupSpec};
use gosok_synth::{HighwayParams, WorkloadGen, WorkloadParams};

/// Fraction of the highway's accelerators the throughput batches ask for: enough to be a
/// large batch, little enough that power budgets and fragmentation do not turn the
/// measurement into one of failed placements.
const THROUGHPUT_FILL: f64 = 0.4;
/// Engine time between two steady-state passes.
const PASS_INTERVAL_S: u64 = 10;
/// Passes run before the measured ones: the first meets the whole new queue at once, the
/// second finds little changed.
const WARMUP_PASSES: usize = 2;
/// After the measured passes: most passes run with no event between until one changes
/// nothing (the engine is idle); then one more pass is timed as the idle pass.
const MAX_SETTLE_PASSES: usize = 8;
/// CPU and memory every benchmark replica asks per accelerator (as the synthetic workload
/// does on 8-way nodes).
const CPU_PER_ACCEL_MILLI: u64 = 10_000;
const MEM_PER_ACCEL_MIB: u64 = 96 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct EngineBenchParams {
    pub sites: usize,
    pub nodes: usize,
    pub accelerators_per_node: u64,
    /// Pending jobs during the steady-state passes and the memory measurement.
    pub pending: usize,
    /// Steady-state passes measured.
    pub passes: usize,
    /// Running jobs whose tasks end before each steady-state pass.
    pub ends_per_pass: usize,
    /// Fresh highways the throughput measurements are repeated on (the median is reported).
    pub rounds: usize,
    pub site_power_budget_mw: f64,
    pub seed: u64,
    /// Placement scorers of the speed measurements: `default` (expected waste) or `mixed`
    /// (the weighted mix that was the default before).
    pub scorers: String,
    /// Nodes of the placement-quality highway (0: no quality measurement).
    pub quality_nodes: usize,
    /// Largest gang of the queued mix, in nodes (above 64 the mix also asks for 128 and 256).
    pub max_gang_replicas: u64,
    /// The preset the parameters started from: `default` or `national`.
    pub preset: String,
}

/// The presets' names, for errors and help.
pub const PRESETS: [&str; 2] = ["default", "national"];

impl EngineBenchParams {
    /// The parameters of a preset: `default` (3 sites, 10,000 nodes × 8, 100,000 pending) or
    /// `national` (the national highway: 6 sites, 32,500 nodes × 8 = 260,000 accelerators,
    /// 1,000,000 pending with gangs up to 256 nodes). The national sites get the same power
    /// per node as the default ones (so power binds alike) and the same job ends per node
    /// before each pass.
    pub fn preset(name: &str) -> Result<EngineBenchParams> {
        let default = EngineBenchParams {
            sites: 3,
            nodes: 10_000,
            accelerators_per_node: 8,
            pending: 100_000,
            passes: 200,
            ends_per_pass: 20,
            rounds: 3,
            site_power_budget_mw: 20.0,
            seed: 1,
            scorers: "default".into(),
            quality_nodes: 1_000,
            max_gang_replicas: 64,
            preset: "default".into(),
        };
        match name {
            "default" => Ok(default),
            "national" => Ok(EngineBenchParams {
                sites: 6,
                nodes: 32_500,
                pending: 1_000_000,
                ends_per_pass: 65,
                site_power_budget_mw: 32.5,
                quality_nodes: 0,
                max_gang_replicas: 256,
                preset: "national".into(),
                ..default
            }),
            other => bail!(
                "--preset: is {other:?}; it must be one of {}",
                PRESETS.join(", ")
            ),
        }
    }

    /// What this preset promises: pass p50 and p99 in ms, engine heap in bytes, snapshot
    /// restore in ms (issue targets: the default highway keeps its pass under 10 ms, the
    /// national one under 25 ms in 1 GiB, restored in 5 s).
    fn goals(&self) -> Goals {
        if self.preset == "national" {
            Goals {
                pass_p50_ms: None,
                pass_p99_ms: 25.0,
                engine_bytes: Some(1 << 30),
                restore_ms: Some(5_000.0),
            }
        } else {
            Goals {
                pass_p50_ms: Some(3.0),
                pass_p99_ms: 10.0,
                engine_bytes: None,
                restore_ms: None,
            }
        }
    }
}

struct Goals {
    pass_p50_ms: Option<f64>,
    pass_p99_ms: f64,
    engine_bytes: Option<u64>,
    restore_ms: Option<f64>,
}

/// Reads the process's heap counters (the binary's counting allocator).
pub struct HeapProbe {
    pub live_bytes: fn() -> usize,
    pub live_allocs: fn() -> usize,
}

#[derive(Debug, Serialize)]
pub struct Sizes {
    pub sites: usize,
    pub racks: usize,
    pub nodes: u64,
    pub accelerators: u64,
    pub tenants: usize,
    /// Pending jobs when the steady-state passes began.
    pub pending: usize,
    /// Jobs running when the steady-state passes began.
    pub running_jobs: usize,
}

/// One batch placed onto an empty highway, repeated `rounds` times.
#[derive(Debug, Serialize)]
pub struct Throughput {
    pub jobs_per_round: usize,
    /// Jobs placed in the median round.
    pub placed: usize,
    /// Passes the median round took to place what it could.
    pub passes: usize,
    /// Engine time of the median round's passes.
    pub engine_ms: f64,
    pub per_s_by_round: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Steady {
    pub passes: usize,
    pub pass_p50_ms: f64,
    pub pass_p90_ms: f64,
    pub pass_p99_ms: f64,
    pub pass_max_ms: f64,
    /// The first pass after the pending jobs arrived: it meets all of them for the first time.
    pub first_pass_ms: f64,
    /// The second pass, right after the first with nothing changed in between.
    pub second_pass_ms: f64,
    /// After the measured passes: passes with no event between until one changed nothing
    /// (at most 8; the highway keeps preempting a few jobs a pass, so it may never settle).
    pub settle_passes: usize,
    /// The last of those: a full pass over the queue that finds nothing to do.
    pub settle_pass_ms: f64,
    /// One more pass with no event since: skipped when the engine is idle (`is_idle`).
    pub idle_pass_ms: f64,
    pub idle_pass_skipped: bool,
    pub starts_per_pass: f64,
    pub preemptions_per_pass: f64,
    pub tasks_ended_per_pass: f64,
    /// Mean engine time of one `TaskEnded` or `AdvanceTime` event.
    pub event_us: f64,
    pub pending_min: usize,
    pub pending_max: usize,
    /// Class queues the pending jobs formed at the end: what one pass walks.
    pub queue_classes: usize,
    /// The slowest pass and what it did.
    pub slowest_pass: Option<SlowPass>,
    /// Where the measured passes' time went, on average.
    pub breakdown_mean: Breakdown,
    /// ... and in the passes at or above the p99.
    pub breakdown_p99: Breakdown,
}

#[derive(Debug, Serialize)]
pub struct SlowPass {
    pub ms: f64,
    pub stats: gosok_engine::PassStats,
    pub times: Breakdown,
}

/// Where passes' time went (the engine's `PassTimes` on a clock the benchmark lends it), in
/// milliseconds: a mean over some passes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Breakdown {
    pub passes: usize,
    pub total_ms: f64,
    /// Placement searches of the jobs considered (`place_now`).
    pub place_ms: f64,
    /// Preemption searches, their tentative placements included.
    pub preempt_ms: f64,
    /// Reservation plans.
    pub reserve_ms: f64,
    /// The idle check at the pass's start and end.
    pub settle_ms: f64,
    /// The rest: queue order and the pass-wide merge, tenant limits, the failed-shape cache,
    /// starts and their bookkeeping.
    pub other_ms: f64,
}

impl Breakdown {
    fn mean(times: &[gosok_engine::PassTimes]) -> Breakdown {
        let n = times.len().max(1) as f64;
        let sum = |f: fn(&gosok_engine::PassTimes) -> u64| {
            times.iter().map(f).sum::<u64>() as f64 / n / 1e6
        };
        Breakdown {
            passes: times.len(),
            total_ms: sum(|t| t.total_ns),
            place_ms: sum(|t| t.place_ns),
            preempt_ms: sum(|t| t.preempt_ns),
            reserve_ms: sum(|t| t.reserve_ns),
            settle_ms: sum(|t| t.settle_ns),
            other_ms: sum(|t| t.other_ns()),
        }
    }
}

/// Nanoseconds since the first reading: the clock the benchmark lends the engine for
/// `PassTimes`.
fn bench_clock_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub jobs_submitted: usize,
    pub rejected: usize,
    /// Growth of live heap bytes over the submissions.
    pub bytes: i64,
    pub allocations: i64,
    pub bytes_per_pending_job: f64,
    pub allocations_per_pending_job: f64,
    /// Engine time of one submission.
    pub submit_us: f64,
    /// All the heap the engine holds after the steady-state passes (freed when it is
    /// dropped): highway, jobs, queues, indexes.
    pub engine_bytes: u64,
}

/// The engine's snapshot after the steady-state passes (what the controller writes).
#[derive(Debug, Serialize)]
pub struct SnapshotTimes {
    pub bytes: usize,
    pub encode_ms: f64,
    pub restore_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub goal: String,
    pub met: bool,
}

#[derive(Debug, Serialize)]
pub struct Targets {
    pub placements_per_s: Target,
    pub gang16_placements_per_s: Target,
    pub pass_p50_ms: Option<Target>,
    pub pass_p99_ms: Target,
    pub bytes_per_pending_job: Target,
    pub engine_bytes: Option<Target>,
    pub snapshot_restore_ms: Option<Target>,
}

#[derive(Debug, Serialize)]
pub struct EngineBenchReport {
    pub benchmark: &'static str,
    pub gosok_version: &'static str,
    pub seed: u64,
    pub params: EngineBenchParams,
    pub sizes: Sizes,
    pub placements_per_s: f64,
    pub gang16_placements_per_s: f64,
    pub pass_p50_ms: f64,
    pub pass_p99_ms: f64,
    pub bytes_per_pending_job: f64,
    pub single_node: Throughput,
    pub gang16: Throughput,
    pub steady: Steady,
    pub memory: Memory,
    pub snapshot: SnapshotTimes,
    pub targets: Targets,
    /// Unallocated accelerators at full load (`bench_quality`).
    pub quality: Option<crate::bench_quality::Quality>,
}

impl EngineBenchParams {
    fn highway_params(&self) -> HighwayParams {
        HighwayParams {
            sites: self.sites,
            nodes: self.nodes,
            accelerators_per_node: self.accelerators_per_node,
            site_power_budget_mw: self.site_power_budget_mw,
            ..HighwayParams::default()
        }
    }

    /// Checks the parameters; errors name the command-line flag to change.
    pub fn validate(&self) -> Result<()> {
        if let Err(e) = self.highway_params().validate() {
            bail!("--{}: {}", e.field.replace('_', "-"), e.message);
        }
        if !matches!(self.scorers.as_str(), "default" | "mixed") {
            bail!(
                "--scorers: is {:?}; it must be default or mixed",
                self.scorers
            );
        }
        if !PRESETS.contains(&self.preset.as_str()) {
            bail!(
                "--preset: is {:?}; it must be one of {}",
                self.preset,
                PRESETS.join(", ")
            );
        }
        if !(2..=100_000).contains(&self.max_gang_replicas) {
            bail!(
                "--max-gang-nodes: is {}; it must be between 2 and 100000",
                self.max_gang_replicas
            );
        }
        if self.quality_nodes > 100_000 {
            bail!("--quality-nodes: is {}; at most 100000", self.quality_nodes);
        }
        for (flag, value, max) in [
            ("pending", self.pending, 10_000_000),
            ("passes", self.passes, 1_000_000),
            ("ends-per-pass", self.ends_per_pass, 1_000_000),
            ("rounds", self.rounds, 1_000),
        ] {
            if value == 0 || value > max {
                bail!("--{flag}: is {value}; it must be between 1 and {max}");
            }
        }
        Ok(())
    }
}

/// Runs the whole benchmark. `progress` receives a line as each phase begins.
pub fn run_engine_bench(
    p: &EngineBenchParams,
    heap: &HeapProbe,
    progress: &mut dyn FnMut(&str),
) -> Result<EngineBenchReport> {
    p.validate()?;
    let cluster = gosok_synth::highway(&p.highway_params(), p.seed);
    let (nodes, accelerators) = cluster.node.iter().fold((0, 0), |(n, a), s| {
        let c = s.count.unwrap_or(1);
        (n + c, a + c * s.accelerators)
    });
    progress(&format!(
        "highway: {} sites, {nodes} nodes, {accelerators} accelerators",
        cluster.site.len()
    ));

    progress("single-node placements onto an empty highway");
    let batch = single_node_batch(&cluster, accelerators, p.seed);
    let single_node = throughput(&cluster, p, &batch)?;

    progress("16-node gang placements onto an empty highway");
    let gangs = gang_batch(&cluster, accelerators, p.accelerators_per_node);
    let gang16 = throughput(&cluster, p, &gangs)?;

    progress(&format!(
        "steady state: filling the highway, queueing {} jobs, {} passes",
        p.pending, p.passes
    ));
    let (steady, memory, snapshot, pending, running_jobs) = steady_state(&cluster, p, heap)?;

    let quality = if p.quality_nodes > 0 {
        progress(&format!(
            "placement quality: {} nodes filled to their capacity, three placements",
            p.quality_nodes
        ));
        Some(crate::bench_quality::placement_quality(
            p.sites.min(p.quality_nodes),
            p.quality_nodes,
            p.accelerators_per_node,
            p.seed,
        )?)
    } else {
        None
    };

    let rate = |t: &Throughput| {
        if t.engine_ms > 0.0 {
            t.placed as f64 / (t.engine_ms / 1000.0)
        } else {
            0.0
        }
    };
    let placements_per_s = rate(&single_node);
    let gang16_placements_per_s = rate(&gang16);
    let goals = p.goals();
    Ok(EngineBenchReport {
        benchmark: "engine",
        gosok_version: env!("CARGO_PKG_VERSION"),
        seed: p.seed,
        params: p.clone(),
        sizes: Sizes {
            sites: cluster.site.len(),
            racks: cluster.rack.len(),
            nodes,
            accelerators,
            tenants: cluster.tenant.len(),
            pending,
            running_jobs,
        },
        placements_per_s,
        gang16_placements_per_s,
        pass_p50_ms: steady.pass_p50_ms,
        pass_p99_ms: steady.pass_p99_ms,
        bytes_per_pending_job: memory.bytes_per_pending_job,
        targets: Targets {
            placements_per_s: Target {
                goal: ">= 100000".into(),
                met: placements_per_s >= 100_000.0,
            },
            gang16_placements_per_s: Target {
                goal: ">= 1000".into(),
                met: gang16_placements_per_s >= 1_000.0,
            },
            pass_p50_ms: goals.pass_p50_ms.map(|g| Target {
                goal: format!("< {g}"),
                met: steady.pass_p50_ms < g,
            }),
            pass_p99_ms: Target {
                goal: format!("< {}", goals.pass_p99_ms),
                met: steady.pass_p99_ms < goals.pass_p99_ms,
            },
            bytes_per_pending_job: Target {
                goal: "<= 1024".into(),
                met: memory.bytes_per_pending_job <= 1024.0,
            },
            engine_bytes: goals.engine_bytes.map(|g| Target {
                goal: format!("< {} MiB", g >> 20),
                met: memory.engine_bytes < g,
            }),
            snapshot_restore_ms: goals.restore_ms.map(|g| Target {
                goal: format!("< {g}"),
                met: snapshot.restore_ms < g,
            }),
        },
        single_node,
        gang16,
        steady,
        memory,
        snapshot,
        quality,
    })
}

fn new_engine(cluster: &ClusterSpec, p: &EngineBenchParams) -> Result<Engine> {
    let cfg = EngineConfig {
        seed: p.seed,
        scorers: if p.scorers == "mixed" {
            gosok_engine::config::mixed_scorers()
        } else {
            gosok_engine::config::default_scorers()
        },
        ..EngineConfig::default()
    };
    Engine::new(Catalog::builtin(), cluster, cfg)
        .context("the engine refused the synthetic highway (a gosok-synth bug)")
}

/// Tenants with neither quota nor share cap: the throughput batches use them so that they
/// measure placement, not tenant limits.
fn open_tenants(cluster: &ClusterSpec) -> Vec<String> {
    let open: Vec<String> = cluster
        .tenant
        .iter()
        .filter(|t| t.quotas.is_empty() && t.share_cap >= 1.0)
        .map(|t| t.name.clone())
        .collect();
    if open.is_empty() {
        cluster.tenant.iter().map(|t| t.name.clone()).collect()
    } else {
        open
    }
}

/// Single-replica jobs of the synthetic mix (fractional and 1–8 accelerators), up to
/// `THROUGHPUT_FILL` of the highway.
fn single_node_batch(
    cluster: &ClusterSpec,
    accelerators: u64,
    seed: u64,
) -> Vec<(String, JobSpec)> {
    let budget = (accelerators as f64 * 1000.0 * THROUGHPUT_FILL) as u64;
    let tenants = open_tenants(cluster);
    let params = WorkloadParams {
        gang_weight: 0.0,
        ..WorkloadParams::default()
    };
    let mut used = 0;
    let mut out = Vec::new();
    for (i, job) in WorkloadGen::new(&params, cluster, seed.wrapping_add(1)).enumerate() {
        let milli = job.spec.total_accelerator_milli();
        if used + milli > budget || tenants.is_empty() {
            break;
        }
        used += milli;
        out.push((tenants[i % tenants.len()].clone(), job.spec));
    }
    out
}

/// Gangs of 16 full nodes (8 accelerators each, fewer on smaller nodes), any model, up to
/// `THROUGHPUT_FILL` of the highway.
fn gang_batch(cluster: &ClusterSpec, accelerators: u64, per_node: u64) -> Vec<(String, JobSpec)> {
    let k = per_node.min(8);
    let count = (accelerators as f64 * THROUGHPUT_FILL / (16 * k) as f64) as usize;
    let tenants = open_tenants(cluster);
    if tenants.is_empty() {
        return Vec::new();
    }
    let mut group = TaskGroupSpec::whole(16, k);
    group.cpu_milli = k * CPU_PER_ACCEL_MILLI;
    group.mem_mib = k * MEM_PER_ACCEL_MIB;
    let mut spec = JobSpec::single(group);
    spec.runtime_estimate_s = Some(4 * 3600);
    (0..count.min(5_000))
        .map(|i| (tenants[i % tenants.len()].clone(), spec.clone()))
        .collect()
}

fn is_start(d: &Decision) -> bool {
    matches!(d, Decision::Start { .. })
}

/// Submits `batch` to fresh engines and times the passes that place it, `rounds` times.
fn throughput(
    cluster: &ClusterSpec,
    p: &EngineBenchParams,
    batch: &[(String, JobSpec)],
) -> Result<Throughput> {
    let mut rounds = Vec::new();
    for _ in 0..p.rounds {
        let mut engine = new_engine(cluster, p)?;
        for (i, (tenant, spec)) in batch.iter().enumerate() {
            let ev = Event::Submit {
                id: JobId(i as u64 + 1),
                tenant: tenant.clone(),
                spec: spec.clone(),
            };
            engine.apply(ev).context("submitting a benchmark job")?;
        }
        let (mut placed, mut passes, mut time) = (0, 0, Duration::ZERO);
        // Later passes only pick up what an earlier one left; stop when one places nothing.
        while engine.pending_count() > 0 && passes < 20 {
            let t = Instant::now();
            let out = engine.schedule();
            time += t.elapsed();
            passes += 1;
            let started = out.iter().filter(|d| is_start(d)).count();
            placed += started;
            if started == 0 {
                break;
            }
        }
        rounds.push((placed, passes, time));
    }
    let per_s = |r: &(usize, usize, Duration)| {
        let s = r.2.as_secs_f64();
        if s > 0.0 { r.0 as f64 / s } else { 0.0 }
    };
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|&a, &b| per_s(&rounds[a]).total_cmp(&per_s(&rounds[b])));
    let median = rounds
        .get(order[order.len() / 2])
        .copied()
        .unwrap_or((0, 0, Duration::ZERO));
    Ok(Throughput {
        jobs_per_round: batch.len(),
        placed: median.0,
        passes: median.1,
        engine_ms: median.2.as_secs_f64() * 1000.0,
        per_s_by_round: rounds.iter().map(|r| per_s(r).round()).collect(),
    })
}

/// Running jobs as the decisions report them, with random picks for ending some.
#[derive(Default)]
struct Running {
    list: Vec<(JobId, u32, u32)>,
    pos: HashMap<JobId, usize>,
}

impl Running {
    fn track(&mut self, out: &[Decision]) {
        for d in out {
            match d {
                Decision::Start {
                    job,
                    attempt,
                    tasks,
                } => {
                    let entry = (*job, *attempt, tasks.len() as u32);
                    match self.pos.get(job) {
                        Some(&i) => self.list[i] = entry,
                        None => {
                            self.pos.insert(*job, self.list.len());
                            self.list.push(entry);
                        }
                    }
                }
                Decision::Preempt { job, .. }
                | Decision::Requeue { job, .. }
                | Decision::Stop { job, .. }
                | Decision::Finish { job, .. } => self.remove(*job),
                _ => {}
            }
        }
    }

    fn remove(&mut self, job: JobId) {
        let Some(i) = self.pos.remove(&job) else {
            return;
        };
        self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.pos.insert(moved.0, i);
        }
    }

    fn take_random(&mut self, rng: &mut ChaCha8Rng) -> Option<(JobId, u32, u32)> {
        if self.list.is_empty() {
            return None;
        }
        let e = self.list[rng.gen_range(0..self.list.len())];
        self.remove(e.0);
        Some(e)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Fills the highway with the synthetic mix, queues `p.pending` more jobs (measuring the heap
/// growth), then runs passes in steady state: before each, some running jobs end and the
/// clock moves; after each, new jobs keep the queue at its length.
fn steady_state(
    cluster: &ClusterSpec,
    p: &EngineBenchParams,
    heap: &HeapProbe,
) -> Result<(Steady, Memory, SnapshotTimes, usize, usize)> {
    let mut engine = new_engine(cluster, p)?;
    engine.lend_clock(Some(bench_clock_ns));
    let mix = WorkloadParams {
        max_gang_replicas: p.max_gang_replicas,
        ..WorkloadParams::default()
    };
    let mut stream = WorkloadGen::new(&mix, cluster, p.seed.wrapping_add(2));
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed.wrapping_add(3));
    let mut running = Running::default();
    let mut next_id = 0u64;
    let mut submit =
        |engine: &mut Engine, tenant: String, spec: JobSpec| -> Result<Vec<Decision>> {
            next_id += 1;
            engine
                .apply(Event::Submit {
                    id: JobId(next_id),
                    tenant,
                    spec,
                })
                .context("submitting a benchmark job")
        };

    // Fill: batches of the mix until a pass leaves a queue behind.
    let batch = (p.nodes / 2).clamp(500, 5_000);
    for _ in 0..1_000 {
        let mut any = false;
        for job in stream.by_ref().take(batch) {
            submit(&mut engine, job.tenant, job.spec)?;
            any = true;
        }
        running.track(&engine.schedule());
        if !any || engine.pending_count() >= batch / 2 {
            break;
        }
    }

    // Memory: the specs are built first, so only what the engine keeps is counted. Each is
    // cloned into its event; what the engine drops of the clone is freed again.
    let jobs: Vec<(String, JobSpec)> = stream
        .by_ref()
        .take(p.pending)
        .map(|j| (j.tenant, j.spec))
        .collect();
    let (bytes0, allocs0) = ((heap.live_bytes)(), (heap.live_allocs)());
    let mut rejected = 0;
    let mut submit_time = Duration::ZERO;
    for (tenant, spec) in &jobs {
        let (tenant, spec) = (tenant.clone(), spec.clone());
        let t = Instant::now();
        let out = submit(&mut engine, tenant, spec)?;
        submit_time += t.elapsed();
        rejected += out
            .iter()
            .filter(|d| matches!(d, Decision::Reject { .. }))
            .count();
    }
    let (bytes1, allocs1) = ((heap.live_bytes)(), (heap.live_allocs)());
    let n = jobs.len().max(1) as f64;
    let mut memory = Memory {
        jobs_submitted: jobs.len(),
        rejected,
        bytes: bytes1 as i64 - bytes0 as i64,
        allocations: allocs1 as i64 - allocs0 as i64,
        bytes_per_pending_job: ((bytes1 as f64 - bytes0 as f64) / n).round(),
        allocations_per_pending_job: (allocs1 as f64 - allocs0 as f64) / n,
        submit_us: submit_time.as_secs_f64() * 1e6 / n,
        engine_bytes: 0,
    };
    drop(jobs);

    let target = engine.pending_count();
    let (pending_at_start, running_at_start) = (target, running.list.len());
    let timed_pass = |engine: &mut Engine, running: &mut Running| {
        let t = Instant::now();
        let out = engine.schedule();
        let took = t.elapsed();
        running.track(&out);
        took
    };
    let mut warmup = [Duration::ZERO; WARMUP_PASSES];
    for w in &mut warmup {
        *w = timed_pass(&mut engine, &mut running);
    }

    let mut passes = Vec::with_capacity(p.passes);
    let mut pass_times = Vec::with_capacity(p.passes);
    let mut slowest: Option<SlowPass> = None;
    let (mut starts, mut preemptions, mut ended) = (0usize, 0usize, 0usize);
    let (mut events, mut event_time) = (0usize, Duration::ZERO);
    let (mut pending_min, mut pending_max) = (usize::MAX, 0);
    let mut timed = |engine: &mut Engine, ev: Event| -> Result<Vec<Decision>> {
        let t = Instant::now();
        let out = engine.apply(ev);
        event_time += t.elapsed();
        events += 1;
        out.context("an event of the steady-state loop was refused")
    };
    for _ in 0..p.passes {
        for _ in 0..p.ends_per_pass {
            let Some((id, attempt, tasks)) = running.take_random(&mut rng) else {
                break;
            };
            for task in 0..tasks {
                let out = timed(
                    &mut engine,
                    Event::TaskEnded {
                        id,
                        attempt,
                        task,
                        exit_code: 0,
                    },
                )?;
                running.track(&out);
                ended += 1;
            }
        }
        let now_s = engine.now_s() + PASS_INTERVAL_S;
        running.track(&timed(&mut engine, Event::AdvanceTime { now_s })?);
        pending_min = pending_min.min(engine.pending_count());
        pending_max = pending_max.max(engine.pending_count());
        let t = Instant::now();
        let out = engine.schedule();
        let took = ms(t.elapsed());
        passes.push(took);
        pass_times.push(engine.last_pass_times());
        if slowest.as_ref().is_none_or(|s: &SlowPass| took > s.ms) {
            slowest = Some(SlowPass {
                ms: took,
                stats: engine.last_pass(),
                times: Breakdown::mean(&[engine.last_pass_times()]),
            });
        }
        starts += out.iter().filter(|d| is_start(d)).count();
        preemptions += out
            .iter()
            .filter(|d| matches!(d, Decision::Preempt { .. }))
            .count();
        running.track(&out);
        let missing = target.saturating_sub(engine.pending_count());
        for job in stream.by_ref().take(missing) {
            submit(&mut engine, job.tenant, job.spec)?;
        }
    }
    // With no more events: passes until one changes nothing, then the idle pass.
    let (mut settle_passes, mut settle_pass) = (0, Duration::ZERO);
    while !engine.is_idle() && settle_passes < MAX_SETTLE_PASSES {
        settle_pass = timed_pass(&mut engine, &mut running);
        settle_passes += 1;
    }
    let idle_pass_skipped = engine.is_idle();
    let idle_pass = timed_pass(&mut engine, &mut running);
    let count = passes.len().max(1) as f64;
    let mut sorted = passes.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = percentile(&sorted, 0.99);
    let at_p99: Vec<gosok_engine::PassTimes> = passes
        .iter()
        .zip(&pass_times)
        .filter(|(ms, _)| **ms >= p99)
        .map(|(_, t)| *t)
        .collect();
    let steady = Steady {
        passes: passes.len(),
        pass_p50_ms: percentile(&sorted, 0.50),
        pass_p90_ms: percentile(&sorted, 0.90),
        pass_p99_ms: percentile(&sorted, 0.99),
        pass_max_ms: sorted.last().copied().unwrap_or(0.0),
        first_pass_ms: ms(warmup[0]),
        second_pass_ms: ms(warmup[WARMUP_PASSES - 1]),
        settle_passes,
        settle_pass_ms: ms(settle_pass),
        idle_pass_ms: ms(idle_pass),
        idle_pass_skipped,
        starts_per_pass: starts as f64 / count,
        preemptions_per_pass: preemptions as f64 / count,
        tasks_ended_per_pass: ended as f64 / count,
        event_us: if events > 0 {
            event_time.as_secs_f64() * 1e6 / events as f64
        } else {
            0.0
        },
        pending_min: if pending_min == usize::MAX {
            0
        } else {
            pending_min
        },
        pending_max,
        queue_classes: engine.queue_classes(),
        slowest_pass: slowest,
        breakdown_mean: Breakdown::mean(&pass_times),
        breakdown_p99: Breakdown::mean(&at_p99),
    };

    // The snapshot the controller would write now, and the engine restored from it.
    let t = Instant::now();
    let bytes = engine.snapshot().context("snapshotting the engine")?;
    let encode_ms = ms(t.elapsed());
    let t = Instant::now();
    let restored = Engine::restore(&bytes).context("restoring the engine's snapshot")?;
    let restore_ms = ms(t.elapsed());
    if restored.pending_count() != engine.pending_count() {
        bail!("the restored engine lost pending jobs (a snapshot bug)");
    }
    drop(restored);
    let snapshot = SnapshotTimes {
        bytes: bytes.len(),
        encode_ms,
        restore_ms,
    };
    drop(bytes);
    // What the engine holds: what dropping it frees.
    let live = (heap.live_bytes)();
    drop(engine);
    memory.engine_bytes = live.saturating_sub((heap.live_bytes)()) as u64;
    Ok((steady, memory, snapshot, pending_at_start, running_at_start))
}

/// Groups digits by thousands: 1234567 -> "1,234,567".
fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

/// The report as an aligned table for people.
pub fn table(r: &EngineBenchReport) -> String {
    let mut s = String::new();
    let z = &r.sizes;
    let _ = writeln!(
        s,
        "gosok bench engine  (gosok {}, preset {}, seed {})",
        r.gosok_version, r.params.preset, r.seed
    );
    let _ = writeln!(
        s,
        "highway: {} sites, {} racks, {} nodes, {} accelerators, {} tenants; {} pending, {} running\n",
        z.sites,
        thousands(z.racks as f64),
        thousands(z.nodes as f64),
        thousands(z.accelerators as f64),
        z.tenants,
        thousands(z.pending as f64),
        thousands(z.running_jobs as f64),
    );
    let met = |t: &Target| if t.met { "met" } else { "MISSED" };
    let t = &r.targets;
    let optional = |t: &Option<Target>| {
        t.as_ref()
            .map_or((String::new(), ""), |t| (t.goal.clone(), met(t)))
    };
    let (p50_goal, p50_met) = optional(&t.pass_p50_ms);
    let (mem_goal, mem_met) = optional(&t.engine_bytes);
    let (restore_goal, restore_met) = optional(&t.snapshot_restore_ms);
    let rows: Vec<(String, String, String, &str)> = vec![
        (
            "single-node placements per second".into(),
            thousands(r.placements_per_s),
            t.placements_per_s.goal.clone(),
            met(&t.placements_per_s),
        ),
        (
            "16-node gang placements per second".into(),
            thousands(r.gang16_placements_per_s),
            t.gang16_placements_per_s.goal.clone(),
            met(&t.gang16_placements_per_s),
        ),
        (
            "scheduling pass p50 (ms)".into(),
            format!("{:.2}", r.pass_p50_ms),
            p50_goal,
            p50_met,
        ),
        (
            "scheduling pass p99 (ms)".into(),
            format!("{:.2}", r.pass_p99_ms),
            t.pass_p99_ms.goal.clone(),
            met(&t.pass_p99_ms),
        ),
        (
            "heap bytes per pending job".into(),
            thousands(r.bytes_per_pending_job),
            t.bytes_per_pending_job.goal.clone(),
            met(&t.bytes_per_pending_job),
        ),
        (
            "engine heap (MiB)".into(),
            thousands(r.memory.engine_bytes as f64 / (1 << 20) as f64),
            mem_goal,
            mem_met,
        ),
        (
            "snapshot restore (ms)".into(),
            format!("{:.0}", r.snapshot.restore_ms),
            restore_goal,
            restore_met,
        ),
    ];
    let _ = writeln!(s, "{:<38} {:>14}  target", "measure", "value");
    for (name, value, goal, ok) in &rows {
        let _ = writeln!(s, "{name:<38} {value:>14}  {goal:<24} {ok}");
    }
    let (a, g, st, m) = (&r.single_node, &r.gang16, &r.steady, &r.memory);
    let _ = writeln!(s, "\ndetails");
    let _ = writeln!(
        s,
        "  single-node batch: {} jobs, {} placed in {} passes, {:.1} ms of engine time (median of {} rounds)",
        thousands(a.jobs_per_round as f64),
        thousands(a.placed as f64),
        a.passes,
        a.engine_ms,
        a.per_s_by_round.len()
    );
    let _ = writeln!(
        s,
        "  gang batch: {} gangs of 16, {} placed in {} passes, {:.1} ms of engine time",
        thousands(g.jobs_per_round as f64),
        thousands(g.placed as f64),
        g.passes,
        g.engine_ms
    );
    let _ = writeln!(
        s,
        "  steady state: {} passes, p90 {:.2} ms, max {:.2} ms, first pass {:.1} ms, second {:.1} ms;\n    then, events stopped: {} passes until one changed nothing (the last {:.2} ms), then an idle pass of {:.4} ms ({});\n    per pass {:.1} starts, {:.1} preemptions, {:.1} tasks ended; {:.2} µs per event",
        st.passes,
        st.pass_p90_ms,
        st.pass_max_ms,
        st.first_pass_ms,
        st.second_pass_ms,
        st.settle_passes,
        st.settle_pass_ms,
        st.idle_pass_ms,
        if st.idle_pass_skipped {
            "skipped: no event since"
        } else {
            "run in full: the engine never settled"
        },
        st.starts_per_pass,
        st.preemptions_per_pass,
        st.tasks_ended_per_pass,
        st.event_us
    );
    for (what, b) in [
        ("mean pass", &st.breakdown_mean),
        ("passes at p99", &st.breakdown_p99),
    ] {
        let _ = writeln!(
            s,
            "  {what} ({} of them): {:.2} ms = placement {:.2} + preemption {:.2} + reservation {:.2} + idle check {:.2} + order and the rest {:.2}",
            b.passes, b.total_ms, b.place_ms, b.preempt_ms, b.reserve_ms, b.settle_ms, b.other_ms
        );
    }
    let _ = writeln!(
        s,
        "  memory: {} jobs submitted ({} rejected), {} bytes and {:.1} allocations per job, {:.2} µs per submission",
        thousands(m.jobs_submitted as f64),
        thousands(m.rejected as f64),
        thousands(m.bytes_per_pending_job),
        m.allocations_per_pending_job,
        m.submit_us
    );
    let _ = writeln!(
        s,
        "  snapshot: {} MiB, written in {:.0} ms, restored in {:.0} ms; the engine holds {} MiB of heap",
        thousands(r.snapshot.bytes as f64 / (1 << 20) as f64),
        r.snapshot.encode_ms,
        r.snapshot.restore_ms,
        thousands(r.memory.engine_bytes as f64 / (1 << 20) as f64)
    );
    if let Some(q) = &r.quality {
        let _ = writeln!(
            s,
            "\nplacement quality: {} nodes, {} accelerators, arrival only until the arrived demand equals the highway",
            thousands(q.nodes as f64),
            thousands(q.accelerators as f64)
        );
        for run in &q.runs {
            let bound = if run.score_candidates == 0 {
                "all feasible nodes".to_string()
            } else {
                format!("{} candidates", run.score_candidates)
            };
            let _ = writeln!(
                s,
                "  {:<8} {:<20} {:>6.2} % unallocated  ({} jobs arrived, {} running; {:.0} ms)",
                run.scorers,
                bound,
                run.unallocated_pct,
                thousands(run.jobs_arrived as f64),
                thousands(run.jobs_running as f64),
                run.engine_ms
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> EngineBenchParams {
        EngineBenchParams {
            sites: 2,
            nodes: 120,
            accelerators_per_node: 8,
            pending: 500,
            passes: 20,
            ends_per_pass: 5,
            rounds: 1,
            site_power_budget_mw: 20.0,
            seed: 9,
            scorers: "default".into(),
            quality_nodes: 0,
            max_gang_replicas: 64,
            preset: "default".into(),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 100.0);
        assert_eq!(percentile(&v, 0.99), 198.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-1000.0), "-1,000");
    }

    #[test]
    fn bad_parameters_name_their_flag() {
        let e = EngineBenchParams {
            scorers: "best".into(),
            ..params()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("--scorers:"), "{e}");
        let e = EngineBenchParams {
            nodes: 0,
            ..params()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("--nodes:"), "{e}");
        let e = EngineBenchParams {
            site_power_budget_mw: -1.0,
            ..params()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("--site-power-budget-mw:"), "{e}");
        let e = EngineBenchParams {
            ends_per_pass: 0,
            ..params()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("--ends-per-pass:"), "{e}");
    }

    #[test]
    fn the_batches_fit_and_the_synthetic_mix_is_admitted() {
        let p = params();
        let report = run_engine_bench(
            &p,
            &HeapProbe {
                live_bytes: || 0,
                live_allocs: || 0,
            },
            &mut |_| {},
        )
        .unwrap();
        // Onto an empty highway every job of the throughput batches starts.
        assert!(report.single_node.jobs_per_round > 100);
        assert_eq!(report.single_node.placed, report.single_node.jobs_per_round);
        assert!(report.gang16.jobs_per_round > 0);
        assert_eq!(report.gang16.placed, report.gang16.jobs_per_round);
        // The synthetic workload asks only for what the highway could run.
        assert!(
            report.memory.rejected * 100 <= report.memory.jobs_submitted,
            "{:?}",
            report.memory
        );
        assert!(report.steady.starts_per_pass > 0.0);
        assert!(report.sizes.pending >= 500);
        assert!(table(&report).contains("16-node gang placements per second"));
    }
}

//! Criterion benchmarks of the engine's hot paths on synthetic highways (gosok-synth):
//! placing single-node jobs, placing a 16-node gang, and one scheduling pass with a long queue.
//!
//! `cargo bench -p gosok-engine` runs them all in a few minutes: every group takes 10 samples
//! over a short measurement window, since the machines are noisy anyway and ratios measured in
//! one run are what we compare. `gosok bench engine` measures the same paths at full size.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use gosok_engine::{Decision, Engine, EngineConfig, Event, JobId};
use gosok_model::{Catalog, ClusterSpec, JobSpec, TaskGroupSpec};
use gosok_synth::{HighwayParams, WorkloadGen, WorkloadParams, highway};

const SEED: u64 = 1;

fn cluster(nodes: usize) -> ClusterSpec {
    highway(
        &HighwayParams {
            nodes,
            ..HighwayParams::default()
        },
        SEED,
    )
}

fn engine(cluster: &ClusterSpec) -> Engine {
    match Engine::new(Catalog::builtin(), cluster, EngineConfig::default()) {
        Ok(e) => e,
        Err(e) => panic!("the engine refused a synthetic highway (a gosok-synth bug): {e}"),
    }
}

fn submit(e: &mut Engine, id: u64, tenant: &str, spec: JobSpec) -> Vec<Decision> {
    let ev = Event::Submit {
        id: JobId(id),
        tenant: tenant.to_string(),
        spec,
    };
    match e.apply(ev) {
        Ok(out) => out,
        Err(err) => panic!("job {id} was refused: {err}"),
    }
}

/// Tenants without quota or share cap, so that throughput measures placement alone.
fn open_tenants(c: &ClusterSpec) -> Vec<String> {
    c.tenant
        .iter()
        .filter(|t| t.quotas.is_empty() && t.share_cap >= 1.0)
        .map(|t| t.name.clone())
        .collect()
}

/// Single-replica jobs of the synthetic mix, asking for about 40 % of the highway.
fn single_node_jobs(c: &ClusterSpec) -> Vec<(String, JobSpec)> {
    let accelerators: u64 = c
        .node
        .iter()
        .map(|n| n.count.unwrap_or(1) * n.accelerators)
        .sum();
    let budget = accelerators * 400;
    let tenants = open_tenants(c);
    let params = WorkloadParams {
        gang_weight: 0.0,
        ..WorkloadParams::default()
    };
    let mut used = 0;
    let mut out = Vec::new();
    for (i, j) in WorkloadGen::new(&params, c, SEED).enumerate() {
        used += j.spec.total_accelerator_milli();
        if used > budget {
            break;
        }
        out.push((tenants[i % tenants.len()].clone(), j.spec));
    }
    out
}

fn placement(c: &mut Criterion) {
    let highway = cluster(1_000);
    let jobs = single_node_jobs(&highway);
    let mut g = c.benchmark_group("place");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    // One pass placing the whole batch onto an empty 1,000-node highway.
    g.throughput(Throughput::Elements(jobs.len() as u64));
    g.bench_function("single_node_jobs_1000_nodes", |b| {
        b.iter_batched(
            || {
                let mut e = engine(&highway);
                for (i, (t, spec)) in jobs.iter().enumerate() {
                    submit(&mut e, i as u64 + 1, t, spec.clone());
                }
                e
            },
            |mut e| black_box(e.schedule()),
            BatchSize::LargeInput,
        )
    });

    // Gangs of 16 full nodes, one pass placing ten of them.
    let tenants = open_tenants(&highway);
    let mut group = TaskGroupSpec::whole(16, 8);
    group.cpu_milli = 80_000;
    group.mem_mib = 768 * 1024;
    let gang = JobSpec::single(group);
    g.throughput(Throughput::Elements(10));
    g.bench_function("gang16_1000_nodes", |b| {
        b.iter_batched(
            || {
                let mut e = engine(&highway);
                for i in 0..10 {
                    submit(
                        &mut e,
                        i + 1,
                        &tenants[i as usize % tenants.len()],
                        gang.clone(),
                    );
                }
                e
            },
            |mut e| black_box(e.schedule()),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// A highway filled with the synthetic mix and 10,000 more jobs queued, with what runs on it.
struct Steady {
    engine: Engine,
    stream: WorkloadGen,
    next_id: u64,
    /// Running jobs: id, attempt, tasks.
    running: Vec<(JobId, u32, u32)>,
    index: HashMap<JobId, usize>,
    /// State of the generator that picks which running jobs end (splitmix64: the engine
    /// crate has no rand dependency, and benches need no more than this).
    rng: u64,
    target: usize,
}

impl Steady {
    fn new(nodes: usize, pending: usize) -> Steady {
        let highway = cluster(nodes);
        let mut s = Steady {
            engine: engine(&highway),
            stream: WorkloadGen::new(&WorkloadParams::default(), &highway, SEED + 1),
            next_id: 0,
            running: Vec::new(),
            index: HashMap::new(),
            rng: SEED,
            target: 0,
        };
        // Fill until a pass leaves a queue, then queue `pending` more.
        for _ in 0..100 {
            s.submit_more(500);
            let out = s.engine.schedule();
            s.track(&out);
            if s.engine.pending_count() >= 250 {
                break;
            }
        }
        s.submit_more(pending);
        s.target = s.engine.pending_count();
        for _ in 0..2 {
            let out = s.engine.schedule();
            s.track(&out);
        }
        s
    }

    fn random_below(&mut self, n: usize) -> usize {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }

    fn submit_more(&mut self, n: usize) {
        for j in self.stream.by_ref().take(n) {
            self.next_id += 1;
            submit(&mut self.engine, self.next_id, &j.tenant, j.spec);
        }
    }

    fn remove(&mut self, job: JobId) {
        let Some(i) = self.index.remove(&job) else {
            return;
        };
        self.running.swap_remove(i);
        if let Some(moved) = self.running.get(i) {
            self.index.insert(moved.0, i);
        }
    }

    fn track(&mut self, out: &[Decision]) {
        for d in out {
            match d {
                Decision::Start {
                    job,
                    attempt,
                    tasks,
                } => {
                    self.remove(*job);
                    self.index.insert(*job, self.running.len());
                    self.running.push((*job, *attempt, tasks.len() as u32));
                }
                Decision::Preempt { job, .. }
                | Decision::Requeue { job, .. }
                | Decision::Stop { job, .. }
                | Decision::Finish { job, .. } => self.remove(*job),
                _ => {}
            }
        }
    }

    /// Some running jobs end and ten seconds pass: the events between two passes.
    fn between_passes(&mut self, ends: usize) {
        for _ in 0..ends {
            if self.running.is_empty() {
                break;
            }
            let pick = self.random_below(self.running.len());
            let (id, attempt, tasks) = self.running[pick];
            self.remove(id);
            for task in 0..tasks {
                let ev = Event::TaskEnded {
                    id,
                    attempt,
                    task,
                    exit_code: 0,
                };
                match self.engine.apply(ev) {
                    Ok(out) => self.track(&out),
                    Err(e) => panic!("task end refused: {e}"),
                }
            }
        }
        let now_s = self.engine.now_s() + 10;
        match self.engine.apply(Event::AdvanceTime { now_s }) {
            Ok(out) => self.track(&out),
            Err(e) => panic!("time refused: {e}"),
        }
    }

    /// Keeps the queue at its length.
    fn refill(&mut self) {
        let missing = self.target.saturating_sub(self.engine.pending_count());
        self.submit_more(missing);
    }
}

fn pass(c: &mut Criterion) {
    let mut g = c.benchmark_group("pass");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut steady = Steady::new(1_000, 10_000);

    // Nothing changed since the last pass: the cost of walking the queue. (A pass may still
    // preempt or start something; what it decides is tracked, untimed, for the next bench.)
    g.bench_function("idle_10000_pending_1000_nodes", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let out = black_box(steady.engine.schedule());
                total += t.elapsed();
                steady.track(&out);
            }
            total
        })
    });

    // Steady state: before each timed pass a few jobs end and the clock moves; after it the
    // queue is topped up. Only the pass is timed.
    g.bench_function("steady_10000_pending_1000_nodes", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                steady.between_passes(5);
                let t = Instant::now();
                let out = black_box(steady.engine.schedule());
                total += t.elapsed();
                steady.track(&out);
                steady.refill();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, placement, pass);
criterion_main!(benches);

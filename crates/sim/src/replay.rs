//! The replay: a workload through the production engine on a virtual clock.
//!
//! An event loop. The next event is the earliest of the next arrival, the next job end and
//! the next runtime-limit deadline. Every event at one timestamp is applied together —
//! `AdvanceTime`, then `TaskEnded` (exit 0) for every task of each job that ends, then
//! `Submit` for each arrival — before one `schedule()` call; the decisions that come back
//! start jobs (their end is planned from their true remaining work), preempt them (their
//! remaining work shrinks by what they ran and grows by a checkpoint overhead), or end them.
//!
//! The engine never sees a true duration, except that the oracle policies (SJF, SRTF) give it
//! as the runtime estimate, as the literature's oracle versions do.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use gosok_engine::{Decision, Engine, EngineError, Event, JobId, JobState};
use gosok_model::job::MAX_RUNTIME_S;
use gosok_model::{Catalog, ClusterSpec, SpecError};

use crate::policy::{Estimates, Placement, Policy, checkpoint_overhead_s, engine_config};
use crate::report::{EngineWork, Fairness, Report, SiteReport, TenantReport, percentile};
use crate::workload::WorkloadJob;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the cluster or configuration is not accepted by the engine: {0}")]
    Config(#[from] SpecError),
    #[error("at t = {at_s} s, job {job:?}: the engine refused an event: {error}")]
    Engine {
        at_s: u64,
        job: String,
        error: EngineError,
    },
    #[error("at t = {at_s} s: the engine's invariants broke: {0}", at_s = .1)]
    Invariant(String, u64),
}

/// What one run is.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub policy: Policy,
    pub placement: Placement,
    /// Seeds the engine's tie-breaks; recorded in the report.
    pub seed: u64,
    /// About how many rows the time series keeps (it thins itself beyond twice that).
    pub series_points: usize,
    /// Check the engine's invariants after every batch (tests; slow).
    pub check_invariants: bool,
    /// Scheduling interval: 0 runs a pass after every batch of events at one timestamp;
    /// N > 0 records events when they happen but runs passes only at multiples of N
    /// seconds (as a periodic scheduler does), which scale tests need.
    pub tick_s: u64,
    /// Where the engine's runtime estimates come from.
    pub estimates: Estimates,
}

impl ReplayOptions {
    pub fn new(policy: Policy) -> ReplayOptions {
        ReplayOptions {
            policy,
            placement: Placement::default_for(policy),
            seed: 0,
            series_points: 1000,
            check_invariants: false,
            tick_s: 0,
            estimates: Estimates::Auto,
        }
    }
}

/// How a job ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    /// Stopped by the engine (runtime limit exceeded, lost nodes beyond its retries).
    Failed,
    Rejected,
    /// Still pending or running when nothing more could happen.
    Unfinished,
}

/// One job's fate in a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobOutcome {
    pub tenant: u32,
    pub accel_milli: u64,
    pub submit_s: u64,
    pub first_start_s: Option<u64>,
    pub end_s: Option<u64>,
    /// Time spent pending (all waits, across preemptions).
    pub queue_s: u64,
    pub preemptions: u32,
    pub outcome: Outcome,
}

impl JobOutcome {
    pub fn jct_s(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Succeeded => self.end_s.map(|e| e - self.submit_s),
            _ => None,
        }
    }
}

/// One row of the time series: the state just before the events at `t_s`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sample {
    pub t_s: u64,
    pub running: u64,
    pub pending: u64,
    pub utilization: f64,
    /// Facility power per site (IT draw × PUE), in watts, in the cluster file's site order.
    pub site_power_w: Vec<u64>,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub report: Report,
    pub outcomes: Vec<JobOutcome>,
    pub series: Vec<Sample>,
    pub site_names: Vec<String>,
    /// Names of `JobOutcome::tenant`.
    pub tenant_names: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum St {
    Waiting,
    Pending,
    Running,
    Done,
}

/// The simulator's side of a job: its true remaining work and its accounting.
struct SimJob {
    state: St,
    attempt: u32,
    tasks: u32,
    started_s: u64,
    pending_since_s: u64,
    /// True work left, in seconds on the model its duration was measured on.
    remaining: f64,
    /// Speed of the current run relative to the measuring model.
    speed: f64,
    /// relative_throughput of the measuring model, when the workload names one.
    measured_rt: Option<f64>,
    limit_s: Option<u64>,
    /// Time it has run, all attempts.
    ran_s: u64,
}

/// Run times of completed jobs, as a controller sees them, for history estimates.
#[derive(Default)]
struct History {
    /// (tenant, accelerator thousandths) → the last run times.
    by_size: HashMap<(u32, u64), std::collections::VecDeque<u64>>,
    by_tenant: HashMap<u32, std::collections::VecDeque<u64>>,
}

/// How many completed jobs a history estimate looks back on.
const HISTORY_LEN: usize = 64;
/// Completed jobs needed before a history estimate is given.
const HISTORY_MIN: usize = 3;

impl History {
    fn record(&mut self, tenant: u32, accel_milli: u64, ran_s: u64) {
        let push = |q: &mut std::collections::VecDeque<u64>| {
            if q.len() == HISTORY_LEN {
                q.pop_front();
            }
            q.push_back(ran_s);
        };
        push(self.by_size.entry((tenant, accel_milli)).or_default());
        push(self.by_tenant.entry(tenant).or_default());
    }

    fn median(q: Option<&std::collections::VecDeque<u64>>) -> Option<u64> {
        let q = q.filter(|q| q.len() >= HISTORY_MIN)?;
        let mut v: Vec<u64> = q.iter().copied().collect();
        v.sort_unstable();
        Some(v[v.len() / 2])
    }

    fn estimate(&self, tenant: u32, accel_milli: u64) -> Option<u64> {
        History::median(self.by_size.get(&(tenant, accel_milli)))
            .or_else(|| History::median(self.by_tenant.get(&tenant)))
    }
}

const END: u8 = 0;
const LIMIT: u8 = 1;

/// Replays `jobs` on `cluster` under `opts`. `progress(done, total)` is called now and then
/// with the jobs that have left the system.
pub fn replay(
    cluster: &ClusterSpec,
    jobs: &[WorkloadJob],
    catalog: &Catalog,
    opts: &ReplayOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<RunResult, SimError> {
    let cfg = engine_config(opts.policy, &opts.placement, opts.seed);
    let mut engine = Engine::new(catalog.clone(), cluster, cfg)?;
    let n = jobs.len();

    // Tenants: the cluster's, then any the workload names that it does not (the engine
    // rejects their jobs; the report still shows them).
    let mut tenant_names: Vec<String> = cluster.tenant.iter().map(|t| t.name.clone()).collect();
    let mut tenant_idx: HashMap<String, u32> = tenant_names
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut outcomes: Vec<JobOutcome> = Vec::with_capacity(n);
    let mut sim: Vec<SimJob> = Vec::with_capacity(n);
    for j in jobs {
        let t = match tenant_idx.get(&j.tenant) {
            Some(&t) => t,
            None => {
                let t = tenant_names.len() as u32;
                tenant_names.push(j.tenant.clone());
                tenant_idx.insert(j.tenant.clone(), t);
                t
            }
        };
        outcomes.push(JobOutcome {
            tenant: t,
            accel_milli: j.spec.total_accelerator_milli(),
            submit_s: j.submit_s,
            first_start_s: None,
            end_s: None,
            queue_s: 0,
            preemptions: 0,
            outcome: Outcome::Unfinished,
        });
        sim.push(SimJob {
            state: St::Waiting,
            attempt: 0,
            tasks: 0,
            started_s: 0,
            pending_since_s: 0,
            remaining: j.duration_s as f64,
            speed: 1.0,
            measured_rt: j
                .duration_measured_on
                .as_deref()
                .and_then(|m| catalog.id(m))
                .map(|id| catalog.get(id).relative_throughput),
            limit_s: j.spec.runtime_limit_s,
            ran_s: 0,
        });
    }
    let rt_by_name: HashMap<String, f64> = catalog
        .models()
        .iter()
        .map(|m| (m.name.clone(), m.relative_throughput))
        .collect();

    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by_key(|&i| jobs[i as usize].submit_s);

    let site_names: Vec<String> = engine
        .cluster()
        .sites
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    // Nothing runs yet: every site's free accelerators are its capacity.
    let site_total_milli: Vec<u64> = engine
        .cluster()
        .sites
        .iter()
        .map(|s| s.free_milli)
        .collect();
    let total_milli: u64 = site_total_milli.iter().sum();
    let n_sites = site_names.len();

    let mut timers: BinaryHeap<Reverse<(u64, u32, u32, u8)>> = BinaryHeap::new();
    let mut next = 0usize;
    let mut running = 0u64;
    let mut done = 0u64;
    let mut preemptions = 0u64;
    let mut passes = 0u64;
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let t0 = order.first().map_or(0, |&i| jobs[i as usize].submit_s);
    let mut last_t = t0;
    // Integrals over virtual time.
    let mut site_energy_j = vec![0f64; n_sites];
    let mut site_peak_w = vec![0u64; n_sites];
    let mut site_alloc_milli_s = vec![0f64; n_sites];
    let weights: Vec<f64> = (0..tenant_names.len())
        .map(|i| engine.tenants().get(i).map_or(0.0, |t| t.weight))
        .collect();
    let mut fair = FairShareAccount::new(weights);
    let mut series = Series::new(t0, jobs, opts.series_points);
    let mut iterations = 0u64;
    let tick = opts.tick_s.max(1);
    // The earliest event not yet followed by a scheduling pass.
    let mut dirty_since: Option<u64> = None;
    let mut work = EngineWork::default();

    let mut ctx = Ctx {
        sim: &mut sim,
        outcomes: &mut outcomes,
        timers: &mut timers,
        running: &mut running,
        done: &mut done,
        preemptions: &mut preemptions,
        rejected: &mut rejected,
        rt_by_name: &rt_by_name,
        history: History::default(),
        active: vec![0; tenant_names.len()],
    };
    let estimates = opts.estimates.resolve(opts.policy);

    loop {
        // Timers of runs that were preempted or stopped since are stale.
        while let Some(&Reverse((_, j, attempt, _))) = ctx.timers.peek() {
            let s = &ctx.sim[j as usize];
            if s.state == St::Running && s.attempt == attempt {
                break;
            }
            ctx.timers.pop();
        }
        let t_arrival = order.get(next).map(|&i| jobs[i as usize].submit_s);
        let t_timer = ctx.timers.peek().map(|r| r.0.0);
        // With a scheduling interval, the pass owed for earlier events runs at the next
        // multiple of it.
        let t_pass = dirty_since.map(|d| d.div_ceil(tick) * tick);
        let Some(t) = [t_arrival, t_timer, t_pass].into_iter().flatten().min() else {
            break;
        };

        // What the cluster looked like since the last batch, until now.
        let c = engine.cluster();
        if t > last_t {
            let dt = (t - last_t) as f64;
            for (s, site) in c.sites.iter().enumerate() {
                let w = site.facility_w(site.it_w);
                site_energy_j[s] += w as f64 * dt;
                site_peak_w[s] = site_peak_w[s].max(w);
                site_alloc_milli_s[s] += (site_total_milli[s] - site.free_milli) as f64 * dt;
            }
            let held: Vec<u64> = engine.tenants().iter().map(|t| t.alloc[0]).collect();
            fair.add(last_t - t0, t - t0, &held, &ctx.active);
        }
        series.advance(t, &engine, *ctx.running, total_milli);
        last_t = t;

        let at = |j: u32| {
            jobs[j as usize]
                .id
                .clone()
                .unwrap_or_else(|| format!("#{j}"))
        };
        let ds = engine
            .apply(Event::AdvanceTime { now_s: t })
            .map_err(|error| SimError::Engine {
                at_s: t,
                job: String::new(),
                error,
            })?;
        ctx.handle(t, ds);
        while let Some(&Reverse((tt, j, attempt, kind))) = ctx.timers.peek() {
            if tt != t {
                break;
            }
            ctx.timers.pop();
            let s = &ctx.sim[j as usize];
            if kind != END || s.state != St::Running || s.attempt != attempt {
                continue;
            }
            for task in 0..s.tasks {
                let ds = engine
                    .apply(Event::TaskEnded {
                        id: JobId(j as u64),
                        attempt,
                        task,
                        exit_code: 0,
                    })
                    .map_err(|error| SimError::Engine {
                        at_s: t,
                        job: at(j),
                        error,
                    })?;
                ctx.handle(t, ds);
            }
        }
        while let Some(&j) = order.get(next) {
            let job = &jobs[j as usize];
            if job.submit_s != t {
                break;
            }
            next += 1;
            let mut spec = job.spec.clone();
            let limit = spec.runtime_limit_s.unwrap_or(u64::MAX);
            match estimates {
                Estimates::Oracle => {
                    // The oracle knows the true duration (capped by the limit, which would
                    // stop the job anyway).
                    let d = job.duration_s.min(limit).clamp(1, MAX_RUNTIME_S);
                    spec.runtime_estimate_s = Some(d);
                }
                Estimates::History if spec.runtime_estimate_s.is_none() => {
                    let o = &ctx.outcomes[j as usize];
                    spec.runtime_estimate_s = ctx
                        .history
                        .estimate(o.tenant, o.accel_milli)
                        .map(|e| e.min(limit).clamp(1, MAX_RUNTIME_S));
                }
                _ => {}
            }
            ctx.sim[j as usize].state = St::Pending;
            ctx.active[ctx.outcomes[j as usize].tenant as usize] += 1;
            ctx.sim[j as usize].pending_since_s = t;
            let ds = engine
                .apply(Event::Submit {
                    id: JobId(j as u64),
                    tenant: job.tenant.clone(),
                    spec,
                })
                .map_err(|error| SimError::Engine {
                    at_s: t,
                    job: at(j),
                    error,
                })?;
            ctx.handle(t, ds);
        }
        if tick > 1 && !t.is_multiple_of(tick) {
            dirty_since.get_or_insert(t);
            continue;
        }
        dirty_since = None;
        let ds = engine.schedule();
        passes += 1;
        let st = engine.last_pass();
        work.considered += st.considered;
        work.cached += st.cached;
        work.placements += st.placements;
        work.nodes_visited += st.nodes_visited;
        work.preemption_searches += st.preemption_searches;
        work.reservation_plans += st.reservation_plans;
        ctx.handle(t, ds);
        if opts.check_invariants {
            engine
                .check_invariants()
                .map_err(|e| SimError::Invariant(e, t))?;
        }
        iterations += 1;
        if iterations.is_multiple_of(2048) {
            progress(*ctx.done, n as u64);
        }
    }
    progress(*ctx.done, n as u64);
    let end_t = last_t;
    series.finish(end_t, &engine, *ctx.running, total_milli);

    let span_s = end_t.saturating_sub(t0);
    let report = summarize(
        opts,
        cluster,
        &engine,
        &outcomes,
        &tenant_names,
        Totals {
            span_s,
            end_s: end_t,
            total_milli,
            site_total_milli: &site_total_milli,
            site_energy_j: &site_energy_j,
            site_peak_w: &site_peak_w,
            site_alloc_milli_s: &site_alloc_milli_s,
            preemptions,
            passes,
            work,
            rejected: &rejected,
            fair: &fair,
        },
    );
    Ok(RunResult {
        report,
        outcomes,
        series: series.rows,
        site_names,
        tenant_names,
    })
}

/// The loop's mutable state that decisions act on.
struct Ctx<'a> {
    sim: &'a mut Vec<SimJob>,
    outcomes: &'a mut Vec<JobOutcome>,
    timers: &'a mut BinaryHeap<Reverse<(u64, u32, u32, u8)>>,
    running: &'a mut u64,
    done: &'a mut u64,
    preemptions: &'a mut u64,
    rejected: &'a mut BTreeMap<String, u64>,
    rt_by_name: &'a HashMap<String, f64>,
    history: History,
    /// Jobs pending or running, per tenant (`JobOutcome::tenant`).
    active: Vec<u32>,
}

impl Ctx<'_> {
    fn handle(&mut self, now: u64, decisions: Vec<Decision>) {
        for d in decisions {
            match d {
                Decision::Start {
                    job,
                    attempt,
                    tasks,
                } => {
                    let j = job.0 as usize;
                    let s = &mut self.sim[j];
                    let o = &mut self.outcomes[j];
                    if s.state == St::Pending {
                        o.queue_s += now - s.pending_since_s;
                    }
                    o.first_start_s.get_or_insert(now);
                    s.state = St::Running;
                    s.attempt = attempt;
                    s.tasks = tasks.len() as u32;
                    s.started_s = now;
                    // A gang runs at the pace of its slowest member.
                    s.speed = match s.measured_rt {
                        Some(m) if m > 0.0 => tasks
                            .iter()
                            .filter_map(|t| t.model.as_deref())
                            .filter_map(|name| self.rt_by_name.get(name))
                            .fold(f64::INFINITY, |a: f64, &b| a.min(b / m)),
                        _ => 1.0,
                    };
                    if !s.speed.is_finite() || s.speed <= 0.0 {
                        s.speed = 1.0;
                    }
                    let run_s = if s.speed == 1.0 {
                        s.remaining.ceil()
                    } else {
                        (s.remaining / s.speed).ceil()
                    } as u64;
                    self.timers
                        .push(Reverse((now + run_s, j as u32, attempt, END)));
                    if let Some(l) = s.limit_s
                        && l < run_s
                    {
                        self.timers
                            .push(Reverse((now + l, j as u32, attempt, LIMIT)));
                    }
                    *self.running += 1;
                }
                Decision::Preempt { job, .. } | Decision::Requeue { job, .. } => {
                    let preempted = matches!(d, Decision::Preempt { .. });
                    let j = job.0 as usize;
                    let s = &mut self.sim[j];
                    if s.state != St::Running {
                        continue;
                    }
                    let ran = (now - s.started_s) as f64;
                    s.ran_s += now - s.started_s;
                    s.remaining = (s.remaining - ran * s.speed).max(0.0);
                    if preempted {
                        // Checkpoint and restore cost (Helios' figures). Under SRTF the
                        // engine adds the same to its own remaining estimate; a job that
                        // is preempted for any other reason pays it too.
                        s.remaining += checkpoint_overhead_s(self.outcomes[j].accel_milli) as f64;
                        self.outcomes[j].preemptions += 1;
                        *self.preemptions += 1;
                    }
                    s.state = St::Pending;
                    s.pending_since_s = now;
                    *self.running -= 1;
                }
                Decision::Stop { .. } | Decision::Shed { .. } => {}
                Decision::Finish { job, state, .. } => {
                    let j = job.0 as usize;
                    let t = self.outcomes[j].tenant as usize;
                    self.active[t] = self.active[t].saturating_sub(1);
                    let s = &mut self.sim[j];
                    if s.state == St::Running {
                        *self.running -= 1;
                        s.ran_s += now - s.started_s;
                    }
                    let o = &mut self.outcomes[j];
                    if state == JobState::Succeeded {
                        self.history.record(o.tenant, o.accel_milli, s.ran_s);
                    }
                    if s.state == St::Pending {
                        o.queue_s += now - s.pending_since_s;
                    }
                    s.state = St::Done;
                    o.end_s = Some(now);
                    o.outcome = match state {
                        JobState::Succeeded => Outcome::Succeeded,
                        _ => Outcome::Failed,
                    };
                    *self.done += 1;
                }
                Decision::Reject { job, reason } => {
                    let j = job.0 as usize;
                    let t = self.outcomes[j].tenant as usize;
                    self.active[t] = self.active[t].saturating_sub(1);
                    self.sim[j].state = St::Done;
                    self.outcomes[j].outcome = Outcome::Rejected;
                    *self.done += 1;
                    // Reasons name the job's own numbers; count them by their kind.
                    let kind = reason.split(':').next().unwrap_or(&reason).to_string();
                    *self.rejected.entry(kind).or_default() += 1;
                }
            }
        }
    }
}

/// The time series, sampled on a regular grid and thinned when it grows too long.
struct Series {
    width_s: u64,
    next_s: u64,
    target: usize,
    rows: Vec<Sample>,
}

impl Series {
    fn new(t0: u64, jobs: &[WorkloadJob], target: usize) -> Series {
        let last = jobs.iter().map(|j| j.submit_s).max().unwrap_or(t0);
        let target = target.max(10);
        let width_s = ((last - t0) / target as u64).max(60);
        Series {
            width_s,
            next_s: t0,
            target,
            rows: Vec::new(),
        }
    }

    fn sample(t: u64, e: &Engine, running: u64, total: u64) -> Sample {
        let c = e.cluster();
        let free: u64 = c.sites.iter().map(|s| s.free_milli).sum();
        Sample {
            t_s: t,
            running,
            pending: e.pending_count() as u64,
            utilization: if total > 0 {
                (total - free) as f64 / total as f64
            } else {
                0.0
            },
            site_power_w: c.sites.iter().map(|s| s.facility_w(s.it_w)).collect(),
        }
    }

    fn advance(&mut self, t: u64, e: &Engine, running: u64, total: u64) {
        if self.next_s > t {
            return;
        }
        let s = Series::sample(self.next_s, e, running, total);
        while self.next_s <= t {
            let mut row = s.clone();
            row.t_s = self.next_s;
            self.rows.push(row);
            self.next_s += self.width_s;
            if self.rows.len() >= 2 * self.target {
                // Keep every other row: the grid doubles its step.
                let mut k = 0;
                self.rows.retain(|_| {
                    k += 1;
                    k % 2 == 1
                });
                self.width_s *= 2;
                self.next_s = self.rows.last().map_or(t, |r| r.t_s) + self.width_s;
            }
        }
    }

    fn finish(&mut self, t: u64, e: &Engine, running: u64, total: u64) {
        self.advance(t, e, running, total);
        if self.rows.last().is_none_or(|r| r.t_s < t) {
            self.rows.push(Series::sample(t, e, running, total));
        }
    }
}

/// Length of the periods fair share is reported over.
pub const FAIRNESS_PERIOD_S: u64 = 86_400;

/// Accelerator-time each tenant received, and what fair share entitled it to, per day.
///
/// At every moment the accelerators allocated to all tenants are divided among the tenants
/// that have work (jobs pending or running) in proportion to their weights: that is a
/// tenant's entitlement. A tenant that asks for less than its entitlement receives less, so
/// received ÷ entitled compares like with like only for tenants that are backlogged.
struct FairShareAccount {
    weights: Vec<f64>,
    /// Per day, per tenant: thousandth-accelerator-seconds received and entitled.
    received: Vec<Vec<f64>>,
    entitled: Vec<Vec<f64>>,
}

impl FairShareAccount {
    fn new(weights: Vec<f64>) -> FairShareAccount {
        FairShareAccount {
            weights,
            received: Vec::new(),
            entitled: Vec::new(),
        }
    }

    /// `held[i]`: what tenant i held over [from_s, to_s) (seconds since the first arrival).
    fn add(&mut self, from_s: u64, to_s: u64, held: &[u64], active: &[u32]) {
        let used: u64 = held.iter().sum();
        let active_weight: f64 = self
            .weights
            .iter()
            .zip(active)
            .filter(|(_, a)| **a > 0)
            .map(|(w, _)| w)
            .sum();
        let n = self.weights.len();
        let mut at = from_s;
        while at < to_s {
            let day = (at / FAIRNESS_PERIOD_S) as usize;
            let end = ((day as u64 + 1) * FAIRNESS_PERIOD_S).min(to_s);
            let dt = (end - at) as f64;
            while self.received.len() <= day {
                self.received.push(vec![0.0; n]);
                self.entitled.push(vec![0.0; n]);
            }
            for (i, (&a, &w)) in active.iter().zip(&self.weights).enumerate() {
                self.received[day][i] += held.get(i).copied().unwrap_or(0) as f64 * dt;
                if a > 0 && active_weight > 0.0 {
                    self.entitled[day][i] += used as f64 * dt * w / active_weight;
                }
            }
            at = end;
        }
    }

    /// Per tenant: share received and entitled over the run, and per day.
    fn shares(&self, i: usize) -> TenantShares {
        let total = |v: &[Vec<f64>]| v.iter().map(|d| d.iter().sum::<f64>()).sum::<f64>();
        let mine = |v: &[Vec<f64>]| v.iter().map(|d| d[i]).sum::<f64>();
        let frac = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        TenantShares {
            share: frac(mine(&self.received), total(&self.received)),
            entitled_share: frac(mine(&self.entitled), total(&self.entitled)),
            daily_share: self
                .received
                .iter()
                .map(|d| frac(d[i], d.iter().sum()))
                .collect(),
            daily_entitled_share: self
                .entitled
                .iter()
                .map(|d| frac(d[i], d.iter().sum()))
                .collect(),
        }
    }

    /// Jain's fairness index of received ÷ entitled over the tenants entitled to anything
    /// (1: each received exactly its entitlement; 1/n: one received everything).
    fn jain(received: &[f64], entitled: &[f64]) -> f64 {
        let x: Vec<f64> = received
            .iter()
            .zip(entitled)
            .filter(|(_, e)| **e > 0.0)
            .map(|(r, e)| r / e)
            .collect();
        let sum: f64 = x.iter().sum();
        let sq: f64 = x.iter().map(|v| v * v).sum();
        if sq > 0.0 {
            sum * sum / (x.len() as f64 * sq)
        } else {
            1.0
        }
    }

    fn fairness(&self) -> Fairness {
        let n = self.weights.len();
        let sum = |v: &[Vec<f64>]| {
            (0..n)
                .map(|i| v.iter().map(|d| d[i]).sum())
                .collect::<Vec<f64>>()
        };
        Fairness {
            period_s: FAIRNESS_PERIOD_S,
            jain_index: FairShareAccount::jain(&sum(&self.received), &sum(&self.entitled)),
            daily_jain_index: self
                .received
                .iter()
                .zip(&self.entitled)
                .map(|(r, e)| FairShareAccount::jain(r, e))
                .collect(),
        }
    }
}

struct TenantShares {
    share: f64,
    entitled_share: f64,
    daily_share: Vec<f64>,
    daily_entitled_share: Vec<f64>,
}

struct Totals<'a> {
    span_s: u64,
    end_s: u64,
    total_milli: u64,
    site_total_milli: &'a [u64],
    site_energy_j: &'a [f64],
    site_peak_w: &'a [u64],
    site_alloc_milli_s: &'a [f64],
    preemptions: u64,
    passes: u64,
    work: EngineWork,
    rejected: &'a BTreeMap<String, u64>,
    fair: &'a FairShareAccount,
}

fn mean(v: &[u64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
    }
}

fn summarize(
    opts: &ReplayOptions,
    cluster: &ClusterSpec,
    engine: &Engine,
    outcomes: &[JobOutcome],
    tenant_names: &[String],
    t: Totals<'_>,
) -> Report {
    let count = |o: Outcome| outcomes.iter().filter(|x| x.outcome == o).count() as u64;
    let mut jct: Vec<u64> = outcomes.iter().filter_map(|o| o.jct_s()).collect();
    jct.sort_unstable();
    let mut queue: Vec<u64> = outcomes
        .iter()
        .filter(|o| o.outcome == Outcome::Succeeded)
        .map(|o| o.queue_s)
        .collect();
    queue.sort_unstable();
    let span = t.span_s.max(1) as f64;
    let longest_wait_8 = outcomes
        .iter()
        .filter(|o| o.accel_milli >= 8000 && o.outcome != Outcome::Rejected)
        .map(|o| match o.first_start_s {
            Some(_) => o.queue_s,
            // Never started: it has waited from its arrival to the end of the run.
            None => t.end_s.saturating_sub(o.submit_s),
        })
        .max();
    // One pass over the jobs, whatever the number of tenants.
    let mut by_tenant: Vec<Vec<&JobOutcome>> = vec![Vec::new(); tenant_names.len()];
    for o in outcomes {
        if let Some(v) = by_tenant.get_mut(o.tenant as usize) {
            v.push(o);
        }
    }
    let tenants: Vec<TenantReport> = tenant_names
        .iter()
        .zip(by_tenant)
        .enumerate()
        .map(|(i, (name, mine))| {
            let shares = t.fair.shares(i);
            let mut jct: Vec<u64> = mine.iter().filter_map(|o| o.jct_s()).collect();
            jct.sort_unstable();
            let queue: Vec<u64> = mine
                .iter()
                .filter(|o| o.outcome == Outcome::Succeeded)
                .map(|o| o.queue_s)
                .collect();
            TenantReport {
                tenant: name.clone(),
                jobs: mine.len() as u64,
                jobs_completed: jct.len() as u64,
                avg_jct_s: mean(&jct),
                p50_jct_s: percentile(&jct, 50.0),
                p99_jct_s: percentile(&jct, 99.0),
                avg_queue_s: mean(&queue),
                preemptions: mine.iter().map(|o| o.preemptions as u64).sum(),
                weight: t.fair.weights[i],
                share: shares.share,
                entitled_share: shares.entitled_share,
                daily_share: shares.daily_share,
                daily_entitled_share: shares.daily_entitled_share,
            }
        })
        .filter(|r| r.jobs > 0)
        .collect();
    let sites: Vec<SiteReport> = engine
        .cluster()
        .sites
        .iter()
        .enumerate()
        .map(|(s, site)| SiteReport {
            site: site.name.to_string(),
            accelerators: t.site_total_milli[s] as f64 / 1000.0,
            utilization: if t.site_total_milli[s] > 0 {
                t.site_alloc_milli_s[s] / (t.site_total_milli[s] as f64 * span)
            } else {
                0.0
            },
            avg_power_w: t.site_energy_j[s] / span,
            peak_power_w: t.site_peak_w[s] as f64,
            energy_kwh: t.site_energy_j[s] / 3.6e6,
        })
        .collect();
    let alloc: f64 = t.site_alloc_milli_s.iter().sum();
    Report {
        policy: opts.policy.name().to_string(),
        placement: opts.placement.name.clone(),
        scorers: opts.placement.scorers.clone(),
        seed: opts.seed,
        sites_in_cluster: cluster.site.len() as u64,
        nodes: engine.cluster().nodes.len() as u64,
        accelerators: t.total_milli as f64 / 1000.0,
        jobs: outcomes.len() as u64,
        jobs_completed: count(Outcome::Succeeded),
        jobs_failed: count(Outcome::Failed),
        jobs_rejected: count(Outcome::Rejected),
        jobs_unfinished: count(Outcome::Unfinished),
        avg_jct_s: mean(&jct),
        p50_jct_s: percentile(&jct, 50.0),
        p99_jct_s: percentile(&jct, 99.0),
        avg_queue_s: mean(&queue),
        p50_queue_s: percentile(&queue, 50.0),
        p99_queue_s: percentile(&queue, 99.0),
        utilization: if t.total_milli > 0 {
            alloc / (t.total_milli as f64 * span)
        } else {
            0.0
        },
        makespan_s: t.span_s,
        preemptions: t.preemptions,
        longest_wait_8plus_accelerators_s: longest_wait_8,
        energy_kwh: sites.iter().map(|s| s.energy_kwh).sum(),
        tenants,
        fairness: t.fair.fairness(),
        sites,
        rejected_by_reason: t.rejected.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        scheduling_passes: t.passes,
        tick_s: opts.tick_s,
        estimates: opts.estimates.resolve(opts.policy).name().to_string(),
        engine_work: t.work,
    }
}

/// Several runs of one workload, each in its own thread (`std::thread::scope`): the runs share
/// the cluster and the jobs read-only and each drives its own engine. Returns each run with
/// its wall time in seconds, in the order of `runs`. `progress(run, done, total)`.
pub fn replay_many(
    cluster: &ClusterSpec,
    jobs: &[WorkloadJob],
    catalog: &Catalog,
    runs: &[ReplayOptions],
    progress: &(dyn Fn(usize, u64, u64) + Sync),
) -> Vec<Result<(RunResult, f64), SimError>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .enumerate()
            .map(|(k, opts)| {
                s.spawn(move || {
                    let started = std::time::Instant::now();
                    let r = replay(cluster, jobs, catalog, opts, &|d, t| progress(k, d, t))?;
                    Ok((r, started.elapsed().as_secs_f64()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SimError::Invariant(
                        "a replay thread panicked (a bug: please report it)".into(),
                        0,
                    ))
                })
            })
            .collect()
    })
}

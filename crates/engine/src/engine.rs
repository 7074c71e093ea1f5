//! The engine: events in, decisions out. This file holds the state, the event loop
//! (`apply`) and the pass loop (`schedule`, `consider`); each stage a pass goes through lives
//! in a module of its own:
//!
//! - `admission`: specs checked on arrival; a job's tenant limits checked in each pass.
//! - `order`: queue order, the tenants' heads in the pass-wide merge, LAS promotion.
//! - `place`: the placer and its requests, the scorers' demand profile, tentative placements.
//! - `reserve`: the reservation of the blocked job whose turn it is.
//! - `preempt`: which running jobs to stop for one that cannot start.
//! - `lifecycle`: start, finish, fail, preempt, cancel and requeue of a job's tasks.
//! - `idle`: an idle pass (no event since a pass that changed nothing) skipped.
//! - `control`: hold, release and requeue by users and the controller.
//! - `nodes`: node and power events.
//! - `invariants`: what the engine promises, checked by the tests after every step.
//! - `inspect`: read-only views (accessors, queue position, explanations).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use gosok_model::{
    Catalog, ClusterSpec, JobSpec, ModelId, NodeState, PriorityClass, SpecError, TenantSpec,
    TopologyLevel,
};

use crate::cluster::{Cluster, TaskRef};
use crate::config::{EngineConfig, Las, QueuePolicy};
use crate::constraints::{self, GroupUse, GroupUses, NodeRules};
use crate::event::{Decision, EngineError, Event, JobState, PreemptReason, TaskPlacement};
use crate::explain::{Blocker, WaitReason};
use crate::gittins::SizeHistory;
use crate::hold::{Hold, SlipCause};
use crate::ids::{IdHasher, IdMap, JobId, ModelSet, NodeIdx, SiteSet, TenantIdx};
use crate::job::{AccelReq, GroupReq, Job, Shape, ShapeId, Task};
use crate::placement::{self, Placed, Placer, Request, Reservation, Slack};
use crate::queue::{ClassKey, Queues, SubHead};
use crate::reservation::{self, PlanInput};
use crate::scorers::{Profile, Scorer, scorer_by_name};
use crate::tenants::Tenant;

mod admission;
mod control;
mod idle;
mod inspect;
mod invariants;
mod lifecycle;
mod nodes;
mod order;
mod place;
mod preempt;
mod reserve;

use admission::StaticFit;
pub use inspect::Explanation;
use order::Head;
use place::{group_use_of, new_placer, request_for};
use preempt::{LasReady, las_ready_key};

/// What the last scheduling pass did: counts for benchmarks and operators (the engine keeps
/// no clock, so no durations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PassStats {
    /// Class-queue heads (and backfill candidates) considered.
    pub considered: u64,
    /// Answered from the pass's failed-shape cache.
    pub cached: u64,
    /// Placement searches run (including the tentative ones of preemption).
    pub placements: u64,
    pub nodes_visited: u64,
    pub preemption_searches: u64,
    pub reservation_plans: u64,
    pub started: u64,
    pub preempted: u64,
}

/// Where the last pass's time went, in nanoseconds of a clock the driver lends
/// (`Engine::lend_clock`); all zero when none is lent. The engine reads no clock of its own
/// and no decision reads these: they are for benchmarks and profiles only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PassTimes {
    pub total_ns: u64,
    /// Placement searches of jobs that could start or fail (`place_now`).
    pub place_ns: u64,
    /// Preemption searches, their tentative placements included.
    pub preempt_ns: u64,
    /// Reservation plans (and the check whether the held one is still fresh).
    pub reserve_ns: u64,
    /// The idle check: what the pass may change without deciding, compared before and after.
    pub settle_ns: u64,
}

impl PassTimes {
    /// The rest: queue order (heads, the pass-wide merge), tenant limits, the failed-shape
    /// cache, starts and their bookkeeping.
    pub fn other_ns(&self) -> u64 {
        self.total_ns
            .saturating_sub(self.place_ns + self.preempt_ns + self.reserve_ns + self.settle_ns)
    }
}

/// What makes jobs fail alike within one pass (see `Engine::consider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FailedKey {
    shape: ShapeId,
    bound: bool,
    allowed: ModelSet,
    priority: PriorityClass,
    reclaimer: Option<TenantIdx>,
    las_tenant: Option<TenantIdx>,
}

type FailedShapes = HashMap<FailedKey, WaitReason, std::hash::BuildHasherDefault<IdHasher>>;

/// A job that could not start for want of capacity: its tenant's candidate for the
/// reservation in this pass.
#[derive(Clone, Copy)]
struct Blocked {
    tenant: TenantIdx,
    job: JobId,
    allowed: ModelSet,
    blocker: Blocker,
}

/// Serializable for snapshots (see `snapshot`): the scorers and the shape lookup are rebuilt
/// on restore, everything else is carried as it is so that a restored engine decides exactly
/// as the original would.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Engine {
    #[serde(with = "crate::snapshot::ConfigDef")]
    cfg: EngineConfig,
    #[serde(with = "crate::snapshot::catalog")]
    catalog: Catalog,
    cluster: Cluster,
    tenants: Vec<Tenant>,
    tenant_by_name: BTreeMap<String, TenantIdx>,
    site_jurisdictions: Vec<String>,
    #[serde(with = "crate::snapshot::sized_map")]
    jobs: IdMap<JobId, Job>,
    shapes: Vec<Shape>,
    #[serde(skip)]
    shape_ids: HashMap<Shape, ShapeId, std::hash::BuildHasherDefault<IdHasher>>,
    static_fit: Vec<Option<StaticFit>>,
    queues: Queues,
    #[serde(with = "crate::snapshot::sorted_set")]
    limits: BTreeSet<(u64, JobId)>,
    reservation: Reservation,
    reservation_planned_s: u64,
    reservation_epoch: u64,
    #[serde(with = "crate::snapshot::WaitReasonDef")]
    reservation_reason: WaitReason,
    /// What keeps the reservation a promise: whose turn it is, and why its start moved.
    hold: Hold,
    #[serde(skip)]
    scorers: Scorers,
    demand_totals: crate::waste::DemandTotals,
    profile: Profile,
    profile_dirty: bool,
    now_s: u64,
    /// Running preemptible jobs by priority class: where preemption looks for victims.
    #[serde(with = "crate::snapshot::sorted_set")]
    preemptible_running: BTreeSet<(PriorityClass, JobId)>,
    /// Under `FairShareLas`: running preemptible jobs by the time from which a job of a lower
    /// level of their tenant and class may preempt them (`las_ready_key`).
    #[serde(with = "crate::snapshot::sorted_set")]
    las_ready: BTreeSet<LasReady>,
    /// Under `FairShareLas`: pending jobs sent down the ladder, by when they are promoted,
    /// with the attempt that sent them down (an entry of an earlier attempt is stale: the job
    /// ran again since).
    #[serde(with = "crate::snapshot::sorted_set")]
    promotions: BTreeSet<(u64, JobId, u32)>,
    /// Under `FairShareLas`: pending jobs whose search for victims found no room, and when
    /// they may be searched again (`Las::retry_s`).
    las_retry: BTreeMap<JobId, u64>,
    /// Under `FairShareLas` with learned sizes: the sizes of the jobs that ended, by tenant
    /// and accelerators (thousandths) per job, and by tenant (`gittins.rs`).
    sizes: BTreeMap<(TenantIdx, u64), SizeHistory>,
    tenant_sizes: BTreeMap<TenantIdx, SizeHistory>,
    /// ... and by tenant, name family and accelerators, for at most `MAX_NAME_HISTORIES`.
    name_sizes: BTreeMap<(TenantIdx, u64, u64), SizeHistory>,
    /// Running replicas of jobs with a `constraints.group`, per tenant and group.
    group_uses: GroupUses,
    stats: PassStats,
    /// The last pass decided nothing and changed nothing a pass reads, and no event came
    /// since: the next pass would do the same nothing (`idle`). Not in snapshots: a
    /// restored engine runs its first pass in full, which decides the same.
    #[serde(skip)]
    quiescent: bool,
    /// A clock lent by the driver for `PassTimes` (benchmarks); never read by a decision.
    #[serde(skip)]
    clock: Option<fn() -> u64>,
    #[serde(skip)]
    times: PassTimes,
}

/// Scorers with their weights.
type Scorers = Vec<(Box<dyn Scorer>, f64)>;

/// The configured scorers, by name.
fn build_scorers(cfg: &EngineConfig) -> Result<Scorers, SpecError> {
    let mut scorers = Vec::new();
    for (i, (name, w)) in cfg.scorers.iter().enumerate() {
        let s = scorer_by_name(name).ok_or_else(|| {
            SpecError::new(
                format!("scorers[{i}]"),
                format!(
                    "no scorer named {name:?}; known: {}",
                    crate::scorers::SCORER_NAMES.join(", ")
                ),
            )
        })?;
        gosok_model::error::check_f64(&format!("scorers[{i}].weight"), *w, -1.0, 1000.0)?;
        scorers.push((s, *w));
    }
    Ok(scorers)
}

impl Engine {
    /// After a snapshot is decoded: what it does not carry (trait objects, and the shape
    /// lookup, which `shapes` determines) is rebuilt.
    pub(crate) fn rebuild_after_restore(&mut self) -> Result<(), SpecError> {
        self.scorers = build_scorers(&self.cfg)?;
        self.shape_ids = self
            .shapes
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as ShapeId))
            .collect();
        Ok(())
    }

    pub fn new(
        catalog: Catalog,
        cluster: &ClusterSpec,
        cfg: EngineConfig,
    ) -> Result<Engine, SpecError> {
        gosok_model::error::check_f64(
            "accelerator_utilisation",
            cfg.accelerator_utilisation,
            0.0,
            1.0,
        )?;
        let scorers = build_scorers(&cfg)?;
        if let QueuePolicy::FairShareLas(las) = cfg.queue_policy {
            las.validate()?;
        }
        let c = Cluster::new(&catalog, cluster, cfg.accelerator_utilisation)?;
        let site_jurisdictions = cluster
            .site
            .iter()
            .map(|s| s.jurisdiction.clone())
            .collect();
        let mut e = Engine {
            cfg,
            catalog,
            cluster: c,
            tenants: Vec::new(),
            tenant_by_name: BTreeMap::new(),
            site_jurisdictions,
            jobs: IdMap::default(),
            shapes: Vec::new(),
            shape_ids: HashMap::default(),
            static_fit: Vec::new(),
            queues: Queues::default(),
            limits: BTreeSet::new(),
            reservation: Reservation::default(),
            reservation_planned_s: 0,
            reservation_epoch: u64::MAX,
            reservation_reason: WaitReason::Queued,
            hold: Hold::default(),
            scorers,
            demand_totals: Default::default(),
            profile: Profile::default(),
            profile_dirty: false,
            now_s: 0,
            preemptible_running: BTreeSet::new(),
            las_ready: BTreeSet::new(),
            promotions: BTreeSet::new(),
            las_retry: BTreeMap::new(),
            sizes: BTreeMap::new(),
            tenant_sizes: BTreeMap::new(),
            name_sizes: BTreeMap::new(),
            group_uses: GroupUses::new(),
            stats: PassStats::default(),
            quiescent: false,
            clock: None,
            times: PassTimes::default(),
        };
        for t in &cluster.tenant {
            e.upsert_tenant(t.clone())?;
        }
        Ok(e)
    }

    /// Applies one event; returns what must happen because of it right away (rejections,
    /// stops, requeues, shed load). Starting work is left to `schedule`.
    pub fn apply(&mut self, event: Event) -> Result<Vec<Decision>, EngineError> {
        // Any event may change what a pass would decide.
        self.quiescent = false;
        let mut out = Vec::new();
        match event {
            Event::AdvanceTime { now_s } => self.advance(now_s, &mut out)?,
            Event::Submit { id, tenant, spec } => self.submit(id, &tenant, spec, &mut out)?,
            Event::Cancel { id } => self.cancel(id, &mut out)?,
            Event::Hold { id } => self.hold(id)?,
            Event::Release { id } => self.release(id)?,
            Event::Requeue { id, reason } => self.requeue_running(id, reason, &mut out)?,
            Event::NodeState { node, state } => {
                let &n = self
                    .cluster
                    .node_by_name
                    .get(node.as_str())
                    .ok_or(EngineError::UnknownNode(node))?;
                self.node_state(n, state, &mut out);
            }
            Event::TaskEnded {
                id,
                attempt,
                task,
                exit_code,
            } => self.task_ended(id, attempt, task, exit_code, &mut out)?,
            Event::SitePowerBudget {
                site,
                power_budget_mw,
            } => {
                gosok_model::error::check_f64("power_budget_mw", power_budget_mw, -1e-9, 10_000.0)?;
                let &s = self
                    .cluster
                    .site_by_name
                    .get(&site)
                    .ok_or(EngineError::UnknownSite(site))?;
                self.cluster.sites[s as usize].budget_w = (power_budget_mw * 1e6).round() as u64;
                self.cluster.epoch += 1;
                self.shed(Some(s), None, &mut out);
            }
            Event::RackPowerCap { rack, power_cap_kw } => {
                gosok_model::error::check_f64("power_cap_kw", power_cap_kw, -1e-9, 1_000_000.0)?;
                let &r = self
                    .cluster
                    .rack_by_name
                    .get(&rack)
                    .ok_or(EngineError::UnknownRack(rack))?;
                self.cluster.racks[r as usize].cap_w = (power_cap_kw * 1000.0).round() as u64;
                self.cluster.epoch += 1;
                self.shed(None, Some(r), &mut out);
            }
            Event::UpsertTenant { tenant } => self.upsert_tenant(tenant)?,
            Event::AddNode { node } => self.add_node(node)?,
        }
        Ok(out)
    }

    fn advance(&mut self, now_s: u64, out: &mut Vec<Decision>) -> Result<(), EngineError> {
        if now_s < self.now_s {
            return Err(EngineError::TimeWentBack {
                now_s: self.now_s,
                event_s: now_s,
            });
        }
        let dt = now_s - self.now_s;
        for t in &mut self.tenants {
            t.decay(dt, self.cfg.fair_share_half_life_s);
        }
        self.now_s = now_s;
        while let Some(&(at, id, attempt)) = self.promotions.first() {
            if at > now_s {
                break;
            }
            self.promotions.pop_first();
            self.promote(id, attempt);
        }
        while let Some(&(deadline, id)) = self.limits.first() {
            if deadline >= now_s {
                break;
            }
            self.end_running(
                id,
                JobState::TimedOut,
                "runtime limit exceeded".into(),
                true,
                out,
            );
        }
        Ok(())
    }

    fn capacity(&self) -> [u64; 3] {
        [
            self.cluster.usable_accel_milli,
            self.cluster.usable_cpu_milli,
            self.cluster.usable_mem_mib,
        ]
    }

    /// What the last pass did.
    pub fn last_pass(&self) -> PassStats {
        self.stats
    }

    /// Where the last pass's time went (all zero unless a clock is lent).
    pub fn last_pass_times(&self) -> PassTimes {
        self.times
    }

    /// Lends the engine a clock (nanoseconds, monotonic) to time the stages of its passes
    /// with (`last_pass_times`); None takes it back. Only the times read it.
    pub fn lend_clock(&mut self, clock: Option<fn() -> u64>) {
        self.clock = clock;
    }

    /// The lent clock's reading, 0 without one.
    fn clock_ns(&self) -> u64 {
        self.clock.map_or(0, |c| c())
    }

    /// One scheduling pass: the heads of the class queues in queue order.
    pub fn schedule(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        self.stats = PassStats::default();
        self.times = PassTimes::default();
        if self.quiescent {
            return out;
        }
        let pass_start = self.clock_ns();
        self.refresh_profile();
        let t = self.clock_ns();
        let before = self.pass_inputs();
        self.times.settle_ns += self.clock_ns() - t;
        let cap = self.capacity();
        if let Some(h) = self.reservation.job
            && self
                .jobs
                .get(&h)
                .is_none_or(|j| j.state != JobState::Pending)
        {
            self.drop_reservation();
        }
        let tenants = self.tenants.len() as TenantIdx;
        let mut subs: Vec<BinaryHeap<SubHead>> = (0..tenants)
            .map(|t| self.queues.heads(t).collect())
            .collect();
        let mut heap: BinaryHeap<Head> = (0..tenants)
            .filter_map(|t| subs[t as usize].peek().map(|&s| self.head(t, s, cap)))
            .collect();
        // Shapes that failed this pass, by whether they were held off reserved capacity.
        let mut failed = FailedShapes::default();
        let mut preemption_budget = self.cfg.max_preemption_attempts_per_pass;
        // Per tenant, the first job in line that could not start for want of capacity: one
        // of them gets the reservation if none is held at the end of the pass.
        let mut blocked = Vec::new();
        // The holder goes first: its capacity is kept for it, and it may no longer be the
        // head of its class (a promoted job can come before it in line).
        if let Some(h) = self.reservation.job {
            self.consider(
                h,
                &mut failed,
                &mut preemption_budget,
                &mut blocked,
                &mut out,
            );
        }
        while let Some(head) = heap.pop() {
            let t = head.tenant;
            let Some(sub) = subs[t as usize].pop() else {
                continue;
            };
            if self
                .jobs
                .get(&sub.job)
                .is_none_or(|j| j.state != JobState::Pending)
            {
                // The holder, started above.
                if let Some(next) = self.queues.head(t, sub.class) {
                    subs[t as usize].push(next);
                }
                if let Some(&next) = subs[t as usize].peek() {
                    heap.push(self.head(t, next, cap));
                }
                continue;
            }
            let reason = self.consider(
                sub.job,
                &mut failed,
                &mut preemption_budget,
                &mut blocked,
                &mut out,
            );
            if self
                .jobs
                .get(&sub.job)
                .is_some_and(|j| j.state == JobState::Pending)
            {
                self.note_blocked(sub.job, reason, &mut blocked);
                // The rest of the class waits behind its head until the next pass, except
                // jobs short enough to end before the reservation begins: they backfill.
                self.queues.set_wait(t, sub.class, reason);
                if self.cfg.head_of_line_blocking {
                    // Nothing behind it in this tenant's line may start.
                    subs[t as usize].clear();
                    continue;
                }
                while let Some(holder) = self.reservation.job
                    && let Some((bound_s, j)) = self.queues.shortest(t, sub.class)
                    && j != sub.job
                    && j != holder
                    && self.now_s.saturating_add(bound_s) <= self.reservation.start_s
                {
                    self.consider(
                        j,
                        &mut failed,
                        &mut preemption_budget,
                        &mut blocked,
                        &mut out,
                    );
                    if self
                        .jobs
                        .get(&j)
                        .is_some_and(|j| j.state == JobState::Pending)
                    {
                        break;
                    }
                }
            } else if let Some(next) = self.queues.head(t, sub.class) {
                subs[t as usize].push(next);
            }
            if let Some(&next) = subs[t as usize].peek() {
                heap.push(self.head(t, next, cap));
            }
        }
        blocked.retain(|b: &Blocked| {
            self.jobs
                .get(&b.job)
                .is_some_and(|j| j.state == JobState::Pending)
        });
        if self.reservation.job.is_none() && self.cfg.backfill {
            let tenants: Vec<TenantIdx> = blocked.iter().map(|b| b.tenant).collect();
            let pick = if self.fair_share() {
                self.hold.pick(&tenants)
            } else {
                (!blocked.is_empty()).then_some(0)
            };
            if let Some(i) = pick {
                let b = blocked[i];
                let t = self.clock_ns();
                let reserved = self.reserve(b.job, b.allowed, b.blocker);
                self.times.reserve_ns += self.clock_ns() - t;
                if let Some(reason) = reserved {
                    let job = &self.jobs[&b.job];
                    self.queues.set_wait(job.tenant, job.class, reason);
                }
            }
        }
        let holder = self
            .reservation
            .job
            .and_then(|h| self.jobs.get(&h))
            .map(|j| j.tenant);
        self.hold
            .set_waiting(blocked.iter().map(|b| b.tenant), holder);
        let t = self.clock_ns();
        self.settle(&before, !out.is_empty());
        let end = self.clock_ns();
        self.times.settle_ns += end - t;
        self.times.total_ns = end - pass_start;
        out
    }

    /// Records a job that stayed pending for want of capacity as its tenant's candidate for
    /// the reservation, unless the tenant has one already this pass (a job answered from the
    /// failed-shape cache is recorded here; one that searched, in `consider`).
    fn note_blocked(&self, id: JobId, reason: WaitReason, blocked: &mut Vec<Blocked>) {
        if !matches!(reason, WaitReason::Resources { .. }) {
            return;
        }
        let job = &self.jobs[&id];
        let tenant = job.tenant;
        if self.reservation.job == Some(id)
            || blocked.iter().any(|b| b.tenant == tenant)
            || !self.fair_share() && !blocked.is_empty()
        {
            return;
        }
        let Ok(allowed) = self.tenant_limits(id) else {
            return;
        };
        let blocker = match reason {
            WaitReason::Resources { blocker } => blocker,
            _ => Blocker::Accelerators,
        };
        blocked.push(Blocked {
            tenant,
            job: id,
            allowed,
            blocker,
        });
    }

    fn consider(
        &mut self,
        id: JobId,
        failed: &mut FailedShapes,
        preemption_budget: &mut usize,
        blocked: &mut Vec<Blocked>,
        out: &mut Vec<Decision>,
    ) -> WaitReason {
        let job = &self.jobs[&id];
        let (sid, priority) = (job.shape, job.priority);
        let allowed = match self.tenant_limits(id) {
            Ok(a) => a,
            Err(reason) => {
                // A holder that its own tenant's limits stop must not keep others off its
                // nodes.
                if self.reservation.job == Some(id) {
                    self.drop_reservation();
                }
                return reason;
            }
        };
        let holder = self.reservation.job == Some(id);
        let bound = self.bound_by_reservation(id);
        // Jobs of one shape fit or fail alike, unless they may preempt differently: the key
        // carries the priority class and, for a tenant that may reclaim, the tenant.
        let reclaimer = if self.tenants[job.tenant as usize].quotas.is_empty() {
            None
        } else {
            self.reclaim_models(id).map(|_| job.tenant)
        };
        // Attained-service preemption takes only the tenant's own jobs; once the pass's
        // preemption budget is spent, jobs of one shape fail alike across tenants again.
        let tenant = job.tenant;
        let las_ready = *preemption_budget > 0 && self.las_victim_ready(id);
        let las_tenant = las_ready.then_some(tenant);
        let cache_key = FailedKey {
            shape: sid,
            bound,
            allowed,
            priority,
            reclaimer,
            las_tenant,
        };
        self.stats.considered += 1;
        if let Some(&r) = failed.get(&cache_key) {
            self.stats.cached += 1;
            return r;
        }
        let t = self.clock_ns();
        let placed = self.place_now(id);
        self.times.place_ns += self.clock_ns() - t;
        match placed {
            Ok((placed, slack_used)) => {
                self.start_placed(id, placed, slack_used, out);
                WaitReason::Queued
            }
            Err(blocker) => {
                let other = *preemption_budget > 0 && self.could_preempt(id);
                if *preemption_budget > 0 && (other || las_ready) {
                    *preemption_budget -= 1;
                    self.stats.preemption_searches += 1;
                    // The victims' room goes to this job, so what failed before still
                    // fails: the failed-shape cache stays.
                    let t = self.clock_ns();
                    let preempted = self.try_preempt(id, out);
                    self.times.preempt_ns += self.clock_ns() - t;
                    if preempted {
                        return WaitReason::Queued;
                    }
                    if !other && let Some(las) = self.las() {
                        // No room among the tenant's jobs of higher levels: not searched
                        // again for a while (each pass would find the same).
                        let retry = self.now_s.saturating_add(las.retry_s);
                        self.las_retry.insert(id, retry);
                    }
                }
                let fit = self.static_fit_of(sid);
                let mut reason = if !fit.up {
                    WaitReason::NodesUnavailable
                } else {
                    WaitReason::Resources { blocker }
                };
                // A free reservation goes to the first job in line that cannot start — of
                // the tenant whose turn it is, under fair share (`hold.rs`). Once held, it
                // is not taken over: a later job waits for it to start, whatever its class.
                let tenant = self.jobs[&id].tenant;
                let first = fit.up
                    && !holder
                    && if self.fair_share() {
                        !blocked.iter().any(|b| b.tenant == tenant)
                    } else {
                        blocked.is_empty()
                    };
                if first {
                    blocked.push(Blocked {
                        tenant,
                        job: id,
                        allowed,
                        blocker,
                    });
                }
                let takes_over = self.reservation.job.is_none()
                    && first
                    && (!self.fair_share() || self.hold.due(tenant));
                if fit.up && self.cfg.backfill && (holder || takes_over) {
                    let t = self.clock_ns();
                    let reserved = self.reserve(id, allowed, blocker);
                    self.times.reserve_ns += self.clock_ns() - t;
                    if let Some(r) = reserved {
                        reason = r;
                    }
                } else if !holder {
                    failed.insert(cache_key, reason);
                }
                reason
            }
        }
    }
}

//! The engine: events in, decisions out.

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
use crate::hold::{Hold, SlipCause};
use crate::ids::{IdHasher, IdMap, JobId, ModelSet, NodeIdx, SiteSet, TenantIdx};
use crate::job::{AccelReq, GroupReq, Job, Shape, ShapeId, Task};
use crate::placement::{self, Placed, Placer, Request, Reservation, Slack};
use crate::queue::{ClassKey, Queues, SubHead};
use crate::reservation::{self, PlanInput};
use crate::scorers::{Profile, Scorer, scorer_by_name};
use crate::tenants::Tenant;

/// Which node constraints admission applies when it asks whether a group could ever fit;
/// leaving one out tells whether it is the one that makes the group impossible.
#[derive(Clone, Copy)]
struct Checks {
    labels: bool,
    taints: bool,
    per_node: bool,
    spread: bool,
}

impl Checks {
    const ALL: Checks = Checks {
        labels: true,
        taints: true,
        per_node: true,
        spread: true,
    };
    const NONE: Checks = Checks {
        labels: false,
        taints: false,
        per_node: false,
        spread: false,
    };
    const WITHOUT_LABELS: Checks = Checks {
        labels: false,
        ..Checks::ALL
    };
    const WITHOUT_TAINTS: Checks = Checks {
        taints: false,
        ..Checks::ALL
    };
    const WITHOUT_PER_NODE: Checks = Checks {
        per_node: false,
        ..Checks::ALL
    };
}
mod control;

/// One tenant's next job in the pass-wide merge. Ordered so that the heap's top is the job
/// to consider next: higher priority class, then lower fair-share key, then older.
#[derive(PartialEq, Eq)]
struct Head {
    fair_bits: u64,
    sub: SubHead,
    tenant: TenantIdx,
}

impl Ord for Head {
    fn cmp(&self, o: &Self) -> Ordering {
        self.sub
            .priority
            .cmp(&o.sub.priority)
            .then(o.fair_bits.cmp(&self.fair_bits))
            .then(self.sub.cmp(&o.sub))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// What admission concluded about a shape against the known topology.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct StaticFit {
    epoch: u64,
    /// Fits on all known nodes (None) or why not.
    known: Option<String>,
    /// Fits on nodes that are up right now.
    up: bool,
}

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

/// A pending job's sort key in queue order: priority class, fair share, place in line, id.
type QueueOrder = (Reverse<PriorityClass>, u64, u64, JobId);

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

fn new_placer<'a>(
    scorers: &'a [(Box<dyn Scorer>, f64)],
    profile: &'a Profile,
    cfg: &EngineConfig,
) -> Placer<'a> {
    Placer {
        scorers,
        profile,
        score_candidates: cfg.score_candidates,
        seed: cfg.seed,
        visited: Default::default(),
    }
}

fn request_for<'a>(
    job: &Job,
    shapes: &'a [Shape],
    tenants: &'a [Tenant],
    uses: &'a GroupUses,
    bound: bool,
) -> Request<'a> {
    let shape = &shapes[job.shape as usize];
    Request {
        job: job.id,
        shape,
        tenant: &tenants[job.tenant as usize],
        preemptible: job.preemptible,
        bound_by_reservation: bound,
        group_use: group_use_of(uses, job.tenant, shape),
    }
}

/// Where the running replicas of the group of a job of `tenant` and `shape` are.
fn group_use_of<'a>(uses: &'a GroupUses, tenant: TenantIdx, shape: &Shape) -> Option<&'a GroupUse> {
    let group = shape.rules.as_ref()?.group.as_ref()?;
    uses.get(&(tenant, group.clone()))
}

/// Bits of a `FairShareLas` place in line below the level: the submit time.
const LAS_LEVEL_SHIFT: u32 = 48;

/// A pending job's place in its line under `policy`.
fn order_key(policy: QueuePolicy, job: &Job, default_runtime_s: u64) -> u64 {
    match policy {
        // The level, then age: one integer keeps the class queues' order.
        QueuePolicy::FairShareLas(las) => {
            (las.level(job.attained_milli_s) as u64) << LAS_LEVEL_SHIFT
                | job.submit_s.min((1 << LAS_LEVEL_SHIFT) - 1)
        }
        QueuePolicy::FairShare | QueuePolicy::Fifo => job.submit_s,
        QueuePolicy::ShortestFirst => job.estimate_s.or(job.limit_s).unwrap_or(u64::MAX),
        QueuePolicy::ShortestRemainingFirst { .. } => job.remaining_s(0, default_runtime_s),
    }
}

/// A running job's entry in `Engine::las_ready`: the time from which a first-level job of its
/// tenant and class may preempt it — once its attained service is past the first level's
/// bound and its attempt is past its protected time. A job of a higher level may preempt it
/// from then on too, once its level is higher still. None for a job holding no accelerators
/// (its service never grows) or a ladder of one level.
fn las_ready_key(las: &Las, job: &Job) -> Option<LasReady> {
    let accel = job.accel_milli();
    if accel == 0 || las.levels < 2 {
        return None;
    }
    let earliest = job.started_s.saturating_add(las.protected_s(job.run_s));
    let crosses = job.started_s.saturating_add(
        las.bound_milli_s(0)
            .saturating_sub(job.attained_milli_s)
            .div_ceil(accel),
    );
    Some((job.tenant, job.priority, crosses.max(earliest), job.id))
}

/// (tenant, priority class, from when, job): see `las_ready_key`.
type LasReady = (TenantIdx, PriorityClass, u64, JobId);

/// Why a pending job waits, and where it stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Explanation {
    pub job: JobId,
    pub state: JobState,
    pub position: Option<usize>,
    pub wait: WaitReason,
    pub text: String,
    pub estimated_start_s: Option<u64>,
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
    /// Running replicas of jobs with a `constraints.group`, per tenant and group.
    group_uses: GroupUses,
    stats: PassStats,
}

/// Most running jobs one preemption search considers as victims.
const MAX_VICTIMS: usize = 256;
/// Most nodes a one-replica preemption looks at.
const MAX_PREEMPTION_NODES: usize = 64;
/// Most victims a preemption tries to spare after finding a sufficient set.
const MAX_SPARE_TRIES: usize = 4;

/// How long a reservation's plan is trusted before it is recomputed.
const RESERVATION_REFRESH_S: u64 = 300;

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
            group_uses: GroupUses::new(),
            stats: PassStats::default(),
        };
        for t in &cluster.tenant {
            e.upsert_tenant(t.clone())?;
        }
        Ok(e)
    }

    pub fn now_s(&self) -> u64 {
        self.now_s
    }
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }
    /// Class queues the pending jobs form (see `queue`): what one pass walks.
    pub fn queue_classes(&self) -> usize {
        self.queues.classes()
    }
    pub fn pending_count(&self) -> usize {
        self.queues.len()
    }
    pub fn job_state(&self, id: JobId) -> Option<JobState> {
        self.jobs.get(&id).map(|j| j.state)
    }
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }
    /// What one replica of a job's group asks for (accelerators, CPU, memory).
    pub fn group_req(&self, job: &Job, group: u16) -> Option<&crate::job::GroupReq> {
        self.shapes
            .get(job.shape as usize)?
            .groups
            .get(group as usize)
    }
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }
    /// Every tenant, in the order they were declared.
    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenant_by_name
            .get(name)
            .map(|&t| &self.tenants[t as usize])
    }
    pub fn tenant_name(&self, t: TenantIdx) -> &str {
        &self.tenants[t as usize].spec.name
    }
    pub fn reservation(&self) -> &Reservation {
        &self.reservation
    }

    /// If the holder's reserved start moved later than first planned: from when, and why.
    pub fn reservation_slip(&self) -> Option<crate::hold::Slip> {
        self.hold.slip
    }

    /// No job holds the reservation any more.
    fn drop_reservation(&mut self) {
        self.reservation = Reservation::default();
        self.hold.released();
    }

    fn order_key(&self, job: &Job) -> u64 {
        order_key(self.cfg.queue_policy, job, self.cfg.default_runtime_s)
    }

    /// The attained-service ladder, when the queue policy has one.
    fn las(&self) -> Option<Las> {
        match self.cfg.queue_policy {
            QueuePolicy::FairShareLas(las) => Some(las),
            _ => None,
        }
    }

    /// Whether tenants are weighed against each other by fair share.
    fn fair_share(&self) -> bool {
        matches!(
            self.cfg.queue_policy,
            QueuePolicy::FairShare | QueuePolicy::FairShareLas(_)
        )
    }

    /// A pending job that was sent down the ladder goes back to its first level, its
    /// attained service counted from zero again (Tiresias' promotion against starvation) —
    /// unless it has started again since (`attempt` is the attempt that sent it down).
    fn promote(&mut self, id: JobId, attempt: u32) {
        let policy = self.cfg.queue_policy;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.state != JobState::Pending || job.attempt != attempt {
            return;
        }
        self.queues.remove(job.tenant, job.class, job.pending());
        job.attained_milli_s = 0;
        job.order_s = order_key(policy, job, self.cfg.default_runtime_s);
        self.queues.push(job.tenant, job.class, job.pending());
    }

    fn upsert_tenant(&mut self, spec: TenantSpec) -> Result<(), SpecError> {
        spec.validate(&self.catalog)?;
        match self.tenant_by_name.get(&spec.name) {
            Some(&t) => {
                self.tenants[t as usize].update(spec, &self.catalog, &self.site_jurisdictions)
            }
            None => {
                if self.tenants.len() >= u16::MAX as usize {
                    return Err(SpecError::new("name", "too many tenants"));
                }
                self.tenant_by_name
                    .insert(spec.name.clone(), self.tenants.len() as TenantIdx);
                self.tenants
                    .push(Tenant::new(spec, &self.catalog, &self.site_jurisdictions));
                self.queues.add_tenant();
            }
        }
        Ok(())
    }

    /// Applies one event; returns what must happen because of it right away (rejections,
    /// stops, requeues, shed load). Starting work is left to `schedule`.
    pub fn apply(&mut self, event: Event) -> Result<Vec<Decision>, EngineError> {
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

    // ---- submission and admission ------------------------------------------------------

    fn submit(
        &mut self,
        id: JobId,
        tenant: &str,
        spec: JobSpec,
        out: &mut Vec<Decision>,
    ) -> Result<(), EngineError> {
        if self.jobs.contains_key(&id) {
            return Err(EngineError::DuplicateJob(id));
        }
        let mut job = Job {
            id,
            tenant: 0,
            priority: spec.priority.unwrap_or_default(),
            preemptible: spec.preemptible,
            submit_s: self.now_s,
            estimate_s: spec.runtime_estimate_s,
            limit_s: spec.runtime_limit_s,
            max_retries: spec.max_retries.unwrap_or(self.cfg.default_max_retries),
            fail_fast: spec.on_task_failure == gosok_model::OnTaskFailure::FailJob,
            retries: 0,
            shape: 0,
            state: JobState::Pending,
            attempt: 0,
            started_s: 0,
            tasks: Vec::new(),
            preemptions: 0,
            class: 0,
            order_s: 0,
            run_s: 0,
            overhead_s: 0,
            attained_milli_s: 0,
        };
        let admitted = self.admit(tenant, &spec).and_then(|(t, shape)| {
            job.tenant = t;
            if spec.priority.is_none() {
                job.priority = self.tenants[t as usize].default_priority;
            }
            let sid = self.intern(shape);
            job.shape = sid;
            if let Some(reason) = self.static_fit_of(sid).known {
                return Err(reason);
            }
            job.class = self.queues.class(ClassKey {
                shape: sid,
                priority: job.priority,
                preemptible: job.preemptible,
            });
            Ok(sid)
        });
        match admitted {
            Err(reason) => {
                job.state = JobState::Rejected;
                self.jobs.insert(id, job);
                out.push(Decision::Reject { job: id, reason });
            }
            Ok(sid) => {
                for g in self.shapes[sid as usize].groups.iter() {
                    self.demand_totals.add(g);
                }
                self.profile_dirty |= self.demand_totals.grown();
                job.order_s = self.order_key(&job);
                self.queues.push(job.tenant, job.class, job.pending());
                self.jobs.insert(id, job);
            }
        }
        Ok(())
    }

    /// Turns a spec into a shape, or says which constraint makes it impossible.
    fn admit(&self, tenant: &str, spec: &JobSpec) -> Result<(TenantIdx, Shape), String> {
        spec.validate().map_err(|e| e.to_string())?;
        let &t = self
            .tenant_by_name
            .get(tenant)
            .ok_or_else(|| format!("tenant: {tenant:?} is not known"))?;
        let ten = &self.tenants[t as usize];
        let all_models = ModelSet::all(self.catalog.len());
        let mut groups = Vec::with_capacity(spec.groups.len());
        for (i, g) in spec.groups.iter().enumerate() {
            let accel = match (g.accelerators, g.accelerator_milli) {
                (Some(0), _) | (None, None) => AccelReq::None,
                (Some(k), _) => AccelReq::Whole(k as u16),
                (None, Some(m)) => AccelReq::Milli(m as u16),
            };
            let mut models = if g.models.is_empty() {
                all_models
            } else {
                let mut s = ModelSet::default();
                for (j, name) in g.models.iter().enumerate() {
                    let ids = self.catalog.matching(name);
                    if ids.is_empty() {
                        return Err(format!(
                            "groups[{i}].models[{j}]: {name:?} is neither a model nor a class in the accelerator catalog"
                        ));
                    }
                    s = ids.into_iter().fold(s, ModelSet::with);
                }
                s
            };
            if accel == AccelReq::None {
                models = ModelSet::default();
            } else {
                if g.min_hbm_gib > 0 {
                    models = models
                        .iter()
                        .filter(|&m| self.catalog.get(m).hbm_gib as u64 >= g.min_hbm_gib)
                        .fold(ModelSet::default(), ModelSet::with);
                    if models.is_empty() {
                        return Err(format!(
                            "groups[{i}].min_hbm_gib: no acceptable model has {} GiB of HBM",
                            g.min_hbm_gib
                        ));
                    }
                }
                if let AccelReq::Milli(_) = accel {
                    models = models
                        .iter()
                        .filter(|&m| self.catalog.get(m).shareable)
                        .fold(ModelSet::default(), ModelSet::with);
                    if models.is_empty() {
                        return Err(format!(
                            "groups[{i}].accelerator_milli: none of the acceptable models can be shared in fractions; ask for whole accelerators"
                        ));
                    }
                }
                let need = accel.milli() * g.replicas;
                if !models
                    .iter()
                    .any(|m| ten.quota_could_ever_allow(m, need, spec.preemptible))
                {
                    let what = if spec.preemptible {
                        "quota plus borrowing limit"
                    } else {
                        "guaranteed quota (non-preemptible jobs may not borrow)"
                    };
                    return Err(format!(
                        "groups[{i}]: needs {} accelerators, more than the tenant's {what} for any acceptable model",
                        need as f64 / 1000.0
                    ));
                }
            }
            groups.push(GroupReq {
                replicas: g.replicas as u32,
                accel,
                models,
                cpu_milli: g.cpu_milli,
                mem_mib: g.mem_mib,
            });
        }
        let c = &spec.constraints;
        for (j, s) in c.sites.iter().enumerate() {
            if !self.cluster.site_by_name.contains_key(s) {
                return Err(format!("constraints.sites[{j}]: site {s:?} is not known"));
            }
        }
        let mut sites = 0u64;
        for (i, site) in self.cluster.sites.iter().enumerate() {
            let ok = (c.sites.is_empty() || c.sites.iter().any(|s| **s == *site.name))
                && (c.regions.is_empty() || c.regions.contains(&site.region))
                && (c.jurisdictions.is_empty() || c.jurisdictions.contains(&site.jurisdiction))
                && ten.sites.contains(i as u16);
            if ok {
                sites |= 1 << i;
            }
        }
        if sites == 0 {
            return Err(if ten.spec.allowed_jurisdictions.is_empty() {
                "constraints: no site matches the sites, regions and jurisdictions asked for together".to_string()
            } else {
                format!(
                    "constraints: no site matches the constraints within the tenant's allowed jurisdictions ({})",
                    ten.spec.allowed_jurisdictions.join(", ")
                )
            });
        }
        let total = spec.total_accelerator_milli();
        let cap = (ten.share_cap * self.cluster.known_accel_milli as f64) as u64;
        if total > cap {
            return Err(format!(
                "share cap: needs {} accelerators, more than the tenant's share cap of {:.0}% of the highway ({} accelerators)",
                total as f64 / 1000.0,
                ten.share_cap * 100.0,
                cap as f64 / 1000.0
            ));
        }
        let rules = NodeRules::of(c).map_err(|e| e.to_string())?;
        Ok((
            t,
            Shape {
                groups: groups.into_boxed_slice(),
                sites: SiteSet(sites),
                topology: c.topology,
                rules: rules.map(Box::new),
            },
        ))
    }

    fn intern(&mut self, shape: Shape) -> ShapeId {
        if let Some(&id) = self.shape_ids.get(&shape) {
            return id;
        }
        let id = self.shapes.len() as ShapeId;
        self.shape_ids.insert(shape.clone(), id);
        self.shapes.push(shape);
        self.static_fit.push(None);
        id
    }

    /// Whether a shape fits the known topology (else jobs of it are rejected) and the nodes
    /// that are up now (else they wait with that reason). Cached per shape until the
    /// topology changes.
    fn static_fit_of(&mut self, sid: ShapeId) -> StaticFit {
        if let Some(f) = &self.static_fit[sid as usize]
            && f.epoch == self.cluster.epoch
        {
            return f.clone();
        }
        let shape = &self.shapes[sid as usize];
        let known = self.fits_nodes(shape, false);
        let up = known.is_ok() && self.fits_nodes(shape, true).is_ok();
        let f = StaticFit {
            epoch: self.cluster.epoch,
            known: known.err(),
            up,
        };
        self.static_fit[sid as usize] = Some(f.clone());
        f
    }

    fn fits_nodes(&self, shape: &Shape, up_only: bool) -> Result<(), String> {
        let level = shape
            .topology
            .filter(|t| t.mode == gosok_model::TopologyMode::Required)
            .map(|t| t.level);
        let no_rules = NodeRules {
            node_labels: Vec::new(),
            tolerations: Vec::new(),
            max_per_node: None,
            spread: None,
            group: None,
        };
        let r = shape.rules.as_deref().unwrap_or(&no_rules);
        for g in shape.groups.iter() {
            let best = self.room_for(shape, g, up_only, Checks::ALL);
            let fits = |c: Checks| self.room_for(shape, g, up_only, c) >= g.replicas as u64;
            if best >= g.replicas as u64 {
                continue;
            }
            // Name the constraint whose absence would let it fit (taints before the selector:
            // a selector that matches only tainted nodes is kept out by the taints).
            let what = self.describe_group(g);
            let message = if !fits(Checks::NONE) {
                let place =
                    level.map_or("on the highway".to_string(), |l| l.describe().to_string());
                format!(
                    "topology: {what} can never run: the allowed sites have room for {best} such replicas {place}"
                )
            } else if fits(Checks::WITHOUT_TAINTS) {
                let tolerated: Vec<String> = r.tolerations.iter().map(|t| t.to_string()).collect();
                format!(
                    "taints: {what} can never run: the nodes that could host it carry taints it does not tolerate (constraints.tolerations: {})",
                    if tolerated.is_empty() {
                        "none".to_string()
                    } else {
                        tolerated.join(", ")
                    }
                )
            } else if !r.node_labels.is_empty() && fits(Checks::WITHOUT_LABELS) {
                let labels: Vec<String> = r
                    .node_labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!(
                    "constraints.node_labels: {what} can never run: the nodes of the allowed sites with the labels {} have room for {best}",
                    labels.join(", ")
                )
            } else if r.max_per_node.is_some() && fits(Checks::WITHOUT_PER_NODE) {
                format!(
                    "constraints.max_replicas_per_node: {what} can never run: with at most {} per node the allowed nodes have room for {best}",
                    r.max_per_node.unwrap_or(0)
                )
            } else {
                let (l, m) = r.spread.unwrap_or((TopologyLevel::Rack, 0));
                format!(
                    "constraints.spread: {what} can never run: with at most {m} per {} the allowed nodes have room for {best}",
                    if l == TopologyLevel::Site {
                        "site"
                    } else {
                        "rack"
                    }
                )
            };
            return Err(message);
        }
        Ok(())
    }

    /// Replicas of `g` the best topology unit could hold on empty nodes, applying the
    /// node constraints `checks` names.
    fn room_for(&self, shape: &Shape, g: &GroupReq, up_only: bool, checks: Checks) -> u64 {
        let cluster = &self.cluster;
        let level = shape
            .topology
            .filter(|t| t.mode == gosok_model::TopologyMode::Required)
            .map(|t| t.level);
        let rules = shape.rules.as_deref();
        let models: Vec<Option<ModelId>> = if g.accel == AccelReq::None {
            vec![None]
        } else {
            g.models.iter().map(Some).collect()
        };
        let wants_accel = g.accel != AccelReq::None;
        let mut best = 0u64;
        for m in models {
            let nodes = (0..cluster.nodes.len() as NodeIdx).filter(|&n| {
                let node = &cluster.nodes[n as usize];
                shape.sites.contains(node.site) && (!up_only || node.state == NodeState::Up)
            });
            let per_node = |n: NodeIdx| {
                let node = &cluster.nodes[n as usize];
                if checks.labels && !constraints::labels_match(node, rules)
                    || checks.taints && !constraints::taints_tolerated(node, rules, wants_accel)
                {
                    return 0;
                }
                let h = placement::hostable_when_empty(cluster, n, g, m);
                match rules
                    .and_then(|r| r.max_per_node)
                    .filter(|_| checks.per_node)
                {
                    Some(max) => h.min(max as u64),
                    None => h,
                }
            };
            let spread = rules.and_then(|r| r.spread).filter(|_| checks.spread);
            best = best.max(placement::largest_unit(
                cluster, nodes, level, spread, per_node,
            ));
        }
        best
    }

    fn describe_group(&self, g: &GroupReq) -> String {
        let names: Vec<&str> = g
            .models
            .iter()
            .map(|m| self.catalog.get(m).name.as_str())
            .collect();
        let models = if g.models == ModelSet::all(self.catalog.len()) || names.is_empty() {
            "any accelerator".to_string()
        } else {
            names.join("|")
        };
        match g.accel {
            AccelReq::None => format!("{} × CPU-only replica", g.replicas),
            AccelReq::Whole(k) => format!("{} × {k} {models}", g.replicas),
            AccelReq::Milli(m) => format!("{} × {:.3} of {models}", g.replicas, m as f64 / 1000.0),
        }
    }

    /// "needs 64 × 8 H100 in one scale-up domain".
    pub fn describe_needs(&self, id: JobId) -> Option<String> {
        let job = self.jobs.get(&id)?;
        let shape = &self.shapes[job.shape as usize];
        let groups: Vec<String> = shape
            .groups
            .iter()
            .map(|g| self.describe_group(g))
            .collect();
        let mut s = format!("needs {}", groups.join(" + "));
        if let Some(t) = shape.topology {
            s.push(' ');
            s.push_str(t.level.describe());
            if t.mode == gosok_model::TopologyMode::Preferred {
                s.push_str(" (preferred)");
            }
        }
        if let Some(r) = shape.rules.as_deref() {
            s.push_str(&constraints::describe(r));
        }
        Some(s)
    }

    // ---- running jobs ------------------------------------------------------------------

    /// The tenant and group whose replicas a job's count with (`constraints.group`).
    fn group_key(&self, id: JobId) -> Option<(TenantIdx, String)> {
        let job = self.jobs.get(&id)?;
        let group = self.shapes[job.shape as usize]
            .rules
            .as_ref()?
            .group
            .clone()?;
        Some((job.tenant, group))
    }

    /// Counts a job's live tasks into (or, with `remove`, out of) its group's use.
    fn count_group(&mut self, id: JobId, remove: bool) {
        let Some(key) = self.group_key(id) else {
            return;
        };
        let uses = self.group_uses.entry(key.clone()).or_default();
        for t in self.jobs[&id]
            .tasks
            .iter()
            .filter(|t| t.exit_code.is_none())
        {
            uses.count(&self.cluster, t.hold.node, remove);
        }
        if uses.is_empty() {
            self.group_uses.remove(&key);
        }
    }

    fn charge(&mut self, job: JobId, give_back: bool) {
        self.count_group(job, give_back);
        let Some(j) = self.jobs.get(&job) else { return };
        let t = j.tenant as usize;
        for (i, task) in j.tasks.iter().enumerate() {
            if task.exit_code.is_some() {
                continue;
            }
            let r = TaskRef {
                job,
                task: i as u32,
            };
            let milli = task.hold.devices.len() as u64 * task.hold.milli as u64;
            if give_back {
                self.cluster.give(&task.hold, r);
                self.tenants[t].refund(task.model, milli, task.hold.cpu_milli, task.hold.mem_mib);
            } else {
                self.cluster.take(&task.hold, r);
                self.cluster
                    .set_task_ends(task.hold.node, r, j.ends_s(self.cfg.default_runtime_s));
                self.tenants[t].charge(task.model, milli, task.hold.cpu_milli, task.hold.mem_mib);
            }
        }
    }

    fn start(&mut self, id: JobId, placed: Vec<Placed>, out: &mut Vec<Decision>) {
        let now = self.now_s;
        self.las_retry.remove(&id);
        let las = self.las();
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        self.queues.remove(job.tenant, job.class, job.pending());
        job.state = JobState::Running;
        job.attempt += 1;
        job.started_s = now;
        let t = job.tenant as usize;
        let mut tasks = Vec::with_capacity(placed.len());
        let mut decisions = Vec::with_capacity(placed.len());
        for p in placed {
            let milli = p.hold.devices.len() as u64 * p.hold.milli as u64;
            self.tenants[t].charge(p.model, milli, p.hold.cpu_milli, p.hold.mem_mib);
            decisions.push(TaskPlacement {
                task: p.task,
                group: p.group,
                node: self.cluster.nodes[p.hold.node as usize].name.clone(),
                model: p
                    .model
                    .map(|m| self.cluster.model_names[m as usize].clone()),
                devices: p.hold.devices.clone(),
                milli: p.hold.milli,
            });
            tasks.push(Task {
                group: p.group,
                model: p.model,
                hold: p.hold,
                exit_code: None,
            });
        }
        let ends_s = job.ends_s(self.cfg.default_runtime_s);
        for (i, t) in tasks.iter().enumerate() {
            self.cluster.set_task_ends(
                t.hold.node,
                TaskRef {
                    job: id,
                    task: i as u32,
                },
                ends_s,
            );
        }
        job.tasks = tasks;
        if let Some(l) = job.limit_s {
            self.limits.insert((now.saturating_add(l), id));
        }
        self.count_group(id, false);
        let job = &self.jobs[&id];
        if job.preemptible {
            self.preemptible_running.insert((job.priority, id));
            if let Some(las) = las {
                self.las_ready.extend(las_ready_key(&las, job));
            }
        }
        if self.reservation.job == Some(id) {
            self.reservation = Reservation::default();
            self.hold.released();
        }
        self.stats.started += 1;
        out.push(Decision::Start {
            job: id,
            attempt: job.attempt,
            tasks: decisions,
        });
    }

    /// Takes a running job off its nodes, leaving it in `state`.
    fn unrun(&mut self, id: JobId, state: JobState) {
        self.charge(id, true);
        let now = self.now_s;
        let las = self.las();
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if let Some(l) = job.limit_s {
            self.limits.remove(&(job.started_s.saturating_add(l), id));
        }
        let was_running = job.state == JobState::Running;
        if job.preemptible && was_running {
            self.preemptible_running.remove(&(job.priority, id));
            if let Some(k) = las.and_then(|las| las_ready_key(&las, job)) {
                self.las_ready.remove(&k);
            }
        }
        if was_running {
            job.attained_milli_s = job.attained_now_milli_s(now);
        }
        job.tasks.clear();
        job.run_s += now.saturating_sub(job.started_s);
        job.state = state;
        if state == JobState::Pending {
            let order_s = order_key(self.cfg.queue_policy, job, self.cfg.default_runtime_s);
            job.order_s = order_s;
            self.queues.push(job.tenant, job.class, job.pending());
            // Down the ladder: promoted back to its first level after waiting a multiple
            // of the time it has run.
            if let Some(las) = las
                && las.promote_after_runs > 0
                && las.level(job.attained_milli_s) > 0
            {
                let at = now
                    .saturating_add(job.run_s.saturating_mul(las.promote_after_runs as u64))
                    .max(1);
                self.promotions.insert((at, id, job.attempt));
            }
        }
    }

    fn end_running(
        &mut self,
        id: JobId,
        state: JobState,
        reason: String,
        stop: bool,
        out: &mut Vec<Decision>,
    ) {
        let attempt = self.jobs.get(&id).map_or(0, |j| j.attempt);
        self.unrun(id, state);
        if stop {
            out.push(Decision::Stop {
                job: id,
                attempt,
                reason: reason.clone(),
            });
        }
        out.push(Decision::Finish {
            job: id,
            state,
            reason,
        });
    }

    fn preempt(&mut self, id: JobId, reason: PreemptReason, out: &mut Vec<Decision>) {
        let attempt = self.jobs.get(&id).map_or(0, |j| j.attempt);
        let overhead = match self.cfg.queue_policy {
            QueuePolicy::ShortestRemainingFirst { overhead_s } => Some(overhead_s),
            QueuePolicy::FairShareLas(las) => Some(las.overhead_s),
            _ => None,
        };
        if let Some(overhead_s) = overhead
            && let Some(j) = self.jobs.get_mut(&id)
        {
            // Checkpoint and restart cost, by job size (1, up to 8, more accelerators).
            let accel = j.accel_milli().div_ceil(1000);
            j.overhead_s += overhead_s[if accel <= 1 {
                0
            } else if accel <= 8 {
                1
            } else {
                2
            }];
        }
        self.unrun(id, JobState::Pending);
        if let Some(j) = self.jobs.get_mut(&id) {
            j.preemptions += 1;
        }
        self.stats.preempted += 1;
        out.push(Decision::Preempt {
            job: id,
            attempt,
            reason,
        });
    }

    fn cancel(&mut self, id: JobId, out: &mut Vec<Decision>) -> Result<(), EngineError> {
        let job = self.jobs.get(&id).ok_or(EngineError::UnknownJob(id))?;
        if job.state == JobState::Pending {
            self.las_retry.remove(&id);
        }
        let job = self.jobs.get_mut(&id).ok_or(EngineError::UnknownJob(id))?;
        match job.state {
            JobState::Pending => {
                self.queues.remove(job.tenant, job.class, job.pending());
                job.state = JobState::Cancelled;
                if self.reservation.job == Some(id) {
                    self.drop_reservation();
                }
                out.push(Decision::Finish {
                    job: id,
                    state: JobState::Cancelled,
                    reason: "cancelled".into(),
                });
            }
            JobState::Running => {
                self.end_running(id, JobState::Cancelled, "cancelled".into(), true, out)
            }
            JobState::Held => {
                // Not queued while held: nothing else to undo.
                job.state = JobState::Cancelled;
                out.push(Decision::Finish {
                    job: id,
                    state: JobState::Cancelled,
                    reason: "cancelled".into(),
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn task_ended(
        &mut self,
        id: JobId,
        attempt: u32,
        task: u32,
        exit_code: i32,
        out: &mut Vec<Decision>,
    ) -> Result<(), EngineError> {
        let job = self.jobs.get_mut(&id).ok_or(EngineError::UnknownJob(id))?;
        if attempt != job.attempt {
            return Err(EngineError::StaleAttempt {
                job: id,
                got: attempt,
                current: job.attempt,
            });
        }
        if job.state != JobState::Running {
            return Err(EngineError::NotRunning(id));
        }
        let t = job.tenant as usize;
        let tk = job
            .tasks
            .get_mut(task as usize)
            .ok_or(EngineError::UnknownTask { job: id, task })?;
        if tk.exit_code.is_some() {
            return Ok(());
        }
        if exit_code != 0 && job.fail_fast {
            // A gang fails as a whole when one member fails.
            self.end_running(
                id,
                JobState::Failed,
                format!("task {task} exited with status {exit_code}"),
                true,
                out,
            );
            return Ok(());
        }
        // The task's share is released now; the job ends when the last task does.
        let hold = tk.hold.clone();
        let model = tk.model;
        self.cluster.give(&hold, TaskRef { job: id, task });
        if let Some(group) = self.shapes[job.shape as usize]
            .rules
            .as_ref()
            .and_then(|r| r.group.clone())
        {
            let key = (job.tenant, group);
            let uses = self.group_uses.entry(key.clone()).or_default();
            uses.count(&self.cluster, hold.node, true);
            if uses.is_empty() {
                self.group_uses.remove(&key);
            }
        }
        self.tenants[t].refund(
            model,
            hold.devices.len() as u64 * hold.milli as u64,
            hold.cpu_milli,
            hold.mem_mib,
        );
        tk.exit_code = Some(exit_code);
        if job.tasks.iter().all(|t| t.exit_code.is_some()) {
            let failed: Vec<String> = job
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| t.exit_code != Some(0))
                .map(|(i, t)| format!("task {i} exited with status {}", t.exit_code.unwrap_or(0)))
                .collect();
            let (state, reason) = if failed.is_empty() {
                (JobState::Succeeded, "all tasks exited 0".to_string())
            } else {
                (JobState::Failed, failed.join("; "))
            };
            self.end_running(id, state, reason, false, out);
        }
        Ok(())
    }

    fn add_node(&mut self, node: gosok_model::NodeSpec) -> Result<(), EngineError> {
        gosok_model::error::check_name("node.name", &node.name)?;
        if node.count.is_some() {
            return Err(EngineError::Invalid {
                field: "node.count".into(),
                message: "a node added in place is one node: give its final name, no count".into(),
            });
        }
        if self.cluster.node_by_name.contains_key(node.name.as_str()) {
            return Err(EngineError::Invalid {
                field: "node.name".into(),
                message: format!("node {:?} exists", node.name),
            });
        }
        node.validate_machine("node", &self.catalog)?;
        let &rack = self
            .cluster
            .rack_by_name
            .get(&node.rack)
            .ok_or_else(|| EngineError::UnknownRack(node.rack.clone()))?;
        self.cluster.add_node(
            &self.catalog,
            &node.name,
            rack,
            &node,
            self.cfg.accelerator_utilisation,
        );
        // Model pressure is relative to the capacity of each model.
        self.profile_dirty = true;
        Ok(())
    }

    fn node_state(&mut self, n: NodeIdx, state: NodeState, out: &mut Vec<Decision>) {
        self.cluster.set_state(n, state);
        if state != NodeState::Down {
            return;
        }
        let mut lost: Vec<JobId> = self.cluster.nodes[n as usize]
            .tasks
            .iter()
            .map(|t| t.job)
            .collect();
        lost.sort_unstable();
        lost.dedup();
        let node = self.cluster.nodes[n as usize].name.clone();
        for id in lost {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            job.retries += 1;
            let (retry, max, attempt) = (job.retries, job.max_retries, job.attempt);
            if retry > max {
                self.end_running(
                    id,
                    JobState::Failed,
                    format!("node {node} went down and the job has used its {max} retries"),
                    true,
                    out,
                );
            } else {
                self.unrun(id, JobState::Pending);
                out.push(Decision::Requeue {
                    job: id,
                    attempt,
                    reason: format!("node {node} went down"),
                    retry,
                });
            }
        }
    }

    /// Sheds preemptible work, lowest priority and least work lost first, until the site (or
    /// rack) is within its power budget again.
    fn shed(&mut self, site: Option<u16>, rack: Option<u32>, out: &mut Vec<Decision>) {
        let over = |c: &Cluster| match (site, rack) {
            (Some(s), _) => c.site_facility_draw_w(s) > c.sites[s as usize].budget_w,
            (_, Some(r)) => c.racks[r as usize].it_w > c.racks[r as usize].cap_w,
            _ => false,
        };
        let draw = |c: &Cluster| match (site, rack) {
            (Some(s), _) => c.site_facility_draw_w(s),
            (_, Some(r)) => c.racks[r as usize].it_w,
            _ => 0,
        };
        if !over(&self.cluster) {
            return;
        }
        let before = draw(&self.cluster);
        let mut victims: Vec<JobId> = self
            .cluster
            .nodes
            .iter()
            .filter(|n| site.is_none_or(|s| n.site == s) && rack.is_none_or(|r| n.rack == r))
            .flat_map(|n| n.tasks.iter().map(|t| t.job))
            .collect();
        victims.sort_unstable();
        victims.dedup();
        victims.retain(|id| self.jobs[id].preemptible);
        victims.sort_by_key(|id| {
            let j = &self.jobs[id];
            (j.priority, Reverse(j.started_s), *id)
        });
        let name = match (site, rack) {
            (Some(s), _) => self.cluster.sites[s as usize].name.to_string(),
            (_, Some(r)) => self.cluster.racks[r as usize].name.to_string(),
            _ => String::new(),
        };
        let mut shed = Vec::new();
        for id in victims {
            if !over(&self.cluster) {
                break;
            }
            self.preempt(id, PreemptReason::Curtailment { site: name.clone() }, out);
            shed.push(id);
        }
        let budget_w = match (site, rack) {
            (Some(s), _) => self.cluster.sites[s as usize].budget_w,
            (_, Some(r)) => self.cluster.racks[r as usize].cap_w,
            _ => 0,
        };
        out.push(Decision::Shed {
            site: name,
            budget_w,
            draw_before_w: before,
            draw_after_w: draw(&self.cluster),
            jobs: shed,
            still_over: over(&self.cluster),
        });
    }

    // ---- the scheduling pass -----------------------------------------------------------

    fn refresh_profile(&mut self) {
        if !self.profile_dirty {
            return;
        }
        self.profile_dirty = false;
        self.demand_totals.refresh(&self.cluster, &mut self.profile);
    }

    fn capacity(&self) -> [u64; 3] {
        [
            self.cluster.usable_accel_milli,
            self.cluster.usable_cpu_milli,
            self.cluster.usable_mem_mib,
        ]
    }

    fn head(&self, t: TenantIdx, sub: SubHead, cap: [u64; 3]) -> Head {
        // Only fair share weighs tenants against each other; the classic policies order
        // by their key alone.
        let fair_bits = if self.fair_share() {
            self.tenants[t as usize].fair_key(cap).to_bits()
        } else {
            0
        };
        Head {
            fair_bits,
            sub,
            tenant: t,
        }
    }

    /// What the last pass did.
    pub fn last_pass(&self) -> PassStats {
        self.stats
    }

    /// One scheduling pass: the heads of the class queues in queue order.
    pub fn schedule(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        self.stats = PassStats::default();
        self.refresh_profile();
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
                if let Some(reason) = self.reserve(b.job, b.allowed, b.blocker) {
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
        let las_ready = *preemption_budget > 0 && self.las_victim_ready(id);
        let las_tenant = las_ready.then_some(job.tenant);
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
        match self.place_now(id) {
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
                    if self.try_preempt(id, out) {
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
                    if let Some(r) = self.reserve(id, allowed, blocker) {
                        reason = r;
                    }
                } else if !holder {
                    failed.insert(cache_key, reason);
                }
                reason
            }
        }
    }

    /// The models the job's tenant may use for it now, or why its tenant's limits stop it:
    /// share cap first, then quotas (a non-preemptible job only within the guarantee).
    fn tenant_limits(&self, id: JobId) -> Result<ModelSet, WaitReason> {
        let job = &self.jobs[&id];
        let tenant = &self.tenants[job.tenant as usize];
        let shape = &self.shapes[job.shape as usize];
        let total: u64 = shape.groups.iter().map(|g| g.accel_milli_total()).sum();
        if total > 0
            && tenant.share_cap < 1.0
            && tenant.alloc[0] + total
                > (tenant.share_cap * self.cluster.usable_accel_milli as f64) as u64
        {
            return Err(WaitReason::ShareCap);
        }
        let mut allowed = ModelSet::default();
        for g in shape.groups.iter().filter(|g| g.accel != AccelReq::None) {
            let present = g.models.and(self.cluster.present_models);
            let need = g.accel_milli_total();
            let ok = present
                .iter()
                .filter(|&m| tenant.quota_allows(m, need, job.preemptible))
                .fold(ModelSet::default(), ModelSet::with);
            if ok.is_empty() {
                let guarantee_only =
                    !job.preemptible && present.iter().any(|m| tenant.quota_allows(m, need, true));
                return Err(if guarantee_only {
                    WaitReason::GuaranteeUsed
                } else {
                    WaitReason::Quota
                });
            }
            allowed = ModelSet(allowed.0 | ok.0);
        }
        Ok(allowed)
    }

    /// Whether the job must leave the reservation's capacity alone: it is not the holder and
    /// would still run when the reservation begins.
    fn bound_by_reservation(&self, id: JobId) -> bool {
        let res = &self.reservation;
        let Some(holder) = res.job else {
            return false;
        };
        let job = &self.jobs[&id];
        let fits_before = job
            .runtime_bound_s()
            .is_some_and(|b| self.now_s.saturating_add(b) <= res.start_s);
        holder != id && !fits_before && !self.outranks(id, holder)
    }

    /// Whether `id` may use the reservation's capacity although the holder waits for it: a
    /// job within its tenant's guarantee against a holder whose tenant is borrowing (the
    /// guarantee is a promise made first). A higher priority class does not outrank a held
    /// reservation: it waits for the holder to start (`docs/SCHEDULING.md`).
    fn outranks(&self, id: JobId, holder: JobId) -> bool {
        let (job, Some(h)) = (&self.jobs[&id], self.jobs.get(&holder)) else {
            return true;
        };
        let ht = &self.tenants[h.tenant as usize];
        let borrowing =
            ht.quotas.is_empty() || ht.quotas.iter().any(|q| q.used_milli > q.guaranteed_milli);
        h.tenant != job.tenant && borrowing && self.reclaim_models(id).is_some()
    }

    /// Plans (or keeps) the reservation for `id`, which waits for `blocker`; returns the
    /// reason it waits with, or None if it cannot be planned (nodes down).
    ///
    /// When the capacity profile says the job could start now, what it waits for is power (or
    /// a placement the profile does not see): it keeps the nodes and the power it needs from
    /// later jobs and starts as soon as the power is there.
    fn reserve(&mut self, id: JobId, allowed: ModelSet, blocker: Blocker) -> Option<WaitReason> {
        let r = &self.reservation;
        let fresh = r.job == Some(id)
            && self.reservation_epoch == self.cluster.epoch
            && self.now_s < self.reservation_planned_s + RESERVATION_REFRESH_S
            && (self.now_s < r.start_s || r.holds_power());
        if fresh {
            return Some(self.reservation_reason);
        }
        let shape = &self.shapes[self.jobs[&id].shape as usize];
        // Should a new plan of the same holder start later, why: computed before it replaces
        // the old one.
        let replan = (r.job == Some(id)).then(|| self.slip_cause());
        let mut input = PlanInput {
            cluster: &self.cluster,
            now_s: self.now_s,
            grace_s: self.cfg.overrun_grace_s,
            seed: self.cfg.seed,
            group_use: group_use_of(&self.group_uses, self.jobs[&id].tenant, shape),
            by_limits: replan.is_some() && self.hold.slip.is_some(),
        };
        self.stats.reservation_plans += 1;
        let Some(mut plan) = reservation::plan(&input, id, shape, allowed) else {
            self.drop_reservation();
            return None;
        };
        // Estimates proved wrong for this holder: from now on it is planned by the limits of
        // what runs, a bound that holds, so that its start moves later at most once more
        // (and then only past a limit). Planned by estimates again, jobs admitted into the
        // slack of each new plan could move it later without end.
        if replan.is_some() && !input.by_limits && plan.start_s > self.hold.start_s {
            input.by_limits = true;
            self.stats.reservation_plans += 1;
            let Some(p) = reservation::plan(&input, id, shape, allowed) else {
                self.drop_reservation();
                return None;
            };
            plan = p;
        }
        let reason = if plan.start_s <= self.now_s {
            plan.start_s = self.now_s;
            WaitReason::Resources { blocker }
        } else {
            // Power is checked when the job starts; holding it for hours ahead would idle
            // the site.
            plan.rack_w.clear();
            plan.site_w.clear();
            WaitReason::Reserved {
                start_s: plan.start_s,
            }
        };
        plan.job = Some(id);
        match replan {
            Some(cause) => self.hold.replanned(plan.start_s, cause),
            None => {
                let t = self.jobs[&id].tenant;
                self.hold
                    .granted(t, self.tenants[t as usize].weight, plan.start_s)
            }
        }
        self.reservation = plan;
        self.reservation_planned_s = self.now_s;
        self.reservation_epoch = self.cluster.epoch;
        self.reservation_reason = reason;
        Some(reason)
    }

    /// Why the holder's start would move later on a new plan: a job on the reserved nodes
    /// still runs past the end the last plan gave it, else the nodes changed.
    fn slip_cause(&self) -> SlipCause {
        let planned = self.reservation_planned_s;
        let grace = self.cfg.overrun_grace_s;
        let mut nodes: Vec<NodeIdx> = self.reservation.slack.keys().copied().collect();
        nodes.sort_unstable();
        for n in nodes {
            let node = &self.cluster.nodes[n as usize];
            if let Some(t) = node
                .tasks
                .iter()
                .filter(|t| t.planned_end_s(planned, grace) <= self.now_s)
                .min_by_key(|t| t.job)
            {
                return SlipCause::Overran { job: t.job };
            }
        }
        if self.reservation_epoch != self.cluster.epoch {
            SlipCause::NodesChanged
        } else {
            SlipCause::Unexplained
        }
    }

    // ---- preemption --------------------------------------------------------------------

    fn could_preempt(&self, id: JobId) -> bool {
        let job = &self.jobs[&id];
        let lower = self
            .preemptible_running
            .first()
            .is_some_and(|&(p, _)| p < job.priority);
        lower || self.reclaim_models(id).is_some() || self.shorter_than_some_running(id)
    }

    /// Under `FairShareLas`: whether a running preemptible job of the same tenant and class
    /// is on a higher level than this pending job and has run its minimum time (and the
    /// job's last search that found no room is `retry_s` ago).
    fn las_victim_ready(&self, id: JobId) -> bool {
        let Some(las) = self.las() else {
            return false;
        };
        let job = &self.jobs[&id];
        let level = las.level(job.attained_milli_s);
        if level + 1 >= las.levels || self.las_retry.get(&id).is_some_and(|&r| r > self.now_s) {
            return false;
        }
        self.las_victims(job.tenant, job.priority, level)
            .next()
            .is_some()
    }

    /// Under `FairShareLas`: the running jobs a job of tenant `t`, class `p` and level
    /// `level` may preempt now (higher level, past their protected time), from the index.
    fn las_victims(
        &self,
        t: TenantIdx,
        p: PriorityClass,
        level: u8,
    ) -> impl Iterator<Item = JobId> + '_ {
        let now = self.now_s;
        let las = self.las();
        self.las_ready
            .range((t, p, 0, JobId(0))..=(t, p, now, JobId(u64::MAX)))
            .map(|k| k.3)
            .filter(move |v| {
                level == 0
                    || las.is_some_and(|l| l.level(self.jobs[v].attained_now_milli_s(now)) > level)
            })
    }

    /// SRTF: whether some running job of the same class or lower has more time left.
    fn shorter_than_some_running(&self, id: JobId) -> bool {
        if !matches!(
            self.cfg.queue_policy,
            QueuePolicy::ShortestRemainingFirst { .. }
        ) {
            return false;
        }
        let job = &self.jobs[&id];
        let mine = job.remaining_s(self.now_s, self.cfg.default_runtime_s);
        self.preemptible_running
            .range(..=(job.priority, JobId(u64::MAX)))
            .any(|(_, v)| self.jobs[v].remaining_s(self.now_s, self.cfg.default_runtime_s) > mine)
    }

    /// Models on which the job's tenant may reclaim borrowed capacity for it: the whole job
    /// fits within the tenant's guarantee there.
    fn reclaim_models(&self, id: JobId) -> Option<ModelSet> {
        let job = &self.jobs[&id];
        let tenant = &self.tenants[job.tenant as usize];
        let shape = &self.shapes[job.shape as usize];
        let mut all = ModelSet::default();
        for g in shape.groups.iter().filter(|g| g.accel != AccelReq::None) {
            let ok = g
                .models
                .iter()
                .filter(|&m| tenant.within_guarantee(m, g.accel_milli_total()))
                .fold(ModelSet::default(), ModelSet::with);
            if ok.is_empty() {
                return None;
            }
            all = ModelSet(all.0 | ok.0);
        }
        (!all.is_empty()).then_some(all)
    }

    /// Looks for the cheapest set of victims whose removal lets the job start; if found,
    /// preempts them and starts the job in the same breath, so the freed capacity cannot go
    /// to anyone else and nothing is preempted for a job that then does not start.
    fn try_preempt(&mut self, id: JobId, out: &mut Vec<Decision>) -> bool {
        // Decided before any victim goes: preempting changes who outranks whom.
        let bound = self.bound_by_reservation(id);
        let job = &self.jobs[&id];
        let (priority, tenant) = (job.priority, job.tenant);
        let shape = &self.shapes[job.shape as usize];
        let reclaim = self.reclaim_models(id);
        let models = shape
            .groups
            .iter()
            .fold(ModelSet::default(), |s, g| ModelSet(s.0 | g.models.0));
        // Candidates: preemptible running work (of a lower class, unless reclaiming) with a
        // task where this job could run.
        let upto = if reclaim.is_some() {
            PriorityClass::Critical
        } else {
            priority
        };
        let now = self.now_s;
        let srtf = matches!(
            self.cfg.queue_policy,
            QueuePolicy::ShortestRemainingFirst { .. }
        );
        let mine = self.jobs[&id].remaining_s(now, self.cfg.default_runtime_s);
        let las = self.las();
        let my_level = las.map_or(0, |l| l.level(self.jobs[&id].attained_milli_s));
        // Jobs of its own class are victims only when reclaiming or under SRTF; under LAS
        // the tenant's own ready jobs come from their index below.
        let own_class = reclaim.is_some() || srtf;
        let rules = shape.rules.as_deref();
        let fair = self.fair_share();
        let usable = |v: JobId| {
            self.jobs[&v].tasks.iter().any(|t| {
                let n = &self.cluster.nodes[t.hold.node as usize];
                shape.sites.contains(n.site)
                    && (models.is_empty() || n.model.is_some_and(|m| models.contains(m)))
                    && constraints::labels_match(n, rules)
                    && constraints::taints_tolerated(n, rules, !models.is_empty())
            })
        };
        // Lowest classes first; once enough victims are found, a class boundary ends the
        // search (victims of higher classes would sort after all of them).
        let mut cands: Vec<JobId> = Vec::new();
        let mut class = None;
        for &(p, v) in self.preemptible_running.range(..=(upto, JobId(u64::MAX))) {
            if class != Some(p) && cands.len() >= 2 * MAX_VICTIMS || !own_class && p >= priority {
                break;
            }
            class = Some(p);
            if usable(v) {
                cands.push(v);
            }
        }
        if las.is_some() && !own_class && my_level + 1 < las.map_or(0, |l| l.levels) {
            cands.extend(
                self.las_victims(tenant, priority, my_level)
                    .filter(|&v| usable(v))
                    .take(2 * MAX_VICTIMS),
            );
        }
        let mut victims: Vec<(PreemptReason, (PriorityClass, u64, JobId))> = cands
            .into_iter()
            .filter_map(|v| {
                let vj = &self.jobs[&v];
                if !vj.preemptible || vj.state != JobState::Running {
                    return None;
                }
                let cost = (now - vj.started_s + 1).saturating_mul(vj.accel_milli() + 1);
                let key = (vj.priority, cost, v);
                // Under fair share a higher class preempts only its own tenant's jobs; another
                // tenant's capacity is taken back only by reclaim, for a job within its
                // guarantee (below).
                if vj.priority < priority && (vj.tenant == tenant || !fair) {
                    return Some((PreemptReason::Priority { by: id }, key));
                }
                if srtf && vj.priority == priority {
                    // SRTF: the longest remaining go first.
                    let left = vj.remaining_s(now, self.cfg.default_runtime_s);
                    return (left > mine).then_some((
                        PreemptReason::ShorterRemaining { by: id },
                        (vj.priority, u64::MAX - left, v),
                    ));
                }
                if let Some(las) = las
                    && vj.priority == priority
                    && vj.tenant == tenant
                {
                    // LAS: the tenant's own jobs on a higher level that ran their minimum,
                    // the most attained service first.
                    let attained = vj.attained_now_milli_s(now);
                    let ready = las.level(attained) > my_level
                        && now.saturating_sub(vj.started_s) >= las.protected_s(vj.run_s);
                    return ready.then_some((
                        PreemptReason::LeastAttained { by: id },
                        (vj.priority, u64::MAX - attained, v),
                    ));
                }
                let rm = reclaim?;
                let vt = &self.tenants[vj.tenant as usize];
                let borrowing = vj.tenant != tenant
                    && vj.tasks.iter().all(|t| {
                        t.model
                            .is_some_and(|m| rm.contains(m) && vt.is_borrowing(m, vj.accel_milli()))
                    });
                borrowing.then_some((PreemptReason::Reclaim { by: id }, key))
            })
            .collect();
        victims.sort_by_key(|v| v.1);
        // Reclaim may take a victim only while its tenant, after the victims before it, is
        // still borrowing what the victim holds.
        let mut released: BTreeMap<(TenantIdx, ModelId), u64> = BTreeMap::new();
        victims.retain(|(reason, (_, _, v))| {
            let vj = &self.jobs[v];
            let vt = &self.tenants[vj.tenant as usize];
            let milli = vj.accel_milli();
            let mut models: Vec<ModelId> = vj.tasks.iter().filter_map(|t| t.model).collect();
            models.dedup();
            let ok = !matches!(reason, PreemptReason::Reclaim { .. })
                || models.iter().all(|&m| {
                    let before = released.get(&(vj.tenant, m)).copied().unwrap_or(0);
                    vt.is_borrowing(m, before + milli)
                });
            if ok {
                for m in models {
                    *released.entry((vj.tenant, m)).or_default() += milli;
                }
            }
            ok
        });
        victims.truncate(MAX_VICTIMS);
        let single = matches!(&shape.groups[..], [g] if g.replicas == 1);
        let chosen = if single {
            self.victims_on_one_node(id, &victims, bound)
        } else {
            self.victims_for_gang(id, &victims, bound)
        };
        let Some(chosen) = chosen else {
            return false;
        };
        for &i in &chosen {
            let (reason, (_, _, v)) = victims[i].clone();
            self.preempt(v, reason, out);
        }
        match self.place_as(id, bound) {
            Ok((placed, slack_used)) => {
                self.start_placed(id, placed, slack_used, out);
                true
            }
            Err(_) => false,
        }
    }

    /// For a one-replica job, as Kubernetes does for a pod: on each node holding victims,
    /// the cheapest victims (cheapest first) that make the job fit there; the node where that
    /// costs least wins. No tentative placement is needed, only the node's own filters.
    /// Returns indices into `victims`; the state is unchanged.
    fn victims_on_one_node(
        &mut self,
        id: JobId,
        victims: &[(PreemptReason, (PriorityClass, u64, JobId))],
        bound: bool,
    ) -> Option<Vec<usize>> {
        let shape = &self.shapes[self.jobs[&id].shape as usize];
        let need: u64 = shape.groups.iter().map(|g| g.accel.milli()).sum();
        let mut by_node: BTreeMap<NodeIdx, Vec<usize>> = BTreeMap::new();
        // What the victims hold on each node: a node where even all of it with what is free
        // is too little is not tried.
        let mut held: BTreeMap<NodeIdx, u64> = BTreeMap::new();
        for (i, (_, (_, _, v))) in victims.iter().enumerate() {
            for t in self.jobs[v].tasks.iter().filter(|t| t.exit_code.is_none()) {
                if shape
                    .sites
                    .contains(self.cluster.nodes[t.hold.node as usize].site)
                {
                    let list = by_node.entry(t.hold.node).or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                    *held.entry(t.hold.node).or_default() +=
                        t.hold.devices.len() as u64 * t.hold.milli as u64;
                }
            }
        }
        // Nodes whose cheapest victim is cheapest first; a bounded number of them.
        let mut nodes: Vec<(u64, NodeIdx)> = by_node
            .iter()
            .map(|(&n, l)| (victims[l[0]].1.1, n))
            .collect();
        nodes.sort_unstable();
        nodes.truncate(MAX_PREEMPTION_NODES);
        let mut best: Option<(u64, Vec<usize>)> = None;
        for (_, n) in nodes {
            if self.cluster.nodes[n as usize].free_milli() + held[&n] < need {
                continue;
            }
            let mut freed = Vec::new();
            let mut cost = 0u64;
            for &i in &by_node[&n] {
                if best.as_ref().is_some_and(|b| cost >= b.0) {
                    break;
                }
                self.charge(victims[i].1.2, true);
                freed.push(i);
                cost = cost.saturating_add(victims[i].1.1);
                let job = &self.jobs[&id];
                let placer = new_placer(&self.scorers, &self.profile, &self.cfg);
                let request =
                    request_for(job, &self.shapes, &self.tenants, &self.group_uses, bound);
                if placer.fits_on(&self.cluster, &request, Some(&self.reservation), n) {
                    if best.as_ref().is_none_or(|b| cost < b.0) {
                        best = Some((cost, freed.clone()));
                    }
                    break;
                }
            }
            for &i in freed.iter().rev() {
                self.charge(victims[i].1.2, false);
            }
        }
        best.map(|b| b.1)
    }

    /// For a gang: the smallest cheapest-first prefix of `victims` that makes room (a binary
    /// search: freeing more never takes room away), then spare whom we can, most expensive
    /// first. Returns indices into `victims`; the state is unchanged.
    fn victims_for_gang(
        &mut self,
        id: JobId,
        victims: &[(PreemptReason, (PriorityClass, u64, JobId))],
        bound: bool,
    ) -> Option<Vec<usize>> {
        let order: Vec<JobId> = victims.iter().map(|v| v.1.2).collect();
        // Free victims cheapest first until bucket counts say the gang could fit (cheap, no
        // placement), then confirm with real placements, freeing more while power or
        // topology still say no.
        let mut lo = 0;
        while lo < order.len() {
            self.charge(order[lo], true);
            lo += 1;
            if self.could_fit_now(id) {
                break;
            }
        }
        let mut step = 1;
        while !self.try_place_and_undo(id, bound) {
            if lo == order.len() {
                for &v in order[..lo].iter().rev() {
                    self.charge(v, false);
                }
                return None;
            }
            let next = (lo + step).min(order.len());
            for &v in &order[lo..next] {
                self.charge(v, true);
            }
            lo = next;
            step *= 2;
        }
        // The victims of the prefix are off their nodes now.
        let prefix = &order[..lo];
        let mut keep = vec![false; prefix.len()];
        for k in (0..prefix.len()).rev().take(MAX_SPARE_TRIES) {
            self.charge(prefix[k], false);
            if self.could_fit_now(id) && self.try_place_and_undo(id, bound) {
                keep[k] = true;
            } else {
                self.charge(prefix[k], true);
            }
        }
        let chosen: Vec<usize> = (0..prefix.len()).filter(|&k| !keep[k]).collect();
        for &k in &chosen {
            self.charge(prefix[k], false);
        }
        Some(chosen)
    }

    /// The bucket-count upper bound of a placement: cheap, and never says no when the job
    /// would fit.
    fn could_fit_now(&self, id: JobId) -> bool {
        let placer = new_placer(&self.scorers, &self.profile, &self.cfg);
        placer.could_fit(&self.cluster, &self.shapes[self.jobs[&id].shape as usize])
    }

    fn try_place_and_undo(&mut self, id: JobId, bound: bool) -> bool {
        match self.place_as(id, bound) {
            Ok((placed, _)) => {
                for p in placed {
                    self.cluster.give(
                        &p.hold,
                        TaskRef {
                            job: id,
                            task: p.task,
                        },
                    );
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Places the job on the cluster as it is now (taking the holds), honouring the
    /// reservation unless the job holds it or ends before it begins.
    fn place_now(&mut self, id: JobId) -> Result<(Vec<Placed>, IdMap<NodeIdx, Slack>), Blocker> {
        self.place_as(id, self.bound_by_reservation(id))
    }

    /// Places the job, held off the reservation's capacity if `bound`.
    fn place_as(
        &mut self,
        id: JobId,
        bound: bool,
    ) -> Result<(Vec<Placed>, IdMap<NodeIdx, Slack>), Blocker> {
        let job = &self.jobs[&id];
        let placer = new_placer(&self.scorers, &self.profile, &self.cfg);
        let request = request_for(job, &self.shapes, &self.tenants, &self.group_uses, bound);
        let result = placer.place(&mut self.cluster, &request, Some(&self.reservation));
        self.stats.placements += 1;
        self.stats.nodes_visited += placer.visited.get();
        result
    }

    /// Starts a placed job, charging the reservation slack it used.
    fn start_placed(
        &mut self,
        id: JobId,
        placed: Vec<Placed>,
        slack_used: IdMap<NodeIdx, Slack>,
        out: &mut Vec<Decision>,
    ) {
        for (n, used) in slack_used {
            if let Some(s) = self.reservation.slack.get_mut(&n) {
                s.accel_milli -= used.accel_milli;
                s.cpu_milli -= used.cpu_milli;
                s.mem_mib -= used.mem_mib;
            }
        }
        self.start(id, placed, out);
    }

    // ---- explanations ------------------------------------------------------------------

    /// Pending jobs in queue order (priority class, then fair share, then age), as a pass
    /// would meet them if nothing started.
    pub fn queue(&self) -> Vec<JobId> {
        let mut all: Vec<QueueOrder> = self.queue_keys().collect();
        all.sort_unstable();
        all.into_iter().map(|k| k.3).collect()
    }

    /// Every pending job's sort key in `queue` order.
    fn queue_keys(&self) -> impl Iterator<Item = QueueOrder> + '_ {
        let cap = self.capacity();
        let fair: Vec<u64> = if self.fair_share() {
            self.tenants
                .iter()
                .map(|t| t.fair_key(cap).to_bits())
                .collect()
        } else {
            vec![0; self.tenants.len()]
        };
        self.queues.iter().map(move |(t, c, order_s, id)| {
            (
                Reverse(self.queues.key(c).priority),
                fair[t as usize],
                order_s,
                id,
            )
        })
    }

    /// A pending job's place in `queue` order, counted without sorting the queue.
    pub fn queue_position(&self, id: JobId) -> Option<usize> {
        let mine = self.queue_keys().find(|k| k.3 == id)?;
        Some(self.queue_keys().filter(|k| *k < mine).count())
    }

    /// Why a pending job waits. Jobs behind the head of their class share its reason; only
    /// the holder itself is told its reserved start.
    pub fn wait_reason(&self, id: JobId) -> Option<WaitReason> {
        let job = self.jobs.get(&id)?;
        if job.state != JobState::Pending {
            return None;
        }
        Some(match self.queues.wait(job.tenant, job.class) {
            WaitReason::Reserved { .. } if self.reservation.job != Some(id) => {
                WaitReason::Resources {
                    blocker: Blocker::Reservation,
                }
            }
            w => w,
        })
    }

    pub fn explain(&self, id: JobId) -> Option<Explanation> {
        let job = self.jobs.get(&id)?;
        let wait = self.wait_reason(id).unwrap_or(WaitReason::Queued);
        let (position, text, est) = if job.state == JobState::Pending {
            let pos = self.queue_position(id);
            let est = match wait {
                WaitReason::Reserved { start_s } => Some(start_s),
                _ => None,
            };
            let needs = self.describe_needs(id).unwrap_or_default();
            let mut text = format!("{needs}; {}", wait.describe(self.now_s));
            if let (WaitReason::Reserved { start_s }, Some(slip)) = (wait, self.hold.slip)
                && self.reservation.job == Some(id)
            {
                text.push_str(&format!(" ({})", slip.describe(start_s)));
            }
            (pos, text, est)
        } else {
            (None, format!("{:?}", job.state).to_lowercase(), None)
        };
        Some(Explanation {
            job: id,
            state: job.state,
            position,
            wait,
            text,
            estimated_start_s: est,
        })
    }

    /// Checks every invariant the engine promises; tests call it after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let c = &self.cluster;
        let mut pending = 0;
        let mut used: Vec<Vec<u32>> = c
            .nodes
            .iter()
            .map(|n| vec![0; n.used_milli.len()])
            .collect();
        let mut cpu = vec![0u64; c.nodes.len()];
        let mut mem = vec![0u64; c.nodes.len()];
        for j in self.jobs.values() {
            let queued = self.queues.contains(j.tenant, j.class, j.pending());
            match j.state {
                JobState::Pending => {
                    pending += 1;
                    if !queued || !j.tasks.is_empty() {
                        return Err(format!(
                            "pending job {} is not queued exactly as pending",
                            j.id
                        ));
                    }
                }
                JobState::Running => {
                    if queued {
                        return Err(format!("running job {} is still queued", j.id));
                    }
                    let shape = &self.shapes[j.shape as usize];
                    let want: u32 = shape.groups.iter().map(|g| g.replicas).sum();
                    if j.tasks.len() != want as usize {
                        return Err(format!(
                            "job {} runs {} of its {} tasks: a partial gang",
                            j.id,
                            j.tasks.len(),
                            want
                        ));
                    }
                    for t in j.tasks.iter().filter(|t| t.exit_code.is_none()) {
                        let n = &c.nodes[t.hold.node as usize];
                        if !shape.sites.contains(n.site) {
                            return Err(format!(
                                "job {} runs on {} outside its allowed sites",
                                j.id, n.name
                            ));
                        }
                        if let Some(m) = t.model
                            && n.model != Some(m)
                        {
                            return Err(format!("job {} has a task on the wrong model", j.id));
                        }
                        for &d in &t.hold.devices {
                            used[t.hold.node as usize][d as usize] += t.hold.milli as u32;
                        }
                        cpu[t.hold.node as usize] += t.hold.cpu_milli;
                        mem[t.hold.node as usize] += t.hold.mem_mib;
                    }
                    if let Some(top) = shape
                        .topology
                        .filter(|t| t.mode == gosok_model::TopologyMode::Required)
                    {
                        let units: BTreeSet<u64> = j
                            .tasks
                            .iter()
                            .map(|t| placement::unit_of(c, t.hold.node, Some(top.level)))
                            .collect();
                        if units.len() > 1 {
                            return Err(format!(
                                "job {} spans {} units of its required topology",
                                j.id,
                                units.len()
                            ));
                        }
                    }
                }
                _ => {
                    if queued || !j.tasks.is_empty() {
                        return Err(format!(
                            "finished job {} still holds resources or a queue place",
                            j.id
                        ));
                    }
                }
            }
        }
        if pending != self.queues.len() || self.queues.iter().count() != pending {
            return Err("pending count disagrees with the queues".into());
        }
        // Every pending job down the ladder is scheduled for promotion.
        let scheduled: BTreeSet<(JobId, u32)> =
            self.promotions.iter().map(|&(_, id, a)| (id, a)).collect();
        if let Some(las) = self.las()
            && las.promote_after_runs > 0
            && let Some(j) = self.jobs.values().find(|j| {
                j.state == JobState::Pending
                    && las.level(j.attained_milli_s) > 0
                    && !scheduled.contains(&(j.id, j.attempt))
            })
        {
            return Err(format!("job {} is down the ladder with no promotion", j.id));
        }
        if let Some(las) = self.las() {
            let want: BTreeSet<LasReady> = self
                .jobs
                .values()
                .filter(|j| j.preemptible && j.state == JobState::Running)
                .filter_map(|j| las_ready_key(&las, j))
                .collect();
            if want != self.las_ready {
                return Err("the attained-service index disagrees with the running jobs".into());
            }
        } else if !self.las_ready.is_empty()
            || !self.promotions.is_empty()
            || !self.las_retry.is_empty()
        {
            return Err("attained-service state kept without the ladder".into());
        }
        let mut rack_w = vec![0u64; c.racks.len()];
        let mut site_w = vec![0u64; c.sites.len()];
        for (i, n) in c.nodes.iter().enumerate() {
            for (d, &u) in used[i].iter().enumerate() {
                if u > 1000 || u != n.used_milli[d] as u32 {
                    return Err(format!(
                        "node {} device {d}: {u} thousandths held, {} recorded",
                        n.name, n.used_milli[d]
                    ));
                }
            }
            if cpu[i] > n.cpu_total_milli || n.cpu_free_milli != n.cpu_total_milli - cpu[i] {
                return Err(format!("node {}: CPU over-allocated or miscounted", n.name));
            }
            if mem[i] > n.mem_total_mib || n.mem_free_mib != n.mem_total_mib - mem[i] {
                return Err(format!(
                    "node {}: memory over-allocated or miscounted",
                    n.name
                ));
            }
            rack_w[n.rack as usize] += n.draw_w;
            site_w[n.site as usize] += n.draw_w;
        }
        // Every task a node keeps belongs to a running job and knows when it ends.
        for n in &c.nodes {
            for t in &n.tasks {
                let ok = self.jobs.get(&t.job).is_some_and(|j| {
                    j.state == JobState::Running && t.ends_s == j.ends_s(self.cfg.default_runtime_s)
                });
                if !ok {
                    return Err(format!(
                        "node {} keeps a stale task of job {}",
                        n.name, t.job
                    ));
                }
            }
        }
        // The index and the free-capacity sums agree with the nodes.
        let mut free = (
            vec![0u64; c.domains.len()],
            vec![0u64; c.racks.len()],
            vec![0u64; c.sites.len()],
        );
        for (i, n) in c.nodes.iter().enumerate() {
            let up = n.state == NodeState::Up;
            if let Some(m) = n.model {
                let listed =
                    c.index.bucket(n.site, m)[n.free_whole as usize].contains(i as NodeIdx);
                let partial = c.index.partial(n.site, m).contains(&(i as NodeIdx));
                if listed != up || partial != (up && n.has_partial()) {
                    return Err(format!("node {}: index out of date", n.name));
                }
            }
            if up {
                free.0[n.domain as usize] += n.free_milli();
                free.1[n.rack as usize] += n.free_milli();
                free.2[n.site as usize] += n.free_milli();
            }
        }
        let sums_agree = c
            .domains
            .iter()
            .zip(&free.0)
            .all(|(d, f)| d.free_milli == *f)
            && c.racks.iter().zip(&free.1).all(|(r, f)| r.free_milli == *f)
            && c.sites.iter().zip(&free.2).all(|(s, f)| s.free_milli == *f);
        if !sums_agree {
            return Err("free capacity per domain, rack or site miscounted".into());
        }
        for (r, rack) in c.racks.iter().enumerate() {
            if rack.it_w != rack_w[r] {
                return Err(format!("rack {}: draw miscounted", rack.name));
            }
        }
        for (s, site) in c.sites.iter().enumerate() {
            if site.it_w != site_w[s] {
                return Err(format!("site {}: draw miscounted", site.name));
            }
        }
        self.check_constraints()
    }

    /// No live task sits on a node its job's selector or tolerations exclude; no node, rack
    /// or site holds more of a job's replicas than its caps allow, nor more of a group's
    /// than the largest cap of the group's jobs there; the group counts are what runs.
    fn check_constraints(&self) -> Result<(), String> {
        let c = &self.cluster;
        let mut groups = GroupUses::new();
        // Per (tenant, group): the largest per-node and per-unit cap of its jobs on each
        // node, rack or site (the last job placed there had a cap at least the count).
        type Caps = BTreeMap<(TenantIdx, String), BTreeMap<(u8, u64), u32>>;
        let mut caps: Caps = BTreeMap::new();
        for j in self.jobs.values().filter(|j| j.state == JobState::Running) {
            let shape = &self.shapes[j.shape as usize];
            let rules = shape.rules.as_deref();
            let mut own = GroupUse::default();
            for t in j.tasks.iter().filter(|t| t.exit_code.is_none()) {
                let node = &c.nodes[t.hold.node as usize];
                let wants_accel = shape.groups[t.group as usize].accel != AccelReq::None;
                if let Err(b) = constraints::node_admits(node, rules, wants_accel) {
                    return Err(format!(
                        "job {} runs a task on node {} against its constraints ({b:?})",
                        j.id, node.name
                    ));
                }
                own.count(c, t.hold.node, false);
            }
            let Some(r) = rules else { continue };
            let spread_of = |u: &GroupUse| match r.spread {
                Some((TopologyLevel::Site, _)) => {
                    u.site.iter().map(|(&k, &v)| (k as u64, v)).collect()
                }
                Some(_) => u.rack.iter().map(|(&k, &v)| (k as u64, v)).collect(),
                None => Vec::new(),
            };
            if let Some(max) = r.max_per_node
                && own.node.values().any(|&v| v > max)
            {
                return Err(format!("job {} exceeds max_replicas_per_node", j.id));
            }
            if let Some((_, max)) = r.spread
                && spread_of(&own).iter().any(|&(_, v)| v > max)
            {
                return Err(format!("job {} exceeds its spread cap", j.id));
            }
            if let Some(g) = &r.group {
                let key = (j.tenant, g.clone());
                let total = groups.entry(key.clone()).or_default();
                let cap = caps.entry(key).or_default();
                let mut raise = |k: (u8, u64), m: Option<u32>| {
                    let e = cap.entry(k).or_default();
                    *e = (*e).max(m.unwrap_or(u32::MAX));
                };
                let (rack_cap, site_cap) = match r.spread {
                    Some((TopologyLevel::Site, m)) => (None, Some(m)),
                    Some((_, m)) => (Some(m), None),
                    None => (None, None),
                };
                for (&n, &v) in &own.node {
                    for _ in 0..v {
                        total.count(c, n, false);
                    }
                    let node = &c.nodes[n as usize];
                    raise((0, n as u64), r.max_per_node);
                    raise((1, node.rack as u64), rack_cap);
                    raise((2, node.site as u64), site_cap);
                }
            }
        }
        if groups != self.group_uses {
            return Err("the running replicas of groups are miscounted".into());
        }
        // The last job of a group placed in a unit saw fewer than its cap there, and the
        // jobs there now were all placed before it or are it: the count is within the
        // largest cap of the group's jobs in the unit.
        for (key, total) in &groups {
            let cap = &caps[key];
            let over = |kind: u8, counts: Vec<(u64, u32)>| {
                counts
                    .into_iter()
                    .any(|(u, v)| v > cap.get(&(kind, u)).copied().unwrap_or(u32::MAX))
            };
            let node: Vec<(u64, u32)> = total.node.iter().map(|(&k, &v)| (k as u64, v)).collect();
            let rack: Vec<(u64, u32)> = total.rack.iter().map(|(&k, &v)| (k as u64, v)).collect();
            let site: Vec<(u64, u32)> = total.site.iter().map(|(&k, &v)| (k as u64, v)).collect();
            if over(0, node) || over(1, rack) || over(2, site) {
                return Err(format!(
                    "group {:?} exceeds its anti-affinity or spread caps",
                    key.1
                ));
            }
        }
        Ok(())
    }

    /// Whether every rack and site is within its power cap (a lowered cap may leave
    /// non-preemptible work over it, which `Shed` reports).
    pub fn power_within_caps(&self) -> Result<(), String> {
        let c = &self.cluster;
        for r in &c.racks {
            if r.it_w > r.cap_w {
                return Err(format!(
                    "rack {} draws {} W over its {} W cap",
                    r.name, r.it_w, r.cap_w
                ));
            }
        }
        for (s, site) in c.sites.iter().enumerate() {
            let f = c.site_facility_draw_w(s as u16);
            if f > site.budget_w {
                return Err(format!(
                    "site {} draws {f} W over its {} W budget",
                    site.name, site.budget_w
                ));
            }
        }
        Ok(())
    }
}

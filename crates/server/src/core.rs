//! The controller's state: the engine plus the controller's own records (jobs as users see
//! them, tokens, idempotency keys, the declared topology).
//!
//! Everything changes through [`Core::apply`] with a log [`Entry`], both live and when the log
//! is replayed at start, so a replay rebuilds exactly the state that was acknowledged. The
//! engine is deterministic, so replaying the same entries (ticks included) gives the same
//! decisions. No I/O happens here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosok_engine::{
    Decision, Engine, EngineConfig, Event, JobId, JobState, PreemptReason, TaskPlacement,
};
use gosok_model::{Catalog, ClusterSpec, JobSpec, NodeState, SpecError, TenantSpec};
use serde::{Deserialize, Serialize};

use crate::entry::{Entry, TokenEntry};

mod agents;
pub use agents::{NodeAgent, RunSpec, STALE_EPOCH};
mod accounts;
pub use accounts::{
    AccountChange, Accounts, Allocation, Draw, OnExhaustion, Policy, Price, Programme,
};
mod meter;
pub use meter::{AttemptEnd, Meter, UsageRow};
pub mod dependencies;
pub use dependencies::JobControl;
mod snapshot;
pub use snapshot::CORE_SNAPSHOT_FORMAT;

/// Why a change was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub field: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    Invalid,
    NotFound,
    Conflict,
}

impl Refusal {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::Invalid,
            field: Some(field.into()),
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::NotFound,
            field: None,
            message: message.into(),
        }
    }
    pub fn conflict(field: Option<&str>, message: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::Conflict,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
    pub fn field(mut self, field: &str) -> Refusal {
        self.field = Some(field.to_string());
        self
    }
    pub fn spec(prefix: &str, e: SpecError) -> Refusal {
        let field = match (prefix, e.field.as_str()) {
            ("", f) => f.to_string(),
            (p, "") => p.to_string(),
            (p, f) => format!("{p}.{f}"),
        };
        Refusal::invalid(field, e.message)
    }
}

/// A user-facing job state name.
pub fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Pending => "pending",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Rejected => "rejected",
        JobState::Held => "held",
        JobState::TimedOut => "timed_out",
    }
}

/// The state a user sees: a pending job its owner held is `held`.
pub fn job_state_name(j: &JobRecord) -> &'static str {
    match j.gate.as_deref() {
        Some(g) if g.waiting && g.user_hold && j.state == JobState::Pending => "held",
        _ => state_name(j.state),
    }
}

pub fn parse_state(s: &str) -> Option<JobState> {
    Some(match s {
        "pending" => JobState::Pending,
        "running" => JobState::Running,
        "succeeded" => JobState::Succeeded,
        "failed" => JobState::Failed,
        "cancelled" => JobState::Cancelled,
        "rejected" => JobState::Rejected,
        "timed_out" => JobState::TimedOut,
        "held" => JobState::Held,
        _ => return None,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryItem {
    pub at_ms: u64,
    pub event: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Reads a job's spec back from the log by the sequence number of its submission. The core
/// keeps no specs in memory (the engine keeps what it needs); rebuilding the engine on a new
/// topology reads the specs of the jobs that may still run through this.
pub type SpecSource = Box<dyn FnMut(u64) -> Option<JobSpec> + Send>;

/// Carried by snapshots as it is (`snapshot.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: u64,
    pub tenant: Arc<str>,
    pub name: Option<Box<str>>,
    /// The log entry that submitted it (spec and command are there).
    pub submit_seq: u64,
    pub submitted_ms: u64,
    pub state: JobState,
    /// Refused at submission by the engine's admission (answered with 422): kept for the
    /// audit log, never listed.
    pub refused: bool,
    pub accel_milli: u64,
    pub attempt: u32,
    pub placement: Vec<TaskPlacement>,
    #[serde(with = "snapshot::history")]
    pub history: Vec<HistoryItem>,
    pub ended_ms: Option<u64>,
    pub reason: Option<String>,
    /// What its tasks run; None for a job without a command (it runs nothing on agents).
    pub run: Option<Box<RunSpec>>,
    /// Where its latest attempt ran, kept after it ended (its logs are there).
    pub last_run: Vec<TaskPlacement>,
    pub last_run_attempt: u32,
    /// Its hold, dependencies and array task, if it has any (`core/dependencies.rs`).
    pub gate: Option<Box<dependencies::Gate>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub tenant: Option<Arc<str>>,
    pub agent: bool,
    pub created_ms: u64,
    pub revoked: bool,
}

/// Counters the metrics endpoint reads.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counters {
    #[serde(with = "snapshot::decision_counts")]
    pub decisions: BTreeMap<&'static str, u64>,
    pub submitted: u64,
}

/// The result of applying one entry.
#[derive(Debug, Default)]
pub struct Applied {
    pub decisions: Vec<Decision>,
    /// How long the scheduling pass of a tick took.
    pub pass: Option<Duration>,
    /// Engine-time reached by a tick.
    pub changed: Vec<String>,
}

pub struct Core {
    cfg: EngineConfig,
    catalog: Catalog,
    added_models: Vec<gosok_model::AcceleratorModel>,
    /// The declared topology and tenants; node states live in `node_states`.
    cluster: ClusterSpec,
    node_states: BTreeMap<String, NodeState>,
    engine: Engine,
    /// Job `id` is at index `id - 1`.
    jobs: Vec<JobRecord>,
    tokens: HashMap<[u8; 32], TokenRecord>,
    token_by_id: BTreeMap<String, [u8; 32]>,
    idempotency: HashMap<(Arc<str>, String), (String, u64)>,
    pending_by_tenant: BTreeMap<Arc<str>, u64>,
    /// Bytes of command, env and workdir held by each tenant's pending and running jobs
    /// (recomputed from the jobs at restore).
    stored_by_tenant: BTreeMap<Arc<str>, u64>,
    tenant_names: BTreeMap<String, Arc<str>>,
    now_s: u64,
    /// Something changed since the last tick (a pass may have work to do).
    pub dirty: bool,
    running: u64,
    pub counters: Counters,
    initialised: bool,
    /// The last log record applied.
    seq: u64,
    specs: SpecSource,
    /// Nodes claimed by agents, by name (never removed: epochs only grow).
    agents: BTreeMap<String, NodeAgent>,
    /// Running jobs, for the agents' desired sets.
    running_jobs: std::collections::BTreeSet<u64>,
    /// Metered usage of every task attempt (`core/meter.rs`).
    meter: Meter,
    /// Programmes, allocations, prices and draw-down (`core/accounts.rs`).
    accounts: Accounts,
    /// Held jobs, dependencies and job arrays.
    gates: dependencies::Gates,
}

pub fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn build_engine(
    catalog: &Catalog,
    cluster: &ClusterSpec,
    node_states: &BTreeMap<String, NodeState>,
    cfg: &EngineConfig,
    now_s: u64,
) -> Result<(Engine, BTreeMap<String, NodeState>), Refusal> {
    let resolved = cluster.resolve(catalog).map_err(|e| Refusal::spec("", e))?;
    let mut engine =
        Engine::new(catalog.clone(), cluster, cfg.clone()).map_err(|e| Refusal::spec("", e))?;
    let mut states = BTreeMap::new();
    for n in resolved {
        let declared = n.spec.state;
        let state = node_states.get(&n.name).copied().unwrap_or(declared);
        if state != declared {
            engine
                .apply(Event::NodeState {
                    node: n.name.clone(),
                    state,
                })
                .map_err(|e| Refusal::invalid("node", e.to_string()))?;
        }
        states.insert(n.name, state);
    }
    engine
        .apply(Event::AdvanceTime { now_s })
        .map_err(|e| Refusal::invalid("now_s", e.to_string()))?;
    Ok((engine, states))
}

impl Core {
    pub fn new(cfg: EngineConfig, specs: SpecSource) -> Result<Core, Refusal> {
        let catalog = Catalog::builtin();
        let cluster = ClusterSpec::default();
        let (engine, node_states) = build_engine(&catalog, &cluster, &BTreeMap::new(), &cfg, 0)?;
        Ok(Core {
            cfg,
            catalog,
            added_models: Vec::new(),
            cluster,
            node_states,
            engine,
            jobs: Vec::new(),
            tokens: HashMap::new(),
            token_by_id: BTreeMap::new(),
            idempotency: HashMap::new(),
            pending_by_tenant: BTreeMap::new(),
            stored_by_tenant: BTreeMap::new(),
            tenant_names: BTreeMap::new(),
            now_s: 0,
            dirty: false,
            running: 0,
            counters: Counters::default(),
            initialised: false,
            seq: 0,
            specs,
            agents: BTreeMap::new(),
            running_jobs: Default::default(),
            meter: Meter::default(),
            accounts: Accounts::default(),
            gates: Default::default(),
        })
    }

    /// Room for `n` more jobs (a replay knows how many submissions its log holds).
    pub fn reserve_jobs(&mut self, n: usize) {
        self.jobs.reserve(n);
    }

    // ---- reading ----------------------------------------------------------------------

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    pub fn cluster(&self) -> &ClusterSpec {
        &self.cluster
    }
    pub fn node_states(&self) -> &BTreeMap<String, NodeState> {
        &self.node_states
    }
    pub fn meter(&self) -> &Meter {
        &self.meter
    }
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }
    pub fn engine_config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Checks an accounting change before it is written.
    pub fn check_account(&self, change: &AccountChange) -> Result<(), Refusal> {
        let tenants = |t: &str| self.tenant(t).is_some();
        let sites = |s: &str| self.cluster.site.iter().any(|x| x.name == s);
        self.accounts
            .check(change, &self.catalog, &tenants, &sites, self.now_s)
    }

    /// Admission against the tenant's balance: a job of a tenant holding allocations needs
    /// its accelerators × runtime bound left (after what live jobs reserved), unless it runs
    /// as scavenger work the tenant's policy allows. The refusal says the numbers.
    /// `copies`: the jobs the submission makes (an array makes one per index).
    pub fn check_balance(&self, tenant: &str, spec: &JobSpec, copies: u64) -> Result<(), String> {
        let Some(t) = self.tenant(tenant) else {
            return Ok(());
        };
        let class = spec.priority.unwrap_or(t.default_priority);
        let Some((left, reserved)) =
            self.accounts
                .available_for(&self.catalog, tenant, spec, class, self.now_s)
        else {
            return Ok(());
        };
        let need = Accounts::need_milli_s(spec, self.cfg.default_runtime_s).saturating_mul(copies);
        let available = left.saturating_sub(reserved);
        if need <= available {
            return Ok(());
        }
        let h = |m: u64| m as f64 / 3_600_000.0;
        let scavenger = if self.accounts.policy(tenant).allow_scavenger {
            "; it may still run as preemptible scavenger work (priority scavenger) on idle capacity"
        } else {
            ""
        };
        Err(format!(
            "tenant {tenant:?} has {:.3} accelerator-hours left in allocations that cover this job ({:.3} remaining, {:.3} reserved by its pending and running jobs); this submission needs {:.3} ({copies} job(s) × {} accelerators × ({} s runtime bound + 1 s)){scavenger}",
            h(available),
            h(left),
            h(reserved),
            h(need),
            spec.total_accelerator_milli() as f64 / 1000.0,
            spec.runtime_limit_s
                .or(spec.runtime_estimate_s)
                .unwrap_or(self.cfg.default_runtime_s),
        ))
    }

    /// Tenants whose balance running work has used up, not yet recorded.
    pub fn newly_exhausted(&self) -> Vec<(String, OnExhaustion, Vec<u64>)> {
        self.accounts
            .newly_exhausted(&self.meter, &self.catalog, self.engine.now_s())
    }
    pub fn now_s(&self) -> u64 {
        self.now_s
    }
    /// The last log record applied.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }
    pub fn initialised(&self) -> bool {
        self.initialised
    }
    pub fn job(&self, id: u64) -> Option<&JobRecord> {
        let i = id.checked_sub(1)? as usize;
        self.jobs.get(i).filter(|j| !j.refused)
    }
    /// Jobs, newest first, below `before` (an id).
    pub fn jobs_before(&self, before: u64) -> impl Iterator<Item = &JobRecord> {
        let end = (before.saturating_sub(1) as usize).min(self.jobs.len());
        self.jobs[..end].iter().rev().filter(|j| !j.refused)
    }
    /// Why the engine refused a submission at admission.
    pub fn refused_reason(&self, id: u64) -> Option<String> {
        let i = id.checked_sub(1)? as usize;
        self.jobs
            .get(i)
            .filter(|j| j.refused)
            .and_then(|j| j.reason.clone())
    }
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }
    pub fn next_job_id(&self) -> u64 {
        self.jobs.len() as u64 + 1
    }
    pub fn token(&self, hash: &[u8; 32]) -> Option<&TokenRecord> {
        self.tokens.get(hash).filter(|t| !t.revoked)
    }
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.token_by_id.values().filter_map(|h| self.tokens.get(h))
    }
    pub fn token_count(&self) -> usize {
        self.token_by_id.len()
    }
    /// The SHA-256 digests of the admin tokens not revoked: a replica that follows (and so
    /// has no API of its own) checks a request's token against them.
    pub fn admin_token_digests(&self) -> std::collections::HashSet<[u8; 32]> {
        self.tokens
            .iter()
            .filter(|(_, t)| !t.revoked && !t.agent && t.tenant.is_none())
            .map(|(h, _)| *h)
            .collect()
    }
    pub fn tenant(&self, name: &str) -> Option<&TenantSpec> {
        self.cluster.tenant.iter().find(|t| t.name == name)
    }
    pub fn tenant_arc(&self, name: &str) -> Option<Arc<str>> {
        self.tenant_names.get(name).cloned()
    }
    pub fn pending_by_tenant(&self) -> &BTreeMap<Arc<str>, u64> {
        &self.pending_by_tenant
    }
    /// Bytes of command, env and workdir over the tenant's pending and running jobs.
    pub fn stored_bytes(&self, tenant: &str) -> u64 {
        self.stored_by_tenant.get(tenant).copied().unwrap_or(0)
    }
    pub fn idempotent(&self, tenant: &str, key: &str) -> Option<&(String, u64)> {
        // Allocation per lookup is fine: submissions with keys are the minority.
        self.idempotency.get(&(Arc::from(tenant), key.to_string()))
    }
    /// Whether a tick could do anything: something changed, or work is pending or running.
    pub fn needs_tick(&self) -> bool {
        self.dirty || self.engine.pending_count() > 0 || self.running > 0
    }

    // ---- checks made before an entry is written -----------------------------------------

    /// Writes model names as the catalog does (`h100` → `H100`): names are matched without
    /// regard to case, and the log keeps the catalog's spelling.
    pub fn canonical_models(&self, spec: &mut JobSpec) {
        for g in &mut spec.groups {
            for m in &mut g.models {
                if let Some(c) = self.catalog.canonical(m)
                    && c != m
                {
                    *m = c.to_string();
                }
            }
        }
    }

    /// What can be checked of a submission without changing anything; the engine's own
    /// admission (fit, quota, share cap) follows when it is applied.
    pub fn check_submit(&self, tenant: &str, spec: &JobSpec) -> Result<(), Refusal> {
        spec.validate().map_err(|e| Refusal::spec("", e))?;
        if self.tenant(tenant).is_none() {
            return Err(Refusal::invalid(
                "tenant",
                format!("tenant {tenant:?} is not known"),
            ));
        }
        for (i, g) in spec.groups.iter().enumerate() {
            for (j, m) in g.models.iter().enumerate() {
                if self.catalog.matching(m).is_empty() {
                    let hint = match self.catalog.suggest(m) {
                        Some(s) => format!("did you mean {s:?}? "),
                        None => String::new(),
                    };
                    return Err(Refusal::invalid(
                        format!("groups[{i}].models[{j}]"),
                        format!(
                            "{m:?} is neither a model nor a class in the accelerator catalog ({hint}`gosok catalog` or GET /v1/catalog lists them)"
                        ),
                    ));
                }
            }
        }
        for (j, s) in spec.constraints.sites.iter().enumerate() {
            if !self.cluster.site.iter().any(|x| x.name == *s) {
                return Err(Refusal::invalid(
                    format!("constraints.sites[{j}]"),
                    format!("site {s:?} is not known"),
                ));
            }
        }
        Ok(())
    }

    /// Builds the engine a topology would give, to refuse a bad one before it is written.
    pub fn check_topology(&self, cluster: &ClusterSpec) -> Result<(), Refusal> {
        // Nodes that only join existing racks were checked by resolving the cluster, and are
        // added in place: no engine needs building to know they will apply.
        if self.added_nodes(cluster).is_some() {
            return Ok(());
        }
        build_engine(
            &self.catalog,
            cluster,
            &self.node_states,
            &self.cfg,
            self.now_s,
        )
        .map(|_| ())
    }

    // ---- applying ---------------------------------------------------------------------

    /// Applies one entry. On `Err` nothing changed (and the entry must not be written).
    pub fn apply(&mut self, seq: u64, at_ms: u64, entry: &Entry) -> Result<Applied, Refusal> {
        let mut out = Applied::default();
        match entry {
            Entry::Init { now_s, admin_token } => {
                if self.initialised {
                    return Err(Refusal::conflict(None, "the store is already initialised"));
                }
                self.advance(*now_s, &mut out)?;
                self.add_token(admin_token, at_ms)?;
                self.initialised = true;
            }
            Entry::Submit {
                job,
                tenant,
                spec,
                command,
                env,
                workdir,
                idempotency,
                control,
                ..
            } => {
                return self.submit(
                    seq,
                    at_ms,
                    *job,
                    tenant.clone(),
                    (**spec).clone(),
                    RunSpec::of(command.clone(), env.clone(), workdir.clone()),
                    idempotency.clone(),
                    control.as_deref().unwrap_or(&JobControl::default()),
                );
            }
            Entry::Hold { job, by } => self.hold_job(at_ms, *job, by)?,
            Entry::Release { job, by } => self.release_job(at_ms, *job, by, &mut out)?,
            Entry::Requeue { job, hold, by } => {
                self.requeue_job(at_ms, *job, *hold, by, &mut out)?
            }
            Entry::Cancel { job, .. } => {
                let Some(rec) = self.job(*job) else {
                    return Err(Refusal::not_found(format!("job {job} is not known")));
                };
                if rec.state.is_terminal() {
                    return Err(Refusal::conflict(
                        None,
                        format!("job {job} has already ended ({})", state_name(rec.state)),
                    ));
                }
                let decisions = self
                    .engine
                    .apply(Event::Cancel { id: JobId(*job) })
                    .map_err(|e| Refusal::invalid("job", e.to_string()))?;
                self.dirty = true;
                self.decide(at_ms, decisions, &mut out);
            }
            Entry::Tick { now_s } => {
                let now = (*now_s).max(self.now_s);
                self.advance(now, &mut out)?;
                self.open_gates(at_ms, &mut out);
                let t = Instant::now();
                let decisions = self.engine.schedule();
                out.pass = Some(t.elapsed());
                self.dirty = false;
                self.decide(at_ms, decisions, &mut out);
            }
            Entry::NodeState { node, state, .. } => {
                if !self.node_states.contains_key(node) {
                    return Err(Refusal::not_found(format!("node {node:?} is not known")));
                }
                let decisions = self
                    .engine
                    .apply(Event::NodeState {
                        node: node.clone(),
                        state: *state,
                    })
                    .map_err(|e| Refusal::invalid("node", e.to_string()))?;
                self.node_states.insert(node.clone(), *state);
                self.dirty = true;
                self.decide(at_ms, decisions, &mut out);
            }
            Entry::SitePowerBudget {
                site,
                power_budget_mw,
                ..
            } => {
                let Some(i) = self.cluster.site.iter().position(|s| s.name == *site) else {
                    return Err(Refusal::not_found(format!("site {site:?} is not known")));
                };
                gosok_model::error::check_f64("power_budget_mw", *power_budget_mw, -1e-9, 10_000.0)
                    .map_err(|e| Refusal::spec("", e))?;
                let decisions = self
                    .engine
                    .apply(Event::SitePowerBudget {
                        site: site.clone(),
                        power_budget_mw: *power_budget_mw,
                    })
                    .map_err(|e| Refusal::invalid("power_budget_mw", e.to_string()))?;
                self.cluster.site[i].power_budget_mw = *power_budget_mw;
                self.dirty = true;
                self.decide(at_ms, decisions, &mut out);
            }
            Entry::RackPowerCap {
                rack, power_cap_kw, ..
            } => {
                let Some(i) = self.cluster.rack.iter().position(|r| r.name == *rack) else {
                    return Err(Refusal::not_found(format!("rack {rack:?} is not known")));
                };
                gosok_model::error::check_f64("power_cap_kw", *power_cap_kw, -1e-9, 1_000_000.0)
                    .map_err(|e| Refusal::spec("", e))?;
                let decisions = self
                    .engine
                    .apply(Event::RackPowerCap {
                        rack: rack.clone(),
                        power_cap_kw: *power_cap_kw,
                    })
                    .map_err(|e| Refusal::invalid("power_cap_kw", e.to_string()))?;
                self.cluster.rack[i].power_cap_kw = *power_cap_kw;
                self.dirty = true;
                self.decide(at_ms, decisions, &mut out);
            }
            Entry::Tenant { spec, .. } => {
                spec.validate(&self.catalog)
                    .map_err(|e| Refusal::spec("", e))?;
                let decisions = self
                    .engine
                    .apply(Event::UpsertTenant {
                        tenant: spec.clone(),
                    })
                    .map_err(|e| Refusal::invalid("tenant", e.to_string()))?;
                match self.cluster.tenant.iter_mut().find(|t| t.name == spec.name) {
                    Some(t) => *t = spec.clone(),
                    None => self.cluster.tenant.push(spec.clone()),
                }
                self.tenant_names
                    .entry(spec.name.clone())
                    .or_insert_with(|| spec.name.as_str().into());
                self.dirty = true;
                self.decide(at_ms, decisions, &mut out);
            }
            Entry::Topology { cluster, .. } => {
                // Tenants are never removed: those the file leaves out are kept.
                let mut cluster = cluster.clone();
                for t in &self.cluster.tenant {
                    if !cluster.tenant.iter().any(|x| x.name == t.name) {
                        cluster.tenant.push(t.clone());
                    }
                }
                match self.added_nodes(&cluster) {
                    Some(added) => self.add_nodes(cluster, added)?,
                    None => self.rebuild(at_ms, cluster, None, &mut out)?,
                }
            }
            Entry::CatalogAdd { model, .. } => {
                let mut catalog = self.catalog.clone();
                catalog
                    .add(model.clone())
                    .map_err(|e| Refusal::spec("", e))?;
                let cluster = self.cluster.clone();
                self.rebuild(at_ms, cluster, Some(catalog), &mut out)?;
                self.added_models.push(model.clone());
            }
            Entry::TokenCreate { token, .. } => self.add_token(token, at_ms)?,
            Entry::TokenRevoke { id, .. } => {
                let Some(h) = self.token_by_id.get(id) else {
                    return Err(Refusal::not_found(format!("token {id:?} is not known")));
                };
                if let Some(t) = self.tokens.get_mut(h) {
                    t.revoked = true;
                }
            }
            Entry::AgentRegister {
                agent,
                address,
                nodes,
                ..
            } => self.agent_register(at_ms, agent, address, nodes, &mut out)?,
            Entry::NodeLost { node, epoch } => self.node_lost(at_ms, node, *epoch, &mut out)?,
            Entry::TaskEnded {
                job,
                attempt,
                task,
                node,
                epoch,
                status,
                detail,
                energy_mj,
                limit,
                ..
            } => self.task_ended(
                at_ms, *job, *attempt, *task, node, *epoch, *status, detail, *energy_mj, *limit,
                &mut out,
            )?,
            // A note for the audit log: the repair itself was made to the store.
            Entry::Recovered { .. } => {}
            Entry::Account { change, .. } => self.account(at_ms, change, &mut out)?,
        }
        self.accounts.settle(&self.meter, &self.catalog);
        self.seq = seq;
        Ok(out)
    }

    /// [`Core::apply`] for an entry the caller owns: a submission's spec is moved, not copied
    /// (what replaying a long log spends most of its time on).
    pub fn apply_owned(&mut self, seq: u64, at_ms: u64, entry: Entry) -> Result<Applied, Refusal> {
        match entry {
            Entry::Submit {
                job,
                tenant,
                spec,
                command,
                env,
                workdir,
                idempotency,
                control,
                ..
            } => self.submit(
                seq,
                at_ms,
                job,
                tenant,
                *spec,
                RunSpec::of(command, env, workdir),
                idempotency,
                control.as_deref().unwrap_or(&JobControl::default()),
            ),
            other => self.apply(seq, at_ms, &other),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        seq: u64,
        at_ms: u64,
        job: u64,
        tenant: String,
        spec: JobSpec,
        run: Option<Box<RunSpec>>,
        idempotency: Option<crate::entry::Idempotency>,
        control: &JobControl,
    ) -> Result<Applied, Refusal> {
        let mut out = Applied::default();
        // An array is one submission of many jobs: ids `job..job + n`, one per index.
        let indices: &[u32] = control.array.as_ref().map_or(&[], |a| a.indices());
        if job != self.next_job_id() {
            return Err(Refusal::conflict(
                Some("job"),
                format!("job id {job} is not the next one ({})", self.next_job_id()),
            ));
        }
        let Some(t) = self.tenant_arc(&tenant) else {
            return Err(Refusal::invalid(
                "tenant",
                format!("tenant {tenant:?} is not known"),
            ));
        };
        let name: Option<Box<str>> = spec.name.as_deref().map(Into::into);
        let accel_milli = spec.total_accelerator_milli();
        let need_milli_s = Accounts::need_milli_s(&spec, self.cfg.default_runtime_s);
        let class = spec.priority.unwrap_or_else(|| {
            self.tenant(&tenant)
                .map(|t| t.default_priority)
                .unwrap_or_default()
        });
        let mut admitted = Vec::new();
        let n = indices.len().max(1);
        let mut decisions = Vec::new();
        let mut spec = Some(spec);
        for k in 0..n {
            let id = job + k as u64;
            // The last task takes the spec itself: a plain submission copies nothing.
            let spec = if k + 1 == n {
                spec.take()
            } else {
                spec.clone()
            };
            let d = self
                .engine
                .apply(Event::Submit {
                    id: JobId(id),
                    tenant: tenant.clone(),
                    spec: spec.expect("taken only by the last task"),
                })
                .map_err(|e| Refusal::invalid("job", e.to_string()))?;
            let refused = d
                .iter()
                .any(|d| matches!(d, Decision::Reject { job: j, .. } if j.0 == id));
            decisions.extend(d);
            let run = match indices.get(k) {
                None => run.clone(),
                Some(&index) => {
                    let mut r = run.clone().unwrap_or_else(|| {
                        Box::new(RunSpec {
                            command: Vec::new(),
                            env: BTreeMap::new(),
                            workdir: None,
                        })
                    });
                    r.env
                        .insert("GOSOK_ARRAY_TASK_ID".into(), index.to_string());
                    r.env.insert("GOSOK_ARRAY_JOB_ID".into(), job.to_string());
                    Some(r)
                }
            };
            self.push_job(seq, at_ms, id, &t, name.clone(), accel_milli, refused, run);
            if !refused {
                admitted.push(id);
            }
        }
        self.counters.submitted += 1;
        if let Some(k) = idempotency {
            self.idempotency
                .insert((t.clone(), k.key), (k.request_sha256, job));
        }
        if !control.is_default() {
            let d = self.gate_new_jobs(job, control)?;
            decisions.extend(d);
        }
        self.dirty = true;
        self.decide(at_ms, decisions, &mut out);
        for id in admitted {
            self.accounts.admitted(id, &t, need_milli_s, class);
        }
        self.accounts.settle(&self.meter, &self.catalog);
        self.seq = seq;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn push_job(
        &mut self,
        seq: u64,
        at_ms: u64,
        job: u64,
        t: &Arc<str>,
        name: Option<Box<str>>,
        accel_milli: u64,
        refused: bool,
        run: Option<Box<RunSpec>>,
    ) {
        self.jobs.push(JobRecord {
            id: job,
            tenant: t.clone(),
            name,
            submit_seq: seq,
            submitted_ms: at_ms,
            state: JobState::Pending,
            // Refused at admission: the submitter is told at once (422).
            refused,
            accel_milli,
            attempt: 0,
            placement: Vec::new(),
            history: Vec::new(),
            ended_ms: None,
            reason: None,
            run,
            last_run: Vec::new(),
            last_run_attempt: 0,
            gate: None,
        });
        *self.pending_by_tenant.entry(t.clone()).or_default() += 1;
        if let Some(r) = &self.jobs.last().and_then(|j| j.run.as_deref()) {
            *self.stored_by_tenant.entry(t.clone()).or_default() += r.bytes();
        }
    }

    fn account(
        &mut self,
        at_ms: u64,
        change: &AccountChange,
        out: &mut Applied,
    ) -> Result<(), Refusal> {
        self.check_account(change)?;
        if let AccountChange::Exhausted {
            action: OnExhaustion::Preempt,
            jobs,
            ..
        } = change
        {
            for &job in jobs {
                if self.job(job).is_none_or(|j| j.state != JobState::Running) {
                    continue;
                }
                let decisions = self
                    .engine
                    .apply(Event::Cancel { id: JobId(job) })
                    .map_err(|e| Refusal::invalid("jobs", e.to_string()))?;
                if let Some(j) = self.jobs.get_mut((job - 1) as usize) {
                    j.history.push(HistoryItem {
                        at_ms,
                        event: "stopped",
                        detail: "its tenant's allocations ran out (on_exhaustion = preempt)".into(),
                    });
                }
                self.dirty = true;
                self.decide(at_ms, decisions, out);
            }
        }
        self.accounts.apply(change, self.engine.now_s());
        Ok(())
    }

    fn add_token(&mut self, t: &TokenEntry, at_ms: u64) -> Result<(), Refusal> {
        let Some(h) = parse_hash(&t.sha256) else {
            return Err(Refusal::invalid("sha256", "not a SHA-256 digest in hex"));
        };
        if self.token_by_id.contains_key(&t.id) || self.tokens.contains_key(&h) {
            return Err(Refusal::conflict(Some("id"), "token exists"));
        }
        let tenant = match &t.tenant {
            None => None,
            Some(name) => Some(
                self.tenant_arc(name)
                    .ok_or_else(|| Refusal::not_found(format!("tenant {name:?} is not known")))?,
            ),
        };
        self.tokens.insert(
            h,
            TokenRecord {
                id: t.id.clone(),
                tenant,
                agent: t.agent,
                created_ms: at_ms,
                revoked: false,
            },
        );
        self.token_by_id.insert(t.id.clone(), h);
        Ok(())
    }

    fn advance(&mut self, now_s: u64, out: &mut Applied) -> Result<(), Refusal> {
        let now = now_s.max(self.now_s);
        let d = self
            .engine
            .apply(Event::AdvanceTime { now_s: now })
            .map_err(|e| Refusal::invalid("now_s", e.to_string()))?;
        self.now_s = now;
        let at_ms = now.saturating_mul(1000);
        self.decide(at_ms, d, out);
        Ok(())
    }

    /// The nodes `new` adds, when adding them is all it changes (sites, racks, tenants and
    /// every existing node as they are): those join the engine in place, and running work is
    /// untouched. None: anything else changed, and the engine must be rebuilt.
    fn added_nodes(&self, new: &ClusterSpec) -> Option<Vec<gosok_model::NodeSpec>> {
        let old = &self.cluster;
        if new.site != old.site || new.rack != old.rack || new.tenant != old.tenant {
            return None;
        }
        let old_nodes = old.resolve(&self.catalog).ok()?;
        let new_nodes = new.resolve(&self.catalog).ok()?;
        let machine = |n: &gosok_model::ResolvedNode| {
            let mut s = n.spec.clone();
            s.name.clear();
            s.count = None;
            // The declared state only matters when a node is first added.
            s.state = NodeState::Down;
            (n.rack, s)
        };
        let by_name: BTreeMap<&str, _> = new_nodes
            .iter()
            .map(|n| (n.name.as_str(), machine(n)))
            .collect();
        if old_nodes
            .iter()
            .any(|n| by_name.get(n.name.as_str()) != Some(&machine(n)))
        {
            return None;
        }
        let added: Vec<gosok_model::NodeSpec> = new_nodes
            .into_iter()
            .filter(|n| !self.node_states.contains_key(&n.name))
            .map(|n| gosok_model::NodeSpec {
                name: n.name,
                count: None,
                ..n.spec
            })
            .collect();
        (!added.is_empty()).then_some(added)
    }

    fn add_nodes(
        &mut self,
        cluster: ClusterSpec,
        added: Vec<gosok_model::NodeSpec>,
    ) -> Result<(), Refusal> {
        for node in added {
            let (name, state) = (node.name.clone(), node.state);
            self.engine
                .apply(Event::AddNode { node })
                .map_err(|e| Refusal::invalid("node", e.to_string()))?;
            self.node_states.insert(name, state);
        }
        self.cluster = cluster;
        self.dirty = true;
        Ok(())
    }

    /// Replaces the engine with one built on `cluster` (and `catalog`), then submits every
    /// job that may still run again, oldest first. The engine cannot add or remove nodes in
    /// place, so running jobs go back to the queue (their history says so) and the next pass
    /// places them again.
    fn rebuild(
        &mut self,
        at_ms: u64,
        cluster: ClusterSpec,
        catalog: Option<Catalog>,
        out: &mut Applied,
    ) -> Result<(), Refusal> {
        let catalog = catalog.unwrap_or_else(|| self.catalog.clone());
        let (mut engine, states) =
            build_engine(&catalog, &cluster, &self.node_states, &self.cfg, self.now_s)?;
        let mut decisions = Vec::new();
        for j in &self.jobs {
            if j.state.is_terminal() || j.refused {
                continue;
            }
            let Some(spec) = (self.specs)(j.submit_seq) else {
                decisions.push(Decision::Reject {
                    job: JobId(j.id),
                    reason: "its submission cannot be read back from the log".into(),
                });
                continue;
            };
            match engine.apply(Event::Submit {
                id: JobId(j.id),
                tenant: j.tenant.to_string(),
                spec,
            }) {
                Ok(d) => decisions.extend(d),
                Err(e) => decisions.push(Decision::Reject {
                    job: JobId(j.id),
                    reason: e.to_string(),
                }),
            }
        }
        self.engine = engine;
        self.catalog = catalog;
        self.node_states = states;
        self.cluster = cluster;
        for t in &self.cluster.tenant {
            self.tenant_names
                .entry(t.name.clone())
                .or_insert_with(|| t.name.as_str().into());
        }
        // Running jobs are pending again in the new engine.
        let rerun: Vec<u64> = self
            .jobs
            .iter()
            .filter(|j| j.state == JobState::Running)
            .map(|j| j.id)
            .collect();
        for id in rerun {
            self.set_state(id, JobState::Pending, at_ms);
            let j = &mut self.jobs[(id - 1) as usize];
            j.keep_last_run();
            j.history.push(HistoryItem {
                at_ms,
                event: "requeued",
                detail: "the topology changed; the job is placed again".into(),
            });
        }
        self.hold_waiting_again();
        self.dirty = true;
        self.decide(at_ms, decisions, out);
        Ok(())
    }

    fn set_state(&mut self, id: u64, state: JobState, at_ms: u64) {
        let Some(j) = id
            .checked_sub(1)
            .and_then(|i| self.jobs.get_mut(i as usize))
        else {
            return;
        };
        let old = j.state;
        if old == state {
            return;
        }
        j.state = state;
        if old == JobState::Pending
            && let Some(n) = self.pending_by_tenant.get_mut(&j.tenant)
        {
            *n = n.saturating_sub(1);
        }
        if state == JobState::Pending {
            *self.pending_by_tenant.entry(j.tenant.clone()).or_default() += 1;
        }
        if old == JobState::Running {
            self.running = self.running.saturating_sub(1);
            self.running_jobs.remove(&id);
            // `decide` closed it already with how it ended; a rebuild lands here.
            let end = match state {
                JobState::Succeeded => AttemptEnd::Succeeded,
                JobState::Failed => AttemptEnd::Failed,
                JobState::Cancelled => AttemptEnd::Cancelled,
                JobState::Pending => AttemptEnd::Requeued,
                _ => AttemptEnd::Stopped,
            };
            self.meter.close(id, self.engine.now_s(), end);
        }
        if state == JobState::Running {
            self.running += 1;
            self.running_jobs.insert(id);
        }
        if state.is_terminal() && !old.is_terminal() {
            self.accounts.ended(id);
            // A job that ended may open the gates of jobs that depend on it; its own gate
            // is closed for good.
            self.gates.dirty = true;
            self.gates.waiting.remove(&id);
            j.ended_ms = Some(at_ms);
            j.keep_last_run();
            // An ended job runs nothing more: what it would run is only in the log now.
            if let Some(r) = j.run.take()
                && let Some(n) = self.stored_by_tenant.get_mut(&j.tenant)
            {
                *n = n.saturating_sub(r.bytes());
            }
        }
    }

    /// Turns the engine's decisions into job records and history.
    fn decide(&mut self, at_ms: u64, decisions: Vec<Decision>, out: &mut Applied) {
        for d in &decisions {
            let (kind, job) = match d {
                Decision::Start { job, .. } => ("start", Some(job.0)),
                Decision::Preempt { job, .. } => ("preempt", Some(job.0)),
                Decision::Requeue { job, .. } => ("requeue", Some(job.0)),
                Decision::Stop { job, .. } => ("stop", Some(job.0)),
                Decision::Reject { job, .. } => ("reject", Some(job.0)),
                Decision::Finish { job, .. } => ("finish", Some(job.0)),
                Decision::Shed { .. } => ("shed", None),
            };
            *self.counters.decisions.entry(kind).or_default() += 1;
            let Some(id) = job else { continue };
            let Some(j) = id
                .checked_sub(1)
                .and_then(|i| self.jobs.get_mut(i as usize))
            else {
                continue;
            };
            let mut push = |event: &'static str, detail: String| {
                j.history.push(HistoryItem {
                    at_ms,
                    event,
                    detail,
                })
            };
            let new_state = match d {
                Decision::Start { attempt, tasks, .. } => {
                    let mut nodes: Vec<&str> = tasks.iter().map(|t| &*t.node).collect();
                    nodes.dedup();
                    push(
                        "started",
                        format!("attempt {attempt} on {}", nodes.join(", ")),
                    );
                    j.attempt = *attempt;
                    j.placement = tasks.clone();
                    j.last_run.clear();
                    self.meter
                        .open(&self.engine, id, &j.tenant, *attempt, tasks);
                    Some(JobState::Running)
                }
                Decision::Preempt { reason, .. } => {
                    let by = match reason {
                        PreemptReason::Priority { by }
                        | PreemptReason::ShorterRemaining { by }
                        | PreemptReason::LeastAttained { by }
                        | PreemptReason::Reclaim { by } => by.0,
                        PreemptReason::Curtailment { .. } => 0,
                    };
                    self.meter
                        .close_by(id, self.engine.now_s(), AttemptEnd::Preempted, by);
                    push("preempted", preempt_words(reason));
                    j.keep_last_run();
                    Some(JobState::Pending)
                }
                Decision::Requeue { reason, retry, .. } => {
                    self.meter
                        .close(id, self.engine.now_s(), AttemptEnd::Requeued);
                    push("requeued", format!("{reason} (retry {retry})"));
                    j.keep_last_run();
                    Some(JobState::Pending)
                }
                Decision::Stop { reason, .. } => {
                    push("stopped", reason.clone());
                    None
                }
                Decision::Reject { reason, .. } => {
                    push("rejected", reason.clone());
                    j.reason = Some(reason.clone());
                    Some(JobState::Rejected)
                }
                Decision::Finish { state, reason, .. } => {
                    push(state_name(*state), reason.clone());
                    j.reason = Some(reason.clone());
                    Some(*state)
                }
                Decision::Shed { .. } => None,
            };
            if let Some(s) = new_state {
                self.set_state(id, s, at_ms);
            }
        }
        out.decisions.extend(decisions);
    }
}

/// A preemption in words: "preempted by job 25 (priority)".
fn preempt_words(r: &gosok_engine::PreemptReason) -> String {
    use gosok_engine::PreemptReason as P;
    match r {
        P::Priority { by } => format!("preempted by job {by} (priority)"),
        P::ShorterRemaining { by } => format!("preempted by job {by} (shorter remaining time)"),
        P::LeastAttained { by } => format!("preempted by job {by} (least attained service)"),
        P::Reclaim { by } => format!("preempted by job {by} (its tenant reclaimed its guarantee)"),
        P::Curtailment { site } => format!("preempted: site {site}'s power budget was lowered"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::entry::Idempotency;

    pub(crate) const CLUSTER: &str = r#"
[[site]]
name = "pohang"
region = "gyeongbuk"
jurisdiction = "KR"
power_budget_mw = 20.0
pue = 1.25

[[rack]]
name = "ph-r1"
site = "pohang"
power_cap_kw = 120.0

[[node]]
name = "ph-r1-n"
rack = "ph-r1"
count = 2
cpu_cores = 112
mem_mib = 2097152
accelerator = "H100"
accelerators = 8
state = "up"

[[tenant]]
name = "lab"
tier = "academic"
"#;

    pub(crate) fn core() -> Core {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "groups": [{"replicas": 1, "accelerators": 8, "models": ["H100"]}]
        }))
        .unwrap();
        let mut c = Core::new(
            EngineConfig::default(),
            Box::new(move |_| Some(spec.clone())),
        )
        .unwrap();
        let tok = TokenEntry {
            id: "admin".into(),
            tenant: None,
            agent: false,
            sha256: "00".repeat(32),
        };
        c.apply(
            1,
            1000,
            &Entry::Init {
                now_s: 1000,
                admin_token: tok,
            },
        )
        .unwrap();
        let cluster = ClusterSpec::from_toml(CLUSTER).unwrap();
        c.apply(
            2,
            1000,
            &Entry::Topology {
                cluster,
                by: "admin".into(),
            },
        )
        .unwrap();
        c
    }

    fn submit(c: &mut Core, seq: u64, accel: u64) -> Result<Applied, Refusal> {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "groups": [{"replicas": 1, "accelerators": accel, "models": ["H100"]}]
        }))
        .unwrap();
        let job = c.next_job_id();
        c.apply(
            seq,
            2000,
            &Entry::Submit {
                job,
                tenant: "lab".into(),
                spec: Box::new(spec),
                command: vec![],
                env: Default::default(),
                workdir: None,
                idempotency: Some(Idempotency {
                    key: format!("k{job}"),
                    request_sha256: "x".into(),
                }),
                control: None,
                by: "admin".into(),
            },
        )
    }

    #[test]
    fn jobs_start_on_a_tick_and_cancel_ends_them() {
        let mut c = core();
        submit(&mut c, 3, 8).unwrap();
        submit(&mut c, 4, 8).unwrap();
        submit(&mut c, 5, 8).unwrap();
        assert_eq!(c.pending_by_tenant()["lab"], 3);
        let a = c.apply(6, 3000, &Entry::Tick { now_s: 1001 }).unwrap();
        assert!(a.pass.is_some());
        assert_eq!(c.job(1).unwrap().state, JobState::Running);
        assert_eq!(c.job(2).unwrap().state, JobState::Running);
        assert_eq!(c.job(3).unwrap().state, JobState::Pending);
        assert_eq!(c.job(1).unwrap().placement.len(), 1);
        c.apply(
            7,
            4000,
            &Entry::Cancel {
                job: 1,
                by: "admin".into(),
            },
        )
        .unwrap();
        assert_eq!(c.job(1).unwrap().state, JobState::Cancelled);
        let again = c
            .apply(
                8,
                4000,
                &Entry::Cancel {
                    job: 1,
                    by: "admin".into(),
                },
            )
            .unwrap_err();
        assert_eq!(again.kind, RefusalKind::Conflict);
        c.apply(9, 5000, &Entry::Tick { now_s: 1002 }).unwrap();
        assert_eq!(c.job(3).unwrap().state, JobState::Running);
        assert_eq!(c.pending_by_tenant()["lab"], 0);
        assert_eq!(c.idempotent("lab", "k2").unwrap().1, 2);
    }

    #[test]
    fn an_impossible_job_is_refused_and_not_listed() {
        let mut c = core();
        let a = submit(&mut c, 3, 9).unwrap();
        assert!(matches!(a.decisions[0], Decision::Reject { .. }));
        assert!(c.job(1).is_none());
        assert_eq!(c.jobs_before(u64::MAX).count(), 0);
        // The next id moves on all the same.
        assert_eq!(c.next_job_id(), 2);
    }

    #[test]
    fn added_nodes_join_in_place_and_a_structural_change_requeues() {
        let mut c = core();
        submit(&mut c, 3, 8).unwrap();
        c.apply(4, 3000, &Entry::Tick { now_s: 1001 }).unwrap();
        assert_eq!(c.job(1).unwrap().state, JobState::Running);
        let mut cluster = ClusterSpec::from_toml(CLUSTER).unwrap();
        cluster.tenant.clear();
        cluster.node[0].count = Some(3);
        c.apply(
            5,
            4000,
            &Entry::Topology {
                cluster,
                by: "admin".into(),
            },
        )
        .unwrap();
        // Adding a node is done in place: the running job is untouched.
        assert_eq!(c.job(1).unwrap().state, JobState::Running);
        assert!(c.tenant("lab").is_some());
        assert_eq!(c.node_states().len(), 3);
        assert!(
            c.engine()
                .cluster()
                .node_by_name
                .contains_key("ph-r1-n-002")
        );
        // Changing a node's machine is structural: the engine is rebuilt, the job requeued.
        let mut cluster = c.cluster().clone();
        cluster.node[0].cpu_cores = 96;
        c.apply(
            6,
            4500,
            &Entry::Topology {
                cluster,
                by: "admin".into(),
            },
        )
        .unwrap();
        assert_eq!(c.job(1).unwrap().state, JobState::Pending);
        c.apply(7, 5000, &Entry::Tick { now_s: 1002 }).unwrap();
        assert_eq!(c.job(1).unwrap().state, JobState::Running);
    }
}

#[cfg(test)]
mod meter_tests;

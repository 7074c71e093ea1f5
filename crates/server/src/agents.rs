//! The agent routes (`/v1/agent/*`, `docs/AGENTS.md`) and what the controller keeps about
//! agents in memory only: leases, the agents' log servers, and the version of the desired
//! sets that long polls wait on.
//!
//! Epochs are in the log (they must survive a restart to fence stale agents); leases are
//! not (a lease is a promise about the next seconds, so after a restart every claimed node
//! simply gets a fresh one).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gosok_model::agent::{
    MAX_AGENT_NODES, RegisterNode, RegisterRequest, RegisterResponse, ReportRequest,
    ReportResponse, ReportResult, SyncRequest, SyncResponse,
};
use gosok_model::error::check_name;
use gosok_model::{NodeSpec, NodeState};
use serde_json::json;
use tokio::sync::watch;

use crate::App;
use crate::api::{body, parse_json, principal, query};
use crate::auth::{self, Principal};
use crate::core::Core;
use crate::entry::{Entry, NodeClaim};
use crate::error::ApiError;

type AppState = std::sync::Arc<App>;
type Result<T> = std::result::Result<T, ApiError>;

/// An agent's log server, as it last told us.
#[derive(Debug, Clone)]
struct LogServer {
    url: String,
    secret: String,
}

pub struct Agents {
    /// Node → (epoch, lease deadline).
    leases: Mutex<HashMap<String, (u64, Instant)>>,
    /// Agent id → its log server.
    logs: Mutex<HashMap<String, LogServer>>,
    /// Bumped whenever a desired set may have changed.
    version: watch::Sender<u64>,
    pub lease: Duration,
    /// Added to the lease before a silent node is lost (`agent_lease_margin_ms`).
    pub margin: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Agents {
    /// Every node claimed and up gets a fresh lease from now.
    pub fn new(core: &Core, lease: Duration, margin: Duration) -> Agents {
        let until = Instant::now() + lease + margin;
        let leases = core
            .node_agents()
            .iter()
            .filter(|(n, a)| core.epoch_valid(n, a.epoch))
            .map(|(n, a)| (n.clone(), (a.epoch, until)))
            .collect();
        Agents {
            leases: Mutex::new(leases),
            logs: Mutex::new(HashMap::new()),
            version: watch::Sender::new(1),
            lease,
            margin,
        }
    }

    /// Something that may change a desired set was applied: wake the long polls.
    pub fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// The controller counts from when it received the call (the agent from when it sent
    /// it, so the agent's deadline always comes first), plus the margin.
    fn renew(&self, nodes: impl Iterator<Item = (String, u64)>) {
        let until = Instant::now() + self.lease + self.margin;
        let mut l = lock(&self.leases);
        for (n, e) in nodes {
            l.insert(n, (e, until));
        }
    }

    /// Nodes whose lease has run out, with the epoch it was for.
    pub fn expired(&self) -> Vec<(String, u64)> {
        let now = Instant::now();
        let mut l = lock(&self.leases);
        let out: Vec<(String, u64)> = l
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(n, (e, _))| (n.clone(), *e))
            .collect();
        for (n, _) in &out {
            l.remove(n);
        }
        out
    }

    fn set_logs(&self, agent: &str, url: &str, secret: &str) {
        lock(&self.logs).insert(
            agent.to_string(),
            LogServer {
                url: url.to_string(),
                secret: secret.to_string(),
            },
        );
    }

    fn logs_of(&self, agent: &str) -> Option<LogServer> {
        lock(&self.logs).get(agent).cloned()
    }
}

/// The caller of an agent route: an agent token (or an admin, for debugging).
fn agent_principal(app: &App, headers: &HeaderMap) -> Result<Principal> {
    let p = auth::authenticate(&app.core(), headers)?;
    match p {
        Principal::Agent { .. } | Principal::Admin { .. } => Ok(p),
        Principal::Tenant { .. } => Err(ApiError::forbidden(
            "this route is for node agents (an agent token: POST /v1/agent-tokens)",
        )),
    }
}

/// The agent identity a caller acts as: an agent token as the identity it was issued for
/// (its token id), whatever the body says; an admin (for debugging) as the body's `agent`.
fn identity(p: &Principal, body_agent: &str) -> String {
    match p {
        Principal::Agent { token } => token.clone(),
        _ => body_agent.to_string(),
    }
}

fn check_text(field: &str, v: &str, max: usize) -> Result<()> {
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("must be 1 to {max} bytes of text without control characters"),
        ));
    }
    Ok(())
}

fn check_logs(url: &str, secret: &str) -> Result<()> {
    check_text("logs_url", url, 1024)?;
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(ApiError::invalid(
            "logs_url",
            "must be an http:// or https:// URL",
        ));
    }
    check_text("logs_secret", secret, 256)
}

fn check_register(r: &RegisterRequest) -> Result<()> {
    check_text("agent", &r.agent, 128)?;
    check_text("address", &r.address, 255)?;
    check_logs(&r.logs_url, &r.logs_secret)?;
    if r.nodes.is_empty() || r.nodes.len() > MAX_AGENT_NODES {
        return Err(ApiError::invalid(
            "nodes",
            format!("1 to {MAX_AGENT_NODES} nodes per call"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, n) in r.nodes.iter().enumerate() {
        let f = |x: &str| format!("nodes[{i}].{x}");
        check_name(&f("name"), &n.name).map_err(|e| ApiError::invalid(e.field, e.message))?;
        if !seen.insert(&n.name) {
            return Err(ApiError::invalid(
                f("name"),
                format!("node {:?} is named twice", n.name),
            ));
        }
        if n.labels.len() > 64 || n.labels.values().any(|v| v.len() > 256) {
            return Err(ApiError::invalid(
                f("labels"),
                "at most 64 labels, values at most 256 bytes",
            ));
        }
        for k in n.labels.keys() {
            gosok_model::error::check_label_key(&f("labels"), k)
                .map_err(|e| ApiError::invalid(e.field, e.message))?;
        }
        if n.taints.len() > gosok_model::job::MAX_SELECTOR_ENTRIES {
            return Err(ApiError::invalid(
                f("taints"),
                format!("at most {} taints", gosok_model::job::MAX_SELECTOR_ENTRIES),
            ));
        }
        for (j, t) in n.taints.iter().enumerate() {
            gosok_model::Taint::parse(&f(&format!("taints[{j}]")), t)
                .map_err(|e| ApiError::invalid(e.field, e.message))?;
        }
    }
    Ok(())
}

/// Checks a claimed node against its declaration; `Ok(None)` when it is declared and
/// matches, `Ok(Some(spec))` for an undeclared node that its rack lets join. `joining`: the
/// undeclared nodes of the same call before this one (they count against `max_nodes`).
fn claim(
    core: &Core,
    who: &str,
    admin: bool,
    i: usize,
    n: &RegisterNode,
    joining: &[NodeSpec],
) -> Result<Option<NodeSpec>> {
    let f = |x: &str| format!("nodes[{i}].{x}");
    let cluster = core.engine().cluster();
    let Some(&rack) = cluster.rack_by_name.get(&n.rack) else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_rack",
            format!(
                "rack {:?} is not declared (gosok apply declares racks)",
                n.rack
            ),
        )
        .field(f("rack")));
    };
    let site = &cluster.sites[cluster.racks[rack as usize].site as usize].name;
    if **site != *n.site {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_site",
            format!("rack {:?} is in site {site:?}, not {:?}", n.rack, n.site),
        )
        .field(f("site")));
    }
    let model = match &n.accelerator {
        Some(m) if n.accelerators > 0 => {
            let Some(id) = core.catalog().id(m) else {
                return Err(ApiError::invalid(
                    f("accelerator"),
                    format!("{m:?} is not in the accelerator catalog"),
                ));
            };
            Some(core.catalog().get(id).name.clone())
        }
        _ => None,
    };
    // A node another agent holds under a live epoch is not taken from it: only its own
    // agent (a restart) or an operator may claim it again.
    if let Some(a) = core.node_agent(&n.name)
        && a.agent != who
        && !admin
        && core.epoch_valid(&n.name, a.epoch)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "held_by_another_agent",
            format!(
                "node {:?} is held by another agent under a live lease; it can be claimed once that lease is lost, or by an operator",
                n.name
            ),
        )
        .field(f("name")));
    }
    let Some(&idx) = cluster.node_by_name.get(n.name.as_str()) else {
        let declared = core.cluster();
        let spec = declared.rack.iter().find(|r| r.name == n.rack);
        if !spec.is_some_and(|r| r.allow_undeclared_nodes) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "undeclared_node",
                format!(
                    "node {:?} is not declared and rack {:?} does not allow undeclared nodes (declare it with gosok apply, or set allow_undeclared_nodes on the rack)",
                    n.name, n.rack
                ),
            )
            .field(f("name")));
        }
        let spec_rack = spec.expect("checked above");
        let in_rack = cluster.nodes.iter().filter(|x| x.rack == rack).count() as u64
            + joining.iter().filter(|x| x.rack == n.rack).count() as u64;
        if let Some(max) = spec_rack.max_nodes
            && in_rack >= max
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "rack_full",
                format!(
                    "rack {:?} holds {in_rack} nodes, its declared max_nodes is {max}",
                    n.rack
                ),
            )
            .field(f("name")));
        }
        let base_power_w = 1500;
        let board_w = model
            .as_deref()
            .and_then(|m| core.catalog().id(m))
            .map_or(0, |id| u64::from(core.catalog().get(id).board_power_w));
        let peak_w = base_power_w + n.accelerators.saturating_mul(board_w);
        if peak_w as f64 > spec_rack.power_cap_kw * 1000.0 {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "beyond_rack_capacity",
                format!(
                    "node {:?} would draw up to {:.1} kW, more than rack {:?}'s whole power cap of {} kW",
                    n.name,
                    peak_w as f64 / 1000.0,
                    n.rack,
                    spec_rack.power_cap_kw
                ),
            )
            .field(f("accelerators")));
        }
        let spec = NodeSpec {
            name: n.name.clone(),
            rack: n.rack.clone(),
            count: None,
            cpu_cores: n.cpu_cores,
            mem_mib: n.mem_mib,
            accelerator: model,
            accelerators: n.accelerators,
            base_power_w,
            labels: n.labels.clone(),
            taints: n.taints.clone(),
            state: NodeState::Down,
        };
        return Ok(Some(spec));
    };
    let node = &cluster.nodes[idx as usize];
    let conflict = |field: &str, message: String| {
        Err(ApiError::new(StatusCode::CONFLICT, "declared_otherwise", message).field(f(field)))
    };
    if node.rack != rack {
        return conflict(
            "rack",
            format!(
                "node {:?} is declared in rack {:?}",
                n.name, cluster.racks[node.rack as usize].name
            ),
        );
    }
    let declared_model = node
        .model
        .map(|m| cluster.model_names[m as usize].to_string());
    if declared_model != model {
        return conflict(
            "accelerator",
            format!(
                "node {:?} is declared with {:?}, the agent found {:?}",
                n.name, declared_model, model
            ),
        );
    }
    if u64::from(node.devices()) != n.accelerators && model.is_some() {
        return conflict(
            "accelerators",
            format!(
                "node {:?} is declared with {} accelerators, the agent found {}",
                n.name,
                node.devices(),
                n.accelerators
            ),
        );
    }
    Ok(None)
}

pub async fn register(
    State(app): State<AppState>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = agent_principal(&app, &headers)?;
    let req: RegisterRequest = parse_json(&body(b)?)?;
    let who = identity(&p, &req.agent);
    check_register(&req)?;
    let (seq, nodes) = {
        let mut core = app.core();
        let mut added = Vec::new();
        for (i, n) in req.nodes.iter().enumerate() {
            if let Some(spec) = claim(&core, &who, p.is_admin(), i, n, &added)? {
                added.push(spec);
            }
        }
        if !added.is_empty() {
            // Undeclared nodes join the declared topology (down until claimed, below).
            let mut cluster = core.cluster().clone();
            cluster.node.extend(added);
            core.check_topology(&cluster)?;
            app.commit(
                &mut core,
                Entry::Topology {
                    cluster,
                    by: p.token_id().into(),
                },
            )?;
        }
        let claims: Vec<NodeClaim> = req
            .nodes
            .iter()
            .map(|n| NodeClaim {
                name: n.name.clone(),
                epoch: core.next_epoch(&n.name),
                labels: n.labels.clone(),
            })
            .collect();
        let nodes: Vec<(String, u64)> = claims.iter().map(|c| (c.name.clone(), c.epoch)).collect();
        let (seq, _) = app.commit(
            &mut core,
            Entry::AgentRegister {
                agent: who.clone(),
                address: req.address.clone(),
                nodes: claims,
                by: p.token_id().into(),
            },
        )?;
        (seq, nodes)
    };
    app.durable(seq).await?;
    app.agents.set_logs(&who, &req.logs_url, &req.logs_secret);
    app.agents.renew(nodes.iter().cloned());
    tracing::info!(agent = %who, process = %req.agent, nodes = nodes.len(), "agent registered");
    Ok(axum::Json(RegisterResponse {
        lease_ms: app.agents.lease.as_millis() as u64,
        nodes: nodes
            .into_iter()
            .map(|(name, epoch)| gosok_model::agent::NodeEpoch { name, epoch })
            .collect(),
    })
    .into_response())
}

pub async fn sync(
    State(app): State<AppState>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = agent_principal(&app, &headers)?;
    let req: SyncRequest = parse_json(&body(b)?)?;
    let who = identity(&p, &req.agent);
    check_text("agent", &req.agent, 128)?;
    check_logs(&req.logs_url, &req.logs_secret)?;
    if req.nodes.len() > MAX_AGENT_NODES {
        return Err(ApiError::invalid(
            "nodes",
            format!("at most {MAX_AGENT_NODES} nodes per call"),
        ));
    }
    let live: Vec<(String, u64)> = {
        let core = app.core();
        req.nodes
            .iter()
            .filter(|n| core.holds(&who, &n.name, n.epoch))
            .map(|n| (n.name.clone(), n.epoch))
            .collect()
    };
    // Only an agent that holds a node may say where its logs are.
    if !live.is_empty() {
        app.agents.set_logs(&who, &req.logs_url, &req.logs_secret);
    }
    app.agents.renew(live.into_iter());
    // Long poll: hold the answer while nothing changed since the agent's last one.
    let mut rx = app.agents.version.subscribe();
    if req.version != 0 && *rx.borrow_and_update() == req.version && req.wait_ms > 0 {
        let wait = Duration::from_millis(req.wait_ms.min(app.cfg.max_long_poll_ms()));
        let _ = tokio::time::timeout(wait, rx.changed()).await;
    }
    let version = *app.agents.version.borrow();
    let (nodes, tasks) = app
        .core()
        .assignments(&who, &req.nodes, app.cfg.task_grace_s);
    Ok(axum::Json(SyncResponse {
        version,
        lease_ms: app.agents.lease.as_millis() as u64,
        nodes,
        tasks,
    })
    .into_response())
}

pub async fn report(
    State(app): State<AppState>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = agent_principal(&app, &headers)?;
    let req: ReportRequest = parse_json(&body(b)?)?;
    let who = identity(&p, &req.agent);
    check_text("agent", &req.agent, 128)?;
    if req.reports.len() > MAX_AGENT_NODES {
        return Err(ApiError::invalid(
            "reports",
            format!("at most {MAX_AGENT_NODES} reports per call"),
        ));
    }
    for (i, r) in req.reports.iter().enumerate() {
        if r.message.len() > 4096 {
            return Err(ApiError::invalid(
                format!("reports[{i}].message"),
                "at most 4096 bytes",
            ));
        }
    }
    let mut results = Vec::with_capacity(req.reports.len());
    let mut last = None;
    {
        let mut core = app.core();
        for r in &req.reports {
            let refused = if core.holds(&who, &r.node, r.epoch) {
                core.check_task_report(r.job, r.attempt, r.task, &r.node, r.epoch)
            } else {
                Err((
                    crate::core::STALE_EPOCH,
                    format!(
                        "agent {:?} does not hold node {:?} under epoch {}",
                        who, r.node, r.epoch
                    ),
                ))
            };
            let result = match refused {
                Err((code, message)) => ReportResult {
                    job: r.job,
                    task: r.task,
                    accepted: false,
                    code: Some(code.into()),
                    message,
                },
                Ok(()) => {
                    let detail = describe(r);
                    let entry = Entry::TaskEnded {
                        job: r.job,
                        attempt: r.attempt,
                        task: r.task,
                        node: r.node.clone(),
                        epoch: r.epoch,
                        status: r.status(),
                        detail,
                        energy_mj: r.energy_mj,
                        limit: r.reason == gosok_model::agent::EndReason::Limit,
                        by: p.token_id().into(),
                    };
                    match app.commit(&mut core, entry) {
                        Ok((seq, _)) => {
                            last = Some(seq);
                            ReportResult {
                                job: r.job,
                                task: r.task,
                                accepted: true,
                                code: None,
                                message: String::new(),
                            }
                        }
                        Err(e) if e.status.is_server_error() => return Err(e),
                        Err(e) => ReportResult {
                            job: r.job,
                            task: r.task,
                            accepted: false,
                            code: Some(e.code.into()),
                            message: e.message,
                        },
                    }
                }
            };
            results.push(result);
        }
    }
    if let Some(seq) = last {
        app.durable(seq).await?;
    }
    Ok(axum::Json(ReportResponse { results }).into_response())
}

/// How a task ended, in words for the job's history.
fn describe(r: &gosok_model::agent::TaskReport) -> String {
    use gosok_model::agent::EndReason;
    let how = match (r.exit_code, r.signal) {
        (_, Some(s)) => format!("killed by signal {s}"),
        (Some(c), None) => format!("exited with status {c}"),
        (None, None) => "ended".into(),
    };
    match r.reason {
        EndReason::Exited => how,
        EndReason::Limit => format!("stopped at its runtime limit ({how})"),
        EndReason::SpawnFailed => format!("could not be started: {}", r.message),
        EndReason::OutOfMemory => format!("out of memory: killed at its mem_mib limit ({how})"),
    }
}

/// Lease expiry: nodes whose agents have gone quiet go down (the engine requeues their
/// tasks) and their epochs die. Called from the tick loop.
pub fn expire_leases(app: &App) {
    let expired = app.agents.expired();
    if expired.is_empty() {
        return;
    }
    let mut core = app.core();
    for (node, epoch) in expired {
        if !core.epoch_valid(&node, epoch) {
            continue;
        }
        tracing::warn!(node = %node, epoch, "lease expired; the node is lost");
        app.metrics.leases_expired.inc();
        if let Err(e) = app.commit(&mut core, Entry::NodeLost { node, epoch }) {
            tracing::warn!("marking a node lost failed: {}", e.message);
        }
    }
}

/// GET /v1/jobs/{id}/logs: a task's output, read from the agent of the node it ran on.
pub async fn logs(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    let q = query(raw, &["task", "stream", "offset", "limit"])?;
    let job = id.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
        ApiError::invalid("id", format!("{id:?} is not a job id (a positive integer)"))
    })?;
    let num = |k: &str, default: u64, max: u64| -> Result<u64> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().ok().filter(|n| *n <= max).ok_or_else(|| {
                ApiError::invalid(k, format!("{v:?} is not a whole number in 0..={max}"))
            }),
        }
    };
    let task = num("task", 0, u32::MAX as u64)? as u32;
    let offset = num("offset", 0, u64::MAX)?;
    let limit = num("limit", 1 << 20, 1 << 20)?;
    let stream = match q.get("stream").map(String::as_str) {
        None | Some("stdout") => "stdout",
        Some("stderr") => "stderr",
        Some(v) => {
            return Err(ApiError::invalid(
                "stream",
                format!("{v:?}: use stdout or stderr"),
            ));
        }
    };
    let (node, attempt, server) = {
        let core = app.core();
        let Some(j) = core.job(job).filter(|j| p.may_act_for(&j.tenant)) else {
            return Err(ApiError::not_found(format!("job {job} is not known")));
        };
        let (placement, attempt) = if j.placement.is_empty() {
            (&j.last_run, j.last_run_attempt)
        } else {
            (&j.placement, j.attempt)
        };
        if placement.is_empty() {
            return Err(ApiError::not_found(format!(
                "job {job} has not started yet: there are no logs"
            )));
        }
        let Some(t) = placement.iter().find(|t| t.task == task) else {
            return Err(ApiError::invalid(
                "task",
                match placement.len() {
                    1 => format!("job {job} has one task: --task 0"),
                    n => format!("job {job} has tasks 0 to {} (--task N)", n - 1),
                },
            ));
        };
        let node = t.node.to_string();
        let server = core
            .node_agent(&node)
            .and_then(|a| app.agents.logs_of(&a.agent));
        (node, attempt, server)
    };
    let Some(server) = server else {
        return Err(ApiError::unavailable(format!(
            "the agent of node {node} has not reported a log server since the controller started"
        )));
    };
    let url = format!(
        "{}/logs/{job}/{attempt}/{task}/{stream}?offset={offset}&limit={limit}",
        server.url.trim_end_matches('/')
    );
    // A bounded number of fetches hold blocking threads (the scheduling tick needs one).
    let slot = app.log_fetches.take(&server.url).map_err(|busy| {
        let message = match busy {
            crate::fetches::Busy::Agent(n) => format!(
                "{n} log reads are already waiting on the agent of node {node} (max_log_fetches_per_agent); retry shortly"
            ),
            crate::fetches::Busy::Total(n) => format!(
                "{n} log reads are already waiting on agents (max_log_fetches); retry shortly"
            ),
        };
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "logs_busy", message);
        e.retry_after_s = Some(1);
        e
    })?;
    let fetched = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        fetch(&url, &server.secret)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let (bytes, size) = match fetched {
        Ok(x) => x,
        Err(Fetch::NotFound) => (Vec::new(), 0),
        Err(Fetch::Failed(m)) => {
            return Err(ApiError::unavailable(format!(
                "the agent of node {node} did not answer: {m}"
            )));
        }
    };
    let mut r = (StatusCode::OK, bytes).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    for (k, v) in [
        ("x-gosok-log-size", size.to_string()),
        ("x-gosok-attempt", attempt.to_string()),
        ("x-gosok-node", node),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    Ok(r)
}

enum Fetch {
    NotFound,
    Failed(String),
}

fn fetch(url: &str, secret: &str) -> std::result::Result<(Vec<u8>, u64), Fetch> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    match agent
        .get(url)
        .set("Authorization", &format!("Bearer {secret}"))
        .call()
    {
        Ok(resp) => {
            let size = resp
                .header("x-gosok-log-size")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut out = Vec::new();
            use std::io::Read;
            resp.into_reader()
                .take(2 << 20)
                .read_to_end(&mut out)
                .map_err(|e| Fetch::Failed(e.to_string()))?;
            Ok((out, size))
        }
        Err(ureq::Error::Status(404, _)) => Err(Fetch::NotFound),
        Err(ureq::Error::Status(code, _)) => Err(Fetch::Failed(format!("status {code}"))),
        Err(e) => Err(Fetch::Failed(e.to_string())),
    }
}

/// How the node's agent isolates tasks (`sandbox`, `none`), as its registration said; None
/// while no agent holds it.
pub fn node_isolation<'a>(core: &'a Core, name: &str) -> Option<&'a str> {
    let a = core.node_agent(name)?;
    Some(
        a.labels
            .get("gosok.io/isolation")
            .map_or("none", String::as_str),
    )
}

/// The agent fields of a node, for GET /v1/nodes (operators only).
pub fn node_fields(core: &Core, app: &App, name: &str) -> serde_json::Value {
    let Some(a) = core.node_agent(name) else {
        return json!(null);
    };
    let lease_ms = lock(&app.agents.leases)
        .get(name)
        .filter(|(e, _)| *e == a.epoch)
        .map(|(_, until)| until.saturating_duration_since(Instant::now()).as_millis() as u64);
    json!({
        "agent": a.agent, "epoch": a.epoch, "address": a.address, "labels": a.labels,
        "lost": a.lost, "lease_left_ms": lease_ms,
    })
}

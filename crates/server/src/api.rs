//! The HTTP API. [`routes`] is the one table of what is served: it builds the router and the
//! OpenAPI document alike, so the two cannot disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, patch, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use gosok_engine::{Decision, JobId, JobState};
use gosok_model::{
    AcceleratorModel, ClusterSpec, JobSpec, NodeState, PriorityClass, QuotaSpec, RackSpec,
    SiteSpec, TenantSpec, Tier,
};

use crate::App;
use crate::auth::{self, Principal};
use crate::core::{Core, JobControl, JobRecord, RefusalKind, job_state_name, parse_state};
use crate::entry::{Entry, Idempotency};
use crate::error::{ApiError, split_reason};

type AppState = Arc<App>;
type Result<T> = std::result::Result<T, ApiError>;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Any valid token (tenants see their own work only).
    Token,
    Admin,
    /// A node agent's token (or an admin's).
    Agent,
}

/// One served route: what builds the router and what the OpenAPI document says.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub access: Access,
    /// Query parameters: name and description.
    pub query: &'static [(&'static str, &'static str)],
    /// Request headers besides Authorization: name and description.
    pub headers: &'static [(&'static str, &'static str)],
    /// Schema name of the JSON body, if any.
    pub request: Option<&'static str>,
    /// Success status and schema name of its body.
    pub status: u16,
    pub response: &'static str,
    pub handler: MethodRouter<AppState>,
}

/// The second expression if given, else the first.
macro_rules! or_else {
    ($default:expr) => {
        $default
    };
    ($default:expr, $given:expr) => {
        $given
    };
}

macro_rules! route {
    ($m:ident $path:literal, $h:expr, $access:ident, $status:literal, $resp:literal,
     $summary:literal $(, req = $req:literal)? $(, query = $q:expr)? $(, headers = $hd:expr)?) => {
        Route {
            method: stringify!($m),
            path: $path,
            summary: $summary,
            access: Access::$access,
            query: or_else!(&[] $(, $q)?),
            headers: or_else!(&[] $(, $hd)?),
            request: or_else!(None $(, Some($req))?),
            status: $status,
            response: $resp,
            handler: $m($h),
        }
    };
}

pub fn routes() -> Vec<Route> {
    vec![
        route!(get "/healthz", healthz, Public, 200, "Health", "Liveness (the figures behind it with an admin token)"),
        route!(get "/metrics", metrics, Admin, 200, "Metrics",
            "Prometheus metrics (text format); public when metrics_require_token = false"),
        route!(get "/v1/openapi.json", openapi, Public, 200, "OpenApi", "This document"),
        route!(post "/v1/jobs", submit, Token, 201, "Job", "Submit a job", req = "JobSubmission",
            query = &[("tenant", "the tenant to submit for (admin tokens only)")],
            headers = &[("Idempotency-Key", "the same key and body return the same job, never a second one")]),
        route!(get "/v1/jobs", list_jobs, Token, 200, "JobList", "List jobs, newest first",
            query = &[("state", "pending, held, running, succeeded, failed, timed_out, cancelled or rejected"),
                      ("tenant", "only this tenant's jobs (admin tokens only)"),
                      ("name", "only jobs of this name"),
                      ("limit", "at most this many (1..=1000, default 100)"),
                      ("cursor", "the next_cursor of the previous page")]),
        route!(get "/v1/jobs/{id}", show_job, Token, 200, "Job",
            "A job: spec, state, placement, events and, while pending, why it waits"),
        route!(post "/v1/jobs/{id}/cancel", cancel_job, Token, 200, "Job", "Cancel a job"),
        route!(post "/v1/jobs/{id}/hold", hold_job, Token, 200, "Job",
            "Hold a pending job: it is not started until released"),
        route!(post "/v1/jobs/{id}/release", release_job, Token, 200, "Job", "Release a held job"),
        route!(post "/v1/jobs/{id}/requeue", requeue_job, Token, 200, "Job",
            "Stop a running job and queue it again (held with {\"hold\": true})", req = "Requeue"),
        route!(get "/v1/queue", queue, Token, 200, "Queue",
            "Pending jobs in engine order, with reasons and estimated starts",
            query = &[("limit", "at most this many (default: all)"),
                      ("offset", "skip this many first, for pages (default 0)"),
                      ("tenant", "only this tenant's jobs (admin tokens only)")]),
        route!(get "/v1/topology", get_topology, Admin, 200, "Cluster",
            "The declared highway and tenants, in the cluster-file format (as JSON)"),
        route!(put "/v1/topology", put_topology, Admin, 200, "TopologyResult",
            "Declare the highway (JSON, or the TOML cluster file with Content-Type application/toml); idempotent",
            req = "Cluster", query = &[("dry_run", "true: only say what would change")]),
        route!(get "/v1/sites", list_sites, Token, 200, "SiteList",
            "Sites with power draw against budget, and their accelerators by model and node state"),
        route!(post "/v1/sites", create_site, Admin, 201, "TopologyResult", "Add a site", req = "Site"),
        route!(patch "/v1/sites/{name}", update_site, Admin, 200, "PowerResult",
            "Change a site's power budget (a lower budget sheds preemptible work at once)", req = "SiteUpdate"),
        route!(get "/v1/racks", list_racks, Token, 200, "RackList", "Racks with power draw against cap"),
        route!(post "/v1/racks", create_rack, Admin, 201, "TopologyResult", "Add a rack", req = "Rack"),
        route!(patch "/v1/racks/{name}", update_rack, Admin, 200, "PowerResult",
            "Change a rack's power cap", req = "RackUpdate"),
        route!(get "/v1/nodes", list_nodes, Token, 200, "NodeList", "Nodes, their state and use, by name",
            query = &[("state", "only nodes in this state: up, draining or down"),
                      ("offset", "skip this many first, for pages (default 0)"),
                      ("limit", "at most this many (default: all)")]),
        route!(post "/v1/nodes/{name}/drain", drain_node, Admin, 200, "Node",
            "Drain a node: running work continues, nothing new is placed"),
        route!(post "/v1/nodes/{name}/undrain", undrain_node, Admin, 200, "Node",
            "Mark a node up (until agents exist, this is how a declared node starts taking work)"),
        route!(get "/v1/catalog", get_catalog, Token, 200, "Catalog", "The accelerator catalog"),
        route!(post "/v1/catalog", add_model, Admin, 201, "AcceleratorModel",
            "Add an accelerator model", req = "AcceleratorModel"),
        route!(get "/v1/tenants", list_tenants, Token, 200, "TenantList",
            "Tenants (a tenant token sees its own)"),
        route!(post "/v1/tenants", create_tenant, Admin, 201, "Tenant", "Create a tenant", req = "Tenant"),
        route!(get "/v1/tenants/{name}", show_tenant, Token, 200, "Tenant", "One tenant"),
        route!(patch "/v1/tenants/{name}", update_tenant, Admin, 200, "Tenant",
            "Update a tenant's tier, weight, quotas, jurisdictions, share cap, default priority, priority entitlement or storage limits",
            req = "TenantUpdate"),
        route!(post "/v1/tenants/{name}/tokens", create_token, Admin, 201, "NewToken",
            "A new token for the tenant, shown once"),
        route!(get "/v1/tenants/{name}/tokens", list_tokens, Token, 200, "TokenList",
            "The tenant's tokens (ids only)"),
        route!(post "/v1/tokens", create_admin_token, Admin, 201, "NewToken",
            "A new operator (admin) token, shown once (to rotate the first one)"),
        route!(post "/v1/agent-tokens", create_agent_token, Admin, 201, "NewToken",
            "A new node-agent token, shown once: it may call only /v1/agent/*"),
        route!(post "/v1/tokens/{id}/revoke", revoke_token, Token, 200, "Token",
            "Revoke a token (admins any, tenants their own)"),
        route!(get "/v1/jobs/{id}/logs", crate::agents::logs, Token, 200, "Logs",
            "A task's output, read from the agent of the node it ran on (latest attempt)",
            query = &[("task", "the task index (default 0)"),
                      ("stream", "stdout (default) or stderr"),
                      ("offset", "the first byte to return (default 0)"),
                      ("limit", "at most this many bytes (default and maximum 1 MiB)")]),
        route!(post "/v1/agent/register", crate::agents::register, Agent, 200, "AgentRegistered",
            "A node agent claims its nodes; each gets a new epoch and a lease", req = "AgentRegister"),
        route!(post "/v1/agent/sync", crate::agents::sync, Agent, 200, "AgentAssignments",
            "Heartbeat (renews leases) and the whole desired set of tasks (long poll)", req = "AgentSync"),
        route!(post "/v1/agent/report", crate::agents::report, Agent, 200, "AgentReportResults",
            "How tasks ended; reports under a stale epoch or attempt are refused", req = "AgentReports"),
        route!(get "/v1/usage", crate::usage::usage, Token, 200, "Usage",
            "Metered usage (accelerator-seconds, HBM, CPU, memory, energy, cost) grouped as asked; tenants see their own",
            query = &[("tenant", "only this tenant (admin tokens; a tenant token sees its own)"),
                      ("from", "window start, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (default: 30 days before `to`)"),
                      ("to", "window end (default: now)"),
                      ("group_by", "comma-separated: tenant, model, site, job, programme, day (default tenant,model,site)")]),
        route!(get "/v1/tenants/{name}/statement", crate::usage::statement_route, Token, 200, "Statement",
            "A tenant's statement for a month: attempts that ended in it, cost, each allocation's draw-down and balance",
            query = &[("month", "YYYY-MM")]),
        route!(get "/v1/reports/share", crate::usage::share_route, Admin, 200, "ShareReport",
            "Anti-monopoly evidence: each tenant's peak and average share of the highway by accelerator value, against its cap",
            query = &[("from", "window start (default: 30 days before `to`)"), ("to", "window end (default: now)")]),
        route!(get "/v1/reports/fairness", crate::usage::fairness_route, Admin, 200, "FairnessReport",
            "Share received against entitlement, Jain's index, preemptions suffered and caused with the work lost",
            query = &[("from", "window start (default: 30 days before `to`)"), ("to", "window end (default: now)")]),
        route!(put "/v1/tenants/{name}/accounting", crate::accounting::set_policy, Admin, 200, "AccountingPolicy",
            "A tenant's accounting policy: scavenger work without an allocation, what running out does (finish or preempt)",
            req = "AccountingPolicy"),
        route!(get "/v1/programmes", crate::accounting::list_programmes, Token, 200, "ProgrammeList", "Programmes"),
        route!(post "/v1/programmes", crate::accounting::create_programme, Admin, 201, "Programme",
            "Create a programme (a period and a tier accelerator time is granted from)", req = "Programme"),
        route!(get "/v1/allocations", crate::accounting::list_allocations, Token, 200, "AllocationList",
            "Allocations with their balances (a tenant token sees its own)",
            query = &[("tenant", "only this tenant's (admin tokens)")]),
        route!(post "/v1/allocations", crate::accounting::grant, Admin, 201, "Allocation",
            "Grant a tenant accelerator-hours from a programme, for any model or one model or class", req = "Grant"),
        route!(get "/v1/prices", crate::accounting::list_prices, Token, 200, "PriceList", "Prices, every version"),
        route!(post "/v1/prices", crate::accounting::set_price, Admin, 201, "Price",
            "Set a price (KRW per accelerator-hour and per kWh, by model, site and tier) from a time on", req = "Price"),
        route!(get "/v1/events", audit_log, Admin, 200, "AuditLog", "The audit log: every change, oldest first",
            query = &[("after", "only records after this sequence number"),
                      ("limit", "at most this many (1..=1000, default 100)")]),
    ]
}

pub fn router(app: AppState) -> Router {
    let mut by_path: BTreeMap<&str, MethodRouter<AppState>> = BTreeMap::new();
    for r in routes() {
        let m = match by_path.remove(r.path) {
            Some(m) => m.merge(r.handler),
            None => r.handler,
        };
        by_path.insert(r.path, m);
    }
    let mut router = Router::new();
    for (p, m) in by_path {
        router = router.route(p, m.fallback(method_not_allowed));
    }
    let limit = app.cfg.max_body_bytes;
    let api = router
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app.clone());
    // The web console at `/`, a client of this same router (`console/mod.rs`).
    crate::console::router(app, api)
}

async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such endpoint; GET /v1/openapi.json lists them",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; GET /v1/openapi.json lists them",
    )
}

// ---- request helpers ---------------------------------------------------------------------

/// The caller of a tenant or operator route: agent tokens are refused here.
pub(crate) fn principal(app: &App, headers: &HeaderMap) -> Result<Principal> {
    let p = auth::authenticate(&app.core(), headers)?;
    if matches!(p, Principal::Agent { .. }) {
        return Err(ApiError::forbidden(
            "an agent token may only call /v1/agent/*",
        ));
    }
    Ok(p)
}

pub(crate) fn body(b: std::result::Result<Bytes, BytesRejection>) -> Result<Bytes> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the request body is larger than the server accepts (max_body_bytes)",
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
        }
    })
}

fn json_error(path: String, e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let code = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => "malformed_json",
        Category::Data => "invalid",
    };
    let field = if path == "." || path.is_empty() {
        None
    } else {
        Some(path)
    };
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code,
        message: e.to_string(),
        field,
        retry_after_s: None,
    }
}

/// Walks a JSON document and fails at the first object that repeats a key, leaving the path
/// to that key in `path` (serde and `serde_json::Value` would silently keep the last one).
struct NoDuplicates<'a> {
    path: &'a std::cell::RefCell<Vec<String>>,
    found: &'a std::cell::Cell<bool>,
}

impl<'de> serde::de::DeserializeSeed<'de> for NoDuplicates<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicates<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut a: A,
    ) -> std::result::Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            self.path.borrow_mut().push(format!("[{i}]"));
            let more = a.next_element_seed(NoDuplicates {
                path: self.path,
                found: self.found,
            })?;
            self.path.borrow_mut().pop();
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut m: A,
    ) -> std::result::Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = m.next_key::<String>()? {
            let dup = seen.contains(&k);
            self.path.borrow_mut().push(k.clone());
            if dup {
                self.found.set(true);
                return Err(serde::de::Error::custom(format!(
                    "duplicate key {k:?}: each key may appear once in an object"
                )));
            }
            m.next_value_seed(NoDuplicates {
                path: self.path,
                found: self.found,
            })?;
            self.path.borrow_mut().pop();
            seen.insert(k);
        }
        Ok(())
    }
}

/// Refuses a JSON body in which an object repeats a key, naming the key's path. Other
/// errors are left to the parser proper, which names them better.
fn refuse_duplicate_keys(bytes: &[u8]) -> Result<()> {
    use serde::de::DeserializeSeed;
    let path = std::cell::RefCell::new(Vec::new());
    let found = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let r = NoDuplicates {
        path: &path,
        found: &found,
    }
    .deserialize(&mut de);
    match r {
        Err(e) if found.get() => {
            let mut field = String::new();
            for seg in path.borrow().iter() {
                if !field.is_empty() && !seg.starts_with('[') {
                    field.push('.');
                }
                field.push_str(seg);
            }
            let message = e.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            Err(ApiError::new(StatusCode::BAD_REQUEST, "duplicate_key", message).field(field))
        }
        _ => Ok(()),
    }
}

/// Parses a JSON body, naming the field path of any error. A key repeated within an object
/// is refused (naming it), never resolved by taking one of the values.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    refuse_duplicate_keys(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_error(path, e.into_inner())
    })?;
    de.end().map_err(|e| json_error(String::new(), e))?;
    Ok(v)
}

fn from_value<T: DeserializeOwned>(v: Value, prefix: &str) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let p = e.path().to_string();
        let path = match (prefix, p.as_str()) {
            (pre, ".") => pre.to_string(),
            ("", p) => p.to_string(),
            (pre, p) if p.starts_with('[') => format!("{pre}{p}"),
            (pre, p) => format!("{pre}.{p}"),
        };
        json_error(path, e.into_inner())
    })
}

/// A job submission: a job spec, plus what its tasks run (kept for the agents).
#[derive(Debug)]
pub struct Submission {
    pub spec: JobSpec,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    /// An array, dependencies, a hold.
    pub control: JobControl,
}

/// A job submission: a job spec, plus `command`, `env` and `workdir` for its tasks, and
/// `array`, `dependency` and `hold` (job control, `core/dependencies.rs`).
pub fn parse_submission(bytes: &[u8]) -> Result<Submission> {
    let v: Value = parse_json(bytes)?;
    let Value::Object(mut m) = v else {
        return Err(ApiError::invalid(
            "",
            "the body must be a JSON object (a job spec)",
        ));
    };
    let command = match m.remove("command") {
        None | Some(Value::Null) => Vec::new(),
        Some(c) => from_value::<Vec<String>>(c, "command")?,
    };
    if command.len() > 4096 || command.iter().map(String::len).sum::<usize>() > 256 * 1024 {
        return Err(ApiError::invalid("command", "too long"));
    }
    if let Some(i) = command.iter().position(|a| a.contains('\0')) {
        return Err(ApiError::invalid(
            format!("command[{i}]"),
            "contains a NUL character",
        ));
    }
    if command.first().is_some_and(|c| c.is_empty()) {
        return Err(ApiError::invalid("command[0]", "the program name is empty"));
    }
    let env = match m.remove("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(e) => from_value::<BTreeMap<String, String>>(e, "env")?,
    };
    if env.len() > 1024 || env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > 256 * 1024 {
        return Err(ApiError::invalid(
            "env",
            "too large (at most 1024 variables, 256 KiB)",
        ));
    }
    for (k, v) in &env {
        let bad_name = k.is_empty()
            || k.starts_with(|c: char| c.is_ascii_digit())
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if bad_name {
            return Err(ApiError::invalid(
                format!("env.{k}"),
                "a variable name is letters, digits and '_', not starting with a digit",
            ));
        }
        if v.contains('\0') {
            return Err(ApiError::invalid(
                format!("env.{k}"),
                "contains a NUL character",
            ));
        }
    }
    let workdir = match m.remove("workdir") {
        None | Some(Value::Null) => None,
        Some(w) => Some(from_value::<String>(w, "workdir")?),
    };
    if let Some(w) = &workdir
        && (w.is_empty() || w.len() > 4096 || w.contains('\0') || !w.starts_with('/'))
    {
        return Err(ApiError::invalid(
            "workdir",
            "must be an absolute path (at most 4096 bytes)",
        ));
    }
    let control = parse_control(&mut m)?;
    let spec: JobSpec = from_value(Value::Object(m), "")?;
    spec.validate()
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    Ok(Submission {
        spec,
        command,
        env,
        workdir,
        control,
    })
}

/// `array` ("0-99%8"), `dependency` ("afterok:3:4,singleton") and `hold` (true) of a
/// submission, written as Slurm users write them.
fn parse_control(m: &mut serde_json::Map<String, Value>) -> Result<JobControl> {
    use crate::core::dependencies::{ArraySpec, Dependency};
    let mut c = JobControl::default();
    match m.remove("array") {
        None | Some(Value::Null) => {}
        Some(Value::String(a)) => {
            c.array = Some(ArraySpec::parse(&a).map_err(|e| ApiError::invalid("array", e))?)
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "array",
                "must be a string such as \"0-99%8\"",
            ));
        }
    }
    match m.remove("dependency") {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) => {
            c.dependency =
                Dependency::parse_list(&d).map_err(|e| ApiError::invalid("dependency", e))?
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "dependency",
                "must be a string such as \"afterok:3:4\"",
            ));
        }
    }
    match m.remove("hold") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(h)) => c.hold = h,
        Some(_) => return Err(ApiError::invalid("hold", "must be true or false")),
    }
    Ok(c)
}

/// Query parameters, refusing unknown ones.
pub(crate) fn query(raw: Option<String>, allowed: &[&str]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Some(raw) = raw else { return Ok(out) };
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k);
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::invalid(
                k.clone(),
                format!("unknown query parameter; known: {}", allowed.join(", ")),
            ));
        }
        out.insert(k, decode(v));
    }
    Ok(out)
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() + 1
                && i + 2 <= b.len().saturating_sub(1)
                && hex(b[i + 1]).is_some()
                && hex(b[i + 2]).is_some() =>
            {
                let v = hex(b[i + 1]).unwrap_or(0) * 16 + hex(b[i + 2]).unwrap_or(0);
                out.push(v as u8);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn num(q: &BTreeMap<String, String>, k: &str, default: u64, min: u64, max: u64) -> Result<u64> {
    match q.get(k) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                k,
                format!("{v:?} is not a whole number in {min}..={max}"),
            )),
        },
    }
}

fn job_id(s: &str) -> Result<u64> {
    s.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
        ApiError::invalid("id", format!("{s:?} is not a job id (a positive integer)"))
    })
}

fn created(v: Value) -> Response {
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

// ---- views -------------------------------------------------------------------------------

fn job_summary(j: &JobRecord) -> Value {
    let mut v = json!({
        "id": j.id,
        "tenant": &*j.tenant,
        "name": j.name.as_deref(),
        "state": job_state_name(j),
        "accelerators": j.accel_milli as f64 / 1000.0,
        "submitted_at_ms": j.submitted_ms,
        "ended_at_ms": j.ended_ms,
        "attempt": j.attempt,
    });
    if let Some(g) = j.gate.as_deref() {
        if let Some(t) = g.array {
            v["array_job_id"] = json!(t.array);
            v["array_task_id"] = json!(t.index);
        }
        if !g.dependency.is_empty() {
            v["dependency"] = json!(crate::core::dependencies::dependency_text(&g.dependency));
        }
    }
    v
}

fn job_detail(app: &App, core: &Core, j: &JobRecord) -> Result<Value> {
    let mut v = job_summary(j);
    // The spec and command are read back from the log (the caller waited for the
    // submission to be durable).
    let rec = app
        .reader()
        .get(j.submit_seq)
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let (spec, command, env, workdir) = match rec.map(|r| serde_json::from_slice::<Entry>(&r.body))
    {
        Some(Ok(Entry::Submit {
            spec,
            command,
            env,
            workdir,
            ..
        })) => (
            serde_json::to_value(&spec).unwrap_or(Value::Null),
            command,
            env,
            workdir,
        ),
        _ => (Value::Null, Vec::new(), BTreeMap::new(), None),
    };
    let m = v.as_object_mut().expect("a summary is an object");
    m.insert("spec".into(), spec);
    m.insert("command".into(), json!(command));
    m.insert("env".into(), json!(env));
    m.insert("workdir".into(), json!(workdir));
    m.insert("placement".into(), json!(j.placement));
    let mut events = vec![json!({"at_ms": j.submitted_ms, "event": "submitted"})];
    events.extend(j.history.iter().map(|h| json!(h)));
    m.insert("events".into(), Value::Array(events));
    m.insert("reason".into(), json!(j.reason));
    if let Some(text) = core.gate_text(j.id) {
        m.insert(
            "wait".into(),
            json!({"position": null, "reason": {"kind": "gate"}, "text": text,
                   "estimated_start_s": null}),
        );
    } else if j.state == JobState::Pending
        && let Some(e) = core.engine().explain(JobId(j.id))
    {
        m.insert(
            "wait".into(),
            json!({
                "position": e.position,
                "reason": e.wait,
                "text": e.text,
                "estimated_start_s": e.estimated_start_s,
            }),
        );
    }
    Ok(v)
}

// ---- handlers: health, metrics, openapi ---------------------------------------------------

/// Anyone (a load balancer, a probe): whether the controller is up, and "degraded" while
/// the disk is low. With an admin token, also the figures behind it: they describe the
/// highway's load and the host, which are nobody else's business.
async fn healthz(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let (space, low) = app.disk.status();
    // Degraded: new submissions are refused (507) until disk space is freed.
    let status = if low { "degraded" } else { "ok" };
    if !principal(&app, &headers).is_ok_and(|p| p.is_admin()) {
        return ok(json!({ "status": status }));
    }
    let core = app.core();
    ok(json!({
        "status": status,
        "disk": {"free_bytes": space.free_bytes, "total_bytes": space.total_bytes,
                 "watermark_bytes": app.disk.threshold(space.total_bytes), "low": low},
        "connections": app.http.open.load(std::sync::atomic::Ordering::Relaxed),
        "log_seq": core.seq(),
        "durable_seq": app.durable_seq(),
        "jobs": core.job_count(),
        "pending": core.engine().pending_count(),
        "uptime_s": app.started.elapsed().as_secs(),
        "replay": {"records": app.replay.records, "ms": app.replay.elapsed.as_millis() as u64,
                   "diverged": app.replay.diverged, "snapshot_seq": app.replay.snapshot_seq},
    }))
}

async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Result<Response> {
    if app.cfg.metrics_require_token {
        principal(&app, &headers)?.require_admin()?;
    }
    let text = {
        let core = app.core();
        app.metrics.render(
            &core,
            app.durable_seq(),
            app.commit_batches(),
            &app.disk,
            &app.http,
        )
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Response {
    ok(crate::openapi::document(&routes()))
}

// ---- handlers: jobs ----------------------------------------------------------------------

async fn submit(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    let q = query(raw, &["tenant"])?;
    let b = body(b)?;
    let tenant: String = match (&p, q.get("tenant")) {
        (Principal::Tenant { name, .. }, None) => name.to_string(),
        (Principal::Tenant { name, .. }, Some(t)) if **name == **t => t.clone(),
        (Principal::Tenant { .. }, Some(_)) => {
            return Err(ApiError::forbidden(
                "a tenant token submits for its own tenant only",
            ));
        }
        (Principal::Admin { .. } | Principal::Agent { .. }, Some(t)) => t.clone(),
        (Principal::Admin { .. } | Principal::Agent { .. }, None) => {
            return Err(ApiError::invalid(
                "tenant",
                "an admin token must say which tenant the job is for (?tenant=NAME)",
            ));
        }
    };
    if let Some(t) = p.tenant()
        && let Err(wait_s) = app.limiter.take(t)
    {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("tenant {t} is submitting faster than allowed; retry in {wait_s} s"),
        );
        e.retry_after_s = Some(wait_s);
        return Err(e);
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "Idempotency-Key",
                        "must be 1 to 255 visible ASCII characters",
                    )
                })?;
            Some(k.to_string())
        }
    };
    let Submission {
        spec,
        command,
        env,
        workdir,
        control,
    } = parse_submission(&b)?;
    let request_sha256 = {
        let mut buf = Vec::with_capacity(tenant.len() + 1 + b.len());
        buf.extend_from_slice(tenant.as_bytes());
        buf.push(0);
        buf.extend_from_slice(&b);
        auth::hex(&auth::sha256(&buf))
    };
    let (seq, job, refused, replayed) = {
        let mut core = app.core();
        let existing = key
            .as_ref()
            .and_then(|k| core.idempotent(&tenant, k).cloned());
        if let Some((hash, job)) = existing {
            if hash != request_sha256 {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request",
                )
                .field("Idempotency-Key"));
            }
            let seq = core.job(job).map_or(core.seq(), |j| j.submit_seq);
            (seq, job, None, true)
        } else {
            if let Err((free, threshold)) = app.disk.check() {
                return Err(ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "disk_low",
                    format!(
                        "the controller's disk has {} MiB free, below its watermark of {} MiB (min_free_disk_mib, min_free_disk_fraction): new submissions are refused until an operator frees space; running work, cancels and reads go on",
                        free >> 20,
                        threshold >> 20
                    ),
                ));
            }
            let mut spec = spec;
            core.canonical_models(&mut spec);
            core.check_submit(&tenant, &spec).map_err(|r| {
                let mut e = ApiError::from_refusal(r);
                if e.field
                    .as_deref()
                    .is_some_and(|f| !f.contains("models") && !f.contains("sites"))
                {
                    e.status = StatusCode::BAD_REQUEST;
                }
                e
            })?;
            core.check_control(&tenant, spec.name.as_deref(), &control)
                .map_err(ApiError::from_refusal)?;
            check_tenant_limits(
                &app,
                &core,
                &p,
                &tenant,
                &spec,
                (&command, &env, &workdir),
                control.jobs(),
            )?;
            core.check_balance(&tenant, &spec, control.jobs())
                .map_err(|m| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "insufficient_allocation",
                        m,
                    )
                    .field("allocation")
                })?;
            let job = core.next_job_id();
            let entry = Entry::Submit {
                job,
                tenant: tenant.clone(),
                spec: Box::new(spec),
                command,
                env,
                workdir,
                idempotency: key.map(|key| Idempotency {
                    key,
                    request_sha256,
                }),
                control: (!control.is_default()).then(|| Box::new(control)),
                by: p.token_id().to_string(),
            };
            let (seq, applied) = app.commit(&mut core, entry)?;
            let refused = applied.decisions.iter().find_map(|d| match d {
                Decision::Reject { job: j, reason } if j.0 == job => Some(reason.clone()),
                _ => None,
            });
            (seq, job, refused, false)
        }
    };
    app.durable(seq).await?;
    let core = app.core();
    let Some(j) = core.job(job) else {
        // Refused by the engine's admission (now, or when first submitted with this key).
        let reason = refused
            .or_else(|| core.refused_reason(job))
            .unwrap_or_else(|| "refused".into());
        let (field, message) = split_reason(&reason);
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "unsatisfiable",
            message,
            field,
            retry_after_s: None,
        });
    };
    let mut r = created(job_summary(j));
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/jobs/{job}")).expect("ascii"),
    );
    Ok(r)
}

/// What a tenant may submit: its priority entitlement (tenant tokens; operators may submit
/// at any class for a tenant), pending jobs (429), bytes per job and in all (413).
#[allow(clippy::too_many_arguments)]
fn check_tenant_limits(
    app: &App,
    core: &Core,
    p: &Principal,
    tenant: &str,
    spec: &JobSpec,
    (command, env, workdir): (&[String], &BTreeMap<String, String>, &Option<String>),
    jobs: u64,
) -> Result<()> {
    let Some(t) = core.tenant(tenant) else {
        return Ok(()); // check_submit refused it already
    };
    if matches!(p, Principal::Tenant { .. }) {
        let class = spec.priority.unwrap_or(t.default_priority);
        let max = t.priority_entitlement();
        if class > max {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "priority_not_allowed",
                format!(
                    "tenant {tenant} may submit at priority up to {}; {} is above its entitlement (max_priority, set by an operator)",
                    max.name(),
                    class.name()
                ),
            )
            .field("priority"));
        }
    }
    let pending = core.pending_by_tenant().get(tenant).copied().unwrap_or(0);
    let max_pending = t
        .max_pending_jobs
        .unwrap_or(app.cfg.max_pending_jobs_per_tenant);
    if pending + jobs > max_pending {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_pending",
            format!(
                "tenant {tenant} has {pending} jobs pending, its limit (max_pending_jobs {max_pending}); submit again when some have started or ended"
            ),
        ));
    }
    let command_bytes: usize = command.iter().map(String::len).sum();
    let env_bytes: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    let bytes = (command_bytes + env_bytes + workdir.as_ref().map_or(0, String::len)) as u64;
    let field = if env_bytes > command_bytes {
        "env"
    } else {
        "command"
    };
    let max_job = t.max_job_bytes.unwrap_or(app.cfg.max_job_bytes);
    if bytes > max_job {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "job_too_large",
            format!(
                "command, env and workdir take {bytes} bytes; tenant {tenant} may store at most {max_job} per job (max_job_bytes)"
            ),
        )
        .field(field));
    }
    let stored = core.stored_bytes(tenant);
    let max_stored = t
        .max_stored_bytes
        .unwrap_or(app.cfg.max_stored_bytes_per_tenant);
    if stored.saturating_add(bytes) > max_stored {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "storage_limit",
            format!(
                "tenant {tenant}'s pending and running jobs hold {stored} bytes of command, env and workdir; {bytes} more would exceed its limit of {max_stored} (max_stored_bytes); submit again when some have ended"
            ),
        )
        .field(field));
    }
    Ok(())
}

async fn list_jobs(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    let q = query(raw, &["state", "tenant", "name", "limit", "cursor"])?;
    let limit = num(&q, "limit", 100, 1, 1000)? as usize;
    let cursor = num(&q, "cursor", u64::MAX, 1, u64::MAX)?;
    let state = match q.get("state") {
        None => None,
        Some(s) => Some(parse_state(s).map(|_| s.as_str()).ok_or_else(|| {
            ApiError::invalid(
                "state",
                format!("{s:?}: use pending, held, running, succeeded, failed, timed_out, cancelled or rejected"),
            )
        })?),
    };
    let name = q.get("name");
    let tenant: Option<String> = match (&p, q.get("tenant")) {
        (Principal::Tenant { name, .. }, None) => Some(name.to_string()),
        (Principal::Tenant { name, .. }, Some(t)) if **name == **t => Some(t.clone()),
        (Principal::Tenant { .. }, Some(_)) => {
            return Err(ApiError::forbidden(
                "a tenant token sees its own tenant's jobs only",
            ));
        }
        (Principal::Admin { .. } | Principal::Agent { .. }, t) => t.cloned(),
    };
    let core = app.core();
    let mut jobs = Vec::new();
    let mut next = None;
    for j in core.jobs_before(cursor) {
        if tenant.as_deref().is_some_and(|t| *j.tenant != *t)
            || state.is_some_and(|s| job_state_name(j) != s)
            || name.is_some_and(|n| j.name.as_deref() != Some(n.as_str()))
        {
            continue;
        }
        if jobs.len() == limit {
            next = Some(
                jobs.last()
                    .and_then(|v: &Value| v["id"].as_u64())
                    .unwrap_or(j.id + 1),
            );
            break;
        }
        jobs.push(job_summary(j));
    }
    Ok(ok(
        json!({"jobs": jobs, "next_cursor": next.map(|n| n.to_string())}),
    ))
}

fn visible_job<'a>(core: &'a Core, p: &Principal, id: u64) -> Result<&'a JobRecord> {
    let j = core
        .job(id)
        .ok_or_else(|| ApiError::not_found(format!("job {id} is not known")))?;
    if !p.may_act_for(&j.tenant) {
        return Err(ApiError::forbidden(format!(
            "job {id} belongs to another tenant"
        )));
    }
    Ok(j)
}

async fn show_job(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    let id = job_id(&id)?;
    let seq = visible_job(&app.core(), &p, id)?.submit_seq;
    app.durable(seq).await?;
    let core = app.core();
    let j = visible_job(&core, &p, id)?;
    Ok(ok(job_detail(&app, &core, j)?))
}

async fn cancel_job(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    let id = job_id(&id)?;
    let seq = {
        let mut core = app.core();
        visible_job(&core, &p, id)?;
        app.commit(
            &mut core,
            Entry::Cancel {
                job: id,
                by: p.token_id().to_string(),
            },
        )?
        .0
    };
    app.durable(seq).await?;
    let core = app.core();
    let j = visible_job(&core, &p, id)?;
    Ok(ok(job_summary(j)))
}

async fn hold_job(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    job_control(app, headers, id, |job, by| Entry::Hold { job, by }).await
}

async fn release_job(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    job_control(app, headers, id, |job, by| Entry::Release { job, by }).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RequeueBody {
    #[serde(default)]
    hold: bool,
}

async fn requeue_job(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let b = body(b)?;
    let r: RequeueBody = if b.iter().all(u8::is_ascii_whitespace) {
        RequeueBody::default()
    } else {
        from_value(parse_json(&b)?, "")?
    };
    job_control(app, headers, id, move |job, by| Entry::Requeue {
        job,
        hold: r.hold,
        by,
    })
    .await
}

/// Hold, release, requeue: a job the caller may see, one log entry, the job as it is after.
async fn job_control(
    app: AppState,
    headers: HeaderMap,
    id: String,
    entry: impl FnOnce(u64, String) -> Entry,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    let id = job_id(&id)?;
    let seq = {
        let mut core = app.core();
        visible_job(&core, &p, id)?;
        app.commit(&mut core, entry(id, p.token_id().to_string()))?
            .0
    };
    app.durable(seq).await?;
    let core = app.core();
    let j = visible_job(&core, &p, id)?;
    Ok(ok(job_summary(j)))
}

async fn queue(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    let q = query(raw, &["limit", "offset", "tenant"])?;
    let limit = num(&q, "limit", u64::MAX, 1, u64::MAX)? as usize;
    let offset = num(&q, "offset", 0, 0, u64::MAX)? as usize;
    let tenant: Option<String> = match (&p, q.get("tenant")) {
        (Principal::Tenant { name, .. }, _) => Some(name.to_string()),
        (Principal::Admin { .. } | Principal::Agent { .. }, t) => t.cloned(),
    };
    let core = app.core();
    let out = queue_page(&core, tenant.as_deref(), offset, limit)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// The body of GET /v1/queue: pending jobs in engine order (`limit` of them, of `tenant` only
/// if given), with reasons and estimated starts.
pub fn queue_json(core: &Core, tenant: Option<&str>, limit: usize) -> Result<Vec<u8>> {
    queue_page(core, tenant, 0, limit)
}

/// GET /v1/queue from its `offset`-th job (of those shown) on.
pub fn queue_page(
    core: &Core,
    tenant: Option<&str>,
    offset: usize,
    limit: usize,
) -> Result<Vec<u8>> {
    use std::io::Write;
    let e = core.engine();
    let now = e.now_s();
    let order = e.queue();
    // A tenant's view counts only its own jobs.
    let total = match tenant {
        None => order.len() as u64,
        Some(t) => core.pending_by_tenant().get(t).copied().unwrap_or(0),
    };
    let mut out: Vec<u8> = Vec::with_capacity(order.len().min(limit).min(1 << 20) * 256 + 64);
    let _ = write!(out, "{{\"now_s\":{now},\"total\":{total},\"jobs\":[");
    // A long queue has few distinct reasons and tenants: each is serialised once and copied
    // into every row that has it (the same JSON serde would write, several times faster).
    let mut reasons: Vec<(Option<gosok_engine::WaitReason>, Vec<u8>)> = Vec::new();
    let mut tenants: Vec<(*const u8, Vec<u8>)> = Vec::new();
    let json = |v: &dyn erased::Ser| -> Vec<u8> { v.to_json() };
    let mut n = 0;
    let mut skipped = 0;
    for (pos, id) in order.into_iter().enumerate() {
        if n == limit {
            break;
        }
        let Some(j) = core.job(id.0) else { continue };
        if tenant.is_some_and(|t| *j.tenant != *t) {
            continue;
        }
        if skipped < offset {
            skipped += 1;
            continue;
        }
        let wait = e.wait_reason(id);
        let ri = match reasons.iter().position(|(r, _)| *r == wait) {
            Some(i) => i,
            None => {
                let mut frag = b"\"reason\":".to_vec();
                frag.extend(json(&wait));
                frag.extend_from_slice(b",\"text\":");
                frag.extend(json(&wait.map(|w| w.describe(now))));
                frag.extend_from_slice(b",\"estimated_start_s\":");
                let est = match wait {
                    Some(gosok_engine::WaitReason::Reserved { start_s }) => Some(start_s),
                    _ => None,
                };
                frag.extend(json(&est));
                reasons.push((wait, frag));
                reasons.len() - 1
            }
        };
        let key = j.tenant.as_ptr();
        let ti = match tenants.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                tenants.push((key, json(&&*j.tenant)));
                tenants.len() - 1
            }
        };
        if n > 0 {
            out.push(b',');
        }
        let (whole, frac) = (j.accel_milli / 1000, j.accel_milli % 1000);
        let _ = write!(out, "{{\"position\":{pos},\"id\":{},\"tenant\":", j.id);
        out.extend_from_slice(&tenants[ti].1);
        out.extend_from_slice(b",\"name\":");
        match j.name.as_deref() {
            None => out.extend_from_slice(b"null"),
            Some(nm) => {
                let _ = serde_json::to_writer(&mut out, nm);
            }
        }
        if frac == 0 {
            let _ = write!(out, ",\"accelerators\":{whole}.0");
        } else {
            let f = format!("{frac:03}");
            let _ = write!(out, ",\"accelerators\":{whole}.{}", f.trim_end_matches('0'));
        }
        let _ = write!(out, ",\"submitted_at_ms\":{},", j.submitted_ms);
        out.extend_from_slice(&reasons[ri].1);
        out.push(b'}');
        n += 1;
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// Serialising through a `dyn` reference, for the fragment cache above.
mod erased {
    pub trait Ser {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_else(|_| b"null".to_vec())
        }
    }
}

// ---- handlers: topology ------------------------------------------------------------------

/// The declared highway with each node's current state, runs kept where their nodes agree.
pub fn export(core: &Core) -> ClusterSpec {
    let mut c = core.cluster().clone();
    let states = core.node_states();
    let mut nodes = Vec::new();
    for n in &c.node {
        match n.count {
            None => {
                let mut n = n.clone();
                n.state = states.get(&n.name).copied().unwrap_or(n.state);
                nodes.push(n);
            }
            Some(count) => {
                let width = (count.max(1) - 1).to_string().len().max(3);
                let names: Vec<String> = (0..count)
                    .map(|k| format!("{}-{:0width$}", n.name, k))
                    .collect();
                let mut st: Vec<NodeState> = names
                    .iter()
                    .map(|x| states.get(x).copied().unwrap_or(n.state))
                    .collect();
                st.dedup();
                if st.len() <= 1 {
                    let mut n = n.clone();
                    n.state = st.into_iter().next().unwrap_or(n.state);
                    nodes.push(n);
                } else {
                    // States differ within the run: write its nodes one by one.
                    for x in names {
                        let mut one = n.clone();
                        one.count = None;
                        one.state = states.get(&x).copied().unwrap_or(n.state);
                        one.name = x;
                        nodes.push(one);
                    }
                }
            }
        }
    }
    c.node = nodes;
    c
}

async fn get_topology(State(app): State<AppState>, headers: HeaderMap) -> Result<Response> {
    principal(&app, &headers)?.require_admin()?;
    let core = app.core();
    Ok(ok(
        serde_json::to_value(export(&core)).unwrap_or(Value::Null)
    ))
}

/// Diffs sites (or racks) by name. A changed power figure alone is applied in place by the
/// entry `power`; anything else added, removed or changed is structural (the engine is
/// rebuilt). Returns whether something structural changed.
#[allow(clippy::too_many_arguments)]
fn diff_powered<T: Clone + PartialEq>(
    kind: &str,
    field: &str,
    new: &[T],
    old: &[T],
    key: impl Fn(&T) -> (&String, f64),
    set_power: impl Fn(&mut T, f64),
    power: impl Fn(&T) -> Entry,
    changes: &mut Vec<String>,
    entries: &mut Vec<Entry>,
) -> bool {
    let mut structural = false;
    for n in new {
        let (name, w) = key(n);
        match old.iter().find(|o| key(o).0 == name) {
            None => {
                changes.push(format!("{kind} {name}: added"));
                structural = true;
            }
            Some(o) => {
                let mut same_but_power = o.clone();
                set_power(&mut same_but_power, w);
                let was = key(o).1;
                if same_but_power != *n {
                    changes.push(format!("{kind} {name}: changed"));
                    structural = true;
                } else if was != w {
                    changes.push(format!("{kind} {name}: {field} {was} -> {w}"));
                    entries.push(power(n));
                }
            }
        }
    }
    for o in old {
        let name = key(o).0;
        if !new.iter().any(|n| key(n).0 == name) {
            changes.push(format!("{kind} {name}: removed"));
            structural = true;
        }
    }
    structural
}

/// What applying `new` changes, and the entries that do it.
fn plan_topology(core: &Core, new: &ClusterSpec, by: &str) -> Result<(Vec<String>, Vec<Entry>)> {
    let catalog = core.catalog();
    let resolved_new = new.resolve(catalog).map_err(|e| {
        ApiError::invalid(e.field, e.message).with_status(StatusCode::UNPROCESSABLE_ENTITY)
    })?;
    let old = core.cluster();
    let resolved_old = old.resolve(catalog).unwrap_or_default();
    let mut changes = Vec::new();
    let mut entries = Vec::new();
    let mut structural = diff_powered(
        "site",
        "power_budget_mw",
        &new.site,
        &old.site,
        |s| (&s.name, s.power_budget_mw),
        |s, mw| s.power_budget_mw = mw,
        |s| Entry::SitePowerBudget {
            site: s.name.clone(),
            power_budget_mw: s.power_budget_mw,
            by: by.into(),
        },
        &mut changes,
        &mut entries,
    );
    structural |= diff_powered(
        "rack",
        "power_cap_kw",
        &new.rack,
        &old.rack,
        |r| (&r.name, r.power_cap_kw),
        |r, kw| r.power_cap_kw = kw,
        |r| Entry::RackPowerCap {
            rack: r.name.clone(),
            power_cap_kw: r.power_cap_kw,
            by: by.into(),
        },
        &mut changes,
        &mut entries,
    );
    let shape = |n: &gosok_model::ResolvedNode| {
        let mut s = n.spec.clone();
        s.name = String::new();
        s.count = None;
        s.state = NodeState::Down;
        (n.site, n.rack, s)
    };
    let old_nodes: BTreeMap<&str, &gosok_model::ResolvedNode> =
        resolved_old.iter().map(|n| (n.name.as_str(), n)).collect();
    let new_names: BTreeSet<&str> = resolved_new.iter().map(|n| n.name.as_str()).collect();
    let (mut added, mut changed, mut removed) = (0, 0, 0);
    for n in &resolved_new {
        match old_nodes.get(n.name.as_str()) {
            None => added += 1,
            Some(o) => {
                let (os, or, ospec) = shape(o);
                let (ns, nr, nspec) = shape(n);
                let same_place = old.rack[or].name == new.rack[nr].name
                    && old.site[os].name == new.site[ns].name;
                if !same_place || ospec != nspec {
                    changed += 1;
                }
            }
        }
    }
    for o in &resolved_old {
        if !new_names.contains(o.name.as_str()) {
            removed += 1;
        }
    }
    for (k, what) in [(added, "added"), (changed, "changed"), (removed, "removed")] {
        if k > 0 {
            changes.push(format!("nodes: {k} {what}"));
            structural = true;
        }
    }
    let mut tenants = Vec::new();
    for t in &new.tenant {
        match core.tenant(&t.name) {
            None => {
                changes.push(format!("tenant {}: added", t.name));
                tenants.push(t.clone());
            }
            Some(o) if o != t => {
                changes.push(format!("tenant {}: changed", t.name));
                tenants.push(t.clone());
            }
            Some(_) => {}
        }
    }
    for o in &old.tenant {
        if !new.tenant.iter().any(|t| t.name == o.name) {
            changes.push(format!(
                "tenant {}: kept (tenants are never removed)",
                o.name
            ));
        }
    }
    if structural {
        core.check_topology(new).map_err(ApiError::from_refusal)?;
        let mut c = new.clone();
        // The file may not set the state of a node that exists (agents and drains own it).
        c.tenant = old.tenant.clone();
        for t in &tenants {
            match c.tenant.iter_mut().find(|x| x.name == t.name) {
                Some(x) => *x = t.clone(),
                None => c.tenant.push(t.clone()),
            }
        }
        entries = vec![Entry::Topology {
            cluster: c,
            by: by.into(),
        }];
    } else {
        for t in tenants {
            entries.push(Entry::Tenant {
                spec: t,
                by: by.into(),
            });
        }
    }
    Ok((changes, entries))
}

impl ApiError {
    fn with_status(mut self, s: StatusCode) -> ApiError {
        self.status = s;
        self
    }
}

/// Applies entries in order, waiting for the last to be durable.
async fn commit_all(app: &App, entries: Vec<Entry>) -> Result<Vec<Decision>> {
    let mut last = None;
    let mut decisions = Vec::new();
    {
        let mut core = app.core();
        for e in entries {
            let (seq, applied) = app.commit(&mut core, e)?;
            decisions.extend(applied.decisions);
            last = Some(seq);
        }
    }
    if let Some(seq) = last {
        app.durable(seq).await?;
    }
    Ok(decisions)
}

fn parse_cluster(headers: &HeaderMap, b: &[u8]) -> Result<ClusterSpec> {
    let toml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("toml"));
    if toml {
        let text = std::str::from_utf8(b)
            .map_err(|_| ApiError::invalid("", "the TOML body is not UTF-8"))?;
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let p = e.path().to_string();
            ApiError::invalid(
                if p == "." { String::new() } else { p },
                e.into_inner().to_string(),
            )
        })
    } else {
        parse_json(b)
    }
}

async fn put_topology(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    p.require_admin()?;
    let q = query(raw, &["dry_run"])?;
    let dry = match q.get("dry_run").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(v) => {
            return Err(ApiError::invalid(
                "dry_run",
                format!("{v:?}: use true or false"),
            ));
        }
    };
    let b = body(b)?;
    let spec = parse_cluster(&headers, &b)?;
    apply_topology(&app, &p, spec, dry, StatusCode::OK).await
}

async fn apply_topology(
    app: &App,
    p: &Principal,
    spec: ClusterSpec,
    dry: bool,
    status: StatusCode,
) -> Result<Response> {
    let (changes, entries) = {
        let core = app.core();
        plan_topology(&core, &spec, p.token_id())?
    };
    let decisions = if dry {
        Vec::new()
    } else {
        commit_all(app, entries).await?
    };
    Ok((
        status,
        axum::Json(json!({
            "changed": changes,
            "dry_run": dry,
            "decisions": decisions,
        })),
    )
        .into_response())
}

async fn create_site(
    State(app): State<AppState>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    p.require_admin()?;
    let site: SiteSpec = parse_json(&body(b)?)?;
    let spec = {
        let core = app.core();
        if core.cluster().site.iter().any(|s| s.name == site.name) {
            return Err(ApiError::conflict(format!("site {:?} exists", site.name)).field("name"));
        }
        let mut c = export(&core);
        c.site.push(site);
        c
    };
    apply_topology(&app, &p, spec, false, StatusCode::CREATED).await
}

async fn create_rack(
    State(app): State<AppState>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    p.require_admin()?;
    let rack: RackSpec = parse_json(&body(b)?)?;
    let spec = {
        let core = app.core();
        if core.cluster().rack.iter().any(|r| r.name == rack.name) {
            return Err(ApiError::conflict(format!("rack {:?} exists", rack.name)).field("name"));
        }
        let mut c = export(&core);
        c.rack.push(rack);
        c
    };
    apply_topology(&app, &p, spec, false, StatusCode::CREATED).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteUpdate {
    power_budget_mw: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RackUpdate {
    power_cap_kw: f64,
}

fn power_result(decisions: Vec<Decision>) -> Value {
    let shed: Vec<&Decision> = decisions
        .iter()
        .filter(|d| matches!(d, Decision::Shed { .. }))
        .collect();
    json!({"shed": shed, "decisions": decisions})
}

async fn update_site(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    update_power(&app, &headers, b, |u: SiteUpdate, by| {
        Entry::SitePowerBudget {
            site: name,
            power_budget_mw: u.power_budget_mw,
            by,
        }
    })
    .await
}

async fn update_rack(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    update_power(&app, &headers, b, |u: RackUpdate, by| Entry::RackPowerCap {
        rack: name,
        power_cap_kw: u.power_cap_kw,
        by,
    })
    .await
}

/// A site budget or rack cap change (admin): the entry `make` builds from the body, and
/// what it shed.
async fn update_power<U: DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
    make: impl FnOnce(U, String) -> Entry,
) -> Result<Response> {
    let p = principal(app, headers)?;
    p.require_admin()?;
    let u: U = parse_json(&body(b)?)?;
    let d = commit_all(app, vec![make(u, p.token_id().into())]).await?;
    Ok(ok(power_result(d)))
}

async fn list_sites(State(app): State<AppState>, headers: HeaderMap) -> Result<Response> {
    principal(&app, &headers)?;
    let core = app.core();
    let c = core.engine().cluster();
    let mut sites = Vec::new();
    for s in &core.cluster().site {
        let Some(&i) = c.site_by_name.get(&s.name) else {
            continue;
        };
        let live = &c.sites[i as usize];
        let (mut total, mut used) = (0u64, 0u64);
        // Per model: nodes up, draining, down; accelerator thousandths in all, allocated,
        // and free on nodes that are up.
        let mut models: BTreeMap<&str, ([u64; 3], u64, u64, u64)> = BTreeMap::new();
        for n in c.nodes.iter().filter(|n| n.site == i) {
            let (devices, held) = (n.devices() as u64 * 1000, n.used_total_milli());
            total += devices;
            used += held;
            let model = n.model.map_or("", |m| &*c.model_names[m as usize]);
            let m = models.entry(model).or_default();
            m.0[match n.state {
                NodeState::Up => 0,
                NodeState::Draining => 1,
                NodeState::Down => 2,
            }] += 1;
            m.1 += devices;
            m.2 += held;
            if n.state == NodeState::Up {
                m.3 += devices.saturating_sub(held);
            }
        }
        let models: Vec<Value> = models
            .into_iter()
            .map(|(model, (nodes, devices, held, free))| {
                json!({"model": (!model.is_empty()).then_some(model),
                       "nodes_up": nodes[0], "nodes_draining": nodes[1], "nodes_down": nodes[2],
                       "accelerators": devices as f64 / 1000.0,
                       "accelerators_allocated": held as f64 / 1000.0,
                       "accelerators_free_up": free as f64 / 1000.0})
            })
            .collect();
        sites.push(json!({
            "name": s.name, "region": s.region, "jurisdiction": s.jurisdiction, "pue": s.pue,
            "power_budget_mw": s.power_budget_mw,
            "power_budget_w": live.budget_w,
            "power_draw_w": c.site_facility_draw_w(i),
            "it_draw_w": live.it_w,
            "accelerators": total as f64 / 1000.0,
            "accelerators_allocated": used as f64 / 1000.0,
            "models": models,
        }));
    }
    Ok(ok(json!({"sites": sites})))
}

async fn list_racks(State(app): State<AppState>, headers: HeaderMap) -> Result<Response> {
    principal(&app, &headers)?;
    let core = app.core();
    let c = core.engine().cluster();
    let racks: Vec<Value> = core
        .cluster()
        .rack
        .iter()
        .filter_map(|r| {
            let &i = c.rack_by_name.get(&r.name)?;
            let live = &c.racks[i as usize];
            Some(json!({
                "name": r.name, "site": r.site, "scale_up_domain": r.scale_up_domain,
                "power_cap_kw": r.power_cap_kw, "power_cap_w": live.cap_w, "it_draw_w": live.it_w,
                "nodes": live.nodes.len(),
            }))
        })
        .collect();
    Ok(ok(json!({"racks": racks})))
}

fn node_view(core: &Core, name: &str) -> Option<Value> {
    let c = core.engine().cluster();
    let &i = c.node_by_name.get(name)?;
    let n = &c.nodes[i as usize];
    Some(json!({
        "name": &*n.name,
        "site": &*c.sites[n.site as usize].name,
        "rack": &*c.racks[n.rack as usize].name,
        "state": n.state,
        "model": n.model.map(|m| c.model_names[m as usize].to_string()),
        "accelerators": n.devices(),
        "accelerators_allocated": n.used_total_milli() as f64 / 1000.0,
        "cpu_milli": n.cpu_total_milli,
        "cpu_milli_free": n.cpu_free_milli,
        "mem_mib": n.mem_total_mib,
        "mem_mib_free": n.mem_free_mib,
        "draw_w": n.draw_w,
        "tasks": n.tasks.len(),
    }))
}

async fn list_nodes(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    let q = query(raw, &["state", "offset", "limit"])?;
    let state = match q.get("state").map(String::as_str) {
        None => None,
        Some("up") => Some(NodeState::Up),
        Some("draining") => Some(NodeState::Draining),
        Some("down") => Some(NodeState::Down),
        Some(s) => {
            return Err(ApiError::invalid(
                "state",
                format!("{s:?}: use up, draining or down"),
            ));
        }
    };
    let offset = num(&q, "offset", 0, 0, u64::MAX)? as usize;
    let limit = num(&q, "limit", u64::MAX, 1, u64::MAX)? as usize;
    let core = app.core();
    let states = core.node_states();
    let matching = states
        .iter()
        .filter(|(_, s)| state.is_none_or(|want| **s == want));
    let total = matching.clone().count();
    let nodes: Vec<Value> = matching
        .skip(offset)
        .take(limit)
        .map(|(n, _)| n)
        .filter_map(|n| {
            let mut v = node_view(&core, n)?;
            v["isolation"] = json!(crate::agents::node_isolation(&core, n));
            // Which agent holds a node, and under which epoch, is for operators: a tenant
            // has no use for it, and it names what an agent's credentials act on.
            if p.is_admin() {
                v["agent"] = crate::agents::node_fields(&core, &app, n);
            }
            Some(v)
        })
        .collect();
    Ok(ok(json!({"nodes": nodes, "total": total})))
}

async fn set_node(
    app: &App,
    headers: &HeaderMap,
    name: String,
    state: NodeState,
) -> Result<Response> {
    let p = principal(app, headers)?;
    p.require_admin()?;
    commit_all(
        app,
        vec![Entry::NodeState {
            node: name.clone(),
            state,
            by: p.token_id().into(),
        }],
    )
    .await?;
    let core = app.core();
    node_view(&core, &name)
        .map(ok)
        .ok_or_else(|| ApiError::not_found(format!("node {name:?} is not known")))
}

async fn drain_node(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response> {
    set_node(&app, &headers, name, NodeState::Draining).await
}

async fn undrain_node(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response> {
    set_node(&app, &headers, name, NodeState::Up).await
}

// ---- handlers: catalog, tenants, tokens, audit --------------------------------------------

async fn get_catalog(State(app): State<AppState>, headers: HeaderMap) -> Result<Response> {
    principal(&app, &headers)?;
    let core = app.core();
    Ok(ok(json!({"models": core.catalog().models()})))
}

async fn add_model(
    State(app): State<AppState>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    p.require_admin()?;
    let m: AcceleratorModel = parse_json(&body(b)?)?;
    commit_all(
        &app,
        vec![Entry::CatalogAdd {
            model: m.clone(),
            by: p.token_id().into(),
        }],
    )
    .await?;
    Ok(created(json!(m)))
}

async fn list_tenants(State(app): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let p = principal(&app, &headers)?;
    let core = app.core();
    let tenants: Vec<Value> = core
        .cluster()
        .tenant
        .iter()
        .filter(|t| p.may_act_for(&t.name))
        .map(|t| tenant_view(&core, t))
        .collect();
    Ok(ok(json!({"tenants": tenants})))
}

fn tenant_view(core: &Core, t: &TenantSpec) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        let pending = core.pending_by_tenant().get(&*t.name).copied().unwrap_or(0);
        m.insert("pending".into(), json!(pending));
        m.insert("stored_bytes".into(), json!(core.stored_bytes(&t.name)));
        if let Value::Object(extra) = crate::usage::tenant_accounting(core, &t.name) {
            m.extend(extra);
        }
    }
    v
}

async fn show_tenant(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    if !p.may_act_for(&name) {
        return Err(ApiError::forbidden(
            "a tenant token sees its own tenant only",
        ));
    }
    let core = app.core();
    let t = core
        .tenant(&name)
        .ok_or_else(|| ApiError::not_found(format!("tenant {name:?} is not known")))?;
    Ok(ok(tenant_view(&core, t)))
}

async fn create_tenant(
    State(app): State<AppState>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    p.require_admin()?;
    let t: TenantSpec = parse_json(&body(b)?)?;
    {
        let core = app.core();
        if core.tenant(&t.name).is_some() {
            return Err(ApiError::conflict(format!(
                "tenant {:?} exists; PATCH /v1/tenants/{} updates it",
                t.name, t.name
            ))
            .field("name"));
        }
        t.validate(core.catalog())
            .map_err(|e| ApiError::invalid(e.field, e.message))?;
    }
    commit_all(
        &app,
        vec![Entry::Tenant {
            spec: t.clone(),
            by: p.token_id().into(),
        }],
    )
    .await?;
    let core = app.core();
    Ok(created(tenant_view(&core, &t)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantUpdate {
    tier: Option<Tier>,
    weight: Option<f64>,
    quotas: Option<Vec<QuotaSpec>>,
    allowed_jurisdictions: Option<Vec<String>>,
    share_cap: Option<f64>,
    default_priority: Option<PriorityClass>,
    max_priority: Option<PriorityClass>,
    max_pending_jobs: Option<u64>,
    max_job_bytes: Option<u64>,
    max_stored_bytes: Option<u64>,
}

async fn update_tenant(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    p.require_admin()?;
    let u: TenantUpdate = parse_json(&body(b)?)?;
    let t = {
        let core = app.core();
        let mut t = core
            .tenant(&name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("tenant {name:?} is not known")))?;
        if let Some(x) = u.tier {
            t.tier = x;
        }
        if let Some(x) = u.weight {
            t.weight = x;
        }
        if let Some(x) = u.quotas {
            t.quotas = x;
        }
        if let Some(x) = u.allowed_jurisdictions {
            t.allowed_jurisdictions = x;
        }
        if let Some(x) = u.share_cap {
            t.share_cap = x;
        }
        if let Some(x) = u.default_priority {
            t.default_priority = x;
        }
        if let Some(x) = u.max_priority {
            t.max_priority = Some(x);
        }
        if let Some(x) = u.max_pending_jobs {
            t.max_pending_jobs = Some(x);
        }
        if let Some(x) = u.max_job_bytes {
            t.max_job_bytes = Some(x);
        }
        if let Some(x) = u.max_stored_bytes {
            t.max_stored_bytes = Some(x);
        }
        t.validate(core.catalog())
            .map_err(|e| ApiError::invalid(e.field, e.message))?;
        t
    };
    commit_all(
        &app,
        vec![Entry::Tenant {
            spec: t.clone(),
            by: p.token_id().into(),
        }],
    )
    .await?;
    let core = app.core();
    Ok(ok(tenant_view(&core, &t)))
}

async fn create_token(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    p.require_admin()?;
    let (token, id, seq) = {
        let mut core = app.core();
        if core.tenant(&name).is_none() {
            return Err(ApiError::not_found(format!("tenant {name:?} is not known")));
        }
        let (token, entry) = crate::new_token_entry(&core, Some(&name), false);
        let id = entry.id.clone();
        let (seq, _) = app.commit(
            &mut core,
            Entry::TokenCreate {
                token: entry,
                by: p.token_id().into(),
            },
        )?;
        (token, id, seq)
    };
    app.durable(seq).await?;
    Ok(created(json!({"id": id, "tenant": name, "token": token})))
}

async fn create_admin_token(State(app): State<AppState>, headers: HeaderMap) -> Result<Response> {
    new_operator_token(&app, &headers, false).await
}

async fn create_agent_token(State(app): State<AppState>, headers: HeaderMap) -> Result<Response> {
    new_operator_token(&app, &headers, true).await
}

/// An admin token, or with `agent` a token that may act only as a node agent.
async fn new_operator_token(app: &App, headers: &HeaderMap, agent: bool) -> Result<Response> {
    let p = principal(app, headers)?;
    p.require_admin()?;
    let (token, id, seq) = {
        let mut core = app.core();
        let (token, entry) = crate::new_token_entry(&core, None, agent);
        let id = entry.id.clone();
        let (seq, _) = app.commit(
            &mut core,
            Entry::TokenCreate {
                token: entry,
                by: p.token_id().into(),
            },
        )?;
        (token, id, seq)
    };
    app.durable(seq).await?;
    Ok(created(
        json!({"id": id, "tenant": null, "agent": agent, "token": token}),
    ))
}

async fn list_tokens(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    if !p.may_act_for(&name) {
        return Err(ApiError::forbidden(
            "a tenant token sees its own tenant only",
        ));
    }
    let core = app.core();
    let tokens: Vec<Value> = core
        .tokens()
        .filter(|t| t.tenant.as_deref() == Some(name.as_str()))
        .map(|t| json!({"id": t.id, "tenant": t.tenant.as_deref(), "created_at_ms": t.created_ms, "revoked": t.revoked}))
        .collect();
    Ok(ok(json!({"tokens": tokens})))
}

async fn revoke_token(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    let (seq, tenant) = {
        let mut core = app.core();
        let t = core
            .tokens()
            .find(|t| t.id == id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("token {id:?} is not known")))?;
        match (&p, &t.tenant) {
            (Principal::Admin { .. }, _) => {}
            (Principal::Tenant { name, .. }, Some(tn)) if name == tn => {}
            _ => {
                return Err(ApiError::forbidden(
                    "a tenant token revokes its own tenant's tokens only",
                ));
            }
        }
        let (seq, _) = app.commit(
            &mut core,
            Entry::TokenRevoke {
                id: id.clone(),
                by: p.token_id().into(),
            },
        )?;
        (seq, t.tenant)
    };
    app.durable(seq).await?;
    Ok(ok(
        json!({"id": id, "tenant": tenant.as_deref(), "revoked": true}),
    ))
}

async fn audit_log(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    principal(&app, &headers)?.require_admin()?;
    let q = query(raw, &["after", "limit"])?;
    let after = num(&q, "after", 0, 0, u64::MAX)?;
    let limit = num(&q, "limit", 100, 1, 1000)? as usize;
    let durable = app.durable_seq();
    let records = app
        .reader()
        .page(after, limit, &["tick"])
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let events: Vec<Value> = records
        .into_iter()
        .filter(|r| r.seq <= durable)
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            // The entry is {"kind": {...}}: show what is inside.
            let mut body = match body {
                Value::Object(m) if m.len() == 1 => {
                    m.into_iter().next().map(|x| x.1).unwrap_or(Value::Null)
                }
                other => other,
            };
            // Token hashes are secrets' fingerprints: not for display.
            for k in ["token", "admin_token"] {
                if let Some(m) = body.get_mut(k).and_then(Value::as_object_mut) {
                    m.remove("sha256");
                }
            }
            json!({"seq": r.seq, "at_ms": r.at_ms, "kind": r.kind, "entry": body})
        })
        .collect();
    let next = events.last().and_then(|e| e["seq"].as_u64());
    Ok(ok(json!({"events": events, "next_after": next})))
}

impl RefusalKind {
    pub fn is_invalid(self) -> bool {
        self == RefusalKind::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn submissions_name_the_field_that_is_wrong() {
        let e = parse_submission(br#"{"groups":[{"replicas":2,"accelerators":"x"}]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("groups[0].accelerators"));
        let e = parse_submission(br#"{"groups":[{"accelerators":1}],"command":[1]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("command[0]"));
        let e = parse_submission(br#"{"groups":[{"accelerators":1}]} trailing"#).unwrap_err();
        assert_eq!(e.code, "malformed_json");
        let sub =
            parse_submission(br#"{"groups":[{"accelerators":1}],"command":["a","b"],"env":{"A_1":"x"},"workdir":"/tmp"}"#).unwrap();
        assert_eq!(sub.spec.groups.len(), 1);
        assert_eq!(sub.command, vec!["a", "b"]);
        assert_eq!(sub.env["A_1"], "x");
        assert_eq!(sub.workdir.as_deref(), Some("/tmp"));
        for (body, field) in [
            (
                r#"{"groups":[{"accelerators":1}],"env":{"1A":"x"}}"#,
                "env.1A",
            ),
            (
                r#"{"groups":[{"accelerators":1}],"env":{"A-B":"x"}}"#,
                "env.A-B",
            ),
            (r#"{"groups":[{"accelerators":1}],"env":{"A":1}}"#, "env.A"),
            (
                r#"{"groups":[{"accelerators":1}],"workdir":"relative"}"#,
                "workdir",
            ),
            (
                r#"{"groups":[{"accelerators":1}],"command":[""]}"#,
                "command[0]",
            ),
        ] {
            let e = parse_submission(body.as_bytes()).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{body}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused_naming_the_key() {
        for (body, field) in [
            (
                r#"{"name":"a","name":"b","groups":[{"accelerators":1}]}"#,
                "name",
            ),
            (
                r#"{"groups":[{"accelerators":1}],"env":{"A":"1","B":"2","A":"3"}}"#,
                "env.A",
            ),
            (
                r#"{"groups":[{"accelerators":1},{"accelerators":1,"replicas":1,"replicas":2}]}"#,
                "groups[1].replicas",
            ),
        ] {
            let e = parse_submission(body.as_bytes()).unwrap_err();
            assert_eq!(
                (e.code, e.field.as_deref()),
                ("duplicate_key", Some(field)),
                "{body}"
            );
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        // The same key in different objects is fine.
        parse_submission(br#"{"name":"a","groups":[{"accelerators":1,"name":"g"}]}"#).unwrap();
        // Malformed JSON is still named as such by the parser proper.
        let e = parse_json::<Value>(br#"{"a":1,"#).unwrap_err();
        assert_eq!(e.code, "malformed_json");
    }

    #[test]
    fn query_strings_decode_and_refuse_unknown_keys() {
        let q = query(
            Some("state=pending&tenant=a%2Db+c".into()),
            &["state", "tenant"],
        )
        .unwrap();
        assert_eq!(q["tenant"], "a-b c");
        assert_eq!(
            query(Some("x=1".into()), &["state"])
                .unwrap_err()
                .field
                .as_deref(),
            Some("x")
        );
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("%zz"), "%zz");
    }

    proptest! {
        /// The job-spec parser takes any bytes without panicking; what it accepts validates.
        #[test]
        fn the_submission_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(sub) = parse_submission(&bytes) {
                prop_assert!(sub.spec.validate().is_ok());
            }
        }

        #[test]
        fn mutated_specs_never_panic(i in 0usize..200, b in any::<u8>()) {
            let mut v = br#"{"name":"x","groups":[{"replicas":2,"accelerators":8,"models":["H100"]}],"constraints":{"topology":{"level":"rack"}}}"#.to_vec();
            let n = v.len();
            v[i % n] = b;
            let _ = parse_submission(&v);
        }
    }
}

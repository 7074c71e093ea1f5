//! The accounting routes: programmes, allocations (grants), a tenant's accounting policy,
//! prices. Each change is checked under the core lock and written as one
//! [`Entry::Account`] record; a refused change writes nothing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use gosok_model::Tier;

use crate::App;
use crate::api::{body, parse_json, principal, query};
use crate::core::{AccountChange, Allocation, Core, OnExhaustion};
use crate::dates;
use crate::entry::Entry;
use crate::error::ApiError;

type Result<T> = std::result::Result<T, ApiError>;

/// Checks and writes one change; answers once it is durable.
async fn commit(app: &App, change: AccountChange, by: &str) -> Result<()> {
    let seq = {
        let mut core = app.core();
        core.check_account(&change).map_err(ApiError::from)?;
        let entry = Entry::Account {
            change,
            by: by.to_string(),
        };
        app.commit(&mut core, entry)?.0
    };
    app.durable(seq).await
}

fn time(field: &str, s: &str) -> Result<u64> {
    dates::parse_time_s(s).map_err(|m| ApiError::invalid(field, m))
}

/// Accelerator-hours as thousandth-seconds: positive and finite.
fn hours_milli_s(field: &str, h: f64) -> Result<u64> {
    if !h.is_finite() || h <= 0.0 || h > 1e12 {
        return Err(ApiError::invalid(
            field,
            format!("{h} is not a number of hours in (0, 1e12]"),
        ));
    }
    Ok((h * 3_600_000.0).round() as u64)
}

fn hours(milli_s: u64) -> f64 {
    (milli_s as f64 / 3_600_000.0 * 1e6).round() / 1e6
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgrammeBody {
    name: String,
    #[serde(default)]
    tier: Option<Tier>,
    from: String,
    to: String,
    #[serde(default)]
    price_krw_per_accelerator_hour: Option<f64>,
}

fn programme_view(p: &crate::core::Programme) -> Value {
    json!({
        "name": p.name,
        "tier": p.tier,
        "from": dates::date_time(p.from_s),
        "to": dates::date_time(p.to_s),
        "price_krw_per_accelerator_hour": p.price_krw_per_accelerator_hour,
    })
}

pub async fn create_programme(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    p.require_admin()?;
    let req: ProgrammeBody = parse_json(&body(b)?)?;
    let change = AccountChange::Programme {
        name: req.name.clone(),
        tier: req.tier,
        from_s: time("from", &req.from)?,
        to_s: time("to", &req.to)?,
        price_krw_per_accelerator_hour: req.price_krw_per_accelerator_hour,
    };
    commit(&app, change, p.token_id()).await?;
    let core = app.core();
    let (_, prog) = core
        .accounts()
        .programme(&req.name)
        .ok_or_else(|| ApiError::internal("the programme was not recorded".into()))?;
    Ok((StatusCode::CREATED, axum::Json(programme_view(prog))).into_response())
}

pub async fn list_programmes(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response> {
    principal(&app, &headers)?;
    let core = app.core();
    let v: Vec<Value> = core
        .accounts()
        .programmes()
        .iter()
        .map(programme_view)
        .collect();
    Ok(axum::Json(json!({"programmes": v})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    tenant: String,
    programme: String,
    accelerator_hours: f64,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    class: Option<String>,
}

/// An allocation with its balance now: granted, drawn by closed attempts, accrued by
/// running ones so far, reserved by live jobs (tenant-wide), what is left.
pub fn allocation_view(core: &Core, a: &Allocation) -> Value {
    let acc = core.accounts();
    let p = &acc.programmes()[a.programme as usize];
    let now = core.engine().now_s();
    let state = if now < p.from_s {
        "not_started"
    } else if now >= p.to_s {
        "expired"
    } else if a.remaining_milli_s() == 0 {
        "exhausted"
    } else {
        "active"
    };
    json!({
        "id": a.id,
        "tenant": a.tenant,
        "programme": p.name,
        "tier": p.tier,
        "model": a.model,
        "class": a.class,
        "from": dates::date_time(p.from_s),
        "to": dates::date_time(p.to_s),
        "granted_accelerator_hours": hours(a.granted_milli_s),
        "drawn_accelerator_hours": hours(a.drawn_milli_s),
        // An expired allocation stops counting: nothing of it is left to draw.
        "balance_accelerator_hours": if state == "expired" { 0.0 } else { hours(a.remaining_milli_s()) },
        "state": state,
        "value_krw": p.price_krw_per_accelerator_hour.map(|x| (x * hours(a.granted_milli_s)).round()),
    })
}

pub async fn grant(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    p.require_admin()?;
    let req: GrantBody = parse_json(&body(b)?)?;
    let change = AccountChange::Grant {
        tenant: req.tenant.clone(),
        programme: req.programme,
        accelerator_milli_s: hours_milli_s("accelerator_hours", req.accelerator_hours)?,
        model: req.model,
        class: req.class,
    };
    commit(&app, change, p.token_id()).await?;
    let core = app.core();
    let a = core
        .accounts()
        .allocations()
        .iter()
        .rev()
        .find(|a| a.tenant == req.tenant)
        .ok_or_else(|| ApiError::internal("the allocation was not recorded".into()))?;
    Ok((StatusCode::CREATED, axum::Json(allocation_view(&core, a))).into_response())
}

pub async fn list_allocations(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    let q = query(raw, &["tenant"])?;
    let tenant = match (p.tenant(), q.get("tenant")) {
        (Some(own), Some(t)) if **own != **t => {
            return Err(ApiError::forbidden(
                "a tenant token sees its own allocations only",
            ));
        }
        (Some(own), _) => Some(own.to_string()),
        (None, t) => t.cloned(),
    };
    let core = app.core();
    if let Some(t) = &tenant
        && core.tenant(t).is_none()
    {
        return Err(ApiError::invalid(
            "tenant",
            format!("tenant {t:?} is not known"),
        ));
    }
    let v: Vec<Value> = core
        .accounts()
        .allocations()
        .iter()
        .filter(|a| tenant.as_deref().is_none_or(|t| a.tenant == t))
        .map(|a| allocation_view(&core, a))
        .collect();
    let mut tenants: Vec<&str> = v.iter().filter_map(|a| a["tenant"].as_str()).collect();
    tenants.dedup();
    let reserved: serde_json::Map<String, Value> = tenants
        .iter()
        .map(|t| {
            (
                t.to_string(),
                json!(hours(core.accounts().reserved_milli_s(t))),
            )
        })
        .collect();
    Ok(
        axum::Json(json!({"allocations": v, "reserved_accelerator_hours": reserved}))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    #[serde(default)]
    allow_scavenger: Option<bool>,
    #[serde(default)]
    on_exhaustion: Option<OnExhaustion>,
}

pub async fn set_policy(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    p.require_admin()?;
    let req: PolicyBody = parse_json(&body(b)?)?;
    let old = app.core().accounts().policy(&name);
    let change = AccountChange::Policy {
        tenant: name.clone(),
        allow_scavenger: req.allow_scavenger.unwrap_or(old.allow_scavenger),
        on_exhaustion: req.on_exhaustion.unwrap_or(old.on_exhaustion),
    };
    commit(&app, change, p.token_id()).await?;
    let now = app.core().accounts().policy(&name);
    Ok(axum::Json(json!({
        "tenant": name,
        "allow_scavenger": now.allow_scavenger,
        "on_exhaustion": now.on_exhaustion.name(),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    tier: Option<Tier>,
    krw_per_accelerator_hour: f64,
    #[serde(default)]
    krw_per_kwh: f64,
}

fn price_view(p: &crate::core::Price) -> Value {
    json!({
        "version": p.version,
        "from": dates::date_time(p.from_s),
        "model": p.model,
        "site": p.site,
        "tier": p.tier,
        "krw_per_accelerator_hour": p.krw_per_accelerator_hour,
        "krw_per_kwh": p.krw_per_kwh,
    })
}

pub async fn set_price(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let p = principal(&app, &headers)?;
    p.require_admin()?;
    let req: PriceBody = parse_json(&body(b)?)?;
    let from_s = match &req.from {
        Some(f) => time("from", f)?,
        None => app.core().engine().now_s(),
    };
    let change = AccountChange::Price {
        from_s,
        model: req.model,
        site: req.site,
        tier: req.tier,
        krw_per_accelerator_hour: req.krw_per_accelerator_hour,
        krw_per_kwh: req.krw_per_kwh,
    };
    commit(&app, change, p.token_id()).await?;
    let core = app.core();
    let v = core
        .accounts()
        .prices()
        .last()
        .map(price_view)
        .unwrap_or(Value::Null);
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

pub async fn list_prices(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response> {
    principal(&app, &headers)?;
    let core = app.core();
    let v: Vec<Value> = core.accounts().prices().iter().map(price_view).collect();
    Ok(axum::Json(json!({"prices": v})).into_response())
}

/// The OpenAPI schemas of the accounting and usage routes.
pub fn schemas(m: &mut serde_json::Map<String, Value>) {
    use crate::openapi::{arr, int, nullable, num, obj, open_obj, r, s};
    let tier = json!({"type": ["string", "null"], "enum": ["anchor", "commercial", "public", "academic", "startup", null]});
    let date = json!({"type": "string", "description": "YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)"});
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    put(
        "Programme",
        obj(
            json!({"name": s(), "tier": tier, "from": date, "to": date,
                   "price_krw_per_accelerator_hour": nullable("number")}),
            &["name", "from", "to"],
        ),
    );
    put(
        "ProgrammeList",
        open_obj(json!({"programmes": arr(r("Programme"))})),
    );
    put(
        "Grant",
        obj(
            json!({"tenant": s(), "programme": s(), "accelerator_hours": num(),
                   "model": nullable("string"), "class": nullable("string")}),
            &["tenant", "programme", "accelerator_hours"],
        ),
    );
    put(
        "Allocation",
        open_obj(
            json!({"id": int(), "tenant": s(), "programme": s(), "tier": tier, "model": nullable("string"),
            "class": nullable("string"), "from": s(), "to": s(), "granted_accelerator_hours": num(),
            "drawn_accelerator_hours": num(), "balance_accelerator_hours": num(),
            "state": {"type": "string", "enum": ["not_started", "active", "exhausted", "expired"]},
            "value_krw": nullable("number")}),
        ),
    );
    put(
        "AllocationList",
        open_obj(json!({"allocations": arr(r("Allocation")),
            "reserved_accelerator_hours": {"type": "object", "additionalProperties": num()}})),
    );
    put(
        "AccountingPolicy",
        obj(
            json!({"allow_scavenger": {"type": "boolean"},
                   "on_exhaustion": {"type": "string", "enum": ["finish", "preempt"]}}),
            &[],
        ),
    );
    put(
        "Price",
        obj(
            json!({"from": date, "model": nullable("string"), "site": nullable("string"), "tier": tier,
                   "krw_per_accelerator_hour": num(), "krw_per_kwh": num()}),
            &["krw_per_accelerator_hour"],
        ),
    );
    put(
        "PriceList",
        open_obj(json!({"prices": arr(open_obj(json!({"version": int()})))})),
    );
    let sums = json!({"accelerator_seconds": num(), "accelerator_hours": num(), "hbm_gib_hours": num(),
        "cpu_core_hours": num(), "memory_gib_hours": num(), "energy_kwh": num(),
        "measured_energy_kwh": nullable("number"), "cost_krw": num(), "attempts": int()});
    let mut row = sums.clone();
    for k in ["tenant", "model", "site", "programme", "day"] {
        row[k] = s();
    }
    row["job"] = int();
    put(
        "Usage",
        open_obj(json!({"from": s(), "to": s(), "group_by": arr(s()),
            "rows": arr(open_obj(row)), "totals": open_obj(sums)})),
    );
    put(
        "ShareReport",
        open_obj(
            json!({"from": s(), "to": s(), "highway_accelerator_value": num(),
            "tenants": arr(open_obj(json!({"tenant": s(), "share_cap": num(), "peak_share": num(),
                "peak_at": s(), "average_share": num(), "seconds_over_cap": int(),
                "accelerator_value_hours": num(), "within_cap": {"type": "boolean"}})))}),
        ),
    );
    put(
        "FairnessReport",
        open_obj(json!({"from": s(), "to": s(), "jain_index": num(),
            "tenants": arr(open_obj(json!({"tenant": s(), "accelerator_hours": num(), "share_received": num(),
                "entitlement": num(), "preemptions_suffered": int(), "work_lost_accelerator_hours": num(),
                "preemptions_caused": int(), "work_caused_lost_accelerator_hours": num()})))})),
    );
    put(
        "Statement",
        open_obj(json!({"tenant": s(), "month": s(), "from": s(), "to": s(),
            "lines": arr(open_obj(json!({"job": int(), "attempt": int(), "model": s(), "site": s(),
                "started": s(), "ended": s(), "end": s(), "accelerator_seconds": num(),
                "energy_kwh": num(), "measured_energy_kwh": nullable("number"), "cost_krw": int(),
                "drawn": arr(open_obj(json!({"allocation": nullable("integer"), "accelerator_seconds": num()})))}))),
            "totals": open_obj(json!({"accelerator_seconds": num(), "energy_kwh": num(), "cost_krw": int(),
                "measured_energy_kwh": nullable("number"), "uncovered_accelerator_seconds": num()})),
            "allocations": arr(open_obj(json!({"allocation": int(), "programme": s()})))})),
    );
}

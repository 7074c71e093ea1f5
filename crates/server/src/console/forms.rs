//! The console's forms: each checks the session and its CSRF token, then makes the one API
//! call it stands for, and returns to a page with what happened (or the API's error).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::text::{Msg, url_part};
use super::{Console, Cs, Session, flash, form, html, local_path, pages, redirect};

/// A form without this session's CSRF token: refused, nothing done.
pub fn refused(s: &Session) -> Response {
    let main = format!(
        "<h1>{}</h1><p class=\"error\" role=\"alert\">{}</p>",
        Msg::Forbidden.text(s.lang),
        Msg::FormExpired.text(s.lang)
    );
    html(
        StatusCode::FORBIDDEN,
        pages::layout_plain(s.lang, Msg::Forbidden.text(s.lang), &main),
    )
}

/// The session and the form's fields, or the response that refuses the request.
fn checked(
    cs: &Console,
    headers: &HeaderMap,
    body: &[u8],
    fields: &[&str],
) -> Result<(Session, BTreeMap<String, String>), Box<Response>> {
    let Some(s) = cs.session(headers) else {
        return Err(Box::new(redirect("/signin")));
    };
    // Fields it does not know: not this console's form.
    let Ok(f) = form(body, fields) else {
        return Err(Box::new(refused(&s)));
    };
    if !cs.csrf_ok(&s, headers, &f) {
        return Err(Box::new(refused(&s)));
    }
    Ok((s, f))
}

/// After an API call: back to `to` with what happened.
fn back(cs: &Console, to: &str, message: &str) -> Response {
    let mut r = redirect(to);
    flash(cs, &mut r, message);
    r
}

pub async fn cancel(
    State(cs): State<Cs>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (s, _) = match checked(&cs, &headers, &body, &["csrf"]) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let id = url_part(&id);
    let r = cs
        .call(&s, Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
        .await;
    let to = format!("/jobs/{id}");
    if r.status.is_success() {
        back(&cs, &to, Msg::Cancelled.text(s.lang))
    } else {
        back(
            &cs,
            &to,
            &format!("{}: {}", Msg::Error.text(s.lang), r.message()),
        )
    }
}

pub async fn drain(
    State(cs): State<Cs>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    node_state(cs, headers, name, body, "drain", Msg::Drained).await
}

pub async fn undrain(
    State(cs): State<Cs>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    node_state(cs, headers, name, body, "undrain", Msg::Undrained).await
}

async fn node_state(
    cs: Cs,
    headers: HeaderMap,
    name: String,
    body: Bytes,
    action: &str,
    done: Msg,
) -> Response {
    let (s, f) = match checked(&cs, &headers, &body, &["csrf", "next"]) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let r = cs
        .call(
            &s,
            Method::POST,
            &format!("/v1/nodes/{}/{action}", url_part(&name)),
            None,
        )
        .await;
    let to = local_path(f.get("next"));
    if r.status.is_success() {
        back(&cs, &to, &format!("{}: {name}", done.text(s.lang)))
    } else {
        back(
            &cs,
            &to,
            &format!("{}: {}", Msg::Error.text(s.lang), r.message()),
        )
    }
}

pub async fn budget(
    State(cs): State<Cs>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let (s, f) = match checked(&cs, &headers, &body, &["csrf", "power_budget_mw"]) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let raw = f.get("power_budget_mw").map(|v| v.trim()).unwrap_or("");
    let Some(mw) = raw.parse::<f64>().ok().filter(|x| x.is_finite()) else {
        return back(
            &cs,
            "/",
            &format!(
                "{}: power_budget_mw: {raw:?} is not a number of megawatts",
                Msg::Error.text(s.lang)
            ),
        );
    };
    let r = cs
        .call(
            &s,
            Method::PATCH,
            &format!("/v1/sites/{}", url_part(&name)),
            Some(json!({"power_budget_mw": mw}).to_string().into_bytes()),
        )
        .await;
    if !r.status.is_success() {
        return back(
            &cs,
            "/",
            &format!("{}: {}", Msg::Error.text(s.lang), r.message()),
        );
    }
    let v = r.json();
    let shed: Vec<&Value> = v["shed"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let jobs: usize = shed
        .iter()
        .map(|d| d["jobs"].as_array().map_or(0, Vec::len))
        .sum();
    let still_over = shed.iter().any(|d| d["still_over"].as_bool() == Some(true));
    let mut msg = format!(
        "{} ({name}: {} MW) · {jobs} {}",
        Msg::BudgetSet.text(s.lang),
        super::text::dec(mw, 3),
        Msg::Shed.text(s.lang)
    );
    if still_over {
        msg.push_str(&format!(" · {}", Msg::StillOver.text(s.lang)));
    }
    back(&cs, "/", &msg)
}

/// Fields of the submit form.
pub const SUBMIT_FIELDS: &[&str] = &[
    "csrf",
    "tenant",
    "name",
    "replicas",
    "accelerators",
    "model",
    "command",
    "runtime_limit_min",
    "priority",
    "preemptible",
];

pub async fn submit(State(cs): State<Cs>, headers: HeaderMap, body: Bytes) -> Response {
    let (s, f) = match checked(&cs, &headers, &body, SUBMIT_FIELDS) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let (status, message) = match submission(&f) {
        Err(m) => (StatusCode::BAD_REQUEST, m),
        Ok(spec) => {
            let uri = match (&s.tenant, f.get("tenant")) {
                (None, Some(t)) if !t.is_empty() => format!("/v1/jobs?tenant={}", url_part(t)),
                _ => "/v1/jobs".to_string(),
            };
            let r = cs
                .call(&s, Method::POST, &uri, Some(spec.to_string().into_bytes()))
                .await;
            if r.status.is_success() {
                let id = r.json()["id"].as_u64().unwrap_or(0);
                return redirect(&format!("/jobs/{id}"));
            }
            (r.status, r.message())
        }
    };
    let main = pages::submit_form(&cs, &s, &f, Some(&message)).await;
    html(
        status,
        pages::layout(
            &cs,
            Some(&s),
            s.lang,
            "/submit",
            Msg::Submit.text(s.lang),
            &main,
            None,
            None,
        ),
    )
}

/// The job the form describes, as the API's JSON; an error names the form's field.
fn submission(f: &BTreeMap<String, String>) -> Result<Value, String> {
    let get = |k: &str| f.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let replicas: u64 = match get("replicas") {
        None => 1,
        Some(r) => r
            .parse()
            .map_err(|_| format!("replicas: {r:?} is not a whole number"))?,
    };
    let mut group = json!({"replicas": replicas});
    match get("accelerators") {
        None => group["accelerators"] = json!(1),
        Some(a) => match a.parse::<u64>() {
            Ok(n) => group["accelerators"] = json!(n),
            Err(_) => {
                let x: f64 = a
                    .parse()
                    .ok()
                    .filter(|x: &f64| x.is_finite() && *x > 0.0 && *x < 1.0)
                    .ok_or_else(|| {
                        format!(
                            "accelerators: {a:?} is neither a whole number nor a fraction between 0 and 1"
                        )
                    })?;
                group["accelerator_milli"] = json!((x * 1000.0).round() as u64);
            }
        },
    }
    if let Some(m) = get("model") {
        group["models"] = json!([m]);
    }
    let mut spec = json!({"groups": [group]});
    if let Some(n) = get("name") {
        spec["name"] = json!(n);
    }
    if let Some(p) = get("priority") {
        spec["priority"] = json!(p);
    }
    spec["preemptible"] = json!(f.contains_key("preemptible"));
    if let Some(m) = get("runtime_limit_min") {
        let min: u64 = m
            .parse()
            .map_err(|_| format!("runtime_limit_min: {m:?} is not a whole number of minutes"))?;
        spec["runtime_limit_s"] = json!(min.saturating_mul(60));
    }
    if let Some(c) = get("command") {
        spec["command"] = json!(["sh", "-c", c]);
    }
    Ok(spec)
}

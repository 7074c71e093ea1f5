//! The web console, served by the controller at `/`: server-rendered HTML pages for operators
//! and tenants, with live updates over Server-Sent Events (`live.rs`) and SVG charts drawn here
//! (`charts.rs`).
//!
//! The console is a client of the API, in process: every page and every form calls the same
//! router the API serves (`api::router`), with the signed-in token as its bearer token. So a
//! tenant sees and changes exactly what the API lets its token see and change — there is no
//! second set of access rules to keep in step.
//!
//! Sign-in keeps the token in an HttpOnly, SameSite=Strict cookie (Secure under TLS). Every
//! form carries a CSRF token, an HMAC of the session token under a key made at start; a form
//! without the right one is refused (403). Sign-in itself is protected the same way, with a
//! pre-session cookie.

mod charts;
mod live;
mod pages;
mod text;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower_service::Service;

use crate::App;
use crate::auth::Principal;
pub use text::Lang;
use text::{Msg, esc};

/// Rows per page of every table that can be long.
pub const PAGE_ROWS: usize = 50;

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// What the console's handlers share: the app, the API router it calls, and the key of its
/// CSRF tokens.
pub struct Console {
    pub app: Arc<App>,
    api: Router,
    csrf_key: [u8; 32],
    /// Live-update streams open now, and the most there may be.
    live: Arc<live::Slots>,
    /// A short fingerprint of the assets, so that browsers may cache them until they change.
    asset_version: String,
    secure_cookies: bool,
}

type Cs = Arc<Console>;

/// The router: the console's pages and forms, and everything else to the API router.
pub fn router(app: Arc<App>, api: Router) -> Router {
    let mut key = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut key) {
        panic!("no randomness for the console's CSRF key: {e}");
    }
    let asset_version =
        crate::auth::hex(&crate::auth::sha256(format!("{CSS}{JS}").as_bytes()))[..12].to_string();
    let secure_cookies = app.cfg.tls_cert.is_some();
    let cs = Arc::new(Console {
        app,
        api: api.clone(),
        csrf_key: key,
        live: live::Slots::new(
            live::MAX_STREAMS,
            live::MAX_STREAMS_PER_PRINCIPAL,
            live::ADMIN_RESERVED,
        ),
        asset_version,
        secure_cookies,
    });
    Router::new()
        .route("/", get(page))
        .route("/queue", get(page))
        .route("/jobs", get(page))
        .route("/jobs/{id}", get(page))
        .route("/submit", get(page).post(forms::submit))
        .route("/tenants", get(page))
        .route("/nodes", get(page))
        .route("/audit", get(page))
        .route("/signin", get(signin_page).post(signin))
        .route("/signout", post(signout))
        .route("/jobs/{id}/cancel", post(forms::cancel))
        .route("/nodes/{name}/drain", post(forms::drain))
        .route("/nodes/{name}/undrain", post(forms::undrain))
        .route("/sites/{name}/budget", post(forms::budget))
        .route("/console/lang", get(set_lang))
        .route("/console/live", get(live::stream))
        .route("/console/static/console.css", get(css))
        .route("/console/static/console.js", get(js))
        .with_state(cs)
        .fallback_service(api)
}

// ---- sessions ------------------------------------------------------------------------------

/// Who is signed in, as the API's own authentication says.
#[derive(Clone)]
pub struct Session {
    token: String,
    /// The token's id (not the secret): what an admin's live streams are counted by.
    token_id: String,
    pub lang: Lang,
    pub admin: bool,
    pub tenant: Option<String>,
    csrf: String,
}

impl Session {
    pub fn csrf_field(&self) -> String {
        format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            esc(&self.csrf)
        )
    }
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn lang_of(headers: &HeaderMap) -> Lang {
    cookie(headers, "gosok_lang")
        .and_then(Lang::parse)
        .unwrap_or_else(|| {
            Lang::from_accept(
                headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            )
        })
}

impl Console {
    /// The CSRF token of `msg` under the console's key.
    fn mac(&self, msg: &str) -> String {
        crate::auth::hex(&hmac_sha256(&self.csrf_key, msg.as_bytes()))
    }

    /// The session of a request's cookie, if its token is still good.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let token = cookie(headers, "gosok_session")?;
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).ok()?,
        );
        // The API's own check: agent tokens and revoked tokens are refused here too.
        let p = crate::api::principal(&self.app, &h).ok()?;
        Some(Session {
            token: token.to_string(),
            token_id: p.token_id().to_string(),
            lang: lang_of(headers),
            admin: p.is_admin(),
            tenant: p.tenant().map(|t| t.to_string()),
            csrf: self.mac(&format!("session:{token}")),
        })
    }

    /// Whether a form's CSRF token is this session's. The browser's Origin, when sent, must
    /// be this server too.
    fn csrf_ok(&self, s: &Session, headers: &HeaderMap, form: &BTreeMap<String, String>) -> bool {
        same_origin(headers)
            && form
                .get("csrf")
                .is_some_and(|c| constant_time_eq(c.as_bytes(), s.csrf.as_bytes()))
    }

    fn cookie_attrs(&self) -> &'static str {
        if self.secure_cookies {
            "; Path=/; HttpOnly; SameSite=Strict; Secure"
        } else {
            "; Path=/; HttpOnly; SameSite=Strict"
        }
    }

    // ---- calling the API -----------------------------------------------------------------

    /// One request to the API router as `s`'s token would make it.
    pub async fn call(
        &self,
        s: &Session,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", s.token));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = match req.body(Body::from(body.unwrap_or_default())) {
            Ok(r) => r,
            Err(e) => return Reply::failed(format!("bad request to {uri}: {e}")),
        };
        let mut api = self.api.clone();
        let resp = match api.call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let (parts, body) = resp.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Reply::failed(format!("reading {uri}: {e}")),
        };
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A JSON GET that must succeed: its body, or the failure to show.
    pub async fn get_json(&self, s: &Session, uri: &str) -> Result<Value, Failure> {
        let r = self.call(s, Method::GET, uri, None).await;
        if r.status.is_success() {
            serde_json::from_slice(&r.body)
                .map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, e.to_string()))
        } else {
            Err(r.failure())
        }
    }
}

/// What the API answered.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    fn failed(message: String) -> Reply {
        Reply {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            headers: HeaderMap::new(),
            body: Bytes::from(
                serde_json::json!({"error": {"code": "console", "message": message}}).to_string(),
            ),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The API's error message, with the field it names.
    pub fn message(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        match (e["message"].as_str(), e["field"].as_str()) {
            (Some(m), Some(f)) => format!("{f}: {m}"),
            (Some(m), None) => m.to_string(),
            _ => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }

    pub fn failure(&self) -> Failure {
        Failure::new(self.status, self.message())
    }
}

/// A page that cannot be shown: the status and the API's message.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }
}

/// HMAC-SHA256 (RFC 2104) with a key of at most 64 bytes.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let (mut inner, mut outer) = (Sha256::new(), Sha256::new());
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request's Origin (when the browser sends one) names the host it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// A urlencoded form body or query string, refusing unknown fields.
pub fn form(raw: &[u8], allowed: &[&str]) -> Result<BTreeMap<String, String>, Failure> {
    let text = String::from_utf8_lossy(raw).into_owned();
    crate::api::query((!text.is_empty()).then_some(text), allowed).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("{}: {}", e.field.unwrap_or_default(), e.message),
        )
    })
}

// ---- responses -----------------------------------------------------------------------------

/// An HTML response with the console's security headers.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn set_cookie(r: &mut Response, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Only a path on this server (no scheme, no `//host`) may be a place to return to. Browsers
/// drop tabs and newlines from a Location and read `\` as `/`, so `/<TAB>/host` would leave the
/// site: a path with any of them (or any other control character or space) is refused.
fn local_path(next: Option<&String>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n
                    .chars()
                    .any(|c| c == '\\' || c.is_control() || c.is_whitespace()) =>
        {
            n.clone()
        }
        _ => "/".into(),
    }
}

/// A one-time message for the next page (after a form's redirect).
fn flash(cs: &Console, r: &mut Response, text: &str) {
    set_cookie(
        r,
        format!(
            "gosok_flash={}{}; Max-Age=60",
            text::url_part(text),
            cs.cookie_attrs()
        ),
    );
}

fn take_flash(cs: &Console, headers: &HeaderMap, r: &mut Response) -> Option<String> {
    let f = cookie(headers, "gosok_flash")?;
    set_cookie(r, format!("gosok_flash={}; Max-Age=0", cs.cookie_attrs()));
    let bytes = crate::api::query(Some(format!("f={f}")), &["f"]).ok()?;
    bytes.get("f").cloned()
}

// ---- handlers ------------------------------------------------------------------------------

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(ctype: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    // Pages name assets with their fingerprint (?v=), so a cached copy is never stale.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400, immutable"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Any page: signed in, rendered; else to the sign-in page.
async fn page(State(cs): State<Cs>, headers: HeaderMap, uri: Uri) -> Response {
    let path_q = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let Some(s) = cs.session(&headers) else {
        return redirect(&format!("/signin?next={}", text::url_part(&path_q)));
    };
    let q = uri.query().map(str::to_string);
    let rendered = pages::render(&cs, &s, uri.path(), q).await;
    let mut r = html(StatusCode::OK, String::new());
    let flash_text = take_flash(&cs, &headers, &mut r);
    let (status, title, main, live) = match rendered {
        Ok(p) => (StatusCode::OK, p.title, p.main, p.live),
        Err(f) if f.status == StatusCode::UNAUTHORIZED => {
            return redirect(&format!("/signin?next={}", text::url_part(&path_q)));
        }
        Err(f) => (
            f.status,
            failure_title(s.lang, f.status),
            failure_main(s.lang, &f),
            false,
        ),
    };
    *r.status_mut() = status;
    let live_path = live.then_some(path_q.as_str());
    *r.body_mut() = Body::from(pages::layout(
        &cs,
        Some(&s),
        s.lang,
        uri.path(),
        &title,
        &main,
        flash_text.as_deref(),
        live_path,
    ));
    r
}

fn failure_title(lang: Lang, status: StatusCode) -> String {
    match status {
        StatusCode::FORBIDDEN => Msg::Forbidden.text(lang).into(),
        StatusCode::NOT_FOUND => Msg::NotFound.text(lang).into(),
        _ => Msg::Error.text(lang).into(),
    }
}

fn failure_main(lang: Lang, f: &Failure) -> String {
    format!(
        "<h1>{}</h1><p class=\"error\" role=\"alert\">{} ({})</p>",
        esc(&failure_title(lang, f.status)),
        esc(&f.message),
        f.status.as_u16()
    )
}

async fn signin_page(
    State(cs): State<Cs>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = form(raw.unwrap_or_default().as_bytes(), &["next"]).unwrap_or_default();
    signin_form(&cs, &headers, q.get("next"), None, StatusCode::OK)
}

/// The sign-in page, with a fresh pre-session cookie and the CSRF token bound to it.
fn signin_form(
    cs: &Console,
    headers: &HeaderMap,
    next: Option<&String>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let lang = lang_of(headers);
    let mut pre = [0u8; 16];
    let _ = getrandom::fill(&mut pre);
    let pre = crate::auth::hex(&pre);
    let csrf = cs.mac(&format!("pre:{pre}"));
    let err = error.map_or(String::new(), |e| {
        format!(
            "<p class=\"error\" role=\"alert\" id=\"signin-error\">{}</p>",
            esc(e)
        )
    });
    let main = format!(
        "<h1>{title}</h1>{err}<form method=\"post\" action=\"/signin\" class=\"card narrow\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <label for=\"token\">{tok}</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required aria-describedby=\"token-help\"{inv}>\
         <p id=\"token-help\" class=\"help\">{help}</p>\
         <button type=\"submit\">{title}</button></form>",
        title = Msg::SignIn.text(lang),
        tok = Msg::Token.text(lang),
        help = esc(Msg::TokenHelp.text(lang)),
        next = esc(&local_path(next)),
        inv = if error.is_some() {
            " aria-invalid=\"true\""
        } else {
            ""
        },
    );
    let mut r = html(
        status,
        pages::layout(
            cs,
            None,
            lang,
            "/signin",
            Msg::SignIn.text(lang),
            &main,
            None,
            None,
        ),
    );
    set_cookie(
        &mut r,
        format!("gosok_pre={pre}{}; Max-Age=3600", cs.cookie_attrs()),
    );
    r
}

async fn signin(State(cs): State<Cs>, headers: HeaderMap, body: Bytes) -> Response {
    let lang = lang_of(&headers);
    let f = match form(&body, &["csrf", "token", "next"]) {
        Ok(f) => f,
        Err(e) => return signin_form(&cs, &headers, None, Some(&e.message), e.status),
    };
    let pre_ok = cookie(&headers, "gosok_pre").is_some_and(|pre| {
        f.get("csrf").is_some_and(|c| {
            constant_time_eq(c.as_bytes(), cs.mac(&format!("pre:{pre}")).as_bytes())
        })
    });
    if !pre_ok || !same_origin(&headers) {
        return signin_form(
            &cs,
            &headers,
            f.get("next"),
            Some(Msg::FormExpired.text(lang)),
            StatusCode::FORBIDDEN,
        );
    }
    let token = f.get("token").map(|t| t.trim()).unwrap_or("");
    let mut h = HeaderMap::new();
    let principal = HeaderValue::from_str(&format!("Bearer {token}"))
        .ok()
        .and_then(|v| {
            h.insert(header::AUTHORIZATION, v);
            crate::api::principal(&cs.app, &h).ok()
        });
    match principal {
        Some(Principal::Admin { .. } | Principal::Tenant { .. }) => {
            let mut r = redirect(&local_path(f.get("next")));
            set_cookie(
                &mut r,
                format!("gosok_session={token}{}; Max-Age=43200", cs.cookie_attrs()),
            );
            set_cookie(
                &mut r,
                format!("gosok_pre={}; Max-Age=0", cs.cookie_attrs()),
            );
            r
        }
        _ => {
            let msg = match lang {
                Lang::En => {
                    "unknown, revoked or agent token: sign in with an operator or tenant token"
                }
                Lang::Ko => {
                    "알 수 없거나 폐기된 토큰, 또는 에이전트 토큰입니다. 운영자 또는 테넌트 토큰으로 로그인하세요"
                }
            };
            signin_form(
                &cs,
                &headers,
                f.get("next"),
                Some(msg),
                StatusCode::UNAUTHORIZED,
            )
        }
    }
}

async fn signout(State(cs): State<Cs>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(s) = cs.session(&headers) else {
        return redirect("/signin");
    };
    let f = form(&body, &["csrf"]).unwrap_or_default();
    if !cs.csrf_ok(&s, &headers, &f) {
        return forms::refused(&s);
    }
    let mut r = redirect("/signin");
    set_cookie(
        &mut r,
        format!("gosok_session={}; Max-Age=0", cs.cookie_attrs()),
    );
    r
}

/// `/console/lang?to=ko&next=/queue`: a preference, not an action on the highway.
async fn set_lang(State(cs): State<Cs>, RawQuery(raw): RawQuery) -> Response {
    let q = form(raw.unwrap_or_default().as_bytes(), &["to", "next"]).unwrap_or_default();
    let lang = q.get("to").and_then(|l| Lang::parse(l)).unwrap_or(Lang::En);
    let mut r = redirect(&local_path(q.get("next")));
    // Not HttpOnly: it is no secret. A year.
    let attrs = cs.cookie_attrs().replace("; HttpOnly", "");
    set_cookie(
        &mut r,
        format!("gosok_lang={}{attrs}; Max-Age=31536000", lang.code()),
    );
    r
}

mod forms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_are_rfc_4231_hmacs_and_compared_whole() {
        // RFC 4231, test case 2.
        assert_eq!(
            crate::auth::hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn only_paths_on_this_server_are_places_to_return_to() {
        for (next, want) in [
            ("/queue?page=2", "/queue?page=2"),
            ("//evil.example/", "/"),
            ("https://evil.example/", "/"),
            ("/\\evil.example", "/"),
            ("/\t/evil.example", "/"),
            ("/\n/evil.example", "/"),
            ("/ /evil.example", "/"),
            ("/\u{a0}/evil.example", "/"),
        ] {
            assert_eq!(local_path(Some(&next.to_string())), want, "{next}");
        }
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn a_form_from_another_origin_is_not_this_console_s() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(
            same_origin(&h),
            "no Origin: an older browser or a same-origin GET"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}

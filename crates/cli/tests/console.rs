//! The web console, end to end: a real `gosok up` (controller, agents, demo tenants), its
//! pages over HTTP as a browser would fetch them (access rules, CSRF, cookies, languages), and
//! a real headless Chromium driven over WebDriver through the scenarios of a tenant and an
//! operator. Screenshots of every page are written to `target/tmp/console-screenshots/`.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;
use support::up::Up;
use support::webdriver::Browser;

/// A console response: status, the headers the tests read, the body.
struct Page {
    status: u16,
    location: String,
    cookies: Vec<String>,
    csp: String,
    body: String,
}

impl Page {
    /// The CSRF token of the first form on the page.
    fn csrf(&self) -> String {
        let i = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no form with a CSRF token in:\n{}", self.body));
        let rest = &self.body[i + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.iter().find_map(|c| {
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    }
}

/// One request to the console, following no redirect.
fn fetch(
    up: &Up,
    method: &str,
    path: &str,
    cookie: &str,
    form: Option<&str>,
    headers: &[(&str, &str)],
) -> Page {
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(30))
        .build();
    let mut r = agent.request(method, &format!("{}{path}", up.url()));
    if !cookie.is_empty() {
        r = r.set("Cookie", cookie);
    }
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let res = match form {
        Some(f) => r
            .set("Content-Type", "application/x-www-form-urlencoded")
            .send_string(f),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    Page {
        status: resp.status(),
        location: resp.header("location").unwrap_or("").to_string(),
        cookies: resp
            .all("set-cookie")
            .iter()
            .map(|s| s.to_string())
            .collect(),
        csp: resp
            .header("content-security-policy")
            .unwrap_or("")
            .to_string(),
        body: resp.into_string().unwrap_or_default(),
    }
}

/// Signs in with `token` as a browser does (the sign-in page's pre-session cookie and CSRF
/// token, then the form): the session cookie to send.
fn sign_in(up: &Up, token: &str) -> String {
    let p = fetch(up, "GET", "/signin", "", None, &[]);
    assert_eq!(p.status, 200);
    let pre = p.cookie("gosok_pre").expect("a pre-session cookie");
    let form = format!("csrf={}&token={token}&next=%2Fqueue", p.csrf());
    let r = fetch(
        up,
        "POST",
        "/signin",
        &format!("gosok_pre={pre}"),
        Some(&form),
        &[],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location, "/queue");
    let set = r
        .cookies
        .iter()
        .find(|c| c.starts_with("gosok_session="))
        .expect("a session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    format!("gosok_session={}", r.cookie("gosok_session").unwrap())
}

fn api(up: &Up, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let r = ureq::request(method, &format!("{}{path}", up.url()))
        .set("Authorization", &format!("Bearer {token}"));
    let res = match body {
        Some(b) => r
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn submit(up: &Up, token: &str, name: &str, command: &str) -> u64 {
    let (s, v) = api(
        up,
        "POST",
        "/v1/jobs",
        token,
        Some(json!({"name": name, "groups": [{"accelerators": 1}],
                     "command": ["sh", "-c", command]})),
    );
    assert_eq!(s, 201, "{v}");
    v["id"].as_u64().unwrap()
}

fn state(up: &Up, id: u64) -> String {
    let (_, v) = api(up, "GET", &format!("/v1/jobs/{id}"), &up.token(None), None);
    v["state"].as_str().unwrap_or("?").to_string()
}

fn site_budget_w(up: &Up, site: &str) -> f64 {
    let (_, v) = api(up, "GET", "/v1/sites", &up.token(None), None);
    v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == site)
        .unwrap()["power_budget_w"]
        .as_f64()
        .unwrap()
}

const PAGES: &[&str] = &[
    "/", "/queue", "/jobs", "/submit", "/tenants", "/nodes", "/audit",
];

#[test]
fn every_page_keeps_the_api_s_access_rules_and_forms_need_their_csrf_token() {
    let up = Up::start();
    let (a_tok, b_tok, admin_tok) = (
        up.token(Some("seoul-startup")),
        up.token(Some("kaist-lab")),
        up.token(None),
    );
    let a_job = submit(&up, &a_tok, "a-long", "sleep 600");
    let b_job = submit(&up, &b_tok, "b-long", "sleep 600");

    // What the pages read: nodes and the queue a page at a time, accelerators by model and
    // node state per site.
    let (_, all) = api(&up, "GET", "/v1/nodes", &admin_tok, None);
    let names: Vec<&str> = all["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(all["total"], json!(names.len()));
    let (_, page) = api(
        &up,
        "GET",
        "/v1/nodes?offset=2&limit=3&state=up",
        &admin_tok,
        None,
    );
    let paged: Vec<&str> = page["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(paged, names[2..5].to_vec());
    assert_eq!(page["total"], json!(names.len()));
    let (s, e) = api(&up, "GET", "/v1/nodes?state=sleeping", &admin_tok, None);
    assert_eq!((s, e["error"]["field"].as_str()), (400, Some("state")));
    let (_, none) = api(&up, "GET", "/v1/nodes?state=draining", &admin_tok, None);
    assert_eq!(
        (
            none["total"].as_u64(),
            none["nodes"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
    let (_, sites) = api(&up, "GET", "/v1/sites", &a_tok, None);
    let pohang = sites["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "pohang")
        .unwrap();
    let models: Vec<&str> = pohang["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["B200", "H100"]);
    for m in pohang["models"].as_array().unwrap() {
        assert_eq!(
            (m["nodes_up"].as_u64(), m["accelerators"].as_f64()),
            (Some(2), Some(16.0)),
            "{m}"
        );
    }
    // Three jobs that wait: ulsan's H100 nodes are draining.
    for n in ["us-r1-n-000", "us-r1-n-001"] {
        let (s, v) = api(
            &up,
            "POST",
            &format!("/v1/nodes/{n}/drain"),
            &admin_tok,
            None,
        );
        assert_eq!(s, 200, "{v}");
    }
    let waiting: Vec<u64> = (0..3)
        .map(|i| {
            let (s, v) = api(&up, "POST", "/v1/jobs", &a_tok, Some(json!({"name": format!("wait-{i}"),
                "groups": [{"accelerators": 1, "models": ["H100"]}], "constraints": {"sites": ["ulsan"]}})));
            assert_eq!(s, 201, "{v}");
            v["id"].as_u64().unwrap()
        })
        .collect();
    up.wait("three jobs pending", 30, || {
        let (_, q) = api(&up, "GET", "/v1/queue", &a_tok, None);
        q["total"].as_u64() == Some(3)
    });
    let (_, q) = api(&up, "GET", "/v1/queue?offset=1&limit=1", &a_tok, None);
    assert_eq!(q["total"], 3);
    let ids: Vec<u64> = q["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    let (_, whole) = api(&up, "GET", "/v1/queue", &a_tok, None);
    assert_eq!(ids, [whole["jobs"][1]["id"].as_u64().unwrap()]);
    for id in waiting {
        api(&up, "POST", &format!("/v1/jobs/{id}/cancel"), &a_tok, None);
    }
    for n in ["us-r1-n-000", "us-r1-n-001"] {
        api(
            &up,
            "POST",
            &format!("/v1/nodes/{n}/undrain"),
            &admin_tok,
            None,
        );
    }

    // Signed out: every page sends the browser to sign in, and every form does nothing.
    for p in PAGES.iter().chain(&["/jobs/1"]) {
        let r = fetch(&up, "GET", p, "", None, &[]);
        assert_eq!(r.status, 303, "{p}");
        assert!(
            r.location.starts_with("/signin?next="),
            "{p}: {}",
            r.location
        );
    }
    let r = fetch(
        &up,
        "POST",
        &format!("/jobs/{a_job}/cancel"),
        "",
        Some("csrf=x"),
        &[],
    );
    assert_eq!((r.status, r.location.as_str()), (303, "/signin"));
    // Assets need no session.
    let r = fetch(&up, "GET", "/console/static/console.js", "", None, &[]);
    assert_eq!(r.status, 200);

    // Sign-in: the form needs its pre-session cookie; agent and unknown tokens are refused;
    // a place to return to is only ever a path on this server.
    let p = fetch(&up, "GET", "/signin", "", None, &[]);
    let r = fetch(
        &up,
        "POST",
        "/signin",
        "",
        Some(&format!("csrf={}&token={a_tok}", p.csrf())),
        &[],
    );
    assert_eq!(r.status, 403, "sign-in without its pre-session cookie");
    assert!(r.cookie("gosok_session").is_none());
    let agent_tok = {
        let text = std::fs::read_to_string(up.path().join("gosok-data/credentials.toml")).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        v["agent_tokens"]
            .as_table()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    for bad in [agent_tok.as_str(), "gsk_nope"] {
        let p = fetch(&up, "GET", "/signin", "", None, &[]);
        let pre = p.cookie("gosok_pre").unwrap();
        let r = fetch(
            &up,
            "POST",
            "/signin",
            &format!("gosok_pre={pre}"),
            Some(&format!("csrf={}&token={bad}", p.csrf())),
            &[],
        );
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.cookie("gosok_session").is_none());
    }
    let p = fetch(&up, "GET", "/signin", "", None, &[]);
    let pre = p.cookie("gosok_pre").unwrap();
    let r = fetch(
        &up,
        "POST",
        "/signin",
        &format!("gosok_pre={pre}"),
        Some(&format!(
            "csrf={}&token={a_tok}&next=%2F%2Fevil.example%2F",
            p.csrf()
        )),
        &[],
    );
    assert_eq!((r.status, r.location.as_str()), (303, "/"));

    let a = sign_in(&up, &a_tok);
    let b = sign_in(&up, &b_tok);
    let admin = sign_in(&up, &admin_tok);

    // A tenant: every page but the audit log; its own jobs only, as the API enforces.
    for p in PAGES {
        let r = fetch(&up, "GET", p, &a, None, &[]);
        let want = if *p == "/audit" { 403 } else { 200 };
        assert_eq!(r.status, want, "{p} as a tenant: {}", r.body);
        assert!(r.csp.contains("default-src 'none'"), "{p}: {}", r.csp);
    }
    let jobs = fetch(&up, "GET", "/jobs", &a, None, &[]).body;
    assert!(jobs.contains(&format!("href=\"/jobs/{a_job}\"")));
    assert!(
        !jobs.contains(&format!("href=\"/jobs/{b_job}\"")),
        "another tenant's job listed"
    );
    assert!(
        !fetch(&up, "GET", "/queue", &a, None, &[])
            .body
            .contains("b-long")
    );
    let other = fetch(&up, "GET", &format!("/jobs/{b_job}"), &a, None, &[]);
    assert_eq!(other.status, 403);
    assert!(
        other.body.contains("belongs to another tenant"),
        "{}",
        other.body
    );
    assert!(!other.body.contains("b-long"));
    let tenants = fetch(&up, "GET", "/tenants", &a, None, &[]).body;
    assert!(tenants.contains("seoul-startup") && !tenants.contains("kaist-lab"));
    let nodes = fetch(&up, "GET", "/nodes", &a, None, &[]).body;
    assert!(
        !nodes.contains("/drain\""),
        "drain buttons shown to a tenant"
    );
    assert!(
        fetch(&up, "GET", "/nodes", &admin, None, &[])
            .body
            .contains("/drain\"")
    );
    // An operator: every page.
    for p in PAGES {
        assert_eq!(
            fetch(&up, "GET", p, &admin, None, &[]).status,
            200,
            "{p} as operator"
        );
    }
    let r = fetch(&up, "GET", "/jobs/99999", &admin, None, &[]);
    assert_eq!(r.status, 404);

    // CSRF: a form without the session's token, with another session's, or from another
    // origin is refused and changes nothing.
    let a_csrf = fetch(&up, "GET", &format!("/jobs/{a_job}"), &a, None, &[]).csrf();
    let b_csrf = fetch(&up, "GET", "/jobs", &b, None, &[]).csrf();
    let cancel = format!("/jobs/{a_job}/cancel");
    for (form, hdrs) in [
        (String::new(), vec![]),
        ("csrf=0123".to_string(), vec![]),
        (format!("csrf={b_csrf}"), vec![]),
        (
            format!("csrf={a_csrf}"),
            vec![("Origin", "http://evil.example")],
        ),
    ] {
        let r = fetch(&up, "POST", &cancel, &a, Some(&form), &hdrs);
        assert_eq!(r.status, 403, "{form} {hdrs:?}: {}", r.body);
    }
    assert_ne!(
        state(&up, a_job),
        "cancelled",
        "a refused form cancelled the job"
    );
    // Forms act as the API lets the token act: another tenant's job, a node, a site budget.
    let r = fetch(
        &up,
        "POST",
        &format!("/jobs/{b_job}/cancel"),
        &a,
        Some(&format!("csrf={a_csrf}")),
        &[],
    );
    assert_eq!(r.status, 303);
    let flash = r.cookie("gosok_flash").unwrap_or_default();
    assert!(flash.contains("another%20tenant"), "{flash}");
    assert_ne!(state(&up, b_job), "cancelled");
    let before = site_budget_w(&up, "pohang");
    let r = fetch(
        &up,
        "POST",
        "/sites/pohang/budget",
        &a,
        Some(&format!("csrf={a_csrf}&power_budget_mw=0.001")),
        &[],
    );
    assert_eq!(r.status, 303);
    assert_eq!(
        site_budget_w(&up, "pohang"),
        before,
        "a tenant changed a budget"
    );
    let (_, nodes) = api(&up, "GET", "/v1/nodes", &admin_tok, None);
    let node = nodes["nodes"][0]["name"].as_str().unwrap().to_string();
    fetch(
        &up,
        "POST",
        &format!("/nodes/{node}/drain"),
        &a,
        Some(&format!("csrf={a_csrf}")),
        &[],
    );
    let (_, nodes) = api(&up, "GET", "/v1/nodes", &admin_tok, None);
    assert_eq!(nodes["nodes"][0]["state"], "up", "a tenant drained a node");
    // With the right token, the form does what it says.
    let r = fetch(
        &up,
        "POST",
        &cancel,
        &a,
        Some(&format!("csrf={a_csrf}")),
        &[],
    );
    assert_eq!(
        (r.status, r.location.as_str()),
        (303, format!("/jobs/{a_job}").as_str())
    );
    assert_eq!(state(&up, a_job), "cancelled");
    // Signing out needs the token too.
    let r = fetch(&up, "POST", "/signout", &b, Some("csrf=nope"), &[]);
    assert_eq!(r.status, 403);
    let r = fetch(
        &up,
        "POST",
        "/signout",
        &b,
        Some(&format!("csrf={b_csrf}")),
        &[],
    );
    assert_eq!(r.status, 303);
    assert!(
        r.cookies
            .iter()
            .any(|c| c.starts_with("gosok_session=;") && c.contains("Max-Age=0"))
    );

    // Korean: by the browser's language, or by the switch; numbers and dates as Korean writes them.
    let ko = fetch(
        &up,
        "GET",
        "/queue",
        &a,
        None,
        &[("Accept-Language", "ko-KR,ko;q=0.9")],
    )
    .body;
    assert!(
        ko.contains("<html lang=\"ko\"") && ko.contains("대기열"),
        "{ko}"
    );
    let r = fetch(
        &up,
        "GET",
        "/console/lang?to=ko&next=%2Fjobs",
        &a,
        None,
        &[],
    );
    assert_eq!((r.status, r.location.as_str()), (303, "/jobs"));
    let lang = r.cookie("gosok_lang").unwrap();
    let ko = fetch(
        &up,
        "GET",
        "/jobs",
        &format!("{a}; gosok_lang={lang}"),
        None,
        &[],
    )
    .body;
    assert!(ko.contains("KST") && ko.contains("취소됨"), "{ko}");

    // Live: the stream sends the page's main part at once when the browser's copy differs.
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let resp = agent
        .get(&format!(
            "{}/console/live?path=%2Fqueue&since=old",
            up.url()
        ))
        .set("Cookie", &admin)
        .call()
        .unwrap();
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut buf = vec![0u8; 8192];
    let mut got = String::new();
    let mut rd = resp.into_reader();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.contains("event: main") && Instant::now() < deadline {
        let n = rd.read(&mut buf).unwrap();
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        got.contains("event: main") && got.contains("data: "),
        "{got}"
    );
}

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

/// The text of a site's power figures on the Highway page ("12.3 kW / 20.00 MW").
fn power_figures(b: &Browser, site: &str) -> String {
    b.text(&format!(".power-figures[data-site=\"{site}\"]"))
}

#[test]
fn a_tenant_and_an_operator_use_the_console_in_a_real_browser() {
    let up = Up::start();
    let b = Browser::start("en-US");
    let url = up.url();
    let dir = shots();

    // A tenant signs in.
    b.goto(&format!("{url}/"));
    b.wait("the sign-in page", 10, |b| b.url().contains("/signin"));
    b.screenshot(&dir.join("signin.png"));
    b.type_into("#token", &up.token(Some("seoul-startup")));
    b.click("button[type=submit]");
    b.wait("the highway page", 10, |b| {
        b.source().contains("Accelerators by model and state")
    });
    // The session cookie is out of the page's reach and never sent cross-site.
    let c = b.cookies();
    let session = c
        .iter()
        .find(|c| c["name"] == "gosok_session")
        .expect("a session cookie");
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
    assert_eq!(
        b.script("return document.cookie.includes('gosok_session')"),
        json!(false)
    );

    // Submits from the form, then watches it run and its output appear — the page is not
    // reloaded: live updates bring it.
    b.goto(&format!("{url}/submit"));
    b.type_into("#name", "hello-console");
    b.type_into(
        "#command",
        "echo console-says-hello; sleep 4; echo console-says-bye",
    );
    b.click("#submit");
    b.wait("the job page", 10, |b| b.url().contains("/jobs/"));
    let job_url = b.url();
    let id: u64 = job_url.rsplit('/').next().unwrap().parse().unwrap();
    b.wait("the job to run", 60, |b| {
        b.source().contains("state-running") || b.source().contains("state-succeeded")
    });
    b.wait("its first line of output", 60, |b| {
        b.source().contains("console-says-hello")
    });
    b.screenshot(&dir.join("job-running.png"));
    b.wait("it to succeed", 60, |b| {
        b.source().contains("state-succeeded") && b.source().contains("console-says-bye")
    });
    assert_eq!(b.url(), job_url, "the page moved on its own");
    b.screenshot(&dir.join("job.png"));

    // Cancels another of its jobs from that job's page.
    let t = up.token(Some("seoul-startup"));
    let other = submit(&up, &t, "to-cancel", "sleep 600");
    b.goto(&format!("{url}/jobs/{other}"));
    b.click("#cancel");
    b.wait("the job cancelled", 20, |b| {
        b.source().contains("state-cancelled")
    });
    assert!(b.source().contains("Job cancelled"));
    assert_eq!(state(&up, other), "cancelled");

    // Every page, for review; in Korean too.
    for (p, name) in [
        ("/", "highway"),
        ("/queue", "queue"),
        ("/jobs", "jobs"),
        ("/tenants", "tenants"),
        ("/nodes", "nodes"),
        ("/submit", "submit"),
    ] {
        b.goto(&format!("{url}{p}"));
        b.screenshot(&dir.join(format!("{name}.png")));
    }
    b.goto(&format!("{url}/console/lang?to=ko&next=%2F"));
    b.wait("Korean", 10, |b| b.source().contains("모델·상태별 가속기"));
    b.screenshot(&dir.join("highway-ko.png"));
    b.goto(&format!("{url}/jobs/{id}"));
    b.screenshot(&dir.join("job-ko.png"));
    b.goto(&format!("{url}/console/lang?to=en&next=%2F"));
    // Readable on a phone: no part of the page is wider than the screen.
    b.resize(390, 844);
    for (p, name) in [
        ("/", "highway-phone"),
        (&format!("/jobs/{id}") as &str, "job-phone"),
    ] {
        b.goto(&format!("{url}{p}"));
        let overflow = b.script("return document.documentElement.scrollWidth - window.innerWidth");
        assert!(
            overflow.as_i64().unwrap_or(1) <= 0,
            "{p} is wider than a phone by {overflow} px"
        );
        b.screenshot(&dir.join(format!("{name}.png")));
    }
    b.resize(1280, 800);

    // Another tenant cannot see the first one's job by its id.
    b.click(".who button");
    b.wait("signed out", 10, |b| b.url().contains("/signin"));
    b.type_into("#token", &up.token(Some("kaist-lab")));
    b.click("button[type=submit]");
    b.wait("signed in", 10, |b| !b.url().contains("/signin"));
    b.goto(&format!("{url}/jobs/{id}"));
    let src = b.source();
    assert!(src.contains("belongs to another tenant"), "{src}");
    assert!(!src.contains("console-says-hello") && !src.contains("hello-console"));
    b.screenshot(&dir.join("job-of-another-tenant.png"));

    // The operator lowers a site's budget and sees the shed jobs and the power bar change.
    b.click(".who button");
    b.wait("signed out", 10, |b| b.url().contains("/signin"));
    b.type_into("#token", &up.token(None));
    b.click("button[type=submit]");
    b.wait("signed in", 10, |b| !b.url().contains("/signin"));
    let anchor = up.token(Some("hyundai-ai"));
    let load: Vec<u64> = (0..2)
        .map(|i| {
            let (s, v) = api(&up, "POST", "/v1/jobs", &anchor, Some(json!({
                "name": format!("pohang-load-{i}"), "groups": [{"accelerators": 8, "models": ["H100"]}],
                "preemptible": true, "constraints": {"sites": ["pohang"]},
                "command": ["sleep", "600"]})));
            assert_eq!(s, 201, "{v}");
            v["id"].as_u64().unwrap()
        })
        .collect();
    up.wait("the load to run", 60, || {
        load.iter().all(|&j| state(&up, j) == "running")
    });
    b.goto(&format!("{url}/"));
    let before = power_figures(&b, "pohang");
    b.screenshot(&dir.join("highway-admin.png"));
    b.type_into("#budget-pohang", "0.005");
    b.click("#site-card-pohang button[type=submit]");
    b.wait("the result of the new budget", 10, |b| {
        b.source().contains("jobs shed to meet the new budget")
    });
    let flash = b.text(".flash");
    let shed: usize = flash
        .split(" · ")
        .find_map(|part| part.strip_suffix(" jobs shed to meet the new budget"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of shed jobs in {flash:?}"));
    assert_eq!(shed, 2, "{flash}");
    let after = power_figures(&b, "pohang");
    assert_ne!(before, after, "the power figures did not change");
    assert!(after.ends_with("/ 5.0 kW"), "{after}");
    assert!(
        load.iter().all(|&j| state(&up, j) != "running"),
        "the load still runs"
    );
    b.screenshot(&dir.join("highway-after-shed.png"));

    // A change made elsewhere reaches an open page by itself: the budget set over the API
    // shows on the Highway page without a reload.
    let t0 = Instant::now();
    let (s, v) = api(
        &up,
        "PATCH",
        "/v1/sites/pohang",
        &up.token(None),
        Some(json!({"power_budget_mw": 20.0})),
    );
    assert_eq!(s, 200, "{v}");
    b.wait("the live update", 10, |b| {
        power_figures(b, "pohang").ends_with("/ 20.00 MW")
    });
    eprintln!(
        "console live update: the budget change showed {} ms after the API call began",
        t0.elapsed().as_millis()
    );

    // The operator's pages.
    for (p, name) in [
        ("/audit", "audit"),
        ("/nodes", "nodes-admin"),
        ("/tenants", "tenants-admin"),
    ] {
        b.goto(&format!("{url}{p}"));
        b.screenshot(&dir.join(format!("{name}.png")));
    }
    // Drain and undrain a node from the Nodes page.
    b.goto(&format!("{url}/nodes"));
    b.click("form[action$=\"/drain\"] button");
    b.wait("the node draining", 10, |b| {
        b.source().contains("Node marked draining")
    });
    assert!(b.count("form[action$=\"/undrain\"]") >= 1);
    b.click("form[action$=\"/undrain\"] button");
    b.wait("the node up again", 10, |b| {
        b.source().contains("Node marked up")
    });
    eprintln!("console screenshots: {}", dir.display());
}

/// An event stream as the HTML standard's reader parses it: lines end at CR LF, LF or CR;
/// `field: value`; a blank line dispatches. Every event as (id, type, data), and every
/// `retry:` value.
fn sse_events(stream: &str) -> (Vec<(String, String, String)>, Vec<String>) {
    let (mut events, mut retries) = (Vec::new(), Vec::new());
    let (mut id, mut kind, mut data) = (String::new(), String::new(), String::new());
    let mut rest = stream;
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                let kind = if kind.is_empty() {
                    "message".into()
                } else {
                    kind.clone()
                };
                events.push((id.clone(), kind, std::mem::take(&mut data)));
            }
            kind.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.to_string(),
            "event" => kind = value.to_string(),
            "retry" => retries.push(value.to_string()),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            _ => {}
        }
    }
    (events, retries)
}

/// Opens `/console/live?path=PATH` with `cookie`: the status and, when 200, the open
/// response (a stream), else its body.
fn open_live(up: &Up, cookie: &str, path: &str) -> (u16, Result<ureq::Response, String>) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let res = agent
        .get(&format!(
            "{}/console/live?path={}&since=old",
            up.url(),
            path.replace('/', "%2F")
        ))
        .set("Cookie", cookie)
        .call();
    match res {
        Ok(r) => (r.status(), Ok(r)),
        Err(ureq::Error::Status(c, r)) => (c, Err(r.into_string().unwrap_or_default())),
        Err(e) => panic!("live {path}: {e}"),
    }
}

/// Reads a live stream until its first page has come whole.
fn first_page(resp: ureq::Response) -> String {
    let mut rd = resp.into_reader();
    let mut buf = vec![0u8; 65536];
    let mut got = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(i) = got.find("event: main\n")
            && got[i..].contains("\n\n")
        {
            return got;
        }
        let n = rd.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended before a page came: {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    panic!("no page within 10 s: {got:?}");
}

#[test]
fn a_tenant_s_output_cannot_add_fields_to_the_live_stream_others_read() {
    let up = Up::start();
    let (t, admin) = (up.token(Some("seoul-startup")), up.token(None));
    // Bare CRs: an SSE reader ends a line at each, as it does at LF.
    let id = submit(
        &up,
        &t,
        "cr",
        r"printf 'start\rid: evil\revent: pwn\rretry: 1\r\rdata: injected\r\n\rend\n'",
    );
    up.wait_state(id, "succeeded");
    for who in [&t, &admin] {
        let cookie = sign_in(&up, who);
        let (code, resp) = open_live(&up, &cookie, &format!("/jobs/{id}"));
        assert_eq!(code, 200);
        let text = first_page(resp.unwrap());
        let (events, retries) = sse_events(&text);
        assert_eq!(retries, vec!["300"], "{text:?}");
        assert!(!events.is_empty(), "{text:?}");
        for (eid, kind, data) in &events {
            assert_eq!(kind, "main", "an event of the tenant's making in {text:?}");
            assert!(
                eid.len() == 16 && eid.bytes().all(|b| b.is_ascii_hexdigit()),
                "id {eid:?} in {text:?}"
            );
            // The output arrives whole, as the page's text.
            assert!(
                data.contains("start\nid: evil\nevent: pwn\nretry: 1\n\ndata: injected\n\nend"),
                "{data:?}"
            );
        }
    }
}

#[test]
fn live_streams_are_bounded_per_tenant_and_a_closed_one_frees_its_place() {
    let up = Up::start();
    let admin_tok = up.token(None);
    let a = sign_in(&up, &up.token(Some("seoul-startup")));
    // The same tenant through another token: the bound is the tenant's, not the session's.
    let (c, v) = api(
        &up,
        "POST",
        "/v1/tenants/seoul-startup/tokens",
        &admin_tok,
        None,
    );
    assert_eq!(c, 201, "{v}");
    let a2 = sign_in(&up, v["token"].as_str().unwrap());
    let b = sign_in(&up, &up.token(Some("kaist-lab")));
    let admin = sign_in(&up, &admin_tok);

    let mut open = Vec::new();
    for i in 0..8 {
        let cookie = if i % 2 == 0 { &a } else { &a2 };
        let (code, r) = open_live(&up, cookie, "/queue");
        assert_eq!(code, 200, "stream {i}: {:?}", r.err());
        open.push(r.unwrap());
    }
    for cookie in [&a, &a2] {
        let (code, r) = open_live(&up, cookie, "/jobs");
        let msg = r.err().unwrap_or_default();
        assert_eq!(code, 429, "{msg}");
        assert!(
            msg.contains("tenant seoul-startup has 8 live views open"),
            "{msg}"
        );
    }
    // Another tenant and the operator are not kept waiting by the first.
    let (code, b_stream) = open_live(&up, &b, "/queue");
    assert_eq!(code, 200, "{:?}", b_stream.as_ref().err());
    let (code, admin_stream) = open_live(&up, &admin, "/nodes");
    assert_eq!(code, 200, "{:?}", admin_stream.as_ref().err());
    let page = first_page(admin_stream.unwrap());
    assert!(page.contains("event: main"), "{page}");

    // A browser that goes away gives its place back (the stream notices it within seconds).
    drop(open.pop());
    let started = Instant::now();
    let mut again = None;
    while again.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a closed stream's place was not given back within 20 s"
        );
        std::thread::sleep(Duration::from_millis(250));
        if let (200, Ok(r)) = open_live(&up, &a, "/queue") {
            again = Some(r);
        }
    }
    eprintln!(
        "a closed live stream's place came back after {} ms",
        started.elapsed().as_millis()
    );
    let (code, _) = open_live(&up, &a2, "/queue");
    assert_eq!(
        code, 429,
        "the freed place was taken again: the bound holds"
    );
    drop(b_stream);
}

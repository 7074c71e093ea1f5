//! Two controller replicas over one throwaway PostgreSQL cluster, used over HTTP as people
//! use them: the web console through a follower (sign-in, its cookies and origin check, live
//! updates), and what the replicas tell those without an admin token.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gosok_store::testpg::Cluster;
use serde_json::{Value, json};

const GOSOK: &str = env!("CARGO_BIN_EXE_gosok");

const CLUSTER: &str = r#"
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
name = "ph"
rack = "ph-r1"
count = 1
cpu_cores = 64
mem_mib = 262144
accelerator = "H100"
accelerators = 8

[[tenant]]
name = "lab"
tier = "academic"
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A response: status, every value of every header (lower-case names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One request, following no redirect.
fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> Answer {
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(10))
        .build();
    let mut r = agent.request(method, url);
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let res = match body {
        Some((ct, b)) => r.set("Content-Type", ct).send_string(b),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let mut headers = Vec::new();
    let mut names = resp.headers_names();
    // A name comes once per value.
    names.sort();
    names.dedup();
    for name in names {
        for v in resp.all(&name) {
            headers.push((name.to_ascii_lowercase(), v.to_string()));
        }
    }
    Answer {
        status: resp.status(),
        headers,
        body: resp.into_string().unwrap_or_default(),
    }
}

struct Replica {
    base: String,
    child: Child,
    log: PathBuf,
}

impl Replica {
    fn start(dir: &Path, store: &str) -> Replica {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let log = dir.join("replica.log");
        let child = Command::new(GOSOK)
            .args(["server", "run", "--tick-ms", "200", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir)
            .args(["--store", store])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let r = Replica {
            base: format!("http://127.0.0.1:{port}"),
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while ureq::get(&format!("{}/healthz", r.base)).call().is_err() {
            assert!(
                Instant::now() < deadline,
                "the replica did not start: {}",
                std::fs::read_to_string(&r.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn ready(&self) -> bool {
        request("GET", &format!("{}/readyz", self.base), &[], None).status == 200
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cookie_of(set_cookies: &[&str], name: &str) -> Option<String> {
    set_cookies.iter().find_map(|c| {
        let kv = c.split(';').next()?;
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// The CSRF token of the first form on a page.
fn csrf(page: &str) -> String {
    let i = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no form with a CSRF token in:\n{page}"));
    let rest = &page[i + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Two replicas on one store, the topology declared; (replicas, leader index, admin token,
/// tenant token, the store's URL). The cluster must outlive the replicas.
fn two_replicas(pg: &Cluster, tmp: &Path) -> (Vec<Replica>, usize, String, String, String) {
    let db = pg.create_db("console").unwrap();
    let out = Command::new(GOSOK)
        .args(["server", "init", "--data-dir"])
        .arg(tmp.join("r0"))
        .args(["--store", &db])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let replicas: Vec<Replica> = (0..2)
        .map(|i| Replica::start(&tmp.join(format!("r{i}")), &db))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if let Some(i) = replicas.iter().position(Replica::ready) {
            break i;
        }
        assert!(Instant::now() < deadline, "no replica leads");
        std::thread::sleep(Duration::from_millis(50));
    };
    let bearer = format!("Bearer {admin}");
    let l = &replicas[leader].base;
    let a = request(
        "PUT",
        &format!("{l}/v1/topology"),
        &[("Authorization", &bearer)],
        Some(("application/toml", CLUSTER)),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = request(
        "POST",
        &format!("{l}/v1/tenants/lab/tokens"),
        &[("Authorization", &bearer)],
        Some(("application/json", "{}")),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let tenant = a.json()["token"].as_str().unwrap().to_string();
    // The follower has applied the tenant's token and knows the leader.
    let f = &replicas[1 - leader].base;
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(
        "GET",
        &format!("{f}/v1/jobs"),
        &[("Authorization", &format!("Bearer {tenant}"))],
        None,
    )
    .status
        != 200
    {
        assert!(Instant::now() < deadline, "the follower does not forward");
        std::thread::sleep(Duration::from_millis(50));
    }
    (replicas, leader, admin, tenant, db)
}

#[test]
fn the_console_works_through_a_follower_cookies_origin_and_live_updates() {
    let pg = Cluster::start().expect("a throwaway PostgreSQL cluster");
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (replicas, leader, _admin, tenant, _db) = two_replicas(&pg, tmp.path());
    let f = replicas[1 - leader].base.clone();

    // Sign-in through the follower, as a browser sends it: with its Origin, which must name
    // the host the browser talks to (the follower), not the leader behind it.
    let page = request("GET", &format!("{f}/signin"), &[], None);
    assert_eq!(page.status, 200, "{}", page.body);
    let pre = cookie_of(&page.all("set-cookie"), "gosok_pre").expect("a pre-session cookie");
    let form = format!("csrf={}&token={tenant}&next=%2Fqueue", csrf(&page.body));
    let signed = request(
        "POST",
        &format!("{f}/signin"),
        &[("Origin", &f), ("Cookie", &format!("gosok_pre={pre}"))],
        Some(("application/x-www-form-urlencoded", &form)),
    );
    assert_eq!(signed.status, 303, "{}", signed.body);
    assert_eq!(signed.all("location"), vec!["/queue"]);
    // Both cookies the leader set: the session, and the pre-session one cleared.
    let cookies = signed.all("set-cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let session = cookie_of(&cookies, "gosok_session").expect("a session cookie");
    assert_eq!(cookie_of(&cookies, "gosok_pre").as_deref(), Some(""));
    let cookie = format!("gosok_session={session}");

    // A form from another site is still refused through the follower.
    let queue = request("GET", &format!("{f}/queue"), &[("Cookie", &cookie)], None);
    assert_eq!(queue.status, 200);
    let signout = format!("csrf={}", csrf(&queue.body));
    let foreign = request(
        "POST",
        &format!("{f}/signout"),
        &[("Origin", "http://evil.example"), ("Cookie", &cookie)],
        Some(("application/x-www-form-urlencoded", &signout)),
    );
    assert_eq!(foreign.status, 403, "{}", foreign.body);

    // Live updates through the follower arrive as the leader sends them, not when its
    // stream ends (25 s later).
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let resp = agent
        .get(&format!("{f}/console/live?path=%2Fqueue&since=old"))
        .set("Cookie", &cookie)
        .call()
        .expect("the live stream's head within 10 s");
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut rd = resp.into_reader();
    let mut buf = vec![0u8; 65536];
    let mut got = String::new();
    while !got.contains("event: main\n") {
        let n = rd.read(&mut buf).expect("a page within 10 s");
        assert!(n > 0, "the stream ended before a page came: {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("data: "), "{got}");

    // Sign-out through the follower, from the console's own origin.
    let out = request(
        "POST",
        &format!("{f}/signout"),
        &[("Origin", &f), ("Cookie", &cookie)],
        Some(("application/x-www-form-urlencoded", &signout)),
    );
    assert_eq!(out.status, 303, "{}", out.body);
}

#[test]
fn replicas_tell_anyone_only_whether_they_are_up_and_an_admin_the_rest() {
    let pg = Cluster::start().expect("a throwaway PostgreSQL cluster");
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (replicas, leader, admin, tenant, db) = two_replicas(&pg, tmp.path());
    let pg_host = format!("127.0.0.1:{}", pg.port);
    assert!(db.contains(&pg_host), "{db}");
    for (i, r) in replicas.iter().enumerate() {
        let b = &r.base;
        // A probe or a load balancer: up, and (readyz) leading or not; nothing more.
        let h = request("GET", &format!("{b}/healthz"), &[], None);
        assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})), "{b}");
        let ready = request("GET", &format!("{b}/readyz"), &[], None);
        if i == leader {
            assert_eq!(
                (ready.status, ready.json()),
                (200, json!({"status": "ready"}))
            );
        } else {
            assert_eq!(
                (ready.status, ready.json()),
                (503, json!({"status": "not_ready"}))
            );
        }
        // The replicas' URLs, the store's host and its errors are for operators.
        for headers in [
            vec![],
            vec![("Authorization", format!("Bearer {tenant}"))],
            vec![("Authorization", "Bearer gsk_0000".to_string())],
        ] {
            let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            for path in ["/v1/replica", "/healthz"] {
                let a = request("GET", &format!("{b}{path}"), &hs, None);
                assert!(
                    !a.body.contains(&pg_host) && !a.body.contains("127.0.0.1"),
                    "{b}{path} {headers:?}: {}",
                    a.body
                );
                if path == "/v1/replica" {
                    assert!(
                        a.status == 401 || a.status == 403,
                        "{b}{path} {headers:?}: {} {}",
                        a.status,
                        a.body
                    );
                }
            }
        }
        let bearer = format!("Bearer {admin}");
        let s = request(
            "GET",
            &format!("{b}/v1/replica"),
            &[("Authorization", &bearer)],
            None,
        );
        assert_eq!(s.status, 200, "{}", s.body);
        let v = s.json();
        assert_eq!(
            v["role"],
            if i == leader { "leader" } else { "follower" },
            "{v}"
        );
        assert!(v["store"].as_str().unwrap().contains(&pg_host), "{v}");
        let h = request(
            "GET",
            &format!("{b}/healthz"),
            &[("Authorization", &bearer)],
            None,
        );
        assert!(h.json()["log_seq"].is_u64(), "{}", h.body);
    }

    // The CLI sends the admin token it is given, and says what is missing without one.
    let f = &replicas[1 - leader].base;
    let out = Command::new(GOSOK)
        .args(["server", "status", "--server", f, "--token", &admin])
        .env_remove("GOSOK_TOKEN")
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("follower") && text.contains(&pg_host),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(GOSOK)
        .args(["server", "status", "--server", f])
        .env_remove("GOSOK_TOKEN")
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs an admin token"),
        "{err}"
    );
}

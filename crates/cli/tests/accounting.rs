//! End-to-end tests of metering and accounting: the real `gosok` binary, real HTTP, a real
//! SQLite log. Conservation is checked against the engine itself: the test replays the
//! server's own log through the controller's core and integrates what the engine held.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
name = "ph-r1-n"
rack = "ph-r1"
count = 2
cpu_cores = 112
mem_mib = 2097152
accelerator = "H100"
accelerators = 8
state = "up"

[[tenant]]
name = "lab-a"
tier = "academic"

[[tenant]]
name = "lab-b"
tier = "startup"
"#;

/// A controller on a temporary data directory (snapshots every 25 records, so that a
/// restart restores one and replays the rest).
struct Ctl {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    child: Option<Child>,
    base: String,
    admin: String,
}

impl Ctl {
    fn new() -> Ctl {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let out = Command::new(GOSOK)
            .args(["server", "init", "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin = String::from_utf8(out.stdout).unwrap().trim().to_string();
        std::fs::write(dir.join("gosok.toml"), "snapshot_every_records = 25\n").unwrap();
        let mut c = Ctl {
            _tmp: tmp,
            dir,
            child: None,
            base: String::new(),
            admin,
        };
        c.start();
        let f = c.dir.join("cluster.toml");
        std::fs::write(&f, CLUSTER).unwrap();
        let (ok, _, err) = c.cli(&c.admin, &["apply", f.to_str().unwrap()]);
        assert!(ok, "{err}");
        c
    }

    fn start(&mut self) {
        let mut child = Command::new(GOSOK)
            .args([
                "server",
                "run",
                "--listen",
                "127.0.0.1:0",
                "--tick-ms",
                "100",
                "--data-dir",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("the server exited before listening");
            };
            if let Some(i) = line.find("listening on ") {
                break line[i + "listening on ".len()..].trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines.by_ref() {});
        self.base = base;
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn req(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        let r = agent
            .request(method, &format!("{}{path}", self.base))
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
        let text = resp.into_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn cli(&self, token: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(GOSOK)
            .args(args)
            .env("GOSOK_SERVER", &self.base)
            .env("GOSOK_TOKEN", token)
            .env("GOSOK_CONFIG", "/nonexistent")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn token(&self, tenant: &str) -> String {
        let (s, v) = self.req(
            "POST",
            &format!("/v1/tenants/{tenant}/tokens"),
            &self.admin,
            None,
        );
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    fn submit(&self, tenant: &str, spec: Value) -> (u16, Value) {
        self.req(
            "POST",
            &format!("/v1/jobs?tenant={tenant}"),
            &self.admin,
            Some(&spec),
        )
    }

    fn state(&self, id: u64) -> String {
        let (_, v) = self.req("GET", &format!("/v1/jobs/{id}"), &self.admin, None);
        v["state"].as_str().unwrap_or("?").to_string()
    }

    fn wait_until(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn usage(&self, token: &str, query: &str) -> Value {
        let (s, v) = self.req(
            "GET",
            &format!("/v1/usage?from=2000-01-01&{query}"),
            token,
            None,
        );
        assert_eq!(s, 200, "{v}");
        v
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Replays the data directory's log through the controller's core, integrating the
/// accelerator thousandths the engine holds over engine time between records.
fn engine_held_milli_s(dir: &Path) -> u128 {
    use gosok_store::Store;
    let mut store = gosok_store::SqliteStore::open(&dir.join("gosok.db")).unwrap();
    let mut core =
        gosok_server::core::Core::new(gosok_engine::EngineConfig::default(), Box::new(|_| None))
            .unwrap();
    let mut held_milli_s = 0u128;
    store
        .scan(0, &mut |r| {
            let e: gosok_server::entry::Entry = serde_json::from_slice(&r.body).unwrap();
            let t0 = core.engine().now_s();
            let held: u64 = core
                .engine()
                .cluster()
                .nodes
                .iter()
                .map(|n| n.used_total_milli())
                .sum();
            core.apply(r.seq, r.at_ms, &e).unwrap();
            held_milli_s += held as u128 * (core.engine().now_s() - t0) as u128;
            Ok(())
        })
        .unwrap();
    held_milli_s
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn metered_usage_equals_what_the_engine_held_across_sigkill_and_restart() {
    let mut c = Ctl::new();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 5;
    let job = |accel: Value, limit: u64, prio: &str| json!({"groups": [accel], "runtime_limit_s": limit, "priority": prio});
    let whole = |replicas: u64, n: u64| json!({"replicas": replicas, "accelerators": n, "models": ["H100"]});
    let frac = |m: u64| json!({"replicas": 1, "accelerator_milli": m, "models": ["H100"]});
    // Low-priority work fills the highway; fractions and short jobs come and go.
    let mut ids = Vec::new();
    for (t, spec) in [
        ("lab-a", job(whole(1, 8), 60, "low")),
        ("lab-b", job(whole(1, 4), 2, "normal")),
        ("lab-b", job(frac(250), 2, "normal")),
        ("lab-a", job(frac(500), 1, "normal")),
        ("lab-a", job(whole(1, 2), 60, "low")),
    ] {
        let (s, v) = c.submit(t, spec);
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_u64().unwrap());
    }
    c.wait_until("the first jobs to start", 20, || {
        c.state(ids[0]) == "running"
    });
    // Usage runs on the engine's clock, which the tick after a change moves: the gang's
    // submission comes after that clock has run past the first start.
    std::thread::sleep(Duration::from_millis(1500));
    // A high-priority gang over the whole highway preempts its own tenant's work (a higher class
    // takes only its own tenant's capacity) and waits for the rest to end.
    let (s, v) = c.submit("lab-a", job(whole(2, 8), 2, "high"));
    assert_eq!(s, 201, "{v}");
    let gang = v["id"].as_u64().unwrap();
    c.wait_until("the gang to start", 20, || c.state(gang) == "running");
    // SIGKILL while the gang runs and the preempted work waits; the restart restores a
    // snapshot and replays the records after it.
    c.kill();
    c.start();
    c.wait_until("the gang to end", 30, || c.state(gang) != "running");
    // Cancel what still runs or waits once it has run a little again.
    c.wait_until("the preempted job to run again", 30, || {
        c.state(ids[0]) == "running"
    });
    std::thread::sleep(Duration::from_millis(1500));
    for &id in &ids {
        c.req("POST", &format!("/v1/jobs/{id}/cancel"), &c.admin, None);
    }
    c.wait_until("every job to end", 30, || {
        ids.iter()
            .chain([&gang])
            .all(|&id| !matches!(c.state(id).as_str(), "pending" | "running"))
    });
    let by_tenant = c.usage(&c.admin, "group_by=tenant");
    let by_job = c.usage(&c.admin, "group_by=job");
    let by_model_site = c.usage(&c.admin, "");
    let total = num(&by_tenant["totals"]["accelerator_seconds"]);
    // The job that was preempted ran more than one attempt; every job was metered.
    let job0 = by_job["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["job"] == ids[0])
        .unwrap();
    assert!(num(&job0["attempts"]) >= 2.0, "{job0}");
    assert_eq!(
        by_job["rows"].as_array().unwrap().len(),
        ids.len() + 1,
        "{by_job}"
    );
    // The groupings add up to the same total.
    for v in [&by_tenant, &by_job, &by_model_site] {
        let sum: f64 = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| num(&r["accelerator_seconds"]))
            .sum();
        assert!((sum - total).abs() < 1e-3, "{sum} vs {total}");
    }
    assert_eq!(by_model_site["rows"][0]["model"], "H100");
    assert_eq!(by_model_site["rows"][0]["site"], "pohang");
    assert!(num(&by_tenant["totals"]["energy_kwh"]) > 0.0);
    assert!(
        by_tenant["totals"]["measured_energy_kwh"].is_null(),
        "no agent measured energy"
    );
    // A tenant sees its own usage only.
    let tok = c.token("lab-a");
    let own = c.usage(&tok, "group_by=tenant");
    assert_eq!(own["rows"].as_array().unwrap().len(), 1);
    assert_eq!(own["rows"][0]["tenant"], "lab-a");
    let (s, _) = c.req("GET", "/v1/usage?tenant=lab-b", &tok, None);
    assert_eq!(s, 403);
    // Fairness: the gang (lab-a) caused the preemptions its own tenant suffered.
    let (s, f) = c.req(
        "GET",
        "/v1/reports/fairness?from=2000-01-01",
        &c.admin,
        None,
    );
    assert_eq!(s, 200, "{f}");
    let t = |v: &Value, name: &str| {
        v["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenant"] == name)
            .cloned()
            .unwrap()
    };
    assert!(num(&t(&f, "lab-a")["preemptions_suffered"]) >= 1.0, "{f}");
    assert!(
        num(&t(&f, "lab-a")["work_lost_accelerator_hours"]) > 0.0,
        "{f}"
    );
    assert!(num(&t(&f, "lab-a")["preemptions_caused"]) >= 1.0, "{f}");
    let jain = num(&f["jain_index"]);
    assert!(jain > 0.0 && jain <= 1.0, "{f}");
    // Anti-monopoly evidence: lab-a's gang held the whole highway (its cap is 1.0).
    let (s, sh) = c.req(
        "GET",
        &format!("/v1/reports/share?from={since}"),
        &c.admin,
        None,
    );
    assert_eq!(s, 200, "{sh}");
    assert_eq!(num(&t(&sh, "lab-a")["peak_share"]), 1.0, "{sh}");
    assert_eq!(t(&sh, "lab-a")["within_cap"], true);
    let avg = num(&t(&sh, "lab-a")["average_share"]);
    assert!(
        avg > 0.0 && avg < num(&t(&sh, "lab-a")["peak_share"]),
        "{sh}"
    );
    assert_eq!(c.req("GET", "/v1/reports/share", &tok, None).0, 403);
    // The CLI shows the same, and tenants gain their accounting columns.
    let (ok, out, err) = c.cli(
        &c.admin,
        &["report", "share", "--from", "2000-01-01", "--output", "csv"],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("tenant,share_cap,peak_share"), "{out}");
    let (ok, out, err) = c.cli(&c.admin, &["tenants"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("RUNNING ACCEL") && out.contains("BALANCE"),
        "{out}"
    );
    let (ok, out, err) = c.cli(
        &c.admin,
        &[
            "usage",
            "--from",
            "2000-01-01",
            "--group-by",
            "tenant",
            "--output",
            "csv",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("tenant,accelerator_hours,"), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    // Metrics: per-tenant usage counters add up to the total.
    let metrics = ureq::get(&format!("{}/metrics", c.base))
        .set("Authorization", &format!("Bearer {}", c.admin))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("gosok_tenant_accelerator_seconds_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(
        (counted - total).abs() < 1e-3,
        "{counted} vs {total}\n{metrics}"
    );
    // Conservation: what the server metered equals what its engine held, integrated from
    // its own log replayed record by record.
    c.kill();
    let held = engine_held_milli_s(&c.dir);
    assert!(held > 0);
    assert_eq!(
        (total * 1000.0).round() as u128,
        held,
        "metered {total} s vs held {held} ms"
    );
    // And the same again after another restart.
    c.start();
    assert_eq!(c.usage(&c.admin, "group_by=job")["rows"], by_job["rows"]);
}

#[test]
fn programmes_grants_admission_and_exhaustion() {
    let c = Ctl::new();
    let admin = c.admin.clone();
    let events = |c: &Ctl| {
        c.req("GET", "/v1/events?limit=1000", &admin, None).1["events"]
            .as_array()
            .unwrap()
            .len()
    };
    let (ok, out, err) = c.cli(
        &admin,
        &[
            "programme",
            "create",
            "startup-2026q4",
            "--from",
            "2026-01-01",
            "--to",
            "2099-01-01",
            "--tier",
            "startup",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("created programme startup-2026q4"), "{out}");
    // Bad input: a 4xx naming the field, nothing written.
    let before = events(&c);
    for (path, body, status, field) in [
        (
            "/v1/programmes",
            json!({"name": "x", "from": "2026-02-01", "to": "2026-01-01"}),
            422,
            "to",
        ),
        (
            "/v1/programmes",
            json!({"name": "x", "from": "2026-02-30", "to": "2026-03-01"}),
            400,
            "from",
        ),
        (
            "/v1/programmes",
            json!({"name": "startup-2026q4", "from": "2026-06-01", "to": "2027-01-01"}),
            409,
            "from",
        ),
        (
            "/v1/allocations",
            json!({"tenant": "nobody", "programme": "startup-2026q4", "accelerator_hours": 5}),
            404,
            "tenant",
        ),
        (
            "/v1/allocations",
            json!({"tenant": "lab-a", "programme": "nothing", "accelerator_hours": 5}),
            404,
            "programme",
        ),
        (
            "/v1/allocations",
            json!({"tenant": "lab-a", "programme": "startup-2026q4", "accelerator_hours": -5}),
            400,
            "accelerator_hours",
        ),
        (
            "/v1/allocations",
            json!({"tenant": "lab-a", "programme": "startup-2026q4", "accelerator_hours": 5, "model": "Z9"}),
            422,
            "model",
        ),
        (
            "/v1/prices",
            json!({"krw_per_accelerator_hour": -1}),
            422,
            "krw_per_accelerator_hour",
        ),
    ] {
        let (s, v) = c.req("POST", path, &admin, Some(&body));
        assert_eq!(s, status, "{path} {body}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    assert_eq!(events(&c), before, "a refused change writes nothing");
    // 0.01 H100-hours = 36 accelerator-seconds for lab-a.
    let (ok, out, err) = c.cli(
        &admin,
        &[
            "grant",
            "lab-a",
            "startup-2026q4",
            "--accelerator-hours",
            "0.01",
            "--model",
            "H100",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("allocation 1"), "{out}");
    // Admission: 8 accelerators × (10 s + 1 s) = 88 > 36: refused with the numbers.
    let spec = |limit: u64, prio: &str| json!({"groups": [{"accelerators": 8, "models": ["H100"]}], "runtime_limit_s": limit, "priority": prio});
    let (s, v) = c.submit("lab-a", spec(10, "normal"));
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "insufficient_allocation");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("0.010 accelerator-hours left") && msg.contains("needs 0.024"),
        "{msg}"
    );
    // Scavenger work runs once the tenant's policy allows it.
    assert_eq!(c.submit("lab-a", spec(10, "scavenger")).0, 422);
    let (ok, _, err) = c.cli(
        &admin,
        &[
            "allocations",
            "policy",
            "lab-a",
            "--allow-scavenger",
            "true",
            "--on-exhaustion",
            "preempt",
        ],
    );
    assert!(ok, "{err}");
    let (s, v) = c.submit("lab-a", spec(1, "scavenger"));
    assert_eq!(s, 201, "{v}");
    let scav = v["id"].as_u64().unwrap();
    c.wait_until("the scavenger job to end", 20, || {
        !matches!(c.state(scav).as_str(), "pending" | "running")
    });
    // A job within the balance (8 × (2 + 1) = 24 ≤ 36) with an estimate and no limit runs
    // past its estimate until the balance is gone; then it is stopped (preempt).
    let (s, v) = c.submit(
        "lab-a",
        json!({"groups": [{"accelerators": 8, "models": ["H100"]}], "runtime_estimate_s": 2}),
    );
    assert_eq!(s, 201, "{v}");
    let long = v["id"].as_u64().unwrap();
    c.wait_until(
        "the job to be stopped when the allocation ran out",
        30,
        || c.state(long) == "cancelled",
    );
    let (_, log) = c.req("GET", "/v1/events?limit=1000", &admin, None);
    let exhausted: Vec<&Value> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "account" && e["entry"]["change"]["exhausted"].is_object())
        .collect();
    assert_eq!(exhausted.len(), 1, "{log}");
    assert_eq!(
        exhausted[0]["entry"]["change"]["exhausted"]["action"],
        "preempt"
    );
    assert_eq!(
        exhausted[0]["entry"]["change"]["exhausted"]["jobs"],
        json!([long])
    );
    // The allocation is drawn to zero, never below; the scavenger job drew nothing.
    let (ok, out, err) = c.cli(
        &admin,
        &["allocations", "--tenant", "lab-a", "--output", "json"],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let a = &v["allocations"][0];
    assert_eq!(num(&a["balance_accelerator_hours"]), 0.0, "{a}");
    assert_eq!(num(&a["drawn_accelerator_hours"]), 0.01, "{a}");
    assert_eq!(a["state"], "exhausted");
    // Usage by programme: the drawn part under the programme, the rest (scavenger, and what
    // ran past the balance) under none.
    let u = c.usage(&admin, "tenant=lab-a&group_by=programme");
    let rows = u["rows"].as_array().unwrap();
    let prog = rows
        .iter()
        .find(|r| r["programme"] == "startup-2026q4")
        .unwrap();
    assert!(
        (num(&prog["accelerator_seconds"]) - 36.0).abs() < 1e-6,
        "{u}"
    );
    assert!(rows.iter().any(|r| r["programme"] == ""), "{u}");
}

#[test]
fn racing_clients_never_take_more_than_the_balance() {
    let c = Ctl::new();
    let admin = c.admin.clone();
    let (s, v) = c.req(
        "POST",
        "/v1/programmes",
        &admin,
        Some(&json!({"name": "p", "from": "2026-01-01", "to": "2099-01-01"})),
    );
    assert_eq!(s, 201, "{v}");
    // 0.01 accelerator-hours = 36 s: room for exactly 18 jobs of 1 accelerator × (1 s + 1 s).
    let (s, v) = c.req(
        "POST",
        "/v1/allocations",
        &admin,
        Some(&json!({"tenant": "lab-b", "programme": "p", "accelerator_hours": 0.01})),
    );
    assert_eq!(s, 201, "{v}");
    let tok = c.token("lab-b");
    let base = c.base.clone();
    let admitted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (base, tok) = (base.clone(), tok.clone());
            let (admitted, refused) = (admitted.clone(), refused.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .build();
                for _ in 0..4 {
                    let r = agent
                        .post(&format!("{base}/v1/jobs"))
                        .set("Authorization", &format!("Bearer {tok}"))
                        .set("Content-Type", "application/json")
                        .send_string(
                            &json!({"groups": [{"accelerators": 1}], "runtime_limit_s": 1})
                                .to_string(),
                        );
                    match r {
                        Ok(_) => admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        Err(ureq::Error::Status(422, _)) => {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        }
                        Err(e) => panic!("{e}"),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (a, r) = (
        admitted.load(std::sync::atomic::Ordering::Relaxed),
        refused.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(a + r, 64);
    assert_eq!(a, 18, "{a} admitted, {r} refused");
    // Once they have all run, the balance is what is left, never below zero.
    c.wait_until("every admitted job to end", 60, || {
        (1..=a).all(|id| !matches!(c.state(id).as_str(), "pending" | "running"))
    });
    let (_, v) = c.req("GET", "/v1/allocations", &tok, None);
    let bal = num(&v["allocations"][0]["balance_accelerator_hours"]);
    assert!(bal >= 0.0, "{v}");
    assert_eq!(num(&v["reserved_accelerator_hours"]["lab-b"]), 0.0, "{v}");
}

#[test]
fn statements_add_up_and_are_the_same_twice() {
    let mut c = Ctl::new();
    let admin = c.admin.clone();
    let (s, v) = c.req(
        "POST",
        "/v1/prices",
        &admin,
        Some(&json!({"krw_per_accelerator_hour": 3600000, "krw_per_kwh": 150})),
    );
    assert_eq!(s, 201, "{v}");
    let mut ids = Vec::new();
    for (n, limit) in [(8, 1), (4, 2), (1, 1)] {
        let (s, v) = c.submit(
            "lab-b",
            json!({"groups": [{"accelerators": n}], "runtime_limit_s": limit}),
        );
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_u64().unwrap());
    }
    c.wait_until("the jobs to end", 30, || {
        ids.iter()
            .all(|&id| !matches!(c.state(id).as_str(), "pending" | "running"))
    });
    let month = {
        let (_, v) = c.req("GET", "/v1/usage?group_by=day", &admin, None);
        v["rows"][0]["day"].as_str().unwrap()[..7].to_string()
    };
    let args = [
        "statement",
        "lab-b",
        "--month",
        month.as_str(),
        "--output",
        "json",
    ];
    let (ok, out, err) = c.cli(&admin, &args);
    assert!(ok, "{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    let lines = st["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{st}");
    // Lines add up to the totals exactly, and a price of 1,000 won per accelerator-second
    // (plus energy) makes the cost follow the accelerator-seconds.
    let sum = |k: &str| {
        lines
            .iter()
            .map(|l| (num(&l[k]) * 1e6).round() as i64)
            .sum::<i64>()
    };
    for k in ["accelerator_seconds", "energy_kwh", "cost_krw"] {
        assert_eq!(
            sum(k),
            (num(&st["totals"][k]) * 1e6).round() as i64,
            "{k}: {st}"
        );
    }
    for l in lines {
        let accel_s = num(&l["accelerator_seconds"]);
        let energy_cost = num(&l["energy_kwh"]) * 150.0;
        assert!(
            (num(&l["cost_krw"]) - (accel_s * 1000.0 + energy_cost)).abs() <= 0.5,
            "{l}"
        );
    }
    // The same statement again, after a SIGKILL and restart, and as CSV whose rows add up.
    let (_, again, _) = c.cli(&admin, &args);
    assert_eq!(again, out);
    c.kill();
    c.start();
    let (_, after, _) = c.cli(&admin, &args);
    assert_eq!(after, out);
    let (ok, csv, err) = c.cli(
        &admin,
        &["statement", "lab-b", "--month", &month, "--output", "csv"],
    );
    assert!(ok, "{err}");
    let mut csv_lines = csv.lines();
    assert!(
        csv_lines
            .next()
            .unwrap()
            .starts_with("job,attempt,model,site"),
        "{csv}"
    );
    let body: Vec<Vec<&str>> = csv_lines
        .take_while(|l| !l.is_empty())
        .map(|l| l.split(',').collect())
        .collect();
    let total = body.last().unwrap();
    assert_eq!(total[0], "total");
    let col: f64 = body[..body.len() - 1]
        .iter()
        .map(|r| r[7].parse::<f64>().unwrap())
        .sum();
    assert!(
        (col - total[7].parse::<f64>().unwrap()).abs() < 1e-9,
        "{csv}"
    );
    // A price set for the past is refused: issued statements keep their prices.
    let (s, v) = c.req(
        "POST",
        "/v1/prices",
        &admin,
        Some(&json!({"krw_per_accelerator_hour": 1, "from": "2020-01-01"})),
    );
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (422, Some("from")),
        "{v}"
    );
}

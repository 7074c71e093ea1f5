//! End-to-end tests of `gosok server`: the real binary, real HTTP on 127.0.0.1, a real SQLite
//! file in a temporary directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

struct Server {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Child,
    base: String,
    admin: String,
}

impl Server {
    fn new(extra: &[&str]) -> Server {
        Server::with_config(extra, "")
    }

    /// A new server whose `DATA_DIR/gosok.toml` holds `config`.
    fn with_config(extra: &[&str], config: &str) -> Server {
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
        assert!(admin.starts_with("gsk_"));
        if !config.is_empty() {
            std::fs::write(dir.join("gosok.toml"), config).unwrap();
        }
        let mut s = Server::run(&dir, extra, admin);
        s._tmp = Some(tmp);
        s
    }

    /// Starts `gosok server run` on a free port and waits until it listens.
    fn run(dir: &Path, extra: &[&str], admin: String) -> Server {
        let mut child = Command::new(GOSOK)
            .args([
                "server",
                "run",
                "--listen",
                "127.0.0.1:0",
                "--tick-ms",
                "200",
                "--data-dir",
            ])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let base = loop {
            assert!(Instant::now() < deadline, "the server did not start");
            let Some(Ok(line)) = lines.next() else {
                panic!("the server exited before listening");
            };
            if let Some(i) = line.find("listening on ") {
                break line[i + "listening on ".len()..].trim().to_string();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Server {
            dir: dir.to_path_buf(),
            _tmp: None,
            child,
            base,
            admin,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn restart(mut self) -> Server {
        self.kill();
        let mut s = Server::run(&self.dir, &[], self.admin.clone());
        s._tmp = self._tmp.take();
        s
    }

    fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        self.req_h(method, path, token, body, &[]).0
    }

    fn req_h(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> ((u16, Value), Vec<(String, String)>) {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        let mut r = agent.request(method, &format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        for (k, v) in headers {
            r = r.set(k, v);
        }
        let res = match body {
            Some(b) => r.set("Content-Type", "application/json").send_string(b),
            None => r.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let hs = resp
            .headers_names()
            .into_iter()
            .map(|h| (h.clone(), resp.header(&h).unwrap_or("").to_string()))
            .collect();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut resp.into_reader(), &mut text).unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        ((status, v), hs)
    }

    /// Runs the CLI against this server.
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

    fn apply_cluster(&self, toml: &str) {
        let f = self.dir.join("cluster.toml");
        std::fs::write(&f, toml).unwrap();
        let (ok, out, err) = self.cli(&self.admin, &["apply", f.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert!(out.contains("site pohang: added"), "{out}");
    }

    fn token(&self, tenant: &str) -> String {
        let (ok, out, err) = self.cli(
            &self.admin,
            &["token", "create", tenant, "--output", "json"],
        );
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    fn wait_state(&self, token: &str, id: u64, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (s, v) = self.req("GET", &format!("/v1/jobs/{id}"), Some(token), None);
            assert_eq!(s, 200, "{v}");
            if v["state"] == state {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never became {state}: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

const JOB8: &str =
    r#"{"name":"train","groups":[{"replicas":1,"accelerators":8,"models":["H100"]}]}"#;

#[test]
fn submit_list_show_cancel_over_the_cli() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    // Applying the same file again changes nothing.
    let f = s.dir.join("cluster.toml");
    let (ok, out, _) = s.cli(&s.admin, &["apply", f.to_str().unwrap()]);
    assert!(ok && out.contains("no changes"), "{out}");
    // Power figures alone change in place, not as a rebuild of the topology.
    let powered = CLUSTER
        .replace("power_budget_mw = 20.0", "power_budget_mw = 18.5")
        .replace("power_cap_kw = 120.0", "power_cap_kw = 110.0");
    let f2 = s.dir.join("powered.toml");
    std::fs::write(&f2, &powered).unwrap();
    let (ok, out, _) = s.cli(&s.admin, &["apply", f2.to_str().unwrap()]);
    assert!(ok && out.contains("power_budget_mw 20 -> 18.5"), "{out}");
    assert!(
        out.contains("power_cap_kw 120 -> 110") && !out.contains("changed"),
        "{out}"
    );
    let (ok, out, _) = s.cli(&s.admin, &["apply", f.to_str().unwrap()]);
    assert!(ok && out.contains("power_budget_mw 18.5 -> 20"), "{out}");
    let a = s.token("lab-a");
    let spec = s.dir.join("job.toml");
    std::fs::write(
        &spec,
        "name = \"big\"\n[[groups]]\nreplicas = 1\naccelerators = 8\nmodels = [\"H100\"]\n",
    )
    .unwrap();
    let mut ids = Vec::new();
    for args in [
        vec!["submit", spec.to_str().unwrap(), "--output", "json"],
        vec![
            "submit",
            "--accelerators",
            "8",
            "--model",
            "H100",
            "--output",
            "json",
            "--",
            "python",
            "train.py",
        ],
        vec![
            "submit",
            "--accelerators",
            "8",
            "--model",
            "H100",
            "--output",
            "json",
        ],
    ] {
        let (ok, out, err) = s.cli(&a, &args);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        // The answer shows the job once its record is durable; a pass may have placed it by
        // then.
        assert!(v["state"] == "pending" || v["state"] == "running", "{v}");
        ids.push(v["id"].as_u64().unwrap());
    }
    // Two fit (two 8-GPU nodes); the third waits.
    let j1 = s.wait_state(&a, ids[0], "running");
    assert_eq!(j1["placement"].as_array().unwrap().len(), 1);
    assert_eq!(j1["spec"]["name"], "big");
    let j2 = s.wait_state(&a, ids[1], "running");
    assert_eq!(j2["command"], json!(["python", "train.py"]));
    let (_, v) = s.req("GET", &format!("/v1/jobs/{}", ids[2]), Some(&a), None);
    assert_eq!(v["state"], "pending");
    assert!(
        v["wait"]["text"]
            .as_str()
            .unwrap()
            .contains("needs 1 × 8 H100"),
        "{v}"
    );
    let (ok, out, _) = s.cli(&a, &["jobs", "--output", "json"]);
    assert!(ok);
    let listed: Vec<u64> = serde_json::from_str::<Value>(&out).unwrap()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[2], ids[1], ids[0]], "newest first");
    let (ok, out, _) = s.cli(&a, &["queue"]);
    assert!(ok && out.contains(&ids[2].to_string()), "{out}");
    let (_, q) = s.req("GET", "/v1/queue", Some(&a), None);
    assert_eq!(q["total"], 1, "{q}");
    let row = &q["jobs"][0];
    assert_eq!(
        (row["position"].as_u64(), row["id"].as_u64()),
        (Some(0), Some(ids[2]))
    );
    assert_eq!(
        (row["tenant"].as_str(), row["accelerators"].as_f64()),
        (Some("lab-a"), Some(8.0))
    );
    assert!(
        row["reason"]["kind"].is_string() && row["text"].is_string(),
        "{row}"
    );
    assert!(row.get("estimated_start_s").is_some());
    // Cancel a running job; the pending one takes its place.
    let (ok, out, err) = s.cli(&a, &["cancel", &ids[0].to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("cancelled"), "{out}");
    s.wait_state(&a, ids[2], "running");
    let (ok, out, _) = s.cli(&a, &["show", &ids[0].to_string()]);
    assert!(
        ok && out.contains("cancelled") && out.contains("started attempt 1"),
        "{out}"
    );
    // Cancelling again is a conflict, shown readably, exit non-zero.
    let (ok, _, err) = s.cli(&a, &["cancel", &ids[0].to_string()]);
    assert!(
        !ok && err.contains("409") && err.contains("already ended"),
        "{err}"
    );
    // Paging: one at a time, following next_cursor.
    let (_, p1) = s.req("GET", "/v1/jobs?limit=2", Some(&a), None);
    let cur = p1["next_cursor"].as_str().unwrap().to_string();
    let (_, p2) = s.req(
        "GET",
        &format!("/v1/jobs?limit=2&cursor={cur}"),
        Some(&a),
        None,
    );
    assert_eq!(p2["jobs"][0]["id"].as_u64(), Some(ids[0]));
    assert!(p2["next_cursor"].is_null());
    let (_, st) = s.req("GET", "/v1/jobs?state=cancelled", Some(&a), None);
    assert_eq!(st["jobs"].as_array().unwrap().len(), 1);
    // Export is the same cluster (nodes keep their state) and applies without change.
    let (ok, exported, _) = s.cli(&s.admin, &["export"]);
    assert!(ok);
    let f2 = s.dir.join("exported.toml");
    std::fs::write(&f2, &exported).unwrap();
    let (ok, out, _) = s.cli(&s.admin, &["apply", f2.to_str().unwrap()]);
    assert!(ok && out.contains("no changes"), "{exported}\n{out}");
    // Sites, nodes and metrics reflect the running work.
    let (ok, out, _) = s.cli(&s.admin, &["sites"]);
    assert!(
        ok && out.contains("pohang") && out.contains("16.0/16.0"),
        "{out}"
    );
    let (ok, out, _) = s.cli(&s.admin, &["nodes"]);
    assert!(ok && out.contains("ph-r1-n-000"), "{out}");
    let (code, m) = s.req("GET", "/metrics", Some(&s.admin), None);
    let m = m.as_str().unwrap().to_string();
    assert_eq!(code, 200);
    for needle in [
        "gosok_queue_depth",
        "gosok_decisions_total{kind=\"start\"}",
        "gosok_scheduling_pass_seconds_bucket",
        "gosok_allocated_accelerators{site=\"pohang\",model=\"H100\"} 16",
        "gosok_site_power_budget_watts{site=\"pohang\"} 20000000",
    ] {
        assert!(m.contains(needle), "{needle} missing from\n{m}");
    }
}

#[test]
fn tenants_see_and_touch_only_their_own_jobs() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let (a, b) = (s.token("lab-a"), s.token("lab-b"));
    let (code, ja) = s.req("POST", "/v1/jobs", Some(&a), Some(JOB8));
    assert_eq!(code, 201, "{ja}");
    let id = ja["id"].as_u64().unwrap();
    let (code, e) = s.req("GET", &format!("/v1/jobs/{id}"), Some(&b), None);
    assert_eq!(code, 403, "{e}");
    assert_eq!(e["error"]["code"], "forbidden");
    let (code, _) = s.req(
        "POST",
        &format!("/v1/jobs/{id}/cancel"),
        Some(&b),
        Some("{}"),
    );
    assert_eq!(code, 403);
    // Nor hold, release or requeue it.
    for verb in ["hold", "release", "requeue"] {
        let (code, e) = s.req(
            "POST",
            &format!("/v1/jobs/{id}/{verb}"),
            Some(&b),
            Some("{}"),
        );
        assert_eq!(code, 403, "{verb}: {e}");
    }
    let (_, list) = s.req("GET", "/v1/jobs", Some(&b), None);
    assert!(list["jobs"].as_array().unwrap().is_empty(), "{list}");
    let (code, _) = s.req("GET", "/v1/jobs?tenant=lab-a", Some(&b), None);
    assert_eq!(code, 403);
    let (_, q) = s.req("GET", "/v1/queue", Some(&b), None);
    assert!(
        q["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["tenant"] == "lab-b")
    );
    // Submitting for another tenant, or doing operator work, is forbidden too.
    let (code, _) = s.req("POST", "/v1/jobs?tenant=lab-a", Some(&b), Some(JOB8));
    assert_eq!(code, 403);
    for (m, p, body) in [
        ("POST", "/v1/tenants/lab-b/tokens", None),
        ("PUT", "/v1/topology", Some("{}")),
        ("POST", "/v1/nodes/ph-r1-n-000/drain", None),
        ("GET", "/v1/events", None),
        (
            "PATCH",
            "/v1/sites/pohang",
            Some(r#"{"power_budget_mw":1}"#),
        ),
    ] {
        let (code, e) = s.req(m, p, Some(&b), body);
        assert_eq!(code, 403, "{m} {p}: {e}");
    }
    // The job is untouched; its owner still sees it.
    let (code, j) = s.req("GET", &format!("/v1/jobs/{id}"), Some(&a), None);
    assert_eq!(code, 200);
    assert_ne!(j["state"], "cancelled");
    // No token, a wrong one: 401.
    let (code, e) = s.req("GET", "/v1/jobs", None, None);
    assert_eq!(code, 401, "{e}");
    let (code, _) = s.req("GET", "/v1/jobs", Some("gsk_0000"), None);
    assert_eq!(code, 401);
}

#[test]
fn a_revoked_token_stops_working_and_stays_revoked_after_restart() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    let (code, _) = s.req("GET", "/v1/jobs", Some(&a), None);
    assert_eq!(code, 200);
    let (_, list) = s.req("GET", "/v1/tenants/lab-a/tokens", Some(&s.admin), None);
    let id = list["tokens"][0]["id"].as_str().unwrap().to_string();
    assert!(list["tokens"][0].get("sha256").is_none());
    let (ok, out, err) = s.cli(&s.admin, &["token", "revoke", &id]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked"));
    let (code, _) = s.req("GET", "/v1/jobs", Some(&a), None);
    assert_eq!(code, 401);
    let s = s.restart();
    let (code, _) = s.req("GET", "/v1/jobs", Some(&a), None);
    assert_eq!(code, 401);
    let (code, _) = s.req("GET", "/v1/jobs", Some(&s.admin), None);
    assert_eq!(code, 200);
    // The first admin token can be rotated: a new one, then the old one revoked.
    let (code, t) = s.req("POST", "/v1/tokens", Some(&s.admin), None);
    assert_eq!(code, 201, "{t}");
    let admin2 = t["token"].as_str().unwrap().to_string();
    let (code, _) = s.req("POST", "/v1/tokens/admin-1/revoke", Some(&admin2), None);
    assert_eq!(code, 200);
    let (code, _) = s.req("GET", "/v1/jobs", Some(&s.admin), None);
    assert_eq!(code, 401);
    let (code, _) = s.req("POST", "/v1/tokens", Some(&a), None);
    assert_eq!(code, 401, "a revoked tenant token cannot either");
    // The token is stored only as a hash: not in the log in clear.
    let db = std::fs::read(s.dir.join("gosok.db")).unwrap();
    let wal = std::fs::read(s.dir.join("gosok.db-wal")).unwrap_or_default();
    let needle = a.as_bytes();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }
}

#[test]
fn the_same_idempotency_key_and_body_give_the_same_job() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    let h = [("Idempotency-Key", "run-42")];
    let ((c1, j1), _) = s.req_h("POST", "/v1/jobs", Some(&a), Some(JOB8), &h);
    let ((c2, j2), hs) = s.req_h("POST", "/v1/jobs", Some(&a), Some(JOB8), &h);
    assert_eq!((c1, c2), (201, 201));
    assert_eq!(j1["id"], j2["id"]);
    assert!(
        hs.iter()
            .any(|(k, v)| k == "idempotent-replayed" && v == "true")
    );
    let other = JOB8.replace("train", "other");
    let ((c3, e), _) = s.req_h("POST", "/v1/jobs", Some(&a), Some(&other), &h);
    assert_eq!(c3, 422, "{e}");
    assert_eq!(e["error"]["field"], "Idempotency-Key");
    // Another tenant's key space is its own.
    let b = s.token("lab-b");
    let ((c4, j4), _) = s.req_h("POST", "/v1/jobs", Some(&b), Some(JOB8), &h);
    assert_eq!(c4, 201);
    assert_ne!(j4["id"], j1["id"]);
    // And it survives a crash.
    let s = s.restart();
    let ((c5, j5), _) = s.req_h("POST", "/v1/jobs", Some(&a), Some(JOB8), &h);
    assert_eq!(c5, 201);
    assert_eq!(j5["id"], j1["id"]);
    let (_, list) = s.req("GET", "/v1/jobs", Some(&a), None);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
}

/// The crash test: a load generator submits from several connections, the server is killed
/// with SIGKILL mid-stream and restarted on the same data directory, at several kill points.
#[test]
fn every_acknowledged_submission_survives_sigkill() {
    let mut s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    // Every acknowledged job: id -> its unique name.
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    for (round, kill_after) in [7u64, 150, 600].into_iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let (stop, count, acked) = (stop.clone(), count.clone(), acked.clone());
                let (base, token) = (s.base.clone(), a.clone());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(10))
                        .build();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) && i < 100_000 {
                        i += 1;
                        let name = format!("r{round}-t{t}-{i}");
                        let body = format!(
                            r#"{{"name":"{name}","groups":[{{"replicas":1,"accelerators":1,"models":["H100"]}}]}}"#
                        );
                        let r = agent
                            .post(&format!("{base}/v1/jobs"))
                            .set("Authorization", &format!("Bearer {token}"))
                            .set("Content-Type", "application/json")
                            .send_string(&body);
                        match r {
                            Ok(r) if r.status() == 201 => {
                                let v: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
                                acked.lock().unwrap().push((v["id"].as_u64().unwrap(), name));
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => panic!("unexpected status {}", r.status()),
                            // The server died under us: this one was not acknowledged.
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while count.load(Ordering::Relaxed) < kill_after {
            assert!(Instant::now() < deadline, "the load generator stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
        s.kill();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        s = s.restart();
        // Every job in the store, oldest first.
        let mut present: Vec<(u64, String)> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/jobs?limit=1000&cursor={c}"),
                None => "/v1/jobs?limit=1000".into(),
            };
            let (code, page) = s.req("GET", &path, Some(&a), None);
            assert_eq!(code, 200);
            for j in page["jobs"].as_array().unwrap() {
                present.push((
                    j["id"].as_u64().unwrap(),
                    j["name"].as_str().unwrap().to_string(),
                ));
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let names: std::collections::BTreeMap<u64, String> = present.iter().cloned().collect();
        let mut unique: Vec<&String> = names.values().collect();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), present.len(), "a submission is present twice");
        for (id, name) in acked.lock().unwrap().iter() {
            assert_eq!(
                names.get(id),
                Some(name),
                "acknowledged job {id} ({name}) is missing after the crash"
            );
        }
        // Nothing half-present: every job there is whole (spec and all).
        let last = present.iter().map(|p| p.0).max().unwrap();
        let (code, j) = s.req("GET", &format!("/v1/jobs/{last}"), Some(&a), None);
        assert_eq!(code, 200);
        assert_eq!(
            j["spec"]["name"].as_str(),
            names.get(&last).map(String::as_str)
        );
        assert!(acked.lock().unwrap().len() as u64 >= kill_after);
    }
}

#[test]
fn bad_input_gets_a_4xx_that_names_the_field() {
    let s = Server::new(&["--config", "/dev/null"]);
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    let cases: &[(&str, &str, &str, u16, Option<&str>)] = &[
        ("POST", "/v1/jobs", "{", 400, None),
        ("POST", "/v1/jobs", "[]", 400, None),
        (
            "POST",
            "/v1/jobs",
            r#"{"groups":[{"accelerators":1}],"colour":"red"}"#,
            400,
            None,
        ),
        (
            "POST",
            "/v1/jobs",
            r#"{"groups":[{"accelerators":"eight"}]}"#,
            400,
            Some("groups[0].accelerators"),
        ),
        (
            "POST",
            "/v1/jobs",
            r#"{"groups":[{"accelerators":-1}]}"#,
            400,
            Some("groups[0].accelerators"),
        ),
        (
            "POST",
            "/v1/jobs",
            r#"{"groups":[{"replicas":0,"accelerators":1}]}"#,
            400,
            Some("groups[0].replicas"),
        ),
        (
            "POST",
            "/v1/jobs",
            r#"{"groups":[{"accelerators":1000000000000}]}"#,
            400,
            Some("groups[0].accelerators"),
        ),
        (
            "POST",
            "/v1/jobs",
            r#"{"groups":[{"accelerators":1e40}]}"#,
            400,
            Some("groups[0].accelerators"),
        ),
        ("POST", "/v1/jobs", r#"{"groups":[]}"#, 400, Some("groups")),
        (
            "POST",
            "/v1/jobs",
            r#"{"groups":[{"accelerators":1,"models":["H999"]}]}"#,
            422,
            Some("groups[0].models[0]"),
        ),
        (
            "POST",
            "/v1/jobs",
            r#"{"groups":[{"accelerators":1}],"constraints":{"sites":["mars"]}}"#,
            422,
            Some("constraints.sites[0]"),
        ),
        (
            "POST",
            "/v1/jobs",
            r#"{"groups":[{"accelerators":1}],"constraints":{"jurisdictions":["US"]}}"#,
            422,
            Some("constraints"),
        ),
        (
            "POST",
            "/v1/jobs",
            r#"{"groups":[{"accelerators":9,"models":["H100"]}]}"#,
            422,
            Some("topology"),
        ),
        (
            "POST",
            "/v1/jobs",
            r#"{"groups":[{"accelerators":1}],"command":"not a list"}"#,
            400,
            Some("command"),
        ),
        (
            "POST",
            "/v1/jobs",
            r#"{"groups":[{"accelerators":1}],"priority":"urgent"}"#,
            400,
            Some("priority"),
        ),
        ("GET", "/v1/jobs?limit=0", "", 400, Some("limit")),
        ("GET", "/v1/jobs?state=sleeping", "", 400, Some("state")),
        ("GET", "/v1/jobs?colour=red", "", 400, Some("colour")),
        ("GET", "/v1/jobs/abc", "", 400, Some("id")),
        ("GET", "/v1/jobs/999999", "", 404, None),
    ];
    for (m, p, body, status, field) in cases {
        let b = if body.is_empty() { None } else { Some(*body) };
        let (code, e) = s.req(m, p, Some(&a), b);
        assert_eq!(code, *status, "{m} {p} {body}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{e}"
        );
        if let Some(f) = field {
            assert_eq!(
                e["error"]["field"].as_str(),
                Some(*f),
                "{m} {p} {body}: {e}"
            );
        }
    }
    let admin_cases: &[(&str, &str, &str, u16, Option<&str>)] = &[
        (
            "POST",
            "/v1/tenants",
            r#"{"name":"x","tier":"anchor","weight":-1}"#,
            400,
            Some("weight"),
        ),
        (
            "POST",
            "/v1/tenants",
            r#"{"name":"lab-a","tier":"anchor"}"#,
            409,
            Some("name"),
        ),
        (
            "PATCH",
            "/v1/tenants/lab-a",
            r#"{"share_cap":7}"#,
            400,
            Some("share_cap"),
        ),
        (
            "PATCH",
            "/v1/sites/pohang",
            r#"{"power_budget_mw":"lots"}"#,
            400,
            Some("power_budget_mw"),
        ),
        (
            "PATCH",
            "/v1/sites/pohang",
            r#"{"power_budget_mw":-5}"#,
            422,
            Some("power_budget_mw"),
        ),
        (
            "PATCH",
            "/v1/sites/nowhere",
            r#"{"power_budget_mw":5}"#,
            404,
            None,
        ),
        (
            "PUT",
            "/v1/topology",
            r#"{"site":[{"name":"x"}]}"#,
            400,
            Some("site[0]"),
        ),
        (
            "PUT",
            "/v1/topology",
            r#"{"node":[{"name":"n","rack":"nope","cpu_cores":1,"mem_mib":1}]}"#,
            422,
            Some("node[0].rack"),
        ),
        ("POST", "/v1/nodes/nope/drain", "", 404, None),
        ("POST", "/v1/catalog", r#"{"name":"X1"}"#, 400, None),
        ("POST", "/v1/jobs", JOB8, 400, Some("tenant")),
    ];
    for (m, p, body, status, field) in admin_cases {
        let b = if body.is_empty() { None } else { Some(*body) };
        let (code, e) = s.req(m, p, Some(&s.admin), b);
        assert_eq!(code, *status, "{m} {p} {body}: {e}");
        if let Some(f) = field {
            assert_eq!(
                e["error"]["field"].as_str(),
                Some(*f),
                "{m} {p} {body}: {e}"
            );
        }
    }
    // A body over the limit: 413 (the server answers before reading it all, so speak raw HTTP).
    {
        use std::io::{Read, Write};
        let addr = s.base.trim_start_matches("http://");
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let len = 3 << 20;
        write!(
            c,
            "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {a}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{\"name\":\""
        )
        .unwrap();
        let mut w = c.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&vec![b'x'; (1 << 20) + (256 << 10)]);
        });
        let mut resp = Vec::new();
        let _ = c.read_to_end(&mut resp);
        drop(c);
        let _ = writer.join();
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
        assert!(resp.contains("too_large"), "{resp}");
    }
    // Unknown endpoints and methods answer in JSON too.
    let (code, e) = s.req("GET", "/v1/nope", Some(&a), None);
    assert_eq!((code, e["error"]["code"].as_str()), (404, Some("no_route")));
    let (code, e) = s.req("DELETE", "/v1/jobs", Some(&a), None);
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    // Refused submissions are not jobs.
    let (_, list) = s.req("GET", "/v1/jobs", Some(&a), None);
    assert!(list["jobs"].as_array().unwrap().is_empty(), "{list}");
    // The CLI shows the server's error readably and exits non-zero.
    let (ok, _, err) = s.cli(&a, &["submit", "--accelerators", "1", "--model", "H999"]);
    assert!(!ok);
    assert!(
        err.contains("422") && err.contains("groups[0].models[0]") && err.contains("H999"),
        "{err}"
    );
}

#[test]
fn a_tenant_flooding_submissions_gets_429_with_retry_after() {
    let s = Server::new(&["--submit-rate-per-s", "1", "--submit-burst", "3"]);
    s.apply_cluster(CLUSTER);
    let (a, b) = (s.token("lab-a"), s.token("lab-b"));
    let mut codes = Vec::new();
    let mut retry = None;
    for _ in 0..8 {
        let ((c, _), hs) = s.req_h("POST", "/v1/jobs", Some(&a), Some(JOB8), &[]);
        codes.push(c);
        if c == 429 {
            retry = hs
                .iter()
                .find(|(k, _)| k == "retry-after")
                .map(|(_, v)| v.clone());
        }
    }
    assert_eq!(&codes[..3], &[201, 201, 201]);
    assert!(codes[3..].contains(&429), "{codes:?}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
    // Another tenant is not held back.
    let (c, _) = s.req("POST", "/v1/jobs", Some(&b), Some(JOB8));
    assert_eq!(c, 201);
}

#[test]
fn a_lowered_power_budget_sheds_preemptible_work_at_once() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    let (_, j) = s.req("POST", "/v1/jobs", Some(&a), Some(JOB8));
    let id = j["id"].as_u64().unwrap();
    s.wait_state(&a, id, "running");
    let (ok, out, err) = s.cli(&s.admin, &["sites", "set-budget", "pohang", "0.001"]);
    assert!(ok, "{err}");
    assert!(out.contains("shed 1 job(s)"), "{out}");
    let (_, j) = s.req("GET", &format!("/v1/jobs/{id}"), Some(&a), None);
    assert_eq!(j["state"], "pending", "{j}");
    assert!(
        j["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "preempted")
    );
    // Draining a node and marking it up again.
    let (ok, out, _) = s.cli(&s.admin, &["nodes", "drain", "ph-r1-n-001"]);
    assert!(ok && out.contains("draining"), "{out}");
    let (ok, out, _) = s.cli(&s.admin, &["nodes", "undrain", "ph-r1-n-001"]);
    assert!(ok && out.contains("up"), "{out}");
    // The audit log has every change, without token hashes.
    let (code, log) = s.req("GET", "/v1/events?limit=1000", Some(&s.admin), None);
    assert_eq!(code, 200);
    let kinds: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "init",
        "topology",
        "token_create",
        "submit",
        "site_power_budget",
        "node_state",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert!(!kinds.contains(&"tick"));
    assert!(!log.to_string().contains("sha256"));
}

#[test]
fn tenants_are_created_and_updated_over_the_cli() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let (ok, out, err) = s.cli(
        &s.admin,
        &[
            "tenants", "create", "kisti", "--tier", "public", "--weight", "2",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("kisti"));
    let (ok, out, _) = s.cli(&s.admin, &["tenants", "update", "kisti", "--weight", "4"]);
    assert!(ok, "{out}");
    let (ok, out, _) = s.cli(&s.admin, &["tenants", "--output", "json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    let k = v["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "kisti")
        .unwrap();
    assert_eq!(k["weight"], 4.0);
    assert_eq!(k["tier"], "public");
    // A tenant token sees only itself.
    let t = s.token("kisti");
    let (_, v) = s.req("GET", "/v1/tenants", Some(&t), None);
    assert_eq!(v["tenants"].as_array().unwrap().len(), 1);
    // An operator adds an accelerator model; jobs may then ask for it by name.
    let model = r#"{"name":"X1","vendor":"Example","class":"example-npu","hbm_gib":64,
        "board_power_w":300,"relative_throughput":0.5,"shareable":false,"source":"test fixture"}"#;
    let (code, e) = s.req("POST", "/v1/catalog", Some(&s.admin), Some(model));
    assert_eq!(code, 201, "{e}");
    let (code, _) = s.req("POST", "/v1/catalog", Some(&s.admin), Some(model));
    assert_eq!(code, 422, "a model is added once");
    let (code, _) = s.req("POST", "/v1/catalog", Some(&t), Some(model));
    assert_eq!(code, 403);
    let (_, cat) = s.req("GET", "/v1/catalog", Some(&t), None);
    assert!(
        cat["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "X1")
    );
    let (code, e) = s.req(
        "POST",
        "/v1/jobs",
        Some(&t),
        Some(r#"{"groups":[{"accelerators":1,"models":["X1"]}]}"#),
    );
    // Known now, but no node has one: refused naming the topology, not the model.
    assert_eq!(code, 422, "{e}");
    assert_eq!(e["error"]["field"], "topology");
    // Survives a restart.
    let s = s.restart();
    let (_, v) = s.req("GET", "/v1/tenants/kisti", Some(&s.admin), None);
    assert_eq!(v["weight"], 4.0);
    let (_, cat) = s.req("GET", "/v1/catalog", Some(&s.admin), None);
    assert!(
        cat["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "X1")
    );
}

#[test]
fn the_openapi_document_matches_what_is_served() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let (code, doc) = s.req("GET", "/v1/openapi.json", None, None);
    assert_eq!(code, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let schemas = doc["components"]["schemas"].as_object().unwrap().clone();
    let text = doc.to_string();
    // Every reference resolves.
    for part in text.split("#/components/schemas/").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        assert!(schemas.contains_key(&name), "unresolved schema {name}");
    }
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20);
    let mut operations = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            operations += 1;
            let concrete = path.replace("{id}", "1").replace("{name}", "lab-a");
            let body = op.get("requestBody").map(|_| "{}");
            let m = method.to_uppercase();
            // Routes exist: never "no such endpoint" or "method not allowed".
            let (code, e) = s.req(&m, &concrete, Some(&s.admin), body);
            assert!(
                e["error"]["code"] != "no_route" && code != 405,
                "{m} {path} is documented but not served: {code} {e}"
            );
            // Routes that need a token say so without one.
            let public = op["security"] == json!([]);
            let (code, _) = s.req(&m, &concrete, None, body);
            if public {
                assert_ne!(code, 401, "{m} {path} is documented as public");
            } else {
                assert_eq!(code, 401, "{m} {path} is documented as needing a token");
            }
        }
    }
    assert!(operations >= 28);
    // And what is not documented is not served.
    for (m, p) in [
        ("GET", "/v1/secret"),
        ("DELETE", "/v1/jobs/1"),
        ("GET", "/v2/jobs"),
    ] {
        let (code, _) = s.req(m, p, Some(&s.admin), None);
        assert!(code == 404 || code == 405, "{m} {p}: {code}");
    }
}

/// Generated garbage at the job-spec endpoint: never a 5xx, and the server keeps answering.
#[test]
fn garbage_never_gets_a_5xx() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let s = Server::new(&[
        "--submit-rate-per-s",
        "1000000",
        "--submit-burst",
        "1000000",
    ]);
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-zA-Z0-9_ \\-\\.\\[\\]\u{1F600}]{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("groups"),
            Just("replicas"),
            Just("accelerators"),
            Just("accelerator_milli"),
            Just("models"),
            Just("H100"),
            Just("constraints"),
            Just("topology"),
            Just("level"),
            Just("sites"),
            Just("priority"),
            Just("high"),
            Just("runtime_limit_s"),
            Just("command")
        ]
        .prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("groups".to_string()),
        Just("replicas".to_string()),
        Just("accelerators".to_string()),
        Just("accelerator_milli".to_string()),
        Just("models".to_string()),
        Just("min_hbm_gib".to_string()),
        Just("constraints".to_string()),
        Just("topology".to_string()),
        Just("level".to_string()),
        Just("mode".to_string()),
        Just("sites".to_string()),
        Just("jurisdictions".to_string()),
        Just("priority".to_string()),
        Just("preemptible".to_string()),
        Just("name".to_string()),
        Just("runtime_estimate_s".to_string()),
        Just("runtime_limit_s".to_string()),
        Just("max_retries".to_string()),
        Just("command".to_string()),
        Just("cpu_milli".to_string()),
        "[a-z]{1,6}",
    ];
    let value = leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let body = prop_oneof![
        3 => value.prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| {
            let mut v = JOB8.as_bytes().to_vec();
            let n = v.len();
            v[i % n] = b;
            v
        }),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let url = format!("{}/v1/jobs", s.base);
    let auth = format!("Bearer {a}");
    runner
        .run(&body, |b| {
            let r = agent
                .post(&url)
                .set("Authorization", &auth)
                .set("Content-Type", "application/json")
                .send_bytes(&b);
            let code = match r {
                Ok(r) => r.status(),
                Err(ureq::Error::Status(c, _)) => c,
                Err(e) => panic!("transport error: {e}"),
            };
            prop_assert!(code < 500, "{code} for {:?}", String::from_utf8_lossy(&b));
            Ok(())
        })
        .unwrap();
    // Also at the other endpoints that read bodies.
    for p in ["/v1/tenants", "/v1/catalog", "/v1/sites", "/v1/racks"] {
        for b in [
            "",
            "null",
            "{\"name\":{}}",
            "\u{0}",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]",
        ] {
            let (code, _) = s.req("POST", p, Some(&s.admin), Some(b));
            assert!((400..500).contains(&code), "{p} {b:?}: {code}");
        }
    }
    let (code, h) = s.req("GET", "/healthz", None, None);
    assert_eq!(code, 200);
    assert_eq!(h["status"], "ok");
}

#[test]
fn healthz_tells_anyone_only_that_the_controller_is_up_and_an_admin_the_figures() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    // A probe, a tenant, a stranger: the load, the disk and the log are not theirs to see.
    for token in [None, Some(a.as_str()), Some("gsk_0000")] {
        let (code, h) = s.req("GET", "/healthz", token, None);
        assert_eq!((code, h), (200, json!({"status": "ok"})), "{token:?}");
    }
    let (code, h) = s.req("GET", "/healthz", Some(&s.admin), None);
    assert_eq!(code, 200);
    assert_eq!(h["status"], "ok");
    assert!(
        h["disk"]["free_bytes"].is_u64() && h["log_seq"].is_u64() && h["replay"].is_object(),
        "{h}"
    );
}

#[test]
fn a_structural_topology_change_keeps_every_job_and_survives_restart() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (code, j) = s.req("POST", "/v1/jobs", Some(&a), Some(JOB8));
        assert_eq!(code, 201, "{j}");
        ids.push(j["id"].as_u64().unwrap());
    }
    s.wait_state(&a, ids[0], "running");
    s.wait_state(&a, ids[1], "running");
    // A third node joins in place: running jobs stay where they are, the third starts.
    let bigger = CLUSTER.replace("count = 2", "count = 3");
    let f = s.dir.join("bigger.toml");
    std::fs::write(&f, &bigger).unwrap();
    let (ok, out, err) = s.cli(&s.admin, &["apply", "--dry-run", f.to_str().unwrap()]);
    assert!(ok && out.contains("would: nodes: 1 added"), "{out}{err}");
    let (ok, out, err) = s.cli(&s.admin, &["apply", f.to_str().unwrap()]);
    assert!(ok && out.contains("nodes: 1 added"), "{out}{err}");
    for id in &ids {
        let j = s.wait_state(&a, *id, "running");
        assert_eq!(
            j["spec"]["name"], "train",
            "the spec is read back from the log"
        );
    }
    let requeued = |id: u64| {
        let (_, j) = s.req("GET", &format!("/v1/jobs/{id}"), Some(&a), None);
        j["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "requeued")
    };
    assert!(!requeued(ids[0]));
    // Changing the nodes' machines is structural: the engine is rebuilt and running jobs
    // are placed again.
    let changed = bigger.replace("cpu_cores = 112", "cpu_cores = 96");
    let f = s.dir.join("changed.toml");
    std::fs::write(&f, &changed).unwrap();
    let (ok, out, err) = s.cli(&s.admin, &["apply", f.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    for id in &ids {
        s.wait_state(&a, *id, "running");
    }
    assert!(requeued(ids[0]));
    let before: Vec<Value> = ids
        .iter()
        .map(|id| s.req("GET", &format!("/v1/jobs/{id}"), Some(&a), None).1)
        .collect();
    let s = s.restart();
    let (_, nodes) = s.req("GET", "/v1/nodes", Some(&s.admin), None);
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 3);
    // Replaying the log gives the same state: same placements, same histories.
    for (id, b) in ids.iter().zip(&before) {
        let (_, j) = s.req("GET", &format!("/v1/jobs/{id}"), Some(&a), None);
        assert_eq!(j["state"], "running", "{j}");
        assert_eq!(j["placement"], b["placement"]);
        assert_eq!(j["events"], b["events"]);
    }
}

/// Every job as the API shows it (the wait estimate aside: it moves with the clock), and the
/// queue.
fn all_jobs(s: &Server) -> Vec<Value> {
    let (code, list) = s.req("GET", "/v1/jobs?limit=1000", Some(&s.admin), None);
    assert_eq!(code, 200, "{list}");
    let mut out = Vec::new();
    for j in list["jobs"].as_array().unwrap() {
        let id = j["id"].as_u64().unwrap();
        let (code, mut d) = s.req("GET", &format!("/v1/jobs/{id}"), Some(&s.admin), None);
        assert_eq!(code, 200, "{d}");
        d.as_object_mut().unwrap().remove("wait");
        out.push(d);
    }
    let (code, queue) = s.req("GET", "/v1/queue", Some(&s.admin), None);
    assert_eq!(code, 200, "{queue}");
    out.push(queue["jobs"].clone());
    out
}

/// Snapshots: a restart (after SIGKILL) restores the latest periodic snapshot and replays
/// the records after it; one after a clean stop starts from the shutdown snapshot. Either
/// way every job is as it was.
#[test]
fn a_restart_from_a_snapshot_and_the_records_after_it_keeps_every_job() {
    let s = Server::new(&[]);
    std::fs::write(s.dir.join("gosok.toml"), "snapshot_every_records = 20\n").unwrap();
    let s = s.restart();
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    let mut ids = Vec::new();
    for i in 0..40 {
        let body = format!(
            r#"{{"name":"j{i}","groups":[{{"replicas":1,"accelerators":{},"models":["H100"]}}]}}"#,
            1 + i % 4
        );
        let (code, v) = s.req("POST", "/v1/jobs", Some(&a), Some(&body));
        assert_eq!(code, 201, "{v}");
        ids.push(v["id"].as_u64().unwrap());
        if i % 10 == 9 {
            // Ticks come between submissions: snapshots are taken after them.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    s.wait_state(&a, ids[0], "running");
    let (code, _) = s.req(
        "POST",
        &format!("/v1/jobs/{}/cancel", ids[0]),
        Some(&a),
        None,
    );
    assert_eq!(code, 200);
    // Let the last tick run and its snapshot be written, then leave a tail after it.
    std::thread::sleep(Duration::from_millis(800));
    for i in 0..3 {
        let body = format!(
            r#"{{"name":"tail{i}","groups":[{{"replicas":1,"accelerators":8,"models":["H100"]}}]}}"#
        );
        assert_eq!(s.req("POST", "/v1/jobs", Some(&a), Some(&body)).0, 201);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = all_jobs(&s);
    let (_, h) = s.req("GET", "/healthz", Some(&s.admin), None);
    let log_seq = h["log_seq"].as_u64().unwrap();

    let s = s.restart();
    let (_, h) = s.req("GET", "/healthz", Some(&s.admin), None);
    let from = h["replay"]["snapshot_seq"].as_u64().unwrap();
    assert!(from > 0, "the restart did not use a snapshot: {h}");
    assert!(from < log_seq, "no records after the snapshot: {h}");
    assert_eq!(h["replay"]["diverged"], 0, "{h}");
    assert_eq!(
        all_jobs(&s),
        before,
        "jobs differ after a restart from a snapshot"
    );

    // A clean stop writes a snapshot of the final state: nothing is left to replay.
    let pid = s.child.id().to_string();
    let mut s = s;
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(s.child.wait().unwrap().success());
    let s = s.restart();
    let (_, h) = s.req("GET", "/healthz", Some(&s.admin), None);
    assert_eq!(
        h["replay"]["snapshot_seq"], h["replay"]["records"],
        "a clean stop leaves a snapshot of its final state: {h}"
    );
    assert_eq!(all_jobs(&s), before, "jobs differ after a clean restart");
}

#[test]
fn a_second_controller_on_the_same_data_directory_is_refused() {
    let s = Server::new(&[]);
    let out = Command::new(GOSOK)
        .args(["server", "run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&s.dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another gosok controller is serving"), "{err}");
    // The first one still answers.
    let (code, _) = s.req("GET", "/healthz", None, None);
    assert_eq!(code, 200);
}

/// A job of `bytes` bytes of command and env (half each), asking for 8 H100s.
fn big_job(bytes: usize) -> String {
    let half = bytes / 2;
    json!({
        "groups": [{"replicas": 1, "accelerators": 8, "models": ["H100"]}],
        "command": ["sh", "-c", "x".repeat(half - 4)],
        "env": {"DATA": "y".repeat(half - 4)},
    })
    .to_string()
}

#[test]
fn a_tenant_cannot_submit_above_its_priority_entitlement() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let (a, b) = (s.token("lab-a"), s.token("lab-b"));
    let job = |p: &str| {
        format!(
            r#"{{"priority":"{p}","groups":[{{"replicas":1,"accelerators":8,"models":["H100"]}}]}}"#
        )
    };
    // Up to normal by default.
    for p in ["scavenger", "low", "normal"] {
        let (c, v) = s.req("POST", "/v1/jobs", Some(&a), Some(&job(p)));
        assert_eq!(c, 201, "{p}: {v}");
    }
    for p in ["high", "critical"] {
        let (c, v) = s.req("POST", "/v1/jobs", Some(&a), Some(&job(p)));
        assert_eq!(c, 403, "{p}: {v}");
        assert_eq!(v["error"]["code"], "priority_not_allowed");
        assert_eq!(v["error"]["field"], "priority");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(p) && m.contains("normal"), "{m}");
    }
    // A tenant cannot raise its own entitlement.
    let (c, _) = s.req(
        "PATCH",
        "/v1/tenants/lab-a",
        Some(&a),
        Some(r#"{"max_priority":"critical"}"#),
    );
    assert_eq!(c, 403);
    // The operator raises it to high: high passes, critical still does not.
    let (ok, out, err) = s.cli(
        &s.admin,
        &[
            "tenants",
            "update",
            "lab-a",
            "--max-priority",
            "high",
            "--output",
            "json",
        ],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["max_priority"], "high");
    let (c, v) = s.req("POST", "/v1/jobs", Some(&a), Some(&job("high")));
    assert_eq!(c, 201, "{v}");
    let (c, v) = s.req("POST", "/v1/jobs", Some(&a), Some(&job("critical")));
    assert_eq!((c, v["error"]["field"].as_str()), (403, Some("priority")));
    // A default class above the entitlement is refused, naming it.
    let (c, v) = s.req(
        "PATCH",
        "/v1/tenants/lab-a",
        Some(&s.admin),
        Some(r#"{"default_priority":"critical"}"#),
    );
    assert_eq!(c, 400, "{v}");
    assert_eq!(v["error"]["field"], "default_priority");
    // The other tenant is still held to normal; an operator may submit for it at any class.
    let (c, _) = s.req("POST", "/v1/jobs", Some(&b), Some(&job("high")));
    assert_eq!(c, 403);
    let (c, v) = s.req(
        "POST",
        "/v1/jobs?tenant=lab-b",
        Some(&s.admin),
        Some(&job("critical")),
    );
    assert_eq!(c, 201, "{v}");
    // The entitlement is kept across a restart (it is in the log).
    let s = s.restart();
    let (c, _) = s.req("POST", "/v1/jobs", Some(&a), Some(&job("critical")));
    assert_eq!(c, 403);
    let (c, _) = s.req("POST", "/v1/jobs", Some(&a), Some(&job("high")));
    assert_eq!(c, 201);
}

#[test]
fn a_tenant_sees_only_its_own_counts_in_the_queue() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let (a, b) = (s.token("lab-a"), s.token("lab-b"));
    // Two 8-GPU nodes for eight 8-GPU jobs: six wait, at least one of each tenant's.
    for t in [&b, &b, &b, &b, &b, &a, &a, &a] {
        let (c, _) = s.req("POST", "/v1/jobs", Some(t), Some(JOB8));
        assert_eq!(c, 201);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let all = loop {
        let (_, q) = s.req("GET", "/v1/queue", Some(&s.admin), None);
        if q["total"] == 6 {
            break q;
        }
        assert!(Instant::now() < deadline, "{q}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rows = |q: &Value, t: &str| {
        q["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["tenant"] == t)
            .count()
    };
    let (pa, pb) = (rows(&all, "lab-a"), rows(&all, "lab-b"));
    assert!(pa >= 1 && pb >= 3 && pa + pb == 6, "{all}");
    for (token, mine, other, n) in [(&a, "lab-a", "lab-b", pa), (&b, "lab-b", "lab-a", pb)] {
        let (_, q) = s.req("GET", "/v1/queue", Some(token), None);
        assert_eq!(q["total"], n, "{mine}: {q}");
        assert_eq!((rows(&q, mine), rows(&q, other)), (n, 0), "{q}");
    }
}

#[test]
fn duplicate_json_keys_are_refused_naming_the_key() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    for (path, token, body, field) in [
        (
            "/v1/jobs",
            &a,
            r#"{"name":"x","name":"y","groups":[{"accelerators":8,"models":["H100"]}]}"#,
            "name",
        ),
        (
            "/v1/jobs",
            &a,
            r#"{"groups":[{"accelerators":8,"models":["H100"]}],"env":{"A":"1","A":"2"}}"#,
            "env.A",
        ),
        (
            "/v1/jobs",
            &a,
            r#"{"priority":"low","groups":[{"accelerators":8,"accelerators":1}]}"#,
            "groups[0].accelerators",
        ),
    ] {
        let (c, v) = s.req("POST", path, Some(token), Some(body));
        assert_eq!(c, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], "duplicate_key", "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    // An operator's body too: the weight is not silently the last one.
    let (c, v) = s.req(
        "PATCH",
        "/v1/tenants/lab-a",
        Some(&s.admin),
        Some(r#"{"weight":1,"weight":100}"#),
    );
    assert_eq!(
        (c, v["error"]["field"].as_str()),
        (400, Some("weight")),
        "{v}"
    );
    let (_, t) = s.req("GET", "/v1/tenants/lab-a", Some(&s.admin), None);
    assert_eq!(t["weight"], 1.0);
}

#[test]
fn a_tenant_flooding_large_submissions_hits_its_limits_while_another_keeps_working() {
    // 5 MB per tenant: ten 500 KB submissions fit, the eleventh does not.
    let s = Server::with_config(&[], "max_stored_bytes_per_tenant = 5000000\n");
    s.apply_cluster(CLUSTER);
    let (a, b) = (s.token("lab-a"), s.token("lab-b"));
    let big = big_job(500_000);
    let mut codes = Vec::new();
    let mut refusal = Value::Null;
    for i in 0..30 {
        let (c, v) = s.req("POST", "/v1/jobs", Some(&a), Some(&big));
        codes.push(c);
        if c != 201 {
            refusal = v;
        }
        // The other tenant keeps submitting meanwhile.
        if i % 5 == 0 {
            let (c, v) = s.req("POST", "/v1/jobs", Some(&b), Some(&big_job(2000)));
            assert_eq!(c, 201, "{v}");
        }
    }
    assert_eq!(codes[..10], [201; 10], "{codes:?}");
    assert!(codes[10..].iter().all(|&c| c == 413), "{codes:?}");
    assert_eq!(refusal["error"]["code"], "storage_limit", "{refusal}");
    let m = refusal["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("max_stored_bytes") && m.contains("5000000"),
        "{m}"
    );
    let (_, t) = s.req("GET", "/v1/tenants/lab-a", Some(&a), None);
    assert_eq!(t["stored_bytes"], 5_000_000, "{t}");
    // A cancel gives the room back.
    let (_, list) = s.req("GET", "/v1/jobs", Some(&a), None);
    let id = list["jobs"][0]["id"].as_u64().unwrap();
    let (c, _) = s.req(
        "POST",
        &format!("/v1/jobs/{id}/cancel"),
        Some(&a),
        Some("{}"),
    );
    assert_eq!(c, 200);
    let (c, v) = s.req("POST", "/v1/jobs", Some(&a), Some(&big));
    assert_eq!(c, 201, "{v}");
    // The accounting is rebuilt by a restart (replay of the log).
    let s = s.restart();
    let (c, v) = s.req("POST", "/v1/jobs", Some(&a), Some(&big));
    assert_eq!(
        (c, &v["error"]["code"]),
        (413, &json!("storage_limit")),
        "{v}"
    );
    // Per-job bytes and pending jobs, set per tenant by the operator.
    let (c, v) = s.req(
        "PATCH",
        "/v1/tenants/lab-b",
        Some(&s.admin),
        Some(r#"{"max_job_bytes":100000,"max_pending_jobs":8}"#),
    );
    assert_eq!(c, 200, "{v}");
    let (c, v) = s.req("POST", "/v1/jobs", Some(&b), Some(&big_job(200_000)));
    assert_eq!(c, 413, "{v}");
    assert_eq!(v["error"]["code"], "job_too_large");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_job_bytes")
    );
    assert!(v["error"]["field"] == "env" || v["error"]["field"] == "command");
    // lab-b has 6 jobs pending or running (none of 16 GPUs free: lab-a holds them).
    let mut codes = Vec::new();
    let mut refusal = Value::Null;
    for _ in 0..10 {
        let (c, v) = s.req("POST", "/v1/jobs", Some(&b), Some(JOB8));
        codes.push(c);
        if c != 201 {
            refusal = v;
        }
    }
    assert!(codes.contains(&429), "{codes:?}");
    assert_eq!(refusal["error"]["code"], "too_many_pending", "{refusal}");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_pending_jobs 8")
    );
    let (_, t) = s.req("GET", "/v1/tenants/lab-b", Some(&b), None);
    assert_eq!(t["pending"], 8, "{t}");
}

#[test]
fn below_the_disk_watermark_submissions_get_507_and_the_rest_goes_on() {
    let s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    let (c, job) = s.req("POST", "/v1/jobs", Some(&a), Some(JOB8));
    assert_eq!(c, 201);
    let (_, h) = s.req("GET", "/healthz", Some(&s.admin), None);
    assert_eq!(
        (&h["status"], &h["disk"]["low"]),
        (&json!("ok"), &json!(false)),
        "{h}"
    );
    // A watermark above any disk's size: the controller is below it.
    std::fs::write(
        s.dir.join("gosok.toml"),
        "min_free_disk_mib = 1000000000000\n",
    )
    .unwrap();
    let s = s.restart();
    let (c, v) = s.req("POST", "/v1/jobs", Some(&a), Some(JOB8));
    assert_eq!(c, 507, "{v}");
    assert_eq!(v["error"]["code"], "disk_low");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("min_free_disk_mib")
    );
    let (_, h) = s.req("GET", "/healthz", Some(&s.admin), None);
    assert_eq!(
        (&h["status"], &h["disk"]["low"]),
        (&json!("degraded"), &json!(true)),
        "{h}"
    );
    let (c, m) = s.req("GET", "/metrics", Some(&s.admin), None);
    assert_eq!(c, 200);
    let m = m.as_str().unwrap();
    assert!(m.contains("gosok_disk_low 1"), "{m}");
    assert!(
        m.contains("gosok_submissions_refused_disk_low_total 1"),
        "{m}"
    );
    // Reads, cancels and operator changes go on.
    let id = job["id"].as_u64().unwrap();
    let j = s.wait_state(&a, id, "running");
    assert_eq!(j["id"], id);
    let (c, v) = s.req(
        "POST",
        &format!("/v1/jobs/{id}/cancel"),
        Some(&a),
        Some("{}"),
    );
    assert_eq!(c, 200, "{v}");
    s.wait_state(&a, id, "cancelled");
    let (c, _) = s.req(
        "PATCH",
        "/v1/tenants/lab-a",
        Some(&s.admin),
        Some(r#"{"weight":2}"#),
    );
    assert_eq!(c, 200);
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all loopback):
/// an attacker's address, apart from the test's own 127.0.0.1.
fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(to) = to else {
        panic!("the server listens on IPv4")
    };
    // SAFETY: plain socket calls on a descriptor this function owns (the TcpStream closes it).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_addr.s_addr = u32::from_ne_bytes(from);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, &a as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut d = a;
        d.sin_port = to.port().to_be();
        d.sin_addr.s_addr = u32::from_ne_bytes(to.ip().octets());
        if libc::connect(fd, &d as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Whether the server closed `c` before `deadline` (end of file or reset on read).
fn closed_by(c: &mut std::net::TcpStream, deadline: Instant) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        c.set_read_timeout(Some(left)).unwrap();
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a response (e.g. 408); the close follows
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn two_thousand_idle_and_half_sent_connections_do_not_stop_the_controller() {
    use std::io::{Read, Write};
    let s = Server::with_config(
        &[],
        // A header timeout long enough that each address surely has 300 connections open at
        // once, however slowly a busy machine opens them.
        "header_read_timeout_ms = 5000\nidle_timeout_ms = 8000\nbody_read_timeout_ms = 1000\nmax_connections = 1500\nmax_connections_per_address = 300\n",
    );
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    let addr: std::net::SocketAddr = s.base.trim_start_matches("http://").parse().unwrap();
    let t0 = Instant::now();
    // 1,000 idle connections from one address, 1,000 half-sent requests from another.
    let mut attack = Vec::new();
    for i in 0..2000 {
        let from = if i % 2 == 0 {
            [127, 0, 0, 2]
        } else {
            [127, 0, 0, 3]
        };
        let mut c = connect_from(from, addr).unwrap();
        if i % 2 == 1 {
            let _ = c.write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: gosok\r\nContent-Type: app");
        }
        attack.push(c);
    }
    // While they are open, a health check and a tenant's submission are answered at once.
    let quick = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(1))
        .build();
    let h = quick
        .get(&format!("{}/healthz", s.base))
        .call()
        .expect("/healthz answers within 1 s under the attack");
    assert_eq!(h.status(), 200);
    let r = quick
        .post(&format!("{}/v1/jobs", s.base))
        .set("Authorization", &format!("Bearer {a}"))
        .set("Content-Type", "application/json")
        .send_string(JOB8)
        .expect("a submission is answered within 1 s under the attack");
    assert_eq!(r.status(), 201);
    // Every attacking connection is closed: beyond 300 per address at once, the rest once
    // the header timeout runs out (5 s; generous bound here).
    let deadline = Instant::now() + Duration::from_secs(20);
    let open = attack
        .iter_mut()
        .filter_map(|c| (!closed_by(c, deadline)).then_some(()))
        .count();
    assert_eq!(open, 0, "connections still open after {:?}", t0.elapsed());
    let (_, m) = s.req("GET", "/metrics", Some(&s.admin), None);
    let m = m.as_str().unwrap().to_string();
    let counter = |limit: &str| -> u64 {
        let key = format!("gosok_http_connections_closed_by_limit_total{{limit=\"{limit}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    // Which limit closed which connection depends on how fast they were opened; together
    // they closed every one.
    let (per_address, header) = (
        counter("max_connections_per_address"),
        counter("header_read_timeout"),
    );
    assert!(per_address >= 1 && header >= 600, "{m}");
    assert!(per_address + header >= 2000, "{m}");

    // A kept-alive connection is not closed by the header timeout while idle, only by the
    // idle timeout.
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: gosok\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert!(!closed_by(
        &mut c,
        Instant::now() + Duration::from_millis(6000)
    ));
    assert!(closed_by(&mut c, Instant::now() + Duration::from_secs(20)));
    // A body that stops arriving gets 408 after body_read_timeout_ms.
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(
        format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: gosok\r\nAuthorization: Bearer {a}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"groups\""
        )
        .as_bytes(),
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let n = c.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_read_timeout_ms"), "{text}");
}

/// Starts `gosok server run` on `dir`, which must refuse to start; returns what it said.
fn refused_start(dir: &Path) -> String {
    let mut child = Command::new(GOSOK)
        .args(["server", "run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert!(!status.success(), "{err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started on a damaged data directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the server as an operator would (SIGTERM): it writes a snapshot on the way out.
fn stop_cleanly(s: &mut Server) {
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_flipped_bit_in_a_snapshot_stops_the_start_with_what_to_do() {
    let mut s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    for _ in 0..5 {
        let (c, _) = s.req("POST", "/v1/jobs", Some(&a), Some(JOB8));
        assert_eq!(c, 201);
    }
    stop_cleanly(&mut s);
    let snapshots = s.dir.join("gosok.snapshots.db");
    let mut bytes = std::fs::read(&snapshots).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == b"gosokCOR")
        .expect("the shutdown snapshot is in the file");
    let verify = |dir: &Path| {
        let out = Command::new(GOSOK)
            .args(["server", "verify", "--data-dir"])
            .arg(dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = verify(&s.dir);
    assert!(ok && out.contains("every checksum matches"), "{out}");
    bytes[at + 100] ^= 0x04;
    std::fs::write(&snapshots, &bytes).unwrap();
    let (ok, out) = verify(&s.dir);
    assert!(!ok && out.contains("fails its checksum"), "{out}");
    let err = refused_start(&s.dir);
    assert!(err.contains("fails its checksum"), "{err}");
    assert!(
        err.contains("gosok server recover") && err.contains("--drop-snapshots"),
        "{err}"
    );
    // Doing what it says: the whole log is replayed, and every job is there.
    std::fs::rename(&snapshots, s.dir.join("damaged.snapshots.db")).unwrap();
    let s = Server::run(&s.dir.clone(), &[], s.admin.clone());
    let (_, list) = s.req("GET", "/v1/jobs", Some(&a), None);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 5, "{list}");
    let (_, h) = s.req("GET", "/healthz", Some(&s.admin), None);
    assert_eq!(h["replay"]["snapshot_seq"], 0, "{h}");
}

#[test]
fn a_log_that_lost_its_write_ahead_file_is_refused_not_served() {
    let mut s = Server::with_config(&[], "snapshot_every_records = 10\n");
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    for _ in 0..30 {
        let (c, _) = s.req("POST", "/v1/jobs", Some(&a), Some(JOB8));
        assert_eq!(c, 201);
    }
    // Wait for a periodic snapshot to be committed (in its file, and its rollback journal
    // emptied), then crash: the log's tail is only in gosok.db-wal.
    let snapshots = s.dir.join("gosok.snapshots.db");
    let journal = s.dir.join("gosok.snapshots.db-journal");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(std::fs::read(&snapshots).is_ok_and(|b| b.windows(8).any(|w| w == b"gosokCOR"))
        && std::fs::metadata(&journal).map_or(true, |m| m.len() == 0))
    {
        assert!(Instant::now() < deadline, "no snapshot was written");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.kill();
    let wal = s.dir.join("gosok.db-wal");
    assert!(wal.exists());
    std::fs::remove_file(&wal).unwrap();
    let _ = std::fs::remove_file(s.dir.join("gosok.db-shm"));
    let out = Command::new(GOSOK)
        .args(["server", "verify", "--data-dir"])
        .arg(&s.dir)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("ends at record"),
        "{said}"
    );
    let err = refused_start(&s.dir);
    assert!(err.contains("the event log ends at record"), "{err}");
    assert!(err.contains("gosok.db-wal"), "{err}");
    // Refused every time, not only once.
    let err = refused_start(&s.dir);
    assert!(
        err.contains("latest snapshot covers records up to"),
        "{err}"
    );
    // Recovery only as chosen: without a choice it names the one that would do.
    let (ok, out) = recover(&s.dir, &[]);
    assert!(!ok && out.contains("--drop-snapshots"), "{out}");
    let (ok, out) = recover(&s.dir, &["--drop-snapshots"]);
    assert!(ok && out.contains("dropped snapshots"), "{out}");
    let (ok, out) = recover(&s.dir, &[]);
    assert!(ok && out.contains("nothing to recover"), "{out}");
    // The controller serves the log as it is, and the audit log says what was done.
    let s = Server::run(&s.dir.clone(), &[], s.admin.clone());
    let (c, ev) = s.req("GET", "/v1/events?limit=1000", Some(&s.admin), None);
    assert_eq!(c, 200);
    let last = ev["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "recovered", "{last}");
    assert!(
        last["entry"]["reason"]
            .as_str()
            .unwrap()
            .contains("covers records the log does not have"),
        "{last}"
    );
}

/// Runs `gosok server recover --data-dir DIR ARGS`: whether it succeeded, and what it said.
fn recover(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(GOSOK)
        .args(["server", "recover", "--data-dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_damaged_log_record_is_refused_and_recovery_truncates_only_when_chosen() {
    let mut s = Server::new(&[]);
    s.apply_cluster(CLUSTER);
    let a = s.token("lab-a");
    let job = |name: &str| {
        format!(
            r#"{{"name":"{name}","groups":[{{"replicas":1,"accelerators":8,"models":["H100"]}}]}}"#
        )
    };
    for name in ["before-1", "before-2", "damaged-record", "after-1"] {
        let (c, _) = s.req("POST", "/v1/jobs", Some(&a), Some(&job(name)));
        assert_eq!(c, 201);
    }
    stop_cleanly(&mut s);
    // One bit of the third submission's record, in the log file itself.
    let db = s.dir.join("gosok.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let at = bytes
        .windows(14)
        .position(|w| w == b"damaged-record")
        .expect("the record is in gosok.db after a clean stop");
    bytes[at] ^= 0x01;
    std::fs::write(&db, &bytes).unwrap();
    // Also move the shutdown snapshot aside: the start must then read the damaged record.
    std::fs::rename(
        s.dir.join("gosok.snapshots.db"),
        s.dir.join("old.snapshots.db"),
    )
    .unwrap();
    let err = refused_start(&s.dir);
    assert!(err.contains("fails its checksum"), "{err}");
    let (ok, out) = recover(&s.dir, &[]);
    assert!(!ok && out.contains("--truncate-log"), "{out}");
    let (ok, out) = recover(&s.dir, &["--truncate-log"]);
    assert!(ok && out.contains("dropped records"), "{out}");
    let s = Server::run(&s.dir.clone(), &[], s.admin.clone());
    let (_, list) = s.req("GET", "/v1/jobs", Some(&a), None);
    let names: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["before-2", "before-1"], "{list}");
    let (_, ev) = s.req("GET", "/v1/events?limit=1000", Some(&s.admin), None);
    let last = ev["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "recovered", "{last}");
    assert!(last["entry"]["dropped_records"].is_array(), "{last}");
}

#[test]
fn a_log_flood_against_a_hung_agent_does_not_delay_placements() {
    use std::io::{Read, Write};
    let s = Server::new(&[]);
    // The hung agent's node joins the rack as it registers.
    let cluster = CLUSTER.replacen(
        "name = \"ph-r1\"\n",
        "name = \"ph-r1\"\nallow_undeclared_nodes = true\n",
        1,
    );
    assert_ne!(cluster, CLUSTER);
    s.apply_cluster(&cluster);
    let a = s.token("lab-a");
    let (c, v) = s.req("POST", "/v1/agent-tokens", Some(&s.admin), Some("{}"));
    assert_eq!(c, 201, "{v}");
    let agent_token = v["token"].as_str().unwrap().to_string();
    // An agent whose log server accepts connections and never answers (a hung agent).
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let logs_url = format!("http://{}", hung.local_addr().unwrap());
    let (c, v) = s.req(
        "POST",
        "/v1/agent/register",
        Some(&agent_token),
        Some(
            &json!({"agent": "hung", "address": "127.0.0.1", "logs_url": logs_url, "logs_secret": "x",
                "nodes": [{"name": "hung-1", "site": "pohang", "rack": "ph-r1", "cpu_cores": 112,
                           "mem_mib": 2097152, "accelerator": "H100", "accelerators": 8}]})
            .to_string(),
        ),
    );
    assert_eq!(c, 200, "{v}");
    let epoch = v["nodes"][0]["epoch"].as_u64().unwrap();
    for n in ["ph-r1-n-000", "ph-r1-n-001"] {
        let (c, _) = s.req(
            "POST",
            &format!("/v1/nodes/{n}/drain"),
            Some(&s.admin),
            None,
        );
        assert_eq!(c, 200);
    }
    let (c, ja) = s.req("POST", "/v1/jobs", Some(&a), Some(JOB8));
    assert_eq!(c, 201);
    let id = ja["id"].as_u64().unwrap();
    let j = s.wait_state(&a, id, "running");
    assert_eq!(j["placement"][0]["node"], "hung-1", "{j}");
    let (c, v) = s.req(
        "POST",
        "/v1/agent/sync",
        Some(&agent_token),
        Some(
            &json!({"agent": "hung", "nodes": [{"name": "hung-1", "epoch": epoch}],
                    "logs_url": logs_url, "logs_secret": "x"})
            .to_string(),
        ),
    );
    assert_eq!(c, 200, "{v}");
    // 600 log reads of that job at once, from three addresses.
    let addr: std::net::SocketAddr = s.base.trim_start_matches("http://").parse().unwrap();
    let mut flood = Vec::new();
    for i in 0..600u32 {
        let from = [127, 0, 0, 2 + (i % 3) as u8];
        let mut c = connect_from(from, addr).unwrap();
        c.write_all(
            format!("GET /v1/jobs/{id}/logs HTTP/1.1\r\nHost: gosok\r\nAuthorization: Bearer {a}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        flood.push(c);
    }
    // Meanwhile a node comes back and a job is placed on it as soon as the next pass runs.
    let (c, _) = s.req(
        "POST",
        "/v1/nodes/ph-r1-n-000/undrain",
        Some(&s.admin),
        None,
    );
    assert_eq!(c, 200);
    let t0 = Instant::now();
    let (c, jb) = s.req("POST", "/v1/jobs", Some(&a), Some(JOB8));
    assert_eq!(c, 201);
    let b = jb["id"].as_u64().unwrap();
    s.wait_state(&a, b, "running");
    // The hung agent's reads time out after 5 s; the placement must not wait for them
    // (a generous bound: passes run every 200 ms here).
    let placed = t0.elapsed();
    assert!(placed < Duration::from_secs(2), "placed after {placed:?}");
    let mut busy = 0;
    for c in &mut flood {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 2048];
        let n = c.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        if text.contains("logs_busy") {
            busy += 1;
            assert!(text.contains("max_log_fetches_per_agent"), "{text}");
        }
    }
    // At most max_log_fetches_per_agent (4) waited on the agent; the rest were told at once.
    assert!(busy >= 596, "{busy} of 600 refused at once");
    drop(hung);
}

#[test]
fn the_api_is_served_over_tls_to_clients_that_trust_its_ca() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let (cert, key, ca) = (
        fixtures.join("server.pem"),
        fixtures.join("server.key"),
        fixtures.join("ca.pem"),
    );
    let s = Server::new(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(s.base.starts_with("https://127.0.0.1:"), "{}", s.base);
    let ca = ca.to_str().unwrap();
    let f = s.dir.join("cluster.toml");
    std::fs::write(&f, CLUSTER).unwrap();
    let (ok, out, err) = s.cli(&s.admin, &["apply", f.to_str().unwrap(), "--ca", ca]);
    assert!(ok && out.contains("site pohang: added"), "{out}{err}");
    let (ok, out, err) = s.cli(
        &s.admin,
        &["token", "create", "lab-a", "--output", "json", "--ca", ca],
    );
    assert!(ok, "{err}");
    let a = serde_json::from_str::<Value>(&out).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out, err) = s.cli(
        &a,
        &[
            "submit",
            "--accelerators",
            "8",
            "--model",
            "H100",
            "--output",
            "json",
            "--ca",
            ca,
        ],
    );
    assert!(ok, "{err}");
    let state = serde_json::from_str::<Value>(&out).unwrap()["state"].clone();
    assert!(state == "pending" || state == "running", "{out}");
    // A client that does not trust the CA refuses the server...
    let (ok, _, err) = s.cli(&a, &["jobs"]);
    assert!(!ok && err.to_lowercase().contains("certificate"), "{err}");
    // ...and plain HTTP to the TLS port gets no answer.
    let plain = s.base.replace("https://", "http://");
    let r = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
        .get(&format!("{plain}/healthz"))
        .call();
    assert!(r.is_err(), "plain HTTP was answered");
    let (ok, out, _) = s.cli(&a, &["jobs", "--output", "json", "--ca", ca]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // An agent speaks the agent protocol over TLS too, trusting the same CA, and runs a job.
    let (ok, out, err) = s.cli(
        &s.admin,
        &["token", "create", "--agent", "--output", "json", "--ca", ca],
    );
    assert!(ok, "{err}");
    let agent_token = serde_json::from_str::<Value>(&out).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out, err) = s.cli(
        &a,
        &[
            "submit",
            "--accelerators",
            "1",
            "--model",
            "H100",
            "--output",
            "json",
            "--ca",
            ca,
            "--",
            "sh",
            "-c",
            "echo over-tls",
        ],
    );
    assert!(ok, "{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_u64()
        .unwrap();
    let mut agent = Command::new(GOSOK)
        .arg("agent")
        .args(["--server", &s.base, "--ca", ca, "--isolation", "none"])
        .args([
            "--site", "pohang", "--rack", "ph-r1", "--name", "ph-r1-n", "--nodes", "2",
        ])
        .args([
            "--fake-accelerators",
            "8xH100",
            "--cpu-cores",
            "112",
            "--mem-mib",
            "2097152",
        ])
        .arg("--work-dir")
        .arg(s.dir.join("agent"))
        .env("GOSOK_TOKEN", &agent_token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let (_, out, _) = s.cli(
            &a,
            &["show", &id.to_string(), "--output", "json", "--ca", ca],
        );
        let state = serde_json::from_str::<Value>(&out)
            .map(|v| v["state"].clone())
            .unwrap_or_default();
        if state == "succeeded" || state == "failed" || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(state, "succeeded");
}

#[test]
fn labels_and_taints_of_the_cluster_file_steer_placement_over_the_api() {
    let s = Server::new(&[]);
    let cluster = format!(
        "{CLUSTER}\n{}",
        r#"
[[node]]
name = "ph-r1-inf"
rack = "ph-r1"
cpu_cores = 64
mem_mib = 524288
accelerator = "H100"
accelerators = 8
state = "up"
labels = { pool = "inference" }
taints = ["dedicated=inference"]
"#
    );
    s.apply_cluster(&cluster);
    let a = s.token("lab-a");
    // Selecting the inference node without tolerating its taint can never run: 422 naming it.
    let (code, v) = s.req(
        "POST",
        "/v1/jobs",
        Some(&a),
        Some(
            r#"{"groups":[{"accelerators":8}],"constraints":{"node_labels":{"pool":"inference"}}}"#,
        ),
    );
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["error"]["field"], "taints", "{v}");
    let (code, v) = s.req(
        "POST",
        "/v1/jobs",
        Some(&a),
        Some(r#"{"groups":[{"accelerators":8}],"constraints":{"node_labels":{"pool":"inference"},"tolerations":["dedicated=inference"]}}"#),
    );
    assert_eq!(code, 201, "{v}");
    let j = s.wait_state(&a, v["id"].as_u64().unwrap(), "running");
    assert_eq!(j["placement"][0]["node"], "ph-r1-inf", "{j}");
    // Three whole-node jobs without tolerations: two run on the untainted nodes, the third
    // waits, and its explanation names the taints (the tainted node is free, not for it).
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (code, v) = s.req("POST", "/v1/jobs", Some(&a), Some(JOB8));
        assert_eq!(code, 201, "{v}");
        ids.push(v["id"].as_u64().unwrap());
    }
    for &id in &ids[..2] {
        let j = s.wait_state(&a, id, "running");
        assert_ne!(j["placement"][0]["node"], "ph-r1-inf", "{j}");
    }
    let (_, v) = s.req("GET", &format!("/v1/jobs/{}", ids[2]), Some(&a), None);
    assert_eq!(v["state"], "pending", "{v}");
    // The export carries labels and taints back in the cluster-file format.
    let (ok, out, err) = s.cli(&s.admin, &["export"]);
    assert!(ok, "{err}");
    assert!(out.contains("taints = [\"dedicated=inference\"]"), "{out}");
    assert!(out.contains("pool = \"inference\""), "{out}");
}

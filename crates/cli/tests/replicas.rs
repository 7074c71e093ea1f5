//! Failover of controller replicas over PostgreSQL: three real `gosok server run` processes
//! on one throwaway PostgreSQL cluster (started by the test), a real agent, real clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

/// The leader's lease in these tests (the default).
const LEASE_MS: u64 = 2000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One HTTP call; None when the server cannot be reached.
fn try_http(
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Option<(u16, Value)> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let mut r = agent
        .request(method, url)
        .set("Authorization", &format!("Bearer {token}"));
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let res = match body {
        Some(b) => r
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(_) => return None,
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    Some((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn http(method: &str, url: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    try_http(method, url, token, body, &[]).unwrap_or_else(|| panic!("{method} {url}: unreachable"))
}

/// As `http`, but a 503 (no replica leads for a moment: a lease ran out on a busy machine and
/// an election is under way) is retried, as the API asks clients to, for up to 20 s. Nothing was
/// accepted with a 503, so a retried submission cannot be taken twice.
fn http_through_elections(
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = http(method, url, token, body);
        if s != 503 || Instant::now() >= deadline {
            return (s, v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Replica {
    dir: PathBuf,
    port: u16,
    store: String,
    child: Option<Child>,
    /// Stopped by SIGSTOP (and seen stopped in /proc): it cannot answer, so nobody asks it.
    frozen: bool,
}

impl Replica {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("replica.log"))
            .unwrap();
        let mut child = Command::new(GOSOK)
            .args(["server", "run", "--tick-ms", "200", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--store", &self.store])
            .stdout(log)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("replica.log"))
            .unwrap();
        loop {
            assert!(Instant::now() < deadline, "the replica did not start");
            let Some(Ok(line)) = lines.next() else {
                panic!("the replica exited before listening");
            };
            let _ = writeln!(file, "{line}");
            if line.contains("listening on ") {
                break;
            }
        }
        std::thread::spawn(move || {
            for l in lines.by_ref().map_while(Result::ok) {
                let _ = writeln!(file, "{l}");
            }
        });
        self.child = Some(child);
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// The kernel's state letter for each of the process's threads (`T` once stopped).
    fn thread_states(&self) -> Vec<char> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return Vec::new();
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
            // The name in parentheses may hold spaces; the state follows the last ')'.
            .filter_map(|stat| stat.rsplit_once(')')?.1.trim_start().chars().next())
            .collect()
    }

    /// Freezes the replica as a long pause would (SIGSTOP), returning once the kernel shows
    /// every thread stopped: kill(2) only queues the signal.
    fn freeze(&mut self) {
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGSTOP) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let states = self.thread_states();
            if !states.is_empty() && states.iter().all(|&c| c == 'T') {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica did not stop: thread states {states:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.frozen = true;
    }

    fn thaw(&mut self) {
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGCONT) }, 0);
        self.frozen = false;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn ready(&self) -> bool {
        matches!(
            try_http("GET", &format!("{}/readyz", self.base()), "", None, &[]),
            Some((200, _))
        )
    }

    /// `/v1/replica`, which needs an admin token.
    fn status(&self, admin: &str) -> Value {
        http("GET", &format!("{}/v1/replica", self.base()), admin, None).1
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("replica.log")).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen one must be woken to die cleanly.
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}

struct Highway {
    tmp: tempfile::TempDir,
    shared: tempfile::TempDir,
    pg: Cluster,
    db: String,
    replicas: Vec<Replica>,
    admin: String,
    tenant: String,
    agent: Option<Child>,
}

impl Highway {
    /// Initialises the store; `stores[i]` is the URL replica i reaches PostgreSQL at (a
    /// proxy's, or the cluster's); replicas are not started.
    fn new(name: &str, stores: impl Fn(&str) -> Vec<String>) -> Highway {
        let pg = Cluster::start().expect("a throwaway PostgreSQL cluster");
        let db = pg.create_db(name).unwrap();
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let shared = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777))
                .unwrap();
        }
        let first = tmp.path().join("r0");
        let out = Command::new(GOSOK)
            .args(["server", "init", "--data-dir"])
            .arg(&first)
            .args(["--store", &db])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let replicas = stores(&db)
            .into_iter()
            .enumerate()
            .map(|(i, store)| {
                let dir = tmp.path().join(format!("r{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(
                    dir.join("gosok.toml"),
                    "agent_lease_ms = 8000\ntask_grace_s = 1\nidle_tick_ms = 1000\n\
                     submit_rate_per_s = 100000.0\nsubmit_burst = 100000.0\n",
                )
                .unwrap();
                Replica {
                    dir,
                    port: free_port(),
                    store,
                    child: None,
                    frozen: false,
                }
            })
            .collect();
        Highway {
            tmp,
            shared,
            pg,
            db,
            replicas,
            admin,
            tenant: String::new(),
            agent: None,
        }
    }

    fn urls(&self) -> String {
        self.replicas
            .iter()
            .map(Replica::base)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the replica that is ready (leads), waiting up to `within`.
    fn leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let ready: Vec<usize> = (0..self.replicas.len())
                .filter(|&i| {
                    let r = &self.replicas[i];
                    r.child.is_some() && !r.frozen && r.ready()
                })
                .collect();
            if ready.len() == 1 {
                return ready[0];
            }
            assert!(ready.len() <= 1, "two replicas lead at once: {ready:?}");
            assert!(
                Instant::now() < deadline,
                "no replica leads; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("--- {}\n{}", r.base(), r.log()))
            .collect()
    }

    /// Topology, a tenant and its token, through the leader.
    fn setup(&mut self) {
        let l = self.replicas[self.leader(Duration::from_secs(30))].base();
        let cluster: Value =
            serde_json::to_value(toml::from_str::<toml::Value>(CLUSTER).unwrap()).unwrap();
        let (s, v) = http_through_elections(
            "PUT",
            &format!("{l}/v1/topology"),
            &self.admin,
            Some(&cluster),
        );
        assert_eq!(s, 200, "{v}");
        let (s, v) = http_through_elections(
            "POST",
            &format!("{l}/v1/tenants/lab/tokens"),
            &self.admin,
            Some(&json!({})),
        );
        assert_eq!(s, 201, "{v}");
        self.tenant = v["token"].as_str().unwrap().to_string();
    }

    /// A real agent on node ph-000, following the replicas.
    fn start_agent(&mut self) {
        let l = self.replicas[self.leader(Duration::from_secs(30))].base();
        let (s, v) = http_through_elections(
            "POST",
            &format!("{l}/v1/agent-tokens"),
            &self.admin,
            Some(&json!({})),
        );
        assert_eq!(s, 201, "{v}");
        let token_file = self.tmp.path().join("agent.token");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&token_file)
                .unwrap();
            f.write_all(v["token"].as_str().unwrap().as_bytes())
                .unwrap();
        }
        let log = std::fs::File::create(self.tmp.path().join("agent.log")).unwrap();
        let mut cmd = Command::new(GOSOK);
        cmd.arg("agent")
            .args(["--server", &self.urls()])
            .arg("--token-file")
            .arg(&token_file)
            .args(["--isolation", if root() { "sandbox" } else { "none" }])
            .arg("--uid-map")
            .arg(self.tmp.path().join("tenant-uids"));
        for r in &self.replicas {
            cmd.arg("--hide").arg(&r.dir);
        }
        let child = cmd
            .args(["--site", "pohang", "--rack", "ph-r1", "--name", "ph"])
            .args(["--nodes", "1", "--fake-accelerators", "8xH100"])
            .args(["--cpu-cores", "64", "--mem-mib", "262144"])
            .arg("--work-dir")
            .arg(self.tmp.path().join("agent-work"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        self.wait("the agent's node up", Duration::from_secs(30), || {
            let (_, v) = self.call("GET", "/v1/nodes", &self.admin.clone(), None);
            v["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|x| x["name"] == "ph-000" && x["state"] == "up")
            })
        });
    }

    /// A call through the CLI's rule: any replica (a follower forwards).
    fn call(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for r in self
                .replicas
                .iter()
                .filter(|r| r.child.is_some() && !r.frozen)
            {
                if let Some((s, v)) =
                    try_http(method, &format!("{}{path}", r.base()), token, body, &[])
                    && s != 503
                {
                    return (s, v);
                }
            }
            assert!(
                Instant::now() < deadline,
                "{method} {path}: no replica answers"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait(&self, what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; logs:\n{}\nagent:\n{}",
                self.logs(),
                std::fs::read_to_string(self.tmp.path().join("agent.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn job(&self, id: u64) -> Value {
        let (s, v) = self.call("GET", &format!("/v1/jobs/{id}"), &self.tenant, None);
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Every job's (id, name), all pages.
    fn all_jobs(&self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let path = format!("/v1/jobs?limit=1000{cursor}");
            let (s, v) = self.call("GET", &path, &self.tenant, None);
            assert_eq!(s, 200, "{v}");
            for j in v["jobs"].as_array().unwrap() {
                out.push((
                    j["id"].as_u64().unwrap(),
                    j["name"].as_str().unwrap_or("").to_string(),
                ));
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => return out,
            }
        }
    }

    /// The terms of the log's records, in order.
    fn terms(&self) -> Vec<(i64, i64)> {
        let mut c = postgres::Client::connect(&self.db, postgres::NoTls).unwrap();
        c.query("SELECT seq, term FROM gosok_events ORDER BY seq", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

impl Drop for Highway {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            // SAFETY: kill(2) of our own child; SIGTERM lets it stop its tasks.
            unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && a.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = &self.pg;
    }
}

/// A submitting client: its own key per job, retried (same key) until answered, moving to
/// the next replica when one fails. Returns the acknowledged (id, name)s.
fn storm_client(
    k: usize,
    urls: Vec<String>,
    token: String,
    stop: Arc<AtomicBool>,
) -> Vec<(u64, String)> {
    let mut acked = Vec::new();
    let mut at = k;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let name = format!("c{k}-{n}");
        let spec = json!({"name": name, "hold": true, "groups": [{"accelerators": 1}]});
        loop {
            let url = format!("{}/v1/jobs", urls[at % urls.len()]);
            match try_http(
                "POST",
                &url,
                &token,
                Some(&spec),
                &[("Idempotency-Key", &name)],
            ) {
                Some((200 | 201, v)) => {
                    acked.push((v["id"].as_u64().unwrap(), name.clone()));
                    break;
                }
                Some((s, v)) => {
                    assert!(s == 503 || s == 502, "client {k}: {s} {v}");
                    at += 1;
                }
                None => at += 1,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        n += 1;
    }
    acked
}

#[test]
fn a_sigkilled_leader_loses_no_acknowledged_job_and_running_tasks_go_on() {
    let mut h = Highway::new("storm", |db| vec![db.to_string(); 3]);
    for r in &mut h.replicas {
        r.start();
    }
    h.setup();
    h.start_agent();
    // A task that runs through the change: it leaves one mark per start.
    let marks = h.shared.path().join("starts");
    let script = format!("echo started >> {}; sleep 1000", marks.display());
    let (s, v) = h.call(
        "POST",
        "/v1/jobs",
        &h.tenant.clone(),
        Some(&json!({"name": "long", "groups": [{"accelerators": 1}], "command": ["sh", "-c", script]})),
    );
    assert_eq!(s, 201, "{v}");
    let long = v["id"].as_u64().unwrap();
    h.wait("the long task running", Duration::from_secs(30), || {
        std::fs::read_to_string(&marks).is_ok_and(|m| m.lines().count() == 1)
    });

    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = h.replicas.iter().map(Replica::base).collect();
    let clients: Vec<_> = (0..8)
        .map(|k| {
            let (urls, token, stop) = (urls.clone(), h.tenant.clone(), stop.clone());
            std::thread::spawn(move || storm_client(k, urls, token, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let old = h.leader(Duration::from_secs(5));
    let killed = Instant::now();
    h.replicas[old].kill();
    let new = h.leader(Duration::from_secs(15));
    let takeover = killed.elapsed();
    assert_ne!(new, old);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<(u64, String)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        acked.len() > 50,
        "only {} submissions acknowledged",
        acked.len()
    );
    eprintln!(
        "takeover after SIGKILL: {} ms; {} submissions acknowledged",
        takeover.as_millis(),
        acked.len()
    );

    // Every acknowledged job is there, once.
    let jobs = h.all_jobs();
    let mut names = std::collections::HashMap::new();
    for (id, name) in &jobs {
        if name.starts_with('c') {
            assert!(names.insert(name.clone(), *id).is_none(), "{name} twice");
        }
    }
    for (id, name) in &acked {
        assert_eq!(
            names.get(name),
            Some(id),
            "acknowledged job {id} ({name}) lost"
        );
    }

    // The running task was neither restarted nor killed, through a whole agent lease
    // (8 s here; 330 s by default) under the new leader.
    std::thread::sleep(Duration::from_secs(9));
    let j = h.job(long);
    assert_eq!(j["state"], "running", "{j}");
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap().lines().count(),
        1,
        "the long task started again: {j}\nagent:\n{}\n{}",
        std::fs::read_to_string(h.tmp.path().join("agent.log")).unwrap_or_default(),
        h.logs()
    );

    // And the highway schedules again.
    let (s, v) = h.call(
        "POST",
        "/v1/jobs",
        &h.tenant.clone(),
        Some(&json!({"name": "after", "groups": [{"accelerators": 1}], "command": ["true"]})),
    );
    assert_eq!(s, 201, "{v}");
    let after = v["id"].as_u64().unwrap();
    h.wait(
        "a job after the takeover to finish",
        Duration::from_secs(30),
        || h.job(after)["state"] == "succeeded",
    );
    // The killed replica comes back as a follower.
    h.replicas[old].start();
    h.wait("the old leader following", Duration::from_secs(20), || {
        h.replicas[old].status(&h.admin)["role"] == "follower"
    });
    assert_eq!(h.leader(Duration::from_secs(1)), new);
}

#[test]
fn a_frozen_leader_is_fenced_by_term_and_steps_down() {
    let mut h = Highway::new("frozen", |db| vec![db.to_string(); 3]);
    for r in &mut h.replicas {
        r.start();
    }
    h.setup();
    let old = h.leader(Duration::from_secs(10));
    let old_term = h.replicas[old].status(&h.admin)["term"].as_u64().unwrap();
    h.replicas[old].freeze();
    // Another takes over once the lease has run out.
    let new = h.leader(Duration::from_secs(15));
    assert_ne!(new, old, "logs:\n{}", h.logs());
    let new_term = h.replicas[new].status(&h.admin)["term"].as_u64().unwrap();
    assert!(new_term > old_term);
    let (s, v) = h.call(
        "POST",
        "/v1/jobs",
        &h.tenant.clone(),
        Some(&json!({"name": "during", "hold": true, "groups": [{"accelerators": 1}]})),
    );
    assert_eq!(s, 201, "{v}");
    // Wake the old leader with work queued for it: it must write nothing, and follow.
    h.replicas[old].thaw();
    h.wait(
        "the old leader stepping down",
        Duration::from_secs(5),
        || h.replicas[old].status(&h.admin)["role"] != "leader",
    );
    assert_eq!(h.leader(Duration::from_secs(1)), new);
    h.wait("the old leader following", Duration::from_secs(10), || {
        h.replicas[old].status(&h.admin)["role"] == "follower"
    });
    // No record of the old term after the first of the new one.
    let terms = h.terms();
    let first_new = terms
        .iter()
        .position(|&(_, t)| t as u64 == new_term)
        .unwrap();
    let stale: Vec<_> = terms[first_new..]
        .iter()
        .filter(|&&(_, t)| (t as u64) < new_term)
        .collect();
    assert!(stale.is_empty(), "written after being deposed: {stale:?}");
    // Terms never go back along the log.
    assert!(terms.windows(2).all(|w| w[0].1 <= w[1].1), "{terms:?}");
}

/// A TCP proxy the test can cut: once cut, it forwards nothing more either way and holds
/// the connections open (a partition, not a reset).
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    fn start(to: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        std::thread::spawn(move || {
            for client in l.incoming().map_while(Result::ok) {
                if c.load(Ordering::SeqCst) {
                    std::mem::forget(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for (mut a, mut b) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let c = c.clone();
                    std::thread::spawn(move || {
                        let _ = a.set_read_timeout(Some(Duration::from_millis(50)));
                        let mut buf = [0u8; 16384];
                        let held = Mutex::new(());
                        loop {
                            if c.load(Ordering::SeqCst) {
                                // Partitioned: hold both ends open, pass nothing.
                                let _g = held.lock();
                                std::thread::sleep(Duration::from_secs(3600));
                            }
                            match a.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    if c.load(Ordering::SeqCst) {
                                        continue;
                                    }
                                    if b.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Proxy { port, cut }
    }
}

#[test]
fn a_leader_cut_from_postgres_stops_leading_before_another_is_elected() {
    let proxy = Arc::new(Mutex::new(None::<Proxy>));
    let p = proxy.clone();
    let mut h = Highway::new("cut", move |db| {
        let port: u16 = db
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        let px = Proxy::start(port);
        let via = db.replace(&format!(":{port}/"), &format!(":{}/", px.port));
        *p.lock().unwrap() = Some(px);
        vec![via, db.to_string(), db.to_string()]
    });
    // Replica 0 (behind the proxy) first, so that it leads.
    h.replicas[0].start();
    assert_eq!(h.leader(Duration::from_secs(15)), 0);
    h.replicas[1].start();
    h.replicas[2].start();
    h.setup();
    std::thread::sleep(Duration::from_millis(500));
    proxy
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .cut
        .store(true, Ordering::SeqCst);
    let cut = Instant::now();
    let mut stopped = None;
    let mut elected = None;
    while elected.is_none() {
        assert!(
            cut.elapsed() < Duration::from_secs(20),
            "no new leader; logs:\n{}",
            h.logs()
        );
        if stopped.is_none() && !h.replicas[0].ready() {
            stopped = Some(cut.elapsed());
        }
        if h.replicas[1].ready() || h.replicas[2].ready() {
            elected = Some(cut.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (stopped, elected) = (
        stopped.expect("the cut leader still leads"),
        elected.unwrap(),
    );
    eprintln!(
        "cut leader stopped leading after {} ms; a new one was elected after {} ms",
        stopped.as_millis(),
        elected.as_millis()
    );
    assert!(stopped < elected, "{stopped:?} !< {elected:?}");
    assert!(stopped < Duration::from_millis(LEASE_MS));
    // Through the new leader the highway takes work.
    let (s, v) = h.call(
        "POST",
        "/v1/jobs",
        &h.tenant.clone(),
        Some(&json!({"name": "after-cut", "hold": true, "groups": [{"accelerators": 1}]})),
    );
    assert_eq!(s, 201, "{v}");
}

#[test]
fn postgres_down_means_clear_503s_and_the_replicas_recover_by_themselves() {
    let mut h = Highway::new("outage", |db| vec![db.to_string(); 3]);
    for r in &mut h.replicas {
        r.start();
    }
    h.setup();
    let leader = h.replicas[h.leader(Duration::from_secs(10))].base();
    let mut acked = Vec::new();
    for n in 0..20 {
        let (s, v) = http_through_elections(
            "POST",
            &format!("{leader}/v1/jobs"),
            &h.tenant,
            Some(
                &json!({"name": format!("before-{n}"), "hold": true, "groups": [{"accelerators": 1}]}),
            ),
        );
        assert_eq!(s, 201, "{v}");
        acked.push(v["id"].as_u64().unwrap());
    }
    h.pg.stop().unwrap();
    // Meanwhile: every replica refuses with 503 and says why; none acknowledges anything.
    let until = Instant::now() + Duration::from_secs(6);
    let mut said_store = false;
    while Instant::now() < until {
        for r in &h.replicas {
            let (s, v) = try_http(
                "POST",
                &format!("{}/v1/jobs", r.base()),
                &h.tenant,
                Some(&json!({"name": "during", "hold": true, "groups": [{"accelerators": 1}]})),
                &[],
            )
            .expect("the replicas stay up");
            assert_eq!(s, 503, "{v}");
            let m = v["error"]["message"].as_str().unwrap_or("").to_lowercase();
            said_store |= m.contains("postgresql") || m.contains("store") || m.contains("log");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(said_store, "no 503 said the store was the problem");
    h.pg.start_server().unwrap();
    let leader = h.leader(Duration::from_secs(30));
    let base = h.replicas[leader].base();
    let (s, v) = http_through_elections(
        "POST",
        &format!("{base}/v1/jobs"),
        &h.tenant,
        Some(&json!({"name": "after", "hold": true, "groups": [{"accelerators": 1}]})),
    );
    assert_eq!(s, 201, "{v}");
    let jobs = h.all_jobs();
    for id in acked {
        assert!(jobs.iter().any(|(j, _)| *j == id), "job {id} lost");
    }
    assert!(
        !jobs.iter().any(|(_, n)| n == "during"),
        "a 503 was acted on"
    );
}

fn gosok(args: &[&str]) -> String {
    let out = Command::new(GOSOK).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "gosok {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts a single SQLite controller on `dir`; returns it and its URL.
fn sqlite_controller(dir: &std::path::Path) -> (Child, String) {
    let port = free_port();
    let mut child = Command::new(GOSOK)
        .args(["server", "run", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("the controller exited before listening");
        };
        if line.contains("listening on ") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, format!("http://127.0.0.1:{port}"))
}

#[test]
fn a_sqlite_highway_migrates_to_postgres_and_backs_up_online_to_a_fresh_controller() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    let admin = gosok(&["server", "init", "--data-dir", old.to_str().unwrap()])
        .trim()
        .to_string();
    let (mut c, base) = sqlite_controller(&old);
    let cluster: Value =
        serde_json::to_value(toml::from_str::<toml::Value>(CLUSTER).unwrap()).unwrap();
    assert_eq!(
        http(
            "PUT",
            &format!("{base}/v1/topology"),
            &admin,
            Some(&cluster)
        )
        .0,
        200
    );
    let submit = |base: &str, name: &str| {
        let (s, v) = http_through_elections(
            "POST",
            &format!("{base}/v1/jobs?tenant=lab"),
            &admin,
            Some(&json!({"name": name, "hold": true, "groups": [{"accelerators": 1}]})),
        );
        assert_eq!(s, 201, "{v}");
        v["id"].as_u64().unwrap()
    };
    let before = submit(&base, "on-sqlite");
    // A clean stop writes a snapshot: the migration carries it too.
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    c.wait().unwrap();

    let pg = Cluster::start().expect("a throwaway PostgreSQL cluster");
    let db = pg.create_db("moved").unwrap();
    let said = gosok(&[
        "server",
        "migrate",
        "--from",
        &format!("sqlite:{}", old.display()),
        "--to",
        &db,
    ]);
    assert!(
        said.contains("moved") && said.contains("snapshot of record"),
        "{said}"
    );
    // A second migration into the now full store is refused.
    let out = Command::new(GOSOK)
        .args(["server", "migrate", "--from"])
        .arg(format!("sqlite:{}", old.display()))
        .args(["--to", &db])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a log"));

    let mut r = Replica {
        dir: tmp.path().join("replica"),
        port: free_port(),
        store: db.clone(),
        child: None,
        frozen: false,
    };
    std::fs::create_dir_all(&r.dir).unwrap();
    r.start();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !r.ready() {
        assert!(Instant::now() < deadline, "{}", r.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (s, v) = http_through_elections(
        "GET",
        &format!("{}/v1/jobs/{before}", r.base()),
        &admin,
        None,
    );
    assert_eq!((s, v["name"].as_str()), (200, Some("on-sqlite")), "{v}");
    let during = submit(&r.base(), "on-postgres");

    // An online backup of the PostgreSQL store starts a fresh SQLite controller.
    let file = tmp.path().join("backup.db");
    let said = gosok(&[
        "server",
        "backup",
        "--from",
        &db,
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(said.contains("backed up"), "{said}");
    // It holds every tenant's log (job environments included): its owner's eyes only.
    use std::os::unix::fs::PermissionsExt;
    for f in [file.clone(), tmp.path().join("backup.snapshots.db")] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::copy(&file, fresh.join("gosok.db")).unwrap();
    let snap = tmp.path().join("backup.snapshots.db");
    if snap.exists() {
        std::fs::copy(&snap, fresh.join("gosok.snapshots.db")).unwrap();
    }
    let (mut c2, base2) = sqlite_controller(&fresh);
    for (id, name) in [(before, "on-sqlite"), (during, "on-postgres")] {
        let (s, v) = http("GET", &format!("{base2}/v1/jobs/{id}"), &admin, None);
        assert_eq!((s, v["name"].as_str()), (200, Some(name)), "{v}");
    }
    let _ = c2.kill();
    let _ = c2.wait();
}

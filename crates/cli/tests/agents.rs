//! End-to-end tests of node agents: the real `gosok` binary as controller and as agents,
//! real HTTP on 127.0.0.1, real task processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const GOSOK: &str = env!("CARGO_BIN_EXE_gosok");

/// Two sites, one rack each; nodes are declared down until an agent claims them.
const CLUSTER: &str = r#"
[[site]]
name = "pohang"
region = "gyeongbuk"
jurisdiction = "KR"
power_budget_mw = 20.0
pue = 1.25

[[site]]
name = "jeonnam"
region = "jeonnam"
jurisdiction = "KR"
power_budget_mw = 20.0
pue = 1.25

[[rack]]
name = "ph-r1"
site = "pohang"
power_cap_kw = 120.0

[[rack]]
name = "jn-r1"
site = "jeonnam"
power_cap_kw = 120.0

[[node]]
name = "ph"
rack = "ph-r1"
count = 2
cpu_cores = 64
mem_mib = 262144
accelerator = "H100"
accelerators = 8

[[node]]
name = "jn"
rack = "jn-r1"
count = 2
cpu_cores = 64
mem_mib = 262144
accelerator = "H100"
accelerators = 8

[[tenant]]
name = "lab"
tier = "academic"
"#;

/// The lease most tests run with: short, so that losses are noticed quickly.
const LEASE_MS: u64 = 1500;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http(method: &str, url: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let r = agent
        .request(method, url)
        .set("Authorization", &format!("Bearer {token}"));
    let res = match body {
        Some(b) => r
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Whether this process can give agents their sandbox (CI runs as root).
fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A controller, the agents started against it, and the tokens to talk to it.
struct Highway {
    tmp: tempfile::TempDir,
    /// A directory every task may write (outside /tmp, which each sandboxed task has a
    /// private one of): where tasks leave marks for the test to read.
    shared: tempfile::TempDir,
    port: u16,
    server: Option<Child>,
    agents: Vec<(String, Child)>,
    admin: String,
    /// An agent token of no running agent, for calling the agent protocol directly.
    agent_token: String,
    /// Each agent's own token.
    agent_tokens: Vec<(String, String)>,
    tenant: String,
    /// The agents' flags beyond the usual (e.g. `--task-pids-max`).
    agent_flags: Vec<String>,
}

impl Highway {
    fn new() -> Highway {
        Highway::with_lease(LEASE_MS)
    }

    fn with_lease(lease_ms: u64) -> Highway {
        // Outside /tmp (each sandboxed task has a private one): the agents must hide their
        // work directories and the controller's data directory themselves.
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let dir = tmp.path().join("data");
        let out = Command::new(GOSOK)
            .args(["server", "init", "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(
            dir.join("gosok.toml"),
            format!("agent_lease_ms = {lease_ms}\ntask_grace_s = 1\nidle_tick_ms = 1000\n"),
        )
        .unwrap();
        let admin = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let shared = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777))
                .unwrap();
        }
        let mut h = Highway {
            tmp,
            shared,
            port: free_port(),
            server: None,
            agents: Vec::new(),
            admin,
            agent_token: String::new(),
            agent_tokens: Vec::new(),
            tenant: String::new(),
            agent_flags: Vec::new(),
        };
        h.start_server();
        let (s, v) = h.put_topology();
        assert_eq!(s, 200, "{v}");
        h.agent_token = h.new_agent_token();
        let (s, v) = h.call(
            "POST",
            "/v1/tenants/lab/tokens",
            &h.admin.clone(),
            Some(&json!({})),
        );
        assert_eq!(s, 201, "{v}");
        h.tenant = v["token"].as_str().unwrap().to_string();
        h
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn new_agent_token(&self) -> String {
        let (s, v) = self.call("POST", "/v1/agent-tokens", &self.admin, Some(&json!({})));
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// A path tasks can write and the test can read.
    fn shared(&self, name: &str) -> PathBuf {
        self.shared.path().join(name)
    }

    /// A second tenant and its token.
    fn tenant_token(&self, tenant: &str) -> String {
        let (s, v) = self.call(
            "POST",
            "/v1/tenants",
            &self.admin,
            Some(&json!({"name": tenant, "tier": "startup"})),
        );
        assert!(s == 201 || s == 200, "{v}");
        let (s, v) = self.call(
            "POST",
            &format!("/v1/tenants/{tenant}/tokens"),
            &self.admin,
            Some(&json!({})),
        );
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn put_topology(&self) -> (u16, Value) {
        let cluster: Value = {
            let c: toml::Value = toml::from_str(CLUSTER).unwrap();
            serde_json::to_value(c).unwrap()
        };
        self.call("PUT", "/v1/topology", &self.admin, Some(&cluster))
    }

    fn start_server(&mut self) {
        let mut child = Command::new(GOSOK)
            .args(["server", "run", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "the server did not start");
            let Some(Ok(line)) = lines.next() else {
                panic!("the server exited before listening");
            };
            if line.contains("listening on ") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines.by_ref() {});
        self.server = Some(child);
    }

    fn kill_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts an agent hosting `nodes` virtual nodes named `name-000`… in `rack`, with a
    /// token of its own (sandboxed when the test runs as root).
    fn agent(&mut self, name: &str, site: &str, rack: &str, nodes: u32) {
        let work = self.tmp.path().join(format!("agent-{name}"));
        let log = std::fs::File::create(self.tmp.path().join(format!("agent-{name}.log"))).unwrap();
        let token = self.new_agent_token();
        let token_file = self.tmp.path().join(format!("agent-{name}.token"));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&token_file)
                .unwrap();
            f.write_all(token.as_bytes()).unwrap();
        }
        self.agent_tokens.push((name.to_string(), token));
        let child = Command::new(GOSOK)
            .arg("agent")
            .args(["--server", &self.base()])
            .arg("--token-file")
            .arg(&token_file)
            .args(["--isolation", if root() { "sandbox" } else { "none" }])
            .arg("--uid-map")
            .arg(self.tmp.path().join("tenant-uids"))
            .arg("--hide")
            .arg(self.dir())
            .args(&self.agent_flags)
            .args(["--site", site, "--rack", rack, "--name", name])
            .args([
                "--nodes",
                &nodes.to_string(),
                "--fake-accelerators",
                "8xH100",
            ])
            .args(["--cpu-cores", "64", "--mem-mib", "262144"])
            .arg("--work-dir")
            .arg(&work)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.push((name.to_string(), child));
        let names: Vec<String> = (0..nodes).map(|k| format!("{name}-{k:03}")).collect();
        self.wait(&format!("agent {name}'s nodes up"), || {
            let (_, v) = self.call("GET", "/v1/nodes", &self.admin, None);
            names.iter().all(|n| {
                v["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["name"] == n.as_str() && x["state"] == "up")
            })
        });
    }

    fn agent_pid(&self, name: &str) -> i32 {
        self.agents.iter().find(|(n, _)| n == name).unwrap().1.id() as i32
    }

    fn agent_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("agent-{name}.log")))
            .unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
        http(method, &format!("{}{path}", self.base()), token, body)
    }

    fn submit(&self, spec: Value) -> u64 {
        let (s, v) = self.call("POST", "/v1/jobs", &self.tenant, Some(&spec));
        assert_eq!(s, 201, "{v}");
        v["id"].as_u64().unwrap()
    }

    fn job(&self, id: u64) -> Value {
        let (s, v) = self.call("GET", &format!("/v1/jobs/{id}"), &self.tenant, None);
        assert_eq!(s, 200, "{v}");
        v
    }

    fn wait(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent logs:\n{}",
                self.agents
                    .iter()
                    .map(|(n, _)| format!("--- {n}\n{}", self.agent_log(n)))
                    .collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_state(&self, id: u64, state: &str) -> Value {
        let mut last = Value::Null;
        self.wait(&format!("job {id} to be {state} (last: {last})"), || {
            last = self.job(id);
            last["state"] == state
        });
        last
    }

    /// `gosok CMD…` as the tenant.
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(GOSOK)
            .args(args)
            .env("GOSOK_SERVER", self.base())
            .env("GOSOK_TOKEN", &self.tenant)
            .env("GOSOK_CONFIG", "/nonexistent")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Highway {
    fn drop(&mut self) {
        for (_, c) in &mut self.agents {
            // SAFETY: signals to our own children.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, c) in &mut self.agents {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_server();
    }
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(pid, 0); look at its state instead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether any process is left in process group `pgid` (zombies aside).
fn group_has_processes(pgid: i32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state, ppid, pgrp.
        f.first() != Some(&"Z") && f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
    })
}

fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn sh(script: &str) -> Value {
    json!(["sh", "-c", script])
}

#[test]
fn a_two_by_four_gang_gets_its_devices_ranks_and_world_size_and_succeeds() {
    let mut h = Highway::new();
    h.agent("ph", "pohang", "ph-r1", 2);
    let out = h.shared.path().to_path_buf();
    let script = format!(
        "echo \"$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $CUDA_VISIBLE_DEVICES $MASTER_ADDR $MASTER_PORT $GOSOK_NODE\" > {}/rank-$RANK; echo $GREETING from rank $RANK; echo oops >&2",
        out.display()
    );
    // Submitted the way a user would: `gosok submit --replicas 2 --accelerators 4 -- CMD…`.
    let (ok, submitted, err) = h.cli(&[
        "submit",
        "--replicas",
        "2",
        "--accelerators",
        "4",
        "--model",
        "H100",
        "--name",
        "gang",
        "--env",
        "GREETING=hello",
        "--output",
        "json",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(ok, "{err}");
    let id = serde_json::from_str::<Value>(&submitted).unwrap()["id"]
        .as_u64()
        .unwrap();
    // `logs --follow` prints the output as it comes and returns when the job has ended.
    let (ok, followed, err) = h.cli(&["logs", &id.to_string(), "--task", "0", "--follow"]);
    assert!(ok, "{err}");
    assert!(followed.contains("hello from rank 0"), "{followed}");
    let job = h.wait_state(id, "succeeded");
    let mut devices = Vec::new();
    let mut masters = Vec::new();
    for rank in 0..2 {
        let line = std::fs::read_to_string(out.join(format!("rank-{rank}"))).unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 8, "{line}");
        assert_eq!(f[0], rank.to_string());
        assert_eq!(f[1], "2");
        let local_world: usize = f[3].parse().unwrap();
        let local_rank: usize = f[2].parse().unwrap();
        assert!(local_rank < local_world);
        let devs: Vec<u32> = f[4].split(',').map(|d| d.parse().unwrap()).collect();
        assert_eq!(devs.len(), 4, "{line}");
        devices.push((f[7].to_string(), devs));
        masters.push((f[5].to_string(), f[6].to_string()));
    }
    assert_eq!(masters[0], masters[1], "both ranks agree on the master");
    // Where both ranks share a node, they got different devices.
    if devices[0].0 == devices[1].0 {
        assert!(devices[0].1.iter().all(|d| !devices[1].1.contains(d)));
    }
    // An ended job holds nothing (its logs are found through its last run).
    let placement = job["placement"].as_array().cloned().unwrap_or_default();
    assert!(placement.is_empty(), "an ended job holds nothing: {job}");
    // Logs come through the controller.
    let (ok, stdout, stderr) = h.cli(&["logs", &id.to_string(), "--task", "1"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("hello from rank 1"), "{stdout}");
    assert!(stderr.contains("oops"), "{stderr}");
}

#[test]
fn cancel_kills_the_whole_process_tree() {
    let mut h = Highway::new();
    h.agent("ph", "pohang", "ph-r1", 1);
    let pids = h.shared("pids");
    // The task forks two children that ignore nothing and would outlive a plain kill.
    let script = format!(
        "sleep 1000 & echo $! >> {p}; sh -c 'sleep 1000' & echo $! >> {p}; echo $$ >> {p}; wait",
        p = pids.display()
    );
    let id = h.submit(json!({"groups": [{"accelerators": 1}], "command": sh(&script)}));
    h.wait_state(id, "running");
    h.wait("the task's pids", || read_pids(&pids).len() == 3);
    let pids = read_pids(&pids);
    assert!(pids.iter().all(|&p| alive(p)));
    let (s, v) = h.call("POST", &format!("/v1/jobs/{id}/cancel"), &h.tenant, None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "cancelled");
    h.wait("every process of the task to be gone", || {
        pids.iter().all(|&p| !alive(p))
    });
}

#[test]
fn runtime_limits_exit_codes_and_signals_are_enforced_and_reported() {
    let mut h = Highway::new();
    h.agent("ph", "pohang", "ph-r1", 1);
    let limited = h.submit(
        json!({"groups": [{"accelerators": 1}], "runtime_limit_s": 2,
                                  "command": sh("sleep 1000")}),
    );
    let exits = h.submit(json!({"groups": [{"accelerators": 1}], "command": sh("exit 3")}));
    let killed = h.submit(json!({"groups": [{"accelerators": 1}], "command": sh("kill -9 $$")}));
    let missing = h.submit(json!({"groups": [{"accelerators": 1}],
                                  "command": ["/nonexistent/program"]}));
    let ok = h.submit(json!({"groups": [{"accelerators": 1}], "command": ["true"]}));
    let t0 = Instant::now();
    let v = h.wait_state(limited, "timed_out");
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let reason = v["reason"].as_str().unwrap_or_default().to_string() + &v["events"].to_string();
    assert!(reason.contains("limit"), "{v}");
    let v = h.wait_state(exits, "failed");
    assert!(v["reason"].as_str().unwrap().contains("status 3"), "{v}");
    assert!(
        v["events"].to_string().contains("exited with status 3"),
        "{v}"
    );
    let v = h.wait_state(killed, "failed");
    assert!(v["events"].to_string().contains("signal 9"), "{v}");
    let v = h.wait_state(missing, "failed");
    assert!(
        v["events"].to_string().contains("could not be started"),
        "{v}"
    );
    h.wait_state(ok, "succeeded");
}

/// A highway whose agent `ph` runs attempt 1 of a job that sleeps until it is killed (a
/// later attempt ends at once); each start and end is appended to the returned marks file.
/// Returns the highway, the marks file, the job and attempt 1's first process (its group).
fn first_attempt_on_ph() -> (Highway, PathBuf, u64, i32) {
    let mut h = Highway::new();
    h.agent("ph", "pohang", "ph-r1", 1);
    let marks = h.shared("marks");
    // Attempt 1 beats (its time in ns) until it is killed; every attempt marks its start
    // with its time, so that the test can tell whether two attempts ever ran at once.
    let script = format!(
        "echo \"start $GOSOK_ATTEMPT $GOSOK_NODE $$ $(date +%s%N)\" >> {m}; if [ $GOSOK_ATTEMPT = 1 ]; then while :; do echo \"beat $(date +%s%N)\" >> {m}; sleep 0.05; done; fi; echo \"end $GOSOK_ATTEMPT $GOSOK_NODE\" >> {m}",
        m = marks.display()
    );
    let id = h.submit(json!({"groups": [{"accelerators": 8}], "max_retries": 3,
                             "command": sh(&script)}));
    h.wait("attempt 1 to start", || {
        std::fs::read_to_string(&marks).is_ok_and(|m| m.contains("start 1 ph-000"))
    });
    let first_pid: i32 = std::fs::read_to_string(&marks)
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    (h, marks, id, first_pid)
}

#[test]
fn a_killed_agent_s_tasks_are_requeued_and_run_elsewhere() {
    let (mut h, marks, id, first_pid) = first_attempt_on_ph();
    h.agent("jn", "jeonnam", "jn-r1", 1);
    let killed_at = Instant::now();
    // SAFETY: SIGKILL to our own child.
    unsafe {
        libc::kill(h.agent_pid("ph"), libc::SIGKILL);
    }
    let v = h.wait_state(id, "succeeded");
    assert!(
        killed_at.elapsed() < Duration::from_millis(LEASE_MS) + Duration::from_secs(10),
        "{:?}",
        killed_at.elapsed()
    );
    let m = std::fs::read_to_string(&marks).unwrap();
    assert!(m.contains("end 2 jn-000"), "{m}");
    assert_eq!(m.matches("end").count(), 1, "{m}");
    assert!(v["events"].to_string().contains("requeued"), "{v}");
    // Nothing of the dead agent's task survived it: not its first process (PDEATHSIG), not
    // the `sleep` it forked (the agent's watchdog kills the task's process group).
    h.wait("the dead agent's task to be gone", || !alive(first_pid));
    h.wait("the dead agent's task's children to be gone", || {
        !group_has_processes(first_pid)
    });
}

/// The epoch of the agent that holds `node`, as operators see it.
fn epoch_of(h: &Highway, node: &str) -> Option<u64> {
    let (_, nodes) = h.call("GET", "/v1/nodes", &h.admin, None);
    nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["agent"]["epoch"].as_u64())
}

/// Attempt 1's heartbeats and attempt 2's start, in ns, from the marks file.
fn last_beat_and_second_start(marks: &str) -> (u128, u128) {
    let beat = marks
        .lines()
        .filter_map(|l| l.strip_prefix("beat "))
        .filter_map(|t| t.trim().parse::<u128>().ok())
        .max()
        .expect("attempt 1 beat");
    let start2 = marks
        .lines()
        .find(|l| l.starts_with("start 2 "))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|t| t.parse::<u128>().ok())
        .expect("attempt 2 started");
    (beat, start2)
}

#[test]
fn a_frozen_agent_s_tasks_die_before_they_run_again_elsewhere() {
    let (mut h, marks, id, first_pid) = first_attempt_on_ph();
    let old_epoch = epoch_of(&h, "ph-000").unwrap();
    h.agent("jn", "jeonnam", "jn-r1", 1);
    let ph = h.agent_pid("ph");
    // SAFETY: signals to our own child.
    unsafe {
        libc::kill(ph, libc::SIGSTOP);
    }
    // The lease runs out, the job is requeued and completes on the other node.
    let v = h.wait_state(id, "succeeded");
    assert!(v["events"].to_string().contains("requeued"), "{v}");
    let m = std::fs::read_to_string(&marks).unwrap();
    assert!(m.contains("end 2 jn-000"), "{m}");
    // The frozen agent could not act, but its watchdog killed attempt 1 when the agent's
    // lease ran out, before the controller (lease + margin) gave the job to jn: the two
    // attempts never ran at the same time.
    assert!(!alive(first_pid), "attempt 1 outlived its agent's lease");
    let (beat, start2) = last_beat_and_second_start(&m);
    assert!(
        beat < start2,
        "attempt 1 beat {} ms after attempt 2 started:\n{m}",
        (beat - start2) / 1_000_000
    );
    // A report under the frozen agent's epoch is refused.
    let ph_token = h
        .agent_tokens
        .iter()
        .find(|(n, _)| n == "ph")
        .unwrap()
        .1
        .clone();
    let (s, r) = h.call(
        "POST",
        "/v1/agent/report",
        &ph_token,
        Some(
            &json!({"agent": "test", "reports": [{"node": "ph-000", "epoch": old_epoch, "job": id,
            "attempt": 1, "task": 0, "exit_code": 0, "reason": "exited"}]}),
        ),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["results"][0]["accepted"], false, "{r}");
    assert_eq!(r["results"][0]["code"], "stale_epoch", "{r}");
    // Resumed, the agent fences itself and registers its node again under a new epoch.
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(ph, libc::SIGCONT);
    }
    h.wait("ph-000 to be claimed again", || {
        epoch_of(&h, "ph-000") > Some(old_epoch)
    });
    let m = std::fs::read_to_string(&marks).unwrap();
    assert_eq!(m.matches("end").count(), 1, "{m}");
    assert_eq!(h.job(id)["state"], "succeeded");
}

#[test]
fn a_controller_restart_keeps_running_tasks_and_duplicates_none() {
    // A lease long enough to outlast the restart on a busy machine (the agent's retries back
    // off up to 2 s): what is tested is that nothing is lost or run twice when it does.
    let mut h = Highway::with_lease(8000);
    h.agent("ph", "pohang", "ph-r1", 1);
    let marks = h.shared("marks");
    let script = format!(
        "echo \"start $GOSOK_ATTEMPT $$\" >> {m}; sleep 4; echo \"end $GOSOK_ATTEMPT\" >> {m}",
        m = marks.display()
    );
    let id = h.submit(json!({"groups": [{"accelerators": 8}], "command": sh(&script)}));
    h.wait("the task to start", || {
        std::fs::read_to_string(&marks).is_ok_and(|m| m.contains("start 1"))
    });
    h.kill_server();
    std::thread::sleep(Duration::from_millis(300));
    h.start_server();
    let v = h.wait_state(id, "succeeded");
    let m = std::fs::read_to_string(&marks).unwrap();
    assert_eq!(m.matches("start").count(), 1, "{m}");
    assert_eq!(m.matches("end 1").count(), 1, "{m}");
    assert_eq!(v["attempt"], 1, "{v}");
    assert!(!v["events"].to_string().contains("requeued"), "{v}");
}

#[test]
fn agent_routes_refuse_tenants_and_agent_tokens_refuse_the_rest() {
    let h = Highway::new();
    let (s, v) = h.call("POST", "/v1/agent/sync", &h.tenant, Some(&json!({})));
    assert_eq!(s, 403, "{v}");
    let (s, v) = h.call("GET", "/v1/jobs", &h.agent_token, None);
    assert_eq!(s, 403, "{v}");
    // A declared node must match what the agent found.
    let register = |node: Value| {
        h.call(
            "POST",
            "/v1/agent/register",
            &h.agent_token,
            Some(
                &json!({"agent": "a", "address": "127.0.0.1", "logs_url": "http://127.0.0.1:1",
                         "logs_secret": "x", "nodes": [node]}),
            ),
        )
    };
    let (s, v) = register(json!({"name": "ph-000", "site": "pohang", "rack": "ph-r1",
        "cpu_cores": 64, "mem_mib": 262144, "accelerator": "H100", "accelerators": 4}));
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["field"], "nodes[0].accelerators", "{v}");
    let (s, v) = register(json!({"name": "new-1", "site": "pohang", "rack": "nope",
        "cpu_cores": 64, "mem_mib": 262144}));
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["field"], "nodes[0].rack", "{v}");
    // An agent adds no capacity the operator did not declare: a ghost node is refused...
    let ghost = |name: &str, accelerators: u64| {
        json!({"name": name, "site": "jeonnam", "rack": "jn-r1", "cpu_cores": 8,
               "mem_mib": 8192, "accelerator": "H100", "accelerators": accelerators,
               "labels": {"gosok.io/virtual": "true"}})
    };
    let (s, v) = register(ghost("ghost-0", 8));
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "undeclared_node", "{v}");
    assert_eq!(v["error"]["field"], "nodes[0].name", "{v}");
    // ...unless its rack allows undeclared nodes, and then only within the rack's declared
    // capacity: its node count and its power cap.
    let cluster = CLUSTER.replace(
        "name = \"jn-r1\"\nsite = \"jeonnam\"\npower_cap_kw = 120.0\n",
        "name = \"jn-r1\"\nsite = \"jeonnam\"\npower_cap_kw = 120.0\nallow_undeclared_nodes = true\nmax_nodes = 3\n",
    );
    assert_ne!(cluster, CLUSTER);
    let cluster: Value =
        serde_json::to_value(toml::from_str::<toml::Value>(&cluster).unwrap()).unwrap();
    let (s, v) = h.call("PUT", "/v1/topology", &h.admin, Some(&cluster));
    assert_eq!(s, 200, "{v}");
    let (s, v) = register(ghost("ghost-0", 256));
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "beyond_rack_capacity", "{v}");
    assert_eq!(v["error"]["field"], "nodes[0].accelerators", "{v}");
    let (s, v) = register(ghost("extra-1", 8));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["nodes"][0]["epoch"], 1, "{v}");
    let (s, v) = register(ghost("extra-2", 8));
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "rack_full", "{v}");
}

#[test]
fn an_agent_token_acts_only_for_the_nodes_its_own_agent_holds() {
    let mut h = Highway::new();
    h.agent("ph", "pohang", "ph-r1", 1);
    let secret = "hf_secret_of_lab_0123456789";
    let id = h.submit(
        json!({"groups": [{"accelerators": 1}], "env": {"HF_TOKEN": secret},
                             "command": sh("echo running; sleep 1000")}),
    );
    h.wait_state(id, "running");
    let epoch = epoch_of(&h, "ph-000").unwrap();
    // Tenants see neither which agent holds a node nor its epoch; they see its isolation.
    let (_, v) = h.call("GET", "/v1/nodes", &h.tenant, None);
    for n in v["nodes"].as_array().unwrap() {
        assert!(n.get("agent").is_none(), "{n}");
    }
    let ph = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "ph-000")
        .unwrap();
    assert_eq!(
        ph["isolation"],
        if root() { "sandbox" } else { "none" },
        "{ph}"
    );
    // Another agent's token naming ph-000 and its live epoch gets no task and no secret...
    let thief = h.agent_token.clone();
    let (s, v) = h.call(
        "POST",
        "/v1/agent/sync",
        &thief,
        Some(
            &json!({"agent": "ph", "nodes": [{"name": "ph-000", "epoch": epoch}],
                     "version": 0, "wait_ms": 0,
                     "logs_url": "http://127.0.0.1:9", "logs_secret": "stolen"}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["nodes"][0]["valid"], false, "{v}");
    assert_eq!(v["tasks"], json!([]), "{v}");
    assert!(!v.to_string().contains(secret), "{v}");
    // ...cannot end the job...
    let (s, v) = h.call(
        "POST",
        "/v1/agent/report",
        &thief,
        Some(
            &json!({"agent": "ph", "reports": [{"node": "ph-000", "epoch": epoch, "job": id,
                     "attempt": 1, "task": 0, "exit_code": 0, "reason": "exited"}]}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["accepted"], false, "{v}");
    assert_eq!(h.job(id)["state"], "running");
    // ...cannot take the node over while its agent holds it...
    let (s, v) = h.call(
        "POST",
        "/v1/agent/register",
        &thief,
        Some(
            &json!({"agent": "ph", "address": "127.0.0.1", "logs_url": "http://127.0.0.1:9",
                     "logs_secret": "stolen", "nodes": [{"name": "ph-000", "site": "pohang",
                     "rack": "ph-r1", "cpu_cores": 64, "mem_mib": 262144,
                     "accelerator": "H100", "accelerators": 8}]}),
        ),
    );
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "held_by_another_agent", "{v}");
    // ...and did not redirect the job's logs to its own server.
    h.wait("the job's logs through its own agent", || {
        let (ok, out, _) = h.cli(&["logs", &id.to_string()]);
        ok && out.contains("running")
    });
    assert_eq!(epoch_of(&h, "ph-000"), Some(epoch));
    // The agent's token is nowhere in its arguments (which every local user can read).
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", h.agent_pid("ph"))).unwrap();
    let token = h.agent_tokens[0].1.clone();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&token));
}

/// Skips a sandbox test where the agents cannot have one (CI runs as root).
macro_rules! needs_root {
    () => {
        if !root() {
            eprintln!("skipped: the task sandbox needs root");
            return;
        }
    };
}

#[test]
fn a_tenant_s_job_cannot_read_secrets_or_see_or_signal_another_tenant_s_tasks() {
    needs_root!();
    let mut h = Highway::new();
    h.agent("ph", "pohang", "ph-r1", 1);
    let rival = h.tenant_token("rival");
    let pidfile = h.shared("lab-pid");
    let secret = "hf_secret_of_lab_0123456789";
    let lab = h.submit(
        json!({"groups": [{"accelerators": 1}], "env": {"HF_TOKEN": secret},
        "command": sh(&format!("echo $HF_TOKEN > /tmp/lab-tmp; echo $HF_TOKEN > /dev/shm/lab-shm; \
            echo $$ > {}; echo lab-private-output; exec sleep 1000", pidfile.display()))}),
    );
    h.wait_state(lab, "running");
    h.wait("lab's pid", || !read_pids(&pidfile).is_empty());
    let pid = read_pids(&pidfile)[0];
    let data = h.dir();
    let work = h.tmp.path().join("agent-ph");
    // Everything the attacks of the threat model tried, from a job of another tenant.
    let attack = format!(
        "id; cat {data}/admin.token; cat {data}/gosok.toml; cat ../../../../admin.token; \
         cat ../../../../../data/admin.token; ls -la {work}; ls {work}/logs; \
         cat {work}/logs/{lab}/1/0/stdout.log; cat {work}/pgids; \
         cat /proc/{pid}/environ; kill -9 {pid}; kill -9 -{pid}; \
         cat /tmp/lab-tmp /dev/shm/lab-shm; \
         cat /proc/1/environ; echo attack-done",
        data = data.display(),
        work = work.display(),
    );
    let (s, v) = h.call(
        "POST",
        "/v1/jobs",
        &rival,
        Some(&json!({"groups": [{"accelerators": 1}], "command": sh(&attack)})),
    );
    assert_eq!(s, 201, "{v}");
    let attacker = v["id"].as_u64().unwrap();
    h.wait("the attack to end", || {
        let (_, j) = h.call("GET", &format!("/v1/jobs/{attacker}"), &rival, None);
        j["state"] == "succeeded" || j["state"] == "failed"
    });
    let logs = |stream: &str| {
        let (s, v) = h.call(
            "GET",
            &format!("/v1/jobs/{attacker}/logs?stream={stream}"),
            &rival,
            None,
        );
        assert_eq!(s, 200, "{v}");
        v.to_string()
    };
    let (out, err) = (logs("stdout"), logs("stderr"));
    assert!(out.contains("attack-done"), "{out}");
    assert!(!out.contains("uid=0"), "the job ran as root: {out}");
    for leaked in [
        secret,
        "lab-private-output",
        h.admin.as_str(),
        h.agent_tokens[0].1.as_str(),
    ] {
        assert!(
            !out.contains(leaked) && !err.contains(leaked),
            "leaked {leaked}:\n{out}\n{err}"
        );
    }
    // lab's task is untouched, and rival cannot read its logs through the API either.
    assert!(alive(pid), "{err}");
    assert_eq!(h.job(lab)["state"], "running");
    let (s, _) = h.call("GET", &format!("/v1/jobs/{lab}/logs"), &rival, None);
    assert!(s == 403 || s == 404, "{s}");
    let (s, v) = h.call("POST", &format!("/v1/jobs/{lab}/cancel"), &h.tenant, None);
    assert_eq!(s, 200, "{v}");
}

#[test]
fn cancel_kills_what_escaped_into_a_session_of_its_own_and_leaves_no_zombie() {
    needs_root!();
    let mut h = Highway::new();
    h.agent("ph", "pohang", "ph-r1", 1);
    let pids = h.shared("escaped");
    let script = format!(
        "setsid sh -c 'echo $$ >> {p}; exec sleep 100000' & sleep 1000",
        p = pids.display()
    );
    let id = h.submit(json!({"groups": [{"accelerators": 1}], "command": sh(&script)}));
    h.wait_state(id, "running");
    h.wait("the escaped pid", || !read_pids(&pids).is_empty());
    let escaped = read_pids(&pids)[0];
    assert!(alive(escaped));
    let (s, v) = h.call("POST", &format!("/v1/jobs/{id}/cancel"), &h.tenant, None);
    assert_eq!(s, 200, "{v}");
    // Killed with its control group, and reaped: not even a zombie is left.
    h.wait("the escaped process to be gone and reaped", || {
        !Path::new(&format!("/proc/{escaped}")).exists()
    });
}

#[test]
fn a_task_over_its_memory_is_killed_and_reported_out_of_memory() {
    needs_root!();
    let mut h = Highway::new();
    h.agent("ph", "pohang", "ph-r1", 1);
    // 300 MB in one line that `tail` must hold, against a 64 MiB limit. The shell goes on
    // and exits 0, but a task in which the kernel killed a process for memory has failed.
    let id = h.submit(json!({"groups": [{"accelerators": 1, "mem_mib": 64}],
        "command": sh("head -c 300000000 /dev/zero | tail -n 1 > /dev/null; echo survived")}));
    let v = h.wait_state(id, "failed");
    assert!(v["events"].to_string().contains("out of memory"), "{v}");
}

#[test]
fn a_task_cannot_fork_past_its_pids_limit() {
    needs_root!();
    let mut h = Highway::new();
    h.agent_flags = vec!["--task-pids-max".into(), "32".into()];
    h.agent("ph", "pohang", "ph-r1", 1);
    let count = h.shared("forked");
    let script = format!(
        "i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); echo $i > {c}; done; echo all-forked",
        c = count.display()
    );
    let id = h.submit(json!({"groups": [{"accelerators": 1}], "command": sh(&script)}));
    let v = h.wait_state(id, "failed");
    let forked: u64 = std::fs::read_to_string(&count)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        forked < 32,
        "forked {forked} processes past a limit of 32: {v}"
    );
    let (_, out, err) = h.cli(&["logs", &id.to_string()]);
    assert!(!out.contains("all-forked"), "{out}");
    assert!(err.to_lowercase().contains("fork"), "{err}");
}

#[test]
fn an_agent_that_cannot_sandbox_its_tasks_refuses_to_start_unless_told_none() {
    needs_root!();
    let h = Highway::new();
    // As an unprivileged user, the agent can make neither accounts nor control groups.
    let nobody = 65534;
    let token_file = h.shared("nobody.token");
    std::fs::write(&token_file, &h.agent_token).unwrap();
    std::os::unix::fs::chown(&token_file, Some(nobody), Some(nobody)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = {
        use std::os::unix::process::CommandExt;
        Command::new(GOSOK)
            .arg("agent")
            .args(["--server", &h.base()])
            .arg("--token-file")
            .arg(&token_file)
            .args([
                "--site", "pohang", "--rack", "ph-r1", "--name", "ph", "--nodes", "1",
            ])
            .args([
                "--fake-accelerators",
                "8xH100",
                "--cpu-cores",
                "64",
                "--mem-mib",
                "262144",
            ])
            .arg("--work-dir")
            .arg(h.shared("nobody-work"))
            .uid(nobody)
            .gid(nobody)
            .output()
            .unwrap()
    };
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--isolation none"), "{err}");
    // A token file others can read is refused too.
    std::fs::set_permissions(&token_file, {
        use std::os::unix::fs::PermissionsExt;
        std::fs::Permissions::from_mode(0o644)
    })
    .unwrap();
    let out = Command::new(GOSOK)
        .arg("agent")
        .args(["--server", &h.base()])
        .arg("--token-file")
        .arg(&token_file)
        .args([
            "--site",
            "pohang",
            "--rack",
            "ph-r1",
            "--fake-accelerators",
            "none",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn tasks_run_on_through_a_sixty_second_controller_outage() {
    // The default lease (330 s): a controller outage shorter than it kills nothing.
    let mut h = Highway::with_lease(330_000);
    h.agent("ph", "pohang", "ph-r1", 1);
    let marks = h.shared("marks");
    let script = format!(
        "echo \"start $GOSOK_ATTEMPT\" >> {m}; sleep 70; echo \"end $GOSOK_ATTEMPT\" >> {m}",
        m = marks.display()
    );
    let id = h.submit(json!({"groups": [{"accelerators": 8}], "command": sh(&script)}));
    h.wait("the task to start", || {
        std::fs::read_to_string(&marks).is_ok_and(|m| m.contains("start 1"))
    });
    h.kill_server();
    std::thread::sleep(Duration::from_secs(60));
    h.start_server();
    let v = h.wait_state(id, "succeeded");
    let m = std::fs::read_to_string(&marks).unwrap();
    assert_eq!(m, "start 1\nend 1\n", "{m}");
    assert_eq!(v["attempt"], 1, "{v}");
    assert!(!v["events"].to_string().contains("requeued"), "{v}");
    assert!(
        !h.agent_log("ph").contains("lease lost"),
        "{}",
        h.agent_log("ph")
    );
}

#[test]
fn gosok_up_runs_a_highway_stops_on_ctrl_c_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port = free_port();
    let start = || {
        Command::new(GOSOK)
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let wait_banner = |child: &mut Child| {
        let mut out = String::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for l in lines.by_ref() {
            let l = l.unwrap();
            out.push_str(&l);
            out.push('\n');
            if l.starts_with("Ctrl-C") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        out
    };
    let mut up = Up(start());
    let banner = wait_banner(&mut up.0);
    let creds: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("credentials.toml")).unwrap()).unwrap();
    let url = creds["url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("http://127.0.0.1:{port}"));
    let admin = creds["admin_token"].as_str().unwrap().to_string();
    assert!(banner.contains(&admin), "{banner}");
    let tenants = creds["tenant_tokens"].as_table().unwrap();
    assert_eq!(tenants.len(), 4, "{tenants:?}");
    let startup = tenants["seoul-startup"].as_str().unwrap().to_string();
    // The demo highway: three Korean sites, and the agents bring every node up.
    let (_, sites) = http("GET", &format!("{url}/v1/sites"), &admin, None);
    let names: Vec<&str> = sites["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pohang", "jeonnam", "ulsan"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, nodes) = http("GET", &format!("{url}/v1/nodes"), &admin, None);
        let nodes = nodes["nodes"].as_array().unwrap();
        if !nodes.is_empty() && nodes.iter().all(|n| n["state"] == "up") {
            break;
        }
        assert!(Instant::now() < deadline, "nodes never all came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (s, job) = http(
        "POST",
        &format!("{url}/v1/jobs"),
        &startup,
        Some(&json!({"groups": [{"accelerators": 8, "models": ["B200"]}],
                     "command": ["sh", "-c", "echo $CUDA_VISIBLE_DEVICES"]})),
    );
    assert_eq!(s, 201, "{job}");
    let id = job["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, j) = http("GET", &format!("{url}/v1/jobs/{id}"), &startup, None);
        if j["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{j}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ctrl-C: everything stops, the agents too.
    let status = up.interrupt();
    assert!(status.success(), "{status}");
    let dir_text = dir.to_string_lossy().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&dir_text))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
    // Started again on the same directory it resumes: same tokens, the job is still there.
    let mut up = Up(start());
    let banner = wait_banner(&mut up.0);
    assert!(banner.contains("resumed"), "{banner}");
    let (s, j) = http("GET", &format!("{url}/v1/jobs/{id}"), &startup, None);
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["state"], "succeeded");
    assert!(up.interrupt().success());
}

/// A `gosok up` process, interrupted (as Ctrl-C does) when the test ends or fails.
struct Up(Child);

impl Up {
    fn interrupt(&mut self) -> std::process::ExitStatus {
        // SAFETY: a signal to our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.0.kill();
                panic!("gosok up did not stop within 30 s of Ctrl-C");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.interrupt();
        }
    }
}

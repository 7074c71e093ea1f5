//! The agent's main loop against a small fake controller on loopback.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gosok_agent::config::{Config, NodeTemplate};
use gosok_agent::discovery::Device;
use gosok_agent::runner::group_alive;
use gosok_model::agent::{
    Assignment, NodeEpoch, NodeLease, RegisterRequest, RegisterResponse, ReportRequest,
    ReportResponse, ReportResult, SyncRequest, SyncResponse, TaskReport,
};

/// A task the fake controller wants run: (node, job, command).
#[derive(Clone)]
struct Want {
    node: String,
    job: u64,
    command: String,
    limit_s: Option<u64>,
}

#[derive(Default)]
struct State {
    lease_ms: u64,
    next_epoch: u64,
    epochs: HashMap<String, u64>,
    /// Set: answer nothing (connections are dropped), as an unreachable controller.
    down: bool,
    wants: Vec<Want>,
    version: u64,
    registers: Vec<RegisterRequest>,
    syncs: Vec<SyncRequest>,
    reports: Vec<TaskReport>,
}

#[derive(Clone)]
struct Fake {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Fake {
    fn start(lease_ms: u64) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            lease_ms,
            next_epoch: 1,
            version: 1,
            ..State::default()
        }));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Fake { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn set_wants(&self, wants: Vec<Want>) {
        self.with(|s| {
            s.wants = wants;
            s.version += 1;
        });
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    if state.lock().unwrap().down {
        return;
    }
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    let answer = match path.as_str() {
        "/v1/agent/register" => {
            let req: RegisterRequest = serde_json::from_slice(&body).unwrap();
            let mut s = state.lock().unwrap();
            let mut nodes = Vec::new();
            for n in &req.nodes {
                let epoch = s.next_epoch;
                s.next_epoch += 1;
                s.epochs.insert(n.name.clone(), epoch);
                nodes.push(NodeEpoch {
                    name: n.name.clone(),
                    epoch,
                });
            }
            s.version += 1;
            let lease_ms = s.lease_ms;
            s.registers.push(req);
            serde_json::to_string(&RegisterResponse { lease_ms, nodes }).unwrap()
        }
        "/v1/agent/sync" => {
            let req: SyncRequest = serde_json::from_slice(&body).unwrap();
            // A token long poll: enough to keep the loop from spinning.
            let held = {
                let s = state.lock().unwrap();
                req.version == s.version
            };
            if held {
                std::thread::sleep(Duration::from_millis(req.wait_ms.min(100)));
            }
            let mut s = state.lock().unwrap();
            if s.down {
                return;
            }
            let nodes: Vec<NodeLease> = req
                .nodes
                .iter()
                .map(|n| NodeLease {
                    name: n.name.clone(),
                    epoch: n.epoch,
                    valid: s.epochs.get(&n.name) == Some(&n.epoch),
                })
                .collect();
            let tasks = s
                .wants
                .iter()
                .filter(|w| nodes.iter().any(|n| n.valid && n.name == w.node))
                .map(|w| Assignment {
                    node: w.node.clone(),
                    epoch: s.epochs[&w.node],
                    job: w.job,
                    attempt: 1,
                    task: 0,
                    command: vec!["sh".into(), "-c".into(), w.command.clone()],
                    workdir: None,
                    env: BTreeMap::from([("GOSOK_JOB_ID".into(), w.job.to_string())]),
                    limit_s: w.limit_s,
                    grace_s: 1,
                    tenant: "lab".into(),
                    mem_mib: 0,
                    cpu_milli: 1000,
                })
                .collect();
            let resp = SyncResponse {
                version: s.version,
                lease_ms: s.lease_ms,
                nodes,
                tasks,
            };
            s.syncs.push(req);
            serde_json::to_string(&resp).unwrap()
        }
        "/v1/agent/report" => {
            let req: ReportRequest = serde_json::from_slice(&body).unwrap();
            let mut s = state.lock().unwrap();
            let results = req
                .reports
                .iter()
                .map(|r| {
                    let ok = s.epochs.get(&r.node) == Some(&r.epoch);
                    ReportResult {
                        job: r.job,
                        task: r.task,
                        accepted: ok,
                        code: (!ok).then(|| "stale_epoch".into()),
                        message: String::new(),
                    }
                })
                .collect();
            s.reports.extend(req.reports);
            serde_json::to_string(&ReportResponse { results }).unwrap()
        }
        _ => String::from("{}"),
    };
    let mut w = &conn;
    let _ = write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

struct Running {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    work: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Running {
    fn start(fake: &Fake, nodes: u64) -> Running {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        let template = NodeTemplate {
            name: "t-n".into(),
            count: Some(nodes),
            site: "s".into(),
            rack: "r".into(),
            cpu_cores: 4,
            mem_mib: 4096,
            devices: vec![Device {
                index: 0,
                model: "H100".into(),
            }],
            labels: BTreeMap::new(),
            taints: Vec::new(),
        };
        let mut cfg = Config::new(&fake.url(), "token", template.expand(), work.clone());
        cfg.tick = Duration::from_millis(20);
        let stop = cfg.stop.clone();
        let handle = std::thread::spawn(move || gosok_agent::run(cfg));
        Running {
            stop,
            handle: Some(handle),
            work: work.canonicalize().unwrap_or(work),
            _tmp: tmp,
        }
    }

    /// A file of attempt 1 of task 0 of `job`: its logs are where the agent writes them,
    /// anything else in its scratch directory (which exists while it runs).
    fn task_file(&self, job: u64, name: &str) -> PathBuf {
        if name.ends_with(".log") {
            self.work
                .join("logs")
                .join(job.to_string())
                .join("1/0")
                .join(name)
        } else {
            self.work.join("run").join(format!("{job}-1-0")).join(name)
        }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let h = self.handle.take().unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while !h.is_finished() {
            assert!(Instant::now() < until, "the agent did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        h.join().unwrap().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid (= process group) a task wrote to its `pid` file.
fn pid_of(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

const SLEEPER: &str = "echo $$ > pid; sleep 1000 & sleep 1000; wait";

#[test]
fn the_agent_runs_reports_and_stops_what_is_assigned() {
    let fake = Fake::start(3000);
    let agent = Running::start(&fake, 2);
    eventually("registration", Duration::from_secs(5), || {
        fake.with(|s| s.registers.len() == 1)
    });
    let reg = fake.with(|s| s.registers[0].clone());
    assert_eq!(reg.nodes.len(), 2);
    assert_eq!(reg.nodes[1].name, "t-n-001");
    assert_eq!(reg.nodes[0].labels["gosok.io/virtual"], "true");
    assert_eq!(reg.address, "127.0.0.1");
    assert_eq!(reg.logs_secret.len(), 64);

    fake.set_wants(vec![
        Want {
            node: "t-n-000".into(),
            job: 1,
            command: "echo hi $GOSOK_JOB_ID; exit 7".into(),
            limit_s: None,
        },
        Want {
            node: "t-n-001".into(),
            job: 2,
            command: SLEEPER.into(),
            limit_s: None,
        },
        Want {
            node: "t-n-001".into(),
            job: 3,
            command: "sleep 1000".into(),
            limit_s: Some(1),
        },
    ]);
    eventually("the report of job 1", Duration::from_secs(5), || {
        fake.with(|s| s.reports.iter().any(|r| r.job == 1))
    });
    let r = fake.with(|s| s.reports.iter().find(|r| r.job == 1).cloned().unwrap());
    assert_eq!(
        (r.node.as_str(), r.exit_code, r.signal),
        ("t-n-000", Some(7), None)
    );
    assert_eq!(r.epoch, fake.with(|s| s.epochs["t-n-000"]));
    assert_eq!(
        std::fs::read_to_string(agent.task_file(1, "stdout.log")).unwrap(),
        "hi 1\n"
    );

    // The log server answers the controller with the secret it was given.
    let url = format!("{}/logs/1/1/0/stdout", reg.logs_url);
    let resp = ureq::get(&url)
        .set("Authorization", &format!("Bearer {}", reg.logs_secret))
        .call()
        .unwrap();
    assert_eq!(resp.header("X-Gosok-Log-Size"), Some("5"));
    assert_eq!(resp.into_string().unwrap(), "hi 1\n");
    assert!(matches!(
        ureq::get(&url).call(),
        Err(ureq::Error::Status(401, _))
    ));

    // At its limit a task is stopped and reported as such.
    eventually("the limit of job 3", Duration::from_secs(5), || {
        fake.with(|s| s.reports.iter().any(|r| r.job == 3))
    });
    let r = fake.with(|s| s.reports.iter().find(|r| r.job == 3).cloned().unwrap());
    assert_eq!(r.reason, gosok_model::agent::EndReason::Limit);

    // A task that leaves the desired set is killed, with all it forked, and not reported.
    eventually("job 2 to start", Duration::from_secs(5), || {
        pid_of(&agent.task_file(2, "pid")).is_some()
    });
    let pgid = pid_of(&agent.task_file(2, "pid")).unwrap();
    assert!(group_alive(pgid));
    fake.set_wants(vec![Want {
        node: "t-n-000".into(),
        job: 1,
        command: "echo hi $GOSOK_JOB_ID; exit 7".into(),
        limit_s: None,
    }]);
    eventually("job 2's group to be gone", Duration::from_secs(5), || {
        !group_alive(pgid)
    });
    // A task that exited is never started again while it is still listed.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(agent.task_file(1, "stdout.log")).unwrap(),
        "hi 1\n"
    );
    fake.with(|s| {
        assert!(!s.reports.iter().any(|r| r.job == 2));
        assert_eq!(s.reports.iter().filter(|r| r.job == 1).count(), 1);
        assert_eq!(s.registers.len(), 1);
    });
    agent.finish();
}

#[test]
fn a_short_outage_keeps_tasks_and_epochs_a_long_one_fences() {
    let fake = Fake::start(1200);
    let agent = Running::start(&fake, 1);
    fake.set_wants(vec![Want {
        node: "t-n-000".into(),
        job: 5,
        command: SLEEPER.into(),
        limit_s: None,
    }]);
    eventually("job 5 to start", Duration::from_secs(5), || {
        pid_of(&agent.task_file(5, "pid")).is_some()
    });
    let pgid = pid_of(&agent.task_file(5, "pid")).unwrap();
    let epoch = fake.with(|s| s.epochs["t-n-000"]);

    // A controller restart shorter than the lease: the task runs on, the epoch stays.
    fake.with(|s| s.down = true);
    std::thread::sleep(Duration::from_millis(500));
    fake.with(|s| {
        s.down = false;
        s.syncs.clear();
    });
    eventually("a sync after the outage", Duration::from_secs(3), || {
        fake.with(|s| !s.syncs.is_empty())
    });
    assert!(group_alive(pgid), "a short outage killed the task");
    fake.with(|s| {
        assert_eq!(s.registers.len(), 1);
        assert_eq!(
            s.syncs[0].nodes,
            vec![NodeEpoch {
                name: "t-n-000".into(),
                epoch
            }]
        );
    });

    // Unreachable for longer than the lease: the agent kills its task by its own clock,
    // before the controller is back.
    fake.with(|s| s.down = true);
    let t0 = Instant::now();
    eventually("the fence", Duration::from_secs(4), || !group_alive(pgid));
    assert!(
        t0.elapsed() < Duration::from_millis(1200 + 800),
        "fenced late: {:?}",
        t0.elapsed()
    );
    // Back: the node is registered again under a new epoch, and nothing was synced under
    // the old one after the fence.
    fake.with(|s| {
        s.syncs.clear();
        s.down = false;
    });
    eventually("registration again", Duration::from_secs(5), || {
        fake.with(|s| s.registers.len() == 2)
    });
    let new_epoch = fake.with(|s| s.epochs["t-n-000"]);
    assert!(new_epoch > epoch);
    eventually("a sync under the new epoch", Duration::from_secs(3), || {
        fake.with(|s| !s.syncs.is_empty())
    });
    fake.with(|s| assert!(s.syncs.iter().all(|q| q.nodes[0].epoch == new_epoch)));
    // The same key is not started again (it was killed under the old epoch, not exited, but
    // the controller would give it a new attempt anyway); the new epoch's desired set is.
    agent.finish();
}

#[test]
fn a_node_whose_lease_is_lost_is_killed_and_registered_again() {
    let fake = Fake::start(3000);
    let agent = Running::start(&fake, 2);
    fake.set_wants(vec![
        Want {
            node: "t-n-000".into(),
            job: 8,
            command: SLEEPER.into(),
            limit_s: None,
        },
        Want {
            node: "t-n-001".into(),
            job: 9,
            command: SLEEPER.into(),
            limit_s: None,
        },
    ]);
    eventually("jobs to start", Duration::from_secs(5), || {
        pid_of(&agent.task_file(8, "pid")).is_some() && pid_of(&agent.task_file(9, "pid")).is_some()
    });
    let (p8, p9) = (
        pid_of(&agent.task_file(8, "pid")).unwrap(),
        pid_of(&agent.task_file(9, "pid")).unwrap(),
    );
    // The controller gives node 001's epoch up (as after an expired lease).
    fake.with(|s| {
        s.wants.retain(|w| w.job != 9);
        *s.epochs.get_mut("t-n-001").unwrap() += 100;
        s.version += 1;
    });
    eventually("node 001's task killed", Duration::from_secs(5), || {
        !group_alive(p9)
    });
    eventually("node 001 registered again", Duration::from_secs(5), || {
        fake.with(|s| s.registers.len() == 2)
    });
    let again = fake.with(|s| s.registers[1].clone());
    assert_eq!(again.nodes.len(), 1);
    assert_eq!(again.nodes[0].name, "t-n-001");
    assert!(group_alive(p8), "another node's task was touched");
    agent.finish();
    assert!(!group_alive(p8), "stopping the agent left a task running");
}

#[test]
fn one_agent_hosts_a_thousand_virtual_nodes() {
    let fake = Fake::start(5000);
    let agent = Running::start(&fake, 1000);
    eventually("registration", Duration::from_secs(5), || {
        fake.with(|s| s.registers.len() == 1)
    });
    assert_eq!(fake.with(|s| s.registers[0].nodes.len()), 1000);
    assert_eq!(
        fake.with(|s| s.registers[0].nodes[999].name.clone()),
        "t-n-999"
    );
    let wants = (0..200)
        .map(|k| Want {
            node: format!("t-n-{:03}", k * 5),
            job: 100 + k,
            command: "exit 0".into(),
            limit_s: None,
        })
        .collect();
    let t0 = Instant::now();
    fake.set_wants(wants);
    eventually("200 reports", Duration::from_secs(20), || {
        fake.with(|s| s.reports.len() == 200)
    });
    eprintln!(
        "200 tasks on 1,000 virtual nodes started, ended and reported in {:?}",
        t0.elapsed()
    );
    fake.with(|s| {
        assert!(s.reports.iter().all(|r| r.exit_code == Some(0)));
        assert!(s.syncs.last().unwrap().nodes.len() == 1000);
    });
    agent.finish();
}

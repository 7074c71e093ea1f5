//! Conservation of metered usage: over random event sequences (fractions, gangs,
//! preemption, node loss, gang failure, cancels, topology rebuilds, snapshots), the sum of
//! every tenant's metered accelerator-seconds equals what the engine held allocated, and a
//! replay of the same log, from the start or from a snapshot, meters the same rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::accounts::AccountChange;
use super::*;
use crate::entry::{NodeClaim, TokenEntry};

const CLUSTER: &str = r#"
[[site]]
name = "pohang"
region = "gyeongbuk"
jurisdiction = "KR"
power_budget_mw = 20.0
pue = 1.25

[[site]]
name = "seoul"
region = "seoul"
jurisdiction = "KR"
power_budget_mw = 20.0
pue = 1.5

[[rack]]
name = "ph-r1"
site = "pohang"
power_cap_kw = 120.0

[[rack]]
name = "se-r1"
site = "seoul"
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

[[node]]
name = "se-r1-n"
rack = "se-r1"
count = 2
cpu_cores = 64
mem_mib = 1048576
accelerator = "A100-80GB"
accelerators = 4
state = "up"

[[tenant]]
name = "lab"
tier = "academic"

[[tenant]]
name = "team"
tier = "commercial"
"#;

const NODES: [&str; 4] = ["ph-r1-n-000", "ph-r1-n-001", "se-r1-n-000", "se-r1-n-001"];

#[derive(Debug, Clone)]
enum Op {
    Submit {
        team: bool,
        replicas: u64,
        /// Whole accelerators, or thousandths of one when `fraction`.
        amount: u64,
        fraction: bool,
        high: bool,
        limit_s: Option<u64>,
        continue_on_failure: bool,
    },
    Tick(u64),
    Cancel(usize),
    /// A task of a running job ends (status 0 or 1).
    TaskEnds {
        job: usize,
        task: usize,
        fail: bool,
    },
    /// A node's lease runs out; its agent registers it again later (`NodeBack`).
    NodeLost(usize),
    NodeBack(usize),
    /// A structural topology change: the engine is rebuilt and running work requeued.
    Rebuild,
    /// The controller restarts from a snapshot.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 1u64..=3, 1u64..=8, any::<bool>(), any::<bool>(),
              proptest::option::of(1u64..=900), any::<bool>())
            .prop_map(|(team, replicas, amount, fraction, high, limit_s, c)| Op::Submit {
                team,
                replicas,
                amount: if fraction { amount * 100 } else { amount.min(4) },
                fraction,
                high,
                limit_s,
                continue_on_failure: c,
            }),
        4 => (0u64..600).prop_map(Op::Tick),
        1 => (0usize..40).prop_map(Op::Cancel),
        3 => (0usize..40, 0usize..3, any::<bool>())
            .prop_map(|(job, task, fail)| Op::TaskEnds { job, task, fail }),
        1 => (0usize..4).prop_map(Op::NodeLost),
        1 => (0usize..4).prop_map(Op::NodeBack),
        1 => Just(Op::Rebuild),
        1 => Just(Op::Restart),
    ]
}

type Specs = Arc<Mutex<HashMap<u64, JobSpec>>>;

fn source(specs: &Specs) -> SpecSource {
    let specs = specs.clone();
    Box::new(move |seq| specs.lock().unwrap().get(&seq).cloned())
}

/// Accelerator thousandths the engine holds now, over every node.
fn held_milli(c: &Core) -> u64 {
    c.engine()
        .cluster()
        .nodes
        .iter()
        .map(|n| n.used_total_milli())
        .sum()
}

struct Run {
    core: Core,
    specs: Specs,
    log: Vec<(u64, u64, Entry)>,
    /// ∫ held accelerator thousandths dt, from the engine's own state.
    held_milli_s: u128,
}

impl Run {
    fn new() -> Run {
        let specs: Specs = Default::default();
        let core = Core::new(EngineConfig::default(), source(&specs)).unwrap();
        let mut r = Run {
            core,
            specs,
            log: Vec::new(),
            held_milli_s: 0,
        };
        r.apply(Entry::Init {
            now_s: 1_000_000,
            admin_token: TokenEntry {
                id: "admin".into(),
                tenant: None,
                agent: false,
                sha256: "00".repeat(32),
            },
        });
        r.apply(Entry::Topology {
            cluster: ClusterSpec::from_toml(CLUSTER).unwrap(),
            by: "admin".into(),
        });
        let nodes = NODES
            .iter()
            .map(|n| NodeClaim {
                name: n.to_string(),
                epoch: 1,
                labels: Default::default(),
            })
            .collect();
        r.apply(Entry::AgentRegister {
            agent: "a1".into(),
            address: "10.0.0.1".into(),
            nodes,
            by: "agent".into(),
        });
        // "lab" holds two small allocations: one for H100 expiring first, one for any model.
        for (name, to_s) in [("early", 1_020_000), ("late", 1_100_000)] {
            r.apply(Entry::Account {
                change: AccountChange::Programme {
                    name: name.into(),
                    tier: None,
                    from_s: 1_000_000,
                    to_s,
                    price_krw_per_accelerator_hour: None,
                },
                by: "admin".into(),
            });
        }
        for (programme, model) in [("late", None), ("early", Some("H100".to_string()))] {
            r.apply(Entry::Account {
                change: AccountChange::Grant {
                    tenant: "lab".into(),
                    programme: programme.into(),
                    accelerator_milli_s: 2 * 3_600_000,
                    model,
                    class: None,
                },
                by: "admin".into(),
            });
        }
        r
    }

    /// Applies an entry as the controller would (a refused one is not logged), and checks
    /// conservation after it.
    fn apply(&mut self, e: Entry) {
        let seq = self.log.len() as u64 + 1;
        let at_ms = self.core.now_s() * 1000;
        let (t0, held) = (self.core.engine().now_s(), held_milli(&self.core));
        if let Entry::Submit { spec, .. } = &e {
            self.specs.lock().unwrap().insert(seq, JobSpec::clone(spec));
        }
        if self.core.apply(seq, at_ms, &e).is_ok() {
            let t1 = self.core.engine().now_s();
            // Nothing the engine holds changes between events: what it held since the last
            // one it held until this one's time, and changed only then.
            self.held_milli_s += held as u128 * (t1 - t0) as u128;
            self.log.push((seq, at_ms, e));
        }
        let now = self.core.engine().now_s();
        assert_eq!(
            self.core.meter().accel_milli_s_to(now),
            self.held_milli_s,
            "metered vs held after record {seq}"
        );
        self.core.engine().check_invariants().unwrap();
    }

    fn step(&mut self, op: &Op) {
        let c = &self.core;
        match op.clone() {
            Op::Submit {
                team,
                replicas,
                amount,
                fraction,
                high,
                limit_s,
                continue_on_failure,
            } => {
                let group = if fraction {
                    serde_json::json!({"replicas": replicas, "accelerator_milli": amount, "models": ["H100"]})
                } else {
                    serde_json::json!({"replicas": replicas, "accelerators": amount, "cpu_milli": 4000, "mem_mib": 65536})
                };
                let spec: JobSpec = serde_json::from_value(serde_json::json!({
                    "groups": [group],
                    "priority": if high { "high" } else { "low" },
                    "runtime_limit_s": limit_s,
                    "on_task_failure": if continue_on_failure { "continue" } else { "fail_job" },
                }))
                .unwrap();
                let job = c.next_job_id();
                self.apply(Entry::Submit {
                    job,
                    tenant: if team { "team" } else { "lab" }.into(),
                    spec: Box::new(spec),
                    command: vec![],
                    env: Default::default(),
                    workdir: None,
                    idempotency: None,
                    control: Default::default(),
                    by: "admin".into(),
                });
            }
            Op::Tick(dt) => {
                let now_s = c.now_s() + dt;
                self.apply(Entry::Tick { now_s });
            }
            Op::Cancel(i) => {
                let job = i as u64 % c.next_job_id().max(1) + 1;
                self.apply(Entry::Cancel {
                    job,
                    by: "admin".into(),
                });
            }
            Op::TaskEnds { job, task, fail } => {
                let running: Vec<u64> = c.running_jobs.iter().copied().collect();
                if running.is_empty() {
                    return;
                }
                let j = c.job(running[job % running.len()]).unwrap();
                let Some(p) = j.placement.get(task % j.placement.len().max(1)) else {
                    return;
                };
                let epoch = c.node_agent(&p.node).map_or(0, |a| a.epoch);
                let e = Entry::TaskEnded {
                    job: j.id,
                    attempt: j.attempt,
                    task: p.task,
                    node: p.node.to_string(),
                    epoch,
                    status: fail as i32,
                    detail: String::new(),
                    energy_mj: Some(1000 * p.task as u64),
                    limit: false,
                    by: "agent".into(),
                };
                self.apply(e);
            }
            Op::NodeLost(n) => {
                let node = NODES[n];
                let epoch = c.node_agent(node).map_or(0, |a| a.epoch);
                self.apply(Entry::NodeLost {
                    node: node.into(),
                    epoch,
                });
            }
            Op::NodeBack(n) => {
                let node = NODES[n];
                let epoch = c.next_epoch(node);
                self.apply(Entry::AgentRegister {
                    agent: "a1".into(),
                    address: "10.0.0.1".into(),
                    nodes: vec![NodeClaim {
                        name: node.into(),
                        epoch,
                        labels: Default::default(),
                    }],
                    by: "agent".into(),
                });
            }
            Op::Rebuild => {
                let mut cluster = c.cluster().clone();
                cluster.node[1].cpu_cores = if cluster.node[1].cpu_cores == 64 {
                    48
                } else {
                    64
                };
                self.apply(Entry::Topology {
                    cluster,
                    by: "admin".into(),
                });
            }
            Op::Restart => {
                let bytes = self.core.snapshot().unwrap();
                let restored =
                    Core::restore(&bytes, EngineConfig::default(), source(&self.specs)).unwrap();
                assert_eq!(restored.meter().rows(), self.core.meter().rows());
                self.core = restored;
            }
        }
    }
}

fn all_rows(c: &Core) -> Vec<UsageRow> {
    let mut rows = c.meter().rows().to_vec();
    rows.extend(c.meter().open_rows(c.engine().now_s()));
    rows
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn metered_usage_equals_what_the_engine_held(ops in proptest::collection::vec(op(), 1..120)) {
        let mut run = Run::new();
        for op in &ops {
            run.step(op);
        }
        // A replay of the whole log from nothing meters the same rows.
        let mut replayed = Core::new(EngineConfig::default(), source(&run.specs)).unwrap();
        for (seq, at_ms, e) in &run.log {
            replayed.apply(*seq, *at_ms, e).unwrap();
        }
        prop_assert_eq!(all_rows(&replayed), all_rows(&run.core));
        prop_assert_eq!(replayed.accounts().allocations(), run.core.accounts().allocations());
        prop_assert_eq!(replayed.accounts().draws(), run.core.accounts().draws());
        // Every closed row of the tenant with allocations is drawn in full (covered or
        // not), no allocation is drawn past what it granted, and the H100 allocation that
        // expires first is drawn first.
        let acc = run.core.accounts();
        let m = run.core.meter();
        let lab_closed: u64 = m.rows().iter().filter(|r| m.name(r.tenant) == "lab").map(|r| r.accel_milli_s).sum();
        let drawn: u64 = acc.draws().iter().map(|d| d.milli_s).sum();
        prop_assert_eq!(drawn, lab_closed);
        for a in acc.allocations() {
            prop_assert!(a.drawn_milli_s <= a.granted_milli_s);
            let by_draws: u64 = acc.draws().iter().filter(|d| d.allocation == Some(a.id)).map(|d| d.milli_s).sum();
            prop_assert_eq!(by_draws, a.drawn_milli_s);
        }
        for d in acc.draws() {
            let r = &m.rows()[d.row as usize];
            if d.allocation == Some(1) {
                // "late" (any model) is drawn for H100 only once "early" is used up or over.
                prop_assert!(m.name(r.model) != "H100" || acc.allocations()[1].remaining_milli_s() == 0 || r.end_s >= 1_020_000);
            }
        }
        // Per-tenant sums add up to the total, and every row is a real interval.
        let rows = all_rows(&run.core);
        let total: u128 = rows.iter().map(|r| r.accel_milli_s as u128).sum();
        prop_assert_eq!(total, run.held_milli_s);
        for r in &rows {
            prop_assert!(r.start_s <= r.end_s);
            let t = run.core.meter().name(r.tenant);
            prop_assert!(t == "lab" || t == "team", "{}", t);
        }
    }
}

#[test]
fn a_fraction_is_metered_as_a_fraction_with_energy_by_site() {
    let mut run = Run::new();
    run.step(&Op::Submit {
        team: false,
        replicas: 1,
        amount: 250,
        fraction: true,
        high: false,
        limit_s: None,
        continue_on_failure: false,
    });
    run.step(&Op::Tick(0));
    run.step(&Op::Tick(3600));
    run.step(&Op::TaskEnds {
        job: 0,
        task: 0,
        fail: false,
    });
    let rows = run.core.meter().rows();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r.accel_milli_s, 250 * 3600);
    assert_eq!(run.core.meter().name(r.model), "H100");
    assert_eq!(run.core.meter().name(r.site), "pohang");
    assert_eq!(r.end, AttemptEnd::Succeeded);
    // 0.25 of a 700 W device at the engine's utilisation, plus a quarter of an eighth of the
    // node's base draw, for an hour, × PUE 1.25.
    let node = &run.core.engine().cluster().nodes[0];
    let it_mw = node.device_w * 250 + node.base_w * 250 * 1000 / 8000;
    assert_eq!(r.est_energy_mj, it_mw * 3600 * 1250 / 1000);
    // The agent reported the task's energy (0 mJ for task 0 in this harness).
    assert_eq!(r.measured_energy_mj, Some(0));
}

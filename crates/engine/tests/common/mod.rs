//! A small harness that drives the engine the way the controller and simulator do.

#![allow(dead_code)]

use gosok_engine::{Decision, Engine, EngineConfig, Event, JobId, JobState};
use gosok_model::{
    Catalog, ClusterSpec, JobSpec, NodeSpec, NodeState, RackSpec, SiteSpec, TenantSpec, Tier,
};

/// Builds a cluster: `sites` × `racks` × `nodes` of `model` × `devices`.
pub struct Highway {
    pub spec: ClusterSpec,
}

impl Highway {
    pub fn new() -> Highway {
        Highway {
            spec: ClusterSpec::default(),
        }
    }

    pub fn site(mut self, name: &str, region: &str, jurisdiction: &str, mw: f64) -> Highway {
        self.spec.site.push(SiteSpec {
            name: name.into(),
            region: region.into(),
            jurisdiction: jurisdiction.into(),
            power_budget_mw: mw,
            pue: 1.25,
        });
        self
    }

    /// A rack (own scale-up domain unless `domain` is given) with `nodes` nodes.
    #[allow(clippy::too_many_arguments)]
    pub fn rack(
        mut self,
        site: &str,
        name: &str,
        kw: f64,
        domain: Option<&str>,
        nodes: u64,
        model: &str,
        devices: u64,
    ) -> Highway {
        self.spec.rack.push(RackSpec {
            name: name.into(),
            site: site.into(),
            power_cap_kw: kw,
            scale_up_domain: domain.map(String::from),
            allow_undeclared_nodes: false,
            max_nodes: None,
        });
        self.spec.node.push(NodeSpec {
            name: name.into(),
            rack: name.into(),
            count: Some(nodes),
            cpu_cores: 128,
            mem_mib: 1 << 20,
            accelerator: Some(model.into()),
            accelerators: devices,
            base_power_w: 1000,
            labels: Default::default(),
            taints: Vec::new(),
            state: NodeState::Up,
        });
        self
    }

    pub fn tenant(mut self, t: TenantSpec) -> Highway {
        self.spec.tenant.push(t);
        self
    }

    pub fn tenants(mut self, names: &[&str]) -> Highway {
        for n in names {
            self.spec.tenant.push(TenantSpec::new(n, Tier::Academic));
        }
        self
    }

    pub fn engine(self) -> Harness {
        self.engine_with(EngineConfig::default())
    }

    pub fn engine_with(self, cfg: EngineConfig) -> Harness {
        let engine = Engine::new(Catalog::builtin(), &self.spec, cfg).expect("valid test highway");
        Harness {
            engine,
            log: Vec::new(),
            next_id: 1,
        }
    }
}

pub struct Harness {
    pub engine: Engine,
    pub log: Vec<Decision>,
    pub next_id: u64,
}

pub fn spec(json: &str) -> JobSpec {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("bad test spec {json}: {e}"))
}

impl Harness {
    fn record(&mut self, d: Vec<Decision>) -> Vec<Decision> {
        self.engine
            .check_invariants()
            .unwrap_or_else(|e| panic!("invariant broken: {e}"));
        self.log.extend(d.iter().cloned());
        d
    }

    pub fn apply(&mut self, e: Event) -> Vec<Decision> {
        let d = self.engine.apply(e).expect("event accepted");
        self.record(d)
    }

    pub fn submit(&mut self, tenant: &str, json: &str) -> JobId {
        let id = JobId(self.next_id);
        self.next_id += 1;
        self.apply(Event::Submit {
            id,
            tenant: tenant.into(),
            spec: spec(json),
        });
        id
    }

    pub fn schedule(&mut self) -> Vec<Decision> {
        let d = self.engine.schedule();
        self.record(d)
    }

    pub fn at(&mut self, now_s: u64) -> Vec<Decision> {
        self.apply(Event::AdvanceTime { now_s })
    }

    pub fn state(&self, id: JobId) -> JobState {
        self.engine.job_state(id).expect("job known")
    }

    pub fn started(&self, id: JobId) -> bool {
        self.state(id) == JobState::Running
    }

    pub fn why(&self, id: JobId) -> String {
        self.engine.explain(id).expect("job known").text
    }

    /// Ends every task of a running job with `code`.
    pub fn finish(&mut self, id: JobId, code: i32) -> Vec<Decision> {
        let job = self.engine.job(id).expect("job known");
        let (attempt, n) = (job.attempt, job.tasks.len() as u32);
        let mut out = Vec::new();
        for task in 0..n {
            if self.engine.job_state(id) != Some(JobState::Running) {
                break;
            }
            out.extend(self.apply(Event::TaskEnded {
                id,
                attempt,
                task,
                exit_code: code,
            }));
        }
        out
    }

    pub fn preemptions(&self) -> Vec<(JobId, String)> {
        self.log
            .iter()
            .filter_map(|d| match d {
                Decision::Preempt { job, reason, .. } => Some((*job, format!("{reason:?}"))),
                _ => None,
            })
            .collect()
    }

    pub fn rejection(&self, id: JobId) -> Option<String> {
        self.log.iter().find_map(|d| match d {
            Decision::Reject { job, reason } if *job == id => Some(reason.clone()),
            _ => None,
        })
    }

    pub fn nodes_of(&self, id: JobId) -> Vec<String> {
        self.log
            .iter()
            .rev()
            .find_map(|d| match d {
                Decision::Start { job, tasks, .. } if *job == id => {
                    Some(tasks.iter().map(|t| t.node.to_string()).collect())
                }
                _ => None,
            })
            .unwrap_or_default()
    }
}

//! The controller's side of the node agents (`docs/AGENTS.md`): nodes claimed under epochs
//! (fencing tokens), task reports, and the desired set of tasks each agent must run.

use std::collections::{BTreeMap, BTreeSet};

use gosok_engine::{Decision, Event, JobId, JobState, TaskPlacement};
use gosok_model::NodeState;
use gosok_model::agent::{Assignment, NodeEpoch, NodeLease};

use super::{Applied, Core, HistoryItem, JobRecord, Refusal};
use crate::entry::NodeClaim;

/// What a job's tasks run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSpec {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
}

impl RunSpec {
    /// What it stores: the bytes of its command, env (names and values) and workdir.
    pub fn bytes(&self) -> u64 {
        let command: usize = self.command.iter().map(String::len).sum();
        let env: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        (command + env + self.workdir.as_ref().map_or(0, String::len)) as u64
    }

    /// None when there is nothing to keep (the common case in benchmarks: no command).
    pub fn of(
        command: Vec<String>,
        env: BTreeMap<String, String>,
        workdir: Option<String>,
    ) -> Option<Box<RunSpec>> {
        if command.is_empty() && env.is_empty() && workdir.is_none() {
            return None;
        }
        Some(Box::new(RunSpec {
            command,
            env,
            workdir,
        }))
    }
}

/// A node claimed by an agent.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeAgent {
    /// The agent process (random per start) that holds it.
    pub agent: String,
    /// Its fencing token: reports carrying another epoch are refused.
    pub epoch: u64,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    /// The lease expired: the epoch is dead until the node is registered again.
    pub lost: bool,
}

impl JobRecord {
    /// Moves the placement of the attempt that just stopped to `last_run` (logs are there).
    pub(super) fn keep_last_run(&mut self) {
        if !self.placement.is_empty() {
            self.last_run = std::mem::take(&mut self.placement);
            self.last_run_attempt = self.attempt;
        }
    }
}

/// Why a report was refused; the agent drops it.
pub const STALE_EPOCH: &str = "stale_epoch";

impl Core {
    pub fn node_agent(&self, node: &str) -> Option<&NodeAgent> {
        self.agents.get(node)
    }
    pub fn node_agents(&self) -> &BTreeMap<String, NodeAgent> {
        &self.agents
    }
    /// The epoch a new claim of `node` gets.
    pub fn next_epoch(&self, node: &str) -> u64 {
        self.agents.get(node).map_or(1, |a| a.epoch + 1)
    }
    /// Whether `epoch` is the live epoch of `node`.
    pub fn epoch_valid(&self, node: &str, epoch: u64) -> bool {
        self.agents
            .get(node)
            .is_some_and(|a| a.epoch == epoch && !a.lost)
            && self
                .node_states
                .get(node)
                .is_some_and(|s| *s != NodeState::Down)
    }

    pub(super) fn agent_register(
        &mut self,
        at_ms: u64,
        agent: &str,
        address: &str,
        nodes: &[NodeClaim],
        out: &mut Applied,
    ) -> Result<(), Refusal> {
        let mut seen = BTreeSet::new();
        for (i, c) in nodes.iter().enumerate() {
            if !self.node_states.contains_key(&c.name) {
                return Err(Refusal::invalid(
                    format!("nodes[{i}].name"),
                    format!("node {:?} is not declared", c.name),
                ));
            }
            if c.epoch != self.next_epoch(&c.name) {
                return Err(Refusal::conflict(
                    Some("epoch"),
                    format!(
                        "node {:?}: epoch {} is not the next one ({})",
                        c.name,
                        c.epoch,
                        self.next_epoch(&c.name)
                    ),
                ));
            }
            if !seen.insert(&c.name) {
                return Err(Refusal::invalid(
                    format!("nodes[{i}].name"),
                    format!("node {:?} is named twice", c.name),
                ));
            }
        }
        let mut decisions = Vec::new();
        for c in nodes {
            let state = self.node_states[&c.name];
            // Whatever ran under the old epoch is gone (the agent restarted, or it lost its
            // lease and killed its tasks): take the node down first so the engine requeues.
            if state != NodeState::Down {
                decisions.extend(
                    self.engine
                        .apply(Event::NodeState {
                            node: c.name.clone(),
                            state: NodeState::Down,
                        })
                        .map_err(|e| Refusal::invalid("node", e.to_string()))?,
                );
            }
            // An operator's drain outlasts the agent's restart.
            let new = if state == NodeState::Draining {
                NodeState::Draining
            } else {
                NodeState::Up
            };
            decisions.extend(
                self.engine
                    .apply(Event::NodeState {
                        node: c.name.clone(),
                        state: new,
                    })
                    .map_err(|e| Refusal::invalid("node", e.to_string()))?,
            );
            self.node_states.insert(c.name.clone(), new);
            self.agents.insert(
                c.name.clone(),
                NodeAgent {
                    agent: agent.to_string(),
                    epoch: c.epoch,
                    address: address.to_string(),
                    labels: c.labels.clone(),
                    lost: false,
                },
            );
        }
        self.dirty = true;
        self.decide(at_ms, decisions, out);
        Ok(())
    }

    pub(super) fn node_lost(
        &mut self,
        at_ms: u64,
        node: &str,
        epoch: u64,
        out: &mut Applied,
    ) -> Result<(), Refusal> {
        if !self.epoch_valid(node, epoch) {
            return Err(Refusal::conflict(
                Some("epoch"),
                format!("node {node:?} is not up under epoch {epoch}"),
            ));
        }
        let decisions = self
            .engine
            .apply(Event::NodeState {
                node: node.to_string(),
                state: NodeState::Down,
            })
            .map_err(|e| Refusal::invalid("node", e.to_string()))?;
        self.node_states.insert(node.to_string(), NodeState::Down);
        if let Some(a) = self.agents.get_mut(node) {
            a.lost = true;
        }
        self.dirty = true;
        self.decide(at_ms, decisions, out);
        Ok(())
    }

    /// Checks a task report without changing anything: a refusal's code says why.
    pub fn check_task_report(
        &self,
        job: u64,
        attempt: u32,
        task: u32,
        node: &str,
        epoch: u64,
    ) -> Result<(), (&'static str, String)> {
        if !self.epoch_valid(node, epoch) {
            return Err((
                STALE_EPOCH,
                format!(
                    "node {node:?} is not up under epoch {epoch}: its lease was lost or it registered again"
                ),
            ));
        }
        let Some(j) = self.job(job) else {
            return Err(("not_found", format!("job {job} is not known")));
        };
        if j.state != JobState::Running || j.attempt != attempt {
            return Err((
                "stale_attempt",
                format!(
                    "job {job} attempt {attempt} is not running (the job is {}, attempt {})",
                    super::state_name(j.state),
                    j.attempt
                ),
            ));
        }
        if !j
            .placement
            .iter()
            .any(|p| p.task == task && *p.node == *node)
        {
            return Err((
                "not_placed",
                format!("task {task} of job {job} is not placed on node {node:?}"),
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn task_ended(
        &mut self,
        at_ms: u64,
        job: u64,
        attempt: u32,
        task: u32,
        node: &str,
        epoch: u64,
        status: i32,
        detail: &str,
        energy_mj: Option<u64>,
        limit: bool,
        out: &mut Applied,
    ) -> Result<(), Refusal> {
        self.check_task_report(job, attempt, task, node, epoch)
            .map_err(|(_, m)| Refusal::conflict(Some("epoch"), m))?;
        let mut decisions = self
            .engine
            .apply(Event::TaskEnded {
                id: JobId(job),
                attempt,
                task,
                exit_code: status,
            })
            .map_err(|e| Refusal::conflict(Some("task"), e.to_string()))?;
        if limit {
            // Stopped by its agent at its runtime limit: the job timed out, it did not fail.
            for d in &mut decisions {
                if let Decision::Finish {
                    job: j,
                    state,
                    reason,
                } = d
                    && j.0 == job
                    && *state == JobState::Failed
                {
                    *state = JobState::TimedOut;
                    *reason = format!("runtime limit reached ({reason})");
                }
            }
        }
        if let Some(j) = job
            .checked_sub(1)
            .and_then(|i| self.jobs.get_mut(i as usize))
        {
            j.history.push(HistoryItem {
                at_ms,
                event: "task_ended",
                detail: format!("task {task} on {node}: {detail}"),
            });
        }
        // The engine gave the task's hold back now (or ends the whole job in `decide`).
        self.meter
            .task_ended(job, attempt, task, self.engine.now_s(), energy_mj);
        self.dirty = true;
        self.decide(at_ms, decisions, out);
        Ok(())
    }

    /// Whether `agent` holds `node` under its live `epoch`.
    pub fn holds(&self, agent: &str, node: &str, epoch: u64) -> bool {
        self.epoch_valid(node, epoch) && self.agents.get(node).is_some_and(|a| a.agent == agent)
    }

    /// The leases of `nodes` as `agent` named them, and the whole desired set of tasks on
    /// those it holds under a live epoch.
    pub fn assignments(
        &self,
        agent: &str,
        nodes: &[NodeEpoch],
        grace_s: u64,
    ) -> (Vec<NodeLease>, Vec<Assignment>) {
        let mut live = BTreeMap::new();
        let leases = nodes
            .iter()
            .map(|n| {
                let valid = self.holds(agent, &n.name, n.epoch);
                if valid {
                    live.insert(n.name.as_str(), n.epoch);
                }
                NodeLease {
                    name: n.name.clone(),
                    epoch: n.epoch,
                    valid,
                }
            })
            .collect();
        let mut tasks = Vec::new();
        if live.is_empty() {
            return (leases, tasks);
        }
        for &id in &self.running_jobs {
            let Some(j) = self.job(id) else { continue };
            for p in &j.placement {
                let Some(&epoch) = live.get(&*p.node) else {
                    continue;
                };
                tasks.push(self.assignment(j, p, epoch, grace_s));
            }
        }
        (leases, tasks)
    }

    fn assignment(&self, j: &JobRecord, p: &TaskPlacement, epoch: u64, grace_s: u64) -> Assignment {
        let run = j.run.as_deref();
        let mut env = run.map(|r| r.env.clone()).unwrap_or_default();
        let devices = p
            .devices
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let vendor = p
            .model
            .as_deref()
            .and_then(|m| self.catalog.id(m))
            .map(|id| self.catalog.get(id).vendor.as_str());
        match vendor {
            Some("NVIDIA") => {
                env.insert("CUDA_VISIBLE_DEVICES".into(), devices.clone());
            }
            Some("AMD") => {
                env.insert("HIP_VISIBLE_DEVICES".into(), devices.clone());
            }
            _ => {}
        }
        env.insert("GOSOK_VISIBLE_DEVICES".into(), devices);
        if p.milli < 1000 {
            env.insert("GOSOK_DEVICE_MILLI".into(), p.milli.to_string());
        }
        let same_node = |q: &&TaskPlacement| q.node == p.node;
        let local_rank = j
            .placement
            .iter()
            .filter(same_node)
            .filter(|q| q.task < p.task)
            .count();
        let local_world = j.placement.iter().filter(same_node).count();
        let master = j
            .placement
            .iter()
            .min_by_key(|q| q.task)
            .and_then(|q| self.agents.get(&*q.node))
            .map_or("127.0.0.1", |a| a.address.as_str());
        // A port per job and attempt, below the usual ephemeral range.
        let port = 20_000 + (j.id.wrapping_mul(131).wrapping_add(j.attempt as u64)) % 10_000;
        for (k, v) in [
            ("GOSOK_JOB_ID", j.id.to_string()),
            ("GOSOK_TASK_INDEX", p.task.to_string()),
            ("GOSOK_ATTEMPT", j.attempt.to_string()),
            ("GOSOK_NODE", p.node.to_string()),
            ("GOSOK_TENANT", j.tenant.to_string()),
            ("RANK", p.task.to_string()),
            ("WORLD_SIZE", j.placement.len().to_string()),
            ("LOCAL_RANK", local_rank.to_string()),
            ("LOCAL_WORLD_SIZE", local_world.to_string()),
            ("MASTER_ADDR", master.to_string()),
            ("MASTER_PORT", port.to_string()),
        ] {
            env.insert(k.into(), v);
        }
        let engine_job = self.engine.job(JobId(j.id));
        let limit_s = engine_job.and_then(|e| e.limit_s);
        let req = engine_job.and_then(|e| self.engine.group_req(e, p.group));
        Assignment {
            node: p.node.to_string(),
            epoch,
            job: j.id,
            attempt: j.attempt,
            task: p.task,
            command: run.map(|r| r.command.clone()).unwrap_or_default(),
            workdir: run.and_then(|r| r.workdir.clone()),
            env,
            limit_s,
            grace_s,
            tenant: j.tenant.to_string(),
            mem_mib: req.map_or(0, |r| r.mem_mib),
            cpu_milli: req.map_or(0, |r| r.cpu_milli),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests::core;
    use crate::entry::Entry;
    use gosok_engine::Decision;
    use gosok_model::JobSpec;

    fn claim(c: &mut Core, seq: u64, nodes: &[&str]) {
        let claims = nodes
            .iter()
            .map(|n| NodeClaim {
                name: n.to_string(),
                epoch: c.next_epoch(n),
                labels: BTreeMap::new(),
            })
            .collect();
        c.apply(
            seq,
            1000,
            &Entry::AgentRegister {
                agent: "a1".into(),
                address: "10.0.0.7".into(),
                nodes: claims,
                by: "agent".into(),
            },
        )
        .unwrap();
    }

    fn submit_gang(c: &mut Core, seq: u64, replicas: u64, accel: u64) -> u64 {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "groups": [{"replicas": replicas, "accelerators": accel, "models": ["H100"]}],
            "runtime_limit_s": 600,
        }))
        .unwrap();
        let job = c.next_job_id();
        c.apply(
            seq,
            2000,
            &Entry::Submit {
                job,
                tenant: "lab".into(),
                spec: Box::new(spec),
                command: vec!["python3".into(), "train.py".into()],
                env: [("SEED".to_string(), "7".to_string())].into(),
                workdir: Some("/data".into()),
                idempotency: None,
                control: None,
                by: "lab".into(),
            },
        )
        .unwrap();
        job
    }

    fn lease(nodes: &[(&str, u64)]) -> Vec<NodeEpoch> {
        nodes
            .iter()
            .map(|(n, e)| NodeEpoch {
                name: n.to_string(),
                epoch: *e,
            })
            .collect()
    }

    #[test]
    fn a_gang_on_claimed_nodes_gets_its_devices_ranks_and_master() {
        let mut c = core();
        // The test highway declares its nodes up; the claim takes them down and up again.
        claim(&mut c, 3, &["ph-r1-n-000", "ph-r1-n-001"]);
        assert_eq!(c.node_agent("ph-r1-n-000").unwrap().epoch, 1);
        let job = submit_gang(&mut c, 4, 2, 4);
        c.apply(5, 3000, &Entry::Tick { now_s: 1001 }).unwrap();
        let (leases, tasks) =
            c.assignments("a1", &lease(&[("ph-r1-n-000", 1), ("ph-r1-n-001", 1)]), 10);
        assert!(leases.iter().all(|l| l.valid));
        assert_eq!(tasks.len(), 2);
        let mut ranks: Vec<&str> = tasks.iter().map(|t| t.env["RANK"].as_str()).collect();
        ranks.sort();
        assert_eq!(ranks, ["0", "1"]);
        for t in &tasks {
            assert_eq!(t.job, job);
            assert_eq!(t.command, ["python3", "train.py"]);
            assert_eq!(t.workdir.as_deref(), Some("/data"));
            assert_eq!(t.env["SEED"], "7");
            assert_eq!(t.env["WORLD_SIZE"], "2");
            assert_eq!(t.env["MASTER_ADDR"], "10.0.0.7");
            assert_eq!(t.env["CUDA_VISIBLE_DEVICES"].split(',').count(), 4);
            assert_eq!(t.env["GOSOK_JOB_ID"], job.to_string());
            assert_eq!(t.limit_s, Some(600));
            // Both replicas fit on one node (best fit), or one on each: local ranks agree.
            let local: usize = t.env["LOCAL_WORLD_SIZE"].parse().unwrap();
            assert!(local == 1 || local == 2);
        }
        // A report from a stale epoch is refused; the right one ends the task.
        let t0 = &tasks[0];
        let stale = c.check_task_report(job, t0.attempt, t0.task, &t0.node, 0);
        assert_eq!(stale.unwrap_err().0, STALE_EPOCH);
        for (seq, t) in (6..).zip(&tasks) {
            c.apply(
                seq,
                4000,
                &Entry::TaskEnded {
                    job,
                    attempt: t.attempt,
                    task: t.task,
                    node: t.node.clone(),
                    epoch: t.epoch,
                    status: 0,
                    detail: "exited with status 0".into(),
                    energy_mj: None,
                    limit: false,
                    by: "agent".into(),
                },
            )
            .unwrap();
        }
        assert_eq!(c.job(job).unwrap().state, JobState::Succeeded);
        // Its logs stay findable after it ended.
        assert_eq!(c.job(job).unwrap().last_run.len(), 2);
        let (_, tasks) = c.assignments("a1", &lease(&[("ph-r1-n-000", 1), ("ph-r1-n-001", 1)]), 10);
        assert!(tasks.is_empty());
    }

    #[test]
    fn a_lost_lease_requeues_and_fences_the_old_epoch() {
        let mut c = core();
        claim(&mut c, 3, &["ph-r1-n-000"]);
        // The other node is not claimed: make it unavailable so the job lands on n-000.
        c.apply(
            4,
            1000,
            &Entry::NodeState {
                node: "ph-r1-n-001".into(),
                state: NodeState::Down,
                by: "admin".into(),
            },
        )
        .unwrap();
        let job = submit_gang(&mut c, 5, 1, 8);
        c.apply(6, 3000, &Entry::Tick { now_s: 1001 }).unwrap();
        assert_eq!(c.job(job).unwrap().state, JobState::Running);
        let a = c
            .apply(
                7,
                3000,
                &Entry::NodeLost {
                    node: "ph-r1-n-000".into(),
                    epoch: 1,
                },
            )
            .unwrap();
        assert!(
            a.decisions
                .iter()
                .any(|d| matches!(d, Decision::Requeue { .. }))
        );
        assert_eq!(c.job(job).unwrap().state, JobState::Pending);
        let (leases, tasks) = c.assignments("a1", &lease(&[("ph-r1-n-000", 1)]), 10);
        assert!(!leases[0].valid);
        assert!(tasks.is_empty());
        // A late report under the dead epoch is refused; losing it twice is refused too.
        assert_eq!(
            c.check_task_report(job, 1, 0, "ph-r1-n-000", 1)
                .unwrap_err()
                .0,
            STALE_EPOCH
        );
        assert!(
            c.apply(
                8,
                3000,
                &Entry::NodeLost {
                    node: "ph-r1-n-000".into(),
                    epoch: 1
                }
            )
            .is_err()
        );
        // Registered again: epoch 2, and the job runs there as attempt 2.
        claim(&mut c, 9, &["ph-r1-n-000"]);
        assert_eq!(c.node_agent("ph-r1-n-000").unwrap().epoch, 2);
        c.apply(10, 4000, &Entry::Tick { now_s: 1002 }).unwrap();
        let (_, tasks) = c.assignments("a1", &lease(&[("ph-r1-n-000", 2)]), 10);
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].attempt, 2);
        assert_eq!(tasks[0].epoch, 2);
    }

    #[test]
    fn claims_are_refused_for_unknown_nodes_and_wrong_epochs() {
        let mut c = core();
        let bad = |name: &str, epoch: u64| Entry::AgentRegister {
            agent: "a".into(),
            address: "x".into(),
            nodes: vec![NodeClaim {
                name: name.into(),
                epoch,
                labels: BTreeMap::new(),
            }],
            by: "agent".into(),
        };
        assert!(c.apply(3, 1000, &bad("nope", 1)).is_err());
        assert!(c.apply(3, 1000, &bad("ph-r1-n-000", 5)).is_err());
        assert!(c.node_agent("ph-r1-n-000").is_none());
    }
}

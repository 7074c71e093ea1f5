//! Metering: what each task attempt held, for how long, derived from the engine's decisions
//! as the core applies log records (so a replay or a restored snapshot meters the same).
//!
//! A task's usage runs on the engine's clock from the start of its attempt until the engine
//! gives its hold back: when the task ends (the rest of a gang may run on), or when the
//! attempt ends (finished, failed, cancelled, preempted, requeued, node lost, rebuilt). That
//! is exactly the interval the engine holds the task's accelerators, so the sum of metered
//! accelerator-seconds equals the accelerator-seconds the engine held (a property test
//! checks it). A closed attempt becomes one [`UsageRow`] per (model, site) it ran on: the
//! pre-aggregated rows that usage reports read, so a report never replays the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gosok_engine::{Engine, JobId, TaskPlacement};
use serde::{Deserialize, Serialize};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptEnd {
    Succeeded,
    Failed,
    Cancelled,
    /// Stopped and back in the queue to make room (priority, reclaim, ladder, power).
    Preempted,
    /// Lost a node or the topology was rebuilt: back in the queue.
    Requeued,
    /// Anything else that ended a running job (rejected after start, limit reached, ...).
    Stopped,
}

impl AttemptEnd {
    pub fn name(self) -> &'static str {
        match self {
            AttemptEnd::Succeeded => "succeeded",
            AttemptEnd::Failed => "failed",
            AttemptEnd::Cancelled => "cancelled",
            AttemptEnd::Preempted => "preempted",
            AttemptEnd::Requeued => "requeued",
            AttemptEnd::Stopped => "stopped",
        }
    }
    /// Work an end throws away (the attempt must run again from its last checkpoint).
    pub fn loses_work(self) -> bool {
        matches!(self, AttemptEnd::Preempted | AttemptEnd::Requeued)
    }
}

/// One closed attempt's usage on one (model, site): quantities integrated over time, in
/// integers so that sums are exact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub job: u64,
    pub attempt: u32,
    /// Indices into [`Meter::names`].
    pub tenant: u32,
    /// "" for tasks without accelerators.
    pub model: u32,
    pub site: u32,
    /// Engine seconds: the attempt's start and the last of its tasks' ends on this part.
    pub start_s: u64,
    pub end_s: u64,
    /// Thousandths of an accelerator × seconds (a 0.25 share for an hour is 250 × 3600).
    pub accel_milli_s: u64,
    pub cpu_milli_s: u64,
    pub mem_mib_s: u64,
    /// Estimated facility energy (IT draw of the engine's power model × PUE), millijoules.
    pub est_energy_mj: u64,
    /// Measured accelerator energy from the agents (NVML), millijoules; None: not measured
    /// (some task of the attempt had no reading).
    pub measured_energy_mj: Option<u64>,
    pub end: AttemptEnd,
    /// For a preempted attempt: the job it made room for (0: none).
    pub preempted_by: u64,
}

/// One task of a running attempt, as fixed at its start.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpenTask {
    model: u32,
    site: u32,
    accel_milli: u64,
    cpu_milli: u64,
    mem_mib: u64,
    /// Its IT draw: its share of its devices' draw plus its share of the node's base draw.
    it_mw: u64,
    pue_milli: u64,
    /// When the engine gave its hold back, if it has (the gang runs on).
    ended_s: Option<u64>,
    energy_mj: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpenAttempt {
    tenant: u32,
    attempt: u32,
    start_s: u64,
    tasks: Vec<OpenTask>,
}

/// Metered usage: running attempts and the rows of closed ones (in the order they closed,
/// which is non-decreasing `end_s`: the engine's clock never goes back).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meter {
    names: Vec<Arc<str>>,
    #[serde(skip)]
    name_ix: HashMap<Arc<str>, u32>,
    open: BTreeMap<u64, OpenAttempt>,
    rows: Vec<UsageRow>,
    /// Closed rows' accelerator thousandth-seconds and estimated energy (mJ) per name index
    /// (tenants'), for the metrics endpoint; rebuilt from the rows at restore.
    #[serde(skip)]
    totals: Vec<[u64; 2]>,
}

impl Meter {
    /// Rebuilds the name index after a snapshot is read.
    pub fn reindex(&mut self) {
        self.name_ix = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        self.totals = Vec::new();
        for i in 0..self.rows.len() {
            let r = self.rows[i].clone();
            self.count(&r);
        }
    }

    fn count(&mut self, r: &UsageRow) {
        let i = r.tenant as usize;
        if self.totals.len() <= i {
            self.totals.resize(i + 1, [0, 0]);
        }
        self.totals[i][0] += r.accel_milli_s;
        self.totals[i][1] += r.est_energy_mj;
    }

    /// Closed attempts' accelerator thousandth-seconds and estimated energy (mJ) per tenant.
    pub fn totals_by_tenant(&self) -> impl Iterator<Item = (&str, [u64; 2])> {
        self.totals
            .iter()
            .enumerate()
            .filter(|(_, t)| t[0] > 0 || t[1] > 0)
            .map(|(i, t)| (self.name(i as u32), *t))
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.name_ix.get(name) {
            return i;
        }
        let n: Arc<str> = name.into();
        let i = self.names.len() as u32;
        self.names.push(n.clone());
        self.name_ix.insert(n, i);
        i
    }

    pub fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("", |n| n)
    }
    pub fn name_index(&self, name: &str) -> Option<u32> {
        self.name_ix.get(name).copied()
    }
    pub fn rows(&self) -> &[UsageRow] {
        &self.rows
    }

    /// A job attempt started with `tasks`, at the engine's current time.
    pub fn open(
        &mut self,
        engine: &Engine,
        job: u64,
        tenant: &str,
        attempt: u32,
        tasks: &[TaskPlacement],
    ) {
        let now = engine.now_s();
        // An attempt still open cannot hold anything now: the engine starts a job only
        // after it released the previous attempt.
        self.close(job, now, AttemptEnd::Stopped);
        let tenant = self.intern(tenant);
        let cluster = engine.cluster();
        let ejob = engine.job(JobId(job));
        let mut open = Vec::with_capacity(tasks.len());
        for t in tasks {
            let Some(&n) = cluster.node_by_name.get(&t.node) else {
                continue;
            };
            let node = &cluster.nodes[n as usize];
            let site = &cluster.sites[node.site as usize];
            let (cpu_milli, mem_mib) = ejob
                .and_then(|j| engine.group_req(j, t.group))
                .map_or((0, 0), |g| (g.cpu_milli, g.mem_mib));
            let accel_milli = t.devices.len() as u64 * t.milli as u64;
            // The node's base draw is shared by what each task holds of it: accelerators
            // where the node has them, else CPU.
            let base_share_mw = if node.devices() > 0 {
                node.base_w * accel_milli * 1000 / (node.devices() as u64 * 1000)
            } else {
                (node.base_w * cpu_milli * 1000)
                    .checked_div(node.cpu_total_milli)
                    .unwrap_or(0)
            };
            let model = self.intern(t.model.as_deref().unwrap_or(""));
            let site_ix = self.intern(&site.name);
            open.push(OpenTask {
                model,
                site: site_ix,
                accel_milli,
                cpu_milli,
                mem_mib,
                it_mw: node.device_w * accel_milli + base_share_mw,
                pue_milli: site.pue_milli,
                ended_s: None,
                energy_mj: None,
            });
        }
        self.open.insert(
            job,
            OpenAttempt {
                tenant,
                attempt,
                start_s: now,
                tasks: open,
            },
        );
    }

    /// The engine gave back one task's hold at `now_s` (its process ended, the gang runs
    /// on, or the whole job is about to end); `energy_mj` is what its agent measured.
    pub fn task_ended(
        &mut self,
        job: u64,
        attempt: u32,
        task: u32,
        now_s: u64,
        energy_mj: Option<u64>,
    ) {
        let Some(a) = self.open.get_mut(&job).filter(|a| a.attempt == attempt) else {
            return;
        };
        if let Some(t) = a.tasks.get_mut(task as usize)
            && t.ended_s.is_none()
        {
            t.ended_s = Some(now_s);
            t.energy_mj = energy_mj;
        }
    }

    /// The job's running attempt ended at `now_s`: every task still holding ends with it.
    pub fn close(&mut self, job: u64, now_s: u64, end: AttemptEnd) {
        self.close_by(job, now_s, end, 0);
    }

    /// As [`Meter::close`], for an attempt preempted to make room for job `by`.
    pub fn close_by(&mut self, job: u64, now_s: u64, end: AttemptEnd, by: u64) {
        let Some(a) = self.open.remove(&job) else {
            return;
        };
        let measured_all = a.tasks.iter().all(|t| t.energy_mj.is_some());
        let mut parts: BTreeMap<(u32, u32), UsageRow> = BTreeMap::new();
        for t in &a.tasks {
            let end_s = t.ended_s.unwrap_or(now_s).max(a.start_s);
            let dt = end_s - a.start_s;
            let row = parts.entry((t.model, t.site)).or_insert_with(|| UsageRow {
                job,
                attempt: a.attempt,
                tenant: a.tenant,
                model: t.model,
                site: t.site,
                start_s: a.start_s,
                end_s,
                accel_milli_s: 0,
                cpu_milli_s: 0,
                mem_mib_s: 0,
                est_energy_mj: 0,
                measured_energy_mj: measured_all.then_some(0),
                end,
                preempted_by: by,
            });
            row.end_s = row.end_s.max(end_s);
            row.accel_milli_s += t.accel_milli * dt;
            row.cpu_milli_s += t.cpu_milli * dt;
            row.mem_mib_s += t.mem_mib * dt;
            row.est_energy_mj += facility_mj(t.it_mw, dt, t.pue_milli);
            if let (Some(m), Some(e)) = (row.measured_energy_mj.as_mut(), t.energy_mj) {
                *m += e;
            }
        }
        for r in parts.into_values() {
            self.count(&r);
            self.rows.push(r);
        }
    }

    /// Running attempts' usage so far, as rows ending at `now_s` (not stored).
    pub fn open_rows(&self, now_s: u64) -> Vec<UsageRow> {
        let mut out = Vec::new();
        for (&job, a) in &self.open {
            let mut copy = self.clone_attempt(job, a);
            copy.close(job, now_s, AttemptEnd::Stopped);
            out.extend(copy.rows.into_iter().map(|mut r| {
                r.measured_energy_mj = None;
                r
            }));
        }
        out
    }

    fn clone_attempt(&self, job: u64, a: &OpenAttempt) -> Meter {
        let mut m = Meter::default();
        m.open.insert(job, a.clone());
        m
    }

    /// Accelerator thousandth-seconds metered up to `now_s`: closed rows plus running
    /// attempts so far (what conservation compares with the engine).
    pub fn accel_milli_s_to(&self, now_s: u64) -> u128 {
        let closed: u128 = self.rows.iter().map(|r| r.accel_milli_s as u128).sum();
        let open: u128 = self
            .open
            .values()
            .flat_map(|a| {
                a.tasks.iter().map(move |t| {
                    let end = t.ended_s.unwrap_or(now_s).max(a.start_s);
                    t.accel_milli as u128 * (end - a.start_s) as u128
                })
            })
            .sum();
        closed + open
    }

    /// Running attempts' accelerator use so far: (job, tenant, model, thousandth-seconds)
    /// per task.
    pub fn open_accrual(&self, now_s: u64) -> impl Iterator<Item = (u64, u32, u32, u64)> + '_ {
        self.open.iter().flat_map(move |(&job, a)| {
            a.tasks.iter().map(move |t| {
                let end = t.ended_s.unwrap_or(now_s).max(a.start_s);
                (job, a.tenant, t.model, t.accel_milli * (end - a.start_s))
            })
        })
    }

    /// Accelerators (thousandths) each tenant's running attempts hold now.
    pub fn held_milli_by_tenant(&self) -> BTreeMap<&str, u64> {
        let mut out: BTreeMap<&str, u64> = BTreeMap::new();
        for a in self.open.values() {
            let held: u64 = a
                .tasks
                .iter()
                .filter(|t| t.ended_s.is_none())
                .map(|t| t.accel_milli)
                .sum();
            *out.entry(self.name(a.tenant)).or_default() += held;
        }
        out
    }
}

/// IT draw `it_mw` for `dt_s` seconds at a site's PUE (thousandths), in millijoules.
fn facility_mj(it_mw: u64, dt_s: u64, pue_milli: u64) -> u64 {
    let mj = it_mw as u128 * dt_s as u128 * pue_milli as u128 / 1000;
    mj.min(u64::MAX as u128) as u64
}

//! What keeps an admitted job from being eligible: a user's hold, dependencies on other jobs
//! (`afterok`, `afterany`, `afternotok`, `singleton`) and a job array's cap on tasks at once.
//!
//! A gated job is submitted to the engine and held there at once (`Event::Hold`): it keeps
//! its admission, and no pass considers it. Gates are opened by [`Core::open_gates`] on a
//! tick after something that could open one (a job ended, a release), in job-id order, so a
//! replay of the log opens the same gates at the same records. A dependency that can never
//! be met (`afterok` on a job that failed) ends the job as cancelled, with that reason.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use gosok_engine::{Decision, Event, JobId, JobState};
use serde::{Deserialize, Serialize};

use super::{Applied, Core, HistoryItem, Refusal};

/// Most tasks in one job array, and the highest index (Slurm's `MaxArraySize` spirit: an
/// array is a convenience, not a way around the pending-job limits, which count every task).
pub const MAX_ARRAY_TASKS: u32 = 10_000;
pub const MAX_ARRAY_INDEX: u32 = 1_000_000;

/// What a submission asks of job control, beside its spec: in the API's JSON, `"array":
/// "0-99%8"`, `"dependency": "afterok:3:4,singleton"`, `"hold": true`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobControl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArraySpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependency: Vec<Dependency>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
}

impl JobControl {
    pub fn is_default(&self) -> bool {
        *self == JobControl::default()
    }
    /// How many jobs the submission makes.
    pub fn jobs(&self) -> u64 {
        self.array.as_ref().map_or(1, |a| a.indices().len() as u64)
    }
}

/// `first-last[:step][%max_running]`, or a comma-separated list of indices and ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArraySpec {
    /// The task indices, ascending, no repeats.
    pub indices: Vec<u32>,
    /// At most this many tasks eligible (pending in line or running) at once.
    pub max_running: Option<u32>,
}

impl ArraySpec {
    pub fn parse(text: &str) -> Result<ArraySpec, String> {
        let text = text.trim();
        let (list, max) =
            match text.split_once('%') {
                Some((l, m)) => {
                    let m: u32 =
                        m.trim().parse().ok().filter(|&m| m > 0).ok_or_else(|| {
                            format!("{m:?} after '%' is not a positive whole number")
                        })?;
                    (l, Some(m))
                }
                None => (text, None),
            };
        let mut set = BTreeSet::new();
        for part in list.split(',') {
            let part = part.trim();
            let (range, step) = match part.split_once(':') {
                Some((r, s)) => (
                    r,
                    s.parse::<u32>()
                        .ok()
                        .filter(|&s| s > 0)
                        .ok_or_else(|| format!("step {s:?} is not a positive whole number"))?,
                ),
                None => (part, 1),
            };
            let num = |s: &str| {
                s.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n <= MAX_ARRAY_INDEX)
                    .ok_or_else(|| {
                        format!("{s:?} is not an index (a whole number up to {MAX_ARRAY_INDEX})")
                    })
            };
            let (a, b) = match range.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(range)?, num(range)?),
            };
            if a > b {
                return Err(format!("range {range:?} ends before it starts"));
            }
            let mut i = a;
            while i <= b {
                set.insert(i);
                if set.len() > MAX_ARRAY_TASKS as usize {
                    return Err(format!("more than {MAX_ARRAY_TASKS} tasks in one array"));
                }
                i = match i.checked_add(step) {
                    Some(n) => n,
                    None => break,
                };
            }
        }
        Ok(ArraySpec {
            indices: set.into_iter().collect(),
            max_running: max,
        })
    }

    pub fn indices(&self) -> &[u32] {
        &self.indices
    }
}

impl fmt::Display for ArraySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (first, last) = (
            self.indices.first().copied().unwrap_or(0),
            self.indices.last().copied().unwrap_or(0),
        );
        if self.indices.len() as u64 == (last - first) as u64 + 1 {
            write!(f, "{first}-{last}")?;
        } else {
            let l: Vec<String> = self.indices.iter().map(u32::to_string).collect();
            write!(f, "{}", l.join(","))?;
        }
        if let Some(m) = self.max_running {
            write!(f, "%{m}")?;
        }
        Ok(())
    }
}

/// One condition on other jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dependency {
    /// Every listed job succeeded.
    AfterOk(Vec<u64>),
    /// Every listed job ended, however.
    AfterAny(Vec<u64>),
    /// Every listed job ended without success (failed, timed out, cancelled).
    AfterNotOk(Vec<u64>),
    /// No earlier job of the same tenant and name is still pending or running.
    Singleton,
}

impl Dependency {
    /// `afterok:3:4,afterany:5,singleton` (`?` between conditions is not supported: all
    /// must hold).
    pub fn parse_list(text: &str) -> Result<Vec<Dependency>, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.eq_ignore_ascii_case("singleton") {
                out.push(Dependency::Singleton);
                continue;
            }
            let mut it = part.split(':');
            let kind = it.next().unwrap_or_default().to_ascii_lowercase();
            let ids = it
                .map(|s| {
                    s.trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("{s:?} in {part:?} is not a job id"))
                })
                .collect::<Result<Vec<u64>, String>>()?;
            if ids.is_empty() && kind != "singleton" {
                return Err(format!(
                    "{part:?} names no job (expected {kind}:ID[:ID...])"
                ));
            }
            out.push(match kind.as_str() {
                "afterok" => Dependency::AfterOk(ids),
                "afterany" => Dependency::AfterAny(ids),
                "afternotok" => Dependency::AfterNotOk(ids),
                other => {
                    return Err(format!(
                        "{other:?} is not a dependency type (afterok, afterany, afternotok, singleton)"
                    ));
                }
            });
        }
        if out.len() > 64 {
            return Err("more than 64 dependencies".into());
        }
        Ok(out)
    }

    pub fn jobs(&self) -> &[u64] {
        match self {
            Dependency::AfterOk(j) | Dependency::AfterAny(j) | Dependency::AfterNotOk(j) => j,
            Dependency::Singleton => &[],
        }
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, jobs) = match self {
            Dependency::AfterOk(j) => ("afterok", j),
            Dependency::AfterAny(j) => ("afterany", j),
            Dependency::AfterNotOk(j) => ("afternotok", j),
            Dependency::Singleton => return write!(f, "singleton"),
        };
        write!(f, "{kind}")?;
        for j in jobs {
            write!(f, ":{j}")?;
        }
        Ok(())
    }
}

/// Writes dependencies as the CLI and Slurm do: `afterok:3:4,singleton`.
pub fn dependency_text(deps: &[Dependency]) -> String {
    deps.iter()
        .map(Dependency::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One job's job control, kept on its record (`JobRecord::gate`) for as long as it exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub user_hold: bool,
    pub dependency: Vec<Dependency>,
    pub array: Option<ArrayTask>,
    /// Held in the engine until the gate opens.
    pub waiting: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayTask {
    /// The array's id: its first task's job id.
    pub array: u64,
    pub index: u32,
}

/// One job array: its tasks are the jobs `first..=last`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrayRecord {
    pub last: u64,
    pub max_running: Option<u32>,
    pub text: String,
}

/// The controller's gate bookkeeping (in snapshots as it is).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Gates {
    /// Jobs whose gate is closed (held in the engine), by id.
    pub waiting: BTreeSet<u64>,
    /// Job arrays by their first job id.
    pub arrays: BTreeMap<u64, ArrayRecord>,
    /// Something happened since the last check that could open a gate.
    pub dirty: bool,
}

/// Whether a dependency holds now.
enum Met {
    Yes,
    NotYet(String),
    Never(String),
}

fn state_word(s: JobState) -> &'static str {
    super::state_name(s)
}

impl Core {
    /// What can be checked of a submission's job control before it is written: dependencies
    /// name earlier jobs of the same tenant; a singleton has a name.
    pub fn check_control(
        &self,
        tenant: &str,
        name: Option<&str>,
        c: &JobControl,
    ) -> Result<(), Refusal> {
        for (i, d) in c.dependency.iter().enumerate() {
            if *d == Dependency::Singleton && name.is_none() {
                return Err(Refusal::invalid(
                    format!("dependency[{i}]"),
                    "singleton needs a job name (--name, or `name` in the spec)",
                ));
            }
            for id in d.jobs() {
                match self.job(*id) {
                    Some(j) if &*j.tenant == tenant => {}
                    _ => {
                        return Err(Refusal::invalid(
                            format!("dependency[{i}]"),
                            format!("{d}: job {id} is not a job of tenant {tenant}"),
                        ));
                    }
                }
            }
        }
        if let Some(a) = &c.array
            && a.indices.is_empty()
        {
            return Err(Refusal::invalid("array", "no task indices"));
        }
        Ok(())
    }

    /// After jobs `first..=last` were submitted with `c`: their gates, held in the engine.
    pub(super) fn gate_new_jobs(
        &mut self,
        first: u64,
        c: &JobControl,
    ) -> Result<Vec<Decision>, Refusal> {
        let mut out = Vec::new();
        let n = c.jobs();
        if let Some(a) = &c.array {
            self.gates.arrays.insert(
                first,
                ArrayRecord {
                    last: first + n - 1,
                    max_running: a.max_running,
                    text: a.to_string(),
                },
            );
        }
        for k in 0..n {
            let id = first + k;
            let Some(j) = self.job_mut(id) else { continue };
            if j.state != JobState::Pending {
                continue; // refused at admission
            }
            j.gate = Some(Box::new(Gate {
                user_hold: c.hold,
                dependency: c.dependency.clone(),
                array: c.array.as_ref().map(|a| ArrayTask {
                    array: first,
                    index: a.indices[k as usize],
                }),
                waiting: true,
            }));
            out.extend(
                self.engine
                    .apply(Event::Hold { id: JobId(id) })
                    .map_err(|e| Refusal::invalid("job", e.to_string()))?,
            );
            self.gates.waiting.insert(id);
        }
        self.gates.dirty = true;
        Ok(out)
    }

    /// A user's hold: a pending job is no longer eligible until released.
    pub(super) fn hold_job(&mut self, at_ms: u64, id: u64, by: &str) -> Result<(), Refusal> {
        let j = self
            .job(id)
            .ok_or_else(|| Refusal::not_found(format!("job {id} is not known")))?;
        if j.state != JobState::Pending {
            return Err(Refusal::conflict(
                Some("job"),
                format!(
                    "job {id} is {}: only a pending job can be held",
                    state_word(j.state)
                ),
            ));
        }
        let waiting = self.gates.waiting.contains(&id);
        if !waiting {
            self.engine
                .apply(Event::Hold { id: JobId(id) })
                .map_err(|e| Refusal::conflict(Some("job"), e.to_string()))?;
            self.gates.waiting.insert(id);
        }
        let j = self.job_mut(id).expect("checked above");
        let g = j.gate.get_or_insert_with(|| {
            Box::new(Gate {
                user_hold: false,
                dependency: Vec::new(),
                array: None,
                waiting: true,
            })
        });
        g.user_hold = true;
        g.waiting = true;
        j.history.push(HistoryItem {
            at_ms,
            event: "held",
            detail: format!("by {by}"),
        });
        Ok(())
    }

    /// Lifts a user's hold; the job becomes eligible once its other gates open.
    pub(super) fn release_job(
        &mut self,
        at_ms: u64,
        id: u64,
        by: &str,
        out: &mut Applied,
    ) -> Result<(), Refusal> {
        let j = self
            .job_mut(id)
            .ok_or_else(|| Refusal::not_found(format!("job {id} is not known")))?;
        match j.gate.as_deref_mut() {
            Some(g) if g.user_hold && j.state == JobState::Pending => g.user_hold = false,
            _ => {
                return Err(Refusal::conflict(
                    Some("job"),
                    format!("job {id} is not held"),
                ));
            }
        }
        j.history.push(HistoryItem {
            at_ms,
            event: "released",
            detail: format!("by {by}"),
        });
        self.gates.dirty = true;
        self.open_gates(at_ms, out);
        Ok(())
    }

    /// A running job back to the queue (held there with `hold`).
    pub(super) fn requeue_job(
        &mut self,
        at_ms: u64,
        id: u64,
        hold: bool,
        by: &str,
        out: &mut Applied,
    ) -> Result<(), Refusal> {
        let j = self
            .job(id)
            .ok_or_else(|| Refusal::not_found(format!("job {id} is not known")))?;
        if j.state != JobState::Running {
            return Err(Refusal::conflict(
                Some("job"),
                format!(
                    "job {id} is {}: only a running job can be requeued",
                    state_word(j.state)
                ),
            ));
        }
        let decisions = self
            .engine
            .apply(Event::Requeue {
                id: JobId(id),
                reason: format!("requeued by {by}"),
            })
            .map_err(|e| Refusal::conflict(Some("job"), e.to_string()))?;
        self.dirty = true;
        self.decide(at_ms, decisions, out);
        if hold {
            self.hold_job(at_ms, id, by)?;
        }
        Ok(())
    }

    /// Opens every gate that can open now, lowest job id first; ends jobs whose
    /// dependencies can never be met. Runs on a tick when something changed.
    pub(super) fn open_gates(&mut self, at_ms: u64, out: &mut Applied) {
        if !self.gates.dirty {
            return;
        }
        self.gates.dirty = false;
        // Tasks of each array now eligible (pending in line or running).
        let mut active: BTreeMap<u64, u64> = BTreeMap::new();
        let ids: Vec<u64> = self.gates.waiting.iter().copied().collect();
        for id in ids {
            let Some(j) = self.job(id) else {
                self.gates.waiting.remove(&id);
                continue;
            };
            let Some(g) = j.gate.as_deref() else {
                self.gates.waiting.remove(&id);
                continue;
            };
            if g.user_hold {
                continue;
            }
            match self.dependencies_met(id) {
                Met::Yes => {}
                Met::NotYet(_) => continue,
                Met::Never(reason) => {
                    self.gates.waiting.remove(&id);
                    if let Ok(d) = self.engine.apply(Event::Cancel { id: JobId(id) }) {
                        let d = d
                            .into_iter()
                            .map(|d| match d {
                                Decision::Finish { job, state, .. } if job.0 == id => {
                                    Decision::Finish {
                                        job,
                                        state,
                                        reason: reason.clone(),
                                    }
                                }
                                d => d,
                            })
                            .collect();
                        self.dirty = true;
                        self.decide(at_ms, d, out);
                    }
                    if let Some(g) = self.job_mut(id).and_then(|j| j.gate.as_deref_mut()) {
                        g.waiting = false;
                    }
                    // Its own dependants may now never be met either.
                    self.gates.dirty = true;
                    continue;
                }
            }
            if let Some(t) = g.array
                && let Some(a) = self.gates.arrays.get(&t.array)
                && let Some(max) = a.max_running
            {
                let (first, last) = (t.array, a.last);
                let n = *active
                    .entry(first)
                    .or_insert_with(|| self.array_active(first, last));
                if n >= max as u64 {
                    continue;
                }
                active.insert(first, n + 1);
            }
            if self.engine.apply(Event::Release { id: JobId(id) }).is_ok() {
                self.gates.waiting.remove(&id);
                self.dirty = true;
                let j = self.job_mut(id).expect("looked up above");
                if let Some(g) = j.gate.as_deref_mut() {
                    g.waiting = false;
                }
            }
        }
    }

    /// Tasks of the array `first..=last` that are eligible: pending in line, or running.
    fn array_active(&self, first: u64, last: u64) -> u64 {
        (first..=last)
            .filter(|&id| {
                self.job(id)
                    .is_some_and(|j| !j.state.is_terminal() && !self.gates.waiting.contains(&id))
            })
            .count() as u64
    }

    fn dependencies_met(&self, id: u64) -> Met {
        let Some(j) = self.job(id) else {
            return Met::Yes;
        };
        let Some(g) = j.gate.as_deref() else {
            return Met::Yes;
        };
        for d in &g.dependency {
            if *d == Dependency::Singleton {
                let blocker = self.jobs[..(id - 1) as usize].iter().rev().find(|o| {
                    !o.refused
                        && !o.state.is_terminal()
                        && o.tenant == j.tenant
                        && o.name.is_some()
                        && o.name == j.name
                });
                if let Some(o) = blocker {
                    return Met::NotYet(format!("singleton: job {} has the same name", o.id));
                }
                continue;
            }
            for &other in d.jobs() {
                let Some(o) = self.job(other) else {
                    return Met::Never(format!("dependency {d}: job {other} is not known"));
                };
                if !o.state.is_terminal() {
                    return Met::NotYet(format!("{d}: job {other} is {}", state_word(o.state)));
                }
                let ok = o.state == JobState::Succeeded;
                match d {
                    Dependency::AfterOk(_) if !ok => {
                        return Met::Never(format!(
                            "dependency never satisfied: {d} but job {other} {}",
                            state_word(o.state)
                        ));
                    }
                    Dependency::AfterNotOk(_) if ok => {
                        return Met::Never(format!(
                            "dependency never satisfied: {d} but job {other} succeeded"
                        ));
                    }
                    _ => {}
                }
            }
        }
        Met::Yes
    }

    /// What keeps a waiting job from being eligible, in words (None: nothing).
    pub fn gate_text(&self, id: u64) -> Option<String> {
        if !self.gates.waiting.contains(&id) {
            return None;
        }
        let g = self.job(id)?.gate.as_deref()?;
        if g.user_hold {
            return Some("held (gosok release to let it run)".into());
        }
        if let Met::NotYet(why) = self.dependencies_met(id) {
            return Some(format!("waiting for dependency {why}"));
        }
        if let Some(t) = g.array
            && let Some(a) = self.gates.arrays.get(&t.array)
        {
            return Some(format!(
                "array {} allows {} task(s) at once",
                t.array,
                a.max_running.unwrap_or(0)
            ));
        }
        Some("waiting for its dependencies to be checked".into())
    }

    pub fn is_held(&self, id: u64) -> bool {
        self.gates.waiting.contains(&id)
            && self
                .job(id)
                .and_then(|j| j.gate.as_deref())
                .is_some_and(|g| g.user_hold)
    }

    pub fn array(&self, first: u64) -> Option<&ArrayRecord> {
        self.gates.arrays.get(&first)
    }

    /// Holds every waiting job again in a rebuilt engine.
    pub(super) fn hold_waiting_again(&mut self) {
        let ids: Vec<u64> = self.gates.waiting.iter().copied().collect();
        for id in ids {
            let _ = self.engine.apply(Event::Hold { id: JobId(id) });
        }
    }

    fn job_mut(&mut self, id: u64) -> Option<&mut super::JobRecord> {
        let i = id.checked_sub(1)? as usize;
        self.jobs.get_mut(i).filter(|j| !j.refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests::core;
    use crate::entry::Entry;
    use gosok_engine::EngineConfig;

    fn submit(c: &mut Core, seq: u64, accel: u64, name: Option<&str>, control: JobControl) {
        let spec: gosok_model::JobSpec = serde_json::from_value(serde_json::json!({
            "name": name,
            "groups": [{"replicas": 1, "accelerators": accel, "models": ["H100"]}]
        }))
        .unwrap();
        c.check_control("lab", name, &control).unwrap();
        let job = c.next_job_id();
        c.apply(
            seq,
            seq * 1000,
            &Entry::Submit {
                job,
                tenant: "lab".into(),
                spec: Box::new(spec),
                command: vec!["true".into()],
                env: Default::default(),
                workdir: None,
                idempotency: None,
                control: Some(Box::new(control)),
                by: "admin".into(),
            },
        )
        .unwrap();
    }

    fn states(c: &Core) -> Vec<&'static str> {
        (1..c.next_job_id())
            .map(|id| crate::core::job_state_name(c.job(id).unwrap()))
            .collect()
    }

    #[test]
    fn arrays_dependencies_and_holds_gate_jobs_and_survive_a_snapshot() {
        let mut c = core();
        // 1: runs; 2: afterok:1; 3: afternotok:1; 4..=7: an array of 4, 2 at once; 8: held.
        submit(&mut c, 3, 8, None, JobControl::default());
        let dep = |t: &str| JobControl {
            dependency: Dependency::parse_list(t).unwrap(),
            ..Default::default()
        };
        submit(&mut c, 4, 1, None, dep("afterok:1"));
        submit(&mut c, 5, 1, None, dep("afternotok:1"));
        let array = JobControl {
            array: Some(ArraySpec::parse("0-3%2").unwrap()),
            ..Default::default()
        };
        submit(&mut c, 6, 1, Some("sweep"), array);
        let held = JobControl {
            hold: true,
            ..Default::default()
        };
        submit(&mut c, 7, 1, None, held);
        assert_eq!(c.next_job_id(), 9);
        c.apply(8, 8000, &Entry::Tick { now_s: 1010 }).unwrap();
        assert_eq!(
            states(&c),
            [
                "running", "pending", "pending", "running", "running", "pending", "pending", "held"
            ]
        );
        let task = |c: &Core, id: u64| c.job(id).unwrap().run.as_ref().unwrap().env.clone();
        assert_eq!(task(&c, 6)["GOSOK_ARRAY_TASK_ID"], "2");
        assert_eq!(task(&c, 6)["GOSOK_ARRAY_JOB_ID"], "4");
        assert!(
            c.gate_text(2).unwrap().contains("afterok:1"),
            "{:?}",
            c.gate_text(2)
        );
        assert!(c.gate_text(6).unwrap().contains("2 task(s) at once"));

        // Restored from a snapshot, the gates are the same, and so is what opens them.
        let bytes = c.snapshot().unwrap();
        let spec = |_| {
            serde_json::from_value(serde_json::json!({
                "groups": [{"replicas": 1, "accelerators": 1, "models": ["H100"]}]
            }))
            .ok()
        };
        let mut r = Core::restore(&bytes, EngineConfig::default(), Box::new(spec)).unwrap();
        for c in [&mut c, &mut r] {
            // Job 1 is cancelled: afterok:1 can never be met, afternotok:1 is.
            c.apply(
                9,
                9000,
                &Entry::Cancel {
                    job: 1,
                    by: "admin".into(),
                },
            )
            .unwrap();
            // One array task ends: the next one becomes eligible.
            c.apply(
                10,
                9000,
                &Entry::Cancel {
                    job: 4,
                    by: "admin".into(),
                },
            )
            .unwrap();
            c.apply(11, 10000, &Entry::Tick { now_s: 1011 }).unwrap();
            c.apply(12, 11000, &Entry::Tick { now_s: 1012 }).unwrap();
            assert_eq!(
                states(c),
                [
                    "cancelled",
                    "cancelled",
                    "running",
                    "cancelled",
                    "running",
                    "running",
                    "pending",
                    "held"
                ]
            );
            let reason = c.job(2).unwrap().reason.clone().unwrap();
            assert!(
                reason.contains("never satisfied") && reason.contains("cancelled"),
                "{reason}"
            );
            c.apply(
                13,
                12000,
                &Entry::Release {
                    job: 8,
                    by: "admin".into(),
                },
            )
            .unwrap();
            c.apply(14, 13000, &Entry::Tick { now_s: 1013 }).unwrap();
            assert_eq!(crate::core::job_state_name(c.job(8).unwrap()), "running");
            // Held again after a requeue: back to pending, not eligible.
            c.apply(
                15,
                14000,
                &Entry::Requeue {
                    job: 8,
                    hold: true,
                    by: "admin".into(),
                },
            )
            .unwrap();
            assert_eq!(crate::core::job_state_name(c.job(8).unwrap()), "held");
            let e = c
                .apply(
                    16,
                    14000,
                    &Entry::Hold {
                        job: 1,
                        by: "admin".into(),
                    },
                )
                .unwrap_err();
            assert!(e.message.contains("only a pending job"), "{}", e.message);
            // A held job cancelled: its gate is closed for good.
            c.apply(
                17,
                15000,
                &Entry::Cancel {
                    job: 8,
                    by: "admin".into(),
                },
            )
            .unwrap();
            assert_eq!(crate::core::job_state_name(c.job(8).unwrap()), "cancelled");
            assert!(!c.gates.waiting.contains(&8));
            c.engine().check_invariants().unwrap();
        }
    }

    #[test]
    fn a_singleton_waits_for_the_earlier_job_of_its_name() {
        let mut c = core();
        submit(&mut c, 3, 1, Some("train"), JobControl::default());
        let single = JobControl {
            dependency: vec![Dependency::Singleton],
            ..Default::default()
        };
        submit(&mut c, 4, 1, Some("train"), single.clone());
        c.apply(5, 5000, &Entry::Tick { now_s: 1010 }).unwrap();
        assert_eq!(states(&c), ["running", "pending"]);
        c.apply(
            6,
            6000,
            &Entry::Cancel {
                job: 1,
                by: "admin".into(),
            },
        )
        .unwrap();
        c.apply(7, 7000, &Entry::Tick { now_s: 1011 }).unwrap();
        c.apply(8, 8000, &Entry::Tick { now_s: 1012 }).unwrap();
        assert_eq!(states(&c), ["cancelled", "running"]);
        let e = c.check_control("lab", None, &single).unwrap_err();
        assert!(e.message.contains("needs a job name"), "{}", e.message);
        let other = JobControl {
            dependency: Dependency::parse_list("afterok:99").unwrap(),
            ..Default::default()
        };
        assert!(c.check_control("lab", None, &other).is_err());
    }

    #[test]
    fn arrays_and_dependencies_parse_as_slurm_writes_them() {
        let a = ArraySpec::parse("0-99%8").unwrap();
        assert_eq!(a.indices.len(), 100);
        assert_eq!(a.max_running, Some(8));
        assert_eq!(a.to_string(), "0-99%8");
        let a = ArraySpec::parse("1,3,5-9:2").unwrap();
        assert_eq!(a.indices, [1, 3, 5, 7, 9]);
        assert!(ArraySpec::parse("5-1").unwrap_err().contains("ends before"));
        assert!(
            ArraySpec::parse("0-20000")
                .unwrap_err()
                .contains("more than")
        );
        assert!(ArraySpec::parse("0-3%0").is_err());
        let d = Dependency::parse_list("afterok:3:4,afterany:5,singleton").unwrap();
        assert_eq!(
            d,
            [
                Dependency::AfterOk(vec![3, 4]),
                Dependency::AfterAny(vec![5]),
                Dependency::Singleton
            ]
        );
        assert_eq!(dependency_text(&d), "afterok:3:4,afterany:5,singleton");
        assert!(
            Dependency::parse_list("after:3")
                .unwrap_err()
                .contains("not a dependency type")
        );
        assert!(
            Dependency::parse_list("afterok")
                .unwrap_err()
                .contains("names no job")
        );
        assert!(Dependency::parse_list("afterok:x").is_err());
    }
}

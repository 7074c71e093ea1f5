//! No starving gangs (`docs/SCHEDULING.md`, "No starving gangs"): a held reservation is a
//! promise, and a gang's wait is bounded under a steady stream of small jobs from a tenant of
//! higher weight (and class).
//!
//! The driver below runs jobs to their real ends in event order, as the twin does: every job
//! has an actual run time no longer than its limit, and the engine schedules after every
//! instant at which something happened.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Harness, Highway};
use gosok_engine::hold::SlipCause;
use gosok_engine::{Decision, EngineConfig, JobId, JobState, WaitReason};
use gosok_model::{ClusterSpec, PriorityClass, TenantSpec, Tier};
use proptest::prelude::*;

/// A job to submit: when, by whom, its spec, and how long it really runs.
#[derive(Debug, Clone)]
struct Arrival {
    at_s: u64,
    tenant: &'static str,
    json: String,
    runs_s: u64,
}

/// What a run observed.
#[derive(Default)]
struct Seen {
    submitted: BTreeMap<JobId, (u64, &'static str, String)>,
    first_start: BTreeMap<JobId, u64>,
    /// When each attempt started: (job, attempt) as the start decision numbers it.
    starts: BTreeMap<(JobId, u32), u64>,
    done: BTreeSet<JobId>,
    /// Per holding (job, its attempts so far): when it took the reservation and the reserved
    /// starts it was given.
    holds: BTreeMap<(JobId, u32), (u64, Vec<u64>)>,
    /// Reserved starts that moved later, with the cause the engine gave.
    slips: Vec<(JobId, u64, u64, Option<SlipCause>)>,
    /// Times at which a holder's explanation mentioned a later start and its cause.
    slip_texts: Vec<String>,
}

struct Driver {
    h: Harness,
    /// Closed-loop tenant: it submits its next job `think_s` after the previous one started.
    closed: Vec<Arrival>,
    think_s: u64,
    seen: Seen,
    runs: BTreeMap<JobId, u64>,
    ends: BTreeSet<(u64, JobId, u32)>,
}

impl Driver {
    fn new(h: Harness, closed: Vec<Arrival>, think_s: u64) -> Driver {
        Driver {
            h,
            closed,
            think_s,
            seen: Seen::default(),
            runs: BTreeMap::new(),
            ends: BTreeSet::new(),
        }
    }

    fn submit(&mut self, now: u64, a: &Arrival) -> JobId {
        let id = self.h.submit(a.tenant, &a.json);
        self.runs.insert(id, a.runs_s);
        self.seen
            .submitted
            .insert(id, (now, a.tenant, a.json.clone()));
        id
    }

    /// Runs until `until_s`; `open` arrivals come at their times, the closed-loop ones one at
    /// a time.
    fn run(&mut self, mut open: Vec<Arrival>, until_s: u64) {
        open.sort_by_key(|a| a.at_s);
        let mut open = open.into_iter().peekable();
        // With closed-loop jobs, the run ends once the last of them has started.
        let has_closed = !self.closed.is_empty();
        let mut closed = std::mem::take(&mut self.closed).into_iter();
        let mut next_closed: Option<(u64, Arrival)> = closed.next().map(|a| (a.at_s, a));
        let mut waiting_closed: Option<JobId> = None;
        let mut now = 0;
        loop {
            let mut next = u64::MAX;
            if let Some(a) = open.peek() {
                next = next.min(a.at_s);
            }
            if let Some((t, _)) = &next_closed
                && waiting_closed.is_none()
            {
                next = next.min(*t);
            }
            if let Some(&(t, _, _)) = self.ends.first() {
                next = next.min(t);
            }
            let closed_done = has_closed && next_closed.is_none() && waiting_closed.is_none();
            if next == u64::MAX || next > until_s || closed_done {
                break;
            }
            now = now.max(next);
            self.h.at(now);
            while let Some(&(t, id, attempt)) = self.ends.first()
                && t <= now
            {
                self.ends.pop_first();
                let job = self.h.engine.job(id).expect("known");
                if job.state == JobState::Running && job.attempt == attempt {
                    self.h.finish(id, 0);
                    self.seen.done.insert(id);
                }
            }
            while open.peek().is_some_and(|a| a.at_s <= now) {
                let a = open.next().expect("peeked");
                self.submit(now, &a);
            }
            if waiting_closed.is_none()
                && let Some((t, a)) = next_closed.take()
            {
                if t <= now {
                    waiting_closed = Some(self.submit(now, &a));
                } else {
                    next_closed = Some((t, a));
                }
            }
            let decisions = self.h.schedule();
            for d in decisions {
                if let Decision::Start { job, attempt, .. } = d {
                    self.seen.first_start.entry(job).or_insert(now);
                    self.seen.starts.insert((job, attempt), now);
                    self.ends.insert((now + self.runs[&job], job, attempt));
                    if waiting_closed == Some(job) {
                        waiting_closed = None;
                        next_closed = closed.next().map(|a| (now + self.think_s, a));
                    }
                }
            }
            self.observe_holder(now);
        }
    }

    /// Records the holder's reserved start after a pass, and any move later.
    fn observe_holder(&mut self, now: u64) {
        let Some(holder) = self.h.engine.reservation().job else {
            return;
        };
        let Some(WaitReason::Reserved { start_s }) = self.h.engine.wait_reason(holder) else {
            return;
        };
        let attempt = self.h.engine.job(holder).expect("known").attempt;
        let e = self
            .seen
            .holds
            .entry((holder, attempt))
            .or_insert((now, Vec::new()));
        if let Some(&last) = e.1.last()
            && start_s > last
        {
            let cause = self.h.engine.reservation_slip().map(|s| s.cause);
            self.seen.slips.push((holder, last, start_s, cause));
            self.seen.slip_texts.push(self.h.why(holder));
        }
        e.1.push(start_s);
    }
}

/// A reservation is a promise: its start moved later only with a cause (a job it waits on ran
/// past its planned end, or nodes changed), never unexplained, and the holder's explanation
/// says so; with every job under a limit of at most `limit_s`, a holder starts within
/// 2 × `limit_s` of taking the reservation (its first start is planned by estimates, at most
/// `limit_s` ahead; once that proves wrong it is planned by limits, at most `limit_s` ahead).
fn check_promises(seen: &Seen, limit_s: u64) -> Result<(), TestCaseError> {
    for (job, from, to, cause) in &seen.slips {
        prop_assert!(
            matches!(
                cause,
                Some(SlipCause::Overran { .. } | SlipCause::NodesChanged)
            ),
            "job {job}'s reserved start moved from {from} to {to} with cause {cause:?}"
        );
    }
    for text in &seen.slip_texts {
        prop_assert!(text.contains("later than first planned"), "{text}");
    }
    for (&(job, attempt), (took, _)) in &seen.holds {
        if let Some(&started) = seen.starts.get(&(job, attempt + 1)) {
            prop_assert!(
                started <= took + 2 * limit_s,
                "holder {job} took the reservation at {took} and started at {started}, over the bound 2 × {limit_s}"
            );
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Case {
    nodes: u64,
    crowd_weight: f64,
    crowd_high: bool,
    crowd_every_s: u64,
    crowd_accels: Vec<u64>,
    crowd_limit_s: u64,
    gangs: Vec<(u64, u64)>,
    gang_limit_s: u64,
    think_s: u64,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        2u64..5,
        prop::sample::select(vec![2.0f64, 4.0, 8.0]),
        any::<bool>(),
        5u64..60,
        prop::collection::vec(1u64..5, 1..4),
        60u64..600,
        prop::collection::vec((1u64..4, prop::sample::select(vec![4u64, 8])), 2..5),
        60u64..900,
        0u64..300,
        any::<u64>(),
    )
        .prop_map(
            |(
                nodes,
                crowd_weight,
                crowd_high,
                crowd_every_s,
                crowd_accels,
                crowd_limit_s,
                gangs,
                gang_limit_s,
                think_s,
                seed,
            )| Case {
                nodes,
                crowd_weight,
                crowd_high,
                crowd_every_s,
                crowd_accels,
                crowd_limit_s,
                gangs,
                gang_limit_s,
                think_s,
                seed,
            },
        )
}

/// Runs a case: a crowd tenant of higher weight (and, if drawn, a higher class) submits
/// small jobs faster than the highway runs them; a gang tenant submits gangs one at a time.
fn run_case(c: &Case) -> Driver {
    let mut crowd = TenantSpec::new("crowd", Tier::Anchor);
    crowd.weight = c.crowd_weight;
    crowd.default_priority = if c.crowd_high {
        PriorityClass::High
    } else {
        PriorityClass::Normal
    };
    let cfg = EngineConfig {
        seed: c.seed,
        ..EngineConfig::default()
    };
    let h = Highway::new()
        .site("s", "r", "KR", 100.0)
        .rack("s", "r1", 1000.0, None, c.nodes, "H100", 8)
        .tenant(crowd)
        .tenant(TenantSpec::new("gangs", Tier::Startup))
        .engine_with(cfg);
    // Long enough for every gang to have waited its bound (below) and run.
    let turns = 3 + c.crowd_weight.floor() as u64;
    let horizon_s = 600
        + c.gangs.len() as u64
            * ((2 * turns + 1) * c.crowd_limit_s.max(c.gang_limit_s) + c.think_s);
    let mut open = Vec::new();
    let mut t = 0;
    let mut i = 0usize;
    while t < horizon_s {
        let k = c.crowd_accels[i % c.crowd_accels.len()];
        // Estimates are optimistic (half the limit); run times between a tenth and all of it.
        let runs = c.crowd_limit_s / 10 + (i as u64 * 7919) % (c.crowd_limit_s * 9 / 10 + 1);
        open.push(Arrival {
            at_s: t,
            tenant: "crowd",
            json: format!(
                r#"{{"groups":[{{"accelerators":{k}}}],"runtime_estimate_s":{},"runtime_limit_s":{}}}"#,
                c.crowd_limit_s / 2,
                c.crowd_limit_s
            ),
            runs_s: runs.min(c.crowd_limit_s),
        });
        // Several per arrival: the crowd offers more than the highway holds.
        if i % 3 != 2 {
            t += c.crowd_every_s;
        }
        i += 1;
    }
    let replicas_max = c.nodes;
    let closed = c
        .gangs
        .iter()
        .enumerate()
        .map(|(j, &(r, k))| Arrival {
            at_s: 600 + j as u64 * 97,
            tenant: "gangs",
            json: format!(
                r#"{{"groups":[{{"replicas":{},"accelerators":{k}}}],"runtime_estimate_s":{},"runtime_limit_s":{}}}"#,
                r.min(replicas_max),
                c.gang_limit_s / 2,
                c.gang_limit_s
            ),
            runs_s: c.gang_limit_s * 3 / 4,
        })
        .collect();
    let mut d = Driver::new(h, closed, c.think_s);
    d.run(open, horizon_s);
    d
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The bound of `docs/SCHEDULING.md`: with every job under a runtime limit of at most L,
    /// a gang that is its tenant's first job in line waits at most (2 + Σ (⌊v / w⌋ + 1)) × 2L
    /// over the other tenants with work blocked (weights v; w its own) — here the crowd
    /// alone, weight v against 1: the turn in progress when it arrived, at most ⌊v⌋ + 1
    /// turns of the crowd, and its own, each at most 2L. And every reservation is kept.
    #[test]
    fn a_gang_waits_a_bounded_time_under_a_stream_of_small_jobs(c in case()) {
        let d = run_case(&c);
        let limit = c.crowd_limit_s.max(c.gang_limit_s);
        let turns = 2 + c.crowd_weight.floor() as u64 + 1;
        let bound = turns * 2 * limit;
        let mut gangs = 0;
        for (id, (at, tenant, json)) in &d.seen.submitted {
            if *tenant != "gangs" {
                continue;
            }
            gangs += 1;
            let started = d.seen.first_start.get(id);
            prop_assert!(started.is_some(), "gang {id} ({json}) submitted at {at} never started");
            let wait = started.unwrap() - at;
            prop_assert!(wait <= bound, "gang {id} ({json}) waited {wait} s, over the bound {bound} s");
        }
        prop_assert_eq!(gangs, c.gangs.len());
        check_promises(&d.seen, limit)?;
    }
}

/// The demo highway of `gosok up` (small scale) and its tenants, as `crates/cli/src/up.rs`
/// declares them: an anchor of weight 3 and class `high` with a Hopper guarantee, a startup,
/// a lab and a public agency.
fn demo_highway() -> Harness {
    let mut t = String::from(
        r#"
[[site]]
name = "pohang"
region = "gyeongbuk"
jurisdiction = "KR"
power_budget_mw = 20.0
pue = 1.2

[[site]]
name = "jeonnam"
region = "jeonnam"
jurisdiction = "KR"
power_budget_mw = 20.0
pue = 1.25

[[site]]
name = "ulsan"
region = "ulsan"
jurisdiction = "KR"
power_budget_mw = 8.0
pue = 1.3
"#,
    );
    for (site, rack, model) in [
        ("pohang", "ph-r1", "H100"),
        ("pohang", "ph-r2", "B200"),
        ("jeonnam", "jn-r1", "H200"),
        ("jeonnam", "jn-r2", "RNGD"),
        ("ulsan", "us-r1", "H100"),
        ("ulsan", "us-r2", "RNGD"),
    ] {
        let (cpu, mem, base) = if model == "RNGD" {
            (64, 524_288, 800)
        } else {
            (112, 2_097_152, 1500)
        };
        t.push_str(&format!(
            "\n[[rack]]\nname = \"{rack}\"\nsite = \"{site}\"\npower_cap_kw = 40.0\n\n[[node]]\nname = \"{rack}-n\"\nrack = \"{rack}\"\ncount = 2\ncpu_cores = {cpu}\nmem_mib = {mem}\naccelerator = \"{model}\"\naccelerators = 8\nbase_power_w = {base}\nstate = \"up\"\n"
        ));
    }
    t.push_str(
        r#"
[[tenant]]
name = "hyundai-ai"
tier = "anchor"
weight = 3.0
share_cap = 0.5
default_priority = "high"
allowed_jurisdictions = ["KR"]
quotas = [{ accelerator = "nvidia-hopper", guaranteed = 24, borrow_limit = 24 }]

[[tenant]]
name = "seoul-startup"
tier = "startup"
weight = 1.0
share_cap = 0.25

[[tenant]]
name = "kaist-lab"
tier = "academic"
weight = 1.0
share_cap = 0.25

[[tenant]]
name = "nia-public"
tier = "public"
weight = 1.5
allowed_jurisdictions = ["KR"]
quotas = [{ accelerator = "RNGD", guaranteed = 8, borrow_limit = 8 }]
"#,
    );
    let spec = ClusterSpec::from_toml(&t).expect("the demo highway");
    Highway { spec }.engine()
}

/// The demo workload's waves (`crates/cli/src/up.rs`): every 10 s each tenant submits one
/// job; their real run times are those of the demo's commands.
fn demo_waves(until_s: u64) -> Vec<Arrival> {
    let mut out = Vec::new();
    let mut t = 0;
    while t < until_s {
        out.extend([
            Arrival {
                at_s: t,
                tenant: "hyundai-ai",
                json: r#"{"groups":[{"replicas":2,"accelerators":8,"models":["nvidia-hopper"]}],"runtime_estimate_s":60,"runtime_limit_s":300}"#.into(),
                runs_s: 46,
            },
            Arrival {
                at_s: t,
                tenant: "seoul-startup",
                json: r#"{"name":"gang-check","groups":[{"replicas":2,"accelerators":4,"models":["H100"]}],"runtime_estimate_s":25,"runtime_limit_s":120}"#.into(),
                runs_s: 21,
            },
            Arrival {
                at_s: t,
                tenant: "seoul-startup",
                json: r#"{"groups":[{"replicas":1,"accelerators":2,"models":["B200"]}],"runtime_estimate_s":30,"runtime_limit_s":120}"#.into(),
                runs_s: 26,
            },
            Arrival {
                at_s: t,
                tenant: "kaist-lab",
                json: r#"{"groups":[{"replicas":1,"accelerators":1}],"preemptible":true,"priority":"low","runtime_estimate_s":15,"runtime_limit_s":60}"#.into(),
                runs_s: 2,
            },
            Arrival {
                at_s: t,
                tenant: "nia-public",
                json: r#"{"groups":[{"replicas":1,"accelerators":2,"models":["RNGD"]}],"runtime_estimate_s":20,"runtime_limit_s":60}"#.into(),
                runs_s: 16,
            },
        ]);
        t += 10;
    }
    out
}

/// The demo as a new user met it: the anchor (weight 3, class `high`, guaranteed half of the
/// Hopper GPUs and allowed to borrow the rest) keeps asking for more Hopper GPUs than there
/// are; seoul-startup's 2 × 4 H100 `gang-check` jobs must still run, each reservation must
/// hold, and no gang may wait longer than the bound (2 + Σ (⌊v / w⌋ + 1)) × 2L: weights 3,
/// 1 and 1.5 against the startup's 1, so 2 + 4 + 2 + 2 = 10 turns, and L = 300 s, the
/// longest limit.
#[test]
fn the_demo_tenants_gang_checks_run_while_the_anchor_saturates_hopper() {
    let mut d = Driver::new(demo_highway(), Vec::new(), 0);
    let until = 600;
    d.run(demo_waves(until), until + 3600);
    let gangs: Vec<JobId> = d
        .seen
        .submitted
        .iter()
        .filter(|(_, (_, t, json))| *t == "seoul-startup" && json.contains("gang-check"))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(gangs.len(), 60);
    // The anchor offered about 1.5 × Hopper throughout: it was saturated.
    let anchor_waits: Vec<u64> = d
        .seen
        .submitted
        .iter()
        .filter(|(_, (_, t, _))| *t == "hyundai-ai")
        .filter_map(|(id, (at, _, _))| d.seen.first_start.get(id).map(|s| s - at))
        .collect();
    let first = d.seen.submitted.keys().next().copied().unwrap();
    assert!(
        anchor_waits.iter().any(|&w| w > 60),
        "{anchor_waits:?} {:?} {}",
        d.h.rejection(first),
        d.h.why(first)
    );
    let bound = 10 * 2 * 300;
    let mut by_3_min = 0;
    for id in &gangs {
        let (at, _, _) = d.seen.submitted[id];
        let started = *d
            .seen
            .first_start
            .get(id)
            .unwrap_or_else(|| panic!("gang-check {id} never started"));
        assert!(
            started - at <= bound,
            "gang-check {id} waited {} s",
            started - at
        );
        if at < 180 && d.seen.done.contains(id) && started < 180 {
            by_3_min += 1;
        }
    }
    // Of the 18 submitted in the first 3 minutes, at least a third ran within them (with the
    // reservation taken over by the anchor's class, 1 did, and the others waited for as long
    // as the anchor kept submitting). The rest wait their turns: the startup asks for more
    // H100 time than its share.
    assert!(
        by_3_min >= 6,
        "only {by_3_min} gang-checks started in the first 3 minutes"
    );
    check_promises(&d.seen, 300).unwrap();
    let worst = gangs
        .iter()
        .map(|id| d.seen.first_start[id] - d.seen.submitted[id].0)
        .max();
    eprintln!("demo: {by_3_min} gang-checks ran in the first 3 minutes; longest wait {worst:?} s");
}

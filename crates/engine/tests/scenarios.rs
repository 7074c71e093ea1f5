//! Scenario tests: each rule of the engine, written as an operator or tenant would describe
//! the situation.

mod common;

use common::{Highway, spec};
use gosok_engine::{Decision, EngineConfig, Event, JobId, JobState, WaitReason};
use gosok_model::{NodeState, PriorityClass, QuotaSpec, TenantSpec, Tier};

/// One site, `racks` racks of `nodes` 8×H100 nodes each, ample power.
fn small(racks: usize, nodes: u64) -> Highway {
    let mut h = Highway::new().site("pohang", "gyeongbuk", "KR", 20.0);
    for r in 0..racks {
        h = h.rack("pohang", &format!("ph-r{r}"), 500.0, None, nodes, "H100", 8);
    }
    h
}

#[test]
fn a_gang_starts_whole_or_not_at_all() {
    let mut h = small(1, 2).tenants(&["lab"]).engine();
    let a = h.submit(
        "lab",
        r#"{"groups":[{"replicas":2,"accelerators":4,"models":["H100"]}]}"#,
    );
    let b = h.submit(
        "lab",
        r#"{"groups":[{"replicas":3,"accelerators":4,"models":["H100"]}]}"#,
    );
    h.schedule();
    assert!(h.started(a));
    // 8 devices remain, the 3×4 gang needs 12: nothing of it may start.
    assert_eq!(h.state(b), JobState::Pending);
    let starts: Vec<_> = h
        .log
        .iter()
        .filter(|d| matches!(d, Decision::Start { .. }))
        .collect();
    assert_eq!(starts.len(), 1);
    match starts[0] {
        Decision::Start { tasks, .. } => {
            assert_eq!(tasks.len(), 2);
            assert!(
                tasks
                    .iter()
                    .all(|t| t.devices.len() == 4 && t.milli == 1000)
            );
        }
        _ => unreachable!(),
    }
}

#[test]
fn higher_priority_class_goes_first_whatever_the_age() {
    let mut h = small(1, 1).tenants(&["lab"]).engine();
    let blocker = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"preemptible":false}"#,
    );
    h.schedule();
    let old_low = h.submit("lab", r#"{"groups":[{"accelerators":8}],"priority":"low"}"#);
    h.at(10);
    let new_high = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"priority":"high","preemptible":false}"#,
    );
    h.schedule();
    assert_eq!(h.engine.queue(), vec![new_high, old_low]);
    assert_eq!(h.engine.queue_position(old_low), Some(1));
    assert_eq!(h.engine.explain(new_high).unwrap().position, Some(0));
    h.finish(blocker, 0);
    h.schedule();
    assert!(h.started(new_high));
    assert_eq!(h.state(old_low), JobState::Pending);
}

#[test]
fn fair_share_splits_by_weight_not_by_arrival() {
    let heavy = TenantSpec {
        weight: 2.0,
        ..TenantSpec::new("heavy", Tier::Anchor)
    };
    let light = TenantSpec::new("light", Tier::Startup);
    let mut h = small(1, 6).tenant(heavy).tenant(light).engine();
    // The light tenant submits first; weights still decide the split of six nodes.
    let light_jobs: Vec<_> = (0..6)
        .map(|_| h.submit("light", r#"{"groups":[{"accelerators":8}]}"#))
        .collect();
    h.at(1);
    let heavy_jobs: Vec<_> = (0..6)
        .map(|_| h.submit("heavy", r#"{"groups":[{"accelerators":8}]}"#))
        .collect();
    h.schedule();
    let running =
        |ids: &[JobId], h: &common::Harness| ids.iter().filter(|&&j| h.started(j)).count();
    assert_eq!(running(&heavy_jobs, &h), 4);
    assert_eq!(running(&light_jobs, &h), 2);
}

#[test]
fn fair_share_remembers_recent_usage() {
    let mut h = small(1, 2).tenants(&["a", "b"]).engine();
    // Tenant a used the whole highway for a day; b used nothing.
    let hog: Vec<_> = (0..2)
        .map(|_| h.submit("a", r#"{"groups":[{"accelerators":8}]}"#))
        .collect();
    h.schedule();
    h.at(86_400);
    for j in hog {
        h.finish(j, 0);
    }
    let a = h.submit("a", r#"{"groups":[{"accelerators":8}]}"#);
    h.at(86_401);
    let b = h.submit("b", r#"{"groups":[{"accelerators":8}]}"#);
    assert_eq!(
        h.engine.queue(),
        vec![b, a],
        "b used less recently, so b is first although younger"
    );
}

#[test]
fn a_waiting_gang_says_what_it_needs_and_when_it_starts() {
    let mut h = Highway::new()
        .site("pohang", "gyeongbuk", "KR", 20.0)
        .rack("pohang", "nvl-a1", 500.0, Some("nvl-a"), 4, "H100", 8)
        .rack("pohang", "nvl-a2", 500.0, Some("nvl-a"), 4, "H100", 8)
        .rack("pohang", "nvl-b1", 500.0, Some("nvl-b"), 8, "H100", 8)
        .tenants(&["lab", "anchor"])
        .engine();
    let small_jobs: Vec<_> = (0..16)
        .map(|_| {
            h.submit(
                "lab",
                r#"{"groups":[{"accelerators":1}],"runtime_estimate_s":7800}"#,
            )
        })
        .collect();
    h.schedule();
    assert!(small_jobs.iter().all(|&j| h.started(j)));
    let gang = h.submit(
        "anchor",
        r#"{"groups":[{"replicas":8,"accelerators":8,"models":["H100"]}],"constraints":{"topology":{"level":"scale_up_domain"}}}"#,
    );
    h.schedule();
    let why = h.why(gang);
    assert!(
        why.starts_with("needs 8 × 8 H100 in one scale-up domain; reserved start in 2h10m"),
        "{why}"
    );
    assert_eq!(
        h.engine.explain(gang).unwrap().estimated_start_s,
        Some(7800)
    );
}

#[test]
fn impossible_jobs_are_rejected_at_submit_with_the_constraint_named() {
    let atom = Highway::new()
        .site("pohang", "gyeongbuk", "KR", 20.0)
        .site("frankfurt", "hessen", "DE", 20.0)
        .rack("pohang", "ph-r0", 500.0, None, 4, "H100", 8)
        .rack("pohang", "ph-r1", 500.0, None, 2, "ATOM", 4)
        .rack("frankfurt", "fr-r0", 500.0, None, 2, "H100", 8)
        .tenant(TenantSpec {
            allowed_jurisdictions: vec!["KR".into()],
            ..TenantSpec::new("kr-agency", Tier::Public)
        })
        .tenant(TenantSpec {
            quotas: vec![QuotaSpec {
                accelerator: "H100".into(),
                guaranteed: 8,
                borrow_limit: 8,
            }],
            ..TenantSpec::new("startup", Tier::Startup)
        });
    let mut h = atom.engine();
    let cases = [
        (
            "kr-agency",
            r#"{"groups":[{"accelerators":1,"models":["X9000"]}]}"#,
            "groups[0].models[0]",
        ),
        (
            "kr-agency",
            r#"{"groups":[{"accelerator_milli":500,"models":["ATOM"]}]}"#,
            "groups[0].accelerator_milli",
        ),
        (
            "kr-agency",
            r#"{"groups":[{"replicas":5,"accelerators":8,"models":["H100"]}]}"#,
            "topology: 5 × 8 H100 can never run: the allowed sites have room for 4",
        ),
        (
            "kr-agency",
            r#"{"groups":[{"replicas":3,"accelerators":4,"models":["ATOM"]}],"constraints":{"topology":{"level":"rack"}}}"#,
            "room for 2 such replicas in one rack",
        ),
        (
            "kr-agency",
            r#"{"groups":[{"accelerators":1}],"constraints":{"sites":["frankfurt"]}}"#,
            "tenant's allowed jurisdictions",
        ),
        (
            "kr-agency",
            r#"{"groups":[{"accelerators":1}],"constraints":{"sites":["pohang"],"jurisdictions":["DE"]}}"#,
            "no site matches",
        ),
        (
            "kr-agency",
            r#"{"groups":[{"accelerators":1}],"constraints":{"sites":["busan"]}}"#,
            "constraints.sites[0]",
        ),
        (
            "kr-agency",
            r#"{"groups":[{"accelerators":1,"min_hbm_gib":500}]}"#,
            "groups[0].min_hbm_gib",
        ),
        (
            "startup",
            r#"{"groups":[{"replicas":3,"accelerators":8,"models":["H100"]}]}"#,
            "quota plus borrowing limit",
        ),
        (
            "startup",
            r#"{"groups":[{"replicas":2,"accelerators":8,"models":["H100"]}],"preemptible":false}"#,
            "non-preemptible jobs may not borrow",
        ),
        ("nobody", r#"{"groups":[{"accelerators":1}]}"#, "tenant"),
        (
            "kr-agency",
            r#"{"groups":[{"accelerators":9}]}"#,
            "can never run",
        ),
    ];
    for (tenant, json, expect) in cases {
        let id = h.submit(tenant, json);
        assert_eq!(h.state(id), JobState::Rejected, "{json}");
        let reason = h.rejection(id).unwrap();
        assert!(reason.contains(expect), "{json}: {reason}");
    }
}

#[test]
fn a_job_that_fits_only_on_down_nodes_waits_and_says_so() {
    let mut h = small(2, 2).tenants(&["lab"]).engine();
    for n in ["ph-r0-000", "ph-r0-001"] {
        h.apply(Event::NodeState {
            node: n.into(),
            state: NodeState::Down,
        });
    }
    h.apply(Event::NodeState {
        node: "ph-r1-000".into(),
        state: NodeState::Draining,
    });
    let id = h.submit("lab", r#"{"groups":[{"replicas":2,"accelerators":8}],"constraints":{"topology":{"level":"rack"}}}"#);
    h.schedule();
    assert_eq!(h.state(id), JobState::Pending);
    assert_eq!(
        h.engine.wait_reason(id).unwrap(),
        WaitReason::NodesUnavailable
    );
    assert!(h.why(id).contains("down or draining"), "{}", h.why(id));
    for n in ["ph-r0-000", "ph-r0-001"] {
        h.apply(Event::NodeState {
            node: n.into(),
            state: NodeState::Up,
        });
    }
    h.schedule();
    assert!(h.started(id));
    assert!(h.nodes_of(id).iter().all(|n| n.starts_with("ph-r0")));
}

#[test]
fn an_anchor_tenant_stops_at_its_share_cap() {
    let anchor = TenantSpec {
        share_cap: 0.5,
        ..TenantSpec::new("anchor", Tier::Anchor)
    };
    let mut h = small(1, 4).tenant(anchor).tenants(&["uni"]).engine();
    let jobs: Vec<_> = (0..3)
        .map(|_| h.submit("anchor", r#"{"groups":[{"accelerators":8}]}"#))
        .collect();
    h.schedule();
    assert!(h.started(jobs[0]) && h.started(jobs[1]));
    assert_eq!(h.engine.wait_reason(jobs[2]).unwrap(), WaitReason::ShareCap);
    assert!(h.why(jobs[2]).contains("tenant at its share cap"));
    // The rest of the highway stays open to others.
    let uni = h.submit("uni", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    assert!(h.started(uni));
}

#[test]
fn quotas_guarantee_and_borrowing_limit() {
    let t = TenantSpec {
        quotas: vec![QuotaSpec {
            accelerator: "nvidia-hopper".into(),
            guaranteed: 8,
            borrow_limit: 8,
        }],
        ..TenantSpec::new("startup", Tier::Startup)
    };
    let mut h = small(1, 4).tenant(t).engine();
    let a = h.submit(
        "startup",
        r#"{"groups":[{"accelerators":8}],"preemptible":false}"#,
    );
    let b = h.submit(
        "startup",
        r#"{"groups":[{"accelerators":8}],"preemptible":false}"#,
    );
    let c = h.submit("startup", r#"{"groups":[{"accelerators":8}]}"#);
    let d = h.submit("startup", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    assert!(h.started(a));
    assert_eq!(
        h.engine.wait_reason(b).unwrap(),
        WaitReason::GuaranteeUsed,
        "a non-preemptible job may not borrow"
    );
    assert!(h.started(c), "a preemptible job borrows");
    assert_eq!(h.engine.wait_reason(d).unwrap(), WaitReason::Quota);
}

#[test]
fn power_caps_hold_and_say_which_cap_blocks() {
    // Each 8×H100 node draws 1 kW base + 8 × 630 W = 6.04 kW; the rack cap fits one.
    let mut h = Highway::new()
        .site("pohang", "gyeongbuk", "KR", 20.0)
        .rack("pohang", "ph-r0", 7.0, None, 2, "H100", 8)
        .tenants(&["lab"])
        .engine();
    let a = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    let b = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    assert!(h.started(a));
    assert_eq!(
        h.engine.wait_reason(b).unwrap(),
        WaitReason::Resources {
            blocker: gosok_engine::Blocker::RackPower
        }
    );
    assert!(h.why(b).contains("rack power cap"));
    h.engine.power_within_caps().unwrap();
}

#[test]
fn a_grid_curtailment_sheds_lowest_priority_first_and_reports_it() {
    let mut h = small(1, 4).tenants(&["lab"]).engine();
    let critical = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"priority":"critical","preemptible":false}"#,
    );
    let low_old = h.submit("lab", r#"{"groups":[{"accelerators":8}],"priority":"low"}"#);
    h.schedule();
    h.at(100);
    let low_new = h.submit("lab", r#"{"groups":[{"accelerators":8}],"priority":"low"}"#);
    let normal = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    assert!(
        [critical, low_old, low_new, normal]
            .iter()
            .all(|&j| h.started(j))
    );
    // Four nodes draw 4 × 6.04 kW × PUE 1.25 = 30.2 kW; the grid asks for 16 kW.
    let d = h.apply(Event::SitePowerBudget {
        site: "pohang".into(),
        power_budget_mw: 0.016,
    });
    let shed = d.iter().find_map(|d| match d {
        Decision::Shed {
            jobs,
            still_over,
            draw_after_w,
            budget_w,
            ..
        } => Some((jobs.clone(), *still_over, *draw_after_w, *budget_w)),
        _ => None,
    });
    let (jobs, still_over, after, budget) = shed.expect("a shed report");
    // Low priority goes first, the most recently started (least work lost) before the older.
    assert_eq!(jobs, vec![low_new, low_old]);
    assert!(!still_over && after <= budget);
    assert!(h.started(critical) && h.started(normal));
    h.engine.power_within_caps().unwrap();
    // Shed work does not come straight back.
    h.schedule();
    assert_eq!(h.state(low_new), JobState::Pending);
    assert!(
        h.why(low_new).contains("site power budget"),
        "{}",
        h.why(low_new)
    );
}

#[test]
fn curtailment_below_non_preemptible_load_reports_still_over() {
    let mut h = small(1, 1).tenants(&["lab"]).engine();
    h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"preemptible":false}"#,
    );
    h.schedule();
    let d = h.apply(Event::SitePowerBudget {
        site: "pohang".into(),
        power_budget_mw: 0.001,
    });
    assert!(d.iter().any(|d| matches!(
        d,
        Decision::Shed {
            still_over: true,
            ..
        }
    )));
}

#[test]
fn backfill_uses_reserved_capacity_only_when_it_ends_in_time() {
    let mut h = small(1, 2).tenants(&["lab", "anchor"]).engine();
    let long = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"runtime_estimate_s":1000}"#,
    );
    let half = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":4}],"runtime_estimate_s":500}"#,
    );
    h.schedule();
    assert!(h.started(long) && h.started(half));
    // The gang needs both nodes: it reserves them for t = 1000.
    let gang = h.submit("anchor", r#"{"groups":[{"replicas":2,"accelerators":8}]}"#);
    h.schedule();
    assert_eq!(
        h.engine.wait_reason(gang).unwrap(),
        WaitReason::Reserved { start_s: 1000 }
    );
    h.at(10);
    let too_long = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":4}],"runtime_estimate_s":2000}"#,
    );
    let fits = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":4}],"runtime_estimate_s":900}"#,
    );
    h.schedule();
    assert!(h.started(fits), "{}", h.why(fits));
    assert_eq!(h.state(too_long), JobState::Pending);
    assert!(
        h.why(too_long).contains("reserved for an earlier job"),
        "{}",
        h.why(too_long)
    );
}

#[test]
fn a_64_node_gang_starts_despite_a_steady_stream_of_small_jobs() {
    // 72 nodes × 8 H100; a stream of 1-GPU jobs (1 h each) keeps arriving every 60 s.
    let mut h = small(9, 8).tenants(&["anchor", "crowd"]).engine();
    let mut t = 0;
    for _ in 0..576 {
        h.submit(
            "crowd",
            r#"{"groups":[{"accelerators":1}],"runtime_estimate_s":3600}"#,
        );
    }
    h.schedule();
    let gang = h.submit(
        "anchor",
        r#"{"groups":[{"replicas":64,"accelerators":8}],"runtime_estimate_s":7200}"#,
    );
    let mut started_at = None;
    while t < 4 * 3600 {
        t += 60;
        h.at(t);
        for _ in 0..8 {
            h.submit(
                "crowd",
                r#"{"groups":[{"accelerators":1}],"runtime_estimate_s":3600}"#,
            );
        }
        // Jobs end when their hour is up.
        let ending: Vec<JobId> = h
            .engine
            .jobs()
            .filter(|j| j.state == JobState::Running && j.started_s + 3600 <= t && j.id != gang)
            .map(|j| j.id)
            .collect();
        for j in ending {
            h.finish(j, 0);
        }
        h.schedule();
        if h.started(gang) {
            started_at = Some(t);
            break;
        }
    }
    let started_at = started_at.expect("the 64-node gang starved");
    assert!(started_at <= 3600 + 120, "started only at {started_at} s");
    assert_eq!(h.nodes_of(gang).len(), 64);
}

#[test]
fn a_higher_priority_job_preempts_the_cheapest_victims() {
    let mut h = small(1, 2).tenants(&["lab"]).engine();
    let old = h.submit("lab", r#"{"groups":[{"accelerators":8}],"priority":"low"}"#);
    h.schedule();
    h.at(3600);
    let young = h.submit("lab", r#"{"groups":[{"accelerators":8}],"priority":"low"}"#);
    h.schedule();
    h.at(3700);
    let urgent = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"priority":"high"}"#,
    );
    h.schedule();
    assert!(h.started(urgent));
    assert!(h.started(old), "the job with an hour of work keeps running");
    assert_eq!(h.state(young), JobState::Pending);
    assert_eq!(
        h.preemptions(),
        vec![(young, format!("Priority {{ by: JobId({}) }}", urgent.0))]
    );
}

#[test]
fn non_preemptible_and_equal_priority_work_is_never_preempted() {
    let mut h = small(1, 1).tenants(&["a", "b"]).engine();
    let a = h.submit(
        "a",
        r#"{"groups":[{"accelerators":8}],"priority":"low","preemptible":false}"#,
    );
    h.schedule();
    let b = h.submit(
        "b",
        r#"{"groups":[{"accelerators":8}],"priority":"critical"}"#,
    );
    let c = h.submit("b", r#"{"groups":[{"accelerators":8}],"priority":"low"}"#);
    for t in 1..50 {
        h.at(t);
        h.schedule();
    }
    assert!(h.started(a));
    assert_eq!(
        (h.state(b), h.state(c)),
        (JobState::Pending, JobState::Pending)
    );
    assert!(h.preemptions().is_empty());
}

#[test]
fn a_tenant_below_its_guarantee_reclaims_borrowed_capacity_without_ping_pong() {
    let guaranteed = |n: &str| TenantSpec {
        quotas: vec![QuotaSpec {
            accelerator: "H100".into(),
            guaranteed: 8,
            borrow_limit: 8,
        }],
        ..TenantSpec::new(n, Tier::Academic)
    };
    let mut h = small(1, 2)
        .tenant(guaranteed("a"))
        .tenant(guaranteed("b"))
        .engine();
    // a borrows b's idle half.
    let a1 = h.submit("a", r#"{"groups":[{"accelerators":8}]}"#);
    let a2 = h.submit("a", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    assert!(h.started(a1) && h.started(a2));
    h.at(100);
    let b1 = h.submit("b", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    assert!(h.started(b1), "b takes its guarantee back");
    let pre = h.preemptions();
    assert_eq!(pre.len(), 1);
    assert!(pre[0].1.starts_with("Reclaim"));
    // Many passes later nobody has preempted anybody else: a's requeued job waits.
    for t in 101..400 {
        h.at(t);
        h.schedule();
    }
    assert_eq!(h.preemptions().len(), 1);
    let requeued = pre[0].0;
    assert_eq!(h.state(requeued), JobState::Pending);
}

#[test]
fn priority_preemption_chains_end() {
    // Three classes, each preempting the one below it once: no job is preempted twice.
    let mut h = small(1, 1).tenants(&["lab"]).engine();
    let low = h.submit("lab", r#"{"groups":[{"accelerators":8}],"priority":"low"}"#);
    h.schedule();
    let normal = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    let high = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"priority":"high"}"#,
    );
    for t in 1..100 {
        h.at(t);
        h.schedule();
    }
    assert!(h.started(high));
    assert_eq!(
        h.preemptions().iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![low, normal]
    );
}

#[test]
fn a_lost_node_requeues_the_gang_and_releases_its_other_tasks() {
    let mut h = small(1, 3).tenants(&["lab"]).engine();
    let gang = h.submit(
        "lab",
        r#"{"groups":[{"replicas":2,"accelerators":8}],"max_retries":1}"#,
    );
    h.schedule();
    let nodes = h.nodes_of(gang);
    let d = h.apply(Event::NodeState {
        node: nodes[0].clone(),
        state: NodeState::Down,
    });
    assert!(
        matches!(&d[..], [Decision::Requeue { retry: 1, .. }]),
        "{d:?}"
    );
    assert_eq!(h.state(gang), JobState::Pending);
    h.schedule();
    assert!(h.started(gang), "it runs again on the two nodes left");
    assert!(!h.nodes_of(gang).contains(&nodes[0]));
    // Losing a node a second time exceeds max_retries = 1.
    let again = h.nodes_of(gang);
    let d = h.apply(Event::NodeState {
        node: again[1].clone(),
        state: NodeState::Down,
    });
    assert!(
        d.iter().any(|d| matches!(
            d,
            Decision::Finish {
                state: JobState::Failed,
                ..
            }
        )),
        "{d:?}"
    );
}

#[test]
fn a_failing_member_fails_the_gang_and_stops_the_rest() {
    let mut h = small(1, 2).tenants(&["lab"]).engine();
    let gang = h.submit("lab", r#"{"groups":[{"replicas":2,"accelerators":8}]}"#);
    h.schedule();
    let d = h.apply(Event::TaskEnded {
        id: gang,
        attempt: 1,
        task: 1,
        exit_code: 137,
    });
    assert!(matches!(&d[0], Decision::Stop { .. }));
    assert!(
        matches!(&d[1], Decision::Finish { state: JobState::Failed, reason, .. } if reason.contains("137"))
    );
}

#[test]
fn a_job_past_its_runtime_limit_is_stopped() {
    let mut h = small(1, 1).tenants(&["lab"]).engine();
    let j = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"runtime_limit_s":60}"#,
    );
    h.schedule();
    // Running exactly its limit is allowed; a second more is not.
    assert!(h.at(60).is_empty());
    let d = h.at(61);
    assert!(
        matches!(
            &d[..],
            [
                Decision::Stop { .. },
                Decision::Finish {
                    state: JobState::TimedOut,
                    ..
                }
            ]
        ),
        "{d:?}"
    );
    assert_eq!(h.state(j), JobState::TimedOut);
}

#[test]
fn reports_from_an_earlier_attempt_are_refused() {
    let mut h = small(1, 2).tenants(&["lab"]).engine();
    let j = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    let node = h.nodes_of(j)[0].clone();
    h.apply(Event::NodeState {
        node,
        state: NodeState::Down,
    });
    h.schedule();
    assert_eq!(h.engine.job(j).unwrap().attempt, 2);
    let e = h
        .engine
        .apply(Event::TaskEnded {
            id: j,
            attempt: 1,
            task: 0,
            exit_code: 0,
        })
        .unwrap_err();
    assert!(e.to_string().contains("stale"), "{e}");
    assert!(h.started(j));
}

#[test]
fn fractions_share_one_device_and_whole_jobs_keep_whole_devices() {
    let mut h = Highway::new()
        .site("pohang", "gyeongbuk", "KR", 20.0)
        .rack("pohang", "ph-r0", 500.0, None, 1, "H100", 2)
        .tenants(&["lab"])
        .engine();
    let f1 = h.submit("lab", r#"{"groups":[{"accelerator_milli":500}]}"#);
    let f2 = h.submit("lab", r#"{"groups":[{"accelerator_milli":500}]}"#);
    let w = h.submit("lab", r#"{"groups":[{"accelerators":1}]}"#);
    h.schedule();
    assert!(h.started(f1) && h.started(f2) && h.started(w));
    let dev = |j| match h
        .log
        .iter()
        .find(|d| matches!(d, Decision::Start { job, .. } if *job == j))
    {
        Some(Decision::Start { tasks, .. }) => tasks[0].devices.clone(),
        _ => unreachable!(),
    };
    assert_eq!(dev(f1), dev(f2), "two halves share one device");
    assert_ne!(dev(w), dev(f1));
}

#[test]
fn required_topology_keeps_a_gang_in_one_domain() {
    let mut h = Highway::new()
        .site("pohang", "gyeongbuk", "KR", 20.0)
        .rack("pohang", "r0", 500.0, Some("nvl0"), 3, "H100", 8)
        .rack("pohang", "r1", 500.0, Some("nvl1"), 3, "H100", 8)
        .tenants(&["lab"])
        .engine();
    // Take one node in each domain so that 3 free nodes exist but not 3 in one domain... then
    // free one.
    let a = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"constraints":{"sites":["pohang"]}}"#,
    );
    let b = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    let gang = h.submit("lab", r#"{"groups":[{"replicas":3,"accelerators":8}],"constraints":{"topology":{"level":"scale_up_domain"}}}"#);
    h.schedule();
    let a_dom = h.nodes_of(a)[0].starts_with("r0");
    let b_dom = h.nodes_of(b)[0].starts_with("r0");
    if a_dom != b_dom {
        assert_eq!(
            h.state(gang),
            JobState::Pending,
            "4 nodes are free, but only 2 per domain"
        );
        h.finish(a, 0);
        h.schedule();
    }
    assert!(h.started(gang));
    let nodes = h.nodes_of(gang);
    assert!(nodes.iter().all(|n| n[..2] == nodes[0][..2]), "{nodes:?}");
}

#[test]
fn the_same_events_give_the_same_decisions_byte_for_byte() {
    let run = || {
        let mut h = small(3, 4)
            .tenants(&["a", "b", "c"])
            .engine_with(EngineConfig {
                seed: 7,
                ..EngineConfig::default()
            });
        for i in 0..60u64 {
            let tenant = ["a", "b", "c"][(i % 3) as usize];
            let json = match i % 5 {
                0 => r#"{"groups":[{"replicas":2,"accelerators":8}],"runtime_estimate_s":500}"#,
                1 => r#"{"groups":[{"accelerator_milli":250}]}"#,
                2 => r#"{"groups":[{"accelerators":2}],"priority":"high"}"#,
                3 => r#"{"groups":[{"accelerators":4}],"runtime_limit_s":300}"#,
                _ => r#"{"groups":[{"accelerators":1}],"priority":"low"}"#,
            };
            h.at(i * 10);
            h.submit(tenant, json);
            if i % 7 == 0 {
                h.apply(Event::NodeState {
                    node: format!("ph-r{}-00{}", i % 3, i % 4),
                    state: NodeState::Down,
                });
            }
            h.schedule();
        }
        serde_json::to_string(&h.log).unwrap()
    };
    assert_eq!(run(), run());
}

#[test]
fn cancel_stops_running_work_and_dequeues_pending_work() {
    let mut h = small(1, 1).tenants(&["lab"]).engine();
    let a = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    let b = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    let d = h.apply(Event::Cancel { id: a });
    assert!(matches!(
        &d[..],
        [
            Decision::Stop { .. },
            Decision::Finish {
                state: JobState::Cancelled,
                ..
            }
        ]
    ));
    h.apply(Event::Cancel { id: b });
    assert_eq!(h.state(b), JobState::Cancelled);
    assert_eq!(h.engine.pending_count(), 0);
    let _ = spec;
    let _ = PriorityClass::Low;
}

#[test]
fn a_gang_waiting_for_power_is_not_starved_by_small_jobs_taking_every_freed_watt() {
    // Eight 8×H100 nodes, but the site's budget feeds only about four at full draw.
    let mut h = Highway::new()
        .site("pohang", "gyeongbuk", "KR", 0.0302)
        .rack("pohang", "ph-r0", 500.0, None, 8, "H100", 8)
        .tenants(&["anchor", "crowd"])
        .engine();
    // Small jobs run 30 to 90 minutes, so watts free up one job at a time.
    let small = r#"{"groups":[{"accelerators":1}],"runtime_estimate_s":5400}"#;
    let runtime = |id: JobId| 1800 + (id.0 * 797) % 3600;
    for _ in 0..40 {
        h.submit("crowd", small);
    }
    h.schedule();
    let gang = h.submit("anchor", r#"{"groups":[{"replicas":3,"accelerators":8}]}"#);
    h.schedule();
    assert_eq!(h.state(gang), JobState::Pending);
    assert!(h.why(gang).contains("site power budget"), "{}", h.why(gang));
    let mut t = 0;
    while !h.started(gang) && t < 4 * 3600 {
        t += 60;
        h.at(t);
        for _ in 0..2 {
            h.submit("crowd", small);
        }
        let ending: Vec<JobId> = h
            .engine
            .jobs()
            .filter(|j| {
                j.state == JobState::Running && j.started_s + runtime(j.id) <= t && j.id != gang
            })
            .map(|j| j.id)
            .collect();
        for j in ending {
            h.finish(j, 0);
        }
        h.schedule();
        h.engine.power_within_caps().unwrap();
    }
    assert!(h.started(gang), "the gang starved for power");
    assert!(t <= 5400 + 60, "started only at {t} s");
}

fn policy(p: gosok_engine::QueuePolicy, hol: bool, preempt: bool) -> EngineConfig {
    EngineConfig {
        queue_policy: p,
        head_of_line_blocking: hol,
        backfill: false,
        max_preemption_attempts_per_pass: if preempt { 1000 } else { 0 },
        ..EngineConfig::default()
    }
}

#[test]
fn fifo_with_head_of_line_blocking_lets_nothing_pass_the_first_in_line() {
    let cfg = policy(gosok_engine::QueuePolicy::Fifo, true, false);
    let mut h = small(1, 2).tenants(&["vc"]).engine_with(cfg);
    let running = h.submit("vc", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    let big = h.submit("vc", r#"{"groups":[{"replicas":2,"accelerators":8}]}"#);
    let little = h.submit("vc", r#"{"groups":[{"accelerators":1}]}"#);
    h.schedule();
    assert!(h.started(running));
    assert_eq!(
        (h.state(big), h.state(little)),
        (JobState::Pending, JobState::Pending)
    );
    // Without head-of-line blocking the little one would have gone.
    let mut h = small(1, 2).tenants(&["vc"]).engine_with(policy(
        gosok_engine::QueuePolicy::Fifo,
        false,
        false,
    ));
    h.submit("vc", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    h.submit("vc", r#"{"groups":[{"replicas":2,"accelerators":8}]}"#);
    let little = h.submit("vc", r#"{"groups":[{"accelerators":1}]}"#);
    h.schedule();
    assert!(h.started(little));
}

#[test]
fn sjf_starts_the_shortest_estimate_first() {
    let cfg = policy(gosok_engine::QueuePolicy::ShortestFirst, true, false);
    let mut h = small(1, 1).tenants(&["vc"]).engine_with(cfg);
    let blocker = h.submit(
        "vc",
        r#"{"groups":[{"accelerators":8}],"runtime_estimate_s":10}"#,
    );
    h.schedule();
    let long = h.submit(
        "vc",
        r#"{"groups":[{"accelerators":8}],"runtime_estimate_s":5000}"#,
    );
    let short = h.submit(
        "vc",
        r#"{"groups":[{"accelerators":8}],"runtime_estimate_s":50}"#,
    );
    assert_eq!(h.engine.queue(), vec![short, long]);
    h.at(10);
    h.finish(blocker, 0);
    h.schedule();
    assert!(h.started(short) && !h.started(long));
}

#[test]
fn srtf_preempts_the_longest_remaining_and_charges_it_the_checkpoint_overhead() {
    let cfg = policy(
        gosok_engine::QueuePolicy::ShortestRemainingFirst {
            overhead_s: [7, 30, 60],
        },
        false,
        true,
    );
    let mut h = small(1, 1).tenants(&["vc"]).engine_with(cfg);
    let long = h.submit(
        "vc",
        r#"{"groups":[{"accelerators":8}],"runtime_estimate_s":1000}"#,
    );
    h.schedule();
    h.at(100);
    let short = h.submit(
        "vc",
        r#"{"groups":[{"accelerators":8}],"runtime_estimate_s":200}"#,
    );
    h.schedule();
    assert!(h.started(short));
    assert_eq!(
        h.preemptions(),
        vec![(
            long,
            format!("ShorterRemaining {{ by: JobId({}) }}", short.0)
        )]
    );
    // 900 s left plus 30 s to checkpoint and restart an 8-accelerator job.
    assert_eq!(h.engine.job(long).unwrap().remaining_s(100, 0), 930);
    // The preempted job never preempts back: its remaining time only grew.
    for t in (110..400).step_by(10) {
        h.at(t);
        h.schedule();
    }
    assert_eq!(h.preemptions().len(), 1);
    h.at(400);
    h.finish(short, 0);
    h.schedule();
    assert!(h.started(long));
}

#[test]
fn without_backfill_nothing_is_reserved() {
    let cfg = EngineConfig {
        backfill: false,
        ..EngineConfig::default()
    };
    let mut h = small(1, 2).tenants(&["lab", "anchor"]).engine_with(cfg);
    h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"runtime_estimate_s":1000}"#,
    );
    h.schedule();
    let gang = h.submit("anchor", r#"{"groups":[{"replicas":2,"accelerators":8}]}"#);
    h.schedule();
    assert_eq!(h.engine.reservation().job, None);
    assert!(!h.why(gang).contains("reserved"), "{}", h.why(gang));
}

#[test]
fn extreme_times_and_bad_references_are_errors_not_panics() {
    let mut h = small(1, 1).tenants(&["lab"]).engine();
    let j = h.submit("lab", r#"{"groups":[{"accelerators":8}],"runtime_estimate_s":31622400,"runtime_limit_s":31622400}"#);
    h.schedule();
    h.at(u64::MAX - 1);
    h.schedule();
    assert_eq!(h.state(j), JobState::TimedOut, "it outran its limit");
    assert!(h.engine.apply(Event::AdvanceTime { now_s: 5 }).is_err());
    assert!(h.engine.apply(Event::Cancel { id: JobId(999) }).is_err());
    assert!(
        h.engine
            .apply(Event::NodeState {
                node: "nope".into(),
                state: NodeState::Up
            })
            .is_err()
    );
    assert!(
        h.engine
            .apply(Event::SitePowerBudget {
                site: "pohang".into(),
                power_budget_mw: f64::NAN
            })
            .is_err()
    );
    assert!(
        h.engine
            .apply(Event::SitePowerBudget {
                site: "pohang".into(),
                power_budget_mw: -3.0
            })
            .is_err()
    );
    assert!(
        h.engine
            .apply(Event::TaskEnded {
                id: j,
                attempt: 1,
                task: 7,
                exit_code: 0
            })
            .is_err()
    );
    let dup = h.engine.apply(Event::Submit {
        id: j,
        tenant: "lab".into(),
        spec: spec(r#"{"groups":[{"accelerators":1}]}"#),
    });
    assert!(dup.is_err());
    h.engine.check_invariants().unwrap();
}

#[test]
fn scorers_are_policies_bestfit_packs_and_power_spreads() {
    let two_racks = |scorers: Vec<(String, f64)>| {
        let cfg = EngineConfig {
            scorers,
            ..EngineConfig::default()
        };
        let mut h = Highway::new()
            .site("pohang", "gyeongbuk", "KR", 20.0)
            .rack("pohang", "r0", 100.0, None, 2, "H100", 8)
            .rack("pohang", "r1", 100.0, None, 2, "H100", 8)
            .tenants(&["lab"])
            .engine_with(cfg);
        let jobs: Vec<JobId> = (0..4)
            .map(|_| h.submit("lab", r#"{"groups":[{"accelerators":2}]}"#))
            .collect();
        h.schedule();
        let nodes: std::collections::BTreeSet<String> =
            jobs.iter().flat_map(|&j| h.nodes_of(j)).collect();
        nodes
    };
    // Best fit puts four 2-accelerator jobs on one node; power headroom spreads them.
    assert_eq!(two_racks(vec![("bestfit".into(), 1.0)]).len(), 1);
    let spread = two_racks(vec![("power".into(), 1.0)]);
    assert!(
        spread.iter().any(|n| n.starts_with("r0")) && spread.iter().any(|n| n.starts_with("r1")),
        "{spread:?}"
    );
    // An unknown scorer is a configuration error naming it.
    let bad = gosok_engine::Engine::new(
        gosok_model::Catalog::builtin(),
        &small(1, 1).spec,
        EngineConfig {
            scorers: vec![("magic".into(), 1.0)],
            ..EngineConfig::default()
        },
    );
    assert!(bad.err().unwrap().to_string().contains("magic"));
}

#[test]
fn a_reclaiming_tenant_is_not_turned_away_by_another_tenants_failure_of_the_same_shape() {
    let quota = |borrow| {
        vec![QuotaSpec {
            accelerator: "H100".into(),
            guaranteed: 8,
            borrow_limit: borrow,
        }]
    };
    let a = TenantSpec {
        quotas: quota(8),
        ..TenantSpec::new("a", Tier::Academic)
    };
    // b weighs so much that its jobs come first in line.
    let b = TenantSpec {
        quotas: quota(16),
        weight: 1000.0,
        ..TenantSpec::new("b", Tier::Anchor)
    };
    let mut h = small(1, 2).tenant(a).tenant(b).engine();
    // a used the highway yesterday, so it is not first in line today.
    let early = h.submit("a", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    h.at(86_400);
    h.finish(early, 0);
    let b_jobs: Vec<_> = (0..2)
        .map(|_| h.submit("b", r#"{"groups":[{"accelerators":8}]}"#))
        .collect();
    h.schedule();
    assert!(
        b_jobs.iter().all(|&j| h.started(j)),
        "b borrows a's idle half"
    );
    h.at(86_500);
    let b3 = h.submit("b", r#"{"groups":[{"accelerators":8}]}"#);
    let a1 = h.submit("a", r#"{"groups":[{"accelerators":8}]}"#);
    assert_eq!(h.engine.queue(), vec![b3, a1]);
    h.schedule();
    assert!(h.started(a1), "a reclaims its guarantee: {}", h.why(a1));
    assert_eq!(h.state(b3), JobState::Pending);
}

#[test]
fn a_node_that_joins_in_place_takes_work_and_running_jobs_stay() {
    let mut h = small(1, 1).tenants(&["lab"]).engine();
    let running = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    let waiting = h.submit("lab", r#"{"groups":[{"accelerators":16}]}"#);
    h.schedule();
    assert!(h.started(running));
    // 16 devices on one node: more than any node had, so it could not run anywhere.
    assert!(h.rejection(waiting).is_some());
    let big = h.submit(
        "lab",
        r#"{"groups":[{"replicas":2,"accelerators":4,"models":["H100"]}]}"#,
    );
    h.schedule();
    assert_eq!(h.state(big), JobState::Pending);
    let node: gosok_model::NodeSpec = serde_json::from_value(serde_json::json!({
        "name": "ph-r0-new", "rack": "ph-r0", "cpu_cores": 112, "mem_mib": 2097152,
        "accelerator": "H100", "accelerators": 16, "state": "up",
    }))
    .unwrap();
    let d = h.apply(Event::AddNode { node: node.clone() });
    assert!(d.is_empty(), "{d:?}");
    // The same node twice, or in an unknown rack, is refused.
    assert!(
        h.engine
            .apply(Event::AddNode { node: node.clone() })
            .is_err()
    );
    let mut elsewhere = node.clone();
    elsewhere.name = "x".into();
    elsewhere.rack = "nope".into();
    assert!(h.engine.apply(Event::AddNode { node: elsewhere }).is_err());
    h.schedule();
    assert!(h.started(big));
    assert_eq!(h.nodes_of(big), ["ph-r0-new", "ph-r0-new"]);
    assert_eq!(h.state(running), JobState::Running);
    let sixteen = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    assert!(h.started(sixteen));
    h.engine.check_invariants().unwrap();
}

#[test]
fn a_gang_that_continues_after_a_task_fails_ends_when_its_last_task_does() {
    let mut h = small(1, 2).tenants(&["lab"]).engine();
    let sweep = h.submit(
        "lab",
        r#"{"groups":[{"replicas":2,"accelerators":8}],"on_task_failure":"continue"}"#,
    );
    let gang = h.submit("lab", r#"{"groups":[{"replicas":2,"accelerators":4}]}"#);
    h.schedule();
    assert!(h.started(sweep));
    let attempt = h.engine.job(sweep).unwrap().attempt;
    let d = h.apply(Event::TaskEnded {
        id: sweep,
        attempt,
        task: 0,
        exit_code: 1,
    });
    // The other task runs on; the failed one's node is free at once.
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(h.state(sweep), JobState::Running);
    h.schedule();
    assert!(h.started(gang));
    let d = h.apply(Event::TaskEnded {
        id: sweep,
        attempt,
        task: 1,
        exit_code: 0,
    });
    assert!(
        d.iter().any(
            |d| matches!(d, Decision::Finish { state: JobState::Failed, reason, .. }
            if reason.contains("task 0 exited with status 1"))
        ),
        "{d:?}"
    );
    assert_eq!(h.state(sweep), JobState::Failed);
    h.engine.check_invariants().unwrap();
}

const EIGHT: &str = r#"{"groups":[{"accelerators":8}],"preemptible":true}"#;

#[test]
fn las_a_new_job_preempts_its_tenants_job_with_more_attained_service_after_its_minimum_run() {
    // The default ladder: the first level ends at 3,600 accelerator-seconds; 600 s minimum.
    let mut h = small(1, 1).tenants(&["vc"]).engine();
    let long = h.submit("vc", EIGHT);
    h.schedule();
    assert!(h.started(long));
    // 2,400 accelerator-seconds: still on the first level, as the newcomer is.
    h.at(300);
    let new1 = h.submit("vc", EIGHT);
    h.schedule();
    // 4,000: on the second level, but it has run only 500 s.
    h.at(500);
    h.schedule();
    assert!(h.preemptions().is_empty() && !h.started(new1));
    h.at(600);
    h.schedule();
    assert!(h.started(new1));
    assert_eq!(
        h.preemptions(),
        vec![(long, format!("LeastAttained {{ by: JobId({}) }}", new1.0))]
    );
    // It pays the checkpoint overhead of an 8-accelerator job, as under SRTF.
    assert_eq!(h.engine.job(long).unwrap().overhead_s, 30);
    // A younger job on the first level goes before it...
    h.at(700);
    let new2 = h.submit("vc", EIGHT);
    assert_eq!(h.engine.queue(), vec![new2, long]);
    // ...until it has waited twice the 600 s it ran: then it is promoted, and being older it
    // goes first, and takes the node back from new1 (on the second level by then).
    h.at(1799);
    assert_eq!(h.engine.queue(), vec![new2, long]);
    h.at(1800);
    assert_eq!(h.engine.queue(), vec![long, new2]);
    h.schedule();
    assert!(h.started(long));
    assert_eq!(
        h.preemptions().last().unwrap(),
        &(new1, format!("LeastAttained {{ by: JobId({}) }}", long.0))
    );
    h.engine.check_invariants().unwrap();
}

#[test]
fn las_preempts_only_its_own_tenants_preemptible_jobs() {
    let mut h = small(1, 1).tenants(&["a", "b"]).engine();
    let a = h.submit("a", EIGHT);
    h.schedule();
    h.at(5000);
    let b = h.submit("b", EIGHT);
    h.schedule();
    assert!(
        h.started(a) && !h.started(b),
        "another tenant's job was taken"
    );
    let mut h = small(1, 1).tenants(&["a"]).engine();
    let fixed = h.submit(
        "a",
        r#"{"groups":[{"accelerators":8}],"preemptible":false}"#,
    );
    h.schedule();
    h.at(5000);
    let next = h.submit("a", EIGHT);
    h.schedule();
    assert!(h.started(fixed) && !h.started(next));
    assert!(h.preemptions().is_empty());
}

#[test]
fn las_protects_an_attempt_for_as_long_as_the_job_ran_before() {
    let mut h = small(1, 1).tenants(&["vc"]).engine();
    let x = h.submit("vc", EIGHT);
    h.schedule();
    h.at(5000);
    let y = h.submit("vc", EIGHT);
    h.schedule();
    assert!(h.started(y) && !h.started(x));
    h.at(5100);
    h.finish(y, 0);
    h.schedule();
    assert!(h.started(x));
    // x ran 5,000 s before this attempt: safe until 5,100 + 5,000.
    h.at(5200);
    let z = h.submit("vc", EIGHT);
    h.schedule();
    h.at(10_099);
    h.schedule();
    assert!(!h.started(z));
    h.at(10_100);
    h.schedule();
    assert!(h.started(z));
    assert_eq!(h.preemptions().len(), 2);
}

#[test]
fn the_age_order_never_preempts_for_order() {
    let cfg = EngineConfig {
        queue_policy: gosok_engine::QueuePolicy::FairShare,
        ..EngineConfig::default()
    };
    let mut h = small(1, 1).tenants(&["vc"]).engine_with(cfg);
    let long = h.submit("vc", EIGHT);
    h.schedule();
    h.at(50_000);
    let short = h.submit("vc", EIGHT);
    h.schedule();
    assert!(h.started(long) && !h.started(short));
    assert!(h.preemptions().is_empty());
}

//! Scenario tests for node constraints: label selectors, taints and tolerations,
//! anti-affinity (`max_replicas_per_node`) and spread, in placement, admission,
//! explanations, preemption and reservations.

mod common;

use common::{Harness, Highway};
use gosok_engine::{Blocker, EngineConfig, JobState, WaitReason};
use gosok_model::ACCELERATOR_TAINT;

/// One site; racks `ph-r0`… of `nodes` 8×H100 nodes each, ample power.
fn racks(racks: usize, nodes: u64) -> Highway {
    let mut h = Highway::new().site("pohang", "gyeongbuk", "KR", 20.0);
    for r in 0..racks {
        h = h.rack("pohang", &format!("ph-r{r}"), 500.0, None, nodes, "H100", 8);
    }
    h
}

/// Labels every node of rack `r` (the `r`-th node run) with `key=value`.
fn label(mut h: Highway, r: usize, key: &str, value: &str) -> Highway {
    h.spec.node[r].labels.insert(key.into(), value.into());
    h
}

fn taint(mut h: Highway, r: usize, t: &str) -> Highway {
    h.spec.node[r].taints.push(t.into());
    h
}

/// A rack of `nodes` CPU-only nodes (64 cores).
fn cpu_rack(mut h: Highway, name: &str, nodes: u64) -> Highway {
    h = h.rack("pohang", name, 500.0, None, nodes, "H100", 8);
    let n = h.spec.node.last_mut().unwrap();
    n.accelerator = None;
    n.accelerators = 0;
    n.cpu_cores = 64;
    h
}

/// Without reservations, so that a waiting job's reason is what blocks it now.
fn no_backfill(h: Highway) -> Harness {
    h.engine_with(EngineConfig {
        backfill: false,
        ..EngineConfig::default()
    })
}

fn wait(h: &Harness, id: gosok_engine::JobId) -> WaitReason {
    h.engine.explain(id).unwrap().wait
}

#[test]
fn a_node_selector_places_only_on_matching_nodes() {
    let mut h = no_backfill(label(racks(2, 2), 1, "pool", "inference").tenants(&["lab"]));
    let spec = r#"{"groups":[{"replicas":2,"accelerators":8}],"constraints":{"node_labels":{"pool":"inference"}}}"#;
    let a = h.submit("lab", spec);
    h.schedule();
    assert!(h.started(a));
    assert!(
        h.nodes_of(a).iter().all(|n| n.starts_with("ph-r1")),
        "{:?}",
        h.nodes_of(a)
    );
    // The matching nodes are full; rack 0 is free but does not match.
    let b = h.submit("lab", spec);
    h.schedule();
    assert_eq!(h.state(b), JobState::Pending);
    // The nodes with free capacity lack the labels: the explanation names the selector.
    assert_eq!(
        wait(&h, b),
        WaitReason::Resources {
            blocker: Blocker::NodeLabels
        }
    );
    let why = h.why(b);
    assert!(why.contains("on nodes labelled pool=inference"), "{why}");
    assert!(why.contains("constraints.node_labels"), "{why}");
    h.finish(a, 0);
    h.schedule();
    assert!(h.started(b));
}

#[test]
fn a_selector_no_node_can_satisfy_is_rejected_naming_it() {
    let mut h = label(racks(2, 1), 1, "pool", "inference")
        .tenants(&["lab"])
        .engine();
    let a = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":1}],"constraints":{"node_labels":{"pool":"training"}}}"#,
    );
    let r = h.rejection(a).expect("rejected");
    assert!(r.starts_with("constraints.node_labels"), "{r}");
    assert!(r.contains("pool=training"), "{r}");
    // Two matching nodes are needed, one matches.
    let b = h.submit(
        "lab",
        r#"{"groups":[{"replicas":2,"accelerators":8}],"constraints":{"node_labels":{"pool":"inference"}}}"#,
    );
    let r = h.rejection(b).expect("rejected");
    assert!(r.starts_with("constraints.node_labels"), "{r}");
    // Bad values are refused at validation, the field named.
    let c = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":1}],"constraints":{"node_labels":{"pool":"a b"}}}"#,
    );
    assert!(
        h.rejection(c)
            .unwrap()
            .starts_with("constraints.node_labels.pool"),
        "{:?}",
        h.rejection(c)
    );
}

#[test]
fn cpu_only_work_stays_off_tainted_accelerator_nodes_unless_it_tolerates_them() {
    let h = taint(racks(1, 2), 0, ACCELERATOR_TAINT);
    let mut h = no_backfill(cpu_rack(h, "cpu", 1).tenants(&["lab"]));
    // Fill the CPU node: 64 cores.
    let cpu = r#"{"groups":[{"replicas":2,"cpu_milli":32000}]}"#;
    let a = h.submit("lab", cpu);
    h.schedule();
    assert!(h.started(a));
    assert!(
        h.nodes_of(a).iter().all(|n| n.starts_with("cpu")),
        "{:?}",
        h.nodes_of(a)
    );
    // More CPU-only work waits for the CPU node, naming the taints, while GPU nodes idle.
    let b = h.submit("lab", cpu);
    h.schedule();
    assert_eq!(h.state(b), JobState::Pending);
    assert_eq!(
        wait(&h, b),
        WaitReason::Resources {
            blocker: Blocker::Taints
        }
    );
    assert!(h.why(b).contains("taints"), "{}", h.why(b));
    // Accelerator work tolerates the accelerator taint by itself.
    let g = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    assert!(h.started(g));
    // CPU-only work that tolerates it may use the accelerator nodes.
    let t = h.submit(
        "lab",
        &format!(
            r#"{{"groups":[{{"replicas":2,"cpu_milli":32000}}],"constraints":{{"tolerations":["{ACCELERATOR_TAINT}"]}}}}"#
        ),
    );
    h.schedule();
    assert!(h.started(t));
    assert!(
        h.nodes_of(t).iter().all(|n| n.starts_with("ph-r0")),
        "{:?}",
        h.nodes_of(t)
    );
}

#[test]
fn cpu_only_work_on_an_all_tainted_highway_is_rejected_naming_the_taints() {
    let mut h = taint(racks(1, 2), 0, ACCELERATOR_TAINT)
        .tenants(&["lab"])
        .engine();
    let a = h.submit("lab", r#"{"groups":[{"cpu_milli":1000}]}"#);
    let r = h.rejection(a).expect("rejected");
    assert!(r.starts_with("taints"), "{r}");
}

#[test]
fn a_custom_taint_admits_only_jobs_that_tolerate_its_key_or_value() {
    let h = taint(racks(2, 1), 1, "dedicated=inference");
    let mut h = no_backfill(h.tenants(&["lab"]));
    // Two whole-node jobs: only one untainted node, so the second waits.
    let plain = r#"{"groups":[{"accelerators":8}]}"#;
    let a = h.submit("lab", plain);
    let b = h.submit("lab", plain);
    h.schedule();
    assert!(h.started(a));
    assert_eq!(h.state(b), JobState::Pending);
    assert_eq!(
        wait(&h, b),
        WaitReason::Resources {
            blocker: Blocker::Taints
        }
    );
    let wrong = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"constraints":{"tolerations":["dedicated=training"]}}"#,
    );
    let by_value = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"constraints":{"tolerations":["dedicated=inference"]}}"#,
    );
    h.schedule();
    assert_eq!(h.state(wrong), JobState::Pending);
    assert!(h.started(by_value));
    assert_eq!(h.nodes_of(by_value), vec!["ph-r1-000".to_string()]);
    h.finish(by_value, 0);
    let by_key = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"constraints":{"tolerations":["dedicated"]}}"#,
    );
    h.schedule();
    assert!(h.started(by_key));
}

#[test]
fn anti_affinity_puts_replicas_on_distinct_nodes() {
    let mut h = racks(1, 4).tenants(&["lab"]).engine();
    let a = h.submit(
        "lab",
        r#"{"groups":[{"replicas":4,"accelerators":1}],"constraints":{"max_replicas_per_node":1}}"#,
    );
    h.schedule();
    assert!(h.started(a));
    let mut nodes = h.nodes_of(a);
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 4);
    // Two per node: 8 replicas fit, 9 never do.
    let b = h.submit(
        "lab",
        r#"{"groups":[{"replicas":9,"accelerators":1}],"constraints":{"max_replicas_per_node":2}}"#,
    );
    let r = h.rejection(b).expect("rejected");
    assert!(r.starts_with("constraints.max_replicas_per_node"), "{r}");
}

#[test]
fn a_group_keeps_replicas_of_several_jobs_apart() {
    let mut h = racks(1, 2).tenants(&["lab", "other"]).engine();
    let svc = r#"{"groups":[{"accelerators":1}],"constraints":{"max_replicas_per_node":1,"group":"llm"}}"#;
    let a = h.submit("lab", svc);
    let b = h.submit("lab", svc);
    h.schedule();
    assert!(h.started(a) && h.started(b));
    assert_ne!(h.nodes_of(a), h.nodes_of(b));
    // A third replica of the group has no node left: it waits, naming anti-affinity.
    let c = h.submit("lab", svc);
    h.schedule();
    assert_eq!(h.state(c), JobState::Pending);
    assert_eq!(
        wait(&h, c),
        WaitReason::Resources {
            blocker: Blocker::AntiAffinity
        }
    );
    assert!(h.why(c).contains("max_replicas_per_node"), "{}", h.why(c));
    // Another tenant's group of the same name is its own.
    let d = h.submit("other", svc);
    h.schedule();
    assert!(h.started(d));
    // When a replica ends, its node is free for the group again.
    h.finish(a, 0);
    h.schedule();
    assert!(h.started(c));
    assert_eq!(h.nodes_of(c), h.nodes_of(a));
}

#[test]
fn spread_caps_replicas_per_rack_and_per_site() {
    let mut h = racks(4, 2).tenants(&["lab"]).engine();
    let a = h.submit(
        "lab",
        r#"{"groups":[{"replicas":4,"accelerators":1}],"constraints":{"spread":{"level":"rack","max_replicas":1}}}"#,
    );
    h.schedule();
    assert!(h.started(a));
    let mut racks_used: Vec<String> = h.nodes_of(a).iter().map(|n| n[..5].to_string()).collect();
    racks_used.sort();
    racks_used.dedup();
    assert_eq!(racks_used.len(), 4, "{:?}", h.nodes_of(a));
    let b = h.submit(
        "lab",
        r#"{"groups":[{"replicas":5,"accelerators":1}],"constraints":{"spread":{"level":"rack","max_replicas":1}}}"#,
    );
    let r = h.rejection(b).expect("rejected");
    assert!(r.starts_with("constraints.spread"), "{r}");
    // Over sites: two sites, at most 2 per site.
    let mut h = Highway::new()
        .site("pohang", "gyeongbuk", "KR", 20.0)
        .site("jeonnam", "jeonnam", "KR", 20.0)
        .rack("pohang", "ph", 500.0, None, 2, "H100", 8)
        .rack("jeonnam", "jn", 500.0, None, 2, "H100", 8)
        .tenants(&["lab"])
        .engine();
    let s = h.submit(
        "lab",
        r#"{"groups":[{"replicas":4,"accelerators":8}],"constraints":{"spread":{"level":"site","max_replicas":2}}}"#,
    );
    h.schedule();
    assert!(h.started(s));
    let ph = h.nodes_of(s).iter().filter(|n| n.starts_with("ph")).count();
    assert_eq!(ph, 2, "{:?}", h.nodes_of(s));
}

#[test]
fn bad_constraints_name_their_field() {
    let mut h = racks(1, 1).tenants(&["lab"]).engine();
    for (json, field) in [
        (
            r#"{"groups":[{"accelerators":1}],"constraints":{"tolerations":["a b"]}}"#,
            "constraints.tolerations[0]",
        ),
        (
            r#"{"groups":[{"accelerators":1}],"constraints":{"max_replicas_per_node":0}}"#,
            "constraints.max_replicas_per_node",
        ),
        (
            r#"{"groups":[{"accelerators":1}],"constraints":{"spread":{"level":"node","max_replicas":1}}}"#,
            "constraints.spread.level",
        ),
        (
            r#"{"groups":[{"accelerators":1}],"constraints":{"group":"x"}}"#,
            "constraints.group",
        ),
    ] {
        let id = h.submit("lab", json);
        let r = h.rejection(id).expect("rejected");
        assert!(r.starts_with(field), "{json}: {r}");
    }
}

#[test]
fn preemption_frees_only_nodes_the_job_may_use() {
    let mut h = label(racks(2, 1), 1, "pool", "inference")
        .tenants(&["lab"])
        .engine();
    // Low-priority work fills both nodes.
    let low0 = h.submit("lab", r#"{"groups":[{"accelerators":8}],"priority":"low"}"#);
    let low1 = h.submit("lab", r#"{"groups":[{"accelerators":8}],"priority":"low"}"#);
    h.schedule();
    assert!(h.started(low0) && h.started(low1));
    let on_inference = if h.nodes_of(low0) == vec!["ph-r1-000".to_string()] {
        low0
    } else {
        low1
    };
    let high = h.submit(
        "lab",
        r#"{"groups":[{"accelerators":8}],"priority":"high","constraints":{"node_labels":{"pool":"inference"}}}"#,
    );
    h.schedule();
    assert!(h.started(high));
    assert_eq!(h.nodes_of(high), vec!["ph-r1-000".to_string()]);
    let preempted: Vec<_> = h.preemptions().into_iter().map(|p| p.0).collect();
    assert_eq!(preempted, vec![on_inference]);
}

#[test]
fn a_reservation_holds_only_nodes_the_job_may_use() {
    let h = label(racks(2, 2), 1, "pool", "inference");
    let mut h = label(h, 0, "pool", "training").tenants(&["lab"]).engine();
    // Everything is busy with non-preemptible work: the training nodes end soon, the
    // inference nodes late.
    let mut running = Vec::new();
    for (pool, est) in [
        ("training", 100),
        ("training", 200),
        ("inference", 10_000),
        ("inference", 20_000),
    ] {
        running.push(h.submit(
            "lab",
            &format!(
                r#"{{"groups":[{{"accelerators":8}}],"preemptible":false,"runtime_estimate_s":{est},"constraints":{{"node_labels":{{"pool":"{pool}"}}}}}}"#
            ),
        ));
    }
    h.schedule();
    assert!(running.iter().all(|&j| h.started(j)));
    let gang = h.submit(
        "lab",
        r#"{"groups":[{"replicas":2,"accelerators":8}],"constraints":{"node_labels":{"pool":"inference"}}}"#,
    );
    h.schedule();
    assert_eq!(h.engine.reservation().job, Some(gang));
    let c = h.engine.cluster();
    assert!(!h.engine.reservation().slack.is_empty());
    for n in h.engine.reservation().slack.keys() {
        let node = &c.nodes[*n as usize];
        assert_eq!(
            node.labels.get("pool").map(String::as_str),
            Some("inference"),
            "reserved {}",
            node.name
        );
    }
    // It starts when both inference nodes are free (not at 200 s, when the training nodes
    // would be).
    assert_eq!(wait(&h, gang), WaitReason::Reserved { start_s: 20_000 });
}

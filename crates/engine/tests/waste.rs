//! Scenario tests for the default placement, expected waste: what it keeps usable that a
//! plain best fit would waste.

mod common;

use common::{Harness, Highway};
use gosok_engine::EngineConfig;

/// One site; a rack of `poor` nodes (4 × H100, 16 cores) and one of `rich` nodes (4 × H100,
/// 128 cores).
fn poor_and_rich() -> Highway {
    let mut h = Highway::new()
        .site("pohang", "gyeongbuk", "KR", 20.0)
        .rack("pohang", "poor", 500.0, None, 1, "H100", 4)
        .rack("pohang", "rich", 500.0, None, 1, "H100", 4);
    h.spec.node[0].cpu_cores = 16;
    h
}

/// Seeds each scenario runs under: equal scores go to a seeded choice, so a scenario that
/// passed by that choice alone would fail under one of them.
const SEEDS: u64 = 8;

fn engine(h: Highway, scorers: &[(&str, f64)], seed: u64) -> Harness {
    h.tenants(&["lab"]).engine_with(EngineConfig {
        seed,
        scorers: scorers.iter().map(|&(n, w)| (n.to_string(), w)).collect(),
        ..EngineConfig::default()
    })
}

#[test]
fn cpu_hungry_replicas_go_where_cpu_will_not_run_out() {
    // The workload asks 4 cores per accelerator; this replica asks 14 for one.
    let hungry = r#"{"groups":[{"accelerators":1,"cpu_milli":14000}]}"#;
    let typical = r#"{"groups":[{"accelerators":1,"cpu_milli":4000}]}"#;
    for seed in 0..SEEDS {
        let mut h = engine(poor_and_rich(), &[("waste", 1.0)], seed);
        for _ in 0..6 {
            h.submit("lab", typical);
            h.engine
                .apply(gosok_engine::Event::Cancel {
                    id: gosok_engine::JobId(h.next_id - 1),
                })
                .unwrap();
        }
        let a = h.submit("lab", hungry);
        h.schedule();
        // On the poor node it would leave 2 cores for 3 idle accelerators.
        assert_eq!(h.nodes_of(a), vec!["rich-000".to_string()], "seed {seed}");
    }
}

#[test]
fn cpu_only_work_goes_to_cpu_nodes_first() {
    let mut h = poor_and_rich().rack("pohang", "cpu", 500.0, None, 1, "H100", 8);
    let n = h.spec.node.last_mut().unwrap();
    n.accelerator = None;
    n.accelerators = 0;
    let mut h = engine(h, &[("waste", 1.0)], 0);
    h.submit("lab", r#"{"groups":[{"accelerators":1,"cpu_milli":4000}]}"#);
    let a = h.submit("lab", r#"{"groups":[{"cpu_milli":8000}]}"#);
    h.schedule();
    assert_eq!(h.nodes_of(a), vec!["cpu-000".to_string()]);
}

#[test]
fn expected_waste_is_the_default() {
    let names: Vec<String> = EngineConfig::default()
        .scorers
        .iter()
        .map(|s| s.0.clone())
        .collect();
    assert_eq!(names[0], "waste");
    assert!(!names.contains(&"fgd".to_string()));
}

//! The documented examples parse and run, as the README shows them.

use gosok_engine::{Decision, Engine, EngineConfig, Event, JobId};
use gosok_model::{Catalog, ClusterSpec, JobSpec};

fn read(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_example_cluster_and_job_run_as_the_readme_shows() {
    let cluster = ClusterSpec::from_toml(&read("examples/cluster.toml")).unwrap();
    let mut engine = Engine::new(Catalog::builtin(), &cluster, EngineConfig::default()).unwrap();
    let spec: JobSpec = serde_json::from_str(&read("examples/job.json")).unwrap();
    engine
        .apply(Event::Submit {
            id: JobId(1),
            tenant: "snu-ai-lab".into(),
            spec,
        })
        .unwrap();
    let decisions = engine.schedule();
    match &decisions[..] {
        [Decision::Start { tasks, .. }] => {
            assert_eq!(tasks.len(), 2);
            // Preferred topology: both replicas in the one NVLink domain of Pohang.
            assert!(tasks.iter().all(|t| t.node.starts_with("ph-")), "{tasks:?}");
        }
        d => panic!("expected one start, got {d:?}"),
    }
    // The cluster round-trips through the TOML writer (what `gosok export` will print).
    let again = ClusterSpec::from_toml(&cluster.to_toml()).unwrap();
    assert_eq!(again, cluster);
}

#[test]
fn the_example_inference_service_spreads_over_inference_nodes() {
    let cluster = ClusterSpec::from_toml(&read("examples/cluster.toml")).unwrap();
    let mut engine = Engine::new(Catalog::builtin(), &cluster, EngineConfig::default()).unwrap();
    let spec: JobSpec = serde_json::from_str(&read("examples/inference.json")).unwrap();
    engine
        .apply(Event::Submit {
            id: JobId(1),
            tenant: "seoul-startup".into(),
            spec,
        })
        .unwrap();
    match &engine.schedule()[..] {
        [Decision::Start { tasks, .. }] => {
            let mut nodes: Vec<&str> = tasks.iter().map(|t| &*t.node).collect();
            assert!(nodes.iter().all(|n| n.starts_with("jn-")), "{nodes:?}");
            nodes.sort();
            nodes.dedup();
            assert_eq!(nodes.len(), 4, "one replica per node");
        }
        d => panic!("expected one start, got {d:?}"),
    }
    // CPU-only work does not land on the tainted Pohang H100 servers.
    let cpu: JobSpec =
        serde_json::from_str(r#"{"groups":[{"replicas":8,"cpu_milli":50000}]}"#).unwrap();
    engine
        .apply(Event::Submit {
            id: JobId(2),
            tenant: "seoul-startup".into(),
            spec: cpu,
        })
        .unwrap();
    match &engine.schedule()[..] {
        [Decision::Start { tasks, .. }] => {
            assert!(
                tasks.iter().all(|t| !t.node.starts_with("ph-r001")),
                "{tasks:?}"
            );
        }
        d => panic!("expected one start, got {d:?}"),
    }
}

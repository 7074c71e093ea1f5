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

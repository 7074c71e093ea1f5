//! The published experiment on the real openb trace, one seed: FGD must leave fewer GPUs
//! unallocated than BestFit when the arrived workload equals the cluster's capacity (x = 100),
//! and both must land near the published numbers.

use std::path::Path;
use std::sync::Arc;

use gosok_packing::compare::{NODE_LIST, default_traces_dir};
use gosok_packing::experiment::{Prepared, run};
use gosok_packing::load::{BadRows, load_nodes, load_pods};
use gosok_packing::policy::PolicyKind;

fn default_workload() -> Prepared {
    let traces = default_traces_dir(Path::new(env!("CARGO_MANIFEST_DIR")));
    let csv = traces.join("csv");
    let cluster = load_nodes(&csv.join(NODE_LIST), BadRows::Fail).unwrap_or_else(|e| {
        panic!("the openb trace must be beside the repository (shared/traces): {e}")
    });
    assert_eq!(cluster.nodes.len(), 1213);
    assert_eq!(cluster.total_gpus(), 6212);
    let pods = load_pods(
        &csv.join("openb_pod_list_default.csv"),
        &cluster,
        BadRows::Fail,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pods.pods.len(), 8152);
    Prepared::new(Arc::new(cluster), Arc::new(pods)).unwrap()
}

#[test]
fn fgd_allocates_more_than_bestfit_at_full_arrival() {
    let p = default_workload();
    let fgd = run(&p, PolicyKind::Fgd, 42, 1.3).unwrap();
    let bestfit = run(&p, PolicyKind::BestFit, 42, 1.3).unwrap();
    let fgd_unalloc = fgd.unallocated_pct(100).unwrap();
    let bestfit_unalloc = bestfit.unallocated_pct(100).unwrap();
    assert!(
        fgd_unalloc < bestfit_unalloc,
        "FGD {fgd_unalloc:.2} % unallocated vs BestFit {bestfit_unalloc:.2} %"
    );
    // Published (10 seeds): FGD 4.62-4.94 %, BestFit 6.96-7.36 %; one seed may stray a little.
    assert!((4.0..5.5).contains(&fgd_unalloc), "FGD {fgd_unalloc:.2}");
    assert!(
        (6.3..8.0).contains(&bestfit_unalloc),
        "BestFit {bestfit_unalloc:.2}"
    );
    // The same seed gives the same run.
    let again = run(&p, PolicyKind::Fgd, 42, 1.3).unwrap();
    assert_eq!(again.allocated_pct, fgd.allocated_pct);
    // Inflated to 130 % of capacity: the arrived GPU demand ends just under 1.3 x 6212 GPUs.
    let arrived = fgd.arrived_gpu_milli as f64 / 6_212_000.0;
    assert!((1.29..=1.301).contains(&arrived), "{arrived}");
}

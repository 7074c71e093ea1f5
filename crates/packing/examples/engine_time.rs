use std::path::Path;
use std::time::Instant;
use gosok_packing::engine_run::{EngineCluster, arrive};
use gosok_packing::experiment::Prepared;
use gosok_packing::load::{BadRows, load_nodes, load_pods};
use std::sync::Arc;
fn main() {
    let csv = Path::new("../shared/traces/alibaba-openb-v2023/csv");
    let cluster = load_nodes(&csv.join("openb_node_list_gpu_node.csv"), BadRows::Fail).unwrap();
    let pods = load_pods(&csv.join("openb_pod_list_default.csv"), &cluster, BadRows::Fail).unwrap();
    let p = Prepared::new(Arc::new(cluster.clone()), Arc::new(pods.clone()));
    let ec = EngineCluster::new(&cluster).unwrap();
    let scorer = std::env::args().nth(1).unwrap_or("bestfit".into());
    let order = p.arrival_order(1.3, 42);
    let jobs: Vec<_> = pods.pods.iter().map(|pod| ec.job(&cluster, pod)).collect();
    let t = Instant::now();
    let mut e = ec.engine(vec![(scorer, 1.0)], None, 42).unwrap();
    let mut used = 0u64; let mut arrived = 0u64; let cap = cluster.total_gpu_milli();
    let mut at100 = None;
    for (i, &pi) in order.iter().enumerate() {
        let pod = &pods.pods[pi as usize];
        arrived += pod.demand.total_gpu_milli() as u64;
        if arrive(&mut e, &ec, i as u64, jobs[pi as usize].clone()).unwrap().is_some() { used += pod.demand.total_gpu_milli() as u64; }
        if at100.is_none() && arrived >= cap { at100 = Some(100.0 - 100.0*used as f64/cap as f64); }
    }
    println!("{} pods in {:?}; unalloc@100 {:?}", order.len(), t.elapsed(), at100);
}

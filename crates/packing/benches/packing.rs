//! Criterion benchmarks of the arrival-only packing runner on the real openb trace: one run of
//! each published policy (default workload, seed 42, inflated to 130 %), i.e. about 10,800 pods
//! placed on 1,213 nodes.
//!
//! `cargo bench -p gosok-packing` takes about a minute; each benchmark takes 10 samples since the
//! machines are noisy and ratios measured in one run are what we compare. The whole published
//! experiment (13 workloads x 6 policies x 10 seeds) is timed by
//! `gosok sim fgd-compare --policy random,dotprod,clustering,packing,bestfit,fgd`, which prints
//! its wall time.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use gosok_packing::compare::{NODE_LIST, default_traces_dir};
use gosok_packing::experiment::{Prepared, run};
use gosok_packing::load::{BadRows, load_nodes, load_pods};
use gosok_packing::policy::PolicyKind;

fn prepared() -> Option<Prepared> {
    let traces = default_traces_dir(Path::new(env!("CARGO_MANIFEST_DIR")));
    let csv = traces.join("csv");
    let cluster = match load_nodes(&csv.join(NODE_LIST), BadRows::Fail) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "skipping the packing benchmarks: the openb trace is not beside the repository ({e})"
            );
            return None;
        }
    };
    let pods = match load_pods(
        &csv.join("openb_pod_list_default.csv"),
        &cluster,
        BadRows::Fail,
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipping the packing benchmarks: {e}");
            return None;
        }
    };
    Prepared::new(Arc::new(cluster), Arc::new(pods)).ok()
}

fn bench_runs(c: &mut Criterion) {
    let Some(p) = prepared() else { return };
    let mut group = c.benchmark_group("run_default_seed42");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(1));
    for kind in PolicyKind::ALL {
        group.bench_function(kind.name(), |b| {
            b.iter(|| match run(&p, kind, 42, 1.3) {
                Ok(r) => black_box(r.allocated_gpu_milli),
                Err(e) => panic!("a run failed: {e}"),
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_runs);
criterion_main!(benches);

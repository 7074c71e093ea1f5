//! The published FGD experiment through the engine: every pod is placed by `gosok_engine`
//! with the published policies as engine scorers, and our medians over the published seeds
//! must lie within the published [min, max] widened by 0.5 points (`compare::BAND_SLACK_PCT`).
//!
//! The default workload runs in the normal suite (70 runs); the whole study (13 workloads,
//! 312 medians) is `cargo test --release -p gosok-packing --test published_bands -- --ignored`
//! (several minutes on two cores; `gosok sim fgd-compare` prints the same table).

use std::path::Path;

use gosok_packing::compare::{CompareReport, CompareSpec, compare, default_traces_dir};
use gosok_packing::experiment::default_threads;
use gosok_packing::policy::PolicyKind;

fn study(only: &[&str], policies: &[PolicyKind]) -> CompareReport {
    let spec = CompareSpec {
        traces_dir: default_traces_dir(Path::new(env!("CARGO_MANIFEST_DIR"))),
        seeds: (42..=51).collect(),
        tune_ratio: 1.3,
        threads: default_threads(),
        policies: policies.to_vec(),
        only: only.iter().map(|s| s.to_string()).collect(),
    };
    compare(&spec, &|_, _| {}).unwrap_or_else(|e| {
        panic!("the openb trace must be beside the repository (shared/traces): {e}")
    })
}

fn outside(r: &CompareReport) -> Vec<String> {
    r.rows
        .iter()
        .filter(|row| row.within_band == Some(false))
        .map(|row| {
            let p = row.published.as_ref().map_or(0.0, |p| p.median);
            format!(
                "{} {} x={}: ours {:.2}, published {:.2}",
                row.workload, row.policy, row.x_pct, row.ours.median, p
            )
        })
        .collect()
}

#[test]
fn default_workload_reproduces_the_published_bands_and_waste_beats_fgd() {
    let r = study(&["openb_pod_list_default"], &PolicyKind::ALL);
    assert_eq!(r.rows_compared, 24, "6 policies x 4 points");
    assert_eq!(r.rows_within_band, r.rows_compared, "{:#?}", outside(&r));
    // Expected waste, the engine's default placement, at x = 100.
    let [g] = &r.gosok_vs_fgd[..] else {
        panic!("one workload")
    };
    assert!(
        g.gosok.mean <= 4.3,
        "expected waste {:.2} % unallocated",
        g.gosok.mean
    );
    assert!(
        g.gosok.median < g.fgd_ours.median,
        "expected waste {:.2} vs FGD {:.2}",
        g.gosok.median,
        g.fgd_ours.median
    );
}

/// The one median known to fall outside: FGD on gpuspec10 at x = 95 leaves about 7.2 % of
/// the GPUs unallocated where the published runs left 9.4-9.9 % (the engine's FGD learns its
/// typical pods from the pods submitted so far instead of reading the whole list first, and
/// fails fewer model-restricted pods just before x = 100). It is below the band: fewer idle
/// GPUs, not more. Any other median outside fails the test.
const KNOWN_OUTSIDE: &[&str] = &["openb_pod_list_gpuspec10 fgd x=95"];

#[test]
#[ignore = "the whole study: 780 runs, tens of minutes on two busy cores"]
fn every_published_median_lies_within_its_band() {
    let r = study(&[], &PolicyKind::PUBLISHED);
    assert_eq!(r.rows_compared, 312, "13 workloads x 6 policies x 4 points");
    let unexpected: Vec<String> = outside(&r)
        .into_iter()
        .filter(|o| !KNOWN_OUTSIDE.iter().any(|k| o.starts_with(k)))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    assert!(r.rows_within_band >= 311, "{:#?}", outside(&r));
}

#[test]
fn expected_waste_beats_fgd_on_stress_variants() {
    use gosok_packing::variants::{Variant, compare_variants};
    let traces = default_traces_dir(Path::new(env!("CARGO_MANIFEST_DIR")));
    // A GPU-share ratio and a GPU-model-restriction ratio beyond the published levels.
    let variants = [Variant::GpuSharePct(80), Variant::GpuSpecPct(50)];
    let r = compare_variants(
        &traces,
        &variants,
        &[42, 43],
        1.3,
        default_threads(),
        &|_, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.rows.len(), 3, "the base list and two variants");
    for row in &r.rows {
        assert!(
            row.gosok.median < row.fgd.median,
            "{}: expected waste {:.2} vs FGD {:.2}",
            row.variant,
            row.gosok.median,
            row.fgd.median
        );
    }
}

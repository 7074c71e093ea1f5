//! The order within a tenant by sizes learned from its jobs that ended (`gittins.rs`): what it
//! changes against the plain attained-service ladder, and where it falls back to it.
mod common;
use common::{Harness, Highway};
use gosok_engine::config::{EngineConfig, Las, QueuePolicy};
use gosok_engine::{Engine, JobId};

const EIGHT: &str = r#"{"groups":[{"accelerators":8}],"preemptible":true}"#;
const ONE: &str = r#"{"groups":[{"accelerators":1}],"preemptible":true}"#;

fn highway(learned_sizes: bool) -> Harness {
    Highway::new()
        .site("pohang", "gyeongbuk", "KR", 20.0)
        .rack("pohang", "ph-r0", 500.0, None, 1, "H100", 8)
        .tenants(&["vc"])
        .engine_with(EngineConfig {
            queue_policy: QueuePolicy::FairShareLas(Las {
                learned_sizes,
                ..Las::default()
            }),
            ..EngineConfig::default()
        })
}

/// Runs `n` jobs of `spec` one after the other, each for `run_s`, from `*now`.
fn teach(h: &mut Harness, now: &mut u64, spec: &str, n: usize, run_s: u64) {
    for _ in 0..n {
        h.at(*now);
        let id = h.submit("vc", spec);
        h.schedule();
        assert!(h.started(id));
        *now += run_s;
        h.at(*now);
        h.finish(id, 0);
    }
}

/// Every 8-accelerator job of the tenant has run about 10,000 s. A job that has run 9,000 s
/// is nearly done; a newcomer of the same shape has all of it ahead.
fn near_the_usual_end(learned_sizes: bool) -> (Harness, JobId, JobId) {
    let mut h = highway(learned_sizes);
    let mut now = 100;
    teach(&mut h, &mut now, EIGHT, 16, 10_000);
    h.at(now);
    let old = h.submit("vc", EIGHT);
    h.schedule();
    assert!(h.started(old));
    h.at(now + 9_000);
    let new = h.submit("vc", EIGHT);
    h.schedule();
    h.at(now + 9_700);
    h.schedule();
    (h, old, new)
}

#[test]
fn a_job_near_its_shapes_usual_end_is_not_preempted_by_a_newcomer() {
    let (h, old, new) = near_the_usual_end(true);
    assert!(h.started(old) && !h.started(new), "{:?}", h.preemptions());
    assert!(h.preemptions().is_empty());
    h.engine.check_invariants().unwrap();
    // The plain ladder knows only that it has attained much service, and takes its node.
    let (h, old, new) = near_the_usual_end(false);
    assert!(h.started(new));
    assert_eq!(
        h.preemptions(),
        vec![(old, format!("LeastAttained {{ by: JobId({}) }}", new.0))]
    );
}

#[test]
fn shapes_whose_jobs_are_short_go_first() {
    // The tenant's single-accelerator jobs run 60 s, its 8-accelerator ones 20,000 s.
    let mut h = highway(true);
    let mut now = 100;
    teach(&mut h, &mut now, ONE, 16, 60);
    teach(&mut h, &mut now, EIGHT, 16, 20_000);
    // A long job holds the node; an 8-accelerator job, then a 1-accelerator one, wait.
    h.at(now);
    let running = h.submit("vc", EIGHT);
    h.schedule();
    assert!(h.started(running));
    h.at(now + 10);
    let big = h.submit("vc", EIGHT);
    h.at(now + 20);
    let small = h.submit("vc", ONE);
    // Younger, but of a shape whose jobs end sooner: first in line.
    assert_eq!(h.engine.queue(), vec![small, big]);
    // Without learned sizes both are new (least attained service), so age decides.
    let mut plain = highway(false);
    plain.at(100);
    plain.submit("vc", EIGHT);
    plain.schedule();
    plain.at(110);
    let big = plain.submit("vc", EIGHT);
    plain.at(120);
    let small = plain.submit("vc", ONE);
    assert_eq!(plain.engine.queue(), vec![big, small]);
}

#[test]
fn too_few_sizes_leave_the_plain_ladder_in_charge() {
    // Fifteen jobs ended: one short of `min_samples`, so a job near the usual end is still
    // taken for the newcomer as the plain ladder would.
    let mut h = highway(true);
    let mut now = 100;
    teach(&mut h, &mut now, EIGHT, 15, 10_000);
    h.at(now);
    let old = h.submit("vc", EIGHT);
    h.schedule();
    h.at(now + 9_000);
    let new = h.submit("vc", EIGHT);
    h.schedule();
    assert!(h.started(new));
    assert_eq!(h.preemptions().len(), 1);
    assert_eq!(h.preemptions()[0].0, old);
}

#[test]
fn learned_sizes_survive_a_snapshot() {
    let (h, _, _) = near_the_usual_end(true);
    let restored = Engine::restore(&h.engine.snapshot().unwrap()).unwrap();
    restored.check_invariants().unwrap();
    assert_eq!(restored.queue(), h.engine.queue());
    assert_eq!(
        restored.snapshot().unwrap(),
        h.engine.snapshot().unwrap(),
        "a restored engine carries the histories as they were"
    );
}

#[test]
fn a_job_close_to_its_runtime_limit_is_not_preempted() {
    // No history yet: attained service orders, but a job that must end within 100 s (its
    // limit) is not sent below a newcomer that may run for hours.
    let limited = r#"{"groups":[{"accelerators":8}],"preemptible":true,"runtime_limit_s":1000}"#;
    for learned_sizes in [true, false] {
        let mut h = highway(learned_sizes);
        h.at(100);
        let old = h.submit("vc", limited);
        h.schedule();
        h.at(1000);
        let new = h.submit("vc", EIGHT);
        h.schedule();
        assert_eq!(
            h.started(new),
            !learned_sizes,
            "learned sizes {learned_sizes}: {:?}",
            h.preemptions()
        );
        if learned_sizes {
            // It ends at its limit; the newcomer starts then.
            h.at(1101);
            h.schedule();
            assert!(!h.started(old) && h.started(new));
        }
    }
}

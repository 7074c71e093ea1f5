//! Job control: a held job is admitted but never considered by a pass until released; a
//! requeued job goes back to the queue and its next start is a new attempt.

mod common;

use common::Highway;
use gosok_engine::{Decision, Event, JobId, JobState};

#[test]
fn a_held_job_waits_while_later_jobs_start_and_runs_once_released() {
    let mut h = Highway::new()
        .site("pohang", "gyeongbuk", "KR", 20.0)
        .rack("pohang", "ph-r0", 500.0, None, 1, "H100", 8)
        .tenants(&["lab"])
        .engine();
    let first = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    let second = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    assert!(h.apply(Event::Hold { id: first }).is_empty());
    assert_eq!(h.state(first), JobState::Held);
    h.schedule();
    assert!(
        h.started(second),
        "the held job must not block the one behind it"
    );
    assert_eq!(h.state(first), JobState::Held);
    h.engine.check_invariants().unwrap();
    h.apply(Event::Release { id: first });
    assert_eq!(h.state(first), JobState::Pending);
    h.finish(second, 0);
    h.schedule();
    assert!(h.started(first));
    // Holding a running job is refused, and says why.
    let e = h.engine.apply(Event::Hold { id: first }).unwrap_err();
    assert!(e.to_string().contains("only a pending job"), "{e}");
    h.engine.check_invariants().unwrap();
}

#[test]
fn a_requeued_job_runs_again_as_a_new_attempt_and_old_reports_are_refused() {
    let mut h = Highway::new()
        .site("pohang", "gyeongbuk", "KR", 20.0)
        .rack("pohang", "ph-r0", 500.0, None, 1, "H100", 8)
        .tenants(&["lab"])
        .engine();
    let j = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    h.schedule();
    let d = h.apply(Event::Requeue {
        id: j,
        reason: "requeued by alice".into(),
    });
    assert!(
        matches!(&d[..], [Decision::Requeue { attempt: 1, reason, .. }] if reason == "requeued by alice"),
        "{d:?}"
    );
    assert_eq!(h.state(j), JobState::Pending);
    h.schedule();
    assert!(h.started(j));
    let stale = h.engine.apply(Event::TaskEnded {
        id: j,
        attempt: 1,
        task: 0,
        exit_code: 0,
    });
    assert!(
        stale.is_err(),
        "a report of the first attempt must be refused"
    );
    // A cancelled held job ends cancelled.
    let k = h.submit("lab", r#"{"groups":[{"accelerators":8}]}"#);
    h.apply(Event::Hold { id: k });
    let d = h.apply(Event::Cancel { id: k });
    assert!(
        matches!(
            &d[..],
            [Decision::Finish {
                state: JobState::Cancelled,
                ..
            }]
        ),
        "{d:?}"
    );
    assert!(
        h.engine
            .apply(Event::Requeue {
                id: JobId(k.0),
                reason: String::new()
            })
            .is_err()
    );
    h.engine.check_invariants().unwrap();
}

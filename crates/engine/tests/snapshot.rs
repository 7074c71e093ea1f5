//! Engine snapshots: what is refused, and a guard on the encoding. That a restored engine
//! decides as the original is a property test (`properties.rs`).

mod common;

use common::Highway;
use gosok_engine::{Engine, JobId, SNAPSHOT_FORMAT, SnapshotError};

fn busy_engine() -> common::Harness {
    let mut h = Highway::new()
        .site("pohang", "gyeongbuk", "KR", 1.0)
        .rack("pohang", "r0", 60.0, Some("d0"), 2, "H100", 8)
        .rack("pohang", "r1", 60.0, None, 1, "RNGD", 4)
        .tenants(&["lab", "agency"])
        .engine();
    h.at(100);
    h.submit(
        "lab",
        r#"{"groups":[{"replicas":2,"accelerators":8}],"runtime_estimate_s":600}"#,
    );
    h.submit(
        "agency",
        r#"{"groups":[{"replicas":1,"accelerator_milli":250,"models":["RNGD"]}]}"#,
    );
    h.submit(
        "lab",
        r#"{"groups":[{"replicas":1,"accelerators":4}],"priority":"high"}"#,
    );
    h.schedule();
    h.at(160);
    h
}

#[test]
fn a_restored_engine_answers_as_the_original() {
    let h = busy_engine();
    let e = Engine::restore(&h.engine.snapshot().unwrap()).unwrap();
    e.check_invariants().unwrap();
    assert_eq!(e.queue(), h.engine.queue());
    assert_eq!(e.now_s(), h.engine.now_s());
    for id in 1..=3 {
        assert_eq!(e.explain(JobId(id)), h.engine.explain(JobId(id)));
        assert_eq!(e.job_state(JobId(id)), h.engine.job_state(JobId(id)));
    }
}

#[test]
fn other_formats_and_damaged_snapshots_are_refused() {
    let h = busy_engine();
    let bytes = h.engine.snapshot().unwrap();
    assert!(matches!(
        Engine::restore(b"{\"jobs\": []}"),
        Err(SnapshotError::NotASnapshot)
    ));
    let mut other = bytes.clone();
    other[8..12].copy_from_slice(&(SNAPSHOT_FORMAT + 1).to_le_bytes());
    let e = Engine::restore(&other).err().unwrap();
    assert!(matches!(e, SnapshotError::Format { .. }), "{e}");
    assert!(e.to_string().contains("format"));
    let cut = Engine::restore(&bytes[..bytes.len() / 2]).err().unwrap();
    assert!(matches!(cut, SnapshotError::Codec(_)), "{cut}");
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(
        Engine::restore(&longer).is_err(),
        "trailing bytes are refused"
    );
}

/// FNV-1a: a stable fingerprint, whatever the standard library's hasher does.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The snapshot format is not self-describing: a snapshot written before a field was added
/// would be misread after. This fingerprint of a fixed engine's snapshot changes with the
/// encoding (and with the engine's behaviour or the built-in catalog). When it fails: if any
/// serialized type changed, bump `SNAPSHOT_FORMAT` (older snapshots are then refused and the
/// controller replays its log); then update the expected value.
#[test]
fn a_snapshot_of_a_fixed_engine_is_stable() {
    let bytes = busy_engine().engine.snapshot().unwrap();
    assert_eq!(
        (SNAPSHOT_FORMAT, bytes.len(), fnv(&bytes)),
        (7, 7077, 15454361415688955999),
        "the engine snapshot changed: see this test's comment"
    );
}

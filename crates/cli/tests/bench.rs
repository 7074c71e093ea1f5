//! Runs the real `gosok` binary the way a user would.

use std::process::Command;

fn gosok(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gosok"))
        .args(args)
        .output()
        .expect("the gosok binary runs")
}

#[test]
fn bench_engine_reports_every_measure_as_json() {
    let out = gosok(&[
        "bench",
        "engine",
        "--nodes",
        "200",
        "--pending",
        "2000",
        "--format",
        "json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gosok failed: {stderr}");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    for field in [
        "placements_per_s",
        "gang16_placements_per_s",
        "pass_p50_ms",
        "pass_p99_ms",
        "bytes_per_pending_job",
    ] {
        let x = v[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} missing in {v}"));
        assert!(x > 0.0, "{field} is {x}");
    }
    assert_eq!(v["seed"], 1);
    assert_eq!(v["params"]["nodes"], 200);
    assert_eq!(v["params"]["pending"], 2000);
    assert_eq!(v["sizes"]["nodes"], 200);
    assert_eq!(v["sizes"]["accelerators"], 1600);
    assert!(v["sizes"]["pending"].as_u64().unwrap() >= 2000);
    assert_eq!(v["steady"]["passes"], 200);
}

#[test]
fn a_bad_flag_value_fails_and_names_the_flag() {
    let out = gosok(&["bench", "engine", "--nodes", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
    let out = gosok(&[
        "bench",
        "engine",
        "--nodes",
        "10",
        "--site-power-budget-mw",
        "0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--site-power-budget-mw"));
}

#[test]
fn version_succeeds() {
    // `gosok up` runs until Ctrl-C: tests/agents.rs drives it.
    let out = gosok(&["version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("gosok {}", env!("CARGO_PKG_VERSION"))
    );
}

//! Runs the real `gosok` binary the way a user would.

use std::process::Command;

fn gosok(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gosok"))
        .args(args)
        .output()
        .expect("the gosok binary runs")
}

/// `gosok bench engine ARGS --format json`, which must succeed: its one JSON object.
fn bench_engine_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "engine"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json"]);
    let out = gosok(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gosok failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn bench_engine_reports_every_measure_as_json() {
    let v = bench_engine_json(&["--nodes", "200", "--pending", "2000"]);
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
    assert_eq!(v["params"]["preset"], "default");
    // The engine's whole heap and its snapshot are measured, not only the queue's growth.
    assert!(v["memory"]["engine_bytes"].as_u64().unwrap() > v["memory"]["bytes"].as_u64().unwrap());
    assert!(v["snapshot"]["bytes"].as_u64().unwrap() > 0);
    assert!(v["snapshot"]["restore_ms"].as_f64().unwrap() > 0.0);
    assert!(v["targets"]["pass_p99_ms"]["goal"] == "< 10");
}

#[test]
fn the_national_preset_takes_its_values_and_flags_override_them() {
    // The national highway shrunk by flags to test size: what is not overridden (sites,
    // gang sizes, power per site, targets) comes from the preset.
    let v = bench_engine_json(&[
        "--preset",
        "national",
        "--nodes",
        "600",
        "--pending",
        "3000",
        "--passes",
        "20",
        "--rounds",
        "1",
    ]);
    assert_eq!(v["params"]["preset"], "national");
    assert_eq!(v["params"]["sites"], 6);
    assert_eq!(v["params"]["nodes"], 600);
    assert_eq!(v["params"]["max_gang_replicas"], 256);
    assert_eq!(v["params"]["site_power_budget_mw"], 32.5);
    assert_eq!(v["params"]["quality_nodes"], 0);
    assert_eq!(v["sizes"]["sites"], 6);
    assert_eq!(v["targets"]["pass_p99_ms"]["goal"], "< 25");
    assert_eq!(v["targets"]["engine_bytes"]["goal"], "< 1024 MiB");
    assert_eq!(v["targets"]["snapshot_restore_ms"]["goal"], "< 5000");
    assert!(v["quality"].is_null());
    let out = gosok(&["bench", "engine", "--preset", "continental"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--preset"));
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

//! Runs the real `gosok plan` subcommands the way a planner would: site arithmetic, the
//! capacity search and the demand model on one Philly VC from `../shared/traces`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;

fn gosok(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gosok"))
        .args(args)
        .output()
        .expect("the gosok binary runs")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gosok failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("JSON output")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gosok-cli-plan-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One Philly VC (2869ce), imported with its arrivals compressed so that it queues.
fn philly_vc(dir: &Path) -> (PathBuf, PathBuf) {
    let out = support::philly::import_vc_2869ce(dir, &["--arrival-compression", "8"]);
    (out.join("cluster.toml"), out.join("workload.jsonl"))
}

#[test]
fn plan_site_answers_with_traceable_numbers() {
    let v = json(&gosok(&[
        "plan",
        "site",
        "--power-mw",
        "20",
        "--pue",
        "1.3",
        "--model",
        "H100",
        "--output",
        "json",
    ]));
    for key in [
        "it_power_mw",
        "nodes",
        "accelerators",
        "hbm_tb",
        "hbm_stacks",
        "dram_dies",
        "dram_wafers",
        "capex_krw",
        "energy_mwh_per_year",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    let nodes = v["nodes"].as_u64().unwrap();
    // 20 MW / 1.3 of IT power; a DGX H100 at its 10.2 kW maximum plus 645 W of fabric.
    assert_eq!(nodes, (20e6 / 1.3 / 10_845.0_f64).floor() as u64);
    assert_eq!(v["accelerators"].as_u64().unwrap(), nodes * 8);
    assert_eq!(v["hbm_stacks"].as_u64().unwrap(), nodes * 8 * 5);
    assert!(
        v["inputs"]["node_base_power_w"]["from"]
            .as_str()
            .unwrap()
            .contains("10200")
    );
    // A flag overrides the catalog and says so.
    let v = json(&gosok(&[
        "plan",
        "site",
        "--power-mw",
        "20",
        "--model",
        "rngd",
        "--node-price-krw",
        "1e8",
        "--output",
        "json",
    ]));
    assert_eq!(v["model"], "RNGD");
    assert_eq!(
        v["inputs"]["node_price_krw"]["from"],
        "flag --node-price-krw"
    );
    assert_eq!(
        v["capex_krw"].as_f64().unwrap(),
        1e8 * v["nodes"].as_f64().unwrap()
    );
}

#[test]
fn plan_rejects_bad_input_with_exit_code_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["plan", "site", "--power-mw", "-5", "--model", "H100"],
            "--power-mw",
        ),
        (
            &["plan", "site", "--power-mw", "20", "--model", "H1000"],
            "--model",
        ),
        (
            &[
                "plan",
                "site",
                "--power-mw",
                "20",
                "--model",
                "H100",
                "--pue",
                "0.9",
            ],
            "--pue",
        ),
        (
            &["plan", "site", "--power-mw", "20", "--model", "T4"],
            "--node-base-power-w",
        ),
        (
            &[
                "plan",
                "capacity",
                "--cluster",
                "demo",
                "--workload",
                "x",
                "--target",
                "p95<1h",
            ],
            "--target",
        ),
    ];
    for (args, flag) in cases {
        let out = gosok(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?} should name {flag}: {err}");
    }
}

#[test]
fn plan_capacity_finds_the_smallest_capacity_and_writes_its_report() {
    let dir = tmp("capacity");
    let (cluster, workload) = philly_vc(&dir);
    let out = dir.join("report");
    let v = json(&gosok(&[
        "plan",
        "capacity",
        "--cluster",
        s(&cluster),
        "--workload",
        s(&workload),
        "--target",
        "p95-wait<=30m",
        "--out",
        s(&out),
        "--output",
        "json",
    ]));
    let answer = &v["answer"];
    assert_eq!(answer["met"], true, "{v}");
    let added = answer["added_servers"].as_i64().unwrap();
    // Every capacity replayed below the answer misses, every one above meets.
    for p in v["curve"].as_array().unwrap() {
        let a = p["added_servers"].as_i64().unwrap();
        if a >= added {
            assert_eq!(p["met"], true, "{p}");
        }
    }
    let below = v["curve"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["added_servers"].as_i64().unwrap() < added)
        .max_by_key(|p| p["added_servers"].as_i64().unwrap())
        .expect("a capacity below the answer was replayed");
    assert_eq!(below["met"], false, "{below}");
    for f in [
        "curve.csv",
        "curve.svg",
        "report.html",
        "report.json",
        "cluster.toml",
    ] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    // The answer's cluster file replays to the same statistic.
    let r = json(&gosok(&[
        "sim",
        "replay",
        "--cluster",
        s(&out.join("cluster.toml")),
        "--workload",
        s(&workload),
        "--format",
        "json",
    ]));
    assert_eq!(
        r["accelerators"].as_f64().unwrap() as u64,
        answer["accelerators"].as_u64().unwrap()
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("p95-wait&lt;=30m"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn plan_demand_generates_a_replayable_workload() {
    let dir = tmp("demand");
    let (_, workload) = philly_vc(&dir);
    let out = dir.join("demand");
    let args = [
        "plan",
        "demand",
        "--fit",
        s(&workload),
        "--cluster",
        "demo",
        "--tier",
        "startup=3,share=0.6,growth=1.0",
        "--tier",
        "academic=2",
        "--days",
        "10",
        "--scale",
        "2",
        "--out",
        s(&out),
        "--output",
        "json",
    ];
    let v = json(&gosok(&args));
    assert!(v["jobs"].as_u64().unwrap() > 0);
    let first = std::fs::read_to_string(out.join("workload.jsonl")).unwrap();
    // Same seed, same workload.
    ok(&gosok(&args));
    assert_eq!(
        first,
        std::fs::read_to_string(out.join("workload.jsonl")).unwrap()
    );
    let r = json(&gosok(&[
        "sim",
        "replay",
        "--cluster",
        s(&out.join("cluster.toml")),
        "--workload",
        s(&out.join("workload.jsonl")),
        "--format",
        "json",
    ]));
    assert_eq!(r["jobs"].as_u64(), v["jobs"].as_u64());
    assert_eq!(r["jobs_rejected"].as_u64(), Some(0), "{r}");
    std::fs::remove_dir_all(&dir).ok();
}

//! Runs the real `gosok` binary's `trace` and `sim replay` subcommands the way a user would,
//! on the real traces in `../shared/traces` (never copied into the repository).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;
use support::philly::traces;

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

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gosok-cli-sim-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn philly_one_vc_imports_and_replays_with_the_helios_ordering() {
    let dir = tmp("philly");
    // One VC of philly_vc.csv (2869ce: 16 nodes, 315 jobs in the window), so the test
    // stays small.
    let out = support::philly::import_vc_2869ce(&dir, &[]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("import.json")).unwrap()).unwrap();
    let jobs = summary["jobs_written"].as_u64().unwrap();
    assert_eq!(jobs, 315, "{summary}");
    assert_eq!(summary["rows_read"], 82_247);
    assert_eq!(summary["accelerators"], 128);
    let lines = std::fs::read_to_string(out.join("workload.jsonl"))
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(lines, jobs);

    let run_dir = dir.join("runs");
    let json = ok(&gosok(&[
        "sim",
        "replay",
        "--cluster",
        s(&out.join("cluster.toml")),
        "--workload",
        s(&out.join("workload.jsonl")),
        "--policy",
        "fifo,sjf,srtf,gosok",
        "--format",
        "json",
        "--seed",
        "3",
        "--out",
        s(&run_dir),
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).expect("one JSON object");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    let get = |i: usize, f: &str| runs[i][f].as_f64().unwrap_or_else(|| panic!("{f}"));
    for (i, p) in ["fifo", "sjf", "srtf", "gosok"].iter().enumerate() {
        assert_eq!(runs[i]["policy"], *p);
        assert_eq!(runs[i]["seed"], 3);
        assert_eq!(get(i, "jobs_completed") as u64, jobs, "{p}");
        for f in [
            "avg_jct_s",
            "p50_jct_s",
            "p99_jct_s",
            "avg_queue_s",
            "utilization",
            "makespan_s",
            "energy_kwh",
        ] {
            assert!(get(i, f) >= 0.0, "{p} {f}");
        }
        assert!(runs[i]["tenants"][0]["tenant"] == "2869ce");
        assert!(runs[i]["sites"][0]["peak_power_w"].as_f64().unwrap() > 0.0);
    }
    // This VC is busy: the Helios ordering shows in JCT and queueing delay.
    assert!(get(0, "avg_queue_s") > get(1, "avg_queue_s"), "fifo > sjf");
    assert!(
        get(1, "avg_queue_s") >= get(2, "avg_queue_s"),
        "sjf >= srtf"
    );
    assert!(get(0, "avg_jct_s") > get(1, "avg_jct_s"), "fifo > sjf");
    assert!(get(1, "avg_jct_s") > get(2, "avg_jct_s"), "sjf > srtf");
    assert_eq!(get(0, "preemptions"), 0.0);
    for f in [
        "report.json",
        "series-fifo.csv",
        "jobs-srtf.csv",
        "jct_cdf.svg",
        "queue_cdf.svg",
        "utilization.svg",
    ] {
        assert!(run_dir.join(f).is_file(), "{f}");
    }
    let series = std::fs::read_to_string(run_dir.join("series-gosok.csv")).unwrap();
    assert!(series.starts_with("t_s,running,pending,utilization,power_w_2869ce\n"));

    // The same seed gives the same JSON.
    let again = ok(&gosok(&[
        "sim",
        "replay",
        "--cluster",
        s(&out.join("cluster.toml")),
        "--workload",
        s(&out.join("workload.jsonl")),
        "--policy",
        "fifo,sjf,srtf,gosok",
        "--format",
        "json",
        "--seed",
        "3",
    ]));
    assert_eq!(json, again);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn philly_compare_prints_ours_beside_the_published_averages() {
    let t = traces().join("philly-pollux");
    let json = ok(&gosok(&[
        "sim",
        "philly-compare",
        "--traces",
        s(&t),
        "--vcs",
        "ed69ec",
        "--policy",
        "fifo,srtf",
        "--format",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = v["comparison"]["rows"].as_array().unwrap();
    let vc = rows.iter().find(|r| r["scope"] == "ed69ec").unwrap();
    assert_eq!(vc["jct"]["fifo"]["published_s"], 28_345.0);
    assert!(vc["jct"]["fifo"]["ours_s"].as_f64().unwrap() > 1000.0);
    assert_eq!(rows.last().unwrap()["scope"], "all");
    assert_eq!(v["input"]["from"], "2017-10-01");
}

#[test]
fn examples_and_the_tiresias_sample_replay() {
    let ex = examples();
    let out = gosok(&[
        "sim",
        "replay",
        "--cluster",
        s(&ex.join("cluster.toml")),
        "--workload",
        s(&ex.join("workload.jsonl")),
        "--policy",
        "all",
    ]);
    let table = ok(&out);
    assert!(
        table.contains("avg JCT") && table.contains("srtf"),
        "{table}"
    );

    let dir = tmp("tiresias");
    ok(&gosok(&[
        "trace",
        "import",
        "csv",
        "--jobs",
        s(&traces().join("tiresias-sample/60_job.csv")),
        "--map",
        "id=job_id,submit_s=submit_time,duration_s=duration,accelerators=num_gpu",
        "--cluster",
        s(&ex.join("tiresias-n16g4.toml")),
        "--tenant",
        "tiresias",
        "--out",
        s(&dir),
    ]));
    let json = ok(&gosok(&[
        "sim",
        "replay",
        "--cluster",
        s(&dir.join("cluster.toml")),
        "--workload",
        s(&dir.join("workload.jsonl")),
        "--policy",
        "fifo",
        "--format",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["jobs_completed"], 60);
    assert_eq!(v["policy"], "fifo");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn synthetic_workloads_are_seeded_and_replay_with_a_tick() {
    let dir = tmp("synth");
    let a = dir.join("a");
    ok(&gosok(&[
        "trace",
        "synth",
        "--nodes",
        "40",
        "--jobs",
        "400",
        "--seed",
        "5",
        "--out",
        s(&a),
    ]));
    let b = dir.join("b");
    ok(&gosok(&[
        "trace",
        "synth",
        "--nodes",
        "40",
        "--jobs",
        "400",
        "--seed",
        "5",
        "--out",
        s(&b),
    ]));
    let read = |d: &Path| std::fs::read_to_string(d.join("workload.jsonl")).unwrap();
    assert_eq!(read(&a), read(&b));
    let summary = std::fs::read_to_string(a.join("import.json")).unwrap();
    assert!(summary.contains("\"seed\": 5"), "{summary}");
    let json = ok(&gosok(&[
        "sim",
        "replay",
        "--cluster",
        s(&a.join("cluster.toml")),
        "--workload",
        s(&a.join("workload.jsonl")),
        "--policy",
        "gosok",
        "--tick-s",
        "60",
        "--format",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["tick_s"], 60);
    let n = |f: &str| v[f].as_u64().unwrap();
    assert_eq!(n("jobs_unfinished"), 0);
    assert_eq!(
        n("jobs_completed") + n("jobs_failed") + n("jobs_rejected"),
        400
    );
    assert!(n("jobs_completed") > 390);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_inputs_fail_with_file_line_and_column_unless_skipped() {
    let dir = tmp("bad");
    let w = dir.join("w.jsonl");
    std::fs::write(
        &w,
        "{\"tenant\":\"snu-ai-lab\",\"submit_s\":0,\"duration_s\":10,\"groups\":[{\"accelerators\":1}]}\n\
         {\"tenant\":\"snu-ai-lab\",\"submit_s\":0,\"duration_s\":-10,\"groups\":[{\"accelerators\":1}]}\n",
    )
    .unwrap();
    let cluster = examples().join("cluster.toml");
    let args = |skip: bool| {
        let mut v = vec![
            "sim".to_string(),
            "replay".into(),
            "--cluster".into(),
            s(&cluster).into(),
            "--workload".into(),
            s(&w).into(),
            "--format".into(),
            "json".into(),
        ];
        if skip {
            v.push("--skip-bad-rows".into());
        }
        v
    };
    let out = Command::new(env!("CARGO_BIN_EXE_gosok"))
        .args(args(false))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("w.jsonl:2:50: duration_s: -10 is negative"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gosok"))
        .args(args(true))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(v["input"]["skipped_bad_rows"]["rows"], 1);
    assert_eq!(v["jobs_completed"], 1);

    // A tenant the cluster does not declare is named at its line.
    std::fs::write(
        &w,
        "{\"tenant\":\"nobody\",\"submit_s\":0,\"duration_s\":10,\"groups\":[{\"accelerators\":1}]}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gosok"))
        .args(args(false))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("w.jsonl:1:1: tenant \"nobody\" is not declared"),
        "{err}"
    );

    // An openb pod list without times cannot be replayed.
    let openb = traces().join("alibaba-openb-v2023/csv");
    let out = gosok(&[
        "trace",
        "import",
        "openb",
        "--nodes",
        s(&openb.join("openb_node_list_gpu_node.csv")),
        "--pods",
        s(&openb.join("openb_pod_list_multigpu20.csv")),
        "--out",
        s(&dir.join("o")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "openb_pod_list_multigpu20.csv:1:1: this pod list has no \"creation_time\" column"
        ),
        "{err}"
    );
    // An unknown policy names the flag.
    let out = gosok(&[
        "sim",
        "replay",
        "--cluster",
        "x",
        "--workload",
        "y",
        "--policy",
        "lifo",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--policy"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn openb_default_pods_import_and_replay() {
    let openb = traces().join("alibaba-openb-v2023/csv");
    let dir = tmp("openb");
    ok(&gosok(&[
        "trace",
        "import",
        "openb",
        "--nodes",
        s(&openb.join("openb_node_list_all_node.csv")),
        "--pods",
        s(&openb.join("openb_pod_list_default.csv")),
        "--out",
        s(&dir),
    ]));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("import.json")).unwrap()).unwrap();
    assert_eq!(summary["rows_read"], 8152);
    assert_eq!(summary["nodes"], 1523);
    assert_eq!(summary["accelerators"], 6212);
    let left_out = summary["dropped"]["never scheduled (no scheduled_time): no run time to replay"]
        .as_u64()
        .unwrap();
    assert_eq!(summary["jobs_written"].as_u64().unwrap() + left_out, 8152);
    let json = ok(&gosok(&[
        "sim",
        "replay",
        "--cluster",
        s(&dir.join("cluster.toml")),
        "--workload",
        s(&dir.join("workload.jsonl")),
        "--policy",
        "gosok",
        "--format",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["jobs"], summary["jobs_written"]);
    assert!(v["jobs_completed"].as_u64().unwrap() > 0);
    std::fs::remove_dir_all(&dir).ok();
}

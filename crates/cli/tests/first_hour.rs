//! A researcher's first hour, end to end: the real `gosok` binary, a real `gosok up` (its
//! controller, agents and demo tenants), and the CLI as a user types it — the README's
//! command blocks, batch scripts, arrays with a cap, dependencies across a restart, job
//! control, the timed-out state, closed pipes, model names and working directories.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod support;
use support::up::{Up, text};

const GOSOK: &str = env!("CARGO_BIN_EXE_gosok");

/// The README's command blocks marked `readme-test`, in order.
fn readme_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let mut out = Vec::new();
    let mut rest = readme.as_str();
    while let Some(i) = rest.find("<!-- readme-test") {
        rest = &rest[i..];
        let start = rest.find("```sh\n").unwrap() + 6;
        let end = start + rest[start..].find("```").unwrap();
        out.push(rest[start..end].to_string());
        rest = &rest[end..];
    }
    out
}

#[test]
fn the_readme_command_blocks_work_as_printed_on_gosok_up() {
    let up = Up::start();
    let blocks = readme_blocks();
    assert!(blocks.len() >= 2, "{blocks:?}");
    // The examples the README names, where a user in a clone has them.
    let examples = up.path().join("examples");
    std::fs::create_dir_all(&examples).unwrap();
    for f in ["train.sh", "job.yaml"] {
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/").to_string() + f,
            examples.join(f),
        )
        .unwrap();
    }
    let bin = Path::new(GOSOK).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!("set -e\n{}", blocks.join("\n"));
    let o = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(up.path())
        .env("PATH", path)
        .env_remove("GOSOK_CONFIG")
        .env_remove("GOSOK_AS")
        .env_remove("GOSOK_SERVER")
        .env_remove("GOSOK_TOKEN")
        .output()
        .unwrap();
    let (ok, out, err) = text(o);
    assert!(ok, "the README's commands failed:\n{out}\n{err}");
    // What the blocks promise: ranks in the quick start, a batch script that ran both
    // epochs, a dependant that ran after it, the released job.
    assert!(out.contains("rank 1 of 2"), "{out}");
    assert!(out.contains("epoch 2"), "{out}");
    assert!(err.contains("ignored --output"), "{err}");
    up.wait_state(12, "succeeded");
    up.wait_state(13, "succeeded");
    for id in 4..=11 {
        up.wait_state(id, "succeeded");
    }
}

#[test]
fn a_batch_script_array_runs_each_index_with_at_most_its_cap_at_once() {
    let up = Up::start();
    let marks = up.path().join("marks");
    let script = up.write(
        "sweep.sh",
        &format!(
            "#!/bin/sh\n#SBATCH --job-name=sweep\n#SBATCH --array=0-5%2\n#SBATCH --gpus-per-node=1\n#SBATCH --mail-type=END\n#GOSOK --env SEED=7\n\necho \"start $GOSOK_ARRAY_TASK_ID $SEED\" >> {m}\nsleep 2\necho \"end $GOSOK_ARRAY_TASK_ID\" >> {m}\n",
            m = marks.display()
        ),
    );
    let (ok, out, err) = up.gosok(&["submit", script.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("job array"), "{out}");
    assert!(err.contains("sweep.sh:5: ignored --mail-type"), "{err}");
    let first: u64 = out
        .split_whitespace()
        .nth(3)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    for id in first..first + 6 {
        let j = up.wait_state(id, "succeeded");
        assert_eq!(j["array_job_id"], first, "{j}");
        assert_eq!(j["name"], "sweep");
    }
    // Every index ran once, and never more than two at a time.
    let m = std::fs::read_to_string(&marks).unwrap();
    let mut running = 0;
    let mut most = 0;
    let mut started = Vec::new();
    for l in m.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w[0] == "start" {
            running += 1;
            most = most.max(running);
            assert_eq!(w[2], "7", "{m}");
            started.push(w[1].parse::<u32>().unwrap());
        } else {
            running -= 1;
        }
    }
    started.sort_unstable();
    assert_eq!(started, [0, 1, 2, 3, 4, 5], "{m}");
    assert!(most <= 2, "more than 2 tasks of the array at once:\n{m}");
    assert_eq!(most, 2, "the cap allows 2 at once:\n{m}");
    // A bad directive names its line; nothing is submitted.
    let bad = up.write(
        "bad.sh",
        "#!/bin/sh\n#SBATCH --nodes=1\n#SBATCH --time=soon\necho\n",
    );
    let (ok, _, err) = up.gosok(&["submit", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("bad.sh:3") && err.contains("--time"), "{err}");
}

#[test]
fn dependencies_and_holds_survive_a_controller_restart() {
    let mut up = Up::start();
    let a = up.submit(&["--accelerators", "1", "--", "sh", "-c", "sleep 8"]);
    let fails = up.submit(&["--accelerators", "1", "--", "sh", "-c", "exit 3"]);
    let b = up.submit(&[
        "--accelerators",
        "1",
        "--dependency",
        &format!("afterok:{a}"),
        "--",
        "true",
    ]);
    let c = up.submit(&[
        "--accelerators",
        "1",
        "--dependency",
        &format!("afterany:{b}"),
        "--",
        "true",
    ]);
    let never = up.submit(&[
        "--accelerators",
        "1",
        "--dependency",
        &format!("afterok:{fails}"),
        "--",
        "true",
    ]);
    let cleanup = up.submit(&[
        "--accelerators",
        "1",
        "--dependency",
        &format!("afternotok:{fails}"),
        "--",
        "true",
    ]);
    let held = up.submit(&["--hold", "--accelerators", "1", "--", "true"]);
    let array = up.submit(&[
        "--array",
        "0-2%1",
        "--accelerators",
        "1",
        "--",
        "sh",
        "-c",
        "sleep 2",
    ]);
    up.wait_state(a, "running");
    let v = up.job(b);
    assert_eq!(v["state"], "pending");
    assert!(
        v["wait"]["text"].as_str().unwrap().contains("dependency"),
        "{v}"
    );
    let shown = up.ok(&["show", &b.to_string()]);
    assert!(
        shown.contains(&format!("dependency: afterok:{a}")),
        "{shown}"
    );
    up.wait_state(fails, "failed");
    let v = up.wait_state(never, "cancelled");
    assert!(
        v["reason"].as_str().unwrap().contains("never satisfied"),
        "{v}"
    );
    up.wait_state(cleanup, "succeeded");
    // The controller (and its agents) stop while `a` runs; what waits on it keeps waiting.
    up.restart();
    assert_eq!(up.job(b)["state"], "pending");
    assert_eq!(up.job(held)["state"], "held");
    up.wait_state(a, "succeeded");
    up.wait_state(b, "succeeded");
    up.wait_state(c, "succeeded");
    let ended = |id| up.job(id)["ended_at_ms"].as_u64().unwrap();
    let started = |id: u64| {
        up.job(id)["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == "started")
            .and_then(|e| e["at_ms"].as_u64())
            .unwrap()
    };
    assert!(started(b) >= ended(a) && started(c) >= ended(b));
    // The array's cap holds across the restart: one task at a time, all three run.
    up.wait("the array to finish", 90, || {
        let states: Vec<Value> = (array..array + 3)
            .map(|id| up.job(id)["state"].clone())
            .collect();
        let running = states.iter().filter(|s| *s == "running").count();
        assert!(
            running <= 1,
            "more than one task of a %1 array running: {states:?}"
        );
        states.iter().all(|s| s == "succeeded")
    });
    // Still held after the restart, until released.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(up.job(held)["state"], "held");
    up.ok(&["release", &held.to_string()]);
    up.wait_state(held, "succeeded");
}

#[test]
fn hold_release_requeue_and_cancel_by_ids_and_filters() {
    let up = Up::start();
    let x = up.submit(&[
        "--name",
        "long",
        "--accelerators",
        "1",
        "--",
        "sleep",
        "300",
    ]);
    let y = up.submit(&[
        "--name",
        "long",
        "--accelerators",
        "1",
        "--",
        "sleep",
        "300",
    ]);
    let z = up.submit(&[
        "--name",
        "other",
        "--accelerators",
        "1",
        "--",
        "sleep",
        "300",
    ]);
    let h = up.submit(&["--accelerators", "1", "--", "true"]);
    // Held at once if still pending (a tick may have started it: then it is refused).
    let (held_ok, _, err) = up.gosok(&["hold", &h.to_string()]);
    if held_ok {
        assert_eq!(up.job(h)["state"], "held");
        let out = up.ok(&["jobs", "--state", "held"]);
        assert!(out.contains(&format!("{h} ")), "{out}");
        up.ok(&["release", &h.to_string()]);
    } else {
        assert!(err.contains("only a pending job"), "{err}");
    }
    up.wait_state(h, "succeeded");
    up.wait_state(x, "running");
    // Requeued and held: stopped, back in the queue, not started again until released.
    let out = up.ok(&["requeue", "--hold", &x.to_string()]);
    assert!(out.contains(&format!("job {x}: held")), "{out}");
    let v = up.job(x);
    assert!(v["events"].to_string().contains("requeued by"), "{v}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(up.job(x)["state"], "held");
    up.ok(&["release", &x.to_string()]);
    let v = up.wait_state(x, "running");
    assert_eq!(v["attempt"], 2, "{v}");
    // Filters: every job named `long`; then several ids at once, one of them unknown.
    let out = up.ok(&["jobs", "--name", "long"]);
    assert!(
        out.contains(&x.to_string()) && !out.contains(" other "),
        "{out}"
    );
    let out = up.ok(&["cancel", "--name", "long"]);
    assert!(
        out.contains(&format!("job {x}: cancelled"))
            && out.contains(&format!("job {y}: cancelled")),
        "{out}"
    );
    assert_eq!(up.job(z)["state"], "running");
    let (ok, out, err) = up.gosok(&["cancel", &z.to_string(), "999"]);
    assert!(!ok, "an unknown id fails the command");
    assert!(out.contains(&format!("job {z}: cancelled")), "{out}");
    assert!(
        err.contains("job 999") && err.contains("not known"),
        "{err}"
    );
}

#[test]
fn a_job_at_its_time_limit_ends_timed_out_and_output_is_in_words() {
    let up = Up::start();
    let t = up.submit(&["--accelerators", "1", "--limit-s", "2", "--", "sleep", "60"]);
    let v = up.wait_state(t, "timed_out");
    assert!(
        v["reason"].as_str().unwrap().contains("runtime limit"),
        "{v}"
    );
    let out = up.ok(&["show", &t.to_string()]);
    assert!(out.contains(&format!("job {t}  timed out")), "{out}");
    assert!(
        out.contains("submitted: 20") && out.contains(" ago)"),
        "{out}"
    );
    let out = up.ok(&["jobs", "--state", "timed_out"]);
    assert!(out.contains("timed out"), "{out}");
    // A preemption in words: low-priority preemptible work on every B200, then an operator
    // submits a high-priority job for the same tenant (under fair share a higher class takes
    // only its own tenant's capacity).
    let spec = up.write(
        "low.yaml",
        "priority: low\npreemptible: true\ngroups:\n  - replicas: 1\n    accelerators: 8\n    models: [b200]\ncommand: [sleep, '300']\n",
    );
    let low: Vec<u64> = (0..2)
        .map(|_| up.submit(&[spec.to_str().unwrap()]))
        .collect();
    for &l in &low {
        up.wait_state(l, "running");
    }
    let (ok, out, err) = up.gosok(&["--as", "nobody", "jobs"]);
    assert!(!ok && err.contains("tenant_tokens"), "{out}{err}");
    let high = up
        .cmd(&[
            "submit",
            "--output",
            "json",
            "--tenant",
            "seoul-startup",
            "--priority",
            "high",
            "--accelerators",
            "8",
            "--model",
            "B200",
            "--",
            "true",
        ])
        .env_remove("GOSOK_AS")
        .output()
        .unwrap();
    let (ok, out, err) = text(high);
    assert!(ok, "{out}{err}");
    let high: u64 = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_u64()
        .unwrap();
    up.wait_state(high, "succeeded");
    let shown: String = low
        .iter()
        .map(|l| up.ok(&["show", &l.to_string()]))
        .collect();
    assert!(
        shown.contains(&format!("preempted by job {high} (priority)")),
        "{shown}"
    );
    assert!(!shown.contains("{\"kind\""), "{shown}");
}

#[test]
fn closed_pipes_global_flags_and_hidden_commands() {
    let up = Up::start();
    for _ in 0..3 {
        up.submit(&["--accelerators", "1", "--", "sh", "-c", "seq 1 20000"]);
    }
    up.wait_state(3, "succeeded");
    // `| head -1`: no panic, no error; the status is what a Unix tool's would be.
    for cmd in ["nodes", "jobs", "catalog", "logs 1", "show 1"] {
        let o = Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; \"$GOSOK\" {cmd} | head -1"))
            .current_dir(up.path())
            .env("GOSOK", GOSOK)
            .env(
                "GOSOK_CONFIG",
                up.path().join("gosok-data/credentials.toml"),
            )
            .env("GOSOK_AS", "seoul-startup")
            .output()
            .unwrap();
        let (_, out, err) = text(o);
        assert_eq!(out.lines().count(), 1, "{cmd}: {out}");
        assert!(
            err.is_empty(),
            "gosok {cmd} | head -1 wrote to stderr: {err}"
        );
    }
    // Global flags before the subcommand, with the credentials file as the config.
    let creds = up.path().join("gosok-data/credentials.toml");
    let o = Command::new(GOSOK)
        .args([
            "--config",
            creds.to_str().unwrap(),
            "--as",
            "seoul-startup",
            "--output",
            "json",
            "jobs",
            "--limit",
            "2",
        ])
        .env_remove("GOSOK_CONFIG")
        .env_remove("GOSOK_AS")
        .output()
        .unwrap();
    let (ok, out, err) = text(o);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 2);
    // Without --as: the admin token of the same file.
    let o = Command::new(GOSOK)
        .args(["tenants", "--config", creds.to_str().unwrap()])
        .env_remove("GOSOK_CONFIG")
        .env_remove("GOSOK_AS")
        .output()
        .unwrap();
    let (ok, out, err) = text(o);
    assert!(ok && out.contains("hyundai-ai"), "{out}{err}");
    // A typo is never answered with the hidden watchdog.
    let (_, _, err) = up.gosok(&["agent-watchdg"]);
    assert!(!err.contains("agent-watchdog"), "{err}");
    let (_, _, err) = up.gosok(&["agnet"]);
    assert!(err.contains("agent") && !err.contains("watchdog"), "{err}");
    // A second `gosok up` on the same port creates nothing.
    let other = up.path().join("other");
    let o = Command::new(GOSOK)
        .args([
            "up",
            "--listen",
            &format!("127.0.0.1:{}", up.port),
            "--data-dir",
        ])
        .arg(&other)
        .output()
        .unwrap();
    let (ok, _, err) = text(o);
    assert!(!ok && err.contains("cannot listen"), "{err}");
    assert!(!other.exists(), "a failed up created its data directory");
}

#[test]
fn model_names_catalog_fractions_specs_and_working_directories() {
    let up = Up::start();
    // Any case; a typo gets a suggestion.
    let j = up.submit(&["--accelerators", "1", "--model", "h200", "--", "true"]);
    assert_eq!(up.job(j)["spec"]["groups"][0]["models"][0], "H200");
    let (ok, _, err) = up.gosok(&[
        "submit",
        "--accelerators",
        "1",
        "--model",
        "H2000",
        "--",
        "true",
    ]);
    assert!(!ok && err.contains("did you mean \"H200\""), "{err}");
    let out = up.ok(&["catalog"]);
    assert!(
        out.contains("RNGD") && out.contains("GiB") && out.contains("THROUGHPUT"),
        "{out}"
    );
    let wide = up.ok(&["catalog", "--output", "wide"]);
    assert!(wide.contains("SOURCE"), "{wide}");
    // Half an NPU.
    let half = up.submit(&["--accelerators", "0.5", "--model", "rngd", "--", "true"]);
    let v = up.wait_state(half, "succeeded");
    assert_eq!(v["accelerators"], 0.5);
    let (ok, _, err) = up.gosok(&["submit", "--accelerators", "1.5", "--", "true"]);
    assert!(!ok && err.contains("fraction"), "{err}");
    // Working directory: this one by default, `.` and relative ones resolved here.
    let sub = up.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let here = up.submit(&["--accelerators", "1", "--", "pwd"]);
    let dot = up.submit(&["--accelerators", "1", "--workdir", "./sub/..", "--", "pwd"]);
    let rel = up.submit(&["--accelerators", "1", "--workdir", "sub", "--", "pwd"]);
    for (id, dir) in [
        (here, up.path().to_path_buf()),
        (dot, up.path().to_path_buf()),
        (rel, sub.clone()),
    ] {
        up.wait_state(id, "succeeded");
        let out = up.ok(&["logs", &id.to_string()]);
        assert_eq!(out.trim(), dir.display().to_string(), "job {id}");
        let shown = up.ok(&["show", &id.to_string()]);
        assert!(
            shown.contains(&format!("workdir: {}", dir.display())),
            "{shown}"
        );
    }
    // YAML, TOML and JSON on standard input.
    let yaml = up.write(
        "job.yaml",
        "name: y\ngroups:\n  - accelerators: 1\n    models: [H100]\ncommand: [echo, from-yaml]\n",
    );
    let y = up.submit(&[yaml.to_str().unwrap()]);
    let toml = up.write(
        "job.toml",
        "name = \"t\"\ncommand = [\"echo\", \"from-toml\"]\n[[groups]]\naccelerators = 1\n",
    );
    let t = up.submit(&[toml.to_str().unwrap()]);
    let mut c = up
        .cmd(&["submit", "-", "--output", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(
            br#"{"name": "s", "groups": [{"accelerators": 1}], "command": ["echo", "from-stdin"]}"#,
        )
        .unwrap();
    let (ok, out, _) = text(c.wait_with_output().unwrap());
    assert!(ok, "{out}");
    let s: u64 = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_u64()
        .unwrap();
    for (id, word) in [(y, "from-yaml"), (t, "from-toml"), (s, "from-stdin")] {
        up.wait_state(id, "succeeded");
        assert_eq!(up.ok(&["logs", &id.to_string()]).trim(), word);
    }
    let bad = up.write("bad.yaml", "groups:\n  - accelerators: [1\n");
    let (ok, _, err) = up.gosok(&["submit", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("bad.yaml:"), "{err}");
}

//! `gosok bench agents`: the controller (in this process) and a real `gosok agent` process
//! hosting virtual nodes; trivial tasks run as real processes.
//!
//! Phase 1: `--tasks` one-accelerator jobs running `true`, submitted from several connections
//! on `--nodes` virtual nodes; reports task starts per second and submit-to-running latency
//! (from the job's history: the moment the controller placed it and handed it to the agent).
//! Phase 2: `--latency-samples` jobs submitted one at a time (every 50 ms) while capacity is
//! free; reports submit-to-running latency.
//! Phase 3: an agent with `--idle-nodes` virtual nodes and nothing to run; reports its CPU
//! and memory per node.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use gosok_server::config::Config;
use serde::Serialize;
use serde_json::json;

use crate::api::Api;

#[derive(Args)]
pub struct BenchAgentsArgs {
    /// Trivial tasks (`true` on one accelerator) timed in phase 1.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    tasks: u64,
    /// Virtual nodes (8 accelerators each) in phase 1.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    nodes: u64,
    /// Client connections submitting in phase 1.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    connections: u64,
    /// Jobs submitted one at a time, 50 ms apart, while capacity is free (phase 2).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    latency_samples: u64,
    /// Virtual nodes of the idle agent in phase 3.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    idle_nodes: u64,
    /// How long the idle agent is watched.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_s: u64,
    /// Where the agents keep their task files (default: /dev/shm when there is one, else the
    /// bench's temporary directory).
    #[arg(long)]
    agent_dir: Option<std::path::PathBuf>,
    /// How the agents isolate tasks: `sandbox` (the default as root) or `none`.
    #[arg(long, value_parser = ["sandbox", "none"])]
    isolation: Option<String>,
    /// The controller's agent lease in ms (default: the controller's default).
    #[arg(long, value_parser = clap::value_parser!(u64).range(300..=3_600_000))]
    lease_ms: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    isolation: String,
    lease_ms: u64,
    nodes: u64,
    tasks: u64,
    connections: u64,
    /// Tasks whose process ran and was reported, per second, first start to last start.
    task_starts_per_s: f64,
    /// Submissions (all durable) per second.
    submits_per_s: f64,
    /// Under the phase-1 flood (capacity is not free: queueing included).
    flood_submit_to_running_p50_ms: u64,
    flood_submit_to_running_p99_ms: u64,
    /// Phase 2: one job at a time, capacity free.
    submit_to_running_p50_ms: u64,
    submit_to_running_p99_ms: u64,
    submit_to_running_max_ms: u64,
    /// First submission to the last task's success.
    all_done_s: f64,
    /// What starting one task costs the agent: its sandbox (account, control group, scratch
    /// directory, mount namespace) and the fork and exec, phase 1 and 2 together.
    task_start_p50_ms: f64,
    task_start_p99_ms: f64,
    /// Of which making the sandbox (account, control group, scratch directory).
    sandbox_p50_ms: f64,
    /// Phase 1: nodes the controller lost because the agent's lease ran out, times the agent
    /// fenced itself (killed its tasks for a lost lease), and attempts beyond each job's
    /// first. All three are 0 when a flood of starts costs time, not leases.
    lease_expiries: u64,
    agent_fences: u64,
    extra_attempts: u64,
    idle_nodes: u64,
    idle_cpu_percent_of_one_core: f64,
    idle_cpu_us_per_node_per_s: f64,
    idle_rss_mib: f64,
    idle_rss_kib_per_node: f64,
}

const CLUSTER: &str = r#"
[[site]]
name = "bench"
region = "local"
jurisdiction = "KR"
power_budget_mw = 200.0
pue = 1.2

# The agents' virtual nodes join as they register.
[[rack]]
name = "bench-r1"
site = "bench"
power_cap_kw = 100000.0
allow_undeclared_nodes = true

[[rack]]
name = "idle-r1"
site = "bench"
power_cap_kw = 100000.0
allow_undeclared_nodes = true

[[tenant]]
name = "bench"
tier = "startup"
"#;

fn spawn_agent(
    base: &str,
    token: &str,
    rack: &str,
    nodes: u64,
    work: &std::path::Path,
    isolation: &str,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let token_file = work.with_extension("token");
    gosok_server::write_private(&token_file, token.as_bytes())?;
    let uid_map = work.with_extension("uids");
    Command::new(exe)
        .arg("agent")
        .args(["--server", base])
        .arg("--token-file")
        .arg(&token_file)
        .args(["--isolation", isolation])
        .arg("--uid-map")
        .arg(&uid_map)
        .args(["--site", "bench", "--rack", rack, "--name", rack])
        .args([
            "--nodes",
            &nodes.to_string(),
            "--fake-accelerators",
            "8xH100",
        ])
        .args(["--cpu-cores", "64", "--mem-mib", "262144"])
        .arg("--work-dir")
        .arg(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.with_extension("log"))?)
        .spawn()
        .context("cannot start the agent")
}

fn wait_up(api: &Api, prefix: &str, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = api.call("GET", "/v1/nodes", None)?;
        let up = v["nodes"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|x| {
                    x["state"] == "up" && x["name"].as_str().is_some_and(|s| s.starts_with(prefix))
                })
                .count()
        });
        if up as u64 >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {up} of {n} nodes came up");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (user + system CPU in clock ticks, resident set in KiB) of a process.
fn proc_usage(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted after the command's parenthesis.
    let ticks = f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok((ticks, rss))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(a: BenchAgentsArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("gosok-bench-agents-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let admin = gosok_server::init(&dir)?;
    let defaults = Config::default();
    let cfg = Config {
        listen: "127.0.0.1:0".into(),
        submit_rate_per_s: 1e9,
        submit_burst: 1e9,
        agent_lease_ms: a.lease_ms.unwrap_or(defaults.agent_lease_ms),
        // One tenant submits every task at once; agents and submitters share one address.
        max_pending_jobs_per_tenant: u64::MAX,
        max_connections_per_address: defaults.max_connections,
        ..defaults
    };
    let lease_ms = cfg.agent_lease_ms;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let isolation = a
        .isolation
        .clone()
        .unwrap_or_else(|| if root { "sandbox" } else { "none" }.into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let running = rt.block_on(gosok_server::start(&dir, cfg))?;
    let base = format!("http://{}", running.addr);
    let api = |tok: &str| Api::new(&base, tok);
    let admin_api = api(&admin);
    let cluster: toml::Value = toml::from_str(CLUSTER)?;
    admin_api.call("PUT", "/v1/topology", Some(&serde_json::to_value(cluster)?))?;
    // One token per agent: each acts only for the nodes it holds.
    let agent_token = || -> anyhow::Result<String> {
        Ok(
            admin_api.call("POST", "/v1/agent-tokens", Some(&json!({})))?["token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let tenant = admin_api.call("POST", "/v1/tenants/bench/tokens", Some(&json!({})))?["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // The agents' task files go to memory where there is a tmpfs: on one machine their churn
    // (three files per task) would otherwise be flushed by the controller's fsyncs, which a
    // real highway does not share with its agents.
    let shm = std::path::Path::new("/dev/shm");
    let work = match &a.agent_dir {
        Some(d) => d.join(format!("gosok-bench-agents-{}", std::process::id())),
        None if shm.is_dir() => shm.join(format!("gosok-bench-agents-{}", std::process::id())),
        None => dir.join("agents"),
    };
    std::fs::create_dir_all(&work)?;
    eprintln!("bench: agents isolate tasks with --isolation {isolation}, lease {lease_ms} ms");
    let mut agent = spawn_agent(
        &base,
        &agent_token()?,
        "bench-r1",
        a.nodes,
        &work.join("work"),
        &isolation,
    )?;
    let r = phase1(&a, &api(&tenant), &admin_api, &api)
        .and_then(|p1| Ok((p1, phase2(&a, &api(&tenant))?)));
    let _ = agent.kill();
    let _ = agent.wait();
    let ((starts, submits, flood, done_s, extra_attempts, lease_expiries), lat) = r?;
    let agent_log =
        std::fs::read_to_string(work.join("work").with_extension("log")).unwrap_or_default();
    let agent_fences = agent_log.matches("lease lost").count() as u64;
    // What one start costs the agent (sandbox, fork, exec), from its own log.
    let field = |name: &str| {
        let mut v: Vec<u64> = agent_log
            .lines()
            .filter_map(|l| l.split(name).nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    };
    let spawn_us = field("spawn_us=");
    let sandbox_us = field("sandbox_us=");
    eprintln!("bench: idle agent with {} virtual nodes", a.idle_nodes);
    let mut idle = spawn_agent(
        &base,
        &agent_token()?,
        "idle-r1",
        a.idle_nodes,
        &work.join("idle"),
        &isolation,
    )?;
    let r = (|| -> anyhow::Result<(f64, u64)> {
        wait_up(&admin_api, "idle-r1", a.idle_nodes)?;
        // Let start-up settle before measuring.
        std::thread::sleep(Duration::from_secs(2));
        let (t0, _) = proc_usage(idle.id())?;
        let w = Instant::now();
        std::thread::sleep(Duration::from_secs(a.idle_s));
        let (t1, rss) = proc_usage(idle.id())?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpu_s = (t1 - t0) as f64 / hz;
        Ok((cpu_s / w.elapsed().as_secs_f64(), rss))
    })();
    let _ = idle.kill();
    let _ = idle.wait();
    let (cpu_frac, rss_kib) = r?;
    rt.block_on(running.stop())?;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&work);
    let report = Report {
        isolation,
        lease_ms,
        nodes: a.nodes,
        tasks: a.tasks,
        connections: a.connections,
        task_starts_per_s: starts,
        submits_per_s: submits,
        flood_submit_to_running_p50_ms: percentile(&flood, 0.5),
        flood_submit_to_running_p99_ms: percentile(&flood, 0.99),
        submit_to_running_p50_ms: percentile(&lat, 0.5),
        submit_to_running_p99_ms: percentile(&lat, 0.99),
        submit_to_running_max_ms: lat.last().copied().unwrap_or(0),
        all_done_s: done_s,
        task_start_p50_ms: percentile(&spawn_us, 0.5) as f64 / 1000.0,
        task_start_p99_ms: percentile(&spawn_us, 0.99) as f64 / 1000.0,
        sandbox_p50_ms: percentile(&sandbox_us, 0.5) as f64 / 1000.0,
        lease_expiries,
        agent_fences,
        extra_attempts,
        idle_nodes: a.idle_nodes,
        idle_cpu_percent_of_one_core: cpu_frac * 100.0,
        idle_cpu_us_per_node_per_s: cpu_frac * 1e6 / a.idle_nodes as f64,
        idle_rss_mib: rss_kib as f64 / 1024.0,
        idle_rss_kib_per_node: rss_kib as f64 / a.idle_nodes as f64,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "task starts/s (trivial tasks, {} virtual nodes):  {:.0}",
            report.nodes, report.task_starts_per_s
        );
        println!(
            "submissions/s:                                  {:.0}",
            report.submits_per_s
        );
        println!(
            "submit-to-running under that flood p50 / p99:   {} / {} ms",
            report.flood_submit_to_running_p50_ms, report.flood_submit_to_running_p99_ms
        );
        println!(
            "submit-to-running, capacity free, p50/p99/max:  {} / {} / {} ms",
            report.submit_to_running_p50_ms,
            report.submit_to_running_p99_ms,
            report.submit_to_running_max_ms
        );
        println!(
            "{} tasks submitted, run and reported:         {:.1} s",
            report.tasks, report.all_done_s
        );
        println!(
            "task start in the agent (sandbox + fork + exec) p50 / p99: {:.2} / {:.2} ms (making the sandbox p50 {:.2} ms)",
            report.task_start_p50_ms, report.task_start_p99_ms, report.sandbox_p50_ms
        );
        println!(
            "lease expiries / agent fences / extra attempts: {} / {} / {}  (isolation {}, lease {} ms)",
            report.lease_expiries,
            report.agent_fences,
            report.extra_attempts,
            report.isolation,
            report.lease_ms
        );
        println!(
            "idle agent, {} virtual nodes:                 {:.2} % of a core ({:.1} µs per node per s), {:.1} MiB RSS ({:.1} KiB per node)",
            report.idle_nodes,
            report.idle_cpu_percent_of_one_core,
            report.idle_cpu_us_per_node_per_s,
            report.idle_rss_mib,
            report.idle_rss_kib_per_node
        );
    }
    Ok(())
}

/// (starts/s, submissions/s, flood latencies, all done s, extra attempts, lease expiries).
type Phase1 = (f64, f64, Vec<u64>, f64, u64, u64);

/// When the controller placed job `id` (its `started` event), when it was submitted, and its
/// attempt.
fn started(tenant: &Api, id: u64) -> anyhow::Result<(String, u64, Option<u64>, u64)> {
    let j = tenant.call("GET", &format!("/v1/jobs/{id}"), None)?;
    let state = j["state"].as_str().unwrap_or_default().to_string();
    let submitted = j["submitted_at_ms"].as_u64().unwrap_or(0);
    let at = j["events"].as_array().and_then(|e| {
        e.iter()
            .find(|x| x["event"] == "started")
            .and_then(|x| x["at_ms"].as_u64())
    });
    Ok((state, submitted, at, j["attempt"].as_u64().unwrap_or(1)))
}

/// `gosok_agent_leases_expired_total` from the controller's metrics.
fn leases_expired(admin: &Api) -> anyhow::Result<u64> {
    let text = admin.text("/metrics")?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("gosok_agent_leases_expired_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// One job at a time while capacity is free: what a user waits before the job runs.
fn phase2(a: &BenchAgentsArgs, tenant: &Api) -> anyhow::Result<Vec<u64>> {
    eprintln!(
        "bench: {} jobs one at a time, capacity free",
        a.latency_samples
    );
    let spec = json!({"groups": [{"accelerators": 1, "models": ["H100"]}], "command": ["true"]});
    let mut ids = Vec::new();
    for _ in 0..a.latency_samples {
        let v = tenant.call("POST", "/v1/jobs", Some(&spec))?;
        ids.push(v["id"].as_u64().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lat = Vec::new();
    for id in ids {
        loop {
            let (state, submitted, at, _) = started(tenant, id)?;
            if state == "succeeded" {
                lat.push(at.unwrap_or(submitted).saturating_sub(submitted));
                break;
            }
            if state != "pending" && state != "running" {
                bail!("job {id} ended {state}");
            }
            if Instant::now() > deadline {
                bail!("job {id} did not end within 2 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    lat.sort_unstable();
    Ok(lat)
}

fn phase1(
    a: &BenchAgentsArgs,
    tenant: &Api,
    admin: &Api,
    api: &dyn Fn(&str) -> Api,
) -> anyhow::Result<Phase1> {
    wait_up(admin, "bench-r1", a.nodes)?;
    eprintln!(
        "bench: {} trivial tasks on {} virtual nodes",
        a.tasks, a.nodes
    );
    let spec = json!({"groups": [{"accelerators": 1, "models": ["H100"]}], "command": ["true"]});
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let first_ms = gosok_server::unix_ms();
    let token = tenant.token().to_string();
    let ids: Vec<u64> = std::thread::scope(|s| -> anyhow::Result<Vec<u64>> {
        let handles: Vec<_> = (0..a.connections)
            .map(|_| {
                let next = next.clone();
                let spec = spec.clone();
                let c = api(&token);
                s.spawn(move || -> anyhow::Result<Vec<u64>> {
                    let mut ids = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < a.tasks {
                        let v = c.call("POST", "/v1/jobs", Some(&spec))?;
                        ids.push(v["id"].as_u64().unwrap_or(0));
                    }
                    Ok(ids)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a client panicked"))??,
            );
        }
        Ok(all)
    })?;
    let submitted = t0.elapsed();
    // Wait until every job has ended.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let v = tenant.call("GET", "/v1/jobs?state=succeeded&limit=1", None)?;
        let h = admin.call("GET", "/healthz", None)?;
        let pending = h["pending"].as_u64().unwrap_or(0);
        let running = tenant.call("GET", "/v1/jobs?state=running&limit=1", None)?;
        let busy = running["jobs"].as_array().is_some_and(|a| !a.is_empty());
        if pending == 0 && !busy && v["jobs"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the tasks did not all end within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = t0.elapsed();
    let mut lat = Vec::with_capacity(ids.len());
    let mut starts = Vec::with_capacity(ids.len());
    let mut failed = 0;
    let mut extra_attempts = 0;
    for &id in &ids {
        let (state, submitted, at, attempt) = started(tenant, id)?;
        if state != "succeeded" {
            failed += 1;
        }
        extra_attempts += attempt.saturating_sub(1);
        if let Some(at) = at {
            lat.push(at.saturating_sub(submitted));
            starts.push(at);
        }
    }
    if failed > 0 {
        bail!("{failed} of {} trivial tasks did not succeed", ids.len());
    }
    lat.sort_unstable();
    starts.sort_unstable();
    // From the first submission: the first start is part of the latency, not of the rate.
    let span_ms = match starts.last() {
        Some(l) => l.saturating_sub(first_ms).max(1),
        None => 1,
    };
    Ok((
        starts.len() as f64 * 1000.0 / span_ms as f64,
        ids.len() as f64 / submitted.as_secs_f64(),
        lat,
        done.as_secs_f64(),
        extra_attempts,
        leases_expired(admin)?,
    ))
}

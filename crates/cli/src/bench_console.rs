//! `gosok bench console`: the web console's pages against a loaded controller — the demo
//! highway at `--scale large` (about two thousand nodes, all up) with `--jobs` submitted over
//! HTTP (by default 100,000: as many running as fit, the rest pending) — each page fetched
//! as a signed-in browser fetches it; latency percentiles per page, page weight with its
//! assets, and how long a change takes to reach an open live stream.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use gosok_model::NodeState;
use gosok_server::config::Config;

#[derive(Args)]
pub struct BenchConsoleArgs {
    /// Jobs submitted before pages are timed.
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// Timed fetches of each page (after two untimed ones).
    #[arg(long, default_value_t = 40)]
    samples: usize,
    /// Live updates timed.
    #[arg(long, default_value_t = 10)]
    live_samples: usize,
    /// Where the store goes (default: a fresh folder under the system temp dir, removed after).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One submission of the load: one accelerator of any model, an hour's estimate.
const SPEC: &str =
    r#"{"name":"bench","groups":[{"replicas":1,"accelerators":1}],"runtime_estimate_s":3600}"#;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

pub fn run(a: BenchConsoleArgs) -> anyhow::Result<()> {
    let (dir, remove) = match &a.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("gosok-bench-console-{}", std::process::id())),
            true,
        ),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let admin = gosok_server::init(&dir)?;
    let cfg = Config {
        listen: "127.0.0.1:0".into(),
        submit_rate_per_s: 1e9,
        submit_burst: 1e9,
        max_pending_jobs_per_tenant: u64::MAX,
        max_connections_per_address: Config::default().max_connections,
        ..Config::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let running = rt.block_on(gosok_server::start(&dir, cfg))?;
    let base = format!("http://{}", running.addr);
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(120))
        .build();
    let auth = format!("Bearer {admin}");

    // The demo highway at its large scale, every node up (no agents: what starts stays
    // running, which is what the pages read).
    let mut cluster = crate::up::demo_cluster(crate::up::Scale::Large)?;
    for n in &mut cluster.node {
        n.state = NodeState::Up;
    }
    agent
        .put(&format!("{base}/v1/topology"))
        .set("Authorization", &auth)
        .set("Content-Type", "application/json")
        .send_string(&serde_json::to_string(&cluster)?)
        .map_err(|e| anyhow::anyhow!("applying the demo highway: {e}"))?;
    let nodes: u64 = cluster.node.iter().map(|n| n.count.unwrap_or(1)).sum();
    let mut tokens = Vec::new();
    for t in &cluster.tenant {
        let v: Value = serde_json::from_str(
            &agent
                .post(&format!("{base}/v1/tenants/{}/tokens", t.name))
                .set("Authorization", &auth)
                .call()?
                .into_string()?,
        )?;
        tokens.push(v["token"].as_str().unwrap_or_default().to_string());
    }
    eprintln!("bench: {} jobs over HTTP onto {nodes} nodes", a.jobs);
    let t = Instant::now();
    crate::server_cmd::submit_load(&base, &None, &tokens, a.jobs, 16, SPEC)?;
    eprintln!("bench: submitted in {:.1} s", t.elapsed().as_secs_f64());
    // Let a few scheduling passes start what fits.
    std::thread::sleep(Duration::from_secs(3));
    let (running_jobs, pending) = {
        let core = running.app.core();
        let pending = core.engine().pending_count();
        (core.job_count() as u64 - pending as u64, pending)
    };

    let admin_cookie = sign_in(&agent, &base, &admin)?;
    let tenant_cookie = sign_in(&agent, &base, &tokens[0])?;
    let some_job = a.jobs / 2;
    let pages: Vec<(&str, String, &str)> = vec![
        ("highway", "/".into(), "admin"),
        ("queue", "/queue".into(), "admin"),
        ("queue, page 1,000", "/queue?page=1000".into(), "admin"),
        ("queue (a tenant)", "/queue".into(), "tenant"),
        ("jobs", "/jobs".into(), "admin"),
        ("jobs, pending only", "/jobs?state=pending".into(), "admin"),
        ("jobs (a tenant)", "/jobs".into(), "tenant"),
        ("job", format!("/jobs/{some_job}"), "admin"),
        ("submit", "/submit".into(), "tenant"),
        ("tenants", "/tenants".into(), "admin"),
        ("nodes", "/nodes".into(), "admin"),
        ("nodes, page 40", "/nodes?page=40".into(), "admin"),
        ("audit", "/audit".into(), "admin"),
    ];
    let assets = ["/console/static/console.css", "/console/static/console.js"];
    let mut asset_bytes = 0;
    for p in assets {
        let r = agent.get(&format!("{base}{p}")).call()?;
        asset_bytes += r.into_string()?.len();
    }
    let mut rows = Vec::new();
    for (name, path, who) in &pages {
        let cookie = if *who == "admin" {
            &admin_cookie
        } else {
            &tenant_cookie
        };
        let mut ms = Vec::new();
        let mut bytes = 0;
        for i in 0..a.samples + 2 {
            let t = Instant::now();
            let r = agent
                .get(&format!("{base}{path}"))
                .set("Cookie", cookie)
                .call()
                .map_err(|e| anyhow::anyhow!("GET {path}: {e}"))?;
            let body = r.into_string()?;
            if i >= 2 {
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            bytes = body.len();
        }
        let (p50, p95) = (pct(&mut ms, 0.5), pct(&mut ms, 0.95));
        eprintln!("bench: {name}: p50 {p50:.1} ms, p95 {p95:.1} ms, {bytes} bytes");
        rows.push(
            json!({"page": name, "path": path, "as": who, "p50_ms": p50, "p95_ms": p95,
                         "html_bytes": bytes, "with_assets_bytes": bytes + asset_bytes}),
        );
    }

    // Live: an open stream of the Highway page; a site budget changes over the API; how long
    // until the stream carries the new figure.
    let mut live_ms = Vec::new();
    for i in 0..a.live_samples {
        let r = agent
            .get(&format!("{base}/console/live?path=%2F"))
            .set("Cookie", &admin_cookie)
            .call()?;
        let mut lines = BufReader::new(r.into_reader()).lines();
        // The first event: the page as it is now.
        for l in lines.by_ref() {
            if l?.starts_with("event: main") {
                break;
            }
        }
        let mw = 19.0 - i as f64 * 0.125;
        let want = format!("{:.2} MW</span>", mw);
        let t = Instant::now();
        agent
            .request("PATCH", &format!("{base}/v1/sites/pohang"))
            .set("Authorization", &auth)
            .set("Content-Type", "application/json")
            .send_string(&json!({ "power_budget_mw": mw }).to_string())?;
        let mut seen = false;
        for l in lines.by_ref() {
            if l?.contains(&want) {
                seen = true;
                break;
            }
        }
        if !seen {
            bail!("the live stream ended without the new budget {mw} MW");
        }
        live_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let live = json!({"samples": live_ms.len(), "p50_ms": pct(&mut live_ms, 0.5),
                      "max_ms": pct(&mut live_ms, 1.0)});
    rt.block_on(running.stop())?;
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = json!({"nodes": nodes, "jobs": a.jobs, "running": running_jobs,
                        "pending": pending, "asset_bytes": asset_bytes, "pages": rows,
                        "live_update": live});
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "console, {nodes} nodes, {} jobs ({running_jobs} running, {pending} pending); {} samples per page",
        a.jobs, a.samples
    );
    println!(
        "{:<22} {:>9} {:>9} {:>12}",
        "page", "p50 ms", "p95 ms", "KB w/ assets"
    );
    for r in report["pages"].as_array().into_iter().flatten() {
        println!(
            "{:<22} {:>9.1} {:>9.1} {:>12.1}",
            r["page"].as_str().unwrap_or(""),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p95_ms"].as_f64().unwrap_or(0.0),
            r["with_assets_bytes"].as_f64().unwrap_or(0.0) / 1024.0
        );
    }
    println!(
        "live update (budget change to an open Highway stream): p50 {:.0} ms, max {:.0} ms over {} changes",
        report["live_update"]["p50_ms"].as_f64().unwrap_or(0.0),
        report["live_update"]["max_ms"].as_f64().unwrap_or(0.0),
        live_ms.len()
    );
    Ok(())
}

/// Signs in as a browser does: the session cookie to send.
fn sign_in(agent: &ureq::Agent, base: &str, token: &str) -> anyhow::Result<String> {
    let r = agent.get(&format!("{base}/signin")).call()?;
    let pre = r
        .all("set-cookie")
        .iter()
        .find_map(|c| c.strip_prefix("gosok_pre="))
        .and_then(|c| c.split(';').next())
        .context("no pre-session cookie")?
        .to_string();
    let body = r.into_string()?;
    let i = body
        .find("name=\"csrf\" value=\"")
        .context("no CSRF token")?
        + 19;
    let csrf = &body[i..i + body[i..].find('"').context("no CSRF token")?];
    let r = match agent
        .post(&format!("{base}/signin"))
        .set("Cookie", &format!("gosok_pre={pre}"))
        .send_form(&[("csrf", csrf), ("token", token)])
    {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => bail!("signing in: {e}"),
    };
    let session = r
        .all("set-cookie")
        .iter()
        .find_map(|c| c.strip_prefix("gosok_session="))
        .and_then(|c| c.split(';').next())
        .context("sign-in set no session cookie")?
        .to_string();
    Ok(format!("gosok_session={session}"))
}
